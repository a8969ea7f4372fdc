//! A backup's manifest (`backups/ID`): what the backup is of, when, which
//! backup it follows, and each disk's size, index and figures; written
//! last, so a backup is there exactly when its manifest is. Its MAC (the
//! MAC key over the JSON) catches any change; it holds each index's MAC,
//! so the manifest vouches for the indexes and they for the chunks.
//!
//! ```text
//! 0  4  magic "SRMF"
//! 4  1  version 1
//! 5  1  flags: 2 = encrypted
//! 6  2  zero
//! 8  …  {"manifest": {...}, "mac": "HEX"} as JSON;
//!       encrypted: a random 12-byte nonce, then that JSON sealed
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hex;
use crate::keys::Keys;
use crate::seal;

const MAGIC: &[u8; 4] = b"SRMF";
const VERSION: u8 = 1;
const ENCRYPTED: u8 = 2;

/// One backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Its id: `YYYYMMDDTHHMMSS.mmmZ-RANDOM`, sortable by time, unique
    /// across hosts without asking anyone.
    pub id: String,
    /// When it was taken (seconds since the epoch).
    pub time: u64,
    /// The host that wrote it.
    pub host: String,
    /// What it is of (a domain's name): what prune rules group by.
    pub label: String,
    /// The backup whose indexes unchanged chunks were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its disks.
    pub disks: Vec<DiskEntry>,
    /// What the writer keeps with it (a domain's definition, its
    /// checkpoint): opaque here.
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// One disk of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// The disk's name (a target: `vda`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its index object.
    pub index: String,
    /// The index's MAC, hex.
    pub index_mac: String,
    /// Its chunks.
    pub chunks: u64,
    /// Of those, chunks of zeros (never stored).
    pub zero_chunks: u64,
    /// Chunks read from the disk (the others came from the parent).
    pub read_chunks: u64,
    /// Chunks this backup stored (the others were there).
    pub new_chunks: u64,
    /// Bytes this backup stored (compressed, encrypted).
    pub new_bytes: u64,
}

impl Manifest {
    /// The object's name.
    pub fn object(id: &str) -> String {
        format!("backups/{id}")
    }

    /// Bytes read from the disks that were not zeros, over all disks.
    pub fn logical_size(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }

    /// Bytes this backup stored.
    pub fn stored(&self) -> u64 {
        self.disks.iter().map(|d| d.new_bytes).sum()
    }

    fn mac(&self, keys: &Keys, json: &[u8]) -> String {
        let mut what = b"manifest ".to_vec();
        what.extend_from_slice(self.id.as_bytes());
        hex::encode(&keys.mac(&String::from_utf8_lossy(&what), json))
    }

    /// The manifest object, signed (and sealed when encrypted).
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a manifest serialises");
        let signed = serde_json::json!({
            "manifest": self,
            "mac": self.mac(keys, &json),
        });
        let body = serde_json::to_vec(&signed).expect("a manifest serialises");
        let flags = if keys.encrypted() { ENCRYPTED } else { 0 };
        let header = vec![MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, flags, 0, 0];
        match &keys.data {
            Some(k) => {
                let nonce = seal::random::<{ seal::NONCE }>();
                [
                    header.clone(),
                    nonce.to_vec(),
                    seal::seal(k, nonce, &header, &body),
                ]
                .concat()
            }
            None => [header, body].concat(),
        }
    }

    /// The manifest object `bytes` (named `object`) holds, its MAC checked
    /// and its id the one its name says.
    pub fn decode(keys: &Keys, bytes: &[u8], object: &str) -> Result<Manifest> {
        let bad = |p: String| Error::damaged(object, p);
        if bytes.len() < 8 || &bytes[..4] != MAGIC || bytes[4] != VERSION || bytes[6..8] != [0, 0] {
            return Err(bad("not a manifest (no SRMF header)".into()));
        }
        if (bytes[5] == ENCRYPTED) != keys.encrypted() || bytes[5] & !ENCRYPTED != 0 {
            return Err(bad(format!(
                "flags {:#x} do not fit the repository",
                bytes[5]
            )));
        }
        let (header, rest) = bytes.split_at(8);
        let body = match &keys.data {
            Some(k) if rest.len() >= seal::NONCE => {
                let mut n = [0u8; seal::NONCE];
                n.copy_from_slice(&rest[..seal::NONCE]);
                seal::open(k, n, header, &rest[seal::NONCE..])
                    .ok_or_else(|| bad("its authentication tag does not match".into()))?
            }
            Some(_) => return Err(bad("cut short".into())),
            None => rest.to_vec(),
        };
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Signed {
            manifest: Manifest,
            mac: String,
        }
        let s: Signed =
            serde_json::from_slice(&body).map_err(|e| bad(format!("not a manifest: {e}")))?;
        let json = serde_json::to_vec(&s.manifest).expect("a manifest serialises");
        if s.manifest.mac(keys, &json) != s.mac {
            return Err(bad("its MAC does not match: it was changed".into()));
        }
        if Manifest::object(&s.manifest.id) != object {
            return Err(bad(format!("holds backup {}", s.manifest.id)));
        }
        Ok(s.manifest)
    }
}
