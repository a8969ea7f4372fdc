//! Internal snapshots (`qcow2.txt` "Snapshots"): create, list, apply, delete,
//! and reading a snapshot without applying it. Each change is one shadow
//! commit (`shadow.rs`): the image is either fully before or fully after it.
//!
//! Refcounts count views: a data cluster reachable from the active L1 table
//! and from two snapshots has refcount 3; an L2 table counts the L1 tables
//! that point at it. strata never shares an L2 table between the active state
//! and a snapshot: the active state always gets its own copies (the same
//! amount of writing as clearing COPIED flags in place, as QEMU does, but
//! switched atomically), so only data clusters are shared.

use std::time::{SystemTime, UNIX_EPOCH};

use super::header::MAX_L1_BYTES;
use super::meta::{from_be_bytes, Meta};
use super::shadow::{Prepared, Switch, Tx};
use super::snapshot_table::{read_table, SnapshotEntry};
use super::types::{decode_l2, Cluster, COPIED, OFFSET_MASK};
use super::Qcow2;
use crate::error::{Error, Result};

/// Public description of one internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time: seconds since the Epoch.
    pub date_sec: u32,
    /// Creation time: nanoseconds.
    pub date_nsec: u32,
    /// Guest run time in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Saved VM state size in bytes.
    pub vm_state_size: u64,
    /// Virtual disk size at snapshot time.
    pub disk_size: Option<u64>,
    /// Record/replay instruction count (-1: disabled), when recorded.
    pub icount: Option<i64>,
}

impl From<&SnapshotEntry> for SnapshotInfo {
    fn from(e: &SnapshotEntry) -> Self {
        SnapshotInfo {
            id: e.id.clone(),
            name: e.name.clone(),
            date_sec: e.date_sec,
            date_nsec: e.date_nsec,
            vm_clock_nsec: e.vm_clock_nsec,
            vm_state_size: e.vm_state_size,
            disk_size: e.disk_size,
            icount: e.icount,
        }
    }
}

/// Longest snapshot name or ID (the table stores 16-bit lengths).
const MAX_NAME: usize = 65535;

impl Meta {
    /// The snapshot table as stored.
    pub fn snapshot_entries(&self) -> Result<Vec<SnapshotEntry>> {
        if self.header.nb_snapshots == 0 {
            return Ok(Vec::new());
        }
        Ok(read_table(
            self.st.as_ref(),
            self.header.snapshots_offset,
            self.header.nb_snapshots,
        )?
        .0)
    }

    /// Reads a snapshot's L1 table.
    pub fn snapshot_l1(&self, e: &SnapshotEntry) -> Result<Vec<u64>> {
        let file_len = self.st.len()?;
        let bytes = e.l1_size as u64 * 8;
        if !e.l1_table_offset.is_multiple_of(self.geo.cluster_size)
            || bytes > MAX_L1_BYTES
            || e.l1_table_offset
                .checked_add(bytes)
                .is_none_or(|end| end > file_len)
        {
            return Err(self.corrupt(format!(
                "snapshot '{}' has an invalid L1 table at offset {:#x} ({} entries)",
                e.name, e.l1_table_offset, e.l1_size
            )));
        }
        let mut raw = vec![0u8; bytes as usize];
        self.st.read_at(&mut raw, e.l1_table_offset)?;
        Ok(from_be_bytes(&raw))
    }

    /// Adds `delta` (+1 or -1) to every data cluster an L2 table maps.
    pub(crate) fn adjust_data(&mut self, tx: &mut Tx, table: &[u64], delta: i8) -> Result<()> {
        let geo = self.geo;
        for j in 0..geo.l2_entries as usize {
            let mut clusters = Vec::new();
            match decode_l2(table[j * geo.l2_words], &geo) {
                Cluster::Data { host, .. } | Cluster::Zero { host } if host != 0 => {
                    clusters.push(host)
                }
                Cluster::Compressed { entry } => {
                    let (off, len) = geo.compressed_span(entry);
                    let mut c = off & !(geo.cluster_size - 1);
                    while c < off + len {
                        clusters.push(c);
                        c += geo.cluster_size;
                    }
                }
                _ => {}
            }
            for host in clusters {
                if delta > 0 {
                    self.increment(host >> geo.cluster_bits)?;
                } else {
                    self.tx_decrement(tx, host)?;
                }
            }
        }
        Ok(())
    }

    /// Gives a view (an L1 table) its own copies of its L2 tables, with
    /// COPIED set exactly where the data cluster's refcount is one; returns
    /// the new active L1 table. Data refcounts must already be final.
    fn private_copies(&mut self, l1: &[u64]) -> Result<Vec<u64>> {
        let geo = self.geo;
        let mut out = vec![0u64; l1.len()];
        for (i, &e) in l1.iter().enumerate() {
            let t = e & OFFSET_MASK;
            if t == 0 {
                continue;
            }
            let mut table = self.load_l2(t)?.clone();
            for j in 0..geo.l2_entries as usize {
                let w = j * geo.l2_words;
                let host = match decode_l2(table[w], &geo) {
                    Cluster::Data { host, .. } => host,
                    Cluster::Zero { host } if host != 0 => host,
                    _ => continue,
                };
                let one = self.refcount(host >> geo.cluster_bits)? == 1;
                table[w] = if one {
                    table[w] | COPIED
                } else {
                    table[w] & !COPIED
                };
            }
            let at = self.alloc_clusters(1)?;
            self.l2.insert(at, table, true);
            out[i] = at | COPIED;
        }
        Ok(out)
    }

    /// Runs `body` as one shadow transaction: begin, body, prepare, switch,
    /// finish; on any error before the switch the in-memory state is
    /// reloaded from the untouched durable image.
    pub(crate) fn transaction<T>(
        &mut self,
        budget: u64,
        body: impl FnOnce(&mut Meta, &mut Tx) -> Result<(Switch, T)>,
    ) -> Result<T> {
        let mut tx = self.tx_begin(budget)?;
        match self.tx_run(&mut tx, body) {
            Ok((p, value)) => {
                self.tx_finish(tx, p)?;
                Ok(value)
            }
            Err(e) => {
                // Keep the first error; a failing reload leaves `in_tx` set,
                // so nothing is written in place afterwards.
                let _ = self.tx_abort(&tx);
                Err(e)
            }
        }
    }

    /// Body, prepare and switch of a transaction.
    pub(crate) fn tx_run<T>(
        &mut self,
        tx: &mut Tx,
        body: impl FnOnce(&mut Meta, &mut Tx) -> Result<(Switch, T)>,
    ) -> Result<(Prepared, T)> {
        let (switch, value) = body(self, tx)?;
        let p = self.tx_prepare(tx, switch)?;
        self.tx_switch(&p)?;
        Ok((p, value))
    }

    /// The body of snapshot create (see [`Qcow2::snapshot_create`]).
    pub(crate) fn create_change(
        &mut self,
        tx: &mut Tx,
        path: &str,
        name: Option<&str>,
        vm_clock_nsec: u64,
    ) -> Result<(Switch, SnapshotInfo)> {
        if let Some(name) = self.header.data_file_name() {
            // As QEMU: "Operation not supported" on any image with a data file.
            return Err(Error::unsupported(
                path,
                format!("internal snapshots of an image with an external data file ({name})"),
            ));
        }
        let mut entries = self.snapshot_entries()?;
        let (sec, nsec) = now();
        let name = match name {
            Some(n) => n.to_string(),
            None => time_name(&entries, sec),
        };
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Error::invalid(
                path,
                format!("invalid snapshot name '{name}'"),
            ));
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(Error::invalid(
                path,
                format!("a snapshot named '{name}' already exists"),
            ));
        }
        if entries.len() >= 65536 {
            return Err(Error::invalid(path, "too many snapshots (65536)"));
        }
        let id = entries
            .iter()
            .filter_map(|e| e.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let l1 = self.l1.clone();
        for &e in &l1 {
            let t = e & OFFSET_MASK;
            if t != 0 {
                let table = self.load_l2(t)?.clone();
                self.adjust_data(tx, &table, 1)?;
            }
        }
        // The old active L1 (and its L2 tables) become the snapshot's.
        let new_l1 = self.private_copies(&l1)?;
        let entry = SnapshotEntry {
            l1_table_offset: self.header.l1_table_offset,
            l1_size: self.header.l1_size,
            id: id.to_string(),
            name,
            date_sec: sec,
            date_nsec: nsec,
            vm_clock_nsec,
            vm_state_size: 0,
            disk_size: Some(self.header.size),
            icount: Some(-1),
            extra_unknown: Vec::new(),
        };
        let info = SnapshotInfo::from(&entry);
        entries.push(entry);
        let switch = Switch {
            l1: Some(new_l1),
            snapshots: Some(entries),
            keep_old_l1: true,
            ..Default::default()
        };
        Ok((switch, info))
    }

    /// The body of snapshot delete (see [`Qcow2::snapshot_delete`]).
    pub(crate) fn delete_change(
        &mut self,
        tx: &mut Tx,
        path: &str,
        name: &str,
    ) -> Result<(Switch, SnapshotInfo)> {
        let mut entries = self.snapshot_entries()?;
        let (index, entry) = find(path, &entries, name)?;
        let entry = entry.clone();
        let sn_l1 = self.snapshot_l1(&entry)?;
        for &e in &sn_l1 {
            let t = e & OFFSET_MASK;
            if t != 0 {
                let table = self.load_l2(t)?.clone();
                self.adjust_data(tx, &table, -1)?;
                self.tx_decrement(tx, t)?;
            }
        }
        let cs = self.geo.cluster_size;
        let n = (entry.l1_size as u64 * 8).div_ceil(cs);
        tx.frees_after
            .extend((0..n).map(|k| entry.l1_table_offset + k * cs));
        // Tables the active state owns get copies with exact COPIED flags.
        let l1 = self.l1.clone();
        for &e in &l1 {
            let t = e & OFFSET_MASK;
            if t != 0 {
                self.tx_decrement(tx, t)?;
            }
        }
        let new_l1 = self.private_copies(&l1)?;
        entries.remove(index);
        let switch = Switch {
            l1: Some(new_l1),
            snapshots: Some(entries),
            ..Default::default()
        };
        Ok((switch, SnapshotInfo::from(&entry)))
    }

    /// The body of snapshot apply (see [`Qcow2::snapshot_apply`]).
    pub(crate) fn apply_change(
        &mut self,
        tx: &mut Tx,
        path: &str,
        name: &str,
    ) -> Result<(Switch, SnapshotInfo)> {
        let entries = self.snapshot_entries()?;
        let (_, entry) = find(path, &entries, name)?;
        let entry = entry.clone();
        let size = entry.disk_size.unwrap_or(self.header.size);
        let mut sn_l1 = self.snapshot_l1(&entry)?;
        // The guest disk only: a VM state past it stays the snapshot's.
        sn_l1.truncate(self.geo.l1_entries_for(size) as usize);
        let old = self.l1.clone();
        // Every enabled bitmap marks the clusters the switch changes, in
        // the same commit (a crash cannot keep one without the other).
        let mut bitmaps = None;
        let mut set = self.bitmap_set()?;
        if set.iter().any(|(b, _)| b.enabled() && b.usable()) {
            if entry.disk_size.is_some_and(|s| s != self.header.size) {
                return Err(Error::invalid(
                    path,
                    format!(
                        "snapshot '{}' has another disk size and the image has bitmaps: remove them first",
                        entry.name
                    ),
                ));
            }
            let changed = self.changed_between(&old, &sn_l1)?;
            for (b, bits) in set.iter_mut().filter(|(b, _)| b.enabled() && b.usable()) {
                super::bitmaps::set_extents(bits, b.granularity, &changed);
            }
            bitmaps = Some(set);
        }
        // Drop the old active view.
        for &e in &old {
            let t = e & OFFSET_MASK;
            if t != 0 {
                let table = self.load_l2(t)?.clone();
                self.adjust_data(tx, &table, -1)?;
                self.tx_decrement(tx, t)?;
            }
        }
        // Take the snapshot's view, with private L2 copies.
        for &e in &sn_l1 {
            let t = e & OFFSET_MASK;
            if t != 0 {
                self.check_host(t, "snapshot L1 entry", entry.l1_table_offset)?;
                let table = self.load_l2(t)?.clone();
                self.adjust_data(tx, &table, 1)?;
            }
        }
        if (sn_l1.len() as u64) < self.geo.l1_entries_for(size) {
            return Err(Error::corrupt(
                path,
                format!(
                    "snapshot '{}' has {} L1 entries, too few for its disk size {size}",
                    entry.name,
                    sn_l1.len()
                ),
            ));
        }
        let new_l1 = self.private_copies(&sn_l1)?;
        let switch = Switch {
            l1: Some(new_l1),
            size: Some(size),
            bitmaps,
            ..Default::default()
        };
        Ok((switch, SnapshotInfo::from(&entry)))
    }

    /// Guest ranges (whole clusters) whose mapping differs between the
    /// views of two L1 tables: where their contents may differ.
    fn changed_between(&mut self, a: &[u64], b: &[u64]) -> Result<Vec<(u64, u64)>> {
        let geo = self.geo;
        let words = geo.l2_entries as usize * geo.l2_words;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..a.len().max(b.len()) {
            let ta = a.get(i).map_or(0, |e| e & OFFSET_MASK);
            let tb = b.get(i).map_or(0, |e| e & OFFSET_MASK);
            if ta == tb {
                continue;
            }
            let mut load = |t: u64| -> Result<Vec<u64>> {
                Ok(if t == 0 {
                    vec![0; words]
                } else {
                    self.load_l2(t)?.clone()
                })
            };
            let (ea, eb) = (load(ta)?, load(tb)?);
            for j in 0..geo.l2_entries as usize {
                let k = j * geo.l2_words;
                let same = ea[k] & !COPIED == eb[k] & !COPIED
                    && ea[k + 1..k + geo.l2_words] == eb[k + 1..k + geo.l2_words];
                if same {
                    continue;
                }
                let start = i as u64 * geo.l2_span() + j as u64 * geo.cluster_size;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == start => last.1 += geo.cluster_size,
                    _ => out.push((start, geo.cluster_size)),
                }
            }
        }
        Ok(out)
    }

    /// Clusters a transaction may allocate: every L2 table of two views,
    /// their L1 tables, the snapshot table, and the refcount blocks.
    pub(crate) fn tx_budget(&self, extra_l1: usize) -> u64 {
        let cs = self.geo.cluster_size;
        let l2 = self.l1.iter().filter(|e| *e & OFFSET_MASK != 0).count() as u64;
        2 * l2
            + 2 * (self.l1.len().max(extra_l1) as u64 * 8).div_ceil(cs)
            + self.rt.len() as u64
            + 16
    }
}

fn now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as u32, d.subsec_nanos())
}

/// A name made from the local time, `YYYYMMDDhhmmss` (made unique with a suffix).
fn time_name(taken: &[SnapshotEntry], secs: u32) -> String {
    let base = format_local(secs);
    if !taken.iter().any(|e| e.name == base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !taken.iter().any(|e| &e.name == c))
        .expect("a free name")
}

/// `YYYYMMDDhhmmss` in the local time zone.
fn format_local(secs: u32) -> String {
    match crate::localtime::local_time(secs.into()) {
        Some(t) => format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        ),
        None => secs.to_string(),
    }
}

/// The entry with ID `name` or, failing that, called `name`, and its index
/// (QEMU looks IDs up first too).
pub(crate) fn find<'a>(
    path: &str,
    entries: &'a [SnapshotEntry],
    name: &str,
) -> Result<(usize, &'a SnapshotEntry)> {
    entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.id == name)
        .or_else(|| entries.iter().enumerate().find(|(_, e)| e.name == name))
        .ok_or_else(|| Error::invalid(path, format!("snapshot '{name}' not found")))
}

impl Qcow2 {
    /// The internal snapshots, in table order.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let m = self.meta.lock();
        Ok(m.snapshot_entries()?
            .iter()
            .map(SnapshotInfo::from)
            .collect())
    }

    /// Creates an internal snapshot of the current state; `None` names it
    /// after the time. Returns what was recorded.
    pub fn snapshot_create(&self, name: Option<&str>, vm_clock_nsec: u64) -> Result<SnapshotInfo> {
        self.require_writable()?;
        self.exclusive(|m| {
            let budget = m.tx_budget(0);
            m.transaction(budget, |m, tx| {
                m.create_change(tx, &self.path, name, vm_clock_nsec)
            })
        })
    }

    /// Deletes an internal snapshot (by name, or by ID).
    pub fn snapshot_delete(&self, name: &str) -> Result<SnapshotInfo> {
        self.require_writable()?;
        self.exclusive(|m| {
            let budget = m.tx_budget(0);
            m.transaction(budget, |m, tx| m.delete_change(tx, &self.path, name))
        })
    }

    /// Reverts the active state to an internal snapshot (by name or ID);
    /// what only the old active state referenced is released.
    pub fn snapshot_apply(&self, name: &str) -> Result<SnapshotInfo> {
        self.require_guest_writes()?;
        self.exclusive(|m| {
            let budget = m.tx_budget(2 * m.l1.len()) + m.bitmap_budget()?;
            let info = m.transaction(budget, |m, tx| m.apply_change(tx, &self.path, name))?;
            m.reload_tracker()?;
            // Still exclusive: no request sees the new size before the new L1.
            self.size
                .store(m.header.size, std::sync::atomic::Ordering::SeqCst);
            Ok(info)
        })
    }
}
