//! `--hlog PATH`: an HdrHistogram interval log, as the Java `HistogramLogWriter` writes it
//! and `HistogramLogProcessor`, HistogramLogAnalyzer and the hdrhistogram crate's
//! `IntervalLogIterator` read it.
//!
//! One file for the whole run. Every interval of every system is one line, tagged:
//!
//! - `SYSTEM` (`mergelog`, `no-coalesce`, `wal`, `naive`): latency from when each request was due
//!   to completion (in a closed loop, from its submission);
//! - `SYSTEM.raw` (open loop only): latency from the actual submission;
//! - `SYSTEM.STAGE` (`mergelog profile` only): the engine's stage histogram for the interval
//!   (`ring_wait`, `cut_wait`, `window_age`, `coalesce_sort`, `encode_write`, `sync_wait`,
//!   `sync`, `wakeup`, `end_to_end`).
//!
//! Values are nanoseconds; the `Interval_Max` column is in milliseconds (MaxValueDivisor
//! 1e6). StartTime and BaseTime are the start of the first system's run, so timestamps are
//! seconds into the session and the systems, which run one after the other, follow each
//! other in time. With `--rounds` a system's runs alternate with the others'; the lines
//! are written in time order, whatever the system.

use super::Session;
use crate::error::{CliError, Context};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use std::io::Write;
use std::path::Path;

pub fn write(path: &Path, session: &Session, title: &str) -> Result<(), CliError> {
    let what = || format!("write {}", path.display());
    let file = std::fs::File::create(path).context(what)?;
    let mut out = std::io::BufWriter::new(file);
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "{title}: {}",
            session.workload.describe().replace('\n', "; ")
        ))
        .add_comment(
            "values in nanoseconds; tags: SYSTEM = latency from scheduled send (corrected), \
             SYSTEM.raw = from actual submission (open loop), SYSTEM.STAGE = engine stage \
             (profile)",
        )
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(session.started)
        .with_base_time(session.started)
        .with_max_value_divisor(1e6);
    let mut log = builder
        .begin_log_with(&mut out, &mut serializer)
        .context(what)?;
    let mut deserializer = Deserializer::new();
    // Every interval with its start from the start of the bench, in time order (a stable
    // sort: without --rounds this is the systems' order).
    let mut intervals: Vec<_> = session
        .results
        .iter()
        .flat_map(|run| {
            run.timeline
                .iter()
                .map(move |i| (run.interval_offset(i), run.system.name(), i))
        })
        .collect();
    intervals.sort_by_key(|(start, _, _)| *start);
    for (start, system, interval) in intervals {
        for (suffix, bytes) in &interval.encoded {
            let h: Histogram<u64> = deserializer
                .deserialize(&mut &bytes[..])
                .map_err(|e| CliError::new(format!("decode an interval histogram: {e:?}")))?;
            let tag = if suffix.is_empty() {
                system.to_owned()
            } else {
                format!("{system}.{suffix}")
            };
            log.write_histogram(&h, start, interval.duration, Tag::new(&tag))
                .map_err(|e| CliError::new(format!("{}: {e}", what())))?;
        }
    }
    drop(log);
    out.flush().context(what)
}
