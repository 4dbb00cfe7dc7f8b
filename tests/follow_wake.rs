//! In-process followers are woken, not polled: a follower blocked in `next` returns when a
//! put becomes durable, a polled follower's waker is called, and `close` wakes a waiting
//! follower with `Error::Closed`. Every bound here is a hang guard, never a timing
//! assertion.

mod common;

use common::{wait_ok, WAIT_MAX};
use mergelog::{Config, Engine, Error, Follower, OwnedBatch, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Runs `follower.next()` on its own thread; the result comes through the channel.
fn next_on_thread(mut follower: Follower) -> mpsc::Receiver<Option<Result<OwnedBatch>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(follower.next());
    });
    rx
}

#[test]
fn a_blocked_follower_returns_when_a_put_lands() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).expect("open");
    let rx = next_on_thread(engine.follow(1));
    // The follower has nothing to yield yet (give it time to block; a wrong early return
    // shows up as a batch here).
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "the follower returned before anything was written"
    );
    wait_ok(&engine.put(b"k", b"v").expect("put"), "put");
    let got = rx
        .recv_timeout(WAIT_MAX)
        .expect("the follower was not woken by the put")
        .expect("a follower never ends")
        .expect("a batch");
    assert_eq!(got.seq, 1);
    assert_eq!(got.records[0].key, b"k".to_vec());
}

#[test]
fn next_timeout_waits_then_yields() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), Config::default()).expect("open"));
    let mut follower = engine.follow(1);
    assert_eq!(
        follower
            .next_timeout(Duration::from_millis(5))
            .expect("next_timeout"),
        None
    );
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            wait_ok(&engine.put(b"a", b"1").expect("put"), "put");
        })
    };
    let got = follower.next_timeout(WAIT_MAX).expect("next_timeout");
    writer.join().unwrap();
    assert_eq!(got.expect("woken by the put").seq, 1);
}

struct Count(AtomicU32);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits (bounded by `WAIT_MAX`) until `count` reaches at least 1.
fn woken(count: &Count) -> bool {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while count.0.load(Ordering::SeqCst) == 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[test]
fn a_polled_followers_waker_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).expect("open");
    let mut follower = engine.follow(1);
    let count = Arc::new(Count(AtomicU32::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(follower.poll_next(&mut cx).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    wait_ok(&engine.put(b"k", b"v").expect("put"), "put");
    assert!(woken(&count), "the waker was never called");
    match follower.poll_next(&mut cx) {
        Poll::Ready(Some(Ok(b))) => assert_eq!(b.seq, 1),
        other => panic!("expected batch 1, got {other:?}"),
    }
    // Closing wakes a pending poll too, which then reports `Closed`.
    let count = Arc::new(Count(AtomicU32::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(follower.poll_next(&mut cx).is_pending());
    engine.close().expect("close");
    assert!(woken(&count), "close did not wake the waker");
    assert!(matches!(
        follower.poll_next(&mut cx),
        Poll::Ready(Some(Err(Error::Closed)))
    ));
}

#[test]
fn a_directory_followers_poll_is_woken_by_its_ticker() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).expect("open");
    let reader = mergelog::LogReader::open(dir.path()).expect("reader");
    let mut follower = reader.follow(1);
    let count = Arc::new(Count(AtomicU32::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(follower.poll_next(&mut cx).is_pending());
    wait_ok(&engine.put(b"k", b"v").expect("put"), "put");
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        assert!(
            woken(&count),
            "the directory follower's waker was never called"
        );
        count.0.store(0, Ordering::SeqCst);
        match follower.poll_next(&mut cx) {
            Poll::Ready(Some(Ok(b))) => {
                assert_eq!(b.seq, 1);
                break;
            }
            Poll::Pending => assert!(std::time::Instant::now() < deadline, "batch 1 never seen"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn close_wakes_a_waiting_follower_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config::default()).expect("open");
    wait_ok(&engine.put(b"k", b"v").expect("put"), "put");
    let mut follower = engine.follow(1);
    assert_eq!(follower.next().expect("some").expect("batch 1").seq, 1);
    let rx = next_on_thread(follower);
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "the follower returned with nothing new"
    );
    engine.close().expect("close");
    match rx
        .recv_timeout(WAIT_MAX)
        .expect("close did not wake the follower")
    {
        Some(Err(Error::Closed)) => {}
        other => panic!("expected Err(Closed), got {other:?}"),
    }
}
