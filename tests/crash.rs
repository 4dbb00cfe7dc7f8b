//! Crash tests: a child process writes and reports what it submitted and what was
//! acknowledged; the parent kills it with SIGKILL at a random moment, reopens the directory and
//! checks that the recovered state is the state after a prefix of the submission order that
//! holds every acknowledged write.
//!
//! The child is this test binary itself, re-executed with `--exact crash_child` and the
//! directory in `MERGELOG_CRASH_CHILD_DIR`. Several writer threads submit puts, deletes and
//! write batches over a small zipf-distributed key space (every value unique), with the write
//! path, coalescing, durability (`Sync`, sometimes `NoSync`, which must survive a process kill
//! too), segment size (64 or 256 KiB, so segments roll and differ in size) and syncers (one or
//! two syncs in flight) drawn per child. Now and then a request is a merge (`MergeOperator::
//! Add`) onto one of a few counters, alone or in a batch: the flusher folds it onto the value
//! of the windows in flight or the durable one, and the check below holds it to the exact sum
//! of the merges in the prefix.
//! It prints, flushing each line (a kill may cut the last line short: an incomplete line is
//! ignored, which is safe because `INT` precedes the submit and `ACK` follows the wait):
//!
//! - `@@INT <id> <op>...` before it submits request `id` (ops: `P:<key hex>:<value hex>`,
//!   `D:<key hex>` or `M:<key hex>:<addend>`, a merge adding to a counter; several ops are
//!   one `WriteBatch`);
//! - `@@SUB <id> <position>` once the submit returned, with the ticket's position;
//! - `@@ACK <id>` once the ticket completed `Ok`;
//! - `@@REF <id>` if the request was refused for lack of room (below): never applied;
//! - `@@CMP ...` about its compactions (below).
//!
//! Submitting and printing `INT`/`SUB` happen under one lock, so ids are in position order and
//! only the very last request can be submitted without its `SUB` line (a kill between the
//! two): it is then the last in the order, and may or may not be in the log.
//!
//! Half the children compact (`child_plan`): with `Compaction::Auto` (looking every 1–5 ms, at
//! a live ratio of 0.6–0.95), with a thread calling `Engine::compact` in a loop, or both, on
//! 64 KiB segments with more large values and deletes, so that segments complete and
//! compactions copy and retire several times in a child's life. The loop prints
//! `@@CMP B <n>` before its `n`th call and `@@CMP E <n> <segments> <records> <batches>` once
//! it returned; a thread prints `@@CMP A <runs> <batches> <segments retired>` whenever
//! `Counts::compaction` changes (looked at every millisecond). A kill lands during a
//! compaction if a call had not returned, or batches were written since the last run ended.
//! The check is the same for every child: a compaction changes no value, so the state must
//! still be a prefix of the submissions holding every acknowledged one; a copy older than a
//! write of its key, or a put left without the delete after it, fails it.
//!
//! The parent kills the child 5–80 ms after its first `ACK` (one time in ten within 4 ms of
//! the start, while it may still be opening or repairing the log; for one compacting child in
//! two, 0–3 ms after the first compaction it sees starting after the first `ACK`, aimed at
//! the middle of a compaction), then checks by reopening the engine (`for_each` and `read`
//! of every key) or, one time in four, read-only with `LogReader`, leaving the repair to the
//! next child. It keeps one directory for several
//! iterations, so each child continues (and recovers) the log the previous ones left.
//!
//! A quarter of the children run through a storage hook that makes the disk full for the
//! next segment's file now and then (1–20 ms in every 1–25): their rolls find no room, their
//! writes are refused (`Error::NoSpace`) until a thread calls `Engine::resume` once the
//! disk has room again. A refused request is left out of the prefix: the recovered state must
//! be a prefix of the others, so a refused write that reached the log fails the check (values
//! are unique, counters exact). Half of those that compact keep a segment in reserve
//! (`Config::reserve_segment`): their compactions take it when the disk is full, begin the
//! refusals themselves, and retire what they copied as they go (`@@CMP R <n>`: the reserve
//! was taken `n` times).
//!
//! The summary at the end gives the iterations, the compacting children, the kills that
//! landed during a compaction and after one, and the refused requests.
//!
//! Environment: `MERGELOG_CRASH_ITERS` (default 200) iterations, `MERGELOG_CRASH_SEED` to
//! repeat a run.

mod common;

use common::model::{apply_batch, apply_writes, hex, mixed_key, state_diff, unhex, WriteOp};
use common::{assert_reads_match, engine_state, State, WAIT_MAX};
use mergelog::{
    AutoCompaction, Compaction, Config, Durability, Engine, LogReader, MergeOperator, WriteBatch,
    WritePath,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "MERGELOG_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "MERGELOG_CRASH_CHILD_SEED";
const ITERS_ENV: &str = "MERGELOG_CRASH_ITERS";
const SEED_ENV: &str = "MERGELOG_CRASH_SEED";

/// Starts every line of the child's protocol.
const MARK: &str = "@@";
const KEYS: usize = 48;
const WRITERS: usize = 3;
/// A child that is never killed stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// A fresh directory every this many iterations.
const ITERS_PER_DIR: usize = 8;

/// The configuration the parent reopens with (segments of one log may differ in size).
fn base_config() -> Config {
    Config {
        merge: Some(MergeOperator::Add),
        segment_bytes: 256 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        durability: Durability::Sync,
        ..Config::default()
    }
}

/// What a child does, drawn from its seed (the parent draws the same to know it).
struct ChildPlan {
    config: Config,
    /// A thread calls `Engine::compact` in a loop (whenever a segment is complete).
    compact_loop: bool,
    /// `Compaction::Auto` or the loop: a thread reports the compaction counts.
    compacts: bool,
    /// Probability that an op is a delete.
    delete_p: f64,
    /// Probability that a value is large (500 to 3,000 bytes).
    large_p: f64,
    /// The disk is full for new segment files now and then (see the module docs).
    spells: bool,
}

/// Half the children compact: with `Compaction::Auto` looking every 1-5 ms at a live
/// ratio of 0.6-0.95, with a thread calling `compact` in a loop, or both; their segments are
/// small, their values larger and their deletes more frequent, so that segments complete
/// (and compactions copy and retire) several times in a child's life.
fn child_plan(seed: u64) -> ChildPlan {
    let mut config = child_config(seed);
    let compacts = (seed >> 6) & 1 == 1;
    let spells = (seed >> 11) & 3 == 0;
    if !compacts {
        return ChildPlan {
            config,
            compact_loop: false,
            compacts,
            delete_p: 0.2,
            large_p: 0.05,
            spells,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x636f_6d70_6163_7421);
    let mode = (seed >> 7) & 3; // 0: Auto, 1: the loop, 2 and 3: both
    if mode != 1 {
        config.compaction = Compaction::Auto(AutoCompaction {
            live_ratio: rng.random_range(0.6..0.95),
            min_log_bytes: 0,
            check_every: Duration::from_millis(rng.random_range(1..=5)),
            ..AutoCompaction::default()
        });
    }
    config.segment_bytes = 64 << 10;
    // Half the compacting children whose disk fills keep a segment in reserve: their
    // compactions take it when the disk is full, begin refusals of their own, and retire
    // what they copied as they go (`Config::reserve_segment`).
    config.reserve_segment = spells && (seed >> 13) & 1 == 1;
    ChildPlan {
        config,
        compact_loop: mode != 0,
        compacts,
        delete_p: 0.35,
        large_p: 0.12,
        spells,
    }
}

/// While `full`, creating a next segment's file (`prep-*`) fails with ENOSPC.
#[derive(Default)]
struct FullDisk {
    full: AtomicBool,
}

impl mergelog::internals::io::Io for FullDisk {
    fn before(
        &self,
        op: mergelog::internals::io::IoOp,
        path: &Path,
        _: u64,
        _: &[u8],
    ) -> std::io::Result<()> {
        let prep = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("prep-"));
        if op == mergelog::internals::io::IoOp::Create && prep && self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Per writer: requests submitted (or being submitted) whose outcome it has not printed yet.
static UNREPORTED: [AtomicU64; WRITERS] = [const { AtomicU64::new(0) }; WRITERS];

/// Makes the disk full for 1-20 ms in every 1-25, and once it has room again calls
/// `resume` until writes are let in. Not before every writer has printed the outcome of
/// every request it submitted: a refused request whose `REF` line a kill cut off, behind an
/// acknowledged later one, would look like a write lost from the middle of the order. (While
/// writes are refused at submit, no writer gets a new ticket, so once each has been seen
/// with nothing unreported, none has.)
fn child_weather(engine: &Engine, disk: &FullDisk, seed: u64, done: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0077_6561_7468_6572);
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(rng.random_range(1000..5000)));
        disk.full.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(rng.random_range(1000..20_000)));
        disk.full.store(false, Ordering::SeqCst);
        if engine.is_out_of_room() {
            for w in &UNREPORTED {
                while w.load(Ordering::SeqCst) != 0 {
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        while engine.is_out_of_room() {
            match engine.resume() {
                Ok(()) => {}
                Err(mergelog::Error::NoSpace { .. }) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => {
                    eprintln!("child: resume failed: {e}");
                    std::process::exit(8);
                }
            }
        }
    }
}

/// Each child picks its write path, coalescing, durability, segment size and syncers from its
/// seed.
fn child_config(seed: u64) -> Config {
    Config {
        write_path: if seed & 1 == 0 {
            WritePath::Pwrite
        } else {
            WritePath::Mmap
        },
        coalesce: seed & 6 != 6,
        // NoSync acknowledges from the page cache, which survives a process kill too.
        durability: if (seed >> 3) & 3 == 0 {
            Durability::NoSync
        } else {
            Durability::Sync
        },
        // Small segments now and then: more rolls to crash in.
        segment_bytes: if (seed >> 5) & 1 == 0 {
            256 << 10
        } else {
            64 << 10
        },
        // Half the children have two syncs in flight at once (bit 9: bit 6 says whether a
        // child compacts, and the syncers must not go with it).
        syncers: 1 + ((seed >> 9) & 1) as usize,
        // With two syncers, syncs overlap whenever a syncer is free (bit 10 clear) or, as the
        // engine's default does, only while they are slow.
        overlap_syncs_above: if (seed >> 10) & 1 == 0 {
            Duration::ZERO
        } else {
            Config::default().overlap_syncs_above
        },
        ..base_config()
    }
}

/// Writes one whole line to stdout and flushes it (a single `write` for lines this short).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .unwrap_or_else(|_| std::process::exit(4)); // the parent is gone
}

/// The child: never returns normally while the parent runs it (it is killed).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return; // an ordinary test run
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .expect("child seed")
        .parse()
        .expect("child seed is a number");
    let plan = child_plan(seed);
    let disk = Arc::new(FullDisk::default());
    let opened = match plan.spells {
        true => Engine::open_with_io(&dir, plan.config.clone(), disk.clone()),
        false => Engine::open(&dir, plan.config.clone()),
    };
    let engine = match opened {
        Ok(e) => e,
        Err(e) => {
            eprintln!("child: Engine::open failed: {e}");
            std::process::exit(3);
        }
    };
    let next_id = Mutex::new(0u64);
    let deadline = Instant::now() + CHILD_LIFETIME;
    let writers_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (engine, plan, done) = (&engine, &plan, &writers_done);
        if plan.compact_loop {
            s.spawn(move || child_compactor(engine, seed, done));
        }
        if plan.compacts {
            s.spawn(move || child_compaction_counts(engine, done));
        }
        if plan.spells {
            let disk = &*disk;
            s.spawn(move || child_weather(engine, disk, seed, done));
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let next_id = &next_id;
                s.spawn(move || child_writer(engine, plan, next_id, w, seed, deadline))
            })
            .collect();
        for h in writers {
            h.join().expect("child writer");
        }
        done.store(true, Ordering::Release);
    });
    engine.close().expect("child close");
    std::process::exit(0);
}

/// Calls `compact` every 0-3 ms while a segment is complete, between `@@CMP B <n>` and
/// `@@CMP E <n> <segments retired> <records copied> <batches>` lines.
fn child_compactor(engine: &Engine, seed: u64, done: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6c6f_6f70);
    let mut n = 0u64;
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        if engine.segments().len() < 2 {
            continue; // nothing complete to compact
        }
        n += 1;
        emit(&format!("{MARK}CMP B {n}\n"));
        match engine.compact() {
            Ok(c) => emit(&format!(
                "{MARK}CMP E {n} {} {} {}\n",
                c.segments, c.records_copied, c.batches
            )),
            // The disk had no room for its copies' segment: it retired nothing.
            Err(mergelog::Error::NoSpace { .. }) => emit(&format!("{MARK}CMP E {n} 0 0 0\n")),
            Err(e) => {
                eprintln!("child: compact failed: {e}");
                std::process::exit(7);
            }
        }
    }
}

/// Prints `@@CMP A <runs> <batches> <segments retired>` (`Counts::compaction`, the
/// background compactions' and the loop's) whenever they change, and `@@CMP R <n>` when
/// compactions have taken the reserve `n` times, looking every millisecond.
fn child_compaction_counts(engine: &Engine, done: &AtomicBool) {
    let mut last = None;
    let mut reserve_taken = 0;
    while !done.load(Ordering::Acquire) {
        let c = engine.counts().compaction;
        let now = (c.runs, c.batches, c.segments_retired);
        if last != Some(now) {
            emit(&format!("{MARK}CMP A {} {} {}\n", now.0, now.1, now.2));
            last = Some(now);
        }
        let taken = engine.counts().segments.reserve_taken;
        if taken != reserve_taken {
            emit(&format!("{MARK}CMP R {taken}\n"));
            reserve_taken = taken;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn child_writer(
    engine: &Engine,
    plan: &ChildPlan,
    next_id: &Mutex<u64>,
    w: usize,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let zipf = Zipf::new(KEYS as f64, 0.9).expect("zipf");
    let depth = rng.random_range(1..=8usize);
    // Even writers wait without a deadline: with nothing in flight they write and sync their
    // own windows (`Ticket::wait`), so kills land inside that path too.
    let own_windows = w.is_multiple_of(2);
    let mut pending: VecDeque<(u64, mergelog::Ticket)> = VecDeque::new();
    let mut seq = 0u64;
    let mut batch = WriteBatch::new();
    while Instant::now() < deadline {
        let n_ops = if rng.random_bool(0.12) {
            rng.random_range(2..=4)
        } else {
            1
        };
        let mut ops: Vec<WriteOp> = Vec::with_capacity(n_ops);
        let mut merges: Vec<(Vec<u8>, i64)> = Vec::new();
        for _ in 0..n_ops {
            let k = mixed_key(zipf.sample(&mut rng) as usize - 1);
            if rng.random_bool(MERGE_P) {
                let addend = rng.random_range(1..=9);
                merges.push((counter_key(rng.random_range(0..COUNTERS)), addend));
            } else if rng.random_bool(plan.delete_p) {
                ops.push((k, None));
            } else {
                seq += 1;
                // Unique: encodes the writer and its sequence number, padded to vary sizes.
                let mut v = format!("w{w}s{seq}-").into_bytes();
                // Now and then a large value, so that segments roll often.
                let pad = if rng.random_bool(plan.large_p) {
                    rng.random_range(500..3000)
                } else {
                    rng.random_range(0..120)
                };
                v.extend((0..pad).map(|i| b'a' + ((seq as usize + i) % 26) as u8));
                ops.push((k, Some(v)));
            }
        }
        let mut line = String::new();
        for (k, v) in &ops {
            match v {
                Some(v) => line.push_str(&format!(" P:{}:{}", hex(k), hex(v))),
                None => line.push_str(&format!(" D:{}", hex(k))),
            }
        }
        for (k, addend) in &merges {
            line.push_str(&format!(" M:{}:{addend}", hex(k)));
        }
        // Refused at submit: the writer then prints the outcome of everything it has in flight.
        let mut refused = false;
        {
            let mut id_guard = next_id.lock().unwrap();
            let id = *id_guard;
            *id_guard += 1;
            UNREPORTED[w].fetch_add(1, Ordering::SeqCst);
            emit(&format!("{MARK}INT {id}{line}\n"));
            let submitted = if merges.is_empty() {
                common::model::submit(engine, &mut batch, &ops, ops.len() == 1)
            } else if let ([], [(k, addend)]) = (&ops[..], &merges[..]) {
                engine.merge(k, &addend.to_le_bytes())
            } else {
                common::model::fill_batch(&mut batch, &ops);
                for (k, addend) in &merges {
                    batch.merge(k, &addend.to_le_bytes());
                }
                engine.write(&batch)
            };
            let ticket = match submitted {
                Ok(ticket) => Some(ticket),
                Err(mergelog::Error::NoSpace { .. }) => {
                    emit(&format!("{MARK}REF {id}\n"));
                    UNREPORTED[w].fetch_sub(1, Ordering::SeqCst);
                    refused = true;
                    None
                }
                Err(e) => {
                    eprintln!("child: submit failed: {e}");
                    std::process::exit(5);
                }
            };
            if let Some(ticket) = ticket {
                emit(&format!("{MARK}SUB {id} {}\n", ticket.position()));
                pending.push_back((id, ticket));
            }
        }
        // Tickets of one writer complete in order (positions ascend): ack from the front.
        while let Some((id, t)) = pending.front() {
            if pending.len() <= depth && !t.is_done() && !refused {
                break;
            }
            let waited = if own_windows {
                t.wait()
            } else {
                t.wait_timeout(WAIT_MAX)
            };
            match waited {
                Ok(_) => emit(&format!("{MARK}ACK {id}\n")),
                Err(mergelog::Error::NoSpace { .. }) => emit(&format!("{MARK}REF {id}\n")),
                Err(e) => {
                    eprintln!("child: ticket {id} failed: {e}");
                    std::process::exit(6);
                }
            }
            UNREPORTED[w].fetch_sub(1, Ordering::SeqCst);
            pending.pop_front();
        }
    }
}

/// Probability that an op is a merge onto a counter (high enough, with few counters, that a
/// counter's last merge is often in a window not yet durable when the next comes).
const MERGE_P: f64 = 0.25;
/// Counters the merges add to: few, so that a counter's windows are often in flight when
/// the next merge onto it comes.
const COUNTERS: usize = 4;

/// Counter `i`: a key space of its own (puts and deletes never touch it, so no merge meets a
/// value that is not a counter and is refused).
fn counter_key(i: usize) -> Vec<u8> {
    format!("counter-{i:02}").into_bytes()
}

/// One request as the parent saw it.
#[derive(Debug, Default, Clone)]
struct Submission {
    ops: Vec<WriteOp>,
    /// Merges adding to counters (`MergeOperator::Add`: 8-byte little-endian, absent is 0).
    merges: Vec<(Vec<u8>, i64)>,
    position: Option<u64>,
    acked: bool,
    /// Refused for lack of room (at submit, or by its ticket): never applied.
    refused: bool,
}

impl Submission {
    /// Applies the request to `state` (its writes and merges touch different keys).
    fn apply(&self, state: &mut State) {
        apply_writes(state, &self.ops);
        for (k, addend) in &self.merges {
            let old = state.get(k).map_or(0, |v| {
                i64::from_le_bytes(v[..].try_into().expect("a counter holds 8 bytes"))
            });
            state.insert(k.clone(), (old + addend).to_le_bytes().to_vec());
        }
    }
}

/// What a child's `@@CMP` lines said about its compactions when it was killed.
#[derive(Debug, Default)]
struct CompactionSeen {
    /// `compact` calls of the loop begun and returned.
    begun: u64,
    returned: u64,
    /// Of those returned, the ones that retired segments.
    returned_retiring: u64,
    /// The last counts line: compactions run to the end, batches, segments retired.
    runs: u64,
    batches: u64,
    segments: u64,
    /// Batches when `runs` last changed: more since, and a compaction was copying.
    batches_at_last_run: u64,
    /// Times its compactions took the reserve (`Config::reserve_segment`).
    reserve_taken: u64,
}

impl CompactionSeen {
    /// One `@@CMP` line (without the tag).
    fn line(&mut self, line: &str) {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> u64 {
            f.get(i)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad CMP line {line:?}"))
        };
        match f[0] {
            "B" => {
                assert_eq!(num(1), self.begun + 1, "CMP B out of order: {line:?}");
                self.begun += 1;
            }
            "E" => {
                assert_eq!(num(1), self.begun, "CMP E without its B: {line:?}");
                self.returned += 1;
                self.returned_retiring += u64::from(num(2) > 0);
            }
            "A" => {
                let (runs, batches, segments) = (num(1), num(2), num(3));
                assert!(runs >= self.runs && batches >= self.batches, "{line:?}");
                if runs > self.runs {
                    self.batches_at_last_run = batches;
                }
                (self.runs, self.batches, self.segments) = (runs, batches, segments);
            }
            "R" => self.reserve_taken = num(1),
            _ => panic!("unknown CMP line {line:?}"),
        }
    }

    /// A compaction was under way at the kill: a call of the loop had not returned, or the
    /// counts showed batches written since the last compaction ran to the end.
    fn in_progress(&self) -> bool {
        self.begun > self.returned || self.batches > self.batches_at_last_run
    }

    /// Compactions that ran to the end before the kill.
    fn completed(&self) -> u64 {
        self.runs.max(self.returned_retiring)
    }
}

/// Parses the child's complete output lines.
fn parse_child_output(lines: &[String]) -> (Vec<Submission>, CompactionSeen) {
    let mut subs: Vec<Submission> = Vec::new();
    let mut seen = CompactionSeen::default();
    for line in lines {
        // The harness prints "test crash_child ... " before the first line of the child.
        let Some(at) = line.find(MARK) else {
            continue; // the test harness's own lines
        };
        let line = &line[at + MARK.len()..];
        if let Some(cmp) = line.strip_prefix("CMP ") {
            seen.line(cmp);
            continue;
        }
        let mut it = line.split(' ');
        let tag = it.next().unwrap_or("");
        let id: usize = it
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad child line {line:?}"));
        match tag {
            "INT" => {
                assert_eq!(id, subs.len(), "INT ids must be consecutive: {line:?}");
                let mut sub = Submission::default();
                for tok in it {
                    let parts: Vec<&str> = tok.split(':').collect();
                    match parts.as_slice() {
                        ["P", k, v] => sub.ops.push((unhex(k), Some(unhex(v)))),
                        ["D", k] => sub.ops.push((unhex(k), None)),
                        ["M", k, a] => sub.merges.push((
                            unhex(k),
                            a.parse()
                                .unwrap_or_else(|_| panic!("bad addend in {line:?}")),
                        )),
                        _ => panic!("bad op token {tok:?} in {line:?}"),
                    }
                }
                assert!(
                    !sub.ops.is_empty() || !sub.merges.is_empty(),
                    "INT without ops: {line:?}"
                );
                subs.push(sub);
            }
            "SUB" => {
                let pos: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad SUB line {line:?}"));
                let s = subs
                    .get_mut(id)
                    .unwrap_or_else(|| panic!("SUB before INT: {line:?}"));
                assert!(s.position.is_none(), "two SUB lines for {id}");
                s.position = Some(pos);
            }
            "ACK" => {
                let s = subs
                    .get_mut(id)
                    .unwrap_or_else(|| panic!("ACK before INT: {line:?}"));
                assert!(s.position.is_some(), "ACK {id} before its SUB line");
                s.acked = true;
            }
            "REF" => {
                let s = subs
                    .get_mut(id)
                    .unwrap_or_else(|| panic!("REF before INT: {line:?}"));
                assert!(!s.acked, "REF {id} after its ACK");
                s.refused = true;
            }
            _ => panic!("unknown child line {line:?}"),
        }
    }
    // Submissions happen under one lock: positions ascend with ids, and only the last
    // request can lack its SUB line.
    for (i, s) in subs.iter().enumerate() {
        if s.position.is_none() && !s.refused {
            assert_eq!(
                i + 1,
                subs.len(),
                "request {i} has no SUB line but is not the last"
            );
        }
    }
    for pair in subs.windows(2) {
        if let (Some(a), Some(b)) = (pair[0].position, pair[1].position) {
            assert!(
                a < b,
                "positions must ascend with submission ids: {a} then {b}"
            );
        }
    }
    (subs, seen)
}

/// Finds the prefix of `subs` (applied to `base`) that equals `recovered` and holds every
/// acknowledged request. Returns its length.
fn matching_prefix(base: &State, subs: &[Submission], recovered: &State) -> Option<usize> {
    let apply = |state: &mut State, s: &Submission| s.apply(state);
    common::model::matching_prefix(base, subs, |s| s.acked, apply, recovered)
}

/// What the parent collected from one child run.
struct ChildRun {
    lines: Vec<String>,
    stderr: String,
    exited_by_itself: Option<std::process::ExitStatus>,
    first_ack_seen: bool,
    /// The kill was aimed at a compaction: 0-3 ms after one was seen starting.
    aimed: bool,
}

/// Whether `line` shows a compaction starting (a `compact` call of the loop) or copying (the
/// batches count grew); `batches` is the last count seen.
fn compaction_starts(line: &str, batches: &mut u64) -> bool {
    let Some(at) = line.find(&format!("{MARK}CMP ")) else {
        return false;
    };
    let f: Vec<&str> = line[at + MARK.len() + 4..].split(' ').collect();
    match (f.first(), f.get(2).and_then(|b| b.parse::<u64>().ok())) {
        (Some(&"B"), _) => true,
        (Some(&"A"), Some(b)) if b > *batches => {
            *batches = b;
            true
        }
        _ => false,
    }
}

/// Waits until the kill: mostly a while after the first acknowledgement; sometimes very
/// early, while the child is still opening (and maybe repairing) the log; if `aimed`, 0-3 ms
/// after the first compaction seen starting after the first acknowledgement (or 300 ms after
/// it, if none is). Returns whether the first acknowledgement was seen.
fn wait_to_kill(
    rng: &mut StdRng,
    aimed: bool,
    first_ack: &mpsc::Receiver<()>,
    compacting: &mpsc::Receiver<()>,
) -> bool {
    if rng.random_bool(0.1) {
        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
        return false;
    }
    if first_ack.recv_timeout(Duration::from_secs(60)).is_err() {
        return false;
    }
    if aimed {
        while compacting.try_recv().is_ok() {}
        let _ = compacting.recv_timeout(Duration::from_millis(300));
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
    } else {
        std::thread::sleep(Duration::from_millis(rng.random_range(5..=80)));
    }
    true
}

fn run_child(dir: &Path, child_seed: u64, rng: &mut StdRng) -> ChildRun {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, child_seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stderr = child.stderr.take().expect("child stderr");
    let (first_ack_tx, first_ack_rx) = mpsc::channel::<()>();
    let (compacting_tx, compacting_rx) = mpsc::channel::<()>();
    let out_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut signalled = false;
        let mut batches = 0;
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') {
                break; // a torn last line: never complete, so never acted on
            }
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            if !signalled && line.contains(&format!("{MARK}ACK ")) {
                let _ = first_ack_tx.send(());
                signalled = true;
            }
            if compaction_starts(&line, &mut batches) {
                let _ = compacting_tx.send(());
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

    let aimed = child_plan(child_seed).compacts && rng.random_bool(0.5);
    let first_ack_seen = wait_to_kill(rng, aimed, &first_ack_rx, &compacting_rx);
    let exited_by_itself = child.try_wait().expect("try_wait");
    let _ = child.kill(); // SIGKILL
    child.wait().expect("wait for child");
    let lines = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    ChildRun {
        lines,
        stderr,
        exited_by_itself,
        first_ack_seen,
        aimed,
    }
}

#[derive(Default)]
struct Totals {
    iterations: usize,
    requests: usize,
    acked_requests: usize,
    acked_ops: usize,
    unacked_recovered: usize,
    torn_tails: usize,
    reader_checks: usize,
    max_segments: usize,
    /// Children that compacted (`Compaction::Auto`, the loop, or both).
    compacting_children: usize,
    /// Kills aimed at a compaction.
    aimed_kills: usize,
    /// Kills with a compaction under way.
    kills_during_compaction: usize,
    /// Kills of a child that had completed a compaction, none under way.
    kills_after_compaction: usize,
    /// Children whose disk filled now and then, and the requests refused for room.
    spell_children: usize,
    refused: usize,
    /// Children that kept a segment in reserve, and the times their compactions took it.
    reserve_children: usize,
    reserve_taken: u64,
    /// Compactions run to the end, batches and segments retired, over all children.
    compactions: u64,
    compaction_batches: u64,
    segments_compacted: u64,
}

impl Totals {
    fn count_compactions(&mut self, run: &ChildRun, seen: &CompactionSeen, compacts: bool) {
        self.compacting_children += usize::from(compacts);
        self.aimed_kills += usize::from(run.aimed);
        if seen.in_progress() {
            self.kills_during_compaction += 1;
        } else if seen.completed() > 0 {
            self.kills_after_compaction += 1;
        }
        self.compactions += seen.completed();
        self.compaction_batches += seen.batches;
        self.segments_compacted += seen.segments;
    }
}

#[test]
fn crash_recovery_keeps_every_acknowledged_write() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return; // never in the child
    }
    let iters: usize = std::env::var(ITERS_ENV)
        .ok()
        .map(|s| s.parse().expect("MERGELOG_CRASH_ITERS is a number"))
        .unwrap_or(200);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .map(|s| s.parse().expect("MERGELOG_CRASH_SEED is a number"))
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test: {iters} iterations, MERGELOG_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let probe_keys: Vec<Vec<u8>> = (0..KEYS).map(mixed_key).collect();
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut dir: Option<tempfile::TempDir> = None;
    let mut base = State::new();

    for iter in 0..iters {
        if iter % ITERS_PER_DIR == 0 {
            dir = Some(tempfile::tempdir().expect("tempdir"));
            base = State::new();
        }
        let path = dir.as_ref().expect("dir").path().to_owned();
        let child_seed: u64 = rng.random();
        let run = run_child(&path, child_seed, &mut rng);
        let ctx = format!(
            "iteration {iter} (MERGELOG_CRASH_SEED={seed}, child seed {child_seed}, dir {})",
            path.display()
        );
        if let Some(status) = run.exited_by_itself {
            let _ = dir.take().map(|d| d.keep());
            panic!(
                "{ctx}: the child exited by itself ({status}) before the kill; stderr:\n{}",
                run.stderr
            );
        }
        let (subs, seen) = parse_child_output(&run.lines);
        // A refused request is never applied: the state is a prefix of the others.
        totals.refused += subs.iter().filter(|s| s.refused).count();
        let subs: Vec<Submission> = subs.into_iter().filter(|s| !s.refused).collect();
        totals.count_compactions(&run, &seen, child_plan(child_seed).compacts);
        totals.spell_children += usize::from(child_plan(child_seed).spells);
        totals.reserve_children += usize::from(child_plan(child_seed).config.reserve_segment);
        totals.reserve_taken += seen.reserve_taken;
        if run.first_ack_seen {
            assert!(
                subs.iter().any(|s| s.acked),
                "{ctx}: saw an ACK but parsed none"
            );
        }

        // Check: with a read-only LogReader (leaving the repair to the next child) one time
        // in four, else by reopening the engine with the default recovery mode.
        let read_only = rng.random_bool(0.25) && iter + 1 < iters;
        let (recovered, report) = if read_only {
            totals.reader_checks += 1;
            let reader = LogReader::open(&path)
                .unwrap_or_else(|e| panic!("{ctx}: LogReader::open after a crash failed: {e}"));
            // The log holds everything since the directory was fresh, or for what a
            // compaction retired, copies of the records still live: replay from empty.
            let mut state = State::new();
            let mut expect_seq = None;
            for b in reader.batches() {
                if let Some(s) = expect_seq {
                    assert_eq!(b.seq(), s, "{ctx}: batch sequence gap");
                }
                expect_seq = Some(b.seq() + 1);
                apply_batch(&mut state, &b);
            }
            totals.max_segments = totals.max_segments.max(reader.segment_count());
            if reader.damage().is_some() {
                totals.torn_tails += 1;
            }
            (state, format!("reader damage: {:?}", reader.damage()))
        } else {
            let engine = Engine::open(&path, base_config())
                .unwrap_or_else(|e| panic!("{ctx}: Engine::open after a crash failed: {e}"));
            let state = engine_state(&engine);
            assert_reads_match(&engine, &state, probe_keys.iter().map(|k| &k[..]), &ctx);
            let report = engine.open_report().clone();
            if report.truncated.is_some() {
                totals.torn_tails += 1;
            }
            totals.max_segments = totals.max_segments.max(report.segments);
            engine
                .close()
                .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
            (state, format!("{report:?}"))
        };

        let Some(prefix) = matching_prefix(&base, &subs, &recovered) else {
            let acked: Vec<usize> = (0..subs.len()).filter(|&i| subs[i].acked).collect();
            let mut want = base.clone();
            for s in &subs[..acked.last().map_or(0, |i| i + 1)] {
                s.apply(&mut want);
            }
            let kept = dir.take().map(|d| d.keep());
            panic!(
                "{ctx}: the recovered state is not the state after any prefix of the {} \
                 submissions that holds all {} acknowledged ones.\nopen: {report}\n\
                 compactions at the kill: {seen:?} (kill aimed at one: {})\n\
                 difference from the state after the last acknowledged request:\n{}\
                 directory kept at {kept:?}",
                subs.len(),
                acked.len(),
                run.aimed,
                state_diff(&recovered, &want)
            );
        };
        totals.iterations += 1;
        totals.requests += subs.len();
        totals.acked_requests += subs.iter().filter(|s| s.acked).count();
        totals.acked_ops += subs
            .iter()
            .filter(|s| s.acked)
            .map(|s| s.ops.len() + s.merges.len())
            .sum::<usize>();
        totals.unacked_recovered +=
            prefix - subs.iter().rposition(|s| s.acked).map_or(0, |i| i + 1);
        base = recovered;
    }
    let keys: BTreeSet<&Vec<u8>> = base.keys().collect();
    eprintln!(
        "crash test: {} iterations in {:.1?}: {} requests submitted, {} acknowledged ({} ops) \
         and all found after recovery; {} unacknowledged requests survived; {} torn tails found; \
         {} read-only checks; up to {} segments; {} live keys at the end",
        totals.iterations,
        started.elapsed(),
        totals.requests,
        totals.acked_requests,
        totals.acked_ops,
        totals.unacked_recovered,
        totals.torn_tails,
        totals.reader_checks,
        totals.max_segments,
        keys.len()
    );
    eprintln!(
        "crash test, compaction: {} of {} children compacted ({} compactions to the end, {} \
         compaction batches, {} segments retired by them); {} kills aimed at a compaction; \
         {} kills with a compaction under way, {} after a completed one",
        totals.compacting_children,
        totals.iterations,
        totals.compactions,
        totals.compaction_batches,
        totals.segments_compacted,
        totals.aimed_kills,
        totals.kills_during_compaction,
        totals.kills_after_compaction
    );
    eprintln!(
        "crash test, full disk: {} of {} children's disks filled now and then; {} requests \
         refused for room, none found after recovery; {} kept a segment in reserve, which \
         their compactions took {} times",
        totals.spell_children,
        totals.iterations,
        totals.refused,
        totals.reserve_children,
        totals.reserve_taken
    );
    assert_eq!(totals.iterations, iters);
    assert!(
        totals.acked_ops > 0,
        "no child ever acknowledged a write: the test checked nothing"
    );
}
