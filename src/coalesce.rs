//! Coalesce + sort: turn one window of requests into the records to write and the answers to
//! the reads in it.
//!
//! (module docs written at the end)

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// What one request in the window does.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// Write the value under the key.
    Put(&'a [u8]),
    /// Remove the key.
    Delete,
    /// Read the key as of this request's place in the order.
    Get,
}

/// One request of the window; the slice handed to [`Coalescer::plan`] is in the engine's total
/// order, and an entry's position in it is its index.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The key (any bytes, the empty key included).
    pub key: &'a [u8],
    /// What to do with it.
    pub op: Op<'a>,
}

/// Where a `Get` finds its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetAnswer {
    /// The value written by the entry at this index: the latest earlier `Put` or `Delete` of the
    /// same key in this window.
    Write(u32),
    /// No earlier write of the key in this window: read the durable state. The `u32` is the index
    /// of the first `Get` that shares this lookup, the same for every get that shares it.
    Lookup(u32),
}

/// The outcome of one window.
#[derive(Default, Debug)]
pub struct Plan {
    /// Entry indices of the writes to put in the log: with coalescing, one per key (its last
    /// write) in ascending bytewise key order; without, every write in submission order.
    pub survivors: Vec<u32>,
    /// `(get entry index, answer)` for every `Get` of the window, in no particular order.
    pub gets: Vec<(u32, GetAnswer)>,
    /// Writes superseded by a later write of the same key in the window (not written).
    pub coalesced_writes: u64,
    /// Gets that share their answer with an earlier get: `gets - distinct answers`.
    pub collapsed_reads: u64,
    /// Distinct `GetAnswer::Lookup` values: the index lookups the engine has to do.
    pub lookups: u64,
}

impl Plan {
    fn clear(&mut self) {
        self.survivors.clear();
        self.gets.clear();
        self.coalesced_writes = 0;
        self.collapsed_reads = 0;
        self.lookups = 0;
    }
}

/// Which algorithm [`Coalescer::plan_with`] uses. `Auto` is what [`Coalescer::plan`] does; the
/// others exist so benches and tests can compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Pick per window.
    Auto,
    /// Sort every entry by key, then walk each key's run.
    SortFirst,
    /// Hash every entry to its key's slot in submission order, then sort only the survivors.
    HashFirst,
}

/// "No entry": windows hold fewer than `u32::MAX` entries.
const NONE: u32 = u32::MAX;

/// Key bytes a sort item carries inline, from the current offset.
const INLINE: usize = 16;
/// Length class of a key longer than `off + INLINE`: its inline bytes do not settle equality.
const LONG: u64 = INLINE as u64 + 1;

// `Item::meta` bits. Integer order of meta is (length class, index), which is what the key
// order needs after the inline bytes; the flags below the index never decide anything because
// indices are unique.
const WRITE: u64 = 1;
const START: u64 = 2;
const IDX_SHIFT: u32 = 8;
const LEN_SHIFT: u32 = 48;

/// One entry as the sort sees it: the 16 key bytes after the window's common prefix,
/// big-endian and zero padded, then (length class, index). Derived `Ord` is lexicographic over
/// the fields, which is bytewise key order, then index order, for every key that fits inline.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    p0: u64,
    p1: u64,
    meta: u64,
}

impl Item {
    #[inline(always)]
    fn new(idx: u32, write: bool) -> Item {
        Item {
            p0: 0,
            p1: 0,
            meta: ((idx as u64) << IDX_SHIFT) | write as u64,
        }
    }

    #[inline(always)]
    fn idx(self) -> u32 {
        (self.meta >> IDX_SHIFT) as u32
    }

    #[inline(always)]
    fn len_class(self) -> u64 {
        self.meta >> LEN_SHIFT
    }

    /// Same inline bytes and length class: the same key unless both are `LONG`.
    #[inline(always)]
    fn same_inline(self, o: Item) -> bool {
        self.p0 == o.p0 && self.p1 == o.p1 && self.len_class() == o.len_class()
    }

    /// Loads the key's bytes from `off` (requires `off <= key.len()`). The zero padding makes
    /// "ab" and "ab\0" tie on the bytes; the length class (shorter first) breaks the tie the
    /// way bytewise order does, because a padded tie means the shorter key is a prefix.
    #[inline(always)]
    fn set_key(&mut self, key: &[u8], off: usize) {
        let k = &key[off..];
        (self.p0, self.p1) = inline16(k);
        let class = k.len().min(LONG as usize) as u64;
        self.meta = (self.meta & ((1 << LEN_SHIFT) - 1)) | (class << LEN_SHIFT);
    }
}

/// The first 16 bytes of `k` as two big-endian words, zero padded. Overlapping loads instead of
/// a copy into a buffer: bytes loaded twice land on the same bit positions, so OR is exact.
#[inline(always)]
fn inline16(k: &[u8]) -> (u64, u64) {
    let n = k.len();
    let be64 = |i: usize| u64::from_be_bytes(k[i..i + 8].try_into().unwrap());
    let be32 = |i: usize| u32::from_be_bytes(k[i..i + 4].try_into().unwrap()) as u64;
    if n >= 16 {
        (be64(0), be64(8))
    } else if n > 8 {
        (be64(0), be64(n - 8) << (8 * (16 - n)))
    } else if n == 8 {
        (be64(0), 0)
    } else if n >= 4 {
        ((be32(0) << 32) | (be32(n - 4) << (8 * (8 - n))), 0)
    } else {
        let mut p = 0u64;
        for (i, &b) in k.iter().enumerate() {
            p |= (b as u64) << (56 - 8 * i);
        }
        (p, 0)
    }
}

/// Reusable coalesce+sort stage; holds only scratch buffers, so keep one per flusher.
pub struct Coalescer {
    plan: Plan,
    items: Vec<Item>,
    tmp: Vec<Item>,
    hist: Vec<u32>,
    slots: Vec<u64>,
    keys: Vec<KeyState>,
    seed: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-key state of the hash-first walk. The key's first 16 bytes ride along so that telling
/// keys apart rarely has to touch the entry (a cache miss into the ring).
#[derive(Clone, Copy)]
struct KeyState {
    p0: u64,
    p1: u64,
    len_class: u64,
    /// An entry holding this key, for keys too long to compare inline.
    rep: u32,
    last_write: u32,
    lookup: u32,
    answered: bool,
}

impl Coalescer {
    /// A coalescer with empty scratch buffers (they grow to the largest window seen).
    pub fn new() -> Self {
        Coalescer {
            plan: Plan::default(),
            items: Vec::new(),
            tmp: Vec::new(),
            hist: vec![0; 1 << MAX_DIGIT_BITS],
            slots: Vec::new(),
            keys: Vec::new(),
            // A per-process random seed keeps crafted keys from forcing long probe chains; the
            // probe budget in `hash_walk` covers what the seed cannot.
            seed: RandomState::new().hash_one(0x6d65_7267_656c_6f67_u64) | 1,
        }
    }

    /// Plans one window. `entries` is in the engine's total order; with `coalesce == false`
    /// every write survives in submission order and each get is answered on its own.
    pub fn plan(&mut self, entries: &[Entry<'_>], coalesce: bool) -> &Plan {
        self.plan_with(entries, coalesce, Algorithm::Auto)
    }

    /// [`plan`](Self::plan) with an explicit algorithm (for benches and tests); every algorithm
    /// gives the same plan.
    pub fn plan_with(
        &mut self,
        entries: &[Entry<'_>],
        coalesce: bool,
        algorithm: Algorithm,
    ) -> &Plan {
        assert!(
            entries.len() < NONE as usize,
            "window of {} entries exceeds u32 indices",
            entries.len()
        );
        self.plan.clear();
        let algorithm = match algorithm {
            Algorithm::Auto if !coalesce => Algorithm::HashFirst,
            Algorithm::Auto => Algorithm::SortFirst,
            a => a,
        };
        if !coalesce {
            self.plan_plain(entries, algorithm);
        } else if algorithm == Algorithm::HashFirst && self.hash_walk(entries, true) {
            self.sort_survivors(entries);
        } else {
            self.plan.clear();
            self.sort_walk(entries, true);
        }
        &self.plan
    }

    /// Plain group commit: writes in submission order, no sorting; gets still need the latest
    /// earlier write of their key, found through the hash table.
    fn plan_plain(&mut self, entries: &[Entry<'_>], algorithm: Algorithm) {
        let has_gets = entries.iter().any(|e| matches!(e.op, Op::Get));
        if has_gets && (algorithm == Algorithm::SortFirst || !self.hash_walk(entries, false)) {
            self.plan.clear();
            self.sort_walk(entries, false);
        }
        self.plan.survivors.extend(
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !matches!(e.op, Op::Get))
                .map(|(i, _)| i as u32),
        );
    }

    // ---------------------------------------------------------------- sort-first

    /// Sorts all entries by (key, index) and walks each key's group in index order.
    fn sort_walk(&mut self, entries: &[Entry<'_>], coalesce: bool) {
        self.items.clear();
        self.items.extend(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| Item::new(i as u32, !matches!(e.op, Op::Get))),
        );
        sort_items(
            &mut self.items,
            &mut self.tmp,
            &mut self.hist,
            entries,
            false,
        );
        let plan = &mut self.plan;
        let mut last_write = NONE;
        let mut lookup = NONE;
        let mut answered = false;
        for x in &self.items {
            let idx = x.idx();
            if x.meta & START != 0 {
                if coalesce && last_write != NONE {
                    plan.survivors.push(last_write);
                }
                last_write = NONE;
                lookup = NONE;
                answered = false;
            }
            if x.meta & WRITE != 0 {
                if last_write != NONE && coalesce {
                    plan.coalesced_writes += 1;
                }
                last_write = idx;
                answered = false;
            } else {
                let ans = answer(
                    coalesce,
                    idx,
                    last_write,
                    &mut lookup,
                    &mut answered,
                    &mut plan.collapsed_reads,
                    &mut plan.lookups,
                );
                plan.gets.push((idx, ans));
            }
        }
        if coalesce && last_write != NONE {
            plan.survivors.push(last_write);
        }
    }

    // ---------------------------------------------------------------- hash-first

    /// Walks the window in submission order, each entry going to its key's slot. Returns false
    /// (plan half built) if probing ran over budget, so the caller falls back to sorting.
    fn hash_walk(&mut self, entries: &[Entry<'_>], coalesce: bool) -> bool {
        let n = entries.len();
        let cap = (n * 2).next_power_of_two().max(16);
        self.slots.clear();
        self.slots.resize(cap, 0);
        self.keys.clear();
        let mask = cap - 1;
        // Linear probing at load <= 1/2 averages < 2 probes; 8 per entry on average means the
        // keys collide on purpose (or the hash is broken) and sorting is the safe way out.
        let mut budget = n * 8 + 64;
        let plan = &mut self.plan;
        let slots = &mut self.slots;
        let keys = &mut self.keys;
        let seed = self.seed;
        for (i, e) in entries.iter().enumerate() {
            let idx = i as u32;
            let (p0, p1) = inline16(e.key);
            let len_class = e.key.len().min(LONG as usize) as u64;
            let h = if len_class < LONG {
                fold_mul(p0 ^ seed, p1 ^ len_class ^ K2)
            } else {
                hash_long(e.key, seed)
            };
            let h = fold_mul(h, K1);
            let tag = h >> 32;
            let mut pos = h as usize & mask;
            let id = loop {
                let s = slots[pos];
                if s == 0 {
                    let id = keys.len();
                    slots[pos] = (tag << 32) | (id as u64 + 1);
                    keys.push(KeyState {
                        p0,
                        p1,
                        len_class,
                        rep: idx,
                        last_write: NONE,
                        lookup: NONE,
                        answered: false,
                    });
                    break id;
                }
                if s >> 32 == tag {
                    let id = (s as u32 - 1) as usize;
                    let k = &keys[id];
                    if k.p0 == p0
                        && k.p1 == p1
                        && k.len_class == len_class
                        && (len_class < LONG || entries[k.rep as usize].key == e.key)
                    {
                        break id;
                    }
                }
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                pos = (pos + 1) & mask;
            };
            let k = &mut keys[id];
            if matches!(e.op, Op::Get) {
                let ans = answer(
                    coalesce,
                    idx,
                    k.last_write,
                    &mut k.lookup,
                    &mut k.answered,
                    &mut plan.collapsed_reads,
                    &mut plan.lookups,
                );
                plan.gets.push((idx, ans));
            } else {
                if k.last_write != NONE && coalesce {
                    plan.coalesced_writes += 1;
                }
                k.last_write = idx;
                k.answered = false;
            }
        }
        true
    }

    /// After [`hash_walk`](Self::hash_walk): sorts the distinct surviving keys, whose inline
    /// bytes the key states already hold.
    fn sort_survivors(&mut self, entries: &[Entry<'_>]) {
        self.items.clear();
        self.items.extend(
            self.keys
                .iter()
                .filter(|k| k.last_write != NONE)
                .map(|k| Item {
                    p0: k.p0,
                    p1: k.p1,
                    meta: (k.len_class << LEN_SHIFT)
                        | ((k.last_write as u64) << IDX_SHIFT)
                        | WRITE,
                }),
        );
        sort_items(&mut self.items, &mut self.tmp, &mut self.hist, entries, true);
        self.plan.survivors.extend(self.items.iter().map(|x| x.idx()));
    }
}

/// The answer for a get at `idx` of a key whose latest earlier write is `last_write`, updating
/// the sharing state of the key (`lookup`: first get of the shared lookup; `answered`: the
/// current write has already been handed to a get).
#[inline(always)]
fn answer(
    coalesce: bool,
    idx: u32,
    last_write: u32,
    lookup: &mut u32,
    answered: &mut bool,
    collapsed: &mut u64,
    lookups: &mut u64,
) -> GetAnswer {
    if last_write != NONE {
        if coalesce {
            if *answered {
                *collapsed += 1;
            }
            *answered = true;
        }
        GetAnswer::Write(last_write)
    } else if coalesce && *lookup != NONE {
        *collapsed += 1;
        GetAnswer::Lookup(*lookup)
    } else {
        *lookup = idx;
        *lookups += 1;
        GetAnswer::Lookup(idx)
    }
}

// -------------------------------------------------------------------- sorting

/// Sorts items by (full key, index) and sets START on the first item of each distinct key.
/// Items come with index and write bit set; with `filled` their inline bytes are already
/// loaded from offset 0.
fn sort_items(
    items: &mut Vec<Item>,
    tmp: &mut Vec<Item>,
    hist: &mut [u32],
    entries: &[Entry<'_>],
    filled: bool,
) {
    let n = items.len();
    if n == 0 {
        return;
    }
    let key = |x: &Item| entries[x.idx() as usize].key;
    // Skip the bytes every key shares: they cannot order anything, and 16 inline bytes taken
    // after them settle far more (keys like "user:0000001234" would otherwise tie on "user:000").
    let mut off = 0;
    if !filled {
        items.iter_mut().for_each(|x| x.set_key(key(x), off));
    }
    loop {
        let f = items[0];
        let (mut v0, mut v1, mut min_class, mut any_long) = (0, 0, LONG, false);
        for x in items.iter() {
            v0 |= x.p0 ^ f.p0;
            v1 |= x.p1 ^ f.p1;
            min_class = min_class.min(x.len_class());
            any_long |= x.len_class() == LONG;
        }
        let same = if v0 != 0 {
            v0.leading_zeros() / 8
        } else {
            8 + v1.leading_zeros() / 8
        };
        // A shared byte is only real (not padding) up to the shortest key.
        let common = (same as usize).min(min_class as usize);
        if common == 0 || !any_long {
            break;
        }
        off += common;
        items.iter_mut().for_each(|x| x.set_key(key(x), off));
    }
    if tmp.len() < n {
        tmp.resize(n, Item::default());
    }
    msd_into(items, &mut tmp[..n], hist);
    std::mem::swap(items, tmp);
    items.truncate(n);
    resolve(items, &mut tmp[..n], hist, entries, off);
}

/// At or below this many items, `sort_unstable` (insertion sort inside) beats another pass.
const SMALL: usize = 32;
const MAX_DIGIT_BITS: u32 = 12;

/// Bits per radix digit for `n` items: aims at ~16 items per bucket, capped so the counters
/// stay in L1 and the scatter's write streams in L2.
fn digit_bits(n: usize) -> u32 {
    (n.ilog2().saturating_sub(4)).clamp(4, MAX_DIGIT_BITS)
}

/// Sorts the items of `src` into `dst` (same length; `src` is left in any order): MSD radix on
/// the top varying bits of the inline bytes, then `sort_unstable` on each small bucket. MSD
/// because random keys are settled after one scatter pass (16 items a bucket at 64K), where
/// LSD would pay a pass for each of 8+ bytes.
fn msd_into(src: &mut [Item], dst: &mut [Item], hist: &mut [u32]) {
    let n = src.len();
    if n <= SMALL {
        dst.copy_from_slice(src);
        dst.sort_unstable();
        return;
    }
    let f = src[0];
    let (mut v0, mut v1) = (0u64, 0u64);
    for x in src.iter() {
        v0 |= x.p0 ^ f.p0;
        v1 |= x.p1 ^ f.p1;
    }
    if v0 == 0 && v1 == 0 {
        // One inline value (often one key many times): only (length class, index) is left,
        // and the scatters kept index order, so this is close to a linear check.
        dst.copy_from_slice(src);
        dst.sort_unstable();
        return;
    }
    let lz = if v0 != 0 {
        v0.leading_zeros()
    } else {
        64 + v1.leading_zeros()
    };
    let bits = digit_bits(n);
    let digit = |x: &Item| {
        let v = (((x.p0 as u128) << 64) | x.p1 as u128) << lz;
        (v >> (128 - bits)) as usize
    };
    let hist = &mut hist[..1 << bits];
    hist.fill(0);
    for x in src.iter() {
        hist[digit(x)] += 1;
    }
    let mut sum = 0;
    for h in hist.iter_mut() {
        let c = *h;
        *h = sum;
        sum += c;
    }
    for x in src.iter() {
        let d = digit(x);
        dst[hist[d] as usize] = *x;
        hist[d] += 1;
    }
    // `hist` is scratch for the recursion below, so buckets are found again by their digits.
    let mut i = 0;
    while i < n {
        let d = digit(&dst[i]);
        let mut j = i + 1;
        while j < n && digit(&dst[j]) == d {
            j += 1;
        }
        if j - i <= SMALL {
            dst[i..j].sort_unstable();
        } else {
            msd_into(&mut dst[i..j], &mut src[i..j], hist);
            dst[i..j].copy_from_slice(&src[i..j]);
        }
        i = j;
    }
}

/// After the sort: marks where each key starts, and orders runs of long keys whose inline
/// bytes tie (by their next 16 bytes, recursively).
fn resolve(items: &mut [Item], tmp: &mut [Item], hist: &mut [u32], entries: &[Entry<'_>], off: usize) {
    let n = items.len();
    let mut i = 0;
    while i < n {
        let a = items[i];
        let mut j = i + 1;
        while j < n && items[j].same_inline(a) {
            j += 1;
        }
        if a.len_class() < LONG || j - i == 1 {
            items[i].meta |= START;
        } else {
            resolve_long(&mut items[i..j], &mut tmp[i..j], hist, entries, off);
        }
        i = j;
    }
}

/// `run`: keys longer than `off + 16` that agree on bytes `off..off + 16`, in index order.
fn resolve_long(
    run: &mut [Item],
    tmp: &mut [Item],
    hist: &mut [u32],
    entries: &[Entry<'_>],
    off: usize,
) {
    let key = |x: &Item| entries[x.idx() as usize].key;
    let k0 = key(&run[0]);
    // The common case: one long key written many times.
    if run[1..].iter().all(|x| key(x) == k0) {
        run[0].meta |= START;
        return;
    }
    let deeper = off + INLINE;
    run.iter_mut().for_each(|x| x.set_key(key(x), deeper));
    msd_into(run, tmp, hist);
    run.copy_from_slice(tmp);
    resolve(run, tmp, hist, entries, deeper);
}

// -------------------------------------------------------------------- hashing

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xd6e8_feb8_6659_fd93;

/// Folded multiply, the mixing step of wyhash/foldhash.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let f = (a as u128) * (b as u128);
    (f as u64) ^ ((f >> 64) as u64)
}

/// Hash of a key longer than 16 bytes (shorter ones hash their inline words directly).
fn hash_long(key: &[u8], seed: u64) -> u64 {
    let le64 = |i: usize| u64::from_le_bytes(key[i..i + 8].try_into().unwrap());
    let len = key.len();
    let mut s = seed ^ (len as u64).wrapping_mul(K1);
    let mut i = 0;
    while i + 16 < len {
        s = fold_mul(le64(i) ^ s, le64(i + 8) ^ K2);
        i += 16;
    }
    fold_mul(le64(len - 16) ^ s, le64(len - 8) ^ K2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const STRATEGIES: [Algorithm; 3] =
        [Algorithm::Auto, Algorithm::SortFirst, Algorithm::HashFirst];

    /// Test shorthand: `p` put, `d` delete, `g` get.
    fn e(op: char, key: &[u8]) -> Entry<'_> {
        let op = match op {
            'p' => Op::Put(b"v"),
            'd' => Op::Delete,
            'g' => Op::Get,
            _ => unreachable!(),
        };
        Entry { key, op }
    }

    /// Plans with every algorithm, checks they agree, returns one of them.
    fn plan(entries: &[Entry<'_>], coalesce: bool) -> Plan {
        let mut out: Option<Plan> = None;
        for s in STRATEGIES {
            let mut c = Coalescer::new();
            let p = c.plan_with(entries, coalesce, s);
            let mut gets = p.gets.clone();
            gets.sort_unstable_by_key(|g| g.0);
            let got = Plan {
                survivors: p.survivors.clone(),
                gets,
                coalesced_writes: p.coalesced_writes,
                collapsed_reads: p.collapsed_reads,
                lookups: p.lookups,
            };
            if let Some(prev) = &out {
                assert_eq!(prev.survivors, got.survivors, "{s:?}");
                assert_eq!(prev.gets, got.gets, "{s:?}");
                assert_eq!(
                    (prev.coalesced_writes, prev.collapsed_reads, prev.lookups),
                    (got.coalesced_writes, got.collapsed_reads, got.lookups),
                    "{s:?}"
                );
            }
            out = Some(got);
        }
        out.unwrap()
    }

    fn answer_of(p: &Plan, idx: u32) -> GetAnswer {
        p.gets.iter().find(|g| g.0 == idx).expect("get answered").1
    }

    #[test]
    fn last_write_wins() {
        let w = [e('p', b"k"), e('p', b"k"), e('p', b"k")];
        let p = plan(&w, true);
        assert_eq!(p.survivors, vec![2]);
        assert_eq!(p.coalesced_writes, 2);
    }

    #[test]
    fn delete_supersedes_put_and_put_supersedes_delete() {
        let w = [e('p', b"a"), e('d', b"a"), e('d', b"b"), e('p', b"b")];
        let p = plan(&w, true);
        assert_eq!(p.survivors, vec![1, 3]);
        assert!(matches!(w[1].op, Op::Delete));
        assert_eq!(p.coalesced_writes, 2);
    }

    #[test]
    fn get_sees_earlier_write_not_later() {
        let w = [
            e('g', b"k"),
            e('p', b"k"),
            e('g', b"k"),
            e('d', b"k"),
            e('g', b"k"),
        ];
        let p = plan(&w, true);
        assert_eq!(answer_of(&p, 0), GetAnswer::Lookup(0));
        assert_eq!(answer_of(&p, 2), GetAnswer::Write(1));
        assert_eq!(answer_of(&p, 4), GetAnswer::Write(3));
        assert_eq!(p.survivors, vec![3]);
    }

    #[test]
    fn get_does_not_see_other_keys() {
        let w = [e('p', b"a"), e('g', b"b"), e('p', b"b"), e('g', b"a")];
        let p = plan(&w, true);
        assert_eq!(answer_of(&p, 1), GetAnswer::Lookup(1));
        assert_eq!(answer_of(&p, 3), GetAnswer::Write(0));
    }

    #[test]
    fn collapsed_gets_share_one_lookup() {
        let w = [e('g', b"k"), e('g', b"x"), e('g', b"k"), e('g', b"k")];
        let p = plan(&w, true);
        for i in [0, 2, 3] {
            assert_eq!(answer_of(&p, i), GetAnswer::Lookup(0));
        }
        assert_eq!(answer_of(&p, 1), GetAnswer::Lookup(1));
        assert_eq!(p.lookups, 2);
        assert_eq!(p.collapsed_reads, 2);
        assert!(p.survivors.is_empty());
    }

    #[test]
    fn gets_separated_by_write_do_not_share() {
        let w = [
            e('g', b"k"),
            e('p', b"k"),
            e('g', b"k"),
            e('g', b"k"),
            e('p', b"k"),
            e('g', b"k"),
        ];
        let p = plan(&w, true);
        assert_eq!(answer_of(&p, 0), GetAnswer::Lookup(0));
        assert_eq!(answer_of(&p, 2), GetAnswer::Write(1));
        assert_eq!(answer_of(&p, 3), GetAnswer::Write(1));
        assert_eq!(answer_of(&p, 5), GetAnswer::Write(4));
        // four gets, three distinct answers
        assert_eq!(p.collapsed_reads, 1);
        assert_eq!(p.lookups, 1);
    }

    #[test]
    fn counters() {
        let w = [
            e('p', b"a"),
            e('g', b"a"),
            e('g', b"a"),
            e('p', b"a"),
            e('d', b"a"),
            e('g', b"b"),
            e('g', b"b"),
            e('g', b"b"),
            e('p', b"c"),
        ];
        let p = plan(&w, true);
        assert_eq!(p.coalesced_writes, 2);
        assert_eq!(p.collapsed_reads, 3);
        assert_eq!(p.lookups, 1);
        assert_eq!(p.gets.len(), 5);
        assert_eq!(p.survivors, vec![4, 8]);
    }

    #[test]
    fn empty_key_is_a_key() {
        let w = [
            e('p', b""),
            e('p', b"\0"),
            e('g', b""),
            e('p', b""),
            e('g', b""),
        ];
        let p = plan(&w, true);
        assert_eq!(p.survivors, vec![3, 1]);
        assert_eq!(answer_of(&p, 2), GetAnswer::Write(0));
        assert_eq!(answer_of(&p, 4), GetAnswer::Write(3));
    }

    #[test]
    fn keys_sharing_8_byte_prefix() {
        let w = [
            e('p', b"prefix00-zz"),
            e('p', b"prefix00-aa"),
            e('p', b"prefix00-mm"),
            e('p', b"prefix00-aa"),
            e('g', b"prefix00-mm"),
            e('g', b"prefix00-zz-longer"),
        ];
        let p = plan(&w, true);
        assert_eq!(p.survivors, vec![3, 2, 0]);
        assert_eq!(answer_of(&p, 4), GetAnswer::Write(2));
        assert_eq!(answer_of(&p, 5), GetAnswer::Lookup(5));
    }

    #[test]
    fn shorter_key_that_is_prefix_of_longer_sorts_first() {
        let keys: [&[u8]; 7] = [
            b"ab\x01",
            b"ab\0\0",
            b"ab\0",
            b"ab",
            b"a",
            b"ab\0\0\0\0\0\0\0\0",
            b"ab\0\0\0\0\0\0\0",
        ];
        let w: Vec<_> = keys.iter().map(|k| e('p', k)).collect();
        let p = plan(&w, true);
        let got: Vec<&[u8]> = p.survivors.iter().map(|&i| keys[i as usize]).collect();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn coalesce_off_keeps_every_write_in_order() {
        let w = [
            e('p', b"b"),
            e('g', b"b"),
            e('p', b"a"),
            e('d', b"b"),
            e('g', b"c"),
            e('g', b"c"),
            e('p', b"b"),
        ];
        let p = plan(&w, false);
        assert_eq!(p.survivors, vec![0, 2, 3, 6]);
        assert_eq!(p.coalesced_writes, 0);
        assert_eq!(answer_of(&p, 1), GetAnswer::Write(0));
        // plain group commit: each get without an earlier write does its own lookup
        assert_eq!(answer_of(&p, 4), GetAnswer::Lookup(4));
        assert_eq!(answer_of(&p, 5), GetAnswer::Lookup(5));
        assert_eq!(p.lookups, 2);
        assert_eq!(p.collapsed_reads, 0);
    }

    #[test]
    fn scratch_reuse_does_not_leak_between_windows() {
        let mut c = Coalescer::new();
        let big: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let w: Vec<_> = big.iter().map(|k| e('p', k)).collect();
        assert_eq!(c.plan(&w, true).survivors.len(), 1000);
        let small = [e('g', b"x"), e('p', b"y")];
        for coalesce in [true, false] {
            let p = c.plan(&small, coalesce);
            assert_eq!(p.survivors, vec![1]);
            assert_eq!(p.gets, vec![(0, GetAnswer::Lookup(0))]);
            assert_eq!(p.coalesced_writes, 0);
        }
    }

    #[test]
    fn empty_window() {
        for coalesce in [true, false] {
            let p = plan(&[], coalesce);
            assert!(p.survivors.is_empty() && p.gets.is_empty());
        }
    }

    // ------------------------------------------------------------ model

    struct Model {
        survivors: Vec<u32>,
        gets: Vec<(u32, GetAnswer)>,
        coalesced_writes: u64,
        collapsed_reads: u64,
        lookups: u64,
    }

    /// The rules, spelled out with ordered maps and no cleverness.
    fn model(entries: &[Entry<'_>], coalesce: bool) -> Model {
        let mut last: BTreeMap<&[u8], u32> = BTreeMap::new();
        let mut first_get: BTreeMap<&[u8], u32> = BTreeMap::new();
        let mut gets = Vec::new();
        let mut writes = Vec::new();
        for (i, en) in entries.iter().enumerate() {
            let i = i as u32;
            if let Op::Get = en.op {
                let ans = match last.get(en.key) {
                    Some(&w) => GetAnswer::Write(w),
                    None if coalesce => GetAnswer::Lookup(*first_get.entry(en.key).or_insert(i)),
                    None => GetAnswer::Lookup(i),
                };
                gets.push((i, ans));
            } else {
                last.insert(en.key, i);
                writes.push(i);
            }
        }
        // (key, is_lookup, index) stands for (key, answer)
        let distinct: BTreeSet<(&[u8], bool, u32)> = gets
            .iter()
            .map(|&(i, a)| match a {
                GetAnswer::Write(w) => (entries[i as usize].key, false, w),
                GetAnswer::Lookup(l) => (entries[i as usize].key, true, l),
            })
            .collect();
        let lookups = distinct.iter().filter(|d| d.1).count() as u64;
        if coalesce {
            Model {
                survivors: last.values().copied().collect(),
                coalesced_writes: (writes.len() - last.len()) as u64,
                collapsed_reads: (gets.len() - distinct.len()) as u64,
                lookups,
                gets,
            }
        } else {
            Model {
                survivors: writes,
                coalesced_writes: 0,
                collapsed_reads: 0,
                lookups,
                gets,
            }
        }
    }

    fn check(keys: &[Vec<u8>], ops: &[(usize, u8)]) -> Result<(), TestCaseError> {
        let entries: Vec<Entry<'_>> = ops
            .iter()
            .map(|&(k, op)| Entry {
                key: &keys[k % keys.len()],
                op: match op {
                    0 => Op::Get,
                    1 => Op::Delete,
                    _ => Op::Put(b"value"),
                },
            })
            .collect();
        let mut c = Coalescer::new();
        for coalesce in [true, false] {
            let m = model(&entries, coalesce);
            for s in STRATEGIES {
                let p = c.plan_with(&entries, coalesce, s);
                prop_assert_eq!(&p.survivors, &m.survivors, "{:?} coalesce={}", s, coalesce);
                let mut gets = p.gets.clone();
                gets.sort_unstable_by_key(|g| g.0);
                prop_assert_eq!(&gets, &m.gets, "{:?} coalesce={}", s, coalesce);
                prop_assert_eq!(p.coalesced_writes, m.coalesced_writes);
                prop_assert_eq!(p.collapsed_reads, m.collapsed_reads);
                prop_assert_eq!(p.lookups, m.lookups);
            }
        }
        Ok(())
    }

    /// Small alphabet with 0 and 1 so that zero padding and prefix-of-other keys get exercised.
    fn small_keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(
            prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(b'a')], 0..4),
            1..10,
        )
    }

    /// Long keys sharing a window-wide prefix, then sub-prefixes, then short varying tails:
    /// ties on the first 8 bytes (and on the next 8) are the rule here.
    fn long_keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (
            prop::collection::vec(any::<u8>(), 0..20),
            prop::collection::vec(prop::collection::vec(0u8..3, 0..12), 1..4),
            prop::collection::vec((0usize..4, prop::collection::vec(0u8..3, 0..12)), 1..60),
        )
            .prop_map(|(base, mids, tails)| {
                tails
                    .into_iter()
                    .map(|(m, tail)| {
                        let mut k = base.clone();
                        k.extend_from_slice(&mids[m % mids.len()]);
                        k.extend_from_slice(&tail);
                        k
                    })
                    .collect()
            })
    }

    fn ops() -> impl Strategy<Value = Vec<(usize, u8)>> {
        prop::collection::vec((0usize..64, 0u8..4), 0..700)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_model_small_key_space(keys in small_keys(), ops in ops()) {
            check(&keys, &ops)?;
        }

        #[test]
        fn matches_model_long_shared_prefix_keys(keys in long_keys(), ops in ops()) {
            check(&keys, &ops)?;
        }

        #[test]
        fn matches_model_random_keys(
            keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..600),
            ops in prop::collection::vec((0usize..600, 0u8..4), 0..900),
        ) {
            check(&keys, &ops)?;
        }
    }
}
