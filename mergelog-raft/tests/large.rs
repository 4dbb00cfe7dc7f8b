//! Entries of any size: an entry whose encoding is longer than the engine takes as one value
//! (`value_len_max`) or than the store's batch budget is stored in chunks, read back whole,
//! truncated and purged with its chunks, and survives a reopen; chunks of no entry are
//! deleted at open; a damaged chunked entry is a read error naming it, never a panic.
//! (Power loss in the middle of chunked appends: `crash.rs`; a cluster: `cluster.rs`.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mergelog::{Config, Engine};
use mergelog_raft::kv::{Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, RaftLogReader};

type Store = LogStore<TypeConfig>;

/// The store's chunk length under `config()` (`LogStore::chunk_len`): `value_len_max`.
const CHUNK_LEN: usize = 4096;

/// Values of at most 4 KiB, batches of at most 16 KiB, the smallest ring and segments: the
/// store's chunks are `value_len_max` long (its batch budget, half of 16 KiB, is larger), and
/// a 100 KiB entry spans segments.
fn config() -> Config {
    Config {
        value_len_max: 4096,
        batch_bytes_max: 16 << 10,
        ring_bytes: 64 << 10,
        segment_bytes: 64 << 10,
        ..Config::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, config()).expect("the store opens")
}

/// A payload of `len` bytes that differ along it and from one entry to the next (a simple
/// xorshift, seeded by `seed`), so that a chunk out of place or from another entry shows.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn entry(term: u64, index: u64, len: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Request {
            key: format!("k{index}"),
            value: payload(term * 1_000_003 + index, len),
        }),
    }
}

fn encoded_len(e: &Entry<TypeConfig>) -> usize {
    postcard::to_stdvec(e).unwrap().len()
}

/// The payload length that makes entry `index`'s encoding exactly `target` bytes.
fn payload_len_for(term: u64, index: u64, target: usize) -> usize {
    let mut len = target;
    // The encoding's overhead shrinks by a byte or two as the length's varint does: walk
    // down until it fits, then check.
    while encoded_len(&entry(term, index, len)) > target {
        len -= 1;
    }
    assert_eq!(
        encoded_len(&entry(term, index, len)),
        target,
        "no payload encodes entry {index} to exactly {target} bytes"
    );
    len
}

/// The chunk keys the engine holds: chunk numbers by entry index.
fn chunk_keys(engine: &Engine) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut found = BTreeMap::<u64, BTreeSet<u32>>::new();
    engine.for_each(|key, _| {
        if key.len() == 13 && key[0] == b'c' {
            let index = u64::from_be_bytes(key[1..9].try_into().unwrap());
            let n = u32::from_be_bytes(key[9..].try_into().unwrap());
            found.entry(index).or_default().insert(n);
        }
    });
    found
}

/// How many chunks an entry of `len` encoded bytes takes (16 bytes of header in chunk 0).
fn chunk_count(len: usize, chunk_len: usize) -> u32 {
    (1 + (len - (chunk_len - 16)).div_ceil(chunk_len)) as u32
}

/// The chunk keys the log should hold for `entries`: `0..count` for each chunked one.
fn expected_chunks(
    entries: &[Entry<TypeConfig>],
    chunk_len: usize,
) -> BTreeMap<u64, BTreeSet<u32>> {
    entries
        .iter()
        .filter(|e| encoded_len(e) > chunk_len)
        .map(|e| {
            let count = chunk_count(encoded_len(e), chunk_len);
            (e.log_id.index, (0..count).collect())
        })
        .collect()
}

async fn read_all(store: &mut Store) -> Vec<Entry<TypeConfig>> {
    store
        .try_get_log_entries(..)
        .await
        .expect("the entries read")
}

#[tokio::test]
async fn entries_of_any_size_are_stored_and_come_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 1).await;
    let chunk_len = CHUNK_LEN;
    let exact = payload_len_for(1, 2, chunk_len);
    let over = payload_len_for(1, 3, chunk_len + 1);
    let lens = [0, exact, over, 3 << 20, 10, 5 * chunk_len + 123, 0];
    let entries: Vec<_> = (1..)
        .zip(lens)
        .map(|(index, len)| entry(1, index, len))
        .collect();
    assert_eq!(encoded_len(&entries[1]), chunk_len);
    assert_eq!(encoded_len(&entries[2]), chunk_len + 1);
    store
        .blocking_append(entries.clone())
        .await
        .expect("entries larger than a value are appended");
    assert_eq!(read_all(&mut store).await, entries);

    // Stored as designed: up to the chunk length as the key's value, longer in chunks under
    // an empty value.
    let engine = store.engine().clone();
    let key = |i: u64| [&[b'e'][..], &i.to_be_bytes()].concat();
    assert_eq!(engine.read(&key(2)).unwrap().unwrap().len(), chunk_len);
    assert!(engine.read(&key(3)).unwrap().unwrap().is_empty());
    assert_eq!(chunk_keys(&engine), expected_chunks(&entries, chunk_len));
    // 3 MiB and a few bytes of encoding and header: 769 chunks of 4 KiB.
    assert_eq!(chunk_keys(&engine)[&4].len(), 769);
    drop(engine);
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(read_all(&mut store).await, entries);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
    // Range reads in the middle of chunked entries, and limited ones.
    assert_eq!(
        store.try_get_log_entries(3..=4).await.unwrap(),
        entries[2..4]
    );
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.limited_get_log_entries(4, 7).await.unwrap(),
        entries[3..6]
    );
    // The log goes on after them.
    let more = entry(1, 8, 2 * chunk_len);
    store.blocking_append([more.clone()]).await.unwrap();
    assert_eq!(store.try_get_log_entries(8..).await.unwrap(), [more]);
    store.close().unwrap();
}

/// A replication read (`limited_get_log_entries`) stops once the entries it read reach the
/// store's byte bound, however few they are (at least one): entries of any size could
/// otherwise put up to 4,096 whole entries in memory at once. `try_get_log_entries` is not
/// bounded (openraft expects the whole range from it).
#[tokio::test]
async fn a_replication_read_stops_at_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 1).await;
    let entries: Vec<_> = (1..=6).map(|i| entry(1, i, 3 * CHUNK_LEN)).collect();
    let size = encoded_len(&entries[0]);
    store.blocking_append(entries.clone()).await.unwrap();
    // Durable, out of the overlay: the bytes counted are those read from the engine.
    store.engine().flush().unwrap().wait().unwrap();
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.limited_get_log_entries(1, 7).await.unwrap(),
        entries,
        "under the default bound"
    );
    // Two entries reach a bound of one and a half: the read stops after the second.
    store.set_read_bytes_max(size + size / 2);
    let mut next = 1;
    let mut pieces = Vec::new();
    while next < 7 {
        let got = reader.limited_get_log_entries(next, 7).await.unwrap();
        assert!(!got.is_empty(), "a read from {next} returned nothing");
        next += got.len() as u64;
        pieces.push(got.len());
    }
    assert_eq!(pieces, [2, 2, 2]);
    // A bound below one entry still returns one.
    store.set_read_bytes_max(1);
    assert_eq!(
        reader.limited_get_log_entries(3, 7).await.unwrap(),
        entries[2..3]
    );
    assert_eq!(store.try_get_log_entries(1..7).await.unwrap(), entries);
    store.close().unwrap();
}

/// A truncate into chunked entries and a purge across them delete the chunks of the entries
/// they delete; the purge retires segments, and the live entries' chunks, which went in
/// batches before their keys', are kept: read back after a reopen.
#[tokio::test]
async fn a_truncate_and_a_purge_delete_chunks_and_keep_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 2).await;
    let chunk_len = CHUNK_LEN;
    // Odd indexes large (100 KiB: 26 chunks, one per batch, several segments per entry
    // pair), even ones small.
    let len = |i: u64| if i % 2 == 1 { 100 << 10 } else { 100 };
    let mut log: Vec<_> = (1..=12).map(|i| entry(1, i, len(i))).collect();
    store.blocking_append(log.clone()).await.unwrap();
    assert_eq!(chunk_keys(store.engine()), expected_chunks(&log, chunk_len));

    // Truncate at a chunked entry, then a new leader's entries over it: index 9 had 26
    // chunks, its new entry has 3 (any stale one would be caught below).
    store.truncate(log_id(1, 1, 9)).await.unwrap();
    log.truncate(8);
    assert_eq!(chunk_keys(store.engine()), expected_chunks(&log, chunk_len));
    let newer = [
        entry(2, 9, 3 * chunk_len),
        entry(2, 10, 50),
        entry(2, 11, 8000),
    ];
    store.blocking_append(newer.clone()).await.unwrap();
    log.extend(newer);
    assert_eq!(read_all(&mut store).await, log);

    // Purge up to index 6: entry 7's chunks went in batches before its key's, in segments
    // the purge may retire only if it counts them as entry 7's.
    let before = store.engine().segments().len();
    store.purge(log_id(1, 1, 6)).await.unwrap();
    assert!(
        store.engine().segments().len() < before,
        "the purge retired segments"
    );
    log.drain(..6);
    assert_eq!(chunk_keys(store.engine()), expected_chunks(&log, chunk_len));
    assert_eq!(read_all(&mut store).await, log);
    store.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(read_all(&mut store).await, log);
    assert_eq!(chunk_keys(store.engine()), expected_chunks(&log, chunk_len));
    // A purge past every chunked entry leaves no chunk.
    store.purge(log_id(2, 1, 11)).await.unwrap();
    assert!(chunk_keys(store.engine()).is_empty());
    store.close().unwrap();
    let mut store = open(dir.path());
    assert!(read_all(&mut store).await.is_empty());
    assert!(chunk_keys(store.engine()).is_empty());
    store.close().unwrap();
}

/// What a crash can leave: chunks above the last entry (an append cut before the entry's
/// key), chunks of an entry whose key a truncate deleted, chunks of purged entries, and
/// entries at or below the purged id. The store deletes all of them at open and keeps the
/// chunks of its entries.
#[tokio::test]
async fn chunks_of_no_entry_are_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 2).await;
    let chunk_len = CHUNK_LEN;
    let log: Vec<_> = (1..=6).map(|i| entry(1, i, 2 * chunk_len)).collect();
    store.blocking_append(log.clone()).await.unwrap();
    store.purge(log_id(1, 1, 2)).await.unwrap();
    store.close().unwrap();

    // Leftovers, written behind the store's back.
    let engine = Engine::open(dir.path(), config()).unwrap();
    let chunk = |i: u64, n: u32| [&[b'c'][..], &i.to_be_bytes(), &n.to_be_bytes()].concat();
    let key = |i: u64| [&[b'e'][..], &i.to_be_bytes()].concat();
    let mut batch = mergelog::WriteBatch::new();
    for n in 0..4 {
        // An append of entry 7 cut before its key; a truncated entry 6 (its key deleted).
        batch.put(&chunk(7, n), b"left by an append");
        // A purge cut before it deleted entry 1's chunks and entry 2's key.
        batch.put(&chunk(1, n), b"left by a purge");
    }
    batch.put(&key(2), &postcard::to_stdvec(&entry(1, 2, 10)).unwrap());
    batch.delete(&key(6));
    engine.write(&batch).unwrap().wait().unwrap();
    engine.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(read_all(&mut store).await, log[2..5]);
    assert_eq!(
        chunk_keys(store.engine()),
        expected_chunks(&log[2..5], chunk_len)
    );
    assert!(store.engine().read(&key(2)).unwrap().is_none());
    // And the log goes on at 6, with an entry of fewer chunks than the one truncated there.
    let newer = entry(2, 6, chunk_len + 100);
    store.blocking_append([newer.clone()]).await.unwrap();
    store.close().unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.try_get_log_entries(6..).await.unwrap(), [newer]);
    store.close().unwrap();
}

/// A chunked entry that does not reassemble (a chunk missing, a chunk of other bytes) is a
/// storage read error naming its index, not a panic nor a wrong entry.
#[tokio::test]
async fn a_damaged_chunked_entry_is_a_read_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 1).await;
    let chunk_len = CHUNK_LEN;
    let log: Vec<_> = (1..=4).map(|i| entry(1, i, 3 * chunk_len)).collect();
    store.blocking_append(log.clone()).await.unwrap();
    store.close().unwrap();

    let engine = Engine::open(dir.path(), config()).unwrap();
    let chunk = |i: u64, n: u32| [&[b'c'][..], &i.to_be_bytes(), &n.to_be_bytes()].concat();
    let mut batch = mergelog::WriteBatch::new();
    batch.delete(&chunk(2, 1));
    // Chunk 1 of entry 3 swapped for entry 4's: the right length, other bytes.
    let other = engine.read(&chunk(4, 1)).unwrap().unwrap().to_vec();
    batch.put(&chunk(3, 1), &other);
    engine.write(&batch).unwrap().wait().unwrap();
    engine.close().unwrap();

    let mut store = open(dir.path());
    assert_eq!(store.try_get_log_entries(1..2).await.unwrap(), log[..1]);
    assert_eq!(store.try_get_log_entries(4..).await.unwrap(), log[3..]);
    for (index, what) in [(2, "chunk 1 is missing"), (3, "CRC-32C")] {
        let err = store
            .try_get_log_entries(index..index + 1)
            .await
            .expect_err("a damaged entry is an error");
        let text = format!("{err}");
        assert!(
            text.contains(&format!("entry {index}")) && text.contains(what),
            "entry {index}: {text}"
        );
    }
    store.close().unwrap();
}

/// Under `Backpressure::Reject` a full ring refuses a batch with `Error::Busy`: an entry
/// larger than the ring (here 1 MiB of chunks against a 64 KiB ring) cannot have all its
/// batches in the ring at once. The store waits for its earlier batches and submits again,
/// rather than fail the append (which would stop the node).
#[tokio::test]
async fn an_entry_larger_than_the_ring_is_appended_under_reject() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        backpressure: mergelog::Backpressure::Reject,
        ..config()
    };
    let mut store = Store::open(dir.path(), config.clone()).expect("the store opens");
    common::log_from_1(&mut store, 1).await;
    let log = vec![entry(1, 1, 1 << 20), entry(1, 2, 100)];
    store
        .blocking_append(log.clone())
        .await
        .expect("the append is not refused for a full ring");
    assert_eq!(read_all(&mut store).await, log);
    store.close().unwrap();
    let mut store = Store::open(dir.path(), config).expect("the store opens");
    assert_eq!(read_all(&mut store).await, log);
    store.close().unwrap();
}

/// Holds writes into segments (past their headers) while `hold` is set, noting that one was
/// held: the engine's ring then fills behind the held window.
struct HoldWrites {
    hold: std::sync::atomic::AtomicBool,
    held: std::sync::atomic::AtomicBool,
}

/// Lets a held write go however a test ends: a panic with it held would hang the engine's
/// drop instead of failing the test.
struct Release(std::sync::Arc<HoldWrites>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0
            .hold
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl mergelog::internals::io::Io for HoldWrites {
    fn before(
        &self,
        op: mergelog::internals::io::IoOp,
        _path: &Path,
        offset: u64,
        _data: &[u8],
    ) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if op == mergelog::internals::io::IoOp::Write && offset >= 64 {
            while self.hold.load(SeqCst) {
                self.held.store(true, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_vote_saved_while_the_ring_is_full_under_reject_waits_for_room() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        backpressure: mergelog::Backpressure::Reject,
        ..config()
    };
    let io = std::sync::Arc::new(HoldWrites {
        hold: true.into(),
        held: false.into(),
    });
    let engine = Engine::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
    let mut store = Store::with_engine(std::sync::Arc::new(engine)).expect("the store opens");
    // A write the engine takes and holds, then writes until the ring refuses one.
    let engine = store.engine().clone();
    let mut tickets = vec![engine.put(b"first", b"held").unwrap()];
    while !io.held.load(SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Smaller and smaller values, until not even an empty one fits: the vote's put must not
    // find room left over.
    for len in [1000, 100, 10, 0] {
        loop {
            match engine.put(format!("f{}", tickets.len() % 10).as_bytes(), &vec![7; len]) {
                Ok(t) => tickets.push(t),
                Err(mergelog::Error::Busy) => break,
                Err(e) => panic!("filling the ring: {e}"),
            }
        }
    }
    // Declared last, dropped first.
    let _release = Release(io.clone());
    // The vote is saved while the ring is full: it must wait for room, not fail (openraft
    // stops the node on the error). Its first poll finds the ring full.
    let vote = openraft::Vote::new(3, 1);
    {
        let mut saving = std::pin::pin!(store.save_vote(&vote));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(saved) = std::future::Future::poll(saving.as_mut(), &mut cx) {
            panic!("the vote did not wait for room in the ring: {saved:?}");
        }
        io.hold.store(false, SeqCst);
        saving
            .await
            .expect("the vote is saved once the ring has room");
    }
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    for t in tickets {
        t.wait().unwrap();
    }
    store.close().unwrap();
    let mut store = Store::open(dir.path(), config).expect("the store opens");
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    store.close().unwrap();
}

/// Where a reader is held (`LogStore::set_read_hook`): before entry `index` (`n` = 0) or
/// before chunk `n` of it, for each `(index, n)` listed, once. The test learns that it
/// arrived from `arrived` and lets it go with `resume`.
struct Pauses {
    at: std::sync::Mutex<Vec<(u64, u32)>>,
    arrived: std::sync::Mutex<std::sync::mpsc::Sender<(u64, u32)>>,
    resume: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// Where readers arrive, their go-ahead, and a sender of arrivals.
type PauseEnds = (
    std::sync::mpsc::Receiver<(u64, u32)>,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Sender<(u64, u32)>,
);

/// The hook of `store` holds its readers at `at`; the test's ends: where a reader arrived,
/// its go-ahead, and a sender of arrivals (for a reader to say it is done).
fn pause_readers(store: &Store, at: Vec<(u64, u32)>) -> PauseEnds {
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (resume, resume_rx) = std::sync::mpsc::channel();
    let also_arrived = arrived_tx.clone();
    let pauses = Pauses {
        at: std::sync::Mutex::new(at),
        arrived: std::sync::Mutex::new(arrived_tx),
        resume: std::sync::Mutex::new(resume_rx),
    };
    store.set_read_hook(move |index, n| {
        let mut at = pauses.at.lock().unwrap();
        let Some(i) = at.iter().position(|p| *p == (index, n)) else {
            return;
        };
        at.remove(i);
        drop(at);
        let _ = pauses.arrived.lock().unwrap().send((index, n));
        // A test that failed drops its end: the reader goes on.
        let _ = pauses
            .resume
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(60));
    });
    (arrived, resume, also_arrived)
}

/// What a test's own reader sends on `arrived` when it is done.
const DONE: (u64, u32) = (u64::MAX, u32::MAX);

/// Reads `range` on a thread of its own through a `LogReader` of `store`; the entries (or the
/// error's text) come on the receiver.
fn read_on_a_thread(
    reader: mergelog_raft::LogReader<TypeConfig>,
    range: std::ops::RangeInclusive<u64>,
) -> std::sync::mpsc::Receiver<Result<Vec<Entry<TypeConfig>>, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = runtime.block_on(reader.try_get_log_entries(range));
        let _ = tx.send(read.map_err(|e| e.to_string()));
    });
    rx
}

const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

/// A reader assembling a chunked entry while a truncate deletes it and an append writes a
/// new entry, with fewer chunks, at its index: the chunks it reads after chunk 0 are the new
/// entry's, or missing. It must read again (the store's epoch moved) and return the new
/// entry, not report the old one as damaged (which would stop the node).
#[tokio::test]
async fn a_reader_racing_a_truncate_and_an_append_reads_the_new_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 2).await;
    let log: Vec<_> = (1..=3).map(|i| entry(1, i, 3 * CHUNK_LEN)).collect();
    store.blocking_append(log.clone()).await.unwrap();
    let (arrived, resume, _) = pause_readers(&store, vec![(2, 1)]);
    let read = read_on_a_thread(store.get_log_reader().await, 2..=2);
    // Held after entry 2's chunk 0 (of the first entry 2).
    assert_eq!(arrived.recv_timeout(HANG_GUARD).unwrap(), (2, 1));
    store.truncate(log_id(1, 1, 2)).await.unwrap();
    let newer = entry(2, 2, CHUNK_LEN + 100);
    store.blocking_append([newer.clone()]).await.unwrap();
    resume.send(()).unwrap();
    let read = read.recv_timeout(HANG_GUARD).expect("the reader finishes");
    assert_eq!(read, Ok(vec![newer]));
    store.close().unwrap();
}

/// A reader that takes the store's epoch after a truncate began (it read the log's bounds
/// before) and reads an entry's key and chunk 0 before the truncate's deletes are visible,
/// its next chunk after: the entry is being deleted, not damaged, and the read gives the
/// entries before it. A hook holds the reader between chunk reads and the engine's write of
/// the truncate's batch.
#[tokio::test]
async fn a_reader_that_starts_during_a_truncate_does_not_report_damage() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let io = std::sync::Arc::new(HoldWrites {
        hold: false.into(),
        held: false.into(),
    });
    let _release = Release(io.clone());
    let engine = Engine::open_with_io(dir.path(), config(), io.clone()).unwrap();
    let mut store = Store::with_engine(std::sync::Arc::new(engine)).expect("the store opens");
    common::log_from_1(&mut store, 2).await;
    let log: Vec<_> = (1..=3).map(|i| entry(1, i, 3 * CHUNK_LEN)).collect();
    store.blocking_append(log.clone()).await.unwrap();
    let (arrived, resume, _) = pause_readers(&store, vec![(1, 1), (2, 1)]);
    // Reads 1..=2: the bounds first, then entry 1, held in it.
    let read = read_on_a_thread(store.get_log_reader().await, 1..=2);
    assert_eq!(arrived.recv_timeout(HANG_GUARD).unwrap(), (1, 1));
    // The truncate of 2 and 3 submits its deletes; the engine holds their write.
    io.hold.store(true, SeqCst);
    {
        let mut truncating = std::pin::pin!(store.truncate(log_id(1, 1, 2)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            std::future::Future::poll(truncating.as_mut(), &mut cx).is_pending(),
            "the truncate waits for its deletes"
        );
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while !io.held.load(SeqCst) {
            assert!(std::time::Instant::now() < deadline, "hung: no write held");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The reader goes on to entry 2: its key and chunk 0 are still there.
        resume.send(()).unwrap();
        assert_eq!(arrived.recv_timeout(HANG_GUARD).unwrap(), (2, 1));
        // The deletes land, then the reader reads on.
        io.hold.store(false, SeqCst);
        truncating.await.expect("the truncate");
    }
    resume.send(()).unwrap();
    let read = read.recv_timeout(HANG_GUARD).expect("the reader finishes");
    assert_eq!(read, Ok(log[..1].to_vec()));
    store.close().unwrap();
}

/// A range read racing a truncate and a new leader's entries at the same indexes: it may
/// miss the deleted entries (openraft allows it), but what it returns must be consecutive.
/// Entry 3 read after the truncate and entry 4 after the new entries were appended gave 1, 2,
/// then the new 4 and 5: a gap that openraft's replication would send as the entries after
/// `prev_log_id`. The read stops at the first entry missing after one was found.
#[tokio::test]
async fn a_range_read_racing_a_truncate_and_an_append_returns_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    common::log_from_1(&mut store, 2).await;
    let log: Vec<_> = (1..=5).map(|i| entry(1, i, 100)).collect();
    store.blocking_append(log.clone()).await.unwrap();
    let (arrived, resume, arrived_tx) = pause_readers(&store, vec![(3, 0), (4, 0)]);
    // The read's outcome, and a mark on `arrived` when it is done.
    let (read_tx, read) = std::sync::mpsc::channel();
    let mut reader = store.get_log_reader().await;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let entries = runtime.block_on(reader.try_get_log_entries(1..=5));
        let _ = read_tx.send(entries.map_err(|e| e.to_string()));
        let _ = arrived_tx.send(DONE);
    });
    // Before entry 3: the truncate deletes 3 to 5.
    assert_eq!(arrived.recv_timeout(HANG_GUARD).unwrap(), (3, 0));
    store.truncate(log_id(1, 1, 3)).await.unwrap();
    resume.send(()).unwrap();
    // Entry 3 read (gone). A new leader's 3 to 5 are appended before entry 4 is read, if the
    // read goes on to it.
    let next = arrived.recv_timeout(HANG_GUARD).unwrap();
    let newer: Vec<_> = (3..=5).map(|i| entry(2, i, 100)).collect();
    store.blocking_append(newer).await.unwrap();
    if next == (4, 0) {
        resume.send(()).unwrap();
    }
    let read = read.recv_timeout(HANG_GUARD).expect("the reader finishes");
    let indexes: Vec<u64> = read
        .expect("the read")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [1, 2], "a range read must be consecutive");
    store.close().unwrap();
}

/// What the store's read hook is called with when a reader, restarted by truncates and
/// purges again and again, holds them off for the rest of its read (`LogStore::set_read_hook`).
const HOLDS_DELETES_OFF: u32 = u32::MAX;

/// The hook of `store` holds its readers at every entry or chunk of an entry in `indexes`
/// (and where one begins to hold deletes off); the test's ends: where a reader arrived, its
/// go-ahead, and a sender of arrivals. Reads elsewhere (the store's own, of the entry before
/// a truncate) are not held.
fn hold_every_read(store: &Store, indexes: std::ops::RangeInclusive<u64>) -> PauseEnds {
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (resume, resume_rx) = std::sync::mpsc::channel::<()>();
    let also_arrived = arrived_tx.clone();
    let arrived_tx = std::sync::Mutex::new(arrived_tx);
    let resume_rx = std::sync::Mutex::new(resume_rx);
    store.set_read_hook(move |index, n| {
        if !indexes.contains(&index) {
            return;
        }
        let _ = arrived_tx.lock().unwrap().send((index, n));
        // A test that failed drops its end: the reader goes on.
        let _ = resume_rx.lock().unwrap().recv_timeout(HANG_GUARD);
    });
    (arrived, resume, also_arrived)
}

/// A range read that has read nothing yet, while every attempt of it meets a truncate of the
/// whole log and a new leader's entries in its place (before the entry's read, `n` = 0, or
/// between an entry's chunks, `n` = 1): it restarted at every epoch change and never
/// returned. After a few restarts it holds truncates and purges off for the rest of its
/// read (the hook says so), and returns the log of the last leader whole.
#[tokio::test]
async fn a_range_read_restarted_by_truncates_again_and_again_makes_progress() {
    for (len, disrupt_at) in [(100, 0), (3 * CHUNK_LEN, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        common::log_from_1(&mut store, 2).await;
        let mut log: Vec<_> = (1..=3).map(|i| entry(1, i, len)).collect();
        store.blocking_append(log.clone()).await.unwrap();
        let (arrived, resume, arrived_tx) = hold_every_read(&store, 1..=3);
        let (read_tx, read) = std::sync::mpsc::channel();
        let mut reader = store.get_log_reader().await;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let entries = runtime.block_on(reader.try_get_log_entries(1..=3));
            let _ = read_tx.send(entries.map_err(|e| e.to_string()));
            let _ = arrived_tx.send(DONE);
        });
        let (mut truncates, mut held_off) = (0u64, false);
        loop {
            let at = arrived
                .recv_timeout(HANG_GUARD)
                .expect("hung: the reader neither arrived nor finished");
            if at == DONE {
                break;
            }
            if at.1 == HOLDS_DELETES_OFF {
                held_off = true;
            } else if !held_off && at == (1, disrupt_at) {
                assert!(
                    truncates < 100,
                    "the read restarted at each of {truncates} truncates and never returned \
                     (entries of {len} bytes, truncated at (1, {disrupt_at}))"
                );
                truncates += 1;
                // A truncate of the whole log, and a new leader's entries, of other
                // lengths so that chunks of one never complete the other's.
                store.truncate(log_id(1, 1, 1)).await.unwrap();
                let term = truncates + 1;
                // Its vote first, as a node saves it before it takes the leader's entries.
                let vote = openraft::Vote::new_committed(term, 1);
                store.save_vote(&vote).await.unwrap();
                log = (1..=3)
                    .map(|i| entry(term, i, len + 1000 * (term as usize % 3)))
                    .collect();
                store.blocking_append(log.clone()).await.unwrap();
            }
            resume.send(()).unwrap();
        }
        let read = read.recv_timeout(HANG_GUARD).expect("the reader finishes");
        assert_eq!(read, Ok(log.clone()), "the read gives the last log whole");
        assert!(
            held_off,
            "the hook was told that the reader held deletes off"
        );
        store.close().unwrap();
    }
}

/// A reader that takes the store's epoch and the log's bounds between a truncate's first
/// epoch bump and its new bounds (a hook holds the truncate there: `set_delete_hook`): the
/// epoch it holds is already the truncate's, and the bounds are the old log's. It reads
/// entries of the old log, then the truncate ends and a new leader's entries are appended at
/// the truncated indexes, and it reads on: it must not return the new entries after the old
/// ones (`truncate`'s second bump, once its deletes landed, tells it). With entries stored in
/// chunks, the reader is held between two chunks of the entry the new one replaces.
#[tokio::test]
async fn a_reader_that_starts_between_a_truncates_epoch_and_its_bounds_reads_one_log() {
    for (len, hold_at, kept) in [(100, (4, 0), 3), (3 * CHUNK_LEN, (3, 1), 2)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        common::log_from_1(&mut store, 2).await;
        let log: Vec<_> = (1..=5).map(|i| entry(1, i, len)).collect();
        store.blocking_append(log.clone()).await.unwrap();
        let (arrived, resume, _) = pause_readers(&store, vec![hold_at]);
        let (begun_tx, begun) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = std::sync::Mutex::new(go_rx);
        store.set_delete_hook(move |from| {
            let _ = begun_tx.send(from);
            let _ = go_rx.lock().unwrap().recv_timeout(HANG_GUARD);
        });
        let reader = store.get_log_reader().await;
        // The truncate of 3 to 5 and the new leader's entries, on a thread of its own: the
        // hook holds it after its first bump.
        let newer: Vec<_> = (3..=5).map(|i| entry(2, i, len + 2000)).collect();
        let appended = newer.clone();
        let truncator = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                store.truncate(log_id(1, 1, 3)).await.unwrap();
                store.blocking_append(appended).await.unwrap();
            });
            store
        });
        assert_eq!(
            begun.recv_timeout(HANG_GUARD).expect("the truncate began"),
            3
        );
        // The reader takes the epoch and the bounds now, and is held at `hold_at`.
        let read = read_on_a_thread(reader, 1..=5);
        assert_eq!(arrived.recv_timeout(HANG_GUARD).unwrap(), hold_at);
        go.send(()).unwrap();
        let mut store = truncator.join().expect("the truncate and the append");
        resume.send(()).unwrap();
        let read = read.recv_timeout(HANG_GUARD).expect("the reader finishes");
        let read: Vec<_> = read
            .expect("the read")
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        let expected: Vec<_> = (1..=kept).map(|i| (1, i)).collect();
        assert_eq!(read, expected, "entries of the old log only, consecutive");
        let mut now = log[..2].to_vec();
        now.extend(newer);
        assert_eq!(read_all(&mut store).await, now);
        store.close().unwrap();
    }
}
