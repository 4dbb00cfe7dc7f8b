//! A producer that waits for its request while nothing is in flight writes and syncs the
//! request's window itself (`Ticket::wait`; the flusher's thread stays asleep), and the
//! flusher's thread still serves every request whose producer does not: ones nobody waits
//! for, futures, several producers at once. Every bound here is a hang guard, never a
//! timing assertion.

mod common;

use common::{block_on, within};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts the syncs of log segments by the name of the thread that issued them.
#[derive(Default)]
struct SyncThreads(Mutex<BTreeMap<String, u64>>);

impl Io for SyncThreads {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            *self.0.lock().entry(name).or_default() += 1;
        }
        Ok(())
    }
}

/// The name of the thread [`on_lone_writer`] runs its body on.
const WRITER: &str = "lone-writer";

/// Runs `body` with the engine on a thread named [`WRITER`] (so that an I/O hook can tell its
/// syncs), failing the test if it hangs.
fn on_lone_writer<T: Send + 'static>(
    engine: &Arc<Engine>,
    body: impl FnOnce(&Engine) -> T + Send + 'static,
) -> T {
    let e = engine.clone();
    let writer = std::thread::Builder::new()
        .name(WRITER.into())
        .spawn(move || body(&e))
        .unwrap();
    within("the lone writer", move || writer.join().expect("writer"))
}

/// One producer with one request outstanding: its windows are written and synced on its
/// own thread (each one it wrote is counted in `Stats::windows_by_waiters` and synced
/// there once), not handed to the flusher and back.
#[test]
fn a_lone_waiter_writes_and_syncs_its_own_window() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(SyncThreads::default());
    let engine = Engine::open_with_io(dir.path(), Config::default(), hook.clone()).expect("open");
    let engine = Arc::new(engine);
    on_lone_writer(&engine, |e| {
        for i in 0..300u32 {
            e.put(&i.to_be_bytes(), b"value")
                .expect("put")
                .wait()
                .expect("durable");
        }
    });
    let helped = engine.stats().windows_by_waiters;
    let on_writer = hook.0.lock().get(WRITER).copied().unwrap_or(0);
    assert!(helped > 0, "no window was written by its waiting producer");
    assert_eq!(
        on_writer,
        helped,
        "each window its producer wrote is synced on its thread: {:?}",
        hook.0.lock()
    );
    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), Config::default()).expect("reopen");
    for i in 0..300u32 {
        assert_eq!(
            engine.read_to_vec(&i.to_be_bytes()).unwrap().as_deref(),
            Some(&b"value"[..]),
            "key {i}"
        );
    }
}

/// While producers write their own windows the flusher's thread is not woken by each
/// publish: a request nobody waits for (and a future) must still become durable, read by
/// the flusher's thread when it looks on its own.
#[test]
fn a_request_nobody_waits_for_is_written_while_producers_write_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), Config::default()).expect("open"));
    let e = engine.clone();
    within("the unwaited requests", move || {
        for round in 0..20u32 {
            // A waiting producer writes its own window...
            e.put(b"waited", &round.to_be_bytes())
                .unwrap()
                .wait()
                .unwrap();
            // ...then a request no one waits for, polled only.
            let t = e.put(b"unwaited", &round.to_be_bytes()).unwrap();
            let until = Instant::now() + common::WAIT_MAX;
            while !t.is_done() {
                assert!(Instant::now() < until, "round {round}: never written");
                std::thread::sleep(Duration::from_micros(200));
            }
            t.try_result().unwrap().unwrap();
            // And a future, awaited on this thread.
            let f = e.put(b"future", &round.to_be_bytes()).unwrap();
            block_on(f).unwrap();
        }
        assert!(e.stats().windows_by_waiters > 0);
    });
    for key in [&b"waited"[..], b"unwaited", b"future"] {
        assert_eq!(
            engine.read_to_vec(key).unwrap().as_deref(),
            Some(&19u32.to_be_bytes()[..])
        );
    }
}

/// Producers that wait, producers that never wait and producers that await futures, all at
/// once, while the desk passes between them and the flusher's thread: every request
/// completes (a lost wake-up would hang here) and every acknowledged value is there after
/// reopening.
#[test]
fn waiters_non_waiters_and_futures_mixed_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), Config::default()).expect("open"));
    let per_thread = 400u32;
    let e = engine.clone();
    within("the mixed producers", move || {
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let e = &e;
                s.spawn(move || {
                    let mut unwaited = Vec::new();
                    for i in 0..per_thread {
                        let key = format!("t{t}-{i}");
                        let ticket = e.put(key.as_bytes(), &i.to_be_bytes()).unwrap();
                        match (t, i % 4) {
                            (0, _) | (1, 0) => {
                                ticket.wait().unwrap();
                            }
                            (2, _) => {
                                block_on(ticket).unwrap();
                            }
                            _ => unwaited.push(ticket),
                        }
                    }
                    for ticket in unwaited {
                        ticket.wait().unwrap();
                    }
                });
            }
        });
    });
    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), Config::default()).expect("reopen");
    for t in 0..4u32 {
        for i in 0..per_thread {
            let key = format!("t{t}-{i}");
            assert_eq!(
                engine.read_to_vec(key.as_bytes()).unwrap().as_deref(),
                Some(&i.to_be_bytes()[..]),
                "{key}"
            );
        }
    }
}

/// Fails the `fail_at`-th sync of a log segment with EIO, and records which thread issued it.
struct FailOneSync {
    fail_at: u64,
    syncs: Mutex<(u64, Option<String>)>,
}

impl Io for FailOneSync {
    fn before(&self, op: IoOp, path: &Path, _: u64, _: &[u8]) -> std::io::Result<()> {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            let mut s = self.syncs.lock();
            s.0 += 1;
            if s.0 == self.fail_at {
                s.1 = std::thread::current().name().map(str::to_owned);
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
}

/// A waiter whose own sync fails (it wrote the window itself) gets the I/O error; the engine
/// has failed: nothing after is accepted, and every write acknowledged before is there after
/// reopening. Which thread issues the failing sync is up to the scheduler (under CPU
/// pressure the flusher's thread sometimes writes a window), so the scenario runs until the
/// failing sync was the waiter's own, checking the outcome every time.
#[test]
fn a_waiter_whose_own_sync_fails_gets_the_error_and_the_engine_fails() {
    let attempts = 10;
    let own = (0..attempts).any(|_| {
        let issued_by = lone_writer_until_a_sync_fails();
        issued_by.as_deref() == Some(WRITER)
    });
    assert!(
        own,
        "in {attempts} attempts the failing sync was never the waiter's own"
    );
}

/// One lone writer until its 40th sync fails: checks what the writer and the engine report
/// and what survives a reopen; returns the name of the thread that issued the failing sync.
fn lone_writer_until_a_sync_fails() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailOneSync {
        fail_at: 40,
        syncs: Mutex::new((0, None)),
    });
    let engine = Engine::open_with_io(dir.path(), Config::default(), hook.clone()).expect("open");
    let engine = Arc::new(engine);
    let (acked, failed_at, err) = on_lone_writer(&engine, |e| {
        let mut acked = Vec::new();
        for i in 0..1000u32 {
            let Ok(t) = e.put(&i.to_be_bytes(), b"value") else {
                return (acked, i, None);
            };
            match t.wait() {
                Ok(_) => acked.push(i),
                Err(err) => return (acked, i, Some(err)),
            }
        }
        (acked, 1000, None)
    });
    let err = err.unwrap_or_else(|| panic!("no put failed (stopped at {failed_at})"));
    assert!(
        matches!(
            err,
            mergelog::Error::Io {
                op: "sync segment",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(engine.failure().is_some(), "the engine has failed");
    assert!(
        engine.put(b"later", b"v").is_err(),
        "a put after the failure"
    );
    drop(engine);
    let engine = Engine::open(dir.path(), Config::default()).expect("reopen");
    for i in acked {
        assert_eq!(
            engine.read_to_vec(&i.to_be_bytes()).unwrap().as_deref(),
            Some(&b"value"[..]),
            "acknowledged key {i}"
        );
    }
    let issued_by = hook.syncs.lock().1.clone();
    issued_by
}
