//! Reply buffers reused within a connection: a read reply is built in a
//! buffer the writer task has finished sending, so large replies cost no
//! allocation and no zero-filling in steady state (the bytes are
//! overwritten by the read).

use std::sync::Mutex;

/// Buffers kept at most.
const KEEP: usize = 64;
/// Smaller buffers are not worth keeping.
const MIN_KEPT: usize = 64 << 10;

/// A pool of byte buffers.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// A buffer of exactly `len` bytes (contents unspecified).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|b| b.len() >= len && b.len() <= 2 * len.max(MIN_KEPT))
                .map(|i| free.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                b.truncate(len);
                b
            }
            None => vec![0; len],
        }
    }

    /// Returns a sent buffer to the pool.
    pub(crate) fn give(&self, b: Vec<u8>) {
        if b.len() < MIN_KEPT {
            return;
        }
        // The buffer keeps its (initialised) length for the next `take`.
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP {
            free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_without_growing() {
        let pool = Buffers::default();
        let mut b = pool.take(100 << 10);
        b[0] = 7;
        let ptr = b.as_ptr();
        pool.give(b);
        let again = pool.take(90 << 10);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), 90 << 10);
        assert_eq!(pool.take(4096).len(), 4096, "small ones are fresh");
    }
}
