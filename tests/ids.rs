//! Idempotent requests: a request id is logged once, whatever the resubmissions: in the same
//! window, across windows and batches, across a reopen and across retirement; the horizon
//! bounds what is remembered; batches carry their ids and commit time; logs written before
//! format version 3 still open and are continued in a new segment.

#![allow(clippy::disallowed_methods)] // tests make and inspect files directly

mod common;

use common::hold::Hold;
use common::{block_on, WAIT_MAX};
use mergelog::internals::format::{
    frame_len, record_len, FrameWriter, RecordOp, SegmentHeader, FLAG_SORTED, FORMAT_VERSION,
    SEGMENT_HEADER_LEN,
};
use mergelog::{Config, Engine, IdHorizon, LogReader, Outcome, RequestId, Seq, WriteBatch};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

fn id(n: u128) -> RequestId {
    RequestId::from(n)
}

fn small_segments() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 32 << 10,
        ..Config::default()
    }
}

/// Every request id the log holds, with the batch that holds it; an id logged twice fails.
fn logged_ids(dir: &std::path::Path) -> HashMap<RequestId, Seq> {
    let reader = LogReader::open(dir).expect("open reader");
    let mut ids = HashMap::new();
    for b in reader.batches() {
        for i in b.ids() {
            if let Some(first) = ids.insert(i, b.seq()) {
                panic!("{i} logged twice: in batches {first} and {}", b.seq());
            }
        }
    }
    ids
}

#[test]
fn a_resubmitted_id_is_a_duplicate_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), Config::default()).unwrap();
    let first = e
        .put_with_id(id(1), b"k", b"first")
        .unwrap()
        .wait()
        .unwrap();
    let Outcome::Written(seq) = first else {
        panic!("the first submission is written: {first:?}")
    };
    // Its value does not overwrite the original's.
    let again = e.put_with_id(id(1), b"k", b"second").unwrap();
    assert_eq!(again.wait().unwrap(), Outcome::Duplicate { seq });
    assert_eq!(e.read_to_vec(b"k").unwrap().as_deref(), Some(&b"first"[..]));
    // Another write to the key, then the duplicate again: still nothing written.
    e.put(b"k", b"third").unwrap().wait().unwrap();
    let d = e.delete_with_id(id(1), b"k").unwrap().wait().unwrap();
    assert_eq!(d, Outcome::Duplicate { seq });
    assert_eq!(e.read_to_vec(b"k").unwrap().as_deref(), Some(&b"third"[..]));
    // A batch with a known id applies none of its operations.
    let mut b = WriteBatch::new();
    b.put(b"x", b"1").delete(b"k");
    assert_eq!(
        e.write_with_id(id(1), &b).unwrap().wait().unwrap(),
        Outcome::Duplicate { seq }
    );
    assert_eq!(e.read_to_vec(b"x").unwrap(), None);
    let w = e.write_with_id(id(2), &b).unwrap().wait().unwrap();
    assert!(!w.is_duplicate());
    assert_eq!(e.read_to_vec(b"x").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(e.request_id_seq(id(2)), Some(w.seq()));
    assert_eq!(e.request_id_seq(id(3)), None);
    e.close().unwrap();
    let logged = logged_ids(dir.path());
    assert_eq!(logged, HashMap::from([(id(1), seq), (id(2), w.seq())]));
}

/// Many submissions of the same ids without waiting, from several threads: they share
/// windows and cross them. Each id is written once, by one submission; every other is a
/// duplicate naming that submission's batch; only the written submission's value is applied.
#[test]
fn concurrent_resubmissions_collapse_to_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path(), Config::default()).unwrap());
    const IDS: u128 = 200;
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..IDS)
                    .flat_map(|n| [n, (n * 7) % IDS])
                    .map(|n| {
                        let key = format!("k{n}");
                        (n, t, e.put_with_id(id(n), key.as_bytes(), &[t]).unwrap())
                    })
                    .collect();
                tickets
                    .into_iter()
                    .map(|(n, t, tk)| (n, t, tk.wait_timeout(WAIT_MAX).unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<(u128, u8, Outcome)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut written: HashMap<u128, (u8, Seq)> = HashMap::new();
    for &(n, t, o) in &outcomes {
        if let Outcome::Written(seq) = o {
            assert!(
                written.insert(n, (t, seq)).is_none(),
                "id {n} written twice"
            );
        }
    }
    assert_eq!(written.len(), IDS as usize, "every id written once");
    for &(n, _, o) in &outcomes {
        assert_eq!(
            o.seq(),
            written[&n].1,
            "id {n}: every outcome names the write's batch"
        );
        let key = format!("k{n}");
        let value = e.read_to_vec(key.as_bytes()).unwrap().unwrap();
        assert_eq!(
            value,
            vec![written[&n].0],
            "id {n}: the written submission's value"
        );
    }
    let counts = e.counts();
    let dups = outcomes.len() as u64 - IDS as u64;
    assert!(counts.duplicates <= dups, "{} > {dups}", counts.duplicates);
    e.close().unwrap();
    let logged = logged_ids(dir.path());
    assert_eq!(logged.len(), IDS as usize);
    for (n, (_, seq)) in written {
        assert_eq!(logged[&id(n)], seq);
    }
}

#[test]
fn ids_are_remembered_across_reopen_and_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![7u8; 1000];
    let mut seqs = HashMap::new();
    {
        let e = Engine::open(dir.path(), small_segments()).unwrap();
        for n in 0..300u128 {
            let key = format!("k{}", n % 10);
            let o = e.put_with_id(id(n), key.as_bytes(), &value).unwrap();
            seqs.insert(n, o.wait().unwrap().seq());
        }
        assert!(
            e.segments().len() > 3,
            "the log rolled: {:?}",
            e.segments().len()
        );
        let r = e.retire_before(e.durable_seq()).unwrap();
        assert!(r.segments >= 3, "{r:?}");
        assert!(dir.path().join("ids").exists(), "retired ids are carried");
        // Still remembered in this run, though their segments are gone.
        let o = e
            .put_with_id(id(0), b"k0", b"again")
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(o, Outcome::Duplicate { seq: seqs[&0] });
        e.close().unwrap();
    }
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for n in (0..300u128).step_by(7) {
        let o = e
            .put_with_id(id(n), b"k", b"again")
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            o,
            Outcome::Duplicate { seq: seqs[&n] },
            "id {n} after reopen"
        );
    }
    assert_eq!(
        e.read_to_vec(b"k").unwrap(),
        None,
        "no duplicate was applied"
    );
    // A second retirement rewrites the file with what is still remembered.
    for n in 300..400u128 {
        e.put_with_id(id(n), b"k1", &value).unwrap().wait().unwrap();
    }
    e.retire_before(e.durable_seq()).unwrap();
    e.close().unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for n in [0u128, 150, 299, 300, 399] {
        let o = e
            .put_with_id(id(n), b"k", b"again")
            .unwrap()
            .wait()
            .unwrap();
        assert!(
            o.is_duplicate(),
            "id {n} after the second retirement and reopen"
        );
    }
    e.close().unwrap();
}

#[test]
fn the_horizon_bounds_what_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        request_ids: IdHorizon { ids: 10, age: None },
        ..Config::default()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    for n in 0..30u128 {
        e.put_with_id(id(n), b"k", b"v").unwrap().wait().unwrap();
    }
    // The newest ten are remembered, the rest forgotten: a resubmission is written again.
    assert!(e
        .put_with_id(id(25), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    assert!(!e
        .put_with_id(id(3), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    e.close().unwrap();
    // The same at reopen: the newest ten of the log.
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    assert!(e
        .put_with_id(id(3), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    assert!(!e
        .put_with_id(id(12), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    e.close().unwrap();
    // An age: ids older than it are forgotten at reopen.
    std::thread::sleep(Duration::from_millis(50));
    let aged = Config {
        request_ids: IdHorizon {
            ids: 1000,
            age: Some(Duration::from_millis(20)),
        },
        ..config
    };
    let e = Engine::open(dir.path(), aged).unwrap();
    assert!(!e
        .put_with_id(id(29), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    assert!(e
        .put_with_id(id(29), b"k", b"v")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    e.close().unwrap();
}

#[test]
fn batches_carry_their_ids_and_commit_time() {
    let dir = tempfile::tempdir().unwrap();
    let before = SystemTime::now();
    let e = Engine::open(dir.path(), Config::default()).unwrap();
    let o = block_on(e.put_with_id(id(9), b"a", b"1").unwrap()).unwrap();
    let plain = e.put(b"b", b"2").unwrap().wait().unwrap();
    let after = SystemTime::now();
    let mut consumer = e.follow(Seq::new(1));
    let mut seen = Vec::new();
    while let Some(b) = consumer.try_next().unwrap() {
        seen.push(b);
    }
    e.close().unwrap();
    let with_id = seen.iter().find(|b| b.seq == o.seq()).unwrap();
    assert_eq!(with_id.ids, vec![id(9)]);
    let t = with_id
        .commit_time
        .expect("a version 3 batch has a commit time");
    assert!(before <= t && t <= after, "{t:?} not within the test");
    let without = seen.iter().find(|b| b.seq == plain).unwrap();
    if without.seq != with_id.seq {
        assert!(without.ids.is_empty());
    }
}

/// Writes a log as a build of format version 1 did: one segment, one frame without trailer.
fn write_v1_log(dir: &std::path::Path) {
    let size = 64u64 << 10;
    let mut seg = vec![0u8; size as usize];
    let header = SegmentHeader {
        version: 1,
        ..SegmentHeader::new(1, size, false)
    };
    seg[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
    let len = frame_len(record_len(3, 3));
    let mut w = FrameWriter::new(&mut seg[SEGMENT_HEADER_LEN..][..len], 1, FLAG_SORTED);
    w.push(RecordOp::Put, b"old", b"log");
    w.finish(1);
    std::fs::write(dir.join("00000000000000000001.seg"), seg).unwrap();
}

#[test]
fn a_version_1_log_opens_and_is_continued_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_log(dir.path());
    let original = std::fs::read(dir.path().join("00000000000000000001.seg")).unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(e.read_to_vec(b"old").unwrap().as_deref(), Some(&b"log"[..]));
    let o = e.put_with_id(id(1), b"new", b"v").unwrap().wait().unwrap();
    assert_eq!(o, Outcome::Written(Seq::new(2)));
    e.close().unwrap();
    // The old segment is untouched (no frame with a trailer in a version 1 segment, which
    // an old build would take for damage); the new batch starts segment 2, version 3.
    let now = std::fs::read(dir.path().join("00000000000000000001.seg")).unwrap();
    assert!(now == original, "the version 1 segment changed");
    let seg2 = std::fs::read(dir.path().join("00000000000000000002.seg")).unwrap();
    assert_eq!(
        SegmentHeader::decode(&seg2).unwrap().version,
        FORMAT_VERSION
    );
    let reader = LogReader::open(dir.path()).unwrap();
    let batches: Vec<_> = reader
        .batches()
        .map(|b| (b.seq(), b.commit_time().is_some()))
        .collect();
    assert_eq!(batches, vec![(Seq::new(1), false), (Seq::new(2), true)]);
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert!(e
        .put_with_id(id(1), b"new", b"w")
        .unwrap()
        .wait()
        .unwrap()
        .is_duplicate());
    assert_eq!(e.read_to_vec(b"old").unwrap().as_deref(), Some(&b"log"[..]));
    e.close().unwrap();
}

#[test]
fn a_damaged_ids_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    Engine::open(dir.path(), Config::default())
        .unwrap()
        .close()
        .unwrap();
    std::fs::write(dir.path().join("ids"), b"MLIDS\0\0\0 not really").unwrap();
    let err = Engine::open(dir.path(), Config::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ids") && msg.contains("request ids file"),
        "{msg}"
    );
}

/// A crash between a retirement's removals keeps a segment whose ids the `ids` file
/// already holds: the open finds them twice and must count them once against the horizon,
/// or ids the horizon promises are forgotten (and a retry of one is applied again).
#[test]
fn a_crash_between_a_retirements_removals_forgets_no_id_the_horizon_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        request_ids: IdHorizon { ids: 8, age: None },
        ..small_segments()
    };
    let e = Engine::open(dir.path(), config.clone()).unwrap();
    let value = vec![7u8; 20_000];
    let mut seqs = HashMap::new();
    for n in 1..=10u128 {
        let key = format!("k{n}");
        let t = e.put_with_id(id(n), key.as_bytes(), &value).unwrap();
        seqs.insert(n, t.wait().unwrap().seq());
    }
    // Three 20 KB puts fill a 64 KiB segment: ids 1-3, 4-6, 7-9 and 10.
    let segments = e.segments();
    assert_eq!(segments.len(), 4, "{segments:?}");
    let second = segments[1].path.clone();
    let second_bytes = std::fs::read(&second).unwrap();
    e.retire_before(segments[2].first_seq).unwrap();
    e.close().unwrap();
    // The power went after the first removal was durable and before the second was: the
    // second segment is back, beside the `ids` file that holds its ids too.
    std::fs::write(&second, &second_bytes).unwrap();
    let e = Engine::open(dir.path(), config).unwrap();
    for n in 3..=10u128 {
        assert_eq!(
            e.request_id_seq(id(n)),
            Some(seqs[&n]),
            "id {n} is among the newest 8 and must be remembered"
        );
    }
    let retried = e.put_with_id(id(3), b"k3", b"again").unwrap();
    assert!(retried.wait().unwrap().is_duplicate());
    e.close().unwrap();
}

/// A huge `ids` file (here a sparse terabyte of zeros, as a damaged directory might hold) is
/// refused from its header, not read into memory first: the error names the file and says
/// what is wrong with it. The same for one whose header claims a count its length does not
/// hold.
#[test]
fn a_huge_ids_file_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    Engine::open(dir.path(), Config::default())
        .unwrap()
        .close()
        .unwrap();
    let path = dir.path().join("ids");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 40).unwrap();
    drop(file);
    let msg = Engine::open(dir.path(), Config::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("request ids file: not a mergelog ids file") && msg.contains("ids"),
        "{msg}"
    );
    let mut header = b"MLIDS\0\0\0".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&3u64.to_le_bytes());
    std::fs::write(&path, &header).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1 << 40).unwrap();
    drop(file);
    let check = LogReader::check(dir.path(), Default::default(), Default::default());
    let msg = check.unwrap_err().to_string();
    assert!(
        msg.contains("request ids file: the count does not match the length"),
        "{msg}"
    );
}

#[test]
fn a_horizon_of_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for h in [
        IdHorizon { ids: 0, age: None },
        IdHorizon {
            ids: 5,
            age: Some(Duration::ZERO),
        },
    ] {
        let config = Config {
            request_ids: h,
            ..Config::default()
        };
        let err = Engine::open(dir.path(), config).unwrap_err();
        assert!(err.to_string().contains("request_ids"), "{err}");
    }
}

/// An increment with a request id counts once, however often it is resubmitted: in its own
/// window, after it is durable, and after a reopen.
#[test]
fn an_idempotent_increment_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        merge: Some(mergelog::MergeOperator::Add),
        ..Config::default()
    };
    let one = 1i64.to_le_bytes();
    let engine = Engine::open(dir.path(), config.clone()).unwrap();
    let first = engine.merge_with_id(id(7), b"n", &one).unwrap();
    let again = engine.merge_with_id(id(7), b"n", &one).unwrap();
    let other = engine.merge_with_id(id(8), b"n", &one).unwrap();
    let seq = first.wait_timeout(WAIT_MAX).unwrap();
    assert!(!seq.is_duplicate());
    assert_eq!(
        again.wait_timeout(WAIT_MAX).unwrap(),
        Outcome::Duplicate { seq: seq.seq() }
    );
    assert!(!other.wait_timeout(WAIT_MAX).unwrap().is_duplicate());
    let late = engine.merge_with_id(id(7), b"n", &one).unwrap();
    assert!(late.wait_timeout(WAIT_MAX).unwrap().is_duplicate());
    assert_eq!(
        engine.read_to_vec(b"n").unwrap(),
        Some(2i64.to_le_bytes().to_vec())
    );
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), config).unwrap();
    let t = engine.merge_with_id(id(8), b"n", &one).unwrap();
    assert!(t.wait_timeout(WAIT_MAX).unwrap().is_duplicate());
    assert_eq!(
        engine.read_to_vec(b"n").unwrap(),
        Some(2i64.to_le_bytes().to_vec())
    );
}

/// Small segments and an `Append` operator whose results are far longer than its operands,
/// with a lingering window so that the merges below share one.
fn shedding_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 20 << 10,
        value_len_max: 20_000,
        ring_bytes: 1 << 20,
        merge: Some(mergelog::MergeOperator::Append { max_len: 20_000 }),
        window: mergelog::WindowPolicy::Linger(Duration::from_millis(30)),
        window_age_max: Duration::from_millis(100),
        ..Config::default()
    }
}

/// One window: four merges whose results (4 × 19,002 bytes) exceed a 64 KiB segment, then
/// the client's merges with ids, the last of the window: shed (`MergeRefused`). Returns the
/// outcomes of the client's merges.
fn shed_in_one_window(e: &Engine, mine: &[(u128, &[u8])]) -> Vec<mergelog::Result<Outcome>> {
    for k in 0..4u8 {
        e.put(&[k], &vec![k; 19_000]).unwrap().wait().unwrap();
    }
    let others: Vec<_> = (0..4u8).map(|k| e.merge(&[k], b"+").unwrap()).collect();
    let mine: Vec<_> = mine
        .iter()
        .map(|&(n, key)| e.merge_with_id(n, key, b"client-op").unwrap())
        .collect();
    for t in &others {
        let _ = t.wait();
    }
    mine.iter().map(|t| t.wait()).collect()
}

/// A request with an id that the flusher refused (a merge shed because the window's results
/// would not fit a segment: transient, "retry it") gives its id back: neither the table nor
/// the frame's trailer keeps it, so a retry with the same id, by a client that never saw the
/// refusal (it crashed), is applied, before or after a reopen; and not logged twice. (The
/// id stayed taken before: the retry was a `Duplicate` of nothing applied.)
#[test]
fn a_refused_requests_id_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), shedding_config()).unwrap();
    let seen = shed_in_one_window(&e, &[(0x5eed, &[9])]);
    assert!(
        matches!(seen[0], Err(mergelog::Error::MergeRefused { .. })),
        "setup: the idempotent merge was meant to be shed: {seen:?}"
    );
    assert_eq!(e.request_id_seq(0x5eed), None, "the id is not remembered");
    e.close().unwrap();
    drop(e);
    assert!(!logged_ids(dir.path()).contains_key(&id(0x5eed)));
    // The client restarts and retries its unacknowledged request with the same id.
    let e = Engine::open(dir.path(), shedding_config()).unwrap();
    let retry = e
        .merge_with_id(0x5eed, &[9], b"client-op")
        .unwrap()
        .wait()
        .unwrap();
    assert!(matches!(retry, Outcome::Written(_)), "{retry:?}");
    assert_eq!(
        e.read_to_vec(&[9]).unwrap().as_deref(),
        Some(&b"client-op"[..])
    );
    // A second retry is a duplicate of the one applied.
    let again = e
        .merge_with_id(0x5eed, &[9], b"client-op")
        .unwrap()
        .wait()
        .unwrap();
    assert!(matches!(again, Outcome::Duplicate { .. }), "{again:?}");
    assert_eq!(
        e.read_to_vec(&[9]).unwrap().as_deref(),
        Some(&b"client-op"[..])
    );
    e.close().unwrap();
    drop(e);
    assert_eq!(logged_ids(dir.path()).len(), 1);
}

/// In one window, a request refused and a later one with the same id (taken for its
/// duplicate when the window was read): both get the refusal, nothing is applied, and the id
/// is free for a retry.
#[test]
fn a_duplicate_of_a_refused_request_in_its_window_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), shedding_config()).unwrap();
    let seen = shed_in_one_window(&e, &[(0x77, &[9]), (0x77, &[9])]);
    for (i, r) in seen.iter().enumerate() {
        assert!(
            matches!(r, Err(mergelog::Error::MergeRefused { .. })),
            "request {i}: {r:?}"
        );
    }
    assert_eq!(e.read_to_vec(&[9]).unwrap(), None);
    let retry = e
        .merge_with_id(0x77, &[9], b"client-op")
        .unwrap()
        .wait()
        .unwrap();
    assert!(matches!(retry, Outcome::Written(_)), "{retry:?}");
    e.close().unwrap();
}

/// A `Custom` concatenation that refuses (a result over `value_len_max`) any operand
/// `refuse`, with a lingering window so that back-to-back submissions share one, and a
/// horizon of one id.
fn refusing_config() -> Config {
    Config {
        value_len_max: 1024,
        merge: Some(mergelog::MergeOperator::custom(|existing, ops| {
            if ops.iter().any(|o| *o == b"refuse") {
                return vec![0u8; 4096];
            }
            let mut v = existing.map(<[u8]>::to_vec).unwrap_or_default();
            for o in ops {
                v.extend_from_slice(o);
            }
            v
        })),
        request_ids: IdHorizon { ids: 1, age: None },
        window: mergelog::WindowPolicy::Linger(Duration::from_millis(50)),
        window_age_max: Duration::from_millis(200),
        ..Config::default()
    }
}

/// One window: a merge with id X that the operator refuses, a put with id Y, then a merge
/// with id X again. The table turns its generations only between windows, so the second X is
/// taken for a duplicate of the first (a horizon of one id does not forget X when Y enters)
/// and gets its refusal. Giving X back must leave Y's entry: Y, the newest id logged, stays
/// remembered (the horizon promises the newest `ids` are). A retry of X is then applied once,
/// and a retry of that is a duplicate, before and after a reopen. (Before the table turned
/// only between windows, Y's entering forgot X, the second X was applied, and the first
/// version of the give-back removed its entry; found by review.)
#[test]
fn a_refused_ids_give_back_keeps_the_ids_applied_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), refusing_config()).unwrap();
    let x: u128 = 0xAA;
    let y: u128 = 0xBB;
    let t1 = e.merge_with_id(x, b"a", b"refuse").unwrap();
    let t2 = e.put_with_id(y, b"y", b"v").unwrap();
    let t3 = e.merge_with_id(x, b"c", b"1").unwrap();
    let r1 = t1.wait();
    let r2 = t2.wait().unwrap();
    let r3 = t3.wait();
    for r in [&r1, &r3] {
        assert!(
            matches!(r, Err(mergelog::Error::MergeRefused { .. })),
            "setup: {r:?}"
        );
    }
    let Outcome::Written(s2) = r2 else {
        panic!("setup: Y written: {r2:?}")
    };
    assert_eq!(e.read_to_vec(b"c").unwrap(), None);
    assert_eq!((e.request_id_seq(y), e.request_id_seq(x)), (Some(s2), None));

    // X is free: a retry is applied, and a retry of that is a duplicate.
    let retry = e.merge_with_id(x, b"c", b"1").unwrap().wait().unwrap();
    let Outcome::Written(s3) = retry else {
        panic!("a retry of the refused X is applied: {retry:?}")
    };
    let again = e.merge_with_id(x, b"c", b"1").unwrap().wait();
    let value = e.read_to_vec(b"c").unwrap();
    e.close().unwrap();
    drop(e);
    let reopened = Engine::open(dir.path(), refusing_config()).unwrap();
    let after_reopen = reopened.request_id_seq(x);
    reopened.close().unwrap();
    assert_eq!(
        (again.ok(), value.as_deref(), after_reopen),
        (
            Some(Outcome::Duplicate { seq: s3 }),
            Some(&b"1"[..]),
            Some(s3)
        ),
    );
}

/// A refused request's id, given back, must not cost the horizon an id it promises: with a
/// horizon of one id, an increment applied (A), then a merge the operator refuses (X) in a
/// window of its own: A is still the newest id logged, so a retry of A is a duplicate, before
/// and after a reopen, and the counter holds A once. (The table turned its generations when
/// X entered, forgetting A, and giving X back left it with neither: A's retry was applied
/// again, although a reopen, which rebuilds the table from the log, remembered A.)
#[test]
fn a_refused_ids_give_back_keeps_the_ids_the_horizon_promises() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), refusing_config()).unwrap();
    let a: u128 = 0xA1;
    let x: u128 = 0xB2;
    let first = e.merge_with_id(a, b"c", b"1").unwrap().wait().unwrap();
    let Outcome::Written(seq) = first else {
        panic!("setup: A is written: {first:?}")
    };
    let refused = e.merge_with_id(x, b"r", b"refuse").unwrap().wait();
    assert!(
        matches!(refused, Err(mergelog::Error::MergeRefused { .. })),
        "setup: X is refused: {refused:?}"
    );
    let remembered = e.request_id_seq(a);
    let retry = e.merge_with_id(a, b"c", b"1").unwrap().wait().unwrap();
    let value = e.read_to_vec(b"c").unwrap();
    e.close().unwrap();
    drop(e);
    let reopened = Engine::open(dir.path(), refusing_config()).unwrap();
    let after_reopen = reopened.request_id_seq(a);
    reopened.close().unwrap();
    assert_eq!(
        (remembered, retry, value.as_deref()),
        (Some(seq), Outcome::Duplicate { seq }, Some(&b"1"[..])),
        "A, the newest id logged, was forgotten when the refused X gave its id back: its \
         retry was applied twice (a reopen remembers A: {after_reopen:?})"
    );
    assert_eq!(after_reopen, Some(seq));
}

/// The offset of entry `i` in an `ids` file.
fn ids_entry_offset(i: u64) -> u64 {
    24 + 32 * i
}

/// A closed log of batches 1..=`n`, the odd ones logging request id `100 + batch`.
fn log_of(dir: &std::path::Path, n: u64) {
    let e = Engine::open(dir, small_segments()).unwrap();
    for b in 1..=n {
        let t = if b % 2 == 1 {
            let t = e.put_with_id(id(100 + u128::from(b)), b"k", b"v").unwrap();
            t.wait().unwrap().seq()
        } else {
            e.put(b"k", b"v").unwrap().wait().unwrap()
        };
        assert_eq!(t.get(), b);
    }
    e.close().unwrap();
}

/// What `Engine::open` and `LogReader::check` say of `dir`: both must refuse it as damage
/// to the `ids` file at `offset`, with `words` in the reason. (An open that accepts it
/// reports what a retry of `retried` is answered.)
fn assert_ids_refused(dir: &std::path::Path, offset: u64, words: &str, retried: RequestId) {
    let opened = Engine::open(dir, small_segments()).map(|e| {
        let retry = e.put_with_id(retried, b"retry", b"v").unwrap().wait();
        e.close().unwrap();
        format!("a retry of {retried:?} was answered {retry:?}")
    });
    let checked = LogReader::check(dir, Default::default(), Default::default());
    let checked = checked.map(|d| format!("the check found {d:?}"));
    for (who, r) in [("open", opened), ("check", checked)] {
        match r {
            Err(mergelog::Error::Corrupt {
                path,
                offset: at,
                reason,
            }) => {
                assert_eq!(path, dir.join("ids"), "{who}: {reason}");
                assert_eq!(at, offset, "{who}: {reason}");
                assert!(reason.contains(words), "{who}: {reason}");
            }
            other => panic!("{who}: the ids file was accepted or refused otherwise: {other:?}"),
        }
    }
}

/// An `ids` file with a right CRC whose entry names a batch past the log's end (a file from
/// another log, or from a later state of this one, restored beside these segments): carried
/// ids name only batches of retired segments, so it is damage. Accepted until session 39: a
/// retry of that id was answered "duplicate of batch 50", a batch the log does not hold (and
/// which it then logs something else under).
#[test]
fn an_ids_file_naming_a_batch_past_the_logs_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    log_of(dir.path(), 4);
    let file = common::ids_file(&[(id(101), 1, 0), (id(7), 50, 0), (id(8), 50, 0)]);
    std::fs::write(dir.path().join("ids"), file).unwrap();
    assert_ids_refused(dir.path(), ids_entry_offset(1), "past the log's end", id(7));
    // A batch at the log's end exactly (the next one to be written) too.
    let file = common::ids_file(&[(id(7), 5, 0)]);
    std::fs::write(dir.path().join("ids"), file).unwrap();
    assert_ids_refused(dir.path(), ids_entry_offset(0), "past the log's end", id(7));
    // Nothing was changed: without the file the log opens, whole.
    std::fs::remove_file(dir.path().join("ids")).unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(e.durable_seq().get(), 4);
    e.close().unwrap();
}

/// An `ids` file with a right CRC whose entry names a batch the live log holds, which does
/// not log that id: a retry would be answered "duplicate of batch 2" though batch 2 logs
/// something else. Carried ids name batches of retired segments; a crash between a
/// retirement's `ids` file and its removals leaves some naming batches still live, but
/// those batches log them (`a_crash_between_a_retirements_removals_forgets_no_id_the_horizon_keeps`).
#[test]
fn an_ids_file_naming_a_live_batch_that_does_not_log_the_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    log_of(dir.path(), 4);
    // Batch 1 logs id 101 and batch 3 id 103: those entries are true; batch 2 logs no id.
    let file = common::ids_file(&[(id(101), 1, 0), (id(9), 2, 0), (id(103), 3, 0)]);
    std::fs::write(dir.path().join("ids"), file).unwrap();
    assert_ids_refused(dir.path(), ids_entry_offset(1), "does not log it", id(9));
    // Batch 3 logs an id, but another one.
    let file = common::ids_file(&[(id(101), 1, 0), (id(105), 3, 0)]);
    std::fs::write(dir.path().join("ids"), file).unwrap();
    assert_ids_refused(dir.path(), ids_entry_offset(1), "does not log it", id(105));
    // True entries of live batches (what a crash between the removals leaves) are taken.
    let file = common::ids_file(&[(id(101), 1, 0), (id(103), 3, 0)]);
    std::fs::write(dir.path().join("ids"), file).unwrap();
    assert_eq!(
        LogReader::check(dir.path(), Default::default(), Default::default()).unwrap(),
        None
    );
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(e.request_id_seq(id(103)).map(Seq::get), Some(3));
    e.close().unwrap();
}

/// A closed log whose first two segments are retired (batches 1-6, ids 1-6, carried in the
/// `ids` file the retirement wrote); batches 7-10 log ids 7-10. Returns the file's bytes.
fn log_retired(dir: &std::path::Path) -> Vec<u8> {
    let e = Engine::open(dir, small_segments()).unwrap();
    let value = vec![7u8; 20_000];
    for n in 1..=10u128 {
        let t = e
            .put_with_id(id(n), format!("k{n}").as_bytes(), &value)
            .unwrap();
        assert_eq!(t.wait().unwrap().seq().get(), n as u64);
    }
    // Three 20 KB puts fill a 64 KiB segment: batches 1-3, 4-6, 7-9 and 10.
    let segments = e.segments();
    assert_eq!(segments.len(), 4, "{segments:?}");
    e.retire_before(segments[2].first_seq).unwrap();
    e.close().unwrap();
    std::fs::read(dir.join("ids")).unwrap()
}

/// The entries of an `ids` file's bytes (id, batch, time), as `ids_file` takes them.
fn ids_entries(b: &[u8]) -> Vec<(RequestId, u64, u64)> {
    let n = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    (0..n)
        .map(|i| {
            let e = &b[24 + 32 * i..56 + 32 * i];
            let int = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().unwrap());
            (
                RequestId::from(<[u8; 16]>::try_from(&e[..16]).unwrap()),
                int(16),
                int(24),
            )
        })
        .collect()
}

/// An `ids` file with a right CRC whose entries are not oldest batch first, ids of one batch
/// in ascending bytewise order (docs/FORMAT.md): no build writes one (a retirement sorts what
/// it carries by batch, then id, and the table holds an id once; a crash leaves the old file
/// or the whole new one), so it is damage, as any other, refused naming the file and the
/// first entry out of order. Taken until session 40: its entries were read as if in order,
/// and an open's horizon, which keeps the newest entries by their place in the file, could
/// forget newer ids than the ones it kept.
#[test]
fn an_ids_file_out_of_batch_order_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let written = ids_entries(&log_retired(dir.path()));
    let batches: Vec<u64> = written.iter().map(|e| e.1).collect();
    assert_eq!(
        batches,
        [1, 2, 3, 4, 5, 6],
        "the retirement's file, oldest first"
    );
    // The engine's own entries, two of them swapped.
    let mut swapped = written.clone();
    swapped.swap(2, 4);
    std::fs::write(dir.path().join("ids"), common::ids_file(&swapped)).unwrap();
    assert_ids_refused(dir.path(), ids_entry_offset(3), "oldest batch first", id(3));
    // Two ids of one batch, the larger first; and one id twice in its batch.
    for (first, second) in [(id(0x600), id(0x500)), (id(0x500), id(0x500))] {
        let mut forged = written.clone();
        forged.insert(1, (first, 1, 0));
        forged.insert(2, (second, 1, 0));
        std::fs::write(dir.path().join("ids"), common::ids_file(&forged)).unwrap();
        assert_ids_refused(dir.path(), ids_entry_offset(2), "ascending", second);
    }
    // In order, both are taken, and the log opens with every id remembered.
    let mut forged = written.clone();
    forged.insert(1, (id(0x500), 1, 0));
    forged.insert(2, (id(0x600), 1, 0));
    std::fs::write(dir.path().join("ids"), common::ids_file(&forged)).unwrap();
    assert_eq!(
        LogReader::check(dir.path(), Default::default(), Default::default()).unwrap(),
        None
    );
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for (i, seq) in [(id(0x600), 1), (id(3), 3), (id(8), 8)] {
        assert_eq!(e.request_id_seq(i).map(Seq::get), Some(seq), "{i:?}");
    }
    e.close().unwrap();
}

/// A thread retiring every durable segment in a loop, racing the test's submits.
struct Retirer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Retirer {
    fn start(e: &std::sync::Arc<Engine>) -> Retirer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, stopped) = (e.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut retired = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                retired += e.retire_before(e.durable_seq()).unwrap().segments;
            }
            retired
        });
        Retirer { stop, thread }
    }

    /// Stops it; the segments it retired.
    fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Retries racing retirements: while one thread retires everything durable, again and again
/// (each carrying the remembered ids of what it removes to the `ids` file, its sort of them
/// made after the `ids` lock), another writes ids and retries them, the newest and older
/// ones: every retry is a duplicate naming the original's batch, in this run and after a
/// reopen, and each id is logged once.
#[test]
fn retries_racing_retirements_are_answered_with_the_originals_batch() {
    const IDS: u128 = 600;
    retries_racing_retirements(
        small_segments(),
        IDS,
        |n| [n, n / 2, n * 7 % (n + 1)],
        0..IDS,
    );
}

/// One id under two batches never: a resubmission of an id whose original is in flight
/// (written, its sync held) or earlier in the same window is a duplicate of the original's
/// batch, from the blocking and the asynchronous forms alike, a put's, a batch's and a
/// delete's, and with the smallest horizon (one id); the log holds each id once.
#[test]
fn an_id_in_flight_or_earlier_in_its_window_is_a_duplicate_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::syncs();
    let config = Config {
        request_ids: IdHorizon { ids: 1, age: None },
        window: mergelog::WindowPolicy::Linger(Duration::from_millis(20)),
        window_age_max: Duration::from_millis(20),
        ..Config::default()
    };
    let e = Engine::open_with_io(dir.path(), config.clone(), hold.clone()).unwrap();
    hold.hold_every();
    let original = e.put_with_id(id(1), b"a", b"original").unwrap();
    assert!(hold.wait_held(1), "no sync was held");
    // In flight: id 1's batch is written, its sync held. Then id 2 twice in one window (the
    // linger holds it open), and id 1 again in it, each from both forms.
    let mut batch = WriteBatch::new();
    batch.put(b"b", b"batch").delete(b"a");
    let again = [
        e.put_with_id(id(1), b"a", b"again").unwrap(),
        block_on(Box::pin(e.write_with_id_async(id(1), &batch))).unwrap(),
        e.put_with_id(id(2), b"c", b"first").unwrap(),
        block_on(Box::pin(e.put_with_id_async(id(2), b"c", b"second"))).unwrap(),
        e.write_with_id(id(2), &batch).unwrap(),
        block_on(Box::pin(e.delete_with_id_async(id(1), b"a"))).unwrap(),
    ];
    assert!(!original.is_done(), "id 1's batch was not held in flight");
    hold.release();
    let first = original.wait_timeout(WAIT_MAX).unwrap();
    let outcomes: Vec<Outcome> = again
        .into_iter()
        .map(|t| t.wait_timeout(WAIT_MAX).unwrap())
        .collect();
    let Outcome::Written(seq1) = first else {
        panic!("{first:?}")
    };
    let Outcome::Written(seq2) = outcomes[2] else {
        panic!("{outcomes:?}")
    };
    let dup = |seq| Outcome::Duplicate { seq };
    assert_eq!(
        outcomes,
        vec![
            dup(seq1),
            dup(seq1),
            Outcome::Written(seq2),
            dup(seq2),
            dup(seq2),
            dup(seq1)
        ],
        "each id written once, every resubmission its duplicate"
    );
    assert_eq!(
        e.read_to_vec(b"a").unwrap().as_deref(),
        Some(&b"original"[..])
    );
    assert_eq!(e.read_to_vec(b"b").unwrap(), None);
    assert_eq!(e.read_to_vec(b"c").unwrap().as_deref(), Some(&b"first"[..]));
    e.close().unwrap();
    // `logged_ids` fails on an id logged twice.
    assert_eq!(
        logged_ids(dir.path()),
        HashMap::from([(id(1), seq1), (id(2), seq2)])
    );
}

/// Holds the first segment write after it is armed until a request waits behind it (so that
/// the first window goes to a syncer rather than being completed by the flusher inline), and
/// every segment sync while `hold_syncs` is set: the batches written meanwhile stay in
/// flight. Counts the segment writes begun.
#[derive(Default)]
struct HoldInFlight {
    armed: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicUsize,
    release_write: std::sync::atomic::AtomicBool,
    hold_syncs: std::sync::atomic::AtomicBool,
    held: std::sync::atomic::AtomicUsize,
}

/// Waits (bounded by `WAIT_MAX`) until `cond` holds; false on time-out.
fn until(cond: impl Fn() -> bool) -> bool {
    let give_up = std::time::Instant::now() + WAIT_MAX;
    while !cond() {
        if std::time::Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

impl mergelog::internals::io::Io for HoldInFlight {
    fn before(
        &self,
        op: mergelog::internals::io::IoOp,
        path: &std::path::Path,
        _: u64,
        _: &[u8],
    ) -> std::io::Result<()> {
        use mergelog::internals::io::IoOp;
        use std::sync::atomic::Ordering::SeqCst;
        let segment = path.extension().is_some_and(|e| e == "seg");
        if !segment || !self.armed.load(SeqCst) {
            return Ok(());
        }
        let released = match op {
            IoOp::Write if self.writes.fetch_add(1, SeqCst) == 0 => {
                until(|| self.release_write.load(SeqCst))
            }
            IoOp::Sync if self.hold_syncs.load(SeqCst) => {
                self.held.fetch_add(1, SeqCst);
                until(|| !self.hold_syncs.load(SeqCst))
            }
            _ => true,
        };
        match released {
            true => Ok(()),
            false => Err(std::io::Error::other("test hook timed out")),
        }
    }
}

/// An id whose batch is in flight is remembered whatever the horizon: with the smallest one
/// (one id), and with an age shorter than a sync, a retry of id 1 while its batch waits for
/// its sync, after a later window took id 2 (the generations turned, the age passed), is a
/// duplicate of id 1's batch, and the log holds id 1 once.
#[test]
fn an_id_is_remembered_while_its_batch_is_in_flight_whatever_the_horizon() {
    use std::sync::atomic::Ordering::SeqCst;
    for horizon in [
        IdHorizon { ids: 1, age: None },
        IdHorizon {
            ids: 1 << 10,
            age: Some(Duration::from_nanos(1)),
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hold = std::sync::Arc::new(HoldInFlight::default());
        let config = Config {
            request_ids: horizon,
            // Every window is cut as soon as it has a request.
            window: mergelog::WindowPolicy::Immediate,
            ..Config::default()
        };
        let e = Engine::open_with_io(dir.path(), config, hold.clone()).unwrap();
        e.put(b"before", b"0")
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        hold.hold_syncs.store(true, SeqCst);
        hold.armed.store(true, SeqCst);
        let batches = e.stats().batches;
        let original = e.put_with_id(id(1), b"a", b"original").unwrap();
        assert!(until(|| hold.writes.load(SeqCst) == 1), "id 1's write");
        // Behind id 1's window in the ring: its window is handed to a syncer, and held.
        let second = e.put_with_id(id(2), b"b", b"second").unwrap();
        hold.release_write.store(true, SeqCst);
        // Id 2's window is written (its ids taken, and settled, before the next window is
        // read): the retry below is read in a later window.
        assert!(
            until(|| hold.writes.load(SeqCst) >= 2),
            "{horizon:?}: id 2's write"
        );
        let again = e.put_with_id(id(1), b"a", b"again").unwrap();
        assert!(
            until(|| {
                let s = e.stats();
                s.duplicates >= 1 || s.batches >= batches + 3
            }),
            "{horizon:?}: the retry's window (a duplicate, or a batch of its own)"
        );
        // Id 1's sync cannot end while held; the syncer may begin it only now.
        assert!(
            until(|| hold.held.load(SeqCst) >= 1) && !original.is_done(),
            "{horizon:?}: id 1's batch was not held in flight"
        );
        hold.hold_syncs.store(false, SeqCst);
        let first = original.wait_timeout(WAIT_MAX).unwrap();
        let Outcome::Written(seq1) = first else {
            panic!("{horizon:?}: {first:?}")
        };
        assert!(second.wait_timeout(WAIT_MAX).unwrap().seq() > seq1);
        assert_eq!(
            again.wait_timeout(WAIT_MAX).unwrap(),
            Outcome::Duplicate { seq: seq1 },
            "{horizon:?}: a retry of id 1 while its batch was in flight"
        );
        assert_eq!(
            e.read_to_vec(b"a").unwrap().as_deref(),
            Some(&b"original"[..])
        );
        e.close().unwrap();
        // `logged_ids` fails on an id logged twice.
        assert_eq!(logged_ids(dir.path()).len(), 2, "{horizon:?}");
    }
}

/// Retries racing retirements while the table's generations turn (a horizon of 64 ids, so
/// that a retirement often holds the frozen previous generation while the flusher turns past
/// it): every retry of one of the newest 64 ids is a duplicate naming the original's batch,
/// in this run and after a reopen (from the `ids` file the retirements wrote and the frames
/// left), and no retry is applied.
#[test]
fn retries_racing_retirements_across_turns_of_the_generations_are_answered_with_the_originals_batch(
) {
    const IDS: u128 = 600;
    const HORIZON: u128 = 64;
    let config = Config {
        request_ids: IdHorizon {
            ids: HORIZON as usize,
            age: None,
        },
        ..small_segments()
    };
    // The newest `HORIZON` ids are `n + 1 - HORIZON ..= n`.
    retries_racing_retirements(
        config,
        IDS,
        |n| {
            [
                n,
                n.saturating_sub(HORIZON / 2),
                n.saturating_sub(HORIZON - 1),
            ]
        },
        IDS - HORIZON..IDS,
    );
}

/// Writes ids `0..ids` while a [`Retirer`] races them, retrying the ids `retried(n)` after
/// each id `n` is written: each retry must be a duplicate naming the original's batch, as
/// must, after a reopen, a retry of each id in `kept`; no retry is applied.
fn retries_racing_retirements(
    config: Config,
    ids: u128,
    retried: impl Fn(u128) -> [u128; 3],
    kept: std::ops::Range<u128>,
) {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path(), config.clone()).unwrap());
    let retirer = Retirer::start(&e);
    let value = vec![7u8; 1000];
    let mut seqs = HashMap::new();
    for n in 0..ids {
        let key = format!("k{}", n % 10);
        let o = e.put_with_id(id(n), key.as_bytes(), &value).unwrap();
        let Outcome::Written(seq) = o.wait().unwrap() else {
            panic!("id {n}'s first submission is written")
        };
        seqs.insert(n, seq);
        for again in retried(n) {
            let o = e.put_with_id(id(again), b"x", b"again").unwrap();
            assert_eq!(
                o.wait().unwrap(),
                Outcome::Duplicate { seq: seqs[&again] },
                "id {again} retried after id {n} was written"
            );
        }
    }
    let retired = retirer.stop();
    assert!(
        retired >= 5,
        "the retirements raced the retries: {retired} segments"
    );
    assert_eq!(e.read_to_vec(b"x").unwrap(), None, "no retry applied");
    std::sync::Arc::into_inner(e).unwrap().close().unwrap();
    let e = Engine::open(dir.path(), config).unwrap();
    for n in kept {
        let o = e.put_with_id(id(n), b"x", b"again").unwrap();
        assert_eq!(
            o.wait().unwrap(),
            Outcome::Duplicate { seq: seqs[&n] },
            "id {n} after the reopen"
        );
    }
    assert_eq!(e.read_to_vec(b"x").unwrap(), None, "no retry applied");
    e.close().unwrap();
}
