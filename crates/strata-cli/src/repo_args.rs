//! The arguments of `strata repo` (CLI.md).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::FormatArg;

/// Where the repository is and how to open it.
#[derive(Debug, Args)]
pub struct RepoAt {
    /// The repository: a folder.
    pub repo: PathBuf,
    /// The key file of an encrypted repository (its bytes are the key; a
    /// passphrase in a file will do).
    #[arg(long, value_name = "FILE", env = "STRATA_REPO_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// `strata repo` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Make a new repository (encrypted with --key-file).
    Init(RepoAt),
    /// Back a domain that is not running up: every disk at one instant.
    Backup(RepoBackupArgs),
    /// List the backups (of one domain).
    List(RepoListArgs),
    /// Restore one disk of a backup into a new image file.
    Restore(RepoRestoreArgs),
    /// Check every backup (or one): manifests, indexes and every chunk.
    Verify(RepoVerifyArgs),
}

/// `strata repo backup`.
#[derive(Debug, Args)]
pub struct RepoBackupArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// The domain.
    pub domain: String,
    /// Read only what changed since the domain's latest backup (its
    /// checkpoint's dirty bitmaps); the backup still restores whole.
    #[arg(long)]
    pub incremental: bool,
    /// With --incremental: when the changes cannot be told, read
    /// everything (exit status 3) instead of failing.
    #[arg(long, requires = "incremental")]
    pub fallback_full: bool,
}

/// `strata repo list`.
#[derive(Debug, Args)]
pub struct RepoListArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// Only this domain's backups.
    pub domain: Option<String>,
}

/// `strata repo restore`.
#[derive(Debug, Args)]
pub struct RepoRestoreArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// The backup (its id, as `repo list` shows it).
    pub backup: String,
    /// The disk (its target, e.g. vda).
    pub disk: String,
    /// The new image's format.
    #[arg(short = 'O', value_enum)]
    pub format: FormatArg,
    /// The new image file (it must not exist).
    pub dst: PathBuf,
}

/// `strata repo verify`.
#[derive(Debug, Args)]
pub struct RepoVerifyArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// Only this backup (and the chunks it names).
    pub backup: Option<String>,
}
