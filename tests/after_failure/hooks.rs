//! Shared by the modules of this target: a storage hook that slows syncs down, and a bounded
//! wait for work run on another thread.

use mergelog::internals::io::{Io, IoOp};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long a test waits for anything before it calls the engine hung.
pub const HANG: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and returns its result, or panics if it takes longer than
/// [`HANG`] (the thread is left behind: it is stuck).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => {
            handle.join().expect("joined");
            v
        }
        Err(_) => panic!("hung: {what} did not finish within {HANG:?}"),
    }
}

/// Sleeps `delay` before every sync of a segment file while armed, and counts those syncs.
pub struct SlowSync {
    pub armed: AtomicBool,
    pub delay: Duration,
    /// Syncs slowed down so far.
    pub slowed: AtomicU64,
}

impl SlowSync {
    pub fn new(delay: Duration, armed: bool) -> SlowSync {
        SlowSync {
            armed: AtomicBool::new(armed),
            delay,
            slowed: AtomicU64::new(0),
        }
    }
}

impl Io for SlowSync {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if op == IoOp::Sync && segment && self.armed.load(Ordering::SeqCst) {
            self.slowed.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
        }
        Ok(())
    }
}
