//! The flusher thread (`mergelog-flusher`): the one place that cuts windows and writes the
//! log. It reads published records from the ring into a window until [`window::decide`] cuts
//! it ([`Flusher::window`]), then plans the window with the [`Coalescer`], answers its gets,
//! appends the surviving writes as one frame ([`Flusher::commit`]) and hands the [`Job`] on
//! to the syncer ([`Flusher::send`]), or completes it itself when nothing else is in flight.
//! After `close` it drains the ring, and gives up on a producer stalled between claim and
//! publish after [`CLOSE_STALL_MAX`].
//!
//! The flusher's state is a [`Desk`] behind a mutex (`Inner::desk`): whoever holds it is
//! the flusher. Usually that is the thread ([`run`]), which gives the desk up only while it
//! waits for records. A producer that waits for its own request while nothing is in flight
//! (after a window of one producer) takes the desk and writes that window itself ([`help`]),
//! as the leader of a group commit does: one writer with one request outstanding then pays
//! no thread hand-off at all, and while producers do that the thread sleeps without being
//! woken by every publish (`Inner::flusher_lazy`, [`lazy_park`]).

use super::syncer::complete_jobs;
use super::window::{self, Decision};
use super::Inner;
use super::{failed, guard_thread};
use crate::coalesce::trim;
use crate::coalesce::{Coalescer, Entry, GetAnswer, Op, Plan};
use crate::compact::{Chunk, Copied, InFlightKeys};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::ids::{self, IdEntry, Ids, RequestId};
use crate::index::{Loc, ValueRef};
use crate::log::format::UNDURABLE_FRAMES_MAX;
use crate::log::format::{
    frame_len, record_len, trailer_len, RecordOp, Trailer, FLAG_COMPACTION, FLAG_SORTED,
    FRAME_HEADER_LEN, ID_LEN, RECORD_HEADER_LEN,
};
use crate::log::{Log, WrittenFrame};
use crate::merge::{Durable, Resolver};
use crate::request;
use crate::ring::Consumer;
use crate::stats::{record, Counters};
use crate::ticket::GetSlot;
use crate::trace::{self, TraceKind};
use crossbeam::channel::{Receiver, Sender};
use parking_lot::MutexGuard;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reuses the allocation of a window's entry vector for the next window (whose slices
/// borrow the ring anew): an in-place collect keeps the buffer, so the flusher does not
/// allocate per window.
fn recycle<'a, 'b>(mut v: Vec<Entry<'a>>) -> Vec<Entry<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// One window on its way from the flusher to the syncer: everything the syncer needs,
/// copied out of the ring, so the ring space is released as soon as the frame is written.
#[derive(Default)]
pub(super) struct Job {
    /// Ring position after the window: the durable watermark once this job is complete.
    pub(super) end: u64,
    /// The frame written for the window's surviving writes, if it had any.
    pub(super) frame: Option<WrittenFrame>,
    /// Per survivor: where its key is in the frame's segment (offset, length), and the
    /// value's location (`None` for a delete). The index points at the logged key bytes.
    pub(super) updates: Vec<(u64, u32, Option<Loc>)>,
    /// Per request: submit stamp, a raw `Inner::clock` reading (for the end-to-end histogram).
    pub(super) stamps: Vec<u64>,
    /// When the flusher handed the job on, written (for `Stats::sync_time`).
    pub(super) ready: Option<Instant>,
    /// A compaction batch: no ticket waits for it, and it ends where the window before it
    /// did (so it records no window's batch for `Ticket::wait`).
    pub(super) compaction: bool,
}

/// The flusher's state: everything it reuses from window to window.
pub(super) struct Flusher {
    pub(super) inner: Arc<Inner>,
    log: Log,
    coalescer: Coalescer,
    entries: Vec<Entry<'static>>,
    /// Per request: submit time stamp.
    stamps: Vec<u64>,
    /// Per get: entry index and its slot.
    slots: Vec<(u32, Arc<GetSlot>)>,
    /// Answers of shared lookups: (first get index, gets still to answer with it, its value
    /// once read). Emptied when the window's gets are answered.
    lookups: Vec<(u32, u32, Option<Vec<u8>>)>,
    /// The plan's get answers, in entry order.
    answers: Vec<(u32, GetAnswer)>,
    /// Requests in the previous window: the adaptive policy's guess of how many producers
    /// are about to resubmit.
    prev_requests: usize,
    /// End of the last window handed to the syncer.
    in_flight: u64,
    /// (batch sequence, window end) of the frames handed on that may not be durable yet,
    /// oldest first (see [`Flusher::bound_undurable`]).
    unsynced: VecDeque<(u64, u64)>,
    to_syncer: Sender<Job>,
    /// Completed jobs come back for reuse, so no window allocates.
    spare: Receiver<Job>,
    /// Where a job completed inline goes back to the pool.
    give_back: Sender<Job>,
    /// The request ids the window logs (new ones: duplicates are dropped as they are read),
    /// for the frame's trailer.
    window_ids: Vec<[u8; ID_LEN]>,
    /// The ring end position of the request that took each of `window_ids`.
    window_id_ends: Vec<u64>,
    /// The window's duplicates of ids its own earlier requests took: end position, id.
    window_dups: Vec<(u64, [u8; ID_LEN])>,
    /// The end positions of the window's requests refused (merges), to take their ids back.
    refused_ends: Vec<u64>,
    /// The end of the last window's last request if `refuse_writes` refused it: a refusal of
    /// the request right after it (the next window's first) extends that run of refusals
    /// instead of taking a record of its own (`merge::Refusals::extend`).
    refused_run_end: Option<u64>,
    /// Per request of the window: its first entry's index and its ring end position (its
    /// ticket), to find a refused merge's request.
    requests: Vec<(u32, u64)>,
    /// The request ids of a turn's records: id, ring end position, entries, merges.
    turn_ids: Vec<(RequestId, u64, (u32, u32), u64)>,
    /// The merge stage: the merged values of the window's merges.
    resolver: Resolver,
    /// With a merge operator: the values written by windows not yet durable, which a merge
    /// folds onto instead of waiting for them to reach the index.
    in_flight_values: InFlightValues,
    /// `ValueRef::read_many`'s scratch: the locations of a window's merged keys.
    durable_locs: Vec<Option<Loc>>,
    /// While a compaction runs: the keys of the windows in flight (see `crate::compact`).
    in_flight_keys: InFlightKeys,
    /// The segment the last frame handed on went into (its first batch's sequence).
    segment: u64,
    /// The last job handed on was completed at once, by whoever holds the desk (nothing else
    /// was in flight and nothing was published behind it): see `run`.
    completed_inline: bool,
    /// A compaction batch written and not yet handed on: it goes to the syncer with the
    /// window cut after it, so that one sync covers both ([`Flusher::hold`]).
    held: Option<Job>,
}

/// One cut window's numbers.
#[derive(Default)]
struct Window {
    end: u64,
    bytes: u64,
    requests: usize,
    gets: u64,
    /// Requests dropped as duplicates of a request id already logged or in flight.
    duplicates: u64,
    /// Their operations (turned into `Op::Nop`).
    duplicate_ops: u64,
    /// Merges taken.
    merges: u64,
}

/// A completed job, kept for its buffers' capacity: without its frame, whose segment mapping
/// it would otherwise hold (keeping a retired segment's file from being reused), and without
/// buffers grown past [`JOB_KEPT_MAX`] by an unusually large window.
pub(super) fn spare(mut job: Job) -> Job {
    job.frame = None;
    trim(&mut job.updates, JOB_KEPT_MAX);
    trim(&mut job.stamps, JOB_KEPT_MAX);
    job
}

/// The most survivors (and requests) whose room a pooled job keeps: 320 KiB of index updates
/// and 64 KiB of stamps. Windows up to this size, which is every window of the benchmarks'
/// loads, reuse their job's buffers as before; a larger one (a `WriteBatch` of many writes,
/// thousands of producers at once) allocates its own, which is small beside the work of that
/// many records, and the pool no longer keeps a burst of them once the engine idles: 32 such
/// windows of 100,000 writes at once left 42 MB held before (`tests/memory.rs`).
const JOB_KEPT_MAX: usize = 8192;

/// The flusher's desk: its state, the ring's consumer and the position it reads from.
/// Whoever holds the lock (`Inner::desk`) is the flusher: its thread, or a producer that
/// waits for its own request while nothing is in flight and writes that window itself
/// ([`help`]), as the leader of a group commit does. The desk moves between threads only
/// through the mutex, so the ring keeps one consumer at a time.
pub(crate) struct Desk {
    flusher: Flusher,
    consumer: Consumer,
    pos: u64,
    /// A window started at the desk and has not returned: if it is still set when someone
    /// takes the desk, a panic unwound through the window (its lock released on the way,
    /// before the panic's guard could take the desk out). `pos` is then behind records the
    /// window decoded, and decoding a get's record twice would release its slot twice: the
    /// desk takes no more windows.
    in_window: bool,
}

/// What a waiting producer did at the desk ([`Desk::help`]).
enum Helped {
    /// It wrote a window.
    Wrote,
    /// Not now: something is in flight, a compaction batch waits, the engine failed or
    /// closed, or nothing is published at the desk.
    NotNow,
    /// The last window had several producers: windows are the flusher's to gather.
    Crowd,
}

/// What the flusher's thread does after a step at the desk.
enum Step {
    /// It cut and handed on a window (or wrote a compaction batch): look again at once.
    Worked,
    /// Nothing is published at the desk's position: wait (until the deadline, if any).
    Idle(Option<Instant>),
    /// The ring is closed and drained (or given up on): stop.
    Stop,
}

impl Desk {
    pub(super) fn new(flusher: Flusher, consumer: Consumer) -> Desk {
        let pos = consumer.ring().head();
        Desk {
            flusher,
            consumer,
            pos,
            in_window: false,
        }
    }

    /// One turn of the flusher's loop: a compaction batch if one is offered, then the next
    /// window if a record is published.
    fn step(&mut self, stalled: &mut Option<(u64, Instant)>) -> Step {
        let Desk {
            flusher,
            consumer,
            pos,
            in_window,
        } = self;
        if *in_window {
            return Step::Stop;
        }
        if flusher.inner.compact_slot.pending() {
            flusher.compact_step();
        }
        if probe(consumer, pos) {
            *in_window = true;
            *pos = flusher.window(consumer, *pos, false);
            *in_window = false;
            return Step::Worked;
        }
        // No window to carry a compaction batch written above: it goes on its own.
        flusher.release_held();
        // Padding stepped over completes nothing, but the watermark and the head move past
        // it, in order, through the syncer.
        if *pos > flusher.in_flight {
            let job = Flusher::job(&flusher.spare, *pos);
            flusher.send(job);
            consumer.release(*pos);
        }
        let ring = consumer.ring();
        if ring.is_closed() && ring.tail() <= *pos {
            return Step::Stop;
        }
        if ring.is_closed() {
            // A claim at `pos` is not published yet: wait for it, but not forever.
            let since = match *stalled {
                Some((at, since)) if at == *pos => since,
                _ => stalled.insert((*pos, Instant::now())).1,
            };
            if since.elapsed() >= CLOSE_STALL_MAX {
                flusher.give_up(*pos, since.elapsed());
                return Step::Stop;
            }
        }
        let deadline = ring
            .is_closed()
            .then(|| Instant::now() + Duration::from_micros(50));
        // Nothing to do: catch the index up first (see `Index::defer`).
        flusher.inner.index.try_apply_queued();
        Step::Idle(deadline)
    }

    /// A waiting producer's turn at the desk (see [`help`]): if nothing is in flight, cuts
    /// the window of what is published now (no waiting: the producer is the one waiting)
    /// and hands it on, which completes it at once if nothing was published behind it.
    fn help(&mut self) -> Helped {
        let f = &self.flusher;
        let inner = &*f.inner;
        if f.prev_requests > 1 {
            // Several producers came with the last window: they are about to come back, and
            // the adaptive window waits for them (a producer's own window would not, and its
            // sync would take one or two of them and leave the rest for the next: 4 x 1 lost
            // 13 %).
            return Helped::Crowd;
        }
        if self.in_window
            || f.in_flight(f.log.next_seq())
            || inner.compact_slot.pending()
            || inner.completion.failure().is_some()
            || inner.ring.is_closed()
        {
            return Helped::NotNow;
        }
        if !probe(&self.consumer, &mut self.pos) {
            return Helped::NotNow;
        }
        self.in_window = true;
        self.pos = self.flusher.window(&mut self.consumer, self.pos, true);
        self.in_window = false;
        Helped::Wrote
    }
}

/// Whether a record is published at `pos`, which moves past any padding before it: a
/// refusing visitor consumes no record (padding needs no processing).
fn probe(consumer: &Consumer, pos: &mut u64) -> bool {
    let mut published = false;
    *pos = consumer.read(*pos, |_, _| {
        published = true;
        false
    });
    published
}

/// How long the flusher's thread sleeps, while producers write their own windows
/// (`Inner::flusher_lazy`), before it looks at the ring itself: the longest a request
/// that nobody waits for stays unread then (a waiter, a future's poll, `flush` and `close`
/// wake it at once). The same bound as a window's age (`Config::window_age_max`' default).
const LAZY_PARK: Duration = Duration::from_millis(1);

/// The flusher's thread: steps at the desk while there is work; when there is none it
/// gives the desk up and sleeps until a record is claimed (or, while producers write their
/// own windows, see [`help`], for at most [`LAZY_PARK`] unless woken).
pub(super) fn run(inner: Arc<Inner>) {
    let _ = inner.flusher_thread.set(std::thread::current());
    let ring = inner.ring.clone();
    // After `close`: the unpublished claim the flusher is waiting at, and since when.
    let mut stalled: Option<(u64, Instant)> = None;
    let mut guard = inner.desk.lock();
    loop {
        let Some(desk) = guard.as_mut() else {
            return;
        };
        let deadline = match desk.step(&mut stalled) {
            Step::Worked => {
                let lone = std::mem::take(&mut desk.flusher.completed_inline);
                if lone && inner.flusher_lazy.load(Ordering::SeqCst) {
                    // We were woken to write a lone request's window while producers write
                    // their own: give the desk back at once, before its producer submits
                    // again (or it would find the desk taken and we would write every
                    // window from then on, with both hand-offs).
                    drop(guard);
                    guard = lazy_park(&inner, None);
                } else {
                    inner.flusher_lazy.store(false, Ordering::SeqCst);
                }
                continue;
            }
            Step::Stop => break,
            Step::Idle(deadline) => deadline,
        };
        let pos = desk.pos;
        if deadline.is_some() || ring.tail() > pos {
            // Closing, or a record is claimed and about to be published: wait at the desk.
            desk.consumer.wait(pos, deadline);
            continue;
        }
        drop(guard);
        guard = if inner.flusher_lazy.load(Ordering::SeqCst) {
            lazy_park(&inner, Some(pos))
        } else {
            ring.wait_for_claim(pos);
            inner.desk.lock()
        };
    }
    let desk = guard.take();
    drop(guard);
    // A compaction waiting for us gets `Closed`; none is taken after this.
    inner.compact_slot.close();
    if let Some(desk) = desk {
        // The clean-close mark names the active segment: its activation must be durable
        // (a roll leaves it to the first sync in it, and nothing may have synced there). If
        // that fails, no mark (the next open checks the tail instead), and the engine fails
        // with the error, which `close` returns: nothing in the segment was acknowledged
        // (its first sync would have made the activation durable first), and what the
        // syncers still hold there fails with it.
        match desk.flusher.log.finish_activation() {
            Ok(()) => *inner.end_mark.lock() = Some(desk.flusher.log.end_mark()),
            Err(e) => {
                inner.completion.fail(e);
                inner.throttle.wake_all();
            }
        }
    }
    // Dropping the desk closes the channel: the syncers complete what they hold and exit.
}

/// The flusher's sleep while producers write their own windows (`Inner::flusher_lazy`):
/// a producer's publish does not wake it, a producer that does not write its own request's
/// window does (`poke_if_lazy`), and so do `flush`, `close` and a compaction. With `seen`,
/// the desk's position when the flusher left it, it does not sleep if a record was claimed
/// since: a SeqCst flag (set before) and then `tail` here, against a producer's claim and
/// then the flag, so either we see its claim or it sees the flag and pokes us. Every
/// [`LAZY_PARK`] it looks at whether producers still write windows; if none did, it clears
/// the flag and takes the desk. Returns holding the desk.
fn lazy_park(inner: &Inner, mut seen: Option<u64>) -> MutexGuard<'_, Option<Desk>> {
    loop {
        let helped = inner.counters.windows_by_waiters.load(Ordering::Relaxed);
        let parked = Instant::now();
        if seen.is_none_or(|p| inner.ring.tail() <= p) {
            std::thread::park_timeout(LAZY_PARK);
        }
        if parked.elapsed() < LAZY_PARK {
            // Woken (or a claim seen): take the desk.
            return inner.desk.lock();
        }
        if inner.counters.windows_by_waiters.load(Ordering::Relaxed) == helped {
            // Nobody wrote a window meanwhile: look at the ring, and wait for it again.
            inner.flusher_lazy.store(false, Ordering::SeqCst);
            return inner.desk.lock();
        }
        // Producers write their windows: sleep on, without taking the desk from them (a
        // record none of them wrote is read by the next producer's window, or we are woken
        // for it).
        seen = None;
    }
}

/// Called by a producer waiting for its request at `pos` (`Completion::wait`, before it
/// parks): if the flusher's desk is free, nothing is in flight and the last window had one
/// producer, the producer cuts and writes the window itself, and completes it if nothing was
/// published behind it. That saves the two thread hand-offs of a lone request (to the
/// flusher and back), most of its latency besides the sync, and lets a lone writer run
/// without the flusher's thread getting a core. Otherwise, it wakes the flusher if the flusher sleeps on the assumption
/// that producers write their own windows.
pub(crate) fn help(inner: &Inner, pos: u64) {
    if let Some(mut guard) = inner.desk.try_lock() {
        let Some(desk) = guard.as_mut() else {
            return;
        };
        if pos <= desk.pos {
            // Already in a window; whoever wrote it completes it.
            return;
        }
        // A panic (a bug) fails the engine as one on the flusher's thread does, and the desk
        // goes as it does there: its position may be behind records the window had already
        // decoded, and decoding one twice would take a get's slot reference twice.
        let Some(helped) = guard_thread(inner, "flusher", || desk.help()) else {
            drop(guard.take());
            inner.poke_flusher();
            return;
        };
        match helped {
            Helped::Wrote => {
                Counters::add(&inner.counters.windows_by_waiters, 1);
                inner.flusher_lazy.store(true, Ordering::SeqCst);
            }
            Helped::Crowd => {
                // The flusher's thread gathers from now on: wake it if it sleeps as if we
                // did, and let every publish wake it again.
                drop(guard);
                if inner.flusher_lazy.swap(false, Ordering::SeqCst) {
                    inner.poke_flusher();
                }
                return;
            }
            Helped::NotNow => {}
        }
    }
    if inner.completion.status(pos).is_none() {
        poke_if_lazy(inner);
    }
}

/// `Engine::resume`: at the desk (waiting for it, so that no window is being written), has
/// the next segment's file made now, and ends the spell of refusals for room if it could
/// be (`crate::room`). `Error::NoSpace` if the disk still has no room.
pub(crate) fn resume(inner: &Inner) -> Result<()> {
    if let Some(e) = inner.completion.failure() {
        return Err(failed(e));
    }
    if !inner.completion.room.refusing() {
        return Ok(());
    }
    let mut guard = inner.desk.lock();
    let desk = match guard.as_mut() {
        Some(desk) if !desk.in_window => desk,
        // The flusher stopped (closed, or a panic took the desk out).
        _ => {
            return Err(inner.completion.failure().map_or(Error::Closed, failed));
        }
    };
    // With room for the next segment, the reserve a compaction took is made again if it
    // can be (best effort: the next retirement makes it otherwise).
    let prepared = (desk.flusher.log.prepare_now()).and_then(|()| desk.flusher.log.make_reserve());
    match prepared {
        Ok(()) => {
            inner.completion.room.end();
            inner.throttle.set_no_room(false);
            Ok(())
        }
        // It may have been the report of another change of the directory's: fatal, as
        // at a roll.
        Err(e) if crate::log::dir::is_failed_dir_sync(&e) => Err(inner.fail(&e)),
        Err(e) => Err(e),
    }
}

/// Wakes the flusher's thread if it sleeps while producers write their own windows: a
/// request that is not about to be written by its own producer needs it.
pub(crate) fn poke_if_lazy(inner: &Inner) {
    if inner.flusher_lazy.load(Ordering::SeqCst) {
        inner.poke_flusher();
    }
}

impl Flusher {
    /// The flusher of a new pipeline: it sends written jobs on `to_syncer`, and takes them
    /// back for reuse from `spare` (where `give_back` returns those it completes itself).
    pub(super) fn new(
        inner: Arc<Inner>,
        log: Log,
        to_syncer: Sender<Job>,
        spare: Receiver<Job>,
        give_back: Sender<Job>,
    ) -> Flusher {
        let segment = log.end_mark().segment_id;
        Flusher {
            in_flight: inner.ring.head(),
            inner,
            log,
            coalescer: Coalescer::new(),
            entries: Vec::new(),
            stamps: Vec::new(),
            slots: Vec::new(),
            lookups: Vec::new(),
            answers: Vec::new(),
            prev_requests: 1,
            unsynced: VecDeque::with_capacity(UNDURABLE_FRAMES_MAX as usize + 1),
            to_syncer,
            spare,
            give_back,
            window_ids: Vec::new(),
            window_id_ends: Vec::new(),
            window_dups: Vec::new(),
            refused_ends: Vec::new(),
            refused_run_end: None,
            requests: Vec::new(),
            turn_ids: Vec::new(),
            resolver: Resolver::default(),
            in_flight_values: InFlightValues::default(),
            durable_locs: Vec::new(),
            in_flight_keys: InFlightKeys::default(),
            segment,
            completed_inline: false,
            held: None,
        }
    }

    /// Ends a `close` that a producer stalled between claim and publish at ring position `pos`
    /// (see [`CLOSE_STALL_MAX`]): lets everything before `pos` complete, then fails the
    /// engine, so every ticket from `pos` on reports that it was not written.
    fn give_up(&mut self, pos: u64, waited: Duration) {
        // Every window before `pos` was handed on (padding too): its tickets succeed.
        Self::drain_pipeline(&self.inner, self.in_flight);
        self.inner
            .completion
            .fail(Error::Failed(Arc::new(Error::Stalled {
                position: pos,
                waited,
            })));
    }

    /// A reused job, cleared, ending at `end`.
    fn job(spare: &Receiver<Job>, end: u64) -> Job {
        let mut job = spare.try_recv().unwrap_or_default();
        job.end = end;
        job.frame = None;
        job.updates.clear();
        job.stamps.clear();
        job.ready = None;
        job.compaction = false;
        job
    }

    /// Whether anything handed on before batch `before` is not complete: a job queued for
    /// or taken by a syncer whose completion has not ended (`queued`, then `completing`: see
    /// `Inner::completing`; a syncer may have announced a group's durable sequence and not yet
    /// finished it, and one that ends in a compaction batch does not move the watermark), a
    /// window the watermark has not passed, or a frame before `before` not durable (a
    /// compaction batch ends where the window before it did, so only its sequence tells).
    /// Only with none may a job complete inline: two completions must never run at once.
    fn in_flight(&self, before: u64) -> bool {
        let inner = &self.inner;
        inner.queued.load(Ordering::SeqCst) != 0
            || inner.completing.load(Ordering::SeqCst) != 0
            || inner.completion.durable() < self.in_flight
            || inner.live.durable_seq.load(Ordering::Acquire) + 1 < before
    }

    /// Hands a window's job on for completion, after the compaction batch held for it (see
    /// [`Flusher::hold`]), if there is one.
    fn send(&mut self, job: Job) {
        if let Some(held) = self.held.take() {
            // The syncer is woken for the window, and takes both as one group.
            self.hand_on(held, false);
        }
        self.hand_on(job, true);
    }

    /// Keeps a written compaction batch until the next window is handed on (see
    /// [`Flusher::send`]); one held before it goes on first. No ticket waits for a
    /// compaction batch: handed on by itself, it got a sync of its own between two windows'
    /// (1,148 of 7,836 syncs at 4 x 256 with compaction running), which the next window then
    /// waited behind. Held, it adds its bytes to that window's sync instead. It is held
    /// within one step of the flusher only: a step that cuts no window after it hands it on
    /// ([`Flusher::release_held`]), and so does a roll, which waits for every frame written
    /// to be durable. Nothing else waits for it (the watermark does not, a compaction batch
    /// ends where the window before it did; `bound_undurable` waits for older frames).
    fn hold(&mut self, job: Job) {
        self.release_held();
        self.held = Some(job);
    }

    /// Hands on the compaction batch held for the next window, if there is one.
    fn release_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.hand_on(held, true);
        }
    }

    /// Hands a written job on for completion; `wake`: wake a syncer if none is awake to take
    /// it. When nothing else is in flight (every job sent before is complete, so the syncer
    /// is idle) and no request waits behind this job (so there is no next window to overlap
    /// with), the flusher completes it itself: at low load that saves a thread hand-off, most
    /// of the latency besides the sync.
    fn hand_on(&mut self, job: Job, wake: bool) {
        let requests = job.stamps.len() as u64;
        let mut job = job;
        job.ready = Some(Instant::now());
        if let Some(f) = &job.frame {
            self.unsynced.push_back((f.seq, job.end));
            if f.seg.id != self.segment {
                // The log rolled: a segment was completed, which the compactor may take.
                self.segment = f.seg.id;
                self.inner.compact_slot.segment_completed();
            }
        }
        let before = job.frame.as_ref().map_or(self.log.next_seq(), |f| f.seq);
        let syncing = self.in_flight(before);
        let idle = !syncing && self.inner.ring.tail() <= job.end;
        self.in_flight = job.end;
        self.completed_inline = idle;
        let kind = if idle {
            TraceKind::Inline
        } else {
            TraceKind::HandedOn
        };
        trace::record(&self.inner.trace, kind, requests);
        if idle {
            if self.inner.completion.may_complete(job.end) {
                if let Err(e) = complete_jobs(&self.inner, std::slice::from_ref(&job)) {
                    self.inner.completion.fail(e);
                    self.inner.throttle.wake_all();
                }
            }
            let _ = self.give_back.try_send(spare(job));
            return;
        }
        // The frame waits for the sync in flight before its own: start writing it meanwhile,
        // so that its sync has only the cache flush left (4 x 256: 1.06x, median of 20
        // alternated pairs). Not when completed inline, right below: there the sync follows
        // at once, and the extra call only added to the latency (1 x 1 p50 +10-20 %).
        if syncing && self.inner.config.durability == Durability::Sync {
            if let Some(f) = &job.frame {
                f.seg.start_writeback(f.start, f.end - f.start);
            }
        }
        self.inner.queued.fetch_add(1, Ordering::SeqCst);
        // The syncers only stop after this sender is dropped, so this cannot fail.
        let _ = self.to_syncer.send(job);
        // Either a syncer finds the job, or we find one asleep and wake it.
        if wake {
            self.inner.syncers.wake_one();
        }
    }

    /// Waits, if need be, until the frame about to be written is at most
    /// [`UNDURABLE_FRAMES_MAX`] frames ahead of the last durable one; false if the engine
    /// failed meanwhile. (The pipeline holds a few frames at most, so this waits only if a
    /// sync group grows unusually long.)
    fn bound_undurable(log: &Log, unsynced: &mut VecDeque<(u64, u64)>, inner: &Inner) -> bool {
        let seq = log.next_seq();
        let durable = inner.live.durable_seq.load(Ordering::Acquire);
        while unsynced.front().is_some_and(|f| f.0 <= durable) {
            unsynced.pop_front();
        }
        let Some(need) = seq
            .checked_sub(UNDURABLE_FRAMES_MAX)
            .filter(|&n| n > durable)
        else {
            return true;
        };
        // Frames in `unsynced` are consecutive: the one to wait for is `need`.
        debug_assert!(
            unsynced.iter().any(|f| f.0 == need),
            "frame {need} is neither durable nor in flight"
        );
        trace::record(&inner.trace, TraceKind::UndurableBound, need);
        Self::wait_durable_seq(inner, need)
    }

    /// Waits until every job handed to the syncer (up to `in_flight`) is complete; false if
    /// the engine failed. (A compaction batch may still be syncing: see
    /// [`Flusher::drain_frames`].)
    fn drain_pipeline(inner: &Inner, in_flight: u64) -> bool {
        inner.completion.wait(in_flight, None).is_ok()
    }

    /// Waits until every job handed on is complete and every frame written (`last_seq`, a
    /// compaction batch too) is durable; false if the engine failed.
    fn drain_frames(inner: &Inner, in_flight: u64, last_seq: u64) -> bool {
        Self::drain_pipeline(inner, in_flight) && Self::wait_durable_seq(inner, last_seq)
    }

    /// Waits until batch `seq` (written and handed on) is durable; false if the engine
    /// failed meanwhile.
    fn wait_durable_seq(inner: &Inner, seq: u64) -> bool {
        let failed = || inner.completion.failure().map(|_| ());
        inner
            .wait_durable_seq(seq, Duration::from_millis(1), failed)
            .is_ok()
    }

    /// Cuts one window starting at `start`, plans it, answers its gets, writes its frame and
    /// hands it to the syncer; returns its end.
    fn window(&mut self, consumer_mut: &mut Consumer, start: u64, help: bool) -> u64 {
        let inner = self.inner.clone();
        let mut entries: Vec<Entry<'_>> = recycle(std::mem::take(&mut self.entries));
        self.stamps.clear();
        self.slots.clear();
        self.requests.clear();
        let w = self.gather(&inner, consumer_mut, start, &mut entries, help);

        if inner.completion.failure().is_none() {
            let span = (start, w.end);
            if let Err(e) = self.commit(&mut entries, span, (w.merges, w.duplicate_ops)) {
                // The windows already handed on complete with their own sync's outcome.
                inner.completion.fail_after(e, self.in_flight);
                inner.throttle.wake_all();
                inner.settle_failure();
            }
        }
        // On failure every ticket of this window and later ones reports it; get slots are
        // dropped with `slots`.
        self.entries = recycle(entries);
        self.slots.clear();
        self.resolver.release_large();
        self.release_large();
        consumer_mut.release(w.end);
        w.end
    }

    /// Frees the per-operation buffers a window larger than [`JOB_KEPT_MAX`] grew (see
    /// there), the coalescer's tables included.
    fn release_large(&mut self) {
        trim(&mut self.entries, JOB_KEPT_MAX);
        trim(&mut self.stamps, JOB_KEPT_MAX);
        trim(&mut self.slots, JOB_KEPT_MAX);
        trim(&mut self.lookups, JOB_KEPT_MAX);
        trim(&mut self.answers, JOB_KEPT_MAX);
        trim(&mut self.requests, JOB_KEPT_MAX);
        self.coalescer.release_large(JOB_KEPT_MAX);
    }

    /// Reads the published records from `start` on into the window (`entries`, `stamps`,
    /// `slots`), one turn after another, until [`window::decide`] cuts it; between turns it
    /// waits or naps as decided (with `help`, a producer's own window, after the first turn
    /// at once). Returns the cut window's numbers.
    fn gather<'c>(
        &mut self,
        inner: &Inner,
        consumer: &'c Consumer,
        start: u64,
        entries: &mut Vec<Entry<'c>>,
        help: bool,
    ) -> Window {
        let first_seen = Instant::now();
        let mut last_arrival = first_seen;
        let mut w = Window {
            end: start,
            ..Window::default()
        };
        let policy = window::Policy::of(&inner.config);
        // Requests this window held when it last napped for a sync in flight (see
        // `window::MERGE_BELOW`).
        let mut held_over_sync = 0;
        // Turns of the loop below (`Counts::window_waits` counts all but each window's first).
        let mut turns = 0u64;
        loop {
            turns += 1;
            let before = w.end;
            let refused = self.take_records(consumer, &policy, &mut w, entries);
            if help {
                // A producer writing its own window (see `help`) cuts what is published: it
                // is the one waiting, and nothing wakes it but itself.
                break;
            }
            let now = Instant::now();
            if w.end > before {
                last_arrival = now;
            }
            let seen = window::Observed {
                requests: w.requests,
                bytes: w.bytes,
                entries: entries.len(),
                refused,
                // A flush asks for everything submitted before it: cut if that reaches
                // into this window, even if an earlier turn read those records already.
                flush: inner.flush_to.load(Ordering::Acquire) > start,
                closed: consumer.ring().is_closed(),
                now,
                first_seen,
                last_arrival,
                log_ready: inner.queued.load(Ordering::SeqCst) == 0,
                syncing: inner.completion.durable() < self.in_flight,
                failed: inner.completion.failure().is_some(),
                prev_requests: self.prev_requests,
                held_over_sync,
            };
            match window::decide(&seen, &policy) {
                Decision::Cut => break,
                Decision::Wait { until } => {
                    // Park (no spinning: the producers and the syncer need the cores) until a
                    // request arrives or `until`; catch the index up first, if it is behind
                    // (the producers take longer to come back).
                    inner.index.try_apply_queued();
                    consumer.wait(w.end, Some(until));
                }
                Decision::NapForRoom { until } => {
                    // Nothing is cut before the syncer takes the queued job, and it unparks us
                    // then. Records published meanwhile need not wake us (a wake-up costs both
                    // sides a context switch): they are read all at once after. A stale unpark
                    // only makes us look again.
                    Self::nap(inner, now, until);
                }
                Decision::NapForSync { until } => {
                    held_over_sync = w.requests;
                    // Either the completion sees the nap and pokes us, or we see its
                    // watermark here (and do not nap, but look again).
                    if inner
                        .sync_nap
                        .announce(|| inner.completion.durable() >= self.in_flight)
                    {
                        // As above, until the sync in flight completes (its completion pokes us).
                        Self::nap(inner, now, until);
                    }
                }
            }
        }
        self.account_window(inner, &w, entries.len(), first_seen, turns);
        w
    }

    /// One turn's read: takes the published records from `w.end` on into the window while
    /// they fit, decoding each into `entries`, `stamps` and `slots`. True if it stopped at a
    /// published record that does not fit.
    fn take_records<'c>(
        &mut self,
        consumer: &'c Consumer,
        policy: &window::Policy,
        w: &mut Window,
        entries: &mut Vec<Entry<'c>>,
    ) -> bool {
        let stamps = &mut self.stamps;
        let slots = &mut self.slots;
        let requests = &mut self.requests;
        let turn_ids = &mut self.turn_ids;
        turn_ids.clear();
        // A record that would take the window over a limit stays in the ring for the next
        // window, and it cuts this one (see `window::decide`).
        let mut refused = false;
        w.end = consumer.read(w.end, |end, payload| {
            let rec_bytes = end - w.end;
            if !policy.fits(w.requests, w.bytes, entries.len(), rec_bytes) {
                refused = true;
                return false;
            }
            let before = entries.len();
            let mut counts = request::DecodeCounts::default();
            // SAFETY: only `Engine::submit` fills this ring's records, each with one of
            // `request`'s encoders into a claim of the matching length. And each record
            // is decoded at most once: only here, when the window takes it (a refused
            // one is not decoded), and every later read starts past it (`w.end`, then
            // the window's end).
            let id = unsafe { request::decode(payload, entries, stamps, slots, &mut counts) };
            if let Some(id) = id {
                let ops = (before as u32, entries.len() as u32);
                turn_ids.push((id, end, ops, counts.merges));
            }
            requests.push((before as u32, end));
            w.merges += counts.merges;
            w.gets += counts.gets;
            w.bytes += rec_bytes;
            w.requests += 1;
            w.end = end;
            true
        });
        if !self.turn_ids.is_empty() {
            self.take_ids(w, entries);
        }
        refused
    }

    /// The turn's request ids, in ring order, after its records were read (their table probes
    /// back to back, so that their cache misses overlap): a new id enters the table and the
    /// frame's trailer; a duplicate's operations become `Op::Nop`, which nothing logs.
    fn take_ids(&mut self, w: &mut Window, entries: &mut [Entry<'_>]) {
        let inner = &*self.inner;
        let mut ids = TakeIds {
            table: None,
            ids: &inner.ids,
            duplicates: &inner.completion.duplicates,
            logged: &mut self.window_ids,
            logged_ends: &mut self.window_id_ends,
            dups_here: &mut self.window_dups,
            seq: self.log.next_seq(),
            time: 0,
        };
        for &(id, end, (from, to), merges) in &self.turn_ids {
            if !ids.take(id, end) {
                // A write-only request: no get slot points at these entries.
                for e in &mut entries[from as usize..to as usize] {
                    e.op = Op::Nop;
                }
                w.duplicates += 1;
                w.duplicate_ops += u64::from(to - from);
                w.merges -= merges;
            }
        }
    }

    /// Parks until unparked or `until` (`now` is when the turn looked), catching the index up
    /// first (see `Index::defer`); then ends the sync nap, if one was announced.
    fn nap(inner: &Inner, now: Instant, until: Instant) {
        inner.index.try_apply_queued();
        std::thread::park_timeout(until.saturating_duration_since(now));
        inner.sync_nap.end();
    }

    /// Counts a cut window (`entries` entries, after `turns` turns) in the stats, and keeps
    /// its size for the next window's policy.
    fn account_window(
        &mut self,
        inner: &Inner,
        w: &Window,
        entries: usize,
        first_seen: Instant,
        turns: u64,
    ) {
        record(
            &mut inner.counters.stages.lock().window_age,
            first_seen.elapsed().as_nanos() as u64,
        );
        Counters::add(&inner.counters.window_waits, turns - 1);
        trace::record(&inner.trace, TraceKind::WindowCut, w.requests as u64);
        self.prev_requests = w.requests.max(1);
        Counters::add(&inner.counters.submitted, entries as u64 - w.duplicate_ops);
        Counters::add(&inner.counters.reads, w.gets);
        Counters::add(
            &inner.counters.writes,
            entries as u64 - w.gets - w.duplicate_ops,
        );
        Counters::add(&inner.counters.duplicates, w.duplicates);
        Counters::add(&inner.counters.merges, w.merges);
    }

    /// Plans the window (its `merges` merged first), answers its gets, writes its frame and
    /// hands it to the syncer.
    fn commit(
        &mut self,
        entries: &mut [Entry<'_>],
        (start, end): (u64, u64),
        (mut merges, duplicate_ops): (u64, u64),
    ) -> Result<()> {
        let t0 = Instant::now();
        // Operations of refused requests, taken out of the window.
        let mut refused_ops = 0;
        // While the disk has no room for the next segment, every write is refused.
        if let Some(e) = (self.inner.completion.room.refusing())
            .then(|| self.inner.completion.room.refusal())
            .flatten()
        {
            let first_write = self
                .first_write(entries)
                .map(|r| self.request_start(r, start));
            (self.inner.completion.room).place_start(first_write, end);
            refused_ops += self.refuse_writes(entries, &e, start);
            merges = 0;
        }
        if merges > 0 {
            match self.resolve_merges(entries) {
                Some(n) => refused_ops = n,
                None => return Ok(()), // failed meanwhile: the window's tickets report it
            }
            // Before the frame is sized for shedding: the trailer leaves their ids out.
            self.untake_refused_ids();
        }
        // Out of `self` while its plan is in use, so that the steps below can borrow `self`.
        let mut coalescer = std::mem::take(&mut self.coalescer);
        coalescer.plan(entries, self.inner.config.coalesce);
        if merges > 0 {
            match self.shed_merges_to_fit(entries, &mut coalescer) {
                Some(n) => refused_ops += n,
                None => {
                    self.coalescer = coalescer;
                    return Ok(()); // failed meanwhile: the window's tickets report it
                }
            }
        }
        self.untake_refused_ids();
        // The roll, if the frame needs one, comes before the gets are answered: if the disk
        // has no room for the next segment, the window's writes are refused, and its gets
        // must read the state without them.
        let body_len = match self.roll_ahead(entries, &coalescer) {
            Ok(Some(body_len)) => body_len,
            Ok(None) => {
                self.coalescer = coalescer;
                return Ok(()); // failed meanwhile: the window's tickets report it
            }
            Err(Error::NoSpace { cause }) => {
                // The spell begins where the window's first refused write does, not at the
                // window's start: a flush made after the window's first requests (gets,
                // duplicates) but before its first write covers no refused write.
                let from = self.first_write_start(entries, start);
                let e = self.inner.completion.room.begin(from, cause);
                self.inner.throttle.set_no_room(true);
                // `Compaction::Auto` makes room when a spell begins.
                self.inner.compact_slot.wake_compactor();
                refused_ops += self.refuse_writes(entries, &e, start);
                self.untake_refused_ids();
                coalescer.plan(entries, self.inner.config.coalesce);
                0 // no frame: no write is left, and no id
            }
            Err(e) => {
                self.coalescer = coalescer;
                return Err(e);
            }
        };
        let entries = &*entries;
        let plan = coalescer.last_plan();
        let t1 = Instant::now();
        let dropped = refused_ops + duplicate_ops as usize;
        let r = self.commit_plan(entries, (plan, body_len), (end, dropped), (t0, t1));
        self.coalescer = coalescer;
        self.window_dups.clear();
        r
    }

    /// Rolls the log to a new segment if the window's frame (planned in `coalescer`) does
    /// not fit the active one. The bytes of the frame's records once it fits (0: no frame);
    /// `None` if the engine failed while the roll waited for the frames before it;
    /// `Error::NoSpace` if the disk has no room for the segment (nothing of the log changed:
    /// the window is refused, see `crate::room`).
    fn roll_ahead(
        &mut self,
        entries: &[Entry<'_>],
        coalescer: &Coalescer,
    ) -> Result<Option<usize>> {
        let plan = coalescer.last_plan();
        if plan.survivors.is_empty() && self.window_ids.is_empty() {
            return Ok(Some(0)); // no frame
        }
        let body_len = body_len((entries, &self.resolver), &plan.survivors);
        let frame_body = body_len + trailer_len(self.window_ids.len());
        if self.log.fits(frame_body) {
            return Ok(Some(body_len));
        }
        let inner = self.inner.clone();
        // The roll drains every frame written, the held one too.
        self.release_held();
        trace::record(&inner.trace, TraceKind::RollStart, 0);
        if !Self::room_for_frame(
            &self.log,
            &mut self.unsynced,
            &inner,
            self.in_flight,
            frame_body,
        ) {
            return Ok(None);
        }
        self.log.roll_for(frame_body)?;
        trace::record(&inner.trace, TraceKind::RollEnd, 0);
        Ok(Some(body_len))
    }

    /// Where the window's first write request (one `refuse_writes` would take out) starts in
    /// the ring: the end of the request before it, or the window's `start`. A flush at a
    /// position up to it covers none of the window's writes (a flush's position is a
    /// request's end, never inside a request).
    fn first_write_start(&self, entries: &[Entry<'_>], start: u64) -> u64 {
        self.first_write(entries)
            .map_or(start, |r| self.request_start(r, start))
    }

    /// The window's first write request (one `refuse_writes` would take out), if it has one.
    fn first_write(&self, entries: &[Entry<'_>]) -> Option<usize> {
        (0..self.requests.len()).find(|&r| {
            let (first, end) = request_entries(&self.requests, r, entries.len());
            writes(&entries[first..end])
        })
    }

    /// Where the window's request `r` starts in the ring: the end of the request before it,
    /// or the window's `start`.
    fn request_start(&self, r: usize, start: u64) -> u64 {
        r.checked_sub(1).map_or(start, |p| self.requests[p].1)
    }

    /// While the disk has no room for the next segment (`crate::room`): takes every write
    /// request out of the window (its operations become [`Op::Nop`]) and records `error`
    /// as its refusal; gets stay, and so do duplicates of request ids (answered as such).
    /// Returns the operations taken out. A spell refuses every write the ring holds, which
    /// may be far more than the refusals kept one by one: consecutive refused requests
    /// (`start` is the window's) are kept as one run.
    fn refuse_writes(&mut self, entries: &mut [Entry<'_>], error: &Error, start: u64) -> usize {
        let inner = &*self.inner;
        let (mut ops_out, mut refused) = (0, 0);
        // The end of the request just before the next one, if this refused it.
        let mut prev = self.refused_run_end.take().filter(|&e| e == start);
        for r in 0..self.requests.len() {
            let (first, end) = request_entries(&self.requests, r, entries.len());
            let ops = &mut entries[first..end];
            if !writes(ops) {
                prev = None;
                continue;
            }
            ops.iter_mut().for_each(|e| e.op = Op::Nop);
            let pos = self.requests[r].1;
            self.refused_ends.push(pos);
            let refusals = &inner.completion.refusals;
            match prev {
                Some(p) => refusals.extend(p, pos, error.clone()),
                None => refusals.record(pos, error.clone()),
            }
            prev = Some(pos);
            ops_out += ops.len();
            refused += 1;
        }
        self.refused_run_end = prev;
        let counters = &inner.counters;
        Counters::add(&counters.refused_no_space, refused);
        counters.writes.fetch_sub(ops_out as u64, Ordering::Relaxed);
        ops_out
    }

    /// The ids of the window's refused requests leave the table and the frame's trailer: the
    /// request was not applied, so a retry with the same id (a client that never saw the
    /// refusal, after a crash) must be applied, not answered as a duplicate of nothing. A
    /// later request of the window with the same id, taken for its duplicate, gets the same
    /// refusal (a refusal outranks a duplicate on a ticket). An id that a later request of
    /// the window took again stays: the table's entry is that request's, and the frame logs
    /// it (the table forgets only between windows, `Ids::settle`, so this is a safeguard).
    /// One pass, whatever the window's size.
    fn untake_refused_ids(&mut self) {
        if self.refused_ends.is_empty() {
            return;
        }
        let refused: HashSet<u64> = self.refused_ends.drain(..).collect();
        let (ids, ends) = (&mut self.window_ids, &mut self.window_id_ends);
        let mut given_back: HashMap<[u8; ID_LEN], u64> = HashMap::new();
        let mut kept = 0;
        for k in 0..ids.len() {
            if refused.contains(&ends[k]) {
                given_back.entry(ids[k]).or_insert(ends[k]);
            } else {
                (ids[kept], ends[kept]) = (ids[k], ends[k]);
                kept += 1;
            }
        }
        ids.truncate(kept);
        ends.truncate(kept);
        for id in ids.iter() {
            given_back.remove(id);
        }
        if given_back.is_empty() {
            return;
        }
        let inner = &*self.inner;
        {
            let mut table = inner.ids.lock();
            for id in given_back.keys() {
                table.untake(RequestId(*id));
            }
        }
        let refusals = &inner.completion.refusals;
        for &(pos, dup) in &self.window_dups {
            let Some(&end) = given_back.get(&dup) else {
                continue;
            };
            if pos > end {
                if let Err(refusal) = refusals.check(end) {
                    refusals.record(pos, refusal);
                }
            }
        }
    }

    /// [`Flusher::commit`] once the window is planned (from `t0` to `t1`): answers the gets,
    /// writes the frame and hands the job on. `dropped`: operations of refused or duplicate
    /// requests, which the frame does not acknowledge.
    fn commit_plan(
        &mut self,
        entries: &[Entry<'_>],
        (plan, body_len): (&Plan, usize),
        (end, dropped): (u64, usize),
        (t0, t1): (Instant, Instant),
    ) -> Result<()> {
        let inner = self.inner.clone();
        // Gets read the state before this window's writes, which must include every earlier
        // window: wait for the ones still syncing if a get needs the index.
        if !plan.gets.is_empty() {
            let needs_index = plan
                .gets
                .iter()
                .any(|(_, a)| matches!(a, GetAnswer::Lookup(_)));
            if needs_index && !Self::drain_pipeline(&inner, self.in_flight) {
                return Ok(()); // failed meanwhile: the window's tickets report it
            }
            answer_gets(
                &inner,
                (entries, &self.resolver),
                &plan.gets,
                &self.slots,
                &mut self.lookups,
                &mut self.answers,
            );
        }
        // Every get is answered: drop the slots now, not after the window completes (which
        // may be inline, below), so a dropped ticket's answer is freed before anyone wakes.
        let gets = self.slots.len();
        self.slots.clear();

        let mut job = Self::job(&self.spare, end);
        job.stamps.extend_from_slice(&self.stamps);
        // A window writes a frame if it has writes left, or new request ids (a write batch
        // with an id whose writes all collapsed into later ones of the window still logs it).
        if !plan.survivors.is_empty() || !self.window_ids.is_empty() {
            let writes = (entries.len() - gets - dropped) as u32;
            if !self.write_frame(entries, (plan, body_len), writes, &mut job)? {
                return Ok(()); // failed meanwhile: the window's tickets report it
            }
        }
        let counters = &inner.counters;
        Counters::add(&counters.coalesced_writes, plan.coalesced_writes);
        Counters::add(&counters.collapsed_reads, plan.collapsed_reads);
        let t2 = Instant::now();
        {
            let mut h = counters.stages.lock();
            record(&mut h.coalesce, (t1 - t0).as_nanos() as u64);
            if job.frame.is_some() {
                record(&mut h.encode, (t2 - t1).as_nanos() as u64);
            }
        }
        self.send(job);
        Ok(())
    }

    /// Writes the window's frame (its `plan`'s survivors, `body_len` bytes of records as
    /// `roll_ahead` sized them, and the window's request ids, acknowledging `writes`
    /// operations) into `job`; false if the engine failed while it waited for room.
    fn write_frame(
        &mut self,
        entries: &[Entry<'_>],
        (plan, body_len): (&Plan, usize),
        writes: u32,
        job: &mut Job,
    ) -> Result<bool> {
        let inner = self.inner.clone();
        let frame_body = body_len + trailer_len(self.window_ids.len());
        // `roll_ahead` rolled for it: only the bound on frames not yet durable is left.
        debug_assert!(self.log.fits(frame_body), "the window's roll was not ahead");
        if !Self::room_for_frame(
            &self.log,
            &mut self.unsynced,
            &inner,
            self.in_flight,
            frame_body,
        ) {
            return Ok(false);
        }
        let flags = if inner.config.coalesce {
            FLAG_SORTED
        } else {
            0
        };
        let now = ids::now_nanos();
        let trailer = Trailer {
            ids: &self.window_ids,
            commit_time: now,
        };
        let frame = append_frame(
            &mut self.log,
            (entries, &self.resolver, &plan.survivors),
            (body_len, trailer),
            flags,
            writes,
            &mut job.updates,
        )?;
        job.frame = Some(frame);
        self.track_keys(entries, &plan.survivors, job.end);
        if inner.config.merge.is_some() {
            // Bounded by what the windows in flight wrote.
            let values = &mut self.in_flight_values;
            values.forget_durable(inner.completion.durable());
            values.note(
                (entries, &self.resolver),
                (&plan.survivors, &job.updates),
                job.end,
            );
        }
        let counters = &inner.counters;
        Counters::add(&counters.batches, 1);
        Counters::add(&counters.records_written, plan.survivors.len() as u64);
        let bytes = frame_len(frame_body) as u64;
        Counters::add(&counters.bytes_written, bytes);
        if !self.window_ids.is_empty() {
            self.window_ids.clear();
            self.window_id_ends.clear();
            // A retirement may have ids to carry from now on: the room for them is wanted.
            inner.ids_room.note_logged();
            // The window's ids are final (its refused requests' given back): the table may
            // turn its generations now, forgetting none of a batch not yet durable.
            let durable = inner.live.durable_seq.load(Ordering::Acquire);
            let mut table = inner.ids.lock();
            table.settle(durable);
            table.evict(now, durable);
        }
        Ok(true)
    }

    /// Merges the window's merges (`crate::merge`) onto the state every earlier window left:
    /// the values the windows in flight wrote (`InFlightValues`), else the index (no drain).
    /// Requests the operator refuses are taken
    /// out of the window ([`Op::Nop`]) and their refusals recorded for their tickets; then
    /// the rest is merged again, until nothing is refused. Returns the operations taken
    /// out, or `None` if the engine failed meanwhile.
    fn resolve_merges(&mut self, entries: &mut [Entry<'_>]) -> Option<usize> {
        let inner = self.inner.clone();
        // Without an operator every merge was refused at submit.
        let op = inner.config.merge.as_ref()?;
        // The windows in flight wrote their keys' newest values; the index has the rest (a
        // window that is durable has queued its updates, which a lookup applies first).
        if inner.completion.failure().is_some() {
            return None;
        }
        let in_flight = &mut self.in_flight_values;
        in_flight.forget_durable(inner.completion.durable());
        let in_flight = &*in_flight;
        let mut taken_out = 0;
        loop {
            let window = (&*entries, inner.config.coalesce);
            let locs = &mut self.durable_locs;
            // The windows in flight wrote their keys' newest values; the index has the rest.
            let fetch = |keys: &mut dyn ExactSizeIterator<Item = &[u8]>, out: &mut Durable| {
                let mut cold = Vec::with_capacity(keys.len());
                for (i, key) in keys.enumerate() {
                    match in_flight.get(key) {
                        Some(Newest::Copied(value)) => out.set(i, value),
                        // Read back from the frame written for it, not yet durable: only the
                        // desk's holder (this thread) writes the log, and a written byte is
                        // never written again. A roll drains the pipeline first, so the
                        // segment is the active one, listed.
                        Some(Newest::Written(loc)) => {
                            let seg = inner.segments.read().get(loc.seg).cloned();
                            let seg = seg.expect("an in-flight value's segment is listed");
                            out.set(i, Some(seg.written(loc.off, loc.len as usize)));
                        }
                        None => cold.push((i, key)),
                    }
                }
                ValueRef::read_many(&inner.index, &inner.segments, &cold, locs, |i, v| {
                    out.set(i, v)
                });
            };
            self.resolver
                .resolve(op, inner.config.value_len_max, window, fetch);
            if self.resolver.refused.is_empty() {
                return Some(taken_out);
            }
            taken_out += refuse(
                &inner,
                op.name(),
                entries,
                (&self.requests, &mut self.refused_ends),
                &self.resolver,
            );
        }
    }

    /// A window's frame must fit an empty segment. Puts, deletes and request ids always do
    /// (a record takes no more frame bytes than ring bytes: `Config::validate`), but a
    /// merge's result may be far longer than its operand (an `Append` of one byte onto a
    /// long value, a `Custom` result up to `value_len_max`). If the frame would not fit, the
    /// window keeps its first merge requests, as many as fit (found by bisection, merging
    /// and planning again for each try: keeping fewer of the last merges changes no earlier
    /// one's result, the operator being pure), and refuses the rest, each with
    /// [`Error::MergeRefused`] saying so: nothing of them is applied, and they may be
    /// retried. `coalescer` holds the window's plan, and the one that fits on return.
    /// Returns the operations taken out, or `None` if the engine failed meanwhile.
    fn shed_merges_to_fit<'e>(
        &mut self,
        entries: &mut [Entry<'e>],
        coalescer: &mut Coalescer,
    ) -> Option<usize> {
        let inner = self.inner.clone();
        let (max, capacity) = (self.log.frame_max(), inner.config.segment_bytes);
        let ids = self.window_ids.len();
        let frame = |entries: &[Entry<'_>], resolver: &Resolver, plan: &Plan| {
            frame_len(body_len((entries, resolver), &plan.survivors) + trailer_len(ids))
        };
        let need = frame(entries, &self.resolver, coalescer.last_plan());
        if need <= max {
            return Some(0);
        }
        let merging: Vec<usize> = (0..self.requests.len())
            .filter(|&r| {
                let (first, end) = request_entries(&self.requests, r, entries.len());
                (entries[first..end].iter()).any(|e| matches!(e.op, Op::Merge(_)))
            })
            .collect();
        let ops: Vec<Op<'e>> = entries.iter().map(|e| e.op).collect();
        // Keeps the first `keep` merge requests: the frame's size then.
        let mut keep_first = |this: &mut Self, entries: &mut [Entry<'e>], keep: usize| {
            for (e, &op) in entries.iter_mut().zip(&ops) {
                e.op = op;
            }
            for &r in &merging[keep..] {
                let (first, end) = request_entries(&this.requests, r, entries.len());
                entries[first..end].iter_mut().for_each(|e| e.op = Op::Nop);
            }
            let refused = this.resolve_merges(entries)?;
            debug_assert_eq!(refused, 0, "fewer merges, the same results");
            let plan = coalescer.plan(entries, inner.config.coalesce);
            Some(frame(entries, &this.resolver, plan))
        };
        // Keeping none fits (`Config::validate`); keeping all does not.
        let (mut fits, mut over) = (0, merging.len());
        while over - fits > 1 {
            let mid = fits + (over - fits) / 2;
            if keep_first(self, entries, mid)? <= max {
                fits = mid;
            } else {
                over = mid;
            }
        }
        let kept = keep_first(self, entries, fits)?;
        debug_assert!(kept <= max, "a window without merges must fit a segment");
        let operator = inner.config.merge.as_ref().map(|m| m.name());
        let reason = format!(
            "the window's frame would take {need} bytes with the results of all its merges, \
             more than the {max} a segment of {capacity} bytes holds after its header; this \
             request, one of the last \
             merges of the window, was not applied: retry it (or give the log larger \
             segments, or the operator shorter results)"
        );
        let mut taken_out = 0;
        for &r in &merging[fits..] {
            // Its operations are `Nop` already (the last try); this records the refusal.
            let requests = (&self.requests[..], &mut self.refused_ends);
            taken_out += refuse_request(&inner, operator, entries, requests, r, &reason);
        }
        Some(taken_out)
    }

    /// Writes the compaction batch waiting in `Inner::compact_slot`, between two windows,
    /// and answers the compacting thread (see `crate::compact`).
    fn compact_step(&mut self) {
        let inner = self.inner.clone();
        let Some((mut chunk, writing)) = inner.compact_slot.take() else {
            return;
        };
        trace::record(&inner.trace, TraceKind::CompactionStart, 0);
        let r = self.write_compaction(&mut chunk);
        if let Ok(c) = &r {
            if c.records > 0 {
                inner.compact_slot.wrote(c.seq);
            }
        }
        drop(writing);
        let copied = r.as_ref().map_or(0, |c| c.records);
        trace::record(&inner.trace, TraceKind::CompactionEnd, copied);
        chunk.reply(r);
    }

    /// The roll a compaction batch of `frame_body` bytes needs. If the disk has no room for
    /// the next segment, the pool's reserve is taken (`Config::reserve_segment`) and a spell
    /// of refusals begins at the next window (`crate::room`): the reserve is for the
    /// compaction's copies, which make room, and the windows would meet the same full disk
    /// at their next roll anyway. `Error::NoSpace` if there is no reserve either (the
    /// compaction retires what it has copied and tries again, or fails alone).
    fn roll_for_copies(&mut self, frame_body: usize) -> Result<()> {
        let cause = match self.log.roll_for(frame_body) {
            Err(Error::NoSpace { cause }) => cause,
            done => return done,
        };
        if !self.log.roll_into_reserve()? {
            return Err(Error::NoSpace { cause });
        }
        // Every write from the next window on is refused: none was refused before it, and
        // the windows place the spell's start at the first write refused.
        (self.inner.completion.room).begin_before_window(self.in_flight, cause);
        self.inner.throttle.set_no_room(true);
        Ok(())
    }

    /// While a compaction runs, notes the keys the window ending at `end` wrote (its
    /// `survivors`), until it is durable; else forgets any it noted.
    fn track_keys(&mut self, entries: &[Entry<'_>], survivors: &[u32], end: u64) {
        let keys = &mut self.in_flight_keys;
        if self.inner.compact_slot.tracking() {
            // Windows handed on before this one were not noted: a chunk waits for them.
            let slot = &self.inner.compact_slot;
            keys.start(self.in_flight, slot.run());
            keys.forget(slot.forget_upto(self.inner.completion.durable()));
            keys.note(end, survivors.iter().map(|&i| entries[i as usize].key));
        } else if keys.is_on() {
            keys.stop();
        }
    }

    /// Writes `chunk`'s records that are still their keys' newest as one compaction batch
    /// and hands it to the syncer, like a window. Which records those are (`Chunk::keep_live`):
    /// the index says for the durable state, as the scan saw it or asked again once every
    /// window not tracked in `in_flight_keys` is durable and queued in it (it waits for
    /// those, once per compaction); a key a tracked window wrote is newer there. Every later
    /// window comes after the copies in the log, so no copy is ever newer in the log than a
    /// write it is older than.
    fn write_compaction(&mut self, chunk: &mut Chunk) -> Result<Copied> {
        let inner = self.inner.clone();
        let gone = |inner: &Inner| inner.completion.failure().map_or(Error::Closed, failed);
        let run = inner.compact_slot.run();
        let untracked = self.in_flight_keys.start(self.in_flight, run);
        if !Self::drain_pipeline(&inner, untracked) {
            return Err(gone(&inner));
        }
        let upto = inner.compact_slot.forget_upto(inner.completion.durable());
        self.in_flight_keys.forget(upto);
        chunk.keep_live(&inner.index, &self.in_flight_keys, untracked);
        if chunk.is_empty() {
            // Nothing left to copy, maybe because windows written before now (and perhaps
            // not yet durable) wrote the keys: the retirement must wait for them as it
            // would for a batch written here, so that their records, not the prefix's,
            // are the keys' newest in the index when it forgets the prefix.
            return Ok(Copied {
                seq: self.log.next_seq() - 1,
                ..Copied::default()
            });
        }
        let body_len = chunk.body_len();
        let frame_body = body_len + trailer_len(0);
        let rolls = !self.log.fits(frame_body);
        // A chunk of several records fits a segment (`compact`'s `chunk_max`); one record
        // written when segments were larger (`segment_bytes` lowered since) may not fit the
        // segments the log makes now. It cannot be copied: the compaction ends with an
        // error and retires nothing; the engine goes on.
        let frame = frame_len(frame_body);
        if rolls && frame > self.log.frame_max() {
            return Err(Error::InvalidConfig(format!(
                "segment_bytes = {} cannot hold a compaction batch of {frame} bytes: a live \
                 record of {body_len} bytes, written when segments were larger, cannot be \
                 copied; raise segment_bytes",
                inner.config.segment_bytes
            )));
        }
        if rolls {
            trace::record(&inner.trace, TraceKind::RollStart, 0);
        }
        if !Self::room_for_frame(
            &self.log,
            &mut self.unsynced,
            &inner,
            self.in_flight,
            frame_body,
        ) {
            return Err(gone(&inner));
        }
        if rolls {
            if let Err(e) = self.roll_for_copies(frame_body) {
                return match e {
                    Error::NoSpace { .. } => Err(e),
                    e => {
                        inner.completion.fail_after(e, self.in_flight);
                        inner.throttle.wake_all();
                        inner.settle_failure();
                        Err(gone(&inner))
                    }
                };
            }
        }
        // No ring position: it ends where the last window did, and no ticket is in it.
        let mut job = Self::job(&self.spare, self.in_flight);
        let trailer = Trailer {
            ids: &[],
            commit_time: ids::now_nanos(),
        };
        let appended = self.log.append(
            body_len,
            FLAG_SORTED | FLAG_COMPACTION,
            trailer,
            |w, frame_off| {
                chunk.encode(w, frame_off + FRAME_HEADER_LEN as u64, &mut job.updates);
                0
            },
        );
        let frame = match appended {
            Ok(frame) => frame,
            // No room for a segment (`roll_for_copies` rolled already, so not expected here):
            // nothing was written, the log is as it was; the compaction makes room or fails,
            // the engine goes on.
            Err(e @ Error::NoSpace { .. }) => return Err(e),
            Err(e) => {
                inner.completion.fail_after(e, self.in_flight);
                inner.throttle.wake_all();
                inner.settle_failure();
                return Err(gone(&inner));
            }
        };
        if rolls {
            trace::record(&inner.trace, TraceKind::RollEnd, 0);
        }
        in_segment(&mut job.updates, frame.seg_idx);
        let copied = Copied {
            records: chunk.len() as u64,
            bytes: frame_len(frame_body) as u64,
            seq: frame.seq,
        };
        job.frame = Some(frame);
        job.compaction = true;
        // Synced and completed like a window, with the next one; its index updates are
        // applied in log order with the windows'.
        self.hold(job);
        let c = &inner.counters;
        Counters::add(&c.batches, 1);
        Counters::add(&c.records_written, copied.records);
        Counters::add(&c.bytes_written, copied.bytes);
        Counters::add(&c.compaction_batches, 1);
        Counters::add(&c.compaction_records, copied.records);
        Counters::add(&c.compaction_bytes, copied.bytes);
        Ok(copied)
    }

    /// Waits, if need be, until a frame with a body of `body_len` bytes may be written; false
    /// if the engine failed meanwhile.
    fn room_for_frame(
        log: &Log,
        unsynced: &mut VecDeque<(u64, u64)>,
        inner: &Inner,
        in_flight: u64,
        body_len: usize,
    ) -> bool {
        // A frame in a new segment must not become durable before the frames still
        // syncing in the old one: recovery treats damage before the last segment as
        // corruption, not as a torn tail.
        if !log.fits(body_len) {
            if !Self::drain_frames(inner, in_flight, log.next_seq() - 1) {
                return false;
            }
            // With `NoSync` nothing synced those frames, while the roll makes the new segment
            // durable (its activation syncs the directory): after a power loss recovery would
            // find the old segment torn behind a newer one and refuse the log. One sync per
            // segment keeps `NoSync`'s loss to the tail.
            if inner.config.durability == Durability::NoSync {
                if let Err(e) = log.sync_active() {
                    inner.completion.fail(e);
                    inner.throttle.wake_all();
                    return false;
                }
            }
        }
        // At most `UNDURABLE_FRAMES_MAX` frames may be written and not yet durable:
        // recovery relies on it to tell a torn tail from damage to durable history.
        Self::bound_undurable(log, unsynced, inner)
    }
}

/// With a merge operator, the newest value each key was given by windows written and not yet
/// known durable (`None`: deleted), with the end of the window that wrote it. A value longer
/// than [`IN_FLIGHT_COPY_MAX`] is not copied: its location in the frame written for it is
/// kept (`InFlight::Written`), and a merge onto it reads it there (`Flusher::resolve_merges`).
#[derive(Default)]
struct InFlightValues {
    values: hashbrown::HashMap<Vec<u8>, (u64, InFlight), foldhash::fast::RandomState>,
    /// Buffers of forgotten keys and values, reused for the next ones: every window notes
    /// each of its survivors, and the entries go once durable (one or two windows later), so
    /// without them each survivor would cost an allocation and a free or two.
    spare: Vec<Vec<u8>>,
}

/// A record's index update as its frame was written (`Job::updates`): its key's offset and
/// length, and its value's location (`None`: a delete).
type FrameUpdate = (u64, u32, Option<Loc>);

/// What `InFlightValues` holds of a key's newest value.
enum InFlight {
    /// A copy of it (`None`: deleted).
    Copied(Option<Vec<u8>>),
    /// Longer than `IN_FLIGHT_COPY_MAX`: where the window's frame holds it.
    Written(Loc),
}

/// A key's newest value in flight, as `InFlightValues::get` gives it.
#[derive(Debug, PartialEq)]
enum Newest<'a> {
    /// Its copy (`None`: deleted).
    Copied(Option<&'a [u8]>),
    /// Where its window's frame holds it, written and not yet durable.
    Written(Loc),
}

/// The most buffers `InFlightValues` keeps for reuse, and the largest it keeps (a value's
/// buffer can be up to `value_len_max`).
const SPARE_BUFFERS_MAX: usize = 4096;
const SPARE_BUFFER_BYTES_MAX: usize = 256;

/// The longest value `InFlightValues` copies. A longer one would be held a second time, from
/// its window's write until the next window forgets it (however long the engine then idles);
/// a merge onto it reads it from the frame instead (a short one is copied: one lookup of the
/// segment list per read would cost more than the copy).
const IN_FLIGHT_COPY_MAX: usize = 64 << 10;

impl InFlightValues {
    /// Notes what the window ending at `end` wrote: its `survivors`, in log order, and their
    /// index updates as the frame was written (`Job::updates`, one per survivor, in order),
    /// which say where each value lies.
    fn note(
        &mut self,
        window: (&[Entry<'_>], &Resolver),
        (survivors, written): (&[u32], &[FrameUpdate]),
        end: u64,
    ) {
        debug_assert_eq!(survivors.len(), written.len());
        let spare = &mut self.spare;
        for (&i, update) in survivors.iter().zip(written) {
            let key = window.0[i as usize].key;
            let value = logged_value(window, i);
            let at = update
                .2
                .filter(|_| value.is_some_and(|v| v.len() > IN_FLIGHT_COPY_MAX));
            match self.values.get_mut(key) {
                Some((ended, held)) => {
                    *ended = end;
                    match (&mut *held, value, at) {
                        (InFlight::Copied(Some(buf)), Some(v), None) => {
                            buf.clear();
                            buf.extend_from_slice(v);
                        }
                        (old, v, at) => {
                            if let InFlight::Copied(Some(old)) =
                                std::mem::replace(old, InFlight::Copied(None))
                            {
                                keep_spare(spare, old);
                            }
                            *held = match at {
                                Some(loc) => InFlight::Written(loc),
                                None => InFlight::Copied(v.map(|v| copy_into_spare(spare, v))),
                            };
                        }
                    }
                }
                None => {
                    let held = match at {
                        Some(loc) => InFlight::Written(loc),
                        None => InFlight::Copied(value.map(|v| copy_into_spare(spare, v))),
                    };
                    self.values.insert(copy_into_spare(spare, key), (end, held));
                }
            }
        }
    }

    /// Forgets the values of windows the watermark `durable` has passed: the index has them.
    fn forget_durable(&mut self, durable: u64) {
        let spare = &mut self.spare;
        for (key, (_, held)) in self.values.extract_if(|_, (end, _)| *end <= durable) {
            keep_spare(spare, key);
            if let InFlight::Copied(Some(value)) = held {
                keep_spare(spare, value);
            }
        }
    }

    /// The newest value a window in flight wrote for `key`, if one did.
    fn get(&self, key: &[u8]) -> Option<Newest<'_>> {
        Some(match &self.values.get(key)?.1 {
            InFlight::Copied(v) => Newest::Copied(v.as_deref()),
            InFlight::Written(loc) => Newest::Written(*loc),
        })
    }
}

/// `bytes` in a buffer from `spare` if one is there, else a new one.
fn copy_into_spare(spare: &mut Vec<Vec<u8>>, bytes: &[u8]) -> Vec<u8> {
    match spare.pop() {
        Some(mut buf) => {
            buf.clear();
            buf.extend_from_slice(bytes);
            buf
        }
        None => bytes.to_vec(),
    }
}

/// Keeps `buf` for reuse unless `spare` is full or `buf` is large.
fn keep_spare(spare: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if spare.len() < SPARE_BUFFERS_MAX && buf.capacity() <= SPARE_BUFFER_BYTES_MAX {
        spare.push(buf);
    }
}

/// The value a write at entry index `i` logs: a put's, a merge's merged value, `None` for a
/// delete.
fn logged_value<'a>((entries, merged): (&[Entry<'a>], &'a Resolver), i: u32) -> Option<&'a [u8]> {
    match entries[i as usize].op {
        Op::Put(v) => Some(v),
        Op::Merge(_) => {
            let v = merged.value(i);
            debug_assert!(v.is_some(), "merge {i} logged without its value");
            Some(v.unwrap_or_default())
        }
        _ => None,
    }
}

/// Body length of the frame holding the window's `survivors` (entry indices).
fn body_len(window: (&[Entry<'_>], &Resolver), survivors: &[u32]) -> usize {
    survivors
        .iter()
        .map(|&i| {
            let v = logged_value(window, i).map_or(0, <[u8]>::len);
            record_len(window.0[i as usize].key.len(), v)
        })
        .sum()
}

/// Appends the window's `survivors` (entry indices) to the log as one frame, whose
/// acknowledged-op count is `writes` (the window's writes, coalesced ones included), and
/// fills `updates` with where each survivor's key and value are in the frame's segment (for
/// the index, once the frame is durable).
fn append_frame(
    log: &mut Log,
    (entries, merged, survivors): (&[Entry<'_>], &Resolver, &[u32]),
    (body_len, trailer): (usize, Trailer<'_>),
    flags: u32,
    writes: u32,
    updates: &mut Vec<(u64, u32, Option<Loc>)>,
) -> Result<WrittenFrame> {
    let frame = log.append(body_len, flags, trailer, |w, frame_off| {
        let mut off = frame_off + FRAME_HEADER_LEN as u64;
        for &i in survivors {
            let e = &entries[i as usize];
            let (op, value) = match logged_value((entries, merged), i) {
                Some(v) => (RecordOp::Put, v),
                None => (RecordOp::Delete, &[][..]),
            };
            w.push(op, e.key, value);
            let key_off = off + RECORD_HEADER_LEN as u64;
            let value_off = key_off + e.key.len() as u64;
            updates.push((
                key_off,
                e.key.len() as u32,
                (op == RecordOp::Put).then_some(Loc {
                    seg: 0,
                    off: value_off,
                    len: value.len() as u32,
                }),
            ));
            off += record_len(e.key.len(), value.len()) as u64;
        }
        writes
    })?;
    in_segment(updates, frame.seg_idx);
    Ok(frame)
}

/// Sets the segment of a frame's index updates once the frame is written (the encoder does
/// not know whether the append rolled to a new segment).
fn in_segment(updates: &mut [(u64, u32, Option<Loc>)], seg_idx: u32) {
    for loc in updates.iter_mut().filter_map(|u| u.2.as_mut()) {
        loc.seg = seg_idx;
    }
}

/// The request-id side of reading a window: the table (locked at the first id, and for the
/// rest of the turn), the completion's duplicates, the ids the window logs, and the batch it
/// will be written as.
struct TakeIds<'a> {
    table: Option<parking_lot::MutexGuard<'a, Ids>>,
    ids: &'a parking_lot::Mutex<Ids>,
    duplicates: &'a ids::Duplicates,
    logged: &'a mut Vec<[u8; ID_LEN]>,
    logged_ends: &'a mut Vec<u64>,
    dups_here: &'a mut Vec<(u64, [u8; ID_LEN])>,
    seq: u64,
    /// When the turn took its first id (read once per turn).
    time: u64,
}

impl TakeIds<'_> {
    /// Takes the request with id `id` (ring end position `pos`) into the window: true if
    /// the id is new (it enters the table, as logged by this window's batch), false if the
    /// table has it (logged, in flight, or earlier in this window): a duplicate, recorded
    /// as one for its ticket before the watermark can reach it.
    fn take(&mut self, id: RequestId, pos: u64) -> bool {
        if self.table.is_none() {
            self.table = Some(self.ids.lock());
            self.time = ids::now_nanos();
        }
        let table = self.table.as_mut().expect("locked above");
        let entry = IdEntry {
            seq: self.seq,
            time: self.time,
        };
        match table.take(id, entry) {
            Ok(()) => {
                self.logged.push(id.0);
                self.logged_ends.push(pos);
                true
            }
            Err(original) => {
                self.duplicates.record(pos, original);
                if original == self.seq {
                    self.dups_here.push((pos, id.0));
                }
                false
            }
        }
    }
}

/// How long the flusher, once the engine is closed, waits for a producer that claimed ring
/// space to publish it, before it gives up on the request and everything after it (see
/// `Engine::close`). A producer is inside that span only while it copies its request, so
/// only a thread stopped there (preempted for this long, frozen by a debugger or a signal
/// handler that never returns) reaches it.
#[cfg(not(test))]
const CLOSE_STALL_MAX: Duration = Duration::from_secs(10);
#[cfg(test)]
const CLOSE_STALL_MAX: Duration = Duration::from_millis(200);

/// Takes the requests of the merges `merged` refused out of the window (their operations
/// become [`Op::Nop`]) and records each refusal for its ticket; returns the operations taken
/// out. Refusals are taken in order up to the first of a request with several operations (a
/// write batch): taking it out changes what the merges after it apply to, so those are
/// merged again before they are judged.
fn refuse(
    inner: &Inner,
    operator: &'static str,
    entries: &mut [Entry<'_>],
    (requests, refused): (&[(u32, u64)], &mut Vec<u64>),
    merged: &Resolver,
) -> usize {
    let mut taken_out = 0;
    let mut last = None;
    for (i, reason) in &merged.refused {
        let r = requests.partition_point(|q| q.0 <= *i) - 1;
        if last == Some(r) {
            continue; // a batch's second refused merge
        }
        last = Some(r);
        let ops = refuse_request(
            inner,
            Some(operator),
            entries,
            (requests, refused),
            r,
            reason,
        );
        taken_out += ops;
        if ops > 1 {
            break;
        }
    }
    taken_out
}

/// Whether a request's entries write (a put, delete or merge not taken out): what a full disk
/// refuses. Gets and duplicates of request ids (`Op::Nop`) do not.
fn writes(ops: &[Entry<'_>]) -> bool {
    ops.iter()
        .any(|e| matches!(e.op, Op::Put(_) | Op::Delete | Op::Merge(_)))
}

/// The entries `first..end` of the window's request `r`.
fn request_entries(requests: &[(u32, u64)], r: usize, entries: usize) -> (usize, usize) {
    let end = requests.get(r + 1).map_or(entries, |q| q.0 as usize);
    (requests[r].0 as usize, end)
}

/// Takes request `r` out of the window (its operations become [`Op::Nop`]) and records its
/// refusal, `MergeRefused` for `reason`, for its ticket, and its end position in `refused`;
/// returns its operations.
fn refuse_request(
    inner: &Inner,
    operator: Option<&'static str>,
    entries: &mut [Entry<'_>],
    (requests, refused): (&[(u32, u64)], &mut Vec<u64>),
    r: usize,
    reason: &str,
) -> usize {
    let (first, end) = request_entries(requests, r, entries.len());
    let ops = &mut entries[first..end];
    ops.iter_mut().for_each(|e| e.op = Op::Nop);
    let reason = reason.to_owned();
    refused.push(requests[r].1);
    inner
        .completion
        .refusals
        .record(requests[r].1, Error::MergeRefused { operator, reason });
    Counters::add(&inner.counters.merges_refused, 1);
    inner
        .counters
        .writes
        .fetch_sub(ops.len() as u64, Ordering::Relaxed);
    ops.len()
}

/// Fills every get's slot: from an earlier write of the window, or from one index lookup
/// per run of gets that share it.
fn answer_gets(
    inner: &Inner,
    (entries, merged): (&[Entry<'_>], &Resolver),
    gets: &[(u32, GetAnswer)],
    slots: &[(u32, Arc<GetSlot>)],
    lookups: &mut Vec<(u32, u32, Option<Vec<u8>>)>,
    answers: &mut Vec<(u32, GetAnswer)>,
) {
    lookups.clear();
    for &(g, ans) in gets {
        if ans == GetAnswer::Lookup(g) {
            let v = ValueRef::lookup(&inner.index, &inner.segments, entries[g as usize].key)
                .map(|v| v.to_vec());
            lookups.push((g, 0, v));
        }
    }
    lookups.sort_unstable_by_key(|l| l.0);
    // How many gets share each lookup: the last of them takes its value, the others a copy
    // each (one copy per answer, never one more, and none kept after the window).
    for &(_, ans) in gets {
        if let GetAnswer::Lookup(first) = ans {
            if let Ok(i) = lookups.binary_search_by_key(&first, |l| l.0) {
                lookups[i].1 += 1;
            }
        }
    }
    // Slots are in entry order; put the answers in the same order and zip.
    answers.clear();
    answers.extend_from_slice(gets);
    answers.sort_unstable_by_key(|a| a.0);
    debug_assert_eq!(answers.len(), slots.len());
    for ((g, slot), &(a, answer)) in slots.iter().zip(answers.iter()) {
        debug_assert_eq!(*g, a);
        let value = match answer {
            GetAnswer::Write(w) => logged_value((entries, merged), w).map(<[u8]>::to_vec),
            GetAnswer::Lookup(first) => {
                let at = lookups.binary_search_by_key(&first, |l| l.0);
                at.ok().and_then(|i| {
                    let (_, uses, value) = &mut lookups[i];
                    *uses -= 1;
                    match uses {
                        0 => value.take(),
                        _ => value.clone(),
                    }
                })
            }
        };
        // Visible to the get's owner only once the watermark passes it.
        slot.fill(value);
    }
    lookups.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::request;
    use std::sync::mpsc;

    /// A bound on every wait of these tests: reaching it means a hang.
    const HANG: Duration = Duration::from_secs(60);

    /// `InFlightValues` copies values up to `IN_FLIGHT_COPY_MAX` and keeps where the frame
    /// holds a longer one; a later write of the key replaces either, and forgetting a durable
    /// window forgets both kinds.
    #[test]
    fn in_flight_values_copy_short_values_and_locate_long_ones() {
        let short = vec![1u8; IN_FLIGHT_COPY_MAX];
        let long = vec![2u8; IN_FLIGHT_COPY_MAX + 1];
        let resolver = Resolver::default();
        let mut values = InFlightValues::default();
        let at = |off: u64, len: usize| Loc {
            seg: 3,
            off,
            len: len as u32,
        };
        let window = [
            Entry {
                key: b"a",
                op: Op::Put(&short),
            },
            Entry {
                key: b"b",
                op: Op::Put(&long),
            },
            Entry {
                key: b"c",
                op: Op::Delete,
            },
        ];
        let written = [
            (0, 1, Some(at(100, short.len()))),
            (0, 1, Some(at(200, long.len()))),
            (0, 1, None),
        ];
        values.note((&window, &resolver), (&[0, 1, 2], &written), 10);
        assert_eq!(values.get(b"a"), Some(Newest::Copied(Some(&short[..]))));
        assert_eq!(values.get(b"b"), Some(Newest::Written(at(200, long.len()))));
        assert_eq!(values.get(b"c"), Some(Newest::Copied(None)));
        // The long value's key written short, the short one's long, in a later window.
        let window = [
            Entry {
                key: b"b",
                op: Op::Put(b"x"),
            },
            Entry {
                key: b"a",
                op: Op::Put(&long),
            },
        ];
        let written = [(0, 1, Some(at(300, 1))), (0, 1, Some(at(400, long.len())))];
        values.note((&window, &resolver), (&[0, 1], &written), 20);
        assert_eq!(values.get(b"b"), Some(Newest::Copied(Some(&b"x"[..]))));
        assert_eq!(values.get(b"a"), Some(Newest::Written(at(400, long.len()))));
        values.forget_durable(10);
        assert_eq!(values.get(b"c"), None);
        values.forget_durable(20);
        assert!(values.values.is_empty());
        assert_eq!(values.get(b"a"), None);
    }

    /// A producer frozen between claim and publish cannot hold `close` forever: after
    /// `CLOSE_STALL_MAX` the flusher gives up, `close` says why, the tickets before the claim
    /// are durable and every one from it on fails; the producer's late publish into the closed
    /// ring is harmless and its own ticket fails too.
    #[test]
    fn close_gives_up_on_a_producer_stalled_between_claim_and_publish() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), Config::default()).expect("open"));
        let before = engine.put(b"before", b"1").expect("put");
        before.wait_timeout(HANG).expect("durable");
        let before_close = engine.put(b"before-close", b"2").expect("put");
        before_close.wait_timeout(HANG).expect("durable");

        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let producer = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let key = b"stalled";
                let pos = engine
                    .submit(request::put_len(key, b"v"), |buf| {
                        entered_tx.send(()).unwrap();
                        // Frozen here, holding a claim, until the test lets it go.
                        release_rx.recv_timeout(HANG).expect("released");
                        request::encode_put(buf, key, b"v", 0, None);
                    })
                    .expect("claimed before close");
                engine.ticket(pos).wait_timeout(HANG)
            })
        };
        entered_rx.recv_timeout(HANG).expect("the producer claimed");
        // Published, but behind the stalled claim.
        let after = engine.put(b"after", b"3").expect("put");

        let closer = {
            let engine = engine.clone();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || tx.send(engine.close()).unwrap());
            rx
        };
        let closed = closer.recv_timeout(HANG).expect("close hung");
        let cause = match closed {
            Err(Error::Failed(cause)) => cause,
            other => panic!("close returned {other:?}, not the stall"),
        };
        // The stalled claim is the one right after `before-close`, before `after`.
        match *cause {
            Error::Stalled { position, .. } => assert!(
                before_close.position() <= position && position < after.position(),
                "stalled at {position}, not between {} and {}",
                before_close.position(),
                after.position()
            ),
            ref other => panic!("close failed with {other:?}, not the stall"),
        }
        let msg = cause.to_string();
        assert!(
            msg.contains("ring position")
                && msg.contains("not published")
                && msg.contains("not written"),
            "{msg}"
        );
        assert!(before.wait_timeout(HANG).is_ok());
        assert!(before_close.wait_timeout(HANG).is_ok());
        assert!(
            matches!(after.wait_timeout(HANG), Err(Error::Failed(_))),
            "a request behind the stall was acknowledged"
        );
        assert!(matches!(engine.failure(), Some(Error::Failed(_))));
        // The directory is free: the new engine has what was durable, nothing after it.
        let reopened = Engine::open(dir.path(), Config::default()).expect("reopen");
        assert_eq!(
            reopened.read_to_vec(b"before-close").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(reopened.read_to_vec(b"after").unwrap(), None);
        reopened.close().expect("close the reopened engine");

        // The stalled producer finishes its copy and publishes into the closed ring: no panic,
        // no hang, and its ticket reports the failure.
        release_tx.send(()).unwrap();
        let outcome = producer.join().expect("the stalled producer panicked");
        assert!(matches!(outcome, Err(Error::Failed(_))), "{outcome:?}");
        assert!(engine.put(b"later", b"4").is_err());
        drop(engine);
    }
}
