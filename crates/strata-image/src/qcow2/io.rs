//! Guest I/O on a qcow2 image: mapping guest ranges to runs, reads through
//! the backing chain, and writes with copy-on-write (per subcluster with
//! extended L2 entries). Data moves without the metadata lock held.

use super::compress;
use super::meta::Meta;
use super::types::{decode_l2, decode_subcluster, Cluster, Geometry, COPIED, SUBCLUSTERS};
use super::Qcow2;
use crate::error::{Error, Result};
use crate::image::{push_extent, Extent, Image};

/// Most clusters one allocating write batches into a single contiguous run.
const MAX_BATCH: u64 = 4096;

/// A guest range with one status.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub guest: u64,
    pub len: u64,
    /// For `Data`, `host` is the host offset of `guest` (not the cluster start).
    pub kind: Cluster,
}

fn push_run(runs: &mut Vec<Run>, r: Run) {
    if let Some(last) = runs.last_mut() {
        let joined = match (last.kind, r.kind) {
            (
                Cluster::Data {
                    host: a,
                    copied: ca,
                },
                Cluster::Data {
                    host: b,
                    copied: cb,
                },
            ) => ca == cb && a + last.len == b,
            (Cluster::Zero { .. }, Cluster::Zero { .. }) => true,
            (Cluster::Unallocated, Cluster::Unallocated) => true,
            _ => false,
        };
        if joined && last.guest + last.len == r.guest {
            last.len += r.len;
            if let Cluster::Zero { host } = &mut last.kind {
                *host = 0;
            }
            return;
        }
    }
    runs.push(r);
}

/// Appends the runs of `[guest, guest+len)`, which lies inside one cluster
/// whose L2 entry is `(entry, bitmap)`.
fn cluster_runs(
    geo: &Geometry,
    entry: u64,
    bitmap: u64,
    guest: u64,
    len: u64,
    runs: &mut Vec<Run>,
) {
    let cstart = geo.cluster_start(guest);
    let end = guest + len;
    let at = |kind: Cluster, pos: u64| match kind {
        Cluster::Data { host, copied } => Cluster::Data {
            host: host + (pos - cstart),
            copied,
        },
        k => k,
    };
    if !geo.extended() {
        push_run(
            runs,
            Run {
                guest,
                len,
                kind: at(decode_l2(entry, geo), guest),
            },
        );
        return;
    }
    let mut pos = guest;
    while pos < end {
        let sc = ((pos - cstart) / geo.subcluster_size) as u32;
        let sc_end = (cstart + (sc as u64 + 1) * geo.subcluster_size).min(end);
        let kind = at(decode_subcluster(entry, bitmap, sc, geo), pos);
        push_run(
            runs,
            Run {
                guest: pos,
                len: sc_end - pos,
                kind,
            },
        );
        pos = sc_end;
    }
}

/// Maps `[off, off+len)` to runs of one status each.
pub(crate) fn map_runs(m: &mut Meta, off: u64, len: u64) -> Result<Vec<Run>> {
    map_runs_in(m, None, off, len)
}

/// Maps `[off, off+len)` through the L1 table `l1` (the active one when `None`).
pub(crate) fn map_runs_in(
    m: &mut Meta,
    l1: Option<&[u64]>,
    off: u64,
    len: u64,
) -> Result<Vec<Run>> {
    let geo = m.geo;
    let mut runs = Vec::new();
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let cstart = geo.cluster_start(pos);
        let cend = (cstart + geo.cluster_size).min(end);
        let l1_index = (pos >> geo.cluster_bits) / geo.l2_entries;
        let l2 = m.l2_offset_in(l1, l1_index)?;
        if l2 == 0 {
            // A whole missing L2 table is unallocated.
            let table_end = (l1_index + 1).saturating_mul(geo.l2_span()).min(end);
            push_run(
                &mut runs,
                Run {
                    guest: pos,
                    len: table_end - pos,
                    kind: Cluster::Unallocated,
                },
            );
            pos = table_end;
            continue;
        }
        let (entry, bitmap) = m.l2_entry_in(l2, pos)?;
        match decode_l2(entry, &geo) {
            Cluster::Data { host, .. } if geo.data_file && host != cstart => {
                // The spec: with a data file, host offset = guest offset.
                return Err(m.corrupt(format!(
                    "the L2 entry for guest offset {cstart:#x} points at {host:#x} in the external data file (it must match the guest offset)"
                )));
            }
            Cluster::Data { host, .. } => m.check_host(host, "L2 entry", pos)?,
            Cluster::Compressed { .. } if geo.data_file => {
                return Err(m.corrupt(format!(
                    "compressed cluster at guest offset {pos:#x} in an image with an external data file"
                )));
            }
            _ => {}
        }
        cluster_runs(&geo, entry, bitmap, pos, cend - pos, &mut runs);
        pos = cend;
    }
    Ok(runs)
}

/// True when writing `runs` puts data into a cluster whose mapping is
/// already durable (so a crash right after could expose it): an owned data
/// cluster not allocated since the last metadata write-back. With a raw
/// external data file every write is exposed at once (the data file is
/// the guest's disk too).
fn writes_in_place(m: &Meta, runs: &[Run]) -> bool {
    if m.header.data_file_raw() {
        return true;
    }
    runs.iter().any(|r| match r.kind {
        Cluster::Data { host, copied: true } => !m.fresh.contains(&m.geo.cluster_start(host)),
        _ => false,
    })
}

/// True when a cluster with this entry needs a new host cluster to be written.
fn needs_new_cluster(entry: u64, geo: &Geometry) -> bool {
    match decode_l2(entry, geo) {
        Cluster::Data { copied, .. } => !copied,
        Cluster::Zero { host } => host == 0 || entry & COPIED == 0,
        _ => true,
    }
}

impl Qcow2 {
    /// Reads through the backing file, zero past its end.
    fn read_backing(&self, buf: &mut [u8], guest: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        if guest >= bsize {
            buf.fill(0);
            return Ok(());
        }
        let n = ((bsize - guest) as usize).min(buf.len());
        b.read_at(&mut buf[..n], guest)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Decompresses the cluster described by a compressed L2 entry.
    fn read_compressed(&self, entry: u64, out: &mut [u8]) -> Result<()> {
        let (off, len) = self.geo.compressed_span(entry);
        let mut src = vec![0u8; len as usize];
        self.st.read_at(&mut src, off)?;
        let kind = self.meta.lock().header.compression;
        compress::decompress(kind, &src, out).map_err(|e| {
            Error::corrupt(
                &self.path,
                format!("compressed cluster at host offset {off:#x}: {e}"),
            )
        })
    }

    /// Fills `buf` with the guest data of the given runs.
    pub(crate) fn read_runs(&self, runs: &[Run], buf: &mut [u8], base: u64) -> Result<()> {
        for r in runs {
            let at = (r.guest - base) as usize;
            let slice = &mut buf[at..at + r.len as usize];
            match r.kind {
                Cluster::Data { host, .. } => self.data.read_at(slice, host)?,
                Cluster::Zero { .. } => slice.fill(0),
                Cluster::Unallocated => self.read_backing(slice, r.guest)?,
                Cluster::Compressed { entry } => {
                    let cs = self.geo.cluster_size;
                    let mut cluster = vec![0u8; cs as usize];
                    self.read_compressed(entry, &mut cluster)?;
                    let within = self.geo.offset_in_cluster(r.guest) as usize;
                    slice.copy_from_slice(&cluster[within..within + r.len as usize]);
                }
            }
        }
        Ok(())
    }

    /// Reads guest data (the caller holds the I/O gate).
    pub(crate) fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let runs = map_runs(&mut self.meta.lock(), offset, buf.len() as u64)?;
        self.read_runs(&runs, buf, offset)
    }

    /// Current guest contents of `[start, start+len)` inside one cluster whose
    /// L2 entry was `(entry, bitmap)`.
    fn old_contents(&self, entry: u64, bitmap: u64, guest: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        let mut runs = Vec::new();
        cluster_runs(&self.geo, entry, bitmap, guest, len, &mut runs);
        self.read_runs(&runs, &mut out, guest)?;
        Ok(out)
    }

    /// Writes guest data (the caller holds the I/O gate shared).
    pub(crate) fn write_inner(&self, buf: &[u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        let (runs, persist) = {
            let mut m = self.meta.lock();
            let runs = map_runs(&mut m, offset, len)?;
            let persist = match &m.tracker {
                Some(t) if t.mark(offset, len) && writes_in_place(&m, &runs) => Some(t.clone()),
                _ => None,
            };
            (runs, persist)
        };
        if let Some(t) = persist {
            // The bits must be durable before data a durable mapping reaches.
            t.persist_range(self.st.as_ref(), offset, len)?;
        }
        if runs
            .iter()
            .all(|r| matches!(r.kind, Cluster::Data { copied: true, .. }))
        {
            for r in &runs {
                if let Cluster::Data { host, .. } = r.kind {
                    let at = (r.guest - offset) as usize;
                    self.data.write_at(&buf[at..at + r.len as usize], host)?;
                }
            }
            return Ok(());
        }
        self.write_slow(buf, offset)
    }

    /// The allocating write path: decisions under the allocation mutex, data
    /// written outside it (see `inflight.rs`).
    fn write_slow(&self, buf: &[u8], offset: u64) -> Result<()> {
        let geo = self.geo;
        let cs = geo.cluster_size;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let cstart = geo.cluster_start(pos);
            let cend = (cstart + cs).min(end);
            let first = cstart >> geo.cluster_bits;
            let alloc = self.alloc.lock();
            if self.inflight.busy(first) {
                drop(alloc);
                self.inflight.wait(first);
                continue;
            }
            let (entry, bitmap) = self.meta.lock().l2_entry(pos)?;
            let data = &buf[(pos - offset) as usize..(cend - offset) as usize];
            match decode_l2(entry, &geo) {
                Cluster::Data { host, copied: true } => {
                    self.write_in_place(host, entry, bitmap, data, pos)?;
                    pos = cend;
                    continue;
                }
                Cluster::Zero { host } if host != 0 && entry & COPIED != 0 => {
                    // Preallocated zero cluster: fill it, then drop the flag.
                    let mut cluster = vec![0u8; cs as usize];
                    let within = (pos - cstart) as usize;
                    cluster[within..within + data.len()].copy_from_slice(data);
                    self.data.write_at(&cluster, host)?;
                    self.meta.lock().set_l2_entry(cstart, host | COPIED, 0)?;
                    pos = cend;
                    continue;
                }
                _ => {}
            }
            // A run of clusters that all need a new host cluster.
            let mut olds = vec![(entry, bitmap)];
            let host = {
                let mut m = self.meta.lock();
                while (olds.len() as u64) < MAX_BATCH {
                    let next = cstart + olds.len() as u64 * cs;
                    if next >= end || self.inflight.busy(next >> geo.cluster_bits) {
                        break;
                    }
                    let (e, b) = m.l2_entry(next)?;
                    if !needs_new_cluster(e, &geo) {
                        break;
                    }
                    olds.push((e, b));
                }
                // L2 tables first, so they sit before the data they map.
                let mut last_l1 = u64::MAX;
                for i in 0..olds.len() as u64 {
                    let l1 = (first + i) / geo.l2_entries;
                    if l1 != last_l1 {
                        m.writable_l2(l1)?;
                        last_l1 = l1;
                    }
                }
                // An external data file maps host offset == guest offset,
                // unrefcounted.
                let host = if geo.data_file {
                    cstart
                } else {
                    m.alloc_clusters(olds.len() as u64)?
                };
                if m.tracker.is_some() {
                    m.fresh
                        .extend((0..olds.len() as u64).map(|i| host + i * cs));
                }
                host
            };
            let k = olds.len() as u64;
            self.inflight.begin(first, k);
            drop(alloc);
            // On failure the clusters stay allocated but unreferenced: a leak,
            // never corruption.
            let linked = self
                .write_new_clusters(host, cstart, &olds, buf, offset)
                .and_then(|bitmaps| {
                    let mut m = self.meta.lock();
                    for (i, &(old, _)) in olds.iter().enumerate() {
                        let at = i as u64 * cs;
                        m.set_l2_entry(cstart + at, (host + at) | COPIED, bitmaps[i])?;
                        m.release_entry(old);
                    }
                    Ok(())
                });
            self.inflight.end(first, k);
            linked?;
            pos = (cstart + k * cs).min(end);
        }
        Ok(())
    }

    /// Writes into a cluster this image owns; with extended L2 entries,
    /// allocates the touched subclusters (copying partial ones) first.
    fn write_in_place(
        &self,
        host: u64,
        entry: u64,
        bitmap: u64,
        data: &[u8],
        pos: u64,
    ) -> Result<()> {
        let geo = self.geo;
        let cstart = geo.cluster_start(pos);
        if !geo.extended() {
            return self.data.write_at(data, host + (pos - cstart));
        }
        let scs = geo.subcluster_size;
        let first = ((pos - cstart) / scs) as u32;
        let last = ((pos + data.len() as u64 - 1 - cstart) / scs) as u32;
        let mask = touched_mask(first, last);
        if bitmap & mask == mask {
            return self.data.write_at(data, host + (pos - cstart));
        }
        // Widen to whole subclusters where the touched ones are not allocated.
        let mut start = pos;
        let mut stop = pos + data.len() as u64;
        if bitmap & (1 << first) == 0 {
            start = cstart + first as u64 * scs;
        }
        if bitmap & (1 << last) == 0 {
            stop = cstart + (last as u64 + 1) * scs;
        }
        let mut piece = self.old_contents(entry, bitmap, start, stop - start)?;
        let at = (pos - start) as usize;
        piece[at..at + data.len()].copy_from_slice(data);
        self.data.write_at(&piece, host + (start - cstart))?;
        let new_bitmap = (bitmap | mask) & !(mask << 32);
        self.meta.lock().set_l2_entry(cstart, entry, new_bitmap)
    }

    /// Writes the data of `olds.len()` new clusters at `host` (contiguous);
    /// returns each one's new subcluster bitmap (0 without extended L2).
    fn write_new_clusters(
        &self,
        host: u64,
        cstart: u64,
        olds: &[(u64, u64)],
        buf: &[u8],
        offset: u64,
    ) -> Result<Vec<u64>> {
        let geo = self.geo;
        let cs = geo.cluster_size;
        let end = offset + buf.len() as u64;
        let k = olds.len() as u64;
        let mut bitmaps = Vec::with_capacity(olds.len());
        // Pieces: (host offset, bytes) with borrowed middles.
        let mut head: Option<(u64, Vec<u8>)> = None;
        let mut tail: Option<(u64, Vec<u8>)> = None;
        let mut middle: Option<(u64, u64, u64)> = None; // (host, buf start, len)
        for (i, &(entry, bitmap)) in olds.iter().enumerate() {
            let g0 = cstart + i as u64 * cs;
            let w0 = g0.max(offset);
            let w1 = (g0 + cs).min(end);
            let h0 = host + i as u64 * cs;
            let full = w0 == g0 && w1 == g0 + cs;
            let subcluster_grain = geo.extended()
                && matches!(
                    decode_l2(entry, &geo),
                    Cluster::Unallocated | Cluster::Zero { .. }
                );
            if full {
                bitmaps.push(if geo.extended() { all_allocated() } else { 0 });
                match &mut middle {
                    Some((_, _, len)) => *len += cs,
                    None => middle = Some((h0, w0 - offset, cs)),
                }
                continue;
            }
            // A partial cluster: copy what the write does not cover.
            let (s, e, bm) = if subcluster_grain {
                let scs = geo.subcluster_size;
                let first = ((w0 - g0) / scs) as u32;
                let last = ((w1 - 1 - g0) / scs) as u32;
                let mask = touched_mask(first, last);
                let zeros = (bitmap >> 32) & !mask;
                (
                    g0 + first as u64 * scs,
                    g0 + (last as u64 + 1) * scs,
                    mask | (zeros << 32),
                )
            } else {
                (
                    g0,
                    g0 + cs,
                    if geo.extended() { all_allocated() } else { 0 },
                )
            };
            let mut piece = self.old_contents(entry, bitmap, s, e - s)?;
            let at = (w0 - s) as usize;
            piece[at..at + (w1 - w0) as usize]
                .copy_from_slice(&buf[(w0 - offset) as usize..(w1 - offset) as usize]);
            bitmaps.push(bm);
            let h = h0 + (s - g0);
            if i == 0 {
                head = Some((h, piece));
            } else {
                tail = Some((h, piece));
            }
        }
        debug_assert!(k >= 1);
        if let Some((h, bytes)) = head {
            self.data.write_at(&bytes, h)?;
        }
        if let Some((h, start, len)) = middle {
            self.data
                .write_at(&buf[start as usize..(start + len) as usize], h)?;
        }
        if let Some((h, bytes)) = tail {
            self.data.write_at(&bytes, h)?;
        }
        Ok(bitmaps)
    }

    /// Block status of this layer, resolving unallocated runs through the backing chain.
    pub(crate) fn block_status_inner(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.block_status_in(None, offset, len)
    }

    /// Block status through the L1 table `l1` (the active one when `None`).
    pub(crate) fn block_status_in(
        &self,
        l1: Option<&[u64]>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>> {
        let runs = map_runs_in(&mut self.meta.lock(), l1, offset, len)?;
        let mut out = Vec::new();
        for r in runs {
            let base = Extent {
                start: r.guest,
                length: r.len,
                depth: 0,
                present: true,
                zero: false,
                data: false,
                compressed: false,
                offset: None,
            };
            match r.kind {
                Cluster::Data { host, .. } if self.geo.data_file => {
                    // QEMU does not look for holes in an external data file.
                    push_extent(
                        &mut out,
                        Extent {
                            data: true,
                            offset: Some(host),
                            ..base
                        },
                    );
                }
                Cluster::Data { host, .. } => {
                    // Holes in the file under allocated clusters read as zero.
                    for (h, n, is_data) in self.st.data_extents(host, r.len)? {
                        let e = Extent {
                            start: r.guest + (h - host),
                            length: n,
                            data: true,
                            zero: !is_data,
                            offset: Some(h),
                            ..base
                        };
                        push_extent(&mut out, e);
                    }
                }
                Cluster::Zero { host } => push_extent(
                    &mut out,
                    Extent {
                        zero: true,
                        offset: (host != 0).then_some(host),
                        ..base
                    },
                ),
                Cluster::Compressed { .. } => push_extent(
                    &mut out,
                    Extent {
                        data: true,
                        compressed: true,
                        ..base
                    },
                ),
                Cluster::Unallocated => self.backing_status(&mut out, r.guest, r.len)?,
            }
        }
        if self.backing.is_none() && self.geo.extended() && l1.is_none() {
            self.offsets_of_unallocated_subclusters(&mut out)?;
        }
        Ok(out)
    }

    /// Without a backing file, QEMU reports the host offset of unallocated
    /// subclusters of an allocated cluster (they read as zero from there).
    fn offsets_of_unallocated_subclusters(&self, out: &mut Vec<Extent>) -> Result<()> {
        let cs = self.geo.cluster_size;
        let mut fixed = Vec::with_capacity(out.len());
        for e in out.drain(..) {
            if e.present || e.offset.is_some() {
                push_extent(&mut fixed, e);
                continue;
            }
            let mut pos = e.start;
            let end = e.start + e.length;
            while pos < end {
                let cend = (self.geo.cluster_start(pos) + cs).min(end);
                let (entry, _) = self.meta.lock().l2_entry(pos)?;
                let offset = match decode_l2(entry, &self.geo) {
                    Cluster::Data { host, .. } => Some(host + self.geo.offset_in_cluster(pos)),
                    _ => None,
                };
                push_extent(
                    &mut fixed,
                    Extent {
                        start: pos,
                        length: cend - pos,
                        offset,
                        ..e.clone()
                    },
                );
                pos = cend;
            }
        }
        *out = fixed;
        Ok(())
    }

    fn backing_status(&self, out: &mut Vec<Extent>, start: u64, len: u64) -> Result<()> {
        let unallocated = |start, length, depth| Extent {
            start,
            length,
            depth,
            present: false,
            zero: true,
            data: false,
            compressed: false,
            offset: None,
        };
        let Some(b) = &self.backing else {
            push_extent(out, unallocated(start, len, 0));
            return Ok(());
        };
        let bsize = b.size();
        let inside = if start < bsize {
            (bsize - start).min(len)
        } else {
            0
        };
        if inside > 0 {
            for mut e in b.block_status(start, inside)? {
                e.depth += 1;
                push_extent(out, e);
            }
        }
        if inside < len {
            // Past the end of a shorter backing file: this layer answers (zeros).
            push_extent(out, unallocated(start + inside, len - inside, 0));
        }
        Ok(())
    }
}

fn touched_mask(first: u32, last: u32) -> u64 {
    debug_assert!(first <= last && last < SUBCLUSTERS);
    let n = last - first + 1;
    let ones = if n == 32 {
        0xffff_ffffu64
    } else {
        (1u64 << n) - 1
    };
    ones << first
}

fn all_allocated() -> u64 {
    0xffff_ffff
}

impl Qcow2 {
    /// Writes one whole guest cluster compressed (as `convert -c` does);
    /// stores it uncompressed when compression saves nothing. The last
    /// cluster of an image may be short: it is padded with zeros.
    pub fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.geo.cluster_size;
        if !offset.is_multiple_of(cs)
            || data.len() as u64 > cs
            || (data.len() as u64 != cs && offset + data.len() as u64 != self.size())
        {
            return Err(Error::invalid(
                &self.path,
                format!(
                    "compressed writes must cover one whole cluster (offset {offset}, length {})",
                    data.len()
                ),
            ));
        }
        self.check_write(offset, data.len() as u64)?;
        if self.geo.data_file {
            return Err(Error::unsupported(
                &self.path,
                "compressed clusters in an image with an external data file",
            ));
        }
        let mut cluster = data.to_vec();
        cluster.resize(cs as usize, 0);
        let kind = self.meta.lock().header.compression;
        let Some(packed) = compress::compress(kind, &cluster) else {
            return self.write_at(data, offset);
        };
        let _g = self.gate.read();
        let cluster = offset >> self.geo.cluster_bits;
        let _a = loop {
            let a = self.alloc.lock();
            if !self.inflight.busy(cluster) {
                break a;
            }
            drop(a);
            self.inflight.wait(cluster);
        };
        let mut m = self.meta.lock();
        if let Some(t) = &m.tracker {
            // A new mapping: the bits go out with the next metadata flush.
            t.mark(offset, data.len() as u64);
        }
        let l1 = cluster / self.geo.l2_entries;
        m.writable_l2(l1)?;
        let (old, _) = m.l2_entry(offset)?;
        let host = m.alloc_bytes(packed.len() as u64)?;
        drop(m);
        self.st.write_at(&packed, host)?;
        let mut m = self.meta.lock();
        let entry = self.geo.compressed_entry(host, packed.len() as u64);
        m.set_l2_entry(offset, entry, 0)?;
        m.release_entry(old);
        Ok(())
    }
}
