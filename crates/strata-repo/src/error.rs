//! The repository's errors: each names the object (or file) at fault.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// An object is missing.
    #[error("{object}: missing")]
    Missing {
        /// The object's name.
        object: String,
    },
    /// An object does not hold what it should (cut, flipped, forged).
    #[error("{object}: damaged: {problem}")]
    Damaged {
        /// The object's name.
        object: String,
        /// What is wrong.
        problem: String,
    },
    /// The key given does not open the repository.
    #[error("{repo}: wrong key: the repository's keys do not open with it")]
    WrongKey {
        /// The repository.
        repo: String,
    },
    /// The repository is encrypted and no key was given.
    #[error(
        "{repo}: the repository is encrypted: give its key (--key-file or STRATA_REPO_KEY_FILE)"
    )]
    NeedKey {
        /// The repository.
        repo: String,
    },
    /// An object store did not do what it was asked (after its retries).
    #[error("{at}: cannot {op}: {problem}")]
    Remote {
        /// The object (its URL).
        at: String,
        /// What was being done.
        op: &'static str,
        /// Why, as the store said.
        problem: String,
    },
    /// A backup whose chunks a garbage collection running at the same
    /// time deleted: it is not kept.
    #[error("{object}: deleted by a garbage collection that ran during the backup, which is not kept: run it again")]
    Collected {
        /// The chunk.
        object: String,
    },
    /// A request that cannot be carried out.
    #[error("{what}: {problem}")]
    Invalid {
        /// What it was about.
        what: String,
        /// Why not.
        problem: String,
    },
    /// Reading or writing a disk image failed.
    #[error(transparent)]
    Image(#[from] strata_image::Error),
}

/// The repository's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::Damaged`].
    pub fn damaged(object: impl Into<String>, problem: impl Into<String>) -> Error {
        Error::Damaged {
            object: object.into(),
            problem: problem.into(),
        }
    }

    /// [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }
}
