//! Per-record cost of the coalesce+sort stage (DESIGN §4, §7: <= 25 ns/record aimed at 64K).
//!
//! Records are laid out like the ring holds them (8-byte header, 16-byte key, 100-byte value,
//! 128-byte stride), so key reads miss cache the way they do in the flusher. Entries are built
//! once, outside the timed loop. Each group also times the naive stage (collect, stable sort by
//! full key, keep the last of each key) and plain group commit (coalescing off) on the same
//! window, so the report shows the ratios.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mergelog::internals::coalesce::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::hint::black_box;
use std::time::Duration;

const KEY: usize = 16;
const VALUE: usize = 100;
const STRIDE: usize = 128;

/// A ring-like arena of `keys.len()` records: header, key, value.
fn arena(keys: &[[u8; KEY]], rng: &mut SmallRng) -> Vec<u8> {
    let mut buf = vec![0u8; keys.len() * STRIDE];
    for (rec, k) in buf.chunks_exact_mut(STRIDE).zip(keys) {
        rec[8..8 + KEY].copy_from_slice(k);
        rng.fill(&mut rec[8 + KEY..8 + KEY + VALUE]);
    }
    buf
}

fn entries(buf: &[u8], get_every: usize) -> Vec<Entry<'_>> {
    buf.chunks_exact(STRIDE)
        .enumerate()
        .map(|(i, rec)| Entry {
            key: &rec[8..8 + KEY],
            op: if get_every != 0 && i % get_every == 0 {
                Op::Get
            } else {
                Op::Put(&rec[8 + KEY..8 + KEY + VALUE])
            },
        })
        .collect()
}

/// `n` keys of which `dup_pct` % repeat an earlier distinct key, in random order.
fn dup_keys(n: usize, dup_pct: usize, rng: &mut SmallRng) -> Vec<[u8; KEY]> {
    let distinct = (n * (100 - dup_pct) / 100).max(1);
    let pool: Vec<[u8; KEY]> = (0..distinct).map(|_| rng.random()).collect();
    let mut keys = pool.clone();
    keys.extend((distinct..n).map(|_| pool[rng.random_range(0..distinct)]));
    keys.shuffle(rng);
    keys
}

fn zipf_keys(n: usize, universe: usize, rng: &mut SmallRng) -> Vec<[u8; KEY]> {
    let pool: Vec<[u8; KEY]> = (0..universe).map(|_| rng.random()).collect();
    let z = Zipf::new(universe as f64, 0.99).unwrap();
    (0..n).map(|_| pool[z.sample(rng) as usize - 1]).collect()
}

/// The stage as a plain `sort_by` would do it: what coalescing has to beat.
fn naive(entries: &[Entry<'_>]) -> Vec<u32> {
    let mut v: Vec<(&[u8], u32)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e.op, Op::Get))
        .map(|(i, e)| (e.key, i as u32))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    let mut out: Vec<u32> = Vec::with_capacity(v.len());
    for (i, &(k, idx)) in v.iter().enumerate() {
        if v.get(i + 1).map(|next| next.0) != Some(k) {
            out.push(idx);
        }
    }
    out
}

fn run_group(c: &mut Criterion, name: &str, cases: &[(String, Vec<Entry<'_>>)], with_naive: bool) {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, es) in cases {
        g.throughput(Throughput::Elements(es.len() as u64));
        let mut co = Coalescer::new();
        // `plan` is sort-first (what Auto picks when coalescing); hash-first is the measured
        // alternative.
        for (alg, a) in [
            ("plan", Algorithm::Auto),
            ("hash-first", Algorithm::HashFirst),
        ] {
            g.bench_with_input(BenchmarkId::new(alg, label), es, |b, es| {
                b.iter(|| black_box(co.plan_with(black_box(es), true, a).survivors.len()))
            });
        }
        g.bench_with_input(BenchmarkId::new("coalesce-off", label), es, |b, es| {
            b.iter(|| black_box(co.plan(black_box(es), false).survivors.len()))
        });
        if with_naive {
            g.bench_with_input(BenchmarkId::new("naive-sort-by", label), es, |b, es| {
                b.iter(|| black_box(naive(black_box(es)).len()))
            });
        }
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0x6d65_7267);
    for (n, label) in [(1 << 10, "1K"), (1 << 16, "64K")] {
        let bufs: Vec<(usize, Vec<u8>)> = [0, 50, 90]
            .iter()
            .map(|&d| (d, arena(&dup_keys(n, d, &mut rng), &mut rng)))
            .collect();
        let cases: Vec<(String, Vec<Entry<'_>>)> = bufs
            .iter()
            .map(|(d, buf)| (format!("dup{d}"), entries(buf, 0)))
            .collect();
        run_group(c, &format!("coalesce_sort/{label}"), &cases, n == 1 << 16);
    }
    // Zipf 0.99 over 100k keys, as in the prototype of DESIGN §7, all puts and with 1 get in 10.
    let buf = arena(&zipf_keys(1 << 16, 100_000, &mut rng), &mut rng);
    let cases = vec![
        ("puts".to_string(), entries(&buf, 0)),
        ("get10pct".to_string(), entries(&buf, 10)),
    ];
    run_group(c, "coalesce_sort/64K-zipf0.99", &cases, true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
