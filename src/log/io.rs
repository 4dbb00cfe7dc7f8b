//! The seam under the log where tests inject faults.
//!
//! Every operation that changes files on disk (a segment write, a sync, creating a file or a
//! directory, renaming, syncing a directory, removing a file) first asks the engine's [`Io`]
//! hook. The real hook, [`RealIo`], allows everything and costs one indirect call per batch; a
//! test's hook can fail the Nth operation, fail forever after a point, or record writes to
//! tear them later (simulated power loss, `tests/common/power.rs`).
//!
//! The functions here that create, rename (or exchange) and remove files and directories,
//! and sync a directory, are the only code of the crate that calls the `std::fs` functions doing so:
//! clippy's `disallowed-methods` (the workspace's `clippy.toml`) refuses them anywhere else.
//! They in turn are called only by `dir.rs`, the owner of the log directory's files, where
//! the order of file changes is kept: `clippy.toml` refuses them (by their crate paths,
//! `mergelog::log::io::remove` etc.) anywhere else too. Segment writes and syncs go through
//! `guarded` in `segment.rs`.
//!
//! The hooks see the bytes a `pwrite` writes. A store into the memory map (the mmap write
//! path, and the zeroing of a torn tail) is announced as a write with its offset but no data:
//! the hook does not learn where it ends, and reads the file if it needs the bytes.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The kind of file operation about to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// Writing bytes into a segment (pwrite; the mmap path reports its copy as a write too,
    /// without data).
    Write,
    /// `fdatasync` of a segment (the whole file) or `msync` of a range of it; see
    /// [`synced_range`] for how the hook learns which. Also the `fdatasync` of an earlier
    /// backup's segment file before an incremental backup links it (`Engine::backup_since`),
    /// and of a small file's or a backup's file once written.
    Sync,
    /// Creating a file: a new (prepared) segment file, created and zero-filled, the log
    /// directory's lock file, if it is missing (its own, or an incremental backup's earlier
    /// backup's, `Engine::backup_since`), or a backup's file, written and synced.
    Create,
    /// Renaming a prepared segment to its final name, a retired one into the pool of files
    /// kept for reuse, or a whole backup's directory to its name.
    Rename,
    /// `fsync` of a directory: the log directory, the parent of a directory just created, or
    /// a backup's staging directory and, once it is renamed, the backup's parent.
    SyncDir,
    /// Removing a file: a retired segment (`Engine::retire_before`), a spare segment file, a
    /// segment dropped by recovery, or what a failed creation left behind; or what a failed
    /// backup staged (its files, then its directory).
    Remove,
    /// Creating a directory: a missing component of the log directory's path, at open, or a
    /// backup's staging directory.
    CreateDir,
    /// Opening an existing file again for writing: a segment file, for a file description of
    /// its own (each of several syncers, `Config::syncers` > 1, syncs through one), or a
    /// small file's kept temporary (the `ids` file's, a consumer's), to be overwritten in
    /// place. Changes nothing on disk; announced so that a hook can fail it.
    Open,
    /// Exchanging the names of two files in one step (`renameat2` with `RENAME_EXCHANGE`):
    /// a small file (the `ids` file, a consumer's position) and its kept temporary, which
    /// holds the new contents, synced. Neither name is ever missing; the temporary then holds
    /// the old contents, whose room the next replacement overwrites. Where the file system
    /// cannot (not Linux, or `EINVAL`), the engine renames instead, as before.
    Exchange,
    /// Making a second name (a hard link) of an existing file: an incremental backup's
    /// segment that the earlier backup holds unchanged (`Engine::backup_since`).
    Link,
}

/// Hooks called around every file-changing operation of the log.
pub trait Io: Send + Sync + 'static {
    /// Called before `op` on `path`. An error is returned to the engine as the operation's
    /// error and the operation is not performed. `data` is:
    /// - for `IoOp::Write` by pwrite, the bytes about to be written at `offset` (empty for a
    ///   store into the mapping, which starts at `offset`);
    /// - for `IoOp::Sync`, empty for a sync of the whole file (`fdatasync`; `offset` is 0), or
    ///   for a sync of the byte range `offset..end` (`msync`), `end` as 8 little-endian
    ///   bytes ([`synced_range`] decodes it). The kernel writes back whole pages, so it may
    ///   sync a little more than the range; the range is what the engine asked for;
    /// - for `IoOp::Rename`, the destination path's bytes;
    /// - for `IoOp::Link`, the new name's bytes (`path` is the existing file's);
    /// - for `IoOp::Exchange`, the other path's bytes (`path` is the temporary file's);
    /// - empty otherwise.
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Called after `op` on `path` succeeded.
    fn after(&self, op: IoOp, path: &Path) {
        let _ = (op, path);
    }
}

/// The byte range an `IoOp::Sync` announced with `offset` and `data` makes durable: `None`
/// for the whole file.
pub fn synced_range(offset: u64, data: &[u8]) -> Option<Range<u64>> {
    let end: [u8; 8] = data.try_into().ok()?;
    Some(offset..u64::from_le_bytes(end))
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

/// `IoOp::Sync` of `off..end`: the hook's `offset` and `data` (see [`Io::before`]).
pub(crate) fn sync_range_data(end: u64) -> [u8; 8] {
    end.to_le_bytes()
}

/// Removes the file `path`.
#[allow(clippy::disallowed_methods)] // the seam itself: the one place a file is removed
pub(crate) fn remove(io: &dyn Io, path: &Path) -> io::Result<()> {
    guarded(io, IoOp::Remove, path, 0, &[], || {
        std::fs::remove_file(path)
    })
}

/// Removes the empty directory `path` (what a failed backup staged).
#[allow(clippy::disallowed_methods)] // the seam itself: the one place a directory is removed
pub(crate) fn remove_dir(io: &dyn Io, path: &Path) -> io::Result<()> {
    guarded(io, IoOp::Remove, path, 0, &[], || std::fs::remove_dir(path))
}

/// Renames `from` to `to`; the hooks get the destination path as the data.
#[allow(clippy::disallowed_methods)] // the seam itself: the one place a file is renamed
pub(crate) fn rename(io: &dyn Io, from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    guarded(io, IoOp::Rename, from, 0, to.as_os_str().as_bytes(), || {
        std::fs::rename(from, to)
    })
}

/// Whether an `IoOp::Exchange` failed because the file system (or the OS) cannot exchange two
/// names, not because of the files: then a rename does instead.
pub(crate) fn is_exchange_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}

/// Exchanges the names `a` and `b` (both must exist) in one step; the hooks get `b` as the
/// data. `Unsupported` where the OS has no such call (see [`is_exchange_unsupported`]).
pub(crate) fn exchange(io: &dyn Io, a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    guarded(io, IoOp::Exchange, a, 0, b.as_os_str().as_bytes(), || {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{renameat_with, RenameFlags, CWD};
            renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    })
}

/// Makes `to` a hard link of `from`; the hooks get `to` as the data.
#[allow(clippy::disallowed_methods)] // the seam itself: the one place a link is made
pub(crate) fn hard_link(io: &dyn Io, from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    guarded(io, IoOp::Link, from, 0, to.as_os_str().as_bytes(), || {
        std::fs::hard_link(from, to)
    })
}

/// Creates the directory `path` (mode 0755; its parent must exist).
#[allow(clippy::disallowed_methods)] // the seam itself: the one place a directory is created
pub(crate) fn create_dir(io: &dyn Io, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    guarded(io, IoOp::CreateDir, path, 0, &[], || {
        std::fs::DirBuilder::new().mode(0o755).create(path)
    })
}

/// `fsync` of the directory `dir`: makes the creations, renames and removals of its entries
/// durable.
pub(crate) fn sync_dir(io: &dyn Io, dir: &Path) -> io::Result<()> {
    guarded(io, IoOp::SyncDir, dir, 0, &[], || {
        super::fds::with_room(|| std::fs::File::open(dir)).and_then(|d| d.sync_all())
    })
}

/// Opens the existing file `path` for reading and writing (a new file description of it),
/// as one `IoOp::Open`.
pub(crate) fn open_existing(io: &dyn Io, path: &Path) -> io::Result<std::fs::File> {
    guarded(io, IoOp::Open, path, 0, &[], || {
        super::fds::with_room(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        })
    })
}

/// Creates the file `path`, which must not exist (mode 0644, opened for reading and
/// writing), and runs `fill` on it, all as one `IoOp::Create`.
pub(crate) fn create_new<T>(
    io: &dyn Io,
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> io::Result<T>,
) -> io::Result<(std::fs::File, T)> {
    use std::os::unix::fs::OpenOptionsExt;
    guarded(io, IoOp::Create, path, 0, &[], || {
        // The seam itself: the one place a file is created.
        #[allow(clippy::disallowed_methods)]
        // An open that fails creates nothing, so `with_room` may try it again.
        let mut f = super::fds::with_room(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
        })?;
        let t = fill(&mut f)?;
        Ok((f, t))
    })
}
