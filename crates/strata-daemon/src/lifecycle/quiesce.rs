//! `--quiesce`: the guest's filesystems frozen through qemu-guest-agent
//! around a live snapshot, as libvirt does it. The domain must have the
//! agent's channel and the agent must answer a sync; otherwise the snapshot
//! is refused before anything is made. The filesystems are thawed whatever
//! the snapshot's outcome.

use std::path::Path;

use strata_core::Store;
use strata_qemu::agent::{GuestAgent, SYNC_TIMEOUT};

/// Freezes the filesystems of running domain `name` (its run in
/// `run_dir`); returns the agent, to thaw them, and how many it froze.
pub(super) fn freeze(
    store: &Store,
    name: &str,
    run_dir: &Path,
    what: &str,
) -> strata_core::Result<(GuestAgent, u64)> {
    let domain = store.domain(name)?;
    let socket = strata_core::live::guest_agent_socket(&domain, run_dir).ok_or_else(|| {
        strata_core::Error::invalid(
            what,
            "the guest agent is not configured: the domain has no <channel type='unix'> with <target type='virtio' name='org.qemu.guest_agent.0'/>",
        )
    })?;
    let mut agent = GuestAgent::connect(&socket, SYNC_TIMEOUT)
        .map_err(|e| strata_core::Error::invalid(what, e.to_string()))?;
    let frozen = agent
        .freeze()
        .map_err(|e| strata_core::Error::invalid(what, e.to_string()))?;
    tracing::info!(frozen, "guest filesystems frozen");
    Ok((agent, frozen))
}

/// Thaws what [`freeze`] froze; a failure names the snapshot made, if
/// one was.
pub(super) fn thaw(
    agent: &mut GuestAgent,
    made: Option<&str>,
    what: &str,
) -> strata_core::Result<()> {
    match agent.thaw() {
        Ok(n) => {
            tracing::info!(thawed = n, "guest filesystems thawed");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "thawing the guest's filesystems failed");
            let made = made
                .map(|m| format!("snapshot '{m}' was made, but "))
                .unwrap_or_default();
            Err(strata_core::Error::invalid(
                what,
                format!("{made}thawing the guest's filesystems failed: {e}"),
            ))
        }
    }
}
