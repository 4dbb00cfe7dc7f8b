//! The bench report: a table for people (stdout) and the same numbers as JSON.

use super::{Machine, RunResult, System};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write;

/// The workload, every flag resolved.
#[derive(Serialize)]
pub struct Workload {
    pub writers: usize,
    pub depth: usize,
    pub keys: u64,
    pub dist: String,
    pub key_size: usize,
    pub value_size: usize,
    pub read_ratio: f64,
    pub duration_s: f64,
    pub durability: &'static str,
    pub write_path: &'static str,
    pub window: String,
    pub systems: Vec<&'static str>,
    pub seed: u64,
    /// `--dir`, or null for a temporary directory.
    pub dir: Option<String>,
    /// File system type of the run directory, when known.
    pub fs: Option<String>,
}

#[derive(Serialize)]
struct MachineJson {
    cpus: usize,
    os: String,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Serialize)]
struct Stage {
    stage: &'static str,
    count: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

#[derive(Serialize)]
struct Run {
    system: &'static str,
    ops: u64,
    elapsed_s: f64,
    ops_per_s: f64,
    latency_us: Latency,
    batches: u64,
    syncs: u64,
    /// Null when the run issued no sync (`nosync`, or only gets).
    ops_per_sync: Option<f64>,
    coalesced_writes: u64,
    collapsed_reads: u64,
    bytes_written: u64,
    bytes_per_op: f64,
    /// Null when `naive` was not run.
    ratio_vs_naive: Option<f64>,
    /// Null when `no-coalesce` was not run.
    ratio_vs_no_coalesce: Option<f64>,
    /// The engine's per-stage latencies (engine systems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<Vec<Stage>>,
}

#[derive(Serialize)]
pub struct Report {
    workload: Workload,
    machine: MachineJson,
    runs: Vec<Run>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn ratio(num: f64, den: Option<f64>) -> Option<f64> {
    den.filter(|d| *d > 0.0).map(|d| num / d)
}

impl Report {
    pub fn new(workload: Workload, machine: Machine, results: &[RunResult]) -> Report {
        let ops_per_s = |r: &RunResult| {
            let secs = r.elapsed.as_secs_f64();
            if secs > 0.0 {
                r.ops as f64 / secs
            } else {
                0.0
            }
        };
        let of = |system: System| results.iter().find(|r| r.system == system).map(ops_per_s);
        let (naive, no_coalesce) = (of(System::Naive), of(System::NoCoalesce));
        let runs = results
            .iter()
            .map(|r| {
                let rate = ops_per_s(r);
                let h = &r.latency;
                Run {
                    system: r.system.name(),
                    ops: r.ops,
                    elapsed_s: r.elapsed.as_secs_f64(),
                    ops_per_s: rate,
                    latency_us: Latency {
                        p50: us(h.value_at_quantile(0.5)),
                        p99: us(h.value_at_quantile(0.99)),
                        p999: us(h.value_at_quantile(0.999)),
                        max: us(h.max()),
                    },
                    batches: r.batches,
                    syncs: r.syncs,
                    ops_per_sync: (r.syncs > 0).then(|| r.ops as f64 / r.syncs as f64),
                    coalesced_writes: r.coalesced_writes,
                    collapsed_reads: r.collapsed_reads,
                    bytes_written: r.bytes_written,
                    bytes_per_op: if r.ops > 0 {
                        r.bytes_written as f64 / r.ops as f64
                    } else {
                        0.0
                    },
                    ratio_vs_naive: ratio(rate, naive),
                    ratio_vs_no_coalesce: ratio(rate, no_coalesce),
                    stages: r.stages.as_ref().map(|s| {
                        s.stages()
                            .iter()
                            .map(|(name, h)| Stage {
                                stage: name,
                                count: h.len(),
                                p50_us: us(h.value_at_quantile(0.5)),
                                p99_us: us(h.value_at_quantile(0.99)),
                                max_us: us(h.max()),
                            })
                            .collect()
                    }),
                }
            })
            .collect();
        Report {
            workload,
            machine: MachineJson {
                cpus: machine.cpus,
                os: machine.os,
            },
            runs,
        }
    }

    /// The human-readable report: workload, the systems side by side, and the `mergelog`
    /// run's per-stage latencies.
    pub fn text(&self, results: &[RunResult]) -> String {
        let w = &self.workload;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "workload: {} writers x depth {}, {} keys {}, key {} B, value {} B, {:.0}% gets, \
             {} s per system, durability {}, write path {}, window {}",
            w.writers,
            w.depth,
            w.keys,
            w.dist,
            w.key_size,
            w.value_size,
            w.read_ratio * 100.0,
            w.duration_s,
            w.durability,
            w.write_path,
            w.window,
        );
        let _ = writeln!(
            out,
            "machine:  {} cpus, {}, file system {}",
            self.machine.cpus,
            self.machine.os,
            w.fs.as_deref().unwrap_or("unknown"),
        );
        out.push('\n');

        let header = [
            "system", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "batches", "syncs",
            "ops/sync", "coalesced", "collapsed", "B/op", "vs naive", "vs no-coal",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.system.to_owned(),
                    thousands(r.ops_per_s.round() as u64),
                    format!("{:.1}", r.latency_us.p50),
                    format!("{:.1}", r.latency_us.p99),
                    format!("{:.1}", r.latency_us.p999),
                    format!("{:.1}", r.latency_us.max),
                    thousands(r.batches),
                    thousands(r.syncs),
                    r.ops_per_sync.map_or("-".into(), |x| format!("{x:.1}")),
                    thousands(r.coalesced_writes),
                    thousands(r.collapsed_reads),
                    format!("{:.1}", r.bytes_per_op),
                    r.ratio_vs_naive.map_or("-".into(), |x| format!("{x:.2}x")),
                    r.ratio_vs_no_coalesce.map_or("-".into(), |x| format!("{x:.2}x")),
                ]
            })
            .collect();
        out.push_str(&table(&header, &rows));
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
        out.push_str(
            "latency: submit to completion as each writer sees it (closed loop; after the \
             deadline writers drain, and drained ops are counted)\n",
        );

        if let Some(stages) = results
            .iter()
            .find(|r| r.system == System::Mergelog)
            .and_then(|r| r.stages.as_ref())
        {
            out.push_str("\nmergelog stages (engine histograms):\n");
            let rows: Vec<Vec<String>> = stages
                .stages()
                .iter()
                .map(|(name, h)| stage_row(name, h))
                .collect();
            out.push_str(&table(
                &["stage", "count", "p50 µs", "p99 µs", "max µs"],
                &rows,
            ));
        }
        out
    }
}

fn stage_row(name: &str, h: &Histogram<u64>) -> Vec<String> {
    let q = |x: u64| {
        if h.is_empty() {
            "-".into()
        } else {
            format!("{:.1}", us(x))
        }
    };
    vec![
        name.to_owned(),
        thousands(h.len()),
        q(h.value_at_quantile(0.5)),
        q(h.value_at_quantile(0.99)),
        q(h.max()),
    ]
}

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
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

/// Columns padded to their widest cell: the first left-aligned, the rest right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
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
    fn table_aligns_columns() {
        let t = table(
            &["system", "ops/s"],
            &[
                vec!["mergelog".into(), "1,000".into()],
                vec!["naive".into(), "5".into()],
            ],
        );
        assert_eq!(t, "system    ops/s\nmergelog  1,000\nnaive         5\n");
    }
}
