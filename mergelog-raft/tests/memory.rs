//! Memory on the append path: appending one large entry holds, besides the entry itself
//! (which the overlay keeps until it is durable), memory bounded by the store's chunk length
//! and batch budget, not by the entry's size. A counting global allocator measures the peak
//! of live heap bytes, over every thread (the engine's too), while the append runs.
//!
//! One test in this file: the counters are the process's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mergelog::Config;
use mergelog_raft::kv::{Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::storage::RaftLogStorageExt;
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, RaftLogReader};

struct Counting;

/// Heap bytes live now, and the most live since the last `reset_peak`.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Ordering::SeqCst);
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping touches only two
// atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`, and
        // the caller upholds the rest of `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new size at once: a copying realloc holds both blocks for a
            // moment, which this undercounts (never overcounts).
            match new_size.checked_sub(layout.size()) {
                Some(more) => grew(more),
                None => shrank(layout.size() - new_size),
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut store = LogStore::<TypeConfig>::open(dir.path(), config()).expect("the store opens");
    assert_eq!(store.chunk_len(), 64 << 10);
    // An append of 1 MiB (16 chunks) first: the engine's and the store's one-time
    // allocations (the frame buffer grows to a window's largest frame, within
    // `batch_bytes_max`).
    runtime
        .block_on(store.blocking_append([entry(1, 1 << 20)]))
        .unwrap();
    let mut excess = Vec::new();
    for (index, len) in [(2, 4 << 20), (3, 16 << 20)] {
        let before = LIVE.load(Ordering::SeqCst);
        let e = entry(index, len);
        let entry_bytes = LIVE.load(Ordering::SeqCst) - before;
        PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
        runtime
            .block_on(store.blocking_append([e]))
            .expect("the append");
        let peak = PEAK.load(Ordering::SeqCst) - before;
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
