//! The engine: open, submit, read, flush, close, stats; and the flusher thread, the one place
//! that cuts windows, writes, syncs and completes tickets.

use crate::coalesce::{Coalescer, Entry, GetAnswer, Op};
use crate::config::{Backpressure, Config, Durability};
use crate::error::{Error, Result};
use crate::index::{Index, Loc, ValueRef};
use crate::log::clean::{self, CleanMark};
use crate::log::dir as log_dir;
use crate::log::format::UNDURABLE_FRAMES_MAX;
use crate::log::format::{
    record_len, Frame, RecordOp, FLAG_SORTED, FRAME_HEADER_LEN, RECORD_HEADER_LEN,
};
use crate::log::io::SharedIo;
use crate::log::open::{recover, Recovered};
use crate::log::pool::Pool;
use crate::log::recovery::Damage;
use crate::log::retire;
use crate::log::segment::Segment;
use crate::log::{Log, SegmentList, Segments, WrittenFrame};
use crate::pipeline::handoff::SyncNap;
use crate::pipeline::window::{self, Decision};
use crate::reader::{Follower, LiveLog, LogReader};
use crate::request::{self, WriteBatch};
use crate::ring::{self, Consumer, PushError, Ring};
use crate::stats::{record, Counters, Counts, Stats};
use crate::ticket::{Completion, GetSlot, GetTicket, Ticket};
use crossbeam::channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Mutex, RwLock};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What `Engine::open` found and did.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// Segments scanned.
    pub segments: usize,
    /// Valid batch frames replayed into the index.
    pub batches: u64,
    /// Records replayed.
    pub records: u64,
    /// Damage cut off the tail (or, in point-in-time mode, everything after it).
    pub truncated: Option<Damage>,
    /// Time spent opening.
    pub elapsed: Duration,
    /// After an unclean end (no clean-close mark, or one that does not match the log), the
    /// bytes of the last segment written again from the page cache and synced (all of it;
    /// earlier segments and the directory are synced too), so that the disk holds what the
    /// open accepted (`None` after a clean close).
    pub tail_rewritten: Option<u64>,
}

/// One segment file of the log ([`Engine::segments`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first batch (also its file name).
    pub first_seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes (preallocated: the whole file, written or not).
    pub bytes: u64,
}

/// What [`Engine::retire_before`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Segment files removed.
    pub segments: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Live keys forgotten: keys whose newest record was in a removed segment.
    pub keys_forgotten: usize,
    /// Sequence number of the first batch the log now holds.
    pub first_seq: u64,
    /// Of the removed segments, how many were kept for reuse (`Config::recycle_segments`)
    /// rather than deleted.
    pub recycled: usize,
}

struct Inner {
    dir: PathBuf,
    /// The file hooks (fault injection in tests).
    io: SharedIo,
    /// Serializes `retire_before` calls.
    retire_lock: Mutex<()>,
    /// Retired segments kept for reuse.
    pool: Arc<Pool>,
    config: Config,
    ring: Arc<Ring>,
    completion: Arc<Completion>,
    /// Declared before every segment list: it points into their mappings, so it must be
    /// dropped first.
    index: Index,
    segments: Segments,
    /// Mappings replaced during recovery that the index may still point into.
    _retired: Vec<Arc<crate::log::segment::Segment>>,
    counters: Counters,
    /// Stamps requests for the end-to-end histogram: the CPU's time-stamp counter where it is
    /// invariant (13 ns a read here, against 37 ns for `Instant::now`, and every request
    /// pays one), else the OS clock. Stamps are raw counter values, scaled when recorded.
    clock: quanta::Clock,
    /// Ring position up to which a `flush()` asked for an immediate cut.
    flush_to: AtomicU64,
    request_len_max: usize,
    request_limit_name: &'static str,
    /// Sequence number of the last durable batch, and whether the pipeline has stopped (for
    /// in-process followers).
    live: Arc<LiveLog>,
    /// Jobs handed to the syncer and not yet taken by it.
    queued: AtomicUsize,
    /// The flusher's thread, set when it starts: woken by [`Inner::poke_flusher`].
    flusher_thread: OnceLock<std::thread::Thread>,
    /// Announced while an adaptive window naps until the sync in flight completes (see
    /// [`window::MERGE_BELOW`]): the completion then pokes the flusher.
    sync_nap: SyncNap,
    /// When the last sync ended (for `Stats::sync_time`; `None` before the first).
    last_sync_end: Mutex<Option<Instant>>,
    /// The syncer's thread, set when it starts; unparked by the flusher when it hands a job
    /// to a sleeping syncer.
    syncer_thread: OnceLock<std::thread::Thread>,
    /// Set while the syncer sleeps for want of a job (see `Syncer::next_group`).
    syncer_sleeping: AtomicBool,
    /// Where the log ended when the flusher drained the ring and stopped: `close` writes it
    /// as the clean-close mark once every job is complete and nothing failed.
    end_mark: Mutex<Option<CleanMark>>,
}

impl Inner {
    /// Wakes the flusher wherever it waits for something other than the durable watermark:
    /// for records in the ring, or for the log to have room for a window (after the syncer
    /// takes the queued job, a flush, or close).
    fn poke_flusher(&self) {
        self.ring.notify_consumer();
        if let Some(t) = self.flusher_thread.get() {
            t.unpark();
        }
    }
}

/// The write batching engine over one log directory. `Send + Sync`: share it by reference
/// or in an `Arc` between producer threads.
pub struct Engine {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    report: OpenReport,
    /// The directory lock, held until `close` has drained and joined the flusher.
    lock: Mutex<Option<File>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// The index updates of a frame of segment `seg_idx`: each record's key, and for a put where
/// its value lies in the segment (`None` for a delete).
fn frame_updates<'a>(
    seg_idx: u32,
    seg: &Segment,
    frame: &Frame<'a>,
) -> impl Iterator<Item = (&'a [u8], Option<Loc>)> {
    let base = seg.image().as_ptr() as usize;
    frame.records().map(move |r| {
        let loc = match r.op {
            RecordOp::Put => Some(Loc {
                seg: seg_idx,
                off: (r.value.as_ptr() as usize - base) as u64,
                len: r.value.len() as u32,
            }),
            RecordOp::Delete => None,
        };
        (r.key, loc)
    })
}

impl Engine {
    /// Opens (creating if needed) the log in `dir`: takes the directory lock, verifies and
    /// replays the log into the index (repairing a torn tail as `config.recovery` allows),
    /// prepares the next segment and starts the flusher.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Engine> {
        Engine::open_with_io(dir, config, crate::log::io::real())
    }

    /// As `open`, with every file change going through `io` (fault injection for tests; see
    /// `mergelog::internals::io`). Not a stable API.
    #[doc(hidden)]
    pub fn open_with_io(dir: impl AsRef<Path>, config: Config, io: SharedIo) -> Result<Engine> {
        let started = Instant::now();
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        log_dir::create_dir(&*io, &dir)?;
        let lock = log_dir::lock_dir(&*io, &dir)?;
        let index = Index::default();
        let mut report = OpenReport::default();
        let recovered = recover(&dir, &config, &io, |seg_idx, seg, frame| {
            // SAFETY: the keys lie in this segment's mapping, which the engine keeps for
            // its lifetime (in `segments`, or in `retired` if recovery replaced it).
            unsafe { index.apply(frame_updates(seg_idx, seg, frame)) };
            report.batches += 1;
            report.records += u64::from(frame.record_count);
            Ok(())
        })?;
        report.segments = recovered.scanned;
        report.truncated = recovered.damage.clone();
        report.tail_rewritten = recovered.tail_rewritten;
        let (inner, handle) = Engine::start(&dir, &io, config, index, recovered)?;
        report.elapsed = started.elapsed();
        Ok(Engine {
            inner,
            flusher: Mutex::new(Some(handle)),
            report,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Continues the recovered log: its writing end, the state the API shares with the
    /// pipeline threads, and the threads, started (the flusher's handle is returned).
    fn start(
        dir: &Path,
        io: &SharedIo,
        config: Config,
        index: Index,
        recovered: Recovered,
    ) -> Result<(Arc<Inner>, JoinHandle<()>)> {
        let pool = recovered.spares.pool.clone();
        let segments: Segments = Arc::new(RwLock::new(SegmentList::new(recovered.segments)));
        let log = Log::new(
            dir,
            segments.clone(),
            recovered.write_off,
            recovered.next_seq,
            &config,
            recovered.spares,
            io,
        );

        let live = Arc::new(LiveLog {
            durable_seq: AtomicU64::new(recovered.next_seq.saturating_sub(1)),
            stopped: AtomicBool::new(false),
        });
        let (ring, consumer) = ring::ring(config.ring_bytes);
        let (request_len_max, request_limit_name) = config.request_len_max(ring.max_payload());
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            io: io.clone(),
            retire_lock: Mutex::new(()),
            pool,
            completion: Arc::new(Completion::new(ring.head())),
            ring,
            index,
            segments,
            _retired: recovered.retired,
            counters: Counters::default(),
            clock: quanta::Clock::new(),
            flush_to: AtomicU64::new(0),
            request_len_max,
            request_limit_name,
            live,
            queued: AtomicUsize::new(0),
            flusher_thread: OnceLock::new(),
            sync_nap: SyncNap::new(),
            last_sync_end: Mutex::new(None),
            syncer_thread: OnceLock::new(),
            syncer_sleeping: AtomicBool::new(false),
            end_mark: Mutex::new(None),
            config,
        });
        let handle = start_pipeline(inner.clone(), log, consumer)
            .map_err(|e| Error::io("spawn flusher thread", dir, e))?;
        Ok((inner, handle))
    }

    /// What opening found: segments, batches replayed, damage cut off, time taken.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.inner.config.key_len_max;
        if key.len() > max {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.inner.config.value_len_max;
        if value.len() > max {
            return Err(Error::ValueTooLong {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// The submit stamp: a raw reading of the engine's clock.
    fn stamp(&self) -> u64 {
        self.inner.clock.raw()
    }

    /// Claims ring space for a request of `len` payload bytes and fills it. Returns the
    /// request's end position (its ticket).
    fn submit(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        let inner = &*self.inner;
        if let Some(e) = inner.completion.failure() {
            return Err(failed(e));
        }
        if len > inner.request_len_max {
            return Err(Error::RequestTooLarge {
                len,
                max: inner.request_len_max,
                limit: inner.request_limit_name,
            });
        }
        // `fill` is needed by whichever push runs; keep it in an Option to hand it on.
        let mut fill = Some(fill);
        let mut f = |buf: &mut [u8]| (fill.take().expect("fill runs once"))(buf);
        let pushed = match inner.ring.try_push(len, &mut f) {
            Err(PushError::Full) if inner.config.backpressure == Backpressure::Block => {
                let waited = Instant::now();
                let r = inner.ring.push(len, &mut f);
                record(
                    &mut inner.counters.stages.lock().ring_wait,
                    waited.elapsed().as_nanos() as u64,
                );
                r
            }
            r => r,
        };
        match pushed {
            Ok(pos) => Ok(pos),
            Err(PushError::Full) => Err(Error::Busy),
            Err(PushError::Closed) => Err(Error::Closed),
            Err(PushError::TooLarge) => Err(Error::RequestTooLarge {
                len,
                max: inner.ring.max_payload(),
                limit: "ring record (ring_bytes / 4)",
            }),
        }
    }

    fn ticket(&self, pos: u64) -> Ticket {
        Ticket::new(pos, self.inner.completion.clone())
    }

    /// Submits a put. Returns at once; the ticket completes when the put is durable.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        self.check_value(value)?;
        let now = self.stamp();
        let pos = self.submit(request::put_len(key, value), |buf| {
            request::encode_put(buf, key, value, now)
        })?;
        Ok(self.ticket(pos))
    }

    /// Submits a delete. Returns at once; the ticket completes when the delete is durable.
    pub fn delete(&self, key: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        let now = self.stamp();
        let pos = self.submit(request::delete_len(key), |buf| {
            request::encode_delete(buf, key, now)
        })?;
        Ok(self.ticket(pos))
    }

    /// Submits a windowed read, ordered with the writes: it sees every write submitted
    /// before it (including those of its own window) and completes once its window is
    /// durable, so it never returns a value a crash could take back.
    pub fn get(&self, key: &[u8]) -> Result<GetTicket> {
        self.check_key(key)?;
        let slot = Arc::new(GetSlot::default());
        // The record's reference: moved into the record if the request is claimed, dropped
        // with the closure if not.
        let in_record = slot.clone();
        let now = self.stamp();
        let pos = self.submit(request::get_len(key), |buf| {
            request::encode_get(buf, key, in_record, now)
        })?;
        Ok(GetTicket::new(self.ticket(pos), slot))
    }

    /// Submits a write batch: all its operations enter the order at one place, land in
    /// one frame and become durable together.
    pub fn write(&self, batch: &WriteBatch) -> Result<Ticket> {
        if batch.is_empty() {
            return Err(Error::EmptyBatch);
        }
        for (key, value) in batch.keys_values() {
            self.check_key(key)?;
            self.check_value(value)?;
        }
        let now = self.stamp();
        let pos = self.submit(request::batch_len(batch), |buf| {
            request::encode_batch(buf, batch, now)
        })?;
        Ok(self.ticket(pos))
    }

    /// Cuts the current window now. The ticket completes when everything submitted before
    /// this call is durable.
    pub fn flush(&self) -> Result<Ticket> {
        if let Some(e) = self.inner.completion.failure() {
            return Err(failed(e));
        }
        if self.inner.ring.is_closed() {
            return Err(Error::Closed);
        }
        let pos = self.inner.ring.tail();
        self.inner.flush_to.fetch_max(pos, Ordering::SeqCst);
        self.inner.poke_flusher();
        Ok(self.ticket(pos))
    }

    /// Reads the durable value of `key`, zero-copy from the log's mapping, without going
    /// through the window. A writer whose ticket completed reads its own write.
    pub fn read(&self, key: &[u8]) -> Result<Option<ValueRef>> {
        self.check_key(key)?;
        Ok(self
            .inner
            .index
            .get(key)
            .and_then(|loc| ValueRef::resolve(&self.inner.segments, loc)))
    }

    /// As `read`, copying the value out.
    pub fn read_to_vec(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read(key)?.map(|v| v.to_vec()))
    }

    /// Number of live keys in the durable state.
    pub fn len(&self) -> usize {
        self.inner.index.len()
    }

    /// True when the durable state holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visits every live key and its value (unordered), zero-copy for the values. `f` runs
    /// with no engine lock held, so it may call the engine: `read`, `get`, `put` (and wait
    /// for them), `retire_before`, even `for_each`.
    ///
    /// What it visits is a snapshot of the durable state at the call: every key live then,
    /// once each, with its value then. Writes, deletes and retirements after the call (by
    /// `f` or by anyone else) change nothing of what is visited; a key that a
    /// `retire_before` running at the moment of the call is forgetting may be skipped.
    ///
    /// Cost: before the first call to `f`, the keys are copied into a buffer (their bytes
    /// plus 24 bytes per key), under the locks of the segment list and the index. The values
    /// are not copied: they are read from the log's mappings, and the snapshot holds every
    /// segment mapped until `for_each` returns, so a segment retired meanwhile stays mapped
    /// (and its file, with `Config::recycle_segments`, is not reused) until then.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        /// Where one key's bytes end in `keys`, and its value's place.
        struct Visit {
            key_end: usize,
            off: u64,
            seg: u32,
            len: u32,
        }
        let mut keys = Vec::new();
        let mut visits = Vec::new();
        // The segments as listed at the call: the snapshot's values live in them.
        let segments: Vec<Arc<Segment>> = {
            let segs = self.inner.segments.read();
            let base = segs.base();
            let segments: Vec<Arc<Segment>> = segs.iter().cloned().collect();
            self.inner.index.for_each(|k, loc| {
                // A key of a segment no longer listed is being forgotten by a retirement.
                let Some(seg) = loc.seg.checked_sub(base) else {
                    return;
                };
                if (seg as usize) < segments.len() {
                    keys.extend_from_slice(k);
                    visits.push(Visit {
                        key_end: keys.len(),
                        off: loc.off,
                        seg,
                        len: loc.len,
                    });
                }
            });
            segments
        };
        // Every lock is released: `f` may call the engine.
        let mut key_start = 0;
        for v in &visits {
            let key = &keys[key_start..v.key_end];
            key_start = v.key_end;
            f(key, segments[v.seg as usize].bytes(v.off, v.len as usize));
        }
    }

    /// A follower that yields every batch from sequence `from` on (1 = the start of the
    /// log), each once it is durable, waiting for new ones as they land. Once the engine is
    /// closed, it yields the batches that became durable and then `Err(Error::Closed)`.
    pub fn follow(&self, from: u64) -> Follower {
        Follower::of_engine(
            self.inner.dir.clone(),
            self.inner.segments.clone(),
            from.max(1),
            self.inner.live.clone(),
        )
    }

    /// A read-only view of the log as of now (its durable batches; with `NoSync`, those
    /// written), for replay in log order. It reads through the engine's own mappings (no
    /// scan of the directory), and while it lives the engine does not reuse its segment
    /// files; a follower made from it (`LogReader::follow`) is one of this engine's.
    pub fn replay(&self) -> Result<LogReader> {
        Ok(LogReader::of_engine(
            &self.inner.dir,
            self.inner.segments.clone(),
            self.inner.live.clone(),
        ))
    }

    /// The log's segment files in order, the last one being written: for a caller that
    /// decides what to retire (`retire_before(segments[i].first_seq)` removes the ones
    /// before `i`).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .segments
            .read()
            .iter()
            .map(|s| SegmentInfo {
                first_seq: s.id,
                path: s.path.clone(),
                bytes: s.size,
            })
            .collect()
    }

    /// Retires the log's history before batch `seq`: removes every segment file all of whose
    /// batches have a sequence number below `seq` (whole segments only, and never the one
    /// being written), for a caller that has saved what it needs of them elsewhere (a
    /// snapshot, a checkpoint of the state built from the log). Without it the log grows
    /// forever.
    ///
    /// The engine then holds what reopening the directory would give: keys whose newest
    /// record was in a removed segment are forgotten (`get`, `read`, `len` and `for_each` no
    /// longer see them), and `replay` and followers start at [`Retired::first_seq`] (a
    /// follower asking for an earlier batch gets [`Error::Retired`]). Values already read
    /// (a [`ValueRef`]) stay valid. Writes are not paused.
    ///
    /// Files are removed oldest first, each followed by a sync of the directory, so after
    /// a crash the log is always a suffix of itself. On an error some of the segments may
    /// have been removed (the engine forgets exactly those); calling again retries the rest.
    pub fn retire_before(&self, seq: u64) -> Result<Retired> {
        let inner = &*self.inner;
        // Checked under the lock, which `close` takes before it gives up the directory: no
        // retirement runs on once another engine may have the directory.
        let _one_at_a_time = inner.retire_lock.lock();
        if let Some(e) = inner.completion.failure() {
            return Err(failed(e));
        }
        if inner.ring.is_closed() {
            return Err(Error::Closed);
        }
        // Segment i holds batches [id_i, id_{i+1}): it can go once id_{i+1} <= seq. Every
        // segment but the last is complete and durable (a roll drains the pipeline first).
        let candidates: Vec<Arc<Segment>> = {
            let segs = inner.segments.read();
            let list: Vec<&Arc<Segment>> = segs.iter().collect();
            list.windows(2)
                .take_while(|w| w[1].id <= seq)
                .map(|w| w[0].clone())
                .collect()
        };
        let (io, dir) = (&*inner.io, &inner.dir);
        let retiring = retire::retire_oldest(io, dir, &inner.pool, &inner.config, &candidates);
        let removed = retiring.removed;
        // Forget what was removed: first from the list (new lookups miss it), then from the
        // index. `gone` keeps the mappings alive until the index no longer points into them.
        let gone = inner.segments.write().retire_front(removed);
        debug_assert!(gone.iter().zip(&candidates).all(|(a, b)| Arc::ptr_eq(a, b)));
        let first = inner.segments.read().base();
        let keys_forgotten = inner.index.forget_below(first);
        let first_seq = inner.segments.read().iter().next().map_or(1, |s| s.id);
        // A pooled file is reused only once nothing maps it any more (`Pool::take`).
        drop(gone);
        let recycled = retiring.into_pool(io, dir, &inner.pool)?;
        Ok(Retired {
            segments: removed,
            bytes: candidates[..removed].iter().map(|s| s.size).sum(),
            keys_forgotten,
            first_seq,
            recycled,
        })
    }

    /// A snapshot of counters and per-stage histograms (about 2 MB of histograms copied
    /// under the lock the pipeline records under; see [`Engine::counts`] for polling).
    pub fn stats(&self) -> Stats {
        let durable = self.inner.completion.durable();
        let backlog = self.inner.ring.tail().saturating_sub(durable);
        Stats {
            segments: self.inner.pool.counts(),
            ..self.inner.counters.snapshot(backlog, durable)
        }
    }

    /// The counters alone: atomic loads, no lock, no allocation; cheap enough to poll.
    pub fn counts(&self) -> Counts {
        let durable = self.inner.completion.durable();
        let backlog = self.inner.ring.tail().saturating_sub(durable);
        Counts {
            segments: self.inner.pool.counts(),
            ..self.inner.counters.counts(backlog, durable)
        }
    }

    /// The error that failed the engine, if it failed.
    pub fn failure(&self) -> Option<Error> {
        self.inner.completion.failure().map(failed)
    }

    /// Stops accepting requests, drains the ring, writes and syncs what it held, and joins
    /// the flusher. Every ticket is complete when this returns, and in-process followers end
    /// with `Error::Closed` after the last durable batch. Idempotent; a second call made
    /// while the first runs waits for it to finish.
    ///
    /// A producer that claimed ring space but has not filled it (a thread stopped inside
    /// `put`, between the claim and the publish: preempted for long, or frozen by a debugger
    /// or a signal handler) holds up everything behind it, since the log keeps the ring's
    /// order. `close` waits up to 10 s for it to publish; then it gives up: the
    /// engine fails with an error that gives the ring position, how long it waited and that
    /// the requests from there on were not written, `close` returns that error, and every
    /// ticket at or after the position fails (earlier ones are durable). The stalled
    /// producer's eventual publish goes nowhere, and its ticket reports the failure.
    pub fn close(&self) -> Result<()> {
        self.inner.ring.close();
        self.inner.poke_flusher();
        // The guard is held until the flusher is joined and the directory lock given up: a
        // concurrent second `close` waits here for the first to finish (and then finds no
        // handle), so that when any `close` returns, everything is complete.
        let mut flusher = self.flusher.lock();
        if let Some(h) = flusher.take() {
            let joined = h.join();
            // Nothing writes the directory any more (a retirement in progress finishes
            // first): let the next engine have it.
            let _no_retirement = self.inner.retire_lock.lock();
            if joined.is_ok() {
                self.write_clean_mark();
            }
            self.lock.lock().take();
            if joined.is_err() {
                return Err(Error::Failed(Arc::new(
                    "the flusher thread panicked".into(),
                )));
            }
        }
        drop(flusher);
        match self.inner.completion.failure() {
            Some(e) => Err(failed(e)),
            None => Ok(()),
        }
    }
}

impl Engine {
    /// Writes the clean-close mark (`log::clean`) once the pipeline has stopped with every
    /// frame durable: the next open then trusts the page cache and skips rewriting the tail.
    /// Best effort: without the mark the next open only does that rewrite, which is safe.
    fn write_clean_mark(&self) {
        let inner = &*self.inner;
        if inner.config.durability != Durability::Sync || inner.completion.failure().is_some() {
            return;
        }
        if let Some(mark) = inner.end_mark.lock().take() {
            let _ = clean::write(&inner.io, &inner.dir, &mark);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// A completed job, kept for its buffers' capacity: without its frame, whose segment mapping
/// it would otherwise hold (keeping a retired segment's file from being reused).
fn spare(mut job: Job) -> Job {
    job.frame = None;
    job
}

/// The sticky error every call reports after a failure.
fn failed(e: &Error) -> Error {
    match e {
        Error::Failed(_) => e.clone(),
        other => Error::Failed(Arc::new(other.to_string())),
    }
}

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
struct Job {
    /// Ring position after the window: the durable watermark once this job is complete.
    end: u64,
    /// The frame written for the window's surviving writes, if it had any.
    frame: Option<WrittenFrame>,
    /// Per survivor: where its key is in the frame's segment (offset, length), and the
    /// value's location (`None` for a delete). The index points at the logged key bytes.
    updates: Vec<(u64, u32, Option<Loc>)>,
    /// Per request: submit stamp, a raw `Inner::clock` reading (for the end-to-end histogram).
    stamps: Vec<u64>,
    /// When the flusher handed the job on, written (for `Stats::sync_time`).
    ready: Option<Instant>,
}

/// The flusher's state: everything it reuses from window to window.
struct Flusher {
    inner: Arc<Inner>,
    log: Log,
    coalescer: Coalescer,
    entries: Vec<Entry<'static>>,
    /// Per request: submit time stamp.
    stamps: Vec<u64>,
    /// Per get: entry index and its slot.
    slots: Vec<(u32, Arc<GetSlot>)>,
    /// Answers of shared lookups: (first get index, value).
    lookups: Vec<(u32, Option<Vec<u8>>)>,
    /// The plan's get answers, in entry order.
    answers: Vec<(u32, GetAnswer)>,
    /// Requests in the previous window: the adaptive policy's guess of how many producers
    /// are about to resubmit.
    prev_requests: usize,
    /// End of the last window handed to the syncer.
    in_flight: u64,
    /// (batch sequence, window end) of the frames handed on that may not be durable yet,
    /// oldest first (see [`Flusher::bound_undurable`]).
    unsynced: std::collections::VecDeque<(u64, u64)>,
    to_syncer: Sender<Job>,
    /// Completed jobs come back for reuse, so no window allocates.
    spare: Receiver<Job>,
    /// Where a job completed inline goes back to the pool.
    give_back: Sender<Job>,
}

/// One cut window's numbers.
#[derive(Default)]
struct Window {
    end: u64,
    bytes: u64,
    requests: usize,
    gets: u64,
}

/// Starts the two pipeline threads; the returned handle is the flusher's, which joins the
/// syncer before it returns.
fn start_pipeline(
    inner: Arc<Inner>,
    log: Log,
    consumer: Consumer,
) -> std::io::Result<JoinHandle<()>> {
    // One job syncing and one ready: enough to overlap the next window's CPU work with the
    // sync, few enough that a window is cut no earlier than it is needed.
    let (to_syncer, jobs) = crossbeam::channel::bounded::<Job>(1);
    let (give_back, spare) = crossbeam::channel::bounded::<Job>(4);
    let syncer = Syncer {
        inner: inner.clone(),
        jobs,
        give_back: give_back.clone(),
        group: Vec::new(),
    };
    let syncer_inner = inner.clone();
    let syncer = std::thread::Builder::new()
        .name("mergelog-syncer".into())
        .spawn(move || guard_thread(&syncer_inner, "syncer", || syncer.run()))?;
    let flusher = Flusher {
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
        unsynced: std::collections::VecDeque::with_capacity(UNDURABLE_FRAMES_MAX as usize + 1),
        to_syncer,
        spare,
        give_back,
    };
    std::thread::Builder::new()
        .name("mergelog-flusher".into())
        .spawn(move || {
            // The adaptive window parks for tens of microseconds; the default 50 µs timer
            // slack would stretch every such wait several times over.
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; no memory is
            // passed to the kernel.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            let inner = flusher.inner.clone();
            guard_thread(&inner, "flusher", || flusher.run(consumer));
            // The flusher is gone and with it the channel's sender: wake the syncer to
            // complete what it holds and see that.
            syncer.thread().unpark();
            let _ = syncer.join();
            // Nothing becomes durable any more: in-process followers end (Release: after the
            // last store of `durable_seq`).
            inner.live.stopped.store(true, Ordering::Release);
        })
}

/// Runs a pipeline thread's body; if it panics (a bug), the engine fails instead of leaving
/// tickets hanging: waiters get `Error::Failed`, producers stop being accepted.
fn guard_thread(inner: &Inner, name: &str, body: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        inner.completion.fail(Error::Failed(Arc::new(format!(
            "the {name} thread panicked"
        ))));
        inner.ring.close();
    }
}

impl Flusher {
    fn run(mut self, mut consumer: Consumer) {
        let _ = self.inner.flusher_thread.set(std::thread::current());
        let ring = consumer.ring().clone();
        let mut pos = ring.head();
        // After `close`: the unpublished claim the flusher is waiting at, and since when.
        let mut stalled: Option<(u64, Instant)> = None;
        loop {
            // A refusing visitor consumes no record: this probes for a published one (and
            // steps over padding, which needs no processing).
            let mut published = false;
            pos = consumer.read(pos, |_, _| {
                published = true;
                false
            });
            if !published {
                // Padding stepped over completes nothing, but the watermark and the head
                // move past it, in order, through the syncer.
                if pos > self.in_flight {
                    let job = Self::job(&self.spare, pos);
                    self.send(job);
                    consumer.release(pos);
                }
                if ring.is_closed() && ring.tail() <= pos {
                    break;
                }
                if ring.is_closed() {
                    // A claim at `pos` is not published yet: wait for it, but not forever.
                    let since = match stalled {
                        Some((at, since)) if at == pos => since,
                        _ => stalled.insert((pos, Instant::now())).1,
                    };
                    if since.elapsed() >= CLOSE_STALL_MAX {
                        self.give_up(pos, since.elapsed());
                        break;
                    }
                }
                let deadline = ring
                    .is_closed()
                    .then(|| Instant::now() + Duration::from_micros(50));
                // Nothing to do: catch the index up first (see `Index::defer`).
                self.inner.index.try_apply_queued();
                consumer.wait(pos, deadline);
                continue;
            }
            pos = self.window(&mut consumer, pos);
        }
        *self.inner.end_mark.lock() = Some(self.log.end_mark());
        // Dropping `self` closes the channel: the syncer completes what it holds and exits.
    }

    /// Ends a `close` that a producer stalled between claim and publish at ring position `pos`
    /// (see [`CLOSE_STALL_MAX`]): lets everything before `pos` complete, then fails the
    /// engine, so every ticket from `pos` on reports that it was not written.
    fn give_up(&mut self, pos: u64, waited: Duration) {
        // Every window before `pos` was handed on (padding too): its tickets succeed.
        Self::drain_pipeline(&self.inner, self.in_flight);
        self.inner.completion.fail(Error::Failed(Arc::new(format!(
            "close gave up waiting for a request at ring position {pos}: its producer claimed \
             the space but had not published it {waited:?} after close (a thread stopped \
             inside put/delete/get/write); that request and every one after it were not \
             written"
        ))));
    }

    /// A reused job, cleared, ending at `end`.
    fn job(spare: &Receiver<Job>, end: u64) -> Job {
        let mut job = spare.try_recv().unwrap_or_default();
        job.end = end;
        job.frame = None;
        job.updates.clear();
        job.stamps.clear();
        job.ready = None;
        job
    }

    /// Hands a written job on for completion. When nothing else is in flight (every job sent
    /// before is complete, so the syncer is idle) and no request waits behind this window
    /// (so there is no next window to overlap with), the flusher completes it itself: at low
    /// load that saves a thread hand-off, most of the latency besides the sync.
    fn send(&mut self, job: Job) {
        let mut job = job;
        job.ready = Some(Instant::now());
        if let Some(f) = &job.frame {
            self.unsynced.push_back((f.seq, job.end));
        }
        let syncing = self.inner.completion.durable() < self.in_flight;
        let idle = !syncing && self.inner.ring.tail() <= job.end;
        self.in_flight = job.end;
        if idle {
            if self.inner.completion.may_complete(job.end) {
                if let Err(e) = complete_jobs(&self.inner, std::slice::from_ref(&job)) {
                    self.inner.completion.fail(e);
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
        // The syncer only stops after this sender is dropped, so this cannot fail.
        let _ = self.to_syncer.send(job);
        // Pairs with the fence in `Syncer::next_group`: either it finds the job, or we
        // find it asleep and wake it.
        fence(Ordering::SeqCst);
        if self.inner.syncer_sleeping.load(Ordering::Relaxed) {
            if let Some(t) = self.inner.syncer_thread.get() {
                t.unpark();
            }
        }
    }

    /// Waits, if need be, until the frame about to be written is at most
    /// [`UNDURABLE_FRAMES_MAX`] frames ahead of the last durable one; false if the engine
    /// failed meanwhile. (The pipeline holds a few frames at most, so this waits only if a
    /// sync group grows unusually long.)
    fn bound_undurable(
        log: &Log,
        unsynced: &mut std::collections::VecDeque<(u64, u64)>,
        inner: &Inner,
    ) -> bool {
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
        let Some(&(_, end)) = unsynced.iter().find(|f| f.0 == need) else {
            debug_assert!(false, "frame {need} is neither durable nor in flight");
            return true;
        };
        let ok = inner.completion.wait(end, None).is_ok();
        debug_assert!(!ok || inner.live.durable_seq.load(Ordering::Acquire) >= need);
        ok
    }

    /// Waits until every job handed to the syncer (up to `in_flight`) is complete; false if
    /// the engine failed.
    fn drain_pipeline(inner: &Inner, in_flight: u64) -> bool {
        inner.completion.wait(in_flight, None).is_ok()
    }

    /// Cuts one window starting at `start`, plans it, answers its gets, writes its frame and
    /// hands it to the syncer; returns its end.
    fn window(&mut self, consumer_mut: &mut Consumer, start: u64) -> u64 {
        let inner = self.inner.clone();
        let cfg = &inner.config;
        let mut entries: Vec<Entry<'_>> = recycle(std::mem::take(&mut self.entries));
        self.stamps.clear();
        self.slots.clear();
        let first_seen = Instant::now();
        let mut last_arrival = first_seen;
        let mut w = Window {
            end: start,
            ..Window::default()
        };
        let consumer = &*consumer_mut;
        let stamps = &mut self.stamps;
        let slots = &mut self.slots;
        let policy = window::Policy::of(cfg);
        // Requests this window held when it last napped for a sync in flight (see
        // `window::MERGE_BELOW`).
        let mut held_over_sync = 0;
        // Turns of the loop below (`Counts::window_waits` counts all but each window's first).
        let mut turns = 0u64;
        loop {
            turns += 1;
            let before = w.end;
            // A record that would take the window over a limit stays in the ring for the next
            // window, and it cuts this one (see `window::decide`).
            let mut refused = false;
            w.end = consumer.read(w.end, |end, payload| {
                let rec_bytes = end - w.end;
                if !policy.fits(w.requests, w.bytes, entries.len(), rec_bytes) {
                    refused = true;
                    return false;
                }
                // SAFETY: only `Engine::submit` fills this ring's records, each with one of
                // `request`'s encoders into a claim of the matching length. And each record
                // is decoded at most once: only here, when the window takes it (a refused
                // one is not decoded), and every later read starts past it (`w.end`, then
                // the window's end).
                unsafe { request::decode(payload, &mut entries, stamps, slots, &mut w.gets) };
                w.bytes += rec_bytes;
                w.requests += 1;
                w.end = end;
                true
            });
            let now = Instant::now();
            if w.end > before {
                last_arrival = now;
            }
            let seen = window::Observed {
                requests: w.requests,
                bytes: w.bytes,
                entries: entries.len(),
                refused,
                flush: inner.flush_to.load(Ordering::Acquire) > before,
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
                    inner.index.try_apply_queued();
                    std::thread::park_timeout(until.saturating_duration_since(now));
                    inner.sync_nap.end();
                }
                Decision::NapForSync { until } => {
                    held_over_sync = w.requests;
                    // Either the completion sees the nap and pokes us, or we see its
                    // watermark here (and do not nap, but look again).
                    if !inner
                        .sync_nap
                        .announce(|| inner.completion.durable() >= self.in_flight)
                    {
                        continue;
                    }
                    // As above, until the sync in flight completes (its completion pokes us).
                    inner.index.try_apply_queued();
                    std::thread::park_timeout(until.saturating_duration_since(now));
                    inner.sync_nap.end();
                }
            }
        }
        record(
            &mut inner.counters.stages.lock().window_age,
            first_seen.elapsed().as_nanos() as u64,
        );
        Counters::add(&inner.counters.window_waits, turns - 1);
        self.prev_requests = w.requests.max(1);
        Counters::add(&inner.counters.submitted, entries.len() as u64);
        Counters::add(&inner.counters.reads, w.gets);
        Counters::add(&inner.counters.writes, entries.len() as u64 - w.gets);

        if inner.completion.failure().is_none() {
            if let Err(e) = self.commit(&entries, w.end) {
                // The windows already handed on complete with their own sync's outcome.
                inner.completion.fail_after(e, self.in_flight);
            }
        }
        // On failure every ticket of this window and later ones reports it; get slots are
        // dropped with `slots`.
        self.entries = recycle(entries);
        self.slots.clear();
        consumer_mut.release(w.end);
        w.end
    }

    /// Plans the window, answers its gets, writes its frame and hands it to the syncer.
    fn commit(&mut self, entries: &[Entry<'_>], end: u64) -> Result<()> {
        let inner = self.inner.clone();
        let counters = &inner.counters;
        let t0 = Instant::now();
        let plan = self.coalescer.plan(entries, inner.config.coalesce);
        let t1 = Instant::now();

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
                entries,
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
        if !plan.survivors.is_empty() {
            let body_len: usize = plan
                .survivors
                .iter()
                .map(|&i| {
                    let e = &entries[i as usize];
                    match e.op {
                        Op::Put(v) => record_len(e.key.len(), v.len()),
                        _ => record_len(e.key.len(), 0),
                    }
                })
                .sum();
            // A frame in a new segment must not become durable before the frames still
            // syncing in the old one: recovery treats damage before the last segment as
            // corruption, not as a torn tail.
            if !self.log.fits(body_len) && !Self::drain_pipeline(&inner, self.in_flight) {
                return Ok(());
            }
            // At most `UNDURABLE_FRAMES_MAX` frames may be written and not yet durable:
            // recovery relies on it to tell a torn tail from damage to durable history.
            if !Self::bound_undurable(&self.log, &mut self.unsynced, &inner) {
                return Ok(());
            }
            let flags = if inner.config.coalesce {
                FLAG_SORTED
            } else {
                0
            };
            let writes = (entries.len() - gets) as u32;
            let updates = &mut job.updates;
            let frame = self.log.append(body_len, flags, |w, frame_off| {
                let mut off = frame_off + FRAME_HEADER_LEN as u64;
                for &i in &plan.survivors {
                    let e = &entries[i as usize];
                    let (op, value) = match e.op {
                        Op::Put(v) => (RecordOp::Put, v),
                        _ => (RecordOp::Delete, &[][..]),
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
            for loc in job.updates.iter_mut().filter_map(|u| u.2.as_mut()) {
                loc.seg = frame.seg_idx;
            }
            job.frame = Some(frame);
            Counters::add(&counters.batches, 1);
            Counters::add(&counters.records_written, plan.survivors.len() as u64);
            Counters::add(
                &counters.bytes_written,
                crate::log::format::frame_len(body_len) as u64,
            );
        }
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

/// Fills every get's slot: from an earlier write of the window, or from one index lookup
/// per run of gets that share it.
fn answer_gets(
    inner: &Inner,
    entries: &[Entry<'_>],
    gets: &[(u32, GetAnswer)],
    slots: &[(u32, Arc<GetSlot>)],
    lookups: &mut Vec<(u32, Option<Vec<u8>>)>,
    answers: &mut Vec<(u32, GetAnswer)>,
) {
    lookups.clear();
    for &(g, ans) in gets {
        if ans == GetAnswer::Lookup(g) {
            let v = inner
                .index
                .get(entries[g as usize].key)
                .and_then(|loc| ValueRef::resolve(&inner.segments, loc))
                .map(|v| v.to_vec());
            lookups.push((g, v));
        }
    }
    lookups.sort_unstable_by_key(|l| l.0);
    // Slots are in entry order; put the answers in the same order and zip.
    answers.clear();
    answers.extend_from_slice(gets);
    answers.sort_unstable_by_key(|a| a.0);
    debug_assert_eq!(answers.len(), slots.len());
    for ((g, slot), &(a, answer)) in slots.iter().zip(answers.iter()) {
        debug_assert_eq!(*g, a);
        let value = match answer {
            GetAnswer::Write(w) => match entries[w as usize].op {
                Op::Put(v) => Some(v.to_vec()),
                _ => None,
            },
            GetAnswer::Lookup(first) => lookups
                .binary_search_by_key(&first, |l| l.0)
                .ok()
                .and_then(|i| lookups[i].1.clone()),
        };
        // Visible to the get's owner only once the watermark passes it.
        slot.fill(value);
    }
}

/// The second pipeline stage: makes written frames durable (one sync for every job waiting),
/// updates the index, advances the watermark and wakes waiters.
struct Syncer {
    inner: Arc<Inner>,
    jobs: Receiver<Job>,
    give_back: Sender<Job>,
    group: Vec<Job>,
}

impl Syncer {
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
                std::thread::park();
            }
            self.inner.syncer_sleeping.store(false, Ordering::Relaxed);
        }
    }

    fn run(mut self) {
        let _ = self.inner.syncer_thread.set(std::thread::current());
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
fn complete_jobs(inner: &Inner, group: &[Job]) -> Result<()> {
    let t0 = Instant::now();
    // Every frame of the group is in one segment: the flusher drains the pipeline before it
    // rolls to a new one.
    let mut frames = group.iter().filter_map(|j| j.frame.as_ref());
    let mut synced = false;
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
            synced = true;
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
        inner.live.durable_seq.store(last.seq, Ordering::Release);
    }
    let t1 = Instant::now();
    // The end-to-end stage ends here, before the watermark moves: read after it, a woken
    // writer's next request could start before its previous one ended.
    let now = inner.clock.raw();
    // The index updates are queued before the watermark moves and applied later, off the
    // path between this sync and the next (they are tens of microseconds of cache misses):
    // a waiter that looks its write up applies them first (read-your-writes).
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
    let mut h = inner.counters.stages.lock();
    if synced {
        record(&mut h.sync, (t1 - t0).as_nanos() as u64);
    }
    record(&mut h.wakeup, (t2 - t1).as_nanos() as u64);
    for job in group {
        for &s in &job.stamps {
            record(&mut h.end_to_end, inner.clock.delta_as_nanos(s, now));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A bound on every wait of these tests: reaching it means a hang.
    const HANG: Duration = Duration::from_secs(60);

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
                        request::encode_put(buf, key, b"v", 0);
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
        let msg = match closed {
            Err(Error::Failed(msg)) => msg,
            other => panic!("close returned {other:?}, not the stall"),
        };
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
