//! Errors of the machine layer. Each names what it is about: the domain,
//! snapshot, disk or file at fault.

use std::path::PathBuf;

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No domain with this name.
    #[error("domain '{0}' not found")]
    NoDomain(String),
    /// No snapshot with this name in the domain.
    #[error("domain '{domain}': snapshot '{name}' not found")]
    NoSnapshot {
        /// The domain.
        domain: String,
        /// The snapshot asked for.
        name: String,
    },
    /// A request that cannot be carried out as asked.
    #[error("{what}: {problem}")]
    Invalid {
        /// The domain, snapshot or file concerned.
        what: String,
        /// Why.
        problem: String,
    },
    /// XML that is not well formed or not what the format says.
    #[error("{what}: invalid XML: {problem}")]
    Xml {
        /// The file or document concerned.
        what: String,
        /// What is wrong, and where.
        problem: String,
    },
    /// The metadata store failed.
    #[error("metadata store {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("{path}: cannot {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// An image operation failed.
    #[error(transparent)]
    Image(#[from] strata_image::Error),
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }
}
