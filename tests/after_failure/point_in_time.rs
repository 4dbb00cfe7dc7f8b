//! `PointInTime` repair removes the segments after the cut newest first, each removal made
//! durable, and only then zeroes the cut segment's tail (issue item 9): a crash, or an error,
//! at any step leaves a prefix of the log with the damage still in place, so the next open
//! decides again instead of finding a gap or a cut it cannot explain.

use crate::common::log::segment_files;
use crate::common::WAIT_MAX;
use mergelog::internals::format::FRAME_HEADER_LEN;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, RecoveryMode, WindowPolicy};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn config(recovery: RecoveryMode) -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        window: WindowPolicy::Immediate,
        recovery,
        ..Config::default()
    }
}

/// Fails the `n`th removal (and counts the writes into segment files).
struct FailNthRemove {
    n: u64,
    removes: AtomicU64,
}

impl Io for FailNthRemove {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if op == IoOp::Remove && self.removes.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

#[test]
fn point_in_time_removes_newest_first_and_zeroes_last() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).unwrap();
    let mut i = 0;
    while engine.segments().len() < 5 {
        engine
            .put(format!("key-{i}").as_bytes(), &[b'v'; 3000])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        i += 1;
    }
    engine.close().unwrap();
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 5);
    // Damage the second frame of the second segment.
    let (cut_id, cut_path) = segs[1].clone();
    let image = std::fs::read(&cut_path).unwrap();
    let first_len = {
        let mergelog::internals::format::Decoded::Frame(f) =
            mergelog::internals::format::decode_frame(&image, 64).unwrap()
        else {
            panic!("no first frame")
        };
        f.len as u64
    };
    let damage_at = 64 + first_len + FRAME_HEADER_LEN as u64 + 3;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cut_path)
        .unwrap();
    file.write_all_at(&[0xA5], damage_at).unwrap();
    let damaged = std::fs::read(&cut_path).unwrap();

    // The second removal fails: the repair stops there.
    let io = Arc::new(FailNthRemove {
        n: 2,
        removes: AtomicU64::new(0),
    });
    let r = Engine::open_with_io(dir.path(), config(RecoveryMode::PointInTime), io.clone());
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    let left = segment_files(dir.path());
    assert_eq!(
        left,
        segs[..segs.len() - 1].to_vec(),
        "only the newest segment went: the log is still a prefix of itself"
    );
    assert!(
        std::fs::read(&cut_path).unwrap() == damaged,
        "the cut segment's tail was zeroed before the later segments were gone"
    );
    // The default mode still refuses (damage before the last segment), nothing lost.
    let r = Engine::open(dir.path(), config(RecoveryMode::default()));
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");

    // A point-in-time open that can finish: the log ends before the damaged frame.
    let engine = Engine::open(dir.path(), config(RecoveryMode::PointInTime)).unwrap();
    assert_eq!(segment_files(dir.path()), segs[..2].to_vec());
    let cut = engine.open_report().truncated.clone().unwrap();
    assert_eq!(cut.path, cut_path);
    // Every batch before the damaged one: the whole first segment and one frame.
    assert_eq!(engine.len() as u64, cut_id);
    engine.close().unwrap();
}
