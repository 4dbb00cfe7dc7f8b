//! The syncer threads (`mergelog-syncer`): make the frames the flusher wrote durable and
//! complete their tickets. A syncer takes every job waiting as one group
//! ([`Syncer::next_group`]), syncs the group's frames at once, publishes them, queues their
//! index updates, advances the durable watermark and wakes the waiters ([`complete_jobs`]).
//! Whoever holds the flusher's desk (its thread, or a producer writing its own window) calls
//! [`complete_jobs`] itself for a job sent while nothing else is in flight.
//!
//! With `Config::syncers` = N > 1 there are N syncers, and up to N syncs in flight: each
//! takes the next contiguous run of jobs under one lock and gets a turn
//! ([`SyncTurns`]), syncs it through a file description of its
//! own ([`sync_own`]), and the groups then complete in turn order, one at a time. That keeps
//! one contiguous watermark: a sync started after frame k was written covers frame k and
//! every frame before it, but the watermark passes a group only once its own sync returned
//! OK and every group before it completed; a failed sync fails the engine, and nothing after
//! the failed group is acknowledged. A second sync starts while one runs only while the
//! syncs' moving average is above `Config::overlap_syncs_above` (a disk others keep busy);
//! otherwise the flusher wakes nobody while a syncer is inside a sync, and that syncer takes
//! the job after it ([`SyncerBell::ring`]). With one syncer none of that runs: it takes, syncs
//! and completes each group by itself. The window policy is the same for any number of
//! syncers (`window::MERGE_BELOW`: small windows wait over the sync in flight), so only a
//! large window's sync starts while another runs.

use super::flusher::{spare, Job};
use super::handoff::{SyncTurns, SyncerBell};
use super::Inner;
use crate::config::{Durability, WritePath};
use crate::error::{Error, Result};
use crate::log::segment::Segment;
use crate::log::WrittenFrame;
use crate::stats::{record, record_n, Counters};
use crate::throttle::REREAD_EVERY;
use crate::trace::TraceKind;
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// What the syncers share: how many there are, where they sleep, and (several syncers only)
/// their turns.
pub(crate) struct Syncers {
    /// How many run: `Config::syncers`, or 1 with `Durability::NoSync` (nothing to sync).
    pub(crate) count: usize,
    /// Each syncer's thread, set when it starts: unparked by the flusher when it hands a job
    /// on while the syncer sleeps.
    threads: Vec<OnceLock<Thread>>,
    bell: SyncerBell,
    /// Several syncers: the turns of their groups.
    turns: SyncTurns<Synced>,
    /// Several syncers: emptied group vectors, for reuse (a group moves to whoever completes
    /// it).
    spare_groups: Mutex<Vec<Vec<Job>>>,
    /// Several syncers: whether a sync may start while another runs now
    /// (`Config::overlap_syncs_above`; set by [`end_sync`] from the syncs' moving average).
    overlap: AtomicBool,
    /// `Config::overlap_syncs_above` in nanoseconds (0: always overlap).
    overlap_above_ns: u64,
}

/// A group synced by one of several syncers, waiting for its turn to complete: its jobs, how
/// many of the first ones it synced (those that may complete), and the sync's outcome (with
/// when it started, and how long it took if it synced).
type Synced = (Vec<Job>, usize, Result<(Instant, Option<Duration>)>);

impl Syncers {
    /// `count` syncers; with several, a sync starts while another runs only once the syncs
    /// take longer than `overlap_above` on average (always if it is zero).
    pub(crate) fn new(count: usize, overlap_above: Duration) -> Syncers {
        // At most 10 s (`Config::validate`).
        let overlap_above_ns = overlap_above.as_nanos() as u64;
        Syncers {
            count,
            threads: (0..count).map(|_| OnceLock::new()).collect(),
            bell: SyncerBell::new(count),
            turns: SyncTurns::new(count),
            spare_groups: Mutex::new(Vec::new()),
            overlap: AtomicBool::new(overlap_above_ns == 0),
            overlap_above_ns,
        }
    }

    /// Whether every syncer has announced its sleep (at the start, before any job exists).
    pub(crate) fn all_asleep(&self) -> bool {
        self.bell.all_asleep()
    }

    /// After a job was handed on: wakes a syncer that sleeps, if one does (and, unless syncs
    /// may overlap now, only if none is inside a sync: that one takes the job after it).
    pub(crate) fn wake_one(&self) {
        // A hint: read stale, it only picks the other policy for this one job; either way the
        // job is taken (see `SyncerBell::ring`).
        let overlap = self.overlap.load(Ordering::Relaxed);
        self.bell.ring(overlap, |i| {
            if let Some(t) = self.threads[i].get() {
                t.unpark();
            }
        });
    }
}

/// How the disk's time divides (`Stats::sync_time`), with syncs that may overlap: busy while
/// at least one sync runs, and between such spans a gap, split where the next sync's first
/// frame was handed on.
#[derive(Default)]
pub(crate) struct SyncClock {
    /// Syncs running now.
    running: usize,
    /// When the current busy span began (the first of the running syncs started).
    busy_from: Option<Instant>,
    /// When the last busy span ended (`None` before the first sync).
    last_end: Option<Instant>,
    /// Moving average of the syncs' durations, nanoseconds (each new one weighs 1/8).
    avg_ns: u64,
}

/// One syncer: makes written frames durable (one sync for every job waiting), updates the
/// index, advances the watermark and wakes waiters.
pub(super) struct Syncer {
    inner: Arc<Inner>,
    jobs: Receiver<Job>,
    give_back: Sender<Job>,
    group: Vec<Job>,
    /// Which syncer this is: 0 to `Syncers::count` − 1.
    index: usize,
}

impl Syncer {
    /// Syncer `index` of a new pipeline: it takes written jobs from `jobs` and returns them
    /// for reuse through `give_back`.
    pub(super) fn new(
        inner: Arc<Inner>,
        index: usize,
        jobs: Receiver<Job>,
        give_back: Sender<Job>,
    ) -> Syncer {
        Syncer {
            inner,
            jobs,
            give_back,
            group: Vec::new(),
            index,
        }
    }

    /// Takes every job waiting into `self.group`; false if the flusher is gone (nothing will
    /// come any more).
    fn drain(&mut self) -> bool {
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.group.push(job),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Waits for the next job and takes every one waiting (with several syncers, under the
    /// turns' lock, and returns the group's turn); `None` once the flusher is gone and every
    /// job is taken. It sleeps on its own parking spot instead of the channel's blocking
    /// `recv`, which yields the CPU a few times before it sleeps: with the cores busy, a
    /// yielded thread waits for the others' time slices when the job comes, while a
    /// sleeping one is woken and scheduled at once.
    fn next_group(&mut self) -> Option<u64> {
        let inner = self.inner.clone();
        let syncers = &inner.syncers;
        loop {
            let mut open = true;
            let turn = if syncers.count == 1 {
                open = self.drain();
                Some(0).filter(|_| !self.group.is_empty())
            } else {
                syncers.turns.take(|| {
                    open = self.drain();
                    !self.group.is_empty()
                })
            };
            if turn.is_some() {
                return turn;
            }
            if !open {
                return None;
            }
            let jobs = &self.jobs;
            // Pairs with the flusher's `Syncers::wake_one` after it sends (see `SyncerBell`).
            // Once the flusher has gone, it unparks us (see `start_pipeline`), so the token
            // is there.
            syncers.bell.sleep(
                self.index,
                || !jobs.is_empty(),
                || {
                    if self.index == 0 && inner.throttle.engaged() {
                        // Throttled on consumer lag with nothing to sync: consumers of other
                        // processes are seen only by reading their files again.
                        std::thread::park_timeout(REREAD_EVERY);
                        inner.throttle.reread_if_due();
                    } else {
                        std::thread::park();
                    }
                },
            );
        }
    }

    pub(super) fn run(mut self) {
        let _ = self.inner.syncers.threads[self.index].set(std::thread::current());
        if self.index == 0 {
            self.inner.throttle.set_rereader();
        }
        if self.inner.syncers.count == 1 {
            self.run_alone();
        } else {
            self.run_one_of_several();
        }
    }

    /// The one syncer: takes, syncs and completes each group in turn.
    fn run_alone(&mut self) {
        while self.next_group().is_some() {
            self.taken();
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
            completed(&self.inner);
            for job in self.group.drain(..) {
                let _ = self.give_back.try_send(spare(job));
            }
        }
    }

    /// One of several syncers: takes a group and its turn, syncs it while others may sync
    /// theirs, and hands it to the turns, which complete the groups in turn order.
    fn run_one_of_several(&mut self) {
        let inner = self.inner.clone();
        let syncers = &inner.syncers;
        while let Some(turn) = self.next_group() {
            self.taken();
            let c = &inner.completion;
            let n = self
                .group
                .iter()
                .take_while(|j| c.may_complete(j.end))
                .count();
            let t0 = Instant::now();
            syncers.bell.syncing(self.index, true);
            let synced = if n > 0 {
                sync_own(&inner, self.index, &self.group[..n], t0).map(|took| (t0, took))
            } else {
                Ok((t0, None))
            };
            syncers.bell.syncing(self.index, false);
            let fresh = syncers.spare_groups.lock().pop().unwrap_or_default();
            let group = std::mem::replace(&mut self.group, fresh);
            syncers.turns.finish(turn, (group, n, synced), |synced| {
                complete_in_turn(&inner, &self.give_back, synced);
            });
        }
    }

    /// A group was taken: the log has room again, and an adaptive window waiting for that
    /// may be cut now.
    fn taken(&self) {
        // Before `queued` drops (see `Inner::completing`); `completed` lowers it.
        self.inner.completing.fetch_add(1, Ordering::SeqCst);
        self.inner
            .queued
            .fetch_sub(self.group.len(), Ordering::SeqCst);
        let trace = &self.inner.trace;
        crate::trace::record(trace, TraceKind::GroupTaken, self.group.len() as u64);
        self.inner.poke_flusher();
    }
}

/// A taken group's completion has ended (whatever its outcome): see `Inner::completing`.
fn completed(inner: &Inner) {
    inner.completing.fetch_sub(1, Ordering::SeqCst);
    inner.settle_failure();
}

/// Syncs the frames of `group` (one of several syncers' groups), which started at `t0`,
/// through syncer `index`'s own file description of their segment; how long it took, if
/// there was anything to sync.
///
/// Linux reports a writeback error once per open file description (the file's `errseq`
/// cursor): of two syncs through one description, the second can return OK for pages whose
/// writeback failed, because the first one already reported (and consumed) the error. Each
/// syncer therefore syncs with `fdatasync` on a description of its own, and every one of
/// them was opened before any frame was written into the segment
/// (`Segment::open_sync_files`, at the roll or at open): a description opened after
/// another had reported an error would never report it. So every description sees every
/// writeback error of the segment's frames. The mmap write path's `msync` cannot be used
/// here: it syncs through the description the mapping was made with, which all syncers
/// would share; `fdatasync` writes back the pages the mapping dirtied as well, so it serves
/// both write paths.
fn sync_own(inner: &Inner, index: usize, group: &[Job], t0: Instant) -> Result<Option<Duration>> {
    sync_group(inner, group, t0, |seg, _, _| {
        // A group is in the segment being written (a roll drains the pipeline before the
        // next segment takes frames), whose descriptions are open until it is complete.
        let files = seg.sync_files().ok_or_else(|| {
            Error::io(
                "sync segment",
                &seg.path,
                std::io::Error::other("the syncers' descriptions of a completed segment"),
            )
        })?;
        seg.sync_through(&files[index])
    })
}

/// Completes a group one of several syncers synced, in its turn: fails the engine if its
/// sync failed; else completes the jobs it synced that may still complete (a failure of an
/// earlier turn, or a failed write, may have come since it took them). Gives the jobs back,
/// and the emptied vector to the spares.
fn complete_in_turn(inner: &Inner, give_back: &Sender<Job>, (mut group, n, synced): Synced) {
    let c = &inner.completion;
    match synced {
        Err(e) => {
            c.fail(e);
            inner.throttle.wake_all();
        }
        Ok((t0, took)) => {
            let n = group[..n]
                .iter()
                .take_while(|j| c.may_complete(j.end))
                .count();
            if n > 0 {
                complete_synced(inner, &group[..n], (t0, took));
            }
        }
    }
    completed(inner);
    for job in group.drain(..) {
        let _ = give_back.try_send(spare(job));
    }
    inner.syncers.spare_groups.lock().push(group);
}

/// Makes a group of written jobs durable and completes them, in order: one sync for all their
/// frames, publish, index update, watermark, wake-up. Run by the one syncer, or by the
/// flusher itself when nothing else is in flight.
pub(super) fn complete_jobs(inner: &Inner, group: &[Job]) -> Result<()> {
    let t0 = Instant::now();
    let took = sync_group(inner, group, t0, |seg, (first, last), path| {
        seg.sync(first.start, (last.end - first.start) as usize, path)
    })?;
    complete_synced(inner, group, (t0, took));
    Ok(())
}

/// The first step of a completion: makes the group's frames durable with one sync, by
/// `sync` (none with `Durability::NoSync`), which started at `t0`. How long the sync took,
/// if it synced; nothing to do for a group without frames (padding, windows of gets).
fn sync_group(
    inner: &Inner,
    group: &[Job],
    t0: Instant,
    sync: impl FnOnce(&Segment, (&WrittenFrame, &WrittenFrame), WritePath) -> Result<()>,
) -> Result<Option<Duration>> {
    let Some((first, last)) = frames(group) else {
        return Ok(None);
    };
    if inner.config.durability != Durability::Sync {
        return Ok(None);
    }
    let ready = group
        .iter()
        .filter(|j| j.frame.is_some())
        .filter_map(|j| j.ready)
        .min()
        .unwrap_or(t0);
    begin_sync(inner, t0, ready);
    let requests = group.iter().map(|j| j.stamps.len() as u64).sum();
    crate::trace::record(&inner.trace, TraceKind::SyncStart, requests);
    // The first sync in a segment a roll activated makes its header and name durable first
    // (`Segment::finish_activation`; a no-op after that).
    let synced = last
        .seg
        .finish_activation()
        .and_then(|()| sync(&last.seg, (first, last), inner.config.write_path));
    let end = Instant::now();
    crate::trace::record(&inner.trace, TraceKind::SyncEnd, requests);
    end_sync(inner, t0, end);
    synced?;
    Counters::add(&inner.counters.syncs, 1);
    Ok(Some(end - t0))
}

/// The first and last frames of a group, if it has any, checked (in debug builds) to lie in
/// one segment, in order: one sync covers `first.start..last.end` of that segment (the
/// flusher drains the pipeline before it rolls to a new one).
fn frames(group: &[Job]) -> Option<(&WrittenFrame, &WrittenFrame)> {
    let mut frames = group.iter().filter_map(|j| j.frame.as_ref());
    let first = frames.next()?;
    let last = frames.next_back().unwrap_or(first);
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
    Some((first, last))
}

/// Completes a synced group, in order: publish, index update, watermark, wake-up; `t0` is
/// when its sync started, `took` how long it took if it synced. One completion at a time.
fn complete_synced(inner: &Inner, group: &[Job], (t0, took): (Instant, Option<Duration>)) {
    publish(group);
    let t1 = Instant::now();
    // The end-to-end stage ends here, before the watermark moves: read after it, a woken
    // writer's next request could start before its previous one ended.
    let now = inner.clock.raw();
    // The index updates are queued before the watermark moves and applied later, off the
    // path between this sync and the next (they are tens of microseconds of cache misses):
    // a waiter that looks its write up applies them first (read-your-writes).
    let apply_now = defer_index_updates(inner, group);
    // Then the durable batch sequence: whoever sees it pass a batch finds that batch's
    // updates in the index (a compaction retires its prefix once it sees its last batch
    // durable: the index must no longer point into the prefix then).
    announce(inner, group);
    // Which batch each window landed in, before the watermark passes it (`Ticket::wait`).
    for job in group.iter().filter(|j| !j.compaction) {
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
    record_stages(inner, group, took, (t0, t1, t2), now);
}

/// Publishes the group's frames (synced, or written with `Durability::NoSync`): readers of
/// the segment may read them, and the index may point at their keys.
fn publish(group: &[Job]) {
    if let Some((_, last)) = frames(group) {
        last.seg.publish(last.end);
    }
}

/// Moves the durable batch sequence to the group's last frame, once its index updates are
/// queued.
fn announce(inner: &Inner, group: &[Job]) {
    let Some((first, last)) = frames(group) else {
        return;
    };
    // Only the completion writes it (one completion at a time, each ordered after the last),
    // so this load sees the previous store.
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
        // SAFETY: the keys are published bytes of the frame's segment, mapped while it is
        // in `inner.segments`. A retirement unlists it only after a roll, which waits until
        // `durable_seq` passes this frame, which moves only after this `defer`; and
        // `Index::forget_below` applies the queue and drops every slot into the segment
        // before the retirement drops its mapping (`engine::retire_held_off`).
        apply_now |= unsafe { inner.index.defer(updates) };
    }
    apply_now
}

/// A sync starts at `start`; the first frame it covers was handed on at `ready`. If no other
/// sync runs, the gap since the last one ended goes to `Stats::sync_time`, split where that
/// frame was handed on (if that was before the last sync ended, a frame waited all along).
fn begin_sync(inner: &Inner, start: Instant, ready: Instant) {
    let c = &inner.counters;
    let mut clock = inner.sync_clock.lock();
    if clock.running == 0 {
        if let Some(prev) = clock.last_end {
            let split = ready.clamp(prev, start.max(prev));
            Counters::add(&c.sync_gap_empty_ns, (split - prev).as_nanos() as u64);
            Counters::add(
                &c.sync_gap_ready_ns,
                start.saturating_duration_since(split).as_nanos() as u64,
            );
        }
        clock.busy_from = Some(start);
    } else {
        Counters::add(&c.syncs_overlapped, 1);
    }
    clock.running += 1;
}

/// A sync that started at `start` ended at `end` (whatever its outcome): if it was the last
/// one running, the busy span ends. Runs before the watermark moves, so a completion that
/// follows (inline, by the flusher) sees this one's end. With several syncers, the syncs'
/// moving average decides whether the next may overlap another: above
/// `Config::overlap_syncs_above` they may, below half of it not (between, as before).
fn end_sync(inner: &Inner, start: Instant, end: Instant) {
    let mut clock = inner.sync_clock.lock();
    let took = end.saturating_duration_since(start).as_nanos() as u64;
    clock.avg_ns = if clock.avg_ns == 0 {
        took
    } else {
        (clock.avg_ns * 7 + took) / 8
    };
    let syncers = &inner.syncers;
    if syncers.count > 1 && syncers.overlap_above_ns > 0 {
        if clock.avg_ns > syncers.overlap_above_ns {
            syncers.overlap.store(true, Ordering::Relaxed);
        } else if clock.avg_ns < syncers.overlap_above_ns / 2 {
            syncers.overlap.store(false, Ordering::Relaxed);
        }
    }
    clock.running -= 1;
    if clock.running == 0 {
        let from = clock.busy_from.take().unwrap_or(end);
        Counters::add(
            &inner.counters.sync_busy_ns,
            end.saturating_duration_since(from).as_nanos() as u64,
        );
        clock.last_end = Some(end);
    }
}
