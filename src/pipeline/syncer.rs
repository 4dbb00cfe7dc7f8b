//! The syncer thread (`mergelog-syncer`): makes the frames the flusher wrote durable and
//! completes their tickets. It takes every job waiting as one group ([`Syncer::next_group`]),
//! and [`complete_jobs`] syncs the group's frames at once, publishes them, queues their index
//! updates, advances the durable watermark and wakes the waiters. The flusher calls
//! [`complete_jobs`] itself for a job sent while nothing else is in flight.

use super::flusher::{spare, Job};
use super::Inner;
use crate::config::Durability;
use crate::error::Result;
use crate::log::WrittenFrame;
use crate::stats::{record, record_n, Counters};
use crate::throttle::REREAD_EVERY;
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The second pipeline stage: makes written frames durable (one sync for every job waiting),
/// updates the index, advances the watermark and wakes waiters.
pub(super) struct Syncer {
    inner: Arc<Inner>,
    jobs: Receiver<Job>,
    give_back: Sender<Job>,
    group: Vec<Job>,
}

impl Syncer {
    /// The syncer of a new pipeline: it takes written jobs from `jobs` and returns them for
    /// reuse through `give_back`.
    pub(super) fn new(inner: Arc<Inner>, jobs: Receiver<Job>, give_back: Sender<Job>) -> Syncer {
        Syncer {
            inner,
            jobs,
            give_back,
            group: Vec::new(),
        }
    }

    /// Waits for the next job and takes every one waiting; false once the flusher is gone
    /// and every job is taken. It sleeps on its own parking spot instead of the channel's
    /// blocking `recv`, which yields the CPU a few times before it sleeps: with the cores
    /// busy, a yielded thread waits for the others' time slices when the job comes, while a
    /// sleeping one is woken and scheduled at once.
    fn next_group(&mut self) -> bool {
        loop {
            loop {
                match self.jobs.try_recv() {
                    Ok(job) => self.group.push(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return !self.group.is_empty(),
                }
            }
            if !self.group.is_empty() {
                return true;
            }
            self.inner.syncer_sleeping.store(true, Ordering::Relaxed);
            // Pairs with the flusher's fence after it sends (see `Flusher::send`). Once the
            // flusher has gone, it unparks us (see `start_pipeline`), so the token is there.
            fence(Ordering::SeqCst);
            if self.jobs.is_empty() {
                if self.inner.throttle.engaged() {
                    // Throttled on consumer lag with nothing to sync: consumers of other
                    // processes are seen only by reading their files again.
                    std::thread::park_timeout(REREAD_EVERY);
                    self.inner.throttle.reread_if_due();
                } else {
                    std::thread::park();
                }
            }
            self.inner.syncer_sleeping.store(false, Ordering::Relaxed);
        }
    }

    pub(super) fn run(mut self) {
        let _ = self.inner.syncer_thread.set(std::thread::current());
        self.inner.throttle.set_rereader();
        while self.next_group() {
            self.inner
                .queued
                .fetch_sub(self.group.len(), Ordering::SeqCst);
            // The log has room again: an adaptive window waiting for that may be cut now.
            self.inner.poke_flusher();
            // After a failed write, the jobs handed on before it still complete (their
            // own sync decides); those after it do not.
            let c = &self.inner.completion;
            let n = self
                .group
                .iter()
                .take_while(|j| c.may_complete(j.end))
                .count();
            if n > 0 {
                if let Err(e) = complete_jobs(&self.inner, &self.group[..n]) {
                    c.fail(e);
                    self.inner.throttle.wake_all();
                }
            }
            for job in self.group.drain(..) {
                let _ = self.give_back.try_send(spare(job));
            }
        }
    }
}

/// Makes a group of written jobs durable and completes them, in order: one sync for all their
/// frames, publish, index update, watermark, wake-up. Run by the syncer, or by the flusher
/// itself when nothing else is in flight.
pub(super) fn complete_jobs(inner: &Inner, group: &[Job]) -> Result<()> {
    let t0 = Instant::now();
    let synced = sync_and_publish(inner, group, t0)?;
    let t1 = Instant::now();
    // The end-to-end stage ends here, before the watermark moves: read after it, a woken
    // writer's next request could start before its previous one ended.
    let now = inner.clock.raw();
    // The index updates are queued before the watermark moves and applied later, off the
    // path between this sync and the next (they are tens of microseconds of cache misses):
    // a waiter that looks its write up applies them first (read-your-writes).
    let apply_now = defer_index_updates(inner, group);
    // Which batch each window landed in, before the watermark passes it (`Ticket::wait`).
    for job in group {
        let frame = job.frame.as_ref().map(|f| f.seq);
        inner.completion.seqs.record(job.end, frame);
    }
    let end = group.last().map_or(0, |j| j.end);
    let moved = inner.completion.advance_threads(end);
    if apply_now {
        inner.index.apply_now();
    }
    if moved {
        inner.completion.wake_futures();
    }
    if inner.sync_nap.should_poke() {
        inner.poke_flusher();
    }
    let t2 = Instant::now();
    record_stages(inner, group, synced, (t0, t1, t2), now);
    Ok(())
}

/// Records a completed group's stages: its sync (if it synced), which started at `t0`; the
/// completion's work from `t1`, when the sync and publish were done, to `t2`; and per
/// request, the end-to-end latency up to `now` (a raw `Inner::clock` reading taken at `t1`),
/// split into the wait for its window's cut and encode (`cut_wait`, up to `Job::ready`) and
/// the wait from there to `t0` (`sync_wait`).
fn record_stages(
    inner: &Inner,
    group: &[Job],
    synced: Option<Duration>,
    (t0, t1, t2): (Instant, Instant, Instant),
    now: u64,
) {
    let mut h = inner.counters.stages.lock();
    // The sync stage is the sync alone, the time `Stats::sync_time` calls busy.
    if let Some(took) = synced {
        record(&mut h.sync, took.as_nanos() as u64);
    }
    record(&mut h.wakeup, (t2 - t1).as_nanos() as u64);
    for job in group {
        // From the job's hand-on to the end of its sync and publish, on the `Instant` clock;
        // the request's stamps are on `Inner::clock`, read at `t1` as `now`.
        let since_ready = job.ready.map(|r| {
            let queued = t0.saturating_duration_since(r).as_nanos() as u64;
            record_n(&mut h.sync_wait, queued, job.stamps.len() as u64);
            t1.saturating_duration_since(r).as_nanos() as u64
        });
        for &s in &job.stamps {
            let e2e = inner.clock.delta_as_nanos(s, now);
            record(&mut h.end_to_end, e2e);
            if let Some(after) = since_ready {
                record(&mut h.cut_wait, e2e.saturating_sub(after));
            }
        }
    }
}

/// The first step of [`complete_jobs`] (which started at `t0`): makes the group's frames
/// durable with one sync (none with `Durability::NoSync`), publishes them and moves the
/// durable batch sequence to the last of them. How long the sync took, if it synced; nothing
/// to do for a group without frames (padding, windows of gets).
fn sync_and_publish(inner: &Inner, group: &[Job], t0: Instant) -> Result<Option<Duration>> {
    // Every frame of the group is in one segment: the flusher drains the pipeline before it
    // rolls to a new one.
    let mut frames = group.iter().filter_map(|j| j.frame.as_ref());
    let mut synced = None;
    if let Some(first) = frames.next() {
        let last = frames.next_back().unwrap_or(first);
        // One sync covers `first.start..last.end` of one segment: every frame of the group
        // must be in that segment, in order.
        let mut prev: Option<&WrittenFrame> = None;
        for f in group.iter().filter_map(|j| j.frame.as_ref()) {
            debug_assert!(
                Arc::ptr_eq(&f.seg, &first.seg),
                "a sync group spans two segments (batches {} and {})",
                first.seq,
                f.seq
            );
            debug_assert!(
                prev.is_none_or(|p| p.end <= f.start && p.seq < f.seq),
                "the frames of a sync group are out of order"
            );
            prev = Some(f);
        }
        if inner.config.durability == Durability::Sync {
            last.seg.sync(
                first.start,
                (last.end - first.start) as usize,
                inner.config.write_path,
            )?;
            let end = Instant::now();
            Counters::add(&inner.counters.syncs, 1);
            account_sync_time(inner, group, t0, end);
            synced = Some(end - t0);
        }
        last.seg.publish(last.end);
        // Only the completion writes it (one completion at a time, each ordered after the
        // last), so this load sees the previous store.
        debug_assert!(
            last.seq > inner.live.durable_seq.load(Ordering::Relaxed),
            "the durable batch sequence moved backwards: {} -> {}",
            inner.live.durable_seq.load(Ordering::Relaxed),
            last.seq
        );
        // Wakes in-process followers and consumers, if any wait (`LiveLog::advance`).
        inner.live.advance(last.seq);
        // The consumers' lag grew (one branch unless `Config::consumer_lag_max` is set).
        inner.throttle.advanced(last.end - first.start);
    }
    Ok(synced)
}

/// Queues the index updates of the group's published frames (`Index::defer`); true if the
/// queue has grown so long that the caller should apply it now.
fn defer_index_updates(inner: &Inner, group: &[Job]) -> bool {
    let mut apply_now = false;
    for job in group {
        let Some(frame) = &job.frame else { continue };
        let updates = job.updates.iter().map(|&(key_off, len, loc)| {
            let key = frame.seg.bytes(key_off, len as usize);
            assert_eq!(
                key.len(),
                len as usize,
                "frames are published before the index"
            );
            (key, loc)
        });
        // SAFETY: the keys are published bytes of the frame's segment, which stays in
        // `inner.segments` (and mapped) for the engine's lifetime.
        apply_now |= unsafe { inner.index.defer(updates) };
    }
    apply_now
}

/// Adds one sync, which ran from `start` to `end`, and the gap before it to `Stats::sync_time`.
/// Runs before the watermark moves, so a completion that follows (inline, by the flusher)
/// sees this one's end.
fn account_sync_time(inner: &Inner, group: &[Job], start: Instant, end: Instant) {
    let c = &inner.counters;
    Counters::add(&c.sync_busy_ns, (end - start).as_nanos() as u64);
    let mut last_end = inner.last_sync_end.lock();
    if let Some(prev) = last_end.replace(end) {
        // The gap splits where the first frame of this sync was written (if that was before
        // the last sync ended, a frame waited all along).
        let ready = group
            .iter()
            .filter(|j| j.frame.is_some())
            .filter_map(|j| j.ready)
            .min()
            .unwrap_or(start);
        let split = ready.clamp(prev, start.max(prev));
        Counters::add(&c.sync_gap_empty_ns, (split - prev).as_nanos() as u64);
        Counters::add(
            &c.sync_gap_ready_ns,
            start.saturating_duration_since(split).as_nanos() as u64,
        );
    }
}
