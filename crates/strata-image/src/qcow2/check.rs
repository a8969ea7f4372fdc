//! Consistency check and repair, as `qemu-img check` does it: count every
//! reference to every host cluster (header, tables, snapshots, bitmaps,
//! data), compare with the stored refcounts, check the COPIED flags of the
//! active tables, and repair leaks in place or rebuild the refcount
//! structures from scratch.

use super::header::{AUTOCLEAR_BITMAPS, EXT_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::meta::{from_be_bytes, to_be_bytes, Meta};
use super::refcount::set_entry;
use super::snapshot_table::read_table;
use super::types::{decode_l2, held_host, Cluster, COPIED, OFFSET_MASK};
use crate::error::Result;

/// What `check` may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckMode {
    /// Report only.
    ReadOnly,
    /// Repair leaked clusters (`-r leaks`).
    Leaks,
    /// Repair leaks and corruptions (`-r all`).
    All,
}

/// What `check` found (and fixed), in qemu-img's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Errors that mean corruption, still present.
    pub corruptions: u64,
    /// Leaked clusters still present.
    pub leaks: u64,
    /// Operational errors during the check.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters allocated in the active state.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// Offset past the last used host cluster.
    pub image_end_offset: u64,
    /// One line per problem, in qemu-img's wording.
    pub messages: Vec<String>,
}

struct Counter {
    refs: Vec<u32>,
    cluster_bits: u32,
}

impl Counter {
    /// Counts a reference to every cluster overlapping `[off, off+len)`.
    fn add(&mut self, report: &mut CheckReport, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = off >> self.cluster_bits;
        let last = off.saturating_add(len - 1) >> self.cluster_bits;
        let in_file = self.refs.len() as u64;
        for r in &mut self.refs
            [first.min(in_file) as usize..last.saturating_add(1).min(in_file) as usize]
        {
            *r = r.saturating_add(1);
        }
        if last < in_file {
            return;
        }
        // Past the end: one line for the whole run (a hostile table size
        // must not make millions of lines).
        let from = first.max(in_file);
        let n = last - from + 1;
        report.corruptions = report.corruptions.saturating_add(n);
        report.messages.push(if n == 1 {
            format!(
                "ERROR: cluster {from} (offset {:#x}) is referenced but lies after the end of the image file",
                from << self.cluster_bits
            )
        } else {
            format!(
                "ERROR: clusters {from} to {last} (offset {:#x}, {n} clusters) are referenced but lie after the end of the image file",
                from << self.cluster_bits
            )
        });
    }
}

/// Counts the references of one L1 table and its L2 tables.
fn count_l1(
    m: &mut Meta,
    cnt: &mut Counter,
    rep: &mut CheckReport,
    l1: &[u64],
    active: bool,
) -> Result<()> {
    let geo = m.geo;
    let cs = geo.cluster_size;
    let mut next_contiguous = 0u64;
    for (i, &l1e) in l1.iter().enumerate() {
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        if !l2_off.is_multiple_of(cs) {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR l1 entry {i}: L2 table offset {l2_off:#x} is not cluster aligned"
            ));
            continue;
        }
        cnt.add(rep, l2_off, cs);
        if l2_off >= m.st.len()? {
            continue;
        }
        let table = m.load_l2(l2_off)?.clone();
        for j in 0..geo.l2_entries as usize {
            let entry = table[j * geo.l2_words];
            let bitmap = if geo.extended() { table[j * 2 + 1] } else { 0 };
            let guest = ((i as u64 * geo.l2_entries) + j as u64) * cs;
            match (decode_l2(entry, &geo), held_host(entry, &geo)) {
                (Cluster::Compressed { entry }, _) => {
                    let (off, len) = geo.compressed_span(entry);
                    cnt.add(rep, off, len);
                    if active {
                        rep.allocated_clusters += 1;
                        rep.compressed_clusters += 1;
                        // As qemu-img counts them: every compressed cluster
                        // is fragmented (neighbours share sectors).
                        rep.fragmented_clusters += 1;
                    }
                }
                (_, Some(host)) => {
                    if !host.is_multiple_of(cs) {
                        rep.corruptions += 1;
                        rep.messages.push(format!(
                            "ERROR offset={host:#x}: Cluster is not properly aligned; L2 entry corrupted (guest offset {guest:#x})"
                        ));
                        continue;
                    }
                    if geo.data_file && host != guest {
                        // With a data file, host offset = guest offset.
                        rep.corruptions += 1;
                        rep.messages.push(format!(
                            "ERROR offset={host:#x}: L2 entry for guest offset {guest:#x} points elsewhere in the data file (it must match the guest offset)"
                        ));
                        continue;
                    }
                    if !geo.data_file {
                        // Clusters in an external data file are not refcounted.
                        cnt.add(rep, host, cs);
                    }
                    if active {
                        rep.allocated_clusters += 1;
                        if next_contiguous != 0 && host != next_contiguous {
                            rep.fragmented_clusters += 1;
                        }
                        next_contiguous = host + cs;
                    }
                }
                _ => {
                    if geo.extended() && bitmap & 0xffff_ffff != 0 {
                        rep.corruptions += 1;
                        rep.messages.push(format!(
                            "ERROR: unallocated cluster at guest offset {guest:#x} has allocated subclusters"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Counts the clusters of the bitmaps extension (when it is consistent).
fn count_bitmaps(m: &mut Meta, cnt: &mut Counter, rep: &mut CheckReport) -> Result<()> {
    if m.header.autoclear & AUTOCLEAR_BITMAPS == 0 {
        return Ok(());
    }
    let Some(ext) = m.header.extension(EXT_BITMAPS).map(<[u8]>::to_vec) else {
        return Ok(());
    };
    if ext.len() < 24 {
        return Ok(());
    }
    let nb = u32::from_be_bytes(ext[0..4].try_into().expect("4")) as usize;
    let dir_size = u64::from_be_bytes(ext[8..16].try_into().expect("8"));
    let dir_off = u64::from_be_bytes(ext[16..24].try_into().expect("8"));
    cnt.add(rep, dir_off, dir_size);
    if dir_size > (64 << 20) {
        return Ok(());
    }
    let mut dir = vec![0u8; dir_size as usize];
    m.st.read_at(&mut dir, dir_off)?;
    let mut at = 0usize;
    for _ in 0..nb {
        if at + 24 > dir.len() {
            break;
        }
        let table_off = u64::from_be_bytes(dir[at..at + 8].try_into().expect("8"));
        let table_size = u32::from_be_bytes(dir[at + 8..at + 12].try_into().expect("4")) as u64;
        let name_size = u16::from_be_bytes([dir[at + 18], dir[at + 19]]) as usize;
        let extra = u32::from_be_bytes(dir[at + 20..at + 24].try_into().expect("4")) as usize;
        cnt.add(rep, table_off, table_size * 8);
        if table_off.saturating_add(table_size * 8) > m.st.len()? {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR bitmap table at {table_off:#x} lies past the end of the file"
            ));
            at += (24 + extra + name_size).div_ceil(8) * 8;
            continue;
        }
        let mut table = vec![0u8; (table_size * 8) as usize];
        m.st.read_at(&mut table, table_off)?;
        for e in from_be_bytes(&table) {
            let off = e & OFFSET_MASK;
            if off != 0 {
                cnt.add(rep, off, m.geo.cluster_size);
            }
        }
        at += (24 + extra + name_size).div_ceil(8) * 8;
    }
    Ok(())
}

/// Counts every reference in the image.
fn count_all(m: &mut Meta, rep: &mut CheckReport) -> Result<Counter> {
    let geo = m.geo;
    let cs = geo.cluster_size;
    let file_clusters = m.st.len()?.div_ceil(cs);
    let mut cnt = Counter {
        refs: vec![0; file_clusters as usize],
        cluster_bits: geo.cluster_bits,
    };
    cnt.add(rep, 0, cs);
    let l1 = m.l1.clone();
    cnt.add(rep, m.header.l1_table_offset, l1.len() as u64 * 8);
    count_l1(m, &mut cnt, rep, &l1, true)?;
    if m.header.nb_snapshots > 0 {
        let (snaps, bytes) = read_table(
            m.st.as_ref(),
            m.header.snapshots_offset,
            m.header.nb_snapshots,
        )?;
        cnt.add(rep, m.header.snapshots_offset, bytes);
        for s in snaps {
            cnt.add(rep, s.l1_table_offset, s.l1_size as u64 * 8);
            if s.l1_table_offset.saturating_add(s.l1_size as u64 * 8) > m.st.len()? {
                rep.corruptions += 1;
                rep.messages.push(format!(
                    "ERROR snapshot '{}' L1 table at {:#x} lies past the end of the file",
                    s.name, s.l1_table_offset
                ));
                continue;
            }
            let mut raw = vec![0u8; s.l1_size as usize * 8];
            m.st.read_at(&mut raw, s.l1_table_offset)?;
            count_l1(m, &mut cnt, rep, &from_be_bytes(&raw), false)?;
        }
    }
    cnt.add(
        rep,
        m.header.refcount_table_offset,
        m.header.refcount_table_clusters as u64 * cs,
    );
    for (i, &e) in m.rt.clone().iter().enumerate() {
        let off = e & OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if !off.is_multiple_of(cs) {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            ));
            continue;
        }
        cnt.add(rep, off, cs);
    }
    count_bitmaps(m, &mut cnt, rep)?;
    rep.total_clusters = m.header.size.div_ceil(cs);
    Ok(cnt)
}

/// Compares counted references with stored refcounts.
fn compare(m: &mut Meta, cnt: &Counter, rep: &mut CheckReport) -> Result<Vec<(u64, u64, u64)>> {
    let mut diffs = Vec::new();
    let n = cnt.refs.len() as u64;
    let mut highest = 0;
    for c in 0..n {
        let refs = cnt.refs.get(c as usize).copied().unwrap_or(0) as u64;
        let stored = m.refcount(c)?;
        if refs > 0 || stored > 0 {
            highest = c + 1;
        }
        if refs != stored {
            diffs.push((c, stored, refs));
            if stored < refs {
                rep.corruptions += 1;
                rep.messages.push(format!(
                    "ERROR cluster {c} refcount={stored} reference={refs}"
                ));
            } else {
                rep.leaks += 1;
                rep.messages.push(format!(
                    "Leaked cluster {c} refcount={stored} reference={refs}"
                ));
            }
        }
    }
    rep.image_end_offset = highest * m.geo.cluster_size;
    Ok(diffs)
}

/// Finds COPIED flags in the active tables that disagree with refcounts;
/// fixes them in memory when `fix`.
fn check_copied(m: &mut Meta, rep: &mut CheckReport, fix: bool) -> Result<u64> {
    let geo = m.geo;
    let mut fixed = 0;
    for i in 0..m.l1.len() {
        let l1e = m.l1[i];
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 || !l2_off.is_multiple_of(geo.cluster_size) {
            continue;
        }
        let rc = m.refcount(l2_off >> geo.cluster_bits)?;
        if (rc == 1) != (l1e & COPIED != 0) {
            rep.corruptions += 1;
            rep.messages.push(format!(
                "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={rc}"
            ));
            if fix {
                m.l1[i] = if rc == 1 { l1e | COPIED } else { l1e & !COPIED };
                m.l1_dirty = true;
                fixed += 1;
            }
        }
        let table = m.load_l2(l2_off)?.clone();
        let mut changed = table.clone();
        for j in 0..geo.l2_entries as usize {
            let e = table[j * geo.l2_words];
            let host = match decode_l2(e, &geo) {
                Cluster::Data { host, .. } => host,
                Cluster::Zero { host } if host != 0 => host,
                _ => continue,
            };
            if !host.is_multiple_of(geo.cluster_size) {
                continue;
            }
            // In an external data file every mapped cluster has an implicit
            // refcount of one.
            let rc = if geo.data_file {
                1
            } else {
                m.refcount(host >> geo.cluster_bits)?
            };
            if (rc == 1) != (e & COPIED != 0) {
                rep.corruptions += 1;
                rep.messages.push(format!(
                    "ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                ));
                if fix {
                    changed[j * geo.l2_words] = if rc == 1 { e | COPIED } else { e & !COPIED };
                    fixed += 1;
                }
            }
        }
        if fix && changed != table {
            let slot = m.l2.get(l2_off).expect("loaded");
            slot.data = changed;
            slot.dirty = true;
        }
    }
    Ok(fixed)
}

/// Writes fresh refcount structures for `refs` past the end of the file and
/// switches the header to them (QEMU's "rebuild refcount structure").
fn rebuild(m: &mut Meta, refs: &[u32]) -> Result<()> {
    let geo = m.geo;
    let cs = geo.cluster_size;
    // The old refcount table and blocks are not carried over.
    let mut refs = refs.to_vec();
    let mut drop_ref = |off: u64, n: u64| {
        for c in (off / cs)..(off / cs + n) {
            if let Some(r) = refs.get_mut(c as usize) {
                *r = r.saturating_sub(1);
            }
        }
    };
    drop_ref(
        m.header.refcount_table_offset,
        m.header.refcount_table_clusters as u64,
    );
    for &e in &m.rt {
        if e & OFFSET_MASK != 0 && (e & OFFSET_MASK).is_multiple_of(cs) {
            drop_ref(e & OFFSET_MASK, 1);
        }
    }
    let used = refs
        .iter()
        .rposition(|&r| r > 0)
        .map_or(1, |p| p as u64 + 1);
    let start = used.max(m.st.len()?.div_ceil(cs));
    let (mut t, mut b) = (1u64, 1u64);
    loop {
        let total = start + t + b;
        let nb = total.div_ceil(geo.rb_entries);
        let nt = (nb * 8).div_ceil(cs).max(1);
        if nb == b && nt == t {
            break;
        }
        b = nb;
        t = nt;
    }
    let mut blocks = vec![0u8; (b * cs) as usize];
    for c in 0..start + t + b {
        let v = if c >= start {
            1
        } else {
            refs.get(c as usize).copied().unwrap_or(0) as u64
        };
        if v != 0 {
            let bi = c / geo.rb_entries;
            let block = &mut blocks[(bi * cs) as usize..((bi + 1) * cs) as usize];
            set_entry(
                block,
                c % geo.rb_entries,
                geo.refcount_bits,
                v.min(geo.max_refcount()),
            );
        }
    }
    let mut table = vec![0u64; (t * cs / 8) as usize];
    for (j, e) in table.iter_mut().enumerate().take(b as usize) {
        *e = (start + t + j as u64) * cs;
    }
    m.st.write_at(&blocks, (start + t) * cs)?;
    m.st.write_at(&to_be_bytes(&table), start * cs)?;
    m.st.flush()?;
    m.header.refcount_table_offset = start * cs;
    m.header.refcount_table_clusters = t as u32;
    m.write_header()?;
    m.st.flush()?;
    m.rt = table;
    m.rt_dirty.clear();
    m.rb.clear();
    m.free_hint = 0;
    m.compressed_tail = 0;
    Ok(())
}

/// Checks the image; repairs what `mode` allows, then reports the final state.
pub(crate) fn check(m: &mut Meta, mode: CheckMode) -> Result<CheckReport> {
    if mode != CheckMode::ReadOnly {
        m.flush()?;
    } else if m.rb.any_dirty() || m.l2.any_dirty() || m.l1_dirty || !m.pending_free.is_empty() {
        // An open writable image: settle pending work first so counts agree.
        m.flush()?;
    }
    let mut rep = CheckReport::default();
    let cnt = count_all(m, &mut rep)?;
    let diffs = compare(m, &cnt, &mut rep)?;
    check_copied(m, &mut rep, false)?;
    if mode == CheckMode::ReadOnly || (rep.leaks == 0 && rep.corruptions == 0) {
        if mode == CheckMode::All
            && rep.corruptions == 0
            && m.header.incompatible & INCOMPAT_CORRUPT != 0
        {
            // Nothing is wrong: the image is consistent again.
            m.header.incompatible &= !INCOMPAT_CORRUPT;
            m.write_header()?;
            m.st.flush()?;
        }
        return Ok(rep);
    }
    let (leaks, corruptions) = (rep.leaks, rep.corruptions);
    if mode == CheckMode::All && corruptions > 0 {
        if diffs.iter().any(|&(_, stored, refs)| stored < refs)
            || rep.messages.iter().any(|s| s.contains("after the end"))
        {
            rebuild(m, &cnt.refs)?;
        } else {
            fix_leaks(m, &diffs)?;
        }
        check_copied(m, &mut CheckReport::default(), true)?;
        // The repairs are durable before the corrupt bit goes.
        let lazy = std::mem::replace(&mut m.lazy, false);
        let r = m.flush();
        m.lazy = lazy;
        r?;
        m.header.incompatible &= !INCOMPAT_CORRUPT;
        m.write_header()?;
        m.st.flush()?;
    } else {
        fix_leaks(m, &diffs)?;
    }
    let mut after = CheckReport::default();
    let cnt = count_all(m, &mut after)?;
    compare(m, &cnt, &mut after)?;
    check_copied(m, &mut after, false)?;
    after.leaks_fixed = leaks.saturating_sub(after.leaks);
    after.corruptions_fixed = corruptions.saturating_sub(after.corruptions);
    let mut messages = rep.messages;
    messages.append(&mut after.messages);
    after.messages = messages;
    Ok(after)
}

/// Lowers refcounts of leaked clusters to their counted references.
fn fix_leaks(m: &mut Meta, diffs: &[(u64, u64, u64)]) -> Result<()> {
    for &(c, stored, refs) in diffs {
        if stored > refs {
            m.set_refcount(c, refs)?;
            if refs == 0 {
                m.free_hint = m.free_hint.min(c);
            }
        }
    }
    let lazy = std::mem::replace(&mut m.lazy, false);
    let r = m.write_refcounts();
    m.lazy = lazy;
    r
}

/// Repairs an image left with the dirty bit set: refcounts are rebuilt from
/// the tables, COPIED flags corrected, and the dirty bit cleared.
pub(crate) fn repair_dirty(m: &mut Meta) -> Result<()> {
    let mut rep = CheckReport::default();
    let cnt = count_all(m, &mut rep)?;
    let diffs = compare(m, &cnt, &mut rep)?;
    if !diffs.is_empty() {
        rebuild(m, &cnt.refs)?;
    }
    check_copied(m, &mut CheckReport::default(), true)?;
    let lazy = std::mem::replace(&mut m.lazy, false);
    let r = m.flush();
    m.lazy = lazy;
    r?;
    m.header.incompatible &= !INCOMPAT_DIRTY;
    m.marked_dirty = false;
    m.write_header()?;
    m.st.flush()
}
