//! An event-sourced ledger on two mergelog engines: the code shared by `examples/ledger.rs`
//! (the demonstration) and `tests/ledger_crash.rs` (its kill -9 proof).
//!
//! - The **bank** (the writer process) owns the source log. Accounts are opened
//!   (`open/<account>` = balance) and money is moved (`tx/<voucher>` = `from to amount`) by
//!   events, each submitted with a request id derived from what names it (the account, the
//!   transfer's voucher): a client that retries an unacknowledged transfer with the same
//!   voucher gets `Outcome::Duplicate` and the batch of the original, and the log holds every
//!   event once.
//! - The **ledger** (the consumer process) reads the bank's log through the durable consumer
//!   [`CONSUMER`] (`LogReader::consumer`: read-only, another process) and applies every event
//!   to its own engine, the ledger state: `acct/<account>` balances, `applied/<voucher>` or
//!   `comp/<voucher>` markers, `stat/*` counters. A transfer that would overdraw its source
//!   account (or names an account that does not exist) is refused: its compensating event
//!   `comp/<voucher>` is recorded instead of the debit and credit. Each event's effect is one
//!   atomic write submitted with the *effect id* derived from the event's id, the same id
//!   whether the effect is the transfer or its compensation: so a re-delivered event can
//!   never be applied twice, nor applied once and compensated once, even when the balances
//!   it is decided on have moved since.
//! - The ledger commits its consumer position only after the effects of a batch are durable.
//!   A crash between the two re-delivers the batch (at-least-once delivery); its effects then
//!   come back as duplicates and change nothing (exactly-once effects).
//! - The ledger's state is rebuilt at open by replay: the last snapshot (balances, counters
//!   and the ledger batch they cover; written to a temporary file, synced, renamed, the
//!   directory synced), then the ledger's batches after it. After a snapshot the ledger
//!   retires its own history before the batch it covers, and the bank retires what the
//!   ledger has committed (`retire_before` never passes the ledger's commit): both logs stay
//!   bounded.
//!
//! What is exactly-once and what is not: events in the bank's log and effects in the ledger
//! are exactly-once *within the id horizons* (`Config::request_ids`) of the two engines. The
//! bank remembers the newest `ids` request ids: a retry of a voucher older than that would be
//! logged a second time; the ledger's effect ids then stop it only if the ledger still
//! remembers the effect's id, and a retry older than both horizons would be applied twice. The
//! ledger's own re-deliveries are never older than one uncommitted batch. Consumer delivery is
//! at-least-once; the printing a consumer does on the side (see `examples/ledger.rs`) may be
//! repeated after a crash.

// An application writes its snapshot file with `std::fs`, not through the engine's storage
// seam (the lint keeps the library's own file changes there).
#![allow(clippy::disallowed_methods)]

use mergelog::{
    Config, Consumer, ConsumerLag, Engine, IdTicket, Outcome, OwnedBatch, RecordOp, RequestId,
    Retired, Seq, WriteBatch,
};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The durable consumer through which the ledger reads the bank's log.
pub const CONSUMER: &str = "ledger";
/// The longest account name: an account's event id holds its name.
pub const ACCOUNT_LEN_MAX: usize = 15;
/// The snapshot file in the ledger's directory (next to its engine's `log/`).
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_MAGIC: &str = "mergelog-ledger-snapshot 1";
/// How long the ledger waits for a batch before it looks at its stop condition again.
const POLL: Duration = Duration::from_millis(20);

/// What can go wrong in the ledger: the engines' errors, and bad events or snapshots (never a
/// panic).
#[derive(Debug)]
pub enum LedgerError {
    /// An engine (the bank's or the ledger's) refused or failed.
    Engine(mergelog::Error),
    /// The snapshot file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// A record of a log is not an event (or an effect) of this ledger.
    BadRecord {
        /// The batch holding it.
        seq: Seq,
        /// Its key, lossily as text.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot file is not a valid snapshot, or does not fit the ledger's log.
    BadSnapshot(PathBuf, String),
    /// An event that cannot be logged (a negative balance, a transfer of nothing).
    BadEvent(String),
    /// An account name that is not 1 to 15 characters of `[a-z0-9_]`.
    BadAccount(String),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Engine(e) => write!(f, "{e}"),
            LedgerError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            LedgerError::BadRecord { seq, key, reason } => {
                write!(f, "batch {seq}, key {key:?}: {reason}")
            }
            LedgerError::BadSnapshot(p, why) => write!(f, "{}: {why}", p.display()),
            LedgerError::BadEvent(why) => write!(f, "bad event: {why}"),
            LedgerError::BadAccount(a) => write!(
                f,
                "account name {a:?}: 1 to {ACCOUNT_LEN_MAX} characters of [a-z0-9_]"
            ),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<mergelog::Error> for LedgerError {
    fn from(e: mergelog::Error) -> Self {
        LedgerError::Engine(e)
    }
}

/// The ledger's result.
pub type Result<T> = std::result::Result<T, LedgerError>;

/// One movement of money, named by its voucher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The client's number for it: the transfer's identity across retries.
    pub voucher: u64,
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much (positive).
    pub amount: i64,
}

/// An event of the bank's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An account comes into being with a balance.
    Open {
        /// Its name.
        account: String,
        /// Its first balance.
        balance: i64,
    },
    /// A transfer is asked for.
    Transfer(Transfer),
}

/// Refuses a name that is not 1 to [`ACCOUNT_LEN_MAX`] characters of `[a-z0-9_]`.
fn check_account(name: &str) -> Result<()> {
    let ok = (1..=ACCOUNT_LEN_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match ok {
        true => Ok(()),
        false => Err(LedgerError::BadAccount(name.to_owned())),
    }
}

/// Id tags: the first byte of an event's request id. An effect's id is its event's id with
/// the tag in lower case, so the two engines' ids never meet, and one is derived from the
/// other without a table.
const TAG_OPEN: u8 = b'O';
const TAG_TRANSFER: u8 = b'T';

impl Event {
    /// The event's request id in the bank's log: the tag, then the account name (zero padded)
    /// or the voucher (big-endian, in the last 8 bytes).
    pub fn id(&self) -> RequestId {
        let mut b = [0u8; 16];
        match self {
            Event::Open { account, .. } => {
                b[0] = TAG_OPEN;
                b[1..1 + account.len()].copy_from_slice(account.as_bytes());
            }
            Event::Transfer(t) => {
                b[0] = TAG_TRANSFER;
                b[8..].copy_from_slice(&t.voucher.to_be_bytes());
            }
        }
        RequestId::from(b)
    }

    /// The request id of the event's effect in the ledger, whichever effect it is (applied
    /// or compensated): one per event.
    pub fn effect_id(&self) -> RequestId {
        let mut b = *self.id().as_bytes();
        b[0] = b[0].to_ascii_lowercase();
        RequestId::from(b)
    }

    /// The event's key and value in the bank's log.
    fn encode(&self) -> (String, String) {
        match self {
            Event::Open { account, balance } => (format!("open/{account}"), balance.to_string()),
            Event::Transfer(t) => (
                format!("tx/{:016x}", t.voucher),
                format!("{} {} {}", t.from, t.to, t.amount),
            ),
        }
    }

    /// The event a record of the bank's log holds.
    fn decode(seq: Seq, op: RecordOp, key: &[u8], value: &[u8]) -> Result<Event> {
        let bad = |reason: &str| LedgerError::BadRecord {
            seq,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_owned(),
        };
        if op != RecordOp::Put {
            return Err(bad("the bank's log holds puts only"));
        }
        let key = std::str::from_utf8(key).map_err(|_| bad("not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| bad("value not UTF-8"))?;
        let event = if let Some(account) = key.strip_prefix("open/") {
            let balance = value.parse().map_err(|_| bad("balance not a number"))?;
            Event::Open {
                account: account.to_owned(),
                balance,
            }
        } else if let Some(voucher) = key.strip_prefix("tx/") {
            let voucher = u64::from_str_radix(voucher, 16).map_err(|_| bad("bad voucher"))?;
            let parts: Vec<&str> = value.split(' ').collect();
            let [from, to, amount] = parts[..] else {
                return Err(bad("a transfer is `from to amount`"));
            };
            let amount = amount.parse().map_err(|_| bad("amount not a number"))?;
            Event::Transfer(Transfer {
                voucher,
                from: from.to_owned(),
                to: to.to_owned(),
                amount,
            })
        } else {
            return Err(bad("neither open/ nor tx/"));
        };
        event.check().map_err(|e| bad(&e.to_string()))?;
        Ok(event)
    }

    /// Refuses an event that cannot be logged: a bad account name, a negative balance or a
    /// transfer of nothing (a refused overdraft is not an error: it is compensated).
    fn check(&self) -> Result<()> {
        let invalid = |why: &str| LedgerError::BadEvent(why.to_owned());
        match self {
            Event::Open { account, balance } => {
                check_account(account)?;
                if *balance < 0 {
                    return Err(invalid("an account opens with a balance of 0 or more"));
                }
            }
            Event::Transfer(t) => {
                check_account(&t.from)?;
                check_account(&t.to)?;
                if t.amount <= 0 {
                    return Err(invalid("a transfer moves a positive amount"));
                }
            }
        }
        Ok(())
    }
}

/// The source engine's settings: small segments (so that retirement shows on a small run),
/// and submissions blocked while the ledger lags by more than 512 batches.
pub fn bank_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        consumer_lag_max: Some(ConsumerLag {
            batches: Some(512),
            ..ConsumerLag::default()
        }),
        ..Config::default()
    }
}

/// The ledger engine's settings: small segments, as the bank's.
pub fn ledger_config() -> Config {
    Config {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ring_bytes: 1 << 20,
        ..Config::default()
    }
}

/// The writer side: the bank's log of events.
pub struct Bank {
    engine: Engine,
}

impl Bank {
    /// Opens (or creates) the bank's log in `dir`, with the ledger's consumer registered, so
    /// that no retirement removes a batch before the ledger has applied it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bank> {
        let engine = Engine::open(dir, bank_config())?;
        // Creates `consumer-ledger` at "nothing consumed" if it is new; the handle is not
        // needed here (the ledger opens its own, in its process).
        drop(engine.consumer(CONSUMER)?);
        Ok(Bank { engine })
    }

    /// Submits an event with its request id. The ticket's `Outcome` says whether this
    /// submission logged it or an earlier one did (`Duplicate`), and in which batch.
    pub fn submit(&self, event: &Event) -> Result<IdTicket> {
        event.check()?;
        let (key, value) = event.encode();
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes(), value.as_bytes());
        Ok(self.engine.write_with_id(event.id(), &batch)?)
    }

    /// Retires the history the ledger has committed (up to all that is durable): whole
    /// segments only, never a batch the ledger has not committed.
    pub fn retire_consumed(&self) -> Result<Retired> {
        Ok(self.engine.retire_before(self.engine.durable_seq() + 1)?)
    }

    /// The bank's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Closes the bank's log (drains, syncs).
    pub fn close(self) -> Result<()> {
        Ok(self.engine.close()?)
    }
}

/// The ledger's state: what a snapshot holds, and what replay rebuilds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Every open account's balance.
    pub balances: BTreeMap<String, i64>,
    /// Events applied (accounts opened, transfers made).
    pub applied: u64,
    /// Events refused, each with its compensating event.
    pub compensated: u64,
    /// The last ledger batch folded in (0: none).
    pub covers: u64,
}

impl State {
    /// Folds one record of the ledger's log in: balances and counters are stored whole, so
    /// the newest record of a key is its value; markers change nothing here.
    fn fold(&mut self, seq: Seq, key: &[u8], value: &[u8]) -> Result<()> {
        let bad = |reason: &str| LedgerError::BadRecord {
            seq,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_owned(),
        };
        let key = std::str::from_utf8(key).map_err(|_| bad("not UTF-8"))?;
        let number = || -> Result<i64> {
            let v = std::str::from_utf8(value).map_err(|_| bad("value not UTF-8"))?;
            v.parse().map_err(|_| bad("value not a number"))
        };
        if let Some(account) = key.strip_prefix("acct/") {
            self.balances.insert(account.to_owned(), number()?);
        } else if key == "stat/applied" {
            self.applied = number()? as u64;
        } else if key == "stat/compensated" {
            self.compensated = number()? as u64;
        } else if !key.starts_with("applied/") && !key.starts_with("comp/") {
            return Err(bad("not a record of the ledger"));
        }
        self.covers = self.covers.max(seq.get());
        Ok(())
    }

    /// The effect of `event` (of bank batch `source`) on this state: the records to write,
    /// and what it is (applied or compensated).
    fn effect_of(&self, event: &Event, source: Seq) -> (Vec<(String, String)>, Effect) {
        let (name, refusal) = match event {
            Event::Open { account, .. } => (
                format!("open.{account}"),
                self.balances
                    .contains_key(account)
                    .then(|| format!("account {account} exists")),
            ),
            Event::Transfer(t) => (format!("{:016x}", t.voucher), self.refusal(t)),
        };
        let mut writes = Vec::new();
        if let Some(why) = refusal {
            // The compensating event, in place of the effect.
            writes.push((format!("comp/{name}"), format!("{source} refused: {why}")));
            let n = self.compensated + 1;
            writes.push(("stat/compensated".into(), n.to_string()));
            return (writes, Effect::Compensated(why));
        }
        match event {
            Event::Open { account, balance } => {
                writes.push((format!("acct/{account}"), balance.to_string()));
            }
            Event::Transfer(t) => {
                let (from, to) = (self.balances[&t.from], self.balances[&t.to]);
                writes.push((format!("acct/{}", t.from), (from - t.amount).to_string()));
                writes.push((format!("acct/{}", t.to), (to + t.amount).to_string()));
            }
        }
        writes.push((format!("applied/{name}"), source.to_string()));
        let n = self.applied + 1;
        writes.push(("stat/applied".into(), n.to_string()));
        (writes, Effect::Applied)
    }

    /// Why transfer `t` is refused, if it is: an unknown account, a transfer to itself, or
    /// an overdraft.
    fn refusal(&self, t: &Transfer) -> Option<String> {
        let Some(&from) = self.balances.get(&t.from) else {
            return Some(format!("no account {}", t.from));
        };
        let Some(&to) = self.balances.get(&t.to) else {
            return Some(format!("no account {}", t.to));
        };
        if to.checked_add(t.amount).is_none() {
            return Some(format!("the credit would overflow {}", t.to));
        }
        if t.from == t.to {
            return Some("a transfer to the same account".into());
        }
        (from < t.amount).then(|| format!("overdraft: {} has {from}, needs {}", t.from, t.amount))
    }

    /// Sum of all balances.
    pub fn total(&self) -> i64 {
        self.balances.values().sum()
    }
}

/// What the ledger did with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Applied: the account opened, or the money moved.
    Applied,
    /// Refused, and its compensating event recorded (the reason).
    Compensated(String),
    /// Already done by an earlier delivery (before a crash): nothing written; the effect is
    /// in ledger batch `seq`.
    Duplicate {
        /// The ledger batch holding the effect.
        seq: Seq,
    },
}

/// The consumer side: the ledger state, its engine and its snapshots.
pub struct Ledger {
    dir: PathBuf,
    engine: Engine,
    state: State,
    /// Ledger batches replayed at open (after the snapshot).
    replayed: u64,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` and rebuilds its state: the snapshot, if any,
    /// then every ledger batch after the one it covers.
    pub fn open(dir: impl AsRef<Path>) -> Result<Ledger> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| LedgerError::Io(dir.clone(), e))?;
        let mut state = read_snapshot(&dir.join(SNAPSHOT))?.unwrap_or_default();
        let engine = Engine::open(dir.join("log"), ledger_config())?;
        let reader = engine.replay()?;
        let bad_snapshot = |reason: String| LedgerError::BadSnapshot(dir.join(SNAPSHOT), reason);
        let batches = reader.batches_from(state.covers + 1).map_err(|e| match e {
            mergelog::Error::Retired { first, .. } => bad_snapshot(format!(
                "covers ledger batch {}, but the ledger's log starts at batch {first}",
                state.covers
            )),
            mergelog::Error::PastEnd { next, .. } => bad_snapshot(format!(
                "covers ledger batch {}, but the ledger's log ends at batch {}",
                state.covers,
                next.get() - 1
            )),
            e => e.into(),
        })?;
        let mut replayed = 0;
        for batch in batches {
            for r in batch.records() {
                state.fold(batch.seq(), r.key, r.value)?;
            }
            replayed += 1;
        }
        drop(reader);
        Ok(Ledger {
            dir,
            engine,
            state,
            replayed,
        })
    }

    /// The state: every effect durable in the ledger.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Ledger batches replayed at open, after the snapshot.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The ledger's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Applies one event of bank batch `source`: decides its effect on the state, writes it
    /// (atomically, with the event's effect id) and waits until it is durable. A duplicate
    /// (this event was applied before a crash) writes nothing and leaves the state, which
    /// already holds it, as it is.
    pub fn apply(&mut self, event: &Event, source: Seq) -> Result<Effect> {
        let (writes, effect) = self.state.effect_of(event, source);
        let mut batch = WriteBatch::new();
        for (k, v) in &writes {
            batch.put(k.as_bytes(), v.as_bytes());
        }
        match self
            .engine
            .write_with_id(event.effect_id(), &batch)?
            .wait()?
        {
            Outcome::Written(seq) => {
                for (k, v) in &writes {
                    self.state.fold(seq, k.as_bytes(), v.as_bytes())?;
                }
                Ok(effect)
            }
            Outcome::Duplicate { seq } => Ok(Effect::Duplicate { seq }),
        }
    }

    /// Applies every event of one bank batch, in key order (accounts before transfers,
    /// transfers by voucher: an order a checker can recompute from the batch numbers alone).
    pub fn apply_batch(&mut self, batch: &OwnedBatch) -> Result<Vec<(Event, Effect)>> {
        let mut events = batch
            .records
            .iter()
            .map(|r| Event::decode(batch.seq, r.op, &r.key, &r.value).map(|e| (&r.key, e)))
            .collect::<Result<Vec<_>>>()?;
        events.sort_by(|a, b| a.0.cmp(b.0));
        let mut done = Vec::with_capacity(events.len());
        for (_, event) in events {
            let effect = self.apply(&event, batch.seq)?;
            done.push((event, effect));
        }
        Ok(done)
    }

    /// Consumes the bank's log through `consumer` while `keep_going(next batch)` says so:
    /// applies each batch, then commits it (so a crash before the commit re-delivers it, and
    /// its effects come back as duplicates), and every `snapshot_every` batches writes a
    /// snapshot and retires the ledger's history before it. `on_batch` sees what was done.
    pub fn consume(
        &mut self,
        consumer: &mut Consumer,
        snapshot_every: u64,
        mut keep_going: impl FnMut(Seq) -> bool,
        mut on_batch: impl FnMut(Seq, &[(Event, Effect)]),
    ) -> Result<()> {
        let mut batches = 0u64;
        while keep_going(consumer.next_seq()) {
            let Some(batch) = consumer.next_timeout(POLL)? else {
                continue;
            };
            let done = self.apply_batch(&batch)?;
            consumer.commit(batch.seq)?;
            on_batch(batch.seq, &done);
            batches += 1;
            if batches.is_multiple_of(snapshot_every.max(1)) {
                self.snapshot()?;
            }
        }
        Ok(())
    }

    /// Writes a snapshot of the state (temporary file, sync, rename, directory sync), then
    /// retires the ledger's history it covers (whole segments before its batch).
    pub fn snapshot(&mut self) -> Result<Retired> {
        let path = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| LedgerError::Io(p, e)
        };
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(encode_snapshot(&self.state).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(self.engine.retire_before(self.state.covers + 1)?)
    }

    /// Closes the ledger's engine.
    pub fn close(self) -> Result<()> {
        Ok(self.engine.close()?)
    }
}

/// The snapshot's text: a header, the counters, one line per account, and a CRC-32C of all
/// that (a damaged snapshot is refused, never read as a smaller state).
fn encode_snapshot(s: &State) -> String {
    let mut text = format!(
        "{SNAPSHOT_MAGIC}\ncovers {}\napplied {}\ncompensated {}\n",
        s.covers, s.applied, s.compensated
    );
    for (account, balance) in &s.balances {
        text.push_str(&format!("acct {account} {balance}\n"));
    }
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
    text
}

/// The state in snapshot file `path`; `None` if there is none.
fn read_snapshot(path: &Path) -> Result<Option<State>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LedgerError::Io(path.to_path_buf(), e)),
    };
    let bad = |why: &str| LedgerError::BadSnapshot(path.to_path_buf(), why.to_owned());
    let body_len = text
        .trim_end()
        .rfind('\n')
        .ok_or_else(|| bad("too short"))?
        + 1;
    let (body, crc_line) = text.split_at(body_len);
    let crc = crc_line
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or_else(|| bad("no checksum line"))?;
    if crc != crc32c::crc32c(body.as_bytes()) {
        return Err(bad("checksum mismatch: the snapshot is damaged"));
    }
    let mut lines = body.lines();
    if lines.next() != Some(SNAPSHOT_MAGIC) {
        return Err(bad("not a ledger snapshot (version 1)"));
    }
    let mut state = State::default();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        let number = |s: &str| s.parse::<i64>().map_err(|_| bad("not a number"));
        match parts[..] {
            ["covers", n] => state.covers = number(n)? as u64,
            ["applied", n] => state.applied = number(n)? as u64,
            ["compensated", n] => state.compensated = number(n)? as u64,
            ["acct", account, n] => {
                state.balances.insert(account.to_owned(), number(n)?);
            }
            _ => return Err(bad(&format!("unexpected line {line:?}"))),
        }
    }
    Ok(Some(state))
}
