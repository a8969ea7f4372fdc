//! The capabilities a qcow2 layer offers (see [`crate::capability`]): all of
//! them, by its own methods.

use std::sync::Arc;

use super::header::{COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::{BitmapEdit, BitmapInfo, PendingChange, Qcow2, SnapshotChange, SnapshotInfo};
use crate::capability::{Bitmaps, Layout, Placement, Snapshots, Transactional};
use crate::error::Result;
use crate::image::Image;
use crate::storage::Storage;

impl Snapshots for Qcow2 {
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Qcow2::snapshots(self)
    }
    fn snapshot_create(&self, name: Option<&str>, vm_clock_nsec: u64) -> Result<SnapshotInfo> {
        Qcow2::snapshot_create(self, name, vm_clock_nsec)
    }
    fn snapshot_delete(&self, name: &str) -> Result<SnapshotInfo> {
        Qcow2::snapshot_delete(self, name)
    }
    fn snapshot_apply(&self, name: &str) -> Result<SnapshotInfo> {
        Qcow2::snapshot_apply(self, name)
    }
    fn snapshot_attach_state(
        &self,
        name: &str,
        state: &dyn super::VmStateSource,
    ) -> Result<SnapshotInfo> {
        Qcow2::snapshot_attach_state(self, name, state)
    }
    fn vmstate_extent(&self, name: &str) -> Result<Option<u64>> {
        Qcow2::vmstate_extent(self, name)
    }

    fn read_vmstate(&self, name: &str, buf: &mut [u8], pos: u64) -> Result<()> {
        Qcow2::read_vmstate(self, name, buf, pos)
    }
}

impl Bitmaps for Qcow2 {
    fn bitmaps(&self) -> Result<Vec<BitmapInfo>> {
        Qcow2::bitmaps(self)
    }
    fn bitmap_dirty(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        Qcow2::bitmap_dirty(self, name)
    }
    fn bitmap_edits(&self, edits: &[BitmapEdit]) -> Result<()> {
        Qcow2::bitmap_edits(self, edits)
    }
    fn bitmap_syncs(&self) -> u64 {
        Qcow2::bitmap_syncs(self)
    }
}

impl Transactional for Qcow2 {
    fn prepare_change(
        &self,
        snapshot: Option<SnapshotChange>,
        edits: &[BitmapEdit],
    ) -> Result<PendingChange<'_>> {
        Qcow2::prepare_change(self, snapshot, edits)
    }
}

impl Placement for Qcow2 {
    fn layout(&self) -> Layout {
        let h = self.header();
        Layout {
            version: h.version,
            cluster_size: h.cluster_size(),
            backing_format: h.backing_format(),
            dirty: h.incompatible & INCOMPAT_DIRTY != 0,
            corrupt: h.incompatible & INCOMPAT_CORRUPT != 0,
            lazy_refcounts: h.compatible & COMPAT_LAZY_REFCOUNTS != 0,
            compression: h.compression.name(),
            refcount_bits: h.refcount_bits(),
            data_file: h.data_file_name(),
            data_file_raw: h.has_data_file().then_some(h.data_file_raw()),
            extended_l2: h.extended_l2(),
            backing_file: h.backing_file,
        }
    }
    fn data_file(&self) -> Option<&Arc<dyn Storage>> {
        Qcow2::data_file(self)
    }
    fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        Qcow2::set_backing(self, name, format)
    }
    fn make_empty(&self) -> Result<()> {
        Qcow2::make_empty(self)
    }
    fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<()> {
        Qcow2::write_compressed(self, offset, data)
    }
    fn reopen_over(&self, backing: Option<Arc<dyn Image>>) -> Result<Arc<dyn Image>> {
        Ok(Arc::new(Qcow2::reopen_over(self, backing)?))
    }
}
