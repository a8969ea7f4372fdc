//! `compare`: do two images show the guest the same bytes? As qemu-img
//! compare: the common part must match, and the extra part of the larger
//! image must read as zeros.

use super::{Progress, CHUNK};
use crate::error::Result;
use crate::image::Image;

/// The outcome of [`compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// Same guest contents.
    Identical,
    /// The first 512-byte sector that differs starts here.
    Mismatch(u64),
}

/// Zero-ness of `[pos, pos+n)` by block status: `Some(true)` all zero.
fn all_zero(img: &dyn Image, pos: u64, n: u64) -> Result<bool> {
    Ok(img.block_status(pos, n)?.iter().all(|e| e.zero))
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.chunks(512)
        .zip(b.chunks(512))
        .position(|(x, y)| x != y)
        .map(|i| i * 512)
}

/// Compares the guest contents of `a` and `b`.
pub fn compare(a: &dyn Image, b: &dyn Image, progress: Progress) -> Result<CompareResult> {
    let common = a.size().min(b.size());
    let total = a.size().max(b.size());
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < common {
        let n = CHUNK.min(common - pos);
        if all_zero(a, pos, n)? && all_zero(b, pos, n)? {
            pos += n;
            progress(pos, total);
            continue;
        }
        let (xa, xb) = (&mut ba[..n as usize], &mut bb[..n as usize]);
        a.read_at(xa, pos)?;
        b.read_at(xb, pos)?;
        if let Some(d) = first_diff(xa, xb) {
            return Ok(CompareResult::Mismatch(pos + d as u64));
        }
        pos += n;
        progress(pos, total);
    }
    let larger: &dyn Image = if a.size() > b.size() { a } else { b };
    while pos < total {
        let n = CHUNK.min(total - pos);
        if !all_zero(larger, pos, n)? {
            let buf = &mut ba[..n as usize];
            larger.read_at(buf, pos)?;
            if let Some(i) = buf.chunks(512).position(|c| c.iter().any(|&x| x != 0)) {
                return Ok(CompareResult::Mismatch(pos + i as u64 * 512));
            }
        }
        pos += n;
        progress(pos, total);
    }
    Ok(CompareResult::Identical)
}
