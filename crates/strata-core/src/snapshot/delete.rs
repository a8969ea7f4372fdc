//! `snapshot delete` of a machine that is not running.
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

use std::path::PathBuf;

use strata_image::transaction::Action;

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::lock::DomainLock;
use crate::refs::{self, canon, Graph};
use crate::snapshot::merge::{self, Merge, World};
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::{SnapshotRow, Store};
use crate::tree;

/// What to delete besides (or instead of) the snapshot itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteRequest {
    /// The snapshot and all its descendants.
    pub children: bool,
    /// Only its descendants.
    pub children_only: bool,
    /// Metadata only: disks are not touched.
    pub metadata_only: bool,
}

/// Deletes snapshot `name` of `domain` (and what `req` adds); returns the
/// names deleted.
#[tracing::instrument(skip_all, fields(domain = %domain, snapshot = %name, op = "snapshot delete"))]
pub fn delete(
    store: &mut Store,
    domain: &str,
    name: &str,
    req: DeleteRequest,
) -> Result<Vec<String>> {
    let _lock = DomainLock::acquire(store.dir(), domain)?;
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
        return Ok(set);
    }
    // Reversed, every snapshot goes after its descendants.
    let mut done = Vec::new();
    for n in set.iter().rev() {
        if let Err(e) = delete_one(store, domain, n) {
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
    Ok(set)
}

/// Deletes one snapshot with its disks.
fn delete_one(store: &mut Store, domain: &str, name: &str) -> Result<()> {
    let what = format!("domain '{domain}': delete snapshot '{name}'");
    let row = store.snapshot(domain, name)?;
    let def = SnapshotDef::from_xml(&row.xml, &what)?;
    let then = def.domain.clone().map(Domain::from_element);
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
    for d in def.disks.iter().filter(|d| d.mode != DiskMode::No) {
        let file = then
            .as_ref()
            .and_then(|t| t.disks().into_iter().find(|x| x.target == d.name))
            .and_then(|x| x.source)
            .ok_or_else(|| {
                Error::invalid(&what, format!("disk '{}': image not recorded", d.name))
            })?;
        match d.mode {
            DiskMode::Internal => internal.push(Action::SnapshotDeleteInternal {
                file,
                name: name.to_string(),
            }),
            _ => merges.extend(merge::plan(&world, &d.name, &file)?),
        }
    }
    let guard = format!("strata-merge-guard-{}", std::process::id());
    merge::run(&merges, internal, &guard).map_err(|e| Error::invalid(&what, e.to_string()))?;
    let (rewrites, new_dom) = rewrite_references(store, domain, name, &merges)?;
    store.delete_snapshots_rewriting(domain, &[name.to_string()], &rewrites, new_dom.as_ref())?;
    refs::collect_or_warn(store, domain);
    Ok(())
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
