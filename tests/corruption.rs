//! Corruption tests: a multi-segment log with known contents is damaged on copies of its
//! directory (torn tail frames, files cut short, single bit flips anywhere), and opening it,
//! with the engine and with `LogReader`, in every recovery mode, must keep exactly the valid
//! prefix (docs/FORMAT.md, "Recovery"):
//!
//! - `TolerateCorruptedTail` (default): a bad frame in the last segment ends the log there
//!   (several frames may be undurable at a crash, so valid frames after a torn one are
//!   unacknowledged): it is cut, reported in `OpenReport::truncated` (`LogReader::damage`), and
//!   the state is the state after the frames before it. A bad frame in an earlier segment, or a
//!   bad segment header anywhere (never a crash artifact: headers are synced before anything
//!   in the segment is acknowledged), is `Error::Corrupt` naming the file and the offset (0 for
//!   a header); except, in the last segment, a header a roll torn by a power loss could have
//!   left (an unactivated segment: cut as a torn tail, unless later frames show durable
//!   history).
//! - `PointInTime`: keep everything before the first damage, wherever it is.
//! - `AbsoluteConsistency`: any damage is an error.
//!
//! Bytes no check covers (frame padding, the zeros after the last frame of a segment that is
//! not the last one, beyond the slot of the next frame header) may change undetected; the
//! expectation accounts for them byte by byte. A `LogReader` does not look past the end of the
//! last segment's frames (the engine may be writing there).
//!
//! `MERGELOG_CORRUPTION_FLIPS` (default 1200) sets the number of bit flips,
//! `MERGELOG_CORRUPTION_SEED` the seed of their positions.

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::log::dir_contents;
use common::model::{apply_batch, apply_writes, state_diff, WriteOp};
use common::{assert_reads_match, engine_state, wait_ok, State, WAIT_MAX};
use mergelog::internals::format::{trailer_len, UNDURABLE_FRAMES_MAX};
use mergelog::{Config, Damage, Durability, Engine, Error, LogReader, RecoveryMode, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

const SEGMENT_BYTES: u64 = 64 << 10;
const MIN_BATCHES: usize = 500;
/// The last segment must hold at least this many frames, so that damage can land before the
/// last frame of the last segment.
const MIN_LAST_SEGMENT_FRAMES: usize = 24;
const MODES: [RecoveryMode; 3] = [
    RecoveryMode::TolerateCorruptedTail,
    RecoveryMode::PointInTime,
    RecoveryMode::AbsoluteConsistency,
];

fn config(mode: RecoveryMode) -> Config {
    Config {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        recovery: mode,
        ..Config::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:02}{}", "k".repeat(i % 7)).into_bytes()
}

/// A frame of the fixture log.
#[derive(Clone, Copy, Debug)]
struct FrameInfo {
    seg: usize,
    offset: u64,
    /// Bytes occupied, padding included.
    len: u64,
    /// End of the CRC-covered bytes (header + body); padding follows up to `offset + len`.
    body_end: u64,
    seq: u64,
}

/// The log every test damages: its segment files (in log order), its frames and the model
/// state after each prefix of frames.
struct Fixture {
    files: Vec<(String, Vec<u8>)>,
    frames: Vec<FrameInfo>,
    /// `models[k]`: the state after the first `k` frames.
    models: Vec<State>,
    keys: Vec<Vec<u8>>,
    build_secs: f64,
}

impl Fixture {
    fn last_seg(&self) -> usize {
        self.files.len() - 1
    }
    /// Index of the first frame of segment `seg`.
    fn first_frame_of(&self, seg: usize) -> usize {
        self.frames
            .iter()
            .position(|f| f.seg >= seg)
            .unwrap_or(self.frames.len())
    }
    /// Number of frames in segments `..=seg`.
    fn frames_through(&self, seg: usize) -> usize {
        self.first_frame_of(seg + 1)
    }
    /// End of the frames of segment `seg`.
    fn seg_end(&self, seg: usize) -> u64 {
        let n = self.frames_through(seg);
        if n > 0 && self.frames[n - 1].seg == seg {
            self.frames[n - 1].offset + self.frames[n - 1].len
        } else {
            64
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<Vec<u8>> = (0..40).map(key).collect();
    let mut rng = StdRng::seed_from_u64(0x00c0_ffee);
    let engine = Engine::open(dir.path(), config(RecoveryMode::default())).expect("open");
    let mut models = vec![State::new()];
    let mut batch = WriteBatch::new();
    // Each request is waited for before the next is submitted, so each is one frame.
    for i in 0.. {
        if i >= MIN_BATCHES && i % 10 == 0 {
            let reader = engine.replay().expect("replay while open");
            let files = reader.segments();
            let last = &files.last().expect("a segment").path;
            let in_last = reader.batches().filter(|b| b.segment() == last).count();
            if files.len() >= 4 && in_last >= MIN_LAST_SEGMENT_FRAMES {
                break;
            }
        }
        let n = if rng.random_bool(0.25) {
            1
        } else {
            rng.random_range(1..=6)
        };
        let ops: Vec<WriteOp> = (0..n)
            .map(|_| {
                let k = keys[rng.random_range(0..keys.len())].clone();
                if rng.random_bool(0.15) {
                    (k, None)
                } else {
                    // ASCII, never zero: every frame's body ends in a non-zero byte.
                    let len = rng.random_range(1..=200);
                    let v = (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect();
                    (k, Some(v))
                }
            })
            .collect();
        let ticket =
            common::model::submit(&engine, &mut batch, &ops, n == 1 && rng.random_bool(0.5))
                .expect("submit");
        wait_ok(&ticket, "fixture");
        let mut next = models.last().expect("model").clone();
        apply_writes(&mut next, &ops);
        models.push(next);
    }
    let final_state = engine_state(&engine);
    assert_eq!(
        &final_state,
        models.last().unwrap(),
        "fixture: engine state vs model"
    );
    engine.close().expect("close");

    // Record every frame with the reader (on a clean log it must open in the strictest mode)
    // and check it against the model: one frame per request, in order.
    let reader =
        LogReader::open_with(dir.path(), RecoveryMode::AbsoluteConsistency).expect("reader");
    let seg_files = reader.segments();
    let mut frames = Vec::new();
    let mut state = State::new();
    for (i, b) in reader.batches().enumerate() {
        assert_eq!(b.seq(), i as u64 + 1, "fixture: batch sequence");
        apply_batch(&mut state, &b);
        assert_eq!(
            &state,
            &models[i + 1],
            "fixture: frame {} is not request {i}",
            i + 1
        );
        let seg = seg_files
            .iter()
            .position(|s| s.path == b.segment())
            .expect("batch segment is listed");
        // The records, and the trailer (request ids and commit time) after them.
        let body_len: u64 = b
            .records()
            .map(|r| 7 + r.key.len() as u64 + r.value.len() as u64)
            .sum::<u64>()
            + b.commit_time()
                .map_or(0, |_| trailer_len(b.ids().len()) as u64);
        frames.push(FrameInfo {
            seg,
            offset: b.offset(),
            len: b.frame_len() as u64,
            body_end: b.offset() + 32 + body_len,
            seq: b.seq().get(),
        });
    }
    assert_eq!(
        frames.len() + 1,
        models.len(),
        "fixture: one frame per request"
    );
    let files: Vec<(String, Vec<u8>)> = seg_files
        .iter()
        .map(|s| {
            let bytes = std::fs::read(&s.path).expect("read segment");
            assert_eq!(bytes.len() as u64, s.bytes);
            assert_eq!(s.bytes, SEGMENT_BYTES);
            let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, bytes)
        })
        .collect();
    // The frame table agrees with the bytes: contiguous frames from offset 64, body_len in
    // the header, a non-zero last body byte.
    for (i, f) in frames.iter().enumerate() {
        let image = &files[f.seg].1;
        let expected_off = if i > 0 && frames[i - 1].seg == f.seg {
            frames[i - 1].offset + frames[i - 1].len
        } else {
            64
        };
        assert_eq!(f.offset, expected_off, "fixture: frame {} offset", f.seq);
        let o = f.offset as usize;
        assert_eq!(&image[o..o + 4], b"MLFR");
        let body_len = u32::from_le_bytes(image[o + 8..o + 12].try_into().unwrap()) as u64;
        assert_eq!(f.body_end, f.offset + 32 + body_len, "fixture: body_len");
        assert_eq!(f.len, (32 + body_len + 7) & !7, "fixture: frame_len");
        assert_ne!(image[f.body_end as usize - 1], 0);
    }
    let fx = Fixture {
        files,
        frames,
        models,
        keys,
        build_secs: started.elapsed().as_secs_f64(),
    };
    let in_last = fx.frames.len() - fx.first_frame_of(fx.last_seg());
    assert!(fx.files.len() >= 4 && in_last >= MIN_LAST_SEGMENT_FRAMES);
    for s in 0..fx.files.len() {
        assert!(
            fx.frames_through(s) > fx.first_frame_of(s),
            "segment {s} holds frames"
        );
    }
    fx
}

/// What opening a damaged copy must give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// No damage reported; the state after the first `kept` frames.
    Clean { kept: usize },
    /// A bad frame (or header, offset 0) in segment `seg` at `offset`; `kept` frames before it.
    /// `tail`: it is in the last segment and no valid frame follows it there.
    Damage {
        seg: usize,
        offset: u64,
        kept: usize,
        tail: bool,
    },
    /// A bad frame in the last segment that valid frames follow at least
    /// `UNDURABLE_FRAMES_MAX` batches later: damage to durable history, which an engine
    /// refuses (`Error::DamagedHistory`) unless it opens in `PointInTime` (which cuts there,
    /// as for `Damage`). Only for the engine: a reader stops there.
    Lost {
        seg: usize,
        offset: u64,
        kept: usize,
        first_lost: u64,
        last_lost: u64,
    },
}

/// Who opens the copy: the engine (a writer, which also checks the zeros after the last frame
/// of the last segment) or a `LogReader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opener {
    Engine,
    Reader,
}

/// Whether the last segment's header, with byte `p` changed to `new`, could be what a roll's
/// header write torn by a power loss leaves over the file's earlier bytes (docs/FORMAT.md,
/// "Why a crash loses nothing acknowledged", roll steps 2-6): each byte the new header's or
/// zero, the id and CRC anything, the version one this build reads, the flags known ones.
/// (A statement of the rule apart from the library's own, `verify::torn_activation`.)
fn torn_roll_header(p: u64, new: u8, old: u8) -> bool {
    match p {
        8 => new <= 5,
        9..12 | 33..36 => new == 0,
        16..24 | 60..64 => true,
        32 => new & !3 == 0,
        _ => new == old || new == 0,
    }
}

/// Where byte `p` of segment `seg` is, and what changing it (to `new`) does.
fn expect_changed_byte(fx: &Fixture, seg: usize, p: u64, new: u8, opener: Opener) -> Expect {
    let total = fx.frames.len();
    let last = seg == fx.last_seg();
    let size = fx.files[seg].1.len() as u64;
    if p < 64 {
        let kept = fx.first_frame_of(seg);
        // In the last segment, a header that a torn roll could have left goes as a torn tail
        // does (nothing in the segment was acknowledged, unless frames far enough on show
        // durable history: the engine looks).
        if last && torn_roll_header(p, new, fx.files[seg].1[p as usize]) {
            let through = fx.frames_through(seg);
            if opener == Opener::Engine && through > kept {
                let (first_seq, last_seq) = (fx.frames[kept].seq, fx.frames[through - 1].seq);
                if last_seq >= first_seq + UNDURABLE_FRAMES_MAX {
                    return Expect::Lost {
                        seg,
                        offset: 0,
                        kept,
                        first_lost: first_seq,
                        last_lost: last_seq,
                    };
                }
            }
            return Expect::Damage {
                seg,
                offset: 0,
                kept,
                tail: true,
            };
        }
        // Any other bad header is never a crash artifact (a header is synced before anything
        // in its segment is acknowledged): damage before the tail even in the last segment.
        return Expect::Damage {
            seg,
            offset: 0,
            kept,
            tail: false,
        };
    }
    let (first, through) = (fx.first_frame_of(seg), fx.frames_through(seg));
    for j in first..through {
        let f = &fx.frames[j];
        if p >= f.offset && p < f.body_end {
            let last_seq = fx.frames[through - 1].seq;
            if last && opener == Opener::Engine && last_seq >= f.seq + UNDURABLE_FRAMES_MAX {
                return Expect::Lost {
                    seg,
                    offset: f.offset,
                    kept: j,
                    first_lost: f.seq,
                    last_lost: last_seq,
                };
            }
            return Expect::Damage {
                seg,
                offset: f.offset,
                kept: j,
                tail: last,
            };
        }
        if p >= f.body_end && p < f.offset + f.len {
            return Expect::Clean { kept: total }; // padding: not covered by the CRC
        }
    }
    let end = fx.seg_end(seg);
    assert!(p >= end);
    // The slot where the next frame header would be is decoded by everyone; the rest of the
    // zeros only by the engine, and only in the last segment.
    let in_next_header = end + 32 <= size && p < end + 32;
    if in_next_header || (last && opener == Opener::Engine) {
        Expect::Damage {
            seg,
            offset: end,
            kept: through,
            tail: last,
        }
    } else {
        Expect::Clean { kept: total }
    }
}

/// Replaces the contents of `dir` by the fixture's segment files, with `edit` applied.
fn materialize(dir: &Path, fx: &Fixture, edit: &dyn Fn(usize, &mut Vec<u8>)) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
    for (i, (name, bytes)) in fx.files.iter().enumerate() {
        let mut b = bytes.clone();
        edit(i, &mut b);
        std::fs::write(dir.join(name), &b).expect("write segment copy");
    }
}

fn is_corrupt_at(e: &Error, fx: &Fixture, seg: usize, offset: Option<u64>) -> bool {
    match e {
        Error::Corrupt {
            path, offset: o, ..
        } => {
            path.file_name()
                .is_some_and(|n| n == fx.files[seg].0.as_str())
                && match offset {
                    Some(want) => *o == want,
                    None => true,
                }
        }
        _ => false,
    }
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

type Check = Result<(), String>;

/// Whether `LogReader::check`'s verdict is what `Engine::open` did: clean, the same damage
/// cut off, or the same error (kind, file and offset).
fn check_agrees(
    checked: &mergelog::Result<Option<Damage>>,
    opened: &mergelog::Result<Engine>,
) -> Check {
    let place = |e: &Error| match e {
        Error::Corrupt { path, offset, .. } => Some(("Corrupt", path.clone(), *offset)),
        Error::DamagedHistory { path, offset, .. } => {
            Some(("DamagedHistory", path.clone(), *offset))
        }
        _ => None,
    };
    match (checked, opened) {
        (Ok(d), Ok(engine)) if *d == engine.open_report().truncated => Ok(()),
        (Err(c), Err(o)) if place(c).is_some() && place(c) == place(o) => Ok(()),
        (c, o) => Err(format!(
            "LogReader::check said {c:?}, the engine's open {:?}",
            o.as_ref().map(|e| &e.open_report().truncated)
        )),
    }
}

/// Opens the damaged copy in `dir` with the engine in `mode` and checks the outcome against
/// `expect`. With `follow_up`, a successful open is continued: one more write, close, and the
/// log must then be clean (open in `AbsoluteConsistency`) and hold the kept frames plus that
/// write.
fn check_engine(
    fx: &Fixture,
    dir: &Path,
    mode: RecoveryMode,
    expect: Expect,
    follow_up: bool,
) -> Check {
    let before = dir_contents(dir);
    // `LogReader::check` says what this open will do, changing nothing.
    let checked = LogReader::check(dir, mode, Durability::Sync);
    ensure!(
        dir_contents(dir) == before,
        "LogReader::check changed the files"
    );
    let opened = Engine::open(dir, config(mode));
    check_agrees(&checked, &opened)?;
    let expect = match (expect, mode) {
        (
            Expect::Lost {
                seg, offset, kept, ..
            },
            RecoveryMode::PointInTime,
        ) => Expect::Damage {
            seg,
            offset,
            kept,
            tail: true,
        },
        (
            Expect::Lost {
                seg,
                offset,
                first_lost,
                last_lost,
                ..
            },
            _,
        ) => {
            return match opened {
                Ok(engine) => Err(format!(
                    "opened (report {:?}, {} keys) where Error::DamagedHistory was expected",
                    engine.open_report(),
                    engine.len(),
                )),
                Err(Error::DamagedHistory {
                    path,
                    offset: o,
                    first_lost: f,
                    last_lost: l,
                    ..
                }) => {
                    ensure!(
                        path.file_name()
                            .is_some_and(|n| n == fx.files[seg].0.as_str())
                            && (o, f, l) == (offset, first_lost, last_lost),
                        "DamagedHistory at {} offset {o}, batches {f}..={l}",
                        path.display()
                    );
                    ensure!(
                        dir_contents(dir) == before,
                        "the refusing open changed the files (it must keep the evidence)"
                    );
                    Ok(())
                }
                Err(e) => Err(format!(
                    "got {e:?} where Error::DamagedHistory was expected"
                )),
            };
        }
        (e, _) => e,
    };
    let (engine, kept) = match (expect, mode) {
        (Expect::Clean { kept }, _) => {
            let engine = opened.map_err(|e| format!("open failed: {e}"))?;
            ensure!(
                engine.open_report().truncated.is_none(),
                "reported damage {:?}",
                engine.open_report().truncated
            );
            (engine, kept)
        }
        (
            Expect::Damage {
                seg, offset, kept, ..
            },
            RecoveryMode::PointInTime,
        )
        | (
            Expect::Damage {
                seg,
                offset,
                kept,
                tail: true,
            },
            RecoveryMode::TolerateCorruptedTail,
        ) => {
            let engine = opened.map_err(|e| format!("open failed: {e}"))?;
            let Some(damage) = engine.open_report().truncated.clone() else {
                return Err("the damage was not reported".into());
            };
            ensure!(
                damage.path.file_name().unwrap().to_string_lossy() == fx.files[seg].0
                    && damage.offset == offset,
                "damage reported as {damage:?}"
            );
            (engine, kept)
        }
        (Expect::Damage { seg, offset, .. }, _) => {
            return match opened {
                Ok(engine) => Err(format!(
                    "opened (report {:?}, {} keys) where Error::Corrupt was expected",
                    engine.open_report(),
                    engine.len(),
                )),
                Err(e) => {
                    ensure!(is_corrupt_at(&e, fx, seg, Some(offset)), "got {e:?}");
                    Ok(())
                }
            };
        }
        (Expect::Lost { .. }, _) => unreachable!("handled above"),
    };
    check_open_engine(fx, &engine, kept)?;
    if follow_up {
        continue_after_open(fx, dir, engine, kept)?;
    }
    Ok(())
}

/// The engine's state (for_each and read) is the state after the first `kept` frames.
fn check_open_engine(fx: &Fixture, engine: &Engine, kept: usize) -> Check {
    let state = engine_state(engine);
    ensure!(
        state == fx.models[kept],
        "the state is not the state after the first {kept} frames:\n{}",
        state_diff(&state, &fx.models[kept])
    );
    assert_reads_match(engine, &state, fx.keys.iter().map(|k| &k[..]), "after open");
    ensure!(
        engine.open_report().batches == kept as u64,
        "OpenReport::batches is {}, not {kept}",
        engine.open_report().batches
    );
    Ok(())
}

/// Writes once more after a (repairing) open, closes, and checks the log is now clean.
fn continue_after_open(fx: &Fixture, dir: &Path, engine: Engine, kept: usize) -> Check {
    let k = b"key-after-recovery".to_vec();
    let v = format!("written after keeping {kept} frames").into_bytes();
    let ticket = engine
        .put(&k, &v)
        .map_err(|e| format!("put after recovery: {e}"))?;
    ticket
        .wait_timeout(WAIT_MAX)
        .map_err(|e| format!("put after recovery: {e}"))?;
    engine
        .close()
        .map_err(|e| format!("close after recovery: {e}"))?;
    let mut want = fx.models[kept].clone();
    want.insert(k, v);
    let reader = LogReader::open_with(dir, RecoveryMode::AbsoluteConsistency)
        .map_err(|e| format!("the repaired log is not clean: {e}"))?;
    let mut state = State::new();
    let mut n = 0u64;
    for b in reader.batches() {
        n += 1;
        ensure!(
            b.seq() == n,
            "repaired log: batch {} where {n} was expected",
            b.seq()
        );
        apply_batch(&mut state, &b);
    }
    ensure!(
        n == kept as u64 + 1,
        "repaired log: {n} batches, not {}",
        kept + 1
    );
    ensure!(
        state == want,
        "repaired log: state:\n{}",
        state_diff(&state, &want)
    );
    let engine = Engine::open(dir, config(RecoveryMode::AbsoluteConsistency))
        .map_err(|e| format!("reopening the repaired log: {e}"))?;
    let state = engine_state(&engine);
    ensure!(
        state == want,
        "repaired log reopened:\n{}",
        state_diff(&state, &want)
    );
    Ok(())
}

/// Opens the damaged copy with a `LogReader` in `mode` and checks the outcome.
fn check_reader(fx: &Fixture, dir: &Path, mode: RecoveryMode, expect: Expect) -> Check {
    let opened = LogReader::open_with(dir, mode);
    let (reader, kept) = match (expect, mode) {
        (Expect::Clean { kept }, _) => {
            let r = opened.map_err(|e| format!("open failed: {e}"))?;
            ensure!(r.damage().is_none(), "reported damage {:?}", r.damage());
            (r, kept)
        }
        (
            Expect::Damage {
                seg, offset, kept, ..
            },
            RecoveryMode::PointInTime,
        )
        | (
            Expect::Damage {
                seg,
                offset,
                kept,
                tail: true,
            },
            RecoveryMode::TolerateCorruptedTail,
        ) => {
            let r = opened.map_err(|e| format!("open failed: {e}"))?;
            let Some(damage) = r.damage() else {
                return Err("the damage was not reported".into());
            };
            ensure!(
                damage.path.file_name().unwrap().to_string_lossy() == fx.files[seg].0
                    && damage.offset == offset,
                "damage reported as {damage:?}"
            );
            (r, kept)
        }
        (Expect::Damage { seg, offset, .. }, _) => {
            return match opened {
                Ok(r) => Err(format!(
                    "opened (damage {:?}, next_seq {}) where Error::Corrupt was expected",
                    r.damage(),
                    r.next_seq(),
                )),
                Err(e) => {
                    ensure!(is_corrupt_at(&e, fx, seg, Some(offset)), "got {e:?}");
                    Ok(())
                }
            };
        }
        (Expect::Lost { .. }, _) => return Err("a reader never expects Lost".into()),
    };
    let mut state = State::new();
    let mut n = 0usize;
    for b in reader.batches() {
        ensure!(n < fx.frames.len(), "more batches than the log holds");
        let f = &fx.frames[n];
        ensure!(
            (b.seq().get(), b.offset(), b.frame_len() as u64) == (f.seq, f.offset, f.len),
            "batch {} at offset {} (len {}) where {} at {} (len {}) was expected",
            b.seq(),
            b.offset(),
            b.frame_len(),
            f.seq,
            f.offset,
            f.len
        );
        n += 1;
        apply_batch(&mut state, &b);
    }
    ensure!(n == kept, "{n} batches yielded, not {kept}");
    ensure!(
        reader.next_seq() == kept as u64 + 1,
        "next_seq {} after {kept} batches",
        reader.next_seq()
    );
    ensure!(
        state == fx.models[kept],
        "replay is not the state after {kept} frames:\n{}",
        state_diff(&state, &fx.models[kept])
    );
    Ok(())
}

/// Failures collected over many cases, so that one run shows every kind of wrong outcome.
#[derive(Default)]
struct Failures {
    cases: usize,
    /// (what, expectation kind) -> (count, first message).
    by_kind: std::collections::BTreeMap<String, (usize, String)>,
}

impl Failures {
    fn add(&mut self, kind: String, message: String) {
        let e = self.by_kind.entry(kind).or_insert((0, message));
        e.0 += 1;
    }

    fn finish(self, what: &str) {
        if self.by_kind.is_empty() {
            return;
        }
        let mut msg = format!("{what}: wrong outcomes (of {} cases):\n", self.cases);
        for (kind, (count, first)) in &self.by_kind {
            msg.push_str(&format!("- {count} x {kind}; first: {first}\n"));
        }
        panic!("{msg}");
    }
}

fn expect_kind(e: Expect) -> &'static str {
    match e {
        Expect::Clean { .. } => "expect clean",
        Expect::Damage { tail: true, .. } => "expect damage at the tail",
        Expect::Damage { offset: 0, .. } => "expect bad segment header",
        Expect::Damage { .. } => "expect damage before the tail",
        Expect::Lost { .. } => "expect damage to durable history",
    }
}

/// Every check of one damaged copy: readers in each mode, then the engine in each mode (the
/// copy restored before each engine, which may repair it).
#[allow(clippy::too_many_arguments)]
fn check_all(
    fx: &Fixture,
    dir: &Path,
    edit: &dyn Fn(usize, &mut Vec<u8>),
    engine_expect: Expect,
    reader_expect: Expect,
    follow_up: bool,
    ctx: &str,
    failures: &mut Failures,
) {
    failures.cases += 1;
    materialize(dir, fx, edit);
    for mode in MODES {
        if let Err(m) = check_reader(fx, dir, mode, reader_expect) {
            failures.add(
                format!("reader {mode:?}, {}", expect_kind(reader_expect)),
                format!("{ctx}, expected {reader_expect:?}: {m}"),
            );
        }
    }
    for mode in MODES {
        materialize(dir, fx, edit);
        if let Err(m) = check_engine(fx, dir, mode, engine_expect, follow_up) {
            failures.add(
                format!("engine {mode:?}, {}", expect_kind(engine_expect)),
                format!("{ctx}, expected {engine_expect:?}: {m}"),
            );
        }
    }
}

#[test]
fn clean_log_opens_in_every_mode() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = Expect::Clean {
        kept: fx.frames.len(),
    };
    let mut failures = Failures::default();
    check_all(
        fx,
        dir.path(),
        &|_, _| {},
        all,
        all,
        true,
        "clean copy",
        &mut failures,
    );
    failures.finish("clean copy");
    eprintln!(
        "fixture: {} frames in {} segments ({} in the last), built in {:.1} s",
        fx.frames.len(),
        fx.files.len(),
        fx.frames.len() - fx.first_frame_of(fx.last_seg()),
        fx.build_secs
    );
}

/// A torn write of the last frame: its bytes from `k` on never reached the disk (zeros), for
/// every `k` inside the frame. Also a torn write that left garbage, and one whose header never
/// arrived while its body did.
#[test]
fn torn_last_frame_is_cut_at_every_offset() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let total = fx.frames.len();
    let last = fx.last_seg();
    let f = *fx.frames.last().unwrap();
    assert_eq!(f.seg, last);
    let mut failures = Failures::default();
    for k in f.offset..f.offset + f.len {
        let expect = if k == f.offset {
            // Zeros from the frame start: a clean end, one frame shorter.
            Expect::Clean { kept: total - 1 }
        } else if k < f.body_end {
            Expect::Damage {
                seg: last,
                offset: f.offset,
                kept: total - 1,
                tail: true,
            }
        } else {
            Expect::Clean { kept: total } // only padding zeroed: the frame is intact
        };
        let edit = move |s: usize, b: &mut Vec<u8>| {
            if s == last {
                b[k as usize..].fill(0);
            }
        };
        let ctx = format!("zeros from offset {k} of the last frame at {}", f.offset);
        check_all(
            fx,
            dir.path(),
            &edit,
            expect,
            expect,
            true,
            &ctx,
            &mut failures,
        );
    }
    // Garbage instead of zeros from k to the end of the body.
    let mut rng = StdRng::seed_from_u64(7);
    for k in (f.offset + 1..f.body_end).step_by(5) {
        let garbage: Vec<u8> = (k..f.body_end).map(|_| rng.random()).collect();
        let original = &fx.files[last].1[k as usize..f.body_end as usize];
        if garbage == original {
            continue;
        }
        let expect = Expect::Damage {
            seg: last,
            offset: f.offset,
            kept: total - 1,
            tail: true,
        };
        let edit = move |s: usize, b: &mut Vec<u8>| {
            if s == last {
                b[k as usize..f.body_end as usize].copy_from_slice(&garbage);
            }
        };
        let ctx = format!("garbage from offset {k} of the last frame at {}", f.offset);
        check_all(
            fx,
            dir.path(),
            &edit,
            expect,
            expect,
            true,
            &ctx,
            &mut failures,
        );
    }
    // The first m header bytes missing, the rest of the frame present. With the whole header
    // zero, a reader sees the end of the log; the engine finds the non-zero bytes after it
    // (the remains of a frame whose header never reached the disk).
    for m in 1..=32u64 {
        let damage = Expect::Damage {
            seg: last,
            offset: f.offset,
            kept: total - 1,
            tail: true,
        };
        // The header's last bytes may be zero already (a small ops_acknowledged).
        let header = &fx.files[last].1[f.offset as usize..f.offset as usize + 32];
        let reader_expect = if header[m as usize..].iter().all(|&b| b == 0) {
            Expect::Clean { kept: total - 1 }
        } else {
            damage
        };
        let edit = move |s: usize, b: &mut Vec<u8>| {
            if s == last {
                b[f.offset as usize..(f.offset + m) as usize].fill(0);
            }
        };
        let ctx = format!("first {m} header bytes of the last frame zeroed");
        check_all(
            fx,
            dir.path(),
            &edit,
            damage,
            reader_expect,
            true,
            &ctx,
            &mut failures,
        );
    }
    eprintln!("torn tail: {} cases", failures.cases);
    failures.finish("torn tail");
}

/// A segment file cut short (or grown) with `set_len`: its size disagrees with its header, which
/// is damage at offset 0. An error naming the file, or a reported cut that keeps a prefix
/// holding every earlier segment — never a panic, never silent. `AbsoluteConsistency` always
/// refuses.
#[test]
fn last_segment_cut_short_is_an_error_or_a_cut() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let last = fx.last_seg();
    let name = &fx.files[last].0;
    let first = fx.first_frame_of(last);
    let lf = *fx.frames.last().unwrap();
    let ff = fx.frames[first];
    let lens = [
        0,
        1,
        32,
        63,
        64,
        65,
        96,
        ff.offset + 10,
        ff.offset + ff.len,
        lf.offset,
        lf.offset + 9,
        lf.body_end,
        lf.offset + lf.len,
        SEGMENT_BYTES / 2 + 3,
        SEGMENT_BYTES - 8,
        SEGMENT_BYTES - 1,
        SEGMENT_BYTES + 4096,
    ];
    let mut failures = Failures::default();
    for len in lens {
        let ctx = format!("last segment {name} set_len({len})");
        for mode in MODES {
            failures.cases += 1;
            materialize(dir.path(), fx, &|_, _| {});
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(name))
                .and_then(|f| f.set_len(len))
                .expect("set_len");
            // Reader first (changes nothing), then the engine.
            let must_refuse = mode == RecoveryMode::AbsoluteConsistency;
            if let Err(m) = check_cut_reader(fx, dir.path(), mode, must_refuse) {
                failures.add(format!("reader {mode:?}"), format!("{ctx}: {m}"));
            }
            if let Err(m) = check_cut_engine(fx, dir.path(), mode, must_refuse) {
                failures.add(format!("engine {mode:?}"), format!("{ctx}: {m}"));
            }
        }
    }
    failures.finish("set_len");
}

fn check_cut_reader(fx: &Fixture, dir: &Path, mode: RecoveryMode, must_refuse: bool) -> Check {
    let last = fx.last_seg();
    match LogReader::open_with(dir, mode) {
        Err(e) => {
            ensure!(
                is_corrupt_at(&e, fx, last, None),
                "expected Error::Corrupt naming the file, got {e:?}"
            );
        }
        Ok(r) => {
            ensure!(
                !must_refuse,
                "opened (damage {:?}, next_seq {}) where Error::Corrupt was expected",
                r.damage(),
                r.next_seq()
            );
            let Some(d) = r.damage() else {
                return Err("opened without reporting damage".into());
            };
            ensure!(d.path.ends_with(&fx.files[last].0), "damage {d:?}");
            let mut state = State::new();
            let mut n = 0;
            for b in r.batches() {
                n += 1;
                ensure!(b.seq() == n as u64, "batch sequence {} at {n}", b.seq());
                apply_batch(&mut state, &b);
            }
            ensure!(
                n >= fx.first_frame_of(last),
                "lost frames of earlier segments ({n} kept)"
            );
            ensure!(state == fx.models[n], "state after {n} frames");
        }
    }
    Ok(())
}

fn check_cut_engine(fx: &Fixture, dir: &Path, mode: RecoveryMode, must_refuse: bool) -> Check {
    let last = fx.last_seg();
    match Engine::open(dir, config(mode)) {
        Err(e) => {
            ensure!(
                is_corrupt_at(&e, fx, last, None),
                "expected Error::Corrupt naming the file, got {e:?}"
            );
        }
        Ok(engine) => {
            ensure!(
                !must_refuse,
                "opened (report {:?}) where Error::Corrupt was expected",
                engine.open_report()
            );
            let Some(d) = engine.open_report().truncated.clone() else {
                return Err("opened without reporting damage".into());
            };
            ensure!(d.path.ends_with(&fx.files[last].0), "damage {d:?}");
            let n = engine.open_report().batches as usize;
            ensure!(
                n >= fx.first_frame_of(last),
                "lost frames of earlier segments ({n} kept)"
            );
            check_open_engine(fx, &engine, n)?;
            continue_after_open(fx, dir, engine, n)?;
        }
    }
    Ok(())
}

/// Single bit flips at random positions of all segments, one per copy.
#[test]
fn bit_flips_anywhere_keep_exactly_the_valid_prefix() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let flips: usize = std::env::var("MERGELOG_CORRUPTION_FLIPS")
        .ok()
        .map(|s| s.parse().expect("MERGELOG_CORRUPTION_FLIPS is a number"))
        .unwrap_or(1200);
    let seed: u64 = std::env::var("MERGELOG_CORRUPTION_SEED")
        .ok()
        .map(|s| s.parse().expect("MERGELOG_CORRUPTION_SEED is a number"))
        .unwrap_or(0x0b17_f11b);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let last = fx.last_seg();
    // [segment header, frame, padding, zeros in the next header slot, other zeros] hits.
    let mut hits = [0usize; 5];
    let mut detected = [0usize; 2];
    let mut failures = Failures::default();
    for i in 0..flips {
        let (seg, p) = pick_position(fx, &mut rng);
        let bit = rng.random_range(0..8u32);
        let new = fx.files[seg].1[p as usize] ^ (1 << bit);
        let engine_expect = expect_changed_byte(fx, seg, p, new, Opener::Engine);
        let reader_expect = expect_changed_byte(fx, seg, p, new, Opener::Reader);
        let end = fx.seg_end(seg);
        let region = if p < 64 {
            0
        } else if p >= end {
            if p < end + 32 {
                3
            } else {
                4
            }
        } else if engine_expect
            == (Expect::Clean {
                kept: fx.frames.len(),
            })
        {
            2
        } else {
            1
        };
        hits[region] += 1;
        detected[0] += matches!(engine_expect, Expect::Damage { .. }) as usize;
        detected[1] += matches!(reader_expect, Expect::Damage { .. }) as usize;
        let edit = move |s: usize, b: &mut Vec<u8>| {
            if s == seg {
                b[p as usize] ^= 1 << bit;
            }
        };
        let ctx = format!(
            "flip {i} (seed {seed}): bit {bit} of byte {p} of segment {seg} ({}{})",
            fx.files[seg].0,
            if seg == last { ", the last" } else { "" }
        );
        check_all(
            fx,
            dir.path(),
            &edit,
            engine_expect,
            reader_expect,
            i % 8 == 0,
            &ctx,
            &mut failures,
        );
    }
    eprintln!(
        "bit flips: {flips} in {:.1?}; hits: {} segment header, {} frame, {} padding, {} next \
         header slot, {} other zeros; detected by the engine {}, by readers {}",
        started.elapsed(),
        hits[0],
        hits[1],
        hits[2],
        hits[3],
        hits[4],
        detected[0],
        detected[1]
    );
    failures.finish("bit flips");
    // Every kind of position must have been tried, or the test proves less than it says.
    if flips >= 200 {
        assert!(
            hits.iter().all(|&h| h > 0),
            "some region never hit: {hits:?}"
        );
    }
}

/// Half the flips uniform over all bytes; half aimed at the places where the rules differ.
fn pick_position(fx: &Fixture, rng: &mut StdRng) -> (usize, u64) {
    let nseg = fx.files.len();
    let last = fx.last_seg();
    if rng.random_bool(0.5) {
        let seg = rng.random_range(0..nseg);
        return (seg, rng.random_range(0..SEGMENT_BYTES));
    }
    match rng.random_range(0..7) {
        0 => (rng.random_range(0..nseg), rng.random_range(0..64)),
        1 => {
            // A frame header.
            let f = fx.frames[rng.random_range(0..fx.frames.len())];
            (f.seg, f.offset + rng.random_range(0..32))
        }
        2 => {
            // A frame of the last segment, the last frame often.
            let first = fx.first_frame_of(last);
            let j = if rng.random_bool(0.4) {
                fx.frames.len() - 1
            } else {
                rng.random_range(first..fx.frames.len())
            };
            let f = fx.frames[j];
            (f.seg, rng.random_range(f.offset..f.body_end))
        }
        3 => {
            // Padding (a frame that has some).
            loop {
                let f = fx.frames[rng.random_range(0..fx.frames.len())];
                if f.body_end < f.offset + f.len {
                    return (f.seg, rng.random_range(f.body_end..f.offset + f.len));
                }
            }
        }
        4 => {
            // The slot of the next frame header after a segment's last frame.
            let seg = rng.random_range(0..nseg);
            let end = fx.seg_end(seg);
            (seg, (end + rng.random_range(0..32)).min(SEGMENT_BYTES - 1))
        }
        5 => {
            // The zeros after the last segment's frames.
            let end = fx.seg_end(last);
            (last, rng.random_range(end..SEGMENT_BYTES))
        }
        _ => {
            // The zeros after a non-last segment's frames, past the next header slot.
            let seg = rng.random_range(0..last);
            let end = fx.seg_end(seg);
            (seg, rng.random_range(end..SEGMENT_BYTES))
        }
    }
}
