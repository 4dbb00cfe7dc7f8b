//! `mergelog profile --trace FILE`: the engine's pipeline timeline (`Engine::take_trace`),
//! written one event per line and summed up: how the disk's time divided by the syncs in
//! flight, what the flusher did while none ran, and how long each hand-off took.

use crate::error::{CliError, Context};
use mergelog::{Trace, TraceEvent, TraceKind};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Writes `trace` to `path`: a comment line, then `nanoseconds kind value` per event.
pub fn write(path: &Path, trace: &Trace) -> Result<(), CliError> {
    let what = || format!("write the trace to {}", path.display());
    let file = std::fs::File::create(path).context(what)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(
        out,
        "# mergelog pipeline trace: nanoseconds since open, kind, value ({} dropped)",
        trace.dropped
    )
    .context(what)?;
    for e in &trace.events {
        writeln!(out, "{} {} {}", e.at.as_nanos(), e.kind.name(), e.value).context(what)?;
    }
    out.flush().context(what)
}

/// What the flusher was doing at a moment of the trace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flusher {
    Other,
    Compaction,
    Roll,
}

/// How the traced time divided: by syncs in flight (0, 1, 2 or more) and, with none, by
/// what the flusher was doing. Nanoseconds.
#[derive(Default, Debug, PartialEq)]
struct Shares {
    /// `[syncs in flight][flusher: other, compaction batch, roll]`.
    time: [[u64; 3]; 3],
}

fn shares(events: &[TraceEvent]) -> Shares {
    let mut s = Shares::default();
    let (mut syncing, mut flusher) = (0usize, Flusher::Other);
    let mut last = events.first().map_or(Duration::ZERO, |e| e.at);
    for e in events {
        let f = match flusher {
            Flusher::Other => 0,
            Flusher::Compaction => 1,
            Flusher::Roll => 2,
        };
        s.time[syncing.min(2)][f] += (e.at - last).as_nanos() as u64;
        last = e.at;
        match e.kind {
            TraceKind::SyncStart => syncing += 1,
            TraceKind::SyncEnd => syncing = syncing.saturating_sub(1),
            TraceKind::CompactionStart => flusher = Flusher::Compaction,
            TraceKind::RollStart => flusher = Flusher::Roll,
            TraceKind::CompactionEnd | TraceKind::RollEnd => flusher = Flusher::Other,
            _ => {}
        }
    }
    s
}

/// The gaps, in microseconds, from each `from` event to the first `to` event after it (a
/// `from` is paired once; with several `from`s before a `to`, the first of them).
fn gaps(
    events: &[TraceEvent],
    from: impl Fn(&TraceEvent) -> bool,
    to: impl Fn(&TraceEvent) -> bool,
) -> Vec<f64> {
    let mut out = Vec::new();
    let mut pending: Option<Duration> = None;
    for e in events {
        if to(e) {
            if let Some(at) = pending.take() {
                out.push((e.at - at).as_secs_f64() * 1e6);
            }
        } else if from(e) && pending.is_none() {
            pending = Some(e.at);
        }
    }
    out
}

/// `count mean p50 p90 p99` of `v` (microseconds), or dashes.
fn row(name: &str, mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return format!(
            "{name:<24} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            0, "-", "-", "-", "-"
        );
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "{name:<24} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
        v.len(),
        mean,
        q(0.5),
        q(0.9),
        q(0.99)
    )
}

/// The summary `profile --trace` prints.
pub fn summary(trace: &Trace, path: &Path) -> String {
    let ev = &trace.events;
    let mut out = String::new();
    let span = match (ev.first(), ev.last()) {
        (Some(a), Some(b)) => b.at - a.at,
        _ => Duration::ZERO,
    };
    let _ = writeln!(
        out,
        "\ntrace: {} events over {:.2} s ({} dropped), written to {}",
        ev.len(),
        span.as_secs_f64(),
        trace.dropped,
        path.display()
    );
    let s = shares(ev);
    let total: u64 = s.time.iter().flatten().sum();
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            100.0 * n as f64 / total as f64
        }
    };
    let _ = writeln!(
        out,
        "share of the time     flusher other  compaction batch  rolling    all"
    );
    for (i, name) in ["no sync running", "one sync", "two or more"]
        .iter()
        .enumerate()
    {
        let t = s.time[i];
        let _ = writeln!(
            out,
            "{name:<21} {:>12.1} % {:>15.1} % {:>7.1} % {:>5.1} %",
            pct(t[0]),
            pct(t[1]),
            pct(t[2]),
            pct(t.iter().sum())
        );
    }
    let is = |k: TraceKind| move |e: &TraceEvent| e.kind == k;
    let written =
        |e: &TraceEvent| matches!(e.kind, TraceKind::HandedOn | TraceKind::Inline) && e.value > 0;
    let _ = writeln!(
        out,
        "hand-offs (µs)              count     mean      p50      p90      p99"
    );
    out += &row(
        "sync end -> next cut",
        gaps(ev, is(TraceKind::SyncEnd), is(TraceKind::WindowCut)),
    );
    out += &row(
        "cut -> handed on",
        gaps(ev, is(TraceKind::WindowCut), written),
    );
    out += &row(
        "handed on -> taken",
        gaps(ev, is(TraceKind::HandedOn), is(TraceKind::GroupTaken)),
    );
    out += &row(
        "taken -> sync start",
        gaps(ev, is(TraceKind::GroupTaken), is(TraceKind::SyncStart)),
    );
    // What a compaction holds the writers back by: the flusher's time on one compaction
    // batch (taking the chunk, checking it, writing it, a roll if it needs one), against a
    // window's "cut -> handed on" above (issue 16: never longer than one batch).
    out += &row(
        "compaction start -> end",
        gaps(
            ev,
            is(TraceKind::CompactionStart),
            is(TraceKind::CompactionEnd),
        ),
    );
    let windows: Vec<f64> = ev
        .iter()
        .filter(|e| e.kind == TraceKind::WindowCut)
        .map(|e| e.value as f64)
        .collect();
    let syncs: Vec<f64> = ev
        .iter()
        .filter(|e| e.kind == TraceKind::SyncStart)
        .map(|e| e.value as f64)
        .collect();
    out += "sizes (requests)            count     mean      p50      p90      p99\n";
    out += &row("windows", windows);
    out += &row("syncs", syncs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(us: u64, kind: TraceKind, value: u64) -> TraceEvent {
        TraceEvent {
            at: Duration::from_micros(us),
            kind,
            value,
        }
    }

    #[test]
    fn shares_split_the_time_by_syncs_in_flight_and_the_flusher() {
        use TraceKind::*;
        let events = [
            ev(0, WindowCut, 10),
            ev(10, SyncStart, 10),
            ev(30, CompactionStart, 0),
            ev(40, SyncStart, 5),
            ev(50, SyncEnd, 10),
            ev(60, SyncEnd, 5),
            ev(80, CompactionEnd, 7),
            ev(90, RollStart, 0),
            ev(100, RollEnd, 0),
        ];
        let s = shares(&events);
        // 0-10 none; 10-30 one; 30-40 one, compacting; 40-50 two, compacting; 50-60 one,
        // compacting; 60-80 none, compacting; 80-90 none; 90-100 none, rolling.
        let us = 1_000;
        assert_eq!(
            s.time,
            [
                [20 * us, 20 * us, 10 * us],
                [20 * us, 20 * us, 0],
                [0, 10 * us, 0]
            ]
        );
    }

    /// The summary gives the flusher's time per compaction batch, from each
    /// `CompactionStart` to its `CompactionEnd`.
    #[test]
    fn the_summary_times_each_compaction_batch() {
        use TraceKind::*;
        let events = vec![
            ev(0, WindowCut, 10),
            ev(30, CompactionStart, 0),
            ev(80, CompactionEnd, 7),
            ev(100, WindowCut, 3),
            ev(200, CompactionStart, 0),
            ev(230, CompactionEnd, 5),
        ];
        let trace = Trace { events, dropped: 0 };
        let text = summary(&trace, Path::new("t"));
        let line = (text.lines())
            .find(|l| l.starts_with("compaction start -> end"))
            .unwrap_or_else(|| panic!("no compaction row:\n{text}"));
        let cells: Vec<&str> = line["compaction start -> end".len()..]
            .split_whitespace()
            .collect();
        assert_eq!(cells, ["2", "40.0", "50.0", "50.0", "50.0"], "{text}");
    }

    #[test]
    fn a_gap_pairs_the_first_unpaired_start_with_the_next_end() {
        use TraceKind::*;
        let events = [
            ev(0, HandedOn, 3),
            ev(5, HandedOn, 4),
            ev(20, GroupTaken, 2),
            ev(30, GroupTaken, 1),
            ev(40, HandedOn, 1),
            ev(45, GroupTaken, 1),
        ];
        let g = gaps(&events, |e| e.kind == HandedOn, |e| e.kind == GroupTaken);
        assert_eq!(g, [20.0, 5.0]);
        let r = row("x", g);
        assert!(r.contains("12.5"), "{r}");
    }
}
