//! `mergelog`: the command-line tools of the mergelog engine. One module per subcommand;
//! each exposes its clap `Args` struct and a `run` that returns a [`CliError`] instead of
//! panicking, so every failure ends as one line on stderr and a non-zero exit.
//!
//! Exit codes: 0 success (verify: clean), 1 failure (verify: damage found), 2 unusable
//! arguments (a bad flag, a missing or non-log directory, an unwritable output path).

// The tools write their own outputs, not a log; the storage seam's lint is for the library.
#![allow(clippy::disallowed_methods)]

// `note!`: `eprintln!` that does not panic on a closed stderr (see the library).
#[macro_use]
extern crate mergelog_tools;

mod backup;
mod bench;
mod workload;

// The subcommands that read a log are the library's (`src/lib.rs`); the binary's modules
// reach them and the shared helpers as before, through the crate root.
use mergelog_tools::{dump, error, history, inspect, logdir, table, verify};

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
    /// Measure durable throughput and latency: mergelog vs plain group commit vs okaywal (a
    /// write-ahead log crate) vs a leader/follower write-ahead log vs a naive lock + write +
    /// fdatasync baseline, on one workload.
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
    /// Copy a log directory into a new one that an engine opens as the log was when the copy
    /// began (segments up to their last whole frame, request ids of retired segments,
    /// consumer positions), while an engine may be writing it.
    Backup(backup::BackupArgs),
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Profile(args) => bench::profile::run(args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect::run(args).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => verify::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Backup(args) => backup::run(args).map(|()| ExitCode::SUCCESS),
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
            note!("mergelog: {}", one_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            note!("mergelog: error: {e}");
            ExitCode::from(e.exit)
        }
    }
}

/// clap's message for a bad command line on one line, as every error of the tools is: its
/// usage and `--help` boilerplate left out, but what helps fix the error kept (the possible
/// values, a similar argument's name, the missing arguments), each on a line of its own in
/// clap's message.
fn one_line(message: &str) -> String {
    let mut out = String::new();
    for line in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        // A line ending in ':' introduces what follows it; `[possible values: ..]` goes with
        // the invalid value it follows.
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') || line.starts_with('[') {
                " "
            } else {
                "; "
            });
        }
        out.push_str(line);
    }
    if out.is_empty() {
        out.push_str("error: invalid arguments");
    }
    out
}
