//! A directory follower (`LogReader::follow`, another process's view) after its log was
//! rewound under it: an engine reopened with `RecoveryMode::PointInTime` after damage before
//! the follower's position cuts the log there (zeroes the rest of that segment, removes the
//! later ones) and writes other batches under the numbers the follower already yielded. The
//! same follower must then return `Error::Rewound` naming its last batch and the file it read
//! it from, at every call, and never yield a batch of the rewritten log after the ones it
//! yielded of the old one. And a follower through rolls, retirements, reused files and a
//! clean reopen never gets it.

// The damage is made behind the seam's back.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{position, wait_ok, WAIT_MAX};
use mergelog::{Config, Engine, Error, Follower, LogReader, RecoveryMode, SegmentInfo, Seq};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SEGMENT_BYTES: u64 = 64 << 10;

fn config(recovery: RecoveryMode) -> Config {
    Config {
        segment_bytes: SEGMENT_BYTES,
        // Room for the batch that must not fit what is left of a segment (case (c)).
        batch_bytes_max: 56 << 10,
        ring_bytes: 1 << 20,
        recovery,
        ..Config::default()
    }
}

/// One batch of one put, waited for (so every batch is one frame, and frames of equal key
/// and value lengths are equally long). `tag` tells the old log's values from the new one's.
fn put(engine: &Engine, i: u64, value_len: usize, tag: u8) -> Seq {
    let key = format!("key-{:06}", i % 50);
    let mut value = vec![tag; value_len];
    value[..8].copy_from_slice(&i.to_le_bytes());
    engine.put(key.as_bytes(), &value).unwrap().wait().unwrap()
}

/// Every batch the follower yields, until it waits `idle` for the next one.
fn drain(f: &mut Follower, idle: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(b) = f.next_timeout(idle).unwrap() {
        seqs.push(b.seq.get());
    }
    seqs
}

/// The segment file and offset of batch `seq`'s frame, read through a reader's view.
fn frame_of(dir: &Path, seq: u64) -> (PathBuf, u64) {
    let reader = LogReader::open(dir).unwrap();
    let b = reader.batches().find(|b| b.seq().get() == seq).unwrap();
    (b.segment().to_owned(), b.offset())
}

/// Flips a byte of batch `seq`'s frame body (its CRC fails), removes the clean-close mark
/// (so the open looks at every frame) and opens with `PointInTime`, which must cut the log
/// at that frame: the next batch written is `seq` again.
fn damage_and_reopen(dir: &Path, seq: u64) -> Engine {
    let (path, offset) = frame_of(dir, seq);
    common::flip_byte_at(&path, offset + 40);
    let _ = std::fs::remove_file(dir.join("CLEAN"));
    let engine = Engine::open(dir, config(RecoveryMode::PointInTime)).unwrap();
    let cut = engine
        .open_report()
        .truncated
        .clone()
        .expect("the point-in-time open reports the cut");
    assert_eq!((cut.path, cut.offset), (path, offset), "cut at the damage");
    assert_eq!(
        engine.durable_seq().get(),
        seq - 1,
        "the log ends before it"
    );
    engine
}

/// The follower's next calls (each kind, twice) are all `Error::Rewound` for batch `seq`
/// of `path`, never a batch.
fn assert_rewound(f: &mut Follower, seq: u64, path: &Path, what: &str) {
    for call in 0..4 {
        let got = match call {
            0 | 1 => f.try_next(),
            _ => f.next_timeout(Duration::from_millis(20)),
        };
        match got {
            Err(Error::Rewound { seq: s, path: p }) => {
                assert_eq!((s.get(), p.as_path()), (seq, path), "{what}: call {call}");
            }
            other => panic!(
                "{what}: call {call} after the log was rewound past batch {seq}: {:?}",
                other.map(|b| b.map(|b| (b.seq, b.records[0].value[8])))
            ),
        }
    }
}

/// (a) The cut is in the segment the follower reads: the open zeroes it from the damaged
/// frame on and the engine writes the same numbers into it again, frames of the same length
/// at the same offsets. The follower waiting after batch 20 finds a valid frame of batch 21
/// right where it waits: only the changed frame before it tells that the log was rewound.
#[test]
fn a_follower_in_the_segment_a_cut_rewrote_reports_the_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let (old, mut follower) = twenty_batches_read_to_the_end(dir.path());

    let engine = damage_and_reopen(dir.path(), 10);
    for i in 10..=25 {
        assert_eq!(put(&engine, i, 200, b'n').get(), i);
    }
    assert_eq!(engine.segments().len(), 1);
    // The new frames lie where the old ones lay: batch 21 starts where the follower waits.
    for (s, at) in (1..=20).zip(&old) {
        assert_eq!(&frame_of(dir.path(), s), at, "batch {s} moved");
    }
    assert_rewound(&mut follower, 20, &old[19].0, "same segment");
    engine.close().unwrap();
}

/// (b) The follower reads the second segment; the cut is in the first, and the open removes
/// the second. The engine writes the numbers again with frames of the old length: the log
/// rolls where it rolled, so a file of the second segment's name is back, and the follower,
/// its file gone, finds it holding its next batch (a check of segment ids alone passes it).
#[test]
fn a_follower_in_a_segment_a_cut_removed_reports_the_rewind() {
    follower_in_a_removed_segment(1000);
}

/// (b) again, the new frames shorter: the follower's next batch lands in the first segment,
/// an id below the one it read its last batch from.
#[test]
fn a_follower_in_a_segment_a_cut_removed_reports_the_rewind_into_an_earlier_one() {
    follower_in_a_removed_segment(100);
}

/// A closed log of 20 batches of 200-byte values in one segment, each batch's frame (file,
/// offset), and a directory follower that read it to its end.
fn twenty_batches_read_to_the_end(dir: &Path) -> (Vec<(PathBuf, u64)>, Follower) {
    let engine = Engine::open(dir, config(RecoveryMode::default())).unwrap();
    for i in 1..=20 {
        put(&engine, i, 200, b'o');
    }
    let frames = (1..=20).map(|s| frame_of(dir, s)).collect();
    let mut follower = LogReader::open(dir).unwrap().follow(1);
    assert_eq!(
        drain(&mut follower, Duration::from_millis(50)),
        (1..=20).collect::<Vec<_>>()
    );
    engine.close().unwrap();
    (frames, follower)
}

/// A closed log of two segments of 1,000-byte values (ten batches into the second), and a
/// directory follower that read it to its end: the second segment and the last batch.
fn two_segments_read_to_the_end(dir: &Path) -> (SegmentInfo, u64, Follower) {
    let engine = Engine::open(dir, config(RecoveryMode::default())).unwrap();
    let mut i = 1;
    while engine.segments().len() < 2 {
        put(&engine, i, 1000, b'o');
        i += 1;
    }
    for _ in 0..10 {
        put(&engine, i, 1000, b'o');
        i += 1;
    }
    let second = engine.segments()[1].clone();
    let last = engine.durable_seq().get();
    let mut follower = LogReader::open(dir).unwrap().follow(1);
    assert_eq!(
        drain(&mut follower, Duration::from_millis(50)),
        (1..=last).collect::<Vec<_>>()
    );
    engine.close().unwrap();
    (second, last, follower)
}

fn follower_in_a_removed_segment(value_len: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (second, last, mut follower) = two_segments_read_to_the_end(dir.path());

    let k = second.first_seq.get() / 2;
    let engine = damage_and_reopen(dir.path(), k);
    assert_eq!(engine.segments().len(), 1, "the cut removed the second");
    for i in k..=last + 5 {
        assert_eq!(put(&engine, i, value_len, b'n').get(), i);
    }
    let starts: Vec<u64> = engine
        .segments()
        .iter()
        .map(|s| s.first_seq.get())
        .collect();
    if value_len == 1000 {
        assert_eq!(
            starts,
            [1, second.first_seq.get()],
            "rolled where it rolled"
        );
    } else {
        assert_eq!(starts, [1], "no roll");
    }
    assert_rewound(&mut follower, last, &second.path, "removed segment");
    engine.close().unwrap();
}

/// (c) As (b), the follower at the end of the removed second segment, and the rewritten log
/// rolls to a new segment exactly at the follower's next batch: the follower's relocation
/// finds a file named after the batch it wants, as after any roll, and must look at the file
/// before it, which holds the last batch it yielded no more.
#[test]
fn a_follower_whose_next_batch_starts_a_segment_again_reports_the_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let (second, last, mut follower) = two_segments_read_to_the_end(dir.path());

    let k = second.first_seq.get() / 2;
    let engine = damage_and_reopen(dir.path(), k);
    // Short frames up to the follower's last batch, all in the first segment.
    for i in k..=last {
        assert_eq!(put(&engine, i, 100, b'n').get(), i);
    }
    // Then one longer than what is left of it: the roll comes exactly at `last + 1`.
    let left = (SEGMENT_BYTES - engine.replay().unwrap().end_offset()) as usize;
    assert_eq!(put(&engine, last + 1, left, b'n').get(), last + 1);
    let starts: Vec<u64> = engine
        .segments()
        .iter()
        .map(|s| s.first_seq.get())
        .collect();
    assert_eq!(
        starts,
        [1, last + 1],
        "the roll at the follower's next batch"
    );
    assert_rewound(&mut follower, last, &second.path, "roll at next_seq");
    engine.close().unwrap();
}

/// (a) again, before the log reaches the follower's position again: nothing written since
/// the cut, the follower finds zeros where its last batch lay. The cut is reported at once,
/// not waited out (a follower waiting in its file reads that frame's header at every poll).
#[test]
fn a_follower_in_the_segment_a_cut_rewrote_reports_the_rewind_before_the_log_passes_it() {
    cut_in_the_followers_segment(None);
}

/// (a) again, the new frames longer than the old: none lines up, and the follower finds a
/// frame's middle where it waits, which a wait would take for the live end of the log (or,
/// after a roll, for damage).
#[test]
fn a_follower_in_the_segment_a_cut_rewrote_reports_the_rewind_when_frames_do_not_line_up() {
    cut_in_the_followers_segment(Some(300));
}

/// A follower reads batches 1 to 20 (200-byte values), the log is cut at batch 10 and, with
/// `new_values`, written again to batch 25 with values that long.
fn cut_in_the_followers_segment(new_values: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let (old, mut follower) = twenty_batches_read_to_the_end(dir.path());
    let path = old[19].0.clone();

    let engine = damage_and_reopen(dir.path(), 10);
    if let Some(len) = new_values {
        for i in 10..=25 {
            assert_eq!(put(&engine, i, len, b'n').get(), i);
        }
        assert_eq!(engine.segments().len(), 1);
    }
    assert_rewound(
        &mut follower,
        20,
        &path,
        &format!("new values {new_values:?}"),
    );
    engine.close().unwrap();
}

/// A consumer of the directory (`LogReader::consumer`) is a follower: it reports the rewind
/// too, and refuses to commit what it yielded of the old log (the open set its position
/// back to the log's end, and the numbers past it name other batches now).
#[test]
fn a_directory_consumer_reports_the_rewind_and_commits_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).unwrap();
    for i in 1..=20 {
        put(&engine, i, 200, b'o');
    }
    let path = frame_of(dir.path(), 20).0;
    let mut consumer = LogReader::open(dir.path()).unwrap().consumer("c").unwrap();
    for s in 1..=20 {
        let b = consumer.next_timeout(WAIT_MAX).unwrap().expect("a batch");
        assert_eq!(b.seq.get(), s);
        if s == 15 {
            consumer.commit(b.seq).unwrap();
        }
    }
    engine.close().unwrap();
    drop(engine);

    let engine = damage_and_reopen(dir.path(), 10);
    assert_eq!(
        engine.open_report().consumers_set_back,
        vec![position("c", 15)]
    );
    for i in 10..=25 {
        put(&engine, i, 200, b'n');
    }
    for _ in 0..2 {
        match consumer.try_next() {
            Err(Error::Rewound { seq, path: p }) => assert_eq!((seq.get(), &p), (20, &path)),
            other => panic!("the consumer after the rewind: {other:?}"),
        }
    }
    match consumer.commit(Seq::new(20)) {
        Err(Error::Rewound { seq, .. }) => assert_eq!(seq.get(), 20),
        other => panic!("a commit after the rewind: {other:?}"),
    }
    drop(consumer);
    // The position stays where the open set it back.
    let reader = LogReader::open(dir.path()).unwrap();
    let c = reader.consumers().unwrap();
    assert_eq!((c[0].name.as_str(), c[0].committed.get()), ("c", 9));
    engine.close().unwrap();
}

/// The control: a directory follower that reads on through many rolls, retirements of the
/// segments behind it, reused files (whose old frames lie behind the new ones) and a clean
/// close and reopen never gets `Error::Rewound`, and yields every batch once, in order.
#[test]
fn a_follower_through_rolls_retirements_reuse_and_a_clean_reopen_is_never_rewound() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        recycle_segments: 2,
        ..config(RecoveryMode::default())
    };
    let mut engine = Engine::open(dir.path(), cfg.clone()).unwrap();
    let mut follower = LogReader::open(dir.path()).unwrap().follow(1);
    let mut yielded = Vec::new();
    let mut i = 0u64;
    for round in 0..12 {
        if round == 6 {
            engine.close().unwrap();
            drop(engine);
            engine = Engine::open(dir.path(), cfg.clone()).unwrap();
            assert!(engine.open_report().truncated.is_none());
        }
        // About a segment's worth, a batch of a few puts at a time.
        for _ in 0..40 {
            let tickets: Vec<_> = (0..3)
                .map(|_| {
                    i += 1;
                    let key = format!("key-{:04}", i % 200);
                    engine.put(key.as_bytes(), &[b'v'; 600]).unwrap()
                })
                .collect();
            for t in &tickets {
                wait_ok(t, "put");
            }
        }
        let durable = engine.durable_seq().get();
        while yielded.last().copied().unwrap_or(0) < durable {
            match follower.next_timeout(WAIT_MAX) {
                Ok(Some(b)) => yielded.push(b.seq.get()),
                Ok(None) => panic!("round {round}: batch {} never came", follower.next_seq()),
                Err(e) => panic!("round {round}: at batch {}: {e:?}", follower.next_seq()),
            }
        }
        // Every segment behind the follower retired; the pool reuses their files.
        let segs = engine.segments();
        engine
            .retire_before(segs[segs.len() - 1].first_seq)
            .unwrap();
    }
    assert!(
        engine.stats().segments.reused >= 3,
        "the test needs reused files: {}",
        engine.stats().segments.reused
    );
    assert_eq!(yielded, (1..=yielded.len() as u64).collect::<Vec<_>>());
    engine.close().unwrap();
}
