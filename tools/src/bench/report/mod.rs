//! The bench report: a table for people (stdout) and the same numbers as JSON. The JSON
//! schema is documented in the README ("JSON report"); bump `SCHEMA_VERSION` when a field
//! changes meaning or goes away (adding fields does not).
//!
//! Here: the JSON report and how it is computed from the runs. `text` renders it for
//! people (`bench`'s comparison, `profile`'s stages); `table` lays out tables and numbers.

use super::consumer::LagSample;
use super::consumer::{ConsumerPlan, NAME};
use super::cpu::CpuUse;
use super::probe::SyncProbe;
use super::recorder::Interval;
use super::{Machine, Plan, RoundRun, RunResult, Session, System, WorkloadArgs};
use hdrhistogram::Histogram;
use mergelog::{Durability, Stats};
use serde::Serialize;
use std::fmt::Write;

mod space;
mod text;

use crate::table;
pub use crate::table::thousands;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Serialize)]
pub struct SizeJson {
    min: usize,
    max: usize,
}

/// The workload, every flag resolved.
#[derive(Clone, Serialize)]
pub struct Workload {
    /// `closed` (writers x depth) or `open` (--rate).
    mode: &'static str,
    writers: usize,
    depth: usize,
    /// `--clients`: the clients (also `writers`, at depth 1) and the engine systems'
    /// executor threads; null without.
    clients: Option<usize>,
    threads: Option<usize>,
    /// Open loop: the arrival rate, ops/s; null in a closed loop.
    rate_ops_per_s: Option<f64>,
    keys: u64,
    dist: String,
    key_size: SizeJson,
    value_size: SizeJson,
    /// `--op`: `put`, or `merge` (the writes are increments of 8-byte counters, counted in
    /// `put_ratio` and `runs[].puts`; `value_size` is then not used).
    op: &'static str,
    put_ratio: f64,
    delete_ratio: f64,
    read_ratio: f64,
    /// Null when the run was limited by --ops.
    duration_s: Option<f64>,
    /// --ops, or null.
    ops_limit: Option<u64>,
    /// --rounds: how many times each system ran (duration_s / ops_limit are per run).
    rounds: usize,
    interval_s: f64,
    durability: &'static str,
    write_path: &'static str,
    window: String,
    window_age_max_us: u64,
    batch_bytes_max: usize,
    batch_ops_max: usize,
    ring_bytes: usize,
    segment_bytes: u64,
    /// `--syncers`: syncs the `mergelog-syncers` system may have in flight at once (the
    /// other engine systems run with the engine's default, `engine_syncers`).
    syncers: usize,
    engine_syncers: usize,
    /// `Config::overlap_syncs_above` of every engine system, microseconds.
    overlap_syncs_above_us: u64,
    /// `Config::idle_poll_threads` of every engine system (`--idle-poll-threads`).
    idle_poll_threads: usize,
    /// `--retain`: segments the engines' logs keep (older ones retired during the run and
    /// their files reused); null: the whole history is kept.
    retain_segments: Option<usize>,
    /// `Config::recycle_segments` of the engine systems (`--recycle-segments`, at least 2
    /// with `--retain`).
    recycle_segments: usize,
    /// The size of `wal`'s log file (preallocated, zero-filled before the run: the engine's
    /// default segment size, or more when one batch could be larger); null when `wal` did not
    /// run.
    wal_file_bytes: Option<u64>,
    systems: Vec<&'static str>,
    seed: u64,
    /// `--dir`, or null for a temporary directory.
    dir: Option<String>,
    /// File system type of the run directory, when known.
    fs: Option<String>,
    /// `--consumer` and its flags; absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<ConsumerWorkloadJson>,
    /// `mergelog-compact`'s policy; absent when it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    compaction: Option<space::CompactionWorkloadJson>,
}

/// `--consumer`: how the consumer beside the engine systems' writers was run.
#[derive(Clone, Serialize)]
pub struct ConsumerWorkloadJson {
    /// `--consumer-commit-every`.
    commit_every: u64,
    /// `--consumer-rate`, records/s; null: as fast as it can.
    rate_records_per_s: Option<f64>,
    /// `Config::consumer_lag_max` (`--consumer-lag-max-*`); null where not set.
    lag_max_batches: Option<u64>,
    lag_max_bytes: Option<u64>,
    lag_max_age_ms: Option<u64>,
}

impl ConsumerWorkloadJson {
    fn of(c: &ConsumerPlan) -> ConsumerWorkloadJson {
        let lag = c.lag_max.unwrap_or_default();
        ConsumerWorkloadJson {
            commit_every: c.commit_every,
            rate_records_per_s: c.rate,
            lag_max_batches: lag.batches,
            lag_max_bytes: lag.bytes,
            lag_max_age_ms: lag.age.map(|a| a.as_millis() as u64),
        }
    }

    /// `consumer: commits every batch, as fast as it can; writers throttled past 20 batches`.
    fn describe(&self) -> String {
        let commits = match self.commit_every {
            1 => "commits every batch".to_owned(),
            n => format!("commits every {n} batches"),
        };
        let pace = match self.rate_records_per_s {
            Some(r) => format!("at most {} records/s", thousands(r.round() as u64)),
            None => "as fast as it can".into(),
        };
        let mut limits = Vec::new();
        if let Some(n) = self.lag_max_batches {
            limits.push(format!("{n} batches"));
        }
        if let Some(n) = self.lag_max_bytes {
            limits.push(format!("{n} B"));
        }
        if let Some(n) = self.lag_max_age_ms {
            limits.push(format!("{n} ms"));
        }
        let limit = if limits.is_empty() {
            "no lag limit".into()
        } else {
            format!("writers wait while it lags past {}", limits.join(" or "))
        };
        format!("consumer: durable consumer '{NAME}', {commits}, {pace}; {limit}")
    }
}

impl Workload {
    pub fn new(
        plan: &Plan,
        args: &WorkloadArgs,
        systems: &[System],
        rounds: usize,
        fs: Option<String>,
    ) -> Self {
        let s = &plan.spec;
        let e = &plan.engine;
        Workload {
            mode: if plan.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            writers: plan.writers,
            depth: plan.depth,
            clients: plan.clients.map(|c| c.n),
            threads: plan.clients.map(|c| c.threads),
            rate_ops_per_s: plan.rate,
            keys: s.keys,
            dist: s.dist.to_string(),
            key_size: SizeJson {
                min: s.key_size.min,
                max: s.key_size.max,
            },
            value_size: SizeJson {
                min: s.value_size.min,
                max: s.value_size.max,
            },
            op: if s.merge { "merge" } else { "put" },
            put_ratio: (1.0 - s.read_ratio - s.delete_ratio).max(0.0),
            delete_ratio: s.delete_ratio,
            read_ratio: s.read_ratio,
            duration_s: plan.duration.map(|d| d.as_secs_f64()),
            ops_limit: plan.ops,
            rounds,
            interval_s: plan.interval.as_secs_f64(),
            durability: match plan.durability {
                Durability::Sync => "sync",
                Durability::NoSync => "nosync",
            },
            write_path: super::write_path_name(e.write_path),
            window: super::window_name(e.window),
            window_age_max_us: e.window_age_max.as_micros() as u64,
            batch_bytes_max: e.batch_bytes_max,
            batch_ops_max: e.batch_ops_max,
            ring_bytes: e.ring_bytes,
            segment_bytes: e.segment_bytes,
            syncers: plan.syncers,
            engine_syncers: e.syncers,
            overlap_syncs_above_us: e.overlap_syncs_above.as_micros() as u64,
            idle_poll_threads: e.idle_poll_threads,
            retain_segments: plan.retain,
            recycle_segments: e.recycle_segments,
            wal_file_bytes: if systems.contains(&System::Wal) {
                super::wal::file_size(plan).ok()
            } else {
                None
            },
            systems: systems.iter().map(|s| s.name()).collect(),
            seed: s.seed,
            dir: args.dir.as_ref().map(|d| d.display().to_string()),
            fs,
            consumer: plan.consumer.as_ref().map(ConsumerWorkloadJson::of),
            compaction: space::CompactionWorkloadJson::of(plan, systems),
        }
    }

    pub fn describe(&self) -> String {
        let load = match self.rate_ops_per_s {
            Some(rate) => format!(
                "open loop at {} ops/s over {} writers (at most {} in flight each)",
                thousands(rate.round() as u64),
                self.writers,
                self.depth
            ),
            None => match (self.clients, self.threads) {
                (Some(n), Some(t)) => format!(
                    "{n} clients x depth 1 (engine: tasks on {t} executor threads; baselines: {n} threads)"
                ),
                _ => format!("{} writers x depth {}", self.writers, self.depth),
            },
        };
        let size = |s: &SizeJson| {
            if s.min == s.max {
                format!("{}", s.min)
            } else {
                format!("{}..{}", s.min, s.max)
            }
        };
        let length = match (self.duration_s, self.ops_limit) {
            (Some(d), _) => format!("{d} s"),
            (None, Some(n)) => format!("{n} ops"),
            (None, None) => "-".into(),
        };
        let length = if self.rounds > 1 {
            format!(
                "{length} per system and round, {} rounds alternating",
                self.rounds
            )
        } else {
            format!("{length} per system")
        };
        let mut consumer = self
            .consumer
            .as_ref()
            .map_or_else(String::new, |c| format!("\n{}", c.describe()));
        if let Some(c) = &self.compaction {
            consumer = format!("{consumer}\n{}", c.describe());
        }
        // A merge carries an 8-byte increment, not a value of `--value-size`.
        let (value, writes) = if self.op == "merge" {
            (String::new(), "merges (8-byte counter increments)")
        } else {
            (format!(", value {} B", size(&self.value_size)), "puts")
        };
        format!(
            "workload: {load}, {} keys {}, key {} B{value}, {:.0}% {writes} {:.0}% deletes \
             {:.0}% gets, {length}\n\
             engine:   durability {}, write path {}, window {}, window age max {} µs, batch max \
             {} B / {} ops, ring {} B, segment {} B, syncers {} (overlapping above {} µs){}{}{}{consumer}",
            self.keys,
            self.dist,
            size(&self.key_size),
            self.put_ratio * 100.0,
            self.delete_ratio * 100.0,
            self.read_ratio * 100.0,
            self.durability,
            self.write_path,
            self.window,
            self.window_age_max_us,
            self.batch_bytes_max,
            self.batch_ops_max,
            self.ring_bytes,
            self.segment_bytes,
            self.engine_syncers,
            self.overlap_syncs_above_us,
            if self.systems.contains(&"mergelog-syncers") {
                format!(" (mergelog-syncers {})", self.syncers)
            } else {
                String::new()
            },
            match self.retain_segments {
                Some(n) => format!(", newest {n} segments kept (older retired and reused)"),
                None => String::new(),
            },
            match self.idle_poll_threads {
                0 => String::new(),
                n => format!(", {n} idle poll threads"),
            },
        )
    }
}

#[derive(Serialize)]
struct MachineJson {
    cpus: usize,
    os: String,
    /// `--sync-probe`: the disk's time for one 4 KiB write + sync, measured before the runs;
    /// null when skipped (0, or `--durability nosync`).
    sync_probe: Option<SyncProbeJson>,
}

#[derive(Serialize)]
struct SyncProbeJson {
    syncs: usize,
    bytes: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Latency percentiles in microseconds.
#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    p9999: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let q = |q: f64| us(h.value_at_quantile(q));
        Latency {
            mean: h.mean() / 1000.0,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: us(h.max()),
        }
    }
}

#[derive(Serialize)]
struct Stage {
    stage: &'static str,
    count: u64,
    mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// count x mean: the time the stage took in total.
    total_ms: f64,
}

/// One run of a system (one round).
#[derive(Serialize)]
struct RoundJson {
    /// 1-based.
    round: usize,
    ops: u64,
    ops_per_s: f64,
    elapsed_s: f64,
    /// When the run started, seconds from the start of the bench.
    offset_s: f64,
}

/// A system's throughput over a baseline's, round by round (each ratio from the two runs
/// of the same round).
#[derive(Serialize)]
struct RoundRatio {
    system: &'static str,
    baseline: &'static str,
    /// Median, least and greatest of `per_round` (null if no round had a ratio).
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// In round order; null where the baseline's run completed nothing.
    per_round: Vec<Option<f64>>,
}

/// The engine's own counters (`Stats`) after close.
#[derive(Serialize)]
struct EngineJson {
    submitted: u64,
    writes: u64,
    reads: u64,
    coalesced_writes: u64,
    collapsed_reads: u64,
    records_written: u64,
    batches: u64,
    syncs: u64,
    bytes_written: u64,
    backlog_bytes: u64,
    durable_position: u64,
    /// From the first sync to the last: time syncing, and between syncs with a written
    /// frame waiting or with nothing to sync yet (ms; all zero without syncs).
    sync_time: SyncTimeJson,
    /// Segments started in zero-filled files, in reused files, and retired.
    segments: SegmentsJson,
}

#[derive(Serialize)]
struct SegmentsJson {
    fresh: u64,
    reused: u64,
    retired: u64,
    /// Time spent writing and syncing the fresh segments' zeros (`SegmentCounts::zero_fill`).
    zero_fill_ms: f64,
}

/// Cores busy on average while the writers ran (CPU time over wall time).
#[derive(Serialize)]
struct CpuJson {
    wall_s: f64,
    /// The whole process: the writers, the harness and, for the engine, its threads.
    process_cores: f64,
    /// The engine's flusher and syncer threads; null for the baselines.
    flusher_cores: Option<f64>,
    syncer_cores: Option<f64>,
    /// The whole process's CPU time per operation, microseconds (null without operations).
    process_us_per_op: Option<f64>,
}

impl CpuJson {
    fn of(c: &CpuUse, ops: u64) -> CpuJson {
        CpuJson {
            wall_s: c.wall.as_secs_f64(),
            process_cores: c.cores(c.process),
            flusher_cores: c.flusher.map(|d| c.cores(d)),
            syncer_cores: c.syncer.map(|d| c.cores(d)),
            process_us_per_op: (ops > 0).then(|| c.process.as_secs_f64() * 1e6 / ops as f64),
        }
    }

    /// `1.12 cores (flusher 0.47, syncer 0.20), 3.1 µs/op`.
    fn text(&self) -> String {
        let mut out = format!("{:.2} cores", self.process_cores);
        if let (Some(f), Some(s)) = (self.flusher_cores, self.syncer_cores) {
            let _ = write!(out, " (flusher {f:.2}, syncer {s:.2})");
        }
        if let Some(us) = self.process_us_per_op {
            let _ = write!(out, ", {us:.1} µs/op");
        }
        out
    }
}

#[derive(Serialize)]
struct SyncTimeJson {
    busy_ms: f64,
    frame_ready_ms: f64,
    nothing_ready_ms: f64,
    overlapped: u64,
}

#[derive(Serialize)]
struct Point {
    /// The run the interval belongs to (1-based round); start_s is from that run's start.
    round: usize,
    start_s: f64,
    duration_s: f64,
    ops: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// `--consumer`: the consumer's lag at the end of the interval, as `Engine::consumers`
    /// measures it: durable batches not committed, the bytes of their frames, and the age of
    /// the oldest (0 when there is none). Absent without `--consumer`, and for baselines.
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_lag_batches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_lag_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_lag_age_ms: Option<f64>,
}

/// `--consumer`: what the consumer of one engine system did, and its lag over the samples.
#[derive(Serialize)]
struct ConsumerRunJson {
    /// Batches it processed (read, touched, paced), their records, and its commits.
    batches: u64,
    records: u64,
    commits: u64,
    /// Submissions the engine throttled on its lag (`Counts::throttled`).
    throttled: u64,
    /// Batches of `batches` processed without `--consumer-rate`'s pacing: the run was past its
    /// deadline with the writers still held by the lag limit.
    unpaced_batches: u64,
    /// Timeline points with a lag (one per sampling interval).
    samples: usize,
    lag_batches: Spread,
    lag_bytes: Spread,
    lag_age_ms: Spread,
}

/// The median and the greatest of a run's lag samples (0 without samples).
#[derive(Serialize)]
struct Spread {
    p50: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            p50: median(&values).unwrap_or(0.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

impl ConsumerRunJson {
    fn of(r: &RunResult) -> Option<ConsumerRunJson> {
        let c = r.consumer?;
        let lags: Vec<_> = r.timeline.iter().filter_map(|i| i.consumer_lag).collect();
        let spread = |f: &dyn Fn(&LagSample) -> f64| Spread::of(lags.iter().map(f).collect());
        Some(ConsumerRunJson {
            batches: c.batches,
            records: c.records,
            commits: c.commits,
            throttled: c.throttled,
            unpaced_batches: c.unpaced_batches,
            samples: lags.len(),
            lag_batches: spread(&|l| l.batches as f64),
            lag_bytes: spread(&|l| l.bytes as f64),
            lag_age_ms: spread(&|l| l.age.as_secs_f64() * 1e3),
        })
    }
}

#[derive(Serialize)]
struct Run {
    system: &'static str,
    /// Operations completed (= puts + deletes + gets).
    ops: u64,
    /// Open loop: requests due before the deadline that were never sent because the
    /// system had fallen behind; not in the latency percentiles. 0 in a closed loop.
    missed: u64,
    puts: u64,
    deletes: u64,
    gets: u64,
    elapsed_s: f64,
    ops_per_s: f64,
    /// From when each request was due (open loop: its scheduled send time) to completion.
    latency_us: Latency,
    /// From when each request was actually submitted to completion.
    latency_raw_us: Latency,
    batches: u64,
    syncs: u64,
    /// Null when the run issued no sync (`nosync`, or only gets).
    ops_per_sync: Option<f64>,
    /// Puts and deletes per sync; null without syncs.
    writes_per_sync: Option<f64>,
    coalesced_writes: u64,
    collapsed_reads: u64,
    records_written: u64,
    /// Records logged per request (`records_written / ops`; with `--op merge`, a merge or a
    /// client's get-then-put is one request); null for the systems whose records are not
    /// counted (the peers) or without requests.
    records_per_op: Option<f64>,
    bytes_written: u64,
    bytes_per_op: f64,
    /// Bytes written per put or delete; null without writes.
    bytes_per_write: Option<f64>,
    /// ops_per_s / naive's ops_per_s; null when `naive` was not run.
    ratio_vs_naive: Option<f64>,
    /// ops_per_s / wal's ops_per_s; null when `wal` was not run.
    ratio_vs_wal: Option<f64>,
    /// ops_per_s / okaywal's ops_per_s; null when `okaywal` was not run.
    ratio_vs_okaywal: Option<f64>,
    /// ops_per_s / rocksdb's ops_per_s; null when `rocksdb` was not run.
    ratio_vs_rocksdb: Option<f64>,
    /// ops_per_s / redb's ops_per_s; null when `redb` was not run.
    ratio_vs_redb: Option<f64>,
    /// ops_per_s / fjall's ops_per_s; null when `fjall` was not run.
    ratio_vs_fjall: Option<f64>,
    /// ops_per_s / no-coalesce's ops_per_s; null when `no-coalesce` was not run.
    ratio_vs_no_coalesce: Option<f64>,
    /// latency_us.p99 / naive's; null when `naive` was not run.
    p99_ratio_vs_naive: Option<f64>,
    /// latency_us.p99 / wal's; null when `wal` was not run.
    p99_ratio_vs_wal: Option<f64>,
    /// latency_us.p99 / okaywal's; null when `okaywal` was not run.
    p99_ratio_vs_okaywal: Option<f64>,
    /// latency_us.p99 / rocksdb's; null when `rocksdb` was not run.
    p99_ratio_vs_rocksdb: Option<f64>,
    /// latency_us.p99 / redb's; null when `redb` was not run.
    p99_ratio_vs_redb: Option<f64>,
    /// latency_us.p99 / fjall's; null when `fjall` was not run.
    p99_ratio_vs_fjall: Option<f64>,
    /// latency_us.p99 / no-coalesce's; null when `no-coalesce` was not run.
    p99_ratio_vs_no_coalesce: Option<f64>,
    /// The engine's counters (null for the systems without an engine: `wal`, `naive`, the
    /// peers).
    engine: Option<EngineJson>,
    /// The engine's per-stage latencies (engine systems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<Vec<Stage>>,
    /// CPU used while the writers ran; null where it cannot be read (not Linux).
    cpu: Option<CpuJson>,
    /// Throughput and latency per sampling interval.
    timeline: Vec<Point>,
    /// Each run of the system, in round order (one without --rounds).
    rounds: Vec<RoundJson>,
    /// `--consumer`: the consumer's work and lag (engine systems only; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<ConsumerRunJson>,
    /// Engine systems: the disk the run took against its live data (null for baselines).
    space: Option<space::SpaceJson>,
}

#[derive(Serialize)]
pub struct Report {
    schema_version: u32,
    /// `bench` or `profile`.
    command: &'static str,
    workload: Workload,
    machine: MachineJson,
    runs: Vec<Run>,
    /// Per engine system and baseline that ran (the pairings of the headline).
    round_ratios: Vec<RoundRatio>,
}

/// The baselines, simplest first: `naive` and `wal`, built in; then the peers, real engines;
/// then the engine systems. An engine system is compared with every baseline before it
/// (`mergelog` with the built-in baselines, every peer and `no-coalesce`; `mergelog-ids`
/// with `mergelog` too); a peer only with the built-in ones (peers against each other is
/// not what the bench is for), `wal` with `naive`.
const BASELINES: [System; 8] = [
    System::Naive,
    System::Wal,
    System::Okaywal,
    System::Rocksdb,
    System::Redb,
    System::Fjall,
    System::NoCoalesce,
    System::Mergelog,
];

/// The baselines `system` is compared with.
fn baselines_of(system: System) -> &'static [System] {
    let below = match system {
        // As `mergelog-ids`: against every baseline, `mergelog` included.
        System::MergelogCompact => BASELINES.len(),
        System::Naive => 0,
        System::Wal => 1,
        System::Okaywal | System::Rocksdb | System::Redb | System::Fjall => 2,
        System::NoCoalesce => 6,
        System::Mergelog => 7,
        System::MergelogIds | System::MergelogGetput | System::MergelogSyncers => 8,
    };
    &BASELINES[..below]
}

/// The pairings the headline shows: each system against each of its baselines that ran,
/// with its throughput ratio in every round.
fn round_ratios(results: &[RunResult]) -> Vec<RoundRatio> {
    let mut out = Vec::new();
    for r in results {
        for &baseline in baselines_of(r.system) {
            let Some(b) = results.iter().find(|b| b.system == baseline) else {
                continue;
            };
            let per_round: Vec<Option<f64>> = r
                .rounds
                .iter()
                .map(|x| {
                    let base = b.rounds.iter().find(|y| y.round == x.round);
                    ratio(x.ops_per_s(), base.map(|y| y.ops_per_s()))
                })
                .collect();
            let mut known: Vec<f64> = per_round.iter().flatten().copied().collect();
            known.sort_by(f64::total_cmp);
            out.push(RoundRatio {
                system: r.system.name(),
                baseline: baseline.name(),
                median: median(&known),
                min: known.first().copied(),
                max: known.last().copied(),
                per_round,
            });
        }
    }
    out
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn ratio(num: f64, den: Option<f64>) -> Option<f64> {
    den.filter(|d| *d > 0.0).map(|d| num / d)
}

fn per(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn stage_json(name: &'static str, h: &Histogram<u64>) -> Stage {
    let q = |q: f64| us(h.value_at_quantile(q));
    Stage {
        stage: name,
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: us(h.max()),
        total_ms: h.mean() * h.len() as f64 / 1e6,
    }
}

/// The baselines' throughput and p99 latency, for the ratios of every run against them
/// (`None` for a baseline that did not run).
struct Baselines {
    /// Per system of `BASELINES` that ran: its ops/s and its p99 (µs).
    ran: Vec<(System, f64, f64)>,
}

impl Baselines {
    fn of(results: &[RunResult]) -> Baselines {
        let ran = BASELINES
            .iter()
            .filter_map(|&s| results.iter().find(|r| r.system == s))
            .map(|r| (r.system, r.ops_per_s(), p99(r)))
            .collect();
        Baselines { ran }
    }

    /// `system`'s ops/s and p99, if it ran.
    fn get(&self, system: System) -> (Option<f64>, Option<f64>) {
        self.ran
            .iter()
            .find(|b| b.0 == system)
            .map_or((None, None), |b| (Some(b.1), Some(b.2)))
    }
}

/// A run's corrected p99 latency, µs.
fn p99(r: &RunResult) -> f64 {
    us(r.latency.value_at_quantile(0.99))
}

impl Run {
    /// One system's numbers, with its ratios against `base`.
    fn of(r: &RunResult, base: &Baselines) -> Run {
        let rate = r.ops_per_s();
        let writes = r.puts + r.deletes;
        let vs = |system: System| {
            let (base_rate, base_p99) = base.get(system);
            (ratio(rate, base_rate), ratio(p99(r), base_p99))
        };
        let (naive, wal, okaywal) = (vs(System::Naive), vs(System::Wal), vs(System::Okaywal));
        let (rocksdb, redb, fjall) = (vs(System::Rocksdb), vs(System::Redb), vs(System::Fjall));
        let no_coalesce = vs(System::NoCoalesce);
        Run {
            system: r.system.name(),
            ops: r.ops,
            missed: r.missed,
            puts: r.puts,
            deletes: r.deletes,
            gets: r.gets,
            elapsed_s: r.elapsed.as_secs_f64(),
            ops_per_s: rate,
            latency_us: Latency::of(&r.latency),
            latency_raw_us: Latency::of(&r.latency_raw),
            batches: r.batches,
            syncs: r.syncs,
            ops_per_sync: per(r.ops, r.syncs),
            writes_per_sync: per(writes, r.syncs),
            coalesced_writes: r.coalesced_writes,
            collapsed_reads: r.collapsed_reads,
            records_written: r.records_written,
            records_per_op: (r.system.counts_bytes_written())
                .then(|| per(r.records_written, r.ops))
                .flatten(),
            bytes_written: r.bytes_written,
            bytes_per_op: per(r.bytes_written, r.ops).unwrap_or(0.0),
            bytes_per_write: per(r.bytes_written, writes),
            ratio_vs_naive: naive.0,
            ratio_vs_wal: wal.0,
            ratio_vs_okaywal: okaywal.0,
            ratio_vs_rocksdb: rocksdb.0,
            ratio_vs_redb: redb.0,
            ratio_vs_fjall: fjall.0,
            ratio_vs_no_coalesce: no_coalesce.0,
            p99_ratio_vs_naive: naive.1,
            p99_ratio_vs_wal: wal.1,
            p99_ratio_vs_okaywal: okaywal.1,
            p99_ratio_vs_rocksdb: rocksdb.1,
            p99_ratio_vs_redb: redb.1,
            p99_ratio_vs_fjall: fjall.1,
            p99_ratio_vs_no_coalesce: no_coalesce.1,
            engine: r.engine.as_ref().map(EngineJson::of),
            cpu: r.cpu.as_ref().map(|c| CpuJson::of(c, r.ops)),
            stages: r.engine.as_ref().map(|s| {
                s.stages
                    .stages()
                    .iter()
                    .map(|(name, h)| stage_json(name, h))
                    .collect()
            }),
            timeline: r.timeline.iter().map(Point::of).collect(),
            rounds: r.rounds.iter().map(RoundJson::of).collect(),
            consumer: ConsumerRunJson::of(r),
            // Filled in by `Report::new`, which has the plan.
            space: None,
        }
    }
}

impl EngineJson {
    fn of(s: &Stats) -> EngineJson {
        EngineJson {
            submitted: s.submitted,
            writes: s.writes,
            reads: s.reads,
            coalesced_writes: s.coalesced_writes,
            collapsed_reads: s.collapsed_reads,
            records_written: s.records_written,
            batches: s.batches,
            syncs: s.syncs,
            bytes_written: s.bytes_written,
            backlog_bytes: s.backlog_bytes,
            durable_position: s.durable_position,
            sync_time: SyncTimeJson {
                busy_ms: s.sync_time.busy_ns as f64 / 1e6,
                frame_ready_ms: s.sync_time.frame_ready_ns as f64 / 1e6,
                nothing_ready_ms: s.sync_time.nothing_ready_ns as f64 / 1e6,
                overlapped: s.sync_time.overlapped,
            },
            segments: SegmentsJson {
                fresh: s.segments.fresh,
                reused: s.segments.reused,
                retired: s.segments.retired,
                zero_fill_ms: s.segments.zero_fill.as_secs_f64() * 1e3,
            },
        }
    }
}

impl Point {
    fn of(i: &Interval) -> Point {
        Point {
            round: i.round + 1,
            start_s: i.start.as_secs_f64(),
            duration_s: i.duration.as_secs_f64(),
            ops: i.ops,
            ops_per_s: i.ops as f64 / i.duration.as_secs_f64().max(1e-9),
            p50_us: us(i.p50_ns),
            p99_us: us(i.p99_ns),
            max_us: us(i.max_ns),
            consumer_lag_batches: i.consumer_lag.map(|l| l.batches),
            consumer_lag_bytes: i.consumer_lag.map(|l| l.bytes),
            consumer_lag_age_ms: i.consumer_lag.map(|l| l.age.as_secs_f64() * 1e3),
        }
    }
}

impl RoundJson {
    fn of(x: &RoundRun) -> RoundJson {
        RoundJson {
            round: x.round + 1,
            ops: x.ops,
            ops_per_s: x.ops_per_s(),
            elapsed_s: x.elapsed.as_secs_f64(),
            offset_s: x.offset.as_secs_f64(),
        }
    }
}

impl MachineJson {
    fn of(machine: Machine, probe: Option<&SyncProbe>) -> MachineJson {
        MachineJson {
            cpus: machine.cpus,
            os: machine.os,
            sync_probe: probe.map(|p| SyncProbeJson {
                syncs: p.syncs,
                bytes: super::probe::PROBE_BYTES,
                p50_us: p.p50.as_secs_f64() * 1e6,
                p99_us: p.p99.as_secs_f64() * 1e6,
                max_us: p.max.as_secs_f64() * 1e6,
            }),
        }
    }
}

impl Report {
    pub fn new(session: &Session, machine: Machine, command: &'static str) -> Report {
        let results = &session.results;
        let base = Baselines::of(results);
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            command,
            workload: session.workload.clone(),
            machine: MachineJson::of(machine, session.probe.as_ref()),
            runs: results.iter().map(|r| Run::of(r, &base)).collect(),
            round_ratios: round_ratios(results),
        };
        for (run, r) in report.runs.iter_mut().zip(results) {
            run.space = space::SpaceJson::of(r, &session.plan);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.5, 1.0, 4.0]), Some(1.0));
        assert_eq!(median(&[0.5, 1.0, 2.0, 4.0]), Some(1.5));
    }
}
