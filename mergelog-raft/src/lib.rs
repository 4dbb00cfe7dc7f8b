//! # mergelog-raft
//!
//! An [openraft] log store ([`RaftLogStorage`] and its [`RaftLogReader`]) on a mergelog
//! [`Engine`]: a Raft node's log, vote and committed index live in one mergelog directory.
//!
//! - Entry `i` is the key `e` + `i` as 8 big-endian bytes, so a frame's sorted records are
//!   runs of consecutive entries; its value is the entry, postcard-encoded.
//! - The vote, the committed log id and the last purged log id are keys of their own
//!   (`m/vote`, `m/committed`, `m/purged`).
//! - `append` puts the entries as one `WriteBatch` (several, each a prefix of what is left,
//!   if they exceed the engine's batch limit). By default it waits for them and calls
//!   openraft's callback itself (openraft 0.9 awaits it at once: see
//!   [`LogStore::with_append_waits`]); otherwise, or behind an earlier append still pending,
//!   it returns and one store-owned thread waits the tickets in order and calls back when
//!   they are durable. The entries are readable at once from an in-memory overlay until
//!   then.
//! - `save_committed` keeps the id for the next append's first batch (or a purge's,
//!   [`LogStore::close`], or the store's drop, which does not wait to submit it): no request
//!   of its own.
//! - `truncate` deletes the conflicting suffix; `purge` deletes the prefix and then retires
//!   the engine's whole segments before it (`Engine::retire_before`), after rewriting the
//!   meta keys so that retiring never forgets them.
//! - Reopening the directory gives back the vote, the committed and purged log ids and the
//!   entries.
//!
//! [`kv`] holds a small in-memory key-value state machine and a type config for tests,
//! the cluster test and the bench.

#![warn(missing_docs)]
// openraft's `StorageError` is what its traits return; the helpers return it too rather than
// convert at every call.
#![allow(clippy::result_large_err)]

pub mod kv;
mod meta;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

use mergelog::{Config, Engine, Seq, Ticket, WriteBatch};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};

use crate::meta::{decode, encode, entry_index, entry_key, COMMITTED_KEY, PURGED_KEY, VOTE_KEY};

type Nid<C> = <C as RaftTypeConfig>::NodeId;
type StoreResult<T, C> = Result<T, StorageError<Nid<C>>>;

/// At most this many entries are returned by one `limited_get_log_entries`: replication of
/// a long backlog then goes in pieces instead of one huge message.
const READ_ENTRIES_MAX: usize = 4096;

/// What the store and its readers share.
struct Shared<C: RaftTypeConfig> {
    engine: Arc<Engine>,
    /// Entries appended but not yet known durable, by index, with the generation of the
    /// append that wrote them: the engine's index holds only durable records, and openraft
    /// reads an entry as soon as `append` returns.
    pending: Mutex<BTreeMap<u64, (u64, C::Entry)>>,
    /// `[first, next)`: the indexes the log holds (first = last purged + 1).
    bounds: RwLock<(u64, u64)>,
    /// Appends handed to the completion thread and not yet called back: an append may
    /// call its own callback only when this is 0 (callbacks stay in append order).
    queued: AtomicUsize,
}

impl<C: RaftTypeConfig> Shared<C>
where
    C::Entry: Clone,
{
    fn pending(&self) -> MutexGuard<'_, BTreeMap<u64, (u64, C::Entry)>> {
        // A panic elsewhere while holding it leaves a map that is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bounds(&self) -> (u64, u64) {
        *self.bounds.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_bounds(&self, first: u64, next: u64) {
        *self.bounds.write().unwrap_or_else(PoisonError::into_inner) = (first, next);
    }

    /// Entry `index`: the overlay first (newer), then the engine's durable state.
    fn read_one(&self, index: u64) -> StoreResult<Option<C::Entry>, C> {
        if let Some((_, entry)) = self.pending().get(&index) {
            return Ok(Some(entry.clone()));
        }
        // A miss in the overlay means the append completed, and a completed ticket's
        // records are visible to `read` (the engine applies queued index updates first).
        match self.engine.read(&entry_key(index)) {
            Ok(Some(value)) => decode::<C::Entry>(&value)
                .map(Some)
                .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)).into()),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_log_at_index(index, AnyError::new(&e)).into()),
        }
    }

    /// The entries of `range` the log holds, at most `max` of them.
    fn read_range(
        &self,
        range: impl RangeBounds<u64>,
        max: usize,
    ) -> StoreResult<Vec<C::Entry>, C> {
        let (first, next) = self.bounds();
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let mut out = Vec::new();
        for index in start.max(first)..end.min(next) {
            if out.len() >= max {
                break;
            }
            // An entry missing here was truncated or purged meanwhile: openraft allows it.
            if let Some(entry) = self.read_one(index)? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Drops the overlay's entries `[first, last]` written by append `generation` (a later
    /// append after a truncate may have replaced them: those stay).
    fn forget_pending(&self, first: u64, last: u64, generation: u64) {
        let mut pending = self.pending();
        for index in first..=last {
            if pending.get(&index).is_some_and(|(g, _)| *g == generation) {
                pending.remove(&index);
            }
        }
    }
}

/// One append's completion, for the completion thread.
struct Flush<C: RaftTypeConfig> {
    /// In submission order; they complete in order, so the last one's outcome is theirs
    /// too, but each is checked.
    tickets: Vec<Ticket>,
    first: u64,
    last: u64,
    generation: u64,
    callback: LogFlushed<C>,
}

/// The completion thread: waits each append's tickets in order and calls its callback.
/// One thread per store, whatever the number of appends in flight.
fn complete_in_order<C: RaftTypeConfig>(shared: Arc<Shared<C>>, flushes: mpsc::Receiver<Flush<C>>)
where
    C::Entry: Clone,
{
    for flush in flushes {
        flush.complete(&shared);
        shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: RaftTypeConfig> Flush<C>
where
    C::Entry: Clone,
{
    /// Waits the append's tickets in order and calls its callback with the outcome.
    fn complete(self, shared: &Shared<C>) {
        let outcome = self.tickets.iter().try_for_each(|t| t.wait().map(drop));
        match outcome {
            Ok(()) => {
                shared.forget_pending(self.first, self.last, self.generation);
                self.callback.log_io_completed(Ok(()));
            }
            // The engine's failure is sticky: openraft gets it here and from every later
            // call. So is a refusal for lack of room (`Error::NoSpace`) until
            // `Engine::resume`, which this store never calls: openraft stops on the error,
            // so no later append can leave a hole behind the refused one. The overlay keeps
            // the entries; nothing more will be acknowledged.
            Err(e) => self.callback.log_io_completed(Err(io::Error::other(e))),
        }
    }
}

/// A Raft log store on a mergelog engine. See the crate documentation.
pub struct LogStore<C: RaftTypeConfig>
where
    C::Entry: Clone,
{
    shared: Arc<Shared<C>>,
    vote: Option<Vote<Nid<C>>>,
    committed: Option<LogId<Nid<C>>>,
    /// `committed` is newer than what the log holds: it goes with the next append's first
    /// batch (or a purge's meta keys, or at drop).
    committed_unsaved: bool,
    /// An append nothing earlier waits on waits for its own entries (`append_waits`).
    append_waits: bool,
    last_purged: Option<LogId<Nid<C>>>,
    last_log: Option<LogId<Nid<C>>>,
    /// Counts appends, to tell an append's overlay entries from a later one's.
    generation: u64,
    /// The first batch that may hold a live entry's record: the scan for what to retire
    /// starts there (everything before it was found to hold only purged entries).
    retire_from: Seq,
    flushes: Option<mpsc::Sender<Flush<C>>>,
    completer: Option<JoinHandle<()>>,
}

impl<C: RaftTypeConfig> LogStore<C>
where
    C::Entry: Clone,
{
    /// Opens (or creates) the store in `dir` with the engine configuration `config`: the
    /// vote, committed and last purged log ids and the entries come back from it.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> StoreResult<Self, C> {
        let engine = Engine::open(dir, config).map_err(|e| io_err(StorageIOError::read, &e))?;
        Self::with_engine(Arc::new(engine))
    }

    /// The store on an engine already open, which it then owns the writes of. The engine
    /// must sync (`Durability::Sync`, the default): Raft needs a vote and an acknowledged
    /// entry to be durable, and under `NoSync` a ticket completes before its batch is, so a
    /// power loss could undo a vote (a second vote in the same term). Refused otherwise.
    pub fn with_engine(engine: Arc<Engine>) -> StoreResult<Self, C> {
        if engine.config().durability != mergelog::Durability::Sync {
            let e = mergelog::Error::InvalidConfig(
                "a Raft log store needs durability = Sync: votes and appended entries must be \
                 durable when their tickets complete"
                    .into(),
            );
            return Err(io_err(StorageIOError::read, &e));
        }
        let vote =
            meta::read_key(&engine, VOTE_KEY).map_err(|e| io_err(StorageIOError::read_vote, &e))?;
        let read = |key| meta::read_key::<LogId<Nid<C>>>(&engine, key);
        // Saved as an `Option` (openraft's argument), hence the flatten.
        let committed = meta::read_key::<Option<LogId<Nid<C>>>>(&engine, COMMITTED_KEY)
            .map_err(|e| io_err(StorageIOError::read, &e))?
            .flatten();
        let last_purged = read(PURGED_KEY).map_err(|e| io_err(StorageIOError::read_logs, &e))?;
        let first = last_purged.as_ref().map_or(0, |p| p.index + 1);
        let purged = last_purged.is_some();
        let present = meta::entries_from(&engine, first)
            .map_err(|e| io_err(StorageIOError::read_logs, &e))?;
        let shared = Arc::new(Shared {
            engine,
            pending: Mutex::new(BTreeMap::new()),
            bounds: RwLock::new((first, first)),
            queued: AtomicUsize::new(0),
        });
        let (next, last_log) = match present {
            // A log with a hole cannot be served (openraft relies on consecutive entries);
            // this store's writes never leave one (see `truncate` and `purge`).
            // After a purge the log goes on right after the purged id; before any, it may
            // start anywhere (openraft's starts at 0, a test's at 1).
            Some((count, low, high)) if count != high - low + 1 || (purged && low != first) => {
                return Err(io_err(StorageIOError::read_logs, &meta::hole(first)));
            }
            Some((_, _, high)) => match shared.read_one(high)? {
                Some(entry) => (high + 1, Some(RaftLogId::get_log_id(&entry).clone())),
                None => return Err(io_err(StorageIOError::read_logs, &meta::hole(high))),
            },
            None => (first, last_purged.clone()),
        };
        shared.set_bounds(first, next);
        let (flushes, receiver) = mpsc::channel();
        let for_thread = shared.clone();
        let completer = std::thread::Builder::new()
            .name("mergelog-raft".into())
            .spawn(move || complete_in_order(for_thread, receiver))
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        let mut store = LogStore {
            shared,
            vote,
            committed,
            committed_unsaved: false,
            append_waits: true,
            last_purged,
            last_log,
            generation: 0,
            retire_from: Seq::new(1),
            flushes: Some(flushes),
            completer: Some(completer),
        };
        store.finish_interrupted_purge()?;
        Ok(store)
    }

    /// Whether an `append` that no earlier append's callback is waiting behind waits for its
    /// own entries to be durable before it returns, calling its callback itself (default
    /// `true`), instead of handing them to the store's completion thread.
    ///
    /// openraft 0.9 awaits every append's callback right after `append` returns
    /// (`RaftCore::append_to_log`) and makes each client write an append of its own, so a
    /// node has one append in flight at a time whatever its clients do. Waiting in `append`
    /// then costs openraft nothing, and saves two hand-offs per entry: the engine writes and
    /// syncs the entries on the calling thread (a waiter writes its own window) and the
    /// callback is ready when openraft polls it, instead of the completion thread being
    /// woken for the tickets and then waking openraft's task. It blocks the calling task
    /// (an executor thread) for one sync, as a store that writes and syncs in `append`
    /// does. `false` keeps `append` non-blocking, as openraft's documentation asks, for a
    /// version that pipelines appends (0.10 is reported to); then the completion thread
    /// calls back. Measured in the README (mergelog-raft).
    pub fn with_append_waits(mut self, wait: bool) -> Self {
        self.append_waits = wait;
        self
    }

    /// Logs the committed id if the log does not hold it yet (it waits for the next append
    /// otherwise), closes the engine (which gives up the directory at once) and ends the
    /// store: for a store driven directly. Under openraft, which owns the store, its drop
    /// when the node stops logs the id (without waiting to submit it), and closing the
    /// engine after that (`engine().close()`, on a clone of the `Arc`) frees the directory;
    /// an id left out only means re-applying less at start-up.
    ///
    /// Under `Backpressure::Block` its put waits as any write does, for ring space or for a
    /// consumer lagging past `consumer_lag_max` (the store's drop does not: it gives up).
    pub fn close(mut self) -> StoreResult<(), C> {
        let saved = self.save_unsaved_committed(true);
        let closed = (self.shared.engine.close()).map_err(|e| io_err(StorageIOError::write, &e));
        saved.and(closed)
    }

    /// Puts the committed id the log does not hold yet, and waits for it. With `held` false
    /// the put is never held before it is submitted (a full ring, or a consumer lagging past
    /// `consumer_lag_max` under `Backpressure::Block`, which may never commit): it is not
    /// made then, and the log keeps the older id.
    fn save_unsaved_committed(&mut self, held: bool) -> StoreResult<(), C> {
        if !self.committed_unsaved {
            return Ok(());
        }
        let value = encode(&self.committed).map_err(|e| io_err(StorageIOError::write, &e))?;
        let engine = &self.shared.engine;
        let put = match held {
            true => engine.put(COMMITTED_KEY, &value),
            // One poll of the asynchronous put submits it, or finds it would wait.
            false => {
                let put = std::pin::pin!(engine.put_async(COMMITTED_KEY, &value));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match std::future::Future::poll(put, &mut cx) {
                    std::task::Poll::Ready(put) => put,
                    std::task::Poll::Pending => return Ok(()),
                }
            }
        };
        (put.and_then(|t| t.wait())).map_err(|e| io_err(StorageIOError::write, &e))?;
        self.committed_unsaved = false;
        Ok(())
    }

    /// The engine under the store (for its counters, or to close it after the Raft node
    /// stopped, which gives up the directory at once; see [`LogStore::close`] for the
    /// committed id).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// A purge writes the purged log id in its first batch and may need several: entries at
    /// or below it still present after a crash are deleted now.
    fn finish_interrupted_purge(&mut self) -> StoreResult<(), C> {
        let Some(purged) = self.last_purged.clone() else {
            return Ok(());
        };
        let leftover = meta::entries_below(&self.shared.engine, purged.index + 1);
        if leftover.is_empty() {
            return Ok(());
        }
        let tickets = self.delete_chunks(leftover.into_iter(), None)?;
        for ticket in tickets {
            ticket
                .wait()
                .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        }
        Ok(())
    }

    fn budget(&self) -> (usize, usize) {
        let config = self.shared.engine.config();
        // Half the largest request the engine takes (a batch is one request: at most
        // `batch_bytes_max`, and at most a quarter of the ring, `ring_bytes / 4`), leaving
        // room for the batch's framing. (It halved the ring whole until session 26: with
        // `batch_bytes_max` above half the ring, an append or a purge could make a batch the
        // engine refused, and openraft stops the node on a storage error.)
        let bytes = config.batch_bytes_max.min(config.ring_bytes / 4) / 2;
        (bytes, config.batch_ops_max.min(1 << 16))
    }

    /// Submits deletes of `indexes` in batches within the engine's limits, in the order
    /// given; `first_batch` (if any) is the start of the first one.
    fn delete_chunks(
        &self,
        indexes: impl Iterator<Item = u64>,
        first_batch: Option<WriteBatch>,
    ) -> StoreResult<Vec<Ticket>, C> {
        let (bytes_max, ops_max) = self.budget();
        let mut batch = first_batch.unwrap_or_default();
        let mut tickets = Vec::new();
        for index in indexes {
            if batch.len() >= ops_max || batch.len() * 32 >= bytes_max {
                tickets.push(self.submit(&batch)?);
                batch.clear();
            }
            batch.delete(&entry_key(index));
        }
        if !batch.is_empty() {
            tickets.push(self.submit(&batch)?);
        }
        Ok(tickets)
    }

    fn submit(&self, batch: &WriteBatch) -> StoreResult<Ticket, C> {
        self.shared
            .engine
            .write(batch)
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }

    /// Puts the entries as batches within the engine's limits: each batch is atomic and a
    /// prefix of what is left, so a crash leaves no hole.
    /// A committed id not yet in the log goes into the first batch (it covers entries of
    /// earlier batches only).
    fn put_entries(&mut self, entries: &[(u64, Vec<u8>)]) -> StoreResult<Vec<Ticket>, C> {
        let (bytes_max, ops_max) = self.budget();
        let mut batch = WriteBatch::new();
        let (mut bytes, mut tickets) = (0, Vec::new());
        if self.committed_unsaved {
            let value = encode(&self.committed).map_err(|e| io_err(StorageIOError::write, &e))?;
            bytes += value.len() + 32;
            batch.put(COMMITTED_KEY, &value);
        }
        for (index, value) in entries {
            let len = value.len() + 32;
            if !batch.is_empty() && (bytes + len > bytes_max || batch.len() >= ops_max) {
                tickets.push(self.submit(&batch)?);
                self.committed_unsaved = false;
                batch.clear();
                bytes = 0;
            }
            batch.put(&entry_key(*index), value);
            bytes += len;
        }
        tickets.push(self.submit(&batch)?);
        self.committed_unsaved = false;
        Ok(tickets)
    }

    /// Puts one meta key and waits until it is durable.
    async fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<Seq, mergelog::Error> {
        self.shared.engine.put(key, value)?.await
    }

    /// Removes the segments before the first batch holding a record of an entry after
    /// `upto` (and never past `meta_seq`, the batch that rewrote the meta keys): every live
    /// record is then in a kept segment.
    fn retire(&mut self, upto: u64, meta_seq: Seq) -> Result<(), mergelog::Error> {
        let engine = &self.shared.engine;
        let reader = engine.replay()?;
        let from = self.retire_from.max(reader.first_seq());
        let mut live = meta_seq;
        for batch in reader.batches_from(from) {
            if batch.seq() >= meta_seq {
                break;
            }
            if batch
                .records()
                .any(|r| entry_index(r.key).is_some_and(|i| i > upto))
            {
                live = batch.seq();
                break;
            }
        }
        drop(reader);
        self.retire_from = live;
        engine.retire_before(live)?;
        Ok(())
    }
}

impl<C: RaftTypeConfig> Drop for LogStore<C>
where
    C::Entry: Clone,
{
    fn drop(&mut self) {
        // The committed id the log does not hold yet: best effort (a failed or closed engine
        // keeps the older one, which only means re-applying less). Never held for ring space
        // or a lagging consumer: openraft drops the store when the node stops, and a drop
        // that waited for a consumer that never commits would hold the shutdown forever.
        let _ = self.save_unsaved_committed(false);
        // Closing the channel ends the completion thread once it has called back every
        // append (their tickets complete: the engine syncs or fails them).
        drop(self.flushes.take());
        if let Some(thread) = self.completer.take() {
            let _ = thread.join();
        }
    }
}

/// A storage I/O error from a mergelog (or decoding) error.
fn io_err<N: openraft::NodeId, E: std::error::Error + 'static>(
    kind: fn(AnyError) -> StorageIOError<N>,
    e: &E,
) -> StorageError<N> {
    kind(AnyError::new(e)).into()
}

/// A log reader: shares the store's engine and overlay; cheap to clone.
pub struct LogReader<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogReader<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<C::Entry>, C> {
        self.shared.read_range(range, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StoreResult<Vec<C::Entry>, C> {
        self.shared.read_range(start..end, READ_ENTRIES_MAX)
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<C::Entry>, C> {
        self.shared.read_range(range, usize::MAX)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> StoreResult<LogState<C>, C> {
        Ok(LogState {
            last_purged_log_id: self.last_purged.clone(),
            last_log_id: self.last_log.clone(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<Nid<C>>) -> StoreResult<(), C> {
        let value = encode(vote).map_err(|e| io_err(StorageIOError::write_vote, &e))?;
        // Durable before returning, as openraft requires; it is ordered after every
        // earlier append by the engine's single order.
        self.put_durable(VOTE_KEY, &value)
            .await
            .map_err(|e| io_err(StorageIOError::write_vote, &e))?;
        self.vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<Nid<C>>>, C> {
        Ok(self.vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId<Nid<C>>>) -> StoreResult<(), C> {
        // Kept until the next append, which logs it in its first batch (or a purge, with the
        // meta keys, or the store's drop): a committed id lost in a crash only means
        // re-applying less at start-up, and it goes after the appends of the entries it
        // covers. A put of its own would be a request of its own in every window beside
        // each append's, and the engine writes a lone waiter's window on the waiter's thread
        // only after a window of one request.
        self.committed = committed;
        self.committed_unsaved = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<Nid<C>>>, C> {
        Ok(self.committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StoreResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let (first, last_id) = (first.get_log_id().index, last.get_log_id().clone());
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let value = encode(entry).map_err(|e| io_err(StorageIOError::write_logs, &e))?;
            encoded.push((entry.get_log_id().index, value));
        }
        self.generation += 1;
        let generation = self.generation;
        // Readable before this returns, as openraft requires: the overlay serves them
        // until the completion thread knows them durable.
        self.shared.pending().extend(
            entries
                .into_iter()
                .map(|e| (e.get_log_id().index, (generation, e))),
        );
        let tickets = match self.put_entries(&encoded) {
            Ok(tickets) => tickets,
            Err(e) => {
                self.shared.forget_pending(first, last_id.index, generation);
                return Err(e);
            }
        };
        let (log_first, _) = self.shared.bounds();
        self.shared.set_bounds(log_first, last_id.index + 1);
        self.last_log = Some(last_id.clone());
        let flush = Flush {
            tickets,
            first,
            last: last_id.index,
            generation,
            callback,
        };
        // Nothing queued (the thread only ever decrements): no earlier callback is pending,
        // so calling this one now keeps them in order.
        if self.append_waits && self.shared.queued.load(Ordering::SeqCst) == 0 {
            flush.complete(&self.shared);
            return Ok(());
        }
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self.flushes.as_ref().map(|f| f.send(flush));
        if !matches!(sent, Some(Ok(()))) {
            let gone = io::Error::other("the completion thread is gone");
            return Err(io_err(StorageIOError::write_logs, &gone));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<Nid<C>>) -> StoreResult<(), C> {
        let (first, next) = self.shared.bounds();
        let from = log_id.index.max(first);
        if from >= next {
            return Ok(());
        }
        // The log is consecutive: with no entry before `from` it holds nothing below it
        // (it may start above `first` when nothing was purged yet).
        let before = match from > first {
            true => self.shared.read_one(from - 1)?,
            false => None,
        };
        let new_last = match before {
            Some(entry) => Some(entry.get_log_id().clone()),
            None => self.last_purged.clone(),
        };
        // Highest first, so that a crash between batches leaves a prefix (no hole).
        let tickets = self.delete_chunks((from..next).rev(), None)?;
        drop(self.shared.pending().split_off(&from));
        self.shared.set_bounds(first, from);
        self.last_log = new_last;
        for ticket in tickets {
            ticket
                .await
                .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<Nid<C>>) -> StoreResult<(), C> {
        let (first, next) = self.shared.bounds();
        let upto = log_id.index;
        if self.last_purged.as_ref().is_some_and(|p| p.index >= upto) {
            return Ok(());
        }
        // The first batch rewrites the meta keys (the purged id, so that a crash midway is
        // finished at reopen; the vote and committed ids, so that retiring the segments of
        // their older records forgets nothing).
        let codec = |e: meta::CodecError| io_err(StorageIOError::write_logs, &e);
        let mut batch = WriteBatch::new();
        batch.put(PURGED_KEY, &encode(&log_id).map_err(codec)?);
        if let Some(vote) = &self.vote {
            batch.put(VOTE_KEY, &encode(vote).map_err(codec)?);
        }
        if self.committed.is_some() {
            batch.put(COMMITTED_KEY, &encode(&self.committed).map_err(codec)?);
        }
        let tickets = self.delete_chunks(first..(upto + 1).min(next), Some(batch))?;
        self.committed_unsaved = false;
        {
            let mut pending = self.shared.pending();
            let kept = pending.split_off(&upto.saturating_add(1));
            *pending = kept;
        }
        self.shared.set_bounds(upto + 1, next.max(upto + 1));
        if self.last_log.as_ref().is_none_or(|l| l.index < upto) {
            self.last_log = Some(log_id.clone());
        }
        self.last_purged = Some(log_id);
        let mut meta_seq = Seq::new(0);
        for (i, ticket) in tickets.into_iter().enumerate() {
            let seq = ticket
                .await
                .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
            if i == 0 {
                meta_seq = seq;
            }
        }
        self.retire(upto, meta_seq)
            .map_err(|e| io_err(StorageIOError::write_logs, &e))
    }
}
