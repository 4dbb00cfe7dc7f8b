//! Shared by the modules of this target: a storage hook that slows syncs down, one that fails
//! a chosen operation, and a small-segment configuration. (The bounded wait for work run on
//! another thread, `within`, is `common::within`.)

use mergelog::internals::io::{Io, IoOp};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// Which paths an [`Inject`] looks at.
type Which = Box<dyn Fn(&Path) -> bool + Send + Sync>;

/// Fails with EIO the `nth` operation `op` on a path `which` accepts (every one if `nth` is
/// 0), counting only those that come right after a successful `after` operation (no other
/// operation between them) if one is set. Counts what it saw and what it failed.
pub struct Inject {
    op: IoOp,
    which: Which,
    after: Option<(IoOp, Which)>,
    nth: u64,
    /// The `after` operation was the last one to complete.
    primed: AtomicBool,
    /// Operations `op` on a path `which` accepts (right after `after`, if set) seen so far.
    pub seen: AtomicU64,
    /// Of those, the ones failed.
    pub failed: AtomicU64,
}

impl Inject {
    /// Fails every `op` on a path `which` accepts.
    pub fn new(op: IoOp, which: impl Fn(&Path) -> bool + Send + Sync + 'static) -> Inject {
        Inject {
            op,
            which: Box::new(which),
            after: None,
            nth: 0,
            primed: AtomicBool::new(false),
            seen: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Fails only the `n`th (from 1) of them; `u64::MAX`: none, only counts.
    pub fn nth(self, n: u64) -> Inject {
        Inject { nth: n, ..self }
    }

    /// Looks only at those that come right after an `op` on a path `which` accepts.
    pub fn right_after(
        self,
        op: IoOp,
        which: impl Fn(&Path) -> bool + Send + Sync + 'static,
    ) -> Inject {
        Inject {
            after: Some((op, Box::new(which))),
            ..self
        }
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Io for Inject {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let target = op == self.op && (self.which)(path);
        // Anything but a target in between: the next target no longer comes right after.
        let primed = self.primed.swap(false, Ordering::SeqCst);
        if !target || (self.after.is_some() && !primed) {
            return Ok(());
        }
        let k = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.nth == 0 || k == self.nth {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        if let Some((after, which)) = &self.after {
            if op == *after && which(path) {
                self.primed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Accepts exactly `path`.
pub fn is(path: impl Into<PathBuf>) -> impl Fn(&Path) -> bool + Send + Sync + 'static {
    let path = path.into();
    move |p| p == path
}

/// Accepts segment files (`*.seg`).
pub fn segment(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "seg")
}

/// Segments of 64 KiB, a 256 KiB ring and 16 KiB batches: a few dozen puts of 4,000 bytes
/// roll several segments.
pub fn small_segments() -> mergelog::Config {
    mergelog::Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        ..mergelog::Config::default()
    }
}

/// Opens an engine on `dir` with `small_segments` through `io`.
pub fn open_small(dir: &Path, io: Arc<dyn Io>) -> mergelog::Engine {
    mergelog::Engine::open_with_io(dir, small_segments(), io).expect("open")
}
