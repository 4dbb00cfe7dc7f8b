//! `mergelog bench`: one workload, run against each system in turn, in its own directory.
//!
//! - `mergelog`: the engine with `Config::default()` plus the flags.
//! - `no-coalesce`: the same with `Config::coalesce = false` (plain group commit).
//! - `wal`: a conventional write-ahead log, leader/follower group commit (see `wal`).
//! - `naive`: one mutex around a file; every write is lock, pwrite, fdatasync, unlock.
//! - `mergelog-compact`: the engine as `mergelog` with `Compaction::Auto`; every engine system
//!   reports the disk it took against its live data (see `space`).
//! - the peers, real engines a user would otherwise pick, each driven as its users drive it:
//!   `okaywal`, `redb`, `fjall`, and `rocksdb` (cargo feature `rocksdb`).
//!
//! Load is either a closed loop (each writer keeps `--depth` requests in flight and submits
//! the next as soon as the oldest completes) or an open loop (`--rate`: requests are due on
//! a fixed schedule whatever the system does, and latency runs from when a request was due,
//! so a stalled system is charged for every request it kept waiting: coordinated omission
//! corrected). Every system draws the same seeded operation streams (see `workload`), and
//! the report puts their numbers side by side, each as a ratio against the baselines.
//!
//! On a noisy machine a ratio between systems that ran minutes apart measures the disk as
//! much as the systems: `--rounds N` runs them in alternation instead (each round runs
//! every system once, the order rotating), sums each system's rounds into the one result
//! the report prints, and reports each pairing's ratio round by round, computed from the
//! two runs of the same round.
//!
//! `mergelog profile` runs the same machinery on one engine system and prints the engine's
//! per-stage histograms instead of the comparison.

mod clients;
mod consumer;
mod cpu;
mod engine;
mod fjall;
mod hlog;
mod kv;
mod naive;
mod okaywal;
mod plot;
mod probe;
mod recorder;
mod redb;
pub mod report;
#[cfg(feature = "rocksdb")]
mod rocksdb;
mod space;
mod timeline;
mod wal;

use crate::error::{CliError, Context};
use crate::workload::{Dist, Size, Spec, KEY_SIZE_MIN};
use clap::{Args, ValueEnum};
use consumer::{ConsumerPlan, ConsumerTotals};
use hdrhistogram::Histogram;
use mergelog::{
    AutoCompaction, Compaction, Config, ConsumerLag, Durability, StageHistograms, Stats,
    WindowPolicy, WritePath,
};
use recorder::{Interval, Progress};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

/// `mergelog bench --help`'s examples (each one the tools take: `main`'s tests check).
pub const BENCH_EXAMPLES: &str = "\
Examples:
  mergelog bench                      # the default systems, 3 s each, on a temporary log
  mergelog bench --rounds 3           # the systems alternated, ratios round by round
  mergelog bench --systems mergelog,okaywal,wal --writers 16 --depth 1 --rounds 3
  mergelog bench --systems mergelog,wal --retain 2 --segment-bytes 16M --rounds 3
  mergelog bench --rate 20000 --duration 10 --json run.json --hlog run.hlog --plot run.svg
  mergelog bench --systems mergelog,mergelog-compact --segment-bytes 1M --batch-bytes-max 512K
  mergelog bench --dir /mnt/disk/bench --value-size 1K..4K --read-ratio 0.2";

/// `mergelog profile --help`'s examples.
pub const PROFILE_EXAMPLES: &str = "\
Examples:
  mergelog profile                    # 4 writers x 256 outstanding, 3 s
  mergelog profile --writers 16 --depth 1 --trace trace.txt
  mergelog profile --system mergelog-compact --segment-bytes 1M --batch-bytes-max 512K";

/// Flags that describe the workload and the engine; shared by `bench` and `profile`.
#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// Writer threads.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 4,
        value_parser = writers,
    )]
    writers: usize,
    /// Many asynchronous clients: N logical clients, each with one request outstanding (a
    /// closed loop: submit, wait for durability, record, again). The engine systems run them
    /// as N tasks on a tokio runtime of --threads workers, submitting with `put_async` and
    /// awaiting the ticket; the baselines, whose APIs block, as N threads. Replaces
    /// --writers and --depth.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        value_parser = clients,
        conflicts_with_all = ["writers", "depth", "rate"],
    )]
    clients: Option<usize>,
    /// With --clients: the engine systems' executor threads.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "T",
        default_value_t = 2,
        requires = "clients",
        value_parser = threads,
    )]
    threads: usize,
    /// Requests each writer keeps outstanding: the closed loop's depth, or with --rate the
    /// most a writer lets pile up before it waits (then sends fall behind schedule, and the
    /// corrected latency shows it). The naive baseline always has one per writer.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 256,
        value_parser = depth,
    )]
    depth: usize,
    /// Open loop: requests arrive at OPS per second in total, evenly spaced, whatever the
    /// system does; latency is measured from each request's scheduled send time [default:
    /// none, a closed loop].
    #[arg(long, allow_negative_numbers = true, value_name = "OPS", value_parser = rate)]
    rate: Option<f64>,
    /// Distinct keys.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 100_000,
        value_parser = keys,
    )]
    keys: u64,
    /// Key popularity: `uniform`, `zipf:THETA`, `sequential`, or `hotset:X:Y` (X % of the
    /// keys get Y % of the operations).
    #[arg(long, value_name = "DIST", default_value = "zipf:0.99")]
    dist: Dist,
    /// Key length in bytes, `N` or an inclusive range `MIN..MAX` (suffixes K, M: KiB, MiB;
    /// each key id keeps one length); at least 8: keys differ in their first 8 bytes.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SIZE",
        default_value = "16",
        value_parser = key_size,
    )]
    key_size: Size,
    /// Value length in bytes, `N` or an inclusive range `MIN..MAX` (suffixes K, M: KiB,
    /// MiB; drawn per put).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SIZE",
        default_value = "100",
        value_parser = value_size,
    )]
    value_size: Size,
    /// What the writes are: `put`, or `merge` (increments of a counter: engine systems only;
    /// `mergelog-getput` does them as a read and a put).
    #[arg(long, value_enum, value_name = "OP", default_value = "put")]
    op: OpArg,
    /// Fraction of operations that are windowed gets (0.0 to 1.0).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "F",
        default_value_t = 0.0,
        value_parser = fraction,
    )]
    read_ratio: f64,
    /// Fraction of operations that are deletes (0.0 to 1.0; with --read-ratio at most 1);
    /// puts are the rest.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "F",
        default_value_t = 0.0,
        value_parser = fraction,
    )]
    delete_ratio: f64,
    /// Seconds to run each system, 0.01 to 86400 [default: 3, or none with --ops].
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SECS",
        value_parser = seconds,
        conflicts_with = "ops"
    )]
    duration: Option<f64>,
    /// Run each system for this many operations (split over the writers) instead of a
    /// duration.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        value_parser = ops,
    )]
    ops: Option<u64>,
    /// When writes are acknowledged: after fdatasync/msync, or once in the page cache.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// How the engine writes batches [engine default: pwrite]. The naive baseline always
    /// uses pwrite + fdatasync.
    #[arg(long, value_enum)]
    write_path: Option<WritePathArg>,
    /// When the engine cuts a window: `adaptive`, `adaptive:QUIET_US`, `immediate` or
    /// `linger:US` (a linger over the window age cap raises the cap to match, unless
    /// --window-age-max is given).
    #[arg(long, value_name = "POLICY", default_value = "adaptive")]
    window: Window,
    /// Cut every window at this age, microseconds [engine default: 1000].
    #[arg(long, value_name = "US", value_parser = window_age)]
    window_age_max: Option<u64>,
    /// Cut a window once its requests reach this many ring bytes (suffixes K, M, G: KiB,
    /// MiB, GiB) [engine default: 4M].
    #[arg(long, value_name = "BYTES", value_parser = bytes)]
    batch_bytes_max: Option<u64>,
    /// Cut a window once it holds this many operations, at most 2147483647 [engine default:
    /// 1048576].
    #[arg(long, value_name = "N", value_parser = batch_ops)]
    batch_ops_max: Option<u64>,
    /// Bytes of the ingest ring, a power of two (suffixes K, M, G: KiB, MiB, GiB) [engine
    /// default: 16M].
    #[arg(long, value_name = "BYTES", value_parser = bytes)]
    ring_bytes: Option<u64>,
    /// Size of each segment file (suffixes K, M, G: KiB, MiB, GiB) [engine default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = bytes)]
    segment_bytes: Option<u64>,
    /// Syncer threads of the `mergelog-syncers` system: how many syncs it may have in flight
    /// at once (`Config::syncers`, 1 to 16) [default: 1, the one-thread syncer, against the
    /// engine's default of 2]. The other engine systems run with the engine's default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16))]
    syncers: Option<u64>,
    /// With several syncers: a sync starts while another runs only once the syncs take
    /// longer than this on average, microseconds (`Config::overlap_syncs_above`; 0: whenever
    /// a syncer is free) [engine default: 300].
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    overlap_syncs_above_us: Option<u64>,
    /// Threads that keep the CPUs from idling while requests are in flight, at the lowest
    /// priority (`Config::idle_poll_threads`, 0 to 64, for every engine system; their CPU
    /// counts in the run's) [engine default: 0].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=64))]
    idle_poll_threads: Option<u64>,
    /// Keep only the newest N segments of the engine's log (a log that retires its history
    /// behind a checkpoint, as a write-ahead log does): a thread retires the older ones as
    /// the run goes (`Engine::retire_before`, every 10 ms), and the engine reuses their files
    /// (`recycle_segments` = 2) instead of writing new segments full of zeros. Default: keep
    /// the whole history.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    retain: Option<u64>,
    /// Retired segments the engine systems keep for reuse instead of deleting them
    /// (`Config::recycle_segments`, at most 64; compactions keep more while the engine runs)
    /// [default: 0; `--retain` keeps at least 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=64))]
    recycle_segments: Option<u64>,
    /// How many request ids the engine remembers (`Config::request_ids`; only the
    /// `mergelog-ids` system uses ids) [engine default: 262144].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    id_horizon: Option<u64>,
    /// Parent directory for the runs (one subdirectory per system, kept afterwards; each
    /// must not exist yet or be empty). Default: a temporary directory, removed afterwards.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Seed of the operation streams (every system gets the same streams).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Before the runs, time N syncs of 4 KiB written into a zero-filled file in the run
    /// directory (the disk's price of one durable batch; at most 100000; 0 skips it; never
    /// with `--durability nosync`).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 200,
        value_parser = sync_probe,
    )]
    sync_probe: usize,
    /// Sampling interval of the throughput timeline and of --hlog, seconds [default: the
    /// duration / 30, between 0.05 and 1; 0.1 with --ops].
    #[arg(long, allow_negative_numbers = true, value_name = "SECS", value_parser = interval)]
    interval: Option<f64>,
    /// `mergelog-compact`: compact once the live records take less than R of the log's
    /// frames (`AutoCompaction::live_ratio`, between 0 and 1 exclusive).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "R",
        default_value_t = 0.5,
        value_parser = compaction_ratio,
    )]
    compaction_ratio: f64,
    /// `mergelog-compact`: how often the compacting thread looks besides whenever a segment
    /// completes, milliseconds (`AutoCompaction::check_every`) [engine default: 100].
    #[arg(long, value_name = "MS", value_parser = compaction_check_ms)]
    compaction_check_ms: Option<u64>,
}

/// Where the results go besides stdout; shared by `bench` and `profile`.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Also write the results as JSON to PATH (latencies in microseconds; schema in the
    /// README).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write an HdrHistogram interval log to PATH: per system and interval, the latency
    /// histogram (nanoseconds) tagged with the system's name (see the README).
    #[arg(long, value_name = "PATH")]
    hlog: Option<PathBuf>,
    /// Draw the latency percentile spectrum and the throughput over time of each system
    /// into an SVG file (the name must end in .svg; or a pipe or device, as /dev/stdout).
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,
}

/// `--consumer` and its flags (`bench` only; see `consumer`).
#[derive(Args, Debug)]
pub struct ConsumerArgs {
    /// Engine systems: run a durable consumer beside the writers, opened before they start,
    /// that reads, touches and commits every batch as a downstream processor would; the
    /// report, the JSON timeline and the plot then show its lag over time. The baselines
    /// (wal, naive and the peers) have no consumer and run as without it.
    #[arg(long)]
    consumer: bool,
    /// The consumer commits every N batches (and what it has processed whenever it waited
    /// 10 ms for a batch in vain, and at the end).
    #[arg(
        long,
        requires = "consumer",
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 1,
        value_parser = commit_every,
    )]
    consumer_commit_every: u64,
    /// The consumer processes at most RECORDS records per second (each record takes 1/RECORDS
    /// s of its time), so that it falls behind the writers [default: as fast as it can].
    #[arg(
        long,
        requires = "consumer",
        allow_negative_numbers = true,
        value_name = "RECORDS",
        value_parser = consumer_rate,
    )]
    consumer_rate: Option<f64>,
    /// Throttle the writers while the consumer lags by more than N batches
    /// (`Config::consumer_lag_max`; the writers wait, `Backpressure::Block`).
    #[arg(
        long,
        requires = "consumer",
        allow_negative_numbers = true,
        value_name = "N",
        value_parser = lag_batches,
    )]
    consumer_lag_max_batches: Option<u64>,
    /// Throttle the writers while the consumer lags by more than BYTES of frames (suffixes
    /// K, M, G: KiB, MiB, GiB).
    #[arg(long, requires = "consumer", value_name = "BYTES", value_parser = bytes)]
    consumer_lag_max_bytes: Option<u64>,
    /// Throttle the writers while the oldest batch the consumer has not committed is older
    /// than MS milliseconds.
    #[arg(
        long,
        requires = "consumer",
        allow_negative_numbers = true,
        value_name = "MS",
        value_parser = lag_age,
    )]
    consumer_lag_max_age: Option<u64>,
}

impl ConsumerArgs {
    /// The consumer the flags ask for (`None` without `--consumer`).
    fn plan(&self) -> Option<ConsumerPlan> {
        if !self.consumer {
            return None;
        }
        let limit = ConsumerLag {
            batches: self.consumer_lag_max_batches,
            bytes: self.consumer_lag_max_bytes,
            age: self.consumer_lag_max_age.map(Duration::from_millis),
        };
        Some(ConsumerPlan {
            commit_every: self.consumer_commit_every,
            rate: self.consumer_rate,
            lag_max: (limit != ConsumerLag::default()).then_some(limit),
        })
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// Systems to run, in order, comma-separated.
    #[arg(
        long,
        value_enum,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "mergelog,no-coalesce,okaywal,wal,naive"
    )]
    systems: Vec<System>,
    /// Run every system N times, alternating: round r runs each system once for the full
    /// length, starting with the r-th (mod the number of systems); the report sums the
    /// rounds per system and shows each pairing's per-round ratios.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 1,
        value_parser = rounds,
    )]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// The engine with the given flags.
    Mergelog,
    /// The engine with coalescing off: plain group commit.
    NoCoalesce,
    /// A conventional write-ahead log: writers append under one mutex, and whichever waits
    /// first writes and syncs everything appended (leader/follower group commit).
    Wal,
    /// Lock + pwrite + fdatasync per write, gets from a HashMap under the same lock.
    Naive,
    /// The okaywal crate, a real write-ahead log with group commit: one entry per write,
    /// `commit` returns once it is durable (sync mode only).
    Okaywal,
    /// RocksDB (the `rocksdb` crate, WAL on): one `put` per call with `sync = true`.
    /// Needs the tools built with `--features rocksdb`.
    Rocksdb,
    /// redb, a pure-Rust B-tree store: each write one transaction committed with
    /// `Durability::Immediate`.
    Redb,
    /// fjall, a pure-Rust LSM-tree store: each write `insert`, then
    /// `persist(PersistMode::SyncData)`.
    Fjall,
    /// The engine as `mergelog`, every put and delete submitted with a request id of its own
    /// (`put_with_id`): what idempotency costs, against `mergelog` in the same run.
    MergelogIds,
    /// The engine as `mergelog`; with `--op merge`, each increment done by the client as a
    /// read of the durable value and a put of the sum (two calls, not atomic: increments can
    /// be lost), against `mergelog`'s `merge` in the same run, with no merge operator
    /// configured (as such a client runs it). With `--op put`, `mergelog`.
    MergelogGetput,
    /// The engine as `mergelog` with `Compaction::Auto` (`--compaction-ratio`,
    /// `--compaction-check-ms`): what bounding the disk costs, against `mergelog` (which keeps
    /// its whole history) in the same run. Each compaction keeps the segments it retires that
    /// the log will fill next, so it seldom writes a segment full of zeros; at rest it keeps
    /// `--recycle-segments` of them (default none).
    MergelogCompact,
    /// The engine as `mergelog` with `--syncers` syncers (`Config::syncers`; default 1, one
    /// syncer thread, against the engine's default of 2), against `mergelog` in the same run.
    MergelogSyncers,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Mergelog => "mergelog",
            System::NoCoalesce => "no-coalesce",
            System::Wal => "wal",
            System::Naive => "naive",
            System::Okaywal => "okaywal",
            System::Rocksdb => "rocksdb",
            System::Redb => "redb",
            System::Fjall => "fjall",
            System::MergelogIds => "mergelog-ids",
            System::MergelogGetput => "mergelog-getput",
            System::MergelogCompact => "mergelog-compact",
            System::MergelogSyncers => "mergelog-syncers",
        }
    }

    /// True for the systems that run the engine (and so can have a consumer).
    pub fn has_engine(self) -> bool {
        matches!(
            self,
            System::Mergelog
                | System::NoCoalesce
                | System::MergelogIds
                | System::MergelogGetput
                | System::MergelogCompact
                | System::MergelogSyncers
        )
    }

    /// True for the systems whose `bytes_written` is what they wrote to their log (the
    /// engine's frames, `wal`'s and `naive`'s records); the peers' is the bytes handed to
    /// them (what they write to their own files is not measured).
    pub fn counts_bytes_written(self) -> bool {
        self.has_engine() || matches!(self, System::Wal | System::Naive)
    }

    /// The system called `name`.
    pub fn named(name: &str) -> Option<System> {
        System::value_variants()
            .iter()
            .copied()
            .find(|s| s.name() == name)
    }
}

/// `--op`: what the writes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OpArg {
    /// Puts of `--value-size` values.
    Put,
    /// Merges: increments of an 8-byte counter (`MergeOperator::Add`); engine systems only.
    Merge,
}

/// The error of systems that have no merge (`--op merge`), named in `systems`.
pub(crate) fn merge_unsupported(systems: &str) -> CliError {
    let engines: Vec<&str> = System::value_variants()
        .iter()
        .filter(|s| s.has_engine())
        .map(|s| s.name())
        .collect();
    CliError::usage(format!(
        "--op merge runs only the engine systems ({}), not {systems}",
        engines.join(", ")
    ))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    Nosync,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WritePathArg {
    Pwrite,
    Mmap,
}

/// `--window`, parsed.
#[derive(Clone, Copy, Debug)]
struct Window(WindowPolicy);

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        const HELP: &str = "expected 'adaptive', 'adaptive:QUIET_US', 'immediate' or 'linger:US'";
        let micros = |what: &str, us: &str| -> Result<Duration, String> {
            let us: u64 = us
                .parse()
                .map_err(|_| format!("{what} '{us}' is not a whole number of microseconds"))?;
            if us > 10_000_000 {
                return Err(format!("{what} {us} µs exceeds the 10 s window age limit"));
            }
            Ok(Duration::from_micros(us))
        };
        let policy = match s {
            "adaptive" => WindowPolicy::default(),
            "immediate" => WindowPolicy::Immediate,
            _ => match s.split_once(':') {
                Some(("linger", us)) => WindowPolicy::Linger(micros("linger", us)?),
                Some(("adaptive", us)) => WindowPolicy::Adaptive {
                    quiet: micros("quiet time", us)?,
                },
                _ => return Err(HELP.into()),
            },
        };
        Ok(Window(policy))
    }
}

fn window_name(policy: WindowPolicy) -> String {
    match policy {
        WindowPolicy::Adaptive { quiet } => format!("adaptive:{}", quiet.as_micros()),
        WindowPolicy::Immediate => "immediate".into(),
        WindowPolicy::Linger(d) => format!("linger:{}", d.as_micros()),
    }
}

fn write_path_name(p: WritePath) -> &'static str {
    match p {
        WritePath::Pwrite => "pwrite",
        WritePath::Mmap => "mmap",
    }
}

/// A whole number in `1..=max`.
fn count(s: &str, max: u64) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if !(1..=max).contains(&n) {
        return Err(format!("must be between 1 and {max}"));
    }
    Ok(n)
}

/// Every writer is a thread; the cap keeps thread creation from failing mid-run.
fn writers(s: &str) -> Result<usize, String> {
    count(s, 1024).map(|n| n as usize)
}

/// 0 skips the probe; the cap keeps its scratch file (4 KiB a sync) under 400 MB.
fn sync_probe(s: &str) -> Result<usize, String> {
    if s == "0" {
        return Ok(0);
    }
    count(s, 100_000)
        .map(|n| n as usize)
        .map_err(|e| e.replace("between 1 and", "0 (no probe) or between 1 and"))
}

fn clients(s: &str) -> Result<usize, String> {
    count(s, 1 << 16).map(|n| n as usize)
}

fn threads(s: &str) -> Result<usize, String> {
    count(s, 1024).map(|n| n as usize)
}

fn depth(s: &str) -> Result<usize, String> {
    count(s, 1 << 20).map(|n| n as usize)
}

fn keys(s: &str) -> Result<u64, String> {
    count(s, 1 << 48)
}

fn ops(s: &str) -> Result<u64, String> {
    count(s, 1 << 48)
}

/// Each round runs every system once, for the full length.
fn rounds(s: &str) -> Result<usize, String> {
    count(s, 1000).map(|n| n as usize)
}

fn commit_every(s: &str) -> Result<u64, String> {
    count(s, 1 << 32)
}

fn lag_batches(s: &str) -> Result<u64, String> {
    count(s, 1 << 48)
}

/// Up to a day.
fn lag_age(s: &str) -> Result<u64, String> {
    count(s, 86_400_000)
}

fn consumer_rate(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| (1.0..=1e9).contains(&f),
        "must be between 1 and 1e9 records per second",
    )
}

/// The engine's limit, `Config::batch_ops_max`: 2^31 - 1.
fn batch_ops(s: &str) -> Result<u64, String> {
    count(s, u64::from(u32::MAX / 2))
}

fn window_age(s: &str) -> Result<u64, String> {
    count(s, 10_000_000)
}

/// Up to a minute.
fn compaction_check_ms(s: &str) -> Result<u64, String> {
    count(s, 60_000)
}

fn compaction_ratio(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| f > 0.0 && f < 1.0,
        "must be between 0 and 1 (exclusive)",
    )
}

/// `4096`, `64K`, `16M`, `1G` (binary multiples; a trailing `B` or `iB` is allowed).
fn bytes(s: &str) -> Result<u64, String> {
    let n = crate::workload::byte_count(s)
        .ok_or_else(|| format!("'{s}' is not a byte count (e.g. 4096, 64K, 16M, 1G)"))?;
    Some(n as u64)
        .filter(|&n| n > 0 && n <= 1 << 40)
        .ok_or_else(|| format!("{s} must be more than 0 and at most 1T"))
}

fn key_size(s: &str) -> Result<Size, String> {
    let size: Size = s.parse()?;
    let max = Config::default().key_len_max;
    if size.min < KEY_SIZE_MIN || size.max > max {
        return Err(format!(
            "must be between {KEY_SIZE_MIN} and {max} (the engine's key_len_max)"
        ));
    }
    Ok(size)
}

fn value_size(s: &str) -> Result<Size, String> {
    let size: Size = s.parse()?;
    let max = Config::default().value_len_max;
    if size.max > max {
        return Err(format!(
            "must be at most {max} (the engine's value_len_max)"
        ));
    }
    Ok(size)
}

/// Parses a number and checks it with `ok`, answering `range` (what it must be) if not.
fn float_where(s: &str, ok: impl Fn(f64) -> bool, range: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !ok(f) {
        return Err(range.into());
    }
    Ok(f)
}

fn fraction(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| (0.0..=1.0).contains(&f),
        "must be between 0.0 and 1.0",
    )
}

/// The shortest `--duration`: shorter runs complete nothing a report could say anything of
/// (a thread takes longer than that to start).
const DURATION_MIN: f64 = 0.01;

fn seconds(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| (DURATION_MIN..=86_400.0).contains(&f),
        "must be at least 0.01 and at most 86400 seconds",
    )
}

fn interval(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| (0.01..=3600.0).contains(&f),
        "must be between 0.01 and 3600 seconds",
    )
}

fn rate(s: &str) -> Result<f64, String> {
    float_where(
        s,
        |f| (1.0..=1e9).contains(&f),
        "must be between 1 and 1e9 operations per second",
    )
}

/// Everything a system run needs, resolved from the flags.
pub struct Plan {
    pub spec: Spec,
    pub writers: usize,
    pub depth: usize,
    /// Open loop: total arrival rate, ops/s.
    pub rate: Option<f64>,
    /// Stop issuing after this long (closed loop: submitted; open loop: scheduled).
    pub duration: Option<Duration>,
    /// Stop after this many operations in total.
    pub ops: Option<u64>,
    pub interval: Duration,
    pub durability: Durability,
    pub engine: Config,
    /// `--retain`: segments the engine's log keeps; older ones are retired during the run.
    pub retain: Option<usize>,
    /// `bench --consumer`: a durable consumer beside the writers of each engine system.
    pub consumer: Option<ConsumerPlan>,
    /// `--clients`: `writers` clients at depth 1, tasks on a runtime for the engine systems.
    pub clients: Option<clients::Clients>,
    /// `mergelog-compact`'s policy (`--compaction-ratio`, `--compaction-check-ms`).
    pub compaction: AutoCompaction,
    /// `--syncers`: the `mergelog-syncers` system's syncers.
    pub syncers: usize,
}

impl Plan {
    fn engine_config(&self, system: System) -> Config {
        Config {
            coalesce: matches!(
                system,
                System::Mergelog
                    | System::MergelogIds
                    | System::MergelogGetput
                    | System::MergelogCompact
                    | System::MergelogSyncers
            ),
            // `--op merge` counts with the add operator; `mergelog-getput` does them as a read
            // and a put, so it runs as a client who does that would, without an operator
            // (which makes the flusher note every window's values for the merges to come).
            merge: (self.spec.merge && system != System::MergelogGetput)
                .then_some(mergelog::MergeOperator::Add),
            compaction: self.compaction_of(system),
            syncers: match system {
                System::MergelogSyncers => self.syncers,
                _ => self.engine.syncers,
            },
            ..self.engine.clone()
        }
    }

    /// `mergelog-compact` compacts on its own; the others as `Config::default()` (on demand,
    /// which the bench never asks for: they keep their whole history).
    fn compaction_of(&self, system: System) -> Compaction {
        match system {
            System::MergelogCompact => Compaction::Auto(self.compaction),
            _ => self.engine.compaction,
        }
    }

    /// When writer `writer`, started at `start`, stops issuing.
    pub fn limit(&self, writer: usize, start: Instant) -> Limit {
        Limit {
            quota: self.ops.map(|n| {
                let w = self.writers as u64;
                n / w + u64::from((writer as u64) < n % w)
            }),
            deadline: self.duration.map(|d| start + d),
        }
    }

    /// Writer `writer`'s send schedule in an open loop: the writers share the rate and are
    /// staggered so that together they send evenly.
    pub fn schedule(&self, writer: usize, start: Instant) -> Option<Schedule> {
        self.rate.map(|rate| Schedule {
            start,
            interval_ns: 1e9 * self.writers as f64 / rate,
            phase_ns: 1e9 * writer as f64 / rate,
            sent: 0,
        })
    }
}

/// A writer's stopping rule.
pub struct Limit {
    quota: Option<u64>,
    deadline: Option<Instant>,
}

impl Limit {
    /// True once `issued` requests are enough, or the deadline has passed (`now`), or the
    /// next request would be due at or after it (`next`: the next scheduled time in an open
    /// loop, now in a closed one). An open-loop writer that has fallen behind its schedule
    /// stops at the deadline too, with requests due that it never sent: see
    /// [`Limit::missed`].
    pub fn reached(&self, issued: u64, next: Instant, now: Instant) -> bool {
        self.quota.is_some_and(|q| issued >= q)
            || self.deadline.is_some_and(|d| next >= d || now >= d)
    }

    /// Requests that `schedule` made due before the deadline but that were never sent: the
    /// writer was still behind when time ran out. Their latency would be at least the time
    /// from when they were due to the deadline; they are reported as a count, not in the
    /// percentiles.
    pub fn missed(&self, schedule: Option<&Schedule>) -> u64 {
        match (schedule, self.deadline) {
            (Some(s), Some(d)) if d > s.start => {
                let span = (d - s.start).as_nanos() as f64 - s.phase_ns;
                let due = if span > 0.0 {
                    (span / s.interval_ns).ceil() as u64
                } else {
                    0
                };
                let due = self.quota.map_or(due, |q| due.min(q));
                due.saturating_sub(s.sent)
            }
            _ => 0,
        }
    }
}

/// An open-loop writer's send times: `start + phase + k * interval`.
pub struct Schedule {
    start: Instant,
    interval_ns: f64,
    phase_ns: f64,
    sent: u64,
}

impl Schedule {
    pub fn next_at(&self) -> Instant {
        self.start
            + Duration::from_nanos((self.phase_ns + self.sent as f64 * self.interval_ns) as u64)
    }

    pub fn advance(&mut self) {
        self.sent += 1;
    }
}

/// Lets an open-loop writer's sleeps end within microseconds of their deadline instead of
/// the default 50 µs timer slack, which would otherwise show up as scheduling latency.
pub fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling
    // thread's timer slack; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Sleeps until `t` (returns at once if it has passed).
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// What one system run measured, or with `--rounds`, every run of the system summed (see
/// [`RunResult::absorb`]). Counters are the engine's (after close) or, for `naive`, its
/// own.
pub struct RunResult {
    pub system: System,
    /// Operations completed, including those drained after the deadline.
    pub ops: u64,
    /// Open loop: requests due before the deadline that were never sent (see
    /// `Limit::missed`).
    pub missed: u64,
    pub puts: u64,
    pub deletes: u64,
    pub gets: u64,
    /// First writer start to last writer done (drain included); summed over the rounds.
    pub elapsed: Duration,
    /// Each run of the system, in round order (one without `--rounds`).
    pub rounds: Vec<RoundRun>,
    /// Per-operation latency in nanoseconds, from the intended send time (corrected).
    pub latency: Histogram<u64>,
    /// Per-operation latency in nanoseconds, from the actual submission (raw).
    pub latency_raw: Histogram<u64>,
    /// Per-interval throughput and latency, the rounds' one after the other (each
    /// interval's `round` says which run it belongs to).
    pub timeline: Vec<Interval>,
    pub batches: u64,
    pub syncs: u64,
    pub coalesced_writes: u64,
    pub collapsed_reads: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    /// The engine's final statistics (engine systems only); over the rounds, the counters
    /// and stage histograms summed.
    pub engine: Option<Stats>,
    /// `--consumer`: what the consumer did (engine systems only), summed over the rounds.
    pub consumer: Option<ConsumerTotals>,
    /// CPU used while the writers ran (summed over the rounds); `None` where unreadable.
    pub cpu: Option<cpu::CpuUse>,
    /// Engine systems: the disk the run took against its live data, one per round (empty
    /// for the baselines).
    pub space: Vec<space::SpaceRun>,
    /// `profile --trace`: the engine's pipeline timeline (`Engine::take_trace`).
    pub trace: Option<mergelog::Trace>,
    /// When this run passed its start line (the system's setup done: an engine opened, a
    /// baseline's file zero-filled), which its intervals count from; `None` if it never
    /// started. One run's: not summed over the rounds.
    pub started: Option<Instant>,
}

/// One run of a system: what `--rounds` keeps of each besides the merged totals.
pub struct RoundRun {
    /// 0-based round number.
    pub round: usize,
    pub ops: u64,
    pub elapsed: Duration,
    /// When the run passed its start line (its setup done), from the start of the whole
    /// bench (for the interval log and the plot).
    pub offset: Duration,
}

impl RoundRun {
    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ops, self.elapsed)
    }
}

/// `ops / elapsed`, 0 for no time.
fn per_second(ops: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        ops as f64 / secs
    } else {
        0.0
    }
}

impl RunResult {
    /// What every system measures the same way (the writers' side); the log counters start
    /// at zero and there are no engine statistics: callers fill in what their system has.
    pub fn measured(
        system: System,
        sampled: recorder::Sampled,
        timeline: Vec<Interval>,
        elapsed: Duration,
        missed: u64,
    ) -> RunResult {
        RunResult {
            system,
            ops: sampled.latency.len(),
            missed,
            puts: sampled.puts,
            deletes: sampled.deletes,
            gets: sampled.gets,
            elapsed,
            rounds: Vec::new(),
            latency: sampled.latency,
            latency_raw: sampled.latency_raw,
            timeline,
            batches: 0,
            syncs: 0,
            coalesced_writes: 0,
            collapsed_reads: 0,
            records_written: 0,
            bytes_written: 0,
            engine: None,
            consumer: None,
            cpu: None,
            space: Vec::new(),
            trace: None,
            started: sampled.start,
        }
    }

    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ops, self.elapsed)
    }

    /// When `interval` started, from the start of the whole bench.
    pub fn interval_offset(&self, interval: &Interval) -> Duration {
        let run = self
            .rounds
            .iter()
            .find(|r| r.round == interval.round)
            .map_or(Duration::ZERO, |r| r.offset);
        run + interval.start
    }

    /// Marks this result as the run of round `round`, started `offset` into the bench.
    fn stamp(&mut self, round: usize, offset: Duration) {
        self.rounds = vec![RoundRun {
            round,
            ops: self.ops,
            elapsed: self.elapsed,
            offset,
        }];
        for interval in &mut self.timeline {
            interval.round = round;
        }
        for space in &mut self.space {
            space.round = round;
        }
    }

    /// Adds a later round's run of the same system: counts, elapsed time and log counters
    /// summed (so `ops_per_s` is all ops over all run time), latency and stage histograms
    /// added, timelines and rounds appended. The engine's `backlog_bytes` is summed too (0
    /// after each close); `durable_position`, a position in one run's log, is the later
    /// run's. The fields are destructured so that a new one cannot be forgotten here.
    fn absorb(&mut self, other: RunResult) -> Result<(), CliError> {
        let RunResult {
            system,
            ops,
            missed,
            puts,
            deletes,
            gets,
            elapsed,
            rounds,
            latency,
            latency_raw,
            timeline,
            batches,
            syncs,
            coalesced_writes,
            collapsed_reads,
            records_written,
            bytes_written,
            engine,
            consumer,
            cpu,
            space,
            trace,
            started: _,
        } = other;
        debug_assert_eq!(system, self.system);
        self.ops += ops;
        self.missed += missed;
        self.puts += puts;
        self.deletes += deletes;
        self.gets += gets;
        self.elapsed += elapsed;
        self.rounds.extend(rounds);
        let merge = || "merge the rounds' latency histograms".to_owned();
        self.latency.add(&latency).context(merge)?;
        self.latency_raw.add(&latency_raw).context(merge)?;
        self.timeline.extend(timeline);
        self.batches += batches;
        self.syncs += syncs;
        self.coalesced_writes += coalesced_writes;
        self.collapsed_reads += collapsed_reads;
        self.records_written += records_written;
        self.bytes_written += bytes_written;
        match (&mut self.engine, engine) {
            (Some(mine), Some(theirs)) => add_stats(mine, theirs)?,
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        match (&mut self.consumer, consumer) {
            (Some(mine), Some(theirs)) => *mine += theirs,
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        match (&mut self.cpu, cpu) {
            (Some(mine), Some(theirs)) => *mine += theirs,
            (mine, theirs) => *mine = theirs.or(mine.take()),
        }
        self.space.extend(space);
        // One run is traced (`profile`); the first round's timeline if ever several were.
        self.trace = self.trace.take().or(trace);
        Ok(())
    }
}

/// `into += from`, for the runs of one system in different rounds (see `absorb`).
fn add_stats(into: &mut Stats, from: Stats) -> Result<(), CliError> {
    let Stats {
        submitted,
        writes,
        reads,
        coalesced_writes,
        collapsed_reads,
        records_written,
        batches,
        syncs,
        bytes_written,
        backlog_bytes,
        durable_position,
        window_waits,
        sync_time,
        throttled,
        duplicates,
        merges,
        merges_refused,
        refused_no_space,
        windows_by_waiters,
        segments,
        compaction,
        stages,
        consumers,
    } = from;
    into.consumers = consumers;
    into.submitted += submitted;
    into.writes += writes;
    into.reads += reads;
    into.coalesced_writes += coalesced_writes;
    into.collapsed_reads += collapsed_reads;
    into.records_written += records_written;
    into.batches += batches;
    into.syncs += syncs;
    into.bytes_written += bytes_written;
    into.backlog_bytes += backlog_bytes;
    into.durable_position = durable_position;
    into.window_waits += window_waits;
    into.throttled += throttled;
    into.duplicates += duplicates;
    into.merges += merges;
    into.merges_refused += merges_refused;
    into.refused_no_space += refused_no_space;
    into.windows_by_waiters += windows_by_waiters;
    into.sync_time.busy_ns += sync_time.busy_ns;
    into.sync_time.frame_ready_ns += sync_time.frame_ready_ns;
    into.sync_time.nothing_ready_ns += sync_time.nothing_ready_ns;
    into.sync_time.overlapped += sync_time.overlapped;
    into.segments.fresh += segments.fresh;
    into.segments.reused += segments.reused;
    into.segments.retired += segments.retired;
    into.segments.zero_fill += segments.zero_fill;
    let c = &mut into.compaction;
    c.runs += compaction.runs;
    c.batches += compaction.batches;
    c.records += compaction.records;
    c.bytes += compaction.bytes;
    c.segments_retired += compaction.segments_retired;
    c.failed += compaction.failed;
    let StageHistograms {
        ring_wait,
        cut_wait,
        window_age,
        coalesce,
        encode,
        sync_wait,
        sync,
        wakeup,
        end_to_end,
    } = stages;
    let s = &mut into.stages;
    for (name, mine, theirs) in [
        ("ring_wait", &mut s.ring_wait, ring_wait),
        ("cut_wait", &mut s.cut_wait, cut_wait),
        ("window_age", &mut s.window_age, window_age),
        ("coalesce_sort", &mut s.coalesce, coalesce),
        ("encode_write", &mut s.encode, encode),
        ("sync_wait", &mut s.sync_wait, sync_wait),
        ("sync", &mut s.sync, sync),
        ("wakeup", &mut s.wakeup, wakeup),
        ("end_to_end", &mut s.end_to_end, end_to_end),
    ] {
        mine.add(&theirs)
            .context(|| format!("merge the rounds' {name} histograms"))?;
    }
    Ok(())
}

/// Nanosecond latency histogram, 1 ns to 1 minute, 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Where the runs live: a temporary directory, or the user's `--dir`.
enum Root {
    Temp(tempfile::TempDir),
    User(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(t) => t.path(),
            Root::User(p) => p,
        }
    }

    fn prepare(dir: Option<&Path>) -> Result<Root, CliError> {
        match dir {
            None => tempfile::Builder::new()
                .prefix("mergelog-bench-")
                .tempdir()
                .map(Root::Temp)
                .context(|| "cannot create a temporary directory (pass --dir)".into()),
            Some(p) => {
                if std::fs::metadata(p).is_ok_and(|m| !m.is_dir()) {
                    return Err(CliError::usage(format!(
                        "--dir {} is not a directory; name a directory (made if missing)",
                        p.display()
                    )));
                }
                std::fs::create_dir_all(p).map_err(|e| {
                    CliError::usage(format!("cannot use --dir {}: {e}", p.display()))
                })?;
                Ok(Root::User(p.to_owned()))
            }
        }
    }

    /// The (empty) directories of the systems' runs, each made if missing, once every one
    /// was found usable: a name there that cannot be one makes `--dir` unusable (exit 2), as
    /// the other `--dir` cases do, and nothing is made then (no earlier system's directory
    /// left behind by a later one's refusal).
    fn subdirs(&self, systems: &[System]) -> Result<Vec<(System, PathBuf)>, CliError> {
        let found = systems
            .iter()
            .map(|&s| Ok((s, self.subdir(s)?)))
            .collect::<Result<Vec<_>, CliError>>()?;
        let mut dirs = Vec::with_capacity(found.len());
        for (system, (path, missing)) in found {
            if missing {
                std::fs::create_dir(&path).map_err(|e| unusable_run_dir(&path, e))?;
            }
            dirs.push((system, path));
        }
        Ok(dirs)
    }

    /// The directory of one system's run, and whether it is missing (to be made); an error if
    /// the name there cannot be an empty run directory. Makes nothing.
    fn subdir(&self, system: System) -> Result<(PathBuf, bool), CliError> {
        let path = self.path().join(system.name());
        match std::fs::read_dir(&path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(CliError::usage(format!(
                        "{} already holds files (an earlier run?); pass an empty or new --dir",
                        path.display()
                    )));
                }
                Ok((path, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((path, true)),
            Err(_) if std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) => {
                Err(CliError::usage(format!(
                    "{} is not a directory (an earlier run's file?); pass an empty or new --dir",
                    path.display()
                )))
            }
            Err(e) => Err(unusable_run_dir(&path, e)),
        }
    }
}

/// A run directory that cannot be read or made: `--dir` is unusable (exit 2).
fn unusable_run_dir(path: &Path, e: std::io::Error) -> CliError {
    CliError::usage(format!(
        "cannot use {} as a run directory: {e}; pass an empty or new --dir",
        path.display()
    ))
}

/// Empties a system's run directory for its next round: the round's log goes, so the next
/// run starts on an empty directory as the first did (`subdir` found it empty or new, so
/// everything in it is the bench's own). Done as soon as the run is over, then settled with
/// a `syncfs` of the file system: the removal's journal commit (and, on a file system
/// mounted with `discard`, the discards of the freed blocks) happen here, before the next run
/// starts, rather than inside it. Returns how long the removal and the sync took.
fn renew(dir: &Path) -> Result<Duration, CliError> {
    let start = Instant::now();
    let what = || {
        format!(
            "empty the run directory {} for the next round",
            dir.display()
        )
    };
    std::fs::remove_dir_all(dir).context(what)?;
    std::fs::create_dir(dir).context(what)?;
    sync_fs(dir)?;
    Ok(start.elapsed())
}

/// `syncfs(2)` of the file system holding `dir`: everything written to it, the metadata of
/// removals too, made durable before this returns (Linux; elsewhere `sync(2)`, which
/// schedules the writes of every file system).
fn sync_fs(dir: &Path) -> Result<(), CliError> {
    let what = || format!("sync the file system of {}", dir.display());
    let d = std::fs::File::open(dir).context(what)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes an open file descriptor (`d` outlives the call) and no memory.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error()).context(what);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(d);
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
    }
    Ok(())
}

/// The file system type of the mount holding `path`, from /proc/self/mounts.
fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_dev, mount, fs) = (f.next()?, f.next()?, f.next()?);
            let mount = mount.replace("\\040", " ");
            path.starts_with(&mount)
                .then(|| (mount.len(), fs.to_owned()))
        })
        // The longest matching mount point wins; among equals, the last mounted.
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

/// The machine a run was made on.
pub struct Machine {
    pub cpus: usize,
    pub os: String,
}

fn machine() -> Machine {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: format!("{} {}", std::env::consts::OS, release.trim())
            .trim()
            .to_owned(),
    }
}

/// The output files of a `bench` or `profile` (`--json`, `--hlog`, `--plot`, `--trace`),
/// opened for writing before anything runs, so that a path that cannot be written fails at
/// once rather than after the runs. Those the tool created are removed again unless the
/// command gets to the end ([`Outputs::keep`]); a file that existed is left as it was until
/// it is written.
struct Outputs {
    created: Vec<PathBuf>,
    kept: bool,
}

impl Outputs {
    /// Opens (creating) every `(flag, path)`; two flags naming one file are refused.
    fn prepare(paths: &[(&str, &Path)]) -> Result<Outputs, CliError> {
        let mut outputs = Outputs {
            created: Vec::new(),
            kept: false,
        };
        let mut seen: Vec<(&str, (u64, u64))> = Vec::new();
        for &(flag, path) in paths {
            let id = outputs.open(flag, path)?;
            if let Some((other, _)) = seen.iter().find(|(_, s)| *s == id) {
                return Err(CliError::usage(format!(
                    "{other} and {flag} name the same file, {}; give each its own",
                    path.display()
                )));
            }
            seen.push((flag, id));
        }
        Ok(outputs)
    }

    /// Opens `path` for writing (creating it, not truncating it); its device and inode.
    fn open(&mut self, flag: &str, path: &Path) -> Result<(u64, u64), CliError> {
        use std::os::unix::fs::MetadataExt;
        if path.is_dir() {
            return Err(CliError::usage(format!(
                "{flag} {} is a directory; name a file",
                path.display()
            )));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CliError::usage(format!(
                    "{flag} {}: {} is not a directory",
                    path.display(),
                    parent.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::usage(format!(
                    "{flag} {}: directory {} does not exist",
                    path.display(),
                    parent.display()
                )))
            }
            Err(e) => {
                return Err(CliError::usage(format!(
                    "{flag} {}: cannot use {}: {e}",
                    path.display(),
                    parent.display()
                )))
            }
        }
        let existed = std::fs::symlink_metadata(path).is_ok();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                CliError::usage(format!("{flag} {}: cannot write it: {e}", path.display()))
            })?;
        if !existed {
            self.created.push(path.to_owned());
        }
        let m = file
            .metadata()
            .context(|| format!("{flag} {}", path.display()))?;
        Ok((m.dev(), m.ino()))
    }

    /// The command got to the end: the files stay.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.kept {
            for p in &self.created {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl OutputArgs {
    /// Opens the output files, and `trace` (`profile --trace`), before anything runs.
    fn prepare(&self, trace: Option<&Path>) -> Result<Outputs, CliError> {
        if let Some(plot) = &self.plot {
            check_plot_path(plot)?;
        }
        let paths: Vec<(&str, &Path)> = [
            ("--json", self.json.as_deref()),
            ("--hlog", self.hlog.as_deref()),
            ("--plot", self.plot.as_deref()),
            ("--trace", trace),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.map(|p| (flag, p)))
        .collect();
        Outputs::prepare(&paths)
    }
}

/// `--plot` draws an SVG: a name that says otherwise (`latency.png`) would hold what a viewer
/// cannot open as what the name says, so it is refused. A pipe or a device (`/dev/stdout`),
/// whose name says nothing of the format, is taken as it is.
fn check_plot_path(path: &Path) -> Result<(), CliError> {
    let svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if svg || special {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "--plot takes a file name ending in .svg (the plot is an SVG; no other format is \
         drawn): {}",
        path.display()
    )))
}

/// The plan and the engine configuration the flags describe.
fn plan(args: &WorkloadArgs) -> Result<Plan, CliError> {
    if args.read_ratio + args.delete_ratio > 1.0 + 1e-9 {
        return Err(CliError::usage(format!(
            "--read-ratio {} plus --delete-ratio {} exceeds 1",
            args.read_ratio, args.delete_ratio
        )));
    }
    let retain = args.retain.map(|n| n as usize);
    let engine = engine_from_flags(args, retain)?;

    let duration = match (args.duration, args.ops) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(3.0),
    };
    let interval = args.interval.unwrap_or(match duration {
        Some(d) => (d / 30.0).clamp(0.05, 1.0),
        None => 0.1,
    });
    let clients = args.clients.map(|n| clients::Clients {
        n,
        threads: args.threads,
    });
    // `--clients N`: N writers at depth 1 (threads for the baselines, tasks for the engine).
    let (writers, depth) = clients.map_or((args.writers, args.depth), |c| (c.n, 1));
    let plan = Plan {
        spec: Spec {
            keys: args.keys,
            dist: args.dist,
            key_size: args.key_size,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            delete_ratio: args.delete_ratio,
            writers,
            seed: args.seed,
            merge: args.op == OpArg::Merge,
        },
        writers,
        depth,
        rate: args.rate,
        duration: duration.map(Duration::from_secs_f64),
        ops: args.ops,
        interval: Duration::from_secs_f64(interval),
        durability: engine.durability,
        engine,
        retain,
        consumer: None,
        clients,
        compaction: compaction_from_flags(args),
        syncers: args.syncers.map_or(1, |n| n as usize),
    };
    // Surfaces a bad distribution now rather than inside every writer thread.
    crate::workload::check(&plan.spec).map_err(CliError::usage)?;
    Ok(plan)
}

/// `--consumer`: the consumer and its lag limit into `plan`, for the engine systems of
/// `systems` (an error if there is none; the baselines run without, as said on stderr).
fn with_consumer(
    command: &str,
    plan: &mut Plan,
    consumer: ConsumerPlan,
    systems: &[System],
) -> Result<(), CliError> {
    let baselines: Vec<&str> = systems
        .iter()
        .filter(|s| !s.has_engine())
        .map(|s| s.name())
        .collect();
    if baselines.len() == systems.len() {
        return Err(CliError::usage(
            "--consumer needs an engine system (mergelog, no-coalesce, mergelog-ids, mergelog-getput, mergelog-compact or mergelog-syncers) in --systems",
        ));
    }
    if !baselines.is_empty() {
        note!(
            "mergelog {command}: --consumer: {} run without a consumer (a baseline has no log to consume)",
            baselines.join(", ")
        );
    }
    plan.engine.consumer_lag_max = consumer.lag_max;
    plan.engine
        .validate()
        .map_err(|e| CliError::usage(format!("engine configuration from the flags: {e}")))?;
    plan.consumer = Some(consumer);
    Ok(())
}

/// What the plan asks of `systems` that one of them cannot do, found before any runs: merges
/// (engine systems only), a request larger than the engine accepts, a `wal` batch larger
/// than its file.
fn check_systems(plan: &Plan, systems: &[System]) -> Result<(), CliError> {
    if plan.spec.merge {
        let without: Vec<&str> = systems
            .iter()
            .filter(|s| !s.has_engine())
            .map(|s| s.name())
            .collect();
        if !without.is_empty() {
            return Err(merge_unsupported(&without.join(", ")));
        }
    }
    if systems.iter().any(|s| s.has_engine()) {
        check_request_len(plan)?;
    }
    if systems.contains(&System::Wal) {
        wal::file_size(plan)?;
    }
    Ok(())
}

/// Bytes a request carries besides its key and value (or operand) in the engine's ring: the
/// request header (16 bytes) and, for `mergelog-ids`, its id (16); a get's completion slot
/// is smaller than that. Not public in the library (`request::HEADER`); kept generous.
const REQUEST_OVERHEAD: usize = 32;

/// Refuses a workload whose largest request the engine would refuse (`RequestTooLarge`): the
/// engine's limit is the smaller of a ring record (`ring_bytes / 4`) and `batch_bytes_max`,
/// each less the ring's 8-byte record header (`Config::request_len_max`, crate-private;
/// computed here the same way).
fn check_request_len(plan: &Plan) -> Result<(), CliError> {
    use mergelog::internals::ring::RECORD_HEADER;
    let e = &plan.engine;
    let ring = e.ring_bytes / 4 - RECORD_HEADER;
    let batch = e.batch_bytes_max.saturating_sub(RECORD_HEADER);
    let (limit, flag) = if ring <= batch {
        (
            ring,
            "--ring-bytes (a request takes at most a quarter of the ring)",
        )
    } else {
        (batch, "--batch-bytes-max")
    };
    // A merge's operand is the 8-byte counter increment.
    let value = if plan.spec.merge {
        8
    } else {
        plan.spec.value_size.max
    };
    let len = plan.spec.key_size.max + value + REQUEST_OVERHEAD;
    if len > limit {
        return Err(CliError::usage(format!(
            "a request of up to {} key bytes and {value} value bytes ({len} bytes in the \
             engine's ring) exceeds the engine's request limit of {limit} bytes, set by {flag}; \
             raise it or lower --key-size / --value-size",
            plan.spec.key_size.max
        )));
    }
    Ok(())
}

/// The most clients a system without an asynchronous submit runs: one thread each.
const THREAD_CLIENTS_MAX: usize = 4096;

/// `--clients` runs the engine systems that have an asynchronous submit, without a consumer;
/// the baselines and peers run a thread per client, so at most [`THREAD_CLIENTS_MAX`].
fn check_clients(plan: &Plan, consumer: bool, systems: &[System]) -> Result<(), CliError> {
    let Some(clients) = plan.clients else {
        return Ok(());
    };
    let threaded: Vec<&str> = systems
        .iter()
        .filter(|s| !s.has_engine())
        .map(|s| s.name())
        .collect();
    if clients.n > THREAD_CLIENTS_MAX && !threaded.is_empty() {
        return Err(CliError::usage(format!(
            "--clients {}: {} run each client as a thread of its own, at most \
             {THREAD_CLIENTS_MAX}; run more clients on the engine systems alone",
            clients.n,
            threaded.join(", ")
        )));
    }
    if consumer {
        return Err(CliError::usage("--clients does not run with --consumer"));
    }
    match systems
        .iter()
        .find(|s| matches!(s, System::MergelogIds | System::MergelogGetput))
    {
        Some(s) => Err(CliError::usage(format!(
            "--clients: {} has no asynchronous submit; run mergelog, no-coalesce, a peer, wal or naive",
            s.name()
        ))),
        None => Ok(()),
    }
}

/// `mergelog-compact`'s policy: the engine's defaults but for the flags given.
fn compaction_from_flags(args: &WorkloadArgs) -> AutoCompaction {
    let default = AutoCompaction::default();
    AutoCompaction {
        live_ratio: args.compaction_ratio,
        check_every: args
            .compaction_check_ms
            .map_or(default.check_every, Duration::from_millis),
        ..default
    }
}

/// The engine configuration the flags describe, validated; `retain` (`--retain`) makes the
/// engine reuse retired segment files.
fn engine_from_flags(args: &WorkloadArgs, retain: Option<usize>) -> Result<Config, CliError> {
    let mut engine = Config {
        durability: match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Nosync => Durability::NoSync,
        },
        window: args.window.0,
        ..Config::default()
    };
    if let Some(p) = args.write_path {
        engine.write_path = match p {
            WritePathArg::Pwrite => WritePath::Pwrite,
            WritePathArg::Mmap => WritePath::Mmap,
        };
    }
    match args.window_age_max {
        Some(us) => engine.window_age_max = Duration::from_micros(us),
        None => {
            if let WindowPolicy::Linger(d) | WindowPolicy::Adaptive { quiet: d } = engine.window {
                engine.window_age_max = engine.window_age_max.max(d);
            }
        }
    }
    let size = |flag: &str, n: u64| {
        usize::try_from(n).map_err(|_| CliError::usage(format!("{flag} {n} is too large")))
    };
    if let Some(n) = args.batch_bytes_max {
        engine.batch_bytes_max = size("--batch-bytes-max", n)?;
    }
    if let Some(n) = args.batch_ops_max {
        engine.batch_ops_max = size("--batch-ops-max", n)?;
    }
    if let Some(n) = args.ring_bytes {
        engine.ring_bytes = size("--ring-bytes", n)?;
    }
    if let Some(n) = args.segment_bytes {
        engine.segment_bytes = n;
    }
    if let Some(us) = args.overlap_syncs_above_us {
        engine.overlap_syncs_above = Duration::from_micros(us);
    }
    if let Some(n) = args.idle_poll_threads {
        engine.idle_poll_threads = n as usize;
    }
    if let Some(n) = args.id_horizon {
        engine.request_ids.ids = size("--id-horizon", n)?;
    }
    if let Some(n) = args.recycle_segments {
        engine.recycle_segments = n as usize;
    }
    if retain.is_some() {
        engine.recycle_segments = engine.recycle_segments.max(2);
    }
    engine
        .validate()
        .map_err(|e| CliError::usage(format!("engine configuration from the flags: {e}")))?;
    Ok(engine)
}

/// What a run of several systems produced, ready for the report and the files.
pub struct Session {
    pub plan: Plan,
    /// One per system, in `--systems` order, each summing the system's rounds.
    pub results: Vec<RunResult>,
    pub workload: report::Workload,
    /// Wall-clock time the first run started (the interval log's base time).
    pub started: SystemTime,
    /// The disk's sync time, measured before the runs (`--sync-probe`).
    pub probe: Option<probe::SyncProbe>,
}

/// What `profile` measures besides the run (`bench` measures neither).
#[derive(Clone, Copy, Debug, Default)]
struct Profiling {
    /// Sample the engine's stage histograms per interval.
    stage_intervals: bool,
    /// Record the engine's pipeline timeline (`--trace`).
    trace: bool,
}

/// Events `profile --trace` keeps (32 bytes each: 128 MiB at most); a run that records more
/// reports how many it dropped.
const TRACE_EVENTS: usize = 1 << 22;
/// Runs `systems` one after the other, each in its own directory, `rounds` times: round r
/// runs every system once, starting with system r (mod their number), each on an emptied
/// directory; a system's runs are summed into one result (`RunResult::absorb`). `command`
/// names the subcommand in messages; `profiling.stage_intervals` samples the engine's stage
/// histograms per interval for the interval log (profile).
fn execute(
    command: &str,
    args: &WorkloadArgs,
    output: &OutputArgs,
    systems: &[System],
    rounds: usize,
    profiling: Profiling,
    consumer: Option<ConsumerPlan>,
) -> Result<Session, CliError> {
    let (plan, systems) = checked(command, args, systems, profiling, consumer)?;
    let systems = &systems[..];
    let root = Root::prepare(args.dir.as_deref())?;
    let dirs = root.subdirs(systems)?;
    let fs = fs_type(root.path());
    if fs.as_deref() == Some("tmpfs") && plan.durability == Durability::Sync {
        note!(
            "mergelog {command}: warning: {} is on tmpfs, where a sync costs nothing; pass --dir on a disk",
            root.path().display()
        );
    }
    let probe = probe_syncs(command, root.path(), args.sync_probe, &plan)?;
    let hooks = RunHooks {
        encode: output.hlog.is_some(),
        stage_intervals: profiling.stage_intervals,
    };
    let started = SystemTime::now();
    let results = run_rounds(command, &plan, &hooks, &dirs, rounds)?;
    let workload = report::Workload::new(&plan, args, systems, rounds, fs);
    drop(root);
    Ok(Session {
        plan,
        results,
        workload,
        started,
        probe,
    })
}

/// What `execute` refuses before it touches a disk: the plan the flags describe, and the
/// systems to run (okaywal left out without syncs, said on stderr).
fn checked(
    command: &str,
    args: &WorkloadArgs,
    systems: &[System],
    profiling: Profiling,
    consumer: Option<ConsumerPlan>,
) -> Result<(Plan, Vec<System>), CliError> {
    let mut seen = Vec::new();
    for s in systems {
        if seen.contains(s) {
            return Err(CliError::usage(format!(
                "--systems lists {} twice; name each system once",
                s.name()
            )));
        }
        seen.push(*s);
    }
    if cfg!(not(feature = "rocksdb")) && systems.contains(&System::Rocksdb) {
        return Err(rocksdb_missing());
    }
    let mut plan = plan(args)?;
    check_systems(&plan, systems)?;
    if profiling.trace {
        plan.engine.trace_events = TRACE_EVENTS;
    }
    check_clients(&plan, consumer.is_some(), systems)?;
    if let Some(c) = consumer {
        with_consumer(command, &mut plan, c, systems)?;
    }
    // okaywal always syncs: without syncs it would measure something else under its name.
    let mut systems = systems.to_vec();
    if plan.durability != Durability::Sync && systems.contains(&System::Okaywal) {
        note!("mergelog {command}: okaywal skipped: it always syncs its commits");
        systems.retain(|&s| s != System::Okaywal);
        if systems.is_empty() {
            return Err(CliError::usage(
                "nothing to run: okaywal always syncs; add a system or drop --durability nosync",
            ));
        }
    }
    Ok((plan, systems))
}

/// `--sync-probe`: the disk's sync time, measured in `root` before the runs (`None` when
/// skipped: 0 syncs, or no syncs to price).
fn probe_syncs(
    command: &str,
    root: &Path,
    syncs: usize,
    plan: &Plan,
) -> Result<Option<probe::SyncProbe>, CliError> {
    if syncs == 0 || plan.durability != Durability::Sync {
        return Ok(None);
    }
    let p = probe::run(root, syncs)?;
    note!(
        "mergelog {command}: sync probe: {} x {} KiB pwrite + fdatasync: p50 {:.1} µs, p99 {:.1} µs",
        p.syncs,
        probe::PROBE_BYTES / 1024,
        p.p50.as_secs_f64() * 1e6,
        p.p99.as_secs_f64() * 1e6,
    );
    Ok(Some(p))
}

/// Runs every system of `dirs` once per round, the order rotating, and sums each system's
/// runs; the results in `dirs` order.
fn run_rounds(
    command: &str,
    plan: &Plan,
    hooks: &RunHooks,
    dirs: &[(System, PathBuf)],
    rounds: usize,
) -> Result<Vec<RunResult>, CliError> {
    let how_long = match (plan.duration, plan.ops) {
        (Some(d), _) => format!("for {:.1} s", d.as_secs_f64()),
        (None, Some(n)) => format!("for {n} ops"),
        (None, None) => unreachable!("plan() always sets a duration or an op count"),
    };
    let bench_start = Instant::now();
    let mut merged: Vec<Option<RunResult>> = dirs.iter().map(|_| None).collect();
    let total = rounds * dirs.len();
    // Whether the file system has been synced since anything last wrote to it: the sync
    // probe, the run directories' creation, and every run leave work behind (the engine's
    // `close` removes its prepared next segment, `--durability nosync` leaves dirty pages), which
    // must not land in the next timed run.
    let mut settled = false;
    for round in 0..rounds {
        for j in 0..dirs.len() {
            let k = (round + j) % dirs.len();
            let (system, dir) = &dirs[k];
            let done = round * dirs.len() + j;
            let which = if rounds > 1 {
                format!("round {}/{rounds}, {}/{total}", round + 1, done + 1)
            } else {
                format!("{}/{total}", done + 1)
            };
            if !settled {
                let start = Instant::now();
                sync_fs(dir)?;
                note!(
                    "mergelog {command}: synced the file system before the run ({:.1} ms)",
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            note!(
                "mergelog {command}: [{which}] {} {how_long} in {}",
                system.name(),
                dir.display()
            );
            let result = run_once(*system, dir, plan, hooks, round, bench_start)?;
            check_completed(&result, &how_long)?;
            note!(
                "mergelog {command}: {}: {} ops/s",
                system.name(),
                report::thousands(result.ops_per_s().round() as u64)
            );
            settled = false;
            // Its next round starts on an empty directory: emptied now, and the file system
            // synced, so that none of the removal's work lands in a timed run.
            if round + 1 < rounds {
                let took = renew(dir)?;
                note!(
                    "mergelog {command}: {}: removed this round's files and synced the file \
                     system before the next run ({:.1} ms)",
                    system.name(),
                    took.as_secs_f64() * 1e3
                );
                settled = true;
            }
            match &mut merged[k] {
                Some(all) => all.absorb(result)?,
                slot => *slot = Some(result),
            }
        }
    }
    Ok(merged
        .into_iter()
        .map(|r| r.expect("every system ran in every round"))
        .collect())
}

/// A run that completed no operation (`how_long`: what it was given) has nothing to report:
/// an error, not a row of zeros.
fn check_completed(result: &RunResult, how_long: &str) -> Result<(), CliError> {
    if result.ops > 0 {
        return Ok(());
    }
    Err(CliError::new(format!(
        "{}: completed no operation {how_long}: there is nothing to report (a longer \
         --duration, or a system that stalled?)",
        result.system.name()
    )))
}

/// One run of `system` in `dir`, with its progress bar: the run of round `round`, stamped
/// with when it started from `bench_start`.
fn run_once(
    system: System,
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    round: usize,
    bench_start: Instant,
) -> Result<RunResult, CliError> {
    let progress = match (plan.duration, plan.ops) {
        (Some(d), _) => Progress::new(system.name(), false, d.as_millis() as u64),
        (None, n) => Progress::new(system.name(), true, n.unwrap_or(0)),
    };
    // Taken before the system's setup, for a run that never reached its start line.
    let before_setup = bench_start.elapsed();
    let result = match system {
        System::Naive => naive::run(dir, plan, hooks, &progress),
        System::Wal => wal::run(dir, plan, hooks, &progress),
        System::Okaywal => okaywal::run(dir, plan, hooks, &progress),
        System::Redb => redb::run(dir, plan, hooks, &progress),
        System::Fjall => fjall::run(dir, plan, hooks, &progress),
        System::Rocksdb => run_rocksdb(dir, plan, hooks, &progress),
        _ => engine::run(system, dir, plan, hooks, &progress),
    };
    progress.finish();
    let mut result = result.map_err(|e| e.prefixed(system.name()))?;
    // The intervals count from the start line, after the setup (which for `wal` zero-fills
    // its file, for an engine opens it): so does the run's offset, or the interval log and
    // the plot put each interval earlier by the setup's time.
    let offset = result
        .started
        .map_or(before_setup, |s| s.saturating_duration_since(bench_start));
    result.stamp(round, offset);
    Ok(result)
}

#[cfg(feature = "rocksdb")]
fn run_rocksdb(
    dir: &Path,
    plan: &Plan,
    hooks: &RunHooks,
    progress: &Progress,
) -> Result<RunResult, CliError> {
    rocksdb::run(dir, plan, hooks, progress)
}

#[cfg(not(feature = "rocksdb"))]
fn run_rocksdb(_: &Path, _: &Plan, _: &RunHooks, _: &Progress) -> Result<RunResult, CliError> {
    Err(rocksdb_missing())
}

/// `--systems rocksdb` in tools built without RocksDB (checked before anything runs).
fn rocksdb_missing() -> CliError {
    CliError::usage(
        "rocksdb is not built into this mergelog: rebuild the tools with the cargo feature \
         `rocksdb` (cargo build --release -p mergelog-tools --features rocksdb; it needs \
         libclang, see the README)",
    )
}

/// What a system run records besides its totals.
pub struct RunHooks {
    /// Keep encoded interval histograms (for --hlog).
    pub encode: bool,
    /// Sample the engine's stage histograms per interval (profile --hlog).
    pub stage_intervals: bool,
}

/// Writes --json, --hlog and --plot.
fn write_outputs(
    output: &OutputArgs,
    session: &Session,
    report: &report::Report,
    title: &str,
) -> Result<(), CliError> {
    if let Some(path) = &output.json {
        let json = serde_json::to_string_pretty(report).context(|| "encode JSON".into())?;
        std::fs::write(path, json + "\n").context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &output.hlog {
        hlog::write(path, session, title)?;
    }
    if let Some(path) = &output.plot {
        plot::write(path, session, title)?;
    }
    Ok(())
}

/// Writes the report to stdout. A reader that left (`| head`, `| true`) is not an error: the
/// run and the output files asked for (`--json`, `--hlog`, `--plot`, `--trace`, written
/// after it and removed if the command fails) are worth keeping without it.
fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if !crate::logdir::broken_pipe(&e) => {
            Err(CliError::new(format!("write the report to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// What `bench` refuses in `args` before it writes anything (the output paths' names too),
/// without running: for tests of command lines, such as the README's.
#[cfg(test)]
pub fn check(args: &BenchArgs) -> Result<(), CliError> {
    if let Some(plot) = &args.output.plot {
        check_plot_path(plot)?;
    }
    let consumer = args.consumer.plan();
    checked(
        "bench",
        &args.workload,
        &args.systems,
        Profiling::default(),
        consumer,
    )
    .map(drop)
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let outputs = args.output.prepare(None)?;
    let session = execute(
        "bench",
        &args.workload,
        &args.output,
        &args.systems,
        args.rounds,
        Profiling::default(),
        args.consumer.plan(),
    )?;
    let report = report::Report::new(&session, machine(), "bench");
    print(&report.text(&session.results))?;
    write_outputs(&args.output, &session, &report, "mergelog bench")?;
    outputs.keep();
    Ok(())
}

/// `mergelog profile`: one engine system, its stages in detail.
pub mod profile {
    use super::*;

    #[derive(Args, Debug)]
    pub struct ProfileArgs {
        #[command(flatten)]
        workload: WorkloadArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// The engine system to profile.
        #[arg(long, value_enum, default_value_t = EngineSystem::Mergelog)]
        system: EngineSystem,
        /// Record the pipeline's timeline (`Config::trace_events`: each window's cut and
        /// hand-on, each group a syncer took, each sync's start and end, each compaction batch
        /// and roll, each wait for the bound on frames not yet durable), write it to FILE (one event per line: nanoseconds since open, kind,
        /// value) and sum it up: how the disk's time divides by syncs in flight and what the
        /// flusher did while none ran, and how long each hand-off took.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    }

    #[derive(Clone, Copy, Debug, ValueEnum)]
    enum EngineSystem {
        /// The engine with the given flags.
        Mergelog,
        /// The engine with coalescing off: plain group commit.
        NoCoalesce,
        /// The engine with `--syncers` syncers (default 1).
        MergelogSyncers,
        /// The engine compacting on its own (`Compaction::Auto` at `--compaction-ratio`).
        MergelogCompact,
    }

    impl EngineSystem {
        fn system(self) -> System {
            match self {
                EngineSystem::Mergelog => System::Mergelog,
                EngineSystem::NoCoalesce => System::NoCoalesce,
                EngineSystem::MergelogSyncers => System::MergelogSyncers,
                EngineSystem::MergelogCompact => System::MergelogCompact,
            }
        }
    }

    /// What `profile` refuses in `args` before it writes anything, without running (as
    /// `bench::check`).
    #[cfg(test)]
    pub fn check(args: &ProfileArgs) -> Result<(), CliError> {
        if let Some(plot) = &args.output.plot {
            check_plot_path(plot)?;
        }
        let profiling = Profiling {
            stage_intervals: true,
            trace: args.trace.is_some(),
        };
        checked(
            "profile",
            &args.workload,
            &[args.system.system()],
            profiling,
            None,
        )
        .map(drop)
    }

    pub fn run(args: ProfileArgs) -> Result<(), CliError> {
        let system = args.system.system();
        let outputs = args.output.prepare(args.trace.as_deref())?;
        let session = execute(
            "profile",
            &args.workload,
            &args.output,
            &[system],
            1,
            Profiling {
                stage_intervals: true,
                trace: args.trace.is_some(),
            },
            None,
        )?;
        let report = report::Report::new(&session, machine(), "profile");
        print(&report.profile_text(&session.results))?;
        if let Some(path) = &args.trace {
            let trace = session.results.first().and_then(|r| r.trace.as_ref());
            let trace = trace.ok_or_else(|| CliError::new("the engine recorded no trace"))?;
            timeline::write(path, trace)?;
            print(&timeline::summary(trace, path))?;
        }
        write_outputs(&args.output, &session, &report, "mergelog profile")?;
        outputs.keep();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workload's flags alone, as `bench` and `profile` take them.
    #[derive(clap::Parser, Debug)]
    struct WorkloadCli {
        #[command(flatten)]
        w: WorkloadArgs,
    }

    /// The plan of the workload flags `args` (after the program name).
    fn plan_of(args: &[&str]) -> Plan {
        let cli = <WorkloadCli as clap::Parser>::try_parse_from(["t"].iter().chain(args));
        plan(&cli.unwrap().w).unwrap()
    }

    /// No interval histograms kept, no stage sampling.
    const NO_HOOKS: RunHooks = RunHooks {
        encode: false,
        stage_intervals: false,
    };

    /// Spins until this thread has used `d` more CPU; returns what it used.
    fn burn(d: Duration) -> Duration {
        use cpu::thread_cpu;
        let start = thread_cpu();
        while thread_cpu() - start < d {
            std::hint::black_box(0u64);
        }
        thread_cpu() - start
    }

    /// The CPU a run reports is what the process used once its writers passed the start
    /// line: a writer's setup before it (drawing a zipf pool takes a quarter of a second of
    /// CPU at one writer) is not the run's, and the work after it is. The process's CPU
    /// counts every thread of it, so the check runs alone, in a process of its own (this test
    /// binary again, this test only): beside the other tests of the binary it once counted
    /// 365 ms of theirs and failed.
    #[test]
    fn a_runs_cpu_starts_at_the_start_line() {
        const ALONE: &str = "MERGELOG_TEST_CPU_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "bench::tests::a_runs_cpu_starts_at_the_start_line",
                    "--test-threads",
                    "1",
                ])
                .env(ALONE, "1")
                .output()
                .expect("run this test in a process of its own");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let (plan, hooks) = (plan_of(&["--writers", "2", "--ops", "2"]), NO_HOOKS);
        let progress = Progress::new("t", true, 2);
        let (before, during) = (Duration::from_millis(300), Duration::from_millis(100));
        let used = parking_lot::Mutex::new(Vec::new());
        let (driven, cpu) =
            engine::drive(&plan, &hooks, &progress, None, None, None, |_, _, line| {
                let setup = burn(before);
                assert!(line.wait());
                let start = Instant::now();
                let work = burn(during);
                used.lock().push((setup, work));
                Ok(engine::Span {
                    start,
                    finish: Instant::now(),
                    missed: 0,
                })
            });
        driven.unwrap();
        let cpu = cpu.expect("the process's CPU clock reads on Linux").process;
        let used = used.into_inner();
        let setup: Duration = used.iter().map(|u| u.0).sum();
        let work: Duration = used.iter().map(|u| u.1).sum();
        assert!(
            cpu >= work,
            "the run's {cpu:?} misses the writers' {work:?} after the line"
        );
        assert!(
            cpu < work + setup / 2,
            "the run's {cpu:?} counts the writers' {setup:?} before the line"
        );
    }

    /// The flags that set an engine limit refuse what the engine would: `--batch-ops-max`
    /// past 2^31 - 1 as a flag error naming the flag and the largest value, `--batch-bytes-max`
    /// past it with the engine's error naming the setting and that value (no run: the plan is
    /// only made).
    #[test]
    fn engine_limits_past_the_largest_value_are_refused_with_it() {
        let parse = |flag: &str, value: &str| {
            <WorkloadCli as clap::Parser>::try_parse_from(["t", flag, value])
                .map_err(|e| e.to_string())
                .and_then(|cli| plan(&cli.w).map(|_| ()).map_err(|e| e.message))
        };
        let largest = ((1u64 << 31) - 1).to_string();
        parse("--batch-ops-max", &largest).unwrap();
        for (flag, value, names) in [
            ("--batch-ops-max", "2147483648", "--batch-ops-max"),
            ("--batch-ops-max", "4294967295", "--batch-ops-max"),
            ("--batch-bytes-max", "2G", "batch_bytes_max"),
        ] {
            let err = parse(flag, value).expect_err(flag);
            assert!(
                err.contains(names) && err.contains(&largest),
                "{flag} {value}: the error does not name {names} and the largest value \
                 accepted ({largest}): {err}"
            );
        }
    }

    /// A run's offset into the bench (the interval log's and the plot's time axis) is when
    /// it passed its start line, which its intervals count from, not when its setup began:
    /// `wal` zero-fills its 64 MiB file first. Before, the offset was taken before the
    /// setup, and every interval was drawn earlier by the setup's time.
    #[test]
    fn a_runs_offset_is_its_start_line_not_its_setup() {
        let plan = plan_of(&["--writers", "1", "--ops", "50"]);
        let dir = tempfile::tempdir().unwrap();
        let bench_start = Instant::now();
        let r = run_once(System::Wal, dir.path(), &plan, &NO_HOOKS, 0, bench_start).unwrap();
        let started = r.started.expect("the run passed its start line");
        assert_eq!(
            r.rounds[0].offset,
            started.duration_since(bench_start),
            "the run's offset, against its start line's"
        );
        let first = r.timeline.first().expect("an interval");
        assert_eq!(
            r.interval_offset(first),
            started.duration_since(bench_start)
        );
    }

    /// A run that completed nothing fails the bench instead of reporting zeros.
    #[test]
    fn a_run_that_completed_nothing_is_an_error() {
        let run = |ops: u64| {
            let mut latency = latency_histogram();
            for _ in 0..ops {
                latency.record(1000).unwrap();
            }
            let sampled = recorder::Sampled {
                latency_raw: latency.clone(),
                latency,
                puts: ops,
                deletes: 0,
                gets: 0,
                timeline: Vec::new(),
                last_stages: None,
                start: None,
            };
            RunResult::measured(System::Naive, sampled, Vec::new(), Duration::ZERO, 0)
        };
        let e = check_completed(&run(0), "for 0.0 s").unwrap_err();
        assert_eq!(e.exit, crate::error::EXIT_FAILURE);
        assert!(e.message.contains("naive: completed no operation"), "{e}");
        assert!(check_completed(&run(1), "for 0.0 s").is_ok());
    }
}
