//! The backup's side of a copy-before-write view: a read-only [`Image`]
//! of the disk as it was when the view started. Each granule comes from
//! the scratch once the guest has overwritten it, else from the live
//! image, held against a concurrent copy while it is read.

use std::sync::Arc;

use super::granules::Place;
use super::{CbwStats, Shared};
use crate::error::{Error, Result};
use crate::image::{check_range, push_extent, Extent, Format, Image};

/// A point in time of a live disk (see the module).
#[derive(Debug)]
pub struct CbwView {
    shared: Arc<Shared>,
}

impl CbwView {
    pub(super) fn new(shared: Arc<Shared>) -> CbwView {
        CbwView { shared }
    }

    /// Says that `[offset, offset+len)` is no longer needed (read already,
    /// or of no interest): the guest's writes there are not copied any
    /// more, and what the scratch held of it is freed. Only granules the
    /// range covers whole are given up.
    pub fn done(&self, offset: u64, len: u64) -> Result<()> {
        let s = &self.shared;
        check_range(self.path(), s.size, offset, len)?;
        let mut free = Vec::new();
        {
            let mut st = s.granules.lock();
            for g in s.whole(offset, len) {
                if st.give_up(g) {
                    free.push(g);
                }
            }
        }
        s.free(&free);
        Ok(())
    }

    /// What the view has cost so far.
    pub fn stats(&self) -> CbwStats {
        let s = &self.shared;
        let needed = s.granules.lock().needed.count() * s.granule;
        CbwStats {
            copied: s.copied.load(std::sync::atomic::Ordering::Relaxed),
            scratch_bytes: s.scratch.actual_size().unwrap_or(0),
            needed: needed.min(s.size),
        }
    }

    /// Why the view is broken (the backup failed, the guest went on), if
    /// it is.
    pub fn broken(&self) -> Option<&str> {
        self.shared.broken()
    }

    /// The scratch file.
    pub fn scratch(&self) -> &std::path::Path {
        &self.shared.scratch_path
    }

    fn check_broken(&self) -> Result<()> {
        match self.shared.broken() {
            Some(why) => Err(Error::invalid(
                self.path(),
                format!("the point-in-time view is broken: {why}"),
            )),
            None => Ok(()),
        }
    }
}

/// Granules a read holds at once.
const HOLD: u64 = 1;

impl CbwView {
    /// The error of a second look at granule `g`, given up after a read
    /// and written by the guest since.
    fn given_up(&self, g: u64) -> Error {
        Error::invalid(
            self.path(),
            format!(
                "the point-in-time view was read at offset {} already and given up; the guest has written there since",
                g * self.shared.granule
            ),
        )
    }

    /// Reads `buf` at `offset` with its granules held against guest
    /// copies, each run of granules from the scratch or the live image at
    /// once; then, for a read-once view, gives up the granules it covered
    /// whole, freeing their scratch copies.
    fn read_held(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.shared;
        let end = offset + buf.len() as u64;
        let span = s.span(offset, buf.len() as u64);
        let places = s
            .granules
            .read(span.clone())
            .map_err(|g| self.given_up(g))?;
        let mut result = Ok(());
        let mut at = offset;
        while at < end && result.is_ok() {
            let here = places[(at / s.granule - span.start) as usize];
            let mut stop = ((at / s.granule + 1) * s.granule).min(end);
            while stop < end && places[(stop / s.granule - span.start) as usize] == here {
                stop = ((stop / s.granule + 1) * s.granule).min(end);
            }
            let part = &mut buf[(at - offset) as usize..(stop - offset) as usize];
            result = match here {
                Place::Scratch => s.scratch.read_at(part, at),
                Place::Live => s.source.read_at(part, at),
                Place::Zero => {
                    part.fill(0);
                    Ok(())
                }
            };
            at = stop;
        }
        let whole = match result {
            Ok(()) if s.read_once => s.whole(offset, buf.len() as u64),
            _ => 0..0,
        };
        let free = s.granules.end_read(span, whole);
        s.free(&free);
        result
    }
}

impl CbwView {
    /// The common case of a backup's read: every granule of the range is
    /// still in the live image. It is read at once without holding
    /// anything (no guest write waits for it at all), then checked: a
    /// guest write to a needed granule copies it to the scratch (or notes
    /// zeros) before it lands, so a granule still in the live image and
    /// still needed afterwards was read as it was at the start. The others
    /// are read again, held. False (nothing read) when some granule is
    /// elsewhere already.
    fn read_unheld(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let s = &self.shared;
        let len = buf.len() as u64;
        let span = s.span(offset, len);
        let Some(needed) = s.granules.peek_live(span.clone()) else {
            return Ok(false);
        };
        s.source.read_at(buf, offset)?;
        let whole = match s.read_once {
            true => s.whole(offset, len),
            false => 0..0,
        };
        let (redo, free) = s.granules.settle(span, &needed, whole);
        s.free(&free);
        let end = offset + len;
        for g in redo {
            let (start, glen) = s.bytes(g);
            let (at, stop) = (start.max(offset), (start + glen).min(end));
            self.read_held(
                &mut buf[(at - offset) as usize..(stop - offset) as usize],
                at,
            )?;
        }
        Ok(true)
    }
}

impl Image for CbwView {
    fn path(&self) -> &str {
        self.shared.source.path()
    }
    fn format(&self) -> Format {
        Format::Raw
    }
    fn size(&self) -> u64 {
        self.shared.size
    }
    fn writable(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.shared;
        check_range(self.path(), s.size, offset, buf.len() as u64)?;
        self.check_broken()?;
        if !self.read_unheld(buf, offset)? {
            // At most HOLD granules at a time: a guest write waits for a
            // reader no longer than the read of that much.
            let end = offset + buf.len() as u64;
            let mut at = offset;
            while at < end {
                let stop = ((at / s.granule + HOLD) * s.granule).min(end);
                let part = &mut buf[(at - offset) as usize..(stop - offset) as usize];
                self.read_held(part, at)?;
                at = stop;
            }
        }
        // A copy that failed while this read ran may have let the guest
        // write over what was read.
        self.check_broken()
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.path().to_string(),
        })
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.path().to_string(),
        })
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // What an NBD client's trim of the view means: read, not needed.
        self.done(offset, len)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn resize(&self, _new_size: u64) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.path().to_string(),
        })
    }
    /// Granules in the scratch are data, those that were zeros read as
    /// zeros; the others are as the live image has them, unchanged since
    /// the view started (any change would have copied them first).
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let s = &self.shared;
        check_range(self.path(), s.size, offset, len)?;
        self.check_broken()?;
        let span = s.span(offset, len);
        let places = s
            .granules
            .read(span.clone())
            .map_err(|g| self.given_up(g))?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut at = offset;
        let mut result = Ok(());
        while at < end {
            let g = at / s.granule;
            let here = places[(g - span.start) as usize];
            let mut stop = ((g + 1) * s.granule).min(end);
            while stop < end && places[(stop / s.granule - span.start) as usize] == here {
                stop = ((stop / s.granule + 1) * s.granule).min(end);
            }
            let kept = |zero: bool| Extent {
                start: at,
                length: stop - at,
                depth: 0,
                present: true,
                zero,
                data: !zero,
                compressed: false,
                offset: None,
            };
            match here {
                Place::Scratch => push_extent(&mut out, kept(false)),
                Place::Zero => push_extent(&mut out, kept(true)),
                Place::Live => match s.source.block_status(at, stop - at) {
                    Ok(list) => {
                        for mut e in list {
                            e.offset = None;
                            push_extent(&mut out, e);
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            }
            at = stop;
        }
        s.granules.end_read(span, 0..0);
        result.map(|()| out)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }
    fn actual_size(&self) -> Result<u64> {
        Ok(0)
    }
}
