//! Durable consumers: `Engine::consumer` resumes after its last commit across a close and a
//! reopen (at-least-once: uncommitted batches come again), commits are checked and survive
//! only whole (a failed write or rename leaves the old position; a failed directory sync
//! after the rename leaves the handle at the old one and the file at either), names are
//! checked, one handle per name, `LogReader::consumer` sees the engine's commits,
//! `retire_before` is held back by the slowest consumer (and `retire_before_forced` is not),
//! `remove_consumer` releases it (and reports a failed directory sync).

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::log::segment_files;
use common::power::EIO;
use common::{position, WAIT_MAX};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Consumer, Engine, Error, LogReader, OwnedBatch, Seq};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        ..Config::default()
    }
}

/// Writes `n` puts of `value_len` bytes, each waited for before the next (one batch each);
/// returns their batches.
fn put_batches(engine: &Engine, n: usize, value_len: usize) -> Vec<Seq> {
    (0..n)
        .map(|i| {
            let key = format!("key-{i:04}");
            let t = engine
                .put(key.as_bytes(), &vec![b'v'; value_len])
                .expect("put");
            t.wait().expect("durable")
        })
        .collect()
}

/// Four batches put, and consumer `c` that has read three of them and committed the first.
fn read_three_committed_one(engine: &Engine) -> Consumer {
    put_batches(engine, 4, 10);
    let mut c = engine.consumer("c").expect("consumer");
    for _ in 0..3 {
        next(&mut c);
    }
    c.commit(1).expect("commit");
    c
}

fn next(c: &mut Consumer) -> OwnedBatch {
    c.next_timeout(WAIT_MAX)
        .expect("next")
        .expect("a batch within the hang guard")
}

fn refused(r: mergelog::Result<impl std::fmt::Debug>, what: &str) -> String {
    match r {
        Err(e @ Error::Consumer { .. }) => e.to_string(),
        other => panic!("{what}: expected Error::Consumer, got {other:?}"),
    }
}

#[test]
fn a_consumer_resumes_after_its_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config()).expect("open");
        let seqs = put_batches(&engine, 5, 10);
        assert_eq!(seqs, (1..=5).map(Seq::new).collect::<Vec<_>>());
        let mut c = engine.consumer("orders").expect("consumer");
        assert_eq!(c.committed(), 0);
        assert_eq!(c.name(), "orders");
        for want in 1..=3u64 {
            assert_eq!(next(&mut c).seq, want);
        }
        c.commit(2).expect("commit");
        assert_eq!(c.committed(), 2);
        engine.close().expect("close");
    }
    let engine = Engine::open(dir.path(), config()).expect("reopen");
    let mut c = engine.consumer("orders").expect("consumer");
    assert_eq!(c.committed(), 2);
    // Batch 3 was yielded but not committed: it comes again.
    assert_eq!(next(&mut c).seq, 3);
    assert_eq!(next(&mut c).seq, 4);
    // A new consumer starts at the first batch.
    let mut other = engine.consumer("audit").expect("consumer");
    assert_eq!(next(&mut other).seq, 1);
}

#[test]
fn commits_are_checked_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    put_batches(&engine, 3, 10);
    let mut c = engine.consumer("c").expect("consumer");
    let e = refused(c.commit(1), "commit before anything was yielded");
    assert!(e.contains("last batch this consumer yielded is 0"), "{e}");
    assert_eq!(next(&mut c).seq, 1);
    assert_eq!(next(&mut c).seq, 2);
    refused(c.commit(3), "commit past what was yielded");
    c.commit(2).expect("commit");
    c.commit(1).expect("a commit below is a no-op");
    assert_eq!(c.committed(), 2);
    drop(c);
    assert_eq!(engine.consumer("c").expect("reopen").committed(), 2);
}

#[test]
fn names_are_checked_and_one_handle_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    for bad in ["", "a/b", "../x", "sp ace", "naïve", &"x".repeat(65)] {
        let e = refused(engine.consumer(bad), bad);
        assert!(e.contains("[A-Za-z0-9_.-]"), "{e}");
        refused(engine.remove_consumer(bad), bad);
    }
    engine
        .consumer(&"x".repeat(64))
        .expect("64 characters is fine");
    let c = engine.consumer("one").expect("consumer");
    let e = refused(engine.consumer("one"), "a second handle");
    assert!(e.contains("open"), "{e}");
    refused(engine.remove_consumer("one"), "removing an open consumer");
    drop(c);
    let c = engine.consumer("one").expect("the handle was dropped");
    drop(c);
    assert!(engine.remove_consumer("one").expect("remove"));
    assert!(!engine.remove_consumer("one").expect("gone already"));
    assert!(!dir.path().join("consumer-one").exists());
}

/// Fails every write (`IoOp::Write`), or every exchange of names (a commit's: the handle's
/// kept temporary with the position file), of a consumer's files while armed.
struct FailConsumerFiles {
    op: IoOp,
    armed: AtomicBool,
}

impl Io for FailConsumerFiles {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if op == self.op && name.starts_with("consumer") && self.armed.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }
}

#[test]
fn a_failed_commit_leaves_the_old_position() {
    for op in [IoOp::Write, IoOp::Exchange] {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailConsumerFiles {
            op,
            armed: AtomicBool::new(false),
        });
        {
            let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
            let mut c = read_three_committed_one(&engine);
            hook.armed.store(true, Ordering::SeqCst);
            match c.commit(3) {
                Err(Error::Io { op: what, .. }) => {
                    assert!(what.contains("consumer position"), "{op:?}: {what}")
                }
                other => panic!("{op:?}: expected the injected error, got {other:?}"),
            }
            assert_eq!(c.committed(), 1, "{op:?}");
            // The failed commit's temporary file (a name of its own) is gone too.
            let left: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("consumer.tmp-"))
                .collect();
            assert!(left.is_empty(), "{op:?}: {left:?}");
            engine.close().expect("close");
        }
        hook.armed.store(false, Ordering::SeqCst);
        let engine = Engine::open(dir.path(), config()).expect("reopen");
        let mut c = engine.consumer("c").expect("consumer");
        assert_eq!(c.committed(), 1, "{op:?}: the failed commit took effect");
        assert_eq!(next(&mut c).seq, 2, "{op:?}");
    }
}

/// A consumer made from the engine's view (`engine.replay()?.consumer(..)`) commits through
/// the engine's storage seam, as the engine's own consumers do: a failed write of its
/// position is that commit's error, and the old position stands. It wrote through the real
/// file system, past the engine's seam, so a fault the seam injects (a full disk's refusal
/// in a test, a seam that counts or checks writes) never reached it.
#[test]
fn a_consumer_made_from_the_engines_view_commits_through_the_engines_seam() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailConsumerFiles {
        op: IoOp::Write,
        armed: AtomicBool::new(false),
    });
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    put_batches(&engine, 4, 10);
    let mut c = engine
        .replay()
        .expect("view")
        .consumer("v")
        .expect("consumer");
    for _ in 0..3 {
        next(&mut c);
    }
    c.commit(1).expect("commit");
    hook.armed.store(true, Ordering::SeqCst);
    let failed = c.commit(3);
    hook.armed.store(false, Ordering::SeqCst);
    assert!(
        matches!(&failed, Err(Error::Io { op, .. }) if op.contains("consumer position")),
        "the seam's injected failure did not reach the view's consumer: {failed:?}"
    );
    assert_eq!(c.committed(), 1);
    drop(c);
    let c = engine.consumer("v").expect("consumer");
    assert_eq!(c.committed(), 1, "the failed commit took effect");
    drop(c);
    engine.close().expect("close");
}

/// Fails the directory sync that follows the rename (or exchange) of a consumer's temporary
/// file (a commit) or the removal of a consumer's file (`remove_consumer`), while armed;
/// counts the renames and exchanges, and the directory syncs, it saw.
#[derive(Default)]
struct FailConsumerDirSync {
    armed: AtomicBool,
    /// A consumer file was just renamed into place or removed.
    pending: AtomicBool,
    failed: AtomicU64,
    renames: AtomicU64,
    dir_syncs: AtomicU64,
}

impl Io for FailConsumerDirSync {
    fn before(&self, op: IoOp, _path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let pending = self.pending.swap(false, Ordering::SeqCst);
        if op == IoOp::SyncDir {
            self.dir_syncs.fetch_add(1, Ordering::SeqCst);
            if pending && self.armed.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(EIO));
            }
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // A commit exchanges its temporary's name with the position file's; a new
        // consumer's file is renamed into place.
        let renamed =
            matches!(op, IoOp::Rename | IoOp::Exchange) && name.starts_with("consumer.tmp-");
        if renamed {
            self.renames.fetch_add(1, Ordering::SeqCst);
        }
        if renamed || (op == IoOp::Remove && name.starts_with("consumer-")) {
            self.pending.store(true, Ordering::SeqCst);
        }
    }
}

impl FailConsumerDirSync {
    fn get(&self, n: &AtomicU64) -> u64 {
        n.load(Ordering::SeqCst)
    }

    /// Runs `f` with the directory syncs after consumer-file changes failing.
    fn failing<T>(&self, f: impl FnOnce() -> T) -> T {
        self.armed.store(true, Ordering::SeqCst);
        let r = f();
        self.armed.store(false, Ordering::SeqCst);
        r
    }
}

/// An engine on a fresh directory whose I/O goes through a `FailConsumerDirSync`, disarmed.
fn open_with_failing_dir_syncs() -> (tempfile::TempDir, Arc<FailConsumerDirSync>, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailConsumerDirSync::default());
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    (dir, hook, engine)
}

/// Every key `put_batches` wrote for `n` batches reads back from `engine`.
fn holds_puts(engine: &Engine, n: usize, value_len: usize, ctx: &str) {
    for i in 0..n {
        let key = format!("key-{i:04}");
        let got = engine.read_to_vec(key.as_bytes()).expect("read");
        assert_eq!(got, Some(vec![b'v'; value_len]), "{ctx}: {key} lost");
    }
}

/// A commit whose directory sync fails after the new file's rename returns the error (naming
/// the operation and the directory); the handle keeps the previous commit, so committing the
/// same batch again writes and syncs again rather than taking the failed one as done; the
/// engine goes on; and a reopened consumer resumes at the previous position or the new one
/// (`Consumer::commit`: the rename may stand), never before the previous.
#[test]
fn a_commit_whose_directory_sync_fails_is_not_taken_as_done() {
    for retry in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailConsumerDirSync::default());
        {
            let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
            let mut c = read_three_committed_one(&engine);
            hook.armed.store(true, Ordering::SeqCst);
            match c.commit(3) {
                Err(Error::Io { op, path, .. }) => {
                    assert_eq!((op, path.as_path()), ("fsync directory", dir.path()))
                }
                other => panic!("expected the injected error, got {other:?}"),
            }
            assert_eq!(hook.get(&hook.failed), 1);
            hook.armed.store(false, Ordering::SeqCst);
            assert_eq!(
                c.committed(),
                1,
                "the handle took the failed commit as done"
            );
            assert_eq!(c.next_seq(), 4, "what was yielded stays yielded");
            // The engine is not failed by a consumer's file.
            assert!(engine.failure().is_none());
            engine.put(b"after", b"x").unwrap().wait().unwrap();
            if retry {
                let (renames, syncs) = (hook.get(&hook.renames), hook.get(&hook.dir_syncs));
                c.commit(3).expect("the commit again, healthy");
                assert_eq!(c.committed(), 3);
                assert_eq!(
                    (hook.get(&hook.renames), hook.get(&hook.dir_syncs) > syncs),
                    (renames + 1, true),
                    "the commit again did not write and sync the position"
                );
            }
            drop(c);
            engine.close().expect("close");
        }
        let engine = Engine::open(dir.path(), config()).expect("reopen");
        holds_puts(&engine, 4, 10, &format!("retry {retry}"));
        assert_eq!(
            engine.read_to_vec(b"after").unwrap().as_deref(),
            Some(&b"x"[..])
        );
        let mut c = engine.consumer("c").expect("consumer");
        let committed = c.committed().get();
        match retry {
            true => assert_eq!(committed, 3),
            false => assert!(
                committed == 1 || committed == 3,
                "resumes at {committed}: neither the old position nor the new"
            ),
        }
        assert_eq!(next(&mut c).seq, committed + 1);
    }
}

/// `remove_consumer` whose directory sync fails after the removal returns the error (naming
/// the operation and the directory), the engine goes on, and a reopen finds the consumer
/// gone or at its last commit (the removal may or may not have reached the disk), with
/// every acknowledged put.
#[test]
fn a_removal_whose_directory_sync_fails_returns_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailConsumerDirSync::default());
    {
        let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
        put_batches(&engine, 4, 10);
        let mut c = engine.consumer("gone").expect("consumer");
        next(&mut c);
        next(&mut c);
        c.commit(2).expect("commit");
        drop(c);
        hook.armed.store(true, Ordering::SeqCst);
        match engine.remove_consumer("gone") {
            Err(Error::Io { op, path, .. }) => {
                assert_eq!((op, path.as_path()), ("fsync directory", dir.path()))
            }
            other => panic!("expected the injected error, got {other:?}"),
        }
        assert_eq!(hook.get(&hook.failed), 1);
        hook.armed.store(false, Ordering::SeqCst);
        assert!(engine.failure().is_none());
        engine.put(b"after", b"x").unwrap().wait().unwrap();
        engine.close().expect("close");
    }
    let engine = Engine::open(dir.path(), config()).expect("reopen");
    holds_puts(&engine, 4, 10, "reopen");
    let infos = engine.consumers().expect("consumers");
    assert!(
        infos.is_empty() || (infos.len() == 1 && infos[0].committed == 2),
        "{infos:?}"
    );
}

#[test]
fn a_log_reader_consumer_sees_the_engines_commits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    put_batches(&engine, 4, 10);
    let mut c = engine.consumer("c").expect("consumer");
    next(&mut c);
    next(&mut c);
    c.commit(2).expect("commit");
    let reader = LogReader::open(dir.path()).expect("reader");
    let mut rc = reader.consumer("c").expect("reader's consumer");
    assert_eq!(rc.committed(), 2);
    assert_eq!(next(&mut rc).seq, 3);
    // A batch written after the reader opened is found by polling.
    put_batches(&engine, 1, 10);
    assert_eq!(next(&mut rc).seq, 4);
    assert_eq!(next(&mut rc).seq, 5);
    rc.commit(5).expect("the reader's consumer commits too");
    drop(c);
    assert_eq!(engine.consumer("c").expect("consumer").committed(), 5);
}

#[test]
fn retirement_is_held_back_by_the_slowest_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let mut slow = engine.consumer("slow").expect("consumer");
    let mut fast = engine.consumer("fast").expect("consumer");
    let seqs = put_batches(&engine, 40, 8 << 10);
    let last = seqs.last().unwrap().get();
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{} segments", files.len());

    // Nothing committed: nothing goes.
    let r = engine.retire_before(last).expect("retire");
    assert_eq!(r.segments, 0);
    assert_eq!(r.held_back_by, Some(position("fast", 0)));

    // The slow one commits past the second segment's start, the fast one further.
    let upto = files[2].0; // the first batch of the third segment
    for _ in 0..upto {
        next(&mut slow);
    }
    slow.commit(upto).expect("commit");
    for _ in 0..last {
        next(&mut fast);
    }
    fast.commit(last).expect("commit");
    let r = engine.retire_before(last).expect("retire");
    assert_eq!(r.held_back_by, Some(position("slow", upto)));
    assert_eq!(
        r.segments,
        2,
        "the segments wholly before batch {}",
        upto + 1
    );
    assert_eq!(r.first_seq, files[2].0);

    // Asked for less than every consumer has committed: nobody held it back.
    let r = engine.retire_before(files[2].0).expect("retire");
    assert_eq!((r.segments, r.held_back_by), (0, None));

    // Forced: the slow consumer's next batch goes, and it is told so.
    let mut slow_next = engine.follow(upto + 1);
    let r = engine.retire_before_forced(files[3].0).expect("forced");
    assert_eq!((r.segments, r.held_back_by.clone()), (1, None));
    match slow_next.try_next() {
        Err(Error::Retired { seq, first }) => {
            assert_eq!((seq, first), (Seq::new(upto + 1), files[3].0.into()))
        }
        other => panic!("expected Error::Retired, got {other:?}"),
    }
    drop(slow);
    let mut slow = engine.consumer("slow").expect("reopen the slow one");
    assert!(matches!(slow.try_next(), Err(Error::Retired { .. })));

    // Removed, it holds nothing back.
    drop(slow);
    assert!(engine.remove_consumer("slow").expect("remove"));
    let to = segment_files(dir.path()).last().unwrap().0;
    let r = engine.retire_before(to).expect("retire");
    assert!(r.segments >= 1);
    assert_eq!(r.held_back_by, None);
}

#[test]
fn consumers_report_their_lag() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    assert_eq!(engine.consumers().expect("consumers"), vec![]);
    let mut a = engine.consumer("a").expect("consumer");
    let b = engine.consumer("b").expect("consumer");
    let n = put_batches(&engine, 30, 6 << 10).len() as u64;
    assert!(segment_files(dir.path()).len() >= 3);
    for _ in 0..12 {
        next(&mut a);
    }
    a.commit(12).expect("commit");
    let frames_after = |seq: u64| -> u64 {
        let view = engine.replay().expect("replay");
        view.batches_from(seq + 1)
            .expect("batches_from")
            .map(|b| b.frame_len() as u64)
            .sum()
    };
    let started = std::time::SystemTime::now();
    let infos = engine.consumers().expect("consumers");
    let oldest = |seq: u64| {
        let view = engine.replay().expect("replay");
        let t = view
            .batches_from(seq + 1)
            .expect("batches_from")
            .next()
            .map(|b| b.commit_time());
        t.expect("a batch after the commit")
    };
    let want = |name: &str, committed: u64| mergelog::ConsumerInfo {
        name: name.into(),
        committed: Seq::new(committed),
        lag_batches: n - committed,
        lag_bytes: frames_after(committed),
        oldest_unprocessed: oldest(committed),
        lag_age: None,
        retired_unread: 0,
    };
    // The age is measured when asked: compare it apart.
    let without_age = |infos: &[mergelog::ConsumerInfo]| -> Vec<mergelog::ConsumerInfo> {
        let strip = |i: &mergelog::ConsumerInfo| mergelog::ConsumerInfo {
            lag_age: None,
            ..i.clone()
        };
        infos.iter().map(strip).collect()
    };
    assert_eq!(without_age(&infos), vec![want("a", 12), want("b", 0)]);
    for i in &infos {
        let age = i.lag_age.expect("frames carry a commit time");
        let since = started
            .duration_since(i.oldest_unprocessed.unwrap())
            .unwrap();
        assert!(age >= since, "{i:?}: age {age:?} below {since:?}");
    }
    assert!(
        infos[1].lag_age >= infos[0].lag_age,
        "b is further behind than a"
    );
    drop(b);
    // Another process's view of the same directory reads the same files.
    let reader = LogReader::open(dir.path()).expect("reader");
    assert_eq!(
        without_age(&reader.consumers().expect("consumers")),
        without_age(&infos)
    );
}

/// Reconciliation: the request ids durable but not yet past a consumer, oldest first.
#[test]
fn pending_ids_are_those_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let mut c = engine.consumer("proc").expect("consumer");
    let mut logged = Vec::new();
    for n in 0..20u128 {
        let key = format!("k{n}");
        let o = engine
            .put_with_id(n, key.as_bytes(), b"v")
            .unwrap()
            .wait()
            .unwrap();
        logged.push((mergelog::RequestId::from(n), o.seq()));
    }
    // A plain write and a duplicate add no id.
    engine.put(b"plain", b"v").unwrap().wait().unwrap();
    engine
        .put_with_id(3u128, b"k3", b"again")
        .unwrap()
        .wait()
        .unwrap();
    let all = engine.pending_ids("proc").expect("pending");
    let got: Vec<_> = all.iter().map(|p| (p.id, p.seq)).collect();
    assert_eq!(got, logged, "every id, oldest first");
    assert!(all.iter().all(|p| p.commit_time.is_some()));
    // Past the commit they are no longer pending.
    let upto = logged[11].1;
    while next(&mut c).seq < upto {}
    c.commit(upto).unwrap();
    let rest: Vec<_> = engine
        .pending_ids("proc")
        .unwrap()
        .iter()
        .map(|p| (p.id, p.seq))
        .collect();
    let want: Vec<_> = logged.iter().copied().filter(|(_, s)| *s > upto).collect();
    assert_eq!(rest, want);
    assert!(matches!(
        engine.pending_ids("nobody"),
        Err(Error::Consumer { .. })
    ));
}

/// Once `close` has given the directory up (another engine may own it), a consumer of the
/// closed engine can still read what became durable but no longer commit: its file would be
/// written behind the new owner's back. The position stays where the last commit put it.
#[test]
fn a_commit_after_close_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let seqs = put_batches(&engine, 3, 10);
    let mut c = engine.consumer("late").unwrap();
    let first = next(&mut c);
    c.commit(first.seq).unwrap();
    let second = next(&mut c);
    engine.close().unwrap();
    assert!(
        matches!(c.commit(second.seq), Err(Error::Closed)),
        "a commit after close was accepted"
    );
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut c = engine.consumer("late").unwrap();
    assert_eq!(c.committed(), first.seq);
    assert_eq!(
        next(&mut c).seq,
        seqs[1],
        "the uncommitted batch comes again"
    );
}

/// A consumer made from a view of the log older than a retirement (an engine's `replay`, a
/// directory's `LogReader`) starts, when new, at the first batch the log holds now, as
/// `Engine::consumer` does. It started at the view's first batch, which the retirement had
/// removed: made without an error, it could read nothing (`Error::Retired` at its first
/// batch) and held every later retirement back for good. A view of a closed engine makes no
/// file (the directory may be another engine's by then), as `Engine::consumer` makes none.
#[test]
fn a_consumer_made_from_a_view_older_than_a_retirement_starts_at_the_logs_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let last = put_batches(&engine, 40, 8 << 10).last().unwrap().get();
    let view = engine.replay().expect("replay");
    let reader = LogReader::open(dir.path()).expect("reader");
    assert_eq!(
        (view.first_seq(), reader.first_seq()),
        (Seq::new(1), Seq::new(1))
    );
    let r = engine.retire_before(last).expect("retire");
    assert!(r.segments >= 2, "{r:?}");
    let first = r.first_seq;
    for (name, made) in [
        ("of-view", view.consumer("of-view")),
        ("of-reader", reader.consumer("of-reader")),
    ] {
        let mut c = made.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            c.committed().get() + 1,
            first.get(),
            "{name}: a new consumer starts behind the log's first batch"
        );
        assert_eq!(next(&mut c).seq, first, "{name}");
    }
    engine.close().expect("close");
    assert!(
        matches!(view.consumer("after-close"), Err(Error::Closed)),
        "a view of a closed engine made a consumer"
    );
    assert!(!dir.path().join("consumer-after-close").exists());
}

/// Holds the first removal (or rename into the pool) of a segment file while armed: a
/// retirement that has read the consumers' positions, under its lock, and is about to remove
/// the segments before them. `meet` twice: once held, once to let it go on.
struct HoldRetirement {
    armed: AtomicBool,
    meet: std::sync::Barrier,
}

impl Io for HoldRetirement {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if matches!(op, IoOp::Remove | IoOp::Rename)
            && segment
            && self.armed.swap(false, Ordering::SeqCst)
        {
            self.meet.wait();
            self.meet.wait();
        }
        Ok(())
    }
}

/// A consumer made from a view of the engine while a retirement runs waits for it, as
/// `Engine::consumer` does (both take the retirement lock): it was made at once, at the
/// log's first batch, after the retirement had read the positions and before it removed
/// that batch's segment, which it then removed (the new consumer could read nothing:
/// `Error::Retired`).
#[test]
fn a_consumer_made_from_a_view_during_a_retirement_is_made_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(HoldRetirement {
        armed: AtomicBool::new(false),
        meet: std::sync::Barrier::new(2),
    });
    let engine = Engine::open_with_io(dir.path(), config(), hook.clone()).expect("open");
    let last = put_batches(&engine, 40, 8 << 10).last().unwrap().get();
    hook.armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        let retiring = s.spawn(|| engine.retire_before(last));
        // Held: the positions are read (there are none), no segment is removed yet.
        hook.meet.wait();
        let view = engine.replay().expect("replay");
        assert_eq!(view.first_seq(), 1, "nothing is removed yet");
        let making = s.spawn(move || view.consumer("late"));
        // Time for the consumer to be made while the retirement is held, if nothing holds
        // it back (the outcome checked below does not depend on it).
        let grace = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while !making.is_finished() && std::time::Instant::now() < grace {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        hook.meet.wait();
        let r = retiring.join().unwrap().expect("retire");
        assert!(r.segments >= 2, "{r:?}");
        let mut c = making.join().unwrap().expect("consumer");
        assert_eq!(
            c.committed().get() + 1,
            r.first_seq.get(),
            "the retirement removed the new consumer's first batch"
        );
        assert_eq!(next(&mut c).seq, r.first_seq);
    });
}

/// A consumer file whose CRC is valid but whose committed batch is past any a log reaches
/// (2^62; here `u64::MAX`, from which counting on would overflow) is damage: every way of
/// opening the consumer refuses it with `Error::Corrupt` naming the file and the offset of
/// the committed batch, never panics.
#[test]
fn a_committed_batch_past_the_sequence_cap_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    put_batches(&engine, 2, 10);
    drop(engine.consumer("c").expect("consumer"));
    let file = dir.path().join("consumer-c");
    // The position file's layout (src/consumer.rs): magic, version 1, reserved, committed,
    // crc32c of bytes 0..24, zero.
    let position = |committed: u64| {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(b"MLCONSUM");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&committed.to_le_bytes());
        let crc = crc32c::crc32c(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let corrupt = |r: mergelog::Result<Consumer>, what: &str| match r {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert_eq!(path, file, "{what}: the error names the consumer's file");
            assert_eq!(
                offset, 16,
                "{what}: the error names the committed batch's offset"
            );
        }
        other => panic!("{what}: expected Error::Corrupt, got {other:?}"),
    };
    // The cap itself is a valid position.
    std::fs::write(&file, position(1 << 62)).unwrap();
    assert_eq!(
        engine.consumer("c").expect("at the cap").committed(),
        1 << 62
    );
    for committed in [u64::MAX, (1 << 62) + 1] {
        std::fs::write(&file, position(committed)).unwrap();
        corrupt(engine.consumer("c"), "Engine::consumer");
        let reader = LogReader::open(dir.path()).expect("reader");
        corrupt(reader.consumer("c"), "LogReader::consumer");
        assert!(
            matches!(
                reader.pending_ids("c"),
                Err(Error::Corrupt { offset: 16, .. })
            ),
            "pending_ids"
        );
        assert!(
            matches!(engine.consumers(), Err(Error::Corrupt { offset: 16, .. })),
            "Engine::consumers"
        );
    }
}

/// A commit whose directory sync failed after its rename may stand on disk, and
/// `retire_before` goes by the position on disk: a later, lower commit must not move it back
/// (the batches between were retired meanwhile). It writes the failed commit's position
/// instead, and the consumer resumes after it.
#[test]
fn a_commit_after_a_failed_one_never_moves_the_position_back() {
    let (dir, hook, engine) = open_with_failing_dir_syncs();
    let mut c = engine.consumer("c").expect("consumer");
    put_batches(&engine, 40, 8 << 10);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let s2 = files[1].0; // the first batch of the second segment
    let (old, failed, lower) = (s2 - 3, s2 - 1, s2 - 2);
    while next(&mut c).seq < failed {}
    c.commit(old).expect("commit");
    let r = hook.failing(|| c.commit(failed));
    assert!(matches!(r, Err(Error::Io { .. })));
    assert_eq!(c.committed().get(), old);
    // Retirement goes by the position on disk, the failed commit's: segment 1 goes.
    let r = engine.retire_before(s2 + 5).expect("retire");
    assert_eq!(r.first_seq.get(), s2, "{r:?}");
    c.commit(lower).expect("a lower commit");
    assert_eq!(
        c.committed().get(),
        failed,
        "it wrote the failed commit's position"
    );
    drop(c);
    let mut c = engine.consumer("c").expect("consumer");
    assert_eq!(c.committed().get(), failed);
    let got = c.try_next();
    assert!(
        matches!(got, Ok(Some(ref b)) if b.seq == failed + 1),
        "after reopening: {got:?}"
    );
}

/// A consumer removal whose directory sync failed, retried: the retry finds no file, and
/// still syncs the directory before it says the consumer is gone.
#[test]
fn a_retried_removal_after_a_failed_directory_sync_syncs_the_directory() {
    let (_dir, hook, engine) = open_with_failing_dir_syncs();
    put_batches(&engine, 4, 10);
    drop(engine.consumer("gone").expect("consumer"));
    let r = hook.failing(|| engine.remove_consumer("gone"));
    assert!(matches!(r, Err(Error::Io { .. })));
    let syncs = hook.get(&hook.dir_syncs);
    let again = engine.remove_consumer("gone");
    assert!(
        hook.get(&hook.dir_syncs) > syncs,
        "the removal was retried ({again:?}) without the directory sync that failed"
    );
}

/// A consumer whose creation failed at the directory sync, opened again: the file is there,
/// and the directory is synced before the handle is given out.
#[test]
fn a_consumer_whose_creation_sync_failed_is_synced_when_opened_again() {
    let (_dir, hook, engine) = open_with_failing_dir_syncs();
    put_batches(&engine, 4, 10);
    let r = hook.failing(|| engine.consumer("new"));
    assert!(matches!(r, Err(Error::Io { .. })));
    let syncs = hook.get(&hook.dir_syncs);
    let again = engine.consumer("new");
    assert!(again.is_ok(), "{again:?}");
    assert!(hook.get(&hook.dir_syncs) > syncs, "opened without syncing");
}

/// A consumer position past the log's end (batches it had committed were lost: here cut by
/// `PointInTime`; also a directory consumer's commit of a batch not yet synced, then a power
/// loss, or a `NoSync` log) is set back to the log's last batch at open and reported, so that
/// the consumer sees the batches written next under those numbers. It used to keep its
/// position and skip them.
#[test]
fn a_position_past_the_logs_end_is_set_back_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let engine = Engine::open(dir, Config::default()).unwrap();
    for i in 0..3u8 {
        engine.put(&[b'k', i], b"first").unwrap().wait().unwrap();
    }
    let mut consumer = engine.consumer("c").unwrap();
    for _ in 0..3 {
        consumer.next_timeout(WAIT_MAX).unwrap().expect("a batch");
    }
    consumer.commit(Seq::new(3)).unwrap();
    drop(consumer);
    engine.close().unwrap();
    drop(engine);
    // Damage batch 3's frame: a point-in-time open cuts the log after batch 2.
    let frames = common::log::read_log(dir, None);
    let third = frames.iter().find(|f| f.batch_seq == 3).expect("batch 3");
    let (_, path) = segment_files(dir)
        .into_iter()
        .find(|(id, _)| *id == third.segment_id)
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[third.offset as usize + 40] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let config = Config {
        recovery: mergelog::RecoveryMode::PointInTime,
        ..Config::default()
    };
    let engine = Engine::open(dir, config).unwrap();
    assert!(engine.open_report().truncated.is_some());
    assert_eq!(
        engine.open_report().consumers_set_back,
        vec![position("c", 3)]
    );
    // The next write is batch 3 again, and the consumer sees it.
    let seq = engine.put(b"again", b"second").unwrap().wait().unwrap();
    assert_eq!(seq, Seq::new(3));
    let mut consumer = engine.consumer("c").unwrap();
    let b = consumer
        .next_timeout(WAIT_MAX)
        .unwrap()
        .expect("the new batch 3");
    assert_eq!(b.seq, Seq::new(3));
    assert!(
        b.records.iter().any(|r| r.key == b"again"),
        "the batch the log wrote after the cut"
    );
    drop(consumer);
    engine.close().unwrap();
}

/// Two handles of one name (as two processes' `LogReader::consumer`s can be) commit at once:
/// each commit writes a temporary file of its own, so none fails on the other's file and the
/// position on disk is always a whole one; a writable open removes the temporary files that
/// interrupted commits left.
#[test]
fn two_handles_of_one_name_commit_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let engine = Engine::open(dir, config()).expect("open");
    let batches = put_batches(&engine, 60, 10);
    let last = batches.last().copied().unwrap();
    engine.close().expect("close");
    drop(engine);
    let reader = LogReader::open(dir).expect("reader");
    let go = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (reader, go) = (&reader, &go);
            s.spawn(move || {
                let mut c = reader.consumer("c").expect("reader's consumer");
                go.wait();
                while let Some(b) = c.next_timeout(WAIT_MAX).expect("next") {
                    c.commit(b.seq)
                        .unwrap_or_else(|e| panic!("commit of {:?}: {e}", b.seq));
                    if b.seq == last {
                        break;
                    }
                }
            });
        }
    });
    let infos = reader.consumers().expect("consumers");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].committed, last, "the last commit, whole");
    // Leftovers of interrupted commits of a process that is gone, an older build's name
    // among them.
    for leftover in [
        "consumer.tmp-c".to_owned(),
        format!("consumer.tmp-c.{}.3", dead_pid()),
    ] {
        std::fs::write(dir.join(leftover), b"half a position").unwrap();
    }
    let engine = Engine::open(dir, config()).expect("reopen");
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("consumer"))
        .collect();
    assert_eq!(names, vec!["consumer-c".to_owned()], "leftovers removed");
    assert_eq!(engine.consumer("c").expect("consumer").committed(), last);
    engine.close().expect("close");
}

/// The id of a process that has ended (a child waited for): no live process has it, short of
/// the id's reuse in the instant since.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

/// The consumer temporaries (`consumer.tmp-*`) in `dir`, by name.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("consumer.tmp-"))
        .collect();
    names.sort();
    names
}

/// A writable open keeps the temporary file a live consumer handle keeps for its commits, and
/// removes those of processes that are gone. It removed every one: a commit of a consumer in
/// another process, in the middle of its exchange when a writer (re)opened the log, failed
/// with the rename's error (`examples/ledger`'s consumer process beside a restarted writer:
/// "rename consumer position .../consumer.tmp-ledger.<pid>.0: No such file or directory"),
/// and between commits the handle lost the room its next commit needs on a full disk.
#[test]
fn a_writable_open_keeps_a_live_handles_temporary_and_removes_a_dead_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let engine = Engine::open(dir, config()).expect("open");
    put_batches(&engine, 10, 10);
    engine.close().expect("close");
    drop(engine);
    let reader = LogReader::open(dir).expect("reader");
    let mut c = reader.consumer("c").expect("reader's consumer");
    let b = next(&mut c);
    c.commit(b.seq).expect("commit");
    let kept = temporaries(dir);
    assert_eq!(kept.len(), 1, "the handle's kept temporary: {kept:?}");
    let dead = format!("consumer.tmp-c.{}.0", dead_pid());
    std::fs::write(dir.join(&dead), b"half a position").unwrap();
    let engine = Engine::open(dir, config()).expect("reopen");
    assert_eq!(
        temporaries(dir),
        kept,
        "after a writable open: the live handle's temporary {kept:?} kept, the dead \
         process's {dead} removed"
    );
    let b = next(&mut c);
    c.commit(b.seq).expect("a commit after the open");
    assert_eq!(
        temporaries(dir),
        kept,
        "the commit wrote into the kept file"
    );
    drop(c);
    assert_eq!(
        temporaries(dir),
        Vec::<String>::new(),
        "the drop removed it"
    );
    engine.close().expect("close");
}

/// Asserts `r` is `Error::Corrupt` at offset 0 of `path` with a reason that says `says`.
fn corrupt_at(r: mergelog::Result<impl std::fmt::Debug>, path: &Path, says: &str, what: &str) {
    match r {
        Err(Error::Corrupt {
            path: p,
            offset: 0,
            reason,
        }) if p == path && reason.contains(says) => {}
        other => panic!("{what}: expected Error::Corrupt at 0 of {path:?} ({says}), got {other:?}"),
    }
}

/// A consumer's position file name on a symbolic link to nothing (or on a directory or a
/// FIFO) is damage at that file, never "no such consumer": read as absent, the consumer held
/// no retirement back, so `retire_before` removed the batches it had not read (and
/// `Engine::consumer` replaced the link with a position at the log's first batch).
#[test]
fn a_consumer_file_name_on_a_dangling_link_or_an_irregular_file_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    put_batches(&engine, 20, 8 << 10);
    assert!(segment_files(dir.path()).len() >= 3);
    let mut c = engine.consumer("c").expect("consumer");
    next(&mut c);
    c.commit(1).expect("commit");
    drop(c);
    let file = dir.path().join("consumer-c");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &file).unwrap();
    let link = "symbolic link to nothing";
    corrupt_at(engine.consumers(), &file, link, "consumers");
    let segments = segment_files(dir.path());
    corrupt_at(engine.retire_before(20), &file, link, "retire_before");
    assert_eq!(segment_files(dir.path()), segments, "nothing retired");
    corrupt_at(engine.consumer("c"), &file, link, "Engine::consumer");
    let reader = LogReader::open(dir.path()).expect("reader");
    corrupt_at(reader.consumers(), &file, link, "LogReader::consumers");
    corrupt_at(reader.consumer("c"), &file, link, "LogReader::consumer");
    assert!(
        file.symlink_metadata().unwrap().is_symlink(),
        "the link is left"
    );
    engine.close().expect("close");
    drop(engine);
    corrupt_at(
        Engine::open(dir.path(), config()),
        &file,
        link,
        "Engine::open",
    );
    for irregular in ["directory", "fifo"] {
        let _ = std::fs::remove_file(&file).or_else(|_| std::fs::remove_dir(&file));
        match irregular {
            "fifo" => common::mkfifo(&file),
            _ => std::fs::create_dir(&file).unwrap(),
        }
        let regular = "other than a regular file";
        corrupt_at(
            Engine::open(dir.path(), config()),
            &file,
            regular,
            irregular,
        );
        let reader = LogReader::open(dir.path()).expect("reader");
        corrupt_at(reader.consumers(), &file, regular, irregular);
        corrupt_at(reader.consumer("c"), &file, regular, irregular);
    }
    std::fs::remove_file(&file).unwrap();
    Engine::open(dir.path(), config()).expect("opens without the damaged name");
}

/// After `close` the engine has given the directory up: another engine may have it, with
/// consumers of its own. Reading consumer positions through the closed engine (or a view of
/// it) would report the new owner's consumers against the old engine's batches: refused with
/// `Error::Closed`. Before, `consumers()` listed the new engine's consumer.
#[test]
fn a_closed_engine_reads_no_consumer_positions_of_a_directory_another_engine_may_have() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::open(dir.path(), config()).unwrap();
    put_batches(&first, 3, 10);
    drop(first.consumer("old").unwrap());
    let view = first.replay().unwrap();
    first.close().unwrap();
    let second = Engine::open(dir.path(), config()).unwrap();
    drop(second.consumer("new").unwrap());
    for (what, listed) in [
        ("consumers()", first.consumers().map(|c| c.len())),
        ("the view's consumers()", view.consumers().map(|c| c.len())),
        ("pending_ids()", first.pending_ids("new").map(|p| p.len())),
        (
            "the view's pending_ids()",
            view.pending_ids("new").map(|p| p.len()),
        ),
    ] {
        assert!(
            matches!(listed, Err(mergelog::Error::Closed)),
            "{what} of a closed engine: {listed:?}"
        );
    }
    // The directory's own reader, and the engine that has it, see both.
    let names = |c: Vec<mergelog::ConsumerInfo>| c.into_iter().map(|c| c.name).collect::<Vec<_>>();
    assert_eq!(names(second.consumers().unwrap()), ["new", "old"]);
    assert_eq!(
        names(LogReader::open(dir.path()).unwrap().consumers().unwrap()),
        ["new", "old"]
    );
    second.close().unwrap();
}

/// Consumers each committing every batch under `Config::consumer_lag_max` read no consumer
/// file at their commits: the throttle keeps each one's position, changed by the commits,
/// creations and removals made through the engine, and reads the files only at open and at
/// its re-read for other processes' commits (every 100 ms). Each commit read every
/// consumer's file: C consumers committing each batch read C² files per batch. Counted: the
/// files read, at most C per timed re-read and C more, with a batches limit (the files
/// alone) and a bytes limit (the files, then the slowest's frames).
#[test]
fn consumers_committing_each_batch_read_no_position_files_per_commit() {
    const CONSUMERS: u64 = 8;
    const ROUNDS: u64 = 6;
    let limits = [
        mergelog::ConsumerLag {
            batches: Some(1_000),
            ..Default::default()
        },
        mergelog::ConsumerLag {
            bytes: Some(1 << 30),
            ..Default::default()
        },
    ];
    for lag in limits {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            consumer_lag_max: Some(lag),
            ..config()
        };
        let engine = Engine::open(dir.path(), cfg).expect("open");
        let view = engine.replay().expect("view");
        let mut consumers: Vec<Consumer> = (0..CONSUMERS)
            .map(|i| match i % 2 {
                0 => engine.consumer(&format!("c{i}")),
                _ => view.consumer(&format!("c{i}")),
            })
            .collect::<mergelog::Result<_>>()
            .expect("consumers");
        let (files_before, rereads_before) = engine.throttle_reads();
        for round in 0..ROUNDS {
            let seq = put_batches(&engine, 1, 10)[0];
            for c in &mut consumers {
                assert_eq!(next(c).seq, seq, "round {round}");
                c.commit(seq).expect("commit");
            }
        }
        let (files, rereads) = engine.throttle_reads();
        let (files, rereads) = (files - files_before, rereads - rereads_before);
        assert!(
            files <= CONSUMERS * (rereads + 1),
            "{lag:?}: {CONSUMERS} consumers committing {ROUNDS} batches each read {files} \
             consumer files ({rereads} timed re-reads of {CONSUMERS}): every commit read every \
             consumer's file"
        );
        assert!(
            engine
                .consumers()
                .unwrap()
                .iter()
                .all(|c| c.committed.get() == ROUNDS),
            "every commit in the files"
        );
        engine.close().unwrap();
    }
}

/// A new consumer has committed nothing, and its position is the batch before the first one
/// the log holds: 0 for a log never retired, `first_seq - 1` after a retirement (the docs of
/// `Consumer::committed` and `ConsumerInfo::committed` said 0), so the first batch it yields
/// is the log's first.
#[test]
fn a_new_consumer_of_a_retired_log_is_at_the_batch_before_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let put = put_batches(&engine, 200, 1000);
    let retired = engine.retire_before(put[put.len() - 1]).unwrap();
    assert!(retired.segments > 0, "nothing retired: {retired:?}");
    let first = retired.first_seq;
    let mut c = engine.consumer("late").unwrap();
    assert_eq!(
        c.committed(),
        first.get() - 1,
        "a new consumer's committed batch"
    );
    assert_eq!(c.next_seq(), first);
    let info = engine.consumers().unwrap();
    assert_eq!(info[0].committed, first.get() - 1, "{info:?}");
    assert_eq!(next(&mut c).seq, first);
}

/// A consumer (like every reader of the log) sees what the log holds: per window, only a key's
/// last write (the earlier ones are coalesced away, acknowledged and never logged). An event
/// log gives every event a key of its own, or turns coalescing off: then every write is a
/// record, in the order submitted.
#[test]
fn a_consumer_sees_a_keys_last_write_of_a_window_unless_coalescing_is_off() {
    use std::time::Duration;
    for coalesce in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            dir.path(),
            Config {
                coalesce,
                // One window for the three puts (the first wait cuts it at once: a lone
                // waiter writes its window itself).
                window: mergelog::WindowPolicy::Linger(Duration::from_secs(5)),
                window_age_max: Duration::from_secs(5),
                ..config()
            },
        )
        .unwrap();
        let tickets: Vec<_> = [&b"opened"[..], b"paid", b"shipped"]
            .iter()
            .map(|event| engine.put(b"order:1", event).unwrap())
            .collect();
        let batches: Vec<Seq> = tickets.iter().map(|t| t.wait().unwrap()).collect();
        assert!(batches.iter().all(|&b| b == batches[0]), "{batches:?}");
        let mut c = engine.consumer("events").unwrap();
        let batch = next(&mut c);
        let values: Vec<&[u8]> = batch.records.iter().map(|r| &r.value[..]).collect();
        let expected: Vec<&[u8]> = if coalesce {
            vec![b"shipped"]
        } else {
            vec![b"opened", b"paid", b"shipped"]
        };
        assert_eq!(values, expected, "coalesce = {coalesce}");
    }
}

/// `remove_consumer` sees only this engine's handles: a directory handle
/// (`LogReader::consumer`, another process's) that commits after the removal makes the
/// consumer again, at that commit (as its docs say).
#[test]
fn a_removed_consumer_is_made_again_by_a_directory_handles_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    put_batches(&engine, 3, 10);
    let mut other = LogReader::open(dir.path()).unwrap().consumer("c").unwrap();
    let first = other.next_timeout(WAIT_MAX).unwrap().expect("a batch");
    assert!(engine.remove_consumer("c").unwrap(), "the file was there");
    assert!(engine.consumers().unwrap().is_empty());
    other.commit(first.seq).unwrap();
    let names: Vec<(String, Seq)> = engine
        .consumers()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.committed))
        .collect();
    assert_eq!(names, [("c".to_string(), first.seq)]);
}

/// A consumer behind a retirement (`retire_before_forced` removed batches it had not read):
/// its next read is `Error::Retired`, and every "how far behind" answer agrees. Its
/// reconciliation report (`pending_ids`, of the engine and of a directory's reader) is that
/// error, not the ids of the batches still held (it left out the retired ones' ids, which
/// were accepted and never processed), and its lag (`consumers`, `Stats::consumers`) says how
/// many of the batches it lags by were retired unread, beside what the log still holds.
#[test]
fn a_consumer_behind_a_retirement_is_reported_as_its_next_read_fails() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).expect("open");
    let mut c = engine.consumer("behind").expect("consumer");
    for n in 0..30u128 {
        let key = format!("k{n:02}");
        engine
            .put_with_id(n, key.as_bytes(), &[b'v'; 6 << 10])
            .unwrap()
            .wait()
            .unwrap();
    }
    // It read nothing (a handle that had read into a segment keeps its mapping, and may read
    // on in it: its position on disk, which a reopened handle starts from, is what counts).
    let committed = c.committed().get();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let r = engine.retire_before_forced(files[2].0).expect("forced");
    let first_held = r.first_seq;
    assert!(first_held.get() > committed + 1, "{r:?}");
    let want = (Seq::new(committed + 1), first_held);

    let retired = |what: &str, got: mergelog::Result<Vec<mergelog::PendingId>>| match got {
        Err(Error::Retired { seq, first }) => assert_eq!((seq, first), want, "{what}"),
        other => panic!(
            "{what}: expected Error::Retired {{ seq: {}, first: {} }} (the consumer's next \
             read), got {:?}",
            want.0,
            want.1,
            other.map(|ids| ids.iter().map(|p| p.seq.get()).collect::<Vec<_>>())
        ),
    };
    retired("Engine::pending_ids", engine.pending_ids("behind"));
    let reader = LogReader::open(dir.path()).expect("reader");
    retired("LogReader::pending_ids", reader.pending_ids("behind"));
    match c.try_next() {
        Err(Error::Retired { seq, first }) => assert_eq!((seq, first), want, "the read"),
        other => panic!("the consumer's next read: expected Error::Retired, got {other:?}"),
    }

    let last = engine.durable_seq().get();
    let unread = first_held.get() - committed - 1;
    let infos = [
        ("Engine::consumers", engine.consumers().expect("consumers")),
        (
            "LogReader::consumers",
            reader.consumers().expect("consumers"),
        ),
        ("Stats::consumers", engine.stats().consumers),
    ];
    for (what, infos) in infos {
        let [i] = &infos[..] else {
            panic!("{what}: {infos:?}")
        };
        assert_eq!(i.lag_batches, last - committed, "{what}: {i:?}");
        assert_eq!(i.retired_unread, unread, "{what}: {i:?}");
    }

    // Made again, it starts at the first batch held, and nothing is retired unread.
    drop(c);
    assert!(engine.remove_consumer("behind").unwrap());
    let _c = engine.consumer("behind").expect("consumer");
    let [i] = &engine.consumers().unwrap()[..] else {
        panic!()
    };
    assert_eq!(
        (i.committed.get() + 1, i.retired_unread),
        (first_held.get(), 0)
    );
    let ids = engine.pending_ids("behind").expect("pending");
    assert_eq!(ids.first().map(|p| p.seq), Some(first_held));
}
