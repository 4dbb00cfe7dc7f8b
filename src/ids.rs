//! Idempotent requests: a put, delete or write batch may carry a [`RequestId`]; the engine
//! logs it with the request, and a second submission of an id it remembers is not logged
//! again: its ticket completes with [`Outcome::Duplicate`] and the batch of the original.
//!
//! The flusher, the one thread that sees every window whole, decides: it looks each id up in
//! the [`IdTable`] as it takes the request into a window; an unknown id enters the table (with
//! the batch the window will write and the request's ring position) and the frame's trailer;
//! a known one drops the request's operations before coalescing. The table is shared (sharded
//! mutexes): a submitter looks an id up first, and a duplicate of a durable request never
//! enters the ring; a ticket looks its id up once complete, to tell the original (its own ring
//! position is in the entry) from a duplicate.
//!
//! What is remembered is bounded by [`IdHorizon`]: the newest `ids` ids, and with an age, only
//! those logged within it. The table is rebuilt at open from the frames' trailers and the
//! `ids` file, which `retire_before` writes before it removes segments holding ids still
//! inside the horizon (docs/FORMAT.md, "Carried request ids").

use crate::error::{Error, Result};
use crate::seq::Seq;
use crate::ticket::Ticket;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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

/// How long the engine remembers request ids (`Config::request_ids`): a duplicate of a
/// forgotten id is logged again, as a new request. Retirement does not shorten it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdHorizon {
    /// The newest this many ids are remembered (at most about 64 bytes of memory each).
    pub ids: usize,
    /// If set, only ids logged within this long ago (by the commit time of their frame).
    pub age: Option<Duration>,
}

impl Default for IdHorizon {
    fn default() -> Self {
        IdHorizon {
            ids: 1 << 20,
            age: None,
        }
    }
}

/// What an idempotent request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This submission was logged, in batch `Seq`.
    Written(Seq),
    /// The id was already logged (or in flight) when this submission was taken in: nothing
    /// was written; the original is durable in batch `seq`.
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
    state: IdState,
}

#[derive(Clone, Debug)]
enum IdState {
    /// Known at submit: a duplicate of a durable request.
    Known(Outcome),
    /// Waiting for a ring position: the request's own (`dup: false`: the flusher decides),
    /// or the original's when the submitter found it in flight (`dup: true`).
    Waiting {
        ticket: Ticket,
        id: RequestId,
        table: Arc<IdTable>,
        dup: bool,
    },
}

impl IdTicket {
    pub(crate) fn known(outcome: Outcome) -> IdTicket {
        IdTicket {
            state: IdState::Known(outcome),
        }
    }

    pub(crate) fn waiting(ticket: Ticket, id: RequestId, table: Arc<IdTable>, dup: bool) -> Self {
        IdTicket {
            state: IdState::Waiting {
                ticket,
                id,
                table,
                dup,
            },
        }
    }

    /// True once the outcome is known.
    pub fn is_done(&self) -> bool {
        match &self.state {
            IdState::Known(_) => true,
            IdState::Waiting { ticket, .. } => ticket.is_done(),
        }
    }

    /// The outcome if the request is complete, without blocking.
    pub fn try_result(&self) -> Option<Result<Outcome>> {
        match &self.state {
            IdState::Known(o) => Some(Ok(*o)),
            IdState::Waiting { ticket, .. } => Some(self.outcome(ticket.try_result()?)),
        }
    }

    /// Blocks until the request is durable (or the engine failed): see [`Outcome`].
    pub fn wait(&self) -> Result<Outcome> {
        match &self.state {
            IdState::Known(o) => Ok(*o),
            IdState::Waiting { ticket, .. } => self.outcome(ticket.wait()),
        }
    }

    /// As `wait`, giving up with `Error::Timeout` after `timeout` (the request goes on).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Outcome> {
        match &self.state {
            IdState::Known(o) => Ok(*o),
            IdState::Waiting { ticket, .. } => self.outcome(ticket.wait_timeout(timeout)),
        }
    }

    /// The outcome, once the position waited for completed with `done`.
    fn outcome(&self, done: Result<Seq>) -> Result<Outcome> {
        let IdState::Waiting {
            ticket,
            id,
            table,
            dup,
        } = &self.state
        else {
            unreachable!("a known outcome waits for nothing")
        };
        let own = done?;
        Ok(match table.get(id) {
            // The table names the submission that logged the id, by its ring position.
            Some(e) if !dup && e.pos == ticket.position() => Outcome::Written(Seq::new(e.seq)),
            Some(e) => Outcome::Duplicate {
                seq: Seq::new(e.seq),
            },
            // Forgotten already (a horizon smaller than what is in flight): the position
            // waited for was the original's if `dup`, else this request's window (which
            // logged it unless a duplicate in it collapsed; then its batch is the one).
            None if *dup => Outcome::Duplicate { seq: own },
            None => Outcome::Written(own),
        })
    }
}

impl Future for IdTicket {
    type Output = Result<Outcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Outcome>> {
        let done = match &mut self.state {
            IdState::Known(o) => return Poll::Ready(Ok(*o)),
            IdState::Waiting { ticket, .. } => match Pin::new(ticket).poll(cx) {
                Poll::Ready(done) => done,
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(self.outcome(done))
    }
}

/// The idempotent half of the engine's API.
impl crate::Engine {
    /// As [`Engine::put`](crate::Engine::put), with request id `id`: if the engine
    /// remembers `id` (logged, or in flight: see [`IdHorizon`]), nothing is written and the
    /// ticket completes with [`Outcome::Duplicate`] once the original is durable.
    pub fn put_with_id(
        &self,
        id: impl Into<RequestId>,
        key: &[u8],
        value: &[u8],
    ) -> Result<IdTicket> {
        self.check_key(key)?;
        self.check_value(value)?;
        let id = id.into();
        self.idempotent(id, || self.submit_put(key, value, Some(&id)))
    }

    /// As [`Engine::delete`](crate::Engine::delete), with request id `id` (see
    /// [`Engine::put_with_id`](crate::Engine::put_with_id)).
    pub fn delete_with_id(&self, id: impl Into<RequestId>, key: &[u8]) -> Result<IdTicket> {
        self.check_key(key)?;
        let id = id.into();
        self.idempotent(id, || self.submit_delete(key, Some(&id)))
    }

    /// As [`Engine::write`](crate::Engine::write), with request id `id` for the whole batch
    /// (see [`Engine::put_with_id`](crate::Engine::put_with_id)): a duplicate applies none
    /// of its operations.
    pub fn write_with_id(
        &self,
        id: impl Into<RequestId>,
        batch: &crate::WriteBatch,
    ) -> Result<IdTicket> {
        self.check_batch(batch)?;
        let id = id.into();
        self.idempotent(id, || self.submit_batch(batch, Some(&id)))
    }

    /// Whether the engine remembers request id `id`, and if so the batch that logs it (it may
    /// not be durable yet).
    pub fn request_id_seq(&self, id: impl Into<RequestId>) -> Option<Seq> {
        self.inner.ids.get(&id.into()).map(|e| Seq::new(e.seq))
    }

    /// Submits with `submit` unless `id` is remembered: then the ticket is the original's.
    fn idempotent(&self, id: RequestId, submit: impl FnOnce() -> Result<u64>) -> Result<IdTicket> {
        let inner = &*self.inner;
        if let Some(e) = inner.completion.failure() {
            return Err(crate::pipeline::failed(e));
        }
        if inner.ring.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(e) = inner.ids.get(&id) {
            // Logged in a durable batch: answered here, nothing enters the ring.
            if e.seq <= self.durable_seq().get() {
                return Ok(IdTicket::known(Outcome::Duplicate {
                    seq: Seq::new(e.seq),
                }));
            }
            // In flight in this run: wait for the original's position. (An id from the log
            // is durable: the open made it so.)
            if e.pos != FROM_LOG {
                let ticket = self.ticket(e.pos);
                return Ok(IdTicket::waiting(ticket, id, inner.ids.clone(), true));
            }
        }
        let pos = submit()?;
        Ok(IdTicket::waiting(
            self.ticket(pos),
            id,
            inner.ids.clone(),
            false,
        ))
    }
}

/// What the table knows of one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdEntry {
    /// The batch that logs it.
    pub seq: u64,
    /// The ring position of the submission that logged it ([`FROM_LOG`] if an earlier run
    /// of the engine did).
    pub pos: u64,
    /// When it was taken in (or its frame's commit time), nanoseconds since the Unix epoch.
    pub time: u64,
}

/// `IdEntry::pos` of an id an earlier run logged: no ring position of this run.
pub(crate) const FROM_LOG: u64 = u64::MAX;

const SHARDS: usize = 32;

type Shard = hashbrown::HashMap<RequestId, IdEntry, foldhash::fast::RandomState>;

/// The ids the engine remembers. Written by the flusher only (and at open); read by
/// submitters and tickets.
pub(crate) struct IdTable {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl fmt::Debug for IdTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTable").field("len", &self.len()).finish()
    }
}

impl IdTable {
    fn shard(&self, id: &RequestId) -> &Mutex<Shard> {
        // Ids are hashed again inside the shard; the shard is picked by bytes that a
        // counter, a hash or a UUID all vary.
        let b = id.0;
        let mix = b[15] ^ b[7] ^ b[3] ^ b[11];
        &self.shards[mix as usize % SHARDS]
    }

    pub fn get(&self, id: &RequestId) -> Option<IdEntry> {
        self.shard(id).lock().get(id).copied()
    }

    /// Inserts `id` unless present; true if it was inserted.
    pub fn insert_new(&self, id: RequestId, entry: IdEntry) -> bool {
        let mut s = self.shard(&id).lock();
        match s.entry(id) {
            hashbrown::hash_map::Entry::Occupied(_) => false,
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(entry);
                true
            }
        }
    }

    /// Forgets `id` if the table still has it logged in batch `seq`.
    fn remove_if(&self, id: &RequestId, seq: u64) {
        let mut s = self.shard(id).lock();
        if s.get(id).is_some_and(|e| e.seq == seq) {
            s.remove(id);
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// The ids logged in batches before `seq`, by batch.
    pub fn logged_before(&self, seq: u64) -> Vec<(RequestId, IdEntry)> {
        let mut v: Vec<(RequestId, IdEntry)> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .filter(|(_, e)| e.seq < seq)
                    .map(|(id, e)| (*id, *e))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by_key(|(id, e)| (e.seq, *id));
        v
    }
}

/// The flusher's record of the table's ids in the order they were logged, to forget the
/// oldest once the horizon passes them.
#[derive(Debug)]
pub(crate) struct Remembered {
    order: VecDeque<(u64, u64, RequestId)>,
    horizon: IdHorizon,
}

impl Remembered {
    pub fn new(horizon: IdHorizon) -> Remembered {
        Remembered {
            order: VecDeque::new(),
            horizon,
        }
    }

    /// Records that `id` entered the table, logged in batch `seq` at `time`.
    pub fn push(&mut self, id: RequestId, seq: u64, time: u64) {
        self.order.push_back((seq, time, id));
    }

    /// Forgets, from `table` too, the ids beyond the horizon at `now`.
    pub fn evict(&mut self, table: &IdTable, now: u64) {
        let oldest_kept = self
            .horizon
            .age
            .map_or(0, |a| now.saturating_sub(a.as_nanos() as u64));
        while let Some(&(seq, time, id)) = self.order.front() {
            if self.order.len() <= self.horizon.ids && time >= oldest_kept {
                break;
            }
            table.remove_if(&id, seq);
            self.order.pop_front();
        }
    }
}

/// Nanoseconds since the Unix epoch now (0 before it: a clock set to 1970 ages nothing).
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The ids an open finds: the `ids` file's, then each frame's as the scan visits it, the
/// newest `horizon.ids` of them kept.
pub(crate) struct Found {
    ids: VecDeque<(RequestId, u64, u64)>,
    horizon: IdHorizon,
}

/// Starts an open's collection of ids with `dir`'s `ids` file (ids of retired segments).
pub(crate) fn carried(dir: &std::path::Path, horizon: IdHorizon) -> Result<Found> {
    let mut found = Found {
        ids: VecDeque::new(),
        horizon,
    };
    if let Some(bytes) = crate::log::dir::read_ids(dir)? {
        let path = dir.join(crate::log::dir::IDS_FILE);
        let ids = decode_carried(&bytes).map_err(|r| corrupt_carried(&path, r))?;
        found.extend(ids);
    }
    Ok(found)
}

impl Found {
    fn extend(&mut self, ids: impl IntoIterator<Item = (RequestId, u64, u64)>) {
        for id in ids {
            if self.ids.len() == self.horizon.ids {
                self.ids.pop_front();
            }
            self.ids.push_back(id);
        }
    }

    /// Adds the ids of `frame`, the next in log order.
    pub fn frame(&mut self, frame: &crate::log::format::Frame<'_>) {
        let (seq, time) = (frame.batch_seq, frame.commit_time.unwrap_or(0));
        self.extend(frame.ids().map(|id| (RequestId(id), seq, time)));
    }

    /// The table and order of what was found, the horizon applied now.
    pub fn rebuild(self) -> (IdTable, Remembered) {
        rebuild(self.ids.into(), self.horizon, now_nanos())
    }
}

/// The ids an open found (the `ids` file's, then the frames', in log order), entered into a
/// new table and its order, the horizon applied at `now`.
pub(crate) fn rebuild(
    found: Vec<(RequestId, u64, u64)>,
    horizon: IdHorizon,
    now: u64,
) -> (IdTable, Remembered) {
    let table = IdTable::default();
    let mut order = Remembered::new(horizon);
    // Only the newest `ids` can stay: skip the rest without inserting them.
    let skip = found.len().saturating_sub(horizon.ids);
    for (id, seq, time) in found.into_iter().skip(skip) {
        let entry = IdEntry {
            seq,
            pos: FROM_LOG,
            time,
        };
        if table.insert_new(id, entry) {
            order.push(id, seq, time);
        }
    }
    order.evict(&table, now);
    (table, order)
}

/// The `ids` file (docs/FORMAT.md, "Carried request ids"): magic, version, count, then per
/// id its bytes, batch and time, then a CRC of everything before it.
const IDS_MAGIC: [u8; 8] = *b"MLIDS\0\0\0";
const IDS_VERSION: u32 = 1;
const IDS_HEADER: usize = 8 + 4 + 4 + 8;
const IDS_ENTRY: usize = 16 + 8 + 8;

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

/// Decodes an `ids` file's bytes into (id, batch, time); the error says what is wrong.
pub(crate) fn decode_carried(
    b: &[u8],
) -> std::result::Result<Vec<(RequestId, u64, u64)>, &'static str> {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    if b.len() < IDS_HEADER + 4 || b[..8] != IDS_MAGIC {
        return Err("not a mergelog ids file (magic or length)");
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("checksum mismatch");
    }
    if b[8..12] != IDS_VERSION.to_le_bytes() || b[12..16] != [0; 4] {
        return Err("unknown version");
    }
    let count = u64_at(16);
    if count.checked_mul(IDS_ENTRY as u64) != Some((body.len() - IDS_HEADER) as u64) {
        return Err("the count does not match the length");
    }
    Ok((0..count as usize)
        .map(|i| {
            let at = IDS_HEADER + i * IDS_ENTRY;
            let id = RequestId(b[at..at + 16].try_into().unwrap());
            (id, u64_at(at + 16), u64_at(at + 24))
        })
        .collect())
}

/// Before segments holding the batches below `seq` are retired: writes every remembered id
/// logged below `seq` to the `ids` file (replacing it), so that a reopen still remembers
/// them. Nothing is written if there are none and there is no file to replace.
pub(crate) fn carry_before(
    io: &dyn crate::log::io::Io,
    dir: &std::path::Path,
    table: &IdTable,
    seq: u64,
) -> Result<()> {
    let carried = table.logged_before(seq);
    if carried.is_empty() && !dir.join(crate::log::dir::IDS_FILE).exists() {
        return Ok(());
    }
    crate::log::dir::write_ids(io, dir, &encode_carried(&carried))
}

/// The error for a damaged `ids` file.
pub(crate) fn corrupt_carried(path: &std::path::Path, reason: &str) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset: 0,
        reason: format!("request ids file: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> RequestId {
        RequestId::from(n)
    }

    #[test]
    fn carried_ids_round_trip_and_damage_is_refused() {
        let ids: Vec<(RequestId, IdEntry)> = (0..5)
            .map(|n| {
                let e = IdEntry {
                    seq: 10 + n as u64,
                    pos: FROM_LOG,
                    time: 1000 * n as u64,
                };
                (id(n), e)
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

    #[test]
    fn the_horizon_keeps_the_newest_ids_and_the_young_ones() {
        let found: Vec<_> = (0..10)
            .map(|n| (id(n), n as u64 + 1, n as u64 * 100))
            .collect();
        let (t, _) = rebuild(found.clone(), IdHorizon { ids: 4, age: None }, 0);
        assert_eq!(t.len(), 4);
        assert!(t.get(&id(5)).is_none() && t.get(&id(6)).is_some());
        let (t, mut order) = rebuild(
            found,
            IdHorizon {
                ids: 100,
                age: Some(Duration::from_nanos(250)),
            },
            1000,
        );
        // Times 800 and 900 are within 250 ns of 1000; 700 is not.
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(t.get(&id(7)).is_none() && t.get(&id(8)).is_some());
        assert_eq!(t.get(&id(9)).unwrap().seq, 10);
        order.evict(&t, 2000);
        assert_eq!(t.len(), 0);
        // An id entered again (after it was forgotten, in a later batch) is not removed by
        // the forgetting of its older entry.
        let t = IdTable::default();
        let mut order = Remembered::new(IdHorizon { ids: 1, age: None });
        let e = |seq| IdEntry {
            seq,
            pos: 0,
            time: 0,
        };
        assert!(t.insert_new(id(1), e(1)));
        assert!(!t.insert_new(id(1), e(2)), "present already");
        order.push(id(1), 1, 0);
        t.remove_if(&id(1), 1);
        assert!(t.insert_new(id(1), e(3)));
        order.push(id(1), 3, 0);
        order.evict(&t, 0);
        assert_eq!(t.get(&id(1)).map(|e| e.seq), Some(3));
    }

    #[test]
    fn request_ids_print_as_hex() {
        assert_eq!(id(0xab).to_string(), format!("{:0>32}", "ab"));
        assert_eq!(RequestId::from([7; 16]).as_bytes(), &[7; 16]);
        let o = Outcome::Duplicate { seq: Seq::new(4) };
        assert!(o.is_duplicate() && o.seq() == 4);
    }
}
