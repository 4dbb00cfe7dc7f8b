//! Records of the store that decode but do not hold what the store wrote at their key (a
//! log id of another index, bytes after the encoding, an index at the end of the u64 range):
//! an open or a read refuses them with an error naming what is wrong, never serves them and
//! never panics. Found by the fuzz target `raft_store` (fuzz/src/raft_store.rs); these are
//! its findings as plain tests.

mod common;

use std::path::Path;

use mergelog::Engine;
use mergelog_raft::kv::TypeConfig;
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, LogId, RaftLogReader, Vote};

type Store = LogStore<TypeConfig>;

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    common::entry(term, index, 8)
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = vec![b'e'];
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// A store holding entries 0 to 3 (term 2) and the vote of their leader, closed: a state
/// openraft writes (a log starts at index 0, and a node saves a leader's vote before it
/// takes the leader's entries).
async fn three_entries(dir: &Path) {
    let mut store = Store::open(dir, common::small_config()).expect("the store opens");
    store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    store
        .blocking_append((0..=3).map(|i| entry(2, i)))
        .await
        .unwrap();
    store.close().unwrap();
}

/// Puts `key` = `value` through a plain engine over the store's directory.
fn put_raw(dir: &Path, key: &[u8], value: &[u8]) {
    let engine = Engine::open(dir, common::small_config()).unwrap();
    engine.put(key, value).unwrap().wait().unwrap();
    engine.close().unwrap();
}

fn encode(e: &Entry<TypeConfig>) -> Vec<u8> {
    postcard::to_stdvec(e).unwrap()
}

#[tokio::test]
async fn an_entry_whose_log_id_is_not_its_keys_index_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    // Entry 3's bytes under entry 2's key.
    put_raw(dir.path(), &entry_key(2), &encode(&entry(2, 3)));
    let mut store = Store::open(dir.path(), common::small_config()).expect("opens");
    let read = store.try_get_log_entries(1..=3).await;
    let err = read
        .map(|es| es.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        .expect_err("a read returned entries");
    assert!(
        err.to_string()
            .contains("entry 2 holds the log id of index 3"),
        "{err}"
    );
}

#[tokio::test]
async fn a_last_entry_of_another_index_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    put_raw(dir.path(), &entry_key(3), &encode(&entry(2, 2)));
    match Store::open(dir.path(), common::small_config()) {
        Ok(mut store) => {
            let state = store.get_log_state().await.unwrap();
            panic!(
                "the store opened, its last log id {:?} under entry key 3",
                state.last_log_id
            );
        }
        Err(e) => assert!(
            e.to_string()
                .contains("entry 3 holds the log id of index 2"),
            "{e}"
        ),
    }
}

#[tokio::test]
async fn bytes_after_an_entrys_encoding_are_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    let mut value = encode(&entry(2, 2));
    value.push(0);
    put_raw(dir.path(), &entry_key(2), &value);
    let mut store = Store::open(dir.path(), common::small_config()).expect("opens");
    let err = (store.try_get_log_entries(2..=2).await)
        .map(|es| es.len())
        .expect_err("an entry with a byte after its encoding was read");
    assert!(
        err.to_string()
            .contains("does not decode: 1 byte after its encoding"),
        "{err}"
    );
}

#[test]
fn a_purged_log_id_at_the_last_index_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    put_raw(
        dir.path(),
        b"m/purged",
        &postcard::to_stdvec(&log_id::<u64>(1, 1, u64::MAX)).unwrap(),
    );
    let e = Store::open(dir.path(), common::small_config())
        .map(drop)
        .expect_err("opened");
    assert!(
        e.to_string().contains("purged log id is at the last index"),
        "{e}"
    );
}

#[test]
fn an_entry_at_the_last_index_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    // Right after a purged log id: a log that starts above 0 without one is refused first.
    put_raw(
        dir.path(),
        b"m/purged",
        &postcard::to_stdvec(&log_id::<u64>(1, 1, u64::MAX - 1)).unwrap(),
    );
    put_raw(
        dir.path(),
        &entry_key(u64::MAX),
        &encode(&entry(1, u64::MAX)),
    );
    let e = Store::open(dir.path(), common::small_config())
        .map(drop)
        .expect_err("opened");
    assert!(e.to_string().contains("entry at the last index"), "{e}");
}

/// The fuzzer's first finding (`fuzz/regressions/raft_store/crash-32130f40…`): a vote with a
/// byte after its encoding was read as the vote.
#[test]
fn bytes_after_the_votes_encoding_refuse_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut value = postcard::to_stdvec(&openraft::Vote::<u64>::new(3, 1)).unwrap();
    value.push(7);
    put_raw(dir.path(), b"m/vote", &value);
    open_refused(dir.path(), "does not decode: 1 byte after its encoding");
}

/// Opens the store in `dir`, which must refuse it with an error that says `says`; an open
/// that succeeds fails the test with what the store would serve.
fn open_refused(dir: &std::path::Path, says: &str) {
    match Store::open(dir, common::small_config()) {
        Ok(mut store) => panic!(
            "the store opened: vote {:?}, committed {:?}, log state {:?}",
            poll_now(store.read_vote()),
            poll_now(store.read_committed()),
            poll_now(store.get_log_state())
        ),
        Err(e) => assert!(e.to_string().contains(says), "{e}"),
    }
}

/// Polls a future the store completes at once (`read_vote`).
fn poll_now<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the store's read_vote waited"),
    }
}

/// The fuzzer's finding `fuzz/regressions/raft_store/crash-5b36e485…` (a chunk key whose
/// number's byte was changed, to chunk 9,240,576: the open deleted chunks 0 to 9,240,576 one
/// by one, more than 65,536 windows, and its wait for the first of them failed with
/// `SeqUnknown`): a chunk key of no entry with a large number. The open deletes the chunk
/// keys the log holds, not every number below the largest one.
#[test]
fn a_stray_chunk_with_a_large_number_is_deleted_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut key = vec![b'c'];
    key.extend_from_slice(&5u64.to_be_bytes());
    key.extend_from_slice(&200_000u32.to_be_bytes());
    put_raw(dir.path(), &key, b"stray");
    let store = Store::open(dir.path(), common::small_config()).expect("opens");
    store.close().unwrap();
    let reader = mergelog::LogReader::open(dir.path()).unwrap();
    let deletes = reader
        .batches()
        .flat_map(|b| b.to_owned().records)
        .filter(|r| r.op == mergelog::RecordOp::Delete)
        .count();
    assert_eq!(
        deletes, 1,
        "the open deleted {deletes} keys for one stray chunk"
    );
}

/// Entry 2's term damaged to 1 between two entries of term 2 (it still decodes, at its own
/// index): terms never go down along a Raft log, and openraft finds where they change by a
/// binary search of the log ids at start-up, so it would take such a log on trust. The open
/// refuses it, naming the entry.
#[tokio::test]
async fn a_term_going_down_along_the_log_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    put_raw(dir.path(), &entry_key(2), &encode(&entry(1, 2)));
    match Store::open(dir.path(), common::small_config()) {
        Ok(mut store) => {
            let terms: Vec<u64> = (store.try_get_log_entries(1..=3).await.unwrap().iter())
                .map(|e| e.log_id.leader_id.term)
                .collect();
            panic!("the store opened, serving entries 1 to 3 of terms {terms:?}");
        }
        Err(e) => assert!(
            e.to_string().contains(
                "entry 2 has the log id T1-N1-2, whose term (leader id) is below that of \
                 entry 1 before it (T2-N1-1)"
            ),
            "{e}"
        ),
    }
}

/// The first entry after the purged log id of a lower term than the purged id's: the same.
#[tokio::test]
async fn a_first_entry_of_a_term_below_the_purged_ids_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path(), common::small_config()).expect("opens");
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store
            .blocking_append((0..=4).map(|i| entry(2, i)))
            .await
            .unwrap();
        store.purge(log_id(2, 1, 2)).await.unwrap();
        store.close().unwrap();
    }
    put_raw(dir.path(), &entry_key(3), &encode(&entry(1, 3)));
    match Store::open(dir.path(), common::small_config()) {
        Ok(mut store) => {
            let state = store.get_log_state().await.unwrap();
            panic!(
                "the store opened: purged {:?}, entry 3 of term 1",
                state.last_purged_log_id
            );
        }
        Err(e) => assert!(
            e.to_string().contains(
                "entry 3 has the log id T1-N1-3, whose term (leader id) is below that of \
                 the purged log id T2-N1-2"
            ),
            "{e}"
        ),
    }
}

/// `three_entries`, then the committed log id `committed` written over the store's own.
async fn three_entries_committed(dir: &Path, committed: LogId<u64>) {
    three_entries(dir).await;
    let committed = Some(committed);
    put_raw(
        dir,
        b"m/committed",
        &postcard::to_stdvec(&committed).unwrap(),
    );
}

/// The committed log id past the last entry (the store logs it only after the entries it
/// covers, and `crash.rs` checks that a power loss never leaves it past them): openraft's
/// start-up would re-apply entries the log does not hold. The open refuses it.
#[tokio::test]
async fn a_committed_id_past_the_last_entry_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries_committed(dir.path(), log_id::<u64>(2, 1, 5)).await;
    open_refused(
        dir.path(),
        "the committed log id T2-N1-5 is past the last log id T2-N1-3",
    );
}

/// The committed log id of another term than the entry at its index (a committed entry is
/// never truncated, so the log holds that entry): the same.
#[tokio::test]
async fn a_committed_id_that_is_not_its_entrys_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries_committed(dir.path(), log_id::<u64>(1, 1, 2)).await;
    open_refused(
        dir.path(),
        "the committed log id T1-N1-2 is not that of entry 2, T2-N1-2",
    );
}

/// Deletes `key` through a plain engine over the store's directory.
fn delete_raw(dir: &Path, key: &[u8]) {
    let engine = Engine::open(dir, common::small_config()).unwrap();
    engine.delete(key).unwrap().wait().unwrap();
    engine.close().unwrap();
}

/// The vote damaged to a term below the last entry's: a node saves a leader's vote (durably)
/// before it appends the leader's entries, and its vote never goes down, so its vote's term
/// is never below a term its log holds. openraft takes the vote on trust at start-up (it
/// could vote again, or lead, in a term it has already seen a leader of). The open refuses
/// it, naming both.
#[tokio::test]
async fn a_vote_below_the_last_entrys_term_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    put_raw(
        dir.path(),
        b"m/vote",
        &postcard::to_stdvec(&Vote::<u64>::new(1, 1)).unwrap(),
    );
    open_refused(
        dir.path(),
        "the vote T1-N1:uncommitted is of a term below that of the last log id T2-N1-3",
    );
}

/// The vote's record deleted under a log of term 2: openraft reads no vote as the vote of
/// term 0, below the log's. The same.
#[tokio::test]
async fn no_vote_under_entries_of_a_term_above_0_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    delete_raw(dir.path(), b"m/vote");
    open_refused(
        dir.path(),
        "no vote (term 0) is of a term below that of the last log id T2-N1-3",
    );
}

/// Entry 0 deleted with no purged log id: a log starts at index 0 (openraft's first entry,
/// `Raft::initialize`'s, is at 0, and a follower takes entries after its last or after a
/// snapshot it purged the log to), and only a purge removes its front, writing the purged
/// log id first. openraft's start-up would fail to read entry 0 (it loads the log ids from
/// the first entry). The open refuses it, naming the missing entries.
#[tokio::test]
async fn a_log_starting_above_0_without_a_purged_id_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    three_entries(dir.path()).await;
    delete_raw(dir.path(), &entry_key(0));
    match Store::open(dir.path(), common::small_config()) {
        Ok(mut store) => panic!(
            "the store opened: log state {:?}",
            store.get_log_state().await.unwrap()
        ),
        Err(e) => assert!(
            e.to_string().contains(
                "the log has a hole: entries 0 to 0 are missing at its front (it has no purged \
                 log id, and its first entry is 1)"
            ),
            "{e}"
        ),
    }
}
