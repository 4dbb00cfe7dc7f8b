//! The `naive` baseline: what a careful program without batching does. One mutex guards a
//! file and an in-memory map; each write takes the lock, `pwrite`s one record at the end of
//! the log, `fdatasync`s it (in sync mode), updates the map and unlocks. Each writer has
//! one request outstanding, so `--depth` does not apply.
//!
//! The file is preallocated by writing zeros, like an engine segment (DESIGN §5: syncs into
//! unwritten extents cost a metadata write each), and written circularly: a benchmark needs
//! the cost of appending, not the records.

use super::engine::{run_baseline, LogCounts, Span};
use super::recorder::{Progress, Slot, StartLine};
use super::{fine_timer_slack, sleep_until, Plan, RunHooks, RunResult, System};
use crate::error::{CliError, Context};
use crate::workload::{Generator, Op};
use mergelog::{Config, Durability};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Record header, as in the engine's log: op u8 | key_len u16 | value_len u32 (LE).
pub const RECORD_HEADER_LEN: usize = 7;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

struct Log {
    path: PathBuf,
    file: File,
    size: u64,
    off: u64,
    sync: bool,
    index: HashMap<Vec<u8>, Vec<u8>>,
    writes: u64,
    syncs: u64,
    bytes: u64,
}

impl Log {
    fn create(dir: &Path, size: u64, sync: bool) -> Result<Log, CliError> {
        let path = dir.join("naive.log");
        let file = preallocate(dir, &path, size)?;
        Ok(Log {
            path,
            file,
            size,
            off: 0,
            sync,
            index: HashMap::new(),
            writes: 0,
            syncs: 0,
            bytes: 0,
        })
    }

    /// Appends `record` (encoded by the caller, outside the lock) and makes it durable.
    /// A delete (`value: None`) removes the key from the map.
    fn append(&mut self, record: &[u8], key: &[u8], value: Option<&[u8]>) -> Result<(), CliError> {
        let len = record.len() as u64;
        if self.off + len > self.size {
            self.off = 0;
        }
        self.file
            .write_all_at(record, self.off)
            .context(|| format!("pwrite {}", self.path.display()))?;
        if self.sync {
            self.file
                .sync_data()
                .context(|| format!("fdatasync {}", self.path.display()))?;
            self.syncs += 1;
        }
        self.off += len;
        self.writes += 1;
        self.bytes += len;
        update(&mut self.index, key, value);
        Ok(())
    }
}

/// Creates `path` (which must not exist) filled with `size` written zeros, synced, and syncs
/// `dir`: a log file like an engine segment.
pub fn preallocate(dir: &Path, path: &Path, size: u64) -> Result<File, CliError> {
    let what = || format!("preallocate {}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .context(what)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).context(what)?;
        left -= n as u64;
    }
    file.sync_all().context(what)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("sync directory {}", dir.display()))?;
    Ok(file)
}

/// Applies a write to a baseline's in-memory map: `Some(value)` sets, `None` deletes.
pub fn update(index: &mut HashMap<Vec<u8>, Vec<u8>>, key: &[u8], value: Option<&[u8]>) {
    match (index.get_mut(key), value) {
        (Some(v), Some(value)) => {
            v.clear();
            v.extend_from_slice(value);
        }
        (None, Some(value)) => {
            index.insert(key.to_vec(), value.to_vec());
        }
        (_, None) => {
            index.remove(key);
        }
    }
}

/// Encodes a put (`value: Some`) or a delete as one record, replacing `buf`'s contents.
pub fn encode_op(buf: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    buf.clear();
    append_record(buf, key, value);
}

/// Appends one record to `buf`.
pub fn append_record(buf: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    let (op, value) = match value {
        Some(v) => (OP_PUT, v),
        None => (OP_DELETE, &[][..]),
    };
    let start = buf.len();
    buf.push(op);
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    debug_assert_eq!(buf.len() - start, RECORD_HEADER_LEN);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let size = Config::default().segment_bytes;
    let log = Mutex::new(Log::create(dir, size, plan.durability == Durability::Sync)?);
    run_baseline(
        System::Naive,
        plan,
        hooks,
        progress,
        |i, slot, barrier| {
            record_writer(
                System::Naive,
                plan,
                i,
                slot,
                barrier,
                |record, key, value| log.lock().append(record, key, value),
                // Copied out, as the engine's get returns an owned value.
                |key| drop(black_box(log.lock().index.get(key).cloned())),
            )
        },
        || {
            let log = log.lock();
            LogCounts {
                writes: log.writes,
                // Every write is its own batch.
                batches: log.writes,
                syncs: log.syncs,
                bytes: log.bytes,
            }
        },
    )
}

/// One writer of `system`, whose writes take one encoded record (`naive`, `okaywal`), as
/// [`blocking_writer`] runs it: `write(record, key, value)` for a put (`Some(value)`) or a
/// delete (`None`), `get(key)` for a get.
pub fn record_writer(
    system: System,
    plan: &Plan,
    index: usize,
    slot: &Mutex<Slot>,
    barrier: &StartLine,
    mut write: impl FnMut(&[u8], &[u8], Option<&[u8]>) -> Result<(), CliError>,
    mut get: impl FnMut(&[u8]),
) -> Result<Span, CliError> {
    let mut buf =
        Vec::with_capacity(RECORD_HEADER_LEN + plan.spec.key_size.max + plan.spec.value_size.max);
    let gen = Generator::new(&plan.spec, index);
    blocking_writer(gen, index, plan, slot, barrier, |op| {
        let (key, value) = match op {
            Op::Put { key, value } => (key, Some(value)),
            Op::Merge { .. } => return Err(super::merge_unsupported(system.name())),
            Op::Delete { key } => (key, None),
            Op::Get { key } => {
                get(key);
                return Ok(());
            }
        };
        encode_op(&mut buf, key, value);
        write(&buf, key, value)
    })
}

/// One writer of a system whose operations block until done (durable, for a write), one
/// request at a time: in a closed loop back to back, in an open loop at its scheduled times
/// (or at once, when it is behind). `apply` performs one operation.
pub(super) fn blocking_writer(
    gen: Result<Generator, String>,
    index: usize,
    plan: &Plan,
    slot: &Mutex<Slot>,
    barrier: &StartLine,
    mut apply: impl FnMut(Op<'_>) -> Result<(), CliError>,
) -> Result<Span, CliError> {
    if plan.rate.is_some() {
        fine_timer_slack();
    }
    if !barrier.wait() {
        return Err(CliError::new("the run was called off before it started"));
    }
    let mut gen = gen.map_err(CliError::new)?;
    let start = Instant::now();
    let limit = plan.limit(index, start);
    let mut schedule = plan.schedule(index, start);
    let mut issued = 0u64;
    loop {
        let due = schedule.as_ref().map(|s| s.next_at());
        let now = Instant::now();
        if limit.reached(issued, due.unwrap_or(now), now) {
            break;
        }
        if let Some(due) = due {
            sleep_until(due);
        }
        let op = gen.next_op();
        let kind = op.kind();
        let sent = Instant::now();
        apply(op)?;
        let now = Instant::now();
        let intended = due.map_or(sent, |d| d.min(sent));
        slot.lock().record(kind, now - intended, now - sent);
        issued += 1;
        if let Some(s) = &mut schedule {
            s.advance();
        }
    }
    Ok(Span {
        start,
        finish: Instant::now(),
        missed: limit.missed(schedule.as_ref()),
    })
}
