//! One disk served with strata's own NBD server on a unix socket in the
//! domain's run folder; QEMU attaches it as an NBD client blockdev
//! (`DiskBackend::Nbd`). The server is persistent (QEMU may reconnect) and
//! takes one client; it stops when the daemon closes the disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_core::serve::export::ImageExport;
use strata_core::serve::Endpoint;
use strata_image::Image;
use strata_nbd::{Config, Exports};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Error, Result};

/// A running NBD server for one disk.
#[derive(Debug)]
pub struct NbdServer {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<strata_core::Result<()>>,
}

impl NbdServer {
    /// Serves `image` as export `target` on `socket` (a stale socket there
    /// is removed); returns once the socket listens.
    pub async fn start(target: &str, image: Arc<dyn Image>, socket: &Path) -> Result<NbdServer> {
        let fail = |detail: String| Error::Serve {
            target: target.to_string(),
            socket: socket.to_path_buf(),
            detail,
        };
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(socket, "remove the stale socket", e)),
        }
        let export = ImageExport::new(image, &[], false).map_err(|e| fail(e.to_string()))?;
        let mut exports = Exports::new();
        exports.add(target, Arc::new(export));
        let config = Config {
            max_clients: 1,
            persistent: true,
            tls: None,
            handshake_limit: Some(Duration::from_secs(10)),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let endpoint = Endpoint::Unix(socket.to_path_buf());
        let span = tracing::info_span!("nbd", disk = %target);
        let task = tokio::spawn(
            async move {
                strata_core::serve::serve(exports, &endpoint, config, move |_| {
                    let _ = ready_tx.send(());
                    async move {
                        let _ = stop_rx.await;
                    }
                })
                .await
            }
            .instrument(span),
        );
        match ready_rx.await {
            Ok(()) => Ok(NbdServer {
                socket: socket.to_path_buf(),
                stop: Some(stop_tx),
                task,
            }),
            // The server ended before it listened: its error says why.
            Err(_) => Err(match task.await {
                Ok(Err(e)) => fail(e.to_string()),
                Ok(Ok(())) => fail("the server ended before it listened".into()),
                Err(e) => fail(e.to_string()),
            }),
        }
    }

    /// The socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the server: connections are closed, the socket removed, and
    /// the export (with its reference to the image) dropped.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Serve {
                target: String::new(),
                socket: self.socket.clone(),
                detail: e.to_string(),
            }),
            Err(e) => Err(Error::Internal(format!("NBD server task: {e}"))),
        }
    }
}
