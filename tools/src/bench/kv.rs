//! What the key-value peers (`redb`, `fjall`, `rocksdb`) share: each is an embedded store
//! whose put returns once the write is durable, so each writer thread runs the same blocking
//! loop as `naive` and `okaywal` (one request outstanding per thread: `--depth` does not
//! apply; `--clients N` runs N such threads). A peer only says how it puts, deletes and gets;
//! the keys and values are the generator's, handed over as they are, and gets read the store
//! itself (copied out, as the engine's get returns an owned value).

use super::engine::{run_baseline, LogCounts};
use super::naive::blocking_writer;
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::CliError;
use crate::workload::{Generator, Op};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

/// One peer's operations, as its users call them: `put` and `delete` return once durable
/// (in sync mode), `get` reads the latest value.
pub trait Store: Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), CliError>;
    fn delete(&self, key: &[u8]) -> Result<(), CliError>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CliError>;
}

/// Runs the plan's workload against `store` from the plan's writer threads. The counts: every
/// acknowledged put and delete, and the key and value bytes handed to the store (what it
/// writes to its own log and tables is its business, and none of them says how it grouped
/// writes into syncs: `batches` and `syncs` stay 0, "not reported").
pub fn run(
    system: System,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
    store: &impl Store,
) -> Result<RunResult, CliError> {
    let (writes, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let count = |n: usize| {
        writes.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    };
    run_baseline(
        system,
        plan,
        hooks,
        progress,
        |i, slot, barrier| {
            let gen = Generator::new(&plan.spec, i);
            blocking_writer(gen, i, plan, slot, barrier, |op| match op {
                Op::Put { key, value } => {
                    store.put(key, value)?;
                    count(key.len() + value.len());
                    Ok(())
                }
                Op::Delete { key } => {
                    store.delete(key)?;
                    count(key.len());
                    Ok(())
                }
                Op::Get { key } => {
                    black_box(store.get(key)?);
                    Ok(())
                }
                Op::Merge { .. } => Err(super::merge_unsupported(system.name())),
            })
        },
        || LogCounts {
            writes: writes.load(Ordering::Relaxed),
            batches: 0,
            syncs: 0,
            bytes: bytes.load(Ordering::Relaxed),
        },
    )
}
