//! Which image files the metadata still needs, and collecting the ones
//! strata made that nothing needs any more.
//!
//! Roots come from every domain in the store: each disk's current image,
//! and for each snapshot each participating disk's image at snapshot time
//! (for an external snapshot, the image that became read-only; for an
//! internal one, the image holding it). A file is needed when it is a root
//! or in a root's backing chain. Only files strata made for the domain (its
//! overlays, recorded in the store) are ever deleted, and only when no
//! domain needs them. The same roots, with who needs each, tell a revert
//! whether an image's current contents may change ([`dependency`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use strata_image::ChainOptions;

use crate::domain::Domain;
use crate::error::Result;
use crate::snapshot::{DiskMode, SnapshotDef};
use crate::store::Store;

/// A path made comparable: canonical when the file exists.
pub(crate) fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Why a root is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Its guest contents (a current disk, an external snapshot's image).
    Contents,
    /// Only its internal snapshots.
    Holder,
}

/// The backing edges of the image files looked at, by canonical path.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    backing: HashMap<PathBuf, Option<PathBuf>>,
    /// Files that could not be opened: their chains are unknown.
    unreadable: Vec<(PathBuf, String)>,
}

impl Graph {
    /// The chain under `top`, top first, by canonical path.
    pub(crate) fn chain(&mut self, top: &Path) -> Vec<PathBuf> {
        let top = canon(top);
        if !self.backing.contains_key(&top) {
            self.load(&top);
        }
        let mut out = vec![top.clone()];
        let mut cur = top;
        while let Some(Some(b)) = self.backing.get(&cur) {
            if out.contains(b) {
                break;
            }
            out.push(b.clone());
            cur = b.clone();
        }
        out
    }

    /// Why `file` (canonical) could not be opened, when it exists and could
    /// not: its chain is unknown. A file that does not exist has no chain.
    pub(crate) fn unreadable_why(&self, file: &Path) -> Option<&str> {
        self.unreadable
            .iter()
            .find(|(f, _)| f == file)
            .filter(|(f, _)| f.exists())
            .map(|(_, e)| e.as_str())
    }

    /// The backing file of `file` (canonical), if known.
    pub(crate) fn backing_of(&self, file: &Path) -> Option<&PathBuf> {
        self.backing.get(file).and_then(|b| b.as_ref())
    }

    fn load(&mut self, top: &Path) {
        let opts = ChainOptions {
            lock: false,
            ..Default::default()
        };
        let img = match strata_image::open(top, &opts) {
            Ok(img) => img,
            Err(e) => {
                self.unreadable.push((top.to_path_buf(), e.to_string()));
                self.backing.insert(top.to_path_buf(), None);
                return;
            }
        };
        let mut layer: &dyn strata_image::Image = img.as_ref();
        loop {
            let here = canon(Path::new(layer.path()));
            let below = layer.backing().map(|b| b.as_ref());
            self.backing
                .insert(here, below.map(|b| canon(Path::new(b.path()))));
            match below {
                Some(b) => layer = b,
                None => break,
            }
        }
    }
}

/// Who needs a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A domain's disk, as its current image.
    Disk {
        /// The domain.
        domain: String,
        /// The disk's target (`vda`).
        target: String,
    },
    /// A snapshot's disk: the image holding it (internal) or the image
    /// kept read-only for it (external).
    Snapshot {
        /// The domain.
        domain: String,
        /// The snapshot.
        snapshot: String,
        /// The disk's target.
        disk: String,
    },
    /// A file strata made and handed over to the user.
    HandedOver,
}

impl Owner {
    /// How a message names it, seen from domain `here`.
    pub(crate) fn describe(&self, here: &str) -> String {
        let of = |d: &str| {
            if d == here {
                String::new()
            } else {
                format!(" of domain '{d}'")
            }
        };
        match self {
            Owner::Disk { domain, target } => format!("disk '{target}'{}", of(domain)),
            Owner::Snapshot {
                domain,
                snapshot,
                disk,
            } => format!("snapshot '{snapshot}'{} (disk '{disk}')", of(domain)),
            Owner::HandedOver => "the user (strata handed it over)".to_string(),
        }
    }
}

/// A file the metadata needs, why, and for whom.
#[derive(Clone, Debug)]
pub(crate) struct Root {
    /// The file, canonical.
    pub(crate) file: PathBuf,
    /// Why.
    pub(crate) need: Need,
    /// For whom.
    pub(crate) owner: Owner,
}

/// The roots of every domain's metadata, leaving out snapshot `skip`
/// (`(domain, snapshot)`), with why each is needed.
pub(crate) fn roots(store: &Store, skip: Option<(&str, &str)>) -> Result<Vec<(PathBuf, Need)>> {
    Ok(owned_roots(store, skip)?
        .into_iter()
        .map(|r| (r.file, r.need))
        .collect())
}

/// [`roots`], each with whom it is needed for.
pub(crate) fn owned_roots(store: &Store, skip: Option<(&str, &str)>) -> Result<Vec<Root>> {
    // Files handed to the user: kept with their chains, while they exist.
    let mut out: Vec<Root> = store
        .handed_over_files()?
        .into_iter()
        .filter(|f| f.exists())
        .map(|f| Root {
            file: canon(&f),
            need: Need::Contents,
            owner: Owner::HandedOver,
        })
        .collect();
    for summary in store.list()? {
        let dom = store.domain(&summary.name)?;
        for d in dom.disks() {
            if let Some(s) = d.source {
                out.push(Root {
                    file: canon(&s),
                    need: Need::Contents,
                    owner: Owner::Disk {
                        domain: summary.name.clone(),
                        target: d.target,
                    },
                });
            }
        }
        for row in store.snapshots(&summary.name)? {
            if skip == Some((summary.name.as_str(), row.name.as_str())) {
                continue;
            }
            let def = SnapshotDef::from_xml(&row.xml, &format!("snapshot '{}'", row.name))?;
            let Some(then) = def.domain.clone().map(Domain::from_element) else {
                continue;
            };
            let then_disks = then.disks();
            for sd in def.disks.iter().filter(|d| d.mode != DiskMode::No) {
                let Some(src) = then_disks
                    .iter()
                    .find(|t| t.target == sd.name)
                    .and_then(|t| t.source.clone())
                else {
                    continue;
                };
                let need = if sd.mode == DiskMode::Internal {
                    Need::Holder
                } else {
                    Need::Contents
                };
                out.push(Root {
                    file: canon(&src),
                    need,
                    owner: Owner::Snapshot {
                        domain: summary.name.clone(),
                        snapshot: row.name.clone(),
                        disk: sd.name.clone(),
                    },
                });
            }
        }
    }
    Ok(out)
}

/// Why the current contents of `image` must stay as they are, seen from
/// domain `here`: a root needs them as they are, or has `image` in its
/// backing chain (an internal snapshot reads through its image's backing
/// chain too). `None` when nothing in `roots` depends on them. A root whose
/// chain cannot be read (an existing file that does not open) counts as
/// depending on them, since what lies below it is unknown.
pub(crate) fn dependency(
    graph: &mut Graph,
    roots: &[Root],
    image: &Path,
    here: &str,
) -> Option<String> {
    let image = canon(image);
    let shown = image.display();
    for r in roots {
        let who = r.owner.describe(here);
        if r.file == image {
            if r.need == Need::Contents {
                let role = match r.owner {
                    Owner::Disk { .. } => "the current image of",
                    Owner::Snapshot { .. } => "the image kept as it was for external",
                    Owner::HandedOver => "a file kept as it is for",
                };
                return Some(format!("{shown} is {role} {who}"));
            }
            // Another internal snapshot in the same image: applying this
            // one leaves it as it is.
            continue;
        }
        let chain = graph.chain(&r.file);
        if let Some(why) = graph.unreadable_why(&r.file) {
            return Some(format!(
                "{}, which {who} needs, cannot be read ({why}): whether it is built on {shown} is unknown",
                r.file.display()
            ));
        }
        // chain[0] is the root itself; `k` indexes the image's upper neighbour.
        if let Some(k) = chain.iter().skip(1).position(|f| *f == image) {
            let above = &chain[k];
            let via = if *above == r.file {
                String::new()
            } else {
                format!(" (in the backing chain of {})", r.file.display())
            };
            return Some(format!(
                "{shown} is the backing file of {}{via}, which {who} needs",
                above.display()
            ));
        }
    }
    None
}

/// Every file the roots need: each root and its backing chain.
pub(crate) fn needed(graph: &mut Graph, roots: &[(PathBuf, Need)]) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for (r, _) in roots {
        out.extend(graph.chain(r));
    }
    out
}

/// The files strata made for `domain` that no domain needs any more
/// (none when a chain could not be read).
fn unneeded(store: &Store, domain: &str) -> Result<Vec<PathBuf>> {
    let made = store.made_files(domain)?;
    if made.is_empty() {
        return Ok(Vec::new());
    }
    let mut graph = Graph::default();
    let needed = needed(&mut graph, &roots(store, None)?);
    if let Some((f, e)) = graph.unreadable.first() {
        // What lies below it is unknown: delete nothing.
        tracing::warn!(
            file = %f.display(),
            error = %e,
            "unreadable, so images strata made that may be unused are kept"
        );
        return Ok(Vec::new());
    }
    Ok(made
        .into_iter()
        .filter(|f| !needed.contains(&canon(f)))
        .collect())
}

/// Deletes the files strata made for `domain` that no domain needs any
/// more; returns them.
pub(crate) fn collect(store: &mut Store, domain: &str) -> Result<Vec<PathBuf>> {
    let mut gone = Vec::new();
    for f in unneeded(store, domain)? {
        match std::fs::remove_file(&f) {
            Ok(()) => gone.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(f),
            Err(e) => tracing::warn!(
                file = %f.display(),
                error = %e,
                "cannot delete an image no longer needed"
            ),
        }
    }
    store.forget_made(domain, &gone)?;
    Ok(gone)
}

/// [`collect`] after an operation that has already succeeded: a failure
/// only leaves files behind, so it is logged.
pub(crate) fn collect_or_warn(store: &mut Store, domain: &str) {
    if let Err(e) = collect(store, domain) {
        tracing::warn!(domain = %domain, error = %e, "images no longer needed are kept");
    }
}

/// Hands over to the user, without deleting, the files strata made for
/// `domain` that no domain needs any more: after `--metadata`, they are the
/// user's, and so is what lies below them.
pub(crate) fn disown_unneeded(store: &mut Store, domain: &str) -> Result<()> {
    let files = unneeded(store, domain)?;
    store.hand_over(domain, &files)
}
