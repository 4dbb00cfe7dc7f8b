//! The synchronisation core of a ticket's completion (`ticket::Completion`): the durable
//! watermark with its failure bit, the threads blocked until it passes their position and the
//! bell they sleep on, and the wakers of pending futures. `ticket` adds what a ticket reports
//! (the error, the batch, refusals) and how a thread waits before it sleeps (the spin, the
//! yields, writing its own window); the protocols between the waiters and the completing
//! threads are all here, so that loom can model them: under `--cfg loom` this module is built
//! with the atomics, mutexes and futex of `crate::sync` (the futex emulated), and its loom
//! models run the code below, not a copy of it.
//!
//! Every wake-up rests on the store-buffering pair of `pipeline::handoff`: a waiter stores
//! "I wait" (the sleepers' count, the futures' count), issues a `fence(SeqCst)` and re-checks
//! the watermark; the completing thread moves the watermark with a `SeqCst`
//! read-modify-write and then reads the count (after a fence under loom,
//! [`fence_after_sc_rmw`]).

use crate::pipeline::handoff::FutureWakers;
use crate::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{fence_after_sc_rmw, Mutex};
use std::task::{Poll, Waker};
use std::time::Instant;

/// Bit of `Watermark::state` set once the engine has failed. Positions never reach it (a
/// ring position grows by at most a few GiB per second: 2^63 bytes is centuries away).
const FAILED: u64 = 1 << 63;
// `state & !FAILED` is the watermark: the bit must be the top one, above every position.
const _: () = assert!(FAILED.count_ones() == 1 && FAILED.leading_zeros() == 0);

/// How a request ended: durable, or failed with the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Done {
    Durable,
    Failed,
}

/// What a blocked thread is woken through: the bit it sleeps with on the bell (Linux, and
/// loom's emulated futex), or its handle (elsewhere, unparked one by one).
#[cfg(any(target_os = "linux", loom))]
pub(crate) type Slot = u32;
#[cfg(not(any(target_os = "linux", loom)))]
pub(crate) type Slot = std::thread::Thread;

/// The watermark, the failure, and whoever waits for them (see the module docs).
pub(crate) struct Watermark {
    /// The durable watermark (every request whose end position is `<=` it is durable and
    /// complete), with the `FAILED` bit. Once the bit is set the watermark moves only up to
    /// `failed_from`, so a ticket's outcome, once seen, never changes: one atomic holds both
    /// so that no advance can slip in after a failure.
    state: AtomicU64,
    /// Once the engine failed: the position up to which requests may still complete (those
    /// handed to the syncer before a failed write, whose own sync decides), lowered before
    /// the `FAILED` bit is set. Requests past it have failed. `u64::MAX` until a failure.
    failed_from: AtomicU64,
    /// Serializes lowering `failed_from` with the advances that follow a failure (see
    /// `advance`); never taken before a failure.
    fail_lock: Mutex<()>,
    /// Threads blocked in `sleep_until`, each with the position it waits for. An advance
    /// wakes exactly the threads it completes: no thread is woken to find it must sleep
    /// again, and none has to retake a lock before it can run (a condvar's `notify_all` did
    /// both, and woke the waiters one after another). On Linux all of them with one system
    /// call (see `bell`), elsewhere each with its own unpark.
    sleepers: Mutex<Vec<Sleeper>>,
    /// The word blocked waiters sleep on (Linux): a futex whose value changes with every
    /// advance that wakes someone. Each sleeper waits with its thread's bit (its [`Slot`]),
    /// and an advance wakes the bits of the threads it completes with one
    /// `FUTEX_WAKE_BITSET`. With sixteen unparks the completion's `wakeup` stage was 35-42
    /// µs per window at 16 x 1 (each woken writer could preempt the completing thread before
    /// the next unpark); with one call it is 20-25 (docs/decisions.md, "One wake-up call").
    #[cfg(any(target_os = "linux", loom))]
    bell: crate::sync::Futex,
    /// `sleepers.len()`: advancing touches the lock only when this is non-zero.
    sleeper_count: AtomicUsize,
    /// Tells the entries of `sleepers` apart.
    next_token: AtomicU64,
    /// Wakers of pending futures, with the position each waits for.
    futures: FutureWakers,
}

/// A thread blocked in [`Watermark::sleep_until`].
struct Sleeper {
    pos: u64,
    token: u64,
    slot: Slot,
}

impl Watermark {
    /// A watermark at ring position `durable`, no failure, nobody waiting.
    pub(crate) fn new(durable: u64) -> Watermark {
        Watermark {
            state: AtomicU64::new(durable),
            failed_from: AtomicU64::new(u64::MAX),
            fail_lock: Mutex::new(()),
            sleepers: Mutex::new(Vec::new()),
            #[cfg(any(target_os = "linux", loom))]
            bell: crate::sync::Futex::new(),
            sleeper_count: AtomicUsize::new(0),
            next_token: AtomicU64::new(0),
            futures: FutureWakers::new(),
        }
    }

    /// The durable watermark.
    #[inline]
    pub(crate) fn durable(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !FAILED
    }

    /// Whether the engine has failed, read SeqCst (the failure is set SeqCst): for a check
    /// that must pair with another thread's SeqCst store (`Inner::settle_failure`).
    #[inline]
    pub(crate) fn has_failed(&self) -> bool {
        self.state.load(Ordering::SeqCst) & FAILED != 0
    }

    /// Whether the request ending at `pos` is complete in `state` (a value of `self.state`):
    /// durable, or failed (past `failed_from` after a failure).
    fn done(&self, state: u64, pos: u64) -> bool {
        state & !FAILED >= pos
            || (state & FAILED != 0 && pos > self.failed_from.load(Ordering::Acquire))
    }

    /// Whether a job ending at `pos` may still complete: no failure, or one that came after
    /// it was handed on (its own sync decides).
    #[inline]
    pub(crate) fn may_complete(&self, pos: u64) -> bool {
        self.state.load(Ordering::Acquire) & FAILED == 0
            || pos <= self.failed_from.load(Ordering::Acquire)
    }

    /// `Some` once the request ending at `pos` is complete. Once `Failed`, the failure's
    /// record (`fail`'s `record`) is ordered before the caller.
    #[inline]
    pub(crate) fn check(&self, pos: u64) -> Option<Done> {
        let state = self.state.load(Ordering::Acquire);
        if state & !FAILED >= pos {
            Some(Done::Durable)
        } else if self.done(state, pos) {
            Some(Done::Failed)
        } else {
            None
        }
    }

    /// Advances the watermark and wakes the threads it completes, but no future: futures'
    /// wakers are user code, which the caller runs with [`Watermark::wake_futures`] once it
    /// holds no lock. False (and nothing done) once the engine failed, past `failed_from`.
    pub(crate) fn advance(&self, durable: u64) -> bool {
        // SeqCst pairs with the SeqCst store of `sleeper_count` in `sleep_until`: either the
        // sleeper sees the new watermark, or we see the sleeper and wake it. Likewise with
        // the waker count of a polled future and the flusher's nap (`pipeline::handoff`).
        // After a failure only up to `failed_from`: past it every ticket has failed, and an
        // outcome once seen never changes.
        debug_assert!(
            durable & FAILED == 0,
            "position {durable:#x} reaches the FAILED bit"
        );
        // Once the engine has failed, an advance runs under `fail_lock`, which `fail` holds
        // while it lowers `failed_from`: so no advance can use a limit that a failure lowers
        // meanwhile (which could turn a ticket already seen failed into a success). Without
        // a failure no lock is taken.
        let mut locked = None;
        let moved = loop {
            let r = self
                .state
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                    // Completions come in order: the watermark never moves backwards (`max`
                    // only keeps a release build from acting on a caller that broke that).
                    debug_assert!(
                        durable >= s & !FAILED,
                        "watermark moved backwards: {} -> {durable}",
                        s & !FAILED
                    );
                    if s & FAILED == 0 {
                        return Some(s.max(durable));
                    }
                    locked.as_ref()?;
                    let cap = durable.min(self.failed_from.load(Ordering::SeqCst));
                    (cap > s & !FAILED).then_some(cap | FAILED)
                });
            match r {
                Ok(_) => break true,
                Err(s) if s & FAILED != 0 && locked.is_none() => {
                    locked = Some(self.fail_lock.lock());
                }
                Err(_) => break false,
            }
        };
        drop(locked);
        if moved {
            self.wake_threads();
        }
        moved
    }

    /// Records a failure of the requests past position `from` (`None`: past the watermark as
    /// it is under the lock) and wakes everyone it completes, threads and futures. `record`
    /// runs first, under the lock (it keeps the error: a `check` that finds the request
    /// failed is ordered after it). A later failure may lower `from`, never raise it, nor
    /// below the watermark; a request past it has failed for good.
    pub(crate) fn fail(&self, from: Option<u64>, record: impl FnOnce()) {
        {
            let _serial = self.fail_lock.lock();
            // Never below the watermark as it is under the lock, which every advance after
            // the first failure holds: a request that is durable has not failed. Lowered
            // below it, a `check` that read the state before an advance past its position
            // and the limit after this failure would report failed a request that every
            // later look finds durable (loom model
            // `an_advance_racing_a_failure_keeps_every_outcome_seen`).
            let from = from.unwrap_or(0).max(self.durable());
            record();
            self.failed_from.fetch_min(from, Ordering::SeqCst);
            self.state.fetch_or(FAILED, Ordering::SeqCst);
        }
        self.wake_threads();
        self.wake_futures();
    }

    /// Removes the sleepers whose requests are complete (in the state as it is now) from the
    /// list, under its lock, handing each to `woken`; keeps `sleeper_count` equal to the
    /// list's length.
    fn take_completed(&self, mut woken: impl FnMut(&Sleeper)) {
        let state = self.state.load(Ordering::SeqCst);
        let mut sleepers = self.sleepers.lock();
        sleepers.retain(|s| {
            let done = self.done(state, s.pos);
            if done {
                woken(s);
            }
            !done
        });
        self.sleeper_count.store(sleepers.len(), Ordering::SeqCst);
    }

    /// Wakes the blocked threads whose requests are complete, with one system call: their
    /// entries leave the list, and `bell` changes and rings for their threads' bits. A
    /// thread whose bit it shares with a woken one (more than 32 threads wait) wakes, finds
    /// itself still pending, and sleeps again. Runs after the `SeqCst` read-modify-write of
    /// `state` that completed them.
    #[cfg(any(target_os = "linux", loom))]
    fn wake_threads(&self) {
        fence_after_sc_rmw();
        if self.sleeper_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut bits = 0u32;
        self.take_completed(|s| bits |= s.slot);
        // After the lock is released, so no thread wakes only to block on it.
        if let Some(bits) = std::num::NonZeroU32::new(bits) {
            // A sleeper that read the old value and has not yet slept will not sleep (the
            // kernel compares the value under the futex's lock, which the wake takes too).
            self.bell.word().fetch_add(1, Ordering::SeqCst);
            self.bell.wake_bitset(bits);
        }
    }

    #[cfg(not(any(target_os = "linux", loom)))]
    fn wake_threads(&self) {
        fence_after_sc_rmw();
        if self.sleeper_count.load(Ordering::SeqCst) > 0 {
            // The threads are unparked after the lock is released, so none wakes only to
            // block on it; the list is a reused, per-thread one, so no advance allocates.
            let unpark = |woken: &mut Vec<Slot>| {
                self.take_completed(|s| woken.push(s.slot.clone()));
                for t in woken.drain(..) {
                    t.unpark();
                }
            };
            let reused = WOKEN.try_with(|w| match w.try_borrow_mut() {
                Ok(mut w) => {
                    unpark(&mut w);
                    true
                }
                Err(_) => false,
            });
            // During thread-local destruction (an engine dropped by a thread-local's
            // destructor), or if ever re-entered: a list of its own.
            if reused != Ok(true) {
                unpark(&mut Vec::new());
            }
        }
    }

    /// Wakes the futures the watermark (or a failure) completed. Runs after the `SeqCst`
    /// read-modify-write of `state` that completed them (see `pipeline::handoff`). Wakers are
    /// user code: they run outside every lock, and one that panics is caught.
    pub(crate) fn wake_futures(&self) {
        self.futures.wake(|| {
            let state = self.state.load(Ordering::SeqCst);
            move |pos| self.done(state, pos)
        });
    }

    /// Polls a future waiting for `pos`, registered under its `token` (see
    /// [`FutureWakers::poll`]): once this returns `Pending`, the wake-up that follows the
    /// advance (or failure) completing `pos` wakes `waker`.
    pub(crate) fn poll(&self, pos: u64, token: &mut u64, waker: &Waker) -> Poll<Done> {
        self.futures.poll(pos, token, waker, || self.check(pos))
    }

    /// A future waiting for `pos` under `token` is dropped: unless its request is complete
    /// (then its entry is gone already, or goes with the wake-up that follows the completing
    /// advance), its waker leaves the list, so the list holds no task that stopped waiting.
    pub(crate) fn drop_future(&self, pos: u64, token: u64) {
        if token != 0 && self.check(pos).is_none() {
            self.futures.forget(token);
        }
    }

    /// Blocks the calling thread, woken through `slot` (its own: see [`Slot`]), until the
    /// request ending at `pos` completes (`Some`) or `deadline` passes (`None`). Leaves no
    /// entry behind however it returns.
    pub(crate) fn sleep_until(
        &self,
        pos: u64,
        deadline: Option<Instant>,
        slot: Slot,
    ) -> Option<Done> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        #[cfg(any(target_os = "linux", loom))]
        let me = slot;
        #[cfg(not(any(target_os = "linux", loom)))]
        let me = ();
        {
            let mut sleepers = self.sleepers.lock();
            sleepers.push(Sleeper { pos, token, slot });
            self.sleeper_count.store(sleepers.len(), Ordering::SeqCst);
        }
        // From here an advance that completes `pos` wakes this thread, or (if it read the
        // count before our store) happened before our SeqCst fence, so the check below sees
        // it. Wake-ups may also be stale or shared: every one re-checks.
        fence(Ordering::SeqCst);
        let result = loop {
            // Read before the check: if the check misses an advance, the value read is the
            // one from before that advance rang (see `sleep`).
            let rung = self.rung();
            if let Some(done) = self.check(pos) {
                break Some(done);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break self.check(pos);
            }
            self.sleep(rung, deadline, me);
        };
        // Usually the advance that completed us removed our entry; a timeout or a failure
        // seen first did not.
        if self.sleeper_count.load(Ordering::SeqCst) > 0 {
            let mut sleepers = self.sleepers.lock();
            if let Some(i) = sleepers.iter().position(|s| s.token == token) {
                sleepers.swap_remove(i);
                self.sleeper_count.store(sleepers.len(), Ordering::SeqCst);
            }
        }
        result
    }

    /// The value of `bell` a sleeper compares against (Linux; elsewhere nothing).
    #[cfg(any(target_os = "linux", loom))]
    fn rung(&self) -> u32 {
        // Acquire: a value an advance's ring wrote orders that advance's watermark before
        // the status check that follows, so a check that misses the advance read an older
        // value, and the sleep returns at once.
        self.bell.word().load(Ordering::Acquire)
    }

    #[cfg(not(any(target_os = "linux", loom)))]
    fn rung(&self) {}

    /// Sleeps until an advance rings `bit` (this thread's, or one sharing it), `bell` no
    /// longer holds `rung`, the deadline, or a signal: the caller re-checks either way.
    #[cfg(any(target_os = "linux", loom))]
    fn sleep(&self, rung: u32, deadline: Option<Instant>, bit: Slot) {
        let bit = std::num::NonZeroU32::new(bit).expect("a thread's bit is one bit");
        self.bell.wait_bitset(rung, deadline, bit);
    }

    #[cfg(not(any(target_os = "linux", loom)))]
    fn sleep(&self, (): (), deadline: Option<Instant>, (): ()) {
        match deadline {
            None => std::thread::park(),
            Some(d) => std::thread::park_timeout(d.saturating_duration_since(Instant::now())),
        }
    }

    /// How many threads are listed as blocked (`sleeper_count`, and the list's length).
    #[cfg(test)]
    pub(crate) fn sleepers(&self) -> (usize, usize) {
        (
            self.sleeper_count.load(Ordering::SeqCst),
            self.sleepers.lock().len(),
        )
    }
}

#[cfg(not(any(target_os = "linux", loom)))]
std::thread_local! {
    /// The threads one advance unparks (see `Watermark::wake_threads`).
    static WOKEN: std::cell::RefCell<Vec<Slot>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Models of the real `Watermark` (with `FutureWakers` and the emulated futex of
    //! `crate::sync`): a blocked thread, a future's poll and a dropped future, each racing the
    //! advance (or failure) that completes it, and a failure racing an advance. A lost
    //! wake-up of a blocked thread is a deadlock loom reports; the other properties are
    //! asserted once every thread has finished.

    use super::*;
    use crate::sync::atomic::{AtomicBool, AtomicU32};
    use loom::sync::Arc;
    use loom::thread;
    use std::task::Wake;

    /// Every model with at most three preemptions (as `ring`'s), unless `LOOM_MAX_PREEMPTIONS`
    /// says otherwise: the bugs these protocols could have take two.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(f);
    }

    /// A waker that counts its calls.
    struct Calls(AtomicU32);
    impl Wake for Calls {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (std::sync::Arc<Calls>, Waker) {
        let calls = std::sync::Arc::new(Calls(AtomicU32::new(0)));
        let waker = Waker::from(calls.clone());
        (calls, waker)
    }

    /// A watermark at 0 and a thread that runs `complete` on it (as the syncer does:
    /// `advance`, then `wake_futures` if it moved).
    fn completing(
        complete: impl FnOnce(&Watermark) + Send + 'static,
    ) -> (Arc<Watermark>, thread::JoinHandle<()>) {
        let w = Arc::new(Watermark::new(0));
        let completer = {
            let w = w.clone();
            thread::spawn(move || complete(&w))
        };
        (w, completer)
    }

    /// The syncer's completion of a group ending at `pos` (`syncer::complete_synced`).
    fn advance_to(pos: u64) -> impl FnOnce(&Watermark) + Send + 'static {
        move |w| {
            if w.advance(pos) {
                w.wake_futures();
            }
        }
    }

    /// A thread blocks for position 1 while another advances the watermark to 1: it returns
    /// durable, and leaves no entry. A lost wake-up (the sleeper missed by the advance and
    /// the advance missed by the sleeper's check, or a ring before the sleeper slept that it
    /// did not notice) leaves it asleep for ever: a deadlock loom reports.
    #[test]
    fn a_blocked_waiter_is_woken_by_the_advance() {
        model(|| {
            let (w, completer) = completing(advance_to(1));
            assert_eq!(w.sleep_until(1, None, 1), Some(Done::Durable));
            completer.join().unwrap();
            assert_eq!(w.sleepers(), (0, 0), "an entry was left");
        });
    }

    /// Two threads blocked on the same bit (as more than 32 waiting threads share them), for
    /// positions 1 and 2, while the watermark advances to 1 and then to 2: the first advance
    /// rings the bit for the first waiter, which wakes the second too; that one must sleep
    /// again and still be woken by the second advance.
    #[test]
    fn waiters_sharing_a_bit_are_each_woken_by_their_advance() {
        model(|| {
            let (w, completer) = completing(|w| {
                w.advance(1);
                w.advance(2);
            });
            let first = {
                let w = w.clone();
                thread::spawn(move || w.sleep_until(1, None, 1))
            };
            assert_eq!(w.sleep_until(2, None, 1), Some(Done::Durable));
            assert_eq!(first.join().unwrap(), Some(Done::Durable));
            completer.join().unwrap();
            assert_eq!(w.sleepers(), (0, 0), "an entry was left");
        });
    }

    /// A blocked thread whose deadline has passed gives up while the watermark advances: it
    /// returns complete or timed out, and in both cases leaves no entry.
    #[test]
    fn a_timed_out_waiter_leaves_no_entry() {
        model(|| {
            let (w, completer) = completing(advance_to(1));
            let r = w.sleep_until(1, Some(Instant::now()), 1);
            assert!(matches!(r, Some(Done::Durable) | None), "{r:?}");
            completer.join().unwrap();
            assert_eq!(w.sleepers(), (0, 0), "an entry was left");
        });
    }

    /// A thread blocked for position 1 while the engine fails: it returns failed, and the
    /// failure's record is visible to it (the error a ticket reports).
    #[test]
    fn a_blocked_waiter_is_woken_by_a_failure() {
        model(|| {
            let recorded = Arc::new(AtomicBool::new(false));
            let (w, completer) = completing({
                let recorded = recorded.clone();
                move |w| w.fail(None, || recorded.store(true, Ordering::Relaxed))
            });
            assert_eq!(w.sleep_until(1, None, 1), Some(Done::Failed));
            assert!(recorded.load(Ordering::Relaxed), "failed before the record");
            completer.join().unwrap();
        });
    }

    /// A future polled once while the watermark advances past it and the futures are woken:
    /// ready, or its waker called (once). A `Pending` with no wake-up to come is a lost
    /// wake-up. No entry is left either way.
    #[test]
    fn a_polled_future_is_ready_or_woken() {
        model(|| {
            let (w, completer) = completing(advance_to(1));
            let (calls, waker) = counted();
            let mut token = 0;
            let polled = w.poll(1, &mut token, &waker);
            completer.join().unwrap();
            let calls = calls.0.load(Ordering::SeqCst);
            assert!(
                polled == Poll::Ready(Done::Durable) || calls == 1,
                "{polled:?}, woken {calls} times"
            );
            assert!(calls <= 1, "woken {calls} times");
            assert_eq!(w.futures.pending(), (0, 0), "an entry was left");
        });
    }

    /// A future waiting for `pos`, polled (pending, or ready at its re-check) and then
    /// dropped as `Ticket`'s drop does, while the watermark advances to 1 and the futures
    /// are woken. Once both are done no entry is left and the engine holds its waker no
    /// longer. Returns how often its waker was called.
    fn dropped_while_the_watermark_advances(pos: u64) -> u32 {
        let (w, completer) = completing(advance_to(1));
        let (calls, waker) = counted();
        let mut token = 0;
        let _ = w.poll(pos, &mut token, &waker);
        drop(waker);
        w.drop_future(pos, token);
        completer.join().unwrap();
        assert_eq!(w.futures.pending(), (0, 0), "an entry was left");
        assert_eq!(std::sync::Arc::strong_count(&calls), 1, "a waker is kept");
        calls.0.load(Ordering::SeqCst)
    }

    /// A pending future dropped while a completion that does not complete it runs (it scans
    /// the map, the drop takes the entry out): no entry left, its waker never called.
    #[test]
    fn a_dropped_future_leaves_no_entry_and_is_not_woken() {
        model(|| {
            let calls = dropped_while_the_watermark_advances(2);
            assert_eq!(calls, 0, "a dropped future's waker was called");
        });
    }

    /// A future dropped while the completion that completes it runs: no entry left, and its
    /// waker called at most once: not at all if the drop took its entry out; once if the
    /// completion took it out first. That wake-up runs outside the lock and may come after
    /// the drop returned: a task woken once more than it needed, which a `Waker` must allow,
    /// and which only a drop that waited for the completing thread could prevent.
    #[test]
    fn a_future_dropped_as_it_completes_leaves_no_entry() {
        model(|| {
            let calls = dropped_while_the_watermark_advances(1);
            assert!(calls <= 1, "woken {calls} times");
        });
    }

    /// A future polled while the engine fails, and dropped if pending: woken with the
    /// failure or dropped, and no entry is left.
    #[test]
    fn a_failure_wakes_or_forgets_a_pending_future() {
        model(|| {
            let (w, completer) = completing(|w| w.fail(None, || {}));
            let (calls, waker) = counted();
            let mut token = 0;
            let polled = w.poll(1, &mut token, &waker);
            completer.join().unwrap();
            assert!(
                polled == Poll::Ready(Done::Failed) || calls.0.load(Ordering::SeqCst) == 1,
                "{polled:?}, never woken"
            );
            w.drop_future(1, token);
            assert_eq!(w.futures.pending(), (0, 0), "an entry was left");
        });
    }

    /// The one other writer of the watermark beside the completing syncer (completions run
    /// one at a time, `SyncTurns`): a failure. A write failed after the jobs up to 3 were
    /// handed on (`fail_after(3)`, done before the race); the sync of the group ending at 3
    /// completes while a later failure lowers the limit to 1. A thread blocked for position 2
    /// is woken, with the outcome that stays: durable if the advance came first, failed if
    /// the lower limit did. The watermark never moves backwards, and an outcome once seen
    /// never changes.
    #[test]
    fn an_advance_racing_a_failure_keeps_every_outcome_seen() {
        model(|| {
            let w = Arc::new(Watermark::new(0));
            w.fail(Some(3), || {});
            assert_eq!(w.check(2), None, "handed on before the failure: pending");
            let completer = {
                let w = w.clone();
                thread::spawn(move || advance_to(3)(&w))
            };
            let failer = {
                let w = w.clone();
                thread::spawn(move || w.fail(Some(1), || {}))
            };
            let before = w.durable();
            let seen = w.sleep_until(2, None, 1);
            let after = w.durable();
            completer.join().unwrap();
            failer.join().unwrap();
            assert!(
                after >= before,
                "the watermark moved back: {before} -> {after}"
            );
            let last = w.check(2);
            assert_eq!(seen, last, "an outcome seen changed");
            match last {
                Some(Done::Durable) => assert_eq!(w.durable(), 3),
                Some(Done::Failed) => assert_eq!(w.durable(), 1),
                None => panic!("pending after both"),
            }
            assert_eq!(w.check(1), Some(Done::Durable));
            assert_eq!(w.sleepers(), (0, 0), "an entry was left");
        });
    }
}
