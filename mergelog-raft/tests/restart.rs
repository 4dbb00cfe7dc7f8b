//! The store survives a restart: the vote, the committed and purged log ids and the entries
//! come back from the mergelog directory, and a purge retires whole segments without
//! forgetting the vote.

mod common;

use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, LogId, RaftLogReader, Vote};
use std::path::Path;

type Store = LogStore<TypeConfig>;

use common::entry;

fn open(dir: &Path) -> Store {
    Store::open(dir, common::small_config()).expect("the store opens")
}

/// Closes the store and its engine, so that the directory is free for the next open at once.
fn close(store: Store) {
    store.close().expect("the store closes");
}

fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn vote_committed_and_entries_come_back_after_a_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 1);
    {
        let mut store = open(dir.path());
        store.save_vote(&vote).await.unwrap();
        store
            .blocking_append((0..=20).map(|i| entry(2, i, 50)))
            .await
            .unwrap();
        store.truncate(log_id(2, 1, 15)).await.unwrap();
        store
            .blocking_append((15..=17).map(|i| entry(3, i, 50)))
            .await
            .unwrap();
        store.save_committed(Some(log_id(3, 1, 16))).await.unwrap();
        close(store);
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(
        store.read_committed().await.unwrap(),
        Some(log_id(3, 1, 16))
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(state.last_log_id, Some(log_id(3, 1, 17)));
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&entries), (0..=17).collect::<Vec<_>>());
    // The suffix after the truncate is the new term's, not the old one's.
    assert!(entries[15..].iter().all(|e| e.log_id.leader_id.term == 3));
    assert!(entries[..15].iter().all(|e| e.log_id.leader_id.term == 2));
}

#[tokio::test]
async fn a_purge_retires_segments_and_forgets_nothing_live() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(1, 1);
    let purged: LogId<u64> = log_id(1, 1, 300);
    {
        let mut store = open(dir.path());
        common::log_from_1(&mut store, 1).await;
        // The vote's only record goes to the first segment, which the purge retires.
        store.save_vote(&vote).await.unwrap();
        for chunk in (1..=400u64).collect::<Vec<_>>().chunks(10) {
            let batch = chunk.iter().map(|&i| entry(1, i, 1000));
            store.blocking_append(batch).await.unwrap();
        }
        let before = store.engine().segments().len();
        assert!(before >= 4, "the entries fill several segments: {before}");
        store.purge(purged).await.unwrap();
        let after = store.engine().segments().len();
        assert!(
            after < before,
            "the purge retired segments: {before} -> {after}"
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged));
        close(store);
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(purged));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 400)));
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&entries), (301..=400).collect::<Vec<_>>());
    // And the log goes on from there.
    store.blocking_append([entry(1, 401, 10)]).await.unwrap();
    assert_eq!(store.try_get_log_entries(401..402).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_append_larger_than_one_engine_batch_is_split_and_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        common::log_from_1(&mut store, 1).await;
        // 40 entries of 4 KiB: well over the test configuration's 32 KiB batch limit.
        store
            .blocking_append((1..=40).map(|i| entry(1, i, 4096)))
            .await
            .unwrap();
        close(store);
    }
    let mut store = open(dir.path());
    let entries = store.try_get_log_entries(1..=40).await.unwrap();
    assert_eq!(indexes(&entries), (1..=40).collect::<Vec<_>>());
    // A range read is limited, never empty.
    let mut reader = store.get_log_reader().await;
    assert!(!reader
        .limited_get_log_entries(1, 41)
        .await
        .unwrap()
        .is_empty());
}

/// With batches allowed larger than a quarter of the ring, a batch is limited by the ring:
/// an append (and a purge's deletes) must stay under it. 300 KiB of entries in one append
/// against a 1 MiB ring (256 KiB per request) and 4 MiB batches was refused whole.
#[tokio::test]
async fn an_append_stays_within_the_rings_request_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = mergelog::Config {
        ring_bytes: 1 << 20,
        batch_bytes_max: 4 << 20,
        ..mergelog::Config::default()
    };
    let mut store = Store::open(dir.path(), config).expect("the store opens");
    common::log_from_1(&mut store, 1).await;
    store
        .blocking_append((1..=300).map(|i| entry(1, i, 1024)))
        .await
        .expect("the append");
    store.purge(log_id(1, 1, 299)).await.expect("the purge");
    let entries = store.try_get_log_entries(300..=300).await.unwrap();
    assert_eq!(indexes(&entries), [300]);
    close(store);
}

#[tokio::test]
async fn appended_entries_are_readable_before_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    // The engine holds every window open for 2 s: the entries cannot be durable (nor in its
    // index) while the reads below run, only in the store's overlay.
    let config = mergelog::Config {
        window: mergelog::WindowPolicy::Linger(std::time::Duration::from_secs(2)),
        window_age_max: std::time::Duration::from_secs(2),
        ..common::small_config()
    };
    // An append that returns before its entries are durable: not one that waits for them.
    let mut store = Store::open(dir.path(), config)
        .unwrap()
        .with_append_waits(false);
    common::log_from_1(&mut store, 1).await;
    let mut reader = store.get_log_reader().await;
    let append = store.blocking_append((1..=5).map(|i| entry(1, i, 20)));
    tokio::pin!(append);
    // Poll the append once: it submits and returns, then waits for the callback.
    tokio::select! {
        biased;
        _ = &mut append => panic!("the append was durable at once despite the 2 s window"),
        _ = std::future::ready(()) => {}
    }
    let entries = reader.try_get_log_entries(1..=5).await.unwrap();
    assert_eq!(indexes(&entries), (1..=5).collect::<Vec<_>>());
    append.await.unwrap();
    // Durable now: read from the engine, the overlay emptied.
    let entries = reader.try_get_log_entries(1..=5).await.unwrap();
    assert_eq!(indexes(&entries), (1..=5).collect::<Vec<_>>());
}

/// A store refuses an engine that does not sync: a vote must be durable when `save_vote`
/// returns.
#[tokio::test]
async fn a_store_refuses_an_engine_without_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let config = mergelog::Config {
        durability: mergelog::Durability::NoSync,
        ..common::small_config()
    };
    let err = Store::open(dir.path(), config).err().expect("refused");
    assert!(err.to_string().contains("durability = Sync"), "{err}");
}

/// Polls a future once with a waker that does nothing: `Some` if it is ready.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// openraft 0.9 awaits an append's callback as soon as `append` returns, so by default the
/// store waits in `append`: the engine writes and syncs the entries on the calling thread
/// (a lone waiter writes its own window, whatever the window policy), and the append is
/// complete in one poll even under windows held open for 2 s. With `with_append_waits(false)`
/// it returns at once and the window's 2 s pass before the callback. A committed id saved
/// between appends goes with the next one's batch: no request, batch or sync of its own.
#[tokio::test]
async fn an_append_waits_for_its_entries_unless_told_not_to() {
    let linger = std::time::Duration::from_secs(2);
    let config = mergelog::Config {
        window: mergelog::WindowPolicy::Linger(linger),
        window_age_max: linger,
        ..common::small_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), config.clone()).unwrap();
    common::log_from_1(&mut store, 1).await;
    let done = poll_once(store.blocking_append((1..=3).map(|i| entry(1, i, 20))));
    assert!(matches!(done, Some(Ok(()))), "{done:?}");
    let before = store.engine().counts();
    store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
    assert_eq!(store.engine().counts().submitted, before.submitted);
    let done = poll_once(store.blocking_append((4..=5).map(|i| entry(1, i, 20))));
    assert!(matches!(done, Some(Ok(()))), "{done:?}");
    let after = store.engine().counts();
    assert_eq!(
        (after.batches, after.syncs),
        (before.batches + 1, before.syncs + 1)
    );
    // Durable with that batch: an engine closed without the store's `close` keeps it.
    store.engine().close().unwrap();
    drop(store);
    let mut store = Store::open(dir.path(), config.clone()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 5)));
    close(store);

    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), config)
        .unwrap()
        .with_append_waits(false);
    common::log_from_1(&mut store, 1).await;
    {
        let append = store.blocking_append((1..=3).map(|i| entry(1, i, 20)));
        let mut append = std::pin::pin!(append);
        assert!(poll_once(append.as_mut()).is_none(), "durable at once");
        append.await.unwrap();
    }
    close(store);
}

/// The drop's save of the committed id is best effort: it must not wait on a consumer that
/// lags past `consumer_lag_max` under `Backpressure::Block` (openraft drops the store when the
/// node stops, and a put held there for a consumer that may never commit held the shutdown
/// with it). The drop runs on a thread of its own, so that a hang fails the test: after the
/// guard, closing the engine releases the held put.
#[tokio::test]
async fn dropping_a_store_does_not_wait_on_a_lagging_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let config = mergelog::Config {
        backpressure: mergelog::Backpressure::Block,
        consumer_lag_max: Some(mergelog::ConsumerLag {
            batches: Some(2),
            ..mergelog::ConsumerLag::default()
        }),
        ..common::small_config()
    };
    let engine = std::sync::Arc::new(mergelog::Engine::open(dir.path(), config).unwrap());
    // A consumer that never commits: after three batches it lags past the limit.
    let _consumer = engine.consumer("slow").unwrap();
    let mut store = Store::with_engine(engine.clone()).unwrap();
    // Entries 0 to 2 of term 0, as `Raft::initialize`'s entry is: no vote nor purge first,
    // which would be batches the consumer lags by.
    for i in 0..=2 {
        store.blocking_append([entry(0, i, 20)]).await.unwrap();
    }
    store.save_committed(Some(log_id(0, 1, 2))).await.unwrap();
    let (done, dropped) = std::sync::mpsc::channel();
    let dropping = std::thread::spawn(move || {
        drop(store);
        let _ = done.send(());
    });
    let outcome = dropped.recv_timeout(std::time::Duration::from_secs(20));
    engine.close().unwrap();
    dropping.join().unwrap();
    assert!(
        outcome.is_ok(),
        "the store's drop waited on the lagging consumer"
    );
}

/// An append, a truncate and a purge of more batches than the engine remembers windows (65,536: a
/// ticket looked at later gets `SeqUnknown`, "durable, its batch no longer remembered"). With
/// `batch_ops_max` 1 every batch the store makes is one delete and a window of its own: a
/// truncate of 70,000 entries is 70,000 windows, and with a small ring nearly all of them are
/// written by the time the last is submitted. The store submitted them all before it
/// waited for the first, whose batch was forgotten by then: the append failed, so did the
/// truncate and the purge (which needs its first batch's number, to retire no segment past
/// it), and openraft stops the node on any of them.
#[tokio::test]
async fn an_append_a_truncate_and_a_purge_of_more_batches_than_the_engine_remembers_complete() {
    const N: u64 = 70_000;
    let dir = tempfile::tempdir().unwrap();
    {
        // Appended under the small configuration: a few hundred batches.
        let mut store = open(dir.path());
        common::log_from_1(&mut store, 1).await;
        store
            .blocking_append((1..=N).map(|i| entry(1, i, 1)))
            .await
            .unwrap();
        close(store);
    }
    // A small ring (a request is a few dozen bytes): nearly every batch is written by the
    // time the last is submitted.
    let one_op = mergelog::Config {
        batch_ops_max: 1,
        ring_bytes: 64 << 10,
        ..common::small_config()
    };
    {
        let mut store = Store::open(dir.path(), one_op.clone()).expect("the store opens");
        store
            .blocking_append((N + 1..=2 * N).map(|i| entry(1, i, 1)))
            .await
            .expect("an append of 70,000 batches");
        store
            .truncate(log_id(1, 1, N + 1))
            .await
            .expect("a truncate of 70,000 batches");
        let first = |store: &Store| store.engine().segments()[0].first_seq;
        let before = first(&store);
        store
            .purge(log_id(1, 1, N - 10))
            .await
            .expect("a purge of 70,000 batches");
        // It knew its first batch's number: it retired the segments before the live entries.
        let after = first(&store);
        assert!(
            after > before,
            "the purge retired no segment: the first starts at batch {before}, then {after}"
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, N - 10)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, N)));
        close(store);
    }
    let mut store = Store::open(dir.path(), one_op).expect("the store reopens");
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, N - 10)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, N)));
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&entries), (N - 9..=N).collect::<Vec<_>>());
    close(store);
}

/// The states openraft 0.9 writes that the open's checks of the vote against the log and of
/// the log's front must take (they refuse damage only; `damaged.rs` has the refusals):
/// `Raft::initialize`'s entry 0, of term 0, before the election saves any vote (a crash
/// between the two); a follower's after it installed a snapshot past its log (its vote saved
/// first, then the purge to the snapshot's last log id, then the leader's next entries);
/// and the log emptied by openraft's start-up purge up to the state machine's applied id,
/// past the log's end. Each reopens as written.
#[tokio::test]
async fn the_states_openraft_writes_at_initialize_and_after_a_snapshot_reopen() {
    let initialized = log_id(0, 0, 0);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        // (`initialize`'s holds the membership; its log id is this one.)
        let first = Entry {
            log_id: initialized,
            payload: EntryPayload::Blank,
        };
        store.blocking_append([first]).await.unwrap();
        close(store);
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), None);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(initialized));
    close(store);

    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 1);
    let snapshot_last = log_id(3, 1, 10);
    {
        let mut store = open(dir.path());
        store.save_vote(&vote).await.unwrap();
        store.purge(snapshot_last).await.unwrap();
        store
            .blocking_append((11..=12).map(|i| entry(3, i, 10)))
            .await
            .unwrap();
        close(store);
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(snapshot_last));
    assert_eq!(state.last_log_id, Some(log_id(3, 1, 12)));
    let entries = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&entries), [11, 12]);
    // The start-up's purge past the log's end (to an applied id of the vote's term).
    store.purge(log_id(3, 1, 20)).await.unwrap();
    close(store);
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 1, 20)));
    assert_eq!(state.last_log_id, Some(log_id(3, 1, 20)));
    assert!(store.try_get_log_entries(0..).await.unwrap().is_empty());
    close(store);
}
