//! The pipeline: the two threads behind the engine's API, and the hand-offs between them.
//!
//! The path of a request:
//!
//! 1. A producer (`Engine::put`, `delete`, `get`, `write`) encodes the request into a record
//!    of the ingest ring ([`crate::ring`], format in [`crate::request`]) and gets a ticket: the
//!    record's end position.
//! 2. The flusher thread, `mergelog-flusher` ([`flusher`]), reads the published records into
//!    a window and asks [`window::decide`] on every turn whether to cut it; once cut, it
//!    coalesces and sorts the window ([`crate::coalesce`]), answers its gets, commits the
//!    surviving writes as one frame to the log ([`crate::log`]) and sends the job on.
//! 3. The syncer thread, `mergelog-syncer` ([`syncer`]), takes every job waiting as one sync
//!    group: one sync for all their frames, then it completes them: publishes the frames,
//!    queues the index updates, advances the durable watermark (`ticket::Completion`), which
//!    wakes the tickets. When nothing else is in flight the flusher completes a job itself.
//!    A producer that waits for its request while nothing is in flight does steps 2 and 3
//!    itself, on its own thread, holding the flusher's state (`flusher::help`).
//!    With `Config::syncers` > 1 (the default 2) several syncers take groups in turn and,
//!    while the disk is slow (`Config::overlap_syncs_above`), sync them at once; the groups
//!    complete in turn order ([`handoff::SyncTurns`]).
//!
//! A third thread, `mergelog-prep`, prepares the next segment file (`log`). [`Inner`] is the
//! state the API and the threads share; a failure is sticky: it is recorded once in the
//! completion and every later call reports it ([`failed`]).
//!
//! The hand-offs are kept apart from the threads so that loom can model them: under
//! `--cfg loom` only [`handoff`] is built, with the atomics and the mutex of [`crate::sync`].
//!
//! * [`handoff`]: waiting for the durable watermark without blocking a thread: the wakers of
//!   pending futures ([`handoff::FutureWakers`], used by `ticket::Completion`) and the
//!   flusher's nap until the sync in flight completes ([`handoff::SyncNap`]); the followers and consumers waiting for the durable batch
//!   sequence ([`handoff::SeqWaiters`], notified by the syncer through
//!   `reader::LiveLog::advance`); the syncers' sleep until a job comes
//!   ([`handoff::SyncerBell`]) and their turns ([`handoff::SyncTurns`]).
//! * [`window`]: when the flusher cuts a window, a pure function over what it observed (not
//!   built under loom: it has no hand-off to model).
//! * [`flusher`]: the flusher thread (windows, coalescing, log writes).
//! * [`syncer`]: the syncer threads (syncs and completions).
//! * [`poll`]: the idle pollers (`Config::idle_poll_threads`, none by default), which keep
//!   CPUs from idling while requests are in flight.

#[cfg(not(loom))]
pub(crate) mod flusher;
pub(crate) mod handoff;
#[cfg(not(loom))]
mod poll;
#[cfg(not(loom))]
pub(crate) mod syncer;
#[cfg(not(loom))]
pub(crate) mod window;

#[cfg(not(loom))]
use self::{
    flusher::{Desk, Flusher, Job},
    handoff::SyncNap,
    syncer::{SyncClock, Syncer, Syncers},
};
#[cfg(not(loom))]
use crate::{
    config::{Config, Durability},
    error::{Error, Result},
    ids::{Ids, IdsRoom},
    index::Index,
    log::{
        clean::CleanMark, io::SharedIo, open::Recovered, pool::Pool, Log, SegmentList, Segments,
    },
    reader::LiveLog,
    ring::{self, Consumer, Ring},
    stats::Counters,
    throttle::Throttle,
    ticket::Completion,
};
#[cfg(not(loom))]
use parking_lot::{Mutex, RwLock};
#[cfg(not(loom))]
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize},
    sync::{Arc, OnceLock},
    thread::JoinHandle,
};

/// The state shared by the public API (`Engine`, in `engine.rs`) and the pipeline threads.
#[cfg(not(loom))]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    /// The file hooks (fault injection in tests).
    pub(crate) io: SharedIo,
    /// Serializes `retire_before` calls, and the creation of a consumer's file with them
    /// (`Engine::consumer`, and `LogReader::consumer` of a view of this engine, which holds
    /// it too).
    pub(crate) retire_lock: Arc<Mutex<()>>,
    /// Serializes compactions (`crate::compact`).
    pub(crate) compact_lock: Mutex<()>,
    /// Where a compaction hands its batches to the flusher.
    pub(crate) compact_slot: crate::compact::CompactSlot,
    /// Retired segments kept for reuse.
    pub(crate) pool: Arc<Pool>,
    pub(crate) config: Config,
    pub(crate) ring: Arc<Ring>,
    pub(crate) completion: Arc<Completion>,
    /// What tickets hold `completion` through (`crate::ticket::Anchors`).
    pub(crate) anchors: crate::ticket::Anchors,
    /// Declared before every segment list: it points into their mappings, so it must be
    /// dropped first.
    pub(crate) index: Index,
    pub(crate) segments: Segments,
    /// Mappings replaced during recovery that the index may still point into (a segment a
    /// cut reopened writable: its frames were visited through its read-only mapping). Each
    /// is dropped once its segment is retired (`engine::retire_held_off`, after the index
    /// forgot the keys pointing into it): kept longer, a retired file stayed mapped, its
    /// space held and, pooled, never reused.
    pub(crate) replaced_maps: Mutex<Vec<Arc<crate::log::segment::Segment>>>,
    pub(crate) counters: Counters,
    /// Stamps requests for the end-to-end histogram: the CPU's time-stamp counter where it is
    /// invariant (13 ns a read here, against 37 ns for `Instant::now`, and every request
    /// pays one), else the OS clock. Stamps are raw counter values, scaled when recorded.
    pub(crate) clock: quanta::Clock,
    /// Ring position up to which a `flush()` asked for an immediate cut.
    pub(crate) flush_to: AtomicU64,
    pub(crate) request_len_max: usize,
    pub(crate) request_limit: crate::error::RequestLimit,
    /// Sequence number of the last durable batch, and whether the pipeline has stopped (for
    /// in-process followers).
    pub(crate) live: Arc<LiveLog>,
    /// Throttling on consumer lag (`Config::consumer_lag_max`): the flag `put`, `delete`,
    /// `merge` and `write` load, set and cleared as the lag changes.
    pub(crate) throttle: Arc<Throttle>,
    /// Jobs handed to the syncer and not yet taken by it.
    pub(crate) queued: AtomicUsize,
    /// Groups a syncer took whose completion has not ended: raised before `queued` drops,
    /// lowered after the group's watermark advance, so that whoever reads `queued` and then
    /// this, both zero, knows no completion runs or is to come (`Flusher::send`'s idle check,
    /// `flusher::help`). A group that ends in a compaction batch moves the durable sequence
    /// but not the watermark (its end is the window's before it), so neither shows it.
    pub(crate) completing: AtomicUsize,
    /// The flusher's thread, set when it starts: woken by [`Inner::poke_flusher`].
    pub(crate) flusher_thread: OnceLock<std::thread::Thread>,
    /// The flusher's state, held by whoever is the flusher: its thread, or a producer that
    /// writes its own window while nothing is in flight (`flusher::help`). `None` once the
    /// flusher's thread has stopped (it takes the desk out, which closes the channel to the
    /// syncers and drops the flusher's `Arc<Inner>`).
    pub(crate) desk: Mutex<Option<Desk>>,
    /// Set while producers write their own windows: the flusher's thread then sleeps without
    /// being woken by every publish, and a producer that does not write its request's
    /// window wakes it (`flusher::poke_if_lazy`).
    pub(crate) flusher_lazy: AtomicBool,
    /// Announced while an adaptive window naps until the sync in flight completes (see
    /// [`window::MERGE_BELOW`]): the completion then pokes the flusher.
    pub(crate) sync_nap: SyncNap,
    /// Where the disk's time goes (`Stats::sync_time`): the syncs running and when the last
    /// one ended.
    pub(crate) sync_clock: Mutex<SyncClock>,
    /// The syncer threads (`Config::syncers`): where they sleep, and their turns.
    pub(crate) syncers: Syncers,
    /// Where the log ended when the flusher drained the ring and stopped: `close` writes it
    /// as the clean-close mark once every job is complete and nothing failed.
    pub(crate) end_mark: Mutex<Option<CleanMark>>,
    /// The request ids the engine remembers (changed by the flusher; see `crate::ids`).
    pub(crate) ids: Mutex<Ids>,
    /// The room kept for the `ids` file's replacement (`crate::ids::IdsRoom`).
    pub(crate) ids_room: Arc<IdsRoom>,
    /// The pipeline's timeline, if `Config::trace_events` asks for one.
    pub(crate) trace: Option<crate::trace::Recorder>,
}

#[cfg(not(loom))]
impl Inner {
    /// Waits until batch `seq`, written and handed on, is durable; `Err` with what `gone`
    /// returns once it gives a reason to stop. A failed sync neither moves the sequence nor
    /// wakes its waiters, so `gone` is looked at again every `poll`.
    pub(crate) fn wait_durable_seq<E>(
        &self,
        seq: u64,
        poll: std::time::Duration,
        gone: impl Fn() -> Option<E>,
    ) -> std::result::Result<(), E> {
        loop {
            if self
                .live
                .durable_seq
                .load(std::sync::atomic::Ordering::Acquire)
                >= seq
            {
                return Ok(());
            }
            if let Some(e) = gone() {
                return Err(e);
            }
            self.live
                .wait_for(seq, Some(std::time::Instant::now() + poll));
        }
    }

    /// Fails the engine with `e` outside the pipeline's threads (a failed sync a retirement or
    /// compaction made): every request not yet durable fails, throttled submitters look
    /// again. Returns the sticky error the caller reports.
    pub(crate) fn fail(&self, e: &Error) -> Error {
        self.completion.fail(e.clone());
        self.throttle.wake_all();
        failed(e)
    }

    /// After a failure that left jobs with the syncers (`Completion::fail_after`, a failed
    /// write): once none is queued or completing, nothing more becomes durable, and the
    /// followers and consumers are told (they end with `Error::Failed` once they have
    /// yielded every durable batch, the ones those jobs made durable included). Called by
    /// the flusher after `fail_after` and by a syncer after each completion; the SeqCst pairs
    /// (failure set, then counts read; counts lowered, then failure read) make one of them
    /// see both.
    pub(crate) fn settle_failure(&self) {
        if self.completion.has_failed()
            && self.queued.load(std::sync::atomic::Ordering::SeqCst) == 0
            && self.completing.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            self.completion.tell_followers();
        }
    }

    /// Wakes the flusher wherever it waits for something other than the durable watermark:
    /// for records in the ring, or for the log to have room for a window (after the syncer
    /// takes the queued job, a flush, or close).
    pub(crate) fn poke_flusher(&self) {
        self.ring.notify_consumer();
        if let Some(t) = self.flusher_thread.get() {
            t.unpark();
        }
    }
}

/// Continues the recovered log: its writing end, the state the API shares with the
/// pipeline threads, and the threads, started (the flusher's handle is returned).
#[cfg(not(loom))]
pub(crate) fn start(
    dir: &Path,
    io: &SharedIo,
    config: Config,
    index: Index,
    recovered: Recovered,
    ids: Ids,
) -> Result<(Arc<Inner>, JoinHandle<()>)> {
    let pool = recovered.spares.pool.clone();
    let segments: Segments = Arc::new(RwLock::new(SegmentList::new(recovered.segments)));
    let ids_room = Arc::new(IdsRoom::new(io, dir, config.request_ids));
    let mut spares = recovered.spares;
    spares.ids_room = Some(ids_room.clone());
    let log = Log::new(
        dir,
        segments.clone(),
        recovered.write_off,
        recovered.next_seq,
        &config,
        spares,
        io,
    )?;

    let live = Arc::new(LiveLog::new(recovered.next_seq.saturating_sub(1)));
    let retire_lock = Arc::new(Mutex::new(()));
    let throttle = Arc::new(Throttle::new(
        config.consumer_lag_max,
        dir.to_owned(),
        segments.clone(),
        live.clone(),
        retire_lock.clone(),
    ));
    let (ring, consumer) = ring::ring(config.ring_bytes);
    let (request_len_max, request_limit) = config.request_len_max(ring.max_payload());
    let completion = Arc::new(Completion::at(
        ring.head(),
        recovered.next_seq.saturating_sub(1),
    ));
    completion.notify_on_failure(live.clone());
    let anchors = crate::ticket::Anchors::new(&completion);
    let inner = Arc::new(Inner {
        dir: dir.to_owned(),
        io: io.clone(),
        retire_lock,
        compact_lock: Mutex::new(()),
        compact_slot: Default::default(),
        pool,
        completion,
        anchors,
        ring,
        index,
        segments,
        replaced_maps: Mutex::new(recovered.retired),
        counters: Counters::default(),
        clock: quanta::Clock::new(),
        flush_to: AtomicU64::new(0),
        request_len_max,
        request_limit,
        live,
        throttle,
        queued: AtomicUsize::new(0),
        completing: AtomicUsize::new(0),
        flusher_thread: OnceLock::new(),
        desk: Mutex::new(None),
        flusher_lazy: AtomicBool::new(false),
        sync_nap: SyncNap::new(),
        sync_clock: Mutex::new(SyncClock::default()),
        syncers: Syncers::new(
            match config.durability {
                Durability::Sync => config.syncers,
                // Nothing to sync: one thread completes the jobs, as ever.
                Durability::NoSync => 1,
            },
            config.overlap_syncs_above,
        ),
        end_mark: Mutex::new(None),
        ids: Mutex::new(ids),
        ids_room,
        trace: crate::trace::Recorder::new(config.trace_events),
        config,
    });
    // The consumers left by earlier runs may already lag too far.
    inner.throttle.measure();
    let handle = start_pipeline(inner.clone(), log, consumer)
        .map_err(|e| Error::io("spawn flusher thread", dir, e))?;
    Ok((inner, handle))
}

/// Starts the pipeline threads (the flusher and `Config::syncers` syncers); the returned
/// handle is the flusher's, which joins the syncers before it returns.
#[cfg(not(loom))]
pub(crate) fn start_pipeline(
    inner: Arc<Inner>,
    log: Log,
    consumer: Consumer,
) -> std::io::Result<JoinHandle<()>> {
    // One job syncing and one ready: enough to overlap the next window's CPU work with the
    // sync, few enough that a window is cut no earlier than it is needed. (With several
    // syncers a free one takes the ready job at once.) Room for two: a compaction batch
    // goes on with the window after it, handed on first without waking a syncer
    // (`Flusher::send`); with room for one, the window would wait for room that no syncer
    // was woken to make.
    let (to_syncer, jobs) = crossbeam::channel::bounded::<Job>(2);
    let (give_back, spare) = crossbeam::channel::bounded::<Job>(4 + inner.syncers.count);
    let mut syncers = Vec::with_capacity(inner.syncers.count);
    for i in 0..inner.syncers.count {
        let syncer = Syncer::new(inner.clone(), i, jobs.clone(), give_back.clone());
        let syncer_inner = inner.clone();
        // Every syncer's name starts with the 15 bytes the kernel keeps of it
        // (`mergelog-syncer`), so tools that sum the syncers' CPU find them all.
        let name = match i {
            0 => "mergelog-syncer".to_owned(),
            i => format!("mergelog-syncer-{i}"),
        };
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            guard_thread(&syncer_inner, "syncer", || syncer.run());
        });
        match spawned {
            Ok(handle) => syncers.push(handle),
            Err(e) => {
                // Those started see the channel close (with `to_syncer` dropped) and end.
                drop(to_syncer);
                for handle in syncers {
                    handle.thread().unpark();
                    let _ = handle.join();
                }
                return Err(e);
            }
        }
    }
    drop(jobs);
    if inner.syncers.count > 1 {
        // A syncer takes any job it finds while it is awake, so one whose thread started
        // late would sync beside the first although syncs may not overlap yet: the bell
        // wakes the others only while syncs may overlap (`SyncerBell::ring`). Each goes to
        // its first sleep before any job can exist. Bounded: it only steers wake-ups, and a
        // thread that failed at its start fails the engine on its own account.
        let started = std::time::Instant::now();
        while !inner.syncers.all_asleep() && started.elapsed() < std::time::Duration::from_secs(1) {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
    // If the flusher's thread cannot start, the closure below (with the syncers' handles) is
    // dropped unrun, and the desk (with the channel's sender) is dropped below: these wake
    // the syncers to see the channel closed and end, instead of staying parked.
    let syncer_threads: Vec<std::thread::Thread> =
        syncers.iter().map(|h| h.thread().clone()).collect();
    let flusher = Flusher::new(inner.clone(), log, to_syncer, spare, give_back);
    *inner.desk.lock() = Some(Desk::new(flusher, consumer));
    let weak = Arc::downgrade(&inner);
    let _ = inner.completion.helper.set(Box::new(move |pos, write| {
        if let Some(inner) = weak.upgrade() {
            if write {
                flusher::help(&inner, pos);
            } else {
                flusher::poke_if_lazy(&inner);
            }
        }
    }));
    // The idle pollers (none by default) end with the flusher's thread, which joins them.
    let poll_stop = Arc::new(AtomicBool::new(false));
    let pollers = poll::start(
        inner.config.idle_poll_threads,
        &inner.ring,
        &inner.completion,
        &poll_stop,
    );
    let stop_polling = poll_stop.clone();
    let thread_inner = inner.clone();
    let spawned = std::thread::Builder::new()
        .name("mergelog-flusher".into())
        .spawn(move || {
            // The adaptive window parks for tens of microseconds; the default 50 µs timer
            // slack would stretch every such wait several times over.
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; no memory is
            // passed to the kernel.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            let inner = thread_inner;
            guard_thread(&inner, "flusher", || flusher::run(inner.clone()));
            // After a panic the desk is still there: dropping it closes the channel to the
            // syncers (and drops the flusher's `Arc<Inner>`).
            drop(inner.desk.lock().take());
            // The flusher is gone and with it the channel's sender: wake the syncers to
            // complete what they hold and see that.
            for syncer in &syncers {
                syncer.thread().unpark();
            }
            for syncer in syncers {
                let _ = syncer.join();
            }
            stop_polling.store(true, std::sync::atomic::Ordering::Relaxed);
            for poller in pollers {
                let _ = poller.join();
            }
            // Nothing becomes durable any more: in-process followers end (Release: after the
            // last store of `durable_seq`).
            inner.live.stop();
            // Submitters throttled on consumer lag look again: the engine closed or failed.
            inner.throttle.wake_all();
        });
    if spawned.is_err() {
        // The pollers' handles went with the closure: they end on their own.
        poll_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The desk holds the channel's sender (and an `Arc<Inner>`): drop it.
        drop(inner.desk.lock().take());
        for t in syncer_threads {
            t.unpark();
        }
    }
    spawned
}

/// Runs a pipeline thread's body; if it panics (a bug), the engine fails instead of leaving
/// tickets hanging: waiters get `Error::Failed` (its cause an `Error::Panicked` that names the
/// thread), producers stop being accepted.
/// Also guards a producer writing its own window (`flusher::help`): its result, or `None`
/// after a panic.
#[cfg(not(loom))]
pub(crate) fn guard_thread<T>(
    inner: &Inner,
    name: &'static str,
    body: impl FnOnce() -> T,
) -> Option<T> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    if result.is_err() {
        inner
            .completion
            .fail(Error::Failed(Arc::new(Error::Panicked { thread: name })));
        inner.ring.close();
        inner.throttle.wake_all();
    }
    result.ok()
}

/// The sticky error every call reports after a failure: `Error::Failed` with the error that
/// failed the engine as its cause (`e` itself if it is already a `Failed`: never one in
/// another).
#[cfg(not(loom))]
pub(crate) fn failed(e: &Error) -> Error {
    match e {
        Error::Failed(_) => e.clone(),
        other => Error::Failed(Arc::new(other.clone())),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::log::io::{Io, IoOp};
    use std::error::Error as _;
    use std::path::Path;
    use std::time::Duration;

    /// A bound on every wait of these tests: reaching it means a hang.
    const HANG: Duration = Duration::from_secs(60);

    /// Fails every sync of a log segment (`*.seg`) with EIO.
    struct FailSegmentSyncs;

    impl Io for FailSegmentSyncs {
        fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
            if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }

    /// Whether `e` is `Failed` with the failed segment sync as its cause, as its `source()`
    /// too, down to the operating system's EIO.
    fn is_failed_by_eio(e: &Error) -> bool {
        let Error::Failed(cause) = e else {
            return false;
        };
        let source = e.source().and_then(|s| s.downcast_ref::<Error>());
        let os = source
            .and_then(|s| s.source())
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        matches!(
            **cause,
            Error::Io {
                op: "sync segment",
                ..
            }
        ) && source.is_some_and(|s| std::ptr::eq(s, &**cause))
            && os.is_some_and(|os| os.raw_os_error() == Some(libc::EIO))
    }

    /// After a sync fails, the ticket reports the I/O error, and every later call reports it
    /// as the cause of `Error::Failed`: the engine's failure, a refused put, close.
    #[test]
    fn a_failure_reports_the_io_error_that_caused_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Engine::open_with_io(dir.path(), Config::default(), Arc::new(FailSegmentSyncs))
                .expect("open");
        let put = engine.put(b"k", b"v").expect("put").wait_timeout(HANG);
        assert!(
            matches!(
                &put,
                Err(Error::Io {
                    op: "sync segment",
                    ..
                })
            ),
            "{put:?}"
        );
        let failure = engine.failure().expect("the engine failed");
        assert!(is_failed_by_eio(&failure), "{failure:?}");
        let refused = engine
            .put(b"k2", b"v")
            .expect_err("a put after the failure");
        assert!(is_failed_by_eio(&refused), "{refused:?}");
        let closed = engine.close().expect_err("close after the failure");
        assert!(is_failed_by_eio(&closed), "{closed:?}");
        assert!(
            closed.to_string().starts_with(
                "engine failed earlier and is read-only until reopened: sync segment "
            ),
            "{closed}"
        );
    }
}
