//! Pull-mode backup of a machine that is not running (`backup begin` with
//! `mode='pull'`): each selected disk is handed to a backup program as an
//! NBD export, read-only, with the ranges changed since a checkpoint as a
//! `qemu:dirty-bitmap:EXPORTBITMAP` context for an incremental backup.
//!
//! [`begin`] plans the exports and records the job; a checkpoint asked for
//! with `--checkpointxml` is created then, before any image is opened for
//! export, so it marks the instant the exported state was taken (as
//! libvirt creates it at the start of a pull backup). The caller serves
//! the exports (this crate knows nothing of NBD) while it holds the
//! returned [`PullBackup`], whose domain lock keeps every other change
//! away, until [`PullBackup::abort_requested`] (from `backup abort` in
//! another process) or a signal, then calls [`PullBackup::end`]. Ending is
//! the normal way out of a pull backup: the job completes.

use std::path::PathBuf;

use crate::backup::push::{self, BeginRequest, Prepared};
use crate::backup::{BackupMode, BackupServer};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::live::Offline;
use crate::lock::DomainLock;
use crate::store::{Job, JobState, Store};

/// One disk to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullDisk {
    /// Disk target (`vda`).
    pub disk: String,
    /// The NBD export name.
    pub export_name: String,
    /// The disk's image (its chain is served read-only).
    pub source: PathBuf,
    /// For an incremental backup: the dirty bitmap's name and the ranges
    /// changed since the checkpoint.
    pub bitmap: Option<(String, Vec<(u64, u64)>)>,
}

/// A pull backup being served; the domain stays locked while it lives.
pub struct PullBackup {
    _lock: Option<DomainLock>,
    domain: String,
    /// Where to listen.
    pub server: BackupServer,
    /// `tls='yes'` was asked.
    pub tls: bool,
    /// The exports.
    pub disks: Vec<PullDisk>,
    /// The job as recorded (its XML has every default resolved).
    pub job: Job,
}

/// Plans a pull backup of `domain`, records its job and creates the
/// checkpoint asked for; the caller then serves [`PullBackup::disks`].
#[tracing::instrument(skip_all, fields(domain = %domain, op = "backup begin (pull)"))]
pub fn begin(store: &mut Store, domain: &str, req: &BeginRequest) -> Result<PullBackup> {
    let Prepared {
        lock,
        what,
        def,
        start,
        checkpoint: cp,
        fallback,
    } = push::prepare(store, domain, req, BackupMode::Pull)?;
    let server = def
        .server
        .clone()
        .ok_or_else(|| Error::invalid(&what, "mode='pull' needs a <server>"))?;
    let dom = store.domain(domain)?;
    let mut disks = Vec::new();
    for d in def.disks.iter().flatten().filter(|d| d.backup) {
        let disk_what = format!("{what}: disk '{}'", d.name);
        let source = push::disk_source(&dom, &d.name, &disk_what)?;
        let export_name = d.export_name.clone().unwrap_or_else(|| d.name.clone());
        if disks
            .iter()
            .any(|x: &PullDisk| x.export_name == export_name)
        {
            return Err(Error::invalid(
                &disk_what,
                format!("export name '{export_name}' is used twice"),
            ));
        }
        let bitmap = match (&d.incremental, &d.export_bitmap) {
            (Some(cp), Some(name)) => Some((
                name.clone(),
                push::disk_changes(
                    store,
                    domain,
                    &strata_image::transaction::Held::none(),
                    cp,
                    &d.name,
                    &disk_what,
                )?,
            )),
            _ => None,
        };
        disks.push(PullDisk {
            disk: d.name.clone(),
            export_name,
            source,
            bitmap,
        });
    }
    if disks.is_empty() {
        return Err(Error::invalid(what, "no disk takes part"));
    }
    let total = disks
        .iter()
        .filter_map(|d| d.bitmap.as_ref())
        .flat_map(|(_, r)| r)
        .map(|&(_, l)| l)
        .sum();
    let mut job = Job::backup(domain, start, total, Vec::new(), def.to_xml());
    job.fallback = fallback;
    store.start_job(&job)?;
    if let Some(c) = &cp {
        if let Err(e) = checkpoint::create_in(store, domain, c, &Offline) {
            store.set_job_state(domain, JobState::Failed, Some(&e.to_string()))?;
            return Err(e);
        }
    }
    Ok(PullBackup {
        _lock: lock,
        domain: domain.to_string(),
        server,
        tls: def.tls,
        disks,
        job,
    })
}

impl PullBackup {
    /// The domain backed up.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True once `backup abort` asked this job to stop (`store` is a
    /// connection of the caller's, e.g. on a polling thread).
    pub fn abort_requested(store: &mut Store, domain: &str) -> Result<bool> {
        Ok(store.job(domain)?.is_some_and(|j| j.abort_requested))
    }

    /// Ends the job: completed when `outcome` is fine, failed with its
    /// error otherwise; the domain lock goes with `self`.
    pub fn end(self, store: &mut Store, outcome: std::result::Result<(), String>) -> Result<Job> {
        match outcome {
            Ok(()) => store.set_job_state(&self.domain, JobState::Completed, None)?,
            Err(e) => store.set_job_state(&self.domain, JobState::Failed, Some(&e))?,
        }
        store.job(&self.domain)?.ok_or_else(|| {
            Error::invalid(
                format!("domain '{}': backup", self.domain),
                "the job's record vanished",
            )
        })
    }
}
