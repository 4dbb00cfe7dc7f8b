//! The engine's lifecycle at its end (thirty-sixth session's review): every public call made
//! after `close` answers `Error::Closed` or what its doc says, never a panic or a hang;
//! `close` after a failure keeps reporting it; a close whose last sync fails acknowledges
//! nothing that sync covered; dropping an engine releases every file it held.

use crate::common::hold::Hold;
use crate::common::{within, WAIT_MAX};
use crate::hooks::{segment, Inject};
use mergelog::internals::io::IoOp;
use mergelog::{Compaction, Config, Engine, Error, Seq, WriteBatch};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        merge: Some(mergelog::MergeOperator::Add),
        ..Config::default()
    }
}

/// Polls `f` once with a waker that does nothing: a submit to a closed engine is ready at once.
fn poll_once<T>(f: impl Future<Output = T>) -> Poll<T> {
    let mut f = pin!(f);
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

fn is_closed<T: std::fmt::Debug>(what: &str, r: mergelog::Result<T>) {
    assert!(matches!(r, Err(Error::Closed)), "{what} after close: {r:?}");
}

fn is_closed_now<T: std::fmt::Debug>(what: &str, p: Poll<mergelog::Result<T>>) {
    match p {
        Poll::Ready(r) => is_closed(what, r),
        Poll::Pending => panic!("{what} after close waits"),
    }
}

/// What every submit (blocking and async), `flush`, both retirements and `compact` answer,
/// each as a poll (a blocking call's answer is ready; an async one's is its first poll): the
/// calls refused alike after `close` and after a failure.
fn refusable_calls(engine: &Engine) -> Vec<(&'static str, Poll<mergelog::Result<()>>)> {
    fn now<T>(r: mergelog::Result<T>) -> Poll<mergelog::Result<()>> {
        Poll::Ready(r.map(drop))
    }
    fn polled<T>(p: Poll<mergelog::Result<T>>) -> Poll<mergelog::Result<()>> {
        p.map(|r| r.map(drop))
    }
    let mut wb = WriteBatch::new();
    wb.put(b"b", b"v");
    vec![
        ("put", now(engine.put(b"k", b"v"))),
        ("delete", now(engine.delete(b"k"))),
        ("merge", now(engine.merge(b"k", &1i64.to_le_bytes()))),
        ("get", now(engine.get(b"k"))),
        ("write", now(engine.write(&wb))),
        ("flush", now(engine.flush())),
        ("put_with_id", now(engine.put_with_id(1u128, b"k", b"v"))),
        ("put_async", polled(poll_once(engine.put_async(b"k", b"v")))),
        ("get_async", polled(poll_once(engine.get_async(b"k")))),
        ("write_async", polled(poll_once(engine.write_async(&wb)))),
        ("retire_before", now(engine.retire_before(Seq::new(5)))),
        (
            "retire_before_forced",
            now(engine.retire_before_forced(Seq::new(5))),
        ),
        ("compact", now(engine.compact())),
    ]
}

/// After `close`, every submit (blocking and async), `flush`, `retire_before`, `compact`,
/// a new consumer, a consumer's removal and an open consumer's commit are refused with
/// `Closed`; reads, stats, replay and a second `close` go on; followers end with `Closed`.
#[test]
fn every_call_after_close_is_closed_or_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let mut consumer = engine.consumer("c").expect("consumer");
    for i in 0..20u32 {
        engine
            .put(&i.to_le_bytes(), &[7u8; 4000])
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
    }
    let batch = consumer
        .next_timeout(WAIT_MAX)
        .expect("next")
        .expect("a batch");
    engine.close().expect("close");

    for (what, answer) in refusable_calls(&engine) {
        is_closed_now(what, answer);
    }
    is_closed("consumer", engine.consumer("d"));
    is_closed("remove_consumer", engine.remove_consumer("d"));
    is_closed("commit", consumer.commit(batch.seq));
    assert!(
        engine.resume().is_ok(),
        "resume after close: nothing refused"
    );
    assert!(poll_once(engine.wait_unthrottled_async()).is_ready());
    engine.wait_unthrottled();
    assert_eq!(engine.len(), 20);
    assert!(engine.read_to_vec(&3u32.to_le_bytes()).unwrap().is_some());
    // The directory may be another engine's now: its consumers are not this engine's to
    // report (`LogReader::open(dir)?.consumers()` reads them).
    is_closed("consumers", engine.consumers());
    is_closed("pending_ids", engine.pending_ids("d"));
    assert!(engine.stats().consumers.is_empty());
    let _ = engine.counts();
    let _ = engine.space();
    assert!(engine.failure().is_none());
    let last = engine.durable_seq();
    let view = engine.replay().expect("replay after close");
    assert_eq!(view.next_seq(), last.next());
    let mut follower = engine.follow(last);
    assert_eq!(follower.next_timeout(WAIT_MAX).unwrap().unwrap().seq, last);
    is_closed("follower past the end", follower.next_timeout(WAIT_MAX));
    engine.close().expect("a second close");
    drop(engine);
    let again = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(again.len(), 20);
}

fn is_failed<T: std::fmt::Debug>(what: &str, r: mergelog::Result<T>) {
    match r {
        Err(Error::Failed(cause)) => assert!(
            !matches!(*cause, Error::Failed(_)),
            "{what}: a Failed whose cause is a Failed"
        ),
        other => panic!("{what} after a failed sync: {other:?}"),
    }
}

fn is_failed_now<T: std::fmt::Debug>(what: &str, p: Poll<mergelog::Result<T>>) {
    match p {
        Poll::Ready(r) => is_failed(what, r),
        Poll::Pending => panic!("{what} after a failed sync waits"),
    }
}

/// After a failed sync (ARCHITECTURE.md: "a failure is sticky: every later submit, `flush`,
/// `retire_before`, `close` returns it; reads of the durable state go on"; `Error::Failed`,
/// `Engine::compact`, `Engine::resume`): the ticket the sync covered reports the sync's own
/// error, not wrapped; every submit (blocking and async), `flush`, `retire_before`,
/// `compact`, `resume` and `close` answers `Error::Failed` with that error as its cause;
/// reads, `len`, `for_each`, `replay` and `failure()` go on with the durable state; a
/// follower yields the durable batches and then ends with `Error::Failed`.
#[test]
fn every_call_after_a_failed_sync_is_failed_or_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(Inject::new(IoOp::Sync, segment).nth(2));
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    let durable = engine
        .put(b"a", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    let failed = engine.put(b"b", b"2").unwrap().wait_timeout(WAIT_MAX);
    assert!(
        matches!(failed, Err(Error::Io { .. })),
        "the ticket of the failed sync reports its error itself: {failed:?}"
    );
    assert!(hook.failed() >= 1);

    for (what, answer) in refusable_calls(&engine) {
        is_failed_now(what, answer);
    }
    is_failed("resume", engine.resume());
    assert!(matches!(engine.failure(), Some(Error::Failed(_))));
    engine.wait_unthrottled();

    assert_eq!(engine.len(), 1);
    assert_eq!(
        engine.read_to_vec(b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        engine.read_to_vec(b"b").unwrap(),
        None,
        "never acknowledged"
    );
    let mut visited = 0;
    engine.for_each(|_, _| visited += 1);
    assert_eq!(visited, 1);
    assert_eq!(engine.durable_seq(), durable);
    assert_eq!(engine.replay().expect("replay").next_seq(), durable.next());
    let mut follower = engine.follow(durable);
    assert_eq!(
        follower.next_timeout(WAIT_MAX).unwrap().map(|b| b.seq),
        Some(durable)
    );
    is_failed("follower past the end", follower.next_timeout(WAIT_MAX));
    is_failed("close", engine.close());
    drop(engine);
    let again = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(again.read_to_vec(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

/// A `close` after a failed sync returns the failure, and so does every later one; a
/// consumer's commit and a new consumer after it are refused (the directory is given up).
#[test]
fn close_after_a_failure_returns_it_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(Inject::new(IoOp::Sync, segment).nth(2));
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    engine
        .put(b"a", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    let failed = engine.put(b"b", b"2").unwrap().wait_timeout(WAIT_MAX);
    assert!(failed.is_err(), "{failed:?}");
    for _ in 0..2 {
        let closed = engine.close();
        assert!(matches!(closed, Err(Error::Failed(_))), "{closed:?}");
    }
    assert!(engine.failure().is_some());
    let r = engine.consumer("late");
    assert!(r.is_err(), "{r:?}");
    drop(engine);
    let again = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(again.read_to_vec(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

/// The sync that would make the last writes durable is still running when `close` is called,
/// and fails: `close` returns the failure (and so does the next call), no ticket that sync
/// covered completes `Ok`, and a reopen finds none of their writes but every earlier one.
#[test]
fn a_close_whose_last_sync_fails_returns_it_and_acknowledges_nothing_it_covered() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hold::syncs();
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    engine
        .put(b"a", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    hook.hold_every();
    let tickets: Vec<_> = (0..50u32)
        .map(|i| engine.put(&i.to_le_bytes(), b"v").unwrap())
        .collect();
    assert!(hook.wait_held(1), "hung: no sync was held");
    let engine = Arc::new(engine);
    let closing = engine.clone();
    let closer = std::thread::spawn(move || closing.close());
    // `close` has begun once the ring refuses a put; the sync is let go (to fail) only then.
    within("the close to begin", {
        let engine = engine.clone();
        move || {
            while !matches!(engine.put(b"late", b"v"), Err(Error::Closed)) {
                std::thread::yield_now();
            }
        }
    });
    hook.release_failing();
    let closed = within("close", move || closer.join().expect("closer"));
    assert!(matches!(closed, Err(Error::Failed(_))), "{closed:?}");
    assert!(matches!(engine.close(), Err(Error::Failed(_))));
    for t in &tickets {
        let r = t.wait_timeout(WAIT_MAX);
        assert!(r.is_err(), "a ticket of the failed sync completed: {r:?}");
    }
    drop(engine);
    let again = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(again.read_to_vec(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

/// Descriptors of this process open on a file under `dir` (other tests of this process
/// open their own directories meanwhile: only this test's count).
fn open_fds(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Dropping an engine (without `close`) that ran a consumer, an automatic compaction,
/// retirements into the pool and a backup gives back every file descriptor it held, and the
/// directory opens again in the same process, trusting the clean mark.
#[test]
fn dropping_an_engine_releases_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let config = Config {
        recycle_segments: 2,
        compaction: Compaction::Auto(Default::default()),
        ..config()
    };
    drop(Engine::open(dir.path(), config.clone()).expect("open"));
    for round in 0..3 {
        let engine = Engine::open(dir.path(), config.clone()).expect("open");
        assert!(
            engine.open_report().tail_rewritten.is_none(),
            "round {round}: the drop wrote no clean mark"
        );
        let mut c = engine.consumer("c").expect("consumer");
        for i in 0..60u32 {
            let t = engine.put(&(i % 10).to_le_bytes(), &[round as u8; 4000]);
            t.unwrap().wait_timeout(WAIT_MAX).unwrap();
        }
        while let Some(b) = c.try_next().expect("consumer") {
            c.commit(b.seq).expect("commit");
        }
        engine.compact().expect("compact");
        engine.retire_before(engine.durable_seq()).expect("retire");
        engine
            .backup(backups.path().join(format!("b{round}")))
            .expect("backup");
        drop(c);
        drop(engine);
        assert_eq!(
            open_fds(dir.path()),
            0,
            "round {round}: descriptors left open"
        );
        assert_eq!(
            open_fds(backups.path()),
            0,
            "round {round}: backup files left open"
        );
    }
}

/// `close` called from user code the engine runs on its own thread: a `Custom` merge
/// operator (run by the flusher, which `close` joins, holding the desk, which the flusher's
/// last turn takes). Before, the flusher's `join` on itself panicked inside the operator (the
/// merge refused as "the operator panicked"), and the join handle was gone with the panic:
/// every later `close`, and the drop, returned at once and let the directory lock go without
/// waiting for the pipeline. Now that `close` only begins the closing (the ring refuses new
/// requests) and says so with `Error::Closed`; a `close` from the test's thread finishes it.
#[test]
fn close_from_a_merge_operator_begins_the_close_and_a_later_one_finishes_it() {
    use std::sync::{Mutex, OnceLock, Weak};
    let dir = tempfile::tempdir().unwrap();
    let engine_cell: Arc<OnceLock<Weak<Engine>>> = Arc::new(OnceLock::new());
    let inside: Arc<Mutex<Option<String>>> = Arc::default();
    let (cell, seen) = (engine_cell.clone(), inside.clone());
    let cfg = Config {
        merge: Some(mergelog::MergeOperator::custom(move |_, operands| {
            if let Some(engine) = cell.get().and_then(Weak::upgrade) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.close()));
                *seen.lock().unwrap() = Some(match r {
                    Ok(r) => format!("{r:?}"),
                    Err(_) => "close panicked".into(),
                });
            }
            operands.last().map_or_else(Vec::new, |o| o.to_vec())
        })),
        ..config()
    };
    let engine = Arc::new(Engine::open(dir.path(), cfg).expect("open"));
    engine_cell.set(Arc::downgrade(&engine)).unwrap();
    engine
        .put(b"a", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    // Under a deadline the waiter does not write its own window: the flusher's thread runs
    // the operator.
    let merged = engine.merge(b"m", b"x").unwrap().wait_timeout(WAIT_MAX);
    let inside = inside.lock().unwrap().clone();
    assert_eq!(
        inside.as_deref(),
        Some("Err(Closed)"),
        "close inside the operator"
    );
    assert!(merged.is_ok(), "the merge: {merged:?}");
    assert!(matches!(engine.put(b"b", b"2"), Err(Error::Closed)));
    let closing = engine.clone();
    within("close", move || closing.close()).expect("close from the test's thread");
    let again =
        Engine::open(dir.path(), config()).expect("the directory is free once close returned");
    assert_eq!(again.read_to_vec(b"m").unwrap().as_deref(), Some(&b"x"[..]));
}
