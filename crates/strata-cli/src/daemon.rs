//! `strata daemon`: the service, in the foreground, until SIGTERM or
//! SIGINT (see `docs/daemon.md` for its API and stop policy).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::exit::{usage, OK};
use crate::live_args::{DaemonArgs, DiskBackendArg, OnStopArg};

/// Runs `strata daemon`.
pub fn run(args: DaemonArgs, state: Option<&Path>) -> Result<u8> {
    let dir = crate::domain::state_dir(state)?;
    // Run folders and sockets are named from it: the same wherever the
    // daemon's clients run.
    let dir =
        std::path::absolute(&dir).with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let mut config = strata_daemon::Config::new(dir);
    if let Some(socket) = args.socket().map_err(usage)? {
        config.socket = socket;
    }
    config.options.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    config.options.destroy_grace = Duration::from_secs(args.destroy_grace);
    config.options.disk_backend = match args.disk_backend {
        DiskBackendArg::VhostUserBlk => strata_daemon::disks::Serve::VhostUser,
        DiskBackendArg::Nbd => strata_daemon::disks::Serve::Nbd,
    };
    config.options.on_stop = match args.on_stop {
        OnStopArg::Shutdown => strata_daemon::lifecycle::OnStop::Shutdown,
        OnStopArg::Keep => strata_daemon::lifecycle::OnStop::Keep,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Disk I/O goes down image chains, one call per layer.
        .thread_stack_size(strata_image::chain::CHAIN_STACK)
        .build()
        .context("starting the runtime")?;
    let hypervisor = Arc::new(strata_qemu::QemuHypervisor::new());
    rt.block_on(strata_daemon::run(config, hypervisor))?;
    Ok(OK)
}
