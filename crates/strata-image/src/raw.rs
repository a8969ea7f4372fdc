//! The raw driver: guest offset equals file offset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::{check_range, push_extent, Extent, Format, Image};
use crate::storage::Storage;

/// A raw image over any storage.
#[derive(Debug)]
pub struct RawImage {
    st: Arc<dyn Storage>,
    writable: bool,
    size: AtomicU64,
}

impl RawImage {
    /// Wraps a storage; the virtual size is its length rounded up to 512
    /// bytes, as QEMU's block layer counts it (the tail reads as zeros).
    pub fn open(st: Arc<dyn Storage>, writable: bool) -> Result<Self> {
        let size = st.len()?.div_ceil(512) * 512;
        Ok(RawImage {
            st,
            writable,
            size: AtomicU64::new(size),
        })
    }

    /// The storage under the image.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.st
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.st.name().to_string(),
            });
        }
        check_range(self.st.name(), self.size(), offset, len)
    }
}

impl Image for RawImage {
    fn path(&self) -> &str {
        self.st.name()
    }

    fn format(&self) -> Format {
        Format::Raw
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.path(), self.size(), offset, buf.len() as u64)?;
        self.st.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.st.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_write(offset, len)?;
        if unmap {
            self.st.punch_hole(offset, len)
        } else {
            self.st.write_zeroes(offset, len)
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.st.punch_hole(offset, len)
    }

    fn flush(&self) -> Result<()> {
        self.st.flush()
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.st.name().to_string(),
            });
        }
        self.st.set_len(new_size)?;
        self.size.store(new_size, Ordering::SeqCst);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.path(), self.size(), offset, len)?;
        let mut out = Vec::new();
        for (start, length, data) in self.st.data_extents(offset, len)? {
            push_extent(
                &mut out,
                Extent {
                    start,
                    length,
                    depth: 0,
                    present: true,
                    zero: !data,
                    data,
                    compressed: false,
                    offset: Some(start),
                },
            );
        }
        Ok(out)
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }

    fn host_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.st.as_fd()
    }

    fn actual_size(&self) -> Result<u64> {
        self.st.allocated_bytes()
    }

    fn storage(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.st)
    }
}
