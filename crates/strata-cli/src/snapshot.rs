//! `strata snapshot`: a machine's snapshot tree, as virsh's snapshot-*
//! commands present it (create, list with filters and `--tree`, dumpxml,
//! current, parent, info). Revert and delete come next (issue 5).

use std::path::Path;

use anyhow::{bail, Result};
use strata_core::snapshot::create::{self as snapshot_create, CreateRequest, DiskSpec};
use strata_core::snapshot::delete::{self as snapshot_delete, DeleteRequest};
use strata_core::snapshot::memspec::MemSpec;
use strata_core::snapshot::{redefine as snapshot_redefine, revert as snapshot_revert};
use strata_core::snapshot::{DiskMode, SnapshotDef};
use strata_core::store::SnapshotRow;
use strata_core::Store;

use crate::cli::DomSnapshotCommand;
use crate::domain::{read_xml, state_dir};
use crate::exit::{usage, OK};
use crate::lifecycle::Op;
use crate::output::Output;
use strata_core::snapshot::list::{self as snapshot_list, ListFilter, Listed};
use strata_core::tree;

fn location(def: &SnapshotDef) -> &'static str {
    if def.is_external() {
        "external"
    } else {
        "internal"
    }
}

/// `2026-11-22 09:20:00 +0000`, as virsh prints creation times.
fn virsh_time(secs: i64) -> String {
    match strata_image::localtime::local_time(secs.max(0) as u64) {
        Some(t) => {
            let off = t.utc_offset;
            let sign = if off < 0 { '-' } else { '+' };
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}{:02}",
                t.year,
                t.month,
                t.day,
                t.hour,
                t.minute,
                t.second,
                off.abs() / 3600,
                off.abs() % 3600 / 60
            )
        }
        None => secs.to_string(),
    }
}

/// A stall of `us` µs in milliseconds, as `--output json` reports it
/// (`stall-ms`, beside the exact `stall_us`).
pub fn stall_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What `snapshot revert` says it did.
fn print_reverted(
    out: &Output,
    domain: &str,
    name: &str,
    moved: &[(String, std::path::PathBuf)],
) -> Result<()> {
    if out.json() {
        let disks: Vec<_> = moved
            .iter()
            .map(|(t, f)| serde_json::json!({"disk": t, "source": f}))
            .collect();
        out.print_json(&serde_json::json!({"name": name, "new_overlays": disks}))?;
    } else {
        out.say(&format!("Domain '{domain}' reverted to snapshot {name}"))?;
    }
    Ok(())
}

/// Runs `strata snapshot …`.
pub fn run(cmd: DomSnapshotCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    let dir = state_dir(state)?;
    let live = match &cmd {
        DomSnapshotCommand::Create(a) if !a.redefine => crate::live::is_active(&dir, &a.domain)?,
        DomSnapshotCommand::Delete(a) => crate::live::is_active(&dir, &a.domain)?,
        DomSnapshotCommand::Revert(a) => crate::live::is_active(&dir, &a.domain)?,
        _ => false,
    };
    let changes = match &cmd {
        DomSnapshotCommand::Create(a) if a.redefine => {
            Some((&a.domain, "snapshot create --redefine"))
        }
        _ => None,
    };
    if let Some((domain, what)) = changes {
        crate::live::refuse_if_running(&dir, domain, what)?;
    }
    let mut store = Store::open(&dir)?;
    match cmd {
        DomSnapshotCommand::Create(a) => {
            if !live && (a.live || a.halt) {
                bail!(
                    "domain '{}': --live and --halt need a running machine",
                    a.domain
                );
            }
            if a.live && a.disk_only {
                bail!(
                    "domain '{}': --live is for snapshots with memory (a --disk-only snapshot never pauses the guest)",
                    a.domain
                );
            }
            if a.current && !a.redefine {
                return Err(usage("--current needs --redefine"));
            }
            let xml = read_xml(a.xmlfile.as_deref())?;
            if xml.is_none() && a.redefine {
                return Err(usage("--redefine needs --xmlfile"));
            }
            if a.redefine {
                let (file, text) = xml.expect("checked above");
                let def = snapshot_redefine::redefine(&mut store, &a.domain, &text, a.current)?;
                if out.json() {
                    out.print_json(&serde_json::json!({ "name": def.name }))?;
                } else {
                    out.say(&format!(
                        "Domain snapshot {} created from '{file}'",
                        def.name
                    ))?;
                }
                return Ok(OK);
            }
            let mut diskspecs = a
                .diskspec
                .iter()
                .map(|s| DiskSpec::parse(s).map_err(|e| usage(e.to_string())))
                .collect::<Result<Vec<_>>>()?;
            let mut req = CreateRequest {
                name: a.name,
                description: a.description,
                disk_only: a.disk_only,
                diskspecs: Vec::new(),
                no_metadata: a.no_metadata,
                reuse_external: a.reuse_external,
                quiesce: a.quiesce,
                halt: a.halt,
                live: a.live,
                memspec: absolute_memspec(
                    a.memspec
                        .as_deref()
                        .map(MemSpec::parse)
                        .transpose()
                        .map_err(|e| usage(e.to_string()))?,
                )?,
            };
            if let Some((file, text)) = &xml {
                let from = snapshot_redefine::request_from_xml(text, file)?;
                req.name = req.name.or(from.name);
                req.description = req.description.or(from.description);
                if req.memspec.is_none() {
                    req.memspec = absolute_memspec(from.memspec)?;
                }
                // --diskspec options win over the XML's disks.
                for d in from.diskspecs {
                    if !diskspecs.iter().any(|s| s.target == d.target) {
                        diskspecs.push(d);
                    }
                }
            }
            req.diskspecs = diskspecs;
            let no_metadata = req.no_metadata;
            let (name, def, stall_us, frozen) = if live {
                let made = crate::live::client(&dir)
                    .snapshot_create(&a.domain, &req)
                    .map_err(crate::live::api_error)?;
                // Without metadata there is no record to read back.
                let def = match no_metadata {
                    true => None,
                    false => {
                        let row = store.snapshot(&a.domain, &made.name)?;
                        Some(SnapshotDef::from_xml(&row.xml, &made.name)?)
                    }
                };
                (made.name, def, made.stall_us, made.frozen)
            } else {
                let def = snapshot_create::create(&mut store, &a.domain, &req)?;
                (def.name.clone(), Some(def), None, None)
            };
            if out.json() {
                let mut v = serde_json::json!({ "name": name });
                if let Some(def) = &def {
                    v["disks"] = serde_json::to_value(&def.disks)?;
                }
                if let Some(us) = stall_us {
                    v["stall_us"] = us.into();
                    v["stall-ms"] = stall_ms(us).into();
                }
                if let Some(n) = frozen {
                    v["frozen"] = n.into();
                }
                out.print_json(&v)?;
            } else {
                let from = xml.map(|(f, _)| format!(" from '{f}'")).unwrap_or_default();
                out.say(&format!("Domain snapshot {name} created{from}"))?;
            }
        }
        DomSnapshotCommand::List(a) => {
            let rows = store.snapshots(&a.domain)?;
            let nodes = SnapshotRow::nodes(&rows);
            if let Some(f) = &a.from {
                store.snapshot(&a.domain, f)?;
                if a.roots {
                    return Err(usage("--roots and --from exclude each other"));
                }
            }
            if a.tree {
                if out.json() {
                    out.print_json(&tree::nested(&nodes, a.from.as_deref()))?;
                } else {
                    out.text(&tree::draw(&nodes, a.from.as_deref()))?;
                }
                return Ok(OK);
            }
            let filter = ListFilter {
                roots: a.roots,
                leaves: a.leaves,
                no_leaves: a.no_leaves,
                current: a.current,
                external: a.external,
                internal: a.internal,
                disk_only: a.disk_only,
                from: a.from.clone(),
                descendants: a.descendants,
                topological: a.topological,
            };
            let listed = snapshot_list::list(&store, &a.domain, &filter)?;
            if out.json() {
                out.print_json(&listed)?;
            } else if a.name {
                let text: String = listed.iter().map(|l| format!("{}\n", l.name)).collect();
                out.text(&format!("{text}\n"))?;
            } else {
                out.text(&table(&listed, a.parent))?;
            }
        }
        DomSnapshotCommand::Dumpxml(a) => {
            out.no_json("snapshot dumpxml")?;
            let row = store.snapshot(&a.domain, &a.snapshot)?;
            let def = row.def()?;
            out.text(&def.to_xml(a.security_info))?;
        }
        DomSnapshotCommand::Current(a) => match a.snapshot {
            Some(name) => {
                store.set_current(&a.domain, Some(&name))?;
                out.say(&format!("Snapshot {name} set as current"))?;
            }
            None => {
                let rows = store.snapshots(&a.domain)?;
                let Some(cur) = rows.iter().find(|r| r.current) else {
                    bail!("domain '{}' has no current snapshot", a.domain);
                };
                if a.name || out.json() {
                    if out.json() {
                        out.print_json(&serde_json::json!({ "name": cur.name }))?;
                    } else {
                        out.text(&format!("{}\n", cur.name))?;
                    }
                } else {
                    let def = cur.def()?;
                    out.text(&def.to_xml(false))?;
                }
            }
        },
        DomSnapshotCommand::Parent(a) => {
            let row = store.snapshot(&a.domain, &a.snapshot)?;
            match row.parent {
                Some(p) if out.json() => out.print_json(&serde_json::json!({ "parent": p }))?,
                Some(p) => out.text(&format!("{p}\n"))?,
                None => bail!(
                    "domain '{}': snapshot '{}' has no parent",
                    a.domain,
                    a.snapshot
                ),
            }
        }
        DomSnapshotCommand::Revert(a) => {
            if a.running && a.paused {
                return Err(usage("--running and --paused exclude each other"));
            }
            let name = pick(&store, &a.domain, a.snapshot, a.current)?;
            // A snapshot with memory: the guest goes on from it (checked
            // before anything changes).
            let memory = snapshot_revert::memory_image(&store, &a.domain, &name)?;
            if memory.is_some() {
                let def = store.snapshot(&a.domain, &name)?.def()?;
                if let Some(then) = def.domain.clone() {
                    let now = store.domain(&a.domain)?;
                    let changed = strata_core::snapshot::abi::differences(
                        &strata_core::Domain::from_element(then),
                        &now,
                    );
                    if !changed.is_empty() && !a.force {
                        bail!(
                            "revert requires force: snapshot '{name}' of domain '{}' holds the memory of another machine ({}); its guest could not go on in this one. Use --force to run the snapshot's machine",
                            a.domain,
                            changed.join("; ")
                        );
                    }
                }
                if live {
                    crate::lifecycle::run_op(Op::Destroy, &a.domain, &dir, &out.muted())?;
                }
                // The machine that runs now is the snapshot's: so is the
                // definition (as libvirt restores it), or the next
                // snapshot would record another machine than its memory's.
                let reverted = snapshot_revert::revert_for_memory(&mut store, &a.domain, &name)?;
                let paused = a.paused || (!a.running && def.state == "paused");
                let started = crate::live::ensure_daemon(&dir, out.quiet).and_then(|c| {
                    c.start_from_snapshot(&a.domain, &name, paused)
                        .map_err(crate::live::api_error)
                });
                if let Err(e) = started {
                    // Nothing of the revert stays: the disks and the
                    // definition as they were, the domain shut off.
                    let undone = match reverted.undo(&mut store) {
                        Ok(()) => "its disks are as they were before the revert".to_string(),
                        Err(u) => format!("taking the revert back failed too: {u}"),
                    };
                    return Err(e.context(format!(
                        "domain '{}': the memory of snapshot {name} could not be loaded; the domain stays shut off and {undone}",
                        a.domain
                    )));
                }
                let moved = reverted.finish(&mut store);
                // A managed save of the state left behind is stale now.
                strata_core::live::managed::remove(&dir, &a.domain)?;
                print_reverted(out, &a.domain, &name, &moved)?;
                return Ok(OK);
            }
            if live {
                // No memory in the snapshot: the guest cannot go on from
                // it, only start again (libvirt's rule).
                if !a.force {
                    bail!(
                        "revert requires force: domain '{}' is running and snapshot '{name}' holds no memory state, so the machine must be stopped (what the guest has not written is lost); use --force",
                        a.domain
                    );
                }
                store.snapshot(&a.domain, &name)?;
                crate::lifecycle::run_op(Op::Destroy, &a.domain, &dir, &out.muted())?;
            }
            // A managed save goes with the state it holds (libvirt's rule:
            // only with --force, it is the guest's memory).
            let managed = strata_core::live::managed::exists(&dir, &a.domain);
            if managed && !a.force {
                bail!(
                    "revert requires force: domain '{}' has a managed save, and snapshot '{name}' holds no memory state: the revert would make the saved memory stale, so it would be removed; use --force",
                    a.domain
                );
            }
            let moved = snapshot_revert::revert(&mut store, &a.domain, &name)?;
            if managed {
                strata_core::live::managed::remove(&dir, &a.domain)?;
            }
            if a.running || a.paused {
                let start = Op::Start {
                    paused: a.paused,
                    force_boot: false,
                };
                crate::lifecycle::run_op(start, &a.domain, &dir, &out.muted())?;
            }
            print_reverted(out, &a.domain, &name, &moved)?;
        }
        DomSnapshotCommand::Delete(a) => {
            let name = pick(&store, &a.domain, a.snapshot, a.current)?;
            let req = DeleteRequest {
                children: a.children,
                children_only: a.children_only,
                metadata_only: a.metadata,
            };
            let (gone, stall_us) = if live {
                let gone = crate::live::client(&dir)
                    .snapshot_delete(&a.domain, &name, &req)
                    .map_err(crate::live::api_error)?;
                (gone.deleted, gone.stall_us)
            } else {
                let gone = snapshot_delete::delete(&mut store, &a.domain, &name, req)?;
                (gone, None)
            };
            if out.json() {
                let mut v = serde_json::json!({ "deleted": gone });
                if let Some(us) = stall_us {
                    v["stall_us"] = us.into();
                    v["stall-ms"] = stall_ms(us).into();
                }
                out.print_json(&v)?;
            } else if a.children_only {
                out.say(&format!("Domain snapshot {name} children deleted"))?;
            } else if a.metadata {
                out.say(&format!("Domain snapshot {name} metadata deleted"))?;
            } else {
                out.say(&format!("Domain snapshot {name} deleted"))?;
            }
        }
        DomSnapshotCommand::Info(a) => {
            let rows = store.snapshots(&a.domain)?;
            let name = pick(&store, &a.domain, a.snapshot.clone(), a.current)?;
            let row = store.snapshot(&a.domain, &name)?;
            let def = row.def()?;
            let children = rows
                .iter()
                .filter(|r| r.parent.as_deref() == Some(&row.name))
                .count();
            let descendants = tree::below(&SnapshotRow::nodes(&rows), &row.name, true).len();
            let info = serde_json::json!({
                "name": row.name,
                "domain": a.domain,
                "current": row.current,
                "state": def.state,
                "location": location(&def),
                "parent": row.parent,
                "children": children,
                "descendants": descendants,
                "metadata": true,
                "disks": def.disks.iter().filter(|d| d.mode != DiskMode::No).count(),
            });
            if out.json() {
                out.print_json(&info)?;
            } else {
                let yes = |b: bool| if b { "yes" } else { "no" };
                out.text(&format!(
                    "{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n{:<15} {}\n\n",
                    "Name:", row.name,
                    "Domain:", a.domain,
                    "Current:", yes(row.current),
                    "State:", def.state,
                    "Location:", location(&def),
                    "Parent:", row.parent.as_deref().unwrap_or("-"),
                    "Children:", children,
                    "Descendants:", descendants,
                    "Metadata:", "yes",
                ))?;
            }
        }
    }
    Ok(OK)
}

/// The snapshot named, or the current one with `--current`.
fn pick(store: &Store, domain: &str, name: Option<String>, current: bool) -> Result<String> {
    match (name, current) {
        (Some(n), false) => Ok(n),
        (None, true) => match store.snapshots(domain)?.into_iter().find(|r| r.current) {
            Some(r) => Ok(r.name),
            None => bail!("domain '{domain}' has no current snapshot"),
        },
        _ => Err(usage("give a snapshot name or --current, not both")),
    }
}

/// virsh snapshot-list's table.
fn table(listed: &[Listed], parent: bool) -> String {
    let w = listed
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut rows: Vec<[String; 3]> = vec![[
        "Name".into(),
        "Creation Time".into(),
        if parent { "Parent" } else { "State" }.into(),
    ]];
    for l in listed {
        rows.push([
            l.name.clone(),
            virsh_time(l.creation_time),
            if parent {
                l.parent.clone().unwrap_or_default()
            } else {
                l.state.clone()
            },
        ]);
    }
    let t = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line = format!(" {:<w$}   {:<t$}   {}", r[0], r[1], r[2]);
        s.push_str(line.trim_end());
        s.push('\n');
        if i == 0 {
            s.push_str(&"-".repeat(w + t + 17));
            s.push('\n');
        }
    }
    s.push('\n');
    s
}

/// `spec` with its file made absolute (the daemon writes it: a relative
/// path is the caller's).
fn absolute_memspec(spec: Option<MemSpec>) -> Result<Option<MemSpec>> {
    let Some(mut m) = spec else {
        return Ok(None);
    };
    m.file = m.file.map(|f| std::path::absolute(&f)).transpose()?;
    Ok(Some(m))
}
