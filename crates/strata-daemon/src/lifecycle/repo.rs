//! `repo backup` of a running domain: strata-core starts a view of every
//! disk at one instant ([`repo_live::begin_on`]) on the disks this daemon
//! serves, reads the views into the repository while the guest runs, and
//! the job ends as any backup's does (the disks served without their
//! filters again). The answer waits for the backup; a client that goes
//! away does not stop it (`backup abort` does).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use strata_core::backup::repo::RepoRequest;
use strata_core::backup::repo_live;
use strata_repo::backend::S3Options;
use strata_repo::Repo;
use tracing::Instrument;

use super::backup::watch;
use super::Service;
use crate::error::{Error, Result};
use crate::types::{RepoBackupMade, RepoBackupRequest};

/// The repository at `at` (a folder or a bucket), opened with key file
/// `key`.
fn open(at: &str, s3: &S3Options, key: Option<&Path>) -> strata_repo::Result<Repo> {
    let secret = key.map(strata_repo::keys::read_key_file).transpose()?;
    Repo::open(strata_repo::backend::at(at, s3, false)?, secret.as_deref())
}

impl Service {
    /// `repo backup` of running domain `name`: the backup once made.
    pub async fn repo_backup(
        self: &Arc<Self>,
        name: &str,
        req: RepoBackupRequest,
    ) -> Result<RepoBackupMade> {
        let span = tracing::info_span!("op", op = "repo backup", domain = %name);
        let what = format!("domain '{name}': repo backup");
        // An unknown or stopped domain first, as for every call.
        self.active_slot(name).await?;
        let at = req.repo.to_string_lossy().into_owned();
        if !req.repo.is_absolute() && !at.starts_with("s3://") {
            return Err(Error::from(strata_core::Error::invalid(
                &what,
                format!("repo '{at}': an absolute path or an s3:// URL is needed"),
            )));
        }
        // Retries from the daemon's own environment, as its AWS_* are.
        let s3 = S3Options::from_env(&at, req.s3_endpoint.clone())
            .map_err(|e| Error::from(strata_core::Error::invalid(&what, e.to_string())))?;
        let key = req.key_file.clone();
        // Opening may derive the key (a moment of CPU and memory).
        let repo = tokio::task::spawn_blocking(move || open(&at, &s3, key.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("repository open task: {e}")))?
            .map_err(|e| Error::from(strata_core::Error::invalid(&what, e.to_string())))?;
        let repo = Arc::new(repo);
        let request = RepoRequest {
            incremental: req.incremental,
            fallback_full: req.fallback_full,
            host: req.host,
        };
        let r = repo.clone();
        let live = self
            .on_live_disks(name, move |store, n, disks| {
                disks.no_block_job(n)?;
                repo_live::begin_on(store, &r, n, &request, disks)
            })
            .instrument(span.clone())
            .await?;
        let slot = self.active_slot(name).await?;
        let run = slot
            .running()
            .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
        let svc = self.clone();
        let dir = self.state_dir().to_path_buf();
        // Its own task: a client that goes away does not cut it short.
        let task = tokio::spawn(
            async move {
                let stop = Arc::new(AtomicBool::new(false));
                let views: Vec<_> = live
                    .backup
                    .disks
                    .iter()
                    .map(|d| (d.disk.clone(), d.view.clone()))
                    .collect();
                let watcher = {
                    let (stop, meter) = (stop.clone(), live.backup.meter());
                    let (slot, run, n) = (slot.clone(), run.clone(), slot.name.clone());
                    tokio::spawn(async move {
                        watch(dir, n, slot, run, views, meter).await;
                        stop.store(true, Ordering::Relaxed);
                    })
                };
                let written = tokio::task::spawn_blocking(move || {
                    let write = std::panic::AssertUnwindSafe(|| live.write(&repo, &stop, &|_| {}));
                    let r = match std::panic::catch_unwind(write) {
                        Ok(r) => r.map_err(Error::from),
                        Err(_) => Err(Error::Internal(
                            "the backup failed unexpectedly (a panic)".to_string(),
                        )),
                    };
                    (r, live)
                })
                .await;
                watcher.abort();
                let Ok((written, live)) = written else {
                    return Err(Error::Internal("the backup's task was lost".into()));
                };
                let outcome = written.as_ref().map(|_| ()).map_err(|e| e.to_string());
                svc.end_backup(&slot, &run, live.backup, outcome).await;
                let made = written?;
                Ok(RepoBackupMade {
                    manifest: made.manifest,
                    fallback: made.fallback,
                })
            }
            .instrument(span),
        );
        task.await
            .map_err(|e| Error::Internal(format!("repo backup task: {e}")))?
    }
}
