//! What the server serves: anything that implements [`Export`]. The server
//! knows nothing of image formats; an export reports its size, what it
//! supports and its metadata contexts, and does the I/O (called on
//! blocking threads, so it may block).

/// An NBD error number, as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted (writes to a read-only export).
    Perm = 1,
    /// Input/output error.
    Io = 5,
    /// Cannot allocate memory.
    NoMem = 12,
    /// Invalid argument (out of range, bad flags).
    Inval = 22,
    /// No space left.
    NoSpc = 28,
    /// Value too large.
    Overflow = 75,
    /// Not supported (a fast zero that would not be fast).
    NotSup = 95,
    /// The server is shutting down.
    Shutdown = 108,
}

/// A failed export operation: the error to send and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The NBD error.
    pub errno: Errno,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure with `errno` and `message`.
    pub fn new(errno: Errno, message: impl Into<String>) -> Failure {
        Failure {
            errno,
            message: message.into(),
        }
    }
}

/// Result of an export operation.
pub type Outcome<T> = std::result::Result<T, Failure>;

/// One extent of a block status reply: its length and flags (for
/// `base:allocation`: [`crate::proto::STATE_HOLE`], [`crate::proto::STATE_ZERO`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusExtent {
    /// Length in bytes (nonzero).
    pub length: u64,
    /// The context's flags.
    pub flags: u32,
}

/// Where a stretch of an export's bytes lies, so that a read can send it
/// from the file to the socket without copying (see [`Export::placement`]).
#[derive(Clone, Copy, Debug)]
pub enum Placement<'a> {
    /// `len` bytes of the open file `fd` from `offset`.
    File {
        /// The file (the export's own).
        fd: std::os::fd::BorrowedFd<'a>,
        /// Where in the file.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// `len` bytes that read as zero.
    Zero {
        /// How many bytes.
        len: u64,
    },
    /// `len` bytes to read with [`Export::read_at`] (compressed, say).
    Read {
        /// How many bytes.
        len: u64,
    },
}

impl Placement<'_> {
    /// The stretch's length.
    pub fn len(&self) -> u64 {
        match *self {
            Placement::File { len, .. } | Placement::Zero { len } | Placement::Read { len } => len,
        }
    }

    /// True for an empty stretch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest addressable unit (a power of two, at most 64 KiB).
    pub minimum: u32,
    /// Efficient I/O size (a power of two, at least 512).
    pub preferred: u32,
    /// Largest read or write payload.
    pub maximum: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }
}

/// A disk the server exports.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// True when writes are refused.
    fn read_only(&self) -> bool;
    /// True when several connections may write and see each other's
    /// writes once flushed (`NBD_FLAG_CAN_MULTI_CONN`).
    fn multi_conn(&self) -> bool {
        false
    }
    /// A description for `NBD_INFO_DESCRIPTION`.
    fn description(&self) -> Option<String> {
        None
    }
    /// Block size constraints.
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes::default()
    }
    /// The metadata contexts this export offers (`base:allocation`, …).
    fn contexts(&self) -> Vec<String>;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Outcome<()>;
    /// Writes `buf` at `offset`; durable before returning with `fua`.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Outcome<()>;
    /// Makes `[offset, offset+len)` read as zeros; `may_trim` allows
    /// deallocating; `fast` asks to fail with [`Errno::NotSup`] rather than
    /// be slow.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast: bool,
        fua: bool,
    ) -> Outcome<()>;
    /// Discards `[offset, offset+len)` (contents then unspecified).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Outcome<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Outcome<()>;
    /// Prefetches `[offset, offset+len)` (a hint).
    fn cache(&self, _offset: u64, _len: u64) -> Outcome<()> {
        Ok(())
    }
    /// Where `[offset, offset+len)` lies: consecutive placements covering
    /// exactly the range (their zeros as `base:allocation` reports them).
    /// `None`, the default, when the export cannot tell, or when its bytes
    /// may move while a reply is on its way (any writable export); reads
    /// then go through [`Export::read_at`]. Called on the same threads.
    fn placement(&self, _offset: u64, _len: u64) -> Outcome<Option<Vec<Placement<'_>>>> {
        Ok(None)
    }
    /// Status of `[offset, offset+len)` in context `context` (one of
    /// [`Export::contexts`]): consecutive extents from `offset`, at least
    /// one, covering at most the range (the server trims the rest).
    fn block_status(&self, context: &str, offset: u64, len: u64) -> Outcome<Vec<StatusExtent>>;
}
