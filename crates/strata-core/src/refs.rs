//! Which image files the metadata still needs, and collecting the ones
//! strata made that nothing needs any more.
//!
//! Roots come from every domain in the store: each disk's current image,
//! and for each snapshot each participating disk's image at snapshot time
//! (for an external snapshot, the image that became read-only; for an
//! internal one, the image holding it). A file is needed when it is a root
//! or in a root's backing chain. Only files strata made for the domain (its
//! overlays, recorded in the store) are ever deleted, and only when no
//! domain needs them.

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

/// The roots of every domain's metadata, leaving out snapshot `skip`
/// (`(domain, snapshot)`), with why each is needed.
pub(crate) fn roots(store: &Store, skip: Option<(&str, &str)>) -> Result<Vec<(PathBuf, Need)>> {
    // Files handed to the user: kept with their chains, while they exist.
    let mut out: Vec<(PathBuf, Need)> = store
        .handed_over_files()?
        .into_iter()
        .filter(|f| f.exists())
        .map(|f| (canon(&f), Need::Contents))
        .collect();
    for summary in store.list()? {
        let dom = store.domain(&summary.name)?;
        for d in dom.disks() {
            if let Some(s) = d.source {
                out.push((canon(&s), Need::Contents));
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
                out.push((canon(&src), need));
            }
        }
    }
    Ok(out)
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
            "{}: cannot read it ({e}), so images strata made that may be unused are kept",
            f.display()
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
                "{}: cannot delete an image no longer needed: {e}",
                f.display()
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
        tracing::warn!("domain '{domain}': images no longer needed are kept: {e}");
    }
}

/// Hands over to the user, without deleting, the files strata made for
/// `domain` that no domain needs any more: after `--metadata`, they are the
/// user's, and so is what lies below them.
pub(crate) fn disown_unneeded(store: &mut Store, domain: &str) -> Result<()> {
    let files = unneeded(store, domain)?;
    store.hand_over(domain, &files)
}
