//! Backups of a domain that is not running into a strata repository
//! (`strata repo backup`, `docs/repo.md`), and a disk of one back into an
//! image file (`strata repo restore`).
//!
//! Under the domain's lock: every disk (with an image) is read at once
//! chunk by chunk into the repository; with `--incremental`, only the
//! chunks the dirty bitmaps mark as changed since the checkpoint the
//! latest backup of this domain made (the others come from that backup's
//! index, so every backup is whole). Then a checkpoint `repo-FP-ID` (`FP`
//! the repository's fingerprint) marks the instant (nothing wrote since:
//! the lock), and the manifest is written last: a backup interrupted
//! anywhere is not listed, and the next incremental starts from the last
//! one that was. Once it is, the repository's earlier checkpoints go (one
//! per repository stays).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;
use strata_image::qcow2::{CreateOptions, Qcow2};
use strata_image::storage::{FileStorage, Storage};
use strata_image::transaction::Held;
use strata_image::{ChainOptions, Format};
use strata_repo::index::{self, Index};
use strata_repo::manifest::Manifest;
use strata_repo::write::{restore_disk, write_disk, DiskSource};
use strata_repo::Repo;

use crate::checkpoint::{self, CheckpointRequest};
use crate::error::{Error, Result};
use crate::live::Offline;
use crate::lock::DomainLock;
use crate::store::Store;

/// What `repo backup` was asked.
#[derive(Clone, Debug, Default)]
pub struct RepoRequest {
    /// Read only what changed since the latest backup of the domain.
    pub incremental: bool,
    /// When that cannot be told (no earlier backup, its checkpoint gone),
    /// read everything instead of failing.
    pub fallback_full: bool,
    /// The host named in the manifest.
    pub host: String,
}

/// A backup made.
#[derive(Clone, Debug)]
pub struct RepoBackedUp {
    /// Its manifest.
    pub manifest: Manifest,
    /// Why an incremental backup read everything (`--fallback-full`).
    pub fallback: Option<String>,
}

/// The checkpoints backups into `repo` make start so.
pub(crate) fn checkpoint_prefix(repo: &Repo) -> String {
    format!("repo-{}-", repo.fingerprint())
}

/// The latest backup of `domain` (UUID `uuid`) whose checkpoint still
/// exists, with the same disks.
fn parent_of(
    store: &Store,
    repo: &Repo,
    domain: &str,
    uuid: &str,
    disks: &[(String, u64)],
) -> Result<std::result::Result<Manifest, String>> {
    let checkpoints: Vec<String> = store
        .checkpoints(domain)?
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let mine: Vec<Manifest> = repo
        .backups()
        .map_err(repo_error)?
        .into_iter()
        .filter(|m| m.label == domain && m.meta["uuid"] == uuid)
        .collect();
    // The latest: no other follows it (times are in whole seconds).
    let latest = mine
        .iter()
        .filter(|m| !mine.iter().any(|o| o.parent.as_ref() == Some(&m.id)))
        .max_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)))
        .cloned();
    let Some(m) = latest else {
        return Ok(Err(format!(
            "no earlier backup of domain '{domain}' in {}",
            repo.describe()
        )));
    };
    let same: Vec<(String, u64)> = m.disks.iter().map(|d| (d.name.clone(), d.size)).collect();
    let Some(cp) = m.meta["checkpoint"].as_str() else {
        return Ok(Err(format!(
            "the latest backup of domain '{domain}', {}, made no checkpoint (none of its disks keeps bitmaps: qcow2 does, raw does not)",
            m.id
        )));
    };
    Ok(if same != disks {
        Err(format!(
            "the latest backup of domain '{domain}', {}, has other disks or sizes",
            m.id
        ))
    } else if !checkpoints.iter().any(|c| c == cp) {
        Err(format!(
            "the checkpoint '{cp}' of the latest backup of domain '{domain}', {}, is gone",
            m.id
        ))
    } else {
        Ok(m)
    })
}

/// Which chunks of `cs` bytes of a disk of `size` bytes the changed
/// `ranges` touch.
pub(crate) fn changed_chunks(ranges: &[(u64, u64)], size: u64, cs: u32) -> Vec<bool> {
    let mut bits = vec![false; index::count(size, cs) as usize];
    for &(off, len) in ranges.iter().filter(|&&(_, l)| l > 0) {
        let first = (off / cs as u64) as usize;
        let last = ((off + len - 1) / cs as u64).min(bits.len() as u64 - 1) as usize;
        for b in bits.iter_mut().take(last + 1).skip(first) {
            *b = true;
        }
    }
    bits
}

/// Deletes the checkpoints of earlier backups of `domain` into `repo`
/// (the parent's, and any a killed backup left), all but `keep`: the next
/// incremental starts from `keep`. Deleting them merges their bitmaps
/// down; one that cannot go is kept, with a warning.
pub(crate) fn drop_old_checkpoints(store: &mut Store, repo: &Repo, domain: &str, keep: &str) {
    let prefix = checkpoint_prefix(repo);
    let old: Vec<String> = match store.checkpoints(domain) {
        Ok(all) => all
            .into_iter()
            .map(|(n, _, _)| n)
            .filter(|n| n.starts_with(&prefix) && n != keep)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the earlier backups' checkpoints are kept");
            return;
        }
    };
    for o in old {
        if let Err(e) = checkpoint::delete(store, domain, &o, Default::default()) {
            tracing::warn!(checkpoint = %o, error = %e, "an earlier backup's checkpoint is kept");
        }
    }
}

/// The manifest of backup `id` of domain `dom` (named `domain`) with
/// `disks`, from `parent`, marked by checkpoint `cp` (if any).
pub(crate) fn manifest_of(
    id: &str,
    req: &RepoRequest,
    domain: &str,
    dom: &crate::domain::Domain,
    parent: Option<String>,
    disks: Vec<strata_repo::manifest::DiskEntry>,
    cp: Option<&str>,
) -> Manifest {
    Manifest {
        id: id.to_string(),
        time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: req.host.clone(),
        label: domain.to_string(),
        parent,
        disks,
        meta: json!({
            "domain": domain,
            "uuid": dom.uuid(),
            "xml": dom.to_xml(false),
            "checkpoint": cp,
        }),
    }
}

/// The parent of an incremental backup (`None` for a full one) and why
/// an incremental one reads everything (`--fallback-full`); an error when
/// it cannot be incremental and may not fall back.
pub(crate) fn parent_for(
    store: &Store,
    repo: &Repo,
    domain: &str,
    uuid: &str,
    req: &RepoRequest,
    disks: &[(String, u64)],
    what: &str,
) -> Result<(Option<Manifest>, Option<String>)> {
    if !req.incremental {
        return Ok((None, None));
    }
    match parent_of(store, repo, domain, uuid, disks)? {
        Ok(p) => Ok((Some(p), None)),
        Err(why) if req.fallback_full => Ok((None, Some(why))),
        Err(why) => Err(Error::invalid(
            what,
            format!(
                "{why}: nothing to be incremental from (a full backup first, or --fallback-full)"
            ),
        )),
    }
}

/// A repository error, as core's.
pub(crate) fn repo_error(e: strata_repo::Error) -> Error {
    Error::invalid("repository", e.to_string())
}

/// Backs up `domain`, which must not run, into `repo`. `total` is told the
/// bytes to go over once known, `progress` each chunk's bytes once done.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "repo backup"))]
pub fn back_up(
    store: &mut Store,
    repo: &Repo,
    domain: &str,
    req: &RepoRequest,
    total: &dyn Fn(u64),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RepoBackedUp> {
    let lock = DomainLock::acquire(store.dir(), domain)?;
    checkpoint::recover(store, domain, &Offline)?;
    let dom = store.domain(domain)?;
    let what = format!("domain '{domain}': repo backup");
    let sources: Vec<(String, PathBuf)> = dom
        .disks()
        .into_iter()
        .filter(|d| d.device == "disk")
        .filter_map(|d| d.source.map(|s| (d.target, s)))
        .collect();
    if sources.is_empty() {
        return Err(Error::invalid(what, "the domain has no disk with an image"));
    }
    let mut images = Vec::new();
    for (target, src) in &sources {
        let img = strata_image::chain::open(src, &ChainOptions::default())
            .map_err(|e| Error::invalid(format!("{what}: disk '{target}'"), e.to_string()))?;
        images.push(img);
    }
    let sizes: Vec<(String, u64)> = sources
        .iter()
        .zip(&images)
        .map(|((t, _), i)| (t.clone(), i.size()))
        .collect();
    let (parent, mut fallback) = parent_for(store, repo, domain, &dom.uuid(), req, &sizes, &what)?;
    let id = strata_repo::repo::new_backup_id(SystemTime::now());
    let cs = repo.chunk_size();
    // Per disk: the parent's index and which chunks changed since.
    let mut since: Vec<Option<(Index, Vec<bool>)>> = Vec::new();
    for (target, _) in &sources {
        let Some(p) = &parent else {
            since.push(None);
            continue;
        };
        let entry = p.disks.iter().find(|d| &d.name == target);
        let cp = p.meta["checkpoint"].as_str().unwrap_or_default();
        let changed = entry.ok_or_else(|| "not in it".to_string()).and_then(|e| {
            let ix = repo.get_index(e).map_err(|e| e.to_string())?;
            let ranges = checkpoint::disk_ranges_in(store, domain, cp, target, &Held::none())
                .map_err(|e| e.to_string())?;
            Ok((ix, changed_chunks(&ranges, e.size, cs)))
        });
        match changed {
            Ok(c) => since.push(Some(c)),
            Err(why) if req.fallback_full => {
                fallback.get_or_insert(format!("disk '{target}': {why}"));
                since.push(None);
            }
            Err(why) => {
                return Err(Error::invalid(
                    format!("{what}: disk '{target}'"),
                    format!("the changes since backup {} cannot be told: {why}", p.id),
                ))
            }
        }
    }
    let to_read: u64 = sizes
        .iter()
        .zip(&since)
        .map(|((_, size), s)| match s {
            Some((_, bits)) => bits.iter().filter(|&&b| b).count() as u64 * cs as u64,
            None => *size,
        })
        .sum();
    total(to_read);
    let mut disks = Vec::new();
    for (((target, _), img), s) in sources.iter().zip(&images).zip(&since) {
        let pred = |k: u64| s.as_ref().is_none_or(|(_, bits)| bits[k as usize]);
        let src = DiskSource {
            name: target,
            image: img.as_ref(),
            since: s
                .as_ref()
                .map(|(ix, _)| (ix, &pred as &(dyn Fn(u64) -> bool + Sync))),
            skipped: None,
            stop: None,
        };
        let entry = write_disk(repo, &id, &src, progress)
            .map_err(|e| Error::invalid(format!("{what}: disk '{target}'"), e.to_string()))?;
        disks.push(entry);
    }
    // Only qcow2 images keep bitmaps: the others take no part in the
    // checkpoint (their next backups read them whole), and with none,
    // there is no checkpoint.
    let tracked: Vec<bool> = images.iter().map(|i| i.format() == Format::Qcow2).collect();
    // Closed (their locks too): the checkpoint writes to them.
    drop(images);
    let cp = format!("{}{id}", checkpoint_prefix(repo));
    if tracked.iter().any(|&t| t) {
        let req_cp = CheckpointRequest {
            name: Some(cp.clone()),
            description: Some(format!("strata repo backup {id}")),
            diskspecs: sources
                .iter()
                .zip(&tracked)
                .filter(|(_, &t)| !t)
                .map(|((target, _), _)| format!("{target},checkpoint=no"))
                .collect(),
        };
        checkpoint::create_in(store, domain, &req_cp, &Offline)?;
    }
    let has_cp = tracked.iter().any(|&t| t);
    let manifest = manifest_of(
        &id,
        req,
        domain,
        &dom,
        parent.map(|p| p.id),
        disks,
        has_cp.then_some(cp.as_str()),
    );
    repo.commit(&manifest).map_err(repo_error)?;
    drop(lock);
    drop_old_checkpoints(store, repo, domain, &cp);
    Ok(RepoBackedUp { manifest, fallback })
}

/// Restores disk `disk` of backup `backup` of `repo` into a new image file
/// `dst` of `format` (refusing one that exists), sparse where the disk
/// read as zeros. `progress` is told each chunk's bytes once written.
pub fn restore(
    repo: &Repo,
    backup: &str,
    disk: &str,
    format: Format,
    dst: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let m = repo.backup(backup).map_err(repo_error)?;
    let entry = m.disks.iter().find(|d| d.name == disk).ok_or_else(|| {
        let names: Vec<&str> = m.disks.iter().map(|d| d.name.as_str()).collect();
        Error::invalid(
            format!("backup {backup}"),
            format!("has no disk '{disk}' (it has {})", names.join(", ")),
        )
    })?;
    match format {
        Format::Qcow2 => Qcow2::create_file(
            dst,
            &CreateOptions {
                size: entry.size,
                ..Default::default()
            },
        )?,
        _ => {
            let st = FileStorage::create(dst, false)?;
            st.set_len(entry.size)?;
            st.flush()?;
        }
    }
    let restored = strata_image::open(
        dst,
        &ChainOptions {
            writable: true,
            format: Some(format),
            backing: false,
            lock: true,
            ..Default::default()
        },
    )
    .map_err(Error::from)
    .and_then(|img| {
        restore_disk(repo, entry, img.as_ref(), progress).map_err(repo_error)?;
        img.close().map_err(Error::from)
    });
    if let Err(e) = restored {
        // Never a half-restored disk left looking like a restored one.
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    Ok(())
}
