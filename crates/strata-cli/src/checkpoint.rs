//! `strata checkpoint`: points in time from which a machine's disks track
//! changes (a persistent bitmap per disk), as virsh's checkpoint-* commands
//! present them: create, list, dumpxml (`--size`: bytes changed since),
//! parent, delete (the deleted intervals fold into the parent's bitmap),
//! create from XML or `--redefine` (metadata only), and verify (whether the
//! changes since each checkpoint can still be told exactly, and why not).

use std::path::Path;

use anyhow::{bail, Result};
use strata_core::checkpoint::health::{self, DiskHealth};
use strata_core::checkpoint::redefine as checkpoint_redefine;
use strata_core::checkpoint::{self, CheckpointRequest};
use strata_core::Store;

use crate::cli::CheckpointCommand;
use crate::domain::{read_xml, state_dir};
use crate::exit::OK;
use crate::output::{human_size, Output};
use strata_core::checkpoint::list as checkpoint_list;
use strata_core::tree;

/// Runs `strata checkpoint …`.
pub fn run(cmd: CheckpointCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    let dir = state_dir(state)?;
    let changes = match &cmd {
        CheckpointCommand::Create(a) if a.redefine => {
            Some((&a.domain, "checkpoint create --redefine"))
        }
        CheckpointCommand::Delete(a) => Some((&a.domain, "checkpoint delete")),
        _ => None,
    };
    if let Some((domain, what)) = changes {
        crate::live::refuse_if_running(&dir, domain, what)?;
    }
    let live = match &cmd {
        CheckpointCommand::Create(a) if !a.redefine => crate::live::is_active(&dir, &a.domain)?,
        CheckpointCommand::Verify(a) => crate::live::is_active(&dir, &a.domain)?,
        CheckpointCommand::Dumpxml(a) if a.size => crate::live::is_active(&dir, &a.domain)?,
        _ => false,
    };
    let mut store = Store::open(&dir)?;
    match cmd {
        CheckpointCommand::Create(a) => {
            let xml = read_xml(a.xmlfile.as_deref())?;
            let mut stall_us = None;
            let def = match &xml {
                Some((_, text)) if a.redefine => {
                    checkpoint_redefine::redefine(&mut store, &a.domain, text)?
                }
                _ => {
                    let mut req = CheckpointRequest {
                        name: a.name,
                        description: a.description,
                        diskspecs: a.diskspec,
                    };
                    if let Some((file, text)) = &xml {
                        let from = CheckpointRequest::from_xml(text, file)?;
                        req.name = req.name.or(from.name);
                        req.description = req.description.or(from.description);
                        for spec in from.diskspecs {
                            let disk = spec.split(',').next().unwrap_or_default().to_string();
                            if !req
                                .diskspecs
                                .iter()
                                .any(|s| s.split(',').next() == Some(&disk))
                            {
                                req.diskspecs.push(spec);
                            }
                        }
                    }
                    if live {
                        let made = crate::live::client(&dir)
                            .checkpoint_create(&a.domain, &req)
                            .map_err(crate::live::api_error)?;
                        stall_us = made.stall_us;
                        checkpoint::checkpoints(&store, &a.domain)?
                            .into_iter()
                            .find(|c| c.name == made.name)
                            .ok_or_else(|| {
                                anyhow::anyhow!("checkpoint '{}' was not recorded", made.name)
                            })?
                    } else {
                        checkpoint::create(&mut store, &a.domain, &req)?
                    }
                }
            };
            if out.json() {
                let mut v = serde_json::json!({ "name": def.name });
                if let Some(us) = stall_us {
                    v["stall_us"] = us.into();
                    v["stall-ms"] = crate::snapshot::stall_ms(us).into();
                }
                out.print_json(&v)?;
            } else {
                let from = xml.map(|(f, _)| format!(" from '{f}'")).unwrap_or_default();
                out.say(&format!("Domain checkpoint {} created{from}", def.name))?;
            }
        }
        CheckpointCommand::List(a) => {
            if a.tree {
                let nodes = checkpoint_list::nodes(&checkpoint::checkpoints(&store, &a.domain)?);
                if out.json() {
                    out.print_json(&tree::nested(&nodes, None))?;
                } else {
                    out.text(&tree::draw(&nodes, None))?;
                }
                return Ok(OK);
            }
            let filter = checkpoint_list::ListFilter {
                roots: a.roots,
                leaves: a.leaves,
                no_leaves: a.no_leaves,
                topological: a.topological,
            };
            let all = checkpoint_list::list(&store, &a.domain, filter)?;
            if out.json() {
                let v: Vec<_> = all
                    .iter()
                    .map(|c| serde_json::json!({"name": c.name, "parent": c.parent, "creation_time": c.creation_time}))
                    .collect();
                out.print_json(&v)?;
            } else if a.name {
                let text: String = all.iter().map(|c| format!("{}\n", c.name)).collect();
                out.text(&format!("{text}\n"))?;
            } else {
                let w = all.iter().map(|c| c.name.len()).max().unwrap_or(0).max(4);
                let mut s = format!(
                    " {:<w$}   {}\n{}\n",
                    "Name",
                    if a.parent { "Parent" } else { "Creation Time" },
                    "-".repeat(w + 32)
                );
                for c in &all {
                    let col = if a.parent {
                        c.parent.clone().unwrap_or_default()
                    } else {
                        c.creation_time.to_string()
                    };
                    s.push_str(format!(" {:<w$}   {col}", c.name).trim_end());
                    s.push('\n');
                }
                out.text(&format!("{s}\n"))?;
            }
        }
        CheckpointCommand::Dumpxml(a) => {
            out.no_json("checkpoint dumpxml")?;
            let all = checkpoint::checkpoints(&store, &a.domain)?;
            let Some(def) = all.iter().find(|c| c.name == a.checkpoint) else {
                bail!(
                    "domain '{}': checkpoint '{}' not found",
                    a.domain,
                    a.checkpoint
                );
            };
            if !a.size {
                out.text(&def.to_xml(None, !a.no_domain))?;
                return Ok(OK);
            }
            let health = health_of(&dir, &store, &a.domain, Some(&a.checkpoint), live)?;
            let sizes: Vec<(String, u64)> = health
                .iter()
                .filter_map(|h| Some((h.disk.clone(), h.changed?)))
                .collect();
            out.text(&def.to_xml(Some(&sizes), !a.no_domain))?;
            let broken: Vec<&DiskHealth> = health.iter().filter(|h| !h.sound()).collect();
            for h in &broken {
                crate::exit::warn(&format!(
                    "disk '{}': no size: {}",
                    h.disk,
                    h.problem.as_deref().unwrap_or_default()
                ));
            }
            if !broken.is_empty() {
                bail!(
                    "domain '{}': checkpoint '{}': the changes since it cannot be told on {} disk(s)",
                    a.domain,
                    a.checkpoint,
                    broken.len()
                );
            }
        }
        CheckpointCommand::Verify(a) => {
            let health = health_of(&dir, &store, &a.domain, a.checkpoint.as_deref(), live)?;
            if out.json() {
                out.print_json(&health)?;
            } else {
                out.text(&health_table(&health))?;
            }
            let broken = health.iter().filter(|h| !h.sound()).count();
            if broken > 0 {
                bail!(
                    "domain '{}': {broken} of {} checkpoint disks are broken: an incremental backup from them would miss changes (`backup begin --fallback-full` takes a full one instead)",
                    a.domain,
                    health.len()
                );
            }
        }
        CheckpointCommand::Delete(a) => {
            let how = checkpoint::CheckpointDelete {
                children: a.children,
                children_only: a.children_only,
                metadata_only: a.metadata,
            };
            let gone = checkpoint::delete(&mut store, &a.domain, &a.checkpoint, how)?;
            if out.json() {
                out.print_json(&serde_json::json!({ "deleted": gone }))?;
            } else {
                out.say(&format!("Domain checkpoint {} deleted", a.checkpoint))?;
            }
        }
        CheckpointCommand::Parent(a) => {
            let all = checkpoint::checkpoints(&store, &a.domain)?;
            match all.iter().find(|c| c.name == a.snapshot) {
                Some(c) => match &c.parent {
                    Some(p) if out.json() => out.print_json(&serde_json::json!({ "parent": p }))?,
                    Some(p) => out.text(&format!("{p}\n"))?,
                    None => bail!(
                        "domain '{}': checkpoint '{}' has no parent",
                        a.domain,
                        a.snapshot
                    ),
                },
                None => bail!(
                    "domain '{}': checkpoint '{}' not found",
                    a.domain,
                    a.snapshot
                ),
            }
        }
    }
    Ok(OK)
}

/// The health of checkpoint `name` (every one: `None`) of `domain`, per
/// disk: asked of the daemon when the domain runs (`live`), whose served
/// images hold the bitmaps' truth.
fn health_of(
    dir: &Path,
    store: &Store,
    domain: &str,
    name: Option<&str>,
    live: bool,
) -> Result<Vec<DiskHealth>> {
    if !live {
        return Ok(health::verify(
            store,
            domain,
            name,
            &strata_image::transaction::Held::none(),
        )?);
    }
    if let Some(n) = name {
        if !checkpoint::checkpoints(store, domain)?
            .iter()
            .any(|c| c.name == n)
        {
            bail!("domain '{domain}': checkpoint '{n}' not found");
        }
    }
    let all = crate::live::client(dir)
        .checkpoint_health(domain)
        .map_err(crate::live::api_error)?;
    Ok(all
        .into_iter()
        .filter(|h| name.is_none_or(|n| h.checkpoint == n))
        .collect())
}

/// `checkpoint verify`'s table: a line per checkpoint and disk.
fn health_table(health: &[DiskHealth]) -> String {
    let w = health
        .iter()
        .map(|h| h.checkpoint.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let d = health
        .iter()
        .map(|h| h.disk.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut s = format!(
        " {:<w$}   {:<d$}   {:<10}   Health\n{}\n",
        "Checkpoint",
        "Disk",
        "Changed",
        "-".repeat(w + d + 30)
    );
    for h in health {
        let changed = h.changed.map(human_size).unwrap_or_else(|| "-".into());
        let state = match &h.problem {
            None => "ok".to_string(),
            Some(p) => format!("broken: {p}"),
        };
        s.push_str(&format!(
            " {:<w$}   {:<d$}   {changed:<10}   {state}\n",
            h.checkpoint, h.disk
        ));
    }
    s.push('\n');
    s
}
