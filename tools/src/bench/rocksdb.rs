//! The `rocksdb` peer (cargo feature `rocksdb`): RocksDB through the `rocksdb` crate, with
//! the write-ahead log on and `WriteOptions::set_sync(true)`, one `put_opt` per call from
//! each writer thread, as its users make a write durable. RocksDB groups concurrent writers
//! into one WAL write and one sync (its leader/follower write group), so it is a group
//! commit peer. Its API has no durable asynchronous put, so each thread has one write
//! outstanding and `--depth` does not apply.
//!
//! Options are RocksDB's defaults, with one change a user must make too:
//! `create_if_missing` (the bench opens an empty directory). Compression stays RocksDB's
//! default (snappy, the one codec the tools crate builds in). Gets read the database.
//!
//! With `--durability nosync` the puts use `set_sync(false)`: the WAL is written to the OS's
//! buffers on each put, not synced (RocksDB's default write options).

use super::kv::{self, Store};
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use mergelog::Durability;
use rocksdb::{Options, WriteOptions, DB};
use std::path::Path;

struct Rocks {
    db: DB,
    write: WriteOptions,
}

impl Store for Rocks {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), CliError> {
        self.db
            .put_opt(key, value, &self.write)
            .context(|| "rocksdb put".into())
    }

    fn delete(&self, key: &[u8]) -> Result<(), CliError> {
        self.db
            .delete_opt(key, &self.write)
            .context(|| "rocksdb delete".into())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CliError> {
        self.db.get(key).context(|| "rocksdb get".into())
    }
}

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = DB::open(&options, dir)
        .context(|| format!("open a RocksDB database in {}", dir.display()))?;
    let mut write = WriteOptions::default();
    write.set_sync(plan.durability == Durability::Sync);
    let store = Rocks { db, write };
    kv::run(System::Rocksdb, plan, hooks, progress, &store)
}
