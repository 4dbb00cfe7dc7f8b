//! Target `side_files`: a real log (written once per process through the public API, with
//! request ids, a retirement that wrote an `ids` file, two consumers and a clean close) whose
//! side files (`CLEAN`, `ids`, `consumer-a`, `consumer-b`) the input replaces, patches or
//! removes, and whose tail it may cut; see [`SideInput::parse`].
//!
//! Checks, beyond "no panic, no hang":
//!
//! - a reader (`LogReader::open_with`, `consumers`, `pending_ids`) and `LogReader::check`
//!   change nothing; a refusal of a side file is `Error::Corrupt` naming that file;
//! - a reader's `consumers()` reports each consumer's committed batch and its lag behind the
//!   reader's last batch (and the batches retired before it committed them), and
//!   `pending_ids` the ids logged after it, as the batches say (`Error::Retired` for a
//!   consumer behind a retirement, as its next read);
//! - `LogReader::check` and `Engine::open` agree (as in `open_dir`), but for a consumer file
//!   (which `check` does not read);
//! - an engine that opened has the reader's state, remembers every id its frames log under
//!   that frame's batch (and, with the `ids` file untouched, every id of the retired
//!   segments under theirs), never a batch past its log nor one of its log that does not
//!   log it, and never from an `ids` file (of a right CRC) whose entries are out of the
//!   order a retirement writes them (oldest batch first, the ids of a batch ascending);
//!   its consumers sit at or below its
//!   last batch (one past it set back and reported), and its `pending_ids` is the reader's;
//! - it takes a put, closes, and the log reopens in `AbsoluteConsistency` with the same state.

use super::{
    check_agrees_with_open, crc32c, engine_state, put_then_close, refusal, scratch_dir, snapshot,
    State, MODES,
};
use mergelog::internals::format::{RecordOp, FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_HEADER_LEN};
use mergelog::{
    Config, Durability, Engine, Error, IdHorizon, LogReader, RecoveryMode, RequestId, WindowPolicy,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The side files the input may change, in input order.
pub const SIDE_FILES: [&str; 4] = ["CLEAN", "ids", "consumer-a", "consumer-b"];
/// The consumers of the template log.
const CONSUMERS: [&str; 2] = ["a", "b"];

/// The request-id horizon of every engine here: more than the template logs, so that every
/// id found is remembered.
const ID_HORIZON: usize = 256;

fn config(mode: RecoveryMode, durability: Durability) -> Config {
    Config {
        ring_bytes: 64 << 10,
        segment_bytes: super::ENGINE_SEGMENT_BYTES,
        batch_bytes_max: 8192,
        window: WindowPolicy::Immediate,
        durability,
        recovery: mode,
        request_ids: IdHorizon {
            ids: ID_HORIZON,
            age: None,
        },
        ..Config::default()
    }
}

/// The template: every file of a cleanly closed log, and the ids it logged (id, batch).
pub struct Template {
    pub files: BTreeMap<String, Vec<u8>>,
    pub ids: Vec<(RequestId, u64)>,
    /// The first batch of the first segment left after the retirement.
    pub first_kept: u64,
}

/// Writes the template log once per process: 40 batches of one 2 KiB put with an id each
/// (two segments of 64 KiB), the first segment retired (its ids go to the `ids` file),
/// consumer `a` at the third batch after that, `b` at "nothing consumed", 4 more batches,
/// a clean close.
pub fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let root = scratch_dir();
        let dir = root.path().join("template");
        let engine = Engine::open(&dir, config(RecoveryMode::default(), Durability::Sync))
            .expect("open the template log");
        let mut ids = Vec::new();
        let value = vec![b'v'; 2048 + 64];
        let mut put = |n: u64| {
            let id = RequestId::from(0x1000 + u128::from(n));
            let key = format!("key-{:02}", n % 30);
            let seq = engine
                .put_with_id(id, key.as_bytes(), &value[..2048 + n as usize])
                .expect("put")
                .wait()
                .expect("durable")
                .seq()
                .get();
            ids.push((id, seq));
        };
        for n in 0..40 {
            put(n);
        }
        let segments = engine.segments();
        assert!(segments.len() >= 2, "the template needs two segments");
        let first_kept = segments[1].first_seq.get();
        engine.retire_before(first_kept).expect("retire");
        for name in CONSUMERS {
            engine.consumer(name).expect("consumer");
        }
        let mut a = engine.consumer("a").expect("consumer a");
        for _ in 0..3 {
            a.try_next().expect("consume").expect("a durable batch");
        }
        a.commit(first_kept + 2).expect("commit");
        drop(a);
        for n in 40..44 {
            put(n);
        }
        engine.close().expect("close the template log");
        drop(engine);
        let files = snapshot(&dir);
        for f in SIDE_FILES {
            assert!(files.contains_key(f), "the template has no {f}");
        }
        Template {
            files,
            ids,
            first_kept,
        }
    })
}

/// What an input does to one side file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Keep,
    Remove,
    /// The template's bytes with (offset, byte) writes; `Raw`: these bytes instead. The CRC
    /// fixed after, if asked.
    Patch(Vec<(usize, u8)>, bool),
    Raw(Vec<u8>, bool),
}

/// A `side_files` input, parsed.
#[derive(Clone, Debug)]
pub struct SideInput {
    pub mode: RecoveryMode,
    pub durability: Durability,
    /// Frames zeroed at the end of the last segment (0–3).
    pub cut_frames: usize,
    /// Every segment file removed.
    pub no_segments: bool,
    pub put: bool,
    pub changes: [Change; 4],
}

impl SideInput {
    /// - byte 0, control: bits 0–1 the frames cut from the log's end (zeroed); bits 2–3 the
    ///   recovery mode (index into `MODES`, 3 = the default); bit 4 a put after open; bit 5
    ///   `NoSync`; bit 6 every segment removed.
    /// - per side file (`SIDE_FILES` order): a selector byte (bits 0–1: keep, remove, patch,
    ///   raw; bit 2: fix the CRC after) and a length byte `n`; for a patch, `n` triples
    ///   (offset u16 LE, byte), for raw `n` bytes; both taken from the rest of the input,
    ///   in order (missing bytes are zeros).
    pub fn parse(data: &[u8]) -> SideInput {
        let mut at = 0;
        let mut next = |n: usize| {
            let mut out = vec![0u8; n];
            let have = data.len().saturating_sub(at).min(n);
            if have > 0 {
                out[..have].copy_from_slice(&data[at..at + have]);
            }
            at += n;
            out
        };
        let control = next(1)[0];
        let mode = MODES
            .get(usize::from(control >> 2 & 3))
            .copied()
            .unwrap_or_default();
        let changes = std::array::from_fn(|_| {
            let d = next(2);
            let fix = d[0] & 4 != 0;
            match d[0] & 3 {
                0 => Change::Keep,
                1 => Change::Remove,
                2 => Change::Patch(
                    next(3 * usize::from(d[1]))
                        .chunks_exact(3)
                        .map(|c| (usize::from(u16::from_le_bytes([c[0], c[1]])), c[2]))
                        .collect(),
                    fix,
                ),
                _ => Change::Raw(next(usize::from(d[1])), fix),
            }
        });
        SideInput {
            mode,
            durability: if control & 32 != 0 {
                Durability::NoSync
            } else {
                Durability::Sync
            },
            cut_frames: usize::from(control & 3),
            no_segments: control & 64 != 0,
            put: control & 16 != 0,
            changes,
        }
    }

    /// The inverse of `parse`, for seeds.
    pub fn encode(control: u8, changes: &[Change; 4]) -> Vec<u8> {
        let mut head = vec![control];
        let mut tail = Vec::new();
        for c in changes {
            match c {
                Change::Keep => head.extend([0, 0]),
                Change::Remove => head.extend([1, 0]),
                Change::Patch(p, fix) => {
                    head.extend([2 | u8::from(*fix) << 2, p.len() as u8]);
                    for (off, b) in p {
                        tail.extend((*off as u16).to_le_bytes());
                        tail.push(*b);
                    }
                }
                Change::Raw(r, fix) => {
                    head.extend([3 | u8::from(*fix) << 2, r.len() as u8]);
                    tail.extend(r);
                }
            }
        }
        // `parse` reads each file's payload right after its descriptor: interleave.
        let mut out = vec![control];
        let mut rest = &tail[..];
        for (i, c) in changes.iter().enumerate() {
            out.extend_from_slice(&head[1 + 2 * i..3 + 2 * i]);
            let n = match c {
                Change::Patch(p, _) => 3 * p.len(),
                Change::Raw(r, _) => r.len(),
                _ => 0,
            };
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }
}

/// Recomputes the CRC of a side file's bytes where its format puts it.
fn fix_crc(name: &str, b: &mut [u8]) {
    let at = match name {
        "CLEAN" => 40,
        "ids" => {
            if b.len() < 24 {
                return;
            }
            let count = u64::from_le_bytes(b[16..24].try_into().unwrap());
            match count.checked_mul(32).and_then(|n| n.checked_add(24)) {
                Some(end) if end <= b.len() as u64 => end as usize,
                _ => return,
            }
        }
        _ => 24,
    };
    if b.len() >= at + 4 {
        let crc = crc32c(&b[..at]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The offset of the first entry out of order (by batch, then id, strictly) of the `ids`
/// file `b`, if its count fits its length and its CRC is right.
fn misordered_ids(b: &[u8]) -> Option<usize> {
    let count = usize::try_from(u64::from_le_bytes(b.get(16..24)?.try_into().ok()?)).ok()?;
    let end = count.checked_mul(32)?.checked_add(24)?;
    let stored = b.get(end..end.checked_add(4)?)?;
    if crc32c(&b[..end]).to_le_bytes() != stored {
        return None;
    }
    let key = |i: usize| {
        let e = &b[24 + 32 * i..56 + 32 * i];
        (u64::from_le_bytes(e[16..24].try_into().unwrap()), &e[..16])
    };
    (1..count)
        .find(|&i| key(i - 1) >= key(i))
        .map(|i| 24 + 32 * i)
}

/// Zeroes the last `n` frames of the segment image `seg` (frames walked from offset 64).
fn cut_frames(seg: &mut [u8], n: usize) {
    let mut starts = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off + FRAME_HEADER_LEN <= seg.len() && seg[off..off + 4] == FRAME_MAGIC {
        let body = u32::from_le_bytes(seg[off + 8..off + 12].try_into().unwrap()) as usize;
        starts.push(off);
        off += mergelog::internals::format::frame_len(body);
    }
    if let Some(&from) = starts.len().checked_sub(n).and_then(|i| starts.get(i)) {
        if n > 0 {
            let end = off.min(seg.len());
            seg[from..end].fill(0);
        }
    }
}

/// Writes the template with the input's changes into `dir` (which exists, empty).
fn materialize(input: &SideInput, dir: &Path) {
    let t = template();
    let last_seg = t.files.keys().rfind(|n| n.ends_with(".seg")).cloned();
    for (name, bytes) in &t.files {
        let mut bytes = bytes.clone();
        if name.ends_with(".seg") {
            if input.no_segments {
                continue;
            }
            if Some(name) == last_seg.as_ref() {
                cut_frames(&mut bytes, input.cut_frames);
            }
        }
        if let Some(i) = SIDE_FILES.iter().position(|f| f == name) {
            match &input.changes[i] {
                Change::Keep => {}
                Change::Remove => continue,
                Change::Patch(p, fix) => {
                    for &(off, b) in p {
                        if let Some(x) = bytes.get_mut(off) {
                            *x = b;
                        }
                    }
                    if *fix {
                        fix_crc(name, &mut bytes);
                    }
                }
                Change::Raw(r, fix) => {
                    bytes = r.clone();
                    if *fix {
                        fix_crc(name, &mut bytes);
                    }
                }
            }
        }
        std::fs::write(dir.join(name), &bytes).expect("write a file");
    }
}

/// What a reader found: its state, its batches' ids (id, batch) and its last batch.
struct Read {
    state: State,
    ids: Vec<(RequestId, u64)>,
    last: u64,
    /// Consumers as `consumers()` reported them (committed), if it answered.
    consumers: Option<BTreeMap<String, u64>>,
}

/// The ids logged after batch `committed` in `ids` (a reader's, in log order).
fn ids_after(ids: &[(RequestId, u64)], committed: u64) -> Vec<(RequestId, u64)> {
    ids.iter()
        .filter(|(_, s)| *s > committed)
        .copied()
        .collect()
}

/// Whether `e` refuses side file `name` of `dir`: `Error::Corrupt` naming it.
fn names_file(e: &Error, dir: &Path, name: &str) -> bool {
    matches!(e, Error::Corrupt { path, .. } if path == &dir.join(name))
}

fn read(dir: &Path, mode: RecoveryMode) -> Option<Read> {
    let reader = LogReader::open_with(dir, mode).ok()?;
    let mut state = State::new();
    let mut ids = Vec::new();
    for b in reader.batches() {
        for r in b.records() {
            match r.op {
                RecordOp::Put => state.insert(r.key.to_vec(), r.value.to_vec()),
                RecordOp::Delete => state.remove(r.key),
            };
        }
        ids.extend(b.ids().map(|id| (id, b.seq().get())));
    }
    let last = reader.next_seq().get() - 1;
    let consumers = match reader.consumers() {
        Ok(list) => {
            let mut m = BTreeMap::new();
            for c in list {
                assert_eq!(
                    c.lag_batches,
                    last.saturating_sub(c.committed.get()),
                    "consumer {}: lag in batches",
                    c.name
                );
                let first = reader.first_seq().get();
                assert_eq!(
                    c.retired_unread,
                    first.saturating_sub(c.committed.get() + 1),
                    "consumer {}: batches retired unread (the log's first is {first})",
                    c.name
                );
                m.insert(c.name, c.committed.get());
            }
            Some(m)
        }
        Err(e) => {
            assert!(
                SIDE_FILES[2..].iter().any(|f| names_file(&e, dir, f)),
                "LogReader::consumers failed without naming a consumer file: {e}"
            );
            None
        }
    };
    for name in CONSUMERS {
        match reader.pending_ids(name) {
            // (When another consumer's file is bad, `consumers()` refuses them all.)
            Ok(p) => {
                if let Some(m) = &consumers {
                    let committed = *m.get(name).unwrap_or_else(|| {
                        panic!("pending_ids of {name} answered, consumers() did not list it")
                    });
                    let got: Vec<_> = p.iter().map(|p| (p.id, p.seq.get())).collect();
                    assert_eq!(got, ids_after(&ids, committed), "pending_ids of {name}");
                }
            }
            Err(Error::Consumer { .. }) => assert!(
                consumers.as_ref().is_none_or(|m| !m.contains_key(name)),
                "pending_ids says no consumer {name}, consumers() lists it"
            ),
            // Behind a retirement: its next read's error, naming its next batch.
            Err(Error::Retired { seq, first }) => {
                assert!(
                    first == reader.first_seq() && seq < first,
                    "pending_ids({name}): Retired {{ seq: {seq}, first: {first} }}"
                );
                if let Some(committed) = consumers.as_ref().and_then(|m| m.get(name)) {
                    assert_eq!(seq.get(), committed + 1, "pending_ids({name}): Retired");
                }
            }
            Err(e) => assert!(
                names_file(&e, dir, &format!("consumer-{name}")),
                "pending_ids({name}): {e}"
            ),
        }
    }
    Some(Read {
        state,
        ids,
        last,
        consumers,
    })
}

pub fn side_files(data: &[u8]) {
    let input = SideInput::parse(data);
    let t = template();
    let root = scratch_dir();
    let dir = root.path().join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    materialize(&input, &dir);

    let before = snapshot(&dir);
    let reader = read(&dir, input.mode);
    let checked = LogReader::check(&dir, input.mode, input.durability);
    assert!(
        snapshot(&dir) == before,
        "a reader or LogReader::check changed the directory"
    );
    if let Err(e) = &checked {
        if let Some((_, path, _)) = refusal(e) {
            assert!(path.starts_with(&dir), "a refusal outside the log: {e}");
        }
    }
    let opened = Engine::open(&dir, config(input.mode, input.durability));
    let consumer_refused = matches!(&opened, Err(e)
        if SIDE_FILES[2..].iter().any(|f| names_file(e, &dir, f)));
    // A refused consumer file is the open's refusal alone: `check` does not read those.
    if !consumer_refused || matches!((&checked, &opened), (Ok(_), Ok(_))) {
        check_agrees_with_open(&checked, &opened, "as the input says");
    }
    let engine = match opened {
        Ok(e) => e,
        Err(Error::Locked(_)) => panic!("Engine::open of an unused directory says Locked"),
        Err(_) => return,
    };
    let last = engine.durable_seq().get();
    let mut state = engine_state(&engine);
    if let Some(r) = &reader {
        assert_eq!(state, r.state, "engine and reader disagree");
        // Every id a frame of the log logs is remembered under that frame's batch.
        for &(id, seq) in &r.ids {
            assert_eq!(
                engine.request_id_seq(id).map(|s| s.get()),
                Some(seq),
                "request id {id} logged in batch {seq}"
            );
        }
    }
    // With the `ids` file as written, the retired segment's ids are remembered too.
    if input.changes[1] == Change::Keep && !input.no_segments {
        for &(id, seq) in t.ids.iter().filter(|(_, s)| *s < t.first_kept) {
            assert_eq!(
                engine.request_id_seq(id).map(|s| s.get()),
                Some(seq),
                "carried request id {id} of batch {seq}"
            );
        }
    }
    // No id is remembered under a batch the log has not reached, nor under a batch of the
    // log that does not log it: a retry of it would be answered with a batch that logs
    // something else. An `ids` file rewritten under a right CRC that names such a batch is
    // refused (since session 39; until then it was accepted, and not checked here).
    let first_live = engine.segments().first().map(|s| s.first_seq.get());
    for &(id, _) in &t.ids {
        if let Some(seq) = engine.request_id_seq(id) {
            assert!(
                seq.get() <= last,
                "request id {id} remembered under batch {seq}, past the log's last, {last}"
            );
            if let (Some(r), Some(first)) = (&reader, first_live) {
                assert!(
                    seq.get() < first || r.ids.contains(&(id, seq.get())),
                    "request id {id} remembered under batch {seq} of the log, which does not \
                     log it"
                );
            }
        }
    }
    // An `ids` file the engine took was in the order retirements write (since session 40;
    // until then, an order a retirement never writes was taken, and not checked here).
    if let Some(at) = before.get("ids").and_then(|b| misordered_ids(b)) {
        panic!("the engine opened with an ids file whose entry at offset {at} is out of order");
    }
    let consumers = engine
        .consumers()
        .unwrap_or_else(|e| panic!("consumers() of an engine that opened: {e}"));
    let set_back: BTreeMap<String, u64> = engine
        .open_report()
        .consumers_set_back
        .iter()
        .map(|c| (c.name.clone(), c.committed.get()))
        .collect();
    for c in &consumers {
        let committed = c.committed.get();
        assert!(
            committed <= last,
            "consumer {} at batch {committed}, past the log's last, {last}",
            c.name
        );
        let was = reader
            .as_ref()
            .and_then(|r| r.consumers.as_ref())
            .and_then(|m| m.get(&c.name));
        if let Some(&was) = was {
            if was > last {
                assert_eq!(committed, last, "consumer {} set back", c.name);
                assert!(set_back.contains_key(&c.name), "set back, not reported");
            } else {
                assert_eq!(committed, was, "consumer {} moved at open", c.name);
            }
        }
        if let Some(r) = &reader {
            let pending = match engine.pending_ids(&c.name) {
                // Behind a retirement: its next read's error, naming its next batch.
                Err(Error::Retired { seq, .. }) => {
                    assert!(
                        c.retired_unread > 0 && seq.get() == committed + 1,
                        "engine's pending_ids of {c:?}: Retired at {seq}"
                    );
                    continue;
                }
                got => got.expect("pending_ids of a listed consumer"),
            };
            assert_eq!(c.retired_unread, 0, "{c:?}: pending_ids answered");
            let pending: Vec<_> = pending.iter().map(|p| (p.id, p.seq.get())).collect();
            if r.state == state && r.last == last {
                assert_eq!(
                    pending,
                    ids_after(&r.ids, committed),
                    "engine's pending_ids"
                );
            }
        }
    }
    let put = input
        .put
        .then(|| (b"side-key".to_vec(), b"side-value".to_vec()));
    if !put_then_close(engine, &mut state, put, "as the input says") {
        return;
    }
    let again = Engine::open(
        &dir,
        config(RecoveryMode::AbsoluteConsistency, input.durability),
    )
    .unwrap_or_else(|e| panic!("a cleanly closed log does not reopen: {e}"));
    assert_eq!(engine_state(&again), state, "reopened state differs");
    again
        .consumers()
        .unwrap_or_else(|e| panic!("consumers() after reopen: {e}"));
    again.close().expect("close after reopen");
}
