//! The health of checkpoints: whether "what changed since checkpoint X" can
//! still be answered exactly on every disk, and if not, why. An incremental
//! backup from a checkpoint whose answer is wrong would silently miss
//! changes; this is what `checkpoint verify`, `checkpoint dumpxml --size`
//! and `backup begin` (before any incremental) ask.
//!
//! A disk of checkpoint X is sound when, for X and every later checkpoint
//! with a bitmap on the disk, the bitmap is in the disk's chain and
//! consistent (not left in use by an unclean shutdown, no unknown extra
//! data); the newest of them is enabled in the top layer and present in
//! every layer from the top down to where it was made; see
//! [`super::disk_changed`].

use strata_image::transaction::Held;

use super::{checkpoints, disk_chain, disk_changed, position};
use crate::error::Result;
use crate::store::Store;

/// One disk of one checkpoint, checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskHealth {
    /// The checkpoint.
    pub checkpoint: String,
    /// The disk target (`vda`).
    pub disk: String,
    /// The checkpoint's bitmap on the disk.
    pub bitmap: String,
    /// Bytes changed since the checkpoint (`None` when it cannot be told).
    pub changed: Option<u64>,
    /// Why the changes cannot be told (`None`: sound).
    pub problem: Option<String>,
}

impl DiskHealth {
    /// True when an incremental backup from this checkpoint is exact.
    pub fn sound(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks checkpoint `name` of `domain` (every checkpoint: `None`), each
/// disk with a bitmap, reading the `held` images where held.
pub fn verify(
    store: &Store,
    domain: &str,
    name: Option<&str>,
    held: &Held,
) -> Result<Vec<DiskHealth>> {
    let all = checkpoints(store, domain)?;
    let range = match name {
        Some(n) => {
            let at = position(&all, domain, n)?;
            at..at + 1
        }
        None => 0..all.len(),
    };
    let dom = store.domain(domain)?;
    // A creation cut short shows as a disabled newest bitmap until the
    // next checkpoint operation undoes it: say so.
    let cut_short = store.checkpoint_intent(domain)?.map(|i| {
        format!(
            " (checkpoint '{}' was cut short while being made: the next checkpoint operation on the domain undoes it, and the writes are counted again)",
            i.name
        )
    });
    let mut out = Vec::new();
    for at in range {
        for d in &all[at].disks {
            let Some(bitmap) = d.bitmap.clone() else {
                continue;
            };
            let answer = disk_chain(&dom, &d.name, held).and_then(|chain| match chain {
                Some(c) => disk_changed(&all, at, &d.name, c.as_ref()).map(Some),
                None => Ok(None),
            });
            let (changed, problem) = match answer {
                Ok(Some(ranges)) => (Some(ranges.iter().map(|r| r.1).sum()), None),
                Ok(None) => (None, Some("the disk is no longer in the domain".into())),
                Err(e) => (
                    None,
                    Some(format!("{e}{}", cut_short.as_deref().unwrap_or_default())),
                ),
            };
            out.push(DiskHealth {
                checkpoint: all[at].name.clone(),
                disk: d.name.clone(),
                bitmap,
                changed,
                problem,
            });
        }
    }
    Ok(out)
}

/// Why an incremental backup of `disk` since checkpoint `name` would not
/// be exact (`None`: it would be); only that disk's chain is read.
pub fn problem(store: &Store, domain: &str, name: &str, disk: &str, held: &Held) -> Option<String> {
    super::disk_ranges_in(store, domain, name, disk, held)
        .err()
        .map(|e| e.to_string())
}
