//! Release-mode stress test of the ingest ring (`mergelog::internals::ring`), the part of
//! issue 5 item 4 that loom cannot reach: real threads, real memory ordering, many laps of
//! a small ring, wraps with padding, producers parked on a full ring, a consumer parked on an
//! empty one.
//!
//! Several producers push records carrying (producer id, sequence number, a payload whose
//! length varies per record, a checksum over all of it); one consumer reads them in place,
//! checks each one and releases in batches. The test fails if any record is lost, duplicated,
//! torn (payload or length not what its producer wrote), reordered within its producer, or
//! if the end positions the consumer sees are not strictly increasing or disagree with the
//! positions the producers were given.
//!
//! `MERGELOG_RING_STRESS_RECORDS` sets the total (default: 100 million in optimised builds,
//! `release` and `release-checked` alike, 2 million in the unoptimised `dev` profile, where
//! every byte check is an order of magnitude slower).
//! `MERGELOG_RING_STRESS_PRODUCERS` sets the producer count (default 3) and
//! `MERGELOG_RING_STRESS_RING` the ring size in bytes (default 64 KiB: many laps).

mod common;

use common::env_u64;
use mergelog::internals::ring::{self, PushError, Ring};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload: seq u64 | producer u8 | reserved u8 | body_len u16 | checksum u32 | body.
const HEAD: usize = 16;
/// The consumer reads at most this many records per `read` call.
const READ_BATCH: u64 = 256;
/// It releases once this many records are unreleased (cycling through the list, like windows
/// of different sizes; a big one makes producers wait on a full ring), or when it finds
/// nothing new to read.
const RELEASE_AFTER: [u64; 5] = [1, 64, 256, 1000, 4096];

/// SplitMix64: the per-record randomness, a pure function of (producer, seq) so that the
/// consumer can recompute what each producer wrote.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn record_seed(producer: u8, seq: u64) -> u64 {
    mix(seq ^ (u64::from(producer) << 56))
}

/// Body length of a record: mostly 0..=56 bytes, one in 512 up to `big_max` (which makes
/// wraps with long padding records, and full-ring waits, frequent).
fn body_len(seed: u64, big_max: usize) -> usize {
    if seed & 0x1ff == 0 {
        (seed >> 16) as usize % (big_max + 1)
    } else {
        (seed >> 16) as usize % 57
    }
}

/// The body's words: a xorshift stream from the seed, different for every record.
struct BodyWords(u64);

impl Iterator for BodyWords {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        Some(*x)
    }
}

fn words(seed: u64) -> BodyWords {
    BodyWords(seed | 1)
}

fn le_word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// Checksum over the head fields and the body, a word at a time.
fn checksum(producer: u8, seq: u64, body: &[u8]) -> u32 {
    let mut h = mix(seq ^ (u64::from(producer) << 56) ^ ((body.len() as u64) << 40));
    for chunk in body.chunks(8) {
        h = (h ^ le_word(chunk))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
    (h ^ (h >> 32)) as u32
}

fn write_record(buf: &mut [u8], producer: u8, seq: u64, seed: u64) {
    // The ring promises zeroed bytes (the consumer zeroes on release): check it.
    assert!(
        buf.iter().all(|&b| b == 0),
        "ring handed out non-zero bytes"
    );
    let (head, body) = buf.split_at_mut(HEAD);
    for (chunk, w) in body.chunks_mut(8).zip(words(seed)) {
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
    head[0..8].copy_from_slice(&seq.to_le_bytes());
    head[8] = producer;
    head[10..12].copy_from_slice(&(body.len() as u16).to_le_bytes());
    head[12..16].copy_from_slice(&checksum(producer, seq, body).to_le_bytes());
}

/// Checks one record; returns (producer, seq) or what is wrong with it.
fn check_record(payload: &[u8], producers: usize, big_max: usize) -> Result<(u8, u64), String> {
    if payload.len() < HEAD {
        return Err(format!(
            "payload of {} bytes is shorter than the head",
            payload.len()
        ));
    }
    let (head, body) = payload.split_at(HEAD);
    let seq = u64::from_le_bytes(head[0..8].try_into().unwrap());
    let producer = head[8];
    if usize::from(producer) >= producers || head[9] != 0 {
        return Err(format!(
            "bad producer byte {producer} / reserved {}",
            head[9]
        ));
    }
    let body_field = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let seed = record_seed(producer, seq);
    let want_len = body_len(seed, big_max);
    if body_field != want_len || body.len() != want_len {
        return Err(format!(
            "producer {producer} seq {seq}: body of {} bytes (field {body_field}), want {want_len}",
            body.len()
        ));
    }
    let stored = u32::from_le_bytes(head[12..16].try_into().unwrap());
    if stored != checksum(producer, seq, body) {
        return Err(format!(
            "producer {producer} seq {seq}: checksum mismatch (torn)"
        ));
    }
    if !body
        .chunks(8)
        .zip(words(seed))
        .all(|(chunk, w)| chunk == &w.to_le_bytes()[..chunk.len()])
    {
        return Err(format!(
            "producer {producer} seq {seq}: body differs (torn)"
        ));
    }
    Ok((producer, seq))
}

/// Marks the run failed if a producer unwinds, so the consumer stops waiting for it.
struct FailOnPanic<'a>(&'a AtomicBool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

fn fail(failed: &AtomicBool, msg: String) -> ! {
    failed.store(true, Ordering::SeqCst);
    panic!("{msg}");
}

/// Closes the ring if the consumer unwinds, so that producers blocked on a full ring wake up
/// with `Closed` instead of hanging the test.
struct CloseOnPanic(Arc<Ring>);

impl Drop for CloseOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

#[test]
fn ring_moves_records_without_loss_duplication_or_tearing() {
    // The profile shows in the binary's path (`target/<profile>/deps/…`); debug assertions
    // alone do not tell, since the `release-checked` profile the tests run with has them.
    let unoptimised = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.file_name()? == "debug"))
        .unwrap_or(cfg!(debug_assertions));
    let default = if unoptimised { 2_000_000 } else { 100_000_000 };
    let total = env_u64("MERGELOG_RING_STRESS_RECORDS").unwrap_or(default);
    let producers = env_u64("MERGELOG_RING_STRESS_PRODUCERS").unwrap_or(3) as usize;
    let capacity = env_u64("MERGELOG_RING_STRESS_RING").unwrap_or(64 << 10) as usize;
    assert!((1..=255).contains(&producers), "1..=255 producers");
    let (ring, mut consumer) = ring::ring(capacity);
    // Large records reach a third of the biggest payload, so a wrap's padding plus one of them
    // takes a good part of the ring.
    let big_max = (ring.max_payload() - HEAD) / 3;
    let per_producer: Vec<u64> = (0..producers as u64)
        .map(|p| total / producers as u64 + u64::from(p < total % producers as u64))
        .collect();

    let started = Instant::now();
    let producers_done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Positions the producers were given, summed, to check against the consumer's.
    let pushed_positions = AtomicU64::new(0);
    let mut next_seq = vec![0u64; producers];
    let mut consumed: u64 = 0;
    let mut seen_positions: u64 = 0;
    let mut waits: u64 = 0;
    let mut releases: u64 = 0;

    std::thread::scope(|s| {
        for (p, &count) in per_producer.iter().enumerate() {
            let ring = &ring;
            let producers_done = &producers_done;
            let failed = &failed;
            let pushed_positions = &pushed_positions;
            s.spawn(move || {
                let _guard = FailOnPanic(failed);
                let mut last_pos = 0u64;
                let mut pos_sum = 0u64;
                for seq in 0..count {
                    let seed = record_seed(p as u8, seq);
                    let len = HEAD + body_len(seed, big_max);
                    let fill = |buf: &mut [u8]| write_record(buf, p as u8, seq, seed);
                    // Mostly the blocking push; one in eight a try_push loop (the `Reject`
                    // path), which must never lose or duplicate a record either.
                    let r = if seed & 0x7000 == 0 {
                        let mut fill = Some(fill);
                        loop {
                            match ring.try_push(len, |b| (fill.take().unwrap())(b)) {
                                Err(PushError::Full) => std::thread::yield_now(),
                                r => break r,
                            }
                        }
                    } else {
                        ring.push(len, fill)
                    };
                    match r {
                        Ok(pos) => {
                            assert!(pos > last_pos, "positions must grow per producer");
                            last_pos = pos;
                            pos_sum = pos_sum.wrapping_add(pos);
                        }
                        // Only after the consumer failed and closed the ring.
                        Err(PushError::Closed) if failed.load(Ordering::SeqCst) => return,
                        Err(e) => panic!("producer {p}: push failed: {e}"),
                    }
                }
                pushed_positions.fetch_add(pos_sum, Ordering::SeqCst);
                producers_done.fetch_add(1, Ordering::SeqCst);
            });
        }

        // The consumer, on this thread.
        let _close = CloseOnPanic(ring.clone());
        let mut pos = ring.head();
        let mut last_end = 0u64;
        let mut unreleased = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while consumed < total {
            let mut error = None;
            let mut batch = 0u64;
            pos = consumer.read(pos, |end, payload| {
                // Returning false leaves this record unconsumed, to be read again next time.
                if batch == READ_BATCH {
                    return false;
                }
                match check_record(payload, producers, big_max) {
                    Ok((p, seq)) => {
                        let want = next_seq[usize::from(p)];
                        if seq != want {
                            error = Some(format!(
                                "producer {p}: got seq {seq}, expected {want} ({})",
                                if seq < want {
                                    "duplicate or reordered"
                                } else {
                                    "lost"
                                }
                            ));
                            return false;
                        }
                        if end <= last_end {
                            error = Some(format!("end position {end} after {last_end}"));
                            return false;
                        }
                        next_seq[usize::from(p)] += 1;
                        last_end = end;
                        seen_positions = seen_positions.wrapping_add(end);
                        batch += 1;
                        true
                    }
                    Err(e) => {
                        error = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = error {
                fail(&failed, format!("after {consumed} records: {e}"));
            }
            consumed += batch;
            unreleased += batch;
            if unreleased >= RELEASE_AFTER[(releases % RELEASE_AFTER.len() as u64) as usize]
                || batch == 0
            {
                consumer.release(pos);
                releases += 1;
                unreleased = 0;
            }
            if batch == 0 {
                if failed.load(Ordering::SeqCst) {
                    fail(
                        &failed,
                        format!("a producer failed after {consumed} records"),
                    );
                }
                if Instant::now() > deadline {
                    fail(&failed, format!(
                        "stuck after {consumed} of {total} records (next seqs {next_seq:?}, ring {ring:?})"
                    ));
                }
                waits += 1;
                consumer.wait(pos, Some(Instant::now() + Duration::from_millis(100)));
            }
        }
        consumer.release(pos);
    });
    let elapsed = started.elapsed();

    assert_eq!(
        producers_done.load(Ordering::SeqCst),
        producers as u64,
        "every producer finished"
    );
    assert_eq!(consumed, total, "records consumed");
    assert_eq!(
        next_seq, per_producer,
        "every record of every producer, once"
    );
    assert_eq!(
        seen_positions,
        pushed_positions.load(Ordering::SeqCst),
        "the consumer saw exactly the positions the producers were given"
    );
    // Nothing after the last record: the ring is empty and stays so.
    assert_eq!(ring.head(), ring.tail(), "ring drained");
    let extra = consumer.read(ring.head(), |_, _| panic!("a record nobody pushed"));
    assert_eq!(extra, ring.tail());
    // After close, pushes are refused and nothing more can appear.
    ring.close();
    assert_eq!(ring.push(8, |_| {}), Err(PushError::Closed));
    assert_eq!(ring.try_push(8, |_| {}), Err(PushError::Closed));
    assert!(!consumer.wait(
        ring.tail(),
        Some(Instant::now() + Duration::from_millis(10))
    ));

    eprintln!(
        "ring stress: {total} records, {producers} producers, ring {capacity} B, {:.2?} \
         ({:.1} M records/s, {:.2} GB through the ring, {} laps), {releases} releases, \
         {waits} consumer waits",
        elapsed,
        total as f64 / elapsed.as_secs_f64() / 1e6,
        ring.tail() as f64 / 1e9,
        ring.tail() / capacity as u64,
    );
}
