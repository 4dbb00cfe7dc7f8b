//! The `naive` baseline: what a careful program without batching does. One mutex guards a
//! file and an in-memory map; each write takes the lock, `pwrite`s one record at the end of
//! the log, `fdatasync`s it (in sync mode), updates the map and unlocks. Each writer has
//! one request outstanding, so `--depth` does not apply.
//!
//! The file is preallocated by writing zeros, like an engine segment (DESIGN §5: syncs into
//! unwritten extents cost a metadata write each), and written circularly: a benchmark needs
//! the cost of appending, not the records.

use super::engine::elapsed;
use super::{latency_histogram, record, Plan, RunResult, System};
use crate::error::{CliError, Context};
use crate::workload::{Generator, Op};
use hdrhistogram::Histogram;
use mergelog::{Config, Durability};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

/// Record header, as in the engine's log: op u8 | key_len u16 | value_len u32 (LE).
const RECORD_HEADER_LEN: usize = 7;
const OP_PUT: u8 = 1;

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
        let what = || format!("preallocate {}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
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
    fn append(&mut self, record: &[u8], key: &[u8], value: &[u8]) -> Result<(), CliError> {
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
        match self.index.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.index.insert(key.to_vec(), value.to_vec());
            }
        }
        Ok(())
    }
}

fn encode(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    buf.clear();
    buf.push(OP_PUT);
    buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    debug_assert_eq!(buf.len(), RECORD_HEADER_LEN);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

struct WriterResult {
    ops: u64,
    latency: Histogram<u64>,
    start: Instant,
    finish: Instant,
}

pub fn run(dir: &Path, plan: &Plan) -> Result<RunResult, CliError> {
    let size = Config::default().segment_bytes;
    let log = Mutex::new(Log::create(
        dir,
        size,
        plan.durability == Durability::Sync,
    )?);
    let barrier = Barrier::new(plan.writers);
    let writers: Vec<Result<WriterResult, CliError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.writers)
            .map(|i| {
                let (log, barrier) = (&log, &barrier);
                s.spawn(move || writer(log, Generator::new(&plan.spec, i), plan, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError("a writer thread panicked".into())))
            })
            .collect()
    });
    let writers = writers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let log = log.into_inner();
    let mut latency = latency_histogram();
    for w in &writers {
        latency
            .add(&w.latency)
            .context(|| "merge latency histograms".into())?;
    }
    Ok(RunResult {
        system: System::Naive,
        ops: writers.iter().map(|w| w.ops).sum(),
        elapsed: elapsed(writers.iter().map(|w| (w.start, w.finish))),
        latency,
        // Every write is its own batch.
        batches: log.writes,
        syncs: log.syncs,
        coalesced_writes: 0,
        collapsed_reads: 0,
        bytes_written: log.bytes,
        stages: None,
    })
}

fn writer(
    log: &Mutex<Log>,
    gen: Result<Generator, String>,
    plan: &Plan,
    barrier: &Barrier,
) -> Result<WriterResult, CliError> {
    let mut latency = latency_histogram();
    let mut buf = Vec::with_capacity(RECORD_HEADER_LEN + plan.spec.key_size + plan.spec.value_size);
    barrier.wait();
    let mut gen = gen.map_err(CliError)?;
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut ops = 0u64;
    loop {
        let op = gen.next_op();
        let submitted = Instant::now();
        match op {
            Op::Put { key, value } => {
                encode(&mut buf, key, value);
                log.lock().append(&buf, key, value)?;
            }
            Op::Get { key } => {
                // Copied out, as the engine's get returns an owned value.
                black_box(log.lock().index.get(key).cloned());
            }
        }
        let now = Instant::now();
        record(&mut latency, now - submitted);
        ops += 1;
        if now >= deadline {
            break;
        }
    }
    Ok(WriterResult {
        ops,
        latency,
        start,
        finish: Instant::now(),
    })
}
