//! Whole configurations as bad input. Every field of `Config` is drawn at once, from a
//! distribution that favours edges (0, 1, the documented limits and one past them, powers of
//! two and their neighbours, `usize::MAX`, `u64::MAX`, `Duration::ZERO`, `Duration::MAX`),
//! with every combination of the enum fields; ring and segment sizes come from small valid
//! ranges most of the time, so that a case is fast. The property: `Engine::open` either
//! refuses with `Error::InvalidConfig` whose message names a setting (and `Config::validate`
//! agrees), or the engine runs a small workload correctly: puts, deletes, gets, batches,
//! merges (when an operator is set), ids, flushes and compactions, each answered as a model
//! says (a request is refused at submit only for a limit it really exceeds), every ticket
//! completing within a hang guard, `close` succeeding and a reopen reading the same state.
//!
//! With a consumer lag limit, a consumer on a thread of its own commits every batch it reads.
//! Cases: `CONFIG_FUZZ_CASES` (default 512); `CONFIG_FUZZ_TELL=1` prints each case's fate.

mod common;

use common::{engine_state, State};
use mergelog::{
    AutoCompaction, Backpressure, Compaction, Config, ConsumerLag, Durability, Engine, Error,
    GetTicket, IdHorizon, IdTicket, MergeOperator, Outcome, RecoveryMode, Ticket, WindowPolicy,
    WriteBatch, WritePath, SEGMENT_BYTES_MAX, TRACE_EVENTS_MAX,
};
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long one case may take before it is called hung (generous: the machine is shared,
/// and a case may linger up to 10 s per window by configuration). Never a speed check.
const CASE_MAX: Duration = Duration::from_secs(120);

/// Every word an `InvalidConfig` message may name a setting by.
const SETTINGS: &[&str] = &[
    "ring_bytes",
    "segment_bytes",
    "key_len_max",
    "value_len_max",
    "batch_bytes_max",
    "batch_ops_max",
    "window_age_max",
    "window",
    "linger",
    "quiet",
    "coalesce",
    "durability",
    "write_path",
    "syncers",
    "overlap_syncs_above",
    "backpressure",
    "recovery",
    "recycle_segments",
    "reserve_segment",
    "consumer_lag_max",
    "request_ids",
    "merge",
    "compaction",
    "live_ratio",
    "check_every",
    "min_log_bytes",
    "max_log_bytes",
    "trace_events",
    "idle_poll_threads",
];

/// True if `msg` holds `word` as a whole token.
fn names(msg: &str, word: &str) -> bool {
    msg.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|t| t == word)
}

/// Mostly `typical`, sometimes one of `edges`.
fn edgy<T: Clone + std::fmt::Debug + 'static>(
    typical: Vec<T>,
    edges: Vec<T>,
) -> impl Strategy<Value = T> + Clone {
    prop_oneof![
        14 => proptest::sample::select(typical),
        1 => proptest::sample::select(edges),
    ]
}

fn duration() -> impl Strategy<Value = Duration> + Clone {
    edgy(
        vec![
            Duration::from_micros(1),
            Duration::from_micros(20),
            Duration::from_micros(300),
            Duration::from_millis(1),
        ],
        vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_secs(10),
            Duration::from_secs(10) + Duration::from_nanos(1),
            Duration::from_secs(u64::MAX / 2),
            Duration::MAX,
        ],
    )
}

fn window() -> impl Strategy<Value = WindowPolicy> {
    prop_oneof![
        duration().prop_map(|quiet| WindowPolicy::Adaptive { quiet }),
        duration().prop_map(WindowPolicy::Linger),
        Just(WindowPolicy::Immediate),
    ]
}

fn u64_limit() -> impl Strategy<Value = u64> + Clone {
    edgy(
        vec![1, 2, 1000, 1 << 20],
        vec![0, u64::MAX, u64::MAX - 1, 1 << 63],
    )
}

fn consumer_lag() -> impl Strategy<Value = Option<ConsumerLag>> {
    prop_oneof![
        6 => Just(None),
        2 => (
            proptest::option::of(u64_limit()),
            proptest::option::of(u64_limit()),
            proptest::option::of(duration()),
        )
            .prop_map(|(batches, bytes, age)| Some(ConsumerLag { batches, bytes, age })),
    ]
}

fn merge(value_len_max: usize) -> impl Strategy<Value = Option<MergeOperator>> {
    let max_len = edgy(
        vec![1, 8, 100, value_len_max],
        vec![0, value_len_max.saturating_add(1), usize::MAX],
    );
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(MergeOperator::Add)),
        1 => Just(Some(MergeOperator::Max)),
        1 => Just(Some(MergeOperator::Min)),
        1 => max_len.prop_map(|max_len| Some(MergeOperator::Append { max_len })),
    ]
}

fn compaction() -> impl Strategy<Value = Compaction> {
    let ratio = edgy(
        vec![0.3, 0.5, 0.9],
        vec![
            0.0,
            1.0,
            -0.5,
            f64::MIN_POSITIVE,
            1.0 - f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
        ],
    );
    let bytes = edgy(vec![0, 1 << 16], vec![1, u64::MAX]);
    let auto = (
        ratio,
        bytes.clone(),
        proptest::option::of(bytes),
        duration(),
    )
        .prop_map(|(live_ratio, min_log_bytes, max_log_bytes, check_every)| {
            Compaction::Auto(AutoCompaction {
                live_ratio,
                min_log_bytes,
                max_log_bytes,
                check_every,
            })
        });
    prop_oneof![
        1 => Just(Compaction::Off),
        2 => Just(Compaction::OnDemand),
        2 => auto,
    ]
}

fn request_ids() -> impl Strategy<Value = IdHorizon> {
    (
        edgy(vec![1, 2, 4, 1 << 18], vec![0, usize::MAX, 1 << 40]),
        prop_oneof![3 => Just(None), 1 => duration().prop_map(Some)],
    )
        .prop_map(|(ids, age)| IdHorizon { ids, age })
}

/// Everything but the merge operator (which depends on `value_len_max`).
fn config() -> impl Strategy<Value = Config> {
    let sizes = (
        edgy(
            vec![64 << 10, 128 << 10, 1 << 20],
            vec![
                0,
                1,
                (64 << 10) - 1,
                (64 << 10) + 1,
                32 << 10,
                1 << 31,
                (1 << 31) + 1,
                1 << 32,
                usize::MAX,
                usize::MAX / 2 + 1,
            ],
        ),
        edgy(
            vec![64 << 10, 128 << 10, 1 << 20],
            vec![
                0,
                4096,
                (64 << 10) - 4096,
                (64 << 10) + 1,
                SEGMENT_BYTES_MAX + 4096,
                1 << 50,
                u64::MAX,
                u64::MAX - 4095,
            ],
        ),
        edgy(vec![0, 1, 16, 4096], vec![65_535, 65_536, usize::MAX]),
        edgy(
            vec![0, 7, 8, 100, 1 << 20],
            vec![
                (u32::MAX / 2) as usize,
                (u32::MAX / 2) as usize + 1,
                1 << 31,
                usize::MAX,
            ],
        ),
        edgy(
            vec![4096, 16 << 10, 60 << 10],
            vec![0, 4095, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, usize::MAX],
        ),
        edgy(
            vec![1, 2, 3, 1000, 1 << 20],
            vec![0, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, usize::MAX],
        ),
    );
    let times = (duration(), window(), duration());
    let modes = (
        any::<bool>(),
        prop_oneof![Just(Durability::Sync), Just(Durability::NoSync)],
        prop_oneof![Just(WritePath::Pwrite), Just(WritePath::Mmap)],
        prop_oneof![Just(Backpressure::Block), Just(Backpressure::Reject)],
        prop_oneof![
            Just(RecoveryMode::TolerateCorruptedTail),
            Just(RecoveryMode::PointInTime),
            Just(RecoveryMode::AbsoluteConsistency),
        ],
    );
    let pools = (
        edgy(vec![1, 2], vec![0, 16, 17, usize::MAX]),
        edgy(vec![0, 1, 2], vec![64, 65, usize::MAX]),
        any::<bool>(),
        edgy(
            vec![0, 16],
            vec![1, TRACE_EVENTS_MAX, TRACE_EVENTS_MAX + 1, usize::MAX],
        ),
        // Pollers spin while requests are in flight: few, and the edges refused.
        edgy(vec![0, 0, 1], vec![2, 65, usize::MAX]),
    );
    (
        sizes,
        times,
        modes,
        pools,
        consumer_lag(),
        request_ids(),
        compaction(),
    )
        .prop_flat_map(
            |(
                (ring, segment, key_max, value_max, batch_bytes, batch_ops),
                (age_max, window, overlap),
                (coalesce, durability, write_path, backpressure, recovery),
                (syncers, recycle, reserve, trace, pollers),
                lag,
                ids,
                compaction,
            )| {
                let base = Config {
                    ring_bytes: ring,
                    segment_bytes: segment,
                    key_len_max: key_max,
                    value_len_max: value_max,
                    batch_bytes_max: batch_bytes,
                    batch_ops_max: batch_ops,
                    window_age_max: age_max,
                    window,
                    coalesce,
                    durability,
                    write_path,
                    syncers,
                    overlap_syncs_above: overlap,
                    backpressure,
                    recovery,
                    recycle_segments: recycle,
                    reserve_segment: reserve,
                    consumer_lag_max: lag,
                    request_ids: ids,
                    merge: None,
                    compaction,
                    trace_events: trace,
                    idle_poll_threads: pollers,
                };
                merge(value_max).prop_map(move |merge| Config {
                    merge,
                    ..base.clone()
                })
            },
        )
}

/// One step of a workload.
#[derive(Clone, Debug)]
enum Op {
    Put(u8, usize),
    Delete(u8),
    Get(u8),
    /// (key, value length or `None` for a delete, or a merge when `merge` is set)
    Batch(Vec<(u8, Option<usize>, bool)>),
    Merge(u8, i64),
    PutWithId(u8, usize),
    Flush,
    Compact,
}

/// Key `k`: small keys, the empty key, and one longer than the usual limits.
fn key(k: u8) -> Vec<u8> {
    match k % 6 {
        0 => Vec::new(),
        5 => vec![b'L'; 5000],
        n => format!("key-{n}").into_bytes(),
    }
}

/// A value of `len` bytes, told apart by `tag`.
fn value(len: usize, tag: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (tag as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    let len = proptest::sample::select(vec![0usize, 1, 8, 100, 3000, 70_000]);
    prop_oneof![
        5 => (any::<u8>(), len.clone()).prop_map(|(k, l)| Op::Put(k, l)),
        2 => any::<u8>().prop_map(Op::Delete),
        3 => any::<u8>().prop_map(Op::Get),
        2 => proptest::collection::vec(
            (any::<u8>(), proptest::option::of(len.clone()), any::<bool>()),
            1..4
        )
        .prop_map(Op::Batch),
        3 => (any::<u8>(), -3i64..100).prop_map(|(k, n)| Op::Merge(k, n)),
        1 => (any::<u8>(), len).prop_map(|(k, l)| Op::PutWithId(k, l)),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
    ]
}

/// What a merge of `operand` onto `existing` gives, or `None` if the operator refuses it.
fn merged(op: &MergeOperator, existing: Option<&[u8]>, operand: &[u8]) -> Option<Vec<u8>> {
    let counter = |start: i64, f: fn(i64, i64) -> i64| -> Option<Vec<u8>> {
        let x = i64::from_le_bytes(operand.try_into().unwrap());
        let acc = match existing {
            None => start,
            Some(v) => i64::from_le_bytes(v.try_into().ok()?),
        };
        Some(f(acc, x).to_le_bytes().to_vec())
    };
    match op {
        MergeOperator::Add => counter(0, i64::wrapping_add),
        MergeOperator::Max => counter(i64::MIN, i64::max),
        MergeOperator::Min => counter(i64::MAX, i64::min),
        MergeOperator::Append { max_len } => {
            let mut v = existing.unwrap_or_default().to_vec();
            v.extend_from_slice(operand);
            let skip = v.len().saturating_sub(*max_len);
            Some(v[skip..].to_vec())
        }
        _ => unreachable!("not drawn"),
    }
}

/// The operand a merge step sends: a counter, or bytes for `Append`.
fn operand(op: &MergeOperator, n: i64) -> Vec<u8> {
    match op {
        MergeOperator::Append { .. } => value((n.unsigned_abs() % 20) as usize, n as u64),
        _ => n.to_le_bytes().to_vec(),
    }
}

/// A request the engine is still working on and what it must come to.
enum Pending {
    /// A write: `Ok` or, for a merge the model predicts refused, `MergeRefused`.
    Write(Ticket, bool, String),
    Id(IdTicket, String),
    Get(GetTicket, Option<Vec<u8>>, String),
}

/// A submit-side refusal is right only for a limit the request really exceeds.
fn check_refusal(
    cfg: &Config,
    err: &Error,
    keys: &[&[u8]],
    values: &[&[u8]],
    what: &str,
) -> Result<(), String> {
    let ok = match err {
        Error::KeyTooLong { len, max } => {
            *max == cfg.key_len_max && *len > *max && keys.iter().any(|k| k.len() == *len)
        }
        Error::ValueTooLong { len, max } => {
            *max == cfg.value_len_max && *len > *max && values.iter().any(|v| v.len() == *len)
        }
        Error::RequestTooLarge { len, max, .. } => {
            len > max
                && *max <= cfg.batch_bytes_max.min(cfg.ring_bytes / 4)
                && *len
                    >= keys.iter().map(|k| k.len()).sum::<usize>()
                        + values.iter().map(|v| v.len()).sum::<usize>()
        }
        Error::Busy => cfg.backpressure == Backpressure::Reject,
        Error::Throttled { .. } => {
            cfg.backpressure == Backpressure::Reject && cfg.consumer_lag_max.is_some()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: refused at submit with {err:?} ({err})"))
    }
}

/// True if a request of these keys and values is within the per-field limits (it may still
/// be refused as a whole, `RequestTooLarge`, or as `Busy`).
fn within_field_limits(cfg: &Config, keys: &[&[u8]], values: &[&[u8]]) -> bool {
    keys.iter().all(|k| k.len() <= cfg.key_len_max)
        && values.iter().all(|v| v.len() <= cfg.value_len_max)
}

/// Waits for every pending request and checks what it came to.
fn settle(pending: &mut Vec<Pending>) -> Result<(), String> {
    let wait = Duration::from_secs(100);
    for p in pending.drain(..) {
        match p {
            Pending::Write(t, refused, what) => match (t.wait_timeout(wait), refused) {
                (Ok(_), false) | (Err(Error::MergeRefused { .. }), true) => {}
                (got, _) => {
                    return Err(format!(
                        "{what}: ticket gave {got:?}, expected {}",
                        if refused { "MergeRefused" } else { "Ok" }
                    ))
                }
            },
            Pending::Id(t, what) => match t.wait_timeout(wait) {
                Ok(Outcome::Written(_)) => {}
                got => return Err(format!("{what}: id ticket gave {got:?}")),
            },
            Pending::Get(t, want, what) => match t.wait_timeout(wait) {
                Ok(got) if got == want => {}
                got => return Err(format!("{what}: get gave {got:?}, model {want:?}")),
            },
        }
    }
    Ok(())
}

/// Runs `ops` on an engine open in `dir`, checking each answer against `model`.
fn run(engine: &Engine, cfg: &Config, ops: &[Op], model: &mut State) -> Result<(), String> {
    let mut pending = Vec::new();
    let mut next_id: u128 = 1;
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?}");
        match op {
            Op::Put(k, len) | Op::PutWithId(k, len) => {
                let (k, v) = (key(*k), value(*len, i as u64));
                let submitted = if let Op::PutWithId(..) = op {
                    next_id += 1;
                    engine
                        .put_with_id(next_id, &k, &v)
                        .map(|t| Pending::Id(t, what.clone()))
                } else {
                    engine
                        .put(&k, &v)
                        .map(|t| Pending::Write(t, false, what.clone()))
                };
                match submitted {
                    Ok(p) => {
                        if !within_field_limits(cfg, &[&k], &[&v]) {
                            return Err(format!("{what}: accepted past a limit"));
                        }
                        model.insert(k, v);
                        pending.push(p);
                    }
                    Err(e) => check_refusal(cfg, &e, &[&k], &[&v], &what)?,
                }
            }
            Op::Delete(k) => {
                let k = key(*k);
                match engine.delete(&k) {
                    Ok(t) => {
                        if !within_field_limits(cfg, &[&k], &[]) {
                            return Err(format!("{what}: accepted past a limit"));
                        }
                        model.remove(&k);
                        pending.push(Pending::Write(t, false, what));
                    }
                    Err(e) => check_refusal(cfg, &e, &[&k], &[], &what)?,
                }
            }
            Op::Get(k) => {
                let k = key(*k);
                match engine.get(&k) {
                    Ok(t) => pending.push(Pending::Get(t, model.get(&k).cloned(), what)),
                    Err(e) => check_refusal(cfg, &e, &[&k], &[], &what)?,
                }
            }
            Op::Merge(k, n) => {
                let k = key(*k);
                let Some(opr) = &cfg.merge else {
                    let x = n.to_le_bytes();
                    match engine.merge(&k, &x) {
                        Err(Error::MergeRefused { .. }) => {}
                        Err(e) => check_refusal(cfg, &e, &[&k], &[&x], &what)?,
                        got => return Err(format!("{what}: no operator, merge gave {got:?}")),
                    }
                    continue;
                };
                let x = operand(opr, *n);
                match engine.merge(&k, &x) {
                    Ok(t) => {
                        if !within_field_limits(cfg, &[&k], &[&x]) {
                            return Err(format!("{what}: accepted past a limit"));
                        }
                        let result = merged(opr, model.get(&k).map(|v| &v[..]), &x);
                        let refused = result.is_none();
                        if let Some(v) = result {
                            model.insert(k, v);
                        }
                        pending.push(Pending::Write(t, refused, what));
                    }
                    Err(e) => check_refusal(cfg, &e, &[&k], &[&x], &what)?,
                }
            }
            Op::Batch(items) => {
                let mut batch = WriteBatch::new();
                let mut after = model.clone();
                let mut refused = false;
                let mut keys = Vec::new();
                let mut values = Vec::new();
                for (j, (k, len, is_merge)) in items.iter().enumerate() {
                    let k = key(*k);
                    match (len, &cfg.merge) {
                        (Some(_), Some(opr)) if *is_merge => {
                            let x = operand(opr, j as i64 + 1);
                            batch.merge(&k, &x);
                            match merged(opr, after.get(&k).map(|v| &v[..]), &x) {
                                Some(v) => {
                                    after.insert(k.clone(), v);
                                }
                                None => refused = true,
                            }
                            values.push(x);
                        }
                        (Some(len), _) => {
                            let v = value(*len, (i * 8 + j) as u64);
                            batch.put(&k, &v);
                            after.insert(k.clone(), v.clone());
                            values.push(v);
                        }
                        (None, _) => {
                            batch.delete(&k);
                            after.remove(&k);
                        }
                    }
                    keys.push(k);
                }
                let kr: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                let vr: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
                match engine.write(&batch) {
                    Ok(t) => {
                        if !within_field_limits(cfg, &kr, &vr) {
                            return Err(format!("{what}: accepted past a limit"));
                        }
                        if !refused {
                            *model = after;
                        }
                        pending.push(Pending::Write(t, refused, what));
                    }
                    Err(e) => check_refusal(cfg, &e, &kr, &vr, &what)?,
                }
            }
            Op::Flush => {
                let t = engine.flush().map_err(|e| format!("{what}: {e}"))?;
                pending.push(Pending::Write(t, false, what));
                settle(&mut pending)?;
            }
            Op::Compact => {
                let t = engine.flush().map_err(|e| format!("{what}: flush: {e}"))?;
                pending.push(Pending::Write(t, false, what.clone()));
                settle(&mut pending)?;
                match (engine.compact(), &cfg.compaction) {
                    (Err(Error::CompactionOff), Compaction::Off) => {}
                    (Ok(_), Compaction::OnDemand | Compaction::Auto(_)) => {}
                    (got, _) => return Err(format!("{what}: compact gave {got:?}")),
                }
                let state = engine_state(engine);
                if state != *model {
                    return Err(format!(
                        "{what}: state after compaction differs from the model"
                    ));
                }
            }
        }
    }
    let t = engine.flush().map_err(|e| format!("final flush: {e}"))?;
    pending.push(Pending::Write(t, false, "final flush".into()));
    settle(&mut pending)
}

/// A durable consumer that commits every batch it reads until `stop`, so that a lag limit
/// throttles the workload only for a moment (its error, if any, when joined).
struct Committer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Committer {
    fn start(engine: &Engine) -> Result<Committer, String> {
        let mut consumer = engine
            .consumer("fuzz")
            .map_err(|e| format!("consumer: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || loop {
            match consumer.next_timeout(Duration::from_millis(5)) {
                Ok(Some(b)) => consumer
                    .commit(b.seq)
                    .map_err(|e| format!("consumer commit: {e}"))?,
                Ok(None) | Err(Error::Timeout) if stopped.load(Ordering::Acquire) => return Ok(()),
                Ok(None) | Err(Error::Timeout) => {}
                Err(e) => return Err(format!("consumer: {e}")),
            }
        });
        Ok(Committer { stop, thread })
    }

    fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("the consumer's thread panicked")
    }
}

/// `run`, with a [`Committer`] beside it if a lag limit is set (the consumer's file stays
/// from one open to the next, and so does its lag).
fn run_committed(
    engine: &Engine,
    cfg: &Config,
    ops: &[Op],
    model: &mut State,
) -> Result<(), String> {
    let committer = match cfg.consumer_lag_max {
        Some(_) => Some(Committer::start(engine)?),
        None => None,
    };
    let ran = run(engine, cfg, ops, model);
    match committer {
        Some(c) => ran.and(c.finish()),
        None => ran,
    }
}

/// One case: open, run, close, reopen, compare, write once more, close.
fn case(cfg: Config, ops: Vec<Op>) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let validated = cfg.validate();
    let engine = match Engine::open(&dir, cfg.clone()) {
        Err(Error::InvalidConfig(msg)) => {
            if !SETTINGS.iter().any(|s| names(&msg, s)) {
                return Err(format!("refused naming no setting: {msg:?}"));
            }
            if validated.is_ok() {
                return Err(format!("validate accepts what open refuses: {msg:?}"));
            }
            if dir.exists() {
                return Err("a refused open made the directory".into());
            }
            if std::env::var_os("CONFIG_FUZZ_TELL").is_some() {
                eprintln!("refused: {msg}");
            }
            return Ok(());
        }
        Err(e) => return Err(format!("open failed with {e:?} ({e})")),
        Ok(engine) => engine,
    };
    if let Err(e) = validated {
        return Err(format!("open accepts what validate refuses: {e}"));
    }
    if std::env::var_os("CONFIG_FUZZ_TELL").is_some() {
        eprintln!("opened, {} ops", ops.len());
    }
    let mut model = State::new();
    run_committed(&engine, &cfg, &ops, &mut model)?;
    let state = engine_state(&engine);
    if state != model {
        return Err(format!(
            "state differs from the model: engine {:?} model {:?}",
            state.keys().collect::<Vec<_>>(),
            model.keys().collect::<Vec<_>>()
        ));
    }
    engine.close().map_err(|e| format!("close: {e}"))?;
    drop(engine);

    let engine = Engine::open(&dir, cfg.clone()).map_err(|e| format!("reopen: {e}"))?;
    if engine_state(&engine) != model {
        return Err("the reopened state differs from the model".into());
    }
    let mut ops = vec![Op::Put(1, 1), Op::Get(1), Op::Compact];
    if cfg.merge.is_some() {
        ops.push(Op::Merge(2, 5));
    }
    run_committed(&engine, &cfg, &ops, &mut model)?;
    engine
        .close()
        .map_err(|e| format!("close after reopen: {e}"))?;
    drop(engine);
    let engine = Engine::open(&dir, cfg).map_err(|e| format!("second reopen: {e}"))?;
    if engine_state(&engine) != model {
        return Err("the state after the second reopen differs from the model".into());
    }
    engine.close().map_err(|e| format!("last close: {e}"))
}

/// `case` on a thread of its own, failing (not waiting for ever) if it hangs.
fn guarded(cfg: Config, ops: Vec<Op>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let what = format!("{cfg:?}");
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(cfg, ops)))
            .unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ))
            });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_MAX) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "hung: the case did not finish within {CASE_MAX:?}: {what}"
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::env_u64("CONFIG_FUZZ_CASES").unwrap_or(512) as u32,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_config_is_refused_naming_a_setting_or_runs_a_workload_correctly(
        cfg in config(),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let r = guarded(cfg.clone(), ops);
        prop_assert!(r.is_ok(), "{}\nconfig: {:?}", r.unwrap_err(), cfg);
    }
}

/// The edges of each setting that `open` accepts (the largest sizes, `Duration::MAX` where a
/// time may be unbounded, the smallest segments, limits of 1) open and run the workload, one
/// setting at a time, with the others small.
#[test]
fn the_accepted_edges_of_each_setting_open_and_run_a_workload() {
    let base = || Config {
        ring_bytes: 1 << 20,
        segment_bytes: 1 << 20,
        batch_bytes_max: 256 << 10,
        durability: Durability::NoSync,
        ..Config::default()
    };
    let ops = vec![
        Op::Put(1, 100),
        Op::Get(1),
        Op::Batch(vec![(2, Some(8), false), (3, None, false)]),
        Op::Merge(4, 3),
        Op::PutWithId(5, 8),
        Op::Flush,
        Op::Put(5, 3000),
        Op::Compact,
        Op::Delete(1),
        Op::Flush,
    ];
    let auto = |f: &dyn Fn(&mut AutoCompaction)| {
        let mut a = AutoCompaction::default();
        f(&mut a);
        Compaction::Auto(a)
    };
    let cases: Vec<(&str, Config)> = vec![
        (
            "ring 2G",
            Config {
                ring_bytes: 1 << 31,
                ..base()
            },
        ),
        (
            "key 65535",
            Config {
                key_len_max: 65535,
                ..base()
            },
        ),
        (
            "value max",
            Config {
                value_len_max: (1 << 31) - 1,
                merge: Some(MergeOperator::Append {
                    max_len: (1 << 31) - 1,
                }),
                ..base()
            },
        ),
        (
            "ops max",
            Config {
                batch_ops_max: (1 << 31) - 1,
                ..base()
            },
        ),
        (
            "trace max",
            Config {
                trace_events: TRACE_EVENTS_MAX,
                ..base()
            },
        ),
        (
            "ids huge",
            Config {
                request_ids: IdHorizon {
                    ids: usize::MAX,
                    age: Some(Duration::MAX),
                },
                ..base()
            },
        ),
        (
            "ids 1 1ns",
            Config {
                request_ids: IdHorizon {
                    ids: 1,
                    age: Some(Duration::from_nanos(1)),
                },
                ..base()
            },
        ),
        (
            "lag max",
            Config {
                consumer_lag_max: Some(ConsumerLag {
                    batches: Some(u64::MAX),
                    bytes: Some(u64::MAX),
                    age: Some(Duration::MAX),
                }),
                ..base()
            },
        ),
        (
            "lag 1",
            Config {
                consumer_lag_max: Some(ConsumerLag {
                    batches: Some(1),
                    bytes: Some(1),
                    age: Some(Duration::from_nanos(1)),
                }),
                ..base()
            },
        ),
        (
            "lag 1 reject",
            Config {
                backpressure: Backpressure::Reject,
                consumer_lag_max: Some(ConsumerLag {
                    batches: Some(1),
                    bytes: Some(1),
                    age: Some(Duration::from_nanos(1)),
                }),
                ..base()
            },
        ),
        (
            "auto check max",
            Config {
                compaction: auto(&|a| {
                    a.check_every = Duration::MAX;
                    a.min_log_bytes = u64::MAX;
                }),
                ..base()
            },
        ),
        (
            "auto tiny",
            Config {
                compaction: auto(&|a| {
                    a.check_every = Duration::from_nanos(1);
                    a.live_ratio = f64::MIN_POSITIVE;
                    a.max_log_bytes = Some(0);
                }),
                ..base()
            },
        ),
        (
            "auto 1-eps",
            Config {
                compaction: auto(&|a| {
                    a.live_ratio = 1.0 - f64::EPSILON;
                    a.check_every = Duration::from_nanos(1)
                }),
                reserve_segment: true,
                recycle_segments: 64,
                ..base()
            },
        ),
        (
            "linger 10s",
            Config {
                window: WindowPolicy::Linger(Duration::from_secs(10)),
                window_age_max: Duration::from_secs(10),
                ..base()
            },
        ),
        (
            "adaptive 10s",
            Config {
                window: WindowPolicy::Adaptive {
                    quiet: Duration::from_secs(10),
                },
                window_age_max: Duration::from_secs(10),
                ..base()
            },
        ),
        (
            "syncers 16 zero",
            Config {
                syncers: 16,
                overlap_syncs_above: Duration::ZERO,
                durability: Durability::Sync,
                ..base()
            },
        ),
        (
            "mmap sync",
            Config {
                write_path: WritePath::Mmap,
                durability: Durability::Sync,
                ..base()
            },
        ),
        (
            "ops 1 nocoalesce",
            Config {
                batch_ops_max: 1,
                coalesce: false,
                window: WindowPolicy::Immediate,
                ..base()
            },
        ),
        (
            "min seg",
            Config {
                segment_bytes: 64 << 10,
                ring_bytes: 64 << 10,
                batch_bytes_max: (64 << 10) - 96,
                ..base()
            },
        ),
    ];
    for (what, cfg) in cases {
        if let Err(e) = guarded(cfg.clone(), ops.clone()) {
            panic!("{what}: {e}\nconfig: {cfg:?}");
        }
    }
}
