//! `strata nbd serve`: image chains served over NBD, as qemu-nbd serves
//! them, on a unix socket or TCP (loopback unless TLS is required with
//! `--tls-creds` or `--tls-psk`, or `--insecure` is given), until a signal
//! (or, without `--persistent`, until the last client leaves); then every
//! export is flushed and closed, which releases its image locks. As with
//! qemu-nbd, one client is served at a time unless `--shared` says more,
//! and multi-conn is offered only then.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use strata_image::{ChainOptions, Format, Image};
use strata_nbd::{Config, Exports, Tls};

use crate::cli::{NbdCommand, NbdServeArgs};
use crate::exit::{usage, OK};
use strata_core::serve::export::ImageExport;
use strata_core::serve::{serve_until, Endpoint};

/// One `EXPORT` argument.
#[derive(Debug, PartialEq, Eq)]
struct ExportSpec {
    name: String,
    file: PathBuf,
    format: Option<Format>,
    read_only: bool,
    bitmaps: Vec<String>,
    allocation_depth: bool,
    /// An internal snapshot to serve instead of the active state.
    snapshot: Option<String>,
}

impl ExportSpec {
    /// `FILE`, or `name=NAME,file=FILE[,format=qcow2|raw][,readonly]
    /// [,snapshot=SNAPNAME][,bitmap=NAME]…[,allocation-depth]`. A snapshot
    /// is served read-only, as qemu-nbd `-l` serves it.
    fn parse(s: &str) -> Result<ExportSpec> {
        let mut spec = ExportSpec {
            name: String::new(),
            file: PathBuf::new(),
            format: None,
            read_only: false,
            bitmaps: Vec::new(),
            allocation_depth: false,
            snapshot: None,
        };
        if !s.contains('=') {
            spec.file = PathBuf::from(s);
            return Ok(spec);
        }
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("name", v)) => spec.name = v.to_string(),
                Some(("file", v)) => spec.file = PathBuf::from(v),
                Some(("format", v)) => {
                    spec.format = Some(Format::parse(v).ok_or_else(|| {
                        usage(format!("export '{s}': format '{v}' is not qcow2 or raw"))
                    })?)
                }
                None if part == "readonly" => spec.read_only = true,
                Some(("bitmap", v)) if !v.is_empty() => spec.bitmaps.push(v.to_string()),
                None if part == "allocation-depth" => spec.allocation_depth = true,
                Some(("snapshot", v)) if !v.is_empty() => {
                    spec.snapshot = Some(v.to_string());
                    spec.read_only = true;
                }
                _ => {
                    return Err(usage(format!(
                        "export '{s}': '{part}' is not name=, file=, format=, readonly, snapshot=, bitmap= or allocation-depth"
                    )))
                }
            }
        }
        if spec.file.as_os_str().is_empty() {
            return Err(usage(format!("export '{s}' names no file=")));
        }
        if spec.snapshot.is_some() && !spec.bitmaps.is_empty() {
            return Err(usage(format!(
                "export '{s}': bitmap= tracks the active state, not a snapshot"
            )));
        }
        if !spec.bitmaps.is_empty() && !spec.read_only {
            // The bitmap is read when the export opens: writes would not
            // show in it.
            return Err(usage(format!(
                "export '{s}': bitmap= needs readonly (the bitmap is taken as the export opens)"
            )));
        }
        Ok(spec)
    }
}

/// The internal snapshot `name` of the qcow2 image `img`, read without
/// applying it; the view keeps the image open.
fn snapshot_of(img: Arc<dyn Image>, name: &str) -> Result<Arc<dyn Image>> {
    if img.internal_snapshots().is_none() {
        return Err(usage(format!(
            "{}: snapshot '{name}': only qcow2 images hold internal snapshots",
            img.path()
        )));
    }
    Ok(img.snapshot_view(name)?)
}

/// Runs `strata nbd …`.
pub fn run(cmd: NbdCommand) -> Result<u8> {
    match cmd {
        NbdCommand::Serve(a) => serve(a),
    }
}

fn serve(a: NbdServeArgs) -> Result<u8> {
    let specs = a
        .exports
        .iter()
        .map(|s| ExportSpec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let mut exports = Exports::new();
    for spec in &specs {
        if exports.all().any(|(n, _)| *n == spec.name) {
            return Err(usage(format!("export name '{}' is used twice", spec.name)));
        }
        let img = strata_image::open(
            &spec.file,
            &ChainOptions {
                writable: !spec.read_only,
                format: spec.format,
                ..Default::default()
            },
        )?;
        let img = match &spec.snapshot {
            Some(name) => snapshot_of(img, name)
                .with_context(|| format!("export '{}'", spec.file.display()))?,
            None => img,
        };
        let export = ImageExport::new(img, &spec.bitmaps, spec.allocation_depth)
            .with_context(|| format!("export '{}'", spec.file.display()))?;
        exports.add(spec.name.clone(), Arc::new(export));
    }
    let tls = match (&a.tls_creds, &a.tls_psk) {
        (Some(dir), _) => {
            Some(Tls::x509_dir(dir).with_context(|| format!("--tls-creds {}", dir.display()))?)
        }
        (None, Some(file)) => {
            Some(Tls::psk_file(file).with_context(|| format!("--tls-psk {}", file.display()))?)
        }
        (None, None) => None,
    };
    let config = Config {
        max_clients: a.shared,
        persistent: a.persistent,
        tls,
        handshake_limit: (a.handshake_limit > 0)
            .then(|| std::time::Duration::from_secs(a.handshake_limit)),
    };
    let endpoint = match (&a.socket, &a.bind) {
        (Some(path), _) => Endpoint::Unix(path.clone()),
        (None, Some(addr)) => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| usage(format!("--bind '{addr}' is not ADDR:PORT")))?;
            Endpoint::Tcp {
                addr,
                insecure: a.insecure,
            }
        }
        (None, None) => return Err(usage("give --socket PATH or --bind ADDR:PORT")),
    };
    serve_until(exports, &endpoint, config, |_| stop_signal())?;
    Ok(OK)
}

/// Completes on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_specs_parse() {
        let s = ExportSpec::parse("name=a,file=/x.qcow2,format=qcow2,readonly").unwrap();
        assert_eq!(
            s,
            ExportSpec {
                name: "a".into(),
                file: "/x.qcow2".into(),
                format: Some(Format::Qcow2),
                read_only: true,
                bitmaps: Vec::new(),
                allocation_depth: false,
                snapshot: None,
            }
        );
        let s = ExportSpec::parse("file=x,snapshot=s1").unwrap();
        assert_eq!(s.snapshot.as_deref(), Some("s1"));
        assert!(s.read_only, "a snapshot is served read-only");
        assert!(ExportSpec::parse("file=x,snapshot=s1,bitmap=b").is_err());
        let b = ExportSpec::parse("file=x,readonly,bitmap=b1,bitmap=b2,allocation-depth").unwrap();
        assert_eq!(b.bitmaps, ["b1", "b2"]);
        assert!(b.allocation_depth);
        assert!(
            ExportSpec::parse("file=x,bitmap=b1").is_err(),
            "bitmap needs readonly"
        );
        assert_eq!(ExportSpec::parse("disk.raw").unwrap().name, "");
        assert!(ExportSpec::parse("name=a").is_err());
        assert!(ExportSpec::parse("file=x,colour=red").is_err());
    }
}
