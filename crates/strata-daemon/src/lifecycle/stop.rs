//! Ending runs: `shutdown` (the ACPI power button, then waiting for the
//! guest to power off), `destroy` (SIGTERM to QEMU, SIGKILL after the
//! grace time), and the daemon's stop policy over every active domain.
//!
//! None of them ends a run itself: the event watcher does, once QEMU has
//! exited and the disks are closed; these wait for that.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::registry::{EndCause, Slot, Status};
use crate::types::{DomainInfo, State};

/// Waits until the run numbered `id` has ended (the slot shows another run
/// or none); false when `limit` passed first.
async fn ended(mut rx: watch::Receiver<Status>, id: Option<u32>, limit: Option<Duration>) -> bool {
    let done = rx.wait_for(|s| s.id != id || !s.state.is_active());
    match limit {
        Some(l) => matches!(tokio::time::timeout(l, done).await, Ok(Ok(_))),
        None => done.await.is_ok(),
    }
}

impl Service {
    /// Presses the power button of `name` and waits up to `timeout`
    /// seconds for the guest to power off (0: does not wait, as `virsh
    /// shutdown`). libvirt's "domain is not running" unless it runs.
    pub async fn shutdown(self: &Arc<Self>, name: &str, timeout: u64) -> Result<DomainInfo> {
        // A year is forever enough (and keeps deadlines representable).
        let timeout = timeout.min(365 * 86_400);
        let span = tracing::info_span!("op", op = "shutdown", domain = %name, timeout);
        async {
            let slot = self.active_slot(name).await?;
            let (rx, id) = {
                let _op = slot.op.lock().await;
                let status = slot.status();
                let run = match (status.state, slot.running()) {
                    (State::Running, Some(run)) => run,
                    _ => return Err(Error::invalid(name, "domain is not running")),
                };
                let rx = slot.watch();
                run.vm.powerdown().await.map_err(|e| Error::Hypervisor {
                    domain: name.to_string(),
                    source: e,
                })?;
                tracing::info!("pressed the power button");
                (rx, status.id)
            };
            if timeout == 0 {
                return Ok(());
            }
            // The operation lock is free while the guest decides: a destroy
            // may still end it.
            if ended(rx, id, Some(Duration::from_secs(timeout))).await {
                Ok(())
            } else {
                Err(Error::ShutdownTimeout {
                    domain: name.to_string(),
                    seconds: timeout,
                })
            }
        }
        .instrument(span)
        .await?;
        self.info(name).await
    }

    /// Ends `name` now: QEMU gets SIGTERM, then SIGKILL after the grace
    /// time; returns once the disks are closed. Running or paused alike.
    pub async fn destroy(self: &Arc<Self>, name: &str) -> Result<DomainInfo> {
        let span = tracing::info_span!("op", op = "destroy", domain = %name);
        async {
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            self.end_run(&slot, EndCause::Destroy).await?;
            self.info(name).await
        }
        .instrument(span)
        .await
    }

    /// Ends the active run of `slot` (whose operation lock the caller
    /// holds) and waits for its disks to close.
    pub(super) async fn end_run(&self, slot: &Slot, cause: EndCause) -> Result<()> {
        let status = slot.status();
        let Some(run) = slot.running().filter(|_| status.state.is_active()) else {
            return Err(Error::invalid(&slot.name, "domain is not running"));
        };
        let rx = slot.watch();
        run.set_end(cause);
        let exit = run.vm.destroy().await.map_err(|e| Error::Hypervisor {
            domain: slot.name.clone(),
            source: e,
        })?;
        tracing::info!(%exit, "emulator ended");
        ended(rx, status.id, None).await;
        Ok(())
    }

    /// The stop policy, when the daemon is asked to stop (SIGTERM,
    /// SIGINT): new starts are refused. With [`super::OnStop::Keep`] every
    /// active domain's disks are drained and closed and its QEMU left
    /// running for the next daemon. Otherwise every running domain gets the ACPI
    /// power button and [`super::Options::shutdown_timeout`] to power off,
    /// then is destroyed; paused domains are destroyed at once (their
    /// guests cannot see the button). Disks are flushed and closed and
    /// locks released as each run ends. Returns when no domain is active.
    pub async fn stop_all(self: &Arc<Self>) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut tasks = tokio::task::JoinSet::new();
        // Every slot, not only the active ones: a start in progress holds
        // its slot's operation lock, which stop_one waits for. A start that
        // makes its slot after this sees `stopping` and is refused.
        for slot in self.registry().all() {
            let me = self.clone();
            let span = tracing::info_span!("op", op = "stop-policy", domain = %slot.name);
            tasks.spawn(async move { me.stop_one(&slot).await }.instrument(span));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn stop_one(&self, slot: &Slot) {
        let _op = slot.op.lock().await;
        let status = slot.status();
        let Some(run) = slot.running().filter(|_| status.state.is_active()) else {
            return;
        };
        if self.options.on_stop == super::OnStop::Keep {
            run.hand_over().await;
            tracing::info!(pid = run.vm.pid(), "left running for the next daemon");
            return;
        }
        if status.state == State::Running {
            let rx = slot.watch();
            match run.vm.powerdown().await {
                Ok(()) => {
                    let limit = self.options.shutdown_timeout;
                    tracing::info!(timeout_s = limit.as_secs(), "pressed the power button");
                    if ended(rx, status.id, Some(limit)).await {
                        return;
                    }
                    tracing::warn!("the guest did not power off in time; destroying it");
                }
                Err(e) => tracing::warn!(error = %e, "power button failed; destroying"),
            }
        }
        match self.end_run(slot, EndCause::Daemon).await {
            Ok(()) => {}
            // It ended by itself meanwhile.
            Err(Error::OperationInvalid { .. }) => {}
            Err(e) => tracing::error!(error = %e, "destroy failed"),
        }
    }
}
