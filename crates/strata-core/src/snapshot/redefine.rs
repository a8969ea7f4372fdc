//! `snapshot create --redefine`: records snapshot metadata from XML (as
//! `snapshot dumpxml` or libvirt wrote it) without touching any disk, to
//! bring back metadata that was dropped (`--metadata`, `--no-metadata`,
//! `undefine --snapshots-metadata`) or comes from another host; also
//! updates an existing snapshot's metadata (its description, say).
//! `--current` makes it the current snapshot. And `snapshot create
//! --xmlfile` without `--redefine`: the XML says the name, description and
//! how each disk takes part, and the snapshot is taken as usual.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::lock::DomainLock;
use crate::redefine;
use crate::snapshot::create::{CreateRequest, DiskSpec};
use crate::snapshot::memspec::MemSpec;
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::Store;

/// Records the snapshot that `xml` describes for `domain`; returns it.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "snapshot redefine"))]
pub fn redefine(store: &mut Store, domain: &str, xml: &str, current: bool) -> Result<SnapshotDef> {
    let _lock = DomainLock::acquire(store.dir(), domain)?;
    let dom = store.domain(domain)?;
    let def = SnapshotDef::from_xml(xml, &format!("domain '{domain}': snapshot XML"))?;
    let what = format!("domain '{domain}': redefine snapshot '{}'", def.name);
    if def.name.is_empty() || def.name.contains('/') {
        return Err(Error::invalid(what, "a snapshot needs a name, without '/'"));
    }
    let then = def
        .domain
        .clone()
        .map(Domain::from_element)
        .ok_or_else(|| {
            Error::invalid(
                &what,
                "the XML has no <domain> (the definition at snapshot time)",
            )
        })?;
    redefine::same_domain(&what, &then, &dom)?;
    let then_disks = then.disks();
    for d in &def.disks {
        if !then_disks.iter().any(|t| t.target == d.name) {
            return Err(Error::invalid(
                what,
                format!("disk '{}' is not in its <domain>", d.name),
            ));
        }
    }
    let rows = store.snapshots(domain)?;
    let tree: Vec<(String, Option<String>)> =
        rows.into_iter().map(|r| (r.name, r.parent)).collect();
    redefine::parent_fits(&what, &def.name, def.parent.as_deref(), &tree)?;
    store.redefine_snapshot(domain, &def, current)?;
    Ok(def)
}

/// The request a domainsnapshot XML makes of `snapshot create --xmlfile`.
pub fn request_from_xml(xml: &str, what: &str) -> Result<CreateRequest> {
    let def = SnapshotDef::from_xml(xml, what)?;
    // `<memory snapshot='internal|external|no' [file=…]/>`: where the memory
    // of a running machine goes (`--memspec`).
    let memspec = match &def.memory {
        Some(m) => {
            let mode = m.attr("snapshot").unwrap_or("internal");
            let mode = DiskMode::parse(mode).ok_or_else(|| {
                Error::invalid(
                    what,
                    format!("<memory snapshot='{mode}'>: use internal, external or no"),
                )
            })?;
            let file = m.attr("file").map(std::path::PathBuf::from);
            if mode == DiskMode::External && file.is_none() {
                return Err(Error::invalid(
                    what,
                    "<memory snapshot='external'> names no file",
                ));
            }
            Some(MemSpec { mode, file })
        }
        None => None,
    };
    Ok(CreateRequest {
        memspec,
        name: Some(def.name).filter(|n| !n.is_empty()),
        description: def.description,
        diskspecs: def
            .disks
            .into_iter()
            .map(|d| DiskSpec {
                target: d.name,
                mode: Some(d.mode),
                file: d.source.filter(|_| d.mode == DiskMode::External),
                driver: d.driver,
            })
            .collect(),
        ..Default::default()
    })
}
