//! Replay and follow tests: `LogReader::batches` replayed into a map equals the engine's
//! state; `batches_from` yields exactly the batches from a sequence number on; sorted batches
//! are strictly ascending; followers (in-process through `Engine::follow`, and from another
//! handle through `LogReader::follow`) yield every batch once, in order, without gaps, while
//! writers write; a `LogReader` opened while the engine writes sees a consistent prefix that
//! holds every acknowledged write.

mod common;

use common::model::{
    apply_batch, apply_owned, apply_writes, assert_sorted_ascending, state_diff, WriteOp,
};
use common::{assert_reads_match, engine_state, wait_ok, State, WAIT_MAX};
use mergelog::{
    Config, Engine, Follower, GetTicket, LogReader, OwnedBatch, RecoveryMode, Ticket, WriteBatch,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SEGMENT_BYTES: u64 = 64 << 10;
const KEYS: usize = 64;

fn config(coalesce: bool) -> Config {
    Config {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        coalesce,
        ..Config::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    match i % 3 {
        0 => format!("k{i}").into_bytes(),
        1 => format!("common-prefix/{i:03}").into_bytes(),
        _ => vec![0xfe, i as u8, b'/', (i * 7) as u8],
    }
}

/// What one writer thread submitted: requests by ticket position, and windowed gets.
#[derive(Default)]
struct Submitted {
    /// (position, ops) of every write request; a `WriteBatch` is one position.
    writes: Vec<(u64, Vec<WriteOp>)>,
    /// (position, key, answer) of every windowed get.
    gets: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
}

impl Submitted {
    fn write_ops(&self) -> u64 {
        self.writes.iter().map(|(_, ops)| ops.len() as u64).sum()
    }
}

/// One writer: `ops` requests (puts, deletes, write batches and some windowed gets) over a
/// zipf-distributed key space, with up to `depth` tickets outstanding. Every value is unique.
fn writer(engine: &Engine, w: usize, seed: u64, ops: usize, depth: usize) -> Submitted {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(KEYS as f64, 0.99).expect("zipf");
    let mut out = Submitted::default();
    let mut pending: Vec<Ticket> = Vec::new();
    let mut gets: Vec<(Vec<u8>, GetTicket)> = Vec::new();
    let mut batch = WriteBatch::new();
    for i in 0..ops {
        let pick = |rng: &mut StdRng| key(zipf.sample(rng) as usize - 1);
        let roll = rng.random_range(0..100);
        if roll < 8 {
            let k = pick(&mut rng);
            let t = engine.get(&k).expect("get");
            gets.push((k, t));
            continue;
        }
        let n = if roll < 20 {
            rng.random_range(2..=5)
        } else {
            1
        };
        let ops: Vec<WriteOp> = (0..n)
            .map(|j| {
                let k = pick(&mut rng);
                if rng.random_bool(0.2) {
                    (k, None)
                } else {
                    let pad = rng.random_range(0..200);
                    let mut v = format!("w{w}-{i}-{j}:").into_bytes();
                    v.resize(v.len() + pad, b'a' + (i % 26) as u8);
                    (k, Some(v))
                }
            })
            .collect();
        let ticket = common::model::submit(engine, &mut batch, &ops, n == 1).expect("submit");
        out.writes.push((ticket.position(), ops));
        pending.push(ticket);
        if pending.len() >= depth {
            for t in pending.drain(..) {
                wait_ok(&t, "writer");
            }
        }
    }
    for t in pending.drain(..) {
        wait_ok(&t, "writer");
    }
    for (k, t) in gets {
        let pos = t.position();
        let v = t.wait_timeout(WAIT_MAX).expect("get answer");
        out.gets.push((pos, k, v));
    }
    out
}

/// Runs `writers` writer threads against `engine` and returns what they submitted.
fn write_concurrently(
    engine: &Engine,
    writers: usize,
    ops: usize,
    seed: u64,
    depth: usize,
) -> Vec<Submitted> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let seed = seed.wrapping_mul(31).wrapping_add(w as u64);
                s.spawn(move || writer(engine, w, seed, ops, depth))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    })
}

/// Applies everything submitted, in the engine's order (ticket positions), to `model`, and
/// checks every windowed get against the model at its place.
fn apply_in_order(model: &mut State, subs: &[Submitted]) {
    enum Req<'a> {
        Write(&'a [WriteOp]),
        Get(&'a [u8], &'a Option<Vec<u8>>),
    }
    let mut all: Vec<(u64, Req<'_>)> = Vec::new();
    for s in subs {
        all.extend(s.writes.iter().map(|(p, ops)| (*p, Req::Write(ops))));
        all.extend(s.gets.iter().map(|(p, k, v)| (*p, Req::Get(k, v))));
    }
    all.sort_by_key(|(p, _)| *p);
    for pair in all.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "two requests share position {}",
            pair[0].0
        );
    }
    for (pos, req) in all {
        match req {
            Req::Write(ops) => apply_writes(model, ops),
            Req::Get(k, v) => assert_eq!(
                v.as_ref(),
                model.get(k),
                "windowed get of {k:?} at position {pos} disagrees with the model"
            ),
        }
    }
}

/// Replays every batch of `reader` from empty, checking sequence numbers (consecutive from
/// 1) and sortedness. Returns the state and the batches.
fn replay_all(reader: &LogReader, ctx: &str) -> (State, Vec<OwnedBatch>) {
    let mut state = State::new();
    let mut batches = Vec::new();
    for b in reader.batches() {
        assert_eq!(
            b.seq(),
            batches.len() as u64 + 1,
            "{ctx}: batch sequence numbers must be consecutive from 1"
        );
        apply_batch(&mut state, &b);
        let owned = b.to_owned();
        assert_eq!(owned.records.len(), b.len(), "{ctx}: record count");
        assert_sorted_ascending(&owned);
        batches.push(owned);
    }
    assert_eq!(
        reader.next_seq(),
        batches.len() as u64 + 1,
        "{ctx}: next_seq after the last batch"
    );
    (state, batches)
}

#[test]
fn replay_equals_engine_state_with_coalescing_on_and_off() {
    for coalesce in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = format!("coalesce {coalesce}");
        let mut model = State::new();
        let mut batches_before = 0usize;
        // Three engine sessions on one directory: replay covers logs written by several.
        for session in 0..3u64 {
            let engine = Engine::open(dir.path(), config(coalesce)).expect("open");
            let subs = write_concurrently(&engine, 3, 1500, 1000 * session + coalesce as u64, 16);
            wait_ok(&engine.flush().expect("flush"), &ctx);
            apply_in_order(&mut model, &subs);
            let state = engine_state(&engine);
            assert!(
                state == model,
                "{ctx} session {session}: engine state vs model:\n{}",
                state_diff(&state, &model)
            );
            let probe: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
            assert_reads_match(&engine, &state, probe.iter().map(|k| &k[..]), &ctx);

            // Replay while the engine is open, then after close.
            let reader = engine.replay().expect("replay while open");
            let (replayed, batches) = replay_all(&reader, &ctx);
            assert!(
                replayed == state,
                "{ctx} session {session}: replay vs engine state:\n{}",
                state_diff(&replayed, &state)
            );
            let new = &batches[batches_before..];
            assert!(!new.is_empty(), "{ctx}: the session wrote no batch");
            // Every write op is acknowledged by exactly one frame of this session.
            let acked: u64 = reader
                .batches_from(batches_before as u64 + 1)
                .expect("batches_from")
                .map(|b| u64::from(b.ops_acknowledged()))
                .sum();
            let written: u64 = subs.iter().map(Submitted::write_ops).sum();
            assert_eq!(acked, written, "{ctx}: sum of ops_acknowledged");
            for b in new {
                if coalesce {
                    assert!(
                        b.sorted,
                        "{ctx}: batch {} not sorted with coalescing",
                        b.seq
                    );
                }
                if !coalesce {
                    assert!(!b.records.is_empty(), "{ctx}: empty batch {}", b.seq);
                }
            }
            if !coalesce {
                let records: usize = new.iter().map(|b| b.records.len()).sum();
                assert_eq!(
                    records as u64, written,
                    "{ctx}: no coalescing means no write lost"
                );
            }
            batches_before = batches.len();
            drop(reader);
            engine.close().expect("close");
        }
        // A closed log is clean: the strictest mode opens it, and replays the same state.
        let reader =
            LogReader::open_with(dir.path(), RecoveryMode::AbsoluteConsistency).expect("reader");
        assert!(reader.segment_count() >= 3, "{ctx}: want several segments");
        let (replayed, batches) = replay_all(&reader, &ctx);
        assert!(
            replayed == model,
            "{ctx}: replay after close:\n{}",
            state_diff(&replayed, &model)
        );
        assert_eq!(batches.len(), batches_before);
        check_batches_from(&reader, &batches, &ctx);
    }
}

/// `batches_from(from)` yields exactly the batches with `seq >= from`, for every interesting
/// `from`: the start, segment boundaries and their neighbours, and the end; past the end it
/// is `Error::PastEnd`.
fn check_batches_from(reader: &LogReader, all: &[OwnedBatch], ctx: &str) {
    let last = all.len() as u64;
    let mut froms = vec![
        0,
        1,
        2,
        last / 2,
        last - 1,
        last,
        last + 1,
        last + 100,
        u64::MAX,
    ];
    for path in reader.segments().into_iter().map(|s| s.path) {
        let id: u64 = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("segment id from the file name");
        froms.extend([id.saturating_sub(1), id, id + 1]);
    }
    for from in froms {
        if from > last + 1 {
            match reader
                .batches_from(from)
                .map(|mut b| b.next().map(|b| b.seq()))
            {
                Err(mergelog::Error::PastEnd { seq, next }) => assert_eq!(
                    (seq.get(), next.get()),
                    (from, last + 1),
                    "{ctx}: batches_from({from}): PastEnd fields"
                ),
                other => panic!("{ctx}: batches_from({from}) past the end gave {other:?}"),
            }
            continue;
        }
        let got: Vec<OwnedBatch> = reader
            .batches_from(from)
            .unwrap_or_else(|e| panic!("{ctx}: batches_from({from}): {e}"))
            .map(|b| b.to_owned())
            .collect();
        let want: Vec<&OwnedBatch> = all.iter().filter(|b| b.seq >= from).collect();
        assert_eq!(
            got.iter().map(|b| b.seq).collect::<Vec<_>>(),
            want.iter().map(|b| b.seq).collect::<Vec<_>>(),
            "{ctx}: batches_from({from})"
        );
        assert!(
            got.iter().zip(&want).all(|(g, w)| g == *w),
            "{ctx}: batches_from({from}) contents"
        );
    }
}

/// Collects what a follower yields until `target` (set once the writers are done) is reached.
fn follow_until(mut follower: Follower, first: u64, target: &AtomicU64) -> Vec<OwnedBatch> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got: Vec<OwnedBatch> = Vec::new();
    loop {
        let next = first + got.len() as u64;
        if next > target.load(Ordering::Acquire) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "follower stuck before batch {next}"
        );
        match follower.next_timeout(Duration::from_millis(20)) {
            Ok(Some(b)) => {
                assert_eq!(b.seq, next, "the follower skipped or repeated a batch");
                assert_sorted_ascending(&b);
                got.push(b);
                assert_eq!(follower.next_seq(), next + 1);
            }
            Ok(None) => {}
            Err(e) => panic!("follower failed at batch {next}: {e}"),
        }
    }
}

/// Runs writers with followers attached (made by `make_follower` once the engine is open),
/// then checks that each follower yielded every batch from its start, in order, and that
/// replaying them equals the final state.
fn followers_see_every_batch(make_follower: fn(&Engine, &Path, u64) -> Follower, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config(true)).expect("open");
    // Something before the followers start, so that one of them starts mid-log.
    let pre = write_concurrently(&engine, 2, 300, 7, 8);
    wait_ok(&engine.flush().expect("flush"), what);
    let mid = engine.replay().expect("replay").next_seq().get() / 2 + 1;
    let target = AtomicU64::new(u64::MAX);
    let (from_start, from_mid, subs) = std::thread::scope(|s| {
        let f1 = make_follower(&engine, dir.path(), 1);
        let f2 = make_follower(&engine, dir.path(), mid);
        let target = &target;
        let h1 = s.spawn(move || follow_until(f1, 1, target));
        let h2 = s.spawn(move || follow_until(f2, mid, target));
        let subs = write_concurrently(&engine, 3, 2500, 8, 12);
        wait_ok(&engine.flush().expect("flush"), what);
        let last = engine.replay().expect("replay").next_seq().get() - 1;
        target.store(last, Ordering::Release);
        (
            h1.join().expect("follower thread"),
            h2.join().expect("follower thread"),
            subs,
        )
    });
    let mut model = State::new();
    apply_in_order(&mut model, &pre);
    apply_in_order(&mut model, &subs);
    let state = engine_state(&engine);
    assert!(
        state == model,
        "{what}: engine vs model:\n{}",
        state_diff(&state, &model)
    );

    let reader = engine.replay().expect("replay");
    let (_, all) = replay_all(&reader, what);
    assert!(
        reader.segment_count() >= 3,
        "{what}: want segment rolls while following"
    );
    assert_eq!(
        from_start.len(),
        all.len(),
        "{what}: follower from 1 yielded too few"
    );
    assert!(
        from_start == all,
        "{what}: follower batches differ from the log"
    );
    assert!(
        from_mid[..] == all[mid as usize - 1..],
        "{what}: follower from {mid} differs from the log"
    );
    let mut followed = State::new();
    for b in &from_start {
        apply_owned(&mut followed, b);
    }
    assert!(
        followed == state,
        "{what}: replaying what the follower yielded:\n{}",
        state_diff(&followed, &state)
    );
    engine.close().expect("close");
}

#[test]
fn engine_follower_yields_every_batch_in_order() {
    followers_see_every_batch(|engine, _, from| engine.follow(from), "Engine::follow");
}

#[test]
fn log_reader_follower_from_another_handle() {
    followers_see_every_batch(
        |_, dir, from| LogReader::open(dir).expect("reader").follow(from),
        "LogReader::follow",
    );
}

fn batch_hash(b: &OwnedBatch) -> u64 {
    let mut h = DefaultHasher::new();
    b.seq.hash(&mut h);
    b.sorted.hash(&mut h);
    for mergelog::OwnedRecord {
        op,
        key: k,
        value: v,
    } in &b.records
    {
        (*op as u8).hash(&mut h);
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

/// Readers opened while the engine writes (no lock) each see a prefix of the final log:
/// consecutive batches from 1, growing from one reader to the next, and every write
/// acknowledged before the reader was opened.
#[test]
fn log_reader_opened_while_writing_sees_a_consistent_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config(true)).expect("open");
    let done = AtomicBool::new(false);
    let mut snapshots: Vec<Vec<u64>> = Vec::new();
    let mut probes = 0u64;
    let subs = std::thread::scope(|s| {
        let writers = s.spawn(|| {
            let subs = write_concurrently(&engine, 3, 3000, 99, 8);
            done.store(true, Ordering::Release);
            subs
        });
        let mut previous = 0usize;
        while !done.load(Ordering::Acquire) || snapshots.len() < 2 {
            // An acknowledged probe write must be in any reader opened after it.
            probes += 1;
            let probe_value = format!("probe {probes}").into_bytes();
            wait_ok(&engine.put(b"probe", &probe_value).expect("probe"), "probe");
            let reader = if probes.is_multiple_of(2) {
                LogReader::open(dir.path())
            } else {
                engine.replay()
            }
            .unwrap_or_else(|e| panic!("reader opened during writes failed: {e}"));
            let (state, batches) = replay_all(&reader, "reader during writes");
            assert_eq!(
                state.get(&b"probe"[..]),
                Some(&probe_value),
                "a reader opened after an acknowledged write does not see it"
            );
            assert!(
                batches.len() >= previous,
                "a later reader sees fewer batches ({} < {previous})",
                batches.len()
            );
            previous = batches.len();
            snapshots.push(batches.iter().map(batch_hash).collect());
        }
        writers.join().expect("writers")
    });
    wait_ok(&engine.flush().expect("flush"), "final flush");
    let reader = LogReader::open(dir.path()).expect("reader");
    let (state, all) = replay_all(&reader, "final");
    let mut model = State::new();
    apply_in_order(&mut model, &subs);
    let engine_now = engine_state(&engine);
    let mut without_probe = engine_now.clone();
    without_probe.remove(&b"probe"[..]);
    assert!(
        without_probe == model,
        "engine vs model:\n{}",
        state_diff(&without_probe, &model)
    );
    assert!(state == engine_now, "final replay vs engine");
    let final_hashes: Vec<u64> = all.iter().map(batch_hash).collect();
    for (i, snap) in snapshots.iter().enumerate() {
        assert!(
            final_hashes.starts_with(snap),
            "reader {i} saw {} batches that are not a prefix of the final log",
            snap.len()
        );
    }
    assert!(
        snapshots.len() >= 2,
        "want several readers during the writes"
    );
    eprintln!(
        "{} readers during the writes, final log {} batches in {} segments",
        snapshots.len(),
        all.len(),
        reader.segment_count()
    );
    engine.close().expect("close");
}

/// `batches_from(n)` steps over the frames before batch `n` by their headers; it yields
/// exactly the batches from `n` on that a full replay yields, from every starting point, in
/// the engine's own view and in another process's.
#[test]
fn batches_from_yields_what_a_full_replay_yields_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let config = mergelog::Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ..mergelog::Config::default()
    };
    let engine = mergelog::Engine::open(dir.path(), config).unwrap();
    for i in 0..300u32 {
        let value = vec![i as u8; 50 + (i as usize * 37) % 900];
        engine
            .put(format!("k{}", i % 40).as_bytes(), &value)
            .unwrap()
            .wait()
            .unwrap();
    }
    let check = |reader: &mergelog::LogReader| {
        let all: Vec<(u64, u64)> = reader
            .batches()
            .map(|b| (b.seq().get(), b.offset()))
            .collect();
        assert!(reader.segment_count() >= 3, "the log rolled");
        for from in 0..=all.len() as u64 + 1 {
            let got: Vec<(u64, u64)> = reader
                .batches_from(from)
                .unwrap_or_else(|e| panic!("from {from}: {e}"))
                .map(|b| (b.seq().get(), b.offset()))
                .collect();
            let want: Vec<(u64, u64)> = all.iter().copied().filter(|b| b.0 >= from).collect();
            assert_eq!(got, want, "from {from}");
        }
    };
    check(&engine.replay().unwrap());
    engine.close().unwrap();
    check(&mergelog::LogReader::open(dir.path()).unwrap());
}

/// A follower of the directory started past the log's end, at a batch that lands inside a
/// later segment (not at its first batch), yields it once it is written: it moves on to each
/// segment the writer rolls to. It polled for a file named after the batch itself, which
/// never came, and waited forever.
#[test]
fn a_directory_follower_started_past_the_end_reaches_a_batch_inside_a_later_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(true)).unwrap();
    let put = |i: usize| {
        // One batch per put: each is waited for before the next.
        let value = vec![b'v'; 1000];
        wait_ok(&engine.put(&key(i % KEYS), &value).unwrap(), "put");
    };
    for i in 0..10 {
        put(i);
    }
    let target = engine.durable_seq().get() + 300;
    let mut follower = LogReader::open(dir.path()).unwrap().follow(target);
    assert!(follower.try_next().unwrap().is_none(), "nothing there yet");
    let mut i = 10;
    while engine.durable_seq().get() < target + 10 {
        put(i);
        i += 1;
    }
    let starts: Vec<u64> = engine
        .segments()
        .iter()
        .map(|s| s.first_seq.get())
        .collect();
    assert!(
        !starts.contains(&target) && starts.iter().filter(|&&s| s > 1 && s < target).count() >= 2,
        "the test needs the batch inside a segment, two rolls away: segments start at {starts:?}"
    );
    let batch = follower
        .next_timeout(WAIT_MAX)
        .unwrap()
        .expect("the batch, written");
    assert_eq!(batch.seq.get(), target);
    engine.close().unwrap();
}

/// An engine on `dir` (`config(true)`) whose log has grown to `segments` segments, in batches
/// of twelve 1,000-byte puts.
fn engine_of_segments(dir: &std::path::Path, segments: usize) -> Engine {
    let engine = Engine::open(dir, config(true)).unwrap();
    let value = vec![b'v'; 1000];
    let mut i = 0u64;
    while engine.segments().len() < segments {
        let mut batch = WriteBatch::new();
        for _ in 0..12 {
            batch.put(&i.to_be_bytes(), &value);
            i += 1;
        }
        wait_ok(&engine.write(&batch).unwrap(), "batch");
    }
    engine
}

/// A directory follower reading through a log of many segments lists the directory a
/// bounded number of times, not once per segment: a listing reads every name in the
/// directory, so one per segment made a pass over S segments cost O(S²) (measured: 0.16 s
/// for 250 segments of 64 KiB, 1.8 s for 1,000). It keeps its last listing and lists again
/// only for the file after the last one it shows, or after a file it shows vanished: a
/// forced retirement past the follower meanwhile is still `Error::Retired`, never a batch
/// of a removed file.
#[test]
fn a_directory_follower_lists_the_directory_a_bounded_number_of_times_over_many_segments() {
    const SEGMENTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_of_segments(dir.path(), SEGMENTS);
    let last = engine.durable_seq().get();
    let mut follower = LogReader::open(dir.path()).unwrap().follow(1);
    let mut seen = 0;
    while let Some(b) = follower.try_next().unwrap() {
        assert_eq!(b.seq.get(), seen + 1, "batches in order, none missed");
        seen += 1;
    }
    assert_eq!(seen, last, "every batch of the log");
    let listings = follower.directory_listings();
    assert!(
        listings <= 3,
        "a directory follower through {SEGMENTS} segments listed the directory {listings} \
         times: once per segment makes a pass quadratic in the log's files"
    );

    // Another pass, stopped in the second segment while the engine retires past it.
    let mut follower = LogReader::open(dir.path()).unwrap().follow(1);
    let segments = engine.segments();
    while follower.next_seq() < segments[1].first_seq {
        follower
            .try_next()
            .unwrap()
            .expect("a batch of the first segment");
    }
    let retired = engine.retire_before_forced(segments[20].first_seq).unwrap();
    assert_eq!(retired.segments, 20);
    let mut after = Vec::new();
    let err = loop {
        match follower.try_next() {
            Ok(Some(b)) => after.push(b.seq.get()),
            Ok(None) => panic!("the follower waited after batches {after:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, mergelog::Error::Retired { .. }),
        "past a retirement: {err}"
    );
    assert!(
        after.iter().all(|&s| s < segments[2].first_seq.get()),
        "batches of retired files yielded: {after:?}"
    );
    engine.close().unwrap();
}

/// A follower of an engine in this process finds each segment it moves to in the engine's
/// list by a binary search: it searched from the list's end, so catching up from the start
/// of a log of S segments compared S - i segments to find segment i, O(S²) over the pass
/// (22 ms for 1,000 segments of 64 KiB). Counted: the segments compared, at most
/// log2(S) + 2 per segment moved to.
#[test]
fn an_engines_follower_finds_its_next_segment_by_a_binary_search() {
    const SEGMENTS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_of_segments(dir.path(), SEGMENTS);
    let last = engine.durable_seq().get();
    let segments = engine.segments().len() as u64;
    for mut follower in [engine.follow(1), engine.replay().unwrap().follow(1)] {
        let mut seen = 0;
        while let Some(b) = follower.try_next().unwrap() {
            assert_eq!(b.seq.get(), seen + 1, "batches in order, none missed");
            seen += 1;
        }
        assert_eq!(seen, last, "every batch of the log");
        let compared = follower.segments_compared();
        // log2(64) = 6 comparisons per search, and a search per segment (one more to find
        // that nothing follows the last).
        let bound = (segments + 1) * (segments.ilog2() as u64 + 2);
        assert!(
            compared <= bound,
            "a follower through {segments} segments compared {compared} segments to find \
             them (at most {bound} by a binary search): a search from the list's end makes a \
             pass quadratic in the log's segments"
        );
    }
    engine.close().unwrap();
}

/// A view of an engine (`Engine::replay`; also what `stats`, `consumers` and each commit
/// of a consumer under a bytes or age lag limit make) finds the log's end by stepping over
/// the last segment's published frames by their headers: the engine verified them at its
/// open or wrote them. It decoded every one, a CRC over every byte: each such call cost a
/// pass over the last segment, up to 64 MiB (measured: 4.6 ms per `replay` with 16 MiB in
/// it, 27 ms with 64 MiB; a throttled commit 13 and 25 ms). It still ends where a reader of
/// the directory does.
#[test]
fn an_engines_view_finds_the_logs_end_by_frame_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        segment_bytes: 4 << 20,
        ..config(true)
    };
    let engine = Engine::open(dir.path(), cfg).unwrap();
    let value = vec![b'v'; 1000];
    let mut i = 0u64;
    for _ in 0..200 {
        let mut batch = WriteBatch::new();
        for _ in 0..4 {
            batch.put(&i.to_be_bytes(), &value);
            i += 1;
        }
        wait_ok(&engine.write(&batch).unwrap(), "batch");
    }
    assert_eq!(
        engine.segments().len(),
        1,
        "the test wants its frames in the last segment"
    );
    let view = engine.replay().unwrap();
    let frames: u64 = view.batches().map(|b| b.frame_len() as u64).sum();
    let read = view.bytes_read_to_find_the_end();
    assert!(
        read * 16 <= frames,
        "making the view read {read} bytes of {frames} of frames to find the log's end: a pass \
         over the last segment for every view, consumer listing and throttled commit"
    );
    let reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(
        (view.next_seq(), view.end_offset()),
        (reader.next_seq(), reader.end_offset()),
        "the engine's view ends where a reader of the directory does"
    );
    assert_eq!(view.next_seq().get(), engine.durable_seq().get() + 1);
    engine.close().unwrap();
}

/// Damage to a frame of a segment before the last (a disk's, after the log was opened) is
/// an error for a follower, naming the file and the frame's offset, as it is for
/// `LogReader::open`: a segment the log has moved on from is complete, so a bad frame there
/// is no frame being written. A follower took it for the live end of the log and waited
/// there for ever, looking caught up while the log went on past it.
#[test]
#[allow(clippy::disallowed_methods)] // the damage, made behind the seam's back
fn a_follower_reports_damage_before_the_last_segment_instead_of_waiting_at_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(true)).unwrap();
    let mut i = 0;
    while engine.segments().len() < 3 {
        let value = vec![b'v'; 1000];
        wait_ok(&engine.put(&key(i % KEYS), &value).unwrap(), "put");
        i += 1;
    }
    // Batch `k`, in the middle of the first segment.
    let (k, path, offset) = {
        let reader = engine.replay().unwrap();
        let first: Vec<_> = reader
            .batches()
            .take_while(|b| b.segment() == reader.segments()[0].path)
            .map(|b| (b.seq().get(), b.segment().to_owned(), b.offset()))
            .collect();
        first[first.len() / 2].clone()
    };
    // Followers made before the damage: one of this engine, one of the directory.
    let mut in_process = engine.follow(1);
    let mut of_dir = LogReader::open(dir.path()).unwrap().follow(1);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // A byte of the frame's body flipped: its CRC fails.
    let at = offset + 40;
    let mut byte = [0u8];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    for (what, f) in [
        ("engine.follow", &mut in_process),
        ("LogReader.follow", &mut of_dir),
    ] {
        for seq in 1..k {
            let b = f
                .next_timeout(WAIT_MAX)
                .unwrap()
                .expect("a batch before the damage");
            assert_eq!(b.seq.get(), seq, "{what}");
        }
        // A hang guard: the log goes on two segments past it.
        match f.next_timeout(Duration::from_secs(2)) {
            Err(mergelog::Error::Corrupt {
                path: p, offset: o, ..
            }) => assert_eq!((p, o), (path.clone(), offset), "{what}"),
            other => panic!("{what}: at damaged batch {k}: {other:?}"),
        }
    }
    engine.close().unwrap();
}

/// A directory follower that moved to the last segment while it was the last one: the writer
/// then writes more frames there, one of which a disk damages (the follower has not read it),
/// and rolls on past it. The segment is complete then (a roll drains the pipeline before it
/// names the next file), so the bad frame is damage, not the live end of the log: the
/// follower must say so, `Error::Corrupt` naming the file and the frame's offset, within a
/// bounded number of waits. It waited there for ever, looking caught up: it judged the frame
/// by what was listed when it moved to the segment (nothing after it).
#[test]
fn a_directory_follower_reports_damage_in_what_was_the_last_segment_once_the_log_rolls() {
    follow_the_last_segment_through_a_roll(true);
}

/// The same without damage: the follower waiting at the end of the last segment reads the
/// frames written there next, passes through the roll and yields every batch, in order.
#[test]
fn a_directory_follower_at_the_end_of_the_last_segment_follows_it_through_a_roll() {
    follow_the_last_segment_through_a_roll(false);
}

#[allow(clippy::disallowed_methods)] // the damage, made behind the seam's back
fn follow_the_last_segment_through_a_roll(damage: bool) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(true)).unwrap();
    let value = vec![b'v'; 1000];
    let mut i = 0;
    let mut put = |engine: &Engine| {
        wait_ok(&engine.put(&key(i % KEYS), &value).unwrap(), "put");
        i += 1;
    };
    for _ in 0..5 {
        put(&engine);
    }
    let mut follower = LogReader::open(dir.path()).unwrap().follow(1);
    let mut yielded = Vec::new();
    // To the end of the last (and only) segment: the follower waits there.
    while let Some(b) = follower.next_timeout(Duration::from_millis(50)).unwrap() {
        yielded.push(b.seq.get());
    }
    let unread = follower.next_seq().get();
    assert_eq!(unread, 6, "the follower read every batch written");
    for _ in 0..5 {
        put(&engine);
    }
    assert_eq!(engine.segments().len(), 1, "no roll yet");
    // Batch `k`: written after the follower reached the end, in the same segment.
    let k = unread + 2;
    let (path, offset) = {
        let reader = engine.replay().unwrap();
        let b = reader.batches().find(|b| b.seq().get() == k).unwrap();
        (b.segment().to_owned(), b.offset())
    };
    if damage {
        // A byte of the frame's body flipped: its CRC fails.
        common::flip_byte_at(&path, offset + 40);
    }
    // The writer rolls past the segment and writes on in the next.
    while engine.segments().len() < 2 {
        put(&engine);
    }
    for _ in 0..3 {
        put(&engine);
    }
    let last = engine.replay().unwrap().next_seq().get() - 1;
    assert!(last >= k + 3, "the log went on past the damage");
    // Each wait is 20 poll intervals and many times the follower's rate limit on listings:
    // a bound on the waits, not on time.
    let mut waits = 0;
    loop {
        match follower.next_timeout(Duration::from_millis(100)) {
            Ok(Some(b)) => {
                assert!(
                    !damage || b.seq.get() < k,
                    "the damaged batch {k} was yielded"
                );
                yielded.push(b.seq.get());
                if b.seq.get() == last {
                    break;
                }
            }
            Ok(None) => {
                waits += 1;
                assert!(
                    waits < 20,
                    "the follower waits at batch {} (damage: {damage}) while the log goes on \
                     to batch {last}",
                    follower.next_seq()
                );
            }
            Err(mergelog::Error::Corrupt {
                path: p, offset: o, ..
            }) if damage => {
                assert_eq!((p, o), (path.clone(), offset));
                assert_eq!(follower.next_seq().get(), k);
                break;
            }
            Err(e) => panic!("damage: {damage}: at batch {}: {e:?}", follower.next_seq()),
        }
    }
    let end = if damage { k - 1 } else { last };
    assert_eq!(
        yielded,
        (1..=end).collect::<Vec<_>>(),
        "every batch, in order"
    );
    engine.close().unwrap();
}

/// A torn frame after the last frame of a complete segment (one whose frames reach the next
/// file's id; a fresh segment ends at its zeros there) is damage, which `LogReader::open`
/// refuses and `PointInTime` cuts at: a directory follower took it for the segment's end and
/// read on into the next file, yielding batches no open of the log holds. Found by the fuzz
/// target `follow_dir` (session 38).
#[test]
#[allow(clippy::disallowed_methods)] // the damage, made behind the seam's back
fn a_follower_reports_bytes_after_the_frames_of_a_complete_segment_as_recovery_does() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(true)).unwrap();
    let mut i = 0;
    while engine.segments().len() < 2 {
        wait_ok(&engine.put(&key(i % KEYS), &[b'v'; 1000]).unwrap(), "put");
        i += 1;
    }
    engine.close().unwrap();
    drop(engine);
    let reader = LogReader::open(dir.path()).unwrap();
    let files = reader.segments();
    let second = files[1].path.clone();
    let (first_path, end, last_in_first) = reader
        .batches()
        .filter(|b| b.segment() == files[0].path)
        .map(|b| {
            (
                b.segment().to_owned(),
                b.offset() + b.frame_len() as u64,
                b.seq(),
            )
        })
        .last()
        .unwrap();
    drop(reader);
    // The start of a frame after the last one: the magic, then bytes no CRC covers.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&first_path)
        .unwrap();
    f.write_all_at(b"MLFR\x01\x02\x03\x04\x05\x06", end)
        .unwrap();
    drop(f);
    let refused = LogReader::open(dir.path()).unwrap_err();
    assert!(
        matches!(&refused, mergelog::Error::Corrupt { path, offset, .. } if *path == first_path && *offset == end),
        "recovery: {refused}"
    );
    let reader = LogReader::open_with(dir.path(), RecoveryMode::PointInTime).unwrap();
    assert_eq!(reader.next_seq().get(), last_in_first.get() + 1);
    let mut follower = reader.follow(last_in_first);
    let batch = follower
        .try_next()
        .unwrap()
        .expect("the last batch of the first segment");
    assert_eq!(batch.seq, last_in_first);
    match follower.try_next() {
        Err(mergelog::Error::Corrupt { path, offset, .. })
            if path == first_path && offset == end => {}
        other => panic!(
            "the follower read on past damage into {}: {:?}",
            second.display(),
            other.map(|b| b.map(|b| b.seq))
        ),
    }
}

/// Writes a log of three segments (`config(true)`, puts of 1,000 bytes) and closes it: its
/// last batch and the first batch of each segment.
fn three_segments(dir: &Path) -> (u64, [u64; 3]) {
    let engine = Engine::open(dir, config(true)).unwrap();
    let mut i = 0;
    while engine.segments().len() < 3 {
        wait_ok(&engine.put(&key(i % KEYS), &[b'v'; 1000]).unwrap(), "put");
        i += 1;
    }
    let last_seq = engine.durable_seq().get();
    let firsts = [0, 1, 2].map(|s| engine.segments()[s].first_seq.get());
    engine.close().unwrap();
    (last_seq, firsts)
}

/// Flips a byte of batch 3's frame (in the first segment) of the closed log in `dir`: the
/// frame's file and offset.
#[allow(clippy::disallowed_methods)] // the damage, made behind the seam's back
fn damage_batch_3(dir: &Path) -> (std::path::PathBuf, u64) {
    use std::os::unix::fs::FileExt;
    let (path, offset) = {
        let clean = LogReader::open(dir).unwrap();
        let b = clean.batches().find(|b| b.seq().get() == 3).unwrap();
        (b.segment().to_owned(), b.offset())
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset + 40).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset + 40).unwrap();
    (path, offset)
}

/// A directory follower judges only the segments it reads: those from the one holding its
/// first batch on. Damage to a frame of an earlier segment (a disk's, after the view was
/// opened) is not its business: it yields every batch from its position, while a follower
/// from before the damage reports it (`Error::Corrupt` naming the file and the frame's
/// offset), and so does the open of a new view, whose scan reads every segment. Decided in
/// session 39 (rv39a): reading the earlier segments would cost every follower a pass over the
/// whole log to start, and a consumer resuming near the end reads nothing before it
/// (`LogReader::check` and `mergelog verify` judge the whole log).
#[test]
fn a_directory_follower_judges_only_the_segments_from_its_position_on() {
    let dir = tempfile::tempdir().unwrap();
    let (last_seq, [_, _, third]) = three_segments(dir.path());
    let view = LogReader::open(dir.path()).unwrap();
    let (path, offset) = damage_batch_3(dir.path());
    assert_eq!(path, view.segments()[0].path);
    let mut later = view.follow(third);
    for seq in third..=last_seq {
        let b = later.next_timeout(WAIT_MAX).unwrap().expect("a batch");
        assert_eq!(b.seq.get(), seq);
    }
    let mut from_start = view.follow(1);
    for seq in 1..3 {
        let b = from_start.next_timeout(WAIT_MAX).unwrap().expect("a batch");
        assert_eq!(b.seq.get(), seq);
    }
    match from_start.next_timeout(WAIT_MAX) {
        Err(mergelog::Error::Corrupt {
            path: p, offset: o, ..
        }) => assert_eq!((p, o), (path.clone(), offset)),
        other => panic!("a follower from batch 1, at the damaged batch 3: {other:?}"),
    }
    match LogReader::open(dir.path()) {
        Err(mergelog::Error::Corrupt {
            path: p, offset: o, ..
        }) => assert_eq!((p, o), (path, offset)),
        other => panic!("a new view of the damaged log: {other:?}"),
    }
}

/// A view opened with `PointInTime` over damage before its last segment ends at the damage
/// (the later segments are past it: a writer's lossy open would remove them and write other
/// batches under their numbers). A follower from that view at or past its end reads the
/// damaged segment and reports the damage, as one from before it does on reaching it, rather
/// than yielding the later segments' batches. Once a writer's `PointInTime` open has cut the
/// damage and written on, a follower of the same view reads the new batches from the cut on.
#[test]
fn a_follower_from_a_point_in_time_views_end_reports_the_damage_the_view_stopped_at() {
    let dir = tempfile::tempdir().unwrap();
    let (last_seq, [_, second, third]) = three_segments(dir.path());
    let (path, offset) = damage_batch_3(dir.path());
    let view = LogReader::open_with(dir.path(), RecoveryMode::PointInTime).unwrap();
    assert_eq!(view.next_seq().get(), 3, "the view ends at the damage");
    let damage = view.damage().expect("the view names the damage");
    assert_eq!((&damage.path, damage.offset), (&path, offset));
    for from in [3, second, third, last_seq, last_seq + 1] {
        match view.follow(from).try_next() {
            Err(mergelog::Error::Corrupt {
                path: p, offset: o, ..
            }) => assert_eq!((p, o), (path.clone(), offset), "a follower from {from}"),
            other => panic!(
                "a follower from batch {from} of a view that ends at damage in batch 3 \
                 (the log's segments start at 1, {second} and {third}): {:?}",
                other.map(|b| b.map(|b| b.seq.get()))
            ),
        }
    }
    let mut waited = view.follow(third);
    assert!(waited.try_next().is_err(), "damage, as above");
    // A writer cuts the damage and writes on.
    let engine = Engine::open(
        dir.path(),
        Config {
            recovery: RecoveryMode::PointInTime,
            ..config(true)
        },
    )
    .unwrap();
    assert_eq!(engine.durable_seq().get(), 2);
    let mut j = 0;
    while engine.durable_seq().get() < third + 2 {
        wait_ok(&engine.put(b"after the cut", &[b'n'; 1000]).unwrap(), "put");
        j += 1;
    }
    engine.close().unwrap();
    let mut from_cut = view.follow(3);
    for seq in 3..=third + 2 {
        let b = from_cut.next_timeout(WAIT_MAX).unwrap().expect("a batch");
        assert_eq!(b.seq.get(), seq);
        assert_eq!(
            b.records[0].key, b"after the cut",
            "batch {seq} is the new log's"
        );
    }
    assert!(
        from_cut.try_next().unwrap().is_none(),
        "{j} puts after the cut"
    );
    let b = waited.next_timeout(WAIT_MAX).unwrap().expect("a batch");
    assert_eq!(b.seq.get(), third);
    assert_eq!(b.records[0].key, b"after the cut");
}

/// A `WriteBatch` of more operations than `batch_ops_max` is written whole, in one frame
/// (`Config::batch_ops_max`'s docs): it is atomic, so it is never split; it joins a window
/// holding fewer operations than the limit, and nothing joins that window after it.
#[test]
fn a_write_batch_longer_than_batch_ops_max_is_written_whole_and_ends_its_window() {
    let dir = tempfile::tempdir().unwrap();
    // Windows that wait for all three requests, but for the limit.
    let config = Config {
        batch_ops_max: 2,
        window: mergelog::WindowPolicy::Linger(Duration::from_millis(200)),
        window_age_max: Duration::from_secs(1),
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).expect("open");
    let mut batch = WriteBatch::default();
    let keys: Vec<Vec<u8>> = (0..5).map(|i| format!("b{i}").into_bytes()).collect();
    for k in &keys {
        batch.put(k, b"in the batch");
    }
    let tickets = [
        engine.put(b"a", b"before").expect("put"),
        engine.write(&batch).expect("write"),
        engine.put(b"c", b"after").expect("put"),
    ];
    for t in &tickets {
        wait_ok(t, "write");
    }
    engine.close().expect("close");
    let reader = LogReader::open(dir.path()).expect("reader");
    let frames: Vec<Vec<Vec<u8>>> = reader
        .batches()
        .map(|b| b.to_owned().records.into_iter().map(|r| r.key).collect())
        .collect();
    let holding: Vec<&Vec<Vec<u8>>> = frames
        .iter()
        .filter(|f| f.iter().any(|k| k.starts_with(b"b")))
        .collect();
    assert_eq!(holding.len(), 1, "one frame holds the batch: {frames:?}");
    // Records are sorted by key in a frame: "a" sorts before the batch, "c" after it.
    let others: Vec<&Vec<u8>> = holding[0].iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        others.len() < 2,
        "fewer than batch_ops_max before it: {frames:?}"
    );
    assert!(
        others.iter().all(|k| *k == b"a"),
        "nothing after it: {frames:?}"
    );
    let mut batch_keys: Vec<&Vec<u8>> = holding[0].iter().filter(|k| keys.contains(k)).collect();
    batch_keys.dedup();
    assert_eq!(
        batch_keys,
        keys.iter().collect::<Vec<_>>(),
        "whole: {frames:?}"
    );
}
