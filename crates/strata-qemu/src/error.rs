//! The crate's one error type. Every variant names what failed: the
//! emulator, the socket, the QMP command or the machine field.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::process::ExitInfo;
use crate::qmp::ErrorClass;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while describing, starting, watching or
/// talking to a QEMU process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine description cannot be turned into a command line; `field`
    /// names the part of the machine that is wrong.
    #[error("invalid machine: {field}: {reason}")]
    InvalidMachine {
        /// The part of the machine description (`disks[1].id`, `vcpus`, …).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No emulator of that name is on `PATH`.
    #[error("emulator {name:?} not found on PATH")]
    EmulatorNotFound {
        /// The program name that was searched for.
        name: OsString,
    },

    /// The emulator could not be started (missing, not executable, …).
    #[error("cannot start emulator {}: {source}", emulator.display())]
    Spawn {
        /// The emulator's path.
        emulator: PathBuf,
        /// Why `exec` failed.
        source: io::Error,
    },

    /// No emulator of a previous run can be taken over from `run_dir`.
    #[error("cannot take over the emulator of {}: {reason}", run_dir.display())]
    NotAdoptable {
        /// The run's folder.
        run_dir: PathBuf,
        /// Why (no pid file, no such process, not that run's QEMU).
        reason: String,
    },

    /// The emulator ran but did not answer as QEMU does (`-version`).
    #[error("{} does not look like QEMU: {reason}", emulator.display())]
    NotQemu {
        /// The emulator's path.
        emulator: PathBuf,
        /// What was wrong with its answer.
        reason: String,
    },

    /// The emulator exited before its QMP monitor answered: usually QEMU
    /// refused an argument, and the end of its log says which.
    #[error(
        "emulator {} exited during startup ({status}); its log {} ends with:\n{log_tail}",
        emulator.display(),
        log.display()
    )]
    ExitedEarly {
        /// The emulator's path.
        emulator: PathBuf,
        /// How it ended.
        status: ExitInfo,
        /// Its stdout/stderr log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A file or directory the process needs could not be prepared or read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating run directory`, …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Connecting to a QMP socket failed for a reason other than "not there
    /// yet".
    #[error("cannot connect to QMP socket {}: {source}", socket.display())]
    Connect {
        /// The socket's path.
        socket: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The QMP socket did not complete the greeting and capability
    /// negotiation in time.
    #[error("QMP socket {} did not become ready within {timeout:?}", socket.display())]
    ConnectTimeout {
        /// The socket's path.
        socket: PathBuf,
        /// The limit that passed.
        timeout: Duration,
    },

    /// A QMP command got no answer in time. The connection stays usable; a
    /// late answer is dropped.
    #[error("QMP command {command} on {} got no answer within {timeout:?}", socket.display())]
    CommandTimeout {
        /// The socket's path.
        socket: PathBuf,
        /// The command's name.
        command: String,
        /// The limit that passed.
        timeout: Duration,
    },

    /// QEMU answered a command with an error object.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Qmp {
        /// The command's name.
        command: String,
        /// QEMU's error class.
        class: ErrorClass,
        /// QEMU's human-readable description.
        desc: String,
    },

    /// The QMP connection is gone (QEMU exited, or the socket broke). Every
    /// call pending at that moment, and every later one, gets this.
    #[error("QMP connection to {} lost{}", socket.display(), command.as_ref().map(|c| format!(" during {c}")).unwrap_or_default())]
    Disconnected {
        /// The socket's path.
        socket: PathBuf,
        /// The command that was waiting, if any.
        command: Option<String>,
    },

    /// The peer broke the QMP protocol (not JSON, no greeting, a message
    /// too large). The connection is closed.
    #[error("QMP protocol error on {}: {detail}", socket.display())]
    Protocol {
        /// The socket's path.
        socket: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// A command's answer did not have the shape its schema promises.
    #[error("unexpected answer to QMP command {command}: {source}")]
    Decode {
        /// The command's name.
        command: String,
        /// Why it did not decode.
        source: serde_json::Error,
    },

    /// The guest agent on `socket` did not answer, or answered `command`
    /// with an error or with something that is not its protocol.
    #[error("guest agent on {}: {}{reason}", socket.display(), command.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Agent {
        /// The socket QEMU serves the agent's channel on.
        socket: PathBuf,
        /// The agent command, when one failed.
        command: Option<String>,
        /// What went wrong.
        reason: String,
    },

    /// Saving the machine's state to a file, or loading it from one, did not
    /// complete.
    #[error("{} the machine's state {} {uri}: {reason}", if *saving { "saving" } else { "loading" }, if *saving { "to" } else { "from" })]
    Migration {
        /// Saving (else loading).
        saving: bool,
        /// The stream's URI (`file:PATH,offset=N`).
        uri: String,
        /// Why (QEMU's `error-desc`, or the status it ended in).
        reason: String,
    },

    /// The machine cannot do this (a hypervisor without the feature).
    #[error("{what} is not supported by this hypervisor")]
    Unsupported {
        /// What was asked.
        what: &'static str,
    },

    /// An operation needs a running process, and it has exited.
    #[error("emulator process {pid} has exited ({status})")]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitInfo,
    },
}

impl Error {
    /// A shorthand for [`Error::InvalidMachine`].
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidMachine {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The QMP error class, when QEMU answered a command with an error.
    pub fn qmp_class(&self) -> Option<&ErrorClass> {
        match self {
            Error::Qmp { class, .. } => Some(class),
            _ => None,
        }
    }

    /// Whether this is a lost QMP connection.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected { .. })
    }
}
