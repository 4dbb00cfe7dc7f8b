//! The `kv_wal` example's store (`examples/kv_wal/store.rs`, included here as it is): its
//! checkpoint file refused when damaged, a checkpoint and a log that do not belong together
//! refused, and writes from many threads applied in the log's order. Its behaviour under
//! SIGKILL is `kv_wal_crash.rs`. (Apart from it because these close and reopen a store while
//! that test spawns processes: a child holds the parent's open files, the log's lock among
//! them, from its fork until its exec.)

#![allow(clippy::disallowed_methods)]

mod common;
#[allow(dead_code)]
#[path = "../examples/kv_wal/store.rs"]
mod store;

use common::model::mixed_key;
use common::{env_u64, State};
use mergelog::Config;
use std::path::Path;
use store::{Options, Store};

fn options() -> Options {
    Options {
        engine: Config {
            segment_bytes: 64 << 10,
            batch_bytes_max: 8 << 10,
            ring_bytes: 1 << 20,
            ..Config::default()
        },
        checkpoint_every_writes: 400,
        checkpoint_every_bytes: u64::MAX,
        on_checkpoint_step: None,
    }
}

/// A store in `dir` holding `writes` overwrites of a few keys, checkpointed, then one more
/// write after the checkpoint; returns its state.
fn checkpointed_store(dir: &Path, writes: usize) -> State {
    let store = Store::open(dir, options()).expect("open");
    for i in 0..writes {
        store
            .put(&mixed_key(i % 5), format!("v{i}").as_bytes())
            .expect("put");
    }
    store.delete(&mixed_key(0)).expect("delete");
    assert!(store.checkpoint().expect("checkpoint").get() > 0);
    store.put(b"after", b"the checkpoint").expect("put");
    let state = store.scan(b"", usize::MAX).into_iter().collect();
    store.close().expect("close");
    state
}

#[test]
fn a_damaged_checkpoint_is_refused_and_an_unfinished_one_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let state = checkpointed_store(&path, 50);
    let file = path.join(store::CHECKPOINT);
    let good = std::fs::read(&file).expect("read checkpoint");

    // A leftover `checkpoint.tmp` (a crash while writing one) is not read, and is removed.
    let tmp = path.join(store::CHECKPOINT_TMP);
    std::fs::write(&tmp, &good[..good.len() / 2]).expect("write tmp");
    let store = Store::open(&path, options()).expect("open with a torn checkpoint.tmp");
    let got: State = store.scan(b"", usize::MAX).into_iter().collect();
    assert_eq!(got, state);
    assert_eq!(
        store.recovered().writes,
        1,
        "only the write after the checkpoint replays"
    );
    store.close().expect("close");
    assert!(!tmp.exists(), "the unfinished checkpoint was not removed");

    // Torn (every length short of the whole), flipped bits, garbage: a clear error, no panic.
    let mut damaged: Vec<(String, Vec<u8>)> = (0..good.len())
        .step_by(7)
        .map(|n| (format!("cut to {n} bytes"), good[..n].to_vec()))
        .collect();
    for at in [0, 8, 16, 24, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        damaged.push((format!("bit flipped at {at}"), b));
    }
    damaged.push(("a longer file".into(), [&good[..], b"more"].concat()));
    for (what, bytes) in damaged {
        std::fs::write(&file, &bytes).expect("write checkpoint");
        match Store::open(&path, options()) {
            Err(store::Error::Corrupt { path: p, reason }) => {
                assert_eq!(p, file, "{what}: names the wrong file");
                assert!(
                    reason.contains("checkpoint"),
                    "{what}: unclear reason {reason:?}"
                );
            }
            Err(e) => panic!("{what}: wrong error {e}"),
            Ok(_) => panic!("{what}: a damaged checkpoint was accepted"),
        }
    }
    // The log was not touched by the refusals: the good checkpoint opens as before.
    std::fs::write(&file, &good).expect("restore checkpoint");
    let store = Store::open(&path, options()).expect("open");
    let got: State = store.scan(b"", usize::MAX).into_iter().collect();
    assert_eq!(got, state);
    store.close().expect("close");
}

#[test]
fn a_checkpoint_and_log_that_do_not_belong_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    // 3,000 writes: well past a few segments, so that the checkpoint retires history.
    checkpointed_store(&path, 3_000);
    let store = Store::open(&path, options()).expect("open");
    let first = store.engine().segments()[0].first_seq;
    assert!(first.get() > 1, "the checkpoint retired nothing: {first:?}");
    store.close().expect("close");

    // Without its checkpoint, the log's retired history is missing: refused, not opened
    // as a store that lost writes.
    std::fs::rename(path.join(store::CHECKPOINT), dir.path().join("saved")).expect("rename");
    match Store::open(&path, options()) {
        Err(store::Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("the batches between are gone"), "{reason}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a log whose history is retired, without its checkpoint"),
    }
    // A checkpoint of a longer history than this log's is refused too.
    let other = dir.path().join("other");
    checkpointed_store(&other, 10);
    std::fs::rename(dir.path().join("saved"), other.join(store::CHECKPOINT)).expect("rename");
    match Store::open(&other, options()) {
        Err(store::Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("lost durable batches"), "{reason}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a checkpoint ahead of its log"),
    }
    assert!(matches!(
        Store::open(
            &path,
            Options {
                checkpoint_every_writes: 0,
                ..options()
            }
        ),
        Err(store::Error::InvalidOptions(_))
    ));
}

/// Writers on several threads overwrite the same few keys, so that writes to one key share
/// a batch and their waiters wake in any order: the table must still end as the log does
/// (the engine's own index holds the log's last write per key), and as a reopen replays it.
#[test]
fn writes_are_applied_in_log_order_from_many_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, options()).expect("open");
    let rounds = env_u64("MERGELOG_KVWAL_ORDER_ROUNDS").unwrap_or(60);
    for round in 0..rounds {
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..40u32 {
                        let value = [t, (i >> 8) as u8, i as u8];
                        store.put(&[b'k', (i % 2) as u8], &value).expect("put");
                    }
                });
            }
        });
        let table: State = store.scan(b"", usize::MAX).into_iter().collect();
        let log = common::engine_state(store.engine());
        assert_eq!(
            table, log,
            "round {round}: the table disagrees with the log"
        );
    }
    let table: State = store.scan(b"", usize::MAX).into_iter().collect();
    store.close().expect("close");
    let store = Store::open(&path, options()).expect("reopen");
    let replayed: State = store.scan(b"", usize::MAX).into_iter().collect();
    assert_eq!(table, replayed, "a reopen replays another state");
}

/// Compaction retires history the checkpoint has not covered (it copies only the live puts of
/// the segments it takes): a store whose log compacted by itself (`Compaction::Auto`) could no
/// longer open ("the log starts at batch N but the checkpoint covers only up to batch 0").
/// The store bounds its log by checkpoints, so it refuses an engine configured to compact by
/// itself, naming the setting, before it writes anything.
#[test]
fn a_store_refuses_an_engine_that_compacts_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.engine.compaction = mergelog::Compaction::Auto(mergelog::AutoCompaction {
        live_ratio: 0.9,
        ..Default::default()
    });
    options.checkpoint_every_writes = u64::MAX;
    match Store::open(dir.path(), options.clone()) {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("compaction") && message.contains("Auto"),
                "{message}"
            );
            let files = std::fs::read_dir(dir.path()).map_or(0, |d| d.count());
            assert_eq!(files, 0, "a refused store made files");
        }
        Ok(store) => {
            // What it comes to: writes until the engine has compacted, then a reopen.
            let mut i = 0;
            while store.engine().stats().compaction.segments_retired == 0 {
                store.put(&mixed_key(i % 5), &[b'v'; 1000]).expect("put");
                i += 1;
            }
            store.close().expect("close");
            let reopened = Store::open(dir.path(), options);
            panic!(
                "a store with Compaction::Auto opened; after {i} writes the engine compacted, \
                 and the reopen gave {:?}",
                reopened.map(|s| s.len())
            );
        }
    }
}
