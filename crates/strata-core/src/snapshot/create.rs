//! `snapshot create`: every participating disk goes through one
//! all-or-nothing image transaction, then the snapshot is recorded
//! (current, child of the previous current) and the domain's disks that
//! took an external snapshot point at their overlays.
//!
//! Of a running domain ([`create_on`] with its served [`Disks`]), disks
//! only: every disk stops taking guest requests and drains first, the
//! transaction runs on the served images themselves, each new overlay is
//! opened on the image below it and served in its place, and the disks
//! resume; the guest sees one stall, measured and returned.
//!
//! Which disks and how, as libvirt decides: a `--diskspec` wins; then the
//! domain disk's `snapshot=` attribute; then the kind of snapshot (a
//! disk-only snapshot is external, a full one internal). CD-ROMs, floppies
//! and transient disks do not take part.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_image::ops::external::default_overlay;
use strata_image::transaction::{self, Action, Held, Outcome};
use strata_image::{ChainOptions, Image};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::live::{Disks, Offline};
use crate::snapshot::memspec::MemSpec;
use crate::snapshot::{DiskMode, SnapshotDef, SnapshotDisk};
use crate::store::Store;

/// One `--diskspec`: `vda[,snapshot=internal|external|no][,file=PATH][,driver=qcow2]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskSpec {
    /// Disk target.
    pub target: String,
    /// How it takes part.
    pub mode: Option<DiskMode>,
    /// External: the overlay file.
    pub file: Option<PathBuf>,
    /// External: the overlay format (qcow2 only).
    pub driver: Option<String>,
}

impl DiskSpec {
    /// Parses virsh's diskspec syntax.
    pub fn parse(spec: &str) -> Result<DiskSpec> {
        let bad = |p: String| Error::invalid(format!("diskspec '{spec}'"), p);
        let mut parts = spec.split(',');
        let target = parts.next().unwrap_or_default().to_string();
        if target.is_empty() {
            return Err(bad("no disk named".into()));
        }
        let mut d = DiskSpec {
            target,
            ..Default::default()
        };
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| bad(format!("'{p}' is not key=value")))?;
            match k {
                "snapshot" => {
                    d.mode = Some(DiskMode::parse(v).ok_or_else(|| {
                        bad(format!("snapshot={v}: use internal, external or no"))
                    })?)
                }
                "file" => d.file = Some(PathBuf::from(v)),
                "driver" if v == "qcow2" => d.driver = Some(v.to_string()),
                "driver" => return Err(bad(format!("driver={v}: overlays are qcow2"))),
                _ => return Err(bad(format!("unknown key '{k}'"))),
            }
        }
        if d.file.is_some() && d.mode.is_none() {
            d.mode = Some(DiskMode::External);
        }
        Ok(d)
    }
}

/// What to create (also the body of the daemon's
/// `POST /v1/domains/{name}/snapshots`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateRequest {
    /// Snapshot name (default: the creation time in seconds, as libvirt).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Disks only (external by default).
    pub disk_only: bool,
    /// Per-disk overrides.
    pub diskspecs: Vec<DiskSpec>,
    /// Do not record metadata (the images still change).
    pub no_metadata: bool,
    /// External overlays exist already and are used as they are.
    pub reuse_external: bool,
    /// Freeze the guest's filesystems through its agent around the
    /// snapshot (`--quiesce`): only the daemon, which talks to the running
    /// guest, can; offline it is refused.
    pub quiesce: bool,
    /// Stop the running domain once the snapshot is taken (`--halt`): the
    /// daemon does it.
    #[serde(default)]
    pub halt: bool,
    /// Save the memory while the guest runs (`--live`): it is paused only
    /// for the last of it, and the disks are snapshotted at that instant.
    #[serde(default)]
    pub live: bool,
    /// Where the memory goes (`--memspec`): by default inside the first
    /// disk's internal snapshot.
    #[serde(default)]
    pub memspec: Option<MemSpec>,
}

impl CreateRequest {
    /// The snapshot keeps no memory: `--disk-only`, or `--memspec
    /// snapshot=no`.
    pub fn without_memory(&self) -> bool {
        self.disk_only
            || self
                .memspec
                .as_ref()
                .is_some_and(|m| m.mode == DiskMode::No)
    }

    /// The memory goes to a file of its own (`--memspec
    /// file=PATH,snapshot=external`): that file.
    pub fn memory_file(&self) -> Option<&Path> {
        self.memspec
            .as_ref()
            .filter(|m| m.mode == DiskMode::External)
            .and_then(|m| m.file.as_deref())
    }
}

/// A snapshot made.
#[derive(Clone, Debug)]
pub struct Created {
    /// Its metadata.
    pub def: SnapshotDef,
    /// Of a running domain: how long the guest's disks took no request.
    pub stall: Option<Duration>,
}

/// Creates a snapshot of domain `domain`, which does not run; returns its
/// metadata.
pub fn create(store: &mut Store, domain: &str, req: &CreateRequest) -> Result<SnapshotDef> {
    create_on(store, domain, req, &Offline).map(|c| c.def)
}

/// A running machine's memory, saved while its guest is paused for the
/// snapshot (QEMU's migration stream in a file), to keep with it.
#[derive(Clone, Debug)]
pub struct Memory {
    /// The file holding the stream.
    pub file: PathBuf,
    /// Where the stream starts in it.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The guest ran (else it was paused) when the snapshot was taken.
    pub running: bool,
}

/// Creates a snapshot of domain `domain` on `disks`: offline, or the disks
/// a daemon serves to the running guest (disks only, all at one instant).
pub fn create_on(
    store: &mut Store,
    domain: &str,
    req: &CreateRequest,
    disks: &dyn Disks,
) -> Result<Created> {
    create_inner(store, domain, req, disks, None)
}

/// Finishes saving a machine's memory once its disks are snapshotted (the
/// guest paused): returns where the saved memory is.
pub type MemoryDone<'a> = Box<dyn FnOnce() -> Result<Memory> + 'a>;

/// Creates a snapshot of running domain `domain` on the disks a daemon
/// serves, with its guest's memory saved at the same instant (the guest
/// paused meanwhile; `memory` is called once the disks are snapshotted and
/// returns the saved memory, finishing the save if need be): every disk
/// gets an internal snapshot, and the first one's keeps the memory as its
/// VM state, as QEMU's `savevm` does.
pub fn create_with_memory_on(
    store: &mut Store,
    domain: &str,
    req: &CreateRequest,
    disks: &dyn Disks,
    memory: MemoryDone<'_>,
) -> Result<Created> {
    create_inner(store, domain, req, disks, Some(memory))
}

#[tracing::instrument(skip_all, fields(domain = %domain, op = "snapshot create"))]
fn create_inner(
    store: &mut Store,
    domain: &str,
    req: &CreateRequest,
    disks: &dyn Disks,
    memory: Option<MemoryDone<'_>>,
) -> Result<Created> {
    let _lock = disks.lock(store.dir(), domain)?;
    let dom = store.domain(domain)?;
    let created = crate::now();
    let name = req.name.clone().unwrap_or_else(|| created.to_string());
    let what = format!("domain '{domain}': snapshot '{name}'");
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid(
            what,
            "a snapshot name must not be empty or contain '/'",
        ));
    }
    let existing = store.snapshots(domain)?;
    if existing.iter().any(|s| s.name == name) {
        return Err(Error::invalid(what, "already exists"));
    }
    if req.quiesce && !disks.live() {
        return Err(Error::invalid(
            what,
            "--quiesce needs a running domain (its guest agent freezes the guest's filesystems)",
        ));
    }
    let with_memory = memory.is_some();
    let external_memory = with_memory && req.memory_file().is_some();
    if req.disk_only && req.memspec.as_ref().is_some_and(|m| m.mode != DiskMode::No) {
        return Err(Error::invalid(
            what,
            "--disk-only keeps no memory: --memspec can only be snapshot=no with it",
        ));
    }
    if !with_memory && !req.without_memory() && req.memspec.is_some() {
        return Err(Error::invalid(
            what,
            "--memspec keeps the memory of a running machine",
        ));
    }
    if disks.live() && !req.without_memory() && !with_memory {
        return Err(Error::invalid(
            what,
            "the domain is running: a snapshot without --disk-only keeps its memory, which was not saved",
        ));
    }
    let served = disks;
    let disks = dom.disks();
    for s in &req.diskspecs {
        if !disks.iter().any(|d| d.target == s.target) {
            return Err(Error::invalid(
                what,
                format!(
                    "--diskspec names disk '{}', which the domain does not have",
                    s.target
                ),
            ));
        }
    }
    let mut actions = Vec::new();
    // Each external snapshot's disk target, by action.
    let mut targets = Vec::new();
    let mut snap_disks = Vec::new();
    let mut new_dom: Domain = dom.clone();
    for d in &disks {
        let spec = req.diskspecs.iter().find(|s| s.target == d.target);
        let default = if d.device != "disk" || d.transient {
            DiskMode::No
        } else if let Some(m) = d.snapshot.as_deref().and_then(DiskMode::parse) {
            m
        } else if req.disk_only || external_memory {
            DiskMode::External
        } else {
            DiskMode::Internal
        };
        let mode = spec.and_then(|s| s.mode).unwrap_or(default);
        let disk_what = format!("{what}: disk '{}'", d.target);
        if d.snapshot.as_deref() == Some("manual") && spec.is_none() && !served.live() {
            return Err(Error::invalid(
                disk_what,
                "snapshot='manual' needs a running machine",
            ));
        }
        if mode != DiskMode::No && (d.kind != "file" || d.source.is_none()) {
            return Err(Error::invalid(
                disk_what,
                format!(
                    "only file disks with a source can be snapshotted (type '{}')",
                    d.kind
                ),
            ));
        }
        let source = d.source.clone().unwrap_or_default();
        let overlay = spec
            .and_then(|s| s.file.clone())
            .unwrap_or_else(|| default_overlay(&source, &name));
        match mode {
            DiskMode::No => {}
            DiskMode::Internal => {
                if d.format.as_deref().is_some_and(|f| f != "qcow2") {
                    return Err(Error::invalid(
                        disk_what,
                        "an internal snapshot needs a qcow2 image",
                    ));
                }
                actions.push(Action::SnapshotInternal {
                    file: source.clone(),
                    name: Some(name.clone()),
                });
                targets.push(None);
            }
            DiskMode::External => {
                actions.push(Action::SnapshotExternal {
                    file: source.clone(),
                    overlay: Some(overlay.clone()),
                    name: Some(name.clone()),
                    reuse: req.reuse_external,
                });
                targets.push(Some(d.target.clone()));
                new_dom.set_disk_source(&d.target, &overlay, "qcow2")?;
            }
        }
        snap_disks.push(SnapshotDisk {
            name: d.target.clone(),
            mode,
            source: (mode == DiskMode::External).then(|| overlay.clone()),
            driver: (mode == DiskMode::External).then(|| "qcow2".to_string()),
        });
    }
    if actions.is_empty() {
        return Err(Error::invalid(what, "no disk takes part in the snapshot"));
    }
    // External memory goes with external disk snapshots (libvirt does not
    // mix them).
    if let Some(d) = snap_disks
        .iter()
        .find(|d| external_memory && d.mode == DiskMode::Internal)
    {
        return Err(Error::invalid(
            format!("{what}: disk '{}'", d.name),
            "the memory goes to a file of its own (--memspec external): the disks take external snapshots with it, not internal ones",
        ));
    }
    // Internal memory goes into the first disk's internal snapshot: every
    // disk is snapshotted internally then (libvirt's rule for internal
    // memory).
    let memory_file = match with_memory && !external_memory {
        true => {
            if let Some(d) = snap_disks.iter().find(|d| d.mode == DiskMode::External) {
                return Err(Error::invalid(
                    format!("{what}: disk '{}'", d.name),
                    "the memory is kept inside the first disk, with internal snapshots of every disk: an external disk snapshot cannot go with it (use --disk-only)",
                ));
            }
            actions.iter().find_map(|a| match a {
                Action::SnapshotInternal { file, .. } => Some(file.clone()),
                _ => None,
            })
        }
        false => None,
    };
    // Live, each new overlay is made and opened before the guest is paused
    // (its header does not depend on the instant) and the transaction
    // reuses it as it is held.
    let mut held = served.held();
    let precreated = if served.live() {
        precreate(&mut actions, &mut held, &what)?
    } else {
        Vec::new()
    };
    let stall = match run_quiesced(served, &held, &actions, &targets, &name, &what) {
        Ok(s) => s,
        Err(e) => {
            remove_files(&precreated);
            return Err(e);
        }
    };
    let saving = std::time::Instant::now();
    let memory = match memory.map(|done| done()).transpose() {
        Ok(m) => m,
        Err(e) => {
            // The guest is paused: the disks go back as they were.
            undo_disks(&actions, &name, &held);
            return Err(e);
        }
    };
    let kept = std::time::Instant::now();
    if let (Some(m), Some(file)) = (&memory, &memory_file) {
        let attached = attach_memory(&held, file, &name, m);
        tracing::info!(
            finish_ms = kept.duration_since(saving).as_millis() as u64,
            keep_ms = kept.elapsed().as_millis() as u64,
            bytes = m.len,
            "memory kept in the first disk's snapshot"
        );
        if let Err(e) = attached {
            // The disks go back as they were (each snapshot deleted at once
            // for that disk's requests: the guest may run again by now).
            undo_disks(&actions, &name, &held);
            return Err(Error::invalid(
                format!("{what}: disk {}", file.display()),
                format!("keeping the memory in the snapshot: {e}"),
            ));
        }
    }
    let def = SnapshotDef {
        name,
        description: req.description.clone(),
        // As libvirt records them: a disk-only snapshot, or the state of a
        // machine that is not running.
        state: match (req.disk_only, &memory) {
            (true, _) => "disk-snapshot".into(),
            (false, Some(m)) if m.running => "running".into(),
            (false, Some(_)) => "paused".into(),
            (false, None) => "shutoff".into(),
        },
        creation_time: created,
        parent: existing.iter().find(|s| s.current).map(|s| s.name.clone()),
        memory: memory.as_ref().map(|m| {
            let mut e = crate::xml::Element::new("memory");
            if external_memory {
                e.set_attr("snapshot", "external");
                e.set_attr("file", &m.file.display().to_string());
            } else {
                e.set_attr("snapshot", "internal");
            }
            e
        }),
        disks: snap_disks,
        domain: Some(dom.element().clone()),
    };
    let moved = def.is_external().then_some(&new_dom);
    let recorded = match (req.no_metadata, moved) {
        (true, Some(d)) => store.define(d).map(|_| ()),
        (true, None) => Ok(()),
        (false, _) => {
            let made: Vec<PathBuf> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::SnapshotExternal {
                        overlay: Some(o),
                        reuse,
                        ..
                    } if !reuse || precreated.contains(o) => Some(o.clone()),
                    _ => None,
                })
                .collect();
            store.add_snapshot(domain, &def, moved, &made)
        }
    };
    if let Err(e) = recorded {
        if served.live() {
            // The guest has written on: its new overlays stay.
            return Err(Error::invalid(
                what,
                format!("the disks took the snapshot but it could not be recorded: {e}"),
            ));
        }
        // The disks changed but the metadata did not: take the disks back.
        undo_disks(&actions, &def.name, &Held::none());
        return Err(e);
    }
    Ok(Created { def, stall })
}

/// Stores `memory` as the VM state of the new internal snapshot `name`
/// of `file` (held).
fn attach_memory(held: &Held, file: &Path, name: &str, memory: &Memory) -> Result<()> {
    let img = held
        .get(file)
        .ok_or_else(|| Error::invalid(file.display().to_string(), "not held"))?;
    let snaps = img
        .internal_snapshots()
        .ok_or_else(|| Error::invalid(file.display().to_string(), "keeps no internal snapshots"))?;
    let state = strata_image::qcow2::FileVmState {
        file: std::fs::File::open(&memory.file).map_err(|e| Error::Io {
            path: memory.file.clone(),
            op: "read the saved memory",
            source: e,
        })?,
        offset: memory.offset,
        len: memory.len,
    };
    snaps.snapshot_attach_state(name, &state)?;
    Ok(())
}

/// Creates and opens the overlay of every external action that would
/// create one, on the held image it goes on ([`transaction::prepare_overlay`]),
/// holds it and makes the action reuse it; returns the files made (removed
/// again if the snapshot fails).
fn precreate(actions: &mut [Action], held: &mut Held, what: &str) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for a in actions.iter_mut() {
        let Action::SnapshotExternal {
            file,
            overlay: Some(o),
            reuse,
            ..
        } = a
        else {
            continue;
        };
        let Some(below) = held.get(file).cloned() else {
            continue;
        };
        if *reuse || o.exists() {
            // The transaction checks (and refuses) it as offline.
            continue;
        }
        let opened =
            transaction::prepare_overlay(file, &below, o).and_then(|ov| held.insert(o, ov));
        if let Err(e) = opened {
            let _ = std::fs::remove_file(&*o);
            remove_files(&made);
            return Err(Error::invalid(
                what.to_string(),
                format!("cannot create overlay {}: {e}", o.display()),
            ));
        }
        made.push(o.clone());
        *reuse = true;
    }
    Ok(made)
}

/// Removes files this snapshot made (best effort; failures logged).
fn remove_files(files: &[PathBuf]) {
    for f in files {
        if let Err(e) = std::fs::remove_file(f) {
            tracing::error!("{}: cannot remove the new overlay: {e}", f.display());
        }
    }
}

/// Runs the snapshot transaction with the guest's requests held back
/// (live), and serves each new overlay in place of the image below it.
/// Returns how long the guest was held back (live).
fn run_quiesced(
    disks: &dyn Disks,
    held: &Held,
    actions: &[Action],
    targets: &[Option<String>],
    name: &str,
    what: &str,
) -> Result<Option<Duration>> {
    let mut quiesced = disks.quiesce()?;
    let paused_at = quiesced.paused_at();
    let outcomes = crate::faults::run(actions, held)
        .map_err(|e| Error::invalid(what.to_string(), e.to_string()))?;
    if !disks.live() {
        return Ok(None);
    }
    let transaction = paused_at.elapsed();
    // Open every overlay before switching any, so a failure switches none.
    let mut tops: Vec<(String, Arc<dyn Image>)> = Vec::new();
    for ((a, out), target) in actions.iter().zip(&outcomes).zip(targets) {
        let (Some(target), Outcome::External { overlay }) = (target, out) else {
            continue;
        };
        if let Some(top) = held.get(overlay) {
            // Made and opened before the pause.
            tops.push((target.clone(), top.clone()));
            continue;
        }
        let below = held.get(a.file()).cloned().ok_or_else(|| {
            Error::invalid(format!("{what}: disk '{target}'"), "the disk is not served")
        })?;
        let opts = ChainOptions {
            writable: true,
            ..ChainOptions::default()
        };
        match strata_image::open_over(overlay, below, &opts) {
            Ok(top) => tops.push((target.clone(), top)),
            Err(e) => {
                drop(tops);
                undo_disks(actions, name, held);
                return Err(Error::invalid(
                    format!("{what}: disk '{target}'"),
                    format!("cannot open the new overlay: {e}"),
                ));
            }
        }
    }
    let opened = paused_at.elapsed();
    for (target, top) in tops {
        quiesced.switch(&target, top)?;
    }
    tracing::debug!(
        transaction_us = transaction.as_micros() as u64,
        open_us = (opened - transaction).as_micros() as u64,
        switch_us = (paused_at.elapsed() - opened).as_micros() as u64,
        "the new tops are served"
    );
    drop(quiesced);
    let stall = paused_at.elapsed();
    tracing::info!(stall_us = stall.as_micros() as u64, "guest disks resumed");
    Ok(Some(stall))
}

/// Undoes what a committed snapshot transaction did to the disks: deletes
/// the internal snapshots (on the `held` images where served) and the
/// overlays it created (best effort; each failure is logged with the file).
fn undo_disks(actions: &[Action], name: &str, held: &Held) {
    let mut back = Vec::new();
    for a in actions {
        match a {
            Action::SnapshotInternal { file, .. } => back.push(Action::SnapshotDeleteInternal {
                file: file.clone(),
                name: name.to_string(),
            }),
            Action::SnapshotExternal {
                overlay: Some(o),
                reuse: false,
                ..
            } => {
                if let Err(e) = std::fs::remove_file(o) {
                    tracing::error!("{}: cannot remove the new overlay: {e}", o.display());
                }
            }
            _ => {}
        }
    }
    if !back.is_empty() {
        if let Err(e) = transaction::run_held(&back, held) {
            tracing::error!("snapshot '{name}': cannot delete the new internal snapshots: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_image::qcow2::{CreateOptions, Qcow2};

    fn snapshots_of(path: &std::path::Path) -> Vec<String> {
        let img = strata_image::open(path, &Default::default()).unwrap();
        let s = img.internal_snapshots().unwrap();
        s.snapshots().unwrap().into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn undo_takes_the_disks_back() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.qcow2"), d.path().join("b.qcow2"));
        for p in [&a, &b] {
            let opts = CreateOptions {
                size: 1 << 20,
                ..Default::default()
            };
            Qcow2::create_file(p, &opts).unwrap();
        }
        let overlay = d.path().join("b.s1");
        let actions = vec![
            Action::SnapshotInternal {
                file: a.clone(),
                name: Some("s1".into()),
            },
            Action::SnapshotExternal {
                file: b.clone(),
                overlay: Some(overlay.clone()),
                name: Some("s1".into()),
                reuse: false,
            },
        ];
        transaction::run(&actions).unwrap();
        assert_eq!(snapshots_of(&a), ["s1"]);
        assert!(overlay.exists());
        undo_disks(&actions, "s1", &Held::none());
        assert!(snapshots_of(&a).is_empty());
        assert!(!overlay.exists());
    }

    #[test]
    fn diskspecs_parse_as_virsh_writes_them() {
        let d = DiskSpec::parse("vdb,file=/x/y.qcow2").unwrap();
        assert_eq!(d.mode, Some(DiskMode::External));
        assert_eq!(
            DiskSpec::parse("vda,snapshot=no").unwrap().mode,
            Some(DiskMode::No)
        );
        for bad in [
            "",
            ",snapshot=no",
            "vda,snapshot=maybe",
            "vda,driver=raw",
            "vda,x=1",
            "vda,oops",
        ] {
            assert!(DiskSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
