//! The space report: per engine system, the disk its run took against its live data, what
//! compaction wrote, and (for `mergelog-compact`) the bound docs/FORMAT.md derives for it.

use super::table::{table, thousands, times};
use super::{per, Report};
use crate::bench::space::{SpaceRun, SAMPLE_EVERY};
use crate::bench::{Plan, RunResult, System};
use mergelog::{AutoCompaction, Compaction};
use serde::Serialize;
use std::fmt::Write;

/// `mergelog-compact`'s policy, as run (`workload.compaction`).
#[derive(Clone, Serialize)]
pub struct CompactionWorkloadJson {
    live_ratio: f64,
    check_every_ms: f64,
}

impl CompactionWorkloadJson {
    /// The policy when `mergelog-compact` is among `systems`.
    pub fn of(plan: &Plan, systems: &[System]) -> Option<CompactionWorkloadJson> {
        systems
            .contains(&System::MergelogCompact)
            .then_some(CompactionWorkloadJson {
                live_ratio: plan.compaction.live_ratio,
                check_every_ms: plan.compaction.check_every.as_secs_f64() * 1e3,
            })
    }

    /// The header's line.
    pub fn describe(&self) -> String {
        format!(
            "compaction (mergelog-compact): Compaction::Auto when live / log < {}, checked every {} ms",
            self.live_ratio, self.check_every_ms
        )
    }
}

/// An engine system's space (`runs[].space`).
#[derive(Serialize)]
pub struct SpaceJson {
    /// The compaction policy: null where the engine never compacts on its own.
    policy: Option<CompactionWorkloadJson>,
    /// After close, in the round where disk / live was greatest.
    end: EndJson,
    /// The most disk the run took, in the round where peak / live was greatest.
    peak: PeakJson,
    /// bytes_written / (bytes_written - compactions.bytes): 1 without compaction.
    write_amplification: f64,
    /// bytes_written / puts (compaction batches included); null without puts.
    bytes_per_put: Option<f64>,
    /// `Stats::compaction`, summed over the rounds.
    compactions: CompactionsJson,
    /// The longest compaction the sampler saw (ms; up to two sampling intervals long), over
    /// the rounds; null if none was seen.
    longest_compaction_ms: Option<f64>,
    /// docs/FORMAT.md's bound on the disk, for the peak's round (auto compaction only).
    bound: Option<BoundJson>,
    rounds: Vec<SpaceRoundJson>,
}

#[derive(Serialize)]
struct EndJson {
    /// 1-based.
    round: usize,
    disk_bytes: u64,
    live_bytes: u64,
    log_bytes: u64,
    segments: usize,
    /// disk_bytes / live_bytes; null with nothing live.
    disk_to_live: Option<f64>,
}

#[derive(Serialize)]
struct PeakJson {
    round: usize,
    disk_bytes: u64,
    log_bytes: u64,
    /// disk_bytes / the round's live bytes at the end.
    disk_to_live: Option<f64>,
}

#[derive(Serialize)]
struct CompactionsJson {
    runs: u64,
    batches: u64,
    records: u64,
    bytes: u64,
    segments_retired: u64,
    /// Automatic compactions that ended in an error without failing the engine.
    failed: u64,
}

/// docs/FORMAT.md, "Compaction": the files stay below L / r + S (the log when a check finds
/// it over the ratio, a segment completing) + 2 S (the unwritten rest of the segment being
/// written, the prepared next one) + the pool + one compaction's copies (at most L), plus
/// the writers' bytes during one check interval and two compactions (the one running, and
/// the one before, which left what arrived while it ran for the next).
#[derive(Serialize)]
struct BoundJson {
    /// L / r.
    live_over_ratio: u64,
    /// 3 S + the pool, max(recycle_segments, 2) x S (a compaction run keeps the files the
    /// log fills before the next run; docs/FORMAT.md derives the 2).
    segments: u64,
    /// L: one compaction's copies at most.
    copies: u64,
    /// The writers' bytes per second (frames, without compaction's) x (check interval + 2 x
    /// the longest compaction seen).
    writes: u64,
    /// The sum.
    bytes: u64,
    /// peak.disk_bytes / bytes: at most 1 when the bound holds.
    peak_over_bound: f64,
}

#[derive(Serialize)]
struct SpaceRoundJson {
    round: usize,
    disk_bytes: u64,
    live_bytes: u64,
    log_bytes: u64,
    segments: usize,
    disk_to_live: Option<f64>,
    peak_disk_bytes: u64,
    peak_log_bytes: u64,
    peak_to_live: Option<f64>,
    samples: u64,
    compactions_seen: u64,
    longest_compaction_ms: Option<f64>,
}

impl SpaceRoundJson {
    fn of(s: &SpaceRun) -> SpaceRoundJson {
        SpaceRoundJson {
            round: s.round + 1,
            disk_bytes: s.end.disk_bytes,
            live_bytes: s.end.live_bytes,
            log_bytes: s.end.log_bytes,
            segments: s.end.segments,
            disk_to_live: s.end_to_live(),
            peak_disk_bytes: s.peak_disk_bytes,
            peak_log_bytes: s.peak_log_bytes,
            peak_to_live: s.peak_to_live(),
            samples: s.samples,
            compactions_seen: s.compactions_seen,
            longest_compaction_ms: s.longest_compaction.map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

/// The run of `runs` where `f` is greatest (the first of equals; `None` counts least).
fn worst(runs: &[SpaceRun], f: impl Fn(&SpaceRun) -> Option<f64>) -> Option<&SpaceRun> {
    runs.iter().reduce(|a, b| {
        let (x, y) = (f(a).unwrap_or(f64::MIN), f(b).unwrap_or(f64::MIN));
        if y > x {
            b
        } else {
            a
        }
    })
}

impl SpaceJson {
    /// `r`'s space (`None` for a baseline), with the policy it ran under.
    pub fn of(r: &RunResult, plan: &Plan) -> Option<SpaceJson> {
        let stats = r.engine.as_ref()?;
        let end = worst(&r.space, SpaceRun::end_to_live)?;
        let peak = worst(&r.space, SpaceRun::peak_to_live)?;
        let c = &stats.compaction;
        let policy = match plan.engine_config(r.system).compaction {
            Compaction::Auto(a) => Some(a),
            _ => None,
        };
        let longest = r.space.iter().filter_map(|s| s.longest_compaction).max();
        let writers_bytes = stats.bytes_written.saturating_sub(c.bytes);
        Some(SpaceJson {
            policy: policy.map(|a| CompactionWorkloadJson {
                live_ratio: a.live_ratio,
                check_every_ms: a.check_every.as_secs_f64() * 1e3,
            }),
            end: EndJson {
                round: end.round + 1,
                disk_bytes: end.end.disk_bytes,
                live_bytes: end.end.live_bytes,
                log_bytes: end.end.log_bytes,
                segments: end.end.segments,
                disk_to_live: end.end_to_live(),
            },
            peak: PeakJson {
                round: peak.round + 1,
                disk_bytes: peak.peak_disk_bytes,
                log_bytes: peak.peak_log_bytes,
                disk_to_live: peak.peak_to_live(),
            },
            write_amplification: per(stats.bytes_written, writers_bytes).unwrap_or(1.0),
            bytes_per_put: per(stats.bytes_written, r.puts),
            compactions: CompactionsJson {
                runs: c.runs,
                batches: c.batches,
                records: c.records,
                bytes: c.bytes,
                segments_retired: c.segments_retired,
                failed: c.failed,
            },
            longest_compaction_ms: longest.map(|d| d.as_secs_f64() * 1e3),
            bound: policy.map(|a| {
                let rate = writers_bytes as f64 / r.elapsed.as_secs_f64().max(1e-9);
                bound(peak, &a, plan, rate, longest.unwrap_or_default())
            }),
            rounds: r.space.iter().map(SpaceRoundJson::of).collect(),
        })
    }
}

/// The bound for `run` under `policy`, the writers writing `rate` bytes a second and a
/// compaction taking `compaction`.
fn bound(
    run: &SpaceRun,
    policy: &AutoCompaction,
    plan: &Plan,
    rate: f64,
    compaction: std::time::Duration,
) -> BoundJson {
    let live = run.end.live_bytes;
    let s = plan.engine.segment_bytes;
    let live_over_ratio = (live as f64 / policy.live_ratio).ceil() as u64;
    let segments = (3 + plan.engine.recycle_segments.max(2) as u64) * s;
    // The compactor looks whenever a segment completes (or every `check_every`, if sooner).
    let check = (rate * policy.check_every.as_secs_f64()).min(s as f64);
    let writes = (check + rate * (2 * compaction).as_secs_f64()).ceil() as u64;
    let bytes = live_over_ratio + segments + live + writes;
    BoundJson {
        live_over_ratio,
        segments,
        copies: live,
        writes,
        bytes,
        peak_over_bound: run.peak_disk_bytes as f64 / bytes.max(1) as f64,
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

impl Report {
    /// The space table (only when some run compacted or could: `mergelog-compact` ran).
    pub(super) fn space_text(&self) -> String {
        let shown = self.runs.iter().any(|r| {
            r.space
                .as_ref()
                .is_some_and(|s| s.policy.is_some() || s.compactions.runs > 0)
        });
        if !shown {
            return String::new();
        }
        let header = [
            "system",
            "live MiB",
            "disk MiB",
            "disk/live",
            "peak MiB",
            "peak/live",
            "bound MiB",
            "log MiB",
            "write amp",
            "B/put",
            "compactions",
            "batches",
            "records copied",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .filter_map(|r| Some((r.system, r.space.as_ref()?)))
            .map(|(system, s)| {
                let ratio = |x: Option<f64>| x.map_or("-".into(), times);
                vec![
                    system.to_owned(),
                    mib(s.end.live_bytes),
                    mib(s.end.disk_bytes),
                    ratio(s.end.disk_to_live),
                    mib(s.peak.disk_bytes),
                    ratio(s.peak.disk_to_live),
                    s.bound.as_ref().map_or("-".into(), |b| mib(b.bytes)),
                    mib(s.end.log_bytes),
                    times(s.write_amplification),
                    s.bytes_per_put.map_or("-".into(), |x| format!("{x:.1}")),
                    thousands(s.compactions.runs),
                    thousands(s.compactions.batches),
                    thousands(s.compactions.records),
                ]
            })
            .collect();
        let mut out = String::from(
            "\nspace (disk: every file in the run's directory after close; live: \
             Engine::space().live_bytes; peak: the greatest of samples every ",
        );
        let _ = writeln!(
            out,
            "{} ms, over the end's live bytes; write amp: bytes written / the writers' bytes{}):",
            SAMPLE_EVERY.as_millis(),
            if self.workload.rounds > 1 {
                "; each ratio from the round where it was greatest"
            } else {
                ""
            }
        );
        out.push_str(&table(&header, &rows));
        out.push_str(&self.bound_lines());
        out
    }

    /// Per compacting system: how its bound was made up (docs/FORMAT.md, "Compaction"). Its
    /// throughput against `mergelog`'s is in the headline, as every engine variant's.
    fn bound_lines(&self) -> String {
        let mut out = String::new();
        for r in &self.runs {
            let Some(s) = &r.space else { continue };
            let (Some(b), Some(p)) = (&s.bound, &s.policy) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{} bound: L / r {} + 3 S + pool {} + one compaction's copies L {} + writes \
                 until a check (a segment, or {} ms if sooner) and during twice the longest \
                 compaction seen ({}) {} = {} MiB; the peak is {} of it",
                r.system,
                mib(b.live_over_ratio),
                mib(b.segments),
                mib(b.copies),
                p.check_every_ms,
                s.longest_compaction_ms
                    .map_or("none".into(), |ms| format!("{ms:.0} ms")),
                mib(b.writes),
                mib(b.bytes),
                times(b.peak_over_bound),
            );
        }
        out
    }
}
