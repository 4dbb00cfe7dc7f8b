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
//! printed; exit 2: the directory cannot be used. Run it on a log no engine is writing to: a frame being written counts as
//! damage.

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
struct Damage {
    path: PathBuf,
    offset: u64,
    reason: String,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let dir = &args.dir;
    let damage = match logdir::open(dir, RecoveryMode::AbsoluteConsistency) {
        Ok(reader) => {
            let summary = summarize(&reader);
            let found = match engine_refuses(&reader)? {
                Some(d) => Some(d),
                None => match tail_garbage(&reader, summary.last_end.clone())? {
                    Some(d) => Some(d),
                    None => consumer_files(&reader)?,
                },
            };
            match found {
                None => {
                    logdir::print(&format!(
                        "clean: {}: {} segments, {} batches{}, {} records, {} frame bytes\n",
                        dir.display(),
                        reader.segment_count(),
                        summary.batches,
                        summary.seq_range(),
                        summary.records,
                        summary.bytes,
                    ))?;
                    return Ok(ExitCode::SUCCESS);
                }
                Some(d) => d,
            }
        }
        Err(OpenError::Corrupt {
            path,
            offset,
            reason,
        }) => Damage {
            path,
            offset,
            reason,
        },
        Err(OpenError::Other(e)) => return Err(e),
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
    Ok(ExitCode::from(EXIT_FAILURE))
}

struct Summary {
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
        Refused::SideFile(path, offset, reason) => Damage {
            path,
            offset,
            reason,
        },
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
    let Some((last, _size)) = reader.segment_files().pop() else {
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
    let mut file = std::fs::File::open(path)?;
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
