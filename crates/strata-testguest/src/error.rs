//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong building the kit or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// QEMU or the kit's tools are missing, or the kit did not build.
    #[error("the guest kit is unavailable: {0}")]
    Unavailable(String),
    /// A file or process operation failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or program involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper command (`scripts/guest-kit`) failed.
    #[error("{command} failed ({status}):\n{stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The guest was still running at the deadline and was killed.
    #[error("the guest was still running after {after:?} and was killed; console (tail):\n{}", tail(.console))]
    Timeout {
        /// How long it was given.
        after: Duration,
        /// Its console output up to then.
        console: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The last lines of a console log, enough to see why a guest failed.
pub(crate) fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
