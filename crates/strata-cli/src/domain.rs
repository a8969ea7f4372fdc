//! `strata domain`: machines defined from libvirt domain XML, kept in the
//! metadata store of the state folder (`--state-dir`, `STRATA_STATE_DIR`,
//! else `$XDG_STATE_HOME/strata` or `~/.local/state/strata`). Output as
//! virsh prints it; `--output json` gives records.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use strata_core::store::{default_state_dir, Defined};
use strata_core::{Domain, Store};

use crate::cli::DomainCommand;
use crate::exit::OK;
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

/// One domain of `domain list --output json`.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    uuid: String,
    state: &'static str,
    snapshots: u64,
    checkpoints: u64,
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
        DomainCommand::List => {
            let listed: Vec<Listed> = store
                .list()?
                .into_iter()
                .map(|d| Listed {
                    name: d.name,
                    uuid: d.uuid,
                    // Machines are powered off until a hypervisor runs them.
                    state: "shut off",
                    snapshots: d.snapshots,
                    checkpoints: d.checkpoints,
                })
                .collect();
            if out.json() {
                out.print_json(&listed)?;
            } else {
                out.text(&list_table(&listed))?;
            }
        }
        DomainCommand::Dumpxml(a) => {
            out.no_json("domain dumpxml")?;
            let dom = store.domain(&a.domain)?;
            out.text(&dom.to_xml(a.security_info))?;
        }
        DomainCommand::Undefine(a) => {
            let _lock = strata_core::lock::DomainLock::acquire(&dir, &a.domain)?;
            store.undefine(&a.domain, a.snapshots_metadata, a.checkpoints_metadata)?;
            out.say(&format!("Domain '{}' has been undefined", a.domain))?;
        }
    }
    Ok(OK)
}

/// `virsh list --all`'s table.
fn list_table(listed: &[Listed]) -> String {
    let w = listed
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut s = format!(" {:<4} {:<w$}   State\n", "Id", "Name");
    s.push_str(&"-".repeat(w + 18));
    s.push('\n');
    for d in listed {
        s.push_str(&format!(" {:<4} {:<w$}   {}\n", "-", d.name, d.state));
    }
    s.push('\n');
    s
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
