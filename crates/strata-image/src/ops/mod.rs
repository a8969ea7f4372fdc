//! Whole-image operations built on the [`crate::Image`] trait: convert,
//! compare, commit and rebase. Each walks block status so that holes and
//! zeros cost nothing, and reports progress through a callback.

mod commit;
mod compare;
mod convert;
mod copy;
pub mod external;
mod rebase;

pub use commit::{chain_member, commit, merge_bitmaps, CommitOptions};
pub use compare::{compare, CompareResult};
pub use convert::{convert, convert_dirty, ConvertOptions};
pub use rebase::{rebase, RebaseOptions};

/// Progress callback: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// A callback that ignores progress.
pub fn no_progress(_done: u64, _total: u64) {}

/// Bytes moved per read/write while copying.
pub(crate) const CHUNK: u64 = 2 << 20;

/// True when every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    let words_zero = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0);
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}
