//! `checkpoint create --redefine`: records checkpoint metadata from XML (as
//! `checkpoint dumpxml` or libvirt wrote it) without touching any disk —
//! after `--metadata`, `undefine --checkpoints-metadata` or a move to
//! another host. As libvirt checks, each disk's bitmap must exist in the
//! disk's image chain, so the checkpoint can be used; the parent must exist.

use crate::checkpoint::{checkpoints, CheckpointDef};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::lock::DomainLock;
use crate::redefine;
use crate::store::Store;

/// Records the checkpoint `xml` describes for `domain`; returns it.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "checkpoint redefine"))]
pub fn redefine(store: &mut Store, domain: &str, xml: &str) -> Result<CheckpointDef> {
    let _lock = DomainLock::acquire(store.dir(), domain)?;
    let dom = store.domain(domain)?;
    let def = CheckpointDef::from_xml(xml, &format!("domain '{domain}': checkpoint XML"))?;
    let what = format!("domain '{domain}': redefine checkpoint '{}'", def.name);
    if def.name.is_empty() {
        return Err(Error::invalid(what, "the XML names no checkpoint"));
    }
    if let Some(then) = def.domain.clone().map(Domain::from_element) {
        redefine::same_domain(&what, &then, &dom)?;
    }
    let tree: Vec<(String, Option<String>)> = checkpoints(store, domain)?
        .into_iter()
        .map(|c| (c.name, c.parent))
        .collect();
    redefine::parent_fits(&what, &def.name, def.parent.as_deref(), &tree)?;
    let disks = dom.disks();
    for d in &def.disks {
        let Some(bitmap) = &d.bitmap else { continue };
        let source = disks
            .iter()
            .find(|x| x.target == d.name)
            .and_then(|x| x.source.clone())
            .ok_or_else(|| {
                Error::invalid(
                    &what,
                    format!("disk '{}' is not a disk of the domain", d.name),
                )
            })?;
        let chain = strata_image::open(&source, &Default::default())
            .map_err(|e| Error::invalid(&what, format!("disk '{}': {e}", d.name)))?;
        if !has_bitmap(chain.as_ref(), bitmap)? {
            return Err(Error::invalid(
                what,
                format!(
                    "disk '{}': no bitmap '{bitmap}' in {} or below it",
                    d.name,
                    source.display()
                ),
            ));
        }
    }
    super::store_def(store, domain, &def)?;
    Ok(def)
}

/// True when some layer of `chain` holds bitmap `name`.
fn has_bitmap(chain: &dyn strata_image::Image, name: &str) -> Result<bool> {
    let mut layer = Some(chain);
    while let Some(img) = layer {
        if let Some(q) = img.dirty_bitmaps() {
            if q.bitmaps()?.iter().any(|b| b.name == name) {
                return Ok(true);
            }
        }
        layer = img.backing().map(|b| b.as_ref());
    }
    Ok(false)
}
