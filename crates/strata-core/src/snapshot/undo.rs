//! Taking a revert back. A revert to a snapshot with memory is only done
//! once QEMU has loaded the memory, and QEMU may refuse it (a damaged
//! stream, a device the guest took that is not offered). Until then the
//! revert keeps what it would discard:
//! - each image a snapshot is applied to first gets a guard internal
//!   snapshot (`strata-revert-undo-PID`) of the state being left;
//! - the overlays the state being left is in are not collected, and the
//!   new overlays are recorded as made for the revert;
//! - the store's current snapshot and domain definition as they were.
//!
//! [`Reverted::undo`] puts every one of them back (the guards applied and
//! deleted, the new overlays deleted, the store as before);
//! [`Reverted::finish`] makes the revert final, and whoever serves the
//! images next deletes the guards ([`drop_guards_on`]: the daemon, once the
//! memory is loaded, before the guest runs). A guard left by a process that
//! died in between is deleted the same way at the next load.

use std::path::PathBuf;

use strata_image::transaction::{Action, Held};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::live::Disks;
use crate::lock::DomainLock;
use crate::refs;
use crate::store::Store;

/// How guard snapshots are named: this, then the process id.
pub const GUARD_PREFIX: &str = "strata-revert-undo-";

/// The guard snapshot name of this process.
pub(super) fn guard_name() -> String {
    format!("{GUARD_PREFIX}{}", std::process::id())
}

/// One guard action per file: `make` builds it.
fn each(files: &[PathBuf], make: impl Fn(PathBuf) -> Action) -> Vec<Action> {
    files.iter().cloned().map(make).collect()
}

/// Takes guard snapshot `guard` of each of `files` (offline, in one
/// transaction).
pub(super) fn take(files: &[PathBuf], guard: &str) -> Result<()> {
    let name = Some(guard.to_string());
    let actions = each(files, |file| Action::SnapshotInternal {
        file,
        name: name.clone(),
    });
    crate::faults::run(&actions, &Held::none())?;
    Ok(())
}

/// Deletes guard snapshot `guard` of each of `files` (offline).
pub(super) fn delete(files: &[PathBuf], guard: &str) -> Result<()> {
    let actions = each(files, |file| Action::SnapshotDeleteInternal {
        file,
        name: guard.to_string(),
    });
    crate::faults::run(&actions, &Held::none())?;
    Ok(())
}

/// Applies guard snapshot `guard` back to each of `files`, then deletes
/// it (offline): the images as before the revert.
pub(super) fn apply_back(files: &[PathBuf], guard: &str) -> Result<()> {
    let actions = each(files, |file| Action::SnapshotApplyInternal {
        file,
        name: guard.to_string(),
    });
    crate::faults::run(&actions, &Held::none())?;
    delete(files, guard)
}

/// A revert done on the disks and in the store, which can still be taken
/// back.
#[derive(Debug)]
pub struct Reverted {
    pub(super) domain: String,
    /// The overlays made, `(target, file)`.
    pub(super) moved: Vec<(String, PathBuf)>,
    /// The guard snapshot's name and the images holding it.
    pub(super) guards: Option<(String, Vec<PathBuf>)>,
    /// The domain definition before the revert.
    pub(super) before: Domain,
    /// The current snapshot before the revert.
    pub(super) current: Option<String>,
}

impl Reverted {
    /// The overlays the revert made, `(target, file)` (disks that went
    /// back to the image holding an internal snapshot are not among them).
    pub fn moved(&self) -> &[(String, PathBuf)] {
        &self.moved
    }

    /// Makes the revert final: the state left behind goes, unless a
    /// snapshot still needs it. The guards, if any, are left to whoever
    /// serves the images ([`drop_guards_on`]). Returns the overlays made.
    pub fn finish(self, store: &mut Store) -> Vec<(String, PathBuf)> {
        refs::collect_or_warn(store, &self.domain);
        self.moved
    }

    /// Takes the revert back, with the domain not running: every image as
    /// it was, the new overlays deleted, the current snapshot and the
    /// domain definition as they were.
    pub fn undo(self, store: &mut Store) -> Result<()> {
        let _lock = DomainLock::acquire(store.dir(), &self.domain)?;
        let what = format!("domain '{}': taking the revert back", self.domain);
        if let Some((guard, files)) = &self.guards {
            apply_back(files, guard).map_err(|e| {
                Error::invalid(
                    &what,
                    format!("{e} (the state before is kept in snapshots '{guard}')"),
                )
            })?;
        }
        let made: Vec<PathBuf> = self.moved.iter().map(|(_, f)| f.clone()).collect();
        store.undo_revert(&self.domain, self.current.as_deref(), &self.before, &made)?;
        for f in &made {
            if let Err(e) = std::fs::remove_file(f) {
                tracing::warn!(file = %f.display(), error = %e, "overlay of the taken-back revert kept");
            }
        }
        Ok(())
    }
}

/// Deletes, in one transaction on the images `disks` serves, every guard
/// snapshot that the images `files` hold (a revert made final, or one
/// whose process died); the disks are held still meanwhile. Returns how
/// many there were.
pub fn drop_guards_on(disks: &dyn Disks, files: &[PathBuf]) -> Result<usize> {
    let held = disks.held();
    let mut actions = Vec::new();
    for file in files {
        let Some(img) = held.get(file) else { continue };
        let Some(snaps) = img.internal_snapshots() else {
            continue;
        };
        for s in snaps.snapshots()? {
            if s.name.starts_with(GUARD_PREFIX) {
                actions.push(Action::SnapshotDeleteInternal {
                    file: file.clone(),
                    name: s.name,
                });
            }
        }
    }
    if actions.is_empty() {
        return Ok(0);
    }
    // One internal change per image per transaction: one run per guard on
    // an image that holds several (a process died after taking one).
    let _held_still = disks.hold()?;
    let mut runs: Vec<Vec<Action>> = Vec::new();
    for a in actions {
        let file = a.file().to_path_buf();
        match runs.iter_mut().find(|r| r.iter().all(|b| b.file() != file)) {
            Some(r) => r.push(a),
            None => runs.push(vec![a]),
        }
    }
    let n = runs.iter().map(Vec::len).sum();
    for r in &runs {
        crate::faults::run(r, &held)?;
    }
    Ok(n)
}
