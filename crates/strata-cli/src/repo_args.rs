//! The arguments of `strata repo` (CLI.md).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::FormatArg;

/// Where the repository is and how to open it.
#[derive(Debug, Args)]
pub struct RepoAt {
    /// The repository: a folder, or `s3://BUCKET/PREFIX` in object
    /// storage (credentials and region from the usual AWS_* variables).
    pub repo: PathBuf,
    /// The S3 server's URL, for storage other than AWS
    /// (`http://127.0.0.1:3900`).
    #[arg(long, value_name = "URL", env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// The key file of an encrypted repository (its bytes are the key; a
    /// passphrase in a file will do).
    #[arg(long, value_name = "FILE", env = "STRATA_REPO_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// `strata repo` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Make a new repository (encrypted with --key-file).
    Init(RepoInitArgs),
    /// Back a domain up (running or not): every disk at one instant.
    Backup(RepoBackupArgs),
    /// List the backups (of one domain).
    List(RepoListArgs),
    /// Restore one disk of a backup into a new image file.
    Restore(RepoRestoreArgs),
    /// Check every backup (or one): manifests, indexes and every chunk.
    Verify(RepoVerifyArgs),
    /// Remove the backups a keep policy does not keep, then collect what
    /// no backup names.
    Prune(RepoPruneArgs),
    /// Serve every disk of a backup over NBD, read-only, until a signal:
    /// a machine can boot from it at once.
    Mount(RepoMountArgs),
}

/// `strata repo init`.
#[derive(Debug, Args)]
pub struct RepoInitArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// The size of the chunks disks are cut into: a power of two from 64K
    /// to 16M. Smaller ones store less again when little changes; larger
    /// ones make fewer objects.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = crate::size::parse_size)]
    pub chunk_size: u64,
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
    #[arg(required_unless_present = "to_domain")]
    pub disk: Option<String>,
    /// The new image file (it must not exist).
    #[arg(required_unless_present = "to_domain")]
    pub dst: Option<PathBuf>,
    /// The new images' format (qcow2 for --to-domain unless given).
    #[arg(short = 'O', value_enum, required_unless_present = "to_domain")]
    pub format: Option<FormatArg>,
    /// Restore the whole machine: every disk, and a new domain of this
    /// name defined from the backup's definition (a new UUID, no MAC
    /// addresses), its disks the restored images.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["disk", "dst"])]
    pub to_domain: Option<String>,
    /// With --to-domain: the folder for the images (NAME-DISK.qcow2),
    /// the current one unless given.
    #[arg(long, value_name = "FOLDER", requires = "to_domain")]
    pub dir: Option<PathBuf>,
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

/// `strata repo prune`.
#[derive(Debug, Args)]
pub struct RepoPruneArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// Only this domain's backups (default: each domain's, apart).
    pub domain: Option<String>,
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N latest hours (UTC).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the N latest days (UTC).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N latest weeks (from Monday).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N latest months.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Say what would go; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep what no backup names but was made or used this recently: a
    /// backup in progress (on any host) may still need it. It must be
    /// longer than any backup takes. `30s`, `90m`, `24h`, `7d`.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration)]
    pub grace: std::time::Duration,
}

/// A duration as `--grace` takes one: a whole number and s, m, h or d.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err("a whole number and s, m, h or d (24h)".into()),
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(secs))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| "a whole number and s, m, h or d (24h)".into())
}

/// `strata repo mount`.
#[derive(Debug, Args)]
pub struct RepoMountArgs {
    /// The repository.
    #[command(flatten)]
    pub at: RepoAt,
    /// The backup (its id, as `repo list` shows it).
    pub backup: String,
    /// Listen on this unix socket (made mode 0600, removed at the end).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "bind",
        required_unless_present = "bind"
    )]
    pub socket: Option<PathBuf>,
    /// Listen on TCP at ADDR:PORT (loopback unless --insecure).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Allow a TCP address other than loopback without TLS.
    #[arg(long)]
    pub insecure: bool,
    /// Serve the disks writable: what clients write goes into qcow2
    /// overlays in this folder (`DISK.qcow2` each, made when missing,
    /// kept for the next mount of the same backup); the backup is never
    /// changed.
    #[arg(long, value_name = "FOLDER")]
    pub writable: Option<PathBuf>,
}
