//! Creating a qcow2 image (the layout qemu-img makes: header, refcount table,
//! refcount blocks, L1 table) and growing one.

use super::data_file;
use super::header::{
    feature_table, CompressionType, Extension, Header, COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT,
    EXT_FEATURE_TABLE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2, MAX_BACKING_NAME, MAX_L1_BYTES,
};
use super::header::{AUTOCLEAR_DATA_FILE_RAW, EXT_DATA_FILE, INCOMPAT_DATA_FILE};
use super::meta::{to_be_bytes, Meta};
use super::refcount::set_entry;
use super::types::Geometry;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// How much of a new image to allocate up front (qemu-img's `preallocation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Nothing: clusters are allocated on first write.
    #[default]
    Off,
    /// Every L2 table and data cluster is mapped; the file stays sparse.
    Metadata,
    /// As metadata, and the file's blocks are reserved (fallocate).
    Falloc,
    /// As metadata, and zeros are written to every data cluster.
    Full,
}

impl Preallocation {
    /// Parses qemu-img's names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            _ => return None,
        })
    }
}

/// Options of `create`, as qemu-img's `-o` names them.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size (512 B to 2 MiB, a power of two).
    pub cluster_size: u64,
    /// Refcount width: 1, 2, 4, 8, 16, 32 or 64.
    pub refcount_bits: u32,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Extended L2 entries (subclusters).
    pub extended_l2: bool,
    /// Compression for compressed clusters.
    pub compression: CompressionType,
    /// Lazy refcounts.
    pub lazy_refcounts: bool,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Backing file format.
    pub backing_format: Option<String>,
    /// What to allocate up front.
    pub preallocation: Preallocation,
    /// External data file name, stored as given (relative names resolve
    /// against the image's folder).
    pub data_file: Option<String>,
    /// The data file is kept a consistent raw image of the guest.
    pub data_file_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            refcount_bits: 16,
            version: 3,
            extended_l2: false,
            compression: CompressionType::Zlib,
            lazy_refcounts: false,
            backing_file: None,
            backing_format: None,
            preallocation: Preallocation::Off,
            data_file: None,
            data_file_raw: false,
        }
    }
}

impl CreateOptions {
    /// Refuses combinations qemu-img refuses, naming the option at fault.
    pub fn validate(&self, path: &str) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(path, what));
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return bad(format!(
                "cluster_size {cs} must be a power of two between 512 and 2M"
            ));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return bad(format!(
                "refcount_bits {} must be a power of two up to 64",
                self.refcount_bits
            ));
        }
        if self.version != 2 && self.version != 3 {
            return bad(format!(
                "compat version {} is not 0.10 or 1.1",
                self.version
            ));
        }
        if self.version == 2 {
            if self.refcount_bits != 16 {
                return bad("refcount_bits other than 16 needs compat=1.1".into());
            }
            if self.extended_l2 {
                return bad("extended_l2 needs compat=1.1".into());
            }
            if self.lazy_refcounts {
                return bad("lazy_refcounts needs compat=1.1".into());
            }
            if self.compression != CompressionType::Zlib {
                return bad("compression_type other than zlib needs compat=1.1".into());
            }
        }
        if self.extended_l2 && cs < 16384 {
            return bad(format!(
                "extended_l2 needs cluster_size of at least 16K (got {cs})"
            ));
        }
        if !self.size.is_multiple_of(512) {
            return bad(format!("size {} must be a multiple of 512", self.size));
        }
        if let Some(b) = &self.backing_file {
            if b.len() > MAX_BACKING_NAME {
                return bad(format!(
                    "backing file name is longer than {MAX_BACKING_NAME} bytes"
                ));
            }
        }
        data_file::validate_create(self, path)
    }
}

/// Writes a new, empty qcow2 image onto `st` (which should be empty).
pub fn create(st: &dyn Storage, opts: &CreateOptions) -> Result<()> {
    let path = st.name().to_string();
    opts.validate(&path)?;
    let cluster_bits = opts.cluster_size.trailing_zeros();
    let mut incompatible = 0;
    if opts.extended_l2 {
        incompatible |= INCOMPAT_EXTL2;
    }
    if opts.compression != CompressionType::Zlib {
        incompatible |= INCOMPAT_COMPRESSION;
    }
    let mut autoclear = 0;
    if opts.data_file.is_some() {
        incompatible |= INCOMPAT_DATA_FILE;
        if opts.data_file_raw {
            autoclear |= AUTOCLEAR_DATA_FILE_RAW;
        }
    }
    let mut h = Header {
        version: opts.version,
        cluster_bits,
        size: opts.size,
        crypt_method: 0,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: 0,
        refcount_table_clusters: 0,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible,
        compatible: if opts.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear,
        refcount_order: opts.refcount_bits.trailing_zeros(),
        header_length: if opts.version == 3 { 112 } else { 72 },
        compression: opts.compression,
        extra: if opts.version == 3 {
            vec![0; 7]
        } else {
            Vec::new()
        },
        extensions: Vec::new(),
        backing_file: opts.backing_file.clone(),
    };
    let geo = Geometry::new(&h);
    let cs = geo.cluster_size;
    let l1_entries = geo.l1_entries_for(opts.size);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(Error::invalid(
            &path,
            format!(
                "size {} is too large for cluster_size {cs} (the L1 table would exceed 32 MiB)",
                opts.size
            ),
        ));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
    // Header, refcount table (t), refcount blocks (b), L1 table.
    let (mut t, mut b) = (1u64, 1u64);
    loop {
        let total = 1 + t + b + l1_clusters;
        let nb = total.div_ceil(geo.rb_entries);
        let nt = (nb * 8).div_ceil(cs);
        if nb == b && nt == t {
            break;
        }
        b = nb;
        t = nt.max(1);
    }
    let total = 1 + t + b + l1_clusters;
    h.l1_size = l1_entries as u32;
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = t as u32;
    h.l1_table_offset = (1 + t + b) * cs;
    if let (Some(_), Some(fmt)) = (&opts.backing_file, &opts.backing_format) {
        h.extensions.push(Extension {
            kind: EXT_BACKING_FORMAT,
            data: fmt.as_bytes().to_vec(),
        });
    }
    if let Some(name) = &opts.data_file {
        h.extensions.push(Extension {
            kind: EXT_DATA_FILE,
            data: name.as_bytes().to_vec(),
        });
    }
    if opts.version == 3 {
        h.extensions.push(Extension {
            kind: EXT_FEATURE_TABLE,
            data: feature_table(),
        });
        if h.to_bytes(&path).is_err() {
            // Small clusters: drop the (optional) feature table rather than fail.
            h.extensions.pop();
        }
    }
    let first = h.to_bytes(&path)?;
    // Refcount blocks: every metadata cluster has refcount 1.
    let mut blocks = vec![0u8; (b * cs) as usize];
    for c in 0..total {
        let bi = c / geo.rb_entries;
        let block = &mut blocks[(bi * cs) as usize..((bi + 1) * cs) as usize];
        set_entry(block, c % geo.rb_entries, geo.refcount_bits, 1);
    }
    let mut table = vec![0u64; (t * cs / 8) as usize];
    for (j, e) in table.iter_mut().enumerate().take(b as usize) {
        *e = (1 + t + j as u64) * cs;
    }
    st.set_len(0)?;
    st.write_at(&to_be_bytes(&table), cs)?;
    st.write_at(&blocks, (1 + t) * cs)?;
    st.set_len(total * cs)?;
    st.write_at(&first, 0)?;
    st.flush()
}

/// Grows the virtual size to `new_size`, moving the L1 table when it must grow.
pub(crate) fn grow(m: &mut Meta, new_size: u64) -> Result<()> {
    let path = m.path.clone();
    if new_size < m.header.size {
        return Err(Error::invalid(
            &path,
            "shrinking a qcow2 image is not supported",
        ));
    }
    if !new_size.is_multiple_of(512) {
        return Err(Error::invalid(
            &path,
            format!("size {new_size} must be a multiple of 512"),
        ));
    }
    m.flush()?;
    let needed = m.geo.l1_entries_for(new_size);
    if needed * 8 > MAX_L1_BYTES {
        return Err(Error::invalid(
            &path,
            format!("size {new_size} needs an L1 table larger than 32 MiB"),
        ));
    }
    if needed > m.l1.len() as u64 {
        let cs = m.geo.cluster_size;
        let clusters = (needed * 8).div_ceil(cs);
        let new_off = m.alloc_clusters(clusters)?;
        let lazy = std::mem::replace(&mut m.lazy, false);
        let r = m.flush();
        m.lazy = lazy;
        r?;
        let mut l1 = m.l1.clone();
        l1.resize(needed as usize, 0);
        let mut bytes = to_be_bytes(&l1);
        bytes.resize((clusters * cs) as usize, 0);
        m.st.write_at(&bytes, new_off)?;
        m.st.flush()?;
        let old_off = m.header.l1_table_offset;
        let old_clusters = (m.l1.len() as u64 * 8).div_ceil(cs);
        m.header.l1_table_offset = new_off;
        m.header.l1_size = needed as u32;
        m.header.size = new_size;
        m.write_header()?;
        m.st.flush()?;
        m.l1 = l1;
        for k in 0..old_clusters {
            m.pending_free.push(old_off + k * cs);
        }
        return m.flush();
    }
    m.header.size = new_size;
    m.write_header()?;
    m.st.flush()
}

/// Maps every guest cluster to a zeroed host cluster of its own (the data
/// clusters of one L2 table are contiguous, after that table).
pub(crate) fn preallocate(m: &mut Meta, mode: Preallocation) -> Result<()> {
    preallocate_from(m, mode, 0)
}

/// As [`preallocate`], for the guest clusters from index `first` on (the
/// ones a resize added).
pub(crate) fn preallocate_from(m: &mut Meta, mode: Preallocation, first: u64) -> Result<()> {
    if mode == Preallocation::Off {
        return Ok(());
    }
    let geo = m.geo;
    let cs = geo.cluster_size;
    let clusters = m.header.size.div_ceil(cs);
    let mut first = first;
    while first < clusters {
        let l1 = first / geo.l2_entries;
        let n = (geo.l2_entries - first % geo.l2_entries).min(clusters - first);
        m.writable_l2(l1)?;
        // An external data file maps every cluster at its guest offset.
        let host = if geo.data_file {
            first * cs
        } else {
            m.alloc_clusters(n)?
        };
        let bytes = if geo.data_file {
            (n * cs).min(m.header.size - host)
        } else {
            n * cs
        };
        match mode {
            Preallocation::Falloc => m.data.allocate(host, bytes)?,
            Preallocation::Full => m.data.write_zeroes(host, bytes)?,
            _ => {}
        }
        let bitmap = if geo.extended() { 0xffff_ffff } else { 0 };
        for i in 0..n {
            m.set_l2_entry(
                (first + i) * cs,
                (host + i * cs) | super::types::COPIED,
                bitmap,
            )?;
        }
        let end = host + bytes;
        if m.data.len()? < end {
            m.data.set_len(end)?;
        }
        first += n;
    }
    m.flush()
}
