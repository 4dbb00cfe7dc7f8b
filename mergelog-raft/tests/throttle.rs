//! A store on an engine that throttles on consumer lag (`Config::consumer_lag_max`) under
//! `Backpressure::Reject`: the engine refuses a throttled write with `Error::Throttled`, and
//! openraft stops the node on any storage error. Every write the store makes (a vote, an
//! append, a truncate, a purge, the committed id at `close`) waits until the consumer has
//! caught up instead, as it would under `Block`, and is then made.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mergelog::{Backpressure, Config, Consumer, ConsumerLag, Engine, Error};
use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, RaftLogReader, Vote};

type Store = LogStore<TypeConfig>;

/// A hang guard, never a timing assertion.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn config() -> Config {
    Config {
        backpressure: Backpressure::Reject,
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(4),
            ..ConsumerLag::default()
        }),
        ..common::small_config()
    }
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    common::entry(term, index, 40)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, config()).expect("the store opens")
}

/// Puts (behind the store's back) until the engine refuses one for the consumer's lag: the
/// throttle is engaged.
fn lag_past_the_limit(engine: &Engine) {
    for i in 0.. {
        match engine.put(format!("x{i}").as_bytes(), b"v") {
            Ok(t) => drop(t.wait().expect("the put is durable")),
            Err(Error::Throttled { .. }) => return,
            Err(e) => panic!("making the consumer lag: {e}"),
        }
    }
}

/// Reads every durable batch with `c` and commits the last: the lag drops to 0 and the
/// throttle lets go.
fn catch_up(engine: &Engine, c: &mut Consumer) {
    let durable = engine.durable_seq();
    let mut last = c.committed();
    while last < durable {
        last = c
            .next_timeout(WAIT_MAX)
            .expect("the consumer reads")
            .expect("a batch within the hang guard")
            .seq;
    }
    c.commit(last).expect("the consumer commits");
}

/// On another thread: once the engine has throttled one more submission than it had, catches
/// the consumer up. Hands the consumer back when joined.
fn catch_up_once_throttled(
    engine: &Arc<Engine>,
    mut c: Consumer,
) -> std::thread::JoinHandle<Consumer> {
    let engine = engine.clone();
    let before = engine.counts().throttled;
    std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT_MAX;
        while engine.counts().throttled == before {
            assert!(Instant::now() < deadline, "hung: nothing was throttled");
            std::thread::sleep(Duration::from_millis(1));
        }
        catch_up(&engine, &mut c);
        c
    })
}

/// The vote is saved asynchronously: its first poll, with the consumer lagging, must wait (a
/// `Pending`), not fail; the consumer's commit lets it through.
#[tokio::test]
async fn a_vote_saved_while_a_consumer_lags_under_reject_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let engine = store.engine().clone();
    let mut c = engine.consumer("slow").expect("the consumer opens");
    lag_past_the_limit(&engine);
    let vote = Vote::new(3, 1);
    {
        let mut saving = std::pin::pin!(store.save_vote(&vote));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(saved) = std::future::Future::poll(saving.as_mut(), &mut cx) {
            panic!("the vote did not wait for the lagging consumer: {saved:?}");
        }
        catch_up(&engine, &mut c);
        saving
            .await
            .expect("the vote is saved once the consumer caught up");
    }
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    drop(c);
    drop(engine);
    store.close().unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    store.close().unwrap();
}

/// An append, a truncate, a purge and the committed id `close` logs, each made while the
/// consumer lags past the limit: each waits until it has caught up, and is made. (Each is
/// tried whatever the ones before gave, and the refusals are reported together.)
#[tokio::test]
async fn appends_truncates_purges_and_close_wait_for_a_lagging_consumer_under_reject() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 1).await;
    let engine = store.engine().clone();
    let mut c = engine.consumer("slow").expect("the consumer opens");
    store
        .blocking_append((1..=10).map(|i| entry(1, i)))
        .await
        .expect("the append, nothing throttled yet");
    let mut refused = Vec::new();

    lag_past_the_limit(&engine);
    let catching_up = catch_up_once_throttled(&engine, c);
    let appended = store.blocking_append((11..=12).map(|i| entry(1, i))).await;
    c = catching_up.join().unwrap();
    refused.extend(appended.err().map(|e| format!("append: {e}")));

    lag_past_the_limit(&engine);
    let catching_up = catch_up_once_throttled(&engine, c);
    let truncated = store.truncate(log_id(1, 1, 8)).await;
    c = catching_up.join().unwrap();
    refused.extend(truncated.err().map(|e| format!("truncate: {e}")));

    lag_past_the_limit(&engine);
    let catching_up = catch_up_once_throttled(&engine, c);
    let purged = store.purge(log_id(1, 1, 3)).await;
    c = catching_up.join().unwrap();
    refused.extend(purged.err().map(|e| format!("purge: {e}")));

    store.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
    lag_past_the_limit(&engine);
    let catching_up = catch_up_once_throttled(&engine, c);
    let closed = store.close();
    c = catching_up.join().unwrap();
    refused.extend(closed.err().map(|e| format!("close: {e}")));
    assert!(refused.is_empty(), "refused while throttled: {refused:#?}");
    drop(c);
    drop(engine);

    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 6)));
    let entries = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(entries, (4..=7).map(|i| entry(1, i)).collect::<Vec<_>>());
    store.close().unwrap();
}

/// The engine closed under the store while the consumer lags (as after the node stopped): a
/// vote and an append fail (the engine is closed) rather than wait for a consumer that no
/// longer lets anything in.
#[test]
fn writes_on_a_closed_engine_while_a_consumer_lags_fail_rather_than_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let engine = store.engine().clone();
    let _c = engine.consumer("slow").expect("the consumer opens");
    lag_past_the_limit(&engine);
    engine.close().expect("the engine closes");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let vote = runtime.block_on(store.save_vote(&Vote::new(3, 1)));
        // Entry 0 of term 0 (`Raft::initialize`'s): one the store's checks take.
        let append = runtime.block_on(store.blocking_append([entry(0, 0)]));
        let _ = tx.send((
            vote.map_err(|e| e.to_string()),
            append.map_err(|e| e.to_string()),
        ));
    });
    let (vote, append) = rx
        .recv_timeout(WAIT_MAX)
        .expect("hung: the writes waited on a closed engine");
    for (what, result) in [("vote", vote), ("append", append)] {
        let e = result.expect_err(what);
        assert!(e.contains("closed"), "{what}: {e}");
    }
}

/// The open's clean-up (chunks of no entry, left by an operation a crash cut short) is a
/// write, and the engine throttles it like any other: with a consumer lagging past the limit
/// under `Backpressure::Block`, it was held until the consumer's commits let it through, in
/// the synchronous open. Where that consumer is the node's own, started once the store has
/// opened (or is gone), that is never: the open hung. The clean-up is not needed to serve the
/// log, so the open leaves it for a later one rather than wait: it returns, the leftover
/// stays, and an open once the consumer caught up deletes it.
#[test]
fn the_opens_clean_up_never_waits_for_a_lagging_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        backpressure: Backpressure::Block,
        ..config()
    };
    // A chunk of no entry (as a cut append leaves), then more batches than the consumer may
    // lag by, which it has not read.
    let mut stray = vec![b'c'];
    stray.extend_from_slice(&5u64.to_be_bytes());
    stray.extend_from_slice(&0u32.to_be_bytes());
    {
        // Not throttled itself (these puts would wait for the consumer).
        let engine = Engine::open(dir.path(), common::small_config()).unwrap();
        let c = engine.consumer("slow").expect("the consumer opens");
        engine.put(&stray, b"stray").unwrap().wait().unwrap();
        for i in 0..8 {
            let key = format!("x{i}");
            engine.put(key.as_bytes(), b"v").unwrap().wait().unwrap();
        }
        drop(c);
        engine.close().unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let opening = dir.path().to_path_buf();
    let open_config = config.clone();
    std::thread::spawn(move || {
        let opened = Store::open(&opening, open_config).map_err(|e| e.to_string());
        let _ = tx.send(opened);
    });
    let store = match rx.recv_timeout(WAIT_MAX) {
        Ok(opened) => opened.expect("the store opens"),
        Err(_) => panic!(
            "the open has not returned in {WAIT_MAX:?}: its clean-up waits for the consumer \
             lagging past consumer_lag_max, which nothing will catch up"
        ),
    };
    let engine = store.engine().clone();
    assert!(
        engine.read(&stray).unwrap().is_some(),
        "the clean-up went through the throttle"
    );
    // The consumer catches up: the next open deletes the leftover.
    let mut c = engine.consumer("slow").expect("the consumer opens");
    catch_up(&engine, &mut c);
    drop(c);
    drop(engine);
    store.close().unwrap();
    let store = Store::open(dir.path(), config).expect("the store opens");
    assert!(
        store.engine().read(&stray).unwrap().is_none(),
        "the open, nothing throttled, left the chunk of no entry"
    );
    store.close().unwrap();
}
