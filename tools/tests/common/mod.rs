//! Helpers shared by the CLI tests: run the binary, check a one-line failure, read JSON.

#![allow(dead_code)]

use serde_json::Value;
use std::process::{Command, Output};

/// A JSON report (`--json PATH`), parsed.
pub fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the JSON report parses")
}

/// The run of `system` in a bench report.
pub fn run_of<'a>(report: &'a Value, system: &str) -> &'a Value {
    report["runs"]
        .as_array()
        .expect("runs is an array")
        .iter()
        .find(|r| r["system"] == system)
        .unwrap_or_else(|| panic!("no run of {system}"))
}

pub fn mergelog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mergelog"))
        .args(args)
        .output()
        .expect("run the mergelog binary")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args`, expects success without a panic, returns stdout.
pub fn succeeds(args: &[&str]) -> String {
    let out = mergelog(args);
    let err = stderr(&out);
    assert!(out.status.success(), "{args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    stdout(&out)
}

pub fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

pub fn int(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a whole number in {v}"))
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Runs `args` and checks the failure: a non-zero exit (exactly `code` if given), one line
/// on stderr that mentions `expect`, nothing on stdout, and no panic.
fn check_rejection(code: Option<i32>, args: &[&str], expect: &str) {
    let out = mergelog(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    if let Some(code) = code {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: exit status {:?}; stderr: {err}",
            out.status
        );
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: expected one line, got:\n{err}"
    );
    assert!(
        err.contains(expect),
        "{args:?}: {err:?} does not mention {expect:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
}

pub fn rejects_with(code: i32, args: &[&str], expect: &str) {
    check_rejection(Some(code), args, expect);
}

pub fn rejects(args: &[&str], expect: &str) {
    check_rejection(None, args, expect);
}

/// Runs the binary with `args`, its stdout a pipe whose reader is already gone (`mergelog
/// dump LOG | head -1` once `head` has left); returns the exit code and stderr.
pub fn run_into_closed_pipe<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergelog"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    (out.status.code().expect("exited normally"), err)
}
