//! The append-only log: a directory of fixed-size, preallocated, memory-mapped segments.
//!
//! Only the flusher appends. Readers reach segments through the shared `Segments` list and
//! read through the mappings.

pub mod format;
pub(crate) mod recovery;
pub(crate) mod segment;

use crate::config::WritePath;
use crate::error::Result;
use format::{frame_len, FrameWriter, SEGMENT_HEADER_LEN};
use parking_lot::RwLock;
use segment::{create_zeroed, Segment};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The segments of a log in order; shared between the flusher (which appends to it) and
/// readers (which look up the segment an index entry names).
pub(crate) type Segments = Arc<RwLock<Vec<Arc<Segment>>>>;

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

/// Path of the `n`th prepared-ahead segment file.
fn prep_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format::prep_file_name(n))
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
    /// The next segment file, being zero-filled in the background ahead of need.
    prep: Option<JoinHandle<Result<PathBuf>>>,
    prep_counter: u64,
    /// Reused encode buffer of the pwrite path.
    buf: Vec<u8>,
}

impl Log {
    /// Continues the log after recovery: `segments` is non-empty, the last one is writable
    /// and its frames end at `write_off`; `next_seq` is the sequence of the next frame.
    pub fn new(
        dir: &Path,
        segments: Segments,
        write_off: u64,
        next_seq: u64,
        segment_bytes: u64,
        write_path: WritePath,
        ) -> Log {
        let active = segments
            .read()
            .last()
            .expect("recovery leaves a segment")
            .clone();
        let mut log = Log {
            dir: dir.to_owned(),
            segments,
            active,
            write_off,
            next_seq,
            segment_bytes,
            write_path,
            prep: None,
            prep_counter: 0,
            buf: Vec::new(),
        };
        log.prepare_next();
        log
    }

    /// Creates the first segment (id `first_seq`) of a directory without one (synchronously).
    pub fn create_first(dir: &Path, segment_bytes: u64, first_seq: u64) -> Result<Segment> {
        let prep = prep_path(dir, 0);
        create_zeroed(dir, &prep, segment_bytes)?;
        Segment::activate(dir, &prep, first_seq)
    }

    fn prepare_next(&mut self) {
        self.prep_counter += 1;
        let dir = self.dir.clone();
        let path = prep_path(&dir, self.prep_counter);
        let size = self.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("mergelog-prep".into())
            .spawn(move || create_zeroed(&dir, &path, size).map(|()| path));
        // If no thread can be made, the roll creates the file itself.
        self.prep = spawned.ok();
    }

    /// Moves to a fresh segment whose first frame is `next_seq`.
    fn roll(&mut self) -> Result<()> {
        let prep = match self.prep.take().map(|h| h.join()) {
            Some(Ok(Ok(path))) => path,
            Some(Ok(Err(e))) => return Err(e),
            _ => {
                let path = prep_path(&self.dir, self.prep_counter);
                let _ = std::fs::remove_file(&path);
                create_zeroed(&self.dir, &path, self.segment_bytes)?;
                path
            }
        };
        let seg = Arc::new(Segment::activate(&self.dir, &prep, self.next_seq)?);
        self.segments.write().push(seg.clone());
        self.active = seg;
        self.write_off = SEGMENT_HEADER_LEN as u64;
        self.prepare_next();
        Ok(())
    }

    /// True when a frame with `body_len` bytes of records fits in the active segment (if
    /// not, `append` rolls to a new segment first).
    pub fn fits(&self, body_len: usize) -> bool {
        self.write_off + frame_len(body_len) as u64 <= self.active.size
    }

    /// Appends one frame of `body_len` bytes, encoded by `encode` (which pushes the records
    /// and returns the frame's acknowledged-op count). The frame is written (pwrite, or in
    /// the mapping) but neither synced nor published: the syncer does both.
    pub fn append(
        &mut self,
        body_len: usize,
        flags: u32,
        encode: impl FnOnce(&mut FrameWriter<'_>, u64) -> u32,
    ) -> Result<WrittenFrame> {
        let len = frame_len(body_len);
        if !self.fits(body_len) {
            self.roll()?;
        }
        let seq = self.next_seq;
        let off = self.write_off;
        match self.write_path {
            WritePath::Pwrite => {
                self.buf.clear();
                self.buf.resize(len, 0);
                let mut w = FrameWriter::new(&mut self.buf, seq, flags);
                let acked = encode(&mut w, off);
                let n = w.finish(acked);
                debug_assert_eq!(n, len);
                self.active.write(off, &self.buf, WritePath::Pwrite)?;
            }
            WritePath::Mmap => {
                let dst = self.active.unpublished_mut(off, len);
                let mut w = FrameWriter::new(dst, seq, flags);
                let acked = encode(&mut w, off);
                let n = w.finish(acked);
                debug_assert_eq!(n, len);
            }
        }
        self.write_off += len as u64;
        self.next_seq += 1;
        Ok(WrittenFrame {
            seg: self.active.clone(),
            seg_idx: self.segments.read().len() as u32 - 1,
            start: off,
            end: self.write_off,
            seq,
        })
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Finish the background preparation so no half-written file is left.
        if let Some(h) = self.prep.take() {
            let _ = h.join();
        }
    }
}
