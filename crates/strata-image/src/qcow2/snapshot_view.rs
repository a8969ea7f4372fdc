//! Reading an internal snapshot without applying it: a read-only [`Image`]
//! over the snapshot's L1 table (for `convert -s` and NBD exports). The
//! backing chain below the image shows through unallocated clusters, as it
//! does for the active state.

use std::sync::Arc;

use super::io::map_runs_in;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::image::{check_range, Extent, Format, Image};

/// An internal snapshot of a qcow2 image, opened read-only.
#[derive(Debug)]
pub struct SnapshotView<'a> {
    image: &'a Qcow2,
    l1: Vec<u64>,
    size: u64,
    label: String,
}

impl Qcow2 {
    /// Opens the snapshot called `name` (or with that ID) for reading.
    pub fn snapshot_view(&self, name: &str) -> Result<SnapshotView<'_>> {
        let m = self.meta.lock();
        let entries = m.snapshot_entries()?;
        let (_, entry) = super::snapshot::find(&self.path, &entries, name)?;
        let l1 = m.snapshot_l1(entry)?;
        let size = entry.disk_size.unwrap_or(m.header.size);
        Ok(SnapshotView {
            image: self,
            l1,
            size,
            label: format!("{} (snapshot {})", self.path, entry.name),
        })
    }
}

impl Image for SnapshotView<'_> {
    fn path(&self) -> &str {
        &self.label
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.label, self.size, offset, buf.len() as u64)?;
        let _g = self.image.gate.read();
        let runs = map_runs_in(
            &mut self.image.meta.lock(),
            Some(&self.l1),
            offset,
            buf.len() as u64,
        )?;
        self.image.read_runs(&runs, buf, offset)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.label.clone(),
        })
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.label.clone(),
        })
    }

    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.label.clone(),
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn resize(&self, _new_size: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.label.clone(),
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(&self.label, self.size, offset, len)?;
        let _g = self.image.gate.read();
        self.image.block_status_in(Some(&self.l1), offset, len)
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.image.backing()
    }

    fn actual_size(&self) -> Result<u64> {
        self.image.actual_size()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        // A view offers no format-specific features (nothing to write).
        &()
    }
}
