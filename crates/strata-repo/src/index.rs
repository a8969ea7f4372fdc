//! A disk's index in one backup (`indexes/BACKUP/DISK`): the disk's size
//! and, for each chunk of it in order, the chunk's id, or nothing for a
//! chunk that reads as zeros (never stored). Every backup's index lists
//! the whole disk, so every backup restores on its own.
//!
//! ```text
//! 0   4  magic "SRIX"
//! 4   1  version 1
//! 5   1  flags: 2 = encrypted
//! 6   2  zero
//! 8   8  the disk's size (little-endian)
//! 16  4  the chunk size
//! 20  4  the number of chunks: the size over the chunk size, rounded up
//! 24  …  32 bytes per chunk: its id, or all zero for zeros;
//!        encrypted: a random 12-byte nonce, then those bytes sealed
//!        (ChaCha20-Poly1305, the header as associated data)
//! ```
//!
//! The manifest holds the index's MAC, so a changed index is caught there.

use crate::error::{Error, Result};
use crate::keys::{ChunkId, Keys};
use crate::seal;

const MAGIC: &[u8; 4] = b"SRIX";
const VERSION: u8 = 1;
const HEADER: usize = 24;
const ENCRYPTED: u8 = 2;

/// A disk's chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The disk's size in bytes.
    pub size: u64,
    /// The chunk size.
    pub chunk_size: u32,
    /// Each chunk's id, `None` for zeros.
    pub chunks: Vec<Option<ChunkId>>,
}

/// How many chunks of `chunk_size` a disk of `size` bytes has.
pub fn count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

impl Index {
    /// The index object.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        let flags = if keys.encrypted() { ENCRYPTED } else { 0 };
        header.extend_from_slice(&[VERSION, flags, 0, 0]);
        header.extend_from_slice(&self.size.to_le_bytes());
        header.extend_from_slice(&self.chunk_size.to_le_bytes());
        header.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        let mut body = Vec::with_capacity(self.chunks.len() * 32);
        for c in &self.chunks {
            body.extend_from_slice(&c.unwrap_or([0; 32]));
        }
        match &keys.data {
            Some(k) => {
                let nonce = seal::random::<{ seal::NONCE }>();
                let sealed = seal::seal(k, nonce, &header, &body);
                [header, nonce.to_vec(), sealed].concat()
            }
            None => [header, body].concat(),
        }
    }

    /// The index object `bytes` (named `object`) holds.
    pub fn decode(keys: &Keys, bytes: &[u8], object: &str) -> Result<Index> {
        let bad = |p: String| Error::damaged(object, p);
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(bad("not an index (no SRIX header)".into()));
        }
        if bytes[4] != VERSION || bytes[6..8] != [0, 0] {
            return Err(bad(format!(
                "index version {} flags {:#x}",
                bytes[4], bytes[5]
            )));
        }
        if (bytes[5] == ENCRYPTED) != keys.encrypted() || bytes[5] & !ENCRYPTED != 0 {
            return Err(bad(format!(
                "flags {:#x} do not fit the repository",
                bytes[5]
            )));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let size = u64_at(8);
        let chunk_size = u32_at(16);
        let n = u32_at(20) as u64;
        if chunk_size == 0 || count(size, chunk_size) != n {
            return Err(bad(format!(
                "{n} chunks of {chunk_size} bytes for a disk of {size}"
            )));
        }
        let (header, rest) = bytes.split_at(HEADER);
        let body = match &keys.data {
            Some(k) => {
                if rest.len() < seal::NONCE {
                    return Err(bad("cut short".into()));
                }
                let (nonce, sealed) = rest.split_at(seal::NONCE);
                let mut nn = [0u8; seal::NONCE];
                nn.copy_from_slice(nonce);
                seal::open(k, nn, header, sealed)
                    .ok_or_else(|| bad("its authentication tag does not match".into()))?
            }
            None => rest.to_vec(),
        };
        if body.len() as u64 != n * 32 {
            return Err(bad(format!(
                "{} bytes of chunk ids for {n} chunks",
                body.len()
            )));
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                (id != [0; 32]).then_some(id)
            })
            .collect();
        Ok(Index {
            size,
            chunk_size,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        for encrypted in [false, true] {
            let keys = Keys::generate(encrypted);
            let ix = Index {
                size: 10 << 20,
                chunk_size: 4 << 20,
                chunks: vec![Some([7; 32]), None, Some([9; 32])],
            };
            let b = ix.encode(&keys);
            assert_eq!(Index::decode(&keys, &b, "i").unwrap(), ix);
            assert!(Index::decode(&keys, &b[..b.len() - 1], "i").is_err());
            let mut wrong = ix.clone();
            wrong.chunks.pop();
            assert!(Index::decode(&keys, &wrong.encode(&keys), "i").is_err());
            if encrypted {
                let mut flip = b.clone();
                let last = flip.len() - 1;
                flip[last] ^= 1;
                assert!(Index::decode(&keys, &flip, "i").is_err());
            }
        }
    }
}
