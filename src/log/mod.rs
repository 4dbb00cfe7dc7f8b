//! The append-only log: a directory of fixed-size, preallocated, memory-mapped segments.
//!
//! Only the flusher appends. Readers reach segments through the shared `Segments` list and
//! read through the mappings.
//!
//! - `dir`: every file of the log directory (listing, creating, renaming, removing, syncing).
//! - `segment`: one segment's mapping and contents; `format`: the bytes; `clean`: the
//!   clean-close mark's format.
//! - `prep`: the next segment, prepared ahead; `pool`: retired files kept for reuse;
//!   `retire`: the file half of retiring a prefix.
//! - `open`: recovering the directory at a writable open; `recovery`: the scan.
//! - `io`: the storage seam, under all of them; `fds`: room for the files a log keeps open.

pub(crate) mod clean;
pub mod dir;
pub mod fds;
pub mod format;
pub mod io;
pub(crate) mod open;
pub(crate) mod pool;
pub(crate) mod prep;
pub(crate) mod recovery;
pub(crate) mod retire;
pub(crate) mod segment;

use crate::config::{Config, WritePath};
use crate::error::{Error, Result};
use dir::prep_path;
use format::{
    frame_len, trailer_len, FrameWriter, Trailer, END_MARKER_LEN, FORMAT_VERSION,
    SEGMENT_HEADER_LEN,
};
use io::SharedIo;
use parking_lot::RwLock;
use pool::Pool;
use prep::{Prep, Spares};
use segment::Segment;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The segments of a log in order; shared between the flusher (which appends to it),
/// readers (which look up the segment an index entry names) and `Engine::retire_before`
/// (which removes segments from the front).
pub(crate) type Segments = Arc<RwLock<SegmentList>>;

/// The log's live segments, numbered from 0 at open in log order. A number never changes
/// while the engine runs, so index entries can name segments by it: retiring segments from
/// the front only raises `base`, the number of the first segment still listed.
pub(crate) struct SegmentList {
    base: u32,
    list: Vec<Arc<Segment>>,
}

impl SegmentList {
    pub fn new(list: Vec<Arc<Segment>>) -> SegmentList {
        SegmentList { base: 0, list }
    }

    /// The segment numbered `idx`, unless it was retired.
    pub fn get(&self, idx: u32) -> Option<&Arc<Segment>> {
        self.list.get(idx.checked_sub(self.base)? as usize)
    }

    /// Appends a segment and returns its number.
    pub fn push(&mut self, seg: Arc<Segment>) -> u32 {
        self.list.push(seg);
        self.last_idx()
    }

    /// The number of the last (active) segment.
    pub fn last_idx(&self) -> u32 {
        self.base + self.list.len() as u32 - 1
    }

    /// The number of the first segment still listed.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The live segments in log order.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Segment>> {
        self.list.iter()
    }

    /// Removes the first `n` segments (never the last one) and returns them.
    pub fn retire_front(&mut self, n: usize) -> Vec<Arc<Segment>> {
        let n = n.min(self.list.len().saturating_sub(1));
        self.base += n as u32;
        self.list.drain(..n).collect()
    }
}

/// A frame written to the log but not yet synced.
pub(crate) struct WrittenFrame {
    /// The segment holding it, and its index in `Segments`.
    pub seg: Arc<Segment>,
    pub seg_idx: u32,
    /// Byte range of the frame in the segment.
    pub start: u64,
    pub end: u64,
    /// Its batch sequence number.
    pub seq: u64,
}

/// The writing end of the log, owned by the flusher thread.
pub(crate) struct Log {
    dir: PathBuf,
    segments: Segments,
    active: Arc<Segment>,
    /// Next free byte of the active segment (8-aligned).
    write_off: u64,
    /// Sequence number the next frame gets.
    next_seq: u64,
    segment_bytes: u64,
    write_path: WritePath,
    /// The next segment file, zero-filled (or taken from the pool) ahead of need (see
    /// `prep.rs`, which holds the methods that prepare it).
    prep: Prep,
    prep_counter: u64,
    pool: Arc<Pool>,
    /// The room kept for the `ids` file's replacement (made by the preparing thread).
    ids_room: Option<Arc<crate::ids::IdsRoom>>,
    /// Reused encode buffer of the pwrite path.
    buf: Vec<u8>,
    io: SharedIo,
    /// How many syncers sync the segment being written, each through a description of its
    /// own opened before any frame goes in (`Segment::open_sync_files`).
    syncers: usize,
}

impl Log {
    /// Continues the log after recovery: `segments` is non-empty, the last one is writable
    /// and its frames end at `write_off`; `next_seq` is the sequence of the next frame. An
    /// error if the syncers' descriptions of the last segment cannot be opened.
    pub fn new(
        dir: &Path,
        segments: Segments,
        write_off: u64,
        next_seq: u64,
        config: &Config,
        spares: Spares,
        io: &SharedIo,
    ) -> Result<Log> {
        let Spares {
            prepared,
            prep_counter,
            pool,
            ids_room,
        } = spares;
        let (segment_bytes, write_path) = (config.segment_bytes, config.write_path);
        let active = segments
            .read()
            .iter()
            .last()
            .expect("recovery leaves a segment")
            .clone();
        active.open_sync_files(config.syncers)?;
        let mut log = Log {
            dir: dir.to_owned(),
            segments,
            active,
            write_off,
            next_seq,
            segment_bytes,
            write_path,
            prep: Prep::None,
            prep_counter,
            pool,
            ids_room,
            buf: Vec::new(),
            io: io.clone(),
            syncers: config.syncers,
        };
        match prepared {
            Some(path) => log.prep = Prep::Ready(path, true),
            None => {
                log.prep = Prep::Deferred;
                log.prepare_when_due();
            }
        }
        Ok(log)
    }

    /// Creates the first segment (id `first_seq`) of a directory without one, from
    /// `prepared` if an earlier run left one, else synchronously.
    pub fn create_first(
        dir: &Path,
        segment_bytes: u64,
        first_seq: u64,
        prepared: Option<PathBuf>,
        io: &SharedIo,
    ) -> Result<Segment> {
        let recycled = prepared.is_some();
        let prep = match prepared {
            Some(p) => p,
            None => {
                let p = prep_path(dir, 0);
                dir::replace_prepared(&**io, dir, &p, segment_bytes)?;
                p
            }
        };
        // An earlier run's prepared file may hold frames of an activation whose rename a
        // power loss undid: it is treated as recycled (see `Log::take_prepared`).
        Segment::activate(dir, &prep, None, (first_seq, recycled), false, io)
    }

    /// Moves to a fresh segment whose first frame is `next_seq`, unless the frame of
    /// `body_len` bytes fits the active one. `Error::NoSpace` if the disk has no room for
    /// the new segment: nothing of the log changed then (the new file was not yet renamed
    /// into it), the engine need not fail, and a later call tries again (`crate::room`).
    /// Any other error leaves the log in a state only a reopen may trust.
    pub fn roll_for(&mut self, body_len: usize) -> Result<()> {
        match self.fits(body_len) {
            true => Ok(()),
            false => self.roll(),
        }
    }

    /// Moves to a fresh segment whose first frame is `next_seq` (see [`Log::roll_for`]).
    pub(super) fn roll(&mut self) -> Result<()> {
        // The segment ending now is durable, its name too, before the next one is named: at
        // most the last segment is ever an activation a power loss tore.
        self.active.finish_activation()?;
        let (prep, mapped, recycled) = match self.take_prepared() {
            Ok(prepared) => prepared,
            Err(e) => {
                // The background preparation starts again with the next frame written (a
                // compaction's, or after `resume`), so that the next roll does not make the
                // file on the flusher's time.
                self.prep = Prep::Deferred;
                return Err(no_room(e));
            }
        };
        let seg = match Segment::activate(
            &self.dir,
            &prep,
            mapped,
            (self.next_seq, recycled),
            true,
            &self.io,
        ) {
            Ok(seg) => Arc::new(seg),
            // The header write or the rename failed for room (btrfs's rename can): the file
            // is still a prepared one, outside the log. The next roll takes it as it is (its
            // header is written again), with only the rename left to do.
            Err(e) if crate::room::is_no_room(&e) => {
                self.prep = Prep::Ready(prep, recycled);
                return Err(no_room(e));
            }
            Err(e) => return Err(e),
        };
        seg.open_sync_files(self.syncers)?;
        self.segments.write().push(seg.clone());
        let started = if recycled {
            &self.pool.reused
        } else {
            &self.pool.fresh
        };
        started.fetch_add(1, Ordering::Relaxed);
        std::mem::replace(&mut self.active, seg).release_sync_files();
        self.write_off = SEGMENT_HEADER_LEN as u64;
        self.prep = Prep::Deferred;
        Ok(())
    }

    /// Syncs every frame written to the active segment (`Durability::NoSync` before a roll:
    /// see `Flusher::room_for_frame`).
    pub fn sync_active(&self) -> Result<()> {
        self.active.finish_activation()?;
        self.active
            .sync(0, self.write_off as usize, self.write_path)
    }

    /// Makes the active segment's activation durable if a roll left it pending (nothing
    /// synced a frame in it yet): before a clean close, whose mark names that segment.
    pub fn finish_activation(&self) -> Result<()> {
        self.active.finish_activation()
    }

    /// Sequence number the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Where the log ends now: the clean-close mark a close writes once it is durable.
    pub fn end_mark(&self) -> clean::CleanMark {
        clean::CleanMark {
            segment_id: self.active.id,
            end: self.write_off,
            next_seq: self.next_seq,
        }
    }

    /// True when a frame with a body of `body_len` bytes (records and trailer) goes into the
    /// active segment (if not, `append` rolls to a new segment first). Nothing goes into a
    /// segment of an older format version (one an older build wrote, continued after an
    /// upgrade): its header tells older builds its frames carry no trailers. Nor into a
    /// rewritten segment (in-place compaction's), which is complete: a writer that reopens a
    /// log ending in one starts a new segment.
    pub fn fits(&self, body_len: usize) -> bool {
        self.active.version == FORMAT_VERSION
            && !self.active.rewritten
            && self.write_off + frame_len(body_len) as u64 <= self.active.size
    }

    /// The longest frame (header, records, trailer, padding) the segments the log makes hold:
    /// what fits after an empty segment's header.
    pub fn frame_max(&self) -> usize {
        self.segment_bytes as usize - SEGMENT_HEADER_LEN
    }

    /// Appends one frame of `body_len` bytes of records and the trailer `trailer`, the
    /// records encoded by `encode` (which pushes them and returns the frame's
    /// acknowledged-op count). The frame is written (pwrite, or in the mapping) but neither
    /// synced nor published: the syncer does both.
    pub fn append(
        &mut self,
        body_len: usize,
        flags: u32,
        trailer: Trailer<'_>,
        encode: impl FnOnce(&mut FrameWriter<'_>, u64) -> u32,
    ) -> Result<WrittenFrame> {
        let body_len = body_len + trailer_len(trailer.ids.len());
        let len = frame_len(body_len);
        if !self.fits(body_len) {
            // Never reached by a window (`Config::validate`, and the flusher refuses merges
            // whose results would not fit) nor by a compaction chunk (the flusher checks
            // `frame_max` first); refused here all the same rather than written past a
            // segment's end.
            let max = self.frame_max();
            if len > max {
                return Err(Error::RequestTooLarge {
                    len,
                    max,
                    limit: crate::error::RequestLimit::SegmentBytes,
                });
            }
            self.roll()?;
        }
        let seq = self.next_seq;
        let off = self.write_off;
        // In a recycled segment the bytes after the frame are old ones, not zeros: the frame
        // ends with an end marker (as much of it as fits; with less than a frame header left,
        // the segment's end is the end anyway). The next frame overwrites it.
        let marker = if self.active.recycled {
            (self.active.size - off - len as u64).min(END_MARKER_LEN as u64) as usize
        } else {
            0
        };
        match self.write_path {
            WritePath::Pwrite => {
                // The buffer only grows and is not zeroed first: `FrameWriter` writes every
                // byte of the frame (header, records, padding), so what an earlier, longer
                // frame left in it is overwritten (zeroing 64 KiB per frame was 1.4 % of
                // the CPU at 4 × 256). It grows to the frame rounded up to 64 KiB, not by
                // doubling: it is kept, and then holds no more than the largest frame written
                // and 64 KiB; the rounding spares a reallocation per slightly larger frame.
                if self.buf.len() < len + marker {
                    let want = (len + marker).next_multiple_of(64 << 10);
                    self.buf.reserve_exact(want - self.buf.len());
                    self.buf.resize(want, 0);
                }
                let frame = &mut self.buf[..len];
                let mut w = FrameWriter::new(frame, seq, flags);
                let acked = encode(&mut w, off);
                let n = w.finish_with(acked, Some(trailer));
                debug_assert_eq!(n, len);
                self.buf[len..len + marker].fill(0);
                self.active
                    .write(off, &self.buf[..len + marker], WritePath::Pwrite)?;
            }
            WritePath::Mmap => {
                self.active.before_map_write(off)?;
                let dst = self.active.unpublished_mut(off, len + marker);
                let (frame, end) = dst.split_at_mut(len);
                let mut w = FrameWriter::new(frame, seq, flags);
                let acked = encode(&mut w, off);
                let n = w.finish_with(acked, Some(trailer));
                debug_assert_eq!(n, len);
                end.fill(0);
            }
        }
        self.write_off += len as u64;
        self.next_seq += 1;
        self.prepare_when_due();
        Ok(WrittenFrame {
            seg: self.active.clone(),
            seg_idx: self.segments.read().last_idx(),
            start: off,
            end: self.write_off,
            seq,
        })
    }
}

/// The error of a preparation of the next segment, as the roll returns it: one that says the
/// disk has no room becomes `Error::NoSpace` (the engine refuses writes until room is made),
/// others stay as they are (the engine fails). A failed directory sync is never taken for
/// a want of room: it may have been the report of another change of the directory's.
fn no_room(e: Error) -> Error {
    match crate::room::is_no_room(&e) && !dir::is_failed_dir_sync(&e) {
        true => Error::NoSpace { cause: Arc::new(e) },
        false => e,
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Finish the background preparation so no half-written file is left.
        if let Prep::Pending(h) = std::mem::replace(&mut self.prep, Prep::None) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::io::{Io, IoOp};
    use std::sync::atomic::AtomicBool;

    /// While set, creating a `prep-*` file fails with ENOSPC.
    #[derive(Default)]
    struct Full(AtomicBool);

    impl Io for Full {
        fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if op == IoOp::Create && name.starts_with("prep-") && self.0.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }
    }

    /// A roll that finds no room for the next segment is `NoSpace`, leaves the log as it was,
    /// and defers the next preparation again (the next frame written starts it in the
    /// background) instead of leaving it to the next roll, which would make the file on the
    /// writer's time. Once there is room, the roll goes through.
    #[test]
    fn a_roll_without_room_changes_nothing_and_defers_the_preparation() {
        let dir = tempfile::tempdir().unwrap();
        let full = Arc::new(Full::default());
        let io: SharedIo = full.clone();
        let size = 1 << 16;
        let first = Log::create_first(dir.path(), size, 1, None, &io).unwrap();
        let segments: Segments = Arc::new(RwLock::new(SegmentList::new(vec![Arc::new(first)])));
        let spares = Spares {
            prepared: None,
            prep_counter: 0,
            pool: Arc::new(Pool::adopt(&io, dir.path(), size, (0, 0), 0).unwrap()),
            ids_room: None,
        };
        let config = Config {
            segment_bytes: size,
            ..Config::default()
        };
        let header = SEGMENT_HEADER_LEN as u64;
        let mut log = Log::new(
            dir.path(),
            segments.clone(),
            header,
            1,
            &config,
            spares,
            &io,
        )
        .expect("log");
        full.0.store(true, Ordering::SeqCst);
        // A frame bigger than what is left of the segment.
        let big = size as usize;
        let e = log.roll_for(big).unwrap_err();
        assert!(matches!(e, Error::NoSpace { .. }), "{e}");
        assert_eq!(segments.read().iter().count(), 1);
        assert_eq!(log.next_seq(), 1);
        assert!(
            matches!(log.prep, Prep::Deferred),
            "the preparation was not deferred again"
        );
        full.0.store(false, Ordering::SeqCst);
        log.roll_for(big).unwrap();
        assert_eq!(segments.read().iter().count(), 2);
    }
}
