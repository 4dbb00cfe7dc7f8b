//! Compaction: bounded disk for a log used as the store (`Engine::compact`, and
//! `Compaction::Auto`'s background thread), in the manner of Bitcask's merge.
//!
//! `retire_before` bounds the log by forgetting what the retired segments held: right under
//! a checkpoint, wrong when the engine's index is the store. Compaction keeps it: for a
//! prefix of complete segments, every record that is still the newest of its key is copied
//! to the head of the log, then the prefix is retired.
//!
//! The steps, and why each is safe (docs/FORMAT.md, "Compaction"):
//!
//! 1. The compacting thread (the caller of `Engine::compact`, or `mergelog-compactor`)
//!    scans the prefix off the write path and gathers the records the index points at into
//!    chunks of at most [`CHUNK_BYTES`], sorted by key. The index is only a first filter
//!    here: a window in flight may have written a key since.
//! 2. It hands a chunk to the flusher, the only writer ([`CompactSlot`]). Between two
//!    windows the flusher keeps the records that are still their key's newest: no window
//!    the scan's lookup could not see wrote the key since ([`InFlightKeys`]: while a
//!    compaction runs the flusher keeps the sorted keys of each window until it is durable
//!    and the scan of every chunk not yet checked began after that; see [`Seen`]). The
//!    windows written before the compaction began must be durable before the first chunk is
//!    checked (the one wait of a compaction); a chunk scanned before they all were, or
//!    after a `retire_before` forgot keys, is checked against the index again. It writes them as one
//!    compaction batch (`FLAG_COMPACTION`: no new event, 0 operations acknowledged) and hands
//!    it to the syncer with the next window, one sync for both (`Flusher::hold`; alone if no
//!    window follows in the same turn). Every later window comes after it in the log, so a
//!    copy is never older in the log than a write of its key, and replay, which applies
//!    batches in order, ends at the same values.
//! 3. Once the last chunk is durable (frames become durable in log order; with `NoSync`,
//!    once the compacting thread has synced the segments kept: [`sync_unsynced_log`]), the
//!    prefix is retired (`Engine::retire_before`'s
//!    path: oldest first, the directory synced after each removal, request ids carried).
//!    Tombstones are not copied: a delete in the prefix only hides older puts, which are all in the
//!    prefix too, and removal oldest first never leaves a put without the delete after it.
//!
//! A crash between any two steps leaves a log that replays to the same state: copies whose
//! originals are still there (harmless duplicates), or a shorter suffix.

use crate::config::Durability;
use crate::engine::retire_prefix;
use crate::error::{Error, Result};
use crate::index::{frame_updates, Index, Loc};
use crate::log::format::{
    decode_frame, record_len, Decoded, FrameWriter, RecordOp, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::log::segment::Segment;
use crate::pipeline::{failed, Inner};
use crate::seq::Seq;
use crate::stats::Counters;
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// When the engine compacts its log (`Config::compaction`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Compaction {
    /// Never: `Engine::compact` returns `Error::CompactionOff`. For an event log whose
    /// replay must keep every event (bound it with `retire_before` under a snapshot).
    Off,
    /// Only when `Engine::compact` is called (the default).
    #[default]
    OnDemand,
    /// As `OnDemand`, and on a background thread whenever the policy says so. The index
    /// then also keeps a bit per 7 bytes of each segment holding a live record (about 1/56
    /// of the log in memory), so the scans read one bit per record instead of probing.
    Auto(AutoCompaction),
}

/// When `Compaction::Auto` compacts: once the log holds at least `min_log_bytes` of frames
/// and its live records take less than `live_ratio` of them, or (if set) once its frames
/// exceed `max_log_bytes` whatever the ratio (`max_log_bytes` at least `min_log_bytes`); and
/// only if a segment has been completed since the last compaction ended (the one being
/// written is never compacted, and those a compaction's own copies completed do not count).
/// For the ratio, it
/// compacts the oldest complete segments, as many as bring the live ratio a little past
/// `live_ratio` (an eighth of the way to 1): the oldest hold the least that is live, so each
/// byte freed costs the fewest copies; past `max_log_bytes`, every complete segment. Looked
/// at whenever the log completes a segment, and every `check_every`.
///
/// What it bounds (docs/FORMAT.md, "Compaction"): with live bytes `L` and segments of `S`
/// bytes, the frames on disk stay below about `L / live_ratio + 2 S` plus what is written
/// during one compaction, and a compaction copies at most `L`. A run keeps the files it
/// retires that the log will fill before the next run can retire any (its room below the
/// trigger and the next run's copies, estimated by its own, plus the files the pool lacked
/// since the last run, given back one a run once unused), so that a compacting log
/// seldom writes a new segment full of zeros; `close` deletes them beyond
/// `Config::recycle_segments`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoCompaction {
    /// Compact when live bytes / log bytes falls below this (between 0 and 1 exclusive;
    /// default 0.5: the frames at most about twice the live data, and the files about three
    /// segments more; 0.6 with segments of at most a tenth of the live data keeps the files
    /// within twice it, at more copying: README, "Compaction").
    pub live_ratio: f64,
    /// Never compact a log smaller than this (bytes of frames; default 0). At most
    /// `max_log_bytes`, if that is set (`open` refuses it otherwise).
    pub min_log_bytes: u64,
    /// Also compact once the frames exceed this many bytes, whatever the live ratio (default
    /// `None`). Each such run copies every live record of the complete segments, so with
    /// more live data than this it runs after every segment the writers complete: set it well
    /// above the live data.
    pub max_log_bytes: Option<u64>,
    /// How often the background thread looks besides whenever the log completes a segment
    /// (the only time the answer can change much; default 100 ms). When the disk fills
    /// (writes refused with `Error::NoSpace`), the thread also compacts every complete
    /// segment once per spell of refusals, whatever the ratio, to make room for `resume`
    /// (see `Config::reserve_segment`).
    pub check_every: Duration,
}

impl Default for AutoCompaction {
    fn default() -> Self {
        AutoCompaction {
            live_ratio: 0.5,
            min_log_bytes: 0,
            max_log_bytes: None,
            check_every: Duration::from_millis(100),
        }
    }
}

impl Compaction {
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if let Compaction::Auto(a) = self {
            if !(a.live_ratio > 0.0 && a.live_ratio < 1.0) {
                return Err(format!(
                    "compaction live_ratio = {} must be between 0 and 1 (exclusive)",
                    a.live_ratio
                ));
            }
            if a.check_every.is_zero() {
                return Err("compaction check_every must not be zero".into());
            }
            // "Never below min_log_bytes" and "always above max_log_bytes" cannot both hold
            // for a log between the two: refused rather than one of them silently ignored.
            if let Some(max) = a.max_log_bytes.filter(|&max| max < a.min_log_bytes) {
                return Err(format!(
                    "compaction max_log_bytes = {max} is below min_log_bytes = {}: a log \
                     between the two would have to be compacted and left alone",
                    a.min_log_bytes
                ));
            }
        }
        Ok(())
    }
}

/// What one compaction did ([`Engine::compact`](crate::Engine::compact)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Segment files retired once their live records were copied forward.
    pub segments: usize,
    /// Their total size in bytes.
    pub bytes_retired: u64,
    /// Live records copied to the head of the log.
    pub records_copied: u64,
    /// Compaction batches written.
    pub batches: u64,
    /// Bytes of those batches (frames, with headers and padding).
    pub bytes_written: u64,
    /// Sequence number of the first batch the log now holds.
    pub first_seq: Seq,
    /// The durable consumer that held it back, with its committed batch: compaction only
    /// takes segments every consumer has passed, as `retire_before` does.
    pub held_back_by: Option<crate::ConsumerPosition>,
}

/// The most bytes of records one compaction batch copies (more if a single record is
/// larger): the flusher writes it between two windows, so it holds the next window back for
/// about the time it takes to copy this many bytes, and it adds this many to one sync.
pub(crate) const CHUNK_BYTES: usize = 256 << 10;

/// Records copied forward in one compaction batch: their keys and values, back to back,
/// and where each was (the index must still point there when the batch is written).
pub(crate) struct Chunk {
    data: Vec<u8>,
    records: Vec<ChunkRecord>,
    /// Bytes of the records in a frame body.
    body_len: usize,
    /// What the lookup that found the first record could see (the later ones saw more).
    seen: Option<Seen>,
    reply: Sender<Result<Copied>>,
}

/// What an index lookup of the compacting thread's scan could see, read just before it:
/// every window ending at or before `durable` (the durable watermark, a ring position) was
/// queued in the index before the watermark passed it, so the lookup saw its writes; and
/// every `Index::forget_below` counted in `forgets`. A key the lookup found in the prefix
/// stays its newest unless a later window writes it, which the flusher's [`InFlightKeys`]
/// then holds, or a `retire_before` forgets it, which moves `forgets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub durable: u64,
    pub forgets: u64,
}

impl Seen {
    fn now(inner: &Inner) -> Seen {
        // The count first: a forgetting after it moves it, one before it is in the lookup.
        let forgets = inner.index.forgets();
        Seen {
            durable: inner.completion.durable(),
            forgets,
        }
    }
}

#[derive(Clone, Copy)]
struct ChunkRecord {
    at: usize,
    key_len: usize,
    value_len: usize,
    src: Loc,
    /// The key's first 8 bytes, big-endian, zero-padded: two records compare by it first
    /// and by their keys only if it ties (a zero pad sorts below every byte, as a key that
    /// is a prefix of another sorts before it). Sorting a chunk compared keys through a
    /// `memcmp` call each: 3-4 % of the CPU at 4 x 256 with compaction running.
    prefix: u64,
}

/// [`ChunkRecord::prefix`] of `key`.
fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// What the flusher wrote for one chunk: written, not yet durable (the syncer makes it so,
/// as it does a window's frame).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Copied {
    pub records: u64,
    pub bytes: u64,
    /// The batch written; if nothing was left to copy, the last batch written before the
    /// chunk was checked. Either way the retirement waits for it to be durable: every
    /// window whose write of a key dropped that key's copy is at or before it.
    pub seq: u64,
}

impl Chunk {
    fn new(reply: Sender<Result<Copied>>) -> Chunk {
        Chunk {
            data: Vec::new(),
            records: Vec::new(),
            body_len: 0,
            seen: None,
            reply,
        }
    }

    fn push(&mut self, key: &[u8], value: &[u8], src: Loc, seen: Seen) {
        // Lookups come in order: the first record's saw the least.
        self.seen.get_or_insert(seen);
        self.records.push(ChunkRecord {
            at: self.data.len(),
            key_len: key.len(),
            value_len: value.len(),
            src,
            prefix: key_prefix(key),
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        self.body_len += record_len(key.len(), value.len());
    }

    fn key(&self, r: &ChunkRecord) -> &[u8] {
        &self.data[r.at..r.at + r.key_len]
    }

    /// The order of two records' keys.
    fn cmp_keys(&self, a: &ChunkRecord, b: &ChunkRecord) -> std::cmp::Ordering {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| self.key(a).cmp(self.key(b)))
    }

    fn value(&self, r: &ChunkRecord) -> &[u8] {
        let v = r.at + r.key_len;
        &self.data[v..v + r.value_len]
    }

    /// Sorts the records by key, as a sorted frame needs them. They come as a few ascending
    /// runs (each frame's records are sorted), which the stable sort finds and merges.
    fn sort(&mut self) {
        let mut records = std::mem::take(&mut self.records);
        records.sort_by(|a, b| self.cmp_keys(a, b));
        // A key has one newest record, so it is gathered once.
        debug_assert!(records
            .windows(2)
            .all(|w| self.key(&w[0]) != self.key(&w[1])));
        self.records = records;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Keeps the records that are still their key's newest: no window tracked in
    /// `in_flight` wrote the key (every such window comes after the prefix, so a key it
    /// wrote is never live there; it holds each window until it is durable and every chunk
    /// scanned before then is checked), and the index still points at the record copied.
    /// The scan's lookups established the latter, and it still holds unless a window the
    /// scan could not see and `in_flight` does not hold wrote the key (one ending at or
    /// before `untracked`, written before the tracking began) or `retire_before` forgot it
    /// ([`Seen`]); only then is the index asked again. The caller has made every untracked
    /// window durable and queued in the index (the lookup applies the queue first), so
    /// either way the check is exact.
    pub(crate) fn keep_live(&mut self, index: &Index, in_flight: &InFlightKeys, untracked: u64) {
        // Sorted by the compacting thread (`copy_forward`); the check below relies on it.
        if !self
            .records
            .windows(2)
            .all(|w| self.cmp_keys(&w[0], &w[1]).is_lt())
        {
            self.sort();
        }
        let mut records = std::mem::take(&mut self.records);
        let keys: Vec<&[u8]> = records.iter().map(|r| self.key(r)).collect();
        let written = in_flight.written(&keys);
        let scan_holds = self
            .seen
            .is_some_and(|s| s.durable >= untracked && s.forgets == index.forgets());
        let lookup = (!scan_holds).then(|| index.lookup());
        let mut i = 0;
        records.retain(|r| {
            let keep = !written[i] && lookup.as_ref().is_none_or(|l| l.holds(keys[i], r.src));
            i += 1;
            keep
        });
        drop(lookup);
        drop(keys);
        self.records = records;
        self.body_len = self
            .records
            .iter()
            .map(|r| record_len(r.key_len, r.value_len))
            .sum();
    }

    /// Bytes of the records in a frame body.
    pub(crate) fn body_len(&self) -> usize {
        self.body_len
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Encodes the records as puts into the frame at `frame_off` (body from `body_off`), and
    /// notes where each key and value lands for the index, as a window's frame does.
    pub(crate) fn encode(
        &self,
        w: &mut FrameWriter<'_>,
        body_off: u64,
        updates: &mut Vec<(u64, u32, Option<Loc>)>,
    ) {
        let mut off = body_off;
        for r in &self.records {
            w.push(RecordOp::Put, self.key(r), self.value(r));
            let key_off = off + RECORD_HEADER_LEN as u64;
            let value_off = key_off + r.key_len as u64;
            let loc = Loc {
                seg: 0, // set by the caller once the frame's segment is known
                off: value_off,
                len: r.value_len as u32,
            };
            updates.push((key_off, r.key_len as u32, Some(loc)));
            off += record_len(r.key_len, r.value_len) as u64;
        }
    }

    /// Answers the compacting thread.
    pub(crate) fn reply(self, r: Result<Copied>) {
        let _ = self.reply.send(r);
    }
}

/// Where the compacting thread hands a chunk to the flusher, which looks for one between
/// windows (one relaxed load per window while none is pending).
#[derive(Default)]
pub(crate) struct CompactSlot {
    pending: AtomicBool,
    state: Mutex<SlotState>,
    /// Set while a compaction runs: the flusher notes the keys of the windows it writes
    /// ([`InFlightKeys`]), so that a chunk is checked without draining the pipeline.
    tracking: AtomicBool,
    /// The durable watermark the scan of the chunk being gathered (or the next) saw first
    /// ([`Seen::durable`]): the flusher keeps each tracked window ending past it, durable
    /// or not, until the chunk is checked. Only rises while a compaction runs.
    floor: AtomicU64,
    /// Compactions begun: the flusher starts its tracking afresh for each one (windows it
    /// noted during the last may lie in this one's prefix).
    runs: AtomicU64,
    /// `mergelog-compactor`, if `Compaction::Auto` runs one: woken when a segment completes.
    compactor: OnceLock<Thread>,
    /// Held by the flusher while it checks and writes a chunk, and by a retirement
    /// (`retire_prefix`) from before it looks at [`CompactSlot::last_batch`] until it has
    /// forgotten the retired keys. So a chunk is either written before the retirement, which
    /// then waits for its batch to be durable (its copies reach the index before the
    /// forgetting, which keeps the keys they moved), or checked after the forgetting (which
    /// moved `Index::forgets`, so the check asks the index again and drops the forgotten
    /// keys). Without it a key that `retire_before` reported forgotten came back once a copy
    /// checked before the forgetting became durable, and stayed after a reopen.
    writing: Mutex<()>,
    /// The batch sequence of the last compaction batch written (0 if none yet).
    last_batch: AtomicU64,
    /// The error of the last automatic compaction, if it failed without failing the engine
    /// (no room for the `ids` file, say); cleared when one runs to its end
    /// ([`Engine::compaction_error`](crate::Engine::compaction_error)).
    auto_error: Mutex<Option<Error>>,
    /// Looks of `Compaction::Auto`'s thread that found no segment completed since its last
    /// run (tests: [`Engine::auto_compaction_idle_looks`](crate::Engine::auto_compaction_idle_looks)).
    idle_looks: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    chunk: Option<Chunk>,
    /// The flusher has stopped: nothing offered now would ever be written.
    closed: bool,
}

impl CompactSlot {
    /// Offers `chunk` to the flusher; gives it back if the flusher has stopped.
    fn offer(&self, chunk: Chunk) -> std::result::Result<(), Chunk> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(chunk);
        }
        debug_assert!(s.chunk.is_none(), "one compaction at a time");
        s.chunk = Some(chunk);
        self.pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether a compaction runs (the flusher's cheap check per frame).
    pub(crate) fn tracking(&self) -> bool {
        self.tracking.load(Ordering::Acquire)
    }

    /// Which compaction runs (or ran last): [`InFlightKeys::start`]'s `run`.
    pub(crate) fn run(&self) -> u64 {
        self.runs.load(Ordering::Acquire)
    }

    /// The tracked windows the flusher may forget: those ending at or before this (durable,
    /// and seen by every lookup of the chunks still to be checked).
    pub(crate) fn forget_upto(&self, durable: u64) -> u64 {
        durable.min(self.floor.load(Ordering::Acquire))
    }

    /// The log rolled to a new segment: a segment was completed, which the compactor may
    /// now take (it looks at once instead of at its next `check_every`).
    pub(crate) fn segment_completed(&self) {
        self.wake_compactor();
    }

    /// Wakes `Compaction::Auto`'s thread, if there is one, to look at the log now.
    pub(crate) fn wake_compactor(&self) {
        if let Some(t) = self.compactor.get() {
            t.unpark();
        }
    }

    /// Whether a chunk waits (the flusher's cheap check).
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The chunk waiting, if any, with the guard that keeps retirements out while it is
    /// checked and written; `None` while a retirement holds them off (the chunk waits, and the
    /// retirement pokes the flusher when it is done).
    pub(crate) fn take(&self) -> Option<(Chunk, MutexGuard<'_, ()>)> {
        let writing = self.writing.try_lock()?;
        let mut s = self.state.lock();
        self.pending.store(false, Ordering::Relaxed);
        Some((s.chunk.take()?, writing))
    }

    /// The flusher wrote compaction batch `seq` (under the guard [`CompactSlot::take`] gave).
    pub(crate) fn wrote(&self, seq: u64) {
        self.last_batch.fetch_max(seq, Ordering::Release);
    }

    /// For a retirement: keeps chunks from being checked or written until the guard is
    /// dropped, and returns the last compaction batch written before (0 if none), which the
    /// retirement waits for before it forgets keys.
    pub(crate) fn hold_off_writes(&self) -> (MutexGuard<'_, ()>, u64) {
        let writing = self.writing.lock();
        (writing, self.last_batch.load(Ordering::Acquire))
    }

    /// The flusher stops: a chunk waiting is dropped (its sender answers `Closed`), and
    /// later offers are refused.
    pub(crate) fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        s.chunk = None;
        self.pending.store(false, Ordering::Relaxed);
    }
}

/// The keys written by the windows the scan's lookups may not have seen, while a compaction
/// runs (the flusher's): what lets it check a chunk without draining the pipeline first or
/// looking each record up again. A window's keys are kept, sorted, from when its frame is
/// written until it is durable (its updates are then queued in the index) and the lookups
/// of every chunk still to be checked began after that ([`CompactSlot::forget_upto`]).
/// Windows written before the tracking began (up to `from`) are not in it: the flusher
/// waits for them, once per compaction, before it checks the first chunk.
#[derive(Default)]
pub(crate) struct InFlightKeys {
    /// Ring end of the last window not tracked, while tracking.
    from: Option<u64>,
    /// The compaction tracked ([`CompactSlot::run`]).
    run: u64,
    windows: VecDeque<KeysOf>,
    spare: Vec<KeysOf>,
}

/// One window's keys, sorted: back to back in `bytes`, `(offset, length)` in `at`.
#[derive(Default)]
struct KeysOf {
    end: u64,
    bytes: Vec<u8>,
    at: Vec<(u32, u32)>,
}

impl KeysOf {
    fn key(&self, (off, len): (u32, u32)) -> &[u8] {
        &self.bytes[off as usize..(off + len) as usize]
    }

    /// Sets `hit[i]` where this window wrote `keys[i]` (`keys` ascending and distinct, as
    /// this window's keys are): one merge of the two sorted lists.
    fn mark(&self, keys: &[&[u8]], hit: &mut [bool]) {
        let (mut i, mut j) = (0, 0);
        while i < keys.len() && j < self.at.len() {
            match keys[i].cmp(self.key(self.at[j])) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    hit[i] = true;
                    i += 1;
                    j += 1;
                }
            }
        }
    }
}

impl InFlightKeys {
    /// Starts tracking compaction `run` (if not already) with every window up to
    /// `in_flight` untracked; returns the end of the last untracked window. The windows
    /// noted for an earlier run are forgotten: they may lie in this run's prefix, where a
    /// key they wrote is live.
    pub(crate) fn start(&mut self, in_flight: u64, run: u64) -> u64 {
        if self.run != run {
            self.stop();
            self.run = run;
        }
        *self.from.get_or_insert(in_flight)
    }

    /// Whether it tracks.
    pub(crate) fn is_on(&self) -> bool {
        self.from.is_some()
    }

    /// Stops tracking and forgets every window.
    pub(crate) fn stop(&mut self) {
        self.from = None;
        self.forget(u64::MAX);
    }

    /// Notes the keys a window ending at `end` wrote.
    pub(crate) fn note<'k>(&mut self, end: u64, keys: impl Iterator<Item = &'k [u8]>) {
        let mut w = self.spare.pop().unwrap_or_default();
        w.end = end;
        w.bytes.clear();
        w.at.clear();
        for k in keys {
            w.at.push((w.bytes.len() as u32, k.len() as u32));
            w.bytes.extend_from_slice(k);
        }
        // A sorted window's keys come in order already (then this is one pass).
        let mut at = std::mem::take(&mut w.at);
        if !at.windows(2).all(|p| w.key(p[0]) <= w.key(p[1])) {
            at.sort_unstable_by(|&a, &b| w.key(a).cmp(w.key(b)));
        }
        w.at = at;
        self.windows.push_back(w);
    }

    /// Forgets the windows ending at or before `upto` (durable, and seen by the lookups of
    /// every chunk still to be checked: [`CompactSlot::forget_upto`]).
    pub(crate) fn forget(&mut self, upto: u64) {
        while self.windows.front().is_some_and(|w| w.end <= upto) {
            let w = self.windows.pop_front().expect("checked above");
            self.spare.push(w);
        }
    }

    /// For each of `keys` (ascending, distinct), whether a window still tracked wrote it.
    pub(crate) fn written(&self, keys: &[&[u8]]) -> Vec<bool> {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys not sorted");
        let mut hit = vec![false; keys.len()];
        for w in &self.windows {
            w.mark(keys, &mut hit);
        }
        hit
    }

    /// Whether a window still tracked wrote `key`.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.written(&[key])[0]
    }
}

/// Sets [`CompactSlot::tracking`] for one compaction, and clears it however it ends.
struct Tracking<'a>(&'a CompactSlot);

impl<'a> Tracking<'a> {
    fn on(slot: &'a CompactSlot) -> Tracking<'a> {
        // Nothing scanned yet: every tracked window is kept until the first chunk begins.
        slot.floor.store(0, Ordering::Release);
        slot.runs.fetch_add(1, Ordering::AcqRel);
        slot.tracking.store(true, Ordering::Release);
        Tracking(slot)
    }
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        self.0.tracking.store(false, Ordering::Release);
    }
}

/// One compaction, start to end: copies the live records of every complete segment that
/// every durable consumer has passed, then retires those segments. With a `goal` (a live
/// ratio), only the oldest of them: it stops before the next segment once retiring what it
/// has copied would bring the log's live ratio to the goal. `stop` ends it early (between
/// chunks; nothing is retired then). One at a time (`Inner::compact_lock`).
///
/// On a full disk (a chunk's copies got `Error::NoSpace`: no room for a segment, and no
/// reserve left), the segments whose live records are all copied already are retired at
/// once, into the pool, whose files the next segments then reuse, and the compaction starts
/// again on what is left (whose records copied already are no longer live there). It fails
/// with `NoSpace` only when no segment was copied whole.
pub(crate) fn compact(
    inner: &Inner,
    stop: Option<&AtomicBool>,
    goal: Option<f64>,
) -> Result<Compacted> {
    let _one_at_a_time = inner.compact_lock.lock();
    if inner.config.compaction == Compaction::Off {
        return Err(Error::CompactionOff);
    }
    let mut done = Compacted::default();
    // The segments a pass may take: after a restart, only what the first pass took (less
    // what was retired since). The copies are live: taken again, they would be copied
    // again, each pass retiring what the one before it wrote, and a log whose records are
    // mostly live would never be done.
    let mut bound = u64::MAX;
    loop {
        let mut progress = Progress::default();
        match compact_once(inner, stop, goal, bound, &mut done, &mut progress) {
            Err(e @ Error::NoSpace { .. }) if progress.whole > 0 => {
                bound = bound.min(progress.end);
                // Room on a full disk: the segments copied whole go into the pool, all of
                // them (they are the room the next segments take).
                let (last_seq, keep_from) = (progress.last_seq, progress.keep_from);
                if retire_copied(inner, (last_seq, keep_from), || progress.whole, &mut done)? == 0 {
                    return Err(e);
                }
            }
            r => return r.map(|()| done),
        }
    }
}

/// How far a compaction that met a full disk had come: the first `whole` segments of what
/// it took had all their live records copied by chunks written, the last of them batch
/// `last_seq`; `keep_from` is the id of the segment after them. `end` is the id of the
/// first segment it did not take (the end of its prefix).
#[derive(Default)]
struct Progress {
    whole: usize,
    keep_from: u64,
    last_seq: u64,
    end: u64,
}

/// Retires the segments before `keep_from`, whose live records the chunks up to batch
/// `last_seq` copied: once those are durable (synced first if nothing synced them), with
/// `keep()` of their files kept in the pool; adds what it retired to `done`. Returns how many
/// segments it retired.
fn retire_copied(
    inner: &Inner,
    (last_seq, keep_from): (u64, u64),
    keep: impl FnOnce() -> usize,
    done: &mut Compacted,
) -> Result<usize> {
    // The chunks were written, not yet all synced: the retirement waits for the last one
    // (frames become durable in log order).
    wait_durable(inner, last_seq)?;
    sync_unsynced_log(inner, keep_from)?;
    let retired = retire_prefix(inner, keep_from, true, keep())?;
    // Every live record of the segments was copied: retiring them forgets no key (unless a
    // `retire_before` meanwhile took some of them, which forgets them on its own account).
    debug_assert_eq!(retired.keys_forgotten, 0, "compaction lost live keys");
    done.segments += retired.segments;
    done.bytes_retired += retired.bytes;
    done.first_seq = retired.first_seq;
    Counters::add(&inner.counters.compaction_segments, retired.segments as u64);
    Ok(retired.segments)
}

/// [`compact`]'s one pass over the complete segments before segment `bound` (an id),
/// adding to `done`; `progress` says how far it came if it fails.
fn compact_once(
    inner: &Inner,
    stop: Option<&AtomicBool>,
    goal: Option<f64>,
    bound: u64,
    done: &mut Compacted,
    progress: &mut Progress,
) -> Result<()> {
    check_running(inner)?;
    let (limit, held_back_by) = crate::consumer::retire_limit(&inner.dir, u64::MAX)?;
    let (base, prefix, keep_from, held_back_by) = {
        let segs = inner.segments.read();
        let list: Vec<Arc<Segment>> = segs.iter().cloned().collect();
        // A consumer held it back only if it keeps a complete segment (one before the last).
        let last = list.last().map_or(0, |s| s.id);
        let held_back_by = held_back_by.filter(|_| limit < last);
        // Segment i holds batches [id_i, id_{i+1}): whole, durable (a roll drains the
        // pipeline) and passed by every consumer once id_{i+1} <= limit.
        let n = (list.windows(2))
            .take_while(|w| w[1].id <= limit.min(bound))
            .count();
        let keep_from = list.get(n).map(|s| s.id);
        (segs.base(), list[..n].to_vec(), keep_from, held_back_by)
    };
    done.held_back_by = held_back_by;
    let Some(keep_from) = keep_from.filter(|_| !prefix.is_empty()) else {
        done.first_seq = Seq::new(inner.segments.read().iter().next().map_or(1, |s| s.id));
        return Ok(());
    };
    progress.end = keep_from;
    let _tracking = Tracking::on(&inner.compact_slot);
    let (tx, rx) = bounded(1);
    let mut chunk = Chunk::new(tx.clone());
    // A window's frame of `batch_bytes_max` fits a segment (checked at open), and so does
    // any one record the engine logged.
    let chunk_max = CHUNK_BYTES.min(inner.config.batch_bytes_max);
    let mut enough = Enough::new(inner, goal);
    let mut keep_from = keep_from;
    for (i, seg) in prefix.iter().enumerate() {
        if enough.reached() {
            keep_from = seg.id;
            break;
        }
        let idx = base + i as u32;
        scan_segment(seg, idx, inner, |key, value, src, seen| {
            let len = record_len(key.len(), value.len());
            if !chunk.is_empty() && chunk.body_len + len > chunk_max {
                let full = std::mem::replace(&mut chunk, Chunk::new(tx.clone()));
                let seq = copy_forward(inner, full, &rx, stop, done)?;
                progress.last_seq = progress.last_seq.max(seq);
            }
            if chunk.is_empty() {
                // The chunk before was checked: the flusher may forget the windows this
                // record's lookup saw, and must keep the later ones until this is checked.
                inner
                    .compact_slot
                    .floor
                    .store(seen.durable, Ordering::Release);
                // Every segment before this one is in chunks written.
                (progress.whole, progress.keep_from) = (i, seg.id);
            }
            chunk.push(key, value, src, seen);
            enough.copied(len);
            Ok(())
        })?;
        enough.retired(seg.published().saturating_sub(SEGMENT_HEADER_LEN as u64));
    }
    if !chunk.is_empty() {
        let seq = copy_forward(inner, chunk, &rx, stop, done)?;
        progress.last_seq = progress.last_seq.max(seq);
    }
    let copied = done.bytes_written;
    let keep = || match goal {
        Some(_) => files_until_next_run(inner, keep_from, copied),
        // Asked for (or past `max_log_bytes`): the disk shrinks by what was retired.
        None => 0,
    };
    retire_copied(inner, (progress.last_seq, keep_from), keep, done)?;
    Counters::add(&inner.counters.compaction_runs, 1);
    Ok(())
}

/// How many of the files a run of `Compaction::Auto` retires (the segments below
/// `keep_from`) the head will fill before the next run can retire any: the frames it may
/// add until they cross the policy's trigger (`L / live_ratio`, or `max_log_bytes` if
/// lower), and the next run's copies, written before it retires (as many as this run's,
/// `copied` bytes), in segments, rounded up, plus the pool's learned margin
/// (`Pool::keep_for_next_run`; at most `RECYCLE_SEGMENTS_MAX` in all). Kept for reuse
/// instead of deleted, they spare the log a segment of zeros each; the disk then does not dip
/// between runs, and its peak, while a run copies, grows by no more than the estimate's
/// error. `close` gives up what the pool holds beyond `recycle_segments`.
fn files_until_next_run(inner: &Inner, keep_from: u64, copied: u64) -> usize {
    let Compaction::Auto(policy) = inner.config.compaction else {
        return 0;
    };
    let (frames, _) = log_bytes(inner);
    let retiring: u64 = (inner.segments.read().iter())
        .take_while(|s| s.id < keep_from)
        .map(|s| s.published().saturating_sub(SEGMENT_HEADER_LEN as u64))
        .sum();
    let trigger = inner.index.live_bytes() as f64 / policy.live_ratio;
    let trigger = policy
        .max_log_bytes
        .map_or(trigger, |m| trigger.min(m as f64));
    let room = trigger - frames.saturating_sub(retiring) as f64 + copied as f64;
    let segments = (room.max(0.0) / inner.config.segment_bytes as f64).ceil() as usize + 1;
    let keep = inner.pool.keep_for_next_run(segments);
    keep.min(crate::config::RECYCLE_SEGMENTS_MAX)
}

/// With `Durability::NoSync` nothing was synced, not even the compaction batches, while the
/// retirement makes its removals durable: the segments from `keep_from` on are synced over
/// their frames first, so that the copies, and every frame recovery reads before them, are
/// durable before any original goes. Else the originals could have been durable (written
/// under `Sync` by an earlier run, or written back long ago) and a power loss would take
/// the only copies left. With `Sync` every frame is durable already.
fn sync_unsynced_log(inner: &Inner, keep_from: u64) -> Result<()> {
    if inner.config.durability == Durability::Sync {
        return Ok(());
    }
    let kept: Vec<Arc<Segment>> = (inner.segments.read().iter())
        .filter(|s| s.id >= keep_from)
        .cloned()
        .collect();
    for seg in kept {
        let end = seg.published() as usize;
        // The copies' segment may be one a roll activated and nothing synced since: its
        // header and name first (`Segment::finish_activation`).
        let synced = seg
            .finish_activation()
            .and_then(|()| seg.sync(0, end, inner.config.write_path));
        if let Err(e) = synced {
            // As for any failed sync, the pages it covered may never reach the disk and no
            // later sync would say so: the engine fails, and retires nothing more.
            return Err(inner.fail(&e));
        }
    }
    Ok(())
}

/// Whether a compaction with a goal has taken enough of the oldest segments: the log's
/// frames once they are retired (less their frames, plus the copies) hold live records in
/// at least the goal's ratio. Without a goal, never (every complete segment is taken).
struct Enough {
    goal: Option<f64>,
    live: u64,
    /// The log's frames as they will be: now, less the segments taken, plus their copies.
    projected: u64,
}

impl Enough {
    fn new(inner: &Inner, goal: Option<f64>) -> Enough {
        Enough {
            goal,
            live: inner.index.live_bytes(),
            projected: log_bytes(inner).0,
        }
    }

    fn copied(&mut self, record_bytes: usize) {
        self.projected += record_bytes as u64;
    }

    /// A segment of `frames` bytes of frames is taken (it will be retired).
    fn retired(&mut self, frames: u64) {
        self.projected = self.projected.saturating_sub(frames);
    }

    fn reached(&self) -> bool {
        self.goal
            .is_some_and(|g| self.live as f64 >= g * self.projected as f64)
    }
}

/// `Error::Failed` once the engine failed, `Error::Closed` once it is closing; else `Ok`.
pub(crate) fn check_running(inner: &Inner) -> Result<()> {
    if let Some(e) = inner.completion.failure() {
        return Err(failed(e));
    }
    if inner.ring.is_closed() {
        return Err(Error::Closed);
    }
    Ok(())
}

/// Calls `f(key, value, location, seen)` for every put record of `seg` (index `idx` in the
/// log) that the index says is its key's newest, `seen` saying what that lookup saw.
fn scan_segment(
    seg: &Segment,
    idx: u32,
    inner: &Inner,
    mut f: impl FnMut(&[u8], &[u8], Loc, Seen) -> Result<()>,
) -> Result<()> {
    let image = seg.published_bytes();
    let mut off = SEGMENT_HEADER_LEN;
    let mut live: Vec<(&[u8], Loc)> = Vec::new();
    loop {
        let frame = match decode_frame(image, off) {
            Ok(Decoded::Frame(frame)) => frame,
            Ok(Decoded::End) => return Ok(()),
            // The engine verified or wrote every byte below `published`: damage here came
            // later (the disk, or another process writing the file).
            Err(e) => {
                return Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: e.offset,
                    reason: format!("found while compacting: {}", e.kind),
                })
            }
        };
        off = frame.offset as usize + frame.len;
        // One lookup of the index per frame, released before `f` runs: `f` may wait for the
        // flusher, which may need the index's write lock to apply a batch.
        live.clear();
        let seen = Seen::now(inner);
        let lookup = inner.index.lookup();
        live.extend(
            frame_updates(idx, seg, &frame)
                .filter_map(|(key, loc)| Some((key, loc?)))
                .filter(|&(key, loc)| lookup.holds(key, loc)),
        );
        drop(lookup);
        for &(key, loc) in &live {
            f(key, seg.bytes(loc.off, loc.len as usize), loc, seen)?;
        }
    }
}

/// Waits until batch `seq` is durable (it was written); an error if the engine failed or
/// closed meanwhile (then nothing may be retired).
pub(crate) fn wait_durable(inner: &Inner, seq: u64) -> Result<()> {
    inner.wait_durable_seq(seq, Duration::from_millis(20), || {
        check_running(inner).err()
    })
}

/// Hands `chunk` to the flusher and waits for it to be written (the syncer makes it durable
/// as it does a window; [`wait_durable`] waits for that before anything is retired).
fn copy_forward(
    inner: &Inner,
    mut chunk: Chunk,
    reply: &Receiver<Result<Copied>>,
    stop: Option<&AtomicBool>,
    done: &mut Compacted,
) -> Result<u64> {
    if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
        return Err(Error::Closed);
    }
    check_running(inner)?;
    chunk.sort();
    if inner.compact_slot.offer(chunk).is_err() {
        return Err(Error::Closed);
    }
    inner.poke_flusher();
    let copied = loop {
        match reply.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r?,
            // The flusher dropped it: it stopped (`CompactSlot::close`).
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            Err(RecvTimeoutError::Timeout) => check_running(inner)?,
        }
    };
    if copied.records > 0 {
        done.batches += 1;
    }
    done.records_copied += copied.records;
    done.bytes_written += copied.bytes;
    Ok(copied.seq)
}

/// `Compaction::Auto`'s thread, `mergelog-compactor`.
pub(crate) struct AutoCompactor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl AutoCompactor {
    /// Starts the thread for `policy` on the engine `inner`.
    pub(crate) fn start(inner: Arc<Inner>, policy: AutoCompaction) -> Result<AutoCompactor> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("mergelog-compactor".into())
            // A panic here is a bug in the compaction, which may have left it part-way
            // through the index's and the log's changes: the engine fails with it, as after
            // a panic of the flusher or a syncer, rather than go on with nobody compacting
            // and nothing said (reads go on; a reopen recovers).
            .spawn(move || {
                crate::pipeline::guard_thread(&inner, "compactor", || {
                    run_auto(&inner, policy, &flag)
                });
            })
            .map_err(|e| Error::io("start the compactor thread", "mergelog-compactor", e))?;
        Ok(AutoCompactor { stop, handle })
    }

    /// Stops the thread and waits for it: a compaction in progress runs to its end if it has
    /// a goal (the ratio's kind: a few segments), else (past `max_log_bytes`) ends after its
    /// current chunk, retiring nothing.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

fn run_auto(inner: &Inner, policy: AutoCompaction, stop: &AtomicBool) {
    // The last segment when the last compaction ran: nothing new to compact before the log
    // rolls past it.
    let mut last_run_at = None;
    // The spell of refusals for room (`crate::room`) the last compaction ran in, if any.
    let mut spell_seen = None;
    // The committed batch of the consumer that held that spell's run back, if it retired
    // nothing: once the consumer has moved, the spell gets another run (the one it had could
    // make no room, and the writers only call `resume`).
    let mut held_at = None;
    // The flusher wakes us when a segment completes (`CompactSlot::segment_completed`), and
    // when a spell of refusals for room begins.
    let _ = inner.compact_slot.compactor.set(std::thread::current());
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(policy.check_every);
        if stop.load(Ordering::Acquire) || check_running(inner).is_err() {
            continue;
        }
        let spell = inner.completion.room.lasting_spell();
        let (used, last) = log_bytes(inner);
        let held_moved = || {
            held_at.is_some_and(|at| {
                crate::consumer::retire_limit(&inner.dir, u64::MAX)
                    .map_or(true, |(_, by)| by.map(|c| c.committed.get()) != Some(at))
            })
        };
        if spell.is_some() && (spell != spell_seen || held_moved()) {
            // The disk is full and writes are refused: once per spell, every complete
            // segment, whatever the ratio, to make room (with `Config::reserve_segment` the
            // copies take the reserve); the writers' `resume` then finds it. Stopped by
            // `close` after its current chunk. Again in the same spell only if a consumer
            // held the run back so that it retired nothing, once that consumer has moved.
            last_run_at = Some(last);
            let done = run_auto_once(inner, stop, true, None);
            spell_seen = inner.completion.room.lasting_spell();
            held_at = done
                .filter(|d| d.segments == 0)
                .and_then(|d| d.held_back_by)
                .map(|c| c.committed.get());
            continue;
        }
        if last_run_at == Some(last) {
            inner
                .compact_slot
                .idle_looks
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if used < policy.min_log_bytes.max(1) {
            continue;
        }
        let too_big = policy.max_log_bytes.is_some_and(|max| used > max);
        let live = inner.index.live_bytes();
        if !too_big && (live as f64) >= policy.live_ratio * used as f64 {
            continue;
        }
        // Only the oldest segments, as many as bring the log a little past the policy's
        // ratio: the oldest hold the least that is live (their keys had the longest time to
        // be overwritten), so each byte freed costs the fewest copies, and compaction keeps
        // pace with the writes, a few segments at a time, instead of copying every live
        // record each time the ratio is crossed (write amplification 1 / (1 - r) at best).
        // Past `max_log_bytes`, every complete segment, as its doc says.
        let goal = (!too_big).then_some(policy.live_ratio + (1.0 - policy.live_ratio) / 8.0);
        // A compaction with a goal (a few segments) runs to its end even if `close` stops the
        // thread meanwhile: cut short, it would leave its copies and their originals both on
        // disk, the log past the policy at rest. One that takes every segment (past
        // `max_log_bytes`) may be long, and stops after its current chunk.
        // A spell that began meanwhile (this run may have taken the reserve) gets its own
        // run of every complete segment next.
        run_auto_once(inner, stop, too_big, goal);
        // The run's own copies complete segments (all of the live data's, past
        // `max_log_bytes`): no reason for another run, which would copy them again, and so
        // on for ever on an idle log whose live data is over `max_log_bytes`. Only a segment
        // completed after the run is.
        last_run_at = Some(log_bytes(inner).1);
    }
}

/// One compaction of `Compaction::Auto`'s thread (`stop` its flag, which cuts the compaction
/// short if `stoppable`); its error is kept for `Engine::compaction_error` unless it is the
/// engine's or a stop's. What it did, if it ended.
fn run_auto_once(
    inner: &Inner,
    stop: &AtomicBool,
    stoppable: bool,
    goal: Option<f64>,
) -> Option<Compacted> {
    // A failure is sticky and reported on every call; a stop ends the thread's loop.
    match compact(inner, stoppable.then_some(stop), goal) {
        Ok(done) => {
            *inner.compact_slot.auto_error.lock() = None;
            return Some(done);
        }
        // Stopped by `close`, or the engine failed: every call reports that, and it is not
        // this compaction's own error. `close` stops this thread (`AutoCompactor::stop`)
        // before it closes the ring, so a run it cut short (`copy_forward`'s
        // `Error::Closed`) finds the engine still running: the stop flag says so.
        Err(Error::Closed) if stop.load(Ordering::Acquire) => {}
        Err(_) if check_running(inner).is_err() => {}
        // Counted under the error's lock, once it is kept: whoever sees the count then
        // finds the error.
        Err(e) => {
            let mut kept = inner.compact_slot.auto_error.lock();
            *kept = Some(e);
            Counters::add(&inner.counters.compaction_failed, 1);
        }
    }
    None
}

/// The error of the last automatic compaction, if it failed without failing the engine.
pub(crate) fn auto_error(inner: &Inner) -> Option<Error> {
    inner.compact_slot.auto_error.lock().clone()
}

/// See [`CompactSlot::idle_looks`].
pub(crate) fn idle_looks(inner: &Inner) -> u64 {
    inner.compact_slot.idle_looks.load(Ordering::Relaxed)
}

/// How much disk the log takes against what it holds ([`Engine::space`](crate::Engine::space)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Bytes the live keys' newest records take (record header, key, value): what a
    /// compaction keeps. Durable state only.
    pub live_bytes: u64,
    /// Bytes of the log's frames (every segment's written bytes past its header).
    pub log_bytes: u64,
    /// Bytes of the segment files (each is made at its full size; the prepared next segment
    /// and pooled files are not counted).
    pub file_bytes: u64,
    /// Segment files.
    pub segments: usize,
}

impl Space {
    /// `live_bytes / log_bytes` (1 for an empty log): what `Compaction::Auto` compares with
    /// its `live_ratio`.
    pub fn live_ratio(&self) -> f64 {
        if self.log_bytes == 0 {
            1.0
        } else {
            self.live_bytes as f64 / self.log_bytes as f64
        }
    }
}

/// The engine's [`Space`].
pub(crate) fn space(inner: &Inner) -> Space {
    let (log_bytes, _) = log_bytes(inner);
    let segs = inner.segments.read();
    Space {
        live_bytes: inner.index.live_bytes(),
        log_bytes,
        file_bytes: segs.iter().map(|s| s.size).sum(),
        segments: segs.iter().count(),
    }
}

/// Bytes of the log's frames (every segment's published bytes past its header), and the
/// id of the segment being written.
pub(crate) fn log_bytes(inner: &Inner) -> (u64, u64) {
    let segs = inner.segments.read();
    let used = segs
        .iter()
        .map(|s| s.published().saturating_sub(SEGMENT_HEADER_LEN as u64))
        .sum();
    let last = segs.iter().last().map_or(0, |s| s.id);
    (used, last)
}

#[cfg(test)]
mod tests {
    use super::{Chunk, Enough, InFlightKeys, Seen};
    use crate::index::{Index, Loc};

    fn loc(seg: u32, off: u64) -> Loc {
        Loc { seg, off, len: 1 }
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// A chunk sorts its records as their keys sort (the 8-byte prefix first, then the
        /// keys): keys of every length around the prefix's, with zero bytes and shared
        /// starts, so the prefix ties and its zero padding meet real zeros.
        #[test]
        fn a_chunk_sorts_its_records_by_key(
            shuffled in proptest::collection::btree_set(
                proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0xff]), 0..12),
                0..40,
            )
            .prop_map(|keys| keys.into_iter().collect::<Vec<_>>())
            .prop_shuffle(),
        ) {
            let (tx, _rx) = crossbeam::channel::bounded(1);
            let mut chunk = Chunk::new(tx);
            let seen = Seen { durable: 0, forgets: 0 };
            for (i, k) in shuffled.iter().enumerate() {
                chunk.push(k, b"v", loc(1, i as u64), seen);
            }
            chunk.sort();
            let sorted: Vec<Vec<u8>> = chunk.records.iter().map(|r| chunk.key(r).to_vec()).collect();
            let mut want = shuffled;
            want.sort();
            proptest::prop_assert_eq!(sorted, want);
        }
    }

    /// The flusher's check of a chunk, on both of its paths: it trusts the scan's lookups
    /// when they saw every untracked window and no forgetting came after them, and asks the
    /// index again otherwise; a key a tracked window wrote is dropped either way.
    #[test]
    fn a_chunk_keeps_what_is_still_live_whether_or_not_it_trusts_its_scan() {
        let keys: [&'static [u8]; 4] = [b"a", b"b", b"c", b"d"];
        let check = |seen: Seen, untracked: u64, change: &dyn Fn(&Index)| -> Vec<Vec<u8>> {
            let index = Index::default();
            // SAFETY: the keys are static (and short enough to be copied into the index).
            unsafe {
                index.apply(
                    keys.iter()
                        .enumerate()
                        .map(|(i, k)| (*k, Some(loc(1, i as u64)))),
                )
            };
            let (tx, _rx) = crossbeam::channel::bounded(1);
            let mut chunk = Chunk::new(tx);
            for (i, k) in keys.iter().enumerate() {
                chunk.push(k, b"v", loc(1, i as u64), seen);
            }
            // What happened between the scan and the check.
            change(&index);
            let mut tracked = InFlightKeys::default();
            tracked.start(untracked, 1);
            tracked.note(untracked + 10, [&b"c"[..]].into_iter());
            chunk.keep_live(&index, &tracked, untracked);
            assert_eq!(
                chunk.body_len(),
                chunk.len() * crate::log::format::record_len(1, 1)
            );
            chunk
                .records
                .iter()
                .map(|r| chunk.key(r).to_vec())
                .collect()
        };
        let kept = |names: &[&str]| -> Vec<Vec<u8>> {
            names.iter().map(|n| n.as_bytes().to_vec()).collect()
        };
        let saw_all = Seen {
            durable: 100,
            forgets: 0,
        };
        // Nothing happened but the tracked window's write of c.
        assert_eq!(check(saw_all, 100, &|_| {}), kept(&["a", "b", "d"]));
        // `retire_before` forgot a and b (their segment) after the scan: the index decides.
        let forget = |index: &Index| {
            // SAFETY: as above.
            unsafe { index.apply([(&b"d"[..], Some(loc(2, 0)))].into_iter()) };
            assert_eq!(index.forget_below(2), 3, "a, b and c were in segment 1");
        };
        assert_eq!(
            check(saw_all, 100, &forget),
            Vec::<Vec<u8>>::new(),
            "d moved too"
        );
        // An untracked window (ending at 120, past what the scan saw) wrote b: the index
        // decides, and has b's new place.
        let moved_b = |index: &Index| {
            // SAFETY: as above.
            unsafe { index.apply([(&b"b"[..], Some(loc(3, 0)))].into_iter()) };
        };
        assert_eq!(check(saw_all, 120, &moved_b), kept(&["a", "d"]));
        // Had the scan seen that window (durable 120), b's lookup would have found its new
        // place and left it out: what the scan found still holds.
        let saw_window = Seen {
            durable: 120,
            forgets: 0,
        };
        assert_eq!(check(saw_window, 120, &|_| {}), kept(&["a", "b", "d"]));
    }

    #[test]
    fn in_flight_keys_are_found_until_their_window_is_durable() {
        let mut k = InFlightKeys::default();
        assert!(!k.is_on());
        assert_eq!(k.start(10, 1), 10, "windows up to 10 are not tracked");
        assert_eq!(k.start(20, 1), 10, "a second start keeps the first");
        // A window of an unsorted frame (`coalesce` off) is sorted when noted.
        let w1: [&[u8]; 3] = [b"m", b"c", b"x"];
        k.note(20, w1.into_iter());
        let w2: [&[u8]; 2] = [b"a", b"q"];
        k.note(30, w2.into_iter());
        for key in [&b"a"[..], b"c", b"m", b"q", b"x"] {
            assert!(k.contains(key), "{key:?}");
        }
        assert!(!k.contains(b"b") && !k.contains(b"z") && !k.contains(b""));
        k.forget(25);
        assert!(
            !k.contains(b"m") && !k.contains(b"c"),
            "window 20 is durable"
        );
        assert!(k.contains(b"a") && k.contains(b"q"));
        k.stop();
        assert!(!k.is_on() && !k.contains(b"a"));
        assert_eq!(k.start(40, 1), 40);
        // A new compaction forgets what the last one noted, stopped or not.
        k.note(50, [&b"a"[..]].into_iter());
        assert_eq!(k.start(60, 2), 60, "a new run starts afresh");
        assert!(!k.contains(b"a"), "noted for run 1");
    }

    /// `written` (one merge per window) answers as a set lookup over every window's keys
    /// would: keys of different lengths, shared prefixes, windows that overlap each other and
    /// the chunk in every way.
    #[test]
    fn written_marks_exactly_the_keys_a_tracked_window_wrote() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..200 {
            // Keys from a small alphabet and up to 3 bytes: many collisions and prefixes.
            fn key(next: &mut impl FnMut(u64) -> u64) -> Vec<u8> {
                let len = next(4);
                (0..len).map(|_| b'a' + next(3) as u8).collect()
            }
            let mut k = InFlightKeys::default();
            k.start(0, 1);
            let mut all = std::collections::BTreeSet::new();
            for w in 0..next(4) {
                let n = next(12);
                let mut keys: Vec<Vec<u8>> = (0..n).map(|_| key(&mut next)).collect();
                keys.sort();
                keys.dedup();
                all.extend(keys.iter().cloned());
                k.note(w + 1, keys.iter().map(|k| &k[..]));
            }
            let n = next(20);
            let mut chunk: Vec<Vec<u8>> = (0..n).map(|_| key(&mut next)).collect();
            chunk.sort();
            chunk.dedup();
            let keys: Vec<&[u8]> = chunk.iter().map(|k| &k[..]).collect();
            let want: Vec<bool> = keys.iter().map(|k| all.contains(*k)).collect();
            assert_eq!(
                k.written(&keys),
                want,
                "chunk {chunk:?}, windows' keys {all:?}"
            );
        }
    }

    #[test]
    fn a_goal_takes_the_oldest_segments_until_the_ratio_is_reached() {
        // 100 live bytes in 400 of frames (25 %), segments of 100 bytes of frames.
        let mut e = Enough {
            goal: Some(0.5),
            live: 100,
            projected: 400,
        };
        assert!(!e.reached());
        // The oldest holds 10 live bytes: 310 after it, 32 %.
        e.copied(10);
        e.retired(100);
        assert!(!e.reached());
        // The next holds 20: 230, 43 %; the next 30: 160, 62 %, past the goal.
        e.copied(20);
        e.retired(100);
        assert!(!e.reached());
        e.copied(30);
        e.retired(100);
        assert!(e.reached(), "{} of {}", e.live, e.projected);
        // Without a goal every segment is taken.
        let all = Enough {
            goal: None,
            live: 100,
            projected: 100,
        };
        assert!(!all.reached());
    }
}
