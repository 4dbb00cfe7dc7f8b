//! The report for people: `bench`'s comparison of the systems and `profile`'s stages in
//! detail, both from the numbers of the JSON report.

use super::table::{table, thousands, times};
use super::{baselines_of, per, ratio, Report, Run};
use crate::bench::{RunResult, System};
use hdrhistogram::Histogram;
use mergelog::Stats;
use std::fmt::Write;

/// A run's ratio against one baseline.
type RatioOf = fn(&Run) -> Option<f64>;

/// Whether `r`'s `bytes_written` is what its system wrote to its log (not the bytes handed
/// to a peer, whose own writes are not measured).
fn counts_bytes_written(r: &Run) -> bool {
    System::named(r.system).is_some_and(System::counts_bytes_written)
}

/// Whether `r`'s system is compared with `baseline` (`baselines_of`): a ratio against a
/// system it is not compared with (a peer against the engine without coalescing) means
/// nothing, although the JSON has it.
fn compared(r: &Run, baseline: System) -> bool {
    System::named(r.system).is_some_and(|s| baselines_of(s).contains(&baseline))
}

impl Report {
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

    /// With one request outstanding per writer, each of a writer's writes waits for a sync
    /// (its gets need none): the sync probe sets about how many writes per second the writers
    /// can complete. "About": the probe's median, not a hard limit (some syncs are quicker).
    /// Nothing when the workload has no writes.
    fn depth_one_bound(&self) -> Option<String> {
        let (w, p) = (&self.workload, self.machine.sync_probe.as_ref()?);
        let write_share = 1.0 - w.read_ratio;
        if self.open_loop() || w.depth != 1 || p.p50_us <= 0.0 || write_share <= 0.0 {
            return None;
        }
        let reads = if w.read_ratio > 0.0 {
            format!(
                "; gets need none, and writes are {:.0} % of the ops",
                write_share * 100.0
            )
        } else {
            String::new()
        };
        Some(format!(
            "bound: at depth 1 a writer waits for one sync per write: {} writer{} / {:.1} µs \
             (probe p50) = {} writes/s, about (the probe's median, not a hard limit{reads})\n",
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
        out.push_str(&self.consumer_lines());
        if self.workload.rounds > 1 {
            out.push_str(&self.rounds_text());
        }
        out.push_str(&self.space_text());
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
        header.extend(["syncs", "writes/sync", "coalesced", "collapsed", "B/write"]);
        let ratios = self.ratio_columns();
        header.extend(ratios.iter().map(|(_, name, _)| *name));
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
                    r.bytes_per_write
                        .filter(|_| counts_bytes_written(r))
                        .map_or("-".into(), |x| format!("{x:.1}")),
                ]);
                row.extend(ratios.iter().map(|&(baseline, _, f)| {
                    if compared(r, baseline) {
                        f(r).map_or("-".into(), times)
                    } else {
                        "-".into()
                    }
                }));
                row
            })
            .collect();
        table(&header, &rows)
    }

    /// The systems table's ratio columns: one per baseline that ran and that some system that
    /// ran is compared with (`baselines_of`, as the headline); a column of `-` only would
    /// say nothing. Header, baseline, and the ratio of a run against it. `mergelog` has none:
    /// its variants' comparison with it is in the headline.
    fn ratio_columns(&self) -> Vec<(System, &'static str, RatioOf)> {
        let columns: [(System, &str, RatioOf); 7] = [
            (System::Naive, "vs naive", |r| r.ratio_vs_naive),
            (System::Wal, "vs wal", |r| r.ratio_vs_wal),
            (System::Okaywal, "vs okaywal", |r| r.ratio_vs_okaywal),
            (System::Rocksdb, "vs rocksdb", |r| r.ratio_vs_rocksdb),
            (System::Redb, "vs redb", |r| r.ratio_vs_redb),
            (System::Fjall, "vs fjall", |r| r.ratio_vs_fjall),
            (System::NoCoalesce, "vs no-coal", |r| r.ratio_vs_no_coalesce),
        ];
        columns
            .into_iter()
            .filter(|&(baseline, ..)| {
                self.runs.iter().any(|r| r.system == baseline.name())
                    && self.runs.iter().any(|r| compared(r, baseline))
            })
            .collect()
    }

    /// What the table does not say: how the baselines work, who fell behind, the CPU used,
    /// and what the latency measures.
    fn notes(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        out.push_str(&self.peer_notes());
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
        out.push_str(&self.log_kept_note());
        out.push_str(&self.bytes_note());
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
        out.push_str(&self.records_line());
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

    /// `--consumer`: one line per system, what its consumer processed, its lag (median and
    /// greatest over the interval samples) and the submissions throttled on it; the
    /// baselines have none. Nothing without `--consumer`.
    fn consumer_lines(&self) -> String {
        let mut out = String::new();
        if self.workload.consumer.is_none() {
            return out;
        }
        for r in &self.runs {
            let Some(c) = &r.consumer else {
                let _ = writeln!(
                    out,
                    "consumer ({}): none (a baseline has no log to consume)",
                    r.system
                );
                continue;
            };
            let _ = writeln!(
                out,
                "consumer ({}): processed {} batches ({} records, {} commits); lag over {} \
                 samples: p50 {} batches / {:.1} ms, max {} batches / {:.1} ms; {} submissions \
                 throttled",
                r.system,
                thousands(c.batches),
                thousands(c.records),
                thousands(c.commits),
                c.samples,
                thousands(c.lag_batches.p50.round() as u64),
                c.lag_age_ms.p50,
                thousands(c.lag_batches.max.round() as u64),
                c.lag_age_ms.max,
                thousands(c.throttled),
            );
            if c.unpaced_batches > 0 {
                let _ = writeln!(
                    out,
                    "consumer ({}): its last {} batches unpaced: the writers were still held by \
                     its lag limit after the deadline",
                    r.system,
                    thousands(c.unpaced_batches),
                );
            }
        }
        out
    }

    /// How each peer that ran makes a write durable (in sync mode; nothing otherwise).
    fn peer_notes(&self) -> String {
        let mut out = String::new();
        if self.workload.durability != "sync" {
            return out;
        }
        for (system, how) in [
            (
                "okaywal",
                "one entry per write (begin_entry, write_chunk, commit), the commit blocking \
                 until durable, concurrent commits synced together",
            ),
            (
                "rocksdb",
                "put with sync = true (WAL on, default options), its write group syncing \
                 concurrent puts together",
            ),
            (
                "redb",
                "one write transaction per write, committed with Durability::Immediate \
                 (transactions serialized)",
            ),
            (
                "fjall",
                "insert, then persist(SyncData) of its journal (each caller syncs; no group \
                 commit)",
            ),
        ] {
            if self.runs.iter().any(|r| r.system == system) {
                let _ = writeln!(
                    out,
                    "{system}: {how}; one request outstanding per writer (--depth does not apply)"
                );
            }
        }
        out
    }

    /// What each system keeps of its log, when a baseline that reuses a bounded log ran
    /// beside an engine: `wal` overwrites one file and okaywal recycles its files after each
    /// checkpoint, while the engine (without `--retain`) keeps every segment and writes each
    /// new one's zeros first. Nothing when only engines (or only baselines) ran.
    fn log_kept_note(&self) -> String {
        let ran = |s: &str| self.runs.iter().any(|r| r.system == s);
        let bounded: Vec<&str> = ["wal", "okaywal"].into_iter().filter(|s| ran(s)).collect();
        let engine = self.runs.iter().any(|r| r.system.starts_with("mergelog"));
        if bounded.is_empty() || !engine {
            return String::new();
        }
        // The file `wal` ran with (grown past the default when a batch could be larger).
        let wal_file = self
            .workload
            .wal_file_bytes
            .unwrap_or(mergelog::Config::default().segment_bytes);
        let mut out = String::from("log kept: ");
        if ran("wal") {
            out.push_str(&format!(
                "wal overwrites one file of {} (zero-filled before the run); ",
                file_size(wal_file)
            ));
        }
        if ran("okaywal") {
            out.push_str("okaywal reuses each file once checkpointed; ");
        }
        match self.workload.retain_segments {
            Some(n) => out.push_str(&format!(
                "the engine keeps its newest {} of {} and reuses older ones' files (the \
                 `segments` lines)\n",
                if n == 1 {
                    "segment".to_owned()
                } else {
                    format!("{n} segments")
                },
                file_size(self.workload.segment_bytes)
            )),
            None => {
                // Four files of a whole number of MiB, at least wal's file in all.
                let segment_mib = (wal_file / 4).div_ceil(1 << 20);
                let pooled = (4 * segment_mib) << 20;
                out.push_str(&format!(
                    "the engine keeps every segment ({} each), writing and syncing a new one's \
                     zeros first (the `segments` lines); like for like: --retain 2 \
                     --segment-bytes {segment_mib}M (two segments kept, two files pooled: {} \
                     reused{})\n",
                    file_size(self.workload.segment_bytes),
                    file_size(pooled),
                    match (ran("wal"), pooled == wal_file) {
                        (false, _) => String::new(),
                        (true, true) => ", as wal's".into(),
                        (true, false) => format!(" against wal's {}", file_size(wal_file)),
                    }
                ));
            }
        }
        out
    }

    /// What `B/write` counts, when a peer ran: the bytes each system wrote to its log per
    /// put or delete, which the bench does not see for the peers (`-`). Nothing otherwise.
    fn bytes_note(&self) -> String {
        let unmeasured: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| !counts_bytes_written(r))
            .map(|r| r.system)
            .collect();
        if unmeasured.is_empty() {
            return String::new();
        }
        format!(
            "B/write: bytes written to the log per put or delete (the engine's frames, wal's and \
             naive's records); - for {}: what they write to their files is not measured (the \
             JSON's bytes_written is the bytes handed to them)\n",
            unmeasured.join(", ")
        )
    }

    /// `--op merge`: the records each system logged per request (a merge, or the client's
    /// get-then-put), beside its throughput in the table (issue 16); nothing for puts, whose
    /// coalescing the table gives.
    fn records_line(&self) -> String {
        if self.workload.op != "merge" {
            return String::new();
        }
        let per: Vec<String> = (self.runs.iter())
            .filter_map(|r| Some(format!("{} {:.3}", r.system, r.records_per_op?)))
            .collect();
        if per.is_empty() {
            return String::new();
        }
        format!(
            "records logged per request: {} (a merge is one request, and so is a client's \
             get-then-put of the counter)\n",
            per.join(", ")
        )
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
    /// run), and the `mergelog-syncers` run's disk time if it ran.
    fn mergelog_stages(&self, results: &[RunResult]) -> String {
        let mut out = String::new();
        let engine_of = |system| {
            results
                .iter()
                .find(|r| r.system == system)
                .and_then(|r| r.engine.as_ref())
        };
        let syncers = engine_of(System::MergelogSyncers)
            .and_then(|stats| sync_time_line(&stats.sync_time))
            .map(|line| format!("mergelog-syncers {line}"));
        let Some(stats) = engine_of(System::Mergelog) else {
            return syncers.map(|l| format!("\n{l}")).unwrap_or_default();
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
        if let Some(line) = syncers {
            out.push('\n');
            out.push_str(&line);
        }
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
        let mergelog = self
            .runs
            .iter()
            .find(|m| m.system == System::Mergelog.name());
        for r in &self.runs {
            let Some(system) = System::named(r.system) else {
                continue;
            };
            // The engine's variants against the engine itself: no ratio field of the run's
            // holds it, since only they are compared with it.
            let vs_mergelog =
                |of: fn(&Run) -> f64| mergelog.and_then(|m| ratio(of(r), Some(of(m))));
            let mut parts = Vec::new();
            for (name, rate, p99) in [
                ("naive", r.ratio_vs_naive, r.p99_ratio_vs_naive),
                ("wal", r.ratio_vs_wal, r.p99_ratio_vs_wal),
                ("okaywal", r.ratio_vs_okaywal, r.p99_ratio_vs_okaywal),
                ("rocksdb", r.ratio_vs_rocksdb, r.p99_ratio_vs_rocksdb),
                ("redb", r.ratio_vs_redb, r.p99_ratio_vs_redb),
                ("fjall", r.ratio_vs_fjall, r.p99_ratio_vs_fjall),
                (
                    "no-coalesce",
                    r.ratio_vs_no_coalesce,
                    r.p99_ratio_vs_no_coalesce,
                ),
                (
                    "mergelog",
                    vs_mergelog(|x| x.ops_per_s),
                    vs_mergelog(|x| x.latency_us.p99),
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
        // `--system mergelog-compact`: the disk against the live data, as `bench` prints it.
        out.push_str(&self.space_text());
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
            let per_request_latency = [
                "client",
                "client_raw",
                "cut_wait",
                "sync_wait",
                "end_to_end",
            ];
            if per_request_latency.contains(&row[0].as_str()) {
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
            "ring_wait: producer blocked on a full ring; cut_wait: per request, submit to its \
             frame handed on for its sync; window_age: first request to cut; coalesce_sort, \
             encode_write, sync, wakeup: per batch (ns/request: the stage's total time over \
             all requests); sync_wait: per request, frame handed on to its sync's start; \
             end_to_end: per request, submit to durable\n",
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
        counter(
            "windows_by_waiters",
            s.windows_by_waiters,
            per(s.windows_by_waiters * 100, s.batches)
                .map(|p| format!("{p:.1} % of batches: written by the producer waiting for them")),
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
    let overlapped = match t.overlapped {
        0 => String::new(),
        n => format!("; {n} syncs started while another ran"),
    };
    Some(format!(
        "disk time (first sync to last): syncing {:.1} %, between syncs with a written frame \
         waiting {:.1} % (hand-off), with nothing written to sync {:.1} % (producers or \
         CPU){overlapped}\n",
        pct(t.busy_ns),
        pct(t.frame_ready_ns),
        pct(t.nothing_ready_ns),
    ))
}

/// A file size: "64 MiB", "64 KiB", else MiB with one decimal.
fn file_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) && bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Segments started (in zero-filled files, or in reused ones) and retired.
fn segments_line(c: &mergelog::SegmentCounts) -> String {
    format!(
        "segments: {} started in zero-filled files ({:.2} s writing and syncing zeros), {} in \
         reused ones; {} retired\n",
        c.fresh,
        c.zero_fill.as_secs_f64(),
        c.reused,
        c.retired
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
