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

/// The most a held read holds at once (at least one granule): a guest
/// write waits for a reader no longer than the read of that much.
const HOLD_BYTES: u64 = 64 << 10;

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
    /// The common case of a backup's read: most granules of the range are
    /// still in the live image. The range is read from there at once
    /// without holding anything (no guest write waits for it at all), then
    /// checked: a guest write to a needed granule copies it to the scratch
    /// (or notes zeros) before it lands, so a granule still in the live
    /// image and still needed afterwards was read as it was at the start.
    /// The others (elsewhere already, or changed meanwhile) are read again,
    /// held. False (nothing read) when no granule is in the live image.
    fn read_unheld(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let s = &self.shared;
        let len = buf.len() as u64;
        let span = s.span(offset, len);
        let Some(seen) = s.granules.peek_live(span.clone()) else {
            return Ok(false);
        };
        s.source.read_at(buf, offset)?;
        let whole = match s.read_once {
            true => s.whole(offset, len),
            false => 0..0,
        };
        let (redo, free) = s.granules.settle(span, &seen, whole);
        s.free(&free);
        // Adjacent granules to read again go together.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for g in redo {
            match runs.last_mut() {
                Some((_, end)) if *end == g => *end += 1,
                _ => runs.push((g, g + 1)),
            }
        }
        let end = offset + len;
        for (first, last) in runs {
            let at = (first * s.granule).max(offset);
            let stop = (last * s.granule).min(end);
            self.read_held_in_parts(
                &mut buf[(at - offset) as usize..(stop - offset) as usize],
                at,
            )?;
        }
        Ok(true)
    }

    /// The extents of `[offset, offset+len)` with its granules where
    /// `places` says (from the first granule of the range on).
    fn extents(&self, offset: u64, len: u64, places: &[Place]) -> Result<Vec<Extent>> {
        let s = &self.shared;
        let first = offset / s.granule;
        let mut out = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let g = at / s.granule;
            let here = places[(g - first) as usize];
            let mut stop = ((g + 1) * s.granule).min(end);
            while stop < end && places[(stop / s.granule - first) as usize] == here {
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
                Place::Live => {
                    for mut e in s.source.block_status(at, stop - at)? {
                        e.offset = None;
                        push_extent(&mut out, e);
                    }
                }
            }
            at = stop;
        }
        Ok(out)
    }

    /// [`CbwView::read_held`] of `buf` at `offset`, [`HOLD_BYTES`] at a
    /// time.
    fn read_held_in_parts(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.shared;
        let hold = (HOLD_BYTES / s.granule).max(1);
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let stop = ((at / s.granule + hold) * s.granule).min(end);
            let part = &mut buf[(at - offset) as usize..(stop - offset) as usize];
            self.read_held(part, at)?;
            at = stop;
        }
        Ok(())
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
            self.read_held_in_parts(buf, offset)?;
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
    /// the view started (any change would have copied them first). Found
    /// without holding anything, then checked: when a guest write moved a
    /// granule meanwhile (the live image may show what it wrote), found
    /// again, held.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let s = &self.shared;
        check_range(self.path(), s.size, offset, len)?;
        self.check_broken()?;
        let span = s.span(offset, len);
        let seen = s
            .granules
            .places(span.clone())
            .map_err(|g| self.given_up(g))?;
        let out = self.extents(offset, len, &seen)?;
        if s.granules.places(span.clone()).as_ref() == Ok(&seen) {
            return Ok(out);
        }
        let places = s
            .granules
            .read(span.clone())
            .map_err(|g| self.given_up(g))?;
        let out = self.extents(offset, len, &places);
        s.granules.end_read(span, 0..0);
        out
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }
    fn actual_size(&self) -> Result<u64> {
        Ok(0)
    }
}
