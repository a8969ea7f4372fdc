//! `snapshot list`'s query, as virsh's snapshot-list filters it: roots,
//! leaves, non-leaves, the current one, external, internal or disk-only
//! snapshots, those under one (`--from`, with `--descendants` all the way
//! down), in stored or topological order.

use serde::Serialize;

use crate::error::Result;
use crate::store::{SnapshotRow, Store};
use crate::tree;

/// Which snapshots to list, and in which order. Every filter that is on
/// must hold.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only snapshots without a parent.
    pub roots: bool,
    /// Only snapshots without children.
    pub leaves: bool,
    /// Only snapshots with children.
    pub no_leaves: bool,
    /// Only the current snapshot.
    pub current: bool,
    /// Only snapshots with an external disk.
    pub external: bool,
    /// Only snapshots whose disks are all internal.
    pub internal: bool,
    /// Only disk-only snapshots.
    pub disk_only: bool,
    /// Only the children of this snapshot (with `descendants`, everything
    /// below it).
    pub from: Option<String>,
    /// With `from`: every descendant, not only children.
    pub descendants: bool,
    /// Parents before children, instead of stored order.
    pub topological: bool,
}

/// One snapshot as `snapshot list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Its parent's name.
    pub parent: Option<String>,
    /// Seconds since the Epoch.
    pub creation_time: i64,
    /// libvirt's state word (`shutoff`, `disk-snapshot`, …).
    pub state: String,
    /// Whether it is the current snapshot.
    pub current: bool,
    /// `internal` or `external`.
    pub location: &'static str,
}

/// The snapshots of `domain` that `f` lets through, in its order; an
/// unknown `from` is an error naming it.
pub fn list(store: &Store, domain: &str, f: &ListFilter) -> Result<Vec<Listed>> {
    let rows = store.snapshots(domain)?;
    let nodes = SnapshotRow::nodes(&rows);
    let under = match &f.from {
        Some(from) => {
            store.snapshot(domain, from)?;
            Some(
                tree::below(&nodes, from, f.descendants)
                    .into_iter()
                    .collect::<std::collections::HashSet<_>>(),
            )
        }
        None => None,
    };
    let parents: std::collections::HashSet<&str> =
        rows.iter().filter_map(|r| r.parent.as_deref()).collect();
    let order: Vec<usize> = if f.topological {
        tree::topological(&nodes)
    } else {
        (0..rows.len()).collect()
    };
    let mut listed = Vec::new();
    for r in order.into_iter().map(|i| &rows[i]) {
        let def = r.def()?;
        let has_children = parents.contains(r.name.as_str());
        let keep = (!f.roots || r.parent.is_none())
            && under.as_ref().is_none_or(|u| u.contains(&r.name))
            && (!f.leaves || !has_children)
            && (!f.no_leaves || has_children)
            && (!f.current || r.current)
            && (!f.external || def.is_external())
            && (!f.internal || !def.is_external())
            && (!f.disk_only || def.state == "disk-snapshot");
        if keep {
            listed.push(Listed {
                name: r.name.clone(),
                parent: r.parent.clone(),
                creation_time: r.created,
                state: def.state.clone(),
                current: r.current,
                location: if def.is_external() {
                    "external"
                } else {
                    "internal"
                },
            });
        }
    }
    Ok(listed)
}
