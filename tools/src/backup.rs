//! `mergelog backup DIR DEST`: a copy of a log that an engine opens as the log was when the
//! copy began, taken while an engine in another process may be writing it
//! (`LogReader::backup`).

use crate::error::CliError;
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
    /// incremental backup). Refused if an engine has EARLIER open (the log itself, say).
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
    let made = match &args.since {
        Some(earlier) => reader.backup_since(earlier, &args.dest),
        None => reader.backup(&args.dest),
    };
    let backup = made.map_err(|e| {
        CliError::new(format!(
            "back up {} into {}: {e}",
            args.dir.display(),
            args.dest.display()
        ))
    })?;
    let torn = match reader.damage() {
        Some(d) => format!(
            "\nnote: the log's tail is torn at {} offset {} ({}); the backup holds the valid \
             part before it",
            d.path.display(),
            d.offset,
            d.reason
        ),
        None => String::new(),
    };
    let live = if crate::history::in_use(&args.dir) {
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
