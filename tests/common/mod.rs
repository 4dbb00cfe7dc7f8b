//! Helpers shared by the integration tests, one definition each. A test target pulls this tree
//! in with `mod common;` (`after_failure/main.rs` with `#[path = "../common/mod.rs"]`); a
//! helper another target could use belongs here, not in a copy.
//!
//! - here: the bound on every wait (and running work under it), numbers from the environment,
//!   and the durable state read through the public API;
//! - [`local`]: a single-threaded executor under a watchdog, for the asynchronous tests;
//! - [`model`]: the key -> value model: a key set, writes, replayed batches, submitting,
//!   diffs;
//! - [`log`]: a log directory on disk: its segment files (through the library's one listing,
//!   `mergelog::internals::list_segments`), its prepared and pool files, the contents of all
//!   its files, and its frames decoded with the format module;
//! - [`hold`]: an `Io` hook that holds the segments' syncs (or another operation on them)
//!   until the test lets them go;
//! - [`power`]: the power-loss model, an `Io` hook (`faults.rs`, `after_failure/`);
//! - [`seeds`]: which seeds a seeded test runs, and running many of them.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod hold;
pub mod local;
pub mod log;
pub mod model;
pub mod power;
pub mod seeds;

use mergelog::{Engine, Ticket, WriteBatch};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

/// A key -> value state, ordered so that a failed comparison prints readably.
pub type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// How long a test waits for a ticket (or anything else) before calling the engine hung. It
/// bounds a hang on a slow, shared machine; no test times anything with it.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and returns its result, or fails the test if it takes longer
/// than [`WAIT_MAX`] (the thread is left behind: it is stuck).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WAIT_MAX) {
        Ok(v) => {
            handle.join().expect("joined");
            v
        }
        Err(_) => panic!("hung: {what} did not finish within {WAIT_MAX:?}: the engine is wedged"),
    }
}

/// The environment variable `name` as a number, if set (surrounding blanks and `_` digit
/// separators allowed: `100_000_000`).
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Consumer `name` at committed batch `committed`, as the engine's reports name one.
pub fn position(name: &str, committed: u64) -> mergelog::ConsumerPosition {
    mergelog::ConsumerPosition {
        name: name.to_owned(),
        committed: mergelog::Seq::new(committed),
    }
}

/// Waits for a ticket, failing the test on an error or a hang.
pub fn wait_ok(ticket: &Ticket, ctx: &str) {
    ticket
        .wait_timeout(WAIT_MAX)
        .unwrap_or_else(|e| panic!("{ctx}: ticket {} failed: {e}", ticket.position()));
}

/// The durable state as `for_each` reports it; fails on a key visited twice and checks that
/// `len` agrees.
pub fn engine_state(engine: &Engine) -> State {
    let mut state = State::new();
    engine.for_each(|k, v| {
        let previous = state.insert(k.to_vec(), v.to_vec());
        assert!(previous.is_none(), "for_each visited key {k:?} twice");
    });
    assert_eq!(
        engine.len(),
        state.len(),
        "Engine::len disagrees with for_each"
    );
    state
}

/// Checks that `read`/`read_to_vec` agree with `state` on every key of `state` and on every
/// key of `probe` (keys that may be absent).
pub fn assert_reads_match<'a>(
    engine: &Engine,
    state: &State,
    probe: impl IntoIterator<Item = &'a [u8]>,
    ctx: &str,
) {
    let check = |k: &[u8]| {
        let got = engine
            .read_to_vec(k)
            .unwrap_or_else(|e| panic!("{ctx}: read {k:?}: {e}"));
        assert_eq!(
            got.as_deref(),
            state.get(k).map(|v| v.as_slice()),
            "{ctx}: read of key {:?} disagrees with for_each",
            String::from_utf8_lossy(k)
        );
        let by_ref = engine
            .read(k)
            .unwrap_or_else(|e| panic!("{ctx}: read {k:?}: {e}"));
        assert_eq!(
            by_ref.as_deref(),
            got.as_deref(),
            "{ctx}: read vs read_to_vec"
        );
    };
    for k in state.keys() {
        check(k);
    }
    for k in probe {
        check(k);
    }
}

/// After a failure, every call that would change or read through the log says Failed.
pub fn assert_refuses(engine: &Engine, ctx: &str) {
    assert!(engine.failure().is_some(), "{ctx}: failure() is None");
    let mut b = WriteBatch::new();
    b.put(b"after-failure", b"x").delete(b"k0");
    let calls: [(&str, Result<(), mergelog::Error>); 6] = [
        ("put", engine.put(b"after-failure", b"x").map(drop)),
        ("delete", engine.delete(b"k0").map(drop)),
        ("write", engine.write(&b).map(drop)),
        ("get", engine.get(b"k0").map(drop)),
        ("flush", engine.flush().map(drop)),
        ("retire_before", engine.retire_before(u64::MAX).map(drop)),
    ];
    for (name, r) in calls {
        assert!(
            matches!(r, Err(mergelog::Error::Failed(_))),
            "{ctx}: {name} after the failure returned {r:?}, not Error::Failed"
        );
    }
}

/// Polls a future to completion on this thread, parking between polls (a runtime-free
/// executor for one future: what a ticket's `Future` impl is tested with).
pub fn block_on<F: std::future::Future + Unpin>(mut fut: F) -> F::Output {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(r) => return r,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Makes a FIFO at `p` (for the tests that put one under a file name the log uses).
pub fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call, and
    // `mkfifo` reads nothing else.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {p:?}");
}

/// Flips a bit of the byte at `at` in the file `path`, in place (a frame's body byte: its CRC
/// then fails).
pub fn flip_byte_at(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

/// The bytes of an `ids` file (version 2, docs/FORMAT.md "Carried request ids") holding
/// `entries` (id, batch, time) with a right CRC: what the engine would write, whatever the
/// batches.
pub fn ids_file(entries: &[(mergelog::RequestId, u64, u64)]) -> Vec<u8> {
    let mut b = b"MLIDS\0\0\0".to_vec();
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (i, seq, time) in entries {
        b.extend_from_slice(i.as_bytes());
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&time.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}
