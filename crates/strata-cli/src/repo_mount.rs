//! `strata repo mount`: every disk of a backup served over NBD, each an
//! export named by its disk (`vda`), read in place from the repository
//! (strata-repo's `BackupDisk`) until SIGINT or SIGTERM: read-only, or
//! with `--writable FOLDER` writable through a qcow2 overlay per disk in
//! that folder, whose backing is the backup (the backup never changes).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use strata_core::serve::export::ImageExport;
use strata_core::serve::{serve_until, Endpoint};
use strata_image::qcow2::{CreateOptions, OpenOptions, Qcow2};
use strata_image::storage::FileStorage;
use strata_image::Image;
use strata_nbd::{Config, Exports};
use strata_repo::image::BackupDisk;
use strata_repo::Repo;

use crate::exit::OK;
use crate::output::Output;
use crate::repo_args::RepoMountArgs;

/// Clients served at once (multi-conn is offered).
const CLIENTS: usize = 8;

/// Runs `repo mount` of `repo`.
pub fn run(repo: Repo, a: &RepoMountArgs, out: &Output) -> Result<u8> {
    let endpoint = match (&a.socket, &a.bind) {
        (Some(path), _) => Endpoint::Unix(path.clone()),
        (None, Some(addr)) => Endpoint::Tcp {
            addr: addr
                .parse::<SocketAddr>()
                .map_err(|_| anyhow!("--bind '{addr}' is not ADDR:PORT"))?,
            insecure: a.insecure,
        },
        (None, None) => return Err(anyhow!("give --socket PATH or --bind ADDR:PORT")),
    };
    let repo = Arc::new(repo);
    let m = repo.backup(&a.backup)?;
    let mut exports = Exports::new();
    let mut names = Vec::new();
    if let Some(dir) = &a.writable {
        claim(dir, &m.id)?;
    }
    for d in &m.disks {
        let disk: Arc<dyn Image> = Arc::new(BackupDisk::open(repo.clone(), &m.id, &d.name)?);
        let disk = match &a.writable {
            Some(dir) => overlay(&dir.join(format!("{}.qcow2", d.name)), disk)?,
            None => disk,
        };
        let export = ImageExport::new(disk, &[], false)?;
        exports.add(d.name.clone(), Arc::new(export));
        names.push(d.name.clone());
    }
    let config = Config {
        max_clients: CLIENTS,
        persistent: true,
        ..Config::default()
    };
    serve_until(exports, &endpoint, config, |shown| {
        let _ = if out.json() {
            out.print_json(&serde_json::json!({
                "backup": m.id,
                "domain": m.label,
                "endpoint": shown,
                "exports": names,
                "writable": a.writable,
            }))
        } else {
            out.say(&format!(
                "Backup {} of domain '{}' served {} on {shown}: {}",
                m.id,
                m.label,
                match &a.writable {
                    Some(dir) => format!("writable (overlays in {})", dir.display()),
                    None => "read-only".to_string(),
                },
                names.join(", ")
            ))
        };
        crate::nbd::stop_signal()
    })?;
    Ok(OK)
}

/// Name of the file in an overlay folder saying which backup its
/// overlays go over.
const CLAIM: &str = "backup";

/// Makes overlay folder `dir` (0700) for backup `id`, or checks that the
/// one there is for it: overlays over another backup would read wrong.
fn claim(dir: &Path, id: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("{}: cannot make the folder", dir.display()))?;
    let file = dir.join(CLAIM);
    match std::fs::read_to_string(&file) {
        Ok(there) if there.trim() == id => Ok(()),
        Ok(there) => bail!(
            "{}: its overlays go over backup {}, not {id}",
            dir.display(),
            there.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("{}: cannot create", file.display()))?;
            std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes())
                .with_context(|| format!("{}: cannot write", file.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", file.display())),
    }
}

/// The qcow2 overlay `path` (made when missing, as large as the disk, no
/// backing file named: its backing is `below`, given here) open writable
/// on `below`.
fn overlay(path: &Path, below: Arc<dyn Image>) -> Result<Arc<dyn Image>> {
    if !path.exists() {
        Qcow2::create_file(
            path,
            &CreateOptions {
                size: below.size(),
                ..CreateOptions::default()
            },
        )?;
    }
    let st = Arc::new(FileStorage::open(path, true)?);
    let q = Qcow2::open(
        st,
        Some(below.clone()),
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )?;
    if q.size() != below.size() {
        bail!(
            "{}: an overlay of {} bytes over a disk of {}",
            path.display(),
            q.size(),
            below.size()
        );
    }
    Ok(Arc::new(q))
}
