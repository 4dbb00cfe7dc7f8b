//! Target `raft_store`: `mergelog-raft`'s decoders over records the fuzzer damages.
//!
//! A template log is written once per process through the real store (`LogStore`: a vote,
//! entries stored whole and in chunks, a committed id, a truncate, a purge) and read back
//! record by record, batch by batch. An input chooses a template and, record by record, keeps,
//! drops or changes it (a byte of its key or value, a shorter value, other bytes) or adds a
//! record of the store's kinds before it (see [`RaftInput::parse`]). The records are written
//! into a fresh directory through a mergelog `Engine`, one `WriteBatch` per template batch,
//! so the log is a real one whose frames are sound and whose raft records are whatever the
//! fuzzer made them. Then `LogStore::open`, and its reads, are checked against a model of the
//! store's layout computed from the same records (`Model`):
//!
//! - nothing panics (an overflow included: the checks run with overflow checks);
//! - the store opens exactly when the model finds its state sound: the vote, the committed
//!   and purged ids decode, the entries are consecutive from right after the purged id (from
//!   0 with none), the last one decodes at its key's index, the committed id is not past
//!   the last log id, of the entries that read, the leader ids (terms) never go down from
//!   the purged id on, index after index, and the one at the committed id's index has that
//!   id, and the vote's term (0 with none) is not below the last log id's; otherwise the
//!   error names what is wrong;
//! - once open, the vote, the committed id, the purged id and the last log id are the ones
//!   the records hold;
//! - a read of every entry, and of a range inside, returns consecutive entries, each the one
//!   the records hold at its key's index (stored whole, or reassembled from its chunks with
//!   the length and CRC of its header), or an error naming what is wrong when one of them is
//!   damaged: never an entry whose log id is not its key's index;
//! - with every record kept, the store returns exactly what the template wrote;
//! - then the input's bytes left over are calls on the store (a vote, an append, a committed
//!   id, a truncate, a purge, near what a node writes or not: [`drive`]): each is taken, or
//!   refused saying so (or fails reading a damaged entry), and after those taken the store's
//!   next open takes the directory.
//!
//! Depends on `mergelog`, `mergelog-raft`, `openraft`, `postcard` and `tempfile`: included by
//! the fuzz target (`fuzz_targets/raft_store.rs`) and by `mergelog-raft/tests/fuzz_corpus.rs`,
//! which replays the corpus and the regressions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use mergelog::{Config, Durability, Engine, LogReader, RecordOp, WriteBatch};
use mergelog_raft::kv::{Request, TypeConfig};
use mergelog_raft::LogStore;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, Vote,
};

type Store = LogStore<TypeConfig>;
type RaftEntry = Entry<TypeConfig>;

/// The store's engine: values of at most 64 bytes, so entries longer than that are stored
/// in chunks of 64 bytes (`LogStore::chunk_len`), and small rings and segments.
pub fn raft_config() -> Config {
    Config {
        value_len_max: 64,
        batch_bytes_max: 4096,
        ring_bytes: 64 << 10,
        segment_bytes: 64 << 10,
        durability: Durability::Sync,
        ..Config::default()
    }
}

/// One record of a log: a put (`Some(value)`) or a delete (`None`) of `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A template: the records the store wrote, batch by batch, and the entries it holds then
/// (what a read of everything returns), with its vote, committed and purged ids.
pub struct Template {
    pub batches: Vec<Vec<Rec>>,
    pub entries: Vec<RaftEntry>,
    pub vote: Option<Vote<u64>>,
    pub committed: Option<LogId<u64>>,
    pub purged: Option<LogId<u64>>,
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, len: usize) -> RaftEntry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            key: format!("k{index}"),
            value: (0..len).map(|i| (i as u64 * 31 + index) as u8).collect(),
        }),
    }
}

/// Runs a future that completes without a runtime's help (the store's calls wait on
/// tickets and openraft's oneshot channels, which wake the thread that polls).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => return out,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// The templates, written once per process: 0 with a truncate and a purge, 1 without.
pub fn templates() -> &'static [Template; 2] {
    static T: OnceLock<[Template; 2]> = OnceLock::new();
    T.get_or_init(|| [make_template(true), make_template(false)])
}

fn make_template(purge: bool) -> Template {
    let dir = scratch_dir();
    let mut store = Store::open(dir.path(), raft_config()).expect("a new store opens");
    let mut vote = Vote::new(3, 1);
    block_on(async {
        store.save_vote(&vote).await.expect("save_vote");
        let mut members = std::collections::BTreeMap::new();
        members.insert(1u64, BasicNode::new("a"));
        // From index 0, as openraft's log starts, under the vote saved before.
        let first = vec![
            Entry {
                log_id: log_id(3, 0),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 1),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1u64].into_iter().collect()],
                    members,
                )),
            },
            normal(3, 2, 5),
            // 200 bytes of payload: stored in chunks (4 of them).
            normal(3, 3, 200),
            normal(3, 4, 20),
            normal(3, 5, 90),
        ];
        store.blocking_append(first).await.expect("append");
        store
            .save_committed(Some(log_id(3, 3)))
            .await
            .expect("save_committed");
        if purge {
            store.truncate(log_id(3, 5)).await.expect("truncate");
            vote = Vote::new_committed(4, 1);
            store.save_vote(&vote).await.expect("save_vote");
            let second = vec![normal(4, 5, 1), normal(4, 6, 130), normal(4, 7, 0)];
            store.blocking_append(second).await.expect("append");
            store.purge(log_id(3, 1)).await.expect("purge");
        }
    });
    let entries = block_on(store.try_get_log_entries(..)).expect("read the template");
    let state = block_on(store.get_log_state()).expect("log state");
    let committed = block_on(store.read_committed()).expect("committed");
    store.close().expect("close the template store");
    let reader = LogReader::open(dir.path()).expect("read the template log");
    let batches: Vec<Vec<Rec>> = reader
        .batches()
        .map(|b| {
            b.records()
                .map(|r| Rec {
                    key: r.key.to_vec(),
                    value: match r.op {
                        RecordOp::Delete => None,
                        _ => Some(r.value.to_vec()),
                    },
                })
                .collect()
        })
        .collect();
    Template {
        batches,
        entries,
        vote: Some(vote),
        committed,
        purged: state.last_purged_log_id,
    }
}

/// How an input changes a template (see [`RaftInput::parse`]).
#[derive(Clone, Debug)]
pub struct RaftInput {
    pub template: usize,
    /// The records to write, batch by batch.
    pub batches: Vec<Vec<Rec>>,
    /// Every record of the template kept as written, and nothing added.
    pub unchanged: bool,
    /// The bounds of the inner range read (start, length).
    pub range: (u64, u64),
    /// The input's bytes after the records' operations: the calls made on the opened store
    /// ([`drive`]).
    pub calls: Vec<u8>,
}

/// Reads input bytes, zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The meta keys the store writes (`mergelog-raft/src/meta.rs`).
const META_KEYS: [&[u8]; 3] = [b"m/vote", b"m/committed", b"m/purged"];

impl RaftInput {
    /// Derives the records from fuzz bytes:
    ///
    /// - byte 0: bit 0 the template (0: with a truncate and a purge, 1: without); bits 1–7
    ///   and byte 1 the inner range read (start = byte 0 >> 1 mod 12, length = byte 1 mod 12).
    /// - then, for each template record in log order, an operation byte (records after the
    ///   input's end are kept): `op % 8` = 0 or 1 keep; 2 drop; 3 xor the value's byte at
    ///   (next byte) with (next byte) (a delete becomes a put of that byte); 4 the same in
    ///   the key; 5 cut the value to (next byte) mod (its length + 1) bytes; 6 replace the
    ///   value with (next byte) mod 40 bytes taken from the input; 7 add a record before
    ///   this one (which is then kept): kind (next byte: `% 6` = 0 an entry key, 1 a chunk
    ///   key, 2–4 a meta key, 5 a delete of an entry key), index (next byte, mod 12), chunk
    ///   number (next byte, mod 8), then a value of (next byte) mod 40 input bytes.
    ///   Bit 3 of an operation byte (`op & 8`, for op 0–6) ends the record's batch after it,
    ///   so one template batch becomes two.
    pub fn parse(data: &[u8]) -> RaftInput {
        let mut input = Bytes(data);
        let control = input.u8();
        let range_len = input.u8();
        let template = usize::from(control & 1);
        let t = &templates()[template];
        let mut batches = Vec::new();
        let mut unchanged = true;
        for batch in &t.batches {
            let mut out = Vec::new();
            for rec in batch {
                if input.is_empty() {
                    out.push(rec.clone());
                    continue;
                }
                let op = input.u8();
                let mut rec = rec.clone();
                match op % 8 {
                    0 | 1 => {}
                    2 => {
                        unchanged = false;
                        if op & 8 != 0 && !out.is_empty() {
                            batches.push(std::mem::take(&mut out));
                        }
                        continue;
                    }
                    3 => {
                        let (at, x) = (input.u8(), input.u8());
                        let value = rec.value.get_or_insert_with(Vec::new);
                        match value.len() {
                            0 => value.push(x),
                            len => value[usize::from(at) % len] ^= x,
                        }
                        unchanged = false;
                    }
                    4 => {
                        let (at, x) = (input.u8(), input.u8());
                        let len = rec.key.len();
                        if len > 0 {
                            rec.key[usize::from(at) % len] ^= x;
                        }
                        unchanged &= x == 0 || len == 0;
                    }
                    5 => {
                        let n = usize::from(input.u8());
                        if let Some(v) = &mut rec.value {
                            let keep = n % (v.len() + 1);
                            unchanged &= keep == v.len();
                            v.truncate(keep);
                        }
                    }
                    6 => {
                        let n = usize::from(input.u8()) % 40;
                        rec.value = Some(input.take(n));
                        unchanged = false;
                    }
                    _ => {
                        let kind = input.u8() % 6;
                        let index = u64::from(input.u8() % 12);
                        let chunk = u32::from(input.u8() % 8);
                        let n = usize::from(input.u8()) % 40;
                        let value = input.take(n);
                        let key = match kind {
                            0 | 5 => entry_key(index).to_vec(),
                            1 => chunk_key(index, chunk).to_vec(),
                            k => META_KEYS[usize::from(k - 2)].to_vec(),
                        };
                        let value = (kind != 5).then_some(value);
                        out.push(Rec { key, value });
                        unchanged = false;
                    }
                }
                out.push(rec);
                if op & 8 != 0 && op % 8 != 7 {
                    batches.push(std::mem::take(&mut out));
                }
            }
            if !out.is_empty() {
                batches.push(out);
            }
        }
        RaftInput {
            template,
            batches,
            unchanged,
            range: (u64::from(control >> 1) % 12, u64::from(range_len) % 12),
            calls: input.0.to_vec(),
        }
    }

    /// The inverse of `parse` for seeds: `ops` are the operation bytes (with their
    /// arguments) in record order. (Used by the replaying test, not by the fuzz target.)
    #[allow(dead_code)]
    pub fn encode(template: usize, range: (u8, u8), ops: &[u8]) -> Vec<u8> {
        let mut out = vec![(range.0 << 1) | (template as u8 & 1), range.1];
        out.extend_from_slice(ops);
        out
    }
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [b'e'; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn chunk_key(index: u64, n: u32) -> [u8; 13] {
    let mut key = [b'c'; 13];
    key[1..9].copy_from_slice(&index.to_be_bytes());
    key[9..].copy_from_slice(&n.to_be_bytes());
    key
}

/// Writes the records into `dir`, one `WriteBatch` per batch, and closes the engine; the
/// batches the engine refuses (a key or value past its limits, an empty batch) are left out.
fn write_log(dir: &Path, batches: &[Vec<Rec>]) {
    let engine = Engine::open(dir, raft_config()).expect("a new engine opens");
    for batch in batches {
        let mut b = WriteBatch::new();
        for rec in batch {
            match &rec.value {
                Some(v) => b.put(&rec.key, v),
                None => b.delete(&rec.key),
            };
        }
        if batch.is_empty() {
            continue;
        }
        match engine.write(&b) {
            Ok(t) => drop(t.wait().expect("a batch is written")),
            // A frame of several requests may be larger than one request may be: its records
            // one by one then (a record past the limits is left out).
            Err(_) => {
                for rec in batch {
                    let put = match &rec.value {
                        Some(v) => engine.put(&rec.key, v),
                        None => engine.delete(&rec.key),
                    };
                    if let Ok(t) = put {
                        t.wait().expect("a record is written");
                    }
                }
            }
        }
    }
    engine.close().expect("the engine closes");
}

/// The store's layout, computed from the log's records as a `LogReader` replays them.
struct Model {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Why the model finds the state it reads damaged.
type Why = String;

impl Model {
    fn read(dir: &Path) -> Model {
        let reader = LogReader::open(dir).expect("the written log reads");
        let mut kv = BTreeMap::new();
        for b in reader.batches() {
            for r in b.records() {
                match r.op {
                    RecordOp::Delete => {
                        kv.remove(r.key);
                    }
                    _ => {
                        kv.insert(r.key.to_vec(), r.value.to_vec());
                    }
                }
            }
        }
        Model { kv }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Why> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(v) => decode(v)
                .map(Some)
                .map_err(|e| format!("{} does not decode: {e}", String::from_utf8_lossy(key))),
        }
    }

    /// The entry at index `i` as the store's layout says: stored whole, or in chunks.
    fn entry(&self, i: u64) -> Result<Option<RaftEntry>, Why> {
        let Some(v) = self.kv.get(&entry_key(i)[..]) else {
            return Ok(None);
        };
        let encoded = match v.is_empty() {
            false => v.clone(),
            true => self.chunks(i)?,
        };
        let entry: RaftEntry = decode(&encoded).map_err(|e| format!("entry {i}: {e}"))?;
        if entry.log_id.index != i {
            return Err(format!(
                "entry {i} holds the log id of index {}",
                entry.log_id.index
            ));
        }
        Ok(Some(entry))
    }

    fn chunks(&self, i: u64) -> Result<Vec<u8>, Why> {
        let chunk = |n: u32| {
            self.kv
                .get(&chunk_key(i, n)[..])
                .ok_or_else(|| format!("entry {i}: chunk {n} is missing"))
        };
        let c0 = chunk(0)?;
        if c0.len() < 16 {
            return Err(format!("entry {i}: chunk 0 has no header"));
        }
        let len = u64::from_le_bytes(c0[..8].try_into().unwrap());
        let count = u32::from_le_bytes(c0[8..12].try_into().unwrap());
        let crc = u32::from_le_bytes(c0[12..16].try_into().unwrap());
        let mut encoded = c0[16..].to_vec();
        let mut n = 1;
        while n < count && encoded.len() as u64 <= len {
            encoded.extend_from_slice(chunk(n)?);
            n += 1;
        }
        if encoded.len() as u64 != len {
            return Err(format!("entry {i}: length"));
        }
        if crc32c(&encoded) != crc {
            return Err(format!("entry {i}: CRC"));
        }
        Ok(encoded)
    }

    /// The entry keys' indexes at or after `first`, in order.
    fn indexes_from(&self, first: u64) -> Vec<u64> {
        let from = entry_key(first);
        let mut found: Vec<u64> = (self.kv.range(from.to_vec()..))
            .map(|(k, _)| k)
            .take_while(|k| k.first() == Some(&b'e'))
            .filter(|k| k.len() == 9)
            .map(|k| u64::from_be_bytes(k[1..].try_into().unwrap()))
            .collect();
        found.sort_unstable();
        found
    }
}

/// A stored value decoded as the store must: all of it, nothing left over.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} bytes left over", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// What the model expects of an open: the state, or why it must be refused.
struct Expected {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    /// `[first, next)`.
    first: u64,
    next: u64,
    last: Option<LogId<u64>>,
}

fn expect_open(m: &Model) -> Result<Expected, Why> {
    let vote = m.meta::<Vote<u64>>(b"m/vote")?;
    let committed = m.meta::<Option<LogId<u64>>>(b"m/committed")?.flatten();
    let purged = m.meta::<LogId<u64>>(b"m/purged")?;
    let first = match &purged {
        Some(p) => p
            .index
            .checked_add(1)
            .ok_or("the purged log id's index is the largest")?,
        None => 0,
    };
    let present = m.indexes_from(first);
    let (next, last) = match (present.first(), present.last()) {
        (Some(&lo), Some(&hi)) => {
            // Right after the purged id, or at 0 with none.
            if hi - lo + 1 != present.len() as u64 || lo != first {
                return Err("hole".into());
            }
            let entry = m.entry(hi)?.expect("present");
            let next = hi
                .checked_add(1)
                .ok_or("the last entry's index is the largest")?;
            (next, Some(entry.log_id))
        }
        _ => (first, purged),
    };
    // The committed id is never past the log's end.
    if let Some(c) = &committed {
        if last.as_ref().is_none_or(|l| c.index > l.index) {
            return Err("the committed id is past the last log id".into());
        }
    }
    // Terms never go down along a Raft log, from the purged id on, and the entry at the
    // committed id's index has that id: through the entries that read (one that does not is
    // a read error, not the open's).
    let mut before = purged.as_ref().map(|p| p.leader_id);
    for &i in &present {
        if let Ok(Some(e)) = m.entry(i) {
            if before.is_some_and(|b| e.log_id.leader_id < b) {
                return Err(format!("entry {i}'s term goes down"));
            }
            if committed
                .as_ref()
                .is_some_and(|c| c.index == i && *c != e.log_id)
            {
                return Err(format!("the committed id is not entry {i}'s"));
            }
            before = Some(e.log_id.leader_id);
        }
    }
    // The vote's term (no vote: 0) is never below the last log id's.
    let vote_term = vote.map_or(0, |v| v.leader_id().term);
    if last.is_some_and(|l| l.leader_id.term > vote_term) {
        return Err("the vote's term is below the last log id's".into());
    }
    Ok(Expected {
        vote,
        committed,
        purged,
        first,
        next,
        last,
    })
}

/// The phrases the store's errors use for what is wrong (`CodecError`'s messages): an error
/// at open or read must say one of them.
const CLEAR: [&str; 8] = [
    "does not decode",
    "has a hole",
    "is of a term below that of the last log id",
    "stored in chunks, is damaged",
    "holds the log id of",
    "the largest",
    "terms never go down",
    "the committed log id",
];

fn assert_clear(e: &impl std::fmt::Display, what: &str) {
    let msg = e.to_string();
    assert!(
        CLEAR.iter().any(|p| msg.contains(p)),
        "{what}: an error that does not say what is wrong: {msg}"
    );
}

/// The store's open over an input's records: `Err` with its error's text if it refuses them.
/// (For the seeds' test, not the fuzz target.)
#[allow(dead_code)]
pub fn open_input(data: &[u8]) -> Result<(), String> {
    let input = RaftInput::parse(data);
    let root = scratch_dir();
    let dir = root.path().join("raft");
    std::fs::create_dir(&dir).expect("mkdir");
    write_log(&dir, &input.batches);
    let store = Store::open(&dir, raft_config()).map_err(|e| e.to_string())?;
    store.close().expect("the store closes");
    Ok(())
}

/// Target `raft_store`: see the module's documentation.
pub fn raft_store(data: &[u8]) {
    let input = RaftInput::parse(data);
    let t = &templates()[input.template];
    let root = scratch_dir();
    let dir = root.path().join("raft");
    std::fs::create_dir(&dir).expect("mkdir");
    write_log(&dir, &input.batches);
    let model = Model::read(&dir);
    let expected = expect_open(&model);
    let opened = Store::open(&dir, raft_config());
    let (mut store, exp) = match (opened, expected) {
        (Ok(mut store), Ok(exp)) => {
            check_state(&mut store, &exp);
            (store, exp)
        }
        (Err(e), Err(why)) => {
            assert_clear(&e, &format!("open (the model: {why})"));
            return;
        }
        (Ok(_), Err(why)) => panic!("the store opened a log the model refuses: {why}"),
        (Err(e), Ok(_)) => panic!("the store refused a log the model opens: {e}"),
    };

    // Every entry, then a range inside.
    let all = block_on(store.try_get_log_entries(..));
    check_read(&model, exp.first, exp.next, all, "read of every entry");
    let start = exp.first.saturating_add(input.range.0);
    let end = start.saturating_add(input.range.1);
    let part = block_on(store.try_get_log_entries(start..end));
    check_read(
        &model,
        start.max(exp.first),
        end.min(exp.next).max(start.max(exp.first)),
        part,
        "a range read",
    );
    if input.unchanged {
        let all = block_on(store.try_get_log_entries(..)).expect("the template reads");
        assert_eq!(all, t.entries, "the template's entries");
        assert_eq!(exp.vote, t.vote, "the template's vote");
        assert_eq!(exp.committed, t.committed, "the template's committed id");
        assert_eq!(exp.purged, t.purged, "the template's purged id");
    }
    let taken = drive(&mut store, &input.calls);
    store.close().expect("the store closes");
    match Store::open(&dir, raft_config()) {
        Ok(store) => store.close().expect("the store closes"),
        Err(e) => panic!("the store took {taken:?} and its next open refuses the log: {e}"),
    }
}

/// Makes calls on the opened store, up to 12, from `bytes` (2 each: the call, `% 5` a vote,
/// an append, a committed id, a truncate, a purge, and its argument), as a caller driving
/// the store by hand may, near what a node writes or not: the store may refuse any (it must
/// then say so, or fail reading a damaged entry), and whatever it takes, its next open must
/// take too. Returns the calls taken.
fn drive(store: &mut Store, bytes: &[u8]) -> Vec<String> {
    let mut taken = Vec::new();
    for call in bytes.chunks_exact(2).take(12) {
        let (op, arg) = (call[0], u64::from(call[1]));
        let state = block_on(store.get_log_state()).expect("get_log_state");
        let next = state.last_log_id.map_or(0, |l| l.index + 1);
        let last_term = state.last_log_id.map_or(0, |l| l.leader_id.term);
        let vote_term = block_on(store.read_vote())
            .expect("read_vote")
            .map_or(0, |v| v.leader_id().term);
        // A term near the last log id's, and an index near the log's end.
        let term = last_term.saturating_sub(1) + u64::from(op >> 3) % 3;
        let index = (next + arg % 4).saturating_sub(2);
        let (what, outcome) = match op % 5 {
            0 => {
                let vote = Vote::new_committed(vote_term + arg % 2, 1);
                (format!("vote {vote}"), block_on(store.save_vote(&vote)))
            }
            1 => {
                let n = 1 + arg % 3;
                let entries: Vec<RaftEntry> = (index..index + n)
                    .map(|i| normal(term, i, (arg as usize * 7) % 100))
                    .collect();
                let what = format!("append {index}..{} of term {term}", index + n);
                (what, block_on(store.blocking_append(entries)))
            }
            2 => {
                let id = (arg % 5 != 0).then(|| log_id(term, index));
                (
                    format!("committed {id:?}"),
                    block_on(store.save_committed(id)),
                )
            }
            3 => (
                format!("truncate {index}"),
                block_on(store.truncate(log_id(term, index))),
            ),
            _ => (
                format!("purge {index}"),
                block_on(store.purge(log_id(term, index))),
            ),
        };
        match outcome {
            Ok(()) => taken.push(what),
            // A refusal, or a read of a damaged entry (a truncate reads the one before it).
            Err(e) => assert_clear_or_refused(&e, &what),
        }
    }
    taken
}

fn assert_clear_or_refused(e: &impl std::fmt::Display, what: &str) {
    if !e.to_string().contains("refused (nothing written)") {
        assert_clear(e, what);
    }
}

fn check_state(store: &mut Store, exp: &Expected) {
    let vote = block_on(store.read_vote()).expect("read_vote");
    assert_eq!(vote, exp.vote, "the vote");
    let committed = block_on(store.read_committed()).expect("read_committed");
    assert_eq!(committed, exp.committed, "the committed id");
    let state = block_on(store.get_log_state()).expect("get_log_state");
    assert_eq!(state.last_purged_log_id, exp.purged, "the purged id");
    assert_eq!(state.last_log_id, exp.last, "the last log id");
}

/// A read of `[from, to)` (clamped to the log): the model's entries there, or an error when
/// one of them is damaged.
fn check_read(
    model: &Model,
    from: u64,
    to: u64,
    got: Result<Vec<RaftEntry>, openraft::StorageError<u64>>,
    what: &str,
) {
    let expected: Result<Vec<RaftEntry>, Why> = (from..to)
        .map(|i| {
            model
                .entry(i)
                .and_then(|e| e.ok_or(format!("entry {i} is missing")))
        })
        .collect();
    match (got, expected) {
        (Ok(got), Ok(want)) => {
            for w in got.windows(2) {
                assert_eq!(
                    w[0].log_id.index + 1,
                    w[1].log_id.index,
                    "{what}: entries not consecutive"
                );
            }
            assert_eq!(got, want, "{what} [{from}, {to})");
        }
        (Err(e), Err(why)) => assert_clear(&e, &format!("{what} (the model: {why})")),
        (Ok(got), Err(why)) => panic!(
            "{what} [{from}, {to}) returned {} entries where the model finds damage: {why}",
            got.len()
        ),
        (Err(e), Ok(_)) => panic!("{what} [{from}, {to}) failed where the model reads: {e}"),
    }
}

fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// A scratch directory: under `/dev/shm` when it exists (the store syncs every write), else
/// the system temp dir.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("mergelog-raft-fuzz-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("mergelog-raft-fuzz-")
        .tempdir()
        .expect("create a temp dir")
}
