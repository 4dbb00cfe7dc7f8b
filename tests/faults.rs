//! Fault injection through the storage seam (`mergelog::internals::io`): every file change of
//! the log asks an `Io` hook first, and these tests answer with errors or record the writes to
//! take them back.
//!
//! - **Countdown I/O errors** (`countdown_*`): `FaultyIo` fails the Nth operation of one kind
//!   (write, sync, create, rename, directory sync, or any) with EIO, once or forever from then
//!   on, for N = 1, 2, ... until a run completes without reaching N; both write paths.
//!   `countdown_*_with_two_syncers` do the same with two syncs in flight at once
//!   (`Config::syncers` = 2), failing a sync or a syncer's own open of the segment.
//! - **Simulated power loss** (`power_loss` for the pwrite path, `power_loss_mmap` for the
//!   mmap path): `PowerLossIo` (the model, in `common/power.rs`) keeps every write
//!   not yet durable with the bytes it overwrote (an `fdatasync` makes all of a file's
//!   performed writes durable, an `msync` only their parts inside its range), cuts the power
//!   after a seeded number of operations (every later operation fails), and then tears each
//!   write not durable at 512-byte sectors, drops whole writes and undoes directory changes
//!   not yet made durable by a directory sync. A store into the mapping announces only its
//!   offset: it is modelled as a write from there to the end of the segment, its bytes read
//!   back at the power loss. One reopen in four first goes through I/O that fails while it
//!   repairs the tail. One to three power losses per seed, each continuing the log the last
//!   one left; odd seeds with two syncers. `power_model_*` test the model itself.
//! - **Full disk** (`full_disk`): segment creation fails with ENOSPC (leaving a short file
//!   behind, as a preallocation that ran out of space would), at open and at each roll; the
//!   error says ENOSPC, a roll's refuses writes without failing the engine, no short
//!   prepared file stays, every segment file is fully allocated (never sparse, so no
//!   SIGBUS).
//!
//! Every run checks, against a model of what was submitted:
//! - no panic, and every ticket resolves (a ticket still pending after `WAIT_MAX` is a hang);
//! - no ticket is `Ok` at a position past a failed one (nor at the same position: a flush
//!   shares its position with the request before it), and every failed ticket carries the
//!   error that failed the engine or `Error::Failed`; once the engine failed, `failure()` is
//!   set and every new put/delete/write/get/flush returns `Error::Failed`. A full disk at a
//!   roll does not fail the engine but refuses writes (`Error::NoSpace`, `crate::room`):
//!   then no write or flush is `Ok` past a refused one (gets are: they read on), and every
//!   new write and flush is refused with `NoSpace`;
//! - every windowed get that completed `Ok` returned the value as of its place in the order
//!   (writes refused for room are not in it);
//! - the state the engine still serves after it failed and closed, and the state a reopen
//!   with the real I/O (default recovery) finds, are each the state after some prefix of the
//!   write requests in position order that holds every acknowledged request (values are
//!   unique, so the prefix is sharp), and the reopened one is not behind the served one.
//!
//! `a_failed_segment_removal_is_reported_and_forgets_only_what_went` fails a removal, and a
//! directory sync, inside `Engine::retire_before`.
//!
//! `outcome_is_final_when_a_later_batch_fails_during_a_sync` pins down one interleaving the
//! countdown and power-loss runs hit now and then: a later batch's write fails while an
//! earlier batch is still syncing.
//!
//! Figures go to stderr (`--nocapture` shows them). Environment: `MERGELOG_POWERLOSS_SEEDS`
//! (default 1000) seeds from `MERGELOG_POWERLOSS_FIRST` (default 0), the same with
//! `MERGELOG_POWERLOSS_MMAP_` for the mmap path; `MERGELOG_POWERLOSS_SEED`
//! runs one seed (`MERGELOG_POWERLOSS_REPEAT` times, default 1: the seed fixes the workload,
//! the cut point and every tear, but not how the flusher and syncer threads interleave).

// Tests make and spoil files on purpose; the storage seam's lint (clippy.toml) is for the library.
#![allow(clippy::disallowed_methods)]

mod common;

use common::log::{pool_files, prepared_files, segment_files};
use common::model::{mixed_key, state_diff, WriteOp};
use common::power::{
    lose_power, lose_power_within_sectors, power_loss_config, Damage, PowerLossIo, EIO,
};
use common::seeds;
use common::{assert_reads_match, assert_refuses, engine_state, State, WAIT_MAX};
use mergelog::internals::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Durability, Engine, Error, GetTicket, Ticket, WriteBatch, WritePath};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const ENOSPC: i32 = 28;

/// A unique value: `tag` names the request and op, then filler up to `len` bytes.
fn value(tag: &str, len: usize) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    v.push(b'|');
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Requests, their outcomes, and the checks every test makes.

/// One request a producer submits.
#[derive(Clone)]
enum Req {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<WriteOp>),
    Get(Vec<u8>),
    Flush,
}

/// Short, readable: keys as text, values by their unique tag.
impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let v = |v: &[u8]| {
            let tag = v.split(|&b| b == b'|').next().unwrap_or(v);
            format!("{}({} B)", String::from_utf8_lossy(tag), v.len())
        };
        match self {
            Req::Put(key, val) => write!(f, "Put({:?}, {})", k(key), v(val)),
            Req::Delete(key) => write!(f, "Delete({:?})", k(key)),
            Req::Batch(ops) => {
                write!(f, "Batch[")?;
                for (key, val) in ops {
                    match val {
                        Some(val) => write!(f, " Put({:?}, {})", k(key), v(val))?,
                        None => write!(f, " Delete({:?})", k(key))?,
                    }
                }
                write!(f, " ]")
            }
            Req::Get(key) => write!(f, "Get({:?})", k(key)),
            Req::Flush => write!(f, "Flush"),
        }
    }
}

impl Req {
    /// The writes the request makes, in order.
    fn writes(&self) -> Vec<WriteOp> {
        match self {
            Req::Put(k, v) => vec![(k.clone(), Some(v.clone()))],
            Req::Delete(k) => vec![(k.clone(), None)],
            Req::Batch(ops) => ops.clone(),
            Req::Get(_) | Req::Flush => Vec::new(),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self, Req::Put(..) | Req::Delete(_) | Req::Batch(_))
    }
}

/// A random request over `keys` keys; `tag` makes its values unique.
fn random_req(rng: &mut StdRng, keys: usize, tag: &str, value_max: usize) -> Req {
    let k = |rng: &mut StdRng| mixed_key(rng.random_range(0..keys));
    let len = |rng: &mut StdRng| rng.random_range(1..=value_max);
    match rng.random_range(0..100) {
        0..=54 => Req::Put(k(rng), value(tag, len(rng))),
        55..=69 => Req::Delete(k(rng)),
        70..=89 => {
            let n = rng.random_range(1..=5);
            let ops = (0..n)
                .map(|j| {
                    let key = k(rng);
                    if rng.random_range(0..4) == 0 {
                        (key, None)
                    } else {
                        (key, Some(value(&format!("{tag}.{j}"), len(rng))))
                    }
                })
                .collect();
            Req::Batch(ops)
        }
        90..=96 => Req::Get(k(rng)),
        _ => Req::Flush,
    }
}

/// A submitted request waiting for its outcome.
enum InFlight {
    T(Ticket),
    G(GetTicket),
}

/// A request and how it ended.
#[derive(Debug)]
struct Done {
    pos: u64,
    req: Req,
    result: Result<(), Error>,
    /// The value a get returned, if it completed `Ok`.
    got: Option<Option<Vec<u8>>>,
}

fn submit(engine: &Engine, req: &Req) -> Result<InFlight, Error> {
    Ok(match req {
        Req::Put(k, v) => InFlight::T(engine.put(k, v)?),
        Req::Delete(k) => InFlight::T(engine.delete(k)?),
        Req::Batch(ops) => {
            let mut b = WriteBatch::new();
            for (k, v) in ops {
                match v {
                    Some(v) => b.put(k, v),
                    None => b.delete(k),
                };
            }
            InFlight::T(engine.write(&b)?)
        }
        Req::Get(k) => InFlight::G(engine.get(k)?),
        Req::Flush => InFlight::T(engine.flush()?),
    })
}

fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::NoSpace { .. })
}

/// While the engine refuses writes for room: every write and flush is refused with
/// `NoSpace`, a get is answered, and the engine has not failed.
fn assert_refuses_for_room(engine: &Engine, ctx: &str) {
    assert!(engine.failure().is_none(), "{ctx}: failed");
    let mut b = WriteBatch::new();
    b.put(b"after-refusal", b"x").delete(b"k0");
    let calls: [(&str, Result<(), Error>); 4] = [
        ("put", engine.put(b"after-refusal", b"x").map(drop)),
        ("delete", engine.delete(b"k0").map(drop)),
        ("write", engine.write(&b).map(drop)),
        ("flush", engine.flush().map(drop)),
    ];
    for (name, r) in calls {
        assert!(
            r.as_ref().is_err_and(is_no_space),
            "{ctx}: {name} while out of room returned {r:?}, not Error::NoSpace"
        );
    }
    let got = engine.get(b"k0").and_then(|g| g.wait_timeout(WAIT_MAX));
    assert!(got.is_ok(), "{ctx}: a get while out of room: {got:?}");
}

/// Waits for a request's outcome; a ticket still pending after `WAIT_MAX` is a hang.
fn resolve(req: Req, inflight: InFlight, ctx: &str) -> Done {
    let hung = |pos: u64| -> ! {
        panic!("{ctx}: ticket at position {pos} ({req:?}) still pending after {WAIT_MAX:?}")
    };
    match inflight {
        InFlight::T(t) => {
            let result = t.wait_timeout(WAIT_MAX).map(|_| ());
            if matches!(result, Err(Error::Timeout)) {
                hung(t.position());
            }
            Done {
                pos: t.position(),
                req,
                result,
                got: None,
            }
        }
        InFlight::G(g) => {
            let r = g.wait_timeout(WAIT_MAX);
            if matches!(r, Err(Error::Timeout)) {
                hung(g.position());
            }
            let (result, got) = match r {
                Ok(v) => (Ok(()), Some(v)),
                Err(e) => (Err(e), None),
            };
            Done {
                pos: g.position(),
                req,
                result,
                got,
            }
        }
    }
}

/// Submits `reqs` in order keeping at most `depth` outstanding, and resolves every one.
/// Stops submitting at the first refused submit, which must be `Error::Failed`, or
/// `Error::NoSpace` while the engine refuses writes for room.
fn produce(engine: &Engine, reqs: Vec<Req>, depth: usize, ctx: &str) -> Vec<Done> {
    let mut done = Vec::with_capacity(reqs.len());
    let mut inflight: VecDeque<(Req, InFlight)> = VecDeque::new();
    for req in reqs {
        match submit(engine, &req) {
            Ok(t) => inflight.push_back((req, t)),
            Err(Error::Failed(_)) => {
                assert!(
                    engine.failure().is_some(),
                    "{ctx}: a submit said Failed but Engine::failure() is None"
                );
                break;
            }
            Err(Error::NoSpace { .. }) => {
                assert!(
                    engine.is_out_of_room(),
                    "{ctx}: a submit said NoSpace but the engine does not refuse writes"
                );
                break;
            }
            Err(e) => panic!("{ctx}: submit of {req:?} refused with {e:?}, not Error::Failed"),
        }
        while inflight.len() > depth {
            let (r, t) = inflight.pop_front().expect("non-empty");
            done.push(resolve(r, t, ctx));
        }
    }
    for (r, t) in inflight {
        done.push(resolve(r, t, ctx));
    }
    done
}

/// What `check_outcomes` counted.
#[derive(Default, Debug, Clone, Copy)]
struct Checked {
    requests: usize,
    /// Write requests acknowledged (and so checked present after reopen).
    acked_writes: usize,
    failed: usize,
    gets_checked: usize,
    /// Unacknowledged write requests that survived anyway.
    survived_unacked: usize,
}

impl std::ops::AddAssign for Checked {
    fn add_assign(&mut self, o: Checked) {
        self.requests += o.requests;
        self.acked_writes += o.acked_writes;
        self.failed += o.failed;
        self.gets_checked += o.gets_checked;
        self.survived_unacked += o.survived_unacked;
    }
}

/// The checks on one engine instance's outcomes and the state recovered after it:
/// outcomes monotone in position, failed ones `Error::Failed`, gets right as of their
/// position, and `recovered` the model state after a prefix (from `base`) holding every
/// acknowledged request.
fn check_outcomes(base: &State, done: &mut [Done], recovered: &State, ctx: &str) -> Checked {
    // Positions order one engine's requests; a flush shares its position with the request
    // before it, and has no effect, so ties need no order.
    done.sort_by_key(|d| d.pos);
    let max_ok = |gets: bool| {
        done.iter()
            .filter(|d| d.result.is_ok() && (gets || !matches!(d.req, Req::Get(_))))
            .map(|d| d.pos)
            .max()
    };
    let min_err = |for_room: bool| {
        done.iter()
            .filter(|d| {
                d.result
                    .as_ref()
                    .is_err_and(|e| for_room || !is_no_space(e))
            })
            .map(|d| d.pos)
            .min()
    };
    // Nothing is Ok past a failure; no write or flush past a refusal for room.
    for (ok, err) in [
        (max_ok(true), min_err(false)),
        (max_ok(false), min_err(true)),
    ] {
        if let (Some(ok), Some(err)) = (ok, err) {
            assert!(
                ok < err,
                "{ctx}: ticket at position {ok} completed Ok after the one at {err} failed"
            );
        }
    }
    // A failed ticket carries the error that failed the engine (DESIGN: "they complete with
    // the error") or `Error::Failed`, or the refusal for room.
    for d in done.iter() {
        if let Err(e) = &d.result {
            assert!(
                matches!(
                    e,
                    Error::Failed(_) | Error::Io { .. } | Error::NoSpace { .. }
                ),
                "{ctx}: ticket {} ({:?}) failed with {e:?}, not the I/O error or Error::Failed",
                d.pos,
                d.req
            );
        }
    }

    let mut out = Checked {
        requests: done.len(),
        failed: done.iter().filter(|d| d.result.is_err()).count(),
        ..Checked::default()
    };
    // Gets: the value as of their place in the order.
    let mut state = base.clone();
    for d in done.iter() {
        if let (Req::Get(k), Some(got)) = (&d.req, &d.got) {
            assert_eq!(
                got.as_ref(),
                state.get(k),
                "{ctx}: get of {:?} at position {} returned a value other than the state at its place",
                String::from_utf8_lossy(k),
                d.pos
            );
            out.gets_checked += 1;
        }
        if !d.result.as_ref().is_err_and(is_no_space) {
            common::model::apply_writes(&mut state, &d.req.writes());
        }
    }

    // The recovered state is the state after a prefix that holds every acknowledged request.
    let (required, matches) = prefixes(base, done, recovered, "recovered", ctx);
    out.acked_writes = done
        .iter()
        .filter(|d| d.req.is_write() && d.result.is_ok())
        .count();
    out.survived_unacked = matches[0] - required;
    out
}

/// The lengths of the prefixes of the write requests of `done` (sorted by position) after
/// which the model state (from `base`) equals `state`, among those that hold every
/// acknowledged request; fails if there is none. Returns how many writes that takes, and the
/// lengths.
fn prefixes(
    base: &State,
    done: &[Done],
    state: &State,
    what: &str,
    ctx: &str,
) -> (usize, Vec<usize>) {
    let max_ok = done
        .iter()
        .filter(|d| d.result.is_ok())
        .map(|d| d.pos)
        .max();
    // A write refused for room is not applied: only the others can make the state.
    let writes: Vec<&Done> = done
        .iter()
        .filter(|d| d.req.is_write() && !d.result.as_ref().is_err_and(is_no_space))
        .collect();
    let required = max_ok.map_or(0, |ok| writes.iter().filter(|d| d.pos <= ok).count());
    let mut model = base.clone();
    for d in &writes[..required] {
        common::model::apply_writes(&mut model, &d.req.writes());
    }
    let at_required = model.clone();
    let mut matches = Vec::new();
    for n in required..=writes.len() {
        if model == *state {
            matches.push(n);
        }
        if n < writes.len() {
            common::model::apply_writes(&mut model, &writes[n].req.writes());
        }
    }
    assert!(
        !matches.is_empty(),
        "{ctx}: the {what} state is not the state after any prefix of the {} write requests \
         that holds the {required} up to the last acknowledged one (position {max_ok:?}).\n\
         vs the state after those {required}:\n{}vs the state after all:\n{}",
        writes.len(),
        state_diff(state, &at_required),
        state_diff(state, &model)
    );
    (required, matches)
}

/// The state a closed (or failed) engine still serves: after a prefix holding every
/// acknowledged request, and (checked by `check_recovered_covers`) never ahead of what a
/// reopen recovers, since the index is updated only after a sync.
fn live_state(engine: &Engine, ctx: &str) -> State {
    let state = engine_state(engine);
    let probe: Vec<Vec<u8>> = state.keys().cloned().collect();
    assert_reads_match(engine, &state, probe.iter().map(|k| &k[..]), ctx);
    state
}

/// The recovered state is at or past the prefix the engine served before it closed.
fn check_recovered_covers(
    base: &State,
    done: &mut [Done],
    live: &State,
    recovered: &State,
    ctx: &str,
) {
    done.sort_by_key(|d| d.pos);
    let (_, live_at) = prefixes(base, done, live, "served (before reopen)", ctx);
    let (_, recovered_at) = prefixes(base, done, recovered, "recovered", ctx);
    assert!(
        live_at[0] <= *recovered_at.last().expect("non-empty"),
        "{ctx}: the engine served the state after {live_at:?} write requests, but a reopen \
         recovered only the state after {recovered_at:?}"
    );
}

/// Reopens `dir` with the real I/O, checks the recovered state against the outcomes (and
/// `read` against `for_each`), and returns the state with the counts.
fn reopen_and_check(
    dir: &Path,
    config: &Config,
    base: &State,
    done: &mut [Done],
    live: Option<&State>,
    keys: usize,
    ctx: &str,
) -> (State, Checked) {
    let engine = Engine::open(dir, config.clone())
        .unwrap_or_else(|e| panic!("{ctx}: reopen with the real I/O failed: {e}"));
    let recovered = engine_state(&engine);
    let probe: Vec<Vec<u8>> = (0..keys).map(mixed_key).collect();
    assert_reads_match(&engine, &recovered, probe.iter().map(|k| &k[..]), ctx);
    let checked = check_outcomes(base, done, &recovered, ctx);
    if let Some(live) = live {
        check_recovered_covers(base, done, live, &recovered, ctx);
    }
    engine
        .close()
        .unwrap_or_else(|e| panic!("{ctx}: close after reopen: {e}"));
    (recovered, checked)
}

/// Every segment and prepared file of `dir` is fully allocated (never sparse: a store into
/// an unbacked page of a full disk is SIGBUS), and no short prepared file is left behind.
fn assert_files_allocated(dir: &Path, segment_bytes: u64, ctx: &str) {
    let segments = segment_files(dir)
        .into_iter()
        .map(|(_, path)| (path, false));
    let prepared = prepared_files(dir).into_iter().map(|path| (path, true));
    for (path, is_prepared) in segments.chain(prepared) {
        let name = path.file_name().expect("file name").to_string_lossy();
        let meta = std::fs::metadata(&path).expect("metadata");
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "{ctx}: {name} is sparse: {} bytes, {} allocated",
            meta.len(),
            meta.blocks() * 512
        );
        if is_prepared {
            assert_eq!(
                meta.len(),
                segment_bytes,
                "{ctx}: a short prepared segment {name} was left behind"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1 and 3. Countdown I/O errors and a full disk.

/// Which operations a fault counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Op(IoOp),
    Any,
}

/// Fails the `n`th operation of `target` with `errno`; with `forever`, every later one of
/// `target` too. With `short_create`, a failing create first leaves a short file at the
/// path, as a preallocation that ran out of space would.
struct FaultyIo {
    target: Target,
    n: u64,
    forever: bool,
    errno: i32,
    short_create: bool,
    seen: AtomicU64,
    injected: AtomicU64,
    first: Mutex<Option<String>>,
}

impl FaultyIo {
    fn new(target: Target, n: u64, forever: bool, errno: i32) -> FaultyIo {
        FaultyIo {
            target,
            n,
            forever,
            errno,
            short_create: false,
            seen: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            first: Mutex::new(None),
        }
    }

    /// True once the countdown reached `n`.
    fn hit(&self) -> bool {
        self.seen.load(Ordering::SeqCst) >= self.n
    }
}

impl Io for FaultyIo {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if self.target != Target::Any && self.target != Target::Op(op) {
            return Ok(());
        }
        let k = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if k == self.n || (self.forever && k > self.n) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            self.first
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("{op:?} {}", path.display()));
            if self.short_create && op == IoOp::Create {
                let _ = std::fs::write(path, vec![0u8; 8192]);
            }
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }
}

const CD_KEYS: usize = 40;
const CD_WRITERS: usize = 3;
const CD_REQS: usize = 200;
const CD_DEPTH: usize = 16;

fn countdown_config(path: WritePath) -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        durability: Durability::Sync,
        write_path: path,
        ..Config::default()
    }
}

/// The requests of countdown writer `w` (the same in every run, so the countdown ends).
fn countdown_reqs(w: usize) -> Vec<Req> {
    let mut rng = StdRng::seed_from_u64(0xc0ffee + w as u64);
    (0..CD_REQS)
        .map(|i| random_req(&mut rng, CD_KEYS, &format!("w{w}.{i}"), 1200))
        .collect()
}

/// What one fault run saw.
struct RunResult {
    /// The countdown reached `n`.
    hit: bool,
    /// The engine (or its open) failed.
    failed: bool,
    /// The engine refused writes for lack of room (and did not fail).
    out_of_room: bool,
    checked: Checked,
}

/// One run: open through `io`, run the writers, check, close, reopen with the real I/O and
/// check the recovered state.
fn fault_run(io: &Arc<FaultyIo>, config: &Config, ctx: &str) -> RunResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn Io> = io.clone();
    let engine = match Engine::open_with_io(dir.path(), config.clone(), shared) {
        Ok(e) => e,
        Err(e) => {
            // A failure at open (first segment, directory sync): an error, and the directory
            // still opens with the real I/O.
            assert!(
                io.hit(),
                "{ctx}: open failed without an injected fault: {e}"
            );
            if io.errno == ENOSPC {
                match &e {
                    Error::Io { source, .. } => assert_eq!(
                        source.raw_os_error(),
                        Some(ENOSPC),
                        "{ctx}: open error {e} is not ENOSPC"
                    ),
                    other => panic!("{ctx}: open failed with {other:?}, not Error::Io"),
                }
            }
            let (_, checked) =
                reopen_and_check(dir.path(), config, &State::new(), &mut [], None, 0, ctx);
            return RunResult {
                hit: true,
                failed: true,
                out_of_room: false,
                checked,
            };
        }
    };
    let mut done: Vec<Done> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CD_WRITERS)
            .map(|w| {
                let engine = &engine;
                s.spawn(move || produce(engine, countdown_reqs(w), CD_DEPTH, ctx))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer panicked"))
            .collect()
    });
    if io.errno != ENOSPC {
        // Only a want of room refuses writes without failing the engine.
        assert!(
            !engine.is_out_of_room()
                && done
                    .iter()
                    .all(|d| !d.result.as_ref().is_err_and(is_no_space)),
            "{ctx}: writes refused for room, with no ENOSPC injected"
        );
    }
    let failed = engine.failure().is_some();
    if failed {
        assert_refuses(&engine, ctx);
        let why = engine.failure().expect("failed").to_string();
        if io.errno == ENOSPC {
            assert!(
                why.contains("os error 28"),
                "{ctx}: failure {why:?} does not carry ENOSPC"
            );
        }
    } else if engine.is_out_of_room() {
        assert_refuses_for_room(&engine, ctx);
        assert!(
            done.iter()
                .all(|d| d.result.as_ref().err().is_none_or(is_no_space)),
            "{ctx}: a ticket failed with an error other than NoSpace, and the engine did not fail"
        );
    } else {
        assert!(
            done.iter().all(|d| d.result.is_ok()),
            "{ctx}: a ticket failed but Engine::failure() is None"
        );
    }
    let out_of_room = engine.is_out_of_room();
    let closed = engine.close();
    assert_eq!(
        closed.is_err(),
        failed,
        "{ctx}: close returned {closed:?} with failure() = {:?}",
        engine.failure()
    );
    let live = live_state(&engine, ctx);
    drop(engine);
    if io.short_create {
        assert_files_allocated(dir.path(), config.segment_bytes, ctx);
    }
    let (_, checked) = reopen_and_check(
        dir.path(),
        config,
        &State::new(),
        &mut done,
        Some(&live),
        CD_KEYS,
        ctx,
    );
    RunResult {
        hit: io.hit(),
        failed,
        out_of_room,
        checked,
    }
}

/// Runs the countdown for `target` in both modes on both write paths: N = 1, 2, ... until a
/// run completes without reaching N.
fn countdown(target: Target) {
    countdown_with(target, 1);
}

/// [`countdown`] with `syncers` syncers (`Config::syncers`).
fn countdown_with(target: Target, syncers: usize) {
    let started = Instant::now();
    for path in [WritePath::Pwrite, WritePath::Mmap] {
        for forever in [false, true] {
            let config = Config {
                syncers,
                overlap_syncs_above: std::time::Duration::ZERO,
                ..countdown_config(path)
            };
            let mode = if forever { "forever" } else { "once" };
            let (mut runs, mut failed_runs, mut total) = (0, 0, Checked::default());
            let mut n = 1;
            loop {
                let io = Arc::new(FaultyIo::new(target, n, forever, EIO));
                let ctx = format!("countdown {target:?} {path:?} {mode} syncers={syncers} N={n}");
                let r = fault_run(&io, &config, &ctx);
                runs += 1;
                failed_runs += usize::from(r.failed);
                total += r.checked;
                if !r.hit {
                    break;
                }
                n += 1;
            }
            eprintln!(
                "countdown {target:?} {path:?} {mode}: N = 1..{} ({runs} runs, {failed_runs} failed \
                 the engine; the run at N = {n} completed with {} ops of the kind); {} requests, \
                 {} acked writes checked after reopen, {} failed tickets, {} gets checked, {} \
                 unacked writes survived",
                n - 1,
                n - 1,
                total.requests,
                total.acked_writes,
                total.failed,
                total.gets_checked,
                total.survived_unacked
            );
            assert!(n > 1, "the workload never performs a {target:?}");
        }
    }
    eprintln!("countdown {target:?}: {:.1?}", started.elapsed());
}

#[test]
fn countdown_write() {
    countdown(Target::Op(IoOp::Write));
}

#[test]
fn countdown_sync() {
    countdown(Target::Op(IoOp::Sync));
}

#[test]
fn countdown_create() {
    countdown(Target::Op(IoOp::Create));
}

#[test]
fn countdown_rename() {
    countdown(Target::Op(IoOp::Rename));
}

#[test]
fn countdown_sync_dir() {
    countdown(Target::Op(IoOp::SyncDir));
}

#[test]
fn countdown_any() {
    countdown(Target::Any);
}

/// Several syncs in flight at once: each syncer syncs through its own open of the segment;
/// any of those syncs may fail, and so may any of those opens.
#[test]
fn countdown_sync_with_two_syncers() {
    countdown_with(Target::Op(IoOp::Sync), 2);
}

#[test]
fn countdown_open_with_two_syncers() {
    countdown_with(Target::Op(IoOp::Open), 2);
}

/// A full disk: the Kth file creation and every later one fail with ENOSPC after leaving
/// a short file, K = 1 (the lock file, at open), 2 (the first segment), 3, ... until a run
/// creates fewer than K files.
#[test]
fn full_disk() {
    let started = Instant::now();
    for path in [WritePath::Pwrite, WritePath::Mmap] {
        let config = countdown_config(path);
        let (mut failed_runs, mut refusing_runs, mut total) = (0, 0, Checked::default());
        let mut k = 1;
        loop {
            let mut io = FaultyIo::new(Target::Op(IoOp::Create), k, true, ENOSPC);
            io.short_create = true;
            let io = Arc::new(io);
            let ctx = format!("full disk {path:?} K={k}");
            let r = fault_run(&io, &config, &ctx);
            // From the third file on (the lock file and the first segment come at open) every
            // creation is a segment's, whose want of room refuses writes (at a roll; one
            // prepared ahead may fail with no roll to follow), never fails the engine.
            assert!(k < 3 || !r.failed, "{ctx}: the engine failed");
            refusing_runs += usize::from(r.out_of_room);
            failed_runs += usize::from(r.failed);
            total += r.checked;
            if !r.hit {
                break;
            }
            k += 1;
        }
        eprintln!(
            "full disk {path:?}: ENOSPC from create K = 1..{} ({failed_runs} runs failed the \
             engine, {refusing_runs} refused writes for room); {} acked writes checked after \
             reopen, {} failed tickets",
            k - 1,
            total.acked_writes,
            total.failed
        );
        assert!(k > 3, "the workload never rolls a segment");
        assert!(refusing_runs > 0, "no run refused writes for room");
    }
    eprintln!("full disk: {:.1?}", started.elapsed());
}

/// Steers one interleaving: the first frame write waits until the test has submitted the
/// second request (so the flusher hands batch 1 to the syncer instead of completing it
/// itself), the first segment sync waits until the test releases it, and the second frame
/// write waits until that sync has started, then fails. So batch 2 fails while batch 1 is
/// syncing. A hook that waits too long
/// fails its operation rather than panic in an engine thread.
#[derive(Default)]
struct SlowSyncThenFailIo {
    frame_writes: AtomicU64,
    writing_first: AtomicBool,
    release_write: AtomicBool,
    sync_started: AtomicBool,
    release_sync: AtomicBool,
}

/// Polls `cond` for up to `WAIT_MAX`; false on timeout.
fn poll_until(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT_MAX;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    assert!(poll_until(cond), "timed out waiting until {what}");
}

impl Io for SlowSyncThenFailIo {
    fn before(&self, op: IoOp, path: &Path, offset: u64, _data: &[u8]) -> io::Result<()> {
        let timed_out = || {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "test hook timed out",
            ))
        };
        if path.extension().is_none_or(|e| e != "seg") {
            return Ok(());
        }
        match op {
            IoOp::Write if offset >= SEGMENT_HEADER_LEN as u64 => {
                match self.frame_writes.fetch_add(1, Ordering::SeqCst) {
                    0 => {
                        self.writing_first.store(true, Ordering::SeqCst);
                        if !poll_until(|| self.release_write.load(Ordering::SeqCst)) {
                            return timed_out();
                        }
                    }
                    1 => {
                        // Fail only once batch 1's sync is under way (else the syncer may
                        // see the failure first and never sync batch 1).
                        if !poll_until(|| self.sync_started.load(Ordering::SeqCst)) {
                            return timed_out();
                        }
                        return Err(io::Error::from_raw_os_error(EIO));
                    }
                    _ => {}
                }
            }
            IoOp::Sync => {
                let first = !self.sync_started.swap(true, Ordering::SeqCst);
                if first && !poll_until(|| self.release_sync.load(Ordering::SeqCst)) {
                    return timed_out();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A ticket has one outcome, and it is its own batch's: when a later batch's write fails while
/// an earlier batch is still being synced, the earlier batch's ticket waits for its sync and
/// completes `Ok` when it succeeds (it used to fail with the later batch).
#[test]
fn outcome_is_final_when_a_later_batch_fails_during_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = countdown_config(WritePath::Pwrite);
    let (engine, io, a, b) = batch_2_fails_while_batch_1_syncs(dir.path());
    // Batch 1 is still syncing: its outcome is not known yet.
    let early = a.wait_timeout(std::time::Duration::from_millis(200));
    io.release_sync.store(true, Ordering::SeqCst);
    let b_result = b.wait_timeout(WAIT_MAX);
    assert!(
        matches!(b_result, Err(Error::Failed(_) | Error::Io { .. })),
        "b's batch failed, but its ticket says {b_result:?}"
    );
    engine.close().expect_err("the engine failed");
    let last = a.wait_timeout(WAIT_MAX);
    eprintln!("ticket a: {early:?} while batch 1 was syncing, {last:?} after");
    // Batch 1's own sync decides its outcome: pending while it syncs, then Ok (issue item 9:
    // a batch whose sync succeeded is not failed because a later window's write failed).
    assert!(
        matches!(early, Err(Error::Timeout)),
        "ticket a (batch 1, written before the failed batch 2) completed with {early:?} \
         while batch 1 was still syncing"
    );
    assert!(
        last.is_ok(),
        "batch 1's sync succeeded, but its ticket says {last:?}"
    );
    let reopened = Engine::open(dir.path(), config).expect("reopen");
    assert_eq!(
        reopened.read_to_vec(b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// Opens an engine in `dir` over [`SlowSyncThenFailIo`], puts `a` (batch 1) and `b` (batch
/// 2), and returns once batch 2's write failed while batch 1's sync is held: the engine, the
/// hook (`release_sync` lets batch 1's sync go on), and the two tickets.
fn batch_2_fails_while_batch_1_syncs(
    dir: &Path,
) -> (
    Engine,
    Arc<SlowSyncThenFailIo>,
    mergelog::Ticket,
    mergelog::Ticket,
) {
    let io = Arc::new(SlowSyncThenFailIo::default());
    let shared: Arc<dyn Io> = io.clone();
    let config = countdown_config(WritePath::Pwrite);
    let engine = Engine::open_with_io(dir, config, shared).expect("open");
    let a = engine.put(b"a", b"1").expect("put a");
    wait_until("batch 1 is being written", || {
        io.writing_first.load(Ordering::SeqCst)
    });
    let b = engine.put(b"b", b"2").expect("put b");
    io.release_write.store(true, Ordering::SeqCst);
    wait_until("batch 1 is syncing", || {
        io.sync_started.load(Ordering::SeqCst)
    });
    wait_until("batch 2's write failed", || engine.failure().is_some());
    (engine, io, a, b)
}

/// A follower of the engine whose batch 2's write failed while batch 1 was syncing: batch 1
/// may still become durable (it does), so the follower waits, yields batch 1, and only then
/// ends with `Error::Failed`. It used to end with `Failed` at once, and a loop that stops
/// there (`for b in follower`) missed batch 1, an acknowledged write.
#[test]
fn a_follower_yields_a_batch_that_becomes_durable_after_a_later_write_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, io, a, _b) = batch_2_fails_while_batch_1_syncs(dir.path());
    let mut follower = engine.follow(1u64);
    let early = follower.try_next();
    assert!(
        matches!(early, Ok(None)),
        "batch 1 is still syncing: the follower must wait for it, not end: {early:?}"
    );
    io.release_sync.store(true, Ordering::SeqCst);
    let seq = a.wait_timeout(WAIT_MAX).expect("batch 1 durable");
    let batch = follower
        .next_timeout(WAIT_MAX)
        .expect("batch 1")
        .expect("in time");
    assert_eq!(batch.seq, seq);
    assert_eq!(batch.records[0].key, b"a");
    let end = follower.next_timeout(WAIT_MAX);
    assert!(
        matches!(end, Err(Error::Failed(_))),
        "then it ends: {end:?}"
    );
    engine.close().expect_err("the engine failed");
}

// ---------------------------------------------------------------------------------------------
// 2. Simulated power loss.

// The model's own tests: deterministic operations straight through the hook, then the power
// loss.

/// A file of `len` zeros in `dir`.
fn zero_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    path
}

/// A pwrite of `data` at `off`, announced to `io` and performed.
fn model_write(io: &PowerLossIo, path: &Path, off: u64, data: &[u8]) {
    io.before(IoOp::Write, path, off, data).unwrap();
    write_at(path, off, data);
    io.after(IoOp::Write, path);
}

/// A store of `data` into the mapping at `off`: announced with its offset only, then made.
fn model_store(io: &PowerLossIo, path: &Path, off: u64, data: &[u8]) {
    io.before(IoOp::Write, path, off, &[]).unwrap();
    write_at(path, off, data);
    io.after(IoOp::Write, path);
}

fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

/// A sync of the whole file (`None`, an fdatasync) or of a range (an msync), as the engine
/// announces them.
fn model_sync(
    io: &PowerLossIo,
    path: &Path,
    range: Option<std::ops::Range<u64>>,
) -> io::Result<()> {
    let (off, data) = match range {
        Some(r) => (r.start, r.end.to_le_bytes().to_vec()),
        None => (0, Vec::new()),
    };
    io.before(IoOp::Sync, path, off, &data)?;
    io.after(IoOp::Sync, path);
    Ok(())
}

/// Asserts that `path` holds `byte` in `range` (0 for zeros).
fn assert_bytes(path: &Path, range: std::ops::Range<usize>, byte: u8, what: &str) {
    let b = std::fs::read(path).unwrap();
    let wrong = b[range.clone()].iter().position(|&x| x != byte);
    assert!(
        wrong.is_none(),
        "{what}: {} bytes {range:?}: byte {} is {:#x}, not {byte:#x}",
        path.display(),
        range.start + wrong.unwrap_or(0),
        b[range.start + wrong.unwrap_or(0)]
    );
}

/// A ranged sync (msync) makes durable only the parts of the performed writes inside its
/// range: at the power loss (every write not durable dropped) a write outside it is lost, one
/// inside survives, one across its end survives up to the end; a store into the mapping
/// (modelled as a write to the end of the file) survives only inside the range. A whole-file
/// sync (fdatasync) still covers everything.
#[test]
fn power_model_a_ranged_sync_makes_only_its_range_durable() {
    let dir = tempfile::tempdir().unwrap();
    let io = PowerLossIo::new(u64::MAX, None);
    let written = zero_file(dir.path(), "written", 16 << 10);
    model_write(&io, &written, 0, &[b'a'; 1000]);
    model_write(&io, &written, 8192, &[b'b'; 1000]);
    model_write(&io, &written, 3000, &[b'c'; 2000]);
    model_sync(&io, &written, Some(0..4096)).unwrap();
    let mapped = zero_file(dir.path(), "mapped", 16 << 10);
    model_store(&io, &mapped, 100, &[b'd'; 6000]);
    model_sync(&io, &mapped, Some(0..4096)).unwrap();
    let whole = zero_file(dir.path(), "whole", 16 << 10);
    model_write(&io, &whole, 8192, &[b'e'; 1000]);
    model_store(&io, &whole, 100, &[b'f'; 6000]);
    model_sync(&io, &whole, None).unwrap();

    let dmg = lose_power(&io, &mut StdRng::seed_from_u64(0), 1.0, 0.0);
    assert_bytes(&written, 0..1000, b'a', "inside the range");
    assert_bytes(&written, 3000..4096, b'c', "the part inside the range");
    assert_bytes(&written, 4096..5000, 0, "the part past the range");
    assert_bytes(&written, 8192..9192, 0, "outside the range");
    assert_bytes(&mapped, 100..4096, b'd', "a store, inside the range");
    assert_bytes(&mapped, 4096..6100, 0, "a store, past the range");
    assert_bytes(&whole, 8192..9192, b'e', "a write, whole-file sync");
    assert_bytes(&whole, 100..6100, b'f', "a store, whole-file sync");
    assert_eq!(dmg.dropped_writes, 3, "{dmg:?}");
}

/// A failed sync that is not a power cut (fsyncgate): the writes it covered stay in the file
/// but are lost, so the power loss reverts them even though later syncs succeeded and kept
/// every other write, except for the bytes a later write covered and a sync made durable.
/// A failed ranged sync loses only what is inside its range.
#[test]
fn power_model_a_failed_sync_loses_its_writes_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let io = PowerLossIo::failing_sync(1);
    let path = zero_file(dir.path(), "file", 16 << 10);
    model_write(&io, &path, 0, &[b'a'; 1000]);
    let e = model_sync(&io, &path, None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EIO));
    assert!(io.failed_sync().is_some());
    // The page cache still has it.
    assert_bytes(&path, 0..1000, b'a', "before the power loss");
    model_write(&io, &path, 8192, &[b'b'; 1000]);
    model_sync(&io, &path, None).unwrap();
    model_write(&io, &path, 500, &[b'c'; 200]);
    model_sync(&io, &path, None).unwrap();
    // Not synced: the power loss keeps it (p_keep = 1), and so the lost write under it.
    model_write(&io, &path, 12000, &[b'u'; 100]);

    let ranged = PowerLossIo::failing_sync(1);
    let mapped = zero_file(dir.path(), "mapped", 16 << 10);
    model_store(&ranged, &mapped, 0, &[b'g'; 6000]);
    model_sync(&ranged, &mapped, Some(0..4096)).unwrap_err();
    model_sync(&ranged, &mapped, None).unwrap();

    let dmg = lose_power(&io, &mut StdRng::seed_from_u64(0), 0.0, 1.0);
    assert_bytes(&path, 0..500, 0, "the lost write");
    assert_bytes(
        &path,
        500..700,
        b'c',
        "a later durable write over the lost one",
    );
    assert_bytes(&path, 700..1000, 0, "the lost write after the later one");
    assert_bytes(&path, 8192..9192, b'b', "a durable write after the failure");
    assert_bytes(&path, 12000..12100, b'u', "an unsynced write kept");
    assert_eq!(dmg.lost_writes, 2, "{dmg:?}");
    lose_power(&ranged, &mut StdRng::seed_from_u64(0), 0.0, 1.0);
    assert_bytes(&mapped, 0..4096, 0, "a store, inside the failed range");
    assert_bytes(
        &mapped,
        4096..6000,
        b'g',
        "a store, outside the failed range",
    );
}

/// A rename of `from` to `to` (replacing `to` if it exists), announced to `io` and performed.
fn model_rename(io: &PowerLossIo, from: &Path, to: &Path) {
    use std::os::unix::ffi::OsStrExt;
    io.before(IoOp::Rename, from, 0, to.as_os_str().as_bytes())
        .unwrap();
    std::fs::rename(from, to).unwrap();
    io.after(IoOp::Rename, from);
}

/// A sync of the directory `dir`, announced to `io`.
fn model_sync_dir(io: &PowerLossIo, dir: &Path) {
    io.before(IoOp::SyncDir, dir, 0, &[]).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
    io.after(IoOp::SyncDir, dir);
}

/// The names in `dir`, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// What `path` holds, `None` if there is no such file.
fn contents(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

const OLD_FILE: &[u8] = b"the old file";
const NEW_FILE: &[u8] = b"the new file, longer";

/// A rename through a fresh model and a power loss after it: `old` prepares the destination
/// `file` (or leaves it free), then `new` (holding [`NEW_FILE`], durable) is renamed to it,
/// the directory synced after it if `sync_dir`, and the power lost (seeded by `seed`; every
/// write not durable dropped). Returns the directory, whether the power loss undid the
/// rename, and the names the directory held just before the power loss.
fn rename_then_lose_power(
    old: impl FnOnce(&PowerLossIo, &Path),
    sync_dir: bool,
    seed: u64,
) -> (tempfile::TempDir, bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let io = PowerLossIo::new(u64::MAX, None);
    let (from, to) = (dir.path().join("new"), dir.path().join("file"));
    std::fs::write(&from, NEW_FILE).unwrap();
    old(&io, &to);
    model_rename(&io, &from, &to);
    if sync_dir {
        model_sync_dir(&io, dir.path());
    }
    let before = dir_names(dir.path());
    let dmg = lose_power(&io, &mut StdRng::seed_from_u64(seed), 1.0, 0.0);
    assert!(dmg.undone_dir_changes <= 1, "{dmg:?}");
    (dir, dmg.undone_dir_changes == 1, before)
}

/// An existing, durable destination holding [`OLD_FILE`].
fn durable_old(_: &PowerLossIo, to: &Path) {
    std::fs::write(to, OLD_FILE).unwrap();
}

/// A rename over an existing file that no directory sync made durable (a small file replaced
/// whole, a rewritten segment renamed over its name): a power loss that undoes it leaves the
/// renamed file at its old name and the old file back at the destination, as a filesystem
/// does; one that keeps it leaves only the new file. Either way no backup is left behind.
#[test]
fn power_model_an_undurable_rename_over_a_file_brings_the_old_file_back() {
    let mut seen = [false; 2];
    for seed in 0..32 {
        let (dir, undone, _) = rename_then_lose_power(durable_old, false, seed);
        seen[usize::from(undone)] = true;
        let ctx = format!("seed {seed}, undone {undone}");
        let (from, to) = (dir.path().join("new"), dir.path().join("file"));
        if undone {
            assert_eq!(contents(&from).as_deref(), Some(NEW_FILE), "{ctx}: from");
            assert_eq!(contents(&to).as_deref(), Some(OLD_FILE), "{ctx}: to");
            assert_eq!(dir_names(dir.path()), ["file", "new"], "{ctx}");
        } else {
            assert_eq!(contents(&to).as_deref(), Some(NEW_FILE), "{ctx}: to");
            assert_eq!(dir_names(dir.path()), ["file"], "{ctx}");
        }
    }
    assert_eq!(seen, [true; 2], "both outcomes, over 32 seeds");
}

/// A rename over an existing file followed by a sync of its directory is durable: the sync
/// drops the old file's backup, and a power loss leaves the new file at the destination and
/// nothing at its old name.
#[test]
fn power_model_a_durable_rename_over_a_file_drops_the_old_file() {
    for seed in 0..8 {
        let (dir, undone, before) = rename_then_lose_power(durable_old, true, seed);
        let ctx = format!("seed {seed}");
        assert!(!undone, "{ctx}: a durable rename undone");
        assert_eq!(before, ["file"], "{ctx}: the backup outlived the sync");
        let to = dir.path().join("file");
        assert_eq!(contents(&to).as_deref(), Some(NEW_FILE), "{ctx}");
        assert_eq!(dir_names(dir.path()), ["file"], "{ctx}");
    }
}

/// The writes to the replaced file not yet durable stay with that file: the power loss takes
/// them back in the old file when it undoes the rename, and never in the new file that took
/// its name.
#[test]
fn power_model_a_replaced_files_unsynced_writes_stay_with_it() {
    let mut seen = [false; 2];
    for (seed, sync_dir) in (0..32).flat_map(|seed| [(seed, false), (seed, true)]) {
        let old = |io: &PowerLossIo, to: &Path| {
            durable_old(io, to);
            model_write(io, to, 4, b"OLD");
        };
        let (dir, undone, _) = rename_then_lose_power(old, sync_dir, seed);
        seen[usize::from(undone)] = true;
        let ctx = format!("seed {seed}, directory synced {sync_dir}, undone {undone}");
        let to = dir.path().join("file");
        let expected = if undone { OLD_FILE } else { NEW_FILE };
        assert_eq!(contents(&to).as_deref(), Some(expected), "{ctx}");
    }
    assert_eq!(seen, [true; 2], "both outcomes, over 32 seeds");
}

/// A rename onto a free name that no directory sync made durable: a power loss either keeps
/// it or moves the file back, and makes no backup.
#[test]
fn power_model_an_undurable_rename_onto_a_free_name_is_moved_back() {
    let mut seen = [false; 2];
    for seed in 0..32 {
        let (dir, undone, before) = rename_then_lose_power(|_, _| {}, false, seed);
        seen[usize::from(undone)] = true;
        let ctx = format!("seed {seed}, undone {undone}");
        assert_eq!(before, ["file"], "{ctx}: no backup of a free name");
        let kept = if undone { "new" } else { "file" };
        let kept_path = dir.path().join(kept);
        assert_eq!(contents(&kept_path).as_deref(), Some(NEW_FILE), "{ctx}");
        assert_eq!(dir_names(dir.path()), [kept], "{ctx}");
    }
    assert_eq!(seen, [true; 2], "both outcomes, over 32 seeds");
}

const PL_KEYS: usize = 16;

/// Totals over the seeds.
#[derive(Default, Debug, Clone, Copy)]
struct PowerTotals {
    seeds: u64,
    cycles: u64,
    cut_at_open: u64,
    cut_in_workload: u64,
    tail_truncated: u64,
    faulty_reopens: u64,
    faulty_reopen_failed: u64,
    checked: Checked,
    damage: Damage,
}

impl std::ops::AddAssign for PowerTotals {
    fn add_assign(&mut self, t: PowerTotals) {
        self.seeds += t.seeds;
        self.cycles += t.cycles;
        self.cut_at_open += t.cut_at_open;
        self.cut_in_workload += t.cut_in_workload;
        self.tail_truncated += t.tail_truncated;
        self.faulty_reopens += t.faulty_reopens;
        self.faulty_reopen_failed += t.faulty_reopen_failed;
        self.checked += t.checked;
        self.damage += t.damage;
    }
}

/// One seed: one to three cycles of open through `PowerLossIo`, a workload cut short by the
/// power, the damage, and a reopen with the real I/O that must recover every acknowledged
/// write. Each later cycle continues the log the one before recovered.
fn power_loss_seed(seed: u64, write_path: WritePath) -> PowerTotals {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = Config {
        // Odd seeds have two syncs in flight at once.
        syncers: 1 + (seed & 1) as usize,
        overlap_syncs_above: std::time::Duration::ZERO,
        ..power_loss_config(write_path)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut totals = PowerTotals {
        seeds: 1,
        ..PowerTotals::default()
    };
    let mut base = State::new();
    let cycles = rng.random_range(1..=3);
    for cycle in 0..cycles {
        let ctx = format!("power loss ({write_path:?}) seed {seed} cycle {cycle}");
        // The workload: groups of requests, each followed by a flush, with up to `depth`
        // requests in flight.
        let groups = rng.random_range(3..=40);
        let depth = rng.random_range(1..=20);
        let mut reqs = Vec::new();
        for g in 0..groups {
            for i in 0..rng.random_range(1..=6) {
                let tag = format!("s{seed}.c{cycle}.g{g}.{i}");
                match random_req(&mut rng, PL_KEYS, &tag, 2500) {
                    Req::Flush => {}
                    r => reqs.push(r),
                }
            }
            reqs.push(Req::Flush);
        }
        // The cut falls anywhere from open to after the end: at the kth operation (about two
        // per group, a write and a sync, plus six at open and at each roll), or, to catch
        // more frames unsynced, at the kth sync (one per group at most, two at open and each
        // roll).
        let (cut_kind, cut_at) = if rng.random_bool(0.5) {
            (None, rng.random_range(1..=2 * groups as u64 + 12))
        } else {
            (Some(IoOp::Sync), rng.random_range(1..=groups as u64 + 4))
        };
        let p_drop = [0.0, 0.2, 0.5][rng.random_range(0..3)];
        let p_keep = [0.1, 0.5, 0.9][rng.random_range(0..3)];
        let tear_seed: u64 = rng.random();
        // A quarter of the seeds also tear sectors inside themselves (from a generator of
        // their own, so that every other draw of a seed stays what it was).
        let p_split = if StdRng::seed_from_u64(seed ^ 0x5ec7_0e5b).random_bool(0.25) {
            [0.1, 0.5][(seed >> 3) as usize % 2]
        } else {
            0.0
        };
        // Now and then a first reopen through I/O that fails (the Nth operation, or every
        // one from the Nth on) while it repairs the torn tail or prepares a segment.
        let faulty_reopen = rng
            .random_bool(0.25)
            .then(|| (rng.random_range(1..=4), rng.random_bool(0.5)));

        let io = Arc::new(PowerLossIo::new(cut_at, cut_kind));
        let shared: Arc<dyn Io> = io.clone();
        let mut live = None;
        let mut done = match Engine::open_with_io(dir.path(), config.clone(), shared) {
            Ok(engine) => {
                let done = produce(&engine, reqs, depth, &ctx);
                // (A cut that hits only the background preparation of the next segment fails
                // the engine only if it rolls.)
                totals.cut_in_workload += u64::from(io.is_cut());
                io.cut_now();
                if engine.failure().is_some() {
                    assert_refuses(&engine, &ctx);
                }
                let _ = engine.close();
                live = Some(live_state(&engine, &ctx));
                drop(engine);
                done
            }
            Err(e) => {
                assert!(io.is_cut(), "{ctx}: open failed: {e}");
                totals.cut_at_open += 1;
                io.cut_now();
                Vec::new()
            }
        };
        let mut tear_rng = StdRng::seed_from_u64(tear_seed);
        totals.damage += lose_power_within_sectors(&io, &mut tear_rng, p_drop, p_keep, p_split);

        if let Some((n, forever)) = faulty_reopen {
            let faulty = Arc::new(FaultyIo::new(Target::Any, n, forever, EIO));
            let shared: Arc<dyn Io> = faulty.clone();
            match Engine::open_with_io(dir.path(), config.clone(), shared) {
                Ok(engine) => {
                    let _ = engine.close();
                }
                Err(e) => {
                    assert!(faulty.hit(), "{ctx}: faulty reopen failed unprovoked: {e}");
                    totals.faulty_reopen_failed += 1;
                }
            }
            totals.faulty_reopens += 1;
        }

        let engine = Engine::open(dir.path(), config.clone()).unwrap_or_else(|e| {
            panic!(
                "{ctx}: reopen after the power loss failed: {e} (power cut at {:?})",
                io.cut_op()
            )
        });
        totals.tail_truncated += u64::from(engine.open_report().truncated.is_some());
        let recovered = engine_state(&engine);
        let probe: Vec<Vec<u8>> = (0..PL_KEYS).map(mixed_key).collect();
        assert_reads_match(&engine, &recovered, probe.iter().map(|k| &k[..]), &ctx);
        totals.checked += check_outcomes(&base, &mut done, &recovered, &ctx);
        if let Some(live) = &live {
            check_recovered_covers(&base, &mut done, live, &recovered, &ctx);
        }
        engine
            .close()
            .unwrap_or_else(|e| panic!("{ctx}: close after reopen: {e}"));
        base = recovered;
        totals.cycles += 1;
    }
    totals
}

/// The pwrite path (the default): 1,000 seeds by default, `MERGELOG_POWERLOSS_SEEDS` for
/// more, `MERGELOG_POWERLOSS_SEED` (and `_REPEAT`) to replay one.
#[test]
fn power_loss() {
    run_power_loss(WritePath::Pwrite, "MERGELOG_POWERLOSS", 1000);
}

/// The mmap path: its stores bypass the I/O hooks, which see only where each frame starts
/// (see `Unsynced`). 1,000 seeds by default (`MERGELOG_POWERLOSS_MMAP_SEEDS` for more,
/// `MERGELOG_POWERLOSS_MMAP_SEED` to replay one).
#[test]
fn power_loss_mmap() {
    run_power_loss(WritePath::Mmap, "MERGELOG_POWERLOSS_MMAP", 1000);
}

fn run_power_loss(write_path: WritePath, env: &str, default_seeds: u64) {
    let started = Instant::now();
    let seeds = seeds::from_env(env, default_seeds);
    let (passed, failed) = seeds::run(&seeds, |seed| power_loss_seed(seed, write_path));
    let mut t = PowerTotals::default();
    for p in passed {
        t += p;
    }
    eprintln!(
        "power loss ({write_path:?}): {} seeds, {} cycles ({} cut at open, {} cut during the \
         workload), {} requests, {} acked writes checked (0 lost), {} unacked survived, {} \
         gets checked; {} unsynced writes ({} into the mapping): {} dropped, {} torn ({} \
         sectors inside themselves), {} kept; {} directory changes undone; {} reopens cut a torn tail; {} first reopens \
         through failing I/O ({} failed); {:.1?}",
        t.seeds,
        t.cycles,
        t.cut_at_open,
        t.cut_in_workload,
        t.checked.requests,
        t.checked.acked_writes,
        t.checked.survived_unacked,
        t.checked.gets_checked,
        t.damage.unsynced_writes,
        t.damage.mapped_writes,
        t.damage.dropped_writes,
        t.damage.torn_writes,
        t.damage.split_sectors,
        t.damage.kept_writes,
        t.damage.undone_dir_changes,
        t.tail_truncated,
        t.faulty_reopens,
        t.faulty_reopen_failed,
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "power loss ({write_path:?}) failed for seeds {failed:?} ({env}_SEED=<seed> replays one)"
    );
}

/// Fails the `nth` operation of kind `op` counted from when it is armed: lets a test fail a
/// directory sync of `retire_before` without failing the rolls' directory syncs before it.
struct ArmedIo {
    op: IoOp,
    nth: u64,
    armed: AtomicBool,
    seen: AtomicU64,
}

impl ArmedIo {
    fn new(op: IoOp, nth: u64) -> ArmedIo {
        ArmedIo {
            op,
            nth,
            armed: AtomicBool::new(false),
            seen: AtomicU64::new(0),
        }
    }
}

/// Small segments, so that a few hundred puts span several.
fn retire_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        ..Config::default()
    }
}

impl Io for ArmedIo {
    fn before(&self, op: IoOp, _path: &Path, _offset: u64, _data: &[u8]) -> io::Result<()> {
        if op == self.op && self.armed.load(Ordering::SeqCst) {
            let k = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
            if k == self.nth {
                return Err(io::Error::from_raw_os_error(EIO));
            }
        }
        Ok(())
    }
}

/// `retire_before` whose third file removal, or the directory sync after its third removal,
/// fails: the error names the file (or directory) and EIO; the first two segments are gone
/// and forgotten, the failed one is forgotten only if its file is gone; its state is what the
/// remaining log replays to, and what a reopen finds. A failed removal leaves the engine
/// healthy (writes are acknowledged and durable, a second call retires the rest); a failed
/// directory sync fails it, as any failed sync does (reads go on, writes are refused).
#[test]
fn a_failed_segment_removal_is_reported_and_forgets_only_what_went() {
    for op in [IoOp::Remove, IoOp::SyncDir] {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(ArmedIo::new(op, 3));
        let config = retire_config();
        let engine = Engine::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
        let mut n = 0usize;
        while segment_files(dir.path()).len() < 7 {
            let ts: Vec<Ticket> = (0..20)
                .map(|j| {
                    let k = mixed_key((n * 20 + j) % 300);
                    engine.put(&k, &value(&format!("{n}.{j}"), 300)).unwrap()
                })
                .collect();
            for t in ts {
                t.wait().unwrap();
            }
            n += 1;
        }
        let before = segment_files(dir.path());
        io.armed.store(true, Ordering::SeqCst);
        let last_id = before.last().unwrap().0;
        let err = engine.retire_before(last_id).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("os error 5"),
            "{op:?}: error {msg:?} does not carry EIO"
        );
        let after = segment_files(dir.path());
        match op {
            IoOp::Remove => {
                assert!(msg.contains(&before[2].1.display().to_string()), "{msg}");
                assert_eq!(after, before[2..].to_vec(), "{op:?}: files left");
            }
            _ => assert_eq!(after, before[3..].to_vec(), "{op:?}: files left"),
        }
        assert_eq!(
            engine.failure().is_some(),
            op == IoOp::SyncDir,
            "{op:?}: only a failed sync fails the engine"
        );
        let replayed = |engine: &Engine, first: u64| {
            let mut st = State::new();
            let r = engine.replay().unwrap();
            assert_eq!(r.first_seq(), first, "{op:?}");
            for b in r.batches() {
                common::model::apply_batch(&mut st, &b);
            }
            st
        };
        let live = engine_state(&engine);
        let want = replayed(&engine, after[0].0);
        assert_eq!(live, want, "{op:?}: {}", state_diff(&live, &want));
        if op == IoOp::SyncDir {
            assert!(matches!(
                engine.put(b"after", b"retire"),
                Err(Error::Failed(_))
            ));
            assert!(matches!(engine.close(), Err(Error::Failed(_))));
            drop(engine);
            io.armed.store(false, Ordering::SeqCst);
            let reopened = Engine::open(dir.path(), config).unwrap();
            assert_eq!(engine_state(&reopened), live, "{op:?}: reopen");
            continue;
        }
        // Still writing.
        engine.put(b"after", b"retire").unwrap().wait().unwrap();
        // The rest goes on a second call.
        io.armed.store(false, Ordering::SeqCst);
        let r = engine.retire_before(last_id).unwrap();
        assert_eq!(r.first_seq, last_id, "{op:?}");
        assert_eq!(r.segments, after.len() - 1, "{op:?}");
        assert_eq!(segment_files(dir.path()).len(), 1, "{op:?}");
        let live = engine_state(&engine);
        assert_eq!(live, replayed(&engine, last_id), "{op:?}");
        assert_eq!(
            live.get(&b"after"[..]).map(|v| &v[..]),
            Some(&b"retire"[..])
        );
        engine.close().unwrap();
        drop(engine);
        let reopened = Engine::open(dir.path(), config).unwrap();
        assert_eq!(engine_state(&reopened), live, "{op:?}: reopen");
    }
}

/// One seed of the power-loss run with retirement and recycled segments (see
/// [`power_loss_recycling`]). Returns (cycles, acked writes checked, reused segments seen).
fn power_loss_recycling_seed(seed: u64, write_path: WritePath) -> (u64, u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = Config {
        recycle_segments: 2,
        ..power_loss_config(write_path)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cycles, mut checked, mut reused) = (0, 0, 0);
    // Every put so far, in submission order: (cycle, index) -> value. Keys are unique.
    let mut submitted: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut must_survive_from = 0usize;
    for cycle in 0..rng.random_range(1..=3u32) {
        let ctx = format!("power loss with recycling ({write_path:?}) seed {seed} cycle {cycle}");
        let puts = rng.random_range(50..=400usize);
        let depth = rng.random_range(1..=24usize);
        let cut_at = rng.random_range(1..=puts as u64 + 30);
        let (p_drop, p_keep) = (rng.random_range(0.0..0.6), rng.random_range(0.1..0.9));
        // Odd seeds also tear sectors inside themselves (a roll's header over the earlier
        // header of a recycled file among them).
        let p_split = if seed & 1 == 1 { 0.3 } else { 0.0 };
        let io = Arc::new(PowerLossIo::new(cut_at, None));
        let shared: Arc<dyn Io> = io.clone();
        let first = submitted.len();
        if let Ok(engine) = Engine::open_with_io(dir.path(), config.clone(), shared) {
            let mut inflight: VecDeque<(usize, Ticket)> = VecDeque::new();
            let mut acked = Vec::new();
            for i in 0..puts {
                // Retire in the first half only, so that the second half's acknowledged puts
                // are all checked.
                if i % 10 == 0 && i < puts / 2 {
                    // Keep the last two segments. A write submitted after this call started
                    // is in a batch it cannot retire, and so is every later one: they must
                    // survive if acknowledged.
                    let segs = engine.segments();
                    must_survive_from = submitted.len();
                    if segs.len() > 2 {
                        let _ = engine.retire_before(segs[segs.len() - 2].first_seq);
                    }
                }
                let k = format!("c{cycle}.{i:05}").into_bytes();
                let v = value(&format!("s{seed}.c{cycle}.{i}"), rng.random_range(1..=2500));
                match engine.put(&k, &v) {
                    Ok(t) => inflight.push_back((submitted.len(), t)),
                    Err(_) => break,
                }
                submitted.push((k, v));
                while inflight.len() > depth {
                    let (n, t) = inflight.pop_front().expect("non-empty");
                    if t.wait_timeout(WAIT_MAX).is_ok() {
                        acked.push(n);
                    }
                }
            }
            for (n, t) in inflight {
                if t.wait_timeout(WAIT_MAX).is_ok() {
                    acked.push(n);
                }
            }
            io.cut_now();
            let _ = engine.close();
            drop(engine);
            // Remember which acknowledged writes must survive.
            acked.retain(|&n| n >= must_survive_from);
            let mut rng2 = StdRng::seed_from_u64(rng.random());
            lose_power_within_sectors(&io, &mut rng2, p_drop, p_keep, p_split);
            let engine = Engine::open(dir.path(), config.clone())
                .unwrap_or_else(|e| panic!("{ctx}: reopen after the power loss failed: {e}"));
            for &n in &acked {
                let (k, v) = &submitted[n];
                assert_eq!(
                    engine.read_to_vec(k).unwrap().as_deref(),
                    Some(&v[..]),
                    "{ctx}: acknowledged put #{n} lost (power cut at {:?})",
                    io.cut_op()
                );
            }
            checked += acked.len() as u64;
            reused += engine
                .segments()
                .iter()
                .filter(|s| {
                    let b = std::fs::read(&s.path).unwrap();
                    SegmentHeader::decode(&b).unwrap().recycled
                })
                .count() as u64;
            // The log is one contiguous run of the puts, in submission order: each batch
            // holds a run of them (sorted by key, which here is submission order within a
            // cycle), and each batch continues where the one before ended.
            let index: BTreeMap<&[u8], usize> = submitted
                .iter()
                .enumerate()
                .map(|(n, (k, _))| (&k[..], n))
                .collect();
            let reader = engine.replay().unwrap();
            let mut last: Option<usize> = None;
            for b in reader.batches() {
                for r in b.records() {
                    let n = *index.get(r.key).unwrap_or_else(|| {
                        panic!("{ctx}: the log holds a key never put: {:?}", r.key)
                    });
                    assert_eq!(r.value, &submitted[n].1[..], "{ctx}: value of put #{n}");
                    if let Some(prev) = last {
                        // Across cycles the unacknowledged tail of the earlier one may be
                        // gone; within one, nothing in between may be missing.
                        let same_cycle = submitted[prev].0[..3] == submitted[n].0[..3];
                        assert!(
                            n > prev && (!same_cycle || n == prev + 1),
                            "{ctx}: put #{n} follows put #{prev} in the log (batch {})",
                            b.seq()
                        );
                    }
                    last = Some(n);
                }
            }
            assert!(last.is_none_or(|l| l >= first || acked.is_empty()), "{ctx}");
            engine.close().unwrap();
        } else {
            io.cut_now();
            let mut rng2 = StdRng::seed_from_u64(rng.random());
            lose_power_within_sectors(&io, &mut rng2, p_drop, p_keep, p_split);
        }
        cycles += 1;
    }
    (cycles, checked, reused)
}

/// Simulated power loss (as `power_loss`) in a log that retires its history as it goes and
/// reuses retired segments (`recycle_segments: 2`, keeping the last two segments, on both
/// write paths): the power is cut at a random operation (writes, syncs, renames into the
/// pool and out of it, removals, directory syncs), unsynced writes are torn or dropped and
/// unsynced directory changes undone (a removal too: the file comes back). After each
/// reopen: every acknowledged put that no retirement could have removed is there with its
/// value; the log holds only puts that were made, and is one gapless run of them in
/// submission order, so no frame of a segment's earlier life, and no torn remains, were
/// taken for part of the log. 300 seeds per write path (`MERGELOG_POWERLOSS_RECYCLE_SEEDS`).
#[test]
fn power_loss_recycling() {
    let seeds = common::env_u64("MERGELOG_POWERLOSS_RECYCLE_SEEDS").unwrap_or(300);
    let started = Instant::now();
    for write_path in [WritePath::Pwrite, WritePath::Mmap] {
        let (mut cycles, mut checked, mut reused) = (0, 0, 0);
        for seed in 0..seeds {
            let r = std::panic::catch_unwind(|| power_loss_recycling_seed(seed, write_path));
            let (c, k, u) = r.unwrap_or_else(|_| panic!("{write_path:?}: seed {seed} failed"));
            cycles += c;
            checked += k;
            reused += u;
        }
        eprintln!(
            "power loss with recycling ({write_path:?}): {seeds} seeds, {cycles} cycles, \
             {checked} acked puts checked, {reused} recycled segments in reopened logs; {:.1?}",
            started.elapsed()
        );
        assert!(reused > 0, "{write_path:?}: no segment was ever reused");
    }
}

/// With `recycle_segments`, a retired segment renamed into the pool whose directory sync
/// failed is never reused: after a crash the rename might be undone, and the file would then
/// be the old segment again, with a new segment's header in it. The failed sync fails the
/// engine (no later retirement or roll runs), the file stays untouched, and the next open,
/// after that unclean end, keeps no spare file: it is removed, not adopted.
#[test]
fn a_pooled_file_whose_directory_sync_failed_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(ArmedIo::new(IoOp::SyncDir, 1));
    let config = Config {
        recycle_segments: 2,
        ..retire_config()
    };
    let engine = Engine::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
    let mut n = 0usize;
    let mut put_some = |engine: &Engine| {
        let ts: Vec<Ticket> = (0..20)
            .map(|j| {
                n += 1;
                engine
                    .put(
                        &mixed_key((n * 20 + j) % 300),
                        &value(&format!("{n}.{j}"), 300),
                    )
                    .unwrap()
            })
            .collect();
        for t in ts {
            t.wait().unwrap();
        }
    };
    while segment_files(dir.path()).len() < 3 {
        put_some(&engine);
    }
    io.armed.store(true, Ordering::SeqCst);
    let segs = engine.segments();
    assert!(engine
        .retire_before(segs[segs.len() - 1].first_seq)
        .is_err());
    io.armed.store(false, Ordering::SeqCst);
    assert!(engine.failure().is_some(), "a failed sync fails the engine");
    let orphans = pool_files(dir.path());
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let before = std::fs::read(&orphans[0]).unwrap();
    assert!(engine.put(b"k", b"v").is_err());
    let state = engine_state(&engine);
    assert!(engine.close().is_err());
    drop(engine);
    assert!(
        std::fs::read(&orphans[0]).is_ok_and(|now| now == before),
        "the file whose rename was not made durable was written"
    );
    let reopened = Engine::open(dir.path(), config).unwrap();
    assert!(!orphans[0].exists(), "kept as a spare after an unclean end");
    assert_eq!(engine_state(&reopened), state);
    reopened.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Every file change goes through the seam.

/// Records every operation that completed (with a rename's destination); while armed, fails
/// every file creation with ENOSPC after leaving a short file, as a full disk would (a
/// failed preparation of the next segment is made again at the roll: only a disk that stays
/// full fails the engine).
#[derive(Default)]
struct DirRecorder {
    done: Mutex<Vec<(IoOp, PathBuf, Option<PathBuf>)>>,
    renaming: Mutex<Option<PathBuf>>,
    fail_creates: AtomicBool,
    /// The file whose creation was failed last.
    failed_create: Mutex<Option<PathBuf>>,
}

impl Io for DirRecorder {
    fn before(&self, op: IoOp, path: &Path, _offset: u64, data: &[u8]) -> io::Result<()> {
        if op == IoOp::Create && self.fail_creates.load(Ordering::SeqCst) {
            std::fs::write(path, vec![0u8; 8192])?;
            *self.failed_create.lock().unwrap() = Some(path.to_owned());
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        if op == IoOp::Rename {
            use std::os::unix::ffi::OsStrExt;
            let to = PathBuf::from(std::ffi::OsStr::from_bytes(data));
            *self.renaming.lock().unwrap() = Some(to);
        }
        Ok(())
    }

    fn after(&self, op: IoOp, path: &Path) {
        let to = (op == IoOp::Rename)
            .then(|| self.renaming.lock().unwrap().take())
            .flatten();
        self.done.lock().unwrap().push((op, path.to_owned(), to));
    }
}

impl DirRecorder {
    /// Runs `step` and checks that every name that appeared in or vanished from `dir`
    /// meanwhile was created, renamed or removed through the hooks.
    fn check<T>(&self, dir: &Path, what: &str, step: impl FnOnce() -> T) -> T {
        let list = || -> std::collections::BTreeSet<PathBuf> {
            std::fs::read_dir(dir)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let before = list();
        let from = self.done.lock().unwrap().len();
        let out = step();
        let after = list();
        let done = self.done.lock().unwrap()[from..].to_vec();
        let made = |p: &PathBuf| {
            done.iter().any(|(op, path, to)| {
                (matches!(op, IoOp::Create | IoOp::CreateDir) && path == p)
                    || to.as_ref() == Some(p)
            })
        };
        let gone = |p: &PathBuf| {
            done.iter()
                .any(|(op, path, _)| matches!(op, IoOp::Remove | IoOp::Rename) && path == p)
        };
        for p in after.difference(&before) {
            assert!(
                made(p),
                "{what}: {} appeared unannounced; hooks saw {done:?}",
                p.display()
            );
        }
        for p in before.difference(&after) {
            assert!(
                gone(p),
                "{what}: {} vanished unannounced; hooks saw {done:?}",
                p.display()
            );
        }
        out
    }

    fn removed(&self, p: &Path) -> bool {
        let done = self.done.lock().unwrap();
        done.iter()
            .any(|(op, path, _)| *op == IoOp::Remove && path == p)
    }
}

/// Every file the engine creates, renames or removes, it does through the storage seam, so
/// the fault and power-loss hooks see it: at open (spare files of the wrong size removed,
/// the lock file and the first segment created), writing (rolls), retiring (renames into the
/// pool, removals), after a failed creation (the half-made file removed), and in
/// point-in-time recovery (the segments after the damage removed). The directory listing
/// before and after each step must differ only by what the hooks were told.
#[test]
fn every_file_change_goes_through_the_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let (stray_prep, stray_pool) = (dir.join("prep-7.tmp"), dir.join("recycle-3.tmp"));
    std::fs::write(&stray_prep, [0u8; 4096]).unwrap();
    std::fs::write(&stray_pool, [0u8; 4096]).unwrap();
    let rec = Arc::new(DirRecorder::default());
    let config = Config {
        recycle_segments: 1,
        ..retire_config()
    };
    let open = |config: &Config, what: &str| {
        let shared: Arc<dyn Io> = rec.clone();
        rec.check(&dir, what, || {
            Engine::open_with_io(&dir, config.clone(), shared)
        })
    };
    let put_until = |engine: &Engine, n: &mut usize, done: &dyn Fn(&Engine) -> bool| {
        while !done(engine) {
            *n += 1;
            match engine.put(&mixed_key(*n % 300), &value(&format!("{n}"), 700)) {
                Ok(t) => {
                    let _ = t.wait();
                }
                Err(_) => break,
            }
        }
    };
    let mut n = 0;

    let engine = open(&config, "open with spare files of the wrong size").unwrap();
    assert!(rec.removed(&stray_prep) && rec.removed(&stray_pool));
    rec.check(&dir, "rolls and retirement", || {
        put_until(&engine, &mut n, &|e: &Engine| e.segments().len() >= 5);
        let segs = engine.segments();
        engine.retire_before(segs[3].first_seq).unwrap();
        put_until(&engine, &mut n, &|e: &Engine| {
            e.counts().segments.reused >= 1
        });
        let segs = engine.segments();
        engine
            .retire_before(segs[segs.len() - 1].first_seq)
            .unwrap();
        engine.close().unwrap();
    });
    drop(engine);

    let engine = open(&config, "reopen").unwrap();
    rec.fail_creates.store(true, Ordering::SeqCst);
    let failure = rec.check(&dir, "a failed creation", || {
        put_until(&engine, &mut n, &|e: &Engine| e.is_out_of_room());
        let refusal = engine.put(b"k", b"v").expect_err("writes are refused");
        let _ = engine.close();
        format!("{refusal}")
    });
    rec.fail_creates.store(false, Ordering::SeqCst);
    assert!(failure.contains("os error 28"), "{failure}");
    let half_made = rec
        .failed_create
        .lock()
        .unwrap()
        .clone()
        .expect("a creation failed");
    assert!(
        rec.removed(&half_made) && !half_made.exists(),
        "the half-made {} was not removed through the hooks",
        half_made.display()
    );
    drop(engine);

    // Damage in the first segment: point-in-time recovery keeps what is before it and
    // removes the segments after it.
    let segs = segment_files(&dir);
    assert!(segs.len() >= 2, "{segs:?}");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&segs[0].1)
            .unwrap();
        f.write_all_at(&[0xff; 8], SEGMENT_HEADER_LEN as u64 + 40)
            .unwrap();
    }
    let pit = Config {
        recovery: mergelog::RecoveryMode::PointInTime,
        ..config.clone()
    };
    let engine = open(&pit, "point-in-time recovery").unwrap();
    assert!(engine.open_report().truncated.is_some());
    for (_, p) in &segs[1..] {
        assert!(
            rec.removed(p),
            "{} was not removed through the hooks",
            p.display()
        );
    }
    engine.close().unwrap();
}
