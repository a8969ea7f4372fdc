//! Opening an image with its whole backing chain through one gate: formats
//! are probed or taken from the header, relative backing names resolve
//! against the overlay's folder, and loops, missing files and absurd depths
//! are refused with the file that names them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{Format, Image};
use crate::qcow2::{self, Qcow2};
use crate::raw::RawImage;
use crate::storage::{FileStorage, LockMode, Storage};

/// The deepest chain strata opens (layers, the top one included). Reads,
/// writes and block status go down the chain one call per layer, so a
/// deeper chain could overflow the stack of the thread doing the I/O; this
/// depth is proven to fit in [`CHAIN_STACK`] by the `deep_chain` tests
/// (every operation at this depth, on a thread with that stack, in debug
/// and release builds). No real chain comes near it.
pub const MAX_CHAIN_DEPTH: usize = 1024;

/// The stack every thread that does I/O through a chain gets: the CLI's
/// command thread, the NBD server's runtime threads, copy workers.
/// Reserved, not committed: untouched pages cost nothing.
pub const CHAIN_STACK: usize = 64 << 20;

/// A thread builder with [`CHAIN_STACK`], for threads that do image I/O.
pub fn io_thread() -> std::thread::Builder {
    std::thread::Builder::new().stack_size(CHAIN_STACK)
}

/// How to open an image and its chain.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Open the top image for writing.
    pub writable: bool,
    /// Open this many backing images below the top for writing too (commit
    /// into a base at that depth); 0 keeps the whole chain read-only.
    pub writable_backing: u32,
    /// Format of the top image; probed when `None`.
    pub format: Option<Format>,
    /// Open the backing chain (off: the top image alone, unallocated reads as zero).
    pub backing: bool,
    /// Take QEMU-compatible locks.
    pub lock: bool,
    /// L2 cache bytes per qcow2 layer.
    pub cache_bytes: u64,
    /// Open the top image writable for bitmap changes only (guest writes
    /// refused, bitmaps kept consistent).
    pub bitmaps_only: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            writable: false,
            writable_backing: 0,
            format: None,
            backing: true,
            lock: true,
            cache_bytes: 32 << 20,
            bitmaps_only: false,
        }
    }
}

/// Guesses the format of a storage from its first bytes.
pub fn probe(st: &dyn Storage) -> Result<Format> {
    let mut magic = [0u8; 4];
    st.read_at(&mut magic, 0)?;
    Ok(if u32::from_be_bytes(magic) == qcow2::header::MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Resolves a backing file name stored in `overlay` (relative to its folder).
pub fn resolve_backing(overlay: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    overlay
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

struct Layer {
    storage: Arc<dyn Storage>,
    format: Format,
    writable: bool,
}

/// Opens `path` and (unless told otherwise) its whole backing chain.
pub fn open(path: &Path, opts: &ChainOptions) -> Result<Arc<dyn Image>> {
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = path.to_path_buf();
    let mut fmt = opts.format;
    let mut referrer: Option<PathBuf> = None;
    loop {
        let shown = cur.display().to_string();
        let canonical = std::fs::canonicalize(&cur).map_err(|e| match &referrer {
            Some(r) => Error::backing(
                &r.display().to_string(),
                format!("could not open backing file {shown}: {e}"),
            ),
            None => Error::io(&shown, "open", 0, e),
        })?;
        if !seen.insert(canonical.clone()) {
            let at = referrer
                .as_ref()
                .map_or(shown.clone(), |r| r.display().to_string());
            return Err(Error::backing(
                &at,
                format!("backing file {shown} makes a loop in the chain"),
            ));
        }
        if layers.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::backing(
                &path.display().to_string(),
                format!("chain is deeper than {MAX_CHAIN_DEPTH}"),
            ));
        }
        let writable = if layers.is_empty() {
            opts.writable
        } else {
            layers.len() as u32 <= opts.writable_backing
        };
        let st: Arc<dyn Storage> = Arc::new(FileStorage::open(&cur, writable)?);
        let format = match fmt {
            Some(f) => f,
            None => probe(st.as_ref())?,
        };
        let mut next = None;
        if format == Format::Qcow2 && opts.backing {
            let h = qcow2::read_header(st.as_ref())?;
            if let Some(name) = h.backing_file.clone() {
                let bfmt = match h.backing_format() {
                    Some(f) => Some(Format::parse(&f).ok_or_else(|| {
                        Error::unsupported(&shown, format!("backing format '{f}'"))
                    })?),
                    None => None,
                };
                next = Some((resolve_backing(&cur, &name), bfmt));
            }
        }
        layers.push(Layer {
            storage: st,
            format,
            writable,
        });
        match next {
            Some((p, f)) => {
                referrer = Some(cur);
                cur = p;
                fmt = f;
            }
            None => break,
        }
    }
    let mut below: Option<Arc<dyn Image>> = None;
    while let Some(layer) = layers.pop() {
        let top = layers.is_empty();
        below = Some(open_layer(layer, below, opts, top)?);
    }
    Ok(below.expect("at least one layer"))
}

/// Opens the qcow2 overlay `path` alone, on `backing`: an image already
/// open (the disk a daemon serves, which the overlay now goes on top of).
/// The overlay's header must name that image as its backing file.
pub fn open_over(
    path: &Path,
    backing: Arc<dyn Image>,
    opts: &ChainOptions,
) -> Result<Arc<dyn Image>> {
    let shown = path.display().to_string();
    let st: Arc<dyn Storage> = Arc::new(FileStorage::open(path, opts.writable)?);
    if probe(st.as_ref())? != Format::Qcow2 {
        return Err(Error::unsupported(&shown, "an overlay must be qcow2"));
    }
    let h = qcow2::read_header(st.as_ref())?;
    let named = h
        .backing_file
        .as_deref()
        .map(|n| resolve_backing(path, n))
        .and_then(|p| std::fs::canonicalize(p).ok());
    let below = std::fs::canonicalize(backing.path()).ok();
    if named.is_none() || named != below {
        return Err(Error::backing(
            &shown,
            format!("its backing file is not {}", backing.path()),
        ));
    }
    let layer = Layer {
        storage: st,
        format: Format::Qcow2,
        writable: opts.writable,
    };
    open_layer(layer, Some(backing), opts, true)
}

fn open_layer(
    layer: Layer,
    backing: Option<Arc<dyn Image>>,
    opts: &ChainOptions,
    top: bool,
) -> Result<Arc<dyn Image>> {
    Ok(match layer.format {
        Format::Raw => {
            if opts.lock {
                layer.storage.lock(if layer.writable {
                    LockMode::Write
                } else {
                    LockMode::Read
                })?;
            }
            Arc::new(RawImage::open(layer.storage, layer.writable)?)
        }
        Format::Qcow2 => {
            let o = qcow2::OpenOptions {
                writable: layer.writable,
                lock: opts.lock,
                cache_bytes: opts.cache_bytes,
                allow_corrupt: false,
                bitmaps_only: opts.bitmaps_only && top,
                data_file: None,
            };
            Arc::new(Qcow2::open(layer.storage, backing, &o)?)
        }
    })
}
