//! Durable puts per second through the whole engine (DESIGN §7): 4 writer threads, each
//! keeping 64 puts outstanding (closed loop), 16-byte keys drawn zipf 0.99 from 100k,
//! 100-byte values. Coalescing on and off run in one group, so the report shows what
//! coalescing buys; `Durability::Sync` and `NoSync` are separate groups.
//!
//! One engine serves many iterations (opening one costs a 64 MiB segment); it is replaced
//! by a fresh one, outside the timed section, once it has written `ROTATE_BYTES`, so a long
//! run does not fill the disk.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mergelog::{Config, Durability, Engine, Ticket};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use std::collections::VecDeque;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
const DEPTH: usize = 64;
/// Puts per writer per iteration.
const PUTS: usize = 2048;
const KEYS: u64 = 100_000;
const KEY: usize = 16;
const VALUE: usize = 100;
const ROTATE_BYTES: u64 = 512 << 20;

/// splitmix64's finaliser: distinct ids get distinct 8-byte key prefixes (the coalescer
/// sorts on those), and popular ids spread over the key space.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Each writer's keys for one iteration, drawn once, outside the timing.
fn key_streams() -> Vec<Vec<[u8; KEY]>> {
    let zipf = Zipf::new(KEYS as f64, 0.99).unwrap();
    (0..WRITERS)
        .map(|w| {
            let mut rng = SmallRng::seed_from_u64(w as u64 + 1);
            (0..PUTS)
                .map(|_| {
                    let id = zipf.sample(&mut rng) as u64 - 1;
                    let mut k = [0u8; KEY];
                    k[..8].copy_from_slice(&mix64(id).to_be_bytes());
                    k[8..].copy_from_slice(&id.to_be_bytes());
                    k
                })
                .collect()
        })
        .collect()
}

/// An engine in its own temporary directory (removed with it).
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

/// `iters` times each writer's stream, all writers at once; returns the wall time from the
/// common start to the last completion.
fn run(engine: &Engine, keys: &[Vec<[u8; KEY]>], iters: u64) -> Duration {
    let barrier = Barrier::new(WRITERS + 1);
    std::thread::scope(|s| {
        for stream in keys {
            let barrier = &barrier;
            s.spawn(move || {
                let value = [0x5au8; VALUE];
                let mut inflight: VecDeque<Ticket> = VecDeque::with_capacity(DEPTH);
                barrier.wait();
                for _ in 0..iters {
                    for key in stream {
                        if inflight.len() == DEPTH {
                            inflight.pop_front().unwrap().wait().unwrap();
                        }
                        inflight.push_back(engine.put(key, &value).unwrap());
                    }
                }
                for t in inflight {
                    t.wait().unwrap();
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Leaving the scope joins every writer.
        start
    })
    .elapsed()
}

fn bench(c: &mut Criterion) {
    let keys = key_streams();
    for (group, durability) in [
        ("end_to_end/sync", Durability::Sync),
        ("end_to_end/nosync", Durability::NoSync),
    ] {
        let mut g = c.benchmark_group(group);
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements((WRITERS * PUTS) as u64));
        for (name, coalesce) in [("coalesce", true), ("no-coalesce", false)] {
            let config = Config {
                durability,
                coalesce,
                ..Config::default()
            };
            let mut fresh = Fresh::open(&config);
            let id = BenchmarkId::new(name, format!("{WRITERS}x{DEPTH}-zipf0.99"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    if fresh.engine.stats().bytes_written > ROTATE_BYTES {
                        fresh = Fresh::open(&config);
                    }
                    run(&fresh.engine, &keys, iters)
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
