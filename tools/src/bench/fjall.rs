//! The `fjall` peer: fjall, the pure-Rust LSM-tree store (one journal shared by its
//! keyspaces, memtables flushed to sorted tables in the background), driven the way its
//! README tells users to make a write durable: `insert` (or `remove`) into a keyspace, then
//! `Database::persist(PersistMode::SyncData)`, which returns once the journal is synced.
//! fjall syncs under its journal's lock and has no group commit of its own: a persist that
//! comes after other writers' inserts covers them too, but each caller still issues its own
//! sync. Gets read the keyspace. Options are fjall's defaults (LZ4 for its tables).
//!
//! With `--durability nosync` no persist is called: fjall's default, where each write
//! reaches the OS's buffers but not the disk.

use super::kv::{self, Store};
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mergelog::Durability;
use std::path::Path;

/// The keyspace the bench writes.
pub const KEYSPACE: &str = "bench";

struct Fjall {
    db: Database,
    keyspace: Keyspace,
    sync: bool,
}

impl Fjall {
    fn persist(&self) -> Result<(), CliError> {
        if self.sync {
            self.db
                .persist(PersistMode::SyncData)
                .context(|| "fjall persist".into())?;
        }
        Ok(())
    }
}

impl Store for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), CliError> {
        self.keyspace
            .insert(key, value)
            .context(|| "fjall insert".into())?;
        self.persist()
    }

    fn delete(&self, key: &[u8]) -> Result<(), CliError> {
        self.keyspace
            .remove(key)
            .context(|| "fjall remove".into())?;
        self.persist()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CliError> {
        let value = self.keyspace.get(key).context(|| "fjall get".into())?;
        Ok(value.map(|v| v.to_vec()))
    }
}

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let what = || format!("open a fjall database in {}", dir.display());
    let db = Database::builder(dir).open().context(what)?;
    let keyspace = db
        .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
        .context(what)?;
    let store = Fjall {
        db,
        keyspace,
        sync: plan.durability == Durability::Sync,
    };
    kv::run(System::Fjall, plan, hooks, progress, &store)
}
