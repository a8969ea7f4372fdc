//! `strata backup`: backups of a machine's disks as virsh's backup-begin,
//! domjobinfo, domjobabort and backup-dumpxml present them, for a machine
//! that is not running. Push mode: `begin` copies and waits for the end.
//! Pull mode: `begin` serves each disk over NBD (with the changes since a
//! checkpoint as a dirty-bitmap context) until `backup abort` or a signal.
//! `status` and `abort` work on it from another process.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strata_core::backup::push::{self as backup_push, BeginRequest};
use strata_core::backup::serve as backup_serve;
use strata_core::backup::{BackupDef, BackupMode};
use strata_core::store::{Job, JobState};
use strata_core::Store;
use strata_nbd::Tls;

use crate::cli::BackupCommand;
use crate::domain::{read_xml, state_dir};
use crate::exit::{FELL_BACK, OK};
use crate::nbd::stop_signal;
use crate::output::{human_size, Output};
use crate::progress::Progress;

/// How long `abort` waits for the job's process to stop.
const ABORT_WAIT: Duration = Duration::from_secs(60);

/// Runs `strata backup …`.
pub fn run(cmd: BackupCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    let dir = state_dir(state)?;
    let live = match &cmd {
        BackupCommand::Begin(a) => crate::live::is_active(&dir, &a.domain)?,
        _ => false,
    };
    let mut store = Store::open(&dir)?;
    match cmd {
        BackupCommand::Begin(a) => {
            let text = |f: &Option<std::path::PathBuf>| -> Result<Option<String>> {
                Ok(read_xml(f.as_deref())?.map(|(_, t)| t))
            };
            let req = BeginRequest {
                backup_xml: text(&a.backupxml)?,
                checkpoint_xml: text(&a.checkpointxml)?,
                reuse_external: a.reuse_external,
                fallback_full: a.fallback_full,
                tls: a.tls_creds.is_some(),
                in_process: false,
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
            if live {
                return begin_live(&dir, &a.domain, req, a.tls_creds.as_deref(), out);
            }
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
            return Ok(fell_back(&job));
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
/// `backup begin` of a running domain: the daemon runs it, and this
/// returns once the job has started (as virsh does); `backup status` shows
/// how it goes.
fn begin_live(
    dir: &Path,
    domain: &str,
    req: BeginRequest,
    tls_creds: Option<&Path>,
    out: &Output,
) -> Result<u8> {
    // The daemon reads the credentials: it is given their absolute path.
    let tls_creds = match tls_creds {
        Some(d) => {
            Some(std::path::absolute(d).with_context(|| format!("--tls-creds {}", d.display()))?)
        }
        None => None,
    };
    let body = strata_daemon::types::BackupRequest {
        backup_xml: req.backup_xml,
        checkpoint_xml: req.checkpoint_xml,
        fallback_full: req.fallback_full,
        reuse_external: req.reuse_external,
        tls_creds,
    };
    let job = crate::live::client(dir)
        .backup_begin(domain, &body)
        .map_err(crate::live::api_error)?;
    if out.json() {
        out.print_json(&job)?;
    } else {
        out.say(&format!("Backup of domain '{domain}' started"))?;
    }
    Ok(fell_back(&job))
}

/// Warns of each disk backed up in full instead of incrementally, and
/// gives the exit status: [`FELL_BACK`] when any was, else [`OK`].
fn fell_back(job: &Job) -> u8 {
    for line in &job.fallback {
        crate::exit::warn(line);
    }
    match job.fallback.is_empty() {
        true => OK,
        false => FELL_BACK,
    }
}

fn serve_pull(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    tls: Option<Tls>,
    out: &Output,
) -> Result<u8> {
    let ready = |shown: &str, names: &[String]| {
        let _ = out.say(&format!(
            "Backup of domain '{domain}' served on {shown}: {}",
            names.join(", ")
        ));
    };
    let job = backup_serve::serve_pull(store, domain, req, tls, ready, stop_signal())?;
    if out.json() {
        out.print_json(&job)?;
    } else {
        out.say(&format!("Backup of domain '{domain}' ended"))?;
    }
    Ok(fell_back(&job))
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
    for line in &job.fallback {
        s.push_str(&format!("{:<17} {line}\n", "Fallback:"));
    }
    if job.scratch > 0 {
        s.push_str(&format!("{:<17} {}\n", "Scratch:", human_size(job.scratch)));
    }
    s.push('\n');
    s
}
