//! A log of more segments than the process may open files: each segment keeps its file open
//! (its descriptor holds the lock that keeps the file from reuse while mapped), so the
//! engine raises the soft limit on open files when an open of its own hits it, and when the
//! hard limit is the bound, says so and changes nothing.
//!
//! The limit is the process's, so this binary has no test harness: its steps run one after
//! the other on one thread, and the last lowers the hard limit, which the process cannot take
//! back.

use mergelog::{Config, Engine, Error};
use std::path::{Path, PathBuf};

/// The process's (soft, hard) limits on open files.
fn limits() -> (libc::rlim_t, libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

fn set_limits(soft: libc::rlim_t, hard: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit the call only reads.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "setrlimit({soft}, {hard}): {}",
        std::io::Error::last_os_error()
    );
}

/// The descriptors this process has open now.
fn open_now() -> libc::rlim_t {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as libc::rlim_t
}

/// Room for this many more open files than are open now.
const ROOM: libc::rlim_t = 40;

const VALUE: usize = 1000;

fn config() -> Config {
    Config {
        // The smallest segments: about 60 of these values each.
        segment_bytes: 64 << 10,
        batch_bytes_max: 32 << 10,
        ..Config::default()
    }
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn value(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; VALUE]
}

/// Puts keys `0..n` in groups of 64, each group waited for; the first error ends it.
fn fill(engine: &Engine, n: u64) -> Result<(), Error> {
    for group in (0..n).collect::<Vec<_>>().chunks(64) {
        let tickets = group
            .iter()
            .map(|&i| engine.put(&key(i), &value(i)))
            .collect::<Result<Vec<_>, _>>()?;
        for t in tickets {
            t.wait()?;
        }
    }
    Ok(())
}

fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

/// Writes a log of several times `ROOM` segments with the soft limit at `ROOM` more than
/// were open, then reopens it so: every write is acknowledged and read back, and the soft
/// limit was raised.
fn a_log_past_the_soft_limit_is_written_and_reopened(dir: &Path, keys: u64) {
    let (_, hard) = limits();
    let low = open_now() + ROOM;
    set_limits(low, hard);
    let engine = Engine::open(dir, config()).unwrap();
    fill(&engine, keys).unwrap();
    let segments = engine.segments().len() as libc::rlim_t;
    assert!(
        segments > 2 * ROOM,
        "{segments} segments: the test needs more than the room it leaves"
    );
    assert!(
        limits().0 > low,
        "the soft limit is still {low} with {segments} segments open"
    );
    engine.close().unwrap();
    drop(engine);

    set_limits(open_now() + ROOM, hard);
    let engine = Engine::open(dir, config()).unwrap();
    for i in 0..keys {
        assert_eq!(
            engine.read_to_vec(&key(i)).unwrap().as_deref(),
            Some(&value(i)[..]),
            "key {i}"
        );
    }
    engine.close().unwrap();
}

/// With the hard limit below what the log needs, the open fails with an error that names
/// the limit and what to do, and the directory is as it was.
fn an_open_the_hard_limit_refuses_says_so_and_changes_nothing(dir: &Path) {
    let before = segment_files(dir);
    let low = open_now() + ROOM;
    set_limits(low, low);
    let e = Engine::open(dir, config()).expect_err("the log needs more files than the limit");
    let text = e.to_string();
    assert!(
        matches!(e, Error::Io { .. }) && text.contains("ulimit -n") && text.contains(".seg"),
        "{text}"
    );
    assert_eq!(
        segment_files(dir),
        before,
        "the failed open changed the log"
    );
    println!("  the open's error: {text}");
}

/// A log that grows into the hard limit fails the write that needs one file too many, with
/// the same error; every write acknowledged before it is there.
fn a_log_that_grows_into_the_hard_limit_fails_the_write_with_the_limit_named(dir: &Path) {
    let engine = Engine::open(dir, config()).unwrap();
    let e = fill(&engine, 100_000).expect_err("the log outgrew the limit");
    let text = format!("{e} / {:?}", engine.failure());
    assert!(text.contains("ulimit -n"), "{text}");
    println!("  the write's error / the engine's failure: {text}");
    drop(engine);
}

fn main() {
    let (_, hard) = limits();
    if hard != libc::RLIM_INFINITY && hard < open_now() + 4 * ROOM {
        // Not enough room to test the raise: a limit this low fails the steps for another
        // reason.
        panic!("the hard limit on open files ({hard}) is too low to run this test");
    }
    let grown = tempfile::tempdir().unwrap();
    a_log_past_the_soft_limit_is_written_and_reopened(grown.path(), 6_000);
    println!("a_log_past_the_soft_limit_is_written_and_reopened ... ok");
    an_open_the_hard_limit_refuses_says_so_and_changes_nothing(grown.path());
    println!("an_open_the_hard_limit_refuses_says_so_and_changes_nothing ... ok");
    let fresh = tempfile::tempdir().unwrap();
    a_log_that_grows_into_the_hard_limit_fails_the_write_with_the_limit_named(fresh.path());
    println!("a_log_that_grows_into_the_hard_limit_fails_the_write_with_the_limit_named ... ok");
}
