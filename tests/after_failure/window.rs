//! A request that does not fit the window being cut cuts it: it is published, so a window
//! that kept waiting would have every wait return at once and spin until its deadline. These
//! tests count the window loop's turns (`Counts::window_waits`), not time: a window held
//! open for 500 ms by its policy takes a handful of turns when it is cut by the request that
//! does not fit, and thousands when it spins.

use crate::common::{within, WAIT_MAX};
use crate::hooks::SlowSync;
use mergelog::{Config, Engine, WindowPolicy};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// More turns than this for the few windows of a test means a window spun.
const TURNS_MAX: u64 = 100;

/// A window that two of these requests cannot share: each is most of `batch_bytes_max`.
fn config(window: WindowPolicy) -> Config {
    Config {
        batch_bytes_max: 4096,
        // Long enough that only the refused request can end the window early.
        window_age_max: Duration::from_secs(10),
        window,
        segment_bytes: 1 << 20,
        ring_bytes: 1 << 16,
        ..Config::default()
    }
}

fn big(tag: u8) -> Vec<u8> {
    vec![tag; 3000]
}

/// Waits (bounded) until `cond` holds.
fn until(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(Instant::now() < give_up, "hung: waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn linger_window_is_cut_by_a_request_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(
            dir.path(),
            config(WindowPolicy::Linger(Duration::from_millis(500))),
        )
        .expect("open"),
    );
    let turns_before = engine.counts().window_waits;
    let e = engine.clone();
    within("two puts under Linger", move || {
        let a = e.put(b"a", &big(b'a')).expect("put a");
        let b = e.put(b"b", &big(b'b')).expect("put b");
        a.wait_timeout(WAIT_MAX).expect("a durable");
        b.wait_timeout(WAIT_MAX).expect("b durable");
    });
    let turns = engine.counts().window_waits - turns_before;
    check_cut(&engine, "Linger", turns);
}

/// `Adaptive` waits for as many requests as the previous window held, or for the ring to be
/// quiet: here the previous window held ten, the ring is never quiet long (`quiet` is 500 ms)
/// and the second request of the window does not fit.
#[test]
fn adaptive_window_is_cut_by_a_request_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    // Slow syncs, so that requests pile up in the ring while the flusher syncs a window
    // (with nothing else in flight, it completes a window itself).
    let hook = Arc::new(SlowSync::new(Duration::from_millis(100), false));
    let engine = Arc::new(
        Engine::open_with_io(
            dir.path(),
            config(WindowPolicy::Adaptive {
                quiet: Duration::from_millis(500),
            }),
            hook.clone(),
        )
        .expect("open"),
    );
    hook.armed.store(true, Ordering::SeqCst);
    let e = engine.clone();
    let turns = within("the adaptive windows", move || {
        // Window 1: one request, synced slowly; ten small ones arrive meanwhile and make
        // window 2, which the adaptive policy then expects back.
        let first = e.put(b"first", b"1").expect("put");
        until("the first sync", || hook.slowed.load(Ordering::SeqCst) >= 1);
        let ten: Vec<_> = (0..10u8)
            .map(|i| e.put(&[b's', i], b"small").expect("put"))
            .collect();
        until("the second sync", || {
            hook.slowed.load(Ordering::SeqCst) >= 2
        });
        // Window 3 starts with both of these in the ring, and only the first fits.
        let turns_before = e.counts().window_waits;
        let a = e.put(b"a", &big(b'a')).expect("put a");
        let b = e.put(b"b", &big(b'b')).expect("put b");
        for t in std::iter::once(&first).chain(&ten).chain([&a, &b]) {
            t.wait_timeout(WAIT_MAX).expect("durable");
        }
        e.counts().window_waits - turns_before
    });
    check_cut(&engine, "Adaptive", turns);
}

/// The windows took at most `TURNS_MAX` turns, and both requests are durable.
fn check_cut(engine: &Engine, policy: &str, turns: u64) {
    eprintln!("{policy}: {turns} window turns");
    assert!(
        turns <= TURNS_MAX,
        "the windows took {turns} turns: one spun while a refused request waited"
    );
    assert_eq!(engine.read_to_vec(b"a").unwrap(), Some(big(b'a')));
    assert_eq!(engine.read_to_vec(b"b").unwrap(), Some(big(b'b')));
    engine.close().expect("close");
}
