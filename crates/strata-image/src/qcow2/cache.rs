//! A bounded write-back cache of metadata tables (L2 tables, refcount blocks),
//! keyed by host offset. Dirty tables are never dropped: the owner writes
//! them back (in the order crash safety needs) before they can be evicted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes the u64 keys (host offsets, multiples of the cluster size) by one
/// multiplication: SipHash's flood resistance buys nothing for keys this
/// engine makes itself, and it showed up as a fifth of snapshot create.
#[derive(Default)]
pub(crate) struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_right(29);
    }
}

type OffsetMap<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// One cached table.
#[derive(Debug)]
pub struct Slot<T> {
    /// The table contents.
    pub data: T,
    /// Changed since it was last written.
    pub dirty: bool,
    last_use: u64,
}

/// A bounded cache of tables of type `T`.
#[derive(Debug)]
pub struct TableCache<T> {
    slots: OffsetMap<Slot<T>>,
    capacity: usize,
    clock: u64,
}

impl<T> TableCache<T> {
    /// A cache holding at most `capacity` tables (at least 4).
    pub fn new(capacity: usize) -> Self {
        TableCache {
            slots: OffsetMap::default(),
            capacity: capacity.max(4),
            clock: 0,
        }
    }

    /// The table at `offset`, if cached (and marks it used).
    pub fn get(&mut self, offset: u64) -> Option<&mut Slot<T>> {
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots.get_mut(&offset)?;
        slot.last_use = clock;
        Some(slot)
    }

    /// True when `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.slots.contains_key(&offset)
    }

    /// True when the cache is full and a new table needs room.
    pub fn full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Drops the least recently used clean table; false when every table is dirty.
    pub fn evict_clean(&mut self) -> bool {
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| !s.dirty)
            .min_by_key(|(_, s)| s.last_use)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.slots.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Inserts a table (the caller made room first).
    pub fn insert(&mut self, offset: u64, data: T, dirty: bool) -> &mut Slot<T> {
        self.clock += 1;
        let slot = Slot {
            data,
            dirty,
            last_use: self.clock,
        };
        self.slots.insert(offset, slot);
        self.slots.get_mut(&offset).expect("just inserted")
    }

    /// Forgets a table (used when its cluster is freed).
    pub fn remove(&mut self, offset: u64) -> Option<T> {
        self.slots.remove(&offset).map(|s| s.data)
    }

    /// Offsets of dirty tables, sorted (so writes go out in file order).
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }

    /// True when any table is dirty.
    pub fn any_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }

    /// Drops every table (dirty ones too: only after a failure or a rebuild).
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}
