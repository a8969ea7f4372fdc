//! Backups of a running domain: strata-core starts a copy-before-write
//! view of each disk at one instant ([`backup::live::begin_on`]) on the
//! disks this daemon serves. Pull mode: the daemon serves the views over
//! NBD (as the backup XML's `<server>` says) until `backup abort` (from any
//! process, through the store), a view that gives up, or the end of the
//! run. Push mode: it copies each view to its target (progress and abort
//! through the store). Then the disks are served without their filters
//! again and the job's end is recorded. The guest never waits on the
//! backup beyond the copy of one granule.

use std::sync::Arc;

use strata_core::backup::live::{LiveBackup, Meter};
use strata_core::backup::push::BeginRequest;
use strata_core::backup::serve::{live_exports, ABORT_POLL, PULL_CLIENTS};
use strata_core::backup::{self, live as backup_live, BackupMode};
use strata_core::serve::Endpoint;
use strata_core::store::Job;
use strata_core::Store;
use strata_nbd::{Config, Tls};
use tracing::Instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::registry::{Running, Slot};
use crate::types::BackupRequest;

/// Why a served backup stopped.
pub(super) enum Stop {
    /// `backup abort`: the normal end of a pull backup.
    Aborted,
    /// A view gave up (its reason).
    Broken(String),
    /// The run ended.
    RunEnded,
}

impl Service {
    /// `backup begin` of running domain `name`: returns the job once the
    /// views are served (pull) or their copy has begun (push).
    pub async fn backup_begin(self: &Arc<Self>, name: &str, req: BackupRequest) -> Result<Job> {
        let span = tracing::info_span!("op", op = "backup", domain = %name);
        // Credentials are read before anything is made.
        let tls = match &req.tls_creds {
            Some(dir) => Some(Tls::x509_dir(dir).map_err(|e| {
                Error::from(strata_core::Error::invalid(
                    format!("domain '{name}': backup: --tls-creds {}", dir.display()),
                    e.to_string(),
                ))
            })?),
            None => None,
        };
        let begin = BeginRequest {
            backup_xml: req.backup_xml,
            checkpoint_xml: req.checkpoint_xml,
            reuse_external: req.reuse_external,
            fallback_full: req.fallback_full,
            tls: tls.is_some(),
            in_process: false,
        };
        let backup = self
            .on_live_disks(name, move |store, n, disks| {
                disks.no_block_job(n)?;
                backup_live::begin_on(store, n, &begin, disks)
            })
            .instrument(span.clone())
            .await?;
        let job = backup.job.clone();
        let slot = self.active_slot(name).await?;
        let run = slot
            .running()
            .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
        if backup.mode == BackupMode::Push {
            let svc = self.clone();
            let dir = self.state_dir().to_path_buf();
            tokio::spawn(
                async move {
                    let copied = tokio::task::spawn_blocking(move || {
                        // Whatever happens to the copy, the job ends and the
                        // filters go.
                        let copy = std::panic::AssertUnwindSafe(|| backup.copy(&dir));
                        let r = match std::panic::catch_unwind(copy) {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err("the copy failed unexpectedly (a panic)".to_string()),
                        };
                        (r, backup)
                    })
                    .await;
                    let Ok((copied, backup)) = copied else {
                        tracing::error!("the backup's copy task was lost");
                        return;
                    };
                    svc.end_backup(&slot, &run, backup, copied).await;
                }
                .instrument(span),
            );
            return Ok(job);
        }
        // Listening is part of the begin: a server that cannot listen
        // fails it, and the views go at once.
        let listened = match live_exports(&backup) {
            Ok((exports, endpoint)) => match endpoint.listen(false).await {
                Ok(listener) => Ok((exports, endpoint, listener)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (exports, endpoint, listener) = match listened {
            Ok(l) => l,
            Err(e) => {
                self.end_backup(&slot, &run, backup, Err(e.to_string()))
                    .await;
                return Err(Error::from(e));
            }
        };
        tracing::info!(endpoint = %endpoint.shown(), "backup served");
        let svc = self.clone();
        tokio::spawn(
            async move {
                let views: Vec<_> = backup
                    .disks
                    .iter()
                    .map(|d| (d.disk.clone(), d.view.clone()))
                    .collect();
                let config = Config {
                    max_clients: PULL_CLIENTS,
                    persistent: true,
                    tls,
                    ..Config::default()
                };
                let dir = svc.state_dir().to_path_buf();
                let stopped = Arc::new(std::sync::Mutex::new(None));
                let why = stopped.clone();
                let meter = backup.meter();
                let stop = {
                    let (slot, run, n) = (slot.clone(), run.clone(), slot.name.clone());
                    async move {
                        let stop = watch(dir, n, slot, run, views, meter).await;
                        *why.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop);
                    }
                };
                let served = strata_nbd::serve(exports, listener, config, stop).await;
                if let Endpoint::Unix(path) = &endpoint {
                    let _ = std::fs::remove_file(path);
                }
                let stop = stopped.lock().unwrap_or_else(|e| e.into_inner()).take();
                let outcome = match (served, stop) {
                    (Err(e), _) => Err(format!("serving: {e}")),
                    (Ok(()), Some(Stop::Broken(why))) => Err(why),
                    (Ok(()), Some(Stop::RunEnded)) => Err("the domain stopped".to_string()),
                    (Ok(()), _) => Ok(()),
                };
                svc.end_backup(&slot, &run, backup, outcome).await;
            }
            .instrument(span),
        );
        Ok(job)
    }

    /// Ends `backup` with `outcome`: on the served disks while `run` goes
    /// on, else with the domain stopped.
    pub(super) async fn end_backup(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        run: &Arc<Running>,
        backup: LiveBackup,
        outcome: std::result::Result<(), String>,
    ) {
        let name = slot.name.clone();
        let still_running = slot.running().is_some_and(|r| Arc::ptr_eq(&r, run));
        let ended = if still_running {
            self.on_live_disks(&name, move |store, _, disks| {
                backup.end(store, Some(disks), outcome)
            })
            .await
            .map(|_| ())
        } else {
            let dir = self.state_dir().to_path_buf();
            tokio::task::spawn_blocking(move || {
                Store::open(&dir)
                    .and_then(|mut s| backup.end(&mut s, None, outcome))
                    .map(|_| ())
            })
            .await
            .map_err(|e| Error::Internal(format!("backup end task: {e}")))
            .and_then(|r| r.map_err(Error::from))
        };
        match ended {
            Ok(()) => tracing::info!("backup ended"),
            Err(e) => tracing::error!(error = %e, "cannot end the backup"),
        }
    }
}

/// Completes when the backup of `name` must stop: `backup abort` recorded
/// in the store of `dir`, a view broken, or the run gone. Every
/// [`USAGE_EVERY`] looks it records the job's progress and scratch size.
pub(super) async fn watch(
    dir: std::path::PathBuf,
    name: String,
    slot: Arc<Slot>,
    run: Arc<Running>,
    views: Vec<(String, Arc<strata_image::cbw::CbwView>)>,
    meter: Meter,
) -> Stop {
    let mut store = None;
    for look in 0u64.. {
        tokio::time::sleep(ABORT_POLL).await;
        if !slot.running().is_some_and(|r| Arc::ptr_eq(&r, &run)) {
            return Stop::RunEnded;
        }
        if let Some((disk, why)) = views.iter().find_map(|(d, v)| v.broken().map(|w| (d, w))) {
            return Stop::Broken(format!("disk '{disk}': {why}"));
        }
        if store.is_none() {
            store = Store::open(&dir).ok();
        }
        if let Some(s) = store.as_mut() {
            let asked = match look % USAGE_EVERY {
                0 => {
                    let (done, scratch) = meter.now();
                    s.job_usage(&name, done, scratch)
                }
                _ => backup::pull::PullBackup::abort_requested(s, &name),
            };
            if let Ok(true) = asked {
                return Stop::Aborted;
            }
        }
    }
    Stop::RunEnded
}

/// Looks at the store between two records of a pull backup's progress.
const USAGE_EVERY: u64 = 5;
