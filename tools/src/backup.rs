//! `mergelog backup DIR DEST`: a copy of a log that an engine opens as the log was when the
//! copy began, taken while an engine in another process may be writing it
//! (`LogReader::backup`).

use crate::error::CliError;
use crate::history::Verdict;
use crate::logdir::{self, OpenError};
use clap::Args;
use mergelog::RecoveryMode;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The log directory.
    dir: PathBuf,
    /// The backup's directory: must not exist; made only once the copy is whole.
    dest: PathBuf,
    /// An earlier backup: segment files it holds exactly as this backup would write them
    /// are linked (hard links, on the same file system; copied on another), not copied (an
    /// incremental backup). Refused (exit 2) if an engine has EARLIER open (the log itself,
    /// say).
    #[arg(long, value_name = "EARLIER")]
    since: Option<PathBuf>,
}

pub fn run(args: BackupArgs) -> Result<(), CliError> {
    // The default recovery mode, as `Engine::open` reads a log: a torn tail ends it (the
    // backup then holds the valid part, and says so); damage before it refuses the copy.
    let reader = match logdir::open(&args.dir, RecoveryMode::default()) {
        Ok(r) => r,
        Err(OpenError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            return Err(CliError::new(format!(
                "the log is damaged at {} offset {offset}: {reason}; `mergelog verify` \
                 says more, and a backup of the part before it needs a reader opened with \
                 point-in-time recovery",
                path.display()
            )))
        }
        Err(OpenError::Other(e)) => return Err(e),
    };
    check_paths(&args)?;
    let made = match &args.since {
        Some(earlier) => reader.backup_since(earlier, &args.dest),
        None => reader.backup(&args.dest),
    };
    let backup = made.map_err(|e| {
        let message = format!(
            "back up {} into {}: {e}",
            args.dir.display(),
            args.dest.display()
        );
        match e {
            // The first write into DEST's directory, the staging directory beside it (a
            // file system that makes none, as /proc; no permission): the output path is
            // unusable, as `check_paths` finds of what it can tell beforehand. So is an
            // EARLIER an engine opened since `check_paths` looked, or whose `LOCK` cannot be
            // opened or made.
            mergelog::Error::Io {
                op: "make backup directory" | EARLIER_REFUSED | "lock earlier backup",
                ..
            } => CliError::usage(message),
            // Damage beside the segments that an engine opened on the backup would refuse
            // (the request ids file): not copied, nothing made.
            mergelog::Error::Corrupt {
                path,
                offset,
                reason,
            } => CliError::new(format!(
                "the log is damaged: {} at offset {offset}: {reason}; no backup was made \
                 (an engine would refuse it as it refuses the log; `mergelog verify` says more)",
                path.display()
            )),
            _ => CliError::new(message),
        }
    })?;
    let live = crate::history::in_use(&args.dir);
    let torn = match reader.damage() {
        Some(d) => format!(
            "\nnote: the log's tail is torn at {} offset {} ({}); the backup holds the valid \
             part before it",
            d.path.display(),
            d.offset,
            d.reason
        ),
        // A torn write's remains after the last frame, which a reader does not look at (an
        // engine may be writing there) and the engine's open cuts off: asked of a log no
        // engine has open, as `inspect` and `dump` ask (a pass over the log's frames).
        None if !live => match crate::history::engine_open(&args.dir) {
            Ok(Verdict::Opens(Some(d))) => format!(
                "\nnote: the log's last segment holds a torn write's remains at {} offset {} \
                 ({}), which the engine's open cuts off; the backup holds the frames before it",
                d.path.display(),
                d.offset,
                d.reason
            ),
            // Refusals the backup did not meet (a clean-close mark naming later batches)
            // are `verify`'s to report; the backup holds what a reader reads.
            _ => String::new(),
        },
        None => String::new(),
    };
    let live = if live {
        "\nnote: an engine has the log open: the copy holds what its files held when it began, \
         which may include batches that engine had not yet made durable"
    } else {
        ""
    };
    logdir::print(&format!(
        "backed up {} into {}: batches {}..{} in {} segments ({} bytes copied{}), {} \
         consumer positions, {} request ids of retired segments{torn}{live}\n",
        args.dir.display(),
        backup.dir.display(),
        backup.first_seq,
        backup.next_seq.get().saturating_sub(1),
        backup.segments,
        backup.bytes,
        match &args.since {
            Some(earlier) => format!(
                "; {} segments linked from {}",
                backup.linked,
                earlier.display()
            ),
            None => String::new(),
        },
        backup.consumers,
        backup.carried_ids,
    ))
}

/// Refuses, as unusable arguments (exit 2, the tools' convention for a missing directory and
/// an unwritable output path), what the backup would refuse or fail at before copying
/// anything: a `DEST` that exists or names no directory, one whose parent is missing or not a
/// directory, and an `EARLIER` that is not a directory or that an engine has open.
fn check_paths(args: &BackupArgs) -> Result<(), CliError> {
    let dest = &args.dest;
    let refuse = |why: String| Err(CliError::usage(format!("{}: {why}", dest.display())));
    if std::fs::symlink_metadata(dest).is_ok() {
        return refuse(
            "the destination exists; a backup makes a new directory: name one that does not \
             exist yet"
                .into(),
        );
    }
    if dest.file_name().is_none() {
        return refuse("the destination names no directory".into());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return refuse(format!("{} is not a directory", parent.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse(format!("directory {} does not exist", parent.display()))
        }
        Err(e) => return refuse(format!("cannot use {}: {e}", parent.display())),
    }
    if let Some(earlier) = &args.since {
        if !std::fs::metadata(earlier).is_ok_and(|m| m.is_dir()) {
            return Err(CliError::usage(format!(
                "--since {}: the earlier backup is not a directory",
                earlier.display()
            )));
        }
        // An engine writes into its log's segment files, and would into a backup's links to
        // them: what an engine has open (the log itself, a restored backup in service)
        // cannot serve as an earlier backup (the library refuses it too, when it takes its
        // hold: an engine that opens it after this look is refused there, exit 2 as well).
        if crate::history::in_use(earlier) {
            return Err(CliError::usage(format!(
                "--since {}: an engine has it open (its LOCK is held), so it cannot serve as \
                 an earlier backup; name a backup no engine has open",
                earlier.display()
            )));
        }
    }
    Ok(())
}

/// The operation the library names when it refuses an earlier backup (not a directory, or
/// an engine has it open).
const EARLIER_REFUSED: &str = "back up log since an earlier backup";
