//! The guest's side of a block job: an [`Image`] in front of the image the
//! guest writes to that records, once each write has completed, which
//! granules it changed (so that an active commit copies them again), and
//! that holds a write back while a stream copies an overlapping range into
//! the same image (so that old data never lands over the guest's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::capability::{Bitmaps, Placement, Snapshots, Transactional};
use crate::error::Result;
use crate::image::{Extent, Format, Image};
use crate::storage::Storage;

/// Bytes one dirty bit covers.
pub const GRANULE: u64 = 64 << 10;

/// See the module.
#[derive(Debug)]
pub struct Tracked {
    inner: Arc<dyn Image>,
    /// One bit per granule the guest changed since the last
    /// [`Tracked::take_dirty`].
    dirty: Vec<AtomicU64>,
    /// Ranges a stream is copying now; guest writes overlapping them wait.
    busy: Mutex<Vec<(u64, u64)>>,
    freed: Condvar,
    /// Guest changes take their range too (a stream runs).
    serialise: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

impl Tracked {
    /// Tracks the guest's writes to `inner`; with `serialise` (for a
    /// stream) each guest change also waits for the copies it overlaps.
    pub fn new(inner: Arc<dyn Image>, serialise: bool) -> Tracked {
        let granules = inner.size().div_ceil(GRANULE);
        Tracked {
            inner,
            dirty: (0..granules.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            busy: Mutex::new(Vec::new()),
            freed: Condvar::new(),
            serialise,
        }
    }

    /// The image behind.
    pub fn inner(&self) -> &Arc<dyn Image> {
        &self.inner
    }

    fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (offset / GRANULE, (offset + len - 1) / GRANULE);
        for g in first..=last {
            if let Some(w) = self.dirty.get((g / 64) as usize) {
                w.fetch_or(1 << (g % 64), Ordering::SeqCst);
            }
        }
    }

    /// The ranges changed since the last call (sorted, merged), cleared.
    pub fn take_dirty(&self) -> Vec<(u64, u64)> {
        let size = self.inner.size();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, w) in self.dirty.iter().enumerate() {
            let mut bits = w.swap(0, Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let start = (i as u64 * 64 + b) * GRANULE;
                let len = GRANULE.min(size.saturating_sub(start));
                match out.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += len,
                    _ => out.push((start, len)),
                }
            }
        }
        out
    }

    /// Bytes changed since the last [`Tracked::take_dirty`].
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum::<u64>()
            * GRANULE
    }

    /// Runs `f` with `[offset, offset+len)` held: guest writes overlapping
    /// it wait until `f` returns.
    pub fn with_held<T>(&self, offset: u64, len: u64, f: impl FnOnce() -> T) -> T {
        let range = (offset, len);
        {
            let mut busy = self.busy.lock();
            while busy.iter().any(|&r| overlaps(r, range)) {
                self.freed.wait(&mut busy);
            }
            busy.push(range);
        }
        let out = f();
        let mut busy = self.busy.lock();
        if let Some(i) = busy.iter().position(|&r| r == range) {
            busy.swap_remove(i);
        }
        self.freed.notify_all();
        out
    }

    /// A guest change of `[offset, offset+len)`: waits for a stream's copy
    /// of the range, makes the change, then marks it.
    fn change(&self, offset: u64, len: u64, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let r = if self.serialise {
            self.with_held(offset, len, f)
        } else {
            f()
        };
        // Marked after the change: a copy that cleared the bit before it
        // landed copies the range again.
        self.mark(offset, len);
        r
    }
}

impl Image for Tracked {
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.change(offset, buf.len() as u64, || {
            self.inner.write_at(buf, offset)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.change(offset, len, || self.inner.write_zeroes(offset, len, unmap))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.change(offset, len, || self.inner.discard(offset, len))
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        Err(crate::Error::unsupported(
            self.path(),
            format!("resize to {new_size} while a block job runs"),
        ))
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.inner.backing()
    }
    fn actual_size(&self) -> Result<u64> {
        self.inner.actual_size()
    }
    fn storage(&self) -> Option<&Arc<dyn Storage>> {
        self.inner.storage()
    }
    fn internal_snapshots(&self) -> Option<&dyn Snapshots> {
        self.inner.internal_snapshots()
    }
    fn dirty_bitmaps(&self) -> Option<&dyn Bitmaps> {
        self.inner.dirty_bitmaps()
    }
    fn transactional(&self) -> Option<&dyn Transactional> {
        self.inner.transactional()
    }
    fn placement(&self) -> Option<&dyn Placement> {
        self.inner.placement()
    }
    #[cfg(feature = "test-utils")]
    fn as_qcow2(&self) -> Option<&crate::qcow2::Qcow2> {
        self.inner.as_qcow2()
    }
    fn unwritten_metadata(&self) -> bool {
        self.inner.unwritten_metadata()
    }
    fn close(&self) -> Result<()> {
        self.inner.close()
    }
}
