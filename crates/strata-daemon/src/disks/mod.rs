//! The disks of a running domain, served by the daemon: each image chain
//! is opened by strata-image (writable, with QEMU-compatible locks), never
//! by QEMU, and handed to a server QEMU connects to: strata-vhost's
//! vhost-user-blk backend ([`vhost`], the default) or strata's NBD server
//! ([`nbd`]), chosen per disk ([`plan`]).
//!
//! Closing a disk stops its server, then flushes and closes the image
//! (qcow2 bitmaps and refcounts written back, the dirty bit cleared), which
//! releases its locks.

pub mod live;
pub mod nbd;
pub mod plan;
pub mod vhost;

use std::path::PathBuf;
use std::sync::Arc;

use strata_image::{ChainOptions, Image};
use strata_qemu::machine::DiskBackend;
use strata_vhost::ServerHandle;

use crate::error::{Error, Result};
use crate::types::DiskInfo;
use nbd::NbdServer;
pub use plan::{attached, plan, Planned, Serve};

/// The server of one disk.
#[derive(Debug)]
enum Server {
    Nbd(NbdServer),
    Vhost(ServerHandle),
}

impl Server {
    fn socket(&self) -> &std::path::Path {
        match self {
            Server::Nbd(s) => s.socket(),
            Server::Vhost(h) => h.socket_path(),
        }
    }

    /// Stops serving: no new request is taken, those in flight end.
    async fn stop(self) -> Result<()> {
        match self {
            Server::Nbd(s) => s.stop().await,
            Server::Vhost(h) => tokio::task::spawn_blocking(move || h.stop())
                .await
                .map_err(|e| Error::Internal(format!("stopping a vhost-user-blk server: {e}"))),
        }
    }
}

/// One disk being served.
#[derive(Debug)]
pub struct ServedDisk {
    /// The guest device (`target dev`).
    pub target: String,
    /// The top image file.
    pub source: PathBuf,
    /// What QEMU attaches.
    pub backend: DiskBackend,
    image: Arc<dyn Image>,
    server: Server,
}

impl ServedDisk {
    /// How the API shows it.
    pub fn info(&self) -> DiskInfo {
        DiskInfo {
            target: self.target.clone(),
            source: self.source.display().to_string(),
            backend: match self.backend {
                DiskBackend::Nbd { .. } => "nbd",
                DiskBackend::VhostUser { .. } => "vhost-user-blk",
            }
            .to_string(),
            socket: self.server.socket().display().to_string(),
        }
    }

    /// How the run's record names it.
    pub fn record(&self) -> crate::journal::DiskRecord {
        crate::journal::DiskRecord {
            target: self.target.clone(),
            source: self.source.clone(),
            backend: self.info().backend,
        }
    }

    /// Records that `image` (a new overlay on the old top) is served now.
    pub fn replace_top(&mut self, image: Arc<dyn Image>) {
        self.source = PathBuf::from(image.path());
        self.image = image;
    }

    /// Stops serving, then flushes and closes the image.
    pub async fn close(self) -> Result<()> {
        let ServedDisk {
            target,
            source,
            image,
            server,
            ..
        } = self;
        let stopped = server.stop().await;
        let closed = tokio::task::spawn_blocking(move || {
            let r = image.close();
            drop(image);
            r
        })
        .await
        .map_err(|e| Error::Internal(format!("closing {target}: {e}")))?
        .map_err(|source_err| Error::Disk {
            target: target.clone(),
            path: source.clone(),
            source: source_err,
        });
        tracing::info!(disk = %target, "closed");
        stopped.and(closed)
    }
}

/// Opens and serves every planned disk. On a failure the disks already
/// served are closed again.
pub async fn serve_all(plan: Vec<Planned>) -> Result<Vec<ServedDisk>> {
    let mut served = Vec::new();
    for w in plan {
        match serve_one(w).await {
            Ok(d) => served.push(d),
            Err(e) => {
                close_all(served).await;
                return Err(e);
            }
        }
    }
    Ok(served)
}

async fn serve_one(w: Planned) -> Result<ServedDisk> {
    let read_only = w.read_only;
    let opts = ChainOptions {
        writable: !read_only,
        format: w.format,
        lock: true,
        ..ChainOptions::default()
    };
    let path = w.source.clone();
    let image = tokio::task::spawn_blocking(move || strata_image::open(&path, &opts))
        .await
        .map_err(|e| Error::Internal(format!("opening {}: {e}", w.target)))?
        .map_err(|source| Error::Disk {
            target: w.target.clone(),
            path: w.source.clone(),
            source,
        })?;
    let server = match &w.backend {
        DiskBackend::Nbd { socket, .. } => {
            Server::Nbd(NbdServer::start(&w.target, image.clone(), socket).await?)
        }
        DiskBackend::VhostUser {
            socket,
            num_queues,
            queue_size,
        } => {
            let (target, image, socket) = (w.target.clone(), image.clone(), socket.clone());
            let (queues, size, serial) = (*num_queues, *queue_size, w.serial.clone());
            Server::Vhost(
                tokio::task::spawn_blocking(move || {
                    vhost::start(
                        &target,
                        image,
                        &socket,
                        queues,
                        size,
                        read_only,
                        serial.as_deref(),
                    )
                })
                .await
                .map_err(|e| Error::Internal(format!("serving {}: {e}", w.target)))??,
            )
        }
    };
    let kind = match w.backend {
        DiskBackend::Nbd { .. } => Serve::Nbd,
        DiskBackend::VhostUser { .. } => Serve::VhostUser,
    };
    tracing::info!(disk = %w.target, source = %w.source.display(), socket = %server.socket().display(), backend = kind.as_str(), "serving");
    Ok(ServedDisk {
        backend: w.backend,
        target: w.target,
        source: w.source,
        image,
        server,
    })
}

/// Closes every disk, logging failures; returns the first.
pub async fn close_all(disks: Vec<ServedDisk>) -> Option<Error> {
    let mut first = None;
    for d in disks {
        let target = d.target.clone();
        if let Err(e) = d.close().await {
            tracing::error!(disk = %target, error = %e, "closing failed");
            first.get_or_insert(e);
        }
    }
    first
}
