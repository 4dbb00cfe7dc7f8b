//! Log append bandwidth of the two write paths (DESIGN §5): `pwrite` + `fdatasync` against
//! copy into the mapping + `msync`, both with `Durability::Sync`, side by side in one group
//! (ids `pwrite/64KiB`, `mmap/64KiB`, ...) so the report gives their ratio per batch size.
//!
//! One iteration is one `WriteBatch` of 16-byte keys and 100-byte values totalling 64 KiB
//! or 1 MiB, submitted and waited for: a batch is one request, so it lands in one frame with
//! one sync. Keys are distinct within a batch, so nothing coalesces away. Throughput counts
//! key and value bytes. Through the public API only, so the time includes submit, the
//! window cut and the wake-up, which are small next to a sync of this size.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mergelog::{Config, Durability, Engine, WriteBatch, WritePath};
use std::time::{Duration, Instant};

const KEY: usize = 16;
const VALUE: usize = 100;
/// Replace the engine (outside the timing) once it has written this much.
const ROTATE_BYTES: u64 = 512 << 20;

/// A batch of distinct records whose keys and values add up to at least `bytes`.
fn batch(bytes: usize) -> WriteBatch {
    let mut b = WriteBatch::new();
    let value = [0xa5u8; VALUE];
    let records = bytes.div_ceil(KEY + VALUE);
    for i in 0..records as u64 {
        let mut key = [0u8; KEY];
        // Spread the keys like the engine's benchmarks do; distinct per record.
        key[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        key[8..].copy_from_slice(&i.to_be_bytes());
        b.put(&key, &value);
    }
    b
}

struct Fresh {
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl Fresh {
    fn open(config: &Config) -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        Fresh { engine, _dir: dir }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (label, bytes) in [("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let batch = batch(bytes);
        g.throughput(Throughput::Bytes((batch.len() * (KEY + VALUE)) as u64));
        for (name, write_path) in [("pwrite", WritePath::Pwrite), ("mmap", WritePath::Mmap)] {
            let config = Config {
                durability: Durability::Sync,
                write_path,
                ..Config::default()
            };
            let mut fresh = Fresh::open(&config);
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    if fresh.engine.stats().bytes_written > ROTATE_BYTES {
                        fresh = Fresh::open(&config);
                    }
                    let start = Instant::now();
                    for _ in 0..iters {
                        fresh.engine.write(&batch).unwrap().wait().unwrap();
                    }
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
