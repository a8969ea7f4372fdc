//! Shadow commits: metadata changes that become visible all at once.
//!
//! Snapshot create, apply and delete change refcounts and COPIED flags of
//! many tables together. Written in place, a crash in the middle would leave
//! a COPIED flag that disagrees with its refcount, which `qemu-img check`
//! reports as corruption. So during such a transaction nothing is written in
//! place: changed L2 tables are new copies in fresh clusters, the new active
//! L1 table, the new snapshot table, every changed refcount block and the
//! refcount table are written to fresh clusters too, and one write of the
//! header's first sector switches the L1 table, the refcount table and the
//! snapshot table together. A crash before that write leaves the old image
//! untouched (the fresh clusters were free in it); after it, the new one.
//! Clusters the new state no longer uses are released afterwards, in place:
//! a crash then costs leaks, never corruption.

use std::collections::HashMap;

use super::bitmaps::{self, BitmapInfo};
use super::header::{Header, AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use super::meta::{to_be_bytes, Meta};
use super::snapshot_table::{read_table, write_table, SnapshotEntry};
use super::types::OFFSET_MASK;
use crate::error::Result;

/// What a shadow commit switches in the header.
#[derive(Debug, Default)]
pub(crate) struct Switch {
    /// The new active L1 table.
    pub l1: Option<Vec<u64>>,
    /// The new snapshot table.
    pub snapshots: Option<Vec<SnapshotEntry>>,
    /// The new virtual size.
    pub size: Option<u64>,
    /// The old active L1 table lives on (it became a snapshot's).
    pub keep_old_l1: bool,
    /// The new set of persistent bitmaps, with their data.
    pub bitmaps: Option<Vec<(BitmapInfo, Vec<u8>)>>,
}

/// State saved when a transaction begins.
#[derive(Debug)]
pub(crate) struct Tx {
    /// Refcount-block offsets the durable image uses (these are never
    /// written in place during the transaction).
    durable_blocks: std::collections::HashSet<u64>,
    /// Clusters to release once the new state is durable.
    pub frees_after: Vec<u64>,
    /// File length when the transaction began (restored on abort).
    pub file_len: u64,
}

impl Meta {
    /// Starts a transaction: makes everything durable, makes sure the
    /// refcount table has room for what the transaction may allocate
    /// (`clusters`), and stops cache write-back until the commit.
    pub fn tx_begin(&mut self, clusters: u64) -> Result<Tx> {
        self.flush()?;
        let end = self.end_of_allocations()?;
        let need = (end + clusters + self.rt.len() as u64 + 64) / self.geo.rb_entries;
        if need >= self.rt.len() as u64 {
            self.grow_table(need)?;
            self.flush()?;
        }
        let lazy = std::mem::replace(&mut self.lazy, false);
        if lazy || self.rb.any_dirty() {
            self.write_refcounts()?;
        }
        self.lazy = lazy;
        self.in_tx = true;
        let durable_blocks = self
            .rt
            .iter()
            .map(|e| e & OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        Ok(Tx {
            durable_blocks,
            frees_after: Vec::new(),
            file_len: self.st.len()?,
        })
    }

    /// Drops one reference inside a transaction: applied now unless it would
    /// free the cluster, which waits until after the commit (a cluster the
    /// durable image still uses must not be handed out meanwhile).
    pub fn tx_decrement(&mut self, tx: &mut Tx, host: u64) -> Result<()> {
        let c = host >> self.geo.cluster_bits;
        if self.refcount(c)? > 1 {
            self.decrement(host)
        } else {
            tx.frees_after.push(host);
            Ok(())
        }
    }

    /// Abandons a transaction (not switched, or switched back): forgets
    /// every in-memory change by reloading the durable state, and gives back
    /// the file space the transaction appended (nothing durable uses it).
    pub fn tx_abort(&mut self, tx: &Tx) -> Result<()> {
        self.in_tx = false;
        self.l2.clear();
        self.rb.clear();
        let header = super::read_header(self.st.as_ref())?;
        let mut fresh = Meta::load(self.st.clone(), self.path.clone(), header, self.cache_bytes)?;
        fresh.data = self.data.clone();
        // The bitmaps the old state tracks are still the durable ones.
        fresh.tracker = self.tracker.take();
        fresh.track = self.track;
        *self = fresh;
        // Give back the appended space, unless the header on disk points
        // into it (a switch whose outcome is unknown): then keep it all.
        let h = &self.header;
        let cs = self.geo.cluster_size;
        let tables = [
            h.l1_table_offset,
            h.refcount_table_offset,
            h.snapshots_offset,
        ];
        let safe = tables.iter().all(|&t| t + cs <= tx.file_len || t == 0);
        if safe && self.st.len()? > tx.file_len {
            self.st.set_len(tx.file_len)?;
            self.st.flush()?;
        }
        Ok(())
    }

    /// Writes the transaction's state to fresh clusters and syncs; nothing
    /// the durable image uses is touched. Returns what the switch needs.
    pub fn tx_prepare(&mut self, tx: &mut Tx, switch: Switch) -> Result<Prepared> {
        let cs = self.geo.cluster_size;
        let clusters_for = |bytes: u64| bytes.div_ceil(cs).max(1);
        // Fresh clusters for the new L1 table and snapshot table.
        let l1_at = match &switch.l1 {
            Some(l1) => Some(self.alloc_clusters(clusters_for(l1.len() as u64 * 8))?),
            None => None,
        };
        let table = switch
            .snapshots
            .as_ref()
            .map(|s| write_table(s, self.header.version, &self.path))
            .transpose()?;
        let table_at = match &table {
            Some(t) if !t.is_empty() => Some(self.alloc_clusters(clusters_for(t.len() as u64))?),
            _ => None,
        };
        // Fresh clusters for the new bitmaps (tables, data, directory).
        let mut bitmap_writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let bitmap_ext = match &switch.bitmaps {
            Some(set) => Some(self.prepare_bitmaps(tx, set, &mut bitmap_writes)?),
            None => None,
        };
        // Fresh clusters for the refcount table and every changed durable block.
        let rt_clusters = self.header.refcount_table_clusters as u64;
        let rt_at = self.alloc_clusters(rt_clusters)?;
        let mut moved: HashMap<u64, u64> = HashMap::new();
        loop {
            let pending: Vec<u64> = self
                .rb
                .dirty_offsets()
                .into_iter()
                .filter(|o| tx.durable_blocks.contains(o) && !moved.contains_key(o))
                .collect();
            if pending.is_empty() {
                break;
            }
            for old in pending {
                let new = self.alloc_clusters(1)?;
                moved.insert(old, new);
            }
        }
        // Write everything new, then sync.
        for off in self.rb.dirty_offsets() {
            let bytes = self.rb.get(off).expect("dirty block").data.clone();
            self.st
                .write_at(&bytes, moved.get(&off).copied().unwrap_or(off))?;
        }
        let new_rt: Vec<u64> = self
            .rt
            .iter()
            .map(|&e| moved.get(&(e & OFFSET_MASK)).copied().unwrap_or(e))
            .collect();
        let mut rt_bytes = to_be_bytes(&new_rt);
        rt_bytes.resize((rt_clusters * cs) as usize, 0);
        self.st.write_at(&rt_bytes, rt_at)?;
        for off in self.l2.dirty_offsets() {
            let bytes = to_be_bytes(&self.l2.get(off).expect("dirty table").data);
            self.st.write_at(&bytes, off)?;
        }
        if let (Some(l1), Some(at)) = (&switch.l1, l1_at) {
            let mut bytes = to_be_bytes(l1);
            bytes.resize((clusters_for(l1.len() as u64 * 8) * cs) as usize, 0);
            self.st.write_at(&bytes, at)?;
        }
        if let (Some(t), Some(at)) = (&table, table_at) {
            self.st.write_at(t, at)?;
        }
        for (at, bytes) in &bitmap_writes {
            self.st.write_at(bytes, *at)?;
        }
        self.st.flush()?;
        // The header that switches to all of it, and what the old state used.
        let old = self.header.clone();
        let mut new = old.clone();
        new.refcount_table_offset = rt_at;
        if let (Some(l1), Some(at)) = (&switch.l1, l1_at) {
            new.l1_table_offset = at;
            new.l1_size = l1.len() as u32;
            if !switch.keep_old_l1 {
                let n = (old.l1_size as u64 * 8).div_ceil(cs);
                tx.frees_after
                    .extend((0..n).map(|k| old.l1_table_offset + k * cs));
            }
        }
        if let Some(sn) = &switch.snapshots {
            new.nb_snapshots = sn.len() as u32;
            new.snapshots_offset = table_at.unwrap_or(0);
            if old.nb_snapshots > 0 {
                let (_, bytes) =
                    read_table(self.st.as_ref(), old.snapshots_offset, old.nb_snapshots)?;
                tx.frees_after
                    .extend((0..bytes.div_ceil(cs)).map(|k| old.snapshots_offset + k * cs));
            }
        }
        if let Some(size) = switch.size {
            new.size = size;
        }
        if let Some(ext) = bitmap_ext {
            let present = ext.is_some();
            new.set_extension(EXT_BITMAPS, ext);
            if present {
                new.autoclear |= AUTOCLEAR_BITMAPS;
            } else {
                new.autoclear &= !AUTOCLEAR_BITMAPS;
            }
        }
        tx.frees_after.extend(moved.keys().copied());
        tx.frees_after
            .extend((0..rt_clusters).map(|k| old.refcount_table_offset + k * cs));
        Ok(Prepared {
            old,
            new,
            new_rt,
            moved,
            l1: switch.l1,
        })
    }

    /// Allocates and fills fresh clusters for a new set of bitmaps (data
    /// clusters only where bits are set, tables, directory); queues the old
    /// structures for release. Returns the new extension payload (`None`: no
    /// bitmaps left).
    fn prepare_bitmaps(
        &mut self,
        tx: &mut Tx,
        set: &[(BitmapInfo, Vec<u8>)],
        writes: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<Option<Vec<u8>>> {
        let cs = self.geo.cluster_size;
        for old in self.bitmap_directory()? {
            let mut raw = vec![0u8; old.table_size as usize * 8];
            self.st.read_at(&mut raw, old.table_offset)?;
            for e in super::meta::from_be_bytes(&raw) {
                if e & OFFSET_MASK != 0 {
                    tx.frees_after.push(e & OFFSET_MASK);
                }
            }
            let n = (old.table_size as u64 * 8).div_ceil(cs);
            tx.frees_after
                .extend((0..n).map(|k| old.table_offset + k * cs));
        }
        if let Some(ext) = self.header.extension(EXT_BITMAPS) {
            if self.header.autoclear & AUTOCLEAR_BITMAPS != 0 && ext.len() >= 24 {
                let size = u64::from_be_bytes(ext[8..16].try_into().expect("8 bytes"));
                let at = u64::from_be_bytes(ext[16..24].try_into().expect("8 bytes"));
                tx.frees_after
                    .extend((0..size.div_ceil(cs)).map(|k| at + k * cs));
            }
        }
        if set.is_empty() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(set.len());
        for (info, bits) in set {
            let mut table = Vec::new();
            for chunk in bits.chunks(cs as usize) {
                // An enabled bitmap gets every data cluster, so that tracking
                // sets bits in place (design.md §5b).
                if !info.enabled() && chunk.iter().all(|&b| b == 0) {
                    table.push(0u64);
                    continue;
                }
                let at = self.alloc_clusters(1)?;
                let mut data = chunk.to_vec();
                data.resize(cs as usize, 0);
                writes.push((at, data));
                table.push(at);
            }
            let want = self.header.size.div_ceil(info.granularity).div_ceil(cs * 8);
            table.resize(want as usize, 0);
            let table_bytes = super::meta::to_be_bytes(&table);
            let table_at = self.alloc_clusters((table_bytes.len() as u64).div_ceil(cs).max(1))?;
            writes.push((table_at, table_bytes));
            entries.push(BitmapInfo {
                table_offset: table_at,
                table_size: table.len() as u32,
                ..info.clone()
            });
        }
        let dir = bitmaps::write_directory(&entries);
        let dir_at = self.alloc_clusters((dir.len() as u64).div_ceil(cs))?;
        let ext = bitmaps::extension(entries.len(), dir.len() as u64, dir_at);
        writes.push((dir_at, dir));
        Ok(Some(ext))
    }

    /// The switch: one header write (and a sync). Before it returns Ok the
    /// old state is durable; after, the new one.
    pub fn tx_switch(&mut self, p: &Prepared) -> Result<()> {
        self.header = p.new.clone();
        if let Err(e) = self.write_header() {
            self.header = p.old.clone();
            return Err(e);
        }
        if let Err(e) = self.st.flush() {
            // The new header may or may not be durable: put the old one back
            // (its structures are all intact) before reporting the failure.
            self.header = p.old.clone();
            let _ = self.write_header().and_then(|()| self.st.flush());
            return Err(e);
        }
        Ok(())
    }

    /// Switches back to the old state after [`Meta::tx_switch`] (the old
    /// structures are intact until [`Meta::tx_finish`] releases them).
    pub fn tx_unswitch(&mut self, p: &Prepared) -> Result<()> {
        self.header = p.old.clone();
        self.write_header()?;
        self.st.flush()
    }

    /// After the switch: brings memory in line with the new state, then
    /// releases what only the old state used (in place: a crash leaks).
    pub fn tx_finish(&mut self, mut tx: Tx, p: Prepared) -> Result<()> {
        self.in_tx = false;
        self.rt = p.new_rt;
        self.rt_dirty.clear();
        for off in self.rb.dirty_offsets() {
            let data = self.rb.remove(off).expect("dirty block");
            self.rb
                .insert(p.moved.get(&off).copied().unwrap_or(off), data, false);
        }
        for off in self.l2.dirty_offsets() {
            self.l2.get(off).expect("dirty table").dirty = false;
        }
        if let Some(l1) = p.l1 {
            self.l1 = l1;
            self.l1_dirty = false;
        }
        self.pending_free.append(&mut tx.frees_after);
        self.flush()
    }
}

/// A prepared transaction: everything written, the header not yet switched.
#[derive(Debug)]
pub(crate) struct Prepared {
    old: Header,
    new: Header,
    new_rt: Vec<u64>,
    moved: HashMap<u64, u64>,
    l1: Option<Vec<u64>>,
}
