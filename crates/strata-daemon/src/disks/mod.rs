//! The disks of a running domain, served by the daemon: each image chain
//! is opened by strata-image (writable, with QEMU-compatible locks), never
//! by QEMU, and handed to a server QEMU connects to. Today that server is
//! strata's NBD server ([`nbd`]); strata-vhost's vhost-user-blk backend
//! becomes the default once it lands, with NBD kept as the per-disk
//! alternative.
//!
//! Closing a disk stops its server, then flushes and closes the image
//! (qcow2 bitmaps and refcounts written back, the dirty bit cleared), which
//! releases its locks.

pub mod nbd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_core::Domain;
use strata_image::{ChainOptions, Format, Image};
use strata_qemu::machine::DiskBackend;

use crate::error::{Error, Result};
use crate::types::DiskInfo;
use nbd::NbdServer;

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
    server: NbdServer,
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

/// A disk of a domain to serve: what to open and what QEMU will attach.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The guest device (`target dev`).
    pub target: String,
    /// The top image file.
    pub source: PathBuf,
    format: Option<Format>,
    read_only: bool,
    /// What QEMU attaches (its socket in the run folder).
    pub backend: DiskBackend,
}

/// The disks of `domain` and how each will be served from `run_dir`, or
/// an error naming the disk strata cannot serve. Nothing is opened yet.
pub fn plan(domain: &Domain, run_dir: &Path) -> Result<Vec<Planned>> {
    let name = domain.name();
    let refuse = |target: &str, why: String| Error::Config {
        domain: name.clone(),
        source: strata_core::Error::invalid(format!("<disk> '{target}'"), why),
    };
    let readonly: Vec<String> = domain
        .element()
        .child("devices")
        .into_iter()
        .flat_map(|d| d.elements().filter(|e| e.name == "disk"))
        .filter(|e| e.child("readonly").is_some())
        .filter_map(|e| {
            e.child("target")
                .and_then(|t| t.attr("dev"))
                .map(String::from)
        })
        .collect();
    let mut out = Vec::new();
    for d in domain.disks() {
        if d.device != "disk" || d.kind != "file" {
            return Err(refuse(
                &d.target,
                format!(
                    "device='{}' type='{}': only file disks run yet",
                    d.device, d.kind
                ),
            ));
        }
        if d.transient {
            return Err(refuse(
                &d.target,
                "<transient/> disks do not run yet".into(),
            ));
        }
        let source = d
            .source
            .clone()
            .ok_or_else(|| refuse(&d.target, "no <source file='…'/>".into()))?;
        let format = match d.format.as_deref() {
            None => None,
            Some(f) => Some(Format::parse(f).ok_or_else(|| {
                refuse(&d.target, format!("driver type '{f}' is not qcow2 or raw"))
            })?),
        };
        let read_only = readonly.contains(&d.target);
        out.push(Planned {
            backend: DiskBackend::Nbd {
                socket: run_dir.join(format!("{}.nbd.sock", d.target)),
                export: d.target.clone(),
                read_only,
                serial: None,
            },
            read_only,
            target: d.target,
            source,
            format,
        });
    }
    Ok(out)
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
    let opts = ChainOptions {
        writable: !w.read_only,
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
    let DiskBackend::Nbd { socket, .. } = &w.backend else {
        return Err(Error::Internal(format!(
            "disk {}: no NBD socket planned",
            w.target
        )));
    };
    let server = NbdServer::start(&w.target, image.clone(), socket).await?;
    tracing::info!(disk = %w.target, source = %w.source.display(), socket = %socket.display(), "serving over NBD");
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
