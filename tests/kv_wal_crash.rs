//! The `kv_wal` example's store (`examples/kv_wal/store.rs`, included here as it is) under
//! SIGKILL: a child process overwrites a small key space many times through the store, with
//! checkpoints every few hundred writes, and reports what it submitted and what was
//! acknowledged; the parent kills it, reopens the store (checkpoint + replay) and checks that
//! the table is the state after a prefix of the submission order holding every acknowledged
//! write; that the log after the checkpoint holds no more writes than the store lets it
//! (twice the interval plus those in flight); and that the directory (log and checkpoint)
//! stays under a bound derived from that, the segment size and the frame format.
//!
//! The child is this test binary, re-executed with `--exact kv_wal_child` (as in `crash.rs`).
//! It prints, flushing each line:
//!
//! - `@@INT <id> P:<key hex>:<value hex>` or `@@INT <id> D:<key hex>` before it submits write
//!   `id`, `@@SUB <id>` once submitted, `@@ACK <id>` once `Pending::wait` returned `Ok`
//!   (submitting and printing `INT`/`SUB` happen under one lock, so ids are in log order);
//! - `@@CKPT <n> <step>` at each step of its `n`-th checkpoint (`CheckpointStep`).
//!
//! Where it dies: most children are killed 5–150 ms after their first acknowledgement; one in
//! ten within 4 ms of starting (inside `Store::open`: replay, retiring); and more than half
//! get a stop plan in `MERGELOG_KVWAL_CHILD_STOP` (`<n> <step> abort|sleep`): at that step
//! of its `n`-th checkpoint the child prints `@@STOP` and aborts, or sleeps until the parent
//! kills it (while the other writers go on until the store holds them back).
//!
//! Environment: `MERGELOG_KVWAL_ITERS` (default 300, about 30 s in the release-checked
//! profile) iterations, all on one directory; `MERGELOG_KVWAL_SEED` to repeat a run.

#![allow(clippy::disallowed_methods)]

mod common;
#[allow(dead_code)]
#[path = "../examples/kv_wal/store.rs"]
mod store;

use common::model::{apply_writes, hex, mixed_key, state_diff, unhex, WriteOp};
use common::{env_u64, State};
use mergelog::internals::format::{frame_len, record_len, trailer_len, SEGMENT_HEADER_LEN};
use mergelog::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use store::{CheckpointStep, Options, Store};

const CHILD_DIR_ENV: &str = "MERGELOG_KVWAL_CHILD_DIR";
const CHILD_SEED_ENV: &str = "MERGELOG_KVWAL_CHILD_SEED";
const CHILD_STOP_ENV: &str = "MERGELOG_KVWAL_CHILD_STOP";
const ITERS_ENV: &str = "MERGELOG_KVWAL_ITERS";
const SEED_ENV: &str = "MERGELOG_KVWAL_SEED";

const MARK: &str = "@@";
/// The key space: small, so every key is overwritten many times.
const KEYS: usize = 24;
/// Longest key `mixed_key` gives for `i < KEYS` ("shared-prefix-22").
const KEY_LEN_MAX: usize = 16;
/// Longest value the child writes.
const VALUE_LEN_MAX: usize = 200;
const WRITERS: usize = 3;
/// Writes each writer keeps in flight, at most.
const DEPTH_MAX: usize = 8;
const SEGMENT_BYTES: u64 = 64 << 10;
const BATCH_BYTES_MAX: usize = 8 << 10;
const CHECKPOINT_EVERY_WRITES: u64 = 400;
/// A child that is never killed stops by itself after this long (and fails the test).
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
const STEPS: [CheckpointStep; 6] = [
    CheckpointStep::Snapshot,
    CheckpointStep::Written,
    CheckpointStep::Synced,
    CheckpointStep::Renamed,
    CheckpointStep::Durable,
    CheckpointStep::Retired,
];

fn options(hook: Option<fn(CheckpointStep)>) -> Options {
    Options {
        engine: Config {
            segment_bytes: SEGMENT_BYTES,
            batch_bytes_max: BATCH_BYTES_MAX,
            ring_bytes: 1 << 20,
            ..Config::default()
        },
        checkpoint_every_writes: CHECKPOINT_EVERY_WRITES,
        checkpoint_every_bytes: u64::MAX,
        on_checkpoint_step: hook,
    }
}

/// The most writes the log may hold after the last durable checkpoint: a write that finds
/// twice the interval applied since it takes (or waits for) a checkpoint before it is
/// submitted, so those applied are fewer than `2 * interval` when the last write passed that
/// check; past it come only the writes not yet applied then, at most `DEPTH_MAX + 1` per
/// writer (its window of writes in flight, and the one being submitted).
fn writes_after_checkpoint_max() -> u64 {
    2 * CHECKPOINT_EVERY_WRITES + (WRITERS * (DEPTH_MAX + 1)) as u64
}

/// The most the store directory may hold after `Store::open`, derived from the store's
/// rules and the log's format:
///
/// - The log after the last durable checkpoint's batch `S` holds at most
///   [`writes_after_checkpoint_max`] writes, each adding at most a frame of its own (its
///   record and a trailer without request ids: the store gives its writes none).
/// - `Store::open` retires every segment before the one holding `S + 1`. From there on,
///   every segment but the last is full to within one frame (it rolls when the next frame
///   does not fit), so the segments strictly between hold at most `L / usable`; plus that
///   first one, the last one, and the next one prepared ahead.
/// - Plus the checkpoint file (every key with its longest value), and the engine's small
///   files (`LOCK`, empty; `CLEAN` only while closed; no `ids` file without request ids).
fn disk_bound() -> u64 {
    let frame_max = frame_len(BATCH_BYTES_MAX) as u64;
    let write_max = frame_len(record_len(KEY_LEN_MAX, VALUE_LEN_MAX) + trailer_len(0)) as u64;
    let log_after_checkpoint = writes_after_checkpoint_max() * write_max;
    let usable = SEGMENT_BYTES - SEGMENT_HEADER_LEN as u64 - frame_max;
    let segment_files = log_after_checkpoint / usable + 3;
    let checkpoint = 28 + KEYS as u64 * (16 + (KEY_LEN_MAX + VALUE_LEN_MAX) as u64);
    let small_files = 4096;
    segment_files * SEGMENT_BYTES + checkpoint + small_files
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("metadata");
            match meta.is_dir() {
                true => dir_bytes(&e.path()),
                false => meta.len(),
            }
        })
        .sum()
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .unwrap_or_else(|_| std::process::exit(4)); // the parent is gone
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("child: {what}: {e}");
    std::process::exit(5);
}

/// Where the child stops itself: at `step` of its `n`-th checkpoint, aborting or sleeping.
#[derive(Clone, Copy, Debug)]
struct StopPlan {
    n: u64,
    step: CheckpointStep,
    abort: bool,
}

impl StopPlan {
    fn to_env(self) -> String {
        let mode = if self.abort { "abort" } else { "sleep" };
        format!("{} {:?} {mode}", self.n, self.step)
    }

    fn from_env(s: &str) -> StopPlan {
        let parts: Vec<&str> = s.split(' ').collect();
        let [n, step, mode] = parts[..] else {
            panic!("bad {CHILD_STOP_ENV}={s:?}");
        };
        StopPlan {
            n: n.parse().expect("checkpoint number"),
            step: *STEPS
                .iter()
                .find(|st| format!("{st:?}") == step)
                .expect("a step name"),
            abort: mode == "abort",
        }
    }
}

static STOP_PLAN: OnceLock<Option<StopPlan>> = OnceLock::new();
static CHECKPOINTS_STARTED: AtomicU64 = AtomicU64::new(0);

/// The child's checkpoint hook: reports the step, and stops there if the plan says so.
fn child_hook(step: CheckpointStep) {
    let n = match step {
        CheckpointStep::Snapshot => CHECKPOINTS_STARTED.fetch_add(1, Ordering::Relaxed) + 1,
        _ => CHECKPOINTS_STARTED.load(Ordering::Relaxed),
    };
    emit(&format!("{MARK}CKPT {n} {step:?}\n"));
    let Some(plan) = STOP_PLAN.get().copied().flatten() else {
        return;
    };
    if plan.n == n && plan.step == step {
        emit(&format!("{MARK}STOP {n} {step:?}\n"));
        if plan.abort {
            std::process::abort();
        }
        std::thread::sleep(CHILD_LIFETIME);
    }
}

/// The child: never returns normally while the parent runs it.
#[test]
fn kv_wal_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return; // an ordinary test run
    };
    let seed: u64 = env_u64(CHILD_SEED_ENV).expect("child seed");
    let plan = std::env::var(CHILD_STOP_ENV)
        .ok()
        .map(|s| StopPlan::from_env(&s));
    STOP_PLAN.set(plan).expect("set once");
    let store = Store::open(&dir, options(Some(child_hook)))
        .unwrap_or_else(|e| die("Store::open failed", e));
    let next_id = Mutex::new(0u64);
    let deadline = Instant::now() + CHILD_LIFETIME;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (store, next_id) = (&store, &next_id);
            s.spawn(move || child_writer(store, next_id, w, seed, deadline));
        }
    });
    std::process::exit(0);
}

fn child_writer(store: &Store, next_id: &Mutex<u64>, w: usize, seed: u64, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let depth = rng.random_range(1..=DEPTH_MAX);
    let mut in_flight = VecDeque::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let key = mixed_key(rng.random_range(0..KEYS));
        let value = rng.random_bool(0.85).then(|| {
            n += 1;
            // Unique (writer and count), of varied length.
            let mut v = format!("w{w}n{n}-").into_bytes();
            let pad = rng.random_range(0..VALUE_LEN_MAX - v.len());
            v.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
            v
        });
        {
            let mut id_guard = next_id.lock().expect("id lock");
            let id = *id_guard;
            *id_guard += 1;
            let pending = match &value {
                Some(v) => {
                    emit(&format!("{MARK}INT {id} P:{}:{}\n", hex(&key), hex(v)));
                    store.submit_put(&key, v)
                }
                None => {
                    emit(&format!("{MARK}INT {id} D:{}\n", hex(&key)));
                    store.submit_delete(&key)
                }
            };
            let pending = pending.unwrap_or_else(|e| die("submit failed", e));
            emit(&format!("{MARK}SUB {id}\n"));
            in_flight.push_back((id, pending));
        }
        // Writes of one writer complete in order: acknowledge from the front.
        while in_flight.len() > depth {
            let (id, pending) = in_flight.pop_front().expect("in flight");
            pending.wait().unwrap_or_else(|e| die("wait failed", e));
            emit(&format!("{MARK}ACK {id}\n"));
        }
    }
}

/// What the parent read from one child.
#[derive(Default)]
struct ChildOutput {
    /// Every write in submission order, and whether it was acknowledged.
    writes: Vec<(WriteOp, bool)>,
    /// The step of the last `CKPT` line: not `Retired` means it died inside a checkpoint.
    last_step: Option<String>,
    /// Checkpoints the child finished (reached `Durable`).
    checkpoints: usize,
    stopped: bool,
}

/// Parses the child's complete lines (the harness's own lines have no mark).
fn parse_child_output(lines: &[String]) -> ChildOutput {
    let mut out = ChildOutput::default();
    let mut submitted = 0;
    for line in lines {
        let Some(at) = line.find(MARK) else { continue };
        let fields: Vec<&str> = line[at + MARK.len()..].split(' ').collect();
        let id = || -> usize { fields[1].parse().expect("an id") };
        match fields[0] {
            "INT" => {
                assert_eq!(
                    id(),
                    out.writes.len(),
                    "INT ids must be consecutive: {line}"
                );
                let parts: Vec<&str> = fields[2].split(':').collect();
                let op = match parts[..] {
                    ["P", k, v] => (unhex(k), Some(unhex(v))),
                    ["D", k] => (unhex(k), None),
                    _ => panic!("bad op in {line:?}"),
                };
                out.writes.push((op, false));
            }
            "SUB" => {
                assert_eq!(id(), submitted, "SUB out of order: {line}");
                submitted += 1;
            }
            "ACK" => {
                assert!(id() < submitted, "ACK before SUB: {line}");
                out.writes[id()].1 = true;
            }
            "CKPT" => {
                if fields[2] == "Durable" {
                    out.checkpoints += 1;
                }
                out.last_step = Some(fields[2].to_string());
            }
            "STOP" => out.stopped = true,
            _ => panic!("unknown child line {line:?}"),
        }
    }
    // Only the last write can be without its SUB line (killed between the two).
    assert!(
        submitted + 1 >= out.writes.len(),
        "a write other than the last lacks SUB"
    );
    out
}

/// The length of the prefix of `writes` that, applied to `base`, gives `recovered` and holds
/// every acknowledged write.
fn matching_prefix(base: &State, writes: &[(WriteOp, bool)], recovered: &State) -> Option<usize> {
    let apply =
        |state: &mut State, w: &(WriteOp, bool)| apply_writes(state, std::slice::from_ref(&w.0));
    common::model::matching_prefix(base, writes, |w| w.1, apply, recovered)
}

/// What one child run gave.
struct ChildRun {
    lines: Vec<String>,
    stderr: String,
    exit: Option<std::process::ExitStatus>,
}

/// Lines the reader thread passes on as they come, to time the kill.
enum Seen {
    FirstAck,
    Stop,
}

fn run_child(dir: &Path, child_seed: u64, plan: Option<StopPlan>, rng: &mut StdRng) -> ChildRun {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "kv_wal_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_DIR_ENV, dir)
    .env(CHILD_SEED_ENV, child_seed.to_string())
    .env_remove(CHILD_STOP_ENV)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(plan) = plan {
        cmd.env(CHILD_STOP_ENV, plan.to_env());
    }
    let mut child = cmd.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stderr = child.stderr.take().expect("child stderr");
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let out_reader = std::thread::spawn(move || {
        let (mut lines, mut r, mut buf) = (Vec::new(), BufReader::new(stdout), Vec::new());
        let mut acked = false;
        loop {
            buf.clear();
            // A torn last line is never complete, so never acted on.
            match r.read_until(b'\n', &mut buf) {
                Ok(n) if n > 0 && buf.ends_with(b"\n") => {}
                _ => break,
            }
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            if !acked && line.contains("@@ACK ") {
                acked = true;
                let _ = seen_tx.send(Seen::FirstAck);
            }
            if line.contains("@@STOP ") {
                let _ = seen_tx.send(Seen::Stop);
            }
            lines.push(line);
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    wait_for_kill_time(&seen_rx, plan.is_some(), rng);
    let exit = child.try_wait().expect("try_wait");
    let _ = child.kill(); // SIGKILL
    child.wait().expect("wait for child");
    ChildRun {
        lines: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
        exit,
    }
}

/// Returns when the child should be killed: one time in ten within 4 ms of its start (inside
/// `Store::open`); with a stop plan, 0–100 ms after it stopped (a slow checkpoint: the other
/// writers go on meanwhile, until the store holds them back), or 1 s after its first
/// acknowledgement if it never got there; else 5–150 ms after its first acknowledgement.
fn wait_for_kill_time(seen: &mpsc::Receiver<Seen>, planned: bool, rng: &mut StdRng) {
    if rng.random_bool(0.1) {
        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
        return;
    }
    let started = seen.recv_timeout(Duration::from_secs(60));
    if planned {
        let stopped = matches!(started, Ok(Seen::Stop))
            || matches!(seen.recv_timeout(Duration::from_secs(1)), Ok(Seen::Stop));
        if stopped {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..100_000)));
        }
    } else if started.is_ok() {
        std::thread::sleep(Duration::from_millis(rng.random_range(5..=150)));
    }
}

#[derive(Default)]
struct Totals {
    writes: usize,
    acked: usize,
    unacked_recovered: usize,
    checkpoints: usize,
    killed_in_checkpoint: usize,
    stopped: usize,
    replayed_writes_max: u64,
    dir_bytes_max: u64,
    /// The batch the last checkpoint covers.
    checkpoint: u64,
}

impl Totals {
    fn add(&mut self, out: &ChildOutput, reopened: &Reopened) {
        let acked_prefix = out.writes.iter().rposition(|w| w.1).map_or(0, |i| i + 1);
        self.writes += out.writes.len();
        self.acked += out.writes.iter().filter(|w| w.1).count();
        self.unacked_recovered += reopened.prefix - acked_prefix;
        self.checkpoints += out.checkpoints;
        let in_checkpoint = out.last_step.as_deref().is_some_and(|s| s != "Retired");
        self.killed_in_checkpoint += usize::from(in_checkpoint);
        self.stopped += usize::from(out.stopped);
        self.replayed_writes_max = self.replayed_writes_max.max(reopened.recovered.writes);
        self.dir_bytes_max = self.dir_bytes_max.max(reopened.dir_bytes);
        self.checkpoint = reopened.recovered.checkpoint.get();
    }
}

fn random_plan(rng: &mut StdRng) -> Option<StopPlan> {
    rng.random_bool(0.6).then(|| StopPlan {
        n: rng.random_range(1..=3),
        step: STEPS[rng.random_range(0..STEPS.len())],
        abort: rng.random_bool(0.5),
    })
}

/// What the parent found on reopening the store after a kill.
struct Reopened {
    state: State,
    recovered: store::Recovered,
    dir_bytes: u64,
    /// The length of the prefix of the child's writes the state is the result of.
    prefix: usize,
}

/// Reopens the store after a kill and checks it: its state is `base` after a prefix of the
/// child's writes holding every acknowledged one, its checkpoint did not go back, and the
/// directory is within the bound.
fn reopen_and_check(
    path: &Path,
    base: &State,
    out: &ChildOutput,
    last: u64,
) -> Result<Reopened, String> {
    let store = Store::open(path, options(None)).map_err(|e| format!("Store::open failed: {e}"))?;
    let state: State = store.scan(b"", usize::MAX).into_iter().collect();
    let recovered = store.recovered();
    let dir_bytes = dir_bytes(path);
    store.close().map_err(|e| format!("close: {e}"))?;
    let Some(prefix) = matching_prefix(base, &out.writes, &state) else {
        let mut want = base.clone();
        let acked = out.writes.iter().rposition(|w| w.1).map_or(0, |i| i + 1);
        apply_writes(&mut want, out.writes[..acked].iter().map(|w| &w.0));
        return Err(format!(
            "the store's state after reopening ({recovered:?}) is not the state after any \
             prefix of the {} writes holding every acknowledged one; difference from the \
             state after the last acknowledged one:\n{}",
            out.writes.len(),
            state_diff(&state, &want)
        ));
    };
    if recovered.checkpoint.get() < last {
        return Err(format!(
            "the checkpoint went back from batch {last} to {recovered:?}"
        ));
    }
    let writes_max = writes_after_checkpoint_max();
    if recovered.writes > writes_max {
        return Err(format!(
            "{} writes replayed after the checkpoint, more than the {writes_max} the store \
             lets the log hold ({recovered:?})",
            recovered.writes
        ));
    }
    let bound = disk_bound();
    if dir_bytes > bound {
        return Err(format!(
            "the store directory holds {dir_bytes} bytes, over the bound of {bound} \
             ({recovered:?})"
        ));
    }
    Ok(Reopened {
        state,
        recovered,
        dir_bytes,
        prefix,
    })
}

#[test]
fn kv_wal_keeps_acknowledged_writes_and_bounded_disk_across_kills() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // never in the child
    }
    let iters = env_u64(ITERS_ENV).unwrap_or(300) as usize;
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| rand::rng().random());
    let bound = disk_bound();
    eprintln!("kv_wal crash: {iters} iterations, {SEED_ENV}={seed}, disk bound {bound} bytes");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (mut base, mut totals) = (State::new(), Totals::default());
    let started = Instant::now();
    for iter in 0..iters {
        let (child_seed, plan) = (rng.random::<u64>(), random_plan(&mut rng));
        let run = run_child(&path, child_seed, plan, &mut rng);
        let out = parse_child_output(&run.lines);
        let aborted_by_plan = out.stopped && plan.is_some_and(|p| p.abort);
        let checked = match run.exit.filter(|_| !aborted_by_plan) {
            Some(status) => Err(format!("the child exited by itself ({status})")),
            None => reopen_and_check(&path, &base, &out, totals.checkpoint),
        };
        let reopened = match checked {
            Ok(reopened) => reopened,
            Err(e) => {
                let kept = dir.keep();
                panic!(
                    "iteration {iter} ({SEED_ENV}={seed}, stop plan {plan:?}): {e}\n\
                     directory kept at {kept:?}; the child's stderr:\n{}",
                    run.stderr
                )
            }
        };
        totals.add(&out, &reopened);
        base = reopened.state;
    }
    eprintln!(
        "kv_wal crash: {iters} iterations in {:.1?}: {} writes submitted, {} acknowledged and \
         all found; {} unacknowledged survived; {} checkpoints, {} kills inside one ({} at a \
         planned step); at most {} writes replayed at an open; directory at most {} bytes \
         (bound {bound}); last checkpoint at batch {}",
        started.elapsed(),
        totals.writes,
        totals.acked,
        totals.unacked_recovered,
        totals.checkpoints,
        totals.killed_in_checkpoint,
        totals.stopped,
        totals.replayed_writes_max,
        totals.dir_bytes_max,
        totals.checkpoint,
    );
    assert!(
        totals.acked > 0,
        "no write was ever acknowledged: the test checked nothing"
    );
    if iters >= 20 {
        // What the test is for happened: history was retired, and kills landed in checkpoints.
        assert!(totals.checkpoint > 0, "no checkpoint was ever taken");
        assert!(
            totals.killed_in_checkpoint > 0,
            "no kill landed inside a checkpoint"
        );
    }
}
