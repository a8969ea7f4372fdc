//! Backups of a running domain into a strata repository (`strata repo
//! backup` while it runs, done by the daemon that serves its disks).
//!
//! [`begin_on`] starts a backup of every disk (with an image) as a pull
//! backup read in process ([`live::begin_on`]): all disks held back at
//! one instant, the checkpoint `repo-FP-ID` made there (qcow2 disks only),
//! and a copy-before-write view of each disk started, so the guest goes on
//! writing. For `--incremental`, the views give up every range outside the
//! changes since the checkpoint of the domain's latest backup in the
//! repository, and only the chunks those changes touch are read; the
//! others come from that backup's index. [`RepoLive::write`] then reads
//! the views into the repository and writes the manifest last, as an
//! offline backup does (`super::repo`); the caller ends the job
//! ([`LiveBackup::end`]) whatever happened.

use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use strata_image::{Format, Image};
use strata_repo::index::Index;
use strata_repo::manifest::Manifest;
use strata_repo::write::{write_disk, DiskSource};
use strata_repo::Repo;

use super::live::{self, LiveBackup};
use super::push::BeginRequest;
use super::repo::{
    changed_chunks, checkpoint_prefix, manifest_of, parent_for, repo_error, RepoBackedUp,
    RepoRequest,
};
use crate::error::{Error, Result};
use crate::live::Disks;
use crate::store::Store;

/// A running domain's backup into a repository, its views started.
#[derive(Debug)]
pub struct RepoLive {
    /// The views (ended by the caller with [`LiveBackup::end`]).
    pub backup: LiveBackup,
    id: String,
    request: RepoRequest,
    domain: crate::domain::Domain,
    parent: Option<Manifest>,
    /// Per view: the parent's index of the disk and the chunks changed
    /// since (`None`: read whole).
    since: Vec<Option<(Index, Vec<bool>)>>,
    checkpoint: Option<String>,
    fallback: Option<String>,
}

/// Begins a backup of running domain `domain` on its served `disks` into
/// `repo` (see the module).
#[tracing::instrument(skip_all, fields(domain = %domain, op = "repo backup (live)"))]
pub fn begin_on(
    store: &mut Store,
    repo: &Repo,
    domain: &str,
    req: &RepoRequest,
    disks: &dyn Disks,
) -> Result<RepoLive> {
    let what = format!("domain '{domain}': repo backup");
    let dom = store.domain(domain)?;
    let held = disks.held();
    let mut served = Vec::new();
    for d in dom.disks().into_iter().filter(|d| d.device == "disk") {
        let Some(src) = d.source else { continue };
        let img = held.get(&src).cloned().ok_or_else(|| {
            Error::invalid(
                format!("{what}: disk '{}'", d.target),
                "the disk is not served",
            )
        })?;
        served.push((d.target, img.size(), img.format() == Format::Qcow2));
    }
    if served.is_empty() {
        return Err(Error::invalid(what, "the domain has no disk with an image"));
    }
    let sizes: Vec<(String, u64)> = served.iter().map(|(t, s, _)| (t.clone(), *s)).collect();
    let (parent, mut fallback) = parent_for(store, repo, domain, &dom.uuid(), req, &sizes, &what)?;
    let id = strata_repo::repo::new_backup_id(SystemTime::now());
    let cp = served
        .iter()
        .any(|(_, _, q)| *q)
        .then(|| format!("{}{id}", checkpoint_prefix(repo)));
    let since_cp = parent
        .as_ref()
        .and_then(|p| p.meta["checkpoint"].as_str().map(str::to_string));
    let xml_disks: String = served
        .iter()
        .map(|(t, _, _)| format!("<disk name='{t}' backup='yes' type='file'/>"))
        .collect();
    let backup_xml = format!(
        "<domainbackup mode='pull'>{}<disks>{xml_disks}</disks></domainbackup>",
        since_cp
            .as_ref()
            .map(|c| format!("<incremental>{c}</incremental>"))
            .unwrap_or_default()
    );
    let checkpoint_xml = cp.as_ref().map(|c| {
        let untracked: String = served
            .iter()
            .filter(|(_, _, q)| !q)
            .map(|(t, _, _)| format!("<disk name='{t}' checkpoint='no'/>"))
            .collect();
        format!(
            "<domaincheckpoint><name>{c}</name><description>strata repo backup {id}</description><disks>{untracked}</disks></domaincheckpoint>"
        )
    });
    let begin = BeginRequest {
        backup_xml: Some(backup_xml),
        checkpoint_xml,
        // A raw disk has no bitmaps: read whole, as offline.
        fallback_full: req.fallback_full,
        in_process: true,
        ..Default::default()
    };
    let backup = live::begin_on(store, domain, &begin, disks)?;
    if let Some(line) = backup.job.fallback.first() {
        fallback.get_or_insert(line.clone());
    }
    let cs = repo.chunk_size();
    let mut since = Vec::new();
    for d in &backup.disks {
        let entry = parent
            .as_ref()
            .and_then(|p| p.disks.iter().find(|e| e.name == d.disk));
        let s = match (entry, &d.bitmap) {
            (Some(e), Some(_)) => {
                let ix = repo.get_index(e).map_err(|e| {
                    Error::invalid(format!("{what}: disk '{}'", d.disk), e.to_string())
                });
                match ix {
                    Ok(ix) => Some((ix, changed_chunks(&d.ranges, e.size, cs))),
                    Err(e) => {
                        drop_views(store, disks, backup, &e);
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        since.push(s);
    }
    // The views keep only the chunks to read (a changed chunk is read
    // whole): guest writes elsewhere copy nothing.
    for (d, s) in backup.disks.iter().zip(&since) {
        let Some((_, bits)) = s else { continue };
        for (k, _) in bits.iter().enumerate().filter(|(_, &b)| !b) {
            let off = k as u64 * cs as u64;
            let len = (d.view.size() - off).min(cs as u64);
            d.view.done(off, len)?;
        }
    }
    Ok(RepoLive {
        backup,
        id,
        request: req.clone(),
        domain: dom,
        parent,
        since,
        checkpoint: cp,
        fallback,
    })
}

/// Ends `backup`'s job on `disks` as failed with `why`: a failure before
/// the caller has it.
fn drop_views(store: &mut Store, disks: &dyn Disks, backup: LiveBackup, why: &Error) {
    if let Err(e) = backup.end(store, Some(disks), Err(why.to_string())) {
        tracing::error!(error = %e, "cannot record the backup's end");
    }
}

impl RepoLive {
    /// Reads every view into `repo` and writes the manifest last;
    /// `progress` is told each chunk's bytes once done; `stop` set stops
    /// it (`backup abort`). The caller then
    /// ends the job with the outcome.
    pub fn write(
        &self,
        repo: &Repo,
        stop: &AtomicBool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<RepoBackedUp> {
        let what = format!("domain '{}': repo backup", self.backup.domain());
        let mut entries = Vec::new();
        for (d, s) in self.backup.disks.iter().zip(&self.since) {
            let pred = |k: u64| s.as_ref().is_none_or(|(_, bits)| bits[k as usize]);
            let view = d.view.clone();
            let zero = move |off: u64, len: u64| {
                // A chunk that reads as zeros is never read: the view
                // needs to keep nothing of it.
                let _ = view.done(off, len);
            };
            let src = DiskSource {
                name: &d.disk,
                image: d.view.as_ref(),
                since: s
                    .as_ref()
                    .map(|(ix, _)| (ix, &pred as &(dyn Fn(u64) -> bool + Sync))),
                skipped: Some(&zero),
                stop: Some(stop),
            };
            let entry = write_disk(repo, &self.id, &src, progress)
                .map_err(|e| Error::invalid(format!("{what}: disk '{}'", d.disk), e.to_string()))?;
            entries.push(entry);
        }
        if let Some(why) = self.backup.broken() {
            return Err(Error::invalid(what, why));
        }
        let manifest = manifest_of(
            &self.id,
            &self.request,
            self.backup.domain(),
            &self.domain,
            self.parent.as_ref().map(|p| p.id.clone()),
            entries,
            self.checkpoint.as_deref(),
        );
        repo.commit(&manifest).map_err(repo_error)?;
        Ok(RepoBackedUp {
            manifest,
            fallback: self.fallback.clone(),
        })
    }
}
