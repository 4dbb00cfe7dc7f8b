//! The spare segment files an earlier run left (prepared `prep-<n>.tmp`, pooled
//! `recycle-<n>.tmp`): a writable open adopts those it keeps and removes the rest, then syncs
//! the directory (`dir::adopt_spares`), before it reads the clean-close mark. If a removal
//! fails, or the directory sync after the removals, the open fails naming it; no segment and
//! not the mark is touched (the mark, still describing the log, is trusted by the next open),
//! and the next open with healthy I/O removes what is left and holds every acknowledged put.

use crate::common::log::{dir_contents, pool_files, prepared_files};
use crate::common::WAIT_MAX;
use crate::hooks::{is, Inject};
use mergelog::internals::io::IoOp;
use mergelog::{Config, Engine, Error, WindowPolicy};
use std::sync::Arc;

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        window: WindowPolicy::Immediate,
        recycle_segments: 1,
        ..Config::default()
    }
}

#[test]
fn a_failed_removal_of_a_spare_at_open_fails_the_open_and_loses_nothing() {
    let segment_bytes = config().segment_bytes as usize;
    // (spare, the operation failed, on what, the error's operation)
    let cases = [
        ("prep-90.tmp", IoOp::Remove, "spare", "remove spare segment"),
        ("prep-90.tmp", IoOp::SyncDir, "dir", "fsync directory"),
        (
            "recycle-91.tmp",
            IoOp::Remove,
            "spare",
            "remove spare segment",
        ),
        ("recycle-91.tmp", IoOp::SyncDir, "dir", "fsync directory"),
    ];
    for (name, op, on, what) in cases {
        let ctx = format!("{name}, {op:?}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let engine = Engine::open(&dir, config()).unwrap();
        let puts: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
            .map(|i| {
                (
                    format!("key-{i}").into_bytes(),
                    vec![b'a' + (i % 26) as u8; 3000],
                )
            })
            .collect();
        for (k, v) in &puts {
            engine.put(k, v).unwrap().wait_timeout(WAIT_MAX).unwrap();
        }
        engine.close().unwrap();
        assert!(dir.join("CLEAN").exists());
        // What a crash left: a short prepared file (its zero fill cut off), and pool files
        // beyond the one kept (the first of the right size is kept: this one goes).
        let spare = dir.join(name);
        if name.starts_with("prep") {
            std::fs::write(&spare, vec![0u8; 100]).unwrap();
        } else {
            std::fs::write(dir.join("recycle-90.tmp"), vec![0u8; segment_bytes]).unwrap();
            std::fs::write(&spare, vec![0u8; segment_bytes]).unwrap();
        }
        let before = dir_contents(&dir);

        let hook = match on {
            "spare" => Inject::new(op, is(&spare)),
            _ => Inject::new(op, is(&dir)).right_after(IoOp::Remove, is(&spare)),
        };
        let hook = Arc::new(hook);
        match Engine::open_with_io(&dir, config(), hook.clone()) {
            Err(Error::Io { op: o, path, .. }) => {
                let named = if on == "spare" { &spare } else { &dir };
                assert_eq!((o, &path), (what, named), "{ctx}");
            }
            Err(e) => panic!("{ctx}: expected the injected error, got {e}"),
            Ok(_) => panic!("{ctx}: the open succeeded over the injected failure"),
        }
        assert_eq!(hook.failed(), 1, "{ctx}");
        // Nothing but the spare's removal (if it was made) changed.
        let expected: Vec<_> = match op {
            IoOp::Remove => before.clone(),
            _ => before.iter().filter(|f| f.0 != spare).cloned().collect(),
        };
        assert!(
            dir_contents(&dir) == expected,
            "{ctx}: changed the directory"
        );

        let engine = Engine::open(&dir, config()).expect("healthy open");
        assert!(
            !spare.exists(),
            "{ctx}: the spare outlived the healthy open"
        );
        assert_eq!(
            engine.open_report().tail_rewritten,
            None,
            "{ctx}: the mark, still describing the log, was not trusted"
        );
        for (k, v) in &puts {
            let got = engine.read_to_vec(k).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&v[..]),
                "{ctx}: an acknowledged put lost"
            );
        }
        assert_eq!(engine.len(), puts.len(), "{ctx}");
        assert!(
            prepared_files(&dir).len() <= 1 && pool_files(&dir).len() <= 1,
            "{ctx}"
        );
        engine.put(b"after", b"x").unwrap().wait().unwrap();
        engine.close().unwrap();
    }
}
