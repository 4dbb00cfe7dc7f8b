//! Replays the fuzz corpora through the checks the fuzz targets run.
//!
//! `fuzz/src/lib.rs` holds what the cargo-fuzz targets `decode_frame` and `open_dir` check; this
//! test includes it as a module and runs every file of `fuzz/corpus/<target>/` (the committed
//! seeds) and `fuzz/regressions/<target>/` (every crash input `tools/fuzz.sh` ever found) through
//! it. So an input that once crashed a target keeps being checked by an ordinary `cargo test`,
//! without nightly or cargo-fuzz.
//!
//! Each input runs in its own thread so that one failure does not hide the others; the test
//! then fails listing every input that panicked, with the command that reproduces it under the
//! fuzzer.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

#[path = "../fuzz/src/replay.rs"]
mod replay;

use std::path::Path;
use std::sync::atomic::Ordering;

/// What a fuzz target checks on one input.
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 4] = [
    ("decode_frame", fuzz_checks::decode_frame),
    ("open_dir", fuzz_checks::open_dir),
    ("side_files", fuzz_checks::side_files),
    ("follow_dir", fuzz_checks::follow_dir),
];

/// Replays take turns, so that an engine thread's panic is charged to the right input.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Chains a panic hook that flags panics of the engine's own threads (see
/// `fuzz_checks::ENGINE_THREAD_PANICKED`).
fn watch_engine_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("mergelog-"))
            {
                fuzz_checks::ENGINE_THREAD_PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn replay(kind: &str) {
    watch_engine_threads();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let root = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut ran = 0;
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        for path in replay::inputs(&root.join(target)) {
            ran += 1;
            fuzz_checks::ENGINE_THREAD_PANICKED.store(false, Ordering::SeqCst);
            failures.extend(replay::run_one(target, &path, check));
        }
    }
    // The committed seeds are the floor of the fuzzers' coverage, and the kept regressions
    // the bugs fuzzing found (34 committed): either gone would pass having run nothing.
    let floor = if kind == "corpus" { 10 } else { 30 };
    replay::assert_replayed(kind, ran, &failures, floor);
}

/// The committed seed corpus of every target.
#[test]
fn seed_corpus_replays() {
    replay("corpus");
}

/// Every input a fuzz run found and `tools/fuzz.sh` kept.
#[test]
fn fuzz_regressions_replay() {
    replay("regressions");
}

/// The checks are not vacuous: a valid segment must decode (with frames walked), and a log
/// written by the engine must open through `open_dir`'s path with its records seen.
#[test]
fn checks_see_real_frames() {
    use mergelog::internals::format::{FrameWriter, RecordOp, SegmentHeader, FLAG_SORTED};
    let mut seg = vec![0u8; 256];
    seg[..64].copy_from_slice(&SegmentHeader::new(1, 256, false).encode());
    let mut w = FrameWriter::new(&mut seg[64..], 1, FLAG_SORTED);
    w.push(RecordOp::Put, b"a", b"1");
    w.push(RecordOp::Delete, b"b", b"");
    let len = w.finish(2);
    fuzz_checks::decode_frame(&seg);

    // The same image as an `open_dir` input: control 0x80 (one segment, put after open),
    // first id 1, size selector (256 - 64) / 8.
    let input = fuzz_checks::OpenDirInput::encode(&[(1, seg.clone())], 0x80).expect("encodable");
    let parsed = fuzz_checks::OpenDirInput::parse(&input);
    assert_eq!(
        parsed.segments,
        vec![(1, seg.clone())],
        "encode/parse round trip"
    );
    let dir = tempfile::tempdir().unwrap();
    parsed.materialize(dir.path());
    let reader = mergelog::LogReader::open(dir.path()).expect("a valid log opens");
    let batches: Vec<_> = reader.batches().map(|b| b.to_owned()).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].records.len(), 2);
    assert!(len > 32);
    watch_engine_threads();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    fuzz_checks::ENGINE_THREAD_PANICKED.store(false, Ordering::SeqCst);
    fuzz_checks::open_dir(&input);
}

/// A segment image of `size` bytes for `id` under `header`, with one single-record frame per
/// batch of `seqs` (the record's key and value name the batch).
fn tiny_segment(
    header: mergelog::internals::format::SegmentHeader,
    size: usize,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<u8> {
    use mergelog::internals::format::{frame_len, record_len, FrameWriter, RecordOp, FLAG_SORTED};
    let mut seg = vec![0u8; size];
    seg[..64].copy_from_slice(&header.encode());
    let mut off = 64;
    for seq in seqs {
        let key = format!("k{seq}");
        let len = frame_len(record_len(key.len(), 1));
        let mut w = FrameWriter::new(&mut seg[off..off + len], seq, FLAG_SORTED);
        w.push(RecordOp::Put, key.as_bytes(), b"v");
        w.finish(1);
        off += len;
    }
    seg
}

/// The seed of a rewritten segment with a leftover behind it (`fuzz/corpus/open_dir/
/// rewritten-with-leftover`): segment 1 rewritten (batches 1 to 3), the segment 2 it replaced
/// still there (batches 2 and 3), segment 4 after them. It is written from here, and must
/// open: the reader skips the leftover, the engine removes it, and they agree.
#[test]
fn a_rewritten_segment_with_its_leftover_is_a_seed_that_opens() {
    use mergelog::internals::format::SegmentHeader;
    let a = tiny_segment(SegmentHeader::rewritten(1, 256), 256, 1..=3);
    let b = tiny_segment(SegmentHeader::new(2, 256, false), 256, 2..=3);
    let c = tiny_segment(SegmentHeader::new(4, 256, false), 256, 4..=4);
    // Control 0xA2: three segments, `Sync`, a put after open.
    let input =
        fuzz_checks::OpenDirInput::encode(&[(1, a), (2, b), (4, c)], 0xA2).expect("encodable");
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/open_dir/rewritten-with-leftover");
    let committed = std::fs::read(&seed).expect("the seed is committed");
    assert!(
        committed == input,
        "the committed seed differs from this layout"
    );
    let parsed = fuzz_checks::OpenDirInput::parse(&input);
    let dir = tempfile::tempdir().unwrap();
    parsed.materialize(dir.path());
    let reader = mergelog::LogReader::open(dir.path()).expect("a rewritten log opens");
    let seqs: Vec<u64> = reader.batches().map(|b| b.seq().get()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    watch_engine_threads();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    fuzz_checks::ENGINE_THREAD_PANICKED.store(false, Ordering::SeqCst);
    fuzz_checks::open_dir(&input);
}

/// The seeds of the targets `side_files` and `follow_dir`, made by each target's `encode`
/// (over real logs, written through the public API: `side_files`' template log, made at run
/// time, and `fuzz_checks::real_log_dirs`), parse back to what they were made from and are
/// committed: a `side_files` seed as made here; a `follow_dir` one (its log's frames hold
/// commit times, so no two runs make the same bytes) with the same change, over a log a
/// reader opens with as many batches (8 or 12) as the one made here. `MERGELOG_WRITE_SEEDS=1` writes them (after a
/// change of the layouts) instead of comparing.
#[test]
fn side_files_and_follow_dir_seeds_are_the_encoded_layouts() {
    use fuzz_checks::{Change, FollowInput, Mutation, SideInput};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();

    let keep = || [Change::Keep, Change::Keep, Change::Keep, Change::Keep];
    let with = |i: usize, c: Change| {
        let mut all = keep();
        all[i] = c;
        all
    };
    // Control: bits 0–1 frames cut, 2–3 the mode (0 tolerate, 1 point in time, 2 absolute,
    // 3 default), 4 a put, 5 `NoSync`, 6 no segments.
    let side: Vec<(&str, u8, [Change; 4])> = vec![
        ("as-written", 0x0C, keep()),
        ("as-written-put", 0x1C, keep()),
        ("as-written-nosync-absolute", 0x28, keep()),
        ("cut-two-frames", 0x0E, keep()),
        ("cut-one-frame-point-in-time", 0x05, keep()),
        ("no-segments-point-in-time", 0x44, keep()),
        ("no-segments", 0x4C, keep()),
        ("no-segments-no-clean", 0x5C, with(0, Change::Remove)),
        ("no-clean", 0x1C, with(0, Change::Remove)),
        ("no-ids", 0x1C, with(1, Change::Remove)),
        ("no-consumers", 0x1C, {
            let mut c = keep();
            c[2] = Change::Remove;
            c[3] = Change::Remove;
            c
        }),
        (
            "clean-next-seq-patched",
            0x1C,
            with(0, Change::Patch(vec![(33, 0x10)], true)),
        ),
        (
            "clean-end-patched",
            0x0C,
            with(0, Change::Patch(vec![(24, 0x08)], true)),
        ),
        (
            "clean-torn",
            0x0C,
            with(0, Change::Raw(b"MLCLEAN\0".to_vec(), false)),
        ),
        (
            "ids-count-patched",
            0x0C,
            with(1, Change::Patch(vec![(16, 3)], true)),
        ),
        (
            "ids-entry-batch-patched",
            0x0C,
            with(1, Change::Patch(vec![(24 + 16, 0x7f)], true)),
        ),
        (
            // The first entry (batch 1's id) named under batch 44, the log's last, which
            // logs another id: refused since session 39.
            "ids-entry-batch-live",
            0x0C,
            with(1, Change::Patch(vec![(24 + 16, 44)], true)),
        ),
        (
            // The first entry (batch 1's id) named under batch 3, before the second entry's
            // batch 2: out of the file's order, refused since session 40.
            "ids-entries-out-of-order",
            0x0C,
            with(1, Change::Patch(vec![(24 + 16, 3)], true)),
        ),
        (
            "ids-garbage",
            0x0C,
            with(1, Change::Raw(b"MLIDS\0\0\0\x02".to_vec(), false)),
        ),
        (
            "consumer-past-the-end",
            0x1C,
            with(2, Change::Patch(vec![(16, 0xf0)], true)),
        ),
        (
            "consumer-bad-crc",
            0x0C,
            with(3, Change::Patch(vec![(16, 0x05)], false)),
        ),
        (
            "consumer-huge",
            0x0C,
            with(3, Change::Patch(vec![(23, 0x70)], true)),
        ),
    ];
    for (name, control, changes) in side {
        let bytes = SideInput::encode(control, &changes);
        let parsed = SideInput::parse(&bytes);
        assert_eq!(
            parsed.changes, changes,
            "side_files seed {name}: round trip"
        );
        seeds.push((format!("side_files/{name}"), bytes));
    }

    let dirs = fuzz_checks::real_log_dirs();
    assert!(dirs.len() >= 3, "the real logs' layouts: {}", dirs.len());
    /// Name, reads before the change, start, change, segment, offset, payload.
    type FollowSeed<'a> = (&'a str, u8, u8, Mutation, u8, u16, &'a [u8]);
    let follow: [FollowSeed; 9] = [
        ("none", 15, 0, Mutation::None, 0, 0, b""),
        ("write", 3, 0, Mutation::Write, 0, 200, b"\xff\xff"),
        ("zero", 4, 0, Mutation::Zero, 1, 96, b"\x10"),
        ("append", 15, 1, Mutation::Append, 0, 0, b"new-key"),
        ("remove", 2, 0, Mutation::Remove, 1, 0, b""),
        ("add-segment", 15, 3, Mutation::AddSegment, 0, 0, b"next"),
        ("rewind", 3, 0, Mutation::Rewind, 0, 1, b"other"),
        ("rewind-last", 15, 0, Mutation::Rewind, 2, 2, b"other"),
        ("from-five", 1, 2, Mutation::Append, 0, 0, b"x"),
    ];
    for (i, dir) in dirs.iter().enumerate() {
        for (name, reads, from, m, seg, off, payload) in follow {
            let bytes = FollowInput::encode(reads, from, m, seg, off, payload, dir);
            let parsed = FollowInput::parse(&bytes);
            assert_eq!(parsed.mutation, m, "follow_dir seed {name}: round trip");
            assert!(
                !parsed.dir.segments.is_empty(),
                "follow_dir seed {name}: no segments"
            );
            seeds.push((format!("follow_dir/{name}-{i}"), bytes));
        }
    }
    let follow_seed_ok = |committed: &[u8], made: &[u8]| {
        let (c, m) = (FollowInput::parse(committed), FollowInput::parse(made));
        if (c.reads, c.from, c.mutation, c.segment, c.offset, &c.payload)
            != (m.reads, m.from, m.mutation, m.segment, m.offset, &m.payload)
            || c.dir.segments.len() != m.dir.segments.len()
        {
            return false;
        }
        let batches = |input: &fuzz_checks::OpenDirInput| {
            let dir = tempfile::tempdir().unwrap();
            input.materialize(dir.path());
            mergelog::LogReader::open(dir.path()).map_or(0, |r| r.batches().count())
        };
        batches(&m.dir) >= 8 && batches(&c.dir) == batches(&m.dir)
    };

    let write = std::env::var_os("MERGELOG_WRITE_SEEDS").is_some();
    for (name, bytes) in &seeds {
        let path = root.join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("seed {name} is not committed ({e})"));
            let same = match name.starts_with("follow_dir/") {
                true => follow_seed_ok(&committed, bytes),
                false => &committed == bytes,
            };
            assert!(same, "seed {name} differs from its layout");
        }
    }
}
