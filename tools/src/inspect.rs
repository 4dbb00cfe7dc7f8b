//! `mergelog inspect DIR`: what a log holds. Segments, batches, records, bytes, key range,
//! how much each batch coalesced (write operations acknowledged against records logged),
//! the compaction batches (copies of live records, no new writes: counted apart), the
//! damage that ends the log, if any, and the durable consumers with their lag.
//!
//! The log is read as a point-in-time recovery would read it: up to the first damage
//! anywhere, which is reported with what the engine's open would do about it (cut it off as a
//! torn tail, or refuse the log); nothing is changed. A segment file no reader can map and a
//! consumer position file that does not decode are reported as damage too, beside what can
//! be read.

use crate::error::{CliError, Context};
use crate::history::{self, Refused, Verdict};
use crate::logdir::{self, Encoding, OpenError};
use crate::table::thousands;
use clap::Args;
use mergelog::{Batch, LogReader, RecordOp, RecoveryMode};
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The log directory.
    dir: PathBuf,
    /// Batches to list one by one (the first N); 0 lists them all [default: 20, or all
    /// with --json].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Print the report as one JSON object instead (keys in hex; every batch listed unless
    /// --limit is given).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SegmentJson {
    file: String,
    size: u64,
    batches: u64,
    /// End of the last frame: the bytes of the segment in use.
    used_bytes: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// A reused (recycled) segment file: past its frames lie old bytes, not zeros.
    recycled: bool,
    /// Bytes of the records in this segment that are still the newest put of their key:
    /// what a compaction would have to keep of it (record headers included).
    live_bytes: u64,
    /// `live_bytes` over the bytes of its frames (null without frames).
    live_ratio: Option<f64>,
    /// Of its batches, those written by compaction (`Batch::is_compaction`).
    compaction_batches: u64,
}

#[derive(Serialize)]
struct BatchJson {
    seq: u64,
    segment: String,
    offset: u64,
    frame_bytes: usize,
    records: usize,
    puts: u64,
    deletes: u64,
    ops_acknowledged: u32,
    /// ops_acknowledged - records: writes superseded within the batch.
    coalesced: u64,
    sorted: bool,
    /// Written by compaction: copies of live records, acknowledging nothing.
    compaction: bool,
    /// First and last key in log order (smallest and largest when sorted), hex.
    #[serde(serialize_with = "hex_opt")]
    first_key: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    last_key: Option<Vec<u8>>,
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&logdir::hex(b)),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
pub(crate) struct DamageJson {
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) reason: String,
    /// The log's damage: whether the engine's open (the default recovery, a log written with
    /// syncs) refuses the log (true) or cuts the damage off as a torn tail (false). Absent
    /// when that cannot be told: an engine has the log open (its last segment is being
    /// written), or a file beside the segments is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_refuses: Option<bool>,
    /// The first and the last durable batch lost there: valid frames follow it, or the log
    /// was closed cleanly after it (the engine refuses such a log).
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_batches: Option<[u64; 2]>,
}

impl DamageJson {
    fn new(path: &Path, offset: u64, reason: &str) -> DamageJson {
        DamageJson {
            file: path.display().to_string(),
            offset,
            reason: reason.to_owned(),
            engine_refuses: None,
            lost_batches: None,
        }
    }
}

#[derive(Serialize)]
struct InspectJson {
    dir: String,
    segments: Vec<SegmentJson>,
    batches: u64,
    sorted_batches: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    next_seq: u64,
    records: u64,
    puts: u64,
    deletes: u64,
    ops_acknowledged: u64,
    coalesced: u64,
    /// Compaction batches and their records (in `batches` and `records` too).
    compaction_batches: u64,
    compaction_records: u64,
    frame_bytes: u64,
    key_bytes: u64,
    value_bytes: u64,
    /// Smallest and largest key, hex.
    key_min: Option<String>,
    key_max: Option<String>,
    damage: Option<DamageJson>,
    /// An engine (in another process) has the log open: its last segment is being written,
    /// so where its frames stop is not judged (`damage.engine_refuses` absent).
    in_use: bool,
    /// The durable consumers (`consumer-<name>` files), by name.
    consumers: Vec<ConsumerJson>,
    /// A consumer position file (or the request ids file their pending ids come from) that
    /// does not decode: `consumers` is then empty.
    consumer_damage: Option<DamageJson>,
    /// The first --limit batches (all with --json and no --limit).
    batch_list: Vec<BatchJson>,
}

#[derive(Serialize)]
struct ConsumerJson {
    name: String,
    committed: u64,
    /// Batches of the log after the committed one.
    lag_batches: u64,
    /// Bytes of their frames.
    lag_bytes: u64,
    /// Age of the oldest of them, seconds (null: none, or a batch without a commit time).
    lag_age_s: Option<f64>,
    /// Of `lag_batches`, those retired before the consumer committed them: above 0, it is
    /// behind a retirement, its next read is `Error::Retired`, and its pending ids are not
    /// known (the retired batches' are gone).
    retired_unread: u64,
    /// Request ids durable but not yet committed by the consumer ("accepted but not
    /// processed"); null for a consumer behind a retirement.
    pending_id_count: Option<usize>,
    /// The oldest of them (the first --limit), oldest first.
    pending_ids: Vec<PendingJson>,
}

#[derive(Serialize)]
struct PendingJson {
    /// The request id, hex.
    id: String,
    /// The batch that logs it.
    seq: u64,
    /// How long ago that batch was written, seconds.
    age_s: Option<f64>,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn run(args: InspectArgs) -> Result<(), CliError> {
    let limit = match args.limit {
        Some(0) => usize::MAX,
        Some(n) => n,
        None if args.json => usize::MAX,
        None => 20,
    };
    let inspected = inspect(&args.dir, limit)?;
    if args.json {
        return logdir::print(&(inspected.json()? + "\n"));
    }
    logdir::print(&text(&args.dir, inspected.scan))
}

/// What `inspect` found in a log: the report it prints.
pub struct Inspected {
    scan: Scan<'static>,
}

/// Where a log, or a file beside it, stops being readable: file, offset, reason.
pub type Found<'a> = (&'a str, u64, &'a str);

impl Inspected {
    /// The report as `--json` prints it (without the final newline).
    ///
    /// # Errors
    ///
    /// A `CliError` if the report does not encode.
    pub fn json(self) -> Result<String, CliError> {
        let scan = self.scan;
        let mut r = scan.report;
        r.key_min = scan.key_min.as_deref().map(logdir::hex);
        r.key_max = scan.key_max.as_deref().map(logdir::hex);
        serde_json::to_string_pretty(&r).context(|| "encode JSON".into())
    }

    /// The damage that ends the log, if any, and whether the engine's open refuses the log
    /// for it (`None`: not told).
    pub fn damage(&self) -> Option<(Found<'_>, Option<bool>)> {
        (self.scan.report.damage.as_ref()).map(|d| {
            (
                (d.file.as_str(), d.offset, d.reason.as_str()),
                d.engine_refuses,
            )
        })
    }

    /// A consumer position file (or the ids file) that does not decode.
    pub fn consumer_damage(&self) -> Option<Found<'_>> {
        (self.scan.report.consumer_damage.as_ref())
            .map(|d| (d.file.as_str(), d.offset, d.reason.as_str()))
    }

    /// The batches read, and the log's next batch sequence number.
    pub fn batches(&self) -> (u64, u64) {
        (self.scan.report.batches, self.scan.report.next_seq)
    }
}

/// Reads `dir` as `mergelog inspect` does (listing the first `limit` batches one by one).
///
/// # Errors
///
/// A `CliError` for a directory that cannot be read as a log (its exit code says which), or
/// a failure to read it; damage is not an error but part of what is found.
pub fn inspect(dir: &Path, limit: usize) -> Result<Inspected, CliError> {
    let mut log = open(dir)?;
    let in_use = judge(dir, &mut log.damage)?;
    let mut scan = Scan::new(&mut log, dir);
    scan.report.in_use = in_use;
    for b in log.reader.batches() {
        scan.add(&b, limit);
    }
    scan.finish();
    (scan.report.consumers, scan.report.consumer_damage) = consumers(&log.reader, dir, limit)?;
    Ok(Inspected {
        scan: scan.detach(),
    })
}

/// A log as a point-in-time recovery would read it, and what the report says beside it.
pub(crate) struct Log {
    pub(crate) reader: LogReader,
    /// The segment files to list, with their sizes.
    segments: Vec<(PathBuf, u64)>,
    /// Where the log stops being readable.
    pub(crate) damage: Option<DamageJson>,
    /// The directory `reader` reads instead of the log's, if it does (see `read_before`):
    /// removed when dropped, so kept while the reader reads.
    pub(crate) _links: Option<tempfile::TempDir>,
}

/// Opens `dir` as a point-in-time recovery would read it (`dump` too reads a log the engine
/// refuses so).
pub(crate) fn open(dir: &Path) -> Result<Log, CliError> {
    match logdir::open(dir, RecoveryMode::PointInTime) {
        Ok(reader) => Ok(Log {
            segments: (reader.segments().into_iter())
                .map(|s| (s.path, s.bytes))
                .collect(),
            damage: reader
                .damage()
                .map(|d| DamageJson::new(&d.path, d.offset, &d.reason)),
            reader,
            _links: None,
        }),
        // Point-in-time stops at damage rather than failing: this is damage that fails
        // every open (a name outside the sequence range, a segment larger than a segment
        // can be, a name on something other than a regular file). The segments before it are read, as point-in-time
        // reads up to damage.
        Err(OpenError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            let listed = mergelog::internals::list_segments(dir)
                .context(|| format!("list the segments of {}", dir.display()))?;
            let bad = listed.iter().position(|(_, p)| *p == path);
            let kept = bad.map_or(listed.len(), |at| at + 1);
            let segments = listed[..kept]
                .iter()
                .map(|(_, p)| (p.clone(), std::fs::metadata(p).map_or(0, |m| m.len())))
                .collect();
            let skipped: Vec<&Path> = listed[bad.unwrap_or(0)..]
                .iter()
                .map(|(_, p)| p.as_path())
                .collect();
            let (links, reader) = read_before(dir, &skipped).context(|| {
                format!(
                    "read the segments of {} before {}",
                    dir.display(),
                    path.display()
                )
            })?;
            Ok(Log {
                reader,
                segments,
                damage: Some(DamageJson::new(&path, offset, &reason)),
                _links: Some(links),
            })
        }
        Err(OpenError::Other(e)) => Err(e),
    }
}

/// A reader of `dir` without the segment files `skipped` (the one no reader can open and
/// those after it): of a new directory holding a link to every other file of `dir`. No reader
/// reads a subset of a directory's segments; this way a point-in-time view of the rest needs
/// no copy. The directory goes with the returned handle.
fn read_before(dir: &Path, skipped: &[&Path]) -> Result<(tempfile::TempDir, LogReader), String> {
    let links = tempfile::tempdir().map_err(|e| format!("make a directory: {e}"))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    let entries = std::fs::read_dir(&dir).map_err(|e| e.to_string())?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        if skipped
            .iter()
            .any(|s| s.file_name() == Some(&entry.file_name()))
        {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), links.path().join(entry.file_name()))
            .map_err(|e| format!("link {}: {e}", entry.path().display()))?;
    }
    let reader =
        LogReader::open_with(links.path(), RecoveryMode::PointInTime).map_err(|e| e.to_string())?;
    Ok((links, reader))
}

/// Adds to the log's damage what the engine's open would do about it, which the reader does
/// not tell: cut it off as a torn tail, or refuse the log (damage before the tail, or durable
/// history lost: valid frames past it, or a clean-close mark naming a later batch; a loss
/// where the frames just end is damage the reader did not see, and so is a torn write's
/// remains after the last frame, which the open cuts off). Not asked of a log an engine
/// has open: a frame of its last segment may be mid-write with whole ones after it.
/// Returns whether an engine has it open.
fn judge(dir: &Path, damage: &mut Option<DamageJson>) -> Result<bool, CliError> {
    if history::in_use(dir) {
        return Ok(true);
    }
    match history::engine_open(dir)? {
        Verdict::Opens(cut) => match (damage.as_mut(), cut) {
            (Some(d), _) => d.engine_refuses = Some(false),
            // A tail the reader did not see: bytes after the last frame that are not the
            // zeros (the remains of a torn write), which a reader does not look at, as an
            // engine may be writing there. The engine's open cuts them off (as `verify`
            // says). An engine that opened the log meanwhile may have been writing them.
            (None, Some(_)) if history::in_use(dir) => return Ok(true),
            (None, Some(cut)) => {
                let mut d = DamageJson::new(&cut.path, cut.offset, &cut.reason);
                d.engine_refuses = Some(false);
                *damage = Some(d);
            }
            (None, None) => {}
        },
        Verdict::Refuses(Refused::Segment(..)) => {
            if let Some(d) = damage {
                d.engine_refuses = Some(true);
            }
        }
        // An engine that opened the log meanwhile may have been writing what was read.
        Verdict::Refuses(Refused::Lost(_)) if history::in_use(dir) => return Ok(true),
        // Its reason names the evidence, which the reader's does not.
        Verdict::Refuses(Refused::Lost(l)) => {
            let mut d = DamageJson::new(&l.path, l.offset, &l.reason);
            d.engine_refuses = Some(true);
            d.lost_batches = Some([l.first_lost, l.last_lost]);
            *damage = Some(d);
        }
        // The check stopped at the clean-close mark or the ids file, before the segments:
        // that is what the engine refuses, reported unless the segments' own damage is.
        Verdict::Refuses(Refused::SideFile(path, offset, reason)) => match damage {
            Some(d) => d.engine_refuses = Some(true),
            None => {
                let mut d = DamageJson::new(&path, offset, &reason);
                d.engine_refuses = Some(true);
                *damage = Some(d);
            }
        },
    }
    Ok(false)
}

/// A path's file name (the whole path if it has none).
fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What one pass over the log gathers: the report (as the JSON prints it) and what the text
/// needs besides. `'a`: the reader's mappings, which the keys in `newest` lie in.
struct Scan<'a> {
    report: InspectJson,
    /// Smallest and largest key (the JSON's `key_min` and `key_max`, before hex).
    key_min: Option<Vec<u8>>,
    key_max: Option<Vec<u8>>,
    /// Records and coalesced writes of each batch but the compaction batches, in log order.
    per_batch_records: Vec<u64>,
    per_batch_coalesced: Vec<u64>,
    /// Per key, its newest record so far: segment row, record bytes, a put. Keyed by the key
    /// as it lies in the log's mapping, which the reader keeps for the whole pass: it copied
    /// every key, so the live keys' bytes were held again on the heap (313 bytes per 256-byte
    /// key where a slot is 32). A lookup of a key seen before compares with its bytes in the
    /// segment it was first seen in, as the engine's index does for keys over 22 bytes.
    newest: std::collections::HashMap<&'a [u8], Newest>,
    /// The row of the last batch's segment: a batch's row is at or after it.
    row: usize,
    /// Segment rows compared with a batch's segment so far (for a test).
    rows_compared: u64,
}

/// What the records of one batch hold.
struct BatchKeys<'a> {
    puts: u64,
    deletes: u64,
    /// First and last key in log order.
    first: Option<&'a [u8]>,
    last: Option<&'a [u8]>,
}

/// Where a key's newest record so far lies.
#[derive(Clone, Copy)]
struct Newest {
    /// Its record's bytes.
    len: u64,
    /// Its segment's row.
    row: u32,
    put: bool,
}

impl<'a> Scan<'a> {
    /// Every segment of `log` with no batches yet, and its damage (taken).
    fn new(log: &mut Log, dir: &Path) -> Scan<'a> {
        let segments: Vec<SegmentJson> = log
            .segments
            .iter()
            .map(|&(ref path, size)| SegmentJson {
                file: file_name(path),
                size,
                batches: 0,
                // A file too short for a header has none.
                used_bytes: logdir::SEGMENT_HEADER_LEN.min(size),
                first_seq: None,
                last_seq: None,
                recycled: logdir::is_recycled(path),
                live_bytes: 0,
                live_ratio: None,
                compaction_batches: 0,
            })
            .collect();
        let report = InspectJson {
            dir: dir.display().to_string(),
            segments,
            batches: 0,
            sorted_batches: 0,
            first_seq: None,
            last_seq: None,
            next_seq: log.reader.next_seq().get(),
            records: 0,
            puts: 0,
            deletes: 0,
            ops_acknowledged: 0,
            coalesced: 0,
            compaction_batches: 0,
            compaction_records: 0,
            frame_bytes: 0,
            key_bytes: 0,
            value_bytes: 0,
            key_min: None,
            key_max: None,
            damage: log.damage.take(),
            in_use: false,
            consumers: Vec::new(),
            consumer_damage: None,
            batch_list: Vec::new(),
        };
        Scan {
            report,
            key_min: None,
            key_max: None,
            per_batch_records: Vec::new(),
            per_batch_coalesced: Vec::new(),
            newest: Default::default(),
            row: 0,
            rows_compared: 0,
        }
    }

    /// Bytes the table of newest records holds (its slots; it owns no key). For a test.
    #[cfg(test)]
    fn newest_bytes(&self) -> usize {
        self.newest.capacity() * std::mem::size_of::<(&[u8], Newest)>()
    }

    /// The scan without its table of newest records, which borrows the reader's mappings:
    /// what the report needs once [`Scan::finish`] has counted the live bytes.
    fn detach(self) -> Scan<'static> {
        Scan {
            report: self.report,
            key_min: self.key_min,
            key_max: self.key_max,
            per_batch_records: self.per_batch_records,
            per_batch_coalesced: self.per_batch_coalesced,
            newest: Default::default(),
            row: self.row,
            rows_compared: self.rows_compared,
        }
    }

    /// Once every batch is counted: each segment's live bytes and ratio.
    fn finish(&mut self) {
        let segs = &mut self.report.segments;
        for n in self.newest.values() {
            if let Some(seg) = segs.get_mut(n.row as usize).filter(|_| n.put) {
                seg.live_bytes += n.len;
            }
        }
        for s in segs.iter_mut() {
            let framed = s.used_bytes.saturating_sub(logdir::SEGMENT_HEADER_LEN);
            s.live_ratio = (framed > 0).then(|| s.live_bytes as f64 / framed as f64);
        }
    }

    /// Counts one batch: into the totals, its segment's row and, while the list holds fewer
    /// than `limit`, the batch list.
    fn add(&mut self, b: &Batch<'a>, limit: usize) {
        let seg_name = file_name(b.segment());
        let at = self.row_of(&seg_name);
        let keys = self.add_records(b, at);
        let records = b.len() as u64;
        let coalesced = u64::from(b.ops_acknowledged()).saturating_sub(records);
        let r = &mut self.report;
        r.batches += 1;
        r.sorted_batches += u64::from(b.is_sorted());
        r.first_seq.get_or_insert(b.seq().get());
        r.last_seq = Some(b.seq().get());
        r.records += records;
        r.puts += keys.puts;
        r.deletes += keys.deletes;
        r.ops_acknowledged += u64::from(b.ops_acknowledged());
        r.coalesced += coalesced;
        r.frame_bytes += b.frame_len() as u64;
        let compaction = b.is_compaction();
        if compaction {
            r.compaction_batches += 1;
            r.compaction_records += records;
        } else {
            // Compaction batches would read as huge windows that coalesced nothing.
            self.per_batch_records.push(records);
            self.per_batch_coalesced.push(coalesced);
        }
        if let Some(seg) = at.map(|i| &mut r.segments[i]) {
            seg.batches += 1;
            seg.compaction_batches += u64::from(compaction);
            seg.used_bytes = b.offset() + b.frame_len() as u64;
            seg.first_seq.get_or_insert(b.seq().get());
            seg.last_seq = Some(b.seq().get());
        }
        if r.batch_list.len() < limit {
            r.batch_list.push(BatchJson {
                seq: b.seq().get(),
                segment: seg_name,
                offset: b.offset(),
                frame_bytes: b.frame_len(),
                records: b.len(),
                puts: keys.puts,
                deletes: keys.deletes,
                ops_acknowledged: b.ops_acknowledged(),
                coalesced,
                sorted: b.is_sorted(),
                compaction,
                first_key: keys.first.map(<[u8]>::to_vec),
                last_key: keys.last.map(<[u8]>::to_vec),
            });
        }
    }

    /// The row of segment `name`. Batches come in log order, as the rows do: the row is at
    /// or after the last batch's, so each row is passed once over the whole log, not
    /// searched for each batch. A name before it (never, from a reader) is searched for.
    fn row_of(&mut self, name: &str) -> Option<usize> {
        let segs = &self.report.segments;
        let compared = &mut self.rows_compared;
        let mut is = |i: &usize| {
            *compared += 1;
            segs[*i].file == name
        };
        let found = (self.row..segs.len())
            .find(&mut is)
            .or_else(|| (0..self.row).find(&mut is));
        if let Some(i) = found {
            self.row = i;
        }
        found
    }

    /// Counts the records of `b` into the key and value bytes and the key range.
    /// `at`: the batch's segment row.
    fn add_records(&mut self, b: &Batch<'a>, at: Option<usize>) -> BatchKeys<'a> {
        let mut keys = BatchKeys {
            puts: 0,
            deletes: 0,
            first: None,
            last: None,
        };
        let r = &mut self.report;
        for rec in b.records() {
            match rec.op {
                RecordOp::Put => keys.puts += 1,
                RecordOp::Delete => keys.deletes += 1,
            }
            r.key_bytes += rec.key.len() as u64;
            r.value_bytes += rec.value.len() as u64;
            if let Some(at) = at {
                // A record: a 7-byte header, the key, the value (docs/FORMAT.md).
                let len = 7 + (rec.key.len() + rec.value.len()) as u64;
                let newest = Newest {
                    len,
                    // Rows are segment files: a log of 2^32 of them is not opened.
                    row: u32::try_from(at).unwrap_or(u32::MAX),
                    put: rec.op == RecordOp::Put,
                };
                self.newest.insert(rec.key, newest);
            }
            keys.first.get_or_insert(rec.key);
            keys.last = Some(rec.key);
            if self.key_min.as_deref().is_none_or(|m| rec.key < m) {
                self.key_min = Some(rec.key.to_vec());
            }
            if self.key_max.as_deref().is_none_or(|m| rec.key > m) {
                self.key_max = Some(rec.key.to_vec());
            }
        }
        keys
    }
}

/// The report for people: the segments, the totals, the key range and damage, and the
/// batch list.
fn text(dir: &Path, mut scan: Scan<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "log: {}", dir.display());
    let _ = writeln!(out, "segments: {}", scan.report.segments.len());
    out.push_str(&indent(&segment_table(&scan.report.segments)));
    scan.per_batch_records.sort_unstable();
    scan.per_batch_coalesced.sort_unstable();
    out.push_str(&totals(&scan));
    out.push_str(&keys_and_damage(&scan));
    if scan.report.in_use {
        out.push_str(
            "note: the log is open in another process: its last segment is being written, \
             read as a reader would (up to its last whole frame; where its frames stop is not \
             judged)\n",
        );
    }
    out.push_str(&consumer_table(
        &scan.report.consumers,
        scan.report.consumer_damage.as_ref(),
    ));
    out.push_str(&batch_table(&scan.report));
    out
}

/// The durable consumers with their lag, and the request ids each has not processed (the
/// first `limit`, oldest first); or none and the damaged file that kept them from being read.
fn consumers(
    reader: &LogReader,
    dir: &Path,
    limit: usize,
) -> Result<(Vec<ConsumerJson>, Option<DamageJson>), CliError> {
    match read_consumers(reader, limit) {
        Ok(consumers) => Ok((consumers, None)),
        Err(mergelog::Error::Corrupt {
            path,
            offset,
            reason,
        }) => Ok((Vec::new(), Some(DamageJson::new(&path, offset, &reason)))),
        Err(e) => Err(CliError::new(format!(
            "read the consumers of {}: {e}",
            dir.display()
        ))),
    }
}

fn read_consumers(reader: &LogReader, limit: usize) -> mergelog::Result<Vec<ConsumerJson>> {
    let now = std::time::SystemTime::now();
    let age = |t: Option<std::time::SystemTime>| {
        t.map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64())
    };
    let mut out = Vec::new();
    for c in reader.consumers()? {
        // Behind a retirement its report would leave the retired batches' ids out.
        let pending = match reader.pending_ids(&c.name) {
            Err(mergelog::Error::Retired { .. }) => None,
            other => Some(other?),
        };
        out.push(ConsumerJson {
            committed: c.committed.get(),
            lag_batches: c.lag_batches,
            lag_bytes: c.lag_bytes,
            lag_age_s: c.lag_age.map(|d| d.as_secs_f64()),
            retired_unread: c.retired_unread,
            pending_id_count: pending.as_ref().map(Vec::len),
            pending_ids: pending
                .unwrap_or_default()
                .iter()
                .take(limit)
                .map(|p| PendingJson {
                    id: p.id.to_string(),
                    seq: p.seq.get(),
                    age_s: age(p.commit_time),
                })
                .collect(),
            name: c.name,
        });
    }
    Ok(out)
}

/// The durable consumers and their lag (one line when there are none, or when a damaged file
/// kept them from being read), and the oldest request ids each has not processed.
fn consumer_table(consumers: &[ConsumerJson], damage: Option<&DamageJson>) -> String {
    if let Some(d) = damage {
        return format!(
            "consumers: not read: damage: {} at offset {}: {}\n",
            d.file, d.offset, d.reason
        );
    }
    if consumers.is_empty() {
        return "consumers: none\n".into();
    }
    let secs = |s: Option<f64>| s.map_or_else(|| "-".into(), |s| format!("{s:.3} s"));
    let rows: Vec<Vec<String>> = consumers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.committed.to_string(),
                thousands(c.lag_batches),
                thousands(c.lag_bytes),
                secs(c.lag_age_s),
                c.pending_id_count
                    .map_or_else(|| "-".into(), |n| thousands(n as u64)),
            ]
        })
        .collect();
    let header = [
        "name",
        "committed",
        "lag batches",
        "lag bytes",
        "lag age",
        "pending ids",
    ];
    let table = crate::table::table(&header, &rows);
    let mut out = format!("consumers: {}\n{}", consumers.len(), indent(&table));
    for c in consumers.iter().filter(|c| c.retired_unread > 0) {
        let _ = writeln!(
            out,
            "{} is behind a retirement: batches {} to {} were retired before it committed \
             them; its next read fails (Error::Retired), and its pending ids are not known: \
             remove it and make it again",
            c.name,
            c.committed + 1,
            c.committed + c.retired_unread,
        );
    }
    for c in consumers.iter().filter(|c| !c.pending_ids.is_empty()) {
        let shown = c.pending_ids.len();
        let _ = writeln!(
            out,
            "accepted but not processed by {} (oldest {shown} of {}):",
            c.name,
            c.pending_id_count.unwrap_or(shown)
        );
        let rows: Vec<Vec<String>> = c
            .pending_ids
            .iter()
            .map(|p| vec![p.id.clone(), p.seq.to_string(), secs(p.age_s)])
            .collect();
        out.push_str(&indent(&crate::table::table(
            &["request id", "batch", "age"],
            &rows,
        )));
    }
    out
}

/// One row per segment file.
fn segment_table(segments: &[SegmentJson]) -> String {
    let rows: Vec<Vec<String>> = segments
        .iter()
        .map(|s| {
            vec![
                s.file.clone(),
                thousands(s.size),
                thousands(s.used_bytes),
                thousands(s.batches),
                s.first_seq.map_or("-".into(), |x| x.to_string()),
                s.last_seq.map_or("-".into(), |x| x.to_string()),
                if s.recycled { "yes" } else { "no" }.into(),
                s.live_ratio
                    .map_or("-".into(), |r| format!("{:.1} %", r * 100.0)),
                thousands(s.compaction_batches),
            ]
        })
        .collect();
    crate::table::table(
        &[
            "file",
            "size",
            "used bytes",
            "batches",
            "first seq",
            "last seq",
            "recycled",
            "live",
            "compaction batches",
        ],
        &rows,
    )
}

/// Batches, records, coalescing, batch sizes and bytes; `scan`'s per-batch counts sorted.
fn totals(scan: &Scan<'_>) -> String {
    let r = &scan.report;
    let mut out = String::new();
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            a as f64 * 100.0 / b as f64
        }
    };
    let seqs = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "batches: {}{seqs}, {} sorted; next seq {}",
        thousands(r.batches),
        thousands(r.sorted_batches),
        r.next_seq
    );
    let _ = writeln!(
        out,
        "records: {} ({} puts, {} deletes)",
        thousands(r.records),
        thousands(r.puts),
        thousands(r.deletes)
    );
    let _ = writeln!(
        out,
        "coalescing: {} write operations acknowledged, {} records logged for them, {} \
         coalesced away ({:.1} %)",
        thousands(r.ops_acknowledged),
        thousands(r.records - r.compaction_records),
        thousands(r.coalesced),
        pct(r.coalesced, r.ops_acknowledged)
    );
    if r.compaction_batches > 0 {
        let _ = writeln!(
            out,
            "compaction: {} batches, {} records copied forward (live records of retired \
             segments; no new writes)",
            thousands(r.compaction_batches),
            thousands(r.compaction_records),
        );
    }
    let (records, coalesced) = (&scan.per_batch_records, &scan.per_batch_coalesced);
    let _ = writeln!(
        out,
        "per batch{}: records p50 {} p99 {} max {}; coalesced p50 {} p99 {} max {}",
        if r.compaction_batches > 0 {
            " (but compaction's)"
        } else {
            ""
        },
        percentile(records, 0.5),
        percentile(records, 0.99),
        records.last().copied().unwrap_or(0),
        percentile(coalesced, 0.5),
        percentile(coalesced, 0.99),
        coalesced.last().copied().unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "bytes: {} in frames, {} of keys, {} of values",
        thousands(r.frame_bytes),
        thousands(r.key_bytes),
        thousands(r.value_bytes)
    );
    out
}

/// The key range and the damage that ends the log, if any.
fn keys_and_damage(scan: &Scan<'_>) -> String {
    let mut out = String::new();
    match (&scan.key_min, &scan.key_max) {
        (Some(lo), Some(hi)) => {
            let _ = writeln!(
                out,
                "key range: {} .. {}",
                logdir::show(lo, Encoding::Auto),
                logdir::show(hi, Encoding::Auto)
            );
        }
        _ => out.push_str("key range: - (no records)\n"),
    }
    match &scan.report.damage {
        None => out.push_str("damage: none found\n"),
        Some(d) => {
            // Damage in a file beside the segments (the `ids` file) ends no read.
            let side = d.lost_batches.is_none()
                && Path::new(&d.file).extension().is_none_or(|e| e != "seg");
            let open = match (d.engine_refuses, d.lost_batches) {
                (_, Some([first, last])) => format!(
                    "; durable batches {first}..{last} lost, not a torn tail: the engine refuses \
                     to open the log"
                ),
                (Some(true), None) if side => ": the engine refuses to open the log".into(),
                (Some(true), None) => "; not a torn tail, which is all an open cuts off: the \
                                       engine refuses to open the log"
                    .into(),
                (Some(false), None) => "; a torn tail, which the engine's open cuts off".into(),
                (None, None) => String::new(),
            };
            let read = if side {
                "beside the segments, which are read whole"
            } else {
                "the log is read up to there"
            };
            let _ = writeln!(
                out,
                "damage: {} at offset {}: {} ({read}{open})",
                d.file, d.offset, d.reason
            );
        }
    }
    out
}

/// The listed batches, one row each (nothing when none is listed).
fn batch_table(r: &InspectJson) -> String {
    let mut out = String::new();
    if r.batch_list.is_empty() {
        return out;
    }
    let shown = r.batch_list.len() as u64;
    let _ = writeln!(
        out,
        "\nbatches{}:",
        if shown < r.batches {
            format!(" (first {shown} of {}; --limit 0 for all)", r.batches)
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = r
        .batch_list
        .iter()
        .map(|b| {
            vec![
                b.seq.to_string(),
                b.segment.clone(),
                b.offset.to_string(),
                b.frame_bytes.to_string(),
                b.records.to_string(),
                // A compaction batch acknowledges nothing: its records are copies.
                if b.compaction {
                    "-".into()
                } else {
                    b.ops_acknowledged.to_string()
                },
                if b.compaction {
                    "-".into()
                } else {
                    b.coalesced.to_string()
                },
                if b.sorted { "yes" } else { "no" }.into(),
                if b.compaction { "compaction" } else { "write" }.into(),
                key_range(&b.first_key, &b.last_key),
            ]
        })
        .collect();
    out.push_str(&indent(&crate::table::table(
        &[
            "seq",
            "segment",
            "offset",
            "bytes",
            "records",
            "acked",
            "coalesced",
            "sorted",
            "kind",
            "keys",
        ],
        &rows,
    )));
    out
}

fn key_range(first: &Option<Vec<u8>>, last: &Option<Vec<u8>>) -> String {
    match (first, last) {
        (Some(a), Some(b)) if a == b => logdir::show(a, Encoding::Auto),
        (Some(a), Some(b)) => format!(
            "{} .. {}",
            logdir::show(a, Encoding::Auto),
            logdir::show(b, Encoding::Auto)
        ),
        _ => "-".into(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mergelog::{Config, Engine, WriteBatch};

    /// `inspect` finds each batch's segment row from the last batch's: batches come in log
    /// order. It searched every row for each batch (twice), so a log of B batches in S
    /// segments cost B × S comparisons: a 64 GiB log of 64 MiB segments and 4 KiB frames,
    /// 16 million batches by 1,000 rows, where the log's bytes take a minute to read.
    #[test]
    fn inspect_finds_a_batchs_segment_without_searching_every_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            segment_bytes: 64 << 10,
            batch_bytes_max: 16 << 10,
            ..Config::default()
        };
        let engine = Engine::open(dir.path(), cfg).unwrap();
        let value = vec![b'v'; 1000];
        let mut i = 0u64;
        while engine.segments().len() < 30 {
            let mut batch = WriteBatch::new();
            for _ in 0..4 {
                batch.put(&i.to_be_bytes(), &value);
                i += 1;
            }
            engine.write(&batch).unwrap().wait().unwrap();
        }
        engine.close().unwrap();
        let mut log = open(dir.path()).unwrap();
        let mut scan = Scan::new(&mut log, dir.path());
        let mut batches = 0;
        for b in log.reader.batches() {
            scan.add(&b, 0);
            batches += 1;
        }
        let rows = scan.report.segments.len() as u64;
        assert_eq!(scan.report.batches, batches);
        assert!(
            scan.rows_compared <= batches + rows,
            "{batches} batches in {rows} segments compared {} segment rows: every row for \
             each batch",
            scan.rows_compared
        );
        // Every batch counted in its own segment's row.
        for (row, segment) in scan.report.segments.iter().zip(log.reader.segments()) {
            let n = (log.reader.batches())
                .filter(|b| b.segment() == segment.path)
                .count() as u64;
            assert_eq!(row.batches, n, "{}", row.file);
        }
    }

    /// `inspect` keeps, per key, where its newest record lies, to give each segment's live
    /// bytes: keyed by the key as it lies in the log's mapping (which the reader holds for
    /// the whole pass), not by a copy. It copied every key: the live keys' bytes again on the
    /// heap, twice the engine's index per key for short keys, any multiple for long ones.
    /// Counted: the bytes the table holds (its slots, and the keys it owns), at most 64 per
    /// key (a 32-byte slot, the table at least half full) whatever the keys' length.
    #[test]
    fn inspect_holds_no_copy_of_the_keys() {
        const KEYS: u64 = 3000;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            segment_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            ..Config::default()
        };
        let engine = Engine::open(dir.path(), cfg).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..KEYS {
            let mut key = vec![b'k'; 256];
            key[..8].copy_from_slice(&i.to_be_bytes());
            batch.put(&key, b"v");
            if batch.len() == 100 {
                engine.write(&batch).unwrap().wait().unwrap();
                batch = WriteBatch::new();
            }
        }
        // Half of them again: a later segment holds their newest records.
        for i in (0..KEYS).step_by(2) {
            let mut key = vec![b'k'; 256];
            key[..8].copy_from_slice(&i.to_be_bytes());
            engine.put(&key, b"w").unwrap().wait().unwrap();
        }
        engine.close().unwrap();
        let mut log = open(dir.path()).unwrap();
        let mut scan = Scan::new(&mut log, dir.path());
        for b in log.reader.batches() {
            scan.add(&b, 0);
        }
        let held = scan.newest_bytes() as u64;
        assert!(
            held <= 64 * KEYS,
            "{KEYS} keys of 256 bytes held {held} bytes in the table of newest records \
             ({} per key): a copy of every key",
            held / KEYS
        );
        scan.finish();
        // The live bytes: each key's newest record, one of 7 + 256 + 1 bytes.
        let live: u64 = scan.report.segments.iter().map(|s| s.live_bytes).sum();
        assert_eq!(live, KEYS * (7 + 256 + 1));
    }
}
