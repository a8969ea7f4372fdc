//! An image chain as an NBD export: reads, writes, zeroes and discards go
//! to the engine; `base:allocation` comes from the chain's block status
//! as qemu-nbd reports it (a hole where no layer stores data, zero where
//! the bytes read as zero).

use strata_image::Image;
use strata_nbd::proto::{STATE_HOLE, STATE_ZERO};
use strata_nbd::{Errno, Export, Failure, Outcome, StatusExtent};

/// The `base:allocation` context.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// An open image chain served over NBD.
pub struct ImageExport {
    img: std::sync::Arc<dyn Image>,
    read_only: bool,
    description: String,
}

impl ImageExport {
    /// Serves `img` (read-only unless it was opened writable).
    pub fn new(img: std::sync::Arc<dyn Image>) -> ImageExport {
        let read_only = !img.writable();
        let description = img.path().to_string();
        ImageExport {
            img,
            read_only,
            description,
        }
    }
}

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
        vec![BASE_ALLOCATION.to_string()]
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

    fn block_status(&self, context: &str, offset: u64, len: u64) -> Outcome<Vec<StatusExtent>> {
        if context != BASE_ALLOCATION {
            return Err(Failure::new(
                Errno::Inval,
                format!("no metadata context '{context}'"),
            ));
        }
        let mut out: Vec<StatusExtent> = Vec::new();
        for e in self.img.block_status(offset, len).map_err(failed)? {
            let flags = if e.data { 0 } else { STATE_HOLE } | if e.zero { STATE_ZERO } else { 0 };
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
