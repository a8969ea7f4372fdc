//! An image chain as an NBD export: reads, writes, zeroes and discards go
//! to the engine. Metadata contexts, as qemu-nbd reports them:
//! `base:allocation` from the chain's block status (a hole where no layer
//! stores data, zero where the bytes read as zero); `qemu:dirty-bitmap:NAME`
//! for each bitmap named at export time, through the chain (the union over
//! the layers that hold it, taken when the export opens, so such exports
//! are read-only); `qemu:allocation-depth` (0 unallocated, 1 the top layer,
//! 2 its backing file, …).

use strata_image::Image;
use strata_nbd::proto::{STATE_HOLE, STATE_ZERO};
use strata_nbd::{Errno, Export, Failure, Outcome, Placement, StatusExtent};

/// The `base:allocation` context.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The `qemu:allocation-depth` context.
pub const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";
/// Prefix of the `qemu:dirty-bitmap:NAME` contexts.
pub const DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";
/// `NBD_STATE_DIRTY` of the dirty-bitmap contexts.
const STATE_DIRTY: u32 = 1;

/// An open image chain served over NBD.
pub struct ImageExport {
    img: std::sync::Arc<dyn Image>,
    read_only: bool,
    description: String,
    /// Exported bitmaps: name and dirty ranges (sorted, disjoint).
    bitmaps: Vec<(String, Vec<(u64, u64)>)>,
    allocation_depth: bool,
    /// Some layer of the chain keeps its data in a plain file (see
    /// [`Export::placement`]); views and filters do not.
    in_files: bool,
}

impl ImageExport {
    /// Serves `img` (read-only unless it was opened writable), with the
    /// dirty bitmaps `bitmaps` (found through the chain; the image must be
    /// read-only then) and, if asked, the allocation depth.
    pub fn new(
        img: std::sync::Arc<dyn Image>,
        bitmaps: &[String],
        allocation_depth: bool,
    ) -> strata_image::Result<ImageExport> {
        let read_only = !img.writable();
        let description = img.path().to_string();
        let bitmaps = bitmaps
            .iter()
            .map(|b| Ok((b.clone(), strata_image::dirty_since(img.as_ref(), b)?)))
            .collect::<strata_image::Result<_>>()?;
        let in_files =
            std::iter::successors(Some(&img), |l| l.backing()).any(|l| l.host_fd().is_some());
        Ok(ImageExport {
            img,
            read_only,
            description,
            bitmaps,
            allocation_depth,
            in_files,
        })
    }
}

impl ImageExport {
    /// Adds the context `qemu:dirty-bitmap:NAME` reporting `ranges`
    /// (sorted, disjoint) as dirty: for a backup's changes since a
    /// checkpoint, worked out by the caller.
    pub fn add_dirty_ranges(&mut self, name: &str, ranges: Vec<(u64, u64)>) {
        self.bitmaps.push((name.to_string(), ranges));
    }
}

/// Extents of `[offset, offset+len)` from sorted disjoint `ranges`: dirty
/// inside them, clean between.
fn range_extents(ranges: &[(u64, u64)], offset: u64, len: u64) -> Vec<StatusExtent> {
    let end = offset + len;
    let mut out: Vec<StatusExtent> = Vec::new();
    let mut push = |length: u64, flags: u32| {
        if length == 0 {
            return;
        }
        match out.last_mut() {
            Some(l) if l.flags == flags => l.length += length,
            _ => out.push(StatusExtent { length, flags }),
        }
    };
    let first = ranges.partition_point(|&(s, l)| s + l <= offset);
    let mut at = offset;
    for &(s, l) in &ranges[first..] {
        if s >= end {
            break;
        }
        let (s, e) = (s.max(at), (s + l).min(end));
        push(s - at, 0);
        push(e - s, STATE_DIRTY);
        at = e;
    }
    push(end - at, 0);
    out
}

/// The file of the layer `depth` below `img` (0: `img` itself).
fn layer_fd(img: &std::sync::Arc<dyn Image>, depth: u32) -> Option<std::os::fd::BorrowedFd<'_>> {
    let mut layer = img;
    for _ in 0..depth {
        layer = layer.backing()?;
    }
    layer.host_fd()
}

/// An engine error as an NBD error.
fn failed(e: strata_image::Error) -> Failure {
    let errno = match &e {
        strata_image::Error::ReadOnly { .. } => Errno::Perm,
        _ => Errno::Io,
    };
    Failure::new(errno, e.to_string())
}

impl Export for ImageExport {
    fn size(&self) -> u64 {
        self.img.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    /// Every connection shares this one open image: a flush on any of
    /// them makes every completed write durable.
    fn multi_conn(&self) -> bool {
        true
    }

    fn description(&self) -> Option<String> {
        Some(self.description.clone())
    }

    fn contexts(&self) -> Vec<String> {
        let mut c = vec![BASE_ALLOCATION.to_string()];
        if self.allocation_depth {
            c.push(ALLOCATION_DEPTH.to_string());
        }
        c.extend(
            self.bitmaps
                .iter()
                .map(|(b, _)| format!("{DIRTY_BITMAP}{b}")),
        );
        c
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Outcome<()> {
        self.img.read_at(buf, offset).map_err(failed)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Outcome<()> {
        self.img.write_at(buf, offset).map_err(failed)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        _fast: bool,
        fua: bool,
    ) -> Outcome<()> {
        // Zeroing is a metadata change in qcow2 and a hole punch in raw:
        // fast either way.
        self.img
            .write_zeroes(offset, len, may_trim)
            .map_err(failed)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Outcome<()> {
        self.img.discard(offset, len).map_err(failed)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Outcome<()> {
        self.img.flush().map_err(failed)
    }

    /// A read-only chain's plain data clusters lie in its layers' files:
    /// reads can send them without copying. (A writable image's clusters
    /// may move, or be freed and reused, while a reply is on its way.)
    /// An image with no layer in a file (a backup's point-in-time view)
    /// has nothing to send without copying: its reads are copied at once.
    fn placement(&self, offset: u64, len: u64) -> Outcome<Option<Vec<Placement<'_>>>> {
        if !self.read_only || !self.in_files {
            return Ok(None);
        }
        let mut out = Vec::new();
        for e in self.img.block_status(offset, len).map_err(failed)? {
            let file = match e.offset {
                Some(at) if e.data && !e.zero && !e.compressed => {
                    layer_fd(&self.img, e.depth).map(|fd| (fd, at))
                }
                _ => None,
            };
            out.push(match file {
                _ if e.zero => Placement::Zero { len: e.length },
                Some((fd, at)) => Placement::File {
                    fd,
                    offset: at,
                    len: e.length,
                },
                None => Placement::Read { len: e.length },
            });
        }
        Ok(Some(out))
    }

    fn block_status(&self, context: &str, offset: u64, len: u64) -> Outcome<Vec<StatusExtent>> {
        if let Some(b) = context.strip_prefix(DIRTY_BITMAP) {
            if let Some((_, ranges)) = self.bitmaps.iter().find(|(n, _)| n == b) {
                return Ok(range_extents(ranges, offset, len));
            }
        }
        let depth = match context {
            BASE_ALLOCATION => false,
            ALLOCATION_DEPTH if self.allocation_depth => true,
            _ => {
                return Err(Failure::new(
                    Errno::Inval,
                    format!("no metadata context '{context}'"),
                ))
            }
        };
        let mut out: Vec<StatusExtent> = Vec::new();
        for e in self.img.block_status(offset, len).map_err(failed)? {
            let flags = if depth {
                if e.present {
                    e.depth + 1
                } else {
                    0
                }
            } else {
                (if e.data { 0 } else { STATE_HOLE }) | if e.zero { STATE_ZERO } else { 0 }
            };
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += e.length,
                _ => out.push(StatusExtent {
                    length: e.length,
                    flags,
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_ranges_become_extents() {
        let r = [(0, 10), (20, 5), (40, 10)];
        let ext: Vec<(u64, u32)> = range_extents(&r, 5, 40)
            .into_iter()
            .map(|e| (e.length, e.flags))
            .collect();
        assert_eq!(ext, [(5, 1), (10, 0), (5, 1), (15, 0), (5, 1)]);
        assert_eq!(range_extents(&r, 10, 10)[0].flags, 0);
        assert_eq!(range_extents(&[], 0, 7)[0].length, 7);
    }
}
