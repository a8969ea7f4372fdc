//! `snapshot revert` of a machine that is not running, in one all-or-nothing
//! image transaction:
//! - a disk snapshotted internally gets the snapshot applied in the image
//!   that holds it, which becomes the disk's active image again if it no
//!   longer was (as libvirt does for a machine that is off: it applies the
//!   snapshot to the images named in the snapshot's own domain). The state
//!   being left is discarded, as with any revert. Refused, naming the
//!   dependent file, when something the metadata still needs (after the
//!   revert) depends on that image's current contents: a current disk
//!   (other than the one being reverted), an external snapshot keeping it
//!   read-only, a file handed over to the user, or any of those or another
//!   snapshot's image having it in its backing chain. The backing chains
//!   are read from the images, not assumed;
//! - a disk snapshotted externally gets a fresh overlay on top of the
//!   snapshot's image (as libvirt 9.9+ does), so the state being left stays
//!   intact in its own overlay, on its own branch.
//!
//! The snapshot then becomes current and the domain's disks point where the
//! revert left them. As with any revert, the state left behind is
//! discarded: overlays strata made that no snapshot needs any more are
//! deleted.

use std::path::{Path, PathBuf};
use strata_image::transaction::Held;

use strata_image::ops::external::default_overlay;
use strata_image::transaction::Action;

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::lock::DomainLock;
use crate::refs::{self, Graph, Owner, Root};
use crate::snapshot::undo::{self, Reverted};
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::Store;

/// A free overlay name for a revert to snapshot `snap` over `base`:
/// `vda.s1.1`, `vda.s1.2`, …
fn revert_overlay(base: &Path, snap: &str) -> PathBuf {
    (1..)
        .map(|k| default_overlay(base, &format!("{snap}.{k}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

/// Where a snapshot's memory is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryAt {
    /// The VM state of the internal snapshot of that name of `image`,
    /// `len` bytes.
    Internal {
        /// The qcow2 image.
        image: PathBuf,
        /// The state's length.
        len: u64,
        /// Where it starts in the image file, when it lies there in one
        /// piece (as strata writes it): QEMU can read it in place.
        in_file: Option<u64>,
    },
    /// A saved machine file (`--memspec external`), checked whole: its
    /// stream starts at `offset`.
    External {
        /// The file.
        file: PathBuf,
        /// Where the stream starts in it.
        offset: u64,
    },
}

/// Where the memory of snapshot `name` of domain `domain` is kept, when it
/// holds one. An error (nothing changed) when the snapshot says it holds
/// memory that is not there or is damaged (an external file is checked
/// whole), or is kept in a way strata does not restore.
pub fn memory_image(store: &Store, domain: &str, name: &str) -> Result<Option<MemoryAt>> {
    let row = store.snapshot(domain, name)?;
    let def = SnapshotDef::from_xml(&row.xml, &format!("snapshot '{name}'"))?;
    if !def.has_memory() {
        return Ok(None);
    }
    let what = format!("domain '{domain}': snapshot '{name}' holds memory");
    let kind = def.memory.as_ref().and_then(|m| m.attr("snapshot"));
    if kind == Some("external") {
        let file = def
            .memory
            .as_ref()
            .and_then(|m| m.attr("file"))
            .map(PathBuf::from)
            .ok_or_else(|| Error::invalid(&what, "external, but names no file"))?;
        let saved = crate::live::saved::read(&file)
            .map_err(|e| Error::invalid(&what, format!("but its file cannot be restored: {e}")))?;
        return Ok(Some(MemoryAt::External {
            file,
            offset: saved.stream_offset,
        }));
    }
    if kind != Some("internal") {
        return Err(Error::invalid(
            what,
            format!(
                "kept as {} memory, which strata does not restore",
                kind.unwrap_or("?")
            ),
        ));
    }
    let then = def
        .domain
        .clone()
        .map(Domain::from_element)
        .ok_or_else(|| Error::invalid(&what, "the snapshot has no domain definition"))?;
    let first = def
        .disks
        .iter()
        .find(|d| d.mode == DiskMode::Internal)
        .ok_or_else(|| Error::invalid(&what, "but no disk has an internal snapshot to keep it"))?;
    let image = then
        .disks()
        .into_iter()
        .find(|d| d.target == first.name)
        .and_then(|d| d.source)
        .ok_or_else(|| Error::invalid(&what, format!("disk '{}' has no image", first.name)))?;
    let opened = open_alone(&image)
        .map_err(|e| Error::invalid(&what, format!("its memory is in {}: {e}", image.display())))?;
    let len = opened
        .internal_snapshots()
        .and_then(|s| s.snapshots().ok())
        .and_then(|list| list.into_iter().find(|s| s.name == name))
        .map(|s| s.vm_state_size)
        .unwrap_or(0);
    if len == 0 {
        return Err(Error::invalid(
            what,
            format!("but {} keeps no VM state for it", image.display()),
        ));
    }
    let in_file = opened
        .internal_snapshots()
        .and_then(|s| s.vmstate_extent(name).ok().flatten());
    Ok(Some(MemoryAt::Internal {
        image,
        len,
        in_file,
    }))
}

/// `image` alone (no backing file), read-only and unlocked: a look at a
/// snapshot's VM state, which nothing changes, while a daemon may serve
/// the image.
fn open_alone(image: &Path) -> strata_image::Result<std::sync::Arc<dyn strata_image::Image>> {
    let opts = strata_image::ChainOptions {
        backing: false,
        lock: false,
        ..Default::default()
    };
    strata_image::chain::open(image, &opts)
}

/// Copies the `len` bytes of VM state of internal snapshot `name` of
/// `image` into a new file `to` (0600): the stream QEMU loads.
pub fn extract_memory(image: &Path, name: &str, len: u64, to: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let img = open_alone(image)?;
    let snaps = img.internal_snapshots().ok_or_else(|| {
        Error::invalid(image.display().to_string(), "keeps no internal snapshots")
    })?;
    let io = |e| Error::Io {
        path: to.to_path_buf(),
        op: "write the memory to load",
        source: e,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        snaps.read_vmstate(name, &mut buf[..n], pos)?;
        out.write_all(&buf[..n]).map_err(io)?;
        pos += n as u64;
    }
    out.sync_all().map_err(io)
}

/// Reverts domain `domain` to snapshot `name`; returns the overlays it made
/// `(target, file)` (disks that go back to the image holding an internal
/// snapshot are not among them).
#[tracing::instrument(skip_all, fields(domain = %domain, snapshot = %name, op = "snapshot revert"))]
pub fn revert(store: &mut Store, domain: &str, name: &str) -> Result<Vec<(String, PathBuf)>> {
    Ok(revert_in(store, domain, name, false)?.finish(store))
}

/// Reverts the disks of domain `domain`, which does not run, to snapshot
/// `name`, which holds memory, so that its guest can go on from that
/// memory: the domain's definition becomes the snapshot's (the machine the
/// memory was saved in; each disk's source where the revert left it). The
/// revert can be taken back until the memory is loaded
/// ([`Reverted::undo`], [`Reverted::finish`]).
#[tracing::instrument(skip_all, fields(domain = %domain, snapshot = %name, op = "snapshot revert"))]
pub fn revert_for_memory(store: &mut Store, domain: &str, name: &str) -> Result<Reverted> {
    revert_in(store, domain, name, true)
}

/// [`revert`], or with `memory` [`revert_for_memory`].
fn revert_in(store: &mut Store, domain: &str, name: &str, memory: bool) -> Result<Reverted> {
    let _lock = DomainLock::acquire(store.dir(), domain)?;
    let dom = store.domain(domain)?;
    let row = store.snapshot(domain, name)?;
    let def = SnapshotDef::from_xml(&row.xml, &format!("snapshot '{name}'"))?;
    let what = format!("domain '{domain}': revert to snapshot '{name}'");
    let then = def
        .domain
        .clone()
        .map(Domain::from_element)
        .ok_or_else(|| Error::invalid(&what, "the snapshot has no domain definition"))?;
    let now_disks = dom.disks();
    let then_disks = then.disks();
    let mut actions = Vec::new();
    // With memory, the machine the memory was saved in runs again.
    let mut new_dom = if memory { then.clone() } else { dom.clone() };
    let mut moved = Vec::new();
    // What the metadata needs once the revert is done: every root but the
    // current images of the disks taking part, whose state is discarded.
    let mut graph = Graph::default();
    let after: Vec<Root> = if def.disks.iter().any(|d| d.mode == DiskMode::Internal) {
        let taking_part: Vec<&str> = def
            .disks
            .iter()
            .filter(|d| d.mode != DiskMode::No)
            .map(|d| d.name.as_str())
            .collect();
        refs::owned_roots(store, None)?
            .into_iter()
            .filter(|r| {
                !matches!(&r.owner, Owner::Disk { domain: dom, target }
                    if dom == domain && taking_part.contains(&target.as_str()))
            })
            .collect()
    } else {
        Vec::new()
    };
    for d in def.disks.iter().filter(|d| d.mode != DiskMode::No) {
        let disk_what = format!("{what}: disk '{}'", d.name);
        let then_disk = then_disks.iter().find(|t| t.target == d.name);
        let then_src = then_disk
            .and_then(|t| t.source.clone())
            .ok_or_else(|| Error::invalid(&disk_what, "not in the snapshot's domain definition"))?;
        let now_src = now_disks
            .iter()
            .find(|t| t.target == d.name)
            .and_then(|t| t.source.clone());
        match d.mode {
            DiskMode::Internal => {
                // Still the disk's active image: its state is the one being
                // left, as in every revert, and nothing else is looked at
                // (an unrelated image that cannot be opened must not block
                // the everyday revert).
                let active = now_src.as_deref().map(refs::canon) == Some(refs::canon(&then_src));
                let why = if active {
                    None
                } else {
                    refs::dependency(&mut graph, &after, &then_src, domain)
                };
                if let Some(why) = why {
                    return Err(Error::invalid(
                        &disk_what,
                        format!(
                            "the snapshot is inside {}, whose contents must stay as they are: {why}; applying the snapshot would change them",
                            then_src.display()
                        ),
                    ));
                }
                actions.push(Action::SnapshotApplyInternal {
                    file: then_src.clone(),
                    name: name.to_string(),
                });
                if now_src.as_deref().map(refs::canon) != Some(refs::canon(&then_src)) {
                    // Internal snapshots live only in qcow2 images.
                    let format = then_disk.and_then(|t| t.format.as_deref());
                    new_dom.set_disk_source(&d.name, &then_src, format.unwrap_or("qcow2"))?;
                }
            }
            DiskMode::External => {
                let overlay = revert_overlay(&then_src, name);
                actions.push(Action::SnapshotExternal {
                    file: then_src.clone(),
                    overlay: Some(overlay.clone()),
                    name: None,
                    reuse: false,
                });
                new_dom.set_disk_source(&d.name, &overlay, "qcow2")?;
                moved.push((d.name.clone(), overlay));
            }
            DiskMode::No => {}
        }
    }
    if actions.is_empty() {
        return Err(Error::invalid(what, "no disk took part in the snapshot"));
    }
    // The state each applied snapshot discards is kept in a guard until
    // the memory is loaded.
    let guards = memory.then(|| {
        let files: Vec<PathBuf> = actions
            .iter()
            .filter(|a| matches!(a, Action::SnapshotApplyInternal { .. }))
            .map(|a| a.file().to_path_buf())
            .collect();
        (undo::guard_name(), files)
    });
    if let Some((guard, files)) = guards.as_ref().filter(|(_, f)| !f.is_empty()) {
        undo::take(files, guard)
            .map_err(|e| Error::invalid(&what, format!("keeping the state being left: {e}")))?;
    }
    let drop_guards = |guards: &Option<(String, Vec<PathBuf>)>| {
        if let Some((guard, files)) = guards.as_ref().filter(|(_, f)| !f.is_empty()) {
            if let Err(e) = undo::delete(files, guard) {
                tracing::warn!(error = %e, guard = %guard, "guard snapshots kept");
            }
        }
    };
    if let Err(e) = crate::faults::run(&actions, &Held::none()) {
        drop_guards(&guards);
        return Err(Error::invalid(&what, e.to_string()));
    }
    let made: Vec<PathBuf> = moved.iter().map(|(_, o)| o.clone()).collect();
    let current = store
        .snapshots(domain)?
        .into_iter()
        .find(|r| r.current)
        .map(|r| r.name);
    if let Err(e) = store.revert_to(domain, name, &new_dom, &made) {
        // New overlays go; the applies are taken back when guarded.
        for o in &made {
            let _ = std::fs::remove_file(o);
        }
        if let Some((guard, files)) = guards.as_ref().filter(|(_, f)| !f.is_empty()) {
            if let Err(u) = undo::apply_back(files, guard) {
                tracing::error!(error = %u, guard = %guard, "the state before the revert is kept in guard snapshots");
            }
        }
        return Err(e);
    }
    Ok(Reverted {
        domain: domain.to_string(),
        moved,
        guards: guards.filter(|(_, f)| !f.is_empty()),
        before: dom,
        current,
    })
}
