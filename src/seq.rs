//! Batch sequence numbers, and which batch made each request durable.
//!
//! Every frame the log holds is one batch with a sequence number, consecutive from 1 over the
//! life of the directory (retirement removes a prefix, never renumbers). A request's ticket is a
//! ring position, which restarts at every open; [`Seq`] is the name that lasts: `Ticket::wait`
//! gives the batch that made the request durable, `Engine::durable_seq` the last durable one,
//! and `replay`, followers and `retire_before` count in the same numbers. A caller that saves
//! "my state up to batch n" can resume from `follow(n + 1)` after any restart.
//!
//! [`SeqMap`] is how a ticket finds its batch: the completion records, for every window it
//! completes, where the window ended in the ring and the last batch written up to it. Windows
//! are contiguous in the ring and batches are written in order, so the batch of a request is
//! that of the first window ending at or after it.

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// A batch's sequence number: its place in the log, from 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// The sequence number `n`.
    pub const fn new(n: u64) -> Seq {
        Seq(n)
    }

    /// The number itself.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The batch after this one.
    pub const fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl From<u64> for Seq {
    fn from(n: u64) -> Seq {
        Seq(n)
    }
}

impl From<Seq> for u64 {
    fn from(s: Seq) -> u64 {
        s.0
    }
}

impl PartialEq<u64> for Seq {
    fn eq(&self, other: &u64) -> bool {
        self.0 == *other
    }
}

impl PartialOrd<u64> for Seq {
    fn partial_cmp(&self, other: &u64) -> Option<std::cmp::Ordering> {
        Some(self.0.cmp(other))
    }
}

/// `seq + n`: the batch `n` after `seq`.
impl std::ops::Add<u64> for Seq {
    type Output = Seq;
    fn add(self, n: u64) -> Seq {
        Seq(self.0 + n)
    }
}

impl std::ops::AddAssign<u64> for Seq {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

/// `seq - n`: the batch `n` before `seq`.
impl std::ops::Sub<u64> for Seq {
    type Output = Seq;
    fn sub(self, n: u64) -> Seq {
        Seq(self.0 - n)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Windows remembered: a ticket looked at within this many windows of its completion finds its
/// batch (16 bytes each: 1 MiB). At the fastest window rate measured here (about 20,000 a
/// second) that is three seconds; a request waited on or polled as it completes, as every
/// caller that wants the number does, finds it at once.
pub(crate) const SEQ_HISTORY: usize = 1 << 16;

/// The last `SEQ_HISTORY` completed windows: (ring position where the window ended, last
/// batch written up to it). One writer at a time (the completion, which runs once at a time
/// and in order), any number of readers without a lock: a reader checks after its reads that
/// none of the entries it read can have been overwritten meanwhile (a sequence lock over a
/// ring of entries).
pub(crate) struct SeqMap {
    ends: Box<[AtomicU64]>,
    seqs: Box<[AtomicU64]>,
    /// Entries ever recorded; entry `i` is at `i % SEQ_HISTORY`.
    count: AtomicU64,
    /// The last batch recorded (the durable batch before the first record); only the writer
    /// reads it.
    through: AtomicU64,
    /// Where the ring started, and the last durable batch then: a position at or before
    /// `start` (a flush with nothing submitted since open) is durable in `start_seq`.
    start: u64,
    start_seq: u64,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Seq(u64),
    /// The window was recorded too long ago: its entry has been overwritten.
    Forgotten,
    /// No window ending at or after the position has been recorded yet.
    NotYet,
}

impl SeqMap {
    /// A map for an engine whose ring starts at position `start` with batch `durable` the
    /// last durable one (0 for an empty log).
    pub fn new(start: u64, durable: u64) -> SeqMap {
        SeqMap::with_capacity(start, durable, SEQ_HISTORY)
    }

    /// [`SeqMap::new`] for tests, but under Miri (`tools/miri.sh`) with 64 entries instead
    /// of `SEQ_HISTORY`'s 65,536, whose two arrays took it most of a minute to fill (in every
    /// test that makes a `Completion`); the tests record far fewer windows.
    #[cfg(test)]
    pub(crate) fn for_tests(start: u64, durable: u64) -> SeqMap {
        SeqMap::with_capacity(start, durable, if cfg!(miri) { 64 } else { SEQ_HISTORY })
    }

    fn with_capacity(start: u64, durable: u64, cap: usize) -> SeqMap {
        assert!(cap.is_power_of_two() && cap >= 2);
        SeqMap {
            ends: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            seqs: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            through: AtomicU64::new(durable),
            start,
            start_seq: durable,
        }
    }

    fn slot(&self, i: u64) -> usize {
        (i as usize) & (self.ends.len() - 1)
    }

    /// Records a completed window ending at ring position `end`, with the batch its frame
    /// was written as (`None`: the window wrote no frame: only gets, or a flush). Called by
    /// the completion, in ring order, before the watermark passes `end`: whoever sees the
    /// request complete finds its entry (the watermark's store releases these).
    pub fn record(&self, end: u64, frame: Option<u64>) {
        let through = match frame {
            Some(seq) => {
                self.through.store(seq, Ordering::Relaxed);
                seq
            }
            None => self.through.load(Ordering::Relaxed),
        };
        let i = self.count.load(Ordering::Relaxed);
        // Orders the store of `count = i` (the previous record's) before the entry stores
        // below: a reader that reads an entry this record overwrites then sees a count of at
        // least `i` after its Acquire fence, and knows to read again.
        fence(Ordering::Release);
        let s = self.slot(i);
        self.ends[s].store(end, Ordering::Relaxed);
        self.seqs[s].store(through, Ordering::Relaxed);
        self.count.store(i + 1, Ordering::Release);
    }

    /// The batch that made the request ending at ring position `pos` durable: that of the
    /// first recorded window ending at or after `pos`.
    pub fn find(&self, pos: u64) -> Found {
        let cap = self.ends.len() as u64;
        if pos <= self.start {
            return Found::Seq(self.start_seq);
        }
        loop {
            let n = self.count.load(Ordering::Acquire);
            // Entries `n - cap + 1..n` cannot be overwritten before the writer records entry
            // `n`; the check below catches that it did.
            let lo = n.saturating_sub(cap - 1);
            if n == 0 || self.ends[self.slot(n - 1)].load(Ordering::Relaxed) < pos {
                return Found::NotYet;
            }
            // The first entry in lo..n whose end is at or after `pos`. A ticket is nearly
            // always looked at as it completes, so gallop back from the newest entry (a few
            // hot cache lines) before the binary search narrows it down.
            let (mut a, mut b) = (lo, n - 1);
            let mut step = 1;
            while b > lo {
                let probe = b.saturating_sub(step).max(lo);
                if self.ends[self.slot(probe)].load(Ordering::Relaxed) >= pos {
                    b = probe;
                    step *= 2;
                } else {
                    a = probe + 1;
                    break;
                }
            }
            while a < b {
                let mid = a + (b - a) / 2;
                if self.ends[self.slot(mid)].load(Ordering::Relaxed) >= pos {
                    b = mid;
                } else {
                    a = mid + 1;
                }
            }
            let seq = self.seqs[self.slot(a)].load(Ordering::Relaxed);
            // Pairs with the writer's Release store of `count` after its entry stores: if an
            // entry read above was being overwritten, this load sees the count that did it.
            fence(Ordering::Acquire);
            let now = self.count.load(Ordering::Relaxed);
            if now >= lo + cap {
                continue; // the writer lapped what was read: read again
            }
            // Entry `lo` is the first of the window only if nothing before it was ever
            // dropped; otherwise the request may have been in a dropped earlier window.
            if a == lo && lo > 0 {
                return Found::Forgotten;
            }
            return Found::Seq(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_the_batch_of_the_window_it_was_in() {
        let m = SeqMap::for_tests(0, 7);
        assert_eq!(m.find(0), Found::Seq(7), "nothing submitted since open");
        assert_eq!(m.find(1), Found::NotYet);
        m.record(100, Some(8)); // requests ending at 1..=100: batch 8
        m.record(130, None); // a window of gets: nothing written, still 8
        m.record(200, Some(9));
        for (pos, want) in [(1, 8), (100, 8), (101, 8), (130, 8), (131, 9), (200, 9)] {
            assert_eq!(m.find(pos), Found::Seq(want), "position {pos}");
        }
        assert_eq!(m.find(201), Found::NotYet);
    }

    #[test]
    fn a_frameless_first_window_reports_the_durable_batch_before_it() {
        let m = SeqMap::for_tests(0, 41);
        m.record(10, None);
        assert_eq!(m.find(5), Found::Seq(41));
    }

    #[test]
    fn old_windows_are_forgotten_never_misreported() {
        let m = SeqMap::with_capacity(0, 0, 8);
        for w in 1..=20u64 {
            m.record(w * 10, Some(w));
        }
        // The newest cap - 1 entries are read (windows 14..=20); the oldest of them is not
        // trusted to be the first window of a position (its predecessor is gone).
        for w in 15..=20u64 {
            assert_eq!(m.find(w * 10), Found::Seq(w), "window {w}");
            assert_eq!(m.find(w * 10 - 9), Found::Seq(w), "window {w}");
        }
        for pos in [1, 55, 130, 131, 140] {
            assert_eq!(m.find(pos), Found::Forgotten, "position {pos}");
        }
    }

    /// One writer recording while readers look up: a reader never reports a batch other
    /// than the one recorded for its position (the writer records window w as ending at
    /// 10w with batch w), however far the writer laps it.
    #[test]
    fn readers_racing_the_writer_never_see_a_wrong_batch() {
        let m = SeqMap::with_capacity(0, 0, 16);
        // Under Miri (`tools/miri.sh`) 2,000 windows still lap the 16 entries 125 times; the
        // native 200,000 took it tens of minutes.
        const WINDOWS: u64 = if cfg!(miri) { 2_000 } else { 200_000 };
        std::thread::scope(|s| {
            s.spawn(|| {
                for w in 1..=WINDOWS {
                    m.record(w * 10, Some(w));
                }
            });
            for r in 0..2u64 {
                let m = &m;
                s.spawn(move || {
                    let mut seen = 0u64;
                    let mut pos = 1 + r * 3;
                    while pos <= WINDOWS * 10 {
                        match m.find(pos) {
                            Found::Seq(seq) => {
                                assert_eq!(seq, pos.div_ceil(10), "position {pos}");
                                seen += 1;
                                pos += 7;
                            }
                            Found::Forgotten => pos += 997,
                            Found::NotYet => std::thread::yield_now(),
                        }
                    }
                    assert!(seen > 0, "no lookup found anything");
                });
            }
        });
    }
}
