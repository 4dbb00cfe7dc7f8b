//! Retirement tests: `Engine::retire_before` removes whole segment files from the front of
//! the log (never the active one), and the engine then holds exactly what reopening the
//! directory would rebuild; `replay` and followers start at the new first batch, and a
//! follower asking for an earlier one gets `Error::Retired`; a `ValueRef` read before stays
//! valid (also when its segment is kept for reuse, `Config::recycle_segments`); writers
//! writing meanwhile lose nothing that the log still holds; one call pools at most
//! `recycle_segments` files; a `LogReader` opened while retirement removes files sees a
//! suffix of the log.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::log::{pool_files, segment_files};
use common::model::{apply_batch, state_diff};
use common::{engine_state, wait_ok, State, WAIT_MAX};
use mergelog::{Config, Engine, Error, LogReader, OwnedBatch, RecordOp, Retired, Ticket};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SEGMENT_BYTES: u64 = 64 << 10;

fn config() -> Config {
    Config {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        ..Config::default()
    }
}

/// The segment files of `dir` (`<20 digits>.seg`) in id order, with their sizes.
fn seg_files(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
    segment_files(dir)
        .into_iter()
        .filter_map(|(id, path)| {
            // A file may vanish between the listing and the stat (a concurrent retirement).
            let size = std::fs::metadata(&path).ok()?.len();
            Some((id, path, size))
        })
        .collect()
}

fn ids(files: &[(u64, PathBuf, u64)]) -> Vec<u64> {
    files.iter().map(|f| f.0).collect()
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// A unique value of 200-500 bytes for write number `n`.
fn value(rng: &mut StdRng, k: usize, n: usize) -> Vec<u8> {
    let mut v = format!("v{k}#{n}:").into_bytes();
    let len = rng.random_range(200..=500);
    v.resize(len, b'a' + (n % 26) as u8);
    v
}

/// A new engine on a temporary directory, with the random source and the write count that
/// [`fill`] goes on from.
fn open_new(config: Config, seed: u64) -> (tempfile::TempDir, Engine, StdRng, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config).expect("open");
    (dir, engine, StdRng::seed_from_u64(seed), 0)
}

/// Writes puts (85 %) and deletes over keys `keys`, in groups of 50 requests whose tickets
/// are all waited for before the next group (so the log gets many batches), until the
/// directory holds at least `segments` segment files.
fn fill(
    engine: &Engine,
    rng: &mut StdRng,
    keys: std::ops::Range<usize>,
    segments: usize,
    n: &mut usize,
) {
    let dir = engine.dir().to_owned();
    let mut groups = 0;
    while seg_files(&dir).len() < segments {
        groups += 1;
        assert!(
            groups < 1000,
            "wrote 1000 groups without reaching {segments} segments"
        );
        let mut tickets: Vec<Ticket> = Vec::with_capacity(50);
        for _ in 0..50 {
            let k = rng.random_range(keys.clone());
            *n += 1;
            let t = if rng.random_bool(0.15) {
                engine.delete(&key(k)).expect("delete")
            } else {
                engine.put(&key(k), &value(rng, k, *n)).expect("put")
            };
            tickets.push(t);
        }
        for t in &tickets {
            wait_ok(t, "fill");
        }
    }
}

/// What a replay of the log found.
struct Replayed {
    first_seq: u64,
    next_seq: u64,
    /// The state built from every batch with sequence >= `from`.
    state: State,
    /// Per key: the sequence of the batch holding its newest record (at >= `from`), and
    /// whether that record is a put.
    newest: BTreeMap<Vec<u8>, (u64, bool)>,
}

/// Replays `reader` from batch `from`, checking that the batches are consecutive from
/// `max(from, first_seq)` to `next_seq`.
fn replay(reader: &LogReader, from: u64, ctx: &str) -> Replayed {
    let mut out = Replayed {
        first_seq: reader.first_seq().get(),
        next_seq: reader.next_seq().get(),
        state: State::new(),
        newest: BTreeMap::new(),
    };
    let mut expect = from.max(reader.first_seq().get());
    for b in reader
        .batches_from(expect)
        .unwrap_or_else(|e| panic!("{ctx}: batches_from({expect}): {e}"))
    {
        assert_eq!(b.seq(), expect, "{ctx}: batches must be consecutive");
        expect += 1;
        apply_batch(&mut out.state, &b);
        for r in b.records() {
            out.newest
                .insert(r.key.to_vec(), (b.seq().get(), r.op == RecordOp::Put));
        }
    }
    assert_eq!(
        expect,
        reader.next_seq().get(),
        "{ctx}: replay ends at next_seq"
    );
    out
}

fn assert_state(got: &State, want: &State, ctx: &str) {
    assert!(
        got == want,
        "{ctx}: states differ ({} keys vs {} expected):\n{}",
        got.len(),
        want.len(),
        state_diff(got, want)
    );
}

#[test]
fn retiring_a_prefix_forgets_exactly_what_reopening_forgets() {
    let (dir, engine, mut rng, mut n) = open_new(config(), 1);
    // Keys 0..100 first, then 50..200: keys below 50 are written only early on, so most of
    // them have their newest record in the segments that are retired.
    fill(&engine, &mut rng, 0..100, 4, &mut n);
    fill(&engine, &mut rng, 50..200, 7, &mut n);
    let files = seg_files(dir.path());
    assert!(files.len() >= 7, "{} segment files", files.len());
    let seq = files[3].0;

    let before = engine.replay().expect("replay before");
    assert_eq!(before.first_seq(), 1, "nothing retired yet");
    let full = replay(&before, 0, "full replay");
    let kept = replay(&before, seq, "replay of the kept segments");
    drop(before);
    let state_before = engine_state(&engine);
    assert_state(&state_before, &full.state, "engine state vs full replay");

    // A key live before is forgotten when its newest record is in a retired segment.
    let forgotten: Vec<&Vec<u8>> = state_before
        .keys()
        .filter(|k| full.newest[*k].0 < seq)
        .collect();
    for k in &forgotten {
        assert!(!kept.state.contains_key(*k), "model: forgotten key is kept");
    }
    for (k, v) in &kept.state {
        assert_eq!(state_before.get(k), Some(v), "model: kept key changed");
    }
    assert_eq!(
        forgotten.len() + kept.state.len(),
        state_before.len(),
        "model"
    );
    assert!(
        !forgotten.is_empty() && !kept.state.is_empty(),
        "the test needs forgotten ({}) and kept ({}) keys",
        forgotten.len(),
        kept.state.len()
    );

    let r = engine.retire_before(seq).expect("retire_before");
    let removable = (0..files.len() - 1)
        .filter(|&i| files[i + 1].0 <= seq)
        .count();
    assert_eq!(removable, 3);
    assert_eq!(
        r,
        Retired {
            segments: removable,
            bytes: files[..removable].iter().map(|f| f.2).sum(),
            keys_forgotten: forgotten.len(),
            first_seq: seq.into(),
            recycled: 0,
            held_back_by: None,
        }
    );
    for f in &files[..removable] {
        assert!(!f.1.exists(), "{} should be removed", f.1.display());
    }
    let after_files = seg_files(dir.path());
    assert_eq!(
        ids(&after_files),
        ids(&files[removable..]),
        "remaining files"
    );
    assert_eq!(after_files[0].0, r.first_seq.get());

    let reader = engine.replay().expect("replay after");
    assert_eq!(reader.first_seq(), r.first_seq);
    assert_eq!(reader.segment_count(), files.len() - removable);
    let now = replay(&reader, 0, "replay after retirement");
    assert_eq!(now.next_seq, full.next_seq, "retirement keeps the tail");
    assert_state(&now.state, &kept.state, "replay after retirement");
    drop(reader);

    let state_after = engine_state(&engine);
    assert_state(&state_after, &kept.state, "engine state after retirement");
    assert_eq!(engine.len(), kept.state.len());
    assert_eq!(state_before.len() - state_after.len(), r.keys_forgotten);

    // Windowed gets and direct reads agree, over every key ever written.
    let gets: Vec<_> = (0..200)
        .map(|i| (key(i), engine.get(&key(i)).expect("get")))
        .collect();
    for (k, t) in gets {
        let got = t.wait_timeout(WAIT_MAX).expect("get answer");
        assert_eq!(got.as_ref(), kept.state.get(&k), "get {k:?}");
        assert_eq!(
            engine.read_to_vec(&k).expect("read").as_ref(),
            kept.state.get(&k)
        );
    }
    for k in &forgotten {
        assert_eq!(engine.read(k).expect("read").as_deref(), None);
    }

    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), config()).expect("reopen");
    assert_eq!(engine.open_report().segments, files.len() - removable);
    assert_eq!(engine.open_report().batches, full.next_seq - seq);
    assert_state(&engine_state(&engine), &state_after, "reopened state");
    assert_eq!(engine.replay().expect("replay").first_seq(), seq);
    engine.close().expect("close");
}

#[test]
fn retire_never_removes_the_active_segment() {
    let (dir, engine, mut rng, mut n) = open_new(config(), 2);
    fill(&engine, &mut rng, 0..200, 5, &mut n);
    let files = seg_files(dir.path());
    let last = files.last().unwrap().0;
    let expected = replay(&engine.replay().expect("replay"), last, "last segment").state;

    let r = engine.retire_before(u64::MAX).expect("retire everything");
    assert_eq!(r.segments, files.len() - 1);
    assert_eq!(r.first_seq, last);
    assert_eq!(
        ids(&seg_files(dir.path())),
        vec![last],
        "only the active segment is left"
    );
    assert_state(
        &engine_state(&engine),
        &expected,
        "state after retiring all but the last",
    );
    // Again: nothing more to remove.
    let again = engine.retire_before(u64::MAX).expect("retire again");
    assert_eq!(
        (again.segments, again.keys_forgotten, again.first_seq.get()),
        (0, 0, last)
    );

    // The engine still writes, and what it writes is durable and readable.
    let tickets: Vec<_> = (0..100)
        .map(|i| {
            engine
                .put(
                    format!("new-{i}").as_bytes(),
                    format!("after-{i}").as_bytes(),
                )
                .expect("put")
        })
        .collect();
    for t in &tickets {
        wait_ok(t, "put after retirement");
    }
    let mut expected_after = expected.clone();
    for i in 0..100 {
        let (k, v) = (
            format!("new-{i}").into_bytes(),
            format!("after-{i}").into_bytes(),
        );
        assert_eq!(engine.read_to_vec(&k).expect("read"), Some(v.clone()));
        expected_after.insert(k, v);
    }
    let state = engine_state(&engine);
    assert_state(&state, &expected_after, "state after new puts");
    let replayed = replay(
        &engine.replay().expect("replay"),
        0,
        "replay after new puts",
    );
    assert_eq!(replayed.first_seq, last);
    assert_state(&replayed.state, &state, "replay after new puts");

    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), config()).expect("reopen");
    assert_state(&engine_state(&engine), &state, "reopened state");
    // And it keeps writing after the reopen.
    wait_ok(
        &engine.put(b"reopened", b"yes").expect("put"),
        "put after reopen",
    );
    assert_eq!(
        engine.read_to_vec(b"reopened").expect("read"),
        Some(b"yes".to_vec())
    );

    // A reopened engine retires too (its segments are numbered afresh from the new first).
    fill(&engine, &mut rng, 0..200, 4, &mut n);
    let files = seg_files(dir.path());
    let last = files.last().unwrap().0;
    let expected = replay(&engine.replay().expect("replay"), last, "last segment").state;
    let r = engine.retire_before(u64::MAX).expect("retire after reopen");
    assert_eq!((r.segments, r.first_seq.get()), (files.len() - 1, last));
    assert_eq!(ids(&seg_files(dir.path())), vec![last]);
    let state = engine_state(&engine);
    assert_state(
        &state,
        &expected,
        "state after retiring on a reopened engine",
    );
    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), config()).expect("reopen again");
    assert_state(&engine_state(&engine), &state, "state reopened again");
    engine.close().expect("close");
}

#[test]
fn retire_before_the_first_segment_is_a_no_op() {
    let (dir, engine, mut rng, mut n) = open_new(config(), 3);
    fill(&engine, &mut rng, 0..200, 4, &mut n);
    let files = seg_files(dir.path());
    assert_eq!(files[0].0, 1, "a fresh log starts at batch 1");

    let no_op = |engine: &Engine, seq: u64, first: u64, files: &[(u64, PathBuf, u64)]| {
        let state = engine_state(engine);
        let r = engine.retire_before(seq).expect("retire_before");
        assert_eq!(
            r,
            Retired {
                segments: 0,
                bytes: 0,
                keys_forgotten: 0,
                first_seq: first.into(),
                recycled: 0,
                held_back_by: None,
            },
            "retire_before({seq})"
        );
        assert_eq!(
            ids(&seg_files(engine.dir())),
            ids(files),
            "files after retire_before({seq})"
        );
        assert_state(
            &engine_state(engine),
            &state,
            &format!("retire_before({seq})"),
        );
        assert_eq!(engine.replay().expect("replay").first_seq(), first);
    };
    no_op(&engine, 0, 1, &files);
    no_op(&engine, 1, 1, &files);
    // The first segment holds batches up to files[1].0 - 1: not all of them are below that.
    no_op(&engine, files[1].0 - 1, 1, &files);

    // Retire exactly one, then the same checks against the new first segment.
    let r = engine.retire_before(files[1].0).expect("retire one");
    assert_eq!(
        (r.segments, r.bytes, r.first_seq.get()),
        (1, files[0].2, files[1].0)
    );
    let rest = &files[1..];
    let first = rest[0].0;
    no_op(&engine, 1, first, rest);
    no_op(&engine, first, first, rest);
    no_op(&engine, rest[1].0 - 1, first, rest);
    engine.close().expect("close");
}

#[test]
fn a_follower_behind_the_retired_prefix_gets_retired_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config()).expect("open");
    // A key written once, in the first batch, and never again.
    wait_ok(&engine.put(b"pinned", &[7u8; 300]).expect("put"), "pinned");
    let mut rng = StdRng::seed_from_u64(4);
    let mut n = 0;
    fill(&engine, &mut rng, 0..200, 4, &mut n);
    let files = seg_files(dir.path());

    let pinned = engine
        .read(b"pinned")
        .expect("read")
        .expect("pinned is live");
    let pinned_copy = pinned.to_vec();
    assert_eq!(pinned_copy, vec![7u8; 300]);
    let first_batch: OwnedBatch = engine
        .replay()
        .expect("replay")
        .batches()
        .next()
        .expect("a batch")
        .to_owned();
    assert_eq!(first_batch.seq, 1);

    let r = engine.retire_before(files[2].0).expect("retire");
    assert_eq!(r.segments, 2);
    let first = r.first_seq.get();
    assert_eq!(first, files[2].0);
    assert!(!files[0].1.exists(), "the pinned key's segment is gone");
    // Forgotten by the engine, but the reference read before still reads the same bytes.
    assert_eq!(engine.read(b"pinned").expect("read").as_deref(), None);
    assert_eq!(&*pinned, &pinned_copy[..], "ValueRef after retirement");
    let clone = pinned.clone();
    drop(pinned);
    assert_eq!(
        &*clone,
        &pinned_copy[..],
        "cloned ValueRef after retirement"
    );

    let expect_retired = |got: mergelog::Result<Option<OwnedBatch>>, seq: u64, ctx: &str| match got
    {
        Err(Error::Retired { seq: s, first: f }) => {
            assert_eq!(
                (s.get(), f.get()),
                (seq, first),
                "{ctx}: Retired error fields"
            )
        }
        other => panic!(
            "{ctx}: expected Error::Retired {{ seq: {seq}, first: {first} }}, got {:?}",
            other.map(|b| b.map(|b| b.seq))
        ),
    };
    let expected_first: OwnedBatch = engine
        .replay()
        .expect("replay")
        .batches()
        .next()
        .expect("a batch")
        .to_owned();
    assert_eq!(expected_first.seq, first);

    // In-process followers.
    expect_retired(engine.follow(1).try_next(), 1, "engine.follow(1).try_next");
    expect_retired(
        engine.follow(0).next_timeout(Duration::from_secs(5)),
        1,
        "engine.follow(0).next_timeout",
    );
    expect_retired(
        engine.follow(first - 1).try_next(),
        first - 1,
        "engine.follow(first - 1)",
    );
    match engine.follow(1).next() {
        Some(Err(Error::Retired { seq, first: f })) if seq == 1 && f == first => {}
        other => panic!("engine.follow(1).next(): {other:?}"),
    }
    let got = engine
        .follow(first)
        .next_timeout(WAIT_MAX)
        .expect("follow(first)")
        .expect("batch first is durable");
    assert_eq!(
        got, expected_first,
        "engine.follow(first) yields batch first"
    );

    // Followers from another handle.
    let reader = LogReader::open(dir.path()).expect("LogReader::open");
    assert_eq!(reader.first_seq(), first);
    expect_retired(
        reader.follow(1).try_next(),
        1,
        "LogReader.follow(1).try_next",
    );
    expect_retired(
        reader.follow(1).next_timeout(Duration::from_secs(5)),
        1,
        "LogReader.follow(1).next_timeout",
    );
    let got = reader
        .follow(first)
        .next_timeout(WAIT_MAX)
        .expect("reader follow(first)")
        .expect("batch first is in the log");
    assert_eq!(
        got, expected_first,
        "LogReader.follow(first) yields batch first"
    );
    // batches_from an earlier batch is refused as a follower is (it started silently at the
    // first batch the log holds, so a replay that did not check `first_seq` by hand skipped
    // the retired batches); `batches` yields what the log holds.
    let from = |view: &LogReader, from: u64| {
        view.batches_from(from)
            .map(|mut batches| batches.next().map(|b| b.to_owned()))
    };
    let view = engine.replay().expect("replay");
    for (ctx, view) in [("LogReader", &reader), ("Engine::replay", &view)] {
        expect_retired(from(view, 1), 1, &format!("{ctx}.batches_from(1)"));
        expect_retired(from(view, 0), 1, &format!("{ctx}.batches_from(0)"));
        expect_retired(
            from(view, first - 1),
            first - 1,
            &format!("{ctx}.batches_from(first - 1)"),
        );
        let got = from(view, first)
            .expect("batches_from(first)")
            .expect("batch first is in the log");
        assert_eq!(got, expected_first, "{ctx}.batches_from(first)");
        let got = view.batches().next().map(|b| b.to_owned());
        assert_eq!(got.as_ref(), Some(&expected_first), "{ctx}.batches()");
    }
    drop(view);
    assert_ne!(first_batch, expected_first);
    drop(reader);

    engine.close().expect("close");
    assert_eq!(&*clone, &pinned_copy[..], "ValueRef after close");
    drop(engine);
    assert_eq!(
        &*clone,
        &pinned_copy[..],
        "ValueRef after the engine is dropped"
    );
}

const WRITERS: usize = 3;
const WRITER_KEYS: usize = 100;
const WRITER_OPS: usize = 2500;
const DEPTH: usize = 32;
/// Each writer waits for a retirement round every this many operations.
const ROUND_EVERY: usize = 500;

fn writer_key(w: usize, k: usize) -> Vec<u8> {
    format!("w{w}/key-{k:03}").into_bytes()
}

/// Parses a value written by `concurrent_writer`: (writer, key, op number).
fn parse_writer_value(v: &[u8]) -> (usize, usize, usize) {
    let end = v.iter().position(|&b| b == b':').expect("value has a ':'");
    let s = std::str::from_utf8(&v[..end]).expect("utf-8 prefix");
    let mut parts = s.split('/').map(|p| p.parse::<usize>().expect("number"));
    (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    )
}

/// One writer: `WRITER_OPS` puts (90 %) and deletes over its own keys, up to `DEPTH`
/// tickets outstanding. Returns the last operation on each key it wrote.
fn concurrent_writer(
    engine: &Engine,
    w: usize,
    rounds: &AtomicUsize,
    done: &AtomicUsize,
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(100 + w as u64);
    let mut last = BTreeMap::new();
    let mut pending: VecDeque<Ticket> = VecDeque::new();
    for i in 0..WRITER_OPS {
        if i > 0 && i % ROUND_EVERY == 0 {
            // Let the main thread run a whole retirement round from here on, so that
            // retirements interleave with the writes however the threads are scheduled.
            let target = rounds.load(Ordering::SeqCst) + 2;
            let deadline = std::time::Instant::now() + WAIT_MAX;
            while rounds.load(Ordering::SeqCst) < target {
                assert!(std::time::Instant::now() < deadline, "no retirement round");
                std::thread::yield_now();
            }
        }
        let k = rng.random_range(0..WRITER_KEYS);
        let key = writer_key(w, k);
        let t = if rng.random_bool(0.1) {
            last.insert(key.clone(), None);
            engine.delete(&key).expect("delete")
        } else {
            let mut v = format!("{w}/{k}/{i}:").into_bytes();
            v.resize(rng.random_range(100..=400), b'x');
            last.insert(key.clone(), Some(v.clone()));
            engine.put(&key, &v).expect("put")
        };
        pending.push_back(t);
        if pending.len() >= DEPTH {
            wait_ok(&pending.pop_front().unwrap(), "writer");
        }
    }
    for t in pending {
        wait_ok(&t, "writer");
    }
    done.fetch_add(1, Ordering::SeqCst);
    last
}

#[test]
fn retirement_while_writers_write_loses_nothing_kept() {
    write_while_retiring(config());
}

#[test]
fn retirement_with_recycled_segments_while_writers_write_loses_nothing_kept() {
    write_while_retiring(Config {
        recycle_segments: 4,
        ..config()
    });
}

/// Three writers write while this thread retires all but the last few batches, again and
/// again, reads (holding some `ValueRef`s across retirements) and checks the end state
/// against a replay and a reopen.
fn write_while_retiring(config: Config) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config.clone()).expect("open");
    let done = AtomicUsize::new(0);
    let rounds = AtomicUsize::new(0);
    let mut retired_segments = 0;
    let mut retirements = 0;
    let mut recycled = 0;
    let last_ops: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (engine, rounds, done) = (&engine, &rounds, &done);
                s.spawn(move || concurrent_writer(engine, w, rounds, done))
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(99);
        // Highest op number read per key: durable state never goes back in time (a key
        // forgotten by retirement had no newer write).
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut first_seq = 1;
        let mut round = 0u64;
        // Values read and held across later retirements, with a copy of their bytes.
        let mut held: VecDeque<(mergelog::ValueRef, Vec<u8>)> = VecDeque::new();
        while done.load(Ordering::SeqCst) < WRITERS {
            round += 1;
            // Alternate between keeping the last two segments and keeping everything from
            // a few batches before the end of the log.
            let seq = if round.is_multiple_of(2) {
                let files = seg_files(dir.path());
                files[files.len().saturating_sub(2)].0
            } else {
                engine
                    .replay()
                    .expect("replay")
                    .next_seq()
                    .get()
                    .saturating_sub(8)
            };
            let r = engine.retire_before(seq).expect("retire_before");
            assert!(r.first_seq >= first_seq, "first_seq went back");
            assert!(
                r.first_seq <= seq.max(first_seq),
                "retired past seq {seq}: {r:?}"
            );
            // Nothing else removes files: the oldest on disk is the new first segment.
            assert_eq!(seg_files(dir.path())[0].0, r.first_seq.get(), "{r:?}");
            first_seq = r.first_seq.get();
            retired_segments += r.segments;
            retirements += (r.segments > 0) as usize;
            recycled += r.recycled;
            assert!(
                r.recycled <= r.segments.min(config.recycle_segments),
                "{r:?}"
            );
            for (v, copy) in &held {
                assert_eq!(&**v, &copy[..], "a ValueRef changed after a retirement");
            }

            for _ in 0..20 {
                let (w, k) = (
                    rng.random_range(0..WRITERS),
                    rng.random_range(0..WRITER_KEYS),
                );
                let key = writer_key(w, k);
                if let Some(v) = engine.read(&key).expect("read") {
                    let (vw, vk, n) = parse_writer_value(&v);
                    assert_eq!((vw, vk), (w, k), "read of {key:?} gave another key's value");
                    let prev = seen.entry(key.clone()).or_insert(n);
                    assert!(
                        n >= *prev,
                        "read of {key:?} went back from op {prev} to {n}"
                    );
                    *prev = n;
                    if held.len() >= 16 {
                        held.pop_front();
                    }
                    let copy = v.to_vec();
                    held.push_back((v, copy));
                }
            }
            let (w, k) = (
                rng.random_range(0..WRITERS),
                rng.random_range(0..WRITER_KEYS),
            );
            if let Some(v) = engine
                .get(&writer_key(w, k))
                .expect("get")
                .wait_timeout(WAIT_MAX)
                .expect("get answer")
            {
                let (vw, vk, _) = parse_writer_value(&v);
                assert_eq!((vw, vk), (w, k), "windowed get gave another key's value");
            }
            rounds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(500));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    });
    assert!(
        retired_segments > 2 && retirements > 2,
        "the test must retire while writing: {retirements} retirements, {retired_segments} segments"
    );
    if config.recycle_segments == 0 {
        assert_eq!(recycled, 0, "recycling is off");
    } else {
        assert!(recycled > 0, "recycling is on, yet no segment was recycled");
    }
    wait_ok(&engine.flush().expect("flush"), "flush");

    let reader = engine.replay().expect("replay");
    let replayed = replay(&reader, 0, "final replay");
    drop(reader);
    assert_eq!(replayed.first_seq, seg_files(dir.path())[0].0);
    let state = engine_state(&engine);
    assert_state(
        &state,
        &replayed.state,
        "engine state vs replay of the remaining log",
    );

    // Every key the remaining log holds a record of has its writer's last operation; every
    // other key was forgotten.
    let mut with_record = 0;
    for (w, last) in last_ops.iter().enumerate() {
        for (k, op) in last {
            if replayed.newest.contains_key(k) {
                with_record += 1;
                assert_eq!(state.get(k), op.as_ref(), "writer {w}: last write of {k:?}");
            } else {
                assert_eq!(state.get(k), None, "writer {w}: {k:?} has no record left");
            }
        }
    }
    assert!(with_record > 0);
    assert_eq!(
        state.len(),
        state
            .keys()
            .filter(|k| replayed.newest.contains_key(*k))
            .count()
    );

    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), config).expect("reopen");
    assert_state(&engine_state(&engine), &state, "reopened state");
    engine.close().expect("close");
}

#[test]
fn retire_after_close_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config()).expect("open");
    wait_ok(&engine.put(b"k", b"v").expect("put"), "put");
    engine.close().expect("close");
    match engine.retire_before(5) {
        Err(Error::Closed) => {}
        other => panic!("retire_before after close: expected Err(Closed), got {other:?}"),
    }
    assert_eq!(seg_files(dir.path()).len(), 1);
}

#[test]
fn a_value_ref_keeps_its_recycled_segment_unchanged() {
    // Room for all three retired segments, so that the one `pinned` is in is pooled too
    // (with less, the oldest retired segments are deleted, not pooled).
    let config = Config {
        recycle_segments: 3,
        ..config()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config.clone()).expect("open");
    wait_ok(&engine.put(b"pinned", &[7u8; 300]).expect("put"), "pinned");
    let mut rng = StdRng::seed_from_u64(9);
    let mut n = 0;
    fill(&engine, &mut rng, 0..200, 5, &mut n);
    let pinned = engine
        .read(b"pinned")
        .expect("read")
        .expect("pinned is live");
    let files = seg_files(dir.path());

    let r = engine.retire_before(files[3].0).expect("retire");
    assert_eq!(r.segments, 3, "{r:?}");
    assert!(r.recycled > 0, "{r:?}");
    assert_eq!(pool_files(dir.path()).len(), r.recycled);
    assert_eq!(ids(&seg_files(dir.path())), ids(&files[3..]));
    assert_eq!(engine.read(b"pinned").expect("read").as_deref(), None);

    // Roll through many segments: the pool is drawn on, but not the file `pinned` maps.
    let total = files.len() - 3 + 6;
    fill(&engine, &mut rng, 0..200, total, &mut n);
    assert_eq!(
        &*pinned,
        &[7u8; 300][..],
        "ValueRef into a recycled segment"
    );
    assert_eq!(
        pool_files(dir.path()).len(),
        1,
        "the rolls reuse every pooled file but the one `pinned` maps"
    );

    let replayed = replay(&engine.replay().expect("replay"), 0, "replay");
    assert_eq!(replayed.first_seq, files[3].0);
    let state = engine_state(&engine);
    assert_state(
        &state,
        &replayed.state,
        "state vs replay with recycled segments",
    );

    // Retire again with the reference dropped, then reopen a log of recycled segments.
    drop(pinned);
    let last = seg_files(dir.path()).last().unwrap().0;
    let r = engine.retire_before(last).expect("retire again");
    assert_eq!(r.first_seq, last);
    let state = engine_state(&engine);
    let replayed = replay(&engine.replay().expect("replay"), 0, "replay after");
    assert_state(
        &state,
        &replayed.state,
        "state vs replay after the second retirement",
    );
    fill(&engine, &mut rng, 0..200, 4, &mut n);
    let state = engine_state(&engine);
    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir.path(), config).expect("reopen");
    assert_state(
        &engine_state(&engine),
        &state,
        "reopened log of recycled segments",
    );
    let replayed = replay(&engine.replay().expect("replay"), 0, "replay after reopen");
    assert_state(&replayed.state, &state, "replay after reopen");
    engine.close().expect("close");
}

// One `retire_before` that removes more segments than the pool has room for keeps only as
// many as fit and deletes the rest (it once kept them all: the room was counted against the
// files already pooled, while the call added its own only after its loop).
#[test]
fn one_retirement_pools_at_most_recycle_segments_files() {
    let config = Config {
        recycle_segments: 2,
        ..config()
    };
    let (dir, engine, mut rng, mut n) = open_new(config, 10);
    fill(&engine, &mut rng, 0..200, 6, &mut n);
    let files = seg_files(dir.path());
    let r = engine.retire_before(u64::MAX).expect("retire");
    assert_eq!(r.segments, files.len() - 1);
    assert_eq!(r.recycled, 2, "{r:?}");
    assert_eq!(pool_files(dir.path()).len(), 2, "pool files after {r:?}");
    engine.close().expect("close");
}

// A follower whose current segment is retired together with the segment after it may finish
// the segment it has mapped, and must then report `Error::Retired` for the batch it asks for
// next (it once returned `Ok(None)` forever: it looked for the next segment by name only).
#[test]
fn a_follower_whose_segment_is_retired_under_it_gets_retired_error() {
    let (dir, engine, mut rng, mut n) = open_new(config(), 5);
    fill(&engine, &mut rng, 0..200, 5, &mut n);
    let files = seg_files(dir.path());
    let mut in_process = engine.follow(1);
    let reader = LogReader::open(dir.path()).expect("LogReader::open");
    let mut other = reader.follow(1);
    for f in [&mut in_process, &mut other] {
        let b = f.try_next().expect("batch 1").expect("batch 1 is durable");
        assert_eq!(b.seq, 1);
    }
    drop(reader);
    // Retires the follower's segment and the next one.
    let r = engine.retire_before(files[2].0).expect("retire");
    assert_eq!((r.segments, r.first_seq.get()), (2, files[2].0));
    for (name, f) in [
        ("engine.follow", &mut in_process),
        ("LogReader.follow", &mut other),
    ] {
        // It may finish the segment it has mapped; then it must report the retired batch.
        let mut next = 2;
        loop {
            match f.next_timeout(WAIT_MAX) {
                Ok(Some(b)) => {
                    assert_eq!(b.seq, next, "{name}: batches in order");
                    assert!(next < files[1].0, "{name}: yielded retired batch {next}");
                    next += 1;
                }
                Err(Error::Retired { seq, first }) => {
                    assert_eq!((seq.get(), first.get()), (files[1].0, r.first_seq.get()), "{name}");
                    break;
                }
                Ok(None) => panic!(
                    "{name}: stalled after batch {} (its next batch {} was retired; the log now starts at {}): expected Err(Retired)",
                    next - 1,
                    files[1].0,
                    r.first_seq
                ),
                Err(e) => panic!("{name}: unexpected error {e:?}"),
            }
        }
    }
    engine.close().expect("close");
}

// `LogReader::open` racing `retire_before`: the scan may have opened the first segment when
// the second one is removed (it once failed with NotFound then; now it scans again). A big
// first segment widens the window (its scan takes a millisecond); without the rescan about
// one open in 150 failed.
#[test]
fn a_reader_racing_retirement_opens_a_suffix_of_the_log() {
    let template = tempfile::tempdir().expect("tempdir");
    {
        let big = Config {
            segment_bytes: 8 << 20,
            ..config()
        };
        let engine = Engine::open(template.path(), big).expect("open");
        let mut rng = StdRng::seed_from_u64(7);
        let mut n = 0;
        fill(&engine, &mut rng, 0..200, 2, &mut n);
        engine.close().expect("close");
        let engine = Engine::open(template.path(), config()).expect("reopen");
        fill(&engine, &mut rng, 0..200, 4, &mut n);
        engine.close().expect("close");
    }
    let files = seg_files(template.path());
    let mut errors = Vec::new();
    let mut opened = 0;
    let mut rng = StdRng::seed_from_u64(8);
    for _ in 0..40 {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in &files {
            std::fs::copy(&f.1, dir.path().join(f.1.file_name().unwrap())).expect("copy");
        }
        let engine = Engine::open(dir.path(), config()).expect("open copy");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let (mut errs, mut ok) = (Vec::new(), 0);
                while !stop.load(Ordering::SeqCst) {
                    match LogReader::open(dir.path()) {
                        Ok(r) => {
                            // Whatever it saw is a consistent suffix ending at the same batch.
                            let last = r.batches().last().map(|b| b.seq());
                            assert_eq!(last, Some(r.next_seq() - 1));
                            ok += 1;
                        }
                        Err(e) => errs.push(e.to_string()),
                    }
                }
                (errs, ok)
            });
            std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
            engine.retire_before(files[2].0).expect("retire");
            std::thread::sleep(Duration::from_millis(5));
            stop.store(true, Ordering::SeqCst);
            let (e, ok) = h.join().expect("reader thread");
            errors.extend(e);
            opened += ok;
        });
        engine.close().expect("close");
    }
    assert!(
        errors.is_empty(),
        "{} LogReader::open calls failed ({opened} succeeded), e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(2)]
    );
}

/// The mappings of the process that map `path`, as `/proc/self/maps` lists them (a removed
/// file's with " (deleted)" after its name).
fn mappings_of(path: &Path) -> Vec<String> {
    let name = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(name))
        .map(str::to_owned)
        .collect()
}

/// An open that cut a torn roll (the next segment's name on zeros: a power loss between the
/// rename and the first sync) reopens the segment before it writable, and kept its read-only
/// mapping, through which the index was built, for the engine's whole life: once that segment
/// was retired, its removed file stayed mapped (its space not freed until the engine closed,
/// and a pooled one never reused, its `flock` held). A retirement lets go of it with the
/// index's pointers into it.
#[test]
fn a_segment_reopened_by_recovery_is_unmapped_once_retired() {
    let dir = tempfile::tempdir().unwrap();
    let put = |engine: &Engine, i: usize| {
        engine.put(&key(i), &[7u8; 300]).unwrap().wait().unwrap();
    };
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut i = 0;
    while engine.segments().len() < 2 {
        put(&engine, i);
        i += 1;
    }
    let next = engine.replay().unwrap().next_seq().get();
    engine.close().unwrap();
    drop(engine);
    let torn = dir
        .path()
        .join(mergelog::internals::format::segment_file_name(next));
    std::fs::write(&torn, vec![0u8; SEGMENT_BYTES as usize]).unwrap();

    let engine = Engine::open(dir.path(), config()).unwrap();
    let cut = engine
        .open_report()
        .truncated
        .clone()
        .expect("the torn roll is cut");
    assert_eq!(cut.path, torn);
    let reopened = engine.segments().last().unwrap().path.clone();
    while engine.segments().len() < 4 {
        put(&engine, i);
        i += 1;
    }
    let last = engine.segments().last().unwrap().first_seq;
    let retired = engine.retire_before(last).unwrap();
    assert_eq!(retired.segments, 3);
    assert!(!reopened.exists());
    assert_eq!(
        mappings_of(&reopened),
        Vec::<String>::new(),
        "the retired segment {} is still mapped",
        reopened.display()
    );
    // What the index still holds reads back (none of it pointed into the dropped mapping);
    // the keys whose newest record was retired are forgotten.
    for k in 0..i {
        if let Some(v) = engine.read(&key(k)).unwrap() {
            assert_eq!(&*v, &[7u8; 300][..]);
        }
    }
    assert!(engine.read(&key(i - 1)).unwrap().is_some());
    engine.close().unwrap();
}
