//! A retirement whose directory sync failed: the segment's name is gone and the engine has
//! forgotten it, but until a directory sync succeeds a crash could bring it back with the
//! keys the call forgot. The next retirement syncs the directory first, even when it has
//! nothing of its own to remove.

use crate::hooks::segment;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, Seq};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Fails the first directory sync that follows a segment's removal; counts every directory
/// sync.
#[derive(Default)]
struct FailFirstRetireSync {
    removed: AtomicBool,
    failed: AtomicBool,
    dir_syncs: AtomicU64,
}

impl Io for FailFirstRetireSync {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if op != IoOp::SyncDir {
            return Ok(());
        }
        self.dir_syncs.fetch_add(1, Ordering::SeqCst);
        if self.removed.load(Ordering::SeqCst) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        if op == IoOp::Remove && segment(path) {
            self.removed.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_retirement_after_a_failed_directory_sync_syncs_the_directory_first() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailFirstRetireSync::default());
    let config = Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        ..Config::default()
    };
    let engine = Engine::open_with_io(tmp.path(), config, hook.clone()).expect("open");
    engine
        .put(b"old", b"in the first segment")
        .unwrap()
        .wait()
        .unwrap();
    // Enough batches for two more segments.
    let mut last = Seq::new(1);
    for i in 0..40u32 {
        let key = format!("k{i:03}");
        last = engine
            .put(key.as_bytes(), &[7u8; 4000])
            .unwrap()
            .wait()
            .unwrap();
    }
    let segments = crate::common::log::segment_files(tmp.path());
    assert!(segments.len() >= 3, "{segments:?}");
    assert!(last.get() > segments[1].0);
    // Only the first segment goes.
    let before = Seq::new(segments[1].0);
    let e = engine
        .retire_before(before)
        .expect_err("the directory sync fails");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(hook.failed.load(Ordering::SeqCst));
    assert!(
        engine.read(b"old").unwrap().is_none(),
        "the removed segment is forgotten"
    );
    // The retry has nothing of the first segment left to remove, but its removal is not
    // durable yet: the directory is synced before anything else.
    let syncs_before = hook.dir_syncs.load(Ordering::SeqCst);
    let retried = engine.retire_before(before).expect("retried");
    assert_eq!(retried.segments, 0);
    assert!(
        hook.dir_syncs.load(Ordering::SeqCst) > syncs_before,
        "the retry synced the directory"
    );
    engine.close().unwrap();
}
