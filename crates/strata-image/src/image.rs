//! The [`Image`] trait every format driver implements, and what block status
//! reports.

use std::sync::Arc;

use crate::capability::{Bitmaps, Placement, Snapshots, Transactional};
use crate::error::Result;
use crate::storage::Storage;

/// Image formats strata drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain file: guest offset = file offset.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a format name.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

/// One extent of block status, shaped like an entry of `qemu-img map --output=json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Chain depth where the data was found (0 = this image).
    pub depth: u32,
    /// Some layer of the chain defines these bytes.
    pub present: bool,
    /// The bytes read as zero.
    pub zero: bool,
    /// The bytes are stored as data (not a zero flag or a hole).
    pub data: bool,
    /// The bytes are stored compressed.
    pub compressed: bool,
    /// Host offset in the file at `depth` holding the data, when it is plain.
    pub offset: Option<u64>,
}

impl Extent {
    /// True when `next` continues this extent with the same status.
    pub fn joins(&self, next: &Extent) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// Appends `e` to `out`, merging it with the last extent when they join.
pub fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.joins(&e) {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// An open disk image (one layer, with its backing chain below it).
///
/// `Send + Sync`: I/O takes `&self` and many threads may call at once.
///
/// The buffers of [`Image::read_at`] and [`Image::write_at`] may be memory
/// that someone else changes while the call runs: strata-vhost passes a
/// guest's own buffers, which the guest can touch at any time. So a driver
/// only stores into a read's buffer and never relies on reading back what
/// it stored, and copies a write's buffer out (to storage, or once into a
/// buffer of its own) without relying on two reads of the same byte
/// agreeing. Both hold for every driver here and for [`Storage`], which
/// they pass these buffers to; what such a change can do is mix old and
/// new bytes in the data it concerns, never break an invariant of the
/// image.
pub trait Image: Send + Sync + std::fmt::Debug {
    /// The file name (for messages).
    fn path(&self) -> &str;
    /// The format of this layer.
    fn format(&self) -> Format;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// True when writes are allowed.
    fn writable(&self) -> bool;
    /// Reads guest bytes (through the backing chain).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes guest bytes.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes a range read as zeros; `unmap` allows freeing storage.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()>;
    /// Tells the image a range is no longer needed (reads as zeros afterwards
    /// where the format can say so).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Changes the virtual size (growing only, for qcow2).
    fn resize(&self, new_size: u64) -> Result<()>;
    /// Allocation status of `[offset, offset+len)` through the chain.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
    /// The image below this one, if any.
    fn backing(&self) -> Option<&Arc<dyn Image>>;
    /// Bytes used on the host by this layer's file.
    fn actual_size(&self) -> Result<u64>;
    /// The storage this layer's own bytes live in (its file), if any.
    fn storage(&self) -> Option<&Arc<dyn Storage>> {
        None
    }
    /// Internal snapshots, when this image keeps them.
    fn internal_snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
    /// Persistent dirty bitmaps, when this image keeps them.
    fn dirty_bitmaps(&self) -> Option<&dyn Bitmaps> {
        None
    }
    /// All-or-nothing metadata changes, when this image makes them.
    fn transactional(&self) -> Option<&dyn Transactional> {
        None
    }
    /// The layer's placement in host storage (header, backing link, data
    /// file), when the format has one beyond the bytes themselves.
    fn placement(&self) -> Option<&dyn Placement> {
        None
    }
    /// The qcow2 driver behind this image, for tests that reach into it
    /// (feature `test-utils`; callers use the capabilities above).
    #[cfg(feature = "test-utils")]
    fn as_qcow2(&self) -> Option<&crate::qcow2::Qcow2> {
        None
    }
    /// A read-only view of internal snapshot `name` that keeps this image
    /// open; an error naming the image when it keeps no internal snapshots.
    fn snapshot_view(self: Arc<Self>, name: &str) -> Result<Arc<dyn Image>> {
        Err(crate::Error::unsupported(
            self.path(),
            format!(
                "snapshot '{name}': a {} image holds no internal snapshots",
                self.format().name()
            ),
        ))
    }
    /// The file holding this layer's data at the host offsets
    /// [`Image::block_status`] reports (`Extent::offset`), when it is a
    /// plain file: for readers that move bytes from it without copying.
    fn host_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// True when changes guest writes made to the image's own structures
    /// (new clusters mapped, zeroed ranges) are still only in this
    /// process's memory, so that a process that dies now would lose writes
    /// it has already completed. A server whose client outlives it (a
    /// daemon that can be killed and replaced under a running guest)
    /// flushes before answering such writes. False for images that keep no
    /// such state (raw).
    fn unwritten_metadata(&self) -> bool {
        false
    }

    /// Flushes and releases what the image holds (locks stay until drop).
    fn close(&self) -> Result<()> {
        self.flush()
    }
}

/// Checks that `[offset, offset+len)` lies within an image of `size` bytes.
pub(crate) fn check_range(path: &str, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(crate::Error::invalid(
            path,
            format!("request at offset {offset} length {len} is beyond the end of the image ({size} bytes)"),
        )),
    }
}
