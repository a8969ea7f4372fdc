//! All-or-nothing groups of snapshot actions over many images, as QEMU's
//! `transaction` command groups them (`../shared/specs/qapi-transaction.json`):
//! every action is validated before anything is written, then every member
//! prepares, then every member commits; if anything fails, every prepared or
//! committed member is undone and every image is exactly as before — no new
//! overlay file, no snapshot entry, no leaked cluster.
//!
//! Internal snapshot changes are shadow commits (see `qcow2/shadow.rs`):
//! prepare writes everything to fresh clusters, commit is one header write,
//! and nothing the old state used is released until every member committed,
//! so a committed member can still be switched back. External snapshots
//! create their overlay at prepare and delete it on abort.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::capability::{Bitmaps, Snapshots};
use crate::chain::{self, ChainOptions};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::ops::external;
use crate::qcow2::{BitmapEdit, PendingChange, SnapshotChange};

mod fault;

use fault::injected;
#[cfg(feature = "test-utils")]
pub use fault::{Fault, Phase};
#[cfg(not(feature = "test-utils"))]
use fault::{Fault, Phase};

/// Dirty-bitmap actions (QEMU's `block-dirty-bitmap-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapOp {
    /// block-dirty-bitmap-add.
    Add,
    /// block-dirty-bitmap-remove.
    Remove,
    /// block-dirty-bitmap-enable.
    Enable,
    /// block-dirty-bitmap-disable.
    Disable,
    /// block-dirty-bitmap-clear.
    Clear,
    /// block-dirty-bitmap-merge.
    Merge,
}

/// A bitmap merged into another: in the same image, or in another file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapSource {
    /// The image holding it (`None`: the target's image).
    pub file: Option<PathBuf>,
    /// Its name.
    pub name: String,
}

/// One action of a transaction.
#[derive(Clone, Debug)]
pub enum Action {
    /// Create an internal snapshot (`None`: named after the time).
    SnapshotInternal {
        /// The image.
        file: PathBuf,
        /// Snapshot name.
        name: Option<String>,
    },
    /// Create an external snapshot: a new qcow2 overlay over the image. The
    /// image's enabled bitmaps are disabled and the overlay gets fresh
    /// enabled bitmaps of the same names, so changes since a bitmap was
    /// made remain answerable across the layers.
    SnapshotExternal {
        /// The image that becomes the backing file.
        file: PathBuf,
        /// Overlay path; generated from `name` (or the time) when `None`.
        overlay: Option<PathBuf>,
        /// Snapshot name, used to generate the overlay path.
        name: Option<String>,
        /// Use an existing overlay (it must have `file` as its backing file).
        reuse: bool,
    },
    /// Delete an internal snapshot.
    SnapshotDeleteInternal {
        /// The image.
        file: PathBuf,
        /// Snapshot name or ID.
        name: String,
    },
    /// Apply (revert to) an internal snapshot: the image's current state
    /// becomes the snapshot's. (An extension: QEMU's transaction has no
    /// such action.)
    SnapshotApplyInternal {
        /// The image.
        file: PathBuf,
        /// Snapshot name or ID.
        name: String,
    },
    /// A dirty-bitmap action.
    Bitmap {
        /// Which one.
        op: BitmapOp,
        /// The image.
        file: PathBuf,
        /// Bitmap name (the target of a merge).
        name: String,
        /// Granularity of a new bitmap (add).
        granularity: Option<u64>,
        /// A new bitmap starts disabled (add).
        disabled: bool,
        /// Bitmaps merged into `name` (merge).
        sources: Vec<BitmapSource>,
    },
}

impl Action {
    /// A bitmap action with no optional fields.
    pub fn bitmap(op: BitmapOp, file: impl Into<PathBuf>, name: impl Into<String>) -> Action {
        Action::Bitmap {
            op,
            file: file.into(),
            name: name.into(),
            granularity: None,
            disabled: false,
            sources: Vec::new(),
        }
    }
}

impl Action {
    /// The action's name in the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SnapshotInternal { .. } => "snapshot-internal",
            Action::SnapshotExternal { .. } => "snapshot-external",
            Action::SnapshotDeleteInternal { .. } => "snapshot-delete-internal",
            Action::SnapshotApplyInternal { .. } => "snapshot-apply-internal",
            Action::Bitmap { op, .. } => match op {
                BitmapOp::Add => "bitmap-add",
                BitmapOp::Remove => "bitmap-remove",
                BitmapOp::Enable => "bitmap-enable",
                BitmapOp::Disable => "bitmap-disable",
                BitmapOp::Clear => "bitmap-clear",
                BitmapOp::Merge => "bitmap-merge",
            },
        }
    }

    /// The image the action is on.
    pub fn file(&self) -> &Path {
        match self {
            Action::SnapshotInternal { file, .. }
            | Action::SnapshotExternal { file, .. }
            | Action::SnapshotDeleteInternal { file, .. }
            | Action::SnapshotApplyInternal { file, .. }
            | Action::Bitmap { file, .. } => file,
        }
    }
}

/// What one action did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An internal snapshot was created or deleted (its name and ID).
    Internal {
        /// Snapshot name.
        name: String,
        /// Snapshot ID.
        id: String,
    },
    /// An external snapshot: the overlay that now takes new writes.
    External {
        /// Overlay path.
        overlay: PathBuf,
    },
    /// A bitmap action took effect.
    Bitmap {
        /// The bitmap's name.
        name: String,
    },
}

pub(crate) fn action_error(i: usize, a: &Action, e: impl std::fmt::Display) -> Error {
    Error::invalid(
        &a.file().display().to_string(),
        format!("action {} ({}): {e}", i + 1, a.kind()),
    )
}

/// The changes planned for one image: at most one internal snapshot change
/// and any number of bitmap edits, prepared as one shadow commit.
#[derive(Debug, Default)]
struct ImagePlan {
    snapshot: Option<SnapshotChange>,
    edits: Vec<BitmapEdit>,
    /// The actions this plan carries out (in order).
    actions: Vec<usize>,
}

/// One unit of work, in the order the actions first name it.
#[derive(Debug)]
enum Unit {
    /// Changes inside one image (by canonical path).
    Image(PathBuf, ImagePlan),
    /// An external snapshot (the action's index), with the bitmaps its
    /// overlay gets: `(name, granularity)`.
    External(usize, Vec<(String, u64)>),
}

/// One prepared unit.
enum Member<'a> {
    Image {
        pending: Box<PendingChange<'a>>,
        actions: Vec<usize>,
    },
    External {
        action: usize,
        overlay: PathBuf,
        created: bool,
        /// Bitmaps added to a reused overlay (removed again on abort).
        added: Vec<String>,
    },
}

impl Member<'_> {
    /// The first action this member carries out.
    fn first_action(&self) -> usize {
        match self {
            Member::Image { actions, .. } => actions[0],
            Member::External { action, .. } => *action,
        }
    }

    fn has_action(&self, i: usize) -> bool {
        match self {
            Member::Image { actions, .. } => actions.contains(&i),
            Member::External { action, .. } => *action == i,
        }
    }

    fn commit(&mut self) -> Result<()> {
        match self {
            Member::Image { pending, .. } => pending.commit(),
            Member::External { .. } => Ok(()),
        }
    }

    fn abort(self) -> Result<()> {
        match self {
            Member::Image { pending, .. } => pending.abort(),
            Member::External {
                overlay,
                created,
                added,
                ..
            } => {
                if created {
                    std::fs::remove_file(&overlay)
                        .map_err(|e| Error::io(&overlay.display().to_string(), "remove", 0, e))?;
                } else if !added.is_empty() {
                    let img = open_bitmaps_only(&overlay)?;
                    for name in added {
                        bitmaps_of(&img)?.bitmap_edits(&[BitmapEdit::Remove(name)])?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Releases what the old states used; returns each action's outcome.
    fn finish(self, actions: &[Action], out: &mut [Option<Outcome>]) -> Result<()> {
        match self {
            Member::Image {
                pending,
                actions: mine,
            } => {
                let info = pending.info().cloned();
                pending.finish()?;
                for i in mine {
                    out[i] = Some(match &actions[i] {
                        Action::Bitmap { name, .. } => Outcome::Bitmap { name: name.clone() },
                        Action::SnapshotExternal { .. } => continue,
                        _ => {
                            let info = info.clone().expect("a snapshot change");
                            Outcome::Internal {
                                name: info.name,
                                id: info.id,
                            }
                        }
                    });
                }
            }
            Member::External {
                action, overlay, ..
            } => out[action] = Some(Outcome::External { overlay }),
        }
        Ok(())
    }
}

fn open_bitmaps_only(path: &Path) -> Result<Arc<dyn Image>> {
    chain::open(
        path,
        &ChainOptions {
            writable: true,
            bitmaps_only: true,
            backing: false,
            ..Default::default()
        },
    )
}

/// Where every action's image lives, canonically, the open images, and
/// the plan.
struct Opened {
    images: HashMap<PathBuf, Arc<dyn Image>>,
    /// The overlay of each external action, decided once (a generated name
    /// comes from the clock and must not change between check and use).
    overlays: HashMap<usize, PathBuf>,
    /// Overlays the caller holds open already (made by
    /// [`prepare_overlay`] before the transaction), by action.
    held_overlays: HashMap<usize, Arc<dyn Image>>,
    units: Vec<Unit>,
}

fn is_internal(a: &Action) -> bool {
    matches!(
        a,
        Action::SnapshotInternal { .. }
            | Action::SnapshotDeleteInternal { .. }
            | Action::SnapshotApplyInternal { .. }
    )
}

/// Enabled bitmaps of an image: `(name, granularity)`.
fn enabled_bitmaps(img: &Arc<dyn Image>) -> Result<Vec<(String, u64)>> {
    match img.dirty_bitmaps() {
        Some(q) => Ok(q
            .bitmaps()?
            .into_iter()
            .filter(|b| b.enabled() && b.usable())
            .map(|b| (b.name, b.granularity))
            .collect()),
        None => Ok(Vec::new()),
    }
}

/// Checks everything that can be checked before writing: every file exists
/// and is not locked by another process, one image is never the target of
/// two internal changes or two external snapshots, snapshot names are new
/// (create) or present (delete), bitmap names are new (add) or present
/// (the rest) as the actions before leave them, merge sources exist,
/// overlays are new (or reusable), distinct, and not one of the images.
/// Returns the plan.
fn validate(actions: &[Action], held: &Held) -> Result<Opened> {
    if actions.is_empty() {
        return Err(Error::invalid("transaction", "no actions"));
    }
    let mut canonical = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let c = std::fs::canonicalize(a.file())
            .map_err(|e| action_error(i, a, format!("cannot open {}: {e}", a.file().display())))?;
        canonical.push(c);
    }
    // Open every image once: read-only to look, writable where it changes.
    let mut images: HashMap<PathBuf, Arc<dyn Image>> = HashMap::new();
    for (i, a) in actions.iter().enumerate() {
        let c = &canonical[i];
        if images.contains_key(c) {
            continue;
        }
        if let Some(img) = held.get(c) {
            images.insert(c.clone(), img.clone());
            continue;
        }
        let changes = |c: &PathBuf| {
            actions
                .iter()
                .zip(&canonical)
                .any(|(b, cb)| cb == c && !matches!(b, Action::SnapshotExternal { .. }))
        };
        // A writable open is for metadata changes only: no guest writes, so
        // no tracking to set up (which could rewrite bitmaps on open).
        let open = |writable| {
            chain::open(
                a.file(),
                &ChainOptions {
                    writable,
                    bitmaps_only: writable,
                    backing: false,
                    ..Default::default()
                },
            )
            .map_err(|e| action_error(i, a, e))
        };
        let mut img = open(changes(c))?;
        if !img.writable() && !enabled_bitmaps(&img)?.is_empty() {
            // An external snapshot disables this image's enabled bitmaps.
            drop(img);
            img = open(true)?;
        }
        images.insert(c.clone(), img);
    }
    let mut internal_on: HashMap<&PathBuf, usize> = HashMap::new();
    let mut external_on: HashMap<&PathBuf, usize> = HashMap::new();
    let mut overlays: Vec<PathBuf> = Vec::new();
    let mut overlay_of: HashMap<usize, PathBuf> = HashMap::new();
    let mut held_overlays: HashMap<usize, Arc<dyn Image>> = HashMap::new();
    let mut units: Vec<Unit> = Vec::new();
    // Bitmap names and enabled flags per image, as the actions so far leave them.
    let mut names: HashMap<PathBuf, Vec<(String, bool)>> = HashMap::new();
    for (i, a) in actions.iter().enumerate() {
        let c = &canonical[i];
        let img = &images[c];
        if is_internal(a) || matches!(a, Action::SnapshotExternal { .. }) {
            let seen = if is_internal(a) {
                &mut internal_on
            } else {
                &mut external_on
            };
            if let Some(j) = seen.insert(c, i) {
                return Err(action_error(
                    i,
                    a,
                    format!(
                        "the same image as action {} (one such change per image)",
                        j + 1
                    ),
                ));
            }
        }
        if !matches!(a, Action::SnapshotExternal { .. }) && img.transactional().is_none() {
            return Err(action_error(
                i,
                a,
                "internal snapshots and bitmaps need a qcow2 image",
            ));
        }
        if !names.contains_key(c) {
            let list = match img.dirty_bitmaps() {
                Some(q) => q
                    .bitmaps()?
                    .into_iter()
                    .map(|b| (b.name.clone(), b.enabled()))
                    .collect(),
                None => Vec::new(),
            };
            names.insert(c.clone(), list);
        }
        let plan_of = |units: &mut Vec<Unit>| -> usize {
            match units
                .iter()
                .position(|u| matches!(u, Unit::Image(p, _) if p == c))
            {
                Some(k) => k,
                None => {
                    units.push(Unit::Image(c.clone(), ImagePlan::default()));
                    units.len() - 1
                }
            }
        };
        match a {
            Action::SnapshotInternal { name, .. } => {
                if let Some(n) = name {
                    if snapshots_of(img)?.snapshots()?.iter().any(|s| &s.name == n) {
                        return Err(action_error(
                            i,
                            a,
                            format!("a snapshot named '{n}' already exists"),
                        ));
                    }
                }
                let k = plan_of(&mut units);
                if let Unit::Image(_, p) = &mut units[k] {
                    p.snapshot = Some(SnapshotChange::Create(name.clone()));
                    p.actions.push(i);
                }
            }
            Action::SnapshotDeleteInternal { name, .. }
            | Action::SnapshotApplyInternal { name, .. } => {
                if !snapshots_of(img)?
                    .snapshots()?
                    .iter()
                    .any(|s| &s.name == name || &s.id == name)
                {
                    return Err(action_error(i, a, format!("snapshot '{name}' not found")));
                }
                let k = plan_of(&mut units);
                if let Unit::Image(_, p) = &mut units[k] {
                    p.snapshot = Some(match a {
                        Action::SnapshotApplyInternal { .. } => SnapshotChange::Apply(name.clone()),
                        _ => SnapshotChange::Delete(name.clone()),
                    });
                    p.actions.push(i);
                }
            }
            Action::SnapshotExternal {
                file,
                overlay,
                name,
                reuse,
            } => {
                let path = overlay_path(file, overlay.as_deref(), name.as_deref());
                let held_overlay = held.get(&path).filter(|_| *reuse).cloned();
                if let Some(ov) = held_overlay {
                    // Made over this very image by its holder, and open.
                    held_overlays.insert(i, ov);
                } else if *reuse {
                    external::check_reusable(file, &path).map_err(|e| action_error(i, a, e))?;
                } else if path.exists() {
                    return Err(action_error(
                        i,
                        a,
                        format!(
                            "overlay {} already exists (reuse it with reuse-external)",
                            path.display()
                        ),
                    ));
                }
                let abs = absolute(&path);
                overlay_of.insert(i, path.clone());
                if overlays.contains(&abs) || canonical.contains(&abs) {
                    return Err(action_error(
                        i,
                        a,
                        format!("overlay {} is named twice", path.display()),
                    ));
                }
                overlays.push(abs);
                // The overlay tracks from now on what the image tracked.
                let enabled = enabled_bitmaps(img)?;
                if !enabled.is_empty() {
                    let k = plan_of(&mut units);
                    if let Unit::Image(_, p) = &mut units[k] {
                        for (n, _) in &enabled {
                            p.edits.push(BitmapEdit::SetEnabled(n.clone(), false));
                        }
                        p.actions.push(i);
                    }
                }
                units.push(Unit::External(i, enabled));
            }
            Action::Bitmap {
                op,
                name,
                granularity,
                disabled,
                sources,
                ..
            } => {
                let list = names.get_mut(c).expect("listed above");
                let at = list.iter().position(|(n, _)| n == name);
                match (op, at) {
                    (BitmapOp::Add, Some(_)) => {
                        return Err(action_error(
                            i,
                            a,
                            format!("a bitmap named '{name}' already exists"),
                        ))
                    }
                    (BitmapOp::Add, None) => list.push((name.clone(), !disabled)),
                    (_, None) => {
                        return Err(action_error(i, a, format!("bitmap '{name}' not found")))
                    }
                    (BitmapOp::Remove, Some(k)) => {
                        list.remove(k);
                    }
                    (BitmapOp::Enable, Some(k)) => list[k].1 = true,
                    (BitmapOp::Disable, Some(k)) => list[k].1 = false,
                    _ => {}
                }
                let edit = match op {
                    BitmapOp::Add => BitmapEdit::Add {
                        name: name.clone(),
                        granularity: *granularity,
                        enabled: !disabled,
                    },
                    BitmapOp::Remove => BitmapEdit::Remove(name.clone()),
                    BitmapOp::Enable => BitmapEdit::SetEnabled(name.clone(), true),
                    BitmapOp::Disable => BitmapEdit::SetEnabled(name.clone(), false),
                    BitmapOp::Clear => BitmapEdit::Clear(name.clone()),
                    BitmapOp::Merge => {
                        let mut extents = Vec::new();
                        for src in sources {
                            extents.extend(
                                source_extents(src, c, &images, &names)
                                    .map_err(|e| action_error(i, a, e))?,
                            );
                        }
                        BitmapEdit::Merge {
                            target: name.clone(),
                            extents,
                        }
                    }
                };
                let k = plan_of(&mut units);
                if let Unit::Image(_, p) = &mut units[k] {
                    p.edits.push(edit);
                    p.actions.push(i);
                }
            }
        }
    }
    Ok(Opened {
        images,
        overlays: overlay_of,
        held_overlays,
        units,
    })
}

/// The dirty extents of a merge source, as it is before the transaction.
fn source_extents(
    src: &BitmapSource,
    target_image: &Path,
    images: &HashMap<PathBuf, Arc<dyn Image>>,
    names: &HashMap<PathBuf, Vec<(String, bool)>>,
) -> Result<Vec<(u64, u64)>> {
    let canonical = match &src.file {
        Some(f) => std::fs::canonicalize(f)
            .map_err(|e| Error::io(&f.display().to_string(), "open", 0, e))?,
        None => target_image.to_path_buf(),
    };
    if canonical == target_image {
        let planned = names
            .get(target_image)
            .is_some_and(|l| l.iter().any(|(n, _)| n == &src.name));
        if !planned {
            return Err(Error::invalid(
                &target_image.display().to_string(),
                format!("merge source bitmap '{}' not found", src.name),
            ));
        }
    }
    let img = match images.get(&canonical) {
        Some(img) => img.clone(),
        None => chain::open(
            &canonical,
            &ChainOptions {
                backing: false,
                ..Default::default()
            },
        )?,
    };
    match img.dirty_bitmaps() {
        Some(q) => q.bitmap_dirty(&src.name),
        None => Err(Error::invalid(
            img.path(),
            "a merge source must be a bitmap of a qcow2 image",
        )),
    }
}

fn absolute(p: &Path) -> PathBuf {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(dir), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

fn snapshots_of(img: &Arc<dyn Image>) -> Result<&dyn Snapshots> {
    img.internal_snapshots()
        .ok_or_else(|| Error::unsupported(img.path(), "internal snapshots"))
}

fn bitmaps_of(img: &Arc<dyn Image>) -> Result<&dyn Bitmaps> {
    img.dirty_bitmaps()
        .ok_or_else(|| Error::unsupported(img.path(), "persistent bitmaps"))
}

/// The overlay an external action uses.
fn overlay_path(file: &Path, overlay: Option<&Path>, name: Option<&str>) -> PathBuf {
    match overlay {
        Some(p) => p.to_path_buf(),
        None => {
            let n = name.map(str::to_string).unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                secs.to_string()
            });
            external::default_overlay(file, &n)
        }
    }
}

/// Prepares one unit.
fn prepare<'a>(actions: &[Action], opened: &'a Opened, unit: &Unit) -> Result<Member<'a>> {
    match unit {
        Unit::Image(c, plan) => {
            let first = plan.actions[0];
            let img = &opened.images[c];
            let pending = img
                .transactional()
                .ok_or_else(|| Error::unsupported(img.path(), "metadata transactions"))
                .and_then(|t| t.prepare_change(plan.snapshot.clone(), &plan.edits))
                .map_err(|e| action_error(first, &actions[first], e))?;
            Ok(Member::Image {
                pending: Box::new(pending),
                actions: plan.actions.clone(),
            })
        }
        Unit::External(i, bitmaps) => {
            let a = &actions[*i];
            let Action::SnapshotExternal { file, reuse, .. } = a else {
                unreachable!("an external unit is an external action")
            };
            let img =
                &opened.images[&std::fs::canonicalize(file).map_err(|e| action_error(*i, a, e))?];
            let path = opened.overlays[i].clone();
            if !*reuse {
                external::create_overlay(file, img.format(), img.size(), &path)
                    .map_err(|e| action_error(*i, a, e))?;
            }
            let mut member = Member::External {
                action: *i,
                overlay: path.clone(),
                created: !*reuse,
                added: Vec::new(),
            };
            if !bitmaps.is_empty() {
                let added = (|| -> Result<Vec<String>> {
                    let ov = match opened.held_overlays.get(i) {
                        Some(ov) => ov.clone(),
                        None => open_bitmaps_only(&path)?,
                    };
                    let have: Vec<String> = bitmaps_of(&ov)?
                        .bitmaps()?
                        .into_iter()
                        .map(|b| b.name)
                        .collect();
                    let mut added = Vec::new();
                    for (name, gran) in bitmaps.iter().filter(|(n, _)| !have.contains(n)) {
                        bitmaps_of(&ov)?.bitmap_edits(&[BitmapEdit::Add {
                            name: name.clone(),
                            granularity: Some(*gran),
                            enabled: true,
                        }])?;
                        added.push(name.clone());
                    }
                    Ok(added)
                })();
                match added {
                    Ok(v) => {
                        if let Member::External { added, .. } = &mut member {
                            *added = v;
                        }
                    }
                    Err(e) => {
                        let _ = member.abort();
                        return Err(action_error(*i, a, e));
                    }
                }
            }
            Ok(member)
        }
    }
}

/// Images that are already open elsewhere (the disks a daemon serves to a
/// running guest), by file: a transaction works on these very images
/// instead of opening their files again, so that what they hold in memory
/// (bitmaps tracking the guest's writes, caches) stays the one truth.
/// Their holder keeps guest requests away while the transaction runs.
#[derive(Clone, Debug, Default)]
pub struct Held {
    images: HashMap<PathBuf, Arc<dyn Image>>,
}

impl Held {
    /// No image held: every file is opened by the transaction.
    pub fn none() -> Held {
        Held::default()
    }

    /// Holds `image`, the open image of file `path`.
    pub fn insert(&mut self, path: &Path, image: Arc<dyn Image>) -> Result<()> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::io(&path.display().to_string(), "resolve", 0, e))?;
        self.images.insert(canonical, image);
        Ok(())
    }

    /// The open image of `path`, if held (any spelling of the path).
    pub fn get(&self, path: &Path) -> Option<&Arc<dyn Image>> {
        if let Some(i) = self.images.get(path) {
            return Some(i);
        }
        let canonical = std::fs::canonicalize(path).ok()?;
        self.images.get(&canonical)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Every image held.
    pub fn images(&self) -> Vec<Arc<dyn Image>> {
        self.images.values().cloned().collect()
    }
}

/// Makes the overlay an external snapshot of the held image `below` (the
/// open image of `file`) will switch to, ahead of the transaction: created,
/// opened writable over `below`, and tracking with an empty enabled bitmap
/// each bitmap `below` tracks with, as the transaction would add them. Held
/// (under `overlay`) and reused by the transaction, it is neither opened
/// nor changed in it, which keeps file opens and writes out of the moment
/// the guest is held back. The caller removes the file if the snapshot
/// fails.
pub fn prepare_overlay(
    file: &Path,
    below: &Arc<dyn Image>,
    overlay: &Path,
) -> Result<Arc<dyn Image>> {
    external::create_overlay(file, below.format(), below.size(), overlay)?;
    let made = (|| -> Result<Arc<dyn Image>> {
        let opts = ChainOptions {
            writable: true,
            ..ChainOptions::default()
        };
        let ov = chain::open_over(overlay, below.clone(), &opts)?;
        let adds: Vec<BitmapEdit> = enabled_bitmaps(below)?
            .into_iter()
            .map(|(name, granularity)| BitmapEdit::Add {
                name,
                granularity: Some(granularity),
                enabled: true,
            })
            .collect();
        if !adds.is_empty() {
            bitmaps_of(&ov)?.bitmap_edits(&adds)?;
        }
        Ok(ov)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(overlay);
    }
    made
}

/// Runs `actions` all-or-nothing. Returns each action's outcome, in order.
pub fn run(actions: &[Action]) -> Result<Vec<Outcome>> {
    run_faulty(actions, &Held::none(), None)
}

/// Runs `actions` all-or-nothing as [`run`] does, on the `held` images
/// where they name one.
pub fn run_held(actions: &[Action], held: &Held) -> Result<Vec<Outcome>> {
    run_faulty(actions, held, None)
}

/// Runs `actions` all-or-nothing as [`run_held`] does, failing at `fault`
/// (tests of the all-or-nothing promise).
#[cfg(feature = "test-utils")]
pub fn run_with_fault(actions: &[Action], held: &Held, fault: Fault) -> Result<Vec<Outcome>> {
    run_faulty(actions, held, Some(fault))
}

fn run_faulty(actions: &[Action], held: &Held, fault: Option<Fault>) -> Result<Vec<Outcome>> {
    let opened = validate(actions, held)?;
    let mut members: Vec<Member<'_>> = Vec::new();
    let faulty = |m: &Member<'_>, phase| match fault {
        Some(f) if f.phase == phase && m.has_action(f.member) => {
            Some(injected(f.member, &actions[f.member], phase))
        }
        _ => None,
    };
    // Prepare.
    for unit in &opened.units {
        match prepare(actions, &opened, unit) {
            Ok(m) => {
                if let Some(e) = faulty(&m, Phase::Prepare) {
                    let _ = m.abort();
                    return Err(undo(members, e));
                }
                members.push(m);
            }
            Err(e) => return Err(undo(members, e)),
        }
    }
    // Commit.
    for k in 0..members.len() {
        let failed = match faulty(&members[k], Phase::Commit) {
            Some(e) => Err(e),
            None => {
                let first = members[k].first_action();
                members[k]
                    .commit()
                    .map_err(|e| action_error(first, &actions[first], e))
            }
        };
        if let Err(e) = failed {
            return Err(undo(members, e));
        }
        if let Some(e) = faulty(&members[k], Phase::Die) {
            // Killed here: what is committed stays, nothing else runs.
            std::mem::forget(members);
            return Err(e);
        }
    }
    // Finish every member even if one fails (they are all committed: the
    // new state stands everywhere; a failed finish only leaks clusters).
    let mut out: Vec<Option<Outcome>> = vec![None; actions.len()];
    let mut first_error = None;
    for m in members {
        if let Err(e) = m.finish(actions, &mut out) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every action belongs to a member"))
        .collect())
}

/// Aborts every member (newest first); returns the original error, with
/// any failure to undo appended.
fn undo(members: Vec<Member<'_>>, e: Error) -> Error {
    let mut problems = Vec::new();
    for m in members.into_iter().rev() {
        if let Err(u) = m.abort() {
            problems.push(u.to_string());
        }
    }
    if problems.is_empty() {
        e
    } else {
        Error::invalid(
            "transaction",
            format!("{e}; undoing also failed: {}", problems.join("; ")),
        )
    }
}
