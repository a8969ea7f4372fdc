//! A pull backup served: each disk's point in time as a read-only NBD export
//! (with the changes since the checkpoint as a `qemu:dirty-bitmap` context)
//! until the caller's stop or `backup abort` from another process, then the
//! job's end recorded.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_image::ChainOptions;
use strata_nbd::{Config, Exports, Tls};

use super::live::LiveBackup;
use super::pull::{self, PullBackup};
use super::push::BeginRequest;
use super::BackupServer;
use crate::error::{Error, Result};
use crate::serve::export::ImageExport;
use crate::serve::{serve_until, Endpoint};
use crate::store::{Job, Store};

/// Clients a pull backup serves at once.
pub const PULL_CLIENTS: usize = 8;

/// NBD's registered port.
const NBD_PORT: u16 = 10809;

/// How often a served job looks for `backup abort` from another process.
pub const ABORT_POLL: Duration = Duration::from_millis(100);

/// Begins a pull backup of `domain`, serves it until `stop` completes or the
/// job is aborted, and ends the job. `ready(endpoint, exports)` is called
/// once the exports are listening (exports named with their bitmap).
pub fn serve_pull<F>(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    tls: Option<Tls>,
    ready: impl FnOnce(&str, &[String]),
    stop: F,
) -> Result<Job>
where
    F: std::future::Future<Output = ()>,
{
    let pull = pull::begin(store, domain, req)?;
    let served = exports_of(&pull).and_then(|(exports, endpoint)| {
        let config = Config {
            max_clients: PULL_CLIENTS,
            persistent: true,
            tls,
            ..Config::default()
        };
        let names: Vec<String> = pull
            .disks
            .iter()
            .map(|d| match &d.bitmap {
                Some((b, _)) => format!("{} (bitmap {b})", d.export_name),
                None => d.export_name.clone(),
            })
            .collect();
        let dir = store.dir().to_path_buf();
        serve_until(exports, &endpoint, config, |shown| {
            ready(shown, &names);
            async move {
                tokio::select! {
                    _ = stop => {}
                    _ = aborted(dir, domain.to_string()) => {}
                }
            }
        })
    });
    let job = pull.end(
        store,
        served.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    )?;
    served?;
    Ok(job)
}

/// Each disk's chain as a read-only export, and where to listen.
fn exports_of(pull: &PullBackup) -> Result<(Exports, Endpoint)> {
    let mut exports = Exports::new();
    for d in &pull.disks {
        let img = strata_image::open(&d.source, &ChainOptions::default())
            .map_err(|e| Error::invalid(format!("disk '{}'", d.disk), e.to_string()))?;
        add_export(&mut exports, &d.export_name, img, d.bitmap.as_ref())?;
    }
    Ok((exports, endpoint_of(&pull.server)?))
}

/// Each view of a running domain's pull backup as a read-only export (its
/// bitmap as a `qemu:dirty-bitmap` context), and where to listen.
pub fn live_exports(backup: &LiveBackup) -> Result<(Exports, Endpoint)> {
    let mut exports = Exports::new();
    for d in &backup.disks {
        let view: Arc<dyn strata_image::Image> = d.view.clone();
        add_export(&mut exports, &d.export_name, view, d.bitmap.as_ref())?;
    }
    let server = backup.server.as_ref().ok_or_else(|| {
        Error::invalid(
            format!("domain '{}': backup", backup.domain()),
            "a push backup is not served",
        )
    })?;
    Ok((exports, endpoint_of(server)?))
}

/// `img` as read-only export `name` of `exports`.
fn add_export(
    exports: &mut Exports,
    name: &str,
    img: Arc<dyn strata_image::Image>,
    bitmap: Option<&(String, Vec<(u64, u64)>)>,
) -> Result<()> {
    let mut e = ImageExport::new(img, &[], false)?;
    if let Some((b, ranges)) = bitmap {
        e.add_dirty_ranges(b, ranges.clone());
    }
    exports.add(name.to_string(), Arc::new(e));
    Ok(())
}

/// Where a backup's `<server>` listens.
pub fn endpoint_of(server: &BackupServer) -> Result<Endpoint> {
    let endpoint = match server {
        BackupServer::Unix { socket } => Endpoint::Unix(socket.clone()),
        BackupServer::Tcp { name, port } => {
            let port = port.unwrap_or(NBD_PORT);
            let addr = (name.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("<server name='{name}'>"),
                        "cannot resolve the address",
                    )
                })?;
            Endpoint::Tcp {
                addr,
                insecure: false,
            }
        }
    };
    Ok(endpoint)
}

/// Completes when `backup abort` asks the job in `dir` for `domain` to
/// stop (looked at every [`ABORT_POLL`] on a connection of its own).
async fn aborted(dir: PathBuf, domain: String) {
    let Ok(mut st) = Store::open(&dir) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(ABORT_POLL).await;
        if let Ok(true) = PullBackup::abort_requested(&mut st, &domain) {
            return;
        }
    }
}
