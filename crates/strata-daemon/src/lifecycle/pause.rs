//! Suspend and resume: QMP `stop` and `cont`. As libvirt: suspending a
//! paused domain does nothing and succeeds; suspending or resuming a shut
//! off one is "domain is not running"; resuming a running one is "domain
//! is not paused".

use std::sync::Arc;

use tracing::Instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::types::{DomainInfo, Reason, State};

impl Service {
    /// Stops the vCPUs of `name`.
    pub async fn suspend(self: &Arc<Self>, name: &str) -> Result<DomainInfo> {
        let span = tracing::info_span!("op", op = "suspend", domain = %name);
        async {
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            let run = match (slot.status().state, slot.running()) {
                (State::Running, Some(run)) => run,
                (State::Paused, Some(_)) => return self.info(name).await,
                _ => return Err(Error::invalid(name, "domain is not running")),
            };
            run.vm.pause().await.map_err(|e| Error::Hypervisor {
                domain: name.to_string(),
                source: e,
            })?;
            slot.update(|s| (s.state.is_active()).then_some((State::Paused, Reason::User)));
            // Read while the operation lock is held: the state it left.
            self.info(name).await
        }
        .instrument(span)
        .await
    }

    /// Runs the vCPUs of `name` again.
    pub async fn resume(self: &Arc<Self>, name: &str) -> Result<DomainInfo> {
        let span = tracing::info_span!("op", op = "resume", domain = %name);
        async {
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            let run = match (slot.status().state, slot.running()) {
                (State::Paused, Some(run)) => run,
                (State::Running, Some(_)) => {
                    return Err(Error::invalid(name, "domain is not paused"))
                }
                _ => return Err(Error::invalid(name, "domain is not running")),
            };
            run.vm.resume().await.map_err(|e| Error::Hypervisor {
                domain: name.to_string(),
                source: e,
            })?;
            slot.update(|s| (s.state.is_active()).then_some((State::Running, Reason::Unpaused)));
            self.info(name).await
        }
        .instrument(span)
        .await
    }
}
