//! What only a writer's scan does to the files: reopen the tail a cut leaves writable, remove
//! the segments after a cut, zero a tail. Each file operation is one small call over the
//! storage seam (`log/io.rs`) or the segment's own writes and syncs.

use super::Scanned;
use crate::error::Result;
use crate::log::io::SharedIo;
use crate::log::segment::Segment;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The writable tail a cut leaves, and where its zeroing starts (done last, see [`finish`]).
pub(super) type ZeroFrom = (Arc<Segment>, u64);

/// A cut at a bad header dropped the segment: the one before it (if any) becomes the writable
/// tail, reopened writable in place of its read-only mapping (which `retired` keeps).
pub(super) fn reopen_previous(out: &mut Scanned, io: &SharedIo) -> Result<Option<ZeroFrom>> {
    let Some(prev) = out.segments.pop() else {
        return Ok(None);
    };
    let tail = Arc::new(Segment::open(&prev.path, prev.id, true, io)?);
    // Whatever follows its last frame was never checked: it is zeroed once the later
    // segments are gone (`finish`).
    let zero_from = (tail.clone(), out.write_off);
    tail.publish(out.write_off);
    out.segments.push(tail);
    out.retired.push(prev);
    Ok(Some(zero_from))
}

/// The cut segment `seg` becomes the writable tail: the last segment already is (the writer
/// opened it writable); an earlier one is reopened writable, its read-only mapping kept in
/// `retired` (frames were visited through it).
pub(super) fn writable(
    seg: Arc<Segment>,
    last: bool,
    out: &mut Scanned,
    io: &SharedIo,
) -> Result<Arc<Segment>> {
    if last {
        return Ok(seg);
    }
    out.retired.push(seg.clone());
    Ok(Arc::new(Segment::open(&seg.path, seg.id, true, io)?))
}

/// Zeroes (and syncs) what follows the last frame of a recycled last segment, whatever is
/// there, before anything is written: the old bytes, and the leftovers of frames written
/// after a torn one, cannot be told apart (docs/FORMAT.md, "Recycled segments").
pub(super) fn zero_recycled_tail(seg: &Segment, end: u64) -> Result<()> {
    seg.zero_tail(end)
}

/// Removes a rewrite's leftovers, then makes a cut durable: removes the dropped segments,
/// then zeroes the cut segment's tail.
pub(super) fn finish(
    dir: &Path,
    dropped: &[PathBuf],
    leftovers: &[PathBuf],
    zero_from: Option<ZeroFrom>,
    io: &SharedIo,
) -> Result<()> {
    // A rewrite's leftovers are older than anything a cut drops: they go first, as the
    // rewrite would have removed them.
    crate::log::dir::remove_rewrite_leftovers(&**io, dir, leftovers)?;
    // A cut leaves later segments behind: they go first, newest first, each removal
    // made durable before the next, so that a crash at any step leaves the log a
    // prefix of itself with the damage still in place. Only then is the cut segment's
    // tail zeroed: it is the evidence of what was cut until nothing else remains.
    for p in dropped.iter().rev() {
        crate::log::dir::remove_dropped(&**io, dir, p)?;
    }
    if let Some((seg, off)) = zero_from {
        seg.zero_tail(off)?;
    }
    Ok(())
}
