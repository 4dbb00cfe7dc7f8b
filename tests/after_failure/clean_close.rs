//! Reopening after an unclean end re-establishes what the disk holds (issue item 1, the part
//! that needs no power-loss model), and the bound on frames written but not yet durable that
//! recovery relies on (item 2).
//!
//! After a failed `fdatasync` the kernel may keep the pages it could not write cached and
//! clean. A writable open that follows an end without a clean-close mark (a crash, or a
//! failure: a failed engine writes no mark) therefore writes the last segment's valid bytes
//! again from the cache and syncs them before it accepts a write; after a clean close it
//! trusts the cache. `reopen_after_eio` checks the whole story under the power-loss model.

use crate::common::WAIT_MAX;
use mergelog::internals::format::{SEGMENT_HEADER_LEN, UNDURABLE_FRAMES_MAX};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, WindowPolicy};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// durable: many producers, tiny windows, slow syncs. Today's pipeline (a job channel of one)
/// stays within the bound even without `Flusher::bound_undurable`; this test guards the
/// invariant recovery relies on against a deeper pipeline: with a channel of 64 and no wait it
/// saw 36 frames.
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
