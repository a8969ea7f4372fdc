//! The lifecycle commands of `strata domain`: start, shutdown, destroy,
//! suspend, resume, domstate and list. The daemon does the work; without
//! one, `domstate` and `list` say `shut off` for every defined domain and
//! the others (but `start`, which starts a daemon) fail as libvirt does for
//! a domain that is not running. Messages and JSON are the same either way.

use std::path::Path;

use anyhow::{anyhow, Result};
use serde::Serialize;
use strata_core::Store;
use strata_daemon::client::ClientError;
use strata_daemon::types::{DomainInfo, State};

use crate::exit::OK;
use crate::live::{self, api_error};
use crate::live_args::{DomainListArgs, DomstateArgs};
use crate::output::Output;

/// A lifecycle operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `start`, paused or not.
    Start {
        /// Leave the vCPUs stopped.
        paused: bool,
        /// Discard a managed save and boot afresh.
        force_boot: bool,
    },
    /// `shutdown`, waiting this many seconds.
    Shutdown {
        /// Seconds to wait (0: not at all).
        timeout: u64,
    },
    /// `destroy`.
    Destroy,
    /// `suspend`.
    Suspend,
    /// `resume`.
    Resume,
}

impl Op {
    /// The verb virsh's error names ("Failed to start domain").
    fn verb(self) -> &'static str {
        match self {
            Op::Start { .. } => "start",
            Op::Shutdown { .. } => "shutdown",
            Op::Destroy => "destroy",
            Op::Suspend => "suspend",
            Op::Resume => "resume",
        }
    }

    /// virsh's line on success.
    fn done(self, name: &str) -> String {
        match self {
            Op::Start { .. } => format!("Domain '{name}' started"),
            Op::Shutdown { .. } => format!("Domain '{name}' is being shutdown"),
            Op::Destroy => format!("Domain '{name}' destroyed"),
            Op::Suspend => format!("Domain '{name}' suspended"),
            Op::Resume => format!("Domain '{name}' resumed"),
        }
    }
}

/// The definition's UUID: an error naming the domain when it is not
/// defined.
fn defined(dir: &Path, name: &str) -> Result<String> {
    Ok(Store::open(dir)?.domain(name)?.uuid())
}

/// Runs a lifecycle operation on `name`.
pub fn run_op(op: Op, name: &str, dir: &Path, out: &Output) -> Result<u8> {
    let failed = |e: ClientError| -> anyhow::Error {
        match e.code() {
            Some("no-domain") => api_error(e),
            _ => api_error(e).context(format!("failed to {} domain '{name}'", op.verb())),
        }
    };
    let client = match op {
        Op::Start { .. } => {
            defined(dir, name)?;
            live::ensure_daemon(dir, out.quiet)?
        }
        _ => live::client(dir),
    };
    let answer = match op {
        Op::Start { paused, force_boot } => client.start_with(name, paused, force_boot),
        Op::Shutdown { timeout } => {
            let c = client.with_timeout(
                live::ANSWER_LIMIT.saturating_add(std::time::Duration::from_secs(timeout)),
            );
            c.shutdown(name, Some(timeout))
        }
        Op::Destroy => client.destroy(name),
        Op::Suspend => client.suspend(name),
        Op::Resume => client.resume(name),
    };
    let info = match answer {
        Ok(info) => info,
        Err(ClientError::NoDaemon { .. }) => {
            defined(dir, name)?;
            return Err(
                anyhow!("Requested operation is not valid: domain is not running")
                    .context(format!("failed to {} domain '{name}'", op.verb())),
            );
        }
        Err(e) => return Err(failed(e)),
    };
    if out.json() {
        out.print_json(&info)?;
    } else {
        out.say(&op.done(name))?;
    }
    Ok(OK)
}

/// `strata domain domstate`.
pub fn domstate(a: &DomstateArgs, dir: &Path, out: &Output) -> Result<u8> {
    let info = match live::daemon_view(dir, &a.domain)? {
        Some(i) => i,
        None => live::offline(a.domain.clone(), defined(dir, &a.domain)?),
    };
    if out.json() {
        out.print_json(&strata_daemon::types::StateInfo {
            state: info.state,
            reason: info.reason,
        })?;
    } else if a.reason {
        out.text(&format!(
            "{} ({})\n\n",
            info.state.as_str(),
            info.reason.as_str()
        ))?;
    } else {
        out.text(&format!("{}\n\n", info.state.as_str()))?;
    }
    Ok(OK)
}

/// One domain of `domain list --output json`.
#[derive(Debug, Serialize)]
struct Listed {
    id: Option<u32>,
    name: String,
    uuid: String,
    state: State,
    reason: strata_daemon::types::Reason,
    snapshots: u64,
    checkpoints: u64,
}

/// `strata domain list`.
pub fn list(a: &DomainListArgs, dir: &Path, out: &Output) -> Result<u8> {
    let store = Store::open(dir)?;
    let defined = store.list()?;
    let live: Vec<DomainInfo> = live::daemon_domains(dir)?.unwrap_or_default();
    let filtered = a.state_running || a.state_paused || a.state_shutoff;
    let wanted = |s: State| {
        if filtered {
            match s {
                State::Running => a.state_running,
                State::Paused => a.state_paused,
                State::ShutOff => a.state_shutoff,
            }
        } else {
            a.all || s.is_active()
        }
    };
    let listed: Vec<Listed> = defined
        .into_iter()
        .map(|d| {
            let info = live
                .iter()
                .find(|i| i.name == d.name)
                .cloned()
                .unwrap_or_else(|| live::offline(d.name.clone(), d.uuid.clone()));
            Listed {
                id: info.id,
                name: d.name,
                uuid: d.uuid,
                state: info.state,
                reason: info.reason,
                snapshots: d.snapshots,
                checkpoints: d.checkpoints,
            }
        })
        .filter(|l| wanted(l.state))
        .collect();
    if out.json() {
        out.print_json(&listed)?;
    } else {
        out.text(&table(&listed))?;
    }
    Ok(OK)
}

/// `virsh list`'s table: active domains first, by id, then the others.
fn table(listed: &[Listed]) -> String {
    let mut rows: Vec<&Listed> = listed.iter().collect();
    rows.sort_by_key(|l| (l.id.is_none(), l.id, l.name.clone()));
    let w = rows.iter().map(|d| d.name.len()).max().unwrap_or(0).max(4);
    let mut s = format!(" {:<4} {:<w$}   State\n", "Id", "Name");
    s.push_str(&"-".repeat(w + 18));
    s.push('\n');
    for d in rows {
        let id = d.id.map_or("-".to_string(), |i| i.to_string());
        s.push_str(&format!(
            " {:<4} {:<w$}   {}\n",
            id,
            d.name,
            d.state.as_str()
        ));
    }
    s.push('\n');
    s
}
