//! Starting a domain: its definition from the store, its lock (so no
//! offline strata operation changes its disks while it runs), the run
//! folder, the machine (refusing what strata cannot honour before any
//! image is opened), the disks opened and served, then QEMU, and the
//! watcher of its events.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use strata_core::live::managed;
use strata_core::lock::DomainLock;
use strata_qemu::StartOptions;
use tracing::Instrument;

use super::Service;
use crate::disks;
use crate::error::{Error, Result};
use crate::journal::{self, RunRecord};
use crate::registry::Running;
use crate::types::{DomainInfo, Reason, State};

impl Service {
    /// Starts `name`, running or paused; libvirt's "domain is already
    /// running" when it is active.
    pub async fn start(self: &Arc<Self>, name: &str, paused: bool) -> Result<DomainInfo> {
        self.start_with(name, paused, false).await
    }

    /// [`Service::start`]: a domain with a managed save is restored from
    /// it (which then goes), unless `force_boot` discards it first.
    pub async fn start_with(
        self: &Arc<Self>,
        name: &str,
        paused: bool,
        force_boot: bool,
    ) -> Result<DomainInfo> {
        let span = tracing::info_span!("op", op = "start", domain = %name, paused);
        match self
            .start_in(name, paused, force_boot)
            .instrument(span)
            .await
        {
            Ok(info) => Ok(info),
            Err(e) => {
                if matches!(
                    e,
                    Error::Config { .. }
                        | Error::Disk { .. }
                        | Error::Serve { .. }
                        | Error::Io { .. }
                ) {
                    self.registry().slot(name).failed();
                }
                Err(e)
            }
        }
    }

    async fn start_in(
        self: &Arc<Self>,
        name: &str,
        paused: bool,
        force_boot: bool,
    ) -> Result<DomainInfo> {
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        let domain = self.definition(name).await?;
        if managed::exists(self.state_dir(), name) {
            if !force_boot {
                return self.restore_managed(name, &domain, paused).await;
            }
            managed::remove(self.state_dir(), name)?;
            tracing::info!("managed save discarded (--force-boot)");
        }
        self.launch(name, &domain, paused, None).await
    }

    /// Restores `name` (defined as `defined`) from its managed save, which
    /// goes once the machine runs again: paused if `paused` or if it was
    /// when saved. A save that does not fit the domain any more (its disks
    /// moved since) or is damaged is refused and kept.
    async fn restore_managed(
        self: &Arc<Self>,
        name: &str,
        defined: &strata_core::Domain,
        paused: bool,
    ) -> Result<DomainInfo> {
        let file = managed::path(self.state_dir(), name);
        let f = file.clone();
        let saved = tokio::task::spawn_blocking(move || strata_core::live::saved::read(&f))
            .await
            .map_err(|e| Error::Internal(format!("restore task: {e}")))??;
        let what = file.display().to_string();
        let domain = strata_core::Domain::from_xml(&saved.xml, &what)?;
        managed::check(&file, &domain, defined)?;
        let paused = paused || !saved.running;
        let info = self
            .launch(name, &domain, paused, Some((&file, saved.stream_offset)))
            .await?;
        if let Err(e) = managed::remove(self.state_dir(), name) {
            tracing::warn!(error = %e, "the managed save the domain was restored from stays");
        }
        Ok(info)
    }

    /// Starts `name` as `domain` defines it, running or paused; with
    /// `state` (a file and the offset of the stream in it), QEMU loads that
    /// saved state before it runs.
    pub(super) async fn launch(
        self: &Arc<Self>,
        name: &str,
        domain: &strata_core::Domain,
        paused: bool,
        state: Option<(&Path, u64)>,
    ) -> Result<DomainInfo> {
        let slot = self.registry().slot(name);
        let _op = slot.op.lock().await;
        if self.is_stopping() {
            return Err(Error::Stopping);
        }
        if slot.status().state.is_active() {
            return Err(Error::invalid(name, "domain is already running"));
        }
        let lock = self.domain_lock(name).await?;
        let run_dir = self.state_dir().join("run").join(name);
        make_private_dir(&run_dir)?;
        let plan = disks::plan(domain, &run_dir, self.options.disk_backend)?;
        let mut backends: Vec<_> = plan
            .iter()
            .map(|p| (p.target.clone(), p.backend.clone()))
            .collect();
        backends.extend(disks::attached(domain)?);
        let machine = strata_core::live::machine_of(domain, &backends, &run_dir).map_err(|e| {
            Error::Config {
                domain: name.to_string(),
                source: e,
            }
        })?;
        // What outlives this request (the disk servers, QEMU's watcher, the
        // event watcher) logs in the domain's own span.
        let dspan = tracing::info_span!(parent: None, "domain", name = %name);
        let served = disks::serve_all(plan).instrument(dspan.clone()).await?;
        let id = self.registry().next_id();
        let record = RunRecord {
            id,
            uuid: domain.uuid(),
            disks: served.iter().map(disks::ServedDisk::record).collect(),
        };
        if let Err(e) = journal::write(&run_dir, &record) {
            disks::close_all(served).await;
            return Err(e);
        }
        let mut opts = StartOptions::new(&run_dir);
        opts.paused = paused;
        opts.incoming = state.is_some();
        opts.destroy_grace = self.options.destroy_grace;
        // The guest outlives this daemon: a crash or an upgrade of the
        // daemon leaves QEMU running, for the next daemon to take over.
        opts.kill_on_drop = false;
        let started = self
            .hypervisor
            .start(&machine, &opts)
            .instrument(dspan.clone())
            .await;
        let vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                disks::close_all(served).await;
                slot.failed();
                return Err(Error::Hypervisor {
                    domain: name.to_string(),
                    source: e,
                });
            }
        };
        let mut served = served;
        if let Some((file, offset)) = state {
            let loaded = vm.load_state(file, offset).await;
            if loaded.is_ok() {
                // Loaded: a revert that led here is final, before the
                // guest runs.
                served = drop_guards(served, run_dir.clone(), record).await;
            }
            let ran = match loaded {
                Ok(()) if !paused => vm.resume().await,
                other => other,
            };
            if let Err(e) = ran {
                let _ = vm.destroy().await;
                disks::close_all(served).await;
                slot.failed();
                return Err(Error::Hypervisor {
                    domain: name.to_string(),
                    source: e,
                });
            }
        }
        let events = vm.take_events();
        let run = Arc::new(Running::new(id, domain.uuid(), vm, run_dir, served, lock));
        let (state, reason) = match (paused, state.is_some()) {
            (true, _) => (State::Paused, Reason::User),
            (false, true) => (State::Running, Reason::Restored),
            (false, false) => (State::Running, Reason::Booted),
        };
        slot.begin(run.clone(), state, reason);
        let span = tracing::info_span!(parent: &dspan, "run", id, pid = run.vm.pid());
        tokio::spawn(super::watch::watch(slot.clone(), run, events).instrument(span));
        self.info(name).await
    }

    /// Takes the domain's lock without waiting: another strata process
    /// that holds it is changing the domain's disks.
    pub(super) async fn domain_lock(&self, name: &str) -> Result<DomainLock> {
        let dir = self.state_dir().to_path_buf();
        let n = name.to_string();
        let held = tokio::task::spawn_blocking(move || DomainLock::try_acquire(&dir, &n))
            .await
            .map_err(|e| Error::Internal(format!("lock task: {e}")))??;
        held.ok_or_else(|| Error::Busy {
            domain: name.to_string(),
        })
    }
}

/// Deletes the guard snapshots a revert kept in the images of `served`
/// (recorded in `run_dir` as `record`), now that the memory is loaded and
/// the revert final; a failure is logged (the next load tries again).
async fn drop_guards(
    served: Vec<disks::ServedDisk>,
    run_dir: std::path::PathBuf,
    record: RunRecord,
) -> Vec<disks::ServedDisk> {
    let task = tokio::task::spawn_blocking(move || {
        let files: Vec<_> = served.iter().map(|d| d.source.clone()).collect();
        let live = disks::live::LiveDisks::new(&served, &run_dir, record);
        match strata_core::snapshot::undo::drop_guards_on(&live, &files) {
            Ok(0) => {}
            Ok(n) => tracing::info!(guards = n, "the revert's guard snapshots deleted"),
            Err(e) => tracing::warn!(error = %e, "the revert's guard snapshots kept"),
        }
        drop(live);
        served
    });
    match task.await {
        Ok(served) => served,
        // The served disks went with the task: nothing to go on with.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Makes `dir` (and its parents), owner-only.
fn make_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::io(dir, "create the run folder", e))
}
