//! Several syncers (`Config::syncers` = 2): two syncs in flight at once, one of which fails.
//! The groups complete in the order the flusher handed them on, so whichever sync fails,
//! nothing after its group is acknowledged, even a later group whose own sync returned OK,
//! and the engine says it failed on every later call. A group before the failed one
//! completes with its own sync's outcome.
//!
//! The hook makes the interleaving exact: it holds the first frame's write until a second
//! request is behind it (so the first window goes to a syncer instead of being completed by
//! the flusher inline), holds the first segment sync until the test lets it go, and fails
//! one of the two syncs with EIO.

use crate::common::{engine_state, State, WAIT_MAX};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, Ticket, WindowPolicy};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which of the two syncs in flight fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fails {
    /// The first one, after the second has returned OK.
    First,
    /// The second one, while the first is still running (it returns OK afterwards).
    Second,
}

/// The hook: counts segment writes and syncs from when it is armed.
struct TwoSyncs {
    fails: Fails,
    armed: AtomicBool,
    writes: AtomicU64,
    release_write: AtomicBool,
    syncs: AtomicU64,
    /// The second sync has begun.
    second_began: AtomicBool,
    /// Segment syncs that returned OK.
    returned: AtomicU64,
    release_first: AtomicBool,
}

impl TwoSyncs {
    fn new(fails: Fails) -> TwoSyncs {
        TwoSyncs {
            fails,
            armed: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            release_write: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            second_began: AtomicBool::new(false),
            returned: AtomicU64::new(0),
            release_first: AtomicBool::new(false),
        }
    }
}

/// Waits (bounded) until `cond` holds; false on time-out.
fn until(cond: impl Fn() -> bool) -> bool {
    let give_up = Instant::now() + WAIT_MAX;
    while !cond() {
        if Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Io for TwoSyncs {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if !segment || !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "test hook timed out");
        match op {
            IoOp::Write => {
                let released = match self.writes.fetch_add(1, Ordering::SeqCst) {
                    0 => until(|| self.release_write.load(Ordering::SeqCst)),
                    // The second frame is written once the first sync runs, so that it is not
                    // taken into the first sync's group.
                    1 => until(|| self.syncs.load(Ordering::SeqCst) >= 1),
                    _ => true,
                };
                if !released {
                    return Err(timed_out());
                }
            }
            IoOp::Sync => match self.syncs.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    // Runs on until the second sync has returned and the test lets it go.
                    if !until(|| self.release_first.load(Ordering::SeqCst)) {
                        return Err(timed_out());
                    }
                    if self.fails == Fails::First {
                        return Err(eio());
                    }
                }
                1 => {
                    self.second_began.store(true, Ordering::SeqCst);
                    if self.fails == Fails::Second {
                        return Err(eio());
                    }
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if op == IoOp::Sync && segment && self.armed.load(Ordering::SeqCst) {
            self.returned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether `e` reports the failed segment sync: the I/O error itself (the ticket of the
/// failed group) or `Error::Failed` with it as the cause.
fn is_the_eio(e: &Error) -> bool {
    let io = match e {
        Error::Failed(cause) => &**cause,
        other => other,
    };
    matches!(
        io,
        Error::Io {
            op: "sync segment",
            ..
        }
    )
}

/// Two syncs in flight, `fails` failing; returns the engine and the tickets: `first` (its
/// group synced by the first sync), `second` (the second sync's) and `late` (submitted, and
/// synced, while the first sync still ran).
fn run(fails: Fails) -> (tempfile::TempDir, Engine, [Ticket; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(TwoSyncs::new(fails));
    let config = Config {
        syncers: 2,
        // Overlap whenever a syncer is free (by default only on a slow disk).
        overlap_syncs_above: Duration::ZERO,
        // Every window is cut as soon as it has a request: the second put is a window of its
        // own, handed on while the first sync runs.
        window: WindowPolicy::Immediate,
        ..Config::default()
    };
    let engine = Engine::open_with_io(dir.path(), config, hook.clone()).expect("open");
    engine
        .put(b"before", b"0")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    hook.armed.store(true, Ordering::SeqCst);
    let first = engine.put(b"first", b"1").unwrap();
    assert!(
        until(|| hook.writes.load(Ordering::SeqCst) == 1),
        "first write"
    );
    let second = engine.put(b"second", b"2").unwrap();
    hook.release_write.store(true, Ordering::SeqCst);
    // Both syncs started while the first one runs on.
    assert!(
        until(|| hook.second_began.load(Ordering::SeqCst)),
        "the second sync never ran: two syncs were not in flight at once"
    );
    // Even a failed second sync is not known yet: its group's turn comes after the first's.
    let late = engine
        .put(b"late", b"3")
        .expect("accepted: no failure is known before the first sync returns");
    // The syncs after the first one have returned (the late put's, and the second one's if
    // it does not fail), and a completion out of turn would have run by now: only then does
    // the first one end.
    let after_first = match fails {
        Fails::First => 2,
        Fails::Second => 1,
    };
    assert!(
        until(|| hook.returned.load(Ordering::SeqCst) >= after_first),
        "the syncs after the first never returned"
    );
    hook.release_first.store(true, Ordering::SeqCst);
    (dir, engine, [first, second, late])
}

/// Every later call reports the failure, and a reopen holds what was acknowledged and
/// nothing that was not.
fn check_failed_for_good(dir: &Path, engine: Engine, durable: State) {
    let failure = engine.failure().expect("the engine failed");
    assert!(is_the_eio(&failure), "{failure:?}");
    let put = engine
        .put(b"after", b"4")
        .expect_err("a put after the failure");
    assert!(is_the_eio(&put), "{put:?}");
    let flushed = engine.flush().expect_err("a flush after the failure");
    assert!(is_the_eio(&flushed), "{flushed:?}");
    let closed = engine.close().expect_err("close after the failure");
    assert!(is_the_eio(&closed), "{closed:?}");
    drop(engine);
    let reopened = Engine::open(dir, Config::default()).expect("reopen");
    let state = engine_state(&reopened);
    for (k, v) in &durable {
        assert_eq!(state.get(k), Some(v), "acknowledged {k:?} lost");
    }
    reopened.close().unwrap();
}

/// The second sync fails while the first runs on: the first group, before it, completes
/// with its own sync's outcome (OK); the second fails, and so does every request after it.
#[test]
fn a_sync_failing_while_an_earlier_one_runs_fails_everything_after_it() {
    let (dir, engine, [first, second, late]) = run(Fails::Second);
    first
        .wait_timeout(WAIT_MAX)
        .expect("the first group's sync returned OK");
    let e = second.wait_timeout(WAIT_MAX).expect_err("its sync failed");
    assert!(is_the_eio(&e), "{e:?}");
    let e = late
        .wait_timeout(WAIT_MAX)
        .expect_err("after the failed group");
    assert!(is_the_eio(&e), "{e:?}");
    let durable = State::from([
        (b"before".to_vec(), b"0".to_vec()),
        (b"first".to_vec(), b"1".to_vec()),
    ]);
    check_failed_for_good(dir.path(), engine, durable);
}

/// The first sync fails after the second returned OK: the second group's sync covered its
/// frame, but the group comes after the failed one, so it is not acknowledged, nor is
/// anything after it.
#[test]
fn a_later_sync_that_returned_ok_is_not_acknowledged_after_an_earlier_one_failed() {
    let (dir, engine, [first, second, late]) = run(Fails::First);
    let e = first.wait_timeout(WAIT_MAX).expect_err("its sync failed");
    assert!(is_the_eio(&e), "{e:?}");
    let e = second
        .wait_timeout(WAIT_MAX)
        .expect_err("a group after the failed one was acknowledged");
    assert!(is_the_eio(&e), "{e:?}");
    let e = late
        .wait_timeout(WAIT_MAX)
        .expect_err("after the failed group");
    assert!(is_the_eio(&e), "{e:?}");
    let durable = State::from([(b"before".to_vec(), b"0".to_vec())]);
    check_failed_for_good(dir.path(), engine, durable);
}
