//! The store's writes on one executor thread: openraft calls `append`, `truncate`, `purge`
//! and `save_vote` from its tasks, and on a current-thread runtime a store that blocked the
//! thread inside one of them would hold every other task of that thread, the one whose work
//! would let the write through included. Here that task is a consumer of the engine lagging
//! past `consumer_lag_max`, whose commits let go of the throttle, joined with the store's
//! write in one task on a `current_thread` runtime (so the consumer is polled only when the
//! write's poll returns): under `Backpressure::Reject` (the store waits for the throttle and
//! submits again) and `Block` (the engine's own wait). Each write must wait as a future
//! (`Pending` at its first poll, the consumer still behind), then be made once the consumer
//! caught up, and a reopen must hold what it wrote. A watchdog on another thread fails the
//! test after `WAIT_MAX` rather than let a blocked thread hang it.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mergelog::{Backpressure, Config, Consumer, ConsumerLag, Engine, Error};
use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, RaftLogReader, Vote};

type Store = LogStore<TypeConfig>;

/// A hang guard, never a timing assertion.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// A value long enough that its entry is stored in chunks over several batches (the store's
/// batch budget under `small_config` is 16 KiB): the chunks' batches are submitted while the
/// entry is being encoded, each of them throttled again once the consumer lags by 4 batches.
const LARGE: usize = 100_000;

fn config(backpressure: Backpressure) -> Config {
    Config {
        backpressure,
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(4),
            ..ConsumerLag::default()
        }),
        ..common::small_config()
    }
}

use common::entry;

/// Entries `from..=to`, entry 12 (if among them) stored in chunks: appended first, its
/// chunk 0 opens the append's first batch, and the throttle holds the submit that chunk 1
/// needs, in the middle of the entry's encoding.
fn entries(from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to)
        .map(|i| entry(1, i, if i == 12 { LARGE } else { 40 }))
        .collect()
}

/// Puts (behind the store's back) until the engine would not take one more for the
/// consumer's lag (refused under `Reject`, a put that waits under `Block`): the throttle is
/// engaged.
fn lag_past_the_limit(engine: &Engine) {
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0.. {
        let key = format!("x{i}");
        let polled = pin!(engine.put_async(key.as_bytes(), b"v")).poll(&mut cx);
        match polled {
            Poll::Ready(Ok(t)) => drop(t.wait().expect("the put is durable")),
            Poll::Ready(Err(Error::Throttled { .. })) | Poll::Pending => return,
            Poll::Ready(Err(e)) => panic!("making the consumer lag: {e}"),
        }
    }
}

/// Reads every batch that has landed with `c` (never waiting) and commits the last.
fn catch_up(c: &mut Consumer) {
    let mut last = None;
    while let Some(batch) = c.try_next().expect("the consumer reads") {
        last = Some(batch.seq);
    }
    if let Some(last) = last {
        c.commit(last).expect("the consumer commits");
    }
}

/// Runs `write` against a store whose engine's consumer lags past the limit, joined on one
/// `current_thread` runtime with a task that keeps the consumer caught up once `write`'s
/// first poll has returned. A `fresh` store is given entries 1 to 11 first. Returns what
/// `write` gave and whether it was still pending when the consumer first ran; fails after
/// `WAIT_MAX` if the thread never came back.
fn throttled_on_one_thread<W, F>(
    what: &str,
    dir: &Path,
    fresh: bool,
    backpressure: Backpressure,
    write: W,
) -> (Result<(), String>, bool)
where
    W: FnOnce(Store) -> F + Send + 'static,
    F: Future<Output = Result<(), String>>,
{
    let mut store = Store::open(dir, config(backpressure)).expect("the store opens");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async move {
            if fresh {
                common::log_from_1(&mut store, 1).await;
                store
                    .blocking_append(entries(1, 11))
                    .await
                    .expect("the append, nothing throttled yet");
            }
            let engine = store.engine().clone();
            let mut c = engine.consumer("slow").expect("the consumer opens");
            lag_past_the_limit(&engine);
            let done = Cell::new(false);
            let waited = Cell::new(false);
            let writing = async {
                let written = write(store).await;
                done.set(true);
                written
            };
            let consuming = async {
                // Polled only once the write's first poll returned (`join!` polls in order).
                waited.set(!done.get());
                while !done.get() {
                    catch_up(&mut c);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            let (written, ()) = tokio::join!(writing, consuming);
            // The write closed the store and its engine.
            drop(c);
            (written, waited.get())
        });
        let _ = tx.send(outcome);
    });
    rx.recv_timeout(WAIT_MAX).unwrap_or_else(|_| {
        panic!(
            "{what} under {backpressure:?}: the executor's one thread has not come back in \
             {WAIT_MAX:?}: the store blocked it, and the consumer task whose commits release \
             the throttle never ran"
        )
    })
}

fn reopen(dir: &Path) -> Store {
    Store::open(dir, config(Backpressure::Reject)).expect("the store reopens")
}

fn check(what: &str, backpressure: Backpressure, (written, waited): (Result<(), String>, bool)) {
    let context = format!("{what} under {backpressure:?}");
    written.unwrap_or_else(|e| panic!("{context}: {e}"));
    assert!(
        waited,
        "{context}: done at its first poll: the consumer's lag never held it"
    );
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn append_with(wait: bool, backpressure: Backpressure) {
    let dir = tempfile::tempdir().unwrap();
    let what = format!("an append (waits: {wait}) of an entry in chunks");
    let outcome = throttled_on_one_thread(&what, dir.path(), true, backpressure, move |store| {
        let mut store = store.with_append_waits(wait);
        async move {
            let appended = store.blocking_append(entries(12, 13)).await;
            appended.map_err(|e| e.to_string())?;
            store.close().map_err(|e| e.to_string())
        }
    });
    check(&what, backpressure, outcome);
    let mut store = reopen(dir.path());
    block_on(async {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 13)), "{what}");
        let read = store.try_get_log_entries(..).await.unwrap();
        assert!(read == entries(1, 13), "{what}: the log read back differs");
    });
    store.close().unwrap();
}

#[test]
fn an_append_waits_as_a_future_for_a_lagging_consumer_under_reject() {
    append_with(true, Backpressure::Reject);
}

#[test]
fn an_append_waits_as_a_future_for_a_lagging_consumer_under_block() {
    append_with(true, Backpressure::Block);
}

#[test]
fn an_append_that_does_not_wait_for_its_entries_waits_as_a_future_for_the_throttle() {
    append_with(false, Backpressure::Reject);
    append_with(false, Backpressure::Block);
}

fn truncate_and_purge(backpressure: Backpressure) {
    let dir = tempfile::tempdir().unwrap();
    let outcome = throttled_on_one_thread(
        "a truncate",
        dir.path(),
        true,
        backpressure,
        |mut store| async move {
            (store.truncate(log_id(1, 1, 8)).await).map_err(|e| e.to_string())?;
            store.close().map_err(|e| e.to_string())
        },
    );
    check("a truncate", backpressure, outcome);
    let outcome = throttled_on_one_thread(
        "a purge",
        dir.path(),
        false,
        backpressure,
        |mut store| async move {
            (store.purge(log_id(1, 1, 3)).await).map_err(|e| e.to_string())?;
            store.close().map_err(|e| e.to_string())
        },
    );
    check("a purge", backpressure, outcome);
    let mut store = reopen(dir.path());
    block_on(async {
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
        let read = store.try_get_log_entries(..).await.unwrap();
        assert!(read == entries(4, 7), "the log read back differs");
    });
    store.close().unwrap();
}

#[test]
fn a_truncate_and_a_purge_wait_as_futures_for_a_lagging_consumer_under_reject() {
    truncate_and_purge(Backpressure::Reject);
}

#[test]
fn a_truncate_and_a_purge_wait_as_futures_for_a_lagging_consumer_under_block() {
    truncate_and_purge(Backpressure::Block);
}

/// The vote was saved asynchronously already: kept as a check of the same contract.
#[test]
fn a_vote_waits_as_a_future_for_a_lagging_consumer() {
    for backpressure in [Backpressure::Reject, Backpressure::Block] {
        let dir = tempfile::tempdir().unwrap();
        let outcome = throttled_on_one_thread(
            "a vote",
            dir.path(),
            true,
            backpressure,
            |mut store| async move {
                (store.save_vote(&Vote::new(3, 1)).await).map_err(|e| e.to_string())?;
                store.close().map_err(|e| e.to_string())
            },
        );
        check("a vote", backpressure, outcome);
        let mut store = reopen(dir.path());
        let vote = block_on(store.read_vote()).unwrap();
        assert_eq!(vote, Some(Vote::new(3, 1)), "under {backpressure:?}");
        store.close().unwrap();
    }
}
