//! Helpers shared by this crate's tests: the engine configuration they open stores with.

#![allow(dead_code)]

use mergelog::Config;

/// Small segments (so that purges retire whole segments in a test's few writes) and a small
/// ring: a store per test stays cheap.
pub fn small_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 1 << 20,
        batch_bytes_max: 32 << 10,
        ..Config::default()
    }
}

/// Gives a new store a state openraft can have written before a test appends entries from
/// index 1, of terms up to `term`: the vote of term `term` (a node saves a leader's vote
/// before it takes the leader's entries) and the purged log id T0-N0-0 (`Raft::initialize`'s
/// entry 0, purged as after a snapshot that covers it: a log starts at entry 0, or right
/// after its purged log id). The store's open refuses a log that is neither.
pub async fn log_from_1(
    store: &mut mergelog_raft::LogStore<mergelog_raft::kv::TypeConfig>,
    term: u64,
) {
    use openraft::storage::RaftLogStorage;
    let vote = openraft::Vote::new_committed(term, 1);
    store.save_vote(&vote).await.expect("save_vote");
    store.purge(purged_0()).await.expect("purge");
}

/// The purged log id [`log_from_1`] gives: `Raft::initialize`'s entry's.
pub fn purged_0() -> openraft::LogId<u64> {
    openraft::testing::log_id(0, 0, 0)
}

/// An entry of `term` at `index` (leader node 1) putting key `k{index}` to `len` bytes of
/// `index as u8`.
pub fn entry(term: u64, index: u64, len: usize) -> openraft::Entry<mergelog_raft::kv::TypeConfig> {
    openraft::Entry {
        log_id: openraft::testing::log_id(term, 1, index),
        payload: openraft::EntryPayload::Normal(mergelog_raft::kv::Request {
            key: format!("k{index}"),
            value: vec![index as u8; len],
        }),
    }
}
