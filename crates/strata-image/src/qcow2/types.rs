//! Geometry of an open image and the bit layout of L1, L2 and refcount-table
//! entries (`qcow2.txt` "Cluster mapping", "Extended L2 Entries").

use super::header::Header;

/// Bits 9–55: a host cluster offset in L1, L2 and refcount-table entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one (L1 and standard L2 entries).
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (v3, no extended L2): reads as zeros.
pub const ZERO: u64 = 1;
/// L1 bits that must be zero.
pub const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// Derived sizes of one image, fixed while it is open.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// 1 for standard L2 entries, 2 (u64 words) for extended ones.
    pub l2_words: usize,
    /// Subcluster size (equals cluster size without extended L2).
    pub subcluster_size: u64,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// Refcount entries per refcount block.
    pub rb_entries: u64,
    /// Version 3 features (zero flag) are available.
    pub v3: bool,
    /// Guest data lives in an external data file at host offset == guest
    /// offset: data clusters are not refcounted, and an L2 offset of 0 with
    /// COPIED set maps guest cluster 0.
    pub data_file: bool,
}

impl Geometry {
    /// The geometry a header describes.
    pub fn new(h: &Header) -> Self {
        let cs = h.cluster_size();
        let ext = h.extended_l2();
        let l2_words = if ext { 2 } else { 1 };
        let rbits = h.refcount_bits();
        Geometry {
            cluster_bits: h.cluster_bits,
            cluster_size: cs,
            l2_entries: cs / (8 * l2_words as u64),
            l2_words,
            subcluster_size: if ext { cs / SUBCLUSTERS as u64 } else { cs },
            refcount_bits: rbits,
            rb_entries: cs * 8 / rbits as u64,
            v3: h.version >= 3,
            data_file: h.has_data_file(),
        }
    }

    /// True with extended L2 entries.
    pub fn extended(&self) -> bool {
        self.l2_words == 2
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.cluster_size * self.l2_entries
    }

    /// L1 entries needed for a virtual size.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_span())
    }

    /// Offset within its cluster.
    pub fn offset_in_cluster(&self, off: u64) -> u64 {
        off & (self.cluster_size - 1)
    }

    /// Start of the cluster holding `off`.
    pub fn cluster_start(&self, off: u64) -> u64 {
        off & !(self.cluster_size - 1)
    }

    /// Largest value a refcount can hold.
    pub fn max_refcount(&self) -> u64 {
        if self.refcount_bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits) - 1
        }
    }

    /// Width of the compressed-descriptor offset field.
    fn compressed_offset_bits(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Decodes a compressed descriptor into (host byte offset, byte length).
    pub fn compressed_span(&self, entry: u64) -> (u64, u64) {
        let x = self.compressed_offset_bits();
        let offset = entry & ((1u64 << x) - 1);
        let nsectors_mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let extra = (entry >> x) & nsectors_mask;
        let len = (extra + 1) * 512 - (offset & 511);
        (offset, len)
    }

    /// Encodes a compressed descriptor for `len` bytes at host `offset`.
    pub fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
        let x = self.compressed_offset_bits();
        let extra = ((offset + len - 1) >> 9) - (offset >> 9);
        COMPRESSED | (extra << x) | offset
    }
}

/// What one guest cluster (or subcluster) is, decoded from its L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated here: read from the backing file (or zeros).
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster or 0.
    Zero {
        /// Preallocated host cluster, 0 when none.
        host: u64,
    },
    /// Data at `host` (the cluster start).
    Data {
        /// Host offset of the cluster.
        host: u64,
        /// Refcount is exactly one (bit 63).
        copied: bool,
    },
    /// Compressed data.
    Compressed {
        /// Raw L2 entry (decode with [`Geometry::compressed_span`]).
        entry: u64,
    },
}

/// Decodes a standard L2 entry (the first word of an extended one).
pub fn decode_l2(entry: u64, geo: &Geometry) -> Cluster {
    if entry & COMPRESSED != 0 {
        return Cluster::Compressed { entry };
    }
    let host = entry & OFFSET_MASK;
    if !geo.extended() && entry & ZERO != 0 {
        return Cluster::Zero { host };
    }
    if host == 0 && !(geo.data_file && entry & COPIED != 0) {
        return Cluster::Unallocated;
    }
    Cluster::Data {
        host,
        copied: entry & COPIED != 0,
    }
}

/// The host cluster a cluster holds on to, if any: a data cluster's, or a
/// zero cluster's preallocated one. With an external data file, host
/// offset 0 is a real cluster (guest cluster 0) when COPIED is set.
pub fn held_host(entry: u64, geo: &Geometry) -> Option<u64> {
    match decode_l2(entry, geo) {
        Cluster::Data { host, .. } => Some(host),
        Cluster::Zero { host } if host != 0 || (geo.data_file && entry & COPIED != 0) => Some(host),
        _ => None,
    }
}

/// Status of subcluster `sc` in an extended L2 entry.
pub fn decode_subcluster(entry: u64, bitmap: u64, sc: u32, geo: &Geometry) -> Cluster {
    match decode_l2(entry, geo) {
        c @ Cluster::Compressed { .. } => c,
        Cluster::Data { host, copied } => {
            if bitmap & (1 << sc) != 0 {
                Cluster::Data { host, copied }
            } else if bitmap & (1 << (sc + 32)) != 0 {
                Cluster::Zero { host: 0 }
            } else {
                Cluster::Unallocated
            }
        }
        _ => {
            if bitmap & (1 << (sc + 32)) != 0 {
                Cluster::Zero { host: 0 }
            } else {
                Cluster::Unallocated
            }
        }
    }
}
