//! The qcow2 driver: versions 2 and 3, any cluster size from 512 B to 2 MiB,
//! refcount widths 1–64, extended L2 entries, compressed clusters, lazy
//! refcounts, and backing files through any [`Image`].
//!
//! Concurrency: data I/O runs without the metadata lock. Reads and writes
//! into clusters this image owns hold the I/O gate shared; anything that can
//! free a cluster (discard, zeroing with unmap, resize) holds it exclusively,
//! so no request ever touches a cluster after it has been freed. Allocating
//! writes are serialised by the allocation mutex; the metadata mutex is only
//! held for table lookups and updates.

mod bitmap_track;
pub mod bitmaps;
mod cache;
mod capability;
pub mod check;
mod compress;
mod create;
pub mod data_file;
pub mod header;
mod inflight;
mod io;
mod meta;
mod pending;
mod refcount;
mod shadow;
mod snapshot;
pub mod snapshot_table;
mod snapshot_view;
mod types;
pub mod vmstate;
mod zero;

pub use bitmaps::{BitmapEdit, BitmapInfo};
pub use check::{CheckMode, CheckReport};
pub use create::{create, CreateOptions, Preallocation};
pub use header::{CompressionType, Header};
pub use pending::{PendingChange, SnapshotChange};
pub use snapshot::SnapshotInfo;
pub use snapshot_view::SnapshotView;
pub use vmstate::{FileVmState, VmStateSource};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::capability::{Bitmaps, Placement, Snapshots, Transactional};
use crate::error::{Error, Result};
use crate::image::{check_range, Extent, Format, Image};
use crate::storage::{LockMode, Storage};
use header::{AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use meta::Meta;
use types::Geometry;

/// How to open a qcow2 image.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open for writing.
    pub writable: bool,
    /// Take QEMU-compatible locks (off = QEMU's force-share for readers).
    pub lock: bool,
    /// Bytes of L2 tables to cache.
    pub cache_bytes: u64,
    /// Allow a writable open of an image marked corrupt (for repair only).
    pub allow_corrupt: bool,
    /// Writable for bitmap changes only (as `qemu-img bitmap`): guest
    /// writes are refused.
    pub bitmaps_only: bool,
    /// The external data file, already open (tests put it on a memory or
    /// fault-injecting backend); `None` opens the file the header names.
    pub data_file: Option<Arc<dyn Storage>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            lock: true,
            cache_bytes: 32 << 20,
            allow_corrupt: false,
            bitmaps_only: false,
            data_file: None,
        }
    }
}

/// An open qcow2 image.
#[derive(Debug)]
pub struct Qcow2 {
    st: Arc<dyn Storage>,
    /// Where guest data lives: the external data file, or `st` itself.
    data: Arc<dyn Storage>,
    path: String,
    geo: Geometry,
    size: AtomicU64,
    writable: bool,
    /// Guest writes are allowed (false for a bitmaps-only open).
    guest_writes: bool,
    backing: Option<Arc<dyn Image>>,
    /// Set once [`Qcow2::reopen_over`] handed the file to a new handle:
    /// this one then writes nothing, not even on drop.
    retired: std::sync::atomic::AtomicBool,
    gate: RwLock<()>,
    alloc: Mutex<()>,
    inflight: inflight::InFlight,
    meta: Mutex<Meta>,
}

/// Reads the first cluster (or as much of the file as there is, up to 2 MiB)
/// and parses the header.
pub fn read_header(st: &dyn Storage) -> Result<Header> {
    let len = st.len()?;
    let mut first = vec![0u8; len.min(1 << 21) as usize];
    st.read_at(&mut first, 0)?;
    // The first cluster can be smaller than what we read; parse limits itself.
    Header::parse(st.name(), &first, len)
}

impl Qcow2 {
    /// Opens a qcow2 image on `st`, with `backing` as the image below it.
    pub fn open(
        st: Arc<dyn Storage>,
        backing: Option<Arc<dyn Image>>,
        opts: &OpenOptions,
    ) -> Result<Qcow2> {
        let path = st.name().to_string();
        let header = read_header(st.as_ref())?;
        if opts.lock {
            st.lock(if opts.writable {
                LockMode::Write
            } else {
                LockMode::Read
            })?;
        }
        if opts.writable && header.incompatible & INCOMPAT_CORRUPT != 0 && !opts.allow_corrupt {
            return Err(Error::corrupt(
                &path,
                "the image is marked corrupt (incompatible bit 1); it can only be opened read-only or repaired with `check -r all`",
            ));
        }
        let data = match (&opts.data_file, header.has_data_file()) {
            (Some(d), true) => d.clone(),
            (_, true) => data_file::open(&path, &header, opts.writable, opts.lock)?
                .unwrap_or_else(|| st.clone()),
            (_, false) => st.clone(),
        };
        let geo = Geometry::new(&header);
        let size = header.size;
        let mut meta = Meta::load(st.clone(), path.clone(), header, opts.cache_bytes)?;
        meta.data = data.clone();
        if opts.writable {
            // Autoclear bits we do not maintain must be cleared before
            // writing. Bitmaps (bit 0) are maintained: guest writes are
            // tracked in every enabled bitmap.
            let kept = AUTOCLEAR_BITMAPS | (meta.header.autoclear & AUTOCLEAR_DATA_FILE_RAW);
            let unknown = meta.header.autoclear & !kept;
            if unknown != 0 {
                meta.header.autoclear &= kept;
                meta.write_header()?;
                st.flush()?;
            }
            if meta.header.incompatible & INCOMPAT_DIRTY != 0 {
                tracing::info!("{path}: image was not closed cleanly; repairing refcounts");
                check::repair_dirty(&mut meta)?;
            }
        }
        let img = Qcow2 {
            st,
            data,
            path,
            geo,
            size: AtomicU64::new(size),
            writable: opts.writable,
            guest_writes: opts.writable && !opts.bitmaps_only,
            backing,
            retired: std::sync::atomic::AtomicBool::new(false),
            gate: RwLock::new(()),
            alloc: Mutex::new(()),
            inflight: inflight::InFlight::default(),
            meta: Mutex::new(meta),
        };
        if img.guest_writes {
            img.exclusive(bitmaps::start_tracking)?;
        }
        Ok(img)
    }

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        self.meta.lock().header.clone()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size
    }

    /// The storage under the image.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.st
    }

    /// The external data file's storage, when the image has one.
    pub fn data_file(&self) -> Option<&Arc<dyn Storage>> {
        self.geo.data_file.then_some(&self.data)
    }

    /// True when the external data file is a consistent raw image of the
    /// guest (`data_file_raw`).
    pub fn data_file_raw(&self) -> bool {
        self.meta.lock().header.data_file_raw()
    }

    /// Checks refcounts and tables; repairs what `mode` allows.
    pub fn check(&self, mode: CheckMode) -> Result<CheckReport> {
        if mode != CheckMode::ReadOnly {
            self.require_writable()?;
        }
        self.exclusive(|m| check::check(m, mode))
    }

    /// Creates a qcow2 file at `path` (mode 0600; refuses to overwrite).
    ///
    /// With `data_file`, the data file is created too (or, when it exists,
    /// taken over with its contents; see [`data_file`]); with
    /// `data_file_raw` every cluster is mapped up front (preallocation
    /// metadata at least), as qemu-img does.
    pub fn create_file(path: &std::path::Path, opts: &CreateOptions) -> Result<()> {
        opts.validate(&path.display().to_string())?;
        let mut opts = opts.clone();
        if opts.data_file_raw && opts.preallocation == Preallocation::Off {
            opts.preallocation = Preallocation::Metadata;
        }
        let opts = &opts;
        let st: Arc<dyn Storage> = Arc::new(crate::storage::FileStorage::create(path, false)?);
        let data_made = match &opts.data_file {
            Some(name) => match data_file::create(path, name, opts.size, opts.preallocation) {
                Ok(created) => created,
                Err(e) => {
                    drop(st);
                    let _ = std::fs::remove_file(path);
                    return Err(e);
                }
            },
            None => false,
        };
        let made = create(st.as_ref(), opts).and_then(|()| {
            if opts.preallocation == Preallocation::Off {
                return Ok(());
            }
            let img = Qcow2::open(
                st,
                None,
                &OpenOptions {
                    writable: true,
                    ..Default::default()
                },
            )?;
            img.exclusive(|m| {
                create::preallocate(m, opts.preallocation)?;
                m.close()
            })
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            if let (true, Some(name)) = (data_made, &opts.data_file) {
                data_file::remove_created(path, name);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Hands the file to a new handle with `backing` below it (a block job
    /// that changed the backing file on disk, under a paused guest): this
    /// handle's metadata is written back and it is retired — it writes
    /// nothing any more, not even when dropped — and the new handle opens
    /// the same storage (whose locks it keeps) afresh.
    pub fn reopen_over(&self, backing: Option<Arc<dyn Image>>) -> Result<Qcow2> {
        if self.writable {
            self.exclusive(|m| {
                m.close()?;
                self.retired.store(true, Ordering::SeqCst);
                Ok(())
            })?;
        }
        let opts = OpenOptions {
            writable: self.writable,
            lock: false,
            data_file: self.geo.data_file.then(|| self.data.clone()),
            bitmaps_only: self.writable && !self.guest_writes,
            ..OpenOptions::default()
        };
        let reopened = Qcow2::open(self.st.clone(), backing, &opts);
        if reopened.is_err() {
            // The old handle goes on serving.
            self.retired.store(false, Ordering::SeqCst);
        }
        reopened
    }

    /// Refuses unless the image is open for writing.
    fn require_writable(&self) -> Result<()> {
        if self.retired.load(Ordering::Relaxed) {
            return Err(Error::invalid(
                &self.path,
                "this handle was retired: the file was opened again by a block job",
            ));
        }
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        }
    }

    /// Runs `f` on the metadata with no request in progress (every lock held).
    fn exclusive<T>(&self, f: impl FnOnce(&mut Meta) -> Result<T>) -> Result<T> {
        let _g = self.gate.write();
        let _a = self.alloc.lock();
        let mut m = self.meta.lock();
        m.release_ok = true;
        let r = f(&mut m);
        m.release_ok = false;
        r
    }

    /// Refuses unless guest writes are allowed (not a bitmaps-only open).
    fn require_guest_writes(&self) -> Result<()> {
        self.require_writable()?;
        if self.guest_writes {
            Ok(())
        } else {
            Err(Error::invalid(
                &self.path,
                "opened for bitmap changes only: guest writes are refused",
            ))
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        self.require_guest_writes()?;
        check_range(&self.path, self.size(), offset, len)
    }

    /// Changes the backing file name and format recorded in the header
    /// (no data is touched: this is `rebase -u`).
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        self.require_writable()?;
        let _g = self.gate.write();
        let _a = self.alloc.lock();
        let mut m = self.meta.lock();
        m.flush()?;
        let old = m.header.clone();
        m.header.backing_file = name.map(str::to_string);
        m.header.set_extension(
            header::EXT_BACKING_FORMAT,
            name.and(format).map(|f| f.as_bytes().to_vec()),
        );
        if let Err(e) = m.header.to_bytes(&self.path) {
            m.header = old;
            return Err(e);
        }
        m.write_header()?;
        m.st.flush()
    }

    /// Drops every cluster of the active state: afterwards the whole image
    /// reads from its backing file (what `commit` leaves in the top image).
    pub fn make_empty(&self) -> Result<()> {
        self.require_guest_writes()?;
        let geo = self.geo;
        self.exclusive(|m| {
            for i in 0..m.l1.len() as u64 {
                let l2 = m.l2_offset(i)?;
                if l2 == 0 {
                    continue;
                }
                let table = m.load_l2(l2)?.clone();
                for j in 0..geo.l2_entries as usize {
                    m.release_entry(table[j * geo.l2_words]);
                }
                m.l2.remove(l2);
                m.pending_free.push(l2);
                m.l1[i as usize] = 0;
                m.l1_dirty = true;
            }
            m.flush()
        })
    }

    /// Grows the virtual size (the L1 table moves when it must grow).
    /// Refused while the image has persistent bitmaps.
    pub fn grow(&self, new_size: u64) -> Result<()> {
        self.require_guest_writes()?;
        if !self.bitmaps()?.is_empty() {
            return Err(Error::invalid(
                &self.path,
                "the image has persistent bitmaps: remove them before resizing",
            ));
        }
        self.exclusive(|m| {
            let old_clusters = m.header.size.div_ceil(self.geo.cluster_size);
            if self.geo.data_file && m.data.len()? < new_size {
                m.data.set_len(new_size)?;
            }
            create::grow(m, new_size)?;
            if m.header.data_file_raw() {
                // The raw data file must stay mapped in full.
                create::preallocate_from(m, Preallocation::Metadata, old_clusters)?;
            }
            Ok(())
        })?;
        self.size.store(new_size, Ordering::SeqCst);
        Ok(())
    }
}

impl Image for Qcow2 {
    fn path(&self) -> &str {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // The size only changes under the exclusive gate: check it inside.
        let _g = self.gate.read();
        check_range(&self.path, self.size(), offset, buf.len() as u64)?;
        self.read_inner(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _g = self.gate.read();
        self.check_write(offset, buf.len() as u64)?;
        self.write_inner(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_write(offset, len)?;
        self.zero_range(offset, len, unmap, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.zero_range(offset, len, true, true)
    }

    fn flush(&self) -> Result<()> {
        if !self.writable || self.retired.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Exclusive, so the releases it applies cannot pull a cluster from
        // under a request still in flight.
        self.exclusive(|m| m.flush())
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        self.grow(new_size)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(&self.path, self.size(), offset, len)?;
        let _g = self.gate.read();
        self.block_status_inner(offset, len)
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }

    fn unwritten_metadata(&self) -> bool {
        if !self.writable {
            return false;
        }
        let m = self.meta.lock();
        // Lazy refcounts are rebuilt after a crash (the dirty bit): only
        // the mappings matter then.
        m.l1_dirty || m.l2.any_dirty() || (!m.lazy && (m.rb.any_dirty() || !m.rt_dirty.is_empty()))
    }

    fn host_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // Host offsets of data clusters point into the data file, if any.
        self.data.as_fd()
    }

    fn actual_size(&self) -> Result<u64> {
        self.st.allocated_bytes()
    }

    fn storage(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.st)
    }

    fn internal_snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn dirty_bitmaps(&self) -> Option<&dyn Bitmaps> {
        Some(self)
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn placement(&self) -> Option<&dyn Placement> {
        Some(self)
    }

    #[cfg(feature = "test-utils")]
    fn as_qcow2(&self) -> Option<&Qcow2> {
        Some(self)
    }

    fn snapshot_view(self: Arc<Self>, name: &str) -> Result<Arc<dyn Image>> {
        Ok(Arc::new(self.shared_snapshot_view(name)?))
    }

    fn close(&self) -> Result<()> {
        if !self.writable || self.retired.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.exclusive(|m| m.close())
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if self.writable && !*self.retired.get_mut() {
            if let Err(e) = self.meta.get_mut().close() {
                tracing::error!("{}: closing failed: {e}", self.path);
            }
        }
    }
}
