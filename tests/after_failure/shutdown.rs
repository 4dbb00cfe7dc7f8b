//! Shutdown ends everything that waits on the engine. An in-process follower blocked in
//! `next` or `next_timeout` when the engine closes (or made after it closed) yields every
//! durable batch and then `Error::Closed`, instead of waiting forever. Two `close` calls at
//! once: whichever returns first, every ticket is complete and the directory is free.

use crate::common::{within, WAIT_MAX};
use crate::hooks::SlowSync;
use mergelog::{Config, Engine, Error, Follower, LogReader, Ticket};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

fn config() -> Config {
    Config {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        ring_bytes: 1 << 16,
        ..Config::default()
    }
}

/// Batches a closed log holds, as another process would read them.
fn batches_in(dir: &std::path::Path) -> u64 {
    LogReader::open(dir).expect("read the log").next_seq().get() - 1
}

fn put_and_wait(engine: &Engine, from: usize, n: usize) {
    for i in from..from + n {
        engine
            .put(format!("k{i}").as_bytes(), b"v")
            .expect("put")
            .wait_timeout(WAIT_MAX)
            .expect("durable");
    }
}

/// How a follower waits in these tests.
#[derive(Clone, Copy)]
enum Wait {
    Next,
    NextTimeout,
}

/// Runs `follower` on its own thread until it returns an error, reporting each batch it
/// yields on `seen`; the handle gives the sequences yielded and the error.
fn drive(
    mut follower: Follower,
    how: Wait,
    seen: mpsc::Sender<u64>,
) -> std::thread::JoinHandle<(Vec<u64>, Error)> {
    std::thread::spawn(move || {
        let mut seqs = Vec::new();
        loop {
            let next = match how {
                Wait::Next => follower.next().expect("a follower never ends"),
                Wait::NextTimeout => match follower.next_timeout(Duration::from_secs(3600)) {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => panic!("next_timeout ran out"),
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok(b) => {
                    seqs.push(b.seq.get());
                    let _ = seen.send(b.seq.get());
                }
                Err(e) => return (seqs, e),
            }
        }
    })
}

/// Waits (bounded) for the follower's report of batch `seq`.
fn seen_up_to(seen: &mpsc::Receiver<u64>, seq: u64) {
    loop {
        let s = seen
            .recv_timeout(WAIT_MAX)
            .unwrap_or_else(|_| panic!("hung: the follower never yielded batch {seq}"));
        if s >= seq {
            return;
        }
    }
}

/// Joins the follower's thread, bounded: it must end on its own once the engine closed.
fn ended(follower: std::thread::JoinHandle<(Vec<u64>, Error)>) -> (Vec<u64>, Error) {
    within("a follower of the closed engine", move || {
        follower.join().expect("follower thread")
    })
}

fn follower_blocked_at_close_ends(make: impl FnOnce(&Engine) -> Follower, how: Wait) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    put_and_wait(&engine, 0, 5);
    let (tx, seen) = mpsc::channel();
    let follower = drive(make(&engine), how, tx);
    seen_up_to(&seen, 5);
    // The follower now waits for a batch; more land, then the engine closes under it.
    put_and_wait(&engine, 5, 3);
    seen_up_to(&seen, 8);
    engine.close().expect("close");
    let (seqs, err) = ended(follower);
    assert!(matches!(err, Error::Closed), "ended with {err:?}");
    assert_eq!(seqs, (1..=batches_in(dir.path())).collect::<Vec<_>>());
}

#[test]
fn engine_follower_blocked_in_next_ends_with_closed() {
    follower_blocked_at_close_ends(|e| e.follow(1), Wait::Next);
}

#[test]
fn engine_follower_blocked_in_next_timeout_ends_with_closed() {
    follower_blocked_at_close_ends(|e| e.follow(1), Wait::NextTimeout);
}

#[test]
fn replay_follower_blocked_in_next_ends_with_closed() {
    follower_blocked_at_close_ends(|e| e.replay().expect("replay").follow(1), Wait::Next);
}

#[test]
fn replay_follower_blocked_in_next_timeout_ends_with_closed() {
    follower_blocked_at_close_ends(|e| e.replay().expect("replay").follow(1), Wait::NextTimeout);
}

/// Writes are in flight (slow syncs) when `close` is called: the follower still yields every
/// batch that became durable, the last one included, before `Closed`; so does a follower
/// made after the close.
#[test]
fn follower_yields_what_close_made_durable_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(SlowSync::new(Duration::from_millis(20), true));
    let engine = Engine::open_with_io(dir.path(), config(), hook).expect("open");
    let (tx, _seen) = mpsc::channel();
    let follower = drive(engine.follow(1), Wait::Next, tx);
    let tickets: Vec<Ticket> = (0..200)
        .map(|i| engine.put(format!("k{i}").as_bytes(), b"v").expect("put"))
        .collect();
    assert!(
        tickets.iter().any(|t| !t.is_done()),
        "no write in flight at the close"
    );
    engine.close().expect("close");
    assert!(tickets
        .iter()
        .all(|t| t.try_result().is_some_and(|r| r.is_ok())));
    let (seqs, err) = ended(follower);
    assert!(matches!(err, Error::Closed), "ended with {err:?}");
    let all: Vec<u64> = (1..=batches_in(dir.path())).collect();
    assert_eq!(seqs, all);

    let (tx, _seen) = mpsc::channel();
    let (seqs, err) = ended(drive(engine.follow(1), Wait::NextTimeout, tx));
    assert!(matches!(err, Error::Closed), "ended with {err:?}");
    assert_eq!(seqs, all, "a follower made after the close");
}

/// Two threads close at once while writes with slow syncs are in flight. When either
/// `close` returns, every ticket is complete (and acknowledged) and the directory can be
/// opened again: the second `close` waited for the first.
#[test]
fn concurrent_closes_both_return_only_once_everything_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(SlowSync::new(Duration::from_millis(50), true));
    let engine = Arc::new(Engine::open_with_io(dir.path(), config(), hook).expect("open"));
    let tickets: Arc<Vec<Ticket>> = Arc::new(
        (0..100)
            .map(|i| engine.put(format!("k{i}").as_bytes(), b"v").expect("put"))
            .collect(),
    );
    assert!(
        tickets.iter().any(|t| !t.is_done()),
        "no write in flight at the close"
    );
    let start = Arc::new(Barrier::new(2));
    // Reopening is one at a time: the two closers must not find each other's new engine.
    let reopen = Arc::new(Mutex::new(()));
    let closers: Vec<_> = (0..2)
        .map(|_| {
            let (engine, tickets, start, reopen) = (
                engine.clone(),
                tickets.clone(),
                start.clone(),
                reopen.clone(),
            );
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                start.wait();
                engine.close().expect("close");
                let pending = tickets.iter().filter(|t| !t.is_done()).count();
                assert_eq!(pending, 0, "close returned with tickets pending");
                assert!(tickets
                    .iter()
                    .all(|t| t.try_result().is_some_and(|r| r.is_ok())));
                let _one = reopen.lock().unwrap();
                let again = Engine::open(&dir, config()).expect("reopen after close returned");
                assert_eq!(again.len(), tickets.len());
                again.close().expect("close the reopened engine");
            })
        })
        .collect();
    within("two concurrent closes", move || {
        for c in closers {
            c.join().expect("a closer failed");
        }
    });
}
