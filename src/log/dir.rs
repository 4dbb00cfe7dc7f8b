//! The files of a log directory, and the one module that changes them.
//!
//! Every change to the directory is a small function here over the storage seam (`log/io.rs`,
//! where the fault-injection and power-loss hooks see it), named for what it does to the log:
//! create the directory, take its lock, prepare a segment file, make it a segment, retire a
//! segment to the pool or remove it, remove a spare, write or remove the clean-close mark or a
//! consumer's position, replace the `ids` file, sync the directory. `clippy.toml` reserves the
//! seam's file-lifecycle functions (`io::create_new`, `io::create_dir`, `io::rename`,
//! `io::exchange`, `io::remove`, `io::sync_dir`)
//! for this file: each function here that calls one says so with an `allow`. What a segment
//! file holds (its header, frames, syncs of its contents) is `segment.rs`'s business, the
//! clean-close mark's format is `clean.rs`'s, a consumer position's `consumer.rs`'s, the
//! file names are `format.rs`'s (a consumer's, `consumer.rs`'s).
//!
//! The order rules (docs/FORMAT.md: "Files", "Writing", "Retiring a prefix", the clean-close
//! mark):
//! - the directory's own entry is durable before anything is created in it (`create_dir`);
//! - a prepared file is zero-filled and synced, and the directory synced, before it can become
//!   a segment (`create_prepared`); it gets its `.seg` name only once its header is durable,
//!   and the directory is synced before a frame is written into it (`activate`);
//! - retiring a prefix changes one name at a time, oldest first, each change followed by a
//!   directory sync, and a file joins the pool only once its rename is durable
//!   (`log/retire.rs`, over `retire_to_pool`, `remove_retired` and `sync_dir`);
//! - a cut removes the segments after it newest first, each removal durable before the next
//!   (`remove_dropped`, called by recovery);
//! - the segments a rewritten segment replaced, which a crash left behind it, go only once the
//!   rename that made it is durable: the directory is synced first, then each removal is
//!   (`remove_rewrite_leftovers`, called by recovery);
//! - the clean-close mark appears whole or not at all (`write_clean_mark`), and is removed
//!   durably before a writable open changes the log (`remove_clean_mark`);
//! - a consumer's position file is replaced the same way: the old position or the whole new
//!   one (`write_consumer`);
//! - the `ids` file and a consumer's commits go through a temporary kept for them, so that the
//!   replacement needs no new room on a full disk: written over in place and synced before
//!   its name is exchanged with the file's in one step (or renamed over it), the directory
//!   synced after (`replace_kept`); the room is kept by writing zeros into the temporary,
//!   which changes no name the log reads (`keep_room`).
//!
//! [`list_segments`] is the one listing of a directory's segment files: the engine's open,
//! every reader and the tests all see the log through it.

use crate::consumer::{
    consumer_file_name, consumer_tmp_name, consumer_tmp_pid, is_consumer_tmp_name,
    parse_consumer_file_name, process_alive, FILE_LEN as CONSUMER_LEN,
};
use crate::error::{Error, Result};
use crate::log::clean::{CLEAN_FILE, CLEAN_LEN, CLEAN_TMP};
use crate::log::format::{
    parse_segment_file_name, prep_file_name, recycle_file_name, segment_file_digits,
    segment_file_name,
};
use crate::log::io::{self, guarded, Io, IoOp};
use crate::log::segment::sync_file_range;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Lists the segment files of `dir` (`<20 digits>.seg`) in log order: (segment id, path).
///
/// A segment's name whose number is past `u64::MAX` is listed as `u64::MAX` (after every
/// other: its number is larger), not skipped: like any name outside 1..=`SEQ_MAX` it names a
/// batch no log has, which every scan refuses (`recovery::check_listed_id`, naming the file),
/// rather than open a log beside a file that may hold some of it.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = super::fds::with_room(|| std::fs::read_dir(dir))
        .map_err(|e| Error::io("read directory", dir, e))?;
    let mut segs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if segment_file_digits(name).is_some() {
            let id = parse_segment_file_name(name).unwrap_or(u64::MAX);
            segs.push((id, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// Whether `name` is one a log's directory holds (docs/FORMAT.md, "Files"): a segment's
/// (any 20 digits and `.seg`), a spare's (`prep-*.tmp`, `recycle-*.tmp`), `LOCK`, the
/// clean-close mark's, the request ids', a consumer's position (or one being written), or a
/// writer's copy of a shared segment.
fn is_log_file_name(name: &str) -> bool {
    let spare = |prefix| name.starts_with(prefix) && name.ends_with(".tmp");
    segment_file_digits(name).is_some()
        || spare("prep-")
        || spare("recycle-")
        || name.starts_with("consumer-")
        || is_consumer_tmp_name(name)
        || [
            "LOCK",
            CLEAN_FILE,
            CLEAN_TMP,
            IDS_FILE,
            IDS_TMP,
            UNSHARE_TMP,
        ]
        .contains(&name)
}

/// Refuses a directory that holds entries but none of a log's files
/// ([`is_log_file_name`]): a reader took such a directory (a mistyped path to some other
/// directory) for an empty log, and a writable open made a log among its files. An empty
/// directory, and one holding any file of a log (`LOCK`, say, of a log whose segments are all
/// gone, or of an engine that has not made its first yet) beside others, pass; so does one
/// holding only `lost+found` (the root of a file system made for the log). `Error::Io`
/// naming the directory and, of the entries it holds, the likely near miss or the first by
/// name ([`what_it_holds`]).
pub(crate) fn refuse_foreign(dir: &Path) -> Result<()> {
    let refuse = |e| Error::io("read directory", dir, e);
    let rd = super::fds::with_room(|| std::fs::read_dir(dir)).map_err(refuse)?;
    let mut foreign = Vec::new();
    for entry in rd {
        let name = entry.map_err(refuse)?.file_name();
        match name.to_str() {
            Some(n) if is_log_file_name(n) => return Ok(()),
            // What `mkfs` makes at a file system's root: a volume mounted for the log.
            Some("lost+found") => {}
            _ => foreign.push(name.to_string_lossy().into_owned()),
        }
    }
    let Some(holds) = what_it_holds(foreign) else {
        return Ok(());
    };
    Err(Error::io(
        "open log directory",
        dir,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "holds no mergelog log: no segment file (20 decimal digits + .seg, as {}) nor \
                 any other file of a log; it holds {holds}: is the path right?",
                segment_file_name(1),
            ),
        ),
    ))
}

/// What a directory holding no log holds instead, for the error that says so (this crate's
/// readers, and `mergelog`'s tools): of `names`, a name like a segment's but not one
/// (`foo.seg`, the likely near miss) or else the first by name, and how many others, as
/// "foo.seg and 2 other files"; `None` if there are none.
pub fn what_it_holds(mut names: Vec<String>) -> Option<String> {
    names.sort();
    let named = names
        .iter()
        .position(|n| n.ends_with(".seg"))
        .or((!names.is_empty()).then_some(0))?;
    let others = match names.len() - 1 {
        0 => String::new(),
        1 => " and 1 other file".into(),
        n => format!(" and {n} other files"),
    };
    Some(format!("{}{others}", names[named]))
}

/// Path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// Path of the `n`th prepared-ahead segment file.
pub(crate) fn prep_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(prep_file_name(n))
}

/// Path of the `n`th file in the pool of retired segments kept for reuse.
pub(crate) fn pool_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(recycle_file_name(n))
}

// ---------------------------------------------------------------------------------------------
// The directory and its lock.

/// `fsync` of the directory `dir`: makes the creations, renames and removals of its entries
/// durable.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn sync_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    io::sync_dir(io, dir).map_err(|e| Error::io(SYNC_DIR_OP, dir, e))
}

/// The operation a failed [`sync_dir`] names in its error.
pub(crate) const SYNC_DIR_OP: &str = "fsync directory";

/// Whether `e` is a failed directory sync: it may have reported another change of the
/// directory's than its caller's (a roll's rename waiting for its segment's first sync), so
/// it is never retried as if a later one covered it.
pub(crate) fn is_failed_dir_sync(e: &Error) -> bool {
    matches!(e, Error::Io { op, .. } if *op == SYNC_DIR_OP)
}

/// Syncs the log directory and its parent: the directory's entries, and its own entry.
pub(crate) fn sync_dir_and_parent(io: &dyn Io, dir: &Path) -> Result<()> {
    sync_dir(io, dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(io, parent)?;
    }
    Ok(())
}

/// Creates the log directory `dir` if it is missing: each missing component of its path in
/// turn, parent first, each followed by an `fsync` of its parent, so that a directory's entry
/// is durable before anything is written into it. Nothing is changed if `dir` exists.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn create_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    let parent = |p: &Path| -> PathBuf {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        }
    };
    let mut missing = Vec::new();
    let mut at = dir.to_owned();
    loop {
        match std::fs::metadata(&at) {
            Ok(m) if at == dir && !m.is_dir() => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                );
                return Err(Error::io("create directory", dir, e));
            }
            // A file in the way of a later component makes its creation fail, and say so.
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let up = parent(&at);
                missing.push(at);
                at = up;
            }
            Err(e) => return Err(Error::io("create directory", &at, e)),
        }
    }
    for path in missing.iter().rev() {
        match io::create_dir(io, path) {
            Ok(()) => {}
            // Made meanwhile by another opener: its entry may not be durable yet either.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(Error::io("create directory", path, e)),
        }
        sync_dir(io, &parent(path))?;
    }
    Ok(())
}

/// Takes the directory's advisory lock (flock on `DIR/LOCK`, created through the hooks if it
/// is missing).
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn lock_dir(io: &dyn Io, dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let open = || super::fds::with_room(|| OpenOptions::new().read(true).write(true).open(&path));
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match io::create_new(io, &path, |_| Ok(())) {
                Ok((file, ())) => Ok(file),
                // Another opener made it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(),
                Err(e) => Err(e),
            }
        }
        opened => opened,
    }
    .map_err(|e| Error::io("open lock file", &path, e))?;
    // A lock held by another engine is refused at once, but only after a short grace: a
    // process forked by this one between the previous engine's close and this open holds a
    // copy of the previous engine's (close-on-exec) lock descriptor until it execs, and the
    // flock lives as long as any copy does.
    match flock_within_grace(&file, libc::LOCK_EX) {
        Ok(true) => Ok(file),
        Ok(false) => Err(Error::Locked(dir.to_owned())),
        Err(e) => Err(Error::io("lock", &path, e)),
    }
}

/// How long `lock_dir` tries again before it reports the directory locked (see there).
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes `file`'s flock in mode `op` (`LOCK_EX` or `LOCK_SH`), trying again for
/// [`LOCK_GRACE`] while another holder has it: `Ok(false)` if it still does then.
fn flock_within_grace(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        // SAFETY: flock on a file descriptor we own and keep open; it has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Removes what a failed step may have left at `path`, if anything is there: best effort,
/// through the hooks (which are not called if there is no such file).
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn remove_leftover(io: &dyn Io, path: &Path) {
    if std::fs::symlink_metadata(path).is_ok() {
        let _ = io::remove(io, path);
    }
}

// ---------------------------------------------------------------------------------------------
// Prepared segment files.

/// Written zeros, not `set_len` (sparse: a store into an unbacked page of a full disk is
/// SIGBUS) and not `fallocate` (unwritten extents: every later sync pays a metadata write).
/// The zero fill writes this much at a time. Keep it under 2 MiB: on Linux 6.18 with ext4, a
/// file filled by writes of 2 MiB or more (presumably cached in large folios) made every later
/// 176-byte `pwrite` + `fdatasync` into it 10-13 us slower at the median than one filled in
/// 256 KiB or 1 MiB writes (`tools/fill_sync_probe.py`; docs/decisions.md, "The CPU a run
/// counts starts at the start line").
const ZERO_CHUNK: usize = 256 << 10;

/// Keeps the zero fill's writeback to about two chunks in flight: starts writing back the
/// chunk at `off` and waits for the one before it. Left to the final `fsync` (or to the
/// kernel's background writeback), the whole segment went to the disk in one burst, and every
/// `fdatasync` the engine issued meanwhile (its cache flush) waited behind it: the 99.9th
/// percentile of the end-to-end bench was that wait.
#[cfg(target_os = "linux")]
fn pace_writeback(f: &std::fs::File, off: u64, len: usize) -> std::io::Result<()> {
    let call = |off: u64, len: usize, flags: libc::c_uint| sync_file_range(f, off, len, flags);
    call(off, len, libc::SYNC_FILE_RANGE_WRITE)?;
    if off >= ZERO_CHUNK as u64 {
        call(
            off - ZERO_CHUNK as u64,
            ZERO_CHUNK,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pace_writeback(_f: &std::fs::File, _off: u64, _len: usize) -> std::io::Result<()> {
    Ok(())
}

/// Creates the prepared segment file `path` (see [`ZERO_CHUNK`]) and fills it with `size`
/// written zeros, then syncs it and the directory.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn create_prepared(io: &dyn Io, dir: &Path, path: &Path, size: u64) -> Result<()> {
    let result = io::create_new(io, path, |f| {
        no_cow(f);
        let chunk = vec![0u8; ZERO_CHUNK];
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(ZERO_CHUNK as u64) as usize;
            f.write_all(&chunk[..n])?;
            pace_writeback(f, off, n)?;
            off += n as u64;
        }
        f.sync_all()
    });
    if let Err(e) = result {
        // Leave no half-made file behind: it would only confuse the next open.
        remove_leftover(io, path);
        return Err(Error::io("preallocate segment", path, e));
    }
    sync_dir(io, dir)
}

/// Asks the file system to overwrite the new, still empty, segment file in place (the inode
/// flag `FS_NOCOW_FL`, `chattr +C`; only an empty file takes it). On btrfs a file is
/// copy-on-write: every overwrite of its zeros takes new room, so on a full disk a frame's
/// `pwrite` failed (which fails the engine) and a store through the mapping killed the
/// process with `SIGBUS` (both seen on a full btrfs image). No-CoW, the zeros written here
/// are the room the frames take, as on ext4, and a full disk shows only at the preparation,
/// where the engine refuses writes instead of failing (`crate::room`). It also turns off
/// btrfs's own checksums and compression for the file (the frames carry CRCs), as
/// systemd-journald does for its journal files. Elsewhere the flag is unknown or means
/// nothing, and the error is ignored.
fn no_cow(f: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
        if let Ok(flags) = ioctl_getflags(f) {
            if !flags.contains(IFlags::NOCOW) {
                let _ = ioctl_setflags(f, flags | IFlags::NOCOW);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

/// `statfs`'s `f_type` of btrfs.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;

/// Refuses `WritePath::Mmap` for a log directory on btrfs. A store through the mapping into a
/// page that writeback has cleaned asks btrfs for room (`page_mkwrite`); on a full btrfs image
/// the flusher then waited in the kernel, uninterruptibly, for as long as the disk stayed
/// full (minutes, until a file was removed; `SIGKILL` waits too), and without the no-CoW flag
/// the process was killed by `SIGBUS`. The pwrite path gets an error instead, which the
/// engine turns into refused writes (`crate::room`).
pub(crate) fn check_write_path(dir: &Path, path: crate::config::WritePath) -> Result<()> {
    #[cfg(target_os = "linux")]
    if path == crate::config::WritePath::Mmap {
        // A directory whose file system cannot be asked is left to the open to report.
        if let Ok(st) = rustix::fs::statfs(dir) {
            if refuses_mmap(st.f_type as u64) {
                return Err(Error::InvalidConfig(format!(
                    "write_path = WritePath::Mmap on btrfs ({}): a store through the mapping \
                     waits in the kernel, unkillable, while the disk is full; use \
                     WritePath::Pwrite (the default)",
                    dir.display()
                )));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (dir, path);
    Ok(())
}

/// Whether a file system of `statfs` type `f_type` refuses the mmap write path (only the
/// low 32 bits are the magic: a 32-bit `f_type` sign-extends).
fn refuses_mmap(f_type: u64) -> bool {
    f_type & 0xFFFF_FFFF == BTRFS_SUPER_MAGIC
}

/// As [`create_prepared`], after removing whatever an earlier attempt that failed may have
/// left at `path`.
pub(crate) fn replace_prepared(io: &dyn Io, dir: &Path, path: &Path, size: u64) -> Result<()> {
    remove_leftover(io, path);
    create_prepared(io, dir, path, size)
}

/// Makes the prepared file `prep`, whose header is written, the segment file `path`: renames
/// it (the caller syncs the directory: at once, or with the segment's first sync, see
/// `Segment::activate`).
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn rename_prepared(io: &dyn Io, prep: &Path, path: &Path) -> Result<()> {
    io::rename(io, prep, path).map_err(|e| Error::io("rename prepared segment", prep, e))
}

// ---------------------------------------------------------------------------------------------
// Spare files (prepared ones, and the pool) and retired segments.

/// Takes over the spare segment files an earlier run left in `dir`: those whose name
/// `number` parses, in number order, keeping up to `keep` of the right size and removing the
/// rest (a crash may have left them short). Returns the kept ones and the highest number
/// seen (0 if none).
pub(crate) fn adopt_spares(
    io: &dyn Io,
    dir: &Path,
    number: fn(&str) -> Option<u64>,
    segment_bytes: u64,
    keep: usize,
) -> Result<(Vec<PathBuf>, u64)> {
    let rd = super::fds::with_room(|| std::fs::read_dir(dir))
        .map_err(|e| Error::io("read directory", dir, e))?;
    let mut found: Vec<(u64, PathBuf, u64)> = rd
        .flatten()
        .filter_map(|entry| {
            let n = number(entry.file_name().to_str()?)?;
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            Some((n, entry.path(), size))
        })
        .collect();
    found.sort();
    let highest = found.last().map_or(0, |f| f.0);
    let mut kept = Vec::new();
    let mut removed = false;
    for (_, path, size) in found {
        if kept.len() < keep && size == segment_bytes {
            kept.push(path);
        } else {
            remove_spare(io, &path)?;
            removed = true;
        }
    }
    if removed {
        sync_dir(io, dir)?;
    }
    Ok((kept, highest))
}

/// Removes a spare file an earlier run left that open does not adopt. Durable once the
/// directory is synced.
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn remove_spare(io: &dyn Io, path: &Path) -> Result<()> {
    io::remove(io, path).map_err(|e| Error::io("remove spare segment", path, e))
}

/// Removes `path`, a file the pool gave up (it has no `.seg` name, so it is no part of the
/// log: no order to keep). Durable once the directory is synced.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn evict_from_pool(io: &dyn Io, path: &Path) -> Result<()> {
    io::remove(io, path).map_err(|e| Error::io("remove a spare segment from the pool", path, e))
}

/// Retires the segment file `seg` to the pool: renames it to `to`, a path the pool gave. Its
/// `.seg` name is gone; durable once the directory is synced (and only then may the file
/// join the pool).
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn retire_to_pool(io: &dyn Io, seg: &Path, to: &Path) -> Result<()> {
    io::rename(io, seg, to).map_err(|e| Error::io("move retired segment to the pool", seg, e))
}

/// Retires the segment file `seg` by removing it. Durable once the directory is synced.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn remove_retired(io: &dyn Io, seg: &Path) -> Result<()> {
    io::remove(io, seg).map_err(|e| Error::io("remove retired segment", seg, e))
}

/// Removes the segment file `path`, which recovery dropped (after a cut), and syncs the
/// directory: the removal is durable before the caller removes the next one.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn remove_dropped(io: &dyn Io, dir: &Path, path: &Path) -> Result<()> {
    io::remove(io, path).map_err(|e| Error::io("remove dropped segment", path, e))?;
    sync_dir(io, dir)
}

/// Removes `leftovers`, the segment files a rewritten segment replaced (their ids lie inside
/// its batches: a crash came between its rename and their removal), after a directory sync
/// that makes the rename durable; each removal is synced before the next, oldest first, as
/// the rewrite itself removes them.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn remove_rewrite_leftovers(
    io: &dyn Io,
    dir: &Path,
    leftovers: &[PathBuf],
) -> Result<()> {
    if leftovers.is_empty() {
        return Ok(());
    }
    sync_dir(io, dir)?;
    for path in leftovers {
        io::remove(io, path)
            .map_err(|e| Error::io("remove rewritten segment's leftover", path, e))?;
        sync_dir(io, dir)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The clean-close mark (`log/clean.rs`).

/// Reads the file `p`, whose format makes it `len` bytes: at most `len + 1` of them, so that
/// its decoder still sees a longer file as the wrong length, and a huge one is not read into
/// memory.
fn read_small_file(p: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(len + 1);
    open_regular(p, false)?
        .take(len as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens `p` for reading (and writing if `writable`) if it is a regular file: non-blocking,
/// so that a FIFO under one of the log's names cannot block the open (it changes nothing for
/// a regular file), and anything but a regular file (a FIFO, a directory, a device) is an
/// `InvalidData` error.
pub(crate) fn open_regular(p: &Path, writable: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let irregular = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file (a directory, FIFO or device)",
        )
    };
    let file = super::fds::with_room(|| {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
    })
    .map_err(|e| match e.raw_os_error() {
        // A directory opened for writing.
        Some(libc::EISDIR) => irregular(),
        _ => e,
    })?;
    if !file.metadata()?.is_file() {
        return Err(irregular());
    }
    Ok(file)
}

/// Whether the name `path` is a symbolic link (whatever its target). One that does not open
/// for `NotFound` points at nothing.
pub(crate) fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The error of a failed open or read of the side file `p` (`what`: "a consumer position",
/// ...) through [`open_regular`]: its name on anything but a regular file is
/// `Error::Corrupt` at offset 0, naming it, and so is its name on a symbolic link to nothing
/// (the engine never makes a link, and removes or replaces the name itself): neither may be
/// read as "no such file". Any other failure is the I/O error of `op`.
fn side_file_error(op: &'static str, what: &str, p: &Path, e: std::io::Error) -> Error {
    let corrupt = |reason: String| Error::Corrupt {
        path: p.to_owned(),
        offset: 0,
        reason,
    };
    match e.kind() {
        std::io::ErrorKind::InvalidData => corrupt(format!(
            "{what}'s name on something other than a regular file (a directory, FIFO or device)"
        )),
        std::io::ErrorKind::NotFound if is_symlink(p) => corrupt(format!(
            "{what}'s name on a symbolic link to nothing (its target does not exist)"
        )),
        _ => Error::io(op, p, e),
    }
}

/// The bytes of `dir`'s clean-close mark file (its first `CLEAN_LEN + 1` at most: a longer
/// file is no mark either), `None` if there is none. Its name on a symbolic link to nothing
/// or on anything but a regular file is `Error::Corrupt` ([`side_file_error`]), never "none":
/// without the mark, an open cannot tell lost durable history from a torn tail.
pub(crate) fn read_clean_mark(dir: &Path) -> Result<Option<Vec<u8>>> {
    let p = dir.join(CLEAN_FILE);
    match read_small_file(&p, CLEAN_LEN) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !is_symlink(&p) => Ok(None),
        Err(e) => Err(side_file_error(
            "read clean-close mark",
            "the clean-close mark",
            &p,
            e,
        )),
    }
}

/// Removes the mark and syncs the directory: from here on the log may change.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn remove_clean_mark(io: &dyn Io, dir: &Path) -> Result<()> {
    let p = dir.join(CLEAN_FILE);
    io::remove(io, &p).map_err(|e| Error::io("remove clean-close mark", &p, e))?;
    sync_dir(io, dir)
}

/// Writes the mark `bytes`: to a temporary file, synced, renamed into place, directory
/// synced. A crash at any step leaves either no mark or the whole one.
pub(crate) fn write_clean_mark(io: &dyn Io, dir: &Path, bytes: &[u8]) -> Result<()> {
    let (tmp, mark) = (dir.join(CLEAN_TMP), dir.join(CLEAN_FILE));
    let ops = ("write clean-close mark", "rename clean-close mark");
    replace_small_file(io, dir, (&tmp, &mark), ops, bytes)
}

/// Replaces the small file `names.1` with `bytes`: written to the temporary `names.0` (after
/// removing one an interrupted write left), synced, renamed into place, directory synced. A
/// crash at any step leaves either the old file or the whole new one. `ops` name the write
/// and the rename in errors.
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn replace_small_file(
    io: &dyn Io,
    dir: &Path,
    (tmp, dest): (&Path, &Path),
    (write_op, rename_op): (&'static str, &'static str),
    bytes: &[u8],
) -> Result<()> {
    // A temporary file an interrupted write left behind.
    remove_leftover(io, tmp);
    let made = io::create_new(io, tmp, |_| Ok(())).map(|(file, ())| file);
    fill_temporary(io, tmp, made, bytes, write_op)?;
    if let Err(e) = io::rename(io, tmp, dest) {
        // The temporary file's name is this write's own: nothing else removes it.
        remove_leftover(io, tmp);
        return Err(Error::io(rename_op, tmp, e));
    }
    sync_dir(io, dir)
}

/// Writes `bytes` over the start of the temporary file `tmp` (`opened`: made or opened for
/// the write) and syncs it. On any failure `tmp` is removed (what it holds is unknown: a
/// later replacement makes a new one) and the error names `write_op`.
fn fill_temporary(
    io: &dyn Io,
    tmp: &Path,
    opened: std::io::Result<File>,
    bytes: &[u8],
    write_op: &'static str,
) -> Result<()> {
    let written = opened.and_then(|file| {
        guarded(io, IoOp::Write, tmp, 0, bytes, || {
            file.write_all_at(bytes, 0)
        })?;
        guarded(io, IoOp::Sync, tmp, 0, &[], || file.sync_data())
    });
    written.map_err(|e| {
        remove_leftover(io, tmp);
        Error::io(write_op, tmp, e)
    })
}

// ---------------------------------------------------------------------------------------------
// Small files replaced through a kept temporary: room for the next replacement held on disk.

/// Replaces the small file `dest` with `bytes` through its kept temporary `tmp`, so that on a
/// full disk the replacement needs no new room: the bytes are written over the start of
/// `tmp` in place (it may be longer: a format read this way says where its contents end),
/// synced, and the two names exchanged in one step (`io::exchange`), so that `tmp` then holds
/// the old file, whose room the next replacement overwrites; the directory is synced. With no
/// `tmp` (none kept yet, or a failed replacement removed it) a new one is made first, which
/// needs room as [`replace_small_file`] does. With no `dest` yet, or where names cannot be
/// exchanged, `tmp` is renamed over `dest` instead, and the old file's room goes back to the
/// disk. A crash at any step leaves either the old file or the whole new one at `dest`: the
/// name changes only once the new bytes are durable, and an exchange, like a rename, is one
/// step. Returns whether `tmp` is still kept (the names were exchanged). `ops` name the write
/// and the rename in errors.
///
/// `unsettled` is the owner's record that an exchange through `tmp` may not be durable (the
/// directory's sync after it did not return `Ok`): a power loss may then still give `dest`
/// the inode `tmp` names now, so before anything is written into `tmp` the directory is
/// synced again (see [`settle`]).
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn replace_kept(
    io: &dyn Io,
    dir: &Path,
    (tmp, dest): (&Path, &Path),
    (write_op, rename_op): (&'static str, &'static str),
    bytes: &[u8],
    unsettled: &AtomicBool,
) -> Result<bool> {
    settle(io, dir, unsettled)?;
    let kept = std::fs::symlink_metadata(tmp).is_ok_and(|m| m.is_file());
    let opened = match kept {
        true => io::open_existing(io, tmp),
        false => {
            remove_leftover(io, tmp);
            new_kept_file(io, tmp)
        }
    };
    fill_temporary(io, tmp, opened, bytes, write_op)?;
    let exchanged = match std::fs::symlink_metadata(dest).is_ok() {
        true => match io::exchange(io, tmp, dest) {
            Ok(()) => Ok(true),
            // No exchange on this file system; or `dest` went meanwhile (a consumer removed
            // by another process), which a rename makes again, as before.
            Err(e)
                if io::is_exchange_unsupported(&e) || e.kind() == std::io::ErrorKind::NotFound =>
            {
                io::rename(io, tmp, dest).map(|()| false)
            }
            Err(e) => Err(e),
        },
        false => io::rename(io, tmp, dest).map(|()| false),
    };
    let exchanged = match exchanged {
        Ok(x) => x,
        Err(e) => {
            // Neither name changed: the temporary holds the new bytes, which nothing wants.
            remove_leftover(io, tmp);
            return Err(Error::io(rename_op, tmp, e));
        }
    };
    // Until the directory is synced, `dest`'s old inode (now `tmp`'s) may be `dest`'s again
    // after a power loss.
    unsettled.store(exchanged, Ordering::Relaxed);
    sync_dir(io, dir)?;
    unsettled.store(false, Ordering::Relaxed);
    Ok(exchanged)
}

/// Syncs `dir` if `unsettled` says an exchange of a kept temporary's name may not be durable
/// (its directory sync failed), and clears it once it is: writing into the temporary before
/// then could write into the file a power loss leaves under the real name (the old file or
/// the whole new one must stand there).
fn settle(io: &dyn Io, dir: &Path, unsettled: &AtomicBool) -> Result<()> {
    if unsettled.load(Ordering::Relaxed) {
        sync_dir(io, dir)?;
        unsettled.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// Creates the empty file `tmp` to be kept as a small file's temporary, no-CoW (see
/// [`no_cow`]: on btrfs an overwrite of a copy-on-write file needs new room).
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn new_kept_file(io: &dyn Io, tmp: &Path) -> std::io::Result<File> {
    io::create_new(io, tmp, |f| {
        no_cow(f);
        Ok(())
    })
    .map(|(f, ())| f)
}

/// Makes the kept temporary `tmp` at least `room` bytes long, creating it if there is none:
/// zeros written past its end, then synced. Best effort, for after a replacement: the caller
/// ignores the error (the next replacement then makes its temporary as it goes, and needs
/// room for it). A write that fails for room may leave the file longer than it was, never
/// shorter. Changes no name the log reads and syncs no directory: a crash that takes the file
/// back only leaves the next replacement to make it.
#[allow(clippy::disallowed_methods)] // the log directory's owner
fn keep_room(io: &dyn Io, tmp: &Path, room: u64) -> Result<()> {
    let err = |e| Error::io("keep room for a small file's replacement", tmp, e);
    let (file, len) = match std::fs::symlink_metadata(tmp) {
        Ok(m) if m.is_file() && m.len() >= room => return Ok(()),
        Ok(m) if m.is_file() => (io::open_existing(io, tmp).map_err(err)?, m.len()),
        Ok(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file");
            return Err(err(e));
        }
        Err(_) => (new_kept_file(io, tmp).map_err(err)?, 0),
    };
    let zeros = vec![0u8; ZERO_CHUNK.min(room as usize)];
    let mut off = len;
    while off < room {
        let n = (room - off).min(zeros.len() as u64) as usize;
        guarded(io, IoOp::Write, tmp, off, &zeros[..n], || {
            file.write_all_at(&zeros[..n], off)
        })
        .map_err(err)?;
        off += n as u64;
    }
    guarded(io, IoOp::Sync, tmp, 0, &[], || file.sync_data()).map_err(err)
}

/// Removes the kept temporary `tmp` (its owner, a consumer's handle, is gone), if it is there.
/// Best effort; no directory sync (a crash that brings it back leaves it to the next open).
pub(crate) fn remove_kept(io: &dyn Io, tmp: &Path) {
    remove_leftover(io, tmp);
}

// ---------------------------------------------------------------------------------------------
// Side files read while another process may replace them.

/// How many times [`read_side_file`] reads a side file in all, at most, as `FIND_RETRIES_MAX`
/// bounds a directory follower's listings: past it, the last read is taken.
const SIDE_READ_TRIES_MAX: u32 = 100;

/// Whether the name `p` gives the file `file` has open (device and inode).
fn still_names(p: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Reads the side file `p` that another process may be replacing through a kept temporary
/// ([`replace_kept`]: the `ids` file, a consumer's position): `open` opens it (`None`: there
/// is none), `read` reads and decodes the open file (`Ok(Err(_))`: its bytes are no valid
/// file). `None` if there is no file; otherwise the read taken, good or bad.
///
/// A reader that opened the name just before an exchange holds the old inode, which is then
/// the temporary: the next replacement writes into it in place, and a read meanwhile can see
/// old and new bytes mixed (and a read after that write, bytes not yet under the name). So a
/// read is taken only if the name still gives the file read, once it is read (the handle's
/// device and inode against the name's); otherwise the name is opened and read again. Bad
/// bytes of the file the name gives are read again once more before they are taken: the name
/// may have been exchanged away and back during the read (the file is written whole before
/// it comes back), and a file damaged under its name reads bad twice. After
/// [`SIDE_READ_TRIES_MAX`] reads the last is taken, whatever it was.
pub(crate) fn read_side_file<T, B>(
    p: &Path,
    open: impl Fn() -> Result<Option<File>>,
    mut read: impl FnMut(&File) -> Result<std::result::Result<T, B>>,
) -> Result<Option<std::result::Result<T, B>>> {
    let (mut tries, mut bad_named) = (0, false);
    loop {
        let Some(file) = open()? else {
            return Ok(None);
        };
        side_read_hook(SideRead::Opened);
        let got = read(&file)?;
        side_read_hook(SideRead::Read);
        tries += 1;
        let named = still_names(p, &file);
        match got {
            Ok(v) if named => return Ok(Some(Ok(v))),
            Err(b) if named && bad_named => return Ok(Some(Err(b))),
            got if tries >= SIDE_READ_TRIES_MAX => return Ok(Some(got)),
            Err(_) => bad_named = named,
            Ok(_) => bad_named = false,
        }
    }
}

/// A step of [`read_side_file`], for the tests' hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SideRead {
    /// The file is open, not read yet.
    Opened,
    /// The file is read, not yet checked against its name.
    Read,
}

/// The tests' hook into [`read_side_file`].
#[cfg(test)]
type SideReadHook = Box<dyn FnMut(SideRead)>;

#[cfg(test)]
thread_local! {
    /// The tests' hook into [`read_side_file`], on this thread.
    static SIDE_READ_HOOK: std::cell::RefCell<Option<SideReadHook>> =
        const { std::cell::RefCell::new(None) };
}

/// Has `hook` called at each step of [`read_side_file`] on this thread (`None`: no more).
#[cfg(test)]
pub(crate) fn on_side_read(hook: Option<SideReadHook>) {
    SIDE_READ_HOOK.with(|h| *h.borrow_mut() = hook);
}

fn side_read_hook(_step: SideRead) {
    #[cfg(test)]
    {
        // Taken out while it runs: it may read a side file itself.
        let hook = SIDE_READ_HOOK.with(|h| h.borrow_mut().take());
        if let Some(mut hook) = hook {
            hook(_step);
            SIDE_READ_HOOK.with(|h| {
                let mut h = h.borrow_mut();
                if h.is_none() {
                    *h = Some(hook);
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The carried request ids (`ids.rs` has the format).

/// Name of the file holding the request ids of retired segments (docs/FORMAT.md).
pub(crate) const IDS_FILE: &str = "ids";
const IDS_TMP: &str = "ids.tmp";

/// Reads `dir`'s carried-ids file with `read` (handed the open file and its length:
/// `Ok(Err(_))` if its bytes are no valid file), through [`read_side_file`]: a read of a file
/// a replacement exchanged away from the name meanwhile is made again. `None` if there is no
/// file. Its name on a symbolic link to nothing or on anything but a regular file is
/// `Error::Corrupt` ([`side_file_error`]), never "none": that would forget the ids of retired
/// segments.
pub(crate) fn read_ids<T, B>(
    dir: &Path,
    mut read: impl FnMut(&File, u64) -> Result<std::result::Result<T, B>>,
) -> Result<Option<std::result::Result<T, B>>> {
    let p = dir.join(IDS_FILE);
    let open = || match open_regular(&p, false) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !is_symlink(&p) => Ok(None),
        Err(e) => Err(side_file_error(
            "open request ids",
            "the request ids",
            &p,
            e,
        )),
    };
    read_side_file(&p, open, |file| {
        let len = file
            .metadata()
            .map_err(|e| Error::io("read request ids' length", &p, e))?
            .len();
        read(file, len)
    })
}

/// Replaces the carried-ids file with `bytes` through its kept temporary `ids.tmp`
/// ([`replace_kept`]): with one at least as long as `bytes`, no new room is needed. A crash at
/// any step leaves the old file or the whole new one. Returns whether `ids.tmp` is kept.
/// `unsettled`: see [`replace_kept`].
pub(crate) fn write_ids(
    io: &dyn Io,
    dir: &Path,
    bytes: &[u8],
    unsettled: &AtomicBool,
) -> Result<bool> {
    let (tmp, file) = (dir.join(IDS_TMP), dir.join(IDS_FILE));
    let ops = ("write request ids", "rename request ids");
    replace_kept(io, dir, (&tmp, &file), ops, bytes, unsettled)
}

/// Makes `ids.tmp` at least `room` bytes long ([`keep_room`]; best effort), once the last
/// exchange through it is durable (`unsettled`: see [`replace_kept`]).
pub(crate) fn keep_ids_room(
    io: &dyn Io,
    dir: &Path,
    room: u64,
    unsettled: &AtomicBool,
) -> Result<()> {
    settle(io, dir, unsettled)?;
    keep_room(io, &dir.join(IDS_TMP), room)
}

/// Whether `dir` has a carried-ids file.
pub(crate) fn has_ids(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(IDS_FILE)).is_ok()
}

/// What identifies the `ids` file under its name at one moment (device, inode, length, and
/// change time: a replacement exchanges another inode in, and a later write or exchange moves
/// the change time), `None` if there is none: equal stamps say no retirement wrote it between
/// them (a retirement writes it before it removes a segment). Boxed: every `LogReader` holds
/// one, and most logs have no `ids` file.
pub(crate) type IdsStamp = Option<Box<(u64, u64, u64, i64, i64)>>;

/// The `ids` file's stamp now ([`IdsStamp`]).
pub(crate) fn ids_stamp(dir: &Path) -> IdsStamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir.join(IDS_FILE))
        .ok()
        .map(|m| Box::new((m.dev(), m.ino(), m.len(), m.ctime(), m.ctime_nsec())))
}

// ---------------------------------------------------------------------------------------------
// Consumer position files (`consumer.rs` has their names and format).

/// The names of the consumers that have a position file in `dir`, sorted.
pub(crate) fn list_consumers(dir: &Path) -> Result<Vec<String>> {
    let rd = super::fds::with_room(|| std::fs::read_dir(dir))
        .map_err(|e| Error::io("read directory", dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(parse_consumer_file_name)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the temporary position files (`consumer.tmp-*`) that interrupted commits left in
/// `dir`: those whose name does not name a live process (`crate::consumer::process_alive`;
/// a live handle keeps its own for its commits, and one of another process may be in the
/// middle of one). Nothing reads them; no directory sync is needed (a crash that brings one back leaves
/// it for the next open).
pub(crate) fn remove_consumer_leftovers(io: &dyn Io, dir: &Path) -> Result<()> {
    let rd = super::fds::with_room(|| std::fs::read_dir(dir))
        .map_err(|e| Error::io("read directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let left = entry.file_name().to_str().is_some_and(|n| {
            is_consumer_tmp_name(n) && !consumer_tmp_pid(n).is_some_and(process_alive)
        });
        if left {
            remove_leftover(io, &entry.path());
        }
    }
    Ok(())
}

/// The bytes of consumer `name`'s position file (its first 33 at most: a longer file is no
/// position either); `None` if it has none. Read through [`read_side_file`]: bytes that are
/// not `valid`, or read from a file a commit exchanged away from the name meanwhile (a reader
/// in another process may hold it while the next commit writes into it), are read again, and
/// invalid bytes are returned only as read from the file the name still gives. Its name on a
/// symbolic link to nothing or on anything but a regular file is `Error::Corrupt`
/// ([`side_file_error`]), never "none": a consumer with no file holds no retirement back.
pub(crate) fn read_consumer(
    dir: &Path,
    name: &str,
    valid: impl Fn(&[u8]) -> bool,
) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let p = dir.join(consumer_file_name(name));
    let failed = |e| side_file_error("read consumer position", "a consumer position", &p, e);
    let open = || match open_regular(&p, false) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !is_symlink(&p) => Ok(None),
        Err(e) => Err(failed(e)),
    };
    let got = read_side_file(&p, open, |mut file| {
        let mut bytes = Vec::with_capacity(CONSUMER_LEN + 1);
        Read::take(&mut file, CONSUMER_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(failed)?;
        Ok(match valid(&bytes) {
            true => Ok(bytes),
            false => Err(bytes),
        })
    })?;
    Ok(got.map(|read| read.unwrap_or_else(|bad| bad)))
}

/// Writes consumer `name`'s position file as [`write_clean_mark`] writes the mark: a crash at
/// any step leaves the old position or the whole new one.
pub(crate) fn write_consumer(io: &dyn Io, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let (tmp, file) = (
        dir.join(consumer_tmp_name(name)),
        dir.join(consumer_file_name(name)),
    );
    let ops = ("write consumer position", "rename consumer position");
    replace_small_file(io, dir, (&tmp, &file), ops, bytes)
}

/// Commits consumer `name`'s position `bytes` through the handle's kept temporary `tmp`
/// ([`replace_kept`]): with one, no new room is needed. A crash at any step leaves the old
/// position or the whole new one. Afterwards `tmp` is kept (best effort) for the next commit.
/// `unsettled` is the handle's: see [`replace_kept`].
pub(crate) fn commit_consumer(
    io: &dyn Io,
    dir: &Path,
    (name, tmp): (&str, &Path),
    bytes: &[u8],
    unsettled: &AtomicBool,
) -> Result<()> {
    let file = dir.join(consumer_file_name(name));
    let ops = ("write consumer position", "rename consumer position");
    if !replace_kept(io, dir, (tmp, &file), ops, bytes, unsettled)? {
        let _ = keep_room(io, tmp, CONSUMER_LEN as u64);
    }
    Ok(())
}

/// Makes a consumer handle's kept temporary `tmp` (best effort: see [`keep_room`]), so that
/// its first commit needs no new room either.
pub(crate) fn keep_consumer_room(io: &dyn Io, tmp: &Path) -> Result<()> {
    keep_room(io, tmp, CONSUMER_LEN as u64)
}

/// Removes consumer `name`'s position file and syncs the directory; false if it had none.
/// Without one the directory is synced all the same: a removal whose sync failed may be
/// retried, and the retry must not return before the removal is durable.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn remove_consumer(io: &dyn Io, dir: &Path, name: &str) -> Result<bool> {
    let p = dir.join(consumer_file_name(name));
    if std::fs::symlink_metadata(&p).is_err() {
        sync_dir(io, dir)?;
        return Ok(false);
    }
    io::remove(io, &p).map_err(|e| Error::io("remove consumer", &p, e))?;
    sync_dir(io, dir)?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Backups (`backup.rs`): a new directory beside the destination, its files, and its name.

/// Makes the staging directory `staging` of a backup (its parent must exist).
#[allow(clippy::disallowed_methods)] // the log directory's owner (and a backup's)
pub(crate) fn backup_stage(io: &dyn Io, staging: &Path) -> Result<()> {
    io::create_dir(io, staging).map_err(|e| Error::io("make backup directory", staging, e))
}

/// Makes the backup's file `path` holding `bytes`, `size` bytes long (the rest a hole, read
/// as zeros), synced: one `IoOp::Create`.
#[allow(clippy::disallowed_methods)] // the seam's `create_new` fills the file it made
pub(crate) fn backup_file(
    io: &dyn Io,
    path: &Path,
    bytes: &[u8],
    size: u64,
    op: &'static str,
) -> Result<()> {
    use std::io::Write;
    io::create_new(io, path, |f| {
        f.write_all(bytes)?;
        f.set_len(size.max(bytes.len() as u64))?;
        f.sync_all()
    })
    .map(drop)
    .map_err(|e| Error::io(op, path, e))
}

/// Gives the whole backup in `staging` its name `dest`: the staging directory synced (its
/// files' names durable), then renamed. The caller syncs the parent ([`backup_name_sync`]).
#[allow(clippy::disallowed_methods)] // the log directory's owner (and a backup's)
pub(crate) fn backup_name(io: &dyn Io, staging: &Path, dest: &Path) -> Result<()> {
    sync_dir(io, staging)?;
    io::rename(io, staging, dest).map_err(|e| Error::io("name backup directory", dest, e))
}

/// Makes a backup's name `dest` durable: syncs its parent.
pub(crate) fn backup_name_sync(io: &dyn Io, dest: &Path) -> Result<()> {
    match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(io, parent),
        None => sync_dir(io, Path::new(".")),
    }
}

/// Whether the file `prev` (a segment of an earlier backup) holds exactly what a backup of
/// the segment would write: `image` (its header and frames), then zeros up to `size`, its
/// length. Read whole, so a backup's file that rotted or was written into since is never
/// taken for the log's.
///
/// Only a regular file under the name itself matches: a symbolic link is not followed (it
/// would be linked as a link, and may point into a log), and a FIFO does not block the open
/// (`O_NONBLOCK`); either is copied over.
///
/// A file that matches is synced (`IoOp::Sync`, `fdatasync`) before it is taken: the bytes
/// compared are the page cache's, and `earlier` need not be a backup this crate made and
/// synced (a copy made with `cp`, a closed log written with `Durability::NoSync`): a link
/// to bytes a power loss can still take would make the backup claim what it does not hold.
/// On a file already durable the sync writes nothing.
pub(crate) fn backup_file_matches(
    io: &dyn Io,
    prev: &Path,
    image: &[u8],
    size: u64,
) -> Result<bool> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e| Error::io("read earlier backup's segment", prev, e);
    let opened = super::fds::with_room(|| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(prev)
    });
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // A symbolic link under the name.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() || meta.len() != size.max(image.len() as u64) {
        return Ok(false);
    }
    let mut head = vec![0u8; image.len()];
    file.read_exact(&mut head).map_err(err)?;
    if head != image {
        return Ok(false);
    }
    // The rest, up to the length checked above: zeros only.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).map_err(err)? {
            0 => break,
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
    guarded(io, IoOp::Sync, prev, 0, &[], || file.sync_data())
        .map_err(|e| Error::io("sync earlier backup's segment", prev, e))?;
    Ok(true)
}

/// Holds the earlier backup `earlier` of an incremental backup against engines while its
/// files are linked: a shared `flock` on its `LOCK` file, kept while the returned file is.
/// An engine writes into its segment files (appends to the last, reuses retired ones in
/// place) and gives a segment a file of its own only when it opens (`unshare_segments`), so
/// a link to a file of a log an engine has open would be written into: refused, as `open`
/// refuses a locked directory (after the same grace). An engine that opens `earlier` while
/// the lock is held waits its grace and is refused with `Error::Locked`. A backup has no
/// `LOCK` until an engine opens it: one is made (through the seam, `IoOp::Create`; nothing
/// else in `earlier` changes), else an engine's first open of it could come between this
/// check and a link. Where it cannot be made (a directory this process may not write into),
/// `earlier` is not held: an engine could not make it there either.
#[allow(clippy::disallowed_methods)] // the log directory's owner (and a backup's)
pub(crate) fn backup_hold_earlier(io: &dyn Io, earlier: &Path) -> Result<Option<File>> {
    let path = earlier.join("LOCK");
    let file = match open_regular(&path, false) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match io::create_new(io, &path, |_| Ok(())) {
                Ok((file, ())) => Ok(file),
                // An engine made it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    open_regular(&path, false)
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES | libc::EPERM | libc::EROFS)
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => Err(e),
            }
        }
        opened => opened,
    }
    .map_err(|e| Error::io("lock earlier backup", &path, e))?;
    match flock_within_grace(&file, libc::LOCK_SH) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Err(Error::io(
            "back up log since an earlier backup",
            earlier,
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "an engine has it open (its LOCK is held): the engine writes \
                 into its segment files, and would into a backup linked to them; give a \
                 backup no engine has open",
            ),
        )),
        Err(e) => Err(Error::io("lock earlier backup", &path, e)),
    }
}

/// Makes `to` a second name of the earlier backup's file `from` (`IoOp::Link`). `Ok(false)`
/// where the file system cannot (another file system, or no hard links): the caller copies.
#[allow(clippy::disallowed_methods)] // the log directory's owner (and a backup's)
pub(crate) fn backup_link(io: &dyn Io, from: &Path, to: &Path) -> Result<bool> {
    match io::hard_link(io, from, to) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::io("link backup segment", to, e)),
    }
}

/// The temporary a segment's private copy is made in (`unshare_segments`).
pub(crate) const UNSHARE_TMP: &str = "unshare.tmp";

/// Gives every segment file of `dir` that has other names (hard links: an incremental
/// backup's files, shared with another backup) a file of its own before a writer opens the
/// log, which may write into its segments (the last one's tail, a cut, recycling): each is
/// copied whole into a temporary, synced, and renamed over its name; the directory is synced
/// once at the end. The other names keep the old file, unchanged. A crash leaves each
/// segment either the shared file or its whole copy, and at most the temporary, which the
/// next open removes. Returns how many were copied.
#[allow(clippy::disallowed_methods)] // the log directory's owner
pub(crate) fn unshare_segments(io: &dyn Io, dir: &Path) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let tmp = dir.join(UNSHARE_TMP);
    remove_leftover(io, &tmp);
    let mut copied = 0;
    for (_, path) in list_segments(dir)? {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Whatever it is, the scan reports it with the file's name.
            Err(_) => continue,
        };
        if !meta.is_file() || meta.nlink() < 2 {
            continue;
        }
        let made = io::create_new(io, &tmp, |to| {
            let mut from = File::open(&path)?;
            std::io::copy(&mut from, to)?;
            to.sync_all()
        });
        if let Err(e) = made {
            remove_leftover(io, &tmp);
            return Err(Error::io("copy shared segment", &path, e));
        }
        if let Err(e) = io::rename(io, &tmp, &path) {
            remove_leftover(io, &tmp);
            return Err(Error::io("replace shared segment", &path, e));
        }
        copied += 1;
    }
    if copied > 0 {
        sync_dir(io, dir)?;
    }
    Ok(copied)
}

/// Removes what a failed backup left in `staging`, and the directory: best effort (the
/// backup's own error is what the caller reports).
#[allow(clippy::disallowed_methods)] // the log directory's owner (and a backup's)
pub(crate) fn backup_discard(io: &dyn Io, staging: &Path) {
    if let Ok(entries) = std::fs::read_dir(staging) {
        for entry in entries.flatten() {
            let _ = io::remove(io, &entry.path());
        }
    }
    let _ = io::remove_dir(io, staging);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // test files made behind the seam's back

    use super::*;

    use crate::log::format::{parse_prep_file_name, parse_recycle_file_name};
    use std::sync::{Arc, Mutex};

    const EIO: i32 = 5;

    /// An earlier backup's segment matches only its image followed by zeros up to its
    /// length, read past the first megabyte too (segments are 64 MiB by default).
    #[test]
    fn an_earlier_backups_file_matches_its_image_and_zeros_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let image: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        let size = 3u64 << 20;
        {
            let f = std::fs::File::create(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &image, 0).unwrap();
            f.set_len(size).unwrap();
        }
        assert!(backup_file_matches(&io::RealIo, &path, &image, size).unwrap());
        assert!(!backup_file_matches(&io::RealIo, &path, &image, size + 8).unwrap());
        assert!(!backup_file_matches(&io::RealIo, &path, &image[..4999], size).unwrap());
        assert!(!backup_file_matches(&io::RealIo, &dir.path().join("none"), &image, size).unwrap());
        // A byte past the first megabyte, behind the image.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7], (2 << 20) + 3).unwrap();
        assert!(!backup_file_matches(&io::RealIo, &path, &image, size).unwrap());
    }

    /// btrfs (its magic, also as a sign-extended 32-bit `f_type`) refuses the mmap write path;
    /// ext4, xfs and tmpfs do not.
    #[test]
    fn the_mmap_write_path_is_refused_on_btrfs_only() {
        assert!(refuses_mmap(0x9123_683E));
        assert!(refuses_mmap(0x9123_683E_u32 as i32 as i64 as u64));
        for other in [0xEF53_u64, 0x5846_5342, 0x0102_1994] {
            assert!(!refuses_mmap(other), "{other:#x}");
        }
    }

    /// Records the operations that succeeded, in order, and fails every operation of the
    /// kind `fail` with `errno` (EIO unless set) before it happens.
    struct Hook {
        done: Mutex<Vec<(IoOp, PathBuf)>>,
        fail: Option<IoOp>,
        errno: i32,
        /// Operations of the kind `fail` attempted.
        failed: std::sync::atomic::AtomicUsize,
    }

    impl Io for Hook {
        fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
            if self.fail == Some(op) {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match self.fail {
                Some(f) if f == op => Err(std::io::Error::from_raw_os_error(self.errno)),
                _ => Ok(()),
            }
        }

        fn after(&self, op: IoOp, path: &Path) {
            self.done.lock().unwrap().push((op, path.to_owned()));
        }
    }

    fn hook() -> Hook {
        failing(None)
    }

    fn failing(fail: impl Into<Option<IoOp>>) -> Hook {
        Hook {
            done: Mutex::new(Vec::new()),
            fail: fail.into(),
            errno: EIO,
            failed: Default::default(),
        }
    }

    /// The operations done since the last call.
    fn done(h: &Hook) -> Vec<(IoOp, PathBuf)> {
        std::mem::take(&mut *h.done.lock().unwrap())
    }

    /// The operation and path an `Error::Io` names.
    fn op_of(e: Error) -> (&'static str, PathBuf) {
        match e {
            Error::Io { op, path, .. } => (op, path),
            other => panic!("not an I/O error: {other}"),
        }
    }

    /// A file of `len` bytes of 0xab.
    fn touch(path: &Path, len: usize) {
        std::fs::write(path, vec![0xab; len]).unwrap();
    }

    #[test]
    fn lists_segment_files_only_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let seg = |id| crate::log::format::segment_file_name(id);
        for name in [seg(30), seg(2), seg(11)] {
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(dir.path().join(name))
                .unwrap();
        }
        for other in [
            "LOCK",
            "CLEAN",
            "recycle-1.tmp",
            "x.seg",
            "00000000000000000001.seg.tmp",
        ] {
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(dir.path().join(other))
                .unwrap();
        }
        let ids: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(id, path)| {
                assert_eq!(path, dir.path().join(seg(id)));
                id
            })
            .collect();
        assert_eq!(ids, vec![2, 11, 30]);
        // A segment's name past `u64::MAX` is listed, last, for the scan to refuse.
        let past = dir.path().join("99999999999999999999.seg");
        std::fs::File::create(&past).unwrap();
        let listed = list_segments(dir.path()).unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[3], (u64::MAX, past));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nope");
        let e = list_segments(&gone).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn paths_carry_the_names_the_format_parses() {
        let dir = Path::new("/log");
        let name = |p: PathBuf| {
            assert_eq!(p.parent(), Some(dir));
            p.file_name().unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(name(segment_path(dir, 7)), "00000000000000000007.seg");
        assert_eq!(
            parse_segment_file_name(&name(segment_path(dir, 7))),
            Some(7)
        );
        assert_eq!(parse_prep_file_name(&name(prep_path(dir, 3))), Some(3));
        assert_eq!(parse_recycle_file_name(&name(pool_path(dir, 4))), Some(4));
    }

    #[test]
    fn create_dir_makes_each_missing_component_parent_first_then_syncs_its_parent() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("a/b"));
        let h = hook();
        create_dir(&h, &b).unwrap();
        assert!(b.is_dir());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::CreateDir, a.clone()),
                (IoOp::SyncDir, root.path().to_owned()),
                (IoOp::CreateDir, b.clone()),
                (IoOp::SyncDir, a),
            ]
        );
        // An existing directory is left alone.
        create_dir(&h, &b).unwrap();
        assert_eq!(done(&h), vec![]);
    }

    #[test]
    fn create_dir_reports_a_file_in_the_way_and_each_failed_step() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        touch(&file, 1);
        let e = create_dir(&hook(), &file).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(op_of(e), ("create directory", file));

        let dir = root.path().join("d");
        let e = create_dir(&failing(IoOp::CreateDir), &dir).unwrap_err();
        assert_eq!(op_of(e), ("create directory", dir.clone()));
        assert!(!dir.exists());
        let e = create_dir(&failing(IoOp::SyncDir), &dir).unwrap_err();
        assert_eq!(op_of(e), ("fsync directory", root.path().to_owned()));
    }

    #[test]
    fn the_lock_file_is_made_once_and_the_lock_held_by_one_opener() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook();
        let held = lock_dir(&h, dir.path()).unwrap();
        assert_eq!(done(&h), vec![(IoOp::Create, dir.path().join("LOCK"))]);
        match lock_dir(&h, dir.path()) {
            Err(Error::Locked(p)) => assert_eq!(p, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        lock_dir(&h, dir.path()).unwrap();
        assert_eq!(done(&h), vec![], "the lock file exists: nothing is created");
    }

    #[test]
    fn a_failed_lock_file_creation_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = lock_dir(&failing(IoOp::Create), dir.path()).unwrap_err();
        assert_eq!(op_of(e), ("open lock file", dir.path().join("LOCK")));
        assert!(!dir.path().join("LOCK").exists());
    }

    #[test]
    fn a_prepared_file_is_written_zeros_then_the_directory_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = prep_path(dir.path(), 1);
        let size = (ZERO_CHUNK + ZERO_CHUNK / 2 + 8) as u64;
        let h = hook();
        create_prepared(&h, dir.path(), &path, size).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(
            done(&h),
            vec![(IoOp::Create, path), (IoOp::SyncDir, dir.path().to_owned())]
        );
    }

    #[test]
    fn a_failed_preparation_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = prep_path(dir.path(), 1);
        let h = failing(IoOp::Create);
        let e = create_prepared(&h, dir.path(), &path, 4096).unwrap_err();
        assert_eq!(op_of(e), ("preallocate segment", path.clone()));
        assert!(!path.exists());
        assert_eq!(
            done(&h),
            vec![],
            "no directory sync after a failed creation"
        );

        // A file in the way (what a crash left): the creation fails, and removes it.
        touch(&path, 100);
        let h = hook();
        let e = create_prepared(&h, dir.path(), &path, 4096).unwrap_err();
        assert_eq!(op_of(e), ("preallocate segment", path.clone()));
        assert!(!path.exists());
        assert_eq!(done(&h), vec![(IoOp::Remove, path.clone())]);

        let e = create_prepared(&failing(IoOp::SyncDir), dir.path(), &path, 4096).unwrap_err();
        assert_eq!(op_of(e), ("fsync directory", dir.path().to_owned()));
    }

    #[test]
    fn replacing_a_prepared_file_removes_a_leftover_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = prep_path(dir.path(), 2);
        let h = hook();
        replace_prepared(&h, dir.path(), &path, 4096).unwrap();
        let d = dir.path().to_owned();
        assert_eq!(
            done(&h),
            vec![(IoOp::Create, path.clone()), (IoOp::SyncDir, d.clone())],
            "nothing to remove: the hooks see no removal"
        );
        std::fs::remove_file(&path).unwrap();
        touch(&path, 100);
        replace_prepared(&h, dir.path(), &path, 4096).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![0; 4096]);
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Remove, path.clone()),
                (IoOp::Create, path),
                (IoOp::SyncDir, d)
            ]
        );
    }

    #[test]
    fn activation_renames_the_prepared_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (prep, seg) = (prep_path(dir.path(), 1), segment_path(dir.path(), 1));
        touch(&prep, 64);
        let e = rename_prepared(&failing(IoOp::Rename), &prep, &seg).unwrap_err();
        assert_eq!(op_of(e), ("rename prepared segment", prep.clone()));
        assert!(prep.exists() && !seg.exists());

        let h = hook();
        rename_prepared(&h, &prep, &seg).unwrap();
        assert!(!prep.exists() && seg.exists());
        assert_eq!(done(&h), vec![(IoOp::Rename, prep)]);
    }

    /// A segment's activation: at once (the first segment), header synced before the rename
    /// and the directory after it; deferred (a roll), header written and the file renamed,
    /// both syncs left to `finish_activation`, which makes them once, file then directory.
    #[test]
    fn a_deferred_activation_syncs_header_and_name_when_finished_and_only_once() {
        use crate::log::segment::Segment;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        for (id, deferred) in [(1u64, false), (9, true)] {
            let (prep, seg) = (prep_path(&d, id), segment_path(&d, id));
            let h = Arc::new(hook());
            create_prepared(&*h, &d, &prep, 4096).unwrap();
            let _ = done(&h);
            let io: crate::log::io::SharedIo = h.clone();
            let s = Segment::activate(&d, &prep, None, (id, false), deferred, &io).unwrap();
            let (write, rename) = ((IoOp::Write, prep.clone()), (IoOp::Rename, prep.clone()));
            let (sync_file, sync_dir) = ((IoOp::Sync, seg.clone()), (IoOp::SyncDir, d.clone()));
            if deferred {
                assert_eq!(done(&h), vec![write, rename]);
                s.finish_activation().unwrap();
                assert_eq!(done(&h), vec![sync_file, sync_dir]);
            } else {
                let sync_prep = (IoOp::Sync, prep.clone());
                assert_eq!(done(&h), vec![write, sync_prep, rename, sync_dir]);
            }
            s.finish_activation().unwrap();
            assert_eq!(done(&h), vec![], "a second finish syncs nothing");
        }
        // A failed finish is reported, and is final: a later call reports it again and
        // syncs nothing.
        let (prep, seg) = (prep_path(&d, 20), segment_path(&d, 20));
        create_prepared(&hook(), &d, &prep, 4096).unwrap();
        let h = Arc::new(failing(IoOp::SyncDir));
        let io: crate::log::io::SharedIo = h.clone();
        let s = Segment::activate(&d, &prep, None, (20, false), true, &io).unwrap();
        let _ = done(&h);
        let e = s.finish_activation().unwrap_err();
        assert_eq!(op_of(e), ("fsync directory", d.clone()));
        assert_eq!(done(&h), vec![(IoOp::Sync, seg.clone())]);
        let again = s.finish_activation().unwrap_err();
        assert_eq!(op_of(again), ("fsync directory", d.clone()));
        assert_eq!(done(&h), vec![], "a failed activation was synced again");
        assert!(seg.exists());
    }

    /// A failed sync of a segment is final: the next sync through the same description
    /// (another thread's, or a retry) could return OK for pages the failed one left clean
    /// and unwritten, so every later sync returns the error and syncs nothing, and a pending
    /// activation is not made durable through it either.
    #[test]
    fn a_failed_segment_sync_is_final() {
        use crate::config::WritePath;
        use crate::log::segment::Segment;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        for path in [WritePath::Pwrite, WritePath::Mmap] {
            let id = 1 + path as u64;
            let (prep, seg) = (prep_path(&d, id), segment_path(&d, id));
            create_prepared(&hook(), &d, &prep, 4096).unwrap();
            let h = Arc::new(failing(IoOp::Sync));
            let io: crate::log::io::SharedIo = h.clone();
            let s = Segment::activate(&d, &prep, None, (id, false), true, &io).unwrap();
            let tried = || h.failed.load(std::sync::atomic::Ordering::Relaxed);
            let e = s.sync(0, 4096, path).unwrap_err();
            assert_eq!(op_of(e), ("sync segment", seg.clone()));
            assert_eq!(tried(), 1, "{path:?}");
            let again = s.sync(0, 4096, path).unwrap_err();
            assert_eq!(op_of(again), ("sync segment", seg.clone()));
            assert!(s.finish_activation().is_err(), "{path:?}");
            assert_eq!(tried(), 1, "{path:?}: synced again after a failure");
        }
    }

    #[test]
    fn a_retired_segment_goes_to_the_pool_or_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, to) = (segment_path(dir.path(), 1), pool_path(dir.path(), 1));
        touch(&seg, 64);
        let e = retire_to_pool(&failing(IoOp::Rename), &seg, &to).unwrap_err();
        assert_eq!(op_of(e), ("move retired segment to the pool", seg.clone()));
        assert!(seg.exists() && !to.exists());
        let h = hook();
        retire_to_pool(&h, &seg, &to).unwrap();
        assert!(!seg.exists() && to.exists());
        assert_eq!(done(&h), vec![(IoOp::Rename, seg.clone())]);

        touch(&seg, 64);
        let e = remove_retired(&failing(IoOp::Remove), &seg).unwrap_err();
        assert_eq!(op_of(e), ("remove retired segment", seg.clone()));
        assert!(seg.exists());
        remove_retired(&h, &seg).unwrap();
        assert!(!seg.exists());
        assert_eq!(done(&h), vec![(IoOp::Remove, seg)]);
    }

    #[test]
    fn spares_are_adopted_up_to_keep_of_the_right_size_and_the_rest_removed() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook();
        assert_eq!(
            adopt_spares(&h, dir.path(), parse_prep_file_name, 4096, 2).unwrap(),
            (vec![], 0)
        );
        let p = |n| prep_path(dir.path(), n);
        for (n, len) in [(1, 4096), (2, 100), (3, 4096), (5, 4096)] {
            touch(&p(n), len);
        }
        touch(&pool_path(dir.path(), 9), 4096);
        let (kept, highest) = adopt_spares(&h, dir.path(), parse_prep_file_name, 4096, 2).unwrap();
        assert_eq!((kept, highest), (vec![p(1), p(3)], 5));
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Remove, p(2)),
                (IoOp::Remove, p(5)),
                (IoOp::SyncDir, dir.path().to_owned())
            ]
        );
        assert!(
            pool_path(dir.path(), 9).exists(),
            "only names `number` parses"
        );
        // Nothing to remove: no directory sync.
        adopt_spares(&h, dir.path(), parse_prep_file_name, 4096, 2).unwrap();
        assert_eq!(done(&h), vec![]);

        let e = adopt_spares(
            &failing(IoOp::Remove),
            dir.path(),
            parse_prep_file_name,
            4096,
            0,
        )
        .unwrap_err();
        assert_eq!(op_of(e), ("remove spare segment", p(1)));
    }

    #[test]
    fn an_evicted_pool_file_and_a_dropped_segment_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (spare, seg) = (pool_path(dir.path(), 1), segment_path(dir.path(), 9));
        touch(&spare, 64);
        touch(&seg, 64);
        let e = evict_from_pool(&failing(IoOp::Remove), &spare).unwrap_err();
        assert_eq!(
            op_of(e),
            ("remove a spare segment from the pool", spare.clone())
        );
        let e = remove_dropped(&failing(IoOp::Remove), dir.path(), &seg).unwrap_err();
        assert_eq!(op_of(e), ("remove dropped segment", seg.clone()));
        assert!(spare.exists() && seg.exists());

        let h = hook();
        evict_from_pool(&h, &spare).unwrap();
        remove_dropped(&h, dir.path(), &seg).unwrap();
        assert!(!spare.exists() && !seg.exists());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Remove, spare),
                (IoOp::Remove, seg),
                (IoOp::SyncDir, dir.path().to_owned())
            ]
        );
    }

    #[test]
    fn the_clean_mark_is_written_through_a_synced_temporary_and_removed_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, tmp) = (dir.path().join(CLEAN_FILE), dir.path().join(CLEAN_TMP));
        let d = dir.path().to_owned();
        assert_eq!(read_clean_mark(dir.path()).unwrap(), None);
        touch(&tmp, 3); // what an interrupted close left
        let h = hook();
        write_clean_mark(&h, dir.path(), b"mark").unwrap();
        assert_eq!(read_clean_mark(dir.path()).unwrap(), Some(b"mark".to_vec()));
        assert!(!tmp.exists());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Remove, tmp.clone()),
                (IoOp::Create, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
                (IoOp::Rename, tmp),
                (IoOp::SyncDir, d.clone()),
            ]
        );
        remove_clean_mark(&h, dir.path()).unwrap();
        assert_eq!(done(&h), vec![(IoOp::Remove, mark), (IoOp::SyncDir, d)]);
        assert_eq!(read_clean_mark(dir.path()).unwrap(), None);
    }

    /// A clean-close mark or consumer position file of a huge size (here sparse: 1 TiB) is
    /// read only one byte past its format's length, enough for its decoder to refuse it:
    /// never read, or allocated for, whole.
    #[test]
    fn a_huge_mark_or_position_file_is_read_only_past_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = |path: &Path| {
            let f = std::fs::File::create(path).unwrap();
            f.write_all_at(b"head", 0).unwrap();
            f.set_len(1 << 40).unwrap();
        };
        sparse(&dir.path().join(CLEAN_FILE));
        let mark = read_clean_mark(dir.path()).unwrap().expect("a mark file");
        assert_eq!((mark.len(), &mark[..4]), (CLEAN_LEN + 1, &b"head"[..]));
        assert_eq!(
            crate::log::clean::read(dir.path()).unwrap(),
            crate::log::clean::Found::Invalid
        );
        sparse(&dir.path().join(consumer_file_name("c")));
        let position = read_consumer(dir.path(), "c", |_| true)
            .unwrap()
            .expect("a position file");
        assert_eq!(position.len(), CONSUMER_LEN + 1);
        // A file of the right length is read whole, and nothing more is asked of a short one.
        touch(&dir.path().join(consumer_file_name("d")), CONSUMER_LEN);
        assert_eq!(
            read_consumer(dir.path(), "d", |_| true)
                .unwrap()
                .unwrap()
                .len(),
            CONSUMER_LEN
        );
        touch(&dir.path().join(consumer_file_name("e")), 3);
        assert_eq!(
            read_consumer(dir.path(), "e", |_| true).unwrap().unwrap(),
            vec![0xab; 3]
        );
    }

    #[test]
    fn a_failed_clean_mark_write_leaves_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, tmp) = (dir.path().join(CLEAN_FILE), dir.path().join(CLEAN_TMP));
        for (fail, op) in [
            (IoOp::Create, "write clean-close mark"),
            (IoOp::Write, "write clean-close mark"),
            (IoOp::Sync, "write clean-close mark"),
            (IoOp::Rename, "rename clean-close mark"),
        ] {
            let e = write_clean_mark(&failing(fail), dir.path(), b"mark").unwrap_err();
            assert_eq!(op_of(e), (op, tmp.clone()), "{fail:?}");
            assert!(!mark.exists(), "{fail:?}");
            if fail != IoOp::Rename {
                assert!(!tmp.exists(), "{fail:?}: the temporary is removed");
            }
        }
        write_clean_mark(&hook(), dir.path(), b"mark").unwrap();
        let e = remove_clean_mark(&failing(IoOp::Remove), dir.path()).unwrap_err();
        assert_eq!(op_of(e), ("remove clean-close mark", mark.clone()));
        assert!(mark.exists());
        // Neither a mark nor absent: damage at that name (a directory, or a link to nothing).
        std::fs::remove_file(&mark).unwrap();
        std::fs::create_dir(&mark).unwrap();
        match read_clean_mark(dir.path()) {
            Err(Error::Corrupt {
                path, offset: 0, ..
            }) => assert_eq!(path, mark),
            other => panic!("a directory under the mark's name gave {other:?}"),
        }
    }

    /// The `ids` file is replaced through its kept temporary: made (needing room) the first
    /// time and renamed into place; once kept (`keep_ids_room`), written over in place and its
    /// name exchanged with the file's, so that it then holds the old file, which the room
    /// step makes long enough again. The file read back is the new contents followed by
    /// whatever the temporary held past them.
    #[test]
    fn the_ids_file_is_replaced_through_its_kept_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let (file, tmp) = (d.join(IDS_FILE), d.join(IDS_TMP));
        let read = |p: &Path| std::fs::read(p).unwrap();
        let h = hook();
        // No temporary kept, no file yet: made, renamed.
        assert!(!write_ids(&h, &d, b"first", &AtomicBool::new(false)).unwrap());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Create, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
                (IoOp::Rename, tmp.clone()),
                (IoOp::SyncDir, d.clone()),
            ]
        );
        assert_eq!((read(&file), tmp.exists()), (b"first".to_vec(), false));
        // The room: made, then already there.
        keep_ids_room(&h, &d, 8192, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Create, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
            ]
        );
        assert_eq!(read(&tmp), vec![0; 8192]);
        keep_ids_room(&h, &d, 8192, &AtomicBool::new(false)).unwrap();
        assert_eq!(done(&h), vec![]);
        // Kept: written over, exchanged; no creation.
        assert!(write_ids(&h, &d, b"second", &AtomicBool::new(false)).unwrap());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Open, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
                (IoOp::Exchange, tmp.clone()),
                (IoOp::SyncDir, d.clone()),
            ]
        );
        let mut want = b"second".to_vec();
        want.resize(8192, 0);
        assert_eq!((read(&file), read(&tmp)), (want, b"first".to_vec()));
        // The old file, now the temporary, made as long as the room.
        keep_ids_room(&h, &d, 8192, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Open, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
            ]
        );
        let mut want = b"first".to_vec();
        want.resize(8192, 0);
        assert_eq!(read(&tmp), want);
        // Where names cannot be exchanged (EINVAL): renamed over the file, not kept.
        let h = Hook {
            errno: libc::EINVAL,
            ..failing(IoOp::Exchange)
        };
        assert!(!write_ids(&h, &d, b"third", &AtomicBool::new(false)).unwrap());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::Open, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
                (IoOp::Rename, tmp.clone()),
                (IoOp::SyncDir, d.clone()),
            ]
        );
        assert_eq!((&read(&file)[..5], tmp.exists()), (&b"third"[..], false));
    }

    /// A replacement that fails leaves the old file and removes the temporary, kept or made
    /// (what it holds is unknown); the next one makes it again.
    #[test]
    fn a_failed_ids_replacement_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let (file, tmp) = (d.join(IDS_FILE), d.join(IDS_TMP));
        write_ids(&hook(), &d, b"old", &AtomicBool::new(false)).unwrap();
        for (fail, op) in [
            (IoOp::Open, "write request ids"),
            (IoOp::Write, "write request ids"),
            (IoOp::Sync, "write request ids"),
            (IoOp::Exchange, "rename request ids"),
        ] {
            keep_ids_room(&hook(), &d, 4096, &AtomicBool::new(false)).unwrap();
            let e = write_ids(&failing(fail), &d, b"new", &AtomicBool::new(false)).unwrap_err();
            assert_eq!(op_of(e), (op, tmp.clone()), "{fail:?}");
            assert_eq!(std::fs::read(&file).unwrap()[..3], *b"old", "{fail:?}");
            assert!(!tmp.exists(), "{fail:?}: the temporary is removed");
        }
        // None kept: a failed creation.
        let e = write_ids(&failing(IoOp::Create), &d, b"new", &AtomicBool::new(false)).unwrap_err();
        assert_eq!(op_of(e), ("write request ids", tmp.clone()));
        // A room that cannot be made is an error its caller ignores; a later replacement
        // makes its temporary as it goes.
        assert!(keep_ids_room(&failing(IoOp::Write), &d, 4096, &AtomicBool::new(false)).is_err());
        write_ids(&hook(), &d, b"new", &AtomicBool::new(false)).unwrap();
        assert_eq!(std::fs::read(&file).unwrap()[..3], *b"new");
    }

    /// An exchange whose directory sync failed may not be durable: a power loss may still
    /// leave the old file under `ids`, and that inode is `ids.tmp` now. The next replacement
    /// (and the room kept after it) syncs the directory before it writes `ids.tmp`; while
    /// that sync fails it writes nothing.
    #[test]
    fn after_a_failed_directory_sync_the_kept_temporary_is_written_only_once_it_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let (file, tmp) = (d.join(IDS_FILE), d.join(IDS_TMP));
        let unsettled = AtomicBool::new(false);
        write_ids(&hook(), &d, b"first", &unsettled).unwrap();
        keep_ids_room(&hook(), &d, 4096, &unsettled).unwrap();
        let e = write_ids(&failing(IoOp::SyncDir), &d, b"second", &unsettled).unwrap_err();
        assert!(is_failed_dir_sync(&e));
        assert_eq!(std::fs::read(&tmp).unwrap(), b"first");
        // The directory still does not sync: neither the room nor a replacement writes.
        let h = failing(IoOp::SyncDir);
        assert!(keep_ids_room(&h, &d, 8192, &unsettled).is_err());
        assert!(write_ids(&h, &d, b"third", &unsettled).is_err());
        assert_eq!(done(&h), vec![]);
        assert_eq!(std::fs::read(&tmp).unwrap(), b"first");
        // It syncs: first, then the temporary is written over and exchanged.
        let h = hook();
        assert!(write_ids(&h, &d, b"third", &unsettled).unwrap());
        assert_eq!(
            done(&h),
            vec![
                (IoOp::SyncDir, d.clone()),
                (IoOp::Open, tmp.clone()),
                (IoOp::Write, tmp.clone()),
                (IoOp::Sync, tmp.clone()),
                (IoOp::Exchange, tmp.clone()),
                (IoOp::SyncDir, d.clone()),
            ]
        );
        assert_eq!(std::fs::read(&file).unwrap()[..5], *b"third");
        // Settled: the next one syncs the directory once, after its exchange.
        let h = hook();
        write_ids(&h, &d, b"fourth", &unsettled).unwrap();
        assert_eq!(done(&h)[0], (IoOp::Open, tmp.clone()));
    }

    /// A consumer's commit goes through its handle's kept temporary: exchanged with the
    /// position file, so it holds the old position (as long as a position) for the next one;
    /// where names cannot be exchanged, renamed over it and made again.
    #[test]
    fn a_consumer_commit_keeps_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let (file, tmp) = (
            d.join(consumer_file_name("c")),
            d.join("consumer.tmp-c.1.1"),
        );
        write_consumer(&hook(), &d, "c", &[1; CONSUMER_LEN]).unwrap();
        let h = hook();
        keep_consumer_room(&h, &tmp).unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), vec![0; CONSUMER_LEN]);
        done(&h);
        commit_consumer(
            &h,
            &d,
            ("c", &tmp),
            &[2; CONSUMER_LEN],
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(
            done(&h).into_iter().map(|(op, _)| op).collect::<Vec<_>>(),
            vec![
                IoOp::Open,
                IoOp::Write,
                IoOp::Sync,
                IoOp::Exchange,
                IoOp::SyncDir
            ]
        );
        assert_eq!(std::fs::read(&file).unwrap(), vec![2; CONSUMER_LEN]);
        assert_eq!(std::fs::read(&tmp).unwrap(), vec![1; CONSUMER_LEN]);
        let h = Hook {
            errno: libc::EINVAL,
            ..failing(IoOp::Exchange)
        };
        commit_consumer(
            &h,
            &d,
            ("c", &tmp),
            &[3; CONSUMER_LEN],
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(
            done(&h).into_iter().map(|(op, _)| op).collect::<Vec<_>>(),
            vec![
                IoOp::Open,
                IoOp::Write,
                IoOp::Sync,
                IoOp::Rename,
                IoOp::SyncDir,
                IoOp::Create,
                IoOp::Write,
                IoOp::Sync
            ]
        );
        assert_eq!(std::fs::read(&file).unwrap(), vec![3; CONSUMER_LEN]);
        assert_eq!(std::fs::read(&tmp).unwrap(), vec![0; CONSUMER_LEN]);
        remove_kept(&hook(), &tmp);
        assert!(!tmp.exists());
    }

    #[test]
    fn the_directory_and_its_parent_are_synced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        create_dir(&hook(), &dir).unwrap();
        let h = hook();
        sync_dir_and_parent(&h, &dir).unwrap();
        assert_eq!(
            done(&h),
            vec![
                (IoOp::SyncDir, dir.clone()),
                (IoOp::SyncDir, root.path().to_owned())
            ]
        );
        let e = sync_dir_and_parent(&failing(IoOp::SyncDir), &dir).unwrap_err();
        assert_eq!(op_of(e), ("fsync directory", dir));
    }

    // Side files read while another process replaces them (`read_side_file`).

    /// How long a step of the threaded tests below waits for the other thread's.
    const STEP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// An `Io` that, at the first write through it, writes the first 5/8 of the bytes itself
    /// (a reader of that file then sees the old bytes and the new mixed: of a consumer's
    /// position, the new batch's first bytes and the old CRC), then runs `during` before the
    /// write goes on.
    struct TornWrite {
        during: Mutex<Option<During>>,
    }

    /// What [`TornWrite`] runs once its torn half is written.
    type During = Box<dyn FnOnce(&Path) + Send>;

    impl Io for TornWrite {
        fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if op == IoOp::Write {
                if let Some(during) = self.during.lock().unwrap().take() {
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.write_all_at(&data[..data.len() * 5 / 8], offset)?;
                    during(path);
                }
            }
            Ok(())
        }
    }

    fn torn_write(during: impl FnOnce(&Path) + Send + 'static) -> TornWrite {
        TornWrite {
            during: Mutex::new(Some(Box::new(during))),
        }
    }

    /// Runs `read` on a thread of its own (another process's reader) with a hook that stops
    /// it once it has opened the file (until `go` is sent) and, if `held` is given, once it has
    /// read it (until `held` receives; `read` is sent then): returns the thread, and the
    /// receivers of `opened`, `read` and the steps' count, and the sender of `go`.
    #[allow(clippy::type_complexity)]
    fn reader_thread<T: Send + 'static>(
        read: impl FnOnce() -> T + Send + 'static,
        held: Option<std::sync::mpsc::Receiver<()>>,
    ) -> (
        std::thread::JoinHandle<(T, Vec<SideRead>)>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    ) {
        use std::sync::mpsc::channel;
        let (opened_tx, opened) = channel();
        let (go, go_rx) = channel::<()>();
        let (read_tx, was_read) = channel();
        let thread = std::thread::spawn(move || {
            let steps = Arc::new(Mutex::new(Vec::new()));
            let seen = steps.clone();
            on_side_read(Some(Box::new(move |step| {
                let first = !seen.lock().unwrap().contains(&step);
                seen.lock().unwrap().push(step);
                match step {
                    SideRead::Opened if first => {
                        opened_tx.send(()).unwrap();
                        go_rx.recv_timeout(STEP_WAIT).unwrap();
                    }
                    SideRead::Read if first => {
                        let _ = read_tx.send(());
                        if let Some(held) = &held {
                            held.recv_timeout(STEP_WAIT).unwrap();
                        }
                    }
                    _ => {}
                }
            })));
            let got = read();
            on_side_read(None);
            let steps = steps.lock().unwrap().clone();
            (got, steps)
        });
        (thread, opened, go, was_read)
    }

    /// A reader in another process opens a consumer's position file; a commit exchanges it
    /// away (it becomes the committing handle's temporary), and the next commit writes into
    /// it, in place, while the reader reads it: old and new bytes mixed. The reader reads the
    /// file the name gives again and gets that whole position, never `Corrupt`. And if the
    /// commit has exchanged the file back under the name by the time the reader checks (an
    /// exchange away and back during the read), the bad bytes are read again, whole now.
    #[test]
    #[allow(clippy::disallowed_methods)] // the torn write, made behind the seam's back
    fn a_position_read_while_a_commit_writes_into_the_readers_file_is_read_again() {
        use crate::consumer::encode;
        for back_under_the_name in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_owned();
            let tmp = d.join("consumer.tmp-c.1.1");
            let unsettled = AtomicBool::new(false);
            write_consumer(&hook(), &d, "c", &encode(1)).unwrap();
            keep_consumer_room(&hook(), &tmp).unwrap();
            let (committed_tx, committed) = std::sync::mpsc::channel();
            let held = back_under_the_name.then_some(committed);
            let reader_dir = d.clone();
            let (reader, opened, go, was_read) =
                reader_thread(move || crate::consumer::load(&reader_dir, "c"), held);
            opened.recv_timeout(STEP_WAIT).unwrap();
            // The file the reader holds is exchanged away: `tmp` names it now.
            commit_consumer(&hook(), &d, ("c", &tmp), &encode(2), &unsettled).unwrap();
            let (done_tx, done) = std::sync::mpsc::channel::<()>();
            let io = torn_write(move |path| {
                // Half of the next position written into it: no position at all.
                let torn = std::fs::read(path).unwrap();
                assert!(crate::consumer::load_bytes(&torn).is_none(), "torn");
                assert_ne!(torn, encode(1));
                go.send(()).unwrap();
                match back_under_the_name {
                    // Until the reader has read it (the commit then puts it back under the
                    // name before the reader checks).
                    true => was_read.recv_timeout(STEP_WAIT).unwrap(),
                    // Until the reader is done.
                    false => done.recv_timeout(STEP_WAIT).unwrap(),
                }
            });
            let committing = std::thread::spawn(move || {
                let unsettled = AtomicBool::new(false);
                commit_consumer(&io, &d, ("c", &tmp), &encode(3), &unsettled).unwrap();
                let _ = committed_tx.send(());
            });
            let (got, steps) = reader.join().unwrap();
            let _ = done_tx.send(());
            committing.join().unwrap();
            let want = if back_under_the_name { 3 } else { 2 };
            assert_eq!(got.unwrap(), Some(want), "{back_under_the_name}");
            // The torn read, then the one taken.
            assert_eq!(
                steps,
                [SideRead::Opened, SideRead::Read].repeat(2),
                "{back_under_the_name}"
            );
        }
    }

    /// The same for the `ids` file, read by an open (of a reader in another process) while a
    /// retirement replaces it twice: the reader gets the whole file the name gives.
    #[test]
    #[allow(clippy::disallowed_methods)] // the torn write, made behind the seam's back
    fn the_ids_file_read_while_a_retirement_writes_into_the_readers_file_is_read_again() {
        use crate::ids::{carried, encode_carried, IdEntry, IdHorizon, RequestId};
        let file_of = |n: u8| {
            let ids: Vec<_> = (0..100u64)
                .map(|i| {
                    let entry = IdEntry {
                        seq: i + 1,
                        time: 7,
                    };
                    (RequestId([n; 16].map(|b| b ^ i as u8)), entry)
                })
                .collect();
            let expect: Vec<_> = ids.iter().map(|(id, e)| (*id, e.seq, e.time)).collect();
            (encode_carried(&ids), expect)
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let unsettled = AtomicBool::new(false);
        write_ids(&hook(), &d, &file_of(1).0, &unsettled).unwrap();
        keep_ids_room(&hook(), &d, 8192, &unsettled).unwrap();
        let reader_dir = d.clone();
        let (reader, opened, go, _) = reader_thread(
            move || carried(&reader_dir, IdHorizon::default()).map(|f| f.entries()),
            None,
        );
        opened.recv_timeout(STEP_WAIT).unwrap();
        write_ids(&hook(), &d, &file_of(2).0, &unsettled).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let io = torn_write(move |_| {
            go.send(()).unwrap();
            done.recv_timeout(STEP_WAIT).unwrap();
        });
        let writer_dir = d.clone();
        let writing = std::thread::spawn(move || {
            write_ids(&io, &writer_dir, &file_of(3).0, &AtomicBool::new(false)).unwrap();
        });
        let (got, steps) = reader.join().unwrap();
        let _ = done_tx.send(());
        writing.join().unwrap();
        assert_eq!(got.unwrap(), file_of(2).1);
        assert_eq!(steps, [SideRead::Opened, SideRead::Read].repeat(2));
    }

    /// A file that is damaged under its name is still `Corrupt`, naming it, once read twice:
    /// a consumer's position and the `ids` file.
    #[test]
    #[allow(clippy::disallowed_methods)] // the damage, made behind the seam's back
    fn a_side_file_damaged_under_its_name_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut position = crate::consumer::encode(5);
        position[20] ^= 1;
        std::fs::write(d.join(consumer_file_name("c")), position).unwrap();
        let mut ids = crate::ids::encode_carried(&[]);
        let last = ids.len() - 1;
        ids[last] ^= 1;
        std::fs::write(d.join(IDS_FILE), ids).unwrap();
        let steps = Arc::new(Mutex::new(Vec::new()));
        let seen = steps.clone();
        on_side_read(Some(Box::new(move |step| seen.lock().unwrap().push(step))));
        let corrupt_at = |e: Error| match e {
            Error::Corrupt { path, offset, .. } => (path, offset),
            other => panic!("not Corrupt: {other}"),
        };
        let e = crate::consumer::load(d, "c").unwrap_err();
        assert_eq!(corrupt_at(e), (d.join(consumer_file_name("c")), 0));
        let e = crate::ids::carried(d, crate::ids::IdHorizon::default())
            .map(|f| f.entries())
            .unwrap_err();
        assert_eq!(corrupt_at(e).0, d.join(IDS_FILE));
        on_side_read(None);
        assert_eq!(
            *steps.lock().unwrap(),
            [SideRead::Opened, SideRead::Read].repeat(4)
        );
    }
}
