//! Recovery speed: time to open (verify + replay into the index) a 1 GiB log, with the page
//! cache warm and cold, and the scan rate in bytes per second.
//!
//! `cargo bench --bench recovery` (set `MERGELOG_RECOVERY_MIB` to change the log size).
//! Cold runs evict the segment files from the page cache with `posix_fadvise(DONTNEED)`
//! before every open, so they measure the disk, not memory.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mergelog::{Config, Durability, Engine, WriteBatch};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

fn log_mib() -> u64 {
    std::env::var("MERGELOG_RECOVERY_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
}

/// Fills `dir` with about `mib` MiB of log: 16-byte keys, 1 KiB values, 64 puts per batch.
fn build_log(dir: &Path, mib: u64) -> u64 {
    let config = Config {
        durability: Durability::NoSync,
        ..Config::default()
    };
    let engine = Engine::open(dir, config).expect("open");
    let value = vec![0x5au8; 1024];
    let mut batch = WriteBatch::new();
    let records = mib * 1024 * 1024 / (1024 + 16 + 7);
    let mut last = None;
    for i in 0..records {
        let key = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128).to_be_bytes();
        batch.put(&key, &value);
        if batch.len() == 64 {
            last = Some(engine.write(&batch).expect("write"));
            batch.clear();
        }
    }
    if let Some(t) = last {
        t.wait().expect("durable");
    }
    engine.close().expect("close");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            // SAFETY: posix_fadvise on a descriptor we own; it only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn recovery(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mib = log_mib();
    let bytes = build_log(tmp.path(), mib);
    let mut g = c.benchmark_group("open_log");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(bytes));
    for cold in [false, true] {
        let name = if cold { "cold" } else { "warm" };
        g.bench_function(BenchmarkId::new(name, format!("{mib}MiB")), |b| {
            // Time the open only (scan, verify, index rebuild); closing is not recovery.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if cold {
                        evict(tmp.path());
                    }
                    let started = std::time::Instant::now();
                    let e = Engine::open(tmp.path(), Config::default()).expect("reopen");
                    total += started.elapsed();
                    assert!(e.open_report().batches > 0);
                    e.close().expect("close");
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
