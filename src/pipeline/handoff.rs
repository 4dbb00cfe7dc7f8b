//! Two waiters of the durable watermark that do not block in `Completion::wait`, and how the
//! thread that advances the watermark finds them:
//!
//! * a pending future ([`FutureWakers`]): `Ticket::poll` registers its waker, and the
//!   completion wakes it once the watermark (or a failure) completes its position;
//! * the flusher napping until the sync in flight completes ([`SyncNap`], see
//!   `window::MERGE_BELOW`): the completion pokes it.
//!
//! And the waiters of the durable batch sequence (`reader::LiveLog`): in-process followers and
//! consumers, blocked or polled ([`SeqWaiters`]), which the syncer notifies after it stores
//! the sequence, only if one waits.
//!
//! Between the flusher and the syncers: a syncer sleeping until a job is handed on
//! ([`SyncerBell`], the same pair with fences on both sides), and with several syncers their
//! turns ([`SyncTurns`]: groups taken in order under one lock, completed in that order, one
//! at a time).
//!
//! # The store-buffering pair
//!
//! Both are the Dekker pattern. The waiter writes "I wait" (the waker count, the nap flag)
//! and then re-reads the watermark; the completing side advances the watermark (a `SeqCst`
//! read-modify-write) and then reads "does anyone wait". If both reads missed the other
//! side's write, the waiter would sleep on a watermark that has already passed it, and nobody
//! would wake it until the next advance (or ever, once the traffic stops). A `SeqCst` store
//! followed by a load of another location does not forbid that (the C++ model allows it, and
//! ARM and POWER do it: the store waits in the store buffer while the load goes ahead), so
//! the waiter issues a `fence(SeqCst)` between its write and its re-check. The completing
//! side needs nothing more on real builds: if the waiter's re-check (after its fence) missed
//! the read-modify-write, the fence precedes the read-modify-write in the single total order
//! `S` (C++20 \[atomics.order\] p4), so the completer's `SeqCst` load, later in `S`, sees the
//! waiter's write. Under loom, which models `SeqCst` accesses as merely `AcqRel` and only
//! the fence exactly, the completing side issues a fence too
//! ([`crate::sync::fence_after_sc_rmw`]).
//!
//! The loom tests below model each pair with the watermark as one atomic, advanced by a
//! `SeqCst` `fetch_max` as `Completion::advance_threads` advances it with a `SeqCst`
//! read-modify-write; `crate::watermark`'s loom tests run the futures' pair against the real
//! watermark.

use std::collections::hash_map::{Entry, HashMap};
use std::task::{Poll, Waker};

use crate::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use crate::sync::{fence_after_sc_rmw, Mutex, Parker};
use std::time::Instant;

/// The wakers of pending futures, keyed by the token each future took when it first
/// registered ([`FutureWakers::register`]), each with the position it waits for. A map, so
/// that a registration costs O(1) however many futures wait (a scan of a list made every
/// registration O(n): with 4,096 futures pending, most of a core went to it); keyed by the
/// future rather than by its waker, so that a future polled again replaces its own entry
/// whatever task its new waker wakes (a future moved between tasks, or polled through a
/// combinator's waker), and one dropped while pending takes its entry out
/// ([`FutureWakers::forget`]): the map holds at most one waker per pending future, and none
/// of a future given up on.
#[derive(Default)]
struct Registered {
    by_token: HashMap<u64, (u64, Waker)>,
    /// The last token given out; a future's token is 0 until it first registers.
    last_token: u64,
}

impl Registered {
    fn len(&self) -> usize {
        self.by_token.len()
    }

    #[cfg(all(test, not(loom)))]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wakers of pending futures, each with the position its future waits for.
pub(crate) struct FutureWakers {
    list: Mutex<Registered>,
    /// `list.len()`, stored under the lock: a completion takes the lock only when it is
    /// non-zero.
    count: AtomicUsize,
}

impl FutureWakers {
    pub(crate) fn new() -> FutureWakers {
        FutureWakers {
            list: Mutex::new(Registered::default()),
            count: AtomicUsize::new(0),
        }
    }

    /// Polls a future waiting for `pos`: `status()` gives its outcome once complete (it must
    /// read the watermark with at least `Acquire`). `token` is the future's own (0 before its
    /// first registration; the future keeps what this stores there, and passes it to
    /// [`FutureWakers::forget`] if it is dropped while pending). Checks, registers `waker`,
    /// and checks again: once this returns `Pending`, a [`FutureWakers::wake`] that follows
    /// the advance completing `pos` wakes `waker`, and takes its entry out.
    pub(crate) fn poll<T>(
        &self,
        pos: u64,
        token: &mut u64,
        waker: &Waker,
        status: impl Fn() -> Option<T>,
    ) -> Poll<T> {
        if let Some(r) = status() {
            return Poll::Ready(r);
        }
        self.register(pos, token, waker);
        // The store of `count` must be ordered before the re-check below (see the module
        // docs): either the completion reads our count and wakes us, or we see its watermark.
        fence(Ordering::SeqCst);
        match status() {
            Some(r) => {
                // The wake that followed the advance may have looked before we registered:
                // nobody else would take the entry out.
                self.forget(*token);
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }

    /// Registers `waker` for `pos` under the future's `token` (given one if it is 0): the
    /// future's entry, replaced if it has one.
    pub(crate) fn register(&self, pos: u64, token: &mut u64, waker: &Waker) {
        let mut list = self.list.lock();
        let list = &mut *list;
        if *token == 0 {
            list.last_token += 1;
            *token = list.last_token;
        }
        // A replaced waker is dropped after the lock: its drop is user code.
        let replaced = match list.by_token.entry(*token) {
            Entry::Vacant(e) => {
                e.insert((pos, waker.clone()));
                None
            }
            Entry::Occupied(mut e) => {
                let (p, w) = e.get_mut();
                *p = pos;
                (!w.will_wake(waker)).then(|| std::mem::replace(w, waker.clone()))
            }
        };
        self.count.store(list.len(), Ordering::SeqCst);
        drop(replaced);
    }

    /// Takes out the entry of the future with `token`, if it has one: for a future dropped
    /// while pending, so that its waker (and through it its task) is not kept until its
    /// position completes.
    pub(crate) fn forget(&self, token: u64) {
        if token == 0 {
            return;
        }
        let removed = {
            let mut list = self.list.lock();
            let removed = list.by_token.remove(&token);
            if removed.is_some() {
                self.count.store(list.len(), Ordering::SeqCst);
            }
            removed
        };
        drop(removed);
    }

    /// How many futures are registered: the count a completion reads, and the map's length.
    #[cfg(all(test, loom))]
    pub(crate) fn pending(&self) -> (usize, usize) {
        (self.count.load(Ordering::SeqCst), self.list.lock().len())
    }

    /// Wakes every future the watermark (or a failure) completed, and takes their entries
    /// out. Call it after the `SeqCst` read-modify-write that advanced the watermark or set
    /// the failure. `completed` reads them and returns whether the future waiting for a
    /// position is complete; it is called only if a future waits. The wakers are user code:
    /// they run outside the lock, and one that panics is caught.
    pub(crate) fn wake<D: Fn(u64) -> bool>(&self, completed: impl FnOnce() -> D) {
        fence_after_sc_rmw();
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let is_done = completed();
        let ready: Vec<Waker> = {
            let mut list = self.list.lock();
            let ready = (list.by_token)
                .extract_if(|_, (pos, _)| is_done(*pos))
                .map(|(_, (_, w))| w)
                .collect();
            self.count.store(list.len(), Ordering::SeqCst);
            ready
        };
        for w in ready {
            crate::sync::wake_user(w);
        }
    }
}

/// The flusher's nap until the sync in flight completes: it announces the nap, and the
/// completing side, once it has advanced the watermark, pokes it if it naps.
pub(crate) struct SyncNap {
    napping: AtomicBool,
}

impl SyncNap {
    pub(crate) fn new() -> SyncNap {
        SyncNap {
            napping: AtomicBool::new(false),
        }
    }

    /// The flusher announces a nap until `done()` (which reads the watermark with at least
    /// `Acquire`). False if it is done already: the nap is withdrawn and the flusher must not
    /// nap. True: the flusher may park; the advance that makes `done()` true is followed by
    /// a [`SyncNap::should_poke`] that returns true, until [`SyncNap::end`].
    pub(crate) fn announce(&self, done: impl FnOnce() -> bool) -> bool {
        self.napping.store(true, Ordering::SeqCst);
        // The flag must be visible before the re-check (see the module docs): either the
        // completion sees it and pokes us, or we see its watermark here.
        fence(Ordering::SeqCst);
        if done() {
            self.napping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The flusher no longer naps.
    pub(crate) fn end(&self) {
        self.napping.store(false, Ordering::SeqCst);
    }

    /// Whether the flusher naps for a sync: asked by the completing side after the `SeqCst`
    /// read-modify-write that advanced the watermark.
    pub(crate) fn should_poke(&self) -> bool {
        fence_after_sc_rmw();
        self.napping.load(Ordering::SeqCst)
    }
}

/// The turns of several syncers (`Config::syncers` > 1). Each syncer takes the next jobs
/// waiting as one group, under one lock, so the groups are contiguous runs of the jobs in
/// the order the flusher handed them on, and each gets a turn, counted from 0 in taking
/// order. The syncs run at once; the completions do not: they run one at a time, in turn
/// order, whoever runs them. A syncer whose sync returned hands its group (with the sync's
/// outcome) to [`SyncTurns::finish`]: if no completion is running and its turn is the next,
/// it completes it, and then every later group already synced, in order; otherwise the
/// syncer that completes the turn before it will. So no syncer waits for another's sync to
/// return, and the durable watermark passes a group only after every group before it.
pub(crate) struct SyncTurns<G> {
    /// The next turn to hand out (the lock serializes taking).
    next_take: Mutex<u64>,
    done: Mutex<Finished<G>>,
}

/// The synced groups waiting for their turn to complete.
struct Finished<G> {
    /// The turn to complete next; moved on only once its completion has run, so while one
    /// runs (outside the lock) nobody else finds a group whose turn it is.
    next: u64,
    /// Synced groups whose turn has not come, with their turns (at most one per syncer).
    synced: Vec<(u64, G)>,
}

impl<G> SyncTurns<G> {
    pub(crate) fn new(syncers: usize) -> SyncTurns<G> {
        SyncTurns {
            next_take: Mutex::new(0),
            done: Mutex::new(Finished {
                next: 0,
                synced: Vec::with_capacity(syncers),
            }),
        }
    }

    /// Takes the next group: `fill` moves the jobs waiting into it (under the lock, so no
    /// other syncer takes any in between) and says whether it took any. Its turn, if so.
    pub(crate) fn take(&self, fill: impl FnOnce() -> bool) -> Option<u64> {
        let mut next = self.next_take.lock();
        if !fill() {
            return None;
        }
        let turn = *next;
        *next += 1;
        Some(turn)
    }

    /// The group of `turn` is synced (`group` holds it with its sync's outcome). Completes
    /// it with `complete` if its turn has come (every group before it is complete), and then
    /// every later group already synced, in turn order; else leaves it to whoever completes
    /// the group before it. `complete` runs outside the lock, one call at a time over all
    /// syncers.
    pub(crate) fn finish(&self, turn: u64, group: G, mut complete: impl FnMut(G)) {
        let mut done = self.done.lock();
        done.synced.push((turn, group));
        loop {
            let next = done.next;
            let Some(i) = done.synced.iter().position(|(t, _)| *t == next) else {
                return;
            };
            let (_, group) = done.synced.swap_remove(i);
            drop(done);
            complete(group);
            done = self.done.lock();
            done.next += 1;
        }
    }
}

/// Where the syncers sleep while no job waits, and how the flusher wakes one after it hands
/// a job on: the same store-buffering pair as the module docs describe. A syncer announces
/// its sleep (its state), issues a `fence(SeqCst)` and looks for a job once more before it
/// parks; the flusher hands the job on, issues a `fence(SeqCst)` and reads the states:
/// either the syncer sees the job, or the flusher sees it asleep and unparks it.
///
/// A syncer that is awake and not syncing (taking a group, completing one) will look for a
/// job before it sleeps, so the flusher then wakes nobody: that syncer takes the job, as the
/// one syncer always did, instead of another one being woken for it (a wake-up the two cores
/// pay for). Only while every awake syncer is inside a sync does a sleeping one take the job,
/// so that its sync need not wait for theirs.
pub(crate) struct SyncerBell {
    state: Vec<AtomicUsize>,
}

/// A syncer's [`SyncerBell`] state: awake and not syncing (it looks for a job before it
/// sleeps).
const AWAKE: usize = 0;
/// Asleep, or about to be (it looks once more after announcing it).
const ASLEEP: usize = 1;
/// Inside a sync.
const SYNCING: usize = 2;

impl SyncerBell {
    pub(crate) fn new(syncers: usize) -> SyncerBell {
        SyncerBell {
            state: (0..syncers).map(|_| AtomicUsize::new(AWAKE)).collect(),
        }
    }

    /// Syncer `i` sleeps with `park` unless `job_waits()` (read after the announcement)
    /// finds a job. A stale unpark only makes it look again: the caller loops.
    pub(crate) fn sleep(&self, i: usize, job_waits: impl FnOnce() -> bool, park: impl FnOnce()) {
        self.state[i].store(ASLEEP, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !job_waits() {
            park();
        }
        self.state[i].store(AWAKE, Ordering::Relaxed);
    }

    /// Whether every syncer is asleep (or about to be).
    pub(crate) fn all_asleep(&self) -> bool {
        self.state
            .iter()
            .all(|s| s.load(Ordering::Acquire) == ASLEEP)
    }

    /// Syncer `i` starts (`true`) or ends a sync.
    pub(crate) fn syncing(&self, i: usize, syncing: bool) {
        let state = if syncing { SYNCING } else { AWAKE };
        self.state[i].store(state, Ordering::Relaxed);
    }

    /// After a job was handed on: unless a syncer is awake and not syncing (it will take the
    /// job), wakes one that sleeps, if one does, with `unpark`. Without `overlap`, not while
    /// a syncer is inside a sync either: that one takes the job once its sync has returned,
    /// so no two syncs run at once.
    pub(crate) fn ring(&self, overlap: bool, unpark: impl FnOnce(usize)) {
        fence(Ordering::SeqCst);
        let mut asleep = None;
        for (i, s) in self.state.iter().enumerate() {
            match s.load(Ordering::Relaxed) {
                AWAKE => return,
                ASLEEP => asleep = asleep.or(Some(i)),
                _ if !overlap => return,
                _ => {}
            }
        }
        if let Some(i) = asleep {
            unpark(i);
        }
    }
}

/// The threads and futures waiting for the durable batch sequence to pass a value (or for
/// the pipeline to stop): in-process followers and consumers. The side that moves the
/// sequence (or sets `stopped`) stores it and then calls [`SeqWaiters::notify`], which
/// touches a lock only when someone waits.
///
/// The same store-buffering pair as the watermark's waiters (see the module docs): the
/// waiter counts itself in and re-checks after a `fence(SeqCst)`; the notifier stores, then
/// issues a `fence(SeqCst)` of its own (its store is a plain `Release` store, not a `SeqCst`
/// read-modify-write) before it reads the count. With a fence on each side, whichever fence
/// comes second in `S` sees the other side's write: the waiter its sequence, or the notifier
/// its count. A blocked thread then sleeps on a [`Parker`], whose condition is evaluated
/// under the mutex the notifier takes, so no wake-up is lost between its check and its sleep.
pub(crate) struct SeqWaiters {
    /// Threads in [`SeqWaiters::wait`] past their count-in.
    threads: AtomicUsize,
    parker: Parker,
    /// Pending futures (`Follower::poll_next`), each with the sequence it waits for.
    futures: FutureWakers,
}

impl SeqWaiters {
    pub(crate) fn new() -> SeqWaiters {
        SeqWaiters {
            threads: AtomicUsize::new(0),
            parker: Parker::new(),
            futures: FutureWakers::new(),
        }
    }

    /// Blocks until `ready()` (which reads the sequence or the stop flag with at least
    /// `Acquire`) or `deadline`; returns `ready()`. A notify that follows the store making
    /// `ready()` true wakes this thread.
    pub(crate) fn wait(&self, ready: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        if ready() {
            return true;
        }
        self.threads.fetch_add(1, Ordering::SeqCst);
        // The count must be visible before the re-checks below (see the type's docs).
        fence(Ordering::SeqCst);
        let ready = loop {
            if ready() {
                break true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break ready();
            }
            self.parker.park(|| !ready(), deadline);
        };
        self.threads.fetch_sub(1, Ordering::SeqCst);
        ready
    }

    /// Polls a future waiting for sequence `seq`: ready once `ready()`; else its waker is
    /// registered under its `token` (see [`FutureWakers::poll`]), and a notify that follows
    /// the store making `ready()` true wakes it.
    pub(crate) fn poll(
        &self,
        seq: u64,
        token: &mut u64,
        waker: &Waker,
        ready: impl Fn() -> bool,
    ) -> Poll<()> {
        self.futures
            .poll(seq, token, waker, || ready().then_some(()))
    }

    /// Takes out the waker of a future dropped while pending (see [`FutureWakers::forget`]).
    pub(crate) fn forget(&self, token: u64) {
        self.futures.forget(token);
    }

    /// Wakes every waiter; call it after the store that moved the sequence or stopped the
    /// pipeline. Cheap (a fence and two loads) when nobody waits. Each woken waiter re-checks
    /// its own condition, so waking all of them is only more work, never wrong.
    pub(crate) fn notify(&self) {
        // Orders the caller's store before the loads of the counts (see the type's docs).
        fence(Ordering::SeqCst);
        if self.threads.load(Ordering::SeqCst) > 0 {
            self.parker.unpark_all();
        }
        self.futures.wake(|| |_| true);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicU32);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a user's waker panicked");
        }
    }

    /// A wake-up wakes exactly the futures it completes (a failure all of them), a
    /// re-registration replaces its entry, and a panicking waker does not stop the others.
    #[test]
    fn wake_wakes_exactly_the_completed_futures() {
        let fw = FutureWakers::new();
        let (a, b) = (
            Arc::new(Count(AtomicU32::new(0))),
            Arc::new(Count(AtomicU32::new(0))),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut panics, mut ta, mut tb) = (0, 0, 0);
        fw.register(10, &mut panics, &Waker::from(Arc::new(Panics)));
        fw.register(10, &mut ta, &wa);
        fw.register(10, &mut ta, &wa);
        fw.register(20, &mut tb, &wb);
        fw.register(20, &mut tb, &wb);
        assert_eq!(fw.count.load(Ordering::SeqCst), 3);
        fw.wake(|| |p| p <= 9);
        assert_eq!(fw.count.load(Ordering::SeqCst), 3);
        fw.wake(|| |p| p <= 10);
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 0);
        assert_eq!(fw.count.load(Ordering::SeqCst), 1);
        fw.wake(|| |_| true);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert_eq!(fw.count.load(Ordering::SeqCst), 0);
        assert!(fw.list.lock().is_empty());
    }

    /// One future polled with a hundred different wakers (each waking another task) holds
    /// one entry, the newest waker's, and only that one is woken; a second future of the
    /// same position has its own entry.
    #[test]
    fn a_future_polled_with_new_wakers_holds_only_the_newest() {
        let fw = FutureWakers::new();
        let counts: Vec<_> = (0..100)
            .map(|_| Arc::new(Count(AtomicU32::new(0))))
            .collect();
        let mut token = 0;
        for c in &counts {
            let polled = fw.poll(7, &mut token, &Waker::from(c.clone()), || None::<()>);
            assert_eq!(polled, Poll::Pending);
        }
        let other = Arc::new(Count(AtomicU32::new(0)));
        let mut other_token = 0;
        fw.register(7, &mut other_token, &Waker::from(other.clone()));
        assert_ne!(token, other_token);
        assert_eq!(fw.count.load(Ordering::SeqCst), 2);
        // The 99 replaced wakers are dropped: only the map's clone and ours remain of the
        // newest, one (ours) of each other.
        assert_eq!(Arc::strong_count(&counts[98]), 1);
        assert_eq!(Arc::strong_count(&counts[99]), 2);
        fw.wake(|| |p| p <= 7);
        let woken: Vec<u32> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woken.iter().sum::<u32>(), 1);
        assert_eq!(woken[99], 1);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert!(fw.list.lock().is_empty());
    }

    /// A future forgotten while pending (dropped) leaves nothing: its waker is released at
    /// once and never woken, and the other futures are untouched.
    #[test]
    fn a_forgotten_future_leaves_no_waker() {
        let fw = FutureWakers::new();
        let (a, b) = (
            Arc::new(Count(AtomicU32::new(0))),
            Arc::new(Count(AtomicU32::new(0))),
        );
        let (mut ta, mut tb) = (0, 0);
        assert!(fw
            .poll(3, &mut ta, &Waker::from(a.clone()), || None::<()>)
            .is_pending());
        assert!(fw
            .poll(3, &mut tb, &Waker::from(b.clone()), || None::<()>)
            .is_pending());
        fw.forget(ta);
        fw.forget(ta);
        fw.forget(0);
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "the forgotten waker is still held"
        );
        assert_eq!(fw.count.load(Ordering::SeqCst), 1);
        fw.wake(|| |_| true);
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(fw.list.lock().is_empty());
    }

    /// A poll of a complete position is ready without registering; an incomplete one
    /// registers; one that completes between its registration and its re-check takes its
    /// entry out again (no wake may come for it).
    #[test]
    fn poll_registers_only_when_pending() {
        let fw = FutureWakers::new();
        let w = Waker::from(Arc::new(Count(AtomicU32::new(0))));
        let mut token = 0;
        assert_eq!(fw.poll(5, &mut token, &w, || Some(())), Poll::Ready(()));
        assert_eq!(fw.count.load(Ordering::SeqCst), 0);
        assert_eq!(token, 0);
        assert_eq!(fw.poll(5, &mut token, &w, || None::<()>), Poll::Pending);
        assert_eq!(fw.count.load(Ordering::SeqCst), 1);
        let checks = std::cell::Cell::new(0);
        let mut late = 0;
        let polled = fw.poll(6, &mut late, &w, || {
            checks.set(checks.get() + 1);
            (checks.get() > 1).then_some(())
        });
        assert_eq!(polled, Poll::Ready(()));
        assert_eq!(fw.count.load(Ordering::SeqCst), 1);
        assert_eq!(fw.list.lock().len(), 1);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::atomic::AtomicU64;
    use loom::thread;
    use std::task::Wake;

    /// A waker that records that it was called.
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The position the futures of these models wait for.
    const POS: u64 = 1;

    /// A watermark at 0, a list of futures' wakers, and a thread that advances the watermark
    /// to `pos` and then wakes the futures it completed, as `Completion` does.
    #[allow(clippy::type_complexity)]
    fn completer_advancing_to(
        pos: u64,
    ) -> (
        loom::sync::Arc<AtomicU64>,
        loom::sync::Arc<FutureWakers>,
        thread::JoinHandle<()>,
    ) {
        let watermark = loom::sync::Arc::new(AtomicU64::new(0));
        let wakers = loom::sync::Arc::new(FutureWakers::new());
        let completer = {
            let (watermark, wakers) = (watermark.clone(), wakers.clone());
            thread::spawn(move || {
                watermark.fetch_max(pos, Ordering::SeqCst);
                wakers.wake(|| {
                    let w = watermark.load(Ordering::SeqCst);
                    move |p| p <= w
                });
            })
        };
        (watermark, wakers, completer)
    }

    /// A future polled once while another thread advances the watermark past its position
    /// and wakes the futures: either the poll saw the watermark, or its waker was called. A
    /// `Pending` with no wake-up is the lost wake-up the fence in `poll` rules out.
    #[test]
    fn a_polled_future_is_ready_or_woken() {
        loom::model(|| {
            let (watermark, wakers, completer) = completer_advancing_to(POS);
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let polled = wakers.poll(POS, &mut 0, &waker, || {
                (watermark.load(Ordering::Acquire) >= POS).then_some(())
            });
            completer.join().unwrap();
            assert!(
                polled.is_ready() || flag.0.load(Ordering::SeqCst),
                "pending, and never woken"
            );
        });
    }

    /// A future polled once while another thread advances the watermark past its position
    /// and wakes the futures, then dropped if the poll was pending (its entry forgotten,
    /// racing the wake-up): once both are done, no entry is left, whichever came first (a
    /// poll that registered after the wake-up looked, and then saw the watermark, must take
    /// its own entry out).
    #[test]
    fn a_polled_future_leaves_no_entry_once_ready_or_dropped() {
        loom::model(|| {
            let (watermark, wakers, completer) = completer_advancing_to(POS);
            let waker = Waker::from(std::sync::Arc::new(Flag(AtomicBool::new(false))));
            let mut token = 0;
            let polled = wakers.poll(POS, &mut token, &waker, || {
                (watermark.load(Ordering::Acquire) >= POS).then_some(())
            });
            if polled.is_pending() {
                wakers.forget(token);
            }
            completer.join().unwrap();
            assert_eq!(wakers.count.load(Ordering::SeqCst), 0);
            assert!(wakers.list.lock().by_token.is_empty(), "an entry was left");
        });
    }

    /// The flusher naps for watermark >= 1 while another thread advances it and pokes the
    /// flusher if it naps. The flusher loops as `Flusher::window` does (it re-checks after a
    /// wake-up); a nap nobody ends is a deadlock loom reports.
    #[test]
    fn a_napping_flusher_is_poked() {
        loom::model(|| {
            let watermark = loom::sync::Arc::new(AtomicU64::new(0));
            let nap = loom::sync::Arc::new(SyncNap::new());
            let flusher = thread::current();
            let completer = {
                let (watermark, nap) = (watermark.clone(), nap.clone());
                thread::spawn(move || {
                    watermark.fetch_max(1, Ordering::SeqCst);
                    if nap.should_poke() {
                        flusher.unpark();
                    }
                })
            };
            let done = || watermark.load(Ordering::Acquire) >= 1;
            while !done() {
                if !nap.announce(done) {
                    break;
                }
                thread::park();
                nap.end();
            }
            completer.join().unwrap();
        });
    }

    /// Two syncers take three jobs one at a time (syncer `a` twice) and finish them in
    /// whatever order their syncs end: the completions run one at a time, in the jobs'
    /// order, and every job completes (a group left behind, found by nobody, would be
    /// missing from the final check).
    #[test]
    fn several_syncers_complete_in_turn_order_one_at_a_time() {
        loom::model(|| {
            let queue =
                loom::sync::Arc::new(Mutex::new(std::collections::VecDeque::from([1u32, 2, 3])));
            let turns = loom::sync::Arc::new(SyncTurns::<u32>::new(2));
            let completed = loom::sync::Arc::new(Mutex::new(Vec::new()));
            let running = loom::sync::Arc::new(AtomicBool::new(false));
            let syncer = |rounds: usize| {
                let (queue, turns) = (queue.clone(), turns.clone());
                let (completed, running) = (completed.clone(), running.clone());
                move || {
                    for _ in 0..rounds {
                        let mut job = None;
                        let turn = turns
                            .take(|| {
                                job = queue.lock().pop_front();
                                job.is_some()
                            })
                            .expect("a job is left for every round");
                        let job = job.expect("taken with its turn");
                        // The sync runs here, at once with the other syncer's.
                        turns.finish(turn, job, |j| {
                            assert!(
                                !running.swap(true, Ordering::SeqCst),
                                "two completions at once"
                            );
                            completed.lock().push(j);
                            running.store(false, Ordering::SeqCst);
                        });
                    }
                }
            };
            let a = thread::spawn(syncer(2));
            let b = thread::spawn(syncer(1));
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(*completed.lock(), [1, 2, 3]);
        });
    }

    /// Syncer `i`'s thread, as `Syncer::next_group` loops: after `first` (e.g. its sync
    /// returning), it looks for a job and sleeps on `bell` until it finds one.
    fn syncer_until_a_job(
        jobs: &loom::sync::Arc<AtomicUsize>,
        bell: &loom::sync::Arc<SyncerBell>,
        i: usize,
        first: impl FnOnce(&SyncerBell) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let (jobs, bell) = (jobs.clone(), bell.clone());
        thread::spawn(move || {
            first(&bell);
            while jobs.load(Ordering::Relaxed) == 0 {
                bell.sleep(i, || jobs.load(Ordering::Relaxed) > 0, thread::park);
            }
        })
    }

    /// A syncer with nothing to take goes to sleep while the flusher hands a job on and rings
    /// the bell; the other syncer is inside a sync. Either the sleeping one sees the job, or
    /// the flusher sees it asleep and unparks it. A lost wake-up leaves it parked for ever, a
    /// deadlock loom reports.
    #[test]
    fn a_sleeping_syncer_is_woken_for_a_job() {
        loom::model(|| {
            let jobs = loom::sync::Arc::new(AtomicUsize::new(0));
            let bell = loom::sync::Arc::new(SyncerBell::new(2));
            bell.syncing(0, true);
            let syncer = syncer_until_a_job(&jobs, &bell, 1, |_| {});
            jobs.fetch_add(1, Ordering::Relaxed);
            let woken = syncer.thread().clone();
            bell.ring(true, |i| {
                assert_eq!(i, 1, "only syncer 1 sleeps");
                woken.unpark();
            });
            syncer.join().unwrap();
        });
    }

    /// The flusher rings while one syncer, awake and not syncing, is on its way to sleep (the
    /// other sleeps throughout, and nobody may wake it for this job): the flusher wakes
    /// nobody if it sees the first one awake, and then that one must see the job before it
    /// parks. Waking nobody and missing the job is a deadlock loom reports.
    #[test]
    fn an_awake_syncer_takes_the_job_it_was_not_woken_for() {
        loom::model(|| {
            let jobs = loom::sync::Arc::new(AtomicUsize::new(0));
            let bell = loom::sync::Arc::new(SyncerBell::new(2));
            // Syncer 1 is asleep throughout (a real one would be parked).
            bell.state[1].store(ASLEEP, Ordering::Relaxed);
            let syncer = syncer_until_a_job(&jobs, &bell, 0, |_| {});
            jobs.fetch_add(1, Ordering::Relaxed);
            let woken = syncer.thread().clone();
            bell.ring(true, |i| {
                if i == 0 {
                    woken.unpark();
                }
            });
            syncer.join().unwrap();
        });
    }

    /// Syncs may not overlap (`Config::overlap_syncs_above`, the disk fast): the flusher
    /// rings while syncer 0 is inside a sync and then on its way to sleep, and syncer 1 sleeps
    /// throughout. The flusher wakes nobody while syncer 0 syncs (so syncer 1 must never be
    /// woken), and syncer 0 must see the job before it parks. Missing it is a deadlock loom
    /// reports.
    #[test]
    fn without_overlap_the_syncing_syncer_takes_the_job_after_its_sync() {
        loom::model(|| {
            let jobs = loom::sync::Arc::new(AtomicUsize::new(0));
            let bell = loom::sync::Arc::new(SyncerBell::new(2));
            bell.state[1].store(ASLEEP, Ordering::Relaxed);
            bell.syncing(0, true);
            // The sync returns, then the syncer looks for a job.
            let syncer = syncer_until_a_job(&jobs, &bell, 0, |bell| bell.syncing(0, false));
            jobs.fetch_add(1, Ordering::Relaxed);
            let woken = syncer.thread().clone();
            bell.ring(false, |i| {
                assert_eq!(i, 0, "syncer 1 was woken while syncer 0 could take the job");
                woken.unpark();
            });
            syncer.join().unwrap();
        });
    }

    /// A durable sequence at 0, its waiters, and a syncer thread that moves it to 1 and
    /// notifies, as `LiveLog::advance` does.
    fn syncer_advancing_to_one() -> (
        loom::sync::Arc<AtomicU64>,
        loom::sync::Arc<SeqWaiters>,
        thread::JoinHandle<()>,
    ) {
        let seq = loom::sync::Arc::new(AtomicU64::new(0));
        let waiters = loom::sync::Arc::new(SeqWaiters::new());
        let syncer = {
            let (seq, waiters) = (seq.clone(), waiters.clone());
            thread::spawn(move || {
                seq.store(1, Ordering::Release);
                waiters.notify();
            })
        };
        (seq, waiters, syncer)
    }

    /// A follower blocks for sequence >= 1 while the syncer stores it and notifies: the
    /// follower wakes. A lost wake-up leaves it parked for ever, a deadlock loom reports.
    #[test]
    fn a_waiting_follower_is_woken() {
        loom::model(|| {
            let (seq, waiters, syncer) = syncer_advancing_to_one();
            assert!(waiters.wait(|| seq.load(Ordering::Acquire) >= 1, None));
            syncer.join().unwrap();
        });
    }

    /// A follower's future polled once while the syncer stores the sequence and notifies:
    /// ready, or its waker called.
    #[test]
    fn a_polled_follower_is_ready_or_woken() {
        loom::model(|| {
            let (seq, waiters, syncer) = syncer_advancing_to_one();
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let polled = waiters.poll(1, &mut 0, &waker, || seq.load(Ordering::Acquire) >= 1);
            syncer.join().unwrap();
            assert!(
                polled.is_ready() || flag.0.load(Ordering::SeqCst),
                "pending, and never woken"
            );
        });
    }
}
