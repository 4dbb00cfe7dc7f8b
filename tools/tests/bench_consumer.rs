//! `mergelog bench --consumer`: a durable consumer beside the engine systems' writers, its
//! lag sampled per interval into the JSON timeline, the text report and the plot; a slow
//! consumer falls behind, and a lag limit holds the writers back. Short runs: the lag is
//! checked for its shape (it grows; it stays near the limit) against the run's own counts,
//! never for exact values.

mod common;

use common::*;
use serde_json::Value;

const LAG_FIELDS: [&str; 3] = [
    "consumer_lag_batches",
    "consumer_lag_bytes",
    "consumer_lag_age_ms",
];

fn timeline(run: &Value) -> &Vec<Value> {
    let t = run["timeline"].as_array().expect("timeline is an array");
    assert!(!t.is_empty(), "empty timeline");
    t
}

/// The consumer's lag in batches at each timeline point.
fn lag_batches(run: &Value) -> Vec<u64> {
    timeline(run)
        .iter()
        .map(|p| int(p, "consumer_lag_batches"))
        .collect()
}

/// `bench` on `systems` for `duration` seconds (sampled every 0.1 s), with `extra` flags;
/// returns the stdout, the JSON report and the SVG.
fn bench(systems: &str, duration: &str, extra: &[&str]) -> (String, Value, String) {
    let mut flags = vec!["--duration", duration, "--interval", "0.1"];
    flags.extend(extra);
    bench_with(systems, &flags)
}

/// `bench` on `systems` with `flags`, which give the run's length and its sampling
/// interval; returns the stdout, the JSON report and the SVG.
fn bench_with(systems: &str, flags: &[&str]) -> (String, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let mut args = vec![
        "bench",
        "--systems",
        systems,
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ];
    args.extend(flags);
    let stdout = succeeds(&args);
    let svg = std::fs::read_to_string(&svg).unwrap();
    (stdout, read_json(&json), svg)
}

#[test]
fn the_timeline_has_the_lag_with_the_consumer_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (stdout, report, svg) = bench(
        "mergelog,wal",
        "0.4",
        &["--consumer", "--dir", runs.to_str().unwrap()],
    );
    let c = &report["workload"]["consumer"];
    assert_eq!(int(c, "commit_every"), 1, "{c}");
    assert!(c["rate_records_per_s"].is_null() && c["lag_max_batches"].is_null());

    let mergelog = run_of(&report, "mergelog");
    for p in timeline(mergelog) {
        for f in LAG_FIELDS {
            assert!(p[f].is_number(), "mergelog: {f} missing from {p}");
        }
    }
    let consumer = &mergelog["consumer"];
    let batches = int(consumer, "batches");
    assert!(batches > 0, "the consumer processed nothing: {consumer}");
    assert!(batches <= int(mergelog, "batches"), "{consumer}");
    assert!(int(consumer, "records") <= int(mergelog, "records_written"));
    // Every batch is committed (the last ones at the end), and each commit is of one.
    assert_eq!(int(consumer, "commits"), batches, "{consumer}");
    assert_eq!(int(consumer, "throttled"), 0, "no limit, no throttling");
    assert_eq!(
        int(consumer, "samples"),
        timeline(mergelog).len() as u64,
        "one lag sample per interval"
    );
    let lags = lag_batches(mergelog);
    let max = *lags.iter().max().unwrap();
    assert_eq!(num(&consumer["lag_batches"], "max"), max as f64);
    // It consumed the log from its first batch, in order, and committed what it processed:
    // the position it left on disk is the count of batches it processed.
    let inspect: Value = serde_json::from_str(&succeeds(&[
        "inspect",
        runs.join("mergelog").to_str().unwrap(),
        "--limit",
        "0",
        "--json",
    ]))
    .expect("inspect --json parses");
    let on_disk = &inspect["consumers"][0];
    assert_eq!(on_disk["name"], "bench", "{inspect}");
    assert_eq!(int(on_disk, "committed"), batches, "{on_disk}");

    // The baseline has no consumer: no lag in its timeline, said so in the report.
    let wal = run_of(&report, "wal");
    assert!(wal.get("consumer").is_none(), "{wal}");
    for p in timeline(wal) {
        for f in LAG_FIELDS {
            assert!(p.get(f).is_none(), "wal: {f} in {p}");
        }
    }
    assert!(
        stdout.contains("consumer (mergelog): processed ")
            && stdout.contains("consumer (wal): none"),
        "{stdout}"
    );
    assert!(stdout.contains("consumer: durable consumer 'bench', commits every batch"));
    assert!(svg.contains("consumer lag (batches)"), "no lag panel");

    // Without --consumer: none of it.
    let (stdout, report, svg) = bench("mergelog", "0.2", &[]);
    assert!(report["workload"].get("consumer").is_none());
    let mergelog = run_of(&report, "mergelog");
    assert!(mergelog.get("consumer").is_none());
    for p in timeline(mergelog) {
        for f in LAG_FIELDS {
            assert!(p.get(f).is_none(), "{f} in {p} without --consumer");
        }
    }
    assert!(!stdout.contains("consumer"), "{stdout}");
    assert!(!svg.contains("consumer lag"));
}

/// The workload of the two tests below, the same but for the lag limit: WRITERS writers,
/// each with at most DEPTH requests on their way, in an open loop of RATE requests/s (so
/// that even on a fast disk the run lasts a while), beside a consumer paced at SLOW
/// records/s, a tenth of that; on a slow disk it is slower still, two syncs a commit where
/// one sync makes one batch of the writers' durable, or more. A batch holds only requests
/// on their way into the log at once, never more than IN_FLIGHT: a run of `ops` operations
/// makes at least `ops / IN_FLIGHT` batches, however slow the disk.
const WRITERS: u64 = 2;
const DEPTH: u64 = 8;
const IN_FLIGHT: u64 = WRITERS * DEPTH;
const RATE: &str = "5000";
const SLOW: &str = "500";
const LIMIT: u64 = 20;

/// The most a limit of LIMIT batches lets the lag reach: the throttle engages once the
/// lag is past the limit, and what is already on its way into the log still lands, at
/// most IN_FLIGHT requests, each in one batch.
const HELD: u64 = LIMIT + IN_FLIGHT;

/// `bench` on `mergelog` with the workload above for `ops` operations, sampled every
/// 10 ms, with `extra` flags.
fn slow_consumer(ops: u64, extra: &[&str]) -> (String, Value, String) {
    let (ops, writers, depth) = (ops.to_string(), WRITERS.to_string(), DEPTH.to_string());
    let mut flags = vec![
        "--ops",
        &ops,
        "--interval",
        "0.01",
        "--writers",
        &writers,
        "--depth",
        &depth,
        "--rate",
        RATE,
        "--consumer",
        "--consumer-rate",
        SLOW,
    ];
    flags.extend(extra);
    bench_with("mergelog", &flags)
}

#[test]
fn a_slow_consumer_falls_behind() {
    // Enough operations for 2 x (HELD + 1) batches: a lag of half the run is past HELD.
    const OPS: u64 = 2 * (HELD + 1) * IN_FLIGHT;
    let (stdout, report, svg) = slow_consumer(OPS, &[]);
    let run = run_of(&report, "mergelog");
    let c = &run["consumer"];
    let (batches, processed) = (int(run, "batches"), int(c, "batches"));
    assert!(
        batches >= OPS / IN_FLIGHT,
        "{batches} batches of {OPS} operations"
    );
    assert!(processed < batches, "it kept up: {c}");
    let lags = lag_batches(run);
    let (first, last) = (lags[0], *lags.last().unwrap());
    // The last sample is taken once every batch is durable, so its lag counts at least every
    // batch the consumer never processed.
    assert!(
        last + processed >= batches,
        "lag {last} at the end, {processed} of {batches} batches processed"
    );
    // It fell behind by most of the run, and so past what a limit of LIMIT batches would
    // allow (see the next test).
    assert!(
        2 * last >= batches,
        "lag {last} at the end of {batches} batches: it kept up"
    );
    assert!(last > HELD, "lag stayed small: {lags:?}");
    // It grows over the run: the end is far above the start, and the second half is as
    // high as the first.
    assert!(last >= 3 * first, "lag did not grow: {lags:?}");
    let half = lags.len() / 2;
    assert!(
        lags[half..].iter().max() >= lags[..half].iter().max(),
        "lag fell back: {lags:?}"
    );
    let ages: Vec<f64> = timeline(run)
        .iter()
        .map(|p| num(p, "consumer_lag_age_ms"))
        .collect();
    assert!(ages.last() > ages.first(), "age did not grow: {ages:?}");
    assert_eq!(
        num(&report["workload"]["consumer"], "rate_records_per_s"),
        500.0
    );
    assert!(stdout.contains("at most 500 records/s"), "{stdout}");
    // The legend's "limit" entry (plotters puts each text on a line of its own).
    assert!(!svg.contains("limit"), "a limit line without a limit");
}

#[test]
fn a_lag_limit_holds_the_lag_near_it() {
    // Enough operations for 2 x (LIMIT + 1) batches: a consumer that processes at most half
    // of them (the test above) lags past the limit, and the writers are held.
    const OPS: u64 = 2 * (LIMIT + 1) * IN_FLIGHT;
    let limit = LIMIT.to_string();
    let (stdout, report, svg) = slow_consumer(OPS, &["--consumer-lag-max-batches", &limit]);
    let run = run_of(&report, "mergelog");
    let batches = int(run, "batches");
    assert!(
        batches >= OPS / IN_FLIGHT,
        "{batches} batches of {OPS} operations"
    );
    let lags = lag_batches(run);
    let max = *lags.iter().max().unwrap();
    assert!(max <= HELD, "lag {max} ran past the limit: {lags:?}");
    // And the writers did push it up to the limit, where they were held.
    assert!(max >= LIMIT, "lag never reached the limit: {lags:?}");
    let c = &run["consumer"];
    assert!(int(c, "throttled") > 0, "nothing throttled: {c}");
    assert_eq!(int(&run["engine"], "batches"), batches);
    assert_eq!(
        int(&report["workload"]["consumer"], "lag_max_batches"),
        LIMIT
    );
    assert!(
        stdout.contains("writers wait while it lags past 20 batches"),
        "{stdout}"
    );
    assert!(svg.contains("limit"), "no limit line");
}

#[test]
fn the_other_limits_reach_the_engine_and_the_report() {
    // An age limit, with a consumer fast enough that the run ends soon after the writers:
    // while it is past the age the writers wait until it has caught up.
    let (stdout, report, _) = bench(
        "no-coalesce",
        "0.3",
        &[
            "--consumer",
            "--consumer-commit-every",
            "4",
            "--consumer-rate",
            "100000",
            "--consumer-lag-max-age",
            "20",
            "--consumer-lag-max-bytes",
            "64K",
        ],
    );
    let w = &report["workload"]["consumer"];
    assert_eq!(int(w, "commit_every"), 4);
    assert_eq!(int(w, "lag_max_age_ms"), 20);
    assert_eq!(int(w, "lag_max_bytes"), 65536);
    let run = run_of(&report, "no-coalesce");
    let c = &run["consumer"];
    assert!(int(c, "throttled") > 0, "nothing throttled: {c}");
    // Commits every 4 batches, and when idle (here: while the writers were throttled, the
    // commit that releases them) and at the end for the rest.
    let (batches, commits) = (int(c, "batches"), int(c, "commits"));
    assert!(
        commits >= batches.div_ceil(4) && commits <= batches,
        "{commits} commits of {batches} batches"
    );
    assert!(
        stdout.contains("commits every 4 batches") && stdout.contains("lags past 65536 B or 20 ms"),
        "{stdout}"
    );
}

#[test]
fn consumer_flags_are_checked() {
    rejects_with(2, &["bench", "--consumer-rate", "100"], "--consumer");
    rejects_with(
        2,
        &["bench", "--consumer", "--systems", "wal,naive"],
        "engine system",
    );
    for (flag, value) in [
        ("--consumer-commit-every", "0"),
        ("--consumer-rate", "0"),
        ("--consumer-lag-max-batches", "0"),
        ("--consumer-lag-max-age", "-1"),
        ("--consumer-lag-max-bytes", "0"),
    ] {
        rejects_with(2, &["bench", "--consumer", flag, value], flag);
    }
}
