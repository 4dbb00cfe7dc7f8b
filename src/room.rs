//! A full disk: the log could not make its next segment for lack of room, so the engine
//! refuses writes ([`Error::NoSpace`]) until [`Engine::resume`](crate::Engine::resume) finds
//! room. Reads go on, and so do `retire_before` and `compact`, which make room.
//!
//! Why a refusal and not a failure: a failed write or sync fails the engine for good
//! (`Error::Failed`), because the pages it covered may never reach the disk and no later sync
//! would say so. The room for a segment is asked for before anything of the window is written:
//! the zero fill of a file that is not yet part of the log, and its rename into the log. When
//! that fails for room (`ENOSPC`, `EDQUOT`), nothing the log holds changed, and the window is
//! refused whole: none of its writes is applied, its gets read the state before it.
//!
//! Why a spell that lasts until `resume`, not a refusal of the one window: a producer that
//! drops its tickets and relies on `flush` must learn that a write was refused. So each spell
//! of refusals is remembered by where it began, and a `flush` fails with `NoSpace` if a spell
//! began before its position and after the last `resume` that came before it (`flush` itself
//! fails while a spell lasts). `resume` is the caller's word that it has seen the refusals.

use crate::error::Error;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How many spells' starts a flush can still be told about; a flush older than that fails
/// (it cannot tell).
const SPELLS_KEPT: usize = 64;

/// The engine's state of room on the disk (see the module docs).
#[derive(Default)]
pub(crate) struct Room {
    /// Set while a spell lasts: the flusher's one load per window.
    refusing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A spell lasts (the newest of `starts`; its cause is what the roll met, an
    /// `Error::Io` whose OS error is `ENOSPC` or `EDQUOT`).
    lasting: bool,
    /// Spells since open.
    spells: u64,
    /// The ring position each of the last [`SPELLS_KEPT`] spells began at (where the first
    /// write of its first refused window starts), with its cause, oldest first: spell
    /// `spells - starts.len() + 1 + i` is `starts[i]`.
    starts: VecDeque<(u64, Arc<Error>)>,
    /// Spells begun since open, never taken back (unlike `spells`, see [`Room::end`]): names
    /// the lasting one for [`Room::lasting_spell`].
    begun: u64,
    /// The lasting spell began between two windows ([`Room::begin_before_window`]): its
    /// start is not placed yet at its first refused write ([`Room::place_start`]).
    unplaced: bool,
}

impl State {
    fn refusal(&self) -> Option<Error> {
        let (_, cause) = self.starts.back().filter(|_| self.lasting)?;
        Some(Error::NoSpace {
            cause: cause.clone(),
        })
    }
}

impl Room {
    /// True while writes are refused: one Relaxed load.
    #[inline]
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// The error a write gets while a spell lasts.
    pub fn refusal(&self) -> Option<Error> {
        self.state.lock().refusal()
    }

    /// Begins a spell (unless one lasts) at ring position `start`, where the first write
    /// of the window whose roll met `cause` starts. Called by the flusher before the window completes, so that a
    /// flush whose position is past `start` sees the spell when it completes. Returns the
    /// error the window's writes get.
    pub fn begin(&self, start: u64, cause: Arc<Error>) -> Error {
        self.begin_spell(start, cause, false)
    }

    /// Begins a spell (unless one lasts) between two windows (a compaction's copies took the
    /// reserve, `Flusher::roll_for_copies`), where the windows handed on end (`at`): its first
    /// refused write is not known yet. The windows the spell meets place its start
    /// ([`Room::place_start`]) before they complete, so that a flush covering none of the
    /// writes refused (gets, say) succeeds.
    pub fn begin_before_window(&self, at: u64, cause: Arc<Error>) {
        self.begin_spell(at, cause, true);
    }

    /// A window the lasting spell refuses the writes of, ending at `end`, whose first write
    /// starts at `first_write` (`None`: it has none): if the spell's start is not placed yet
    /// ([`Room::begin_before_window`]), it moves past the window, or to that write, where it
    /// stays.
    pub fn place_start(&self, first_write: Option<u64>, end: u64) {
        let mut s = self.state.lock();
        if !(s.lasting && s.unplaced) {
            return;
        }
        s.unplaced = first_write.is_none();
        let (start, _) = s.starts.back_mut().expect("a spell lasts");
        *start = (*start).max(first_write.unwrap_or(end));
    }

    fn begin_spell(&self, start: u64, cause: Arc<Error>, unplaced: bool) -> Error {
        let mut s = self.state.lock();
        if !s.lasting {
            s.begun += 1;
            s.unplaced = unplaced;
            s.lasting = true;
            s.spells += 1;
            if s.starts.len() == SPELLS_KEPT {
                s.starts.pop_front();
            }
            s.starts.push_back((start, cause));
            self.refusing.store(true, Ordering::Relaxed);
        }
        s.refusal().expect("a spell lasts")
    }

    /// The lasting spell's number (spells begun since open), if one lasts: for
    /// `Compaction::Auto`'s thread, which compacts once per spell.
    pub fn lasting_spell(&self) -> Option<u64> {
        if !self.refusing() {
            return None;
        }
        let s = self.state.lock();
        s.lasting.then_some(s.begun)
    }

    /// Ends the spell (`Engine::resume` found room).
    pub fn end(&self) {
        let mut s = self.state.lock();
        if s.lasting && s.unplaced {
            // Begun between windows, and no window came before `resume`: it refused no write
            // a flush could cover (a flush made while it lasted failed at once), so it is as
            // if it never began.
            s.starts.pop_back();
            s.spells -= 1;
        }
        s.lasting = false;
        s.unplaced = false;
        self.refusing.store(false, Ordering::Relaxed);
    }

    /// For a new `flush`: the refusal while a spell lasts, else the spells so far (what
    /// the flush is past).
    pub fn for_flush(&self) -> Result<u64, Error> {
        let s = self.state.lock();
        match s.refusal() {
            Some(e) => Err(e),
            None => Ok(s.spells),
        }
    }

    /// The outcome of a complete flush at `pos` made after `seen` spells: `NoSpace` if a
    /// later spell began before `pos` (it refused writes the flush covers).
    pub fn flush_outcome(&self, seen: u64, pos: u64) -> crate::error::Result<()> {
        let s = self.state.lock();
        if s.spells == seen {
            return Ok(());
        }
        // Spells begin at increasing positions: the first after `seen` is the one to look at.
        let oldest_kept = s.spells - s.starts.len() as u64 + 1;
        let began = (seen + 1)
            .checked_sub(oldest_kept)
            .and_then(|i| s.starts.get(i as usize));
        match began {
            Some((start, _)) if *start >= pos => Ok(()),
            // Before `pos` (that spell's cause), or forgotten (the oldest kept one's): the
            // flush cannot say its writes all went in.
            began => {
                let (_, cause) = began.or(s.starts.front()).expect("a spell began since");
                Err(Error::NoSpace {
                    cause: cause.clone(),
                })
            }
        }
    }
}

/// True for an error that says the disk (or the user's quota) has no room: `ENOSPC` or
/// `EDQUOT` from the operating system.
pub(crate) fn is_no_room(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Arc<Error> {
        Arc::new(Error::io(
            "preallocate segment",
            "x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ))
    }

    #[test]
    fn a_flush_fails_if_a_spell_began_before_it_and_after_its_creation() {
        let room = Room::default();
        let seen = room.for_flush().unwrap();
        assert!(room.flush_outcome(seen, 100).is_ok());
        // A spell that began past the flush's position refused none of its writes.
        let e = room.begin(100, full());
        assert!(matches!(e, Error::NoSpace { .. }));
        assert!(room.refusing());
        assert!(room.flush_outcome(seen, 100).is_ok());
        // One that began before it did.
        assert!(room.flush_outcome(seen, 101).is_err());
        // No flush while it lasts.
        assert!(room.for_flush().is_err());
        room.end();
        assert!(!room.refusing());
        // A flush made after `resume` is past that spell.
        let after = room.for_flush().unwrap();
        assert_eq!(after, seen + 1);
        assert!(room.flush_outcome(after, 1_000).is_ok());
        // A second `begin` in one spell does not count twice.
        room.begin(2_000, full());
        room.begin(2_500, full());
        assert!(room.flush_outcome(after, 2_000).is_ok());
        assert!(room.flush_outcome(after, 2_001).is_err());
    }

    #[test]
    fn a_spell_begun_between_windows_starts_at_its_first_refused_write() {
        let room = Room::default();
        let seen = room.for_flush().unwrap();
        room.begin_before_window(100, full());
        assert!(room.refusing());
        // A window of gets only, ending at 150: nothing refused before 150.
        room.place_start(None, 150);
        assert!(room.flush_outcome(seen, 150).is_ok());
        // The next window's first write starts at 170: placed there for good.
        room.place_start(Some(170), 300);
        assert!(room.flush_outcome(seen, 170).is_ok());
        assert!(room.flush_outcome(seen, 171).is_err());
        room.place_start(None, 400);
        assert!(room.flush_outcome(seen, 171).is_err());
        // A spell begun between windows and ended before any window refused nothing.
        room.end();
        let later = room.for_flush().unwrap();
        room.begin_before_window(500, full());
        room.end();
        assert!(room.flush_outcome(later, 10_000).is_ok());
        // A spell begun at a window's write is placed already.
        let after = room.for_flush().unwrap();
        room.begin(1_000, full());
        room.place_start(None, 2_000);
        assert!(room.flush_outcome(after, 1_001).is_err());
    }

    #[test]
    fn a_flush_older_than_the_spells_kept_fails() {
        let room = Room::default();
        let seen = room.for_flush().unwrap();
        for i in 0..=SPELLS_KEPT as u64 {
            room.begin(1_000 + i, full());
            room.end();
        }
        // Its first spell (at 1,000, past its position) is forgotten: it cannot tell.
        assert!(room.flush_outcome(seen, 10).is_err());
        // A recent flush still can.
        let late = room.for_flush().unwrap() - 1;
        assert!(room.flush_outcome(late, 1_000 + SPELLS_KEPT as u64).is_ok());
        assert!(room
            .flush_outcome(late, 1_001 + SPELLS_KEPT as u64)
            .is_err());
    }

    #[test]
    fn only_room_errors_are_no_room() {
        assert!(is_no_room(&full()));
        let quota = Error::io("x", "x", std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert!(is_no_room(&quota));
        let eio = Error::io("x", "x", std::io::Error::from_raw_os_error(libc::EIO));
        assert!(!is_no_room(&eio));
        assert!(!is_no_room(&Error::Busy));
    }
}
