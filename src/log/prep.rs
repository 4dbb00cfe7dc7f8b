//! The next segment file, prepared ahead of need: zero-filled (or taken from the pool) and
//! mapped by a background thread, `mergelog-prep`, so that a roll finds it ready. Also what
//! open finds of such files (a prepared one an earlier run left, and the pool).

use super::Log;
use crate::error::Result;
use crate::log::dir::{self, prep_path};
use crate::log::format;
use crate::log::io::SharedIo;
use crate::log::pool::Pool;
use crate::log::segment::Mapped;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The next segment is prepared once the active one is `1 / PREP_AT_DIVISOR` full. At the
/// fastest this machine fills a 64 MiB segment (about 130 MB/s of log at 4 × 256) that
/// leaves 0.4 s for a zero fill that takes 0.1–0.3 s.
const PREP_AT_DIVISOR: u64 = 8;

/// The next segment file: not started yet (see [`PREP_AT_DIVISOR`]), ready (left by an earlier
/// run, made by `Engine::resume`, or kept after a rename that failed for room; with whether it
/// is recycled), being zero-filled (or taken from the pool) and mapped in the background, or
/// (if no thread could be made) to be made at the roll.
pub(super) enum Prep {
    Deferred,
    None,
    Ready(PathBuf, bool),
    Pending(JoinHandle<Result<Prepared>>),
}

/// A file ready to become the next segment: its path, its mapping, and whether it is a
/// recycled one (old bytes inside, not zeros).
type Prepared = (PathBuf, Mapped, bool);

/// Finds the prepared segment files of an earlier run: keeps up to `keep` (0 or 1) of the
/// right size and removes the rest. Returns the kept one and the highest prep number seen.
pub(crate) fn adopt_prepared(
    io: &SharedIo,
    dir: &Path,
    segment_bytes: u64,
    keep: usize,
) -> Result<(Option<PathBuf>, u64)> {
    let (kept, highest) = dir::adopt_spares(
        &**io,
        dir,
        format::parse_prep_file_name,
        segment_bytes,
        keep,
    )?;
    Ok((kept.into_iter().next(), highest))
}

/// Files for the next segments that open found: a prepared one an earlier run left (with the
/// highest prep number seen), and the pool of retired segments kept for reuse.
pub(crate) struct Spares {
    pub prepared: Option<PathBuf>,
    pub prep_counter: u64,
    pub pool: Arc<Pool>,
    /// The room kept for the `ids` file's replacement, which the preparing thread makes once
    /// it is wanted (`crate::ids::IdsRoom`); `None` until the engine sets it.
    pub ids_room: Option<Arc<crate::ids::IdsRoom>>,
}

/// The preparation of the next segment, as the writing end of the log runs it.
impl Log {
    /// Starts preparing the next segment once the active one is 1 / [`PREP_AT_DIVISOR`] full: early
    /// enough that it is ready at the roll even at full speed, late enough that a short or
    /// slow run never pays for a segment it does not reach (the zero fill is a burst of
    /// `segment_bytes` to the disk, and every sync issued meanwhile waits behind it).
    pub(super) fn prepare_when_due(&mut self) {
        if matches!(self.prep, Prep::Deferred)
            && self.write_off >= self.active.size / PREP_AT_DIVISOR
        {
            self.prepare_next();
        }
    }

    fn prepare_next(&mut self) {
        let recycled = self.pool.take();
        self.prep_counter += 1;
        let log_dir = self.dir.clone();
        let path = prep_path(&log_dir, self.prep_counter);
        let size = self.segment_bytes;
        let io = self.io.clone();
        let pool = self.pool.clone();
        let ids_room = self.ids_room.clone();
        let spawned = std::thread::Builder::new()
            .name("mergelog-prep".into())
            .spawn(move || {
                let prepared = match recycled {
                    // A retired segment: no zeros to write, only the mapping to make (which
                    // also reads its pages in, so that writing a frame never waits for a read).
                    Some((path, file)) => (path.clone(), Mapped::of_file(file, &path, true)?, true),
                    None => {
                        pool.zero_fill(|| dir::create_prepared(&*io, &log_dir, &path, size))?;
                        let mapped = Mapped::open(&path, true)?;
                        (path, mapped, false)
                    }
                };
                // Then, with the segment ready, the room for the `ids` file's replacement,
                // if ids are logged and it is not kept yet.
                if let Some(room) = ids_room {
                    room.keep_if_wanted();
                }
                Ok(prepared)
            });
        // If no thread can be made, the roll creates the file itself.
        self.prep = spawned.map_or(Prep::None, Prep::Pending);
    }

    /// Has the next segment's file made now, as the roll would make it (`Engine::resume`):
    /// `Error::NoSpace` if the disk still has no room for it. The roll then takes it (its
    /// mapping made again).
    pub(crate) fn prepare_now(&mut self) -> Result<()> {
        let (path, _, recycled) = self.take_prepared().map_err(super::no_room)?;
        self.prep = Prep::Ready(path, recycled);
        Ok(())
    }

    /// Makes the pool's reserve file if it holds none (`Config::reserve_segment`), once
    /// `Engine::resume` found room for the next segment. Best effort: `Ok` whether or not it
    /// could be made (the next retirement makes it otherwise), except for a failed directory
    /// sync, which may have reported another change of the directory's.
    pub(crate) fn make_reserve(&self) -> Result<()> {
        match self.pool.make_reserve(&self.io) {
            Err(e) if dir::is_failed_dir_sync(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// A compaction's roll when the disk has no room for the next segment (the roll failed
    /// with `Error::NoSpace`): the pool's reserve becomes the next segment. `Ok(false)` if
    /// there is none to take, or if the roll had failed at the rename of a prepared file
    /// (which a reserve's rename would meet too). An error as [`Log::roll_for`]'s.
    pub(crate) fn roll_into_reserve(&mut self) -> Result<bool> {
        if matches!(self.prep, Prep::Ready(..)) {
            return Ok(false);
        }
        let Some((path, _lock)) = self.pool.take_reserve() else {
            return Ok(false);
        };
        // Activated as a prepared file is (its mapping made at the roll), recycled: a
        // reserve adopted from the pool holds a retired segment's bytes.
        self.prep = Prep::Ready(path, true);
        self.roll().map(|()| true)
    }

    /// The file the roll makes the next segment, with its mapping if it was made, and whether
    /// it is recycled: the one prepared ahead (waiting for its thread), else one made now.
    /// Leaves [`Prep::None`]; the roll defers the next preparation once it has activated this.
    pub(super) fn take_prepared(&mut self) -> Result<(PathBuf, Option<Mapped>, bool)> {
        let ready = match std::mem::replace(&mut self.prep, Prep::None) {
            // An earlier run's, kept only after a clean end (`log::open`), so all zeros,
            // is activated as a recycled one all the same (an end marker after the header
            // costs nothing, and no spare's bytes are trusted to be zeros).
            Prep::Ready(path, recycled) => Some(Ok((path, None, recycled))),
            Prep::Pending(h) => h.join().ok().map(|r| r.map(|(p, m, r)| (p, Some(m), r))),
            Prep::None => None,
            Prep::Deferred => {
                // Never started (a frame bigger than the rest of the segment): make it now.
                self.prep_counter += 1;
                None
            }
        };
        match ready {
            Some(Ok(prepared)) => Ok(prepared),
            // A failed directory sync stays fatal: it may have been the report of another
            // change of the directory's (`dir::is_failed_dir_sync`).
            Some(Err(e)) if dir::is_failed_dir_sync(&e) => Err(e),
            // The preparation failed otherwise (a full disk at that moment, say), perhaps
            // long ago. Nothing was written to it that anyone relies on, so it is made again,
            // now: only if that fails too does the roll, and with it the engine, fail.
            // A file the pool has gained since (a retirement, a compaction) needs no room on
            // the disk: it goes first, as in `prepare_next`; if it cannot be mapped it stays
            // in no list (the next open adopts or removes it), and a new file is made.
            Some(Err(_)) | None => {
                if let Some((path, file)) = self.pool.take() {
                    if let Ok(mapped) = Mapped::of_file(file, &path, true) {
                        return Ok((path, Some(mapped), true));
                    }
                }
                let path = prep_path(&self.dir, self.prep_counter);
                let (io, dir, size) = (&*self.io, &self.dir, self.segment_bytes);
                self.pool
                    .zero_fill(|| dir::replace_prepared(io, dir, &path, size))?;
                Ok((path, None, false))
            }
        }
    }
}
