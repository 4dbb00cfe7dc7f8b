//! openraft's own storage test suite (`openraft::testing::Suite::test_all`) run against
//! the mergelog log store and the in-memory key-value state machine, one fresh directory
//! per test of the suite.

// openraft's error types are what its traits and suite return.
#![allow(clippy::result_large_err)]

mod common;

use mergelog_raft::kv::{KvStateMachine, TypeConfig};
use mergelog_raft::LogStore;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, KvStateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<TypeConfig>, KvStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Its fixtures write what no node writes (and never reopen): see
        // `LogStore::without_write_checks`.
        let store = LogStore::open(dir.path(), common::small_config())?.without_write_checks();
        Ok((dir, store, KvStateMachine::new()))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}
