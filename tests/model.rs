//! Model-based tests: random sequences of puts, deletes, windowed gets, write batches,
//! flushes and reopens, under random window limits, against a sequential map.
//!
//! The engine's total order is the ticket position order, so even with several producer
//! threads the model is a plain map: sort every submitted op by position and replay. Every
//! get must answer what the model holds at its place, and the durable state (through `read`,
//! `read_to_vec`, `for_each`, after reopen, and by decoding the segment files) must equal the
//! model. The counters must add up against the frames each engine instance wrote.
//!
//! Some writes carry a request id from a small id space, so that ids are resubmitted within a
//! window, across windows and across reopens: the model applies the first submission of an
//! id (in position order) and ignores the others, whose tickets must report a duplicate of
//! the first one's batch.
//!
//! Merges (`Engine::merge`, `WriteBatch::merge`) run with an operator drawn per case (add,
//! max, append with a bound, a custom one): the model applies each merge onto its value at
//! the merge's place, and refuses it (and the whole batch holding it) where the operator
//! refuses that value (an add onto a value that is not 8 bytes): its ticket must report
//! `Error::MergeRefused`, and nothing of it may reach the state. Merges carry request ids
//! too: a refused one gives its id back, so a later submission of the id is applied (one in
//! the same window as the refusal gets the same refusal: the sequential property flushes after
//! a refusal it foresees, the concurrent one accepts that refusal for a given-back id).
//!
//! Compactions (`Engine::compact`) run among the requests, from the producers' threads too:
//! they copy the live records of the complete segments and retire them, which must change no
//! value a get, a read, a merge or a replay sees.
//!
//! `PROPTEST_CASES` sets the number of cases of each property.

mod common;

use common::log::{next_batch_seq, read_log, replay, segment_files};
use common::{engine_state, State, WAIT_MAX};
use mergelog::{
    AutoCompaction, Compaction, Config, Durability, Engine, Error, GetTicket, IdTicket,
    MergeOperator, Outcome, RequestId, Seq, Stats, Ticket, WindowPolicy, WriteBatch, WritePath,
};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A small key space, so that a window often holds several ops of one key. It includes the
/// empty key, keys that are prefixes of others, and keys sharing their first 8 bytes (the
/// coalescer sorts by an 8-byte prefix first).
const KEYS: &[&[u8]] = &[
    b"",
    b"\0",
    b"a",
    b"ab",
    b"abcdefgh",
    b"abcdefgh\0",
    b"abcdefghA",
    b"abcdefghAB",
    b"abcdefgi",
    b"abcdefghAB-a-much-longer-key-sharing-the-first-ten-bytes",
    // The index keeps keys of up to 22 bytes inline and points at longer ones.
    b"abcdefghijklmnopqrstuv",
    b"abcdefghijklmnopqrstuvw",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"zz",
];

fn key(k: u8) -> &'static [u8] {
    KEYS[k as usize % KEYS.len()]
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Get(u8),
    /// A merge of an operand (8 bytes, which every operator of these tests takes).
    Merge(u8, Vec<u8>),
    /// `Some(value)` puts (merges its value if the flag is set), `None` deletes.
    Batch(Vec<BatchOp>),
    Flush,
    Reopen,
    /// `Engine::compact`: copies the complete segments' live records forward and retires them.
    Compact,
    /// Puts of large values into every key (`fill`), so that segments complete and
    /// compactions have something to take.
    Fill(u8),
    /// A put, delete, merge or batch submitted with request id `.0`.
    WithId(u8, Box<Op>),
}

/// The request ids a model case draws from: few, so that they repeat.
const IDS: u8 = 12;

fn request_id(i: u8) -> RequestId {
    RequestId::from(0xfeed_0000 + u128::from(i))
}

/// What the model knows of request ids: the batch each was logged in, once its first
/// submission completed (`None` before).
type IdModel = HashMap<u8, Option<Seq>>;

fn key_index() -> impl Strategy<Value = u8> {
    0..KEYS.len() as u8
}

/// Mostly short values (the empty one included), sometimes large ones (up to `large`
/// bytes) so that small segments fill and roll.
fn value(large: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..24),
        // A counter's size: merges of the counter operators apply to these.
        1 => proptest::collection::vec(any::<u8>(), 8),
        1 => (large / 4..large, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// A request must fit in the smallest `batch_bytes_max` (4096), whatever its encoding
/// overhead: a put's value stays below 3 KiB, a batch's five values below 512 bytes each.
const PUT_VALUE_MAX: usize = 3 << 10;
const BATCH_VALUE_MAX: usize = 512;

/// One operation of a write batch: key, `Some(value)` to put (or, if the flag is set, to
/// merge: an 8-byte operand) or `None` to delete.
type BatchOp = (u8, Option<Vec<u8>>, bool);

fn batch() -> impl Strategy<Value = Vec<BatchOp>> {
    let op = prop_oneof![
        3 => (key_index(), proptest::option::weighted(0.75, value(BATCH_VALUE_MAX)))
            .prop_map(|(k, v)| (k, v, false)),
        1 => (key_index(), operand()).prop_map(|(k, o)| (k, Some(o), true)),
    ];
    proptest::collection::vec(op, 1..=5)
}

/// A merge operand: 8 bytes (a counter for add, max and min; bytes for the others).
fn operand() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Small counts, so that sums stay readable in a failure.
        3 => (-3i64..=3).prop_map(|n| n.to_le_bytes().to_vec()),
        1 => any::<i64>().prop_map(|n| n.to_le_bytes().to_vec()),
    ]
}

/// The custom operator of these tests: each operand appended after a `|`, the last 20 bytes
/// kept (applying operands one at a time gives what one call gives).
fn custom(existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
    let mut v = existing.unwrap_or_default().to_vec();
    for o in operands {
        v.push(b'|');
        v.extend_from_slice(o);
    }
    v[v.len().saturating_sub(20)..].to_vec()
}

fn operator() -> impl Strategy<Value = MergeOperator> {
    prop_oneof![
        3 => Just(MergeOperator::Add),
        1 => Just(MergeOperator::Max),
        1 => Just(MergeOperator::Min),
        1 => (1usize..40).prop_map(|max_len| MergeOperator::Append { max_len }),
        1 => Just(MergeOperator::custom(custom)),
    ]
}

/// The model's operator, written out: the value after merging `operand` onto `existing`, or
/// `None` if the operator refuses it.
fn model_merge(op: &MergeOperator, existing: Option<&[u8]>, operand: &[u8]) -> Option<Vec<u8>> {
    let x = i64::from_le_bytes(operand.try_into().unwrap());
    let counter = |f: fn(i64, i64) -> i64| -> Option<Vec<u8>> {
        let v = match existing {
            None => x,
            Some(e) => f(i64::from_le_bytes(e.try_into().ok()?), x),
        };
        Some(v.to_le_bytes().to_vec())
    };
    match op {
        MergeOperator::Add => counter(i64::wrapping_add),
        MergeOperator::Max => counter(i64::max),
        MergeOperator::Min => counter(i64::min),
        MergeOperator::Append { max_len } => {
            let mut v = existing.unwrap_or_default().to_vec();
            v.extend_from_slice(operand);
            Some(v[v.len().saturating_sub(*max_len)..].to_vec())
        }
        MergeOperator::Custom(_) => Some(custom(existing, &[operand])),
        _ => unreachable!("no other operator in these tests"),
    }
}

/// The puts `op` stands for if it is a `Fill` (two rounds over the keys, of values just under
/// `PUT_VALUE_MAX`, about 80 KiB), else `op` itself.
fn expand(op: &Op) -> Vec<Op> {
    match op {
        Op::Fill(seed) => (0..2 * KEYS.len())
            .map(|i| {
                let byte = seed.wrapping_add(i as u8);
                Op::Put((i % KEYS.len()) as u8, vec![byte; PUT_VALUE_MAX - 64])
            })
            .collect(),
        op => vec![op.clone()],
    }
}

/// Ops one producer can submit; `Reopen` only in the sequential property.
fn write_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key_index(), value(PUT_VALUE_MAX)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key_index().prop_map(Op::Delete),
        3 => batch().prop_map(Op::Batch),
        // A refused merge gives its id back: a later submission of the id is applied.
        3 => (key_index(), operand()).prop_map(|(k, o)| Op::Merge(k, o)),
    ]
}

fn op(with_reopen: bool) -> impl Strategy<Value = Op> {
    let reopen_weight = if with_reopen { 1 } else { 0 };
    prop_oneof![
        8 => (key_index(), value(PUT_VALUE_MAX)).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key_index().prop_map(Op::Delete),
        5 => key_index().prop_map(Op::Get),
        3 => batch().prop_map(Op::Batch),
        5 => (key_index(), operand()).prop_map(|(k, o)| Op::Merge(k, o)),
        4 => (0..IDS, write_op()).prop_map(|(i, op)| Op::WithId(i, Box::new(op))),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => any::<u8>().prop_map(Op::Fill),
        reopen_weight => Just(Op::Reopen),
    ]
}

/// Small, random window limits so that windows are cut by every rule and segments roll.
fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(64usize << 10), Just(128 << 10), Just(1 << 20)],
        prop_oneof![3 => Just(64u64 << 10), 1 => Just(128 << 10), 1 => Just(256 << 10)],
        4096usize..=16384,
        prop_oneof![1usize..=4, 5usize..=64],
        50u64..=2000,
        (0u8..3, 0.0f64..=1.0),
        any::<bool>(),
        any::<bool>(),
        // Sync costs milliseconds per batch on a shared disk: a quarter of the cases; with
        // one to three syncers (several syncs in flight: whenever a syncer is free, or only
        // while the syncs take longer than 100 µs on average).
        (
            proptest::bool::weighted(0.25),
            1usize..=3,
            prop_oneof![Just(0u64), Just(100)],
        ),
        (operator(), proptest::bool::weighted(0.3)),
    )
        .prop_map(
            |(
                ring,
                segment,
                bytes,
                ops,
                age_us,
                (policy, frac),
                coalesce,
                mmap,
                (sync, syncers, overlap_us),
                (merge, auto),
            )| {
                let age = Duration::from_micros(age_us);
                let within = age.mul_f64(frac);
                Config {
                    ring_bytes: ring,
                    segment_bytes: segment,
                    batch_bytes_max: bytes,
                    batch_ops_max: ops,
                    window_age_max: age,
                    window: match policy {
                        0 => WindowPolicy::Immediate,
                        1 => WindowPolicy::Linger(within),
                        _ => WindowPolicy::Adaptive { quiet: within },
                    },
                    coalesce,
                    write_path: if mmap {
                        WritePath::Mmap
                    } else {
                        WritePath::Pwrite
                    },
                    durability: if sync {
                        Durability::Sync
                    } else {
                        Durability::NoSync
                    },
                    syncers,
                    overlap_syncs_above: Duration::from_micros(overlap_us),
                    merge: Some(merge),
                    // Automatic compaction keeps a bit per live record for its scans (the
                    // `Compact` ops then run beside its thread).
                    compaction: if auto {
                        Compaction::Auto(AutoCompaction {
                            check_every: Duration::from_millis(5),
                            ..AutoCompaction::default()
                        })
                    } else {
                        Compaction::OnDemand
                    },
                    ..Config::default()
                }
            },
        )
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// What the model made of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Applied,
    /// A duplicate of a request id the model has seen: nothing happens.
    Duplicate,
    /// The merge operator refuses a merge of it: nothing happens.
    Refused,
}

/// Applies `op` to the model, merging with `merger`.
fn apply(model: &mut State, ids: &mut IdModel, op: &Op, merger: &MergeOperator) -> Step {
    match op {
        Op::WithId(i, inner) => {
            if ids.contains_key(i) {
                return Step::Duplicate;
            }
            ids.insert(*i, None);
            let step = apply(model, ids, inner, merger);
            if step == Step::Refused {
                // Given back: nothing of the request is logged.
                ids.remove(i);
            }
            return step;
        }
        Op::Put(k, v) => {
            model.insert(key(*k).to_vec(), v.clone());
        }
        Op::Delete(k) => {
            model.remove(key(*k));
        }
        Op::Merge(k, o) => match model_merge(merger, model.get(key(*k)).map(|v| &v[..]), o) {
            Some(v) => {
                model.insert(key(*k).to_vec(), v);
            }
            None => return Step::Refused,
        },
        Op::Batch(ops) => {
            // All or nothing: onto a copy, kept only if no merge is refused.
            let mut after = model.clone();
            for (k, v, merge) in ops {
                let k = key(*k);
                match (v, merge) {
                    (Some(o), true) => match model_merge(merger, after.get(k).map(|v| &v[..]), o) {
                        Some(v) => after.insert(k.to_vec(), v),
                        None => return Step::Refused,
                    },
                    (Some(v), false) => after.insert(k.to_vec(), v.clone()),
                    (None, _) => after.remove(k),
                };
            }
            *model = after;
        }
        Op::Get(_) | Op::Flush | Op::Reopen | Op::Compact => {}
        Op::Fill(_) => unreachable!("expanded into puts"),
    }
    Step::Applied
}

/// Checks a write's ticket against what the model made of it.
/// About half the writes are waited for without a deadline, which lets the waiter write its
/// own window when nothing is in flight (`Ticket::wait`): the model checks that path too.
fn check_write(t: &Ticket, step: Step) {
    let got = if (t.position() / 8).is_multiple_of(2) {
        t.wait()
    } else {
        t.wait_timeout(WAIT_MAX)
    };
    match step {
        Step::Refused => assert!(
            matches!(got, Err(Error::MergeRefused { .. })),
            "a merge the model refuses: {got:?}"
        ),
        _ => assert_eq!(got.map(|_| ()).map_err(|e| e.to_string()), Ok(())),
    }
    assert!(t.is_done());
}

/// Checks an idempotent request's outcome against the model: `first` if it was the first
/// submission of its id (then its batch is recorded), else a duplicate of that batch; a
/// refusal if the model refused it (`step`).
fn check_outcome(ids: &mut IdModel, i: u8, (first, step): (bool, Step), t: &IdTicket) {
    let outcome = t.wait_timeout(WAIT_MAX);
    if step == Step::Refused {
        assert!(
            matches!(outcome, Err(Error::MergeRefused { .. })),
            "id {i}: a request the model refuses: {outcome:?}"
        );
        return;
    }
    let outcome = outcome.expect("an idempotent request completes");
    match (first, outcome) {
        (true, Outcome::Written(seq)) => {
            assert_eq!(ids.insert(i, Some(seq)), Some(None), "id {i} logged twice");
        }
        (false, Outcome::Duplicate { seq }) => {
            assert_eq!(
                ids[&i],
                Some(seq),
                "id {i}: a duplicate names the original's batch"
            );
        }
        (first, o) => panic!("id {i}: first submission {first}, outcome {o:?}"),
    }
}

fn write_batch(ops: &[BatchOp]) -> WriteBatch {
    let mut b = WriteBatch::new();
    for (k, v, merge) in ops {
        match (v, merge) {
            (Some(o), true) => b.merge(key(*k), o),
            (Some(v), false) => b.put(key(*k), v),
            (None, _) => b.delete(key(*k)),
        };
    }
    b
}

/// What one submitted op left to check later.
enum Pending {
    /// A write, and what the model made of it (known at submit in one producer).
    Write(Ticket, Step),
    Get(GetTicket, Option<Vec<u8>>, u8),
    /// An idempotent write: its id, whether it was the id's first submission and what the
    /// model made of it (known at submit in one producer; in several, from the position
    /// order).
    IdWrite(IdTicket, u8, bool, Step),
}

/// Requests one engine instance took, to hold its counters against.
#[derive(Default)]
struct Submitted {
    writes: u64,
    reads: u64,
    duplicates: u64,
    merges: u64,
    refused: u64,
    /// Operations of refused requests (submitted, but not counted as writes).
    refused_ops: u64,
    /// Requests refused either for themselves or as the duplicate of a refused request with
    /// the same id in their window (which the counters tell apart, and the model cannot):
    /// counted in neither.
    ambiguous: u64,
}

impl Submitted {
    /// Counts `op`, as `step` says the model took it (a duplicate's writes are not taken
    /// into its window; a refused request's are taken out of it).
    fn count(&mut self, op: &Op, step: Step) {
        if let (Op::WithId(_, inner), false) = (op, step == Step::Duplicate) {
            return self.count(inner, step);
        }
        let merges = match op {
            Op::Merge(..) => 1,
            Op::Batch(ops) => ops.iter().filter(|o| o.2).count() as u64,
            _ => 0,
        };
        match op {
            _ if step == Step::Duplicate => self.duplicates += 1,
            _ if step == Step::Refused => {
                self.refused += 1;
                self.merges += merges;
                self.refused_ops += match op {
                    Op::Batch(ops) => ops.len() as u64,
                    _ => 1,
                };
            }
            Op::Put(..) | Op::Delete(_) => self.writes += 1,
            Op::Merge(..) => {
                self.writes += 1;
                self.merges += 1;
            }
            Op::Batch(ops) => {
                self.writes += ops.len() as u64;
                self.merges += merges;
            }
            Op::Get(_) => self.reads += 1,
            Op::WithId(_, inner) => self.count(inner, step),
            Op::Flush | Op::Reopen | Op::Compact => {}
            Op::Fill(_) => unreachable!("expanded into puts"),
        }
    }
}

/// Submits one put, delete, merge, get or batch; returns its position and what to check
/// later. `first`: whether an idempotent write is its id's first submission (as far as
/// known); `step`: what the model makes of a write (as far as known).
fn submit(
    engine: &Engine,
    op: &Op,
    model_before: &State,
    (first, step): (bool, Step),
) -> (u64, Pending) {
    match op {
        Op::WithId(i, inner) => {
            let id = request_id(*i);
            let t = match &**inner {
                Op::Put(k, v) => engine.put_with_id(id, key(*k), v),
                Op::Delete(k) => engine.delete_with_id(id, key(*k)),
                Op::Merge(k, o) => engine.merge_with_id(id, key(*k), o),
                Op::Batch(ops) => engine.write_with_id(id, &write_batch(ops)),
                other => unreachable!("only writes carry ids: {other:?}"),
            }
            .expect("idempotent write");
            (t.position(), Pending::IdWrite(t, *i, first, step))
        }
        Op::Put(k, v) => {
            let t = engine.put(key(*k), v).expect("put");
            (t.position(), Pending::Write(t, step))
        }
        Op::Delete(k) => {
            let t = engine.delete(key(*k)).expect("delete");
            (t.position(), Pending::Write(t, step))
        }
        Op::Merge(k, o) => {
            let t = engine.merge(key(*k), o).expect("merge");
            (t.position(), Pending::Write(t, step))
        }
        Op::Batch(ops) => {
            let t = engine.write(&write_batch(ops)).expect("write");
            (t.position(), Pending::Write(t, step))
        }
        Op::Get(k) => {
            let t = engine.get(key(*k)).expect("get");
            let expected = model_before.get(key(*k)).cloned();
            (t.position(), Pending::Get(t, expected, *k))
        }
        Op::Flush | Op::Reopen | Op::Compact | Op::Fill(_) => unreachable!("not a request"),
    }
}

/// Waits every pending ticket: writes complete `Ok`, gets answer what the model expected,
/// idempotent writes report what the model says.
fn settle(pending: &mut Vec<Pending>, ids: &mut IdModel) {
    for p in pending.drain(..) {
        match p {
            Pending::IdWrite(t, i, first, step) => check_outcome(ids, i, (first, step), &t),
            Pending::Write(t, step) => check_write(&t, step),
            Pending::Get(t, expected, k) => {
                let got = t.wait_timeout(WAIT_MAX).expect("get completes");
                assert_eq!(got, expected, "get of key {:?}", key(k));
            }
        }
    }
}

/// The durable state seen through every read path equals the model.
fn check_state(engine: &Engine, model: &State) {
    for k in KEYS {
        let expected = model.get(*k);
        assert_eq!(
            engine.read_to_vec(k).expect("read_to_vec").as_ref(),
            expected,
            "read_to_vec of {k:?}"
        );
        let r = engine.read(k).expect("read");
        assert_eq!(r.as_deref(), expected.map(|v| &v[..]), "read of {k:?}");
    }
    assert_eq!(&engine_state(engine), model, "for_each");
}

/// After an engine instance closed: the log it leaves replays to the model, its frames
/// respect the window limits, and its counters add up against the frames it wrote (those
/// from `first_seq` on).
fn check_log(dir: &Path, config: &Config, first_seq: u64, stats: &Stats, sub: &Submitted) {
    let frames = read_log(dir, Some(config.segment_bytes));
    // The windows' frames (compaction batches copy records and acknowledge nothing).
    let ours: Vec<_> = frames
        .iter()
        .filter(|f| f.batch_seq >= first_seq && !f.is_compaction())
        .collect();
    let records: u64 = ours.iter().map(|f| f.records.len() as u64).sum();
    let acknowledged: u64 = ours.iter().map(|f| u64::from(f.ops_acknowledged)).sum();
    for f in frames.iter().filter(|f| f.is_compaction()) {
        assert!(f.is_sorted(), "compaction batch {} unsorted", f.batch_seq);
        assert_eq!(f.ops_acknowledged, 0, "compaction batch {}", f.batch_seq);
        assert!(
            f.records.iter().all(|r| r.put),
            "compaction batch {}",
            f.batch_seq
        );
    }
    for f in &ours {
        assert_eq!(
            f.is_sorted(),
            config.coalesce,
            "frame {}: FLAG_SORTED iff coalescing",
            f.batch_seq
        );
        // A record takes no more frame bytes than ring bytes, but a merge's result may be
        // longer than its operand: these operators' results are at most 40 bytes (`Append`'s
        // `max_len` below 40, `custom` keeping 20), their operands 8.
        let bound = config.batch_bytes_max + 32 * f.records.len();
        assert!(
            f.body_len <= bound,
            "frame {} body {} exceeds {bound} (batch_bytes_max {})",
            f.batch_seq,
            f.body_len,
            config.batch_bytes_max
        );
        // A window stops taking requests at batch_ops_max; its last request may be a
        // batch of up to 5 ops.
        assert!(
            f.ops_acknowledged as usize <= config.batch_ops_max + 4,
            "frame {} acknowledges {} writes, batch_ops_max {}",
            f.batch_seq,
            f.ops_acknowledged,
            config.batch_ops_max
        );
        if !config.coalesce {
            assert_eq!(f.ops_acknowledged as usize, f.records.len());
        }
    }
    // What the windows wrote (compaction's batches are counted apart too).
    let c = &stats.compaction;
    let (window_records, window_batches) =
        (stats.records_written - c.records, stats.batches - c.batches);
    // A compaction may have retired frames this instance wrote.
    if c.segments_retired == 0 {
        assert_eq!(window_records, records, "records_written vs the log");
        assert_eq!(window_batches, ours.len() as u64, "batches vs frames");
        assert_eq!(acknowledged, stats.writes, "ops_acknowledged vs writes");
    }
    assert_eq!(stats.writes, sub.writes, "writes vs submitted writes");
    assert_eq!(stats.reads, sub.reads, "reads vs submitted gets");
    if sub.ambiguous == 0 {
        assert_eq!(
            stats.duplicates, sub.duplicates,
            "duplicates vs resubmitted ids"
        );
        assert_eq!(stats.merges, sub.merges, "merges vs submitted merges");
        assert_eq!(stats.merges_refused, sub.refused, "refusals vs the model's");
        assert_eq!(
            stats.submitted,
            stats.writes + stats.reads + sub.refused_ops,
            "submitted"
        );
    }
    if config.coalesce {
        assert_eq!(
            stats.writes,
            window_records + stats.coalesced_writes,
            "writes = records + coalesced"
        );
    } else {
        assert_eq!(
            stats.coalesced_writes, 0,
            "coalesced_writes without coalescing"
        );
        assert_eq!(
            stats.collapsed_reads, 0,
            "collapsed_reads without coalescing"
        );
        assert_eq!(stats.writes, window_records);
    }
    assert!(stats.collapsed_reads <= stats.reads);
    match config.durability {
        // The syncer may cover several frames with one sync, never a frame with none.
        Durability::Sync => assert!(
            stats.syncs <= stats.batches && (stats.syncs > 0) == (stats.batches > 0),
            "{} syncs for {} batches",
            stats.syncs,
            stats.batches
        ),
        Durability::NoSync => assert_eq!(stats.syncs, 0, "no syncs in NoSync"),
    }
    assert_eq!(stats.backlog_bytes, 0, "backlog after close");
}

/// Closes `engine`, checks its log and counters, reopens and checks the replayed state.
fn reopen(
    engine: Engine,
    dir: &Path,
    config: &Config,
    first_seq: &mut u64,
    sub: &mut Submitted,
    model: &State,
) -> Engine {
    engine.close().expect("close");
    let stats = engine.stats();
    drop(engine);
    check_log(dir, config, *first_seq, &stats, sub);
    assert_eq!(&replay(&read_log(dir, None)), model, "log replay");
    *first_seq = next_batch_seq(dir);
    *sub = Submitted::default();
    let engine = Engine::open(dir, config.clone()).expect("reopen");
    check_state(&engine, model);
    engine
}

fn run_sequential(config: Config, ops: Vec<Op>) {
    let merger = &config.merge.clone().expect("every case has an operator");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut model = State::new();
    let mut first_seq = next_batch_seq(&dir);
    let mut sub = Submitted::default();
    let mut engine = Engine::open(&dir, config.clone()).expect("open");
    let mut pending = Vec::new();
    let mut ids = IdModel::new();
    let mut last_pos = 0;
    for op in ops.iter().flat_map(expand) {
        let op = &op;
        match op {
            Op::Flush => {
                let t = engine.flush().expect("flush");
                assert!(
                    t.position() >= last_pos,
                    "flush ticket before earlier requests"
                );
                assert_eq!(
                    t.wait_timeout(WAIT_MAX)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Ok(())
                );
                // Everything submitted before the flush is durable and readable now.
                for p in &pending {
                    match p {
                        Pending::Write(t, _) => assert!(t.is_done(), "write not done after flush"),
                        Pending::Get(t, ..) => assert!(t.is_done(), "get not done after flush"),
                        Pending::IdWrite(t, ..) => assert!(t.is_done(), "not done after flush"),
                    }
                }
                check_state(&engine, &model);
                settle(&mut pending, &mut ids);
            }
            Op::Reopen => {
                settle(&mut pending, &mut ids);
                engine = reopen(engine, &dir, &config, &mut first_seq, &mut sub, &model);
                // Positions are places in one engine instance's ring.
                last_pos = 0;
            }
            Op::Compact => {
                // With requests in flight: only complete segments are taken.
                engine.compact().expect("compact");
            }
            _ => {
                let first = match op {
                    Op::WithId(i, _) => !ids.contains_key(i),
                    _ => true,
                };
                let before = model.clone();
                let step = apply(&mut model, &mut ids, op, merger);
                let (pos, p) = submit(&engine, op, &before, (first, step));
                assert!(
                    pos > last_pos,
                    "positions must increase in submission order"
                );
                last_pos = pos;
                pending.push(p);
                sub.count(op, step);
                if matches!(op, Op::WithId(..)) && step == Step::Refused {
                    // A later submission of the id in the refused request's window would get
                    // its refusal: the window ends here.
                    let t = engine.flush().expect("flush");
                    t.wait_timeout(WAIT_MAX).expect("flush");
                }
            }
        }
    }
    settle(&mut pending, &mut ids);
    check_state(&engine, &model);
    let _ = reopen(engine, &dir, &config, &mut first_seq, &mut sub, &model);
}

/// One op as the engine ordered it.
struct Placed {
    pos: u64,
    op: Op,
    get: Option<GetTicket>,
    write: Option<Ticket>,
    id_write: Option<IdTicket>,
}

fn run_concurrent(config: Config, threads: Vec<Vec<Op>>) {
    let merger = &config.merge.clone().expect("every case has an operator");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let engine = Engine::open(&dir, config.clone()).expect("open");
    let empty = State::new();
    let mut placed: Vec<Placed> = std::thread::scope(|s| {
        let handles: Vec<_> = threads
            .iter()
            .map(|ops| {
                let engine = &engine;
                let empty = &empty;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut last_pos = 0;
                    for op in ops.iter().flat_map(expand) {
                        let op = &op;
                        if let Op::Flush = op {
                            let t = engine.flush().expect("flush");
                            assert!(t.position() >= last_pos);
                            continue;
                        }
                        if let Op::Compact = op {
                            engine.compact().expect("compact");
                            continue;
                        }
                        // The expected get answer is filled in by the replay below.
                        // What the model makes of it is found by the replay below.
                        let (pos, p) = submit(engine, op, empty, (true, Step::Applied));
                        assert!(pos > last_pos, "positions increase per producer");
                        last_pos = pos;
                        let (get, write, id_write) = match p {
                            Pending::Get(t, ..) => (Some(t), None, None),
                            Pending::Write(t, _) => (None, Some(t), None),
                            Pending::IdWrite(t, ..) => (None, None, Some(t)),
                        };
                        mine.push(Placed {
                            pos,
                            op: op.clone(),
                            get,
                            write,
                            id_write,
                        });
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("producer thread"))
            .collect()
    });
    placed.sort_by_key(|p| p.pos);
    for pair in placed.windows(2) {
        assert!(
            pair[0].pos < pair[1].pos,
            "two requests share position {}",
            pair[0].pos
        );
    }
    let mut model = State::new();
    let mut sub = Submitted::default();
    let mut ids = IdModel::new();
    // Ids a refusal gave back: a later submission of one in the refused request's window
    // gets that refusal (taken for a duplicate, nothing applied), one in a later window is
    // applied. Which window it was in is not known here, so either is accepted.
    let mut given_back = std::collections::HashSet::new();
    for p in &placed {
        if let (Some(t), Op::Get(k)) = (&p.get, &p.op) {
            let got = t.wait_timeout(WAIT_MAX).expect("get completes");
            assert_eq!(
                got.as_ref(),
                model.get(key(*k)),
                "get of {:?} at position {}",
                key(*k),
                p.pos
            );
        }
        if let (Some(t), Op::WithId(i, _)) = (&p.id_write, &p.op) {
            if given_back.contains(i)
                && !ids.contains_key(i)
                && matches!(t.wait_timeout(WAIT_MAX), Err(Error::MergeRefused { .. }))
            {
                // The refusal of the request that gave the id back, in the same window (taken
                // for its duplicate), unless the operator refuses this one too: then it may
                // be its own, in a later window, and the counters may say either.
                let own = apply(&mut model.clone(), &mut ids.clone(), &p.op, merger);
                if own == Step::Refused {
                    sub.ambiguous += 1;
                } else {
                    sub.count(&p.op, Step::Duplicate);
                }
                continue;
            }
        }
        let step = apply(&mut model, &mut ids, &p.op, merger);
        sub.count(&p.op, step);
        if let Some(t) = &p.write {
            check_write(t, step);
        }
        if let (Some(t), Op::WithId(i, _)) = (&p.id_write, &p.op) {
            if step == Step::Refused {
                given_back.insert(*i);
            }
            check_outcome(&mut ids, *i, (step != Step::Duplicate, step), t);
        }
    }
    check_state(&engine, &model);
    let mut first_seq = 1;
    let engine = reopen(engine, &dir, &config, &mut first_seq, &mut sub, &model);
    drop(engine);
}

proptest! {
    #![proptest_config(cases(64))]

    /// One producer: every get answers the model at its place, every write completes, and
    /// the state equals the model after every flush and reopen.
    #[test]
    fn sequential_ops_match_a_map(
        config in config(),
        ops in proptest::collection::vec(op(true), 1..400),
    ) {
        run_sequential(config, ops);
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// Several producers: replaying every op in ticket position order through the model
    /// gives every get's answer and the final state.
    #[test]
    fn concurrent_ops_match_a_map_in_position_order(
        config in config(),
        threads in proptest::collection::vec(
            proptest::collection::vec(op(false), 1..200),
            2..=4,
        ),
    ) {
        run_concurrent(config, threads);
    }
}

/// Writes well past several segments' worth of data with reopens in between, so that the
/// roll to a new segment (and replay across segments) is exercised for certain.
#[test]
fn segments_roll_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let config = Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 8 << 10,
        // Every write reaches the log: no window can shrink the volume below 5 segments.
        coalesce: false,
        durability: Durability::NoSync,
        ..Config::default()
    };
    let mut model = State::new();
    let mut first_seq = 1;
    let mut sub = Submitted::default();
    let mut engine = Engine::open(&dir, config.clone()).expect("open");
    for round in 0..3u8 {
        let mut tickets = Vec::new();
        for i in 0..300u32 {
            let k = (i % 40) as u8;
            let op = if i % 7 == 3 {
                Op::Delete(k)
            } else {
                Op::Put(k, vec![round ^ i as u8; 200 + (i as usize % 300)])
            };
            let (_, p) = submit(&engine, &op, &model, (true, Step::Applied));
            tickets.push(p);
            let step = apply(&mut model, &mut IdModel::new(), &op, &MergeOperator::Add);
            sub.count(&op, step);
        }
        settle(&mut tickets, &mut IdModel::new());
        check_state(&engine, &model);
        engine = reopen(engine, &dir, &config, &mut first_seq, &mut sub, &model);
    }
    let segments = segment_files(&dir).len();
    assert!(
        segments >= 4,
        "expected the log to roll, found {segments} segment(s)"
    );
}
