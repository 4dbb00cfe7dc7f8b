//! Completion by durable watermark. A ticket is a position in the total order, not an
//! allocation: it is done when the durable watermark reaches it, or failed when the engine
//! failed before it got there. The watermark and the protocols by which its waiters are
//! woken are `crate::watermark`'s (model-checked by loom); this module adds what a ticket
//! reports and how a thread waits before it sleeps.

use crate::error::{Error, Result};
use crate::ids::Duplicates;
use crate::seq::{Found, Seq, SeqMap};
use crate::watermark::{Done, Watermark};
use crossbeam::utils::CachePadded;
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The state every ticket of one engine looks at.
pub(crate) struct Completion {
    /// The durable watermark with the failure bit, the blocked threads and the pending
    /// futures waiting for it (`crate::watermark`).
    core: Watermark,
    /// Set once, before the failure bit: the error the first failed operation gave.
    failure: OnceLock<Error>,
    /// Threads inside `wait` past its spin (whether yielding or parked).
    waiters: AtomicUsize,
    /// Whether the short spin before sleeping has been paying off (see `wait`).
    spin_credit: Credit,
    /// Whether waiting by yielding has been paying off (see `yield_wait`).
    yield_credit: Credit,
    /// Which batch each completed window was written in (for `Ticket::wait`'s `Seq`).
    pub(crate) seqs: SeqMap,
    /// The requests found to duplicate a request id (for `IdTicket`'s outcome).
    pub(crate) duplicates: Duplicates,
    /// The requests the merge operator refused (`crate::merge`), and those refused for
    /// lack of room on the disk.
    pub(crate) refusals: crate::merge::Refusals,
    /// Whether writes are refused for lack of room, and since where (`crate::room`).
    pub(crate) room: crate::room::Room,
    /// Set by the pipeline: called with a request's position by a thread about to wait for
    /// it (`true`: it may write the request's window itself, see `pipeline::flusher::help`)
    /// or by a future's poll that found it pending (`false`: it only wakes the flusher if
    /// the flusher sleeps counting on waiters).
    pub(crate) helper: OnceLock<Helper>,
    /// The followers' gate, told of a failure (`notify_on_failure`).
    on_failure: OnceLock<Arc<crate::reader::LiveLog>>,
}

/// See `Completion::helper`.
pub(crate) type Helper = Box<dyn Fn(u64, bool) + Send + Sync>;

impl Completion {
    #[cfg(test)]
    pub fn new(durable: u64) -> Completion {
        Completion::with_seqs(durable, SeqMap::for_tests(durable, 0))
    }

    /// A completion whose watermark starts at ring position `durable`, with batch
    /// `durable_seq` the last durable one (0 for an empty log).
    pub fn at(durable: u64, durable_seq: u64) -> Completion {
        Completion::with_seqs(durable, SeqMap::new(durable, durable_seq))
    }

    fn with_seqs(durable: u64, seqs: SeqMap) -> Completion {
        Completion {
            core: Watermark::new(durable),
            failure: OnceLock::new(),
            waiters: AtomicUsize::new(0),
            helper: OnceLock::new(),
            on_failure: OnceLock::new(),
            spin_credit: Credit::default(),
            yield_credit: Credit::default(),
            seqs,
            duplicates: Duplicates::default(),
            refusals: Default::default(),
            room: Default::default(),
        }
    }

    /// The batch that made the request ending at `pos` durable; asked once it is complete.
    fn seq_of(&self, pos: u64) -> Result<Seq> {
        match self.seqs.find(pos) {
            Found::Seq(seq) => Ok(Seq::new(seq)),
            Found::Forgotten => Err(Error::SeqUnknown { position: pos }),
            Found::NotYet => {
                // The window's entry is recorded before the watermark passes it.
                debug_assert!(
                    false,
                    "position {pos} is complete but its window is not recorded"
                );
                Err(Error::SeqUnknown { position: pos })
            }
        }
    }

    /// A request's outcome as a ticket reports it: the batch it landed in, or its refusal
    /// (not for a flush, whose position is the request's before it: a flush fails only if
    /// writes it covers were refused for lack of room, see `crate::room`).
    fn outcome(&self, pos: u64, done: Result<()>, flush: u64) -> Result<Seq> {
        let refused = || match flush {
            NOT_A_FLUSH => self.refusals.check(pos),
            seen => self.room.flush_outcome(seen, pos),
        };
        done.and_then(|()| refused())
            .and_then(|()| self.seq_of(pos))
    }

    /// The durable watermark.
    pub fn durable(&self) -> u64 {
        self.core.durable()
    }

    pub fn failure(&self) -> Option<&Error> {
        self.failure.get()
    }

    /// Whether the engine has failed, read SeqCst (the failure is set SeqCst): for a check
    /// that must pair with another thread's SeqCst store (`Inner::settle_failure`).
    pub(crate) fn has_failed(&self) -> bool {
        self.core.has_failed()
    }

    /// Whether a job ending at `pos` may still complete: no failure, or one that came after
    /// it was handed on (its own sync decides).
    pub fn may_complete(&self, pos: u64) -> bool {
        self.core.may_complete(pos)
    }

    /// A request's completion as its ticket reports it: a failure with the engine's error.
    fn result(&self, done: Done) -> Result<()> {
        match done {
            Done::Durable => Ok(()),
            // `failure` was set before the bit, and the check that found it orders it
            // before us.
            Done::Failed => Err(self
                .failure
                .get()
                .cloned()
                .expect("the failure is recorded before the FAILED bit is set")),
        }
    }

    /// `Some(result)` once the request ending at `pos` is complete.
    pub fn status(&self, pos: u64) -> Option<Result<()>> {
        self.core.check(pos).map(|done| self.result(done))
    }

    /// Advances the watermark and wakes whoever waits; does nothing once the engine failed.
    #[cfg(test)]
    pub fn advance(&self, durable: u64) {
        if self.advance_threads(durable) {
            self.wake_futures();
        }
    }

    /// Advances the watermark and wakes the threads it completes, but no future: futures'
    /// wakers are user code, which the caller runs with [`Completion::wake_futures`] once it
    /// holds no lock. False (and nothing done) once the engine failed (see
    /// [`Watermark::advance`]).
    pub fn advance_threads(&self, durable: u64) -> bool {
        self.core.advance(durable)
    }

    /// Records a failure (the first error is the one reported) and wakes everyone: every
    /// request not yet durable has failed, and the watermark never moves again.
    pub fn fail(&self, error: Error) {
        self.fail_with(error, None);
    }

    /// Records a failure of the requests past position `from` (a write failed after the jobs
    /// up to `from` were handed to the syncer: each of those completes with its own sync's
    /// outcome, and the watermark may still move up to `from`). A later failure may lower
    /// `from`, never raise it; a request past it has failed for good.
    pub fn fail_after(&self, error: Error, from: u64) {
        self.fail_with(error, Some(from));
    }

    /// `fail_after(from)`, or with `None` after the watermark as it is under the lock.
    fn fail_with(&self, error: Error, from: Option<u64>) {
        self.core.fail(from, || {
            let _ = self.failure.set(error);
        });
        // After `fail_after` the jobs before `from` may still become durable: the pipeline
        // tells the followers once none is left (`Inner::settle_failure`). After `fail`
        // nothing more becomes durable.
        if from.is_none() {
            self.tell_followers();
        }
    }

    /// Tells the followers' and consumers' gate of the failure (nothing more will become
    /// durable), if there is one.
    pub(crate) fn tell_followers(&self) {
        if let (Some(live), Some(e)) = (self.on_failure.get(), self.failure.get()) {
            live.fail(e.clone());
        }
    }

    /// Tells `live` (the followers' and consumers' gate) of a failure, when one happens.
    pub(crate) fn notify_on_failure(&self, live: Arc<crate::reader::LiveLog>) {
        let _ = self.on_failure.set(live);
    }

    /// Wakes the futures the watermark (or a failure) completed. Runs after the `SeqCst`
    /// read-modify-write of the watermark that completed them. Wakers are user code: they
    /// run outside every lock, and one that panics is caught.
    pub fn wake_futures(&self) {
        self.core.wake_futures();
    }

    /// Polls a future waiting for `pos`, registered under its `token` (see
    /// [`Watermark::poll`]).
    fn poll(&self, pos: u64, token: &mut u64, waker: &Waker) -> Poll<Result<()>> {
        let poll = self
            .core
            .poll(pos, token, waker)
            .map(|done| self.result(done));
        if poll.is_pending() {
            if let Some(help) = self.helper.get() {
                help(pos, false);
            }
        }
        poll
    }

    /// Blocks until the request ending at `pos` completes or `deadline` passes.
    ///
    /// Without a deadline, and with nothing in flight, it first offers to write the
    /// request's window itself (`Completion::helper`, `pipeline::flusher::help`): then
    /// nothing is handed to the flusher's thread and back, and it returns when its own sync
    /// does (1 x 1: p50 as a lock + write + fdatasync per put, docs/decisions.md "A waiter
    /// writes its own window").
    ///
    /// After a short spin, a thread that waits alone parks until the advance that completes
    /// `pos` unparks it; one that waits beside others may first yield (`yield_wait`). Alone
    /// (one writer with one request outstanding), yielding through the ~120 µs sync burned
    /// the otherwise idle core: the process used 2.5-3x okaywal's CPU per put at 1 × 1, and
    /// parks bring that to 1.1-1.3x. It cost p50 (up to 14 µs, mostly a slower `fdatasync`
    /// return once no vCPU is busy): a trade, not a free win. A timed park until just before
    /// the sync's forecast end, then yields, kept much of the waste (a timed wake-up costs
    /// twice an unparked one's CPU on this VM, and its lateness leaves tens of µs to yield).
    /// Beside other waiters yielding is kept: parks looked no worse at 4 × 1 and 16 × 1 but
    /// were not shown harmless at 4 × 256 on the noisy machine (docs/decisions.md, "CPU per
    /// put at 1 × 1").
    pub fn wait(&self, pos: u64, deadline: Option<Instant>) -> Result<()> {
        if let Some(r) = self.status(pos) {
            return r;
        }
        // With nothing in flight, write our own window at once (before the flusher, woken by
        // our publish, takes it), instead of waiting for the flusher and being woken by it (`pipeline::flusher::help`). Not under a deadline: the sync can
        // take longer than it.
        if let Some(help) = self.helper.get() {
            help(pos, deadline.is_none());
            if let Some(r) = self.status(pos) {
                return r;
            }
        }
        // A short spin catches a batch that is about to land without paying for a sleep and
        // a wake-up: it can pay where completions come µs apart (`NoSync`, a fast device).
        // Where syncs take 80-200 µs it almost never does (0 of 200,000 waits at 16 x 1,
        // 0.4 % at 4 x 256 on this VM), and at 16 x 1 it was 5 % of all CPU, taken from the
        // writers the next window waits for: then only one wait in `PROBE_EVERY` tries it.
        if self.spin_credit.worth_trying() {
            let mut landed = None;
            for _ in 0..SPINS {
                std::hint::spin_loop();
                landed = self.status(pos);
                if landed.is_some() {
                    break;
                }
            }
            self.spin_credit.record(landed.is_some());
            if let Some(r) = landed {
                return r;
            }
        }
        let waiting = Waiting::enter(&self.waiters);
        if waiting.others > 0 {
            if let Some(r) = self.yield_wait(pos, deadline) {
                return r;
            }
        }
        let slept = self.core.sleep_until(pos, deadline, slot());
        match slept {
            Some(done) => self.result(done),
            None => Err(Error::Timeout),
        }
    }

    /// Waits by yielding the CPU, RocksDB's `AwaitState` way (only beside other waiters: see
    /// `wait`): worth it only while this thread has a core to itself, where it saves the
    /// wake-up from a park (a few µs to 25 µs on this VM, on a 150 µs sync). A yield that
    /// takes long means other threads want the core: then it gives up and parks.
    /// `yield_credit` remembers whether yielding has been paying off, so a loaded engine stops
    /// trying (except for an occasional probe).
    fn yield_wait(&self, pos: u64, deadline: Option<Instant>) -> Option<Result<()>> {
        if !self.yield_credit.worth_trying() {
            return None;
        }
        let start = Instant::now();
        let until = deadline.map_or(start + YIELD_MAX, |d| d.min(start + YIELD_MAX));
        let mut last = start;
        let mut slow = 0;
        let outcome = loop {
            std::thread::yield_now();
            if let Some(r) = self.status(pos) {
                break Some(r);
            }
            let now = Instant::now();
            if now - last > SLOW_YIELD {
                slow += 1;
                if slow >= SLOW_YIELDS_MAX {
                    break None;
                }
            }
            if now >= until {
                break None;
            }
            last = now;
        };
        self.yield_credit.record(outcome.is_some());
        outcome
    }
}
/// Whether a way of waiting (the spin, yielding) has been paying off: a moving average of +1
/// (the request completed meanwhile) and -1 (it did not), scaled by 1024. While it is
/// negative only one try in [`PROBE_EVERY`] goes ahead, so that a change of load is noticed.
#[derive(Default)]
struct Credit {
    score: AtomicI32,
    probes: AtomicU32,
}

impl Credit {
    fn worth_trying(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= 0
            || self
                .probes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PROBE_EVERY)
    }

    fn record(&self, paid_off: bool) {
        let sample = if paid_off { 1024 } else { -1024 };
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c - c / 16 + sample / 16)
            });
    }
}

/// The spin's iterations before a waiter yields or sleeps (a few µs).
const SPINS: u32 = 64;

/// The longest [`Completion::yield_wait`] yields before it parks: a sync on this machine's
/// disk takes 150–200 µs.
const YIELD_MAX: Duration = Duration::from_micros(300);
/// A yield that took longer than this ran another thread meanwhile.
const SLOW_YIELD: Duration = Duration::from_micros(3);
/// After this many slow yields the waiter parks: it is taking the core from others.
const SLOW_YIELDS_MAX: u32 = 3;
/// With bad credit, one wait in this many still tries the spin or yielding (the load may
/// have changed).
const PROBE_EVERY: u32 = 64;

/// Counts a thread in `Completion::waiters` while it waits; `others` is how many were
/// there when it came.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    others: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Waiting<'a> {
        let others = count.fetch_add(1, Ordering::Relaxed);
        Waiting { count, others }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A small number for the calling thread, given out in turn: the first threads to ask get
/// distinct ones (anchors' stripes and sleep bits are picked by it).
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

/// How the calling thread is woken from `Watermark::sleep_until`: its bit among the 32 of
/// the bell's bitset, distinct for 32 threads in turn (Linux); its handle elsewhere.
#[cfg(target_os = "linux")]
fn slot() -> crate::watermark::Slot {
    1 << (thread_index() % 32)
}

#[cfg(not(target_os = "linux"))]
fn slot() -> crate::watermark::Slot {
    std::thread::current()
}

/// How a ticket holds its engine's [`Completion`]: one of a few `Arc`s that each own a
/// reference to it, chosen by the submitting thread ([`Anchors::get`]).
pub(crate) type Anchor = Arc<CachePadded<Arc<Completion>>>;

/// The anchors of one engine's tickets. Every ticket made or dropped changes the reference
/// count of the `Arc` it holds; had they all held the one `Arc<Completion>`, its count
/// would be a line every submitting thread writes, bouncing between cores. Each thread
/// clones its own stripe's anchor instead, a separate allocation on its own cache lines, so
/// a thread's tickets write a count that stays in its own cache (4 x 256: +7.3 % puts/s in
/// alternated pairs; docs/decisions.md, "A submitting thread's stalls").
pub(crate) struct Anchors(Box<[Anchor]>);

/// Stripes per engine: more than the threads that usually submit at once, few enough that
/// the anchors take a few KiB.
const STRIPES: usize = 16;

impl Anchors {
    pub fn new(completion: &Arc<Completion>) -> Anchors {
        Anchors(
            (0..STRIPES)
                .map(|_| Arc::new(CachePadded::new(completion.clone())))
                .collect(),
        )
    }

    /// The calling thread's anchor, cloned.
    pub fn get(&self) -> Anchor {
        // Threads take stripes in turn, so the first `STRIPES` threads share none.
        self.0[thread_index() % STRIPES].clone()
    }
}

/// "Accepted, in progress": completes when the request's batch is durable.
///
/// A ticket is a position in the engine's total order; waiting means "durable watermark >=
/// my position". Dropping a ticket unawaited loses nothing: the request still happens.
///
/// Awaited, it is a future that leaves one waker with the engine, its last poll's, which the
/// engine lets go of when the request completes or the ticket is dropped. A clone is a
/// future of its own.
#[must_use = "a ticket says when the request is durable; drop it only if you do not care"]
pub struct Ticket {
    pos: u64,
    anchor: Anchor,
    /// [`NOT_A_FLUSH`], or a `flush`'s ticket, whose position is the last request's (whose
    /// refusal is not its own): the spells of refusals for room it came after
    /// (`crate::room`).
    flush: u64,
    /// As a future: its token among the engine's pending futures' wakers (0 until a poll
    /// first registers one; `FutureWakers`). Its own, so a clone starts without one.
    future: u64,
}

impl Clone for Ticket {
    fn clone(&self) -> Ticket {
        Ticket {
            pos: self.pos,
            anchor: self.anchor.clone(),
            flush: self.flush,
            future: 0,
        }
    }
}

impl Drop for Ticket {
    /// A future dropped before its request completed takes its waker out of the engine's
    /// list: the list holds no task that stopped waiting (a timeout around the `await`, a
    /// `select!` that took another branch). Complete, its entry is gone already, or goes
    /// with the wake-up that follows the completing advance.
    fn drop(&mut self) {
        self.completion().core.drop_future(self.pos, self.future);
    }
}

/// `Ticket::flush` of a request's ticket.
const NOT_A_FLUSH: u64 = u64::MAX;

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("position", &self.pos)
            .field("done", &self.is_done())
            .finish()
    }
}

impl Ticket {
    pub(crate) fn new(pos: u64, anchor: Anchor) -> Ticket {
        let flush = NOT_A_FLUSH;
        Ticket {
            pos,
            anchor,
            flush,
            future: 0,
        }
    }

    /// The ticket of a `flush` at `pos`, made after `spells` spells of refusals for room.
    pub(crate) fn flush(pos: u64, anchor: Anchor, spells: u64) -> Ticket {
        let flush = spells;
        Ticket {
            pos,
            anchor,
            flush,
            future: 0,
        }
    }

    fn completion(&self) -> &Completion {
        &self.anchor
    }

    /// The request's place in the engine's total order (its end position in the ring).
    /// Positions order the requests of one engine instance; they start again from 0 when
    /// the directory is reopened.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// True once the request is durable or has failed.
    pub fn is_done(&self) -> bool {
        self.completion().status(self.pos).is_some()
    }

    /// The engine's record of duplicate requests (see `crate::ids`).
    pub(crate) fn duplicates(&self) -> &Duplicates {
        &self.completion().duplicates
    }

    /// The outcome if the request is complete, without blocking.
    pub fn try_result(&self) -> Option<Result<Seq>> {
        let done = self.completion().status(self.pos)?;
        Some(self.completion().outcome(self.pos, done, self.flush))
    }

    /// Blocks until the request is durable or its batch failed (`Err`). Durable, it gives
    /// the sequence number of the batch the request was written in (for a `flush`, or a
    /// request whose window wrote nothing, the last window's batch before it; compaction
    /// batches written since are not counted, and resuming after that batch replays them:
    /// copies of values already seen): every batch up to it is durable, so a caller can
    /// record "my state is the log up to this batch" and resume from the next
    /// (`Engine::follow`). A ticket looked at long after it completed
    /// (more than 65,536 windows later) may get [`Error::SeqUnknown`] instead: the request
    /// is durable, its batch no longer remembered.
    ///
    /// If nothing else is being written or synced and the last window came from one
    /// producer, the calling thread writes and syncs the request's window itself instead of handing it to the engine's thread and being woken
    /// (a group commit's leader): a lone writer then pays no thread hand-off. So a merge
    /// operator may run on the caller's thread, and the call takes as long as that sync.
    /// `wait_timeout` does not (the sync could outlast its timeout), unless its timeout has
    /// no end the clock can reach.
    ///
    /// # Errors
    ///
    /// - The error that failed the engine, if the request was not durable then: the
    ///   [`Error::Io`] of the write or sync that failed (naming the call and the file), or
    ///   [`Error::Failed`] with the cause ([`Error::Panicked`], [`Error::Stalled`], ...).
    ///   The request may or may not be in the log: reopen and read.
    /// - [`Error::NoSpace`]: its window was refused for lack of room on the disk (nothing of
    ///   it applied: submit it again after [`Engine::resume`](crate::Engine::resume)); for a
    ///   `flush`, a write it covers was.
    /// - [`Error::MergeRefused`]: a merge (or a batch holding one) that the operator refused
    ///   in the flusher; nothing of the request applied, the engine goes on.
    /// - [`Error::SeqUnknown`]: durable, but looked at too late to tell its batch (above).
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// match engine.put(b"k", b"v")?.wait() {
    ///     // Durable in batch `seq`: every batch up to it is durable too.
    ///     Ok(seq) => println!("durable in batch {seq:?}"),
    ///     // No room on the disk for the next segment: nothing of it applied; make room,
    ///     // `Engine::resume`, submit it again.
    ///     Err(Error::NoSpace { cause }) => eprintln!("disk full: {cause}"),
    ///     // The engine failed (a write or sync did): it may or may not be in the log.
    ///     // Close, drop and reopen the engine, then read to find out.
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(&self) -> Result<Seq> {
        let done = self.completion().wait(self.pos, None);
        self.completion().outcome(self.pos, done, self.flush)
    }

    /// As `wait`, giving up with `Error::Timeout` after `timeout` (the request goes on). A
    /// timeout too long for the clock to reach its end (`Duration::MAX`) waits as `wait` does.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the request is not complete in time (wait again later), else
    /// those of [`Ticket::wait`].
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error};
    /// use std::time::Duration;
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// let ticket = engine.put(b"k", b"v")?;
    /// let seq = loop {
    ///     match ticket.wait_timeout(Duration::from_secs(1)) {
    ///         Ok(seq) => break seq,
    ///         // Not durable yet: the request goes on. Do something else, then wait again.
    ///         Err(Error::Timeout) => continue,
    ///         Err(e) => return Err(e), // its window failed: see `Ticket::wait`
    ///     }
    /// };
    /// // Once complete, the outcome can be read without blocking.
    /// assert_eq!(ticket.try_result().expect("complete")?, seq);
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Seq> {
        let done = self.completion().wait(self.pos, deadline_after(timeout));
        self.completion().outcome(self.pos, done, self.flush)
    }
}

impl Ticket {
    /// Polls for the request's completion as a future: check, register the waker under the
    /// ticket's token, fence, check again (the protocol the loom models of
    /// `pipeline::handoff` check).
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Ticket {
            pos,
            anchor,
            future,
            ..
        } = self;
        let completion: &Completion = anchor;
        completion.poll(*pos, future, cx.waker())
    }
}

impl Future for Ticket {
    type Output = Result<Seq>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Seq>> {
        let this = self.get_mut();
        match this.poll_done(cx) {
            Poll::Ready(done) => Poll::Ready(this.completion().outcome(this.pos, done, this.flush)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The deadline `timeout` from now; `None` (no deadline) if the clock cannot represent it,
/// as for `Duration::MAX`: such a wait never times out.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Where the flusher leaves a windowed get's answer.
#[derive(Default)]
pub(crate) struct GetSlot {
    value: Mutex<Option<Option<Vec<u8>>>>,
}

impl GetSlot {
    pub fn fill(&self, value: Option<Vec<u8>>) {
        *self.value.lock() = Some(value);
    }
}

/// A windowed read: completes, with the value as of the read's place in the order, once its
/// window is durable (no reader ever sees a value a crash could take back; under
/// `Durability::NoSync`, nothing is synced, so a power loss can).
#[must_use = "a get ticket carries the value read"]
pub struct GetTicket {
    ticket: Ticket,
    slot: Arc<GetSlot>,
}

impl std::fmt::Debug for GetTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTicket")
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl GetTicket {
    pub(crate) fn new(ticket: Ticket, slot: Arc<GetSlot>) -> GetTicket {
        GetTicket { ticket, slot }
    }

    fn take(&self, done: Result<()>) -> Result<Option<Vec<u8>>> {
        done?;
        match self.slot.value.lock().take() {
            Some(v) => Ok(v),
            // The watermark passed but the answer was already taken by an earlier wait.
            None => Err(Error::ValueTaken),
        }
    }

    /// The request's place in the engine's total order.
    pub fn position(&self) -> u64 {
        self.ticket.pos
    }

    /// True once the value is available or the read failed.
    pub fn is_done(&self) -> bool {
        self.ticket.is_done()
    }

    /// Blocks until the read completes; `Ok(None)` means the key was absent or deleted.
    /// The value can be taken once; a second successful wait reports `Error::ValueTaken`.
    ///
    /// # Errors
    ///
    /// [`Error::ValueTaken`] as above; the error that failed the engine if the get's window
    /// was not durable then, as [`Ticket::wait`] gives it.
    pub fn wait(&self) -> Result<Option<Vec<u8>>> {
        self.take(self.ticket.completion().wait(self.ticket.pos, None))
    }

    /// As `wait`, giving up with `Error::Timeout` after `timeout`; the read goes on and the
    /// ticket can be waited on again. A timeout too long for the clock to reach its end
    /// (`Duration::MAX`) waits as `wait` does.
    ///
    /// # Errors
    ///
    /// As [`GetTicket::wait`]'s, and [`Error::Timeout`] as above.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = deadline_after(timeout);
        self.take(self.ticket.completion().wait(self.ticket.pos, deadline))
    }
}

impl Future for GetTicket {
    type Output = Result<Option<Vec<u8>>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.ticket.poll_done(cx) {
            Poll::Ready(done) => Poll::Ready(this.take(done)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An error as a failed write or sync gives it.
    fn io_error(op: &'static str) -> Error {
        Error::io(op, "/log/00000001.seg", std::io::Error::other(op))
    }

    /// `n` threads, the k-th blocked in `wait` for position 10 k (after a stale unpark token,
    /// which must not let it return early), each sending (k, the watermark it saw) once it
    /// returns. Returns once all of them sleep (not required for correctness: a late sleeper
    /// sees the watermark instead of being woken, which the callers' assertions accept too).
    fn sleeping_waiters(
        c: &Arc<Completion>,
        n: u64,
    ) -> (Vec<std::thread::JoinHandle<()>>, mpsc::Receiver<(u64, u64)>) {
        let (tx, rx) = mpsc::channel();
        let threads = (1..=n)
            .map(|pos| {
                let (c, tx) = (c.clone(), tx.clone());
                std::thread::spawn(move || {
                    std::thread::current().unpark();
                    c.wait(pos * 10, None).unwrap();
                    tx.send((pos, c.durable())).unwrap();
                })
            })
            .collect();
        while c.core.sleepers().0 < n as usize {
            std::thread::yield_now();
        }
        (threads, rx)
    }

    /// Each of several threads waits for its own position; the watermark advances one
    /// position at a time. A thread must not return before its position is durable, every
    /// thread must return once it is, and no sleeper entry may be left behind.
    #[test]
    fn an_advance_wakes_exactly_the_waiters_it_completes() {
        // More waiters than the 32 bits blocked threads sleep with: some share a bit, and
        // one woken for another's advance must sleep again.
        const WAITERS: u64 = 40;
        let c = Arc::new(Completion::new(0));
        let (threads, rx) = sleeping_waiters(&c, WAITERS);
        let mut done = Vec::new();
        for step in 1..=WAITERS {
            c.advance(step * 10);
            let (pos, seen) = rx.recv_timeout(Duration::from_secs(30)).expect("woken");
            assert_eq!(pos, step, "a waiter returned out of turn");
            assert!(
                seen >= pos * 10,
                "returned at watermark {seen} before {}",
                pos * 10
            );
            done.push(pos);
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done, (1..=WAITERS).collect::<Vec<_>>());
        assert_eq!(c.core.sleepers().0, 0);
        assert_eq!(c.core.sleepers().1, 0);
    }

    /// One advance that completes many blocked waiters wakes them all (the waker gathers
    /// every completed sleeper's bit into one call), and only them: those it does not
    /// complete stay asleep, sharing bits with woken ones or not.
    #[test]
    fn one_advance_wakes_all_the_waiters_it_completes() {
        const WAITERS: u64 = 40;
        let c = Arc::new(Completion::new(0));
        let (threads, rx) = sleeping_waiters(&c, WAITERS);
        for (advance, first, last) in [
            (WAITERS / 2, 1, WAITERS / 2),
            (WAITERS, WAITERS / 2 + 1, WAITERS),
        ] {
            c.advance(advance * 10);
            let mut woken: Vec<u64> = (first..=last)
                .map(|_| {
                    let (pos, seen) = rx.recv_timeout(Duration::from_secs(30)).expect("woken");
                    assert!(seen >= pos * 10, "{pos} returned at watermark {seen}");
                    pos
                })
                .collect();
            woken.sort_unstable();
            assert_eq!(woken, (first..=last).collect::<Vec<_>>());
            assert_eq!(
                c.core.sleepers().0,
                (WAITERS - last) as usize,
                "the waiters not yet complete still sleep"
            );
        }
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Tickets made on many threads go through different anchors and still share the one
    /// completion: an advance completes each of them, a thread keeps its own anchor, and a
    /// ticket outlives the anchors it was made from (an engine dropped before its tickets).
    #[test]
    fn tickets_of_every_stripe_see_the_one_completion() {
        let c = Arc::new(Completion::new(0));
        let anchors = Arc::new(Anchors::new(&c));
        let tickets: Vec<(Ticket, Ticket)> = (1..=2 * STRIPES as u64)
            .map(|pos| {
                let anchors = anchors.clone();
                std::thread::spawn(move || {
                    (
                        Ticket::new(pos, anchors.get()),
                        Ticket::new(pos, anchors.get()),
                    )
                })
                .join()
                .unwrap()
            })
            .collect();
        for (a, b) in &tickets {
            assert!(Arc::ptr_eq(&a.anchor, &b.anchor), "one thread, one anchor");
            assert!(std::ptr::eq(a.completion(), &*c));
        }
        let distinct = (0..tickets.len())
            .filter(|&i| (0..i).all(|j| !Arc::ptr_eq(&tickets[i].0.anchor, &tickets[j].0.anchor)))
            .count();
        assert!(
            distinct > 1,
            "all {} threads shared one anchor",
            tickets.len()
        );
        drop(anchors);
        c.advance(STRIPES as u64);
        for (pos, (a, _)) in (1..).zip(&tickets) {
            assert_eq!(a.is_done(), pos <= STRIPES as u64, "ticket at {pos}");
        }
        c.advance(2 * STRIPES as u64);
        assert!(tickets.iter().all(|(a, b)| a.is_done() && b.is_done()));
    }

    #[test]
    fn a_timed_out_wait_leaves_no_sleeper_and_can_wait_again() {
        let c = Arc::new(Completion::new(5));
        let r = c.wait(6, Some(Instant::now() + Duration::from_millis(20)));
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert_eq!(c.core.sleepers().0, 0);
        assert_eq!(c.core.sleepers().1, 0);
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait(6, None))
        };
        c.advance(6);
        assert!(waiter.join().unwrap().is_ok());
        // Already durable: no sleeping at all.
        assert!(c.wait(6, Some(Instant::now())).is_ok());
    }

    /// A failed write fails only what came after the jobs already handed on: those wait for
    /// their own sync, whose success still acknowledges them (and a later failure of that
    /// sync fails them). Outcomes never change once seen.
    #[test]
    fn a_failure_after_a_position_leaves_earlier_requests_to_their_sync() {
        let c = Arc::new(Completion::new(0));
        c.advance(5);
        c.fail_after(io_error("write failed"), 20);
        assert!(matches!(c.status(5), Some(Ok(()))));
        assert!(
            c.status(10).is_none(),
            "handed on before the failure: pending"
        );
        assert!(c.status(20).is_none());
        assert!(matches!(c.status(21), Some(Err(_))));
        assert!(!c.may_complete(21) && c.may_complete(20));
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait(10, None))
        };
        // Its sync succeeds: acknowledged, but the watermark stops at 20.
        c.advance(10);
        assert!(waiter.join().unwrap().is_ok());
        c.advance(30);
        assert_eq!(c.durable(), 20);
        assert!(matches!(c.status(25), Some(Err(_))));
        // A sync failure now fails what is not yet durable; it never raises the limit.
        let c = Completion::new(0);
        c.fail_after(io_error("write failed"), 20);
        c.advance(8);
        c.fail(io_error("sync failed"));
        c.fail_after(io_error("later"), 100);
        assert!(matches!(c.status(8), Some(Ok(()))));
        assert!(matches!(c.status(9), Some(Err(_))));
        c.advance(20);
        assert_eq!(c.durable(), 8);
    }

    /// Completions come in order: an advance to below the watermark is a caller's bug,
    /// caught where debug assertions are on (the test profile `release-checked`).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "watermark moved backwards")]
    fn an_advance_backwards_is_caught() {
        let c = Completion::new(0);
        c.advance(10);
        c.advance(5);
    }

    #[test]
    fn a_failure_wakes_every_waiter_with_the_error() {
        let c = Arc::new(Completion::new(0));
        let waiters: Vec<_> = (1..=4u64)
            .map(|pos| {
                let c = c.clone();
                std::thread::spawn(move || c.wait(pos, None))
            })
            .collect();
        while c.core.sleepers().0 < 4 {
            std::thread::yield_now();
        }
        c.advance(2);
        c.fail(io_error("disk on fire"));
        let results: Vec<_> = waiters.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
        for r in &results[2..] {
            assert!(
                matches!(r, Err(Error::Io { op, .. }) if *op == "disk on fire"),
                "{r:?}"
            );
        }
        // Sticky: a later advance moves nothing and a later wait fails at once.
        c.advance(10);
        assert_eq!(c.durable(), 2);
        assert!(c.wait(3, None).is_err());
    }

    /// CPU time the calling thread has used.
    #[cfg(target_os = "linux")]
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call to fill in.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// A lone waiter (one writer, one request outstanding) sleeps through each sync instead
    /// of spending CPU on it (it used to yield through every sync: about a core at 1 × 1),
    /// and is still woken by every advance. A thread that yields or spins uses CPU whenever
    /// it has a core, so over these waits it would use most of the wall time even on a
    /// loaded machine; a parked one pays a wake-up per wait, a few per cent.
    #[cfg(target_os = "linux")]
    #[test]
    // Miri has no thread CPU clock (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)` fails there),
    // and what this measures is CPU time, not memory: the waits it makes are the other
    // tests' waits.
    #[cfg_attr(miri, ignore)]
    fn a_lone_waiter_sleeps_instead_of_spending_cpu() {
        let c = Arc::new(Completion::new(0));
        const WAITS: u64 = 200;
        let syncs = {
            let c = c.clone();
            std::thread::spawn(move || {
                for pos in 1..=WAITS {
                    // About a sync's time (the sleep's timer slack makes it longer).
                    std::thread::sleep(Duration::from_micros(150));
                    c.advance(pos);
                }
            })
        };
        let (cpu, wall) = (thread_cpu(), Instant::now());
        for pos in 1..=WAITS {
            let r = c.wait(pos, None);
            assert!(r.is_ok(), "{r:?}");
        }
        let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
        syncs.join().unwrap();
        assert!(
            cpu < wall / 4,
            "{WAITS} waits over {wall:?} used {cpu:?} of CPU"
        );
        assert_eq!(c.core.sleepers().0, 0);
    }

    /// Beside another waiter a wait may yield first; yielding that never pays off (the wait
    /// times out while yielding) is given up: the credit goes negative, and later waits park
    /// at once (but for an occasional probe).
    /// A way of waiting that keeps failing is tried only once in `PROBE_EVERY` waits, and is
    /// tried every time again once it pays off.
    #[test]
    fn a_credit_stops_what_does_not_pay_and_resumes_what_does() {
        let credit = Credit::default();
        assert!((0..100).all(|_| credit.worth_trying()), "new: always tried");
        for _ in 0..8 {
            credit.record(false);
        }
        let tried = (0..10 * PROBE_EVERY)
            .filter(|_| credit.worth_trying())
            .count();
        assert_eq!(tried, 10, "one probe in {PROBE_EVERY}");
        for _ in 0..64 {
            credit.record(true);
        }
        assert!((0..100).all(|_| credit.worth_trying()), "paying again");
    }

    /// A spin that never sees the request complete (every wait here times out long after
    /// it) loses its credit, so later waits skip it.
    #[test]
    fn a_spin_that_never_pays_off_is_given_up() {
        let c = Completion::new(0);
        for _ in 0..32 {
            let r = c.wait(1, Some(Instant::now() + Duration::from_micros(20)));
            assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        }
        assert!(c.spin_credit.score.load(Ordering::Relaxed) < 0);
        assert!(c.wait(0, None).is_ok());
    }

    #[test]
    fn yielding_that_never_pays_off_is_given_up() {
        let c = Arc::new(Completion::new(0));
        let other = {
            let c = c.clone();
            std::thread::spawn(move || c.wait(100, None))
        };
        while c.waiters.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        for _ in 0..32 {
            let r = c.wait(1, Some(Instant::now() + Duration::from_micros(50)));
            assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        }
        assert!(c.yield_credit.score.load(Ordering::Relaxed) < 0);
        c.advance(100);
        assert!(other.join().unwrap().is_ok());
        assert!(c.wait(1, None).is_ok());
        assert_eq!(c.waiters.load(Ordering::Relaxed), 0);
    }
}
