//! The command-line arguments of running machines: `strata daemon` and the
//! lifecycle commands of `strata domain` (raw, as clap sees them).

use std::path::PathBuf;

use clap::Args;

/// `strata daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Listen on unix:PATH instead of STATE/strata.sock (the CLI looks for
    /// the daemon only at STATE/strata.sock).
    #[arg(long, value_name = "unix:PATH")]
    pub listen: Option<String>,
    /// Seconds a running guest gets to power off after the ACPI power
    /// button when the daemon stops (SIGTERM, SIGINT) before it is
    /// destroyed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds `destroy` waits after SIGTERM to QEMU before SIGKILL.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub destroy_grace: u64,
    /// How disks are served unless a domain's metadata chooses.
    #[arg(long, value_enum, default_value_t = DiskBackendArg::VhostUserBlk)]
    pub disk_backend: DiskBackendArg,
    /// What becomes of running guests when the daemon stops (SIGTERM,
    /// SIGINT).
    #[arg(long, value_enum, default_value_t = OnStopArg::Shutdown)]
    pub on_stop: OnStopArg,
}

/// `--on-stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStopArg {
    /// The ACPI power button, then destroy after --shutdown-timeout.
    Shutdown,
    /// Leave them running, their disks drained and closed, for the next
    /// daemon to take over (an upgrade).
    Keep,
}

/// `--disk-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskBackendArg {
    /// strata's vhost-user-blk backend (strata-vhost).
    VhostUserBlk,
    /// strata's NBD server (QEMU's NBD client blockdev, virtio-blk).
    Nbd,
}

impl DaemonArgs {
    /// The socket `--listen` names, if any.
    pub fn socket(&self) -> Result<Option<PathBuf>, String> {
        match &self.listen {
            None => Ok(None),
            Some(l) => match l.strip_prefix("unix:") {
                Some(p) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
                _ => Err(format!("--listen {l}: give unix:PATH")),
            },
        }
    }
}

/// `strata domain start`.
#[derive(Debug, Args)]
pub struct DomainStartArgs {
    /// The domain.
    pub domain: String,
    /// Leave the vCPUs stopped.
    #[arg(long)]
    pub paused: bool,
    /// Boot afresh, discarding the domain's managed save (without it, a
    /// domain with one is restored from it).
    #[arg(long)]
    pub force_boot: bool,
}

/// `strata domain shutdown`.
#[derive(Debug, Args)]
pub struct DomainShutdownArgs {
    /// The domain.
    pub domain: String,
    /// Seconds to wait for the guest to power off (0: press the button and
    /// return at once).
    #[arg(long, value_name = "SECONDS", default_value_t = strata_daemon::types::DEFAULT_SHUTDOWN_TIMEOUT)]
    pub timeout: u64,
}

/// A lifecycle command that names only the domain.
#[derive(Debug, Args)]
pub struct DomainNameArgs {
    /// The domain.
    pub domain: String,
}

/// The state a restored machine is left in, as virsh's `--running` and
/// `--paused` (by default: as it was when saved).
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct AfterRestoreArgs {
    /// Run it after the restore.
    #[arg(long)]
    pub running: bool,
    /// Leave it paused after the restore.
    #[arg(long)]
    pub paused: bool,
}

impl AfterRestoreArgs {
    /// Paused (`Some(true)`), running (`Some(false)`), or as saved.
    pub fn paused(&self) -> Option<bool> {
        match (self.running, self.paused) {
            (true, _) => Some(false),
            (_, true) => Some(true),
            _ => None,
        }
    }
}

/// `strata domain save`.
#[derive(Debug, Args)]
pub struct DomainSaveArgs {
    /// The domain (running or paused).
    pub domain: String,
    /// The file to save into; it must not exist.
    pub file: PathBuf,
    /// The state a restore leaves it in.
    #[command(flatten)]
    pub after: AfterRestoreArgs,
}

/// `strata domain managedsave`.
#[derive(Debug, Args)]
pub struct DomainManagedSaveArgs {
    /// The domain (running or paused).
    pub domain: String,
    /// The state `domain start` leaves it in.
    #[command(flatten)]
    pub after: AfterRestoreArgs,
}

/// `strata domain restore`.
#[derive(Debug, Args)]
pub struct DomainRestoreArgs {
    /// A file `domain save` wrote.
    pub file: PathBuf,
    /// The state to leave it in.
    #[command(flatten)]
    pub after: AfterRestoreArgs,
}

/// `strata domain domstate`.
#[derive(Debug, Args)]
pub struct DomstateArgs {
    /// The domain.
    pub domain: String,
    /// Add the reason in parentheses.
    #[arg(long)]
    pub reason: bool,
}

/// `strata domain list`.
#[derive(Debug, Args)]
pub struct DomainListArgs {
    /// Shut-off domains too.
    #[arg(long)]
    pub all: bool,
    /// Running domains.
    #[arg(long)]
    pub state_running: bool,
    /// Paused domains.
    #[arg(long)]
    pub state_paused: bool,
    /// Shut-off domains.
    #[arg(long)]
    pub state_shutoff: bool,
}
