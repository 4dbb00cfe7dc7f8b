//! Synchronisation primitives shared by the code that loom models (`ring`, `pipeline`):
//! std/parking_lot normally, loom's under `--cfg loom`.
//!
//! Loom treats `SeqCst` loads, stores and read-modify-writes as merely `AcqRel` and models
//! only `fence(SeqCst)` exactly, so a Dekker argument that rests on a `SeqCst` access needs a
//! `SeqCst` fence on that side under loom ([`fence_after_sc_rmw`]); see `ring`'s "Loom".

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;

use std::time::Instant;

/// Loom models `SeqCst` read-modify-writes and loads as `AcqRel`, so where a Dekker
/// argument rests on a `SeqCst` RMW it needs an explicit fence after it. Real builds need
/// nothing: the RMW itself takes part in the single total order `S`.
#[inline(always)]
pub(crate) fn fence_after_sc_rmw() {
    #[cfg(loom)]
    atomic::fence(atomic::Ordering::SeqCst);
}

/// Wakes a user's task. A `Waker` is user code: it is called outside every lock of the
/// engine's (its callers take it off their list first), and a panic in it is caught here,
/// so that it neither unwinds into the engine's thread (failing the engine, or out of an
/// unrelated call such as a consumer's commit) nor costs the tasks after it their wake-up.
///
/// While it runs, [`in_user_code`] is true on this thread (see there).
pub(crate) fn wake_user(waker: std::task::Waker) {
    #[cfg(not(loom))]
    let _inside = UserCode::enter();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
}

#[cfg(not(loom))]
std::thread_local! {
    /// How many calls of user code made by the engine run on this thread (they nest: a
    /// waker may poll a task that is woken by another).
    static USER_CODE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// True while this thread runs user code on the engine's behalf: a `Waker` ([`wake_user`])
/// or a `Custom` merge operator. Such code may run on one of the engine's own threads, or
/// under a lock `close` takes (the flusher's desk, the retirement lock): closing the engine
/// there must not wait for the pipeline (`Engine::close`, `Engine`'s `Drop`).
#[cfg(not(loom))]
pub(crate) fn in_user_code() -> bool {
    USER_CODE.with(|n| n.get() > 0)
}

/// Counts a call of user code running on this thread until dropped (however it ends).
#[cfg(not(loom))]
pub(crate) struct UserCode;

#[cfg(not(loom))]
impl UserCode {
    pub(crate) fn enter() -> UserCode {
        USER_CODE.with(|n| n.set(n.get() + 1));
        UserCode
    }
}

#[cfg(not(loom))]
impl Drop for UserCode {
    fn drop(&mut self) {
        USER_CODE.with(|n| n.set(n.get() - 1));
    }
}

#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

#[cfg(not(loom))]
use parking_lot::Condvar;
/// A mutex whose `lock` returns the guard directly (`parking_lot`'s; loom's under loom).
#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;

/// A mutex whose `lock` returns the guard directly (`parking_lot`'s; loom's under loom).
#[cfg(loom)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    /// Loom's mutex is never poisoned in a model that does not panic.
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
}

/// A place to sleep until a condition changes. The condition is evaluated under the mutex
/// and wakers take the mutex after changing it, so no wake-up is lost between check and
/// sleep. Callers loop, so an early return is harmless.
pub(crate) struct Parker {
    #[cfg(not(loom))]
    lock: Mutex<()>,
    #[cfg(not(loom))]
    cv: Condvar,
    #[cfg(loom)]
    lock: loom::sync::Mutex<()>,
    #[cfg(loom)]
    cv: loom::sync::Condvar,
}

#[cfg(not(loom))]
impl Parker {
    pub(crate) fn new() -> Self {
        Parker {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Sleeps while `blocked()` holds, until woken or `deadline`.
    pub(crate) fn park(&self, blocked: impl FnOnce() -> bool, deadline: Option<Instant>) {
        let mut guard = self.lock.lock();
        if !blocked() {
            return;
        }
        match deadline {
            None => self.cv.wait(&mut guard),
            Some(deadline) => {
                self.cv.wait_until(&mut guard, deadline);
            }
        }
    }

    pub(crate) fn unpark_all(&self) {
        let _guard = self.lock.lock();
        self.cv.notify_all();
    }
}

#[cfg(loom)]
impl Parker {
    pub(crate) fn new() -> Self {
        Parker {
            lock: loom::sync::Mutex::new(()),
            cv: loom::sync::Condvar::new(),
        }
    }

    /// Loom has no clock: a timed park is an immediate time-out (after a yield, so that
    /// polling loops make progress in the model).
    pub(crate) fn park(&self, blocked: impl FnOnce() -> bool, deadline: Option<Instant>) {
        if deadline.is_some() {
            loom::thread::yield_now();
            return;
        }
        let guard = self.lock.lock().unwrap();
        if !blocked() {
            return;
        }
        drop(self.cv.wait(guard).unwrap());
    }

    pub(crate) fn unpark_all(&self) {
        let _guard = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
}

/// A word that threads sleep on, each with one bit of a 32-bit set, until a waker that changed
/// the word rings their bits: the Linux futex's `FUTEX_WAIT_BITSET` / `FUTEX_WAKE_BITSET`
/// (`ticket::Completion`'s bell, through `crate::watermark`). Under loom, an emulation loom
/// can model: the sleepers queue under a mutex, and a ring takes that mutex, so, as with the
/// kernel's futex, a sleeper that read the word before a waker changed it either finds it
/// changed when it compares (under the mutex) or is queued before the ring looks, and woken.
/// The emulation wakes a sleeper only when its bit is rung: a protocol that counted on a
/// spurious wake-up would deadlock in the model.
#[cfg(any(target_os = "linux", loom))]
pub(crate) struct Futex {
    word: atomic::AtomicU32,
    #[cfg(loom)]
    queue: loom::sync::Mutex<FutexQueue>,
    #[cfg(loom)]
    rung: loom::sync::Condvar,
}

/// The emulated futex's sleepers: an id each, with its bit.
#[cfg(loom)]
#[derive(Default)]
struct FutexQueue {
    asleep: Vec<(u64, u32)>,
    next: u64,
}

#[cfg(any(target_os = "linux", loom))]
impl Futex {
    pub(crate) fn new() -> Futex {
        Futex {
            word: atomic::AtomicU32::new(0),
            #[cfg(loom)]
            queue: loom::sync::Mutex::new(FutexQueue::default()),
            #[cfg(loom)]
            rung: loom::sync::Condvar::new(),
        }
    }

    /// The word: a waker changes it before it rings; a sleeper reads it before it checks
    /// its condition, and sleeps only if it still holds the value read.
    pub(crate) fn word(&self) -> &atomic::AtomicU32 {
        &self.word
    }

    /// Sleeps with `bit` unless the word no longer holds `expected` (compared atomically
    /// with the rings), until a ring of `bit`, `until`, or a signal: the caller re-checks
    /// its condition whichever it was.
    #[cfg(not(loom))]
    pub(crate) fn wait_bitset(
        &self,
        expected: u32,
        until: Option<Instant>,
        bit: std::num::NonZeroU32,
    ) {
        use rustix::thread::futex;
        use rustix::time::{clock_gettime, ClockId};
        // The bitset wait's timeout is absolute, on the monotonic clock `Instant` reads.
        let until = until.map(|d| {
            let nap = d.saturating_duration_since(Instant::now());
            let mut t = clock_gettime(ClockId::Monotonic);
            let nanos = t.tv_nsec as u64 + u64::from(nap.subsec_nanos());
            t.tv_sec = t
                .tv_sec
                .saturating_add(i64::try_from(nap.as_secs()).unwrap_or(i64::MAX))
                .saturating_add((nanos / 1_000_000_000) as i64);
            t.tv_nsec = (nanos % 1_000_000_000) as _;
            t
        });
        // EAGAIN (the value moved on), ETIMEDOUT and EINTR all mean: look again.
        let _ = futex::wait_bitset(
            &self.word,
            futex::Flags::PRIVATE,
            expected,
            until.as_ref(),
            bit,
        );
    }

    /// Wakes every thread asleep with a bit in `bits`. Call it after changing the word.
    #[cfg(not(loom))]
    pub(crate) fn wake_bitset(&self, bits: std::num::NonZeroU32) {
        use rustix::thread::futex;
        // The wake's errors are for an invalid address, operation or empty bitset: none can
        // happen here.
        let woke = futex::wake_bitset(&self.word, futex::Flags::PRIVATE, i32::MAX as u32, bits);
        debug_assert!(woke.is_ok(), "futex wake: {woke:?}");
    }

    /// Loom has no clock: a timed sleep is an immediate time-out (after a yield, so that
    /// polling loops make progress in the model).
    #[cfg(loom)]
    pub(crate) fn wait_bitset(
        &self,
        expected: u32,
        until: Option<Instant>,
        bit: std::num::NonZeroU32,
    ) {
        if until.is_some() {
            loom::thread::yield_now();
            return;
        }
        let mut queue = self.queue.lock().unwrap();
        if self.word.load(atomic::Ordering::Relaxed) != expected {
            return;
        }
        let me = queue.next;
        queue.next += 1;
        queue.asleep.push((me, bit.get()));
        while queue.asleep.iter().any(|&(id, _)| id == me) {
            queue = self.rung.wait(queue).unwrap();
        }
    }

    #[cfg(loom)]
    pub(crate) fn wake_bitset(&self, bits: std::num::NonZeroU32) {
        let mut queue = self.queue.lock().unwrap();
        queue.asleep.retain(|&(_, bit)| bit & bits.get() == 0);
        self.rung.notify_all();
    }
}
