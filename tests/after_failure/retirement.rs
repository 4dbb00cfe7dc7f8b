//! A retirement whose directory sync failed: the segment's name is gone and the engine has
//! forgotten it, but a crash could bring it back with the keys the call forgot, and no later
//! sync may be taken to cover the failed one. As after any failed sync, the engine fails:
//! the call and every later write say so, reads go on, and a reopen holds the log.

use crate::hooks::segment;
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Engine, Error, Seq};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Fails the first directory sync that follows a segment's removal.
#[derive(Default)]
struct FailFirstRetireSync {
    removed: AtomicBool,
    failed: AtomicBool,
}

impl Io for FailFirstRetireSync {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if op != IoOp::SyncDir {
            return Ok(());
        }
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
fn a_failed_directory_sync_in_a_retirement_fails_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailFirstRetireSync::default());
    let config = crate::hooks::small_segments();
    let engine = crate::hooks::open_small(tmp.path(), hook.clone());
    engine
        .put(b"old", b"in the first segment")
        .unwrap()
        .wait()
        .unwrap();
    // Enough batches for two more segments.
    for i in 0..40u32 {
        let key = format!("k{i:03}");
        engine
            .put(key.as_bytes(), &[7u8; 4000])
            .unwrap()
            .wait()
            .unwrap();
    }
    let segments = crate::common::log::segment_files(tmp.path());
    assert!(segments.len() >= 3, "{segments:?}");
    // Only the first segment goes.
    let e = engine
        .retire_before(Seq::new(segments[1].0))
        .expect_err("the directory sync fails");
    assert!(
        matches!(&e, Error::Failed(cause) if matches!(**cause, Error::Io { .. })),
        "{e:?}"
    );
    assert!(hook.failed.load(Ordering::SeqCst));
    assert!(engine.failure().is_some(), "the failure is sticky");
    match engine.put(b"after", b"the failed sync") {
        Err(Error::Failed(_)) => {}
        other => panic!("a put after the failed directory sync gave {other:?}"),
    }
    assert!(matches!(
        engine.retire_before(Seq::new(segments[2].0)),
        Err(Error::Failed(_))
    ));
    // Reads of the durable state go on: the removed segment is forgotten.
    assert!(engine.read(b"old").unwrap().is_none());
    assert!(engine.read(b"k039").unwrap().is_some());
    let readable = |engine: &Engine| -> Vec<u32> {
        (0..40u32)
            .filter(|i| {
                engine
                    .read(format!("k{i:03}").as_bytes())
                    .unwrap()
                    .is_some()
            })
            .collect()
    };
    let seen = readable(&engine);
    assert!(matches!(engine.close(), Err(Error::Failed(_))));
    drop(engine);
    // The removal did happen here: a reopen holds what the engine showed.
    let engine = Engine::open(tmp.path(), config).expect("reopen");
    assert!(engine.read(b"old").unwrap().is_none());
    assert_eq!(readable(&engine), seen);
    engine.close().unwrap();
}
