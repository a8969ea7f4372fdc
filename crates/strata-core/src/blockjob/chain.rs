//! The chain a served disk reads, layer by layer, as a block job sees it:
//! finding `--top` and `--base` in it, opening a layer for writing beside
//! the read-only handle the chain holds, handing a layer to a fresh handle
//! after its file changed, and refusing a commit whose base something
//! else reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_image::{ChainOptions, Format, Image};

use crate::error::{Error, Result};
use crate::refs::{self, canon, Graph};
use crate::store::Store;

/// The layers of a served disk, top (depth 0) first.
#[derive(Clone)]
pub struct Layers(Vec<(PathBuf, Arc<dyn Image>)>);

impl Layers {
    /// The chain below (and including) `top`.
    pub fn of(top: Arc<dyn Image>) -> Layers {
        let mut out = Vec::new();
        let mut cur = Some(top);
        while let Some(img) = cur {
            cur = img.backing().cloned();
            out.push((canon(Path::new(img.path())), img));
        }
        Layers(out)
    }

    /// How many layers.
    pub fn len(&self) -> u32 {
        self.0.len() as u32
    }

    /// True without layers (never: a disk has its top).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The depth of `file`, when it is one of the layers.
    pub fn depth(&self, file: &Path) -> Option<u32> {
        let c = canon(file);
        self.0.iter().position(|(p, _)| *p == c).map(|d| d as u32)
    }

    /// The layer at `depth`.
    pub fn get(&self, depth: u32) -> &Arc<dyn Image> {
        &self.0[depth as usize].1
    }

    /// The file of the layer at `depth`, as the chain names it.
    pub fn file(&self, depth: u32) -> PathBuf {
        PathBuf::from(self.get(depth).path())
    }

    /// The depth of `file` (option `opt` named it), or an error that shows
    /// the chain.
    pub fn depth_of(&self, file: &Path, what: &str, opt: &str) -> Result<u32> {
        self.depth(file).ok_or_else(|| {
            let chain: Vec<String> = self.0.iter().map(|(_, i)| i.path().to_string()).collect();
            Error::invalid(
                what,
                format!(
                    "{opt} {} is not in the disk's chain ({})",
                    file.display(),
                    chain.join(" <- ")
                ),
            )
        })
    }

    /// A writable handle of the layer at `depth`, on the chain's handles
    /// below it. It takes no lock: the chain's read-only handle holds the
    /// file's, and what this one writes is what only the layers above read
    /// through (see the module of [`crate::blockjob`]).
    pub fn open_writable(&self, depth: u32, what: &str) -> Result<Arc<dyn Image>> {
        let layer = self.get(depth);
        let path = self.file(depth);
        let opts = ChainOptions {
            writable: true,
            lock: false,
            format: Some(layer.format()),
            ..ChainOptions::default()
        };
        let opened = match (layer.format(), layer.backing()) {
            (Format::Qcow2, Some(below)) => strata_image::open_over(&path, below.clone(), &opts),
            _ => strata_image::open(
                &path,
                &ChainOptions {
                    backing: false,
                    ..opts
                },
            ),
        };
        opened.map_err(|e| {
            Error::invalid(what, format!("opening {} for writing: {e}", path.display()))
        })
    }

    /// The layer at `depth` opened afresh on the same storage (its file
    /// was written through another handle: cached tables are stale).
    pub fn fresh(&self, depth: u32) -> Result<Arc<dyn Image>> {
        let layer = self.get(depth);
        Ok(match layer.placement() {
            Some(p) => p.reopen_over(layer.backing().cloned())?,
            None => layer.clone(),
        })
    }

    /// Points the layer at `depth` at `below` (on disk, then with fresh
    /// handles of it and every layer above it); returns the new top.
    pub fn relink(
        &self,
        depth: u32,
        below: Option<Arc<dyn Image>>,
        what: &str,
    ) -> Result<Arc<dyn Image>> {
        let layer = self.get(depth);
        let path = self.file(depth);
        let p = layer.placement().ok_or_else(|| {
            Error::invalid(
                what,
                format!(
                    "{} is not qcow2: its backing file cannot change",
                    path.display()
                ),
            )
        })?;
        let name = match &below {
            Some(b) => Some(strata_image::ops::external::backing_name(
                Path::new(b.path()),
                &path,
            )?),
            None => None,
        };
        let format = below.as_ref().map(|b| b.format().name());
        if layer.writable() {
            p.set_backing(name.as_deref(), format)?;
        } else {
            let rw = strata_image::open(
                &path,
                &ChainOptions {
                    writable: true,
                    backing: false,
                    lock: false,
                    ..ChainOptions::default()
                },
            )?;
            rw.placement()
                .ok_or_else(|| Error::invalid(what, format!("{} is not qcow2", path.display())))?
                .set_backing(name.as_deref(), format)?;
            rw.close()?;
        }
        let mut cur = p.reopen_over(below)?;
        for d in (0..depth).rev() {
            let l = self.get(d);
            let p = l
                .placement()
                .ok_or_else(|| Error::invalid(what, format!("{} is not qcow2", l.path())))?;
            cur = p.reopen_over(Some(cur))?;
        }
        Ok(cur)
    }
}

/// Refuses a commit of `top_depth` into `base_depth` when something in the
/// metadata (a disk, a snapshot, a file handed over) reads the base other
/// than through the top: the commit would change what it reads.
pub(super) fn refuse_if_base_read_elsewhere(
    store: &Store,
    domain: &str,
    layers: &Layers,
    top_depth: u32,
    base_depth: u32,
    what: &str,
    leaving: Option<(&str, &str)>,
) -> Result<()> {
    let top = &layers.0[top_depth as usize].0;
    let base = &layers.0[base_depth as usize].0;
    let mut graph = Graph::default();
    for r in refs::owned_roots(store, leaving)? {
        let chain = graph.chain(&r.file);
        let who = r.owner.describe(domain);
        if let Some(why) = graph.unreadable_why(&r.file) {
            return Err(Error::invalid(
                what,
                format!(
                    "{}, which {who} needs, cannot be read ({why}): whether it reads {} is unknown",
                    r.file.display(),
                    base.display()
                ),
            ));
        }
        if let Some(at) = chain.iter().position(|f| f == base) {
            if !chain[..at].contains(top) {
                return Err(Error::invalid(
                    what,
                    format!(
                        "{} is read by {who} ({}) other than through {}: committing into it would change that; delete the snapshot instead (snapshot delete merges its images)",
                        base.display(),
                        r.file.display(),
                        top.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}
