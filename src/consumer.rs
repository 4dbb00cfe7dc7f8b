//! Named durable consumers: a follower whose position survives restarts.
//!
//! A consumer named `name` keeps the last batch it has *committed* (processed, as its owner
//! says with [`Consumer::commit`]) in a small file of the log directory, `consumer-<name>`,
//! replaced whole on every commit (`log::dir::write_consumer`: temporary file, sync, rename,
//! directory sync). Opened again (after a restart too) it yields from the batch after the
//! last commit: every batch is yielded at least once, and those yielded but not committed
//! before a crash or a close are yielded again.
//!
//! While a consumer's file exists, `Engine::retire_before` does not remove a batch it has not
//! committed (`Engine::retire_before_forced` does, and the consumer then gets
//! `Error::Retired` as a follower does). `Engine::remove_consumer` deletes the file.
//!
//! File layout (little-endian, 32 bytes; the name is in the file name):
//!
//! ```text
//! 0  magic "MLCONSUM"  8  version u32 (1)  12 reserved u32 (0)
//! 16 committed u64 (the last committed batch; 0: none)  24 crc32c u32 of bytes 0..24, 28 zero u32
//! ```

use crate::error::{Error, Result};
use crate::log::dir;
use crate::log::io::SharedIo;
use crate::log::recovery::SEQ_MAX;
use crate::reader::{Follower, LiveLog, OwnedBatch};
use crate::seq::Seq;
use crate::throttle::Throttle;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

const FILE_PREFIX: &str = "consumer-";
const TMP_PREFIX: &str = "consumer.tmp-";
const MAGIC: [u8; 8] = *b"MLCONSUM";
const VERSION: u32 = 1;
/// Bytes of a position file.
pub(crate) const FILE_LEN: usize = 32;
/// Offset of the reserved u32 (zero) in a position file.
const RESERVED_AT: usize = 12;
/// Offset of the committed batch in a position file.
const COMMITTED_AT: usize = 16;
const CRC_AT: usize = 24;
/// The longest consumer name.
pub const NAME_MAX: usize = 64;

/// Name of consumer `name`'s position file in the log directory.
pub(crate) fn consumer_file_name(name: &str) -> String {
    format!("{FILE_PREFIX}{name}")
}

/// Name of the temporary file a new position of consumer `name` is written to (renamed to, or
/// exchanged with, [`consumer_file_name`] once synced): `consumer.tmp-<name>.<pid>.<n>`, a
/// name of its own for every handle (kept by it for its commits: see [`Consumer::commit`])
/// and every other write, so two handles of one name (in two processes, as
/// `LogReader::consumer` allows) never write into, remove or rename each other's file: each
/// commit's file is whole and the last rename wins. It does not start with `consumer-`, so it
/// is never taken for a consumer, whatever the name. A writable open removes those a crash
/// left: those of processes that are gone ([`dir::remove_consumer_leftovers`]).
pub(crate) fn consumer_tmp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{TMP_PREFIX}{name}.{}.{n}", std::process::id())
}

/// Whether `file` is a consumer position being written, or one an interrupted write left.
pub(crate) fn is_consumer_tmp_name(file: &str) -> bool {
    file.starts_with(TMP_PREFIX)
}

/// The process that made consumer temporary `file` ([`consumer_tmp_name`]:
/// `consumer.tmp-<name>.<pid>.<n>`, the name itself possibly holding dots), if its name says.
pub(crate) fn consumer_tmp_pid(file: &str) -> Option<u32> {
    let rest = file.strip_prefix(TMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '.');
    let n = parts.next()?;
    let pid = parts.next()?;
    let name = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(n) || !digits(pid) || check_name(name).is_err() {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` of this machine is alive (or may be: one that is not ours to
/// signal). A consumer handle keeps its temporary file for its commits as long as it lives
/// ([`Consumer::commit`]), so a writable open removes only those of processes that are gone.
pub(crate) fn process_alive(pid: u32) -> bool {
    // 0 and anything past i32::MAX are no process's id (and kill(0) would mean our group).
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing: kill only checks that the process exists and that we
    // may signal it. No memory is passed.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The consumer name in a position file's name, if it is one.
pub(crate) fn parse_consumer_file_name(file: &str) -> Option<&str> {
    file.strip_prefix(FILE_PREFIX)
        .filter(|name| check_name(name).is_ok())
}

/// Refuses a consumer name that is not 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        return Ok(());
    }
    Err(Error::Consumer {
        name: name.to_owned(),
        reason: format!("a consumer name is 1 to {NAME_MAX} characters of [A-Za-z0-9_.-]"),
    })
}

/// The bytes of a position file for `committed`.
pub(crate) fn encode(committed: u64) -> [u8; FILE_LEN] {
    let mut b = [0u8; FILE_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[COMMITTED_AT..COMMITTED_AT + 8].copy_from_slice(&committed.to_le_bytes());
    let crc = crc32c::crc32c(&b[..CRC_AT]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The committed batch of the position file bytes `b` (the tests' way in).
#[cfg(test)]
pub(crate) fn load_bytes(b: &[u8]) -> Option<u64> {
    decode(b)
}

/// The committed batch of a position file; `None` for anything that is not exactly a valid one.
fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != FILE_LEN || b[0..8] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    if u32_at(8) != VERSION
        || u32_at(RESERVED_AT) != 0
        || u32_at(CRC_AT) != crc32c::crc32c(&b[..CRC_AT])
        || u32_at(CRC_AT + 4) != 0
    {
        return None;
    }
    Some(u64::from_le_bytes(
        b[COMMITTED_AT..COMMITTED_AT + 8].try_into().unwrap(),
    ))
}

/// The committed batch of consumer `name` in `dir`; `None` if it has no file. A file that is
/// not a valid position is an error (`Error::Corrupt`), never read as "nothing consumed"; so
/// is a committed batch past [`SEQ_MAX`], which no log reaches (and counting on from which
/// could overflow).
pub(crate) fn load(dir: &Path, name: &str) -> Result<Option<u64>> {
    let Some(bytes) = dir::read_consumer(dir, name, |b| decode(b).is_some())? else {
        return Ok(None);
    };
    let corrupt = |offset: usize, reason: String| Error::Corrupt {
        path: dir.join(consumer_file_name(name)),
        offset: offset as u64,
        reason,
    };
    match decode(&bytes) {
        Some(c) if c > SEQ_MAX => Err(corrupt(
            COMMITTED_AT,
            format!("consumer position names committed batch {c}, past the largest, {SEQ_MAX}"),
        )),
        Some(c) => Ok(Some(c)),
        None => Err(corrupt(0, "not a valid consumer position file".into())),
    }
}

/// At a writable open, after recovery: every consumer whose committed batch lies past the
/// log's last batch `last` is set back to it (its file replaced durably), and returned with
/// the position it had. Such a position names batches the log does not hold: a consumer of
/// the directory (another process) may commit a batch it read while the engine had written
/// it but not yet synced it, a log written with `Durability::NoSync` loses what was not
/// written back, and `RecoveryMode::PointInTime` may cut batches a consumer had committed.
/// Kept, it would make the consumer skip the batches the log writes next under those very
/// sequence numbers (and let `retire_before` retire them before the consumer saw them).
///
/// It also removes the temporary position files interrupted commits left
/// (`consumer.tmp-*`) by processes that are gone. Those of live processes stay: a consumer
/// handle keeps its temporary for its commits, and removed in the middle of a commit it
/// made that commit fail with the rename's error (a consumer process beside a writer that
/// restarts, as `examples/ledger`'s); removed between commits, it took the handle's room
/// on a full disk.
pub(crate) fn pull_back_past(
    io: &SharedIo,
    dir: &Path,
    last: u64,
) -> Result<Vec<ConsumerPosition>> {
    dir::remove_consumer_leftovers(&**io, dir)?;
    let mut pulled = Vec::new();
    for (name, committed) in load_all(dir)? {
        if committed > last {
            dir::write_consumer(&**io, dir, &name, &encode(last))?;
            pulled.push(ConsumerPosition {
                name,
                committed: Seq::new(committed),
            });
        }
    }
    Ok(pulled)
}

/// Every consumer of `dir` with its committed batch, sorted by name.
pub(crate) fn load_all(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut all = Vec::new();
    for name in dir::list_consumers(dir)? {
        // Removed between the listing and the read: it no longer holds anything back.
        if let Some(c) = load(dir, &name)? {
            all.push((name, c));
        }
    }
    Ok(all)
}

/// How far `Engine::retire_before(seq)` may retire with the consumers of `dir`: before
/// `min(seq, committed + 1)` over all of them, and the consumer that set that limit (its
/// name and committed batch), if one did.
pub(crate) fn retire_limit(dir: &Path, seq: u64) -> Result<(u64, Option<ConsumerPosition>)> {
    let slowest = load_all(dir)?.into_iter().min_by_key(|(_, c)| *c);
    Ok(match slowest {
        Some((name, c)) if c.saturating_add(1) < seq => {
            let committed = Seq::new(c);
            (
                c.saturating_add(1),
                Some(ConsumerPosition { name, committed }),
            )
        }
        _ => (seq, None),
    })
}

/// Consumer `name`'s committed batch, its file created first (at `first_seq - 1`: nothing
/// consumed, the first batch the log holds comes next) if it has none. A file found is made
/// durable by name first (the directory synced): it may be one whose creation's directory
/// sync failed, and the handle must not rest on a name a crash could take back.
pub(crate) fn load_or_create(io: &SharedIo, dir: &Path, name: &str, first_seq: u64) -> Result<u64> {
    if let Some(c) = load(dir, name)? {
        dir::sync_dir(&**io, dir)?;
        return Ok(c);
    }
    let committed = first_seq.saturating_sub(1);
    dir::write_consumer(&**io, dir, name, &encode(committed))?;
    Ok(committed)
}

/// The consumers open on one engine: one handle per name.
#[derive(Default)]
pub(crate) struct OpenConsumers(Mutex<HashSet<String>>);

impl OpenConsumers {
    /// Claims `name` for a new handle; an error if one is open.
    pub fn claim(self: &Arc<Self>, name: &str) -> Result<Claim> {
        if !self.0.lock().insert(name.to_owned()) {
            return Err(Error::Consumer {
                name: name.to_owned(),
                reason: "a handle of this consumer is open on this engine; drop it first".into(),
            });
        }
        Ok(Claim {
            open: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Runs `f` unless a handle of `name` is open (an error then), with no handle opened
    /// meanwhile.
    pub fn unless_open<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let open = self.0.lock();
        if open.contains(name) {
            return Err(Error::Consumer {
                name: name.to_owned(),
                reason: "a handle of this consumer is open on this engine; drop it first".into(),
            });
        }
        f()
    }
}

/// An open handle's hold on its name; released when the handle drops.
pub(crate) struct Claim {
    open: Arc<OpenConsumers>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.open.0.lock().remove(&self.name);
    }
}

/// A named, durable consumer of the log: yields batches from the one after its last commit,
/// as a [`Follower`] does, and records its progress with [`Consumer::commit`], in a small
/// file of the log directory (`consumer-<name>`, replaced whole). Delivery is at-least-once:
/// opened again, after a close or a crash, it yields from the batch after its last commit,
/// so batches yielded but not committed come again (make their effects idempotent: a request
/// id, README "Asynchronous tasks"). While it exists,
/// [`Engine::retire_before`](crate::Engine::retire_before) keeps every batch it has not
/// committed, and a compaction every segment holding one
/// ([`Engine::remove_consumer`](crate::Engine::remove_consumer) deletes it). Compaction
/// batches ([`OwnedBatch::compaction`]) repeat values already yielded: an event consumer
/// skips them. A batch holds a key's last write of its window, not the earlier ones
/// (coalescing, `Config::coalesce`): give each event a key of its own.
///
/// ```
/// use mergelog::{Config, Engine};
/// use std::time::Duration;
///
/// # fn main() -> mergelog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let engine = Engine::open(dir.path(), Config::default())?;
/// engine.put(b"order:1", b"placed")?.wait()?;
/// engine.put(b"order:2", b"placed")?.wait()?;
///
/// let mut consumer = engine.consumer("mailer")?;
/// // `next_timeout` gives `Ok(None)` once nothing more lands in time (`for batch in
/// // consumer` blocks for the next batch instead).
/// while let Some(batch) = consumer.next_timeout(Duration::from_millis(50))? {
///     if !batch.compaction {
///         for _record in &batch.records { /* record.op, record.key, record.value */ }
///     }
///     consumer.commit(batch.seq)?; // durable: not yielded again after a restart
/// }
/// assert_eq!(consumer.committed(), engine.durable_seq());
/// drop(consumer);
/// engine.close()?;
///
/// // After a restart it resumes after its last commit.
/// let engine = Engine::open(dir.path(), Config::default())?;
/// engine.put(b"order:3", b"placed")?.wait()?;
/// let mut consumer = engine.consumer("mailer")?;
/// let batch = consumer.next_timeout(Duration::from_secs(10))?.expect("order 3's batch");
/// assert_eq!(batch.records[0].key, b"order:3");
/// # Ok(())
/// # }
/// ```
///
/// Made by `Engine::consumer` (in the engine's process: woken when a batch becomes durable;
/// one handle per name) or `LogReader::consumer` (any process: polls for new batches; not
/// counted as a handle of the engine, and two handles of one name in two processes both
/// write its file, the last commit winning).
pub struct Consumer {
    name: String,
    dir: PathBuf,
    io: SharedIo,
    /// This handle's kept temporary position file (see [`Consumer::commit`]).
    tmp: PathBuf,
    /// The last exchange through `tmp` may not be durable (its directory sync failed): the
    /// next commit syncs the directory before it writes `tmp` (`dir::commit_consumer`).
    unsettled: std::sync::atomic::AtomicBool,
    follower: Follower,
    /// The last committed batch (0: none), as in the file.
    committed: u64,
    /// The highest batch a commit tried to write: after a failed commit the file may hold it
    /// (the rename done, the directory's sync failed), so no later commit writes less.
    attempted: u64,
    /// The last batch yielded (`committed` until one is).
    yielded: u64,
    /// In the engine's process: its durable sequence, which a commit may not pass.
    live: Option<Arc<LiveLog>>,
    /// In the engine's process: its throttle, which re-measures the lag after each commit.
    throttle: Option<Arc<Throttle>>,
    _claim: Option<Claim>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("committed", &self.committed)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl Drop for Consumer {
    /// Removes the handle's kept temporary file (best effort; in the engine's process only
    /// while the engine holds the directory: else the next writable open removes it).
    fn drop(&mut self) {
        let remove = || {
            dir::remove_kept(&*self.io, &self.tmp);
            Ok(())
        };
        let _ = match &self.live {
            Some(live) => live.while_holding_dir(remove),
            None => remove(),
        };
    }
}

impl Consumer {
    /// A consumer at `committed` reading through `follower` (which starts at `committed + 1`).
    pub(crate) fn new(
        name: &str,
        (dir, io): (PathBuf, SharedIo),
        follower: Follower,
        committed: u64,
        live: Option<Arc<LiveLog>>,
        claim: Option<Claim>,
    ) -> Consumer {
        debug_assert_eq!(follower.next_seq().get(), committed.saturating_add(1));
        let tmp = dir.join(consumer_tmp_name(name));
        // Its room, so that even its first commit needs none (best effort; in the engine's
        // process only while the engine holds the directory).
        let keep = || dir::keep_consumer_room(&*io, &tmp);
        let _ = match &live {
            Some(live) => live.while_holding_dir(keep),
            None => keep(),
        };
        Consumer {
            name: name.to_owned(),
            dir,
            io,
            tmp,
            unsettled: false.into(),
            follower,
            committed,
            attempted: committed,
            yielded: committed,
            live,
            throttle: None,
            _claim: claim,
        }
    }

    /// This consumer, its commits re-measuring `throttle`'s lag (`Config::consumer_lag_max`).
    pub(crate) fn with_throttle(mut self, throttle: Arc<Throttle>) -> Consumer {
        self.throttle = Some(throttle);
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last committed batch. A new consumer is at the batch before the first one the log
    /// holds (0, or `first_seq - 1` once `retire_before` has removed segments), so that
    /// batch comes first.
    pub fn committed(&self) -> Seq {
        Seq::new(self.committed)
    }

    /// Sequence number of the next batch this consumer yields.
    pub fn next_seq(&self) -> Seq {
        self.follower.next_seq()
    }

    /// Records durably that every batch up to `seq` is processed: after a restart the
    /// consumer resumes at `seq + 1`, and `Engine::retire_before` may remove them.
    ///
    /// A `seq` at or below the committed one is a no-op (`Ok`, nothing written): commits are
    /// idempotent and never move the position back. A `seq` past the last batch this handle
    /// yielded, or (in the engine's process) past `Engine::durable_seq`, is refused with
    /// `Error::Consumer`. If writing the file fails, the error is returned and this handle
    /// keeps the previous commit; on disk the position is the previous commit or, if only
    /// the directory's sync after the new file's rename failed, this one (a restart resumes
    /// at either, as at-least-once delivery allows; `retire_before` may already go by the
    /// new one); so the next commit writes at least this one's position, whatever it is
    /// given, and positions on disk never move back. In the engine's
    /// process a commit after `close` is refused with `Error::Closed` (the directory may be
    /// another engine's by then): the batches it would have covered are yielded again after
    /// the restart.
    ///
    /// A commit needs no new room on the disk: the handle keeps a temporary file of a
    /// position's length (made when it is opened, `consumer.tmp-<name>.<pid>.<n>`), writes the
    /// new position over it, syncs it and exchanges its name with the position file's, so
    /// that it then holds the old position, whose room the next commit overwrites. So a
    /// consumer that has caught up can commit on a full disk, and let `retire_before` and a
    /// compaction make room (README, "A full disk"). Where names cannot be exchanged the
    /// temporary file is renamed over the position file and made again (best effort).
    ///
    /// A consumer of a directory (`LogReader::consumer`) whose follower found the log rewound
    /// past a batch it yielded (`Error::Rewound`: an open with a lossy recovery cut the log
    /// before it, and the engine writes other batches under those numbers) refuses every
    /// commit past its committed position with that error: the batches it yielded are not
    /// the ones the log holds under those numbers now. It also checks, before it writes, that
    /// the last batch it yielded is still where it read it, when it reads on in that file (a
    /// read of a frame header). Open the consumer again: it resumes at its position, which
    /// the rewinding open set back if it lay past the log's end.
    ///
    /// # Errors
    ///
    /// [`Error::Consumer`] for a commit past the last batch yielded or, in the engine's
    /// process, past [`Engine::durable_seq`](crate::Engine::durable_seq); [`Error::Rewound`] as
    /// above; [`Error::Closed`] (in the engine's process) once the engine is closed;
    /// [`Error::Io`] when the position file cannot be written or synced (naming it; the
    /// handle keeps its old position, and a later commit never writes less than this one).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread while it writes and syncs the position file (an
    /// `fdatasync`, and the directory's `fsync`): on a single-threaded executor every task
    /// waits for that sync. Commit from a thread that may block, or every few batches
    /// rather than each (at-least-once: a restart yields again what was not committed;
    /// README, "Calls that block the thread").
    pub fn commit(&mut self, seq: impl Into<Seq>) -> Result<()> {
        let seq = seq.into().get();
        if seq <= self.committed {
            return Ok(());
        }
        let refuse = |reason: String| Error::Consumer {
            name: self.name.clone(),
            reason,
        };
        if seq > self.yielded {
            return Err(refuse(format!(
                "commit of batch {seq} refused: the last batch this consumer yielded is {}",
                self.yielded
            )));
        }
        if let Some(live) = &self.live {
            let durable = live.durable_seq.load(Ordering::Acquire);
            if seq > durable {
                return Err(refuse(format!(
                    "commit of batch {seq} refused: the log is durable up to batch {durable}"
                )));
            }
        }
        // Its batches are no longer the log's: this position would name others.
        self.follower.check_yielded()?;
        // A failed commit's position may stand on disk: never write less than it.
        let seq = seq.max(self.attempted);
        self.attempted = seq;
        let write = || {
            let bytes = encode(seq);
            let names = (self.name.as_str(), self.tmp.as_path());
            dir::commit_consumer(&*self.io, &self.dir, names, &bytes, &self.unsettled)
        };
        match &self.live {
            // In the engine's process: only while the engine holds the directory.
            Some(live) => live.while_holding_dir(write)?,
            None => write()?,
        }
        self.committed = seq;
        // The lag may have fallen under the limit: submitters throttled on it are released.
        if let Some(t) = &self.throttle {
            t.consumer_at(&self.name, seq);
        }
        Ok(())
    }

    /// Notes a batch yielded.
    fn seen(&mut self, r: Result<Option<OwnedBatch>>) -> Result<Option<OwnedBatch>> {
        if let Ok(Some(b)) = &r {
            self.yielded = b.seq.get();
        }
        r
    }

    /// The next batch if it has landed, without waiting (as [`Follower::try_next`]).
    ///
    /// # Errors
    ///
    /// As [`Follower::try_next`]'s.
    pub fn try_next(&mut self) -> Result<Option<OwnedBatch>> {
        let r = self.follower.try_next();
        self.seen(r)
    }

    /// Waits for the next batch, up to `timeout` (as [`Follower::next_timeout`]: woken in
    /// the engine's process, polling otherwise).
    ///
    /// # Errors
    ///
    /// As [`Follower::next_timeout`]'s.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<OwnedBatch>> {
        let r = self.follower.next_timeout(timeout);
        self.seen(r)
    }

    /// The next batch as a `Stream` yields it (as [`Follower::poll_next`]). Awaited in an
    /// `async fn`, with `std` alone:
    ///
    /// ```
    /// # async fn consume(mut consumer: mergelog::Consumer) -> mergelog::Result<()> {
    /// // Never `None`: the loop ends with the engine's close (`Error::Closed`) or failure.
    /// while let Some(batch) = std::future::poll_fn(|cx| consumer.poll_next(cx)).await {
    ///     let batch = batch?;
    ///     /* handle batch.records */
    ///     consumer.commit(batch.seq)?; // a file sync: blocks the thread (see `commit`)
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<OwnedBatch>>> {
        let r = self.follower.poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            self.yielded = b.seq.get();
        }
        r
    }
}

impl Iterator for Consumer {
    type Item = Result<OwnedBatch>;
    /// Blocks until the next batch lands (as the [`Follower`]'s `next`): never `None`; in
    /// the engine's process `Some(Err(Error::Closed))` once the engine is closed and every
    /// durable batch was yielded, `Some(Err(Error::Failed))` once it failed and every batch
    /// durable so far was yielded (commit what was handled, then reopen).
    fn next(&mut self) -> Option<Result<OwnedBatch>> {
        let r = self.follower.next();
        if let Some(Ok(b)) = &r {
            self.yielded = b.seq.get();
        }
        r
    }
}

/// A durable consumer and the last batch it committed: the one that held a retirement or a
/// compaction back ([`Retired::held_back_by`](crate::Retired::held_back_by),
/// [`Compacted::held_back_by`](crate::Compacted::held_back_by)), or one an open set back
/// ([`OpenReport::consumers_set_back`](crate::OpenReport::consumers_set_back)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerPosition {
    /// Its name, as given to `Engine::consumer`.
    pub name: String,
    /// The last batch it committed.
    pub committed: Seq,
}

/// A consumer, its lag behind the durable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// The last batch it committed (for a consumer that has committed nothing, the batch
    /// before the first one the log held when it was made: 0 unless segments were retired).
    pub committed: Seq,
    /// Durable batches it has not committed: `durable_seq - committed` (0 if it is ahead,
    /// which a consumer opened from another process's view can be), those retired before
    /// it read them included ([`ConsumerInfo::retired_unread`]).
    pub lag_batches: u64,
    /// Bytes of the frames of those batches that the log holds, as they lie in the segment
    /// files (headers and padding included); the retired ones' files are gone, so with
    /// [`ConsumerInfo::retired_unread`] above 0 it is at least this far behind.
    pub lag_bytes: u64,
    /// When the oldest of those batches the log holds was written (`None`: it has none, or
    /// the batch is of a format version without commit times); with
    /// [`ConsumerInfo::retired_unread`] above 0, the retired ones are older still.
    pub oldest_unprocessed: Option<std::time::SystemTime>,
    /// How long ago that was, when measured (the age of the oldest unprocessed batch).
    pub lag_age: Option<Duration>,
    /// Of [`ConsumerInfo::lag_batches`], those retired before it committed them: the batches
    /// from `committed + 1` to the one before the log's first (`Engine::retire_before_forced`
    /// removed them, or a retirement of another process racing a new `LogReader::consumer`).
    /// 0 for every consumer but one behind a retirement, which can never catch up: a handle
    /// of it opened now gets `Error::Retired` at its first read (naming its next batch and
    /// the log's first; one already reading in a retired segment reads on to that segment's
    /// end), and so does its `pending_ids`; remove it and make it again, once the batches it
    /// missed are handled some other way.
    pub retired_unread: u64,
}

/// The consumer half of the engine's API.
impl crate::Engine {
    /// Opens the durable consumer `name` (1 to 64 characters of `[A-Za-z0-9_.-]`): it yields
    /// the batches after its last commit as a follower does, woken as each becomes durable,
    /// and [`Consumer::commit`] records its progress in the log directory, so that it
    /// resumes there after a restart (at-least-once: batches yielded but not committed are
    /// yielded again). A new consumer starts at "nothing consumed": the first batch the log
    /// holds. While it exists, `retire_before` keeps the batches it has not committed. One
    /// handle per name: a second one while the first lives is an `Error::Consumer`.
    ///
    /// # Errors
    ///
    /// [`Error::Consumer`] for an invalid name or a second handle of `name`;
    /// [`Error::Closed`] once the engine is closed; [`Error::Corrupt`] for a position file that
    /// does not decode; [`Error::Io`] when the position file cannot be read or made (naming
    /// it).
    ///
    /// # Blocking
    ///
    /// Blocks the calling thread while it reads or makes (and syncs) the position file, as
    /// [`Consumer::commit`] does; so does
    /// [`Engine::remove_consumer`](crate::Engine::remove_consumer).
    pub fn consumer(&self, name: &str) -> Result<Consumer> {
        check_name(name)?;
        let claim = self.consumers.claim(name)?;
        let inner = &*self.inner;
        let committed = {
            // Under the retirement lock (which `close` takes before it gives up the
            // directory): no retirement removes the first batch between reading it and the
            // new file naming it, and no file is made once another engine may have the
            // directory.
            let _one_at_a_time = inner.retire_lock.lock();
            if inner.ring.is_closed() {
                return Err(Error::Closed);
            }
            let first = inner.segments.read().iter().next().map_or(1, |s| s.id);
            let committed = load_or_create(&inner.io, &inner.dir, name, first)?;
            // A new consumer may lag more than the others (recorded under the lock, as a
            // removal is: in the order the files were made and removed).
            inner.throttle.consumer_at(name, committed);
            committed
        };
        Ok(Consumer::new(
            name,
            (inner.dir.clone(), inner.io.clone()),
            self.follow(committed.saturating_add(1)),
            committed,
            Some(inner.live.clone()),
            Some(claim),
        )
        .with_throttle(inner.throttle.clone()))
    }

    /// Every durable consumer, sorted by name, with its lag behind [`Engine::durable_seq`](crate::Engine::durable_seq)
    /// in batches, bytes and age (see [`LogReader::consumers`](crate::LogReader::consumers)).
    /// `Error::Closed` once the engine is closed: the directory's position files may be
    /// another engine's by then (read them with `LogReader::open(dir)?.consumers()`).
    ///
    /// # Errors
    ///
    /// As [`LogReader::consumers`](crate::LogReader::consumers)'s; [`Error::Closed`] as above.
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        self.replay()?.consumers()
    }

    /// The request ids durable but not yet committed by consumer `name`, oldest first: what
    /// was accepted and not yet processed (see
    /// [`LogReader::pending_ids`](crate::LogReader::pending_ids)). `Error::Closed` once the
    /// engine is closed, as for [`Engine::consumers`](crate::Engine::consumers).
    ///
    /// # Errors
    ///
    /// As [`LogReader::pending_ids`](crate::LogReader::pending_ids)'s (`Error::Retired` for a
    /// consumer behind a retirement); [`Error::Closed`] as above.
    pub fn pending_ids(&self, name: &str) -> Result<Vec<crate::PendingId>> {
        self.replay()?.pending_ids(name)
    }

    /// Deletes consumer `name` (its file, durably): it no longer holds back `retire_before`.
    /// False if there was no such consumer; an `Error::Consumer` if a handle of it is open on
    /// this engine. A handle made through `LogReader::consumer` (another process's) is not
    /// seen: its next commit makes the file again, and the consumer is back at that commit.
    ///
    /// # Errors
    ///
    /// [`Error::Consumer`] for an invalid name or a handle of it open; [`Error::Closed`] once
    /// the engine is closed; [`Error::Io`] when the file cannot be removed or the directory
    /// synced (naming it).
    pub fn remove_consumer(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let inner = &*self.inner;
        let removed = self.consumers.unless_open(name, || {
            let _one_at_a_time = inner.retire_lock.lock();
            if inner.ring.is_closed() {
                return Err(Error::Closed);
            }
            let removed = crate::log::dir::remove_consumer(&*inner.io, &inner.dir, name)?;
            // It no longer holds the submitters back either.
            inner.throttle.consumer_removed(name);
            Ok(removed)
        })?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_damage_is_refused() {
        for c in [0, 1, u64::MAX] {
            assert_eq!(decode(&encode(c)), Some(c));
        }
        let good = encode(7);
        for i in 0..FILE_LEN {
            let mut b = good;
            b[i] ^= 1;
            assert_eq!(decode(&b), None, "byte {i} flipped");
        }
        assert_eq!(decode(&good[..FILE_LEN - 1]), None);
    }

    /// Nonzero reserved bytes under a CRC that covers them are refused as a bad CRC is, not
    /// read as a position.
    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let mut b = encode(7);
        b[RESERVED_AT] = 1;
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), None);
    }

    #[test]
    fn names_are_checked_and_file_names_parse_back() {
        for ok in ["a", "orders.v2", "A-b_c", &"x".repeat(NAME_MAX)] {
            check_name(ok).unwrap();
            assert_eq!(parse_consumer_file_name(&consumer_file_name(ok)), Some(ok));
            assert_eq!(parse_consumer_file_name(&consumer_tmp_name(ok)), None);
        }
        for bad in ["", "a/b", "a b", "é", "..\0", &"x".repeat(NAME_MAX + 1)] {
            let e = check_name(bad).unwrap_err();
            assert!(e.to_string().contains("[A-Za-z0-9_.-]"), "{e}");
        }
    }

    /// A temporary's name gives back the process that made it, whatever dots the consumer's
    /// name holds; names of older builds (no process) and others give none.
    #[test]
    fn a_temporarys_name_gives_its_process() {
        let me = std::process::id();
        for name in ["a", "orders.v2", "1.2.3", "x-y_z."] {
            assert_eq!(
                consumer_tmp_pid(&consumer_tmp_name(name)),
                Some(me),
                "{name}"
            );
        }
        for none in [
            "consumer.tmp-c",
            "consumer.tmp-c.12",
            "consumer.tmp-.12.0",
            "consumer.tmp-c.x.0",
            "consumer.tmp-c.12.",
            "consumer-c.12.0",
        ] {
            assert_eq!(consumer_tmp_pid(none), None, "{none}");
        }
        assert!(process_alive(me));
        assert!(!process_alive(0), "0 is no process (kill(0) is our group)");
        assert!(!process_alive(u32::MAX));
    }
}
