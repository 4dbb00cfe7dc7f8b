//! Writes the store's next open would refuse as damage are refused at the call, before
//! anything is written: an append that does not go on from the log's end (a hole, an
//! overlap, a log starting above 0 with no purged log id), whose terms go down along the log
//! or are above the vote's, a vote of a term below the last log id's, a committed log id
//! past the last log id or other than its entry's, a truncate below the committed log id, a
//! purge to a term above the first kept entry's or, past the log's end, the vote's. openraft never
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

/// A committed log id past the last log id or other than the entry's at its index, and a
/// truncate below the committed log id: the next open refuses the directory once the id is
/// logged ("the committed log id ... is past the last log id"), so the store refuses them at
/// the call, naming both ids; what a node writes is taken, and the store goes on.
#[tokio::test]
async fn committed_ids_and_truncates_the_next_open_would_refuse_are_refused_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());

    let what = "a committed log id on an empty log";
    let err = refused_committed(&mut store, log_id(0, 1, 0), what).await;
    let phrases = [
        "committed log id refused (nothing written)",
        "the committed log id T0-N1-0 is past the end of an empty log",
    ];
    assert_says(&err, &phrases, what);

    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let log = vec![entry(1, 0), entry(1, 1), entry(2, 2), entry(2, 3)];
    store.blocking_append(log.clone()).await.unwrap();

    let what = "a committed log id past the last log id";
    let err = refused_committed(&mut store, log_id(2, 1, 5), what).await;
    let phrases = [
        "committed log id refused (nothing written)",
        "the committed log id T2-N1-5 is past the last log id T2-N1-3",
    ];
    assert_says(&err, &phrases, what);

    let what = "a committed log id of another term than its entry's";
    let err = refused_committed(&mut store, log_id(1, 1, 3), what).await;
    let phrases = ["the committed log id T1-N1-3 is not that of entry 3, T2-N1-3"];
    assert_says(&err, &phrases, what);

    store.save_committed(Some(log_id(2, 1, 2))).await.unwrap();
    let what = "a truncate below the committed log id";
    let err = match store.truncate(log_id(2, 1, 2)).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    };
    let phrases = [
        "truncate refused (nothing written)",
        "it would delete entry 2, which the committed log id T2-N1-2 covers: the last log id would be \
         T1-N1-1",
    ];
    assert_says(&err, &phrases, what);

    // Nothing of them was written: the log, its committed id, and the store goes on.
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 2)));
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), log);
    store.truncate(log_id(2, 1, 3)).await.unwrap();
    store.save_committed(None).await.unwrap();
    store.save_committed(Some(log_id(2, 1, 2))).await.unwrap();
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 2)));
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), &log[..3]);
    store.close().unwrap();
}

/// After a purge the committed log id may lie at or below the purged log id, of any term
/// (no entry is left there to compare it with), and a purge past the log's end (a snapshot's)
/// makes the purged id the last log id: the open takes all of these, and so does the store.
#[tokio::test]
async fn after_a_purge_the_committed_id_may_lie_at_or_below_the_purged_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
    let log: Vec<_> = (0..6).map(|i| entry(2, i)).collect();
    store.blocking_append(log).await.unwrap();
    store.save_committed(Some(log_id(2, 1, 4))).await.unwrap();
    store.purge(log_id(2, 1, 3)).await.unwrap();
    // Below the purged id, of a term no entry had there; then at it.
    store.save_committed(Some(log_id(1, 1, 1))).await.unwrap();
    store.save_committed(Some(log_id(2, 1, 3))).await.unwrap();
    // Every entry truncated: the committed id is at the purged id, below the cut.
    store.truncate(log_id(2, 1, 4)).await.unwrap();
    // A snapshot's purge past the log's end, and its id committed; at the purged index, of
    // another term than the purged id's, too.
    store.purge(log_id(3, 1, 9)).await.unwrap();
    store.save_committed(Some(log_id(3, 1, 9))).await.unwrap();
    store.save_committed(Some(log_id(2, 1, 9))).await.unwrap();
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 9)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 1, 9)));
    assert_eq!(state.last_log_id, Some(log_id(3, 1, 9)));
    store.close().unwrap();
}

/// A committed log id that must be refused: its error's text.
async fn refused_committed(store: &mut Store, id: openraft::LogId<u64>, what: &str) -> String {
    match store.save_committed(Some(id)).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    }
}

/// Purges the next open would refuse: a purged log id of a term above that of the first
/// entry kept (terms never go down along the log, from the purged id on), or one past the
/// log's end (which then is the last log id) of a term above the vote's.
#[tokio::test]
async fn purges_the_next_open_would_refuse_are_refused_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let log = vec![entry(1, 0), entry(1, 1), entry(2, 2), entry(2, 3)];
    store.blocking_append(log.clone()).await.unwrap();

    let what = "a purge to T2-N1-0, before entry 1 of term 1";
    let err = match store.purge(log_id(2, 1, 0)).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    };
    let phrases = [
        "purge refused (nothing written)",
        "the purged log id T2-N1-0 is of a term (leader id) above that of entry 1 after it, \
         T1-N1-1",
    ];
    assert_says(&err, &phrases, what);

    let what = "a purge past the log's end to a term above the vote's";
    let err = match store.purge(log_id(3, 1, 9)).await {
        Ok(()) => panic!("{what}: taken (the next open refuses the log)"),
        Err(e) => e.to_string(),
    };
    let phrases = [
        "purge refused (nothing written)",
        "the purged log id T3-N1-9, then the last log id, is of a term above that of the \
         vote T2-N1:committed",
    ];
    assert_says(&err, &phrases, what);

    // Nothing of them was written; a purge a node makes is taken.
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), log);
    store.purge(log_id(1, 1, 1)).await.unwrap();
    store.close().unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), &log[2..]);
    store.close().unwrap();
}

/// Any sequence of calls the store takes leaves a directory that opens again, with the state
/// the store had: random votes, appends (going on from the log's end or not, of random
/// terms), committed ids, truncates and purges, each taken or refused (a refusal must say so,
/// and change nothing), and a close and reopen every few calls.
#[tokio::test]
async fn any_sequence_of_taken_calls_leaves_a_log_that_opens_again() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..32u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut taken = Vec::new();
        for step in 0..60 {
            let state = store.get_log_state().await.unwrap();
            let next = state.last_log_id.map_or(0, |l| l.index + 1);
            let last_term = state.last_log_id.map_or(0, |l| l.leader_id.term);
            let vote_term = store
                .read_vote()
                .await
                .unwrap()
                .map_or(0, |v| v.leader_id().term);
            let term = |rng: &mut StdRng| last_term.saturating_sub(1) + rng.random_range(0..3);
            let index = |rng: &mut StdRng| rng.random_range(0..next + 3);
            let (call, outcome) = match rng.random_range(0..12) {
                0 => {
                    let vote = Vote::new_committed(vote_term + rng.random_range(0..2), 1);
                    (format!("save_vote({vote})"), store.save_vote(&vote).await)
                }
                1..=4 => {
                    let from = (next + rng.random_range(0..4)).saturating_sub(1);
                    let t = term(&mut rng);
                    let n = rng.random_range(1..4);
                    let entries: Vec<_> = (from..from + n).map(|i| entry(t, i)).collect();
                    let call = format!("append of entries {from} to {} of term {t}", from + n - 1);
                    (call, store.blocking_append(entries).await)
                }
                5..=7 => {
                    let id = match rng.random_range(0..6) {
                        0 => None,
                        _ => Some(log_id(term(&mut rng), 1, index(&mut rng))),
                    };
                    let call = match &id {
                        Some(id) => format!("save_committed({id})"),
                        None => "save_committed(None)".into(),
                    };
                    (call, store.save_committed(id).await)
                }
                8 | 9 => {
                    let id = log_id(term(&mut rng), 1, index(&mut rng));
                    (format!("truncate({id})"), store.truncate(id).await)
                }
                10 => {
                    let id = log_id(term(&mut rng), 1, index(&mut rng));
                    (format!("purge({id})"), store.purge(id).await)
                }
                _ => {
                    let before = (
                        store.get_log_state().await.unwrap(),
                        store.read_vote().await.unwrap(),
                        store.read_committed().await.unwrap(),
                        store.try_get_log_entries(..).await.unwrap(),
                    );
                    store.close().unwrap();
                    store = match Store::open(dir.path(), common::small_config()) {
                        Ok(s) => s,
                        Err(e) => panic!(
                            "seed {seed}, step {step}: the store does not open again after \
                             the calls it took ({}): {e}",
                            taken.join("; ")
                        ),
                    };
                    let after = (
                        store.get_log_state().await.unwrap(),
                        store.read_vote().await.unwrap(),
                        store.read_committed().await.unwrap(),
                        store.try_get_log_entries(..).await.unwrap(),
                    );
                    assert_eq!(
                        after,
                        before,
                        "seed {seed}, step {step}: the reopened state after {}",
                        taken.join("; ")
                    );
                    continue;
                }
            };
            match outcome {
                Ok(()) => taken.push(call),
                Err(e) => assert!(
                    e.to_string().contains("refused (nothing written)"),
                    "seed {seed}, step {step}: {call} failed: {e}"
                ),
            }
        }
        store.close().unwrap();
        if let Err(e) = Store::open(dir.path(), common::small_config()) {
            panic!(
                "seed {seed}: the store does not open again after the calls it took ({}): {e}",
                taken.join("; ")
            );
        }
    }
}

/// A committed id saved as `None` after one the log holds, then a purge: the purge rewrites
/// the meta keys before it retires segments, and a reopen gives back `None`, not the older
/// id (openraft never saves `None` after an id; a caller driving the store may).
#[tokio::test]
async fn a_committed_none_saved_before_a_purge_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    store.blocking_append([entry(1, 0)]).await.unwrap();
    store.save_committed(Some(log_id(1, 1, 0))).await.unwrap();
    // Logs the committed id in its first batch.
    store.blocking_append([entry(1, 1)]).await.unwrap();
    store.save_committed(None).await.unwrap();
    store.purge(log_id(1, 1, 0)).await.unwrap();
    store.close().unwrap();
    let mut store = open(dir.path());
    assert_eq!(
        store.read_committed().await.unwrap(),
        None,
        "the committed id"
    );
    store.close().unwrap();
}
