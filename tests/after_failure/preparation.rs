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
