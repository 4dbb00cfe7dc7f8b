//! The asynchronous submit (`put_async` and kin) waits for ring space as a future, never by
//! blocking the thread: many futures on one thread fill a ring whose flusher is stalled, wait,
//! and all complete, durably, once it drains.
//!
//! The flusher is stalled by a `Custom` merge operator that waits on a gate only the test
//! thread opens: if a submit blocked the thread, the gate would stay shut (a watchdog opens it
//! late, and the test then fails on that, instead of hanging). Each future has its own waker
//! and is polled only after that waker fired, so a lost wake-up leaves it unpolled and the
//! test fails at the deadline.

mod common;

use common::WAIT_MAX;
use mergelog::{Backpressure, Config, Engine, Error, MergeOperator, Seq};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 400;
const VALUE_LEN: usize = 1000;

/// One future's waker: marks it runnable and unparks the executor thread.
struct Flag {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

type Task<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A single-threaded executor that polls a future only when its own waker fired.
struct Local<'a, T> {
    tasks: Vec<(Option<Task<'a, T>>, Arc<Flag>)>,
    results: Vec<Option<T>>,
}

impl<'a, T> Local<'a, T> {
    fn new(tasks: impl IntoIterator<Item = Task<'a, T>>) -> Self {
        let tasks: Vec<_> = tasks
            .into_iter()
            .map(|t| {
                let flag = Arc::new(Flag {
                    woken: AtomicBool::new(true),
                    thread: std::thread::current(),
                });
                (Some(t), flag)
            })
            .collect();
        let results = tasks.iter().map(|_| None).collect();
        Local { tasks, results }
    }

    /// Polls every woken task once; returns how many are done.
    fn sweep(&mut self) -> usize {
        for (i, (task, flag)) in self.tasks.iter_mut().enumerate() {
            let Some(fut) = task else { continue };
            if !flag.woken.swap(false, Ordering::SeqCst) {
                continue;
            }
            let waker = Waker::from(flag.clone());
            if let Poll::Ready(r) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                self.results[i] = Some(r);
                *task = None;
            }
        }
        self.results.iter().filter(|r| r.is_some()).count()
    }

    /// Runs every task to completion on this thread, or fails the test after `WAIT_MAX`.
    fn run(mut self) -> Vec<T> {
        let deadline = Instant::now() + WAIT_MAX;
        while self.sweep() < self.tasks.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {} futures never woken again (a lost wake-up)",
                self.tasks.len() - self.results.iter().flatten().count(),
                self.tasks.len()
            );
            // The timeout only bounds the test: a task is polled only once its waker fired.
            std::thread::park_timeout(left.min(Duration::from_millis(100)));
        }
        self.results.into_iter().map(Option::unwrap).collect()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("client-{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_LEN];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

/// The gate the stalling merge operator waits at.
#[derive(Default)]
struct Gate {
    entered: AtomicBool,
    open: AtomicBool,
    opened_by_watchdog: AtomicBool,
}

/// A small ring and a merge operator that holds the flusher until the gate opens.
fn stalling_config(gate: &Arc<Gate>, backpressure: Backpressure) -> Config {
    let g = gate.clone();
    Config {
        ring_bytes: 64 << 10,
        backpressure,
        merge: Some(MergeOperator::custom(move |_, operands| {
            g.entered.store(true, Ordering::SeqCst);
            while !g.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            operands.last().map_or_else(Vec::new, |o| o.to_vec())
        })),
        ..Config::default()
    }
}

/// Submits the stalling merge and waits until the flusher is inside it; starts a watchdog
/// that opens the gate after `WAIT_MAX` if the test thread could not.
fn stall_flusher(engine: &Engine, gate: &Arc<Gate>) -> mergelog::Ticket {
    let ticket = engine.merge(b"gate", b"x").expect("merge");
    let deadline = Instant::now() + WAIT_MAX;
    while !gate.entered.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the flusher never ran the merge");
        std::thread::sleep(Duration::from_millis(1));
    }
    let g = gate.clone();
    std::thread::spawn(move || {
        std::thread::sleep(WAIT_MAX);
        if !g.open.swap(true, Ordering::SeqCst) {
            g.opened_by_watchdog.store(true, Ordering::SeqCst);
        }
    });
    ticket
}

#[test]
fn futures_wait_for_ring_space_without_blocking_the_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap();
    let gate_ticket = stall_flusher(&engine, &gate);

    let submitted = AtomicUsize::new(0);
    let (engine_ref, submitted_ref) = (&engine, &submitted);
    let tasks = (0..CLIENTS).map(|i| -> Task<'_, mergelog::Result<Seq>> {
        Box::pin(async move {
            let (k, v) = (key(i), value(i));
            let ticket = engine_ref.put_async(&k, &v).await?;
            submitted_ref.fetch_add(1, Ordering::SeqCst);
            ticket.await
        })
    });
    let mut local = Local::new(tasks);
    // One sweep over a stalled flusher: the ring takes what fits, the rest wait for space.
    assert_eq!(
        local.sweep(),
        0,
        "a put completed while the flusher was stalled"
    );
    let fitted = submitted.load(Ordering::SeqCst);
    assert!(
        fitted > 0 && fitted < CLIENTS / 2,
        "{fitted} of {CLIENTS} puts fitted a 64 KiB ring"
    );
    // Still on this thread, which is only free to do it because no submit blocked it.
    gate.open.store(true, Ordering::SeqCst);
    let seqs = local.run();
    assert!(
        !gate.opened_by_watchdog.load(Ordering::SeqCst),
        "a submit blocked the thread"
    );
    assert_eq!(submitted.load(Ordering::SeqCst), CLIENTS);
    for (i, seq) in seqs.into_iter().enumerate() {
        let seq = seq.unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert!(seq <= engine.durable_seq());
    }
    gate_ticket.wait().unwrap();
    assert!(
        !engine.stats().stages.ring_wait.is_empty(),
        "no submit recorded a wait for ring space"
    );
    engine.close().unwrap();

    // Everything acknowledged survives a reopen.
    let gate = Arc::new(Gate::default());
    gate.open.store(true, Ordering::SeqCst);
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap();
    for i in 0..CLIENTS {
        assert_eq!(
            engine.read_to_vec(&key(i)).unwrap(),
            Some(value(i)),
            "key {i}"
        );
    }
    engine.close().unwrap();
}

/// `close` while futures wait for ring space (the flusher stalled, the ring full): the
/// close wakes them and each resolves to `Error::Closed`, on this thread, while the close
/// still waits for the flusher; the puts that were in the ring complete durably once it
/// drains, and a reopen holds exactly those.
#[test]
fn close_ends_futures_waiting_for_ring_space_and_keeps_what_was_submitted() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine =
        Arc::new(Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap());
    let gate_ticket = stall_flusher(&engine, &gate);
    let refused = AtomicUsize::new(0);
    let (engine_ref, refused_ref) = (&*engine, &refused);
    let tasks = (0..CLIENTS).map(|i| -> Task<'_, mergelog::Result<Seq>> {
        Box::pin(async move {
            let (k, v) = (key(i), value(i));
            let ticket = engine_ref.put_async(&k, &v).await.inspect_err(|_| {
                refused_ref.fetch_add(1, Ordering::SeqCst);
            })?;
            ticket.await
        })
    });
    let mut local = Local::new(tasks);
    assert_eq!(
        local.sweep(),
        0,
        "a put completed while the flusher was stalled"
    );
    let closer = std::thread::spawn({
        let engine = engine.clone();
        move || engine.close()
    });
    // Every future still waiting for space is woken by the close and refused, while the
    // flusher is still stalled (the close is waiting for it).
    let deadline = Instant::now() + WAIT_MAX;
    while local.sweep() == 0 || refused.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the close never ended the waiting submits"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let waiting = local.tasks.iter().filter(|(t, _)| t.is_some()).count();
    gate.open.store(true, Ordering::SeqCst);
    let results = local.run();
    closer.join().unwrap().expect("close");
    gate_ticket.wait().unwrap();
    let refused: Vec<usize> = (0..CLIENTS)
        .filter(|&i| matches!(results[i], Err(Error::Closed)))
        .collect();
    assert!(
        !refused.is_empty() && waiting > 0,
        "no submit waited at the close"
    );
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.is_ok() || refused.contains(&i),
            "put {i} ended with {r:?}"
        );
    }
    drop(engine);
    let gate = Arc::new(Gate::default());
    gate.open.store(true, Ordering::SeqCst);
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap();
    for (i, r) in results.iter().enumerate() {
        let expected = r.is_ok().then(|| value(i));
        assert_eq!(engine.read_to_vec(&key(i)).unwrap(), expected, "key {i}");
    }
}

#[test]
fn a_full_ring_with_reject_answers_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Reject)).unwrap();
    let gate_ticket = stall_flusher(&engine, &gate);
    let v = value(0);
    let mut outcomes = Vec::new();
    for i in 0..CLIENTS {
        let k = key(i);
        outcomes.push(common::block_on(Box::pin(engine.put_async(&k, &v))));
    }
    gate.open.store(true, Ordering::SeqCst);
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::Busy)))
        .count();
    assert!(busy > CLIENTS / 2, "{busy} of {CLIENTS} puts answered Busy");
    for t in outcomes.into_iter().flatten() {
        t.wait().unwrap();
    }
    gate_ticket.wait().unwrap();
    engine.close().unwrap();
}

#[test]
fn bad_input_and_a_closed_engine_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(tmp.path(), Config::default()).unwrap();
    let long = vec![0u8; engine.config().key_len_max + 1];
    let r = common::block_on(Box::pin(engine.put_async(&long, b"v")));
    assert!(matches!(r, Err(Error::KeyTooLong { .. })), "{r:?}");
    let r = common::block_on(Box::pin(engine.merge_async(b"k", b"1")));
    assert!(matches!(r, Err(Error::MergeRefused { .. })), "{r:?}");
    let batch = mergelog::WriteBatch::new();
    let r = common::block_on(Box::pin(engine.write_async(&batch)));
    assert!(matches!(r, Err(Error::EmptyBatch)), "{r:?}");
    let mut batch = mergelog::WriteBatch::new();
    batch.put(b"a", b"1").put(b"b", b"2");
    let t = common::block_on(Box::pin(engine.write_async(&batch))).unwrap();
    common::block_on(t).unwrap();
    let t = common::block_on(Box::pin(engine.delete_async(b"a"))).unwrap();
    common::block_on(t).unwrap();
    assert_eq!(engine.read_to_vec(b"a").unwrap(), None);
    assert_eq!(engine.read_to_vec(b"b").unwrap(), Some(b"2".to_vec()));
    engine.close().unwrap();
    let r = common::block_on(Box::pin(engine.put_async(b"k", b"v")));
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

/// The idempotent forms and the get have async forms too: a resubmitted id is a duplicate of
/// the first submission's batch, and a get sees what was written before it.
#[test]
fn ids_and_gets_have_async_forms() {
    let dir = tempfile::tempdir().unwrap();
    let engine = mergelog::Engine::open(dir.path(), mergelog::Config::default()).unwrap();
    let first = common::block_on(Box::pin(engine.put_with_id_async(7u128, b"k", b"one")))
        .unwrap()
        .wait()
        .unwrap();
    assert!(!first.is_duplicate());
    let again = common::block_on(Box::pin(engine.put_with_id_async(7u128, b"k", b"two")))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(again, mergelog::Outcome::Duplicate { seq: first.seq() });
    let mut batch = mergelog::WriteBatch::new();
    batch.put(b"b", b"1");
    let w = common::block_on(Box::pin(engine.write_with_id_async(8u128, &batch)))
        .unwrap()
        .wait()
        .unwrap();
    assert!(!w.is_duplicate());
    let d = common::block_on(Box::pin(engine.delete_with_id_async(8u128, b"b")))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(d, mergelog::Outcome::Duplicate { seq: w.seq() });
    let got = common::block_on(Box::pin(engine.get_async(b"k")))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"one"[..]));
    let got = common::block_on(Box::pin(engine.get_async(b"b")))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        got.as_deref(),
        Some(&b"1"[..]),
        "the duplicate delete did nothing"
    );
    engine.close().unwrap();
}

/// The idempotent merge has an async form too: a retried increment counts once.
#[test]
fn an_idempotent_merge_has_an_async_form() {
    let dir = tempfile::tempdir().unwrap();
    let config = mergelog::Config {
        merge: Some(mergelog::MergeOperator::Add),
        ..mergelog::Config::default()
    };
    let engine = mergelog::Engine::open(dir.path(), config).unwrap();
    let one = 5i64.to_le_bytes();
    let first = common::block_on(Box::pin(engine.merge_with_id_async(9u128, b"n", &one)))
        .unwrap()
        .wait()
        .unwrap();
    assert!(!first.is_duplicate());
    let again = common::block_on(Box::pin(engine.merge_with_id_async(9u128, b"n", &one)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(again, mergelog::Outcome::Duplicate { seq: first.seq() });
    assert_eq!(engine.read_to_vec(b"n").unwrap(), Some(one.to_vec()));
    // A bad operand is refused at submit, as by the blocking form.
    let e = common::block_on(Box::pin(engine.merge_with_id_async(10u128, b"n", &[1; 3])));
    assert!(
        matches!(e, Err(mergelog::Error::MergeRefused { .. })),
        "{:?}",
        e.err()
    );
    engine.close().unwrap();
}

/// A future given up on while it waits for ring space (dropped: a timeout around the
/// submit) leaves no waker with the engine. Its entry in the ring's list of waiting tasks
/// stayed until the next release of ring space, which a stalled flusher (a slow disk, a slow
/// merge operator) puts off: every submit given up on meanwhile kept its task's waker (and
/// with it the task's allocation) alive.
#[test]
fn a_future_dropped_while_it_waits_for_ring_space_leaves_no_waker() {
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap();
    let gate_ticket = stall_flusher(&engine, &gate);
    let v = value(0);
    // Fill the ring: submits go through until one has to wait.
    let mut tickets = Vec::new();
    let noop = Waker::noop();
    loop {
        let mut put = Box::pin(engine.put_async(b"filler", &v));
        match put.as_mut().poll(&mut Context::from_waker(noop)) {
            Poll::Ready(t) => tickets.push(t.expect("put_async")),
            Poll::Pending => break,
        }
        assert!(tickets.len() < 1000, "a 64 KiB ring never filled");
    }
    let wakers: Vec<Arc<Count>> = (0..100)
        .map(|_| Arc::new(Count(AtomicUsize::new(0))))
        .collect();
    for w in &wakers {
        let mut put = Box::pin(engine.put_async(b"given up", &v));
        let waker = Waker::from(w.clone());
        assert!(
            put.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending(),
            "the ring has room while the flusher is stalled"
        );
    }
    let held = wakers.iter().filter(|w| Arc::strong_count(w) > 1).count();
    gate.open.store(true, Ordering::SeqCst);
    assert_eq!(held, 0, "the engine holds {held} wakers of dropped futures");
    for t in tickets {
        t.wait_timeout(WAIT_MAX).expect("durable");
    }
    gate_ticket.wait().unwrap();
    engine.close().unwrap();
    assert!(
        wakers.iter().all(|w| w.0.load(Ordering::SeqCst) == 0),
        "a dropped future's waker was called"
    );
}

/// A ticket awaited as a future holds one waker with the engine however often it is polled
/// with new ones (moved between tasks, polled through a combinator's waker), and none once
/// it is dropped while pending (a timeout or a `select!` around the `await`); the same for a
/// get's ticket and an in-process follower's stream. The engine kept every waker a ticket
/// was polled with until its batch completed, and woke them all then: with a stalled flusher
/// (a slow disk, a slow merge operator), each task given up on stayed allocated meanwhile.
#[test]
fn a_pending_ticket_holds_only_its_newest_waker_and_none_once_dropped() {
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let counts = |n| -> Vec<Arc<Count>> {
        (0..n)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect()
    };
    let held = |ws: &[Arc<Count>]| ws.iter().filter(|w| Arc::strong_count(w) > 1).count();
    // Polls `f` once with each waker: pending every time (nothing completes while the
    // flusher is stalled).
    fn poll_each<F: Future + Unpin>(f: &mut F, wakers: &[Arc<Count>]) {
        for w in wakers {
            let waker = Waker::from(w.clone());
            let polled = Pin::new(&mut *f).poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending(), "complete while the flusher is stalled");
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let engine = Engine::open(tmp.path(), stalling_config(&gate, Backpressure::Block)).unwrap();
    let gate_ticket = stall_flusher(&engine, &gate);
    let mut follower = engine.follow(engine.durable_seq().get() + 1);

    let (put, put_clone, get, stream) = (counts(100), counts(100), counts(100), counts(100));
    let mut ticket = engine.put(b"k", &value(1)).unwrap();
    poll_each(&mut ticket, &put);
    let mut clone = ticket.clone();
    poll_each(&mut clone, &put_clone);
    let mut get_ticket = engine.get(b"k").unwrap();
    poll_each(&mut get_ticket, &get);
    for w in &stream {
        let waker = Waker::from(w.clone());
        let polled = follower.poll_next(&mut Context::from_waker(&waker));
        assert!(polled.is_pending(), "a batch while the flusher is stalled");
    }
    let pending = [&put, &put_clone, &get, &stream].map(|ws| held(ws));
    // The clone's waker goes with it; the original's stays while it waits.
    drop(clone);
    let after_clone = [held(&put), held(&put_clone)];
    drop((ticket, get_ticket, follower));
    let dropped = [&put, &put_clone, &get, &stream].map(|ws| held(ws));
    gate.open.store(true, Ordering::SeqCst);
    assert_eq!(
        pending, [1; 4],
        "the engine holds this many wakers of the put's ticket, its clone, the get's ticket \
         and the follower's stream (each polled with 100)"
    );
    assert_eq!(
        after_clone,
        [1, 0],
        "the clone's drop took the original's waker, or none"
    );
    assert_eq!(
        dropped, [0; 4],
        "the engine holds wakers of dropped futures"
    );
    gate_ticket.wait().unwrap();
    engine.flush().unwrap().wait().unwrap();
    engine.close().unwrap();
    for ws in [&put, &put_clone, &get, &stream] {
        assert!(
            ws.iter().all(|w| w.0.load(Ordering::SeqCst) == 0),
            "a dropped future's waker was called"
        );
    }
}
