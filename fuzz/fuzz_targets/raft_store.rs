//! Fuzz target `raft_store`: `mergelog-raft`'s store opened over raft records the fuzzer
//! damaged; the checks are in `src/raft_store.rs`, shared with
//! `mergelog-raft/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/raft_store.rs"]
mod raft_store;

fuzz_target!(|data: &[u8]| {
    raft_store::raft_store(data);
});
