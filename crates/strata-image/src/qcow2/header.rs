//! The qcow2 header (first cluster): parsing with validation, and writing.
//!
//! Layout per `qcow2.txt` "Header", "Header extensions" and "Feature name
//! table". Header extensions this engine does not know are kept byte-exact
//! and written back; the backing file name lives after the extensions, in
//! the first cluster.

use crate::error::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Incompatible bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: image may be corrupt; do not write.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible bit 2: external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible bit 3: compression type field is set.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// The incompatible bits this engine understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bit 0: bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: raw external data.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension: end of the area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// QEMU's limit on the L1 table (32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest cluster size QEMU opens (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Smallest cluster size (512 B).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Longest backing file name.
pub const MAX_BACKING_NAME: usize = 1023;

/// Compression type values (header byte 104).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate ("zlib" in QEMU).
    Zlib,
    /// zstd.
    Zstd,
}

impl CompressionType {
    /// The name qemu-img prints.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// One header extension, kept as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Extension type (magic).
    pub kind: u32,
    /// Extension data, without padding.
    pub data: Vec<u8>,
}

/// The parsed header of a qcow2 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Encryption method (only 0 is supported).
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// File offset of the active L1 table.
    pub l1_table_offset: u64,
    /// File offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// File offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible: u64,
    /// Compatible feature bits.
    pub compatible: u64,
    /// Autoclear feature bits.
    pub autoclear: u64,
    /// log2 of refcount width in bits.
    pub refcount_order: u32,
    /// Header length in bytes (72 for v2).
    pub header_length: u32,
    /// Compression type for compressed clusters.
    pub compression: CompressionType,
    /// Bytes of additional header fields past byte 105 that we do not know,
    /// kept to write back (header_length - 105 bytes, v3 only).
    pub extra: Vec<u8>,
    /// Header extensions in file order (without the end marker).
    pub extensions: Vec<Extension>,
    /// Backing file name, as stored.
    pub backing_file: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Names of known incompatible bits, for messages.
fn incompat_name(bit: u32) -> &'static str {
    match bit {
        0 => "dirty bit",
        1 => "corrupt bit",
        2 => "external data file",
        3 => "compression type",
        4 => "extended L2 entries",
        _ => "unknown",
    }
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// True when guest data lives in an external data file (incompatible bit 2).
    pub fn has_data_file(&self) -> bool {
        self.incompatible & INCOMPAT_DATA_FILE != 0
    }

    /// True when the external data file is a consistent raw image of the
    /// guest (autoclear bit 1, `data_file_raw`).
    pub fn data_file_raw(&self) -> bool {
        self.has_data_file() && self.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0
    }

    /// The external data file name as stored (header extension 0x44415441),
    /// when the image has a data file and names it.
    pub fn data_file_name(&self) -> Option<String> {
        if !self.has_data_file() {
            return None;
        }
        self.extension(EXT_DATA_FILE)
            .map(|d| String::from_utf8_lossy(d).into_owned())
    }

    /// True when extended L2 entries are on.
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// The backing format from its header extension, if any.
    pub fn backing_format(&self) -> Option<String> {
        self.extension(EXT_BACKING_FORMAT)
            .map(|d| String::from_utf8_lossy(d).into_owned())
    }

    /// Data of the first extension of `kind`.
    pub fn extension(&self, kind: u32) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.data.as_slice())
    }

    /// Replaces (or, with `None`, removes) the extension of `kind`.
    pub fn set_extension(&mut self, kind: u32, data: Option<Vec<u8>>) {
        let pos = self.extensions.iter().position(|e| e.kind == kind);
        match (pos, data) {
            (Some(i), Some(d)) => self.extensions[i].data = d,
            (Some(i), None) => {
                self.extensions.remove(i);
            }
            (None, Some(d)) => {
                // Keep the feature table last, as QEMU orders them.
                let at = self
                    .extensions
                    .iter()
                    .position(|e| e.kind == EXT_FEATURE_TABLE)
                    .unwrap_or(self.extensions.len());
                self.extensions.insert(at, Extension { kind, data: d });
            }
            (None, None) => {}
        }
    }

    /// Parses and validates the header from the first bytes of the file.
    ///
    /// `first` holds at least the first cluster when the file is that long
    /// (the caller reads `max(cluster, 2 MiB)`-bounded prefix); `file_len` is
    /// the file's length, used to refuse tables that lie past its end.
    pub fn parse(path: &str, first: &[u8], file_len: u64) -> Result<Header> {
        let bad = |what: String| Error::corrupt(path, what);
        if file_len < 72 || first.len() < 72 {
            return Err(bad(format!(
                "truncated header: file is {file_len} bytes, a qcow2 header needs at least 72"
            )));
        }
        let magic = be32(first, 0);
        if magic != MAGIC {
            return Err(bad(format!(
                "bad magic {magic:#010x} at offset 0 (not a qcow2 image)"
            )));
        }
        let version = be32(first, 4);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(path, format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {cluster_bits} at offset 20 is out of range (9..=21)"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(first, 24),
            crypt_method: be32(first, 32),
            l1_size: be32(first, 36),
            l1_table_offset: be64(first, 40),
            refcount_table_offset: be64(first, 48),
            refcount_table_clusters: be32(first, 56),
            nb_snapshots: be32(first, 60),
            snapshots_offset: be64(first, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression: CompressionType::Zlib,
            extra: Vec::new(),
            extensions: Vec::new(),
            backing_file: None,
        };
        let backing_offset = be64(first, 8);
        let backing_size = be32(first, 16) as usize;
        if version == 3 {
            if first.len() < 104 || file_len < 104 {
                return Err(bad(
                    "truncated header: version 3 needs at least 104 bytes".into()
                ));
            }
            h.incompatible = be64(first, 72);
            h.compatible = be64(first, 80);
            h.autoclear = be64(first, 88);
            h.refcount_order = be32(first, 96);
            h.header_length = be32(first, 100);
            if h.header_length < 104
                || !h.header_length.is_multiple_of(8)
                || h.header_length as u64 > cluster_size
                || h.header_length as usize > first.len()
            {
                return Err(bad(format!(
                    "header_length {} at offset 100 is invalid (needs 104..={cluster_size}, a multiple of 8)",
                    h.header_length
                )));
            }
            if h.header_length > 104 {
                let ct = first[104];
                h.compression = match ct {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    n => {
                        return Err(Error::unsupported(path, format!("compression type {n}")));
                    }
                };
                h.extra = first[105..h.header_length as usize].to_vec();
            }
            let has_bit = h.incompatible & INCOMPAT_COMPRESSION != 0;
            if has_bit != (h.compression != CompressionType::Zlib) {
                return Err(bad(
                    "compression type field and incompatible bit 3 disagree".into(),
                ));
            }
        }
        if h.refcount_order > 6 {
            return Err(bad(format!(
                "refcount_order {} at offset 96 exceeds 6",
                h.refcount_order
            )));
        }
        // Extensions: after the header, until the end marker or the end of the cluster.
        let area_end = (cluster_size as usize).min(first.len());
        let mut at = h.header_length as usize;
        loop {
            if at + 8 > area_end {
                break;
            }
            let kind = be32(first, at);
            let len = be32(first, at + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data_end = at + 8 + len;
            if data_end > area_end {
                return Err(bad(format!(
                    "header extension {kind:#010x} at offset {at} (length {len}) runs past the first cluster"
                )));
            }
            h.extensions.push(Extension {
                kind,
                data: first[at + 8..data_end].to_vec(),
            });
            at = data_end.div_ceil(8) * 8;
        }
        // Unknown incompatible features.
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let mut names = Vec::new();
            let table = h.extension(EXT_FEATURE_TABLE).unwrap_or(&[]);
            for bit in 0..64u32 {
                let mask = 1u64 << bit;
                if unknown & mask == 0 {
                    continue;
                }
                let named = table
                    .chunks_exact(48)
                    .find(|e| e[0] == 0 && e[1] as u32 == bit);
                let name = match named {
                    Some(e) => {
                        let raw = &e[2..48];
                        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                        String::from_utf8_lossy(&raw[..end]).into_owned()
                    }
                    None => incompat_name(bit).to_string(),
                };
                names.push(format!("bit {bit} ({name})"));
            }
            return Err(Error::unsupported(
                path,
                format!("incompatible feature(s) {}", names.join(", ")),
            ));
        }
        if h.crypt_method != 0 {
            return Err(Error::unsupported(
                path,
                format!("encryption (crypt_method {})", h.crypt_method),
            ));
        }
        super::data_file::validate(&h, path)?;
        if h.extended_l2() && cluster_bits < 14 {
            return Err(bad(format!(
                "extended L2 entries need clusters of at least 16 KiB, cluster_bits is {cluster_bits}"
            )));
        }
        // Backing file name (an empty one is none, as QEMU reads it).
        if backing_offset != 0 && backing_size != 0 {
            if backing_size > MAX_BACKING_NAME {
                return Err(bad(format!(
                    "backing file name length {backing_size} at offset 16 exceeds {MAX_BACKING_NAME}"
                )));
            }
            let end = backing_offset.saturating_add(backing_size as u64);
            if backing_offset >= cluster_size || end > cluster_size || end > first.len() as u64 {
                return Err(bad(format!(
                    "backing file name at offset {backing_offset} (length {backing_size}) lies outside the first cluster"
                )));
            }
            let raw = &first[backing_offset as usize..end as usize];
            let name = std::str::from_utf8(raw).map_err(|_| {
                bad(format!(
                    "backing file name at offset {backing_offset} is not UTF-8"
                ))
            })?;
            h.backing_file = Some(name.to_string());
        }
        h.validate_tables(path, file_len)?;
        Ok(h)
    }

    /// Checks table offsets and sizes against alignment, limits and the file length.
    fn validate_tables(&self, path: &str, file_len: u64) -> Result<()> {
        let bad = |what: String| Error::corrupt(path, what);
        let cs = self.cluster_size();
        let l2_entries = cs / if self.extended_l2() { 16 } else { 8 };
        // Virtual size: the L1 table needed to map it must fit QEMU's limit.
        let max_l1 = MAX_L1_BYTES / 8;
        let span = cs.saturating_mul(l2_entries);
        let needed_l1 = self.size.div_ceil(span);
        if self.size > (1u64 << 62) || needed_l1 > max_l1 {
            return Err(bad(format!(
                "virtual size {} needs an L1 table of {needed_l1} entries, more than the {max_l1} allowed",
                self.size
            )));
        }
        if (self.l1_size as u64) < needed_l1 {
            return Err(bad(format!(
                "L1 table has {} entries, but {needed_l1} are needed for virtual size {}",
                self.l1_size, self.size
            )));
        }
        if self.l1_size as u64 > max_l1 {
            return Err(bad(format!(
                "L1 table size {} at offset 36 is too large",
                self.l1_size
            )));
        }
        check_table(
            path,
            "L1 table",
            self.l1_table_offset,
            self.l1_size as u64 * 8,
            cs,
            file_len,
        )?;
        if self.refcount_table_clusters == 0 {
            return Err(bad("refcount table has 0 clusters (offset 56)".into()));
        }
        let rt_bytes = self.refcount_table_clusters as u64 * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(bad(format!(
                "refcount table of {} clusters at offset 56 is too large",
                self.refcount_table_clusters
            )));
        }
        check_table(
            path,
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if self.nb_snapshots > 0 {
            if !self.snapshots_offset.is_multiple_of(cs) || self.snapshots_offset == 0 {
                return Err(bad(format!(
                    "snapshot table offset {:#x} is not a valid cluster offset",
                    self.snapshots_offset
                )));
            }
            if self.snapshots_offset >= file_len {
                return Err(bad(format!(
                    "snapshot table at offset {:#x} lies past the end of the file ({file_len} bytes)",
                    self.snapshots_offset
                )));
            }
        }
        Ok(())
    }

    /// Serialises the header, its extensions and the backing name into one
    /// buffer of exactly `cluster_size` bytes (the first cluster).
    pub fn to_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = Vec::with_capacity(cs);
        let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_be_bytes());
        let put64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_be_bytes());
        put32(&mut b, MAGIC);
        put32(&mut b, self.version);
        put64(&mut b, 0); // backing offset, patched below
        put32(&mut b, 0); // backing size, patched below
        put32(&mut b, self.cluster_bits);
        put64(&mut b, self.size);
        put32(&mut b, self.crypt_method);
        put32(&mut b, self.l1_size);
        put64(&mut b, self.l1_table_offset);
        put64(&mut b, self.refcount_table_offset);
        put32(&mut b, self.refcount_table_clusters);
        put32(&mut b, self.nb_snapshots);
        put64(&mut b, self.snapshots_offset);
        if self.version >= 3 {
            put64(&mut b, self.incompatible);
            put64(&mut b, self.compatible);
            put64(&mut b, self.autoclear);
            put32(&mut b, self.refcount_order);
            put32(&mut b, self.header_length);
            if self.header_length > 104 {
                b.push(match self.compression {
                    CompressionType::Zlib => 0,
                    CompressionType::Zstd => 1,
                });
                b.extend_from_slice(&self.extra);
            }
            b.resize(self.header_length as usize, 0);
        }
        for ext in &self.extensions {
            put32(&mut b, ext.kind);
            put32(&mut b, ext.data.len() as u32);
            b.extend_from_slice(&ext.data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        }
        put32(&mut b, EXT_END);
        put32(&mut b, 0);
        if let Some(name) = self.backing_file.as_ref().filter(|n| !n.is_empty()) {
            let off = b.len() as u64;
            if off >= cs as u64 {
                return Err(Error::invalid(
                    path,
                    format!("header and extensions fill the first cluster ({cs} bytes): no room for the backing name"),
                ));
            }
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > cs {
            return Err(Error::invalid(
                path,
                format!("header, extensions and backing name need {} bytes, more than one cluster ({cs})", b.len()),
            ));
        }
        b.resize(cs, 0);
        Ok(b)
    }
}

fn check_table(
    path: &str,
    what: &str,
    offset: u64,
    bytes: u64,
    cs: u64,
    file_len: u64,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cs) {
        return Err(Error::corrupt(
            path,
            format!("{what} offset {offset:#x} is not cluster aligned"),
        ));
    }
    if offset == 0 {
        return Err(Error::corrupt(
            path,
            format!("{what} at offset 0 overlaps the header"),
        ));
    }
    if offset.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(
            path,
            format!("{what} at offset {offset:#x} ({bytes} bytes) lies past the end of the file ({file_len} bytes)"),
        ));
    }
    Ok(())
}

/// The feature name table QEMU writes, as extension data.
pub fn feature_table() -> Vec<u8> {
    let entries: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut out = Vec::new();
    for (kind, bit, name) in entries {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&e);
    }
    out.extend_from_slice(&{
        let mut e = [0u8; 48];
        e[0] = 2;
        e[1] = 1;
        let n = b"raw external data";
        e[2..2 + n.len()].copy_from_slice(n);
        e
    });
    out
}
