//! The file half of retiring a prefix of the log (`Engine::retire_before`; docs/FORMAT.md,
//! "Retiring a prefix"): the candidates lose their `.seg` names oldest first, each change
//! made durable before the next, so after a crash the log is always a suffix of itself; then
//! the files renamed into the pool join it, and the pool gives up what no longer fits.
//!
//! Between the two steps the engine forgets the segments whose names went (from its list,
//! then from its index) and drops its mappings of them, so that a file is in the pool only
//! once the engine no longer maps it.

use crate::config::Config;
use crate::error::Result;
use crate::log::dir;
use crate::log::io::Io;
use crate::log::pool::Pool;
use crate::log::segment::Segment;
use crate::stats::Counters;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`retire_oldest`] did: how many segments lost their names, and where the pooled ones
/// went.
#[must_use]
pub(crate) struct Retiring {
    /// How many of the candidates, oldest first, lost their `.seg` names: the engine forgets
    /// exactly these.
    pub removed: usize,
    /// The pool paths of those renamed into the pool whose rename is durable.
    pooled: Vec<PathBuf>,
    /// How many files the pool may hold afterwards.
    keep: usize,
    /// The error that stopped the retirement, if one did.
    result: Result<()>,
    /// The error was the directory sync after a removal: the engine must fail.
    pub sync_failed: bool,
}

/// Takes the `.seg` names of `candidates` (complete, durable segments, oldest first) away:
/// renames each into the pool (the newest `keep` of them, and one more for a reserve taken)
/// or removes it, and syncs the
/// directory after each; stops at the first error.
pub(crate) fn retire_oldest(
    io: &dyn Io,
    dir: &Path,
    pool: &Pool,
    config: &Config,
    candidates: &[Arc<Segment>],
    keep: usize,
) -> Retiring {
    let mut removed = 0;
    let mut pooled = Vec::new();
    let mut result = Ok(());
    let mut sync_failed = false;
    // The newest `keep` of them go to the pool (if they have the size segments are made
    // with now), the rest are removed; either way the `.seg` name goes. The pool then gives
    // up its oldest files beyond `keep`: a file some reader still maps cannot be reused,
    // and must not keep newer ones out.
    // A reserve a compaction took is made again from them too (`Config::reserve_segment`).
    let pool_from = candidates
        .len()
        .saturating_sub(keep + pool.reserve_missing());
    for (i, seg) in candidates.iter().enumerate() {
        let to = (i >= pool_from && seg.size == config.segment_bytes).then(|| pool.next_path());
        let r = match &to {
            Some(to) => dir::retire_to_pool(io, &seg.path, to),
            None => dir::remove_retired(io, &seg.path),
        }
        .and_then(|()| {
            // The `.seg` name is gone: the engine forgets the segment. The file joins
            // the pool only once the rename is durable (after a failed directory sync a
            // crash could bring the old name back, so the file must not be reused).
            removed += 1;
            // A failed sync is never retried as if it succeeded: the engine fails
            // (`retire_held_off`), and the next open syncs the directory.
            dir::sync_dir(io, dir).inspect_err(|_| sync_failed = true)?;
            pooled.extend(to);
            Ok(())
        });
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    Retiring {
        removed,
        pooled,
        keep,
        result,
        sync_failed,
    }
}

impl Retiring {
    /// Once the engine has forgotten the unnamed segments and dropped its mappings of them:
    /// counts them as retired, adds the pooled files to the pool and removes the files it
    /// gives up. Returns how many of the retired segments the pool kept, or the first error
    /// (the retirement's, else the removals').
    pub fn into_pool(self, io: &dyn Io, dir: &Path, pool: &Pool) -> Result<usize> {
        let Retiring {
            removed,
            pooled,
            keep,
            result,
            sync_failed: _,
        } = self;
        Counters::add(&pool.retired, removed as u64);
        let evicted = pool.put(pooled.iter().cloned(), keep);
        let recycled = pooled.iter().filter(|p| !evicted.contains(p)).count();
        let result = result.and(evict(io, dir, &evicted));
        result.map(|()| recycled)
    }
}

/// At `close`, with the pipeline stopped: the spare files at rest are what the next open
/// would keep and no more. The prepared next segment (zeros, or a pooled file taken for it)
/// is removed unless `recycle_segments` > 0 asks for spares, and at most `recycle_segments`
/// pooled files stay (a compaction may have kept more, and the prepared one may be one of
/// them), and the reserve (`Config::reserve_segment`). A closed log then holds its segments
/// only (and the reserve): with the default 64 MiB segments the
/// prepared one was 64 MiB of zeros at rest; the next run prepares another when its active
/// segment is an eighth full (`log::prep`), in the background. Best effort, as the next open
/// removes what is beyond its pool anyway.
pub(crate) fn trim_spares_at_close(
    io: &dyn Io,
    dir: &Path,
    segment_bytes: u64,
    recycle_segments: usize,
    reserve: usize,
) -> Result<()> {
    let prepared_kept = usize::from(recycle_segments > 0);
    dir::adopt_spares(
        io,
        dir,
        crate::log::format::parse_prep_file_name,
        segment_bytes,
        prepared_kept,
    )?;
    dir::adopt_spares(
        io,
        dir,
        crate::log::format::parse_recycle_file_name,
        segment_bytes,
        recycle_segments + reserve,
    )?;
    Ok(())
}

/// Removes files the pool gave up. Spare files are not part of the log: no order to keep,
/// one directory sync. Returns the first error.
pub(crate) fn evict(io: &dyn Io, dir: &Path, evicted: &[PathBuf]) -> Result<()> {
    let removed = (evicted.iter())
        .map(|path| dir::evict_from_pool(io, path))
        .fold(Ok(()), Result::and);
    if evicted.is_empty() {
        return removed;
    }
    removed.and(dir::sync_dir(io, dir))
}
