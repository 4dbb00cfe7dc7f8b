//! The fuzz target `tools_dir` (`fuzz/fuzz_targets/tools_dir.rs`) as an ordinary test: every
//! input of `fuzz/corpus/tools_dir/` and `fuzz/regressions/tools_dir/`, and those of
//! `open_dir` (the same layout: `OpenDirInput`), replayed through the same checks
//! (`fuzz/src/tools_dir.rs`, included here with the fuzz library it uses), without nightly
//! or cargo-fuzz. Each input runs on its own thread so that one failure does not hide the
//! others; the test fails listing every input that panicked.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

// Only the directory layout and the shared checks are used here.
#[allow(dead_code, unused_imports)]
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;

#[path = "../../fuzz/src/tools_dir.rs"]
mod tools_dir;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
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

fn replay(kind: &str, targets: &[&str], floor: usize) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for target in targets {
        for path in inputs(&fuzz_dir().join(kind).join(target)) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
            ran += 1;
            let outcome = std::thread::Builder::new()
                .name(format!("tools_dir:{}", path.display()))
                .spawn(move || tools_dir::tools_dir(&data))
                .expect("spawn")
                .join();
            if let Err(panic) = outcome {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic)");
                failures.push(format!(
                    "{}: {why}\n    reproduce: cargo +nightly fuzz run tools_dir {}",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    eprintln!("replayed {ran} {kind} inputs");
    assert!(
        failures.is_empty(),
        "{} of {ran} {kind} inputs fail (see the panics above):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(ran >= floor, "the {kind} inputs are missing: only {ran}");
}

/// The committed seed corpus (`tools_dir`'s, a copy of `open_dir`'s seeds, and `open_dir`'s).
#[test]
fn seed_corpus_replays() {
    replay("corpus", &["tools_dir", "open_dir"], 20);
}

/// Every input a fuzz run of `tools_dir` or `open_dir` found and `tools/fuzz.sh` kept.
#[test]
fn fuzz_regressions_replay() {
    replay("regressions", &["tools_dir", "open_dir"], 30);
}
