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

#[path = "../../fuzz/src/replay.rs"]
mod replay;

fn replay(kind: &str, targets: &[&str], floor: usize) {
    let root = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut failures = Vec::new();
    let mut ran = 0;
    for target in targets {
        for path in replay::inputs(&root.join(target)) {
            ran += 1;
            // Every input runs through `tools_dir`'s checks, `open_dir`'s too.
            failures.extend(replay::run_one("tools_dir", &path, tools_dir::tools_dir));
        }
    }
    replay::assert_replayed(kind, ran, &failures, floor);
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
