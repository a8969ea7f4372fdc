//! `commit`: merge what the layers above a base image hold into that base,
//! then (unless told not to) empty the top image, as qemu-img commit does.

use super::copy::parallel_chunks;
use super::{Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::qcow2::Qcow2;

/// Options of [`commit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitOptions {
    /// Chain depth of the base image (1 = the top's immediate backing file).
    pub base_depth: u32,
    /// Leave the top image as it is (qemu-img's `-d`; implied by `-b`).
    pub keep_top: bool,
}

/// The image `depth` levels below `top`.
pub fn chain_member(top: &dyn Image, depth: u32) -> Option<&dyn Image> {
    let mut cur = top;
    for _ in 0..depth {
        cur = cur.backing()?.as_ref();
    }
    Some(cur)
}

/// Copies everything the layers above the base define into the base.
pub fn commit(top: &dyn Image, opts: &CommitOptions, progress: Progress) -> Result<()> {
    if opts.base_depth == 0 {
        return Err(Error::invalid(
            top.path(),
            "cannot commit an image into itself",
        ));
    }
    let base = chain_member(top, opts.base_depth).ok_or_else(|| {
        Error::invalid(top.path(), "the image has no backing file to commit into")
    })?;
    if !base.writable() {
        return Err(Error::ReadOnly {
            path: base.path().to_string(),
        });
    }
    let size = top.size();
    if base.size() < size {
        base.resize(size)?;
    }
    let mut ranges = Vec::new();
    let mut skipped = 0;
    for ext in top.block_status(0, size)? {
        if !ext.present || ext.depth >= opts.base_depth {
            skipped += ext.length;
        } else if ext.zero {
            base.write_zeroes(ext.start, ext.length, false)?;
            skipped += ext.length;
        } else {
            ranges.push((ext.start, ext.length));
        }
    }
    parallel_chunks(&ranges, CHUNK, size, skipped, progress, &|data, pos| {
        top.read_at(data, pos)?;
        base.write_at(data, pos)
    })?;
    base.flush()?;
    if !opts.keep_top {
        match top.as_any().downcast_ref::<Qcow2>() {
            Some(q) => q.make_empty()?,
            None => {
                return Err(Error::unsupported(
                    top.path(),
                    "emptying a raw image after commit (use -d)",
                ))
            }
        }
    }
    Ok(())
}
