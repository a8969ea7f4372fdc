//! The VM state of an internal snapshot (`qcow2.txt`, snapshot table entry
//! bytes 32-35 and 40-47), as QEMU's `savevm` keeps it: stored like guest
//! data, from the first L1 entry past the snapshot's virtual disk on, so
//! that `qemu-img snapshot -l` shows its size and QEMU's `loadvm` (or
//! `-loadvm`) resumes the machine from it.
//!
//! strata writes the state straight into the new snapshot's own view: its
//! data clusters, the L2 tables mapping them and a new L1 table (the old
//! active one plus those entries) are fresh clusters the snapshot alone
//! references, all made in the snapshot's shadow commit. QEMU writes it
//! through the active state first and discards it there afterwards; the
//! snapshot it leaves is the same.

use super::meta::{to_be_bytes, Meta};
use super::shadow::Tx;
use super::snapshot_table::SnapshotEntry;
use super::types::{COPIED, OFFSET_MASK};
use super::{Qcow2, SnapshotInfo};
use crate::error::{Error, Result};

/// Bytes of VM state copied at a time.
const CHUNK: u64 = 1 << 20;

/// Where a snapshot's VM state comes from: `len` bytes, read by position
/// (QEMU's migration stream in a file, say).
pub trait VmStateSource: Send + Sync {
    /// Its length in bytes.
    fn len(&self) -> u64;
    /// True when there is nothing to store.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from position `pos`.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()>;
}

impl VmStateSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        let at = usize::try_from(pos).ok().filter(|&a| {
            a.checked_add(buf.len())
                .is_some_and(|e| e <= self.as_slice().len())
        });
        match at {
            Some(a) => {
                buf.copy_from_slice(&self[a..a + buf.len()]);
                Ok(())
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        }
    }
}

/// `len` bytes of a file from `offset` on.
#[derive(Debug)]
pub struct FileVmState {
    /// The file.
    pub file: std::fs::File,
    /// Where the state starts in it.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

impl VmStateSource for FileVmState {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, self.offset + pos)
    }
}

/// Where the VM state of a snapshot whose disk is `disk_size` bytes
/// starts, in the snapshot's guest address space.
pub(crate) fn vm_state_offset(geo: &super::types::Geometry, disk_size: u64) -> u64 {
    geo.l1_entries_for(disk_size) * geo.l2_span()
}

impl Meta {
    /// Clusters storing `len` bytes of VM state may take: data, L2
    /// tables, an L1 table for the whole view.
    pub(crate) fn vmstate_budget(&self, len: u64) -> u64 {
        let geo = self.geo;
        let tables = len.div_ceil(geo.l2_span());
        let l1 = (geo.l1_entries_for(self.header.size) + tables) * 8;
        len.div_ceil(geo.cluster_size) + tables + l1.div_ceil(geo.cluster_size) + 2
    }

    /// Stores `state` as the VM state of `entry`, a snapshot being made
    /// in transaction `tx` whose view is `old_l1` (the old active L1, whose
    /// table and data references it already holds): writes the state into
    /// fresh clusters, maps them with fresh L2 tables, and gives the
    /// snapshot a fresh L1 table of `old_l1`'s guest entries and those.
    /// Entries of `old_l1` past the guest disk (a state an earlier revert
    /// brought along) are dropped from the snapshot's view.
    pub(crate) fn attach_vmstate(
        &mut self,
        tx: &mut Tx,
        entry: &mut SnapshotEntry,
        old_l1: &[u64],
        state: &dyn VmStateSource,
    ) -> Result<()> {
        let geo = self.geo;
        let cs = geo.cluster_size;
        let disk = entry.disk_size.unwrap_or(self.header.size);
        let guest_entries = geo.l1_entries_for(disk) as usize;
        for &e in old_l1.iter().skip(guest_entries) {
            let t = e & OFFSET_MASK;
            if t != 0 {
                let table = self.load_l2(t)?.clone();
                self.adjust_data(tx, &table, -1)?;
                self.tx_decrement(tx, t)?;
            }
        }
        let mut l1: Vec<u64> = old_l1.iter().take(guest_entries).copied().collect();
        l1.resize(guest_entries, 0);
        let len = state.len();
        let clusters = len.div_ceil(cs);
        if clusters > 0 {
            let data_at = self.alloc_clusters(clusters)?;
            let mut buf = vec![0u8; CHUNK as usize];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(CHUNK);
                let part = &mut buf[..n as usize];
                state.read_at(part, pos).map_err(|e| {
                    Error::invalid(
                        &self.path,
                        format!("reading the VM state at byte {pos} of {len}: {e}"),
                    )
                })?;
                self.st.write_at(part, data_at + pos)?;
                pos += n;
            }
            // The last cluster's tail reads as zeros.
            let tail = clusters * cs - len;
            if tail > 0 {
                self.st.write_at(&vec![0u8; tail as usize], data_at + len)?;
            }
            let entries = geo.l2_entries;
            for k in 0..clusters.div_ceil(entries) {
                let mut table = vec![0u64; entries as usize * geo.l2_words];
                for j in 0..entries.min(clusters - k * entries) {
                    let w = j as usize * geo.l2_words;
                    table[w] = (data_at + (k * entries + j) * cs) | COPIED;
                    if geo.extended() {
                        // Every subcluster allocated.
                        table[w + 1] = u64::from(u32::MAX);
                    }
                }
                let at = self.alloc_clusters(1)?;
                self.l2.insert(at, table, true);
                l1.push(at | COPIED);
            }
        }
        let l1_clusters = (l1.len() as u64 * 8).div_ceil(cs).max(1);
        let l1_at = self.alloc_clusters(l1_clusters)?;
        let mut bytes = to_be_bytes(&l1);
        bytes.resize((l1_clusters * cs) as usize, 0);
        self.st.write_at(&bytes, l1_at)?;
        entry.l1_table_offset = l1_at;
        entry.l1_size = l1.len() as u32;
        entry.vm_state_size = len;
        Ok(())
    }
}

impl Qcow2 {
    /// Creates an internal snapshot of the current state with `state` as
    /// its VM state (see [`Qcow2::snapshot_create`]), as QEMU's `savevm`
    /// leaves one.
    pub fn snapshot_create_with_state(
        &self,
        name: Option<&str>,
        vm_clock_nsec: u64,
        state: &dyn VmStateSource,
    ) -> Result<SnapshotInfo> {
        self.require_writable()?;
        self.exclusive(|m| {
            let budget = m.tx_budget(0) + m.vmstate_budget(state.len());
            m.transaction(budget, |m, tx| {
                let old_l1 = m.l1.clone();
                let (mut switch, mut info) =
                    m.create_change(tx, &self.path, name, vm_clock_nsec)?;
                let entry = switch
                    .snapshots
                    .as_mut()
                    .and_then(|s| s.last_mut())
                    .ok_or_else(|| Error::invalid(&self.path, "no snapshot entry was made"))?;
                m.attach_vmstate(tx, entry, &old_l1, state)?;
                // The snapshot has an L1 table of its own now.
                switch.keep_old_l1 = false;
                info.vm_state_size = state.len();
                Ok((switch, info))
            })
        })
    }

    /// Gives snapshot `name` (by name or ID), which has none, `state` as
    /// its VM state, in one shadow commit: the snapshot gets an L1 table of
    /// its own with the state's entries past its disk; its old one goes.
    /// For a snapshot of several disks taken at one instant, the state goes
    /// with the first disk's afterwards.
    pub fn snapshot_attach_state(
        &self,
        name: &str,
        state: &dyn VmStateSource,
    ) -> Result<SnapshotInfo> {
        self.require_writable()?;
        self.exclusive(|m| {
            let budget = m.tx_budget(0) + m.vmstate_budget(state.len());
            m.transaction(budget, |m, tx| {
                let mut entries = m.snapshot_entries()?;
                let (index, entry) = super::snapshot::find(&self.path, &entries, name)?;
                if entry.vm_state_size != 0 {
                    return Err(Error::invalid(
                        &self.path,
                        format!("snapshot '{}' has a VM state already", entry.name),
                    ));
                }
                let old = entry.clone();
                let old_l1 = m.snapshot_l1(&old)?;
                let entry = &mut entries[index];
                m.attach_vmstate(tx, entry, &old_l1, state)?;
                let cs = m.geo.cluster_size;
                let n = (old.l1_size as u64 * 8).div_ceil(cs);
                tx.frees_after
                    .extend((0..n).map(|k| old.l1_table_offset + k * cs));
                let info = SnapshotInfo::from(&*entry);
                let switch = super::shadow::Switch {
                    snapshots: Some(entries),
                    ..Default::default()
                };
                Ok((switch, info))
            })
        })
    }

    /// Where the VM state of snapshot `name` (by name or ID) lies in the
    /// image file, when it is one run of plain clusters there (as strata
    /// writes it): the file offset of its first byte. `None` when it is
    /// spread out, partly unallocated or compressed, or kept in an
    /// external data file, or when the snapshot has no VM state.
    pub fn vmstate_extent(&self, name: &str) -> Result<Option<u64>> {
        let (l1, size, vm_size, _) = self.vmstate_of(name)?;
        if vm_size == 0 || self.geo.data_file {
            return Ok(None);
        }
        let off = vm_state_offset(&self.geo, size);
        let _g = self.gate.read();
        let runs = super::io::map_runs_in(&mut self.meta.lock(), Some(&l1), off, vm_size)?;
        Ok(match runs.as_slice() {
            [r] => match r.kind {
                super::types::Cluster::Data { host, .. } if r.len == vm_size => Some(host),
                _ => None,
            },
            _ => None,
        })
    }

    /// Snapshot `name`'s L1 table, disk size, VM state size and name.
    fn vmstate_of(&self, name: &str) -> Result<(Vec<u64>, u64, u64, String)> {
        let m = self.meta.lock();
        let entries = m.snapshot_entries()?;
        let (_, e) = super::snapshot::find(&self.path, &entries, name)?;
        Ok((
            m.snapshot_l1(e)?,
            e.disk_size.unwrap_or(m.header.size),
            e.vm_state_size,
            e.name.clone(),
        ))
    }

    /// Reads `buf` from position `pos` of the VM state of snapshot `name`
    /// (by name or ID); an error when the range is past the state's end.
    pub fn read_vmstate(&self, name: &str, buf: &mut [u8], pos: u64) -> Result<()> {
        let (l1, size, vm_size, label) = self.vmstate_of(name)?;
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > vm_size) {
            return Err(Error::invalid(
                &self.path,
                format!(
                    "snapshot '{label}': bytes {pos}..+{} are past its VM state ({vm_size} bytes)",
                    buf.len()
                ),
            ));
        }
        let base = vm_state_offset(&self.geo, size);
        let off = base + pos;
        let _g = self.gate.read();
        let runs = super::io::map_runs_in(&mut self.meta.lock(), Some(&l1), off, buf.len() as u64)?;
        // A hole in the state reads as zeros (never the backing file's).
        for r in &runs {
            if matches!(r.kind, super::types::Cluster::Unallocated) {
                let at = (r.guest - off) as usize;
                buf[at..at + r.len as usize].fill(0);
            }
        }
        let mapped: Vec<_> = runs
            .into_iter()
            .filter(|r| !matches!(r.kind, super::types::Cluster::Unallocated))
            .collect();
        self.read_runs(&mapped, buf, off)
    }
}
