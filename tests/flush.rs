//! `Engine::flush` cuts the window holding what was submitted before it, whatever the window
//! policy would wait for: it is how a caller who knows no more requests are coming (a test,
//! a shutdown, the end of a burst) avoids the linger. Also what a lingering window holds,
//! and a get ticket waited on more than once.

mod common;

use common::WAIT_MAX;
use mergelog::{Config, Engine, WindowPolicy};
use std::time::Duration;

/// The window the flusher has already read its records into when the flush comes is cut
/// too. (The flusher looked for a flush only past what it had read in its last turn, so a
/// flush after that turn waited out the linger: 5 or 10 s in one run of four.)
#[test]
fn a_flush_cuts_a_window_whose_records_the_flusher_has_read() {
    const LINGER: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        Config {
            window: WindowPolicy::Linger(LINGER),
            window_age_max: LINGER,
            ..Config::default()
        },
    )
    .expect("open");
    for i in 0..4u32 {
        let put = engine.put(&i.to_be_bytes(), b"v").expect("put");
        // Time for the flusher to take the record into its window and wait for more.
        std::thread::sleep(Duration::from_millis(20));
        let flush = engine.flush().expect("flush");
        // Half the linger: a flush that was missed completes only when the window ages out.
        put.wait_timeout(LINGER / 2)
            .unwrap_or_else(|e| panic!("put {i} not cut by the flush: {e}"));
        flush.wait_timeout(WAIT_MAX).expect("flush");
    }
    assert_eq!(engine.counts().batches, 4, "one window per flush");
    engine.close().expect("close");
}

/// An engine whose windows are cut by `flush` alone: a linger far longer than any test.
fn lingering(dir: &std::path::Path) -> Engine {
    const LINGER: Duration = Duration::from_secs(10);
    Engine::open(
        dir,
        Config {
            window: WindowPolicy::Linger(LINGER),
            window_age_max: LINGER,
            ..Config::default()
        },
    )
    .expect("open")
}

/// `WindowPolicy::Linger` "holds every window open for a fixed time after its first
/// request", a lone producer's too: a `wait_timeout` does not write the window on the
/// waiting thread (`Ticket::wait`: "`wait_timeout` does not"), so a put submitted after its
/// first put timed out joins the same window, and both land in one batch.
#[test]
fn a_lingering_window_holds_a_lone_producers_request() {
    let dir = tempfile::tempdir().unwrap();
    let engine = lingering(dir.path());
    let first = engine.put(b"a", b"1").expect("put");
    let early = first.wait_timeout(Duration::from_millis(50));
    assert!(
        matches!(early, Err(mergelog::Error::Timeout)),
        "a put under a 10 s linger, 50 ms on: {early:?}"
    );
    let second = engine.put(b"b", b"2").expect("put");
    let _flushed = engine.flush().expect("flush");
    let (a, b) = (
        first.wait_timeout(WAIT_MAX).expect("first"),
        second.wait_timeout(WAIT_MAX).expect("second"),
    );
    assert_eq!(a, b, "the lingering window took both puts");
    assert_eq!(engine.counts().batches, 1);
}

/// `GetTicket::wait_timeout`: "the read goes on and the ticket can be waited on again"; and
/// `GetTicket::wait`: "the value can be taken once; a second successful wait reports
/// `Error::ValueTaken`", whichever way it waits.
#[test]
fn a_gets_value_is_handed_out_once_and_a_timed_out_get_waits_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = lingering(dir.path());
    let put = engine.put(b"k", b"v").expect("put");
    let _flushed = engine.flush().expect("flush");
    put.wait_timeout(WAIT_MAX).expect("put");
    let get = engine.get(b"k").expect("get");
    let early = get.wait_timeout(Duration::from_millis(50));
    assert!(
        matches!(early, Err(mergelog::Error::Timeout)),
        "a get under a 10 s linger, 50 ms on: {early:?}"
    );
    assert!(!get.is_done());
    let _flushed = engine.flush().expect("flush");
    assert_eq!(
        get.wait_timeout(WAIT_MAX)
            .expect("the get, waited on again"),
        Some(b"v".to_vec())
    );
    assert!(get.is_done());
    for again in [get.wait(), get.wait_timeout(WAIT_MAX)] {
        assert!(
            matches!(again, Err(mergelog::Error::ValueTaken)),
            "a get's second wait: {again:?}"
        );
    }
}
