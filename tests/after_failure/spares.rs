//! The spare segment files an earlier run left (prepared `prep-<n>.tmp`, pooled
//! `recycle-<n>.tmp`): after a clean end a writable open adopts those it keeps and removes the
//! rest, then syncs the directory (`dir::adopt_spares`), before it removes the clean-close
//! mark; after an unclean end it removes them all (one may be a file whose activation a power
//! loss undid, holding frames of the log's next batches). If a removal fails, or the
//! directory sync after the removals, the open fails naming it; no segment and not the mark
//! is touched (the mark, still describing the log, is trusted by the next open), and the next
//! open with healthy I/O removes what is left and holds every acknowledged put.

use crate::common::log::{dir_contents, pool_files, prepared_files, segment_files};
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

/// What a power loss during a roll can leave: the file being activated as segment `m` still
/// under its spare name (the rename undone), holding the header and frames of batches `m`
/// on, none acknowledged. The log ends before `m`, so the next roll makes a segment `m` again.
/// Had the open adopted that file, its old frames would lie behind the new ones, with the
/// very batch sequences the new segment's frames take, and a crash before the new header and
/// frames were durable could replay them: batches of the earlier run that the recovery in
/// between had dropped. So after an unclean end no spare is kept, and no segment from `m` on
/// holds a byte of that file. (Simulated: the last segment of a cleanly closed log is renamed
/// to a prepared file's name and the mark removed.)
#[test]
fn no_spare_is_kept_after_an_unclean_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let engine = Engine::open(&dir, config()).unwrap();
    let put = |engine: &Engine, k: String, v: &[u8]| {
        engine
            .put(k.as_bytes(), v)
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    };
    // Fill until the log rolls, then write the marked values into the new last segment.
    let mut i = 0;
    while engine.segments().len() < 3 {
        put(&engine, format!("filler-{i}"), &[b'f'; 3000]);
        i += 1;
    }
    let last = engine.segments().last().unwrap().first_seq.get();
    for j in 0..12 {
        put(&engine, format!("marked-{j}"), &[b'#'; 3000]);
    }
    assert_eq!(engine.segments().last().unwrap().first_seq.get(), last);
    engine.close().unwrap();
    let (id, path) = segment_files(&dir).pop().unwrap();
    assert_eq!(id, last);
    // The crash came at the roll, before the next segment's preparation began: the file
    // being activated is the only prepared one.
    for prepared in prepared_files(&dir) {
        std::fs::remove_file(prepared).unwrap();
    }
    std::fs::rename(&path, dir.join("prep-77.tmp")).unwrap();
    std::fs::remove_file(dir.join("CLEAN")).unwrap();

    let engine = Engine::open(&dir, config()).unwrap();
    assert!(
        engine.open_report().tail_rewritten.is_some(),
        "an unclean end"
    );
    // (A prepared file with a higher number may be this run's own, made in the background.)
    assert!(
        !dir.join("prep-77.tmp").exists(),
        "the spare was kept after an unclean end"
    );
    // The next run rolls to segment `last` again and writes a little into it.
    let mut n = 0;
    while engine.segments().last().unwrap().first_seq.get() < last {
        put(&engine, format!("again-{n}"), &[b'a'; 3000]);
        n += 1;
    }
    put(&engine, "after".into(), b"x");
    engine.close().unwrap();
    for (id, path) in segment_files(&dir)
        .into_iter()
        .filter(|(id, _)| *id >= last)
    {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w.iter().all(|&b| b == b'#')),
            "segment {id} holds bytes of the file whose activation was undone"
        );
    }
}
