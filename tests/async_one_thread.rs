//! The asynchronous contract on one executor thread: many tasks share a thread
//! (`common::local`), so a call inside one that blocks the thread keeps the others from
//! running (the task that would end the wait among them), and the watchdog fails the test
//! naming the task the thread is stuck in; a lost wake-up leaves a task unpolled, and the
//! watchdog says so. The flusher or the syncer is held by a storage hook ([`stall`]) that a
//! task on the same thread lets go, so the release itself depends on the thread being free.
//!
//! Cases: a full ring under `Backpressure::Block`; the consumer-lag throttle, released by a
//! commit made by a task on the same thread; `close` and the engine's drop while futures wait;
//! futures dropped while they wait for ring space and for durability, after which the engine
//! goes on; a failed sync while thousands of futures wait for room and durability, and while
//! thousands are held by the throttle.

mod common;

use common::hold::Hold;
use common::local::{self, poll_once, task, Task};
use common::WAIT_MAX;
use mergelog::internals::io::IoOp;
use mergelog::{Backpressure, Config, ConsumerLag, Engine, Error, Seq};
use std::future::poll_fn;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Holds every `op` on a segment file from the start, until the test lets them go.
fn stall(op: IoOp) -> Arc<Hold> {
    let stall = Hold::of(op);
    stall.hold_every();
    stall
}

const VALUE_LEN: usize = 1000;

/// Reopens the log in `dir` and checks that each of the first `n` keys holds `expected(i)`.
fn reopened_holds(dir: &std::path::Path, n: usize, expected: impl Fn(usize) -> Option<Vec<u8>>) {
    let engine = Engine::open(dir, Config::default()).unwrap();
    for i in 0..n {
        assert_eq!(engine.read_to_vec(&key(i)).unwrap(), expected(i), "key {i}");
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

/// A 64 KiB ring (a few dozen puts of [`VALUE_LEN`] fill it), under `Block`.
fn small_ring() -> Config {
    Config {
        ring_bytes: 64 << 10,
        backpressure: Backpressure::Block,
        ..Config::default()
    }
}

/// Opens `dir` through `stall`, and holds the flusher (a stalled write) or the syncer (a
/// stalled sync) with a first put, submitted from this thread; returns its ticket.
fn open_stalled(dir: &Path, config: Config, stall: &Arc<Hold>) -> (Arc<Engine>, mergelog::Ticket) {
    let engine = Arc::new(Engine::open_with_io(dir, config, stall.clone()).expect("open"));
    let first = engine.put(b"first", b"held").expect("put");
    assert!(stall.wait_held(1), "hung: nothing reached the stall");
    (engine, first)
}

/// Whether `e` is the failure a failed segment sync gives: the `Io` error itself (a ticket
/// of the failed batch or a later one) or `Failed` with it as the cause (a call after).
fn is_the_sync_failure(e: &Error) -> bool {
    let io = |e: &Error| {
        matches!(
            e,
            Error::Io {
                op: "sync segment",
                ..
            }
        )
    };
    match e {
        Error::Failed(cause) => io(cause),
        e => io(e),
    }
}

/// A full ring under `Backpressure::Block`, the flusher held inside a write: the puts that
/// fit are submitted, the rest wait as futures, and the task that lets the flusher go runs
/// on the same thread after every put was polled once. Every put then completes, durably.
#[test]
fn a_full_ring_waits_as_futures_and_the_task_that_frees_it_runs() {
    const CLIENTS: usize = 400;
    let tmp = tempfile::tempdir().unwrap();
    let stall = stall(IoOp::Write);
    let (engine, first) = open_stalled(tmp.path(), small_ring(), &stall);
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Task<mergelog::Result<Option<Seq>>>> = (0..CLIENTS)
        .map(|i| {
            let (engine, submitted) = (engine.clone(), submitted.clone());
            task(format!("put {i}"), async move {
                let ticket = engine.put_async(&key(i), &value(i)).await?;
                submitted.fetch_add(1, Ordering::SeqCst);
                ticket.await.map(Some)
            })
        })
        .collect();
    let fitted = Arc::new(AtomicUsize::new(0));
    tasks.push(task("release the flusher", {
        let (stall, submitted, fitted) = (stall.clone(), submitted.clone(), fitted.clone());
        async move {
            fitted.store(submitted.load(Ordering::SeqCst), Ordering::SeqCst);
            stall.release();
            Ok(None)
        }
    }));
    let results = local::run_on_one_thread(tasks);
    let fitted = fitted.load(Ordering::SeqCst);
    assert!(
        fitted > 0 && fitted < CLIENTS / 2,
        "{fitted} of {CLIENTS} puts fitted a 64 KiB ring before the flusher was let go"
    );
    for (i, r) in results[..CLIENTS].iter().enumerate() {
        let seq = r.as_ref().unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert!(seq.is_some_and(|s| s <= engine.durable_seq()), "put {i}");
    }
    first.wait_timeout(WAIT_MAX).expect("the first put");
    Arc::into_inner(engine)
        .expect("one handle")
        .close()
        .expect("close");
    reopened_holds(tmp.path(), CLIENTS, |i| Some(value(i)));
}

/// Writers throttled on consumer lag wait as futures, and the consumer that releases them is
/// a task on the same thread: it reads the batches as a stream and commits them. Were a
/// throttled submit to block the thread, the consumer would never run.
#[test]
fn a_throttled_submit_is_released_by_a_commit_made_on_the_same_thread() {
    const WRITERS: usize = 100;
    const LIMIT: u64 = 2;
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(LIMIT),
            ..ConsumerLag::default()
        }),
        ..Config::default()
    };
    let engine = Arc::new(Engine::open(tmp.path(), config).unwrap());
    let mut consumer = engine.consumer("slow").unwrap();
    for i in 0..=LIMIT {
        let t = engine.put(format!("before-{i}").as_bytes(), b"v").unwrap();
        t.wait_timeout(WAIT_MAX).unwrap();
    }
    let mut tasks: Vec<Task<mergelog::Result<()>>> = (0..WRITERS)
        .map(|i| {
            let engine = engine.clone();
            task(format!("writer {i}"), async move {
                engine.put_async(&key(i), b"w").await?.await.map(drop)
            })
        })
        .collect();
    tasks.push(task("consumer", async move {
        let mut seen = std::collections::HashSet::new();
        while seen.len() < WRITERS {
            let batch = poll_fn(|cx| consumer.poll_next(cx))
                .await
                .expect("a stream")?;
            for mergelog::OwnedRecord { key: k, .. } in &batch.records {
                if k.starts_with(b"client-") {
                    seen.insert(k.clone());
                }
            }
            consumer.commit(batch.seq)?;
        }
        Ok(())
    }));
    for (i, r) in local::run_on_one_thread(tasks).into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("task {i}: {e}"));
    }
    assert!(
        engine.counts().throttled >= WRITERS as u64,
        "the writers were not throttled ({} throttled submits)",
        engine.counts().throttled
    );
    for i in 0..WRITERS {
        assert_eq!(engine.read_to_vec(&key(i)).unwrap(), Some(b"w".to_vec()));
    }
}

/// What a task of the close and drop tests ended with.
#[derive(Debug)]
enum End {
    /// A put, durable in this batch.
    Durable(Seq),
    /// A put refused at submit with `Closed` (it waited for ring space at the close).
    Closed,
    /// A stream that yielded this many batches, then ended with `Closed`.
    Streamed(usize),
    /// The task that closed or dropped the engine.
    Closer,
}

/// Puts on a full ring with the flusher held, a follower's stream and a consumer's: the task
/// that closes the engine runs on the same thread. It lets the flusher go and closes, which
/// blocks the thread until the pipeline has drained (the engine's own threads do that, so it
/// returns); then every put still waiting for ring space resolves to `Closed`, every ticket
/// of a put submitted completes, and the streams end with `Closed` after the last batch. A
/// reopen holds exactly the puts acknowledged.
#[test]
fn close_from_a_task_ends_every_future_waiting_on_the_same_thread() {
    const CLIENTS: usize = 400;
    let tmp = tempfile::tempdir().unwrap();
    let stall = stall(IoOp::Write);
    let (engine, first) = open_stalled(tmp.path(), small_ring(), &stall);
    let follower = engine.follow(1);
    let consumer = engine.consumer("reader").unwrap();
    let mut tasks: Vec<Task<mergelog::Result<End>>> = (0..CLIENTS)
        .map(|i| {
            let engine = engine.clone();
            task(format!("put {i}"), async move {
                match engine.put_async(&key(i), &value(i)).await {
                    Ok(ticket) => ticket.await.map(End::Durable),
                    Err(Error::Closed) => Ok(End::Closed),
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    tasks.push(task("follower", stream_to_the_close(follower)));
    tasks.push(task("consumer", {
        let mut consumer = consumer;
        async move {
            let mut n = 0;
            loop {
                match poll_fn(|cx| consumer.poll_next(cx))
                    .await
                    .expect("a stream")
                {
                    Ok(_) => n += 1,
                    Err(Error::Closed) => return Ok(End::Streamed(n)),
                    Err(e) => return Err(e),
                }
            }
        }
    }));
    tasks.push(task("close", {
        let (engine, stall) = (engine.clone(), stall.clone());
        async move {
            stall.release();
            engine.close()?;
            Ok(End::Closer)
        }
    }));
    let results = local::run_on_one_thread(tasks);
    first.wait_timeout(WAIT_MAX).expect("the first put");
    let durable = engine.durable_seq().get() as usize;
    let mut acknowledged = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(End::Durable(seq)) => {
                assert!(*seq <= engine.durable_seq(), "put {i}");
                acknowledged.push(i);
            }
            Ok(End::Closed) => assert!(i < CLIENTS, "task {i} refused"),
            Ok(End::Streamed(n)) => assert_eq!(*n, durable, "a stream ended early"),
            Ok(End::Closer) => assert_eq!(i, results.len() - 1),
            Err(e) => panic!("task {i}: {e}"),
        }
    }
    assert!(
        acknowledged.len() < CLIENTS,
        "no put waited for ring space at the close"
    );
    drop(engine);
    reopened_holds(tmp.path(), CLIENTS, |i| {
        acknowledged.contains(&i).then(|| value(i))
    });
}

/// A follower's stream until the engine's close: the batches it yielded.
async fn stream_to_the_close(mut follower: mergelog::Follower) -> mergelog::Result<End> {
    let mut n = 0;
    loop {
        match poll_fn(|cx| follower.poll_next(cx))
            .await
            .expect("a stream")
        {
            Ok(_) => n += 1,
            Err(Error::Closed) => return Ok(End::Streamed(n)),
            Err(e) => return Err(e),
        }
    }
}

/// The engine's last handle dropped by a task while other tasks on the same thread await
/// tickets (the syncer held in a sync) and a follower's stream: the drop closes the engine
/// and returns, every ticket completes, the stream ends with `Closed`.
#[test]
fn the_engine_dropped_in_a_task_ends_the_futures_waiting_on_the_same_thread() {
    const CLIENTS: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let stall = stall(IoOp::Sync);
    let (engine, first) = open_stalled(tmp.path(), Config::default(), &stall);
    let tickets: Vec<mergelog::Ticket> = (0..CLIENTS)
        .map(|i| engine.put(&key(i), &value(i)).expect("put"))
        .collect();
    let follower = engine.follow(1);
    let mut tasks: Vec<Task<mergelog::Result<End>>> = tickets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            task(
                format!("ticket {i}"),
                async move { t.await.map(End::Durable) },
            )
        })
        .collect();
    tasks.push(task("follower", stream_to_the_close(follower)));
    tasks.push(task("drop the engine", {
        let stall = stall.clone();
        async move {
            stall.release();
            drop(Arc::into_inner(engine).expect("the last handle"));
            Ok(End::Closer)
        }
    }));
    let results = local::run_on_one_thread(tasks);
    first.wait_timeout(WAIT_MAX).expect("the first put");
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(End::Durable(_) | End::Closer) => {}
            Ok(End::Streamed(n)) => assert!(*n >= 2, "the stream yielded {n} batches"),
            other => panic!("task {i}: {other:?}"),
        }
    }
    reopened_holds(tmp.path(), CLIENTS, |i| Some(value(i)));
}

/// Futures given up on while they wait (dropped after one poll): puts waiting for ring
/// space (nothing submitted) and tickets waiting for durability (the put goes on). Then the
/// flusher is let go by a task on the same thread, and later puts, made after the drops,
/// all complete; a reopen holds the puts whose tickets were dropped and none of those
/// given up on before they were submitted.
#[test]
fn futures_dropped_while_they_wait_leave_the_engine_working() {
    const QUITTERS: usize = 200;
    const LATER: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let stall = stall(IoOp::Write);
    let (engine, first) = open_stalled(tmp.path(), small_ring(), &stall);

    /// How a quitter gave up.
    #[derive(Debug, PartialEq)]
    enum Quit {
        /// While its put waited for ring space: nothing submitted.
        WaitingForRoom,
        /// While its ticket waited for durability: the put stays submitted.
        WaitingForDurability,
        /// A later put, durable.
        Durable,
        Released,
    }
    let mut tasks: Vec<Task<mergelog::Result<Quit>>> = (0..QUITTERS)
        .map(|i| {
            let engine = engine.clone();
            task(format!("quitter {i}"), async move {
                let (k, v) = (key(i), value(i));
                let quit = match poll_once(Box::pin(engine.put_async(&k, &v))).await {
                    Err(_waiting) => Quit::WaitingForRoom,
                    Ok(ticket) => match poll_once(ticket?).await {
                        Ok(r) => panic!("durable while the flusher is held: {r:?}"),
                        Err(_pending) => Quit::WaitingForDurability,
                    },
                };
                Ok(quit)
            })
        })
        .collect();
    tasks.push(task("release the flusher", {
        let stall = stall.clone();
        async move {
            stall.release();
            Ok(Quit::Released)
        }
    }));
    tasks.extend((QUITTERS..QUITTERS + LATER).map(|i| {
        let engine = engine.clone();
        task(format!("later put {i}"), async move {
            engine.put_async(&key(i), &value(i)).await?.await?;
            Ok(Quit::Durable)
        })
    }));
    let results = local::run_on_one_thread(tasks);
    first.wait_timeout(WAIT_MAX).expect("the first put");
    let ends: Vec<Quit> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("task {i}: {e}")))
        .collect();
    let quit = |q: Quit| ends[..QUITTERS].iter().filter(|e| **e == q).count();
    let (room, durability) = (quit(Quit::WaitingForRoom), quit(Quit::WaitingForDurability));
    assert!(
        room > 0 && durability > 0,
        "{room} gave up waiting for room, {durability} for durability"
    );
    assert!(ends[QUITTERS + 1..].iter().all(|e| *e == Quit::Durable));
    // Everything submitted before the close is durable after it.
    Arc::into_inner(engine)
        .expect("one handle")
        .close()
        .expect("close");
    let engine = Engine::open(tmp.path(), Config::default()).unwrap();
    for (i, end) in ends.iter().enumerate().filter(|(i, _)| *i != QUITTERS) {
        let i = if i > QUITTERS { i - 1 } else { i };
        let expected = (*end != Quit::WaitingForRoom).then(|| value(i));
        assert_eq!(
            engine.read_to_vec(&key(i)).unwrap(),
            expected,
            "key {i} ({end:?})"
        );
    }
}

/// A failed sync while thousands of futures wait on one thread: puts waiting for ring space
/// and tickets waiting for durability (the syncer held in the sync, which a task on the same
/// thread then fails). Every one of them ends with the failure; none is acknowledged.
#[test]
fn a_failed_sync_wakes_thousands_of_waiting_futures_with_the_error() {
    const CLIENTS: usize = 4000;
    let tmp = tempfile::tempdir().unwrap();
    let stall = stall(IoOp::Sync);
    let config = Config {
        ring_bytes: 256 << 10,
        ..small_ring()
    };
    let (engine, first) = open_stalled(tmp.path(), config, &stall);
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Task<mergelog::Result<Seq>>> = (0..CLIENTS)
        .map(|i| {
            let (engine, submitted) = (engine.clone(), submitted.clone());
            task(format!("put {i}"), async move {
                let ticket = engine.put_async(&key(i), &value(i)[..100]).await?;
                submitted.fetch_add(1, Ordering::SeqCst);
                ticket.await
            })
        })
        .collect();
    let fitted = Arc::new(AtomicUsize::new(0));
    tasks.push(task("fail the sync", {
        let (stall, submitted, fitted) = (stall.clone(), submitted.clone(), fitted.clone());
        async move {
            fitted.store(submitted.load(Ordering::SeqCst), Ordering::SeqCst);
            stall.release_failing();
            Ok(Seq::new(0))
        }
    }));
    let results = local::run_on_one_thread(tasks);
    let fitted = fitted.load(Ordering::SeqCst);
    assert!(
        fitted > 0 && fitted < CLIENTS,
        "{fitted} of {CLIENTS} puts were submitted before the sync failed"
    );
    for (i, r) in results[..CLIENTS].iter().enumerate() {
        match r {
            Err(e) if is_the_sync_failure(e) => {}
            other => panic!("put {i} ended with {other:?}, not the failed sync"),
        }
    }
    let e = first.wait_timeout(WAIT_MAX).expect_err("the first put");
    assert!(is_the_sync_failure(&e), "{e:?}");
    assert!(engine.failure().is_some_and(|e| is_the_sync_failure(&e)));
}

/// A failed sync while thousands of futures are held by the consumer-lag throttle on one
/// thread (the consumer never commits): the failure lets every one of them go, each with the
/// engine's failure, none submitted.
#[test]
fn a_failed_sync_lets_go_of_thousands_of_throttled_futures() {
    const CLIENTS: usize = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let stall = Hold::syncs();
    let config = Config {
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(2),
            ..ConsumerLag::default()
        }),
        ..Config::default()
    };
    let engine = Arc::new(Engine::open_with_io(tmp.path(), config, stall.clone()).unwrap());
    for i in 0..3 {
        let t = engine.put(format!("before-{i}").as_bytes(), b"v").unwrap();
        t.wait_timeout(WAIT_MAX).unwrap();
    }
    // The sync held (then failed) is this put's; the consumer made after it lags by the
    // three batches before it, past the limit.
    stall.hold_every();
    let held = engine.put(b"held", b"v").unwrap();
    assert!(stall.wait_held(1), "hung: nothing reached the stall");
    let consumer = engine.consumer("never").unwrap();
    let mut tasks: Vec<Task<mergelog::Result<Seq>>> = (0..CLIENTS)
        .map(|i| {
            let engine = engine.clone();
            task(format!("put {i}"), async move {
                engine.put_async(&key(i), b"held").await?.await
            })
        })
        .collect();
    let throttled = Arc::new(AtomicUsize::new(0));
    tasks.push(task("fail the sync", {
        let (engine, stall, throttled) = (engine.clone(), stall.clone(), throttled.clone());
        async move {
            throttled.store(engine.counts().throttled as usize, Ordering::SeqCst);
            stall.release_failing();
            Ok(Seq::new(0))
        }
    }));
    let results = local::run_on_one_thread(tasks);
    assert_eq!(
        throttled.load(Ordering::SeqCst),
        CLIENTS,
        "puts throttled before the sync failed"
    );
    for (i, r) in results[..CLIENTS].iter().enumerate() {
        match r {
            Err(e) if is_the_sync_failure(e) => {}
            other => panic!("put {i} ended with {other:?}, not the failed sync"),
        }
    }
    let e = held.wait_timeout(WAIT_MAX).expect_err("the held put");
    assert!(is_the_sync_failure(&e), "{e:?}");
    drop(consumer);
    let closed = Arc::into_inner(engine).expect("one handle").close();
    assert!(closed.is_err_and(|e| is_the_sync_failure(&e)));
    reopened_holds(tmp.path(), CLIENTS, |_| None);
}
