//! Refcounts: reading and updating entries of any width (1–64 bits), finding
//! and allocating free clusters, creating refcount blocks (which may describe
//! themselves) and growing the refcount table (`qcow2.txt` "Host cluster
//! management").

use super::header::MAX_REFTABLE_BYTES;
use super::meta::{to_be_bytes, Meta};
use super::types::OFFSET_MASK;
use crate::error::{Error, Result};

/// Reads entry `i` of a refcount block of `bits`-wide entries.
pub(crate) fn get_entry(block: &[u8], i: u64, bits: u32) -> u64 {
    match bits {
        64 => u64::from_be_bytes(block[i as usize * 8..][..8].try_into().expect("8 bytes")),
        32 => u32::from_be_bytes(block[i as usize * 4..][..4].try_into().expect("4 bytes")) as u64,
        16 => u16::from_be_bytes([block[i as usize * 2], block[i as usize * 2 + 1]]) as u64,
        8 => block[i as usize] as u64,
        _ => {
            let bit = i * bits as u64;
            let byte = block[(bit / 8) as usize];
            ((byte >> (bit % 8)) as u64) & ((1 << bits) - 1)
        }
    }
}

/// Writes entry `i` of a refcount block of `bits`-wide entries.
pub(crate) fn set_entry(block: &mut [u8], i: u64, bits: u32, v: u64) {
    match bits {
        64 => block[i as usize * 8..][..8].copy_from_slice(&v.to_be_bytes()),
        32 => block[i as usize * 4..][..4].copy_from_slice(&(v as u32).to_be_bytes()),
        16 => block[i as usize * 2..][..2].copy_from_slice(&(v as u16).to_be_bytes()),
        8 => block[i as usize] = v as u8,
        _ => {
            let bit = i * bits as u64;
            let mask = ((1u16 << bits) - 1) as u8;
            let shift = (bit % 8) as u32;
            let b = &mut block[(bit / 8) as usize];
            *b = (*b & !(mask << shift)) | (((v as u8) & mask) << shift);
        }
    }
}

impl Meta {
    fn block_index(&self, cluster: u64) -> u64 {
        cluster / self.geo.rb_entries
    }

    /// Host offset of refcount block `bi`, or 0 when it does not exist.
    fn block_offset(&self, bi: u64) -> Result<u64> {
        let Some(&e) = self.rt.get(bi as usize) else {
            return Ok(0);
        };
        let off = e & OFFSET_MASK;
        if off != 0 {
            let at = self.header.refcount_table_offset + bi * 8;
            self.check_host(off, "refcount table entry", at)?;
        }
        Ok(off)
    }

    fn load_rb(&mut self, off: u64) -> Result<()> {
        if !self.rb.contains(off) {
            if self.in_tx {
                self.rb.evict_clean();
            } else if self.rb.full() && !self.rb.evict_clean() {
                self.flush()?;
                if !self.rb.evict_clean() {
                    // Lazy refcounts keep blocks dirty until close: write them now.
                    let lazy = std::mem::replace(&mut self.lazy, false);
                    let r = self.write_refcounts();
                    self.lazy = lazy;
                    r?;
                    self.rb.evict_clean();
                }
            }
            let mut raw = vec![0u8; self.geo.cluster_size as usize];
            self.st.read_at(&mut raw, off)?;
            self.rb.insert(off, raw, false);
        }
        Ok(())
    }

    /// The refcount of host cluster index `cluster`.
    pub fn refcount(&mut self, cluster: u64) -> Result<u64> {
        let off = self.block_offset(self.block_index(cluster))?;
        if off == 0 {
            return Ok(0);
        }
        self.load_rb(off)?;
        let bits = self.geo.refcount_bits;
        let i = cluster % self.geo.rb_entries;
        Ok(get_entry(&self.rb.get(off).expect("loaded").data, i, bits))
    }

    /// Sets the refcount of `cluster`, creating its refcount block when needed.
    pub fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<()> {
        let bi = self.block_index(cluster);
        let mut off = self.block_offset(bi)?;
        if off == 0 {
            if value == 0 {
                return Ok(());
            }
            self.create_block(bi)?;
            off = self.block_offset(bi)?;
        }
        self.load_rb(off)?;
        let bits = self.geo.refcount_bits;
        let i = cluster % self.geo.rb_entries;
        let slot = self.rb.get(off).expect("loaded");
        set_entry(&mut slot.data, i, bits, value);
        slot.dirty = true;
        Ok(())
    }

    /// Adds one reference to `cluster` (one cache lookup when its block exists).
    pub fn increment(&mut self, cluster: u64) -> Result<()> {
        let off = self.block_offset(self.block_index(cluster))?;
        if off == 0 {
            return self.set_refcount(cluster, 1);
        }
        self.load_rb(off)?;
        let (bits, max) = (self.geo.refcount_bits, self.geo.max_refcount());
        let i = cluster % self.geo.rb_entries;
        let slot = self.rb.get(off).expect("loaded");
        let rc = get_entry(&slot.data, i, bits);
        if rc >= max {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "refcount of cluster at {:#x} would overflow {bits} bits",
                    cluster << self.geo.cluster_bits
                ),
            ));
        }
        set_entry(&mut slot.data, i, bits, rc + 1);
        slot.dirty = true;
        Ok(())
    }

    /// Drops one reference to the cluster at host offset `host`.
    pub fn decrement(&mut self, host: u64) -> Result<()> {
        let cluster = host >> self.geo.cluster_bits;
        let rc = self.refcount(cluster)?;
        if rc == 0 {
            return Err(self.corrupt(format!(
                "refcount of cluster at {host:#x} would drop below zero"
            )));
        }
        self.set_refcount(cluster, rc - 1)?;
        if rc == 1 {
            self.free_hint = self.free_hint.min(cluster);
            self.l2.remove(host);
            if self.compressed_tail >> self.geo.cluster_bits == cluster {
                self.compressed_tail = 0;
            }
        }
        Ok(())
    }

    /// First cluster index of a run of `n` free clusters at or after the hint.
    fn find_free(&mut self, n: u64) -> Result<u64> {
        let mut c = self.free_hint;
        let mut run_start = c;
        let mut run = 0;
        loop {
            let bi = self.block_index(c);
            if bi >= self.rt.len() as u64 {
                // Past the refcount table: all free.
                return Ok(if run > 0 { run_start } else { c });
            }
            if self.block_offset(bi)? == 0 {
                // A whole missing block is free.
                if run == 0 {
                    run_start = c;
                }
                let skip = self.geo.rb_entries - c % self.geo.rb_entries;
                run += skip;
                c += skip;
            } else if self.refcount(c)? == 0 {
                if run == 0 {
                    run_start = c;
                }
                run += 1;
                c += 1;
            } else {
                run = 0;
                c += 1;
            }
            if run >= n {
                return Ok(run_start);
            }
        }
    }

    /// Allocates `n` contiguous clusters (refcount 1 each); returns the host offset.
    pub fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        'retry: loop {
            let start = self.find_free(n)?;
            let first_block = self.block_index(start);
            let last_block = self.block_index(start + n - 1);
            for bi in first_block..=last_block {
                if self.block_offset(bi)? == 0 {
                    self.create_block(bi)?;
                    // The new block may have taken a cluster of the run.
                    continue 'retry;
                }
            }
            for c in start..start + n {
                if self.refcount(c)? != 0 {
                    continue 'retry;
                }
            }
            for c in start..start + n {
                self.set_refcount(c, 1)?;
            }
            self.free_hint = start + n;
            return Ok(start << self.geo.cluster_bits);
        }
    }

    /// Allocates `len` bytes for compressed data, packing it after the previous
    /// compressed cluster; each host cluster touched gains one reference.
    pub fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.geo.cluster_size;
        let tail = self.compressed_tail;
        if tail != 0 && !tail.is_multiple_of(cs) {
            let room = cs - tail % cs;
            if len <= room {
                self.increment(tail >> self.geo.cluster_bits)?;
                self.compressed_tail = tail + len;
                return Ok(tail);
            }
            // Spill into following clusters only when they are free and contiguous.
            let extra = (len - room).div_ceil(cs);
            let next = (tail >> self.geo.cluster_bits) + 1;
            let saved = self.free_hint;
            self.free_hint = next;
            let got = self.alloc_clusters(extra)?;
            if got == next << self.geo.cluster_bits {
                self.free_hint = saved.min(next + extra);
                self.increment(tail >> self.geo.cluster_bits)?;
                self.compressed_tail = tail + len;
                return Ok(tail);
            }
            // Not contiguous: give the run back and start fresh.
            for c in 0..extra {
                self.set_refcount((got >> self.geo.cluster_bits) + c, 0)?;
            }
            self.free_hint = saved;
        }
        let n = len.div_ceil(cs);
        let off = self.alloc_clusters(n)?;
        self.compressed_tail = off + len;
        Ok(off)
    }

    /// Creates refcount block `bi` (growing the table first when needed).
    fn create_block(&mut self, bi: u64) -> Result<()> {
        if bi >= self.rt.len() as u64 {
            self.grow_table(bi)?;
            if self.block_offset(bi)? != 0 {
                return Ok(());
            }
        }
        let off = loop {
            let c = self.find_free(1)?;
            let off = c << self.geo.cluster_bits;
            let cbi = self.block_index(c);
            if cbi == bi {
                // The block describes itself.
                let mut block = vec![0u8; self.geo.cluster_size as usize];
                set_entry(
                    &mut block,
                    c % self.geo.rb_entries,
                    self.geo.refcount_bits,
                    1,
                );
                self.rb.insert(off, block, true);
                break off;
            }
            if self.block_offset(cbi)? == 0 {
                // The block that would describe it must exist first.
                self.create_block(cbi)?;
                if self.block_offset(bi)? != 0 {
                    return Ok(());
                }
                continue;
            }
            self.set_refcount(c, 1)?;
            self.rb
                .insert(off, vec![0u8; self.geo.cluster_size as usize], true);
            break off;
        };
        self.rt[bi as usize] = off;
        self.rt_dirty.push(bi as usize);
        Ok(())
    }

    /// Replaces the refcount table with a larger one holding at least
    /// `min_index + 1` entries, placed (with the blocks that describe it) past
    /// the end of everything allocated; the header switches only once the new
    /// table and its blocks are durable.
    pub(crate) fn grow_table(&mut self, min_index: u64) -> Result<()> {
        // Everything the new table copies must be on disk first.
        let lazy = std::mem::replace(&mut self.lazy, false);
        let r = self.flush();
        self.lazy = lazy;
        r?;
        let cs = self.geo.cluster_size;
        let per_cluster = cs / 8;
        let mut entries = (min_index + 1).max(self.rt.len() as u64 * 2);
        entries = entries.div_ceil(per_cluster) * per_cluster;
        let end = self.end_of_allocations()?;
        let (table_clusters, blocks) = loop {
            let table_clusters = entries / per_cluster;
            // Blocks needed to describe [end, end + table + blocks).
            let mut nb = 0u64;
            loop {
                let area_end = end + table_clusters + nb;
                let needed = (self.block_index(end)..=self.block_index(area_end - 1))
                    .filter(|&bi| {
                        self.rt
                            .get(bi as usize)
                            .is_none_or(|&e| e & OFFSET_MASK == 0)
                    })
                    .count() as u64;
                if needed == nb {
                    break;
                }
                nb = needed;
            }
            let last_bi = self.block_index(end + table_clusters + nb - 1);
            if last_bi < entries {
                let list: Vec<u64> = (self.block_index(end)..=last_bi)
                    .filter(|&bi| {
                        self.rt
                            .get(bi as usize)
                            .is_none_or(|&e| e & OFFSET_MASK == 0)
                    })
                    .collect();
                break (table_clusters, list);
            }
            entries = (last_bi + 1).div_ceil(per_cluster) * per_cluster;
        };
        if table_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(self.corrupt(format!(
                "refcount table would need {table_clusters} clusters, more than QEMU's 8 MiB limit"
            )));
        }
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = self.header.refcount_table_clusters as u64;
        let mut new_rt = self.rt.clone();
        new_rt.resize(entries as usize, 0);
        let blocks_start = end + table_clusters;
        for (j, &bi) in blocks.iter().enumerate() {
            let off = (blocks_start + j as u64) << self.geo.cluster_bits;
            new_rt[bi as usize] = off;
            self.rb.insert(off, vec![0u8; cs as usize], true);
        }
        let new_blocks: Vec<u64> = (0..blocks.len() as u64)
            .map(|j| (blocks_start + j) << self.geo.cluster_bits)
            .collect();
        let old_rt = std::mem::replace(&mut self.rt, new_rt);
        let mut header_written = false;
        let switched = (|| -> Result<()> {
            for c in end..blocks_start + blocks.len() as u64 {
                self.set_refcount(c, 1)?;
            }
            // Blocks first, then the table, then the header.
            let lazy = std::mem::replace(&mut self.lazy, false);
            self.rt_dirty.clear();
            let r = self.write_refcounts();
            self.lazy = lazy;
            r?;
            let new_offset = end << self.geo.cluster_bits;
            self.st.write_at(&to_be_bytes(&self.rt), new_offset)?;
            self.st.flush()?;
            self.header.refcount_table_offset = new_offset;
            self.header.refcount_table_clusters = table_clusters as u32;
            self.write_header()?;
            header_written = true;
            self.st.flush()
        })();
        if let Err(e) = switched {
            if header_written {
                // Only the last sync failed: the new table and its blocks are
                // complete and durable, so whichever header the disk holds is
                // valid; memory stays with the new one.
                return Err(e);
            }
            // The old table is still the one on disk: go back to it, and
            // forget the new blocks (nothing durable points at them). Raised
            // counts in old blocks only leak.
            self.rt = old_rt;
            self.rt_dirty.clear();
            self.header.refcount_table_offset = old_offset;
            self.header.refcount_table_clusters = old_clusters as u32;
            for off in new_blocks {
                self.rb.remove(off);
            }
            return Err(e);
        }
        for k in 0..old_clusters {
            self.pending_free.push(old_offset + k * cs);
        }
        Ok(())
    }

    /// First cluster index past the file end and past every cluster with a refcount.
    pub fn end_of_allocations(&mut self) -> Result<u64> {
        let file_clusters = self.st.len()?.div_ceil(self.geo.cluster_size);
        let mut end = file_clusters;
        // Refcounted clusters beyond the file's end (rare) also count.
        let (bits, per_block) = (self.geo.refcount_bits, self.geo.rb_entries);
        for bi in self.block_index(file_clusters)..self.rt.len() as u64 {
            let off = self.block_offset(bi)?;
            if off == 0 {
                continue;
            }
            self.load_rb(off)?;
            let block = &self.rb.get(off).expect("loaded").data;
            let first = file_clusters.saturating_sub(bi * per_block);
            if let Some(last) = (first..per_block)
                .rev()
                .find(|&i| get_entry(block, i, bits) != 0)
            {
                end = end.max(bi * per_block + last + 1);
            }
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_round_trip() {
        for order in 0..=6 {
            let bits = 1u32 << order;
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / bits as u64;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            for i in 0..n {
                set_entry(&mut block, i, bits, (i * 7919) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, i, bits),
                    (i * 7919) & max,
                    "bits {bits} entry {i}"
                );
            }
        }
    }

    #[test]
    fn sub_byte_entries_start_at_the_least_significant_bit() {
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 0, 1, 1);
        assert_eq!(block[0], 0b0000_0001);
        set_entry(&mut block, 1, 2, 3);
        assert_eq!(block[0], 0b0000_1101);
    }
}
