//! Helpers shared by the fuzz targets.

use std::sync::Arc;

use strata_image::qcow2::{OpenOptions, Qcow2};
use strata_image::storage::Storage;
use strata_image::{Error, Result};

/// A read-only file of `len` bytes that holds `data` at its start and
/// zeros after it: a small input can describe an image whose tables lie
/// far into a (sparse) file, as a qcow2 file made by `qemu-img` does.
#[derive(Debug)]
pub struct SparseFile {
    data: Vec<u8>,
    len: u64,
}

impl SparseFile {
    /// `data` followed by zeros up to `len` bytes (at least `data`).
    pub fn new(data: &[u8], len: u64) -> SparseFile {
        SparseFile {
            data: data.to_vec(),
            len: len.max(data.len() as u64),
        }
    }
}

impl Storage for SparseFile {
    fn name(&self) -> &str {
        "fuzz.qcow2"
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.fill(0);
        if let Ok(start) = usize::try_from(offset) {
            if start < self.data.len() {
                let n = (self.data.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&self.data[start..start + n]);
            }
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.name().to_string(),
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.len)
    }

    fn set_len(&self, _len: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.name().to_string(),
        })
    }
}

/// Opens `data`, the start of a 1 MiB file, as a qcow2 image: read-only,
/// without locks, with a small L2 cache; `None` when the open refuses it.
pub fn open_qcow2(data: &[u8]) -> Option<Qcow2> {
    let st: Arc<dyn Storage> = Arc::new(SparseFile::new(data, 1 << 20));
    let opts = OpenOptions {
        lock: false,
        cache_bytes: 1 << 20,
        ..Default::default()
    };
    Qcow2::open(st, None, &opts).ok()
}
