//! The command line as clap sees it: raw arguments, before validation.
//!
//! Every command group is one variant of [`Command`]; `strata img` has one
//! variant of [`ImgCommand`] per subcommand. Values that have a syntax of
//! their own (sizes, bytes) are parsed here by [`crate::size`]; everything
//! that needs more than one argument to judge is validated by the command's
//! module when it turns these into a typed request.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::live_args::{
    DaemonArgs, DomainListArgs, DomainManagedSaveArgs, DomainNameArgs, DomainRestoreArgs,
    DomainSaveArgs, DomainShutdownArgs, DomainStartArgs, DomstateArgs,
};
use crate::size::{parse_byte, parse_size, parse_size_change, SizeChange};

/// strata: snapshots, change tracking and backups for qcow2 and raw disks.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command group.
    #[command(subcommand)]
    pub command: Command,
}

/// Options that may stand before or after the command group.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where domain, snapshot and checkpoint metadata live.
    #[arg(long, global = true, value_name = "DIR", env = "STRATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Human text or JSON on stdout.
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Print less: no progress bars, no informational messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more (repeat for more detail; RUST_LOG also works).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// The output formats of `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text for people.
    Human,
    /// JSON for programs (qemu-img's shapes where qemu-img has the command).
    Json,
}

/// Command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work on one image file (qemu-img's job).
    #[command(subcommand)]
    Img(ImgCommand),
    /// Machines: define, run, list, show and undefine domains (virsh's job).
    #[command(subcommand)]
    Domain(DomainCommand),
    /// A machine's snapshot tree (virsh snapshot-*).
    #[command(subcommand)]
    Snapshot(DomSnapshotCommand),
    /// A machine's checkpoints for incremental backup (virsh checkpoint-*).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Back up a machine's disks, full or incremental (virsh backup-*).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Commit a running domain's image layers into a lower one (virsh
    /// blockcommit): an intermediate layer, or with --active the one the
    /// guest writes to, then --pivot to serve the base.
    Blockcommit(BlockCommitArgs),
    /// Copy a running domain's backing files into the image the guest
    /// writes to, then drop them from its chain (virsh blockpull).
    Blockpull(BlockPullArgs),
    /// Show, abort or pivot a running domain's block job (virsh blockjob).
    Blockjob(BlockJobArgs),
    /// A backup repository: deduplicated, compressed, optionally
    /// encrypted, every backup verifiable and restorable on its own.
    #[command(subcommand)]
    Repo(crate::repo_args::RepoCommand),
    /// Serve images over NBD (as qemu-nbd).
    #[command(subcommand)]
    Nbd(NbdCommand),
    /// Run the service that runs domains (foreground; systemd-friendly).
    Daemon(DaemonArgs),
}

/// `strata blockcommit`.
#[derive(Debug, Args)]
pub struct BlockCommitArgs {
    /// The running domain.
    pub domain: String,
    /// The disk (its target, e.g. vda, or its image file).
    pub disk: String,
    /// The layer to commit (default: the active layer, with --active).
    #[arg(long, value_name = "IMG")]
    pub top: Option<PathBuf>,
    /// The layer to commit into (default: the top's backing file).
    #[arg(long, value_name = "IMG")]
    pub base: Option<PathBuf>,
    /// Commit the active layer (two phases: copy, then --pivot).
    #[arg(long)]
    pub active: bool,
    /// With --active: serve the base once the copy caught up (implies --wait).
    #[arg(long, requires = "active")]
    pub pivot: bool,
    /// Wait for the job: its end, or for --active without --pivot its
    /// ready state (with the global --verbose: showing progress).
    #[arg(long)]
    pub wait: bool,
    /// Copy at most this many MiB per second (0: no limit).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub bandwidth: u64,
}

/// `strata blockpull`.
#[derive(Debug, Args)]
pub struct BlockPullArgs {
    /// The running domain.
    pub domain: String,
    /// The disk (its target, e.g. vda, or its image file).
    pub disk: String,
    /// Keep this backing file (and what is below it); default: pull all.
    #[arg(long, value_name = "IMG")]
    pub base: Option<PathBuf>,
    /// Wait for the job's end (with the global --verbose: showing
    /// progress).
    #[arg(long)]
    pub wait: bool,
    /// Copy at most this many MiB per second (0: no limit).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub bandwidth: u64,
}

/// `strata blockjob`.
#[derive(Debug, Args)]
pub struct BlockJobArgs {
    /// The running domain.
    pub domain: String,
    /// The disk (its target, e.g. vda).
    pub disk: String,
    /// Show the job (the default).
    #[arg(long, conflicts_with_all = ["abort", "pivot"])]
    pub info: bool,
    /// Stop the job: the disk's chain stays as it was.
    #[arg(long, conflicts_with = "pivot")]
    pub abort: bool,
    /// Serve a ready active commit's base from now on.
    #[arg(long)]
    pub pivot: bool,
}

/// `strata nbd` subcommands.
#[derive(Debug, Subcommand)]
pub enum NbdCommand {
    /// Serve exports until stopped (or, without --persistent, until the
    /// first client leaves).
    Serve(NbdServeArgs),
}

/// `strata nbd serve`.
#[derive(Debug, Args)]
pub struct NbdServeArgs {
    /// Listen on this unix socket (made mode 0600, removed at the end).
    #[arg(long, value_name = "PATH", conflicts_with = "bind")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP at ADDR:PORT (loopback unless --insecure).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Allow a TCP address other than loopback without TLS.
    #[arg(long)]
    pub insecure: bool,
    /// Require TLS, with x509 credentials in DIR laid out as QEMU's
    /// tls-creds-x509 (ca-cert.pem, server-cert.pem, server-key.pem,
    /// optional ca-crl.pem); clients must present a certificate.
    #[arg(long, value_name = "DIR")]
    pub tls_creds: Option<PathBuf>,
    /// Require TLS with a pre-shared key: FILE holds USERNAME:HEXKEY lines
    /// as psktool writes them (a folder means its keys.psk, as QEMU's
    /// tls-creds-psk lays it out).
    #[arg(long, value_name = "FILE", conflicts_with = "tls_creds")]
    pub tls_psk: Option<PathBuf>,
    /// Clients connected at once (0: no limit); further ones wait to be
    /// accepted. Multi-conn is offered unless this is 1, as qemu-nbd does.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub shared: usize,
    /// Keep serving after the last client leaves.
    #[arg(long)]
    pub persistent: bool,
    /// Drop a client that has not finished its handshake within SECONDS
    /// (0: no limit), freeing its slot.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub handshake_limit: u64,
    /// FILE, or name=NAME,file=FILE[,format=qcow2|raw][,readonly].
    #[arg(required = true, value_name = "EXPORT")]
    pub exports: Vec<String>,
}

/// `strata backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the disks (push mode: to target files), waiting for the end.
    Begin(BackupBeginArgs),
    /// Show the domain's running or last backup job.
    Status(BackupDomainArgs),
    /// Stop the domain's running backup job; its files are removed.
    Abort(BackupDomainArgs),
    /// Print the domainbackup XML of the running or last backup job.
    Dumpxml(BackupDomainArgs),
}

/// `strata backup begin`.
#[derive(Debug, Args)]
pub struct BackupBeginArgs {
    /// The domain.
    pub domain: String,
    /// domainbackup XML (default: a full push backup of every disk to
    /// SOURCE.TIME in qcow2).
    #[arg(long, value_name = "FILE")]
    pub backupxml: Option<std::path::PathBuf>,
    /// domaincheckpoint XML: create this checkpoint with the backup.
    #[arg(long, value_name = "FILE")]
    pub checkpointxml: Option<std::path::PathBuf>,
    /// Write into target files that already exist.
    #[arg(long)]
    pub reuse_external: bool,
    /// A disk whose incremental backup would not be exact (its
    /// checkpoint's bitmaps damaged or missing) gets a full backup instead
    /// of failing; the command then exits with status 3.
    #[arg(long)]
    pub fallback_full: bool,
    /// Pull mode with `<server tls='yes'>`: x509 credentials in DIR, as for
    /// `nbd serve --tls-creds`.
    #[arg(long, value_name = "DIR")]
    pub tls_creds: Option<std::path::PathBuf>,
}

/// A backup command that names only the domain.
#[derive(Debug, Args)]
pub struct BackupDomainArgs {
    /// The domain.
    pub domain: String,
}

/// `strata checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Start tracking changes on every disk (a bitmap per disk).
    Create(CheckpointCreateArgs),
    /// List a domain's checkpoints.
    List(CheckpointListArgs),
    /// Print a checkpoint's XML.
    Dumpxml(CheckpointDumpxmlArgs),
    /// Print a checkpoint's parent.
    Parent(DomSnapshotNameArgs),
    /// Check that the changes since each checkpoint (or one) can be told
    /// exactly on every disk: exit status 1 when any cannot.
    Verify(CheckpointVerifyArgs),
    /// Delete a checkpoint (its changes fold into its parent's).
    Delete(CheckpointDeleteArgs),
}

/// `strata checkpoint delete`.
#[derive(Debug, Args)]
pub struct CheckpointDeleteArgs {
    /// The domain.
    pub domain: String,
    /// The checkpoint.
    pub checkpoint: String,
    /// Also delete all later checkpoints.
    #[arg(long)]
    pub children: bool,
    /// Delete only the later checkpoints.
    #[arg(long)]
    pub children_only: bool,
    /// Drop only the metadata; bitmaps are not touched.
    #[arg(long)]
    pub metadata: bool,
}

/// `strata checkpoint create`.
#[derive(Debug, Args)]
pub struct CheckpointCreateArgs {
    /// The domain.
    pub domain: String,
    /// Checkpoint name (default: the time in seconds).
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Per disk: vda[,checkpoint=bitmap|no][,bitmap=NAME].
    #[arg(long, value_name = "SPEC")]
    pub diskspec: Vec<String>,
    /// domaincheckpoint XML saying the name, description and disks.
    #[arg(long, value_name = "FILE")]
    pub xmlfile: Option<std::path::PathBuf>,
    /// Record the checkpoint from --xmlfile as given, touching no disk
    /// (its bitmaps must exist).
    #[arg(long, requires = "xmlfile")]
    pub redefine: bool,
}

/// `strata checkpoint list`.
#[derive(Debug, Args)]
pub struct CheckpointListArgs {
    /// The domain.
    pub domain: String,
    /// Names only.
    #[arg(long)]
    pub name: bool,
    /// Show each checkpoint's parent.
    #[arg(long)]
    pub parent: bool,
    /// Draw the tree.
    #[arg(long)]
    pub tree: bool,
    /// Only checkpoints without a parent.
    #[arg(long)]
    pub roots: bool,
    /// Only checkpoints without children.
    #[arg(long)]
    pub leaves: bool,
    /// Only checkpoints with children.
    #[arg(long)]
    pub no_leaves: bool,
    /// Parents before children.
    #[arg(long)]
    pub topological: bool,
}

/// `strata checkpoint verify`.
#[derive(Debug, Args)]
pub struct CheckpointVerifyArgs {
    /// The domain.
    pub domain: String,
    /// Only this checkpoint (default: every checkpoint).
    pub checkpoint: Option<String>,
}

/// `strata checkpoint dumpxml`.
#[derive(Debug, Args)]
pub struct CheckpointDumpxmlArgs {
    /// The domain.
    pub domain: String,
    /// The checkpoint.
    pub checkpoint: String,
    /// Add each disk's bytes changed since the checkpoint.
    #[arg(long)]
    pub size: bool,
    /// Leave out the domain definition.
    #[arg(long)]
    pub no_domain: bool,
}

/// `strata snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum DomSnapshotCommand {
    /// Snapshot a domain's disks, all or nothing.
    Create(DomSnapshotCreateArgs),
    /// List a domain's snapshots.
    List(DomSnapshotListArgs),
    /// Print a snapshot's XML.
    Dumpxml(DomSnapshotDumpxmlArgs),
    /// Show, or set, the current snapshot.
    Current(DomSnapshotCurrentArgs),
    /// Print a snapshot's parent.
    Parent(DomSnapshotNameArgs),
    /// Bring the disks back to a snapshot (the snapshot becomes current).
    Revert(DomSnapshotRevertArgs),
    /// Delete a snapshot (its children move up to its parent).
    Delete(DomSnapshotDeleteArgs),
    /// Show facts about a snapshot.
    Info(DomSnapshotInfoArgs),
}

/// `strata snapshot create`.
#[derive(Debug, Args)]
pub struct DomSnapshotCreateArgs {
    /// The domain.
    pub domain: String,
    /// Snapshot name (default: the time, in seconds since the Epoch).
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Disks only (external snapshots by default).
    #[arg(long)]
    pub disk_only: bool,
    /// Per disk: vda[,snapshot=internal|external|no][,file=PATH][,driver=qcow2].
    #[arg(long, value_name = "SPEC")]
    pub diskspec: Vec<String>,
    /// Change the disks but record no metadata.
    #[arg(long)]
    pub no_metadata: bool,
    /// Use existing external overlay files.
    #[arg(long)]
    pub reuse_external: bool,
    /// All disks or none (always so in strata).
    #[arg(long)]
    pub atomic: bool,
    /// Freeze the guest's filesystems through qemu-guest-agent around the
    /// snapshot (a running domain with the agent's channel; refused when
    /// the agent does not answer).
    #[arg(long)]
    pub quiesce: bool,
    /// Save the memory while the guest runs, pausing it only for the last
    /// of it (needs a running machine; not with --disk-only).
    #[arg(long)]
    pub live: bool,
    /// Where the memory goes: [file=]PATH[,snapshot=external] (a file of its
    /// own, the disks then snapshotted externally), snapshot=internal (the
    /// default: inside the first disk's snapshot) or snapshot=no.
    #[arg(long, value_name = "SPEC")]
    pub memspec: Option<String>,
    /// Needs a running machine.
    #[arg(long)]
    pub halt: bool,
    /// Take the snapshot from an XML file.
    #[arg(long, value_name = "FILE")]
    pub xmlfile: Option<PathBuf>,
    /// Define metadata for an existing snapshot from XML.
    #[arg(long)]
    pub redefine: bool,
    /// With --redefine: make it current.
    #[arg(long)]
    pub current: bool,
}

/// `strata snapshot list`.
#[derive(Debug, Args)]
pub struct DomSnapshotListArgs {
    /// The domain.
    pub domain: String,
    /// Draw the tree.
    #[arg(long)]
    pub tree: bool,
    /// Show each snapshot's parent.
    #[arg(long)]
    pub parent: bool,
    /// Names only.
    #[arg(long)]
    pub name: bool,
    /// Only snapshots without a parent.
    #[arg(long)]
    pub roots: bool,
    /// Only snapshots without children.
    #[arg(long)]
    pub leaves: bool,
    /// Only snapshots with children.
    #[arg(long)]
    pub no_leaves: bool,
    /// Only the current snapshot.
    #[arg(long)]
    pub current: bool,
    /// Only snapshots with an external disk.
    #[arg(long)]
    pub external: bool,
    /// Only snapshots with internal disks only.
    #[arg(long)]
    pub internal: bool,
    /// Only disk-only snapshots.
    #[arg(long)]
    pub disk_only: bool,
    /// Only the children of this snapshot (with --tree: its tree).
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    /// With --from: every descendant, not only the children.
    #[arg(long, requires = "from")]
    pub descendants: bool,
    /// Parents before children.
    #[arg(long)]
    pub topological: bool,
}

/// `strata snapshot dumpxml`.
#[derive(Debug, Args)]
pub struct DomSnapshotDumpxmlArgs {
    /// The domain.
    pub domain: String,
    /// The snapshot.
    pub snapshot: String,
    /// Include secrets.
    #[arg(long)]
    pub security_info: bool,
}

/// `strata snapshot current`.
#[derive(Debug, Args)]
pub struct DomSnapshotCurrentArgs {
    /// The domain.
    pub domain: String,
    /// Make this snapshot current.
    pub snapshot: Option<String>,
    /// Print the name only (not the XML).
    #[arg(long)]
    pub name: bool,
}

/// A domain and one of its snapshots.
#[derive(Debug, Args)]
pub struct DomSnapshotNameArgs {
    /// The domain.
    pub domain: String,
    /// The snapshot.
    pub snapshot: String,
}

/// `strata snapshot revert`.
#[derive(Debug, Args)]
pub struct DomSnapshotRevertArgs {
    /// The domain.
    pub domain: String,
    /// The snapshot.
    pub snapshot: Option<String>,
    /// The current snapshot.
    #[arg(long)]
    pub current: bool,
    /// Start the machine afterwards (needs a hypervisor).
    #[arg(long)]
    pub running: bool,
    /// Start the machine paused afterwards (needs a hypervisor).
    #[arg(long)]
    pub paused: bool,
    /// Revert even where it is risky.
    #[arg(long)]
    pub force: bool,
}

/// `strata snapshot delete`.
#[derive(Debug, Args)]
pub struct DomSnapshotDeleteArgs {
    /// The domain.
    pub domain: String,
    /// The snapshot.
    pub snapshot: Option<String>,
    /// The current snapshot.
    #[arg(long)]
    pub current: bool,
    /// Also delete all its descendants.
    #[arg(long)]
    pub children: bool,
    /// Delete only its descendants.
    #[arg(long)]
    pub children_only: bool,
    /// Drop only the metadata; images are not touched.
    #[arg(long)]
    pub metadata: bool,
}

/// `strata snapshot info`.
#[derive(Debug, Args)]
pub struct DomSnapshotInfoArgs {
    /// The domain.
    pub domain: String,
    /// The snapshot.
    pub snapshot: Option<String>,
    /// The current snapshot.
    #[arg(long)]
    pub current: bool,
}

/// `strata domain` subcommands.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Define a domain from libvirt domain XML (or change its definition).
    Define(DomainDefineArgs),
    /// List domains: active ones, or with --all every defined one.
    List(DomainListArgs),
    /// Start a domain (starting the daemon if none runs).
    Start(DomainStartArgs),
    /// Press the ACPI power button, then wait for the guest to power off.
    Shutdown(DomainShutdownArgs),
    /// End a domain now (QEMU killed, disks flushed and closed).
    Destroy(DomainNameArgs),
    /// Stop a domain's vCPUs.
    Suspend(DomainNameArgs),
    /// Run a paused domain's vCPUs.
    Resume(DomainNameArgs),
    /// Save a domain's memory and definition to a file and stop it.
    Save(DomainSaveArgs),
    /// Start a domain from a file `domain save` wrote, where it left off.
    Restore(DomainRestoreArgs),
    /// Save a domain's memory where strata keeps it and stop it: the next
    /// `domain start` restores it.
    #[command(name = "managedsave")]
    ManagedSave(DomainManagedSaveArgs),
    /// Discard a domain's managed save (its next start boots afresh).
    #[command(name = "managedsave-remove")]
    ManagedSaveRemove(DomainNameArgs),
    /// Print a domain's state: running, paused or shut off.
    Domstate(DomstateArgs),
    /// Print a domain's XML.
    Dumpxml(DomainDumpxmlArgs),
    /// Remove a domain's definition (its disk files stay).
    Undefine(DomainUndefineArgs),
}

/// `strata domain define`.
#[derive(Debug, Args)]
pub struct DomainDefineArgs {
    /// The domain XML file.
    pub file: PathBuf,
}

/// `strata domain dumpxml`.
#[derive(Debug, Args)]
pub struct DomainDumpxmlArgs {
    /// The domain.
    pub domain: String,
    /// Include secrets (passwords) in the XML.
    #[arg(long)]
    pub security_info: bool,
}

/// `strata domain undefine`.
#[derive(Debug, Args)]
pub struct DomainUndefineArgs {
    /// The domain.
    pub domain: String,
    /// Also drop the metadata of its snapshots (images are not touched).
    #[arg(long)]
    pub snapshots_metadata: bool,
    /// Also drop the metadata of its checkpoints (bitmaps are not touched).
    #[arg(long)]
    pub checkpoints_metadata: bool,
    /// Also remove its managed save.
    #[arg(long)]
    pub managed_save: bool,
}

/// Image formats accepted on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A plain file.
    Raw,
}

impl FormatArg {
    /// The engine's format.
    pub fn format(self) -> strata_image::Format {
        match self {
            FormatArg::Qcow2 => strata_image::Format::Qcow2,
            FormatArg::Raw => strata_image::Format::Raw,
        }
    }
}

/// `strata img` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Create a new image.
    Create(CreateArgs),
    /// Show what an image is (qemu-img info).
    Info(InfoArgs),
    /// Check an image's metadata and optionally repair it.
    Check(CheckArgs),
    /// Show how guest offsets map to files of the chain (qemu-img map).
    Map(MapArgs),
    /// Read guest data through the backing chain.
    Read(ReadArgs),
    /// Write guest data into an image.
    Write(WriteArgs),
    /// Copy an image into a new one, changing format or compressing.
    Convert(ConvertArgs),
    /// Tell whether two images show the guest the same bytes.
    Compare(CompareArgs),
    /// Merge an image into its backing file.
    Commit(CommitArgs),
    /// Change an image's backing file.
    Rebase(RebaseArgs),
    /// Change an image's virtual size.
    Resize(ResizeArgs),
    /// Time many reads or writes (qemu-img bench).
    Bench(BenchArgs),
    /// Create, list, apply or delete internal snapshots (qemu-img snapshot).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List and read persistent dirty bitmaps (qemu-img bitmap).
    #[command(subcommand)]
    Bitmap(BitmapCommand),
    /// Run a group of snapshot actions on many images, all or nothing.
    Transaction(TransactionArgs),
}

/// `strata img transaction`.
#[derive(Debug, Args)]
pub struct TransactionArgs {
    /// JSON array of actions ("-" for stdin); relative paths are relative
    /// to the current directory.
    #[arg(long = "file", value_name = "ACTIONS.json")]
    pub file: PathBuf,
}

/// `strata img snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Record the image's current contents as a new internal snapshot.
    Create(SnapshotCreateArgs),
    /// List the internal snapshots (qemu-img snapshot -l).
    List(SnapshotListArgs),
    /// Revert the image to an internal snapshot (its current contents are lost).
    Apply(SnapshotNameArgs),
    /// Delete an internal snapshot.
    Delete(SnapshotNameArgs),
}

/// `strata img snapshot create`.
#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// The qcow2 image.
    pub file: PathBuf,
    /// Name of the new snapshot (default: the time, YYYYMMDDhhmmss).
    pub name: Option<String>,
}

/// `strata img snapshot list`.
#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The qcow2 image.
    pub file: PathBuf,
}

/// `strata img snapshot apply` and `strata img snapshot delete`.
#[derive(Debug, Args)]
pub struct SnapshotNameArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// The qcow2 image.
    pub file: PathBuf,
    /// The snapshot's name, or its ID.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `strata img bitmap` subcommands.
#[derive(Debug, Subcommand)]
pub enum BitmapCommand {
    /// Add a persistent dirty bitmap .
    Add(BitmapAddArgs),
    /// Remove a bitmap .
    Remove(BitmapNameArgs),
    /// Mark every cluster of a bitmap clean .
    Clear(BitmapNameArgs),
    /// Make a bitmap track writes .
    Enable(BitmapNameArgs),
    /// Make a bitmap stop tracking writes .
    Disable(BitmapNameArgs),
    /// Add the dirty bits of another bitmap into one .
    Merge(BitmapMergeArgs),
    /// List the persistent bitmaps: name, granularity, flags.
    List(BitmapListArgs),
    /// Print the dirty extents of one bitmap, in guest bytes.
    Dump(BitmapDumpArgs),
}

/// `strata img bitmap add`.
#[derive(Debug, Args)]
pub struct BitmapAddArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Bytes of guest data one bit covers (a power of two, 512 to 2G).
    #[arg(short = 'g', long, value_name = "GRANULARITY", value_parser = parse_size)]
    pub granularity: Option<u64>,
    /// Create the bitmap disabled (not tracking writes).
    #[arg(long)]
    pub disabled: bool,
    /// The qcow2 image.
    pub file: PathBuf,
    /// Name of the new bitmap.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `strata img bitmap remove|clear|enable|disable`.
#[derive(Debug, Args)]
pub struct BitmapNameArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// The qcow2 image.
    pub file: PathBuf,
    /// The bitmap's name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `strata img bitmap merge`.
#[derive(Debug, Args)]
pub struct BitmapMergeArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// The bitmap whose dirty bits are added.
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// The image holding the source bitmap (default: FILE).
    #[arg(long, value_name = "FILE")]
    pub source_file: Option<PathBuf>,
    /// The qcow2 image.
    pub file: PathBuf,
    /// The bitmap that receives the dirty bits.
    #[arg(value_name = "TARGET")]
    pub target: String,
}

/// `strata img bitmap list`.
#[derive(Debug, Args)]
pub struct BitmapListArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The qcow2 image.
    pub file: PathBuf,
}

/// `strata img bitmap dump`.
#[derive(Debug, Args)]
pub struct BitmapDumpArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The qcow2 image.
    pub file: PathBuf,
    /// The bitmap's name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `strata img bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Write instead of read.
    #[arg(short = 'w')]
    pub write: bool,
    /// Bytes per request.
    #[arg(short = 's', long = "size", value_name = "SIZE", value_parser = parse_size, default_value = "4096")]
    pub size: u64,
    /// Number of requests.
    #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 75000)]
    pub count: u64,
    /// Requests in flight at once (one thread each).
    #[arg(short = 'd', long = "depth", value_name = "N", default_value_t = 1)]
    pub depth: u64,
    /// Offset of the first request.
    #[arg(short = 'o', long = "offset", value_name = "N", value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Distance between request offsets (default: the request size).
    #[arg(short = 'S', long = "step", value_name = "N", value_parser = parse_size)]
    pub step: Option<u64>,
    /// Random aligned offsets from this xorshift64 seed (instead of -o/-S).
    #[arg(long, value_name = "SEED", conflicts_with_all = ["offset", "step"])]
    pub random: Option<u64>,
    /// Byte written by write requests.
    #[arg(long, value_name = "BYTE", value_parser = parse_byte, default_value = "0")]
    pub pattern: u8,
    /// Flush after every N write requests (0: only at the end).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub flush_interval: u64,
    /// The image.
    pub file: PathBuf,
}

/// `strata img create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Format of the new image.
    #[arg(short = 'f', value_enum, value_name = "FMT", default_value_t = FormatArg::Qcow2)]
    pub format: FormatArg,
    /// Backing file (relative names are relative to FILE's folder).
    #[arg(short = 'b', value_name = "BACKING")]
    pub backing: Option<String>,
    /// Format of the backing file (probed when not given).
    #[arg(short = 'F', value_enum, value_name = "BACKING_FMT")]
    pub backing_format: Option<FormatArg>,
    /// Format options: OPT=VALUE[,OPT=VALUE…] (repeatable).
    #[arg(short = 'o', value_name = "OPT[,OPT…]")]
    pub options: Vec<String>,
    /// The image file to create.
    pub file: PathBuf,
    /// Virtual size (defaults to the backing image's size).
    #[arg(value_parser = parse_size)]
    pub size: Option<u64>,
}

/// `strata img info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Show every image of the backing chain.
    #[arg(long)]
    pub backing_chain: bool,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// What `check -r` may repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepairArg {
    /// Leaked clusters only.
    Leaks,
    /// Leaks and corruptions.
    All,
}

/// `strata img check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Repair what was found.
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairArg>,
    /// The image.
    pub file: PathBuf,
}

/// `strata img map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// First guest offset to map.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub start_offset: Option<u64>,
    /// Most bytes to map.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub max_length: Option<u64>,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// `strata img read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Guest offset to read from.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub offset: u64,
    /// Bytes to read.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub length: u64,
    /// Write the bytes to this file instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// Open without taking locks (the image may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// `strata img write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Guest offset to write at.
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub offset: u64,
    /// Write the contents of this file ("-" for stdin).
    #[arg(long, value_name = "SRC", conflicts_with_all = ["pattern", "zero"])]
    pub from: Option<PathBuf>,
    /// Write this byte, --length times.
    #[arg(long, value_name = "BYTE", value_parser = parse_byte, conflicts_with = "zero")]
    pub pattern: Option<u8>,
    /// Make the range read as zeros.
    #[arg(long)]
    pub zero: bool,
    /// With --zero: allow the image to free the space.
    #[arg(long, requires = "zero")]
    pub unmap: bool,
    /// Bytes to write (with --pattern or --zero; with --from, at most this many).
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub length: Option<u64>,
    /// The image.
    pub file: PathBuf,
}

/// `strata img convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Format of the source (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Format of the target.
    #[arg(short = 'O', value_enum, value_name = "FMT", default_value_t = FormatArg::Raw)]
    pub output_format: FormatArg,
    /// Compress the target's clusters (qcow2 only).
    #[arg(short = 'c')]
    pub compress: bool,
    /// Target format options, as for create (repeatable).
    #[arg(short = 'o', value_name = "OPT[,OPT…]")]
    pub options: Vec<String>,
    /// Copy this internal snapshot of the source (name or ID) instead of its current contents.
    #[arg(short = 's', value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// The target's backing file: copy only what the source's top image holds.
    #[arg(short = 'B', value_name = "BACKING")]
    pub backing: Option<String>,
    /// Format of the target's backing file (probed when not given).
    #[arg(short = 'F', value_enum, value_name = "BACKING_FMT")]
    pub backing_format: Option<FormatArg>,
    /// Copy only the clusters dirty in this bitmap.
    #[arg(long, value_name = "NAME")]
    pub bitmap: Option<String>,
    /// The source image.
    pub src: PathBuf,
    /// The target image (must not exist).
    pub dst: PathBuf,
}

/// `strata img compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Format of the first image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format_a: Option<FormatArg>,
    /// Format of the second image (probed when not given).
    #[arg(short = 'F', value_enum, value_name = "FMT")]
    pub format_b: Option<FormatArg>,
    /// Open without taking locks (the images may be in use).
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
}

/// `strata img commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Commit into this image of the chain (implies -d).
    #[arg(short = 'b', value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// Leave FILE as it is (by default it is emptied).
    #[arg(short = 'd')]
    pub keep: bool,
    /// The top image.
    pub file: PathBuf,
}

/// `strata img rebase`.
#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// Only rewrite the header (the new backing must show the same data).
    #[arg(short = 'u')]
    pub unsafe_header_only: bool,
    /// The new backing file ("" for none); relative to FILE's folder.
    #[arg(short = 'b', value_name = "NEWBACKING")]
    pub backing: String,
    /// Format of the new backing file (probed when not given).
    #[arg(short = 'F', value_enum, value_name = "FMT")]
    pub backing_format: Option<FormatArg>,
    /// The image to rebase.
    pub file: PathBuf,
}

/// `strata img resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// Format of the image (probed when not given).
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<FormatArg>,
    /// Allow making the image smaller (data past the new end is lost).
    #[arg(long)]
    pub shrink: bool,
    /// The image.
    pub file: PathBuf,
    /// New size, or +SIZE / -SIZE relative to the current one.
    #[arg(value_name = "[+|-]SIZE", allow_hyphen_values = true, value_parser = parse_size_change)]
    pub size: SizeChange,
}
