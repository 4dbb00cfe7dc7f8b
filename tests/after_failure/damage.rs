//! Media damage must not silently cut acknowledged history. A writer never has more than
//! `UNDURABLE_FRAMES_MAX` frames written and not yet durable, so after a crash only the last
//! few frames can be torn. Damage that valid frames follow further than that, or that lies
//! before the end a clean close recorded, is damage to durable history: the default open
//! refuses it (naming the file, the offset and the batches), changes nothing, and only
//! `RecoveryMode::PointInTime` opens there.

use crate::common::log::{dir_contents, read_log, segment_files, LoggedFrame};
use crate::common::WAIT_MAX;
use mergelog::internals::format::{
    decode_frame, Decoded, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, UNDURABLE_FRAMES_MAX,
};
use mergelog::{Config, Engine, Error, RecoveryMode, WindowPolicy};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn config(recovery: RecoveryMode) -> Config {
    Config {
        segment_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        window: WindowPolicy::Immediate,
        recovery,
        ..Config::default()
    }
}

/// Writes `n` batches, one put each (`key-i` = `value-i`), each waited for, so each is one
/// frame; closes cleanly. Returns the frames of the log.
fn write_batches(dir: &Path, cfg: &Config, n: usize) -> Vec<LoggedFrame> {
    let engine = Engine::open(dir, cfg.clone()).expect("open");
    for i in 0..n {
        engine
            .put(
                format!("key-{i}").as_bytes(),
                format!("value-{i}").as_bytes(),
            )
            .expect("put")
            .wait_timeout(WAIT_MAX)
            .expect("durable");
    }
    engine.close().expect("close");
    read_log(dir, None)
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a segment").1
}

fn flip_bit(path: &Path, off: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, off).unwrap();
}

/// Opens `dir` with `PointInTime`, which must cut the log and report where.
fn open_point_in_time(dir: &Path) -> (Engine, mergelog::Damage) {
    let engine = Engine::open(dir, config(RecoveryMode::PointInTime)).expect("PointInTime");
    let cut = engine.open_report().truncated.clone();
    (engine, cut.expect("the cut is reported"))
}

fn zero(path: &Path, off: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len], off).unwrap();
}

/// Opens `dir` with `cfg` in the default mode and in `AbsoluteConsistency`: each must refuse
/// with `Error::DamagedHistory` for `path` at `offset`, batches `first..=last`, with a message
/// that names the file and the way out, and leave every file as it was.
fn assert_refused(dir: &Path, cfg: &Config, path: &Path, offset: u64, first: u64, last: u64) {
    let before = dir_contents(dir);
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let r = Engine::open(
            dir,
            Config {
                recovery: mode,
                ..cfg.clone()
            },
        );
        let msg = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        match r {
            Err(Error::DamagedHistory {
                path: p,
                offset: o,
                first_lost,
                last_lost,
                ..
            }) => {
                assert_eq!((p.as_path(), o), (path, offset), "{mode:?}, where: {msg}");
                assert_eq!(
                    (first_lost, last_lost),
                    (first, last),
                    "{mode:?}, which batches: {msg}"
                );
                assert!(
                    msg.contains(&path.display().to_string()) && msg.contains("PointInTime"),
                    "the message names the file and the way out: {msg}"
                );
            }
            Err(e) => panic!("{mode:?}: expected DamagedHistory, got {e:?}"),
            Ok(engine) => panic!(
                "{mode:?}: opened (report {:?}) where DamagedHistory was expected",
                engine.open_report()
            ),
        }
        assert!(
            dir_contents(dir) == before,
            "{mode:?}: the refusing open changed files"
        );
    }
}

/// A bit flip in an old frame of the last segment, with more than `UNDURABLE_FRAMES_MAX`
/// frames after it: the default mode and `AbsoluteConsistency` refuse and change nothing;
/// `PointInTime` opens there and reports the cut.
#[test]
fn a_bit_flip_in_durable_history_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3 * UNDURABLE_FRAMES_MAX as usize;
    let frames = write_batches(dir.path(), &config(RecoveryMode::default()), n);
    assert_eq!(frames.len(), n);
    let victim = &frames[5];
    let seg = last_segment(dir.path());
    flip_bit(&seg, victim.offset + FRAME_HEADER_LEN as u64 + 2);
    let cfg = config(RecoveryMode::default());
    assert_refused(
        dir.path(),
        &cfg,
        &seg,
        victim.offset,
        victim.batch_seq,
        n as u64,
    );
    let (engine, cut) = open_point_in_time(dir.path());
    assert_eq!((cut.path, cut.offset), (seg, victim.offset));
    assert_eq!(engine.len(), 5, "the state before the damaged batch");
    assert!(engine.read(b"key-5").unwrap().is_none());
}

/// Past a torn last frame, bytes that put a plausible frame header every 32 bytes, each
/// claiming a body to the end of the segment (a crafted value could), made the evidence
/// search checksum most of the segment per header: minutes for a few MiB. The search now
/// gives up within a bounded amount of work; since it cannot tell what follows, the default
/// open refuses as `Error::Corrupt` naming the file, the offset and the way out, changing
/// nothing, and `PointInTime` cuts there.
#[test]
fn bytes_crafted_to_make_the_evidence_search_quadratic_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    let frames = write_batches(dir.path(), &cfg, 4);
    std::fs::remove_file(dir.path().join("CLEAN")).expect("a clean close leaves the mark");
    let seg = last_segment(dir.path());
    let victim = frames.last().unwrap();
    flip_bit(&seg, victim.offset + FRAME_HEADER_LEN as u64 + 2);
    let size = std::fs::metadata(&seg).unwrap().len();
    let evidence_from = victim.batch_seq + UNDURABLE_FRAMES_MAX;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let mut off = victim.offset + 4096;
    while off + 64 <= size {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[..4].copy_from_slice(b"MLFR");
        h[8..12].copy_from_slice(&((size - off) as u32 - FRAME_HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&evidence_from.to_le_bytes());
        f.write_all_at(&h, off).unwrap();
        off += FRAME_HEADER_LEN as u64;
    }
    drop(f);
    let before = dir_contents(dir.path());
    let msg = match Engine::open(dir.path(), cfg.clone()) {
        Err(e @ Error::Corrupt { .. }) => e.to_string(),
        other => panic!(
            "expected Error::Corrupt, got {:?}",
            other.map(|_| "an engine")
        ),
    };
    assert!(
        msg.contains(&seg.display().to_string())
            && msg.contains(&format!("offset {}", victim.offset))
            && msg.contains("gave up")
            && msg.contains("PointInTime"),
        "{msg}"
    );
    assert!(
        dir_contents(dir.path()) == before,
        "the refusing open changed files"
    );
    let (engine, cut) = open_point_in_time(dir.path());
    assert_eq!((cut.path, cut.offset), (seg, victim.offset));
    assert_eq!(engine.len(), 3);
}

/// Every segment file gone (removed by hand, a restore that left them out) beside a
/// clean-close mark that says batches were durable: not a new, empty log. The default open,
/// `AbsoluteConsistency` and `LogReader::check` refuse, naming the mark and the lost batches,
/// and change nothing; `PointInTime` accepts the loss, reports it, and goes on from the
/// mark's next batch, so no sequence number is given twice. It used to start a new log at
/// batch 1 in every mode.
#[test]
fn a_log_whose_segments_are_all_gone_is_refused_not_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    let frames = write_batches(dir.path(), &cfg, 5);
    let last = frames.last().unwrap().batch_seq;
    for (_, path) in segment_files(dir.path()) {
        std::fs::remove_file(path).unwrap();
    }
    let before = dir_contents(dir.path());
    let mark = dir.path().join("CLEAN");
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        match Engine::open(dir.path(), config(mode)) {
            Err(Error::DamagedHistory {
                path,
                first_lost,
                last_lost,
                ..
            }) => assert_eq!((path, first_lost, last_lost), (mark.clone(), 1, last)),
            other => panic!("{mode:?}: {:?}", other.map(|_| "an engine")),
        }
        let check = mergelog::LogReader::check(dir.path(), mode, mergelog::Durability::Sync);
        assert!(
            matches!(check, Err(Error::DamagedHistory { .. })),
            "{mode:?}: {check:?}"
        );
        assert!(dir_contents(dir.path()) == before, "{mode:?} changed files");
    }
    let (engine, cut) = open_point_in_time(dir.path());
    assert_eq!(cut.path, mark);
    assert_eq!(engine.len(), 0);
    let seq = engine
        .put(b"k", b"v")
        .unwrap()
        .wait_timeout(WAIT_MAX)
        .unwrap();
    assert_eq!(seq.get(), last + 1, "sequence numbers go on from the mark");
    engine.close().unwrap();
}

/// Opens `dir` with `cfg` on another thread and returns the error, failing the test if the
/// open succeeds or is still running after `WAIT_MAX` (a FIFO blocked it forever; a sparse
/// terabyte was mapped with every page populated, minutes and all free memory).
fn open_error(dir: &Path, cfg: &Config) -> Error {
    let (dir, cfg) = (dir.to_owned(), cfg.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = Engine::open(&dir, cfg).map(|_| ());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(WAIT_MAX) {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("the open succeeded"),
        Err(_) => panic!("the open was still running after {WAIT_MAX:?}"),
    }
}

/// A segment name on a file no engine made: a sparse terabyte (more than any segment can
/// be), a FIFO, a directory; and a FIFO under the `ids` file's name. Each is refused at
/// once with an error naming the file, in every mode, instead of blocking the open or
/// mapping a terabyte.
#[test]
fn a_segment_name_on_a_huge_or_irregular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    write_batches(dir.path(), &cfg, 3);
    let seg = last_segment(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    let restore = |what: &Path| {
        let _ = std::fs::remove_file(what).or_else(|_| std::fs::remove_dir(what));
        std::fs::write(&seg, &bytes).unwrap();
    };
    let mkfifo = crate::common::mkfifo;
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::PointInTime,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let cfg = config(mode);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let msg = open_error(dir.path(), &cfg).to_string();
        assert!(
            msg.contains(&seg.display().to_string()) && msg.contains("more than a segment can be"),
            "{mode:?}: {msg}"
        );
        restore(&seg);
        for irregular in ["fifo", "directory"] {
            std::fs::remove_file(&seg).unwrap();
            match irregular {
                "fifo" => mkfifo(&seg),
                _ => std::fs::create_dir(&seg).unwrap(),
            }
            let msg = open_error(dir.path(), &cfg).to_string();
            assert!(
                msg.contains(&seg.display().to_string()) && msg.contains("regular file"),
                "{mode:?}, a {irregular}: {msg}"
            );
            restore(&seg);
        }
        let ids = dir.path().join("ids");
        mkfifo(&ids);
        let msg = open_error(dir.path(), &cfg).to_string();
        assert!(
            msg.contains("ids") && msg.contains("regular file"),
            "{mode:?}: {msg}"
        );
        std::fs::remove_file(&ids).unwrap();
    }
    Engine::open(dir.path(), cfg).expect("the restored log opens");
}

/// A segment's name on a dangling symbolic link: the engine's open fails on it, naming it,
/// and so does `LogReader::check`, which judges the log as that open would (it called the
/// log clean, taking the missing file for one an engine had just retired).
#[test]
fn a_dangling_link_under_a_segments_name_fails_the_check_as_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    write_batches(dir.path(), &cfg, 3);
    let (_, first) = segment_files(dir.path()).remove(0);
    let saved = std::fs::read(&first).unwrap();
    std::fs::remove_file(&first).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &first).unwrap();
    let open = open_error(dir.path(), &cfg).to_string();
    assert!(open.contains(&first.display().to_string()), "{open}");
    let check = mergelog::LogReader::check(
        dir.path(),
        RecoveryMode::default(),
        mergelog::Durability::Sync,
    );
    let msg = check
        .expect_err("the check fails as the open does")
        .to_string();
    assert!(msg.contains(&first.display().to_string()), "{msg}");
    std::fs::remove_file(&first).unwrap();
    std::fs::write(&first, saved).unwrap();
    Engine::open(dir.path(), cfg).expect("the restored log opens");
}

/// A dangling symbolic link under the *first* segment's name is damage at that file, naming
/// it, to a reader in every mode as to the open and the check (and as one under a later
/// segment's name is): a reader took it for a segment retired since its listing and read the
/// log from the next segment on, without the first one's batches and without a word.
#[test]
fn a_dangling_link_as_the_first_segment_is_damage_to_a_reader_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        segment_bytes: 64 << 10,
        ..config(RecoveryMode::default())
    };
    let engine = Engine::open(dir.path(), cfg.clone()).expect("open");
    for i in 0..20u32 {
        let t = engine.put(&i.to_be_bytes(), &[7; 8 << 10]).expect("put");
        t.wait_timeout(WAIT_MAX).expect("durable");
    }
    engine.close().expect("close");
    drop(engine);
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    let first = files[0].1.clone();
    std::fs::remove_file(&first).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &first).unwrap();
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::PointInTime,
        RecoveryMode::AbsoluteConsistency,
    ] {
        match mergelog::LogReader::open_with(dir.path(), mode) {
            Err(Error::Corrupt {
                path,
                offset,
                reason,
            }) => {
                assert_eq!((&path, offset), (&first, 0), "{mode:?}");
                assert!(reason.contains("symbolic link"), "{mode:?}: {reason}");
            }
            Err(e) => panic!("{mode:?}: {e}"),
            Ok(r) => panic!(
                "{mode:?}: a reader read the log from batch {} without a word",
                r.first_seq()
            ),
        }
        let open = open_error(dir.path(), &config(mode)).to_string();
        assert!(
            open.contains(&first.display().to_string()),
            "{mode:?}: {open}"
        );
        let check = mergelog::LogReader::check(dir.path(), mode, mergelog::Durability::Sync);
        assert!(
            matches!(&check, Err(Error::Corrupt { path, offset: 0, .. }) if *path == first),
            "{mode:?}: {check:?}"
        );
    }
}

/// A file named as a segment (20 digits and `.seg`) whose number is past `u64::MAX` is a
/// segment name of a batch no log has, refused as one past 2^62 is (`u64::MAX` itself here):
/// `Error::Corrupt` naming it from the open in every mode, the check and every reader. It was
/// left out of the listing, so the log opened without a word whatever the file held (a copy
/// of a segment here, as a restore or a hand could leave it).
#[test]
fn a_segment_name_past_u64_max_is_refused_as_one_past_the_sequence_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(RecoveryMode::default());
    write_batches(dir.path(), &cfg, 3);
    let (_, first) = segment_files(dir.path()).remove(0);
    for name in [
        "18446744073709551615.seg",
        "18446744073709551616.seg",
        "99999999999999999999.seg",
    ] {
        let odd = dir.path().join(name);
        std::fs::copy(&first, &odd).unwrap();
        let corrupt_here = |what: &str, r: Result<(), Error>| match r {
            Err(Error::Corrupt {
                path,
                offset,
                reason,
            }) => {
                assert_eq!((&path, offset), (&odd, 0), "{name}: {what}");
                let number = name.trim_end_matches(".seg");
                assert!(reason.contains(number), "{name}: {what}: {reason}");
            }
            other => panic!("{name}: {what}: {other:?}"),
        };
        for mode in [
            RecoveryMode::TolerateCorruptedTail,
            RecoveryMode::PointInTime,
            RecoveryMode::AbsoluteConsistency,
        ] {
            let open = Engine::open(dir.path(), config(mode)).map(drop);
            corrupt_here(&format!("open, {mode:?}"), open);
            let read = mergelog::LogReader::open_with(dir.path(), mode).map(drop);
            corrupt_here(&format!("reader, {mode:?}"), read);
            let check = mergelog::LogReader::check(dir.path(), mode, mergelog::Durability::Sync);
            corrupt_here(&format!("check, {mode:?}"), check.map(drop));
        }
        std::fs::remove_file(&odd).unwrap();
    }
    Engine::open(dir.path(), cfg).expect("the log opens without them");
}

/// Damage close to the end (fewer than `UNDURABLE_FRAMES_MAX` frames follow it) may be a torn
/// tail: the default mode still cuts it, and reports it.
#[test]
fn damage_within_the_undurable_bound_is_still_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3 * UNDURABLE_FRAMES_MAX as usize;
    let frames = write_batches(dir.path(), &config(RecoveryMode::default()), n);
    let victim = &frames[n - UNDURABLE_FRAMES_MAX as usize + 1];
    let seg = last_segment(dir.path());
    flip_bit(&seg, victim.offset + FRAME_HEADER_LEN as u64 + 2);
    // The clean-close mark would tell: this is about the crash case, so take it away.
    std::fs::remove_file(dir.path().join("CLEAN")).expect("a clean close leaves the mark");
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).expect("open");
    let cut = engine
        .open_report()
        .truncated
        .clone()
        .expect("the cut is reported");
    assert_eq!((cut.path, cut.offset), (seg, victim.offset));
    assert_eq!(engine.len(), victim.batch_seq as usize - 1);
}

/// A run of zeros where a frame's header was (a sector that reads back as zeros) looks like
/// the end of the log. In a fresh segment, the frames after it used to be cut as "a torn
/// write"; now they prove the damage was durable.
#[test]
fn a_zeroed_frame_header_in_a_fresh_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3 * UNDURABLE_FRAMES_MAX as usize;
    let frames = write_batches(dir.path(), &config(RecoveryMode::default()), n);
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let victim = &frames[3];
    let seg = last_segment(dir.path());
    zero(&seg, victim.offset, FRAME_HEADER_LEN);
    let cfg = config(RecoveryMode::default());
    assert_refused(
        dir.path(),
        &cfg,
        &seg,
        victim.offset,
        victim.batch_seq,
        n as u64,
    );
}

/// The same in a reused segment: there the open zeroes whatever follows the frames (the old
/// bytes of its earlier life), and used to destroy the later frames without a report in any
/// mode. Now it refuses first.
#[test]
fn a_zeroed_frame_header_in_a_reused_segment_is_refused_not_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        segment_bytes: 64 << 10,
        recycle_segments: 2,
        ..config(RecoveryMode::default())
    };
    // Fill a few segments, retire them into the pool, and write until a reused one is the
    // last segment with plenty of frames in it.
    let engine = Engine::open(dir.path(), cfg.clone()).expect("open");
    let value = vec![b'v'; 600];
    let mut i = 0u64;
    let reused_last = loop {
        engine
            .put(format!("key-{i}").as_bytes(), &value)
            .unwrap()
            .wait_timeout(WAIT_MAX)
            .unwrap();
        i += 1;
        let segs = engine.segments();
        if segs.len() >= 3 {
            engine
                .retire_before(segs[segs.len() - 1].first_seq)
                .unwrap();
        }
        let counts = engine.counts();
        if counts.segments.reused >= 1 && i > 40 {
            let last = engine.segments().pop().unwrap();
            if i - last.first_seq.get() >= 2 * UNDURABLE_FRAMES_MAX {
                break last;
            }
        }
        assert!(i < 5000, "no reused segment became the last one");
    };
    engine.close().unwrap();
    // (offset, batch) of the frames of the reused segment.
    let image = std::fs::read(&reused_last.path).unwrap();
    let mut frames = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while let Ok(Decoded::Frame(f)) = decode_frame(&image, off) {
        frames.push((off as u64, f.batch_seq));
        off += f.len;
    }
    assert!(frames.len() as u64 >= 2 * UNDURABLE_FRAMES_MAX);
    let (victim_off, victim_seq) = frames[2];
    let last_seq = frames.last().unwrap().1;
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    zero(&reused_last.path, victim_off, FRAME_HEADER_LEN);
    assert_refused(
        dir.path(),
        &cfg,
        &reused_last.path,
        victim_off,
        victim_seq,
        last_seq,
    );
}

/// Whole frames at the end read back as zeros: nothing follows to show it, but the clean
/// close recorded where the log ended, so the open knows acknowledged batches are missing.
#[test]
fn a_log_that_ends_before_its_clean_close_mark_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10;
    let frames = write_batches(dir.path(), &config(RecoveryMode::default()), n);
    let seg = last_segment(dir.path());
    let from = frames[7].offset;
    let to = frames[9].offset + 4096;
    zero(&seg, from, (to - from) as usize);
    let cfg = config(RecoveryMode::default());
    assert_refused(dir.path(), &cfg, &seg, from, frames[7].batch_seq, n as u64);
    // Without the mark it is indistinguishable from a crash that lost the last frames.
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).expect("open");
    assert_eq!(engine.len(), 7);
}

/// Puts at `p` a symbolic link to nothing, a directory or a FIFO (`kind`), whatever was there
/// removed first.
fn put_irregular(p: &Path, kind: &str) {
    let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
    match kind {
        "link" => std::os::unix::fs::symlink(p.with_extension("nowhere"), p).unwrap(),
        "directory" => std::fs::create_dir(p).unwrap(),
        _ => crate::common::mkfifo(p),
    }
}

/// The engine's open (in every mode) and `LogReader::check` on a log whose side file `name`
/// is a symbolic link to nothing, a directory or a FIFO: each `Error::Corrupt` at offset 0
/// of that file, the reason saying which.
fn side_file_refused(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), &config(RecoveryMode::default()), 3);
    let file = dir.path().join(name);
    for (kind, says) in [
        ("link", "symbolic link to nothing"),
        ("directory", "other than a regular file"),
        ("fifo", "other than a regular file"),
    ] {
        put_irregular(&file, kind);
        for mode in [
            RecoveryMode::TolerateCorruptedTail,
            RecoveryMode::PointInTime,
            RecoveryMode::AbsoluteConsistency,
        ] {
            let check = mergelog::LogReader::check(dir.path(), mode, mergelog::Durability::Sync);
            let open = open_error(dir.path(), &config(mode));
            for (what, r) in [("check", check.map(drop)), ("open", Err(open))] {
                match r {
                    Err(Error::Corrupt {
                        path,
                        offset: 0,
                        reason,
                    }) if path == file && reason.contains(says) => {}
                    other => panic!("{name} a {kind}, {mode:?}, {what}: {other:?}"),
                }
            }
        }
    }
    let _ = std::fs::remove_file(&file).or_else(|_| std::fs::remove_dir(&file));
    Engine::open(dir.path(), config(RecoveryMode::default())).expect("opens without it");
}

/// The carried request ids' name (`ids`) on a symbolic link to nothing is damage at that
/// file, as a directory or a FIFO there is: the open read it as "no ids" and forgot the ids
/// of every retired segment (a retried request was applied twice), and the check called the
/// log clean.
#[test]
fn the_ids_name_on_a_dangling_link_or_an_irregular_file_is_damage() {
    side_file_refused("ids");
}

/// The clean-close mark's name (`CLEAN`) on a symbolic link to nothing is damage at that
/// file, as a directory or a FIFO there is: the open read it as "no mark" (an unclean end),
/// so the check it makes against lost durable history was skipped without a word.
#[test]
fn the_clean_marks_name_on_a_dangling_link_or_an_irregular_file_is_damage() {
    side_file_refused("CLEAN");
}

/// A log of three or more segments (puts of 10 KB, one batch each), closed cleanly: its
/// segment files (first batch, path), and the batch the next frame would get.
fn three_segments(dir: &Path) -> (Vec<(u64, PathBuf)>, u64) {
    let engine = Engine::open(dir, config(RecoveryMode::default())).expect("open");
    let mut i = 0;
    while engine.segments().len() < 3 {
        engine
            .put(format!("key-{i}").as_bytes(), &[b'v'; 10_000])
            .expect("put")
            .wait_timeout(WAIT_MAX)
            .expect("durable");
        i += 1;
    }
    let next = engine.durable_seq().get() + 1;
    engine.close().expect("close");
    (segment_files(dir), next)
}

/// Review (session 39, rv39a) of what recovery takes one file's word for about another:
/// a segment whose header's first batch does not continue its predecessor's last frame
/// (the segment between them removed by hand) is refused in the default mode and
/// `AbsoluteConsistency`, naming it at offset 0 and changing nothing, by `LogReader::check`
/// too; `PointInTime` keeps what comes before it.
#[test]
fn a_segment_that_does_not_continue_its_predecessor_is_refused_or_cut_before() {
    let dir = tempfile::tempdir().unwrap();
    let (segs, _) = three_segments(dir.path());
    std::fs::remove_file(&segs[1].1).unwrap();
    let third = &segs[2].1;
    let before = dir_contents(dir.path());
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let check = mergelog::LogReader::check(dir.path(), mode, mergelog::Durability::Sync);
        let open = Err::<(), _>(open_error(dir.path(), &config(mode)));
        for (what, r) in [("check", check.map(drop)), ("open", open)] {
            match r {
                Err(Error::Corrupt {
                    path, offset: 0, ..
                }) if &path == third => {}
                other => panic!("{mode:?}, {what}: {other:?}"),
            }
        }
        assert!(dir_contents(dir.path()) == before, "{mode:?} changed files");
    }
    let (engine, cut) = open_point_in_time(dir.path());
    assert_eq!((cut.path.as_path(), cut.offset), (third.as_path(), 0));
    assert_eq!(engine.durable_seq().get(), segs[1].0 - 1, "{cut:?}");
    engine.close().unwrap();
}

/// A clean-close mark naming a later segment than the log's last (the last segment file
/// removed by hand, or left out of a restore): the mark says batches up to its next one were
/// durable, so the log's end lost durable history: `Error::DamagedHistory` naming where the
/// frames stop and the batches lost, nothing changed.
#[test]
fn a_clean_mark_naming_a_segment_the_log_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (segs, next) = three_segments(dir.path());
    std::fs::remove_file(&segs[2].1).unwrap();
    // A reader (which does not read the mark) ends where the second segment's frames do.
    let end_of_second = mergelog::LogReader::open(dir.path()).unwrap().end_offset();
    let cfg = config(RecoveryMode::default());
    assert_refused(
        dir.path(),
        &cfg,
        &segs[1].1,
        end_of_second,
        segs[2].0,
        next - 1,
    );
}
