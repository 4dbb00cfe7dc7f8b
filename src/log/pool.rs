//! The pool of retired segment files kept for reuse (`recycle-<n>.tmp`,
//! `Config::recycle_segments`), so that a roll need not write a segment's worth of zeros
//! first. Retirement (`log/retire.rs`) adds files; the preparation of the next segment
//! (`log/prep.rs`) takes them. The files themselves are renamed and removed by `dir.rs`.

use crate::error::Result;
use crate::log::dir::{self, pool_path};
use crate::log::format;
use crate::log::io::SharedIo;
use crate::log::segment;
use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Retired segment files kept for reuse as later segments (`recycle-<n>.tmp`), so that a
/// roll need not write a segment's worth of zeros first: `Engine::retire_before` adds them
/// (up to `Config::recycle_segments`), the log takes them when it prepares the next segment.
pub(crate) struct Pool {
    dir: PathBuf,
    max: usize,
    /// How many files are held back for a compaction on a full disk (`Config::reserve_segment`:
    /// 0 or 1): [`Pool::take`] leaves them, only [`Pool::take_reserve`] takes them.
    reserve: usize,
    segment_bytes: u64,
    inner: Mutex<PoolFiles>,
    /// Segments started in fresh (zero-filled) files, in reused ones, and retired.
    pub fresh: AtomicU64,
    pub reused: AtomicU64,
    pub retired: AtomicU64,
    /// Nanoseconds spent writing new segment files' zeros and syncing them.
    zero_fill_ns: AtomicU64,
    /// Files taken from the reserve.
    reserve_taken: AtomicU64,
}

struct PoolFiles {
    /// Oldest first. A file is reused only once nothing maps it (a `ValueRef`, a replay, a
    /// follower, a `LogReader` in any process: see `segment::open_unmapped`), since its bytes
    /// would change under them.
    files: std::collections::VecDeque<PathBuf>,
    counter: u64,
    /// What [`Pool::keep_for_next_run`] adds to a run's estimate, and the `fresh` count it
    /// last saw (`None` before the first run).
    slack: usize,
    fresh_mark: Option<u64>,
}

impl Pool {
    /// Takes over the pool files an earlier run left: keeps up to `keep` (at most `max` and
    /// the `reserve`) of the right size, removes the others. The pool then holds up to `max`
    /// files for reuse, and `reserve` more held back (see [`Pool::take_reserve`]).
    pub fn adopt(
        io: &SharedIo,
        dir: &Path,
        segment_bytes: u64,
        (max, reserve): (usize, usize),
        keep: usize,
    ) -> Result<Pool> {
        let (kept, highest) = dir::adopt_spares(
            &**io,
            dir,
            format::parse_recycle_file_name,
            segment_bytes,
            keep.min(max + reserve),
        )?;
        let files = kept.into_iter().collect();
        let counter = highest + 1;
        Ok(Pool {
            dir: dir.to_owned(),
            max,
            reserve,
            segment_bytes,
            inner: Mutex::new(PoolFiles {
                files,
                counter,
                slack: 0,
                fresh_mark: None,
            }),
            fresh: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            zero_fill_ns: AtomicU64::new(0),
            reserve_taken: AtomicU64::new(0),
        })
    }

    /// A new path in the pool, for a retired segment to be renamed to.
    pub fn next_path(&self) -> PathBuf {
        let mut p = self.inner.lock();
        p.counter += 1;
        pool_path(&self.dir, p.counter - 1)
    }

    /// Adds retired segments, renamed to paths [`Pool::next_path`] gave, and gives up the
    /// oldest files beyond `keep` (at least the pool's configured size) and the reserve:
    /// returns them, for the caller to remove. A reserve a compaction took is so made again
    /// from the first segments retired after it, with no zeros written.
    pub fn put(&self, paths: impl Iterator<Item = PathBuf>, keep: usize) -> Vec<PathBuf> {
        let mut p = self.inner.lock();
        p.files.extend(paths);
        let over = (p.files.len()).saturating_sub(keep.max(self.max).saturating_add(self.reserve));
        p.files.drain(..over).collect()
    }

    /// How many files the reserve lacks (taken by a compaction, or never made): the next
    /// retirement keeps as many more of the segments it retires.
    pub fn reserve_missing(&self) -> usize {
        self.reserve.saturating_sub(self.inner.lock().files.len())
    }

    /// Makes the reserve's file (a zero fill, as for a fresh segment) if the pool holds fewer
    /// files than the reserve: at open, and once `Engine::resume` found room. `Ok(false)` if
    /// the pool keeps no reserve. An error (no room, most likely) leaves the pool as it was:
    /// the first segments retired later make the reserve instead ([`Pool::put`]).
    pub fn make_reserve(&self, io: &SharedIo) -> Result<bool> {
        if self.reserve == 0 || self.inner.lock().files.len() >= self.reserve {
            return Ok(self.reserve > 0);
        }
        let path = self.next_path();
        self.zero_fill(|| dir::replace_prepared(&**io, &self.dir, &path, self.segment_bytes))?;
        self.inner.lock().files.push_back(path);
        Ok(true)
    }

    /// How many of the files it retires a run of `Compaction::Auto` keeps, given its
    /// `estimate` of the segments the log will start before the next run retires any: the
    /// estimate plus what the earlier runs' estimates were seen to miss. A segment started in
    /// a fresh file since the last run means the pool ran dry (the estimate fell short, or
    /// the run came late because writers outpaced the compactor): the margin grows by as
    /// many; a run that finds two or more files still pooled (more than the preparation of
    /// the next segment takes ahead) gives one back. A steady workload so converges on
    /// reusing every file, and the margin stays at most the estimate (the pool at most twice
    /// what the estimate asks for).
    pub fn keep_for_next_run(&self, estimate: usize) -> usize {
        let fresh = self.fresh.load(Ordering::Relaxed);
        let mut p = self.inner.lock();
        // The fresh segments before the first run are the log's growth, not a shortfall.
        let short = p.fresh_mark.map_or(0, |mark| fresh.saturating_sub(mark));
        p.fresh_mark = Some(fresh);
        if short > 0 {
            p.slack = p
                .slack
                .saturating_add(usize::try_from(short).unwrap_or(usize::MAX));
        } else if p.files.len() >= 2 + self.reserve {
            // (The reserve is no file the preparation takes: on top of the two.)
            p.slack = p.slack.saturating_sub(1);
        }
        p.slack = p.slack.min(estimate);
        estimate + p.slack
    }

    /// The segment counters.
    pub fn counts(&self) -> crate::stats::SegmentCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::stats::SegmentCounts {
            fresh: get(&self.fresh),
            reused: get(&self.reused),
            retired: get(&self.retired),
            zero_fill: std::time::Duration::from_nanos(get(&self.zero_fill_ns)),
            reserved: self.inner.lock().files.len().min(self.reserve) as u64,
            reserve_taken: get(&self.reserve_taken),
        }
    }

    /// Runs `fill` (the creation of a zero-filled segment file) and counts its time in
    /// [`SegmentCounts::zero_fill`](crate::stats::SegmentCounts::zero_fill).
    pub fn zero_fill<T>(&self, fill: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = fill();
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.zero_fill_ns.fetch_add(ns, Ordering::Relaxed);
        out
    }

    /// Takes the oldest file nobody maps any more, if the pool holds more than its reserve,
    /// open and holding the shared lock its mapping will hold. A file that cannot be opened
    /// is dropped from the pool (the next open deletes or adopts it).
    pub(super) fn take(&self) -> Option<(PathBuf, File)> {
        self.take_beyond(self.reserve)
    }

    /// As [`Pool::take`], the reserve too: for a compaction's copies when the disk has no
    /// room for a new segment (`Log::roll_into_reserve`).
    pub(super) fn take_reserve(&self) -> Option<(PathBuf, File)> {
        let taken = self.take_beyond(0);
        if taken.is_some() {
            self.reserve_taken.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn take_beyond(&self, held_back: usize) -> Option<(PathBuf, File)> {
        let mut p = self.inner.lock();
        if p.files.len() <= held_back {
            return None;
        }
        let mut i = 0;
        while i < p.files.len() {
            match segment::open_unmapped(&p.files[i]) {
                Ok(Some(file)) => return p.files.remove(i).map(|path| (path, file)),
                Ok(None) => i += 1,
                Err(_) => {
                    p.files.remove(i);
                    // What is left may be the reserve only.
                    if p.files.len() <= held_back {
                        return None;
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::io::RealIo;
    use std::sync::Arc;

    fn pool(dir: &Path) -> Pool {
        let io: SharedIo = Arc::new(RealIo);
        Pool::adopt(&io, dir, 4096, (1, 0), 1).unwrap()
    }

    fn start_fresh(pool: &Pool, n: u64) {
        pool.fresh.fetch_add(n, Ordering::Relaxed);
    }

    /// A pool of at most one file for reuse, and a reserve, in the empty `dir`.
    fn pool_with_reserve(dir: &Path) -> (SharedIo, Pool) {
        let io: SharedIo = Arc::new(RealIo);
        let pool = Pool::adopt(&io, dir, 4096, (1, 1), 0).unwrap();
        (io, pool)
    }

    fn new_paths(pool: &Pool, n: usize) -> Vec<PathBuf> {
        (0..n).map(|_| pool.next_path()).collect()
    }

    fn pooled(pool: &Pool, n: usize) {
        pool.put(new_paths(pool, n).into_iter(), usize::MAX);
    }

    /// Files the pool holds, made for real (`take` opens them).
    #[allow(clippy::disallowed_methods)] // a test's files, behind the engine's back
    fn pooled_files(pool: &Pool, n: usize) {
        let paths = new_paths(pool, n);
        for p in &paths {
            std::fs::write(p, [0u8; 4096]).unwrap();
        }
        pool.put(paths.into_iter(), 0);
    }

    #[test]
    fn the_reserve_is_left_to_compactions_and_kept_on_top_of_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let (io, pool) = pool_with_reserve(dir.path());
        assert_eq!(pool.reserve_missing(), 1);
        assert!(pool.make_reserve(&io).unwrap());
        assert_eq!(pool.counts().reserved, 1);
        assert!(pool.take().is_none(), "a roll took the reserve");
        assert!(pool.take_reserve().is_some());
        assert_eq!(
            (pool.reserve_missing(), pool.counts().reserve_taken),
            (1, 1)
        );
        // Retired files make it again, on top of the pool's own file.
        pooled_files(&pool, 3);
        assert_eq!(pool.reserve_missing(), 0);
        assert_eq!(pool.inner.lock().files.len(), 2, "max 1, and the reserve");
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
        assert_eq!(pool.counts().reserved, 1);
        // Without a reserve, nothing is held back.
        let plain = Pool::adopt(&io, dir.path(), 4096, (1, 0), 0).unwrap();
        assert!(!plain.make_reserve(&io).unwrap());
        pooled_files(&plain, 1);
        assert!(plain.take().is_some());
    }

    #[test]
    fn a_file_dropped_from_the_pool_does_not_let_take_have_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let (_, p) = pool_with_reserve(dir.path());
        // A file gone from the disk (it cannot be opened: dropped), then the reserve.
        pooled(&p, 1);
        pooled_files(&p, 1);
        assert!(p.take().is_none(), "a roll took the reserve");
        assert_eq!(p.counts().reserved, 1);
        assert!(p.take_reserve().is_some());
    }

    #[test]
    fn the_reserve_is_not_a_file_left_over_for_a_runs_margin() {
        let dir = tempfile::tempdir().unwrap();
        let (_, p) = pool_with_reserve(dir.path());
        start_fresh(&p, 17);
        assert_eq!(p.keep_for_next_run(3), 3);
        start_fresh(&p, 2);
        assert_eq!(p.keep_for_next_run(3), 5);
        // The reserve and one file: what the preparation takes ahead, as without a reserve
        // (the test below): the margin stays.
        pooled(&p, 2);
        assert_eq!(p.keep_for_next_run(3), 5);
        // One more: left over, one given back.
        pooled(&p, 1);
        assert_eq!(p.keep_for_next_run(3), 4);
    }

    #[test]
    fn a_runs_margin_grows_by_what_the_pool_missed_and_shrinks_one_file_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path());
        // The log's growth before the first run is no shortfall.
        start_fresh(&p, 17);
        assert_eq!(p.keep_for_next_run(3), 3);
        // Two segments had to be made fresh since: two more kept next time.
        start_fresh(&p, 2);
        assert_eq!(p.keep_for_next_run(3), 5);
        // No shortfall but the pool nearly empty: the margin stays.
        pooled(&p, 1);
        assert_eq!(p.keep_for_next_run(3), 5);
        // Files left over: one given back per run.
        pooled(&p, 1);
        assert_eq!(p.keep_for_next_run(3), 4);
        assert_eq!(p.keep_for_next_run(4), 4);
        assert_eq!(
            p.keep_for_next_run(4),
            4,
            "the margin does not go below zero"
        );
        // At most the estimate again.
        start_fresh(&p, 50);
        assert_eq!(p.keep_for_next_run(3), 6);
    }
}
