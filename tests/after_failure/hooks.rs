//! Shared by the modules of this target: a storage hook that slows syncs down. (The bounded
//! wait for work run on another thread, `within`, is `common::within`.)

use mergelog::internals::io::{Io, IoOp};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
