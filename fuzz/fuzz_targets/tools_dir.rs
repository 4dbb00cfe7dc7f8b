//! Fuzz target `tools_dir`: the `mergelog` command's `verify`, `inspect` and `dump` over a
//! directory of arbitrary segments; the checks are in `src/tools_dir.rs`, shared with
//! `tools/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// `tools_dir.rs` reaches the fuzz library's directory layout through this name.
use mergelog_fuzz as fuzz_checks;

#[path = "../src/tools_dir.rs"]
mod tools_dir;

fuzz_target!(|data: &[u8]| {
    tools_dir::tools_dir(data);
});
