//! Garbage collection: what no backup names goes, without a lock between
//! the hosts that write (docs/repo.md, "Prune and garbage collection").
//!
//! Mark: every manifest there is read, and every index it names; an
//! object that cannot be read stops the collection (nothing is deleted on
//! a doubt). Sweep: a chunk no index names, and an index no manifest
//! names, is deleted only when it was neither made nor touched during the
//! grace period before the collection began. Writers touch every chunk
//! they name that they did not write (found there already, or taken from
//! the parent's index), so a backup in progress keeps what it uses as
//! long as it takes less than the grace period; and a touch racing the
//! deletion either keeps the chunk or finds it gone, and the writer
//! writes it again ([`crate::backend::Backend::delete_if_older`]).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::keys::ChunkId;
use crate::repo::Repo;

/// What a collection found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Collected {
    /// Chunks that backups name.
    pub chunks_in_use: u64,
    /// Chunks deleted (or, in a dry run, that would be).
    pub chunks_deleted: u64,
    /// Their bytes as stored.
    pub bytes_deleted: u64,
    /// Chunks no backup names, kept for the grace period.
    pub chunks_in_grace: u64,
    /// Indexes of no backup deleted (a killed or removed backup's).
    pub indexes_deleted: u64,
    /// Leftovers of killed writers deleted.
    pub leftovers_deleted: u64,
}

/// Collects the garbage of `repo`: what no backup but those in `removed`
/// names (`removed` are taken as gone: a dry run of prune passes the
/// backups it would remove), older than `grace`. With `dry_run`, nothing
/// is deleted and the figures say what would be.
pub fn collect(
    repo: &Repo,
    grace: Duration,
    removed: &[String],
    dry_run: bool,
) -> Result<Collected> {
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut used: BTreeSet<ChunkId> = BTreeSet::new();
    let mut indexes: BTreeSet<String> = BTreeSet::new();
    for id in repo.backup_ids()? {
        if removed.contains(&id) {
            continue;
        }
        let m = repo.backup(&id)?;
        for d in &m.disks {
            let ix = repo.get_index(d)?;
            used.extend(ix.chunks.iter().flatten().copied());
            indexes.insert(d.index.clone());
        }
    }
    let backend = repo.backend();
    let mut out = Collected {
        chunks_in_use: used.len() as u64,
        ..Collected::default()
    };
    for o in backend.list_meta("chunks/")? {
        if crate::chunk::id_of(&o.name).is_some_and(|id| used.contains(&id)) {
            continue;
        }
        if o.time >= cutoff {
            out.chunks_in_grace += 1;
        } else if dry_run || backend.delete_if_older(&o.name, cutoff)? {
            out.chunks_deleted += 1;
            out.bytes_deleted += o.size;
        } else {
            out.chunks_in_grace += 1;
        }
    }
    for o in backend.list_meta("indexes/")? {
        if indexes.contains(&o.name) || o.time >= cutoff {
            continue;
        }
        if dry_run || backend.delete_if_older(&o.name, cutoff)? {
            out.indexes_deleted += 1;
        }
    }
    if !dry_run {
        out.leftovers_deleted = backend.sweep_leftovers(cutoff)?;
        backend.sync()?;
    }
    Ok(out)
}
