//! Fuzz target for opening a directory of arbitrary segment files with `LogReader` and
//! `Engine` in every recovery mode; the checks are in `src/lib.rs` (`open_dir`), shared with
//! `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mergelog_fuzz::open_dir(data);
});
