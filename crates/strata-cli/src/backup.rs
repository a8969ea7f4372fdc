//! `strata backup`: backups of a machine's disks as virsh's backup-begin,
//! domjobinfo, domjobabort and backup-dumpxml present them, for a machine
//! that is not running. Push mode: `begin` copies and waits for the end.
//! Pull mode: `begin` serves each disk over NBD (with the changes since a
//! checkpoint as a dirty-bitmap context) until `backup abort` or a signal.
//! `status` and `abort` work on it from another process.

use std::path::Path;
use std::time::Duration;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use strata_core::backup::pull::{self as backup_pull, PullBackup};
use strata_core::backup::push::{self as backup_push, BeginRequest};
use strata_core::backup::{BackupDef, BackupMode, BackupServer};
use strata_core::store::{Job, JobState};
use strata_core::Store;
use strata_image::ChainOptions;
use strata_nbd::{Config, Exports, Tls};

use crate::cli::BackupCommand;
use crate::domain::{read_xml, state_dir};
use crate::exit::OK;
use crate::nbd::export::ImageExport;
use crate::nbd::{serve_until, stop_signal, Endpoint};
use crate::output::{human_size, Output};
use crate::progress::Progress;

/// How long `abort` waits for the job's process to stop.
const ABORT_WAIT: Duration = Duration::from_secs(60);

/// Runs `strata backup …`.
pub fn run(cmd: BackupCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    let mut store = Store::open(&state_dir(state)?)?;
    match cmd {
        BackupCommand::Begin(a) => {
            let text = |f: &Option<std::path::PathBuf>| -> Result<Option<String>> {
                Ok(read_xml(f.as_deref())?.map(|(_, t)| t))
            };
            let req = BeginRequest {
                backup_xml: text(&a.backupxml)?,
                checkpoint_xml: text(&a.checkpointxml)?,
                reuse_external: a.reuse_external,
            };
            let def = match (&req.backup_xml, &a.backupxml) {
                (Some(x), Some(file)) => {
                    let what = format!(
                        "domain '{}': backup: --backupxml {}",
                        a.domain,
                        file.display()
                    );
                    Some(BackupDef::from_xml(x, &what)?)
                }
                _ => None,
            };
            if let Some(def) = def.filter(|d| d.mode == BackupMode::Pull) {
                // Credentials are checked before anything is recorded.
                let tls = match (def.tls, &a.tls_creds) {
                    (true, Some(dir)) => Some(
                        Tls::x509_dir(dir)
                            .with_context(|| format!("--tls-creds {}", dir.display()))?,
                    ),
                    (true, None) => bail!(
                        "domain '{}': <server tls='yes'> needs the server's TLS credentials: --tls-creds DIR",
                        a.domain
                    ),
                    (false, Some(_)) => bail!("--tls-creds is for <server tls='yes'>"),
                    (false, None) => None,
                };
                return serve_pull(&mut store, &a.domain, &req, tls, out);
            }
            if a.tls_creds.is_some() {
                bail!("--tls-creds is for a pull backup with <server tls='yes'>");
            }
            let bar = Progress::new(out, "backing up");
            let job = backup_push::begin(&mut store, &a.domain, &req, &|d, t| bar.update(d, t))?;
            bar.finish();
            if out.json() {
                out.print_json(&job)?;
            } else {
                out.say(&format!(
                    "Backup of domain '{}' completed: {} copied",
                    a.domain,
                    human_size(job.total)
                ))?;
            }
        }
        BackupCommand::Status(a) => match backup_push::status(&mut store, &a.domain)? {
            None if out.json() => out.print_json(&serde_json::Value::Null)?,
            None => out.text("Job type:         None\n\n")?,
            Some(job) if out.json() => out.print_json(&job)?,
            Some(job) => out.text(&describe(&job))?,
        },
        BackupCommand::Abort(a) => {
            let job = backup_push::abort(&mut store, &a.domain, ABORT_WAIT)?;
            if out.json() {
                out.print_json(&job)?;
            } else {
                out.say(&format!(
                    "Backup of domain '{}' {}",
                    a.domain,
                    job.state.as_str()
                ))?;
            }
        }
        BackupCommand::Dumpxml(a) => {
            out.no_json("backup dumpxml")?;
            match store.job(&a.domain)? {
                Some(job) if job.kind == "backup" => out.text(&job.xml)?,
                _ => bail!("domain '{}': no backup job has run", a.domain),
            }
        }
    }
    Ok(OK)
}

/// A pull backup: begins it, serves its exports until `backup abort` or a
/// signal, and ends the job.
fn serve_pull(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    tls: Option<Tls>,
    out: &Output,
) -> Result<u8> {
    let pull = backup_pull::begin(store, domain, req)?;
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
            let _ = out.say(&format!(
                "Backup of domain '{domain}' served on {shown}: {}",
                names.join(", ")
            ));
            async move {
                tokio::select! {
                    _ = stop_signal() => {}
                    _ = aborted(dir, domain.to_string()) => {}
                }
            }
        })
    });
    let job = pull.end(
        store,
        served.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
    )?;
    served?;
    if out.json() {
        out.print_json(&job)?;
    } else {
        out.say(&format!("Backup of domain '{domain}' ended"))?;
    }
    Ok(OK)
}

/// Clients a pull backup serves at once.
const PULL_CLIENTS: usize = 8;

/// Each disk's chain as a read-only export, and where to listen.
fn exports_of(pull: &PullBackup) -> Result<(Exports, Endpoint)> {
    let mut exports = Exports::new();
    for d in &pull.disks {
        let img = strata_image::open(&d.source, &ChainOptions::default())
            .with_context(|| format!("disk '{}'", d.disk))?;
        let mut e = ImageExport::new(img, &[], false)?;
        if let Some((name, ranges)) = &d.bitmap {
            e.add_dirty_ranges(name, ranges.clone());
        }
        exports.add(d.export_name.clone(), Arc::new(e));
    }
    let endpoint = match &pull.server {
        BackupServer::Unix { socket } => Endpoint::Unix(socket.clone()),
        BackupServer::Tcp { name, port } => {
            let port = port.unwrap_or(NBD_PORT);
            let addr = (name.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| anyhow!("<server name='{name}'>: cannot resolve the address"))?;
            Endpoint::Tcp {
                addr,
                insecure: false,
            }
        }
    };
    Ok((exports, endpoint))
}

/// NBD's registered port.
const NBD_PORT: u16 = 10809;

/// Completes when `backup abort` asks the job in `dir` for `domain` to
/// stop (looked at every 100 ms on a connection of its own).
async fn aborted(dir: PathBuf, domain: String) {
    let Ok(mut st) = Store::open(&dir) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(true) = PullBackup::abort_requested(&mut st, &domain) {
            return;
        }
    }
}

/// A job as `virsh domjobinfo` shows one.
fn describe(job: &Job) -> String {
    let kind = match job.state {
        JobState::Running | JobState::Finishing => "Unbounded",
        JobState::Completed => "Completed",
        JobState::Failed => "Failed",
        JobState::Aborted => "Cancelled",
    };
    let end = job.ended.unwrap_or_else(strata_core::now);
    let mut s = format!(
        "{:<17} {kind}\n{:<17} Backup\n{:<17} {} s\n{:<17} {}\n{:<17} {}\n{:<17} {}\n",
        "Job type:",
        "Operation:",
        "Time elapsed:",
        end.saturating_sub(job.started),
        "Data processed:",
        human_size(job.done),
        "Data remaining:",
        human_size(job.total.saturating_sub(job.done)),
        "Data total:",
        human_size(job.total),
    );
    if let Some(e) = &job.error {
        s.push_str(&format!("{:<17} {e}\n", "Error message:"));
    }
    s.push('\n');
    s
}
