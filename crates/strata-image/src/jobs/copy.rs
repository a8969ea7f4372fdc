//! The copies block jobs make, chunk by chunk, each chunk counted, paced
//! and checked for cancel by the job's [`Control`].

use super::{Control, Tracked};
use crate::error::Result;
use crate::image::Image;
use crate::ops::{is_zero, CHUNK};

/// The ranges of `top`'s chain held by the layers above depth `below`
/// (and from depth `from` down): `(start, length, zero)`.
fn held_between(top: &dyn Image, from: u32, below: u32) -> Result<Vec<(u64, u64, bool)>> {
    Ok(top
        .block_status(0, top.size())?
        .into_iter()
        .filter(|e| e.present && e.depth >= from && e.depth < below)
        .map(|e| (e.start, e.length, e.zero))
        .collect())
}

/// Moves `[pos, pos+len)` as `top`'s chain reads it into `dst`, in chunks
/// (zeros as zeroes).
fn move_range(
    top: &dyn Image,
    dst: &dyn Image,
    pos: u64,
    len: u64,
    buf: &mut Vec<u8>,
    ctl: &Control,
) -> Result<()> {
    let end = pos + len;
    let mut at = pos;
    while at < end {
        let n = CHUNK.min(end - at);
        buf.resize(n as usize, 0);
        top.read_at(buf, at)?;
        if is_zero(buf) {
            dst.write_zeroes(at, n, false)?;
        } else {
            dst.write_at(buf, at)?;
        }
        ctl.advance(dst.path(), n)?;
        at += n;
    }
    Ok(())
}

/// A commit's first pass: everything the layers from `top` down to (not
/// including) depth `base_depth` hold, written into `base` (a writable
/// handle of the image at that depth), then flushed.
pub fn copy_above(top: &dyn Image, base_depth: u32, base: &dyn Image, ctl: &Control) -> Result<()> {
    let ranges = held_between(top, 0, base_depth)?;
    ctl.add_total(ranges.iter().map(|r| r.1).sum());
    let mut buf = Vec::new();
    for (pos, len, zero) in ranges {
        ctl.check(base.path())?;
        if zero {
            base.write_zeroes(pos, len, false)?;
            ctl.skip(base.path(), len)?;
        } else {
            move_range(top, base, pos, len, &mut buf, ctl)?;
        }
    }
    base.flush()
}

/// Copies `ranges` as `top`'s chain reads them into `base`, then flushes
/// (an active commit catching up with what the guest wrote since).
pub fn copy_ranges(
    top: &dyn Image,
    ranges: &[(u64, u64)],
    base: &dyn Image,
    ctl: &Control,
) -> Result<()> {
    ctl.add_total(ranges.iter().map(|r| r.1).sum());
    let mut buf = Vec::new();
    for &(pos, len) in ranges {
        move_range(top, base, pos, len, &mut buf, ctl)?;
    }
    base.flush()
}

/// blockpull: copies into the top layer (behind `tracked`) what its
/// backing files down to (not including) depth `base_depth` hold, so that
/// they can be dropped from the chain. Each chunk is copied with the
/// range held against guest writes, and only where the top layer still
/// holds nothing: what the guest wrote is never overwritten.
pub fn stream(tracked: &Tracked, base_depth: u32, ctl: &Control) -> Result<()> {
    let top = tracked.inner().as_ref();
    let ranges = held_between(top, 1, base_depth)?;
    ctl.add_total(ranges.iter().map(|r| r.1).sum());
    let mut buf = Vec::new();
    for (pos, len, _) in ranges {
        let end = pos + len;
        let mut at = pos;
        while at < end {
            let n = CHUNK.min(end - at);
            tracked.with_held(at, n, || -> Result<()> {
                for e in top.block_status(at, n)? {
                    if e.present && e.depth >= 1 && e.depth < base_depth {
                        if e.zero {
                            top.write_zeroes(e.start, e.length, false)?;
                        } else {
                            buf.resize(e.length as usize, 0);
                            top.read_at(&mut buf, e.start)?;
                            top.write_at(&buf, e.start)?;
                        }
                    }
                }
                Ok(())
            })?;
            ctl.advance(top.path(), n)?;
            at += n;
        }
    }
    top.flush()
}
