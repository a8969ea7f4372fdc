//! The service from start to stop: the state folder's store checked, the
//! API socket claimed, `READY=1`, serving until SIGTERM or SIGINT, then the
//! stop policy ([`crate::lifecycle::Service::stop_all`]: running guests get
//! the ACPI power button and a timeout, then are destroyed; paused ones are
//! destroyed; disks are flushed and closed, locks released), the socket
//! removed, and the end.

use std::path::PathBuf;
use std::sync::Arc;

use strata_qemu::Hypervisor;

use crate::error::{Error, Result};
use crate::lifecycle::{Options, Service};
use crate::notify::notify;

/// What the daemon serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state folder (its domains, `run/`, `locks/`).
    pub state_dir: PathBuf,
    /// The API socket (default `STATE/strata.sock`).
    pub socket: PathBuf,
    /// How domains are run and stopped.
    pub options: Options,
}

impl Config {
    /// The defaults for `state_dir`.
    pub fn new(state_dir: PathBuf) -> Config {
        Config {
            socket: default_socket(&state_dir),
            state_dir,
            options: Options::default(),
        }
    }
}

/// The API socket of a state folder: `STATE/strata.sock`.
pub fn default_socket(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("strata.sock")
}

/// Runs the daemon until SIGTERM or SIGINT, then applies the stop policy.
pub async fn run(config: Config, hypervisor: Arc<dyn Hypervisor>) -> Result<()> {
    let stop = signals()?;
    run_until(config, hypervisor, stop).await
}

/// The first SIGTERM or SIGINT (handlers installed now, so a signal that
/// comes at once is not lost); says which.
fn signals() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let err = |e| Error::io("(signals)", "install signal handlers", e);
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs the daemon until `stop` completes (saying why), then applies the
/// stop policy.
pub async fn run_until(
    config: Config,
    hypervisor: Arc<dyn Hypervisor>,
    stop: impl std::future::Future<Output = &'static str>,
) -> Result<()> {
    let dir = config.state_dir.clone();
    tokio::task::spawn_blocking(move || strata_core::Store::open(&dir).map(drop))
        .await
        .map_err(|e| Error::Internal(format!("store task: {e}")))??;
    strata_nbd::raise_open_file_limit();
    let mut claimed = crate::server::socket::claim(&config.socket)?;
    let svc = Arc::new(Service::new(
        config.state_dir.clone(),
        hypervisor,
        config.options.clone(),
    ));
    let taken = svc.recover().await;
    if !taken.is_empty() {
        tracing::info!(domains = ?taken, "took over the runs of the previous daemon");
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let router = crate::api::router(svc.clone());
    let listener = claimed
        .take_listener()
        .ok_or_else(|| Error::Internal("the API socket has no listener".into()))?;
    let server = tokio::spawn(crate::server::serve(listener, router, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tracing::info!(socket = %config.socket.display(), state_dir = %config.state_dir.display(), pid = std::process::id(), "ready");
    notify(&format!(
        "READY=1\nSTATUS=serving {}\nMAINPID={}",
        config.socket.display(),
        std::process::id()
    ));

    let why = stop.await;
    let active = svc.registry().active().len();
    tracing::info!(signal = why, active, "stopping");
    notify(&format!(
        "STOPPING=1\nSTATUS=stopping: ending {active} domain(s)"
    ));
    svc.stop_all().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    drop(claimed);
    notify("STATUS=stopped");
    tracing::info!("stopped");
    Ok(())
}
