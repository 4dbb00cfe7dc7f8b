//! Replaying fuzz inputs as ordinary tests, shared by the `fuzz_corpus` tests of `mergelog`,
//! `mergelog-tools` and `mergelog-raft` (each includes this file by path): the inputs of a
//! directory, and one input run through a target's check on a thread of its own, so that one
//! failure does not hide the others.

use std::path::{Path, PathBuf};

/// The fuzz directory (`fuzz/`) of this workspace, from a crate's `CARGO_MANIFEST_DIR`.
pub fn fuzz_dir(manifest_dir: &str) -> PathBuf {
    let crate_dir = Path::new(manifest_dir);
    let here = crate_dir.join("fuzz");
    if here.is_dir() {
        here
    } else {
        crate_dir.join("../fuzz")
    }
}

/// The input files of `dir`, sorted (README files and hidden files are not inputs); none if
/// `dir` does not exist.
pub fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on the input at `path` on a thread of its own, as the fuzz target `target`
/// would: `None` if it passed, else a line naming the input, the panic's message and the
/// command that reproduces it under the fuzzer.
pub fn run_one(target: &str, path: &Path, check: fn(&[u8])) -> Option<String> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    let outcome = std::thread::Builder::new()
        .name(format!("{target}:{}", path.display()))
        .spawn(move || check(&data))
        .expect("spawn")
        .join();
    let panic = outcome.err()?;
    let why = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic)");
    Some(format!(
        "{target} {}: {why}\n    reproduce: cargo +nightly fuzz run {target} {}",
        path.display(),
        path.display()
    ))
}

/// Fails listing every failed input of the `ran` replayed from `kind` (`corpus` or
/// `regressions`), or if fewer than `floor` ran: the committed inputs gone would pass having
/// run nothing.
pub fn assert_replayed(kind: &str, ran: usize, failures: &[String], floor: usize) {
    eprintln!("replayed {ran} {kind} inputs");
    assert!(
        failures.is_empty(),
        "{} of {ran} {kind} inputs fail (see the panics above):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(ran >= floor, "the {kind} inputs are missing: only {ran}");
}
