//! Per-update cost of the index (`src/index.rs`): a window's updates applied as one batch
//! (`apply_updates`) against the same updates under the same one lock, each applied as it
//! comes (`unpipelined`), in the same run. With live bits (`Compaction::Auto`) the batch runs
//! as a software pipeline that prefetches each slot 16 updates ahead and the old location's
//! live bit 8 ahead; without them it is the plain loop, so those two cases should be level.
//!
//! The table holds every key before timing starts (updates are overwrites, as in a log that
//! has seen each key), 16-byte keys, windows of 512 updates on uniformly drawn keys: the
//! cold-key case, like compaction's copies. `cold` cases stream 8 MiB through the cache
//! before each window (not timed).
//!
//! What this does not reproduce: in the engine the pipeline made the compacting engine 10 %
//! faster (docs/decisions.md, "The index's updates prefetched ahead"), while here it is
//! level or slower. Read this benchmark for the index's own cost, and measure changes to it
//! in the engine too (`mergelog profile --system mergelog-compact`, alternated builds).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mergelog::internals::BenchIndex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

const WINDOW: usize = 512;
/// A window's updates: (key number, value offset).
type Window = [(u32, u64)];
/// Offsets wrap at 64 MiB (64 segments of 1 MiB), so the live bits stay bounded however
/// long criterion runs.
const LOG: u64 = 64 << 20;
/// A record's bytes in the log: header, key, value.
const RECORD: u64 = 7 + 16 + 100;

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("key-{i:012}").into_bytes())
        .collect()
}

/// An index holding each of `n` keys once, and windows of random updates to replay.
fn setup(n: usize, live_bits: bool, rng: &mut SmallRng) -> (BenchIndex, Vec<Vec<(u32, u64)>>) {
    let index = BenchIndex::new(keys(n), live_bits);
    let mut off = 0u64;
    let mut next = |k: u32| {
        off = (off + RECORD) % LOG;
        (k, off)
    };
    let all: Vec<(u32, u64)> = (0..n as u32).map(&mut next).collect();
    index.apply_batch(&all);
    let windows = (0..64)
        .map(|_| {
            (0..WINDOW)
                .map(|_| next(rng.random_range(0..n as u32)))
                .collect()
        })
        .collect();
    (index, windows)
}

/// Bytes streamed through the cache before a `cold` window: twice the L2 of the project's
/// machine, as the flusher's other work (coalescing, encoding frames, the writers' ring
/// writes on the same cores) displaces the table between two windows in the engine.
const SCRUB: usize = 8 << 20;

fn apply(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut scrub = vec![0u64; SCRUB / 8];
    let mut g = c.benchmark_group("index_apply");
    g.throughput(Throughput::Elements(WINDOW as u64));
    for n in [100_000usize, 1_000_000] {
        for live_bits in [false, true] {
            let (index, windows) = setup(n, live_bits, &mut rng);
            for cold in [false, true] {
                let case = format!(
                    "{}k{}{}",
                    n / 1000,
                    if live_bits { "/live_bits" } else { "" },
                    if cold { "/cold" } else { "" }
                );
                let mut w = 0;
                let mut run = |b: &mut criterion::Bencher<'_>, f: &dyn Fn(&Window)| {
                    b.iter_batched(
                        || {
                            if cold {
                                for x in scrub.iter_mut() {
                                    *x = x.wrapping_add(1);
                                }
                            }
                            w = (w + 1) % windows.len();
                            w
                        },
                        |w| f(black_box(&windows[w])),
                        BatchSize::PerIteration,
                    )
                };
                g.bench_function(BenchmarkId::new("batch", &case), |b| {
                    run(b, &|u| index.apply_batch(u))
                });
                g.bench_function(BenchmarkId::new("unpipelined", &case), |b| {
                    run(b, &|u| index.apply_unpipelined(u))
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = apply
}
criterion_main!(benches);
