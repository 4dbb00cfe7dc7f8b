//! The ledger example (`examples/ledger/mod.rs`, included below: the code under test is the
//! example's own) under kill -9: exactly-once effects from at-least-once delivery.
//!
//! Each iteration runs the bank (writer) and the ledger (consumer) as two child processes at
//! once, the test binary re-executed as `tests/crash.rs` does (`--exact ledger_child`, the
//! role and arguments in the environment), and kills each with SIGKILL at its own random
//! moment: mostly 2–40 ms (the ledger: 2–80 ms) after it reported being up, sometimes within
//! 6 ms of its start, while it may still be opening (and repairing) its log. The parent is the
//! bank's client:
//!
//! - the writer submits the transfers of vouchers `from..to` (a plan fixed by the seed: random
//!   accounts, sometimes one that does not exist, amounts that often overdraw), up to `depth`
//!   outstanding, and prints `@@ACK <voucher> <batch> <duplicate>` for each acknowledgement;
//!   every 16 it retires what the ledger has committed;
//! - the next writer starts again at the smallest voucher not acknowledged, so every
//!   unacknowledged transfer is retried with the same voucher (and some acknowledged ones
//!   too, which must come back as duplicates of the same batch);
//! - the consumer applies, commits, and snapshots and retires every 8 batches.
//!
//! At the end a last writer runs to completion (every voucher is then acknowledged, with its
//! batch), the ledger is drained in the test's process, reopened (its state rebuilt by
//! replay) and checked against a model that folds the bank's events in the order the ledger
//! applies them (batch, then key), with its own overdraft rule:
//!
//! - the bank's log holds every voucher once, in the batch its acknowledgements name (the
//!   test reads the whole history through a durable consumer of its own, `audit`, between
//!   iterations: no transfer logged twice);
//! - the balances, the number of events applied and the number compensated are the model's
//!   (no transfer applied twice or lost, no compensation without an overdraft, no overdraft
//!   left uncompensated), and money is conserved;
//! - in the ledger history still held (the rest is retired), each event has one effect
//!   marker, the one the model decides, and no balance is negative.
//!
//! Environment: `MERGELOG_LEDGER_ITERS` (default 200), `MERGELOG_LEDGER_SEED` to repeat a run.

mod common;

#[allow(dead_code)] // the example uses other parts of it
#[path = "../examples/ledger/mod.rs"]
mod ledger;

use common::{env_u64, WAIT_MAX};
use ledger::{Bank, Event, Ledger, Transfer, CONSUMER};
use mergelog::{LogReader, Seq};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "MERGELOG_LEDGER_CHILD";
const DIR_ENV: &str = "MERGELOG_LEDGER_CHILD_DIR";
const ARGS_ENV: &str = "MERGELOG_LEDGER_CHILD_ARGS";
const MARK: &str = "@@";
/// A child that is never killed ends by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
const ACCOUNTS: usize = 5;

fn account(i: usize) -> String {
    format!("a{i}")
}

/// The transfer of `voucher` in the plan of `plan_seed`: mostly between two distinct
/// accounts, now and then from or to one that does not exist or to itself, for 1 to 60 (the
/// accounts open with 20 to 120, so overdrafts are frequent).
fn plan(plan_seed: u64, voucher: u64) -> Transfer {
    let mut rng = StdRng::seed_from_u64(plan_seed ^ voucher.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pick = || match rng.random_range(0..100) {
        0 => "nobody".to_owned(),
        _ => account(rng.random_range(0..ACCOUNTS)),
    };
    let (from, to) = (pick(), pick());
    Transfer {
        voucher,
        from,
        to,
        amount: rng.random_range(1..=60),
    }
}

fn opening_balances(plan_seed: u64) -> Vec<(String, i64)> {
    let mut rng = StdRng::seed_from_u64(plan_seed);
    (0..ACCOUNTS)
        .map(|i| (account(i), rng.random_range(20..=120)))
        .collect()
}

/// Writes one whole line to stdout and flushes it (one `write`, so a kill never leaves half
/// a line followed by more).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .unwrap_or_else(|_| std::process::exit(4)); // the parent is gone
}

fn die(code: i32, what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("child: {what}: {e}");
    std::process::exit(code)
}

/// The child: the writer or the consumer, as the environment says.
#[test]
fn ledger_child() {
    let (Ok(role), Some(dir)) = (std::env::var(ROLE_ENV), std::env::var_os(DIR_ENV)) else {
        return; // an ordinary test run
    };
    let dir = PathBuf::from(dir);
    let args: Vec<u64> = std::env::var(ARGS_ENV)
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("child args are numbers"))
        .collect();
    match (role.as_str(), &args[..]) {
        ("writer", &[from, to, plan_seed, depth]) => {
            writer_child(&dir, from..to, plan_seed, depth as usize)
        }
        ("consumer", &[]) => consumer_child(&dir),
        _ => die(2, "bad role or arguments", format!("{role} {args:?}")),
    }
}

/// Submits `vouchers` (up to `depth` outstanding), acknowledging each on stdout, then closes.
fn writer_child(dir: &Path, vouchers: std::ops::Range<u64>, plan_seed: u64, depth: usize) -> ! {
    let bank = Bank::open(dir.join("bank")).unwrap_or_else(|e| die(3, "Bank::open", e));
    emit(&format!("{MARK}UP\n"));
    let mut pending = VecDeque::new();
    let mut acks = 0u64;
    let last = vouchers.end.saturating_sub(1);
    for v in vouchers {
        let event = Event::Transfer(plan(plan_seed, v));
        let ticket = bank.submit(&event).unwrap_or_else(|e| die(5, "submit", e));
        pending.push_back((v, ticket));
        while pending.len() > depth || (v == last && !pending.is_empty()) {
            let (v, t) = pending.pop_front().expect("pending");
            let outcome = t
                .wait_timeout(WAIT_MAX)
                .unwrap_or_else(|e| die(6, "ticket", e));
            let dup = u8::from(outcome.is_duplicate());
            emit(&format!("{MARK}ACK {v} {} {dup}\n", outcome.seq()));
            acks += 1;
            if acks.is_multiple_of(16) {
                bank.retire_consumed()
                    .unwrap_or_else(|e| die(7, "retire", e));
            }
        }
    }
    bank.close().unwrap_or_else(|e| die(8, "close", e));
    std::process::exit(0)
}

/// Applies the bank's log to the ledger until killed (or `CHILD_LIFETIME`), reporting each
/// batch as `@@DONE <batch> <events> <duplicates>`.
fn consumer_child(dir: &Path) -> ! {
    let deadline = Instant::now() + CHILD_LIFETIME;
    let mut ledger = Ledger::open(dir.join("ledger")).unwrap_or_else(|e| die(3, "Ledger::open", e));
    let mut consumer = LogReader::open(dir.join("bank"))
        .and_then(|r| r.consumer(CONSUMER))
        .unwrap_or_else(|e| die(3, "consumer", e));
    emit(&format!("{MARK}UP\n"));
    ledger
        .consume(
            &mut consumer,
            8,
            |_| Instant::now() < deadline,
            |seq, done| {
                let dups = done
                    .iter()
                    .filter(|(_, fx)| matches!(fx, ledger::Effect::Duplicate { .. }))
                    .count();
                emit(&format!("{MARK}DONE {seq} {} {dups}\n", done.len()));
            },
        )
        .unwrap_or_else(|e| die(5, "consume", e));
    std::process::exit(0)
}

/// A child process and the complete lines it printed.
struct Running {
    child: Child,
    up: mpsc::Receiver<()>,
    lines: std::thread::JoinHandle<Vec<String>>,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn(role: &str, dir: &Path, args: &str) -> Running {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "ledger_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(ARGS_ENV, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (up_tx, up) = mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // A torn last line (the kill cut it short) is never complete: never acted on.
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() != Some(&b'\n') => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            // The harness prints "test ledger_child ... " before the child's first line.
            if let Some(at) = line.find(MARK) {
                let line = line[at + MARK.len()..].to_owned();
                if line == "UP" {
                    let _ = up_tx.send(());
                }
                lines.push(line);
            }
        }
        lines
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Running {
        child,
        up,
        lines,
        stderr,
    }
}

impl Running {
    /// Kills the child at `kill` (`None`: waits for it to end by itself); its lines. A child
    /// that ended by itself with a failure fails the test.
    fn finish(mut self, kill: Option<KillAt>) -> Vec<String> {
        match kill {
            Some(KillAt::Early(d)) => std::thread::sleep(d),
            Some(KillAt::AfterUp(d)) => {
                let _ = self.up.recv_timeout(WAIT_MAX);
                std::thread::sleep(d);
            }
            None => {}
        }
        let ended = match kill {
            Some(_) => self.child.try_wait().expect("try_wait"),
            None => Some(self.child.wait().expect("wait")),
        };
        let _ = self.child.kill(); // SIGKILL
        self.child.wait().expect("wait for child");
        let lines = self.lines.join().expect("stdout reader");
        let stderr = self.stderr.join().expect("stderr reader");
        if let Some(status) = ended {
            assert!(status.success(), "child failed: {status}\n{stderr}");
        }
        lines
    }
}

#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the start.
    Early(Duration),
    /// This long after the child said it was up.
    AfterUp(Duration),
}

/// When to kill a child: one time in seven within 6 ms of its start, else 2 ms to `max`
/// after it said it was up.
fn kill_at(rng: &mut StdRng, max: Duration) -> KillAt {
    if rng.random_bool(0.15) {
        KillAt::Early(Duration::from_micros(rng.random_range(0..6000)))
    } else {
        KillAt::AfterUp(rng.random_range(Duration::from_millis(2)..max))
    }
}

/// The bank's client: what was acknowledged, in which batch.
#[derive(Default)]
struct Client {
    /// Voucher -> the batch every acknowledgement of it named.
    acked: BTreeMap<u64, Seq>,
    /// Vouchers below this were handed to a writer.
    next_new: u64,
    /// Acknowledgements that were duplicates (retries of logged transfers).
    duplicates: u64,
}

impl Client {
    /// The smallest voucher not acknowledged: the next writer starts there.
    fn first_unacked(&self) -> u64 {
        (1..self.next_new)
            .find(|v| !self.acked.contains_key(v))
            .unwrap_or(self.next_new)
    }

    /// Takes in a writer's lines; fails on a voucher acknowledged in two batches.
    fn take(&mut self, lines: &[String]) {
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let ["ACK", v, seq, dup] = parts[..] else {
                assert!(line == "UP", "bad writer line {line:?}");
                continue;
            };
            let (v, seq): (u64, Seq) = (v.parse().unwrap(), Seq::new(seq.parse().unwrap()));
            self.duplicates += u64::from(dup == "1");
            if let Some(first) = self.acked.insert(v, seq) {
                assert_eq!(
                    first, seq,
                    "voucher {v} acknowledged in batch {first}, then in batch {seq}: logged twice"
                );
            }
        }
    }
}

/// What the consumer children reported.
#[derive(Default)]
struct Delivered {
    batches: u64,
    events: u64,
    duplicates: u64,
}

impl Delivered {
    fn take(&mut self, lines: &[String]) {
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let ["DONE", _, events, dups] = parts[..] else {
                assert!(line == "UP", "bad consumer line {line:?}");
                continue;
            };
            self.batches += 1;
            self.events += events.parse::<u64>().unwrap();
            self.duplicates += dups.parse::<u64>().unwrap();
        }
    }
}

/// The ledger the events should have produced, folded independently of the example's code.
#[derive(Debug, Default, PartialEq)]
struct Model {
    balances: BTreeMap<String, i64>,
    applied: u64,
    compensated: u64,
    /// Effect marker name -> applied (true) or compensated.
    decisions: BTreeMap<String, bool>,
}

impl Model {
    /// Folds the events in the ledger's order: by batch, then by key within a batch.
    fn fold(mut events: Vec<(Seq, String, Event)>) -> Model {
        events.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut m = Model::default();
        for (_, _, event) in events {
            let (name, ok) = match event {
                Event::Open { account, balance } => {
                    let ok = !m.balances.contains_key(&account);
                    if ok {
                        m.balances.insert(account.clone(), balance);
                    }
                    (format!("open.{account}"), ok)
                }
                Event::Transfer(t) => {
                    let from = m.balances.get(&t.from).copied();
                    let to_known = m.balances.contains_key(&t.to);
                    let ok = t.from != t.to && to_known && from.is_some_and(|b| b >= t.amount);
                    if ok {
                        *m.balances.get_mut(&t.from).unwrap() -= t.amount;
                        *m.balances.get_mut(&t.to).unwrap() += t.amount;
                    }
                    (format!("{:016x}", t.voucher), ok)
                }
            };
            m.applied += u64::from(ok);
            m.compensated += u64::from(!ok);
            m.decisions.insert(name, ok);
        }
        m
    }
}

/// Every effect marker of the ledger history still held, and every balance record in it;
/// fails on an event with two effects.
fn ledger_history(ledger: &Ledger) -> (BTreeMap<String, bool>, Vec<(String, i64)>) {
    let mut markers = BTreeMap::new();
    let mut balances = Vec::new();
    for batch in ledger.engine().replay().expect("replay").batches() {
        for r in batch.records() {
            let key = String::from_utf8_lossy(r.key).into_owned();
            let value = String::from_utf8_lossy(r.value).into_owned();
            let marker = match key.split_once('/') {
                Some(("applied", name)) => Some((name, true)),
                Some(("comp", name)) => Some((name, false)),
                Some(("acct", name)) => {
                    balances.push((name.to_owned(), value.parse().expect("balance")));
                    None
                }
                _ => None,
            };
            if let Some((name, applied)) = marker {
                let twice = markers.insert(name.to_owned(), applied);
                assert!(
                    twice.is_none(),
                    "event {name} has two effects in the ledger (the second in batch {})",
                    batch.seq()
                );
            }
        }
    }
    (markers, balances)
}

/// Opens the accounts (in the test's process); their events with the batches holding them.
/// The test's own durable consumer of the bank's log: it reads every batch between two
/// iterations (and holds retirement back until it has), so the whole history is checked.
const AUDIT: &str = "audit";

/// Every transfer the bank's log holds, with its batch, read through [`AUDIT`].
#[derive(Default)]
struct Audit {
    logged: BTreeMap<u64, Seq>,
}

impl Audit {
    /// Reads the batches logged since the last call; fails on a voucher logged twice.
    fn read(&mut self, dir: &Path) {
        let reader = LogReader::open(dir.join("bank")).expect("audit reader");
        let mut audit = reader.consumer(AUDIT).expect("audit consumer");
        while let Some(batch) = audit.try_next().expect("audit batch") {
            for mergelog::OwnedRecord { key, .. } in &batch.records {
                let key = String::from_utf8_lossy(key);
                let Some(v) = key.strip_prefix("tx/") else {
                    continue;
                };
                let v = u64::from_str_radix(v, 16).expect("voucher");
                if let Some(first) = self.logged.insert(v, batch.seq) {
                    panic!(
                        "voucher {v} logged twice: in batches {first} and {}",
                        batch.seq
                    );
                }
            }
            audit.commit(batch.seq).expect("audit commit");
        }
    }
}

fn open_accounts(dir: &Path, plan_seed: u64) -> Vec<(Seq, String, Event)> {
    let bank = Bank::open(dir.join("bank")).expect("Bank::open");
    drop(bank.engine().consumer(AUDIT).expect("audit consumer"));
    let opened = opening_balances(plan_seed)
        .into_iter()
        .map(|(account, balance)| {
            let event = Event::Open { account, balance };
            let seq = bank.submit(&event).unwrap().wait().unwrap().seq();
            let Event::Open { account, .. } = &event else {
                unreachable!()
            };
            (seq, format!("open/{account}"), event)
        })
        .collect();
    bank.close().expect("close");
    opened
}

/// The last round: a writer that submits every voucher not acknowledged and is not killed,
/// while the ledger is drained in this process; then the ledger reopened (rebuilt by replay).
fn drain(dir: &Path, client: &mut Client, audit: &mut Audit, plan_seed: u64) -> Ledger {
    let args = format!(
        "{} {} {plan_seed} 8",
        client.first_unacked(),
        client.next_new
    );
    let writer = spawn("writer", dir, &args);
    // The bank throttles a writer while the ledger lags: the drain runs at the same time.
    let until = AtomicU64::new(u64::MAX);
    let ledger = std::thread::scope(|s| {
        let drained = s.spawn(|| {
            let mut ledger = Ledger::open(dir.join("ledger")).expect("Ledger::open");
            let mut consumer = LogReader::open(dir.join("bank"))
                .and_then(|r| r.consumer(CONSUMER))
                .expect("consumer");
            let deadline = Instant::now() + WAIT_MAX;
            ledger
                .consume(
                    &mut consumer,
                    8,
                    |next| next.get() <= until.load(Ordering::Acquire) && Instant::now() < deadline,
                    |_, _| {},
                )
                .expect("drain the ledger");
            assert!(Instant::now() < deadline, "the drain did not finish");
            ledger.snapshot().expect("snapshot");
            ledger
        });
        client.take(&writer.finish(None));
        audit.read(dir);
        let last = LogReader::open(dir.join("bank"))
            .expect("reader")
            .next_seq();
        until.store(last.get() - 1, Ordering::Release);
        drained.join().expect("drain")
    });
    let state = ledger.state().clone();
    ledger.close().expect("close the ledger");
    let ledger = Ledger::open(dir.join("ledger")).expect("reopen the ledger");
    assert_eq!(ledger.state(), &state, "replay rebuilt another state");
    ledger
}

/// Checks the drained ledger against the model of the acknowledged events.
fn check(
    ledger: &Ledger,
    (client, audit): (&Client, &Audit),
    opened: Vec<(Seq, String, Event)>,
    plan_seed: u64,
) {
    for v in 1..client.next_new {
        assert!(
            client.acked.contains_key(&v),
            "voucher {v} never acknowledged"
        );
    }
    for (v, seq) in &client.acked {
        assert_eq!(
            audit.logged.get(v),
            Some(seq),
            "voucher {v}: acknowledged in batch {seq}, but that is not where the bank's log holds it"
        );
    }
    assert_eq!(
        audit.logged.len(),
        client.acked.len(),
        "unknown vouchers logged"
    );
    let initial: i64 = opening_balances(plan_seed).iter().map(|(_, b)| b).sum();
    let mut events = opened;
    events.extend(audit.logged.iter().map(|(&v, &seq)| {
        let t = plan(plan_seed, v);
        (seq, format!("tx/{v:016x}"), Event::Transfer(t))
    }));
    let model = Model::fold(events);
    let state = ledger.state();
    assert_eq!(state.total(), initial, "money is not conserved");
    assert_eq!(
        state.balances, model.balances,
        "balances differ from the model's"
    );
    assert_eq!(
        (state.applied, state.compensated),
        (model.applied, model.compensated),
        "events applied and compensated (ledger, then model)"
    );
    assert!(state.balances.values().all(|&b| b >= 0), "{state:?}");
    let (markers, balances) = ledger_history(ledger);
    for (name, applied) in &markers {
        assert_eq!(
            model.decisions.get(name),
            Some(applied),
            "event {name}: the ledger applied (true) or compensated (false) it; the model disagrees"
        );
    }
    for (account, b) in balances {
        assert!(b >= 0, "account {account} went negative: {b}");
    }
}

#[test]
fn ledger_survives_kill_9_with_exactly_once_effects() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return; // never in the child
    }
    let iters = env_u64("MERGELOG_LEDGER_ITERS").unwrap_or(200);
    let seed = env_u64("MERGELOG_LEDGER_SEED").unwrap_or_else(|| rand::rng().random());
    eprintln!("ledger crash test: {iters} iterations, MERGELOG_LEDGER_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let plan_seed: u64 = rng.random();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let started = Instant::now();
    let opened = open_accounts(dir, plan_seed);
    let mut client = Client {
        next_new: 1,
        ..Client::default()
    };
    let mut delivered = Delivered::default();
    let mut audit = Audit::default();
    for _ in 0..iters {
        let from = client.first_unacked();
        client.next_new += rng.random_range(1..=12);
        let depth = rng.random_range(1..=8);
        let args = format!("{from} {} {plan_seed} {depth}", client.next_new);
        let (writer, consumer) = (spawn("writer", dir, &args), spawn("consumer", dir, ""));
        // The ledger waits for a sync per event: it is given longer.
        let w_kill = kill_at(&mut rng, Duration::from_millis(40));
        let c_kill = kill_at(&mut rng, Duration::from_millis(80));
        let (w_lines, c_lines) = std::thread::scope(|s| {
            let c = s.spawn(move || consumer.finish(Some(c_kill)));
            (writer.finish(Some(w_kill)), c.join().expect("consumer"))
        });
        client.take(&w_lines);
        audit.read(dir);
        delivered.take(&c_lines);
    }
    let killed = started.elapsed();
    let ledger = drain(dir, &mut client, &mut audit, plan_seed);
    check(&ledger, (&client, &audit), opened, plan_seed);
    let s = ledger.state();
    eprintln!(
        "ledger crash test: {iters} iterations in {killed:.1?} (+ drain and check: {:.1?}); {} vouchers, {} acknowledgements were duplicates; consumers killed having done {} batches, {} events, {} of them duplicates; ledger: {} applied, {} compensated, balances {:?}",
        started.elapsed() - killed,
        client.next_new - 1,
        client.duplicates,
        delivered.batches,
        delivered.events,
        delivered.duplicates,
        s.applied,
        s.compensated,
        s.balances,
    );
}
