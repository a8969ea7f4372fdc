//! `strata domain`: machines defined from libvirt domain XML, kept in the
//! metadata store of the state folder (`--state-dir`, `STRATA_STATE_DIR`,
//! else `$XDG_STATE_HOME/strata` or `~/.local/state/strata`). Output as
//! virsh prints it; `--output json` gives records.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use strata_core::store::{default_state_dir, Defined};
use strata_core::{Domain, Store};

use crate::cli::DomainCommand;
use crate::exit::OK;
use crate::lifecycle::Op;
use crate::output::Output;

/// The state folder the global options name, or the default one.
pub fn state_dir(given: Option<&Path>) -> Result<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(default_state_dir)
        .ok_or_else(|| {
            anyhow!("no state folder: give --state-dir or set STRATA_STATE_DIR (HOME is not set)")
        })
}

/// Runs `strata domain …`.
pub fn run(cmd: DomainCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    let dir = state_dir(state)?;
    let mut store = Store::open(&dir)?;
    match cmd {
        DomainCommand::Define(a) => {
            let shown = a.file.display().to_string();
            let text = std::fs::read_to_string(&a.file)
                .with_context(|| format!("{shown}: cannot read"))?;
            let dom = Domain::from_xml(&text, &shown)?;
            let how = store.define(&dom)?;
            if out.json() {
                out.print_json(&serde_json::json!({
                    "name": dom.name(),
                    "uuid": dom.uuid(),
                    "new": how == Defined::New,
                }))?;
            } else {
                out.say(&format!("Domain '{}' defined from {shown}", dom.name()))?;
            }
        }
        DomainCommand::List(a) => return crate::lifecycle::list(&a, &dir, out),
        DomainCommand::Start(a) => {
            let op = Op::Start {
                paused: a.paused,
                force_boot: a.force_boot,
            };
            return crate::lifecycle::run_op(op, &a.domain, &dir, out);
        }
        DomainCommand::Shutdown(a) => {
            let op = Op::Shutdown { timeout: a.timeout };
            return crate::lifecycle::run_op(op, &a.domain, &dir, out);
        }
        DomainCommand::Destroy(a) => {
            return crate::lifecycle::run_op(Op::Destroy, &a.domain, &dir, out)
        }
        DomainCommand::Suspend(a) => {
            return crate::lifecycle::run_op(Op::Suspend, &a.domain, &dir, out)
        }
        DomainCommand::Resume(a) => {
            return crate::lifecycle::run_op(Op::Resume, &a.domain, &dir, out)
        }
        DomainCommand::Save(a) => return crate::save::save(&a, &dir, out),
        DomainCommand::Restore(a) => return crate::save::restore(&a, &dir, out),
        DomainCommand::ManagedSave(a) => return crate::save::managed_save(&a, &dir, out),
        DomainCommand::ManagedSaveRemove(a) => {
            return crate::save::managed_save_remove(&a.domain, &dir, out)
        }
        DomainCommand::Domstate(a) => return crate::lifecycle::domstate(&a, &dir, out),
        DomainCommand::Dumpxml(a) => {
            out.no_json("domain dumpxml")?;
            let dom = store.domain(&a.domain)?;
            out.text(&dom.to_xml(a.security_info))?;
        }
        DomainCommand::Undefine(a) => {
            refuse_running_undefine(&dir, &a.domain)?;
            let _lock = strata_core::lock::DomainLock::acquire(&dir, &a.domain)?;
            store.domain(&a.domain)?;
            if strata_core::live::managed::exists(&dir, &a.domain) {
                if !a.managed_save {
                    anyhow::bail!("Requested operation is not valid: refusing to undefine domain '{}' while its managed save exists (--managed-save removes it)", a.domain);
                }
                strata_core::live::managed::remove(&dir, &a.domain)?;
            }
            store.undefine(&a.domain, a.snapshots_metadata, a.checkpoints_metadata)?;
            out.say(&format!("Domain '{}' has been undefined", a.domain))?;
        }
    }
    Ok(OK)
}

/// Refuses to undefine a domain the daemon runs.
fn refuse_running_undefine(dir: &Path, name: &str) -> Result<()> {
    if let Some(d) = crate::live::daemon_view(dir, name).unwrap_or(None) {
        if d.state.is_active() {
            return Err(anyhow!(
                "Requested operation is not valid: cannot undefine domain '{name}': it is {} (destroy or shut it down first)",
                d.state.as_str()
            ));
        }
    }
    Ok(())
}

/// Reads an XML file given with `--xmlfile` and the like: `(name as
/// given, text)`, or `None` when no file was given.
pub fn read_xml(file: Option<&std::path::Path>) -> Result<Option<(String, String)>> {
    file.map(|f| {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        Ok((f.display().to_string(), text))
    })
    .transpose()
}
