//! An event-sourced ledger on mergelog: a bank process logs accounts and transfers as events
//! (each transfer with its voucher as request id, so a retried transfer is logged once); a
//! ledger process consumes them through a durable consumer and applies them, each effect
//! written with an id derived from the event's, so re-delivery after a crash changes
//! nothing; an overdraft is refused with a compensating event; snapshots and `retire_before`
//! bound both logs, and the ledger's state is rebuilt by replay. The design, and what is
//! exactly-once and what at-least-once, are in `ledger/mod.rs`.
//!
//! ```sh
//! cargo run --release --example ledger            # in a temporary directory
//! cargo run --release --example ledger -- DIR     # in DIR, new or empty; kept afterwards
//! cargo run --release -p mergelog-tools -- dump DIR/bank     # then look at the events
//! ```
//!
//! The ledger runs as a child process (this program, re-executed as
//! `ledger consume DIR UNTIL [crash]`): the bank's log is read there with
//! `LogReader::consumer`, as another process would.

#[allow(dead_code)] // shared with tests/ledger_crash.rs, which uses other parts of it
#[path = "ledger/mod.rs"]
mod ledger;

use ledger::{Bank, Effect, Event, Ledger, Transfer, CONSUMER};
use mergelog::{LogReader, Outcome, Seq};
use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        Some("consume") => consume(&args[1..]),
        _ => demo(args.first().map(PathBuf::from)),
    };
    if let Err(e) = run {
        eprintln!("ledger: {e}");
        std::process::exit(1);
    }
}

fn transfer(voucher: u64, from: &str, to: &str, amount: i64) -> Event {
    Event::Transfer(Transfer {
        voucher,
        from: from.into(),
        to: to.into(),
        amount,
    })
}

/// The demonstration: the bank, then the ledger in a child process (twice: the first one
/// crashes before its first commit), then retirement and a rebuild by replay.
fn demo(dir: Option<PathBuf>) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    if dir.join("bank").exists() || dir.join("ledger").exists() {
        return Err(format!(
            "{} already holds a ledger: give a new directory",
            dir.display()
        )
        .into());
    }
    let bank = Bank::open(dir.join("bank"))?;
    let opened: i64 = 150;
    let mut events = vec![
        Event::Open {
            account: "alice".into(),
            balance: 100,
        },
        Event::Open {
            account: "bob".into(),
            balance: 50,
        },
        Event::Open {
            account: "carol".into(),
            balance: 0,
        },
    ];
    events.extend([
        transfer(1, "alice", "bob", 30),
        transfer(2, "bob", "carol", 60),
        transfer(3, "carol", "alice", 500), // an overdraft: refused
        transfer(4, "bob", "dave", 5),      // no such account: refused
    ]);
    let tickets = events
        .iter()
        .map(|e| bank.submit(e))
        .collect::<ledger::Result<Vec<_>>>()?;
    let seqs = tickets
        .iter()
        .map(|t| t.wait().map(|o| o.seq()))
        .collect::<mergelog::Result<Vec<Seq>>>()?;
    println!(
        "bank:   3 accounts opened (total {opened}), 4 transfers logged, in batches {}..={}",
        seqs.iter().min().unwrap_or(&Seq::new(0)),
        seqs.iter().max().unwrap_or(&Seq::new(0)),
    );
    // A client that timed out retries voucher 2 with the same voucher: logged once.
    if let Outcome::Duplicate { seq } = bank.submit(&events[4])?.wait()? {
        println!("bank:   voucher 2 retried: a duplicate of batch {seq}, not logged again");
    }
    more_transfers(&bank, 3000)?;
    let until = bank.engine().durable_seq();
    println!(
        "bank:   3000 more transfers, {} batches in {} segments",
        until,
        bank.engine().segments().len()
    );
    let held = bank.retire_consumed()?;
    if let Some(consumer) = held.held_back_by {
        println!(
            "bank:   retirement held back: consumer {} has committed batch {}",
            consumer.name, consumer.committed
        );
    }
    run_ledger(&dir, until, true)?;
    run_ledger(&dir, until, false)?;
    let retired = bank.retire_consumed()?;
    println!(
        "bank:   retired {} segments the ledger has committed; the log starts at batch {}",
        retired.segments, retired.first_seq
    );
    bank.close()?;
    rebuild(&dir, opened)
}

/// Submits `n` transfers among the three accounts, 64 outstanding at a time.
fn more_transfers(bank: &Bank, n: u64) -> Result<()> {
    let names = ["alice", "bob", "carol"];
    let mut pending = std::collections::VecDeque::new();
    for v in 100..100 + n {
        let from = (v % 3) as usize;
        let (from, to) = (names[from], names[(from + 1 + (v / 3 % 2) as usize) % 3]);
        let amount = (v * 7 % 40 + 1) as i64;
        pending.push_back(bank.submit(&transfer(v, from, to, amount))?);
        if pending.len() >= 64 {
            pending.pop_front().map(|t| t.wait()).transpose()?;
        }
    }
    for t in pending {
        t.wait()?;
    }
    Ok(())
}

/// Runs the ledger as a child process until it has applied batch `until` (or, with
/// `crash`, until it has applied one batch and "crashes" before committing it).
fn run_ledger(dir: &Path, until: Seq, crash: bool) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("consume").arg(dir).arg(until.to_string());
    if crash {
        cmd.arg("crash");
    }
    let status = cmd.status()?;
    // The simulated crash exits with 3.
    if !(status.success() || crash && status.code() == Some(3)) {
        return Err(format!("the ledger process failed: {status}").into());
    }
    Ok(())
}

/// The ledger process: `consume DIR UNTIL [crash]`.
fn consume(args: &[String]) -> Result<()> {
    let [dir, until, rest @ ..] = args else {
        return Err("usage: ledger consume DIR UNTIL [crash]".into());
    };
    let dir = PathBuf::from(dir);
    let until = Seq::new(until.parse()?);
    let mut ledger = Ledger::open(dir.join("ledger"))?;
    let mut consumer = LogReader::open(dir.join("bank"))?.consumer(CONSUMER)?;
    if rest.first().map(String::as_str) == Some("crash") {
        let from = consumer.next_seq();
        if from > until {
            return Err(format!("nothing to consume: batch {until} is already committed").into());
        }
        let batch = loop {
            if let Some(b) = consumer.next_timeout(std::time::Duration::from_secs(1))? {
                break b;
            }
        };
        let done = ledger.apply_batch(&batch)?;
        let refused: Vec<String> = done
            .iter()
            .filter_map(|(event, effect)| match (event, effect) {
                (Event::Transfer(t), Effect::Compensated(why)) => {
                    Some(format!("voucher {}: {why}", t.voucher))
                }
                _ => None,
            })
            .collect();
        let refused = match refused.is_empty() {
            true => "none refused".to_owned(),
            false => format!("refused with a compensating event: {}", refused.join("; ")),
        };
        println!(
            "ledger: from batch {from}: applied batch {} ({} events; {refused}), then crashed before committing it",
            batch.seq,
            done.len(),
        );
        std::process::exit(3);
    }
    let (mut applied, mut refused, mut duplicates) = (0, 0, 0);
    ledger.consume(
        &mut consumer,
        64,
        |next| next <= until,
        |_, done| {
            for (_, effect) in done {
                match effect {
                    Effect::Applied => applied += 1,
                    Effect::Compensated(_) => refused += 1,
                    Effect::Duplicate { .. } => duplicates += 1,
                }
            }
        },
    )?;
    let retired = ledger.snapshot()?;
    let s = ledger.state();
    println!(
        "ledger: restarted at the last commit: {duplicates} events delivered again, all duplicates (nothing applied twice); then {applied} applied, {refused} refused"
    );
    println!(
        "ledger: snapshot covers ledger batch {}; {} older ledger segments retired",
        s.covers, retired.segments
    );
    Ok(ledger.close()?)
}

/// Rebuilds the ledger's state by replay and shows that money was conserved.
fn rebuild(dir: &Path, opened: i64) -> Result<()> {
    let ledger = Ledger::open(dir.join("ledger"))?;
    let s = ledger.state();
    let balances: Vec<String> = s.balances.iter().map(|(a, b)| format!("{a} {b}")).collect();
    println!(
        "replay: snapshot + {} ledger batches: {}; total {} (opened {opened}): {}",
        ledger.replayed(),
        balances.join(", "),
        s.total(),
        if s.total() == opened {
            "conserved"
        } else {
            "NOT CONSERVED"
        }
    );
    Ok(ledger.close()?)
}
