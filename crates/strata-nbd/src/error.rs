//! Errors of the NBD server: what ends one connection or the server.

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a connection (or the server) stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; the connection is dropped.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// TLS credentials could not be loaded.
    #[error("TLS credentials: {0}")]
    Tls(String),
    /// The server answered a request with an error (client side).
    #[error(transparent)]
    Server(#[from] crate::client::ServerError),
}

impl Error {
    /// A [`Error::Protocol`].
    pub fn protocol(what: impl Into<String>) -> Error {
        Error::Protocol(what.into())
    }
}
