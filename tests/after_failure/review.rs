//! Findings of a cold review of the after-failure work, each a test that failed before its
//! fix (`log::open::reestablish`, the checks in `recovery::later_frames`).
//!
//! An open whose tail repair (`Segment::zero_tail`) fails its sync leaves
//! zeros in the page cache that the disk does not hold. The next open in the same boot reads
//! the cache, finds a clean end, and rewrites only `[0, end of frames + 32)` rounded up to a
//! page (`Engine::open_with_io`); `zero_tail` itself skips a tail the cache shows as zeros.
//! The old bytes past the rewritten page stay on disk and come back at a power loss: here
//! the frames a `PointInTime` cut removed (sequences 16 and more past the cut), so the next
//! open after a plain power loss refuses with a false `DamagedHistory`, although every
//! acknowledged put is on disk.

use crate::common::log::segment_files;
use crate::common::power::{pull_the_plug, PowerLossIo};
use crate::common::WAIT_MAX;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Durability, Engine, RecoveryMode, WindowPolicy};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn config(recovery: RecoveryMode) -> Config {
    Config {
        segment_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        window: WindowPolicy::Immediate,
        durability: Durability::Sync,
        recovery,
        ..Config::default()
    }
}

/// Runs the scenario with `new_puts` acknowledged puts after the same-boot reopen; returns
/// the open after the power loss.
fn scenario(new_puts: usize) -> (tempfile::TempDir, mergelog::Result<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    // 60 frames of ~300 bytes: the later ones lie well past the first 4 KiB page.
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).unwrap();
    for i in 0..60 {
        engine
            .put(format!("old-{i:03}").as_bytes(), &[b'o'; 300])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    }
    engine.close().unwrap();
    // Media damage in batch 5 (a bit flip in its body).
    let seg = segment_files(dir.path()).pop().unwrap().1;
    let image = std::fs::read(&seg).unwrap();
    let mut off = 64usize;
    for _ in 0..4 {
        let body = u32::from_le_bytes(image[off + 8..off + 12].try_into().unwrap()) as usize;
        off += (32 + body + 7) & !7;
    }
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[image[off + 40] ^ 4], off as u64 + 40)
        .unwrap();
    drop(f);

    // The user accepts the loss: PointInTime. Its tail zeroing's msync (sync #1) fails.
    let io = Arc::new(PowerLossIo::failing_sync(1));
    let shared: Arc<dyn Io> = io.clone();
    let r = Engine::open_with_io(dir.path(), config(RecoveryMode::PointInTime), shared);
    assert!(r.is_err(), "the repair's sync failed, the open must fail");
    assert!(io.failed_sync().is_some());

    // Same boot: reopen through the same, now healthy, storage, still accepting the loss (the
    // clean-close mark is still there and says the log went on to batch 60); acknowledge
    // three puts.
    let shared: Arc<dyn Io> = io.clone();
    let engine = Engine::open_with_io(dir.path(), config(RecoveryMode::PointInTime), shared)
        .expect("reopen in the same boot");
    eprintln!("same-boot reopen: {:?}", engine.open_report());
    for i in 0..new_puts {
        engine
            .put(format!("new-{i:03}").as_bytes(), &[b'n'; 300])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .expect("acknowledged");
    }
    pull_the_plug(&io, engine, 1);

    let r = Engine::open(dir.path(), config(RecoveryMode::default()));
    (dir, r)
}

/// Three puts after the reopen: the stale frames lie past the rewritten page, behind zeros.
/// The open after a plain power loss refuses (false `DamagedHistory`: "would lose durable
/// batches 8..=60").
#[test]
fn a_failed_tail_repair_then_a_same_boot_reopen_refuses_after_power_loss() {
    let (_dir, r) = scenario(3);
    match r {
        Ok(engine) => {
            for i in 0..3 {
                assert_eq!(
                    engine
                        .read_to_vec(format!("new-{i:03}").as_bytes())
                        .unwrap(),
                    Some(vec![b'n'; 300]),
                    "acknowledged put new-{i:03} lost"
                );
            }
        }
        Err(e) => panic!("open after a plain power loss refused: {e}"),
    }
}

/// Eleven puts of the same size as the cut ones: the new chain ends past the rewritten page
/// exactly where the stale frame with the next sequence lies, and the open replays the
/// batches `PointInTime` cut (16..=60) after the acknowledged ones.
#[test]
fn a_failed_tail_repair_then_a_same_boot_reopen_resurrects_cut_batches() {
    let (_dir, r) = scenario(11);
    let engine = r.expect("open after the power loss");
    let report = engine.open_report().clone();
    for i in 4..60 {
        assert_eq!(
            engine
                .read_to_vec(format!("old-{i:03}").as_bytes())
                .unwrap(),
            None,
            "batch {} was cut by PointInTime, yet it is back after a power loss ({report:?})",
            i + 1
        );
    }
}

/// Review finding (r1): `recovery::later_frames` takes any CRC-valid frame image at any
/// 8-aligned offset past the damage as proof of durable history, including bytes inside the
/// body of the torn frame itself, i.e. a user's value. The last frame of a log (not yet
/// durable at a crash) holds a put whose value embeds a well-formed frame with a high batch
/// sequence; the crash leaves its first sector unwritten and a later page written (the kernel
/// writes pages back in any order). That is a torn tail, yet the open refuses with
/// `DamagedHistory`.
#[test]
fn a_value_that_embeds_a_frame_makes_a_torn_tail_look_like_damaged_history() {
    use mergelog::internals::format::{frame_len, record_len, FrameWriter, RecordOp, FLAG_SORTED};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..5 {
        engine
            .put(format!("k{i}").as_bytes(), b"v")
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    }
    // A frame image (say, a batch of another log that the application stores).
    let mut embedded = vec![0u8; frame_len(record_len(1, 1))];
    let mut w = FrameWriter::new(&mut embedded, 1_000_000, FLAG_SORTED);
    w.push(RecordOp::Put, b"a", b"b");
    w.finish(1);
    // Key "x": the value starts 40 bytes into the frame, 8-aligned; the image lies a page on.
    let mut value = vec![b'p'; 4800];
    value.extend_from_slice(&embedded);
    let last_off = {
        let seg = segment_files(dir.path()).pop().unwrap().1;
        let image = std::fs::read(&seg).unwrap();
        let mut off = 64usize;
        for _ in 0..5 {
            let body = u32::from_le_bytes(image[off + 8..off + 12].try_into().unwrap()) as usize;
            off += (32 + body + 7) & !7;
        }
        off as u64
    };
    engine
        .put(b"x", &value)
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    engine.close().unwrap();
    // The crash state: the last frame was written but not synced; its first sector never
    // reached the disk, its later pages did. No clean close.
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let seg = segment_files(dir.path()).pop().unwrap().1;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 512], last_off).unwrap();
    drop(f);
    match Engine::open(dir.path(), cfg) {
        Ok(engine) => {
            assert!(engine.open_report().truncated.is_some());
            assert_eq!(engine.read_to_vec(b"k4").unwrap(), Some(b"v".to_vec()));
        }
        Err(e) => panic!("a torn tail refused as damaged history: {e}"),
    }
}

/// Review finding (r1): an open after an unclean end rewrites and syncs only the last
/// segment ("every earlier segment was durable before the next one was started",
/// docs/FORMAT.md). That holds for a log written with `Durability::Sync`, not for one
/// written with `NoSync` (nothing is synced, not even at a roll or a close, and no
/// clean-close mark is written). Reopened with `Sync`, the engine acknowledges puts whose
/// replay depends on earlier segments still only in the page cache: after a power loss the
/// open refuses (damage in an earlier segment), and only `PointInTime`, cutting the
/// acknowledged puts, opens it.
#[test]
fn a_sync_reopen_of_a_nosync_log_acknowledges_puts_behind_unsynced_segments() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(PowerLossIo::new(u64::MAX, None));
    let small = |durability| Config {
        segment_bytes: 64 << 10,
        durability,
        ..config(RecoveryMode::default())
    };
    let shared: Arc<dyn Io> = io.clone();
    let engine = Engine::open_with_io(dir.path(), small(Durability::NoSync), shared).unwrap();
    let mut i = 0;
    while engine.segments().len() < 3 {
        engine
            .put(format!("bulk-{i:05}").as_bytes(), &[b'b'; 1000])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        i += 1;
    }
    engine.close().unwrap();
    // Same boot, now with syncs: acknowledge a put.
    let shared: Arc<dyn Io> = io.clone();
    let engine = Engine::open_with_io(dir.path(), small(Durability::Sync), shared).unwrap();
    engine
        .put(b"acked", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .expect("acknowledged");
    pull_the_plug(&io, engine, 7);
    match Engine::open(dir.path(), small(Durability::Sync)) {
        Ok(engine) => assert_eq!(
            engine.read_to_vec(b"acked").unwrap(),
            Some(b"1".to_vec()),
            "the acknowledged put is gone ({:?})",
            engine.open_report()
        ),
        Err(e) => panic!("the acknowledged put is unreachable after a power loss: {e}"),
    }
}

/// Review finding (session 11): with `NoSync` nothing is synced while the engine runs, but a
/// roll made the new segment's header and name durable (its activation syncs the
/// directory) before the old segment's frames. After a power loss the default recovery then
/// found damage before the last segment and refused the whole log, although `NoSync` only
/// promises to lose the writes since the last sync. A roll now syncs the segment it leaves:
/// the log opens, every segment but the last is whole, and only the tail is lost.
#[test]
fn a_nosync_log_opens_after_a_power_loss_with_only_its_tail_lost() {
    for seed in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(PowerLossIo::new(u64::MAX, None));
        let nosync = Config {
            segment_bytes: 64 << 10,
            durability: Durability::NoSync,
            ..config(RecoveryMode::default())
        };
        let shared: Arc<dyn Io> = io.clone();
        let engine = Engine::open_with_io(dir.path(), nosync.clone(), shared).unwrap();
        // Per put: the number of segments once it was acknowledged. A later roll leaves its
        // segment, so its put must be on disk.
        let mut acked = Vec::new();
        let mut i = 0;
        while engine.segments().len() < 4 {
            engine
                .put(format!("k-{i:05}").as_bytes(), &[b'v'; 900])
                .unwrap()
                .wait_timeout(WAIT_MAX)
                .unwrap();
            acked.push(engine.segments().len());
            i += 1;
        }
        let last = engine.segments().len();
        pull_the_plug(&io, engine, seed);
        let engine = match Engine::open(dir.path(), nosync) {
            Ok(engine) => engine,
            Err(e) => panic!("seed {seed}: a NoSync log refused after a power loss: {e}"),
        };
        for (i, &segments) in acked.iter().enumerate() {
            if segments < last {
                let key = format!("k-{i:05}");
                assert_eq!(
                    engine.read_to_vec(key.as_bytes()).unwrap().as_deref(),
                    Some(&[b'v'; 900][..]),
                    "seed {seed}: {key}, written before a roll, is gone"
                );
            }
        }
    }
}

/// The sync a `NoSync` roll makes is a sync like any other: when it fails, the engine fails
/// (the window that needed the roll, and every later call, report it) and nothing is written
/// into the new segment.
#[test]
fn a_nosync_roll_whose_sync_fails_fails_the_engine() {
    /// Fails every sync of a segment file (with `NoSync`, only a roll's) and counts them.
    struct FailSegmentSync(std::sync::atomic::AtomicU64);
    impl Io for FailSegmentSync {
        fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
            if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Err(std::io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FailSegmentSync(Default::default()));
    let nosync = Config {
        segment_bytes: 64 << 10,
        durability: Durability::NoSync,
        ..config(RecoveryMode::default())
    };
    let shared: Arc<dyn Io> = io.clone();
    let engine = Engine::open_with_io(dir.path(), nosync, shared).unwrap();
    let mut acknowledged = 0;
    let failure = loop {
        let r = engine
            .put(format!("k-{acknowledged:05}").as_bytes(), &[b'v'; 900])
            .and_then(|t| t.wait_timeout(WAIT_MAX));
        match r {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
        assert!(acknowledged < 1000, "no roll failed");
    };
    assert_eq!(
        io.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "failed without the roll's sync: {failure}"
    );
    assert_eq!(
        engine.segments().len(),
        1,
        "a frame went into a new segment"
    );
    let later = engine
        .put(b"later", b"x")
        .and_then(|t| t.wait_timeout(WAIT_MAX));
    assert!(later.is_err(), "a put after the failure was acknowledged");
    assert!(acknowledged > 0);
}
