//! When several syncers overlap their syncs (`Config::syncers`, `Config::overlap_syncs_above`).
//!
//! Every segment sync is slowed to 2 ms by the I/O hook (a disk others keep busy), and four
//! writers keep submitting with windows cut at once, so windows are ready while syncs run.
//! Whether such a window's sync starts at once, on the other syncer, is the policy under
//! test, read from `Counts::sync_time.overlapped` (syncs started while another ran). Every
//! write must be acknowledged and read back whatever the policy.

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Counts, Engine, WindowPolicy};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slows every segment sync to `SYNC_TAKES`.
struct SlowSyncs;

const SYNC_TAKES: Duration = Duration::from_millis(2);

impl Io for SlowSyncs {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            std::thread::sleep(SYNC_TAKES);
        }
        Ok(())
    }
}

const WRITERS: usize = 4;
/// Each writer submits `BURST` puts every `PACE` and waits for none until it stops: requests
/// keep arriving while syncs run (an open loop, not a convoy that waits for its own
/// completion before it sends again).
const BURST: usize = 8;
const PACE: Duration = Duration::from_micros(200);

/// Runs the writers against two syncers with `overlap_above` until `enough` holds for the
/// engine's counts (looked at every 5 ms) or `longest` has passed, and at least `shortest`;
/// then waits for every ticket and reads every key back. The counts at the end.
fn run(
    overlap_above: Duration,
    shortest: Duration,
    longest: Duration,
    enough: impl Fn(&Counts) -> bool,
) -> Counts {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        syncers: 2,
        overlap_syncs_above: overlap_above,
        window: WindowPolicy::Immediate,
        ..Config::default()
    };
    let engine = Engine::open_with_io(dir.path(), config, Arc::new(SlowSyncs)).expect("open");
    let key = |w: usize, i: usize| format!("w{w}-k{i}");
    let stop = AtomicBool::new(false);
    let written: Vec<usize> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (engine, stop) = (&engine, &stop);
                s.spawn(move || {
                    let mut tickets = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..BURST {
                            let i = tickets.len();
                            let value = i.to_string();
                            tickets.push(engine.put(key(w, i).as_bytes(), value.as_bytes()));
                        }
                        std::thread::sleep(PACE);
                    }
                    let n = tickets.len();
                    for t in tickets {
                        t.expect("put").wait().expect("acknowledged");
                    }
                    n
                })
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < shortest
            || started.elapsed() < longest && !enough(&engine.counts())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (w, &n) in written.iter().enumerate() {
        for i in 0..n {
            let got = engine.read_to_vec(key(w, i).as_bytes()).expect("read");
            assert_eq!(got, Some(i.to_string().into_bytes()), "{}", key(w, i));
        }
    }
    let counts = engine.counts();
    engine.close().expect("close");
    counts
}

/// Long enough for a run that must show overlapping syncs to show some, however the
/// machine schedules it (a run that shows them does in tens of milliseconds).
const LONGEST: Duration = Duration::from_secs(20);

/// At least 5 syncs started while another ran.
fn assert_overlapped(c: &Counts) {
    assert!(
        c.sync_time.overlapped >= 5,
        "{} of {} syncs overlapped another",
        c.sync_time.overlapped,
        c.syncs
    );
}

#[test]
fn syncs_overlap_whenever_a_syncer_is_free_with_a_zero_threshold() {
    let c = run(Duration::ZERO, Duration::ZERO, LONGEST, |c| {
        c.sync_time.overlapped >= 5
    });
    assert_overlapped(&c);
}

#[test]
fn syncs_do_not_overlap_while_they_are_faster_than_the_threshold() {
    // Every sync takes about 2 ms, far below 10 s: the second syncer never starts one while
    // the first runs, and the first takes every job after its sync.
    let c = run(
        Duration::from_secs(10),
        Duration::from_millis(100),
        LONGEST,
        |c| c.syncs >= 40,
    );
    assert!(c.syncs >= 40, "{} syncs", c.syncs);
    assert_eq!(c.sync_time.overlapped, 0, "of {} syncs", c.syncs);
}

#[test]
fn syncs_start_to_overlap_once_they_are_slower_than_the_threshold() {
    // Syncs of 2 ms against a threshold of 1 ms: once the average is above it, a window
    // ready while a sync runs gets the other syncer.
    let c = run(Duration::from_millis(1), Duration::ZERO, LONGEST, |c| {
        c.sync_time.overlapped >= 5
    });
    assert_overlapped(&c);
}

/// Records every operation on a segment file, in order.
#[derive(Default)]
struct SegmentOps(parking_lot::Mutex<Vec<(IoOp, std::path::PathBuf, u64)>>);

impl Io for SegmentOps {
    fn before(&self, op: IoOp, path: &Path, offset: u64, _data: &[u8]) -> io::Result<()> {
        if path.extension().is_some_and(|e| e == "seg") {
            self.0.lock().push((op, path.to_owned(), offset));
        }
        Ok(())
    }
}

/// Each of several syncers syncs through a file description of its own, and Linux reports
/// a writeback error only to the descriptions open when it happened (one opened after
/// another reported it never sees it): so every syncer's description of a segment is opened
/// before any frame is written into it, at the roll (or at open), never on a syncer's
/// first sync there.
#[test]
fn every_syncers_description_of_a_segment_is_opened_before_its_first_frame() {
    const SYNCERS: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let ops = Arc::new(SegmentOps::default());
    let config = Config {
        syncers: SYNCERS,
        overlap_syncs_above: Duration::ZERO,
        segment_bytes: 64 << 10,
        batch_bytes_max: 8 << 10,
        window: WindowPolicy::Immediate,
        ..Config::default()
    };
    let engine = Engine::open_with_io(dir.path(), config, ops.clone()).expect("open");
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let engine = &engine;
            s.spawn(move || {
                let mut tickets = Vec::new();
                for i in 0..1500 {
                    let key = format!("w{w}-{i}");
                    tickets.push(engine.put(key.as_bytes(), &[b'v'; 100]).expect("put"));
                    if tickets.len() == 16 {
                        tickets.drain(..).for_each(|t| {
                            t.wait().expect("durable");
                        });
                    }
                }
                tickets.into_iter().for_each(|t| {
                    t.wait().expect("durable");
                });
            });
        }
    });
    engine.close().expect("close");
    let c = engine.counts();
    assert!(c.sync_time.overlapped > 0, "syncs overlapped: {c:?}");
    let ops = ops.0.lock();
    let mut segments: Vec<&std::path::PathBuf> = ops.iter().map(|(_, p, _)| p).collect();
    segments.sort();
    segments.dedup();
    assert!(segments.len() >= 5, "the log rolled: {segments:?}");
    for seg in segments {
        let mine: Vec<_> = ops.iter().filter(|(_, p, _)| p == seg).collect();
        let Some(first) = mine
            .iter()
            .position(|(op, _, off)| *op == IoOp::Write && *off >= 64)
        else {
            continue; // no frame written (the last, prepared one)
        };
        let opens = |ops: &[&(IoOp, std::path::PathBuf, u64)]| {
            ops.iter().filter(|(op, _, _)| *op == IoOp::Open).count()
        };
        assert!(
            opens(&mine[..first]) >= SYNCERS,
            "{}: {} descriptions opened before the first frame",
            seg.display(),
            opens(&mine[..first])
        );
        assert_eq!(
            opens(&mine[first..]),
            0,
            "{}: a description opened after a frame was written",
            seg.display()
        );
    }
}
