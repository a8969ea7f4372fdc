//! The guest's side of a copy-before-write view: an [`Image`] in front of
//! the live image that copies what the view still needs into the scratch
//! before a write, zeroing or discard changes it. Reads, flushes and every
//! capability (bitmaps keep tracking) go straight to the live image.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shared;
use crate::capability::{Bitmaps, Placement, Snapshots, Transactional};
use crate::error::Result;
use crate::image::{Extent, Format, Image};
use crate::storage::Storage;

/// What the guest writes through while a view exists (see the module).
#[derive(Debug)]
pub struct CbwFilter {
    shared: Arc<Shared>,
}

impl CbwFilter {
    pub(super) fn new(shared: Arc<Shared>) -> CbwFilter {
        CbwFilter { shared }
    }

    /// The live image behind the filter.
    pub fn source(&self) -> &Arc<dyn Image> {
        &self.shared.source
    }

    /// Copies the old data of every granule of `[offset, offset+len)` the
    /// view still needs into the scratch. Never fails: a copy that cannot
    /// be made breaks the view instead.
    fn before_change(&self, offset: u64, len: u64) {
        let s = &self.shared;
        if s.broken().is_some() {
            return;
        }
        let held = s.granules.copy(s.span(offset, len));
        if held.is_empty() {
            return;
        }
        let copied = self.copy(&held);
        if let Err(why) = &copied {
            s.break_view(why.clone());
        }
        let ok = copied.is_ok();
        s.granules.end_copy(&held, ok, &copied.unwrap_or_default());
    }

    /// Reads the old data of granules `held` (ascending) and writes it to
    /// the scratch, each run of adjacent granules at once, within the
    /// timeout; a granule that was zeros is not written: returns those.
    fn copy(&self, held: &[u64]) -> std::result::Result<Vec<u64>, String> {
        let s = &self.shared;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &g in held {
            let (start, len) = s.bytes(g);
            match runs.last_mut() {
                Some((o, l)) if *o + *l == start => *l += len,
                _ => runs.push((start, len)),
            }
        }
        let mut data = Vec::with_capacity(runs.len());
        for &(off, len) in &runs {
            let mut buf = vec![0u8; len as usize];
            s.source
                .read_at(&mut buf, off)
                .map_err(|e| format!("reading the old data at offset {off}: {e}"))?;
            data.push((off, buf));
        }
        // Zeros need no copy: the view reads them as zeros.
        let mut zeros = Vec::new();
        data.retain(|(off, buf)| {
            let zero = buf.iter().all(|&b| b == 0);
            if zero {
                let first = off / s.granule;
                zeros.extend(first..first + (buf.len() as u64).div_ceil(s.granule));
            }
            !zero
        });
        if data.is_empty() {
            return Ok(zeros);
        }
        // The old data is in hand: only the scratch write may be slow,
        // and the guest waits for it no longer than the timeout.
        let bytes: u64 = data.iter().map(|(_, b)| b.len() as u64).sum();
        s.copier.write(data, s.timeout)?;
        s.copied.fetch_add(bytes, Ordering::Relaxed);
        Ok(zeros)
    }
}

impl Image for CbwFilter {
    fn path(&self) -> &str {
        self.shared.source.path()
    }
    fn format(&self) -> Format {
        self.shared.source.format()
    }
    fn size(&self) -> u64 {
        self.shared.source.size()
    }
    fn writable(&self) -> bool {
        self.shared.source.writable()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.shared.source.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.before_change(offset, buf.len() as u64);
        self.shared.source.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.before_change(offset, len);
        self.shared.source.write_zeroes(offset, len, unmap)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.before_change(offset, len);
        self.shared.source.discard(offset, len)
    }
    fn flush(&self) -> Result<()> {
        self.shared.source.flush()
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        Err(crate::Error::unsupported(
            self.path(),
            format!("resize to {new_size} while a point-in-time view exists"),
        ))
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.shared.source.block_status(offset, len)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.shared.source.backing()
    }
    fn actual_size(&self) -> Result<u64> {
        self.shared.source.actual_size()
    }
    fn storage(&self) -> Option<&Arc<dyn Storage>> {
        self.shared.source.storage()
    }
    fn internal_snapshots(&self) -> Option<&dyn Snapshots> {
        self.shared.source.internal_snapshots()
    }
    fn dirty_bitmaps(&self) -> Option<&dyn Bitmaps> {
        self.shared.source.dirty_bitmaps()
    }
    fn transactional(&self) -> Option<&dyn Transactional> {
        self.shared.source.transactional()
    }
    fn placement(&self) -> Option<&dyn Placement> {
        self.shared.source.placement()
    }
    #[cfg(feature = "test-utils")]
    fn as_qcow2(&self) -> Option<&crate::qcow2::Qcow2> {
        self.shared.source.as_qcow2()
    }
    fn unwritten_metadata(&self) -> bool {
        self.shared.source.unwritten_metadata()
    }
    fn close(&self) -> Result<()> {
        self.shared.source.flush()
    }
}
