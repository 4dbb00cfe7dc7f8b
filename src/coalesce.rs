//! Coalesce + sort: turns one window of requests (in the engine's total order) into the
//! records to write and the answers to the reads in it. A pure function over slices; the
//! [`Coalescer`] only keeps scratch buffers, which grow to the largest window seen and are
//! reused, so a steady state allocates nothing.
//!
//! # Rules
//!
//! Per key, with coalescing on: only the last write (put or delete) survives, and the writes
//! it supersedes are counted in [`Plan::coalesced_writes`]; every get is answered by the
//! latest earlier write of its key in the window ([`GetAnswer::Write`]) or, if there is none,
//! by the durable state ([`GetAnswer::Lookup`]); gets of one key with no write between them
//! share one answer (counted in [`Plan::collapsed_reads`], `gets - distinct answers`). The
//! survivors come out in ascending bytewise key order, so each batch frame is a sorted run.
//!
//! With coalescing off (plain group commit, the baseline the engine is measured against), every
//! write survives in submission order, nothing is sorted or shared: each get still sees the
//! latest earlier write of its key, and a get with none does its own lookup
//! (`Lookup(own index)`, `collapsed_reads == 0`).
//!
//! # Algorithm (sort-first)
//!
//! 1. One pass over the window builds a 24-byte item per entry: 16 key bytes, big-endian and
//!    zero padded, then (length class, entry index, write bit). The length class is the key
//!    length, or 17 for "longer than the inline bytes". Plain integer order of (bytes, class,
//!    index) is bytewise key order, then submission order, for every key that fits inline:
//!    where the padding makes "ab" and "ab\0" tie, the shorter key is a prefix of the longer
//!    and the smaller class puts it first. Two inline keys are equal exactly when their items'
//!    bytes and class are, so duplicates are found without touching key memory again.
//! 2. Bytes shared by every key of the window (say `user:000`) are skipped: the same pass
//!    tracks which bits vary, and if a common prefix exists and some key is longer than 16
//!    bytes, the items are reloaded from after it, so the inline bytes hold what differs.
//! 3. A stable LSD radix sort over the top varying 8, 16 or 24 bits (one digit below 512
//!    items, two up to 128K, three beyond; a digit that is the same everywhere is skipped),
//!    enough bits that items still tied afterwards are about one per group. One insertion pass
//!    then fixes those ties in near-linear time with a branch-free compare (under duplication
//!    "are these neighbours the same key" is a coin flip, and a branchy compare mispredicts on
//!    it). If the insertion pass exceeds a move budget (keys whose varying bits sit below a few
//!    outliers), each tied group is sorted on its own, recursing on its own varying bits.
//! 4. Long keys (class 17) that tie on their 16 inline bytes: if they are all one key (the
//!    usual case, a long key written many times) nothing is to be done; otherwise their next 16
//!    bytes are loaded and the run is sorted again, recursively.
//! 5. One walk over the sorted items, key by key in submission order, keeps the last write and
//!    answers gets. A window of only writes takes a branch-free variant: the survivor is the
//!    last item of each key.
//!
//! Why this shape: a comparison sort on full keys pays a pointer chase into the ring per
//! comparison (the naive baseline in `benches/coalesce_sort.rs` costs 130-260 ns/record at 64K
//! records with keys in ring-like memory). Eight LSD passes over an 8-byte prefix, or one
//! 4096-bucket MSD pass followed by insertion sorts of ~16-item buckets, both measured slower
//! than two 256-bucket passes (write streams that fit L1) plus the insertion fix-up.
//!
//! # Hash-first, measured and not chosen
//!
//! [`Algorithm::HashFirst`] hashes each entry to its key's slot in submission order (answering
//! gets on the way) and then sorts only the distinct survivors. It only wins on small windows
//! with heavy duplication (1K entries at 90 % duplicates: ~8 vs ~12 ns/record); at 64K entries it
//! ties with sort-first at 90 % duplicates and is slower everywhere else (37-43 vs 19-20 ns at
//! 0 %, 25-31 vs 19 at 50 %, 19-22 vs 15-18 at zipf 0.99). So `Auto` sorts first. The table's
//! random accesses (slot, then key state) are what sorting avoids; prefetching them and sizing
//! the table from the previous window's duplication both measured no better. The hash walk is
//! what plain group commit uses to answer gets, where it needs no sort (and measured faster
//! than sorting). Its seed is random per process, and a probe budget falls back to sorting if
//! keys collide anyway, so crafted keys cannot make the flusher quadratic.
//!
//! Measured (ns/record, 16-byte keys and 100-byte values laid out like the ring, 2-core shared
//! machine under other load, best of repeated runs): 64K entries: 19-20 at 0 % duplicates,
//! 19 at 50 %, 14 at 90 %, 15-18 at zipf 0.99 over 100k keys; 1K entries: 10-12; 1M: ~35.
//! `cargo bench --bench coalesce_sort` reproduces them next to the naive baseline.

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
    /// Merge the operand into the key's value (`crate::merge`): a write, which coalesces
    /// like one (the flusher logs the merged value under the key's surviving entry).
    Merge(&'a [u8]),
    /// Nothing: an operation taken out of the window (a request the merge operator refused).
    /// Neither a write nor a read; the plan ignores it.
    Nop,
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
/// others exist so benches and tests can compare them. All give the same plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// The measured fastest: sort-first when coalescing, hash-first for plain group commit.
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
    /// Lets tests take the fallback that only colliding keys reach otherwise.
    #[cfg(test)]
    exhaust_probe_budget: bool,
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
            hist: vec![0; HIST_LEN],
            slots: Vec::new(),
            keys: Vec::new(),
            // A per-process random seed keeps crafted keys from forcing long probe chains; the
            // probe budget in `hash_walk` covers what the seed cannot.
            seed: RandomState::new().hash_one(0x6d65_7267_656c_6f67_u64) | 1,
            #[cfg(test)]
            exhaust_probe_budget: false,
        }
    }

    /// Frees the tables a window larger than `max` entries grew (they are kept from window
    /// to window so that planning allocates nothing, but one unusually large window must not
    /// leave its tables behind for the engine's life). Call it between windows.
    pub fn release_large(&mut self, max: usize) {
        trim(&mut self.items, max);
        trim(&mut self.tmp, max);
        trim(&mut self.keys, max);
        trim(&mut self.plan.survivors, max);
        trim(&mut self.plan.gets, max);
        // The hash walk's table has twice or more the slots of the window's entries.
        trim(&mut self.slots, 4 * max);
    }

    /// Plans one window. `entries` is in the engine's total order; with `coalesce == false`
    /// every write survives in submission order and each get is answered on its own.
    pub fn plan(&mut self, entries: &[Entry<'_>], coalesce: bool) -> &Plan {
        self.plan_with(entries, coalesce, Algorithm::Auto)
    }

    /// The plan of the last window planned.
    pub fn last_plan(&self) -> &Plan {
        &self.plan
    }

    /// [`plan`](Self::plan) with an explicit algorithm (for benches and tests); every algorithm
    /// gives the same plan, up to the order of [`Plan::gets`].
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
                .filter(|(_, e)| !matches!(e.op, Op::Get | Op::Nop))
                .map(|(i, _)| i as u32),
        );
    }

    // ---------------------------------------------------------------- sort-first

    /// Sorts all entries by (key, index) and walks each key's group in index order.
    fn sort_walk(&mut self, entries: &[Entry<'_>], coalesce: bool) {
        let mut shape = Shape::EMPTY;
        let mut writes = 0;
        self.items.clear();
        let taken = entries.iter().enumerate();
        self.items.extend(
            taken
                .filter(|(_, e)| !matches!(e.op, Op::Nop))
                .map(|(i, e)| {
                    let write = !matches!(e.op, Op::Get);
                    writes += write as usize;
                    let mut x = Item::new(i as u32, write);
                    x.set_key(e.key, 0);
                    shape.add(&x);
                    x
                }),
        );
        let marked = sort_items(
            &mut self.items,
            &mut self.tmp,
            &mut self.hist,
            entries,
            shape,
        );
        let items = &self.items[..];
        let n = items.len();
        // START bits exist only where long keys needed resolving; otherwise equal inline bytes
        // and length class are equal keys, and neighbours are compared here instead.
        let starts = |i: usize| {
            if marked {
                items[i].meta & START != 0
            } else {
                i == 0 || !items[i].same_inline(items[i - 1])
            }
        };
        let plan = &mut self.plan;
        if coalesce && writes == n {
            // Writes only (the common window): the survivor is the last item of each key, and
            // branch-free appends keep unpredictable duplicate patterns from costing mispredicts.
            let out = &mut plan.survivors;
            out.resize(n, 0);
            let mut k = 0;
            for (i, x) in items.iter().enumerate() {
                out[k] = x.idx();
                k += (i + 1 == n || starts(i + 1)) as usize;
            }
            out.truncate(k);
            plan.coalesced_writes = (n - k) as u64;
            return;
        }
        let mut last_write = NONE;
        let mut lookup = NONE;
        let mut answered = false;
        for (i, x) in items.iter().enumerate() {
            let idx = x.idx();
            if starts(i) {
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
        // Load <= 1/2 whatever the duplication. (Sizing it from the last window's distinct
        // keys and growing on demand measured no faster.)
        let cap = (2 * n).next_power_of_two().max(16);
        let mask = cap - 1;
        self.slots.clear();
        self.slots.resize(cap, 0);
        self.keys.clear();
        // Linear probing at load <= 1/2 averages < 2 probes; 8 per entry on average means the
        // keys collide on purpose (or the hash is broken) and sorting is the safe way out.
        let mut budget = n * 8 + 64;
        #[cfg(test)]
        if self.exhaust_probe_budget {
            budget = 0;
        }
        let plan = &mut self.plan;
        let slots = &mut self.slots;
        let keys = &mut self.keys;
        let seed = self.seed;
        for (i, e) in entries.iter().enumerate() {
            if matches!(e.op, Op::Nop) {
                continue;
            }
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
        let mut shape = Shape::EMPTY;
        self.items.clear();
        self.items
            .extend(self.keys.iter().filter(|k| k.last_write != NONE).map(|k| {
                let x = Item {
                    p0: k.p0,
                    p1: k.p1,
                    meta: (k.len_class << LEN_SHIFT) | ((k.last_write as u64) << IDX_SHIFT) | WRITE,
                };
                shape.add(&x);
                x
            }));
        sort_items(
            &mut self.items,
            &mut self.tmp,
            &mut self.hist,
            entries,
            shape,
        );
        self.plan
            .survivors
            .extend(self.items.iter().map(|x| x.idx()));
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

/// What a pass over the items learns about their inline bytes: which bits vary, and the
/// shortest and longest length class.
#[derive(Clone, Copy)]
struct Shape {
    or0: u64,
    and0: u64,
    or1: u64,
    and1: u64,
    min_class: u64,
    max_class: u64,
}

impl Shape {
    const EMPTY: Shape = Shape {
        or0: 0,
        and0: !0,
        or1: 0,
        and1: !0,
        min_class: LONG,
        max_class: 0,
    };

    #[inline(always)]
    fn add(&mut self, x: &Item) {
        self.or0 |= x.p0;
        self.and0 &= x.p0;
        self.or1 |= x.p1;
        self.and1 &= x.p1;
        self.min_class = self.min_class.min(x.len_class());
        self.max_class = self.max_class.max(x.len_class());
    }

    fn of(items: &[Item]) -> Shape {
        let mut s = Shape::EMPTY;
        items.iter().for_each(|x| s.add(x));
        s
    }

    /// Bits that are not the same in every item.
    fn varying(&self) -> (u64, u64) {
        (self.or0 ^ self.and0, self.or1 ^ self.and1)
    }
}

/// Sorts items (inline bytes loaded from offset 0, `shape` of them given) by (full key,
/// index). Returns whether START marks the first item of each key; if not, every key fits
/// inline and equal keys are exactly equal (inline bytes, length class).
fn sort_items(
    items: &mut [Item],
    tmp: &mut Vec<Item>,
    hist: &mut [u32],
    entries: &[Entry<'_>],
    mut shape: Shape,
) -> bool {
    let n = items.len();
    if n == 0 {
        return false;
    }
    let key = |x: &Item| entries[x.idx() as usize].key;
    // Skip the bytes every key shares: they cannot order anything, and 16 inline bytes taken
    // after them settle far more (keys like "user:0000001234" would otherwise tie on "user:000").
    let mut off = 0;
    loop {
        let (v0, v1) = shape.varying();
        let same = if v0 != 0 {
            v0.leading_zeros() / 8
        } else {
            8 + v1.leading_zeros() / 8
        };
        // A shared byte is only real (not padding) up to the shortest key.
        let common = (same as usize).min(shape.min_class as usize);
        if common == 0 || shape.max_class < LONG {
            break;
        }
        off += common;
        items.iter_mut().for_each(|x| x.set_key(key(x), off));
        shape = Shape::of(items);
    }
    if tmp.len() < n {
        tmp.resize(n, Item::default());
    }
    radix_sort(items, &mut tmp[..n], hist, shape.varying());
    if shape.max_class == LONG {
        resolve(items, &mut tmp[..n], hist, entries, off);
        true
    } else {
        false
    }
}

/// At or below this many items, insertion sort beats a radix pass.
const SMALL: usize = 32;
/// Counters for up to three 8-bit digits.
const HIST_LEN: usize = 3 * 256;

/// `a > b` in (inline bytes, meta) order, computed without branches: whether neighbours
/// have equal inline bytes (duplicate keys) is a coin flip under duplication, and a branchy
/// tuple compare mispredicts on it.
#[inline(always)]
fn greater(a: &Item, b: &Item) -> bool {
    let ka = ((a.p0 as u128) << 64) | a.p1 as u128;
    let kb = ((b.p0 as u128) << 64) | b.p1 as u128;
    (ka > kb) | ((ka == kb) & (a.meta > b.meta))
}

#[inline]
fn insertion_sort(v: &mut [Item]) {
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && greater(&v[j - 1], &x) {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
    }
}

/// Sorts `v` by (inline bytes, meta) (`tmp`: scratch of the same length; `varying`: the inline bits
/// that differ between items). Stable LSD radix over the top varying 8-24 bits, as many as it
/// takes for items still tied after it to be rare (about one per group), then an insertion
/// pass that only has to fix those ties.
///
/// Why this shape: at 64K random 16-byte keys, two 256-bucket scatter passes (L1-sized write
/// streams) plus a near-linear insertion pass measured faster than one 4096-bucket MSD scatter
/// followed by insertion sorts of ~16-item buckets, and far faster than eight LSD byte passes
/// or a comparison sort. Starting at the top varying bit instead of byte 0 keeps shared key
/// bytes from wasting passes.
fn radix_sort(v: &mut [Item], tmp: &mut [Item], hist: &mut [u32], varying: (u64, u64)) {
    let n = v.len();
    if n <= SMALL {
        insertion_sort(v);
        return;
    }
    let (v0, v1) = varying;
    if v0 == 0 && v1 == 0 {
        // One inline value (often one key many times): only (length class, index) is left,
        // and earlier passes kept index order, so this is close to a linear check.
        v.sort_unstable();
        return;
    }
    match n.ilog2() {
        0..=8 => radix_top::<1>(v, tmp, hist, v0, v1),
        9..=16 => radix_top::<2>(v, tmp, hist, v0, v1),
        _ => radix_top::<3>(v, tmp, hist, v0, v1),
    }
}

/// Picks how to extract the top `8 * D` varying bits (from p0, from p1, or across both), so
/// the hot loops shift a u64 and not a u128 in the common cases.
fn radix_top<const D: usize>(v: &mut [Item], tmp: &mut [Item], hist: &mut [u32], v0: u64, v1: u64) {
    let bits = 8 * D as u32;
    if v0 != 0 && v0.leading_zeros() + bits <= 64 {
        let lz = v0.leading_zeros();
        lsd_top::<D>(v, tmp, hist, |x| ((x.p0 << lz) >> (64 - bits)) as u32);
    } else if v0 == 0 {
        let lz = v1.leading_zeros().min(64 - bits);
        lsd_top::<D>(v, tmp, hist, |x| ((x.p1 << lz) >> (64 - bits)) as u32);
    } else {
        let lz = v0.leading_zeros();
        lsd_top::<D>(v, tmp, hist, |x| {
            let w = (((x.p0 as u128) << 64) | x.p1 as u128) << lz;
            (w >> (128 - bits)) as u32
        });
    }
}

#[inline(always)]
fn lsd_top<const D: usize>(
    v: &mut [Item],
    tmp: &mut [Item],
    hist: &mut [u32],
    top: impl Fn(&Item) -> u32,
) {
    let n = v.len();
    let hist = &mut hist[..256 * D];
    hist.fill(0);
    for x in v.iter() {
        let t = top(x);
        for d in 0..D {
            hist[256 * d + ((t >> (8 * d)) & 0xff) as usize] += 1;
        }
    }
    let first = top(&v[0]);
    let mut in_tmp = false;
    for d in 0..D {
        let h = &mut hist[256 * d..256 * (d + 1)];
        if h[((first >> (8 * d)) & 0xff) as usize] as usize == n {
            continue; // this digit is the same in every item
        }
        let mut sum = 0;
        for c in h.iter_mut() {
            let x = *c;
            *c = sum;
            sum += x;
        }
        let (src, dst): (&[Item], &mut [Item]) = if in_tmp {
            (&*tmp, &mut *v)
        } else {
            (&*v, &mut *tmp)
        };
        for x in src.iter() {
            let b = ((top(x) >> (8 * d)) & 0xff) as usize;
            dst[h[b] as usize] = *x;
            h[b] += 1;
        }
        in_tmp = !in_tmp;
    }
    if in_tmp {
        v.copy_from_slice(tmp);
    }
    // Now only items with equal top bits can be out of order, and each moves only within its
    // group. One insertion pass fixes that in near-linear time unless groups are big (keys
    // whose varying bits sit below a few outliers); past a move budget, sort group by group.
    let mut budget = 2 * n + 64;
    for i in 1..n {
        let x = v[i];
        if !greater(&v[i - 1], &x) {
            continue;
        }
        let mut j = i;
        while j > 0 && greater(&v[j - 1], &x) {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
        budget = budget.saturating_sub(i - j);
        if budget == 0 {
            sort_groups(v, tmp, hist, top);
            return;
        }
    }
}

/// Sorts each group of equal top bits on its own, recursing into big ones (their varying bits
/// start lower, so the recursion goes at least 8 bits deeper each time).
#[cold]
fn sort_groups(v: &mut [Item], tmp: &mut [Item], hist: &mut [u32], top: impl Fn(&Item) -> u32) {
    let n = v.len();
    let mut i = 0;
    while i < n {
        let t = top(&v[i]);
        let mut j = i + 1;
        while j < n && top(&v[j]) == t {
            j += 1;
        }
        if j - i <= SMALL {
            insertion_sort(&mut v[i..j]);
        } else {
            let g = &mut v[i..j];
            let varying = Shape::of(g).varying();
            radix_sort(g, &mut tmp[i..j], hist, varying);
        }
        i = j;
    }
}

/// After the sort: marks where each key starts, and orders runs of long keys whose inline
/// bytes tie (by their next 16 bytes, recursively).
fn resolve(
    items: &mut [Item],
    tmp: &mut [Item],
    hist: &mut [u32],
    entries: &[Entry<'_>],
    off: usize,
) {
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
    let varying = Shape::of(run).varying();
    radix_sort(run, tmp, hist, varying);
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

/// Drops `v`'s allocation if it has room for more than `max` elements: how the pipeline's
/// buffers kept from window to window give back what one unusually large window grew
/// ([`Coalescer::release_large`], the flusher's jobs and scratch, the index's queue, the
/// merge stage's values).
pub(crate) fn trim<T>(v: &mut Vec<T>, max: usize) {
    if v.capacity() > max {
        *v = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const ALGORITHMS: [Algorithm; 3] =
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
        for s in ALGORITHMS {
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

    /// A coalescer whose tables a large window grew frees them (`release_large`), and plans
    /// the same windows the same way afterwards, with every algorithm.
    #[test]
    fn released_tables_are_freed_and_regrown() {
        let keys: Vec<[u8; 4]> = (0..3_000u32).map(|i| (i % 1_000).to_be_bytes()).collect();
        let large: Vec<Entry<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| e(['p', 'g', 'd'][i % 3], k))
            .collect();
        let small = [e('p', b"b"), e('g', b"a"), e('p', b"a")];
        for s in ALGORITHMS {
            let mut c = Coalescer::new();
            let before = (
                c.plan_with(&large, true, s).survivors.clone(),
                c.plan_with(&small, true, s).survivors.clone(),
            );
            c.release_large(100);
            let kept = [
                c.items.capacity(),
                c.tmp.capacity(),
                c.keys.capacity(),
                c.plan.survivors.capacity(),
                c.plan.gets.capacity(),
            ];
            assert!(kept.iter().all(|&n| n <= 100), "{s:?}: kept room {kept:?}");
            assert!(
                c.slots.capacity() <= 400,
                "{s:?}: kept {} slots",
                c.slots.capacity()
            );
            let after = (
                c.plan_with(&large, true, s).survivors.clone(),
                c.plan_with(&small, true, s).survivors.clone(),
            );
            assert_eq!(before, after, "{s:?}");
            // Room for the window it was given is kept.
            c.release_large(10_000);
            let room = c.items.capacity() + c.keys.capacity();
            assert!(room >= 1_000, "{s:?}: kept room for {room} items and keys");
        }
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

    /// Deterministic pseudo-random bytes (xorshift), so big-window tests need no RNG crate.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn window_big_enough_for_three_radix_digits() {
        let mut st = 0x9e37_79b9_7f4a_7c15;
        let keys: Vec<Vec<u8>> = (0..40_000)
            .map(|_| {
                let len = (xorshift(&mut st) % 20) as usize;
                (0..len).map(|_| xorshift(&mut st) as u8).collect()
            })
            .collect();
        let ops: Vec<(usize, u8)> = (0..(1 << 17) + 999)
            .map(|_| (xorshift(&mut st) as usize, (xorshift(&mut st) % 4) as u8))
            .collect();
        check(&keys, &ops).unwrap();
    }

    #[test]
    fn skewed_keys_where_top_bits_do_not_split() {
        // One outlier owns the top varying bit, so the radix digits put every other key in
        // one group and the insertion pass runs out of budget: the group-wise fallback and
        // its recursion must still sort.
        let mut st = 0x1234_5678_9abc_def1;
        let mut keys: Vec<Vec<u8>> = (0..3000)
            .map(|_| {
                let mut k = vec![0u8; 16];
                k[13..].copy_from_slice(&xorshift(&mut st).to_be_bytes()[..3]);
                k
            })
            .collect();
        keys.push(vec![0xff; 16]);
        keys.push(vec![0x80]);
        let ops: Vec<(usize, u8)> = (0..6000)
            .map(|i| {
                (
                    if i < keys.len() {
                        i
                    } else {
                        xorshift(&mut st) as usize
                    },
                    2,
                )
            })
            .collect();
        check(&keys, &ops).unwrap();
    }

    #[test]
    fn one_key_many_times_and_long_duplicates() {
        let long = vec![7u8; 300];
        let mut long2 = long.clone();
        long2[299] = 8;
        let keys = vec![b"k".to_vec(), long, long2, Vec::new()];
        let ops: Vec<(usize, u8)> = (0..5000).map(|i| (i % 7 % 4, (i % 5) as u8 % 4)).collect();
        check(&keys, &ops).unwrap();
    }

    #[test]
    fn hash_fallback_to_sorting_gives_the_same_plan() {
        let keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i % 7; (i % 11) as usize]).collect();
        let ops: Vec<(usize, u8)> = (0..400).map(|i| (i * 31 % 50, (i % 4) as u8)).collect();
        let entries: Vec<Entry<'_>> = ops
            .iter()
            .map(|&(k, op)| Entry {
                key: &keys[k],
                op: [Op::Get, Op::Delete, Op::Put(b"v"), Op::Put(b"w")][op as usize],
            })
            .collect();
        for coalesce in [true, false] {
            let m = model(&entries, coalesce);
            let mut c = Coalescer::new();
            c.exhaust_probe_budget = true;
            for a in ALGORITHMS {
                let p = c.plan_with(&entries, coalesce, a);
                assert_eq!(p.survivors, m.survivors);
                let mut gets = p.gets.clone();
                gets.sort_unstable_by_key(|g| g.0);
                assert_eq!(gets, m.gets);
                assert_eq!(
                    (p.coalesced_writes, p.collapsed_reads, p.lookups),
                    (m.coalesced_writes, m.collapsed_reads, m.lookups)
                );
            }
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
            if let Op::Nop = en.op {
                continue;
            }
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
                // A merge is a write to the plan; a nop is nothing.
                op: match op {
                    0 => Op::Get,
                    1 => Op::Delete,
                    4 => Op::Merge(b"operand"),
                    5 => Op::Nop,
                    _ => Op::Put(b"value"),
                },
            })
            .collect();
        let mut c = Coalescer::new();
        for coalesce in [true, false] {
            let m = model(&entries, coalesce);
            for s in ALGORITHMS {
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
        prop::collection::vec((0usize..64, 0u8..6), 0..700)
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
            ops in prop::collection::vec((0usize..600, 0u8..6), 0..900),
        ) {
            check(&keys, &ops)?;
        }
    }
}
