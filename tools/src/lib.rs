//! The log-reading half of the `mergelog` command as a library: opening a log directory with
//! errors a user can act on (`logdir`), what the engine's open would refuse (`history`), and
//! the subcommands that read a log, `verify`, `inspect` and `dump`, each with a function that
//! returns what it found instead of printing it (`verify::check`, `inspect::inspect`,
//! `dump::dump`), so that they can be called (and fuzzed: `fuzz/src/tools_dir.rs`) without
//! the binary. The binary (`src/main.rs`) parses the command line and prints.

// The tools write their own outputs, not a log; the storage seam's lint is for the library.
#![allow(clippy::disallowed_methods)]

/// `eprintln!` that does not panic on a closed stderr (`mergelog bench 2>&1 | head`, the reader
/// gone): a note or an error nobody can read any more is dropped, and the exit code stands.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod dump;
pub mod error;
pub mod history;
pub mod inspect;
pub mod logdir;
pub mod table;
pub mod verify;
