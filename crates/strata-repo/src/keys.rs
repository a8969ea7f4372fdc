//! A repository's keys, made at random when it is made: `id` names chunks
//! (a BLAKE3 keyed hash of a chunk's contents, so the names reveal nothing
//! without it), `mac` signs indexes and manifests (BLAKE3 keyed), and, in
//! an encrypted repository, `data` encrypts every object
//! (ChaCha20-Poly1305). How they are kept is [`crate::config`]'s.

/// A chunk's id: the keyed hash of its contents.
pub type ChunkId = [u8; 32];

/// The keys.
#[derive(Clone)]
pub struct Keys {
    pub(crate) id: [u8; 32],
    pub(crate) mac: [u8; 32],
    pub(crate) data: Option<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("encrypted", &self.data.is_some())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// New random keys, with a data key when `encrypted`.
    pub fn generate(encrypted: bool) -> Keys {
        Keys {
            id: crate::seal::random(),
            mac: crate::seal::random(),
            data: encrypted.then(crate::seal::random),
        }
    }

    /// Keys as given (tests and fuzzing; a repository's come from its
    /// config).
    pub fn from_parts(id: [u8; 32], mac: [u8; 32], data: Option<[u8; 32]>) -> Keys {
        Keys { id, mac, data }
    }

    /// Whether objects are encrypted.
    pub fn encrypted(&self) -> bool {
        self.data.is_some()
    }

    /// The id of a chunk holding `data`.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        *blake3::keyed_hash(&self.id, data).as_bytes()
    }

    /// The MAC of `bytes` as a `what` (a kind of object: the same bytes
    /// signed as another kind do not verify).
    pub fn mac(&self, what: &str, bytes: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.mac);
        h.update(what.as_bytes());
        h.update(&[0]);
        h.update(bytes);
        *h.finalize().as_bytes()
    }
}

/// The bytes of key file `file` (a passphrase in a file will do): an
/// unreadable or empty file is refused, naming it.
pub fn read_key_file(file: &std::path::Path) -> crate::Result<Vec<u8>> {
    let k = std::fs::read(file).map_err(|e| crate::Error::Io {
        path: file.to_path_buf(),
        op: "read the key file",
        source: e,
    })?;
    if k.is_empty() {
        return Err(crate::Error::invalid(
            format!("key file {}", file.display()),
            "empty",
        ));
    }
    Ok(k)
}
