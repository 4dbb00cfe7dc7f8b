//! Fuzz target for the frame decoder; the checks are in `src/lib.rs` (`decode_frame`), shared
//! with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mergelog_fuzz::decode_frame(data);
});
