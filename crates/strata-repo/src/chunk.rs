//! A chunk object: up to one chunk of a disk's bytes, named by its id
//! (`chunks/XX/ID`, `XX` the id's first two hex digits).
//!
//! ```text
//! 0   4  magic "SRCK"
//! 4   1  version 1
//! 5   1  flags: 1 = zstd, 2 = encrypted
//! 6   2  zero
//! 8   4  the chunk's length (little-endian)
//! 12  …  the bytes, zstd-compressed (when smaller) or as they are;
//!        encrypted: ChaCha20-Poly1305 of them with the tag after, the
//!        nonce the id's first 12 bytes, the header and the id as
//!        associated data
//! ```
//!
//! The same contents always make the same object (the nonce comes from
//! the id, which comes from the contents under the id key), so writers on
//! many hosts storing one chunk store the same bytes. Reading checks
//! everything: header, tag, length, and the id of what comes out.

use crate::error::{Error, Result};
use crate::hex;
use crate::keys::{ChunkId, Keys};
use crate::seal;

const MAGIC: &[u8; 4] = b"SRCK";
const VERSION: u8 = 1;
const HEADER: usize = 12;
const ZSTD: u8 = 1;
const ENCRYPTED: u8 = 2;
/// zstd's level: fast, as a backup must be.
const LEVEL: i32 = 3;

/// The object name of chunk `id`.
pub fn name(id: &ChunkId) -> String {
    let h = hex::encode(id);
    format!("chunks/{}/{h}", &h[..2])
}

/// The chunk id an object name spells, if it is a chunk's.
pub fn id_of(name: &str) -> Option<ChunkId> {
    let h = name.strip_prefix("chunks/")?;
    let (dir, id) = h.split_once('/')?;
    let id = hex::decode::<32>(id)?;
    (hex::encode(&id[..1]) == dir).then_some(id)
}

fn aad(header: &[u8], id: &ChunkId) -> Vec<u8> {
    [header, &id[..]].concat()
}

/// The object storing `data`, whose id is `id`.
pub fn encode(keys: &Keys, id: &ChunkId, data: &[u8]) -> Vec<u8> {
    let mut flags = 0;
    let packed = zstd::bulk::compress(data, LEVEL).ok();
    let body = match packed {
        Some(p) if p.len() < data.len() => {
            flags |= ZSTD;
            p
        }
        _ => data.to_vec(),
    };
    if keys.encrypted() {
        flags |= ENCRYPTED;
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&[VERSION, flags, 0, 0]);
    header.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let body = match &keys.data {
        Some(k) => seal::seal(k, nonce(id), &aad(&header, id), &body),
        None => body,
    };
    [header, body].concat()
}

fn nonce(id: &ChunkId) -> [u8; seal::NONCE] {
    let mut n = [0u8; seal::NONCE];
    n.copy_from_slice(&id[..seal::NONCE]);
    n
}

/// The chunk object `bytes` holds, checked to be chunk `id` whole; at most
/// `max` bytes long.
pub fn decode(keys: &Keys, id: &ChunkId, bytes: &[u8], max: usize) -> Result<Vec<u8>> {
    let object = name(id);
    let bad = |p: String| Error::damaged(&object, p);
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(bad("not a chunk (no SRCK header)".into()));
    }
    if bytes[4] != VERSION {
        return Err(bad(format!("chunk version {}", bytes[4])));
    }
    let flags = bytes[5];
    if flags & !(ZSTD | ENCRYPTED) != 0 || bytes[6..8] != [0, 0] {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    if (flags & ENCRYPTED != 0) != keys.encrypted() {
        return Err(bad(if keys.encrypted() {
            "stored in the clear in an encrypted repository".into()
        } else {
            "encrypted in a repository that is not".into()
        }));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len == 0 || len > max {
        return Err(bad(format!("length {len}")));
    }
    let (header, body) = bytes.split_at(HEADER);
    let body = match &keys.data {
        Some(k) => seal::open(k, nonce(id), &aad(header, id), body)
            .ok_or_else(|| bad("its authentication tag does not match".into()))?,
        None => body.to_vec(),
    };
    let data = if flags & ZSTD != 0 {
        let d = zstd::bulk::decompress(&body, len)
            .map_err(|e| bad(format!("does not decompress: {e}")))?;
        if d.len() != len {
            return Err(bad(format!("decompresses to {} bytes, not {len}", d.len())));
        }
        d
    } else if body.len() != len {
        return Err(bad(format!("holds {} bytes, not {len}", body.len())));
    } else {
        body
    };
    if keys.chunk_id(&data) != *id {
        return Err(bad("its contents do not hash to its name".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_is_caught() {
        for encrypted in [false, true] {
            let keys = Keys::generate(encrypted);
            let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
            let id = keys.chunk_id(&data);
            let obj = encode(&keys, &id, &data);
            assert_eq!(decode(&keys, &id, &obj, 1 << 20).unwrap(), data);
            assert_eq!(id_of(&name(&id)), Some(id));
            for i in 0..obj.len() {
                let mut bad = obj.clone();
                bad[i] ^= 0x40;
                assert!(decode(&keys, &id, &bad, 1 << 20).is_err(), "byte {i}");
            }
            assert!(decode(&keys, &id, &obj[..obj.len() - 1], 1 << 20).is_err());
            assert!(decode(&Keys::generate(encrypted), &id, &obj, 1 << 20).is_err());
        }
    }

    #[test]
    fn encrypted_chunks_do_not_show_their_contents() {
        let keys = Keys::generate(true);
        let data = b"KNOWN-PATTERN-".repeat(1000);
        let obj = encode(&keys, &keys.chunk_id(&data), &data);
        assert!(!obj.windows(14).any(|w| w == b"KNOWN-PATTERN-"));
    }
}
