//! The mutable metadata of an open qcow2 image: header, active L1 table,
//! cached L2 tables and refcounts, and the ordered write-back that keeps the
//! file crash-safe (see `docs/design.md`, "Write ordering").
//!
//! Everything here runs under the image's metadata mutex; data I/O does not.

use std::collections::HashSet;
use std::sync::Arc;

use super::bitmap_track::Tracker;

use super::cache::TableCache;
use super::header::{Header, INCOMPAT_DIRTY};
use super::types::{decode_l2, Cluster, Geometry, COPIED, L1_RESERVED, OFFSET_MASK};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Metadata state of one open image.
#[derive(Debug)]
pub(crate) struct Meta {
    pub st: Arc<dyn Storage>,
    /// Where guest data lives: the external data file, or `st` itself.
    pub data: Arc<dyn Storage>,
    pub path: String,
    pub geo: Geometry,
    pub header: Header,
    /// Active L1 table (decoded entries).
    pub l1: Vec<u64>,
    /// L1 entries changed since the last write-back.
    pub l1_dirty: bool,
    /// Cached L2 tables, `l2_words` u64 per entry.
    pub l2: TableCache<Vec<u64>>,
    /// Refcount table (block offsets).
    pub rt: Vec<u64>,
    /// Refcount table entries changed since the last write-back.
    pub rt_dirty: Vec<usize>,
    /// Cached refcount blocks, raw big-endian bytes.
    pub rb: TableCache<Vec<u8>>,
    /// Where the next free-cluster search starts (cluster index).
    pub free_hint: u64,
    /// Refcount decrements (host cluster offsets) waiting until the
    /// references they drop are durable.
    pub pending_free: Vec<u64>,
    /// Lazy refcounts: refcount blocks are written only on close.
    pub lazy: bool,
    /// The dirty bit is set on disk.
    pub marked_dirty: bool,
    /// Byte offset where the next compressed cluster can be packed (0: none).
    pub compressed_tail: u64,
    /// A shadow transaction is open: no table may be written in place.
    pub in_tx: bool,
    /// The caller holds the I/O gate exclusively: no request can still be
    /// using a cluster, so queued releases may make clusters reusable.
    pub release_ok: bool,
    /// L2 cache budget in bytes (kept to rebuild the state after an abort).
    pub cache_bytes: u64,
    /// Guest writes are tracked in enabled bitmaps (a writable open that
    /// allows guest writes).
    pub track: bool,
    /// Change tracking in the enabled bitmaps (`None`: none is enabled).
    pub tracker: Option<Arc<Tracker>>,
    /// Host clusters allocated since the last metadata write-back: their
    /// mappings are not durable yet, so data written into them needs no
    /// bitmap sync first (kept only while tracking).
    pub fresh: HashSet<u64>,
}

/// Serialises u64 entries as big-endian bytes.
pub(crate) fn to_be_bytes(entries: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        out.extend_from_slice(&e.to_be_bytes());
    }
    out
}

/// Parses big-endian u64 entries.
pub(crate) fn from_be_bytes(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

impl Meta {
    /// Builds the state for a freshly opened image; reads L1 and refcount table.
    pub fn load(
        st: Arc<dyn Storage>,
        path: String,
        header: Header,
        cache_bytes: u64,
    ) -> Result<Self> {
        let geo = Geometry::new(&header);
        let mut l1_raw = vec![0u8; header.l1_size as usize * 8];
        st.read_at(&mut l1_raw, header.l1_table_offset)?;
        let l1 = from_be_bytes(&l1_raw);
        let rt_len = header.refcount_table_clusters as u64 * geo.cluster_size;
        let mut rt_raw = vec![0u8; rt_len as usize];
        st.read_at(&mut rt_raw, header.refcount_table_offset)?;
        let rt = from_be_bytes(&rt_raw);
        let l2_cap = (cache_bytes / geo.cluster_size).max(16) as usize;
        let rb_cap = (cache_bytes / 4 / geo.cluster_size).max(16) as usize;
        let lazy = header.compatible & super::header::COMPAT_LAZY_REFCOUNTS != 0;
        let marked_dirty = header.incompatible & INCOMPAT_DIRTY != 0;
        Ok(Meta {
            data: st.clone(),
            st,
            path,
            geo,
            header,
            l1,
            l1_dirty: false,
            l2: TableCache::new(l2_cap),
            rt,
            rt_dirty: Vec::new(),
            rb: TableCache::new(rb_cap),
            free_hint: 0,
            pending_free: Vec::new(),
            lazy,
            marked_dirty,
            compressed_tail: 0,
            in_tx: false,
            release_ok: false,
            cache_bytes,
            track: false,
            tracker: None,
            fresh: HashSet::new(),
        })
    }

    pub fn corrupt(&self, what: String) -> Error {
        Error::corrupt(&self.path, what)
    }

    /// Checks a host cluster offset read from a table.
    pub fn check_host(&self, host: u64, what: &str, at: u64) -> Result<()> {
        if host & (self.geo.cluster_size - 1) != 0 {
            return Err(self.corrupt(format!(
                "{what} at offset {at:#x} points to unaligned host offset {host:#x}"
            )));
        }
        Ok(())
    }

    /// Host offset of the L2 table for `l1_index`, or 0.
    pub fn l2_offset(&self, l1_index: u64) -> Result<u64> {
        let Some(&e) = self.l1.get(l1_index as usize) else {
            return Ok(0);
        };
        let off = e & OFFSET_MASK;
        if off != 0 {
            let at = self.header.l1_table_offset + l1_index * 8;
            self.check_host(off, "L1 entry", at)?;
            if e & L1_RESERVED != 0 {
                return Err(self.corrupt(format!(
                    "L1 entry at offset {at:#x} has reserved bits set ({e:#x})"
                )));
            }
        }
        Ok(off)
    }

    /// Host offset of the L2 table for `l1_index` in `l1` (the active table when `None`).
    pub fn l2_offset_in(&self, l1: Option<&[u64]>, l1_index: u64) -> Result<u64> {
        let Some(table) = l1 else {
            return self.l2_offset(l1_index);
        };
        let off = table.get(l1_index as usize).map_or(0, |e| e & OFFSET_MASK);
        if off != 0 {
            self.check_host(off, "snapshot L1 entry", l1_index * 8)?;
        }
        Ok(off)
    }

    /// Makes room in the L2 cache, writing metadata back when every table is dirty.
    fn make_room_l2(&mut self) -> Result<()> {
        if self.in_tx {
            // Nothing may be written in place during a transaction.
            self.l2.evict_clean();
            return Ok(());
        }
        if self.l2.full() && !self.l2.evict_clean() {
            self.flush()?;
            self.l2.evict_clean();
        }
        Ok(())
    }

    /// Loads the L2 table at `off` into the cache.
    pub fn load_l2(&mut self, off: u64) -> Result<&mut Vec<u64>> {
        if !self.l2.contains(off) {
            self.make_room_l2()?;
            let mut raw = vec![0u8; self.geo.cluster_size as usize];
            self.st.read_at(&mut raw, off)?;
            self.l2.insert(off, from_be_bytes(&raw), false);
        }
        Ok(&mut self.l2.get(off).expect("loaded").data)
    }

    /// The raw L2 entry (and subcluster bitmap) of the guest cluster holding `guest`.
    pub fn l2_entry(&mut self, guest: u64) -> Result<(u64, u64)> {
        let l1_index = (guest >> self.geo.cluster_bits) / self.geo.l2_entries;
        let off = self.l2_offset(l1_index)?;
        self.l2_entry_in(off, guest)
    }

    /// The L2 entry of `guest` in the L2 table at `off` (0: unallocated).
    pub fn l2_entry_in(&mut self, off: u64, guest: u64) -> Result<(u64, u64)> {
        let l2_index = ((guest >> self.geo.cluster_bits) % self.geo.l2_entries) as usize;
        if off == 0 {
            return Ok((0, 0));
        }
        let w = self.geo.l2_words;
        let table = self.load_l2(off)?;
        let entry = table[l2_index * w];
        let bitmap = if w == 2 { table[l2_index * w + 1] } else { 0 };
        Ok((entry, bitmap))
    }

    /// Makes the L2 table for `l1_index` private to the active state (allocating
    /// or copying it when needed) and returns its host offset.
    pub fn writable_l2(&mut self, l1_index: u64) -> Result<u64> {
        let Some(&entry) = self.l1.get(l1_index as usize) else {
            return Err(self.corrupt(format!(
                "guest offset needs L1 entry {l1_index}, the L1 table has {}",
                self.l1.len()
            )));
        };
        let old = self.l2_offset(l1_index)?;
        if old != 0 && entry & COPIED != 0 {
            return Ok(old);
        }
        let new = self.alloc_clusters(1)?;
        let table = if old == 0 {
            vec![0u64; (self.geo.l2_entries as usize) * self.geo.l2_words]
        } else {
            // Copy-on-write of a shared L2 table: the data clusters keep their
            // counts (they count L1 views, not L2 tables); the old table loses one.
            let t = self.load_l2(old)?.clone();
            self.pending_free.push(old);
            t
        };
        self.make_room_l2()?;
        self.l2.insert(new, table, true);
        self.l1[l1_index as usize] = new | COPIED;
        self.l1_dirty = true;
        Ok(new)
    }

    /// Sets the L2 entry of guest cluster `guest` (the table must be writable).
    pub fn set_l2_entry(&mut self, guest: u64, entry: u64, bitmap: u64) -> Result<()> {
        let cluster = guest >> self.geo.cluster_bits;
        let l1_index = cluster / self.geo.l2_entries;
        let l2_index = (cluster % self.geo.l2_entries) as usize;
        let off = self.writable_l2(l1_index)?;
        let w = self.geo.l2_words;
        self.load_l2(off)?;
        let slot = self.l2.get(off).expect("loaded");
        slot.data[l2_index * w] = entry;
        if w == 2 {
            slot.data[l2_index * w + 1] = bitmap;
        }
        slot.dirty = true;
        Ok(())
    }

    /// Makes guest data written so far durable (the data file first, when
    /// the image has one), then the qcow2 file.
    pub fn sync_data(&self) -> Result<()> {
        if !Arc::ptr_eq(&self.data, &self.st) {
            self.data.flush()?;
        }
        self.st.flush()
    }

    /// Queues the release of whatever host storage an old L2 entry referenced.
    /// Data clusters in an external data file are not refcounted: nothing to release.
    pub fn release_entry(&mut self, entry: u64) {
        if self.geo.data_file {
            return;
        }
        match decode_l2(entry, &self.geo) {
            Cluster::Data { host, .. } => self.pending_free.push(host),
            Cluster::Zero { host } if host != 0 => self.pending_free.push(host),
            Cluster::Compressed { entry } => {
                let (off, len) = self.geo.compressed_span(entry);
                let first = off & !(self.geo.cluster_size - 1);
                let last = off + len - 1;
                let mut c = first;
                while c <= last {
                    self.pending_free.push(c);
                    c += self.geo.cluster_size;
                }
            }
            _ => {}
        }
    }

    /// Writes the header's first cluster bytes (header, extensions, backing name).
    pub fn write_header(&mut self) -> Result<()> {
        let bytes = self.header.to_bytes(&self.path)?;
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let len = (used.div_ceil(512) * 512).max(512).min(bytes.len());
        self.st.write_at(&bytes[..len], 0)
    }

    /// Writes every dirty table back in crash-safe order and makes it durable:
    /// data, then refcount blocks, then the refcount table, then L2 tables,
    /// then the L1 table, then deferred refcount decrements.
    pub fn flush(&mut self) -> Result<()> {
        if self.in_tx {
            // A shadow transaction owns every dirty table until it commits
            // or aborts: nothing may be written in place meanwhile.
            return self.sync_data();
        }
        let refcounts_due = !self.lazy && (self.rb.any_dirty() || !self.rt_dirty.is_empty());
        let tables_due = self.l2.any_dirty() || self.l1_dirty;
        // Guest data goes to the file without passing through here, so the
        // first sync is unconditional: it is what makes data writes durable.
        // Marked bitmap bits ride on it, before any L2 entry that could make
        // changed data reachable (design.md §5b).
        match self.tracker.clone() {
            Some(t) => {
                if self.release_ok {
                    t.trim();
                }
                t.persist_with(self.st.as_ref(), || self.sync_data())?;
            }
            None => self.sync_data()?,
        }
        if self.lazy && tables_due && !self.marked_dirty && self.rb.any_dirty() {
            self.header.incompatible |= INCOMPAT_DIRTY;
            self.write_header()?;
            self.st.flush()?;
            self.marked_dirty = true;
        }
        if refcounts_due {
            self.write_refcounts()?;
        }
        if self.l2.any_dirty() {
            // A table is clean only once it is durable: after a failed write
            // or sync it stays dirty and the next flush writes it again.
            let dirty = self.l2.dirty_offsets();
            for &off in &dirty {
                let bytes = to_be_bytes(&self.l2.get(off).expect("dirty slot").data);
                self.st.write_at(&bytes, off)?;
            }
            self.st.flush()?;
            for off in dirty {
                self.l2.get(off).expect("dirty slot").dirty = false;
            }
        }
        if self.l1_dirty {
            let bytes = to_be_bytes(&self.l1);
            self.st.write_at(&bytes, self.header.l1_table_offset)?;
            self.st.flush()?;
            self.l1_dirty = false;
        }
        // Every installed mapping is durable now.
        self.fresh.clear();
        if !self.pending_free.is_empty() && self.release_ok {
            let pending = std::mem::take(&mut self.pending_free);
            for host in pending {
                self.decrement(host)?;
            }
            if !self.lazy {
                self.write_refcounts()?;
            }
        }
        Ok(())
    }

    /// Writes dirty refcount blocks (then syncs), then dirty refcount-table
    /// entries (then syncs): a block is durable before anything points at it.
    pub fn write_refcounts(&mut self) -> Result<()> {
        if self.rb.any_dirty() {
            // Clean only once durable (see the L2 tables in `flush`).
            let dirty = self.rb.dirty_offsets();
            for &off in &dirty {
                let bytes = self.rb.get(off).expect("dirty slot").data.clone();
                self.st.write_at(&bytes, off)?;
            }
            self.st.flush()?;
            for off in dirty {
                self.rb.get(off).expect("dirty slot").dirty = false;
            }
        }
        if !self.rt_dirty.is_empty() {
            let mut idx = self.rt_dirty.clone();
            idx.sort_unstable();
            idx.dedup();
            for i in idx {
                let at = self.header.refcount_table_offset + i as u64 * 8;
                self.st.write_at(&self.rt[i].to_be_bytes(), at)?;
            }
            self.st.flush()?;
            self.rt_dirty.clear();
        }
        Ok(())
    }

    /// Flushes, then writes lazy refcounts and clears the dirty bit (clean close).
    pub fn close(&mut self) -> Result<()> {
        if self.in_tx {
            return Ok(());
        }
        self.release_ok = true;
        self.flush()?;
        if self.lazy && (self.rb.any_dirty() || !self.rt_dirty.is_empty() || self.marked_dirty) {
            self.lazy = false;
            self.write_refcounts()?;
            self.lazy = true;
            if self.marked_dirty {
                self.header.incompatible &= !INCOMPAT_DIRTY;
                self.write_header()?;
                self.st.flush()?;
                self.marked_dirty = false;
            }
        }
        Ok(())
    }
}
