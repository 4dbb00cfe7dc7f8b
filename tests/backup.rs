//! Backups (`Engine::backup`, `LogReader::backup`): taken while writers run, they open as the
//! log was at one batch, with every batch acknowledged before them; they keep the request ids
//! of retired segments and the consumers' positions; they copy nothing behind a segment's
//! frames; a failed or refused one leaves nothing under its name and the engine unharmed.

#![allow(clippy::disallowed_methods)] // tests make and inspect files directly

mod common;

use common::{wait_ok, WAIT_MAX};
use mergelog::internals::format::{decode_frame, Decoded, SEGMENT_HEADER_LEN};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{
    Config, Durability, Engine, LogReader, Outcome, RecoveryMode, RequestId, Seq, WriteBatch,
};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn small_segments() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ..Config::default()
    }
}

/// Every batch of the log in `dir`: its sequence and its records (op, key, value).
type Batches = Vec<(u64, Vec<(String, Vec<u8>, Vec<u8>)>)>;

fn batches(dir: &Path) -> Batches {
    let reader = LogReader::open(dir).expect("open reader");
    reader
        .batches()
        .map(|b| {
            let records = b
                .records()
                .map(|r| (format!("{:?}", r.op), r.key.to_vec(), r.value.to_vec()))
                .collect();
            (b.seq().get(), records)
        })
        .collect()
}

/// Fails unless the log in `dir` passes the strictest check (`what`: the failure's message).
fn assert_clean(dir: &Path, what: &str) {
    let found = LogReader::check(dir, RecoveryMode::AbsoluteConsistency, Durability::Sync);
    assert!(matches!(found, Ok(None)), "{what}: {found:?}");
}

/// The names in `dir` other than the ones given.
fn other_entries(dir: &Path, except: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !except.contains(&n.as_str()))
        .collect()
}

/// Has `consumer` yield the batches up to `seq`, so that it may commit it.
fn read_up_to(consumer: &mut mergelog::Consumer, seq: Seq) {
    while consumer.next_seq() <= seq {
        consumer
            .next_timeout(WAIT_MAX)
            .unwrap()
            .expect("the batch is durable");
    }
}

#[test]
fn a_backup_taken_while_writers_run_holds_every_batch_acknowledged_before_it() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let engine = Arc::new(Engine::open(&src, small_segments()).unwrap());
    // Acknowledged before the backup begins: each must be in it.
    for i in 0..300u32 {
        wait_ok(
            &engine
                .put(format!("before-{i}").as_bytes(), &i.to_le_bytes())
                .unwrap(),
            "put",
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("during-{t}-{i}");
                    let ticket = engine.put(key.as_bytes(), &[t as u8; 200]).unwrap();
                    if i.is_multiple_of(8) {
                        wait_ok(&ticket, "put");
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    // Let the writers roll a few segments first.
    while engine.segments().len() < 4 {
        std::thread::yield_now();
    }
    let backup = engine.backup(&dest).expect("backup");
    stop.store(true, Ordering::Relaxed);
    let written: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(written > 0);
    engine.close().unwrap();

    assert_eq!(backup.dir, dest);
    assert!(backup.segments >= 4, "{backup:?}");
    assert_eq!(backup.first_seq, Seq::new(1));
    // The backup's batches are the log's, up to its end.
    let (from_src, from_backup) = (batches(&src), batches(&dest));
    let end = backup.next_seq.get();
    let want: Batches = from_src.into_iter().filter(|(s, _)| *s < end).collect();
    assert_eq!(from_backup.len() as u64, end - 1, "batches 1..{end}");
    assert_eq!(
        from_backup, want,
        "the backup's batches differ from the log's"
    );
    // It copied headers and frames, nothing else.
    let frames: u64 = LogReader::open(&dest)
        .unwrap()
        .batches()
        .map(|b| b.frame_len() as u64)
        .sum();
    assert_eq!(
        backup.bytes,
        frames + SEGMENT_HEADER_LEN as u64 * backup.segments as u64
    );

    // It opens strictly, holds what was acknowledged before it, and goes on from its end.
    assert_clean(&dest, "the backup is not clean");
    let restored = Engine::open(&dest, small_segments()).unwrap();
    for i in 0..300u32 {
        let got = restored
            .read_to_vec(format!("before-{i}").as_bytes())
            .unwrap();
        assert_eq!(got.as_deref(), Some(&i.to_le_bytes()[..]), "before-{i}");
    }
    let t = restored.put(b"after", b"restore").unwrap();
    assert_eq!(t.wait_timeout(WAIT_MAX).unwrap(), backup.next_seq);
}

#[test]
fn a_backup_keeps_the_request_ids_of_retired_segments_and_the_consumers_positions() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let engine = Engine::open(&src, small_segments()).unwrap();
    let mut written = Vec::new();
    for n in 0..400u128 {
        let ticket = engine
            .put_with_id(RequestId::from(n), format!("k{n}").as_bytes(), &[7; 1000])
            .unwrap();
        let Outcome::Written(seq) = ticket.wait().unwrap() else {
            panic!("id {n} is new")
        };
        written.push(seq);
    }
    let segments = engine.segments();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    // A consumer that has read past the third segment's start, which the retirement keeps.
    let keep_from = segments[2].first_seq;
    let committed = Seq::new(keep_from.get() + 3);
    let mut consumer = engine.consumer("audit").unwrap();
    read_up_to(&mut consumer, committed);
    consumer.commit(committed).unwrap();
    let retired = engine.retire_before(keep_from).unwrap();
    assert_eq!(retired.segments, 2);
    let backup = engine.backup(&dest).unwrap();
    assert_eq!(backup.first_seq, keep_from);
    assert_eq!(backup.consumers, 1);
    assert!(backup.carried_ids > 0, "{backup:?}");
    drop(consumer);
    engine.close().unwrap();

    let restored = Engine::open(&dest, small_segments()).unwrap();
    // An id whose batch was retired before the backup is still refused as a replay.
    let ticket = restored
        .put_with_id(RequestId::from(0u128), b"k0", b"again")
        .unwrap();
    assert_eq!(
        ticket.wait().unwrap(),
        Outcome::Duplicate { seq: written[0] }
    );
    // And one of a batch the backup holds.
    let ticket = restored
        .put_with_id(RequestId::from(399u128), b"k399", b"again")
        .unwrap();
    assert_eq!(
        ticket.wait().unwrap(),
        Outcome::Duplicate { seq: written[399] }
    );
    let consumers = restored.consumers().unwrap();
    assert_eq!(consumers.len(), 1);
    assert_eq!(
        (consumers[0].name.as_str(), consumers[0].committed),
        ("audit", committed)
    );
}

#[test]
fn a_readers_backup_writes_a_position_past_its_view_as_the_views_last_batch() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let engine = Engine::open(&src, Config::default()).unwrap();
    for i in 0..10u8 {
        wait_ok(&engine.put(&[i], b"v").unwrap(), "put");
    }
    let reader = LogReader::open(&src).unwrap();
    let last = reader.next_seq().get() - 1;
    // The consumer commits batches the reader's view does not hold.
    let mut consumer = engine.consumer("late").unwrap();
    let t = engine.put(b"more", b"v").unwrap();
    let past = t.wait().unwrap();
    assert!(past.get() > last);
    read_up_to(&mut consumer, past);
    consumer.commit(past).unwrap();
    let backup = reader.backup(&dest).unwrap();
    assert_eq!(backup.next_seq.get(), last + 1);
    drop(consumer);
    engine.close().unwrap();
    let restored = LogReader::open(&dest).unwrap();
    let consumers = restored.consumers().unwrap();
    assert_eq!(consumers[0].committed, Seq::new(last));
    assert_eq!(restored.next_seq().get(), last + 1);
}

#[test]
fn a_backup_of_reused_segment_files_copies_nothing_behind_their_frames() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let config = Config {
        recycle_segments: 4,
        ..small_segments()
    };
    let engine = Engine::open(&src, config.clone()).unwrap();
    // Fill segments, retire them into the pool, and write on into the reused files with
    // smaller batches, so their old frames lie behind the new ones.
    let mut batch = WriteBatch::new();
    for round in 0..3u32 {
        let (value, count) = match round {
            0 => (vec![0u8; 900], 600u32),
            _ => (vec![round as u8; 40], 3000),
        };
        for i in 0..count {
            batch.put(format!("r{round}-{i}").as_bytes(), &value);
            if batch.len() == 8 {
                wait_ok(&engine.write(&batch).unwrap(), "write");
                batch.clear();
            }
        }
        let segments = engine.segments();
        let last = segments.last().unwrap().first_seq;
        engine.retire_before(last).unwrap();
    }
    assert!(
        engine.counts().segments.reused > 0,
        "no segment file was reused: {:?}",
        engine.counts().segments
    );
    let backup = engine.backup(&dest).unwrap();
    engine.close().unwrap();
    // Every backup segment holds zeros behind its last frame.
    let files = mergelog::internals::list_segments(&dest).unwrap();
    assert_eq!(files.len(), backup.segments);
    for (_, path) in files {
        let bytes = std::fs::read(&path).unwrap();
        let mut off = SEGMENT_HEADER_LEN;
        while let Ok(Decoded::Frame(f)) = decode_frame(&bytes, off) {
            off = f.end_offset() as usize;
        }
        assert!(
            bytes[off..].iter().all(|&b| b == 0),
            "{}: bytes behind the last frame at {off}",
            path.display()
        );
    }
    let restored = Engine::open(&dest, config).unwrap();
    assert_eq!(
        restored.read_to_vec(b"r2-2999").unwrap().as_deref(),
        Some(&[2u8; 40][..])
    );
}

#[test]
fn a_backup_of_a_log_with_a_torn_tail_holds_its_valid_part() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    {
        let engine = Engine::open(&src, Config::default()).unwrap();
        for i in 0..20u8 {
            wait_ok(&engine.put(&[i], &[i; 64]).unwrap(), "put");
        }
        engine.close().unwrap();
    }
    // Tear the last frame: a byte of its body.
    let reader = LogReader::open(&src).unwrap();
    let last_batch = reader.batches().last().unwrap().to_owned();
    let end = reader.end_offset();
    let path = reader.segments().pop().unwrap().path;
    drop(reader);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[end as usize - 12] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(src.join("CLEAN")).ok();

    let reader = LogReader::open(&src).unwrap();
    assert!(reader.damage().is_some(), "the tail is torn");
    assert_eq!(reader.next_seq(), last_batch.seq);
    let backup = reader.backup(&dest).unwrap();
    assert_eq!(backup.next_seq, last_batch.seq);
    assert_clean(&dest, "the backup holds the torn frame");
}

/// Fails the `n`th operation `op` on a path under a backup's staging directory (or the
/// staging directory itself).
struct FailBackupOp {
    op: IoOp,
    n: usize,
    seen: AtomicUsize,
}

impl Io for FailBackupOp {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let staged = path.components().any(|c| {
            c.as_os_str()
                .to_string_lossy()
                .contains(".mergelog-backup-")
        });
        if op == self.op && staged && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Also made from the engine's view (`engine.replay()?.backup(..)`), which writes through
/// the engine's seam as the engine's own backup does (it wrote past it, so the hook's
/// failure never came: "expected the hook to fail the view's backup").
#[test]
fn a_failed_backup_leaves_nothing_under_its_name_and_the_engine_writes_on() {
    let cases = [(IoOp::Create, 1), (IoOp::Create, 3), (IoOp::Rename, 1)];
    for ((op, n), via_view) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let root = tempfile::tempdir().unwrap();
        let (src, dest) = (root.path().join("log"), root.path().join("backup"));
        let io = Arc::new(FailBackupOp {
            op,
            n,
            seen: AtomicUsize::new(0),
        });
        let engine = Engine::open_with_io(&src, small_segments(), io).unwrap();
        let mut consumer = engine.consumer("c").unwrap();
        for i in 0..200u32 {
            wait_ok(&engine.put(&i.to_le_bytes(), &[1; 500]).unwrap(), "put");
        }
        read_up_to(&mut consumer, Seq::new(1));
        consumer.commit(Seq::new(1)).unwrap();
        assert!(engine.segments().len() >= 2);
        let err = match via_view {
            false => engine.backup(&dest).expect_err("the hook fails the backup"),
            true => (engine.replay().unwrap().backup(&dest))
                .expect_err("expected the hook to fail the view's backup"),
        };
        assert!(
            err.to_string().contains("No space left"),
            "{op:?} {n} (from the view: {via_view}): {err}"
        );
        assert!(!dest.exists(), "{op:?} {n}: a failed backup left its name");
        assert_eq!(
            other_entries(root.path(), &["log"]),
            Vec::<String>::new(),
            "{op:?} {n}: a failed backup left its staging directory"
        );
        // The engine never noticed.
        assert!(engine.failure().is_none());
        wait_ok(&engine.put(b"after", b"v").unwrap(), "put after");
        // And a second try succeeds (the hook fails one operation only).
        let backup = engine.backup(&dest).unwrap();
        assert!(backup.segments >= 2);
        drop(consumer);
        engine.close().unwrap();
        assert_eq!(batches(&dest), {
            let all = batches(&src);
            all.into_iter()
                .filter(|(s, _)| *s < backup.next_seq.get())
                .collect::<Batches>()
        });
    }
}

#[test]
fn a_backup_under_a_name_as_long_as_a_name_can_be_is_made() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let engine = Engine::open(&src, Config::default()).unwrap();
    wait_ok(&engine.put(b"k", b"v").unwrap(), "put");
    // 255 bytes: the longest name ext4 and tmpfs take.
    let dest = root.path().join("b".repeat(255));
    let backup = engine
        .backup(&dest)
        .expect("a long name is no reason to fail");
    engine.close().unwrap();
    assert_eq!(backup.next_seq, Seq::new(2));
    let restored = Engine::open(&dest, Config::default()).unwrap();
    assert_eq!(
        restored.read_to_vec(b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn a_backup_into_an_existing_path_is_refused_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let engine = Engine::open(&src, Config::default()).unwrap();
    wait_ok(&engine.put(b"k", b"v").unwrap(), "put");
    for existing in ["empty-dir", "file"] {
        let dest = root.path().join(existing);
        if existing == "file" {
            std::fs::write(&dest, b"mine").unwrap();
        } else {
            std::fs::create_dir(&dest).unwrap();
        }
        let err = engine.backup(&dest).expect_err("refused");
        assert!(
            err.to_string().contains("destination exists"),
            "{existing}: {err}"
        );
    }
    assert_eq!(std::fs::read(root.path().join("file")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read_dir(root.path().join("empty-dir"))
            .unwrap()
            .count(),
        0
    );
    let mut rest = other_entries(root.path(), &[]);
    rest.sort();
    assert_eq!(rest, ["empty-dir", "file", "log"]);
}

/// An `ids` file (version 2, right CRC) of these entries (id, batch), time 0.
fn ids_file(entries: &[(u128, u64)]) -> Vec<u8> {
    let entries: Vec<_> = entries
        .iter()
        .map(|&(id, seq)| (RequestId::from(id), seq, 0))
        .collect();
    common::ids_file(&entries)
}

/// An `ids` file's entries (id, batch), the bad entry's offset, and words of the reason.
type BadIds = (&'static [(u128, u64)], u64, &'static str);

/// The `ids` files an engine refuses beside a log of batches 1-4 whose batch 1 logs id 101
/// and batch 3 id 103.
const BAD_IDS: [BadIds; 3] = [
    (&[(101, 1), (7, 50)], 56, "past the log's end"),
    (&[(101, 1), (9, 2)], 56, "does not log it"),
    (&[(103, 3), (101, 1)], 56, "oldest batch first"),
];

/// A backup of a log whose `ids` file the engine refuses (an entry naming a batch past the
/// log's end, or a batch the log holds that does not log its id; entries out of order) is
/// refused as that damage, `Error::Corrupt` naming the file and the entry's offset, and
/// makes nothing: the engine would refuse the backup's open the same way, and a backup that
/// succeeds is one to restore from. Until session 40 the first two were copied as found, and
/// the backup succeeded. The same of `Engine::backup`, the file replaced under the engine.
#[test]
fn a_backup_of_a_log_whose_ids_file_the_engine_refuses_is_refused_and_makes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let engine = Engine::open(&src, Config::default()).unwrap();
    for b in 1..=4u64 {
        let seq = match b % 2 {
            1 => put_id(&engine, 100 + u128::from(b)),
            _ => engine.put(b"k", b"v").unwrap().wait().unwrap(),
        };
        assert_eq!(seq.get(), b);
    }
    let dest = root.path().join("backup");
    let refused = |made: mergelog::Result<mergelog::Backup>, offset: u64, words: &str| {
        match made {
            Err(mergelog::Error::Corrupt {
                path,
                offset: at,
                reason,
            }) => {
                assert_eq!(path, src.join("ids"), "{reason}");
                assert_eq!(at, offset, "{reason}");
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("{words}: the backup was made or refused otherwise: {other:?}"),
        }
        assert_eq!(
            other_entries(root.path(), &[]),
            ["log"],
            "{words}: left behind"
        );
    };
    for (entries, offset, words) in BAD_IDS {
        std::fs::write(src.join("ids"), ids_file(entries)).unwrap();
        refused(engine.backup(&dest), offset, words);
    }
    engine.close().unwrap();
    for (entries, offset, words) in BAD_IDS {
        std::fs::write(src.join("ids"), ids_file(entries)).unwrap();
        let reader = LogReader::open(&src).unwrap();
        refused(reader.backup(&dest), offset, words);
        assert!(Engine::open(&src, Config::default()).is_err(), "{words}");
    }
    // True entries in order are copied, and the backup opens remembering them.
    std::fs::write(src.join("ids"), ids_file(&[(101, 1), (103, 3)])).unwrap();
    let made = LogReader::open(&src).unwrap().backup(&dest).unwrap();
    assert_eq!(made.carried_ids, 2);
    let restored = Engine::open(&dest, Config::default()).unwrap();
    assert_eq!(
        restored.request_id_seq(RequestId::from(103)),
        Some(Seq::new(3))
    );
    restored.close().unwrap();
}

/// Logs a put with request id `n` in a batch of its own, and returns the batch.
fn put_id(engine: &Engine, n: u128) -> Seq {
    let ticket = engine
        .put_with_id(RequestId::from(n), format!("k{n}").as_bytes(), &[7; 1000])
        .unwrap();
    match ticket.wait().unwrap() {
        Outcome::Written(seq) => seq,
        other => panic!("id {n} is new: {other:?}"),
    }
}

/// What the engine in `dir` answers to each request id in `ids`, replayed (a `Duplicate` names
/// the batch it remembers the id in). Opened with a horizon far past the ids asked about, so
/// that neither what it finds nor the replays push any out.
fn outcomes(dir: &Path, config: &Config, ids: std::ops::Range<u128>) -> Vec<(u128, Outcome)> {
    let config = Config {
        request_ids: mergelog::IdHorizon {
            ids: 1 << 12,
            age: None,
        },
        ..config.clone()
    };
    let engine = Engine::open(dir, config).unwrap();
    let answers = ids
        .map(|n| {
            let ticket = engine
                .put_with_id(RequestId::from(n), b"again", b"v")
                .unwrap();
            (n, ticket.wait().unwrap())
        })
        .collect();
    engine.close().unwrap();
    answers
}

/// Small segments, and request ids remembered up to 64 of them.
fn remembering_64_ids() -> Config {
    Config {
        request_ids: mergelog::IdHorizon { ids: 64, age: None },
        ..small_segments()
    }
}

/// A put with each id of `ids`, each acknowledged.
fn put_ids(engine: &Engine, ids: std::ops::Range<u128>) {
    for n in ids {
        put_id(engine, n);
    }
}

#[test]
fn a_backup_of_a_view_older_than_a_retirement_is_refused_not_wrong_about_request_ids() {
    // A view of the log (a reader's, or `Engine::replay`'s), then ids written and the log
    // retired past the view's end: the `ids` file now holds ids of batches the view does not
    // hold (a backup with them would refuse those requests, though it lacks their writes)
    // and has lost older ids the horizon pushed out (a backup would accept their replays).
    for engine_view in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let (src, dest, reference) = (
            root.path().join("log"),
            root.path().join("backup"),
            root.path().join("reference"),
        );
        let config = remembering_64_ids();
        let engine = Engine::open(&src, config.clone()).unwrap();
        put_ids(&engine, 0..150);
        let segments = engine.segments();
        assert!(segments.len() >= 3, "{} segments", segments.len());
        engine.retire_before(segments[2].first_seq).unwrap();
        let view = match engine_view {
            true => engine.replay().unwrap(),
            false => LogReader::open(&src).unwrap(),
        };
        // The log as the view holds it: nothing is written between the two.
        let want = engine.backup(&reference).unwrap();
        assert_eq!(want.next_seq, view.next_seq());
        assert!(want.carried_ids > 0, "{want:?}");
        put_ids(&engine, 150..400);
        let last = engine.segments().last().unwrap().first_seq;
        assert!(last > view.next_seq(), "the log rolled past the view");
        engine.retire_before(last).unwrap();

        let made = view.backup(&dest);
        drop(view);
        engine.close().unwrap();
        if let Ok(backup) = &made {
            // A backup taken anyway must answer each id as the log at its batch would.
            assert_eq!(backup.next_seq, want.next_seq);
            let (got, want) = (
                outcomes(&dest, &config, 0..400),
                outcomes(&reference, &config, 0..400),
            );
            let differ: Vec<_> = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g != w)
                .map(|((n, g), (_, w))| format!("id {n}: {g:?}, not {w:?}"))
                .collect();
            assert!(
                differ.is_empty(),
                "engine view {engine_view}: {} of the backup's answers are not the log's at \
                 batch {}: {}, ..., {}",
                differ.len(),
                backup.next_seq.get() - 1,
                differ[0],
                differ[differ.len() - 1]
            );
        }
        let err = made.expect_err("a view older than a retirement is refused");
        assert!(
            err.to_string().contains("retired since"),
            "engine view {engine_view}: {err}"
        );
        assert!(
            !dest.exists(),
            "engine view {engine_view}: a refused backup left its name"
        );
    }
}

#[test]
fn a_backup_of_a_view_without_segments_goes_on_from_its_next_batch() {
    // A log retired down to its last segment, whose header is then damaged: a point-in-time
    // view ends before it, holding no segment, its next batch the segment's first.
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let engine = Engine::open(&src, small_segments()).unwrap();
    put_ids(&engine, 0..150);
    let last = engine.segments().last().unwrap().clone();
    assert!(last.first_seq.get() > 1);
    engine.retire_before(last.first_seq).unwrap();
    engine.close().unwrap();
    std::fs::remove_file(src.join("CLEAN")).unwrap();
    let mut bytes = std::fs::read(&last.path).unwrap();
    bytes[40] ^= 0xff; // a reserved byte of the header
    std::fs::write(&last.path, &bytes).unwrap();

    let view = LogReader::open_with(&src, RecoveryMode::PointInTime).unwrap();
    assert_eq!(view.segment_count(), 0);
    assert_eq!(view.next_seq(), last.first_seq);
    let backup = view.backup(&dest).unwrap();
    assert_eq!(backup.next_seq, last.first_seq);
    assert_clean(&dest, "the backup is not clean");
    let restored = Engine::open(&dest, small_segments()).unwrap();
    let t = restored.put(b"after", b"restore").unwrap();
    assert_eq!(
        t.wait_timeout(WAIT_MAX).unwrap(),
        backup.next_seq,
        "the restored engine does not go on from the backup's next batch"
    );
    // And it still refuses the replay of a request the retired segments logged.
    let ticket = restored
        .put_with_id(RequestId::from(0u128), b"k0", b"again")
        .unwrap();
    assert!(ticket.wait().unwrap().is_duplicate());
}

/// Fails the next sync of the directory `dir` once armed.
struct FailParentSync {
    dir: std::path::PathBuf,
    armed: AtomicBool,
}

impl Io for FailParentSync {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == IoOp::SyncDir && path == self.dir && self.armed.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

#[test]
fn a_failed_sync_of_the_parent_leaves_the_whole_backup_and_says_its_name_may_not_last() {
    let root = tempfile::tempdir().unwrap();
    let (src, dest) = (root.path().join("log"), root.path().join("backup"));
    let io = Arc::new(FailParentSync {
        dir: root.path().to_owned(),
        armed: AtomicBool::new(false),
    });
    let engine = Engine::open_with_io(&src, small_segments(), io.clone()).unwrap();
    for i in 0..200u32 {
        wait_ok(&engine.put(&i.to_le_bytes(), &[3; 500]).unwrap(), "put");
    }
    io.armed.store(true, Ordering::SeqCst);
    let err = engine.backup(&dest).expect_err("the parent's sync fails");
    assert!(
        !io.armed.load(Ordering::SeqCst),
        "the backup never synced the parent"
    );
    assert!(
        err.to_string().contains("whole under this name"),
        "the error does not say what is left: {err}"
    );
    // What is under the name is the whole backup (never a partial one), and no staging
    // directory is left beside it.
    assert_clean(&dest, "the backup is not clean");
    let mut entries = other_entries(root.path(), &[]);
    entries.sort();
    assert_eq!(entries, ["backup", "log"]);
    engine.close().unwrap();
    let restored = Engine::open(&dest, small_segments()).unwrap();
    for i in 0..200u32 {
        assert_eq!(
            restored.read_to_vec(&i.to_le_bytes()).unwrap().as_deref(),
            Some(&[3u8; 500][..]),
            "key {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental backups (`Engine::backup_since`).

/// A file's contents, told apart by length and checksum (a failed comparison prints this,
/// not megabytes).
type Digest = (usize, u32);

/// Every file of the directory `dir`: name, contents and number of names (hard links).
fn files_of(dir: &Path) -> Vec<(String, Digest, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = std::fs::metadata(e.path()).unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap();
            (name, (bytes.len(), crc32c::crc32c(&bytes)), meta.nlink())
        })
        .collect();
    out.sort();
    out
}

/// The segment files' names of `dir` with their number of names.
fn segment_links(dir: &Path) -> Vec<(String, u64)> {
    files_of(dir)
        .into_iter()
        .filter(|(n, _, _)| n.ends_with(".seg"))
        .map(|(n, _, links)| (n, links))
        .collect()
}

/// An engine on `src` with `n` puts of keys `tag-0..n` (500-byte values), several segments.
fn fill(engine: &Engine, tag: &str, n: u32) {
    for i in 0..n {
        let key = format!("{tag}-{i}");
        wait_ok(&engine.put(key.as_bytes(), &[i as u8; 500]).unwrap(), "put");
    }
}

#[test]
fn an_incremental_backup_links_what_the_earlier_one_holds_unchanged_and_copies_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let FirstBackup {
        engine,
        first,
        src,
        b1,
        b2,
    } = first_backup(root.path());
    let full = root.path().join("full");
    assert_eq!(first.linked, 0);
    assert!(first.segments >= 3, "{first:?}");
    fill(&engine, "b", 300);
    let second = engine.backup_since(&b1, &b2).unwrap();
    // The segments complete when the first backup was taken are shared; the one it held
    // as the last (which grew since) and the new ones are copies.
    assert_eq!(second.linked, first.segments - 1, "{second:?}");
    assert!(second.segments > first.segments);
    let before = segment_links(&b1);
    let after = segment_links(&b2);
    for (name, links) in &after {
        let in_first = before.iter().position(|(n, _)| n == name);
        let shared = matches!(in_first, Some(i) if i + 1 < before.len());
        assert_eq!(*links, if shared { 2 } else { 1 }, "{name}");
    }
    // The same log as a full backup of the same view, byte for byte.
    let whole = engine.backup(&full).unwrap();
    assert_eq!(whole.next_seq, second.next_seq);
    assert_eq!(second.bytes + linked_bytes(&b2), whole.bytes);
    let contents = |d: &Path| -> Vec<(String, Digest)> {
        files_of(d).into_iter().map(|(n, b, _)| (n, b)).collect()
    };
    assert_eq!(contents(&b2), contents(&full));
    assert_clean(&b2, "the incremental backup");
    engine.close().unwrap();
    let all = batches(&src);
    assert_eq!(batches(&b2), all);
    // The earlier backup is as it was.
    assert_eq!(
        batches(&b1),
        all.into_iter()
            .filter(|(s, _)| *s < first.next_seq.get())
            .collect::<Batches>()
    );
}

/// The bytes of headers and frames in the segments of `dir` that have another name.
fn linked_bytes(dir: &Path) -> u64 {
    files_of(dir)
        .into_iter()
        .filter(|(n, _, links)| n.ends_with(".seg") && *links > 1)
        .map(|(name, _, _)| {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let mut end = SEGMENT_HEADER_LEN;
            while let Ok(Decoded::Frame(f)) = decode_frame(&bytes, end) {
                end = f.end_offset() as usize;
            }
            end as u64
        })
        .sum()
}

/// A log in `root/log` with 300 puts (keys `a-0..300`, several segments) and a first backup
/// of it in `root/b1`: the engine, the backup, and the paths of the log, `b1` and `b2`.
struct FirstBackup {
    engine: Engine,
    first: mergelog::Backup,
    src: std::path::PathBuf,
    b1: std::path::PathBuf,
    b2: std::path::PathBuf,
}

fn first_backup(root: &Path) -> FirstBackup {
    let src = root.join("log");
    let (b1, b2) = (root.join("b1"), root.join("b2"));
    let engine = Engine::open(&src, small_segments()).unwrap();
    fill(&engine, "a", 300);
    let first = engine.backup(&b1).unwrap();
    FirstBackup {
        engine,
        first,
        src,
        b1,
        b2,
    }
}

#[test]
fn an_engine_opened_on_a_backup_never_writes_into_the_files_it_shares_with_another() {
    // Both ways: the earlier backup restored and written on, then the later one.
    for restore_later in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let FirstBackup { engine, b1, b2, .. } = first_backup(root.path());
        // Nothing written between: every segment is shared, the last one too.
        let second = engine.backup_since(&b1, &b2).unwrap();
        assert_eq!(second.linked, second.segments);
        engine.close().unwrap();
        let (restored, other) = if restore_later {
            (&b2, &b1)
        } else {
            (&b1, &b2)
        };
        let kept = files_of(other);
        let config = Config {
            recycle_segments: 2,
            ..small_segments()
        };
        let engine = Engine::open(restored, config.clone()).unwrap();
        fill(&engine, "b", 300);
        let last = engine.segments().last().unwrap().first_seq;
        engine.retire_before(last).unwrap();
        fill(&engine, "c", 300);
        engine.close().unwrap();
        // The other backup's files are byte for byte what they were, and it opens whole.
        let now: Vec<_> = files_of(other)
            .into_iter()
            .map(|(n, b, _)| (n, b))
            .collect();
        let then: Vec<_> = kept.into_iter().map(|(n, b, _)| (n, b)).collect();
        assert_eq!(now, then, "restore_later {restore_later}");
        assert_clean(other, "the other backup");
        let reopened = Engine::open(other, small_segments()).unwrap();
        for i in 0..300u32 {
            let key = format!("a-{i}");
            assert_eq!(
                reopened.read_to_vec(key.as_bytes()).unwrap().as_deref(),
                Some(&[i as u8; 500][..]),
                "{key}"
            );
        }
        assert_eq!(reopened.read_to_vec(b"b-0").unwrap(), None);
        reopened.close().unwrap();
        // The restored log's files are its own now.
        assert!(segment_links(restored).iter().all(|(_, links)| *links == 1));
        assert!(!restored.join("unshare.tmp").exists());
    }
}

#[test]
fn an_earlier_backups_file_that_differs_is_copied_not_linked() {
    let root = tempfile::tempdir().unwrap();
    let FirstBackup {
        engine,
        first,
        src,
        b1,
        b2,
    } = first_backup(root.path());
    // One byte of the first backup's second segment rots; and its third one gets bytes
    // past its frames (where the backup wrote zeros).
    let names: Vec<String> = segment_links(&b1).into_iter().map(|(n, _)| n).collect();
    common::flip_byte_at(&b1.join(&names[1]), SEGMENT_HEADER_LEN as u64 + 40);
    let third = b1.join(&names[2]);
    let len = std::fs::metadata(&third).unwrap().len();
    common::flip_byte_at(&third, len - 1);
    let second = engine.backup_since(&b1, &b2).unwrap();
    assert_eq!(second.linked, first.segments - 2, "{second:?}");
    let links = segment_links(&b2);
    assert_eq!(links[1], (names[1].clone(), 1));
    assert_eq!(links[2], (names[2].clone(), 1));
    assert_clean(&b2, "the incremental backup");
    engine.close().unwrap();
    assert_eq!(batches(&b2), batches(&src));
}

/// Fails the first `IoOp::Rename` of a file named `unshare.tmp`.
struct FailUnshare {
    failed: AtomicBool,
}

impl Io for FailUnshare {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == IoOp::Rename
            && path.ends_with("unshare.tmp")
            && !self.failed.swap(true, Ordering::SeqCst)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

#[test]
fn an_open_that_fails_to_unshare_a_segment_leaves_both_backups_whole() {
    let root = tempfile::tempdir().unwrap();
    let FirstBackup { engine, b1, b2, .. } = first_backup(root.path());
    engine.backup_since(&b1, &b2).unwrap();
    engine.close().unwrap();
    let kept = files_of(&b2);
    let io = Arc::new(FailUnshare {
        failed: AtomicBool::new(false),
    });
    let err = Engine::open_with_io(&b1, small_segments(), io).expect_err("the hook fails the open");
    assert!(err.to_string().contains("replace shared segment"), "{err}");
    assert!(!b1.join("unshare.tmp").exists());
    assert_eq!(files_of(&b2), kept);
    // A second open makes every file its own and writes on.
    let engine = Engine::open(&b1, small_segments()).unwrap();
    fill(&engine, "b", 50);
    engine.close().unwrap();
    assert_eq!(
        files_of(&b2)
            .into_iter()
            .map(|(n, b, _)| (n, b))
            .collect::<Vec<_>>(),
        kept.into_iter().map(|(n, b, _)| (n, b)).collect::<Vec<_>>()
    );
}

/// The files of `dir` that are segments, with their contents (not their number of names).
fn segment_contents(dir: &Path) -> Vec<(String, Digest)> {
    files_of(dir)
        .into_iter()
        .filter(|(n, _, _)| n.ends_with(".seg"))
        .map(|(n, b, _)| (n, b))
        .collect()
}

#[test]
fn a_backup_since_a_log_an_engine_has_open_is_refused_and_links_nothing() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let config = Config {
        recycle_segments: 2,
        ..small_segments()
    };
    let engine = Engine::open(&src, config.clone()).unwrap();
    fill(&engine, "a", 300);
    // The log itself given as the earlier backup (a mistyped `--since`): its complete
    // segments hold exactly what a backup writes (frames, then the zeros they were made
    // with), but the engine writes into its files, appends to the last and reuses retired
    // ones in place, and would write into a backup linked to them.
    let b2 = root.path().join("b2");
    let refused = |made: mergelog::Result<mergelog::Backup>, what: &str| match made {
        Ok(backup) => {
            let kept = segment_contents(&backup.dir);
            fill(&engine, "b", 300);
            let last = engine.segments().last().unwrap().first_seq;
            engine.retire_before(last).unwrap();
            fill(&engine, "c", 300);
            wait_ok(&engine.flush().unwrap(), "flush");
            let now = segment_contents(&backup.dir);
            let changed: Vec<_> = now
                .iter()
                .filter(|f| !kept.contains(f))
                .map(|(n, _)| n.clone())
                .collect();
            panic!(
                "{what}: made, {} of {} segments linked to the log's files; after the engine \
                 wrote on, the backup's {changed:?} changed",
                backup.linked, backup.segments
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("an engine has it open"), "{what}: {msg}");
            assert!(!b2.exists(), "{what}");
        }
    };
    refused(engine.backup_since(&src, &b2), "the engine's own log");
    let reader = engine.replay().unwrap();
    refused(reader.backup_since(&src, &b2), "a view of the engine's log");
    // Another engine's log: a backup restored and being written on.
    let b1 = root.path().join("b1");
    engine.backup(&b1).unwrap();
    let restored = Engine::open(&b1, config.clone()).unwrap();
    refused(
        engine.backup_since(&b1, &b2),
        "a restored backup being written",
    );
    restored.close().unwrap();
    // Closed, it is a backup again: linked, and the next open gives the log files of its
    // own before it writes.
    let second = engine.backup_since(&b1, &b2).unwrap();
    assert!(second.linked > 0, "{second:?}");
    let kept = segment_contents(&b2);
    let restored = Engine::open(&b1, config).unwrap();
    fill(&restored, "d", 300);
    restored.close().unwrap();
    assert_eq!(segment_contents(&b2), kept);
    engine.close().unwrap();
}

#[test]
fn an_earlier_backups_fifo_or_symbolic_link_under_a_segments_name_is_copied_over() {
    let root = tempfile::tempdir().unwrap();
    let FirstBackup {
        engine,
        first,
        src,
        b1,
        b2,
    } = first_backup(root.path());
    let names: Vec<String> = segment_links(&b1).into_iter().map(|(n, _)| n).collect();
    // The second segment's name on a symbolic link to a file holding exactly its bytes
    // (here, a copy of it outside the backup; it could be the log's own file); the third's
    // on a FIFO.
    let aside = root.path().join("aside");
    std::fs::rename(b1.join(&names[1]), &aside).unwrap();
    std::os::unix::fs::symlink(&aside, b1.join(&names[1])).unwrap();
    std::fs::remove_file(b1.join(&names[2])).unwrap();
    common::mkfifo(&b1.join(&names[2]));
    let (earlier, dest) = (b1.clone(), b2.clone());
    let engine = Arc::new(engine);
    let e = engine.clone();
    let second = common::within("a backup since a FIFO", move || {
        e.backup_since(&earlier, &dest)
    })
    .unwrap();
    assert_eq!(second.linked, first.segments - 2, "{second:?}");
    for name in &names[1..3] {
        let meta = std::fs::symlink_metadata(b2.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name}: {meta:?}");
    }
    assert_clean(&b2, "the incremental backup");
    Arc::try_unwrap(engine).unwrap().close().unwrap();
    assert_eq!(batches(&b2), batches(&src));
}

#[test]
fn a_power_loss_at_any_step_of_an_opens_unsharing_leaves_both_backups_whole() {
    use common::power::{lose_power, PowerLossIo};
    use rand::SeedableRng;
    let root = tempfile::tempdir().unwrap();
    let FirstBackup { engine, b1, b2, .. } = first_backup(root.path());
    // Every segment shared, the last one too.
    let second = engine.backup_since(&b1, &b2).unwrap();
    assert_eq!(second.linked, second.segments);
    engine.close().unwrap();
    let held = batches(&b1);
    let kept = files_of(&b2);
    let contents = |d: &Path| -> Vec<(String, Digest)> {
        files_of(d).into_iter().map(|(n, b, _)| (n, b)).collect()
    };
    let kept_contents = contents(&b2);
    // A power cut at each file operation of the open in turn (the copies, renames and the
    // directory's sync, then recovery's), what was not durable taken back, in two ways.
    let mut k = 1;
    loop {
        let mut opened = false;
        for seed in 0..2u64 {
            let case = root.path().join(format!("case-{k}-{seed}"));
            let (c1, c2) = (case.join("b1"), case.join("b2"));
            std::fs::create_dir_all(&c1).unwrap();
            std::fs::create_dir_all(&c2).unwrap();
            for (name, _, _) in &kept {
                std::fs::copy(b2.join(name), c2.join(name)).unwrap();
            }
            for (name, _, _) in files_of(&b1) {
                if name.ends_with(".seg") {
                    std::fs::hard_link(c2.join(&name), c1.join(&name)).unwrap();
                } else {
                    std::fs::copy(b1.join(&name), c1.join(&name)).unwrap();
                }
            }
            let io = Arc::new(PowerLossIo::new(k, None));
            match Engine::open_with_io(&c1, small_segments(), io.clone()) {
                Ok(engine) => {
                    opened = true;
                    io.cut_now();
                    let _ = engine.close();
                }
                Err(e) => assert!(io.is_cut(), "cut at {k}: {e}"),
            }
            lose_power(&io, &mut rand::rngs::StdRng::seed_from_u64(seed), 0.5, 0.5);
            let what = format!("cut at operation {k} ({:?}), seed {seed}", io.cut_op());
            assert_eq!(contents(&c2), kept_contents, "{what}: the other backup");
            let engine = Engine::open(&c1, small_segments())
                .unwrap_or_else(|e| panic!("{what}: the next open: {e}"));
            assert!(!c1.join("unshare.tmp").exists(), "{what}");
            assert_eq!(batches(&c1), held, "{what}");
            fill(&engine, "z", 20);
            engine.close().unwrap();
            assert!(
                segment_links(&c1).iter().all(|(_, links)| *links == 1),
                "{what}: {:?}",
                segment_links(&c1)
            );
            assert_eq!(contents(&c2), kept_contents, "{what}: the other backup");
            assert_clean(&c2, &what);
            std::fs::remove_dir_all(&case).unwrap();
        }
        if opened {
            break;
        }
        k += 1;
    }
    // The copies of three segments, their renames and the directory's sync at least.
    assert!(k > 8, "the open took {k} operations");
}

/// Fails every `IoOp::Link` as a link across file systems does, and counts them.
#[derive(Default)]
struct NoLinks(AtomicUsize);

impl Io for NoLinks {
    fn before(&self, op: IoOp, _path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == IoOp::Link {
            self.0.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        Ok(())
    }
}

#[test]
fn an_incremental_backup_onto_another_file_system_copies_every_segment() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let (b1, b2, full) = (
        root.path().join("b1"),
        root.path().join("b2"),
        root.path().join("full"),
    );
    let links = Arc::new(NoLinks::default());
    let engine = Engine::open_with_io(&src, small_segments(), links.clone()).unwrap();
    fill(&engine, "a", 300);
    engine.backup(&b1).unwrap();
    let second = engine.backup_since(&b1, &b2).unwrap();
    assert_eq!(second.linked, 0, "{second:?}");
    assert!(second.segments > 1, "{second:?}");
    // One refused link says the rest would be refused too: the later segments are copied
    // without being read and compared first (before, each was, and each link tried).
    assert_eq!(links.0.load(Ordering::SeqCst), 1, "links tried");
    let whole = engine.backup(&full).unwrap();
    assert_eq!(second.bytes, whole.bytes);
    let contents = |d: &Path| -> Vec<(String, Digest, u64)> { files_of(d) };
    assert_eq!(contents(&b2), contents(&full));
    engine.close().unwrap();
}

/// Counts the syncs of files under `under`, and fails them with EIO once `fail` is set.
struct SyncsUnder {
    under: std::path::PathBuf,
    synced: std::sync::Mutex<Vec<String>>,
    fail: AtomicBool,
}

impl Io for SyncsUnder {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == IoOp::Sync && path.starts_with(&self.under) {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            self.synced.lock().unwrap().push(name);
        }
        Ok(())
    }
}

/// An earlier backup need not be one this crate made and synced: here a plain copy of one
/// (as `cp -r` makes, nothing synced). The files an incremental backup links from it are
/// synced first, so the new backup never stands on bytes a power loss can still take; a
/// failed sync fails the backup, leaving nothing under its name. Before, none was synced
/// (the hook saw no sync of the copy's files).
#[test]
fn an_incremental_backup_syncs_each_earlier_file_it_links() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let (b1, copy, b2, b3) = (
        root.path().join("b1"),
        root.path().join("copy"),
        root.path().join("b2"),
        root.path().join("b3"),
    );
    let hook = Arc::new(SyncsUnder {
        under: copy.clone(),
        synced: Default::default(),
        fail: AtomicBool::new(false),
    });
    let engine = Engine::open_with_io(&src, small_segments(), hook.clone()).unwrap();
    fill(&engine, "a", 300);
    engine.backup(&b1).unwrap();
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&b1).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let second = engine.backup_since(&copy, &b2).unwrap();
    assert!(second.linked > 1, "{second:?}");
    let mut linked: Vec<String> = segment_links(&b2)
        .into_iter()
        .filter(|(_, links)| *links == 2)
        .map(|(name, _)| name)
        .collect();
    let mut synced = hook.synced.lock().unwrap().clone();
    linked.sort();
    synced.sort();
    assert_eq!(synced, linked, "earlier files synced, against those linked");
    hook.fail.store(true, Ordering::SeqCst);
    let failed = engine.backup_since(&copy, &b3).unwrap_err().to_string();
    assert!(
        failed.contains("sync earlier backup's segment") && failed.contains("copy"),
        "{failed}"
    );
    assert!(
        !b3.exists(),
        "a failed backup left something under its name"
    );
    engine.close().unwrap();
    assert_eq!(batches(&b2), batches(&src));
}

/// Opens an engine on `earlier` just before the first `IoOp::Link` of a backup, and keeps
/// what the open gave.
struct OpenEarlierAtFirstLink {
    earlier: std::path::PathBuf,
    opened: std::sync::Mutex<Option<mergelog::Result<Engine>>>,
}

impl Io for OpenEarlierAtFirstLink {
    fn before(&self, op: IoOp, _path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        let Ok(mut opened) = self.opened.lock() else {
            return Ok(());
        };
        if op == IoOp::Link && opened.is_none() {
            *opened = Some(Engine::open(&self.earlier, small_segments()));
        }
        Ok(())
    }
}

#[test]
fn an_engine_that_opens_the_earlier_backup_while_its_files_are_linked_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("log");
    let (b1, b2) = (root.path().join("b1"), root.path().join("b2"));
    let hook = Arc::new(OpenEarlierAtFirstLink {
        earlier: b1.clone(),
        opened: std::sync::Mutex::new(None),
    });
    let engine = Engine::open_with_io(&src, small_segments(), hook.clone()).unwrap();
    fill(&engine, "a", 300);
    engine.backup(&b1).unwrap();
    // Its first open comes after the backup looked at it and before it links a file: it
    // would give its segments files of their own before the links exist, then write into
    // the files the new backup links.
    let second = engine.backup_since(&b1, &b2).unwrap();
    assert_eq!(second.linked, second.segments);
    let kept = segment_contents(&b2);
    let opened = hook.opened.lock().unwrap().take();
    match opened.expect("a link was made") {
        Ok(restored) => {
            fill(&restored, "b", 300);
            restored.close().unwrap();
            let now = segment_contents(&b2);
            let changed: Vec<_> = now
                .iter()
                .filter(|f| !kept.contains(f))
                .map(|(n, _)| n.clone())
                .collect();
            panic!("the earlier backup opened while linked; the new backup's {changed:?} changed");
        }
        Err(e) => assert!(matches!(e, mergelog::Error::Locked(_)), "{e}"),
    }
    // Once the backup is made, the earlier one opens and gives its files names of their own.
    let restored = Engine::open(&b1, small_segments()).unwrap();
    fill(&restored, "b", 300);
    restored.close().unwrap();
    assert_eq!(segment_contents(&b2), kept);
    assert_clean(&b2, "the incremental backup");
    engine.close().unwrap();
}

#[test]
fn a_closed_engine_makes_no_backup_of_a_directory_another_engine_may_have() {
    // `close` gives the directory up: another engine may open it, write, and retire. A backup
    // made afterwards by the closed engine (or of a view of it) would hold the closed engine's
    // batches with the new engine's `ids` file, whose ids name batches it does not hold:
    // an engine opened on it would refuse those requests as duplicates without their writes.
    for through_view in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let (src, dest, reference) = (
            root.path().join("log"),
            root.path().join("backup"),
            root.path().join("reference"),
        );
        let config = remembering_64_ids();
        let first = Engine::open(&src, config.clone()).unwrap();
        put_ids(&first, 0..150);
        let want = first.backup(&reference).unwrap();
        let view = first.replay().unwrap();
        first.close().unwrap();

        let second = Engine::open(&src, config.clone()).unwrap();
        put_ids(&second, 150..400);
        let last = second.segments().last().unwrap().first_seq;
        assert!(
            last > want.next_seq,
            "the log rolled past the first engine's end"
        );
        second.retire_before(last).unwrap();
        second.close().unwrap();

        let made = match through_view {
            false => first.backup(&dest),
            true => view.backup(&dest),
        };
        drop(view);
        drop(first);
        if let Ok(backup) = &made {
            let (got, want) = (
                outcomes(&dest, &config, 0..400),
                outcomes(&reference, &config, 0..400),
            );
            let differ: Vec<_> = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g != w)
                .map(|((n, g), (_, w))| format!("id {n}: {g:?}, not {w:?}"))
                .collect();
            panic!(
                "through a view {through_view}: a closed engine made a backup (to batch {}); \
                 {} of its answers are not the log's at that batch: {:?}",
                backup.next_seq.get() - 1,
                differ.len(),
                differ.first()
            );
        }
        let err = made.expect_err("refused");
        assert!(
            matches!(err, mergelog::Error::Closed),
            "through a view {through_view}: {err}"
        );
        assert!(
            !dest.exists(),
            "through a view {through_view}: left {dest:?}"
        );
    }
}
