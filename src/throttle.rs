//! Throttling on consumer lag (`Config::consumer_lag_max`): while the slowest durable consumer
//! lags the durable log by more than the limit, `put`, `delete`, `merge` and `write` are refused
//! (`Backpressure::Reject`) or wait (`Block`).
//!
//! The decision is one flag, [`Throttle::engaged`], which the submit path loads (Relaxed; it
//! is never set when no limit is configured, so an engine without one pays that load and
//! nothing else). The same word has a second flag, set while writes are refused for lack of
//! room on the disk (`crate::room`), so that the submit path pays no second load for it. It is set and cleared by whoever learns that the lag changed, each calling
//! [`Throttle::decide`] under the state lock:
//!
//! * the completion of a sync group ([`Throttle::advanced`], from `pipeline::syncer`): the
//!   durable log grew, and the lag with it, measured against the slowest committed position
//!   kept in memory (no file read);
//! * a commit of a consumer of this engine, or one opened or removed
//!   ([`Throttle::consumer_at`], [`Throttle::consumer_removed`]): the throttle's record of
//!   each consumer's position ([`Positions`]) takes the change, and no file is read (they
//!   were read at each such change, so C consumers committing each batch read C² files per
//!   batch);
//! * for consumers that commit from another process (`LogReader::consumer`, writing the same
//!   files), a re-read of every consumer file into that record ([`Throttle::measure`], also
//!   the open's first measure) at most every [`REREAD_EVERY`], by the thread that completes
//!   syncs, or by the syncer while it is idle and the flag is set ([`Throttle::reread_if_due`]).
//!   So a commit or a new consumer of another process (or a file removed by hand) counts
//!   within that interval (before, also at the next change made through this engine).
//!
//! Hysteresis: the flag is set once a lag is over its limit, and cleared once every lag is at
//! or below 90 % of its limit, so that one small commit does not flip it on and off.
//!
//! The lag in bytes is kept as a difference of one running count, the bytes of the frames made
//! durable since the engine opened: each measure records the count at which the slowest
//! consumer's lag would be zero. The frames that complete while a measure runs may be counted
//! once too often or too few (one sync group at most) until the next measure.

use crate::config::ConsumerLag;
use crate::consumer;
use crate::error::{Error, Result};
use crate::log::Segments;
use crate::reader::{LiveLog, LogReader};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How often the consumer files are read again for commits made by other processes.
pub(crate) const REREAD_EVERY: Duration = Duration::from_millis(100);

/// The slowest consumer as last measured.
#[derive(Clone, Debug, Default)]
struct Slowest {
    /// Its name and committed batch; `None`: there is no consumer (nothing to throttle on).
    committed: Option<(String, u64)>,
    /// The value of `Throttle::log_bytes` at which its lag in bytes was zero (wrapping: its
    /// lag is `log_bytes - bytes_mark`).
    bytes_mark: u64,
    /// With an age limit: the commit time of its oldest unprocessed batch (nanoseconds since
    /// the Unix epoch; `None` while it has none, or the batch has no time).
    oldest: Option<u64>,
}

/// Each consumer's committed batch as the throttle knows it: read from the files at open and
/// at each re-read ([`Throttle::measure`]), changed at each change made through this engine
/// (`Engine::consumer`, `LogReader::consumer` of its view, a commit of either,
/// `Engine::remove_consumer`). A change is recorded after its file was written, under the
/// lock a re-read holds from its reads until it replaces the record: a re-read that read the
/// old file is replaced before the change is recorded, never after. Two handles of one name
/// (an engine's and one made from its view) race for the file, the last rename winning; the
/// record holds the last commit recorded until the next re-read.
#[derive(Default)]
struct Positions {
    by_name: HashMap<String, u64>,
    /// The same, by position then name: the first is the slowest (the one a read of every
    /// file, in name order, finds first).
    by_position: BTreeSet<(u64, String)>,
}

impl Positions {
    fn set(&mut self, name: &str, committed: u64) {
        if let Some(old) = self.by_name.insert(name.to_owned(), committed) {
            self.by_position.remove(&(old, name.to_owned()));
        }
        self.by_position.insert((committed, name.to_owned()));
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.by_position.remove(&(old, name.to_owned()));
        }
    }

    /// The slowest consumer: its committed batch and name.
    fn slowest(&self) -> Option<&(u64, String)> {
        self.by_position.first()
    }
}

/// What [`Throttle::measured`] guards.
struct Measured {
    /// When the consumer files were last read.
    at: Instant,
    positions: Positions,
}

/// The throttle of one engine (see the module docs).
pub(crate) struct Throttle {
    limit: Option<ConsumerLag>,
    /// [`LAG`] while submissions are throttled; [`NO_ROOM`] while writes are refused for
    /// lack of room (`crate::room`).
    flags: AtomicU8,
    /// Bytes of the frames made durable since the engine opened (only counted with a limit).
    log_bytes: AtomicU64,
    /// The slowest consumer; held while the flag changes and while a submitter waits.
    state: Mutex<Slowest>,
    /// Notified when the flag is cleared, and on close or failure.
    released: Condvar,
    /// The wakers of the asynchronous submissions waiting (`Engine::put_async`), one entry
    /// per waiting future ([`TaskSlot`]): pushed and taken only under `state`, like
    /// `released`'s waiters, so none is missed; a future dropped while it waits takes its
    /// entry out.
    tasks: Mutex<Tasks>,
    /// When the consumer files were last read, and each consumer's position; held while
    /// they are read and while a change is recorded (one measure at a time).
    measured: Mutex<Measured>,
    /// Consumer files read (for tests: [`crate::Engine::throttle_reads`]).
    files_read: AtomicU64,
    /// Re-reads made because [`REREAD_EVERY`] had passed (for tests).
    rereads: AtomicU64,
    /// The thread that re-reads the files while the flag is set and nothing else happens
    /// (the syncer, when idle): unparked when the flag is set.
    rereader: OnceLock<Thread>,
    dir: PathBuf,
    segments: Segments,
    live: Arc<LiveLog>,
    /// The engine's retirement lock, for the views of its log made here.
    retire_lock: Arc<Mutex<()>>,
}

/// The futures waiting for the throttle to let go: each entry is one future's
/// ([`TaskSlot`]'s number) with the waker it was last polled with.
#[derive(Default)]
struct Tasks {
    /// The number the next future to register gets.
    next: u64,
    list: Vec<(u64, Waker)>,
}

/// A future's entry in the throttle's list while it waits ([`TaskSlot::poll_wait`]): polled
/// again it replaces its waker (whatever task the new one wakes), and dropped it takes the
/// entry out, so the list holds one waker per waiting future and none of a future given up
/// on (a consumer that never commits keeps the throttle engaged for ever).
pub(crate) struct TaskSlot<'a> {
    throttle: &'a Throttle,
    id: Option<u64>,
}

impl TaskSlot<'_> {
    /// As [`Throttle::wait`], for a task: `Pending` (with `cx`'s waker in the list) while
    /// the flag is set and `stop` does not hold.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>, stop: impl Fn() -> bool) -> Poll<()> {
        let t = self.throttle;
        let _s = t.state.lock();
        if !t.engaged() || stop() {
            return Poll::Ready(());
        }
        let mut tasks = t.tasks.lock();
        let tasks = &mut *tasks;
        // Still in the list (not taken by a wake-up since the last poll): the new waker
        // replaces the old one, which need not wake the same task.
        match self
            .id
            .and_then(|id| tasks.list.iter_mut().find(|(i, _)| *i == id))
        {
            Some((_, w)) => {
                if !w.will_wake(cx.waker()) {
                    w.clone_from(cx.waker());
                }
            }
            None => {
                let id = tasks.next;
                tasks.next += 1;
                tasks.list.push((id, cx.waker().clone()));
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for TaskSlot<'_> {
    /// The future ended (it was let through, or dropped while it waited): its entry, if a
    /// wake-up has not taken it, goes.
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut tasks = self.throttle.tasks.lock();
            if let Some(i) = tasks.list.iter().position(|(i, _)| *i == id) {
                tasks.list.swap_remove(i);
            }
        }
    }
}

/// `Throttle::flags`: a consumer lags past the limit.
const LAG: u8 = 1;
/// `Throttle::flags`: writes are refused for lack of room on the disk.
const NO_ROOM: u8 = 2;

/// The release point of a limit: 90 % of it (rounded down).
fn release_at(max: u64) -> u64 {
    max / 10 * 9 + max % 10 * 9 / 10
}

impl Throttle {
    /// The throttle of the engine over `dir` (its segment list and durable sequence); it does
    /// nothing if `limit` is `None`. Not engaged until the first [`Throttle::measure`].
    pub fn new(
        limit: Option<ConsumerLag>,
        dir: PathBuf,
        segments: Segments,
        live: Arc<LiveLog>,
        retire_lock: Arc<Mutex<()>>,
    ) -> Throttle {
        Throttle {
            limit,
            flags: AtomicU8::new(0),
            log_bytes: AtomicU64::new(0),
            state: Mutex::new(Slowest::default()),
            released: Condvar::new(),
            tasks: Mutex::new(Tasks::default()),
            measured: Mutex::new(Measured {
                at: Instant::now(),
                positions: Positions::default(),
            }),
            files_read: AtomicU64::new(0),
            rereads: AtomicU64::new(0),
            rereader: OnceLock::new(),
            dir,
            segments,
            live,
            retire_lock,
        }
    }

    /// Names the calling thread as the one that re-reads the files while the flag is set
    /// (see [`REREAD_EVERY`]); it is unparked whenever the flag is set.
    pub fn set_rereader(&self) {
        let _ = self.rereader.set(std::thread::current());
    }

    /// True while submissions are throttled on consumer lag.
    #[inline]
    pub fn engaged(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & LAG != 0
    }

    /// True while submissions are throttled or writes are refused for lack of room: the one
    /// load the submit path makes.
    #[inline]
    pub fn gated(&self) -> bool {
        self.flags.load(Ordering::Relaxed) != 0
    }

    /// True while writes are refused for lack of room (`crate::room`).
    #[inline]
    pub fn no_room(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & NO_ROOM != 0
    }

    /// Sets or clears the flag that sends writes to `crate::room`'s refusal. Setting it
    /// wakes the submitters waiting on the lag: every write is refused from then on, theirs
    /// too, and on a full disk the consumer they wait for may be unable to commit.
    pub fn set_no_room(&self, on: bool) {
        match on {
            true => {
                self.flags.fetch_or(NO_ROOM, Ordering::Relaxed);
                // After the flag, under `state` (in `wake_all`): a waiter either sees the
                // flag or is waiting when it is notified.
                self.wake_all();
            }
            false => {
                self.flags.fetch_and(!NO_ROOM, Ordering::Relaxed);
            }
        }
    }

    /// Frames of `bytes` bytes became durable (after `LiveLog::advance`): the lag grew.
    /// Nothing but a branch without a limit.
    #[inline]
    pub fn advanced(&self, bytes: u64) {
        if self.limit.is_none() {
            return;
        }
        self.log_bytes.fetch_add(bytes, Ordering::AcqRel);
        if self.limit.is_some_and(|l| l.age.is_some()) {
            let mut s = self.state.lock();
            let behind = s
                .committed
                .as_ref()
                .is_some_and(|(_, c)| self.live.durable_seq.load(Ordering::Acquire) > *c);
            if behind && s.oldest.is_none() {
                // Its first unprocessed batch just became durable, written moments ago.
                s.oldest = Some(crate::ids::now_nanos());
            }
        }
        self.decide();
        self.reread_if_due();
    }

    /// Reads the consumer files again if the last read is [`REREAD_EVERY`] old (and no other
    /// read is running).
    pub fn reread_if_due(&self) {
        if self.limit.is_none() {
            return;
        }
        let due = match self.measured.try_lock() {
            Some(last) => last.at.elapsed() >= REREAD_EVERY,
            None => false,
        };
        if due {
            self.rereads.fetch_add(1, Ordering::Relaxed);
            self.measure();
        }
    }

    /// Reads every consumer file into the record of positions (and with a bytes or age
    /// limit, the frames after the slowest one's commit) and decides. A file that cannot be
    /// read keeps the previous record and measure.
    pub fn measure(&self) {
        if self.limit.is_none() {
            return;
        }
        let mut m = self.measured.lock();
        if let Ok(all) = consumer::load_all(&self.dir) {
            self.files_read
                .fetch_add(all.len() as u64, Ordering::Relaxed);
            let mut positions = Positions::default();
            for (name, committed) in all {
                positions.set(&name, committed);
            }
            m.positions = positions;
            // Measured again even if the slowest is the same: the count of bytes may have
            // drifted by a sync group (see the module docs).
            self.settle(&m.positions, true);
        }
        m.at = Instant::now();
        drop(m);
        self.decide();
    }

    /// Consumer `name` was opened, made or committed through this engine at `committed`
    /// (its file written): the record takes it, no file is read, and the throttle decides.
    pub fn consumer_at(&self, name: &str, committed: u64) {
        if self.limit.is_none() {
            return;
        }
        let mut m = self.measured.lock();
        m.positions.set(name, committed);
        self.settle(&m.positions, false);
        drop(m);
        self.decide();
    }

    /// Consumer `name` was removed through this engine (its file removed, durably): it no
    /// longer holds the submitters back.
    pub fn consumer_removed(&self, name: &str) {
        if self.limit.is_none() {
            return;
        }
        let mut m = self.measured.lock();
        m.positions.remove(name);
        self.settle(&m.positions, false);
        drop(m);
        self.decide();
    }

    /// Makes the slowest consumer of `positions` the measured one (with a bytes or age limit,
    /// its lag read from the frames after its commit: unless `again`, only if it is not the
    /// one measured already, at the same position).
    fn settle(&self, positions: &Positions, again: bool) {
        let slowest = positions.slowest().map(|(c, name)| (name.clone(), *c));
        if self
            .limit
            .is_some_and(|l| l.bytes.is_none() && l.age.is_none())
        {
            self.state.lock().committed = slowest;
            return;
        }
        let Some((name, committed)) = slowest else {
            *self.state.lock() = Slowest::default();
            return;
        };
        if !again && self.state.lock().committed.as_ref() == Some(&(name.clone(), committed)) {
            return;
        }
        let view = LogReader::of_engine(
            &self.dir,
            self.segments.clone(),
            self.live.clone(),
            self.retire_lock.clone(),
            None,
            // Only read: no consumer is made from it, nor a backup.
            crate::log::io::real(),
        );
        let c = view.consumer_info(name, committed, std::time::SystemTime::now());
        // Read after the view: it counts at least the frames the view holds (see the module
        // docs for the one group it may count too many).
        let log_bytes = self.log_bytes.load(Ordering::Acquire);
        let nanos = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        *self.state.lock() = Slowest {
            committed: Some((c.name, c.committed.get())),
            bytes_mark: log_bytes.wrapping_sub(c.lag_bytes),
            oldest: c.oldest_unprocessed.map(nanos),
        };
    }

    /// Sets the flag if a lag is over its limit, clears it (and wakes the waiting submitters)
    /// once every lag is at or below its release point.
    fn decide(&self) {
        let Some(limit) = self.limit else { return };
        let s = self.state.lock();
        let (batches, bytes, age) = self.lag(&s);
        let over = |lag: u64, max: Option<u64>| max.is_some_and(|m| lag > m);
        let under = |lag: u64, max: Option<u64>| max.is_none_or(|m| lag <= release_at(m));
        let age_max = limit.age.map(crate::ids::nanos);
        let engaged = self.engaged();
        let is_over =
            over(batches, limit.batches) || over(bytes, limit.bytes) || over(age, age_max);
        if !engaged && is_over {
            self.flags.fetch_or(LAG, Ordering::Relaxed);
            // Idle, it parks without a timeout unless the flag is set: let it see the flag.
            if let Some(t) = self.rereader.get() {
                t.unpark();
            }
        } else if engaged
            && under(batches, limit.batches)
            && under(bytes, limit.bytes)
            && under(age, age_max)
        {
            self.flags.fetch_and(!LAG, Ordering::Relaxed);
            self.released.notify_all();
            let tasks = self.take_tasks();
            drop(s);
            wake_tasks(tasks);
        }
    }

    /// The lag of `s`'s consumer now, in batches, bytes and age in nanoseconds (zeros
    /// without a consumer; the age is 0 without an unprocessed batch with a time).
    fn lag(&self, s: &Slowest) -> (u64, u64, u64) {
        match &s.committed {
            None => (0, 0, 0),
            Some((_, c)) => (
                self.live
                    .durable_seq
                    .load(Ordering::Acquire)
                    .saturating_sub(*c),
                self.log_bytes
                    .load(Ordering::Acquire)
                    .wrapping_sub(s.bytes_mark),
                s.oldest
                    .map_or(0, |t| crate::ids::now_nanos().saturating_sub(t)),
            ),
        }
    }

    /// The error a throttled submission gets with `Backpressure::Reject`: the slowest
    /// consumer and its lag (in bytes only if a bytes limit is set: else it is not measured).
    pub fn refusal(&self) -> Error {
        let s = self.state.lock();
        let (batches, bytes, age) = self.lag(&s);
        Error::Throttled {
            consumer: s
                .committed
                .as_ref()
                .map_or_else(String::new, |(n, _)| n.clone()),
            lag: ConsumerLag {
                batches: Some(batches),
                bytes: self.limit.and_then(|l| l.bytes).map(|_| bytes),
                age: self
                    .limit
                    .and_then(|l| l.age)
                    .map(|_| Duration::from_nanos(age)),
            },
        }
    }

    /// Blocks while the flag is set, until it is cleared or `stop` (the engine closed or
    /// failed, or writes are refused for room: see [`Throttle::wake_all`]) holds.
    pub fn wait(&self, stop: impl Fn() -> bool) {
        let mut s = self.state.lock();
        while self.engaged() && !stop() {
            self.released.wait(&mut s);
        }
    }

    /// Wakes every waiting submitter to look at its `stop` condition again (after a close or
    /// a failure).
    pub fn wake_all(&self) {
        let tasks = {
            let _s = self.state.lock();
            self.released.notify_all();
            self.take_tasks()
        };
        wake_tasks(tasks);
    }

    /// A waiting future's entry in the list of tasks (see [`TaskSlot::poll_wait`]).
    pub fn task_slot(&self) -> TaskSlot<'_> {
        TaskSlot {
            throttle: self,
            id: None,
        }
    }

    /// Takes the waiting tasks off the list; called under `state`, where they register, so
    /// none registers after the flag changed and misses its wake-up. They are woken after the
    /// lock is released ([`wake_tasks`]): a waker may poll its task at once, on this thread,
    /// and the task's `poll_wait` takes `state`.
    fn take_tasks(&self) -> Vec<(u64, Waker)> {
        std::mem::take(&mut self.tasks.lock().list)
    }
}

/// Wakes tasks taken off the throttle's list, each on its own: a waker is user code.
fn wake_tasks(tasks: Vec<(u64, Waker)>) {
    for (_, t) in tasks {
        crate::sync::wake_user(t);
    }
}

/// Where a submission meets the throttle.
impl crate::Engine {
    /// Lets a put, delete, merge or write of `len` payload bytes through unless the slowest
    /// consumer lags past `Config::consumer_lag_max` or writes are refused for lack of room
    /// (`NoSpace`): one Relaxed load when neither.
    #[inline]
    pub(crate) fn admit(&self, len: usize) -> Result<()> {
        match self.inner.throttle.gated() {
            false => Ok(()),
            true => self.throttled(len),
        }
    }

    /// `Error::NoSpace` while writes are refused for lack of room (`crate::room`); the
    /// room's lock is taken only while its flag is set.
    pub(crate) fn refused_for_room(&self) -> Result<()> {
        let inner = &*self.inner;
        match (inner.throttle.no_room())
            .then(|| inner.completion.room.refusal())
            .flatten()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A submission of `len` payload bytes while throttled on consumer lag: refused with
    /// `Error::Throttled` (`Backpressure::Reject`), or held until the lag falls to its release
    /// point, writes are refused for lack of room (`NoSpace`), or the engine closes or fails
    /// (then `submit` reports that).
    #[cold]
    fn throttled(&self, len: usize) -> Result<()> {
        let inner = &*self.inner;
        // A request over the size limit can never get in: refused for that first, not held
        // for (or told to retry after) a lag or a full disk that no wait cures.
        self.check_submit(len)?;
        self.refused_for_room()?;
        // A closed engine takes nothing: `Throttled` would say retry (`Block` waits for
        // nothing then, and the ring refuses it as `Closed`).
        if !inner.throttle.engaged() || inner.ring.is_closed() {
            return Ok(());
        }
        crate::stats::Counters::add(&inner.counters.throttled, 1);
        if inner.config.backpressure == crate::Backpressure::Reject {
            return Err(inner.throttle.refusal());
        }
        inner.throttle.wait(|| self.throttle_let_go());
        self.refused_for_room()
    }

    /// What ends a wait on the throttle besides its release: the engine closed or failed,
    /// or writes refused for lack of room (every submission is refused then).
    pub(crate) fn throttle_let_go(&self) -> bool {
        let inner = &*self.inner;
        inner.ring.is_closed() || inner.completion.failure().is_some() || inner.throttle.no_room()
    }

    /// The consumer files the throttle on consumer lag has read since open, and how many of
    /// its re-reads were made because `REREAD_EVERY` (100 ms) had passed: each of those
    /// reads every file. For tests; not a stable API.
    #[doc(hidden)]
    pub fn throttle_reads(&self) -> (u64, u64) {
        let t = &self.inner.throttle;
        (
            t.files_read.load(Ordering::Relaxed),
            t.rereads.load(Ordering::Relaxed),
        )
    }

    /// Waits while submissions are throttled on consumer lag (`Config::consumer_lag_max`),
    /// whatever `backpressure` says: returns once the slowest consumer's lag is back at the
    /// release point (90 % of the limit), once writes are refused for lack of room, or once
    /// the engine closes or fails (the next submission reports those), and at once if
    /// nothing is throttled. For a producer refused with [`Error::Throttled`] under
    /// `Backpressure::Reject` that must not give up (a Raft log store's vote): it submits
    /// again when the lag has fallen, woken by the consumer's commit, instead of polling.
    /// Other producers may take the room first: the submission may be refused again.
    pub fn wait_unthrottled(&self) {
        self.inner.throttle.wait(|| self.throttle_let_go());
    }

    /// As [`Engine::wait_unthrottled`](crate::Engine::wait_unthrottled), as a future: `Pending` (its waker registered, woken
    /// by the release) while throttled.
    pub async fn wait_unthrottled_async(&self) {
        let mut slot = self.inner.throttle.task_slot();
        std::future::poll_fn(|cx| slot.poll_wait(cx, || self.throttle_let_go())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_point_is_ninety_percent() {
        assert_eq!(release_at(1), 0);
        assert_eq!(release_at(3), 2);
        assert_eq!(release_at(10), 9);
        assert_eq!(release_at(1000), 900);
        assert_eq!(release_at(u64::MAX), u64::MAX / 10 * 9 + 4);
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An executor may poll a waiting future any number of times: the list keeps one waker
    /// per future (the newest), and a release wakes each once; a future dropped while it
    /// waits takes its entry out; one let through and polled again registers again.
    #[test]
    fn a_task_polled_again_keeps_one_waker() {
        let limit = ConsumerLag {
            batches: Some(1),
            ..ConsumerLag::default()
        };
        let segments = Arc::new(parking_lot::RwLock::new(crate::log::SegmentList::new(
            Vec::new(),
        )));
        let t = Throttle::new(
            Some(limit),
            PathBuf::new(),
            segments,
            Arc::new(LiveLog::new(0)),
            Default::default(),
        );
        t.flags.store(LAG, Ordering::Relaxed);
        let (a, b) = (
            Arc::new(Count(Default::default())),
            Arc::new(Count(Default::default())),
        );
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut sa, mut sb) = (t.task_slot(), t.task_slot());
        for _ in 0..100 {
            assert!(sa
                .poll_wait(&mut Context::from_waker(&wa), || false)
                .is_pending());
        }
        assert!(sb
            .poll_wait(&mut Context::from_waker(&wb), || false)
            .is_pending());
        assert_eq!(t.tasks.lock().list.len(), 2);
        t.wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(t.tasks.lock().list.is_empty());
        // Woken but still throttled: polled again, each registers again.
        assert!(sa
            .poll_wait(&mut Context::from_waker(&wa), || false)
            .is_pending());
        assert!(sb
            .poll_wait(&mut Context::from_waker(&wa), || false)
            .is_pending());
        assert_eq!(t.tasks.lock().list.len(), 2, "one entry per future");
        drop(sa);
        assert_eq!(
            t.tasks.lock().list.len(),
            1,
            "a dropped future's entry stayed"
        );
        t.wake_all();
        assert_eq!(
            a.0.load(Ordering::SeqCst),
            2,
            "the one still waiting is woken"
        );
        drop(sb);
        assert!(t.tasks.lock().list.is_empty());
    }
}
