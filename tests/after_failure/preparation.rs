//! The next segment is zero-filled in the background once the active one is an eighth full.
//! If that fails (a disk full at that moment), nothing was written to the file that anyone
//! relies on: the roll makes it again, and only if that fails too does the engine fail. A
//! transient full disk does not become a fatal failure much later.

use mergelog::internals::io::{Io, IoOp};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Fails, once, with ENOSPC the creation (and zero fill) of the first segment file prepared
/// ahead of need after open (`prep-<n>.tmp`, n >= 1: the background preparation).
#[derive(Default)]
struct FullDiskOnceAtPrep {
    failed: AtomicBool,
}

impl Io for FullDiskOnceAtPrep {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if op == IoOp::Create
            && name.starts_with("prep-")
            && name != "prep-0.tmp"
            && !self.failed.swap(true, Ordering::SeqCst)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

#[test]
fn a_full_disk_while_the_next_segment_is_prepared_does_not_fail_the_engine_once_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDiskOnceAtPrep::default());
    let engine = crate::hooks::open_small(tmp.path(), hook.clone());
    let mut results = Vec::new();
    for i in 0..40u32 {
        let key = format!("k{i:03}");
        let r = engine
            .put(key.as_bytes(), &[7u8; 4000])
            .and_then(|t| t.wait());
        results.push(r);
    }
    assert!(
        hook.failed.load(Ordering::SeqCst),
        "the preparation was never failed"
    );
    let failed: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .collect();
    assert!(
        engine.failure().is_none() && failed.is_empty(),
        "the engine failed at the roll after a transient ENOSPC of its spare: {:?}; first failed put: {:?}",
        engine.failure(),
        failed.first()
    );
    engine.close().unwrap();
}

/// Fails the first directory sync the background preparation makes (on its own thread).
#[derive(Default)]
struct FailPrepDirSync {
    failed: AtomicBool,
}

impl Io for FailPrepDirSync {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let prep = std::thread::current().name() == Some("mergelog-prep");
        if op == IoOp::SyncDir && prep && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// A failed directory sync is never retried as if a later one covered it (it may have been
/// the report of another change of the directory's, a roll's rename waiting for its segment's
/// first sync): one in the background preparation still fails the engine at the roll.
#[test]
fn a_failed_directory_sync_of_the_preparation_still_fails_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailPrepDirSync::default());
    let engine = crate::hooks::open_small(tmp.path(), hook.clone());
    let mut failure = None;
    for i in 0..40u32 {
        let key = format!("k{i:03}");
        if let Err(e) = engine
            .put(key.as_bytes(), &[7u8; 4000])
            .and_then(|t| t.wait())
        {
            failure = Some(e);
            break;
        }
    }
    assert!(
        hook.failed.load(Ordering::SeqCst),
        "the preparation was never failed"
    );
    let e = failure.expect("the roll failed");
    assert!(e.to_string().contains("fsync directory"), "{e}");
    assert!(engine.failure().is_some());
}

/// A full disk for new files: while `full`, the creation (and zero fill) of every prepared
/// segment file fails with ENOSPC. A retired file kept in the pool needs no room: reusing
/// it creates nothing.
#[derive(Default)]
struct FullDiskForNewFiles {
    full: AtomicBool,
    failed: std::sync::atomic::AtomicU64,
}

impl Io for FullDiskForNewFiles {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if op == IoOp::Create && name.starts_with("prep-") && self.full.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// The disk fills while the next segment is prepared (a new file: ENOSPC), then
/// `retire_before` makes room the way `recycle_segments` does, by moving old segments into
/// the pool. The roll then has a file that needs no room: it must take it, not zero-fill a
/// new one, fail again and fail the engine with retired files of its own on the disk.
#[test]
fn a_full_disk_at_the_preparation_rolls_into_a_file_a_retirement_put_in_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDiskForNewFiles::default());
    let config = mergelog::Config {
        recycle_segments: 2,
        ..crate::hooks::small_segments()
    };
    let engine =
        mergelog::Engine::open_with_io(tmp.path(), config.clone(), hook.clone()).expect("open");
    let mut n = 0u32;
    let mut put = |engine: &mergelog::Engine| {
        let key = format!("k{n:05}");
        n += 1;
        engine
            .put(key.as_bytes(), &[7u8; 4000])
            .and_then(|t| t.wait())
    };
    // Three segments, the third just begun: its successor is not being prepared yet.
    while engine.segments().len() < 3 {
        put(&engine).unwrap();
    }
    hook.full.store(true, Ordering::SeqCst);
    // A quarter of the segment: its successor's preparation starts (at an eighth) and fails.
    for _ in 0..4 {
        put(&engine).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hook.failed.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the preparation never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(engine.segments().len(), 3, "rolled before the retirement");
    let third = engine.segments()[2].first_seq;
    let retired = engine.retire_before(third).unwrap();
    assert_eq!((retired.segments, retired.recycled), (2, 2));
    // Past the roll.
    let mut first_failed = None;
    for _ in 0..20 {
        if let Err(e) = put(&engine) {
            first_failed = Some(e);
            break;
        }
    }
    assert!(
        first_failed.is_none() && engine.failure().is_none(),
        "the roll did not take a pooled file on a full disk: {first_failed:?}"
    );
    assert!(engine.segments().len() >= 2, "never rolled");
    assert!(engine.stats().segments.reused >= 1);
    engine.close().unwrap();
    drop(engine);
    let reopened = mergelog::Engine::open(tmp.path(), config).unwrap();
    assert_eq!(
        reopened
            .read(format!("k{:05}", n - 1).as_bytes())
            .unwrap()
            .as_deref(),
        Some(&[7u8; 4000][..])
    );
}
