//! `mergelog`: the command-line tools of the mergelog engine. One module per subcommand;
//! each exposes its clap `Args` struct and a `run` that returns a [`CliError`] instead of
//! panicking, so every failure ends as one line on stderr and a non-zero exit.
//!
//! Exit codes: 0 success (verify: clean), 1 failure (verify: damage found), 2 unusable
//! arguments (a bad flag, a missing or non-log directory, an unwritable output path).

// The tools write their own outputs, not a log; the storage seam's lint is for the library.
#![allow(clippy::disallowed_methods)]

mod bench;
mod dump;
mod error;
mod history;
mod inspect;
mod logdir;
mod verify;
mod workload;

use clap::{Parser, Subcommand};
use error::{CliError, EXIT_USAGE};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mergelog",
    version,
    about = "Tools for the mergelog write batching engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure durable throughput and latency: mergelog vs plain group commit vs a
    /// leader/follower write-ahead log vs a naive lock + write + fdatasync baseline, on one
    /// workload.
    Bench(bench::BenchArgs),
    /// Run a workload on the engine alone and print its latency stage by stage (ring wait,
    /// window age, coalesce+sort, encode+write, sync, wake-up, end to end) and its counters.
    Profile(bench::profile::ProfileArgs),
    /// Describe a log directory: segments, batches, records, bytes, key range, coalescing
    /// per batch, damage.
    Inspect(inspect::InspectArgs),
    /// Check a log directory strictly: exit 0 clean, 1 damaged (file and offset printed),
    /// 2 unusable arguments.
    Verify(verify::VerifyArgs),
    /// Print the records of a log directory in log order.
    Dump(dump::DumpArgs),
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Profile(args) => bench::profile::run(args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect::run(args).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => verify::run(args),
        Command::Dump(args) => dump::run(args),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version go to stdout and succeed; a missing subcommand prints help.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // clap appends usage and tips; one line is all a bad flag deserves. A first
            // line ending in ':' introduces what is missing on the next one.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines
                .next()
                .unwrap_or("error: invalid arguments")
                .to_owned();
            if line.ends_with(':') {
                if let Some(next) = lines.next() {
                    line = format!("{line} {next}");
                }
            }
            eprintln!("mergelog: {line}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mergelog: error: {e}");
            ExitCode::from(e.exit)
        }
    }
}
