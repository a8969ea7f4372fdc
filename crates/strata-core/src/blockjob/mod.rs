//! Block jobs on a running domain's disk, with virsh's names and
//! semantics (`blockcommit`, `blockpull`, `blockjob`):
//!
//! - **commit** of an intermediate layer: what the layers from `top` down
//!   to `base` hold is copied into `base` while the guest writes above;
//!   then, with the guest's requests held back for an instant, the layer
//!   above `top` is re-pointed at `base` (on disk and in the chain the
//!   daemon serves). The job completes by itself.
//! - **active commit** (`--active`): `top` is the image the guest writes
//!   to. Its data is copied into `base` while a [`Tracked`] filter records
//!   what the guest writes meanwhile, copied again until little is left:
//!   the job is then *ready*. The pivot (`--pivot`, or `blockjob --pivot`)
//!   copies the rest with the guest held back, merges the top's bitmaps
//!   into `base` (those it tracked with keep tracking there) and serves
//!   `base` from then on; the domain's definition names it. `--abort`
//!   serves the top as before.
//! - **pull**: what the backing files down to `base` (all of them without
//!   one) hold is copied into the image the guest writes to, never over
//!   what the guest writes meanwhile; then that image is re-pointed at
//!   `base` (or made standalone), their bitmaps merged into it.
//!
//! Nothing a job does before its final instant changes what any view
//! reads: `base` only gets data the layers above it shadow, and a commit
//! is refused when something else reads `base` other than through `top`
//! (an external snapshot's image, another chain). A job cut short — by
//! `--abort`, a failure, or a crash of the daemon — leaves the chain as it
//! was, readable and equal to what the guest sees.

mod chain;
mod finish;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_image::jobs::{self, Control, Tracked};
use strata_image::Image;

use crate::error::{Error, Result};
use crate::live::Disks;
use crate::store::Store;
pub use chain::Layers;
pub use finish::{complete_all, complete_under};

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An intermediate layer committed into a lower one.
    Commit,
    /// The active layer committed into a lower one (two phases).
    ActiveCommit,
    /// Backing files streamed into the active layer.
    Pull,
}

impl Kind {
    /// virsh's name for the job (`blockjob --info`).
    pub fn shown(self) -> &'static str {
        match self {
            Kind::Commit => "Block Commit",
            Kind::ActiveCommit => "Active Block Commit",
            Kind::Pull => "Block Pull",
        }
    }
}

/// `blockcommit` / `blockpull` as asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockRequest {
    /// The disk (its target, e.g. `vda`, or its image file).
    pub disk: String,
    /// A pull instead of a commit.
    pub pull: bool,
    /// The top layer of a commit (default: the active layer).
    pub top: Option<PathBuf>,
    /// The base: a commit's destination (default: the top's backing
    /// file), or the image a pull keeps as backing file (default: none).
    pub base: Option<PathBuf>,
    /// Allows the active layer as a commit's top (virsh `--active`).
    pub active: bool,
    /// Bytes per second (0: no limit).
    pub bandwidth: u64,
}

/// A block job under way on one disk (see the module).
pub struct BlockJob {
    /// The disk's target.
    pub disk: String,
    /// What the job does.
    pub kind: Kind,
    /// The top layer's file (a commit), or the active layer's (a pull).
    pub top_file: PathBuf,
    /// The base's file; `None` for a pull that keeps no backing file.
    pub base_file: Option<PathBuf>,
    /// Progress, cancel and bandwidth.
    pub control: Arc<Control>,
    layers: Layers,
    /// Depth of `top` and of `base` in `layers` (0: the active layer;
    /// for a pull without base, the chain's length).
    top_depth: u32,
    base_depth: u32,
    /// A writable handle of the base (commits).
    base_rw: Option<Arc<dyn Image>>,
    /// In front of the active layer (active commit, pull).
    tracked: Option<Arc<Tracked>>,
}

impl std::fmt::Debug for BlockJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockJob")
            .field("disk", &self.disk)
            .field("kind", &self.kind)
            .field("top", &self.top_file)
            .field("base", &self.base_file)
            .finish()
    }
}

/// Starts the job `req` asks for on a disk of running domain `domain`
/// (served as `disks`): checks it, opens what it writes, and for an
/// active commit or a pull puts the tracking filter in front of the disk.
/// The copy itself is [`BlockJob::run`].
pub fn begin(
    store: &Store,
    domain: &str,
    req: &BlockRequest,
    disks: &dyn Disks,
) -> Result<BlockJob> {
    begin_leaving(store, domain, req, disks, None)
}

/// [`begin`], where snapshot `leaving` (`(domain, snapshot)`) of the
/// metadata does not count as reading the base: it is being deleted, and
/// the merge it asks for was found safe without it.
pub(crate) fn begin_leaving(
    store: &Store,
    domain: &str,
    req: &BlockRequest,
    disks: &dyn Disks,
    leaving: Option<(&str, &str)>,
) -> Result<BlockJob> {
    let what = format!(
        "domain '{domain}': {} of disk '{}'",
        if req.pull { "blockpull" } else { "blockcommit" },
        req.disk
    );
    if !disks.live() {
        return Err(Error::invalid(&what, "the domain is not running"));
    }
    let dom = store.domain(domain)?;
    let disk = dom
        .disks()
        .into_iter()
        .find(|d| {
            d.target == req.disk || d.source.as_deref() == Some(std::path::Path::new(&req.disk))
        })
        .ok_or_else(|| Error::invalid(&what, "no such disk"))?;
    let source = disk
        .source
        .clone()
        .ok_or_else(|| Error::invalid(&what, "the disk has no image file"))?;
    let held = disks.held();
    let served = held
        .get(&source)
        .cloned()
        .ok_or_else(|| Error::invalid(&what, "the disk is not served by this daemon"))?;
    let layers = Layers::of(served);
    let (kind, top_depth, base_depth) = if req.pull {
        if req.top.is_some() {
            return Err(Error::invalid(
                &what,
                "blockpull has no --top: it pulls into the active layer",
            ));
        }
        let base_depth = match &req.base {
            Some(b) => layers.depth_of(b, &what, "--base")?,
            None => layers.len(),
        };
        if base_depth == 0 {
            return Err(Error::invalid(&what, "--base is the active layer itself"));
        }
        if base_depth == 1 {
            return Err(Error::invalid(
                &what,
                "nothing to pull: --base is already the backing file",
            ));
        }
        (Kind::Pull, 0, base_depth)
    } else {
        let top_depth = match &req.top {
            Some(t) => layers.depth_of(t, &what, "--top")?,
            None => 0,
        };
        if top_depth == 0 && !req.active {
            return Err(Error::invalid(
                &what,
                "the top is the active layer: an active commit needs --active",
            ));
        }
        let base_depth = match &req.base {
            Some(b) => layers.depth_of(b, &what, "--base")?,
            None => top_depth + 1,
        };
        if base_depth >= layers.len() {
            return Err(Error::invalid(
                &what,
                format!(
                    "{} has no backing file to commit into",
                    layers.file(top_depth).display()
                ),
            ));
        }
        if base_depth <= top_depth {
            return Err(Error::invalid(
                &what,
                "--base must be below --top in the chain",
            ));
        }
        chain::refuse_if_base_read_elsewhere(
            store, domain, &layers, top_depth, base_depth, &what, leaving,
        )?;
        let kind = if top_depth == 0 {
            Kind::ActiveCommit
        } else {
            Kind::Commit
        };
        (kind, top_depth, base_depth)
    };
    let base_rw = match kind {
        Kind::Pull => None,
        _ => Some(layers.open_writable(base_depth, &what)?),
    };
    let tracked = match kind {
        Kind::Commit => None,
        _ => {
            let t = Arc::new(Tracked::new(layers.get(0).clone(), kind == Kind::Pull));
            let mut q = disks.hold()?;
            q.switch(&disk.target, t.clone())?;
            Some(t)
        }
    };
    let job = BlockJob {
        disk: disk.target.clone(),
        kind,
        top_file: layers.file(top_depth),
        base_file: (base_depth < layers.len()).then(|| layers.file(base_depth)),
        control: Arc::new(Control::new(req.bandwidth)),
        layers,
        top_depth,
        base_depth,
        base_rw,
        tracked,
    };
    tracing::info!(disk = %job.disk, kind = ?job.kind, top = %job.top_file.display(), base = ?job.base_file, "block job begins");
    Ok(job)
}

/// What an active commit leaves to copy at its pivot, with the guest held
/// back: before it, passes over what the guest wrote (at full speed) go on
/// until less is left (or [`CATCH_UP_PASSES`] were made).
pub const PIVOT_BELOW: u64 = 4 << 20;

/// The most passes an active commit makes to catch up before its pivot.
pub const CATCH_UP_PASSES: usize = 8;

impl BlockJob {
    /// The copy (blocking; [`Control::cancel`] stops it): for a commit,
    /// the first pass, then for an active one a pass over what the guest
    /// wrote meanwhile (it is then ready, and [`BlockJob::converge`] keeps
    /// it close); for a pull, the stream.
    pub fn run(&self) -> Result<()> {
        let ctl = &self.control;
        match self.kind {
            Kind::Pull => {
                let t = self.tracked.as_ref().expect("a pull tracks");
                jobs::stream(t, self.base_depth, ctl)?;
            }
            Kind::Commit | Kind::ActiveCommit => {
                let base = self.base_rw.as_ref().expect("a commit opens its base");
                let top = self.layers.get(self.top_depth);
                jobs::copy_above(
                    top.as_ref(),
                    self.base_depth - self.top_depth,
                    base.as_ref(),
                    ctl,
                )?;
                if self.kind == Kind::ActiveCommit {
                    self.converge()?;
                }
            }
        }
        Ok(())
    }

    /// An active commit: copies what the guest wrote since the last pass;
    /// returns what it wrote during this one.
    pub fn converge(&self) -> Result<u64> {
        let (Some(t), Some(base)) = (&self.tracked, &self.base_rw) else {
            return Ok(0);
        };
        let dirty = t.take_dirty();
        jobs::copy_ranges(t.inner().as_ref(), &dirty, base.as_ref(), &self.control)?;
        Ok(t.dirty_bytes())
    }

    /// True when the job waits for a pivot once copied (an active commit).
    pub fn two_phase(&self) -> bool {
        self.kind == Kind::ActiveCommit
    }
}
