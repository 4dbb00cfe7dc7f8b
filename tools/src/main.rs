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

/// The top level's help after the commands: the exit codes, where the rest is, examples.
const AFTER_HELP: &str = "\
Exit codes: 0 success (verify: the log is clean); 1 failure (verify: damage found; dump: damage \
the engine refuses to open the log for; a run that failed); 2 unusable arguments (a bad flag, a \
missing or non-log directory, an unwritable output path). Errors are one line on stderr.

`mergelog COMMAND --help` lists a command's flags with their defaults and units; the README's \
\"The benchmark tool\" section says more.

Examples:
  mergelog bench --rounds 3
  mergelog profile --writers 16 --depth 1
  mergelog inspect /var/lib/myapp/log
  mergelog verify /var/lib/myapp/log
  mergelog dump --json /var/lib/myapp/log | head
  mergelog backup /var/lib/myapp/log /backups/myapp-1";

#[derive(Parser)]
#[command(
    name = "mergelog",
    version,
    about = "Tools for the mergelog write batching engine",
    after_help = AFTER_HELP
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
    #[command(after_help = bench::BENCH_EXAMPLES)]
    Bench(bench::BenchArgs),
    /// Run a workload on the engine alone and print its latency stage by stage (ring wait,
    /// window age, coalesce+sort, encode+write, sync, wake-up, end to end) and its counters.
    #[command(after_help = bench::PROFILE_EXAMPLES)]
    Profile(bench::profile::ProfileArgs),
    /// Describe a log directory: segments, batches, records, bytes, key range, coalescing
    /// per batch, damage.
    ///
    /// Damage is part of the description, not an error: the report says where it is and
    /// whether the engine's open cuts it off or refuses the log, and the exit code is 0.
    Inspect(inspect::InspectArgs),
    /// Check a log directory strictly: exit 0 clean, 1 damaged (file and offset printed),
    /// 2 unusable arguments.
    Verify(verify::VerifyArgs),
    /// Print the records of a log directory in log order.
    ///
    /// One record per line: `SEQ<TAB>put<TAB>KEY<TAB>VALUE` or `SEQ<TAB>delete<TAB>KEY`
    /// (--json: one object per line). A torn tail ends the log: noted on stderr, exit 0.
    /// Damage the engine refuses to open the log for ends the records there, is named on
    /// stderr (file and offset), and the exit code is 1.
    Dump(dump::DumpArgs),
    /// Copy a log directory into a new one that an engine opens as the log was when the copy
    /// began (segments up to their last whole frame, request ids of retired segments,
    /// consumer positions), while an engine may be writing it.
    ///
    /// A torn tail is left out (noted), and so are a torn write's remains after the last
    /// frame (noted). Exit 1 if the log is damaged before its tail or its request ids file
    /// is (nothing made: an engine would refuse the backup); 2 if DEST exists or cannot be
    /// made, or EARLIER is not a directory or an engine has it open.
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The words of a shell command line up to the first shell operator or comment: what the
    /// program is given (the examples quote nothing).
    fn words(line: &str) -> Vec<String> {
        line.split_whitespace()
            .take_while(|w| {
                !matches!(*w, "|" | "||" | "&&" | ";" | "#" | "&")
                    && !w.starts_with('>')
                    && !w.starts_with('<')
                    && !w.starts_with("2>")
            })
            .map(str::to_owned)
            .collect()
    }

    /// The `mergelog` command line in `words`, from the subcommand on: `mergelog ...` or
    /// `PATH/mergelog ...`, or `cargo run ... -p mergelog-tools -- ...`; `None` for anything
    /// else.
    fn command_line(words: &[String]) -> Option<Vec<String>> {
        let first = words.first()?;
        if first == "mergelog" || first.ends_with("/mergelog") {
            return Some(words[1..].to_vec());
        }
        let cargo_run = words.len() > 2 && words[0] == "cargo" && words[1] == "run";
        if cargo_run && words.iter().any(|w| w == "mergelog-tools") {
            let at = words.iter().position(|w| w == "--")?;
            return Some(words[at + 1..].to_vec());
        }
        None
    }

    /// Every `mergelog` command the README shows, with its line: each command line of a
    /// fenced code block, and each inline code span that is one with something after the
    /// subcommand (a span of the name alone, "`mergelog inspect`", names the command).
    fn readme_examples() -> Vec<(usize, Vec<String>)> {
        let readme = include_str!("../../README.md");
        let mut examples = Vec::new();
        let mut fenced = false;
        let mut prose = String::new();
        for (i, line) in readme.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                prose.push('\n');
                continue;
            }
            if fenced {
                if let Some(args) = command_line(&words(line)) {
                    examples.push((i + 1, args));
                }
                prose.push('\n');
            } else {
                prose.push_str(line);
                prose.push('\n');
            }
        }
        // Inline spans, which may wrap over lines: found in the prose with its line breaks,
        // so that the line of each is known.
        let mut rest = prose.as_str();
        let mut line = 1;
        while let Some(open) = rest.find('`') {
            line += rest[..open].matches('\n').count();
            let after = &rest[open + 1..];
            let Some(close) = after.find('`') else { break };
            let span = &after[..close];
            let subcommands = ["bench", "profile", "inspect", "verify", "dump", "backup"];
            if let Some(args) = command_line(&words(span)) {
                if args.len() > 1 && subcommands.contains(&args[0].as_str()) {
                    examples.push((line, args));
                }
            }
            line += span.matches('\n').count();
            rest = &after[close + 1..];
        }
        examples
    }

    /// The examples `mergelog --help` and each subcommand's `--help` show: their lines that
    /// start with `mergelog `.
    fn help_examples() -> Vec<(String, Vec<String>)> {
        let mut cli = Cli::command();
        let mut helps = vec![("mergelog --help".to_owned(), cli.render_long_help())];
        for sub in cli.get_subcommands_mut() {
            let name = format!("mergelog {} --help", sub.get_name());
            helps.push((name, sub.render_long_help()));
        }
        let mut examples = Vec::new();
        for (help, text) in helps {
            for line in text.to_string().lines() {
                if line.trim_start().starts_with("mergelog ") {
                    let args = command_line(&words(line)).unwrap();
                    examples.push((help.clone(), args));
                }
            }
        }
        examples
    }

    /// `args` (after the program's name) as `mergelog` takes them: the parser's, and for
    /// `bench` and `profile` every check made before a run writes anything (without
    /// running). A system this build lacks (`rocksdb` without its feature) is left out of
    /// the checks, not of the parse.
    fn accepted(args: &[String]) -> Result<(), String> {
        let cli =
            Cli::try_parse_from(std::iter::once("mergelog".to_owned()).chain(args.iter().cloned()))
                .map_err(|e| one_line(&e.to_string()))?;
        let without_missing: Vec<String> = if cfg!(feature = "rocksdb") {
            args.to_vec()
        } else {
            let mut out = args.to_vec();
            if let Some(at) = out.iter().position(|a| a == "--systems") {
                if let Some(list) = out.get_mut(at + 1) {
                    *list = list
                        .split(',')
                        .filter(|s| *s != "rocksdb")
                        .collect::<Vec<_>>()
                        .join(",");
                }
            }
            out
        };
        let checked = match Cli::try_parse_from(
            std::iter::once("mergelog".to_owned()).chain(without_missing),
        ) {
            Ok(cli) => cli,
            Err(_) => cli,
        };
        match checked.command {
            Command::Bench(a) => bench::check(&a),
            Command::Profile(a) => bench::profile::check(&a),
            _ => Ok(()),
        }
        .map_err(|e| e.to_string())
    }

    /// Every `mergelog` command line the README shows (in code blocks and inline) is one the
    /// tools take, flags, values and combinations, as `mergelog` would before running
    /// anything: a renamed or removed flag, a value out of range or a placeholder left in
    /// an example fails here, naming the README's line.
    #[test]
    fn the_readmes_examples_are_accepted() {
        let examples = readme_examples();
        // The README's reproduction commands alone are more than a dozen; far fewer found
        // would be the extraction failing, not the README being short.
        assert!(examples.len() >= 15, "found only {examples:?}");
        // The quick start's `cargo run ... -- bench` and the RocksDB section's
        // `target/release/mergelog bench ...`, both in code blocks.
        assert!(
            examples.iter().any(|(_, a)| a == &["bench"]),
            "{examples:?}"
        );
        assert!(
            examples
                .iter()
                .any(|(_, a)| a.contains(&"mergelog,okaywal,rocksdb".to_owned())),
            "{examples:?}"
        );
        let refused = refusals(&examples, |line| format!("README.md:{line}"));
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }

    /// Each example command line `mergelog` refuses, as "WHERE: mergelog ARGS: why", WHERE
    /// given by `place` from the example's place (a README line, a `--help`).
    fn refusals<P: std::fmt::Display>(
        examples: &[(P, Vec<String>)],
        place: impl Fn(&P) -> String,
    ) -> Vec<String> {
        examples
            .iter()
            .filter_map(|(at, args)| {
                accepted(args)
                    .err()
                    .map(|e| format!("{}: mergelog {}: {e}", place(at), args.join(" ")))
            })
            .collect()
    }

    /// The examples of `--help` (the top level's, `bench`'s, `profile`'s) are accepted as
    /// the README's are.
    #[test]
    fn the_helps_examples_are_accepted() {
        let examples = help_examples();
        for help in [
            "mergelog --help",
            "mergelog bench --help",
            "mergelog profile --help",
        ] {
            assert!(
                examples.iter().any(|(h, _)| h == help),
                "{help} shows no example"
            );
        }
        let refused = refusals(&examples, |help| help.to_string());
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }

    /// The check itself refuses what `mergelog` refuses: an unknown flag, a bad value, a
    /// combination refused before a run, a placeholder where a number goes.
    #[test]
    fn a_refused_command_line_is_not_accepted() {
        let refused = |line: &str| {
            let args = command_line(&words(line)).unwrap();
            accepted(&args).is_err()
        };
        assert!(refused("mergelog bench --writers W"));
        assert!(refused("mergelog bench --no-such-flag"));
        assert!(refused("mergelog bench --clients 8 --writers 2"));
        assert!(refused(
            "mergelog bench --read-ratio 0.7 --delete-ratio 0.7"
        ));
        assert!(refused("mergelog bench --systems mergelog,mergelog"));
        assert!(refused("mergelog bench --plot out.png"));
        assert!(refused("mergelog profile --trace"));
        assert!(refused("mergelog inspect"));
        assert!(!refused("mergelog bench --rounds 3 | tee out.txt"));
        assert!(!refused(
            "cargo run --release -p mergelog-tools -- bench --ops 10"
        ));
    }
}
