//! No allocation per put in steady state: a counting global allocator counts the heap
//! allocations made on the submitting thread while it is inside `Engine::put`.
//!
//! Counting is switched on per thread, so the flusher's (amortised, per-window) allocations
//! and the test's own bookkeeping do not count; a control shows the counter does work.

use mergelog::{Config, Durability, Engine};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // `const` initialisers without destructors: touching them never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: never panic inside the allocator, even during thread teardown.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping touches only
// thread-local cells and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on for this thread; returns its result and the allocations made.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get) - before)
}

const WARMUP_PUTS: u32 = 100_000;
const MEASURED_PUTS: u32 = 100_000;
/// Wait for a ticket this often, so the backlog stays far below the ring's capacity.
const WAIT_EVERY: u32 = 1024;

/// A 16-byte key from a counter, on the stack (zipf-free but with repeats across runs).
fn key(i: u32) -> [u8; 16] {
    let mut k = *b"key-000000000000";
    k[4..8].copy_from_slice(&(i % 50_000).to_be_bytes());
    k
}

/// Puts `n` keys starting at `from`, waiting for a ticket every `WAIT_EVERY` puts. Returns
/// the allocations made inside the `put` calls.
fn puts(engine: &Engine, from: u32, n: u32, value: &[u8]) -> u64 {
    let mut allocations = 0;
    for i in from..from + n {
        let k = key(i);
        let (ticket, a) = counted(|| engine.put(&k, value));
        allocations += a;
        let ticket = ticket.expect("put");
        if i % WAIT_EVERY == WAIT_EVERY - 1 {
            ticket.wait().expect("durable");
        }
    }
    allocations
}

/// Warms the engine up with `puts(0, WARMUP_PUTS)`, then returns the allocations that
/// `puts(WARMUP_PUTS, MEASURED_PUTS)` counted (each `puts` waits for a ticket now and then).
fn steady_state(engine: &Engine, mut puts: impl FnMut(u32, u32) -> u64) -> u64 {
    // The flusher's buffers grow to size, the index holds every key, and this thread's
    // lazily created state (thread locals, parking) exists.
    puts(0, WARMUP_PUTS);
    engine.flush().unwrap().wait().unwrap();
    let allocations = puts(WARMUP_PUTS, MEASURED_PUTS);
    engine.flush().unwrap().wait().unwrap();
    allocations
}

/// An engine in `dir` that acknowledges without syncing (the submit path is what is counted).
fn nosync_engine(dir: &std::path::Path) -> Engine {
    let config = Config {
        durability: Durability::NoSync,
        ..Config::default()
    };
    Engine::open(dir, config).expect("open")
}

#[test]
fn put_allocates_nothing_in_steady_state() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = nosync_engine(tmp.path());
    let value = [0xa5u8; 100];
    let allocations = steady_state(&engine, |from, n| puts(&engine, from, n, &value));
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in {MEASURED_PUTS} puts on the submitting thread"
    );
    assert!(engine.stats().writes >= u64::from(WARMUP_PUTS + MEASURED_PUTS));

    // Polling the counters allocates nothing, and they agree with the full snapshot (which
    // copies the histograms, and so must allocate: a control for this check).
    let (counts, counts_allocations) = counted(|| engine.counts());
    assert_eq!(counts_allocations, 0, "Engine::counts allocated");
    let (stats, stats_allocations) = counted(|| engine.stats());
    assert!(
        stats_allocations > 0,
        "the counter saw no allocation in Engine::stats"
    );
    assert_eq!(
        (
            counts.writes,
            counts.batches,
            counts.bytes_written,
            counts.durable_position
        ),
        (
            stats.writes,
            stats.batches,
            stats.bytes_written,
            stats.durable_position
        )
    );
    assert_eq!(counts.backlog_bytes, 0, "flushed, yet a backlog");

    // Control: a windowed get allocates its answer slot, so the counter must see it.
    let (get, control) = counted(|| engine.get(&key(7)));
    let got = get.expect("get").wait().expect("get completes");
    assert_eq!(got.as_deref(), Some(&value[..]));
    assert!(control > 0, "the counter saw no allocation in Engine::get");
    engine.close().unwrap();
}

/// An idempotent put costs its id's bytes in the ring, and no allocation either: the ticket is
/// the plain ticket, the duplicate check is the flusher's.
#[test]
fn put_with_id_allocates_nothing_in_steady_state() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = nosync_engine(tmp.path());
    let value = [0x5au8; 100];
    let puts = |from: u32, n: u32| -> u64 {
        let mut allocations = 0;
        for i in from..from + n {
            let k = key(i);
            let (ticket, a) = counted(|| engine.put_with_id(u128::from(i), &k, &value));
            allocations += a;
            let ticket = ticket.expect("put_with_id");
            if i % WAIT_EVERY == WAIT_EVERY - 1 {
                assert!(!ticket.wait().expect("durable").is_duplicate());
            }
        }
        allocations
    };
    let allocations = steady_state(&engine, puts);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in {MEASURED_PUTS} puts with ids"
    );
    // A duplicate is answered without allocating too.
    let (dup, a) = counted(|| engine.put_with_id(5u128, &key(5), &value));
    assert!(dup.unwrap().wait().unwrap().is_duplicate());
    assert_eq!(a, 0, "a duplicate's submit allocated");
    engine.close().unwrap();
}

/// The asynchronous put allocates nothing either while the ring has space: the future lives
/// on the caller's stack and resolves at its first poll, and no waker is cloned.
#[test]
fn put_async_allocates_nothing_in_steady_state() {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that does nothing: on this path every future resolves at its first poll.
    struct Never;
    impl Wake for Never {
        fn wake(self: Arc<Self>) {}
    }

    let tmp = tempfile::tempdir().unwrap();
    let engine = nosync_engine(tmp.path());
    let value = [0x3cu8; 100];
    let waker = Waker::from(Arc::new(Never));
    let mut cx = Context::from_waker(&waker);
    let puts = |from: u32, n: u32| -> u64 {
        let mut allocations = 0;
        for i in from..from + n {
            let k = key(i);
            let mut fut = pin!(engine.put_async(&k, &value));
            let (polled, a) = counted(|| fut.as_mut().poll(&mut cx));
            allocations += a;
            let Poll::Ready(ticket) = polled else {
                panic!("put_async {i} waited with the ring far from full");
            };
            let ticket = ticket.expect("put_async");
            if i % WAIT_EVERY == WAIT_EVERY - 1 {
                ticket.wait().expect("durable");
            }
        }
        allocations
    };
    let allocations = steady_state(&engine, puts);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in {MEASURED_PUTS} asynchronous puts"
    );
    // Control: boxing the future allocates, and the counter sees it.
    let (boxed, control) = counted(|| Box::pin(engine.put_async(b"k", b"v")));
    drop(boxed);
    assert!(control > 0, "the counter saw no allocation");
    engine.close().unwrap();
}
