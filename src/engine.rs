//! The engine's public API: open, submit, read, flush, follow, replay, retire, stats, close.
//! The threads behind it (the flusher, the one place that cuts windows and writes the log, and
//! the syncer, which syncs and completes tickets) are in [`crate::pipeline`].

use crate::compact::{self, AutoCompactor, Compacted, Compaction, Space};
use crate::config::{Backpressure, Config, Durability};
use crate::consumer::{self, ConsumerPosition, OpenConsumers};
use crate::error::{Error, Result};
use crate::ids::{self, RequestId};
use crate::index::{Index, ValueRef};
use crate::log::clean;
use crate::log::dir as log_dir;
use crate::log::io::SharedIo;
use crate::log::open::recover;
use crate::log::recovery::Damage;
use crate::log::retire;
use crate::log::segment::Segment;
use crate::pipeline::{failed, Inner};
use crate::reader::{Follower, LogReader};
use crate::request::{self, WriteBatch};
use crate::ring::PushError;
use crate::seq::Seq;
use crate::stats::{record, Counts, Stats};
use crate::ticket::{GetSlot, GetTicket, Ticket};
use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    /// Durable consumers whose committed position lay past the log's last batch, each with
    /// that position (its `committed`, as it was before the open): each was set back to the last batch (its file replaced), so it sees the
    /// batches written next under those numbers. Possible only after batches a consumer had
    /// committed were lost: read by a consumer of the directory before they were synced,
    /// never synced under `Durability::NoSync`, or cut by `RecoveryMode::PointInTime`.
    pub consumers_set_back: Vec<ConsumerPosition>,
}

/// One segment file of the log ([`Engine::segments`], [`LogReader::segments`]).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first batch (also its file name).
    pub first_seq: Seq,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes (preallocated: the whole file, written or not).
    pub bytes: u64,
}

impl SegmentInfo {
    pub(crate) fn of(segment: &Segment) -> SegmentInfo {
        SegmentInfo {
            first_seq: Seq::new(segment.id),
            path: segment.path.clone(),
            bytes: segment.size,
        }
    }
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
    pub first_seq: Seq,
    /// Of the removed segments, how many were kept for reuse (`Config::recycle_segments`)
    /// rather than deleted.
    pub recycled: usize,
    /// The consumer that held the retirement back, if one did: its name and its committed
    /// batch (history was retired only before the batch after it). `None` if no consumer
    /// was behind the batch asked for (and always for `retire_before_forced`).
    pub held_back_by: Option<ConsumerPosition>,
}

/// The write batching engine over one log directory. `Send + Sync`: share it by reference
/// or in an `Arc` between producer threads.
///
/// Open it with [`Engine::open`]; submit with [`Engine::put`], [`Engine::delete`],
/// [`Engine::merge`], [`Engine::write`] (a [`WriteBatch`]) and [`Engine::get`], each giving a
/// ticket that completes once the request is durable; read the durable state with
/// [`Engine::read`]; replay ([`Engine::replay`]) or follow ([`Engine::follow`],
/// [`Engine::consumer`]) the log; [`Engine::close`] when done (dropping it closes it too).
/// The crate's front page runs them all once.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    report: OpenReport,
    /// The directory lock, held until `close` has drained and joined the flusher.
    lock: Mutex<Option<File>>,
    /// The names of the consumers with a handle open (`Engine::consumer`).
    pub(crate) consumers: Arc<OpenConsumers>,
    /// `Compaction::Auto`'s thread, stopped first by `close`.
    compactor: Mutex<Option<AutoCompactor>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the log in `dir`: takes the directory lock, verifies and
    /// replays the log into the index (repairing a torn tail as `config.recovery` allows),
    /// prepares the next segment and starts the flusher.
    ///
    /// # Errors
    ///
    /// A refusal for damage changes nothing of the log; what an open does with damage is
    /// README's table ("After a crash, a failure, or damage").
    ///
    /// - [`Error::InvalidConfig`]: `config` breaks a rule ([`Config::validate`]; the message
    ///   names the setting), or asks for `WritePath::Mmap` on btrfs.
    /// - [`Error::Locked`]: another engine (in this process or another) has the directory
    ///   open, or an incremental backup links its files.
    /// - [`Error::Io`]: a file or directory call failed (making the directory, the lock,
    ///   reading or repairing a segment, preparing the next one); it names the call and the
    ///   file. Also `dir` holding entries but none of a log's files (docs/FORMAT.md,
    ///   "Files"): a mistyped path to another directory, refused as `LogReader::open`
    ///   refuses it, nothing made there. A missing or empty directory (or one holding only
    ///   `lost+found`, a fresh file system's root) gets a new log.
    /// - [`Error::DamagedHistory`]: damage (or frames missing) in the last segment with
    ///   durable batches after it: valid frames 16 or more batches on, or a clean-close mark
    ///   naming a later batch (under `TolerateCorruptedTail` and `AbsoluteConsistency`); it
    ///   names the file, the offset and the batches a cut would lose.
    /// - [`Error::Corrupt`]: damage in an earlier segment or a bad segment header (except
    ///   under `PointInTime`, which cuts there), any damage at all under
    ///   `AbsoluteConsistency`, or a request-ids or consumer position file that does not
    ///   decode, or a request-ids file naming a batch past the log's end or one of the log
    ///   that does not log the id (docs/FORMAT.md, "Carried request ids"); it names the file
    ///   and the offset.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// // A new directory: nothing replayed, nothing cut.
    /// assert_eq!(engine.open_report().batches, 0);
    /// assert!(engine.open_report().truncated.is_none());
    ///
    /// // One engine per directory: a second open waits for nothing, it is refused.
    /// match Engine::open(dir.path(), Config::default()) {
    ///     Err(Error::Locked(path)) => assert_eq!(path, dir.path()),
    ///     other => panic!("expected Error::Locked, got {other:?}"),
    /// }
    ///
    /// // A configuration that breaks a rule is refused before anything is made; the message
    /// // names the setting.
    /// let small = Config { segment_bytes: 1 << 20, ..Config::default() };
    /// match Engine::open(dir.path().join("other"), small) {
    ///     Err(e @ Error::InvalidConfig(_)) => assert!(e.to_string().contains("segment_bytes")),
    ///     other => panic!("expected Error::InvalidConfig, got {other:?}"),
    /// }
    /// engine.close()?;
    /// # Ok(())
    /// # }
    /// ```
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
        // A mistyped path to some other directory: refused, as the readers refuse it, before
        // anything (the lock file first) is made in it.
        log_dir::refuse_foreign(&dir)?;
        log_dir::check_write_path(&dir, config.write_path)?;
        let lock = log_dir::lock_dir(&*io, &dir)?;
        let index = Index::default();
        if let crate::compact::Compaction::Auto(_) = config.compaction {
            // Compaction scans every record of the segments it takes: a bit per location
            // answers whether each is live (about 1/56 of the log in memory). Not for
            // `OnDemand`, the default, which most logs never use: it probes the table.
            index.track_live_records();
        }
        let mut report = OpenReport::default();
        // The ids of retired segments first, then the frames' (see `crate::ids`): only the
        // newest the horizon allows are kept while scanning.
        let mut ids = ids::carried(&dir, config.request_ids)?;
        let recovered = recover(
            &dir,
            &config,
            &io,
            ids.carried_last,
            |seg_idx, seg, frame| {
                // SAFETY: the keys lie in this segment's mapping, which the engine keeps until a
                // retirement has made the index forget every key in the segment (in `segments`,
                // or in `Inner::replaced_maps` if recovery replaced it; the index is declared
                // before both).
                unsafe { index.apply(crate::index::frame_updates(seg_idx, seg, frame)) };
                ids.frame(&dir, frame)?;
                report.batches += 1;
                report.records += u64::from(frame.record_count);
                Ok(())
            },
        )?;
        report.segments = recovered.scanned;
        report.truncated = recovered.damage.clone();
        report.tail_rewritten = recovered.tail_rewritten;
        report.consumers_set_back =
            consumer::pull_back_past(&io, &dir, recovered.next_seq.saturating_sub(1))?;
        let ids = ids.rebuild();
        let (inner, handle) = crate::pipeline::start(&dir, &io, config, index, recovered, ids)?;
        let engine = Engine {
            inner,
            flusher: Mutex::new(Some(handle)),
            report,
            lock: Mutex::new(Some(lock)),
            consumers: Arc::default(),
            compactor: Mutex::new(None),
        };
        if let Compaction::Auto(policy) = engine.inner.config.compaction {
            // On error the engine is dropped, which closes it.
            let compactor = AutoCompactor::start(engine.inner.clone(), policy)?;
            *engine.compactor.lock() = Some(compactor);
        }
        let mut engine = engine;
        engine.report.elapsed = started.elapsed();
        Ok(engine)
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

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.inner.config.key_len_max;
        if key.len() > max {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<()> {
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
    pub(crate) fn stamp(&self) -> u64 {
        self.inner.clock.raw()
    }

    /// Refuses a submission of `len` payload bytes to a failed engine, or over the limit.
    pub(crate) fn check_submit(&self, len: usize) -> Result<()> {
        let inner = &*self.inner;
        if let Some(e) = inner.completion.failure() {
            return Err(failed(e));
        }
        if len > inner.request_len_max {
            return Err(Error::RequestTooLarge {
                len,
                max: inner.request_len_max,
                limit: inner.request_limit,
            });
        }
        Ok(())
    }

    /// Claims ring space for a request of `len` payload bytes and fills it. Returns the
    /// request's end position (its ticket).
    pub(crate) fn submit(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        let inner = &*self.inner;
        self.check_submit(len)?;
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
        self.pushed(len, pushed)
    }

    /// A ring push's outcome for a request of `len` payload bytes, as the submit calls give it.
    pub(crate) fn pushed(
        &self,
        len: usize,
        pushed: std::result::Result<u64, PushError>,
    ) -> Result<u64> {
        let inner = &*self.inner;
        match pushed {
            Ok(pos) => Ok(pos),
            Err(PushError::Full) => Err(Error::Busy),
            Err(PushError::Closed) => Err(Error::Closed),
            Err(PushError::TooLarge) => Err(Error::RequestTooLarge {
                len,
                max: inner.ring.max_payload(),
                limit: crate::error::RequestLimit::RingRecord,
            }),
        }
    }

    pub(crate) fn ticket(&self, pos: u64) -> Ticket {
        Ticket::new(pos, self.inner.anchors.get())
    }

    /// Submits a put. Returns at once (but see "Blocking"); the ticket completes when the put
    /// is durable.
    ///
    /// # Errors
    ///
    /// At submit, nothing submitted: [`Error::KeyTooLong`], [`Error::ValueTooLong`] or
    /// [`Error::RequestTooLarge`] (a limit of the configuration, named with the size);
    /// [`Error::Busy`] (a full ring) or [`Error::Throttled`] (a consumer lags past
    /// `Config::consumer_lag_max`) under `Backpressure::Reject` (back off and retry:
    /// [`Error::is_back_off`]); [`Error::NoSpace`] while writes are refused for lack of room
    /// on the disk (until [`Engine::resume`]); [`Error::Closed`] once the engine is closing
    /// or closed; [`Error::Failed`] once it has failed.
    ///
    /// Through the ticket: the error of the write or sync that failed the engine (usually
    /// [`Error::Io`]) or [`Error::Failed`], and then the request may or may not be in the log
    /// (a reopen tells); [`Error::NoSpace`] if its window was refused for room (nothing of it
    /// applied); see [`Ticket::wait`] for the rest.
    ///
    /// # Blocking
    ///
    /// Under `Backpressure::Block` (the default) a full ring, or a consumer lagging past
    /// `Config::consumer_lag_max`, parks the calling thread until there is room (or the
    /// engine closes or fails); [`Engine::put_async`] and its siblings wait as futures
    /// instead.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Backpressure, Config, Engine, Error, Ticket};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    ///
    /// // Submit, then wait: `wait` returns the batch that holds the put once it is durable.
    /// let seq = engine.put(b"user:42", b"Ada")?.wait()?;
    /// assert!(seq.get() >= 1);
    ///
    /// // A limit is checked at submit, and nothing is submitted.
    /// let key = vec![b'k'; engine.config().key_len_max + 1];
    /// match engine.put(&key, b"v") {
    ///     Err(Error::KeyTooLong { len, max }) => assert_eq!(len, max + 1),
    ///     other => panic!("expected Error::KeyTooLong, got {other:?}"),
    /// }
    /// engine.close()?;
    ///
    /// // Under `Backpressure::Reject` a full ring (or a lagging consumer) refuses the put
    /// // instead of parking the thread: back off and submit it again.
    /// fn put_with_retry(engine: &Engine, key: &[u8], value: &[u8]) -> mergelog::Result<Ticket> {
    ///     loop {
    ///         match engine.put(key, value) {
    ///             Err(e) if e.is_back_off() => std::thread::sleep(std::time::Duration::from_millis(1)),
    ///             submitted => return submitted,
    ///         }
    ///     }
    /// }
    /// let config = Config { backpressure: Backpressure::Reject, ..Config::default() };
    /// let engine = Engine::open(dir.path(), config)?;
    /// put_with_retry(&engine, b"user:43", b"Grace")?.wait()?;
    /// assert_eq!(engine.read_to_vec(b"user:42")?, Some(b"Ada".to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        self.check_value(value)?;
        Ok(self.ticket(self.submit_put(key, value, None)?))
    }

    /// Submits a put of checked `key` and `value`, with request id `id`; returns its ticket's
    /// position.
    pub(crate) fn submit_put(
        &self,
        key: &[u8],
        value: &[u8],
        id: Option<&RequestId>,
    ) -> Result<u64> {
        let len = request::put_len(key, value) + request::id_len(id);
        self.admit(len)?;
        let now = self.stamp();
        self.submit(len, |buf| request::encode_put(buf, key, value, now, id))
    }

    /// Submits a delete. Returns at once (but see [`Engine::put`], "Blocking"); the ticket
    /// completes when the delete is durable.
    ///
    /// # Errors
    ///
    /// As [`Engine::put`] (no value to be too long).
    pub fn delete(&self, key: &[u8]) -> Result<Ticket> {
        self.check_key(key)?;
        Ok(self.ticket(self.submit_delete(key, None)?))
    }

    /// As [`Engine::submit_put`], for a delete.
    pub(crate) fn submit_delete(&self, key: &[u8], id: Option<&RequestId>) -> Result<u64> {
        let len = request::delete_len(key) + request::id_len(id);
        self.admit(len)?;
        let now = self.stamp();
        self.submit(len, |buf| request::encode_delete(buf, key, now, id))
    }

    /// Submits a merge of `operand` into the value of `key`, with the engine's operator
    /// (`Config::merge`, e.g. `MergeOperator::Add` for a counter). Returns at once; the
    /// ticket completes when the merged value is durable. The flusher computes that value
    /// from the key's value as of the merge's place in the order and logs it as a put, so
    /// concurrent merges of one key are atomic and none is lost, without a lock or a
    /// read-modify-write round trip for the caller.
    ///
    /// Refused with [`Error::MergeRefused`]: at once, if no operator is configured or it
    /// cannot take `operand` (an `Add`, `Max` or `Min` operand is 8 bytes, a little-endian
    /// `i64`); through the ticket, if the operator refuses the value the merge applies to
    /// (an `Add` onto a value that is not 8 bytes), or a `Custom` operator's result is
    /// over `value_len_max` or it panics. A refused merge changes nothing; the engine goes
    /// on.
    ///
    /// # Errors
    ///
    /// [`Error::MergeRefused`] as above, and those of [`Engine::put`] (the operand counts
    /// as the value against `value_len_max`); it blocks where `put` does.
    pub fn merge(&self, key: &[u8], operand: &[u8]) -> Result<Ticket> {
        self.check_merge(key, operand)?;
        Ok(self.ticket(self.submit_merge(key, operand, None)?))
    }

    /// The submit-side checks of a merge: key and operand limits, and the operator's.
    pub(crate) fn check_merge(&self, key: &[u8], operand: &[u8]) -> Result<()> {
        self.check_key(key)?;
        self.check_value(operand)?;
        self.check_operand(operand)
    }

    /// The operator's check of `operand` (refused when no operator is configured).
    fn check_operand(&self, operand: &[u8]) -> Result<()> {
        match &self.inner.config.merge {
            Some(op) => op.check_operand(operand),
            None => Err(Error::MergeRefused {
                operator: None,
                reason: "no merge operator is configured (Config::merge is None): open the \
                         engine with one, such as Config { merge: Some(MergeOperator::Add), .. }"
                    .into(),
            }),
        }
    }

    /// As [`Engine::submit_put`], for a merge.
    pub(crate) fn submit_merge(
        &self,
        key: &[u8],
        operand: &[u8],
        id: Option<&RequestId>,
    ) -> Result<u64> {
        let len = request::merge_len(key, operand) + request::id_len(id);
        self.admit(len)?;
        let now = self.stamp();
        self.submit(len, |buf| request::encode_merge(buf, key, operand, now, id))
    }

    /// Submits a windowed read, ordered with the writes: it sees every write submitted
    /// before it (including those of its own window) and completes once its window is
    /// durable, so it never returns a value a crash could take back (with
    /// `Durability::NoSync`, "durable" means written: a power loss can take it back).
    ///
    /// # Errors
    ///
    /// At submit: [`Error::KeyTooLong`]; [`Error::Busy`] on a full ring under
    /// `Backpressure::Reject` (under `Block` it waits for room, as [`Engine::put`] does; a
    /// get is never throttled on consumer lag, nor refused while writes are refused for
    /// room); [`Error::Closed`], [`Error::Failed`]. Through the ticket: the failure of its
    /// window, as for a put, and [`Error::ValueTaken`] for a second wait.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// let _put = engine.put(b"color", b"red")?; // not waited for
    /// let get = engine.get(b"color")?; // submitted after the put: it sees it
    /// assert_eq!(get.wait()?, Some(b"red".to_vec()));
    /// // The value is handed out once.
    /// assert!(matches!(get.wait(), Err(Error::ValueTaken)));
    /// assert_eq!(engine.get(b"absent")?.wait()?, None);
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// # Errors
    ///
    /// [`Error::EmptyBatch`] for a batch with no operation; [`Error::MergeRefused`] for a
    /// merge in it the operator cannot take (nothing of the batch submitted); else those of
    /// [`Engine::put`], the limits checked for every operation and [`Error::RequestTooLarge`]
    /// for the whole batch; it blocks where `put` does.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error, WriteBatch};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// engine.put(b"from", b"100")?.wait()?;
    ///
    /// // Move a value between keys: both changes or neither, even across a crash.
    /// let mut batch = WriteBatch::new();
    /// batch.put(b"to", b"100").delete(b"from");
    /// engine.write(&batch)?.wait()?;
    /// assert_eq!(engine.read_to_vec(b"to")?, Some(b"100".to_vec()));
    /// assert_eq!(engine.read_to_vec(b"from")?, None);
    ///
    /// // The batch is the caller's to reuse; an empty one is refused.
    /// batch.clear();
    /// assert!(matches!(engine.write(&batch), Err(Error::EmptyBatch)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn write(&self, batch: &WriteBatch) -> Result<Ticket> {
        self.check_batch(batch)?;
        Ok(self.ticket(self.submit_batch(batch, None)?))
    }

    /// Refuses an empty batch, or one with a key or value over the limits.
    pub(crate) fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Err(Error::EmptyBatch);
        }
        for (key, value) in batch.keys_values() {
            self.check_key(key)?;
            self.check_value(value)?;
        }
        batch
            .merge_operands()
            .try_for_each(|operand| self.check_operand(operand))
    }

    /// As [`Engine::submit_put`], for a checked write batch.
    pub(crate) fn submit_batch(&self, batch: &WriteBatch, id: Option<&RequestId>) -> Result<u64> {
        let len = request::batch_len(batch) + request::id_len(id);
        self.admit(len)?;
        let now = self.stamp();
        self.submit(len, |buf| request::encode_batch(buf, batch, now, id))
    }

    /// Cuts the current window now. The ticket completes when everything submitted before
    /// this call is durable. It fails with [`Error::NoSpace`] if a write submitted before it
    /// was refused for lack of room on the disk since the last [`Engine::resume`] (and
    /// `flush` itself does while writes are refused): a caller that drops its tickets learns
    /// of the refusal here.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] once the engine has failed, [`Error::Closed`] once it is closing or
    /// closed, [`Error::NoSpace`] while writes are refused for room. Never blocks, and is
    /// never throttled.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// // Many writes whose tickets are dropped (they land all the same) ...
    /// for i in 0..100u32 {
    ///     let _ = engine.put(&i.to_be_bytes(), b"v")?;
    /// }
    /// // ... then one wait for all of them (and the error, if one of them failed).
    /// engine.flush()?.wait()?;
    /// assert_eq!(engine.len(), 100);
    /// # Ok(())
    /// # }
    /// ```
    pub fn flush(&self) -> Result<Ticket> {
        if let Some(e) = self.inner.completion.failure() {
            return Err(failed(e));
        }
        if self.inner.ring.is_closed() {
            return Err(Error::Closed);
        }
        // Refused while writes are refused for room; else the spells so far, read before the
        // position: a spell that begins later refused a write this flush covers if its first
        // refused write starts before `pos` (the ticket's outcome looks, `crate::room`).
        let spells = self.inner.completion.room.for_flush()?;
        let pos = self.inner.ring.tail();
        self.inner.flush_to.fetch_max(pos, Ordering::SeqCst);
        self.inner.poke_flusher();
        Ok(Ticket::flush(pos, self.inner.anchors.get(), spells))
    }

    /// Reads the durable value of `key`, zero-copy from the log's mapping, without going
    /// through the window. A writer whose ticket completed reads its own write. (With
    /// `Durability::NoSync`, "durable" means written: a power loss can take it back.)
    ///
    /// # Errors
    ///
    /// [`Error::KeyTooLong`] only: a read works on a closed or failed engine too.
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// engine.put(b"greeting", b"hello")?.wait()?; // durable: `read` sees it
    /// match engine.read(b"greeting")? {
    ///     // A `ValueRef` derefs to `[u8]`, borrowed from the log's mapping.
    ///     Some(value) => assert_eq!(&*value, b"hello"),
    ///     None => panic!("the put was durable"),
    /// }
    /// assert!(engine.read(b"absent")?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(&self, key: &[u8]) -> Result<Option<ValueRef>> {
        self.check_key(key)?;
        Ok(ValueRef::lookup(
            &self.inner.index,
            &self.inner.segments,
            key,
        ))
    }

    /// As `read`, copying the value out.
    ///
    /// # Errors
    ///
    /// As [`Engine::read`]: [`Error::KeyTooLong`] only.
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
    ///
    /// Followers, consumers and replay see what the log holds: of a key's writes in one
    /// window, the last (with `Config::coalesce` on, the default). An event log that must
    /// keep every event gives each its own key (`examples/ledger` logs `tx/<voucher>`), or
    /// opens with `coalesce: false`.
    pub fn follow(&self, from: impl Into<Seq>) -> Follower {
        Follower::of_engine(
            self.inner.dir.clone(),
            self.inner.segments.clone(),
            from.into().get().max(1),
            self.inner.live.clone(),
        )
    }

    /// A read-only view of the log as of now (its durable batches; with `NoSync`, those
    /// written), for replay in log order (a key's last write of each window: see
    /// [`Engine::follow`]). It reads through the engine's own mappings (no
    /// scan of the directory), and while it lives the engine does not reuse its segment
    /// files; a follower made from it (`LogReader::follow`) is one of this engine's.
    ///
    /// # Errors
    ///
    /// None today: a view can be taken of a closed or failed engine too, and holds what was
    /// durable. The `Result` leaves room for a view that must touch the directory.
    pub fn replay(&self) -> Result<LogReader> {
        Ok(LogReader::of_engine(
            &self.inner.dir,
            self.inner.segments.clone(),
            self.inner.live.clone(),
            self.inner.retire_lock.clone(),
            Some(self.inner.throttle.clone()),
            self.inner.io.clone(),
        ))
    }

    /// Writes a backup of the log into the new directory `dest` while the engine runs, and
    /// returns what it holds: every batch durable when it began (with `NoSync`, every batch
    /// written; `Backup::next_seq` is the first it does not hold), the request ids of
    /// retired segments, and each consumer's position. Writers are not held up, nor is
    /// retirement but while the view is taken and the side files are read: the copy reads the
    /// engine's own mappings, which a retirement does not take away (a file retired meanwhile
    /// is neither reused nor its room freed until the copy ends).
    /// `Engine::open(dest)` opens the copy as the log was at that batch, verifying it whole.
    /// `dest` must not exist; every file is synced, and the directory takes its name only
    /// once whole, so an error (a full disk) leaves nothing under it (but a whole backup when only
    /// the final sync of `dest`'s parent failed, which the error says). See
    /// [`LogReader::backup`] for a log another process writes.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the engine is closed (another engine may have the directory
    /// by then: back it up through that engine, or `LogReader::open(dir)?.backup(dest)`);
    /// [`Error::Io`] for an existing `dest` or a file call that failed (naming it): nothing
    /// is left under `dest`, unless only the final sync of its parent failed (above);
    /// [`Error::Corrupt`] for an `ids` file an engine opened on the backup would refuse
    /// (naming it and the bad entry's offset, as [`LogReader::backup`] says), nothing made.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread while it copies the log (README, "Calls that block the
    /// thread").
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<crate::Backup> {
        self.backup_to(None, dest.as_ref())
    }

    /// As [`Engine::backup`], an incremental backup: each segment file the earlier backup
    /// `earlier` holds exactly as this one would write it (read whole and compared) is
    /// linked, not copied (a hard link: the two backups share the file, and only new or
    /// changed segments take room and time); the rest is copied (all of it where `earlier`
    /// is on another file system). Each backup stays a whole log of its own: removing one
    /// leaves the other, and an engine that opens one first gives each shared segment a
    /// file of its own (a copy) before it writes anything, so the other backup never
    /// changes. `earlier` need not be a backup of this log: nothing but an identical file
    /// (a regular file under the name itself, not a symbolic link) is linked.
    /// `Backup::linked` says how many segments were.
    ///
    /// `earlier` must not be a log an engine has open (this engine's own directory, or a
    /// restored backup being written): that engine writes into its files, and would into
    /// the backup's links to them. Such an `earlier` is refused (`Error::Io`, "an engine
    /// has it open"), nothing made. While the backup is made, `earlier`'s `LOCK` file (made
    /// if it has none) is held shared: an engine opening `earlier` meanwhile is refused
    /// with `Error::Locked`.
    ///
    /// # Errors
    ///
    /// As [`Engine::backup`]'s; also [`Error::Io`] when `earlier` is a log an engine has open
    /// (above), or one of its files cannot be read or synced (naming it); nothing is left
    /// under `dest`.
    pub fn backup_since(
        &self,
        earlier: impl AsRef<Path>,
        dest: impl AsRef<Path>,
    ) -> Result<crate::Backup> {
        self.backup_to(Some(earlier.as_ref()), dest.as_ref())
    }

    fn backup_to(&self, earlier: Option<&Path>, dest: &Path) -> Result<crate::Backup> {
        // The view and the side files under one hold of the retirement lock: a retirement
        // between them would replace the `ids` file with the ids remembered then, which may
        // name batches past the view's end and may have let older ones go that the view's
        // log still remembers (the horizon moved on meanwhile). A consumer's position read
        // after the view may only be further on, which the backup pulls back to its end.
        // And only while the engine holds the directory: after `close` another engine may
        // have it, and its `ids` file would name batches this view does not hold (lock order
        // as `close`'s: the retirement lock, then the hold).
        let (view, side) = {
            let _no_retirement = self.inner.retire_lock.lock();
            self.inner.live.while_holding_dir(|| {
                let view = self.replay()?;
                let side = view.side_files()?;
                Ok((view, side))
            })?
        };
        crate::backup::write(&*self.inner.io, &view, &side, dest, earlier)
    }

    /// The log's segment files in order, the last one being written: for a caller that
    /// decides what to retire (`retire_before(segments[i].first_seq)` removes the ones
    /// before `i`).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .segments
            .read()
            .iter()
            .map(|s| SegmentInfo::of(s))
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
    /// If the directory sync after a removal fails, the engine fails as after any failed
    /// sync ([`Error::Failed`] from this call and every later write; reads go on): it has
    /// forgotten that segment, but a crash could still bring it back with the keys it held,
    /// and no later sync may be taken to cover the failed one. A reopen syncs the directory.
    ///
    /// Durable consumers ([`Engine::consumer`]) hold it back: it never removes a batch a
    /// consumer has not committed, retiring only before `min(seq, committed + 1)` of every
    /// consumer, and [`Retired::held_back_by`] names the consumer that limited it.
    /// [`Engine::retire_before_forced`] ignores them.
    ///
    /// A write-ahead log under a checkpoint, in short (`examples/kv_wal/store.rs` is the
    /// whole pattern, crash-tested: writes applied in log order from several threads, the
    /// checkpoint written durably before the history it covers is retired):
    ///
    /// ```
    /// use mergelog::{Config, Engine, RecordOp, Seq};
    /// use std::collections::BTreeMap;
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// // Small segments, so that this example retires some.
    /// let config = || Config {
    ///     segment_bytes: 64 << 10,
    ///     batch_bytes_max: 16 << 10,
    ///     ..Config::default()
    /// };
    /// let engine = Engine::open(dir.path(), config())?;
    /// let mut state = BTreeMap::new();
    /// let mut covered = Seq::default(); // the last batch applied to `state`
    /// for i in 0..200 {
    ///     let (key, value) = (format!("k{}", i % 50).into_bytes(), vec![b'v'; 1000]);
    ///     covered = engine.put(&key, &value)?.wait()?; // durable: now apply it
    ///     state.insert(key, value);
    /// }
    /// // The checkpoint: `state` as of batch `covered`, made durable (a file: written,
    /// // synced, renamed, its directory synced) before the history it covers goes.
    /// let checkpoint = (covered, state.clone());
    /// let retired = engine.retire_before(covered.next())?;
    /// assert!(retired.segments > 0);
    /// engine.put(b"after", b"the checkpoint")?.wait()?;
    /// engine.close()?;
    ///
    /// // At open: the checkpoint, then the log after it.
    /// let engine = Engine::open(dir.path(), config())?;
    /// let (covered, mut state) = checkpoint;
    /// let log = engine.replay()?;
    /// // Every batch after the checkpoint: `Error::Retired` if some were retired,
    /// // `Error::PastEnd` if the log ends before them.
    /// for batch in log.batches_from(covered.next())? {
    ///     for r in batch.records() {
    ///         match r.op {
    ///             RecordOp::Put => state.insert(r.key.to_vec(), r.value.to_vec()),
    ///             RecordOp::Delete => state.remove(r.key),
    ///         };
    ///     }
    /// }
    /// assert_eq!(state.len(), 51);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the engine is closed, and the engine's failure once it failed;
    /// [`Error::Io`] (naming the file) when a consumer's position file or the `ids` file cannot
    /// be read or replaced, or a removal fails (the segments removed before it stay removed,
    /// and the engine forgets exactly those); [`Error::Failed`] when the directory sync after a
    /// removal fails, which fails the engine (above).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread while it removes files and syncs the directory after each
    /// (and may replace the `ids` file), after waiting for the compaction batches already
    /// written to be durable and for a retirement or compaction chunk in progress: from
    /// async code, call it on a thread that may block (README, "Calls that block the
    /// thread").
    pub fn retire_before(&self, seq: impl Into<Seq>) -> Result<Retired> {
        self.retire(seq.into().get(), true)
    }

    /// As [`Engine::retire_before`], whatever the consumers have committed: a consumer whose
    /// next batch is removed gets [`Error::Retired`] as a follower does.
    ///
    /// # Errors
    ///
    /// As [`Engine::retire_before`]'s, but for the consumers' files, which it does not read.
    pub fn retire_before_forced(&self, seq: impl Into<Seq>) -> Result<Retired> {
        self.retire(seq.into().get(), false)
    }

    /// `retire_before(seq)`, held back by the consumers if `respect_consumers`.
    fn retire(&self, seq: u64, respect_consumers: bool) -> Result<Retired> {
        let keep = self.inner.config.recycle_segments;
        retire_prefix(&self.inner, seq, respect_consumers, keep)
    }

    /// Compacts the log: copies every record that is still the newest of its key out of the
    /// complete segments (every one but the segment being written, and only those every
    /// durable consumer has passed) to the head of the log, as compaction batches
    /// ([`Batch::is_compaction`](crate::Batch::is_compaction)), then retires those segments.
    /// The engine then holds the same keys and values in less disk: what an application
    /// that uses the engine's index as its store needs, where `retire_before` (which forgets
    /// the retired segments' keys) is for a log under a checkpoint.
    ///
    /// Writes go on meanwhile: each compaction batch (at most 256 KiB of records) is written
    /// between two windows and synced with the one after it, in the same sync; the writers
    /// wait only once per compaction,
    /// for the windows in flight when it began. A key written meanwhile keeps its new value
    /// (the copy is dropped). Crash-safe at every step: a crash leaves copies next to their originals,
    /// or a shorter prefix, and the next open replays to the same state. Deleted keys stay
    /// deleted: their tombstones are retired only with every older put of the key.
    ///
    /// On a full disk it makes room: it retires the segments it has copied whole as it goes,
    /// and the next segments reuse their files. Its first copies need a segment the disk
    /// may have no room for: `Config::reserve_segment` keeps one in reserve, which the
    /// copies then take (writes are refused from then on, as when a window meets the full
    /// disk, until [`Engine::resume`]). Without a reserve, or with one too small for the live
    /// records of the oldest segment, it fails with `Error::NoSpace`, retires nothing it has
    /// not copied, and the engine goes on.
    ///
    /// Returns what it did (nothing if no segment is complete); `Error::CompactionOff` with
    /// `Compaction::Off`; the engine's failure if it failed. `Compaction::Auto` runs the same
    /// on a background thread.
    ///
    /// # Errors
    ///
    /// [`Error::CompactionOff`] with `Compaction::Off`; [`Error::Closed`] once the engine is
    /// closed, and the engine's failure once it failed; [`Error::NoSpace`] when the disk has
    /// no room for its first copies and no reserve holds them (nothing it has not copied is
    /// retired, and the engine goes on); otherwise as [`Engine::retire_before`]'s, the last
    /// step of a compaction.
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread for the whole compaction (reading the segments it takes,
    /// waiting for the flusher to write each chunk and for their syncs, retiring): seconds
    /// for a large log. From async code, call it on a thread that may block, or use
    /// `Compaction::Auto`, whose thread does it (README, "Calls that block the thread").
    pub fn compact(&self) -> Result<Compacted> {
        compact::compact(&self.inner, None, None)
    }

    /// The error of the last automatic compaction (`Compaction::Auto`), if it failed without
    /// failing the engine: no room on the disk for the `ids` file a retirement replaces, or
    /// a consumer's file that could not be read, say. The compacting thread goes on (the next
    /// run comes once the log has grown), so nothing else reports it; a run that ends well
    /// clears it. `CompactionCounts::failed` counts them. An asked-for `compact` returns its
    /// error instead.
    pub fn compaction_error(&self) -> Option<Error> {
        compact::auto_error(&self.inner)
    }

    /// How often `Compaction::Auto`'s thread looked and found no segment completed since its
    /// last run (so nothing to do). For tests; not a stable API.
    #[doc(hidden)]
    pub fn auto_compaction_idle_looks(&self) -> u64 {
        compact::idle_looks(&self.inner)
    }

    /// How much disk the log takes against the live data it holds: what to watch to decide
    /// when to compact (`Compaction::Auto` compares [`Space::live_ratio`] with its policy).
    pub fn space(&self) -> Space {
        compact::space(&self.inner)
    }

    /// The pipeline's timeline recorded since open or the last call, which it empties: empty
    /// unless `Config::trace_events` is set (see [`TraceKind`](crate::TraceKind) for what is
    /// recorded). Works after `close` too: the events of the whole run stay until taken.
    pub fn take_trace(&self) -> crate::Trace {
        self.inner
            .trace
            .as_ref()
            .map(crate::trace::Recorder::take)
            .unwrap_or_default()
    }

    /// A snapshot of counters and per-stage histograms (about 2.5 MB of histograms copied
    /// under the lock the pipeline records under), and each durable consumer's lag
    /// ([`Stats::consumers`]: its position file read, as [`Engine::consumers`] reads it, and
    /// frames walked to count its bytes; empty after `close`). See [`Engine::counts`] for
    /// polling.
    ///
    /// Blocks the calling thread while it reads the consumers' files and walks the frames
    /// they lag by (nothing to read without a consumer); `counts` does not.
    pub fn stats(&self) -> Stats {
        let durable = self.inner.completion.durable();
        let backlog = self.inner.ring.tail().saturating_sub(durable);
        Stats {
            segments: self.inner.pool.counts(),
            consumers: self.consumers().unwrap_or_default(),
            ..self.inner.counters.snapshot(backlog, durable)
        }
    }

    /// The last durable batch (0 before the log's first): every batch up to it is durable
    /// and its index updates are queued (a read sees them), and once a ticket's `wait` has
    /// given batch N, `durable_seq() >= N`. It moves just before the tickets it covers
    /// complete, so a ticket of a batch at or below it may still report pending for a
    /// moment. What a caller checkpoints against; `follow(durable_seq().next())` yields what
    /// comes after.
    pub fn durable_seq(&self) -> Seq {
        Seq::new(self.inner.live.durable_seq.load(Ordering::Acquire))
    }

    /// The counters alone: atomic loads (and the segment pool's short lock, for
    /// `SegmentCounts::reserved`), no allocation, no file read; cheap enough to poll.
    pub fn counts(&self) -> Counts {
        let durable = self.inner.completion.durable();
        let backlog = self.inner.ring.tail().saturating_sub(durable);
        Counts {
            segments: self.inner.pool.counts(),
            ..self.inner.counters.counts(backlog, durable)
        }
    }

    /// Ends a spell of refused writes after the disk had no room for the log's next segment
    /// ([`Error::NoSpace`]): makes that segment's file now (a file from the pool if a
    /// retirement put one there, else a new one written full of zeros, which can take a
    /// fraction of a second), and lets writes in again. `Error::NoSpace` if the disk still
    /// has no room: make room first (free the disk, `compact`, or `retire_before`, whose
    /// files `Config::recycle_segments` keeps for reuse). With room, it also makes the
    /// reserve again if a compaction took it and no retirement has made it since
    /// (`Config::reserve_segment`; best effort). `Ok` at once if writes are not refused;
    /// the engine's failure if it failed. Calling it says the refusals were seen: a
    /// `flush` made after it no longer reports them. While writes are refused it takes the
    /// flusher's desk, so it waits for a window being written to be done (a `Linger` window
    /// of gets, say) before it makes the segment.
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] while the disk still has no room for the next segment (writes stay
    /// refused); the engine's failure once it failed, and [`Error::Failed`] when the
    /// directory sync after making the segment fails, which fails the engine;
    /// [`Error::Closed`] when writes were refused and the engine has been closed since;
    /// [`Error::Io`] when making the segment fails otherwise (writes stay refused).
    pub fn resume(&self) -> Result<()> {
        crate::pipeline::flusher::resume(&self.inner)
    }

    /// True while writes are refused for lack of room on the disk (see
    /// [`Engine::resume`]).
    pub fn is_out_of_room(&self) -> bool {
        self.inner.completion.room.refusing()
    }

    /// The error that failed the engine, if it failed.
    pub fn failure(&self) -> Option<Error> {
        self.inner.completion.failure().map(failed)
    }

    /// Stops accepting requests, drains the ring, writes and syncs what it held, and joins
    /// the flusher. Every ticket is complete when this returns, and in-process followers end
    /// with `Error::Closed` after the last durable batch. Idempotent; a second call made
    /// while the first runs waits for it to finish. A `Compaction::Auto` compaction in
    /// progress toward the policy's ratio (a few segments) runs to its end first, so the log
    /// rests within the policy; one taking every segment past `max_log_bytes` stops after its
    /// current batch, retiring nothing.
    ///
    /// A producer that claimed ring space but has not filled it (a thread stopped inside
    /// `put`, between the claim and the publish: preempted for long, or frozen by a debugger
    /// or a signal handler) holds up everything behind it, since the log keeps the ring's
    /// order. `close` waits up to 10 s for it to publish; then it gives up: the
    /// engine fails with an error that gives the ring position, how long it waited and that
    /// the requests from there on were not written (`Error::Failed` with an
    /// `Error::Stalled` as its cause), `close` returns that error, and every
    /// ticket at or after the position fails (earlier ones are durable). The stalled
    /// producer's eventual publish goes nowhere, and its ticket reports the failure.
    ///
    /// From inside user code the engine runs (a `Waker` it calls: a ticket's, a follower's,
    /// a submit's waiting for room; a `Custom` merge operator), which may run on the engine's
    /// own thread or under a lock the closing takes, `close` cannot wait for the pipeline: it
    /// only begins the closing (new requests are refused from then on) and returns
    /// `Error::Closed`; the engine's drop, or a `close` from elsewhere, finishes it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] when called from user code the engine runs (above: the closing is
    /// only begun); the engine's failure if it failed, before or while it drained (a stalled
    /// producer: [`Error::Failed`] with [`Error::Stalled`] as its cause). A second call returns
    /// what the first did, unless the first was made from user code (above).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread until the pipeline has drained and stopped (every sync of
    /// what the ring held, and a `Compaction::Auto` run's end), as the engine's drop does:
    /// from async code, close (or drop the last handle) on a thread that may block. The
    /// futures waiting on the engine need no task of the closing thread to end: they are
    /// woken by the close and the pipeline (README, "Calls that block the thread").
    ///
    /// # Example
    ///
    /// ```
    /// use mergelog::{Config, Engine, Error};
    ///
    /// # fn main() -> mergelog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// let ticket = engine.put(b"k", b"v")?;
    /// engine.close()?; // the put is drained and synced first
    /// assert!(ticket.wait().is_ok());
    /// // Closed: writes are refused, reads go on.
    /// assert!(matches!(engine.put(b"k", b"w"), Err(Error::Closed)));
    /// assert_eq!(engine.read_to_vec(b"k")?, Some(b"v".to_vec()));
    /// drop(engine); // releases the directory: it can be opened again
    /// let engine = Engine::open(dir.path(), Config::default())?;
    /// assert_eq!(engine.read_to_vec(b"k")?, Some(b"v".to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&self) -> Result<()> {
        if crate::sync::in_user_code() {
            self.inner.ring.close();
            self.inner.throttle.wake_all();
            self.inner.poke_flusher();
            return Err(Error::Closed);
        }
        // A compaction in progress (`Compaction::Auto`) runs to its end if it has a goal (a
        // few segments: the log then rests within the policy), else ends after its current
        // batch, retiring nothing (the flusher still writes it).
        if let Some(c) = self.compactor.lock().take() {
            c.stop();
        }
        self.inner.ring.close();
        // Submitters throttled on consumer lag get `Error::Closed`.
        self.inner.throttle.wake_all();
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
            // A compaction may have kept more retired files than `recycle_segments` for the
            // segments it expected to write next, and the next segment is prepared: at rest
            // they are only disk. Best effort: the next open removes any beyond the pool's
            // size.
            let inner = &*self.inner;
            let _ = retire::trim_spares_at_close(
                &*inner.io,
                &inner.dir,
                inner.config.segment_bytes,
                inner.config.recycle_segments,
                usize::from(inner.config.reserve_segment),
            );
            if joined.is_ok() {
                self.write_clean_mark();
            }
            // A consumer's commit in progress finishes first; later ones are refused.
            self.inner.live.release_dir();
            self.lock.lock().take();
            if joined.is_err() {
                // A panic past the flusher's guard (its ending, after the pipeline stopped):
                // recorded like one inside it, so that every later call, a second `close`
                // too, says so (the handle is gone: that one would find none).
                let e = Error::Failed(Arc::new(Error::Panicked { thread: "flusher" }));
                self.inner.completion.fail(e.clone());
                return Err(e);
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

/// `Engine::retire_before(seq)` on the engine `inner`, held back by the consumers if
/// `respect_consumers` (also the last step of a compaction), keeping up to `keep` retired
/// files for reuse (at least `Config::recycle_segments`).
pub(crate) fn retire_prefix(
    inner: &Inner,
    seq: u64,
    respect_consumers: bool,
    keep: usize,
) -> Result<Retired> {
    // Checked under the lock, which `close` takes before it gives up the directory: no
    // retirement runs on once another engine may have the directory.
    let _one_at_a_time = inner.retire_lock.lock();
    compact::check_running(inner)?;
    // No chunk is checked or written from here until the keys are forgotten, and every
    // compaction batch written before is durable, its copies queued in the index, before
    // they are (`CompactSlot::writing`).
    let (writing, last_batch) = inner.compact_slot.hold_off_writes();
    let _holding_off = ChunksHeldOff {
        inner,
        writing: Some(writing),
    };
    let retired = compact::wait_durable(inner, last_batch)
        .and_then(|()| retire_held_off(inner, seq, respect_consumers, keep));
    drop(_holding_off);
    // The room for the `ids` file's next replacement, kept now that the removals may have
    // made some (best effort; a no-op while it is kept: the exchange usually keeps it).
    inner.ids_room.keep();
    retired
}

/// Compaction chunks held off by a retirement (`CompactSlot::writing`): on drop, however the
/// retirement ends, lets them be written again and wakes the flusher if one waits.
struct ChunksHeldOff<'a> {
    inner: &'a Inner,
    writing: Option<parking_lot::MutexGuard<'a, ()>>,
}

impl Drop for ChunksHeldOff<'_> {
    fn drop(&mut self) {
        drop(self.writing.take());
        if self.inner.compact_slot.pending() {
            self.inner.poke_flusher();
        }
    }
}

/// [`retire_prefix`], under the retirement lock, with compaction batches held off.
fn retire_held_off(
    inner: &Inner,
    seq: u64,
    respect_consumers: bool,
    keep: usize,
) -> Result<Retired> {
    // Read under the lock: a consumer created meanwhile (`Engine::consumer` takes it
    // too) is either seen here or starts after what this removes. A commit meanwhile
    // only moves a position forward, so an older one read here only retires less.
    let (seq, held_back_by) = match respect_consumers {
        true => consumer::retire_limit(&inner.dir, seq)?,
        false => (seq, None),
    };
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
    if let Some(last) = candidates.last() {
        // The request ids in the segments about to go that are still remembered must
        // survive a reopen: written to the `ids` file first, durably.
        let kept = inner
            .segments
            .read()
            .iter()
            .find(|s| s.id > last.id)
            .map(|s| s.id);
        inner
            .ids_room
            .carry_before(&inner.ids, kept.unwrap_or(u64::MAX))?;
    }
    let keep = keep.max(inner.config.recycle_segments);
    let retiring = retire::retire_oldest(io, dir, &inner.pool, &inner.config, &candidates, keep);
    let (removed, sync_failed) = (retiring.removed, retiring.sync_failed);
    // Forget what was removed: first from the list (new lookups miss it), then from the
    // index. `gone` keeps the mappings alive until the index no longer points into them.
    let gone = inner.segments.write().retire_front(removed);
    debug_assert!(gone.iter().zip(&candidates).all(|(a, b)| Arc::ptr_eq(a, b)));
    let first = inner.segments.read().base();
    let keys_forgotten = inner.index.forget_below(first);
    let first_seq = Seq::new(inner.segments.read().iter().next().map_or(1, |s| s.id));
    // Recovery's replaced mappings of the removed segments go too: the index no longer
    // points into them.
    let replaced: Vec<Arc<Segment>> = {
        let mut maps = inner.replaced_maps.lock();
        let (gone, kept) = std::mem::take(&mut *maps)
            .into_iter()
            .partition(|s| s.id < first_seq.get());
        *maps = kept;
        gone
    };
    // A pooled file is reused only once nothing maps it any more (`Pool::take`).
    drop((gone, replaced));
    // A failed directory sync after a removal fails the engine, as any failed sync does: no
    // later one may be taken to cover it (reads go on; the next open syncs the directory).
    let recycled = retiring.into_pool(io, dir, &inner.pool).map_err(|e| {
        if sync_failed {
            inner.fail(&e)
        } else {
            e
        }
    })?;
    Ok(Retired {
        segments: removed,
        bytes: candidates[..removed].iter().map(|s| s.size).sum(),
        keys_forgotten,
        first_seq,
        recycled,
        held_back_by,
    })
}

impl Drop for Engine {
    /// Closes the engine (as [`Engine::close`], its error dropped). Dropped inside user code
    /// the engine runs (a waker whose task owned the last handle: an executor gone away),
    /// the closing is handed to a thread of its own, `mergelog-close`: that code may run on
    /// one of the pipeline's threads, which `close` joins, or under a lock `close` takes (the
    /// flusher's desk, the retirement lock), and would wait for itself there. The directory
    /// is then given up a moment after the drop returns.
    ///
    /// Elsewhere the drop blocks the calling thread as `close` does (see "Blocking" there):
    /// from async code, drop the last handle (or close) on a thread that may block.
    fn drop(&mut self) {
        if !crate::sync::in_user_code() {
            let _ = self.close();
            return;
        }
        let closing = Engine {
            inner: self.inner.clone(),
            flusher: Mutex::new(self.flusher.lock().take()),
            report: OpenReport::default(),
            lock: Mutex::new(self.lock.lock().take()),
            consumers: self.consumers.clone(),
            compactor: Mutex::new(self.compactor.lock().take()),
        };
        // Taken out by the thread, whose drop of it closes it off the waker; left here if
        // no thread could be made.
        let closing = Arc::new(Mutex::new(Some(closing)));
        let handed = closing.clone();
        let spawned = std::thread::Builder::new()
            .name("mergelog-close".into())
            .spawn(move || {
                let engine = handed.lock().take();
                drop(engine);
            });
        if spawned.is_err() {
            if let Some(engine) = closing.lock().take() {
                // It cannot be closed here: its pipeline drains and stops on its own (every
                // ticket completes), and the directory stays locked for the rest of the
                // process rather than be given up while the pipeline may still write.
                engine.inner.ring.close();
                engine.inner.throttle.wake_all();
                engine.inner.poke_flusher();
                std::mem::forget(engine);
            }
        }
    }
}
