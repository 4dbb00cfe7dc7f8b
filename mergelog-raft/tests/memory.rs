//! Memory on the append path: appending one large entry holds, besides the entry itself
//! (which the overlay keeps until it is durable), memory bounded by the store's chunk length
//! and batch budget, not by the entry's size. A counting global allocator measures the peak
//! of live heap bytes, over every thread (the engine's too), while the append runs.
//!
//! The counters are the process's: each test holds `ONE_AT_A_TIME` while it measures.

use mergelog::Config;
use mergelog_raft::kv::{Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::storage::RaftLogStorageExt;
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, RaftLogReader};

mod common;
#[path = "../../tests/counting/mod.rs"]
mod counting;

/// Held by each test: the counters count every thread's allocations.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Values of at most 64 KiB, batches of at most 256 KiB: chunks of 64 KiB, a batch budget of
/// 128 KiB.
fn config() -> Config {
    Config {
        value_len_max: 64 << 10,
        batch_bytes_max: 256 << 10,
        ring_bytes: 4 << 20,
        segment_bytes: 8 << 20,
        ..Config::default()
    }
}

fn entry(index: u64, len: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Request {
            key: format!("k{index}"),
            value: (0..len).map(|i| (i * 31 + i / 4096) as u8).collect(),
        }),
    }
}

/// Bytes beyond the entry itself an append may hold at its peak: a constant of the store's
/// chunk length and batch budget (here 64 KiB and 128 KiB), whatever the entry's size.
const EXTRA_MAX: usize = 1 << 20;

/// Appends of entries of 4 MiB and 16 MiB (64 and 256 chunks): the peak of live heap bytes
/// while each runs, less those live before its entry was built, is the entry (1×) and at
/// most `EXTRA_MAX` more. The entry was held several times over (its encoding, in a buffer
/// grown by doubling, and copies of it), so the excess grew with the entry.
#[test]
fn an_append_holds_its_entry_once_and_a_bounded_rest() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut store = LogStore::<TypeConfig>::open(dir.path(), config()).expect("the store opens");
    assert_eq!(store.chunk_len(), 64 << 10);
    runtime.block_on(common::log_from_1(&mut store, 1));
    // An append of 1 MiB (16 chunks) first: the engine's and the store's one-time
    // allocations (the frame buffer grows to a window's largest frame, within
    // `batch_bytes_max`).
    runtime
        .block_on(store.blocking_append([entry(1, 1 << 20)]))
        .unwrap();
    let mut excess = Vec::new();
    for (index, len) in [(2, 4 << 20), (3, 16 << 20)] {
        let before = counting::live();
        let e = entry(index, len);
        let entry_bytes = counting::live() - before;
        counting::set_peak(counting::live());
        runtime
            .block_on(store.blocking_append([e]))
            .expect("the append");
        let peak = counting::peak() - before;
        excess.push((len, peak.saturating_sub(entry_bytes)));
    }
    eprintln!("(entry bytes, bytes held beyond the entry): {excess:?}");
    assert!(
        excess.iter().all(|(_, extra)| *extra <= EXTRA_MAX),
        "an append held more than its entry and {EXTRA_MAX} bytes: (entry bytes, bytes held \
         beyond the entry) {excess:?}"
    );
    // And the entries read back whole.
    let read = runtime
        .block_on(store.try_get_log_entries(1..=3))
        .expect("the read");
    assert!(read == [entry(1, 1 << 20), entry(2, 4 << 20), entry(3, 16 << 20)]);
    drop(read);
    store.close().unwrap();
}

/// A read of an entry stored in chunks whose chunk 0 is damaged: its header says 60 MiB in
/// 1,000 chunks, and chunk 0 holds 24 bytes of it (chunk 1 is the entry's own, 64 KiB). The
/// read is an error naming the entry, and the memory it holds is what the chunks it read
/// justify, not the header's length: it reserved `min(length, 64 MiB)` before reading chunk 1.
#[test]
fn a_damaged_chunk_header_reserves_no_more_than_the_chunks_read() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    {
        let mut store =
            LogStore::<TypeConfig>::open(dir.path(), config()).expect("the store opens");
        runtime.block_on(common::log_from_1(&mut store, 1));
        // Entry 1 in 4 chunks; entry 2 stored whole, the last entry, which the open reads.
        runtime
            .block_on(store.blocking_append([entry(1, 200 << 10), entry(2, 10)]))
            .unwrap();
        store.close().unwrap();
    }
    let mut chunk0 = Vec::new();
    chunk0.extend_from_slice(&(60u64 << 20).to_le_bytes());
    chunk0.extend_from_slice(&1000u32.to_le_bytes());
    chunk0.extend_from_slice(&0u32.to_le_bytes());
    chunk0.extend_from_slice(&[7; 24]);
    let mut key = vec![b'c'];
    key.extend_from_slice(&1u64.to_be_bytes());
    key.extend_from_slice(&0u32.to_be_bytes());
    let engine = mergelog::Engine::open(dir.path(), config()).unwrap();
    engine.put(&key, &chunk0).unwrap().wait().unwrap();
    engine.close().unwrap();
    let mut store = LogStore::<TypeConfig>::open(dir.path(), config()).expect("the store opens");
    let before = counting::live();
    counting::set_peak(before);
    let read = runtime.block_on(store.try_get_log_entries(1..=1));
    let peak = counting::peak() - before;
    let err = read
        .map(|es| es.len())
        .expect_err("the damaged entry was read");
    assert!(
        err.to_string()
            .contains("entry 1, stored in chunks, is damaged"),
        "{err}"
    );
    assert!(
        peak <= 1 << 20,
        "the read of a damaged entry (a header of 60 MiB, chunks of 64 KiB) held {peak} bytes"
    );
    store.close().unwrap();
}
