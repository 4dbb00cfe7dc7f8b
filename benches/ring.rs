//! Ingest ring throughput: push + pop per record.
//!
//! Each record is what a small put carries (16-byte key, 100-byte value, 4 bytes of lengths:
//! 120 payload bytes, a 128-byte ring record). The ring is compared, in the same group, with
//! what a naive design does: allocate a `Box<Request>` holding the key and value as `Vec`s and
//! pass it through a bounded `crossbeam::queue::ArrayQueue`. In both, the consumer keeps what
//! it read until it has 1024 records and then lets them go (ring: `release`; queue: drop the
//! boxes), like the flusher does with a window.
//!
//! Throughput is in elements, so criterion's time is per record. `ring_pipeline/*` runs the
//! producers and the consumer on separate threads (on a 2-core machine, 2 producers plus the
//! consumer oversubscribe the cores; that is part of what the number shows).
//! `ring_single_thread/*` times one thread alone: `ring_push` times only the push
//! (claim + copy + publish; budget <= 40 ns), `ring_push_read_release` the whole round trip.
//!
//! Run: `cargo bench --bench ring`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use crossbeam::utils::Backoff;
use mergelog::internals::ring::{ring, RECORD_HEADER};

const KEY: usize = 16;
const VALUE: usize = 100;
const PAYLOAD: usize = 4 + KEY + VALUE;
const RING_BYTES: usize = 16 << 20;
const RECORD_BYTES: usize = (RECORD_HEADER + PAYLOAD + 7) & !7;
const QUEUE_SLOTS: usize = RING_BYTES / RECORD_BYTES;
const BATCH: u64 = 1024;

/// What a naive design allocates per request.
struct Request {
    key: Vec<u8>,
    value: Vec<u8>,
}

fn key_of(producer: usize, i: u64) -> [u8; KEY] {
    let mut key = [0u8; KEY];
    key[..8].copy_from_slice(&(producer as u64).to_be_bytes());
    key[8..].copy_from_slice(&i.to_be_bytes());
    key
}

#[inline]
fn encode(buf: &mut [u8], key: &[u8], value: &[u8]) {
    buf[0..2].copy_from_slice(&(key.len() as u16).to_le_bytes());
    buf[2..4].copy_from_slice(&(value.len() as u16).to_le_bytes());
    buf[4..4 + key.len()].copy_from_slice(key);
    buf[4 + key.len()..].copy_from_slice(value);
}

/// Splits `iters` records among `producers`.
fn share(iters: u64, producers: usize, p: usize) -> u64 {
    iters / producers as u64 + u64::from((p as u64) < iters % producers as u64)
}

fn ring_pipeline(producers: usize, iters: u64) -> Duration {
    let (r, mut c) = ring(RING_BYTES);
    let start = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let r = Arc::clone(&r);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let value = [0x5au8; VALUE];
                start.wait();
                for i in 0..share(iters, producers, p) {
                    let key = key_of(p, i);
                    r.push(PAYLOAD, |b| encode(b, &key, &value)).unwrap();
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let (mut pos, mut seen, mut held, mut sum) = (0u64, 0u64, 0u64, 0u64);
    while seen < iters {
        let mut n = 0;
        pos = c.read(pos, |_, b| {
            sum = sum.wrapping_add(u64::from(b[4 + KEY - 1]));
            n += 1;
            true
        });
        seen += n;
        held += n;
        if held >= BATCH {
            c.release(pos);
            held = 0;
        }
        if n == 0 {
            c.wait(pos, None);
        }
    }
    c.release(pos);
    let elapsed = t0.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    black_box(sum);
    elapsed
}

fn queue_pipeline(producers: usize, iters: u64) -> Duration {
    let q = Arc::new(ArrayQueue::<Box<Request>>::new(QUEUE_SLOTS));
    let start = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let q = Arc::clone(&q);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let value = [0x5au8; VALUE];
                start.wait();
                for i in 0..share(iters, producers, p) {
                    let mut req = Box::new(Request {
                        key: key_of(p, i).to_vec(),
                        value: value.to_vec(),
                    });
                    let backoff = Backoff::new();
                    while let Err(back) = q.push(req) {
                        req = back;
                        backoff.snooze();
                    }
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut window: Vec<Box<Request>> = Vec::with_capacity(BATCH as usize);
    let (mut seen, mut sum) = (0u64, 0u64);
    let backoff = Backoff::new();
    while seen < iters {
        match q.pop() {
            Some(req) => {
                sum = sum.wrapping_add(u64::from(req.key[KEY - 1]) + req.value.len() as u64);
                window.push(req);
                seen += 1;
                if window.len() as u64 >= BATCH {
                    window.clear();
                }
                backoff.reset();
            }
            None => backoff.snooze(),
        }
    }
    window.clear();
    let elapsed = t0.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    black_box(sum);
    elapsed
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_pipeline");
    group.throughput(Throughput::Elements(1));
    for producers in [1usize, 2] {
        group.bench_with_input(BenchmarkId::new("ring", producers), &producers, |b, &p| {
            b.iter_custom(|iters| ring_pipeline(p, iters))
        });
        group.bench_with_input(
            BenchmarkId::new("arrayqueue_box", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| queue_pipeline(p, iters)),
        );
    }
    group.finish();
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_single_thread");
    group.throughput(Throughput::Elements(1));
    let value = [0x5au8; VALUE];

    let (r, mut consumer) = ring(RING_BYTES);
    let mut pos = 0;
    group.bench_function("ring_push", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(BATCH);
                let t0 = Instant::now();
                for i in 0..n {
                    let key = key_of(0, done + i);
                    r.try_push(PAYLOAD, |b| encode(b, &key, &value)).unwrap();
                }
                timed += t0.elapsed();
                pos = consumer.read(pos, |_, b| {
                    black_box(b);
                    true
                });
                consumer.release(pos);
                done += n;
            }
            timed
        })
    });
    group.bench_function("ring_push_read_release", |b| {
        let mut i = 0u64;
        b.iter(|| {
            let key = key_of(0, i);
            i += 1;
            r.try_push(PAYLOAD, |b| encode(b, &key, &value)).unwrap();
            if i.is_multiple_of(BATCH) {
                pos = consumer.read(pos, |_, b| {
                    black_box(b);
                    true
                });
                consumer.release(pos);
            }
        })
    });
    let q = ArrayQueue::<Box<Request>>::new(QUEUE_SLOTS);
    let mut window: Vec<Box<Request>> = Vec::with_capacity(BATCH as usize);
    group.bench_function("arrayqueue_box_push_pop", |b| {
        let mut i = 0u64;
        b.iter(|| {
            let req = Box::new(Request {
                key: key_of(0, i).to_vec(),
                value: value.to_vec(),
            });
            i += 1;
            assert!(q.push(req).is_ok());
            if i.is_multiple_of(BATCH) {
                while let Some(req) = q.pop() {
                    window.push(req);
                }
                window.clear();
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = pipeline, single_thread
}
criterion_main!(benches);
