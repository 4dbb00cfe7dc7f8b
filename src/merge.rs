//! Merge operators (`Engine::merge`, `WriteBatch::merge`): read-modify-write of one key with
//! an operator chosen per engine ([`MergeOperator`], `Config::merge`), done by the flusher.
//!
//! A merge enters the order as a request carrying an operand. In its window, the flusher
//! groups each key's requests in order; the merges after the key's last put or delete fold
//! into one operator call on the value before them: the put's value, or the key's value as
//! every earlier window left it (the flusher keeps the values the windows written and not yet
//! durable gave their keys, and reads the index for the rest, without waiting for those
//! windows' syncs). The result is logged as a plain put
//! record, so the log format does not change, replay re-runs nothing and a read never
//! folds anything; and since the flusher is the only writer, a merge is atomic without any
//! lock for the caller. A get in the window sees the value as of its place in the order.
//!
//! Refusals. What can be checked from the request alone is checked at submit (no operator
//! configured; an `Add`, `Max` or `Min` operand that is not 8 bytes; the operand's length
//! against `Config::value_len_max`) and returned by the call. What depends on the value the
//! merge applies to is found by the flusher: an `Add`, `Max` or `Min` onto a value that is
//! not 8 bytes, a `Custom` result longer than `value_len_max`, a `Custom` operator that
//! panicked. Then the one request is refused: the flusher finds which one by applying the
//! key's operands one at a time, takes every operation of that request out of the window
//! ([`Op::Nop`]), plans the window again, and records the refusal by ring position in
//! [`Refusals`] (in the completion) before the watermark passes it: its ticket reports
//! [`Error::MergeRefused`], every other request of the window completes as usual, and the
//! engine goes on.
//!
//! A merge's result can be far longer than its operand, so a window of small merges may need
//! a frame larger than a segment holds. Then the window keeps its first merge requests, as
//! many as fit, and refuses the others the same way (`MergeRefused`, its reason naming the
//! frame's and the segment's sizes: retry them); a request whose results alone exceed a
//! segment is always refused. Nothing is written past a segment's end.

use crate::coalesce::{Entry, Op};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A user-supplied merge function: `f(existing, operands)` is the key's new value, given its
/// value before the merges (`None`: absent or deleted) and their operands in order.
pub type MergeFn = dyn Fn(Option<&[u8]>, &[&[u8]]) -> Vec<u8> + Send + Sync;

/// The merge operator of an engine (`Config::merge`).
///
/// The counter operators (`Add`, `Max`, `Min`) take and keep 8-byte little-endian `i64`
/// values: an absent key counts as 0 for `Add` and takes the operand for `Max` and `Min`;
/// `Add` wraps on overflow (so that folding is associative and never fails).
#[derive(Clone)]
#[non_exhaustive]
pub enum MergeOperator {
    /// Adds the operand to the counter.
    Add,
    /// Keeps the larger of the counter and the operand.
    Max,
    /// Keeps the smaller of the counter and the operand.
    Min,
    /// Appends the operand's bytes to the value, keeping at most the last `max_len` bytes
    /// (a bounded history: the oldest bytes go first). `max_len` is between 1 and
    /// `Config::value_len_max`.
    Append {
        /// The longest value kept.
        max_len: usize,
    },
    /// A user function (see [`MergeFn`]). It must be pure and deterministic, and applying
    /// operands one call at a time must give what one call with all of them gives
    /// (`f(Some(&f(x, &[a])), &[b]) == f(x, &[a, b])`): the flusher folds a window's operands
    /// into one call, and applies them one at a time to find which one to refuse. Only its
    /// results are logged, so replay and reopen never call it. A result longer than
    /// `Config::value_len_max`, or a panic, refuses the request (see [`Error::MergeRefused`]).
    /// It runs wherever the flusher runs: on the engine's thread, or on a thread in
    /// `Ticket::wait` that writes its own window; it must not wait for the engine.
    Custom(Arc<MergeFn>),
}

impl fmt::Debug for MergeOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeOperator::Append { max_len } => write!(f, "Append {{ max_len: {max_len} }}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Bytes of a counter value or operand.
const COUNTER: usize = 8;

impl MergeOperator {
    /// A `Custom` operator from a closure.
    pub fn custom(f: impl Fn(Option<&[u8]>, &[&[u8]]) -> Vec<u8> + Send + Sync + 'static) -> Self {
        MergeOperator::Custom(Arc::new(f))
    }

    /// The operator's name, as errors give it.
    pub fn name(&self) -> &'static str {
        match self {
            MergeOperator::Add => "add",
            MergeOperator::Max => "max",
            MergeOperator::Min => "min",
            MergeOperator::Append { .. } => "append",
            MergeOperator::Custom(_) => "custom",
        }
    }

    /// The submit-side check of an operand (its length against `value_len_max` is checked
    /// with the other limits).
    pub(crate) fn check_operand(&self, operand: &[u8]) -> Result<()> {
        match self {
            MergeOperator::Add | MergeOperator::Max | MergeOperator::Min
                if operand.len() != COUNTER =>
            {
                Err(Error::MergeRefused {
                    operator: Some(self.name()),
                    reason: format!(
                        "the operand is {} bytes, not a counter (8 bytes, a little-endian i64)",
                        operand.len()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// The value after `operands` (each checked at submit) are merged in order onto
    /// `existing`; `Err` says why the operator refuses them.
    pub(crate) fn merge(
        &self,
        existing: Option<&[u8]>,
        operands: &[&[u8]],
        value_len_max: usize,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.merge_into(existing, operands, value_len_max, &mut out)?;
        Ok(out)
    }

    /// As [`MergeOperator::merge`], the result appended to `out` (cleared first), so that a
    /// caller merging many keys reuses one buffer: the built-in operators then allocate
    /// nothing.
    pub(crate) fn merge_into(
        &self,
        existing: Option<&[u8]>,
        operands: &[&[u8]],
        value_len_max: usize,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        out.clear();
        let counters = |start: i64, fold: fn(i64, i64) -> i64| {
            let mut acc = match existing {
                None => None,
                Some(v) => Some(counter(v).ok_or_else(|| {
                    format!(
                        "the key's value is {} bytes, not a counter (8 bytes, a little-endian i64)",
                        v.len()
                    )
                })?),
            };
            for op in operands {
                let x = counter(op).expect("operand length checked at submit");
                acc = Some(fold(acc.unwrap_or(start), x));
            }
            Ok::<_, String>(acc.unwrap_or(start).to_le_bytes())
        };
        match self {
            MergeOperator::Add => out.extend_from_slice(&counters(0, i64::wrapping_add)?),
            // With no value, the first operand is taken as is (`max(MIN, x) == x`).
            MergeOperator::Max => out.extend_from_slice(&counters(i64::MIN, i64::max)?),
            MergeOperator::Min => out.extend_from_slice(&counters(i64::MAX, i64::min)?),
            MergeOperator::Append { max_len } => append(existing, operands, *max_len, out),
            MergeOperator::Custom(f) => {
                // User code, on the flusher's thread or a producer's holding the desk.
                let _inside = crate::sync::UserCode::enter();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    f(existing, operands)
                }))
                .map_err(|_| "the operator panicked".to_string())?;
                if result.len() > value_len_max {
                    return Err(format!(
                        "the result is {} bytes, over value_len_max = {value_len_max}",
                        result.len()
                    ));
                }
                *out = result;
            }
        }
        Ok(())
    }
}

fn counter(v: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(v.try_into().ok()?))
}

/// `existing` followed by `operands`, keeping the last `max_len` bytes, appended to `out`.
fn append(existing: Option<&[u8]>, operands: &[&[u8]], max_len: usize, out: &mut Vec<u8>) {
    let pieces = existing.into_iter().chain(operands.iter().copied());
    let total: usize = pieces.clone().map(<[u8]>::len).sum();
    let mut skip = total.saturating_sub(max_len);
    out.reserve(total - skip);
    for p in pieces {
        let s = skip.min(p.len());
        skip -= s;
        out.extend_from_slice(&p[s..]);
    }
}

/// The idempotent merge.
impl crate::Engine {
    /// As [`Engine::merge`](crate::Engine::merge), with request id `id` (see
    /// [`Engine::put_with_id`](crate::Engine::put_with_id)): an increment a client may
    /// retry without counting twice. A refused merge (`Error::MergeRefused`) gives its id
    /// back: nothing of it is logged, so a retry with the same id is applied, even by a
    /// client that never saw the refusal. A resubmission taken into the same window as the
    /// refused request gets the same refusal.
    ///
    /// # Errors
    ///
    /// As [`Engine::merge`](crate::Engine::merge)'s; a duplicate is an outcome, not an error.
    pub fn merge_with_id(
        &self,
        id: impl Into<crate::RequestId>,
        key: &[u8],
        operand: &[u8],
    ) -> Result<crate::IdTicket> {
        self.check_merge(key, operand)?;
        let pos = self.submit_merge(key, operand, Some(&id.into()))?;
        Ok(crate::IdTicket::new(self.ticket(pos)))
    }
}

/// Refusals the flusher decided: (ring end positions, error), in position order, the newest
/// [`REFUSALS_KEPT`]. Lives in the completion, which every ticket holds.
#[derive(Default)]
pub(crate) struct Refusals {
    /// Refusals recorded since open: a ticket skips the lock while it is 0. Stored before the
    /// watermark passes the refused request, so a ticket that saw itself complete sees it.
    recorded: AtomicU64,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// `(first, last, error)`: the requests ending at `first` and `last`, and every request
    /// between them, were refused with `error` (one request, or a run: [`Refusals::extend`]).
    entries: VecDeque<(u64, u64, Error)>,
    /// The position of the newest refusal no longer kept (0: none).
    forgotten_to: u64,
}

/// How many refusals (runs of consecutive refused requests) a ticket can still be told about.
const REFUSALS_KEPT: usize = 1 << 16;

impl Refusals {
    /// The flusher refused the request ending at `pos`: past every earlier window's
    /// refusals, but within a window not necessarily in order (a window's last merges may be
    /// refused before an earlier one: `Flusher::shed_merges_to_fit`).
    pub fn record(&self, pos: u64, error: Error) {
        let mut k = self.kept.lock();
        if k.entries.len() == REFUSALS_KEPT {
            let (_, old, _) = k.entries.pop_front().expect("full");
            k.forgotten_to = old;
        }
        let at = k.entries.partition_point(|e| e.0 < pos);
        k.entries.insert(at, (pos, pos, error));
        drop(k);
        self.recorded.fetch_add(1, Ordering::Release);
    }

    /// The flusher refused the request ending at `pos`, which comes right after the one
    /// ending at `prev` (no request between them) that it refused last, with the same
    /// error: the newest refusal's run grows to take it in (a full disk refuses every write
    /// the ring holds, far more than [`REFUSALS_KEPT`] one by one). As [`Refusals::record`]
    /// if the newest refusal does not end at `prev`.
    pub fn extend(&self, prev: u64, pos: u64, error: Error) {
        let mut k = self.kept.lock();
        if let Some(last) = k.entries.back_mut().filter(|e| e.1 == prev) {
            last.1 = pos;
            drop(k);
            self.recorded.fetch_add(1, Ordering::Release);
            return;
        }
        drop(k);
        self.record(pos, error);
    }

    /// The outcome of the complete request ending at `pos`: its refusal, if it was refused
    /// (`Error::SeqUnknown` if that can no longer be told).
    pub fn check(&self, pos: u64) -> Result<()> {
        if self.recorded.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let k = self.kept.lock();
        let i = k.entries.partition_point(|e| e.1 < pos);
        match k.entries.get(i) {
            Some((first, _, e)) if *first <= pos => Err(e.clone()),
            _ if pos <= k.forgotten_to => Err(Error::SeqUnknown { position: pos }),
            _ => Ok(()),
        }
    }
}

/// The flusher's merge stage: for one window, the value after each merge that a survivor or
/// a get needs, or the merges the operator refuses. Its buffers are reused.
#[derive(Default)]
pub(crate) struct Resolver {
    /// Each key that has a merge in the window: an entry index naming the key (its first
    /// merge) and its last operation's so far (`u32::MAX`: none yet). `next` links them.
    chains: hashbrown::HashTable<(u32, u32)>,
    /// The hasher of `chains`' keys.
    hasher: foldhash::fast::RandomState,
    /// The keys' first entry indices, in the order the keys first appear.
    firsts: Vec<u32>,
    /// For an entry on a chained key, the entry index of the key's next operation
    /// (`u32::MAX`: none).
    next: Vec<u32>,
    /// The value after each settled run of merges, in the order they were settled: its
    /// range of `value_bytes`.
    values: Vec<(usize, usize)>,
    /// The values' bytes, one buffer kept from window to window.
    value_bytes: Vec<u8>,
    /// The operator's result for the run being settled (a buffer kept for reuse).
    merged: Vec<u8>,
    /// For each entry index of the window, its value's place in `values` (`u32::MAX`: none):
    /// `value` is then one load, and `values` needs no sort.
    value_at: Vec<u32>,
    /// Entry indices naming the keys whose durable value the window reads (their first
    /// write in it is a merge), in the order `resolve` reads them.
    reads: Vec<u32>,
    /// Their durable values, as `resolve`'s `fetch` gave them (buffers kept for reuse).
    fetched: Durable,
    /// (merge entry index, why it is refused), sorted by index.
    pub refused: Vec<(u32, String)>,
}

/// The most bytes each of `Resolver`'s value buffers keeps from one window to the next
/// (`Resolver::release_large`).
pub(crate) const RESOLVER_KEEP_MAX: usize = 1 << 20;

/// The durable values a window's merges read: one per key `Resolver::resolve` asks its
/// `fetch` for, set by the key's place among them. The bytes share one buffer, kept from
/// window to window.
#[derive(Default)]
pub(crate) struct Durable {
    bytes: Vec<u8>,
    values: Vec<Fetched>,
}

#[derive(Clone, Copy)]
enum Fetched {
    /// Not set by the fetch (a bug: `resolve` would have nothing to merge onto).
    Unset,
    Absent,
    /// A range of `Durable::bytes`.
    At(usize, usize),
}

impl Durable {
    /// Ready for `n` values, none set.
    fn expect(&mut self, n: usize) {
        self.bytes.clear();
        self.values.clear();
        self.values.resize(n, Fetched::Unset);
    }

    /// Sets the durable value of the `i`-th key asked for (`None`: absent or deleted).
    pub fn set(&mut self, i: usize, value: Option<&[u8]>) {
        self.values[i] = match value {
            Some(v) => {
                let at = self.bytes.len();
                self.bytes.extend_from_slice(v);
                Fetched::At(at, v.len())
            }
            None => Fetched::Absent,
        };
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        match self.values[i] {
            Fetched::At(at, len) => Some(&self.bytes[at..at + len]),
            Fetched::Absent => None,
            Fetched::Unset => panic!("the fetch set no durable value for key {i} of the window"),
        }
    }
}

/// A key's value as the walk of its operations knows it.
enum Base<'a> {
    /// Not looked at yet: the durable value.
    Durable,
    /// `None`: absent or deleted.
    Known(Option<Cow<'a, [u8]>>),
    /// The value recorded in `Resolver::values` at this position (after a merge).
    Resolved(usize),
}

impl Resolver {
    /// Resolves the merges of `entries` (a window in order) with `op`. With `coalesce`,
    /// values are kept for the last merge of each run (the one a survivor or a get names);
    /// without, for every merge (each is logged). `fetch` is called once, before anything
    /// is merged, with every key whose durable value (every earlier window included) the
    /// window reads, each once, and sets each one's value in the [`Durable`] by its place
    /// among them: the caller can look them all up together, not one cache miss after
    /// another.
    pub fn resolve<'a>(
        &mut self,
        op: &MergeOperator,
        value_len_max: usize,
        (entries, coalesce): (&[Entry<'a>], bool),
        fetch: impl FnOnce(&mut dyn ExactSizeIterator<Item = &'a [u8]>, &mut Durable),
    ) {
        self.values.clear();
        self.value_bytes.clear();
        self.value_at.clear();
        self.value_at.resize(entries.len(), u32::MAX);
        self.refused.clear();
        self.chain(entries);
        self.find_reads(entries);
        let mut fetched = std::mem::take(&mut self.fetched);
        fetched.expect(self.reads.len());
        fetch(
            &mut self.reads.iter().map(|&i| entries[i as usize].key),
            &mut fetched,
        );
        self.walk(op, value_len_max, (entries, coalesce), &fetched);
        self.fetched = fetched;
        self.refused.sort_unstable_by_key(|r| r.0);
    }

    /// `resolve`'s walk of each key's chain, with the durable values fetched.
    fn walk<'a>(
        &mut self,
        op: &MergeOperator,
        value_len_max: usize,
        (entries, coalesce): (&[Entry<'a>], bool),
        fetched: &'a Durable,
    ) {
        let ctx = (op, value_len_max, entries);
        // The next of `fetched`'s values to use: keys read in `reads`' order.
        let mut read = 0;
        // The merges waiting to be settled (entry indices), and their operands when they are.
        let mut scratch: (Vec<u32>, Vec<&[u8]>) = (Vec::new(), Vec::new());
        for f in 0..self.firsts.len() {
            let first = self.firsts[f];
            let mut base = Base::Durable;
            // Keys settle onto their durable value in `reads`' order.
            let in_order = |reads: &[u32], base: &Base<'_>, read: usize| {
                !matches!(base, Base::Durable) || reads.get(read) == Some(&first)
            };
            let mut i = first;
            loop {
                let write = matches!(entries[i as usize].op, Op::Put(_) | Op::Delete);
                if write && !scratch.0.is_empty() {
                    // Superseded merges still apply (a get may not see them, but a refusal
                    // of one must be found): onto the value before them.
                    debug_assert!(in_order(&self.reads, &base, read));
                    self.settle(ctx, &mut base, &mut scratch, (fetched, &mut read));
                }
                match entries[i as usize].op {
                    Op::Put(v) => base = Base::Known(Some(Cow::Borrowed(v))),
                    Op::Delete => base = Base::Known(None),
                    Op::Merge(_) => scratch.0.push(i),
                    Op::Get | Op::Nop => {}
                }
                let next = self.next[i as usize];
                let get = matches!(entries[i as usize].op, Op::Get);
                let settle = !scratch.0.is_empty() && (get || !coalesce || next == u32::MAX);
                if settle {
                    debug_assert!(in_order(&self.reads, &base, read));
                    self.settle(ctx, &mut base, &mut scratch, (fetched, &mut read));
                }
                if next == u32::MAX {
                    break;
                }
                i = next;
            }
        }
        debug_assert_eq!(read, self.reads.len(), "every value fetched is read");
    }

    /// Links the operations of each key that has a merge in `entries` into a chain, in
    /// window order (`firsts`, `next`): one hash probe per entry, no sort of the keys.
    fn chain(&mut self, entries: &[Entry<'_>]) {
        self.chains.clear();
        self.firsts.clear();
        self.next.clear();
        self.next.resize(entries.len(), u32::MAX);
        let hasher = &self.hasher;
        let hash = |key: &[u8]| std::hash::BuildHasher::hash_one(hasher, key);
        for (i, e) in entries.iter().enumerate() {
            if let Op::Merge(_) = e.op {
                let same_key = |&(f, _): &(u32, u32)| entries[f as usize].key == e.key;
                let rehash = |&(f, _): &(u32, u32)| hash(entries[f as usize].key);
                self.chains
                    .entry(hash(e.key), same_key, rehash)
                    .or_insert((i as u32, u32::MAX));
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if let Op::Nop = e.op {
                continue;
            }
            let h = hash(e.key);
            let Some(c) = self
                .chains
                .find_mut(h, |&(f, _)| entries[f as usize].key == e.key)
            else {
                continue;
            };
            let i = i as u32;
            if c.1 == u32::MAX {
                // The key's first operation (at or before its first merge).
                self.firsts.push(i);
            } else {
                self.next[c.1 as usize] = i;
            }
            c.1 = i;
        }
    }

    /// Fills `reads`: the keys (by their first entry) whose first write in the window is a
    /// merge, so that their walk in `resolve` settles onto the durable value.
    fn find_reads(&mut self, entries: &[Entry<'_>]) {
        self.reads.clear();
        for &first in &self.firsts {
            let mut i = first;
            loop {
                match entries[i as usize].op {
                    Op::Merge(_) => {
                        self.reads.push(first);
                        break;
                    }
                    Op::Put(_) | Op::Delete => break,
                    Op::Get | Op::Nop => {}
                }
                i = self.next[i as usize];
                if i == u32::MAX {
                    break;
                }
            }
        }
    }

    /// Merges the `pending` merges (entry indices) onto `base`, records the value after the
    /// last of them, and makes it the base; on a refusal, applies them one at a time to
    /// find which ones the operator refuses.
    fn settle<'a>(
        &mut self,
        (op, value_len_max, entries): (&MergeOperator, usize, &[Entry<'a>]),
        base: &mut Base<'a>,
        (pending, operands): &mut (Vec<u32>, Vec<&'a [u8]>),
        (fetched, read): (&'a Durable, &mut usize),
    ) {
        if let Base::Durable = base {
            *base = Base::Known(fetched.get(*read).map(Cow::Borrowed));
            *read += 1;
        }
        let cur: Option<&[u8]> = match base {
            Base::Known(cur) => cur.as_deref(),
            Base::Resolved(at) => {
                let (start, len) = self.values[*at];
                Some(&self.value_bytes[start..start + len])
            }
            Base::Durable => unreachable!("set above"),
        };
        let operand = |i: u32| match entries[i as usize].op {
            Op::Merge(o) => o,
            _ => unreachable!("pending holds merges"),
        };
        operands.clear();
        operands.extend(pending.iter().map(|&i| operand(i)));
        let last = *pending.last().expect("settled with merges pending");
        if op
            .merge_into(cur, operands, value_len_max, &mut self.merged)
            .is_err()
        {
            // Find the refused ones; the others apply in order, each onto the last good
            // value. (The caller takes the refused requests out and resolves again.)
            let mut v: Option<Vec<u8>> = cur.map(<[u8]>::to_vec);
            for &i in pending.iter() {
                match op.merge(v.as_deref(), &[operand(i)], value_len_max) {
                    Ok(next) => v = Some(next),
                    Err(reason) => self.refused.push((i, reason)),
                }
            }
            self.merged = v.unwrap_or_default();
        }
        // The base from now on is the value recorded for the last merge (no copy of it).
        // The window's first value takes the operator's buffer as it is (a large result is
        // not copied); a later one is copied after the others.
        let (start, len) = (self.value_bytes.len(), self.merged.len());
        if start == 0 {
            std::mem::swap(&mut self.value_bytes, &mut self.merged);
            self.merged.clear();
        } else {
            self.value_bytes.extend_from_slice(&self.merged);
        }
        self.value_at[last as usize] = self.values.len() as u32;
        self.values.push((start, len));
        *base = Base::Resolved(self.values.len() - 1);
        pending.clear();
    }

    /// Frees the buffers a window's values left longer than [`RESOLVER_KEEP_MAX`]: they are
    /// kept from window to window so that merges of small values allocate nothing, but one
    /// large merge must not leave its value (three times: read, merged, recorded) behind.
    pub fn release_large(&mut self) {
        for buf in [
            &mut self.value_bytes,
            &mut self.merged,
            &mut self.fetched.bytes,
        ] {
            crate::coalesce::trim(buf, RESOLVER_KEEP_MAX);
        }
    }

    /// The key's value after the merge at entry index `i`, if resolved.
    pub fn value(&self, i: u32) -> Option<&[u8]> {
        let at = *self.value_at.get(i as usize)?;
        let &(start, len) = self.values.get(at as usize)?;
        Some(&self.value_bytes[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn c(n: i64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    /// Runs of consecutive refusals: every position of a run is refused, the positions
    /// around it are not, and a run is one of the kept entries however long it grows.
    #[test]
    fn a_run_of_refusals_is_one_entry() {
        let r = Refusals::default();
        let e = || Error::MergeRefused {
            operator: Some("x"),
            reason: "y".into(),
        };
        // Requests end every 2 positions; those ending at 10 and 20 to 38 are refused.
        r.record(10, e());
        r.record(20, e());
        for pos in (22..40).step_by(2) {
            r.extend(pos - 2, pos, e());
        }
        assert_eq!(r.kept.lock().entries.len(), 2);
        for pos in [10, 20, 22, 30, 38] {
            assert!(r.check(pos).is_err(), "{pos}");
        }
        for pos in [8, 12, 18, 40] {
            assert!(r.check(pos).is_ok(), "{pos}");
        }
        // Not right after the newest: a record of its own.
        r.extend(30, 50, e());
        assert_eq!(r.kept.lock().entries.len(), 3);
        assert!(r.check(50).is_err() && r.check(48).is_ok());
    }

    fn merge_all(op: &MergeOperator, existing: Option<&[u8]>, ops: &[Vec<u8>]) -> Vec<u8> {
        let ops: Vec<&[u8]> = ops.iter().map(|o| &o[..]).collect();
        op.merge(existing, &ops, 1 << 20).expect("merges")
    }

    /// The same operands one at a time.
    fn merge_each(op: &MergeOperator, existing: Option<&[u8]>, ops: &[Vec<u8>]) -> Option<Vec<u8>> {
        let mut v = existing.map(<[u8]>::to_vec);
        for o in ops {
            v = Some(op.merge(v.as_deref(), &[o], 1 << 20).expect("merges"));
        }
        v
    }

    #[test]
    fn counters_start_from_nothing_and_refuse_what_is_not_a_counter() {
        assert_eq!(merge_all(&MergeOperator::Add, None, &[c(2), c(-5)]), c(-3));
        assert_eq!(merge_all(&MergeOperator::Max, None, &[c(-7)]), c(-7));
        assert_eq!(merge_all(&MergeOperator::Min, Some(&c(3)), &[c(9)]), c(3));
        assert_eq!(
            merge_all(&MergeOperator::Add, Some(&c(i64::MAX)), &[c(1)]),
            c(i64::MIN),
            "wraps"
        );
        let e = MergeOperator::Add
            .merge(Some(b"abc"), &[&c(1)], 100)
            .unwrap_err();
        assert!(e.contains("3 bytes"), "{e}");
        assert!(MergeOperator::Add.check_operand(b"1234567").is_err());
        assert!(MergeOperator::Append { max_len: 4 }
            .check_operand(b"")
            .is_ok());
    }

    #[test]
    fn append_keeps_the_newest_bytes() {
        let op = MergeOperator::Append { max_len: 5 };
        let ops = [b"abc".to_vec(), b"defg".to_vec()];
        assert_eq!(merge_all(&op, Some(b"xy"), &ops), b"cdefg");
        assert_eq!(merge_all(&op, None, &[b"ab".to_vec()]), b"ab");
    }

    #[test]
    fn a_custom_operator_that_panics_or_grows_too_long_is_refused() {
        let op = MergeOperator::custom(|_, ops| {
            assert!(ops.iter().all(|o| o != b"boom"), "boom");
            ops.concat()
        });
        assert_eq!(op.merge(None, &[b"ab", b"c"], 3).unwrap(), b"abc");
        assert!(op
            .merge(None, &[b"ab", b"cd"], 3)
            .unwrap_err()
            .contains("over"));
        assert!(op
            .merge(None, &[b"boom"], 3)
            .unwrap_err()
            .contains("panicked"));
    }

    fn operator() -> impl Strategy<Value = MergeOperator> {
        prop_oneof![
            Just(MergeOperator::Add),
            Just(MergeOperator::Max),
            Just(MergeOperator::Min),
            (1usize..20).prop_map(|max_len| MergeOperator::Append { max_len }),
        ]
    }

    fn operand(op: &MergeOperator) -> BoxedStrategy<Vec<u8>> {
        match op {
            MergeOperator::Append { .. } => proptest::collection::vec(any::<u8>(), 0..8).boxed(),
            _ => any::<i64>().prop_map(c).boxed(),
        }
    }

    /// A window's entry in the fold tests: (key 0..3, kind 0 put / 1 delete / 2 get /
    /// 3.. merge, operand or value).
    type Step = (u8, u8, Vec<u8>);

    fn steps() -> impl Strategy<Value = (MergeOperator, Vec<Step>)> {
        operator().prop_flat_map(|op| {
            let step = (0u8..3, 0u8..8, operand(&op));
            (Just(op), proptest::collection::vec(step, 0..40))
        })
    }

    proptest! {
        /// Folding operands into one call is applying them one at a time, for every
        /// built-in operator.
        #[test]
        fn folding_is_applying_in_order(
            (op, steps) in steps(),
            start in proptest::option::of(any::<i64>()),
        ) {
            let ops: Vec<Vec<u8>> = steps.into_iter().map(|s| s.2).collect();
            let start = start.map(c);
            let all = merge_all(&op, start.as_deref(), &ops);
            let each = merge_each(&op, start.as_deref(), &ops);
            if ops.is_empty() {
                // No operand: the value stays (an absent counter reads as its start).
                prop_assert!(each == start || start.is_none());
            } else {
                prop_assert_eq!(Some(all), each);
            }
        }

        /// The resolver's values (for survivors and gets) are what applying the window one
        /// request at a time gives, with and without coalescing.
        #[test]
        fn resolving_a_window_matches_a_sequential_map(
            (op, steps) in steps(),
            durable in proptest::collection::vec(proptest::option::of(any::<i64>()), 3),
        ) {
            let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
            let counter_op = !matches!(op, MergeOperator::Append { .. });
            let entries: Vec<Entry<'_>> = steps
                .iter()
                .map(|(k, kind, v)| Entry {
                    key: keys[*k as usize],
                    op: match kind {
                        // Puts of valid counters only: refusals are the next test's.
                        0 if counter_op && v.len() != 8 => Op::Delete,
                        0 => Op::Put(v),
                        1 => Op::Delete,
                        2 => Op::Get,
                        _ => Op::Merge(v),
                    },
                })
                .collect();
            let start: HashMap<&[u8], Vec<u8>> = keys
                .iter()
                .zip(&durable)
                .filter_map(|(k, v)| v.map(|v| (*k, c(v))))
                .collect();
            for coalesce in [true, false] {
                let mut r = Resolver::default();
                // The fetch is asked for every key read, each once, and no other; the
                // values it sets are the ones merged onto.
                let asked = RefCell::new(Vec::new());
                r.resolve(&op, 1 << 20, (&entries, coalesce), |keys, out| {
                    for (i, k) in keys.enumerate() {
                        asked.borrow_mut().push(k.to_vec());
                        out.set(i, start.get(k).map(|v| &v[..]));
                    }
                });
                prop_assert!(r.refused.is_empty());
                let mut asked = asked.into_inner();
                asked.sort();
                let n = asked.len();
                asked.dedup();
                prop_assert_eq!(n, asked.len(), "a key fetched twice");
                // The keys whose first write in the window is a merge.
                let mut reads: Vec<Vec<u8>> = Vec::new();
                let mut wrote: Vec<&[u8]> = Vec::new();
                for e in &entries {
                    match e.op {
                        Op::Merge(_) if !wrote.contains(&e.key) => {
                            wrote.push(e.key);
                            reads.push(e.key.to_vec());
                        }
                        Op::Put(_) | Op::Delete | Op::Merge(_) => wrote.push(e.key),
                        Op::Get | Op::Nop => {}
                    }
                }
                reads.sort();
                prop_assert_eq!(asked, reads);
                let mut model = start.clone();
                // Per key, the last merge since the key's last get or write.
                let mut last_merge: HashMap<&[u8], u32> = HashMap::new();
                for (i, e) in entries.iter().enumerate() {
                    let i = i as u32;
                    match e.op {
                        Op::Put(v) => { model.insert(e.key, v.to_vec()); last_merge.remove(e.key); }
                        Op::Delete => { model.remove(e.key); last_merge.remove(e.key); }
                        Op::Merge(o) => {
                            let v = merge_each(&op, model.get(e.key).map(|v| &v[..]), &[o.to_vec()]);
                            model.insert(e.key, v.unwrap());
                            last_merge.insert(e.key, i);
                            if !coalesce {
                                prop_assert_eq!(r.value(i), model.get(e.key).map(|v| &v[..]));
                            }
                        }
                        Op::Get => {
                            if let Some(m) = last_merge.remove(e.key) {
                                prop_assert_eq!(r.value(m), model.get(e.key).map(|v| &v[..]));
                            }
                        }
                        Op::Nop => {}
                    }
                }
                // The last merge of each key's final run holds the key's final value.
                for (k, m) in last_merge {
                    prop_assert_eq!(r.value(m), model.get(k).map(|v| &v[..]));
                }
            }
        }
    }

    /// Merges onto a value the operator refuses are refused one by one; the others apply.
    #[test]
    fn refused_merges_are_found_one_by_one() {
        let good = c(5);
        let entries = [
            Entry {
                key: b"k",
                op: Op::Merge(&good),
            },
            Entry {
                key: b"k",
                op: Op::Put(b"not a counter"),
            },
            Entry {
                key: b"k",
                op: Op::Merge(&good),
            },
            Entry {
                key: b"k",
                op: Op::Merge(&good),
            },
            Entry {
                key: b"j",
                op: Op::Merge(&good),
            },
        ];
        let mut r = Resolver::default();
        r.resolve(&MergeOperator::Add, 100, (&entries, true), |keys, out| {
            (0..keys.len()).for_each(|i| out.set(i, None))
        });
        let refused: Vec<u32> = r.refused.iter().map(|x| x.0).collect();
        assert_eq!(refused, vec![2, 3]);
        assert_eq!(r.value(4), Some(&c(5)[..]));
    }
}
