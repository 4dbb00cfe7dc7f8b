//! The bench report: a table for people (stdout) and the same numbers as JSON. The JSON
//! schema is documented in the README ("JSON report"); bump `SCHEMA_VERSION` when a field
//! changes meaning or goes away (adding fields does not).

use super::cpu::CpuUse;
use super::probe::SyncProbe;
use super::recorder::Interval;
use super::{Machine, Plan, RoundRun, RunResult, Session, System, WorkloadArgs};
use hdrhistogram::Histogram;
use mergelog::{Durability, Stats};
use serde::Serialize;
use std::fmt::Write;

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
    /// Open loop: the arrival rate, ops/s; null in a closed loop.
    rate_ops_per_s: Option<f64>,
    keys: u64,
    dist: String,
    key_size: SizeJson,
    value_size: SizeJson,
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
    /// `--retain`: segments the engines' logs keep (older ones retired during the run and
    /// their files reused); null: the whole history is kept.
    retain_segments: Option<usize>,
    systems: Vec<&'static str>,
    seed: u64,
    /// `--dir`, or null for a temporary directory.
    dir: Option<String>,
    /// File system type of the run directory, when known.
    fs: Option<String>,
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
            retain_segments: plan.retain,
            systems: systems.iter().map(|s| s.name()).collect(),
            seed: s.seed,
            dir: args.dir.as_ref().map(|d| d.display().to_string()),
            fs,
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
            None => format!("{} writers x depth {}", self.writers, self.depth),
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
        format!(
            "workload: {load}, {} keys {}, key {} B, value {} B, {:.0}% puts {:.0}% deletes \
             {:.0}% gets, {length}\n\
             engine:   durability {}, write path {}, window {}, window age max {} µs, batch max \
             {} B / {} ops, ring {} B, segment {} B{}",
            self.keys,
            self.dist,
            size(&self.key_size),
            size(&self.value_size),
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
            match self.retain_segments {
                Some(n) => format!(", newest {n} segments kept (older retired and reused)"),
                None => String::new(),
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
}

impl CpuJson {
    fn of(c: &CpuUse) -> CpuJson {
        CpuJson {
            wall_s: c.wall.as_secs_f64(),
            process_cores: c.cores(c.process),
            flusher_cores: c.flusher.map(|d| c.cores(d)),
            syncer_cores: c.syncer.map(|d| c.cores(d)),
        }
    }

    /// `1.12 cores (flusher 0.47, syncer 0.20)`.
    fn text(&self) -> String {
        let mut out = format!("{:.2} cores", self.process_cores);
        if let (Some(f), Some(s)) = (self.flusher_cores, self.syncer_cores) {
            let _ = write!(out, " (flusher {f:.2}, syncer {s:.2})");
        }
        out
    }
}

#[derive(Serialize)]
struct SyncTimeJson {
    busy_ms: f64,
    frame_ready_ms: f64,
    nothing_ready_ms: f64,
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
    bytes_written: u64,
    bytes_per_op: f64,
    /// Bytes written per put or delete; null without writes.
    bytes_per_write: Option<f64>,
    /// ops_per_s / naive's ops_per_s; null when `naive` was not run.
    ratio_vs_naive: Option<f64>,
    /// ops_per_s / wal's ops_per_s; null when `wal` was not run.
    ratio_vs_wal: Option<f64>,
    /// ops_per_s / no-coalesce's ops_per_s; null when `no-coalesce` was not run.
    ratio_vs_no_coalesce: Option<f64>,
    /// latency_us.p99 / naive's; null when `naive` was not run.
    p99_ratio_vs_naive: Option<f64>,
    /// latency_us.p99 / wal's; null when `wal` was not run.
    p99_ratio_vs_wal: Option<f64>,
    /// latency_us.p99 / no-coalesce's; null when `no-coalesce` was not run.
    p99_ratio_vs_no_coalesce: Option<f64>,
    /// The engine's counters (null for the baselines without an engine: `wal`, `naive`).
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

/// The baselines, simplest first: each system is compared with the ones before it
/// (`mergelog` with all three, `no-coalesce` with `wal` and `naive`, `wal` with `naive`).
const BASELINES: [System; 3] = [System::Naive, System::Wal, System::NoCoalesce];

/// The baselines `system` is compared with.
fn baselines_of(system: System) -> &'static [System] {
    let below = match system {
        System::Naive => 0,
        System::Wal => 1,
        System::NoCoalesce => 2,
        System::Mergelog => 3,
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
    naive: Option<f64>,
    wal: Option<f64>,
    no_coalesce: Option<f64>,
    naive_p99: Option<f64>,
    wal_p99: Option<f64>,
    no_coalesce_p99: Option<f64>,
}

impl Baselines {
    fn of(results: &[RunResult]) -> Baselines {
        let of = |system: System, f: &dyn Fn(&RunResult) -> f64| {
            results.iter().find(|r| r.system == system).map(f)
        };
        Baselines {
            naive: of(System::Naive, &RunResult::ops_per_s),
            wal: of(System::Wal, &RunResult::ops_per_s),
            no_coalesce: of(System::NoCoalesce, &RunResult::ops_per_s),
            naive_p99: of(System::Naive, &p99),
            wal_p99: of(System::Wal, &p99),
            no_coalesce_p99: of(System::NoCoalesce, &p99),
        }
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
            bytes_written: r.bytes_written,
            bytes_per_op: per(r.bytes_written, r.ops).unwrap_or(0.0),
            bytes_per_write: per(r.bytes_written, writes),
            ratio_vs_naive: ratio(rate, base.naive),
            ratio_vs_wal: ratio(rate, base.wal),
            ratio_vs_no_coalesce: ratio(rate, base.no_coalesce),
            p99_ratio_vs_naive: ratio(p99(r), base.naive_p99),
            p99_ratio_vs_wal: ratio(p99(r), base.wal_p99),
            p99_ratio_vs_no_coalesce: ratio(p99(r), base.no_coalesce_p99),
            engine: r.engine.as_ref().map(EngineJson::of),
            cpu: r.cpu.as_ref().map(CpuJson::of),
            stages: r.engine.as_ref().map(|s| {
                s.stages
                    .stages()
                    .iter()
                    .map(|(name, h)| stage_json(name, h))
                    .collect()
            }),
            timeline: r.timeline.iter().map(Point::of).collect(),
            rounds: r.rounds.iter().map(RoundJson::of).collect(),
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
            },
            segments: SegmentsJson {
                fresh: s.segments.fresh,
                reused: s.segments.reused,
                retired: s.segments.retired,
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
        Report {
            schema_version: SCHEMA_VERSION,
            command,
            workload: session.workload.clone(),
            machine: MachineJson::of(machine, session.probe.as_ref()),
            runs: results.iter().map(|r| Run::of(r, &base)).collect(),
            round_ratios: round_ratios(results),
        }
    }

    fn header(&self) -> String {
        let mut out = format!(
            "{}\nmachine:  {} cpus, {}, file system {}\n",
            self.workload.describe(),
            self.machine.cpus,
            self.machine.os,
            self.workload.fs.as_deref().unwrap_or("unknown"),
        );
        if let Some(p) = &self.machine.sync_probe {
            let _ = writeln!(
                out,
                "disk:     {} KiB pwrite + fdatasync into a zero-filled file: p50 {:.1} µs, p99 {:.1} µs \
                 ({} syncs before the runs)",
                p.bytes / 1024,
                p.p50_us,
                p.p99_us,
                p.syncs
            );
        }
        out
    }

    /// With one request outstanding per writer, a writer completes at most one request per
    /// sync: the sync probe bounds every system's throughput.
    fn depth_one_bound(&self) -> Option<String> {
        let (w, p) = (&self.workload, self.machine.sync_probe.as_ref()?);
        if self.open_loop() || w.depth != 1 || p.p50_us <= 0.0 {
            return None;
        }
        Some(format!(
            "bound: at depth 1 a writer completes at most one request per sync: {} writer{} / \
             {:.1} µs (probe p50) = {} ops/s at most\n",
            w.writers,
            if w.writers == 1 { "" } else { "s" },
            p.p50_us,
            thousands((w.writers as f64 / (p.p50_us / 1e6)).round() as u64)
        ))
    }

    fn open_loop(&self) -> bool {
        self.workload.rate_ops_per_s.is_some()
    }

    /// The human-readable comparison: workload, the systems side by side with their ratios
    /// against the baselines, and the `mergelog` run's per-stage latencies.
    pub fn text(&self, results: &[RunResult]) -> String {
        let mut out = self.header();
        out.push('\n');
        out.push_str(&self.systems_table());
        out.push_str(&self.headline());
        if let Some(bound) = self.depth_one_bound() {
            out.push_str(&bound);
        }
        out.push_str(&self.notes());
        if self.workload.rounds > 1 {
            out.push_str(&self.rounds_text());
        }
        out.push_str(&self.mergelog_stages(results));
        out
    }

    /// The systems side by side: throughput, latency, syncs, coalescing and the ratios.
    fn systems_table(&self) -> String {
        let open = self.open_loop();
        let mut header = vec!["system", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"];
        if open {
            header.push("raw p99 µs");
        }
        header.extend([
            "syncs",
            "writes/sync",
            "coalesced",
            "collapsed",
            "B/write",
            "vs naive",
            "vs wal",
            "vs no-coal",
        ]);
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.system.to_owned(),
                    thousands(r.ops_per_s.round() as u64),
                    format!("{:.1}", r.latency_us.p50),
                    format!("{:.1}", r.latency_us.p99),
                    format!("{:.1}", r.latency_us.p999),
                    format!("{:.1}", r.latency_us.max),
                ];
                if open {
                    row.push(format!("{:.1}", r.latency_raw_us.p99));
                }
                row.extend([
                    thousands(r.syncs),
                    r.writes_per_sync.map_or("-".into(), |x| format!("{x:.1}")),
                    thousands(r.coalesced_writes),
                    thousands(r.collapsed_reads),
                    r.bytes_per_write.map_or("-".into(), |x| format!("{x:.1}")),
                    r.ratio_vs_naive.map_or("-".into(), times),
                    r.ratio_vs_wal.map_or("-".into(), times),
                    r.ratio_vs_no_coalesce.map_or("-".into(), times),
                ]);
                row
            })
            .collect();
        table(&header, &rows)
    }

    /// What the table does not say: how the baselines work, who fell behind, the CPU used,
    /// and what the latency measures.
    fn notes(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        if self.runs.iter().any(|r| r.system == "wal") {
            let _ = writeln!(
                out,
                "wal: leader/follower group commit; writers append under one mutex and the \
                 first to wait writes everything appended{}, while the others wait",
                if w.durability == "sync" {
                    " and fdatasyncs it"
                } else {
                    " (no sync)"
                }
            );
        }
        if self.runs.iter().any(|r| r.system == "naive") {
            let _ = writeln!(
                out,
                "naive: lock + pwrite + {} per write, one request outstanding per writer \
                 (--depth does not apply); every write is its own batch",
                if w.durability == "sync" {
                    "fdatasync"
                } else {
                    "no sync"
                }
            );
        }
        out.push_str(&self.fell_behind());
        out.push_str(&self.cpu_line());
        out.push_str(if self.open_loop() {
            "latency: from each request's scheduled send time to completion (coordinated \
             omission corrected); raw: from its actual submission\n"
        } else {
            "latency: submit to completion as each writer sees it (closed loop; after the \
             deadline writers drain, and drained ops are counted)\n"
        });
        out
    }

    /// One line per system that left requests unsent (open loop).
    fn fell_behind(&self) -> String {
        let mut out = String::new();
        // A writer can be a few requests behind at the very end of a healthy run; below
        // 0.1 % of what was sent this is noise (the JSON has the exact count).
        for r in self.runs.iter().filter(|r| r.missed * 1000 > r.ops) {
            let _ = writeln!(
                out,
                "{}: fell behind the schedule; {} requests due before the deadline were never \
                 sent (not in the percentiles; each would have waited at least until the deadline)",
                r.system,
                thousands(r.missed)
            );
        }
        out
    }

    /// The cores each system kept busy (nothing where CPU time could not be read).
    fn cpu_line(&self) -> String {
        let cpu: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| Some(format!("{} {}", r.system, r.cpu.as_ref()?.text())))
            .collect();
        if cpu.is_empty() {
            return String::new();
        }
        format!(
            "cpu (busy on average while the writers ran, of {}): {}\n",
            self.machine.cpus,
            cpu.join("; ")
        )
    }

    /// The `mergelog` run's stage latencies and disk time (nothing without a `mergelog`
    /// run).
    fn mergelog_stages(&self, results: &[RunResult]) -> String {
        let mut out = String::new();
        let Some(stats) = results
            .iter()
            .find(|r| r.system == System::Mergelog)
            .and_then(|r| r.engine.as_ref())
        else {
            return out;
        };
        out.push_str(if self.workload.rounds > 1 {
            "\nmergelog stages (engine histograms of every round; `mergelog profile` for more):\n"
        } else {
            "\nmergelog stages (engine histograms; `mergelog profile` for more):\n"
        });
        let rows: Vec<Vec<String>> = stats
            .stages
            .stages()
            .iter()
            .map(|(name, h)| {
                let mut row = stage_row(name, h);
                row.truncate(5);
                row
            })
            .collect();
        out.push_str(&table(
            &["stage", "count", "p50 µs", "p90 µs", "p99 µs"],
            &rows,
        ));
        if let Some(line) = sync_time_line(&stats.sync_time) {
            out.push_str(&line);
        }
        out.push_str(&segments_line(&stats.segments));
        out
    }

    /// `--rounds`: each round's ops/s per system and ratios, and per pairing the median and
    /// range of its per-round ratios.
    fn rounds_text(&self) -> String {
        let n = self.workload.rounds;
        let mut out = format!(
            "\n{n} rounds, alternating (the order rotates: round r starts with the r-th system); \
             the table above sums each system's runs (ops/s: all ops over all run time; \
             histograms merged); ratios per round from that round's two runs\n"
        );
        let mut header: Vec<String> = vec!["round".into()];
        header.extend(self.runs.iter().map(|r| format!("{} ops/s", r.system)));
        header.extend(
            self.round_ratios
                .iter()
                .map(|p| format!("{}/{}", p.system, p.baseline)),
        );
        let rows: Vec<Vec<String>> = (0..n)
            .map(|i| {
                let mut row = vec![(i + 1).to_string()];
                row.extend(self.runs.iter().map(|r| {
                    r.rounds
                        .get(i)
                        .map_or("-".into(), |x| thousands(x.ops_per_s.round() as u64))
                }));
                row.extend(self.round_ratios.iter().map(|p| {
                    p.per_round
                        .get(i)
                        .copied()
                        .flatten()
                        .map_or("-".into(), times)
                }));
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        out.push_str(&table(&header, &rows));
        for p in &self.round_ratios {
            if let (Some(median), Some(min), Some(max)) = (p.median, p.min, p.max) {
                let _ = writeln!(
                    out,
                    "{} vs {}, per round: median {} ({} – {}) over {n} rounds",
                    p.system,
                    p.baseline,
                    times(median),
                    times(min),
                    times(max),
                );
            }
        }
        out
    }

    /// One line per system with baselines: its throughput and p99 against each that ran.
    fn headline(&self) -> String {
        let mut out = String::new();
        for r in &self.runs {
            let Some(system) = System::named(r.system) else {
                continue;
            };
            let mut parts = Vec::new();
            for (name, rate, p99) in [
                ("naive", r.ratio_vs_naive, r.p99_ratio_vs_naive),
                ("wal", r.ratio_vs_wal, r.p99_ratio_vs_wal),
                (
                    "no-coalesce",
                    r.ratio_vs_no_coalesce,
                    r.p99_ratio_vs_no_coalesce,
                ),
            ] {
                if !baselines_of(system).iter().any(|b| b.name() == name) {
                    continue;
                }
                if let (Some(rate), Some(p99)) = (rate, p99) {
                    parts.push(format!(
                        "{} the throughput of {name} at {} its p99 latency",
                        times(rate),
                        times(p99)
                    ));
                }
            }
            if !parts.is_empty() {
                let _ = writeln!(out, "{}: {}", r.system, parts.join("; "));
            }
        }
        out
    }

    /// The profile: client-side latency, every engine stage in detail, and the counters.
    pub fn profile_text(&self, results: &[RunResult]) -> String {
        let mut out = self.header();
        for (run, result) in self.runs.iter().zip(results) {
            out.push_str(&run_summary(run));
            let Some(stats) = &result.engine else {
                continue;
            };
            out.push_str(&self.stage_table(result, stats));
            out.push_str(&engine_counters(stats));
        }
        out
    }

    /// Every stage of `result` in detail: the client's latency as the writers saw it, then
    /// the engine's histograms.
    fn stage_table(&self, result: &RunResult, stats: &Stats) -> String {
        let mut rows = vec![stage_row("client", &result.latency)];
        if self.open_loop() {
            rows.push(stage_row("client_raw", &result.latency_raw));
        }
        // Per-batch stages, spread over the requests they served, against DESIGN §7's
        // budgets per request.
        let per_request = ["coalesce_sort", "encode_write", "sync", "wakeup"];
        for (name, h) in stats.stages.stages() {
            let mut row = stage_row(name, h);
            let total_ns = h.mean() * h.len() as f64;
            row.push(if per_request.contains(&name) && stats.submitted > 0 {
                format!("{:.1}", total_ns / stats.submitted as f64)
            } else {
                "-".into()
            });
            rows.push(row);
        }
        // Summed per-request latencies overlap in time: no total for those rows.
        for row in &mut rows {
            if ["client", "client_raw", "end_to_end"].contains(&row[0].as_str()) {
                row[8] = "-".into();
            }
            row.resize(10, "-".into());
        }
        let mut out = String::from(
            "\nlatency by stage (client: as the writers saw it; the rest: the engine's histograms)\n",
        );
        out.push_str(&table(
            &[
                "stage",
                "count",
                "p50 µs",
                "p90 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
                "mean µs",
                "total ms",
                "ns/request",
            ],
            &rows,
        ));
        out.push_str(
            "ring_wait: producer blocked on a full ring; window_age: first request to cut; \
             coalesce_sort, encode_write, sync, wakeup: per batch (ns/request: the stage's \
             total time over all requests); end_to_end: per request, submit to durable\n",
        );
        out
    }
}

/// The profile's first lines for a run: throughput, operations and the CPU used.
fn run_summary(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{}: {} ops/s over {:.2} s: {} ops ({} puts, {} deletes, {} gets)",
        run.system,
        thousands(run.ops_per_s.round() as u64),
        run.elapsed_s,
        thousands(run.ops),
        thousands(run.puts),
        thousands(run.deletes),
        thousands(run.gets),
    );
    if let Some(cpu) = &run.cpu {
        let _ = writeln!(
            out,
            "cpu: {} busy on average while the writers ran",
            cpu.text()
        );
    }
    out
}

/// The engine's counters, each with what it means per write, read, batch or sync; then
/// where the disk's time went and the segments.
fn engine_counters(s: &Stats) -> String {
    let rows = vec![
        counter("submitted", s.submitted, None),
        counter("writes", s.writes, None),
        counter("reads", s.reads, None),
        counter(
            "coalesced_writes",
            s.coalesced_writes,
            per(s.coalesced_writes * 100, s.writes).map(|p| format!("{p:.1} % of writes")),
        ),
        counter(
            "collapsed_reads",
            s.collapsed_reads,
            per(s.collapsed_reads * 100, s.reads).map(|p| format!("{p:.1} % of reads")),
        ),
        counter(
            "records_written",
            s.records_written,
            per(s.records_written, s.batches).map(|x| format!("{x:.1} per batch")),
        ),
        counter(
            "batches",
            s.batches,
            per(s.submitted, s.batches).map(|x| format!("{x:.1} requests per batch")),
        ),
        counter(
            "syncs",
            s.syncs,
            per(s.writes, s.syncs).map(|x| format!("{x:.1} writes per sync")),
        ),
        counter(
            "bytes_written",
            s.bytes_written,
            per(s.bytes_written, s.records_written).map(|x| format!("{x:.1} per record")),
        ),
        counter("backlog_bytes", s.backlog_bytes, None),
    ];
    let mut out = String::from("\nengine counters\n");
    out.push_str(&table(&["counter", "value", ""], &rows));
    if let Some(line) = sync_time_line(&s.sync_time) {
        out.push_str(&line);
    }
    out.push_str(&segments_line(&s.segments));
    out
}

/// Where the disk's time went (none without syncs): the share of the time from the first
/// sync to the last spent syncing, and between syncs with or without a frame waiting.
fn sync_time_line(t: &mergelog::SyncTime) -> Option<String> {
    let total = t.busy_ns + t.frame_ready_ns + t.nothing_ready_ns;
    if total == 0 {
        return None;
    }
    let pct = |x: u64| x as f64 * 100.0 / total as f64;
    Some(format!(
        "disk time (first sync to last): syncing {:.1} %, between syncs with a written frame \
         waiting {:.1} % (hand-off), with nothing written to sync {:.1} % (producers or CPU)\n",
        pct(t.busy_ns),
        pct(t.frame_ready_ns),
        pct(t.nothing_ready_ns),
    ))
}

/// Segments started (in zero-filled files, or in reused ones) and retired.
fn segments_line(c: &mergelog::SegmentCounts) -> String {
    format!(
        "segments: {} started in zero-filled files, {} in reused ones; {} retired\n",
        c.fresh, c.reused, c.retired
    )
}

fn counter(name: &str, value: u64, note: Option<String>) -> Vec<String> {
    vec![name.to_owned(), thousands(value), note.unwrap_or_default()]
}

/// name, count, p50, p90, p99, p99.9, max, mean (µs), total ms.
fn stage_row(name: &str, h: &Histogram<u64>) -> Vec<String> {
    let q = |x: f64| {
        if h.is_empty() {
            "-".into()
        } else {
            format!("{:.1}", x / 1000.0)
        }
    };
    let at = |p: f64| h.value_at_quantile(p) as f64;
    vec![
        name.to_owned(),
        thousands(h.len()),
        q(at(0.5)),
        q(at(0.9)),
        q(at(0.99)),
        q(at(0.999)),
        q(h.max() as f64),
        q(h.mean()),
        format!("{:.1}", h.mean() * h.len() as f64 / 1e6),
    ]
}

/// A ratio with at least two decimals and three significant digits: `348.10x`, `0.00427x`.
fn times(x: f64) -> String {
    let magnitude = if x > 0.0 { x.log10().floor() as i64 } else { 0 };
    let decimals = (2 - magnitude).clamp(2, 9) as usize;
    format!("{x:.decimals$}x")
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// True for a cell that reads as a number (`1,234`, `0.5`, `2.00x`, `12 %`, `-`).
fn numeric(cell: &str) -> bool {
    cell == "-"
        || (cell.chars().any(|c| c.is_ascii_digit())
            && cell
                .chars()
                .all(|c| c.is_ascii_digit() || ",.-x% ".contains(c))
            && !cell.starts_with("0x"))
}

/// Columns padded to their widest cell: the first and every column of text left-aligned,
/// columns of numbers right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let right: Vec<bool> = (0..header.len())
        .map(|i| i > 0 && rows.iter().all(|r| numeric(&r[i])))
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        for (i, cell) in cells.enumerate() {
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i > 0 {
                out.push_str("  ");
            }
            if right[i] {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        // Trailing spaces of a left-aligned last column are noise.
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(times(348.1), "348.10x");
        assert_eq!(times(1.0), "1.00x");
        assert_eq!(times(0.00427), "0.00427x");
        assert_eq!(times(0.0), "0.00x");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.5, 1.0, 4.0]), Some(1.0));
        assert_eq!(median(&[0.5, 1.0, 2.0, 4.0]), Some(1.5));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["system", "ops/s"],
            &[
                vec!["mergelog".into(), "1,000".into()],
                vec!["naive".into(), "5".into()],
            ],
        );
        assert_eq!(t, "system    ops/s\nmergelog  1,000\nnaive         5\n");
        let t = table(
            &["seq", "sorted", "keys"],
            &[vec!["1".into(), "yes".into(), "0x00".into()]],
        );
        assert_eq!(t, "seq  sorted  keys\n1    yes     0x00\n");
    }
}
