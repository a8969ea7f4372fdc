//! `snapshot delete`.
//!
//! Deleting a snapshot with its disks never changes what the current state
//! or any other snapshot reads:
//! - a disk snapshotted internally has the internal snapshot deleted from
//!   the image holding it;
//! - a disk snapshotted externally has the overlay above the snapshot's
//!   image merged into that image when that is safe
//!   ([`crate::snapshot::merge`]); references to the overlay (the domain's
//!   disk, other snapshots) then name the merged image, and images above
//!   the overlay are re-pointed at it. When it is not safe the files stay.
//!
//! Each snapshot's disk changes are one all-or-nothing step. Afterwards
//! the files strata made that nothing needs any more are deleted.
//! Children are re-parented to the snapshot's parent, and if it was current
//! its parent becomes current. `--children` and `--children-only` take the
//! descendants too, deepest first, one snapshot at a time; `--metadata`
//! drops only the metadata.
//!
//! Of a running domain ([`delete_on`] with the daemon's disks), internal
//! snapshots of the images the guest writes to are deleted with the
//! guest's requests held back on every disk. An external snapshot's merge
//! of an image the guest reads is a block job ([`crate::blockjob`]): a
//! commit of the overlay into the snapshot's image while the guest runs
//! (an active one when the overlay is what the guest writes to), every
//! disk's copy first, then one instant where every disk's chain changes
//! and the internal snapshots go; a copy that fails gives every job up
//! and nothing changes. Merges of files no disk serves are made as
//! offline. Refused while the domain runs: an internal snapshot held in an
//! image below the one the guest writes to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_image::transaction::{Action, Held};

use crate::blockjob::{self, BlockRequest, Layers};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::live::{Disks, Offline};
use crate::refs::{self, canon, Graph};
use crate::snapshot::merge::{self, Merge, World};
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::{SnapshotRow, Store};
use crate::tree;

/// What to delete besides (or instead of) the snapshot itself.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteRequest {
    /// The snapshot and all its descendants.
    pub children: bool,
    /// Only its descendants.
    pub children_only: bool,
    /// Metadata only: disks are not touched.
    pub metadata_only: bool,
}

/// Snapshots deleted.
#[derive(Clone, Debug, Default)]
pub struct Deleted {
    /// Their names, in the order asked.
    pub names: Vec<String>,
    /// Of a running domain: how long the guest's disks took no request,
    /// over all the deletions.
    pub stall: Option<Duration>,
}

/// Deletes snapshot `name` of `domain`, which does not run (and what `req`
/// adds); returns the names deleted.
pub fn delete(
    store: &mut Store,
    domain: &str,
    name: &str,
    req: DeleteRequest,
) -> Result<Vec<String>> {
    delete_on(store, domain, name, req, &Offline).map(|d| d.names)
}

/// Deletes snapshot `name` of `domain` (and what `req` adds) on `disks`:
/// offline, or the disks a daemon serves to the running guest.
#[tracing::instrument(skip_all, fields(domain = %domain, snapshot = %name, op = "snapshot delete"))]
pub fn delete_on(
    store: &mut Store,
    domain: &str,
    name: &str,
    req: DeleteRequest,
    disks: &dyn Disks,
) -> Result<Deleted> {
    let _lock = disks.lock(store.dir(), domain)?;
    let rows = store.snapshots(domain)?;
    let what = format!("domain '{domain}': delete snapshot '{name}'");
    if req.children && req.children_only {
        return Err(Error::invalid(
            what,
            "--children and --children-only exclude each other",
        ));
    }
    let row = store.snapshot(domain, name)?;
    let mut set = Vec::new();
    if !req.children_only {
        set.push(row.name.clone());
    }
    if req.children || req.children_only {
        set.extend(tree::below(&SnapshotRow::nodes(&rows), name, true));
    }
    if req.metadata_only || set.is_empty() {
        store.delete_snapshots(domain, &set)?;
        // Files only those snapshots needed are the user's now.
        refs::disown_unneeded(store, domain)?;
        return Ok(Deleted {
            names: set,
            stall: disks.live().then_some(Duration::ZERO),
        });
    }
    let held = disks.held();
    if disks.live() {
        // Everything that cannot be done live is refused before anything
        // is deleted.
        for n in &set {
            plan_live(store, domain, n, &held)?;
        }
    }
    // Reversed, every snapshot goes after its descendants.
    let mut done = Vec::new();
    let mut stall = disks.live().then_some(Duration::ZERO);
    for n in set.iter().rev() {
        let memory_file = external_memory(store, domain, n)?;
        let one = delete_one(store, domain, n, disks, &held);
        if let (Ok(_), Some(file)) = (&one, memory_file) {
            // Its memory file goes with it (libvirt removes it too).
            if let Err(e) = std::fs::remove_file(&file) {
                tracing::warn!(file = %file.display(), error = %e, "cannot remove the snapshot's memory file");
            }
        }
        if let (Ok(Some(d)), Some(total)) = (&one, stall.as_mut()) {
            *total += *d;
        }
        if let Err(e) = one {
            if done.is_empty() {
                return Err(e);
            }
            return Err(Error::invalid(
                format!("domain '{domain}': delete snapshot '{n}'"),
                format!("{e} (already deleted: {})", done.join(", ")),
            ));
        }
        done.push(n.clone());
    }
    Ok(Deleted { names: set, stall })
}

/// Each disk of snapshot `name` with the image holding it then.
fn disks_of(store: &Store, domain: &str, name: &str) -> Result<Vec<(String, DiskMode, PathBuf)>> {
    let what = format!("domain '{domain}': delete snapshot '{name}'");
    let row = store.snapshot(domain, name)?;
    let def = SnapshotDef::from_xml(&row.xml, &what)?;
    let then = def.domain.clone().map(Domain::from_element);
    def.disks
        .iter()
        .filter(|d| d.mode != DiskMode::No)
        .map(|d| {
            let file = then
                .as_ref()
                .and_then(|t| t.disks().into_iter().find(|x| x.target == d.name))
                .and_then(|x| x.source)
                .ok_or_else(|| {
                    Error::invalid(&what, format!("disk '{}': image not recorded", d.name))
                })?;
            Ok((d.name.clone(), d.mode, file))
        })
        .collect()
}

/// Refuses what deleting snapshot `name` would need that a running domain
/// cannot do: a merge (an external disk), or an internal snapshot in an
/// image below the one served (`held`).
fn plan_live(store: &Store, domain: &str, name: &str, held: &Held) -> Result<()> {
    for (disk, mode, file) in disks_of(store, domain, name)? {
        let what = format!("domain '{domain}': delete snapshot '{name}': disk '{disk}'");
        if mode == DiskMode::Internal && held.get(&file).is_none() {
            return Err(Error::invalid(
                what,
                format!(
                    "the internal snapshot is in {}, below the image the running guest writes to: delete it once the domain is shut off",
                    file.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The file snapshot `name` of `domain` keeps its memory in, if it is
/// external memory.
fn external_memory(store: &Store, domain: &str, name: &str) -> Result<Option<std::path::PathBuf>> {
    let def = store.snapshot(domain, name)?.def()?;
    Ok(def
        .memory
        .as_ref()
        .filter(|m| m.attr("snapshot") == Some("external"))
        .and_then(|m| m.attr("file"))
        .map(std::path::PathBuf::from))
}

/// Deletes one snapshot with its disks; of a running domain, returns how
/// long the guest's disks were held back.
fn delete_one(
    store: &mut Store,
    domain: &str,
    name: &str,
    disks: &dyn Disks,
    held: &Held,
) -> Result<Option<Duration>> {
    let what = format!("domain '{domain}': delete snapshot '{name}'");
    let mut graph = Graph::default();
    let roots = refs::roots(store, Some((domain, name)))?;
    let needed = refs::needed(&mut graph, &roots);
    let made: Vec<PathBuf> = store.made_files(domain)?.iter().map(|f| canon(f)).collect();
    let world = World {
        graph: &graph,
        roots: &roots,
        needed: &needed,
        made: &made,
    };
    let mut internal = Vec::new();
    let mut merges = Vec::new();
    for (disk, mode, file) in disks_of(store, domain, name)? {
        match mode {
            DiskMode::Internal => internal.push(Action::SnapshotDeleteInternal {
                file,
                name: name.to_string(),
            }),
            _ => merges.extend(merge::plan(&world, &disk, &file)?),
        }
    }
    let stall = if disks.live() {
        Some(delete_live(
            store, domain, name, disks, held, &merges, &internal,
        )?)
    } else {
        let guard = format!("strata-merge-guard-{}", std::process::id());
        merge::run(&merges, internal, &guard).map_err(|e| Error::invalid(&what, e.to_string()))?;
        None
    };
    let (rewrites, new_dom) = rewrite_references(store, domain, name, &merges)?;
    store.delete_snapshots_rewriting(domain, &[name.to_string()], &rewrites, new_dom.as_ref())?;
    refs::collect_or_warn(store, domain);
    Ok(stall)
}

/// The disk changes of deleting snapshot `name` of a running domain:
/// merges of served images as block jobs (copies first, while the guest
/// runs), the other merges as offline, then at one instant the jobs'
/// chains and the internal snapshots' deletion. Returns the stall.
fn delete_live(
    store: &mut Store,
    domain: &str,
    name: &str,
    disks: &dyn Disks,
    held: &Held,
    merges: &[Merge],
    internal: &[Action],
) -> Result<Duration> {
    let what = format!("domain '{domain}': delete snapshot '{name}'");
    let served: Vec<Layers> = held.images().into_iter().map(Layers::of).collect();
    let is_served = |f: &std::path::Path| served.iter().any(|l| l.depth(f).is_some());
    let (live, offline): (Vec<&Merge>, Vec<&Merge>) =
        merges.iter().partition(|m| is_served(&m.top));
    let mut jobs = Vec::new();
    for m in live {
        // The overlay is what the guest writes to: an active commit.
        let active = served.iter().any(|l| l.depth(&m.top) == Some(0));
        let req = BlockRequest {
            disk: m.disk.clone(),
            top: (!active).then(|| m.top.clone()),
            base: Some(m.base.clone()),
            active,
            ..BlockRequest::default()
        };
        let copied = blockjob::begin_leaving(store, domain, &req, disks, Some((domain, name)))
            .and_then(|job| job.run().map(|()| job));
        match copied {
            Ok(job) => jobs.push(job),
            Err(e) => {
                for j in jobs {
                    if let Err(a) = j.abort(domain, disks) {
                        tracing::error!(error = %a, "giving a merge up");
                    }
                }
                return Err(Error::invalid(
                    &what,
                    format!(
                        "disk '{}': merging {} into {}: {e}",
                        m.disk,
                        m.top.display(),
                        m.base.display()
                    ),
                ));
            }
        }
    }
    let offline: Vec<Merge> = offline.into_iter().cloned().collect();
    if !offline.is_empty() {
        let guard = format!("strata-merge-guard-{}", std::process::id());
        merge::run(&offline, Vec::new(), &guard)
            .map_err(|e| Error::invalid(&what, e.to_string()))?;
    }
    let mut quiesced = disks.quiesce()?;
    let paused_at = quiesced.paused_at();
    if !internal.is_empty() {
        crate::faults::run(internal, held).map_err(|e| Error::invalid(&what, e.to_string()))?;
    }
    blockjob::complete_under(jobs, store, domain, quiesced.as_mut())?;
    drop(quiesced);
    // Images built on a merged overlay that no disk serves (another
    // branch) are pointed at its base too.
    for m in merges.iter().filter(|m| is_served(&m.top)) {
        for f in m.above.iter().filter(|f| !is_served(f)) {
            merge::set_backing(f, &m.base)?;
        }
    }
    Ok(paused_at.elapsed())
}

/// New XML of surviving snapshots `(name, xml)`, and the new domain
/// definition if it changed.
type Rewrites = (Vec<(String, String)>, Option<Domain>);

/// The snapshot XML and domain definition with every reference to a
/// merged overlay replaced by the image it was merged into.
fn rewrite_references(
    store: &Store,
    domain: &str,
    deleted: &str,
    merges: &[Merge],
) -> Result<Rewrites> {
    if merges.is_empty() {
        return Ok((Vec::new(), None));
    }
    let swap = |p: &std::path::Path| {
        let c = canon(p);
        merges.iter().find(|m| m.top == c).map(|m| m.base.clone())
    };
    let repoint = |dom: &mut Domain| -> Result<bool> {
        let mut changed = false;
        for d in dom.disks() {
            if let Some(b) = d.source.as_deref().and_then(swap) {
                dom.set_disk_source(&d.target, &b, "qcow2")?;
                changed = true;
            }
        }
        Ok(changed)
    };
    let mut rewrites = Vec::new();
    for row in store.snapshots(domain)? {
        if row.name == deleted {
            continue;
        }
        let mut def = row.def()?;
        let mut changed = false;
        if let Some(el) = def.domain.clone() {
            let mut then = Domain::from_element(el);
            if repoint(&mut then)? {
                def.domain = Some(then.element().clone());
                changed = true;
            }
        }
        for d in &mut def.disks {
            if let Some(b) = d.source.as_deref().and_then(swap) {
                d.source = Some(b);
                changed = true;
            }
        }
        if changed {
            rewrites.push((row.name.clone(), def.to_xml(true)));
        }
    }
    let mut dom = store.domain(domain)?;
    let new_dom = repoint(&mut dom)?.then_some(dom);
    Ok((rewrites, new_dom))
}
