//! `repo restore --to-domain`: a whole machine out of a backup, as a new
//! domain. Every disk of the backup is restored into a folder, and the
//! domain is defined from the definition the backup holds, renamed, with
//! a new UUID and no MAC addresses (two machines must not share them),
//! each restored disk's source pointing at its new image.

use std::path::{Path, PathBuf};

use strata_image::Format;
use strata_repo::Repo;

use crate::backup::repo::{repo_error, restore};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::store::Store;

/// The domain a restore defined.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoredDomain {
    /// Its name.
    pub name: String,
    /// Its new UUID.
    pub uuid: String,
    /// Each disk restored: its target and its new image.
    pub disks: Vec<(String, PathBuf)>,
}

/// Restores every disk of backup `backup` of `repo` into folder `dir`
/// (as `NAME-DISK.qcow2` or `.raw`, by `format`) and defines domain
/// `name` from the backup's definition in `store`. Refused, with nothing
/// written, when the domain or any of the files exists; a failure part
/// way removes the images already restored. `progress` is told each
/// chunk's bytes once written.
pub fn restore_domain(
    store: &mut Store,
    repo: &Repo,
    backup: &str,
    name: &str,
    dir: &Path,
    format: Format,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoredDomain> {
    let m = repo.backup(backup).map_err(repo_error)?;
    let what = format!("backup {backup}");
    let xml = m.meta["xml"]
        .as_str()
        .ok_or_else(|| Error::invalid(&what, "holds no domain definition"))?;
    let mut dom = renamed(xml, name, &what)?;
    match store.domain(name) {
        Ok(_) => {
            return Err(Error::invalid(
                format!("domain '{name}'"),
                "exists already: restore to a new name",
            ))
        }
        Err(Error::NoDomain(_)) => {}
        Err(e) => return Err(e),
    }
    let ext = if format == Format::Qcow2 {
        "qcow2"
    } else {
        "raw"
    };
    let files: Vec<(String, PathBuf)> = m
        .disks
        .iter()
        .map(|d| (d.name.clone(), dir.join(format!("{name}-{}.{ext}", d.name))))
        .collect();
    if let Some((_, f)) = files.iter().find(|(_, f)| f.symlink_metadata().is_ok()) {
        return Err(Error::invalid(
            f.display().to_string(),
            "exists; a restore never overwrites a file",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::invalid(
            dir.display().to_string(),
            format!("cannot make the folder: {e}"),
        )
    })?;
    let mut made: Vec<&Path> = Vec::new();
    let done = (|| {
        for (disk, file) in &files {
            restore(repo, backup, disk, format, file, progress)?;
            made.push(file);
            let file = std::path::absolute(file)
                .map_err(|e| Error::invalid(file.display().to_string(), e.to_string()))?;
            dom.set_disk_source(disk, &file, ext)?;
        }
        store.define(&dom)
    })();
    if let Err(e) = done {
        for f in made {
            let _ = std::fs::remove_file(f);
        }
        return Err(e);
    }
    Ok(RestoredDomain {
        name: dom.name(),
        uuid: dom.uuid(),
        disks: files,
    })
}

/// The definition `xml` (of a backup, `what`) as domain `name`: a new
/// UUID, no MAC address, no backing chain under any disk (a restored
/// image stands alone).
fn renamed(xml: &str, name: &str, what: &str) -> Result<Domain> {
    let mut x = crate::xml::Element::parse(xml, what)?;
    x.child_or_insert("name").set_text(name);
    x.remove_children("uuid");
    if let Some(devices) = x.child_mut("devices") {
        for dev in devices.elements_mut() {
            match dev.name.as_str() {
                "interface" => dev.remove_children("mac"),
                "disk" => dev.remove_children("backingStore"),
                _ => {}
            }
        }
    }
    Domain::from_xml(&x.to_xml(), what)
}
