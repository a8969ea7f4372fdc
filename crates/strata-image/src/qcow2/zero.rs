//! Zeroing and discarding guest ranges: whole clusters change their L2
//! entries (zero flag, freed storage); partial clusters are written with
//! zeros (write-zeroes) or left alone (discard), as QEMU does.

use super::meta::Meta;
use super::types::{decode_l2, held_host, Cluster, COPIED, ZERO};
use super::Qcow2;
use crate::error::Result;
use crate::image::Image;

/// The "all subclusters read as zero" bitmap of an extended L2 entry.
const ALL_ZERO_BITMAP: u64 = 0xffff_ffff << 32;

impl Qcow2 {
    /// Zeroes (or discards, with `discard`) `[offset, offset+len)`.
    pub(crate) fn zero_range(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let persist = match &self.meta.lock().tracker {
            // Whole clusters change mappings (their bits go out with the next
            // metadata flush); partial ones are written through `write_inner`,
            // which makes the bits durable first where it must. An external
            // data file is zeroed or discarded in place, under mappings that
            // may be durable: the bits must be durable first.
            Some(t) => (t.mark(offset, len) && self.geo.data_file).then(|| t.clone()),
            None => None,
        };
        if let Some(t) = persist {
            t.persist_range(self.st.as_ref(), offset, len)?;
        }
        let cs = self.geo.cluster_size;
        let end = offset + len;
        let first_full = offset.div_ceil(cs) * cs;
        let last_full = self.geo.cluster_start(end);
        // A tail cluster cut short by the end of the image counts as whole.
        let size = self.size();
        let last_full = if end == size {
            end.div_ceil(cs) * cs
        } else {
            last_full
        };
        if first_full >= last_full {
            return if discard {
                Ok(())
            } else {
                self.zero_partial(offset, end)
            };
        }
        if !discard {
            self.zero_partial(offset, first_full)?;
            self.zero_partial(last_full.min(end), end)?;
        }
        let explicit = {
            let _g = self.gate.write();
            let _a = self.alloc.lock();
            self.zero_clusters(
                first_full,
                last_full.min(end.div_ceil(cs) * cs),
                unmap,
                discard,
            )?
        };
        // Clusters this format cannot mark as zero get written with zeros.
        for (start, n) in explicit {
            self.zero_partial(start, (start + n).min(end))?;
        }
        Ok(())
    }

    /// Writes explicit zeros over a partial range, unless it already reads as zero.
    fn zero_partial(&self, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let _g = self.gate.read();
        let reads_zero = self
            .block_status_inner(start, end - start)?
            .iter()
            .all(|e| e.zero);
        if reads_zero {
            return Ok(());
        }
        let zeros = vec![0u8; (end - start) as usize];
        self.write_inner(&zeros, start)
    }

    /// Changes the L2 entries of whole clusters in `[start, end)`; returns the
    /// ranges that still need explicit zeros (version 2 over a backing file).
    fn zero_clusters(
        &self,
        start: u64,
        end: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<Vec<(u64, u64)>> {
        let geo = self.geo;
        let cs = geo.cluster_size;
        let has_backing = self.backing.is_some();
        let mut explicit = Vec::new();
        let mut m = self.meta.lock();
        let mut pos = start;
        while pos < end {
            let l1_index = (pos >> geo.cluster_bits) / geo.l2_entries;
            // A whole unallocated L2 table already reads as zero without a
            // backing file (or, for discard on version 2, as the backing).
            // Write-zeroes on version 3 still marks the clusters zero, as
            // QEMU does: the image may later get a backing file (an
            // incremental backup rebased onto the previous one).
            let skip = if discard {
                !has_backing || !geo.v3
            } else {
                !has_backing && !geo.v3
            };
            if m.l2_offset(l1_index)? == 0 && skip {
                pos = (l1_index + 1).saturating_mul(geo.l2_span()).min(end);
                continue;
            }
            let (entry, bitmap) = m.l2_entry(pos)?;
            let kind = decode_l2(entry, &geo);
            let allocated = !matches!(kind, Cluster::Unallocated | Cluster::Zero { host: 0 });
            let keep = match kind {
                Cluster::Data { host, copied: true } if !unmap => Some(host),
                Cluster::Zero { .. } if !unmap && entry & COPIED != 0 => held_host(entry, &geo),
                _ => None,
            };
            let new = if geo.extended() {
                if discard && !has_backing && !allocated && bitmap == 0 {
                    None
                } else {
                    Some((keep.map_or(0, |h| h | COPIED), ALL_ZERO_BITMAP))
                }
            } else if geo.v3 {
                if discard && !has_backing && !allocated {
                    (entry != 0).then_some((0, 0))
                } else {
                    Some((keep.map_or(0, |h| h | COPIED) | ZERO, 0))
                }
            } else if !has_backing || discard {
                // Version 2: unallocated reads as zero (or, for discard, as backing).
                (entry != 0).then_some((0, 0))
            } else {
                explicit.push((pos, cs));
                None
            };
            if let Some((e, b)) = new {
                if (e, b) != (entry, bitmap) {
                    if geo.data_file {
                        let kept = keep.is_some_and(|h| e & super::types::OFFSET_MASK == h);
                        self.zero_in_data_file(&m, entry, pos, kept)?;
                    }
                    m.set_l2_entry(pos, e, b)?;
                    // Release the old storage unless the new entry still holds it.
                    let still_held = keep.is_some_and(|h| e & super::types::OFFSET_MASK == h);
                    if !still_held {
                        m.release_entry(entry);
                    }
                }
            }
            pos += cs;
        }
        Ok(explicit)
    }

    /// Before guest cluster `pos` turns into zeros (its old L2 entry was
    /// `entry`): with a raw data file its bytes there are zeroed (kept
    /// allocated when the mapping is `kept`); otherwise a cluster that loses
    /// its mapping is discarded from the data file, as QEMU does.
    fn zero_in_data_file(&self, m: &Meta, entry: u64, pos: u64, kept: bool) -> Result<()> {
        let end = (pos + self.geo.cluster_size).min(self.size());
        if end <= pos {
            return Ok(());
        }
        let had_host = matches!(
            decode_l2(entry, &self.geo),
            Cluster::Data { .. } | Cluster::Zero { host: 1.. }
        );
        if m.header.data_file_raw() {
            if kept {
                self.data.write_zeroes(pos, end - pos)
            } else {
                self.data.punch_hole(pos, end - pos)
            }
        } else if had_host && !kept {
            self.data.punch_hole(pos, end - pos)
        } else {
            Ok(())
        }
    }
}
