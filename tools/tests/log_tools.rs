//! `mergelog inspect`, `verify` and `dump` on logs written through the library in the test:
//! verify passes a clean log and names the file and offset of a flipped byte in a copy,
//! dump prints exactly the records that survived coalescing, inspect's counts match
//! `LogReader`, and unusable directories exit 2 with one line.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use mergelog::{Config, Engine, LogReader, RecordOp, WindowPolicy, WriteBatch};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Small segments, so that a couple of megabytes of puts span several of them.
fn small_segments() -> Config {
    Config {
        segment_bytes: 1 << 20,
        batch_bytes_max: 256 << 10,
        ..Config::default()
    }
}

/// A log of `rounds` batches of 100 puts with 1 KiB values over 300 keys.
fn write_log(dir: &Path, rounds: u32) {
    let engine = Engine::open(dir, small_segments()).unwrap();
    for round in 0..rounds {
        put_round(&engine, round);
    }
    engine.close().unwrap();
}

/// Round `round` of `write_log`: 100 puts with 1 KiB values, waited for.
fn put_round(engine: &Engine, round: u32) {
    let value = vec![0x5au8; 1024];
    let tickets: Vec<_> = (0..100u32)
        .map(|i| {
            let key = format!("key-{:05}", (round * 37 + i * 7) % 300);
            engine.put(key.as_bytes(), &value).unwrap()
        })
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    LogReader::open(dir)
        .unwrap()
        .segments()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// Copies the segment files of `from` into a new directory `to`.
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for seg in segment_files(from) {
        std::fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn run_code(args: &[&str]) -> (i32, String, String) {
    let out = mergelog(args);
    let code = out.status.code().expect("exited normally");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    (code, stdout(&out), err)
}

#[test]
fn verify_passes_a_clean_log_and_names_a_flipped_byte() {
    let root = tempfile::tempdir().unwrap();
    let clean = root.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    write_log(&clean, 25);
    let segments = segment_files(&clean);
    assert!(
        segments.len() >= 2,
        "expected several segments, got {segments:?}"
    );

    let (code, out, _) = run_code(&["verify", clean.to_str().unwrap()]);
    assert_eq!(code, 0, "a clean log fails verify: {out}");
    assert!(out.starts_with("clean:"), "{out}");

    // A byte inside the body of a frame in the middle of the log: the CRC catches it, at
    // the frame's offset.
    let reader = LogReader::open(&clean).unwrap();
    let victim = reader
        .batches()
        .find(|b| b.segment() == segments[1].as_path() && b.offset() > 64)
        .expect("a second frame in the second segment");
    let (seg_name, frame_offset) = (
        victim.segment().file_name().unwrap().to_owned(),
        victim.offset(),
    );
    let flip_at = frame_offset + 32 + 17;
    assert!(flip_at < frame_offset + victim.frame_len() as u64);
    drop(reader);

    let damaged = root.path().join("damaged");
    copy_log(&clean, &damaged);
    flip_byte(&damaged.join(&seg_name), flip_at);
    let (code, out, err) = run_code(&["verify", damaged.to_str().unwrap()]);
    assert_eq!(code, 1, "verify missed the flipped byte: {out} {err}");
    let seg_path = damaged.join(&seg_name);
    assert!(
        out.contains(&seg_path.display().to_string()),
        "the report does not name {}: {out}",
        seg_path.display()
    );
    assert!(
        out.contains(&format!("offset {frame_offset}")),
        "the report does not name offset {frame_offset}: {out}"
    );
    // The original is untouched and still clean.
    assert_eq!(run_code(&["verify", clean.to_str().unwrap()]).0, 0);

    // Bytes after the last frame of the last segment: a torn write, which a reader skips
    // but verify does not.
    let torn = root.path().join("torn");
    copy_log(&clean, &torn);
    let reader = LogReader::open(&torn).unwrap();
    let last = reader.batches().last().unwrap();
    let (last_seg, end) = (
        last.segment().to_owned(),
        last.offset() + last.frame_len() as u64,
    );
    drop(reader);
    flip_byte(&last_seg, end + 100);
    let (code, out, _) = run_code(&["verify", torn.to_str().unwrap()]);
    assert_eq!(code, 1, "verify missed garbage after the last frame: {out}");
    assert!(out.contains(&format!("offset {end}")), "{out}");
    // inspect and dump name it too (the fuzz target `tools_dir` found they did not): the
    // engine's open cuts it off, which they tell.
    let at = format!("{} at offset {end}", last_seg.display());
    let out = succeeds(&["inspect", torn.to_str().unwrap()]);
    assert!(
        out.contains(&format!("damage: {at}"))
            && out.contains("a torn tail, which the engine's open cuts off"),
        "inspect does not report the torn tail at {end}: {out}"
    );
    let (code, _, err) = run_code(&["dump", torn.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("which the engine would cut off: {at}")),
        "dump does not note the torn tail at {end}: {err}"
    );

    // A damaged segment header: offset 0 of the first file.
    let header = root.path().join("header");
    copy_log(&clean, &header);
    let first = header.join(segments[0].file_name().unwrap());
    flip_byte(&first, 20);
    let (code, out, _) = run_code(&["verify", header.to_str().unwrap()]);
    assert_eq!(code, 1, "verify missed a damaged header: {out}");
    assert!(
        out.contains(&format!("{} at offset 0", first.display())),
        "{out}"
    );
    // dump shows what comes before it (nothing) and does not read as if a torn tail was
    // found there.
    let (code, out, err) = run_code(&["dump", header.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("refuses to open it (an open cuts off only a torn tail; this is not one)"),
        "{err}"
    );
    // inspect reports it rather than calling the directory empty.
    let out = succeeds(&["inspect", header.to_str().unwrap()]);
    assert!(
        out.contains("damage: ") && out.contains("at offset 0"),
        "{out}"
    );
}

#[test]
fn unusable_directories_exit_2_with_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let file = root.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for cmd in ["verify", "inspect", "dump"] {
        rejects_with(2, &[cmd, missing.to_str().unwrap()], "does not exist");
        rejects_with(2, &[cmd, file.to_str().unwrap()], "not a directory");
        rejects_with(
            2,
            &[cmd, empty.to_str().unwrap()],
            "no mergelog segment files",
        );
    }
    // A file named almost as a segment: the error says what a segment's name is, and names
    // the file found.
    std::fs::write(empty.join("foo.seg"), b"x").unwrap();
    std::fs::write(empty.join("notes.txt"), b"x").unwrap();
    for cmd in ["verify", "inspect", "dump"] {
        rejects_with(
            2,
            &[cmd, empty.to_str().unwrap()],
            "no segment file (20 decimal digits + .seg, as 00000000000000000001.seg) nor any \
             other file of a log; it holds foo.seg and 1 other file",
        );
    }
}

/// One JSON line of `dump --json`, decoded.
fn record(line: &Value) -> (u64, String, Vec<u8>, Option<Vec<u8>>) {
    let hex = |v: &Value| -> Vec<u8> {
        let s = v.as_str().expect("hex string");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    (
        line["seq"].as_u64().unwrap(),
        line["op"].as_str().unwrap().to_owned(),
        hex(&line["key"]),
        (!line["value"].is_null()).then(|| hex(&line["value"])),
    )
}

#[test]
fn dump_prints_exactly_the_surviving_records() {
    let dir = tempfile::tempdir().unwrap();
    // A long linger: a window holds everything submitted until `flush` cuts it.
    let config = Config {
        window: WindowPolicy::Linger(Duration::from_secs(5)),
        window_age_max: Duration::from_secs(5),
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    let flush = |tickets: Vec<mergelog::Ticket>| {
        engine.flush().unwrap().wait().unwrap();
        for t in tickets {
            t.wait().unwrap();
        }
    };
    // Batch 1: one put.
    flush(vec![engine.put(b"apple", b"red").unwrap()]);
    // Batch 2: one window; per key only the last write survives, sorted by key.
    flush(vec![
        engine.put(b"kiwi", b"green").unwrap(),
        engine.put(b"apple", b"green").unwrap(),
        engine.delete(b"plum").unwrap(),
        engine.put(b"kiwi", b"brown").unwrap(),
        engine.put(b"fig", b"\x00\xff").unwrap(),
    ]);
    // Batch 3: an atomic batch and a delete.
    let mut batch = WriteBatch::new();
    batch.put(b"pear", b"yellow").delete(b"apple");
    flush(vec![engine.write(&batch).unwrap()]);
    engine.close().unwrap();
    drop(engine);

    type Rec = (u64, &'static str, &'static [u8], Option<&'static [u8]>);
    let expected: Vec<Rec> = vec![
        (1, "put", b"apple", Some(b"red")),
        (2, "put", b"apple", Some(b"green")),
        (2, "put", b"fig", Some(b"\x00\xff")),
        (2, "put", b"kiwi", Some(b"brown")),
        (2, "delete", b"plum", None),
        (3, "delete", b"apple", None),
        (3, "put", b"pear", Some(b"yellow")),
    ];
    // The library agrees on what the log holds (batch 3 in the order the reader gives).
    let reader = LogReader::open(dir.path()).unwrap();
    let logged: Vec<(u64, RecordOp, Vec<u8>, Vec<u8>)> = reader
        .batches()
        .flat_map(|b| {
            let seq = b.seq().get();
            b.records()
                .map(move |r| (seq, r.op, r.key.to_vec(), r.value.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    drop(reader);
    let mut expected_in_log_order = expected.clone();
    // Within batch 3 the records are in whatever order the log holds them (sorted when
    // coalesced); take that order from the reader.
    let batch3: Vec<&(u64, RecordOp, Vec<u8>, Vec<u8>)> =
        logged.iter().filter(|r| r.0 == 3).collect();
    if batch3.first().map(|r| r.2.as_slice()) == Some(b"pear") {
        expected_in_log_order.swap(5, 6);
    }
    assert_eq!(logged.len(), expected.len(), "the log holds {logged:?}");

    let out = succeeds(&["dump", dir.path().to_str().unwrap(), "--json"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let got: Vec<_> = lines.iter().map(record).collect();
    let want: Vec<_> = expected_in_log_order
        .iter()
        .map(|(seq, op, key, value)| {
            (
                *seq,
                op.to_string(),
                key.to_vec(),
                value.map(<[u8]>::to_vec),
            )
        })
        .collect();
    assert_eq!(got, want, "dump --json printed:\n{out}");

    // --from skips whole batches.
    let out = succeeds(&[
        "dump",
        dir.path().to_str().unwrap(),
        "--json",
        "--from",
        "2",
    ]);
    let got: Vec<_> = out
        .lines()
        .map(|l| record(&serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(got, want[1..], "dump --from 2");
    let out = succeeds(&["dump", dir.path().to_str().unwrap(), "--from", "4"]);
    assert!(out.is_empty(), "records past the end: {out}");

    // Text: printable keys as text, others in hex; utf8 encoding in JSON on request.
    let out = succeeds(&["dump", dir.path().to_str().unwrap()]);
    assert!(out.starts_with("1\tput\tapple\tred\n"), "{out}");
    assert!(out.contains("2\tput\tfig\t0x00ff\n"), "{out}");
    assert!(out.contains("2\tdelete\tplum\n"), "{out}");
    let out = succeeds(&[
        "dump",
        dir.path().to_str().unwrap(),
        "--json",
        "--encoding",
        "utf8",
    ]);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["key"], "apple");
    assert_eq!(first["value"], "red");

    // inspect sees the coalescing of batch 2: five writes acknowledged, four records.
    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let b2 = &report["batch_list"][1];
    assert_eq!(b2["seq"], 2);
    assert_eq!(b2["records"], 4);
    assert_eq!(b2["ops_acknowledged"], 5);
    assert_eq!(b2["coalesced"], 1);
    assert_eq!(report["key_min"], "6170706c65"); // apple
    assert_eq!(report["key_max"], "706c756d"); // plum
}

#[test]
fn inspect_counts_match_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 25);
    let reader = LogReader::open(dir.path()).unwrap();
    let batches: Vec<_> = reader.batches().collect();
    let records: usize = batches.iter().map(|b| b.len()).sum();
    let acked: u64 = batches
        .iter()
        .map(|b| u64::from(b.ops_acknowledged()))
        .sum();
    let frame_bytes: u64 = batches.iter().map(|b| b.frame_len() as u64).sum();
    assert_eq!(acked, 2500, "every put acknowledged once");

    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).expect("inspect --json parses");
    let segments = report["segments"].as_array().unwrap();
    assert_eq!(segments.len(), reader.segment_count());
    assert!(segments.len() >= 2);
    assert_eq!(int(&report, "batches"), batches.len() as u64);
    assert_eq!(int(&report, "records"), records as u64);
    assert_eq!(int(&report, "puts"), records as u64);
    assert_eq!(int(&report, "ops_acknowledged"), acked);
    assert_eq!(int(&report, "coalesced"), acked - records as u64);
    assert_eq!(int(&report, "frame_bytes"), frame_bytes);
    assert_eq!(int(&report, "next_seq"), reader.next_seq().get());
    assert!(report["damage"].is_null());
    let per_segment: u64 = segments.iter().map(|s| int(s, "batches")).sum();
    assert_eq!(per_segment, batches.len() as u64);
    assert_eq!(
        report["batch_list"].as_array().unwrap().len(),
        batches.len()
    );
    for (listed, b) in report["batch_list"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&batches)
    {
        assert_eq!(int(listed, "seq"), b.seq().get());
        assert_eq!(int(listed, "offset"), b.offset());
        assert_eq!(int(listed, "records"), b.len() as u64);
    }
    assert_eq!(report["key_min"], "6b65792d3030303030"); // key-00000
    assert_eq!(report["key_max"], "6b65792d3030323939"); // key-00299

    let text = succeeds(&["inspect", dir.path().to_str().unwrap(), "--limit", "3"]);
    assert!(
        text.contains(&format!("segments: {}\n", reader.segment_count())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "batches: {} (seq 1..{})",
            batches.len(),
            batches.len()
        )),
        "{text}"
    );
    assert!(text.contains("key range: key-00000 .. key-00299"), "{text}");
    assert!(text.contains("damage: none"), "{text}");
    assert!(
        text.contains(&format!("first 3 of {}", batches.len())),
        "{text}"
    );
    drop(reader);

    // A damaged copy: inspect reads up to the damage and says where it is; dump prints the
    // records before it and exits 1.
    let damaged = dir.path().join("damaged");
    copy_log(dir.path(), &damaged);
    let first_seg = segment_files(&damaged)[0].clone();
    let second = LogReader::open(&damaged)
        .unwrap()
        .batches()
        .nth(1)
        .unwrap()
        .offset();
    flip_byte(&first_seg, second + 40);
    let out = succeeds(&["inspect", damaged.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(int(&report, "batches"), 1, "inspect read past the damage");
    assert_eq!(int(&report["damage"], "offset"), second);
    let (code, out, err) = run_code(&["dump", damaged.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "dump of a log damaged mid-way: {err}");
    assert!(
        out.lines().all(|l| l.contains("\"seq\":1,")),
        "records past the damage"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("offset {second}")), "{err}");
}

/// A clean log whose last segment is a reused file (`recycle_segments`): past its frames'
/// end marker lie the old bytes of the file's earlier life, which `verify` must not take for
/// a torn write; `inspect` marks the segment as reused.
#[test]
fn verify_passes_a_clean_log_ending_in_a_reused_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        recycle_segments: 2,
        ..small_segments()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    let mut round = 0u32;
    let last_reused = |engine: &Engine| {
        let path = engine.segments().pop().unwrap().path;
        let header = std::fs::read(path).unwrap();
        // Version 2 header flags, bit 0: reused; and some frames in it.
        header[32] & 1 == 1 && engine.replay().unwrap().end_offset() > 64
    };
    while !last_reused(&engine) {
        put_round(&engine, round);
        let segs = engine.segments();
        engine
            .retire_before(segs[segs.len() - 1].first_seq)
            .unwrap();
        round += 1;
        assert!(round < 2000, "no segment was reused");
    }
    engine.close().unwrap();
    drop(engine);
    let (code, out, err) = run_code(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "a clean log ending in a reused segment fails verify: {out} {err}"
    );
    let inspect: Value = serde_json::from_str(&succeeds(&[
        "inspect",
        dir.path().to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let segs = inspect["segments"].as_array().unwrap();
    assert_eq!(segs.last().unwrap()["recycled"], true);
    // Nor do inspect and dump take the old bytes for a torn write's remains, as they do
    // non-zero bytes after the last frame of a fresh segment.
    assert_eq!(inspect["damage"], Value::Null, "{inspect}");
    let (code, _, err) = run_code(&["dump", dir.path().to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// `inspect` lists the durable consumers with their committed batch and lag, in the text and
/// the JSON, and says when there are none.
#[test]
fn inspect_lists_consumers_and_their_lag() {
    let dir = tempfile::tempdir().unwrap();
    let text = |dir: &Path| succeeds(&["inspect", dir.to_str().unwrap()]);
    {
        let engine = Engine::open(dir.path(), small_segments()).unwrap();
        for round in 0..6 {
            put_round(&engine, round);
        }
        let mut behind = engine.consumer("indexer").unwrap();
        let first = behind.next().unwrap().unwrap();
        behind.commit(first.seq).unwrap();
        engine.consumer("audit").unwrap();
        // Three requests with ids, after the indexer's commit: accepted, not processed.
        for n in 1..=3u128 {
            engine.put_with_id(n, b"tx", b"v").unwrap().wait().unwrap();
        }
        engine.close().unwrap();
    }
    let reader = LogReader::open(dir.path()).unwrap();
    let infos = reader.consumers().unwrap();
    assert_eq!(infos.len(), 2);
    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let listed = report["consumers"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (l, c) in listed.iter().zip(&infos) {
        assert_eq!(l["name"], c.name.as_str());
        assert_eq!(int(l, "committed"), c.committed.get());
        assert_eq!(int(l, "lag_batches"), c.lag_batches);
        assert_eq!(int(l, "lag_bytes"), c.lag_bytes);
    }
    assert_eq!(listed[0]["name"], "audit");
    assert_eq!(int(&listed[0], "committed"), 0);
    assert_eq!(int(&listed[0], "lag_batches"), reader.next_seq().get() - 1);
    assert_eq!(int(&listed[1], "committed"), 1);
    for l in listed {
        assert_eq!(int(l, "pending_id_count"), 3);
        let ids: Vec<&str> = l["pending_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (1..=3u128).map(|n| format!("{n:032x}")).collect();
        assert_eq!(ids, want, "oldest first");
        assert!(l["lag_age_s"].as_f64().is_some_and(|a| a >= 0.0), "{l}");
    }
    let t = text(dir.path());
    assert!(t.contains("consumers: 2\n"), "{t}");
    assert!(t.contains("indexer"), "{t}");
    assert!(
        t.contains("accepted but not processed by indexer (oldest 3 of 3)"),
        "{t}"
    );
    assert!(t.contains(&format!("{:032x}", 2)), "{t}");

    let empty = tempfile::tempdir().unwrap();
    write_log(empty.path(), 1);
    let t = text(empty.path());
    assert!(t.contains("consumers: none\n"), "{t}");
}

/// A consumer behind a retirement (`retire_before_forced` took batches it had not
/// committed): `inspect` says so, with how many were retired unread, and gives no pending ids
/// (the library refuses them, as the consumer's next read: the retired batches' ids are gone)
/// rather than the held batches' alone as if they were all.
#[test]
fn inspect_reports_a_consumer_behind_a_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let retired;
    {
        let engine = Engine::open(dir.path(), small_segments()).unwrap();
        engine.consumer("late").unwrap();
        let tickets: Vec<_> = (0..2_000u128)
            .map(|n| {
                let key = format!("k{n}");
                engine.put_with_id(n, key.as_bytes(), &[1u8; 1024]).unwrap()
            })
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
        let segments = engine.segments();
        assert!(segments.len() >= 2, "{segments:?}");
        retired = engine
            .retire_before_forced(segments[1].first_seq)
            .unwrap()
            .first_seq
            .get()
            - 1;
        engine.close().unwrap();
    }
    let infos = LogReader::open(dir.path()).unwrap().consumers().unwrap();
    assert_eq!(infos[0].retired_unread, retired, "{infos:?}");
    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let l = &report["consumers"][0];
    assert_eq!(int(l, "retired_unread"), retired, "{l}");
    assert_eq!(l["pending_id_count"], Value::Null, "{l}");
    assert_eq!(l["pending_ids"].as_array().map(Vec::len), Some(0), "{l}");
    let t = succeeds(&["inspect", dir.path().to_str().unwrap()]);
    assert!(
        t.contains(&format!(
            "late is behind a retirement: batches 1 to {retired} were retired"
        )),
        "{t}"
    );
}

/// `inspect` gives each segment's live bytes: the records still the newest put of their key.
/// A segment whose every key was overwritten later holds nothing live.
#[test]
fn inspect_shows_the_live_ratio_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![7u8; 1000];
    {
        let engine = Engine::open(dir.path(), small_segments()).unwrap();
        // Keys 0..1500 (about 1.5 MB: two segments), then keys 0..500 again, then a delete.
        for round in 0..2 {
            let n = if round == 0 { 1500 } else { 500 };
            let tickets: Vec<_> = (0..n)
                .map(|i| engine.put(format!("k{i:05}").as_bytes(), &value).unwrap())
                .collect();
            for t in tickets {
                t.wait().unwrap();
            }
        }
        engine.delete(b"k01499").unwrap().wait().unwrap();
        engine.close().unwrap();
    }
    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let segs = report["segments"].as_array().unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    let live: u64 = segs.iter().map(|s| int(s, "live_bytes")).sum();
    // Live: 1,499 keys (one deleted), each a 7-byte header, a 6-byte key, 1,000 bytes.
    assert_eq!(live, 1499 * (7 + 6 + 1000));
    // The first segment's keys 0..~1000 were overwritten or are among them: its ratio is
    // below the last segment's, which holds only newest records.
    let ratio = |s: &Value| s["live_ratio"].as_f64().unwrap();
    let last = segs.last().unwrap();
    assert!(ratio(&segs[0]) < ratio(last), "{segs:?}");
    assert!(ratio(last) > 0.9 && ratio(last) <= 1.0, "{last}");
    let t = succeeds(&["inspect", dir.path().to_str().unwrap()]);
    assert!(t.contains("live"), "{t}");
}

/// A closed stderr (`mergelog dump DIR 2>&1 | head`: the reader gone) is no reason to
/// panic: the note is dropped and the exit code is the run's. `eprintln!` panicked (101),
/// as `println!` would on a closed stdout, which the tools already handle.
#[test]
fn a_closed_stderr_is_not_a_panic() {
    let root = tempfile::tempdir().unwrap();
    write_log(root.path(), 2);
    let d = root.path().to_str().unwrap();
    let missing = root.path().join("missing");
    let cases: [(&[&str], i32); 3] = [
        // A note on stderr after the records: nothing at or after batch 99.
        (&["dump", d, "--from", "99"], 0),
        // The one-line error of a failed run, and of a bad flag.
        (&["verify", missing.to_str().unwrap()], 2),
        (&["dump", d, "--from", "x"], 2),
    ];
    for (args, expect) in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mergelog"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(expect), "{args:?}");
    }
}

#[test]
fn backup_copies_a_log_being_written_into_one_verify_passes() {
    let root = tempfile::tempdir().unwrap();
    let (dir, dest) = (root.path().join("log"), root.path().join("copy"));
    let engine = Engine::open(&dir, small_segments()).unwrap();
    for round in 0..30 {
        put_round(&engine, round);
    }
    let (d, b) = (dir.to_str().unwrap(), dest.to_str().unwrap());
    // The engine keeps the log open (it holds `LOCK`): the copy is a reader's.
    let (code, out, err) = run_code(&["backup", d, b]);
    assert_eq!(code, 0, "{err}");
    let last = LogReader::open(&dir).unwrap().next_seq().get() - 1;
    assert!(
        out.contains(&format!("batches 1..{last} in ")),
        "{out}\n(last batch {last})"
    );
    assert!(out.contains("an engine has the log open"), "{out}");
    let (code, out, err) = run_code(&["verify", b]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("clean: "), "{out}");
    // The copy holds the log's records, in order.
    let records = |p: &Path| -> Vec<(u64, Vec<u8>)> {
        LogReader::open(p)
            .unwrap()
            .batches()
            .flat_map(|b| {
                let seq = b.seq().get();
                b.records()
                    .map(move |r| (seq, r.key.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    engine.close().unwrap();
    let original: Vec<_> = records(&dir)
        .into_iter()
        .filter(|(s, _)| *s <= last)
        .collect();
    assert_eq!(records(&dest), original);
    // A destination that exists is refused (exit 2, an unusable argument; one line), and
    // left alone.
    let (code, _, err) = run_code(&["backup", d, b]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("destination exists"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(records(&dest), original);
    // A directory that is no log exits 2.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let other = root.path().join("other");
    let (code, _, err) = run_code(&["backup", empty.to_str().unwrap(), other.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(!other.exists());
}

#[test]
fn backup_since_links_what_the_earlier_backup_holds_and_the_copy_verifies() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let (b1, b2) = (root.path().join("b1"), root.path().join("b2"));
    let engine = Engine::open(&dir, small_segments()).unwrap();
    for round in 0..30 {
        put_round(&engine, round);
    }
    engine.close().unwrap();
    let d = dir.to_str().unwrap();
    let (code, _, err) = run_code(&["backup", d, b1.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let segments = mergelog::internals::list_segments(&b1).unwrap().len();
    assert!(segments >= 2, "{segments} segments");
    let (code, out, err) = run_code(&[
        "backup",
        "--since",
        b1.to_str().unwrap(),
        d,
        b2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // Nothing was written since: every segment is linked, none copied.
    assert!(
        out.contains(&format!(
            "(0 bytes copied; {segments} segments linked from "
        )),
        "{out}"
    );
    for (_, path) in mergelog::internals::list_segments(&b2).unwrap() {
        assert_eq!(
            std::fs::metadata(&path).unwrap().nlink(),
            2,
            "{}",
            path.display()
        );
    }
    let (code, out, err) = run_code(&["verify", b2.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // An earlier backup that does not exist is refused (a mistyped name), and nothing made.
    let b3 = root.path().join("b3");
    let missing = root.path().join("missing");
    let (code, _, err) = run_code(&[
        "backup",
        "--since",
        missing.to_str().unwrap(),
        d,
        b3.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the earlier backup is not a directory"),
        "{err}"
    );
    assert!(!b3.exists());
}

/// A backup's destination or earlier backup that cannot be used is an unusable argument, as
/// the README's convention has it (exit 2, "unwritable output path", "missing directory"),
/// one line naming it, and nothing is made: a destination in a missing directory, under a
/// regular file, where no directory can be made (`/proc`), one that exists, or an `--since`
/// that does not exist. Each exited 1 (the first: "make backup directory
/// .../missing/.mergelog-backup-...: No such file or directory").
#[test]
fn backup_refuses_an_unusable_destination_or_earlier_backup_with_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    write_log(&dir, 2);
    let file = root.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let exists = root.path().join("exists");
    std::fs::create_dir(&exists).unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    let d = path(dir.clone());
    let fresh = path(root.path().join("fresh"));
    let missing = path(root.path().join("missing"));
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec![d.clone(), path(root.path().join("missing/dest"))],
            "does not exist",
        ),
        (vec![d.clone(), path(file.join("dest"))], "not a directory"),
        (
            vec![d.clone(), "/proc/mergelog-backup-test".into()],
            "/proc/mergelog-backup-test",
        ),
        (vec![d.clone(), path(exists.clone())], "destination exists"),
        (
            vec!["--since".into(), missing, d.clone(), fresh.clone()],
            "the earlier backup is not a directory",
        ),
    ];
    let before = std::fs::read_dir(root.path()).unwrap().count();
    for (args, expect) in cases {
        let args: Vec<&str> = std::iter::once("backup")
            .chain(args.iter().map(String::as_str))
            .collect();
        rejects_with(2, &args, expect);
        assert_eq!(std::fs::read_dir(&exists).unwrap().count(), 0, "{args:?}");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            before,
            "{args:?} left something behind"
        );
    }
    // The log was usable all along.
    let (code, _, err) = run_code(&["backup", &d, &fresh]);
    assert_eq!(code, 0, "{err}");
}

/// An `--since EARLIER` that an engine has open (the log itself, or a restored backup in
/// service) cannot serve as an earlier backup: an unusable argument, as a missing one is
/// (exit 2, one line naming it), and nothing is made. It exited 1 until session 40 ("back up
/// ... an engine has it open (its LOCK is held) ..."), as a failure of the backup.
#[test]
fn backup_since_an_earlier_backup_an_engine_has_open_exits_2() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    write_log(&dir, 2);
    let earlier = root.path().join("earlier");
    let (d, e) = (dir.to_str().unwrap(), earlier.to_str().unwrap());
    let (code, _, err) = run_code(&["backup", d, e]);
    assert_eq!(code, 0, "{err}");
    let fresh = root.path().join("fresh");
    let f = fresh.to_str().unwrap();
    for (held, name) in [(&earlier, "a restored backup"), (&dir, "the log itself")] {
        let engine = Engine::open(held, small_segments()).unwrap();
        rejects_with(
            2,
            &["backup", "--since", held.to_str().unwrap(), d, f],
            "an engine has it open",
        );
        assert!(!fresh.exists(), "{name}");
        let left = std::fs::read_dir(root.path()).unwrap().count();
        assert_eq!(left, 2, "{name}: left something behind");
        engine.close().unwrap();
    }
    // Closed, it serves, also while another backup links from it (its hold on `LOCK` is
    // shared, as this one's).
    let other_backup = std::fs::File::open(earlier.join("LOCK")).unwrap();
    other_backup.lock_shared().unwrap();
    let (code, _, err) = run_code(&["backup", "--since", e, d, f]);
    assert_eq!(code, 0, "{err}");
    drop(other_backup);
}

/// A reader that stops reading (`mergelog dump LOG | head -1`) does not make a damaged log
/// read as a sound one: the exit code and the note on stderr are those of the damage, for
/// the text and the JSON lines alike, and the log is left as it was. dump returned 0 at the
/// first failed write, before it named the damage.
#[test]
fn dump_into_a_closed_pipe_still_reports_the_damage() {
    let root = tempfile::tempdir().unwrap();
    let clean = root.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    write_log(&clean, 25);
    let damaged = root.path().join("damaged");
    copy_log(&clean, &damaged);
    let second_segment = segment_files(&damaged)[1].clone();
    let victim = LogReader::open(&damaged)
        .unwrap()
        .batches()
        .find(|b| b.segment() == second_segment.as_path() && b.offset() > 64)
        .expect("a second frame in the second segment")
        .offset();
    flip_byte(&second_segment, victim + 49);
    let before = std::fs::read(&second_segment).unwrap();
    let d = damaged.to_str().unwrap();
    for json in [false, true] {
        let args: &[&str] = if json {
            &["dump", d, "--json"]
        } else {
            &["dump", d]
        };
        let (code, err) = run_into_closed_pipe(args);
        assert_eq!(
            code, 1,
            "{args:?} into a closed pipe: exit {code}, stderr {err:?}"
        );
        assert!(
            err.contains(&format!("{} at offset {victim}", second_segment.display())),
            "{args:?}: {err:?}"
        );
    }
    assert_eq!(std::fs::read(&second_segment).unwrap(), before);
    // A clean log into a closed pipe: nothing to report, exit 0.
    let (code, err) = run_into_closed_pipe(&["dump", clean.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// A key's newest record: its segment file's name, the record's bytes, a put's value.
type Newest = (String, u64, Option<Vec<u8>>);

/// `inspect`'s figures against an independent count, on a log with overwrites, deletes,
/// merges, a batch and a compaction: each segment's batches and compaction batches against a
/// `LogReader`'s; its live bytes against the records `Engine::get` still returns (each key's
/// newest record, found in the log, must be a put of the value the engine gives); the totals
/// against `Engine::space` and the files against `Engine::segments`.
#[test]
fn inspect_agrees_with_the_engine_on_a_compacted_log() {
    use mergelog::MergeOperator;
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        merge: Some(MergeOperator::Add),
        ..small_segments()
    };
    let value = |round: u32| vec![b'a' + (round % 26) as u8; 900 + round as usize];
    let key = |i: u32| format!("k{i:05}").into_bytes();
    let counter = |i: u32| format!("c{i:03}").into_bytes();
    let wait_all = |tickets: Vec<mergelog::Ticket>| {
        for t in tickets {
            t.wait().unwrap();
        }
    };
    let compacted = {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        wait_all(
            (0..1500)
                .map(|i| engine.put(&key(i), &value(0)).unwrap())
                .collect(),
        );
        wait_all(
            (0..400)
                .map(|i| engine.put(&key(i), &value(1)).unwrap())
                .collect(),
        );
        wait_all(
            (400..600)
                .map(|i| engine.delete(&key(i)).unwrap())
                .collect(),
        );
        for n in 0..3u64 {
            wait_all(
                (0..50)
                    .map(|i| engine.merge(&counter(i), &(n + 1).to_le_bytes()).unwrap())
                    .collect(),
            );
        }
        let compacted = engine.compact().unwrap();
        wait_all(
            (100..200)
                .map(|i| engine.put(&key(i), &value(2)).unwrap())
                .collect(),
        );
        wait_all(
            (1000..1100)
                .map(|i| engine.delete(&key(i)).unwrap())
                .collect(),
        );
        let mut batch = WriteBatch::new();
        batch.put(&key(1200), &value(3));
        batch.delete(&key(1201));
        batch.merge(&counter(7), &5u64.to_le_bytes());
        engine.write(&batch).unwrap().wait().unwrap();
        wait_all(
            (0..25)
                .map(|i| engine.merge(&counter(i), &9u64.to_le_bytes()).unwrap())
                .collect(),
        );
        engine.close().unwrap();
        compacted
    };
    assert!(
        compacted.segments >= 1 && compacted.batches >= 1,
        "{compacted:?}"
    );

    let out = succeeds(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).expect("inspect --json parses");
    let rows = report["segments"].as_array().unwrap();

    // Per segment, from a reader: batches, compaction batches, the end of the last frame,
    // and each key's newest record (segment, record bytes, a put's value).
    let reader = LogReader::open(dir.path()).unwrap();
    let mut counted: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut newest: BTreeMap<Vec<u8>, Newest> = BTreeMap::new();
    for b in reader.batches() {
        let seg = b
            .segment()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let c = counted.entry(seg.clone()).or_default();
        c.0 += 1;
        c.1 += u64::from(b.is_compaction());
        c.2 = b.offset() + b.frame_len() as u64;
        for r in b.records() {
            let len = 7 + (r.key.len() + r.value.len()) as u64;
            let put = (r.op == RecordOp::Put).then(|| r.value.to_vec());
            newest.insert(r.key.to_vec(), (seg.clone(), len, put));
        }
    }
    let compaction_batches: u64 = counted.values().map(|c| c.1).sum();
    assert!(
        compaction_batches >= 1,
        "the compaction's batches are in the log"
    );

    // The engine on the same log (after inspect ran: an open changes the directory).
    let engine = Engine::open(dir.path(), config).unwrap();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let keys = (0..1500).map(key).chain((0..50).map(counter));
    for k in keys {
        let got = engine.get(&k).unwrap().wait().unwrap();
        match (got, newest.get(&k)) {
            (None, None | Some((_, _, None))) => {}
            (Some(v), Some((seg, len, Some(logged)))) => {
                assert_eq!(
                    &v, logged,
                    "{k:?}: the newest record is not the engine's value"
                );
                *live.entry(seg.clone()).or_default() += len;
            }
            (got, found) => {
                panic!("{k:?}: the engine gives {got:?}, the log's newest record is {found:?}")
            }
        }
    }
    let files: Vec<(String, u64)> = engine
        .segments()
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.bytes,
            )
        })
        .collect();
    let listed: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r["file"].as_str().unwrap().to_owned(), int(r, "size")))
        .collect();
    assert_eq!(
        listed, files,
        "inspect's segment files against Engine::segments"
    );
    for r in rows {
        let file = r["file"].as_str().unwrap();
        let (batches, compactions, end) = counted.get(file).copied().unwrap_or((0, 0, 64));
        assert_eq!(int(r, "batches"), batches, "{file}: {r}");
        assert_eq!(int(r, "compaction_batches"), compactions, "{file}: {r}");
        assert_eq!(int(r, "used_bytes"), end, "{file}: {r}");
        let want = live.get(file).copied().unwrap_or(0);
        assert_eq!(int(r, "live_bytes"), want, "{file}: {r}");
        // To within rounding: serde_json's parser (without its `float_roundtrip` feature)
        // may read the printed ratio one unit in the last place off.
        let ratio = (end > 64).then(|| want as f64 / (end - 64) as f64);
        let read = r["live_ratio"].as_f64();
        assert!(
            match (read, ratio) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * b.abs(),
                (a, b) => a == b,
            },
            "{file}: live_ratio {read:?} against {ratio:?}: {r}"
        );
    }
    let space = engine.space();
    let live_total: u64 = rows.iter().map(|r| int(r, "live_bytes")).sum();
    let framed: u64 = rows.iter().map(|r| int(r, "used_bytes") - 64).sum();
    assert_eq!(
        live_total, space.live_bytes,
        "live bytes against Engine::space"
    );
    assert_eq!(framed, space.log_bytes, "frame bytes against Engine::space");
    assert_eq!(int(&report, "compaction_batches"), compaction_batches);
    engine.close().unwrap();
}
