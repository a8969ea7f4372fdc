//! Where bytes live: the [`Storage`] trait and its backends.
//!
//! A backend has a handful of required methods (positioned read and write,
//! flush, length); everything else has a default built on them. The file
//! backend is what real images use; the memory backend serves tests and
//! scratch work, and the fault-injecting one (feature `test-utils`) exists
//! for crash and error injection in tests only.

#[cfg(feature = "test-utils")]
mod fault;
mod file;
mod lock;
mod memory;

#[cfg(feature = "test-utils")]
pub use fault::{FaultConfig, FaultStorage};
pub use file::FileStorage;
pub use lock::{LockMode, Permissions};
pub use memory::MemoryStorage;

use crate::error::Result;

/// Byte storage under an image: a file, a block device, memory.
///
/// All methods take `&self`: a backend serves many threads at once.
/// Reads past the end of the storage return zeros, as QEMU's file driver does
/// for qcow2 clusters that lie beyond a truncated file. Data buffers may be
/// changed by someone else during a call, as for [`crate::Image`]: a read
/// only stores into its buffer, a write copies its buffer out, and neither
/// relies on the buffer holding still.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Name used in error messages (usually the path).
    fn name(&self) -> &str;
    /// Reads `buf.len()` bytes at `offset`; bytes past the end read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`, growing the storage when needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// True when the storage holds no bytes.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> Result<()>;
    /// Makes `[offset, offset+len)` read as zeros, keeping it allocated when possible.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        write_zeroes_by_buffer(self, offset, len)
    }
    /// Makes `[offset, offset+len)` read as zeros and frees the space when possible.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }
    /// Reserves space for `[offset, offset+len)` so later writes cannot fail for lack of it.
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.saturating_add(len);
        if self.len()? < end {
            self.set_len(end)?;
        }
        Ok(())
    }
    /// Takes QEMU-compatible byte-range locks for `mode`; a no-op where the
    /// backend has no other users.
    fn lock(&self, _mode: LockMode) -> Result<()> {
        Ok(())
    }
    /// Splits `[offset, offset+len)` into `(start, length, is_data)` runs:
    /// holes (which read as zero) and data. Backends that cannot tell say data.
    fn data_extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        Ok(vec![(offset, len, true)])
    }
    /// The host file descriptor behind this storage, when it is a file:
    /// for readers that move bytes from it without copying (splice).
    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Bytes actually used on the host (for `info`'s actual-size).
    fn allocated_bytes(&self) -> Result<u64> {
        self.len()
    }
}

/// Zero-fill helper for backends without a native zeroing call.
pub(crate) fn write_zeroes_by_buffer<S: Storage + ?Sized>(
    s: &S,
    offset: u64,
    len: u64,
) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        s.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}
