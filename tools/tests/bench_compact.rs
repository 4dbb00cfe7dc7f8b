//! `mergelog bench` with `mergelog-compact` (the engine with `Compaction::Auto`) beside
//! `mergelog`, and the space every engine system reports: disk against live bytes at the
//! end and at the peak, write amplification, compactions. Short overwrite runs on small
//! segments, so that the whole history spans dozens of segments and compaction has work;
//! the figures are checked for their relations (compaction ran, it kept less disk than the
//! whole history), never for exact values.

mod common;

use common::*;
use serde_json::Value;

/// 2,000 keys of 123 record bytes (about 240 KiB live) overwritten 50 times over: the whole
/// history is about 12 MiB in 256 KiB segments.
const OVERWRITE: [&str; 12] = [
    "--keys",
    "2000",
    "--dist",
    "uniform",
    "--segment-bytes",
    "256K",
    "--batch-bytes-max",
    "64K",
    "--sync-probe",
    "0",
    "--compaction-check-ms",
    "10",
];

/// `bench` on `systems` with the overwrite workload of `ops` puts and `extra`; the stdout
/// and the JSON.
fn bench(systems: &str, ops: &str, extra: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let mut args = vec![
        "bench",
        "--systems",
        systems,
        "--ops",
        ops,
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(OVERWRITE);
    args.extend(extra);
    let stdout = succeeds(&args);
    (stdout, read_json(&json))
}

fn ratio(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a ratio"))
}

#[test]
fn compaction_keeps_the_disk_near_the_live_data_where_the_whole_history_grows() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (stdout, report) = bench(
        "mergelog,mergelog-compact,wal",
        "100000",
        &["--dir", runs.to_str().unwrap()],
    );
    let policy = &report["workload"]["compaction"];
    assert_eq!(num(policy, "live_ratio"), 0.5, "{policy}");
    assert_eq!(num(policy, "check_every_ms"), 10.0, "{policy}");

    let whole = &run_of(&report, "mergelog")["space"];
    let compact = &run_of(&report, "mergelog-compact")["space"];
    assert!(
        run_of(&report, "wal")["space"].is_null(),
        "a baseline has no space"
    );
    assert!(whole["policy"].is_null(), "{whole}");
    assert_eq!(num(&compact["policy"], "live_ratio"), 0.5);

    // The same keys are live in both at the end (every key was written: 50 puts each).
    let live = int(&compact["end"], "live_bytes");
    assert_eq!(live, 2000 * (7 + 16 + 100), "{compact}");
    assert_eq!(int(&whole["end"], "live_bytes"), live, "{whole}");

    // mergelog kept every put; mergelog-compact compacted, and kept far less.
    let c = &compact["compactions"];
    assert!(int(c, "runs") > 0, "no compaction ran: {compact}");
    assert!(int(c, "batches") > 0 && int(c, "records") > 0, "{c}");
    assert!(int(c, "segments_retired") > 0, "{c}");
    assert_eq!(int(&whole["compactions"], "runs"), 0, "{whole}");
    let (whole_end, compact_end) = (
        ratio(&whole["end"]["disk_to_live"]),
        ratio(&compact["end"]["disk_to_live"]),
    );
    assert!(
        compact_end < whole_end / 2.0,
        "compaction kept {compact_end:.1}x the live data, the whole history {whole_end:.1}x"
    );
    // The history holds every put: at least its record bytes.
    assert!(
        int(&whole["end"], "log_bytes") >= 100_000 * 123 / 2,
        "{whole}"
    );
    for s in [whole, compact] {
        let (end, peak) = (&s["end"], &s["peak"]);
        assert!(int(peak, "disk_bytes") >= int(end, "disk_bytes"), "{s}");
        assert!(
            ratio(&peak["disk_to_live"]) >= ratio(&end["disk_to_live"]),
            "{s}"
        );
        assert!(int(end, "segments") >= 1);
        assert_eq!(s["rounds"].as_array().unwrap().len(), 1, "{s}");
    }
    // The copies are what compaction adds to the bytes written.
    assert_eq!(ratio(&whole["write_amplification"]), 1.0);
    let amp = ratio(&compact["write_amplification"]);
    let bytes = int(
        &run_of(&report, "mergelog-compact")["engine"],
        "bytes_written",
    );
    let copied = int(c, "bytes");
    assert!(close(amp, bytes as f64 / (bytes - copied) as f64), "{amp}");
    assert!(amp > 1.0, "{compact}");
    assert!(num(compact, "bytes_per_put") > 0.0);

    // The bound is made up of its parts, and only the compacting system has one.
    assert!(whole["bound"].is_null());
    let b = &compact["bound"];
    assert_eq!(int(b, "live_over_ratio"), 2 * live, "{b}");
    // 3 S, and the pool: max(recycle_segments, 2) segments (docs/FORMAT.md).
    assert_eq!(int(b, "segments"), (3 + 2) * 256 * 1024, "{b}");
    assert_eq!(int(b, "copies"), live, "{b}");
    let sum = ["live_over_ratio", "segments", "copies", "writes"]
        .iter()
        .map(|f| int(b, f))
        .sum::<u64>();
    assert_eq!(int(b, "bytes"), sum, "{b}");

    // The disk counted is the run directory's files, as left after close.
    let on_disk: u64 = std::fs::read_dir(runs.join("mergelog-compact"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(int(&compact["end"], "disk_bytes"), on_disk, "{compact}");

    // The text report has the space table, a row per engine system, and the bound.
    assert!(stdout.contains("\nspace (disk: "), "{stdout}");
    assert!(stdout.contains("disk/live"), "{stdout}");
    let row = |system: &str| {
        stdout
            .lines()
            .skip_while(|l| !l.starts_with("system ") || !l.contains("disk/live"))
            .find(|l| l.split_whitespace().next() == Some(system))
            .map(str::to_owned)
    };
    assert!(row("mergelog").is_some(), "{stdout}");
    assert!(row("mergelog-compact").is_some(), "{stdout}");
    assert!(
        row("wal").is_none(),
        "a baseline has no space row: {stdout}"
    );
    assert!(stdout.contains("mergelog-compact bound: L / r"), "{stdout}");
    assert!(
        stdout.contains("\nmergelog-compact: ") && stdout.contains("the throughput of mergelog at"),
        "{stdout}"
    );
}

/// The log compaction leaves is whole: `verify` finds it clean, and `inspect` counts its
/// compaction batches apart from the writers' (per segment and in total).
#[test]
fn the_compacted_log_verifies_and_inspect_counts_its_compaction_batches() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (_, report) = bench(
        "mergelog-compact",
        "100000",
        &["--dir", runs.to_str().unwrap()],
    );
    let log = runs.join("mergelog-compact");
    let log = log.to_str().unwrap();
    assert!(succeeds(&["verify", log]).starts_with("clean"));

    let inspect: Value =
        serde_json::from_str(&succeeds(&["inspect", log, "--json"])).expect("inspect --json");
    let listed = inspect["batch_list"].as_array().unwrap();
    let flagged: Vec<&Value> = listed.iter().filter(|b| b["compaction"] == true).collect();
    assert!(
        !flagged.is_empty(),
        "no compaction batch is left: {inspect}"
    );
    for b in &flagged {
        assert_eq!(int(b, "ops_acknowledged"), 0, "{b}");
        assert_eq!(int(b, "deletes"), 0, "compaction copies only puts: {b}");
    }
    assert_eq!(int(&inspect, "compaction_batches"), flagged.len() as u64);
    let copied: u64 = flagged.iter().map(|b| int(b, "records")).sum();
    assert_eq!(int(&inspect, "compaction_records"), copied);
    let per_segment: u64 = inspect["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| int(s, "compaction_batches"))
        .sum();
    assert_eq!(
        per_segment,
        flagged.len() as u64,
        "{:?}",
        inspect["segments"]
    );
    // What the log holds is what the engine said was live at the end.
    let live: u64 = inspect["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| int(s, "live_bytes"))
        .sum();
    let space = &run_of(&report, "mergelog-compact")["space"];
    assert_eq!(live, int(&space["end"], "live_bytes"), "{space}");

    let text = succeeds(&["inspect", log, "--limit", "0"]);
    assert!(text.contains("compaction batches"), "{text}");
    assert!(
        text.contains(&format!("compaction: {} batches, ", flagged.len())),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(" compaction ")),
        "no batch row says compaction: {text}"
    );
}

/// Each round is measured on its own; the compacting system is paired with `mergelog`
/// round by round.
#[test]
fn rounds_keep_each_round_of_space_and_pair_the_throughputs() {
    let (stdout, report) = bench(
        "mergelog,mergelog-compact",
        "40000",
        &["--rounds", "2", "--compaction-ratio", "0.3"],
    );
    assert_eq!(num(&report["workload"]["compaction"], "live_ratio"), 0.3);
    for system in ["mergelog", "mergelog-compact"] {
        let space = &run_of(&report, system)["space"];
        let rounds = space["rounds"].as_array().unwrap();
        let numbers: Vec<u64> = rounds.iter().map(|r| int(r, "round")).collect();
        assert_eq!(numbers, [1, 2], "{space}");
        for r in rounds {
            assert!(int(r, "samples") > 0, "the sampler never looked: {r}");
            assert!(int(r, "disk_bytes") > 0 && int(r, "live_bytes") > 0, "{r}");
            assert!(int(r, "peak_disk_bytes") >= int(r, "disk_bytes"), "{r}");
        }
        // The end reported is the round where disk / live was greatest.
        let worst = rounds
            .iter()
            .map(|r| ratio(&r["disk_to_live"]))
            .fold(0.0, f64::max);
        assert_eq!(ratio(&space["end"]["disk_to_live"]), worst, "{space}");
    }
    let pair = report["round_ratios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["system"] == "mergelog-compact" && p["baseline"] == "mergelog")
        .expect("mergelog-compact is paired with mergelog");
    assert_eq!(pair["per_round"].as_array().unwrap().len(), 2, "{pair}");
    assert!(
        stdout.contains("each ratio from the round where it was greatest"),
        "{stdout}"
    );
}

/// Without a compacting system the space is in the JSON, but the text has no space table.
#[test]
fn without_compaction_the_space_is_in_the_json_only() {
    let (stdout, report) = bench("mergelog", "20000", &[]);
    let space = &run_of(&report, "mergelog")["space"];
    assert!(int(&space["end"], "disk_bytes") > 0, "{space}");
    assert!(report["workload"].get("compaction").is_none(), "{report}");
    assert!(!stdout.contains("\nspace ("), "{stdout}");
}

#[test]
fn bad_compaction_flags_are_usage_errors() {
    for (flag, value, expect) in [
        ("--compaction-ratio", "0", "between 0 and 1"),
        ("--compaction-ratio", "1", "between 0 and 1"),
        ("--compaction-ratio", "-0.5", "between 0 and 1"),
        ("--compaction-ratio", "half", "not a number"),
        ("--compaction-check-ms", "0", "between 1 and"),
        ("--compaction-check-ms", "soon", "not a whole number"),
    ] {
        rejects_with(
            2,
            &[
                "bench",
                "--systems",
                "mergelog-compact",
                "--ops",
                "10",
                flag,
                value,
            ],
            expect,
        );
    }
}
