//! The ingest ring: a lock-free many-producer, one-consumer ring of bytes.
//!
//! Every request enters mergelog here. The design is that of Agrona's `ManyToOneRingBuffer`:
//! producers copy their request straight into a shared byte array and the consumer (the
//! flusher) reads it in place, so the write path allocates nothing and the ring itself holds
//! the current window.
//!
//! # Positions
//!
//! Positions are absolute byte counts (`u64`) since the ring was made; they never wrap. The
//! byte offset of position `p` is `p & (capacity - 1)`. `head <= tail <= head + capacity`
//! always holds, where `tail` is the end of the last claim and `head` the consumer's release
//! point. A record's *end* position is unique and strictly increasing in claim order, which is
//! why [`Ring::try_push`] returns it as the request's place in the total order (its ticket).
//!
//! # Records
//!
//! A record is an 8-byte header followed by the payload, padded to a multiple of 8 so every
//! header sits on an aligned word that can be read and written atomically. The header is one
//! native-endian `u64`: the low 32 bits hold the record length (header plus payload, before
//! padding), the high 32 bits the kind (data or padding). A zero header means "not published";
//! a published length is never zero because it includes the header. On little-endian machines
//! this is the byte layout `[len: u32 | kind: u32]`.
//!
//! # Claim
//!
//! A producer claims `align8(RECORD_HEADER + len)` bytes by a CAS that moves `tail` forward.
//! Before the CAS it checks free space against `head_cache`, a copy of `head` shared by the
//! producers: the real `head` is written by the consumer on every release, so reading it on every
//! push would bounce its cache line between cores. Only when the cached value says "full" does a
//! producer re-read `head` (and refresh the cache). A stale cache can only under-estimate free
//! space, never over-estimate it, because `head` only grows.
//!
//! # Padding at the wrap
//!
//! A record never straddles the end of the buffer, so the payload handed to `fill` is one
//! contiguous `&mut [u8]`. A claim that would cross the end instead claims, in the same CAS, the
//! rest of the buffer as a padding record plus the record itself at offset 0. The padding header
//! is published at once (the consumer skips padding) and the record follows as usual. This is
//! why [`Ring::max_payload`] is `capacity / 4 - RECORD_HEADER`: a padding record is always
//! shorter than the record that caused it, so the worst claim (padding + record) is below
//! `capacity / 2` and fits in an empty ring from any starting offset. A blocked producer
//! therefore always makes progress once the consumer releases, and at least half the ring stays
//! usable for the next window while the consumer holds the current one.
//!
//! # Publish, out of order
//!
//! After `fill` returns, the producer stores the header with `Release`. The consumer loads
//! headers with `Acquire`, so seeing a non-zero header makes the whole payload visible. Claims
//! are ordered by the CAS but publication is not: producer A may claim before B and publish
//! after it. The consumer therefore takes only the *contiguous published prefix*: it walks
//! headers from its position and stops at the first zero header, even if later records are
//! already published. That hole closes when A publishes, and the order the consumer sees is
//! always the claim order, i.e. ticket order.
//!
//! If `fill` panics, the claim is published as padding (a drop guard), so a crashed producer
//! cannot wedge the ring.
//!
//! # Release and zeroing
//!
//! The consumer hands out payloads as `&[u8]` borrowed from the [`Consumer`]; [`Consumer::release`]
//! takes `&mut self`, so no slice can outlive it. Release zeroes every byte of the released
//! records and then stores the new `head` with `Release`. Zeroing is what makes "zero header
//! = unpublished" true on the next lap: any 8-aligned word can become a header, so every word
//! must be zero before a producer can claim it. The `Release` store of `head`, read with
//! `Acquire` by producers (directly or through `head_cache`, which is written with `Release`
//! after an `Acquire` read of `head`), orders the zeroing before any later producer write to
//! those bytes.
//!
//! The consumer also remembers the end of the published prefix it has walked (`frontier`).
//! `read`, `wait` and `release` only accept positions up to it, and never look at a header
//! beyond it except the one at `frontier` itself, which is a record boundary. That keeps the
//! consumer from ever touching bytes of an unpublished record, whatever positions it is given.
//!
//! # Parking
//!
//! Two kinds of thread may sleep, each with a spin-then-park loop using a `parking_lot`
//! mutex/condvar pair (the condition is re-checked under the mutex, so a wake-up between
//! "check" and "sleep" is never lost):
//!
//! * **Producers waiting for space** ([`Ring::push`]) increment `space_waiters`, re-check `head`,
//!   and park. [`Consumer::release`] stores `head`, issues a `SeqCst` fence and reads
//!   `space_waiters`; it touches the condvar only when the count is non-zero. This is a Dekker
//!   pair: the producer's `SeqCst` increment precedes its re-check of `head`, the consumer's
//!   fence sits between its store of `head` and its read of the count, so at least one side sees
//!   the other.
//! * **Tasks waiting for space** ([`Ring::poll_push`], the async submit) never park a thread:
//!   the future pushes a clone of its waker onto `space_wakers` (a mutex-guarded list; only
//!   this slow path allocates) and increments `space_tasks` (`SeqCst`), then re-checks `head`
//!   (a future polled again before the list was drained finds its entry by its [`SpaceSlot`]
//!   and replaces the waker in place, so the list holds one entry per waiting future however
//!   often an executor polls it; the count, still non-zero since then, is not touched; a
//!   future that goes away puts a no-op waker in its entry: [`Ring::forget_space_waker`])
//!   and `tail`'s closed bit; only if neither moved does it return `Pending`. `release` reads
//!   `space_tasks` after the same fence as `space_waiters` and, when non-zero, takes the whole
//!   list and wakes every waker in it (the woken retry their claim, and a loser registers
//!   again). The same Dekker pair, so a release either sees the waker or the task sees the new
//!   `head`. `close` takes the list unconditionally, under the mutex the task registered
//!   under, so a task either is woken by it or sees the closed bit.
//! * **The consumer waiting for records** ([`Consumer::wait`]) sets `state = WAITING` (by a
//!   swap, see "Loom"), issues a `SeqCst` fence, then re-reads `tail` and the header it waits
//!   for. A producer, after
//!   publishing, does one `SeqCst` load of `state` and only wakes the consumer if it is
//!   `WAITING`: that is all a producer pays while the consumer is busy. The pair is the
//!   producer's claim CAS (a `SeqCst` read-modify-write) followed by its `state` load, against
//!   the consumer's write of `state`, fence, load of `tail`. By the C++20 rules for `SeqCst`
//!   fences (\[atomics.order\] p4), if the consumer's `tail` load misses a claim, that producer's
//!   later `state` load sees `WAITING`. So the consumer parks without a timeout only when
//!   nothing at all is claimed beyond its position. When a record is claimed but not yet
//!   published (a producer is inside `fill`), the claim came before the consumer's fence and
//!   that producer may not see `WAITING`; the consumer then polls with short timed parks, which
//!   costs nothing unless a producer is preempted mid-copy. `notify_consumer` and `close` use the
//!   same pattern with their own read-modify-write (`notified.swap`, `tail.fetch_or`).
//!
//! `close` sets a bit in `tail`, so it is ordered with every claim by the same CAS: once it is
//! set no claim can succeed, and `tail` then bounds everything that will ever be published.
//!
//! # Loom
//!
//! Under `--cfg loom` the atomics, the mutex/condvar pair and the spin hints come from loom
//! (module `crate::sync`). Loom cannot view raw bytes as atomics, so there the headers live in a
//! side array of loom atomics and every payload word has a loom `UnsafeCell<()>` whose
//! accesses are recorded, which lets loom report a producer writing bytes the consumer may
//! still read (or the reverse). Loom treats `SeqCst` loads, stores and read-modify-writes as
//! merely `AcqRel` (it does model `SeqCst` fences), so under loom a `fence(SeqCst)` follows each
//! read-modify-write that the Dekker arguments above rely on; on real builds that fence is
//! unnecessary and absent. Loom also does not know that a read-modify-write is ordered right
//! after the write it read, so the consumer announces `WAITING` with a swap (reading the latest
//! state orders every earlier waker's write before it for loom too); otherwise loom reports a
//! lost wake-up that the C++ model rules out. Loom has no clock: a timed park is modelled as an
//! immediate time-out.

use std::fmt;
use std::mem;
use std::sync::atomic::{
    AtomicU64 as StdAtomicU64,
    Ordering::{Acquire as StdAcquire, Relaxed as StdRelaxed, Release as StdRelease},
};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;

use crate::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use crate::sync::{fence_after_sc_rmw, spin_hint, Mutex, Parker};

/// Bytes of the header in front of every record.
pub const RECORD_HEADER: usize = 8;
// A header is one `u64` word, read and written atomically at an 8-aligned offset.
const _: () = assert!(RECORD_HEADER == std::mem::size_of::<u64>());

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Not enough free space right now ([`Ring::try_push`] only).
    Full,
    /// The payload is larger than [`Ring::max_payload`].
    TooLarge,
    /// The ring was closed.
    Closed,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushError::Full => "ring is full",
            PushError::TooLarge => "record is larger than the ring's maximum payload",
            PushError::Closed => "ring is closed",
        })
    }
}

impl std::error::Error for PushError {}

const KIND_DATA: u64 = 1;
const KIND_PAD: u64 = 2;
/// How far past its own record a producer prefetches the next ones' lines
/// (`Ring::prefetch_ahead`): a few records, so the lines arrive before they are written.
// Unused under loom and Miri, which do not prefetch.
#[cfg_attr(any(loom, miri), allow(dead_code))]
const AHEAD_BYTES: u64 = 1024;
/// Set in `tail` by `close()`; positions never reach it.
const CLOSED: u64 = 1 << 63;
// `tail & !CLOSED` is the position: the bit must be the top one, above every position.
const _: () = assert!(CLOSED.count_ones() == 1 && CLOSED.leading_zeros() == 0);
/// Consumer `state` values.
const RUNNING: u32 = 0;
const WAITING: u32 = 1;

/// Spins before a producer parks on a full ring, and before the consumer parks in `wait`.
/// Under loom every spin is a scheduling point, so none.
#[inline(always)]
fn spin_limit() -> u32 {
    if cfg!(loom) {
        0
    } else {
        64
    }
}
/// Timed-park bounds while a claimed record is not yet published (see "Parking").
const POLL_MIN: Duration = Duration::from_micros(20);
const POLL_MAX: Duration = Duration::from_millis(1);

#[inline(always)]
const fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// The ring's memory.
///
/// Stored as `AtomicU64` words: that gives 8-byte alignment on every target and interior
/// mutability for the payload bytes, and lets a header be read and written atomically as
/// `words[off / 8]` with no `unsafe`. Payload bytes are accessed non-atomically through a raw
/// pointer; the protocol guarantees that such accesses never race (see the module docs).
struct Buffer {
    words: Box<[StdAtomicU64]>,
    /// Loom cannot view plain memory as atomics: headers live here instead.
    #[cfg(loom)]
    headers: Box<[AtomicU64]>,
    /// One access tracker per word, so loom checks the byte accesses for races.
    #[cfg(loom)]
    access: Box<[loom::cell::UnsafeCell<()>]>,
}

impl Buffer {
    fn new(capacity: usize) -> Self {
        let words = capacity / 8;
        Buffer {
            words: (0..words).map(|_| StdAtomicU64::new(0)).collect(),
            #[cfg(loom)]
            headers: (0..words).map(|_| AtomicU64::new(0)).collect(),
            #[cfg(loom)]
            access: (0..words)
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.words.len() * 8
    }

    /// The header word at byte offset `off` (8-aligned, in bounds).
    #[inline(always)]
    fn header(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off < self.len());
        #[cfg(not(loom))]
        return &self.words[off / 8];
        #[cfg(loom)]
        return &self.headers[off / 8];
    }

    #[inline(always)]
    fn base(&self) -> *mut u8 {
        // Writing through this pointer is allowed: it is derived from a shared reference to
        // `AtomicU64`s, which are `UnsafeCell`s inside, and it covers the whole slice.
        self.words.as_ptr() as *mut u8
    }

    /// A mutable view of `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and for as long as the slice lives no other access to those
    /// bytes may happen (they belong to the caller's claim).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off <= self.len() && len <= self.len() - off);
        self.track(off, len, true);
        // SAFETY: in bounds by the caller's contract (checked above in debug builds); the
        // memory is initialised (zeroed at construction and by every release) and valid for
        // the lifetime of `&self`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base().add(off), len) }
    }

    /// A shared view of `len` bytes at `off`.
    ///
    /// # Safety
    /// `off + len <= self.len()`, the bytes were published to this thread (happens-before),
    /// and nobody writes them while the slice lives.
    #[inline(always)]
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off <= self.len() && len <= self.len() - off);
        self.track(off, len, false);
        // SAFETY: in bounds by the caller's contract (checked above in debug builds),
        // initialised, valid for `&self`; no concurrent writer by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.base().add(off), len) }
    }

    /// Zeroes `len` bytes at `off` (whole words: `off` and `len` are multiples of 8).
    ///
    /// # Safety
    /// As for [`Buffer::bytes_mut`]: in bounds, and no concurrent access to those bytes.
    #[inline]
    unsafe fn zero(&self, off: usize, len: usize) {
        debug_assert!(off.is_multiple_of(8) && len.is_multiple_of(8));
        debug_assert!(off <= self.len() && len <= self.len() - off);
        self.track(off, len, true);
        #[cfg(loom)]
        for header in &self.headers[off / 8..(off + len) / 8] {
            header.store(0, Ordering::Relaxed);
        }
        // SAFETY: in bounds and unshared by the caller's contract; `u8` has no invalid values.
        unsafe { std::ptr::write_bytes(self.base().add(off), 0, len) }
    }

    /// Records an access to the words overlapping `[off, off + len)` with loom.
    #[inline(always)]
    fn track(&self, off: usize, len: usize, write: bool) {
        #[cfg(loom)]
        for cell in &self.access[off / 8..(off + len).div_ceil(8)] {
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
        #[cfg(not(loom))]
        let _ = (off, len, write);
    }
}

/// A decoded, validated header.
#[derive(Clone, Copy)]
struct Rec {
    /// Header plus payload, before padding.
    len: usize,
    data: bool,
}

impl Rec {
    /// Bytes the record occupies in the ring.
    #[inline(always)]
    fn span(self) -> u64 {
        align8(self.len as u64)
    }

    /// Validates header `h` found at offset `off`: the record must fit before the end.
    #[inline(always)]
    fn decode(h: u64, off: usize, capacity: usize) -> Option<Rec> {
        let len = h as u32 as u64;
        let kind = h >> 32;
        let fits = len >= RECORD_HEADER as u64 && off as u64 + align8(len) <= capacity as u64;
        (fits && (kind == KIND_DATA || kind == KIND_PAD)).then_some(Rec {
            len: len as usize,
            data: kind == KIND_DATA,
        })
    }
}

/// A successful claim: `[start, start + pad)` is padding, `[start + pad, end)` the record.
struct Claim {
    start: u64,
    pad: u64,
    end: u64,
}

enum ClaimError {
    /// No space; carries the `head` the decision was based on.
    Full(u64),
    TooLarge,
    Closed,
}

/// The consumer's sleep state and pending notification.
struct Signal {
    state: AtomicU32,
    notified: AtomicU32,
}

/// The list of tasks waiting for space, and how many times it has been drained: an entry a
/// [`SpaceSlot`] names is still there while `round` is the slot's.
#[derive(Default)]
struct SpaceWakers {
    round: u64,
    wakers: Vec<Waker>,
}

/// A waiting future's place in the ring's list of tasks waiting for space
/// ([`Ring::poll_push`]); starts empty.
#[derive(Debug, Default)]
pub struct SpaceSlot(Option<(u64, usize)>);

/// The shared half of the ring: producers push through `Arc<Ring>`.
pub struct Ring {
    /// End of the last claim, with `CLOSED` set once closed. Every producer CASes it.
    tail: CachePadded<AtomicU64>,
    /// Producers' copy of `head`; read on every push, written only when it was stale.
    head_cache: CachePadded<AtomicU64>,
    /// Consumer's release point; written by the consumer on every release.
    head: CachePadded<AtomicU64>,
    /// Producers parked (or about to park) waiting for space.
    space_waiters: CachePadded<AtomicU32>,
    /// Wakers in `space_wakers` (changed only under its mutex; read by `release`).
    space_tasks: CachePadded<AtomicU32>,
    /// Wakers of tasks waiting for space ([`Ring::poll_push`]); drained by every release
    /// that sees `space_tasks` non-zero, and by `close`.
    space_wakers: Mutex<SpaceWakers>,
    /// Read by every producer after publishing; written when the consumer sleeps or wakes.
    signal: CachePadded<Signal>,
    buf: Buffer,
    mask: u64,
    capacity: usize,
    max_payload: usize,
    space: Parker,
    wake: Parker,
}

// `Ring` is `Send` and `Sync` without help: `Buffer` holds atomics (or, under loom, loom types
// that are themselves `Send + Sync`), and all non-atomic byte access goes through raw
// pointers whose exclusivity the claim/publish/release protocol guarantees.

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .field("head", &self.head())
            .field("tail", &self.tail())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Creates a ring of `capacity_bytes` (a power of two, `4096 ..= 2^31`) and its only consumer.
///
/// # Panics
/// If `capacity_bytes` is out of range; the engine validates its configuration first.
pub fn ring(capacity_bytes: usize) -> (Arc<Ring>, Consumer) {
    assert!(
        capacity_bytes >= 4096,
        "ring capacity must be at least 4096 bytes, got {capacity_bytes}"
    );
    new_pair(capacity_bytes)
}

/// [`ring`] without the lower bound, so tests and loom models can use tiny rings.
// Loom's `UnsafeCell` (the access trackers) is not `Sync`; loom threads do not need it.
#[cfg_attr(loom, allow(clippy::arc_with_non_send_sync))]
fn new_pair(capacity: usize) -> (Arc<Ring>, Consumer) {
    assert!(
        capacity.is_power_of_two() && (64..=1 << 31).contains(&capacity),
        "ring capacity must be a power of two up to 2^31 bytes, got {capacity}"
    );
    let ring = Arc::new(Ring {
        tail: CachePadded::new(AtomicU64::new(0)),
        head_cache: CachePadded::new(AtomicU64::new(0)),
        head: CachePadded::new(AtomicU64::new(0)),
        space_waiters: CachePadded::new(AtomicU32::new(0)),
        space_tasks: CachePadded::new(AtomicU32::new(0)),
        space_wakers: Mutex::new(SpaceWakers::default()),
        signal: CachePadded::new(Signal {
            state: AtomicU32::new(RUNNING),
            notified: AtomicU32::new(0),
        }),
        buf: Buffer::new(capacity),
        mask: capacity as u64 - 1,
        capacity,
        max_payload: capacity / 4 - RECORD_HEADER,
        space: Parker::new(),
        wake: Parker::new(),
    });
    let consumer = Consumer {
        ring: Arc::clone(&ring),
        frontier: StdAtomicU64::new(0),
    };
    (ring, consumer)
}

/// Publishes an unfinished claim as padding if `fill` unwinds, so the ring is not wedged.
struct Unfilled<'a> {
    ring: &'a Ring,
    off: usize,
    len: u32,
}

impl Drop for Unfilled<'_> {
    fn drop(&mut self) {
        self.ring.publish(self.off, self.len, KIND_PAD);
        self.ring.signal_consumer();
    }
}

impl Ring {
    /// Total bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Largest payload one record may carry: `capacity / 4 - RECORD_HEADER`, so that a record
    /// plus the padding a wrap may put in front of it (always shorter than the record) stays
    /// below half the ring and fits from any offset (see the module docs).
    #[inline]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Claimed tail (absolute).
    #[inline]
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire) & !CLOSED
    }

    /// The consumer's released head (absolute).
    #[inline]
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Whether [`Ring::close`] was called.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.tail.load(Ordering::Acquire) & CLOSED != 0
    }

    #[inline(always)]
    fn offset(&self, pos: u64) -> usize {
        (pos & self.mask) as usize
    }

    /// Claims space for a record of `len` payload bytes, writes it with `fill` (which gets
    /// exactly `len` zeroed, contiguous bytes) and publishes it. Returns the record's absolute
    /// end position: its place in the total order and its ticket. Never allocates.
    ///
    /// Fails at once with `Full` when there is no space, `TooLarge` when
    /// `len > max_payload()`, `Closed` after [`Ring::close`].
    #[inline]
    pub fn try_push(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64, PushError> {
        match self.claim(len) {
            Ok(claim) => Ok(self.commit(claim, len, fill)),
            Err(ClaimError::Full(_)) => Err(PushError::Full),
            Err(ClaimError::TooLarge) => Err(PushError::TooLarge),
            Err(ClaimError::Closed) => Err(PushError::Closed),
        }
    }

    /// Like [`Ring::try_push`], but waits for space when the ring is full (spins briefly,
    /// then parks until the consumer releases). Returns `Err(Closed)` if the ring is closed
    /// before space is found.
    #[inline]
    pub fn push(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64, PushError> {
        loop {
            match self.claim(len) {
                Ok(claim) => return Ok(self.commit(claim, len, fill)),
                Err(ClaimError::Full(head)) => self.wait_for_space(head)?,
                Err(ClaimError::TooLarge) => return Err(PushError::TooLarge),
                Err(ClaimError::Closed) => return Err(PushError::Closed),
            }
        }
    }

    /// Like [`Ring::push`], for a task: where `push` would park the thread, this registers
    /// `cx`'s waker, to be woken by the next release (or `close`), and returns `Pending`;
    /// `fill` is then dropped unused and the caller polls again with a new one (and the same
    /// `slot`: one per waiting future, which keeps its entry in the list single). Allocates
    /// nothing when there is space (only a registration does).
    #[inline]
    pub fn poll_push(
        &self,
        len: usize,
        cx: &mut Context<'_>,
        slot: &mut SpaceSlot,
        fill: impl FnOnce(&mut [u8]),
    ) -> Poll<Result<u64, PushError>> {
        loop {
            match self.claim(len) {
                Ok(claim) => return Poll::Ready(Ok(self.commit(claim, len, fill))),
                Err(ClaimError::Full(head)) => {
                    if self.register_space_waker(head, cx.waker(), slot) {
                        return Poll::Pending;
                    }
                }
                Err(ClaimError::TooLarge) => return Poll::Ready(Err(PushError::TooLarge)),
                Err(ClaimError::Closed) => return Poll::Ready(Err(PushError::Closed)),
            }
        }
    }

    #[inline]
    fn claim(&self, len: usize) -> Result<Claim, ClaimError> {
        if len > self.max_payload {
            return Err(ClaimError::TooLarge);
        }
        let need = align8((RECORD_HEADER + len) as u64);
        let capacity = self.capacity as u64;
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            if tail & CLOSED != 0 {
                return Err(ClaimError::Closed);
            }
            let room = capacity - (tail & self.mask);
            let pad = if need > room { room } else { 0 };
            let end = tail + pad + need;
            // Acquire: the cached value was stored (Release) by a producer that read it from
            // `head` with Acquire, so the consumer's zeroing of the space we reuse
            // happens-before our writes to it.
            let cached = self.head_cache.load(Ordering::Acquire);
            if end > cached + capacity {
                let head = self.head.load(Ordering::Acquire);
                if end > head + capacity {
                    // `tail` may be stale, but the real tail is only further on, so the ring
                    // is full for it too.
                    return Err(ClaimError::Full(head));
                }
                if head > cached {
                    self.head_cache.store(head, Ordering::Release);
                }
            }
            // SeqCst on success: the consumer's sleep protocol relies on claims taking part in
            // the total order `S` (see "Parking"). The order is free on x86 (`lock cmpxchg`).
            match self
                .tail
                .compare_exchange_weak(tail, end, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Claim {
                        start: tail,
                        pad,
                        end,
                    })
                }
                Err(actual) => tail = actual,
            }
        }
    }

    #[inline]
    fn commit(&self, claim: Claim, len: usize, fill: impl FnOnce(&mut [u8])) -> u64 {
        let mut start = claim.start;
        if claim.pad != 0 {
            // The padding runs to the end of the buffer, so its length is below the capacity
            // (<= 2^31) and fits the header's u32.
            self.publish(self.offset(start), claim.pad as u32, KIND_PAD);
            start += claim.pad;
        }
        let off = self.offset(start);
        let rec_len = (RECORD_HEADER + len) as u32; // <= capacity / 4
        let guard = Unfilled {
            ring: self,
            off,
            len: rec_len,
        };
        // SAFETY: `[start, claim.end)` was claimed by our CAS, so no other producer writes it,
        // and the consumer does not read it until we publish its header below (it stops at
        // the zero header). `claim()` placed the record so that `off + need <= capacity`, so
        // the payload `[off + 8, off + 8 + len)` is in bounds. The previous lap's bytes were
        // zeroed by the consumer before its Release store of `head`, which our claim read with
        // Acquire (directly or via `head_cache`), so there is no race with the zeroing either.
        // The slice is dead once `fill` returns, before the publishing store.
        let payload = unsafe { self.buf.bytes_mut(off + RECORD_HEADER, len) };
        self.prefetch_ahead(claim.end, rec_len as usize);
        fill(payload);
        mem::forget(guard);
        self.publish(off, rec_len, KIND_DATA);
        self.signal_consumer();
        claim.end
    }

    /// Asks for the cache lines of the next records, [`AHEAD_BYTES`] past `end`, as many as
    /// one record of `len` bytes covers (at most four), with intent to write. The next
    /// producers write there: the consumer zeroed those bytes a lap ago, from another core,
    /// and without this each record's stores missed, stalling the producer at its next
    /// locked instruction (the ticket's reference count took 6.4 % of all CPU samples at
    /// 4 x 256, 3.3 % with it). A hint: wrong or wasted when producers interleave, never
    /// incorrect.
    #[inline(always)]
    fn prefetch_ahead(&self, end: u64, len: usize) {
        // Not under Miri either, which runs no inline assembly (and a hint changes nothing it
        // could check).
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        {
            let first = self.offset(end + AHEAD_BYTES) & !63;
            let lines = len.div_ceil(64).min(4);
            for i in 0..lines {
                // Wraps within the ring: the offset is masked, so the address is inside it.
                let off = (first + 64 * i) & self.mask as usize;
                let p = self.buf.base().wrapping_add(off);
                // SAFETY: `prefetchw` reads and writes no memory as far as the program can
                // tell, never faults, and changes no flags or registers; processors without
                // it decode it as a no-op (it sits in the reserved-NOP opcode space). The
                // address lies inside the ring's buffer anyway.
                unsafe {
                    std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
                }
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        let _ = (end, len);
    }

    /// Makes the record at `off` visible: the Release store pairs with the consumer's Acquire
    /// load of the header and carries the payload writes with it.
    #[inline(always)]
    fn publish(&self, off: usize, len: u32, kind: u64) {
        self.buf.track(off, RECORD_HEADER, true);
        self.buf
            .header(off)
            .store(u64::from(len) | kind << 32, Ordering::Release);
    }

    /// After publishing: the producer's one flag check. Wakes the consumer only if it sleeps.
    #[inline(always)]
    fn signal_consumer(&self) {
        fence_after_sc_rmw();
        if self.signal.state.load(Ordering::SeqCst) == WAITING {
            self.wake_consumer();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_consumer(&self) {
        // Only the waker that flips the state pays for the condvar.
        if self.signal.state.swap(RUNNING, Ordering::AcqRel) == WAITING {
            self.wake.unpark_all();
        }
    }

    /// True once `head` moved past `seen_head` or the ring closed.
    fn space_moved(&self, seen_head: u64) -> bool {
        self.head.load(Ordering::SeqCst) != seen_head
            || self.tail.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// Registers `waker` to be woken once `head` moves past `seen_head` or the ring closes.
    /// Returns false if that already happened (the caller retries at once; the waker stays
    /// registered and gets one spurious wake-up). A future registered since the list was
    /// last drained (`slot`) replaces its waker instead of adding one.
    #[cold]
    #[inline(never)]
    fn register_space_waker(&self, seen_head: u64, waker: &Waker, slot: &mut SpaceSlot) -> bool {
        {
            let mut list = self.space_wakers.lock();
            let round = list.round;
            match slot.0 {
                // Registered this round: the entry is still in the list and `space_tasks`
                // has been non-zero since, so a release that misses the new `head` check
                // below still drains the list, and wakes this waker.
                Some((r, i)) if r == round => {
                    let w = &mut list.wakers[i];
                    if !w.will_wake(waker) {
                        w.clone_from(waker);
                    }
                }
                _ => {
                    slot.0 = Some((round, list.wakers.len()));
                    list.wakers.push(waker.clone());
                    // Dekker with `Consumer::release`, as in `wait_for_space`.
                    self.space_tasks.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        fence_after_sc_rmw();
        !self.space_moved(seen_head)
    }

    /// The waiting future that `slot` names is gone (dropped while it waited, or let
    /// through): if its entry is still in the list (no release drained it since), its waker
    /// is replaced by one that does nothing, so the ring no longer keeps the task (nor wakes
    /// it). The entry itself stays until the next drain: other slots name theirs by index.
    /// Nothing to do for a future that never waited.
    pub fn forget_space_waker(&self, slot: &SpaceSlot) {
        let Some((round, i)) = slot.0 else { return };
        let old = {
            let mut list = self.space_wakers.lock();
            if list.round != round {
                return;
            }
            mem::replace(&mut list.wakers[i], Waker::noop().clone())
        };
        // Dropped outside the lock: a waker's drop is user code.
        drop(old);
    }

    /// Wakes every registered task (see "Parking").
    #[cold]
    #[inline(never)]
    fn wake_space_tasks(&self) {
        let wakers = {
            let mut list = self.space_wakers.lock();
            self.space_tasks.store(0, Ordering::Relaxed);
            list.round = list.round.wrapping_add(1);
            mem::take(&mut list.wakers)
        };
        // Outside the lock: a waker may run the task inline and register again.
        for w in wakers {
            crate::sync::wake_user(w);
        }
    }

    /// Blocks until `head` moves past `seen_head` or the ring closes.
    #[cold]
    #[inline(never)]
    fn wait_for_space(&self, seen_head: u64) -> Result<(), PushError> {
        let moved = || self.space_moved(seen_head);
        for _ in 0..spin_limit() {
            if moved() {
                return self.open();
            }
            spin_hint();
        }
        // Dekker with `Consumer::release`: our SeqCst increment, then our re-check of `head`,
        // against its store of `head`, fence, load of `space_waiters`.
        self.space_waiters.fetch_add(1, Ordering::SeqCst);
        fence_after_sc_rmw();
        if !moved() {
            self.space.park(|| !moved(), None);
        }
        self.space_waiters.fetch_sub(1, Ordering::Relaxed);
        self.open()
    }

    #[inline]
    fn open(&self) -> Result<(), PushError> {
        if self.is_closed() {
            Err(PushError::Closed)
        } else {
            Ok(())
        }
    }

    /// Refuses new pushes from now on (they get `Closed`) and wakes parked producers and the
    /// consumer. Records already claimed are still published and can be read; after `close`
    /// returns, `tail()` is final.
    pub fn close(&self) {
        self.tail.fetch_or(CLOSED, Ordering::SeqCst);
        self.signal_consumer();
        self.space.unpark_all();
        self.wake_space_tasks();
    }

    /// Parks the consumer's thread, while another thread may hold the [`Consumer`], until a
    /// record is claimed beyond `seen` (published or not), [`Ring::notify_consumer`] or
    /// [`Ring::close`] is called. The same protocol as [`Consumer::wait`] (see "Parking"),
    /// on `tail` alone: it reads no record, so a position another holder of the consumer
    /// has since moved past is harmless. Only one thread may wait on the ring at a time
    /// (this and `Consumer::wait` share the consumer's parking spot).
    pub fn wait_for_claim(&self, seen: u64) {
        let check = || {
            if self.signal.notified.load(Ordering::Relaxed) != 0
                && self.signal.notified.swap(0, Ordering::AcqRel) != 0
            {
                return true;
            }
            let tail = self.tail.load(Ordering::SeqCst);
            tail & CLOSED != 0 || tail & !CLOSED > seen
        };
        for _ in 0..spin_limit() {
            if check() {
                return;
            }
            spin_hint();
        }
        loop {
            // As in `Consumer::wait`: announce, fence, look again, then sleep; a producer
            // whose claim the look misses sees WAITING after it publishes and wakes us.
            self.signal.state.swap(WAITING, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if check() {
                self.signal.state.store(RUNNING, Ordering::Relaxed);
                return;
            }
            let asleep = || self.signal.state.load(Ordering::Relaxed) == WAITING;
            self.wake.park(asleep, None);
            self.signal.state.store(RUNNING, Ordering::Relaxed);
        }
    }

    /// Wakes the consumer if it is parked in [`Consumer::wait`]; otherwise its next `wait`
    /// returns at once (used for flush requests).
    pub fn notify_consumer(&self) {
        self.signal.notified.swap(1, Ordering::SeqCst);
        self.signal_consumer();
    }

    /// The record at `pos` if it is published; `pos` is the consumer's frontier (a record
    /// boundary) and `head` the current head.
    #[inline(always)]
    fn scan(&self, pos: u64, head: u64) -> Option<Rec> {
        // At `head + capacity` the slot still holds the record at `head`.
        if pos - head >= self.capacity as u64 {
            return None;
        }
        let off = self.offset(pos);
        let h = self.buf.header(off).load(Ordering::Acquire);
        if h == 0 {
            return None;
        }
        match Rec::decode(h, off, self.capacity) {
            Some(rec) => Some(rec),
            None => corrupt(pos, h),
        }
    }

    /// The already-published record at `pos < frontier`.
    #[inline(always)]
    fn verified(&self, pos: u64, frontier: u64) -> Rec {
        let off = self.offset(pos);
        let h = self.buf.header(off).load(Ordering::Acquire);
        match Rec::decode(h, off, self.capacity) {
            Some(rec) if pos + rec.span() <= frontier => rec,
            _ => not_a_boundary(pos),
        }
    }
}

#[cold]
#[inline(never)]
fn corrupt(pos: u64, h: u64) -> ! {
    panic!("ring: invalid record header {h:#018x} at position {pos}")
}

#[cold]
#[inline(never)]
fn not_a_boundary(pos: u64) -> ! {
    panic!("ring: position {pos} is not a record boundary")
}

/// The one reader of a [`Ring`] (the flusher).
pub struct Consumer {
    ring: Arc<Ring>,
    /// End of the published prefix walked so far: a record boundary, `head <= frontier <=
    /// tail`, every record before it published. Only the consumer's methods touch it; it is
    /// atomic so that `Consumer` is `Sync`, and stored with Release and loaded with Acquire
    /// because of that: a thread reading through a shared consumer may find it moved by
    /// another thread's read, and the records below it must be visible to it as they were to
    /// that thread.
    frontier: StdAtomicU64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("ring", &self.ring)
            .field("frontier", &self.frontier.load(StdRelaxed))
            .finish()
    }
}

impl Consumer {
    /// The shared ring.
    #[inline]
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// `(head, frontier)` after checking that `from` is one the consumer may look at.
    #[inline(always)]
    fn bounds(&self, from: u64) -> (u64, u64) {
        // Only the consumer stores `head`, so Relaxed reads its own latest value.
        let head = self.ring.head.load(Ordering::Relaxed);
        // Acquire, against the Release store of whichever thread walked it (the consumer is
        // `Sync`: another thread's read may have): the records below it, and every byte of
        // them, are then visible here as they were to that thread.
        let frontier = self.frontier.load(StdAcquire);
        if from < head || from > frontier || !from.is_multiple_of(8) {
            out_of_range(from, head, frontier);
        }
        (head, frontier)
    }

    /// Visits published records in order from absolute position `from`, skipping padding,
    /// until the first record not yet published or until `f` returns `false` (that record is
    /// then not consumed). `f` gets the record's end position and its payload exactly as
    /// written. Returns the position after the last consumed record or skipped padding
    /// (`from` if none).
    ///
    /// `from` must be a record boundary with `head <= from` that the consumer has already
    /// reached: `head`, or any position returned by `read` or passed to `f` since then.
    ///
    /// # Panics
    /// If `from` is outside `[head, end of what read has seen]` or not 8-aligned, or not a
    /// record boundary as far as the word there shows: a position inside a record's payload
    /// whose word reads as a header that fits is taken for a record (its bytes are read as
    /// one: wrong, but never a race with a producer).
    #[inline]
    pub fn read<'a>(&'a self, from: u64, mut f: impl FnMut(u64, &'a [u8]) -> bool) -> u64 {
        let ring: &'a Ring = &self.ring;
        let (head, mut frontier) = self.bounds(from);
        let mut pos = from;
        loop {
            let rec = if pos < frontier {
                ring.verified(pos, frontier)
            } else {
                match ring.scan(pos, head) {
                    Some(rec) => {
                        frontier = pos + rec.span();
                        rec
                    }
                    None => break,
                }
            };
            let end = pos + rec.span();
            if rec.data {
                let off = ring.offset(pos);
                // SAFETY: the header at `pos` was loaded with Acquire and was non-zero, by this
                // thread (now, or when `frontier` passed it) or by the thread whose Release
                // store of `frontier` our Acquire load in `bounds` read, so the producer's
                // payload writes happen-before this read; `Rec::decode` checked that the record lies within
                // the buffer. Producers never write inside `[head, frontier)` (their claims
                // start at or after the unpublished boundary `frontier`, and space below
                // `head + capacity` only), and zeroing needs `release(&mut self)`, which cannot
                // run while this `&'a self` borrow (and so the slice) lives.
                let payload =
                    unsafe { ring.buf.bytes(off + RECORD_HEADER, rec.len - RECORD_HEADER) };
                if !f(end, payload) {
                    break;
                }
            }
            pos = end;
        }
        self.frontier.store(frontier, StdRelease);
        pos
    }

    /// Zeroes the records in `[head, upto)` and advances the head to `upto` (Release), waking
    /// producers waiting for space only if there are any.
    ///
    /// # Panics
    /// If `upto` is outside `[head, end of what read has seen]` or not 8-aligned. `upto` should
    /// be a position returned by [`Consumer::read`] or passed to its `f`.
    pub fn release(&mut self, upto: u64) {
        let (head, _) = self.bounds(upto);
        if upto == head {
            return;
        }
        let ring = &*self.ring;
        let off = ring.offset(head);
        let n = (upto - head) as usize; // <= frontier - head <= capacity
        let first = n.min(ring.capacity - off);
        // SAFETY: `[head, upto)` lies within `[head, frontier)`: published records, which no
        // producer writes (their claims start at or after `frontier`) and whose payloads we
        // read only through slices borrowed from `&self`, which `&mut self` proves are gone.
        // The range is at most `capacity` long and split at the end of the buffer, so both
        // pieces are in bounds; `head`, `upto` and the offsets are multiples of 8.
        unsafe {
            ring.buf.zero(off, first);
            if n > first {
                ring.buf.zero(0, n - first);
            }
        }
        ring.head.store(upto, Ordering::Release);
        // Dekker with `Ring::wait_for_space`.
        fence(Ordering::SeqCst);
        if ring.space_waiters.load(Ordering::Relaxed) != 0 {
            ring.space.unpark_all();
        }
        if ring.space_tasks.load(Ordering::Relaxed) != 0 {
            ring.wake_space_tasks();
        }
    }

    /// `None` if a data record at `from` (after any padding) is published, else the first
    /// unpublished boundary.
    fn probe(&self, from: u64) -> Option<u64> {
        let ring = &*self.ring;
        let (head, mut frontier) = self.bounds(from);
        let mut pos = from;
        let found = loop {
            let rec = if pos < frontier {
                ring.verified(pos, frontier)
            } else {
                match ring.scan(pos, head) {
                    Some(rec) => {
                        frontier = pos + rec.span();
                        rec
                    }
                    None => break Some(pos),
                }
            };
            if rec.data {
                break None;
            }
            pos += rec.span();
        };
        self.frontier.store(frontier, StdRelease);
        found
    }

    /// Why `wait` should return now (`Ok(published)`), or else the first unpublished boundary
    /// and the tail.
    fn wait_check(&self, from: u64, deadline: Option<Instant>) -> Result<bool, (u64, u64)> {
        let ring = &*self.ring;
        let Some(boundary) = self.probe(from) else {
            return Ok(true);
        };
        if ring.signal.notified.load(Ordering::Relaxed) != 0
            && ring.signal.notified.swap(0, Ordering::AcqRel) != 0
        {
            return Ok(false);
        }
        let tail = ring.tail.load(Ordering::Acquire);
        if tail & CLOSED != 0 && tail & !CLOSED <= boundary {
            // Closed and nothing in flight: nothing will ever be published here.
            return Ok(false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        Err((boundary, tail & !CLOSED))
    }

    /// Parks until a record at `from` is published, [`Ring::notify_consumer`] or
    /// [`Ring::close`] is called, or `deadline` passes (`None`: no deadline). Returns whether a
    /// record at `from` is published. A pending notification (one made while the consumer was
    /// not waiting) makes the next call return at once. After `close`, records already claimed
    /// are still waited for; `false` then means none is left.
    ///
    /// # Panics
    /// As [`Consumer::read`], for `from`.
    pub fn wait(&self, from: u64, deadline: Option<Instant>) -> bool {
        let ring = &*self.ring;
        let mut spins = 0;
        let mut poll = POLL_MIN;
        loop {
            // Reading the clock costs more than a spin iteration: look at the deadline on
            // entry and once spinning is over, not on every spin.
            let spinning = spins > 0 && spins < spin_limit();
            if let Ok(published) = self.wait_check(from, deadline.filter(|_| !spinning)) {
                return published;
            }
            if spins < spin_limit() {
                spins += 1;
                spin_hint();
                continue;
            }
            // Announce, then look again (see "Parking"): a producer whose claim our `tail`
            // load below misses will see WAITING after it publishes. A swap rather than a
            // store: it reads the latest state, so every earlier write (a waker's swap) is
            // ordered before it. In the C++ model that is implied anyway (an RMW reads the
            // value just before it in modification order); loom only knows it this way.
            ring.signal.state.swap(WAITING, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let (boundary, tail) = match self.wait_check(from, deadline) {
                Ok(published) => {
                    ring.signal.state.store(RUNNING, Ordering::Relaxed);
                    return published;
                }
                Err(pending) => pending,
            };
            let asleep = || ring.signal.state.load(Ordering::Relaxed) == WAITING;
            if tail > boundary {
                // Claimed, not yet published: its producer may have missed WAITING. Poll.
                let until = Instant::now() + poll;
                ring.wake
                    .park(asleep, Some(deadline.map_or(until, |d| d.min(until))));
                poll = (poll * 2).min(POLL_MAX);
            } else {
                ring.wake.park(asleep, deadline);
            }
            ring.signal.state.store(RUNNING, Ordering::Relaxed);
        }
    }
}

#[cold]
#[inline(never)]
fn out_of_range(pos: u64, head: u64, frontier: u64) -> ! {
    panic!(
        "ring: position {pos} is outside the consumer's readable range [{head}, {frontier}] \
         or not 8-aligned"
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// Waits (bounded, as a hang guard, not a timing assertion) until `cond` holds.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            thread::sleep(Duration::from_micros(100));
        }
    }

    fn read_all(c: &Consumer, from: u64) -> (u64, Vec<(u64, Vec<u8>)>) {
        let mut out = Vec::new();
        let pos = c.read(from, |end, p| {
            out.push((end, p.to_vec()));
            true
        });
        (pos, out)
    }

    fn raw_bytes(r: &Ring) -> Vec<u8> {
        r.buf
            .words
            .iter()
            .flat_map(|w| w.load(StdRelaxed).to_ne_bytes())
            .collect()
    }

    #[test]
    fn ring_is_shareable_and_consumer_sendable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Arc<Ring>>();
        send_sync::<Consumer>();
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, StdRelaxed);
        }
    }

    /// A future polled again and again while the ring stays full keeps one entry in the list
    /// of tasks waiting for space (it once added a waker clone per poll); another future
    /// adds its own, and a release wakes each once.
    #[test]
    fn a_task_polled_again_while_it_waits_keeps_one_entry() {
        let (r, mut c) = new_pair(64);
        while r.try_push(8, |_| {}).is_ok() {}
        let (a, b) = (Arc::new(Count(0.into())), Arc::new(Count(0.into())));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut slot_a, mut slot_b) = (SpaceSlot::default(), SpaceSlot::default());
        for _ in 0..100 {
            let p = r.poll_push(8, &mut Context::from_waker(&wa), &mut slot_a, |_| {});
            assert!(p.is_pending());
        }
        let p = r.poll_push(8, &mut Context::from_waker(&wb), &mut slot_b, |_| {});
        assert!(p.is_pending());
        assert_eq!(r.space_wakers.lock().wakers.len(), 2);
        let end = c.read(0, |_, _| true);
        c.release(end);
        assert_eq!((a.0.load(StdRelaxed), b.0.load(StdRelaxed)), (1, 1));
        assert!(r.space_wakers.lock().wakers.is_empty());
        // The next round: the old slot names a drained list, so the task registers anew.
        while r.try_push(8, |_| {}).is_ok() {}
        assert!(r
            .poll_push(8, &mut Context::from_waker(&wa), &mut slot_a, |_| {})
            .is_pending());
        assert_eq!(r.space_wakers.lock().wakers.len(), 1);
    }

    #[test]
    fn constants_and_sizes() {
        let (r, _c) = ring(4096);
        assert_eq!(r.capacity(), 4096);
        assert_eq!(r.max_payload(), 1024 - RECORD_HEADER);
        assert_eq!((r.head(), r.tail()), (0, 0));
        assert!(!r.is_closed());
    }

    #[test]
    #[should_panic(expected = "at least 4096")]
    fn tiny_capacity_is_rejected() {
        let _ = ring(2048);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn non_power_of_two_is_rejected() {
        let _ = ring(5000);
    }

    #[test]
    fn push_read_release_round_trip() {
        let (r, mut c) = ring(4096);
        let e1 = r.try_push(3, |b| b.copy_from_slice(b"abc")).unwrap();
        let e2 = r.try_push(0, |b| assert!(b.is_empty())).unwrap();
        let e3 = r.try_push(9, |b| b.copy_from_slice(b"123456789")).unwrap();
        assert_eq!((e1, e2, e3), (16, 24, 48));
        assert_eq!(r.tail(), 48);
        let (pos, recs) = read_all(&c, 0);
        assert_eq!(pos, 48);
        assert_eq!(
            recs,
            vec![
                (16, b"abc".to_vec()),
                (24, vec![]),
                (48, b"123456789".to_vec())
            ]
        );
        c.release(pos);
        assert_eq!(r.head(), 48);
        let (pos2, recs2) = read_all(&c, pos);
        assert_eq!((pos2, recs2.len()), (48, 0));
    }

    #[test]
    fn wrap_writes_padding_and_claims_at_start() {
        let (r, mut c) = ring(4096);
        // Fill to 4000 bytes with 200-byte records, consume and release them.
        for _ in 0..20 {
            r.try_push(192, |b| b.fill(1)).unwrap();
        }
        let pos = c.read(0, |_, _| true);
        assert_eq!(pos, 4000);
        c.release(pos);
        // 96 bytes are left before the end; a 104-byte record does not fit there.
        let end = r.try_push(89, |b| b.fill(2)).unwrap();
        // Padding [4000, 4096) then the record [4096, 4096 + 104).
        assert_eq!(end, 4096 + 104);
        assert_eq!(r.tail(), 4096 + 104);
        let hdr = r.buf.header(4000).load(Ordering::Relaxed);
        assert_eq!(hdr & 0xffff_ffff, 96);
        assert_eq!(hdr >> 32, KIND_PAD);
        let (pos, recs) = read_all(&c, pos);
        assert_eq!(pos, end);
        assert_eq!(recs, vec![(end, vec![2u8; 89])]);
        // The payload really starts at offset 8, right after the wrap.
        assert_eq!(&raw_bytes(&r)[8..8 + 89], &[2u8; 89][..]);
        c.release(pos);
        // A record that ends exactly at the end of the buffer takes no padding.
        for _ in 0..19 {
            r.try_push(192, |_| {}).unwrap();
        }
        assert_eq!(r.tail(), 8000);
        assert_eq!(r.try_push(184, |_| {}).unwrap(), 8192);
        assert_eq!(r.try_push(8, |_| {}).unwrap(), 8192 + 16);
        let (after, recs) = read_all(&c, pos);
        assert_eq!((after, recs.len()), (8192 + 16, 21));
    }

    #[test]
    fn max_payload_fits_from_every_offset() {
        // Under Miri a smaller ring: every offset of 4096 bytes takes it minutes.
        let cap = if cfg!(miri) { 512 } else { 4096 };
        let (r, mut c) = new_pair(cap);
        let max = r.max_payload();
        let mut pos = 0;
        for step in 0..(cap / 8) {
            // Advance by one word at a time with empty records (8 bytes each).
            r.try_push(max, |b| b.fill(step as u8)).unwrap();
            r.try_push(0, |_| {}).unwrap();
            let mut n = 0;
            pos = c.read(pos, |_, p| {
                if !p.is_empty() {
                    assert_eq!(p.len(), max);
                    assert!(p.iter().all(|&x| x == step as u8));
                }
                n += 1;
                true
            });
            assert_eq!(n, 2);
            c.release(pos);
        }
        assert_eq!(r.try_push(max + 1, |_| {}), Err(PushError::TooLarge));
    }

    #[test]
    fn try_push_full_too_large_closed() {
        let (r, mut c) = ring(4096);
        assert_eq!(
            r.try_push(r.max_payload() + 1, |_| unreachable!()),
            Err(PushError::TooLarge)
        );
        let mut n = 0;
        while r.try_push(1016, |b| b.fill(9)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4); // 4 x 1024 bytes
        assert_eq!(r.try_push(0, |_| unreachable!()), Err(PushError::Full));
        // Reading does not free space; releasing does.
        let pos = c.read(0, |_, _| true);
        assert_eq!(r.try_push(0, |_| unreachable!()), Err(PushError::Full));
        c.release(1024);
        assert!(r.try_push(1016, |_| {}).is_ok());
        assert_eq!(r.try_push(0, |_| unreachable!()), Err(PushError::Full));
        c.release(pos);
        r.close();
        assert!(r.is_closed());
        assert_eq!(r.try_push(0, |_| unreachable!()), Err(PushError::Closed));
        assert_eq!(r.push(0, |_| unreachable!()), Err(PushError::Closed));
        // What was published before close can still be read.
        let (end, recs) = read_all(&c, pos);
        assert_eq!((end, recs.len()), (5 * 1024, 1));
    }

    #[test]
    fn out_of_order_publish_stops_at_the_hole() {
        let (r, c) = ring(4096);
        let (claimed_tx, claimed_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let r2 = Arc::clone(&r);
        let a = thread::spawn(move || {
            r2.try_push(10, |b| {
                b.fill(0xaa);
                claimed_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
            .unwrap()
        });
        claimed_rx.recv().unwrap();
        let end_b = r.try_push(20, |b| b.fill(0xbb)).unwrap();
        assert_eq!(r.tail(), end_b);
        // B is published, A (before it) is not: nothing may be read.
        let (pos, recs) = read_all(&c, 0);
        assert_eq!((pos, recs.len()), (0, 0));
        assert!(!c.wait(0, Some(Instant::now() + Duration::from_millis(5))));
        go_tx.send(()).unwrap();
        let end_a = a.join().unwrap();
        assert!(end_a < end_b);
        let (pos, recs) = read_all(&c, 0);
        assert_eq!(pos, end_b);
        assert_eq!(recs, vec![(end_a, vec![0xaa; 10]), (end_b, vec![0xbb; 20])]);
    }

    #[test]
    fn read_stops_where_f_says_and_resumes_there() {
        let (r, c) = ring(4096);
        let ends: Vec<u64> = (0..3u8)
            .map(|i| r.try_push(5, |b| b.fill(i)).unwrap())
            .collect();
        let mut seen = Vec::new();
        let pos = c.read(0, |end, p| {
            seen.push(p[0]);
            end < ends[1] // refuse the second record
        });
        assert_eq!(pos, ends[0]);
        assert_eq!(seen, vec![0, 1]);
        let (pos, recs) = read_all(&c, pos);
        assert_eq!(pos, ends[2]);
        assert_eq!(recs, vec![(ends[1], vec![1; 5]), (ends[2], vec![2; 5])]);
        // Re-reading from head is allowed and yields the same records.
        let (again, recs) = read_all(&c, 0);
        assert_eq!((again, recs.len()), (ends[2], 3));
    }

    #[test]
    #[should_panic(expected = "readable range")]
    fn read_beyond_what_was_seen_panics() {
        let (r, c) = ring(4096);
        let end = r.try_push(5, |_| {}).unwrap();
        c.read(end, |_, _| true);
    }

    #[test]
    #[should_panic(expected = "not a record boundary")]
    fn read_from_inside_a_record_panics() {
        let (r, c) = ring(4096);
        r.try_push(100, |b| b.fill(0xff)).unwrap();
        r.try_push(100, |b| b.fill(0xff)).unwrap();
        c.read(0, |_, _| true);
        c.read(16, |_, _| true);
    }

    /// `Consumer` is `Sync`: a thread may read through a shared consumer after another one
    /// walked the records (here, the producing thread). Its read, even from a position inside
    /// a record whose word there happens to look like a header (which `verified` cannot tell
    /// from one), must not race the producer's writes: the frontier it reads carries them.
    /// Under Miri this was a data race between the producer's non-atomic write of the
    /// payload and the other thread's atomic load of that word (`tools/miri.sh`).
    #[test]
    fn a_read_on_another_thread_sees_what_the_walk_saw() {
        let (r, c) = ring(4096);
        // 24 payload bytes, at 8..32: a word, then one that reads as the header of a record
        // of 16 bytes, which ends where the real one does, at 32, then that one's payload.
        let fake = (16u64 | KIND_DATA << 32).to_ne_bytes();
        let c = &c;
        let seen = thread::scope(|s| {
            // Spawned before anything is written: the spawn orders nothing of it.
            let reader = s.spawn(move || {
                while c.frontier.load(StdRelaxed) < 32 {
                    std::hint::spin_loop();
                }
                read_all(c, 16).1
            });
            r.try_push(24, |b| {
                b[..8].fill(0x11);
                b[8..16].copy_from_slice(&fake);
                b[16..].fill(0x22);
            })
            .unwrap();
            assert_eq!(c.read(0, |_, _| true), 32);
            reader.join().unwrap()
        });
        // What it reads there is the payload's bytes, taken for a record: defined, if useless.
        assert_eq!(seen, vec![(32, vec![0x22; 8])]);
    }

    #[test]
    fn release_zeroes_and_space_is_reused() {
        let (r, mut c) = ring(4096);
        let mut pos = 0;
        let mut produced = 0u64;
        for lap in 0..10u8 {
            while let Ok(end) = r.try_push(100 + lap as usize, |b| b.fill(lap + 1)) {
                produced = end;
            }
            let mut n = 0;
            let new = c.read(pos, |_, p| {
                assert!(p.iter().all(|&x| x == lap + 1));
                n += 1;
                true
            });
            assert!(n > 0);
            assert_eq!(new, produced);
            let half = {
                // Release only up to some boundary in the middle first.
                let mut mid = pos;
                c.read(pos, |end, _| {
                    mid = end;
                    end - pos < 2048
                });
                mid
            };
            c.release(half);
            let bytes = raw_bytes(&r);
            let (a, b) = ((pos & 4095) as usize, (half & 4095) as usize);
            if a < b {
                assert!(bytes[a..b].iter().all(|&x| x == 0), "lap {lap}: not zeroed");
                assert!(bytes[b..b + 16].iter().any(|&x| x != 0), "zeroed too much");
            }
            c.release(new);
            pos = new;
        }
        assert!(raw_bytes(&r).iter().all(|&x| x == 0));
        assert!(produced > 10 * 4096 - 4096);
    }

    #[test]
    fn fill_panic_publishes_padding() {
        let (r, c) = ring(4096);
        let e1 = r.try_push(4, |b| b.fill(1)).unwrap();
        let r2 = Arc::clone(&r);
        let res = thread::spawn(move || r2.try_push(4, |_| panic!("boom"))).join();
        assert!(res.is_err());
        let e3 = r.try_push(4, |b| b.fill(3)).unwrap();
        let (pos, recs) = read_all(&c, 0);
        assert_eq!(pos, e3);
        assert_eq!(recs, vec![(e1, vec![1; 4]), (e3, vec![3; 4])]);
    }

    #[test]
    fn blocking_push_is_woken_by_release() {
        let (r, mut c) = ring(4096);
        for _ in 0..4 {
            r.try_push(1016, |_| {}).unwrap();
        }
        let r2 = Arc::clone(&r);
        let t = thread::spawn(move || r2.push(1016, |b| b.fill(7)));
        eventually("the producer to park", || {
            r.space_waiters.load(Ordering::SeqCst) == 1
        });
        assert!(!t.is_finished());
        let pos = c.read(0, |_, _| true);
        c.release(pos);
        eventually("the producer to be woken", || t.is_finished());
        assert_eq!(t.join().unwrap(), Ok(5 * 1024));
        assert_eq!(r.space_waiters.load(Ordering::SeqCst), 0);
        let (_, recs) = read_all(&c, pos);
        assert_eq!(recs, vec![(5 * 1024, vec![7; 1016])]);
    }

    #[test]
    fn blocking_push_is_woken_by_close() {
        let (r, _c) = ring(4096);
        for _ in 0..4 {
            r.try_push(1016, |_| {}).unwrap();
        }
        let r2 = Arc::clone(&r);
        let t = thread::spawn(move || r2.push(8, |_| unreachable!()));
        eventually("the producer to park", || {
            r.space_waiters.load(Ordering::SeqCst) == 1
        });
        r.close();
        eventually("the producer to be woken", || t.is_finished());
        assert_eq!(t.join().unwrap(), Err(PushError::Closed));
    }

    fn park_consumer_then<T: Send + 'static>(
        wake: impl FnOnce(&Ring) -> T,
        from: u64,
        r: &Arc<Ring>,
        c: Consumer,
    ) -> (bool, Consumer, T) {
        // A deadline only so that a lost wake-up fails the test instead of hanging it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let t = thread::spawn(move || {
            let got = c.wait(from, Some(deadline));
            (got, c)
        });
        eventually("the consumer to park", || {
            r.signal.state.load(Ordering::SeqCst) == WAITING
        });
        let out = wake(r);
        let (got, c) = t.join().unwrap();
        assert!(Instant::now() < deadline, "the consumer was not woken");
        (got, c, out)
    }

    #[test]
    fn wait_is_woken_by_push() {
        let (r, c) = ring(4096);
        let (got, c, end) = park_consumer_then(|r| r.try_push(3, |b| b.fill(5)).unwrap(), 0, &r, c);
        assert!(got);
        assert_eq!(read_all(&c, 0), (end, vec![(end, vec![5; 3])]));
        assert_eq!(r.signal.state.load(Ordering::SeqCst), RUNNING);
        // Already published: returns at once.
        assert!(c.wait(0, None));
    }

    #[test]
    fn wait_is_woken_by_notify_and_close() {
        let (r, c) = ring(4096);
        let (got, c, ()) = park_consumer_then(|r| r.notify_consumer(), 0, &r, c);
        assert!(!got);
        // A notification made while the consumer is busy is not lost.
        r.notify_consumer();
        assert!(!c.wait(0, None));
        let (got, c, ()) = park_consumer_then(|r| r.close(), 0, &r, c);
        assert!(!got);
        assert!(!c.wait(0, None), "closed and empty: returns at once");
    }

    #[test]
    fn wait_times_out_and_sees_padding_through() {
        let (r, mut c) = ring(4096);
        assert!(!c.wait(0, Some(Instant::now() + Duration::from_millis(2))));
        for _ in 0..20 {
            r.try_push(192, |_| {}).unwrap();
        }
        let pos = c.read(0, |_, _| true);
        c.release(pos);
        // A record that wraps: padding first, the record at the start.
        let end = r.try_push(200, |_| {}).unwrap();
        assert!(c.wait(pos, None));
        let (after, recs) = read_all(&c, pos);
        assert_eq!((after, recs.len()), (end, 1));
    }

    #[test]
    fn many_producers_nothing_lost_duplicated_or_torn() {
        const PRODUCERS: u8 = 4;
        // Under Miri, fewer records through a smaller ring: still many laps, each wrapping.
        const PER: u32 = if cfg!(miri) { 40 } else { 200_000 };
        let (r, mut c) = ring(if cfg!(miri) { 4096 } else { 256 << 10 });

        fn body_len(p: u8, seq: u32) -> usize {
            (seq.wrapping_mul(2_654_435_761) >> 7) as usize % 300 + p as usize
        }
        fn checksum(b: &[u8]) -> u32 {
            b.iter().fold(0x811c_9dc5u32, |h, &x| {
                (h ^ x as u32).wrapping_mul(0x0100_0193)
            })
        }

        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let r = Arc::clone(&r);
                thread::spawn(move || {
                    let mut last = 0;
                    for seq in 0..PER {
                        let n = body_len(p, seq);
                        let end = r
                            .push(1 + 4 + n + 4, |b| {
                                b[0] = p;
                                b[1..5].copy_from_slice(&seq.to_le_bytes());
                                for (i, x) in b[5..5 + n].iter_mut().enumerate() {
                                    *x = (i as u32 ^ seq) as u8 ^ p;
                                }
                                let sum = checksum(&b[..5 + n]);
                                b[5 + n..].copy_from_slice(&sum.to_le_bytes());
                            })
                            .unwrap();
                        assert!(end > last, "tickets must increase per producer");
                        last = end;
                    }
                })
            })
            .collect();

        let mut next = [0u32; PRODUCERS as usize];
        let mut total = 0u64;
        let mut pos = 0;
        let mut last_end = 0;
        let mut unreleased = 0;
        while total < PRODUCERS as u64 * PER as u64 {
            let before = total;
            pos = c.read(pos, |end, b| {
                assert!(end > last_end);
                last_end = end;
                let p = b[0] as usize;
                let seq = u32::from_le_bytes(b[1..5].try_into().unwrap());
                let n = b.len() - 9;
                assert_eq!(n, body_len(p as u8, seq), "length of {p}/{seq}");
                let sum = u32::from_le_bytes(b[5 + n..].try_into().unwrap());
                assert_eq!(sum, checksum(&b[..5 + n]), "torn record {p}/{seq}");
                assert_eq!(seq, next[p], "producer {p}: lost, duplicated or reordered");
                next[p] += 1;
                total += 1;
                true
            });
            unreleased += total - before;
            if unreleased >= 1024 || total == before {
                c.release(pos);
                unreleased = 0;
            }
            if total == before {
                c.wait(pos, Some(Instant::now() + Duration::from_millis(10)));
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(next, [PER; PRODUCERS as usize]);
        assert_eq!(pos, r.tail());
        let (_, rest) = read_all(&c, pos);
        assert!(rest.is_empty());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    const CAP: usize = 64; // max payload 8: every 8-byte record takes 16 bytes

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(f);
    }

    /// Advances an empty ring to `pos` (8-aligned) with records the test never sees.
    fn advance(r: &Ring, c: &mut Consumer, pos: u64) {
        while r.tail() + 16 <= pos {
            r.try_push(8, |_| {}).unwrap();
        }
        while r.tail() < pos {
            r.try_push(0, |_| {}).unwrap();
        }
        let end = c.read(c.ring.head(), |_, _| true);
        assert_eq!(end, pos);
        c.release(end);
    }

    fn payload(p: u8, i: u8) -> [u8; 8] {
        [p, i, p ^ i, 7, 7, 7, 7, p.wrapping_add(i)]
    }

    /// Two producers, two records each, across the wrap of a 64-byte ring that cannot hold all
    /// four at once, with the consumer releasing as it goes. Checks order, content, and (via
    /// the access trackers) that no byte is written while it may be read.
    #[test]
    fn two_producers_wrap() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            advance(&r, &mut c, 56);
            let producers: Vec<_> = (0..2u8)
                .map(|p| {
                    let r = Arc::clone(&r);
                    thread::spawn(move || {
                        for i in 0..2u8 {
                            loop {
                                match r.try_push(8, |b| b.copy_from_slice(&payload(p, i))) {
                                    Ok(_) => break,
                                    Err(PushError::Full) => thread::yield_now(),
                                    Err(e) => panic!("{e:?}"),
                                }
                            }
                        }
                    })
                })
                .collect();
            let mut next = [0u8; 2];
            let mut pos = 56;
            let mut last_end = 0;
            while next != [2, 2] {
                let before = pos;
                pos = c.read(pos, |end, b| {
                    assert!(end > last_end);
                    last_end = end;
                    let p = b[0];
                    assert_eq!(b, payload(p, next[p as usize]));
                    next[p as usize] += 1;
                    true
                });
                c.release(pos);
                if pos == before {
                    thread::yield_now();
                }
            }
            for p in producers {
                p.join().unwrap();
            }
            assert_eq!(pos, r.tail());
        });
    }

    /// Space freed by one release and reused by two producers: the second may see the new head
    /// only through `head_cache`, which must still order the consumer's zeroing before its
    /// writes.
    #[test]
    fn head_cache_carries_the_release() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            for i in 0..4 {
                r.try_push(8, |b| b.copy_from_slice(&payload(9, i)))
                    .unwrap();
            }
            let pos = c.read(0, |_, _| true);
            let producers: Vec<_> = (0..2u8)
                .map(|p| {
                    let r = Arc::clone(&r);
                    thread::spawn(move || r.push(8, |b| b.copy_from_slice(&payload(p, 0))).unwrap())
                })
                .collect();
            c.release(pos);
            let mut ends: Vec<u64> = producers.into_iter().map(|p| p.join().unwrap()).collect();
            ends.sort_unstable();
            assert_eq!(ends, [80, 96]);
            let mut got = Vec::new();
            assert_eq!(
                c.read(pos, |_, b| {
                    got.push(b[0]);
                    true
                }),
                96
            );
            got.sort_unstable();
            assert_eq!(got, [0, 1]);
        });
    }

    /// The consumer sleeps in `wait` with no deadline while two producers publish: a lost
    /// wake-up would leave it parked forever, which loom reports as a deadlock.
    #[test]
    fn wait_never_misses_a_publish() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            advance(&r, &mut c, 48); // the second record wraps
            let producers: Vec<_> = (0..2u8)
                .map(|p| {
                    let r = Arc::clone(&r);
                    thread::spawn(move || {
                        r.try_push(8, |b| b.copy_from_slice(&payload(p, 0)))
                            .unwrap();
                    })
                })
                .collect();
            let mut pos = 48;
            let mut seen = 0;
            while seen < 2 {
                assert!(c.wait(pos, None));
                pos = c.read(pos, |_, _| {
                    seen += 1;
                    true
                });
            }
            for p in producers {
                p.join().unwrap();
            }
        });
    }

    /// The flusher's thread sleeps in `wait_for_claim` (no deadline, the consumer held
    /// elsewhere) while a producer claims and publishes, and `notify_consumer` wakes it
    /// too: a lost wake-up would leave it parked forever, which loom reports as a deadlock.
    #[test]
    fn wait_for_claim_never_misses_a_claim_or_a_notify() {
        model(|| {
            let (r, c) = new_pair(CAP);
            let r2 = Arc::clone(&r);
            let producer = thread::spawn(move || {
                r2.try_push(8, |b| b.copy_from_slice(&payload(1, 0)))
                    .unwrap();
            });
            r.wait_for_claim(0);
            assert!(r.tail() > 0);
            producer.join().unwrap();
            let r3 = Arc::clone(&r);
            let notifier = thread::spawn(move || r3.notify_consumer());
            let tail = r.tail();
            r.wait_for_claim(tail);
            notifier.join().unwrap();
            assert_eq!(c.read(0, |_, _| true), tail);
        });
    }

    /// A producer blocked in `push` on a full ring must be woken by `release`.
    #[test]
    fn push_waits_for_release() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            for i in 0..4 {
                r.try_push(8, |b| b.copy_from_slice(&payload(9, i)))
                    .unwrap();
            }
            let r2 = Arc::clone(&r);
            let t = thread::spawn(move || r2.push(8, |b| b.copy_from_slice(&payload(1, 1))));
            let pos = c.read(0, |_, _| true);
            assert_eq!(pos, 64);
            c.release(16);
            assert_eq!(t.join().unwrap(), Ok(80));
            let mut got = Vec::new();
            let end = c.read(pos, |_, b| {
                got.push(b.to_vec());
                true
            });
            assert_eq!((end, got), (80, vec![payload(1, 1).to_vec()]));
        });
    }

    /// A task waiting for space in `poll_push` (driven by loom's `block_on`, which sleeps
    /// until its waker fires) must be woken by `release`: a lost wake-up is a deadlock.
    #[test]
    fn poll_push_is_woken_by_release() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            for i in 0..4 {
                r.try_push(8, |b| b.copy_from_slice(&payload(9, i)))
                    .unwrap();
            }
            let r2 = Arc::clone(&r);
            let t = thread::spawn(move || {
                let mut slot = SpaceSlot::default();
                loom::future::block_on(std::future::poll_fn(|cx| {
                    r2.poll_push(8, cx, &mut slot, |b| b.copy_from_slice(&payload(1, 1)))
                }))
            });
            let pos = c.read(0, |_, _| true);
            assert_eq!(pos, 64);
            c.release(16);
            assert_eq!(t.join().unwrap(), Ok(80));
            let mut got = Vec::new();
            let end = c.read(pos, |_, b| {
                got.push(b.to_vec());
                true
            });
            assert_eq!((end, got), (80, vec![payload(1, 1).to_vec()]));
        });
    }

    /// `close` wakes a task waiting for space, which then gets `Closed`.
    #[test]
    fn close_wakes_a_waiting_task() {
        model(|| {
            let (r, _c) = new_pair(CAP);
            for _ in 0..4 {
                r.try_push(8, |_| {}).unwrap();
            }
            let r2 = Arc::clone(&r);
            let t = thread::spawn(move || {
                let mut slot = SpaceSlot::default();
                loom::future::block_on(std::future::poll_fn(|cx| {
                    r2.poll_push(8, cx, &mut slot, |_| {})
                }))
            });
            r.close();
            assert_eq!(t.join().unwrap(), Err(PushError::Closed));
        });
    }

    /// A future polled again while it waits (here first by hand, with a waker that does
    /// nothing) replaces its entry's waker: the release must wake the waker of the last
    /// poll, which `block_on` sleeps on, or the task never runs again.
    #[test]
    fn a_task_polled_again_is_woken_through_its_last_waker() {
        model(|| {
            let (r, mut c) = new_pair(CAP);
            for i in 0..4 {
                r.try_push(8, |b| b.copy_from_slice(&payload(9, i)))
                    .unwrap();
            }
            let r2 = Arc::clone(&r);
            let t = thread::spawn(move || {
                let mut slot = SpaceSlot::default();
                let noop = std::task::Waker::noop();
                let first = r2.poll_push(8, &mut Context::from_waker(noop), &mut slot, |_| {});
                if let Poll::Ready(r) = first {
                    return r;
                }
                loom::future::block_on(std::future::poll_fn(|cx| {
                    r2.poll_push(8, cx, &mut slot, |_| {})
                }))
            });
            c.read(0, |_, _| true);
            c.release(16);
            assert_eq!(t.join().unwrap(), Ok(80));
        });
    }

    /// `close` wakes both a producer parked on a full ring and the parked consumer, and
    /// `notify_consumer` wakes the consumer.
    #[test]
    fn close_and_notify_wake_sleepers() {
        model(|| {
            let (r, c) = new_pair(CAP);
            for _ in 0..4 {
                r.try_push(8, |_| {}).unwrap();
            }
            let r2 = Arc::clone(&r);
            let producer = thread::spawn(move || r2.push(8, |_| {}));
            let r3 = Arc::clone(&r);
            let closer = thread::spawn(move || {
                r3.notify_consumer();
                r3.close();
            });
            let pos = c.read(0, |_, _| true);
            // Woken by notify or close; never parked forever.
            assert!(!c.wait(pos, None));
            assert_eq!(producer.join().unwrap(), Err(PushError::Closed));
            closer.join().unwrap();
            assert!(!c.wait(pos, None));
        });
    }
}
