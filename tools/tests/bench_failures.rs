//! `mergelog bench` and `profile` where a run cannot go as asked: a thread the system will not
//! start, a consumer slower than the run, a run too short to complete anything, flags that
//! cannot work together. Each must end (never hang) with a clear error, before any system
//! runs when the flags alone say it cannot work, or with a report that says what happened.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` (and `env`), killing it after `limit`: `None` if it had to be
/// killed (a hang), else its output.
fn run_within(args: &[&str], env: &[(&str, String)], limit: Duration) -> Option<Output> {
    run_limited(args, env, None, limit)
}

/// As [`run_within`], with the child's address space limited to `bytes` if given.
fn run_limited(
    args: &[&str],
    env: &[(&str, String)],
    bytes: Option<u64>,
    limit: Duration,
) -> Option<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let program = env!("CARGO_BIN_EXE_mergelog");
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(bytes) = bytes {
        let rlim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
        // reads only `rlim`, a plain value copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let outs = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let errs = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (outs.join().unwrap(), errs.join().unwrap());
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// A thread that cannot be started (here: each thread's stack made so large that the address
/// space limit holds about a dozen) ends the run with one error naming the limit, exit 1: no
/// panic, and no hang of the threads already started waiting for the missing one.
#[test]
fn a_thread_that_cannot_start_is_an_error_not_a_panic_or_a_hang() {
    // An address space limit on the child, which binds root too (a process limit does not),
    // with a stack of 256 MiB for every thread the process starts.
    let env = [
        ("RUST_MIN_STACK", (256usize << 20).to_string()),
        ("MALLOC_ARENA_MAX", "1".to_string()),
        ("RUST_BACKTRACE", "0".to_string()),
    ];
    let cases: [&[&str]; 3] = [
        &["--systems", "naive", "--writers", "200"],
        &["--systems", "mergelog", "--writers", "200"],
        &[
            "--systems",
            "mergelog",
            "--clients",
            "10",
            "--threads",
            "200",
        ],
    ];
    for case in cases {
        let mut args = vec!["bench", "--duration", "0.2", "--sync-probe", "0"];
        args.extend_from_slice(case);
        let out = run_limited(&args, &env, Some(3 << 30), Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{args:?} hung"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains("cannot start a"), "{args:?}: {err}");
    }
}

/// `--clients` beyond what a thread-per-client baseline can run is refused up front.
#[test]
fn too_many_clients_for_a_threaded_baseline_are_refused() {
    rejects_with(
        2,
        &["bench", "--systems", "mergelog,naive", "--clients", "5000"],
        "at most 4096",
    );
}

/// A consumer paced far below the writers, with a lag limit of one batch, holds the writers
/// at the throttle: the run still ends (it hung before: the child is killed past the hang
/// guard), stops pacing the consumer to do so, and says what it did.
#[test]
fn a_slow_consumer_holding_the_writers_does_not_outlast_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let args = [
        "bench",
        "--systems",
        "mergelog",
        "--duration",
        "0.5",
        "--consumer",
        "--consumer-rate",
        "1",
        "--consumer-lag-max-batches",
        "1",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = run_within(&args, &[], Duration::from_secs(60)).expect("the run hung");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped pacing"), "{err}");
    let report = read_json(&json);
    let c = &run_of(&report, "mergelog")["consumer"];
    assert!(int(c, "unpaced_batches") > 0, "{c}");
    assert!(int(c, "unpaced_batches") <= int(c, "batches"), "{c}");
}

/// A duration too short to run anything is refused; a run that completed nothing is not a
/// report (see the unit test of `check_completed` for that).
#[test]
fn a_duration_too_short_to_run_anything_is_refused() {
    rejects_with(2, &["bench", "--duration", "1e-9"], "--duration");
    rejects_with(2, &["profile", "--duration", "0.001"], "at least 0.01");
}

/// Open loop at a rate so low that the writers' last requests complete long before the
/// deadline: the throughput is over the scheduled duration, not the writers' busy time.
#[test]
fn open_loop_throughput_is_over_the_scheduled_duration() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    succeeds(&[
        "bench",
        "--systems",
        "mergelog,wal",
        "--duration",
        "0.5",
        "--rate",
        "4",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let report = read_json(&json);
    for system in ["mergelog", "wal"] {
        let run = run_of(&report, system);
        let ops = int(run, "ops");
        assert!((1..=3).contains(&ops), "{system}: {run}");
        assert!(num(run, "elapsed_s") >= 0.5, "{system}: {run}");
        assert!(num(run, "ops_per_s") <= 6.0 + 1e-9, "{system}: {run}");
    }
}

/// What only a system's own run would have found, found before any system runs: merges for
/// a baseline, a request larger than the engine accepts (naming the flag), a `wal` batch
/// larger than its file may be; and output files that cannot be written, `profile --trace`
/// among them.
#[test]
fn flags_a_system_cannot_run_are_refused_before_any_runs() {
    // `rejects_with`: one line on stderr, so no "[1/2] mergelog ..." line before it.
    let merge = ["bench", "--op", "merge", "--duration", "0.1"];
    for (systems, not) in [
        ("mergelog,wal", "not wal"),
        ("mergelog,okaywal", "not okaywal"),
    ] {
        let args = [&merge[..], &["--systems", systems]].concat();
        rejects_with(2, &args, not);
        let err = stderr(&mergelog(&args));
        assert!(
            err.contains("mergelog-compact") && err.contains("mergelog-syncers"),
            "{err}"
        );
        assert!(!err.contains("naive or okaywal"), "{err}");
    }
    let big = ["bench", "--systems", "wal,mergelog", "--duration", "0.1"];
    rejects_with(
        2,
        &[&big[..], &["--ring-bytes", "64K", "--value-size", "100000"]].concat(),
        "--ring-bytes",
    );
    rejects_with(
        2,
        &[
            &big[..],
            &["--batch-bytes-max", "4096", "--value-size", "8000"],
        ]
        .concat(),
        "--batch-bytes-max",
    );
    rejects_with(
        2,
        &[
            "bench",
            "--systems",
            "wal",
            "--depth",
            "1048576",
            "--value-size",
            "1000",
        ],
        "wal: a batch can reach",
    );
    // Unwritable outputs, before the runs; a file the tool created for a refused run is
    // removed again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    for flag in ["--json", "--hlog", "--plot"] {
        // `--plot` takes only a name ending in .svg.
        let name = if flag == "--plot" { "out.svg" } else { "out" };
        let under_file = file.join(name);
        let under = under_file.to_str().unwrap();
        rejects_with(
            2,
            &["bench", "--duration", "0.1", flag, under],
            "is not a directory",
        );
        let proc = format!("/proc/mergelog-test-{name}");
        rejects_with(
            2,
            &["bench", "--duration", "0.1", flag, &proc],
            "cannot write it",
        );
    }
    rejects_with(
        2,
        &[
            "profile",
            "--duration",
            "0.1",
            "--trace",
            file.join("out").to_str().unwrap(),
        ],
        "is not a directory",
    );
    let json = dir.path().join("new.json");
    rejects_with(
        2,
        &[
            &big[..],
            &["--ring-bytes", "64K", "--value-size", "100000"],
            &["--json", json.to_str().unwrap()],
        ]
        .concat(),
        "--ring-bytes",
    );
    assert!(!json.exists(), "the refused run left its output file");
}

/// `wal` with records so large that a batch of them overflows its default 64 MiB file: the
/// file is made large enough, and the run completes.
#[test]
fn wal_sizes_its_file_for_its_largest_batch() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    succeeds(&[
        "bench",
        "--systems",
        "wal",
        "--writers",
        "1",
        "--depth",
        "700",
        "--value-size",
        "100000",
        "--keys",
        "100",
        "--duration",
        "0.3",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(int(run_of(&read_json(&json), "wal"), "ops") > 0);
}

/// Minor usage errors: byte suffixes in sizes, a regular file as --dir, one file named by
/// two output flags.
#[test]
fn sizes_take_suffixes_and_paths_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    succeeds(&[
        "bench",
        "--systems",
        "naive",
        "--value-size",
        "1K..2K",
        "--ops",
        "20",
        "--writers",
        "1",
        "--sync-probe",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let size = &read_json(&json)["workload"]["value_size"];
    assert_eq!((int(size, "min"), int(size, "max")), (1024, 2048), "{size}");
    rejects_with(2, &["bench", "--value-size", "2M"], "at most 1048576");
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    rejects_with(
        2,
        &[
            "bench",
            "--duration",
            "0.1",
            "--dir",
            file.to_str().unwrap(),
        ],
        "is not a directory",
    );
    let same = dir.path().join("same.svg");
    let same = same.to_str().unwrap();
    rejects_with(
        2,
        &["bench", "--duration", "0.1", "--json", same, "--plot", same],
        "--json and --plot name the same file",
    );
    assert!(
        !Path::new(same).exists(),
        "the refused run left its output file"
    );
}
