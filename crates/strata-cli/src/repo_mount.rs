//! `strata repo mount`: every disk of a backup served over NBD, read-only,
//! each an export named by its disk (`vda`), read in place from the
//! repository (strata-repo's `BackupDisk`) until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use strata_core::serve::export::ImageExport;
use strata_core::serve::{serve_until, Endpoint};
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
    for d in &m.disks {
        let disk = BackupDisk::open(repo.clone(), &m.id, &d.name)?;
        let export = ImageExport::new(Arc::new(disk), &[], false)?;
        exports.add(d.name.clone(), Arc::new(export));
        names.push(d.name.clone());
    }
    let config = Config {
        max_clients: CLIENTS,
        persistent: true,
        ..Config::default()
    };
    serve_until(exports, &endpoint, config, |shown| {
        let _ = out.say(&format!(
            "Backup {} of domain '{}' served read-only on {shown}: {}",
            m.id,
            m.label,
            names.join(", ")
        ));
        crate::nbd::stop_signal()
    })?;
    Ok(OK)
}
