//! Merging away an external snapshot's overlay when the snapshot is deleted
//! with its disks (as libvirt 9.0+ does): the one image above the
//! snapshot's image is committed into it, what was above that image is
//! re-pointed at the merged one, and the overlay goes.
//!
//! A merge changes what the snapshot's image reads, so it is done only
//! when every view that passes through that image also passes through the
//! overlay — then none of them changes:
//! - nothing else needs the image's own contents (no current disk, no
//!   other external snapshot);
//! - exactly one needed image has it as backing file (the overlay); two
//!   would be two branches (after a revert) that cannot both be merged;
//! - the overlay holds no internal snapshots (they read through the image
//!   as it is), and strata made it (a user's file is not deleted);
//! - both are qcow2, so the image can be guarded.
//!
//! Otherwise the files stay as they are and only the metadata goes; no
//! data of another snapshot or of the current state is ever touched.
//!
//! All or nothing: before committing, each image gets a guard internal
//! snapshot; if anything fails, the guards are applied back (and the
//! re-pointed images pointed back), so the images read as before.

use std::path::{Path, PathBuf};
use strata_image::transaction::Held;

use strata_image::ops::{commit, no_progress, CommitOptions};
use strata_image::transaction::{self, Action, BitmapOp, BitmapSource};
use strata_image::{ChainOptions, Format, Image};

use crate::error::{Error, Result};
use crate::refs::{canon, Graph, Need};

/// One disk's planned merge.
#[derive(Clone, Debug)]
pub(crate) struct Merge {
    /// Disk target.
    pub disk: String,
    /// The snapshot's image, as the metadata names it (merged into).
    pub base: PathBuf,
    /// The overlay merged away (canonical).
    pub top: PathBuf,
    /// Needed images whose backing file is the overlay (re-pointed).
    pub above: Vec<PathBuf>,
    /// The overlay is a disk's current image.
    pub top_active: bool,
}

/// What the merge planner looks at.
pub(crate) struct World<'a> {
    /// The backing edges.
    pub graph: &'a Graph,
    /// Roots without the snapshot being deleted.
    pub roots: &'a [(PathBuf, Need)],
    /// Files those roots need.
    pub needed: &'a std::collections::HashSet<PathBuf>,
    /// Files strata made for the domain (canonical).
    pub made: &'a [PathBuf],
}

/// Opens one image file alone (no backing chain, no lock) for `f`.
fn with_layer<T>(file: &Path, f: impl FnOnce(&dyn Image) -> strata_image::Result<T>) -> Result<T> {
    let img = strata_image::open(
        file,
        &ChainOptions {
            backing: false,
            lock: false,
            ..Default::default()
        },
    )?;
    Ok(f(img.as_ref())?)
}

/// Plans the merge of disk `disk`, whose image at snapshot time was `base`;
/// `None` (with the reason logged) when the files must stay as they are.
pub(crate) fn plan(w: &World<'_>, disk: &str, base: &Path) -> Result<Option<Merge>> {
    let b = canon(base);
    let keep = |why: String| {
        tracing::info!(disk = %disk, reason = %why, "its files stay as they are");
        Ok(None)
    };
    if !w.needed.contains(&b) {
        return keep(format!(
            "nothing else needs {}, which goes if strata made it",
            base.display()
        ));
    }
    if w.roots.iter().any(|(r, n)| *r == b && *n == Need::Contents) {
        return keep(format!("{} is still needed as it is", base.display()));
    }
    let kids: Vec<&PathBuf> = w
        .needed
        .iter()
        .filter(|f| w.graph.backing_of(f) == Some(&b))
        .collect();
    let [top] = kids.as_slice() else {
        return keep(format!(
            "{} is the backing file of {} images",
            base.display(),
            kids.len()
        ));
    };
    let top = (*top).clone();
    if !w.made.contains(&top) {
        return keep(format!("{} was not made by strata", top.display()));
    }
    let base_qcow2 = with_layer(base, |i| Ok(i.format() == Format::Qcow2))?;
    let top_snapshots = with_layer(&top, |i| match i.internal_snapshots() {
        Some(s) if i.format() == Format::Qcow2 => Ok(Some(s.snapshots()?.len())),
        _ => Ok(None),
    })?;
    match top_snapshots {
        _ if !base_qcow2 => return keep(format!("{} is not qcow2", base.display())),
        None => return keep(format!("{} is not qcow2", top.display())),
        Some(n) if n > 0 => {
            return keep(format!(
                "{} holds {n} internal snapshot(s), which read through {}",
                top.display(),
                base.display()
            ))
        }
        Some(_) => {}
    }
    Ok(Some(Merge {
        disk: disk.to_string(),
        base: base.to_path_buf(),
        above: w
            .needed
            .iter()
            .filter(|f| w.graph.backing_of(f) == Some(&top))
            .cloned()
            .collect(),
        top_active: w
            .roots
            .iter()
            .any(|(r, n)| *r == top && *n == Need::Contents),
        top,
    }))
}

/// Runs the merges, then `last` (more actions that must go with them, such
/// as deleting the snapshot's internal snapshots) in the final transaction,
/// all or nothing. `guard` names the guard snapshots.
pub(crate) fn run(merges: &[Merge], mut last: Vec<Action>, guard: &str) -> Result<()> {
    if merges.is_empty() {
        if !last.is_empty() {
            crate::faults::run(&last, &Held::none())?;
        }
        return Ok(());
    }
    let guards: Vec<Action> = merges
        .iter()
        .map(|m| Action::SnapshotInternal {
            file: m.base.clone(),
            name: Some(guard.to_string()),
        })
        .collect();
    transaction::run(&guards)?;
    let mut repointed: Vec<(PathBuf, PathBuf)> = Vec::new();
    let merged = (|| -> Result<()> {
        for m in merges {
            let top = strata_image::open(
                &m.top,
                &ChainOptions {
                    writable_backing: 1,
                    ..Default::default()
                },
            )?;
            let opts = CommitOptions {
                base_depth: 1,
                keep_top: true,
                skip_bitmaps: true,
            };
            commit(top.as_ref(), &opts, &no_progress).map_err(|e| {
                Error::invalid(
                    format!(
                        "disk '{}': merging {} into {}",
                        m.disk,
                        m.top.display(),
                        m.base.display()
                    ),
                    e.to_string(),
                )
            })?;
            top.close()?;
        }
        for m in merges {
            for f in &m.above {
                set_backing(f, &m.base)?;
                repointed.push((f.clone(), m.top.clone()));
            }
        }
        for m in merges {
            last.extend(bitmap_actions(m)?);
            last.push(Action::SnapshotDeleteInternal {
                file: m.base.clone(),
                name: guard.to_string(),
            });
        }
        crate::faults::run(&last, &Held::none())?;
        Ok(())
    })();
    if let Err(e) = merged {
        roll_back(merges, &repointed, guard);
        return Err(e);
    }
    Ok(())
}

/// Puts everything back after a failed merge: re-pointed images back on
/// the overlays, the guards applied and deleted (each failure is logged).
fn roll_back(merges: &[Merge], repointed: &[(PathBuf, PathBuf)], guard: &str) {
    for (f, old) in repointed {
        if let Err(e) = set_backing(f, old) {
            tracing::error!(
                "{}: cannot point it back at {}: {e}",
                f.display(),
                old.display()
            );
        }
    }
    for op in [true, false] {
        let actions: Vec<Action> = merges
            .iter()
            .map(|m| {
                let (file, name) = (m.base.clone(), guard.to_string());
                if op {
                    Action::SnapshotApplyInternal { file, name }
                } else {
                    Action::SnapshotDeleteInternal { file, name }
                }
            })
            .collect();
        if let Err(e) = transaction::run(&actions) {
            tracing::error!("taking back a failed merge: {e} (guard snapshots '{guard}')");
        }
    }
}

/// Records `backing` (qcow2) as the backing file of image `file`.
pub(crate) fn set_backing(file: &Path, backing: &Path) -> Result<()> {
    let img = strata_image::open(
        file,
        &ChainOptions {
            writable: true,
            backing: false,
            ..Default::default()
        },
    )?;
    let q = img.placement().ok_or_else(|| {
        Error::invalid(
            file.display().to_string(),
            "an image above an overlay is not qcow2",
        )
    })?;
    q.set_backing(Some(&backing.to_string_lossy()), Some("qcow2"))?;
    img.close()?;
    Ok(())
}

/// The overlay's bitmaps merged into the image's (added disabled where
/// missing); those the overlay was tracking with keep tracking there when
/// it was a disk's current image.
fn bitmap_actions(m: &Merge) -> Result<Vec<Action>> {
    let bitmaps = |i: &dyn Image| i.dirty_bitmaps().map_or(Ok(Vec::new()), |b| b.bitmaps());
    let top_maps = with_layer(&m.top, bitmaps)?;
    let base_maps = with_layer(&m.base, bitmaps)?;
    let mut out = Vec::new();
    for b in top_maps.iter().filter(|b| b.usable()) {
        match base_maps.iter().find(|x| x.name == b.name) {
            Some(x) if !x.usable() => continue,
            Some(_) => {}
            None => out.push(Action::Bitmap {
                op: BitmapOp::Add,
                file: m.base.clone(),
                name: b.name.clone(),
                granularity: Some(b.granularity),
                disabled: true,
                sources: Vec::new(),
            }),
        }
        out.push(Action::Bitmap {
            op: BitmapOp::Merge,
            file: m.base.clone(),
            name: b.name.clone(),
            granularity: None,
            disabled: false,
            sources: vec![BitmapSource {
                file: Some(m.top.clone()),
                name: b.name.clone(),
            }],
        });
        if m.top_active && b.enabled() {
            out.push(Action::bitmap(
                BitmapOp::Enable,
                m.base.clone(),
                b.name.clone(),
            ));
        }
    }
    Ok(out)
}
