//! Key -> location of the latest durable value, for the read path.
//!
//! A batch's updates are queued ([`Index::defer`]) after its sync and before the watermark
//! moves, and applied later, off the path between one sync and the next: by the flusher
//! when it has nothing else to do, and by any lookup that finds updates queued (it applies
//! them first, so a writer that waited and looks its write up finds it). Rebuilt by
//! replaying the log at open. Deleted keys are removed, so the index holds exactly the live
//! keys.

use crate::log::format::{Frame, RecordOp};
use crate::log::segment::Segment;
use crate::log::Segments;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Where a live value's bytes are: segment index in the log, offset and length in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
}

/// A key as stored in the index: a view of the key bytes of a record in a segment's mapping,
/// not a copy. The index holds one per live key without allocating for it, which makes
/// rebuilding the index at open and updating it after each sync much cheaper.
#[derive(Clone, Copy)]
struct MappedKey {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a `MappedKey` is a shared view of immutable bytes (published log bytes are never
// written again), so sending or sharing it between threads is like sharing a `&[u8]`.
unsafe impl Send for MappedKey {}
// SAFETY: as above.
unsafe impl Sync for MappedKey {}

impl MappedKey {
    /// A view of `key`'s bytes (valid for as long as they stay mapped: see `bytes`).
    fn of(key: &[u8]) -> MappedKey {
        MappedKey {
            ptr: key.as_ptr(),
            len: key.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Index::apply`'s contract: the bytes lie in the published part of a segment
        // mapping that stays mapped, unchanged, for as long as the index exists.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Keys up to this long are copied into their index slot instead of pointed at.
pub(crate) const INLINE_KEY_MAX: usize = 22;

/// A key in the index. A short key is kept inline: confirming a match then reads the slot's
/// own cache line, not the key's previous record, which for all but the hottest keys is in
/// a cold part of the log (that miss was most of the cost of updating the index after each
/// sync). A longer key is a view into the log. Either way a slot is 48 bytes.
#[derive(Clone, Copy)]
enum Key {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_MAX],
    },
    Mapped(MappedKey),
}

impl Key {
    /// # Safety
    /// As [`Index::apply`], for a key longer than [`INLINE_KEY_MAX`].
    unsafe fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE_KEY_MAX {
            let mut bytes = [0u8; INLINE_KEY_MAX];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Mapped(MappedKey::of(key))
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Mapped(k) => k.bytes(),
        }
    }
}

/// One index entry. The key's hash is kept with it, so growing the table never reads key
/// bytes again: they are scattered over the whole log, and re-reading them on every rehash
/// cost more than a quarter of the time to open a log.
struct Slot {
    key: Key,
    hash: u64,
    loc: Loc,
}

// A slot stays within 48 bytes: the index holds one per live key.
const _: () = assert!(std::mem::size_of::<Slot>() <= 48);

/// The map: a hashbrown `HashTable` with explicit hashes (foldhash: fast on short keys, and
/// seeded per process, so crafted keys cannot be aimed at one bucket chain in advance).
#[derive(Default)]
struct Map {
    table: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
    /// The buffer the queued updates are swapped into to be applied (kept for its capacity).
    applying: Vec<(MappedKey, Option<Loc>)>,
    /// Bytes the live keys' newest records take in the log (record header, key, value): what
    /// compaction would keep (`crate::compact`'s policy compares it with the log's size).
    live_bytes: u64,
    /// How many live keys point into each segment: `forget_below` scans the table only if
    /// some do (after a compaction none do, and a scan of millions of slots holds the
    /// write lock for tens of milliseconds).
    per_segment: KeysPerSegment,
    /// Which records are live, by location, when compaction may run (see [`LiveRecords`]).
    live_records: Option<LiveRecords>,
}

/// A bit per possible record location of each segment, set while an index slot points there:
/// whether the record at a location is its key's newest is then one bit, read in the order
/// compaction scans a segment, instead of a probe of the table that misses the cache (the
/// compacting thread's largest cost: `Lookup::holds` was 6-7 % of all CPU samples at 4 x 256).
/// A value's offset names the bit: two records' values lie at least [`RECORD_GAP`] bytes
/// apart (a record header, then at least an empty key), so `off / RECORD_GAP` differs for
/// any two. One bit per 7 bytes of each segment that holds a live record: about 1/56 of the
/// log, kept only while compaction is configured.
#[derive(Default)]
struct LiveRecords {
    /// The segment index of `bits[0]`.
    first: u32,
    bits: std::collections::VecDeque<Vec<u64>>,
}

/// The least distance between two values' offsets: a record header and an empty key.
const RECORD_GAP: u64 = crate::log::format::RECORD_HEADER_LEN as u64;

impl LiveRecords {
    /// The word of its segment's bits that holds `loc`'s bit, and the bit.
    fn at(loc: Loc) -> (usize, u64) {
        let b = loc.off / RECORD_GAP;
        ((b / 64) as usize, 1u64 << (b % 64))
    }

    fn segment(&mut self, seg: u32) -> &mut Vec<u64> {
        if self.bits.is_empty() {
            self.first = seg;
        }
        // Only a test sets a location below a segment already tracked.
        while seg < self.first {
            self.bits.push_front(Vec::new());
            self.first -= 1;
        }
        let i = (seg - self.first) as usize;
        if i >= self.bits.len() {
            self.bits.resize_with(i + 1, Vec::new);
        }
        &mut self.bits[i]
    }

    fn set(&mut self, loc: Loc) {
        let (word, bit) = Self::at(loc);
        let words = self.segment(loc.seg);
        if word >= words.len() {
            words.resize(word + 1, 0);
        }
        words[word] |= bit;
    }

    fn clear(&mut self, loc: Loc) {
        let (word, bit) = Self::at(loc);
        if let Some(w) = (loc.seg.checked_sub(self.first))
            .and_then(|i| self.bits.get_mut(i as usize))
            .and_then(|words| words.get_mut(word))
        {
            *w &= !bit;
        }
    }

    fn prefetch(&self, loc: Loc) {
        let (word, _) = Self::at(loc);
        if let Some(w) = (loc.seg.checked_sub(self.first))
            .and_then(|i| self.bits.get(i as usize))
            .and_then(|words| words.get(word))
        {
            prefetch((w as *const u64).cast());
        }
    }

    fn is_set(&self, loc: Loc) -> bool {
        let (word, bit) = Self::at(loc);
        (loc.seg.checked_sub(self.first))
            .and_then(|i| self.bits.get(i as usize))
            .and_then(|words| words.get(word))
            .is_some_and(|w| w & bit != 0)
    }

    /// Forgets the segments below `first`.
    fn drop_below(&mut self, first: u32) {
        let n = (first.saturating_sub(self.first) as usize).min(self.bits.len());
        self.bits.drain(..n);
        self.first = self.first.max(first);
    }
}

/// Live keys per segment index, for the segments from `first` on.
#[derive(Default)]
struct KeysPerSegment {
    first: u32,
    counts: std::collections::VecDeque<u64>,
}

impl KeysPerSegment {
    fn count(&mut self, seg: u32) -> &mut u64 {
        if self.counts.is_empty() {
            self.first = seg;
        }
        // Only a test points below a segment already counted.
        while seg < self.first {
            self.counts.push_front(0);
            self.first -= 1;
        }
        let i = (seg - self.first) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        &mut self.counts[i]
    }

    fn add(&mut self, seg: u32) {
        *self.count(seg) += 1;
    }

    fn remove(&mut self, seg: u32) {
        let n = self.count(seg);
        debug_assert!(*n > 0, "segment {seg} had no live key to remove");
        *n -= 1;
    }

    /// Live keys in the segments below `first`.
    fn below(&self, first: u32) -> u64 {
        let n = first.saturating_sub(self.first) as usize;
        self.counts.iter().take(n).sum()
    }

    /// Stops counting the segments below `first` (they hold no live key now).
    fn drop_below(&mut self, first: u32) {
        let n = (first.saturating_sub(self.first) as usize).min(self.counts.len());
        self.counts.drain(..n);
        self.first = self.first.max(first);
    }
}

/// Bytes a live record takes in the log: its header, key and value (not its frame's share).
fn live_len(key: &[u8], loc: Loc) -> u64 {
    crate::log::format::record_len(key.len(), loc.len as usize) as u64
}

impl Map {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Prefetches the slots a lookup of hash `h` would compare, without reading them: the
    /// probe reads only the control bytes (a small array that stays in cache) and offers
    /// each slot whose tag matches to the closure, which declines it.
    fn prefetch_slot(&self, h: u64) {
        self.table.find(h, |s| {
            let p = (s as *const Slot).cast::<u8>();
            prefetch(p);
            // A slot may straddle two cache lines.
            prefetch(p.wrapping_add(std::mem::size_of::<Slot>() - 1));
            false
        });
    }

    /// Prefetches the live bit of `key`'s current location, when live bits are kept (the
    /// update clears it). Reads the slot, so call it once the slot has been prefetched.
    fn prefetch_live_bit(&self, h: u64, key: &[u8]) {
        if let Some(live) = &self.live_records {
            if let Some(s) = self.table.find(h, same_key(h, key)) {
                live.prefetch(s.loc);
            }
        }
    }
}

/// Matches the slot of `key` (hash first, so a probe rarely touches key bytes).
fn same_key(hash: u64, key: &[u8]) -> impl Fn(&Slot) -> bool + '_ {
    move |s| s.hash == hash && s.key.bytes() == key
}

#[derive(Default)]
pub(crate) struct Index {
    map: RwLock<Map>,
    /// Updates of durable batches, in log order, not yet applied to `map`.
    queued: Mutex<Vec<(MappedKey, Option<Loc>)>>,
    /// Whether `queued` may hold updates: set after queueing (before the watermark moves),
    /// cleared by the applier under `map`'s write lock, so a lookup that finds it clear finds
    /// every queued update applied once it holds the read lock.
    has_queued: AtomicBool,
    /// How many times [`Index::forget_below`] has run: the one change to the map that no
    /// batch makes (compaction's check of a chunk trusts its scan only if this has not moved).
    forgets: AtomicU64,
}

/// Queued updates beyond which [`Index::defer`] asks its caller to apply them at once, so the
/// queue stays small even if nothing else gets round to it. (Smaller under Miri, so that
/// the test of the limit does not queue 16 384 updates there.)
pub(crate) const QUEUED_MAX: usize = if cfg!(miri) { 1 << 6 } else { 1 << 14 };

/// The most queued updates whose room each of the queue's two buffers keeps after it is
/// applied (768 KiB): more than the completion lets queue up in steady state, and a burst
/// larger than this allocates its own.
const QUEUED_KEPT_MAX: usize = 2 * QUEUED_MAX;

/// The map as of one moment (every update queued before it applied), for many lookups in a
/// row under one read lock: one lock and one check of the queue instead of one per key.
/// Hold it briefly: the appliers of durable batches wait for it.
pub(crate) struct Lookup<'a>(parking_lot::RwLockReadGuard<'a, Map>);

impl Lookup<'_> {
    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        let h = self.0.hash(key);
        self.0.table.find(h, same_key(h, key)).map(|s| s.loc)
    }

    /// [`Lookup::get`] of each key, in order, appended to `out`. Each key is hashed and
    /// its slots prefetched [`AHEAD`] keys before it is probed, so that the cache misses of
    /// many lookups overlap instead of following one another (as [`apply_updates`] does for
    /// updates).
    pub fn get_each(&self, keys: &[(usize, &[u8])], out: &mut Vec<Option<Loc>>) {
        let map = &*self.0;
        let mut hashes = [0u64; AHEAD];
        for (j, &(_, key)) in keys.iter().take(AHEAD).enumerate() {
            hashes[j] = map.hash(key);
            map.prefetch_slot(hashes[j]);
        }
        for (i, &(_, key)) in keys.iter().enumerate() {
            let h = hashes[i % AHEAD];
            if let Some(&(_, ahead)) = keys.get(i + AHEAD) {
                let next = map.hash(ahead);
                map.prefetch_slot(next);
                hashes[i % AHEAD] = next;
            }
            out.push(map.table.find(h, same_key(h, key)).map(|s| s.loc));
        }
    }

    /// Whether `key`'s newest record is the one at `loc` (`get(key) == Some(loc)`), for a
    /// record read from the log at `loc`. It matches slots by hash and location, not by key
    /// bytes: only the slot of the record at `loc` points there, and that record's key is
    /// `key`. So a probe never reads the key bytes a slot points at, in the mapping of
    /// whichever segment holds them (a cache miss per lookup when compaction checks every
    /// record of a segment: the compacting thread's largest cost at 4 x 256).
    ///
    /// With [`Index::track_live_records`] on, one bit answers, without a probe.
    pub fn holds(&self, key: &[u8], loc: Loc) -> bool {
        if let Some(live) = &self.0.live_records {
            return live.is_set(loc);
        }
        let h = self.0.hash(key);
        self.0
            .table
            .find(h, |s| s.hash == h && s.loc == loc)
            .is_some()
    }
}

impl Index {
    /// Keeps a bit per live record's location from now on ([`LiveRecords`]), so that
    /// [`Lookup::holds`] is one bit: for an engine that may compact. Call it on an empty
    /// index, before the first update.
    pub fn track_live_records(&self) {
        let mut map = self.map.write();
        debug_assert!(map.table.is_empty(), "tracking starts on an empty index");
        map.live_records = Some(LiveRecords::default());
    }

    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        self.lookup().get(key)
    }

    /// A [`Lookup`] of the map as of now.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup(self.read())
    }

    pub fn len(&self) -> usize {
        self.read().table.len()
    }

    /// Bytes the live keys' newest records take in the log (see `Map::live_bytes`).
    pub fn live_bytes(&self) -> u64 {
        self.read().live_bytes
    }

    /// The map for lookups, with every queued update applied first.
    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Map> {
        self.apply_now();
        self.map.read()
    }

    /// Queues one durable batch's updates (`Some(loc)` sets, `None` deletes), to be applied
    /// before any later lookup. Call it before the watermark moves past the batch: a waiter
    /// that sees its write complete then also sees it queued. Returns true when the queue
    /// has grown past [`QUEUED_MAX`] (the caller should then [`Index::apply_now`]).
    ///
    /// # Safety
    /// As [`apply_updates`]: the keys must stay mapped, unchanged, for the index's life.
    pub unsafe fn defer<'a>(&self, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) -> bool {
        let mut q = self.queued.lock();
        q.extend(updates.map(|(key, loc)| (MappedKey::of(key), loc)));
        self.has_queued.store(true, Ordering::Release);
        q.len() > QUEUED_MAX
    }

    /// Applies the queued updates if the index is not locked; for a thread with nothing
    /// better to do, which should not wait for readers.
    pub fn try_apply_queued(&self) {
        if self.has_queued.load(Ordering::Acquire) {
            if let Some(mut map) = self.map.try_write() {
                self.apply_queued(&mut map);
            }
        }
    }

    /// Applies the queued updates, waiting for the write lock.
    pub fn apply_now(&self) {
        if self.has_queued.load(Ordering::Acquire) {
            self.apply_queued(&mut self.map.write());
        }
    }

    fn apply_queued(&self, map: &mut Map) {
        let mut updates = std::mem::take(&mut map.applying);
        {
            let mut q = self.queued.lock();
            std::mem::swap(&mut *q, &mut updates);
            // Under the write lock: whoever loads `false` then waits for it to be released.
            self.has_queued.store(false, Ordering::Release);
        }
        // SAFETY: `defer`'s contract, which every queued key was given under.
        unsafe { apply_updates(map, updates.iter().map(|(k, loc)| (k.bytes(), *loc))) };
        updates.clear();
        // The two buffers take turns; one grown by a burst (a sync covering many large
        // windows) is not kept once the engine idles (`QUEUED_KEPT_MAX`).
        crate::coalesce::trim(&mut updates, QUEUED_KEPT_MAX);
        map.applying = updates;
    }

    /// Applies one batch of updates at once, after any queued ones: `Some(loc)` sets,
    /// `None` deletes.
    ///
    /// # Safety
    /// As [`apply_updates`].
    pub unsafe fn apply<'a>(&self, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) {
        let mut map = self.map.write();
        self.apply_queued(&mut map);
        // SAFETY: this function's contract.
        unsafe { apply_updates(&mut map, updates) }
    }

    /// Forgets every key whose newest record lies in a segment numbered below `first` (the
    /// segments `Engine::retire_before` removed), after applying the queued updates: the
    /// index is then what replaying the remaining segments would build. Returns how many
    /// keys it forgot. The removed segments must stay mapped until this returns (a forgotten
    /// slot's key may point into them).
    pub fn forget_below(&self, first: u32) -> usize {
        let mut map = self.map.write();
        self.apply_queued(&mut map);
        let before = map.table.len();
        if map.per_segment.below(first) > 0 {
            let mut freed = 0;
            map.table.retain(|s| {
                let keep = s.loc.seg >= first;
                if !keep {
                    freed += live_len(s.key.bytes(), s.loc);
                }
                keep
            });
            map.live_bytes -= freed;
        } else {
            debug_assert!(
                map.table.iter().all(|s| s.loc.seg >= first),
                "a key below segment {first} was not counted"
            );
        }
        map.per_segment.drop_below(first);
        if let Some(live) = &mut map.live_records {
            live.drop_below(first);
        }
        // Under the write lock: a lookup that read the old count before it took the read
        // lock may see the forgetting or not, and the count has moved either way.
        self.forgets.fetch_add(1, Ordering::AcqRel);
        before - map.table.len()
    }

    /// How many times [`Index::forget_below`] has run. Read before a lookup, it tells
    /// whether the lookup may have missed a forgetting that happened since (read again
    /// later: it moved).
    pub fn forgets(&self) -> u64 {
        self.forgets.load(Ordering::Acquire)
    }

    /// Visits every live key with its location (unordered).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], Loc)) {
        for s in self.read().table.iter() {
            f(s.key.bytes(), s.loc);
        }
    }
}

/// Applies updates in order: `Some(loc)` sets, `None` deletes.
///
/// # Safety
/// Every key slice must lie in the published bytes of a segment mapping that stays mapped
/// for as long as the index points at it: the segment its `loc` names (or a mapping of the
/// same file that recovery replaced, which the engine keeps). The engine keeps every
/// segment it mapped until [`Index::forget_below`] has removed the keys that point into it,
/// and declares the index before them so it drops first.
unsafe fn apply_updates<'a>(map: &mut Map, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) {
    if map.live_records.is_none() {
        // Without live bits the plain loop is as fast in the engine (ABBA pairs level) and
        // faster alone (`benches/index.rs`: the pipeline's extra probe per update costs more
        // than the overlap it buys while the table is in cache).
        // SAFETY: this function's contract.
        unsafe { apply_each(map, updates) };
        return;
    }
    // A software pipeline over the updates, so that their cache misses overlap instead of
    // following one another (a batch's keys hash all over a table larger than the cache:
    // the slot's line was 58 % of this loop's time, the old location's live bit 20 %). An
    // update is hashed and its slot prefetched `AHEAD` updates before it is applied, and
    // its old location's live bit `AHEAD / 2` before. Prefetches are hints: an earlier
    // update of the same key, or a table that grows meanwhile, only makes one useless.
    // Measured in the engine (compacting, 4 x 256, ABBA): +10 %, 6 of 6 pairs. Alone
    // (`benches/index.rs`) it is level or slower even with the cache scrubbed between
    // windows: what it overlaps in the engine (misses to a table other threads keep
    // evicting, the write lock the compacting thread waits on) the benchmark lacks.
    let mut ring: [(&[u8], Option<Loc>, u64); AHEAD] = [(&[], None, 0); AHEAD];
    let mut updates = updates.fuse();
    // `pushed` updates have been hashed, `applied` of them applied; the ring holds the rest.
    let (mut pushed, mut applied) = (0usize, 0usize);
    loop {
        while pushed - applied < AHEAD {
            let Some((key, loc)) = updates.next() else {
                break;
            };
            let h = map.hash(key);
            map.prefetch_slot(h);
            ring[pushed % AHEAD] = (key, loc, h);
            pushed += 1;
            if let Some(mid) = pushed.checked_sub(AHEAD / 2 + 1).filter(|&m| m >= applied) {
                let (key, _, h) = ring[mid % AHEAD];
                map.prefetch_live_bit(h, key);
            }
        }
        if applied == pushed {
            return;
        }
        let (key, loc, h) = ring[applied % AHEAD];
        applied += 1;
        // SAFETY: this function's contract.
        unsafe { apply_one(map, key, loc, h) };
    }
}

/// Applies updates in order, each as it comes (no prefetching).
///
/// # Safety
/// As [`apply_updates`].
unsafe fn apply_each<'a>(map: &mut Map, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) {
    for (key, loc) in updates {
        let h = map.hash(key);
        // SAFETY: this function's contract.
        unsafe { apply_one(map, key, loc, h) };
    }
}

/// How far ahead [`apply_updates`] prefetches: enough misses in flight to cover a miss's
/// latency with the work of the updates between (a few tens of nanoseconds each).
const AHEAD: usize = 16;

/// Applies one update whose key hashes to `h`.
///
/// # Safety
/// As [`apply_updates`].
unsafe fn apply_one(map: &mut Map, key: &[u8], loc: Option<Loc>, h: u64) {
    match loc {
        Some(loc) => match map.table.find_mut(h, same_key(h, key)) {
            Some(slot) => {
                if let Key::Mapped(k) = &mut slot.key {
                    // Point at the newest copy: the next update of a hot key then
                    // compares against bytes still in cache.
                    k.ptr = key.as_ptr();
                }
                let old = slot.loc;
                slot.loc = loc;
                map.live_bytes = map.live_bytes - live_len(key, old) + live_len(key, loc);
                if old.seg != loc.seg {
                    map.per_segment.remove(old.seg);
                    map.per_segment.add(loc.seg);
                }
                if let Some(live) = &mut map.live_records {
                    live.clear(old);
                    live.set(loc);
                }
            }
            None => {
                map.live_bytes += live_len(key, loc);
                map.per_segment.add(loc.seg);
                if let Some(live) = &mut map.live_records {
                    live.set(loc);
                }
                let slot = Slot {
                    // SAFETY: this function's contract.
                    key: unsafe { Key::new(key) },
                    hash: h,
                    loc,
                };
                map.table.insert_unique(h, slot, |s| s.hash);
            }
        },
        None => {
            if let Ok(entry) = map.table.find_entry(h, same_key(h, key)) {
                let (slot, _) = entry.remove();
                map.live_bytes -= live_len(key, slot.loc);
                map.per_segment.remove(slot.loc.seg);
                if let Some(live) = &mut map.live_records {
                    live.clear(slot.loc);
                }
            }
        }
    }
}

/// An index over a fixed set of keys, for the index benchmark (`benches/index.rs`): updates
/// name keys by number and give values by offset, and the keys are leaked, so they outlive
/// the index as [`Index::apply`] requires. Not a stable API.
#[doc(hidden)]
pub struct BenchIndex {
    index: Index,
    keys: &'static [Box<[u8]>],
}

impl BenchIndex {
    /// An empty index over `keys` (leaked), with live-record bits (`Compaction::Auto`'s)
    /// if `live_bits`.
    pub fn new(keys: Vec<Vec<u8>>, live_bits: bool) -> BenchIndex {
        let keys: Vec<Box<[u8]>> = keys.into_iter().map(Vec::into_boxed_slice).collect();
        let index = Index::default();
        if live_bits {
            index.track_live_records();
        }
        BenchIndex {
            index,
            keys: Box::leak(keys.into_boxed_slice()),
        }
    }

    fn update(&self, &(key, off): &(u32, u64)) -> (&'static [u8], Option<Loc>) {
        let loc = Loc {
            seg: (off >> 20) as u32,
            off: off & ((1 << 20) - 1),
            len: 100,
        };
        (&self.keys[key as usize][..], Some(loc))
    }

    /// Sets each `(key, offset)` as one batch, as the flusher applies a window's updates.
    /// Offsets should grow by at least a record's length between updates, as a log's do.
    pub fn apply_batch(&self, updates: &[(u32, u64)]) {
        // SAFETY: the keys are leaked, so they outlive the index.
        unsafe { self.index.apply(updates.iter().map(|u| self.update(u))) }
    }

    /// The same updates under one lock, each applied as it comes ([`apply_each`], what
    /// `apply_batch` does without live bits): the baseline `apply_batch` is measured against.
    pub fn apply_unpipelined(&self, updates: &[(u32, u64)]) {
        let mut map = self.index.map.write();
        self.index.apply_queued(&mut map);
        // SAFETY: as in `apply_batch`.
        unsafe { apply_each(&mut map, updates.iter().map(|u| self.update(u))) };
    }
}

/// A durable value (with `Durability::NoSync`, a written one), borrowed zero-copy from the
/// segment's memory map. Holding it keeps the segment mapped; it never changes (log bytes
/// are written once).
#[derive(Clone)]
pub struct ValueRef {
    seg: Arc<Segment>,
    off: u64,
    len: usize,
}

impl ValueRef {
    /// The durable value of `key`: its location in `index`, resolved in `segments`. A
    /// retirement may remove the segment between the two: a compaction's, once the key's
    /// copy is in the index (a lookup then finds the copy), or `retire_before`'s, which
    /// forgets the key right after (a lookup then finds nothing). Either way the key is
    /// looked up again, never reported absent for a location the log no longer lists.
    /// (`retire_prefix` forgets the retired segments' keys in the same call that unlists
    /// them, so the loop ends.)
    pub(crate) fn lookup(index: &Index, segments: &Segments, key: &[u8]) -> Option<ValueRef> {
        loop {
            let loc = index.get(key)?;
            if let Some(v) = ValueRef::resolve(segments, loc) {
                return Some(v);
            }
            if loc.seg >= segments.read().base() {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// The durable values of many keys at once, as [`ValueRef::lookup`] gives each:
    /// `found(i, value)` for each `(i, key)` of `keys` (`None`: absent), in any order. The
    /// locations are read under one read lock of the index, then every value's first cache
    /// line is prefetched and the values read under one read lock of the segment list
    /// (never both locks at once, as in `lookup`), so the misses overlap instead of
    /// following one another, and no lock is taken per key. A key whose segment a
    /// retirement unlisted between the two is looked up again with `lookup`. The flusher's
    /// merges read a window's durable values this way. `locs` keeps its capacity.
    pub(crate) fn read_many(
        index: &Index,
        segments: &Segments,
        keys: &[(usize, &[u8])],
        locs: &mut Vec<Option<Loc>>,
        mut found: impl FnMut(usize, Option<&[u8]>),
    ) {
        locs.clear();
        let lookup = index.lookup();
        lookup.get_each(keys, locs);
        drop(lookup);
        let mut again = Vec::new();
        let segs = segments.read();
        for loc in locs.iter().flatten() {
            if let Some(seg) = segs.get(loc.seg) {
                // The start of the value (an empty view still points there).
                prefetch(seg.bytes(loc.off, 0).as_ptr());
            }
        }
        for (&(i, key), loc) in keys.iter().zip(locs.iter()) {
            let Some(loc) = loc else {
                found(i, None);
                continue;
            };
            match segs.get(loc.seg).and_then(|s| published_value(s, *loc)) {
                Some(v) => found(i, Some(v)),
                None => again.push((i, key)),
            }
        }
        drop(segs);
        for (i, key) in again {
            found(i, ValueRef::lookup(index, segments, key).as_deref());
        }
    }

    pub(crate) fn resolve(segments: &Segments, loc: Loc) -> Option<ValueRef> {
        let seg = segments.read().get(loc.seg)?.clone();
        published_value(&seg, loc)?;
        Some(ValueRef {
            seg,
            off: loc.off,
            len: loc.len as usize,
        })
    }
}

/// The value at `loc` in `seg`, if all of it is published. The flusher publishes before it
/// updates the index, so it always is for a location the index gave; checked rather than
/// trusted.
fn published_value(seg: &Segment, loc: Loc) -> Option<&[u8]> {
    let v = seg.bytes(loc.off, loc.len as usize);
    (v.len() == loc.len as usize).then_some(v)
}

/// Asks the CPU to bring the cache line at `p` closer; a hint, which never faults, whatever
/// `p` is. A no-op where there is no such instruction to ask with.
#[inline]
fn prefetch(p: *const u8) {
    // SAFETY: the call's one requirement is its target feature, SSE, which every x86_64
    // processor has (it is in the target's baseline). A prefetch reads and writes no memory
    // as far as the program can tell and never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl std::ops::Deref for ValueRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.seg.bytes(self.off, self.len)
    }
}

impl AsRef<[u8]> for ValueRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for ValueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueRef")
            .field("segment", &self.seg.path)
            .field("offset", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

/// The index updates of a frame of segment `seg_idx`: each record's key, and for a put where
/// its value lies in the segment (`None` for a delete).
pub(crate) fn frame_updates<'a>(
    seg_idx: u32,
    seg: &Segment,
    frame: &Frame<'a>,
) -> impl Iterator<Item = (&'a [u8], Option<Loc>)> {
    let base = seg.image().as_ptr() as usize;
    frame.records().map(move |r| {
        let loc = match r.op {
            RecordOp::Put => Some(Loc {
                seg: seg_idx,
                off: (r.value.as_ptr() as usize - base) as u64,
                len: r.value.len() as u32,
            }),
            RecordOp::Delete => None,
        };
        (r.key, loc)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key bytes that outlive every index of these tests, as `Index::apply` requires: leaked,
    /// and listed in a static, so that Miri's leak check finds them still reachable.
    fn kept(bytes: Vec<u8>) -> &'static [u8] {
        static KEPT: std::sync::Mutex<Vec<&'static [u8]>> = std::sync::Mutex::new(Vec::new());
        let key: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        KEPT.lock().unwrap().push(key);
        key
    }

    /// A segment numbered `first` in `dir` holding `value` (published as the flusher does),
    /// and the value's location in it as segment `idx`.
    fn segment_holding(
        dir: &std::path::Path,
        first: u64,
        idx: u32,
        value: &[u8],
    ) -> (Arc<Segment>, Loc) {
        use crate::log::format::{frame_len, record_len, FrameWriter, RecordOp, FLAG_SORTED};
        let io = crate::log::io::real();
        let seg = Arc::new(crate::log::Log::create_first(dir, 1 << 16, first, None, &io).unwrap());
        let off = seg.published();
        let len = frame_len(record_len(1, value.len()));
        let mut w = FrameWriter::new(seg.unpublished_mut(off, len), first, FLAG_SORTED);
        w.push(RecordOp::Put, b"k", value);
        w.finish(1);
        seg.publish(off + len as u64);
        let at = off
            + (crate::log::format::FRAME_HEADER_LEN + crate::log::format::RECORD_HEADER_LEN + 1)
                as u64;
        assert_eq!(
            seg.bytes(at, value.len()),
            value,
            "the value's place in the frame"
        );
        let loc = Loc {
            seg: idx,
            off: at,
            len: value.len() as u32,
        };
        (seg, loc)
    }

    /// A reader whose lookup found a location in a segment retired before it could read the
    /// value looks the key up again: it finds the key's copy once a compaction's index
    /// points there, and nothing once a `retire_before` forgot the key, but never reports a
    /// live key absent (it did: `read` gave `None`, a get answered absent, and a merge was
    /// applied to no value).
    #[test]
    // Segment files, mapped: Miri maps no file.
    #[cfg_attr(miri, ignore)]
    fn a_value_whose_segment_was_retired_after_the_lookup_is_looked_up_again() {
        let key: &'static [u8] = b"k";
        // Each reader: `lookup`, and `read_many` (which reads the location before the value
        // too, for many keys at once), with a key that was never set beside it.
        for (compacted, many) in [(true, false), (false, false), (true, true), (false, true)] {
            let (d0, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (old, at_old) = segment_holding(d0.path(), 1, 0, b"old");
            let (new, at_new) = segment_holding(d1.path(), 2, 1, b"new");
            let segments: Segments = Arc::new(parking_lot::RwLock::new(
                crate::log::SegmentList::new(vec![old, new]),
            ));
            let index = Arc::new(Index::default());
            // SAFETY: the key is 'static.
            unsafe { index.apply([(key, Some(at_old))].into_iter()) };
            // Looked up here, the segment is unlisted before its value is read.
            assert_eq!(segments.write().retire_front(1).len(), 1);
            // The retirement ends on another thread: the copy's location arrives in the
            // index, or the key is forgotten.
            let ending = {
                let index = index.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    if compacted {
                        // SAFETY: the key is 'static.
                        unsafe { index.apply([(key, Some(at_new))].into_iter()) };
                    } else {
                        index.forget_below(1);
                    }
                })
            };
            let got = if many {
                let mut got = vec![Some(b"unset".to_vec()); 2];
                let keys = [(1, &b"never-set"[..]), (0, key)];
                ValueRef::read_many(&index, &segments, &keys, &mut Vec::new(), |i, v| {
                    got[i] = v.map(<[u8]>::to_vec)
                });
                assert_eq!(got[1], None, "an absent key is absent");
                got[0].take()
            } else {
                ValueRef::lookup(&index, &segments, key).map(|v| v.to_vec())
            };
            ending.join().unwrap();
            if compacted {
                assert_eq!(got.as_deref(), Some(&b"new"[..]), "the copy is found");
            } else {
                assert_eq!(got, None, "a forgotten key is absent");
            }
        }
    }

    fn loc(n: u64) -> Loc {
        Loc {
            seg: n as u32,
            off: n * 100,
            len: n as u32 + 1,
        }
    }

    /// Sets key `i` of `keys` at `loc(i)`.
    fn set_each_at_its_place(index: &Index, keys: &[&'static [u8]]) {
        // SAFETY: every key is 'static.
        unsafe {
            index.apply(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| (*k, Some(loc(i as u64)))),
            )
        };
    }

    /// `live_bytes` is what summing every live key's record length gives, through sets,
    /// overwrites, deletes (of present and absent keys) and `forget_below`.
    #[test]
    fn live_bytes_follows_every_update() {
        let keys: Vec<&'static [u8]> = (0..40)
            .map(|i| kept(format!("key-{i}-{}", "x".repeat(i % 30)).into_bytes()))
            .collect();
        let index = Index::default();
        let expect = |index: &Index| {
            let mut sum = 0;
            index.for_each(|k, l| sum += live_len(k, l));
            sum
        };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        // Fewer rounds under Miri (`tools/miri.sh`), and fewer of the per-segment counts
        // checked in each: every check is a walk of the table, seconds each there.
        for round in 0..if cfg!(miri) { 12u64 } else { 200 } {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = keys[(rng % keys.len() as u64) as usize];
            let update = match rng % 3 {
                0 => None,
                _ => Some(loc(round % 7 + (rng >> 32) % 5)),
            };
            // SAFETY: every key is leaked, so 'static.
            unsafe { index.apply([(k, update)].into_iter()) };
            assert_eq!(index.live_bytes(), expect(&index), "round {round}");
            // The per-segment counts that let `forget_below` skip its scan.
            for first in (0..13).step_by(if cfg!(miri) { 4 } else { 1 }) {
                let mut want = 0;
                index.for_each(|_, l| want += u64::from(l.seg < first));
                let got = index.map.read().per_segment.below(first);
                assert_eq!(got, want, "round {round}, keys below segment {first}");
            }
        }
        let mut want = 0;
        index.for_each(|_, l| want += usize::from(l.seg < 4));
        assert_eq!(index.forget_below(4), want, "the keys below segment 4");
        assert_eq!(index.live_bytes(), expect(&index), "after forget_below");
        assert_eq!(index.map.read().per_segment.below(4), 0);
        // Nothing is below 4 any more: a second call forgets nothing (and scans nothing).
        assert_eq!(index.forget_below(4), 0);
        // One key moved past the rest: forgetting below it leaves only that key.
        // SAFETY: as above.
        unsafe { index.apply([(keys[0], Some(loc(20)))].into_iter()) };
        let before = index.len();
        assert_eq!(index.forget_below(20), before - 1);
        assert_eq!(index.len(), 1);
        assert_eq!(index.map.read().per_segment.below(21), 1);
        index.forget_below(u32::MAX);
        assert_eq!(index.live_bytes(), 0);
    }

    #[test]
    fn inline_and_mapped_keys_set_update_and_delete() {
        // Keys on both sides of the inline limit, sharing prefixes; 'static, so the pointed-at
        // bytes outlive the index as `apply` requires.
        let long: &'static [u8] = b"abcdefghijklmnopqrstuvwxyz";
        let keys: [&'static [u8]; 6] = [
            b"",
            &long[..1],
            &long[..INLINE_KEY_MAX],
            &long[..INLINE_KEY_MAX + 1],
            long,
            b"abcdefghijklmnopqrstuvwxyZ",
        ];
        let index = Index::default();
        set_each_at_its_place(&index, &keys);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k), Some(loc(i as u64)), "key {k:?}");
        }
        assert_eq!(index.get(&long[..5]), None);
        // Update through a different copy of the same bytes: found by content, not address.
        let copies: Vec<&'static [u8]> = keys.iter().map(|k| kept(k.to_vec())).collect();
        // SAFETY: leaked, so 'static.
        unsafe {
            index.apply(
                copies
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (*k, (i % 2 == 0).then(|| loc(10 + i as u64)))),
            )
        };
        assert_eq!(index.len(), 3);
        for (i, k) in keys.iter().enumerate() {
            let want = (i % 2 == 0).then(|| loc(10 + i as u64));
            assert_eq!(index.get(k), want, "key {k:?}");
        }
        let mut seen = Vec::new();
        index.for_each(|k, l| seen.push((k.to_vec(), l)));
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<_> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(i, k)| (k.to_vec(), loc(10 + i as u64)))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(seen, want);
    }

    /// `Lookup::holds(key, loc)` answers as `get(key) == Some(loc)` for every key (present,
    /// overwritten, deleted, never set) and every location (its own, an older one of the
    /// same key, another key's).
    #[test]
    fn holds_is_get_at_that_location() {
        // Fewer under Miri (`tools/miri.sh`), which takes seconds over each hundred pairs
        // below: keys 15-17 are still past the inline limit, one live, one overwritten, one
        // deleted.
        const KEYS: usize = if cfg!(miri) { 18 } else { 30 };
        let keys: Vec<&'static [u8]> = (0..KEYS)
            .map(|i| kept(format!("key-{i:03}-{}", "x".repeat(i)).into_bytes()))
            .collect();
        let index = Index::default();
        set_each_at_its_place(&index, &keys);
        // Overwrite a third, delete a third (of those, some never come back).
        // SAFETY: as above.
        unsafe {
            index.apply(
                keys.iter()
                    .enumerate()
                    .filter(|(i, _)| i % 3 != 0)
                    .map(|(i, k)| (*k, (i % 3 == 1).then(|| loc(100 + i as u64)))),
            )
        };
        let absent: &'static [u8] = b"never-set";
        let locs: Vec<Loc> = (0..KEYS as u64)
            .flat_map(|i| [loc(i), loc(100 + i)])
            .collect();
        let lookup = index.lookup();
        let mut held = 0;
        for k in keys.iter().copied().chain([absent]) {
            for &l in &locs {
                let want = lookup.get(k) == Some(l);
                assert_eq!(lookup.holds(k, l), want, "key {k:?} at {l:?}");
                held += usize::from(want);
            }
        }
        // Every key set and not deleted (all but a third) holds exactly its one location.
        assert_eq!(held, KEYS - KEYS / 3);
    }

    /// `get_each` answers as `get` of each key, in order: keys set, deleted and never set,
    /// repeated, more of them than it prefetches ahead, and fewer.
    #[test]
    fn get_each_is_get_of_each_key() {
        let keys: Vec<&'static [u8]> = (0..3 * AHEAD)
            .map(|i| kept(format!("key-{i:03}-{}", "x".repeat(i % 20)).into_bytes()))
            .collect();
        let index = Index::default();
        set_each_at_its_place(&index, &keys[..2 * AHEAD]);
        // SAFETY: every key is 'static.
        unsafe { index.apply(keys.iter().step_by(5).map(|k| (*k, None))) };
        let lookup = index.lookup();
        let mut asked: Vec<(usize, &[u8])> = Vec::new();
        for round in 0..2 {
            for (i, k) in keys.iter().enumerate().rev() {
                asked.push((round * keys.len() + i, k));
            }
            asked.push((usize::MAX, b"never-set"));
        }
        for n in [0, 1, AHEAD - 1, AHEAD, AHEAD + 1, asked.len()] {
            let mut got = vec![Some(loc(999_999))];
            lookup.get_each(&asked[..n], &mut got);
            let want: Vec<Option<Loc>> = std::iter::once(Some(loc(999_999)))
                .chain(asked[..n].iter().map(|&(_, k)| lookup.get(k)))
                .collect();
            assert_eq!(got, want, "{n} keys");
        }
        let found = keys.iter().filter(|k| lookup.get(k).is_some()).count();
        assert_eq!(
            found,
            2 * AHEAD - (2 * AHEAD).div_ceil(5),
            "the keys set and not deleted"
        );
    }

    proptest::proptest! {
        /// With `track_live_records` on, `holds` reads a bit instead of probing: it must still
        /// answer as `get(key) == Some(loc)` for a record read from the log (the key written
        /// at `loc`, as its contract says), at every location ever used (live,
        /// overwritten, deleted, forgotten), through sets, overwrites, deletes and
        /// `forget_below`. The log is as the engine writes it: locations in order, values at
        /// least a record header apart (an empty key and empty values allowed), segments
        /// rolling now and then.
        #[test]
        fn tracked_holds_is_get_at_that_location(
            // Shorter under Miri, which takes minutes over a long one.
            steps in proptest::collection::vec(
                (0u8..16, 0u8..8, 0u64..60, 0u32..3),
                1..if cfg!(miri) { 40 } else { 300 },
            ),
        ) {
            let keys: Vec<&'static [u8]> = (0..12)
                .map(|i| kept(vec![b'k'; i]))
                .collect();
            let tracked = Index::default();
            tracked.track_live_records();
            let (mut seg, mut off, mut used) = (0u32, 0u64, Vec::new());
            let mut forgotten_below = 0;
            for (k, what, len, roll) in steps {
                // The empty key and empty values often: records then lie the least apart.
                let key = keys[if k < 12 { k as usize } else { 0 }];
                let len = len.saturating_sub(20);
                let update = match what {
                    // A retirement of the segments before the current one.
                    0 if seg > forgotten_below => {
                        forgotten_below = seg;
                        tracked.forget_below(seg);
                        continue;
                    }
                    1 => None,
                    _ => {
                        if roll == 0 {
                            (seg, off) = (seg + 1, 0);
                        }
                        // The record header and the key, then the value.
                        off += RECORD_GAP + key.len() as u64;
                        let l = Loc { seg, off, len: len as u32 };
                        off += len;
                        used.push((key, l));
                        Some(l)
                    }
                };
                // SAFETY: 'static keys.
                unsafe { tracked.apply(std::iter::once((key, update))) };
            }
            let lookup = tracked.lookup();
            let mut held = 0;
            for &(key, l) in &used {
                let want = lookup.get(key) == Some(l);
                proptest::prop_assert_eq!(lookup.holds(key, l), want, "{:?} at {:?}", key, l);
                held += usize::from(want);
            }
            // Each live key holds exactly one of the locations.
            proptest::prop_assert_eq!(held, tracked_len(&lookup));
        }
    }

    proptest::proptest! {
        // Two cases under Miri (`tools/miri.sh`, whose PROPTEST_CASES is 4): half a minute
        // each there even as cut down below. Elsewhere the default (PROPTEST_CASES or 256).
        #![proptest_config(proptest::test_runner::Config {
            cases: if cfg!(miri) { 2 } else { proptest::test_runner::Config::default().cases },
            ..proptest::test_runner::Config::default()
        })]

        /// Batches applied as one (the pipeline that prefetches ahead: batches longer than
        /// [`AHEAD`], the same key several times in one, deletes, a table growing midway)
        /// leave the index as applying their updates one by one to a map does: every key's
        /// location, the count, `live_bytes`, and with live bits tracked, `holds` at every
        /// location used.
        #[test]
        fn batches_apply_as_their_updates_in_order(
            batches in proptest::collection::vec(
                (
                    // Fewer and smaller batches under Miri, as above, over fewer keys
                    // (still inline and mapped ones, still growing the table midway).
                    proptest::collection::vec(
                        (0usize..if cfg!(miri) { 40 } else { 150 }, 0u8..6),
                        0..if cfg!(miri) { 24 } else { 90 },
                    ),
                    proptest::bool::ANY,
                ),
                1..if cfg!(miri) { 3 } else { 12 },
            ),
            tracked in proptest::bool::ANY,
        ) {
            let keys: Vec<&'static [u8]> = (0..if cfg!(miri) { 48 } else { 160 })
                .map(|i| kept(format!("k{i}{}", "-".repeat(i % 23)).into_bytes()))
                .collect();
            let index = Index::default();
            if tracked {
                index.track_live_records();
            }
            let mut model = std::collections::HashMap::new();
            let (mut off, mut used) = (0u64, Vec::new());
            for (batch, deferred) in batches {
                let updates: Vec<(&'static [u8], Option<Loc>)> = batch
                    .iter()
                    .map(|&(k, what)| {
                        let key = keys[k];
                        if what == 0 {
                            return (key, None);
                        }
                        off += RECORD_GAP + key.len() as u64;
                        let l = Loc { seg: (off >> 12) as u32, off, len: what as u32 };
                        off += u64::from(what);
                        used.push((key, l));
                        (key, Some(l))
                    })
                    .collect();
                for &(key, update) in &updates {
                    match update {
                        Some(l) => model.insert(key, l),
                        None => model.remove(key),
                    };
                }
                if deferred {
                    defer(&index, updates.into_iter());
                    index.apply_now();
                } else {
                    // SAFETY: 'static keys.
                    unsafe { index.apply(updates.into_iter()) };
                }
                for &key in &keys {
                    proptest::prop_assert_eq!(index.get(key), model.get(key).copied(), "{:?}", key);
                }
                proptest::prop_assert_eq!(index.len(), model.len());
                let want_bytes: u64 = model.iter().map(|(k, l)| live_len(k, *l)).sum();
                proptest::prop_assert_eq!(index.live_bytes(), want_bytes);
            }
            let lookup = index.lookup();
            for &(key, l) in &used {
                proptest::prop_assert_eq!(lookup.holds(key, l), model.get(key) == Some(&l));
            }
        }
    }

    /// Live keys, as the lookup sees them.
    fn tracked_len(lookup: &Lookup<'_>) -> usize {
        lookup.0.table.len()
    }

    /// `Index::defer` for keys that live forever.
    fn defer(index: &Index, updates: impl Iterator<Item = (&'static [u8], Option<Loc>)>) -> bool {
        // SAFETY: 'static keys outlive the index.
        unsafe { index.defer(updates) }
    }

    /// Deferred updates are applied in order, before any lookup sees the map: a lookup, the
    /// count and the visit all find them, whoever applies them (a lookup, the opportunistic
    /// `try_apply_queued`, or `apply_now`).
    #[test]
    fn deferred_updates_apply_in_order_before_any_lookup() {
        let keys: [&'static [u8]; 3] = [b"a", b"bb", b"a-key-longer-than-the-inline-limit"];
        let index = Index::default();
        let full = defer(&index, keys.iter().map(|k| (*k, Some(loc(1)))));
        assert!(!full);
        // A lookup applies what is queued first.
        assert_eq!(index.get(keys[2]), Some(loc(1)));
        // Later batches override earlier ones, in the order they were queued: set, then
        // delete, then set again, with nobody looking in between.
        defer(
            &index,
            [(keys[0], Some(loc(2))), (keys[1], None)].into_iter(),
        );
        defer(
            &index,
            [(keys[0], None), (keys[1], Some(loc(3)))].into_iter(),
        );
        defer(&index, [(keys[0], Some(loc(4)))].into_iter());
        assert_eq!(index.len(), 3, "the count sees the queued updates");
        assert_eq!(index.get(keys[0]), Some(loc(4)));
        assert_eq!(index.get(keys[1]), Some(loc(3)));

        // The opportunistic apply empties the queue when nobody holds the lock, and leaves it
        // for the next lookup when somebody does.
        defer(&index, [(keys[1], None)].into_iter());
        {
            let _reader = index.map.read();
            index.try_apply_queued();
            assert!(index.has_queued.load(Ordering::Acquire));
        }
        index.try_apply_queued();
        assert!(!index.has_queued.load(Ordering::Acquire));
        assert_eq!(index.map.read().table.len(), 2, "applied without a lookup");
        let mut seen = Vec::new();
        index.for_each(|k, l| seen.push((k.to_vec(), l)));
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            vec![(keys[0].to_vec(), loc(4)), (keys[2].to_vec(), loc(1))]
        );

        // Past QUEUED_MAX the caller is told to apply at once.
        let many: Vec<&'static [u8]> = (0..=QUEUED_MAX as u32)
            .map(|i| kept(i.to_be_bytes().to_vec()))
            .collect();
        let full = defer(&index, many.iter().map(|k| (*k, Some(loc(5)))));
        assert!(full);
        index.apply_now();
        assert!(!index.has_queued.load(Ordering::Acquire));
        assert_eq!(index.map.read().table.len(), 2 + many.len());
    }
}
