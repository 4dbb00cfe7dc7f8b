//! Throttling on consumer lag (`Config::consumer_lag_max`): past the limit, writes are refused
//! (`Backpressure::Reject`) or wait (`Block`); a commit (in this process, or through a
//! consumer's file from another `LogReader`), removing the consumer, or closing the engine
//! releases them; without a consumer nothing is throttled; a zero limit is refused; a request
//! too large is refused for its size, never throttled; a closed engine refuses as `Closed`;
//! `wait_unthrottled` waits for the release under `Reject`; a consumer made from the engine's
//! view releases at its commit too.

mod common;

use common::WAIT_MAX;
use mergelog::{Backpressure, Config, Consumer, ConsumerLag, Engine, Error, LogReader, Seq};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lag limit of these tests, in batches.
const LIMIT: u64 = 2;

fn config(backpressure: Backpressure, lag: ConsumerLag) -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        backpressure,
        consumer_lag_max: Some(lag),
        ..Config::default()
    }
}

fn batches(n: u64) -> ConsumerLag {
    ConsumerLag {
        batches: Some(n),
        ..ConsumerLag::default()
    }
}

/// One put, waited for: one batch.
fn put_batch(engine: &Engine, i: u64, value_len: usize) -> Seq {
    let key = format!("key-{i:04}");
    let t = engine
        .put(key.as_bytes(), &vec![b'v'; value_len])
        .expect("put");
    t.wait_timeout(WAIT_MAX).expect("durable")
}

/// Logs `LIMIT + 1` batches: a consumer that read none lags past the limit.
fn lag_past_the_limit(engine: &Engine) {
    for i in 1..=LIMIT + 1 {
        put_batch(engine, i, 10);
    }
}

/// Reads `n` batches with `c` and commits the last.
fn consume(c: &mut Consumer, n: u64) {
    let mut last = Seq::new(0);
    for _ in 0..n {
        last = c
            .next_timeout(WAIT_MAX)
            .expect("next")
            .expect("a batch within the hang guard")
            .seq;
    }
    c.commit(last).expect("commit");
}

/// Whether `r` is the refusal of a throttled submission (a back-off error whose message names
/// the limit).
fn is_throttled(r: mergelog::Result<mergelog::Ticket>) -> bool {
    match r {
        Err(e @ Error::Throttled { .. }) => {
            assert!(e.is_back_off(), "{e}");
            assert!(e.to_string().contains("consumer_lag_max"), "{e}");
            true
        }
        _ => false,
    }
}

/// Polls `cond` until it holds (a hang guard, not a timing assertion).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(Instant::now() < deadline, "hung: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn past_the_limit_puts_are_refused_until_the_consumer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        merge: Some(mergelog::MergeOperator::Add),
        ..config(Backpressure::Reject, batches(LIMIT))
    };
    let engine = Engine::open(dir.path(), config).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    for i in 1..=LIMIT + 1 {
        assert_eq!(put_batch(&engine, i, 10), i);
    }
    // Lag LIMIT + 1: over the limit.
    match engine.put(b"k", b"v") {
        Err(Error::Throttled { consumer, lag }) => {
            assert_eq!(consumer, "slow");
            assert_eq!(
                lag,
                batches(LIMIT + 1),
                "the lag in batches, no bytes measured"
            );
        }
        other => panic!("a put past the limit: {other:?}"),
    }
    assert!(Error::Busy.is_back_off());
    assert!(is_throttled(engine.delete(b"k")), "a delete past the limit");
    let mut batch = mergelog::WriteBatch::new();
    batch.put(b"k", b"v");
    assert!(is_throttled(engine.write(&batch)), "a write past the limit");
    assert!(
        is_throttled(engine.merge(b"n", &1i64.to_le_bytes())),
        "a merge past the limit"
    );
    // Reads and flushes add nothing to the backlog.
    engine.get(b"key-0001").expect("get").wait().expect("read");
    engine.flush().expect("flush").wait().expect("flushed");
    assert_eq!(engine.counts().throttled, 4);
    assert_eq!(engine.stats().throttled, 4);
    consume(&mut c, LIMIT + 1);
    put_batch(&engine, 100, 10);
}

/// A consumer made from the engine's view (`Engine::replay`, then `LogReader::consumer`)
/// counts as one for the throttle, and its commit releases at once, as `Engine::consumer`'s
/// does (before, only the syncer's re-read of the files, up to 100 ms later, did).
#[test]
fn a_commit_of_a_consumer_made_from_the_engines_view_releases_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open");
    let mut c = engine.replay().unwrap().consumer("view").expect("consumer");
    lag_past_the_limit(&engine);
    assert!(is_throttled(engine.put(b"k", b"v")), "a put past the limit");
    consume(&mut c, LIMIT + 1);
    let after = engine.put(b"k", b"v");
    assert!(after.is_ok(), "the commit did not release: {after:?}");
}

#[test]
fn a_bytes_limit_throttles_too() {
    let dir = tempfile::tempdir().unwrap();
    let lag = ConsumerLag {
        bytes: Some(1000),
        ..ConsumerLag::default()
    };
    let engine = Engine::open(dir.path(), config(Backpressure::Reject, lag)).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    put_batch(&engine, 1, 600);
    put_batch(&engine, 2, 600);
    match engine.put(b"k", b"v") {
        Err(Error::Throttled { lag, .. }) => {
            assert!(lag.bytes.is_some_and(|b| b > 1000), "{lag:?}");
            assert_eq!(lag.batches, Some(2));
        }
        other => panic!("past 1000 bytes of lag: {other:?}"),
    }
    consume(&mut c, 2);
    put_batch(&engine, 3, 600);
}

#[test]
fn an_age_limit_throttles_once_the_oldest_unprocessed_batch_is_older() {
    let dir = tempfile::tempdir().unwrap();
    let age = Duration::from_millis(200);
    let lag = ConsumerLag {
        age: Some(age),
        ..ConsumerLag::default()
    };
    let engine = Engine::open(dir.path(), config(Backpressure::Reject, lag)).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    // Young enough: not throttled (a put always gets through right after the first batch).
    put_batch(&engine, 1, 10);
    // Once the first unprocessed batch is older than the limit, a new frame's completion sees
    // it: the next submissions are refused, naming the age.
    std::thread::sleep(age + Duration::from_millis(20));
    eventually("the age limit engages", || match engine.put(b"k", b"v") {
        Err(Error::Throttled { lag, .. }) => {
            let seen = lag.age.expect("the age is reported with an age limit");
            assert!(seen > age, "{lag:?}");
            // Measured before now, from a time no earlier than the batch's commit time.
            let view = engine.replay().expect("replay");
            let written = view.batches().next().and_then(|b| b.commit_time());
            let written = written.expect("the first batch, with a commit time");
            let since = std::time::SystemTime::now()
                .duration_since(written)
                .unwrap();
            assert!(seen <= since, "age {seen:?} over the batch's {since:?}");
            true
        }
        Ok(t) => {
            t.wait_timeout(WAIT_MAX).expect("durable");
            false
        }
        Err(e) => panic!("{e}"),
    });
    // Everything consumed: released (after the commit's re-measure).
    let durable = engine.durable_seq().get();
    consume(&mut c, durable);
    eventually("the commit releases", || {
        !is_throttled(engine.put(b"k", b"v"))
    });
    let info = &engine.consumers().unwrap()[0];
    assert!(info.lag_batches <= 1, "{info:?}");
}

#[test]
fn a_blocked_put_is_released_by_a_commit_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(dir.path(), config(Backpressure::Block, batches(LIMIT))).expect("open"),
    );
    let mut c = engine.consumer("slow").expect("consumer");
    lag_past_the_limit(&engine);
    let submitter = {
        let engine = engine.clone();
        std::thread::spawn(move || put_batch(&engine, 100, 10))
    };
    eventually("the put is throttled", || engine.counts().throttled == 1);
    let committer = std::thread::spawn(move || consume(&mut c, LIMIT + 1));
    committer.join().expect("committer");
    let seq = common::within("the released put", move || submitter.join().expect("put"));
    assert_eq!(seq, LIMIT + 2);
}

/// A closed engine refuses a write with `Error::Closed` while a consumer lags, under `Reject`
/// as under `Block`: `Error::Throttled` would tell the caller to retry once the consumer
/// caught up, which never lets it in. `wait_unthrottled` returns at once then (it does not
/// hold the caller for a closed engine's throttle).
#[test]
fn a_closed_engine_refuses_a_throttled_write_as_closed() {
    for backpressure in [Backpressure::Reject, Backpressure::Block] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config(backpressure, batches(LIMIT))).expect("open");
        let _c = engine.consumer("slow").expect("consumer");
        lag_past_the_limit(&engine);
        engine.close().expect("close");
        let engine = Arc::new(engine);
        let waiting = engine.clone();
        common::within("wait_unthrottled on a closed engine", move || {
            waiting.wait_unthrottled()
        });
        match engine.put(b"k", b"v") {
            Err(Error::Closed) => {}
            other => panic!("a put on a closed engine ({backpressure:?}): {other:?}"),
        }
    }
}

/// `wait_unthrottled` holds the caller while the consumer lags, whatever `backpressure` says,
/// and lets it go at the consumer's commit; a put then goes in.
#[test]
fn wait_unthrottled_returns_at_the_consumers_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open"),
    );
    let mut c = engine.consumer("slow").expect("consumer");
    engine.wait_unthrottled();
    lag_past_the_limit(&engine);
    assert!(is_throttled(engine.put(b"k", b"v")));
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            engine.wait_unthrottled();
            tx.send(()).unwrap();
        })
    };
    // Still held: nothing has committed (a bounded look, not a timing assertion: a waiter
    // let go wrongly would be seen here or not at all, and the check below still holds).
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    consume(&mut c, LIMIT + 1);
    common::within("the waiter let go", move || waiter.join().expect("waiter"));
    put_batch(&engine, 100, 10);
}

#[test]
fn removing_the_consumer_releases() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open");
    let c = engine.consumer("gone").expect("consumer");
    lag_past_the_limit(&engine);
    assert!(is_throttled(engine.put(b"k", b"v")));
    drop(c);
    assert!(engine.remove_consumer("gone").expect("remove"));
    put_batch(&engine, 100, 10);
}

#[test]
fn without_a_consumer_nothing_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(Backpressure::Reject, batches(1))).expect("open");
    for i in 1..=10 {
        put_batch(&engine, i, 10);
    }
    assert_eq!(engine.counts().throttled, 0);
    // A consumer opened now has all ten to process: the same limit throttles.
    let _c = engine.consumer("late").expect("consumer");
    assert!(
        is_throttled(engine.put(b"k", b"v")),
        "a consumer ten batches behind"
    );
}

#[test]
fn close_releases_a_blocked_put() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(dir.path(), config(Backpressure::Block, batches(LIMIT))).expect("open"),
    );
    let _c = engine.consumer("slow").expect("consumer");
    lag_past_the_limit(&engine);
    let submitter = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.put(b"k", b"v").map(|_| ()))
    };
    eventually("the put is throttled", || engine.counts().throttled == 1);
    engine.close().expect("close");
    let r = common::within("the released put", move || submitter.join().expect("put"));
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[test]
fn a_commit_through_the_file_releases_within_the_reread_interval() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open");
    drop(engine.consumer("remote").expect("consumer"));
    lag_past_the_limit(&engine);
    assert!(is_throttled(engine.put(b"k", b"v")));
    // As another process would: a reader of the directory commits to the consumer's file.
    let reader = LogReader::open(dir.path()).expect("reader");
    let mut c = reader.consumer("remote").expect("consumer");
    consume(&mut c, LIMIT + 1);
    eventually("the engine sees the commit", || {
        !is_throttled(engine.put(b"k", b"v"))
    });
}

/// The throttle keeps each consumer's position (changed by the engine's commits, creations
/// and removals, without reading the files): of two lagging consumers, the commit of one
/// leaves writes held on the other, whose commit (from a handle made from the engine's view)
/// or removal releases them; a consumer the engine removed and opened again starts where a
/// new one does, and throttles again.
#[test]
fn the_slowest_of_several_consumers_holds_writes_until_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open");
    let mut a = engine.consumer("a").expect("consumer");
    let mut b = engine.replay().unwrap().consumer("b").expect("consumer");
    lag_past_the_limit(&engine);
    assert!(is_throttled(engine.put(b"k", b"v")), "both lag");
    consume(&mut a, LIMIT + 1);
    match engine.put(b"k", b"v") {
        Err(Error::Throttled { consumer, .. }) => assert_eq!(consumer, "b"),
        other => panic!("b still lags: {other:?}"),
    }
    consume(&mut b, LIMIT + 1);
    put_batch(&engine, 100, 10);
    // Both lag again (batches 100 to 102); removed, b holds nothing back.
    put_batch(&engine, 101, 10);
    put_batch(&engine, 102, 10);
    assert!(is_throttled(engine.put(b"k", b"v")), "a and b lag again");
    consume(&mut a, LIMIT + 1);
    assert!(is_throttled(engine.put(b"k", b"v")), "b lags");
    drop(b);
    assert!(engine.remove_consumer("b").expect("remove"));
    put_batch(&engine, 103, 10);
    // Opened again, it starts at the log's first batch: far behind.
    let _b = engine.consumer("b").expect("consumer");
    match engine.put(b"k", b"v") {
        Err(Error::Throttled { consumer, .. }) => assert_eq!(consumer, "b"),
        other => panic!("b, made again, lags: {other:?}"),
    }
}

/// A consumer another process makes (a reader of the directory) counts within the re-read
/// interval, as its commits do: the engine's own commits read no consumer file.
#[test]
fn a_consumer_made_through_the_directory_throttles_within_the_reread_interval() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Reject, batches(LIMIT))).expect("open");
    let mut mine = engine.consumer("mine").expect("consumer");
    lag_past_the_limit(&engine);
    consume(&mut mine, LIMIT + 1);
    let reader = LogReader::open(dir.path()).expect("reader");
    let _remote = reader.consumer("remote").expect("consumer");
    let mut i = 1000;
    eventually("the engine sees the new consumer", || {
        // The engine's consumer keeps up: only the other one lags.
        let r = engine.put(format!("key-{i}").as_bytes(), b"v");
        i += 1;
        match r {
            Ok(t) => {
                t.wait_timeout(WAIT_MAX).expect("durable");
                consume(&mut mine, 1);
                false
            }
            Err(Error::Throttled { consumer, .. }) => {
                assert_eq!(consumer, "remote");
                true
            }
            Err(e) => panic!("{e}"),
        }
    });
}

#[test]
fn validate_refuses_a_limit_of_nothing_or_zero() {
    let bad = [
        ConsumerLag::default(),
        batches(0),
        ConsumerLag {
            batches: Some(5),
            bytes: Some(0),
            age: None,
        },
        ConsumerLag {
            age: Some(Duration::ZERO),
            ..ConsumerLag::default()
        },
    ];
    for lag in bad {
        let e = config(Backpressure::Block, lag).validate().unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig(s) if s.contains("consumer_lag_max")),
            "{lag:?}: {e}"
        );
    }
    config(Backpressure::Block, batches(1))
        .validate()
        .expect("a limit of one batch");
}

/// A waker that records that it fired.
struct Woken(std::sync::atomic::AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An asynchronous put waits for the throttle as a future, on the same thread as the
/// consumer: `Pending`, woken by the commit, then submitted.
#[test]
fn an_async_put_waits_for_the_commit_without_blocking_the_thread() {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll, Waker};
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Block, batches(LIMIT))).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    lag_past_the_limit(&engine);
    let woken = Arc::new(Woken(false.into()));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut put = Box::pin(engine.put_async(b"async", b"v"));
    assert!(put.as_mut().poll(&mut cx).is_pending(), "not throttled");
    assert_eq!(engine.counts().throttled, 1);
    assert!(!woken.0.load(Ordering::SeqCst));
    consume(&mut c, LIMIT + 1);
    eventually("the commit wakes the put", || {
        woken.0.load(Ordering::SeqCst)
    });
    let Poll::Ready(ticket) = put.as_mut().poll(&mut cx) else {
        panic!("woken, yet still throttled");
    };
    let seq = ticket
        .expect("put_async")
        .wait_timeout(WAIT_MAX)
        .expect("durable");
    assert_eq!(seq, LIMIT + 2);

    // Closing wakes one waiting too, and it gets `Closed`.
    // The async put left a lag of 1: two more batches pass the limit again.
    for i in 10..10 + LIMIT {
        put_batch(&engine, i, 10);
    }
    woken.0.store(false, Ordering::SeqCst);
    let mut put = Box::pin(engine.put_async(b"late", b"v"));
    assert!(put.as_mut().poll(&mut cx).is_pending(), "not throttled");
    engine.close().expect("close");
    assert!(woken.0.load(Ordering::SeqCst), "close did not wake the put");
    let r = put.as_mut().poll(&mut cx);
    assert!(matches!(r, Poll::Ready(Err(Error::Closed))), "{r:?}");
}

/// An age limit past what u64 nanoseconds hold (2^64 ns, 584 years) is a limit no lag
/// reaches: it is not taken modulo 2^64 (which made it 0, throttling at once).
#[test]
fn an_age_limit_too_long_for_u64_nanoseconds_never_throttles() {
    let dir = tempfile::tempdir().unwrap();
    let age = Duration::new(18_446_744_073, 709_551_616);
    assert_eq!(age.as_nanos(), 1 << 64);
    let lag = ConsumerLag {
        age: Some(age),
        ..ConsumerLag::default()
    };
    let engine = Engine::open(dir.path(), config(Backpressure::Reject, lag)).expect("open");
    let _slow = engine.consumer("slow").expect("consumer");
    for i in 0..5 {
        put_batch(&engine, i, 10);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!is_throttled(engine.put(b"k", b"v")));
}

/// A request larger than the engine takes (here over `batch_bytes_max`, within
/// `value_len_max`) is refused for its size at once, throttled or not: no wait for, or
/// retry after, a commit can ever let it in. It used to meet the throttle first: under
/// `Block` it waited for the consumer (for ever, if it never commits), under `Reject` it got
/// `Error::Throttled`, a back-off error that tells the caller to retry.
#[test]
fn a_request_too_large_is_refused_for_its_size_while_throttled() {
    use std::future::Future;
    use std::task::{Context, Waker};
    for backpressure in [Backpressure::Reject, Backpressure::Block] {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Arc::new(Engine::open(dir.path(), config(backpressure, batches(LIMIT))).expect("open"));
        let _c = engine.consumer("slow").expect("consumer");
        lag_past_the_limit(&engine);
        let e = engine.clone();
        let refused = common::within("requests too large, while throttled", move || {
            let big = vec![b'v'; 20 << 10];
            let mut batch = mergelog::WriteBatch::new();
            for i in 0..20 {
                batch.put(format!("b{i}").as_bytes(), &[b'v'; 1000]);
            }
            [
                ("put", e.put(b"big", &big).map(drop)),
                ("write", e.write(&batch).map(drop)),
                (
                    "put_async",
                    common::block_on(Box::pin(e.put_async(b"big", &big))).map(drop),
                ),
                (
                    "write_async",
                    common::block_on(Box::pin(e.write_async(&batch))).map(drop),
                ),
            ]
        });
        for (what, r) in refused {
            assert!(
                matches!(r, Err(Error::RequestTooLarge { .. })),
                "{backpressure:?}: {what}: {r:?}"
            );
        }
        assert_eq!(engine.counts().throttled, 0, "{backpressure:?}");
        // The throttle was engaged all along: a put that fits meets it.
        let mut put = Box::pin(engine.put_async(b"k", b"v"));
        let throttled = match put.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(r) => is_throttled(r),
        };
        assert!(throttled, "{backpressure:?}: not throttled");
    }
}

/// A throttled asynchronous submit holds one waker, its newest, and none once it is
/// dropped. An executor may poll a future with a different waker each time (a future moved
/// to another task, or one polled through a combinator's own waker); a future is dropped
/// while it waits when its caller gives up (a timeout around the submit). The throttle's list
/// kept every waker that was not `will_wake` the last one, and a dropped future's waker
/// stayed until the throttle let go, which a consumer that never commits never does: a
/// service that times out throttled requests grew the list (and kept every timed-out task's
/// allocation alive) without bound.
#[test]
fn a_throttled_async_submit_holds_only_its_newest_waker_and_none_once_dropped() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Engine::open(dir.path(), config(Backpressure::Block, batches(LIMIT))).expect("open");
    let mut c = engine.consumer("slow").expect("consumer");
    lag_past_the_limit(&engine);
    let held = |w: &Arc<Woken>| Arc::strong_count(w) > 1;
    let wakers: Vec<Arc<Woken>> = (0..100).map(|_| Arc::new(Woken(false.into()))).collect();
    let mut put = Box::pin(engine.put_async(b"async", b"v"));
    for w in &wakers {
        let waker = Waker::from(w.clone());
        assert!(
            put.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending(),
            "not throttled"
        );
    }
    let still_held = wakers.iter().filter(|w| held(w)).count();
    assert_eq!(
        still_held, 1,
        "the engine holds {still_held} of 100 wakers of one future"
    );
    assert!(held(wakers.last().unwrap()), "the newest waker is not held");
    drop(put);
    // Futures given up on while throttled, each by its own task.
    let dropped: Vec<Arc<Woken>> = (0..100).map(|_| Arc::new(Woken(false.into()))).collect();
    for w in &dropped {
        let waker = Waker::from(w.clone());
        let mut put = Box::pin(engine.put_async(b"given up", b"v"));
        assert!(put
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    let still_held = wakers.iter().chain(&dropped).filter(|w| held(w)).count();
    assert_eq!(
        still_held, 0,
        "the engine holds {still_held} wakers of dropped futures"
    );
    // A future still waiting is woken by the commit, and goes through.
    let woken = Arc::new(Woken(false.into()));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut put = Box::pin(engine.put_async(b"waits", b"v"));
    assert!(put.as_mut().poll(&mut cx).is_pending());
    consume(&mut c, LIMIT + 1);
    eventually("the commit wakes the put", || {
        woken.0.load(std::sync::atomic::Ordering::SeqCst)
    });
    let std::task::Poll::Ready(ticket) = put.as_mut().poll(&mut cx) else {
        panic!("woken, yet still throttled");
    };
    ticket
        .expect("put_async")
        .wait_timeout(WAIT_MAX)
        .expect("durable");
}
