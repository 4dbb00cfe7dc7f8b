//! Writes the store's next open would refuse as damage are refused at the call, before
//! anything is written: an append that does not go on from the log's end (a hole, an
//! overlap, a log starting above 0 with no purged log id), whose terms go down along the log
//! or are above the vote's, and a vote of a term below the last log id's. openraft never
//! makes them; a caller that did got them acknowledged, and then a directory that no longer
//! opened. After each refusal the store goes on, and a reopen gives back what was taken.

mod common;

use std::path::Path;

use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, RaftLogReader, Vote};

type Store = LogStore<TypeConfig>;

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    common::entry(term, index, 20)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, common::small_config()).expect("the store opens")
}

/// An append that must be refused: its error's text.
async fn refused_append(store: &mut Store, entries: Vec<Entry<TypeConfig>>, what: &str) -> String {
    match store.blocking_append(entries).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    }
}

fn assert_says(err: &str, phrases: &[&str], what: &str) {
    for phrase in phrases {
        assert!(
            err.contains(phrase),
            "{what}: {err:?} does not say {phrase:?}"
        );
    }
}

#[tokio::test]
async fn appends_and_votes_the_next_open_would_refuse_are_refused_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());

    let what = "entry 1 first, on an empty log with no purged log id";
    let err = refused_append(&mut store, vec![entry(0, 1)], what).await;
    let phrases = [
        "append refused (nothing written)",
        "entry T0-N1-1 does not go on from the log's end",
        "the log is empty, with no purged log id: its next index is 0",
    ];
    assert_says(&err, &phrases, what);

    let what = "entry 0 of term 1 with no vote";
    let err = refused_append(&mut store, vec![entry(1, 0)], what).await;
    let phrases = ["entry T1-N1-0 is of a term above that of no vote (term 0)"];
    assert_says(&err, &phrases, what);

    // What a node writes: the vote of term 2, entries 0 to 3 of terms 1, 1, 2, 2.
    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let log = vec![entry(1, 0), entry(1, 1), entry(2, 2), entry(2, 3)];
    store.blocking_append(log.clone()).await.unwrap();

    let what = "entry 5 after entry 3";
    let err = refused_append(&mut store, vec![entry(2, 5)], what).await;
    let phrases = [
        "entry T2-N1-5 does not go on from the log's end",
        "the log's next index is 4 (its last log id is T2-N1-3)",
    ];
    assert_says(&err, &phrases, what);

    let what = "entry 2 again, without a truncate";
    let err = refused_append(&mut store, vec![entry(2, 2)], what).await;
    assert_says(&err, &["entry T2-N1-2 does not go on"], what);

    let what = "entries 4 and 6";
    let err = refused_append(&mut store, vec![entry(2, 4), entry(2, 6)], what).await;
    let phrases = ["entry T2-N1-6 does not go on from the log's end: it is not the one after the append's entry T2-N1-4, before it"];
    assert_says(&err, &phrases, what);

    let what = "entry 4 of term 1 after entry 3 of term 2";
    let err = refused_append(&mut store, vec![entry(1, 4)], what).await;
    let phrases = ["entry T1-N1-4 has a term (leader id) below that of T2-N1-3, before it"];
    assert_says(&err, &phrases, what);

    let what = "entry 4 of term 3 under the vote of term 2";
    let err = refused_append(&mut store, vec![entry(3, 4)], what).await;
    let phrases = ["entry T3-N1-4 is of a term above that of the vote T2-N1:committed"];
    assert_says(&err, &phrases, what);

    let what = "a vote of term 1 over entries of term 2";
    let err = match store.save_vote(&Vote::new_committed(1, 1)).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    };
    let phrases = [
        "vote refused (nothing written)",
        "the vote T1-N1:committed is of a term below that of the last log id T2-N1-3",
    ];
    assert_says(&err, &phrases, what);

    // Nothing of them was written, and the store goes on: a truncate, then a new leader's
    // vote and entries, as a node writes them.
    store.truncate(log_id(2, 1, 3)).await.unwrap();
    store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
    store
        .blocking_append([entry(3, 3), entry(3, 4)])
        .await
        .unwrap();
    let expected = [&log[..3], &[entry(3, 3), entry(3, 4)]].concat();
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), expected);
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), expected);
    let vote = store.read_vote().await.unwrap();
    assert_eq!(vote, Some(Vote::new_committed(3, 1)));
    store.close().unwrap();
}

/// After a purge, the log goes on right after the purged log id (a snapshot's install purges
/// past an empty log, then takes entries after it): those appends are taken, others refused.
#[tokio::test]
async fn after_a_purge_the_log_goes_on_after_the_purged_log_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    store.purge(log_id(2, 1, 9)).await.unwrap();
    let what = "entry 11 after the purged log id T2-N1-9";
    let err = refused_append(&mut store, vec![entry(2, 11)], what).await;
    let phrases = ["the log's next index is 10 (its last log id is T2-N1-9)"];
    assert_says(&err, &phrases, what);
    let what = "entry 10 of term 1 after the purged log id T2-N1-9";
    let err = refused_append(&mut store, vec![entry(1, 10)], what).await;
    assert_says(&err, &["below that of T2-N1-9, before it"], what);
    store.blocking_append([entry(2, 10)]).await.unwrap();
    store.close().unwrap();
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 9)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 10)));
    store.close().unwrap();
}
