//! The stage histograms measure what they say they measure: one record per batch or per
//! request as documented, and real nanoseconds. The end-to-end stage is stamped by the
//! producer with the engine's own clock (the CPU's time-stamp counter where it can) and
//! scaled when recorded, so it is checked against the wall clock and against the sync
//! stage (timed with `Instant`): a scaling mistake breaks one bound or the other.

use mergelog::{Config, Engine, WriteBatch};
use std::time::Instant;

#[test]
fn end_to_end_latency_is_in_nanoseconds_between_the_sync_and_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).unwrap();
    const PUTS: u64 = 200;
    let started = Instant::now();
    for i in 0..PUTS {
        // One at a time: each put is its own window, batch and sync, and the requests'
        // lifetimes do not overlap, so their sum fits in the time around them all.
        engine
            .put(&i.to_be_bytes(), b"value")
            .unwrap()
            .wait()
            .unwrap();
    }
    let wall_ns = started.elapsed().as_nanos() as f64;
    // A ticket completes before its batch's latencies are recorded: close (which joins the
    // pipeline) so that every record is in.
    engine.close().unwrap();
    let stats = engine.stats();
    let h = &stats.stages;
    assert_eq!(h.end_to_end.len(), PUTS);
    assert_eq!(h.sync.len(), stats.syncs);
    assert_eq!(stats.syncs, PUTS, "one sync per put when each waits");

    let sum = |hist: &hdrhistogram::Histogram<u64>| hist.mean() * hist.len() as f64;
    let (e2e, sync) = (sum(&h.end_to_end), sum(&h.sync));
    // HdrHistogram keeps 3 significant digits: allow 1 % either way.
    assert!(
        e2e <= wall_ns * 1.01,
        "end-to-end latencies add up to {e2e:.0} ns, more than the {wall_ns:.0} ns they all fit in"
    );
    assert!(
        e2e >= sync * 0.99,
        "end-to-end latencies add up to {e2e:.0} ns, less than the {sync:.0} ns of syncs they waited for"
    );
}

#[test]
fn every_stage_records_once_per_window_batch_or_request() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).unwrap();
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 50;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let key = (t * 1000 + r % 7).to_be_bytes();
                    let put = engine.put(&key, b"v").unwrap();
                    let get = engine.get(&key).unwrap();
                    let mut batch = WriteBatch::new();
                    batch.put(b"batch-a", b"1").delete(b"batch-b");
                    let written = engine.write(&batch).unwrap();
                    put.wait().unwrap();
                    assert!(get.wait().unwrap().is_some());
                    written.wait().unwrap();
                }
            });
        }
    });
    engine.close().unwrap();
    let stats = engine.stats();
    let h = &stats.stages;
    // Requests: a put, a get and a batch per round and thread.
    assert_eq!(h.end_to_end.len(), THREADS * ROUNDS * 3);
    assert_eq!(h.sync.len(), stats.syncs);
    assert_eq!(h.encode.len(), stats.batches, "one encode per frame");
    assert!(stats.batches > 0 && stats.syncs > 0);
    // Every window is coalesced and aged once; a window with no write has no frame.
    assert_eq!(h.window_age.len(), h.coalesce.len());
    assert!(h.window_age.len() >= stats.batches);
    assert_eq!(h.ring_wait.len(), 0, "a 16 MiB ring never filled");
    // The split of the end-to-end latency: one record per request each, and the two waits
    // are parts of it, so together they add up to less.
    assert_eq!(h.cut_wait.len(), h.end_to_end.len());
    assert_eq!(h.sync_wait.len(), h.end_to_end.len());
    let sum = |hist: &hdrhistogram::Histogram<u64>| hist.mean() * hist.len() as f64;
    let parts = sum(&h.cut_wait) + sum(&h.sync_wait);
    assert!(
        parts <= sum(&h.end_to_end) * 1.01,
        "cut_wait + sync_wait add up to {parts:.0} ns, more than end_to_end's {:.0}",
        sum(&h.end_to_end)
    );
}

/// A request waits for the sync in flight before its own, and `sync_wait` says so: while one
/// sync runs on the syncer (held up by the I/O hook), a window is cut and handed on at once
/// (`WindowPolicy::Immediate`), and its request's `sync_wait` covers the rest of that sync,
/// not its `cut_wait`.
#[test]
fn a_request_behind_a_sync_in_flight_records_its_wait_for_it() {
    use mergelog::internals::io::{Io, IoOp};
    use mergelog::WindowPolicy;
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    const HOLD: Duration = Duration::from_millis(40);
    /// Once armed: holds the first segment write until released (so that a request is
    /// behind its window when it is handed on, and the syncer, not the flusher inline,
    /// syncs it), and the first segment sync for `HOLD`.
    #[derive(Default)]
    struct Hold {
        /// 0 off, 1 armed, 2 a write held, 3 released.
        write: AtomicU32,
        /// 0 off, 1 armed, 2 a sync held.
        sync: AtomicU32,
    }
    impl Io for Hold {
        fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
            if path.extension().is_none_or(|e| e != "seg") {
                return Ok(());
            }
            let take = |state: &AtomicU32| {
                state
                    .compare_exchange(1, 2, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            };
            if op == IoOp::Write && take(&self.write) {
                while self.write.load(Ordering::SeqCst) != 3 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if op == IoOp::Sync && take(&self.sync) {
                std::thread::sleep(HOLD);
            }
            Ok(())
        }
    }
    let wait_for = |state: &AtomicU32, value: u32| {
        while state.load(Ordering::SeqCst) != value {
            std::thread::yield_now();
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let io = std::sync::Arc::new(Hold::default());
    let config = Config {
        window: WindowPolicy::Immediate,
        // One sync at a time: with a second syncer the put behind would not wait for the
        // first sync to start its own.
        syncers: 1,
        ..Config::default()
    };
    let engine = Engine::open_with_io(dir.path(), config, io.clone()).unwrap();
    io.write.store(1, Ordering::SeqCst);
    io.sync.store(1, Ordering::SeqCst);
    let first = engine.put(b"first", b"1").unwrap();
    wait_for(&io.write, 2);
    let second = engine.put(b"second", b"2").unwrap();
    io.write.store(3, Ordering::SeqCst);
    // The first window's sync is held: a put now is cut and handed on behind it.
    wait_for(&io.sync, 2);
    let behind = engine.put(b"behind", b"3").unwrap();
    for t in [first, second, behind] {
        t.wait().unwrap();
    }
    engine.close().unwrap();
    let h = engine.stats().stages;
    assert_eq!(h.sync_wait.len(), 3);
    let waited = Duration::from_nanos(h.sync_wait.max());
    assert!(
        waited >= HOLD / 2,
        "the put behind a {HOLD:?} sync waited {waited:?} for it"
    );
}

/// Many writers with one request each: small windows wait over the sync in flight (to go out
/// with the writers it completes) and must be woken by its completion. Were that wake-up
/// lost, such a window would sleep until `window_age_max`; here that is 2 s, and no window
/// may come near it.
#[test]
fn windows_waiting_over_a_sync_are_woken_by_its_completion() {
    let dir = tempfile::tempdir().unwrap();
    let age_max = std::time::Duration::from_secs(2);
    let config = Config {
        window_age_max: age_max,
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..20u64 {
                    engine
                        .put(&(t << 32 | i).to_be_bytes(), b"v")
                        .unwrap()
                        .wait()
                        .unwrap();
                }
            });
        }
    });
    engine.close().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.writes, 16 * 20);
    let oldest = std::time::Duration::from_nanos(stats.stages.window_age.max());
    assert!(
        oldest < age_max / 2,
        "a window waited {oldest:?}: woken by its age limit, not by the sync it waited for"
    );
}

/// `Stats::sync_time` splits the time from the first sync to the last into syncing, and gaps
/// before and after the next frame was written: a pause between two writes is a gap with
/// nothing to sync, and the three parts add up to no more than the time they happened in.
#[test]
fn sync_time_adds_up_and_a_pause_counts_as_nothing_ready() {
    use mergelog::Durability;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).unwrap();
    const PAUSE: Duration = Duration::from_millis(30);
    let started = Instant::now();
    engine.put(b"a", b"1").unwrap().wait().unwrap();
    // The first sync has ended (its ticket completed): the next frame is written only after
    // the pause, so the gap before its sync has at least PAUSE with nothing to sync.
    std::thread::sleep(PAUSE);
    engine.put(b"b", b"2").unwrap().wait().unwrap();
    engine.put(b"c", b"3").unwrap().wait().unwrap();
    let wall_ns = started.elapsed().as_nanos() as u64;
    engine.close().unwrap();
    let stats = engine.stats();
    let t = stats.sync_time;
    assert_eq!(stats.syncs, 3);
    assert!(
        t.nothing_ready_ns >= PAUSE.as_nanos() as u64,
        "{t:?}: the {PAUSE:?} pause is not in the nothing-ready gaps"
    );
    assert!(
        t.busy_ns + t.frame_ready_ns + t.nothing_ready_ns <= wall_ns,
        "{t:?} adds up to more than the {wall_ns} ns it all happened in"
    );
    // The busy time is the sync histogram's sum, to its 3 significant digits.
    let h = &stats.stages.sync;
    let hist_ns = h.mean() * h.len() as f64;
    let busy = t.busy_ns as f64;
    assert!(
        (hist_ns - busy).abs() <= busy * 0.01 + 1000.0,
        "sync histogram sums to {hist_ns:.0} ns, sync_time.busy_ns is {busy:.0}"
    );

    // Without syncs there is no disk time to account for.
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        durability: Durability::NoSync,
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    for i in 0..10u64 {
        engine.put(&i.to_be_bytes(), b"v").unwrap().wait().unwrap();
    }
    engine.close().unwrap();
    assert_eq!(engine.counts().sync_time, mergelog::SyncTime::default());
}

/// The pipeline's timeline (`Config::trace_events`) records each window, sync, compaction
/// batch and roll once, in time order, and agrees with the counters.
#[test]
fn the_trace_records_every_cut_sync_compaction_batch_and_roll() {
    use mergelog::{Error, TraceKind, TRACE_EVENTS_MAX};
    let dir = tempfile::tempdir().unwrap();
    let off = Engine::open(dir.path(), Config::default()).unwrap();
    off.put(b"k", b"v").unwrap().wait().unwrap();
    assert!(off.take_trace().events.is_empty(), "recorded while off");
    off.close().unwrap();
    drop(off);
    let too_many = Config {
        trace_events: TRACE_EVENTS_MAX + 1,
        ..Config::default()
    };
    assert!(matches!(
        Engine::open(dir.path(), too_many),
        Err(Error::InvalidConfig(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        trace_events: 100_000,
        segment_bytes: 64 << 10,
        batch_bytes_max: 8 << 10,
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    let value = [b'x'; 300];
    // Two rounds over the same keys: the first round's records are garbage after the
    // second, and a compaction copies what is live.
    for round in 0..2u8 {
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let engine = &engine;
                s.spawn(move || {
                    let mut last = None;
                    for i in 0..300u64 {
                        let key = (t * 1000 + i).to_be_bytes();
                        last = Some(engine.put(&key, &[&[round][..], &value].concat()).unwrap());
                        if i % 16 == 15 {
                            last.take().unwrap().wait().unwrap();
                        }
                    }
                    if let Some(l) = last {
                        l.wait().unwrap();
                    }
                });
            }
        });
    }
    let compacted = engine.compact().unwrap();
    assert!(compacted.batches > 0, "{compacted:?}");
    engine.close().unwrap();
    let stats = engine.stats();
    let trace = engine.take_trace();
    assert_eq!(trace.dropped, 0);
    let ev = &trace.events;
    assert!(
        ev.windows(2).all(|w| w[0].at <= w[1].at),
        "not in time order"
    );
    let of = |k: TraceKind| ev.iter().filter(move |e| e.kind == k);
    let sum = |k: TraceKind| of(k).map(|e| e.value).sum::<u64>();
    assert_eq!(sum(TraceKind::WindowCut), stats.submitted);
    assert_eq!(of(TraceKind::SyncStart).count() as u64, stats.syncs);
    assert_eq!(of(TraceKind::SyncEnd).count() as u64, stats.syncs);
    // Each sync ends after it starts: never more ends than starts so far.
    let mut running = 0i64;
    for e in ev {
        running += match e.kind {
            TraceKind::SyncStart => 1,
            TraceKind::SyncEnd => -1,
            _ => 0,
        };
        assert!(running >= 0, "a sync ended before it started");
    }
    // Every request is handed on or completed inline once; compaction batches with 0.
    assert_eq!(
        sum(TraceKind::HandedOn) + sum(TraceKind::Inline),
        stats.submitted
    );
    let copied = of(TraceKind::CompactionEnd).filter(|e| e.value > 0);
    assert_eq!(copied.count() as u64, stats.compaction.batches);
    assert_eq!(sum(TraceKind::CompactionEnd), stats.compaction.records);
    assert_eq!(
        of(TraceKind::CompactionStart).count(),
        of(TraceKind::CompactionEnd).count()
    );
    // The first segment is made at open; every other one by a roll.
    let rolls = stats.segments.fresh + stats.segments.reused - 1;
    assert!(rolls > 0, "{:?}", stats.segments);
    assert_eq!(of(TraceKind::RollStart).count() as u64, rolls);
    assert_eq!(of(TraceKind::RollEnd).count() as u64, rolls);
    assert!(engine.take_trace().events.is_empty(), "a second take");
}
