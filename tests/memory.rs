//! Memory per request in the engine: a counting global allocator measures, over every thread
//! (the engine's too), the peak of live heap bytes while a request runs and the bytes still
//! live once its ticket has completed. The value a request carries is built before the
//! measure starts (and an answer that is the value read is counted as the value), so what is
//! measured is what the engine adds: copies of the value it holds at once, and what it keeps.
//!
//! The counters are the process's: the tests of this file take `SERIAL` for their whole run,
//! so no two measure at once (a test waiting for it allocates nothing meanwhile).
//!
//! Each figure is printed (`cargo test --test memory -- --nocapture`); the bounds asserted
//! are argued at each test. Nothing here measures time.

mod common;
mod counting;

use common::hold::{Both, Hold};
use common::{wait_ok, WAIT_MAX};
use mergelog::internals::io::IoOp;
use mergelog::{Compaction, Config, Engine, LogReader, MergeOperator, WindowPolicy, WriteBatch};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One measure at a time: the counters are the process's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MIB: usize = 1 << 20;
/// The sizes of value measured.
const SIZES: [usize; 3] = [MIB, 4 * MIB, 16 * MIB];

/// A small constant for what a request may add besides copies of its value: a window's
/// bookkeeping, a get's slot, a consumer's position file path, a compaction's chunk record,
/// and the preparing thread's zero-fill buffer (256 KiB) when a request's frame rolls the log.
const SMALL: usize = 512 << 10;

/// Values up to 16 MiB (and a little), windows of up to 17 MiB, segments holding two such
/// windows, a ring whose record (a quarter of it) holds one.
fn config() -> Config {
    Config {
        value_len_max: 16 * MIB + 64,
        batch_bytes_max: 17 * MIB,
        ring_bytes: 128 * MIB,
        segment_bytes: 36 * MIB as u64,
        ..Config::default()
    }
}

fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What one measured request cost: the peak of live heap bytes while it ran and the live
/// bytes once it completed, each less those live when it began (its value already built).
#[derive(Clone, Copy, Debug)]
struct Cost {
    len: usize,
    peak: usize,
    kept: isize,
}

impl Cost {
    /// Bytes held at the peak beyond `len`, in units of `len` (for the messages).
    fn extra(&self) -> f64 {
        self.peak.saturating_sub(self.len) as f64 / self.len as f64
    }
}

/// Runs `f` (which must leave nothing of its own alive: it drops its answer) and measures it.
/// Then, if `engine` is given, a get of a key never written goes through a window of its own
/// (which writes no frame) before the live bytes are read: the flusher has finished the
/// request's window by then (a ticket may complete inside it, before its last steps).
fn measure(len: usize, engine: Option<&Engine>, f: impl FnOnce()) -> Cost {
    let before = counting::live();
    counting::set_peak(before);
    f();
    if let Some(engine) = engine {
        settle(engine);
    }
    let peak = counting::peak() - before;
    let kept = counting::live() as isize - before as isize;
    Cost { len, peak, kept }
}

/// Lets the engine's threads finish what they hold once `f`'s tickets completed: a window's
/// tickets complete before its syncer (or flusher) gives its job back and frees what a large
/// window grew, so a thread that lags there (a busy machine) still holds it when the caller
/// is answered. Round trips (a get and a flush) until live memory reads the same five times
/// running, 2 ms apart (at most 2 s): what is left then is what the engine keeps.
fn settle(engine: &Engine) {
    let mut last = None;
    let mut same = 0;
    let started = std::time::Instant::now();
    while same < 5 && started.elapsed() < std::time::Duration::from_secs(2) {
        let get = engine.get(b"never written").unwrap();
        wait_ok(&engine.flush().unwrap(), "flush");
        assert_eq!(get.wait().unwrap(), None);
        let live = counting::live();
        same = if last == Some(live) { same + 1 } else { 0 };
        last = Some(live);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn report(what: &str, costs: &[Cost]) {
    for c in costs {
        eprintln!(
            "{what}: value {} MiB: peak {} bytes ({:.2}x the value beyond it), kept {} bytes",
            c.len / MIB,
            c.peak,
            c.extra(),
            c.kept
        );
    }
}

/// Puts of 1, 4 and 16 MiB, then 16 MiB again: the engine holds, besides the value the caller
/// passed (which the ring holds a copy of in memory allocated at open), one frame buffer of
/// the pwrite path, which grows to the largest frame written and is kept (bounded by
/// `batch_bytes_max`: ARCHITECTURE.md, "Memory"). So a put's peak is at most its frame (about 1x the
/// value) and a small constant; once the buffer has grown, a put keeps nothing.
#[test]
fn a_put_holds_its_value_at_most_once_more() {
    let _serial = serial();
    for merge in [
        None,
        Some(MergeOperator::Append {
            max_len: 16 * MIB + 64,
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let with_merge = merge.is_some();
        let engine = Engine::open(dir.path(), Config { merge, ..config() }).unwrap();
        wait_ok(&engine.put(b"warm", b"up").unwrap(), "warm-up");
        let mut costs = Vec::new();
        for (i, len) in SIZES.into_iter().chain([16 * MIB]).enumerate() {
            let v = value(len, i as u8);
            costs.push(measure(len, Some(&engine), || {
                wait_ok(&engine.put(b"k", &v).unwrap(), "put");
            }));
        }
        let what = if with_merge {
            "put (merge operator set)"
        } else {
            "put"
        };
        report(what, &costs);
        for c in &costs {
            assert!(
                c.peak <= c.len + SMALL,
                "{what} of {} bytes held {} bytes at its peak ({:.2}x the value beyond \
                 it): more than one frame's copy",
                c.len,
                c.peak,
                c.extra()
            );
        }
        let last = costs.last().unwrap();
        assert!(
            last.kept <= SMALL as isize,
            "{what} of {} bytes, its ticket complete, left {} bytes live",
            last.len,
            last.kept
        );
        assert_eq!(engine.read_to_vec(b"k").unwrap(), Some(value(16 * MIB, 3)));
        engine.close().unwrap();
    }
}

/// A write batch of 64 values of 256 KiB (16 MiB): as a put, at most one frame's copy.
#[test]
fn a_write_batch_holds_its_values_at_most_once_more() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    wait_ok(&engine.put(b"warm", b"up").unwrap(), "warm-up");
    let mut costs = Vec::new();
    for round in 0..2u8 {
        let mut batch = WriteBatch::new();
        for i in 0..64u32 {
            batch.put(&i.to_be_bytes(), &value(256 << 10, round));
        }
        costs.push(measure(16 * MIB, Some(&engine), || {
            wait_ok(&engine.write(&batch).unwrap(), "batch");
        }));
    }
    report("write batch", &costs);
    for c in &costs {
        assert!(
            c.peak <= c.len + SMALL,
            "a write batch of {} bytes held {} bytes at its peak",
            c.len,
            c.peak
        );
    }
    assert!(costs[1].kept <= SMALL as isize, "{costs:?}");
    engine.close().unwrap();
}

/// A merge (`Append`) of 16 bytes onto a durable value of 1, 4, 16 MiB: its result is a new
/// value of that size, which the engine must build (1x), and its frame (1x more with the
/// pwrite path's buffer); reading the durable value may copy it (1x). Nothing beyond that,
/// and once the merge's ticket completes nothing is kept but the frame buffer.
#[test]
fn a_merge_onto_a_large_value_holds_it_a_bounded_number_of_times() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        merge: Some(MergeOperator::Append {
            max_len: 16 * MIB + 64,
        }),
        ..config()
    };
    let engine = Engine::open(dir.path(), cfg).unwrap();
    let mut costs = Vec::new();
    for (i, len) in SIZES.into_iter().chain([16 * MIB]).enumerate() {
        let key = [i as u8];
        let v = value(len - 16, i as u8);
        wait_ok(&engine.put(&key, &v).unwrap(), "put");
        // A window in between, so the value's is durable and forgotten by the flusher.
        wait_ok(&engine.put(b"other", b"x").unwrap(), "put");
        drop(v);
        costs.push(measure(len, Some(&engine), || {
            wait_ok(&engine.merge(&key, &[7; 16]).unwrap(), "merge");
        }));
        let got = engine.read(&key).unwrap().unwrap();
        assert_eq!(got.len(), len);
        assert_eq!(got[len - 16..], [7; 16]);
    }
    report("merge onto a durable value", &costs);
    for c in &costs {
        assert!(
            c.peak <= 3 * c.len + SMALL,
            "a merge making a value of {} bytes held {} bytes at its peak ({:.2}x the value \
             beyond it)",
            c.len,
            c.peak,
            c.extra()
        );
    }
    let last = costs.last().unwrap();
    assert!(
        last.kept <= SMALL as isize,
        "a merge making a value of {} bytes, its ticket complete, left {} bytes live",
        last.len,
        last.kept
    );
    engine.close().unwrap();
}

/// A get of a durable value of 1, 4, 16 MiB, and one answered from a put of the same window:
/// the answer is a copy of the value (counted as the value); the engine needs no other.
#[test]
fn a_get_holds_its_answer_once_and_keeps_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Windows cut only by `flush` (or the size limits), so a put and a get share one.
    let cfg = Config {
        window: WindowPolicy::Linger(Duration::from_secs(10)),
        window_age_max: Duration::from_secs(10),
        ..config()
    };
    let engine = Engine::open(dir.path(), cfg).unwrap();
    let mut durable = Vec::new();
    let mut in_window = Vec::new();
    for (i, len) in SIZES.into_iter().chain([16 * MIB]).enumerate() {
        let key = [i as u8];
        let v = value(len, i as u8);
        // In the window: the put and the get go out together.
        in_window.push(measure(len, Some(&engine), || {
            let put = engine.put(&key, &v).unwrap();
            let get = engine.get(&key).unwrap();
            wait_ok(&engine.flush().unwrap(), "flush");
            wait_ok(&put, "put");
            let got = get.wait().unwrap().unwrap();
            assert!(got == v);
        }));
        durable.push(measure(len, Some(&engine), || {
            let get = engine.get(&key).unwrap();
            wait_ok(&engine.flush().unwrap(), "flush");
            let got = get.wait().unwrap().unwrap();
            assert_eq!(got.len(), len);
        }));
    }
    report("get in the window", &in_window);
    report("get of a durable value", &durable);
    // The window's frame buffer (1x) and the answer (1x); the buffer once grown is kept.
    for c in &in_window {
        assert!(
            c.peak <= 2 * c.len + SMALL,
            "a get in the window of a put of {} bytes held {} bytes at its peak",
            c.len,
            c.peak
        );
    }
    for c in &durable {
        assert!(
            c.peak <= c.len + SMALL,
            "a get of a durable value of {} bytes held {} bytes at its peak ({:.2}x the \
             value beyond the answer)",
            c.len,
            c.peak,
            c.extra()
        );
        assert!(
            c.kept <= SMALL as isize,
            "a get of a durable value of {} bytes, its answer dropped, left {} bytes live",
            c.len,
            c.kept
        );
    }
    assert!(
        in_window.last().unwrap().kept <= SMALL as isize,
        "{in_window:?}"
    );
    engine.close().unwrap();
}

/// A compaction copying live values of 16 MiB: the chunk it hands the flusher holds a copy of
/// the records (1x) and the frame buffer another (1x); nothing is kept after.
#[test]
fn a_compaction_of_large_values_holds_each_at_most_twice() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        compaction: Compaction::OnDemand,
        ..config()
    };
    let engine = Engine::open(dir.path(), cfg).unwrap();
    // Two live values and two overwritten in the first segments, then a segment's worth more
    // so they are complete.
    for i in 0..4u8 {
        wait_ok(&engine.put(&[i % 2], &value(16 * MIB, i)).unwrap(), "put");
    }
    for i in 0..4u8 {
        wait_ok(&engine.put(&[10 + i], &value(MIB, i)).unwrap(), "put");
    }
    for i in 0..4u8 {
        wait_ok(
            &engine.put(&[20 + i % 2], &value(16 * MIB, i)).unwrap(),
            "put",
        );
    }
    let c = measure(16 * MIB, Some(&engine), || {
        let done = engine.compact().unwrap();
        assert!(done.records_copied > 0, "{done:?}");
    });
    report("compaction", &[c]);
    assert!(
        c.peak <= 2 * c.len + SMALL,
        "a compaction copying values of {} bytes held {} bytes at its peak",
        c.len,
        c.peak
    );
    let again = measure(16 * MIB, Some(&engine), || {
        wait_ok(&engine.put(b"after", b"x").unwrap(), "put");
    });
    assert!(again.kept <= SMALL as isize, "{again:?}");
    engine.close().unwrap();
}

/// Replaying a log of large values (`Engine::replay`, a `LogReader` of the directory) reads
/// them in place: nothing beyond a small constant. A consumer's `next` copies its batch out
/// (an `OwnedBatch`: 1x, counted as the value) and nothing more.
#[test]
fn replay_and_consumers_read_large_values_in_place_or_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut consumer = engine.consumer("c").unwrap();
    for (i, len) in SIZES.into_iter().enumerate() {
        wait_ok(
            &engine.put(&[i as u8], &value(len, i as u8)).unwrap(),
            "put",
        );
    }
    let total: usize = SIZES.iter().sum();
    let replay = measure(total, Some(&engine), || {
        let reader = engine.replay().unwrap();
        let bytes: usize = (reader.batches())
            .flat_map(|b| b.records().map(|r| r.value.len()).collect::<Vec<_>>())
            .sum();
        assert_eq!(bytes, total);
    });
    let mut next = Vec::new();
    for len in SIZES {
        next.push(measure(len, Some(&engine), || {
            let batch = consumer.next_timeout(WAIT_MAX).unwrap().unwrap();
            assert_eq!(batch.records[0].value.len(), len);
            consumer.commit(batch.seq).unwrap();
        }));
    }
    engine.close().unwrap();
    let reader = measure(total, None, || {
        let reader = LogReader::open(dir.path()).unwrap();
        let bytes: usize = (reader.batches())
            .flat_map(|b| b.records().map(|r| r.value.len()).collect::<Vec<_>>())
            .sum();
        assert_eq!(bytes, total);
    });
    report("replay", &[replay]);
    report("LogReader", &[reader]);
    report("consumer next", &next);
    for c in [replay, reader] {
        assert!(
            c.peak <= SMALL,
            "a replay of {} bytes held {}",
            c.len,
            c.peak
        );
    }
    for c in &next {
        assert!(
            c.peak <= c.len + SMALL,
            "a consumer's next of {} bytes held {}",
            c.len,
            c.peak
        );
    }
}

/// Retained memory after windows of many small writes. The flusher's scratch (the window's
/// entries, the coalescer's tables), the index updates of each job the pipeline keeps for
/// reuse (at most `4 + syncers`) and the index's queue keep room for a window of up to 8,192
/// operations (`JOB_KEPT_MAX`) and twice `QUEUED_MAX` queued updates; a window larger than
/// that allocates its own, and nothing of it stays once it is done. So windows of 100,000
/// writes, whether one after another or 32 submitted at once (before: 4 MB and 42 MB kept,
/// the pooled jobs and the queue each grown to the largest burst), keep at most those
/// buffers' room: the bound asserted. The first window's figure includes its 100,000 keys in
/// the index.
#[test]
fn windows_of_many_writes_keep_only_a_bounded_room_for_the_next() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ops = 100_000u32;
    // One batch per window.
    let cfg = Config {
        batch_ops_max: ops as usize,
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), cfg).unwrap();
    let batch = |round: u32| {
        let mut batch = WriteBatch::new();
        for i in 0..ops {
            batch.put(&i.to_be_bytes(), &[round as u8]);
        }
        batch
    };
    let one = measure(0, Some(&engine), || {
        wait_ok(&engine.write(&batch(0)).unwrap(), "batch");
    });
    let after = measure(0, Some(&engine), || {
        for round in 1..32u32 {
            wait_ok(&engine.write(&batch(round)).unwrap(), "batch");
        }
    });
    let burst = measure(0, Some(&engine), || {
        let tickets: Vec<_> = (0..32u32)
            .map(|round| engine.write(&batch(round)).unwrap())
            .collect();
        for t in &tickets {
            wait_ok(t, "batch");
        }
    });
    eprintln!(
        "windows of {ops} writes: the first kept {} bytes (its keys in the index); 31 more \
         one after another kept {} bytes; 32 more at once kept {}",
        one.kept, after.kept, burst.kept
    );
    // Each pooled job: 8,192 index updates of 40 bytes and as many 8-byte stamps; the
    // index's queue: two buffers of 32,768 updates of 40 bytes.
    let room = (4 + Config::default().syncers) * 8_192 * 48 + 2 * 32_768 * 40;
    for (what, kept) in [
        ("31 one after another", after.kept),
        ("32 at once", burst.kept),
    ] {
        assert!(
            kept <= (room + SMALL) as isize,
            "{what} windows of {ops} writes kept {kept} bytes more than before them: more \
             than the pooled jobs' and the index queue's room ({room} bytes)"
        );
    }
    engine.close().unwrap();
}

/// A merge onto a value too long for the flusher to copy (over 64 KiB) while the window that
/// wrote it is in flight reads the value from the frame written for it, not yet durable. The
/// put's window is held in its write until the merge is in the ring (so it goes to a syncer,
/// not completed at once), its sync until the merge's frame is written (its merge resolved
/// first): without the read from the frame, the merge would see the value before the put.
#[test]
fn a_merge_onto_a_long_value_in_flight_sees_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (writes, syncs) = (Hold::of(IoOp::Write), Hold::syncs());
    let cfg = Config {
        merge: Some(MergeOperator::Append { max_len: 1 << 20 }),
        window: WindowPolicy::Linger(Duration::from_secs(10)),
        window_age_max: Duration::from_secs(10),
        ..Config::default()
    };
    let both = Arc::new(Both(writes.clone(), syncs.clone()));
    let engine = Engine::open_with_io(dir.path(), cfg, both).unwrap();
    let long = value((64 << 10) + 1, 9);
    let first = engine.put(b"k", b"old").unwrap();
    wait_ok(&engine.flush().unwrap(), "flush");
    wait_ok(&first, "put");
    writes.hold_every();
    syncs.hold_every();
    let put = engine.put(b"k", &long).unwrap();
    let cut = engine.flush().unwrap();
    assert!(writes.wait_held(1), "hung: the put's frame written");
    let merge = engine.merge(b"k", b"+").unwrap();
    let cut_merge = engine.flush().unwrap();
    let writes_before = writes.seen();
    writes.release();
    assert!(syncs.wait_held(1), "hung: the put's window synced");
    // The merge's frame written (its merge resolved before) while the put's is not durable.
    assert!(
        writes.wait_seen(writes_before + 1),
        "hung: the merge's frame written"
    );
    assert!(syncs.waiting() > 0);
    syncs.release();
    for t in [&put, &cut, &merge, &cut_merge] {
        wait_ok(t, "write");
    }
    let mut want = long.clone();
    want.push(b'+');
    assert!(
        engine.read_to_vec(b"k").unwrap().unwrap() == want,
        "the merge did not land on the value put before it"
    );
    engine.close().unwrap();
}

/// The pwrite path's frame buffer grows to the largest frame written, not past it: a frame of
/// 9 MiB and then one of 10 MiB leave a buffer of about 10 MiB (growing by doubling would
/// leave 18 MiB, more than a window of `batch_bytes_max` ever needs).
#[test]
fn the_frame_buffer_grows_to_the_largest_frame_only() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    wait_ok(&engine.put(b"warm", b"up").unwrap(), "warm-up");
    let (nine, ten) = (value(9 * MIB, 1), value(10 * MIB, 2));
    let c = measure(10 * MIB, Some(&engine), || {
        wait_ok(&engine.put(b"k", &nine).unwrap(), "put");
        wait_ok(&engine.put(b"k", &ten).unwrap(), "put");
    });
    report("frame buffer after frames of 9 and 10 MiB", &[c]);
    assert!(
        c.kept <= (c.len + SMALL) as isize,
        "after frames of 9 and 10 MiB the engine kept {} bytes: more than the larger frame",
        c.kept
    );
    engine.close().unwrap();
}

/// The index's heap bytes per live key, rebuilt by an open (ARCHITECTURE.md, "Memory"): a
/// 48-byte slot per key (a key of up to 22 bytes inline, a longer one a pointer into the
/// log: nothing allocated per key either way) in a table of power-of-two buckets at most
/// 7/8 full, with a control byte per bucket, so 56 to 112 bytes per key, the most just
/// after the table doubled. The count here is the worst: one past 7/8 of 2^17 buckets, so
/// the table has 2^18. Measured as the live bytes an open of the log keeps beyond an open of
/// an empty log with the same configuration. (The scratch measure of the thirty-eighth
/// session: 102.8 bytes per key at 1 M and at 4 M keys, 16- and 64-byte keys alike.)
#[test]
fn the_index_holds_a_live_key_in_at_most_112_bytes() {
    let _serial = serial();
    let keys = (1usize << 17) / 8 * 7 + 1;
    let cfg = Config {
        ring_bytes: 4 << 20,
        ..Config::default()
    };
    let opened = |dir: &std::path::Path| {
        let before = counting::live();
        let engine = Engine::open(dir, cfg.clone()).unwrap();
        let kept = counting::live() as isize - before as isize;
        let len = engine.len();
        engine.close().unwrap();
        (kept, len)
    };
    let empty = tempfile::tempdir().unwrap();
    drop(Engine::open(empty.path(), cfg.clone()).unwrap());
    for key_len in [16usize, 64] {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
            for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
                let mut batch = WriteBatch::new();
                for &i in chunk {
                    let mut key = vec![b'k'; key_len];
                    key[key_len - 8..].copy_from_slice(&(i as u64).to_be_bytes());
                    batch.put(&key, &[1]);
                }
                wait_ok(&engine.write(&batch).unwrap(), "batch");
            }
            engine.close().unwrap();
        }
        let (base, _) = opened(empty.path());
        let (kept, len) = opened(dir.path());
        assert_eq!(len, keys);
        let per_key = (kept - base) as f64 / keys as f64;
        eprintln!("index of {keys} keys of {key_len} bytes: {per_key:.1} bytes per key");
        assert!(
            per_key <= 113.0,
            "the index of {keys} keys of {key_len} bytes takes {per_key:.1} bytes per key, \
             more than its 48-byte slot in a table just doubled (112)"
        );
    }
}
