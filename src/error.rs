//! One error type for the whole crate. Every variant says what happened and, where the
//! caller can do something about it, what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The result type of every fallible mergelog call.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in mergelog.
///
/// `Error` is `Clone` so that one I/O failure can complete every ticket it affects. Each
/// variant says when it happens and what to do. In short:
///
/// ```
/// use mergelog::{Config, Engine, Error};
///
/// /// What a writer does with the error of a submit or of its ticket.
/// fn what_to_do(e: &Error) -> &'static str {
///     match e {
///         // Nothing is wrong with the request: the engine is saturated.
///         e if e.is_back_off() => "back off and submit it again (Busy, Throttled)",
///         // The request is refused, nothing of it applied; the engine goes on.
///         Error::KeyTooLong { .. }
///         | Error::ValueTooLong { .. }
///         | Error::RequestTooLarge { .. }
///         | Error::EmptyBatch
///         | Error::MergeRefused { .. } => "fix the request (or raise the limit named)",
///         Error::NoSpace { .. } => "make room on the disk, Engine::resume, submit it again",
///         Error::Timeout => "it goes on: wait on the ticket again",
///         Error::Closed => "the engine was closed: Engine::open the directory again",
///         // A write or sync failed: the engine takes no more writes, and this request may
///         // or may not be in the log.
///         Error::Io { .. } | Error::Failed(_) => "close, drop and reopen; read what landed",
///         _ => "see the variant's documentation",
///     }
/// }
///
/// # fn main() -> mergelog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let engine = Engine::open(dir.path(), Config::default())?;
/// let too_long = vec![0; engine.config().value_len_max + 1];
/// let refused = engine.put(b"k", &too_long).unwrap_err();
/// assert_eq!(what_to_do(&refused), "fix the request (or raise the limit named)");
/// // Its message names the limit and the size.
/// assert!(refused.to_string().contains("value_len_max"), "{refused}");
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Error {
    /// A key is longer than `Config::key_len_max` (at submit, or `Engine::read`'s key).
    /// Nothing was submitted: shorten the key, or raise the limit (at most 65,535).
    KeyTooLong {
        /// Length of the offending key in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A value (or a merge operand) is longer than `Config::value_len_max`, at submit.
    /// Nothing was submitted: split the value over several keys, or raise the limit.
    ValueTooLong {
        /// Length of the offending value in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// One request (a put, or a whole `WriteBatch`) is larger than the ring or the batch
    /// limit can carry, at submit. Nothing was submitted: split the batch into smaller ones
    /// (each atomic on its own), or raise the limit named (`batch_bytes_max`, or `ring_bytes`,
    /// of which a request may take a quarter).
    RequestTooLarge {
        /// Encoded size of the request in bytes.
        len: usize,
        /// The largest request the configuration accepts.
        max: usize,
        /// Which limit it exceeds.
        limit: RequestLimit,
    },
    /// A `WriteBatch` submitted (`Engine::write` and its forms) holds no operations. Nothing
    /// was submitted; there was nothing to write.
    EmptyBatch,
    /// The configuration is inconsistent (`Engine::open`, `Config::validate`; at open also
    /// `WritePath::Mmap` on btrfs): the message names the setting and the rule. Nothing was
    /// made: change that setting.
    InvalidConfig(String),
    /// The ring is full and `Backpressure::Reject` is configured: shed load or retry later.
    /// (A put refused because a consumer lags is [`Error::Throttled`]; back off from both
    /// alike: [`Error::is_back_off`].)
    Busy,
    /// With `Config::consumer_lag_max` and `Backpressure::Reject`: the slowest durable consumer
    /// lags the durable log past the limit, and a `put`, `delete`, `merge` or `write` is
    /// refused. Back off as from [`Error::Busy`] (retry once the consumer has caught up);
    /// [`Error::is_back_off`] is true for both.
    Throttled {
        /// The slowest consumer.
        consumer: String,
        /// Its lag as last measured: in batches, in bytes if a bytes limit is set, and in age
        /// (of its oldest uncommitted batch) if an age limit is set.
        lag: crate::config::ConsumerLag,
    },
    /// The engine has been closed; no more requests are accepted (reads go on). An
    /// in-process follower returns it once it has yielded every batch that became durable.
    /// To write again, drop the engine and `Engine::open` the directory again.
    Closed,
    /// The engine failed earlier, and this request had not been acknowledged: it may or may
    /// not be in the log (a reopen tells). Requests handed to the sync before a failed write
    /// complete with their own sync's outcome; every one after the failure reports it. The
    /// engine refuses further requests until it is reopened, which recovers from what is on
    /// disk.
    ///
    /// It holds the cause, also given by [`source`](std::error::Error::source): most often the
    /// [`Error::Io`] of the write or sync that failed (whose own `source` is the operating
    /// system's error), else [`Error::Panicked`] or [`Error::Stalled`]. The cause is never
    /// itself `Failed`. (The tickets that a failed write or sync fails report its error
    /// itself, not wrapped.)
    Failed(Arc<Error>),
    /// A thread of the engine's pipeline panicked: a bug in mergelog (the panic message went to
    /// stderr; please report it). The engine fails with it as the cause of [`Error::Failed`]
    /// rather than leave tickets hanging. Reopen the directory: recovery keeps every
    /// acknowledged write.
    Panicked {
        /// Which thread: `"flusher"`, `"syncer"` or `"compactor"` (`Compaction::Auto`'s).
        thread: &'static str,
    },
    /// `close` gave up on a producer that claimed ring space for a request but did not
    /// publish it (a thread stopped inside `put`, `delete`, `merge`, `get` or `write`:
    /// preempted for long, frozen by a debugger or a signal handler). The engine fails with it as the cause
    /// of [`Error::Failed`]: the requests before `position` complete as usual; that request
    /// and every one after it were not written, and their tickets fail. Reopen the directory
    /// and submit them again.
    Stalled {
        /// The ring position of the claim that was never published.
        position: u64,
        /// How long the flusher waited for it after `close`.
        waited: Duration,
    },
    /// The value of this `GetTicket` was already taken by an earlier wait that returned it:
    /// a get's value is handed out once. Keep the value from the first wait.
    ValueTaken,
    /// Another engine (in this or another process) holds the directory's lock file, or an
    /// incremental backup whose earlier backup it is (`Engine::backup_since`) holds it shared.
    /// One engine per directory: share it between threads (it is `Send + Sync`), or close
    /// the other one first (or wait for the backup). Holds the directory.
    Locked(PathBuf),
    /// An I/O error on a named file: at open (making, reading or repairing the log), in a
    /// reader, follower, consumer commit, retirement or backup (that call failed, nothing
    /// else), or through a ticket when a write or sync of the log failed (the engine has
    /// then failed: later calls get [`Error::Failed`]; close, drop and reopen it). The
    /// operating system's error says what to fix (permissions, a missing path, the disk).
    Io {
        /// What mergelog was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The bytes on disk are not a valid log at `offset` of `path` (a segment, or a side
    /// file: the request ids' `ids`, a consumer's position), found by an open, a reader or a
    /// follower. Nothing was changed. `mergelog verify DIR` says what an open would do;
    /// restore the file from a backup (`Engine::backup`), or, for damage in a segment,
    /// open with `RecoveryMode::PointInTime` to cut the log there, losing what follows.
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Opening found damage in the last segment that is not a torn tail: batches after it were
    /// durable (valid frames follow it further than a crash can leave undurable frames, or the
    /// log was closed cleanly past it), so cutting the log there would lose acknowledged
    /// writes. Nothing was changed. Restore the segment from a copy, or accept the loss by
    /// opening with `RecoveryMode::PointInTime`.
    DamagedHistory {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What was wrong, and what follows it.
        reason: String,
        /// The first batch that would be lost (the damaged one).
        first_lost: u64,
        /// The last batch known to have been durable after it.
        last_lost: u64,
    },
    /// A `wait_timeout` (of a `Ticket`, `GetTicket` or `IdTicket`) ran out before the request
    /// completed; the request goes on, and the ticket can be waited on again.
    Timeout,
    /// A ticket's request is durable, but it was looked at so long after it completed
    /// (more than 65,536 windows later) that the engine no longer remembers which batch it
    /// was written in. Nothing failed; wait on or poll a ticket as it completes to get its
    /// batch.
    SeqUnknown {
        /// The ticket's position.
        position: u64,
    },
    /// A follower, or `LogReader::batches_from`, asked for a batch that `Engine::retire_before`
    /// (or compaction) has removed from the log. The batches from `seq` to before `first`
    /// are gone: rebuild what they fed from a snapshot that holds them (or a backup), then
    /// go on from `first`.
    Retired {
        /// The batch asked for.
        seq: crate::Seq,
        /// The first batch the log still holds.
        first: crate::Seq,
    },
    /// `LogReader::batches_from` asked for batches from `seq`, past the end of the log, whose
    /// next batch is `next`: the batches before `seq` that the caller counts on are not in
    /// the log (a position taken from another log, or a log a lossy recovery cut: with
    /// `Durability::NoSync`, or `RecoveryMode::PointInTime`). Rebuild what the position
    /// stands for from this log (its first batch, or a snapshot of it).
    PastEnd {
        /// The batch asked for.
        seq: crate::Seq,
        /// The log's next batch: one past its last.
        next: crate::Seq,
    },
    /// Batch `seq`, which this directory follower (`LogReader::follow`, or a consumer made by
    /// `LogReader::consumer`) yielded, is no longer in the log as it was yielded: the log was
    /// rewound under the follower. An open with a lossy recovery (`RecoveryMode::PointInTime`
    /// after damage before it; `Durability::NoSync`, or batches read before they were
    /// durable, after a power loss) cut the log before it, and the engine writes other batches
    /// under its number and the ones after it. The follower yields nothing more: every later
    /// call returns this error (and such a consumer refuses commits). What was built from
    /// the batches it yielded may hold batches the log no longer has: re-read from a
    /// consistent point (a snapshot taken before the cut, or the log from its first batch;
    /// a consumer opened again resumes at its position, which the open set back if it lay
    /// past the log's end).
    Rewound {
        /// The last batch the follower yielded.
        seq: crate::Seq,
        /// The segment file it was read from.
        path: PathBuf,
    },
    /// A consumer call was refused (`Engine::consumer`, `Consumer::commit`,
    /// `Engine::remove_consumer`): an invalid name, a second handle of an open consumer, a
    /// commit past what is yielded or durable, the removal of an open consumer. Nothing
    /// changed; `reason` says which (use another name, close the other handle, commit only
    /// a batch yielded).
    Consumer {
        /// The consumer's name, as given.
        name: String,
        /// What was refused, and why.
        reason: String,
    },
    /// A merge (`Engine::merge`, `WriteBatch::merge`) was refused, and nothing of its request
    /// was applied (a write batch holding it applies none of its operations). At submit: no
    /// `Config::merge` operator, or an operand the operator cannot take (an `Add`, `Max` or
    /// `Min` operand that is not 8 bytes). In the flusher, for this request's ticket only:
    /// the value the merge would apply to is not one the operator takes (an `Add` onto a
    /// value that is not 8 bytes), a `Custom` operator's result is longer than
    /// `Config::value_len_max`, or the operator panicked. The engine goes on: configure an
    /// operator, or submit an operand (onto a value) the operator takes.
    MergeRefused {
        /// The operator configured: `Some("add")`, `"max"`, `"min"`, `"append"` or
        /// `"custom"`; `None` when `Config::merge` sets none.
        operator: Option<&'static str>,
        /// What was wrong.
        reason: String,
    },
    /// `Engine::compact` on an engine opened with `Compaction::Off` (a log whose replay must
    /// keep every event). Nothing was done; history goes only by `Engine::retire_before`
    /// (or open with another `Config::compaction`).
    CompactionOff,
    /// The log could not make its next segment: the disk (or the user's quota) has no room
    /// for it. Nothing of this write was applied, and the engine has not failed: it refuses
    /// writes (`put`, `delete`, `merge`, `write`, and `flush`) with this error until
    /// [`Engine::resume`](crate::Engine::resume) finds room. Reads, gets, followers,
    /// `retire_before` and `compact` go on. Make room (free the disk, or call
    /// `retire_before`; with `Config::recycle_segments` the retired files are reused without
    /// needing room), then call `resume` and submit the refused writes again. A `flush` whose
    /// position is past the first refused write fails with it too, so a caller who drops its
    /// tickets still learns of it. `source()` is the [`Error::Io`] the preparation met
    /// (`ENOSPC` or `EDQUOT`).
    NoSpace {
        /// The error the log met making the segment (an [`Error::Io`] naming the file).
        cause: Arc<Error>,
    },
}

/// Which limit a request refused with [`Error::RequestTooLarge`] exceeds. Its `Display` is
/// the limit as the error's message names it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestLimit {
    /// `Config::batch_bytes_max` (less a ring record's header): the largest request when
    /// it is below a ring record.
    BatchBytesMax,
    /// A ring record: a quarter of `Config::ring_bytes` (less its header).
    RingRecord,
    /// One frame in an empty segment (`Config::segment_bytes` less the segment's header):
    /// never reached by a request `Config::validate` accepts; refused rather than written
    /// past a segment's end.
    SegmentBytes,
}

impl fmt::Display for RequestLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestLimit::BatchBytesMax => "batch_bytes_max",
            RequestLimit::RingRecord => "ring record (ring_bytes / 4)",
            RequestLimit::SegmentBytes => "segment_bytes (one frame in an empty segment)",
        })
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True for the errors that ask the caller to back off and retry later, nothing being
    /// wrong with the request: [`Error::Busy`] (the ring is full) and [`Error::Throttled`]
    /// (a consumer lags).
    pub fn is_back_off(&self) -> bool {
        matches!(self, Error::Busy | Error::Throttled { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KeyTooLong { len, max } => write!(
                f,
                "key is {len} bytes, over the limit key_len_max = {max}; shorten the key or raise Config::key_len_max"
            ),
            Error::ValueTooLong { len, max } => write!(
                f,
                "value is {len} bytes, over the limit value_len_max = {max}; split the value or raise Config::value_len_max"
            ),
            Error::RequestTooLarge { len, max, limit } => write!(
                f,
                "request encodes to {len} bytes, over the {limit} limit of {max} bytes; split it or raise the limit"
            ),
            Error::EmptyBatch => write!(f, "write batch holds no operations"),
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            Error::Busy => write!(
                f,
                "ingest ring is full (Backpressure::Reject); shed load or retry later"
            ),
            Error::Throttled { consumer, lag } => {
                // Every measure the limit sets: with an age limit the age is what usually
                // trips it, and a message without it would not say why.
                write!(f, "throttled: consumer {consumer} lags")?;
                if let Some(n) = lag.batches {
                    write!(f, " {n} batches")?;
                }
                if let Some(n) = lag.bytes {
                    write!(f, " ({n} bytes)")?;
                }
                if let Some(age) = lag.age {
                    write!(f, ", its oldest unprocessed one {age:?} old")?;
                }
                write!(
                    f,
                    ", past Config::consumer_lag_max (Backpressure::Reject); retry once it has caught up"
                )
            }
            Error::Closed => write!(
                f,
                "engine is closed: it takes no more requests (reads go on); Engine::open the \
                 directory again to write"
            ),
            Error::Failed(cause) => write!(
                f,
                "engine failed earlier and is read-only until reopened: {cause}"
            ),
            Error::Panicked { thread } => write!(f, "the {thread} thread panicked"),
            Error::Stalled { position, waited } => write!(
                f,
                "close gave up waiting for a request at ring position {position}: its producer \
                 claimed the space but had not published it {waited:?} after close (a thread \
                 stopped inside put/delete/merge/get/write); that request and every one after it were \
                 not written"
            ),
            Error::ValueTaken => write!(f, "the value of this get was already taken"),
            Error::Locked(path) => write!(
                f,
                "{} is locked by another engine, or by an incremental backup linking its \
                 files (`backup_since`); close it first, or wait for the backup",
                path.display()
            ),
            Error::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            Error::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "corrupt log: {} at offset {offset}: {reason}",
                path.display()
            ),
            Error::DamagedHistory {
                path,
                offset,
                reason,
                first_lost,
                last_lost,
            } => write!(
                f,
                "damaged log: {} at offset {offset}: {reason}; cutting the log there would lose durable batches {first_lost}..={last_lost}, so nothing was changed (restore the file, or open with RecoveryMode::PointInTime to accept the loss)",
                path.display()
            ),
            Error::Timeout => write!(
                f,
                "timed out waiting for the request to complete; it goes on: wait on the ticket again"
            ),
            Error::SeqUnknown { position } => write!(
                f,
                "the request at position {position} is durable, but its batch is no longer remembered (the ticket was looked at more than 65,536 windows after it completed)"
            ),
            Error::Retired { seq, first } => write!(
                f,
                "batch {seq} was retired: the log now starts at batch {first}; restore from the snapshot the retirement was taken after, then read or follow from {first}"
            ),
            Error::PastEnd { seq, next } => write!(
                f,
                "batch {seq} is past the end of the log, whose next batch is {next}: the log does not hold the batches before it (was the position taken from another log, or the log cut by a lossy recovery?)"
            ),
            Error::Rewound { seq, path } => write!(
                f,
                "batch {seq}, which this follower yielded from {}, is no longer in the log as yielded: an open with a lossy recovery cut the log before it and writes other batches under its number; re-read from a consistent point",
                path.display()
            ),
            Error::Consumer { name, reason } => write!(f, "consumer {name:?}: {reason}"),
            // With no operator configured there is none to name: the reason says what to set.
            Error::MergeRefused {
                operator: None,
                reason,
            } => write!(
                f,
                "merge refused: {reason}; nothing of the request was applied"
            ),
            Error::MergeRefused {
                operator: Some(operator),
                reason,
            } => write!(
                f,
                "merge refused by the {operator} operator: {reason}; nothing of the request was applied"
            ),
            Error::CompactionOff => write!(
                f,
                "compaction is off (Config::compaction = Compaction::Off): nothing was compacted"
            ),
            Error::NoSpace { cause } => write!(
                f,
                "no room on the disk for the log's next segment ({cause}): writes are not applied until Engine::resume finds room (free the disk or retire segments, then resume)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(&**source),
            Error::Failed(cause) => Some(&**cause),
            Error::NoSpace { cause } => Some(&**cause),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::failed;
    use std::error::Error as _;
    use std::path::Path;

    /// The error of a failed sync, as `Segment::sync` gives it.
    fn eio() -> Error {
        Error::io(
            "sync segment",
            "/log/00000001.seg",
            io::Error::from_raw_os_error(libc::EIO),
        )
    }

    /// A failure caused by an I/O error keeps it: `source()` is that `Io` error, and its own
    /// `source()` the operating system's error.
    #[test]
    fn a_failure_gives_its_io_cause_as_source() {
        let e = failed(&eio());
        let cause = e.source().expect("Failed has a source");
        match cause.downcast_ref::<Error>() {
            Some(Error::Io { op, path, .. }) => {
                assert_eq!(*op, "sync segment");
                assert_eq!(path, Path::new("/log/00000001.seg"));
            }
            other => panic!("the source is {other:?}, not the Io error"),
        }
        let os = cause
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the Io error's source is the io::Error");
        assert_eq!(os.raw_os_error(), Some(libc::EIO));
        assert!(os.source().is_none(), "{os:?}");
    }

    /// The sticky error wraps the error that failed the engine once: reporting it again (or a
    /// `Failed` recorded as the failure) never nests a `Failed` in another.
    #[test]
    fn failed_of_failed_is_not_nested() {
        let once = failed(&eio());
        let twice = failed(&once);
        for e in [&once, &twice] {
            match e {
                Error::Failed(cause) => assert!(
                    matches!(**cause, Error::Io { .. }),
                    "the cause is {cause:?}"
                ),
                other => panic!("{other:?} is not Failed"),
            }
        }
        assert_eq!(once.to_string(), twice.to_string());
        let panicked = Error::Failed(Arc::new(Error::Panicked { thread: "syncer" }));
        match failed(&panicked) {
            Error::Failed(cause) => {
                assert!(
                    matches!(*cause, Error::Panicked { thread: "syncer" }),
                    "{cause:?}"
                )
            }
            other => panic!("{other:?} is not Failed"),
        }
    }

    /// Display says the engine failed and names the cause, in the cause's own words.
    #[test]
    fn a_failure_displays_its_cause() {
        let io = eio();
        assert_eq!(
            failed(&io).to_string(),
            format!("engine failed earlier and is read-only until reopened: {io}")
        );
        assert!(io
            .to_string()
            .starts_with("sync segment /log/00000001.seg: "));
        assert_eq!(
            failed(&Error::Panicked { thread: "flusher" }).to_string(),
            "engine failed earlier and is read-only until reopened: the flusher thread panicked"
        );
        let stalled = Error::Stalled {
            position: 4096,
            waited: Duration::from_millis(200),
        };
        assert_eq!(
            stalled.to_string(),
            "close gave up waiting for a request at ring position 4096: its producer claimed the \
             space but had not published it 200ms after close (a thread stopped inside \
             put/delete/merge/get/write); that request and every one after it were not written"
        );
        assert!(stalled.source().is_none());
    }

    /// The two errors a caller meets most in normal use say what to do next: a timed-out
    /// wait that the request goes on (wait again), a closed engine that only a new open takes
    /// requests (before: "timed out waiting for the request to become durable", "engine is
    /// closed").
    #[test]
    fn a_timeout_and_a_closed_engine_say_what_to_do() {
        let timeout = Error::Timeout.to_string();
        assert!(
            timeout.contains("goes on") && timeout.contains("wait on the ticket again"),
            "{timeout}"
        );
        let closed = Error::Closed.to_string();
        assert!(
            closed.contains("closed") && closed.contains("Engine::open"),
            "{closed}"
        );
    }

    /// A throttled write's message gives the slowest consumer's lag in every measure the
    /// limit sets: with an age limit (alone, or with others) the age of its oldest
    /// unprocessed batch, which is what tripped it; without a bytes or age limit, not those.
    #[test]
    fn a_throttled_write_names_the_lag_that_tripped_it() {
        let throttled = |batches, bytes, age| Error::Throttled {
            consumer: "indexer".into(),
            lag: crate::config::ConsumerLag {
                batches: Some(batches),
                bytes,
                age,
            },
        };
        let age_only = throttled(3, None, Some(Duration::from_millis(5200))).to_string();
        assert_eq!(
            age_only,
            "throttled: consumer indexer lags 3 batches, its oldest unprocessed one 5.2s old, \
             past Config::consumer_lag_max (Backpressure::Reject); retry once it has caught up"
        );
        let all = throttled(700, Some(1 << 20), Some(Duration::from_secs(2))).to_string();
        assert_eq!(
            all,
            "throttled: consumer indexer lags 700 batches (1048576 bytes), its oldest \
             unprocessed one 2s old, past Config::consumer_lag_max (Backpressure::Reject); \
             retry once it has caught up"
        );
        let batches = throttled(513, None, None).to_string();
        assert_eq!(
            batches,
            "throttled: consumer indexer lags 513 batches, past Config::consumer_lag_max \
             (Backpressure::Reject); retry once it has caught up"
        );
    }
}
