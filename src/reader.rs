//! Replay: a read-only view of a log directory that iterates batches in log order, and a
//! follower that yields new batches as they land.
//!
//! A `LogReader` takes no lock, so it can run while an engine (in this or another process)
//! appends to the same directory. It sees a consistent prefix: every frame it yields passed
//! its CRC and the batch-sequence chain, and it stops at the first frame that does not (which,
//! at the tail, may be one the engine is writing right now).

use crate::config::RecoveryMode;
use crate::error::{Error, Result};
use crate::log::format::segment_file_name;
use crate::log::format::{decode_frame, Decoded, Frame, Record, RecordOp, SEGMENT_HEADER_LEN};
use crate::log::io;
use crate::log::recovery::{scan, Access, Damage};
use crate::log::segment::Segment;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One batch frame: its sequence number and its records, borrowed from the log's mapping.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    frame: Frame<'a>,
    segment: &'a Path,
}

impl<'a> Batch<'a> {
    /// Batch sequence number (1 for the first batch of a log, +1 per batch).
    pub fn seq(&self) -> u64 {
        self.frame.batch_seq
    }

    /// True when the records are strictly ascending by key (the engine coalesced them).
    pub fn is_sorted(&self) -> bool {
        self.frame.is_sorted()
    }

    /// Write operations this batch acknowledged, including those coalesced away.
    pub fn ops_acknowledged(&self) -> u32 {
        self.frame.ops_acknowledged
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.frame.record_count as usize
    }

    /// True for a batch without records (never written by the engine).
    pub fn is_empty(&self) -> bool {
        self.frame.record_count == 0
    }

    /// The records in log order (ascending key order when `is_sorted`).
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        self.frame.records()
    }

    /// The segment file holding this batch.
    pub fn segment(&self) -> &'a Path {
        self.segment
    }

    /// Byte offset of the frame in its segment file.
    pub fn offset(&self) -> u64 {
        self.frame.offset
    }

    /// Bytes the frame occupies, header and padding included.
    pub fn frame_len(&self) -> usize {
        self.frame.len
    }

    /// Copies the batch out of the mapping.
    pub fn to_owned(&self) -> OwnedBatch {
        OwnedBatch {
            seq: self.seq(),
            sorted: self.is_sorted(),
            records: self
                .records()
                .map(|r| (r.op, r.key.to_vec(), r.value.to_vec()))
                .collect(),
        }
    }
}

/// A batch copied out of the log (what a follower yields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedBatch {
    /// Batch sequence number.
    pub seq: u64,
    /// Records strictly ascending by key.
    pub sorted: bool,
    /// (op, key, value) in log order; the value is empty for a delete.
    pub records: Vec<(RecordOp, Vec<u8>, Vec<u8>)>,
}

/// A read-only, lock-free view of a log directory as of when it was opened.
pub struct LogReader {
    dir: PathBuf,
    segments: Vec<Arc<Segment>>,
    next_seq: u64,
    end_offset: u64,
    damage: Option<Damage>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl LogReader {
    /// Opens `dir` read-only with the default recovery mode: damage at the tail of the last
    /// segment ends the log (reported by `damage()`); damage before it is an error naming
    /// file and offset.
    pub fn open(dir: impl AsRef<Path>) -> Result<LogReader> {
        LogReader::open_with(dir, RecoveryMode::default())
    }

    /// As `open`, with an explicit recovery mode (`PointInTime` stops at the first damage
    /// anywhere; `AbsoluteConsistency` makes any damage an error).
    pub fn open_with(dir: impl AsRef<Path>, mode: RecoveryMode) -> Result<LogReader> {
        let dir = dir.as_ref().to_owned();
        if !dir.is_dir() {
            return Err(Error::io(
                "open log directory",
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let scanned = scan(&dir, mode, Access::Reader, &io::real(), |_, _, _| Ok(()))?;
        if mode == RecoveryMode::AbsoluteConsistency {
            if let Some(d) = scanned.damage {
                return Err(Error::Corrupt {
                    path: d.path,
                    offset: d.offset,
                    reason: d.reason,
                });
            }
        }
        Ok(LogReader {
            dir,
            segments: scanned.segments,
            next_seq: scanned.next_seq,
            end_offset: scanned.write_off,
            damage: scanned.damage,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Damage that ended the log, if any.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Number of segment files read.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segment files in log order, with their sizes.
    pub fn segment_files(&self) -> Vec<(PathBuf, u64)> {
        self.segments
            .iter()
            .map(|s| (s.path.clone(), s.size))
            .collect()
    }

    /// Sequence number of the first batch after the valid log.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Offset in the last segment file where its valid frames end (the segment header length
    /// for an empty segment).
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    /// Every batch in log order.
    pub fn batches(&self) -> impl Iterator<Item = Batch<'_>> + '_ {
        self.batches_from(0)
    }

    /// Batches with sequence number `>= from`, in log order.
    pub fn batches_from(&self, from: u64) -> impl Iterator<Item = Batch<'_>> + '_ {
        // Skip whole segments that end before `from`: segment i holds [id_i, id_{i+1}).
        let first = self
            .segments
            .iter()
            .rposition(|s| s.id <= from)
            .unwrap_or(0);
        self.segments[first..]
            .iter()
            .flat_map(SegmentFrames::new)
            .filter(move |b| b.seq() >= from)
    }

    /// A follower starting at batch `from`: yields each batch once it is in the log,
    /// waiting for new ones.
    pub fn follow(&self, from: u64) -> Follower {
        Follower::new(self.dir.clone(), from.max(1), None)
    }
}

/// The valid frames of one segment, up to its published end.
struct SegmentFrames<'a> {
    seg: &'a Segment,
    off: u64,
}

impl<'a> SegmentFrames<'a> {
    fn new(seg: &'a Arc<Segment>) -> Self {
        SegmentFrames {
            seg,
            off: SEGMENT_HEADER_LEN as u64,
        }
    }
}

impl<'a> Iterator for SegmentFrames<'a> {
    type Item = Batch<'a>;
    fn next(&mut self) -> Option<Batch<'a>> {
        let bytes = self.seg.published_bytes();
        match decode_frame(bytes, self.off as usize) {
            Ok(Decoded::Frame(frame)) => {
                self.off = frame.end_offset();
                Some(Batch {
                    frame,
                    segment: &self.seg.path,
                })
            }
            _ => None,
        }
    }
}

/// Yields batches as they land, in order, without gaps.
///
/// Built by `LogReader::follow` (any process; a batch is yielded once its frame is complete
/// in the file, which for a `Sync` engine is at most one sync ahead of durability) or by
/// `Engine::follow` (same process; a batch is yielded only once it is durable).
pub struct Follower {
    dir: PathBuf,
    next_seq: u64,
    current: Option<(Arc<Segment>, u64)>,
    /// In-process gate: the engine's last durable batch sequence.
    durable_seq: Option<Arc<AtomicU64>>,
    poll: Duration,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Follower {
    pub(crate) fn new(dir: PathBuf, from: u64, durable_seq: Option<Arc<AtomicU64>>) -> Follower {
        Follower {
            dir,
            next_seq: from,
            current: None,
            durable_seq,
            poll: Duration::from_micros(200),
        }
    }

    /// Sequence number of the next batch this follower yields.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Finds the segment holding `next_seq` and the frame offset to start from.
    fn locate(&mut self) -> Result<bool> {
        let files = crate::log::recovery::list_segments(&self.dir)?;
        let Some(idx) = files.iter().rposition(|(id, _)| *id <= self.next_seq) else {
            return Ok(false);
        };
        let (id, path) = &files[idx];
        let seg = Arc::new(Segment::open(path, *id, false, &io::real())?);
        let mut off = SEGMENT_HEADER_LEN as u64;
        // Walk to the frame with `next_seq`.
        loop {
            match decode_frame(seg.image(), off as usize) {
                Ok(Decoded::Frame(f)) if f.batch_seq < self.next_seq => off = f.end_offset(),
                _ => break,
            }
        }
        self.current = Some((seg, off));
        Ok(true)
    }

    /// The next batch if it has landed, without waiting.
    pub fn try_next(&mut self) -> Result<Option<OwnedBatch>> {
        if let Some(gate) = &self.durable_seq {
            if gate.load(Ordering::Acquire) < self.next_seq {
                return Ok(None);
            }
        }
        if self.current.is_none() && !self.locate()? {
            return Ok(None);
        }
        let (seg, off) = self.current.as_ref().expect("located");
        match decode_frame(seg.image(), *off as usize) {
            Ok(Decoded::Frame(f)) if f.batch_seq == self.next_seq => {
                let batch = Batch {
                    frame: f,
                    segment: &seg.path,
                }
                .to_owned();
                let end = f.end_offset();
                self.current.as_mut().expect("located").1 = end;
                self.next_seq += 1;
                Ok(Some(batch))
            }
            _ => {
                // Not here (yet): the batch may be in a newer segment after a roll.
                let next_name = self.dir.join(segment_file_name(self.next_seq));
                if next_name.exists() && seg.id != self.next_seq {
                    self.current = None;
                    return self.try_next();
                }
                Ok(None)
            }
        }
    }

    /// Waits for the next batch, up to `timeout`; `Ok(None)` if none landed in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<OwnedBatch>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.try_next()? {
                return Ok(Some(b));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(self.poll.min(deadline - now));
        }
    }
}

impl Iterator for Follower {
    type Item = Result<OwnedBatch>;
    /// Blocks until the next batch lands; never returns `None`.
    fn next(&mut self) -> Option<Result<OwnedBatch>> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(b)) => return Some(Ok(b)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
