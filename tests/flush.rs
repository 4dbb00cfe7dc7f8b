//! `Engine::flush` cuts the window holding what was submitted before it, whatever the window
//! policy would wait for: it is how a caller who knows no more requests are coming (a test,
//! a shutdown, the end of a burst) avoids the linger.

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
