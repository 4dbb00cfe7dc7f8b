//! Helpers shared by the recovery tests (`crash.rs`, `corruption.rs`, `replay.rs`, ...): the
//! key -> value model, reading the durable state through the public API, and applying replayed
//! batches; `power`, the power-loss model (`faults.rs`, `after_failure/`).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod power;
pub mod seeds;

use mergelog::{Batch, Engine, OwnedBatch, RecordOp, Ticket, WriteBatch};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// A key -> value state, ordered so that a failed comparison prints readably.
pub type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// How long a test waits for a ticket before calling the engine hung.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// One write: `Some(value)` is a put, `None` a delete.
pub type WriteOp = (Vec<u8>, Option<Vec<u8>>);

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
    batch.clear();
    for (k, v) in ops {
        match v {
            Some(v) => batch.put(k, v),
            None => batch.delete(k),
        };
    }
    engine.write(batch)
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
    for (op, k, v) in &batch.records {
        apply_record(state, *op, k, v);
    }
}

/// Checks what a sorted batch promises: strictly ascending keys.
pub fn assert_sorted_ascending(batch: &OwnedBatch) {
    if batch.sorted {
        for pair in batch.records.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "batch {} is marked sorted but has key {:?} before {:?}",
                batch.seq,
                pair[0].1,
                pair[1].1
            );
        }
    }
}

/// The durable state as `for_each` reports it; fails on a key visited twice and checks that
/// `len` agrees.
pub fn engine_state(engine: &Engine) -> State {
    let mut state = State::new();
    engine.for_each(|k, v| {
        let previous = state.insert(k.to_vec(), v.to_vec());
        assert!(previous.is_none(), "for_each visited key {k:?} twice");
    });
    assert_eq!(
        engine.len(),
        state.len(),
        "Engine::len disagrees with for_each"
    );
    state
}

/// Checks that `read`/`read_to_vec` agree with `state` on every key of `state` and on every
/// key of `probe` (keys that may be absent).
pub fn assert_reads_match<'a>(
    engine: &Engine,
    state: &State,
    probe: impl IntoIterator<Item = &'a [u8]>,
    ctx: &str,
) {
    let check = |k: &[u8]| {
        let got = engine
            .read_to_vec(k)
            .unwrap_or_else(|e| panic!("{ctx}: read {k:?}: {e}"));
        assert_eq!(
            got.as_deref(),
            state.get(k).map(|v| v.as_slice()),
            "{ctx}: read of key {:?} disagrees with for_each",
            String::from_utf8_lossy(k)
        );
        let by_ref = engine
            .read(k)
            .unwrap_or_else(|e| panic!("{ctx}: read {k:?}: {e}"));
        assert_eq!(
            by_ref.as_deref(),
            got.as_deref(),
            "{ctx}: read vs read_to_vec"
        );
    };
    for k in state.keys() {
        check(k);
    }
    for k in probe {
        check(k);
    }
}

/// Waits for a ticket, failing the test on an error or a hang.
pub fn wait_ok(ticket: &Ticket, ctx: &str) {
    ticket
        .wait_timeout(WAIT_MAX)
        .unwrap_or_else(|e| panic!("{ctx}: ticket {} failed: {e}", ticket.position()));
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
    assert!(s.len() % 2 == 0, "odd hex string {s:?}");
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

/// After a failure, every call that would change or read through the log says Failed.
pub fn assert_refuses(engine: &Engine, ctx: &str) {
    assert!(engine.failure().is_some(), "{ctx}: failure() is None");
    let mut b = WriteBatch::new();
    b.put(b"after-failure", b"x").delete(b"k0");
    let calls: [(&str, Result<(), mergelog::Error>); 6] = [
        ("put", engine.put(b"after-failure", b"x").map(drop)),
        ("delete", engine.delete(b"k0").map(drop)),
        ("write", engine.write(&b).map(drop)),
        ("get", engine.get(b"k0").map(drop)),
        ("flush", engine.flush().map(drop)),
        ("retire_before", engine.retire_before(u64::MAX).map(drop)),
    ];
    for (name, r) in calls {
        assert!(
            matches!(r, Err(mergelog::Error::Failed(_))),
            "{ctx}: {name} after the failure returned {r:?}, not Error::Failed"
        );
    }
}
