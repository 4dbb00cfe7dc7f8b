//! Reopening after an unclean end re-establishes what the disk holds (issue item 1, the part
//! that needs no power-loss model), and the bound on frames written but not yet durable that
//! recovery relies on (item 2).
//!
//! After a failed `fdatasync` the kernel may keep the pages it could not write cached and
//! clean. A writable open that follows an end without a clean-close mark (a crash, or a
//! failure: a failed engine writes no mark) therefore writes the last segment's valid bytes
//! again from the cache and syncs them before it accepts a write; after a clean close it
//! trusts the cache. `reopen_after_eio` checks the whole story under the power-loss model.

use crate::common::log::{dir_contents, segment_files};
use crate::common::WAIT_MAX;
use crate::hooks::{is, Inject};
use mergelog::internals::format::{SEGMENT_HEADER_LEN, UNDURABLE_FRAMES_MAX};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, TraceKind, WindowPolicy};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config() -> Config {
    Config {
        segment_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        window: WindowPolicy::Immediate,
        ..Config::default()
    }
}

fn put_n(engine: &Engine, from: usize, n: usize) {
    for i in from..from + n {
        engine
            .put(
                format!("key-{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
            )
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    }
}

/// Records the writes (offset, length) into segment files.
#[derive(Default)]
struct WriteLog(Mutex<Vec<(String, u64, usize)>>);

impl Io for WriteLog {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if op == IoOp::Write && name.ends_with(".seg") {
            self.0.lock().unwrap().push((name, offset, data.len()));
        }
        Ok(())
    }
}

#[test]
fn a_clean_close_is_trusted_and_an_unclean_end_rewrites_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    put_n(&engine, 0, 20);
    engine.close().unwrap();
    let mark = dir.path().join("CLEAN");
    assert!(mark.exists(), "a clean close leaves the mark");

    // Clean: nothing is written at open, and the mark is gone while the engine runs.
    let io = Arc::new(WriteLog::default());
    let engine = Engine::open_with_io(dir.path(), config(), io.clone()).unwrap();
    assert_eq!(engine.open_report().tail_rewritten, None);
    assert!(io.0.lock().unwrap().is_empty(), "wrote at a clean open");
    assert!(!mark.exists(), "the mark outlived the open");
    put_n(&engine, 20, 5);
    // A crash now: the engine is dropped without its close writing the mark (simulated by
    // taking the mark away after close, the state a crash leaves).
    engine.close().unwrap();
    std::fs::remove_file(&mark).unwrap();

    let io = Arc::new(WriteLog::default());
    let engine = Engine::open_with_io(dir.path(), config(), io.clone()).unwrap();
    let rewritten = engine
        .open_report()
        .tail_rewritten
        .expect("an unclean end rewrites");
    let writes = io.0.lock().unwrap().clone();
    let covered: u64 = writes.iter().map(|w| w.2 as u64).sum();
    assert!(
        writes.iter().all(|w| w.0 == "00000000000000000001.seg") && covered == rewritten,
        "the rewrite covers the last segment up to {rewritten}: {writes:?}"
    );
    assert!(
        rewritten > SEGMENT_HEADER_LEN as u64 + 25 * 32,
        "all 25 frames: {rewritten}"
    );
    assert_eq!(engine.len(), 25);
    engine.close().unwrap();
}

/// A mark that does not describe the log (left by an older run, or not matching what the scan
/// found) is not trusted: the open rewrites, and removes it.
#[test]
fn a_mark_that_does_not_match_the_log_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    put_n(&engine, 0, 5);
    engine.close().unwrap();
    let mark = dir.path().join("CLEAN");
    let old = std::fs::read(&mark).unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    put_n(&engine, 5, 5);
    engine.close().unwrap();
    // The old mark says the log ended after batch 5; it holds 10.
    std::fs::write(&mark, &old).unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert!(engine.open_report().tail_rewritten.is_some());
    assert!(!mark.exists());
    assert_eq!(engine.len(), 10);
    drop(engine);
    // Garbage in place of the mark: the same.
    std::fs::write(&mark, b"not a mark").unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert!(engine.open_report().tail_rewritten.is_some());
    assert!(!mark.exists());
}

/// A failed engine writes no mark: its page cache may hold what the disk does not.
#[test]
fn a_failed_engine_leaves_no_mark() {
    struct FailSyncs(AtomicU64);
    impl Io for FailSyncs {
        fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
            if op == IoOp::Sync && self.0.fetch_add(1, Ordering::SeqCst) >= 3 {
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open_with_io(dir.path(), config(), Arc::new(FailSyncs(AtomicU64::new(0)))).unwrap();
    let mut failed = false;
    for i in 0..50 {
        match engine
            .put(format!("k{i}").as_bytes(), b"v")
            .and_then(|t| t.wait())
        {
            Ok(_) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a sync failed");
    assert!(engine.close().is_err());
    assert!(!dir.path().join("CLEAN").exists());
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert!(engine.open_report().tail_rewritten.is_some());
}

/// Counts frames written and frames made durable as the hooks see them, and remembers the
/// most frames ever written and not yet durable. Syncs are slow, so that frames pile up.
#[derive(Default)]
struct Undurable {
    written: AtomicU64,
    covered: Mutex<Vec<u64>>,
    durable: AtomicU64,
    max: AtomicU64,
}

impl Io for Undurable {
    fn before(&self, op: IoOp, path: &Path, offset: u64, _: &[u8]) -> io::Result<()> {
        let seg = path.extension().is_some_and(|e| e == "seg");
        match op {
            IoOp::Write if seg && offset >= SEGMENT_HEADER_LEN as u64 => {
                // A frame about to be written: with the ones written and not yet durable.
                let n = self.written.fetch_add(1, Ordering::SeqCst) + 1;
                let undurable = n - self.durable.load(Ordering::SeqCst);
                self.max.fetch_max(undurable, Ordering::SeqCst);
            }
            IoOp::Sync if seg => {
                // Covers every frame written before it starts.
                self.covered
                    .lock()
                    .unwrap()
                    .push(self.written.load(Ordering::SeqCst));
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {}
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            if let Some(c) = self.covered.lock().unwrap().pop() {
                self.durable.fetch_max(c, Ordering::SeqCst);
            }
        }
    }
}

/// However the load, no more than `UNDURABLE_FRAMES_MAX` frames are ever written and not yet
/// durable: many producers, tiny windows, slow syncs. While every sync returns in turn, the
/// pipeline (a job channel of two) stays within the bound even without
/// `Flusher::bound_undurable`; this test guards the invariant recovery relies on against a
/// deeper pipeline: with a channel of 64 and no wait it saw 36 frames. The wait itself is
/// tested below, with a sync held.
#[test]
fn frames_written_ahead_of_the_durable_one_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(Undurable::default());
    let cfg = Config {
        segment_bytes: 4 << 20,
        ..config()
    };
    let engine = Arc::new(Engine::open_with_io(dir.path(), cfg, io.clone()).unwrap());
    // Rounds until the run has written enough frames to mean something: how many windows a
    // round makes depends on the scheduler (a loaded machine merges more per window).
    for round in 0..20 {
        if io.written.load(Ordering::SeqCst) > 50 {
            break;
        }
        std::thread::scope(|s| {
            for w in 0..48 {
                let engine = engine.clone();
                s.spawn(move || {
                    // One request outstanding per producer: many small windows.
                    for i in 0..30 {
                        engine
                            .put(format!("r{round}-w{w}-{i}").as_bytes(), b"v")
                            .unwrap()
                            .wait_timeout(WAIT_MAX)
                            .unwrap();
                    }
                });
            }
        });
    }
    let max = io.max.load(Ordering::SeqCst);
    assert!(
        max <= UNDURABLE_FRAMES_MAX,
        "{max} frames were written and not yet durable at once (bound {UNDURABLE_FRAMES_MAX})"
    );
    assert!(
        io.written.load(Ordering::SeqCst) > 50,
        "the windows were small"
    );
}

/// Once armed: holds the first frame's write until the test has submitted its requests (so
/// that a request waits behind it and its window goes to a syncer, not completed by the
/// flusher itself), holds the first segment sync a syncer makes until the test lets it go,
/// and counts the frames written.
#[derive(Default)]
struct HoldOneSync {
    armed: AtomicBool,
    submitted: AtomicBool,
    holding: AtomicBool,
    release: AtomicBool,
    frames: AtomicU64,
}

/// Sets its flag when dropped.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `flag` is set; false on time-out.
fn until_set(flag: &AtomicBool) -> bool {
    let give_up = Instant::now() + WAIT_MAX;
    while !flag.load(Ordering::SeqCst) {
        if Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

impl Io for HoldOneSync {
    fn before(&self, op: IoOp, path: &Path, offset: u64, _: &[u8]) -> io::Result<()> {
        let seg = path.extension().is_some_and(|e| e == "seg");
        if !seg || !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let released = match op {
            IoOp::Write if offset >= SEGMENT_HEADER_LEN as u64 => {
                match self.frames.fetch_add(1, Ordering::SeqCst) {
                    0 => until_set(&self.submitted),
                    _ => true,
                }
            }
            IoOp::Sync => {
                let syncer = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("mergelog-syncer"));
                if syncer && !self.holding.swap(true, Ordering::SeqCst) {
                    until_set(&self.release)
                } else {
                    true
                }
            }
            _ => true,
        };
        if !released {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "test hook timed out",
            ));
        }
        Ok(())
    }
}

/// The bound itself, whatever the pipeline's depth: with two syncers, a group whose sync has
/// not returned holds the watermark back (groups complete in turn order) while the other
/// syncer takes and syncs every later group, so nothing but `Flusher::bound_undurable` stops
/// the flusher. With one syncer's sync held and 48 one-request windows waiting, the flusher
/// writes up to the frame `UNDURABLE_FRAMES_MAX` batches past the durable one, waits there
/// (the trace says so), and writes no frame further until the held sync returns. (Without
/// the wait it went past the bound at once.)
#[test]
fn no_frame_is_written_more_than_the_bound_past_the_durable_one_while_a_sync_is_held() {
    const PUTS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(HoldOneSync::default());
    let cfg = Config {
        syncers: 2,
        // A free syncer takes a group whenever one is ready (by default only on a slow disk).
        overlap_syncs_above: Duration::ZERO,
        // One request per window: a frame each.
        batch_ops_max: 1,
        trace_events: 1 << 12,
        ..config()
    };
    let engine = Engine::open_with_io(dir.path(), cfg, io.clone()).unwrap();
    // However the test ends, the held sync goes on before the engine is dropped.
    let _release = Release(&io.release);
    put_n(&engine, 0, 1);
    // Nothing in flight: the frames written from now on are batches `before` + 1, + 2, ...
    let before = engine.durable_seq().get();
    io.armed.store(true, Ordering::SeqCst);
    let tickets: Vec<_> = (0..PUTS)
        .map(|i| engine.put(format!("held-{i}").as_bytes(), b"v").unwrap())
        .collect();
    io.submitted.store(true, Ordering::SeqCst);
    let bound = UNDURABLE_FRAMES_MAX;
    let mut waited = false;
    let give_up = Instant::now() + WAIT_MAX;
    loop {
        waited |= (engine.take_trace().events.iter()).any(|e| e.kind == TraceKind::UndurableBound);
        // Read before the durable batch: each of these frames was written while no more was
        // durable than is now.
        let written = before + io.frames.load(Ordering::SeqCst);
        let durable = engine.durable_seq().get();
        assert!(
            written <= durable + bound,
            "batch {written} was written while batch {durable} was the last durable one \
             (bound {bound})"
        );
        if waited && written == durable + bound {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "hung: {written} written, {durable} durable, the flusher waited: {waited}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(io.holding.load(Ordering::SeqCst), "a syncer's sync is held");
    io.release.store(true, Ordering::SeqCst);
    for t in tickets {
        t.wait_timeout(WAIT_MAX).unwrap();
    }
    assert_eq!(io.frames.load(Ordering::SeqCst), PUTS as u64);
    engine.close().unwrap();
}

/// Fails every sync of one segment file, once armed with its path.
#[derive(Default)]
struct FailSyncOf(Mutex<Option<std::path::PathBuf>>);

impl Io for FailSyncOf {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let armed = self.0.lock().unwrap();
        if op == IoOp::Sync && armed.as_deref() == Some(path) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// A roll leaves the new segment's activation to its first sync; under `NoSync` nothing
/// syncs there, so `close` makes it durable. If that sync fails, `close` says so (and the
/// engine has failed), instead of returning OK without its clean-close mark.
#[test]
fn a_failed_activation_sync_at_close_is_reported_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailSyncOf::default());
    let config = Config {
        segment_bytes: 64 << 10,
        durability: mergelog::Durability::NoSync,
        ..config()
    };
    let engine = Engine::open_with_io(dir.path(), config, hook.clone()).expect("open");
    put_n(&engine, 0, 1500);
    let segments = engine.segments();
    assert!(segments.len() >= 2, "the log rolled");
    *hook.0.lock().unwrap() = Some(segments.last().unwrap().path.clone());
    let e = engine.close().expect_err("the activation's sync failed");
    assert!(e.to_string().contains("sync segment header"), "{e}");
    assert!(engine.failure().is_some());
}

/// Several segments of acknowledged puts (keys `key-<i>`, values `value-<i>` padded to 2000
/// bytes), closed cleanly; returns the puts.
fn several_segments(dir: &Path, config: &Config) -> Vec<(Vec<u8>, Vec<u8>)> {
    let engine = Engine::open(dir, config.clone()).expect("open");
    let mut puts = Vec::new();
    let mut i = 0;
    while engine.segments().len() < 3 {
        let key = format!("key-{i}").into_bytes();
        let mut value = format!("value-{i}|").into_bytes();
        value.resize(2000, b'v');
        engine
            .put(&key, &value)
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        puts.push((key, value));
        i += 1;
    }
    engine.close().expect("close");
    puts
}

/// Every put in `puts` reads back from `engine` with its value, and nothing else is there.
fn holds_all(engine: &Engine, puts: &[(Vec<u8>, Vec<u8>)], ctx: &str) {
    for (k, v) in puts {
        let got = engine.read_to_vec(k).expect("read");
        assert_eq!(
            got.as_deref(),
            Some(&v[..]),
            "{ctx}: acknowledged {} lost",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(engine.len(), puts.len(), "{ctx}");
}

/// The error an open returned: its operation and path (anything else fails the test).
fn io_error(r: mergelog::Result<Engine>, ctx: &str) -> (&'static str, std::path::PathBuf) {
    match r {
        Err(mergelog::Error::Io { op, path, .. }) => (op, path),
        Err(other) => panic!("{ctx}: expected the injected I/O error, got {other}"),
        Ok(_) => panic!("{ctx}: the open succeeded over the injected failure"),
    }
}

/// After an unclean end, an open rewrites the last segment from the page cache and syncs it
/// (`reestablish`). If that write or that sync fails, the open fails (no engine accepts a
/// write after a tail the disk may not hold), naming the operation and the segment; it
/// changes no file (the rewrite writes the bytes already there; the mark stays absent, so
/// the next open rewrites again), and a later open with healthy I/O rewrites and holds every
/// acknowledged put.
#[test]
fn a_failed_rewrite_of_the_tail_at_open_fails_the_open_and_the_next_open_rewrites() {
    let config = Config {
        segment_bytes: 64 << 10,
        ..config()
    };
    for (op, what) in [
        (IoOp::Write, "rewrite segment tail"),
        (IoOp::Sync, "sync rewritten segment tail"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let puts = several_segments(dir, &config);
        // An unclean end: the state a crash leaves (no mark).
        std::fs::remove_file(dir.join("CLEAN")).unwrap();
        let last = segment_files(dir).last().unwrap().1.clone();
        let before = dir_contents(dir);

        // Twice: a failed open leaves nothing that lets the next one skip the rewrite.
        for attempt in 0..2 {
            let ctx = format!("{op:?}, attempt {attempt}");
            let hook = Arc::new(Inject::new(op, is(&last)));
            let r = Engine::open_with_io(dir, config.clone(), hook.clone());
            assert_eq!(io_error(r, &ctx), (what, last.clone()), "{ctx}");
            assert_eq!(hook.failed(), 1, "{ctx}: the failed operation was retried");
            assert!(
                dir_contents(dir) == before,
                "{ctx}: the failed open changed the directory"
            );
        }

        let engine = Engine::open(dir, config.clone()).expect("a healthy open");
        assert!(
            engine.open_report().tail_rewritten.is_some(),
            "{op:?}: the healthy open after the failed one trusted the cache"
        );
        holds_all(&engine, &puts, &format!("{op:?}"));
        engine.put(b"after", b"x").unwrap().wait().unwrap();
        engine.close().unwrap();
        let engine = Engine::open(dir, config.clone()).unwrap();
        holds_all(
            &engine,
            &[puts.clone(), vec![(b"after".to_vec(), b"x".to_vec())]].concat(),
            "after",
        );
    }
}

/// A writable open removes the clean-close mark, then syncs the directory, before it accepts
/// a write (`log::clean`: the mark never outlives the clean end it describes). If the removal
/// fails, or the directory sync after it, the open fails naming it; nothing else changed:
/// the mark, if still there, still describes the log, so the next open trusts it; if the
/// removal happened (its sync failed), the next open finds no mark, treats the end as
/// unclean (rewrites the tail) and syncs the directory before it returns. Either way every
/// acknowledged put is there.
#[test]
fn a_failed_removal_of_the_clean_mark_fails_the_open() {
    for op in [IoOp::Remove, IoOp::SyncDir] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mark = dir.join("CLEAN");
        let puts = several_segments(&dir, &config());
        assert!(mark.exists());
        let before = dir_contents(&dir);

        let hook = match op {
            IoOp::Remove => Inject::new(op, is(&mark)),
            _ => Inject::new(op, is(&dir)).right_after(IoOp::Remove, is(&mark)),
        };
        let hook = Arc::new(hook);
        let r = Engine::open_with_io(&dir, config(), hook.clone());
        let (what, path) = io_error(r, &format!("{op:?}"));
        assert_eq!(hook.failed(), 1, "{op:?}");
        match op {
            IoOp::Remove => {
                assert_eq!((what, path), ("remove clean-close mark", mark.clone()));
                assert!(
                    dir_contents(&dir) == before,
                    "{op:?}: changed the directory"
                );
            }
            _ => {
                assert_eq!((what, path), ("fsync directory", dir.clone()));
                let expected: Vec<_> = before.iter().filter(|f| f.0 != mark).cloned().collect();
                assert!(
                    dir_contents(&dir) == expected,
                    "{op:?}: changed more than the mark's removal"
                );
            }
        }

        // Healthy now: counts the directory syncs that follow the rewrite's sync of the last
        // segment (`reestablish`), which make the mark's removal durable too.
        let last = segment_files(&dir).last().unwrap().1.clone();
        let syncs = Inject::new(IoOp::SyncDir, is(&dir)).right_after(IoOp::Sync, is(&last));
        let syncs = Arc::new(syncs.nth(u64::MAX));
        let engine = Engine::open_with_io(&dir, config(), syncs.clone()).expect("healthy open");
        assert!(!mark.exists(), "{op:?}: the mark outlived the open");
        let rewritten = engine.open_report().tail_rewritten;
        match op {
            // The mark was still there, describing the log: trusted.
            IoOp::Remove => assert_eq!(rewritten, None),
            // Its removal may not be durable: the end is unclean, and the directory synced.
            _ => assert!(rewritten.is_some() && syncs.seen() >= 1, "{op:?}"),
        }
        holds_all(&engine, &puts, &format!("{op:?}"));
        engine.close().unwrap();
    }
}

/// A clean-close mark's bytes (docs/FORMAT.md, "The clean-close mark"), its CRC right.
fn clean_mark(segment_id: u64, end: u64, next_seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0..8].copy_from_slice(b"MLCLEAN\0");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[16..24].copy_from_slice(&segment_id.to_le_bytes());
    b[24..32].copy_from_slice(&end.to_le_bytes());
    b[32..40].copy_from_slice(&next_seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A mark whose next batch is past the largest a log reaches (2^62; found by the fuzz target
/// `side_files`, session 38) is no mark: in a directory without segments, `PointInTime`
/// went on from it, and made a first segment whose name the next open refuses ("outside
/// 1..=2^62"): the writes acknowledged in it were out of reach. (With `u64::MAX` the first
/// batch's `next_seq + 1` overflowed the flusher.) Now the log starts at batch 1, as it does
/// for any invalid mark.
#[test]
fn a_clean_mark_naming_a_batch_past_the_largest_is_no_mark() {
    for next_seq in [(1u64 << 62) + 2, 1 << 63, u64::MAX] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("CLEAN"), clean_mark(1, 64, next_seq)).unwrap();
        let config = Config {
            recovery: mergelog::RecoveryMode::PointInTime,
            ..config()
        };
        let engine = Engine::open(dir.path(), config.clone())
            .unwrap_or_else(|e| panic!("next_seq {next_seq}: open: {e}"));
        let seq = engine
            .put(b"k", b"v")
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap_or_else(|e| panic!("next_seq {next_seq}: put: {e}"));
        engine.close().unwrap();
        drop(engine);
        let again = Engine::open(dir.path(), config)
            .unwrap_or_else(|e| panic!("next_seq {next_seq}: the log does not reopen: {e}"));
        assert_eq!(again.read_to_vec(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        again.close().unwrap();
        assert_eq!(
            seq.get(),
            1,
            "next_seq {next_seq}: the log starts at batch 1"
        );
    }
}
