//! An in-memory backend, for tests and scratch images.

use parking_lot::RwLock;
use std::sync::Arc;

use super::Storage;
use crate::error::Result;

/// Bytes in memory. Cloning shares the same bytes.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    data: Arc<RwLock<Vec<u8>>>,
    name: String,
}

impl MemoryStorage {
    /// An empty storage called `name`.
    pub fn new(name: &str) -> Self {
        MemoryStorage {
            data: Arc::default(),
            name: name.to_string(),
        }
    }

    /// A storage holding `bytes`.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Self {
        MemoryStorage {
            data: Arc::new(RwLock::new(bytes)),
            name: name.to_string(),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read();
        buf.fill(0);
        let len = data.len() as u64;
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut data = self.data.write();
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.data.read().len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.data.write().resize(len as usize, 0);
        Ok(())
    }
}
