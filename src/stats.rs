//! Counters and per-stage latency histograms (HdrHistogram, nanoseconds).
//!
//! The pipeline threads are the only writers of almost everything here: they update plain
//! atomics and record into the histograms once per batch under one lock. `Engine::counts()`
//! reads the atomics (and the segment pool's list, under its short lock, for
//! `SegmentCounts::reserved`), allocating nothing: poll it freely; `Engine::stats()` also
//! copies the histograms (about 2.5 MB, under that lock), for profiling.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Highest latency the histograms track: one minute, in nanoseconds.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds are valid")
}

/// Per-stage latency histograms, all in nanoseconds.
#[derive(Clone, Debug)]
pub struct StageHistograms {
    /// Time a producer was blocked on a full ring (only producers that blocked record).
    pub ring_wait: Histogram<u64>,
    /// Per request: submit to its window's frame handed on for its sync (waiting for the
    /// window to be cut, then coalescing and encoding it).
    pub cut_wait: Histogram<u64>,
    /// Age of a window when it was cut: first request published to cut.
    pub window_age: Histogram<u64>,
    /// Coalesce + sort of one window.
    pub coalesce: Histogram<u64>,
    /// Encoding the survivors into a frame and handing it to the file (pwrite or copy).
    pub encode: Histogram<u64>,
    /// Per request: its window's frame handed on to the start of the sync that covers it
    /// (waiting for the sync in flight before its own).
    pub sync_wait: Histogram<u64>,
    /// One sync (fdatasync or msync), covering every frame waiting for it.
    pub sync: Histogram<u64>,
    /// After a sync: queueing its index updates (applied later, off this path), watermark
    /// advance and wake-up of the waiters.
    pub wakeup: Histogram<u64>,
    /// Per request: submit (stamped by the producer) to durable (read once per batch, when
    /// its sync returns).
    /// Recorded just after the batch's tickets complete, so a snapshot taken the moment a
    /// wait returns may not hold that batch yet (after `close` every batch is in).
    pub end_to_end: Histogram<u64>,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            ring_wait: histogram(),
            cut_wait: histogram(),
            window_age: histogram(),
            coalesce: histogram(),
            encode: histogram(),
            sync_wait: histogram(),
            sync: histogram(),
            wakeup: histogram(),
            end_to_end: histogram(),
        }
    }
}

impl StageHistograms {
    /// The stages in pipeline order, with their names, for printing.
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 9] {
        [
            ("ring_wait", &self.ring_wait),
            ("cut_wait", &self.cut_wait),
            ("window_age", &self.window_age),
            ("coalesce_sort", &self.coalesce),
            ("encode_write", &self.encode),
            ("sync_wait", &self.sync_wait),
            ("sync", &self.sync),
            ("wakeup", &self.wakeup),
            ("end_to_end", &self.end_to_end),
        ]
    }
}

/// A snapshot of the engine's counters alone ([`Engine::counts`](crate::Engine::counts)): a
/// few atomic loads and, for [`SegmentCounts::reserved`], a look at the segment pool's list
/// under its lock (a leaf, held for short list changes and while a pooled file is opened for
/// reuse), with no allocation, so it can be polled as often as wanted while the engine runs.
/// The same numbers as in [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests taken into a window (a `WriteBatch` counts each of its operations).
    pub submitted: u64,
    /// Puts, deletes and merges taken into a window (but those of requests refused by the
    /// merge operator).
    pub writes: u64,
    /// Gets taken into a window.
    pub reads: u64,
    /// Writes superseded by a later write of the same key in the same window.
    pub coalesced_writes: u64,
    /// Gets answered by another get's lookup of the same window.
    pub collapsed_reads: u64,
    /// Records written to the log.
    pub records_written: u64,
    /// Batch frames written.
    pub batches: u64,
    /// Syncs issued.
    pub syncs: u64,
    /// Bytes appended to the log.
    pub bytes_written: u64,
    /// Ring bytes accepted but not yet durable.
    pub backlog_bytes: u64,
    /// Durable watermark (end position of the last durable request).
    pub durable_position: u64,
    /// Times a window being cut waited for more requests or looked again (each turn of the
    /// flusher's window loop that did not cut it). A diagnostic: a window that ends in a few
    /// turns is not spinning.
    pub window_waits: u64,
    /// Where the disk's time went, from the first sync on.
    pub sync_time: SyncTime,
    /// Submissions (`put`, `delete`, `merge`, `write`) refused or made to wait because the slowest
    /// consumer lagged past `Config::consumer_lag_max`.
    pub throttled: u64,
    /// Requests with a request id that were taken in as duplicates (of an id already logged
    /// or in flight) and not logged again; duplicates of durable ids answered at submit, which
    /// never reach a window, are not counted.
    pub duplicates: u64,
    /// Merges taken into a window (`Engine::merge`, and each one of a write batch).
    pub merges: u64,
    /// Requests the merge operator refused in the flusher (their tickets report
    /// `Error::MergeRefused`; their operations are not counted in `writes`).
    pub merges_refused: u64,
    /// Write requests refused for lack of room on the disk (their tickets report
    /// `Error::NoSpace`; their operations are not counted in `writes`). Writes refused at
    /// submit while the engine refuses them are not counted: they never reach a window.
    pub refused_no_space: u64,
    /// Windows a producer cut and wrote itself while it waited for its own request, with
    /// nothing in flight (the flusher's thread wrote the others; see `Ticket::wait`).
    pub windows_by_waiters: u64,
    /// Segment files started, reused and retired since open.
    pub segments: SegmentCounts,
    /// What compaction (`Engine::compact`) wrote since open.
    pub compaction: CompactionCounts,
}

/// What happened to segment files since the engine opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    /// Segments started in a file full of written zeros (made ahead of need, at a roll, or
    /// for a new log's first segment).
    pub fresh: u64,
    /// Segments started in a retired segment's file (`Config::recycle_segments`): no zeros
    /// written for them.
    pub reused: u64,
    /// Segments removed by `Engine::retire_before` (deleted or kept for reuse).
    pub retired: u64,
    /// Time spent making zero-filled segment files (the `fresh` ones, and the next one if it
    /// is prepared already): writing a segment's worth of zeros and syncing them, mostly on
    /// the background thread that prepares the next segment. What a log that grows pays per
    /// byte, and one that reuses retired files (`Config::recycle_segments`) does not.
    pub zero_fill: std::time::Duration,
    /// Files held now as the reserve for a compaction on a full disk
    /// (`Config::reserve_segment`): 1 when it is ready, 0 when it is not (taken, or not made
    /// for lack of room), and always 0 without the option.
    pub reserved: u64,
    /// Times a compaction's copies took the reserve because the disk had no room for a new
    /// segment.
    pub reserve_taken: u64,
}

/// What compaction wrote since the engine opened. Its batches are counted in `batches`,
/// `records_written` and `bytes_written` too: `bytes_written / (bytes_written - bytes)` is
/// the write amplification compaction added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionCounts {
    /// Compactions that ran to the end (each one retired what it rewrote).
    pub runs: u64,
    /// Compaction batches written.
    pub batches: u64,
    /// Live records copied forward.
    pub records: u64,
    /// Bytes of the compaction batches (frames, with headers and padding).
    pub bytes: u64,
    /// Segment files retired by compaction (also in `SegmentCounts::retired`).
    pub segments_retired: u64,
    /// Automatic compactions (`Compaction::Auto`) that ended in an error without failing the
    /// engine (no room on the disk for the `ids` file, say): nothing was retired (unless
    /// the removal of a segment file itself failed: then the segments removed before it are
    /// gone, as after a failed `retire_before`), and the next one runs once the log has
    /// grown. The last one's error:
    /// [`Engine::compaction_error`](crate::Engine::compaction_error).
    pub failed: u64,
}

/// How the time from the first sync to the last one divides (nanoseconds; all zero in
/// `NoSync`): syncing (at least one sync running), or between two syncs. A gap is split at the moment the next sync's
/// first frame was written: before it there was nothing to sync (the producers, or the CPU
/// work of the window, were the limit), after it a written frame waited for its sync (the
/// hand-off to the syncer, or the completion of the sync before, was). `busy / (busy + gaps)`
/// is how busy the pipeline kept the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncTime {
    /// Time with a sync call running (with one syncer, the sum of the `sync` histogram,
    /// without its rounding; with several, syncs that overlap count once).
    pub busy_ns: u64,
    /// Gaps between syncs with a written frame waiting for the next sync.
    pub frame_ready_ns: u64,
    /// Gaps between syncs with no frame written yet.
    pub nothing_ready_ns: u64,
    /// Syncs started while another was running (several syncers: `Config::syncers`,
    /// `Config::overlap_syncs_above`).
    pub overlapped: u64,
}

/// A snapshot of the engine's counters and histograms. Copying the nine histograms takes
/// about 2.5 MB and holds the lock the pipeline records under while it copies: to poll the
/// counters often, use [`Engine::counts`](crate::Engine::counts).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests taken into a window (a `WriteBatch` counts each of its operations).
    pub submitted: u64,
    /// Puts, deletes and merges taken into a window (but those of requests refused by the
    /// merge operator).
    pub writes: u64,
    /// Gets taken into a window.
    pub reads: u64,
    /// Writes superseded by a later write of the same key in the same window (never logged).
    pub coalesced_writes: u64,
    /// Gets answered by another get's lookup of the same window.
    pub collapsed_reads: u64,
    /// Records written to the log.
    pub records_written: u64,
    /// Batch frames written.
    pub batches: u64,
    /// Syncs issued: in `Durability::Sync` one covers every batch frame written while the
    /// previous sync ran (so `syncs <= batches`); none in `NoSync`.
    pub syncs: u64,
    /// Bytes appended to the log (frames, with headers and padding).
    pub bytes_written: u64,
    /// Ring bytes accepted but not yet durable.
    pub backlog_bytes: u64,
    /// Durable watermark (end position of the last durable request).
    pub durable_position: u64,
    /// Times a window being cut waited for more requests or looked again (each turn of the
    /// flusher's window loop that did not cut it). A diagnostic: a window that ends in a few
    /// turns is not spinning.
    pub window_waits: u64,
    /// Where the disk's time went, from the first sync on.
    pub sync_time: SyncTime,
    /// Submissions (`put`, `delete`, `merge`, `write`) refused or made to wait because the slowest
    /// consumer lagged past `Config::consumer_lag_max`.
    pub throttled: u64,
    /// Requests with a request id that were taken in as duplicates (of an id already logged
    /// or in flight) and not logged again; duplicates of durable ids answered at submit, which
    /// never reach a window, are not counted.
    pub duplicates: u64,
    /// Merges taken into a window (`Engine::merge`, and each one of a write batch).
    pub merges: u64,
    /// Requests the merge operator refused in the flusher (their tickets report
    /// `Error::MergeRefused`; their operations are not counted in `writes`).
    pub merges_refused: u64,
    /// Write requests refused for lack of room on the disk (their tickets report
    /// `Error::NoSpace`; their operations are not counted in `writes`). Writes refused at
    /// submit while the engine refuses them are not counted: they never reach a window.
    pub refused_no_space: u64,
    /// Windows a producer cut and wrote itself while it waited for its own request, with
    /// nothing in flight (the flusher's thread wrote the others; see `Ticket::wait`).
    pub windows_by_waiters: u64,
    /// Segment files started, reused and retired since open.
    pub segments: SegmentCounts,
    /// What compaction (`Engine::compact`) wrote since open.
    pub compaction: CompactionCounts,
    /// Per-stage latencies.
    pub stages: StageHistograms,
    /// The durable consumers and their lag (as `Engine::consumers` gives them; empty if their
    /// files could not be read, which `Engine::consumers` reports, or once the engine is
    /// closed: the directory may be another engine's by then).
    pub consumers: Vec<crate::ConsumerInfo>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub coalesced_writes: AtomicU64,
    pub collapsed_reads: AtomicU64,
    pub records_written: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub sync_busy_ns: AtomicU64,
    pub sync_gap_ready_ns: AtomicU64,
    pub sync_gap_empty_ns: AtomicU64,
    pub syncs_overlapped: AtomicU64,
    pub window_waits: AtomicU64,
    pub throttled: AtomicU64,
    pub duplicates: AtomicU64,
    pub merges: AtomicU64,
    pub merges_refused: AtomicU64,
    pub refused_no_space: AtomicU64,
    pub windows_by_waiters: AtomicU64,
    pub compaction_runs: AtomicU64,
    pub compaction_failed: AtomicU64,
    pub compaction_batches: AtomicU64,
    pub compaction_records: AtomicU64,
    pub compaction_bytes: AtomicU64,
    pub compaction_segments: AtomicU64,
    pub stages: Mutex<StageHistograms>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counts(&self, backlog_bytes: u64, durable_position: u64) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            submitted: get(&self.submitted),
            writes: get(&self.writes),
            reads: get(&self.reads),
            coalesced_writes: get(&self.coalesced_writes),
            collapsed_reads: get(&self.collapsed_reads),
            records_written: get(&self.records_written),
            batches: get(&self.batches),
            syncs: get(&self.syncs),
            bytes_written: get(&self.bytes_written),
            backlog_bytes,
            durable_position,
            window_waits: get(&self.window_waits),
            sync_time: SyncTime {
                busy_ns: get(&self.sync_busy_ns),
                frame_ready_ns: get(&self.sync_gap_ready_ns),
                nothing_ready_ns: get(&self.sync_gap_empty_ns),
                overlapped: get(&self.syncs_overlapped),
            },
            throttled: get(&self.throttled),
            duplicates: get(&self.duplicates),
            merges: get(&self.merges),
            merges_refused: get(&self.merges_refused),
            refused_no_space: get(&self.refused_no_space),
            windows_by_waiters: get(&self.windows_by_waiters),
            // Kept by the log's file pool; the engine fills them in.
            segments: SegmentCounts::default(),
            compaction: CompactionCounts {
                runs: get(&self.compaction_runs),
                batches: get(&self.compaction_batches),
                records: get(&self.compaction_records),
                bytes: get(&self.compaction_bytes),
                segments_retired: get(&self.compaction_segments),
                failed: get(&self.compaction_failed),
            },
        }
    }

    pub fn snapshot(&self, backlog_bytes: u64, durable_position: u64) -> Stats {
        let Counts {
            submitted,
            writes,
            reads,
            coalesced_writes,
            collapsed_reads,
            records_written,
            batches,
            syncs,
            bytes_written,
            backlog_bytes,
            durable_position,
            window_waits,
            sync_time,
            throttled,
            duplicates,
            merges,
            merges_refused,
            refused_no_space,
            windows_by_waiters,
            segments,
            compaction,
        } = self.counts(backlog_bytes, durable_position);
        Stats {
            submitted,
            writes,
            reads,
            coalesced_writes,
            collapsed_reads,
            records_written,
            batches,
            syncs,
            bytes_written,
            backlog_bytes,
            durable_position,
            window_waits,
            sync_time,
            throttled,
            duplicates,
            merges,
            merges_refused,
            refused_no_space,
            windows_by_waiters,
            segments,
            compaction,
            stages: self.stages.lock().clone(),
            consumers: Vec::new(),
        }
    }
}

/// Records `ns` into `h`, saturating at the histogram's range instead of failing.
pub(crate) fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, LATENCY_NS_MAX));
}

/// Records `ns` into `h` `n` times (as [`record`]).
pub(crate) fn record_n(h: &mut Histogram<u64>, ns: u64, n: u64) {
    let _ = h.record_n(ns.clamp(1, LATENCY_NS_MAX), n);
}
