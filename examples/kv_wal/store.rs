//! A small storage layer on mergelog: an ordered in-memory table (a `BTreeMap`) is the state,
//! and a mergelog [`Engine`] is its write-ahead log. Checkpoints write the table to a file and
//! let the engine retire the history they cover, so the disk stays bounded.
//!
//! On disk, under the store's directory:
//!
//! - `log/`: the engine's log directory;
//! - `checkpoint`: the table as of batch `S` of the log (format below); absent until the first
//!   checkpoint. `checkpoint.tmp` is one being written, and is ignored (and removed) at open.
//!
//! The contract between the two:
//!
//! - A checkpoint records the batch `S` it covers: every write in a batch `<= S` is in it, and
//!   every write after `S` is in the log (it may be in the checkpoint too; replaying it again
//!   gives the same state, since the log is replayed in order to its end).
//! - Open loads the checkpoint and replays the log from `S + 1`.
//! - Only once the new checkpoint is durable (written to `checkpoint.tmp`, `sync_all`, renamed
//!   over `checkpoint`, directory synced) does the store call `retire_before(S + 1)`, which
//!   removes the segments whose batches are all `<= S`. A crash before the rename leaves the
//!   old checkpoint and a log that still holds everything after it; a crash after it leaves
//!   the new one; a crash before the retirement leaves extra log, which the next open retires.
//!
//! Copying this file into another crate takes `mergelog`, `parking_lot` (locks that are not
//! poisoned by a panic elsewhere) and `crc32c` (the checkpoint's checksum) as dependencies.

// The checkpoint file is the store's own, not the engine's: plain `std::fs` is right here.
#![allow(clippy::disallowed_methods)]

use mergelog::{Config, Engine, RecordOp, Seq, Ticket};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// The engine's log directory, inside the store's directory.
pub const LOG_DIR: &str = "log";
/// The checkpoint file, inside the store's directory.
pub const CHECKPOINT: &str = "checkpoint";
/// A checkpoint being written; never read.
pub const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// The table: keys and values in key order.
pub type Map = BTreeMap<Vec<u8>, Vec<u8>>;
/// First bytes of a checkpoint file (version 1 of its format).
const MAGIC: &[u8; 8] = b"KVWALCP1";
/// Magic, the covered batch, the entry count, the CRC.
const CHECKPOINT_LEN_MIN: usize = 8 + 8 + 8 + 4;

/// How a store runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The engine's configuration (segment size, durability, ...).
    pub engine: Config,
    /// A checkpoint is taken once this many writes were applied since the last one.
    pub checkpoint_every_writes: u64,
    /// ... or once this many bytes of keys and values were.
    pub checkpoint_every_bytes: u64,
    /// Called at each step of every checkpoint, on the thread that takes it: for logging, or
    /// for a crash test that stops the process between two steps.
    pub on_checkpoint_step: Option<fn(CheckpointStep)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: Config::default(),
            checkpoint_every_writes: 100_000,
            checkpoint_every_bytes: 64 << 20,
            on_checkpoint_step: None,
        }
    }
}

/// The steps of a checkpoint, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStep {
    /// The table is copied (the writes stop waiting for it); nothing is written yet.
    Snapshot,
    /// `checkpoint.tmp` is written, not synced.
    Written,
    /// `checkpoint.tmp` is synced.
    Synced,
    /// It is renamed over `checkpoint`; the rename is not yet durable.
    Renamed,
    /// The directory is synced: the checkpoint is durable.
    Durable,
    /// The log before the checkpoint's batch is retired.
    Retired,
}

/// What can go wrong in the store.
#[derive(Debug)]
pub enum Error {
    /// The engine refused or failed (see `mergelog::Error`).
    Engine(mergelog::Error),
    /// A file operation on the checkpoint failed.
    Io {
        /// What the store was doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The checkpoint file is damaged, or it and the log do not belong together. Nothing was
    /// changed; the store refuses to open rather than lose writes.
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An option is out of range.
    InvalidOptions(&'static str),
    /// The write is durable and applied, but the periodic checkpoint it started failed (the
    /// next write that finds one due tries again).
    Checkpoint(Box<Error>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine(e) => write!(f, "log: {e}"),
            Error::Io { what, path, source } => {
                write!(f, "cannot {what} {}: {source}", path.display())
            }
            Error::Corrupt { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::InvalidOptions(what) => write!(f, "invalid options: {what}"),
            Error::Checkpoint(e) => write!(f, "the write is durable, the checkpoint failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Engine(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Checkpoint(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<mergelog::Error> for Error {
    fn from(e: mergelog::Error) -> Error {
        Error::Engine(e)
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, Error>;

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What `Store::open` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The batch the checkpoint covers (0: no checkpoint).
    pub checkpoint: Seq,
    /// Batches of the log replayed after it.
    pub batches: u64,
    /// Writes (records) in them.
    pub writes: u64,
}

/// A number of writes and of their bytes (keys and values).
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    writes: u64,
    bytes: u64,
}

impl std::ops::Add for Progress {
    type Output = Progress;
    fn add(self, o: Progress) -> Progress {
        Progress {
            writes: self.writes + o.writes,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl Progress {
    fn minus(self, o: Progress) -> Progress {
        Progress {
            writes: self.writes.saturating_sub(o.writes),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }

    /// Whether `factor` times the checkpoint interval has been reached.
    fn reached(&self, options: &Options, factor: u64) -> bool {
        self.writes >= options.checkpoint_every_writes.saturating_mul(factor)
            || self.bytes >= options.checkpoint_every_bytes.saturating_mul(factor)
    }
}

/// The state: the table, and how far into the log it goes.
struct Table {
    map: Map,
    /// The last batch an applied write was in (0: none).
    last_seq: u64,
    /// The applied writes of batch `last_seq`.
    in_last_seq: Progress,
    /// The batch the last durable checkpoint covers.
    checkpointed: u64,
    /// Applied writes that the last checkpoint's snapshot does not cover: the log after it.
    since_snapshot: Progress,
    /// Those the checkpoint under way covers, until it is durable.
    in_checkpoint: Progress,
}

impl Table {
    fn apply(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, seq: Option<Seq>) {
        let bytes = key.len() + value.as_ref().map_or(0, Vec::len);
        let one = Progress {
            writes: 1,
            bytes: bytes as u64,
        };
        self.since_snapshot = self.since_snapshot + one;
        match value {
            Some(v) => self.map.insert(key, v),
            None => self.map.remove(&key),
        };
        let Some(seq) = seq.map(Seq::get) else { return };
        if seq > self.last_seq {
            (self.last_seq, self.in_last_seq) = (seq, Progress::default());
        }
        if seq == self.last_seq {
            self.in_last_seq = self.in_last_seq + one;
        }
    }

    /// The log after the last durable checkpoint, as far as it is applied.
    fn since_durable_checkpoint(&self) -> Progress {
        self.since_snapshot + self.in_checkpoint
    }
}

/// A write submitted to the log and not yet applied to the table.
struct Queued {
    ticket: Ticket,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// An ordered key-value table kept in memory, made durable by a mergelog write-ahead log.
/// Share it between threads by reference (`&Store`, or an `Arc`).
///
/// Writes are applied to the table in the order they were submitted, which is the log's
/// order; see [`Store::submit_put`] for why that needs care.
pub struct Store {
    dir: PathBuf,
    options: Options,
    engine: Engine,
    recovered: Recovered,
    /// Written, not yet applied, in submission order. Lock order: `table`, then `queue`.
    queue: Mutex<VecDeque<Queued>>,
    table: RwLock<Table>,
    /// Held for the whole of a checkpoint: one at a time.
    checkpointing: Mutex<()>,
}

/// A write in the log's queue; [`Pending::wait`] returns once it is durable and applied.
/// Dropped unawaited, the write still happens, and the next write waited for applies it.
#[must_use = "wait for the write to be durable"]
pub struct Pending<'a> {
    store: &'a Store,
    ticket: Ticket,
}

impl Pending<'_> {
    /// Blocks until the write is durable, then applies it (and every write submitted before
    /// it) to the table; may then take a periodic checkpoint. After `Ok`, reads see it.
    pub fn wait(self) -> Result<()> {
        match self.ticket.wait() {
            // Durable; the engine just no longer remembers which batch it went to.
            Ok(_) | Err(mergelog::Error::SeqUnknown { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.after_durable()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`: loads the checkpoint, if any, and replays the
    /// log after the batch it covers.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        if options.checkpoint_every_writes == 0 || options.checkpoint_every_bytes == 0 {
            return Err(Error::InvalidOptions(
                "checkpoint_every_writes and checkpoint_every_bytes must be at least 1",
            ));
        }
        // Compaction copies only the live puts of the segments it retires, and retires history
        // the checkpoint has not covered: the next open would find batches after it gone.
        if matches!(options.engine.compaction, mergelog::Compaction::Auto(_)) {
            return Err(Error::InvalidOptions(
                "engine.compaction = Compaction::Auto would retire log the checkpoint has not \
                 covered; the store bounds its log by checkpoints: use OnDemand (the default) \
                 or Off",
            ));
        }
        let dir = dir.as_ref().to_owned();
        // First the engine: it creates the directories (syncing each parent) and takes the
        // directory's lock, which keeps a second store off the checkpoint as well.
        let engine = Engine::open(dir.join(LOG_DIR), options.engine.clone())?;
        let tmp = dir.join(CHECKPOINT_TMP);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(io_error("remove the unfinished checkpoint", &tmp)(e))
            }
            _ => {}
        }
        let (covered, map) = read_checkpoint(&dir.join(CHECKPOINT))?.unwrap_or_default();
        let mut table = Table {
            map,
            last_seq: covered,
            in_last_seq: Progress::default(),
            checkpointed: covered,
            since_snapshot: Progress::default(),
            in_checkpoint: Progress::default(),
        };
        let recovered = replay(&engine, covered, &mut table)?;
        // Finishes a checkpoint that a crash stopped after it became durable.
        engine.retire_before(covered + 1)?;
        Ok(Store {
            dir,
            options,
            engine,
            recovered,
            queue: Mutex::new(VecDeque::new()),
            table: RwLock::new(table),
            checkpointing: Mutex::new(()),
        })
    }

    /// Sets `key` to `value`; returns once the write is durable and applied.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.submit(key, Some(value))?.wait()
    }

    /// Removes `key`; returns once the delete is durable and applied.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.submit(key, None)?.wait()
    }

    /// Submits a put and returns at once; the write is durable and applied once the
    /// [`Pending`] is waited for. One thread can keep several writes in flight this way.
    ///
    /// Why writes go through a queue: the engine completes the tickets of a batch together,
    /// and the threads waiting on them wake in any order. If each thread applied its own
    /// write when it woke, two puts of one key could reach the table in the opposite order
    /// from the log's, and the table would disagree with what a replay gives. So the write
    /// joins a queue in the order the engine received it (the queue's lock is held across
    /// the engine call, so the two orders are the same), and whoever finds writes durable
    /// applies the durable front of the queue, in order, under the table's lock. The wait
    /// itself holds no lock, so writers from many threads still share one sync per batch.
    pub fn submit_put(&self, key: &[u8], value: &[u8]) -> Result<Pending<'_>> {
        self.submit(key, Some(value))
    }

    /// Submits a delete and returns at once (as [`Store::submit_put`]).
    pub fn submit_delete(&self, key: &[u8]) -> Result<Pending<'_>> {
        self.submit(key, None)
    }

    fn submit(&self, key: &[u8], value: Option<&[u8]>) -> Result<Pending<'_>> {
        self.hold_back_if_behind()?;
        let (key_owned, value_owned) = (key.to_vec(), value.map(<[u8]>::to_vec));
        let mut queue = self.queue.lock();
        let ticket = match value {
            Some(v) => self.engine.put(key, v)?,
            None => self.engine.delete(key)?,
        };
        queue.push_back(Queued {
            ticket: ticket.clone(),
            key: key_owned,
            value: value_owned,
        });
        Ok(Pending {
            store: self,
            ticket,
        })
    }

    /// The value of `key`, as of the writes applied so far.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.table.read().map.get(key).cloned()
    }

    /// Up to `limit` entries in key order, from the first key `>= start`.
    pub fn scan(&self, start: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let table = self.table.read();
        let range = (Bound::Included(start), Bound::Unbounded);
        table
            .map
            .range::<[u8], _>(range)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.table.read().map.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What [`Store::open`] loaded and replayed.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// The batch the last durable checkpoint covers (0: none).
    pub fn checkpointed(&self) -> Seq {
        Seq::new(self.table.read().checkpointed)
    }

    /// The write-ahead log (for its counters, `segments()`, ...). Writing to it directly
    /// would bypass the table, and its `compact` or `retire_before` would remove history the
    /// checkpoint has not covered (the next open refuses the store then).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the log: every write submitted is durable when this returns. The table is not
    /// checkpointed; the next open replays what came after the last checkpoint.
    pub fn close(self) -> Result<()> {
        Ok(self.engine.close()?)
    }

    /// Applies the durable front of the queue; then takes a checkpoint if one is due and no
    /// other is under way.
    fn after_durable(&self) -> Result<()> {
        let due = {
            let mut table = self.table.write();
            self.apply_durable(&mut table)?;
            table.since_snapshot.reached(&self.options, 1)
        };
        if !due {
            return Ok(());
        }
        // Another thread's checkpoint will cover what this one would have.
        let Some(_one) = self.checkpointing.try_lock() else {
            return Ok(());
        };
        if !self.table.read().since_snapshot.reached(&self.options, 1) {
            return Ok(()); // one finished meanwhile
        }
        self.checkpoint_locked()
            .map(|_| ())
            .map_err(|e| Error::Checkpoint(Box::new(e)))
    }

    /// Keeps the log bounded when checkpoints fall behind (a slow disk, a long one under
    /// way): once twice the interval has been applied since the last durable checkpoint, a
    /// write waits for the checkpoint under way, or takes one itself, before it is
    /// submitted. So the log after the last durable checkpoint holds at most twice the
    /// interval, plus the writes in flight.
    fn hold_back_if_behind(&self) -> Result<()> {
        let behind = |t: &Table| t.since_durable_checkpoint().reached(&self.options, 2);
        if !behind(&self.table.read()) {
            return Ok(());
        }
        let _one = self.checkpointing.lock();
        if behind(&self.table.read()) {
            self.checkpoint_locked()?;
        }
        Ok(())
    }

    /// Applies, in submission order, the writes at the front of the queue that are durable.
    /// Returns whether that emptied the queue. The table's lock (held by the caller) keeps
    /// one applier at a time, so the order holds across threads.
    fn apply_durable(&self, table: &mut Table) -> Result<bool> {
        let mut durable = Vec::new();
        let mut failed = None;
        let emptied = {
            let mut queue = self.queue.lock();
            while let Some(front) = queue.front() {
                let seq = match front.ticket.try_result() {
                    None => break, // tickets complete in queue order: the rest wait too
                    Some(Ok(seq)) => Some(seq),
                    // Durable; which batch is forgotten (it was looked at very late).
                    Some(Err(mergelog::Error::SeqUnknown { .. })) => None,
                    // The engine failed: this write and all after it may be lost. They stay
                    // queued, unapplied; every later call reports the failure.
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                };
                let q = queue.pop_front().expect("the front exists");
                durable.push((q, seq));
            }
            queue.is_empty()
        };
        for (q, seq) in durable {
            table.apply(q.key, q.value, seq);
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(emptied),
        }
    }

    /// Writes a checkpoint of the table and retires the log it covers; returns the batch it
    /// covers. Writes go on meanwhile (they wait only while the table is copied).
    pub fn checkpoint(&self) -> Result<Seq> {
        let _one = self.checkpointing.lock();
        self.checkpoint_locked()
    }

    fn checkpoint_locked(&self) -> Result<Seq> {
        let (covered, image) = {
            let mut table = self.table.write();
            let all_applied = self.apply_durable(&mut table)?;
            // Every write in a batch before the last applied write's batch came earlier in
            // the queue, so it is applied. That batch itself is covered only if nothing is
            // left in the queue: with writes waiting, some of its own may still be among them.
            // (A write submitted later goes to a later batch: this one is already durable.)
            let (covered, not_covered) = match all_applied {
                true => (table.last_seq, Progress::default()),
                false => (table.last_seq.saturating_sub(1), table.in_last_seq),
            };
            let image = encode_checkpoint(covered, &table.map);
            table.in_checkpoint = table.since_snapshot.minus(not_covered);
            table.since_snapshot = not_covered;
            (covered, image)
        };
        self.step(CheckpointStep::Snapshot);
        let written = self.write_checkpoint(&image);
        {
            let mut table = self.table.write();
            let taken = std::mem::take(&mut table.in_checkpoint);
            match written {
                Ok(()) => table.checkpointed = covered,
                // Not covered after all: they count towards the next one.
                Err(_) => table.since_snapshot = table.since_snapshot + taken,
            }
        }
        written?;
        // Only now that the checkpoint is durable may the log it covers go. If this fails,
        // the checkpoint stands; the next one (or the next open) retires.
        self.engine.retire_before(covered + 1)?;
        self.step(CheckpointStep::Retired);
        Ok(Seq::new(covered))
    }

    /// Replaces the checkpoint file with `image`, durably: the old one stays until the new
    /// one is synced, and the rename is made durable before the log is retired.
    fn write_checkpoint(&self, image: &[u8]) -> Result<()> {
        let tmp = self.dir.join(CHECKPOINT_TMP);
        let path = self.dir.join(CHECKPOINT);
        let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
        file.write_all(image).map_err(io_error("write", &tmp))?;
        self.step(CheckpointStep::Written);
        file.sync_all().map_err(io_error("sync", &tmp))?;
        drop(file);
        self.step(CheckpointStep::Synced);
        std::fs::rename(&tmp, &path).map_err(io_error("rename over the checkpoint", &tmp))?;
        self.step(CheckpointStep::Renamed);
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync the directory", &self.dir))?;
        self.step(CheckpointStep::Durable);
        Ok(())
    }

    fn step(&self, step: CheckpointStep) {
        if let Some(f) = self.options.on_checkpoint_step {
            f(step);
        }
    }
}

/// Applies the log's batches after `covered` to `table`.
fn replay(engine: &Engine, covered: u64, table: &mut Table) -> Result<Recovered> {
    let log = engine.replay()?;
    let mismatch = |reason: String| Error::Corrupt {
        path: log.dir().to_owned(),
        reason,
    };
    // Every batch after the checkpoint, or the error saying which the log lacks.
    let batches = log.batches_from(covered + 1).map_err(|e| match e {
        mergelog::Error::Retired { first, .. } => mismatch(format!(
            "the log starts at batch {first} but the checkpoint covers only up to batch \
             {covered}: the batches between are gone (was the checkpoint replaced, or the \
             log compacted or retired through Store::engine?)"
        )),
        // New writes would reuse the numbers the checkpoint covers, and a later open would
        // skip them.
        mergelog::Error::PastEnd { next, .. } => mismatch(format!(
            "the checkpoint covers batch {covered} but the log ends at batch {}: the log \
             lost durable batches",
            next.get() - 1
        )),
        e => e.into(),
    })?;
    let mut recovered = Recovered {
        checkpoint: Seq::new(covered),
        ..Recovered::default()
    };
    for batch in batches {
        recovered.batches += 1;
        for r in batch.records() {
            recovered.writes += 1;
            let value = match r.op {
                RecordOp::Put => Some(r.value.to_vec()),
                RecordOp::Delete => None,
            };
            table.apply(r.key.to_vec(), value, Some(batch.seq()));
        }
    }
    Ok(recovered)
}

/// The checkpoint file: magic, the covered batch (u64), the entry count (u64), then per entry
/// key length (u64), value length (u64), key, value, in key order; last the CRC-32C of all
/// bytes before it (u32). Integers little-endian.
fn encode_checkpoint(covered: u64, map: &Map) -> Vec<u8> {
    let size: usize = map.iter().map(|(k, v)| 16 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(CHECKPOINT_LEN_MIN + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the checkpoint at `path`: `None` if there is none.
fn read_checkpoint(path: &Path) -> Result<Option<(u64, Map)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    decode_checkpoint(&bytes)
        .map(Some)
        .map_err(|reason| Error::Corrupt {
            path: path.to_owned(),
            reason: format!("damaged checkpoint: {reason}"),
        })
}

fn decode_checkpoint(bytes: &[u8]) -> std::result::Result<(u64, Map), String> {
    if bytes.len() < CHECKPOINT_LEN_MIN || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a checkpoint ({} bytes, no magic)",
            bytes.len()
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err("checksum mismatch (torn or damaged)".to_string());
    }
    let mut rest = Cursor(&body[8..]);
    let covered = rest.u64()?;
    let count = rest.u64()?;
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let (key_len, value_len) = (rest.u64()?, rest.u64()?);
        let key = rest.take(key_len)?.to_vec();
        let value = rest.take(value_len)?.to_vec();
        if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
            return Err("keys out of order".to_string());
        }
        map.insert(key, value);
    }
    if !rest.0.is_empty() {
        return Err(format!("{} bytes after the last entry", rest.0.len()));
    }
    Ok((covered, map))
}

/// The unread part of a checkpoint's body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len());
        let n = n.ok_or_else(|| "an entry runs past the end".to_string())?;
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}
