//! Taking over the runs of a daemon that is gone (killed, crashed, or
//! stopped with the `keep` policy for an upgrade): at startup, before the
//! API answers, every run folder with a record ([`crate::journal`]) whose
//! QEMU still runs is taken over — the domain's lock taken again, each
//! disk's top image (as the record names it) reopened and served on the
//! same socket, which QEMU reconnects to (`reconnect-ms`), a new QMP
//! connection, the state from QEMU, and the watcher of its events. The
//! guest sees its disks pause and go on. Images a killed daemon left open
//! are at most leaking clusters (repaired on this writable open) and their
//! bitmaps cover every write (strata's tracking is crash-consistent).
//!
//! Backups of running domains do not survive their daemon: at startup, the
//! scratch files of any view are removed and a backup job whose process is
//! gone is recorded as failed (its checkpoint, made at the view's instant,
//! stays valid: the bitmaps kept every write).
//!
//! A record whose QEMU is gone is removed: the domain is shut off. When
//! the record names a newer top than the store (a live snapshot whose
//! metadata the dead daemon had not written yet), the store's definition
//! is brought up to date.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_core::Store;
use strata_qemu::{StartOptions, VmStatus};
use tracing::Instrument;

use super::Service;
use crate::disks;
use crate::error::{Error, Result};
use crate::journal::{self, RunRecord};
use crate::registry::Running;
use crate::types::{Reason, State};

impl Service {
    /// Takes over every run a previous daemon left; returns the names of
    /// the domains taken over.
    pub async fn recover(self: &Arc<Self>) -> Vec<String> {
        let dir = self.state_dir().to_path_buf();
        let cleaned = tokio::task::spawn_blocking(move || clean_backups(&dir)).await;
        if let Ok(Err(e)) = cleaned {
            tracing::error!(error = %e, "cannot clean up after the backups of a previous daemon");
        }
        let runs = self.state_dir().join("run");
        let Ok(entries) = std::fs::read_dir(&runs) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let record = match journal::read(&dir) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(domain = %name, error = %e, "cannot read the run record");
                    continue;
                }
            };
            let span = tracing::info_span!("op", op = "take over", domain = %name);
            match self.take_over(&name, &dir, record).instrument(span).await {
                Ok(true) => taken.push(name),
                Ok(false) => {}
                Err(e) => tracing::error!(domain = %name, error = %e, "cannot take the run over"),
            }
        }
        taken
    }

    /// Takes over the run of `name` in `run_dir`; false when its QEMU is
    /// gone (the record is removed then).
    async fn take_over(
        self: &Arc<Self>,
        name: &str,
        run_dir: &Path,
        record: RunRecord,
    ) -> Result<bool> {
        let mut opts = StartOptions::new(run_dir);
        opts.destroy_grace = self.options.destroy_grace;
        opts.kill_on_drop = false;
        let vm = match self.hypervisor.adopt(name, &opts).await {
            Ok(vm) => vm,
            Err(e) => {
                tracing::info!(reason = %e, "the run ended while no daemon watched it");
                let _ = std::fs::remove_file(run_dir.join(journal::FILE));
                return Ok(false);
            }
        };
        let slot = self.registry().slot(name);
        let _op = slot.op.lock().await;
        let lock = self.domain_lock(name).await?;
        let domain = self.bring_store_up_to_date(name, &record).await?;
        let mut plan = disks::plan(&domain, run_dir, self.options.disk_backend)?;
        for p in &mut plan {
            if let Some(d) = record.disks.iter().find(|d| d.target == p.target) {
                p.source = d.source.clone();
            }
        }
        let dspan = tracing::info_span!(parent: None, "domain", name = %name);
        let served = disks::serve_all(plan).instrument(dspan.clone()).await?;
        let (state, reason) = match vm.status().await {
            Ok(VmStatus::Active { running: true, .. }) => (State::Running, Reason::Unpaused),
            Ok(VmStatus::Active { .. }) => (State::Paused, Reason::User),
            Ok(VmStatus::Exited(_)) | Err(_) => {
                disks::close_all(served).await;
                let _ = std::fs::remove_file(run_dir.join(journal::FILE));
                return Ok(false);
            }
        };
        self.registry().keep_id(record.id);
        let events = vm.take_events();
        let run = Arc::new(Running::new(
            record.id,
            record.uuid.clone(),
            vm,
            run_dir.to_path_buf(),
            served,
            lock,
        ));
        slot.begin(run.clone(), state, reason);
        let span = tracing::info_span!(parent: &dspan, "run", id = record.id, pid = run.vm.pid());
        tokio::spawn(super::watch::watch(slot.clone(), run, events).instrument(span));
        tracing::info!(state = state.as_str(), "taken over");
        Ok(true)
    }

    /// The definition of `name`, its disks moved to the tops `record`
    /// names where the store still has an older one.
    async fn bring_store_up_to_date(
        &self,
        name: &str,
        record: &RunRecord,
    ) -> Result<strata_core::Domain> {
        let dir = self.state_dir().to_path_buf();
        let n = name.to_string();
        let tops: Vec<(String, PathBuf)> = record
            .disks
            .iter()
            .map(|d| (d.target.clone(), d.source.clone()))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<strata_core::Domain> {
            let mut store = Store::open(&dir)?;
            let mut domain = store.domain(&n)?;
            let mut changed = false;
            for d in domain.disks() {
                let Some((_, top)) = tops.iter().find(|(t, _)| *t == d.target) else {
                    continue;
                };
                if d.source.as_deref() != Some(top.as_path()) {
                    tracing::warn!(disk = %d.target, top = %top.display(), "the store named an older top; recording the served one");
                    domain.set_disk_source(&d.target, top, "qcow2")?;
                    changed = true;
                }
            }
            if changed {
                store.define(&domain)?;
            }
            Ok(domain)
        })
        .await
        .map_err(|e| Error::Internal(format!("store task: {e}")))?
    }
}

/// Removes every view's scratch file (no backup runs before the daemon
/// does) and records each backup job whose process is gone as failed.
fn clean_backups(state_dir: &Path) -> strata_core::Result<()> {
    if let Ok(entries) = std::fs::read_dir(state_dir.join("scratch")) {
        for e in entries.flatten() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(scratch = %e.path().display(), "removed a backup view's scratch left by a previous daemon")
                }
                Err(err) => {
                    tracing::warn!(scratch = %e.path().display(), error = %err, "cannot remove a scratch file")
                }
            }
        }
    }
    let mut store = Store::open(state_dir)?;
    for d in store.list()? {
        let Some(job) = store.job(&d.name)?.filter(|j| j.state.active()) else {
            continue;
        };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether
        // the process exists.
        let alive = unsafe { libc::kill(job.pid as libc::pid_t, 0) } == 0;
        if !alive {
            // Push targets it had begun, scratch files it made elsewhere.
            for f in &job.files {
                if std::fs::remove_file(f).is_ok() {
                    tracing::info!(file = %f.display(), "removed a file of a previous daemon's backup");
                }
            }
            store.set_job_state(
                &d.name,
                strata_core::store::JobState::Failed,
                Some("the daemon running it ended before it finished"),
            )?;
            tracing::info!(domain = %d.name, "a backup job of a previous daemon recorded as failed");
        }
    }
    Ok(())
}
