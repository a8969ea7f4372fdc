//! Checkpoints, in libvirt's domaincheckpoint XML: a point in time from
//! which changes are tracked, kept as one persistent dirty bitmap per disk
//! (named after the checkpoint). As libvirt's incremental-backup internals
//! describe, creating a checkpoint adds its bitmaps enabled and disables
//! those of the previous checkpoint, so each bitmap covers one interval;
//! "changed since X" is the union of X's bitmap and those of every later
//! checkpoint, over every layer of the disk's chain (`dirty_since`), which
//! keeps working across external snapshots.

pub mod health;
mod intent;
pub mod list;
pub mod redefine;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_image::transaction::{self, Action, BitmapOp, Held};
use strata_image::Image;

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::live::{Disks, Offline};
use crate::lock::DomainLock;
use crate::store::Store;
use crate::xml::{Element, Node};

pub(crate) use intent::after_failure;
pub use intent::recover;

/// One disk of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDisk {
    /// Disk target.
    pub name: String,
    /// The bitmap (`None`: the disk is not part of the checkpoint).
    pub bitmap: Option<String>,
}

/// A checkpoint's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDef {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Seconds since the Epoch.
    pub creation_time: u64,
    /// The previous checkpoint.
    pub parent: Option<String>,
    /// The disks.
    pub disks: Vec<CheckpointDisk>,
    /// The domain definition when it was made.
    pub domain: Option<Element>,
}

/// A checkpoint name as libvirt's schema allows it.
fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric() || f == '_' || f == '-')
        && c.all(|x| x.is_ascii_alphanumeric() || "_-.".contains(x))
}

impl CheckpointDef {
    /// The XML; `sizes` gives each disk's changed bytes (`dumpxml --size`).
    pub fn to_xml(&self, sizes: Option<&[(String, u64)]>, with_domain: bool) -> String {
        let mut root = Element::new("domaincheckpoint");
        let text = |name: &str, t: &str| {
            let mut e = Element::new(name);
            e.set_text(t);
            Node::Element(e)
        };
        root.children.push(text("name", &self.name));
        if let Some(d) = &self.description {
            root.children.push(text("description", d));
        }
        if let Some(p) = &self.parent {
            let mut parent = Element::new("parent");
            parent.children.push(text("name", p));
            root.children.push(Node::Element(parent));
        }
        root.children
            .push(text("creationTime", &self.creation_time.to_string()));
        let mut disks = Element::new("disks");
        for d in &self.disks {
            let mut e = Element::new("disk");
            e.set_attr("name", &d.name);
            match &d.bitmap {
                Some(b) => {
                    e.set_attr("checkpoint", "bitmap");
                    e.set_attr("bitmap", b);
                    if let Some((_, size)) =
                        sizes.and_then(|s| s.iter().find(|(n, _)| n == &d.name))
                    {
                        e.set_attr("size", &size.to_string());
                    }
                }
                None => e.set_attr("checkpoint", "no"),
            }
            disks.children.push(Node::Element(e));
        }
        root.children.push(Node::Element(disks));
        if with_domain {
            if let Some(dom) = &self.domain {
                let xml = Domain::from_element(dom.clone()).to_xml(false);
                if let Ok(el) = Element::parse(&xml, "domain") {
                    root.children.push(Node::Element(el));
                }
            }
        }
        root.to_xml()
    }

    /// Reads checkpoint XML; `what` names it in errors.
    pub fn from_xml(text: &str, what: &str) -> Result<CheckpointDef> {
        let root = Element::parse_root(text, what, "domaincheckpoint")?;
        let bad = |problem: String| Error::Xml {
            what: what.to_string(),
            problem,
        };
        let own_name = root.child_text("name").unwrap_or_default();
        let mut disks = Vec::new();
        for d in root.disks_in("disks") {
            let name = d
                .attr("name")
                .ok_or_else(|| bad("a <disk> has no name".into()))?;
            // A disk's bitmap is named after the checkpoint unless given.
            let bitmap = match d.attr("checkpoint") {
                Some("no") => None,
                _ => Some(d.attr("bitmap").unwrap_or(&own_name).to_string()),
            };
            disks.push(CheckpointDisk {
                name: name.to_string(),
                bitmap,
            });
        }
        Ok(CheckpointDef {
            name: own_name,
            description: root.child_text("description"),
            creation_time: root
                .child_text("creationTime")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            parent: root.child("parent").and_then(|p| p.child_text("name")),
            disks,
            domain: root.child("domain").cloned(),
        })
    }
}

/// What `checkpoint create` makes (also the body of the daemon's
/// `POST /v1/domains/{name}/checkpoints`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointRequest {
    /// Name (default: the time in seconds, as libvirt).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Per disk: `vda[,checkpoint=bitmap|no][,bitmap=NAME]`.
    pub diskspecs: Vec<String>,
}

impl CheckpointRequest {
    /// The request a domaincheckpoint XML makes (`--xmlfile`, or a backup's
    /// `--checkpointxml`): its name, description and per-disk choices.
    pub fn from_xml(text: &str, what: &str) -> Result<CheckpointRequest> {
        let root = Element::parse_root(text, what, "domaincheckpoint")?;
        let mut diskspecs = Vec::new();
        for d in root.disks_in("disks") {
            let name = d.attr("name").ok_or_else(|| Error::Xml {
                what: what.to_string(),
                problem: "a <disk> has no name".into(),
            })?;
            let mut spec = match d.attr("checkpoint") {
                Some("no") => format!("{name},checkpoint=no"),
                _ => format!("{name},checkpoint=bitmap"),
            };
            if let Some(b) = d.attr("bitmap") {
                spec.push_str(&format!(",bitmap={b}"));
            }
            diskspecs.push(spec);
        }
        Ok(CheckpointRequest {
            name: root.child_text("name").filter(|n| !n.is_empty()),
            description: root.child_text("description"),
            diskspecs,
        })
    }
}

/// The checkpoints of `domain`, oldest first, parsed.
pub fn checkpoints(store: &Store, domain: &str) -> Result<Vec<CheckpointDef>> {
    store
        .checkpoints(domain)?
        .into_iter()
        .map(|(name, parent, xml)| {
            // The tree lives in the store (deletes re-parent there).
            let mut def = CheckpointDef::from_xml(&xml, &format!("checkpoint '{name}'"))?;
            def.parent = parent;
            Ok(def)
        })
        .collect()
}

/// Creates a checkpoint of a domain that does not run: one transaction
/// adds a bitmap per disk and disables the previous checkpoint's bitmaps
/// in the disks' active images.
pub fn create(store: &mut Store, domain: &str, req: &CheckpointRequest) -> Result<CheckpointDef> {
    create_on(store, domain, req, &Offline).map(|(def, _)| def)
}

/// [`create`] on `disks`: offline, or the disks a daemon serves to the
/// running guest, whose requests are held back while the bitmaps are
/// added (all disks at one instant). Returns the checkpoint and, live, how
/// long the guest's disks took no request.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "checkpoint create"))]
pub fn create_on(
    store: &mut Store,
    domain: &str,
    req: &CheckpointRequest,
    disks: &dyn Disks,
) -> Result<(CheckpointDef, Option<Duration>)> {
    let _lock = disks.lock(store.dir(), domain)?;
    create_in(store, domain, req, disks)
}

/// [`create_on`], for a caller that holds the domain's lock.
pub(crate) fn create_in(
    store: &mut Store,
    domain: &str,
    req: &CheckpointRequest,
    served: &dyn Disks,
) -> Result<(CheckpointDef, Option<Duration>)> {
    recover(store, domain, served)?;
    let held = served.held();
    let planned = plan(store, domain, req, &held)?;
    planned.intend(store, domain)?;
    let applied = served.quiesce().and_then(|quiesced| {
        let paused_at = quiesced.paused_at();
        planned.apply(&held).map(|()| paused_at)
    });
    let paused_at = match applied {
        Ok(at) => at,
        Err(e) => {
            intent::after_failure(store, domain, served);
            return Err(e);
        }
    };
    let stall = served.live().then(|| paused_at.elapsed());
    Ok((planned.record(store, domain)?, stall))
}

/// A checkpoint checked and planned: the image transaction that makes its
/// bitmaps, and its metadata, recorded once the transaction ran.
pub(crate) struct Planned {
    what: String,
    actions: Vec<Action>,
    undo: Vec<intent::Undo>,
    def: CheckpointDef,
}

impl Planned {
    /// Writes down what the transaction is about to do, so that a process
    /// killed before the checkpoint is recorded leaves it undoable
    /// ([`recover`]); after a failed [`Planned::apply`], the caller calls
    /// [`after_failure`].
    pub(crate) fn intend(&self, store: &mut Store, domain: &str) -> Result<()> {
        intent::intend(store, domain, &self.def.name, &self.undo)
    }

    /// Runs the transaction (on the `held` images where held): the
    /// checkpoint's instant, for a caller that holds the disks quiet.
    pub(crate) fn apply(&self, held: &Held) -> Result<()> {
        crate::faults::run(&self.actions, held)
            .map(|_| ())
            .map_err(|e| Error::invalid(&self.what, e.to_string()))
    }

    /// Records the checkpoint's metadata (and forgets its intent).
    pub(crate) fn record(self, store: &mut Store, domain: &str) -> Result<CheckpointDef> {
        store_def(store, domain, &self.def)?;
        Ok(self.def)
    }
}

/// Adds checkpoint `def` of `domain` to the store.
pub(crate) fn store_def(store: &mut Store, domain: &str, def: &CheckpointDef) -> Result<()> {
    store.add_checkpoint(
        domain,
        &def.name,
        def.parent.as_deref(),
        def.creation_time,
        &def.to_xml(None, true),
    )
}

/// Checks checkpoint request `req` of `domain` and plans it on its disks
/// (the `held` images where held).
pub(crate) fn plan(
    store: &Store,
    domain: &str,
    req: &CheckpointRequest,
    held: &Held,
) -> Result<Planned> {
    let dom = store.domain(domain)?;
    let created = crate::now();
    let name = req.name.clone().unwrap_or_else(|| created.to_string());
    let what = format!("domain '{domain}': checkpoint '{name}'");
    if !valid_name(&name) {
        return Err(Error::invalid(
            what,
            "a checkpoint name is letters, digits, '_', '-' and '.' (not first)",
        ));
    }
    let existing = checkpoints(store, domain)?;
    if existing.iter().any(|c| c.name == name) {
        return Err(Error::invalid(what, "already exists"));
    }
    let parent = existing.last();
    let mut actions = Vec::new();
    let mut undo = Vec::new();
    let mut disks = Vec::new();
    for d in dom.disks().into_iter().filter(|d| d.device == "disk") {
        let spec = req
            .diskspecs
            .iter()
            .find(|s| s.split(',').next() == Some(d.target.as_str()));
        let mut bitmap = Some(name.clone());
        for kv in spec.into_iter().flat_map(|s| s.split(',').skip(1)) {
            match kv.split_once('=') {
                Some(("checkpoint", "no")) => bitmap = None,
                Some(("checkpoint", "bitmap")) => {}
                Some(("bitmap", b)) if !b.is_empty() => bitmap = bitmap.map(|_| b.to_string()),
                _ => {
                    return Err(Error::invalid(
                        &what,
                        format!("diskspec part '{kv}' is not checkpoint=bitmap|no or bitmap=NAME"),
                    ))
                }
            }
        }
        if d.format.as_deref().is_some_and(|f| f != "qcow2") {
            bitmap = None;
        }
        if let (Some(b), Some(src)) = (&bitmap, &d.source) {
            // The active image's bitmaps, read once.
            let have = intent::layer(src, held)?;
            let present = match have.dirty_bitmaps() {
                Some(q) => q.bitmaps()?,
                None => Vec::new(),
            };
            if present.iter().any(|x| &x.name == b) {
                return Err(Error::invalid(
                    what,
                    format!(
                        "disk '{}': {} has a bitmap '{b}' already",
                        d.target,
                        src.display()
                    ),
                ));
            }
            let mut undo_one = intent::Undo {
                file: src.clone(),
                bitmap: b.clone(),
                previous: None,
            };
            actions.push(Action::Bitmap {
                op: BitmapOp::Add,
                file: src.clone(),
                name: b.clone(),
                granularity: None,
                disabled: false,
                sources: Vec::new(),
            });
            if let Some(prev) = parent.and_then(|p| p.disks.iter().find(|x| x.name == d.target)) {
                if let Some(pb) = &prev.bitmap {
                    // Only a consistent enabled bitmap is closed: one left
                    // in use by an unclean shutdown tracks nothing
                    // trustworthy and can only be removed.
                    if present
                        .iter()
                        .any(|x| &x.name == pb && x.enabled() && x.usable())
                    {
                        actions.push(Action::bitmap(BitmapOp::Disable, src.clone(), pb.clone()));
                        undo_one.previous = Some(pb.clone());
                    }
                }
            }
            undo.push(undo_one);
        }
        disks.push(CheckpointDisk {
            name: d.target.clone(),
            bitmap,
        });
    }
    if actions.is_empty() {
        return Err(Error::invalid(
            what,
            "no qcow2 disk takes part in the checkpoint",
        ));
    }
    let def = CheckpointDef {
        name,
        description: req.description.clone(),
        creation_time: created,
        parent: parent.map(|p| p.name.clone()),
        disks,
        domain: Some(dom.element().clone()),
    };
    Ok(Planned {
        what,
        actions,
        undo,
        def,
    })
}

/// The guest ranges of disk `disk` changed since checkpoint `name` (the
/// union of its bitmap and those of every later checkpoint, through the
/// disk's whole chain), read from the `held` images where held; an error
/// when the checkpoint has no bitmap on the disk, or the changes cannot be
/// told exactly ([`disk_changed`]).
pub fn disk_ranges_in(
    store: &Store,
    domain: &str,
    name: &str,
    disk: &str,
    held: &Held,
) -> Result<Vec<(u64, u64)>> {
    let all = checkpoints(store, domain)?;
    let at = position(&all, domain, name)?;
    let what = || format!("domain '{domain}': disk '{disk}'");
    if !all[at]
        .disks
        .iter()
        .any(|d| d.name == disk && d.bitmap.is_some())
    {
        return Err(Error::invalid(
            what(),
            format!("checkpoint '{name}' has no bitmap for this disk"),
        ));
    }
    let dom = store.domain(domain)?;
    let chain = disk_chain(&dom, disk, held)?
        .ok_or_else(|| Error::invalid(what(), "the disk has no image"))?;
    disk_changed(&all, at, disk, chain.as_ref())
}

/// Where checkpoint `name` is in `all`.
fn position(all: &[CheckpointDef], domain: &str, name: &str) -> Result<usize> {
    all.iter().position(|c| c.name == name).ok_or_else(|| {
        Error::invalid(
            format!("domain '{domain}'"),
            format!("checkpoint '{name}' not found"),
        )
    })
}

/// The image chain of `dom`'s disk `disk` (the `held` image where held;
/// `None`: the disk is gone or has no image).
fn disk_chain(dom: &Domain, disk: &str, held: &Held) -> Result<Option<Arc<dyn Image>>> {
    let Some(src) = dom
        .disks()
        .into_iter()
        .find(|x| x.target == disk)
        .and_then(|x| x.source)
    else {
        return Ok(None);
    };
    Ok(Some(match held.get(&src) {
        Some(img) => img.clone(),
        None => strata_image::open(&src, &Default::default())?,
    }))
}

/// The guest ranges of disk `disk` (image chain `chain`) changed since
/// checkpoint `all[at]`: the union of its bitmap and those of every later
/// checkpoint on the disk. An error says why that cannot be answered
/// exactly: a bitmap missing, inconsistent, not tracking in the top layer
/// although it is the disk's newest, or absent from a layer above one
/// that has it.
pub(crate) fn disk_changed(
    all: &[CheckpointDef],
    at: usize,
    disk: &str,
    chain: &dyn Image,
) -> Result<Vec<(u64, u64)>> {
    let bitmaps: Vec<String> = all[at..]
        .iter()
        .filter_map(|c| c.disks.iter().find(|x| x.name == disk))
        .filter_map(|x| x.bitmap.clone())
        .collect();
    let mut ranges = Vec::new();
    for (k, b) in bitmaps.iter().enumerate() {
        // The disk's newest bitmap is still tracking: every layer from the
        // top must hold it, enabled in the top. Older ones were closed
        // before later layers existed.
        if k + 1 == bitmaps.len() {
            if let Some(top) = chain.dirty_bitmaps() {
                if top.bitmaps()?.iter().any(|x| &x.name == b && !x.enabled()) {
                    return Err(Error::invalid(
                        chain.path(),
                        format!("bitmap '{b}' is disabled although its checkpoint is the newest: writes since it was disabled were not tracked"),
                    ));
                }
            }
            ranges.extend(strata_image::dirty_since(chain, b)?);
        } else {
            ranges.extend(strata_image::dirty::dirty_in_layers(chain, b)?);
        }
    }
    Ok(strata_image::dirty::union(ranges, chain.size()))
}

/// The image files of the chain under `source`, top first.
fn layer_files(source: &Path) -> Result<Vec<std::path::PathBuf>> {
    let top = strata_image::open(source, &Default::default())?;
    let mut out = Vec::new();
    let mut layer: Option<&dyn strata_image::Image> = Some(top.as_ref());
    while let Some(img) = layer {
        out.push(std::path::PathBuf::from(img.path()));
        layer = img.backing().map(|b| b.as_ref());
    }
    Ok(out)
}

/// `(name, enabled)` of every bitmap of one image file.
fn bitmaps_of(file: &Path) -> Result<Vec<(String, bool)>> {
    bitmap_list(&intent::layer(file, &Held::none())?)
}

/// `(name, enabled)` of every bitmap of an open image.
fn bitmap_list(img: &Arc<dyn Image>) -> Result<Vec<(String, bool)>> {
    Ok(match img.dirty_bitmaps() {
        Some(q) => q
            .bitmaps()?
            .into_iter()
            .map(|b| {
                let on = b.enabled();
                (b.name, on)
            })
            .collect(),
        None => Vec::new(),
    })
}

/// What `checkpoint delete` removes besides (or instead of) the checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointDelete {
    /// The checkpoint and all later ones.
    pub children: bool,
    /// Only the later ones.
    pub children_only: bool,
    /// Metadata only: bitmaps are not touched.
    pub metadata_only: bool,
}

/// Deletes checkpoint `name` (and what `how` adds), keeping "changed since"
/// exact for what remains: in every layer of every disk, the bits of the
/// deleted checkpoints' bitmaps are merged into the surviving parent's
/// bitmap (made there, disabled, where it is missing), which is enabled
/// again where a deleted one was still tracking; then the deleted bitmaps
/// are removed. All of it is one transaction. Returns the names deleted.
#[tracing::instrument(skip_all, fields(domain = %domain, checkpoint = %name, op = "checkpoint delete"))]
pub fn delete(
    store: &mut Store,
    domain: &str,
    name: &str,
    how: CheckpointDelete,
) -> Result<Vec<String>> {
    let _lock = DomainLock::acquire(store.dir(), domain)?;
    recover(store, domain, &Offline)?;
    let all = checkpoints(store, domain)?;
    let what = format!("domain '{domain}': delete checkpoint '{name}'");
    if how.children && how.children_only {
        return Err(Error::invalid(
            what,
            "--children and --children-only exclude each other",
        ));
    }
    let Some(at) = all.iter().position(|c| c.name == name) else {
        return Err(Error::invalid(
            format!("domain '{domain}'"),
            format!("checkpoint '{name}' not found"),
        ));
    };
    let mut gone: Vec<&CheckpointDef> = Vec::new();
    if !how.children_only {
        gone.push(&all[at]);
    }
    if how.children || how.children_only {
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for c in all
                .iter()
                .filter(|c| c.parent.as_deref() == Some(n.as_str()))
            {
                gone.push(c);
                frontier.push(c.name.clone());
            }
        }
    }
    let names: Vec<String> = gone.iter().map(|c| c.name.clone()).collect();
    // The survivor that takes the deleted intervals: the nearest kept ancestor.
    let mut heir = if how.children_only {
        Some(name.to_string())
    } else {
        all[at].parent.clone()
    };
    while let Some(h) = heir.clone() {
        if !names.contains(&h) {
            break;
        }
        heir = all
            .iter()
            .find(|c| c.name == h)
            .and_then(|c| c.parent.clone());
    }
    if !how.metadata_only && !names.is_empty() {
        let heir_def = heir
            .as_ref()
            .and_then(|h| all.iter().find(|c| &c.name == h));
        let dom = store.domain(domain)?;
        let mut actions = Vec::new();
        for disk in dom.disks().into_iter().filter(|d| d.device == "disk") {
            let Some(src) = disk.source.clone() else {
                continue;
            };
            let bitmap_of = |c: &CheckpointDef| {
                c.disks
                    .iter()
                    .find(|x| x.name == disk.target)
                    .and_then(|x| x.bitmap.clone())
            };
            let doomed: Vec<String> = gone.iter().filter_map(|c| bitmap_of(c)).collect();
            if doomed.is_empty() {
                continue;
            }
            let keep = heir_def.and_then(bitmap_of);
            for file in layer_files(&src)? {
                let present = bitmaps_of(&file)?;
                let here: Vec<&(String, bool)> =
                    present.iter().filter(|(n, _)| doomed.contains(n)).collect();
                if here.is_empty() {
                    continue;
                }
                if let Some(k) = &keep {
                    let tracking = here.iter().any(|(_, enabled)| *enabled);
                    if !present.iter().any(|(n, _)| n == k) {
                        actions.push(Action::Bitmap {
                            op: BitmapOp::Add,
                            file: file.clone(),
                            name: k.clone(),
                            granularity: None,
                            disabled: true,
                            sources: Vec::new(),
                        });
                    }
                    actions.push(Action::Bitmap {
                        op: BitmapOp::Merge,
                        file: file.clone(),
                        name: k.clone(),
                        granularity: None,
                        disabled: false,
                        sources: here
                            .iter()
                            .map(|(n, _)| transaction::BitmapSource {
                                file: None,
                                name: n.clone(),
                            })
                            .collect(),
                    });
                    if tracking {
                        actions.push(Action::bitmap(BitmapOp::Enable, file.clone(), k.clone()));
                    }
                }
                for (n, _) in here {
                    actions.push(Action::bitmap(BitmapOp::Remove, file.clone(), n.clone()));
                }
            }
        }
        if !actions.is_empty() {
            crate::faults::run(&actions, &Held::none())
                .map_err(|e| Error::invalid(&what, e.to_string()))?;
        }
    }
    store.delete_checkpoints(domain, &names, heir.as_deref())?;
    Ok(names)
}
