//! Followers and durable consumers of an engine that fails: they yield every batch that was
//! durable, then end with `Error::Failed`, blocked or not. They used to wait for the next
//! batch forever (an iterator's `next`, a stream's poll), until someone closed the engine:
//! a failure stops the pipeline from making anything more durable, but only `close` woke them.

use crate::common::power::{power_loss_config, PowerLossIo};
use crate::common::{within, WAIT_MAX};
use mergelog::internals::io::Io;
use mergelog::{Engine, Error, WritePath};
use std::sync::Arc;

#[test]
fn followers_and_consumers_end_with_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    // The fourth sync fails (the first ones: the segment's activation, the consumer handle's
    // kept temporary position file, made when it is opened, and the first batch).
    let io: Arc<dyn Io> = Arc::new(PowerLossIo::failing_sync(4));
    let engine = Arc::new(
        Engine::open_with_io(dir.path(), power_loss_config(WritePath::Pwrite), io).unwrap(),
    );
    let mut consumer = engine.consumer("c").unwrap();
    // Blocked in `next` before the failure, on threads of their own.
    // (The iterators never end: each yields `Some(Err(..))` where it stops.)
    let mut follower = engine.follow(1u64);
    let blocked_follower = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for b in follower.by_ref() {
            let end = b.is_err();
            seen.push(b);
            if end {
                break;
            }
        }
        seen
    });
    let blocked_consumer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for b in consumer.by_ref() {
            let end = b.is_err();
            seen.push(b.map(|b| b.seq.get()));
            if end {
                break;
            }
        }
        seen
    });
    let mut acked = Vec::new();
    for i in 0..20 {
        match engine
            .put(format!("k{i}").as_bytes(), b"v")
            .and_then(|t| t.wait())
        {
            Ok(seq) => acked.push(seq.get()),
            Err(_) => break,
        }
    }
    assert!(engine.failure().is_some(), "the injected sync failure");
    let engine2 = engine.clone();
    let (followed, consumed) = within("followers after a failure", move || {
        let f = blocked_follower.join().expect("follower");
        let c = blocked_consumer.join().expect("consumer");
        drop(engine2);
        (f, c)
    });
    let seqs: Vec<u64> = followed
        .iter()
        .filter_map(|b| b.as_ref().ok().map(|b| b.seq.get()))
        .collect();
    assert!(
        matches!(followed.last(), Some(Err(Error::Failed(_)))),
        "the follower's last item: {:?}",
        followed.last().map(|r| r.as_ref().map(|b| b.seq.get()))
    );
    assert!(
        matches!(consumed.last(), Some(Err(Error::Failed(_)))),
        "the consumer's last item: {consumed:?}"
    );
    for seq in &acked {
        assert!(
            seqs.contains(seq),
            "acknowledged batch {seq} not followed: {seqs:?}"
        );
    }
    // A new follower ends the same way, at once, after what is durable.
    let mut late = engine.follow(1u64);
    let mut n = 0;
    loop {
        match late.next_timeout(WAIT_MAX) {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("a follower of a failed engine waited out {WAIT_MAX:?}"),
            Err(Error::Failed(_)) => break,
            Err(e) => panic!("a follower of a failed engine: {e}"),
        }
    }
    assert_eq!(n, seqs.len());
}

/// Fails every sync once armed.
#[derive(Default)]
struct FailSyncs(std::sync::atomic::AtomicBool);

impl Io for FailSyncs {
    fn before(
        &self,
        op: mergelog::internals::io::IoOp,
        _: &std::path::Path,
        _: u64,
        _: &[u8],
    ) -> std::io::Result<()> {
        if op == mergelog::internals::io::IoOp::Sync
            && self.0.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// A batch written but never durable (its sync failed) is not seen through the engine: not
/// by its replay, not by a follower, not by a read. (A batch published to readers when written
/// instead of when synced passed every other test: a mutation audit, session 28.)
#[test]
fn a_batch_whose_sync_failed_is_seen_by_no_reader_of_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FailSyncs::default());
    let shared: Arc<dyn Io> = io.clone();
    let engine = Engine::open_with_io(dir.path(), mergelog::Config::default(), shared).unwrap();
    let acked = engine
        .put(b"a", b"1")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    io.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = engine.put(b"b", b"2").unwrap().wait_timeout(WAIT_MAX);
    assert!(failed.is_err(), "{failed:?}");
    let reader = engine.replay().unwrap();
    let seqs: Vec<u64> = reader.batches().map(|b| b.seq().get()).collect();
    assert_eq!(
        seqs,
        vec![acked.get()],
        "replay shows a batch whose sync failed"
    );
    assert_eq!(reader.next_seq(), acked.get() + 1);
    let mut follower = engine.follow(1u64);
    let first = follower.next_timeout(WAIT_MAX).unwrap().expect("batch 1");
    assert_eq!(first.seq, acked);
    assert!(matches!(
        follower.next_timeout(WAIT_MAX),
        Err(Error::Failed(_))
    ));
    assert!(
        engine.read(b"b").unwrap().is_none(),
        "a read sees the failed put"
    );
    assert_eq!(engine.durable_seq(), acked);
}
