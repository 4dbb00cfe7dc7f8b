//! The seam under the log where tests inject faults.
//!
//! Every operation that changes files on disk (a segment write, a sync, creating, renaming,
//! syncing the directory, removing a retired segment) first asks the engine's [`Io`] hook. The real hook, [`RealIo`],
//! allows everything and costs one indirect call per batch; a test's hook can fail the Nth
//! operation, fail forever after a point, or record writes to tear them later (simulated power
//! loss). The hooks see the data written by `pwrite` but not stores into the memory map, so
//! power-loss simulation applies to `WritePath::Pwrite`; failure injection applies to both.

use std::io;
use std::path::Path;
use std::sync::Arc;

/// The kind of file operation about to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// Writing bytes into a segment (pwrite; the mmap path reports its copy as a write too,
    /// without data).
    Write,
    /// `fdatasync` of a segment or `msync` of a range of it.
    Sync,
    /// Creating and zero-filling a new (prepared) segment file.
    Create,
    /// Renaming a prepared segment to its final name, or a retired one into the pool of
    /// files kept for reuse.
    Rename,
    /// `fsync` of the log directory.
    SyncDir,
    /// Removing a retired segment file (`Engine::retire_before`).
    Remove,
}

/// Hooks called around every file-changing operation of the log.
pub trait Io: Send + Sync + 'static {
    /// Called before `op` on `path`. An error is returned to the engine as the operation's
    /// error and the operation is not performed. `data` is the bytes about to be written at
    /// `offset` for `IoOp::Write` by pwrite, the destination path's bytes for `IoOp::Rename`,
    /// empty otherwise.
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Called after `op` on `path` succeeded.
    fn after(&self, op: IoOp, path: &Path) {
        let _ = (op, path);
    }
}

/// The production hook: allows everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealIo;

impl Io for RealIo {
    #[inline]
    fn before(&self, _: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// A shared handle to the hooks.
pub type SharedIo = Arc<dyn Io>;

pub(crate) fn real() -> SharedIo {
    Arc::new(RealIo)
}

/// Runs `f` between the `before` and `after` hooks of `op`.
pub(crate) fn guarded<T>(
    io: &dyn Io,
    op: IoOp,
    path: &Path,
    offset: u64,
    data: &[u8],
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    io.before(op, path, offset, data)?;
    let r = f()?;
    io.after(op, path);
    Ok(r)
}
