//! Resilience at the API (issue 5 item 6): what users do wrong or abruptly must not wedge the
//! engine or lose what it acknowledged.
//!
//! - a panic in user code on a producer thread (while it holds tickets, a pending ticket
//!   future, or inside the `for_each` callback) leaves the engine working: other producers
//!   continue, close completes, everything acknowledged (indeed everything accepted before a
//!   clean close) is there after reopen;
//! - tickets dropped unawaited lose nothing;
//! - closing with requests in flight (producers parked on a full ring, others mid-submit,
//!   two threads closing at once) completes or fails every ticket, none hangs, and every later
//!   submission says `Error::Closed`;
//! - `GetTicket`s dropped unawaited neither leak their answers nor wedge the engine (a counting
//!   global allocator measures the heap).
//!
//! The tests take turns (`serial()`): the leak test reads a process-wide allocation counter.

mod common;

use common::hold::Hold;
use common::{engine_state, within, State, WAIT_MAX};
use mergelog::{Config, Engine, Error, Ticket, WriteBatch};
use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

struct Counting;

/// Net heap bytes currently allocated by the whole process.
static HEAP: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping is one atomic add
// and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HEAP.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        HEAP.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test poisons the lock; the others still run).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn config() -> Config {
    Config {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        ring_bytes: 256 << 10,
        ..Config::default()
    }
}

fn reopen(dir: &Path) -> Engine {
    Engine::open(dir, config()).expect("reopen")
}

/// A waker that counts its wake-ups.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn panic_on_a_producer_thread_does_not_wedge_the_engine() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), config()).expect("open"));
    let acked = Arc::new(Mutex::new(State::new()));
    let accepted = Arc::new(Mutex::new(State::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Something durable first, so that `for_each` below has a key to call back with.
    engine
        .put(b"seed", b"s")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    acked
        .lock()
        .unwrap()
        .insert(b"seed".to_vec(), b"s".to_vec());
    accepted
        .lock()
        .unwrap()
        .insert(b"seed".to_vec(), b"s".to_vec());

    // Well-behaved producers: submit, wait, record what was acknowledged.
    let good: Vec<_> = (0..3)
        .map(|p| {
            let (engine, acked, accepted, stop) = (
                engine.clone(),
                acked.clone(),
                accepted.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) || i < 500 {
                    let key = format!("good-{p}-{i}").into_bytes();
                    let value = format!("v{i}").into_bytes();
                    let t = engine.put(&key, &value).expect("put");
                    accepted.lock().unwrap().insert(key.clone(), value.clone());
                    t.wait_timeout(WAIT_MAX).expect("put acknowledged");
                    acked.lock().unwrap().insert(key, value);
                    i += 1;
                }
                i
            })
        })
        .collect();

    // Misbehaving producers: each submits, holds tickets (and a registered future), then
    // panics in its own code. The future outlives its producer (handed to `orphans`: a
    // future the panic dropped forgets its waker, and whether that came before its batch's
    // sync is up to the scheduler); whether its first poll registered the waker is kept.
    let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let orphans: Arc<Mutex<Vec<(Ticket, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    for p in 0..4 {
        let (engine, accepted, waker, orphans) = (
            engine.clone(),
            accepted.clone(),
            waker.clone(),
            orphans.clone(),
        );
        let outcome = std::thread::spawn(move || {
            let mut held: Vec<Ticket> = Vec::new();
            for i in 0..200u32 {
                let key = format!("bad-{p}-{i}").into_bytes();
                held.push(engine.put(&key, b"doomed?").expect("put"));
                accepted.lock().unwrap().insert(key, b"doomed?".to_vec());
            }
            let mut batch = WriteBatch::new();
            batch.put(format!("bad-{p}-batch").as_bytes(), b"b");
            let mut future = engine.write(&batch).expect("write");
            accepted
                .lock()
                .unwrap()
                .insert(format!("bad-{p}-batch").into_bytes(), b"b".to_vec());
            let w = Waker::from(waker.clone());
            let pending = Pin::new(&mut future)
                .poll(&mut Context::from_waker(&w))
                .is_pending();
            orphans.lock().unwrap().push((future, pending));
            let _get = engine.get(b"good-0-0").expect("get");
            match p {
                // A panic inside the engine's callback.
                0 => engine.for_each(|_, _| panic!("user panic inside for_each")),
                _ => panic!("user panic on producer {p} holding {} tickets", held.len()),
            }
        })
        .join();
        assert!(
            outcome.is_err(),
            "the misbehaving producer {p} was meant to panic"
        );
    }

    // The engine still works for everyone else: reads, for_each, new writes.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    let written: Vec<u32> = good
        .into_iter()
        .map(|h| h.join().expect("good producer"))
        .collect();
    assert!(
        written.iter().all(|&n| n >= 500),
        "good producers: {written:?}"
    );
    engine
        .put(b"after-panics", b"ok")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .expect("a put after the panics");
    accepted
        .lock()
        .unwrap()
        .insert(b"after-panics".to_vec(), b"ok".to_vec());
    assert_eq!(engine.failure().map(|e| e.to_string()), None);
    let state = engine_state(&engine);
    for (k, v) in acked.lock().unwrap().iter() {
        assert_eq!(
            state.get(k),
            Some(v),
            "acknowledged {k:?} missing before close"
        );
    }

    let closing = engine.clone();
    within("close after producer panics", move || closing.close()).expect("close");
    // Each future left pending by its panicked producer was woken by its batch's
    // completion, and is complete now.
    let mut orphans = std::mem::take(&mut *orphans.lock().unwrap());
    let registered = orphans.iter().filter(|(_, pending)| *pending).count();
    assert!(
        waker.0.load(Ordering::SeqCst) >= registered,
        "{} wake-ups for {registered} futures left pending by panicked producers: one was not woken",
        waker.0.load(Ordering::SeqCst)
    );
    let noop = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
    for (future, _) in &mut orphans {
        match Pin::new(future).poll(&mut Context::from_waker(&noop)) {
            std::task::Poll::Ready(done) => {
                done.expect("a panicked producer's batch");
            }
            std::task::Poll::Pending => panic!("a panicked producer's batch never completed"),
        }
    }
    drop(engine);

    // Everything accepted before the clean close is durable, acknowledged or not.
    let engine = reopen(dir.path());
    let state = engine_state(&engine);
    assert_eq!(state, *accepted.lock().unwrap(), "state after reopen");
}

#[test]
fn dropped_tickets_lose_nothing() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let mut model = State::new();
    for i in 0..10_000u32 {
        // Some keys are written twice and some deleted, so coalescing has work to do.
        let key = format!("key-{:05}", i % 7_000).into_bytes();
        match i % 10 {
            9 => {
                drop(engine.delete(&key).expect("delete"));
                model.remove(&key);
            }
            8 => {
                let mut b = WriteBatch::new();
                b.put(&key, &i.to_le_bytes())
                    .put(b"batch-last", &i.to_le_bytes());
                drop(engine.write(&b).expect("write"));
                model.insert(key, i.to_le_bytes().to_vec());
                model.insert(b"batch-last".to_vec(), i.to_le_bytes().to_vec());
            }
            _ => {
                drop(engine.put(&key, &i.to_le_bytes()).expect("put"));
                model.insert(key, i.to_le_bytes().to_vec());
            }
        }
    }
    // flush() covers everything submitted before it, awaited or not.
    engine
        .flush()
        .expect("flush")
        .wait_timeout(WAIT_MAX)
        .expect("flush durable");
    assert_eq!(engine_state(&engine), model, "state after flush");
    assert!(engine.stats().submitted >= 10_000);
    drop(engine); // no close: Drop closes too

    let engine = reopen(dir.path());
    assert_eq!(engine_state(&engine), model, "state after reopen");
}

/// What one producer of the close race did.
#[derive(Default)]
struct Submitted {
    /// Tickets of puts with their key and value.
    puts: Vec<(Ticket, Vec<u8>, Vec<u8>)>,
    gets: Vec<mergelog::GetTicket>,
    /// The error that stopped the producer.
    stopped_by: Option<String>,
}

/// One race of producers against `close`; returns how many tickets were acknowledged.
fn close_race(round: u32, close_after: Duration) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // A small ring and big values: producers are often parked on a full ring when the
    // close comes.
    let cfg = Config {
        ring_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ..config()
    };
    let engine = Arc::new(Engine::open(dir.path(), cfg.clone()).expect("open"));
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut out = Submitted::default();
                let value = vec![p as u8; 512 + 1024 * p as usize];
                for i in 0u32.. {
                    let key = format!("r{round}-p{p}-{i}").into_bytes();
                    let r = if i % 16 == 15 {
                        engine.get(&key).map(|g| out.gets.push(g))
                    } else {
                        engine
                            .put(&key, &value)
                            .map(|t| out.puts.push((t, key, value.clone())))
                    };
                    if let Err(e) = r {
                        out.stopped_by = Some(format!("{e:?}"));
                        assert!(matches!(e, Error::Closed), "producer {p} stopped by {e:?}");
                        break;
                    }
                }
                out
            })
        })
        .collect();
    std::thread::sleep(close_after);
    // Two threads close at once; both must return only once every ticket is complete.
    let closers: Vec<_> = (0..2)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let r = engine.close();
                (r, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT_MAX;
    for c in &closers {
        while !c.is_finished() {
            assert!(Instant::now() < deadline, "close hangs (round {round})");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let closed: Vec<_> = closers.into_iter().map(|c| c.join().unwrap()).collect();
    let mut submitted = Vec::new();
    for p in producers {
        let deadline = Instant::now() + WAIT_MAX;
        while !p.is_finished() {
            assert!(
                Instant::now() < deadline,
                "a producer hangs after close (round {round})"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        submitted.push(p.join().expect("producer"));
    }
    let clean = closed.iter().all(|(r, _)| r.is_ok());
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut acked = Vec::new();
    for s in &submitted {
        assert!(s.stopped_by.is_some(), "every producer ends with Closed");
        for (t, key, value) in &s.puts {
            match t.wait_timeout(WAIT_MAX) {
                Ok(_) => {
                    ok += 1;
                    acked.push((key, value));
                }
                Err(Error::Closed | Error::Failed(_)) => failed += 1,
                Err(e) => panic!("round {round}: a ticket ended with {e:?}"),
            }
            if clean {
                // close() returned Ok: every ticket was complete by then, and Ok.
                assert!(matches!(t.try_result(), Some(Ok(_))), "round {round}");
            }
        }
        for g in &s.gets {
            match g.wait_timeout(WAIT_MAX) {
                Ok(_) => ok += 1,
                Err(Error::Closed | Error::Failed(_)) => failed += 1,
                Err(e) => panic!("round {round}: a get ended with {e:?}"),
            }
        }
    }
    assert!(
        clean,
        "close failed: {:?}",
        closed.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    assert_eq!(
        failed, 0,
        "round {round}: tickets failed after a clean close"
    );
    // Later calls say Closed.
    let mut b = WriteBatch::new();
    b.put(b"k", b"v");
    for (name, r) in [
        ("put", engine.put(b"k", b"v").map(drop)),
        ("delete", engine.delete(b"k").map(drop)),
        ("get", engine.get(b"k").map(drop)),
        ("write", engine.write(&b).map(drop)),
        ("flush", engine.flush().map(drop)),
    ] {
        assert!(
            matches!(r, Err(Error::Closed)),
            "{name} after close gave {r:?}"
        );
    }
    drop(engine);
    let engine = Engine::open(dir.path(), cfg).expect("reopen");
    for (key, value) in &acked {
        assert_eq!(
            engine.read_to_vec(key).unwrap().as_ref(),
            Some(*value),
            "round {round}: acknowledged {key:?} lost"
        );
    }
    ok
}

#[test]
fn close_with_requests_in_flight_completes_or_fails_every_ticket() {
    let _turn = serial();
    let mut acked = 0;
    for (round, ms) in [0u64, 1, 3, 10, 30, 0, 2, 20].into_iter().enumerate() {
        acked += close_race(round as u32, Duration::from_millis(ms));
    }
    // The races did race: requests were in flight and completed.
    assert!(acked > 0, "no ticket was acknowledged in any round");
}

/// Net heap growth while `f` runs (after letting the engine settle).
fn heap_growth(f: impl FnOnce()) -> i64 {
    let before = HEAP.load(Ordering::SeqCst);
    f();
    HEAP.load(Ordering::SeqCst) - before
}

#[test]
fn dropped_get_tickets_neither_leak_nor_wedge() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let value = vec![0xabu8; 1024];
    for k in 0..64u32 {
        engine
            .put(&k.to_le_bytes(), &value)
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    }
    // Every answer is a 1 KiB value: 50,000 leaked answers would be over 50 MB, and even
    // the answer slots alone (an `Arc` each) about 2 MB.
    let round = |engine: &Engine| {
        for i in 0..50_000u32 {
            drop(engine.get(&(i % 64).to_le_bytes()).expect("get"));
            if i % 1000 == 0 {
                // A write between the gets now and then: some answers come from the window.
                drop(engine.put(&(i % 64).to_le_bytes(), &value).expect("put"));
            }
        }
        engine
            .flush()
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .expect("flush after dropped gets");
    };
    // Warm-up: the flusher's reused buffers approach their steady size.
    round(&engine);
    round(&engine);
    // They still grow whenever a stall lets a window get bigger than any before, so one
    // round may show growth without anything leaking. A leak shows in every round: 50,000
    // leaked answers are over 50 MB, their slots alone about 2 MB, and the answers of only
    // the gets that read a write of their own window hundreds of KiB. So the round that grew
    // least must not have grown beyond noise.
    let growths: Vec<i64> = (0..6).map(|_| heap_growth(|| round(&engine))).collect();
    let least = *growths.iter().min().unwrap();
    assert!(
        least < 64 << 10,
        "heap grew in every round of 50,000 dropped gets (leaked answers?): {growths:?} bytes"
    );
    // Not wedged: an awaited get still gets its answer, and close completes.
    let g = engine.get(&7u32.to_le_bytes()).unwrap();
    assert_eq!(g.wait_timeout(WAIT_MAX).unwrap(), Some(value.clone()));
    // Gets dropped with the engine closing under them.
    for i in 0..1000u32 {
        drop(engine.get(&(i % 64).to_le_bytes()).expect("get"));
    }
    let engine = Arc::new(engine);
    let closing = engine.clone();
    within("close after dropped gets", move || closing.close()).expect("close");
}

/// A waker whose `wake` panics: user code that the engine's own threads run.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("user waker panics");
    }
}

/// A ticket awaited as a future with a waker that panics when woken: the panic is caught
/// (user wakers are called through `sync::wake_user`), so the engine carries on: a later put
/// completes, nothing failed, and close returns `Ok`. (This test accepted a failed engine
/// too, and passed with the catch removed: a mutation audit, session 28.)
#[test]
fn panicking_waker_does_not_leave_tickets_hanging() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let gate = Hold::syncs();
    let engine = Engine::open_with_io(dir.path(), config(), gate.clone()).expect("open");
    let engine = Arc::new(engine);
    // The put's sync waits until the ticket has been polled, so that the waker is
    // registered before the put completes, however the threads are scheduled.
    gate.hold_every();
    let mut t = engine.put(b"k", b"v").expect("put");
    let w = Waker::from(Arc::new(PanickingWaker));
    let polled = Pin::new(&mut t).poll(&mut Context::from_waker(&w));
    gate.release();
    assert!(
        polled.is_pending(),
        "the put was durable before it was polled"
    );
    // Let the engine complete the put and call the waker.
    t.wait_timeout(WAIT_MAX).expect("the put itself completes");
    std::thread::sleep(Duration::from_millis(100));
    let later = engine.put(b"k2", b"v2");
    match later.map(|t| t.wait_timeout(WAIT_MAX)) {
        Ok(Ok(_)) => {}
        other => panic!(
            "after a waker panicked, a later put ended with {other:?} (failure: {:?})",
            engine.failure()
        ),
    }
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    let closing = engine.clone();
    within("close after a panicking waker", move || closing.close())
        .expect("close after a panicking waker");
}
