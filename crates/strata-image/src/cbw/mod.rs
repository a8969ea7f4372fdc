//! Copy-before-write: a point-in-time view of a disk that goes on
//! changing, without a snapshot in the image (QEMU's copy-before-write
//! filter with its `snapshot-access` node; the fleecing libvirt's pull
//! backups use).
//!
//! [`start`] puts a [`CbwFilter`] in front of the live image (what the
//! guest writes through from now on) and opens a [`CbwView`] (what a
//! backup reads). Before a guest write, zeroing or discard changes a
//! granule the view still needs, the filter reads the granule's old data
//! and writes it to a scratch qcow2 at the same offset; the view reads a
//! granule from the scratch once it is there, else from the live image,
//! holding the granule against a concurrent copy while it reads. Granules
//! the view does not need (outside an incremental backup's bitmap) or no
//! longer needs ([`CbwView::done`], an NBD trim of the view) are never
//! copied, so the scratch holds only what the guest overwrote that the
//! backup had yet to read.
//!
//! **The backup fails, the guest never does** (QEMU's
//! `on-cbw-error=break-snapshot`): a copy that fails or takes longer than
//! the timeout (QEMU's `cbw-timeout`) breaks the view — every later read
//! of it fails, saying why — and the guest's write goes on. The old data
//! is read before the write is let through, so a late scratch write can
//! only be to a view already broken.
//!
//! The scratch file (0600) is removed when the last handle to the view
//! goes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::chain::{self, ChainOptions};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::qcow2::{CreateOptions, Qcow2};

mod copier;
mod filter;
mod granules;
mod view;

pub use filter::CbwFilter;
pub use view::CbwView;

use copier::Copier;
use granules::{Bits, Granules};

/// The smallest granule: a page, the least a guest writes at once.
pub const MIN_GRANULE: u64 = 4 << 10;

/// The largest granule (a qcow2 cluster can be no larger).
pub const MAX_GRANULE: u64 = 2 << 20;

/// The most granules a view keeps track of (five bits each).
const MAX_GRANULES: u64 = 1 << 24;

/// The granule of a view of a disk of `size` bytes, unless told: a page,
/// so that a guest's small write copies no more than it overwrites (QEMU
/// copies at least 64 KiB), or larger on a disk of more than
/// [`MAX_GRANULES`] pages, up to [`MAX_GRANULE`].
pub fn granule_for(size: u64) -> u64 {
    let mut g = MIN_GRANULE;
    while size.div_ceil(g) > MAX_GRANULES && g < MAX_GRANULE {
        g *= 2;
    }
    g
}

/// The default bound on one copy before the view is given up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Scratch bytes freed between two flushes that make them reusable.
const REUSE_AFTER: u64 = 16 << 20;

/// How a view is made.
#[derive(Debug, Clone)]
pub struct CbwOptions {
    /// The scratch qcow2 to create (it must not exist).
    pub scratch: PathBuf,
    /// The granule in bytes: a power of two from 4 KiB to 2 MiB, or
    /// `None` for [`granule_for`] the disk's size.
    pub granule: Option<u64>,
    /// The ranges the view needs (`(offset, length)`, e.g. a bitmap's
    /// dirty extents), or `None` for all of the disk.
    pub needed: Option<Vec<(u64, u64)>>,
    /// The longest a copy may take before the view is given up.
    pub timeout: Duration,
    /// Give up each granule the view reads whole, as a backup that reads
    /// every range once does: guest writes there copy nothing afterwards
    /// (the scratch stays small), and a second read of it after a guest
    /// write is an error, never data from after the instant.
    pub read_once: bool,
}

impl CbwOptions {
    /// A full view with scratch `scratch` and the defaults.
    pub fn new(scratch: impl Into<PathBuf>) -> CbwOptions {
        CbwOptions {
            scratch: scratch.into(),
            granule: None,
            needed: None,
            timeout: DEFAULT_TIMEOUT,
            read_once: false,
        }
    }
}

/// What a view has cost so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CbwStats {
    /// Bytes of old data copied into the scratch.
    pub copied: u64,
    /// Bytes the scratch file takes on the host.
    pub scratch_bytes: u64,
    /// Bytes the view still needs.
    pub needed: u64,
}

/// What the filter and the view share.
#[derive(Debug)]
pub(crate) struct Shared {
    source: Arc<dyn Image>,
    scratch: Arc<dyn Image>,
    scratch_path: PathBuf,
    granule: u64,
    size: u64,
    granules: Granules,
    timeout: Duration,
    read_once: bool,
    /// Bytes of scratch freed since its last flush.
    freed: AtomicU64,
    /// The threads that write the scratch for guest writes.
    copier: Copier,
    broken: OnceLock<String>,
    copied: AtomicU64,
}

impl Shared {
    /// The granules `[offset, offset+len)` touches.
    fn span(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        offset / self.granule..(offset + len).div_ceil(self.granule)
    }

    /// Granule `g`'s byte range, clipped to the disk.
    fn bytes(&self, g: u64) -> (u64, u64) {
        let start = g * self.granule;
        (start, self.granule.min(self.size - start))
    }

    /// The granules `[offset, offset+len)` covers whole (the last, short
    /// granule of the disk counts as whole when the range reaches the end).
    fn whole(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let first = offset.div_ceil(self.granule);
        let end = offset + len;
        let last = if end == self.size {
            self.size.div_ceil(self.granule)
        } else {
            end / self.granule
        };
        first..last.max(first)
    }

    /// Frees the scratch copies of granules `gs` (best effort: a cluster
    /// not freed only costs space). Every [`REUSE_AFTER`] bytes freed the
    /// scratch is flushed, which makes its freed clusters free for the next
    /// copies: the scratch grows no larger than what it holds at once.
    fn free(&self, gs: &[u64]) {
        for &g in gs {
            let (off, len) = self.bytes(g);
            if let Err(e) = self.scratch.discard(off, len) {
                tracing::debug!(error = %e, "cannot free scratch clusters");
            }
        }
        let freed = gs.len() as u64 * self.granule;
        if freed > 0 && self.freed.fetch_add(freed, Ordering::Relaxed) + freed >= REUSE_AFTER {
            self.freed.store(0, Ordering::Relaxed);
            if let Err(e) = self.scratch.flush() {
                tracing::debug!(error = %e, "cannot flush the scratch");
            }
        }
    }

    /// Gives the view up for `why` (the first reason stays).
    fn break_view(&self, why: String) {
        if self.broken.set(why.clone()).is_ok() {
            tracing::warn!(scratch = %self.scratch_path.display(), reason = %why, "the point-in-time view is broken; the guest goes on");
        }
    }

    /// Why the view is broken, if it is.
    fn broken(&self) -> Option<&str> {
        self.broken.get().map(String::as_str)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.scratch_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(scratch = %self.scratch_path.display(), error = %e, "cannot remove the scratch file");
            }
        }
    }
}

/// Starts a point-in-time view of `source` as it is now: returns the
/// filter the guest must write through from now on, and the view. The
/// caller makes sure no write reaches `source` other than through the
/// filter from this moment (for a served disk: under the quiesce point).
pub fn start(source: Arc<dyn Image>, opts: &CbwOptions) -> Result<(Arc<CbwFilter>, Arc<CbwView>)> {
    prepare(source, opts).map(Prepared::start)
}

/// A view made ready (its scratch created and open) but not started: what
/// can fail is done, so that [`Prepared::start`], at the instant the view
/// holds, cannot fail. Dropped unstarted, it removes its scratch.
#[derive(Debug)]
pub struct Prepared(Arc<Shared>);

impl Prepared {
    /// Starts the view now (see [`start`]).
    pub fn start(self) -> (Arc<CbwFilter>, Arc<CbwView>) {
        (
            Arc::new(CbwFilter::new(self.0.clone())),
            Arc::new(CbwView::new(self.0)),
        )
    }
}

/// Makes the scratch of a view of `source` ready (see [`Prepared`]).
pub fn prepare(source: Arc<dyn Image>, opts: &CbwOptions) -> Result<Prepared> {
    let shown = opts.scratch.display().to_string();
    let size = source.size();
    let g = opts.granule.unwrap_or_else(|| granule_for(size));
    if !g.is_power_of_two() || !(MIN_GRANULE..=MAX_GRANULE).contains(&g) {
        return Err(Error::invalid(
            &shown,
            format!("granule {g}: a power of two from 4 KiB to 2 MiB"),
        ));
    }
    let n = size.div_ceil(g);
    let needed = match &opts.needed {
        None => Bits::new(n, true),
        Some(ranges) => {
            let mut b = Bits::new(n, false);
            for &(off, len) in ranges {
                if len == 0 {
                    continue;
                }
                let end = off.saturating_add(len).min(size);
                for i in off / g..end.div_ceil(g) {
                    b.set(i, true);
                }
            }
            b
        }
    };
    let create = CreateOptions {
        size: size.div_ceil(512) * 512,
        cluster_size: g.max(512),
        ..Default::default()
    };
    Qcow2::create_file(&opts.scratch, &create)?;
    let scratch = chain::open(
        &opts.scratch,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    );
    let scratch = match scratch {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&opts.scratch);
            return Err(e);
        }
    };
    let copier = match Copier::start(scratch.clone()) {
        Ok(c) => c,
        Err(e) => {
            drop(scratch);
            let _ = std::fs::remove_file(&opts.scratch);
            return Err(e);
        }
    };
    let shared = Arc::new(Shared {
        source,
        scratch,
        scratch_path: opts.scratch.clone(),
        granule: g,
        size,
        granules: Granules::new(needed, n),
        timeout: opts.timeout,
        read_once: opts.read_once,
        freed: AtomicU64::new(0),
        copier,
        broken: OnceLock::new(),
        copied: AtomicU64::new(0),
    });
    Ok(Prepared(shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granules_are_pages_until_there_would_be_too_many() {
        assert_eq!(granule_for(0), MIN_GRANULE);
        assert_eq!(granule_for(1), MIN_GRANULE);
        // 64 GiB of pages is the most.
        assert_eq!(granule_for(64 << 30), MIN_GRANULE);
        assert_eq!(granule_for((64 << 30) + 1), 2 * MIN_GRANULE);
        assert_eq!(granule_for(1 << 40), 64 << 10);
        for size in [1u64 << 20, 100 << 30, 3 << 40, 32 << 40] {
            assert!(size.div_ceil(granule_for(size)) <= MAX_GRANULES, "{size}");
        }
        assert_eq!(granule_for(1 << 50), MAX_GRANULE);
    }
}
