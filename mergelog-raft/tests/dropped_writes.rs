//! A write whose future is dropped part way (after some of its batches were submitted, before
//! the store's memory took them: the bounds, the last log id, the overlay) leaves the log
//! holding part of it that the store does not know of. The store must not go on over that:
//! a later write it takes would be written over a log it no longer describes (an append at
//! the old end, behind entries the dropped append left; after a dropped truncate, past the
//! hole it left), and its directory would not open again. Every later call fails, saying to
//! reopen, and the reopen reads the log as a crash at that point leaves it.
//!
//! The drop point is forced, not timed: the engine's syncs of its segments are held by an
//! I/O hook, so no ticket completes, and with one operation a batch (`batch_ops_max: 1`) an
//! operation of more than 1,024 batches submits 1,024 and then waits for its oldest
//! (`UNWAITED_MAX`): its first poll returns `Pending` there, and the test drops it.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Waker};

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine};
use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, RaftLogReader, Vote};

type Store = LogStore<TypeConfig>;

/// More batches than an operation leaves unwaited (`UNWAITED_MAX`, 1,024).
const MANY: u64 = 1100;

/// Holds every sync of a segment while `held`.
#[derive(Default)]
struct HoldSyncs {
    held: Mutex<bool>,
    released: Condvar,
}

impl HoldSyncs {
    fn hold(&self, on: bool) {
        *self.held.lock().unwrap() = on;
        self.released.notify_all();
    }
}

impl Io for HoldSyncs {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.released.wait(held).unwrap();
            }
        }
        Ok(())
    }
}

fn config() -> Config {
    Config {
        batch_ops_max: 1,
        ..common::small_config()
    }
}

fn entries(term: u64, from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to).map(|i| common::entry(term, i, 20)).collect()
}

/// A store on an engine whose segment syncs `hook` can hold, with the vote of term 1 and
/// entries 1 to `last` of term 1.
async fn store_with(dir: &Path, hook: &Arc<HoldSyncs>, last: u64) -> Store {
    let engine = Engine::open_with_io(dir, config(), hook.clone()).expect("the engine opens");
    let mut store = Store::with_engine(Arc::new(engine)).expect("the store opens");
    common::log_from_1(&mut store, 1).await;
    store.blocking_append(entries(1, 1, last)).await.unwrap();
    store
}

/// Polls `write` once with the engine's syncs held: it must stop part way (`Pending`, its
/// first 1,024 batches submitted); then drops it and lets the syncs go.
fn drop_part_way<F: Future>(hook: &HoldSyncs, write: F, what: &str) {
    hook.hold(true);
    {
        let write = pin!(write);
        let polled = write.poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "{what}: done at its first poll");
    }
    hook.hold(false);
}

/// An error of a store that must be reopened: it says so.
fn assert_says_so(e: &dyn std::fmt::Display, what: &str) {
    let e = e.to_string();
    assert!(
        e.contains("the store must be reopened"),
        "{what}: an error that does not say to reopen: {e}"
    );
}

/// What the store says after the drop: every call fails, saying to reopen it.
async fn assert_says_reopen(store: &mut Store, what: &str) {
    let says = |e: &dyn std::fmt::Display| assert_says_so(e, what);
    match store.get_log_state().await {
        Ok(state) => panic!("{what}: get_log_state served {state:?}"),
        Err(e) => says(&e),
    }
    match store.try_get_log_entries(..).await {
        Ok(got) => panic!("{what}: a read served {} entries", got.len()),
        Err(e) => says(&e),
    }
    let mut reader = store.get_log_reader().await;
    match reader.limited_get_log_entries(0, u64::MAX).await {
        Ok(got) => panic!("{what}: a replication read served {} entries", got.len()),
        Err(e) => says(&e),
    }
    if let Err(e) = store.save_committed(Some(log_id(1, 1, 1))).await {
        says(&e);
    } else {
        panic!("{what}: save_committed taken");
    }
    if let Err(e) = store.save_vote(&Vote::new_committed(2, 1)).await {
        says(&e);
    } else {
        panic!("{what}: save_vote taken");
    }
}

/// `close` of a store that must be reopened closes the engine (the reopen takes the
/// directory) and says so.
fn closes_saying_reopen(store: Store, what: &str) {
    match store.close() {
        Ok(()) => panic!("{what}: close returned Ok for a store that must be reopened"),
        Err(e) => assert_says_so(&e, what),
    }
}

/// Reopens the store: its entries must be term 1's from entry 1 on, a prefix of the log as a
/// crash leaves it. Their last index.
async fn reopened_prefix(dir: &Path, what: &str) -> u64 {
    let mut store = Store::open(dir, config()).expect("the store reopens");
    let got = store.try_get_log_entries(..).await.unwrap();
    let last = got.last().map(|e| e.log_id.index).unwrap();
    assert_eq!(got, entries(1, 1, last), "{what}: the reopened entries");
    store.close().unwrap();
    last
}

/// An append dropped after its first 1,024 batches (entries 4 to 1,027 submitted), then a
/// new leader's vote and entry 4, taken at the old end: the log would hold entry 4 of term 2
/// and entries 5 to 1,027 of term 1 after it, which the next open refuses (terms never go
/// down): the acknowledged entry and the whole log lost.
#[tokio::test]
async fn a_dropped_append_stops_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(HoldSyncs::default());
    let mut store = store_with(dir.path(), &hook, 3).await;
    let what = "after an append dropped part way";
    drop_part_way(
        &hook,
        store.blocking_append(entries(1, 4, 3 + MANY)),
        "the append",
    );
    let taken = async {
        store.save_vote(&Vote::new_committed(2, 1)).await?;
        store.blocking_append(entries(2, 4, 4)).await
    }
    .await;
    match taken {
        Ok(()) => {
            store.close().unwrap();
            match Store::open(dir.path(), config()) {
                Ok(mut s) => {
                    let last = s.get_log_state().await.unwrap().last_log_id;
                    assert_eq!(
                        last,
                        Some(log_id(2, 1, 4)),
                        "{what}: the reopened log's end"
                    );
                }
                Err(e) => panic!(
                    "{what}: the store took a vote and entry 4 of term 2, and its next open \
                     refuses the log: {e}"
                ),
            }
            return;
        }
        Err(e) => assert_says_so(&e, what),
    }
    assert_says_reopen(&mut store, what).await;
    closes_saying_reopen(store, what);
    // The reopen: the log as a crash then leaves it, a prefix of the dropped append kept.
    let last = reopened_prefix(dir.path(), what).await;
    assert!(
        (3..3 + MANY).contains(&last),
        "{what}: entries up to {last}"
    );
}

/// A truncate dropped after its first 1,024 batches (entries 77 to 1,100 deleted, highest
/// first), then an append at the old end, taken: the log would have a hole, which the next
/// open refuses; the store meanwhile said its last log id was entry 1,100's and served 76.
#[tokio::test]
async fn a_dropped_truncate_stops_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(HoldSyncs::default());
    let mut store = store_with(dir.path(), &hook, MANY).await;
    let what = "after a truncate dropped part way";
    drop_part_way(&hook, store.truncate(log_id(1, 1, 2)), "the truncate");
    match store.blocking_append(entries(1, MANY + 1, MANY + 1)).await {
        Ok(()) => {
            let served = store.try_get_log_entries(..).await.unwrap().len();
            store.close().unwrap();
            match Store::open(dir.path(), config()) {
                Ok(_) => {}
                Err(e) => panic!(
                    "{what}: the store took entry {} (serving {served} entries), and its next \
                     open refuses the log: {e}",
                    MANY + 1
                ),
            }
            return;
        }
        Err(e) => assert_says_so(&e, what),
    }
    assert_says_reopen(&mut store, what).await;
    closes_saying_reopen(store, what);
    // The reopen: a prefix of the log (the truncate deletes highest first).
    let last = reopened_prefix(dir.path(), what).await;
    assert!((1..MANY).contains(&last), "{what}: entries up to {last}");
}

/// A purge dropped after its first 1,024 batches (the purged log id logged in the first, then
/// entries 1 to 1,023 deleted): the store, not knowing of it, would serve the log from entry
/// 1,024 on as if from entry 1 and purge nothing again. The reopen finishes the purge.
#[tokio::test]
async fn a_dropped_purge_stops_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(HoldSyncs::default());
    let mut store = store_with(dir.path(), &hook, MANY).await;
    let what = "after a purge dropped part way";
    drop_part_way(&hook, store.purge(log_id(1, 1, MANY - 1)), "the purge");
    assert_says_reopen(&mut store, what).await;
    closes_saying_reopen(store, what);
    let mut store = Store::open(dir.path(), config()).expect("the store reopens");
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id(1, 1, MANY - 1)),
        "{what}"
    );
    let got = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(got, entries(1, MANY, MANY), "{what}: the reopened entries");
    store.close().unwrap();
}
