//! `convert`: copy the guest contents of one image into another, skipping
//! what reads as zero, optionally compressing, optionally only what the
//! source's top layer holds (for a target that has its own backing file).

use super::copy::parallel_chunks;
use super::{is_zero, Progress, CHUNK};
use crate::capability::Placement;
use crate::error::Result;
use crate::image::Image;

/// Options of `convert`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvertOptions {
    /// Write whole clusters compressed (the target must be qcow2).
    pub compress: bool,
    /// The target has a backing file with the same contents as the source's
    /// backing: copy only what the source's top layer defines.
    pub top_only: bool,
    /// Granularity of zero detection in data (qemu-img's `-S`, default 4 KiB).
    pub sparse_size: u64,
}

/// Copies `src` into `dst` (which reads as zeros, or as the source's backing
/// with `top_only`). Both must have the same size.
pub fn convert(
    src: &dyn Image,
    dst: &dyn Image,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size().min(dst.size());
    let compressed = if opts.compress {
        dst.placement().map(|p| (p, p.layout().cluster_size))
    } else {
        None
    };
    let grain = if let Some((_, cs)) = compressed {
        cs
    } else if opts.sparse_size == 0 {
        4096
    } else {
        opts.sparse_size
    };
    let chunk = if let Some((_, cs)) = compressed {
        cs.max(CHUNK)
    } else {
        CHUNK
    };
    // Ranges to copy as data; zero runs the top layer defines over a backing
    // file are written as zeros first; everything else is skipped.
    let mut ranges = Vec::new();
    let mut skipped = 0;
    for ext in src.block_status(0, size)? {
        let wanted = if opts.top_only {
            ext.depth == 0 && ext.present
        } else {
            !ext.zero
        };
        if !wanted {
            skipped += ext.length;
        } else if ext.zero {
            dst.write_zeroes(ext.start, ext.length, false)?;
            skipped += ext.length;
        } else {
            ranges.push((ext.start, ext.length));
        }
    }
    parallel_chunks(&ranges, chunk, size, skipped, progress, &|data, pos| {
        src.read_at(data, pos)?;
        match compressed {
            Some((p, _)) => write_clusters_compressed(dst, p, data, pos, grain, opts.top_only),
            None => write_nonzero(dst, data, pos, grain, opts.top_only),
        }
    })
}

/// Copies exactly the guest ranges `dirty` of `src` into `dst`, zeros
/// included (the target's backing file holds older contents there): the
/// data of an incremental backup, with `dirty` from a bitmap
/// ([`crate::dirty_since`]).
pub fn convert_dirty(
    src: &dyn Image,
    dst: &dyn Image,
    dirty: &[(u64, u64)],
    progress: Progress,
) -> Result<()> {
    let size = src.size().min(dst.size());
    let total: u64 = dirty.iter().map(|&(_, l)| l).sum();
    let mut ranges = Vec::new();
    let mut skipped = 0;
    for &(start, len) in dirty {
        if start >= size {
            continue;
        }
        for ext in src.block_status(start, len.min(size - start))? {
            if ext.zero {
                dst.write_zeroes(ext.start, ext.length, false)?;
                skipped += ext.length;
            } else {
                ranges.push((ext.start, ext.length));
            }
        }
    }
    parallel_chunks(&ranges, CHUNK, total, skipped, progress, &|data, pos| {
        src.read_at(data, pos)?;
        dst.write_at(data, pos)
    })
}

/// Writes the runs of `data` that are not all zero, in `grain` units.
/// With a backing file below the target, zero runs must be written too.
fn write_nonzero(
    dst: &dyn Image,
    data: &[u8],
    pos: u64,
    grain: u64,
    keep_zeros: bool,
) -> Result<()> {
    if keep_zeros {
        return dst.write_at(data, pos);
    }
    let mut run_start: Option<usize> = None;
    let mut at = 0usize;
    let first = (grain - pos % grain).min(data.len() as u64) as usize;
    let mut step = first;
    while at < data.len() {
        let end = (at + step).min(data.len());
        let zero = is_zero(&data[at..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(s)) => {
                dst.write_at(&data[s..at], pos + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
        step = grain as usize;
    }
    if let Some(s) = run_start {
        dst.write_at(&data[s..], pos + s as u64)?;
    }
    Ok(())
}

fn write_clusters_compressed(
    q: &dyn Image,
    p: &dyn Placement,
    data: &[u8],
    pos: u64,
    cs: u64,
    keep_zeros: bool,
) -> Result<()> {
    let mut at = 0usize;
    while at < data.len() {
        let guest = pos + at as u64;
        let cstart = guest - guest % cs;
        let cend = (cstart + cs).min(q.size());
        let n = ((cend - guest) as usize).min(data.len() - at);
        let piece = &data[at..at + n];
        if !keep_zeros && is_zero(piece) {
            // Nothing to write.
        } else if guest == cstart && (n as u64 == cs || cend == q.size()) {
            p.write_compressed(guest, piece)?;
        } else {
            q.write_at(piece, guest)?;
        }
        at += n;
    }
    Ok(())
}
