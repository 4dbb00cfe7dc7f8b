//! The `okaywal` peer: the okaywal crate (a write-ahead log with group commit from
//! Khonsu Labs, used by BonsaiDb's storage stack), driven the way its users drive it. Each
//! write is one entry: `begin_entry`, one `write_chunk` with the record encoded as `naive` and
//! `wal` encode theirs, and `commit`, which returns once the entry is durable (okaywal queues
//! concurrent commits and syncs them together). One write outstanding per writer: the API
//! blocks, so `--depth` does not apply. Gets read an in-memory map, updated after the commit.
//!
//! okaywal always syncs: with `--durability nosync` it refuses to run rather than measure
//! something else under that name.

use super::engine::{run_baseline, LogCounts};
use super::naive::{record_writer, update};
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use mergelog::Durability;
use okaywal::{LogVoid, WriteAheadLog};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    if plan.durability != Durability::Sync {
        return Err(CliError::new(
            "okaywal always syncs its commits: run it with --durability sync",
        ));
    }
    let path = dir.join("okaywal");
    // `LogVoid`: no checkpointing work, as the other baselines keep their state in memory.
    let log = WriteAheadLog::recover(&path, LogVoid)
        .context(|| format!("open an okaywal log in {}", path.display()))?;
    let index = Mutex::new(HashMap::<Vec<u8>, Vec<u8>>::new());
    let (writes, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let commit = |record: &[u8]| -> Result<(), CliError> {
        let mut entry = log.begin_entry().context(|| "okaywal begin_entry".into())?;
        entry
            .write_chunk(record)
            .context(|| "okaywal write_chunk".into())?;
        entry.commit().context(|| "okaywal commit".into())?;
        writes.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let result = run_baseline(
        System::Okaywal,
        plan,
        hooks,
        progress,
        |i, slot, barrier| {
            record_writer(
                System::Okaywal,
                plan,
                i,
                slot,
                barrier,
                |record, key, value| {
                    commit(record)?;
                    update(&mut index.lock(), key, value);
                    Ok(())
                },
                // Copied out, as the engine's get returns an owned value.
                |key| drop(black_box(index.lock().get(key).cloned())),
            )
        },
        || LogCounts {
            writes: writes.load(Ordering::Relaxed),
            // okaywal does not say how it grouped commits into syncs.
            batches: 0,
            syncs: 0,
            bytes: bytes.load(Ordering::Relaxed),
        },
    );
    log.shutdown()
        .context(|| format!("shut down the okaywal log in {}", path.display()))?;
    result
}
