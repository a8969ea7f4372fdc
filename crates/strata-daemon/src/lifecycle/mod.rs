//! The lifecycle of domains, as the API asks for it: [`Service`] holds the
//! state folder, the hypervisor and the [`Registry`], and carries out
//! start ([`start`]), shutdown and destroy ([`stop`]), suspend and resume
//! ([`pause`]), save and restore ([`save`]), and the daemon's stop policy ([`stop::Service::stop_all`]).
//! [`watch`] turns QEMU's events into state changes and ends runs.
//!
//! Every operation on a domain holds the domain's operation mutex while it
//! changes anything, so two never interleave; a `shutdown` releases it
//! while it waits for the guest, so a `destroy` can still end a guest that
//! ignores the power button.

pub mod backup;
pub mod blockjob;
pub mod live;
pub mod memory;
pub mod pause;
mod quiesce;
pub mod recover;
pub mod repo;
pub mod save;
pub mod start;
pub mod stop;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::{Domain, Store};
use strata_qemu::Hypervisor;

use crate::error::{Error, Result};
use crate::registry::{Registry, Slot};
use crate::types::{DomainInfo, State, StateInfo};

/// How the daemon runs domains.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long `destroy` waits after SIGTERM before SIGKILL.
    pub destroy_grace: Duration,
    /// How long the stop policy waits for a running guest to power off
    /// after the ACPI power button before destroying it.
    pub shutdown_timeout: Duration,
    /// How disks are served unless a domain chooses otherwise.
    pub disk_backend: crate::disks::Serve,
    /// What becomes of running guests when the daemon stops.
    pub on_stop: OnStop,
}

/// What becomes of running guests when the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// The ACPI power button, then destroy after the shutdown timeout.
    Shutdown,
    /// Left running with their disks drained and closed, for the next
    /// daemon to take over ([`recover`]).
    Keep,
}

impl Default for Options {
    /// 10 s of grace; 30 s for guests to power off when the daemon stops;
    /// disks over vhost-user-blk.
    fn default() -> Self {
        Options {
            destroy_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            disk_backend: crate::disks::Serve::VhostUser,
            on_stop: OnStop::Shutdown,
        }
    }
}

/// The daemon's domains and what runs them.
pub struct Service {
    state_dir: PathBuf,
    hypervisor: Arc<dyn Hypervisor>,
    registry: Registry,
    options: Options,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("state_dir", &self.state_dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service for the domains of `state_dir`, run by `hypervisor`.
    pub fn new(state_dir: PathBuf, hypervisor: Arc<dyn Hypervisor>, options: Options) -> Service {
        Service {
            state_dir,
            hypervisor,
            registry: Registry::default(),
            options,
            stopping: AtomicBool::new(false),
        }
    }

    /// The state folder.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// True once the stop policy has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `f` on the metadata store, off the async threads.
    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> strata_core::Result<T> + Send + 'static,
    ) -> Result<T> {
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || f(&Store::open(&dir)?))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))?
            .map_err(|e| match e {
                strata_core::Error::NoDomain(n) => Error::NoDomain(n),
                e => Error::Core(e),
            })
    }

    /// The definition of `name`.
    pub async fn definition(&self, name: &str) -> Result<Domain> {
        let n = name.to_string();
        self.store(move |s| s.domain(&n)).await
    }

    fn info_of(&self, name: &str, uuid: String) -> DomainInfo {
        let slot = self.registry.get(name);
        let status = slot.as_ref().map(|s| s.status());
        let run = slot.as_ref().and_then(|s| s.running());
        DomainInfo {
            id: status.and_then(|s| s.id),
            name: name.to_string(),
            uuid,
            state: status.map_or(State::ShutOff, |s| s.state),
            reason: match status.map(|s| s.reason) {
                Some(r) if r != crate::types::Reason::Unknown => r,
                // Shut off with a managed save (also after a daemon
                // restart, which forgets the reason).
                _ if strata_core::live::managed::exists(self.state_dir(), name) => {
                    crate::types::Reason::Saved
                }
                _ => crate::types::Reason::Unknown,
            },
            pid: status.and_then(|s| s.pid),
            disks: run.map(|r| r.disk_info()).unwrap_or_default(),
        }
    }

    /// One domain: its definition's name and UUID, and its state.
    pub async fn info(&self, name: &str) -> Result<DomainInfo> {
        match self.definition(name).await {
            Ok(d) => Ok(self.info_of(name, d.uuid())),
            // Undefined while it runs: still shown until it stops.
            Err(Error::NoDomain(n)) => match self.registry.get(name).and_then(|s| s.running()) {
                Some(r) => Ok(self.info_of(name, r.uuid.clone())),
                None => Err(Error::NoDomain(n)),
            },
            Err(e) => Err(e),
        }
    }

    /// Every defined domain, by name, with its state.
    pub async fn list(&self) -> Result<Vec<DomainInfo>> {
        let all = self.store(|s| s.list()).await?;
        Ok(all
            .into_iter()
            .map(|d| self.info_of(&d.name, d.uuid))
            .collect())
    }

    /// The state and reason of `name`.
    pub async fn state(&self, name: &str) -> Result<StateInfo> {
        let i = self.info(name).await?;
        Ok(StateInfo {
            state: i.state,
            reason: i.reason,
        })
    }

    /// The slot of an active domain, or libvirt's "domain is not running"
    /// (after checking that the domain exists).
    async fn active_slot(&self, name: &str) -> Result<Arc<Slot>> {
        match self.registry.get(name) {
            Some(s) if s.status().state.is_active() => Ok(s),
            _ => {
                self.info(name).await?;
                Err(Error::invalid(name, "domain is not running"))
            }
        }
    }
}
