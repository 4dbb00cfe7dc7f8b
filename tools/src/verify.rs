//! `mergelog verify DIR`: the strictest check of a log, as `Engine::open` with
//! `RecoveryMode::AbsoluteConsistency` would make it, without changing a byte.
//!
//! Every segment header, every frame's CRC, record structure, sort order and batch
//! sequence, and the bytes after the last frame of the last segment (which must be the
//! preallocated zeros; anything else is the remains of a torn write; not checked in a reused
//! segment, where the old bytes of its earlier life lie there); whether the end of the frames
//! lost durable history (`LogReader::check`); and the files beside the segments that the engine
//! reads at open, each consumer's position (`consumer-*`) and the carried request ids
//! (`ids`). Exit 0: clean; exit 1: damaged, and the first bad byte's file and offset are
//! printed; exit 2: the directory cannot be used. A log an engine has open (it holds the
//! `LOCK` file) is checked as a reader would check it, and the report says so: its last
//! segment is being written.

use crate::error::{CliError, Context, EXIT_FAILURE};
use crate::history::{self, Refused};
use crate::logdir::{self, OpenError, SEGMENT_HEADER_LEN};
use clap::Args;
use mergelog::{LogReader, RecoveryMode};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The log directory.
    dir: PathBuf,
}

/// Where the log stops being valid.
#[derive(Debug)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let dir = &args.dir;
    // An engine that has the log open is writing its last segment: a frame there may be half
    // written, with later ones whole (the pipeline writes several at once), which the strict
    // check would call damage and lost history. Refusing would make whoever wants to know
    // whether a running service's log is sound stop the service first; everything before the
    // live tail can still be checked as strictly as ever, so it is, and the report says so.
    let mut live = history::in_use(dir);
    let mut outcome = check(dir, live)?;
    // An engine that opened the log during the check may have been writing what it read.
    if !live && matches!(outcome, Outcome::Damaged(_)) && history::in_use(dir) {
        live = true;
        outcome = check(dir, true)?;
    }
    let note = if live {
        "note: the log is open in another process: its last segment is being written, checked \
         as a reader would (not judged: what follows the last whole frame there, the clean-close \
         mark, the ids file)\n"
    } else {
        ""
    };
    let damage = match outcome {
        Outcome::Clean(reader, summary) => {
            logdir::print(&format!(
                "clean: {}: {} segments, {} batches{}, {} records, {} frame bytes\n{note}",
                dir.display(),
                reader.segment_count(),
                summary.batches,
                summary.seq_range(),
                summary.records,
                summary.bytes,
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        Outcome::Damaged(d) => d,
    };
    logdir::print(&format!(
        "DAMAGED: {} at offset {}: {}\n",
        damage.path.display(),
        damage.offset,
        damage.reason
    ))?;
    // What survives: the valid prefix, as a point-in-time recovery would keep it.
    if let Ok(reader) = LogReader::open_with(dir, RecoveryMode::PointInTime) {
        let s = summarize(&reader);
        logdir::print(&format!(
            "valid before it: {} batches{}, {} records\n",
            s.batches,
            s.seq_range(),
            s.records
        ))?;
    }
    logdir::print(note)?;
    Ok(ExitCode::from(EXIT_FAILURE))
}

/// What the check of a log found.
pub enum Outcome {
    Clean(Box<LogReader>, Summary),
    Damaged(Damage),
}

/// Checks `dir` strictly or, when an engine has it open (`live`), as a reader would: damage
/// in the last segment ends what is read instead (it may be the frame being written), and
/// what only a closed log can be held to (the zeros after the last frame, the evidence of
/// lost durable history, the clean-close mark and the `ids` file) is left out.
pub fn check(dir: &Path, live: bool) -> Result<Outcome, CliError> {
    let mode = if live {
        RecoveryMode::TolerateCorruptedTail
    } else {
        RecoveryMode::AbsoluteConsistency
    };
    let reader = match logdir::open(dir, mode) {
        Ok(reader) => reader,
        Err(OpenError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            return Ok(Outcome::Damaged(Damage {
                path,
                offset,
                reason,
            }))
        }
        Err(OpenError::Other(e)) => return Err(e),
    };
    let summary = summarize(&reader);
    let found = if live {
        None
    } else {
        match engine_refuses(&reader)? {
            Some(d) => Some(d),
            None => tail_garbage(&reader, summary.last_end.clone())?,
        }
    };
    let found = match found {
        Some(d) => Some(d),
        None => consumer_files(&reader)?,
    };
    Ok(match found {
        None => Outcome::Clean(Box::new(reader), summary),
        Some(d) => Outcome::Damaged(d),
    })
}

/// What the batches of a clean log add up to.
pub struct Summary {
    batches: u64,
    records: u64,
    bytes: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// (segment, end of its last frame) of the last batch.
    last_end: Option<(PathBuf, u64)>,
}

impl Summary {
    fn seq_range(&self) -> String {
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
            _ => String::new(),
        }
    }
}

/// What the engine's open would refuse that the reader's did not (`LogReader::check`): lost
/// durable history where the frames stop, or a damaged clean-close mark or `ids` file.
fn engine_refuses(reader: &LogReader) -> Result<Option<Damage>, CliError> {
    Ok(history::engine_refuses(reader.dir())?.map(|r| match r {
        Refused::Lost(l) => Damage {
            path: l.path,
            offset: l.offset,
            reason: format!(
                "{} (durable batches {}..{} lost: the engine refuses to open the log)",
                l.reason, l.first_lost, l.last_lost
            ),
        },
        Refused::SideFile(path, offset, reason) | Refused::Segment(path, offset, reason) => {
            Damage {
                path,
                offset,
                reason,
            }
        }
    }))
}

/// Each consumer's position file (`consumer-*`), which the engine decodes when the consumer
/// opens or a retirement reads the positions; the first that does not decode.
fn consumer_files(reader: &LogReader) -> Result<Option<Damage>, CliError> {
    match reader.consumers() {
        Ok(_) => Ok(None),
        Err(mergelog::Error::Corrupt {
            path,
            offset,
            reason,
        }) => Ok(Some(Damage {
            path,
            offset,
            reason,
        })),
        Err(e) => Err(CliError::new(format!(
            "read the consumers of {}: {e}",
            reader.dir().display()
        ))),
    }
}

/// Walks every batch; the reader has already checked each frame and the sequence chain.
fn summarize(reader: &LogReader) -> Summary {
    let mut s = Summary {
        batches: 0,
        records: 0,
        bytes: 0,
        first_seq: None,
        last_seq: None,
        last_end: None,
    };
    for b in reader.batches() {
        s.batches += 1;
        s.records += b.len() as u64;
        s.bytes += b.frame_len() as u64;
        s.first_seq.get_or_insert(b.seq().get());
        s.last_seq = Some(b.seq().get());
        s.last_end = Some((b.segment().to_owned(), b.offset() + b.frame_len() as u64));
    }
    s
}

/// The check a reader skips (an engine might be writing there): after the last frame of the
/// last segment, only zeros. Not for a reused (recycled) segment: past its frames' end
/// marker lie the old bytes of its earlier life, which the engine zeroes when it opens the
/// log (docs/FORMAT.md, "Recycled segments").
fn tail_garbage(
    reader: &LogReader,
    last_end: Option<(PathBuf, u64)>,
) -> Result<Option<Damage>, CliError> {
    let Some(last) = reader.segments().pop().map(|s| s.path) else {
        return Ok(None);
    };
    if logdir::is_recycled(&last) {
        return Ok(None);
    }
    let end = match last_end {
        Some((seg, end)) if seg == last => end,
        // The last segment holds no frame: its written part ends with the header.
        _ => SEGMENT_HEADER_LEN,
    };
    first_nonzero(&last, end)
        .map(|found| {
            found.map(|at| Damage {
                path: last.clone(),
                offset: end,
                reason: format!(
                    "non-zero byte at offset {at} after the last frame (the remains of a torn \
                     write; the default recovery would cut it off)"
                ),
            })
        })
        .context(|| format!("read {}", last.display()))
}

/// Offset of the first non-zero byte of `path` at or after `from`.
fn first_nonzero(path: &Path, from: u64) -> std::io::Result<Option<u64>> {
    let mut file = logdir::open_nonblocking(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
}
