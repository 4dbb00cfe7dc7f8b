//! A user's `Waker` is user code: the wakers of tasks waiting for ring space
//! (`Ring::poll_push`) and for a consumer-lag throttle (`TaskSlot::poll_wait`) run outside
//! every lock of the engine's and under `catch_unwind`, as those of tickets' futures do
//! (docs/decisions.md, "Failure is sticky and final"). A waker that panics neither fails the
//! engine nor escapes an unrelated call (a consumer's commit) nor costs the tasks after it
//! their wake-up; one that polls its task at once, on the waking thread, does not deadlock.
//! (From the session-27 review; each test failed before the fix.)

mod common;

use common::hold::Hold;

use mergelog::{Backpressure, Config, ConsumerLag, Engine, MergeOperator, Seq};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// How long a test waits for a wake-up it expects before calling it lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

/// A waker that records that it fired.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A user's waker that panics (e.g. an executor that was shut down).
struct Panics;

impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        panic!("review27: a user's waker panicked");
    }
}

fn flag() -> (Arc<Flag>, Waker) {
    let f = Arc::new(Flag(AtomicBool::new(false)));
    let w = Waker::from(f.clone());
    (f, w)
}

fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LOST_AFTER;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A 64 KiB ring and a merge operator that holds the flusher until `open` is set.
fn stalling(entered: &Arc<AtomicBool>, open: &Arc<AtomicBool>) -> Config {
    let (entered, open) = (entered.clone(), open.clone());
    Config {
        ring_bytes: 64 << 10,
        backpressure: Backpressure::Block,
        merge: Some(MergeOperator::custom(move |_, operands| {
            entered.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !open.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            operands.last().map_or_else(Vec::new, |o| o.to_vec())
        })),
        ..Config::default()
    }
}

/// Two tasks wait for ring space; the first one's waker panics when the flusher's release
/// wakes it. `Ring::wake_space_tasks` takes the whole list and wakes it outside any
/// `catch_unwind`: the panic unwinds out of `Consumer::release` on the flusher's thread, the
/// engine fails with `Panicked { thread: "flusher" }`, and the second task's waker, already
/// taken off the list, is dropped without being called (and `close` finds the list empty):
/// that task is never polled again.
#[test]
fn a_panicking_ring_space_waker_neither_fails_the_engine_nor_loses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (entered, open) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let engine = Engine::open(dir.path(), stalling(&entered, &open)).unwrap();
    let _gate = engine.merge(b"gate", b"x").unwrap();
    assert!(
        eventually(|| entered.load(Ordering::SeqCst)),
        "the flusher never ran the merge"
    );

    let value = vec![7u8; 1000];
    // Fill the ring with puts that fit (a waker that never fires is fine for those).
    let (_, spare) = flag();
    let mut i = 0u32;
    let engine_ref = &engine;
    let mut first = loop {
        let key = format!("fill-{i:05}").into_bytes();
        i += 1;
        let value = &value;
        let mut fut: Pin<Box<dyn Future<Output = _> + '_>> =
            Box::pin(async move { engine_ref.put_async(&key, value).await });
        match fut.as_mut().poll(&mut Context::from_waker(&spare)) {
            Poll::Ready(r) => drop(r.expect("put_async")),
            Poll::Pending => break fut,
        }
        assert!(i < 10_000, "the ring never filled");
    };
    // The first waiting task: registered with the panicking waker.
    let panicking = Waker::from(Arc::new(Panics));
    assert!(first
        .as_mut()
        .poll(&mut Context::from_waker(&panicking))
        .is_pending());
    // The second waiting task, with a waker that records the wake-up.
    let (second_woken, second_waker) = flag();
    let mut second = Box::pin(engine.put_async(b"second", &value));
    assert!(second
        .as_mut()
        .poll(&mut Context::from_waker(&second_waker))
        .is_pending());

    open.store(true, Ordering::SeqCst);
    let woken = eventually(|| second_woken.0.load(Ordering::SeqCst));
    let failure = engine.failure();
    assert!(
        woken && failure.is_none(),
        "second task woken: {woken}; engine failure: {failure:?} \
         (a user's waker panic must be caught, and must not cost other tasks their wake-up)"
    );
    drop((first, second));
    let _ = engine.close();
}

/// The consumer-lag throttle's limit of these tests, in batches.
const LIMIT: u64 = 2;

fn throttled_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        backpressure: Backpressure::Block,
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(LIMIT),
            ..ConsumerLag::default()
        }),
        ..Config::default()
    }
}

/// Puts `LIMIT + 1` batches, so that the consumer "slow" lags past the limit.
fn engage(engine: &Engine) {
    for i in 1..=LIMIT + 1 {
        let key = format!("key-{i:04}");
        engine
            .put(key.as_bytes(), b"v")
            .expect("put")
            .wait_timeout(common::WAIT_MAX)
            .expect("durable");
    }
}

/// Reads `n` batches with `c` and commits the last.
fn consume(c: &mut mergelog::Consumer, n: u64) {
    let mut last = Seq::new(0);
    for _ in 0..n {
        last = c
            .next_timeout(common::WAIT_MAX)
            .expect("next")
            .expect("a batch")
            .seq;
    }
    c.commit(last).expect("commit");
}

/// Two tasks wait for the throttle; the first one's waker panics. `throttle::wake_tasks`
/// (called by `decide`, here from the consumer's `commit` through `measure`) runs the wakers
/// under the throttle's `state` lock and outside any `catch_unwind`: the panic comes out of
/// the committing thread's `Consumer::commit` (another task's bug, surfacing in the
/// consumer), and the second task's waker, already taken off the list, is never called.
#[test]
fn a_panicking_throttle_waker_neither_escapes_commit_nor_loses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), throttled_config()).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    engage(&engine);

    let panicking = Waker::from(Arc::new(Panics));
    let mut first = Box::pin(engine.put_async(b"first", b"v"));
    assert!(
        first
            .as_mut()
            .poll(&mut Context::from_waker(&panicking))
            .is_pending(),
        "not throttled"
    );
    let (second_woken, second_waker) = flag();
    let mut second = Box::pin(engine.put_async(b"second", b"v"));
    assert!(second
        .as_mut()
        .poll(&mut Context::from_waker(&second_waker))
        .is_pending());

    let commit =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| consume(&mut c, LIMIT + 1)));
    let woken = eventually(|| second_woken.0.load(Ordering::SeqCst));
    assert!(
        commit.is_ok() && woken,
        "commit returned normally: {}; second task woken: {woken}",
        commit.is_ok()
    );
    drop((first, second));
}

/// A task whose waker polls it at once, on the waking thread (an inline executor; the ring's
/// own `wake_space_tasks` wakes outside its lock precisely because "a waker may run the task
/// inline and register again").
struct Inline {
    task: std::sync::Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    done: AtomicBool,
}

impl Wake for Inline {
    fn wake(self: Arc<Self>) {
        let waker = Waker::from(self.clone());
        let Ok(mut task) = self.task.try_lock() else {
            return;
        };
        if let Some(fut) = task.as_mut() {
            if fut
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                *task = None;
                self.done.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A throttled `put_async` whose waker polls it inline: the commit that releases the
/// throttle runs `decide` -> `wake_tasks` -> the waker -> the future's `poll_wait`, which
/// takes the throttle's `state` lock that `decide` still holds on this very thread: the
/// committing thread deadlocks (with the lag released by the syncer's `advanced` or the
/// idle syncer's re-read, that would be the syncer's thread, and the whole engine).
#[test]
fn a_throttle_waker_that_polls_inline_does_not_deadlock_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), throttled_config()).expect("open"));
    let mut c = engine.consumer("slow").expect("consumer");
    engage(&engine);

    let e = engine.clone();
    let inline = Arc::new(Inline {
        task: std::sync::Mutex::new(Some(Box::pin(async move {
            let ticket = e.put_async(b"inline", b"v").await.expect("put_async");
            drop(ticket);
        }))),
        done: AtomicBool::new(false),
    });
    let waker = Waker::from(inline.clone());
    {
        let mut task = inline.task.lock().unwrap();
        let fut = task.as_mut().unwrap();
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending(),
            "not throttled"
        );
    }

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        consume(&mut c, LIMIT + 1);
        let _ = tx.send(());
    });
    let committed = rx.recv_timeout(LOST_AFTER).is_ok();
    assert!(
        committed,
        "the commit never returned: the waker, run under the throttle's state lock, \
         deadlocked on it"
    );
    assert!(inline.done.load(Ordering::SeqCst));
}

/// A task of an executor that has gone away: its waker is the last reference to it, and the
/// task owns the last handle on the engine. Waking it drops it, and the engine with it, on
/// whichever thread woke it. Reports on `dropped` once the engine's drop has returned.
struct OrphanTask {
    engine: std::sync::Mutex<Option<Arc<Engine>>>,
    dropped: std::sync::Mutex<mpsc::Sender<()>>,
}

impl Wake for OrphanTask {
    fn wake(self: Arc<Self>) {
        // Nothing to run it on: the task is dropped with this last reference.
    }
}

impl Drop for OrphanTask {
    fn drop(&mut self) {
        drop(self.engine.lock().unwrap().take());
        let _ = self.dropped.lock().unwrap().send(());
    }
}

/// The last handle on the engine is dropped inside a waker the engine's own thread calls
/// (a task whose executor is gone, holding an `Arc<Engine>`): the drop closes the engine,
/// which joins the pipeline, the very thread running the waker. Before, that thread waited
/// for itself (a syncer: a deadlock; the flusher completing inline: `join` on itself
/// panicked, the panic was caught, and the directory lock was let go while the pipeline
/// still ran). The close must finish, the put be durable, the directory free.
#[test]
fn the_last_engine_dropped_in_a_waker_on_an_engine_thread_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::syncs();
    let engine =
        Arc::new(Engine::open_with_io(dir.path(), Config::default(), hold.clone()).expect("open"));
    // The put's sync waits until its ticket has been polled: the waker is registered first.
    hold.hold_every();
    let mut ticket = engine.put(b"k", b"v").expect("put");
    let (tx, dropped) = mpsc::channel();
    let task = Arc::new(OrphanTask {
        engine: std::sync::Mutex::new(Some(engine)),
        dropped: std::sync::Mutex::new(tx),
    });
    let waker = Waker::from(task);
    assert!(
        Pin::new(&mut ticket)
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "the put was durable before it was polled"
    );
    // The engine's waker list now holds the only reference to the task, and so to the engine.
    drop(waker);
    hold.release();
    match dropped.recv_timeout(common::WAIT_MAX) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("hung: the engine dropped in a waker never finished closing")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the engine's drop panicked inside the waker")
        }
    }
    assert!(
        matches!(ticket.try_result(), Some(Ok(_))),
        "{:?}",
        ticket.try_result()
    );
    // Reopened once the closing is done: the directory is free, the put is there.
    let again = common::within("reopen", {
        let dir = dir.path().to_owned();
        move || loop {
            match Engine::open(&dir, Config::default()) {
                Err(mergelog::Error::Locked(_)) => std::thread::yield_now(),
                other => break other,
            }
        }
    })
    .expect("reopen");
    assert_eq!(again.read_to_vec(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}
