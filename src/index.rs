//! Key -> location of the latest durable value, for the read path.
//!
//! Updated after a batch's sync, under a write lock taken before the watermark moves (so a
//! writer that waited and looks its write up blocks until it is in), rebuilt by replaying the
//! log at open. Deleted keys are
//! removed, so the index holds exactly the live keys.

use crate::log::segment::Segment;
use crate::log::Segments;
use hashbrown::HashTable;
use parking_lot::RwLock;
use std::hash::BuildHasher;
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
            Key::Mapped(MappedKey {
                ptr: key.as_ptr(),
                len: key.len(),
            })
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
}

impl Map {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }
}

/// Matches the slot of `key` (hash first, so a probe rarely touches key bytes).
fn same_key(hash: u64, key: &[u8]) -> impl Fn(&Slot) -> bool + '_ {
    move |s| s.hash == hash && s.key.bytes() == key
}

#[derive(Default)]
pub(crate) struct Index {
    map: RwLock<Map>,
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        let map = self.map.read();
        let h = map.hash(key);
        map.table.find(h, same_key(h, key)).map(|s| s.loc)
    }

    pub fn len(&self) -> usize {
        self.map.read().table.len()
    }

    /// Applies one batch of updates under one write lock: `Some(loc)` sets, `None` deletes.
    ///
    /// # Safety
    /// As [`IndexUpdate::apply`].
    pub unsafe fn apply<'a>(&self, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) {
        // SAFETY: this function's contract.
        unsafe { self.lock_for_update().apply(updates) }
    }

    /// Takes the write lock for updates: every lookup waits until the guard is dropped. The
    /// engine takes it before it advances the watermark and applies the batch after, so a
    /// waiter that saw its write complete and looks it up blocks until it is in, while the
    /// other woken writers need not wait for the update.
    pub fn lock_for_update(&self) -> IndexUpdate<'_> {
        IndexUpdate {
            map: self.map.write(),
        }
    }

    /// Visits every live key with its location (unordered).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], Loc)) {
        for s in self.map.read().table.iter() {
            f(s.key.bytes(), s.loc);
        }
    }
}

/// The index locked for updates ([`Index::lock_for_update`]).
pub(crate) struct IndexUpdate<'a> {
    map: parking_lot::RwLockWriteGuard<'a, Map>,
}

impl IndexUpdate<'_> {
    /// Applies one batch of updates: `Some(loc)` sets, `None` deletes.
    ///
    /// # Safety
    /// Every key slice must lie in the published bytes of a segment mapping that stays mapped
    /// for as long as this index exists: the index keeps pointing at them. (The engine keeps
    /// every segment it ever mapped, and declares the index before them so it drops first.)
    pub unsafe fn apply<'a>(&mut self, updates: impl Iterator<Item = (&'a [u8], Option<Loc>)>) {
        let map = &mut *self.map;
        for (key, loc) in updates {
            let h = map.hash(key);
            match loc {
                Some(loc) => match map.table.find_mut(h, same_key(h, key)) {
                    Some(slot) => {
                        if let Key::Mapped(k) = &mut slot.key {
                            // Point at the newest copy: the next update of a hot key then
                            // compares against bytes still in cache.
                            k.ptr = key.as_ptr();
                        }
                        slot.loc = loc;
                    }
                    None => {
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
                        entry.remove();
                    }
                }
            }
        }
    }
}

/// A durable value, borrowed zero-copy from the segment's memory map. Holding it keeps the
/// segment mapped; it never changes (log bytes are written once).
#[derive(Clone)]
pub struct ValueRef {
    seg: Arc<Segment>,
    off: u64,
    len: usize,
}

impl ValueRef {
    pub(crate) fn resolve(segments: &Segments, loc: Loc) -> Option<ValueRef> {
        let seg = segments.read().get(loc.seg as usize)?.clone();
        let v = ValueRef {
            seg,
            off: loc.off,
            len: loc.len as usize,
        };
        // The flusher publishes before it updates the index, so this cannot be empty for a
        // non-empty value; checked rather than trusted.
        (v.seg.bytes(v.off, v.len).len() == v.len).then_some(v)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> Loc {
        Loc {
            seg: n as u32,
            off: n * 100,
            len: n as u32 + 1,
        }
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
        // SAFETY: every key is 'static.
        unsafe {
            index.apply(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| (*k, Some(loc(i as u64)))),
            )
        };
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k), Some(loc(i as u64)), "key {k:?}");
        }
        assert_eq!(index.get(&long[..5]), None);
        // Update through a different copy of the same bytes: found by content, not address.
        let copies: Vec<&'static [u8]> = keys
            .iter()
            .map(|k| &*Box::leak(k.to_vec().into_boxed_slice()))
            .collect();
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
}
