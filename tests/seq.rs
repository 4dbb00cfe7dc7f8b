//! Every acknowledgement says where it landed: a ticket's `Seq` is the batch that holds its
//! request, checked against the log itself, across threads, windows, batches, flushes,
//! futures and reopens; `durable_seq`, `follow` and `retire_before` speak the same numbers.

mod common;

use common::{block_on, WAIT_MAX};
use mergelog::{Config, Engine, RecordOp, Seq, Ticket, WriteBatch};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One acknowledged write: its place in the order, what it wrote, the batch it reported.
struct Acked {
    pos: u64,
    key: Vec<u8>,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
    seq: Seq,
}

/// Per batch of the log: key → the record's value (`None`: a delete).
fn log_batches(engine: &Engine) -> BTreeMap<Seq, HashMap<Vec<u8>, Option<Vec<u8>>>> {
    let reader = engine.replay().expect("replay");
    reader
        .batches()
        .map(|b| {
            let records = b
                .records()
                .map(|r| {
                    let v = (r.op == RecordOp::Put).then(|| r.value.to_vec());
                    (r.key.to_vec(), v)
                })
                .collect();
            (b.seq(), records)
        })
        .collect()
}

/// Checks every acknowledged write against the log: its batch holds its key, with its value
/// unless a later write of the same key in the same batch replaced it (a window keeps only
/// the last write per key); batches never go backwards along the order.
fn check_against_log(engine: &Engine, mut acked: Vec<Acked>) {
    let batches = log_batches(engine);
    acked.sort_by_key(|a| a.pos);
    for w in acked.windows(2) {
        assert!(
            w[0].seq <= w[1].seq,
            "position {} got batch {} but the later position {} got batch {}",
            w[0].pos,
            w[0].seq,
            w[1].pos,
            w[1].seq
        );
    }
    // The last acknowledged write per (batch, key): the one the batch must hold.
    let mut last: HashMap<(Seq, &[u8]), &Acked> = HashMap::new();
    for a in &acked {
        last.insert((a.seq, &a.key), a);
    }
    for a in &acked {
        let batch = batches
            .get(&a.seq)
            .unwrap_or_else(|| panic!("batch {} (position {}) is not in the log", a.seq, a.pos));
        let logged = batch.get(&a.key).unwrap_or_else(|| {
            panic!(
                "batch {} does not hold key {:?} written at position {}",
                a.seq,
                String::from_utf8_lossy(&a.key),
                a.pos
            )
        });
        let winner = last[&(a.seq, a.key.as_slice())];
        assert_eq!(
            logged,
            &winner.value,
            "batch {} holds another value for {:?}",
            a.seq,
            String::from_utf8_lossy(&a.key)
        );
    }
    let newest = acked.iter().map(|a| a.seq).max().unwrap_or_default();
    assert!(
        engine.durable_seq() >= newest,
        "durable_seq {} is behind an acknowledged batch {newest}",
        engine.durable_seq()
    );
}

fn config() -> Config {
    Config {
        segment_bytes: 1 << 20,
        batch_bytes_max: 16 << 10,
        ..Config::default()
    }
}

#[test]
fn every_ticket_names_the_batch_that_holds_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), config()).unwrap());
    let acked: Vec<Acked> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u32)
            .map(|w| {
                let engine = engine.clone();
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut pending: Vec<(Ticket, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                    for i in 0..3_000u32 {
                        // Few keys, shared between writers: windows coalesce.
                        let key = format!("k{}", (i * 7 + w) % 97).into_bytes();
                        let (t, value) = if i % 11 == 0 {
                            (engine.delete(&key).unwrap(), None)
                        } else {
                            let v = format!("w{w}-{i}").into_bytes();
                            (engine.put(&key, &v).unwrap(), Some(v))
                        };
                        pending.push((t, key, value));
                        // Up to 32 outstanding, so windows hold many requests.
                        if pending.len() == 32 || i == 2_999 {
                            acked.extend(pending.drain(..).map(|(t, key, value)| Acked {
                                seq: t.wait_timeout(WAIT_MAX).unwrap(),
                                pos: t.position(),
                                key,
                                value,
                            }));
                        }
                    }
                    acked
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let batches: std::collections::HashSet<Seq> = acked.iter().map(|a| a.seq).collect();
    assert!(batches.len() > 1, "the run made one batch: nothing tested");
    check_against_log(&engine, acked);
}

#[test]
fn a_batch_a_flush_and_a_future_report_their_batch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let first = engine.put(b"a", b"1").unwrap().wait().unwrap();
    assert_eq!(first, Seq::new(1), "the first batch of a new log");
    assert_eq!(engine.durable_seq(), first);

    let mut batch = WriteBatch::new();
    batch.put(b"b", b"2").put(b"c", b"3").delete(b"a");
    let t = engine.write(&batch).unwrap();
    let seq = t.wait().unwrap();
    assert!(seq > first);
    let logged = log_batches(&engine);
    let held = &logged[&seq];
    assert_eq!(held.len(), 3, "the whole WriteBatch is in batch {seq}");
    assert_eq!(held[b"a".as_slice()], None);

    // A flush with nothing new to write reports the last batch written, durable.
    let flushed = engine.flush().unwrap().wait().unwrap();
    assert_eq!(flushed, seq);
    assert_eq!(engine.durable_seq(), seq);

    // The future gives what `wait` gives.
    let t = engine.put(b"d", b"4").unwrap();
    let pos = t.position();
    let via_future = block_on(t).unwrap();
    let via_wait = engine.put(b"e", b"5").unwrap().wait().unwrap();
    assert!(via_future > seq && via_wait >= via_future);
    check_against_log(
        &engine,
        vec![Acked {
            pos,
            key: b"d".to_vec(),
            value: Some(b"4".to_vec()),
            seq: via_future,
        }],
    );
    // Asked again, a ticket answers the same.
    let t = engine.put(b"f", b"6").unwrap();
    let once = t.wait().unwrap();
    assert_eq!(t.wait().unwrap(), once);
    assert_eq!(t.try_result().unwrap().unwrap(), once);
}

#[test]
fn sequence_numbers_go_on_across_reopens_and_follow_and_retire_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        segment_bytes: 64 << 10,
        ..config()
    };
    let mut last = Seq::default();
    let mut checkpoints = Vec::new();
    for round in 0..3u32 {
        let engine = Engine::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(
            engine.durable_seq(),
            last,
            "round {round}: reopened at the last batch"
        );
        // An idle flush right after open names the last batch, not a new one.
        assert_eq!(engine.flush().unwrap().wait().unwrap(), last);
        for i in 0..300u32 {
            let key = format!("r{round}-{i}");
            let seq = engine
                .put(key.as_bytes(), &[7; 200])
                .unwrap()
                .wait()
                .unwrap();
            assert!(seq > last, "round {round}: batch {seq} after {last}");
            last = seq;
        }
        checkpoints.push(last);
        engine.close().unwrap();
    }
    let engine = Engine::open(dir.path(), cfg).unwrap();
    // Following from a checkpoint's next batch yields exactly the batches after it.
    let from = checkpoints[1].next();
    let mut follower = engine.follow(from);
    let b = follower.next().unwrap().unwrap();
    assert_eq!(b.seq, from);
    assert!(b.records.iter().any(|r| r.key.starts_with(b"r2-")));
    // Retiring before a checkpoint keeps every batch after it.
    let retired = engine.retire_before(checkpoints[1]).unwrap();
    assert!(
        retired.segments > 0,
        "nothing retired: the test's segments are too big"
    );
    assert!(retired.first_seq <= checkpoints[1]);
    let reader = engine.replay().unwrap();
    assert!(reader.batches().any(|b| b.seq() == checkpoints[2]));
}
