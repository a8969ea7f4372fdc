//! Persistent dirty bitmaps, read side (`qcow2.txt` "Bitmaps extension",
//! "Bitmap directory", "Bitmap table"): the directory is parsed and checked,
//! and a bitmap's data can be read back as dirty extents. The extension is
//! only trusted while autoclear bit 0 says it is consistent, as the spec
//! requires.

use super::header::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use super::meta::{from_be_bytes, Meta};
use super::types::OFFSET_MASK;
use super::Qcow2;
use crate::error::{Error, Result};

/// Directory flag bit 0: the bitmap was not saved correctly.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Directory flag bit 1: the bitmap tracks every write (enabled).
pub const FLAG_AUTO: u32 = 1 << 1;
/// Directory flag bit 2: unknown extra data may be ignored.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// Largest directory QEMU reads (64 MiB).
const MAX_DIRECTORY: u64 = 64 << 20;

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
        if nb == 0 || reserved != 0 {
            return Err(bad(format!("{nb} bitmaps, reserved field {reserved:#x}")));
        }
        if dir_size > MAX_DIRECTORY
            || !dir_offset.is_multiple_of(self.geo.cluster_size)
            || dir_offset + dir_size > self.st.len()?
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
            });
            at = end.div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// The dirty extents of a bitmap: `(start, length)` in guest bytes.
    pub fn bitmap_extents(&self, b: &BitmapInfo) -> Result<Vec<(u64, u64)>> {
        let cs = self.geo.cluster_size;
        let mut raw = vec![0u8; b.table_size as usize * 8];
        self.st.read_at(&mut raw, b.table_offset)?;
        let table = from_be_bytes(&raw);
        let size = self.header.size;
        let bits_per_cluster = cs * 8;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |start: u64, len: u64| match out.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += len,
            _ => out.push((start, len)),
        };
        let mut data = vec![0u8; cs as usize];
        for (k, &e) in table.iter().enumerate() {
            let host = e & OFFSET_MASK;
            let first_bit = k as u64 * bits_per_cluster;
            if host == 0 {
                if e & 1 != 0 {
                    let start = first_bit * b.granularity;
                    push(start, (bits_per_cluster * b.granularity).min(size - start));
                }
                continue;
            }
            self.st.read_at(&mut data, host)?;
            for (byte_i, &byte) in data.iter().enumerate() {
                if byte == 0 {
                    continue;
                }
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        let start = (first_bit + byte_i as u64 * 8 + bit) * b.granularity;
                        if start < size {
                            push(start, b.granularity.min(size - start));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
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
        let dir = m.bitmap_directory()?;
        let b = dir
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| Error::invalid(&self.path, format!("bitmap '{name}' not found")))?;
        m.bitmap_extents(b)
    }
}
