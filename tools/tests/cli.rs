//! The `mergelog` binary as a user runs it: a short bench end to end (its JSON must be
//! self-consistent), and bad flags rejected with one line and a non-zero exit.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn mergelog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mergelog"))
        .args(args)
        .output()
        .expect("run the mergelog binary")
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn short_bench_reports_every_system_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let runs_dir = dir.path().join("runs");
    let out = mergelog(&[
        "bench",
        "--duration",
        "0.3",
        "--keys",
        "1000",
        "--read-ratio",
        "0.1",
        "--dir",
        runs_dir.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in ["mergelog", "no-coalesce", "naive", "ring_wait", "end_to_end"] {
        assert!(stdout.contains(name), "table lacks {name}:\n{stdout}");
    }
    for sub in ["mergelog", "no-coalesce", "naive"] {
        assert!(Path::new(&runs_dir).join(sub).is_dir(), "no run directory {sub}");
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap())
        .expect("the JSON report parses");
    let workload = &report["workload"];
    assert_eq!(workload["keys"], 1000);
    assert_eq!(workload["writers"], 4);
    assert_eq!(workload["depth"], 256);
    assert_eq!(workload["dist"], "zipf:0.99");
    assert_eq!(workload["durability"], "sync");
    assert!(num(&report["machine"], "cpus") >= 1.0);
    assert!(report["machine"]["os"].is_string());

    let runs = report["runs"].as_array().expect("runs is an array");
    let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(systems, ["mergelog", "no-coalesce", "naive"]);
    let rate = |system: &str| {
        num(
            runs.iter().find(|r| r["system"] == system).unwrap(),
            "ops_per_s",
        )
    };
    let (naive, no_coalesce) = (rate("naive"), rate("no-coalesce"));
    for r in runs {
        let system = r["system"].as_str().unwrap();
        let ops = num(r, "ops");
        assert!(ops > 0.0, "{system}: no ops");
        assert!(num(r, "ops_per_s") > 0.0, "{system}: no throughput");
        assert!(
            num(r, "coalesced_writes") <= ops,
            "{system}: more coalesced writes than ops"
        );
        assert!(num(r, "collapsed_reads") <= ops, "{system}");
        assert!(num(r, "syncs") >= 1.0, "{system}: durable run without a sync");
        assert!(num(r, "batches") >= 1.0, "{system}");
        let ratio_naive = num(r, "ratio_vs_naive");
        let ratio_nc = num(r, "ratio_vs_no_coalesce");
        assert!(
            close(ratio_naive, num(r, "ops_per_s") / naive),
            "{system}: ratio_vs_naive {ratio_naive} is not ops_per_s / naive"
        );
        assert!(
            close(ratio_nc, num(r, "ops_per_s") / no_coalesce),
            "{system}: ratio_vs_no_coalesce {ratio_nc} is not ops_per_s / no-coalesce"
        );
        let bytes = num(r, "bytes_written");
        assert!(bytes > 0.0, "{system}: nothing written");
        assert!(
            close(num(r, "bytes_per_op"), bytes / ops),
            "{system}: bytes_per_op is not bytes_written / ops"
        );
        let lat = &r["latency_us"];
        let (p50, p99, p999, max) = (
            num(lat, "p50"),
            num(lat, "p99"),
            num(lat, "p999"),
            num(lat, "max"),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{system}: latency percentiles out of order: {lat}"
        );
        if system == "no-coalesce" || system == "naive" {
            assert_eq!(num(r, "coalesced_writes"), 0.0, "{system} coalesced");
        }
    }
    let rows = runs.iter().find(|r| r["system"] == "naive").unwrap();
    assert_eq!(num(rows, "ratio_vs_naive"), 1.0);
}

/// Runs `args` and checks the failure: a non-zero exit, one line on stderr that mentions
/// `expect`, nothing on stdout, and no panic.
fn rejects(args: &[&str], expect: &str) {
    let out = mergelog(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: expected one line, got:\n{stderr}"
    );
    assert!(
        stderr.contains(expect),
        "{args:?}: {stderr:?} does not mention {expect:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
}

#[test]
fn bad_flags_exit_nonzero_with_one_line() {
    rejects(&["bench", "--dist", "zipf:abc"], "abc");
    rejects(&["bench", "--dist", "normal"], "--dist");
    rejects(&["bench", "--writers", "0"], "--writers");
    rejects(&["bench", "--depth", "-3"], "--depth");
    rejects(&["bench", "--keys", "0"], "--keys");
    rejects(&["bench", "--key-size", "4"], "--key-size");
    rejects(&["bench", "--read-ratio", "1.5"], "--read-ratio");
    rejects(&["bench", "--duration", "0"], "--duration");
    rejects(&["bench", "--durability", "maybe"], "--durability");
    rejects(&["bench", "--systems", "mergelog,postgres"], "postgres");
    rejects(&["bench", "--systems", "naive,naive"], "twice");
    rejects(&["bench", "--window", "linger:soon"], "--window");
    rejects(&["bench", "--write-path", "dma"], "--write-path");
    rejects(&["bench", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn unusable_dir_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    rejects(
        &["bench", "--duration", "0.1", "--dir", file.to_str().unwrap()],
        "--dir",
    );
    // A run directory that already holds files is refused rather than replayed.
    let used = dir.path().join("used");
    std::fs::create_dir_all(used.join("mergelog")).unwrap();
    std::fs::write(used.join("mergelog/stale"), b"x").unwrap();
    rejects(
        &["bench", "--duration", "0.1", "--dir", used.to_str().unwrap()],
        "already holds files",
    );
    // A --json path in a missing directory is refused before anything runs.
    let missing = dir.path().join("missing/out.json");
    rejects(
        &["bench", "--duration", "0.1", "--json", missing.to_str().unwrap()],
        "does not exist",
    );
}
