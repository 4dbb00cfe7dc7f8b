//! What a read-only open of a log cannot tell: whether the place where its last segment's
//! frames stop (damage, or their end) lost durable history, which `Engine::open` refuses
//! (`Error::DamagedHistory`) instead of cutting it off as a torn tail, and whether the files
//! the engine decodes beside the segments (the clean-close mark, the carried request ids) are
//! sound. A reader's scan does not look for that evidence (a frame may be being written by
//! another process right now); `LogReader::check`, made for a log no engine is writing, judges
//! it exactly as the engine's open does, changing nothing. The tools ask it as for a log
//! written with the engine's default durability (syncs), and only of a log no engine has open
//! ([`in_use`]).

use crate::error::CliError;
use mergelog::{Durability, Error, LogReader, RecoveryMode};
use std::path::{Path, PathBuf};

/// Durable history lost where the last segment's frames stop.
#[derive(Debug, PartialEq, Eq)]
pub struct Loss {
    /// The segment, and where its frames stop.
    pub path: PathBuf,
    pub offset: u64,
    /// What is wrong there, and the evidence that it was durable.
    pub reason: String,
    /// The first and the last batch lost.
    pub first_lost: u64,
    pub last_lost: u64,
}

/// What the engine's open would refuse in `dir` that a reader's open did not: lost durable
/// history, or a damaged file beside the segments (path, offset, reason).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Lost(Loss),
    SideFile(PathBuf, u64, String),
    /// Damage to a segment that the engine does not cut off as a torn tail (before the last
    /// segment's frames, a bad header).
    Segment(PathBuf, u64, String),
}

/// Whether an engine (in any process) has `dir` open now: it holds an exclusive `flock` on
/// `DIR/LOCK` for as long as it does, so a shared one cannot be taken. The shared lock taken to
/// find out is let go at once: held, it would make an engine's open in the meantime fail
/// (`Error::Locked`). A missing or unreadable lock file is no engine's: an engine creates it
/// and keeps it open.
pub fn in_use(dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    // Through `with_room`, as the library opens the log's files: with the reader's segments
    // taking every descriptor the soft limit allows, a plain open failed with `EMFILE`, and
    // the log was taken for one no engine has open. Without waiting: a FIFO under the name
    // (which an engine opens read-write, and locks, at once) blocked a plain open until a
    // writer came.
    let lock = dir.join("LOCK");
    let Ok(file) = crate::logdir::open_nonblocking(&lock) else {
        return false;
    };
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call; no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Asks `LogReader::check` about `dir`, whose segments a reader opened; `None` if the engine
/// would open it too, cutting off the torn tail the reader found, if any.
pub fn engine_refuses(dir: &Path) -> Result<Option<Refused>, CliError> {
    Ok(judge(dir)?.err())
}

/// What the engine's open (the default recovery, a log written with syncs) would do with
/// `dir`: open it, cutting off the torn tail named, if any (`Ok`: a reader does not look for
/// every such tail, the bytes after the last frame of the last segment among them), or
/// refuse it (`Err`).
pub fn judge(dir: &Path) -> Result<Result<Option<mergelog::Damage>, Refused>, CliError> {
    match LogReader::check(dir, RecoveryMode::TolerateCorruptedTail, Durability::Sync) {
        Ok(cut) => Ok(Ok(cut)),
        Err(Error::DamagedHistory {
            path,
            offset,
            reason,
            first_lost,
            last_lost,
        }) => Ok(Err(Refused::Lost(Loss {
            path,
            offset,
            reason,
            first_lost,
            last_lost,
        }))),
        Err(Error::Corrupt {
            path,
            offset,
            reason,
        }) => Ok(Err(if path.extension().is_none_or(|e| e != "seg") {
            Refused::SideFile(path, offset, reason)
        } else {
            Refused::Segment(path, offset, reason)
        })),
        Err(e) => Err(CliError::new(format!("check {}: {e}", dir.display()))),
    }
}
