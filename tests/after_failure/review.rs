//! Review finding (r1): an open whose tail repair (`Segment::zero_tail`) fails its sync leaves
//! zeros in the page cache that the disk does not hold. The next open in the same boot reads
//! the cache, finds a clean end, and rewrites only `[0, end of frames + 32)` rounded up to a
//! page (`Engine::open_with_io`); `zero_tail` itself skips a tail the cache shows as zeros.
//! The old bytes past the rewritten page stay on disk and come back at a power loss: here
//! the frames a `PointInTime` cut removed (sequences 16 and more past the cut), so the next
//! open after a plain power loss refuses with a false `DamagedHistory`, although every
//! acknowledged put is on disk.

use super::recovery_common::power::{lose_power, PowerLossIo};
use crate::common::{segment_files, WAIT_MAX};
use mergelog::internals::io::Io;
use mergelog::{Config, Durability, Engine, RecoveryMode, WindowPolicy};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::os::unix::fs::FileExt;
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
    f.write_all_at(&[image[off + 40] ^ 4], off as u64 + 40).unwrap();
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
    // Power loss.
    io.cut_now();
    let _ = engine.close();
    drop(engine);
    lose_power(&io, &mut StdRng::seed_from_u64(1), 0.5, 0.5);

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
                    engine.read_to_vec(format!("new-{i:03}").as_bytes()).unwrap(),
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
            engine.read_to_vec(format!("old-{i:03}").as_bytes()).unwrap(),
            None,
            "batch {} was cut by PointInTime, yet it is back after a power loss ({report:?})",
            i + 1
        );
    }
}
