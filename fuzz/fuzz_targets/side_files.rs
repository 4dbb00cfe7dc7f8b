//! Fuzz target `side_files`; the checks are in `src/` (`mergelog_fuzz::side_files`), shared with
//! `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mergelog_fuzz::side_files(data);
});
