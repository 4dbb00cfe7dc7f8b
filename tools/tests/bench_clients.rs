//! `mergelog bench --clients N --threads T`: N clients with one request each, as tasks on T
//! executor threads for the engine systems (the asynchronous submit) and as N threads for the
//! baselines. Short runs by op count: every op is counted once, the engine wrote every one,
//! the report says what ran, and the flags that do not go with it are refused.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn clients_run_every_op_once_on_the_engine_and_on_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let text = succeeds(&[
        "bench",
        "--systems",
        "mergelog,okaywal",
        "--clients",
        "300",
        "--threads",
        "2",
        "--ops",
        "3000",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        text.contains(
            "300 clients x depth 1 (engine: tasks on 2 executor threads; baselines: 300 threads)"
        ),
        "{text}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("JSON parses");
    let w = &report["workload"];
    assert_eq!(
        (
            int(w, "clients"),
            int(w, "threads"),
            int(w, "writers"),
            int(w, "depth")
        ),
        (300, 2, 300, 1)
    );
    for system in ["mergelog", "okaywal"] {
        let r = run_of(&report, system);
        assert_eq!(int(r, "ops"), 3000, "{system}: ops");
        assert!(num(&r["cpu"], "process_us_per_op") > 0.0, "{system}: {r}");
    }
    let engine = &run_of(&report, "mergelog")["engine"];
    assert_eq!(int(engine, "writes"), 3000, "the engine wrote every put");
}

#[test]
fn clients_refuse_flags_that_do_not_go_with_them() {
    rejects(&["bench", "--clients", "4", "--writers", "2"], "--writers");
    rejects(&["bench", "--clients", "4", "--depth", "2"], "--depth");
    rejects(&["bench", "--threads", "2"], "--clients");
    rejects(&["bench", "--clients", "0"], "--clients");
    rejects(
        &[
            "bench",
            "--clients",
            "4",
            "--systems",
            "mergelog,mergelog-ids",
        ],
        "mergelog-ids has no asynchronous submit",
    );
    rejects(
        &["bench", "--clients", "4", "--consumer"],
        "--clients does not run with --consumer",
    );
}

/// `command` (`bench` or `profile`) of the mergelog engine with 64 asynchronous clients,
/// 30,000 puts, 64 KiB segments and `--retain 1`, its JSON to `json`.
fn clients_retaining<'a>(command: &'a str, json: &'a std::path::Path) -> Vec<&'a str> {
    let mut args = vec![command];
    if command == "bench" {
        args.extend(["--systems", "mergelog"]);
    }
    args.extend([
        "--clients",
        "64",
        "--ops",
        "30000",
        "--retain",
        "1",
        "--segment-bytes",
        "64K",
        "--batch-bytes-max",
        "16K",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    args
}

/// Review (session 27): `--clients` with `--retain N` must retire the engine's old segments
/// as the threaded writers do (the header says "newest N segments kept (older retired and
/// reused)"), or be refused. `engine::run` sends `--clients` to `clients::drive` directly,
/// never through `drive_engine`, whose retiring thread is what `--retain` starts: the log
/// keeps its whole history and no segment is reused, while the report says otherwise.
#[test]
fn clients_with_retain_retire_old_segments_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = mergelog(&clients_retaining("bench", &json));
    if !out.status.success() {
        // Refusing the combination is a fix too.
        assert!(stderr(&out).contains("--retain"), "{}", stderr(&out));
        return;
    }
    let text = stdout(&out);
    let report = read_json(&json);
    let r = run_of(&report, "mergelog");
    let sg = &r["engine"]["segments"];
    // Made afresh or reused: how many of each depends on how soon retirement frees files.
    assert!(
        int(sg, "fresh") + int(sg, "reused") > 4,
        "30,000 puts fill dozens of 64 KiB segments: {sg}"
    );
    assert!(
        int(sg, "retired") > 0 && int(sg, "reused") > 0,
        "--clients --retain 1 retired/reused nothing ({sg}) while the report says:\n{text}"
    );
}

/// `profile --clients --retain` runs the same machinery as `bench`: its engine retires and
/// reuses old segments too.
#[test]
fn profile_with_clients_and_retain_retires_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    succeeds(&clients_retaining("profile", &json));
    let report = read_json(&json);
    let sg = &run_of(&report, "mergelog")["engine"]["segments"];
    assert!(
        int(sg, "retired") > 0 && int(sg, "reused") > 0,
        "profile --clients --retain 1 retired/reused nothing: {sg}"
    );
}
