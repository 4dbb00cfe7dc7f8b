//! `mergelog dump DIR [--from SEQ] [--json]`: every record in log order, one per line.
//!
//! Text: `SEQ<TAB>put<TAB>KEY<TAB>VALUE` or `SEQ<TAB>delete<TAB>KEY`, keys and values shown
//! as text when they are printable UTF-8 and as `0x` + hex otherwise (`--encoding`).
//! JSON lines: `{"seq":N,"op":"put","key":"..","value":".."}`, a delete's value `null`;
//! keys and values in hex unless `--encoding utf8` (lossy) or `auto`.
//!
//! The log is read as the engine would open it: a torn tail is where it ends (noted on
//! stderr, exit 0), bytes after the last frame that are not the zeros (a torn write's
//! remains, which the engine's open cuts off) included. Other damage (before the tail, or a
//! bad segment header) makes the engine refuse to open the log: the records before it are
//! dumped, the damage is reported, and the exit code is 1. So does damage at the tail that
//! evidence shows cut durable history (valid frames well past it, or a clean-close mark
//! naming a later batch: `LogReader::check`), which the engine refuses (`DamagedHistory`)
//! rather than cut off. A log an engine has open
//! (it holds the `LOCK` file) is read as a reader would read it, up to the last whole frame
//! of the segment being written, and stderr says so: no evidence of lost history is sought
//! there, as a frame may be mid-write.

use crate::error::{CliError, EXIT_FAILURE};
use crate::history::{self, Loss, Refused, Verdict};
use crate::inspect;
use crate::logdir::{self, Encoding, OpenError};
use clap::Args;
use mergelog::{RecordOp, RecoveryMode};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The log directory.
    pub dir: PathBuf,
    /// Start at the first batch whose sequence number is at least SEQ (batches count from
    /// 1; 0: the log's first batch).
    #[arg(
        long,
        value_name = "SEQ",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub from: u64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// How keys and values are shown [default: auto, hex with --json].
    #[arg(long, value_enum)]
    pub encoding: Option<Encoding>,
}

/// What [`dump`] found besides the records it wrote.
#[derive(Debug)]
pub struct Dumped {
    /// The notes for stderr, in order: where the records end and why (damage: file, offset,
    /// reason), an empty dump, a log in use.
    pub notes: Vec<String>,
    /// The engine would refuse the log (exit 1): damage before its tail, or durable history
    /// lost.
    pub refused: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    op: &'static str,
    key: &'a str,
    value: Option<&'a str>,
}

pub fn run(args: DumpArgs) -> Result<ExitCode, CliError> {
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let dumped = dump(&args, &mut out)?;
    drop(out);
    for n in &dumped.notes {
        note!("{n}");
    }
    Ok(if dumped.refused {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes the records of `args.dir` to `out` as `mergelog dump` does (a closed pipe ends the
/// records quietly), and returns the notes it prints after them and whether the engine would
/// refuse the log.
///
/// # Errors
///
/// A `CliError` for a directory that cannot be read as a log, or a failed write to `out`.
pub fn dump(args: &DumpArgs, out: &mut impl Write) -> Result<Dumped, CliError> {
    let mut notes = Vec::new();
    // `refused`: whether the engine would refuse the log; `lost`, the durable history a
    // tail damage (or the end of the frames) cut, which it refuses too.
    // `live`: an engine has the log open and is writing its last segment, where a frame may
    // be half written with whole ones after it (the pipeline writes several at once): that is
    // no evidence of lost history, and the records are dumped as a reader sees them.
    let mut live = history::in_use(&args.dir);
    // A log the engine refuses is read as inspect reads it, up to its damage (`damage`: file,
    // offset, reason): with a point-in-time reader or, when a file fails every reader's open,
    // one of the segments before it, which reads a directory of links (`_links`, kept while
    // it reads).
    let mut damage = None;
    let mut _links = None;
    let (reader, refused, lost) = match logdir::open(&args.dir, RecoveryMode::TolerateCorruptedTail)
    {
        Ok(r) if live => (r, false, None),
        Ok(r) => match history::engine_open(&args.dir)? {
            // An engine that opened the log during the check may have been writing what it
            // read.
            Verdict::Refuses(Refused::Lost(_)) | Verdict::Opens(Some(_))
                if history::in_use(&args.dir) =>
            {
                live = true;
                (r, false, None)
            }
            Verdict::Refuses(Refused::Lost(loss)) => (r, false, Some(loss)),
            // A torn tail the reader did not see: bytes after the last frame that are not
            // the zeros (the remains of a torn write; a reader does not look there, as an
            // engine may be writing), which the engine's open cuts off. The records are all
            // read; the note says where the tail is, as of a torn last frame.
            Verdict::Opens(Some(cut)) if r.damage().is_none() => {
                damage = Some((cut.path.display().to_string(), cut.offset, cut.reason));
                (r, false, None)
            }
            // A damaged file beside the segments: `verify` names it; the records are sound.
            _ => (r, false, None),
        },
        Err(OpenError::Corrupt { .. }) => {
            // The engine would refuse this log; show what comes before the damage.
            let log = inspect::open(&args.dir)?;
            damage = log.damage.map(|d| (d.file, d.offset, d.reason));
            _links = log._links;
            (log.reader, true, None)
        }
        Err(OpenError::Other(e)) => return Err(e),
    };
    let encoding = args.encoding.unwrap_or(if args.json {
        Encoding::Hex
    } else {
        Encoding::Auto
    });
    // `--from` is where to start looking: before the log's first batch it starts there (the
    // batches before it were retired: noted below), past the end it shows nothing (noted).
    let (first, next) = (reader.first_seq().get(), reader.next_seq().get());
    let batches = reader
        .batches_from(args.from.clamp(first, next))
        .map_err(|e| CliError::new(format!("read {}: {e}", args.dir.display())))?;
    let written = (|| -> std::io::Result<()> {
        for batch in batches {
            let seq = batch.seq().get();
            for rec in batch.records() {
                let key = logdir::show(rec.key, encoding);
                let (op, value) = match rec.op {
                    RecordOp::Put => ("put", Some(logdir::show(rec.value, encoding))),
                    RecordOp::Delete => ("delete", None),
                };
                if args.json {
                    let line = Line {
                        seq,
                        op,
                        key: &key,
                        value: value.as_deref(),
                    };
                    serde_json::to_writer(&mut *out, &line)?;
                    out.write_all(b"\n")?;
                } else {
                    match value {
                        Some(v) => writeln!(out, "{seq}\t{op}\t{key}\t{v}")?,
                        None => writeln!(out, "{seq}\t{op}\t{key}")?,
                    }
                }
            }
        }
        out.flush()
    })();
    match written {
        // The reader left (`| head`): the records it did not take are no longer anyone's,
        // but the damage is still the log's, so the notes and the exit code below still say
        // it (stderr may be open; `note!` drops what cannot be written).
        Err(e) if logdir::broken_pipe(&e) => {}
        Err(e) => return Err(CliError::new(format!("write to stdout: {e}"))),
        Ok(()) => {}
    }
    if args.from > 0 && args.from < first {
        notes.push(format!(
            "mergelog dump: batches {}..{} were retired: started at batch {first}, the log's first",
            args.from,
            first - 1
        ));
    }
    if args.from >= next {
        let held = match next
            .checked_sub(1)
            .filter(|&l| l >= reader.first_seq().get())
        {
            Some(last) => format!("its batches are {}..{last}", reader.first_seq().get()),
            None => "it holds no batch".into(),
        };
        notes.push(format!(
            "mergelog dump: nothing at or after batch {}: {held}",
            args.from
        ));
    }
    if let Some(Loss {
        path,
        offset,
        reason,
        first_lost,
        last_lost,
    }) = &lost
    {
        notes.push(format!(
            "mergelog dump: the log is damaged where the engine refuses to open it (durable \
             batches {first_lost}..{last_lost} lost; not a torn tail): {} at offset {offset}: \
             {reason}; records after the damage are not shown",
            path.display(),
        ));
    } else if live && !refused {
        notes.push(
            "mergelog dump: the log is open in another process: its last segment is being \
             written, read as a reader would (up to its last whole frame)"
                .into(),
        );
    } else if let Some((file, offset, reason)) = damage.or_else(|| {
        reader
            .damage()
            .map(|d| (d.path.display().to_string(), d.offset, d.reason.clone()))
    }) {
        let what = if refused {
            "is damaged where the engine refuses to open it (an open cuts off only a torn \
             tail; this is not one); records after the damage are not shown"
        } else {
            "ends in a torn or corrupt tail, which the engine would cut off"
        };
        notes.push(format!(
            "mergelog dump: the log {what}: {file} at offset {offset}: {reason}"
        ));
    }
    Ok(Dumped {
        notes,
        refused: refused || lost.is_some(),
    })
}
