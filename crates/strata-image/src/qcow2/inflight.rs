//! Guest clusters whose new host clusters are being written right now.
//!
//! An allocating write reserves its host clusters under the allocation
//! mutex, marks the guest clusters in flight, and writes the data without
//! holding any lock; only then does it link the L2 entries and clear the
//! mark. Another writer that reaches a cluster in flight waits for it, then
//! sees the new mapping and writes in place. So many allocating writes move
//! data at once, and no two ever allocate the same guest cluster.

use std::collections::HashSet;

use parking_lot::{Condvar, Mutex};

/// The set of guest cluster indexes being allocated.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    set: Mutex<HashSet<u64>>,
    done: Condvar,
}

impl InFlight {
    /// True when `cluster` is being allocated.
    pub fn busy(&self, cluster: u64) -> bool {
        self.set.lock().contains(&cluster)
    }

    /// Marks `count` clusters from `first` (the caller holds the allocation mutex).
    pub fn begin(&self, first: u64, count: u64) {
        self.set.lock().extend(first..first + count);
    }

    /// Clears the marks set by [`InFlight::begin`] and wakes waiters.
    pub fn end(&self, first: u64, count: u64) {
        let mut set = self.set.lock();
        for c in first..first + count {
            set.remove(&c);
        }
        self.done.notify_all();
    }

    /// Waits until `cluster` is no longer being allocated.
    pub fn wait(&self, cluster: u64) {
        let mut set = self.set.lock();
        while set.contains(&cluster) {
            self.done.wait(&mut set);
        }
    }
}
