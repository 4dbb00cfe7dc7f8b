//! One segment file: fully preallocated with written zeros, mapped shared, appended to by the
//! flusher (pwrite, or copy into the mapping) and read by everyone through the mapping.
//!
//! The mapping is a `MmapRaw`: the flusher writes bytes past `published`, readers only read
//! bytes before it. `published` only grows, and a byte is never written again once it is
//! below `published`, so a reader's slice can never change under it.
//!
//! This module owns what a segment file holds: its mapping, its header, the writes and syncs
//! of its contents. Creating the file (the zero fill), naming it and removing it are
//! `dir.rs`'s.

use crate::config::{WritePath, SEGMENT_BYTES_MAX};
use crate::error::{Error, Result};
use crate::log::format::{SegmentHeader, END_MARKER_LEN, SEGMENT_HEADER_LEN};
use crate::log::io::{guarded, open_existing, sync_range_data, IoOp, SharedIo};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `sync_file_range(2)` of `[off, off + len)` of `f` with `flags`: starts (or waits for) the
/// writeback of that range, without syncing the file's metadata.
#[cfg(target_os = "linux")]
pub(crate) fn sync_file_range(
    f: &std::fs::File,
    off: u64,
    len: usize,
    flags: libc::c_uint,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for the
    // duration of the call (borrowed from `f`).
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An open, mapped segment file.
pub(crate) struct Segment {
    /// Sequence number of the first batch in this segment (also in its name and header).
    pub id: u64,
    pub path: PathBuf,
    pub size: u64,
    file: File,
    map: MmapRaw,
    /// Bytes `[0, published)` are final: readers may look at them.
    published: AtomicU64,
    /// The fault-injection seam every file change goes through.
    io: SharedIo,
    /// A recycled file (header flag `SEGMENT_RECYCLED`): past the frames lie old bytes, so
    /// the writer ends each frame with an end marker.
    pub recycled: bool,
    /// A rewritten file (header flag `SEGMENT_REWRITTEN`, written by in-place compaction):
    /// complete, and never appended to.
    pub rewritten: bool,
    /// The format version its header states (0 for a file without a valid header, a
    /// prepared one). The writer appends only to a segment of the current version.
    pub version: u32,
    /// Activated by a roll whose durability is left to the first sync in the segment
    /// ([`Segment::finish_activation`]): its header is written and the file renamed, but
    /// neither is known durable yet.
    activation: parking_lot::Mutex<Activation>,
    /// With several syncers, each one's file description of the segment being written
    /// (`pipeline::syncer::sync_own`): opened before any frame is written into it, and
    /// released once it is complete. Linux reports a writeback error to every description
    /// that was open when it happened, but not to one opened after some description has
    /// reported it: a syncer that opened its own later could get OK for pages another's
    /// failed sync left clean and unwritten.
    sync_files: parking_lot::Mutex<Option<Arc<[File]>>>,
    /// Held across every sync through the segment's own description ([`Segment::sync`]), and
    /// the first one's error once one failed: a writeback error is reported once per
    /// description, so a second sync through it (another thread's, or a retry) could return
    /// OK for pages the failed one left clean and unwritten. Every later sync returns it.
    sync_failed: parking_lot::Mutex<Option<Error>>,
}

/// Whether a segment's activation is durable (see [`Segment::finish_activation`]).
#[derive(Clone, Debug)]
enum Activation {
    Durable,
    Pending,
    /// Its sync failed: never tried again (a second `fdatasync` could return OK for pages
    /// whose writeback failed), and every later call reports the error.
    Failed(Error),
}

/// A segment file opened and mapped, its pages populated: the part of opening a segment that
/// does not depend on its id. The preparation thread does this for the next segment, so the
/// roll does not fault in 64 MiB (3.3 ms) on the flusher's critical path.
pub(crate) struct Mapped {
    file: File,
    map: MmapRaw,
    size: u64,
}

/// `flock` on a segment file: `LOCK_SH` or `LOCK_EX`, without waiting. `Ok(false)` if
/// another open file holds a conflicting lock.
fn flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads its integer arguments; the descriptor is open for the duration
    // of the call (borrowed from `file`).
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The error a mapping gets while the engine is taking its file for reuse: the file was
/// retired, and whoever opened it by its old name should look again.
fn being_reused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::WouldBlock,
        "the segment file is being reused (it was retired)",
    )
}

/// Opens a retired segment's file for reuse, if nothing maps it: every mapping of a segment
/// file (this engine's, a `LogReader`'s, in any process) holds a shared `flock` on it for as
/// long as it exists, so an exclusive lock succeeds only on a file nobody maps. The file is
/// returned holding the shared lock of the mapping it is about to get (the exclusive one is
/// given up for it: a reader that opened the file by its old name before it was retired may
/// lock it in between, and then finds the name gone, see `Segment::still_named`).
pub(crate) fn open_unmapped(path: &Path) -> std::io::Result<Option<File>> {
    let file = super::fds::with_room(|| OpenOptions::new().read(true).write(true).open(path))?;
    if !flock(&file, libc::LOCK_EX)? {
        return Ok(None);
    }
    if !flock(&file, libc::LOCK_SH)? {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Opens the segment file `path` (`dir::open_regular`: a FIFO cannot block the open). A name
/// on anything but a regular file is `Error::Corrupt` at offset 0, naming it, and so is a name
/// on a symbolic link to nothing: both are there (nothing retired them; a retirement removes
/// or renames the name itself), and neither is a segment. Any other failure is the I/O error
/// (`NotFound` when the name is gone: retired since it was listed).
pub(crate) fn open_segment_file(path: &Path, writable: bool) -> Result<File> {
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: reason.into(),
    };
    super::dir::open_regular(path, writable).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => corrupt(
            "a segment's name on something other than a regular file (a directory, FIFO or \
             device)",
        ),
        std::io::ErrorKind::NotFound if super::dir::is_symlink(path) => {
            corrupt("a segment's name on a symbolic link to nothing (its target does not exist)")
        }
        _ => Error::io("open segment", path, e),
    })
}

impl Mapped {
    /// Opens and maps `path`; `writable` maps it for writing too (the engine's active
    /// segment); readers map read-only. The mapping holds a shared lock on the file (see
    /// [`open_unmapped`]); while the engine takes the file for reuse, this fails with
    /// `WouldBlock`.
    pub fn open(path: &Path, writable: bool) -> Result<Mapped> {
        let file = open_segment_file(path, writable)?;
        let locked = flock(&file, libc::LOCK_SH).map_err(|e| Error::io("lock segment", path, e))?;
        if !locked {
            return Err(Error::io("lock segment", path, being_reused()));
        }
        Mapped::of_file(file, path, writable)
    }

    /// Maps `file` (opened from `path`, holding its shared lock).
    pub fn of_file(file: File, path: &Path, writable: bool) -> Result<Mapped> {
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat segment", path, e))?
            .len();
        if size < SEGMENT_HEADER_LEN as u64 {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: 0,
                reason: format!("segment file is {size} bytes, shorter than its header"),
            });
        }
        if size > SEGMENT_BYTES_MAX {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: 0,
                reason: format!(
                    "segment file is {size} bytes, more than a segment can be \
                     ({SEGMENT_BYTES_MAX})"
                ),
            });
        }
        let mut opts = MmapOptions::new();
        // Opening reads the whole file (recovery scans it): one populate call maps it far
        // faster than a page fault per 4 KiB. Not a file whose header gives another size:
        // recovery refuses it from the header alone, and populating a large sparse file
        // took minutes and the page cache.
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let other_size = file.read_exact_at(&mut header, 0).is_ok()
            && SegmentHeader::decode(&header).is_ok_and(|h| h.segment_size != size);
        if !other_size {
            opts.populate();
        }
        // Exactly the `size` checked above, which `image` and `bytes` take for the mapping's
        // length: left to itself, the map would measure the file again, and a file cut
        // shorter in between would give a shorter mapping than `size` says.
        opts.len(size as usize);
        let map = if writable {
            opts.map_raw(&file)
        } else {
            opts.map_raw_read_only(&file)
        }
        .map_err(|e| Error::io("map segment", path, e))?;
        debug_assert_eq!(map.len() as u64, size);
        Ok(Mapped { file, map, size })
    }
}

impl Segment {
    /// Opens an existing segment. `writable` maps it for writing too (the engine's active
    /// segment); readers map read-only.
    pub fn open(path: &Path, id: u64, writable: bool, io: &SharedIo) -> Result<Segment> {
        Ok(Segment::from_mapped(
            path,
            id,
            Mapped::open(path, writable)?,
            io,
        ))
    }

    /// Whether `path` still names this mapping's file. A reader that opened a segment by its
    /// name checks this once it holds the file's lock: a retired file may have been renamed
    /// (into the pool) and reused since, and is then not the segment the name promised.
    pub fn still_named(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Whether `other` maps the same file as this mapping (device and inode of the open
    /// files): a reader that located a segment again finds out whether it is still the one
    /// it reads.
    pub fn same_file(&self, other: &Segment) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    fn from_mapped(path: &Path, id: u64, mapped: Mapped, io: &SharedIo) -> Segment {
        let Mapped { file, map, size } = mapped;
        let mut seg = Segment {
            id,
            path: path.to_owned(),
            size,
            file,
            map,
            published: AtomicU64::new(0),
            io: io.clone(),
            recycled: false,
            rewritten: false,
            version: 0,
            activation: parking_lot::Mutex::new(Activation::Durable),
            sync_files: parking_lot::Mutex::new(None),
            sync_failed: parking_lot::Mutex::new(None),
        };
        // A file without a valid header (a prepared one) is simply not recycled.
        if let Ok(h) = SegmentHeader::decode(seg.image()) {
            seg.recycled = h.recycled;
            seg.rewritten = h.rewritten;
            seg.version = h.version;
        }
        seg
    }

    /// Turns the prepared file `prep` (zeros, or a recycled segment's old bytes) into
    /// segment `id`: its header written, then the file renamed to its final name. With
    /// `deferred` false the header is synced before the rename and the directory after it,
    /// so the name and a valid header are durable before this returns. With `deferred` (a
    /// roll) neither sync is made here: the first sync of a frame in the segment makes them
    /// ([`Segment::finish_activation`]), so the flusher goes on writing frames while the
    /// disk takes them, and no frame in the segment is acknowledged before its name and
    /// header are durable. A power loss in between leaves a last segment whose header is
    /// zeros or its file's earlier one, with nothing acknowledged in it: recovery drops it
    /// (docs/FORMAT.md, "Recovery"). `mapped` is `prep` already opened and mapped by the
    /// preparation thread, if it was.
    pub fn activate(
        dir: &Path,
        prep: &Path,
        mapped: Option<Mapped>,
        (id, recycled): (u64, bool),
        deferred: bool,
        io: &SharedIo,
    ) -> Result<Segment> {
        let path = super::dir::segment_path(dir, id);
        let mapped = match mapped {
            Some(m) => m,
            None => Mapped::open(prep, true)?,
        };
        // A recycled file gets an end marker right after its header: past it lie the frames
        // of the file's earlier life.
        let mut header = [0u8; SEGMENT_HEADER_LEN + END_MARKER_LEN];
        header[..SEGMENT_HEADER_LEN]
            .copy_from_slice(&SegmentHeader::new(id, mapped.size, recycled).encode());
        let header = if recycled {
            &header[..]
        } else {
            &header[..SEGMENT_HEADER_LEN]
        };
        let file = &mapped.file;
        guarded(&**io, IoOp::Write, prep, 0, header, || {
            file.write_all_at(header, 0)
        })
        .and_then(|()| match deferred {
            true => Ok(()),
            false => guarded(&**io, IoOp::Sync, prep, 0, &[], || file.sync_data()),
        })
        .map_err(|e| Error::io("write segment header", prep, e))?;
        super::dir::rename_prepared(&**io, prep, &path)?;
        if !deferred {
            super::dir::sync_dir(&**io, dir)?;
        }
        // The mapping made before the rename maps the same file.
        let seg = Segment::from_mapped(&path, id, mapped, io);
        if deferred {
            *seg.activation.lock() = Activation::Pending;
        }
        seg.publish(SEGMENT_HEADER_LEN as u64);
        Ok(seg)
    }

    /// Makes a deferred activation durable, once (see [`Segment::activate`]): syncs the file
    /// (its header, and every frame written so far) and then the directory (its name). Called
    /// before the first sync of a frame in the segment, whoever makes it (several syncers wait
    /// for the one that does it), and before the next roll or a clean close. An error fails
    /// the engine, as a failed sync of a frame does, and is final: every later call returns
    /// it, and nothing is synced again as if the first attempt had not failed.
    pub fn finish_activation(&self) -> Result<()> {
        let mut state = self.activation.lock();
        match &*state {
            Activation::Durable => return Ok(()),
            Activation::Failed(e) => return Err(e.clone()),
            Activation::Pending => {}
        }
        let io = &*self.io;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // Through the segment's own description, as `Segment::sync`: one at a time, and
        // never after one of them failed.
        let mut failed = self.sync_failed.lock();
        let synced = match &*failed {
            Some(e) => Err(e.clone()),
            None => guarded(io, IoOp::Sync, &self.path, 0, &[], || self.file.sync_data())
                .map_err(|e| Error::io("sync segment header", &self.path, e))
                .inspect_err(|e| *failed = Some(e.clone())),
        };
        drop(failed);
        let synced = synced.and_then(|()| super::dir::sync_dir(io, dir));
        *state = match &synced {
            Ok(()) => Activation::Durable,
            Err(e) => Activation::Failed(e.clone()),
        };
        synced
    }

    /// Final bytes `[off, off + len)`; empty if the range is not (yet) published.
    pub fn bytes(&self, off: u64, len: usize) -> &[u8] {
        let end = off.saturating_add(len as u64);
        if end > self.published.load(Ordering::Acquire) {
            return &[];
        }
        // SAFETY: the range is inside the mapping (published <= size) and below
        // `published`, which the Acquire load orders after every write to it; bytes below
        // `published` are never written again and the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off as usize), len) }
    }

    /// The whole file image, published or not. For scanning at open and by readers: the
    /// decoder checks every frame's CRC, so bytes still being written by another process
    /// are caught as a bad frame, never trusted.
    pub fn image(&self) -> &[u8] {
        // SAFETY: the mapping is `size` bytes long and lives as long as `self`. Bytes past
        // `published` may change while the slice is alive (the flusher, or another process,
        // appends there); the decoder treats them as untrusted input and verifies them with
        // a CRC before using any of them, so a concurrent change yields a bad frame, never a
        // wrong answer.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.size as usize) }
    }

    /// Bytes `[off, off + len)` of a frame the caller wrote, published or not: for the
    /// desk's holder (the flusher, or a producer writing its own window), the log's only
    /// writer, reading back a value of a frame written and not yet durable (a merge onto it).
    pub fn written(&self, off: u64, len: usize) -> &[u8] {
        assert!(off
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.size));
        // SAFETY: the range is inside the mapping (asserted), which lives as long as `self`.
        // Below `published` its bytes never change. Past it only the desk's holder writes
        // (`unpublished_mut`, or pwrite into the file the mapping shows), and only past the
        // frames it has written: a frame's bytes are written once. The caller holds the desk
        // and asks for bytes of a frame it wrote, so nothing writes them while the slice
        // lives, and the `&mut` slices `unpublished_mut` hands out never overlap them.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off as usize), len) }
    }

    /// All published bytes of the segment.
    pub fn published_bytes(&self) -> &[u8] {
        self.bytes(0, self.published() as usize)
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Marks `[0, end)` final. Only the flusher calls this, after the bytes are written.
    pub fn publish(&self, end: u64) {
        debug_assert!(end <= self.size && end >= self.published());
        self.published.store(end, Ordering::Release);
    }

    /// The writable mapping bytes `[off, off + len)`, which must lie past `published`.
    /// Only the flusher, the single writer, calls this, and it holds the result only while
    /// it encodes one frame.
    #[allow(clippy::mut_from_ref)]
    pub fn unpublished_mut(&self, off: u64, len: usize) -> &mut [u8] {
        assert!(off >= self.published() && off + len as u64 <= self.size);
        // SAFETY: the range is inside the mapping (asserted) and at or past `published`, so no
        // reader looks at it (readers stop at `published`); the flusher is the only writer and
        // never holds two of these slices at once, so the `&mut` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off as usize), len) }
    }

    /// Writes `data` at `off` by the configured path (pwrite, or a copy into the mapping).
    pub fn write(&self, off: u64, data: &[u8], path: WritePath) -> Result<()> {
        let io = &*self.io;
        match path {
            WritePath::Pwrite => guarded(io, IoOp::Write, &self.path, off, data, || {
                self.file.write_all_at(data, off)
            })
            .map_err(|e| Error::io("write segment", &self.path, e)),
            WritePath::Mmap => {
                guarded(io, IoOp::Write, &self.path, off, &[], || Ok(()))
                    .map_err(|e| Error::io("write segment", &self.path, e))?;
                self.unpublished_mut(off, data.len()).copy_from_slice(data);
                Ok(())
            }
        }
    }

    /// Reports a frame encoded straight into the mapping (the mmap write path) to the hooks,
    /// before the flusher encodes it.
    pub fn before_map_write(&self, off: u64) -> Result<()> {
        guarded(&*self.io, IoOp::Write, &self.path, off, &[], || Ok(()))
            .map_err(|e| Error::io("write segment", &self.path, e))
    }

    /// Starts writing `[off, off + len)` back to the disk without waiting: a hint, not a
    /// sync (durability still comes from [`Segment::sync`], which also reports any error of
    /// this writeback). For a frame that waits for the sync in flight before its own, so that
    /// its bytes are on their way meanwhile and its own sync has less to write.
    pub fn start_writeback(&self, off: u64, len: u64) {
        #[cfg(target_os = "linux")]
        let _ = sync_file_range(&self.file, off, len as usize, libc::SYNC_FILE_RANGE_WRITE);
        #[cfg(not(target_os = "linux"))]
        let _ = (off, len);
    }

    /// Makes `[off, off + len)` durable: `fdatasync` for the pwrite path, `msync` of the
    /// page-aligned range for the mmap path. The hooks are told which (see `io::Io::before`).
    /// One at a time; after a failure never again: every later call returns its error.
    pub fn sync(&self, off: u64, len: usize, path: WritePath) -> Result<()> {
        let mut failed = self.sync_failed.lock();
        if let Some(e) = &*failed {
            return Err(e.clone());
        }
        let io = &*self.io;
        let r = match path {
            WritePath::Pwrite => {
                guarded(io, IoOp::Sync, &self.path, 0, &[], || self.file.sync_data())
            }
            WritePath::Mmap => {
                let page = 4096u64;
                let start = off / page * page;
                // A recycled segment's frames end with an end marker, synced with them.
                let marker = if self.recycled { END_MARKER_LEN } else { 0 };
                let end = (off + (len + marker) as u64).min(self.size);
                guarded(
                    io,
                    IoOp::Sync,
                    &self.path,
                    start,
                    &sync_range_data(end),
                    || self.map.flush_range(start as usize, (end - start) as usize),
                )
            }
        }
        .map_err(|e| Error::io("sync segment", &self.path, e));
        if let Err(e) = &r {
            *failed = Some(e.clone());
        }
        r
    }

    /// Opens the segment's file again, read-write: a file description of its own, for one of
    /// several syncers to sync through (a writeback error is reported once per description:
    /// see `pipeline::syncer`). Announced to the hooks as `IoOp::Open`.
    fn open_for_sync(&self) -> Result<File> {
        open_existing(&*self.io, &self.path)
            .map_err(|e| Error::io("open segment for sync", &self.path, e))
    }

    /// Opens `n` file descriptions of the segment for the syncers (none for one syncer,
    /// which syncs through the segment's own), before any frame is written into it: see
    /// [`Segment::sync_files`].
    pub fn open_sync_files(&self, n: usize) -> Result<()> {
        if n > 1 {
            let files = (0..n)
                .map(|_| self.open_for_sync())
                .collect::<Result<Vec<File>>>()?;
            *self.sync_files.lock() = Some(files.into());
        }
        Ok(())
    }

    /// The syncers' descriptions of this segment, while it is the one being written.
    pub fn sync_files(&self) -> Option<Arc<[File]>> {
        self.sync_files.lock().clone()
    }

    /// Closes the syncers' descriptions: the segment is complete and every frame in it
    /// durable (a roll drains the pipeline first).
    pub fn release_sync_files(&self) {
        *self.sync_files.lock() = None;
    }

    /// Makes every write to the segment so far durable with `fdatasync` through `file`, a
    /// description of the segment's file from [`Segment::open_for_sync`]; for both write
    /// paths (it writes back the pages the mapping dirtied too). The hooks are told it is a
    /// sync of the whole file.
    pub fn sync_through(&self, file: &File) -> Result<()> {
        guarded(&*self.io, IoOp::Sync, &self.path, 0, &[], || {
            file.sync_data()
        })
        .map_err(|e| Error::io("sync segment", &self.path, e))
    }

    /// Writes `[0, end)` again from what the mapping shows (the page cache), with `pwrite`,
    /// and syncs the file: afterwards the disk holds what the cache does.
    ///
    /// After a failed `fdatasync` the kernel may keep the pages it could not write in the
    /// cache, marked clean: the next open reads the frame there, but no later sync writes it,
    /// and a power loss takes it back, with every frame after it. Writing the same bytes again
    /// dirties those pages, so this sync writes them. An open that follows an unclean end
    /// calls this for the last segment before it accepts a write (see `log::clean`).
    pub fn rewrite(&self, end: u64) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let end = end.min(self.size) as usize;
        let image = self.image();
        let mut buf = vec![0u8; CHUNK.min(end)];
        let mut off = 0;
        while off < end {
            let n = CHUNK.min(end - off);
            // Copied out first: a `pwrite` whose source is a mapping of the very pages it
            // writes would depend on how the kernel faults them in.
            buf[..n].copy_from_slice(&image[off..off + n]);
            let data = &buf[..n];
            guarded(&*self.io, IoOp::Write, &self.path, off as u64, data, || {
                self.file.write_all_at(data, off as u64)
            })
            .map_err(|e| Error::io("rewrite segment tail", &self.path, e))?;
            off += n;
        }
        guarded(&*self.io, IoOp::Sync, &self.path, 0, &[], || {
            self.file.sync_data()
        })
        .map_err(|e| Error::io("sync rewritten segment tail", &self.path, e))
    }

    /// Zeroes `[off, size)` where it is not zero already and syncs: cuts a torn tail.
    pub fn zero_tail(&self, off: u64) -> Result<()> {
        let len = (self.size - off) as usize;
        let tail = self.unpublished_mut(off, len);
        if tail.iter().all(|&b| b == 0) {
            return Ok(());
        }
        guarded(&*self.io, IoOp::Write, &self.path, off, &[], || Ok(()))
            .map_err(|e| Error::io("zero torn tail", &self.path, e))?;
        tail.fill(0);
        let end = sync_range_data(self.size);
        guarded(&*self.io, IoOp::Sync, &self.path, off, &end, || {
            self.map.flush_range(off as usize, len)
        })
        .map_err(|e| Error::io("msync truncated tail", &self.path, e))
    }
}
