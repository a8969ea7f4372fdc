//! Exit statuses, the errors that choose their own, and how an error is
//! printed: one line, `strata: error: …`, with its causes joined by `: `.

use std::fmt;
use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// An error (the default for anything that fails).
pub const ERROR: u8 = 1;
/// The command line was wrong.
pub const USAGE: u8 = 2;
/// A backup done (or begun), but with a full backup of a disk asked
/// incremental (`--fallback-full`).
pub const FELL_BACK: u8 = 3;

/// Prints a warning on standard error: `strata: warning: …`.
pub fn warn(message: &str) {
    eprintln!("strata: warning: {message}");
}

/// A command line that cannot be carried out as written (exit status 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// An error that exits with a status other than [`ERROR`].
#[derive(Debug)]
pub struct StatusError {
    /// The exit status.
    pub status: u8,
    inner: anyhow::Error,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for StatusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// Gives `err` the exit status `status` (unless it is a usage error).
pub fn with_status(status: u8) -> impl Fn(anyhow::Error) -> anyhow::Error {
    move |inner| {
        if inner.chain().any(|e| e.is::<UsageError>()) {
            inner
        } else {
            anyhow::Error::new(StatusError { status, inner })
        }
    }
}

/// The exit status an error asks for.
pub fn status_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(s) = cause.downcast_ref::<StatusError>() {
            return s.status;
        }
        if cause.is::<UsageError>() {
            return USAGE;
        }
    }
    ERROR
}

/// The error and its causes on one line, without repeating a cause that the
/// message before it already quotes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text.replace('\n', " ")
}

/// True when the error is a closed stdout (`strata img read … | head`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `err` as `strata: error: …` and returns its exit status.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::from(ERROR);
    }
    eprintln!("strata: error: {}", one_line(err));
    ExitCode::from(status_of(err))
}

/// Handles a clap error: help and version go to stdout with status 0,
/// anything else is one `strata: error:` line with status 2.
pub fn clap_failure(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            let code = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                USAGE
            } else {
                OK
            };
            ExitCode::from(code)
        }
        _ => {
            // clap's first paragraph, on one line ("Usage:" and tips follow it).
            let rendered = err.to_string();
            let first = rendered.trim().split("\n\n").next().unwrap_or_default();
            let parts: Vec<&str> = first
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let text = parts.join(" ");
            let message = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln!("strata: error: {message} (see --help)");
            ExitCode::from(USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_of(&anyhow::anyhow!("x")), ERROR);
        assert_eq!(status_of(&usage("bad")), USAGE);
        let e = with_status(63)(anyhow::anyhow!("no checks"));
        assert_eq!(status_of(&e), 63);
        assert_eq!(one_line(&e), "no checks");
        let e = with_status(9)(usage("bad"));
        assert_eq!(status_of(&e), USAGE);
    }

    #[test]
    fn one_line_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(io).context("a.qcow2: open failed: gone");
        assert_eq!(one_line(&e), "a.qcow2: open failed: gone");
        let e = anyhow::anyhow!("line one\nline two").context("outer");
        assert_eq!(one_line(&e), "outer: line one line two");
    }
}
