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

use crate::chain::{self, ChainOptions};
use crate::error::{Error, Result};
use crate::image::{Format, Image};
use crate::ops::external;
use crate::qcow2::{PendingChange, Qcow2};

/// Dirty-bitmap actions (accepted by the parser, refused until bitmaps land).
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
    /// Create an external snapshot: a new qcow2 overlay over the image.
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
    /// A dirty-bitmap action.
    Bitmap {
        /// Which one.
        op: BitmapOp,
        /// The image.
        file: PathBuf,
        /// Bitmap name.
        name: String,
    },
}

impl Action {
    /// The action's name in the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SnapshotInternal { .. } => "snapshot-internal",
            Action::SnapshotExternal { .. } => "snapshot-external",
            Action::SnapshotDeleteInternal { .. } => "snapshot-delete-internal",
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
            | Action::Bitmap { file, .. } => file,
        }
    }
}

/// Where a test injects a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// While member `n` prepares.
    Prepare,
    /// While member `n` commits (after members before it committed).
    Commit,
}

/// A failure to inject (for tests of the all-or-nothing promise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Index of the action that fails.
    pub member: usize,
    /// When it fails.
    pub phase: Phase,
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
}

fn action_error(i: usize, a: &Action, e: impl std::fmt::Display) -> Error {
    Error::invalid(
        &a.file().display().to_string(),
        format!("action {} ({}): {e}", i + 1, a.kind()),
    )
}

fn injected(i: usize, a: &Action, phase: Phase) -> Error {
    action_error(
        i,
        a,
        format!(
            "injected fault at {}",
            if phase == Phase::Prepare {
                "prepare"
            } else {
                "commit"
            }
        ),
    )
}

/// One prepared member.
enum Member<'a> {
    Internal(Box<PendingChange<'a>>),
    External { overlay: PathBuf, created: bool },
}

impl Member<'_> {
    fn commit(&mut self) -> Result<()> {
        match self {
            Member::Internal(p) => p.commit(),
            Member::External { .. } => Ok(()),
        }
    }

    fn abort(self) -> Result<()> {
        match self {
            Member::Internal(p) => p.abort(),
            Member::External { overlay, created } => {
                if created {
                    std::fs::remove_file(&overlay)
                        .map_err(|e| Error::io(&overlay.display().to_string(), "remove", 0, e))?;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Outcome> {
        match self {
            Member::Internal(p) => {
                let info = p.info().clone();
                p.finish()?;
                Ok(Outcome::Internal {
                    name: info.name,
                    id: info.id,
                })
            }
            Member::External { overlay, .. } => Ok(Outcome::External { overlay }),
        }
    }
}

/// Where every action's image lives, canonically, and the open images.
struct Opened {
    canonical: Vec<PathBuf>,
    images: HashMap<PathBuf, Arc<dyn Image>>,
    /// The overlay of each external action, decided once (a generated name
    /// comes from the clock and must not change between check and use).
    overlays: HashMap<usize, PathBuf>,
}

/// Checks everything that can be checked before writing: every file exists
/// and is not locked by another process, one image is never the target of
/// two internal changes or two external snapshots, snapshot names are new
/// (create) or present (delete), overlays are new (or reusable), distinct,
/// and not one of the images.
fn validate(actions: &[Action]) -> Result<Opened> {
    if actions.is_empty() {
        return Err(Error::invalid("transaction", "no actions"));
    }
    let mut canonical = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        if let Action::Bitmap { .. } = a {
            return Err(action_error(i, a, "dirty bitmaps are not supported yet"));
        }
        let c = std::fs::canonicalize(a.file())
            .map_err(|e| action_error(i, a, format!("cannot open {}: {e}", a.file().display())))?;
        canonical.push(c);
    }
    let mut images: HashMap<PathBuf, Arc<dyn Image>> = HashMap::new();
    let mut internal_on: HashMap<&PathBuf, usize> = HashMap::new();
    let mut external_on: HashMap<&PathBuf, usize> = HashMap::new();
    let mut overlays: Vec<PathBuf> = Vec::new();
    let mut overlay_of: HashMap<usize, PathBuf> = HashMap::new();
    for (i, a) in actions.iter().enumerate() {
        let c = &canonical[i];
        let internal = matches!(
            a,
            Action::SnapshotInternal { .. } | Action::SnapshotDeleteInternal { .. }
        );
        let seen = if internal {
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
        if !images.contains_key(c) {
            let writable = actions.iter().zip(&canonical).any(|(b, cb)| {
                cb == c
                    && matches!(
                        b,
                        Action::SnapshotInternal { .. } | Action::SnapshotDeleteInternal { .. }
                    )
            });
            let opts = ChainOptions {
                writable,
                backing: false,
                ..Default::default()
            };
            let img = chain::open(a.file(), &opts).map_err(|e| action_error(i, a, e))?;
            images.insert(c.clone(), img);
        }
        let img = &images[c];
        match a {
            Action::SnapshotInternal { .. } | Action::SnapshotDeleteInternal { .. }
                if img.format() != Format::Qcow2 =>
            {
                return Err(action_error(i, a, "internal snapshots need a qcow2 image"));
            }
            Action::SnapshotInternal { name: Some(n), .. } => {
                let q = as_qcow2(img);
                if q.snapshots()?.iter().any(|s| &s.name == n) {
                    return Err(action_error(
                        i,
                        a,
                        format!("a snapshot named '{n}' already exists"),
                    ));
                }
            }
            Action::SnapshotDeleteInternal { name, .. } => {
                let q = as_qcow2(img);
                if !q
                    .snapshots()?
                    .iter()
                    .any(|s| &s.name == name || &s.id == name)
                {
                    return Err(action_error(i, a, format!("snapshot '{name}' not found")));
                }
            }
            Action::SnapshotExternal {
                file,
                overlay,
                name,
                reuse,
            } => {
                let path = overlay_path(file, overlay.as_deref(), name.as_deref());
                if *reuse {
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
            }
            _ => {}
        }
    }
    Ok(Opened {
        canonical,
        images,
        overlays: overlay_of,
    })
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

fn as_qcow2(img: &Arc<dyn Image>) -> &Qcow2 {
    img.as_any()
        .downcast_ref::<Qcow2>()
        .expect("validated as qcow2")
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

/// Runs `actions` all-or-nothing; `fault` injects a failure (tests only).
pub fn run(actions: &[Action], fault: Option<Fault>) -> Result<Vec<Outcome>> {
    let opened = validate(actions)?;
    let mut members: Vec<Member<'_>> = Vec::new();
    // Prepare.
    for (i, a) in actions.iter().enumerate() {
        let img = &opened.images[&opened.canonical[i]];
        let prepared = (|| -> Result<Member<'_>> {
            let m = match a {
                Action::SnapshotInternal { name, .. } => Member::Internal(Box::new(
                    as_qcow2(img)
                        .prepare_snapshot_create(name.as_deref())
                        .map_err(|e| action_error(i, a, e))?,
                )),
                Action::SnapshotDeleteInternal { name, .. } => Member::Internal(Box::new(
                    as_qcow2(img)
                        .prepare_snapshot_delete(name)
                        .map_err(|e| action_error(i, a, e))?,
                )),
                Action::SnapshotExternal { file, reuse, .. } => {
                    let path = opened.overlays[&i].clone();
                    if !*reuse {
                        external::create_overlay(file, img.format(), img.size(), &path)
                            .map_err(|e| action_error(i, a, e))?;
                    }
                    Member::External {
                        overlay: path,
                        created: !*reuse,
                    }
                }
                Action::Bitmap { .. } => unreachable!("refused by validate"),
            };
            if fault
                == Some(Fault {
                    member: i,
                    phase: Phase::Prepare,
                })
            {
                let _ = m.abort();
                return Err(injected(i, a, Phase::Prepare));
            }
            Ok(m)
        })();
        match prepared {
            Ok(m) => members.push(m),
            Err(e) => return Err(undo(members, e)),
        }
    }
    // Commit.
    for i in 0..members.len() {
        let failed = if fault
            == Some(Fault {
                member: i,
                phase: Phase::Commit,
            }) {
            Err(injected(i, &actions[i], Phase::Commit))
        } else {
            members[i]
                .commit()
                .map_err(|e| action_error(i, &actions[i], e))
        };
        if let Err(e) = failed {
            return Err(undo(members, e));
        }
    }
    // Finish: release what the old states used.
    // Finish every member even if one fails (they are all committed: the
    // new state stands everywhere; a failed finish only leaks clusters).
    let mut out = Vec::new();
    let mut first_error = None;
    for m in members {
        match m.finish() {
            Ok(o) => out.push(o),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
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
