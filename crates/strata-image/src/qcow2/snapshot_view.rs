//! Reading an internal snapshot without applying it: a read-only [`Image`]
//! over the snapshot's L1 table (for `convert -s` and NBD exports). The
//! backing chain below the image shows through unallocated clusters, as it
//! does for the active state. A view borrows its image, or shares it (an
//! owned view lives as long as it is served).

use std::ops::Deref;
use std::sync::Arc;

use super::io::map_runs_in;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::image::{check_range, Extent, Format, Image};

/// An internal snapshot of a qcow2 image, opened read-only.
#[derive(Debug)]
pub struct SnapshotView<'a> {
    image: Base<'a>,
    l1: Vec<u64>,
    size: u64,
    label: String,
}

/// The image under a view.
#[derive(Debug)]
enum Base<'a> {
    Borrowed(&'a Qcow2),
    Shared(Arc<Qcow2>),
}

impl Deref for Base<'_> {
    type Target = Qcow2;

    fn deref(&self) -> &Qcow2 {
        match self {
            Base::Borrowed(q) => q,
            Base::Shared(q) => q,
        }
    }
}

impl Qcow2 {
    /// Opens the snapshot called `name` (or with that ID) for reading.
    pub fn snapshot_view(&self, name: &str) -> Result<SnapshotView<'_>> {
        SnapshotView::new(Base::Borrowed(self), name)
    }

    /// As [`Qcow2::snapshot_view`], sharing the image: the view keeps it
    /// open.
    pub fn shared_snapshot_view(self: &Arc<Self>, name: &str) -> Result<SnapshotView<'static>> {
        SnapshotView::new(Base::Shared(self.clone()), name)
    }
}

impl<'a> SnapshotView<'a> {
    fn new(image: Base<'a>, name: &str) -> Result<SnapshotView<'a>> {
        let (l1, size, label) = {
            let m = image.meta.lock();
            let entries = m.snapshot_entries()?;
            let (_, entry) = super::snapshot::find(&image.path, &entries, name)?;
            let l1 = m.snapshot_l1(entry)?;
            let size = entry.disk_size.unwrap_or(m.header.size);
            (
                l1,
                size,
                format!("{} (snapshot {})", image.path, entry.name),
            )
        };
        Ok(SnapshotView {
            image,
            l1,
            size,
            label,
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

    fn host_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.image.host_fd()
    }

    fn actual_size(&self) -> Result<u64> {
        self.image.actual_size()
    }
}
