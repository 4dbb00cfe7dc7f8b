//! Idempotent requests: a put, delete or write batch may carry a [`RequestId`]; the engine
//! logs it with the request, and a second submission of an id it remembers is not logged
//! again: its ticket completes with [`Outcome::Duplicate`] and the batch of the original.
//!
//! The flusher, the one thread that sees every window whole, decides: it looks each id up in
//! the [`Ids`] table as it takes the request into a window; an unknown id enters the table
//! (with the batch the window will write) and the frame's trailer; a known one (logged, in
//! flight, or earlier in the same window) drops the request's operations before coalescing and
//! records the request's ring position in the completion's [`Duplicates`], with the original's
//! batch. A ticket looks there once complete. So the submit path pays nothing but the id's 16
//! bytes in the ring, the flusher one hash probe per id (and one per id it forgets), and a
//! ticket one atomic load unless duplicates were seen.
//!
//! What is remembered is bounded by [`IdHorizon`]: the newest `ids` ids, and with an age, only
//! those logged within it. The table is rebuilt at open from the `ids` file, which
//! `retire_before` writes before it removes segments holding ids still inside the horizon,
//! then from the frames' trailers (docs/FORMAT.md, "Carried request ids").

use crate::error::{Error, Result};
use crate::seq::Seq;
use crate::ticket::Ticket;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A client's name for one request (16 bytes: a UUID, a hash of the request's content, a
/// voucher number): submitting it again is a no-op that reports the first submission.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl From<[u8; 16]> for RequestId {
    fn from(b: [u8; 16]) -> RequestId {
        RequestId(b)
    }
}

impl From<u128> for RequestId {
    /// Big-endian, so ids made from counting numbers sort as the numbers do.
    fn from(n: u128) -> RequestId {
        RequestId(n.to_be_bytes())
    }
}

impl fmt::Display for RequestId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// How long the engine remembers request ids (`Config::request_ids`): a resubmission of a
/// forgotten id is logged again, as a new request. Retirement does not shorten it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdHorizon {
    /// The newest this many ids are always remembered; up to twice as many may be, and a
    /// window's more (they are forgotten a generation of `ids` at a time, between windows).
    /// Whatever the horizon, an id whose batch is not yet durable is remembered (with the
    /// ids of the windows in flight past the bound meanwhile): a retry of a request in
    /// flight is always its duplicate. Memory: up to about 140 bytes per id of
    /// this bound, only once ids are used. Disk, once ids are used: the `ids` file and the
    /// temporary kept for its next replacement (so that a retirement on a full disk needs no
    /// room for it: README, "A full disk"), each 64 bytes per id of this bound (at most
    /// 64 MiB).
    pub ids: usize,
    /// If set, ids are forgotten once older than this (by when they were logged), again a
    /// generation at a time: an id is remembered at least until the newest id of its
    /// generation is this old, and its batch is durable.
    pub age: Option<Duration>,
}

impl Default for IdHorizon {
    fn default() -> Self {
        IdHorizon {
            ids: 1 << 18,
            age: None,
        }
    }
}

/// What an idempotent request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This submission was logged, in batch `Seq`.
    Written(Seq),
    /// The id was already logged, in flight, or submitted earlier in the same window when
    /// this submission was taken in: nothing was written; the original is durable in batch
    /// `seq`. (A refused original gives its id back: see
    /// [`Engine::merge_with_id`](crate::Engine::merge_with_id).)
    Duplicate {
        /// The batch the original submission was logged in.
        seq: Seq,
    },
}

impl Outcome {
    /// The batch holding the request, whichever submission wrote it.
    pub fn seq(&self) -> Seq {
        match *self {
            Outcome::Written(seq) | Outcome::Duplicate { seq } => seq,
        }
    }

    /// True for a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate { .. })
    }
}

/// The ticket of an idempotent request: completes once the request (or the original it
/// duplicates) is durable, with its [`Outcome`]. A `Future` too, runtime-free.
#[must_use = "a ticket says when the request is durable; drop it only if you do not care"]
#[derive(Clone, Debug)]
pub struct IdTicket {
    ticket: Ticket,
}

impl IdTicket {
    pub(crate) fn new(ticket: Ticket) -> IdTicket {
        IdTicket { ticket }
    }

    /// The request's place in the engine's total order (see [`Ticket::position`]).
    pub fn position(&self) -> u64 {
        self.ticket.position()
    }

    /// True once the outcome is known.
    pub fn is_done(&self) -> bool {
        self.ticket.is_done()
    }

    /// The outcome if the request is complete, without blocking.
    pub fn try_result(&self) -> Option<Result<Outcome>> {
        Some(self.outcome(self.ticket.try_result()?))
    }

    /// Blocks until the request is durable (or the engine failed): see [`Outcome`]. Looked
    /// at long after it completed (more than 65,536 duplicates or windows later) it may give
    /// [`Error::SeqUnknown`], as a [`Ticket`] does.
    ///
    /// # Errors
    ///
    /// As [`Ticket::wait`]'s, and [`Error::SeqUnknown`] as above.
    pub fn wait(&self) -> Result<Outcome> {
        self.outcome(self.ticket.wait())
    }

    /// As `wait`, giving up with `Error::Timeout` after `timeout` (the request goes on).
    ///
    /// # Errors
    ///
    /// As [`IdTicket::wait`]'s, and [`Error::Timeout`] as above.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Outcome> {
        self.outcome(self.ticket.wait_timeout(timeout))
    }

    /// The outcome, once the ticket completed with `done` (its own window's batch).
    fn outcome(&self, done: Result<Seq>) -> Result<Outcome> {
        let own = done?;
        let pos = self.ticket.position();
        match self.ticket.duplicates().find(pos) {
            DupFound::Duplicate(seq) => Ok(Outcome::Duplicate { seq: Seq::new(seq) }),
            DupFound::Written => Ok(Outcome::Written(own)),
            DupFound::Forgotten => Err(Error::SeqUnknown { position: pos }),
        }
    }
}

impl Future for IdTicket {
    type Output = Result<Outcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Outcome>> {
        match Pin::new(&mut self.ticket).poll(cx) {
            Poll::Ready(done) => Poll::Ready(self.outcome(done)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The idempotent half of the engine's API.
impl crate::Engine {
    /// As [`Engine::put`](crate::Engine::put), with request id `id`: if the engine
    /// remembers `id` (logged, or in flight: see [`IdHorizon`]), nothing is written and the
    /// ticket completes with [`Outcome::Duplicate`] once the original is durable.
    ///
    /// # Errors
    ///
    /// As [`Engine::put`](crate::Engine::put)'s; a duplicate is an outcome, not an error.
    pub fn put_with_id(
        &self,
        id: impl Into<RequestId>,
        key: &[u8],
        value: &[u8],
    ) -> Result<IdTicket> {
        self.check_key(key)?;
        self.check_value(value)?;
        let pos = self.submit_put(key, value, Some(&id.into()))?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// As [`Engine::delete`](crate::Engine::delete), with request id `id` (see
    /// [`Engine::put_with_id`](crate::Engine::put_with_id)).
    ///
    /// # Errors
    ///
    /// As [`Engine::delete`](crate::Engine::delete)'s; a duplicate is an outcome, not an error.
    pub fn delete_with_id(&self, id: impl Into<RequestId>, key: &[u8]) -> Result<IdTicket> {
        self.check_key(key)?;
        let pos = self.submit_delete(key, Some(&id.into()))?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// As [`Engine::write`](crate::Engine::write), with request id `id` for the whole batch
    /// (see [`Engine::put_with_id`](crate::Engine::put_with_id)): a duplicate applies none
    /// of its operations. A batch refused whole (a merge in it that the operator refused, or
    /// that could not fit: `Error::MergeRefused`) gives its id back, as a refused
    /// [`merge_with_id`](crate::Engine::merge_with_id) does: nothing of it is logged, so a
    /// retry with the same id is applied.
    ///
    /// # Errors
    ///
    /// As [`Engine::write`](crate::Engine::write)'s; a duplicate is an outcome, not an error.
    pub fn write_with_id(
        &self,
        id: impl Into<RequestId>,
        batch: &crate::WriteBatch,
    ) -> Result<IdTicket> {
        self.check_batch(batch)?;
        let pos = self.submit_batch(batch, Some(&id.into()))?;
        Ok(IdTicket::new(self.ticket(pos)))
    }

    /// Whether the engine remembers request id `id`, and if so the batch that logs it (which
    /// may not be durable yet).
    pub fn request_id_seq(&self, id: impl Into<RequestId>) -> Option<Seq> {
        self.inner.ids.lock().get(&id.into()).map(Seq::new)
    }
}

/// The requests the flusher found to be duplicates: (ring end position, the original's
/// batch), in position order, the newest [`DUPLICATES_KEPT`] of them. Lives in the completion,
/// which every ticket already holds.
#[derive(Default)]
pub(crate) struct Duplicates {
    /// Duplicates recorded since open: a ticket skips the lock while it is 0. Stored before the
    /// watermark passes the duplicate, so a ticket that saw itself complete sees it.
    recorded: AtomicU64,
    kept: Mutex<DupWindow>,
}

#[derive(Default)]
struct DupWindow {
    entries: VecDeque<(u64, u64)>,
    /// The position of the newest duplicate no longer kept (0: none).
    forgotten_to: u64,
}

/// How many duplicates a ticket can still be told about (as many as `SeqMap` keeps windows).
pub(crate) const DUPLICATES_KEPT: usize = 1 << 16;

/// What [`Duplicates::find`] knows of a position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DupFound {
    Duplicate(u64),
    Written,
    /// At or before a duplicate no longer kept: cannot tell.
    Forgotten,
}

impl Duplicates {
    /// The flusher found the request ending at `pos` (past every position recorded before)
    /// to duplicate one logged in batch `seq`.
    pub fn record(&self, pos: u64, seq: u64) {
        let mut k = self.kept.lock();
        if k.entries.len() == DUPLICATES_KEPT {
            let (old, _) = k.entries.pop_front().expect("full");
            k.forgotten_to = old;
        }
        k.entries.push_back((pos, seq));
        drop(k);
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the request ending at `pos`, complete, was a duplicate.
    pub fn find(&self, pos: u64) -> DupFound {
        if self.recorded.load(Ordering::Relaxed) == 0 {
            return DupFound::Written;
        }
        let k = self.kept.lock();
        match k.entries.binary_search_by_key(&pos, |e| e.0) {
            Ok(i) => DupFound::Duplicate(k.entries[i].1),
            Err(_) if pos <= k.forgotten_to => DupFound::Forgotten,
            Err(_) => DupFound::Written,
        }
    }
}

/// What the table knows of one id: the batch that logs it, and when (nanoseconds since the
/// Unix epoch: when it was taken in, or its frame's commit time after a reopen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdEntry {
    pub seq: u64,
    pub time: u64,
}

/// The ids the engine remembers, in two generations: ids enter the current one; once it holds
/// `horizon.ids`, it becomes the previous one and the old previous one is forgotten whole
/// (once the batches it names are durable: [`Ids::settle`]). So the newest `horizon.ids` ids
/// are always remembered and at most twice as many (and the windows' in flight), and nothing is
/// ever removed one by one (no per-id eviction, no tombstones in the tables): one probe of each
/// table per id. With an age, a generation whose newest id is older than it is forgotten whole.
/// The flusher changes it (one lock per window turn); `retire_before` and
/// `Engine::request_id_seq` read it.
///
/// The previous generation is frozen (nothing enters it), so it is shared: a retirement takes
/// it with a reference count under the engine's `ids` lock ([`Ids::carry_before`]) and reads
/// it after; a turn or an age that finds it still shared leaves it to the retirement and
/// starts a new table.
pub(crate) struct Ids {
    current: Generation,
    previous: std::sync::Arc<Generation>,
    /// One hasher for both tables: an id is hashed once per lookup.
    hasher: foldhash::fast::RandomState,
    horizon: IdHorizon,
    /// Entries visited and compared by [`Ids::carry_before`], which runs under the engine's
    /// `ids` lock (for tests: the work a retirement does there).
    #[cfg(test)]
    work: std::cell::Cell<u64>,
}

#[derive(Clone)]
struct Generation {
    table: hashbrown::HashTable<(RequestId, IdEntry)>,
    /// The newest `IdEntry::time` in `table`.
    newest: u64,
    /// The largest `IdEntry::seq` in `table` (0: none): the generation is forgotten only
    /// once that batch is durable.
    last_seq: u64,
    /// At most the smallest `IdEntry::seq` in `table` (`u64::MAX`: none): a retirement of the
    /// batches below it copies nothing of this generation.
    first_seq: u64,
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            table: Default::default(),
            newest: 0,
            last_seq: 0,
            first_seq: u64::MAX,
        }
    }
}

impl Generation {
    fn find(&self, hash: u64, id: &RequestId) -> Option<&IdEntry> {
        self.table.find(hash, |(k, _)| k == id).map(|(_, e)| e)
    }

    /// Forgets everything, keeping the table's allocation for the next generation.
    fn clear(&mut self) {
        self.table.clear();
        self.newest = 0;
        self.last_seq = 0;
        self.first_seq = u64::MAX;
    }

    /// Its ids logged in batches before `seq`, appended to `out`.
    fn copy_before(&self, seq: u64, out: &mut Vec<(RequestId, IdEntry)>) {
        if self.first_seq < seq {
            out.extend(self.table.iter().filter(|(_, e)| e.seq < seq).copied());
        }
    }

    /// Whether every batch its ids name is durable (`durable`: the last durable batch).
    fn durable(&self, durable: u64) -> bool {
        self.last_seq <= durable
    }
}

impl fmt::Debug for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ids").field("len", &self.len()).finish()
    }
}

impl Ids {
    pub fn new(horizon: IdHorizon) -> Ids {
        Ids {
            current: Generation::default(),
            previous: Default::default(),
            hasher: Default::default(),
            horizon,
            #[cfg(test)]
            work: Default::default(),
        }
    }

    /// The batch that logs `id`, if it is remembered.
    pub fn get(&self, id: &RequestId) -> Option<u64> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(id);
        let in_current = self.current.find(hash, id);
        in_current
            .or_else(|| self.previous.find(hash, id))
            .map(|e| e.seq)
    }

    /// Takes `id` back out (the flusher refused its request after it entered the window, and
    /// the window's frame will not log it): a retry is then a new request, not a duplicate
    /// of nothing applied.
    pub fn untake(&mut self, id: RequestId) {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(id);
        if let Ok(e) = self.current.table.find_entry(hash, |(k, _)| *k == id) {
            e.remove();
            return;
        }
        // Not reached: a window's ids enter the current generation, and the generations turn
        // only once the window's ids are final. Were it, a retirement holding the previous
        // generation keeps its own copy (and carries the id, which only remembers more).
        if self.previous.find(hash, &id).is_some() {
            let previous = std::sync::Arc::make_mut(&mut self.previous);
            if let Ok(e) = previous.table.find_entry(hash, |(k, _)| *k == id) {
                e.remove();
            }
        }
    }

    /// Enters `id`, logged in batch `entry.seq`, unless it is remembered: then `Err` with the
    /// batch that logs it. The generations turn at [`Ids::settle`], not here.
    pub fn take(&mut self, id: RequestId, entry: IdEntry) -> std::result::Result<(), u64> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(id);
        if let Some(e) = self.previous.find(hash, &id) {
            return Err(e.seq);
        }
        let hasher = &self.hasher;
        let rehash = |(k, _): &(RequestId, IdEntry)| hasher.hash_one(k);
        match self.current.table.entry(hash, |(k, _)| *k == id, rehash) {
            hashbrown::hash_table::Entry::Occupied(o) => return Err(o.get().1.seq),
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((id, entry));
            }
        }
        self.current.newest = self.current.newest.max(entry.time);
        self.current.last_seq = self.current.last_seq.max(entry.seq);
        self.current.first_seq = self.current.first_seq.min(entry.seq);
        Ok(())
    }

    /// Turns the generations if the current one is full: the previous one is forgotten,
    /// unless it names a batch past `durable` (the last durable batch): then the current
    /// one grows on until a later call finds it durable. Called once the ids taken are final
    /// (the flusher's, after its window gave back the ids of its refused requests): had an
    /// id that is given back later filled the current generation, the turn would have
    /// forgotten ids the horizon promises (the newest `ids` logged), which nothing brings
    /// back, and a retry of one of them would be applied again.
    ///
    /// The floor: an id whose batch is in flight is never forgotten, whatever the horizon,
    /// so a retry of a request not yet acknowledged is always its duplicate (with `ids: 1`
    /// a turn at every window forgot the window before, still syncing). What it holds past
    /// the horizon is the ids of the windows in flight, which `UNDURABLE_FRAMES_MAX` bounds;
    /// it costs a load of the durable batch per window with ids, and a comparison.
    pub fn settle(&mut self, durable: u64) {
        if self.current.table.len() >= self.horizon.ids && self.previous.durable(durable) {
            match std::sync::Arc::get_mut(&mut self.previous) {
                // Its table's allocation becomes the current one's.
                Some(previous) => {
                    std::mem::swap(&mut self.current, previous);
                    self.current.clear();
                }
                // A retirement is reading it: it keeps it.
                None => self.previous = std::sync::Arc::new(std::mem::take(&mut self.current)),
            }
        }
    }

    /// Forgets the generations wholly beyond the horizon's age at `now` whose batches are
    /// all durable (up to `durable`; see [`Ids::settle`]'s floor).
    pub fn evict(&mut self, now: u64, durable: u64) {
        let Some(age) = self.horizon.age else { return };
        let oldest_kept = now.saturating_sub(nanos(age));
        if self.previous.newest < oldest_kept && self.previous.durable(durable) {
            match std::sync::Arc::get_mut(&mut self.previous) {
                Some(previous) => previous.clear(),
                None => self.previous = Default::default(),
            }
        }
        if self.current.newest < oldest_kept && self.current.durable(durable) {
            self.current.clear();
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.current.table.len() + self.previous.table.len()
    }

    /// What a retirement of the batches before `seq` carries, taken under the engine's `ids`
    /// lock, which the flusher takes per window with ids: the frozen previous generation, by
    /// reference, and a copy of the current one's ids logged before `seq` (none, without a
    /// pass over it, when it holds none: a retirement of segments older than the current
    /// generation). [`Carried::ids`] does the rest after the lock.
    pub fn carry_before(&self, seq: u64) -> Carried {
        let mut current = Vec::new();
        #[cfg(test)]
        if self.current.first_seq < seq {
            self.work
                .set(self.work.get() + self.current.table.len() as u64);
        }
        self.current.copy_before(seq, &mut current);
        Carried {
            previous: self.previous.clone(),
            current,
            seq,
        }
    }

    /// The remembered ids logged in batches before `seq`, in no order: [`Ids::carry_before`]
    /// and [`Carried::ids`] under one borrow.
    #[cfg(test)]
    pub fn logged_before(&self, seq: u64) -> Vec<(RequestId, IdEntry)> {
        self.carry_before(seq).ids()
    }
}

/// The remembered ids a retirement carries, as [`Ids::carry_before`] took them under the lock.
pub(crate) struct Carried {
    previous: std::sync::Arc<Generation>,
    current: Vec<(RequestId, IdEntry)>,
    seq: u64,
}

impl Carried {
    /// The ids logged in batches before the retirement's, in no order ([`oldest_first`]
    /// sorts them): the previous generation's read now, without the lock (nothing changes
    /// it while it is shared), and the current one's copied under it.
    pub fn ids(self) -> Vec<(RequestId, IdEntry)> {
        let mut ids = self.current;
        self.previous.copy_before(self.seq, &mut ids);
        ids
    }
}

/// Sorts ids [`Carried::ids`] gave oldest first (by batch, then id), as the `ids`
/// file holds them.
pub(crate) fn oldest_first(ids: &mut [(RequestId, IdEntry)]) {
    ids.sort_unstable_by_key(|(id, e)| (e.seq, *id));
}

/// `d` in nanoseconds, `u64::MAX` if it is longer (584 years): a huge configured age is
/// "forever", never a wrapped, arbitrary one.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the Unix epoch now (0 before it: a clock set to 1970 ages nothing).
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The ids an open finds: the `ids` file's, then each frame's as the scan visits it, the
/// newest `horizon.ids` distinct ids kept. An id found again (a crash between a
/// retirement's removals keeps a segment whose ids the `ids` file already holds) counts
/// once, at its later place: counting it twice would push ids the horizon promises out.
pub(crate) struct Found {
    /// In the order found; `None` where a later entry of the same id superseded it.
    ids: VecDeque<Option<FoundId>>,
    /// Each kept id's place: its entry is `ids[place - front]`.
    place: hashbrown::HashMap<RequestId, u64, foldhash::fast::RandomState>,
    /// The place of `ids[0]`.
    front: u64,
    horizon: IdHorizon,
    /// The `ids` file's entry naming the largest batch (the first of them), if it has any:
    /// every batch it names is below the log's end, and a log that holds no segment goes on
    /// past it (`log::open::recover`), so that no batch number the carried ids name is given
    /// again.
    pub carried_last: Option<CarriedAt>,
    /// The carried ids still remembered that name a batch of the live log (at or past its
    /// first frame's), which the frame of that batch must log: a crash between a
    /// retirement's `ids` file and its removals leaves such entries, each logged by its
    /// batch. `None` until the first frame is found.
    unlogged: Option<std::collections::BTreeMap<CarriedAt, RequestId>>,
}

/// An id found: (id, batch, time, where: its entry's offset in the `ids` file, or
/// [`IN_FRAME`]).
type FoundId = (RequestId, u64, u64, u64);

/// [`FoundId`]'s place of an id found in a frame.
const IN_FRAME: u64 = u64::MAX;

/// An entry of the `ids` file: the batch it names, and its offset in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CarriedAt {
    pub seq: u64,
    pub offset: u64,
}

/// Starts an open's collection of ids with `dir`'s `ids` file (ids of retired segments),
/// read a chunk at a time: the memory is the horizon's, whatever the file's size.
pub(crate) fn carried(dir: &std::path::Path, horizon: IdHorizon) -> Result<Found> {
    let new = || Found {
        ids: VecDeque::new(),
        place: hashbrown::HashMap::default(),
        front: 0,
        horizon,
        carried_last: None,
        unlogged: None,
    };
    let path = dir.join(crate::log::dir::IDS_FILE);
    // Read again from its start if a retirement in another process replaced the file while
    // it was read (`dir::read_side_file`): what a bad read found is dropped.
    let read = crate::log::dir::read_ids(dir, |file, len| {
        let mut found = new();
        let mut offset = IDS_HEADER as u64;
        let each = |(id, seq, time): (RequestId, u64, u64)| {
            // Entries' batches are at most `SEQ_MAX` (checked by `read_carried`).
            let at = CarriedAt { seq, offset };
            if found.carried_last.is_none_or(|l| l.seq < seq) {
                found.carried_last = Some(at);
            }
            found.push((id, seq, time, offset));
            offset += IDS_ENTRY as u64;
        };
        match read_carried(std::io::BufReader::new(file), len, each) {
            Ok(()) => Ok(Ok(found)),
            Err(CarriedError::Bad(r)) => Ok(Err(r)),
            Err(CarriedError::Io(e)) => Err(Error::io("read request ids", &path, e)),
        }
    })?;
    match read {
        None => Ok(new()),
        Some(Ok(found)) => Ok(found),
        Some(Err(r)) => Err(r.error(&path)),
    }
}

impl Found {
    /// The ids found so far, in order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(RequestId, u64, u64)> {
        self.ids.iter().flatten().map(|e| (e.0, e.1, e.2)).collect()
    }

    fn push(&mut self, id: FoundId) {
        let place = self.front + self.ids.len() as u64;
        if let Some(earlier) = self.place.insert(id.0, place) {
            self.ids[(earlier - self.front) as usize] = None;
        }
        self.ids.push_back(Some(id));
        while self.place.len() > self.horizon.ids {
            if let Some(Some((old, ..))) = self.ids.pop_front() {
                self.place.remove(&old);
            }
            self.front += 1;
        }
        while let Some(None) = self.ids.front() {
            self.ids.pop_front();
            self.front += 1;
        }
        // Superseded entries inside: dropped once they outnumber the kept ones, so the
        // memory stays about the horizon's.
        if self.ids.len() > 2 * self.place.len() + 64 {
            self.ids.retain(Option::is_some);
            self.front = 0;
            for (i, e) in self.ids.iter().enumerate() {
                let (id, ..) = e.expect("only kept entries are left");
                self.place.insert(id, i as u64);
            }
        }
    }

    /// Adds the ids of `frame`, the next in log order (of the log in `dir`).
    ///
    /// # Errors
    ///
    /// `Error::Corrupt` naming the `ids` file and the entry's offset if a carried id names
    /// this frame's batch (or an earlier one of the live log) and the frame does not log it:
    /// a retry of it would be answered "duplicate of batch n" though batch n logs something
    /// else.
    pub fn frame(
        &mut self,
        dir: &std::path::Path,
        frame: &crate::log::format::Frame<'_>,
    ) -> Result<()> {
        let (seq, time) = (frame.batch_seq, frame.commit_time.unwrap_or(0));
        if self.unlogged.is_none() {
            // The first frame of the live log: the carried ids still remembered that name
            // its batch or a later one are to be found in their frames.
            let live = self
                .ids
                .iter()
                .flatten()
                .filter(|e| e.3 != IN_FRAME && e.1 >= seq);
            let at = |e: &FoundId| {
                (
                    CarriedAt {
                        seq: e.1,
                        offset: e.3,
                    },
                    e.0,
                )
            };
            self.unlogged = Some(live.map(at).collect());
        }
        let mut unlogged = self.unlogged.take().expect("made above");
        for id in frame.ids() {
            let id = RequestId(id);
            if !unlogged.is_empty() {
                let this = CarriedAt { seq, offset: 0 }..=CarriedAt {
                    seq,
                    offset: u64::MAX,
                };
                let logged = unlogged
                    .range(this)
                    .find(|(_, i)| **i == id)
                    .map(|(k, _)| *k);
                logged.map(|k| unlogged.remove(&k));
            }
            self.push((id, seq, time, IN_FRAME));
        }
        let unlogged = self.unlogged.insert(unlogged);
        match unlogged.first_key_value() {
            Some((at, _)) if at.seq <= seq => Err(corrupt_carried_at(
                &dir.join(crate::log::dir::IDS_FILE),
                at.offset,
                &format!(
                    "the entry at offset {} names batch {}, which the log holds and which does \
                     not log it (carried ids name batches of retired segments)",
                    at.offset, at.seq
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The table of what was found, the horizon applied now.
    pub fn rebuild(self) -> Ids {
        rebuild(
            self.ids
                .into_iter()
                .flatten()
                .map(|e| (e.0, e.1, e.2))
                .collect(),
            self.horizon,
            now_nanos(),
        )
    }
}

/// The ids an open found (the `ids` file's, then the frames', in log order), entered into a
/// new table, the horizon applied at `now`.
pub(crate) fn rebuild(found: Vec<(RequestId, u64, u64)>, horizon: IdHorizon, now: u64) -> Ids {
    let mut ids = Ids::new(horizon);
    // The newest `ids` are what must be remembered: skip the rest without inserting them.
    // An id found twice is taken once, at its first place (`Found` passes each id once).
    let skip = found.len().saturating_sub(horizon.ids);
    let oldest_kept = horizon.age.map_or(0, |a| now.saturating_sub(nanos(a)));
    for (id, seq, time) in found.into_iter().skip(skip) {
        if time >= oldest_kept {
            let _ = ids.take(id, IdEntry { seq, time });
            // Every batch an open finds is durable.
            ids.settle(u64::MAX);
        }
    }
    ids
}

/// The `ids` file (docs/FORMAT.md, "Carried request ids"): magic, version, count, then per
/// id its bytes, batch and time, then a CRC of everything before it. Version 2 (written since
/// session 33) may be longer than that: what follows the CRC is the room kept for the next
/// replacement, and is not read. Version 1 is exactly that long.
const IDS_MAGIC: [u8; 8] = *b"MLIDS\0\0\0";
const IDS_VERSION: u32 = 2;
const IDS_VERSION_EXACT: u32 = 1;
const IDS_HEADER: usize = 8 + 4 + 4 + 8;
const IDS_ENTRY: usize = 16 + 8 + 8;

/// The offset of entry `i` of an `ids` file.
pub(crate) fn carried_entry_offset(i: usize) -> u64 {
    (IDS_HEADER + IDS_ENTRY * i) as u64
}

/// The length of an `ids` file's contents for `count` ids (saturating).
fn carried_len(count: u64) -> u64 {
    count
        .saturating_mul(IDS_ENTRY as u64)
        .saturating_add((IDS_HEADER + 4) as u64)
}

/// The most ids the room kept for the `ids` file's replacement is made for: 2^21 (a file of
/// 64 MiB). A horizon of more than half as many ids is not given that much room ahead: a
/// replacement of a file longer than the room extends the kept file, which needs room.
const ROOM_IDS_MAX: u64 = 1 << 21;

/// The room kept for the `ids` file's replacement under `horizon` (docs/FORMAT.md, "Carried
/// request ids"): a file of twice `horizon.ids` ids, as many as the table holds between two
/// turns of its generations (a window's ids past that aside), in whole 4 KiB blocks.
pub(crate) fn room_for(horizon: IdHorizon) -> u64 {
    let ids = (horizon.ids as u64).saturating_mul(2).min(ROOM_IDS_MAX);
    carried_len(ids).next_multiple_of(4096)
}

/// The `ids` file's bytes for `ids` (id, batch, time).
pub(crate) fn encode_carried(ids: &[(RequestId, IdEntry)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(IDS_HEADER + ids.len() * IDS_ENTRY + 4);
    b.extend_from_slice(&IDS_MAGIC);
    b.extend_from_slice(&IDS_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for (id, e) in ids {
        b.extend_from_slice(&id.0);
        b.extend_from_slice(&e.seq.to_le_bytes());
        b.extend_from_slice(&e.time.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Why an `ids` file could not be read.
pub(crate) enum CarriedError {
    /// Its bytes are not an `ids` file: what is wrong, and where.
    Bad(BadIds),
    Io(std::io::Error),
}

/// What is wrong with an `ids` file's bytes: the offset (0 for the file as a whole, or an
/// entry's, 24 + 32i) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadIds {
    pub offset: u64,
    pub reason: std::borrow::Cow<'static, str>,
}

impl From<&'static str> for BadIds {
    fn from(reason: &'static str) -> BadIds {
        BadIds {
            offset: 0,
            reason: reason.into(),
        }
    }
}

impl BadIds {
    /// The error for the `ids` file at `path` holding these bytes.
    pub fn error(&self, path: &std::path::Path) -> Error {
        corrupt_carried_at(path, self.offset, &self.reason)
    }
}

/// Reads an `ids` file of `len` bytes from `r`, handing each (id, batch, time) to `each` in
/// the file's order; the checksum is checked at the end, so on an error the caller must
/// drop what it was handed. The header and the length are checked before any entry is
/// read (a version 1 file ends at its CRC, a version 2 one at or past it: the rest is not
/// read), and entries are read a chunk at a time. The entries must be in the order every
/// retirement writes them (oldest batch first, the ids of one batch in ascending bytewise
/// order, so no entry twice): the first one out of order is refused, naming its offset, once
/// the checksum is right (a byte changed by rot is "checksum mismatch", as before).
pub(crate) fn read_carried(
    mut r: impl std::io::Read,
    len: u64,
    mut each: impl FnMut((RequestId, u64, u64)),
) -> std::result::Result<(), CarriedError> {
    const CHUNK: usize = 2048;
    let bad = |reason: &'static str| CarriedError::Bad(reason.into());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut header = [0u8; IDS_HEADER];
    if len < (IDS_HEADER + 4) as u64 {
        return Err(bad("not a mergelog ids file (magic or length)"));
    }
    r.read_exact(&mut header).map_err(CarriedError::Io)?;
    if header[..8] != IDS_MAGIC {
        return Err(bad("not a mergelog ids file (magic or length)"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if ![IDS_VERSION_EXACT, IDS_VERSION].contains(&version) || header[12..16] != [0; 4] {
        return Err(bad("unknown version"));
    }
    let count = u64_at(&header, 16);
    let body = count.checked_mul(IDS_ENTRY as u64);
    let end = body.and_then(|b| b.checked_add((IDS_HEADER + 4) as u64));
    match (version, end) {
        (IDS_VERSION_EXACT, Some(end)) if end == len => {}
        (IDS_VERSION, Some(end)) if end <= len => {}
        (IDS_VERSION_EXACT, _) => return Err(bad("the count does not match the length")),
        _ => return Err(bad("the count runs past the end of the file")),
    }
    let mut crc = crc32c::crc32c(&header);
    let mut buf = vec![0u8; CHUNK.min(count as usize) * IDS_ENTRY];
    let mut left = count;
    // The previous entry (batch, id), and the first entry out of order after it.
    let mut previous: Option<(u64, RequestId)> = None;
    let mut misplaced: Option<BadIds> = None;
    let mut offset = IDS_HEADER as u64;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        let chunk = &mut buf[..n * IDS_ENTRY];
        r.read_exact(chunk).map_err(CarriedError::Io)?;
        crc = crc32c::crc32c_append(crc, chunk);
        for e in chunk.chunks_exact(IDS_ENTRY) {
            let id = RequestId(e[..16].try_into().unwrap());
            let seq = u64_at(e, 16);
            // Checked before the CRC: a caller drops what it was handed on any error.
            if seq == 0 || seq > crate::log::recovery::SEQ_MAX {
                return Err(bad("an id's batch is outside 1..=2^62"));
            }
            if let Some((was_seq, was_id)) = previous.filter(|&p| p >= (seq, id)) {
                misplaced.get_or_insert_with(|| BadIds {
                    offset,
                    reason: if was_seq > seq {
                        format!(
                            "the entry at offset {offset} names batch {seq} after an entry \
                             naming batch {was_seq}: entries are oldest batch first"
                        )
                    } else {
                        format!(
                            "the entry at offset {offset} holds id {id}, which is not above \
                             the id before it in batch {seq} ({was_id}): the ids of one \
                             batch are in ascending order, each once"
                        )
                    }
                    .into(),
                });
            }
            previous = Some((seq, id));
            offset += IDS_ENTRY as u64;
            each((id, seq, u64_at(e, 24)));
        }
        left -= n as u64;
    }
    let mut stored = [0u8; 4];
    r.read_exact(&mut stored).map_err(CarriedError::Io)?;
    if crc.to_le_bytes() != stored {
        return Err(bad("checksum mismatch"));
    }
    match misplaced {
        Some(m) => Err(CarriedError::Bad(m)),
        None => Ok(()),
    }
}

/// Decodes a whole `ids` file's bytes (the tests' way in).
#[cfg(test)]
fn decode_carried(b: &[u8]) -> std::result::Result<Vec<(RequestId, u64, u64)>, BadIds> {
    let mut v = Vec::new();
    match read_carried(b, b.len() as u64, |e| v.push(e)) {
        Ok(()) => Ok(v),
        Err(CarriedError::Bad(r)) => Err(r),
        Err(CarriedError::Io(_)) => Err("short".into()),
    }
}

/// The `ids` file's replacement and the room kept for it (docs/FORMAT.md, "Carried request
/// ids"). A retirement replaces the file through its kept temporary `ids.tmp`
/// (`dir::write_ids`), which needs no new room while `ids.tmp` is at least as long as the new
/// file: so that a retirement can make room on a full disk. The room (see [`room_for`]) is
/// kept by the retirement after its removals (the exchange of names usually leaves it: the
/// old file becomes the temporary) and, once ids are logged, by the thread that prepares the
/// next segment, so that the first retirement to carry ids finds it too. All of it best
/// effort: without the room a replacement makes its temporary as it goes, as before.
pub(crate) struct IdsRoom {
    io: crate::log::io::SharedIo,
    dir: std::path::PathBuf,
    /// The length `ids.tmp` is kept at: [`room_for`] the horizon, or a file's length once
    /// one was longer.
    room: AtomicU64,
    /// This run logged ids: the preparing thread makes the room if it is not kept.
    logged: std::sync::atomic::AtomicBool,
    /// `ids.tmp` was last seen at least `room` long.
    kept: std::sync::atomic::AtomicBool,
    /// The last exchange through `ids.tmp` may not be durable (`dir::write_ids`): the
    /// directory is synced before `ids.tmp` is written again.
    unsettled: std::sync::atomic::AtomicBool,
    /// Held while `ids` or `ids.tmp` changes: by a retirement (under `retire_lock`), and by
    /// the preparing thread, which only tries it.
    files: Mutex<()>,
}

impl fmt::Debug for IdsRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdsRoom")
            .field("room", &self.room.load(Ordering::Relaxed))
            .field("logged", &self.logged.load(Ordering::Relaxed))
            .field("kept", &self.kept.load(Ordering::Relaxed))
            .finish()
    }
}

impl IdsRoom {
    /// The room for `dir`'s `ids` file under `horizon`.
    pub fn new(
        io: &crate::log::io::SharedIo,
        dir: &std::path::Path,
        horizon: IdHorizon,
    ) -> IdsRoom {
        IdsRoom {
            io: io.clone(),
            dir: dir.to_owned(),
            room: AtomicU64::new(room_for(horizon)),
            logged: false.into(),
            kept: false.into(),
            unsettled: false.into(),
            files: Mutex::new(()),
        }
    }

    /// A frame logged ids (the flusher, once per window with ids: one load).
    pub fn note_logged(&self) {
        if !self.logged.load(Ordering::Relaxed) {
            self.logged.store(true, Ordering::Relaxed);
        }
    }

    /// Before segments holding the batches below `seq` are retired: writes every remembered
    /// id logged below `seq` to the `ids` file (replacing it), so that a reopen still
    /// remembers them. Nothing is written if there are none and there is no file to replace.
    pub fn carry_before(&self, ids: &Mutex<Ids>, seq: u64) -> Result<()> {
        // Under the lock only the previous generation's reference is taken, and the current
        // one's ids below `seq` copied (none, without a pass, when the current generation
        // begins at or past `seq`); the previous generation is read, and everything sorted
        // (O(n log n) of up to twice the horizon's ids, 2^20 by default), after it: the
        // flusher takes the lock at every window with ids, and submits that ask
        // `Engine::request_id_seq`, so they waited out a pass over both tables and the sort.
        // This changes no answer: a retry is answered from the table, which a retirement
        // does not change, before and after it alike; the frozen generation read after the
        // lock holds what it held under it (nothing enters it, and a turn or an age that
        // finds it shared starts a new table rather than change it); what is carried is the
        // ids logged below `seq`, every one in a batch already written (an id is given back
        // only from the window being decided, past the log's end, so none of these is); and
        // the file is written, with the same ids in the same order, before any segment is
        // removed, as it was. What the flusher enters or forgets after the lock is not in it
        // either way.
        let carried = ids.lock().carry_before(seq);
        let mut carried = carried.ids();
        oldest_first(&mut carried);
        if carried.is_empty() && !crate::log::dir::has_ids(&self.dir) {
            return Ok(());
        }
        let bytes = encode_carried(&carried);
        let _files = self.files.lock();
        self.room.fetch_max(
            (bytes.len() as u64).next_multiple_of(4096),
            Ordering::Relaxed,
        );
        let kept = crate::log::dir::write_ids(&*self.io, &self.dir, &bytes, &self.unsettled);
        if !matches!(kept, Ok(true)) {
            self.kept.store(false, Ordering::Relaxed);
        }
        kept.map(drop)
    }

    /// Keeps the room if ids are in use (this run logged some, or there is an `ids` file):
    /// after a retirement, which may have used the room or freed the disk's. Best effort (see
    /// the type's doc).
    pub fn keep(&self) {
        if self.logged.load(Ordering::Relaxed) || crate::log::dir::has_ids(&self.dir) {
            let _files = self.files.lock();
            self.keep_locked();
        }
    }

    /// As [`IdsRoom::keep`], once this run has logged ids, if the room is not known to be
    /// kept and no retirement is changing the files (the thread that prepares the next
    /// segment: it must not wait for a retirement, which may wait for the flusher, which may
    /// wait for it).
    pub fn keep_if_wanted(&self) {
        if self.logged.load(Ordering::Relaxed) && !self.kept.load(Ordering::Relaxed) {
            if let Some(_files) = self.files.try_lock() {
                self.keep_locked();
            }
        }
    }

    fn keep_locked(&self) {
        let room = self.room.load(Ordering::Relaxed);
        let kept =
            crate::log::dir::keep_ids_room(&*self.io, &self.dir, room, &self.unsettled).is_ok();
        self.kept.store(kept, Ordering::Relaxed);
    }
}

/// The error for a damaged `ids` file, the damage at `offset`.
pub(crate) fn corrupt_carried_at(path: &std::path::Path, offset: u64, reason: &str) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset,
        reason: format!("request ids file: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> RequestId {
        RequestId::from(n)
    }

    /// `Found` keeps the newest `horizon.ids` distinct ids, an id found again counting once at
    /// its later place, and its memory stays about the horizon's however many it is handed.
    #[test]
    fn found_keeps_the_newest_distinct_ids_in_bounded_memory() {
        let horizon = IdHorizon {
            ids: 100,
            age: None,
        };
        let mut found = Found {
            ids: VecDeque::new(),
            place: hashbrown::HashMap::default(),
            front: 0,
            horizon,
            carried_last: None,
            unlogged: None,
        };
        // Each id twice in a row, as a crash between a retirement's removals leaves them
        // (the file's entry, then the frame's), for 10,000 ids.
        for n in 0..10_000u64 {
            found.push((id(n.into()), n, 0, IN_FRAME));
            found.push((id(n.into()), n, 0, IN_FRAME));
            assert!(
                found.ids.len() <= 2 * 100 + 64,
                "{} entries",
                found.ids.len()
            );
        }
        // Then an old id again, at a later place: it is kept, once, as the newest.
        found.push((id(5), 20_000, 0, IN_FRAME));
        let kept: Vec<u64> = found.ids.iter().flatten().map(|e| e.1).collect();
        let want: Vec<u64> = (9_901..10_000).chain([20_000]).collect();
        assert_eq!(kept, want);
        assert_eq!(found.place.len(), 100);
    }

    #[test]
    fn carried_ids_round_trip_and_damage_is_refused() {
        let ids: Vec<(RequestId, IdEntry)> = (0..5u64)
            .map(|n| {
                let e = IdEntry {
                    seq: 10 + n,
                    time: 1000 * n,
                };
                (id(n.into()), e)
            })
            .collect();
        let b = encode_carried(&ids);
        let back = decode_carried(&b).unwrap();
        let want: Vec<_> = ids.iter().map(|(i, e)| (*i, e.seq, e.time)).collect();
        assert_eq!(back, want);
        assert_eq!(decode_carried(&encode_carried(&[])).unwrap(), vec![]);
        for cut in 0..b.len() {
            assert!(decode_carried(&b[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode_carried(&d).is_err(), "flip at {i}");
        }
    }

    /// An entry naming a batch no log reaches (0, or past `SEQ_MAX`) is damage, under a
    /// right CRC too: the open goes on past the batches the file names when the log holds
    /// no segment (`Found::carried_last`), and a batch past 2^62 is none to go on from.
    #[test]
    fn carried_ids_of_a_batch_outside_the_log_are_refused() {
        let max = crate::log::recovery::SEQ_MAX;
        for (seq, ok) in [
            (1, true),
            (max, true),
            (0, false),
            (max + 1, false),
            (u64::MAX, false),
        ] {
            let b = encode_carried(&[(id(7), IdEntry { seq, time: 0 })]);
            assert_eq!(decode_carried(&b).is_ok(), ok, "batch {seq}");
        }
    }

    /// Entries out of the order a retirement writes them (oldest batch first, ids of one
    /// batch ascending, each once) are refused at the first one out of order, under a right
    /// CRC; under a wrong one, the checksum is what is reported.
    #[test]
    fn carried_ids_out_of_order_are_refused_at_the_entry() {
        let e = |n: u128, seq: u64| (id(n), IdEntry { seq, time: 0 });
        let at = |i: u64| 24 + 32 * i;
        let good = [e(1, 1), e(2, 1), e(0, 2), e(9, 3), e(3, 3)];
        assert_eq!(
            decode_carried(&encode_carried(&good[..4])).unwrap().len(),
            4
        );
        for (entries, bad_at, words) in [
            (&good[..], 4, "ascending"),
            (&[e(1, 2), e(2, 1)][..], 1, "oldest batch first"),
            (&[e(1, 1), e(1, 1)][..], 1, "ascending"),
            (
                &[e(1, 1), e(2, 3), e(3, 2), e(4, 1)][..],
                2,
                "after an entry naming batch 3",
            ),
        ] {
            let b = encode_carried(entries);
            let got = decode_carried(&b).unwrap_err();
            assert_eq!(got.offset, at(bad_at), "{entries:?}: {got:?}");
            assert!(got.reason.contains(words), "{entries:?}: {got:?}");
            let mut rot = b.clone();
            rot[30] ^= 1;
            assert_eq!(decode_carried(&rot), Err("checksum mismatch".into()));
        }
    }

    /// A version 2 file may be longer than its contents (the room kept for the next
    /// replacement): what follows the CRC is not read. A version 1 file (older builds) is
    /// read as before, and must end at its CRC; a count that runs past the end is refused.
    #[test]
    fn a_version_2_file_may_run_past_its_contents_and_version_1_is_read_as_before() {
        let ids: Vec<(RequestId, IdEntry)> = (0..3u64)
            .map(|n| {
                (
                    id(n.into()),
                    IdEntry {
                        seq: n + 1,
                        time: n,
                    },
                )
            })
            .collect();
        let want: Vec<_> = ids.iter().map(|(i, e)| (*i, e.seq, e.time)).collect();
        let b = encode_carried(&ids);
        assert_eq!(b[8..12], 2u32.to_le_bytes());
        for tail in [vec![0u8; 4000], vec![0xab; 7], b.clone()] {
            let mut long = b.clone();
            long.extend_from_slice(&tail);
            assert_eq!(decode_carried(&long).unwrap(), want);
        }
        let mut v1 = b[..b.len() - 4].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_carried(&v1).unwrap(), want);
        let mut long = v1.clone();
        long.push(0);
        assert_eq!(
            decode_carried(&long),
            Err("the count does not match the length".into())
        );
        let mut past = b.clone();
        past[16..24].copy_from_slice(&4u64.to_le_bytes());
        assert_eq!(
            decode_carried(&past),
            Err("the count runs past the end of the file".into())
        );
        // A count made smaller is caught by the CRC.
        let mut fewer = b.clone();
        fewer[16..24].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(decode_carried(&fewer), Err("checksum mismatch".into()));
        let mut unknown = b;
        unknown[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode_carried(&unknown), Err("unknown version".into()));
    }

    /// The room kept for the `ids` file's replacement: a file of twice the horizon's ids,
    /// in whole blocks, and never more than 64 MiB and a block.
    /// A retirement sorts the ids it carries after the `ids` lock, not under it: the flusher
    /// takes that lock at each window with ids, and waited out a sort of up to twice the
    /// horizon's ids (2^20 by default). Counted: the entries visited and compared by what
    /// runs under the lock (`Ids`'s methods; the engine holds it only in its mutex), at most
    /// one per id remembered; the file still holds the ids oldest first.
    #[test]
    fn a_retirement_sorts_the_ids_it_carries_after_the_lock() {
        const N: u64 = 4096;
        let horizon = IdHorizon {
            ids: N as usize,
            age: None,
        };
        let mut t = Ids::new(horizon);
        // Taken out of order of their batches, as windows of several producers take them.
        for n in 0..N {
            let seq = (n * 2731) % N + 1;
            t.take(id(n.into()), IdEntry { seq, time: seq }).unwrap();
        }
        t.settle(u64::MAX);
        let ids = Mutex::new(t);
        let dir = tempfile::tempdir().unwrap();
        let room = IdsRoom::new(&crate::log::io::real(), dir.path(), horizon);
        room.carry_before(&ids, N / 2 + 1).unwrap();
        let work = ids.lock().work.get();
        assert!(
            work <= N,
            "carrying {} of {N} ids visited or compared {work} entries under the ids lock \
             (at most {N}: one pass to copy them)",
            N / 2
        );
        let found = carried(dir.path(), horizon).unwrap();
        let seqs: Vec<u64> = found.ids.iter().flatten().map(|e| e.1).collect();
        assert_eq!(seqs, (1..=N / 2).collect::<Vec<_>>(), "oldest first");
    }

    /// A retirement takes the frozen previous generation by reference under the `ids` lock,
    /// and passes over the current one only if it holds ids the retirement carries: the
    /// flusher's windows with ids waited out a copy of both tables (up to twice the horizon's
    /// ids, 2^19 by default) at every retirement. The file holds the same ids either way, and
    /// the table still answers for every id.
    #[test]
    fn a_retirement_passes_under_the_lock_over_the_current_generation_only() {
        const N: u64 = 1024;
        let horizon = IdHorizon {
            ids: N as usize,
            age: None,
        };
        let e = |seq| IdEntry { seq, time: seq };
        let mut t = Ids::new(horizon);
        // Batches 1..=N fill a generation, which turns; N + 1..=3N/2 are in the current one.
        for n in 1..=N + N / 2 {
            take(&mut t, id(n.into()), e(n)).unwrap();
        }
        let ids = Mutex::new(t);
        let dir = tempfile::tempdir().unwrap();
        let room = IdsRoom::new(&crate::log::io::real(), dir.path(), horizon);
        for (below, work_max) in [(N + 1, 0), (N + N / 4 + 1, N / 2)] {
            let before = ids.lock().work.get();
            room.carry_before(&ids, below).unwrap();
            let work = ids.lock().work.get() - before;
            assert!(
                work <= work_max,
                "carrying the ids below batch {below} visited {work} entries under the ids \
                 lock (at most {work_max}: the current generation's, if it holds any)"
            );
            // Read back under a horizon that keeps every id of the file.
            let all = IdHorizon {
                ids: 4 * N as usize,
                age: None,
            };
            let found = carried(dir.path(), all).unwrap();
            let seqs: Vec<u64> = found.ids.iter().flatten().map(|e| e.1).collect();
            assert!(
                seqs == (1..below).collect::<Vec<_>>(),
                "below {below}: {seqs:?}"
            );
        }
        let t = ids.lock();
        assert!((1..=N + N / 2).all(|n| t.get(&id(n.into())) == Some(n)));
    }

    /// A retirement still reading the frozen generation when the flusher turns past it, or
    /// ages it out: the retirement reads what it took, and the table goes on with a new one.
    #[test]
    fn a_frozen_generation_a_retirement_holds_is_left_to_it() {
        let e = |seq| IdEntry { seq, time: seq };
        let mut t = Ids::new(IdHorizon {
            ids: 2,
            age: Some(Duration::from_nanos(100)),
        });
        for n in 1..=3u64 {
            take(&mut t, id(n.into()), e(n)).unwrap();
        }
        // Previous: 1 and 2; current: 3.
        let held = t.carry_before(10);
        // Two turns, then every generation aged out, all while it is held.
        for n in 4..=7u64 {
            take(&mut t, id(n.into()), e(n)).unwrap();
        }
        assert_eq!((t.get(&id(2)), t.get(&id(5)), t.len()), (None, Some(5), 3));
        let again = t.carry_before(10);
        t.evict(1_000, u64::MAX);
        assert_eq!(t.len(), 0);
        take(&mut t, id(8), e(1_000)).unwrap();
        assert_eq!(t.get(&id(8)), Some(1_000));
        let seqs = |c: Carried| {
            let mut ids = c.ids();
            oldest_first(&mut ids);
            ids.iter().map(|(_, e)| e.seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs(held), vec![1, 2, 3]);
        assert_eq!(seqs(again), vec![5, 6, 7]);
    }

    #[test]
    fn the_room_is_twice_the_horizon_in_whole_blocks() {
        let room = |ids| room_for(IdHorizon { ids, age: None });
        assert_eq!(room(1), 4096);
        assert_eq!(room(120), 8192);
        assert_eq!(room(1 << 18), (16 << 20) + 4096);
        assert_eq!(room(usize::MAX), (64 << 20) + 4096);
        assert_eq!(room(1 << 20), room(usize::MAX));
    }

    #[test]
    fn the_horizon_keeps_the_newest_ids_and_the_young_ones() {
        let found: Vec<_> = (0..10u64).map(|n| (id(n.into()), n + 1, n * 100)).collect();
        let t = rebuild(found.clone(), IdHorizon { ids: 4, age: None }, 0);
        assert_eq!(t.len(), 4);
        assert!(t.get(&id(5)).is_none() && t.get(&id(6)).is_some());
        let age = Some(Duration::from_nanos(250));
        let mut t = rebuild(found, IdHorizon { ids: 100, age }, 1000);
        // Times 800 and 900 are within 250 ns of 1000; 700 is not.
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(t.get(&id(7)).is_none() && t.get(&id(8)).is_some());
        assert_eq!(t.get(&id(9)), Some(10));
        t.evict(1100, u64::MAX);
        assert_eq!(
            t.len(),
            2,
            "the newest (900) is within 250 ns of 1100: kept whole"
        );
        t.evict(1200, u64::MAX);
        assert_eq!(t.len(), 0);
    }

    /// `Ids::take`, each id a window's own: the table settles after it.
    fn take(t: &mut Ids, id: RequestId, e: IdEntry) -> std::result::Result<(), u64> {
        let r = t.take(id, e);
        t.settle(u64::MAX);
        r
    }

    #[test]
    fn ids_are_taken_once_and_forgotten_a_generation_at_a_time() {
        let mut t = Ids::new(IdHorizon { ids: 3, age: None });
        let e = |seq| IdEntry { seq, time: seq };
        assert_eq!(take(&mut t, id(1), e(1)), Ok(()));
        assert_eq!(
            take(&mut t, id(1), e(2)),
            Err(1),
            "remembered: the original's batch"
        );
        assert_eq!(take(&mut t, id(2), e(2)), Ok(()));
        assert_eq!(take(&mut t, id(3), e(3)), Ok(()));
        // The generation is full: it became the previous one, and is still remembered.
        assert_eq!(take(&mut t, id(2), e(4)), Err(2));
        for n in 4..=6u64 {
            assert_eq!(take(&mut t, id(n.into()), e(n)), Ok(()));
        }
        // 4, 5, 6 filled the next: 1, 2, 3 are forgotten, and new again.
        assert_eq!((t.get(&id(3)), t.get(&id(4)), t.len()), (None, Some(4), 3));
        assert_eq!(take(&mut t, id(3), e(7)), Ok(()));
        // Always the newest `ids` at least, at most twice as many; oldest first.
        assert_eq!(t.len(), 4);
        let mut before = t.logged_before(7);
        oldest_first(&mut before);
        let before: Vec<u64> = before.iter().map(|(_, e)| e.seq).collect();
        assert_eq!(before, vec![4, 5, 6]);
        // An age forgets whole generations, once their newest id is older than it.
        let mut t = Ids::new(IdHorizon {
            ids: 2,
            age: Some(Duration::from_nanos(10)),
        });
        for n in 1..=3u64 {
            take(&mut t, id(n.into()), e(n * 10)).unwrap();
        }
        t.evict(30, u64::MAX);
        assert_eq!(t.len(), 3);
        t.evict(35, u64::MAX);
        assert_eq!((t.len(), t.get(&id(3))), (1, Some(30)), "{t:?}");
        t.evict(41, u64::MAX);
        assert_eq!(t.len(), 0);
    }

    /// The floor: a generation naming a batch that is not durable is neither turned out nor
    /// aged out; the current one grows on meanwhile, and both go once the batch is durable.
    #[test]
    fn ids_of_batches_not_durable_are_never_forgotten() {
        let e = |seq| IdEntry { seq, time: seq };
        let mut t = Ids::new(IdHorizon { ids: 1, age: None });
        // Batches 1 to 3 written, none durable.
        for n in 1..=3u64 {
            t.take(id(n.into()), e(n)).unwrap();
            t.settle(0);
        }
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t.take(id(1), e(4)), Err(1));
        // Batch 1 durable: the previous generation (batch 1) goes at the next turn.
        t.take(id(4), e(4)).unwrap();
        t.settle(1);
        assert_eq!((t.get(&id(1)), t.get(&id(3)), t.len()), (None, Some(3), 3));
        // All durable: the horizon's one id, and the previous generation's at most.
        t.take(id(5), e(5)).unwrap();
        t.settle(5);
        assert_eq!((t.get(&id(4)), t.get(&id(5)), t.len()), (None, Some(5), 1));
        // An age forgets nothing of a batch past the durable one.
        let mut t = Ids::new(IdHorizon {
            ids: 100,
            age: Some(Duration::from_nanos(1)),
        });
        t.take(id(1), e(1)).unwrap();
        t.settle(0);
        t.evict(1_000, 0);
        assert_eq!(t.get(&id(1)), Some(1));
        t.evict(1_000, 1);
        assert_eq!(t.len(), 0);
    }

    /// Ids taken in one window, one of them given back before the window settles: the
    /// newest ids logged stay remembered however many the window took.
    #[test]
    fn a_given_back_id_does_not_turn_the_generations() {
        let mut t = Ids::new(IdHorizon { ids: 2, age: None });
        let e = |seq| IdEntry { seq, time: seq };
        take(&mut t, id(1), e(1)).unwrap();
        take(&mut t, id(2), e(2)).unwrap();
        // One window takes 3, 4 and 5 and gives 4 and 5 back.
        for n in 3..=5u64 {
            t.take(id(n.into()), e(3)).unwrap();
        }
        t.untake(id(4));
        t.untake(id(5));
        t.settle(u64::MAX);
        // The newest two logged: 3 and 2.
        assert_eq!((t.get(&id(3)), t.get(&id(2))), (Some(3), Some(2)), "{t:?}");
        take(&mut t, id(6), e(4)).unwrap();
        assert_eq!((t.get(&id(6)), t.get(&id(3))), (Some(4), Some(3)), "{t:?}");
    }

    /// An age past what u64 nanoseconds hold (2^64 ns, 584 years, wraps to 0) keeps every
    /// id: it is not taken modulo 2^64.
    #[test]
    fn an_age_too_long_for_u64_nanoseconds_forgets_nothing() {
        let age = Duration::new(18_446_744_073, 709_551_616);
        assert_eq!(age.as_nanos(), 1 << 64);
        assert_eq!((nanos(age), nanos(Duration::MAX)), (u64::MAX, u64::MAX));
        let now = 1_000_000;
        let found: Vec<_> = (0..3u64).map(|n| (id(n.into()), n + 1, n * 100)).collect();
        let horizon = IdHorizon {
            ids: 100,
            age: Some(age),
        };
        assert_eq!(
            rebuild(found, horizon, now).len(),
            3,
            "rebuild forgot ids younger than the age"
        );
        let mut t = Ids::new(horizon);
        for n in 0..3u64 {
            t.take(
                id(n.into()),
                IdEntry {
                    seq: n + 1,
                    time: n * 100,
                },
            )
            .unwrap();
        }
        t.evict(now, u64::MAX);
        assert_eq!(t.len(), 3, "evict forgot ids younger than the age");
    }

    #[test]
    fn duplicates_are_found_by_position_until_forgotten() {
        let d = Duplicates::default();
        assert_eq!(d.find(5), DupFound::Written);
        for i in 0..DUPLICATES_KEPT as u64 + 10 {
            d.record(100 + 10 * i, i);
        }
        assert_eq!(d.find(100 + 10 * 20), DupFound::Duplicate(20));
        assert_eq!(d.find(105 + 10 * 20), DupFound::Written);
        let last = DUPLICATES_KEPT as u64 + 9;
        assert_eq!(d.find(100 + 10 * last), DupFound::Duplicate(last));
        assert_eq!(d.find(101 + 10 * last), DupFound::Written);
        // The first ten were forgotten: a position at or before them cannot be told.
        assert_eq!(d.find(100), DupFound::Forgotten);
        assert_eq!(d.find(185), DupFound::Forgotten);
        // Between the last forgotten and the first kept: not a duplicate, or it would be kept.
        assert_eq!(d.find(195), DupFound::Written);
    }

    #[test]
    fn request_ids_print_as_hex() {
        assert_eq!(id(0xab).to_string(), format!("{:0>32}", "ab"));
        assert_eq!(RequestId::from([7; 16]).as_bytes(), &[7; 16]);
        let o = Outcome::Duplicate { seq: Seq::new(4) };
        assert!(o.is_duplicate() && o.seq() == 4);
    }
}
