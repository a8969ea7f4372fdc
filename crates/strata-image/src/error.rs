//! The crate's error type: every failure names the file and, where it has one,
//! the offset or object at fault. Corruption is kept apart from I/O failure.

use std::io;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the image engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage under an image failed.
    #[error("{path}: {op} failed at offset {offset}: {source}")]
    Io {
        /// File (or storage name) that failed.
        path: String,
        /// What was being done: "read", "write", "flush", …
        op: &'static str,
        /// Byte offset in the file.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The image's metadata breaks the format's rules.
    #[error("{path}: corrupt image: {what}")]
    Corrupt {
        /// The image file.
        path: String,
        /// What is wrong, with the offset where it applies.
        what: String,
    },
    /// The image uses something this engine does not implement.
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The image file.
        path: String,
        /// The unsupported feature.
        what: String,
    },
    /// A request or option is not valid for this image.
    #[error("{path}: {what}")]
    Invalid {
        /// The image file (or option source).
        path: String,
        /// What is wrong with the request.
        what: String,
    },
    /// Another process holds a conflicting lock on the image.
    #[error("{path}: failed to get \"{perm}\" lock: is another process using the image?")]
    Locked {
        /// The image file.
        path: String,
        /// The permission that conflicts ("write", "consistent read", …).
        perm: &'static str,
    },
    /// The backing chain is broken (missing file, loop, too deep).
    #[error("{path}: backing chain: {what}")]
    Backing {
        /// The image whose backing could not be opened.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// The external data file of a qcow2 image is missing, misnamed or
    /// unusable (`qcow2.txt` incompatible bit 2, extension 0x44415441).
    #[error("{path}: external data file: {what}")]
    DataFile {
        /// The qcow2 image that names (or should name) the data file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A write was attempted on an image opened read-only.
    #[error("{path}: image is opened read-only")]
    ReadOnly {
        /// The image file.
        path: String,
    },
}

impl Error {
    /// An I/O error with its context.
    pub fn io(path: &str, op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            op,
            offset,
            source,
        }
    }

    /// A corruption error.
    pub fn corrupt(path: &str, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_string(),
            what: what.into(),
        }
    }

    /// An unsupported-feature error.
    pub fn unsupported(path: &str, what: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_string(),
            what: what.into(),
        }
    }

    /// An invalid-request error.
    pub fn invalid(path: &str, what: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.to_string(),
            what: what.into(),
        }
    }

    /// A backing-chain error.
    pub fn backing(path: &str, what: impl Into<String>) -> Self {
        Error::Backing {
            path: path.to_string(),
            what: what.into(),
        }
    }

    /// An external-data-file error.
    pub fn data_file(path: &str, what: impl Into<String>) -> Self {
        Error::DataFile {
            path: path.to_string(),
            what: what.into(),
        }
    }

    /// True when the error says the image is corrupt (not an I/O failure).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}
