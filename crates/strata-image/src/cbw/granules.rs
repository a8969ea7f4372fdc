//! The bookkeeping of a copy-before-write view, per granule (a fixed-size
//! aligned range of the disk): which granules the view still needs, which
//! hold their old data in the scratch image, and who is using which right
//! now (view readers share a granule; a guest write that copies takes it
//! alone). A caller takes every granule of its range at once or waits, so
//! two callers never hold part of each other's range: no deadlock.
//!
//! A granule the view has read whole is given up ("read once": a backup
//! reads each range once), so later guest writes there copy nothing; a
//! guest write over it marks it stale, and reading it again is then an
//! error rather than data from after the view's instant.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A fixed set of bits, one per granule.
#[derive(Debug, Clone)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// `n` bits, all `value`.
    pub(crate) fn new(n: u64, value: bool) -> Bits {
        let words = n.div_ceil(64) as usize;
        let mut b = Bits(vec![if value { u64::MAX } else { 0 }; words]);
        if value && !n.is_multiple_of(64) {
            if let Some(last) = b.0.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        b
    }

    pub(crate) fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn set(&mut self, i: u64, value: bool) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            if value {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// How many bits are set.
    pub(crate) fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Where a granule's data as it was at the view's start is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the live image, unchanged.
    Live,
    /// In the scratch.
    Scratch,
    /// Nowhere: it was zeros, and the guest has written there since.
    Zero,
}

/// Who uses a granule now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// This many view readers.
    Read(u32),
    /// A guest write copying it.
    Copy,
}

/// The state of every granule, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    /// The view still needs the granule's data as it was at the start.
    pub(crate) needed: Bits,
    /// The scratch holds the granule's data as it was at the start.
    pub(crate) copied: Bits,
    /// The granule was zeros at the start and the guest has changed it:
    /// the view reads zeros (nothing went to the scratch).
    pub(crate) zero: Bits,
    /// The view read the granule whole and gave it up.
    read_once: Bits,
    /// … and the guest has changed it since.
    stale: Bits,
    users: HashMap<u64, Use>,
}

impl State {
    /// Where granule `g`'s start data is.
    pub(crate) fn place(&self, g: u64) -> Place {
        if self.copied.get(g) {
            Place::Scratch
        } else if self.zero.get(g) {
            Place::Zero
        } else {
            Place::Live
        }
    }

    /// Gives granule `g` up: not needed any more. True when its scratch
    /// copy can be freed.
    pub(crate) fn give_up(&mut self, g: u64) -> bool {
        self.needed.set(g, false);
        self.zero.set(g, false);
        let had = self.copied.get(g);
        self.copied.set(g, false);
        had
    }
}

/// The granules of one view and the condition callers wait on.
#[derive(Debug)]
pub(crate) struct Granules {
    state: Mutex<State>,
    freed: Condvar,
}

impl Granules {
    /// `n` granules, needed where `needed` says.
    pub(crate) fn new(needed: Bits, n: u64) -> Granules {
        Granules {
            state: Mutex::new(State {
                needed,
                copied: Bits::new(n, false),
                zero: Bits::new(n, false),
                read_once: Bits::new(n, false),
                stale: Bits::new(n, false),
                users: HashMap::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// The state, for a quick look or a change that takes no granule.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no copy holds a granule of `range`, then holds them all
    /// for reading; returns where each one's data is, or the first granule
    /// that was read once already and changed since (nothing held).
    pub(crate) fn read(&self, range: Range<u64>) -> std::result::Result<Vec<Place>, u64> {
        let mut st = self.lock();
        while range.clone().any(|g| st.users.get(&g) == Some(&Use::Copy)) {
            st = self.freed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(g) = range.clone().find(|&g| st.stale.get(g)) {
            return Err(g);
        }
        for g in range.clone() {
            let u = st.users.entry(g).or_insert(Use::Read(0));
            if let Use::Read(n) = u {
                *n += 1;
            }
        }
        Ok(range.map(|g| st.place(g)).collect())
    }

    /// Where each granule of `range` is now, holding nothing (a guest
    /// write may move it right after); or the first granule that was read
    /// once and changed since.
    pub(crate) fn places(&self, range: Range<u64>) -> std::result::Result<Vec<Place>, u64> {
        let st = self.lock();
        if let Some(g) = range.clone().find(|&g| st.stale.get(g)) {
            return Err(g);
        }
        Ok(range.map(|g| st.place(g)).collect())
    }

    /// A look without holding anything, for a read that goes ahead
    /// unheld: for each granule of `range`, whether the view needs it
    /// (`Some`) when it is in the live image, unchanged and not being
    /// copied, else `None`; `None` for all when no granule is.
    /// [`Granules::settle`] then tells which of them changed meanwhile.
    pub(crate) fn peek_live(&self, range: Range<u64>) -> Option<Vec<Option<bool>>> {
        let st = self.lock();
        let copying = !st.users.is_empty();
        let seen: Vec<Option<bool>> = range
            .map(|g| {
                let live = st.place(g) == Place::Live
                    && !st.stale.get(g)
                    && !(copying && st.users.get(&g) == Some(&Use::Copy));
                live.then(|| st.needed.get(g))
            })
            .collect();
        seen.iter().any(Option::is_some).then_some(seen)
    }

    /// After an unheld read of `range` that [`Granules::peek_live`] let
    /// go ahead with `seen` as it saw it: the granules not live then, or
    /// that the guest may have written over meanwhile (a copy moved their
    /// data to the scratch or zeros, or they were given up, or changed
    /// after being read once) — what was read of them must be read again,
    /// held. The others of `whole` are given up (read once); returns both,
    /// and the granules whose scratch copies can go.
    pub(crate) fn settle(
        &self,
        range: Range<u64>,
        seen: &[Option<bool>],
        whole: Range<u64>,
    ) -> (Vec<u64>, Vec<u64>) {
        let mut st = self.lock();
        let start = range.start;
        let redo: Vec<u64> = range
            .filter(|&g| {
                seen[(g - start) as usize] != Some(st.needed.get(g))
                    || st.place(g) != Place::Live
                    || st.stale.get(g)
            })
            .collect();
        let mut free = Vec::new();
        let busy = !st.users.is_empty();
        for g in whole {
            // A copy under way keeps its granule until it ends.
            if redo.binary_search(&g).is_ok() || (busy && st.users.contains_key(&g)) {
                continue;
            }
            st.read_once.set(g, true);
            if st.give_up(g) {
                free.push(g);
            }
        }
        (redo, free)
    }

    /// Releases what [`Granules::read`] held, and gives up the granules of
    /// `whole` (those the read covered whole): no longer needed, read
    /// once. Returns the granules whose scratch copy can be freed.
    pub(crate) fn end_read(&self, range: Range<u64>, whole: Range<u64>) -> Vec<u64> {
        let mut st = self.lock();
        for g in range {
            if let Some(Use::Read(n)) = st.users.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    st.users.remove(&g);
                }
            }
        }
        let mut free = Vec::new();
        for g in whole {
            st.read_once.set(g, true);
            if st.give_up(g) {
                free.push(g);
            }
        }
        drop(st);
        self.freed.notify_all();
        free
    }

    /// For a guest write over `range`: the granules it must copy first
    /// (needed, not copied), held alone until [`Granules::end_copy`];
    /// empty (nothing held) when there are none. Waits for the readers and
    /// copies of those granules to end, and for the readers of granules
    /// read once (the write makes them stale).
    pub(crate) fn copy(&self, range: Range<u64>) -> Vec<u64> {
        let mut st = self.lock();
        loop {
            let todo: Vec<u64> = range
                .clone()
                .filter(|&g| st.needed.get(g) && st.place(g) == Place::Live)
                .collect();
            let reading = range
                .clone()
                .any(|g| st.read_once.get(g) && st.users.contains_key(&g));
            if !reading && todo.iter().all(|g| !st.users.contains_key(g)) {
                for &g in &todo {
                    st.users.insert(g, Use::Copy);
                }
                for g in range.clone() {
                    if st.read_once.get(g) {
                        st.stale.set(g, true);
                    }
                }
                return todo;
            }
            st = self.freed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Releases what [`Granules::copy`] held; `copied` when their old
    /// data is kept now: in the scratch, or as zeros for those in `zeros`.
    pub(crate) fn end_copy(&self, held: &[u64], copied: bool, zeros: &[u64]) {
        let mut st = self.lock();
        for &g in held {
            st.users.remove(&g);
            if copied {
                match zeros.contains(&g) {
                    true => st.zero.set(g, true),
                    false => st.copied.set(g, true),
                }
            }
        }
        drop(st);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_set_get_and_count_across_words() {
        let mut b = Bits::new(130, true);
        assert_eq!(b.count(), 130);
        assert!(b.get(129) && !b.get(130));
        b.set(64, false);
        assert!(!b.get(64) && b.get(63) && b.get(65));
        assert_eq!(b.count(), 129);
        let mut z = Bits::new(70, false);
        z.set(69, true);
        assert_eq!(z.count(), 1);
    }

    #[test]
    fn a_copy_waits_for_readers_and_a_read_for_copies() {
        let g = std::sync::Arc::new(Granules::new(Bits::new(4, true), 4));
        assert_eq!(g.read(0..2), Ok(vec![Place::Live, Place::Live]));
        let g2 = g.clone();
        let copier = std::thread::spawn(move || {
            let held = g2.copy(1..3);
            assert_eq!(held, [1, 2]);
            g2.end_copy(&held, true, &[2]);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!copier.is_finished(), "the copy waits for the reader");
        g.end_read(0..2, 0..0);
        copier.join().unwrap();
        // Copied now: nothing left to copy, and readers see the scratch.
        assert!(g.copy(0..4).contains(&0));
        g.end_copy(&[0, 3], false, &[]);
        assert_eq!(
            g.read(0..4),
            Ok(vec![Place::Live, Place::Scratch, Place::Zero, Place::Live])
        );
        // Read whole: given up, and the scratch copy can go.
        assert_eq!(g.end_read(0..4, 1..3), [1]);
        assert!(g.copy(1..3).is_empty(), "nothing to copy once read");
        assert_eq!(g.read(0..2), Err(1), "written since it was read");
    }
}
