//! What `inspect`, `verify` and `dump` share: opening a log directory with errors a user
//! can act on, and showing keys and values.

use crate::error::CliError;
use crate::history::{Loss, Refused};
use clap::ValueEnum;
use mergelog::{Error, LogReader, RecoveryMode};
use std::path::Path;

/// The segment header's length (docs/FORMAT.md): where the first frame of a segment starts.
pub const SEGMENT_HEADER_LEN: u64 = 64;

/// How a reader open failed.
pub enum OpenError {
    /// The log is damaged: the first bad byte.
    Corrupt {
        path: std::path::PathBuf,
        offset: u64,
        reason: String,
    },
    /// Anything else; already phrased, with its exit code.
    Other(CliError),
}

/// Checks that `dir` is an existing directory (exit 2 otherwise).
pub fn check_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::usage(format!(
            "{} is not a directory; name a mergelog log directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::usage(format!(
            "{} does not exist; name a mergelog log directory",
            dir.display()
        ))),
        Err(e) => Err(CliError::usage(format!(
            "cannot use {}: {e}",
            dir.display()
        ))),
    }
}

/// Opens `dir` read-only with `mode`. A directory without segment files is refused (exit
/// 2): it is far more often a wrong path than an empty log.
pub fn open(dir: &Path, mode: RecoveryMode) -> Result<LogReader, OpenError> {
    check_dir(dir).map_err(OpenError::Other)?;
    let reader = match LogReader::open_with(dir, mode) {
        Ok(r) => r,
        Err(Error::Corrupt {
            path,
            offset,
            reason,
        }) => {
            return Err(OpenError::Corrupt {
                path,
                offset,
                reason,
            })
        }
        Err(e) => {
            return Err(OpenError::Other(CliError::usage(format!(
                "cannot read the log in {}: {e}",
                dir.display()
            ))))
        }
    };
    // A log whose only segment has a bad header reads as no segments plus damage: that
    // is for the caller to report, not "no log here".
    if reader.segment_count() == 0 && reader.damage().is_none() {
        use mergelog::internals::format::segment_file_name;
        // Nor is a log that lost every segment file: its clean-close mark names batches it
        // no longer holds, and the engine refuses it (`DamagedHistory` at the mark), as it
        // refuses a damaged `ids` file there. That is damage at the file named.
        match crate::history::engine_refuses(dir) {
            Ok(Some(Refused::Lost(Loss {
                path,
                offset,
                reason,
                ..
            })))
            | Ok(Some(
                Refused::SideFile(path, offset, reason) | Refused::Segment(path, offset, reason),
            )) => {
                return Err(OpenError::Corrupt {
                    path,
                    offset,
                    reason,
                })
            }
            Ok(None) | Err(_) => {}
        }
        return Err(OpenError::Other(CliError::usage(format!(
            "{} holds no mergelog segment files: no file name is 20 decimal digits + .seg (as \
             {}); {}; name a log directory",
            dir.display(),
            segment_file_name(1),
            found(dir)
        ))));
    }
    Ok(reader)
}

/// What a directory without segment files holds instead, for the error that says so
/// (`mergelog::internals::what_it_holds`: the likely near miss, or the first by name, and how
/// many others).
fn found(dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match mergelog::internals::what_it_holds(names) {
        Some(holds) => format!("it holds {holds}"),
        None => "the directory is empty".into(),
    }
}

/// How keys and values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// Lower-case hex, two digits per byte (lossless).
    Hex,
    /// UTF-8, invalid sequences replaced by U+FFFD (lossy).
    Utf8,
    /// Text when the bytes are printable UTF-8, else `0x` and hex.
    Auto,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub fn show(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Hex => hex(bytes),
        Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Auto => match std::str::from_utf8(bytes) {
            Ok(s) if !s.is_empty() && !s.starts_with("0x") && !s.chars().any(char::is_control) => {
                s.to_owned()
            }
            _ => format!("0x{}", hex(bytes)),
        },
    }
}

/// True for the error a closed pipe gives (`mergelog dump | head`): stop quietly.
pub fn broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Writes `text` to stdout; a closed pipe is not an error (`println!` would panic).
pub fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if !broken_pipe(&e) => Err(CliError::new(format!("write to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// Opens `path` to read without waiting: a FIFO (damage under a log's file name, which the
/// reader refuses) opens at once instead of waiting for a writer that may never come, and
/// then reads as empty.
pub fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    mergelog::internals::fds::with_room(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    })
}

/// Whether the segment file's header carries the recycled flag (false if it cannot be read:
/// the scan has already vouched for the header, or the file is the damage that ends the log,
/// a FIFO even).
pub fn is_recycled(path: &std::path::Path) -> bool {
    use mergelog::internals::format::{SegmentHeader, SEGMENT_HEADER_LEN};
    use std::io::Read;
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    open_nonblocking(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| SegmentHeader::decode(&header).is_ok_and(|h| h.recycled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_bytes() {
        assert_eq!(show(b"apple", Encoding::Auto), "apple");
        assert_eq!(show(b"\x00\xff", Encoding::Auto), "0x00ff");
        assert_eq!(show(b"a\tb", Encoding::Auto), "0x610962");
        assert_eq!(show(b"0x12", Encoding::Auto), "0x30783132");
        assert_eq!(show(b"", Encoding::Auto), "0x");
        assert_eq!(show(b"\xffa", Encoding::Utf8), "\u{fffd}a");
        assert_eq!(show(b"apple", Encoding::Hex), "6170706c65");
    }
}
