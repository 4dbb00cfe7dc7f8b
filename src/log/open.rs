//! Recovering a log directory at a writable open, once the engine holds its lock: read the
//! clean-close mark, scan (and repair) the log, make the disk hold what the scan accepted,
//! adopt the spare files an earlier run left (after a clean end only), remove the mark, and
//! give an empty directory its first segment.

use crate::config::{Config, Durability, WritePath};
use crate::error::Result;
use crate::log::clean::{self, CleanMark};
use crate::log::dir;
use crate::log::format::{Frame, SEGMENT_HEADER_LEN};
use crate::log::io::SharedIo;
use crate::log::pool::Pool;
use crate::log::prep::{adopt_prepared, Spares};
use crate::log::recovery::{scan, Access, Damage, Expect};
use crate::log::segment::Segment;
use crate::log::Log;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The log as recovery left it, ready to be continued.
pub(crate) struct Recovered {
    /// The live segments in log order, never empty: the last one is writable.
    pub segments: Vec<Arc<Segment>>,
    /// End of the last frame in the last segment.
    pub write_off: u64,
    /// Sequence number the next frame gets.
    pub next_seq: u64,
    /// Segments the scan found (an empty directory's first segment is made after it).
    pub scanned: usize,
    /// Damage the scan cut off.
    pub damage: Option<Damage>,
    /// After an unclean end, the bytes written again (see [`reestablish`]).
    pub tail_rewritten: Option<u64>,
    /// Mappings replaced during recovery that the index may still point into.
    pub retired: Vec<Arc<Segment>>,
    /// The files for the next segments.
    pub spares: Spares,
}

/// Recovers the log in `dir`, whose lock the caller holds, calling `visit(segment index,
/// segment, frame)` for each valid frame in log order (see [`scan`]). `carried_last` is the
/// `ids` file's entry naming the largest batch: a log that holds segments must end past it
/// (else the file is refused as damage before anything is changed), and a log left without
/// segments goes on past it (see [`crate::ids::Found::carried_last`]).
pub(crate) fn recover(
    dir: &Path,
    config: &Config,
    io: &SharedIo,
    carried_last: Option<crate::ids::CarriedAt>,
    visit: impl FnMut(u32, &Arc<Segment>, &Frame<'_>) -> Result<()>,
) -> Result<Recovered> {
    // A segment file with other names (an incremental backup's, shared with another
    // backup) gets a file of its own before anything here may write into it: the tail's
    // rewrite after an unclean end, a cut, appends, reuse (`dir::unshare_segments`).
    dir::unshare_segments(&**io, dir)?;
    // Whether the last run closed cleanly (see `log::clean`).
    let found = clean::read(dir)?;
    let synced = config.durability == Durability::Sync;
    let expect = Expect {
        synced,
        clean: found.mark(),
        carried_last,
    };
    let scanned = scan(dir, config.recovery, Access::Writer, expect, io, visit)?;
    let count = scanned.segments.len();
    let mut segs = scanned.segments;
    let mut write_off = scanned.write_off;
    // After an unclean end the page cache may hold what the disk does not (a sync that
    // failed leaves its pages cached and clean; an earlier open's repair may not have
    // reached the disk): make the disk hold what the scan accepted before anything is
    // written after it (`reestablish`).
    let end = segs.last().map(|s| CleanMark {
        segment_id: s.id,
        end: write_off,
        next_seq: scanned.next_seq,
    });
    let clean_end = end.is_some() && found.mark() == end;
    let mut tail_rewritten = None;
    if end.is_some() && !clean_end {
        tail_rewritten = Some(reestablish(io, dir, &segs)?);
    }
    // The spare files (a prepared segment, the pool) are kept only after a clean end
    // (adopted before the mark goes: an open that fails here leaves it, still true). After
    // a crash one of them may be the file a roll was activating when a power loss undid its
    // rename: it holds the header and frames of batches from the log's next sequence on,
    // none acknowledged, and if it became a segment with that id again, a later crash could
    // replay them as that segment's batches (docs/FORMAT.md, "Recycled segments"). Which
    // one it is cannot be told for sure (its header write may be the one that was lost), so
    // all go; the next segments are zero-filled afresh.
    let keep = |n: usize| if clean_end { n } else { 0 };
    let (mut prepared, prep_counter) = adopt_prepared(io, dir, config.segment_bytes, keep(1))?;
    let reserve = usize::from(config.reserve_segment);
    let pool = Arc::new(Pool::adopt(
        io,
        dir,
        config.segment_bytes,
        (config.recycle_segments, reserve),
        keep(config.recycle_segments + reserve),
    )?);
    // The reserve is made now if there is none (a first open, or after a crash): an open
    // on a full disk goes on without it (its reads work; the first segments a retirement
    // frees make it). A failed directory sync may have reported another change of the
    // directory's: the open fails with it, as any does.
    if let Err(e) = pool.make_reserve(io) {
        if dir::is_failed_dir_sync(&e) {
            return Err(e);
        }
    }
    // The mark describes the log as it was; from here on it changes.
    if found != clean::Found::Absent {
        clean::remove(io, dir)?;
    }
    let mut next_seq = scanned.next_seq;
    if segs.is_empty() {
        // A log without segments (a new one; or one whose segments a `PointInTime` open
        // dropped, then failed or crashed before it made the next one; or removed by hand)
        // never gives again a batch number the carried ids name: a retry of such a request
        // would be answered with a batch that logs something else.
        next_seq = next_seq.max(carried_last.map_or(1, |c| c.seq + 1));
        let first = |prepared| Log::create_first(dir, config.segment_bytes, next_seq, prepared, io);
        // A zero fill only when there is no prepared file to start from.
        let seg = match prepared.take() {
            Some(p) => first(Some(p)),
            None => pool.zero_fill(|| first(None)),
        };
        segs.push(Arc::new(seg?));
        pool.fresh.fetch_add(1, Ordering::Relaxed);
        write_off = SEGMENT_HEADER_LEN as u64;
    }
    Ok(Recovered {
        segments: segs,
        write_off,
        next_seq,
        scanned: count,
        damage: scanned.damage,
        tail_rewritten,
        retired: scanned.retired,
        spares: Spares {
            prepared,
            prep_counter,
            pool,
            ids_room: None,
        },
    })
}

/// Makes the disk hold what the page cache shows of the log, after an unclean end (no
/// clean-close mark matching the log: a crash, or a failure). A sync that failed may have left
/// pages cached and clean that are not on disk, and a repair an earlier open began (zeroing a
/// torn tail, say) may be only in the cache; a log written with `NoSync` was never synced at
/// all. So: every segment before the last is synced (nothing to write if it is clean), the
/// last one is written again whole from the cache and synced, and the directory and its
/// parent are synced. Returns the bytes written again.
pub(crate) fn reestablish(io: &SharedIo, dir: &Path, segments: &[Arc<Segment>]) -> Result<u64> {
    let Some((last, earlier)) = segments.split_last() else {
        return Ok(0);
    };
    for seg in earlier {
        seg.sync(0, 0, WritePath::Pwrite)?;
    }
    last.rewrite(last.size)?;
    dir::sync_dir_and_parent(&**io, dir)?;
    Ok(last.size)
}
