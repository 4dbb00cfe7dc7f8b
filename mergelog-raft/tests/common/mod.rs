//! Helpers shared by this crate's tests: the engine configuration they open stores with.

#![allow(dead_code)]

use mergelog::Config;

/// Small segments (so that purges retire whole segments in a test's few writes) and a small
/// ring: a store per test stays cheap.
pub fn small_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 1 << 20,
        batch_bytes_max: 32 << 10,
        ..Config::default()
    }
}
