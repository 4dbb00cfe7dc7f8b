//! A storage hook that holds one kind of operation on the log's segment files, most often
//! their syncs, until the test lets it go: the way a test keeps a batch written but not
//! durable, or the flusher stuck in a write, for as long as it needs, whatever the
//! scheduling.
//!
//! ```text
//! let hold = Hold::syncs();
//! let engine = Engine::open_with_io(dir, config, hold.clone())?;
//! hold.hold_every();
//! let ticket = engine.put(b"k", b"v")?;
//! assert!(hold.wait_held(1), "no sync was held"); // written, its sync waiting
//! // ... the engine with a batch in flight ...
//! hold.release(); // or `release_failing()`: the held syncs, and every later one, fail
//! ```

use super::WAIT_MAX;
use mergelog::internals::io::{Io, IoOp};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// Holds operations `op` on segment files (`*.seg`) while the test says so: every one from
/// [`Hold::hold_every`], or only the next one from [`Hold::hold_next`], until
/// [`Hold::release`] (or [`Hold::release_failing`]). Other operations, and `op` on other
/// files (consumer positions, the `ids` file, prepared files), always pass.
///
/// A held operation waits at most [`WAIT_MAX`], then fails with `TimedOut`: a test that
/// forgets to let it go fails instead of hanging (and the engine's drop ends).
pub struct Hold {
    op: IoOp,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    gate: Gate,
    /// Operations seen so far (held or not).
    seen: usize,
    /// Operations held so far (let go or not).
    held: usize,
    /// Of those, the ones not let go yet.
    waiting: usize,
    /// Calls of `release` so far: a held operation waits until this moves on.
    releases: u64,
    /// Every operation `op` on a segment fails with EIO (held ones once let go).
    failing: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Gate {
    /// Nothing is held.
    #[default]
    Open,
    /// The next operation is held; the ones after it pass.
    Next,
    /// Every operation is held.
    Every,
}

impl Hold {
    /// Holds nothing yet; syncs of segment files once told to.
    pub fn syncs() -> Arc<Hold> {
        Hold::of(IoOp::Sync)
    }

    /// Holds nothing yet; operations `op` on segment files once told to.
    pub fn of(op: IoOp) -> Arc<Hold> {
        Arc::new(Hold {
            op,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// From now on every operation waits until [`Hold::release`].
    pub fn hold_every(&self) {
        self.state.lock().unwrap().gate = Gate::Every;
    }

    /// The next operation (one) waits until [`Hold::release`]; the ones after it pass.
    pub fn hold_next(&self) {
        self.state.lock().unwrap().gate = Gate::Next;
    }

    /// Lets every held operation go, and holds no more.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.gate = Gate::Open;
        s.releases += 1;
        self.changed.notify_all();
    }

    /// As [`Hold::release`], but the held operations fail with EIO, and so does every later
    /// one: a write or sync that failed, for the engine.
    pub fn release_failing(&self) {
        self.state.lock().unwrap().failing = true;
        self.release();
    }

    /// Operations seen so far, held or not.
    pub fn seen(&self) -> usize {
        self.state.lock().unwrap().seen
    }

    /// Operations held so far (let go or not).
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }

    /// Operations held now: not let go yet.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting
    }

    /// Waits until `n` operations have been held, in all; false if that took longer than
    /// [`WAIT_MAX`] (the test fails on it).
    #[must_use]
    pub fn wait_held(&self, n: usize) -> bool {
        self.wait_until(|s| s.held >= n)
    }

    /// Waits until `n` operations have been seen, held or not; false if that took longer
    /// than [`WAIT_MAX`].
    #[must_use]
    pub fn wait_seen(&self, n: usize) -> bool {
        self.wait_until(|s| s.seen >= n)
    }

    fn wait_until(&self, done: impl Fn(&State) -> bool) -> bool {
        let s = self.state.lock().unwrap();
        let (_s, waited) = self
            .changed
            .wait_timeout_while(s, WAIT_MAX, |s| !done(s))
            .unwrap();
        !waited.timed_out()
    }
}

impl Io for Hold {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if op != self.op || path.extension().is_none_or(|e| e != "seg") {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap();
        s.seen += 1;
        self.changed.notify_all();
        let hold = match s.gate {
            Gate::Open => false,
            Gate::Every => true,
            Gate::Next => {
                s.gate = Gate::Open;
                true
            }
        };
        if hold {
            s.held += 1;
            s.waiting += 1;
            self.changed.notify_all();
            let releases = s.releases;
            let (waited, timeout) = self
                .changed
                .wait_timeout_while(s, WAIT_MAX, |s| s.releases == releases)
                .unwrap();
            s = waited;
            s.waiting -= 1;
            if timeout.timed_out() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "test hook: a held operation was never let go",
                ));
            }
        }
        if s.failing {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// Two hooks in one: each sees every operation, `0`'s first (a [`Hold`] of writes and one of
/// syncs, say).
pub struct Both<A, B>(pub Arc<A>, pub Arc<B>);

impl<A: Io, B: Io> Io for Both<A, B> {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.before(op, path, offset, data)?;
        self.1.before(op, path, offset, data)
    }

    fn after(&self, op: IoOp, path: &Path) {
        self.0.after(op, path);
        self.1.after(op, path);
    }
}
