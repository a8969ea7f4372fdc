//! The crate's error type. Each variant names the domain, file or socket it
//! is about, and maps onto an HTTP status and a stable code for the API
//! (`{"error": "...", "code": "..."}`); wrong-state errors use libvirt's
//! words ("Requested operation is not valid: domain is not running").

use std::path::PathBuf;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the daemon can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No domain of that name is defined.
    #[error("domain '{0}' not found")]
    NoDomain(String),

    /// The operation does not fit the domain's state; `problem` is
    /// libvirt's phrase ("domain is not running").
    #[error("Requested operation is not valid: {problem}")]
    OperationInvalid {
        /// The domain.
        domain: String,
        /// libvirt's words for what is wrong.
        problem: &'static str,
    },

    /// Another strata process holds the domain's lock (an offline
    /// operation on its disks).
    #[error("domain '{domain}' is busy: another strata process holds its lock")]
    Busy {
        /// The domain.
        domain: String,
    },

    /// The daemon is stopping and starts nothing new.
    #[error("the daemon is stopping")]
    Stopping,

    /// The guest did not power off in time after the ACPI power button.
    #[error("domain '{domain}' did not shut down within {seconds} s of the power button (it still runs; destroy ends it)")]
    ShutdownTimeout {
        /// The domain.
        domain: String,
        /// The time waited.
        seconds: u64,
    },

    /// The domain's definition asks for something strata cannot run.
    #[error("domain '{domain}': {source}")]
    Config {
        /// The domain.
        domain: String,
        /// What strata-core refused, naming the element.
        source: strata_core::Error,
    },

    /// Reading the metadata store or a domain failed.
    #[error(transparent)]
    Core(#[from] strata_core::Error),

    /// Opening, flushing or closing a disk image failed.
    #[error("disk {target} ({}): {source}", path.display())]
    Disk {
        /// The guest device.
        target: String,
        /// The image file.
        path: PathBuf,
        /// The engine's error.
        source: strata_image::Error,
    },

    /// Serving a disk failed.
    #[error("disk {target}: serving on {}: {detail}", socket.display())]
    Serve {
        /// The guest device.
        target: String,
        /// The socket.
        socket: PathBuf,
        /// What failed.
        detail: String,
    },

    /// QEMU refused, failed or is gone.
    #[error("domain '{domain}': {source}")]
    Hypervisor {
        /// The domain.
        domain: String,
        /// strata-qemu's error.
        source: strata_qemu::Error,
    },

    /// Another daemon already answers on the socket (or holds its lock).
    #[error("another strata daemon answers on {} ({holder})", socket.display())]
    AlreadyServing {
        /// The API socket.
        socket: PathBuf,
        /// Who holds it, as far as known.
        holder: String,
    },

    /// A file or socket operation failed.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },

    /// A task of the daemon ended abnormally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::OperationInvalid`].
    pub fn invalid(domain: &str, problem: &'static str) -> Error {
        Error::OperationInvalid {
            domain: domain.to_string(),
            problem,
        }
    }

    /// An [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// The API's stable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoDomain(_) => "no-domain",
            Error::Core(strata_core::Error::NoDomain(_)) => "no-domain",
            Error::Core(strata_core::Error::Invalid { .. }) => "operation-failed",
            Error::OperationInvalid { .. } => "operation-invalid",
            Error::Busy { .. } => "busy",
            Error::Stopping => "stopping",
            Error::ShutdownTimeout { .. } => "timeout",
            Error::Config { .. } => "config-unsupported",
            Error::Core(_) => "store",
            Error::Disk { .. } => "disk",
            Error::Serve { .. } => "disk",
            Error::Hypervisor { .. } => "hypervisor",
            Error::AlreadyServing { .. } => "already-serving",
            Error::Io { .. } => "io",
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status the API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            "no-domain" => 404,
            "operation-invalid" | "operation-failed" | "busy" => 409,
            "config-unsupported" => 422,
            "stopping" => 503,
            "timeout" => 504,
            _ => 500,
        }
    }
}
