//! Persistent dirty bitmaps, read side (`qcow2.txt` "Bitmaps extension",
//! "Bitmap directory", "Bitmap table"): the directory is parsed and checked,
//! and a bitmap's data can be read back as dirty extents. The extension is
//! only trusted while autoclear bit 0 says it is consistent, as the spec
//! requires.

use std::sync::Arc;

use super::bitmap_track::{needs_clusters, Tracker};
use super::header::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use super::meta::{from_be_bytes, Meta};
use super::types::OFFSET_MASK;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::image::Image;

/// Directory flag bit 0: the bitmap was not saved correctly.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Directory flag bit 1: the bitmap tracks every write (enabled).
pub const FLAG_AUTO: u32 = 1 << 1;
/// Directory flag bit 2: unknown extra data may be ignored.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// Largest directory QEMU reads (64 MiB).
const MAX_DIRECTORY: u64 = 64 << 20;
/// Largest bitmap table QEMU reads (entries).
const MAX_TABLE_ENTRIES: u64 = 0x800_0000;
/// Most bitmap data QEMU reads for one bitmap (512 MiB of clusters).
const MAX_BITMAP_BYTES: u64 = 512 << 20;
/// Bitmap table entry bits that must be zero (1-8 and 56-63).
const TABLE_RESERVED: u64 = 0xff00_0000_0000_01fe;

/// One persistent bitmap, as its directory entry describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapInfo {
    /// Name (unique in the image).
    pub name: String,
    /// Bytes of guest data one bit covers.
    pub granularity: u64,
    /// Raw directory flags ([`FLAG_IN_USE`], [`FLAG_AUTO`], …).
    pub flags: u32,
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries in the bitmap table.
    pub table_size: u32,
    /// Type-specific extra data, kept as it is (none is defined yet).
    pub extra: Vec<u8>,
}

impl BitmapInfo {
    /// Enabled: tracks writes (the `auto` flag).
    pub fn enabled(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }

    /// Marked in use: not saved correctly, contents not to be trusted.
    pub fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    /// May be read, tracked and edited: not in use, and without extra data
    /// unless the `extra_data_compatible` flag says it may be ignored (a
    /// bitmap with other extra data is only kept as it is, or removed).
    pub fn usable(&self) -> bool {
        !self.in_use() && (self.extra.is_empty() || self.flags & FLAG_EXTRA_DATA_COMPATIBLE != 0)
    }

    /// Why the bitmap is not [`BitmapInfo::usable`], for messages.
    pub fn unusable_why(&self) -> &'static str {
        if self.in_use() {
            "is inconsistent (left in use by an unclean shutdown)"
        } else {
            "has extra data of a kind strata does not know"
        }
    }

    /// The flag names qemu-img prints, in its order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.in_use() {
            v.push("in-use");
        }
        if self.enabled() {
            v.push("auto");
        }
        v
    }
}

/// One change to the set of bitmaps of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapEdit {
    /// Add an empty bitmap (granularity: the cluster size, at least 4 KiB,
    /// when `None`).
    Add {
        /// Name (unique in the image, 1 to 1023 bytes).
        name: String,
        /// Bytes one bit covers: a power of two from 512 to 2 GiB.
        granularity: Option<u64>,
        /// Tracks writes from the start.
        enabled: bool,
    },
    /// Remove a bitmap.
    Remove(String),
    /// Clear every bit.
    Clear(String),
    /// Enable (true) or disable a bitmap.
    SetEnabled(String, bool),
    /// Set the granules overlapping `extents` (guest bytes) in `target`.
    Merge {
        /// The bitmap that receives the bits.
        target: String,
        /// Dirty extents `(start, length)`, e.g. of another bitmap.
        extents: Vec<(u64, u64)>,
    },
}

/// Sets in `bits` every granule that overlaps one of `extents`.
pub(crate) fn set_extents(bits: &mut [u8], granularity: u64, extents: &[(u64, u64)]) {
    let total = bits.len() as u64 * 8;
    for &(start, len) in extents {
        if len == 0 || total == 0 {
            continue;
        }
        let first = start / granularity;
        let last = ((start + len - 1) / granularity).min(total - 1);
        for i in first..=last {
            bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Meta {
    /// The bitmap directory, checked; empty when there is no (consistent) extension.
    pub fn bitmap_directory(&self) -> Result<Vec<BitmapInfo>> {
        let Some(ext) = self.header.extension(EXT_BITMAPS) else {
            return Ok(Vec::new());
        };
        if self.header.autoclear & AUTOCLEAR_BITMAPS == 0 {
            // Written by a program that did not maintain bitmaps: inconsistent.
            return Ok(Vec::new());
        }
        let bad = |what: String| Error::corrupt(&self.path, format!("bitmaps extension: {what}"));
        if ext.len() < 24 {
            return Err(bad(format!("{} bytes, 24 needed", ext.len())));
        }
        let (nb, reserved) = (be32(ext, 0) as usize, be32(ext, 4));
        let (dir_size, dir_offset) = (be64(ext, 8), be64(ext, 16));
        if nb == 0 || nb > MAX_BITMAPS || reserved != 0 {
            return Err(bad(format!(
                "{nb} bitmaps (1..={MAX_BITMAPS}), reserved field {reserved:#x}"
            )));
        }
        let file_len = self.st.len()?;
        if dir_size > MAX_DIRECTORY
            || !dir_offset.is_multiple_of(self.geo.cluster_size)
            || dir_offset
                .checked_add(dir_size)
                .is_none_or(|end| end > file_len)
        {
            return Err(bad(format!("directory at {dir_offset:#x} ({dir_size} bytes) is invalid or past the end of the file")));
        }
        let mut dir = vec![0u8; dir_size as usize];
        self.st.read_at(&mut dir, dir_offset)?;
        let mut out: Vec<BitmapInfo> = Vec::with_capacity(nb);
        let mut at = 0usize;
        for i in 0..nb {
            let bad = |what: String| {
                Error::corrupt(
                    &self.path,
                    format!(
                        "bitmap directory entry {i} at {:#x}: {what}",
                        dir_offset + at as u64
                    ),
                )
            };
            if at + 24 > dir.len() {
                return Err(bad("runs past the directory".into()));
            }
            let table_offset = be64(&dir, at);
            let table_size = be32(&dir, at + 8);
            let flags = be32(&dir, at + 12);
            let kind = dir[at + 16];
            let gran_bits = dir[at + 17] as u32;
            let name_size = be16(&dir, at + 18) as usize;
            let extra = be32(&dir, at + 20) as usize;
            let end = at + 24 + extra + name_size;
            if end > dir.len() || name_size == 0 || name_size > 1023 {
                return Err(bad(format!(
                    "name of {name_size} bytes or extra data of {extra} bytes does not fit"
                )));
            }
            if kind != 1
                || !(9..=31).contains(&gran_bits)
                || flags & !(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE) != 0
            {
                return Err(bad(format!(
                    "type {kind}, granularity bits {gran_bits}, flags {flags:#x} not supported"
                )));
            }
            let granularity = 1u64 << gran_bits;
            let bits = self.header.size.div_ceil(granularity);
            let want = bits.div_ceil(self.geo.cluster_size * 8);
            if want > MAX_TABLE_ENTRIES || want * self.geo.cluster_size > MAX_BITMAP_BYTES {
                return Err(bad(format!(
                    "a bitmap of granularity {granularity} needs a table of {want} entries, more than QEMU allows"
                )));
            }
            if table_size as u64 != want
                || (table_offset & !OFFSET_MASK) != 0
                || !table_offset.is_multiple_of(self.geo.cluster_size)
            {
                return Err(bad(format!(
                    "bitmap table at {table_offset:#x} of {table_size} entries ({want} expected)"
                )));
            }
            let name = String::from_utf8_lossy(&dir[end - name_size..end]).into_owned();
            if out.iter().any(|b| b.name == name) {
                return Err(bad(format!("name '{name}' appears twice")));
            }
            out.push(BitmapInfo {
                name,
                granularity,
                flags,
                table_offset,
                table_size,
                extra: dir[at + 24..at + 24 + extra].to_vec(),
            });
            at = end.div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// A bitmap's table, every entry checked as QEMU does (no reserved
    /// bit; a data cluster that is cluster-aligned, or none: all zeros, or
    /// all ones with bit 0) and, since strata writes bits in place, inside
    /// the file: an entry pointing anywhere else is corruption, refused
    /// before anything is read or written there.
    pub(crate) fn bitmap_table(&self, b: &BitmapInfo) -> Result<Vec<u64>> {
        let cs = self.geo.cluster_size;
        let mut raw = vec![0u8; b.table_size as usize * 8];
        self.st.read_at(&mut raw, b.table_offset)?;
        let table = from_be_bytes(&raw);
        let file_len = self.st.len()?;
        for (k, &e) in table.iter().enumerate() {
            let host = e & OFFSET_MASK;
            if e & TABLE_RESERVED != 0
                || (host != 0 && (e & 1 != 0 || !host.is_multiple_of(cs) || host >= file_len))
            {
                return Err(Error::corrupt(
                    &self.path,
                    format!(
                        "bitmap '{}': table entry {k} ({e:#x}) is invalid or points past the end of the file ({file_len} bytes)",
                        b.name
                    ),
                ));
            }
        }
        Ok(table)
    }

    /// A bitmap's data: bit `i` (LSB first within each byte) covers guest
    /// bytes `[i * granularity, (i + 1) * granularity)`.
    pub fn bitmap_bytes(&self, b: &BitmapInfo) -> Result<Vec<u8>> {
        let cs = self.geo.cluster_size;
        let len = self.header.size.div_ceil(b.granularity).div_ceil(8);
        let table = self.bitmap_table(b)?;
        let mut out = vec![0u8; (b.table_size as u64 * cs) as usize];
        for (k, &e) in table.iter().enumerate() {
            let chunk = &mut out[k * cs as usize..(k + 1) * cs as usize];
            let host = e & OFFSET_MASK;
            if host != 0 {
                self.st.read_at(chunk, host)?;
            } else if e & 1 != 0 {
                chunk.fill(0xff);
            }
        }
        out.truncate(len as usize);
        // Bits past the end of the disk must read as clean.
        let bits = self.header.size.div_ceil(b.granularity);
        if !bits.is_multiple_of(8) {
            if let Some(last) = out.last_mut() {
                *last &= (1u8 << (bits % 8)) - 1;
            }
        }
        Ok(out)
    }

    /// The dirty extents of a bitmap: `(start, length)` in guest bytes.
    pub fn bitmap_extents(&self, b: &BitmapInfo) -> Result<Vec<(u64, u64)>> {
        Ok(extents(
            &self.bitmap_bytes(b)?,
            b.granularity,
            self.header.size,
        ))
    }
}

/// Dirty extents of bitmap data, merged, clipped to `size`.
pub(crate) fn extents(bits: &[u8], granularity: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, &byte) in bits.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            if byte & (1 << bit) == 0 {
                continue;
            }
            let start = (i as u64 * 8 + bit) * granularity;
            if start >= size {
                break;
            }
            let len = granularity.min(size - start);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => out.push((start, len)),
            }
        }
    }
    out
}

/// Serialises a bitmap directory (entries padded to 8 bytes, each with its
/// extra data as it was read).
pub(crate) fn write_directory(entries: &[BitmapInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let start = out.len();
        out.extend_from_slice(&e.table_offset.to_be_bytes());
        out.extend_from_slice(&e.table_size.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
        out.push(1); // dirty tracking bitmap
        out.push(e.granularity.trailing_zeros() as u8);
        out.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&(e.extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.extra);
        out.extend_from_slice(e.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.div_ceil(8) * 8, 0);
    }
    out
}

/// The bitmaps extension payload for a directory of `count` entries.
pub(crate) fn extension(count: usize, dir_size: u64, dir_offset: u64) -> Vec<u8> {
    let mut ext = Vec::with_capacity(24);
    ext.extend_from_slice(&(count as u32).to_be_bytes());
    ext.extend_from_slice(&0u32.to_be_bytes());
    ext.extend_from_slice(&dir_size.to_be_bytes());
    ext.extend_from_slice(&dir_offset.to_be_bytes());
    ext
}

impl Qcow2 {
    /// The persistent bitmaps (empty when the extension is absent or was
    /// left inconsistent by a program that did not maintain it).
    pub fn bitmaps(&self) -> Result<Vec<BitmapInfo>> {
        self.meta.lock().bitmap_directory()
    }

    /// The dirty extents of bitmap `name`: `(start, length)` in guest bytes.
    pub fn bitmap_dirty(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        let m = self.meta.lock();
        if let Some(extents) = m.tracker.as_ref().and_then(|t| t.extents(name)) {
            return Ok(extents);
        }
        let dir = m.bitmap_directory()?;
        let b = dir
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| Error::invalid(&self.path, format!("bitmap '{name}' not found")))?;
        if !b.usable() && !b.in_use() {
            return Err(Error::invalid(
                &self.path,
                format!("bitmap '{name}' {}", b.unusable_why()),
            ));
        }
        m.bitmap_extents(b)
    }
}

/// Runs `f` on the full set of bitmaps (with their data) and stores the
/// result as one shadow commit; tracking restarts on the new bitmaps. The
/// caller holds every lock.
pub(crate) fn rewrite_bitmaps<T>(
    m: &mut Meta,
    f: impl FnOnce(&mut Vec<(BitmapInfo, Vec<u8>)>) -> Result<T>,
) -> Result<T> {
    // Every marked bit on disk first (and speculative ones trimmed), so
    // the data read back is exactly the tracked state.
    m.flush()?;
    let mut set = m.bitmap_set()?;
    let value = f(&mut set)?;
    let budget = m.tx_budget(0) + m.bitmap_budget()? + 8;
    let value = m.transaction(budget, |_, _| {
        let switch = super::shadow::Switch {
            bitmaps: Some(set),
            ..Default::default()
        };
        Ok((switch, value))
    })?;
    m.reload_tracker()?;
    Ok(value)
}

impl Meta {
    /// Every bitmap with its data, as on disk.
    pub(crate) fn bitmap_set(&self) -> Result<Vec<(BitmapInfo, Vec<u8>)>> {
        let dir = self.bitmap_directory()?;
        let mut set = Vec::with_capacity(dir.len());
        for b in dir {
            let bits = self.bitmap_bytes(&b)?;
            set.push((b, bits));
        }
        Ok(set)
    }

    /// Clusters a rewrite of every bitmap may allocate (data, tables and
    /// directory, for the old set and a bitmap as large as any).
    pub(crate) fn bitmap_budget(&self) -> Result<u64> {
        let cs = self.geo.cluster_size;
        let per = |gran: u64| 2 * self.header.size.div_ceil(gran).div_ceil(8).div_ceil(cs) + 2;
        let dir = self.bitmap_directory()?;
        Ok(dir.iter().map(|b| per(b.granularity)).sum::<u64>() + 2 * per(512) + 8)
    }

    /// Restarts tracking on the bitmaps as they are now (after a switch).
    pub(crate) fn reload_tracker(&mut self) -> Result<()> {
        if self.track {
            let dir = self.bitmap_directory()?;
            self.tracker = Tracker::load(self, &dir)?.map(Arc::new);
        }
        Ok(())
    }
}

/// Starts tracking guest writes in the enabled bitmaps of a writable open:
/// gives every one of their data clusters storage first if some have none
/// (one shadow commit), so that setting a bit is always an in-place write.
pub(crate) fn start_tracking(m: &mut Meta) -> Result<()> {
    m.track = true;
    let dir = m.bitmap_directory()?;
    if dir.is_empty() {
        return Ok(());
    }
    if needs_clusters(m, &dir)? {
        rewrite_bitmaps(m, |_| Ok(()))?;
    }
    m.reload_tracker()
}

impl Qcow2 {
    /// Syncs made so far to make bitmap bits durable before in-place
    /// writes (the cost of crash-consistent tracking).
    pub fn bitmap_syncs(&self) -> u64 {
        self.meta.lock().tracker.as_ref().map_or(0, |t| t.syncs())
    }
}

/// Longest bitmap name QEMU accepts.
const MAX_NAME: usize = 1023;
/// Most bitmaps QEMU accepts in one image.
const MAX_BITMAPS: usize = 65535;

impl Qcow2 {
    /// Runs `f` on the full set of bitmaps (with their data) and stores the
    /// result as one shadow commit.
    fn change_bitmaps<T>(
        &self,
        f: impl FnOnce(&mut Vec<(BitmapInfo, Vec<u8>)>) -> Result<T>,
    ) -> Result<T> {
        self.require_writable()?;
        self.exclusive(|m| rewrite_bitmaps(m, f))
    }

    /// Makes one change to the bitmaps (one atomic commit).
    pub fn bitmap_edit(&self, edit: &BitmapEdit) -> Result<()> {
        self.bitmap_edits(std::slice::from_ref(edit))
    }

    /// Makes several changes to the bitmaps, in order, as one atomic commit.
    pub fn bitmap_edits(&self, edits: &[BitmapEdit]) -> Result<()> {
        self.change_bitmaps(|set| edits.iter().try_for_each(|e| self.apply_edit(set, e)))
    }

    /// Adds an empty bitmap; granularity defaults to the cluster size (at
    /// least 4 KiB), as QEMU's.
    pub fn bitmap_add(
        &self,
        name: &str,
        granularity: Option<u64>,
        enabled: bool,
    ) -> Result<BitmapInfo> {
        self.change_bitmaps(|set| {
            self.apply_edit(
                set,
                &BitmapEdit::Add {
                    name: name.to_string(),
                    granularity,
                    enabled,
                },
            )?;
            Ok(set.last().expect("just added").0.clone())
        })
    }

    /// Removes a bitmap (also one left in use by an unclean QEMU).
    pub fn bitmap_remove(&self, name: &str) -> Result<()> {
        self.bitmap_edit(&BitmapEdit::Remove(name.to_string()))
    }

    /// Clears every bit of a bitmap.
    pub fn bitmap_clear(&self, name: &str) -> Result<()> {
        self.bitmap_edit(&BitmapEdit::Clear(name.to_string()))
    }

    /// Enables (tracking) or disables a bitmap.
    pub fn bitmap_set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        self.bitmap_edit(&BitmapEdit::SetEnabled(name.to_string(), enabled))
    }

    /// Sets in bitmap `target` every granule that overlaps one of `extents`
    /// (dirty extents of another bitmap, of this image or another one).
    pub fn bitmap_merge(&self, target: &str, extents: &[(u64, u64)]) -> Result<()> {
        self.bitmap_edit(&BitmapEdit::Merge {
            target: target.to_string(),
            extents: extents.to_vec(),
        })
    }

    /// Applies one edit to a set of bitmaps (with their data).
    pub(crate) fn apply_edit(
        &self,
        set: &mut Vec<(BitmapInfo, Vec<u8>)>,
        edit: &BitmapEdit,
    ) -> Result<()> {
        let find = |set: &'_ mut Vec<(BitmapInfo, Vec<u8>)>, name: &str| -> Result<usize> {
            set.iter()
                .position(|(b, _)| b.name == name)
                .ok_or_else(|| Error::invalid(&self.path, format!("bitmap '{name}' not found")))
        };
        match edit {
            BitmapEdit::Add {
                name,
                granularity,
                enabled,
            } => {
                let gran = granularity.unwrap_or(self.geo.cluster_size.max(4096));
                if !gran.is_power_of_two() || !(512..=(1u64 << 31)).contains(&gran) {
                    return Err(Error::invalid(
                        &self.path,
                        format!("bitmap granularity {gran} must be a power of two from 512 to 2G"),
                    ));
                }
                if name.is_empty() || name.len() > MAX_NAME {
                    return Err(Error::invalid(
                        &self.path,
                        format!("invalid bitmap name '{name}'"),
                    ));
                }
                if set.iter().any(|(b, _)| &b.name == name) {
                    return Err(Error::invalid(
                        &self.path,
                        format!("a bitmap named '{name}' already exists"),
                    ));
                }
                if set.len() >= MAX_BITMAPS {
                    return Err(Error::invalid(&self.path, "too many bitmaps (65535)"));
                }
                let info = BitmapInfo {
                    name: name.clone(),
                    granularity: gran,
                    flags: if *enabled { FLAG_AUTO } else { 0 },
                    table_offset: 0,
                    table_size: 0,
                    extra: Vec::new(),
                };
                let bytes = self.size().div_ceil(gran).div_ceil(8) as usize;
                set.push((info, vec![0u8; bytes]));
            }
            BitmapEdit::Remove(name) => {
                let i = find(set, name)?;
                set.remove(i);
            }
            BitmapEdit::Clear(name) => {
                let i = find(set, name)?;
                self.refuse_unusable(&set[i].0)?;
                set[i].1.fill(0);
            }
            BitmapEdit::SetEnabled(name, enabled) => {
                let i = find(set, name)?;
                let b = &mut set[i].0;
                self.refuse_unusable(b)?;
                b.flags = if *enabled {
                    b.flags | FLAG_AUTO
                } else {
                    b.flags & !FLAG_AUTO
                };
            }
            BitmapEdit::Merge { target, extents } => {
                let i = find(set, target)?;
                let (b, bits) = &mut set[i];
                self.refuse_unusable(b)?;
                set_extents(bits, b.granularity, extents);
            }
        }
        Ok(())
    }

    fn refuse_unusable(&self, b: &BitmapInfo) -> Result<()> {
        if !b.usable() {
            return Err(Error::invalid(
                &self.path,
                format!(
                    "bitmap '{}' {}: it can only be removed",
                    b.name,
                    b.unusable_why()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_merge_and_clip() {
        // bits 1,2 and 9 of a 10-granule disk whose last granule is short.
        let bits = [0b0000_0110, 0b0000_0010];
        assert_eq!(extents(&bits, 100, 950), vec![(100, 200), (900, 50)]);
    }

    #[test]
    fn directory_entries_are_padded_and_parse_back() {
        let e = BitmapInfo {
            name: "abc".into(),
            granularity: 65536,
            flags: FLAG_AUTO,
            table_offset: 0x30000,
            table_size: 1,
            extra: Vec::new(),
        };
        let d = write_directory(&[
            e.clone(),
            BitmapInfo {
                name: "longer-name".into(),
                extra: vec![1, 2, 3, 4, 5],
                ..e.clone()
            },
        ]);
        assert_eq!(d.len() % 8, 0);
        assert_eq!(&d[24..27], b"abc");
        assert_eq!(d[17], 16);
        assert_eq!(be16(&d, 18), 3);
        assert_eq!(be16(&d, 32 + 18), 11);
        // Extra data sits between the fixed part and the name.
        assert_eq!(be32(&d, 32 + 20), 5);
        assert_eq!(&d[32 + 24..32 + 29], [1, 2, 3, 4, 5]);
        assert_eq!(&d[32 + 29..32 + 40], b"longer-name");
        assert_eq!(d.len(), 32 + 40);
    }

    #[test]
    fn extra_data_decides_use() {
        let mut e = BitmapInfo {
            name: "x".into(),
            granularity: 65536,
            flags: FLAG_AUTO,
            table_offset: 0x30000,
            table_size: 1,
            extra: Vec::new(),
        };
        assert!(e.usable());
        e.extra = vec![9];
        assert!(!e.usable());
        assert!(e.unusable_why().contains("extra data"));
        e.flags |= FLAG_EXTRA_DATA_COMPATIBLE;
        assert!(e.usable());
        e.flags |= FLAG_IN_USE;
        assert!(!e.usable());
        assert!(e.unusable_why().contains("in use"));
    }
}
