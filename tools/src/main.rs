//! `mergelog`: the command-line tools of the mergelog engine. One module per subcommand;
//! each exposes its clap `Args` struct and a `run` that returns a [`CliError`] instead of
//! panicking, so every failure ends as one line on stderr and a non-zero exit.

mod bench;
mod error;
mod workload;

use clap::{Parser, Subcommand};
use error::CliError;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mergelog", version, about = "Tools for the mergelog write batching engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure durable throughput and latency: mergelog vs plain group commit vs a naive
    /// lock + write + fdatasync baseline, on one workload.
    Bench(bench::BenchArgs),
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version go to stdout and succeed; a missing subcommand prints help.
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // clap appends usage and tips; one line is all a bad flag deserves.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("mergelog: {line}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mergelog: error: {e}");
            ExitCode::FAILURE
        }
    }
}
