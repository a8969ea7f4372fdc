//! `snapshot delete` of a machine that is not running.
//!
//! The snapshot's internal snapshots are deleted from the images that hold
//! them, in one all-or-nothing image transaction; deleting an internal
//! snapshot never changes what any image reads. Its children are re-parented
//! to its parent, and if it was current its parent becomes current.
//! `--metadata` drops only the metadata. `--children` and `--children-only`
//! take the descendants too (with their disks: one snapshot at a time is
//! supported for now, so with disks only a single snapshot can go).
//!
//! Deleting an external snapshot with its disks means merging overlays into
//! the images below them. That is refused for now (with `--metadata` as the
//! way out): done wrong it loses data of other branches, and it is built
//! next with the tests it needs.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::lock::DomainLock;
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::{SnapshotRow, Store};
use strata_image::transaction::Action;

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

fn descendants(rows: &[SnapshotRow], name: &str, out: &mut Vec<String>) {
    for r in rows.iter().filter(|r| r.parent.as_deref() == Some(name)) {
        out.push(r.name.clone());
        descendants(rows, &r.name, out);
    }
}

/// Deletes snapshot `name` of `domain` (and what `req` adds); returns the
/// names deleted.
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
        descendants(&rows, name, &mut set);
    }
    if !req.metadata_only && !set.is_empty() {
        if set.len() > 1 {
            return Err(Error::invalid(
                what,
                format!(
                    "{} snapshots would go with their disks; one at a time is supported for now (or use --metadata)",
                    set.len()
                ),
            ));
        }
        let def = SnapshotDef::from_xml(&row.xml, &what)?;
        let then = def.domain.clone().map(Domain::from_element);
        let mut actions = Vec::new();
        for d in def.disks.iter().filter(|d| d.mode != DiskMode::No) {
            if d.mode == DiskMode::External {
                return Err(Error::invalid(
                    &what,
                    format!(
                        "disk '{}' was snapshotted externally: merging its overlay is not supported yet; --metadata drops only the metadata (the files stay)",
                        d.name
                    ),
                ));
            }
            let file = then
                .as_ref()
                .and_then(|t| t.disks().into_iter().find(|x| x.target == d.name))
                .and_then(|x| x.source)
                .ok_or_else(|| {
                    Error::invalid(&what, format!("disk '{}': image not recorded", d.name))
                })?;
            actions.push(Action::SnapshotDeleteInternal {
                file,
                name: name.to_string(),
            });
        }
        if !actions.is_empty() {
            crate::faults::run(&actions).map_err(|e| Error::invalid(&what, e.to_string()))?;
        }
    }
    store.delete_snapshots(domain, &set)?;
    Ok(set)
}
