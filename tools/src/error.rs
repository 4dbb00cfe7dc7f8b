//! The tools' one error type: a message that reads well as the single line printed before
//! a non-zero exit, and the exit code that goes with it.

use std::fmt;

/// Exit code of a run that failed (an I/O error, a failed engine, a damaged log).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of unusable arguments: a bad flag (clap's code too), a missing directory.
pub const EXIT_USAGE: u8 = 2;

/// A failure of a subcommand, already phrased for the user.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit: u8,
}

impl CliError {
    /// A run that failed: exit 1.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit: EXIT_FAILURE,
        }
    }

    /// Arguments the tool cannot work with: exit 2.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit: EXIT_USAGE,
        }
    }

    /// The same error with `what` in front ("mergelog: ...").
    pub fn prefixed(self, what: &str) -> CliError {
        CliError {
            message: format!("{what}: {}", self.message),
            exit: self.exit,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Prefixes an error with what was being done ("open engine in /x: ...").
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError::new(format!("{}: {e}", what())))
    }
}
