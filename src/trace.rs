//! The pipeline's timeline (`Config::trace_events`): when each window was cut and handed on,
//! when a syncer took a group and synced it, and when the flusher wrote a compaction batch,
//! rolled to a new segment or waited for the bound on frames not yet durable. Off by default;
//! when on, the flusher and the syncers record an event at each of those steps (one per
//! window and per sync, never one per request: about 20,000 a second at 4 x 256, 28,000 at
//! 1 x 1, where each window is one request) into a bounded list that [`Engine::take_trace`]
//! empties.
//!
//! What it is for: the stage histograms (`Stats::stages`) say how long each stage took, not
//! what ran at the same time. The timeline says how many syncs were in flight while the
//! flusher was busy with what, and how long each hand-off took (`mergelog profile --trace`
//! sums it up; docs/decisions.md, "4 × 256 on the slow disk", is one such reading).
//!
//! [`Engine::take_trace`]: crate::Engine::take_trace

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most events `Config::trace_events` may ask to keep (32 bytes each: 512 MiB).
pub const TRACE_EVENTS_MAX: usize = 1 << 24;

/// What happened (see [`TraceEvent`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A window was cut: `value` is its requests.
    WindowCut,
    /// A written job was handed to the syncers: `value` is its requests (0 for a compaction
    /// batch or padding).
    HandedOn,
    /// A written job is completed by the flusher itself, at once (nothing else in flight,
    /// nothing published behind it): `value` is its requests. Its sync follows, with no
    /// `GroupTaken`.
    Inline,
    /// A syncer took a group of jobs: `value` is how many.
    GroupTaken,
    /// A sync started: `value` is the requests of its group.
    SyncStart,
    /// That sync returned (whatever its outcome): `value` is the requests of its group.
    SyncEnd,
    /// The flusher started writing a compaction batch (`value` 0).
    CompactionStart,
    /// It ended: `value` is the records copied (0 if none were still live).
    CompactionEnd,
    /// A frame did not fit the active segment: the flusher waits for the frames written to be
    /// durable and activates the next segment (`value` 0).
    RollStart,
    /// The roll ended (`value` 0).
    RollEnd,
    /// The flusher waits before writing a frame: the frame `UNDURABLE_FRAMES_MAX` batches
    /// back is not durable yet (`Flusher::bound_undurable`; `value` is its batch).
    UndurableBound,
}

impl TraceKind {
    /// A short name, as `mergelog profile --trace` writes it.
    pub fn name(self) -> &'static str {
        match self {
            TraceKind::WindowCut => "cut",
            TraceKind::HandedOn => "handed_on",
            TraceKind::Inline => "inline",
            TraceKind::GroupTaken => "taken",
            TraceKind::SyncStart => "sync_start",
            TraceKind::SyncEnd => "sync_end",
            TraceKind::CompactionStart => "compaction_start",
            TraceKind::CompactionEnd => "compaction_end",
            TraceKind::RollStart => "roll_start",
            TraceKind::RollEnd => "roll_end",
            TraceKind::UndurableBound => "undurable_bound",
        }
    }
}

/// One step of the pipeline, `at` after the engine opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Since the engine opened (its recorder was made).
    pub at: Duration,
    /// What happened.
    pub kind: TraceKind,
    /// A number whose meaning depends on `kind`: a count (requests, jobs, records) or, for
    /// [`TraceKind::UndurableBound`], the batch waited for.
    pub value: u64,
}

/// What [`Engine::take_trace`](crate::Engine::take_trace) returns: the events recorded since
/// the engine opened or the last call, in the order they were recorded (threads record
/// under one lock, so `at` only grows), and how many were not kept because the list was full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events, oldest first.
    pub events: Vec<TraceEvent>,
    /// Events not kept since the last take: the list held `Config::trace_events` already.
    pub dropped: u64,
}

/// The engine's recorder: `None` in `Inner` when `Config::trace_events` is 0.
pub(crate) struct Recorder {
    opened: Instant,
    cap: usize,
    events: Mutex<Vec<TraceEvent>>,
    dropped: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(cap: usize) -> Option<Recorder> {
        (cap > 0).then(|| Recorder {
            opened: Instant::now(),
            cap,
            events: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        })
    }

    fn record(&self, kind: TraceKind, value: u64) {
        let mut events = self.events.lock();
        // The clock is read under the lock, so the list stays in time order.
        let at = self.opened.elapsed();
        if events.len() < self.cap {
            events.push(TraceEvent { at, kind, value });
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn take(&self) -> Trace {
        let events = std::mem::take(&mut *self.events.lock());
        Trace {
            events,
            dropped: self.dropped.swap(0, Ordering::Relaxed),
        }
    }
}

/// Records `kind` if the engine traces (a branch on `None` otherwise).
#[inline]
pub(crate) fn record(recorder: &Option<Recorder>, kind: TraceKind, value: u64) {
    if let Some(r) = recorder {
        r.record(kind, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_recorder_counts_what_it_drops_and_take_empties_it() {
        assert!(Recorder::new(0).is_none());
        let r = Recorder::new(3);
        for v in 0..5 {
            record(&r, TraceKind::WindowCut, v);
        }
        let t = r.as_ref().unwrap().take();
        assert_eq!(
            t.events.iter().map(|e| e.value).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(t.events.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(t.dropped, 2);
        let again = r.as_ref().unwrap().take();
        assert!(again.events.is_empty() && again.dropped == 0);
        record(&r, TraceKind::SyncEnd, 7);
        assert_eq!(r.unwrap().take().events[0].kind, TraceKind::SyncEnd);
    }
}
