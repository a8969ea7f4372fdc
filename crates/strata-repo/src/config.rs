//! The repository's `config` object, written once by `init`: the format
//! version, the chunk size, and the keys ([`crate::keys`]).
//!
//! - Not encrypted: the keys are in the config as they are. The MACs then
//!   catch damage and changes made without the config, not a forger who
//!   can read it.
//! - Encrypted (`--key-file`): the keys are sealed (ChaCha20-Poly1305)
//!   under a key derived from the key file's bytes with Argon2id (64 MiB,
//!   3 passes, a random salt), so a key file holding a passphrase is
//!   as hard to guess as Argon2id makes it. A wrong key fails the seal's
//!   tag at once; the keys are never stored in the clear.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hex;
use crate::keys::Keys;
use crate::seal;

/// The format this code writes and reads.
pub const FORMAT: u32 = 1;

/// The chunk size of a new repository unless told: 1 MiB (aligned to
/// the disk). Each repository's config keeps its own.
pub const CHUNK_SIZE: u32 = 1 << 20;

/// Refuses a chunk size a new repository may not have: a power of two
/// from 64 KiB (a dirty bitmap's usual granule) to 16 MiB is needed.
pub fn check_chunk_size(chunk_size: u32) -> crate::Result<()> {
    if !chunk_size.is_power_of_two() || !(64 << 10..=16 << 20).contains(&chunk_size) {
        return Err(crate::Error::invalid(
            format!("chunk size {chunk_size}"),
            "a power of two from 64 KiB to 16 MiB is needed",
        ));
    }
    Ok(())
}

/// What the config holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The format version.
    #[serde(rename = "strata-repo")]
    pub format: u32,
    /// The chunk size in bytes.
    pub chunk_size: u32,
    /// The keys, in the clear (a repository that is not encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PlainKeys>,
    /// The keys, sealed (an encrypted repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Sealed>,
}

/// Keys in the clear, in hex.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainKeys {
    /// The chunk id key.
    pub id: String,
    /// The MAC key.
    pub mac: String,
    /// The data key (only inside [`Sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Keys sealed under a key derived from the user's key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// The cipher (`chacha20-poly1305`).
    pub cipher: String,
    /// The key derivation (`argon2id`).
    pub kdf: String,
    /// Argon2's memory in KiB.
    pub memory_kib: u32,
    /// Argon2's passes.
    pub passes: u32,
    /// Argon2's lanes.
    pub lanes: u32,
    /// The salt, hex.
    pub salt: String,
    /// The nonce, hex.
    pub nonce: String,
    /// The sealed [`PlainKeys`] JSON, hex.
    pub sealed: String,
}

/// What the sealed keys are authenticated as.
const AAD: &[u8] = b"strata-repo keys v1";

fn plain(keys: &Keys) -> PlainKeys {
    PlainKeys {
        id: hex::encode(&keys.id),
        mac: hex::encode(&keys.mac),
        data: keys.data.map(|d| hex::encode(&d)),
    }
}

fn from_plain(p: &PlainKeys, what: &str) -> Result<Keys> {
    let bad = || Error::damaged(what, "the keys are not 32 bytes of hex each");
    let data = match &p.data {
        Some(d) => Some(hex::decode::<32>(d).ok_or_else(bad)?),
        None => None,
    };
    Ok(Keys {
        id: hex::decode(&p.id).ok_or_else(bad)?,
        mac: hex::decode(&p.mac).ok_or_else(bad)?,
        data,
    })
}

/// Argon2id of `secret` with `salt`.
fn derive(
    secret: &[u8],
    salt: &[u8],
    memory_kib: u32,
    passes: u32,
    lanes: u32,
) -> Result<[u8; 32]> {
    let params = argon2::Params::new(memory_kib, passes, lanes, Some(32))
        .map_err(|e| Error::invalid("config", format!("key derivation parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(secret, salt, &mut out)
        .map_err(|e| Error::invalid("config", format!("key derivation: {e}")))?;
    Ok(out)
}

impl Config {
    /// A new config keeping `keys`: in the clear, or sealed under `secret`
    /// (the key file's bytes) when the keys have a data key.
    pub fn new(keys: &Keys, secret: Option<&[u8]>) -> Result<Config> {
        let mut c = Config {
            format: FORMAT,
            chunk_size: CHUNK_SIZE,
            keys: None,
            encryption: None,
        };
        match (keys.encrypted(), secret) {
            (false, None) => c.keys = Some(plain(keys)),
            (true, Some(secret)) => {
                let (memory_kib, passes, lanes) = (64 * 1024, 3, 1);
                let salt = seal::random::<16>();
                let nonce = seal::random::<{ seal::NONCE }>();
                let kek = derive(secret, &salt, memory_kib, passes, lanes)?;
                let json = serde_json::to_vec(&plain(keys))
                    .map_err(|e| Error::invalid("config", e.to_string()))?;
                c.encryption = Some(Sealed {
                    cipher: "chacha20-poly1305".into(),
                    kdf: "argon2id".into(),
                    memory_kib,
                    passes,
                    lanes,
                    salt: hex::encode(&salt),
                    nonce: hex::encode(&nonce),
                    sealed: hex::encode(&seal::seal(&kek, nonce, AAD, &json)),
                });
            }
            _ => {
                return Err(Error::invalid(
                    "config",
                    "an encrypted repository needs a key, and only it",
                ))
            }
        }
        Ok(c)
    }

    /// The config in `bytes` (object `what` of repository `repo`).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Config> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| Error::damaged(what, format!("not a strata repository config: {e}")))?;
        if c.format != FORMAT {
            return Err(Error::invalid(
                what,
                format!("format {} (this strata reads format {FORMAT})", c.format),
            ));
        }
        if c.chunk_size == 0 || c.chunk_size % 512 != 0 || c.chunk_size > 64 << 20 {
            return Err(Error::damaged(what, format!("chunk size {}", c.chunk_size)));
        }
        Ok(c)
    }

    /// The config as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a config serialises");
        v.push(b'\n');
        v
    }

    /// The keys, opened with `secret` (the key file's bytes) when they
    /// are sealed. `repo` names the repository in errors.
    pub fn keys(&self, secret: Option<&[u8]>, repo: &str) -> Result<Keys> {
        match (&self.keys, &self.encryption, secret) {
            (Some(k), None, _) => from_plain(k, "config"),
            (None, Some(_), None) => Err(Error::NeedKey {
                repo: repo.to_string(),
            }),
            (None, Some(s), Some(secret)) => {
                if s.cipher != "chacha20-poly1305" || s.kdf != "argon2id" {
                    return Err(Error::invalid(
                        "config",
                        format!(
                            "cipher {} with {}, which strata does not know",
                            s.cipher, s.kdf
                        ),
                    ));
                }
                let bad = || Error::damaged("config", "the sealed keys are not hex");
                let salt = hex::decode::<16>(&s.salt).ok_or_else(bad)?;
                let nonce = hex::decode::<{ seal::NONCE }>(&s.nonce).ok_or_else(bad)?;
                let sealed = decode_vec(&s.sealed).ok_or_else(bad)?;
                // At most 1 GiB and 16 passes: a config cannot make a
                // command take all the memory or hours.
                if s.memory_kib > 1 << 20 || s.passes > 16 || s.lanes > 16 {
                    return Err(Error::damaged(
                        "config",
                        "key derivation parameters out of range",
                    ));
                }
                let kek = derive(secret, &salt, s.memory_kib, s.passes, s.lanes)?;
                let json =
                    seal::open(&kek, nonce, AAD, &sealed).ok_or_else(|| Error::WrongKey {
                        repo: repo.to_string(),
                    })?;
                let p: PlainKeys = serde_json::from_slice(&json)
                    .map_err(|e| Error::damaged("config", format!("sealed keys: {e}")))?;
                let keys = from_plain(&p, "config")?;
                if !keys.encrypted() {
                    return Err(Error::damaged("config", "the sealed keys hold no data key"));
                }
                Ok(keys)
            }
            _ => Err(Error::damaged(
                "config",
                "holds neither keys nor sealed keys, or both",
            )),
        }
    }
}

/// Hex of any length.
fn decode_vec(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| {
            text.get(2 * i..2 * i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
        })
        .collect()
}
