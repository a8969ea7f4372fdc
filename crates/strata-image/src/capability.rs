//! What an image can do beyond guest I/O, as small traits it offers or not.
//!
//! [`Image`](crate::Image) is the I/O every image has. Internal snapshots,
//! persistent dirty bitmaps, all-or-nothing metadata changes and the layout
//! of the layer in host storage are capabilities: a qcow2 layer offers them
//! all, a raw file none, and a wrapper (a live disk, a copy-before-write
//! view) offers what it can forward. Callers ask the image
//! ([`Image::internal_snapshots`](crate::Image::internal_snapshots) and its
//! siblings) instead of guessing its driver.

use std::sync::Arc;

use crate::error::Result;
use crate::image::Image;
use crate::qcow2::{BitmapEdit, BitmapInfo, PendingChange, SnapshotChange, SnapshotInfo};
use crate::storage::Storage;

/// Internal snapshots kept inside the image (qcow2's snapshot table).
pub trait Snapshots: Send + Sync {
    /// Every internal snapshot, in table order.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>>;
    /// Takes an internal snapshot named `name` (an ID is made up when
    /// `None`), recording `vm_clock_nsec` as the guest clock.
    fn snapshot_create(&self, name: Option<&str>, vm_clock_nsec: u64) -> Result<SnapshotInfo>;
    /// Deletes the internal snapshot `name` (a name or an ID).
    fn snapshot_delete(&self, name: &str) -> Result<SnapshotInfo>;
    /// Makes the guest data what it was at snapshot `name`.
    fn snapshot_apply(&self, name: &str) -> Result<SnapshotInfo>;
    /// Gives snapshot `name`, which has none, `state` as its VM state (a
    /// machine's memory, as QEMU's `savevm` keeps it).
    fn snapshot_attach_state(
        &self,
        name: &str,
        state: &dyn crate::qcow2::VmStateSource,
    ) -> Result<SnapshotInfo>;
    /// Reads `buf` from position `pos` of snapshot `name`'s VM state.
    fn read_vmstate(&self, name: &str, buf: &mut [u8], pos: u64) -> Result<()>;
    /// Where snapshot `name`'s VM state lies in the image file, when it is
    /// one run of plain clusters there: the file offset of its first byte
    /// (a reader can take it from the file as it is).
    fn vmstate_extent(&self, name: &str) -> Result<Option<u64>>;
}

/// Persistent dirty bitmaps kept inside the image.
pub trait Bitmaps: Send + Sync {
    /// The bitmap directory, in stored order.
    fn bitmaps(&self) -> Result<Vec<BitmapInfo>>;
    /// The dirty extents `(offset, length)` of bitmap `name`.
    fn bitmap_dirty(&self, name: &str) -> Result<Vec<(u64, u64)>>;
    /// Applies `edits` as one change (all or none).
    fn bitmap_edits(&self, edits: &[BitmapEdit]) -> Result<()>;
    /// Syncs made so far so that bitmaps are on disk before in-place
    /// writes (the price of crash-consistent change tracking).
    fn bitmap_syncs(&self) -> u64;
}

/// Metadata changes (an internal snapshot and bitmap edits) prepared aside
/// and committed in one step, for transactions over many images.
pub trait Transactional: Send + Sync {
    /// Prepares `snapshot` and `edits` as one pending change; nothing the
    /// image uses changes until it is committed.
    fn prepare_change(
        &self,
        snapshot: Option<SnapshotChange>,
        edits: &[BitmapEdit],
    ) -> Result<PendingChange<'_>>;
}

/// How a layer sits in host storage: its header facts, its backing link,
/// its data file, and edits that change them rather than guest data.
pub trait Placement: Send + Sync {
    /// The layer's header facts.
    fn layout(&self) -> Layout;
    /// The external data file, when guest data lives outside the image.
    fn data_file(&self) -> Option<&Arc<dyn Storage>>;
    /// Rewrites the backing link (`None`: no backing file).
    fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()>;
    /// Drops every guest cluster of this layer (reads fall through to the
    /// backing file), as `qemu-img commit` leaves the committed layer.
    fn make_empty(&self) -> Result<()>;
    /// Writes one cluster compressed (`offset` cluster-aligned; `data` a
    /// whole cluster or the image's tail).
    fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// The same file opened again with `backing` below it, after its
    /// backing link changed on disk; this handle is retired (it writes
    /// nothing more) and the new one takes over its storage and locks.
    fn reopen_over(&self, backing: Option<Arc<dyn Image>>) -> Result<Arc<dyn Image>>;
}

/// A layer's header facts, as `qemu-img info` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Header version (2 for compat 0.10, 3 for 1.1).
    pub version: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// The backing file name as stored.
    pub backing_file: Option<String>,
    /// The backing format as stored.
    pub backing_format: Option<String>,
    /// The dirty bit (not cleanly shut down, lazy refcounts).
    pub dirty: bool,
    /// The corrupt bit.
    pub corrupt: bool,
    /// Lazy refcounts are on.
    pub lazy_refcounts: bool,
    /// The compression type's name (`zlib`, `zstd`).
    pub compression: &'static str,
    /// Bits per refcount.
    pub refcount_bits: u32,
    /// The external data file name as stored.
    pub data_file: Option<String>,
    /// Whether the data file is raw (`None` without a data file).
    pub data_file_raw: Option<bool>,
    /// Extended L2 entries (subclusters).
    pub extended_l2: bool,
}
