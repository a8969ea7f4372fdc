//! `checkpoint list`'s query, as virsh's checkpoint-list filters it:
//! roots, leaves, non-leaves, in stored or topological order.

use std::collections::HashSet;

use super::{checkpoints, CheckpointDef};
use crate::error::Result;
use crate::store::Store;
use crate::tree;

/// Which checkpoints to list, and in which order.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListFilter {
    /// Only checkpoints without a parent.
    pub roots: bool,
    /// Only checkpoints without children.
    pub leaves: bool,
    /// Only checkpoints with children.
    pub no_leaves: bool,
    /// Parents before children, instead of oldest first.
    pub topological: bool,
}

/// The checkpoints of `domain` as tree nodes (name, parent), oldest first.
pub fn nodes(all: &[CheckpointDef]) -> Vec<tree::Node> {
    all.iter()
        .map(|c| (c.name.clone(), c.parent.clone()))
        .collect()
}

/// The checkpoints of `domain` that `f` lets through, in its order.
pub fn list(store: &Store, domain: &str, f: ListFilter) -> Result<Vec<CheckpointDef>> {
    let mut all = checkpoints(store, domain)?;
    let nodes = nodes(&all);
    if f.topological {
        let order = tree::topological(&nodes);
        all = order.into_iter().map(|i| all[i].clone()).collect();
    }
    let parents: HashSet<&str> = nodes.iter().filter_map(|(_, p)| p.as_deref()).collect();
    all.retain(|c| {
        let has_children = parents.contains(c.name.as_str());
        (!f.roots || c.parent.is_none())
            && (!f.leaves || !has_children)
            && (!f.no_leaves || has_children)
    });
    Ok(all)
}
