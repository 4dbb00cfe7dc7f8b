//! Power loss under the Raft log store: the store is driven through openraft's
//! `RaftLogStorage` API (`save_vote`, `append` with its callback, `truncate`, `purge`,
//! `save_committed`) on an engine opened with the main crate's power-loss model
//! (`tests/common/power.rs`, `PowerLossIo`), the power is cut at a seeded I/O operation (every
//! later one fails), the engine is closed, what was not durable is taken back (writes torn at
//! sectors or dropped, directory changes undone), and a fresh engine and store are opened on
//! the directory with the real I/O. Each seed runs one to three such cycles, each going on
//! from the state the last one recovered (so a cut can also fall in the store's open, while it
//! finishes an interrupted purge).
//!
//! What the reopened store serves is checked against what was submitted and what was
//! acknowledged (a `save_vote`, `truncate` or `purge` that returned `Ok`; an append whose
//! callback reported success):
//! - **vote**: a vote whose `save_vote` returned `Ok` reads back as that vote or one saved
//!   after it, never an older one (nor none);
//! - **entries**: every entry of an acknowledged append is there with its log id and payload,
//!   unless a later truncate (acknowledged or not: its deletes may be durable) or the
//!   recovered purge point covers it;
//! - **a contiguous log**: `get_log_state`'s `last_log_id` is the last entry's log id (the
//!   purged id when there is none), the entries start right after `last_purged_log_id`, and
//!   `try_get_log_entries` returns consecutive indexes, over the whole log and over ranges;
//! - **committed**: the store persists it with its next append, truncate or purge (without waiting,
//!   after the appends of the entries it covers): a recovered committed id is not past the
//!   last log id, and the entry at its index (unless purged) has that log id;
//! - and, stronger, the engine's order: the recovered state (vote, committed and purged ids,
//!   entries) is the state after some prefix of the submitted key changes that holds every
//!   acknowledged one (entries at or below the purged id aside: the store deletes those at
//!   open).
//!
//! Also, a store opened with the power on (each cycle after the first) serves what the last
//! reopen served.
//!
//! The workload is Raft-shaped: votes only grow, entries are appended at the end of the log
//! (from index 0) with the current leader's term (its leader id never goes down), under a
//! vote of that term or a later one saved first, truncates fall above the committed id,
//! purges at or below it, the committed id only grows; a quarter of the cycles end (power still on) committing
//! and purging the whole log, so that a reopen finds it empty and the log goes on from the
//! purged id. Appends are made two ways: awaited to their callback (`blocking_append`), or
//! polled once (the store submits the entries and returns) and then left in flight, their
//! outcome never known: an acknowledged operation after them makes them durable by the
//! engine's order, and a `save_committed` may cover them (a store that waits in `append`,
//! the default, drawn for half the cycles, completes a polled append in that one poll). One
//! whose submission waits (for ring room: a large entry's chunks) is dropped part way, which
//! the store then reports on every call until a reopen: the cycle ends there.
//! Engines: small segments (purges retire some), pwrite or mmap write path, one or two
//! syncers, values of at most 1 MiB or 4 KiB. Some entries are larger than the store's chunk
//! length (8,160 bytes, or 4 KiB), up to tens of chunks: an operation that fails with the
//! power on fails the seed (openraft would stop the node), and after each reopen no chunk
//! of an entry the log does not serve may remain.
//!
//! Environment: `MERGELOG_RAFT_CRASH_SEEDS` (default 200: 5 to 15 s in release-checked on
//! two cores) seeds from `MERGELOG_RAFT_CRASH_FIRST` (default 0); `MERGELOG_RAFT_CRASH_SEED`
//! runs one (`MERGELOG_RAFT_CRASH_REPEAT` times: a seed fixes the workload, the cut point and
//! every tear, but not how the engine's flusher and syncer threads interleave, hence not
//! exactly which operation the cut hits). Figures go to stderr (`--nocapture` shows them).

#[path = "../../tests/common/power.rs"]
#[allow(dead_code)]
mod power;

use mergelog::internals::io::{Io, IoOp};
use mergelog::{Config, Engine, WritePath};
use mergelog_raft::kv::{Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, LogId, RaftLogReader, Vote};
use power::{lose_power_within_sectors, power_loss_config, Damage, PowerLossIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Store = LogStore<TypeConfig>;
type Id = LogId<u64>;

/// `Run::step`'s picks that commit the last entry and purge up to the committed one.
const COMMIT: u32 = 10;
const PURGE: u32 = 28;

/// A seed still running after this long is a hang: the test fails naming it.
const HANG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Entries: the payload is a function of a tag, so that the model keeps only the tag.

/// Entry payloads: the key names the tag and the length, the value is filler derived from both.
fn request(tag: u64, len: usize) -> Request {
    Request {
        key: format!("t{tag}/{len}"),
        value: (0..len)
            .map(|j| (tag.wrapping_mul(131) as usize).wrapping_add(j * 7) as u8)
            .collect(),
    }
}

fn entry(id: Id, tag: u64, len: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: id,
        payload: EntryPayload::Normal(request(tag, len)),
    }
}

/// The tag of an entry read back, if its payload is exactly the one that tag was written with.
fn tag_of(e: &Entry<TypeConfig>) -> Result<u64, String> {
    let EntryPayload::Normal(r) = &e.payload else {
        return Err(format!(
            "entry {} has a payload it was not written with",
            e.log_id
        ));
    };
    let parsed = r.key.strip_prefix('t').and_then(|k| {
        let (tag, len) = k.split_once('/')?;
        Some((tag.parse::<u64>().ok()?, len.parse::<usize>().ok()?))
    });
    match parsed {
        Some((tag, len)) if *r == request(tag, len) => Ok(tag),
        _ => Err(format!(
            "entry {} has a damaged payload (key {:?}, {} bytes)",
            e.log_id,
            r.key,
            r.value.len()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// What the store keeps across a restart: as the model predicts it, and as a reopened store
/// serves it. Entries by index: (log id, tag).
#[derive(Clone, Debug, Default, PartialEq)]
struct Durable {
    vote: Option<Vote<u64>>,
    committed: Option<Id>,
    purged: Option<Id>,
    entries: BTreeMap<u64, (Id, u64)>,
}

impl Durable {
    /// The last log id: the last entry's, or the purged one's.
    fn last_log(&self) -> Option<Id> {
        self.entries
            .last_key_value()
            .map(|(_, (id, _))| *id)
            .or(self.purged)
    }

    /// The index the log starts at (entries at or below the purged id do not count).
    fn first_index(&self) -> u64 {
        self.purged.map_or(0, |p| p.index + 1)
    }

    /// Whether a reopened store serving `other` serves this state: the same meta ids and the
    /// same entries above the purged id (the store deletes the others at open, and never
    /// serves them).
    fn serves_as(&self, other: &Durable) -> bool {
        let first = self.first_index();
        self.vote == other.vote
            && self.committed == other.committed
            && self.purged == other.purged
            && self.entries.range(first..).eq(other.entries.range(first..))
    }

    fn summary(&self) -> String {
        let first = self.first_index();
        let entries: Vec<String> = self
            .entries
            .range(first..)
            .map(|(i, (id, tag))| {
                format!("{i}:{}-{}/t{tag}", id.leader_id.term, id.leader_id.node_id)
            })
            .collect();
        format!(
            "vote {:?}, committed {:?}, purged {:?}, entries [{}]",
            self.vote.map(|v| v.to_string()),
            self.committed.map(|c| c.to_string()),
            self.purged.map(|p| p.to_string()),
            entries.join(" ")
        )
    }
}

/// One key change the store submits to the engine, in the engine's order.
#[derive(Clone, Debug)]
enum Change {
    Vote(Vote<u64>),
    Committed(Id),
    Purged(Id),
    Put(u64, Id, u64),
    Delete(u64),
}

impl Durable {
    fn apply(&mut self, c: &Change) {
        match c {
            Change::Vote(v) => self.vote = Some(*v),
            Change::Committed(id) => self.committed = Some(*id),
            Change::Purged(id) => self.purged = Some(*id),
            Change::Put(i, id, tag) => {
                self.entries.insert(*i, (*id, *tag));
            }
            Change::Delete(i) => {
                self.entries.remove(i);
            }
        }
    }
}

#[derive(Debug)]
enum OpKind {
    /// Index into the cycle's vote history.
    Vote(usize),
    /// (index, log id, tag) of each entry; whether awaited to its callback.
    Append(Vec<(u64, Id, u64)>, bool),
    Committed,
    Truncate(Id),
    Purge,
}

#[derive(Debug)]
struct Op {
    kind: OpKind,
    /// Acknowledged: `Ok` from an operation that waits for durability, or an append's
    /// callback reporting success.
    acked: bool,
    /// How many of the cycle's changes were submitted once this operation was.
    end: usize,
}

/// One seed's run: the state each cycle starts from, what it submitted and what was
/// acknowledged.
struct Run {
    rng: StdRng,
    /// The state the cycle started from (what the last reopen served).
    base: Durable,
    /// The state after every change submitted.
    cur: Durable,
    changes: Vec<Change>,
    ops: Vec<Op>,
    /// The votes of the cycle in the order saved (the base's first), each greater than the
    /// one before.
    votes: Vec<Vote<u64>>,
    /// The leader whose entries appends make: (term, node).
    leader: (u64, u64),
    next_tag: u64,
    /// Purges that retired segments.
    retiring_purges: u64,
    /// A committed id saved and not yet logged: the store logs it with its next append, truncate or
    /// purge (its change goes there).
    unsaved_committed: Option<Id>,
    /// The error of the operation that failed, if one did.
    failure: Option<String>,
    /// An append polled once stopped part way, its future dropped after some of its batches
    /// were submitted (they waited for room): the store then fails every call until a
    /// reopen, and the cycle ends there (its changes stay in flight).
    dropped_part_way: bool,
    /// The store's chunk length under the seed's config (`LogStore::chunk_len`), and the tags
    /// of the entries longer than that encoded: stored in chunks.
    chunk_len: usize,
    chunked: std::collections::HashSet<u64>,
}

#[derive(Default, Debug)]
struct Totals {
    seeds: u64,
    cycles: u64,
    cut_at_open: u64,
    cut_in_workload: u64,
    ops: u64,
    acked_ops: u64,
    acked_entries_checked: u64,
    /// Of them, entries stored in chunks.
    chunked_entries_checked: u64,
    /// Changes past the last acknowledged one that the recovered state holds.
    unacked_changes_survived: u64,
    unacked_changes_lost: u64,
    truncates: u64,
    purges: u64,
    retiring_purges: u64,
    /// Recoveries that found a purged, empty log.
    emptied_logs: u64,
    in_flight_appends: u64,
    damage: Damage,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, t: Totals) {
        self.seeds += t.seeds;
        self.cycles += t.cycles;
        self.cut_at_open += t.cut_at_open;
        self.cut_in_workload += t.cut_in_workload;
        self.ops += t.ops;
        self.acked_ops += t.acked_ops;
        self.acked_entries_checked += t.acked_entries_checked;
        self.chunked_entries_checked += t.chunked_entries_checked;
        self.unacked_changes_survived += t.unacked_changes_survived;
        self.unacked_changes_lost += t.unacked_changes_lost;
        self.truncates += t.truncates;
        self.purges += t.purges;
        self.retiring_purges += t.retiring_purges;
        self.emptied_logs += t.emptied_logs;
        self.in_flight_appends += t.in_flight_appends;
        self.damage += t.damage;
    }
}

/// Polls a future once with a waker that does nothing: `Some` if it is ready.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

impl Run {
    /// Submits one random operation, recording its changes before it runs (a failed one may
    /// still have made some of them durable). `false` once an operation failed: openraft
    /// stops on a storage error, and so does the workload.
    ///
    /// `to_the_end`: commit the last entry (`COMMIT`) or purge up to the committed one
    /// (`PURGE`), if the log allows it.
    async fn step(&mut self, store: &mut Store, to_the_end: Option<u32>) -> bool {
        let cur = &self.cur;
        let last = cur.last_log();
        let next = last.map_or(0, |l| l.index + 1);
        let first_entry = cur
            .entries
            .range(cur.first_index()..)
            .next()
            .map(|(i, _)| *i);
        // Truncate only above the committed id (Raft never truncates a committed entry), and
        // purge only up to it (the newest saved, logged or not).
        let committed_index = self.unsaved_committed.or(cur.committed).map(|c| c.index);
        let truncatable = first_entry.map(|f| {
            let lo = f.max(committed_index.map_or(0, |c| c + 1));
            (lo, next)
        });
        let purgeable = match (first_entry, committed_index) {
            (Some(f), Some(c)) if c >= f => Some((f, c)),
            _ => None,
        };
        let committable = match (first_entry, last) {
            (Some(f), Some(l)) => {
                let lo = f.max(committed_index.map_or(0, |c| c + 1));
                (lo <= l.index).then_some((lo, l.index))
            }
            _ => None,
        };
        let pick = to_the_end.unwrap_or_else(|| self.rng.random_range(0..100));
        // An append under a leader of a later term than the vote (none yet, or a truncate's
        // new leader) saves a vote first: a node saves a leader's vote before it takes the
        // leader's entries, so its vote's term is never below its log's, which the store's
        // open checks.
        let needs_vote = cur.vote.map_or(0, |v| v.leader_id.term) < self.leader.0;
        let to_the_end = to_the_end.is_some();
        let start = self.changes.len();
        let (kind, outcome): (OpKind, Option<bool>) = match pick {
            0..10 => self.save_vote(store).await,
            10..20 if committable.is_some() => {
                // Often the last entry: then a purge may empty the log.
                let (lo, hi) = committable.unwrap();
                let index = match to_the_end || self.rng.random_bool(0.4) {
                    true => hi,
                    false => self.rng.random_range(lo..=hi),
                };
                let id = cur.entries[&index].0;
                // Logged with the next append, truncate or purge.
                self.unsaved_committed = Some(id);
                let r = store.save_committed(Some(id)).await;
                // Not waited for: never an acknowledgement, only a failure stops.
                (OpKind::Committed, (!self.ok(r)).then_some(false))
            }
            20..28 if truncatable.is_some_and(|(lo, next)| lo < next) => {
                let (lo, next) = truncatable.unwrap();
                let index = self.rng.random_range(lo..next);
                let id = cur.entries[&index].0;
                // The committed id not logged yet first, in the truncate's first batch.
                self.changes
                    .extend(self.unsaved_committed.take().map(Change::Committed));
                // Highest first, as the store deletes.
                for i in (index..next).rev() {
                    self.changes.push(Change::Delete(i));
                }
                // A new leader's entries replace the truncated ones.
                self.leader.0 += 1;
                let r = store.truncate(id).await;
                (OpKind::Truncate(id), Some(self.ok(r)))
            }
            28..33 if purgeable.is_some() => {
                let (lo, hi) = purgeable.unwrap();
                let index = match to_the_end || self.rng.random_bool(0.4) {
                    true => hi,
                    false => self.rng.random_range(lo..=hi),
                };
                let id = cur.entries[&index].0;
                self.changes
                    .extend(self.unsaved_committed.take().map(Change::Committed));
                self.changes.push(Change::Purged(id));
                for i in lo..=index {
                    self.changes.push(Change::Delete(i));
                }
                let before = store.engine().segments().len();
                let r = store.purge(id).await;
                self.retiring_purges += u64::from(store.engine().segments().len() < before);
                (OpKind::Purge, Some(self.ok(r)))
            }
            _ if to_the_end => return true,
            _ if needs_vote => self.save_vote(store).await,
            _ => {
                let n = self.rng.random_range(1..=12u64);
                let mut entries = Vec::new();
                let mut made = Vec::new();
                self.changes
                    .extend(self.unsaved_committed.take().map(Change::Committed));
                for index in next..next + n {
                    // Mostly small; now and then one larger than the store's batch budget or
                    // its chunk length (stored in chunks: 4 KiB or 8,160 bytes, `config`),
                    // rarely one of tens of chunks, in as many batches.
                    // (Rare enough that the cut, drawn among a cycle's first I/O operations,
                    // still falls after purges and whole-log purges often.)
                    let len = match self.rng.random_range(0..200) {
                        0 => self.rng.random_range(50_000..=200_000),
                        1..7 => self.rng.random_range(3_000..=40_000),
                        _ => self.rng.random_range(0..=1500),
                    };
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let id = log_id(self.leader.0, self.leader.1, index);
                    self.changes.push(Change::Put(index, id, tag));
                    let e = entry(id, tag, len);
                    if postcard::to_stdvec(&e).expect("encodes").len() > self.chunk_len {
                        self.chunked.insert(tag);
                    }
                    entries.push(e);
                    made.push((index, id, tag));
                }
                let awaited = self.rng.random_bool(0.6);
                let outcome = if awaited {
                    let r = store.blocking_append(entries).await;
                    Some(self.ok(r))
                } else {
                    // Submitted, then left in flight (its callback's receiver dropped).
                    let polled = poll_once(store.blocking_append(entries)).map(|r| self.ok(r));
                    // Or stopped part way, its submission waiting: the store says so.
                    if polled.is_none() && store.get_log_state().await.is_err() {
                        self.dropped_part_way = true;
                    }
                    polled
                };
                (OpKind::Append(made, awaited), outcome)
            }
        };
        for c in &self.changes[start..] {
            self.cur.apply(c);
        }
        self.ops.push(Op {
            kind,
            acked: outcome == Some(true),
            end: self.changes.len(),
        });
        outcome != Some(false) && !self.dropped_part_way
    }

    /// Saves a vote greater than the last (`next_vote`).
    async fn save_vote(&mut self, store: &mut Store) -> (OpKind, Option<bool>) {
        let v = self.next_vote();
        self.changes.push(Change::Vote(v));
        self.votes.push(v);
        // Its leader's, unless a truncate's new leader is later (the same vote committed):
        // leader ids never go down along a Raft log, which the store's open checks. (Set
        // back to the vote's, an older term's entries followed a newer one's.)
        self.leader = self.leader.max((v.leader_id.term, v.leader_id.node_id));
        let r = store.save_vote(&v).await;
        (OpKind::Vote(self.votes.len() - 1), Some(self.ok(r)))
    }

    /// Whether an operation's result is `Ok`; keeps the error otherwise.
    fn ok<T, E: std::fmt::Display>(&mut self, r: Result<T, E>) -> bool {
        if let Err(e) = &r {
            self.failure = Some(e.to_string());
        }
        r.is_ok()
    }

    /// A vote greater than the last: the same leader's committed, or a later term's.
    fn next_vote(&mut self) -> Vote<u64> {
        match self.cur.vote {
            Some(v) if !v.committed && self.rng.random_bool(0.5) => {
                Vote::new_committed(v.leader_id.term, v.leader_id.node_id)
            }
            v => {
                let term = v.map_or(0, |v| v.leader_id.term).max(self.leader.0) + 1;
                let node = self.rng.random_range(1..=3);
                if self.rng.random_bool(0.5) {
                    Vote::new_committed(term, node)
                } else {
                    Vote::new(term, node)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the store back, and the checks.

/// Indexes as runs, `3..=9 12 14..=20`: readable when the log is long.
fn runs(indexes: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let mut j = i;
        while j + 1 < indexes.len() && indexes[j + 1] == indexes[j] + 1 {
            j += 1;
        }
        out.push(match j > i {
            true => format!("{}..={}", indexes[i], indexes[j]),
            false => indexes[i].to_string(),
        });
        i = j + 1;
    }
    format!("[{}]", out.join(" "))
}

/// What `store` serves, read through the API, checking on the way that the log is
/// contiguous and agrees with `get_log_state`.
async fn served(store: &mut Store, ctx: &str) -> Durable {
    let vote = store.read_vote().await.expect("read_vote");
    let committed = store.read_committed().await.expect("read_committed");
    let state = store.get_log_state().await.expect("get_log_state");
    let (purged, last) = (state.last_purged_log_id, state.last_log_id);
    let all = store
        .try_get_log_entries(..)
        .await
        .expect("try_get_log_entries(..)");
    let indexes: Vec<u64> = all.iter().map(|e| e.log_id.index).collect();
    // Consecutive, from right after the purged id.
    for w in indexes.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{ctx}: the log is not contiguous: {} (purged {purged:?})",
            runs(&indexes)
        );
    }
    if let (Some(p), Some(&f)) = (purged, indexes.first()) {
        assert_eq!(
            f,
            p.index + 1,
            "{ctx}: the log does not start right after the purged id {p}: {}",
            runs(&indexes)
        );
    }
    // `last_log_id`: the last entry's, or the purged id with no entry.
    let expect_last = all.last().map(|e| e.log_id).or(purged);
    assert_eq!(
        last,
        expect_last,
        "{ctx}: get_log_state's last_log_id is not the last entry's (purged {purged:?}, \
         entries {})",
        runs(&indexes)
    );
    if let (Some(p), Some(l)) = (purged, last) {
        assert!(
            p.index <= l.index,
            "{ctx}: purged {p} is past the last log id {l}"
        );
    }
    // Ranges read the same entries: a bounded one over the whole log, and each half.
    if let (Some(f), Some(l)) = (indexes.first(), indexes.last()) {
        let whole = store
            .try_get_log_entries(*f..=*l)
            .await
            .expect("range read");
        assert_eq!(whole, all, "{ctx}: a range read over the log differs");
        let mid = f + (l - f) / 2;
        let low = store
            .try_get_log_entries(*f..mid)
            .await
            .expect("range read");
        let high = store
            .try_get_log_entries(mid..=*l)
            .await
            .expect("range read");
        assert_eq!(
            low.iter()
                .chain(&high)
                .map(|e| e.log_id.index)
                .collect::<Vec<_>>(),
            indexes,
            "{ctx}: reads of the two halves do not make the log"
        );
    }
    let mut entries = BTreeMap::new();
    for e in &all {
        let tag = tag_of(e).unwrap_or_else(|m| panic!("{ctx}: {m}"));
        entries.insert(e.log_id.index, (e.log_id, tag));
    }
    Durable {
        vote,
        committed,
        purged,
        entries,
    }
}

/// The invariants Raft relies on, then the engine's order. Returns how many acknowledged
/// entries were checked (all, and those stored in chunks) and how many changes past the last
/// acknowledged one survived and were lost.
fn check_recovered(run: &Run, got: &Durable, ctx: &str) -> (u64, u64, u64, u64) {
    let acked_end = run
        .ops
        .iter()
        .filter(|o| o.acked)
        .map(|o| o.end)
        .max()
        .unwrap_or(0);

    // The vote: the last acknowledged one or a later one, never older.
    let acked_vote = run
        .ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Vote(i) if o.acked => Some(i),
            _ => None,
        })
        .max()
        .or((run.base.vote.is_some()).then_some(0));
    if let Some(a) = acked_vote {
        let at = got
            .vote
            .and_then(|v| run.votes.iter().rposition(|s| *s == v));
        assert!(
            at.is_some_and(|at| at >= a),
            "{ctx}: the vote went back: read {:?} after {} was saved (votes saved: {:?})",
            got.vote.map(|v| v.to_string()),
            run.votes[a],
            run.votes.iter().map(|v| v.to_string()).collect::<Vec<_>>()
        );
    }
    if let Some(v) = got.vote {
        assert!(
            run.votes.contains(&v),
            "{ctx}: read vote {v}, which was never saved"
        );
    }

    // Acknowledged entries: there, unless a later truncate covers them or the recovered
    // purge point does.
    let purged_to = got.purged.map(|p| p.index);
    let (mut checked, mut chunked) = (0, 0);
    for (n, op) in run.ops.iter().enumerate() {
        let OpKind::Append(made, _) = &op.kind else {
            continue;
        };
        if !op.acked {
            continue;
        }
        for &(index, id, tag) in made {
            let truncated_later = run.ops[n + 1..]
                .iter()
                .any(|o| matches!(o.kind, OpKind::Truncate(t) if t.index <= index));
            if truncated_later || purged_to.is_some_and(|p| index <= p) {
                continue;
            }
            checked += 1;
            chunked += u64::from(run.chunked.contains(&tag));
            assert_eq!(
                got.entries.get(&index),
                Some(&(id, tag)),
                "{ctx}: acknowledged entry {id} (tag {tag}) is lost or replaced"
            );
        }
    }

    // The committed id: not past the last log id, and the entry at its index has it.
    if let Some(c) = got.committed {
        let last = got.last_log();
        assert!(
            last.is_some_and(|l| l.index >= c.index),
            "{ctx}: committed {c} is past the last log id {last:?}"
        );
        if purged_to.is_none_or(|p| c.index > p) {
            assert_eq!(
                got.entries.get(&c.index).map(|(id, _)| *id),
                Some(c),
                "{ctx}: committed {c}, but the log holds another entry at its index"
            );
        }
    }

    // The engine's order: the state after some prefix of the changes holding every
    // acknowledged one.
    let mut state = run.base.clone();
    let mut found = None;
    for k in 0..=run.changes.len() {
        if k > 0 {
            state.apply(&run.changes[k - 1]);
        }
        if k >= acked_end && state.serves_as(got) {
            found = Some(k);
            break;
        }
    }
    let Some(k) = found else {
        let mut floor = run.base.clone();
        for c in &run.changes[..acked_end] {
            floor.apply(c);
        }
        panic!(
            "{ctx}: the recovered state is not the state after any prefix of the {} changes \
             submitted holding the {acked_end} acknowledged ones\n recovered: {}\n     \
             floor: {}\n  all made: {}",
            run.changes.len(),
            got.summary(),
            floor.summary(),
            run.cur.summary()
        );
    };
    let survived = (k - acked_end) as u64;
    (checked, chunked, survived, (run.changes.len() - k) as u64)
}

// ---------------------------------------------------------------------------------------------
// One seed.

fn config(seed: u64) -> Config {
    // Small segments (several per cycle, so that purges retire some), syncs on; odd seeds
    // with two syncers, seeds 2 and 3 mod 4 on the mmap write path. Batches of at most
    // 16 KiB: the store stores an entry longer than 8,160 bytes in chunks; and seeds 4 to 7
    // mod 8 allow values of at most 4 KiB, which makes the chunks that long.
    let write_path = if seed & 2 == 0 {
        WritePath::Pwrite
    } else {
        WritePath::Mmap
    };
    let base = power_loss_config(write_path);
    Config {
        syncers: 1 + (seed & 1) as usize,
        overlap_syncs_above: Duration::ZERO,
        value_len_max: if seed & 4 == 0 {
            base.value_len_max
        } else {
            4096
        },
        ..base
    }
}

async fn crash_seed(seed: u64) -> Totals {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = config(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut totals = Totals {
        seeds: 1,
        ..Totals::default()
    };
    let mut run = Run {
        rng: StdRng::seed_from_u64(rng.random()),
        base: Durable::default(),
        cur: Durable::default(),
        changes: Vec::new(),
        ops: Vec::new(),
        votes: Vec::new(),
        leader: (1, 1),
        next_tag: 0,
        retiring_purges: 0,
        unsaved_committed: None,
        failure: None,
        dropped_part_way: false,
        // `value_len_max`, or the batch budget (half of `batch_bytes_max`) less 32 bytes.
        chunk_len: config.value_len_max.min(config.batch_bytes_max / 2 - 32),
        chunked: Default::default(),
    };
    let cycles = rng.random_range(1..=3);
    for cycle in 0..cycles {
        let ctx = format!(
            "seed {seed} cycle {cycle} ({:?}, {} syncers)",
            config.write_path, config.syncers
        );
        let ops = rng.random_range(10..=50u64);
        // The cut: at the kth I/O operation (about two per engine batch, a write and a sync;
        // more at open and at each roll), or at the kth sync; now and then past the end.
        let (cut_kind, cut_at) = if rng.random_bool(0.5) {
            (None, rng.random_range(1..=3 * ops + 12))
        } else {
            (Some(IoOp::Sync), rng.random_range(1..=ops + 6))
        };
        let p_drop = [0.0, 0.2, 0.5][rng.random_range(0..3)];
        let p_keep = [0.1, 0.5, 0.9][rng.random_range(0..3)];
        let p_split = [0.0, 0.0, 0.1, 0.5][rng.random_range(0..4)];
        let tear_seed: u64 = rng.random();
        let purge_all = rng.random_bool(0.25);

        run.cur = run.base.clone();
        run.failure = None;
        run.dropped_part_way = false;
        run.changes.clear();
        run.unsaved_committed = None;
        run.ops.clear();
        run.votes = run.base.vote.into_iter().collect();

        let io = Arc::new(PowerLossIo::new(cut_at, cut_kind));
        let shared: Arc<dyn Io> = io.clone();
        match Engine::open_with_io(dir.path(), config.clone(), shared) {
            Ok(engine) => {
                let engine = Arc::new(engine);
                // Appends waited in `append` (the default) or left to the completion thread,
                // where polled once they stay in flight.
                let waits = run.rng.random_bool(0.5);
                match Store::with_engine(engine.clone()).map(|s| s.with_append_waits(waits)) {
                    Ok(mut store) => {
                        let opened = served(&mut store, &format!("{ctx}, at open")).await;
                        assert_eq!(
                            opened.summary(),
                            run.base.summary(),
                            "{ctx}: the store opened with the power on serves another state \
                             than the last reopen"
                        );
                        let mut going = true;
                        for _ in 0..ops {
                            going = run.step(&mut store, None).await;
                            if !going {
                                break;
                            }
                        }
                        // A quarter of the cycles end committing and purging the whole
                        // log: the next open finds it empty (if the power was not cut
                        // before), and goes on from the purged id.
                        if going && purge_all {
                            going = run.step(&mut store, Some(COMMIT)).await
                                && run.step(&mut store, Some(PURGE)).await;
                        }
                        // Only the power cut fails an operation (openraft would stop the
                        // node on any error): not an entry's size, say.
                        assert!(
                            going || io.is_cut() || run.dropped_part_way,
                            "{ctx}: an operation failed with the power on: {:?}",
                            run.failure
                        );
                        totals.cut_in_workload += u64::from(io.is_cut());
                        io.cut_now();
                        let _ = engine.close();
                        // Joins the completion thread: every append in flight is called back
                        // (with a failure, the engine closed).
                        drop(store);
                    }
                    Err(e) => {
                        assert!(io.is_cut(), "{ctx}: the store failed to open: {e}");
                        totals.cut_at_open += 1;
                        io.cut_now();
                        let _ = engine.close();
                    }
                }
                assert_eq!(
                    Arc::strong_count(&engine),
                    1,
                    "{ctx}: the engine outlives the store"
                );
                drop(engine);
            }
            Err(e) => {
                assert!(io.is_cut(), "{ctx}: the engine failed to open: {e}");
                totals.cut_at_open += 1;
                io.cut_now();
            }
        }
        let mut tear_rng = StdRng::seed_from_u64(tear_seed);
        totals.damage += lose_power_within_sectors(&io, &mut tear_rng, p_drop, p_keep, p_split);
        let ctx = format!("{ctx}, power cut at {:?}", io.cut_op());

        // Reopen with the real I/O.
        let got = {
            let mut store = reopen(dir.path(), &config, &ctx);
            let got = served(&mut store, &ctx).await;
            check_no_stray_chunks(store.engine(), &got, &ctx);
            store.engine().close().expect("close after the reopen");
            got
        };
        let (checked, chunked, survived, lost) = check_recovered(&run, &got, &ctx);
        totals.acked_entries_checked += checked;
        totals.chunked_entries_checked += chunked;
        totals.emptied_logs += u64::from(got.purged.is_some() && got.entries.is_empty());
        totals.unacked_changes_survived += survived;
        totals.unacked_changes_lost += lost;
        totals.ops += run.ops.len() as u64;
        totals.acked_ops += run.ops.iter().filter(|o| o.acked).count() as u64;
        for op in &run.ops {
            match op.kind {
                OpKind::Truncate(_) => totals.truncates += 1,
                OpKind::Purge => totals.purges += 1,
                OpKind::Append(_, false) => totals.in_flight_appends += 1,
                _ => {}
            }
        }
        totals.cycles += 1;
        run.leader.0 = run
            .leader
            .0
            .max(got.last_log().map_or(0, |l| l.leader_id.term));
        run.base = got;
    }
    totals.retiring_purges = run.retiring_purges;
    totals
}

/// After an open, every chunk key the engine holds (`c` + index + chunk number, the store's
/// layout of an entry stored in chunks) is one of an entry the log serves: the chunks an
/// interrupted append, truncate or purge left were deleted.
fn check_no_stray_chunks(engine: &Engine, got: &Durable, ctx: &str) {
    let mut stray = Vec::new();
    engine.for_each(|key, _| {
        if let [b'c', rest @ ..] = key {
            let index = u64::from_be_bytes(rest[..8].try_into().expect("a chunk key"));
            let served = index >= got.first_index() && got.entries.contains_key(&index);
            if !served && stray.last() != Some(&index) {
                stray.push(index);
            }
        }
    });
    assert!(
        stray.is_empty(),
        "{ctx}: chunks of no entry the log serves remain after the open: entries {}",
        runs(&stray)
    );
}

fn reopen(dir: &Path, config: &Config, ctx: &str) -> Store {
    let engine = Engine::open(dir, config.clone())
        .unwrap_or_else(|e| panic!("{ctx}: the engine does not reopen: {e}"));
    Store::with_engine(Arc::new(engine))
        .unwrap_or_else(|e| panic!("{ctx}: the store does not reopen: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The seeds.

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

fn seeds() -> Vec<u64> {
    match env_u64("MERGELOG_RAFT_CRASH_SEED") {
        Some(s) => vec![s; env_u64("MERGELOG_RAFT_CRASH_REPEAT").unwrap_or(1) as usize],
        None => {
            let first = env_u64("MERGELOG_RAFT_CRASH_FIRST").unwrap_or(0);
            (first..first + env_u64("MERGELOG_RAFT_CRASH_SEEDS").unwrap_or(200)).collect()
        }
    }
}

fn run_seed(seed: u64) -> Totals {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
        .block_on(crash_seed(seed))
}

/// The seed a worker runs and since when.
type Running = Mutex<Option<(u64, Instant)>>;

#[test]
fn power_loss_under_the_log_store() {
    let started = Instant::now();
    let seeds = Arc::new(seeds());
    let next = Arc::new(AtomicUsize::new(0));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    // Seed by seed on two threads (most of a seed's time is spent waiting for syncs). Each
    // worker says what it runs, so that a hang names its seed.
    let workers = 2.min(seeds.len()).max(1);
    let running: Arc<Vec<Running>> = Arc::new((0..workers).map(|_| Mutex::new(None)).collect());
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (seeds, next, totals, failed, running) = (
                seeds.clone(),
                next.clone(),
                totals.clone(),
                failed.clone(),
                running.clone(),
            );
            std::thread::spawn(move || {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::SeqCst)) {
                    *running[w].lock().unwrap() = Some((seed, Instant::now()));
                    match std::panic::catch_unwind(|| run_seed(seed)) {
                        Ok(t) => *totals.lock().unwrap() += t,
                        Err(_) => {
                            eprintln!("raft crash: seed {seed} FAILED");
                            failed.lock().unwrap().push(seed);
                        }
                    }
                    *running[w].lock().unwrap() = None;
                }
            })
        })
        .collect();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        for slot in running.iter() {
            if let Some((seed, since)) = *slot.lock().unwrap() {
                assert!(
                    since.elapsed() < HANG,
                    "raft crash: seed {seed} hangs (MERGELOG_RAFT_CRASH_SEED={seed} replays it)"
                );
            }
        }
    }
    for h in handles {
        h.join().expect("worker");
    }
    let t = totals.lock().unwrap();
    let d = t.damage;
    eprintln!(
        "raft crash: {} seeds, {} cycles ({} cut at open, {} cut during the workload), {} ops \
         ({} acknowledged, {} truncates, {} purges ({} retired segments), {} appends left in \
         flight), {} recovered logs purged empty, {} acknowledged entries checked ({} stored \
         in chunks), \
         unacknowledged changes: {} survived, {} lost; {} unsynced writes ({} into the \
         mapping): {} dropped, {} torn ({} sectors inside themselves), {} kept; {} \
         directory changes undone; {:.1?}",
        t.seeds,
        t.cycles,
        t.cut_at_open,
        t.cut_in_workload,
        t.ops,
        t.acked_ops,
        t.truncates,
        t.purges,
        t.retiring_purges,
        t.in_flight_appends,
        t.emptied_logs,
        t.acked_entries_checked,
        t.chunked_entries_checked,
        t.unacked_changes_survived,
        t.unacked_changes_lost,
        d.unsynced_writes,
        d.mapped_writes,
        d.dropped_writes,
        d.torn_writes,
        d.split_sectors,
        d.kept_writes,
        d.undone_dir_changes,
        started.elapsed()
    );
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "raft crash failed for seeds {failed:?} (MERGELOG_RAFT_CRASH_SEED=<seed> replays one)"
    );
}
