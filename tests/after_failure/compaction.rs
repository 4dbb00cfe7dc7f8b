//! Power loss during a compaction (issue 16 §2): "crash-safe at every step".
//!
//! A template log is written once per configuration (both write paths; retired segments
//! removed, or renamed into the pool with `recycle_segments`): an overwrite workload over
//! a small key space, with deletes spread over every segment (some keys deleted for good
//! early, some late, some deleted and put again), a few cold keys written once in the first
//! segment, and one request in ten carrying a request id, so that retiring the prefix
//! carries ids into the `ids` file. Every request is acknowledged, so the state before the
//! compaction is exactly the model's.
//!
//! A dry run of `Engine::compact` on a copy of the template, through `PowerLossIo` wrapped in
//! a hook that lists the operations the compaction issues (the compaction frames' writes and
//! syncs, a roll's rename and directory sync, the `ids` file's create, write, sync, rename and
//! directory sync, each retired segment's removal or rename into the pool and the directory
//! sync after it, the pool's evictions), gives their number `N`. Then for every `k` in
//! `1..=N+1` a fresh copy is compacted with the power cut at its `k`th operation (`N + 1`:
//! after the compaction finished): that operation and every later one fail, the engine is
//! closed, and `lose_power` takes back what was not durable (unsynced writes torn or dropped,
//! unsynced directory changes undone). The log must then, read-only (`LogReader`) and through
//! a reopened engine, hold exactly the pre-compaction state: every acknowledged put with its
//! value, no key whose last acknowledged operation was a delete, every request id still
//! remembered; and a second compaction must complete and keep that state across a reopen.
//! The operations of the background thread that prepares the next segment file are not
//! counted (they are no step of the compaction, and would make the count racy).
//!
//! A failed sync that is not a power cut (`PowerLossIo::failing_sync`, the kernel's
//! "fsyncgate" behaviour) of each compaction frame in turn: `compact` returns the failure,
//! every later call is refused, and after a reopen (in the same boot, through the same
//! storage, or not) and a power loss the state is still the pre-compaction one.
//!
//! Environment: `MERGELOG_COMPACT_CUT_SEEDS` (default 1): power losses per cut point, each
//! with its own tearing. Figures go to stderr (`--nocapture`).

use crate::common::log::segment_files;
use crate::common::model::state_diff;
use crate::common::power::{lose_power, power_loss_config, Damage, PowerLossIo};
use crate::common::{assert_reads_match, assert_refuses, engine_state, State, WAIT_MAX};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, Error, IdTicket, LogReader, RequestId, Ticket, WritePath};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Hot keys, put (or deleted) every round.
const KEYS: usize = 90;
const ROUNDS: usize = 8;
/// Cold keys, put once in round 0.
const COLD: usize = 24;
/// Puts of the churning keys at the end (about 600 bytes each).
const CHURN: usize = 200;

fn config(write_path: WritePath, recycle_segments: usize) -> Config {
    Config {
        recycle_segments,
        ..power_loss_config(write_path)
    }
}

fn hot(i: usize) -> Vec<u8> {
    format!("hot-{i:03}").into_bytes()
}

fn cold(i: usize) -> Vec<u8> {
    format!("cold-{i:03}").into_bytes()
}

/// A unique value of 60 to about 1,100 bytes.
fn value(key: &[u8], round: usize) -> Vec<u8> {
    let mut v = format!("{}@{round}|", String::from_utf8_lossy(key)).into_bytes();
    let len = 60 + (key.iter().map(|&b| b as usize).sum::<usize>() * 37 + round * 251) % 1040;
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v
}

/// A log directory written once, and what it must hold.
struct Template {
    dir: tempfile::TempDir,
    config: Config,
    state: State,
    /// Every key the workload wrote: the keys not in `state` were deleted last.
    keys: BTreeSet<Vec<u8>>,
    /// Every request id the workload used (all logged, none a duplicate).
    ids: Vec<RequestId>,
    requests: usize,
    segments: usize,
}

impl Template {
    fn deleted(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.iter().filter(|k| !self.state.contains_key(*k))
    }
}

/// The requests of one round in flight.
#[derive(Default)]
struct Round {
    plain: Vec<Ticket>,
    with_id: Vec<IdTicket>,
}

impl Round {
    fn wait(self) {
        for t in self.plain {
            t.wait_timeout(WAIT_MAX).expect("workload request");
        }
        for t in self.with_id {
            let outcome = t.wait_timeout(WAIT_MAX).expect("workload request");
            assert!(
                matches!(outcome, mergelog::Outcome::Written(_)),
                "{outcome:?}"
            );
        }
    }
}

/// Puts (`Some`) or deletes `key`, with a request id one time in ten.
fn submit(e: &Engine, t: &mut Template, r: &mut Round, key: Vec<u8>, value: Option<Vec<u8>>) {
    t.requests += 1;
    let id = (t.requests % 10 == 3).then(|| RequestId::from(t.ids.len() as u128 + 1));
    match (&value, id) {
        (Some(v), None) => r.plain.push(e.put(&key, v).expect("put")),
        (None, None) => r.plain.push(e.delete(&key).expect("delete")),
        (Some(v), Some(id)) => r.with_id.push(e.put_with_id(id, &key, v).expect("put")),
        (None, Some(id)) => r.with_id.push(e.delete_with_id(id, &key).expect("delete")),
    }
    t.ids.extend(id);
    match value {
        Some(v) => t.state.insert(key.clone(), v),
        None => t.state.remove(&key),
    };
    t.keys.insert(key);
}

/// Writes the workload (see the module doc) and closes the engine.
fn template(write_path: WritePath, recycle_segments: usize) -> Template {
    template_with(write_path, recycle_segments, COLD)
}

/// As [`template`], with `cold` cold keys.
fn template_with(write_path: WritePath, recycle_segments: usize, cold_keys: usize) -> Template {
    let mut t = Template {
        dir: tempfile::tempdir().expect("tempdir"),
        config: config(write_path, recycle_segments),
        state: State::new(),
        keys: BTreeSet::new(),
        ids: Vec::new(),
        requests: 0,
        segments: 0,
    };
    let engine = Engine::open(t.dir.path(), t.config.clone()).expect("open the template");
    for round in 0..ROUNDS {
        let mut r = Round::default();
        if round == 0 {
            for i in 0..cold_keys {
                submit(&engine, &mut t, &mut r, cold(i), Some(value(&cold(i), 0)));
            }
        }
        for i in 0..KEYS {
            // Deletes move through the key space: a key deleted in round `d` is put again
            // in later rounds, except the last tenth of the keys, deleted for good.
            let deleted = (i + round) % 7 == 0 || (i >= KEYS * 9 / 10 && round >= i % 4);
            let v = (!deleted).then(|| value(&hot(i), round));
            submit(&engine, &mut t, &mut r, hot(i), v);
        }
        // A third of the cold keys deleted for good mid-way: the tombstone in a middle
        // segment, the put in the first.
        if round == ROUNDS / 2 {
            for i in 0..cold_keys / 3 {
                submit(&engine, &mut t, &mut r, cold(i), None);
            }
        }
        r.wait();
    }
    // A few churning keys fill the rest of the segment and the next, so that the last
    // values of the others are in complete segments (what a compaction copies); then
    // another third of the cold keys is deleted, in the segment being written.
    // Each put waited for on its own: in one burst the window would coalesce them into four
    // records, and the segment would not fill (the compaction then had almost nothing to
    // copy, one run in a few).
    for n in 0..CHURN {
        let mut r = Round::default();
        let k = format!("churn-{}", n % 4).into_bytes();
        let v = value(&k, n);
        submit(&engine, &mut t, &mut r, k, Some(v));
        r.wait();
    }
    let mut r = Round::default();
    for i in cold_keys / 3..2 * cold_keys / 3 {
        submit(&engine, &mut t, &mut r, cold(i), None);
    }
    r.wait();
    assert_eq!(engine_state(&engine), t.state, "the template's state");
    engine.close().expect("close the template");
    t.segments = segment_files(t.dir.path()).len();
    assert!(
        t.segments >= 6,
        "the workload fills {} segments",
        t.segments
    );
    t
}

/// Copies the template's files into a fresh directory.
pub(crate) fn copy_of(template: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(template).expect("read the template") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
    }
    dir
}

/// An operation as the run lists it: its kind and its file's name.
pub(crate) fn label(op: IoOp, path: &Path) -> String {
    let name = match op {
        // A fresh temporary directory each run.
        IoOp::SyncDir | IoOp::CreateDir => "<log directory>".into(),
        _ => path
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
    };
    format!("{op:?} {name}")
}

/// The kind of step an operation is, for the figures: its kind and the kind of file.
pub(crate) fn step(label: &str) -> String {
    let (op, name) = label.split_once(' ').unwrap_or((label, ""));
    let file = match name {
        n if n.ends_with(".seg") => "segment",
        n if n.starts_with("ids") => "ids file",
        n if n.starts_with("prep") => "prepared segment",
        n if n.starts_with("pool") || n.starts_with("recycle") => "pooled segment",
        n if n.contains("CLEAN") || n.contains("clean") => "clean mark",
        _ => "directory",
    };
    format!("{op} {file}")
}

/// Passes every operation to the power-loss model, and once armed lists those not made by
/// the segment-preparing thread, cutting the power at the `cut_at`th of them.
pub(crate) struct Steps {
    power: Arc<PowerLossIo>,
    pub(crate) armed: AtomicBool,
    cut_at: Option<usize>,
    /// Syncs seen, armed or not, with the sync about to happen: what `failing_sync` counts.
    syncs: Mutex<u64>,
    seen: Mutex<Vec<(String, u64)>>,
    /// The disk has no room for a new segment file: creating a `prep-*` file fails with
    /// ENOSPC (after it is listed and, if its turn, cut at).
    full: AtomicBool,
}

impl Steps {
    pub(crate) fn new(power: Arc<PowerLossIo>, cut_at: Option<usize>) -> Arc<Steps> {
        Arc::new(Steps {
            power,
            armed: AtomicBool::new(false),
            cut_at,
            syncs: Mutex::new(0),
            seen: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
        })
    }

    /// As [`Steps::new`], on a disk with no room for a new segment file from the start.
    fn full(power: Arc<PowerLossIo>, cut_at: Option<usize>) -> Arc<Steps> {
        let steps = Steps::new(power, cut_at);
        steps.full.store(true, Ordering::SeqCst);
        steps
    }

    /// The operations listed, each with the number of the sync it is (0 if it is none).
    pub(crate) fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Io for Steps {
    fn before(&self, op: IoOp, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let sync = match op {
            IoOp::Sync => {
                let mut n = self.syncs.lock().unwrap();
                *n += 1;
                *n
            }
            _ => 0,
        };
        let preparing = std::thread::current().name() == Some("mergelog-prep");
        if self.armed.load(Ordering::SeqCst) && !preparing {
            let mut seen = self.seen.lock().unwrap();
            seen.push((label(op, path), sync));
            if Some(seen.len()) == self.cut_at {
                self.power.cut_now();
            }
        }
        let prep = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("prep-"));
        if op == IoOp::Create && prep && self.full.load(Ordering::SeqCst) {
            self.power.before(op, path, offset, data)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.power.before(op, path, offset, data)
    }

    fn after(&self, op: IoOp, path: &Path) {
        self.power.after(op, path);
    }
}

/// Opens a copy of the template through `steps` and checks its state.
fn open_copy(t: &Template, steps: &Arc<Steps>, ctx: &str) -> (tempfile::TempDir, Engine) {
    open_copy_with(t, &t.config, steps, ctx)
}

/// As [`open_copy`], with `config`.
fn open_copy_with(
    t: &Template,
    config: &Config,
    steps: &Arc<Steps>,
    ctx: &str,
) -> (tempfile::TempDir, Engine) {
    let dir = copy_of(t.dir.path());
    let io: Arc<dyn Io> = steps.clone();
    let engine = Engine::open_with_io(dir.path(), config.clone(), io)
        .unwrap_or_else(|e| panic!("{ctx}: open the copy: {e}"));
    assert_eq!(engine_state(&engine), t.state, "{ctx}: before compacting");
    (dir, engine)
}

/// The operations an undisturbed compaction of the template issues, and what it did.
fn dry_run(t: &Template, ctx: &str) -> Vec<(String, u64)> {
    dry_run_with(t, &t.config, ctx)
}

/// As [`dry_run`], with `config`.
fn dry_run_with(t: &Template, config: &Config, ctx: &str) -> Vec<(String, u64)> {
    dry_run_on(
        t,
        config,
        Steps::new(Arc::new(PowerLossIo::new(u64::MAX, None)), None),
        ctx,
    )
}

/// As [`dry_run`], with `config`, through `steps`.
fn dry_run_on(t: &Template, config: &Config, steps: Arc<Steps>, ctx: &str) -> Vec<(String, u64)> {
    let (dir, engine) = open_copy_with(t, config, &steps, ctx);
    steps.armed.store(true, Ordering::SeqCst);
    let c = engine.compact().expect("the dry run's compaction");
    steps.armed.store(false, Ordering::SeqCst);
    assert!(
        c.segments + 2 >= t.segments && c.batches >= 2 && c.records_copied > 0,
        "{ctx}: the compaction should copy several batches and retire all but the last \
         segments of {}: {c:?}",
        t.segments
    );
    assert_eq!(engine_state(&engine), t.state, "{ctx}: after the dry run");
    engine.close().expect("close");
    drop(dir);
    steps.seen()
}

/// The checks after a power loss (see the module doc); returns the open's report.
fn check_after_power_loss(dir: &Path, t: &Template, ctx: &str) -> String {
    // Read-only first: what the directory replays to before any repair.
    let reader = LogReader::open(dir).unwrap_or_else(|e| panic!("{ctx}: LogReader: {e}"));
    let mut replayed = State::new();
    for b in reader.batches() {
        crate::common::model::apply_batch(&mut replayed, &b);
    }
    assert!(
        replayed == t.state,
        "{ctx}: the log replays to another state (reader damage {:?}):\n{}",
        reader.damage(),
        state_diff(&replayed, &t.state)
    );
    drop(reader);
    let engine = Engine::open(dir, t.config.clone())
        .unwrap_or_else(|e| panic!("{ctx}: reopen after the power loss: {e}"));
    let report = format!("{:?}", engine.open_report());
    let got = engine_state(&engine);
    for k in t.deleted() {
        assert_eq!(
            engine.read_to_vec(k).unwrap(),
            None,
            "{ctx}: key {:?}, deleted last, is back ({report})",
            String::from_utf8_lossy(k)
        );
    }
    assert!(
        got == t.state,
        "{ctx}: the state after the power loss is not the pre-compaction one ({report}):\n{}",
        state_diff(&got, &t.state)
    );
    assert_reads_match(&engine, &t.state, t.keys.iter().map(|k| &k[..]), ctx);
    for id in &t.ids {
        assert!(
            engine.request_id_seq(*id).is_some(),
            "{ctx}: request id {id} is forgotten ({report})"
        );
    }
    // What the cut left (copies next to their originals, a part of the prefix) compacts.
    engine
        .compact()
        .unwrap_or_else(|e| panic!("{ctx}: compact after the power loss: {e}"));
    assert_eq!(engine_state(&engine), t.state, "{ctx}: second compaction");
    engine.close().expect("close");
    drop(engine);
    let engine = Engine::open(dir, t.config.clone()).expect("reopen");
    assert_eq!(
        engine_state(&engine),
        t.state,
        "{ctx}: after the second compaction"
    );
    assert!(
        segment_files(dir).len() <= 4,
        "{ctx}: the log was not compacted"
    );
    report
}

/// The power cut at every one of the dry run's `ops` in turn (and after the last), `seeds`
/// times each ([`cut_run`]); each run must issue the dry run's operations up to its cut.
/// Returns how often each kind of step was cut at, and the damage the power losses did.
fn cut_at_every_step(
    t: &Template,
    config: &Config,
    full: bool,
    (ops, seeds): (&[(String, u64)], u64),
    what: &str,
) -> (BTreeMap<String, usize>, Damage) {
    let mut covered: BTreeMap<String, usize> = BTreeMap::new();
    let mut damage = Damage::default();
    for cut_at in 1..=ops.len() + 1 {
        for s in 0..seeds {
            let ctx = format!("{what}: power cut at operation {cut_at} (seed {s})");
            let run = (cut_at, s * 1000 + cut_at as u64);
            let (cut, d) = cut_run(t, config, full, run, &ctx);
            damage += d;
            let dry = ops.get(cut_at - 1).map(|(l, _)| l);
            assert_eq!(
                cut.as_ref(),
                dry,
                "{ctx}: the compaction's operations changed"
            );
            if let Some(op) = cut {
                *covered.entry(step(&op)).or_default() += 1;
            }
        }
    }
    (covered, damage)
}

/// One compaction of a copy of the template, opened with `config`, on a full disk
/// (`Steps::full`) if `full`, with the power cut at its `cut_at`th operation; returns the
/// operation cut at (`None`: the compaction finished first) and the damage.
fn cut_run(
    t: &Template,
    config: &Config,
    full: bool,
    (cut_at, seed): (usize, u64),
    ctx: &str,
) -> (Option<String>, Damage) {
    let power = Arc::new(PowerLossIo::new(u64::MAX, None));
    let steps = match full {
        true => Steps::full(power.clone(), Some(cut_at)),
        false => Steps::new(power.clone(), Some(cut_at)),
    };
    let (dir, engine) = open_copy_with(t, config, &steps, ctx);
    steps.armed.store(true, Ordering::SeqCst);
    let compacted = engine.compact();
    let cut = power.is_cut().then(|| steps.seen()[cut_at - 1].0.clone());
    if let Some(op) = &cut {
        // Only the room kept for the `ids` file's next replacement, after the last
        // retirement's removals, is best effort: a cut there (every later operation on
        // `ids.tmp` too) leaves the compaction's result `Ok`.
        let room_only = steps.seen()[cut_at - 1..]
            .iter()
            .all(|(l, _)| l.ends_with(" ids.tmp"));
        assert!(
            compacted.is_err() || room_only,
            "{ctx}: the power was cut at {op}, yet compact returned {compacted:?}"
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (p_drop, p_keep) = (rng.random_range(0.0..0.6), rng.random_range(0.1..0.9));
    power.cut_now();
    let _ = engine.close();
    drop(engine);
    let damage = lose_power(&power, &mut rng, p_drop, p_keep);
    check_after_power_loss(dir.path(), t, ctx);
    (cut, damage)
}

/// Runs `f` for each configuration (both write paths; retired segments removed, or pooled),
/// at the same time: the runs mostly wait for syncs.
fn for_each_variant(f: impl Fn(WritePath, usize, &str) + Sync) {
    std::thread::scope(|s| {
        for write_path in [WritePath::Pwrite, WritePath::Mmap] {
            for recycle in [0, 2] {
                let f = &f;
                s.spawn(move || {
                    f(
                        write_path,
                        recycle,
                        &format!("{write_path:?}, recycle_segments {recycle}"),
                    )
                });
            }
        }
    });
}

/// The power cut at every operation of a compaction in turn (see the module doc).
#[test]
fn a_power_cut_at_any_step_of_a_compaction_keeps_the_state() {
    let seeds = crate::common::env_u64("MERGELOG_COMPACT_CUT_SEEDS").unwrap_or(1);
    let started = Instant::now();
    for_each_variant(|write_path, recycle, what| {
        let t = template(write_path, recycle);
        let ops = dry_run(&t, what);
        let (covered, damage) = cut_at_every_step(&t, &t.config, false, (&ops, seeds), what);
        let listed: Vec<&str> = ops.iter().map(|(l, _)| l.as_str()).collect();
        eprintln!(
            "compaction power cuts ({what}): {} segments, {} operations, each cut at \
             {seeds} time(s): {covered:?}; {damage:?}; {:.1?}\n  operations: {listed:?}",
            t.segments,
            ops.len(),
            started.elapsed()
        );
        // Every kind of step was cut at: the frames' writes and syncs, the retirement.
        let kinds: BTreeSet<String> = covered.keys().cloned().collect();
        let retire = if recycle > 0 {
            "Rename segment"
        } else {
            "Remove segment"
        };
        for must in [
            "Write segment",
            "Sync segment",
            "SyncDir directory",
            "Write ids file",
            retire,
        ] {
            assert!(
                kinds.contains(must),
                "{what}: no cut at a {must}: {kinds:?}"
            );
        }
    });
}

/// The same on a full disk: no room for a new segment file from the open on, and a segment
/// in reserve (`Config::reserve_segment`), without spare files (`recycle_segments` 0). The compaction's copies fill the active segment,
/// take the reserve, retire the segments copied whole (into the pool, with the `ids` file
/// first) when the disk is full again, and reuse their files for the rest. A cut at any of
/// those steps keeps the state.
#[test]
fn a_power_cut_at_any_step_of_a_compaction_on_a_full_disk_keeps_the_state() {
    let seeds = crate::common::env_u64("MERGELOG_COMPACT_CUT_SEEDS").unwrap_or(1);
    for_each_variant(|write_path, recycle, what| {
        if recycle > 0 {
            // The template's spare files (a prepared segment, the pool) are room.
            return;
        }
        // Four hundred cold keys more (about 240 KB): the copies need several segments, more than the
        // active segment's room and the reserve.
        let t = template_with(write_path, recycle, COLD + 400);
        let config = Config {
            reserve_segment: true,
            ..t.config.clone()
        };
        let what = format!("{what}, full disk");
        let power = Arc::new(PowerLossIo::new(u64::MAX, None));
        let ops = dry_run_on(&t, &config, Steps::full(power, None), &what);
        let labels: Vec<String> = ops.iter().map(|(l, _)| step(l)).collect();
        // The disk was full at a roll, the reserve went into the log, and segments were
        // retired before the last copies were written.
        let refused = labels.iter().position(|l| l == "Create prepared segment");
        let reserve = labels.iter().position(|l| l == "Rename pooled segment");
        let last_write = labels.iter().rposition(|l| l == "Write segment");
        // Into the pool (a rename) as the disk is full, removed at the end.
        let first_retire =
            (labels.iter()).position(|l| l == "Rename segment" || l == "Remove segment");
        assert!(
            refused.is_some() && reserve.is_some() && first_retire < last_write,
            "{what}: the compaction did not dig out of the full disk: {labels:?}"
        );
        let (_, damage) = cut_at_every_step(&t, &config, true, (&ops, seeds), &what);
        eprintln!(
            "compaction power cuts ({what}): {} segments, {} operations, each cut at \
             {seeds} time(s); {damage:?}\n  operations: {labels:?}",
            t.segments,
            ops.len(),
        );
    });
}

/// A failed sync of each compaction frame in turn (not a power cut): the failure is
/// reported and sticky, and the state after a reopen and a power loss is the pre-compaction
/// one. Every other run reopens in the same boot through the same storage first.
#[test]
fn a_failed_sync_of_a_compaction_frame_fails_the_engine_and_loses_nothing() {
    for_each_variant(|write_path, recycle, what| {
        let t = template(write_path, recycle);
        let frame_syncs: Vec<u64> = dry_run(&t, what)
            .into_iter()
            .filter(|(l, n)| *n > 0 && step(l) == "Sync segment")
            .map(|(_, n)| n)
            .collect();
        assert!(frame_syncs.len() >= 2, "{what}: {frame_syncs:?}");
        for (i, &n) in frame_syncs.iter().enumerate() {
            for same_boot in [false, true] {
                let ctx = format!("{what}: sync #{n} (frame {i}) fails, same boot {same_boot}");
                failed_sync_run(&t, n, same_boot, &ctx);
            }
        }
        eprintln!(
            "failed compaction-frame syncs ({what}): each of {} frames, {} runs",
            frame_syncs.len(),
            2 * frame_syncs.len()
        );
    });
}

fn failed_sync_run(t: &Template, n: u64, same_boot: bool, ctx: &str) {
    let power = Arc::new(PowerLossIo::failing_sync(n));
    let steps = Steps::new(power.clone(), None);
    let (dir, engine) = open_copy(t, &steps, ctx);
    let e = engine
        .compact()
        .expect_err("a compaction whose frame's sync failed");
    let failed = power
        .failed_sync()
        .unwrap_or_else(|| panic!("{ctx}: no sync failed"));
    assert!(failed.ends_with(".seg"), "{ctx}: {failed}");
    assert!(
        matches!(e, Error::Failed(_)) && e.to_string().contains("os error 5"),
        "{ctx}: compact returned {e:?}"
    );
    assert_refuses(&engine, ctx);
    let again = engine.compact();
    assert!(matches!(again, Err(Error::Failed(_))), "{ctx}: {again:?}");
    assert!(engine.close().is_err(), "{ctx}: close after the failure");
    drop(engine);
    if same_boot {
        let io: Arc<dyn Io> = steps.clone();
        let engine = Engine::open_with_io(dir.path(), t.config.clone(), io)
            .unwrap_or_else(|e| panic!("{ctx}: same-boot reopen: {e}"));
        assert_eq!(engine_state(&engine), t.state, "{ctx}: same-boot reopen");
        engine.close().expect("close");
    }
    let mut rng = StdRng::seed_from_u64(n);
    lose_power(&power, &mut rng, 0.5, 0.5);
    check_after_power_loss(dir.path(), t, ctx);
}

/// A log written with `Durability::Sync` (every put acknowledged durable), reopened with
/// `NoSync` and compacted, then the power fails before the kernel wrote anything back: the
/// puts acknowledged durable must still be there. (Found while writing these tests: with
/// `NoSync` the compaction frames were never synced, but the retirement's removals were made
/// durable, so the copies were lost with their originals gone, or the segment holding them
/// lost its frames and the next one no longer continued the log.) And if the sync that
/// makes the copies durable fails, the engine fails and retires nothing.
#[test]
fn a_nosync_compaction_of_a_durable_log_then_power_loss_keeps_the_state() {
    for_each_variant(|write_path, recycle, what| {
        let t = template(write_path, recycle);
        let nosync = Config {
            durability: mergelog::Durability::NoSync,
            ..t.config.clone()
        };
        let power = Arc::new(PowerLossIo::new(u64::MAX, None));
        let ctx = format!("{what}: NoSync compaction");
        let (dir, engine) = open_copy_with(&t, &nosync, &Steps::new(power.clone(), None), &ctx);
        let c = engine.compact().expect("compact");
        assert!(c.segments > 0, "{ctx}: {c:?}");
        power.cut_now();
        let _ = engine.close();
        drop(engine);
        lose_power(&power, &mut StdRng::seed_from_u64(7), 1.0, 0.0);
        check_after_power_loss(dir.path(), &t, &ctx);

        // The first sync of a segment by the compacting thread (not a roll's) fails.
        let ctx = format!("{what}: NoSync compaction whose sync fails");
        let n = dry_run_with(&t, &nosync, &ctx)
            .into_iter()
            .find(|(l, n)| *n > 0 && step(l) == "Sync segment")
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("{ctx}: the compaction synced no segment"));
        let power = Arc::new(PowerLossIo::failing_sync(n));
        let (dir, engine) = open_copy_with(&t, &nosync, &Steps::new(power.clone(), None), &ctx);
        let e = engine
            .compact()
            .expect_err("a compaction whose sync failed");
        assert!(matches!(e, Error::Failed(_)), "{ctx}: {e:?}");
        assert_refuses(&engine, &ctx);
        for (_, seg) in segment_files(t.dir.path()) {
            let name = seg.file_name().expect("a file name");
            assert!(dir.path().join(name).exists(), "{ctx}: {name:?} retired");
        }
        let _ = engine.close();
        drop(engine);
        // The same boot: the page cache still holds the copies.
        let engine = Engine::open(dir.path(), t.config.clone()).expect("reopen");
        assert_eq!(engine_state(&engine), t.state, "{ctx}: after reopen");
    });
}

/// Panics in `before` at the first rename or removal issued by `Compaction::Auto`'s thread
/// (its retirement of the segments it has copied), as a bug in the compaction would.
struct PanicOnTheCompactor {
    panicked: std::sync::atomic::AtomicU64,
}

impl Io for PanicOnTheCompactor {
    fn before(&self, op: IoOp, _: &Path, _: u64, _: &[u8]) -> io::Result<()> {
        if matches!(op, IoOp::Rename | IoOp::Remove)
            && std::thread::current().name() == Some("mergelog-compactor")
            && self.panicked.fetch_add(1, Ordering::SeqCst) == 0
        {
            panic!("injected by the test: a bug in the compaction");
        }
        Ok(())
    }
}

/// A panic of `Compaction::Auto`'s thread fails the engine, as one of the flusher or a
/// syncer does: it may have stopped part-way through the index's and the log's changes, and
/// without it nobody compacts, so the log would grow without a word (the thread just ended:
/// no failure, no `compaction_error`, writes going on). Every acknowledged write is there
/// after a reopen.
#[test]
fn a_panic_of_the_compacting_thread_fails_the_engine_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(PanicOnTheCompactor {
        panicked: Default::default(),
    });
    let config = Config {
        compaction: mergelog::Compaction::Auto(mergelog::AutoCompaction {
            live_ratio: 0.5,
            check_every: std::time::Duration::from_millis(10),
            ..Default::default()
        }),
        ..crate::hooks::small_segments()
    };
    let engine = Engine::open_with_io(dir.path(), config, hook.clone()).expect("open");
    // Eight keys overwritten with 4,000-byte values: each 64 KiB segment is soon mostly dead,
    // and the compactor runs once one is complete.
    let mut acked: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Per key, the values submitted since its last acknowledged one: a put whose ticket
    // failed with the engine may still be in the log (its frame written, even synced, before
    // the failure), so the reopen may find one of them instead.
    let mut unacked: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT_MAX;
    let mut i = 0u32;
    while hook.panicked.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        let key = format!("key-{}", i % 8).into_bytes();
        let value = format!("{i:08}").repeat(500).into_bytes();
        let Ok(ticket) = engine.put(&key, &value) else {
            break;
        };
        if ticket.wait().is_ok() {
            unacked.remove(&key);
            acked.insert(key, value);
        } else {
            unacked.entry(key).or_default().push(value);
        }
        i += 1;
    }
    assert!(
        hook.panicked.load(Ordering::SeqCst) > 0,
        "the compactor never retired anything in {i} puts"
    );
    // The failure is recorded by the compactor's thread as it unwinds.
    while engine.failure().is_none() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    match engine.failure() {
        Some(Error::Failed(cause)) => assert!(
            matches!(
                *cause,
                Error::Panicked {
                    thread: "compactor"
                }
            ),
            "the cause: {cause:?}"
        ),
        other => panic!("after the compacting thread panicked, the engine's failure: {other:?}"),
    }
    assert!(
        matches!(engine.put(b"after", b"1"), Err(Error::Failed(_))),
        "a put after the compactor's panic is refused"
    );
    drop(engine);
    let again = Engine::open(dir.path(), Config::default()).expect("reopen");
    for (key, value) in &acked {
        let found = again.read_to_vec(key).unwrap();
        let later = unacked.get(key).map_or(&[][..], Vec::as_slice);
        assert!(
            found.as_ref() == Some(value) || later.iter().any(|v| found.as_ref() == Some(v)),
            "key {:?} after the reopen: {:?}, where the last acknowledged value was {:?} \
             (and {} put after it failed)",
            String::from_utf8_lossy(key),
            found
                .as_ref()
                .map(|v| String::from_utf8_lossy(&v[..8]).into_owned()),
            String::from_utf8_lossy(&value[..8]),
            later.len()
        );
    }
    again.close().expect("close");
}
