//! The `wal` baseline: a conventional write-ahead log with leader/follower group commit, the
//! scheme of LevelDB's and RocksDB's write path (without their memtables). What batching
//! alone buys, done the usual way.
//!
//! - A writer appends its encoded record to one shared buffer under one mutex and gets a
//!   sequence number back, so it can keep `--depth` requests outstanding like the engine's
//!   writers. The in-memory map is updated there too; a get reads it under the mutex and is
//!   answered at once.
//! - A writer that waits for a record not yet durable, while nobody else is writing a batch,
//!   becomes the leader: it takes the whole buffer, writes it with one `pwrite`, `fdatasync`s
//!   (in sync mode), publishes the durable sequence number and wakes every waiter. What was
//!   appended meanwhile is the next leader's batch.
//! - No ingest ring, no coalescing, no flusher or syncer thread: a batch's sync and the next
//!   batch's write never overlap, and the leader is whichever writer happens to wait.
//!
//! The file is preallocated with written zeros and written circularly, like `naive`'s.

use super::engine::{run_baseline, writer, LogCounts, Target};
use super::naive::{append_record, preallocate, update};
use super::recorder::Progress;
use super::{Plan, RunHooks, RunResult, System};
use crate::error::CliError;
use crate::workload::{Generator, Op};
use mergelog::{Config, Durability};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What the mutex guards.
#[derive(Default)]
struct Shared {
    /// Records appended since the leader last took the buffer.
    buf: Vec<u8>,
    /// The buffer of the last batch, cleared: its capacity is reused.
    spare: Vec<u8>,
    /// Sequence number of the last record appended (the first is 1).
    appended: u64,
    /// A leader is writing a batch.
    leading: bool,
    /// The first failed write or sync: every later wait reports it, none is retried.
    failed: Option<String>,
    index: HashMap<Vec<u8>, Vec<u8>>,
    /// Where the next batch goes.
    off: u64,
    writes: u64,
    batches: u64,
    syncs: u64,
    bytes: u64,
}

/// The log: a preallocated file, the shared state, and the durable watermark.
pub struct Wal {
    path: PathBuf,
    file: File,
    size: u64,
    sync: bool,
    state: Mutex<Shared>,
    /// Signalled when a leader finishes a batch.
    done: Condvar,
    /// Sequence number of the last durable record (read without the lock).
    durable: AtomicU64,
}

/// A request in flight: a write's sequence number, or a get already answered.
pub enum Pending {
    Write(u64),
    Answered,
}

impl Wal {
    /// Creates the log file `wal.log` of `size` bytes in `dir`.
    pub fn create(dir: &Path, size: u64, sync: bool) -> Result<Wal, CliError> {
        let path = dir.join("wal.log");
        let file = preallocate(dir, &path, size)?;
        Ok(Wal {
            path,
            file,
            size,
            sync,
            state: Mutex::new(Shared::default()),
            done: Condvar::new(),
            durable: AtomicU64::new(0),
        })
    }

    /// Appends a put (`Some(value)`) or a delete; returns its sequence number.
    pub fn append(&self, key: &[u8], value: Option<&[u8]>) -> u64 {
        let mut s = self.state.lock();
        append_record(&mut s.buf, key, value);
        update(&mut s.index, key, value);
        s.writes += 1;
        s.appended += 1;
        s.appended
    }

    /// Waits until record `seq` is durable, leading batches while nobody else does. False if
    /// `deadline` passed first (a leader finishes its batch regardless).
    pub fn wait(&self, seq: u64, deadline: Option<Instant>) -> Result<bool, CliError> {
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(true);
        }
        let mut s = self.state.lock();
        loop {
            if self.durable.load(Ordering::Acquire) >= seq {
                return Ok(true);
            }
            if let Some(e) = &s.failed {
                return Err(CliError::new(e.clone()));
            }
            if !s.leading {
                self.lead(&mut s);
                continue;
            }
            match deadline {
                None => self.done.wait(&mut s),
                Some(d) => {
                    if self.done.wait_until(&mut s, d).timed_out() {
                        return Ok(self.durable.load(Ordering::Acquire) >= seq);
                    }
                }
            }
        }
    }

    /// Writes and syncs everything appended so far, with the lock released meanwhile.
    fn lead(&self, s: &mut MutexGuard<'_, Shared>) {
        s.leading = true;
        let spare = std::mem::take(&mut s.spare);
        let mut batch = std::mem::replace(&mut s.buf, spare);
        let upto = s.appended;
        let len = batch.len() as u64;
        let off = if s.off + len > self.size { 0 } else { s.off };
        s.off = off + len;
        let written = MutexGuard::unlocked(s, || {
            if len > self.size {
                return Err(format!(
                    "a batch of {len} bytes does not fit in {} ({} bytes)",
                    self.path.display(),
                    self.size
                ));
            }
            self.file
                .write_all_at(&batch, off)
                .map_err(|e| format!("pwrite {}: {e}", self.path.display()))?;
            if self.sync {
                self.file
                    .sync_data()
                    .map_err(|e| format!("fdatasync {}: {e}", self.path.display()))?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                self.durable.store(upto, Ordering::Release);
                s.batches += 1;
                s.syncs += u64::from(self.sync);
                s.bytes += len;
            }
            // Never acknowledged, never retried: the records stay undurable.
            Err(e) => s.failed = Some(e),
        }
        batch.clear();
        s.spare = batch;
        s.leading = false;
        self.done.notify_all();
    }

    pub fn counts(&self) -> LogCounts {
        let s = self.state.lock();
        LogCounts {
            writes: s.writes,
            batches: s.batches,
            syncs: s.syncs,
            bytes: s.bytes,
        }
    }
}

impl Target for Wal {
    type Pending = Pending;

    fn submit(&self, op: Op<'_>) -> Result<Pending, CliError> {
        Ok(match op {
            Op::Put { key, value } => Pending::Write(self.append(key, Some(value))),
            Op::Merge { .. } => return Err(super::merge_unsupported("wal")),
            Op::Delete { key } => Pending::Write(self.append(key, None)),
            Op::Get { key } => {
                // Copied out, as the engine's get returns an owned value.
                black_box(self.state.lock().index.get(key).cloned());
                Pending::Answered
            }
        })
    }

    fn wait(&self, pending: &Pending, deadline: Option<Instant>) -> Result<bool, CliError> {
        match pending {
            Pending::Write(seq) => Wal::wait(self, *seq, deadline),
            Pending::Answered => Ok(true),
        }
    }

    fn try_finish(&self, pending: &Pending) -> Result<bool, CliError> {
        Ok(match pending {
            Pending::Write(seq) => self.durable.load(Ordering::Acquire) >= *seq,
            Pending::Answered => true,
        })
    }
}

/// The largest log file `wal` makes: a bound on the disk a run takes (preallocated).
const FILE_MAX: u64 = 1 << 30;

/// The size of the log file for `plan`: the engine's default segment size (64 MiB), or, when
/// a batch could be larger, room for the largest one (rounded up to a MiB). A batch is what
/// was appended while the last one was written: records that no writer has seen complete, so
/// at most `writers x depth` of the largest record. More than [`FILE_MAX`] is refused (before
/// any system runs).
pub fn file_size(plan: &Plan) -> Result<u64, CliError> {
    let record = (super::naive::RECORD_HEADER_LEN
        + plan.spec.key_size.max
        + plan.spec.value_size.max) as u64;
    let batch = (plan.writers as u64)
        .saturating_mul(plan.depth as u64)
        .saturating_mul(record);
    let base = Config::default().segment_bytes;
    if batch <= base {
        return Ok(base);
    }
    if batch > FILE_MAX {
        return Err(CliError::usage(format!(
            "wal: a batch can reach {batch} bytes ({} writers x depth {} x {record}-byte \
             records), more than its log file may take ({FILE_MAX} bytes); lower --writers, \
             --depth (or --clients) or --value-size",
            plan.writers, plan.depth
        )));
    }
    Ok(batch.next_multiple_of(1 << 20))
}

pub fn run(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    let wal = Wal::create(dir, file_size(plan)?, plan.durability == Durability::Sync)?;
    run_baseline(
        System::Wal,
        plan,
        hooks,
        progress,
        |i, slot, barrier| writer(&wal, Generator::new(&plan.spec, i), i, plan, slot, barrier),
        || wal.counts(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::naive::RECORD_HEADER_LEN;
    use super::*;

    /// Reads the records back from the start of the file, in order, until the zeros.
    fn records(wal: &Wal) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let mut bytes = vec![0u8; wal.counts().bytes as usize];
        wal.file.read_exact_at(&mut bytes, 0).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let op = bytes[at];
            let klen = u16::from_le_bytes([bytes[at + 1], bytes[at + 2]]) as usize;
            let vlen = u32::from_le_bytes(bytes[at + 3..at + 7].try_into().unwrap()) as usize;
            let k = at + RECORD_HEADER_LEN;
            out.push((
                op,
                bytes[k..k + klen].to_vec(),
                bytes[k + klen..k + klen + vlen].to_vec(),
            ));
            at = k + klen + vlen;
        }
        out
    }

    #[test]
    fn writers_with_requests_outstanding_share_batches_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(dir.path(), 1 << 20, true).unwrap();
        let (writers, per_writer, depth) = (4u64, 200u64, 16usize);
        std::thread::scope(|s| {
            for w in 0..writers {
                let wal = &wal;
                s.spawn(move || {
                    let mut pending = std::collections::VecDeque::new();
                    for i in 0..per_writer {
                        let key = format!("w{w}-k{:03}", i % 50);
                        let value = format!("v{i}");
                        let seq = wal.append(key.as_bytes(), Some(value.as_bytes()));
                        pending.push_back(seq);
                        if pending.len() == depth {
                            let oldest = pending.pop_front().unwrap();
                            assert!(wal.wait(oldest, None).unwrap());
                        }
                    }
                    for seq in pending {
                        assert!(wal.wait(seq, None).unwrap());
                    }
                });
            }
        });
        let c = wal.counts();
        let total = writers * per_writer;
        assert_eq!(c.writes, total);
        // Group commit: fewer batches than writes, one sync each.
        assert!(c.batches < total, "{c:?}");
        assert_eq!(c.syncs, c.batches);
        assert_eq!(wal.durable.load(Ordering::Acquire), total);
        // Every record is in the file once, and each writer's in its own order.
        let recs = records(&wal);
        assert_eq!(recs.len() as u64, total);
        for w in 0..writers {
            let values: Vec<String> = recs
                .iter()
                .filter(|(_, k, _)| k.starts_with(format!("w{w}-").as_bytes()))
                .map(|(_, _, v)| String::from_utf8(v.clone()).unwrap())
                .collect();
            let expected: Vec<String> = (0..per_writer).map(|i| format!("v{i}")).collect();
            assert_eq!(values, expected, "writer {w}");
        }
        // The map holds each key's last value.
        let s = wal.state.lock();
        assert_eq!(s.index.len() as u64, writers * 50);
        assert_eq!(s.index[&b"w0-k049"[..]], b"v199");
    }

    #[test]
    fn a_failed_write_is_reported_to_every_waiter_and_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one 30-byte record but not for a batch of two.
        let wal = Wal::create(dir.path(), 40, true).unwrap();
        let first = wal.append(b"key-0001", Some(&[1u8; 15]));
        assert!(wal.wait(first, None).unwrap());
        let a = wal.append(b"key-0002", Some(&[2u8; 15]));
        let b = wal.append(b"key-0003", Some(&[3u8; 15]));
        let err = wal.wait(b, None).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        assert!(
            wal.wait(a, None).is_err(),
            "an earlier record of the failed batch"
        );
        assert!(!wal.try_finish(&Pending::Write(a)).unwrap());
        assert_eq!(wal.durable.load(Ordering::Acquire), first);
        let c = wal.counts();
        assert_eq!((c.writes, c.batches, c.syncs), (3, 1, 1));
    }

    #[test]
    fn a_deadline_returns_false_without_losing_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::create(dir.path(), 1 << 16, false).unwrap();
        // Hold the leader role, as a writer mid-batch would.
        wal.state.lock().leading = true;
        let seq = wal.append(b"key-0001", Some(b"v"));
        let deadline = Instant::now() + std::time::Duration::from_millis(20);
        assert!(!wal.wait(seq, Some(deadline)).unwrap());
        wal.state.lock().leading = false;
        assert!(wal.wait(seq, None).unwrap());
        assert_eq!(
            records(&wal),
            vec![(1, b"key-0001".to_vec(), b"v".to_vec())]
        );
    }
}
