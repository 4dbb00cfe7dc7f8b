//! Fuzz target `follow_dir`; the checks are in `src/` (`mergelog_fuzz::follow_dir`), shared with
//! `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mergelog_fuzz::follow_dir(data);
});
