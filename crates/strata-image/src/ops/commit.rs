//! `commit`: merge what the layers above a base image hold into that base,
//! then (unless told not to) empty the top image, as qemu-img commit does.
//! The bitmaps of the committed layers are merged into the base's bitmaps
//! of the same names (made, disabled, where the base has none), so what
//! changed since each bitmap stays known if the upper layers go away.

use super::copy::parallel_chunks;
use super::{Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::qcow2::BitmapEdit;

/// Options of [`commit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitOptions {
    /// Chain depth of the base image (1 = the top's immediate backing file).
    pub base_depth: u32,
    /// Leave the top image as it is (qemu-img's `-d`; implied by `-b`).
    pub keep_top: bool,
    /// Leave the base's bitmaps alone (the caller merges them itself, in a
    /// transaction of its own).
    pub skip_bitmaps: bool,
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
    if !opts.skip_bitmaps {
        merge_bitmaps(top, opts.base_depth, base, false)?;
    }
    if !opts.keep_top {
        match top.placement() {
            Some(p) => p.make_empty()?,
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

/// A bitmap of a committed layer: name, granularity, dirty extents, and
/// whether the top layer's copy is enabled.
type Found = (String, u64, Vec<(u64, u64)>, bool);

/// Merges every consistent bitmap of the `base_depth` layers from `top`
/// down into `base`'s bitmap of the same name (made, disabled, where
/// `base` has none), as one commit in `base`; with `enable`, those the top
/// layer tracks with are enabled in `base` too (it becomes the top: an
/// active commit's pivot). Data is already durable in the base, and the
/// upper layers keep their bitmaps, so a crash before this leaves every
/// change still recorded above.
pub fn merge_bitmaps(
    top: &dyn Image,
    base_depth: u32,
    base: &dyn Image,
    enable: bool,
) -> Result<()> {
    // (name, granularity, dirty extents) of every bitmap found above the base.
    let mut found: Vec<Found> = Vec::new();
    for depth in 0..base_depth {
        let Some(q) = chain_member(top, depth).and_then(|l| l.dirty_bitmaps()) else {
            continue;
        };
        for b in q.bitmaps()?.into_iter().filter(|b| b.usable()) {
            let extents = q.bitmap_dirty(&b.name)?;
            let tracking = depth == 0 && b.enabled();
            match found.iter_mut().find(|f| f.0 == b.name) {
                Some(f) => {
                    f.2.extend(extents);
                    f.3 |= tracking;
                }
                None => found.push((b.name, b.granularity, extents, tracking)),
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let Some(qb) = base.dirty_bitmaps() else {
        tracing::warn!(
            "{}: a raw base keeps no bitmaps; those of the committed layers are not merged",
            base.path()
        );
        return Ok(());
    };
    let have = qb.bitmaps()?;
    let mut edits = Vec::new();
    for (name, granularity, extents, tracking) in found {
        match have.iter().find(|b| b.name == name) {
            // Left inconsistent by an unclean QEMU: nothing to merge into.
            Some(b) if !b.usable() => continue,
            Some(_) => {}
            None => edits.push(BitmapEdit::Add {
                name: name.clone(),
                granularity: Some(granularity),
                enabled: false,
            }),
        }
        if enable && tracking {
            edits.push(BitmapEdit::SetEnabled(name.clone(), true));
        }
        edits.push(BitmapEdit::Merge {
            target: name,
            extents,
        });
    }
    qb.bitmap_edits(&edits)
}
