//! When the flusher cuts a window: a pure function ([`decide`]) over what the flusher observed
//! on one turn of its window loop ([`Observed`]) and the configured limits and policy
//! ([`Policy`]). The flusher (`Flusher::window` in `flusher.rs`) reads records, fills in an
//! [`Observed`], and performs the [`Decision`]: it cuts, parks until the next publish, or naps
//! (the [`SyncNap`](super::handoff::SyncNap) protocol for a nap until the sync in flight
//! completes is its part, not this module's). ARCHITECTURE.md ("Window") explains the policy
//! and the measurements behind it.
//!
//! Not built under `--cfg loom`: the limits come from `Config`, which is not either, and
//! there is no hand-off here to model.

use std::time::{Duration, Instant};

use crate::config::{Config, Durability, WindowPolicy};

/// An adaptive window expecting at least this many requests, cut while nothing is syncing,
/// waits only for half of them. Under a closed loop (each producer resubmits only when its
/// requests complete) the requests in flight otherwise travel as one convoy: while it syncs
/// its producers have nothing to submit, and while they resubmit (about 200 µs for 1,024 on
/// two cores) the disk has nothing to sync. Cut at half, the first half syncs while the
/// second arrives, and the halves then take turns, each syncing while the other's producers
/// resubmit (`Stats::sync_time`: the disk's busy share at 4 x 256 went from about 48 % to
/// about 66 % in traced runs; throughput 1.07x mean, 1.02-1.10x median of 32 alternated
/// pairs, together with the index update moved off the syncer, `Index::defer`).
pub(crate) const SPLIT_FROM: usize = 2 * MERGE_BELOW;

/// An adaptive window with fewer requests than this, after a window that had fewer too, is not
/// cut while a sync is in flight: it waits for that sync to complete, then for the producers
/// it completes to resubmit, and goes out with them as one batch. Cut at once, it would only
/// wait behind the sync anyway (its CPU work, a few microseconds, is not worth overlapping),
/// and the two halves of the producers would take turns with a sync each: with 16 writers of
/// one request each, batches of 8 alternated, and merged they are about 16 (`mergelog bench
/// --writers 16 --depth 1`: 1.04-1.12x, medians of 8-12 alternated pairs). Under a larger load
/// the window is cut and encoded during the sync, so that the next sync can start as soon as
/// this one ends (the window does not look at arrivals while it naps, so it judges by the
/// previous window's size).
///
/// The same with several syncers (`Config::syncers`): a small window could start its own sync
/// beside the one in flight, but on this disk two syncs at once each take longer, and the
/// windows get smaller: cut as soon as a syncer was free, and split in halves from 2 requests,
/// 16 x 1 went to 0.7x (four alternated triplets, docs/decisions.md, "Several syncs in
/// flight"). So only a large window starts a sync while another runs.
pub(crate) const MERGE_BELOW: usize = 128;

/// The configuration a window is cut by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// `Config::batch_bytes_max`: ring bytes of the window's requests.
    pub bytes_max: u64,
    /// `Config::batch_ops_max`: entries (operations) of the window.
    pub ops_max: usize,
    /// `Config::window_age_max`: since the window's first look at the ring.
    pub age_max: Duration,
    pub window: WindowPolicy,
    pub durability: Durability,
}

impl Policy {
    pub(crate) fn of(cfg: &Config) -> Policy {
        Policy {
            bytes_max: cfg.batch_bytes_max as u64,
            ops_max: cfg.batch_ops_max,
            age_max: cfg.window_age_max,
            window: cfg.window,
            durability: cfg.durability,
        }
    }

    /// Whether a record of `rec_bytes` ring bytes may join a window that holds `requests`
    /// requests, `bytes` ring bytes and `entries` entries. A window's first record always
    /// does (the limits cut a window, they do not refuse a request). One that does not fit
    /// stays in the ring for the next window and cuts this one ([`Observed::refused`]).
    #[inline]
    pub(crate) fn fits(&self, requests: usize, bytes: u64, entries: usize, rec_bytes: u64) -> bool {
        requests == 0 || (bytes + rec_bytes <= self.bytes_max && entries < self.ops_max)
    }
}

/// What the flusher saw on one turn of its window loop: plain values, read after the turn's
/// read of the ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observed {
    /// Requests (ring records) the window holds.
    pub requests: usize,
    /// Ring bytes of those requests.
    pub bytes: u64,
    /// Entries (operations) of those requests: a `WriteBatch` gives several.
    pub entries: usize,
    /// This turn's read stopped at a published record that does not fit ([`Policy::fits`]).
    pub refused: bool,
    /// A `flush()` asked for a cut past where this turn's read began.
    pub flush: bool,
    /// The ring is closed (`close()`).
    pub closed: bool,
    /// When this turn looked (after its read).
    pub now: Instant,
    /// When the window first looked at the ring.
    pub first_seen: Instant,
    /// When a turn last read a record (`now` if this one did).
    pub last_arrival: Instant,
    /// The log has room for the window: no job is queued behind the one syncing.
    pub log_ready: bool,
    /// A sync is in flight: the durable watermark is behind the last window handed on.
    pub syncing: bool,
    /// The engine has failed (the watermark never moves again).
    pub failed: bool,
    /// Requests in the previous window (at least 1): how many producers are expected to
    /// resubmit.
    pub prev_requests: usize,
    /// Requests this window held when it last napped for a sync in flight
    /// ([`Decision::NapForSync`]; 0 if it did not): producers that were already here when
    /// that sync completed, expected in this window besides those of the previous one.
    pub held_over_sync: usize,
}

/// What the flusher does after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Cut the window now.
    Cut,
    /// Park until the next record is published or `until`, then look again.
    Wait { until: Instant },
    /// The log has no room for the window: nap until the syncer takes the queued job (it
    /// unparks the flusher) or `until`; publishes do not wake it, it reads what arrived in
    /// one go afterwards.
    NapForRoom { until: Instant },
    /// Nap until the sync in flight completes (the completion pokes the flusher, see
    /// [`SyncNap`](super::handoff::SyncNap)) or `until`, then wait for the producers it
    /// completed as well (see [`MERGE_BELOW`]). The flusher records the window's requests as
    /// [`Observed::held_over_sync`], and looks again at once if the sync completed before it
    /// could announce the nap.
    NapForSync { until: Instant },
}

/// Whether to cut the window the flusher observed, and if not, how long to wait for what.
#[inline]
pub(crate) fn decide(o: &Observed, p: &Policy) -> Decision {
    // A record refused for not fitting is published: waiting would return at once, and the
    // window would spin until its deadline.
    let full = o.refused || o.bytes >= p.bytes_max || o.entries >= p.ops_max;
    if full || o.flush || o.closed {
        return Decision::Cut;
    }
    let age = o.now.saturating_duration_since(o.first_seen);
    if age >= p.age_max {
        return Decision::Cut;
    }
    match p.window {
        WindowPolicy::Immediate => Decision::Cut,
        WindowPolicy::Linger(d) => {
            if age >= d {
                Decision::Cut
            } else {
                Decision::Wait {
                    until: o.first_seen + d,
                }
            }
        }
        WindowPolicy::Adaptive { quiet } => {
            // Waiting longer buys nothing once the log has room for this window (no job is
            // queued behind the one syncing) and either the producers expected back are back
            // or the ring has gone quiet.
            // (Not once the engine failed: the watermark never moves again.)
            let merge = o.log_ready
                && o.requests.max(o.prev_requests) < MERGE_BELOW
                && o.syncing
                && !o.failed;
            if merge {
                return Decision::NapForSync {
                    until: o.first_seen + p.age_max,
                };
            }
            if !o.log_ready {
                // Nothing is cut before the syncer takes the queued job.
                return Decision::NapForRoom {
                    until: o.first_seen + p.age_max,
                };
            }
            // The producers of the last window are expected back, plus those that were
            // already here when it completed.
            let mut expected = o.prev_requests + o.held_over_sync;
            // With the disk idle, a large window goes out at half that: see `SPLIT_FROM`.
            if expected >= SPLIT_FROM && p.durability == Durability::Sync && !o.syncing {
                expected = expected.div_ceil(2);
            }
            if o.requests >= expected || o.now.saturating_duration_since(o.last_arrival) >= quiet {
                Decision::Cut
            } else {
                Decision::Wait {
                    until: o.last_arrival + quiet,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);
    const QUIET: Duration = Duration::from_micros(50);
    const AGE_MAX: Duration = Duration::from_millis(1);
    const LINGER: Duration = Duration::from_micros(100);

    fn adaptive() -> Policy {
        Policy {
            bytes_max: 1000,
            ops_max: 100,
            age_max: AGE_MAX,
            window: WindowPolicy::Adaptive { quiet: QUIET },
            durability: Durability::Sync,
        }
    }

    fn with(window: WindowPolicy) -> Policy {
        Policy {
            window,
            ..adaptive()
        }
    }

    fn no_sync() -> Policy {
        Policy {
            durability: Durability::NoSync,
            ..adaptive()
        }
    }

    /// A window 10 µs old that read 3 requests just now, after a window of 4; the log has
    /// room and nothing syncs. Adaptive waits for the fourth producer, or quiet.
    fn seen(t0: Instant) -> Observed {
        Observed {
            requests: 3,
            bytes: 300,
            entries: 3,
            refused: false,
            flush: false,
            closed: false,
            now: t0 + 10 * US,
            first_seen: t0,
            last_arrival: t0 + 10 * US,
            log_ready: true,
            syncing: false,
            failed: false,
            prev_requests: 4,
            held_over_sync: 0,
        }
    }

    /// (what the row is, the policy, what was observed, the decision expected). Every
    /// `until` is spelled out from `t0`.
    type Row = (&'static str, Policy, Observed, Decision);

    fn rows(t0: Instant) -> Vec<Row> {
        use Decision::*;
        let base = seen(t0);
        // The base window's adaptive wait: until the last arrival plus `quiet`.
        let quiet_wait = Wait {
            until: t0 + 10 * US + QUIET,
        };
        let nap_until = t0 + AGE_MAX;
        vec![
            (
                "base: waits for the expected producer",
                adaptive(),
                base,
                quiet_wait,
            ),
            // The limits, under every policy.
            (
                "full by bytes",
                adaptive(),
                Observed {
                    bytes: 1000,
                    ..base
                },
                Cut,
            ),
            (
                "a byte below full",
                adaptive(),
                Observed { bytes: 999, ..base },
                quiet_wait,
            ),
            (
                "full by ops",
                adaptive(),
                Observed {
                    entries: 100,
                    ..base
                },
                Cut,
            ),
            (
                "an op below full",
                adaptive(),
                Observed {
                    entries: 99,
                    ..base
                },
                quiet_wait,
            ),
            (
                "full by ops, linger",
                with(WindowPolicy::Linger(LINGER)),
                Observed {
                    entries: 100,
                    ..base
                },
                Cut,
            ),
            (
                "refused record",
                adaptive(),
                Observed {
                    refused: true,
                    ..base
                },
                Cut,
            ),
            (
                "refused record, linger",
                with(WindowPolicy::Linger(LINGER)),
                Observed {
                    refused: true,
                    ..base
                },
                Cut,
            ),
            (
                "refused record, log not ready",
                adaptive(),
                Observed {
                    refused: true,
                    log_ready: false,
                    ..base
                },
                Cut,
            ),
            (
                "flush",
                adaptive(),
                Observed {
                    flush: true,
                    ..base
                },
                Cut,
            ),
            (
                "flush, merging",
                adaptive(),
                Observed {
                    flush: true,
                    syncing: true,
                    ..base
                },
                Cut,
            ),
            (
                "close",
                adaptive(),
                Observed {
                    closed: true,
                    ..base
                },
                Cut,
            ),
            (
                "close, log not ready",
                adaptive(),
                Observed {
                    closed: true,
                    log_ready: false,
                    ..base
                },
                Cut,
            ),
            (
                "age limit",
                adaptive(),
                Observed {
                    now: t0 + AGE_MAX,
                    last_arrival: t0 + AGE_MAX,
                    ..base
                },
                Cut,
            ),
            (
                "age limit, log not ready",
                adaptive(),
                Observed {
                    now: t0 + AGE_MAX,
                    last_arrival: t0 + AGE_MAX,
                    log_ready: false,
                    ..base
                },
                Cut,
            ),
            (
                "a nanosecond before the age limit",
                adaptive(),
                Observed {
                    now: t0 + AGE_MAX - Duration::from_nanos(1),
                    last_arrival: t0 + AGE_MAX - Duration::from_nanos(1),
                    ..base
                },
                Wait {
                    until: t0 + AGE_MAX - Duration::from_nanos(1) + QUIET,
                },
            ),
            ("immediate", with(WindowPolicy::Immediate), base, Cut),
            (
                "linger before its deadline",
                with(WindowPolicy::Linger(LINGER)),
                Observed {
                    now: t0 + LINGER - Duration::from_nanos(1),
                    ..base
                },
                Wait { until: t0 + LINGER },
            ),
            (
                "linger at its deadline",
                with(WindowPolicy::Linger(LINGER)),
                Observed {
                    now: t0 + LINGER,
                    ..base
                },
                Cut,
            ),
            (
                "linger ignores arrivals and the log",
                with(WindowPolicy::Linger(LINGER)),
                Observed {
                    requests: 50,
                    log_ready: false,
                    syncing: true,
                    ..base
                },
                Wait { until: t0 + LINGER },
            ),
            // Adaptive.
            (
                "log not ready: nap until the job is taken",
                adaptive(),
                Observed {
                    log_ready: false,
                    ..base
                },
                NapForRoom { until: nap_until },
            ),
            (
                "log not ready, expected producers back",
                adaptive(),
                Observed {
                    requests: 4,
                    log_ready: false,
                    ..base
                },
                NapForRoom { until: nap_until },
            ),
            (
                "log not ready, sync in flight: no merge nap",
                adaptive(),
                Observed {
                    log_ready: false,
                    syncing: true,
                    ..base
                },
                NapForRoom { until: nap_until },
            ),
            (
                "log not ready, quiet elapsed",
                adaptive(),
                Observed {
                    now: t0 + 10 * US + QUIET,
                    log_ready: false,
                    ..base
                },
                NapForRoom { until: nap_until },
            ),
            (
                "merge below, sync in flight",
                adaptive(),
                Observed {
                    syncing: true,
                    ..base
                },
                NapForSync { until: nap_until },
            ),
            (
                "merge below, sync in flight, expected producers back",
                adaptive(),
                Observed {
                    requests: 127,
                    syncing: true,
                    ..base
                },
                NapForSync { until: nap_until },
            ),
            (
                "merge below, previous window one short",
                adaptive(),
                Observed {
                    prev_requests: 127,
                    syncing: true,
                    ..base
                },
                NapForSync { until: nap_until },
            ),
            (
                "not below: this window holds MERGE_BELOW",
                adaptive(),
                Observed {
                    requests: 128,
                    syncing: true,
                    ..base
                },
                Cut,
            ),
            (
                "not below: the previous window held MERGE_BELOW",
                adaptive(),
                Observed {
                    prev_requests: 128,
                    syncing: true,
                    ..base
                },
                quiet_wait,
            ),
            (
                "failure: no merge nap",
                adaptive(),
                Observed {
                    syncing: true,
                    failed: true,
                    ..base
                },
                quiet_wait,
            ),
            (
                "failure, expected producers back",
                adaptive(),
                Observed {
                    requests: 4,
                    syncing: true,
                    failed: true,
                    ..base
                },
                Cut,
            ),
            (
                "expected producers back",
                adaptive(),
                Observed {
                    requests: 4,
                    ..base
                },
                Cut,
            ),
            (
                "more than expected",
                adaptive(),
                Observed {
                    requests: 5,
                    ..base
                },
                Cut,
            ),
            (
                "held over a sync: waits for those too",
                adaptive(),
                Observed {
                    requests: 8,
                    held_over_sync: 5,
                    ..base
                },
                quiet_wait,
            ),
            (
                "held over a sync: all back",
                adaptive(),
                Observed {
                    requests: 9,
                    held_over_sync: 5,
                    ..base
                },
                Cut,
            ),
            (
                "quiet elapsed",
                adaptive(),
                Observed {
                    now: t0 + 10 * US + QUIET,
                    ..base
                },
                Cut,
            ),
            (
                "quiet not yet elapsed, the wait keeps its deadline",
                adaptive(),
                Observed {
                    now: t0 + 10 * US + QUIET - Duration::from_nanos(1),
                    ..base
                },
                quiet_wait,
            ),
            (
                "quiet counts from the last arrival, not the first",
                adaptive(),
                Observed {
                    now: t0 + 40 * US + QUIET - Duration::from_nanos(1),
                    last_arrival: t0 + 40 * US,
                    ..base
                },
                Wait {
                    until: t0 + 40 * US + QUIET,
                },
            ),
            (
                "split at half when idle",
                adaptive(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM,
                    ..base
                },
                Cut,
            ),
            (
                "split at half: one short",
                adaptive(),
                Observed {
                    requests: 127,
                    prev_requests: SPLIT_FROM,
                    ..base
                },
                quiet_wait,
            ),
            (
                "split: half rounds up",
                adaptive(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM + 1,
                    ..base
                },
                quiet_wait,
            ),
            (
                "split: half rounded up is enough",
                adaptive(),
                Observed {
                    requests: 129,
                    prev_requests: SPLIT_FROM + 1,
                    ..base
                },
                Cut,
            ),
            (
                "no split below SPLIT_FROM",
                adaptive(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM - 1,
                    ..base
                },
                quiet_wait,
            ),
            (
                "split counts those held over a sync",
                adaptive(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM - 100,
                    held_over_sync: 100,
                    ..base
                },
                Cut,
            ),
            (
                "no split while a sync is in flight",
                adaptive(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM,
                    syncing: true,
                    ..base
                },
                quiet_wait,
            ),
            (
                "NoSync: no split",
                no_sync(),
                Observed {
                    requests: 128,
                    prev_requests: SPLIT_FROM,
                    ..base
                },
                quiet_wait,
            ),
            (
                "NoSync: all back",
                no_sync(),
                Observed {
                    requests: SPLIT_FROM,
                    prev_requests: SPLIT_FROM,
                    ..base
                },
                Cut,
            ),
        ]
    }

    /// A decision with its `until` as an offset from `t0`.
    fn show(d: Decision, t0: Instant) -> String {
        let at = |until: Instant| until.duration_since(t0);
        match d {
            Decision::Cut => "Cut".into(),
            Decision::Wait { until } => format!("Wait until t0 + {:?}", at(until)),
            Decision::NapForRoom { until } => format!("NapForRoom until t0 + {:?}", at(until)),
            Decision::NapForSync { until } => format!("NapForSync until t0 + {:?}", at(until)),
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let mut wrong = Vec::new();
        for (what, policy, seen, want) in rows(t0) {
            let got = decide(&seen, &policy);
            if got != want {
                wrong.push(format!(
                    "{what}: got {}, want {}",
                    show(got, t0),
                    show(want, t0)
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn fits() {
        let p = adaptive();
        // (what, requests, bytes, entries, record bytes, fits)
        let rows = [
            ("a first record always fits", 0, 0, 0, 5000, true),
            ("up to bytes_max", 3, 900, 3, 100, true),
            ("a byte over bytes_max", 3, 900, 3, 101, false),
            ("an op below ops_max", 99, 500, 99, 10, true),
            ("at ops_max", 99, 500, 100, 10, false),
        ];
        for (what, requests, bytes, entries, rec_bytes, want) in rows {
            assert_eq!(p.fits(requests, bytes, entries, rec_bytes), want, "{what}");
        }
    }
}
