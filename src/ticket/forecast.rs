//! When the sync that completes a waiting thread will likely end, so that the thread can
//! sleep through most of it and be awake (yielding) only near its end.
//!
//! Why: on two cores a thread that waits for a ~120 µs sync by yielding the CPU throughout
//! burns about a core (CPU per put at 1 writer × 1 outstanding was 2.5–3× okaywal's), while
//! one that parks until the completion unparks it pays a wake-up on the latency path (a few
//! µs with an idle core polling, ~25 µs when it has halted). A timed park until shortly
//! before the predicted end costs one wake-up that is *not* on the latency path, and the
//! yields after it cover only the forecast's error. The forecast is advice: the waiter stays
//! registered for the completion's unpark the whole time, and every wake-up, timed or not,
//! re-checks the watermark, so a sync that takes ten times the forecast only costs the
//! waiter a second sleep, never a lost wake-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Below this a timed park is not worth its wake-up: it yields instead.
pub(super) const MIN_PARK: Duration = Duration::from_micros(20);
/// Extra time a timed park leaves before the predicted end, beyond its learned lateness.
pub(super) const MARGIN: Duration = Duration::from_micros(5);
/// How long past the predicted end a waiter keeps yielding before it parks until the
/// completion unparks it. The forecast is a low quantile, so most syncs end in this span;
/// the rest pay a wake-up.
pub(super) const YIELD_PAST: Duration = Duration::from_micros(30);
/// How late a timed park is assumed to wake before one has been measured.
const LATE_INITIAL: Duration = Duration::from_micros(20);
/// A lateness sample above this is the thread descheduled, not the timer: capped.
const LATE_MAX: Duration = Duration::from_micros(200);

/// What the syncers tell the waiters: when the sync in flight began, which positions it
/// covers, and how long syncs and timed parks have been taking. All relaxed: a stale value
/// only makes a forecast worse, and the watermark alone decides completion.
pub(crate) struct SyncForecast {
    epoch: Instant,
    /// When the latest sync began, as nanoseconds since `epoch` plus one; 0: none running.
    started: AtomicU64,
    /// The ring position up to which the latest sync begun covers the requests.
    covers: AtomicU64,
    /// A low quantile of recent sync durations, in nanoseconds; 0 before the first sync.
    typical: AtomicU64,
    /// How late a timed park wakes after its deadline, in nanoseconds (a moving average).
    late: AtomicU64,
}

/// What a waiter should do next (from [`plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Park until the completion unparks it: nothing to forecast from.
    Park,
    /// Park until this time (ns since the epoch), unless unparked earlier.
    ParkUntil(u64),
    /// Stay awake, yielding, until this time (ns since the epoch); then park.
    Yield(u64),
}

/// A snapshot of a [`SyncForecast`], in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// Start of the sync in flight plus one; 0: none.
    pub started: u64,
    pub covers: u64,
    pub typical: u64,
    pub late: u64,
}

/// The forecast's arithmetic: what a waiter for position `pos` does at `now` (ns since the
/// epoch). The sync that completes it is the one in flight if that covers `pos`; else the
/// next, assumed to start when the one in flight should end, or now if none runs. It is
/// predicted to end `typical` after its start: the waiter parks until `late + MARGIN` before
/// that, or yields if that is under `MIN_PARK` away, until `YIELD_PAST` after the end.
pub(super) fn plan(seen: Seen, pos: u64, now: u64) -> Plan {
    if seen.typical == 0 {
        return Plan::Park;
    }
    let start = match seen.started {
        0 => now,
        s if seen.covers >= pos => s - 1,
        s => (s - 1).saturating_add(seen.typical),
    };
    // A sync that began long ago and is still running: predict from now.
    let end = start.saturating_add(seen.typical).max(now);
    let wake = end.saturating_sub(seen.late + nanos(MARGIN));
    if wake >= now.saturating_add(nanos(MIN_PARK)) {
        Plan::ParkUntil(wake)
    } else {
        Plan::Yield(end.saturating_add(nanos(YIELD_PAST)))
    }
}

/// One step of the low-quantile estimate: down by a quarter of the gap to a shorter sample,
/// up by a 32nd of the gap to a longer one. It settles where the downward pulls balance the
/// upward ones, around the fastest quarter of the samples; a slower disk moves it up within
/// a few hundred syncs, a faster one down within a few.
pub(super) fn next_typical(est: u64, sample: u64) -> u64 {
    if est == 0 {
        sample.max(1)
    } else if sample < est {
        est - (est - sample) / 4
    } else {
        est + (sample - est) / 32
    }
}

/// One step of the lateness average: an eighth of the way to the (capped) sample.
pub(super) fn next_late(est: u64, sample: u64) -> u64 {
    let sample = sample.min(nanos(LATE_MAX));
    if sample >= est {
        est + (sample - est) / 8
    } else {
        est - (est - sample) / 8
    }
}

pub(super) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl SyncForecast {
    pub(crate) fn new() -> SyncForecast {
        SyncForecast {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            covers: AtomicU64::new(0),
            typical: AtomicU64::new(0),
            late: AtomicU64::new(nanos(LATE_INITIAL)),
        }
    }

    /// `at` as nanoseconds since the epoch.
    pub(super) fn ns(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// Nanoseconds since the epoch as an `Instant`.
    pub(super) fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// A sync covering the requests up to ring position `covers` began at `at`.
    pub(crate) fn began(&self, at: Instant, covers: u64) {
        self.covers.fetch_max(covers, Ordering::Relaxed);
        self.started.store(self.ns(at) + 1, Ordering::Relaxed);
    }

    /// A sync that took `took` ended; `idle`: no other sync runs.
    pub(crate) fn ended(&self, took: Duration, idle: bool) {
        if idle {
            self.started.store(0, Ordering::Relaxed);
        }
        // One syncer at a time updates it in practice; a lost update is one lost sample.
        let est = self.typical.load(Ordering::Relaxed);
        let next = next_typical(est, nanos(took));
        self.typical.store(next, Ordering::Relaxed);
    }

    /// A timed park meant to end at `due` (ns) woke at `woke` without being unparked.
    pub(super) fn woke_late(&self, due: u64, woke: u64) {
        let est = self.late.load(Ordering::Relaxed);
        let next = next_late(est, woke.saturating_sub(due));
        self.late.store(next, Ordering::Relaxed);
    }

    pub(super) fn seen(&self) -> Seen {
        Seen {
            started: self.started.load(Ordering::Relaxed),
            covers: self.covers.load(Ordering::Relaxed),
            typical: self.typical.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
        }
    }
}

/// Parks the calling thread for `d` (or until unparked), with the thread's timer slack set
/// to 1 ns meanwhile (Linux): by default a sleeping thread's timer may fire 50 µs late,
/// which on a ~120 µs sync would leave most of it to yielding. The caller's slack is put
/// back after.
pub(super) fn park_precisely(d: Duration) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_GET_TIMERSLACK and PR_SET_TIMERSLACK take no pointers; they read and set
        // an attribute of the calling thread only.
        let old = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
        if old > 1 {
            // SAFETY: as above.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        }
        std::thread::park_timeout(d);
        if old > 1 {
            // SAFETY: as above; `old` is the slack the kernel reported, a positive value.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, old as libc::c_ulong, 0, 0, 0) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    std::thread::park_timeout(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn seen(started: u64, covers: u64, typical: u64, late: u64) -> Seen {
        Seen {
            started,
            covers,
            typical,
            late,
        }
    }

    #[test]
    fn no_forecast_before_the_first_sync() {
        assert_eq!(plan(seen(0, 0, 0, 20 * US), 10, 1_000 * US), Plan::Park);
    }

    #[test]
    fn parks_until_shortly_before_the_covering_sync_should_end() {
        // A sync that began at 1000 µs covers position 10; syncs take 120 µs; parks wake
        // 20 µs late: wake at 1000 + 120 - 20 - 5.
        let p = plan(seen(1_000 * US + 1, 10, 120 * US, 20 * US), 10, 1_010 * US);
        assert_eq!(p, Plan::ParkUntil(1_095 * US));
    }

    #[test]
    fn a_request_the_sync_in_flight_misses_waits_for_the_next_one() {
        // Position 11 is past what the sync in flight covers: the next sync starts when this
        // one should end (1120 µs) and ends 120 µs later.
        let p = plan(seen(1_000 * US + 1, 10, 120 * US, 20 * US), 11, 1_010 * US);
        assert_eq!(p, Plan::ParkUntil(1_215 * US));
    }

    #[test]
    fn without_a_sync_in_flight_the_next_one_starts_now() {
        let p = plan(seen(0, 10, 120 * US, 20 * US), 11, 2_000 * US);
        assert_eq!(p, Plan::ParkUntil(2_095 * US));
    }

    #[test]
    fn near_the_end_it_yields_until_past_it() {
        // Woken at 1096 µs: 24 µs before the predicted end, under MIN_PARK + late + margin.
        let p = plan(seen(1_000 * US + 1, 10, 120 * US, 20 * US), 10, 1_096 * US);
        assert_eq!(p, Plan::Yield(1_120 * US + nanos(YIELD_PAST)));
    }

    #[test]
    fn a_sync_ten_times_longer_than_predicted_is_not_waited_for_by_yielding_forever() {
        // Predicted to end at 1120 µs; at 2200 µs it still runs: the end is now, and the
        // yield window ends YIELD_PAST from now (after which the waiter parks untimed).
        let p = plan(seen(1_000 * US + 1, 10, 120 * US, 20 * US), 10, 2_200 * US);
        assert_eq!(p, Plan::Yield(2_200 * US + nanos(YIELD_PAST)));
    }

    #[test]
    fn the_typical_sync_tracks_a_low_quantile() {
        // 1 sync in 4 takes 100 µs, the rest 200 µs: the estimate settles between them,
        // nearer the fast ones than the mean (175 µs) would.
        let mut est = 0;
        for i in 0..4_000 {
            let sample = if i % 4 == 0 { 100 * US } else { 200 * US };
            est = next_typical(est, sample);
        }
        assert!((100 * US..=150 * US).contains(&est), "{est}");
        // A slower disk moves it up.
        for _ in 0..400 {
            est = next_typical(est, 400 * US);
        }
        assert!(est > 350 * US, "{est}");
        // A faster one moves it down quickly.
        for _ in 0..30 {
            est = next_typical(est, 50 * US);
        }
        assert!(est < 60 * US, "{est}");
    }

    #[test]
    fn the_lateness_is_a_capped_average() {
        let mut est = nanos(LATE_INITIAL);
        for _ in 0..200 {
            est = next_late(est, 60 * US);
        }
        assert!((59 * US..=60 * US).contains(&est), "{est}");
        // A descheduled thread's huge lateness is capped.
        est = next_late(est, 10_000_000 * US);
        assert!(est <= 60 * US + (nanos(LATE_MAX) - 60 * US) / 8, "{est}");
        for _ in 0..200 {
            est = next_late(est, 2 * US);
        }
        assert!(est < 3 * US, "{est}");
    }
}
