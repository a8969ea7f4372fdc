//! The internal snapshot table (`qcow2.txt` "Snapshots"): parsing and
//! serialising its variable-length entries.

use crate::error::{Error, Result};
use crate::storage::Storage;

/// One snapshot table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in that L1 table.
    pub l1_size: u32,
    /// Unique ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, seconds since the Epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest run time in nanoseconds.
    pub vm_clock_nsec: u64,
    /// VM state size (the 64-bit extra-data field when present).
    pub vm_state_size: u64,
    /// Virtual disk size at snapshot time, when recorded.
    pub disk_size: Option<u64>,
    /// icount, when recorded (-1 when disabled).
    pub icount: Option<i64>,
    /// Extra data bytes past the fields we know, kept as they are.
    pub extra_unknown: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Largest snapshot table QEMU reads (64 MiB).
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Reads `count` entries at `offset`; returns them and the table's byte size.
pub fn read_table(st: &dyn Storage, offset: u64, count: u32) -> Result<(Vec<SnapshotEntry>, u64)> {
    let path = st.name();
    let file_len = st.len()?;
    let mut out = Vec::with_capacity(count.min(65536) as usize);
    let mut at = offset;
    for i in 0..count {
        let bad = |what: String| {
            Error::corrupt(
                path,
                format!("snapshot table entry {i} at offset {at:#x}: {what}"),
            )
        };
        if at + 40 > file_len || at - offset > MAX_TABLE_BYTES {
            return Err(bad("runs past the end of the file".into()));
        }
        let mut fixed = [0u8; 40];
        st.read_at(&mut fixed, at)?;
        let id_len = u16::from_be_bytes([fixed[12], fixed[13]]) as u64;
        let name_len = u16::from_be_bytes([fixed[14], fixed[15]]) as u64;
        let extra_len = be32(&fixed, 36) as u64;
        let total = 40 + extra_len + id_len + name_len;
        let padded = total.div_ceil(8) * 8;
        if at + total > file_len || extra_len > 1024 {
            return Err(bad(format!(
                "entry of {total} bytes runs past the end of the file or is too large"
            )));
        }
        let mut rest = vec![0u8; (total - 40) as usize];
        st.read_at(&mut rest, at + 40)?;
        let extra = &rest[..extra_len as usize];
        let id = &rest[extra_len as usize..(extra_len + id_len) as usize];
        let name = &rest[(extra_len + id_len) as usize..];
        let mut e = SnapshotEntry {
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: be32(&fixed, 16),
            date_nsec: be32(&fixed, 20),
            vm_clock_nsec: be64(&fixed, 24),
            vm_state_size: be32(&fixed, 32) as u64,
            disk_size: None,
            icount: None,
            extra_unknown: Vec::new(),
        };
        if extra.len() >= 8 {
            e.vm_state_size = be64(extra, 0);
        }
        if extra.len() >= 16 {
            e.disk_size = Some(be64(extra, 8));
        }
        if extra.len() >= 24 {
            e.icount = Some(be64(extra, 16) as i64);
        }
        if extra.len() > 24 {
            e.extra_unknown = extra[24..].to_vec();
        }
        out.push(e);
        at += padded;
    }
    Ok((out, at - offset))
}

/// Serialises entries as a snapshot table (each entry padded to 8 bytes).
/// Version 3 entries always carry the extra data up to the disk size, as
/// the spec requires; the icount field and unknown extra data are kept.
/// An ID or name longer than its 16-bit length field can say is refused
/// (`path` names the image): a name read from an image with invalid UTF-8
/// grows when each bad byte becomes U+FFFD, and writing its length cut to
/// 16 bits would corrupt the table.
pub fn write_table(entries: &[SnapshotEntry], version: u32, path: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        for (what, text) in [("ID", &e.id), ("name", &e.name)] {
            if text.len() > u16::MAX as usize {
                return Err(Error::invalid(
                    path,
                    format!(
                        "snapshot {what} of {} bytes (as UTF-8) does not fit the table's 16-bit length",
                        text.len()
                    ),
                ));
            }
        }
        let mut extra = Vec::with_capacity(24 + e.extra_unknown.len());
        extra.extend_from_slice(&e.vm_state_size.to_be_bytes());
        let disk_size = e.disk_size.or((version >= 3).then_some(0)).unwrap_or(0);
        extra.extend_from_slice(&disk_size.to_be_bytes());
        if e.icount.is_some() || !e.extra_unknown.is_empty() {
            extra.extend_from_slice(&(e.icount.unwrap_or(-1) as u64).to_be_bytes());
            extra.extend_from_slice(&e.extra_unknown);
        }
        let start = out.len();
        out.extend_from_slice(&e.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&e.l1_size.to_be_bytes());
        out.extend_from_slice(&(e.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&e.date_sec.to_be_bytes());
        out.extend_from_slice(&e.date_nsec.to_be_bytes());
        out.extend_from_slice(&e.vm_clock_nsec.to_be_bytes());
        out.extend_from_slice(&(e.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(e.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.div_ceil(8) * 8, 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn entries_round_trip() {
        let entries = vec![
            SnapshotEntry {
                l1_table_offset: 0x30000,
                l1_size: 2,
                id: "1".into(),
                name: "first".into(),
                date_sec: 1_700_000_000,
                date_nsec: 123,
                vm_clock_nsec: 0,
                vm_state_size: 0,
                disk_size: Some(1 << 30),
                icount: None,
                extra_unknown: Vec::new(),
            },
            SnapshotEntry {
                l1_table_offset: 0x90000,
                l1_size: 16,
                id: "17".into(),
                name: "a longer snapshot name".into(),
                date_sec: 5,
                date_nsec: 6,
                vm_clock_nsec: 7,
                vm_state_size: 1 << 33,
                disk_size: Some(8 << 30),
                icount: Some(-1),
                extra_unknown: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
        ];
        let bytes = write_table(&entries, 3, "t").unwrap();
        assert_eq!(bytes.len() % 8, 0);
        let st = MemoryStorage::from_bytes("t", bytes.clone());
        let (back, size) = read_table(&st, 0, 2).unwrap();
        assert_eq!(back, entries);
        assert_eq!(size, bytes.len() as u64);
    }
}
