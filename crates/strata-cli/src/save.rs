//! `strata domain save` and `strata domain restore`, as `virsh save` and
//! `virsh restore`, and `domain managedsave` / `managedsave-remove`, as
//! virsh's: the daemon does the work (a save needs the running machine; a
//! restore starts a daemon if none runs; `domain start` restores a managed
//! save).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::exit::OK;
use crate::live::{self, api_error};
use crate::live_args::{DomainManagedSaveArgs, DomainRestoreArgs, DomainSaveArgs};
use crate::output::Output;
use strata_core::live::managed;

/// How long a save or a restore may take: the guest's memory goes through
/// a file.
const LIMIT: Duration = Duration::from_secs(3600);

/// `file` made absolute against the current folder (the daemon's is
/// another).
fn absolute(file: &Path) -> Result<PathBuf> {
    std::path::absolute(file).with_context(|| format!("{}", file.display()))
}

/// `strata domain save DOMAIN FILE [--running|--paused]`.
pub fn save(a: &DomainSaveArgs, dir: &Path, out: &Output) -> Result<u8> {
    let file = absolute(&a.file)?;
    let client = live::client(dir).with_timeout(LIMIT);
    let info = client
        .save(&a.domain, &file, a.after.paused())
        .map_err(|e| api_error(e).context(format!("failed to save domain '{}'", a.domain)))?;
    if out.json() {
        out.print_json(&info)?;
    } else {
        out.say(&format!(
            "Domain '{}' saved to {}",
            a.domain,
            a.file.display()
        ))?;
    }
    Ok(OK)
}

/// `strata domain restore FILE [--running|--paused]`.
pub fn restore(a: &DomainRestoreArgs, dir: &Path, out: &Output) -> Result<u8> {
    let file = absolute(&a.file)?;
    let client = live::ensure_daemon(dir, out.quiet)?.with_timeout(LIMIT);
    let info = client.restore(&file, a.after.paused()).map_err(|e| {
        api_error(e).context(format!(
            "failed to restore domain from {}",
            a.file.display()
        ))
    })?;
    if out.json() {
        out.print_json(&info)?;
    } else {
        out.say(&format!("Domain restored from {}", a.file.display()))?;
    }
    Ok(OK)
}

/// `strata domain managedsave DOMAIN [--running|--paused]`.
pub fn managed_save(a: &DomainManagedSaveArgs, dir: &Path, out: &Output) -> Result<u8> {
    strata_core::Store::open(dir)?.domain(&a.domain)?;
    let file = absolute(&managed::prepare(dir, &a.domain)?)?;
    let client = live::client(dir).with_timeout(LIMIT);
    let info = client
        .save(&a.domain, &file, a.after.paused())
        .map_err(|e| api_error(e).context(format!("failed to save domain '{}' state", a.domain)))?;
    if out.json() {
        out.print_json(&info)?;
    } else {
        out.say(&format!("Domain '{}' state saved by strata", a.domain))?;
    }
    Ok(OK)
}

/// `strata domain managedsave-remove DOMAIN`.
pub fn managed_save_remove(domain: &str, dir: &Path, out: &Output) -> Result<u8> {
    strata_core::Store::open(dir)?.domain(domain)?;
    let removed = managed::remove(dir, domain)?;
    if out.json() {
        out.print_json(&serde_json::json!({ "removed": removed }))?;
    } else if removed {
        out.say(&format!("Removed managedsave image for domain '{domain}'"))?;
    } else {
        out.say(&format!(
            "Domain '{domain}' has no managed save image; removal skipped"
        ))?;
    }
    Ok(OK)
}
