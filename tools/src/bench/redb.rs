//! The `redb` peer: redb, the pure-Rust embedded B-tree store (copy-on-write pages, one
//! writer at a time), driven the way its users get durability: every put or delete is one
//! write transaction with `Durability::Immediate` (its default, set explicitly here), and
//! `commit` returns once the transaction is on disk. Write transactions are serialized by
//! redb itself, so concurrent writers queue for it; there is no group commit to join. Gets
//! open a read transaction each. Options are redb's defaults.
//!
//! With `--durability nosync` each commit uses `Durability::None` instead (redb's own
//! non-durable commit, kept in memory until a durable one).

use super::kv::{self, Store};
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use mergelog::Durability;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use std::path::Path;

/// The one table the bench writes: raw key bytes to raw value bytes.
pub const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
/// The database file in the run directory.
pub const FILE: &str = "bench.redb";

struct Redb {
    db: Database,
    durability: redb::Durability,
}

impl Redb {
    /// One write transaction at the run's durability, applying `f` to the table.
    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), CliError> {
        let mut txn = self
            .db
            .begin_write()
            .context(|| "redb begin_write".into())?;
        txn.set_durability(self.durability)
            .context(|| "redb set_durability".into())?;
        {
            let mut table = txn.open_table(TABLE).context(|| "redb open_table".into())?;
            f(&mut table).context(|| "redb write".into())?;
        }
        txn.commit().context(|| "redb commit".into())
    }
}

impl Store for Redb {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), CliError> {
        self.write(|t| t.insert(key, value).map(drop))
    }

    fn delete(&self, key: &[u8]) -> Result<(), CliError> {
        self.write(|t| t.remove(key).map(drop))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CliError> {
        let txn = self.db.begin_read().context(|| "redb begin_read".into())?;
        let table = match txn.open_table(TABLE) {
            Ok(t) => t,
            // Nothing written yet.
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(CliError::new(format!("redb open_table: {e}"))),
        };
        let value = table.get(key).context(|| "redb get".into())?;
        Ok(value.map(|v| v.value().to_vec()))
    }
}

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let path = dir.join(FILE);
    let db = Database::create(&path)
        .context(|| format!("create a redb database at {}", path.display()))?;
    let store = Redb {
        db,
        durability: match plan.durability {
            Durability::Sync => redb::Durability::Immediate,
            Durability::NoSync => redb::Durability::None,
        },
    };
    kv::run(System::Redb, plan, hooks, progress, &store)
}
