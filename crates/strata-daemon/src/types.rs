//! What the API sends and receives, shared by the daemon and its client:
//! a domain's state in virsh's words, its reason, and the request bodies.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A domain's state, as `virsh domstate` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// The guest's vCPUs run.
    #[serde(rename = "running")]
    Running,
    /// The emulator runs, the vCPUs are stopped.
    #[serde(rename = "paused")]
    Paused,
    /// No emulator runs for the domain.
    #[serde(rename = "shut off")]
    ShutOff,
}

impl State {
    /// virsh's word.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::ShutOff => "shut off",
        }
    }

    /// Running or paused: an emulator exists.
    pub fn is_active(self) -> bool {
        self != State::ShutOff
    }
}

/// Why a domain is in its state, as `virsh domstate --reason` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Nothing is known (a domain never started by this daemon).
    #[serde(rename = "unknown")]
    Unknown,
    /// Running: it was started.
    #[serde(rename = "booted")]
    Booted,
    /// Running: it was resumed.
    #[serde(rename = "unpaused")]
    Unpaused,
    /// Running: it was restored from a saved state.
    #[serde(rename = "restored")]
    Restored,
    /// Paused: a user asked (suspend, or start paused).
    #[serde(rename = "user")]
    User,
    /// Paused: the guest powered off and the domain keeps its emulator
    /// (`<on_poweroff>preserve</on_poweroff>`).
    #[serde(rename = "shutting down")]
    ShuttingDown,
    /// Paused: a disk error stopped it.
    #[serde(rename = "ioerror")]
    IoError,
    /// Paused after a guest panic, or shut off because the emulator died
    /// or the guest panicked.
    #[serde(rename = "crashed")]
    Crashed,
    /// Shut off: the guest powered off (or the emulator was asked to end).
    #[serde(rename = "shutdown")]
    Shutdown,
    /// Shut off: `destroy`.
    #[serde(rename = "destroyed")]
    Destroyed,
    /// Shut off: its state was saved (`domain save`).
    #[serde(rename = "saved")]
    Saved,
    /// Shut off: stopped after a snapshot (`snapshot create --halt`).
    #[serde(rename = "from snapshot")]
    FromSnapshot,
    /// Shut off: the domain failed to start.
    #[serde(rename = "failed")]
    Failed,
    /// Shut off: the daemon ended it while stopping.
    #[serde(rename = "daemon")]
    Daemon,
}

impl Reason {
    /// virsh's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unknown => "unknown",
            Reason::Booted => "booted",
            Reason::Unpaused => "unpaused",
            Reason::Restored => "restored",
            Reason::User => "user",
            Reason::ShuttingDown => "shutting down",
            Reason::IoError => "ioerror",
            Reason::Crashed => "crashed",
            Reason::Shutdown => "shutdown",
            Reason::Destroyed => "destroyed",
            Reason::Saved => "saved",
            Reason::FromSnapshot => "from snapshot",
            Reason::Failed => "failed",
            Reason::Daemon => "daemon",
        }
    }
}

/// `GET /v1/domains/{name}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// The state.
    pub state: State,
    /// Why.
    pub reason: Reason,
}

/// One served disk of a running domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The guest device (`target dev`).
    pub target: String,
    /// The image file served.
    pub source: String,
    /// How it is served: `nbd` or `vhost-user-blk`.
    pub backend: String,
    /// The unix socket QEMU connects to.
    pub socket: String,
}

/// A domain as the API shows it (`GET /v1/domains/{name}`, and each
/// element of `GET /v1/domains`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// libvirt's domain id: a number while active (new at each start),
    /// absent when shut off.
    pub id: Option<u32>,
    /// The name.
    pub name: String,
    /// The UUID.
    pub uuid: String,
    /// The state.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// The emulator's process id, while active.
    pub pid: Option<u32>,
    /// The disks the daemon serves, while active.
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

/// `GET /v1/daemon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// strata's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The state folder it serves.
    pub state_dir: String,
    /// True once it has begun to stop (new starts are refused).
    pub stopping: bool,
}

/// `POST /v1/domains/{name}/start` (an empty body means the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Leave the vCPUs stopped (`virsh start --paused`).
    #[serde(default)]
    pub paused: bool,
    /// Start from the memory kept with this snapshot (after its disks were
    /// reverted to it): the guest goes on from the snapshot's instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_of: Option<String>,
    /// Boot afresh, discarding the domain's managed save (`virsh start
    /// --force-boot`); without it a managed save is restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_boot: bool,
}

/// `POST /v1/domains/{name}/save`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    /// The file to save into (absolute; it must not exist).
    pub file: PathBuf,
    /// The state a restore leaves it in: paused (`Some(true)`), running
    /// (`Some(false)`), or as it is now.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// What `POST /v1/domains/{name}/save` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveInfo {
    /// The domain, shut off now.
    pub domain: DomainInfo,
    /// The file.
    pub file: PathBuf,
    /// Bytes of saved state (memory and devices).
    pub bytes: u64,
    /// Milliseconds from pausing the guest to its state being saved.
    pub paused_ms: u64,
    /// Milliseconds the whole save took.
    pub total_ms: u64,
}

/// `POST /v1/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The saved machine (absolute).
    pub file: PathBuf,
    /// Run it (`Some(false)`) or leave it paused (`Some(true)`); by
    /// default as it was when saved.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// `POST /v1/domains/{name}/shutdown` (an empty body means the defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Seconds to wait for the guest to power off after the ACPI power
    /// button; 0 presses the button and returns at once (as `virsh
    /// shutdown`). Default [`DEFAULT_SHUTDOWN_TIMEOUT`].
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// The seconds `shutdown` waits when not told.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 60;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words (libvirt's where libvirt has them).
    pub error: String,
    /// A stable code for programs (`no-domain`, `operation-invalid`, …).
    pub code: String,
}

/// What a live snapshot or checkpoint made: its name, and how long the
/// guest's disks took no request (the stall), in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    /// The snapshot's or checkpoint's name.
    pub name: String,
    /// The stall of the guest's disks, in µs (absent offline).
    #[serde(default)]
    pub stall_us: Option<u64>,
    /// With `quiesce`: how many filesystems the guest agent froze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<u64>,
}

/// The body of `POST /v1/domains/{name}/backup`: `backup begin`'s XML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupRequest {
    /// The domainbackup XML (none: a full push backup of every disk).
    pub backup_xml: Option<String>,
    /// The domaincheckpoint XML of a checkpoint made at the same instant.
    pub checkpoint_xml: Option<String>,
    /// A disk whose incremental backup would not be exact gets a full one
    /// instead of failing the backup (`--fallback-full`).
    pub fallback_full: bool,
    /// Push mode: write into target files that exist (otherwise they must
    /// not), as `--reuse-external`.
    pub reuse_external: bool,
    /// For a pull backup with `<server tls='yes'>`: the folder of the
    /// server's x509 credentials, as `nbd serve --tls-creds` (absolute,
    /// read by the daemon).
    pub tls_creds: Option<std::path::PathBuf>,
}

/// The body of `POST /v1/domains/{name}/repo-backup`: `repo backup` of a
/// running domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoBackupRequest {
    /// The repository: its folder (absolute) or `s3://BUCKET/PREFIX`,
    /// opened by the daemon (with the `AWS_*` variables of its
    /// environment).
    pub repo: PathBuf,
    /// The S3 server's URL, for storage other than AWS.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// The key file of an encrypted repository (absolute, read by the
    /// daemon).
    pub key_file: Option<PathBuf>,
    /// Read only what changed since the domain's latest backup there.
    pub incremental: bool,
    /// With `incremental`: read everything when the changes cannot be told.
    pub fallback_full: bool,
    /// The host named in the manifest.
    pub host: String,
}

/// A backup made by `POST /v1/domains/{name}/repo-backup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoBackupMade {
    /// Its manifest.
    pub manifest: strata_repo::manifest::Manifest,
    /// Why an incremental backup read everything (`fallback_full`).
    #[serde(default)]
    pub fallback: Option<String>,
}

/// What a live `snapshot delete` deleted, and how long the guest's disks
/// took no request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gone {
    /// The snapshots deleted.
    pub deleted: Vec<String>,
    /// The stall of the guest's disks over all of them, in µs.
    #[serde(default)]
    pub stall_us: Option<u64>,
}

impl Made {
    /// `name`, made with the disks stalled for `stall`.
    pub fn new(name: String, stall: Option<std::time::Duration>) -> Made {
        Made {
            name,
            stall_us: stall.map(|d| d.as_micros() as u64),
            frozen: None,
        }
    }
}

/// `POST /v1/domains/{name}/blockjobs`: a block job to start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockJobRequest {
    /// The job (disk, commit or pull, top, base, bandwidth).
    #[serde(flatten)]
    pub job: strata_core::blockjob::BlockRequest,
    /// An active commit pivots by itself once ready (virsh `--pivot`).
    pub pivot: bool,
}

/// Where a block job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobPhase {
    /// Copying.
    Running,
    /// An active commit caught up: it goes on mirroring the guest's
    /// writes until pivoted or aborted.
    Ready,
    /// Ended well: the new chain is served.
    Completed,
    /// Given up by `--abort`: the chain is as before.
    Aborted,
    /// Failed (the chain is as before, unless said otherwise).
    Failed,
}

impl JobPhase {
    /// True once the job is over.
    pub fn ended(&self) -> bool {
        matches!(
            self,
            JobPhase::Completed | JobPhase::Aborted | JobPhase::Failed
        )
    }
}

/// A block job as `blockjob --info` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockJobInfo {
    /// The disk's target.
    pub disk: String,
    /// commit, active-commit or pull.
    pub kind: strata_core::blockjob::Kind,
    /// The top layer (commit) or the active layer (pull).
    pub top: String,
    /// The base, if any.
    pub base: Option<String>,
    /// Where the job is.
    pub phase: JobPhase,
    /// Why it failed or was aborted.
    pub error: Option<String>,
    /// Bytes copied.
    pub done: u64,
    /// Bytes known to copy.
    pub total: u64,
    /// The bandwidth limit, bytes per second (0: none).
    pub bandwidth: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_job_request_refuses_unknown_fields() {
        let ok: BlockJobRequest =
            serde_json::from_str(r#"{"disk": "vda", "active": true, "pivot": true}"#).unwrap();
        assert!(ok.pivot && ok.job.active && ok.job.disk == "vda");
        for bad in [
            r#"{"disk": "vda", "bogus": 1}"#,
            r#"{"disk": "vda", "pivot": "yes"}"#,
        ] {
            assert!(
                serde_json::from_str::<BlockJobRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
