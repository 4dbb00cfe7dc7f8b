//! The key -> value model the tests check the engine against: a key set with varied lengths
//! and shared prefixes, writes applied in order,
//! batches replayed from the log or yielded by a follower, submitting writes as requests,
//! and describing how two states differ; `hex`/`unhex` write keys and values as text tokens.

use super::State;
use mergelog::{Batch, Engine, OwnedBatch, RecordOp, Ticket, WriteBatch};
use std::fmt::Write as _;

/// One write: `Some(value)` is a put, `None` a delete.
pub type WriteOp = (Vec<u8>, Option<Vec<u8>>);

/// Key `i` of the keys the crash and fault workloads draw from: keys of different lengths,
/// some sharing their first 8 bytes.
pub fn mixed_key(i: usize) -> Vec<u8> {
    match i % 4 {
        0 => format!("k{i}").into_bytes(),
        1 => format!("key-{i:03}").into_bytes(),
        2 => format!("shared-prefix-{i}").into_bytes(),
        _ => vec![b'x', i as u8, 0, 0xff],
    }
}

/// The length of the prefix of `items` that, applied to `base` in order (`apply` applies
/// one item to a state), gives `recovered` and holds every item `acked` says was
/// acknowledged: the check of every kill -9 test. `None` if no such prefix exists.
pub fn matching_prefix<T>(
    base: &State,
    items: &[T],
    acked: impl Fn(&T) -> bool,
    apply: impl Fn(&mut State, &T),
    recovered: &State,
) -> Option<usize> {
    let need = items.iter().rposition(&acked).map_or(0, |i| i + 1);
    let mut model = base.clone();
    for item in &items[..need] {
        apply(&mut model, item);
    }
    if &model == recovered {
        return Some(need);
    }
    for (i, item) in items.iter().enumerate().skip(need) {
        apply(&mut model, item);
        if &model == recovered {
            return Some(i + 1);
        }
    }
    None
}

/// Applies writes in order.
pub fn apply_writes<'a>(state: &mut State, ops: impl IntoIterator<Item = &'a WriteOp>) {
    for (k, v) in ops {
        match v {
            Some(v) => {
                state.insert(k.clone(), v.clone());
            }
            None => {
                state.remove(k);
            }
        }
    }
}

/// Submits `ops` as one request: a plain put or delete when `single` (and there is one op),
/// else one atomic `WriteBatch` (built in `batch`, which is reused).
pub fn submit(
    engine: &Engine,
    batch: &mut WriteBatch,
    ops: &[WriteOp],
    single: bool,
) -> mergelog::Result<Ticket> {
    if single && ops.len() == 1 {
        return match &ops[0] {
            (k, Some(v)) => engine.put(k, v),
            (k, None) => engine.delete(k),
        };
    }
    fill_batch(batch, ops);
    engine.write(batch)
}

/// Clears `batch` and puts `ops` in it, in order.
pub fn fill_batch(batch: &mut WriteBatch, ops: &[WriteOp]) {
    batch.clear();
    for (k, v) in ops {
        match v {
            Some(v) => batch.put(k, v),
            None => batch.delete(k),
        };
    }
}

/// Applies one replayed record.
pub fn apply_record(state: &mut State, op: RecordOp, key: &[u8], value: &[u8]) {
    match op {
        RecordOp::Put => {
            state.insert(key.to_vec(), value.to_vec());
        }
        RecordOp::Delete => {
            state.remove(key);
        }
    }
}

/// Applies a batch borrowed from a `LogReader`.
pub fn apply_batch(state: &mut State, batch: &Batch<'_>) {
    for r in batch.records() {
        apply_record(state, r.op, r.key, r.value);
    }
}

/// Applies a batch a follower yielded.
pub fn apply_owned(state: &mut State, batch: &OwnedBatch) {
    for mergelog::OwnedRecord {
        op,
        key: k,
        value: v,
    } in &batch.records
    {
        apply_record(state, *op, k, v);
    }
}

/// Checks what a sorted batch promises: strictly ascending keys.
pub fn assert_sorted_ascending(batch: &OwnedBatch) {
    if batch.sorted {
        for pair in batch.records.windows(2) {
            assert!(
                pair[0].key < pair[1].key,
                "batch {} is marked sorted but has key {:?} before {:?}",
                batch.seq,
                pair[0].key,
                pair[1].key
            );
        }
    }
}

/// Lower-case hex of `bytes` ("-" for the empty string, so a token is never empty).
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_string();
    }
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// Inverse of [`hex`].
pub fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    assert!(s.len().is_multiple_of(2), "odd hex string {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s:?}")))
        .collect()
}

/// Describes how two states differ (first few keys), for failure messages.
pub fn state_diff(got: &State, want: &State) -> String {
    let mut out = String::new();
    let mut n = 0;
    let keys: std::collections::BTreeSet<&Vec<u8>> = got.keys().chain(want.keys()).collect();
    for k in keys {
        let (g, w) = (got.get(k), want.get(k));
        if g != w {
            n += 1;
            if n <= 8 {
                let show = |v: Option<&Vec<u8>>| {
                    v.map_or("<absent>".to_string(), |v| {
                        String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned()
                    })
                };
                writeln!(
                    out,
                    "  key {:?}: got {} want {}",
                    String::from_utf8_lossy(k),
                    show(g),
                    show(w)
                )
                .unwrap();
            }
        }
    }
    if n > 8 {
        writeln!(out, "  ... {} keys differ in all", n).unwrap();
    }
    out
}
