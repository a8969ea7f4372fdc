//! Change tracking in enabled persistent bitmaps, crash-consistent
//! (`docs/design.md` §5b).
//!
//! Every guest write, write-zeroes and discard marks its granules in every
//! enabled bitmap. In memory a bitmap is three arrays of atomic words:
//! `marked` (what changed: the logical bitmap), `durable` (bits known to be
//! on disk) and `ahead` (bits set speculatively ahead of a sequential stream,
//! on disk but not in `marked`); a summary word per 32 KiB of bitmap data
//! says which 512-byte sectors may need writing. A write whose granules are
//! already durable costs a few atomic loads and takes no lock.
//!
//! The rule that keeps the on-disk bitmap a superset of what changed: a bit
//! is durable no later than the data it describes can be. Data written into
//! a cluster whose mapping is not yet durable (a new cluster, COW, zero flag,
//! discard) becomes reachable only when its L2 entry does, and the metadata
//! write-back writes the marked bits before that (with the first sync of the
//! flush, at no extra cost). Only an in-place write into a cluster whose
//! mapping is durable has to make its bits durable first: the writer calls
//! [`Tracker::persist_range`], where the first writer in writes every
//! pending bit of every bitmap and syncs once for all who wait (group
//! commit). It also marks ahead: every other bit of the bitmap sectors it
//! writes (so later first writes nearby need no sync), and a window ahead of
//! a sequential stream that doubles while the stream goes on. Bits marked
//! ahead are on disk only; the next flush that holds the image exclusively
//! writes the exact bits again, so they survive only a crash (as a
//! superset).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::bitmaps::BitmapInfo;
use super::meta::Meta;
use super::types::OFFSET_MASK;
use crate::error::Result;
use crate::storage::Storage;

/// Bytes of bitmap data written as one unit.
const SECTOR: u64 = 512;
/// Words (of 64 granules) per sector.
const SECTOR_WORDS: usize = (SECTOR / 8) as usize;
/// First mark-ahead window of a sequential stream, in bytes of guest data.
const AHEAD_MIN: u64 = 1 << 20;
/// Largest mark-ahead window.
const AHEAD_MAX: u64 = 64 << 20;

/// One enabled bitmap being tracked.
#[derive(Debug)]
struct Tracked {
    name: String,
    gran_bits: u32,
    granules: u64,
    /// Host offset of every data cluster of the bitmap (all allocated).
    clusters: Vec<u64>,
    marked: Vec<AtomicU64>,
    durable: Vec<AtomicU64>,
    ahead: Vec<AtomicU64>,
    /// Bit `s`: sector `s` of the bitmap data may differ from the disk.
    dirty: Vec<AtomicU64>,
}

/// Sequential-stream state for mark-ahead (under the persist lock).
#[derive(Debug, Default)]
struct Stream {
    /// Where the last window ended (guest bytes).
    end: u64,
    /// Size of the next window.
    window: u64,
}

/// The enabled bitmaps of one writable image.
#[derive(Debug)]
pub(crate) struct Tracker {
    maps: Vec<Tracked>,
    cluster_size: u64,
    disk_size: u64,
    /// Held while bits are written and synced (the group-commit leader).
    persist: Mutex<Stream>,
    /// Syncs made for in-place writes (for benchmarks and tests).
    syncs: AtomicU64,
}

/// Words of `w` as the bytes of bitmap data they are on disk.
fn put_words(out: &mut Vec<u8>, words: impl Iterator<Item = u64>) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

fn atomics(words: &[u64]) -> Vec<AtomicU64> {
    words.iter().map(|&w| AtomicU64::new(w)).collect()
}

/// Mask of bits `[lo, hi]` inside one word.
fn mask(lo: u64, hi: u64) -> u64 {
    let n = hi - lo + 1;
    let ones = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << lo
}

/// Calls `f(word, mask)` for every word covering granules `[g0, g1]`.
fn for_words(g0: u64, g1: u64, mut f: impl FnMut(usize, u64)) {
    let (w0, w1) = (g0 / 64, g1 / 64);
    for w in w0..=w1 {
        let lo = if w == w0 { g0 % 64 } else { 0 };
        let hi = if w == w1 { g1 % 64 } else { 63 };
        f(w as usize, mask(lo, hi));
    }
}

impl Tracked {
    /// Granules `[g0, g1]` covering guest bytes `[off, off+len)`, clipped.
    fn span(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || self.granules == 0 {
            return None;
        }
        let g0 = off >> self.gran_bits;
        if g0 >= self.granules {
            return None;
        }
        let g1 = ((off + len - 1) >> self.gran_bits).min(self.granules - 1);
        Some((g0, g1))
    }

    fn set_dirty(&self, word: usize) {
        let s = word / SECTOR_WORDS;
        let bit = 1u64 << (s % 64);
        if self.dirty[s / 64].load(Ordering::Acquire) & bit == 0 {
            self.dirty[s / 64].fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Marks granules `[g0, g1]`; true when one of them is not durable.
    fn mark(&self, g0: u64, g1: u64) -> bool {
        let mut need = false;
        for_words(g0, g1, |w, m| {
            if self.marked[w].load(Ordering::Acquire) & m != m
                && self.marked[w].fetch_or(m, Ordering::SeqCst) & m != m
            {
                self.set_dirty(w);
            }
            if self.durable[w].load(Ordering::Acquire) & m != m {
                need = true;
            }
        });
        need
    }

    fn is_durable(&self, g0: u64, g1: u64) -> bool {
        let mut all = true;
        for_words(g0, g1, |w, m| {
            all &= self.durable[w].load(Ordering::Acquire) & m == m;
        });
        all
    }

    /// Sets speculative bits `[g0, g1]` (written to disk, not in `marked`).
    fn mark_ahead(&self, g0: u64, g1: u64) {
        for_words(g0, g1, |w, m| {
            if self.durable[w].load(Ordering::Acquire) & m != m {
                self.ahead[w].fetch_or(m, Ordering::SeqCst);
                self.set_dirty(w);
            }
        });
    }

    /// The value of word `w` on disk after the next write.
    fn disk_word(&self, w: usize) -> u64 {
        match self.marked.get(w) {
            Some(m) => m.load(Ordering::SeqCst) | self.ahead[w].load(Ordering::SeqCst),
            None => 0,
        }
    }
}

/// Sectors written by [`Tracker::write_dirty`], waiting for a sync.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// `(bitmap, first word, words as written)`.
    sectors: Vec<(usize, usize, Vec<u64>)>,
}

impl Tracker {
    /// Starts tracking the enabled, consistent bitmaps of `dir` (none: `None`).
    /// Every data cluster of those bitmaps must be allocated (see
    /// [`needs_clusters`]).
    pub fn load(m: &Meta, dir: &[BitmapInfo]) -> Result<Option<Tracker>> {
        let mut maps = Vec::new();
        for b in dir.iter().filter(|b| b.enabled() && b.usable()) {
            let bytes = m.bitmap_bytes(b)?;
            let granules = m.header.size.div_ceil(b.granularity);
            let nwords = granules.div_ceil(64) as usize;
            let mut words = vec![0u64; nwords];
            for (i, chunk) in bytes.chunks(8).enumerate() {
                let mut a = [0u8; 8];
                a[..chunk.len()].copy_from_slice(chunk);
                words[i] = u64::from_le_bytes(a);
            }
            let clusters = m
                .bitmap_table(b)?
                .into_iter()
                .map(|e| e & OFFSET_MASK)
                .collect();
            let sectors = nwords.div_ceil(SECTOR_WORDS);
            maps.push(Tracked {
                name: b.name.clone(),
                gran_bits: b.granularity.trailing_zeros(),
                granules,
                clusters,
                marked: atomics(&words),
                durable: atomics(&words),
                ahead: atomics(&vec![0; nwords]),
                dirty: atomics(&vec![0; sectors.div_ceil(64)]),
            });
        }
        if maps.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tracker {
            maps,
            cluster_size: m.geo.cluster_size,
            disk_size: m.header.size,
            persist: Mutex::new(Stream::default()),
            syncs: AtomicU64::new(0),
        }))
    }

    /// Marks guest bytes `[off, off+len)` in every bitmap; true when some
    /// marked bit is not yet durable.
    pub fn mark(&self, off: u64, len: u64) -> bool {
        let mut need = false;
        for t in &self.maps {
            if let Some((g0, g1)) = t.span(off, len) {
                need |= t.mark(g0, g1);
            }
        }
        need
    }

    fn is_durable(&self, off: u64, len: u64) -> bool {
        self.maps.iter().all(|t| match t.span(off, len) {
            Some((g0, g1)) => t.is_durable(g0, g1),
            None => true,
        })
    }

    /// Makes the bits of `[off, off+len)` durable before an in-place write
    /// there: waits for a commit in progress, and if that did not cover the
    /// range, writes every pending bit of every bitmap and syncs.
    pub fn persist_range(&self, st: &dyn Storage, off: u64, len: u64) -> Result<()> {
        let mut stream = self.persist.lock();
        if self.is_durable(off, len) {
            return Ok(());
        }
        // The sector written anyway carries every bit it holds: set them all
        // ahead, so the next first write near this one needs no sync.
        let end = off + len;
        let per = SECTOR * 8;
        let mut covered = u64::MAX;
        for t in &self.maps {
            if let Some((g0, g1)) = t.span(off, len) {
                let last = ((g1 / per + 1) * per).min(t.granules) - 1;
                t.mark_ahead(g0 / per * per, last);
                covered = covered.min((last + 1) << t.gran_bits);
            }
        }
        let covered = covered.min(self.disk_size).max(end);
        // Then a window past that: larger for a stream that continues where
        // the last window ended, small again for any other write.
        stream.window = if off == stream.end && stream.window > 0 {
            (stream.window * 2).min(AHEAD_MAX)
        } else {
            AHEAD_MIN
        };
        let ahead_end = covered.saturating_add(stream.window).min(self.disk_size);
        if ahead_end > covered {
            for t in &self.maps {
                if let Some((g0, g1)) = t.span(covered, ahead_end - covered) {
                    t.mark_ahead(g0, g1);
                }
            }
        }
        stream.end = ahead_end;
        let written = self.write_dirty(st)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_and_commit(written, || st.flush())
    }

    /// Writes the pending bits and runs `sync` (the first sync of a metadata
    /// flush), all under the persist lock; afterwards the bits are durable.
    pub fn persist_with(&self, st: &dyn Storage, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        let _stream = self.persist.lock();
        let written = self.write_dirty(st)?;
        self.sync_and_commit(written, sync)
    }

    /// Runs `sync`; once it succeeded, what `written` wrote is durable.
    fn sync_and_commit(&self, written: Written, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Err(e) = sync() {
            self.restore(&written);
            return Err(e);
        }
        for (b, first, words) in written.sectors {
            let t = &self.maps[b];
            for (i, w) in words.into_iter().enumerate() {
                if let Some(d) = t.durable.get(first + i) {
                    d.fetch_or(w, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }

    /// Puts the dirty marks of unsynced sectors back.
    fn restore(&self, written: &Written) {
        for (b, first, _) in &written.sectors {
            self.maps[*b].set_dirty(*first);
        }
    }

    /// Writes every sector that may differ from the disk (caller holds the
    /// persist lock and syncs afterwards).
    fn write_dirty(&self, st: &dyn Storage) -> Result<Written> {
        let mut out = Written::default();
        for (b, t) in self.maps.iter().enumerate() {
            for (k, summary) in t.dirty.iter().enumerate() {
                if summary.load(Ordering::Acquire) == 0 {
                    continue;
                }
                let bits = summary.swap(0, Ordering::SeqCst);
                for s in (0..64).filter(|s| bits & (1 << s) != 0) {
                    let first = (k * 64 + s) * SECTOR_WORDS;
                    let words: Vec<u64> = (first..first + SECTOR_WORDS)
                        .map(|w| t.disk_word(w))
                        .collect();
                    let mut bytes = Vec::with_capacity(SECTOR as usize);
                    put_words(&mut bytes, words.iter().copied());
                    let at = first as u64 * 8;
                    let host =
                        t.clusters[(at / self.cluster_size) as usize] + at % self.cluster_size;
                    out.sectors.push((b, first, words));
                    if let Err(e) = st.write_at(&bytes, host) {
                        self.restore(&out);
                        // The sectors of this summary word not reached yet.
                        summary.fetch_or(bits, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Drops the speculative bits (no request may be in flight): the sectors
    /// holding any are written again with the marked bits only at the next
    /// persist. Durable is lowered to what is certain either way.
    pub fn trim(&self) {
        for t in &self.maps {
            for w in 0..t.marked.len() {
                if t.ahead[w].swap(0, Ordering::SeqCst) != 0 {
                    let m = t.marked[w].load(Ordering::SeqCst);
                    t.durable[w].fetch_and(m, Ordering::SeqCst);
                    t.set_dirty(w);
                }
            }
        }
    }

    /// The logical (exact) dirty extents of a tracked bitmap.
    pub fn extents(&self, name: &str) -> Option<Vec<(u64, u64)>> {
        let t = self.maps.iter().find(|t| t.name == name)?;
        let mut bytes = Vec::with_capacity(t.marked.len() * 8);
        put_words(
            &mut bytes,
            t.marked.iter().map(|w| w.load(Ordering::SeqCst)),
        );
        Some(super::bitmaps::extents(
            &bytes,
            1 << t.gran_bits,
            self.disk_size,
        ))
    }

    /// Syncs made so far to make bits durable before in-place writes.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// True when an enabled, consistent bitmap of `dir` has a data cluster that
/// is not allocated (all zeros or all ones in its table entry): tracking
/// needs every one allocated so that setting a bit is an in-place write.
pub(crate) fn needs_clusters(m: &Meta, dir: &[BitmapInfo]) -> Result<bool> {
    for b in dir.iter().filter(|b| b.enabled() && b.usable()) {
        if m.bitmap_table(b)?.iter().any(|e| e & OFFSET_MASK == 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_exactly_the_granules() {
        let mut seen = Vec::new();
        for_words(62, 130, |w, m| seen.push((w, m)));
        assert_eq!(seen, vec![(0, 0b11 << 62), (1, u64::MAX), (2, 0b111)]);
        assert_eq!(mask(0, 63), u64::MAX);
        assert_eq!(mask(5, 5), 1 << 5);
    }
}
