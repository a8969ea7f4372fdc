//! A domain's managed save (`virsh managedsave`): the saved machine strata
//! keeps for it, `STATE/save/NAME.save` (a [`super::saved`] file, 0600 in
//! a 0700 folder). `domain start` restores the domain from it and removes
//! it; `start --force-boot` and `managedsave-remove` discard it; a revert
//! makes it stale and removes it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::domain::Domain;
use crate::error::{Error, Result};

/// The managed save of domain `name` under `state_dir`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("save").join(format!("{name}.save"))
}

/// Whether domain `name` has a managed save.
pub fn exists(state_dir: &Path, name: &str) -> bool {
    path(state_dir, name).symlink_metadata().is_ok()
}

/// The folder managed saves go into, made owner-only if it is not there;
/// returns the path for domain `name`'s.
pub fn prepare(state_dir: &Path, name: &str) -> Result<PathBuf> {
    let file = path(state_dir, name);
    let dir = state_dir.join("save");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| Error::Io {
            path: dir,
            op: "create the managed save folder",
            source,
        })?;
    Ok(file)
}

/// Removes domain `name`'s managed save; false when it had none.
pub fn remove(state_dir: &Path, name: &str) -> Result<bool> {
    let file = path(state_dir, name);
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            path: file,
            op: "remove the managed save",
            source,
        }),
    }
}

/// Checks that `saved`, the definition a managed save holds, can go on
/// with the domain as `defined` now: the same domain (UUID), each disk
/// still on the image it was saved with (a guest whose disks moved under
/// it would see other data than it remembers).
pub fn check(file: &Path, saved: &Domain, defined: &Domain) -> Result<()> {
    let what = file.display().to_string();
    if saved.uuid() != defined.uuid() {
        return Err(Error::invalid(
            what,
            format!(
                "holds domain '{}' with UUID {}, the one defined has {}",
                saved.name(),
                saved.uuid(),
                defined.uuid()
            ),
        ));
    }
    let now = defined.disks();
    for d in saved.disks() {
        let then = d.source.clone();
        let current = now
            .iter()
            .find(|n| n.target == d.target)
            .and_then(|n| n.source.clone());
        if current != then {
            let shown =
                |p: Option<PathBuf>| p.map_or("nothing".into(), |p| p.display().to_string());
            return Err(Error::invalid(
                what,
                format!(
                    "disk '{}' was {} when the domain was saved and is {} now: its guest cannot go on (start --force-boot discards the managed save)",
                    d.target,
                    shown(then),
                    shown(current)
                ),
            ));
        }
    }
    Ok(())
}
