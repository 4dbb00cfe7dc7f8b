//! `PointInTime` repair removes the segments after the cut newest first, each removal made
//! durable, and only then zeroes the cut segment's tail (issue item 9): a crash, or an error,
//! at any step leaves a prefix of the log with the damage still in place, so the next open
//! decides again instead of finding a gap or a cut it cannot explain.

use crate::common::log::segment_files;
use crate::common::WAIT_MAX;
use crate::hooks::{is, segment, Inject};
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

/// A damaged log in `dir`: five or more segments, closed cleanly, and a byte of the second
/// frame of the second segment flipped. Returns the segments, and the damaged segment's bytes.
fn damaged_log(dir: &Path) -> (Vec<(u64, std::path::PathBuf)>, Vec<u8>) {
    let engine = Engine::open(dir, config(RecoveryMode::default())).unwrap();
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
    let segs = segment_files(dir);
    assert!(segs.len() >= 5);
    // Damage the second frame of the second segment.
    let cut_path = segs[1].1.clone();
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
    (segs, damaged)
}

#[test]
fn point_in_time_removes_newest_first_and_zeroes_last() {
    let dir = tempfile::tempdir().unwrap();
    let (segs, damaged) = damaged_log(dir.path());
    let (cut_id, cut_path) = segs[1].clone();

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

/// Every file of `dir` but the lock, by name, with its bytes.
fn files_by_name(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let files = crate::common::log::dir_contents(dir);
    let name = |p: &Path| p.file_name().unwrap().to_owned();
    files.into_iter().map(|(p, b)| (name(&p), b)).collect()
}

/// The removal of each segment after the cut is made durable before the next one goes: if
/// the directory sync after the first (or the second) removal fails, the open fails naming
/// the directory, the log is a prefix of itself with the damage still in place (the default
/// mode still refuses it), and a later point-in-time open with healthy I/O reaches the same
/// log, byte for byte, as one that never failed.
#[test]
fn a_failed_directory_sync_after_a_dropped_segment_fails_the_open() {
    for nth in [1u64, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (segs, damaged) = damaged_log(dir.path());
        let (cut_id, cut_path) = segs[1].clone();
        // The same damaged log, repaired with no failure: what the repair must reach.
        let control = tempfile::tempdir().unwrap();
        for (name, bytes) in files_by_name(dir.path()) {
            std::fs::write(control.path().join(name), bytes).unwrap();
        }

        let hook = Inject::new(IoOp::SyncDir, is(dir.path()))
            .right_after(IoOp::Remove, segment)
            .nth(nth);
        let hook = Arc::new(hook);
        let r = Engine::open_with_io(dir.path(), config(RecoveryMode::PointInTime), hook.clone());
        match r {
            Err(Error::Io { op, path, .. }) => {
                assert_eq!(
                    (op, path.as_path()),
                    ("fsync directory", dir.path()),
                    "{nth}"
                )
            }
            Err(e) => panic!("{nth}: expected the injected error, got {e}"),
            Ok(_) => panic!("{nth}: the open succeeded over the failed directory sync"),
        }
        assert_eq!(hook.failed(), 1, "{nth}");
        let n = nth as usize;
        assert_eq!(
            segment_files(dir.path()),
            segs[..segs.len() - n].to_vec(),
            "{nth}: the repair went on after the failed sync, or removed out of order"
        );
        assert!(
            std::fs::read(&cut_path).unwrap() == damaged,
            "{nth}: the cut segment's tail was zeroed after a failed step"
        );
        let r = Engine::open(dir.path(), config(RecoveryMode::default()));
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{nth}: {r:?}");

        let engine = Engine::open(dir.path(), config(RecoveryMode::PointInTime)).unwrap();
        let want = Engine::open(control.path(), config(RecoveryMode::PointInTime)).unwrap();
        assert_eq!(engine.len() as u64, cut_id, "{nth}");
        assert_eq!(
            crate::common::engine_state(&engine),
            crate::common::engine_state(&want),
            "{nth}"
        );
        let cut = engine.open_report().truncated.clone().unwrap();
        let want_cut = want.open_report().truncated.clone().unwrap();
        assert_eq!(
            (cut.path.file_name(), cut.offset),
            (want_cut.path.file_name(), want_cut.offset)
        );
        engine.close().unwrap();
        want.close().unwrap();
        assert!(
            files_by_name(dir.path()) == files_by_name(control.path()),
            "{nth}: the log differs from the one a repair without failure reaches"
        );
    }
}

/// A segment file cut shorter than a header (by hand, or a copy that stopped): the engine
/// never makes one, so it is damage at the header, not a torn tail. `PointInTime` ends the
/// log before it (the segments after it go too) and says so; the other modes refuse with
/// the file and offset 0, changing nothing; a reader and the check agree. It used to be
/// refused under every mode (the file could not be mapped).
#[test]
fn a_segment_shorter_than_its_header_is_cut_by_point_in_time_only() {
    for victim in [0usize, 1, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let base = config(RecoveryMode::TolerateCorruptedTail);
        let engine = Engine::open(tmp.path(), base.clone()).unwrap();
        let mut firsts = Vec::new();
        for i in 0..60u32 {
            let seq = engine.put(format!("k{i:02}").as_bytes(), &[i as u8; 3000]);
            firsts.push(seq.unwrap().wait_timeout(WAIT_MAX).unwrap());
        }
        engine.close().unwrap();
        drop(engine);
        let files = segment_files(tmp.path());
        assert_eq!(files.len(), 3, "{files:?}");
        let (first_cut, path) = files[victim].clone();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();
        for mode in [
            RecoveryMode::TolerateCorruptedTail,
            RecoveryMode::AbsoluteConsistency,
        ] {
            let e = Engine::open(tmp.path(), config(mode)).expect_err("refused");
            assert!(
                matches!(&e, Error::Corrupt { path: p, offset: 0, .. } if *p == path),
                "{mode:?}: {e:?}"
            );
            assert_eq!(segment_files(tmp.path()), files, "{mode:?} changed the log");
        }
        let check = mergelog::LogReader::check(
            tmp.path(),
            RecoveryMode::PointInTime,
            mergelog::Durability::Sync,
        )
        .unwrap();
        assert!(
            format!("{check:?}").contains("shorter than its header"),
            "{check:?}"
        );
        let engine = Engine::open(tmp.path(), config(RecoveryMode::PointInTime)).unwrap();
        let cut = engine
            .open_report()
            .truncated
            .clone()
            .expect("a cut reported");
        assert_eq!((cut.path, cut.offset), (path.clone(), 0));
        // Every put before the short segment is there, none from it on.
        for (i, seq) in firsts.iter().enumerate() {
            let got = engine.read(format!("k{i:02}").as_bytes()).unwrap();
            assert_eq!(
                got.is_some(),
                seq.get() < first_cut,
                "k{i:02} at batch {seq}"
            );
        }
        assert_eq!(segment_files(tmp.path()), files[..victim.max(1)].to_vec());
        engine
            .put(b"after", b"v")
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        engine.close().unwrap();
    }
}

/// A `PointInTime` open that drops every segment (the only one's header is bad) removes it,
/// then makes the first segment of the log that goes on, named after the dropped one's first
/// batch. If that creation fails (or a crash comes first), the directory holds no segment,
/// only the `ids` file of the segments retired before, and the clean-close mark is gone: the
/// next open started the log again at batch 1, giving numbers the carried ids name (a retry
/// of such a request was answered "duplicate, logged in batch n" while batch n logged
/// something else). Found by the fuzz target `side_files` (session 38): the log now goes on
/// past every batch the carried ids name.
#[test]
fn a_log_without_segments_goes_on_past_the_batches_its_carried_ids_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = |recovery| Config {
        request_ids: mergelog::IdHorizon {
            ids: 1000,
            age: None,
        },
        ..self::config(recovery)
    };
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).unwrap();
    let mut carried = Vec::new();
    let mut i = 0u128;
    while engine.segments().len() < 2 {
        let seq = engine
            .put_with_id(i, format!("key-{i}").as_bytes(), &[b'v'; 3000])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap()
            .seq();
        carried.push((i, seq));
        i += 1;
    }
    let kept = engine.segments()[1].first_seq;
    engine.retire_before(kept).unwrap();
    engine.close().unwrap();
    drop(engine);
    let last_carried = carried
        .iter()
        .filter(|(_, s)| *s < kept)
        .map(|(_, s)| s.get())
        .max()
        .unwrap();
    // The one segment left gets a bad header.
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0].1)
        .unwrap();
    f.write_all_at(b"XX", 0).unwrap();
    drop(f);
    // `PointInTime` drops it; making the next first segment fails.
    let fail = Arc::new(Inject::new(IoOp::Create, |_| true));
    let failed = Engine::open_with_io(dir.path(), config(RecoveryMode::PointInTime), fail);
    assert!(failed.is_err(), "the creation was to fail");
    assert!(
        segment_files(dir.path()).is_empty(),
        "the segment was dropped"
    );

    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).unwrap();
    let seq = engine
        .put(b"after", b"x")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    assert!(
        seq.get() > last_carried,
        "the log went on at batch {seq}, which the carried ids name (up to batch {last_carried})"
    );
    // A retry of a carried request is still a duplicate of its batch.
    let (id, at) = carried[0];
    assert_eq!(engine.request_id_seq(id), Some(at));
    engine.close().unwrap();
}
