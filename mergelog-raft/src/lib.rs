//! # mergelog-raft
//!
//! An [openraft] log store ([`RaftLogStorage`] and its [`RaftLogReader`]) on a mergelog
//! [`Engine`]: a Raft node's log, vote and committed index live in one mergelog directory.
//!
//! ## A node on it
//!
//! Open the store on the node's directory ([`LogStore::open`], with a mergelog [`Config`]
//! that syncs: the default does) and hand it to `openraft::Raft::new` with your state
//! machine and network; a restart opens the same directory again. Here a one-node cluster
//! with the crate's test state machine ([`kv`]), restarted:
//!
//! ```
//! # use std::collections::BTreeMap;
//! # use std::sync::Arc;
//! # use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
//! # use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
//! # use openraft::raft::{
//! #     AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
//! #     InstallSnapshotResponse, VoteRequest, VoteResponse,
//! # };
//! # use openraft::BasicNode;
//! # type Rpc<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;
//! # fn no_peer<T, E: std::error::Error>() -> Rpc<T, E> {
//! #     let e = std::io::Error::other("a one-node cluster has no peers");
//! #     Err(RPCError::Unreachable(Unreachable::new(&e)))
//! # }
//! # /// The network of a one-node cluster: never called.
//! # struct NoPeers;
//! # impl RaftNetwork<TypeConfig> for NoPeers {
//! #     async fn append_entries(
//! #         &mut self, _: AppendEntriesRequest<TypeConfig>, _: RPCOption,
//! #     ) -> Rpc<AppendEntriesResponse<u64>> { no_peer() }
//! #     async fn install_snapshot(
//! #         &mut self, _: InstallSnapshotRequest<TypeConfig>, _: RPCOption,
//! #     ) -> Rpc<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> { no_peer() }
//! #     async fn vote(&mut self, _: VoteRequest<u64>, _: RPCOption) -> Rpc<VoteResponse<u64>> {
//! #         no_peer()
//! #     }
//! # }
//! # impl RaftNetworkFactory<TypeConfig> for NoPeers {
//! #     type Network = NoPeers;
//! #     async fn new_client(&mut self, _: u64, _: &BasicNode) -> NoPeers { NoPeers }
//! # }
//! use mergelog_raft::kv::{KvStateMachine, Request, TypeConfig};
//! use mergelog_raft::LogStore;
//! use openraft::storage::RaftLogStorage;
//! use openraft::Raft;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LogStore::<TypeConfig>::open(dir.path(), mergelog::Config::default())?;
//! // openraft owns the store from here: keep the engine to close it after a shutdown.
//! let engine = store.engine().clone();
//! let config = Arc::new(openraft::Config::default().validate()?);
//! let raft = Raft::new(1, config, NoPeers, store, KvStateMachine::new()).await?;
//! raft.initialize(BTreeMap::from([(1, BasicNode::default())])).await?;
//! raft.wait(None).current_leader(1, "elected").await?;
//! let written = raft
//!     .client_write(Request { key: "k".into(), value: b"v".to_vec() })
//!     .await?;
//! // Acknowledged: committed, so in the log of a majority (here, this node's), durably.
//! raft.shutdown().await?;
//! // The engine gives up the directory once closed (openraft has dropped the store).
//! engine.close()?;
//!
//! // The restart: the vote, the committed id and the log come back.
//! let mut store = LogStore::<TypeConfig>::open(dir.path(), mergelog::Config::default())?;
//! assert_eq!(store.get_log_state().await?.last_log_id, Some(written.log_id));
//! assert!(store.read_vote().await?.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! The store refuses a write its next open would refuse as damage ("Errors"), which no
//! openraft node makes: entries that do not go on from the log's end or its purged id,
//! entries of a term above the vote or below the entry before, a vote below the last log
//! id's term, a committed log id past the last log id or other than its entry's (at or below
//! the purged log id's index any is taken: no entry is left there), a truncate below the
//! committed log id, a purge to a term above the first entry it keeps or, past the log's
//! end, above the vote's. openraft's storage suite (`openraft::testing::Suite`) makes such writes in its
//! fixtures: `tests/suite.rs` runs it on a store built with the hidden
//! `LogStore::without_write_checks`, which takes them (and whose directory may then not
//! open again); never for a node.
//!
//! ## Durability and crashes
//!
//! - What openraft is told is durable is: `save_vote` returns once the vote is synced, and
//!   an append's callback (`LogFlushed`) is called once its entries are; `truncate` and
//!   `purge` return once their deletes are. The engine must sync (`Durability::Sync`, the
//!   default): [`LogStore::with_engine`] refuses one that does not.
//! - After a crash or a power loss the open gives back every acknowledged write. Of an append
//!   not yet called back it keeps a prefix or nothing (its batches are atomic and in order),
//!   never a hole; a truncate cut short leaves a shorter suffix deleted (it deletes highest
//!   first); a purge cut short is finished by the open (it logs the purged id first). The
//!   committed id is logged with the next append (or purge, [`LogStore::close`], or the
//!   store's drop), so it may come back older than the last `save_committed`: openraft then
//!   re-applies fewer entries at start-up, and the leader commits the rest again.
//! - `tests/crash.rs` cuts the power under the store at random points and checks all of
//!   this.
//!
//! ## Space
//!
//! The log holds every entry since the last purge. openraft purges it after a snapshot
//! (its `Config::snapshot_policy`, keeping `max_in_snapshot_log_to_keep` entries, in steps
//! of `purge_batch_size`); each purge deletes the entries and retires the engine's whole
//! segments (`Config::segment_bytes` each) before the first that still holds a live
//! entry, so the directory shrinks a segment at a time. Under `SnapshotPolicy::Never`
//! nothing is purged and the directory grows with the log. The engine's other limits
//! bound only a batch (see [`LogStore::chunk_len`]): entries of any size are taken.
//!
//! ## Errors
//!
//! Every error is openraft's `StorageError`, whose source (shown by its `Display`) is the
//! cause:
//!
//! - At open: `mergelog::Error::InvalidConfig` for an engine that does not sync or whose
//!   `key_len_max` or `value_len_max` is too small; the engine's own open errors (the
//!   directory held by another engine, `Error::Locked`; bytes on disk that are not a log,
//!   `Error::Corrupt`, naming the file and offset); and the store's own, each starting
//!   `mergelog-raft:`, for records that decode but are not a Raft log's ("does not decode",
//!   "the log has a hole", "the log is damaged: ..."). These mean the directory is damaged,
//!   and the store opens nothing rather than let openraft trust it. Replace the node:
//!   remove it from the membership, then add a node with an empty directory, which gets a
//!   snapshot and the log from the leader. Never restart a node under its old id on an
//!   emptied directory or an older copy of it (a backup): it would have forgotten votes it
//!   gave and entries the cluster counted as committed on it, and could vote twice in a
//!   term.
//! - While running: a read error naming an entry that does not read back (a damaged
//!   record), and write errors from the engine (a failed sync makes every later write fail,
//!   `Error::Failed`, until a reopen; so does an append, truncate or purge stopped part way,
//!   "the store must be reopened"). openraft stops the node on any storage error; restart
//!   it (a new open) once the cause is dealt with.
//! - A write that the next open would refuse ("mergelog-raft: append refused (nothing
//!   written): entry T2-N1-5 does not go on from the log's end: ...", "... vote refused
//!   ...", "... committed log id refused (nothing written): the committed log id T2-N1-5 is
//!   past the last log id T2-N1-3; ...", "... truncate refused ...", "... purge refused
//!   ..."), before anything of it is written: a caller driving the store by hand wrote what
//!   no Raft node writes. The store goes on; nothing was acknowledged.
//!
//! ## How it stores the log
//!
//! - Entry `i` is the key `e` + `i` as 8 big-endian bytes, so a frame's sorted records are
//!   runs of consecutive entries; its value is the entry, postcard-encoded.
//! - An entry of any size is stored (openraft stops the node on a storage error, and every
//!   follower appends what the leader did, so one refused entry would stop the cluster). One
//!   whose encoding is longer than [`LogStore::chunk_len`] (`value_len_max`, or less to fit
//!   the batch budget) is stored in chunks under the keys `c` + `i` + the chunk number (4
//!   bytes big-endian), chunk 0 starting with the encoding's length, the number of chunks
//!   and its CRC-32C; its key `e` + `i` then holds an empty value. The chunks go in the
//!   key's batch or earlier ones, so after a crash the key is there only with every chunk;
//!   a read reassembles and checks the entry; `truncate` and `purge` delete the chunks, and
//!   an open deletes chunks of no entry that an interrupted operation left. Such an entry is
//!   encoded twice, once for its length and CRC and once straight into its chunks, so an
//!   append holds the entry and a chunk and a batch at a time, never its whole encoding.
//! - A range read that truncates or purges restarted 4 times holds them off for the rest of
//!   the read (they wait for it): endless truncates cannot starve it.
//! - The vote, the committed log id and the last purged log id are keys of their own
//!   (`m/vote`, `m/committed`, `m/purged`).
//! - `append` puts the entries as one `WriteBatch` (several, each a prefix of what is left,
//!   if they exceed the store's batch budget, half the engine's largest request). By default it waits for them and calls
//!   openraft's callback itself (openraft 0.9 awaits it at once: see
//!   [`LogStore::with_append_waits`]); otherwise, or behind an earlier append still pending,
//!   it returns and one store-owned thread waits the tickets in order and calls back when
//!   they are durable. The entries are readable at once from an in-memory overlay until
//!   then.
//! - `save_committed` keeps the id for the next append's first batch (or a purge's,
//!   [`LogStore::close`], or the store's drop, which does not wait to submit it): no request
//!   of its own.
//! - `truncate` deletes the conflicting suffix (its first batch logs a committed id the
//!   log does not hold yet, so that the one it holds is never past the cut); `purge` deletes the prefix and then retires
//!   the engine's whole segments before it (`Engine::retire_before`), after rewriting the
//!   meta keys so that retiring never forgets them.
//! - Under `Backpressure::Reject` a write the engine refuses for a full ring or for a
//!   consumer lagging past `consumer_lag_max` waits (for room, or for the consumer's commits:
//!   `Engine::wait_unthrottled_async`) and is submitted again, as under `Block`: openraft
//!   stops the node on any storage error.
//! - The store's async methods never block the thread on a wait another task may have to
//!   end: every submit (the engine's `write_async`, `put_async`), every wait for room or for
//!   the throttle and every wait for an earlier batch is awaited, so a consumer whose commits
//!   let a throttled write through may run on the same executor thread (`tests/one_thread.rs`
//!   runs them on a `current_thread` runtime). An entry stored in chunks is encoded into its
//!   chunks synchronously: a batch of chunks that would wait stops the encoding at that
//!   chunk, the submit is awaited, and the encoding goes on from the chunk. What still
//!   blocks: with [`LogStore::with_append_waits`] (the default) an append's wait for its own
//!   entries' sync (the engine's threads or the calling thread complete it, never a task),
//!   a purge's `Engine::replay` and `retire_before` (file I/O), and the synchronous
//!   [`LogStore::open`] and [`LogStore::close`]. The open's clean-up (the deletes of what
//!   an interrupted operation left) never waits for a consumer lagging past
//!   `consumer_lag_max`, which may be the caller's own, started once the store has opened:
//!   what it would delete is left for a later open. The completion thread is the store's
//!   own.
//!   A write whose future is dropped before it completes may have submitted part of its
//!   batches (a prefix, as a crash keeps) that the store's memory (its bounds, last log id,
//!   overlay) never took: an `append`, `truncate` or `purge` that stops so (dropped, or
//!   failed, after submitting a batch) makes every later call of the store and its readers
//!   fail ("mergelog-raft: the store must be reopened: an earlier append stopped part way
//!   ..."), so that nothing is written over, or read from, a log it no longer describes;
//!   the reopen reads the log as a crash there leaves it (`tests/dropped_writes.rs`). A
//!   dropped `save_vote` leaves the vote's put to land or not, which changes nothing the
//!   store serves.
//! - Reopening the directory gives back the vote, the committed and purged log ids and the
//!   entries. The open reads every entry once and refuses a log with a hole (one that does
//!   not start at entry 0, or right after the purged log id), one whose terms (leader ids) go
//!   down along it or below the purged log id's, a committed log id past the last log id or
//!   other than the entry's at its index, and a vote of a term below the last log id's (no
//!   vote counts as term 0): damage that decodes, which openraft would trust at start-up.
//! - An operation of many batches waits for its oldest before it submits more than
//!   `UNWAITED_MAX` (1,024), so that the engine still tells each ticket's batch.
//!
//! [`kv`] holds a small in-memory key-value state machine and a type config for tests,
//! the cluster test and the bench.

#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]
// openraft's `StorageError` is what its traits return; the helpers return it too rather than
// convert at every call.
#![allow(clippy::result_large_err)]

pub mod kv;
mod meta;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use mergelog::{Config, Engine, Seq, Ticket, WriteBatch};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};

use crate::meta::{
    chunk_key, decode, encode, entry_key, ChunkHeader, CodecError, Measured, CHUNK_HEADER,
    CHUNK_KEY_LEN, COMMITTED_KEY, PURGED_KEY, VOTE_KEY,
};

type Nid<C> = <C as RaftTypeConfig>::NodeId;
type StoreResult<T, C> = Result<T, StorageError<Nid<C>>>;

/// At most this many entries are returned by one `limited_get_log_entries`: replication of
/// a long backlog then goes in pieces instead of one huge message.
const READ_ENTRIES_MAX: usize = 4096;

/// One `limited_get_log_entries` stops once the entries it read (encoded, as stored) reach
/// this many bytes, whatever their number (at least one entry is returned): entries of any
/// size are stored in chunks, and 4,096 of them could otherwise be read into memory at once
/// (`LogStore::set_read_bytes_max` changes it, for tests).
const READ_BYTES_MAX: usize = 64 << 20;

/// A read restarted this many times by a moving epoch (truncates or purges that began while
/// it read) holds them off for the rest of its read ([`Restarts`]): endless truncates
/// cannot starve it.
const RESTARTS_MAX: u32 = 4;

/// What the read hook is called with, as its chunk number, when a reader begins to hold
/// truncates and purges off ([`LogStore::set_read_hook`]).
const HOLDS_DELETES_OFF: u32 = u32::MAX;

/// Bytes a batch operation is counted for besides its value: its header in the batch (9
/// bytes) and its key (at most 13, a chunk's), rounded up.
const OP_BYTES: usize = 32;
const _: () = assert!(OP_BYTES >= 9 + CHUNK_KEY_LEN);

/// A store operation split into batches (`Batches`) leaves at most this many of its
/// batches' tickets unwaited: submitting one more first waits for the oldest. The engine
/// tells a ticket's batch only within 65,536 windows of its completion (after that a wait
/// gets `Error::SeqUnknown`), and the store owns the engine's writes, so a ticket waited
/// within this many of the store's own later batches is always told its batch: a purge
/// needs its first batch's (`LogStore::retire`). It bounds the tickets held, too: a truncate
/// or purge of millions of entries held one per batch, and waited for the first only after
/// submitting them all (more than 65,536 batches, and the wait failed: session 40).
const UNWAITED_MAX: usize = 1024;
const _: () = assert!(UNWAITED_MAX < 1 << 16);

/// The shortest chunk a store accepts to write (`value_len_max` at least this): chunk 0
/// must hold the chunk header and some of the entry.
const CHUNK_LEN_MIN: usize = 64;

/// The store's batch budget under `config`: bytes (values plus `OP_BYTES` per operation) and
/// operations per batch. Half the largest request the engine takes (a batch is one request:
/// at most `batch_bytes_max`, and at most a quarter of the ring, `ring_bytes / 4`), leaving
/// room for the batch's framing. (It halved the ring whole until session 26: with
/// `batch_bytes_max` above half the ring, an append or a purge could make a batch the engine
/// refused, and openraft stops the node on a storage error.)
fn budget(config: &Config) -> (usize, usize) {
    let bytes = config.batch_bytes_max.min(config.ring_bytes / 4) / 2;
    (bytes, config.batch_ops_max.min(1 << 16))
}

/// The longest value the store puts under `config`: an encoded entry up to this long is its
/// key's value, a longer one is stored in chunks of at most this many bytes. Within
/// `value_len_max`, and one chunk with its operation's bytes fits the batch budget, so every
/// batch is one the engine takes whatever the entries' sizes.
fn chunk_len(config: &Config) -> usize {
    let (bytes, _) = budget(config);
    config.value_len_max.min(bytes - OP_BYTES)
}

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
    /// Bumped by `truncate` and `purge` before they submit their deletes: a reader that
    /// finds an entry stored in chunks incomplete while it moved read a deleted entry (and
    /// maybe chunks of one written again at its index), not a damaged one, and reads again.
    /// Deletes submitted before the reader took it may land while it reads, too: it reads
    /// once more under the same epoch before it calls the entry damaged (see `read_one`).
    /// Bumped again once their deletes landed (or they gave up: [`Deleting`]), so that a
    /// range read (`read_range`) whose epoch stayed put saw at most deletes land, never
    /// the entries a later append wrote in their place.
    epoch: AtomicU64,
    /// Every bump of `epoch` is made under its write lock; a read that the epoch restarted
    /// [`RESTARTS_MAX`] times takes its read lock for the rest of the read ([`Restarts`]), so
    /// that a truncate or purge that would move the epoch waits for it (for one read), and
    /// the read then goes on under an epoch that stays put.
    deletes: RwLock<()>,
    /// A test's hook, called before an entry's key and each chunk after the first are read
    /// ([`LogStore::set_read_hook`]).
    read_hook: OnceLock<ReadHook>,
    /// A test's hook, called by `truncate` and `purge` after the epoch's first bump, before
    /// their deletes are submitted ([`LogStore::set_delete_hook`]).
    delete_hook: OnceLock<DeleteHook>,
    /// [`READ_BYTES_MAX`], or a test's bound ([`LogStore::set_read_bytes_max`]).
    read_bytes_max: AtomicUsize,
    /// Set (to its name) by an `append`, `truncate` or `purge` that submitted some of its
    /// batches and then stopped, its future dropped or failed, before the store's memory (the
    /// bounds, the last log id, the overlay) took them: the log may then hold part of it that
    /// the store does not know of. Every later call fails until a reopen (`Shared::usable`).
    torn: OnceLock<&'static str>,
}

/// See [`LogStore::set_read_hook`].
type ReadHook = Box<dyn Fn(u64, u32) + Send + Sync>;

/// See [`LogStore::set_delete_hook`].
type DeleteHook = Box<dyn Fn(u64) + Send + Sync>;

impl<C: RaftTypeConfig> Shared<C>
where
    C::Entry: Clone,
{
    fn pending(&self) -> MutexGuard<'_, BTreeMap<u64, (u64, C::Entry)>> {
        // A panic elsewhere while holding it leaves a map that is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An error once a write stopped part way ([`Shared::torn`]): `kind` the call's.
    fn usable(&self, kind: fn(AnyError) -> StorageIOError<Nid<C>>) -> StoreResult<(), C> {
        match self.torn.get() {
            Some(what) => Err(io_err(kind, &CodecError::Torn(what))),
            None => Ok(()),
        }
    }

    fn bounds(&self) -> (u64, u64) {
        *self.bounds.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_bounds(&self, first: u64, next: u64) {
        *self.bounds.write().unwrap_or_else(PoisonError::into_inner) = (first, next);
    }

    /// Entry `index`: the overlay first (newer), then the engine's durable state.
    fn read_one(&self, index: u64) -> StoreResult<Option<C::Entry>, C> {
        let mut restarts = Restarts::new(&self.deletes);
        Ok(self
            .read_one_sized(index, &mut restarts)?
            .map(|(entry, _)| entry))
    }

    /// As [`Shared::read_one`], with the bytes read for it: its encoding's length as stored
    /// (0 for an entry of the overlay, already in memory). A restart for a moving epoch
    /// counts in `restarts`, the read's.
    fn read_one_sized<'s>(
        &'s self,
        index: u64,
        restarts: &mut Restarts<'s>,
    ) -> StoreResult<Option<(C::Entry, usize)>, C> {
        let read_err = |e: &CodecError| StorageIOError::read_log_at_index(index, AnyError::new(e));
        // The epoch under which the entry failed to reassemble once already.
        let mut failed_under = None;
        loop {
            if let Some(hook) = self.read_hook.get() {
                hook(index, 0);
            }
            // Before anything of the entry is read (see `epoch`).
            let epoch = self.epoch.load(Ordering::SeqCst);
            if let Some((_, entry)) = self.pending().get(&index) {
                return Ok(Some((entry.clone(), 0)));
            }
            // A miss in the overlay means the append completed, and a completed ticket's
            // records are visible to `read` (the engine applies queued index updates first).
            let value = match self.engine.read(&entry_key(index)) {
                Ok(Some(value)) => value,
                Ok(None) => return Ok(None),
                Err(e) => return Err(read_err(&CodecError::Engine(e)).into()),
            };
            // The empty value marks an entry stored in chunks.
            let decoded = match value.is_empty() {
                false => decode::<C::Entry>(&value).map(|e| (e, value.len())),
                true => match self.read_chunks(index) {
                    Ok(encoded) => decode::<C::Entry>(&encoded).map(|e| (e, encoded.len())),
                    // A truncate or purge began since the epoch was taken: read again. Or
                    // one submitted before it had its deletes land while the chunks were
                    // read: an entry's key is deleted in the batch of its chunks or an
                    // earlier one, batches land in order, and a lookup sees whole batches
                    // (the index applies them under its lock), so a chunk found gone by a
                    // delete means the key is gone too, and a second read finds no entry.
                    // Only a failure read twice under one epoch is damage.
                    Err(e) => {
                        let moved = self.epoch.load(Ordering::SeqCst) != epoch;
                        if moved || failed_under != Some(epoch) {
                            if moved {
                                restarts.restart(self, index);
                            }
                            failed_under = Some(epoch);
                            continue;
                        }
                        Err(e)
                    }
                },
            };
            // An entry is stored under its own index: one of another index (damage that
            // still decodes) would be served out of order, which openraft takes on trust.
            let decoded = decoded.and_then(|(entry, len)| match entry.get_log_id().index {
                found if found == index => Ok((entry, len)),
                found => Err(CodecError::Misplaced(index, found)),
            });
            return decoded.map(Some).map_err(|e| read_err(&e).into());
        }
    }

    /// The encoded entry `index`, stored in chunks: reassembled, its length and CRC checked.
    fn read_chunks(&self, index: u64) -> Result<Vec<u8>, CodecError> {
        let damaged = |what: String| CodecError::Chunk(index, what);
        let read = |n: u32| match self.engine.read(&chunk_key(index, n)) {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => Err(damaged(format!("chunk {n} is missing"))),
            Err(e) => Err(CodecError::Engine(e)),
        };
        let chunk0 = read(0)?;
        let header = ChunkHeader::parse(&chunk0)
            .ok_or_else(|| damaged(format!("chunk 0 is {} bytes, no header", chunk0.len())))?;
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        // Grown as the chunks come, never past what they hold: a damaged header's length is
        // not trusted with memory (it reserved up to 64 MiB before any chunk was read, for a
        // chunk 0 of a few bytes). A sound entry ends with exactly its length reserved.
        let mut encoded = chunk0[CHUNK_HEADER..].to_vec();
        drop(chunk0);
        let mut n = 1;
        while n < header.count && encoded.len() <= len {
            if let Some(hook) = self.read_hook.get() {
                hook(index, n);
            }
            let chunk = read(n)?;
            reserve_for(&mut encoded, chunk.len(), len);
            encoded.extend_from_slice(&chunk);
            n += 1;
        }
        if encoded.len() != len {
            return Err(damaged(format!(
                "its header says {len} bytes in {} chunks, chunks 0 to {} hold {}",
                header.count,
                n - 1,
                encoded.len()
            )));
        }
        let crc = crc32c::crc32c(&encoded);
        if crc != header.crc {
            return Err(damaged(format!(
                "its CRC-32C is {crc:#010x}, its header says {:#010x}",
                header.crc
            )));
        }
        Ok(encoded)
    }

    /// The entries of `range` the log holds, at most `max` of them, and none more once those
    /// read reach `bytes_max` bytes (encoded, as stored; at least one is returned).
    fn read_range(
        &self,
        range: impl RangeBounds<u64>,
        max: usize,
        bytes_max: usize,
    ) -> StoreResult<Vec<C::Entry>, C> {
        self.usable(StorageIOError::read_logs)?;
        let mut restarts = Restarts::new(&self.deletes);
        // Before the bounds (see `epoch`).
        let mut epoch = self.epoch.load(Ordering::SeqCst);
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
        // Consecutive entries of one log: openraft's replication sends what this returns as
        // the entries after `prev_log_id`.
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let (mut index, end) = (start.max(first), end.min(next));
        while index < end && out.len() < max && bytes < bytes_max {
            let entry = self.read_one_sized(index, &mut restarts)?;
            if self.epoch.load(Ordering::SeqCst) != epoch {
                // A truncate or purge moved the log while this read: the entries from here on
                // may be another log's (a new leader's, where a truncate deleted). The ones
                // read before are returned; with none read yet, this one is read again,
                // holding truncates and purges off after a few restarts (the epoch is taken
                // once the hold is: it stays put from then on). The bounds taken first still
                // hold: entries past them are not read, and the ones the read finds within
                // them under one epoch are one log's.
                if !out.is_empty() {
                    break;
                }
                restarts.restart(self, index);
                epoch = self.epoch.load(Ordering::SeqCst);
                continue;
            }
            match entry {
                Some((entry, len)) => {
                    out.push(entry);
                    bytes = bytes.saturating_add(len);
                }
                // Truncated or purged meanwhile (openraft allows it). Missing after entries
                // found, it ends the read: never a gap.
                None if !out.is_empty() => break,
                None => {}
            }
            index += 1;
        }
        Ok(out)
    }

    /// Refuses a log whose entries' leader ids (their terms) go down with increasing index,
    /// from one entry to the next or from the purged log id `purged` to the first, or whose
    /// entry at the index of the `committed` log id has another log id (a committed entry is
    /// never truncated): damage that decodes (a Raft log's never do), which openraft takes
    /// on trust (it finds where the terms change by a binary search of the log ids at
    /// start-up). Reads every entry of `indexes` once, one at a time. An entry that does not
    /// read is skipped: a read of it is the error, as before (the open reads only the last
    /// entry for the rest).
    fn check_ids(
        &self,
        indexes: std::ops::RangeInclusive<u64>,
        purged: Option<&LogId<Nid<C>>>,
        committed: Option<&LogId<Nid<C>>>,
    ) -> StoreResult<(), C> {
        // The log id before, and its entry's index (`None`: the purged log id).
        let mut before = purged.map(|p| (p.clone(), None));
        for index in indexes {
            let Ok(Some(entry)) = self.read_one(index) else {
                continue;
            };
            let id = entry.get_log_id();
            if let Some(c) = committed.filter(|c| c.index == index && *c != id) {
                let what = format!("not that of entry {index}, {id}");
                let e = CodecError::Committed(c.to_string(), what);
                return Err(io_err(StorageIOError::read, &e));
            }
            if let Some((b, at)) = &before {
                if id.leader_id < b.leader_id {
                    let what = match at {
                        Some(at) => format!("entry {at} before it ({b})"),
                        None => format!("the purged log id {b}"),
                    };
                    let e = CodecError::TermDown(index, id.to_string(), what);
                    let e = StorageIOError::read_log_at_index(index, AnyError::new(&e));
                    return Err(e.into());
                }
            }
            before = Some((id.clone(), Some(index)));
        }
        Ok(())
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

/// Makes room in `encoded` for `more` bytes of an entry whose header says `len`: doubling
/// what it holds (so the copies stay linear in the entry's size), but never past the header's
/// length, nor, for a length the chunks do not reach, past twice what they hold.
fn reserve_for(encoded: &mut Vec<u8>, more: usize, len: usize) {
    let need = encoded.len().saturating_add(more);
    if need > encoded.capacity() {
        let want = need.max(encoded.len().saturating_mul(2).min(len));
        encoded.reserve_exact(want - encoded.len());
    }
}

/// A read's restarts for a moving epoch, and its hold on truncates and purges
/// (`Shared::deletes`), taken at the [`RESTARTS_MAX`]th: a read that has read nothing yet
/// restarts at every truncate or purge that begins while it reads, and without the hold a
/// truncate at each attempt (a deposed leader's log truncated again and again while its
/// replication reads) would keep it from ever returning. Held until the read returns.
struct Restarts<'s> {
    deletes: &'s RwLock<()>,
    count: u32,
    held: Option<RwLockReadGuard<'s, ()>>,
}

impl<'s> Restarts<'s> {
    fn new(deletes: &'s RwLock<()>) -> Self {
        Restarts {
            deletes,
            count: 0,
            held: None,
        }
    }

    /// Counts a restart at entry `index`; the [`RESTARTS_MAX`]th takes the hold (and tells
    /// the test's hook). The hold waits, at most, for a truncate's or purge's bump of the
    /// epoch, which holds no other lock; a reader holds nothing the truncate waits for
    /// besides it, so the two never wait on each other.
    fn restart<C: RaftTypeConfig>(&mut self, shared: &Shared<C>, index: u64) {
        self.count += 1;
        if self.count >= RESTARTS_MAX && self.held.is_none() {
            self.held = Some(self.deletes.read().unwrap_or_else(PoisonError::into_inner));
            if let Some(hook) = shared.read_hook.get() {
                hook(index, HOLDS_DELETES_OFF);
            }
        }
    }
}

/// A truncate's or purge's hold on the epoch: bumped when it begins, before its deletes are
/// submitted, and again when it ends, after they landed (or when it failed or was dropped).
/// `truncate` and `purge` take `&mut` the store, so the appends that write over what they
/// deleted come after the second bump. Each bump is made under `Shared::deletes`, so it
/// waits for a reader holding truncates off ([`Restarts`]), which reads only, for one read.
struct Deleting<'a> {
    epoch: &'a AtomicU64,
    deletes: &'a RwLock<()>,
}

impl<'a> Deleting<'a> {
    fn begin(epoch: &'a AtomicU64, deletes: &'a RwLock<()>) -> Self {
        let deleting = Deleting { epoch, deletes };
        deleting.bump();
        deleting
    }

    fn bump(&self) {
        let _held = self.deletes.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.bump();
    }
}

/// One append's completion, for the completion thread.
struct Flush<C: RaftTypeConfig> {
    /// In submission order (those the append did not wait for itself); they complete in
    /// order, so the last one's outcome is theirs too, but each is checked.
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
        let outcome = (self.tickets.iter()).try_for_each(|t| durable(t.wait()).map(drop));
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

/// Writes split into batches within the store's budget, each submitted once the next
/// operation would not fit it: the batches hold the operations in the order given, each is
/// atomic, and they complete in order, so a crash keeps a prefix of the operations.
struct Batches<'a> {
    engine: &'a Engine,
    bytes_max: usize,
    ops_max: usize,
    batch: WriteBatch,
    /// What `batch` counts for against `bytes_max`.
    bytes: usize,
    /// The submitted batches' tickets not yet waited for, in order: at most
    /// [`UNWAITED_MAX`].
    unwaited: VecDeque<Ticket>,
    /// Batches submitted.
    submitted: usize,
    /// The first batch's sequence number once its ticket was waited for here (`None`
    /// inside if the engine no longer told it: see [`durable`]).
    first_seq: Option<Option<Seq>>,
    /// A store operation's: the store's mark and the operation's name, set at the drop if
    /// it submitted batches and did not submit them all (`finish`): dropped part way, or
    /// failed ([`Shared::torn`]).
    tears: Option<(&'a OnceLock<&'static str>, &'static str)>,
    /// Every batch submitted (`finish`).
    finished: bool,
    /// A submit the throttle on consumer lag holds or refuses fails with `Error::Throttled`
    /// instead of waiting (the open's clean-up).
    gives_up: bool,
}

impl Drop for Batches<'_> {
    fn drop(&mut self) {
        if let Some((torn, what)) = self.tears.filter(|_| self.submitted > 0 && !self.finished) {
            let _ = torn.set(what);
        }
    }
}

/// What a [`Batches`] submitted: the tickets it did not wait for, in order, and the first
/// batch's number if it waited for that one.
struct Submitted {
    tickets: Vec<Ticket>,
    first_seq: Option<Option<Seq>>,
}

impl Submitted {
    /// Awaits every ticket; the first batch's number, `None` if nothing was submitted or the
    /// engine no longer knew it.
    async fn wait(self) -> Result<Option<Seq>, mergelog::Error> {
        let mut first = self.first_seq.flatten();
        for (i, ticket) in self.tickets.into_iter().enumerate() {
            let seq = durable(ticket.await)?;
            if i == 0 && self.first_seq.is_none() {
                first = seq;
            }
        }
        Ok(first)
    }
}

/// A ticket's outcome, its batch's number if the engine still tells it. `Error::SeqUnknown`
/// says the request is durable and only its batch forgotten (the ticket was looked at more
/// than 65,536 windows after it completed): a success for every wait of the store's, none of
/// which needs the number but a purge's, which then retires nothing (`LogStore::purge`).
fn durable(outcome: Result<Seq, mergelog::Error>) -> Result<Option<Seq>, mergelog::Error> {
    match outcome {
        Ok(seq) => Ok(Some(seq)),
        Err(mergelog::Error::SeqUnknown { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `future` on the calling thread, parking it while the future waits: for the store's
/// synchronous calls (its open's clean-up), which block the thread as documented. Never
/// called from the store's async methods.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => return out,
            // A wake-up before the park leaves its token: the park returns at once.
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

impl<'a> Batches<'a> {
    fn new(engine: &'a Engine) -> Self {
        let (bytes_max, ops_max) = budget(engine.config());
        Batches {
            engine,
            bytes_max,
            ops_max,
            batch: WriteBatch::new(),
            bytes: 0,
            unwaited: VecDeque::new(),
            submitted: 0,
            first_seq: None,
            tears: None,
            finished: false,
            gives_up: false,
        }
    }

    /// Batches whose submit fails with `Error::Throttled` where the throttle on consumer lag
    /// would hold it (`Block`) or refuses it (`Reject`), rather than wait.
    fn giving_up_when_throttled(mut self) -> Self {
        self.gives_up = true;
        self
    }

    /// Submits the batch as `Engine::write_async` does, or, giving up, fails with
    /// `Error::Throttled` once that is held by the throttle: the engine counts a submission
    /// it throttles (`Counts::throttled`) before it waits, so a first `Pending` with the
    /// count moved is the throttle's (or another writer's, at worst giving up for nothing),
    /// and one without is a wait for ring room, which the engine's threads end.
    async fn write(&self) -> Result<Ticket, mergelog::Error> {
        if !self.gives_up {
            return self.engine.write_async(&self.batch).await;
        }
        let throttled = self.engine.counts().throttled;
        let mut write = std::pin::pin!(self.engine.write_async(&self.batch));
        std::future::poll_fn(|cx| match std::future::Future::poll(write.as_mut(), cx) {
            std::task::Poll::Pending if self.engine.counts().throttled != throttled => {
                std::task::Poll::Ready(Err(mergelog::Error::Throttled {
                    consumer: String::new(),
                    lag: mergelog::ConsumerLag::default(),
                }))
            }
            polled => polled,
        })
        .await
    }

    /// The batches of the store operation `what`: if they stop part way, `torn` says so.
    fn of_store(mut self, torn: &'a OnceLock<&'static str>, what: &'static str) -> Self {
        self.tears = Some((torn, what));
        self
    }

    /// Whether an operation counted `len` does not fit the batch (a batch's first operation
    /// always does: none is larger than the budget), which must then be submitted first.
    fn full_for(&self, len: usize) -> bool {
        !self.batch.is_empty()
            && (self.bytes + len > self.bytes_max || self.batch.len() >= self.ops_max)
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), mergelog::Error> {
        if self.full_for(value.len() + OP_BYTES) {
            self.submit().await?;
        }
        self.bytes += value.len() + OP_BYTES;
        self.batch.put(key, value);
        Ok(())
    }

    async fn delete(&mut self, key: &[u8]) -> Result<(), mergelog::Error> {
        if self.full_for(OP_BYTES) {
            self.submit().await?;
        }
        self.bytes += OP_BYTES;
        self.batch.delete(key);
        Ok(())
    }

    /// As [`Batches::put`] without waiting, for a caller that cannot await (an entry's
    /// chunks, put from inside its encoding): `false` if the batch had to be submitted first
    /// and that would wait (nothing was submitted, nothing put); the caller then awaits
    /// [`Batches::submit`] and puts again.
    fn try_put(&mut self, key: &[u8], value: &[u8]) -> Result<bool, mergelog::Error> {
        if self.full_for(value.len() + OP_BYTES) {
            // One poll: the submit is made or found to wait. A `Pending` submit has submitted
            // nothing (it waits before the engine takes the batch: for the oldest ticket, for
            // room or for the throttle), and dropping it leaves the batch and the tickets as
            // they were (`wait_oldest` forgets a ticket only once it completed).
            let submit = std::pin::pin!(self.submit());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::future::Future::poll(submit, &mut cx) {
                std::task::Poll::Ready(submitted) => submitted?,
                std::task::Poll::Pending => return Ok(false),
            }
        }
        self.bytes += value.len() + OP_BYTES;
        self.batch.put(key, value);
        Ok(true)
    }

    /// Submits the batch, if it holds anything. Never blocks the thread: where the engine
    /// would make it wait (for room or a throttle under `Backpressure::Block`), or refuses it
    /// under `Reject`, this waits as a future, so that whatever lets it through (a
    /// consumer's commits) may run on the same thread.
    async fn submit(&mut self) -> Result<(), mergelog::Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.unwaited.len() >= UNWAITED_MAX {
            self.wait_oldest().await?;
        }
        loop {
            match self.write().await {
                Ok(ticket) => {
                    self.submitted += 1;
                    break self.unwaited.push_back(ticket);
                }
                // A full ring under `Backpressure::Reject`: an append of more than the ring
                // holds (a large entry's chunks) would be refused part way, and openraft
                // stops the node on the error. The batches submitted before this one free
                // their room once written: wait for the oldest (or, with none left, for
                // everything submitted so far) and submit again.
                Err(mergelog::Error::Busy) => match self.unwaited.is_empty() {
                    false => self.wait_oldest().await?,
                    true => drop(durable(self.engine.flush()?.await)?),
                },
                // A consumer lagging past `consumer_lag_max` under `Reject`: nothing the store
                // waits for frees that; wait until the consumer's commits let go of the
                // throttle (as `Block` would) and submit again.
                Err(mergelog::Error::Throttled { .. }) if !self.gives_up => {
                    self.engine.wait_unthrottled_async().await
                }
                Err(e) => return Err(e),
            }
        }
        self.batch.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Waits for the oldest unwaited ticket (there is one), keeping the first batch's number.
    /// The ticket stays queued until it completed: a wait given up on (dropped) forgets
    /// nothing.
    async fn wait_oldest(&mut self) -> Result<(), mergelog::Error> {
        let Some(ticket) = self.unwaited.front_mut() else {
            return Ok(());
        };
        let seq = durable(ticket.await)?;
        self.unwaited.pop_front();
        if self.submitted - self.unwaited.len() == 1 {
            self.first_seq = Some(seq);
        }
        Ok(())
    }

    /// Submits what is left; the tickets not waited for, in order.
    async fn finish(mut self) -> Result<Submitted, mergelog::Error> {
        self.submit().await?;
        self.finished = true;
        Ok(Submitted {
            tickets: std::mem::take(&mut self.unwaited).into(),
            first_seq: self.first_seq,
        })
    }
}

/// Puts `key`, waiting (blocking the thread) where `Backpressure::Reject` refuses it for a
/// full ring (`Error::Busy`: for everything submitted before it) or for a consumer lagging
/// past `consumer_lag_max` (`Error::Throttled`: for the consumer's commits), as `Block` would,
/// and submitting it again. For [`LogStore::close`] only, a synchronous call that blocks.
fn put_waiting(engine: &Engine, key: &[u8], value: &[u8]) -> Result<Ticket, mergelog::Error> {
    loop {
        match engine.put(key, value) {
            Err(mergelog::Error::Busy) => drop(durable(engine.flush()?.wait())?),
            Err(mergelog::Error::Throttled { .. }) => engine.wait_unthrottled(),
            put => return put,
        }
    }
}

/// Puts entry `index`, `entry`, whose encoding `measured` found. Up to `chunk_len` bytes the
/// encoding is its key's value; longer, the entry is encoded again straight into its chunks
/// (never whole in memory) and then its key gets the empty value that marks it chunked:
/// every chunk goes in the key's batch or an earlier one, so after a crash the key is there
/// only with all its chunks (chunks without their key are deleted at open). Recorded in
/// `chunked`, for a truncate or purge to delete its chunks. A batch of chunks that would
/// wait to be submitted stops the encoding (which cannot await) at that chunk: the submit
/// is awaited, and the encoding goes on from the chunk (`meta::put_chunks`).
async fn put_entry<T: serde::Serialize>(
    out: &mut Batches<'_>,
    chunked: &mut BTreeMap<u64, u32>,
    chunk_len: usize,
    index: u64,
    entry: &T,
    measured: Measured,
) -> Result<(), CodecError> {
    let (len, crc) = match measured {
        Measured::Whole(encoded) => {
            return (out.put(&entry_key(index), &encoded).await).map_err(CodecError::Engine);
        }
        Measured::Chunked { len, crc } => (len, crc),
    };
    let count = meta::chunk_count(len, chunk_len).ok_or(CodecError::TooLarge(len))?;
    chunked.insert(index, count);
    let mut from = meta::ChunksFrom::default();
    loop {
        let put = |n: u32, chunk: &[u8]| out.try_put(&chunk_key(index, n), chunk);
        match meta::put_chunks(entry, index, (len, crc), chunk_len, from, put)? {
            Some(at) => {
                out.submit().await.map_err(CodecError::Engine)?;
                from = at;
            }
            None => break,
        }
    }
    (out.put(&entry_key(index), &[]).await).map_err(CodecError::Engine)
}

/// Puts `puts` (small: the meta keys a purge rewrites, the committed id a truncate logs), then
/// deletes the entries `indexes`, in the order given, each with its chunks (`chunked`), as
/// batches of `out`: what `truncate` (highest first) and `purge` (lowest first) submit. Stops
/// at the first error; what it submitted, once every batch is.
async fn delete_entries(
    mut out: Batches<'_>,
    puts: &[(&[u8], Vec<u8>)],
    indexes: impl Iterator<Item = u64>,
    chunked: &BTreeMap<u64, u32>,
) -> Result<Submitted, mergelog::Error> {
    for (key, value) in puts {
        out.put(key, value).await?;
    }
    for index in indexes {
        delete_entry(&mut out, index, chunked.get(&index).copied()).await?;
    }
    out.finish().await
}

/// Deletes entry `index`: its key, then its `chunks` (if stored in chunks), so that a crash
/// between them leaves chunks without a key (deleted at open), never a key without chunks.
async fn delete_entry(
    out: &mut Batches<'_>,
    index: u64,
    chunks: Option<u32>,
) -> Result<(), mergelog::Error> {
    out.delete(&entry_key(index)).await?;
    for n in 0..chunks.unwrap_or(0) {
        out.delete(&chunk_key(index, n)).await?;
    }
    Ok(())
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
    /// `append`, `save_vote`, `save_committed`, `truncate` and `purge` refuse what the next open
    /// would refuse (default; off only for openraft's storage suite: [`LogStore::without_write_checks`]).
    checks_writes: bool,
    last_purged: Option<LogId<Nid<C>>>,
    last_log: Option<LogId<Nid<C>>>,
    /// Counts appends, to tell an append's overlay entries from a later one's.
    generation: u64,
    /// The first batch that may hold a live entry's record: the scan for what to retire
    /// starts there (everything before it was found to hold only purged entries).
    retire_from: Seq,
    /// The entries the log holds in chunks, with their number of chunks: what `truncate`
    /// and `purge` delete besides the entries' keys (found at open, kept by `append`).
    chunked: BTreeMap<u64, u32>,
    /// The longest value the store puts ([`LogStore::chunk_len`]).
    chunk_len: usize,
    flushes: Option<mpsc::Sender<Flush<C>>>,
    completer: Option<JoinHandle<()>>,
}

impl<C: RaftTypeConfig> LogStore<C>
where
    C::Entry: Clone,
{
    /// Opens (or creates) the store in `dir` with the engine configuration `config`, which
    /// must sync (`Durability::Sync`, as `Config::default()` does): the vote, committed and
    /// last purged log ids and the entries come back from it. Its engine holds the directory
    /// (its lock file) until it is closed: by [`LogStore::close`] or, once openraft owns the
    /// store, by `close` on a clone of [`LogStore::engine`] taken before (the last
    /// reference's drop frees it too, but a log reader openraft still holds keeps one).
    ///
    /// # Errors
    ///
    /// A `StorageError` (a read error) wrapping the engine's error when the engine does not open
    /// (see `mergelog::Engine::open`), or when the store's state read back from the log does
    /// not decode or is not a Raft log's (a hole, the front of a log with no purged log id
    /// missing, terms that go down, a committed id past the log or not its entry's, a vote of
    /// a term below the last log id's); and as [`LogStore::with_engine`]'s.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> StoreResult<Self, C> {
        let engine = Engine::open(dir, config).map_err(|e| io_err(StorageIOError::read, &e))?;
        Self::with_engine(Arc::new(engine))
    }

    /// The store on an engine already open, which it then owns the writes of. The engine
    /// must sync (`Durability::Sync`, the default): Raft needs a vote and an acknowledged
    /// entry to be durable, and under `NoSync` a ticket completes before its batch is, so a
    /// power loss could undo a vote (a second vote in the same term). Refused otherwise, and
    /// refused with `key_len_max` under 13 or `value_len_max` under 64, too small for the
    /// chunks a large entry is stored in.
    ///
    /// # Errors
    ///
    /// A `StorageError` wrapping `mergelog::Error::InvalidConfig` for an engine that does not
    /// sync or whose limits are too small (above), or one wrapping the error of reading the
    /// store's state back from the log (as [`LogStore::open`]'s).
    pub fn with_engine(engine: Arc<Engine>) -> StoreResult<Self, C> {
        if engine.config().durability != mergelog::Durability::Sync {
            let e = mergelog::Error::InvalidConfig(
                "a Raft log store needs durability = Sync: votes and appended entries must be \
                 durable when their tickets complete"
                    .into(),
            );
            return Err(io_err(StorageIOError::read, &e));
        }
        // Chunk keys and chunks must be keys and values the engine takes: refused at open
        // rather than when the first large entry comes, which would stop the node.
        let chunk_len = chunk_len(engine.config());
        if engine.config().key_len_max < CHUNK_KEY_LEN || chunk_len < CHUNK_LEN_MIN {
            let e = mergelog::Error::InvalidConfig(format!(
                "a Raft log store needs key_len_max >= {CHUNK_KEY_LEN} and value_len_max >= \
                 {CHUNK_LEN_MIN}: it stores a large entry in chunks under keys of \
                 {CHUNK_KEY_LEN} bytes (key_len_max = {}, value_len_max = {})",
                engine.config().key_len_max,
                engine.config().value_len_max
            ));
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
        // A purged id or an entry at the last index leaves no index for the log to go on at
        // (openraft never gets there: only damage that decodes says so).
        let bounds = |what| io_err(StorageIOError::read_logs, &CodecError::Bounds(what));
        let first = match &last_purged {
            Some(p) => (p.index.checked_add(1))
                .ok_or_else(|| bounds("the purged log id is at the last index"))?,
            None => 0,
        };
        let purged = last_purged.is_some();
        let present = meta::entries_from(&engine, first)
            .map_err(|e| io_err(StorageIOError::read_logs, &e))?;
        let shared = Arc::new(Shared {
            engine,
            pending: Mutex::new(BTreeMap::new()),
            bounds: RwLock::new((first, first)),
            queued: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            deletes: RwLock::new(()),
            read_hook: OnceLock::new(),
            delete_hook: OnceLock::new(),
            read_bytes_max: AtomicUsize::new(READ_BYTES_MAX),
            torn: OnceLock::new(),
        });
        let (next, last_log) = match present {
            // A log with a hole cannot be served (openraft relies on consecutive entries);
            // this store's writes never leave one (see `truncate` and `purge`).
            // After a purge the log goes on right after the purged id; before any, at 0
            // (openraft's first entry, `initialize`'s, is at 0, and a follower takes entries
            // after its last or after the snapshot it purges the log to): only a purge,
            // which logs the purged id in its first batch, removes the log's front.
            // (`count` is at least 1; `high - low + 1` overflows for the whole index range.)
            Some((count, low, high)) if high - low != count - 1 || (purged && low != first) => {
                return Err(io_err(StorageIOError::read_logs, &meta::hole(first)));
            }
            Some((_, low, _)) if low != first => {
                return Err(io_err(StorageIOError::read_logs, &CodecError::Front(low)));
            }
            Some((_, _, high)) => match shared.read_one(high)? {
                Some(entry) => (
                    (high.checked_add(1)).ok_or_else(|| bounds("an entry at the last index"))?,
                    Some(RaftLogId::get_log_id(&entry).clone()),
                ),
                None => return Err(io_err(StorageIOError::read_logs, &meta::hole(high))),
            },
            None => (first, last_purged.clone()),
        };
        shared.set_bounds(first, next);
        // The committed id is never past the log's end (an entry's append is durable before
        // openraft saves an id that covers it, and this store logs the id after): damage
        // that decodes otherwise, which openraft's start-up would try to re-apply entries up
        // to. (It may be below the purged id: a purge logs the id openraft last saved.)
        if let Some(c) = &committed {
            if last_log.as_ref().is_none_or(|l| c.index > l.index) {
                let what = match &last_log {
                    Some(l) => format!("past the last log id {l}"),
                    None => "past the end of an empty log".into(),
                };
                let e = CodecError::Committed(c.to_string(), what);
                return Err(io_err(StorageIOError::read, &e));
            }
        }
        if let Some((_, low, high)) = present {
            shared.check_ids(low..=high, last_purged.as_ref(), committed.as_ref())?;
        }
        // A node saves a leader's vote (durably: `save_vote`) before it takes the leader's
        // entries, or a snapshot the log is purged to, and its vote never goes down, so the
        // vote's term is never below the last log id's (the log's highest: terms never go
        // down along it). No vote is openraft's vote of term 0 (`Raft::initialize`'s entry,
        // at 0, is of term 0). Damage otherwise, which openraft's start-up would trust.
        let vote_term = vote
            .as_ref()
            .map_or(0, |v: &Vote<Nid<C>>| v.leader_id().term);
        if let Some(last) = last_log.as_ref().filter(|l| l.leader_id.term > vote_term) {
            let vote = match &vote {
                Some(v) => format!("the vote {v}"),
                None => "no vote (term 0)".into(),
            };
            let e = CodecError::VoteBelow(vote, last.to_string());
            return Err(io_err(StorageIOError::read_vote, &e));
        }
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
            checks_writes: true,
            last_purged,
            last_log,
            generation: 0,
            retire_from: Seq::new(1),
            chunked: BTreeMap::new(),
            chunk_len,
            flushes: Some(flushes),
            completer: Some(completer),
        };
        store.clean_up()?;
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
    /// does: a wait that only the engine's threads (or this thread) end, never another
    /// task; its submits, which a lagging consumer's commits may have to let through, are
    /// awaited. `false` keeps `append` non-blocking, as openraft's documentation asks, for a
    /// version that pipelines appends (0.10 is reported to); then the completion thread
    /// calls back. Measured in the README (mergelog-raft).
    pub fn with_append_waits(mut self, wait: bool) -> Self {
        self.append_waits = wait;
        self
    }

    /// For openraft's storage suite (`openraft::testing::Suite`) only: the store then takes
    /// the writes its checks refuse (see [`LogStore::append`]'s refusals in the crate docs,
    /// "Errors"), as the suite's fixtures make them (entries after a hole, entries of terms
    /// above the vote, a log starting above 0 with no purged log id) and never reopens the
    /// store. A directory so written may not open again. Never for a node.
    #[doc(hidden)]
    pub fn without_write_checks(mut self) -> Self {
        self.checks_writes = false;
        self
    }

    /// Refuses an append the next open would refuse: entries that do not go on, one by one,
    /// from the log's end (entry 0 of a log with no purged log id, or the one after the
    /// purged log id or the last entry), whose terms (leader ids) go down along the log, or
    /// of a term above the vote's (no vote is term 0). openraft never appends such entries
    /// (it truncates a conflicting suffix before it appends, and saves a leader's vote
    /// before it takes the leader's entries). Refused before anything is submitted.
    fn check_append(&self, entries: &[C::Entry]) -> StoreResult<(), C> {
        let (_, next) = self.shared.bounds();
        let vote_term = self.vote.as_ref().map_or(0, |v| v.leader_id().term);
        let mut before = self.last_log.clone();
        for (k, entry) in entries.iter().enumerate() {
            let id = entry.get_log_id();
            // `None` past the last index, where no log goes on.
            let expected = next.checked_add(k as u64);
            let refused = if id.index == u64::MAX {
                Some(format!(
                    "entry {id} is at the last index (u64::MAX), where no log can go on"
                ))
            } else if Some(id.index) != expected {
                let end = match (k, &self.last_log) {
                    (0, Some(last)) => {
                        format!("the log's next index is {next} (its last log id is {last})")
                    }
                    (0, None) => {
                        format!("the log is empty, with no purged log id: its next index is {next}")
                    }
                    _ => format!(
                        "it is not the one after the append's entry {}, before it",
                        (before.as_ref()).map_or_else(String::new, |b| b.to_string())
                    ),
                };
                Some(format!(
                    "entry {id} does not go on from the log's end: {end}"
                ))
            } else if let Some(b) = before.as_ref().filter(|b| id.leader_id < b.leader_id) {
                Some(format!(
                    "entry {id} has a term (leader id) below that of {b}, before it: terms never go \
                     down along a Raft log"
                ))
            } else if id.leader_id.term > vote_term {
                let vote = match &self.vote {
                    Some(v) => format!("the vote {v}"),
                    None => "no vote (term 0)".into(),
                };
                Some(format!(
                    "entry {id} is of a term above that of {vote}: a node saves a leader's vote \
                     before it takes the leader's entries"
                ))
            } else {
                None
            };
            if let Some(what) = refused {
                let e = CodecError::Refused("append", what);
                return Err(io_err(StorageIOError::write_logs, &e));
            }
            before = Some(id.clone());
        }
        Ok(())
    }

    /// Refuses a committed log id the next open would refuse once it is logged: one past the
    /// last log id (the last entry's, or the purged log id with no entry; any on an empty log
    /// with no purged log id), or one whose index holds an entry of another log id. At or
    /// below the purged log id's index it is taken whatever its term: no entry is left there
    /// to compare it with, and the open compares none. openraft saves only the id of an
    /// entry it appended (or of the snapshot the log was purged to).
    fn check_committed(&self, committed: Option<&LogId<Nid<C>>>) -> StoreResult<(), C> {
        let Some(c) = committed else {
            return Ok(());
        };
        let refused = match &self.last_log {
            None => Some("past the end of an empty log".to_string()),
            Some(l) if c.index > l.index => Some(format!("past the last log id {l}")),
            // Already checked (the open's, or this call's), or the last entry's: no read.
            Some(l) if l == c || self.committed.as_ref() == Some(c) => None,
            Some(_) if c.index < self.shared.bounds().0 => None,
            // An entry that does not read is a read error of its own, and the open passes
            // over it too.
            Some(_) => match self.shared.read_one(c.index) {
                Ok(Some(entry)) if entry.get_log_id() != c => Some(format!(
                    "not that of entry {}, {}",
                    c.index,
                    entry.get_log_id()
                )),
                _ => None,
            },
        };
        match refused {
            Some(what) => {
                let e = CodecError::Refused(
                    "committed log id",
                    format!("the committed log id {c} is {what}"),
                );
                Err(io_err(StorageIOError::write, &e))
            }
            None => Ok(()),
        }
    }

    /// Refuses a purge the next open would refuse: to the last index (no log goes on after
    /// it), to a log id of a term (leader id) above that of the first entry kept (terms never
    /// go down along the log, from the purged log id on), or past the log's end, where the
    /// purged log id becomes the last log id, to a term above the vote's. openraft purges to
    /// log ids of its log or of a snapshot taken from a leader whose vote it saved.
    fn check_purge(&self, purged: &LogId<Nid<C>>) -> StoreResult<(), C> {
        let (_, next) = self.shared.bounds();
        let refused = match purged.index.checked_add(1) {
            None => Some(format!(
                "the purged log id {purged} is at the last index (u64::MAX), where no log can go on"
            )),
            // An entry kept: the first one. (One that does not read is passed over, as the
            // open does.)
            Some(kept) if kept < next => match self.shared.read_one(kept) {
                Ok(Some(entry)) if entry.get_log_id().leader_id < purged.leader_id => {
                    Some(format!(
                        "the purged log id {purged} is of a term (leader id) above that of entry \
                         {kept} after it, {}: terms never go down along a Raft log",
                        entry.get_log_id()
                    ))
                }
                _ => None,
            },
            Some(_) => {
                let vote_term = self.vote.as_ref().map_or(0, |v| v.leader_id().term);
                (purged.leader_id.term > vote_term).then(|| {
                    let vote = match &self.vote {
                        Some(v) => format!("the vote {v}"),
                        None => "no vote (term 0)".into(),
                    };
                    format!(
                        "the purged log id {purged}, then the last log id, is of a term above \
                         that of {vote}: a node saves a leader's vote before it takes the \
                         leader's snapshot"
                    )
                })
            }
        };
        match refused {
            Some(what) => {
                let e = CodecError::Refused("purge", what);
                Err(io_err(StorageIOError::write_logs, &e))
            }
            None => Ok(()),
        }
    }

    /// Logs the committed id if the log does not hold it yet (it waits for the next append
    /// otherwise), closes the engine (which gives up the directory at once) and ends the
    /// store: for a store driven directly. Under openraft, which owns the store, its drop
    /// when the node stops logs the id (without waiting to submit it), and closing the
    /// engine after that (`engine().close()`, on a clone of the `Arc`) frees the directory;
    /// an id left out only means re-applying less at start-up.
    ///
    /// Its put waits for ring space or for a consumer lagging past `consumer_lag_max`, under
    /// `Backpressure::Reject` too, as every write of the store does (the store's drop does
    /// not: it gives up).
    ///
    /// # Errors
    ///
    /// A `StorageError` (a write error) wrapping the error of logging the committed id or of
    /// closing the engine (`mergelog::Engine::close`), or, after an `append`, `truncate` or
    /// `purge` stopped part way, the store's "the store must be reopened" (its committed id
    /// is then not logged: nothing is written over a log the store no longer describes). The
    /// engine is closed either way.
    pub fn close(mut self) -> StoreResult<(), C> {
        let usable = self.shared.usable(StorageIOError::write);
        let saved = self.save_unsaved_committed(true);
        let closed = (self.shared.engine.close()).map_err(|e| io_err(StorageIOError::write, &e));
        usable.and(saved).and(closed)
    }

    /// Puts the committed id the log does not hold yet, and waits for it. With `held` false
    /// the put is never held before it is submitted (a full ring, or a consumer lagging past
    /// `consumer_lag_max` under `Backpressure::Block`, which may never commit): it is not
    /// made then, and the log keeps the older id.
    fn save_unsaved_committed(&mut self, held: bool) -> StoreResult<(), C> {
        // Nothing written over a log the store no longer describes (`Shared::torn`).
        if !self.committed_unsaved || self.shared.torn.get().is_some() {
            return Ok(());
        }
        let value = encode(&self.committed).map_err(|e| io_err(StorageIOError::write, &e))?;
        let engine = &self.shared.engine;
        let put = match held {
            true => put_waiting(engine, COMMITTED_KEY, &value),
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
        (put.and_then(|t| durable(t.wait()))).map_err(|e| io_err(StorageIOError::write, &e))?;
        self.committed_unsaved = false;
        Ok(())
    }

    /// For tests: the bytes after which one `limited_get_log_entries` stops reading entries
    /// (64 MiB by default; at least one entry is returned).
    #[doc(hidden)]
    pub fn set_read_bytes_max(&self, bytes: usize) {
        self.shared.read_bytes_max.store(bytes, Ordering::Relaxed);
    }

    /// For tests: `hook(index, 0)` is called before entry `index` is read (the overlay, then
    /// its key in the engine), and `hook(index, n)` before chunk `n` (1 or more) of an entry
    /// stored in chunks is, by this store and its readers, so that a test can hold a reader
    /// between two entries or two chunk reads while it truncates, purges or appends.
    /// `hook(index, u32::MAX)` is called when a reader, restarted again and again by
    /// truncates and purges, begins to hold them off for the rest of its read (a truncate
    /// or purge then waits for it). Set once; later calls change nothing.
    #[doc(hidden)]
    pub fn set_read_hook(&self, hook: impl Fn(u64, u32) + Send + Sync + 'static) {
        let _ = self.shared.read_hook.set(Box::new(hook));
    }

    /// For tests: `hook(from)` is called by `truncate` (`from` the first index it deletes)
    /// and `purge` (`from` the first index after those it deletes) once they have bumped
    /// the store's epoch and before they submit their deletes or change the log's bounds,
    /// so that a test can start a reader in that window. Set once; later calls change
    /// nothing.
    #[doc(hidden)]
    pub fn set_delete_hook(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.shared.delete_hook.set(Box::new(hook));
    }

    /// The engine under the store (for its counters, or to close it after the Raft node
    /// stopped, which gives up the directory at once; see [`LogStore::close`] for the
    /// committed id).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// The longest encoded entry the store puts as one value (its key's, as entries always
    /// were), and the length of the chunks a longer one is stored in: `value_len_max`, or
    /// less when one chunk would not fit the store's batch budget (half of
    /// `min(batch_bytes_max, ring_bytes / 4)`).
    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    /// Deletes what an interrupted operation left that the log does not hold, and finds the
    /// entries stored in chunks: entries at or below the purged id (a purge writes the
    /// purged log id in its first batch and may need several), and chunks of no entry of
    /// the log (an append cut before the key of an entry stored in chunks, a truncate or a
    /// purge cut between an entry's key and its chunks), so that they never accumulate.
    fn clean_up(&mut self) -> StoreResult<(), C> {
        let (first, next) = self.shared.bounds();
        let engine = &self.shared.engine;
        let leftover = match self.last_purged {
            Some(_) => meta::entries_below(engine, first),
            None => Vec::new(),
        };
        let (marked, chunks) = meta::chunk_keys(engine);
        let mut chunked = BTreeMap::new();
        let mut stray = Vec::new();
        for (index, numbers) in chunks {
            // A chunk is live if its entry is in the log and marked as stored in chunks, and
            // it is one of the run 0, 1, 2, ... its entry was written as (`truncate` and
            // `purge` delete that run). Any other is deleted by its own key: never every
            // number below a damaged one.
            let live = (first..next).contains(&index) && marked.contains(&index);
            let run = match live {
                true => numbers
                    .iter()
                    .zip(0u32..)
                    .take_while(|(n, i)| **n == *i)
                    .count(),
                false => 0,
            };
            if run > 0 {
                // At most `numbers.len()`, a count of keys the engine holds: a u32.
                chunked.insert(index, run as u32);
            }
            stray.extend(numbers[run..].iter().map(|n| chunk_key(index, *n)));
        }
        self.chunked = chunked;
        // What a cut operation left is never served (the bounds and the chunk counts above
        // leave it out), so its deletes are never held for a consumer lagging past
        // `consumer_lag_max`: this is a synchronous call, and that consumer may be the
        // caller's own, started once the store has opened, which then never would be. They
        // stop there, and the rest is left for a later open. (Otherwise it blocks the
        // thread, as the open's reads do: for room in the ring, which the engine frees.)
        let mut out = Batches::new(engine).giving_up_when_throttled();
        let deleted = block_on(async {
            for index in leftover {
                out.delete(&entry_key(index)).await?;
            }
            for key in &stray {
                out.delete(key).await?;
            }
            out.finish().await?.wait().await
        });
        match deleted {
            Ok(_) | Err(mergelog::Error::Throttled { .. }) => Ok(()),
            Err(e) => Err(io_err(StorageIOError::write_logs, &e)),
        }
    }

    /// Puts the entries, whose encodings `measured` found (in order), as batches within the
    /// engine's limits: each batch is atomic and a prefix of what is left, so a crash leaves
    /// no hole. Each encoding kept whole is dropped once in its batch, and one stored in
    /// chunks is made again chunk by chunk, so besides the entries this holds the encodings
    /// of the small ones and a batch (within the budget) and a chunk at a time.
    /// A committed id not yet in the log goes into the first batch (it covers entries of
    /// earlier batches only).
    async fn put_entries(
        &mut self,
        entries: &[C::Entry],
        measured: Vec<Measured>,
    ) -> StoreResult<Vec<Ticket>, C> {
        let mut out = Batches::new(&self.shared.engine).of_store(&self.shared.torn, "append");
        if self.committed_unsaved {
            let value = encode(&self.committed).map_err(|e| io_err(StorageIOError::write, &e))?;
            // The batch's first operation: it is never submitted here.
            (out.put(COMMITTED_KEY, &value).await)
                .map_err(|e| io_err(StorageIOError::write, &e))?;
        }
        let (chunked, chunk_len) = (&mut self.chunked, self.chunk_len);
        let mut put = Ok(());
        for (entry, measured) in entries.iter().zip(measured) {
            let index = entry.get_log_id().index;
            put = put_entry(&mut out, chunked, chunk_len, index, entry, measured).await;
            if put.is_err() {
                break;
            }
        }
        let submitted = match put {
            Ok(()) => out.finish().await.map_err(CodecError::Engine),
            Err(e) => Err(e),
        }
        .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        self.committed_unsaved = false;
        Ok(submitted.tickets)
    }

    /// Puts one meta key and waits until it is durable.
    async fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<(), mergelog::Error> {
        let engine = &self.shared.engine;
        loop {
            match engine.put_async(key, value).await {
                Ok(ticket) => return durable(ticket.await).map(drop),
                // A full ring under `Backpressure::Reject`: what was submitted before frees
                // its room once written, so wait for that and submit again. An error here
                // (a vote's) would stop the node, as a refused append did (`Batches::submit`).
                Err(mergelog::Error::Busy) => drop(durable(engine.flush()?.await)?),
                // A consumer lagging past `consumer_lag_max` under `Reject`: wait until its
                // commits let go of the throttle, then submit again.
                Err(mergelog::Error::Throttled { .. }) => engine.wait_unthrottled_async().await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the segments before the first batch holding a record of an entry after
    /// `upto`, its key or one of its chunks (and never past `meta_seq`, the batch that rewrote the meta keys): every live
    /// record is then in a kept segment.
    fn retire(&mut self, upto: u64, meta_seq: Seq) -> Result<(), mergelog::Error> {
        let engine = &self.shared.engine;
        let reader = engine.replay()?;
        let from = self.retire_from.max(reader.first_seq());
        let mut live = meta_seq;
        for batch in reader.batches_from(from)? {
            if batch.seq() >= meta_seq {
                break;
            }
            // An entry's chunks are records of it: they may go before its key's batch.
            if batch
                .records()
                .any(|r| meta::record_index(r.key).is_some_and(|i| i > upto))
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
        self.shared.read_range(range, usize::MAX, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StoreResult<Vec<C::Entry>, C> {
        let bytes_max = self.shared.read_bytes_max.load(Ordering::Relaxed);
        self.shared
            .read_range(start..end, READ_ENTRIES_MAX, bytes_max)
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
        self.shared.read_range(range, usize::MAX, usize::MAX)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> StoreResult<LogState<C>, C> {
        self.shared.usable(StorageIOError::read_logs)?;
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
        self.shared.usable(StorageIOError::write_vote)?;
        // The next open refuses a vote of a term below the last log id's: openraft never
        // saves one (a vote never goes down, and the entries a node took are of terms up to
        // its vote's).
        if let Some(last) = (self.last_log.as_ref())
            .filter(|l| self.checks_writes && l.leader_id.term > vote.leader_id().term)
        {
            let what = format!(
                "the vote {vote} is of a term below that of the last log id {last}: a node saves \
                 a leader's vote before it takes the leader's entries, and its vote never goes down"
            );
            let e = CodecError::Refused("vote", what);
            return Err(io_err(StorageIOError::write_vote, &e));
        }
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
        self.shared.usable(StorageIOError::read_vote)?;
        Ok(self.vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId<Nid<C>>>) -> StoreResult<(), C> {
        self.shared.usable(StorageIOError::write)?;
        // Kept until the next append, which logs it in its first batch (or a purge, with the
        // meta keys, or the store's drop): a committed id lost in a crash only means
        // re-applying less at start-up, and it goes after the appends of the entries it
        // covers. A put of its own would be a request of its own in every window beside
        // each append's, and the engine writes a lone waiter's window on the waiter's thread
        // only after a window of one request.
        if self.checks_writes {
            self.check_committed(committed.as_ref())?;
        }
        self.committed = committed;
        self.committed_unsaved = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<Nid<C>>>, C> {
        self.shared.usable(StorageIOError::read)?;
        Ok(self.committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StoreResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.shared.usable(StorageIOError::write_logs)?;
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        if self.checks_writes {
            self.check_append(&entries)?;
        }
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let (first, last_id) = (first.get_log_id().index, last.get_log_id().clone());
        // Every entry encoded once before anything is submitted (an entry that does not
        // encode fails the append whole), keeping only the encodings that fit one value: a
        // larger entry is encoded again into its chunks as they are put (`put_entry`).
        let measured = (entries.iter())
            .map(|entry| meta::measure(entry, self.chunk_len))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        let tickets = self.put_entries(&entries, measured).await?;
        self.generation += 1;
        let generation = self.generation;
        // Readable before this returns, as openraft requires: the overlay serves them
        // until the completion thread knows them durable. (Not before they were put: until
        // the new bounds below no reader reads them, so the overlay is not needed yet.)
        self.shared.pending().extend(
            entries
                .into_iter()
                .map(|e| (e.get_log_id().index, (generation, e))),
        );
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
        self.shared.usable(StorageIOError::write_logs)?;
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
        // The next open refuses a committed log id past the last log id: openraft never
        // truncates a committed entry.
        if let Some(c) = (self.committed.as_ref()).filter(|c| self.checks_writes && c.index >= from)
        {
            let last = match &new_last {
                Some(l) => format!("the last log id would be {l}"),
                None => "the log would be empty".into(),
            };
            let what = format!(
                "it would delete entry {}, which the committed log id {c} covers: {last}",
                c.index
            );
            let e = CodecError::Refused("truncate", what);
            return Err(io_err(StorageIOError::write_logs, &e));
        }
        // Before the deletes: a reader that finds a chunk of these entries gone reads again.
        // Held until they landed (the end of this call).
        let shared = self.shared.clone();
        let _deleting = Deleting::begin(&shared.epoch, &shared.deletes);
        if let Some(hook) = shared.delete_hook.get() {
            hook(from);
        }
        // A committed id the log does not hold yet goes first: the one it holds may be
        // past the cut (a caller may save a lower one; openraft never does), and after a
        // crash that kept any of the deletes the log then holds this one.
        let mut puts = Vec::new();
        if self.committed_unsaved {
            let value = encode(&self.committed).map_err(|e| io_err(StorageIOError::write, &e))?;
            puts.push((COMMITTED_KEY, value));
        }
        let out = Batches::new(&self.shared.engine).of_store(&self.shared.torn, "truncate");
        // Highest first, so that a crash between batches leaves a prefix (no hole).
        let submitted = delete_entries(out, &puts, (from..next).rev(), &self.chunked)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        drop(self.chunked.split_off(&from));
        self.committed_unsaved = false;
        drop(self.shared.pending().split_off(&from));
        self.shared.set_bounds(first, from);
        self.last_log = new_last;
        (submitted.wait().await).map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<Nid<C>>) -> StoreResult<(), C> {
        self.shared.usable(StorageIOError::write_logs)?;
        let (first, next) = self.shared.bounds();
        let upto = log_id.index;
        if self.last_purged.as_ref().is_some_and(|p| p.index >= upto) {
            return Ok(());
        }
        if self.checks_writes {
            self.check_purge(&log_id)?;
        }
        // The first batch rewrites the meta keys (the purged id, so that a crash midway is
        // finished at reopen; the vote and committed ids, so that retiring the segments of
        // their older records forgets nothing).
        let codec = |e: CodecError| io_err(StorageIOError::write_logs, &e);
        let mut meta = vec![(PURGED_KEY, encode(&log_id).map_err(codec)?)];
        if let Some(vote) = &self.vote {
            meta.push((VOTE_KEY, encode(vote).map_err(codec)?));
        }
        // A `None` the log does not hold yet, too (saved after an id: openraft never does).
        if self.committed.is_some() || self.committed_unsaved {
            meta.push((COMMITTED_KEY, encode(&self.committed).map_err(codec)?));
        }
        // Before the deletes: a reader that finds a chunk of these entries gone reads again.
        // Held until they landed (the end of this call).
        let shared = self.shared.clone();
        let _deleting = Deleting::begin(&shared.epoch, &shared.deletes);
        if let Some(hook) = shared.delete_hook.get() {
            hook(upto.saturating_add(1));
        }
        let out = Batches::new(&self.shared.engine).of_store(&self.shared.torn, "purge");
        let deleted = first..upto.saturating_add(1).min(next);
        let submitted = delete_entries(out, &meta, deleted, &self.chunked)
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        self.chunked = self.chunked.split_off(&upto.saturating_add(1));
        self.committed_unsaved = false;
        {
            let mut pending = self.shared.pending();
            let kept = pending.split_off(&upto.saturating_add(1));
            *pending = kept;
        }
        self.shared.set_bounds(upto + 1, next.max(upto + 1));
        // With no entry left the purged log id is the last log id, as the next open finds
        // it (openraft's purged id is its entry's when the log reaches it).
        if self.last_log.as_ref().is_none_or(|l| l.index <= upto) {
            self.last_log = Some(log_id.clone());
        }
        self.last_purged = Some(log_id);
        // The first batch's number, known: its ticket is waited for within `UNWAITED_MAX` of
        // the store's batches. Were it not (another writer's 65,536 windows meanwhile), the
        // segments are left for the next purge to retire: never one past the meta keys.
        let meta_seq =
            (submitted.wait().await).map_err(|e| io_err(StorageIOError::write_logs, &e))?;
        match meta_seq {
            Some(meta_seq) => self
                .retire(upto, meta_seq)
                .map_err(|e| io_err(StorageIOError::write_logs, &e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under configurations where each limit binds in turn, a batch holding one chunk (the
    /// largest operation the store makes) stays within every limit the engine refuses a
    /// request for: its value within `value_len_max`, the batch within half the largest
    /// request (`batch_bytes_max` less the ring's record header, and a quarter of the ring).
    #[test]
    fn one_chunk_and_its_operation_fit_the_batch_budget_and_the_engines_limits() {
        let base = Config::default();
        let cases = [
            // value_len_max binds: 4 KiB values, 8 KiB budget.
            (4096, 16 << 10, 64 << 10, 4096),
            // batch_bytes_max binds: 8 KiB budget, 1 MiB values.
            (1 << 20, 16 << 10, 1 << 20, (8 << 10) - OP_BYTES),
            // The ring binds: a quarter of 64 KiB is 16 KiB, 8 KiB budget.
            (1 << 20, 4 << 20, 64 << 10, (8 << 10) - OP_BYTES),
            // The default: 1 MiB values, 2 MiB budget.
            (
                base.value_len_max,
                base.batch_bytes_max,
                base.ring_bytes,
                1 << 20,
            ),
        ];
        for (value_len_max, batch_bytes_max, ring_bytes, expected) in cases {
            let config = Config {
                value_len_max,
                batch_bytes_max,
                ring_bytes,
                ..Config::default()
            };
            let len = chunk_len(&config);
            assert_eq!(
                len, expected,
                "{value_len_max} {batch_bytes_max} {ring_bytes}"
            );
            let (bytes, _) = budget(&config);
            assert!(len <= value_len_max && len + OP_BYTES <= bytes);
            // A batch's request: its 16-byte header, then per operation 9 bytes, the key
            // (at most a chunk key's) and the value; within the engine's largest request,
            // `min(batch_bytes_max - 8, ring_bytes / 4 - 8)`.
            let request = 16 + 9 + CHUNK_KEY_LEN + len;
            assert!(request <= (batch_bytes_max - 8).min(ring_bytes / 4 - 8));
            assert!(len >= CHUNK_LEN_MIN);
        }
    }
}
