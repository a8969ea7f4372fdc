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
//!
//! Where that removal is not one step (an object store looks at the
//! time, then deletes), a touch can fall between the two and be lost. So
//! a collection leaves a record, `gc/TAG.running` while it runs (written
//! again every [`HEARTBEAT`]; it deletes nothing once it could not) and
//! `gc/TAG.done` when it ends; and a writer, just before its manifest,
//! waits for the collections running then to end (one that starts later
//! finds every chunk the writer touched young), then, if one ran at any
//! time since the writer opened the repository, touches every chunk its
//! backup names again: one gone fails the backup clearly
//! ([`crate::Error::Collected`]) instead of committing it broken.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
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
    if dry_run {
        return sweep(repo, cutoff, removed, true, &|| Ok(()));
    }
    let backend = repo.backend();
    let tag = crate::hex::encode(&crate::seal::random::<8>());
    let running = format!("{RECORDS}{tag}.running");
    backend.put(&running, b"")?;
    let beat = std::sync::Mutex::new(Instant::now());
    let over = std::sync::atomic::AtomicBool::new(false);
    // Before each deletion: the record was written again recently enough
    // that no writer takes this collection for dead.
    let alive = || -> Result<()> {
        let last = *beat.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= STALE / 3 {
            return Err(Error::invalid(
                backend.describe(),
                "garbage collection stopped: its record could not be kept fresh",
            ));
        }
        Ok(())
    };
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut next = Instant::now() + HEARTBEAT;
            while !over.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    next = Instant::now() + HEARTBEAT;
                    let at = Instant::now();
                    if backend.put(&running, b"").is_ok() {
                        *beat.lock().unwrap_or_else(|e| e.into_inner()) = at;
                    }
                }
            }
        });
        let out = sweep(repo, cutoff, removed, false, &alive);
        over.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let ended = backend
        .put(&format!("{RECORDS}{tag}.done"), b"")
        .and_then(|()| backend.delete(&running))
        .and_then(|()| forget_records(repo, &tag, grace));
    let out = out?;
    ended?;
    Ok(out)
}

/// Where collections leave their records.
pub const RECORDS: &str = "gc/";

/// How often a running collection writes its record again.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// A running record older than this is a collection that died (with room
/// for clocks that differ between hosts).
pub const STALE: Duration = Duration::from_secs(180);

/// How far writers' clocks may be behind the store's.
const SKEW: Duration = Duration::from_secs(120);

/// Removes the records of collections other than `tag` that ended, or
/// died, long enough ago that no writer may still care (a day more than
/// the grace period).
fn forget_records(repo: &Repo, tag: &str, grace: Duration) -> Result<()> {
    let keep = grace.max(Duration::from_secs(86_400)) + Duration::from_secs(86_400);
    let old = SystemTime::now()
        .checked_sub(keep)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for r in repo.backend().list_meta(RECORDS)? {
        if r.time < old && !r.name.starts_with(&format!("{RECORDS}{tag}.")) {
            repo.backend().delete(&r.name)?;
        }
    }
    Ok(())
}

/// What a writer does before its manifest (see the module doc): waits
/// for running collections to end, then, when one ran since `opened`,
/// checks (touching them) that every chunk `chunks` gives is there.
pub(crate) fn settle(
    repo: &Repo,
    opened: SystemTime,
    chunks: &dyn Fn() -> Result<BTreeSet<ChunkId>>,
) -> Result<()> {
    let since = opened.checked_sub(SKEW).unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh = |r: &crate::backend::Listed, now: SystemTime| {
        r.name.ends_with(".running") && r.time + STALE > now
    };
    // Only collections running now can still delete what this backup
    // touched; one that starts later finds it young (the grace period).
    let records = repo.backend().list_meta(RECORDS)?;
    let mut ran = records.iter().any(|r| r.time >= since);
    let now = SystemTime::now();
    let mut waiting: BTreeSet<String> = records
        .iter()
        .filter(|r| fresh(r, now))
        .map(|r| r.name.clone())
        .collect();
    while !waiting.is_empty() {
        ran = true;
        std::thread::sleep(Duration::from_millis(500));
        let now = SystemTime::now();
        let still: BTreeSet<String> = repo
            .backend()
            .list_meta(RECORDS)?
            .iter()
            .filter(|r| fresh(r, now))
            .map(|r| r.name.clone())
            .collect();
        waiting.retain(|n| still.contains(n));
    }
    if !ran {
        return Ok(());
    }
    let ids: Vec<ChunkId> = chunks()?.into_iter().collect();
    crate::write::on_workers(
        ids.len() as u64,
        || (),
        |_, k| {
            let name = crate::chunk::name(&ids[k as usize]);
            match repo.backend().touch(&name)? {
                true => Ok(()),
                false => Err(Error::Collected { object: name }),
            }
        },
    )
}

/// Mark and sweep (see [`collect`]); `alive` is asked before each
/// deletion.
fn sweep(
    repo: &Repo,
    cutoff: SystemTime,
    removed: &[String],
    dry_run: bool,
    alive: &dyn Fn() -> Result<()>,
) -> Result<Collected> {
    let mut used: BTreeSet<ChunkId> = BTreeSet::new();
    let mut indexes: BTreeSet<String> = BTreeSet::new();
    for id in repo.backup_ids()? {
        if removed.contains(&id) {
            continue;
        }
        // One removed since the listing (a prune elsewhere) names
        // nothing; an index missing under a manifest still there is a
        // doubt, and stops the collection.
        let m = match repo.backup(&id) {
            Ok(m) => m,
            Err(Error::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        let mut named = Vec::new();
        for d in &m.disks {
            match repo.get_index(d) {
                Ok(ix) => named.push(ix),
                Err(Error::Missing { .. })
                    if !repo
                        .backend()
                        .exists(&crate::manifest::Manifest::object(&id))? =>
                {
                    named.clear();
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        for (d, ix) in m.disks.iter().zip(&named) {
            used.extend(ix.chunks.iter().flatten().copied());
            indexes.insert(d.index.clone());
        }
    }
    let backend = repo.backend();
    let gone = |name: &str| -> Result<bool> {
        alive()?;
        backend.delete_if_older(name, cutoff)
    };
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
        } else if dry_run || gone(&o.name)? {
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
        if dry_run || gone(&o.name)? {
            out.indexes_deleted += 1;
        }
    }
    if !dry_run {
        out.leftovers_deleted = backend.sweep_leftovers(cutoff)?;
        backend.sync()?;
    }
    Ok(out)
}
