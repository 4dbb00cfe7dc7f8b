//! Room for the log's open files.
//!
//! Every segment keeps its file open for as long as the engine (or a reader) maps it: the
//! descriptor holds the shared `flock` that keeps the file from being taken for reuse while
//! it is mapped (`segment.rs`), and a lock lives only as long as its open file. So a log of
//! more segments than the process may open files (`RLIMIT_NOFILE`'s soft limit, 1,024 on
//! many systems: 64 GiB of log at the default 64 MiB segments) would fail to open, or fail
//! its writes at the roll that needs one file too many.
//!
//! An open of one of the log's files that fails with `EMFILE` therefore raises the soft
//! limit to the hard one and tries once more, as Go's runtime raises it for every program at
//! start. Only then: a process whose log fits its limit never sees the limit change. If the
//! hard limit is the bound, the error says so and what to do.
//!
//! The limit is the process's, so what a user may not expect: it stays raised once the
//! engine is closed; the programs the process starts inherit it (Go's runtime gives them
//! back the soft limit it found, golang/go#59064; nothing here does): a program that uses
//! `select` needs descriptors below 1,024, and one that closes every descriptor up to the
//! limit before it runs another takes the longer the higher the limit; and any open of the
//! log's that finds the process out of files raises it, even if the files are the
//! application's own (a leak of its own then shows only at the hard limit). Another
//! thread's `setrlimit` between this one's `getrlimit` and `setrlimit` is not seen: a
//! privileged thread that raised the hard limit meanwhile has it set back, and with no hard
//! limit a soft one raised past the target is lowered to it. The tools open the log's files
//! through `with_room` too (`internals::fds`).

use std::io;

/// Runs `open` (one `open(2)`, `read_dir` or the like: something that takes one
/// descriptor and has no effect if it fails). If it fails because the process has as many
/// files open as its soft limit allows, raises the limit as far as the hard limit allows and
/// runs it once more; if that fails the same way, the error names the limits.
pub fn with_room<T>(mut open: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match open() {
        Err(e) if out_of_files(&e) => {
            // Another thread may have raised it meanwhile: try again whatever `raise` did.
            raise_soft_limit();
            open().map_err(|e| if out_of_files(&e) { explain(e) } else { e })
        }
        r => r,
    }
}

fn out_of_files(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMFILE)
}

/// The process's (soft, hard) limits on open files.
fn limits() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit on open files to the hard limit (an unlimited hard limit: to the
/// kernel's `fs.nr_open`, the most a process may have, whose file may not open while the
/// process is out of files: then to its default, 2^20, or failing that 2^16). Best effort:
/// a failure leaves the limit as it was, and the retry then reports the limits.
fn raise_soft_limit() {
    let Ok((soft, hard)) = limits() else { return };
    let targets = if hard == libc::RLIM_INFINITY {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
        vec![nr_open.unwrap_or(1 << 20), 1 << 20, 1 << 16]
    } else {
        vec![hard]
    };
    for target in targets.into_iter().filter(|&t| t > soft) {
        let lim = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit the call only reads; raising the soft limit up to
        // the hard one needs no privilege, and only changes how many files the process may
        // open.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            return;
        }
    }
}

/// `EMFILE` after the soft limit was raised as far as it goes.
fn explain(e: io::Error) -> io::Error {
    let limits = match limits() {
        Ok((soft, hard)) if hard == libc::RLIM_INFINITY => format!("{soft}, no hard limit"),
        Ok((soft, hard)) => format!("{soft}, hard limit {hard}"),
        Err(_) => "unknown".to_string(),
    };
    io::Error::other(OutOfFiles { limits, source: e })
}

/// The error of an open the process's limit on open files refused, after raising it.
#[derive(Debug)]
struct OutOfFiles {
    limits: String,
    source: io::Error,
}

impl std::fmt::Display for OutOfFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the process has as many files open as it may ({}), and the log keeps one \
             open per segment; raise the limit (`ulimit -n`), or use larger segments \
             (`Config::segment_bytes`), or retire or compact old segments",
            self.source, self.limits
        )
    }
}

impl std::error::Error for OutOfFiles {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_other_than_emfile_is_returned_as_it_is_without_a_retry() {
        let mut calls = 0;
        let r: io::Result<()> = with_room(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(calls, 1);
    }

    #[test]
    fn emfile_twice_is_explained_with_the_limits() {
        let mut calls = 0;
        let r: io::Result<()> = with_room(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        });
        assert_eq!(calls, 2, "tried again once after raising the limit");
        let e = r.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ulimit -n") && text.contains("segment"),
            "{text}"
        );
        let source = std::error::Error::source(e.get_ref().expect("wrapped"));
        let inner = source.and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(inner.and_then(io::Error::raw_os_error), Some(libc::EMFILE));
    }
}
