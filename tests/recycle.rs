//! Recycled segments (`Config::recycle_segments`): a retired segment's file is reused as a
//! later segment without writing zeros over it first, so it still holds the frames of its
//! earlier life. These tests pin down why those bytes are never taken for part of the log:
//!
//! - the writer ends every frame in a recycled segment with an end marker, so a clean reopen
//!   finds the end without reporting damage, and `AbsoluteConsistency` opens it;
//! - a segment before the last ends after exactly the batches up to the next one's id;
//! - when the last segment is recycled, opening zeroes everything after its last frame, so
//!   bytes that a crash left there (frames written after one that tore) can never line up
//!   behind a frame written later (`junk_left_by_a_crash_is_zeroed_at_open`).
//!
//! `tests/faults.rs::power_loss_recycling` covers the same under simulated power loss.

mod common;

use common::{engine_state, WAIT_MAX};
use mergelog::internals::format::{
    frame_len, record_len, trailer_len, FrameWriter, RecordOp, SegmentHeader, Trailer, FLAG_SORTED,
    SEGMENT_HEADER_LEN,
};
use mergelog::{Config, Engine, LogReader, RecoveryMode, SegmentInfo};
use std::os::unix::fs::FileExt;
use std::path::Path;

const KEY_LEN: usize = 12;
const VALUE_LEN: usize = 300;

fn config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        recycle_segments: 2,
        ..Config::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i}|").into_bytes();
    v.resize(VALUE_LEN, b'v');
    v
}

/// One put per batch, each waited for: every frame then has the same length.
fn put_one(engine: &Engine, i: usize) {
    engine.put(&key(i), &value(i)).unwrap().wait().unwrap();
}

fn is_recycled(seg: &SegmentInfo) -> bool {
    let bytes = std::fs::read(&seg.path).unwrap();
    SegmentHeader::decode(&bytes).unwrap().recycled
}

/// Writes and retires (keeping the last segment) until the segment being written is a
/// recycled one with at least one frame in it. Returns the number of puts made.
fn until_active_is_recycled(engine: &Engine) -> usize {
    let mut i = 0;
    loop {
        put_one(engine, i);
        i += 1;
        let segs = engine.segments();
        if segs.len() > 1 {
            engine
                .retire_before(segs[segs.len() - 1].first_seq)
                .unwrap();
        }
        let segs = engine.segments();
        if is_recycled(segs.last().unwrap()) && engine.replay().unwrap().end_offset() > 64 {
            return i;
        }
        assert!(i < 5000, "no segment was ever reused");
    }
}

/// A log closed while its last segment is a reused file with frames in it: the directory,
/// that segment, where its frames end, and the next batch sequence.
fn closed_in_a_reused_segment() -> (tempfile::TempDir, SegmentInfo, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    until_active_is_recycled(&engine);
    let active = engine.segments().pop().unwrap();
    let reader = engine.replay().unwrap();
    let (end, next) = (reader.end_offset(), reader.next_seq().get());
    drop(reader);
    engine.close().unwrap();
    (dir, active, end, next)
}

#[test]
fn a_clean_reopen_of_a_recycled_segment_reports_nothing_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let n = until_active_is_recycled(&engine);
    // The recycled file really holds old frames past the new ones: zeros would prove nothing.
    let active = engine.segments().pop().unwrap();
    let end = engine.replay().unwrap().end_offset();
    let bytes = std::fs::read(&active.path).unwrap();
    assert!(
        bytes[end as usize + 32..].iter().any(|&b| b != 0),
        "the recycled segment holds only zeros after its frames"
    );
    let mut state = engine_state(&engine);
    engine.close().unwrap();
    drop(engine);
    let mut end = end;
    for mode in [
        RecoveryMode::AbsoluteConsistency,
        RecoveryMode::TolerateCorruptedTail,
    ] {
        let reader = LogReader::open_with(dir.path(), mode).unwrap();
        assert!(reader.damage().is_none(), "{mode:?}: {:?}", reader.damage());
        assert_eq!(reader.end_offset(), end, "{mode:?}");
        let engine = Engine::open(
            dir.path(),
            Config {
                recovery: mode,
                ..config()
            },
        )
        .unwrap();
        assert!(engine.open_report().truncated.is_none(), "{mode:?}");
        assert_eq!(engine_state(&engine), state, "{mode:?}");
        // The newest put is there, and the engine goes on writing into the segment.
        assert_eq!(
            engine.read_to_vec(&key(n - 1)).unwrap(),
            Some(value(n - 1)),
            "{mode:?}"
        );
        put_one(&engine, 100_000);
        state = engine_state(&engine);
        end = engine.replay().unwrap().end_offset();
        engine.close().unwrap();
    }
}

/// A crash while the recycled last segment was written: frame n tore (its header never made
/// it) but frame n + 1, after it, reached the disk. Recovery ends the log at n. If the engine
/// then wrote a frame n of the same length and the power failed again with that frame on
/// disk but not the end marker after it, the old frame n + 1 would follow it, with the right
/// sequence number and a valid checksum: a batch nobody acknowledged, put back into the
/// history. Opening a recycled last segment zeroes everything after its frames, so the
/// marker's sector holds zeros even if its write is lost.
#[test]
fn junk_left_by_a_crash_is_zeroed_at_open() {
    let (dir, active, end, next) = closed_in_a_reused_segment();

    // The crash's leftovers: frame `next + 1` one frame length past the end (frame `next`,
    // which tore, would have filled the gap).
    // As the engine writes it: with a trailer (no ids, a commit time).
    let len = frame_len(record_len(KEY_LEN, VALUE_LEN) + trailer_len(0)) as u64;
    assert!(end + 3 * len <= 64 << 10, "no room for the scenario");
    let mut junk = vec![0u8; len as usize];
    let mut w = FrameWriter::new(&mut junk, next + 1, FLAG_SORTED);
    w.push(RecordOp::Put, b"junk-0000000", &value(7));
    let trailer = Trailer {
        ids: &[],
        commit_time: 1,
    };
    assert_eq!(w.finish_with(1, Some(trailer)), len as usize);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active.path)
        .unwrap();
    file.write_all_at(&junk, end + len).unwrap();

    // Reopen and write frame `next` (same length); remember what its end marker overwrote.
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut before_marker = vec![0u8; 32];
    std::fs::File::open(&active.path)
        .unwrap()
        .read_exact_at(&mut before_marker, end + len)
        .unwrap();
    put_one(&engine, 200_000);
    engine.close().unwrap();
    drop(engine);
    // The power fails with the frame on disk but not its end marker.
    file.write_all_at(&before_marker, end + len).unwrap();
    drop(file);

    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(engine.read_to_vec(b"junk-0000000").unwrap(), None);
    assert_eq!(
        engine.read_to_vec(&key(200_000)).unwrap(),
        Some(value(200_000))
    );
    assert_eq!(engine.replay().unwrap().next_seq(), next + 1);
}

/// A segment before the last ends after the batches up to the next segment's id, whatever
/// follows them; but a next batch right after them means files that do not belong together,
/// which is an error naming the file and offset.
#[test]
fn a_recycled_segment_before_the_last_ends_at_the_next_ones_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    until_active_is_recycled(&engine);
    // Roll past the recycled segment, so it is no longer the last one, leaving room after
    // its frames: small puts until less than 15.5 KiB is left, then one too big for that.
    let mut i = 300_000;
    let first_recycled = engine.segments().pop().unwrap();
    while (64 << 10) - engine.replay().unwrap().end_offset() >= 15_872 {
        put_one(&engine, i);
        i += 1;
    }
    engine
        .put(b"big", &vec![b'b'; 15_900])
        .unwrap()
        .wait()
        .unwrap();
    assert_ne!(
        engine.segments().last().unwrap().first_seq,
        first_recycled.first_seq,
        "the big put did not roll"
    );
    let state = engine_state(&engine);
    let segs = engine.segments();
    engine.close().unwrap();
    drop(engine);
    let idx = segs
        .iter()
        .position(|s| s.first_seq == first_recycled.first_seq)
        .unwrap();
    let next_id = segs[idx + 1].first_seq;
    // Where the recycled segment's frames end.
    let reader = LogReader::open(dir.path()).unwrap();
    let last_in_it = reader
        .batches()
        .filter(|b| b.seq() < next_id)
        .last()
        .unwrap();
    let end = last_in_it.offset() + last_in_it.frame_len() as u64;
    drop(reader);
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(engine_state(&engine), state);
    engine.close().unwrap();
    drop(engine);

    // A valid frame with the next segment's first batch right after the last frame.
    let mut frame = vec![0u8; 512];
    let mut w = FrameWriter::new(&mut frame, next_id.get(), FLAG_SORTED);
    w.push(RecordOp::Put, b"misplaced", b"x");
    let n = w.finish(1);
    let path: &Path = &first_recycled.path;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&frame[..n], end).unwrap();
    let err = Engine::open(dir.path(), config()).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains(&format!("offset {end}")),
        "{err}"
    );
    assert!(end > SEGMENT_HEADER_LEN as u64);
}

/// Fails every write of a frame at the start of a segment (offset 64) once armed.
struct FailFirstFrame {
    armed: std::sync::atomic::AtomicBool,
}

impl mergelog::internals::io::Io for FailFirstFrame {
    fn before(
        &self,
        op: mergelog::internals::io::IoOp,
        path: &Path,
        offset: u64,
        _data: &[u8],
    ) -> std::io::Result<()> {
        let frame_write = op == mergelog::internals::io::IoOp::Write
            && offset == SEGMENT_HEADER_LEN as u64
            && path.extension().is_some_and(|e| e == "seg");
        if frame_write && self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

/// A recycled segment that got its header but no frame (the first write failed, or the
/// power went) still ends cleanly: activation writes an end marker right after the header,
/// so even `AbsoluteConsistency` opens it, with nothing reported, and the engine writes on.
#[test]
fn a_recycled_segment_without_frames_ends_at_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let io = std::sync::Arc::new(FailFirstFrame {
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let engine = Engine::open_with_io(dir.path(), config(), io.clone()).unwrap();
    let mut i = until_active_is_recycled(&engine);
    let segs = engine.segments();
    engine
        .retire_before(segs[segs.len() - 1].first_seq)
        .unwrap();
    let state = engine_state(&engine);
    io.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = engine.segments().len();
    while engine.failure().is_none() {
        let _ = engine.put(&key(i), &value(i)).map(|t| t.wait());
        i += 1;
    }
    let segs = engine.segments();
    assert_eq!(segs.len(), before + 1, "the failure was not at a roll");
    let empty = segs.last().unwrap().clone();
    assert!(is_recycled(&empty), "the new segment is not a recycled one");
    let _ = engine.close();
    drop(engine);

    let engine = Engine::open(
        dir.path(),
        Config {
            recovery: RecoveryMode::AbsoluteConsistency,
            ..config()
        },
    )
    .unwrap();
    assert!(engine.open_report().truncated.is_none());
    let reader = engine.replay().unwrap();
    assert_eq!(reader.next_seq(), empty.first_seq);
    assert_eq!(reader.end_offset(), SEGMENT_HEADER_LEN as u64);
    drop(reader);
    // Everything acknowledged before is there (the puts after it failed or were never made).
    let now = engine_state(&engine);
    for (k, v) in &state {
        assert_eq!(now.get(k), Some(v));
    }
    put_one(&engine, 400_000);
    assert_eq!(
        engine.read_to_vec(&key(400_000)).unwrap(),
        Some(value(400_000))
    );
}

/// `Counts::segments`: every segment the engine started is fresh or reused, and it either is
/// still in the log or was retired; without `recycle_segments` nothing is reused.
#[test]
fn segment_counters_add_up() {
    for recycle in [2, 0] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            dir.path(),
            Config {
                recycle_segments: recycle,
                ..config()
            },
        )
        .unwrap();
        let mut retired = 0;
        for i in 0..2000 {
            put_one(&engine, i);
            if i % 50 == 0 {
                let segs = engine.segments();
                retired += engine
                    .retire_before(segs[segs.len() - 1].first_seq)
                    .unwrap()
                    .segments as u64;
            }
        }
        let c = engine.counts().segments;
        assert_eq!(c, engine.stats().segments);
        assert_eq!(c.retired, retired, "recycle {recycle}");
        assert!(retired >= 5, "recycle {recycle}: only {retired} retired");
        assert_eq!(
            c.fresh + c.reused,
            engine.segments().len() as u64 + c.retired,
            "recycle {recycle}: {c:?}"
        );
        if recycle > 0 {
            assert!(c.reused > 0 && c.fresh < c.reused, "{c:?}");
        } else {
            assert_eq!(c.reused, 0);
        }
        assert!(c.zero_fill > std::time::Duration::ZERO, "{c:?}");
    }
}

/// `SegmentCounts::zero_fill` counts the making of zero-filled files only: a new log's first
/// segment is one, and reopening a log whose segments exist makes none (activating the
/// segment already there, or mapping it, is not a zero fill).
#[test]
fn zero_fill_time_is_counted_for_new_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let c = engine.counts().segments;
    assert_eq!((c.fresh, c.reused), (1, 0), "{c:?}");
    assert!(c.zero_fill > std::time::Duration::ZERO, "{c:?}");
    put_one(&engine, 1);
    engine.close().unwrap();

    let engine = Engine::open(dir.path(), config()).unwrap();
    let c = engine.counts().segments;
    assert_eq!(
        (c.fresh, c.reused, c.zero_fill),
        (0, 0, std::time::Duration::ZERO)
    );
    assert_eq!(engine.read_to_vec(&key(1)).unwrap(), Some(value(1)));
}

/// A follower that maps the files itself (`LogReader::follow`) in a reused segment: at the
/// moment a frame is complete but its end marker not yet stored, what follows it is an old
/// frame of the file's earlier life (a lower sequence, and with equal frame lengths it lines
/// up). The follower walks the segment's chain from its first frame, each the sequence after
/// the last, so it stops there and yields the real next frame once it is written.
#[test]
fn a_follower_never_walks_into_the_old_frames_of_a_reused_segment() {
    let (dir, active, end, next) = closed_in_a_reused_segment();
    let len = frame_len(record_len(KEY_LEN, VALUE_LEN));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active.path)
        .unwrap();
    // An old frame where the marker would be, as in the instant before the marker is stored.
    let mut old = vec![0u8; len];
    let mut w = FrameWriter::new(&mut old, active.first_seq.get() - 5, FLAG_SORTED);
    w.push(RecordOp::Put, b"old-00000000", &value(1));
    assert_eq!(w.finish(1), len);
    file.write_all_at(&old, end).unwrap();
    let mut follower = LogReader::open(dir.path()).unwrap().follow(next);
    assert!(follower.try_next().unwrap().is_none());
    // Then the next frame is written where it belongs.
    let mut new = vec![0u8; len + 32];
    let mut w = FrameWriter::new(&mut new[..len], next, FLAG_SORTED);
    w.push(RecordOp::Put, b"new-00000000", &value(2));
    assert_eq!(w.finish(1), len);
    file.write_all_at(&new, end).unwrap();
    let got = follower
        .next_timeout(std::time::Duration::from_secs(5))
        .unwrap()
        .expect("the follower never yields the batch written after the old frame");
    assert_eq!(got.seq, next);
}

/// A `LogReader` opened on the directory maps the files itself; while it holds a slice of a
/// record, the engine does not reuse that record's file (every mapping holds a shared lock
/// on its file, and a file is reused only if an exclusive lock succeeds), so the slice never
/// changes. Files the reader does not map are reused meanwhile.
#[test]
fn a_log_reader_slice_never_changes_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut i = 0;
    while engine.segments().len() < 2 {
        put_one(&engine, i);
        i += 1;
    }
    let reader = LogReader::open(dir.path()).unwrap();
    let batch = reader.batches().next().unwrap();
    let record = batch.records().next().unwrap();
    let held: &[u8] = record.value;
    let copy = held.to_vec();
    let mapped_by_reader = reader.segments();
    while engine.counts().segments.reused < 3 {
        put_one(&engine, i);
        i += 1;
        let segs = engine.segments();
        engine
            .retire_before(segs[segs.len() - 1].first_seq)
            .unwrap();
        assert!(i < 20_000, "no file was reused: {:?}", engine.counts());
    }
    assert_eq!(held, &copy[..], "a slice held by a reader changed");
    // The reader's files are still pooled, untouched; the reader still reads them.
    assert_eq!(reader.batches().next().unwrap().seq(), batch.seq());
    assert!(mapped_by_reader.len() >= 2);
}

/// `LogReader::open` (what `verify`, `inspect` and `dump` do) over and over while the engine
/// retires segments and reuses their files: every open succeeds and sees a consistent log
/// (a file being reused, or renamed and reused already, is treated as retired: the scan
/// looks again).
#[test]
fn readers_racing_reuse_open_a_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (opens, errors) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tickets: Vec<_> = (0..32)
                    .map(|j| engine.put(&key(i * 32 + j), &value(j)).unwrap())
                    .collect();
                for t in tickets {
                    t.wait().unwrap();
                }
                let segs = engine.segments();
                if segs.len() > 1 {
                    engine
                        .retire_before(segs[segs.len() - 1].first_seq)
                        .unwrap();
                }
                i += 1;
            }
        });
        let (mut opens, mut errors) = (0, Vec::new());
        // Two seconds of racing at least, and on until the writer has reused three files
        // (the hang guard only bounds a broken run).
        let started = std::time::Instant::now();
        let give_up = started + WAIT_MAX;
        while started.elapsed() < std::time::Duration::from_secs(2)
            || engine.counts().segments.reused < 3
        {
            assert!(std::time::Instant::now() < give_up, "{:?}", engine.counts());
            match LogReader::open(dir.path()) {
                Ok(r) => {
                    let mut expect = r.first_seq();
                    for b in r.batches() {
                        assert_eq!(b.seq(), expect, "batches out of order");
                        expect += 1;
                    }
                    assert_eq!(expect, r.next_seq());
                    opens += 1;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        (opens, errors)
    });
    assert!(
        errors.is_empty(),
        "{} of {opens} opens failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(engine.counts().segments.reused > 0, "{:?}", engine.counts());
}

/// `close` leaves the spare files the next open would keep and no more: none by default (the
/// prepared next segment, zeros or a pooled file taken for it, is removed), and at most
/// `recycle_segments` pooled files plus the prepared one when spares are asked for. The log
/// reopens whole either way and rolls on into freshly prepared files.
#[test]
fn close_leaves_no_spare_file_unless_asked_to_keep_some() {
    for recycle_segments in [0, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let cfg = Config {
            recycle_segments,
            ..config()
        };
        let engine = Engine::open(dir, cfg.clone()).unwrap();
        let spares = || {
            let (prepared, pooled) = (
                common::log::prepared_files(dir),
                common::log::pool_files(dir),
            );
            (prepared.len(), pooled.len())
        };
        // Several segments, the older ones retired (pooled or removed), until the next
        // segment is being prepared: a prep file, or a pooled file taken for it.
        let mut i = 0;
        loop {
            put_one(&engine, i);
            i += 1;
            let segs = engine.segments();
            if segs.len() > 3 {
                engine
                    .retire_before(segs[segs.len() - 1].first_seq)
                    .unwrap();
            }
            let (prepared, pooled) = spares();
            let enough = if recycle_segments == 0 {
                prepared > 0
            } else {
                pooled > 0 && engine.segments().len() > 1
            };
            if i > 400 && enough {
                break;
            }
            assert!(i < 20_000, "never prepared a segment: {:?}", spares());
        }
        let state = engine_state(&engine);
        engine.close().unwrap();
        drop(engine);
        let (prepared, pooled) = spares();
        if recycle_segments == 0 {
            assert_eq!((prepared, pooled), (0, 0), "spare files left at rest");
        } else {
            assert!(prepared <= 1, "{prepared} prepared files left");
            assert!(
                (1..=recycle_segments).contains(&pooled),
                "{pooled} pooled files left, recycle_segments is {recycle_segments}"
            );
        }
        let engine = Engine::open(dir, cfg).unwrap();
        assert_eq!(
            engine_state(&engine),
            state,
            "recycle_segments {recycle_segments}"
        );
        // It rolls on: several more segments.
        let before = engine.segments().len();
        while engine.segments().len() < before + 3 {
            put_one(&engine, i);
            i += 1;
        }
        engine.close().unwrap();
    }
}

/// A roll names the next segment before its header is durable (the first sync in the
/// segment makes both durable, before anything in it is acknowledged), so a power loss can
/// leave a last segment whose header is zeros (a prepared file) or its file's earlier one (a
/// recycled file) with nothing acknowledged in it. A reader stops before it; a writer drops
/// it, reports the cut and goes on; `AbsoluteConsistency` refuses it; and the same header
/// on a segment before the last is damage.
#[test]
#[allow(clippy::disallowed_methods)] // the torn roll's file, made behind the seam's back
fn a_last_segment_whose_activation_tore_is_dropped() {
    let (template, active, _, next) = closed_in_a_reused_segment();
    let state = {
        let engine = Engine::open(template.path(), config()).unwrap();
        let state = engine_state(&engine);
        engine.close().unwrap();
        state
    };
    let torn_name = mergelog::internals::format::segment_file_name(next);
    let earlier = std::fs::read(&active.path).unwrap();
    let zeros = vec![0u8; earlier.len()];
    for (what, image) in [("zeros", &zeros), ("earlier header", &earlier)] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(template.path()).unwrap().flatten() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let torn = dir.path().join(&torn_name);
        std::fs::write(&torn, image).unwrap();

        let reader = LogReader::open(dir.path()).unwrap();
        let damage = reader
            .damage()
            .expect("the reader reports where it stopped");
        assert_eq!(
            (damage.path.as_path(), damage.offset),
            (torn.as_path(), 0),
            "{what}"
        );
        assert!(
            damage.reason.contains("a roll that a power loss tore"),
            "{what}: {damage:?}"
        );
        assert_eq!(reader.next_seq().get(), next, "{what}");
        drop(reader);

        let strict = Config {
            recovery: RecoveryMode::AbsoluteConsistency,
            ..config()
        };
        assert!(
            matches!(
                Engine::open(dir.path(), strict),
                Err(mergelog::Error::Corrupt { .. })
            ),
            "{what}: absolute consistency opened it"
        );

        let engine = Engine::open(dir.path(), config()).unwrap();
        let cut = engine
            .open_report()
            .truncated
            .clone()
            .expect("the cut is reported");
        assert_eq!((cut.path, cut.offset), (torn.clone(), 0), "{what}");
        assert!(!torn.exists(), "{what}: the torn segment is still there");
        assert_eq!(engine_state(&engine), state, "{what}");
        // It goes on: more segments, each activated by a roll.
        let before = engine.segments().len();
        let mut i = 100_000;
        while engine.segments().len() < before + 3 {
            put_one(&engine, i);
            i += 1;
        }
        let state = engine_state(&engine);
        engine.close().unwrap();
        let engine = Engine::open(dir.path(), config()).unwrap();
        assert!(engine.open_report().truncated.is_none(), "{what}");
        assert_eq!(engine_state(&engine), state, "{what}");
        engine.close().unwrap();
    }
    // A clean-close mark naming the segment proves it was no torn roll: refused as lost
    // history. And before the last segment the same header is damage, not a torn roll.
    let dir = template;
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut i = 200_000;
    while engine.segments().len() < 3 {
        put_one(&engine, i);
        i += 1;
    }
    engine.close().unwrap();
    let segs = common::log::segment_files(dir.path());
    let zero_header = |path: &Path| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let old = {
            let mut b = vec![0u8; SEGMENT_HEADER_LEN];
            f.read_exact_at(&mut b, 0).unwrap();
            b
        };
        f.write_all_at(&[0u8; SEGMENT_HEADER_LEN], 0).unwrap();
        old
    };
    let last = &segs.last().unwrap().1;
    let kept = zero_header(last);
    let e = Engine::open(dir.path(), config()).err();
    assert!(
        matches!(e, Some(mergelog::Error::DamagedHistory { .. })),
        "a cleanly closed last segment with its header zeroed: {e:?}"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .write_all_at(&kept, 0)
        .unwrap();
    zero_header(&segs[0].1);
    let e = Engine::open(dir.path(), config()).err();
    assert!(
        matches!(e, Some(mergelog::Error::Corrupt { .. })),
        "a zeroed header before the last segment: {e:?}"
    );
}

/// A power loss during a roll can leave the last segment named, with frames of its first
/// batches on the disk but not its header (zeros, or the file's earlier one: the kernel
/// writes pages back in any order, and nothing in the segment was acknowledged). A reader
/// stops before such a segment and a writer drops it, then writes other batches under the
/// same numbers; a follower of the directory must not yield the dropped ones. It once
/// mapped the file by its name and walked its frames without looking at its header, so it
/// yielded them, and then the writer's different batches after them.
#[test]
#[allow(clippy::disallowed_methods)] // the torn roll's file, made behind the seam's back
fn a_directory_follower_never_yields_a_batch_of_a_segment_whose_activation_tore() {
    let (template, active, _, next) = closed_in_a_reused_segment();
    let torn_name = mergelog::internals::format::segment_file_name(next);
    let earlier = std::fs::read(&active.path).unwrap();
    // Batch `next` as the roll wrote it into the new file, at offset 64.
    let len = frame_len(record_len(4, VALUE_LEN));
    let mut frame = vec![0u8; len + 32];
    let mut w = FrameWriter::new(&mut frame[..len], next, FLAG_SORTED);
    w.push(RecordOp::Put, b"torn", &value(0));
    assert_eq!(w.finish(1), len);
    let zeros = vec![0u8; earlier.len()];
    for (what, image) in [("zeros", &zeros), ("earlier header", &earlier)] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(template.path()).unwrap().flatten() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let mut image = image.clone();
        image[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + frame.len()].copy_from_slice(&frame);
        std::fs::write(dir.path().join(&torn_name), &image).unwrap();
        assert_eq!(
            LogReader::open(dir.path()).unwrap().next_seq().get(),
            next,
            "{what}: a reader stops before the torn segment"
        );
        // One follower at the torn segment's first batch, one reading up to it.
        let mut at = LogReader::open(dir.path()).unwrap().follow(next);
        let mut before = LogReader::open(dir.path()).unwrap().follow(next - 1);
        assert_eq!(
            before.try_next().unwrap().map(|b| b.seq.get()),
            Some(next - 1)
        );
        for (name, f) in [("at", &mut at), ("before", &mut before)] {
            let got = f.try_next().unwrap();
            assert!(
                got.is_none(),
                "{what}, follower {name}: yielded batch {:?} of a segment a writer drops",
                got.map(|b| (
                    b.seq,
                    String::from_utf8_lossy(&b.records[0].key).into_owned()
                ))
            );
        }
        // The writer drops it and writes another batch `next`: that is the one yielded.
        let engine = Engine::open(dir.path(), config()).unwrap();
        assert!(engine.open_report().truncated.is_some(), "{what}");
        engine.put(b"new!", &value(1)).unwrap().wait().unwrap();
        for (name, f) in [("at", &mut at), ("before", &mut before)] {
            let b = f
                .next_timeout(WAIT_MAX)
                .unwrap()
                .unwrap_or_else(|| panic!("{what}, follower {name}: the new batch never came"));
            assert_eq!(
                (b.seq.get(), b.records[0].key.as_slice()),
                (next, &b"new!"[..]),
                "{what}, follower {name}"
            );
        }
        engine.close().unwrap();
    }
}
