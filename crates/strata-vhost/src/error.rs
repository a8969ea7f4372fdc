//! The crate's error type: one enum, each variant naming what failed and
//! where (the socket path, the image, the field).

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong starting, steering or stopping a vhost-user-blk server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`Config`](crate::Config) field is out of range.
    #[error("invalid vhost-user-blk configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The image cannot be served with this configuration.
    #[error("{path}: {reason}")]
    Image {
        /// The image's file name.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The unix socket could not be created or prepared.
    #[error("{path}: cannot listen for vhost-user connections: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A thread or an event file descriptor could not be created.
    #[error("cannot create {what}: {source}")]
    Resource {
        /// What was being created.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The vhost-user framework refused to set up or run a session.
    #[error("{path}: vhost-user session: {message}")]
    Session {
        /// The socket path.
        path: PathBuf,
        /// The framework's error.
        message: String,
    },
    /// Requests were still in flight when a drain gave up.
    #[error("{in_flight} requests still in flight after waiting {waited:?}")]
    DrainTimeout {
        /// Requests still running.
        in_flight: usize,
        /// How long the drain waited.
        waited: Duration,
    },
    /// The served image was to be swapped before the gate was drained.
    #[error("the image can only be swapped once the paused gate has drained")]
    NotDrained,
    /// The replacement image does not fit the disk the guest sees.
    #[error("cannot swap {old} for {new}: {reason}")]
    Swap {
        /// The image served now.
        old: String,
        /// The image offered in its place.
        new: String,
        /// Why it is refused.
        reason: String,
    },
    /// The server's accept thread ended with an error.
    #[error("{path}: the vhost-user server stopped: {message}")]
    Server {
        /// The socket path.
        path: PathBuf,
        /// What ended it.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
