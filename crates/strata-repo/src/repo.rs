//! An open repository: its backend, config and keys; chunks, indexes and
//! manifests in and out.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::Backend;
use crate::chunk;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::hex;
use crate::index::Index;
use crate::keys::{ChunkId, Keys};
use crate::manifest::{DiskEntry, Manifest};

/// The config object's name.
pub const CONFIG: &str = "config";

/// A repository.
pub struct Repo {
    backend: Box<dyn Backend>,
    config: Config,
    keys: Keys,
    /// When it was opened: a garbage collection since may have deleted
    /// what a backup made through it names ([`crate::gc`]).
    opened: SystemTime,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("at", &self.backend.describe())
            .field("keys", &self.keys)
            .finish()
    }
}

/// What storing one chunk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The chunk's id; `None` for zeros, never stored.
    pub id: Option<ChunkId>,
    /// Bytes written (0 when it was there already).
    pub written: u64,
}

impl Repo {
    /// Makes a new repository in `backend`, encrypted under `secret` (a
    /// key file's bytes) when given. Refused where one is already.
    pub fn init(backend: Box<dyn Backend>, secret: Option<&[u8]>) -> Result<Repo> {
        Repo::init_with(backend, secret, crate::config::CHUNK_SIZE)
    }

    /// [`Repo::init`] with chunks of `chunk_size` bytes: a power of two
    /// from 64 KiB (a dirty bitmap's usual granule) to 16 MiB.
    pub fn init_with(
        backend: Box<dyn Backend>,
        secret: Option<&[u8]>,
        chunk_size: u32,
    ) -> Result<Repo> {
        crate::config::check_chunk_size(chunk_size)?;
        let keys = Keys::generate(secret.is_some());
        let mut config = Config::new(&keys, secret)?;
        config.chunk_size = chunk_size;
        if !backend.put_new(CONFIG, &config.to_bytes())? {
            return Err(Error::invalid(
                backend.describe(),
                "a repository is there already",
            ));
        }
        backend.sync()?;
        Ok(Repo {
            backend,
            config,
            keys,
            opened: SystemTime::now(),
        })
    }

    /// Opens the repository in `backend`, with `secret` (a key file's
    /// bytes) for an encrypted one.
    pub fn open(backend: Box<dyn Backend>, secret: Option<&[u8]>) -> Result<Repo> {
        let at = backend.describe();
        let bytes = backend.get(CONFIG).map_err(|e| match e {
            Error::Missing { .. } => {
                Error::invalid(&at, "no strata repository there (repo init makes one)")
            }
            e => e,
        })?;
        let config = Config::parse(&bytes, &format!("{at}: config"))?;
        let keys = config.keys(secret, &at)?;
        Ok(Repo {
            backend,
            config,
            keys,
            opened: SystemTime::now(),
        })
    }

    /// Removes backup `id`: its manifest first (it is gone at once), then
    /// its indexes. Its chunks stay until garbage collection
    /// ([`crate::gc::collect`]) finds no backup naming them.
    pub fn remove_backup(&self, id: &str) -> Result<()> {
        let m = self.backup(id)?;
        self.backend.delete(&Manifest::object(&m.id))?;
        for d in &m.disks {
            self.backend.delete(&d.index)?;
        }
        Ok(())
    }

    /// Whether its chunks are encrypted (it was made with a key).
    pub fn encrypted(&self) -> bool {
        self.config.encryption.is_some()
    }

    /// Where it is.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Its backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Its keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A short name of this repository that only its keys make (8 hex
    /// digits): what tells its checkpoints from another repository's.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.keys.mac("fingerprint", b"")[..4])
    }

    /// The chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// Stores `data` (one chunk of a disk, or its last part) unless it is
    /// all zeros or stored already.
    pub fn put_chunk(&self, data: &[u8]) -> Result<Stored> {
        if is_zero(data) {
            return Ok(Stored {
                id: None,
                written: 0,
            });
        }
        let id = self.keys.chunk_id(data);
        let name = chunk::name(&id);
        // One there already is marked used now, for garbage collection's
        // grace period (docs/repo.md).
        if self.backend.touch(&name)? {
            return Ok(Stored {
                id: Some(id),
                written: 0,
            });
        }
        let obj = chunk::encode(&self.keys, &id, data);
        let written = if self.backend.put_new(&name, &obj)? {
            obj.len() as u64
        } else {
            0
        };
        Ok(Stored {
            id: Some(id),
            written,
        })
    }

    /// Chunk `id`, checked whole.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let bytes = self.backend.get(&chunk::name(id))?;
        chunk::decode(&self.keys, id, &bytes, self.config.chunk_size as usize)
    }

    /// Stores the index of disk `disk` of backup `backup`: its object name
    /// and MAC.
    pub fn put_index(&self, backup: &str, disk: &str, index: &Index) -> Result<(String, String)> {
        let name = format!("indexes/{backup}/{disk}");
        let bytes = index.encode(&self.keys);
        self.backend.put(&name, &bytes)?;
        Ok((name, hex::encode(&self.keys.mac("index", &bytes))))
    }

    /// The index of `disk`, checked against the MAC its manifest holds.
    pub fn get_index(&self, disk: &DiskEntry) -> Result<Index> {
        let bytes = self.backend.get(&disk.index)?;
        if hex::encode(&self.keys.mac("index", &bytes)) != disk.index_mac {
            return Err(Error::damaged(
                &disk.index,
                "its MAC is not the one its manifest holds: it was changed",
            ));
        }
        let ix = Index::decode(&self.keys, &bytes, &disk.index)?;
        if ix.size != disk.size {
            return Err(Error::damaged(
                &disk.index,
                format!(
                    "a disk of {} bytes, the manifest says {}",
                    ix.size, disk.size
                ),
            ));
        }
        Ok(ix)
    }

    /// Makes backup `m` visible: everything it names is made durable
    /// first, and checked to be there still when a garbage collection ran
    /// meanwhile ([`crate::gc`]), then its manifest is written.
    pub fn commit(&self, m: &Manifest) -> Result<()> {
        self.backend.sync()?;
        crate::gc::settle(self, self.opened, &|| {
            let mut ids = std::collections::BTreeSet::new();
            for d in &m.disks {
                ids.extend(self.get_index(d)?.chunks.into_iter().flatten());
            }
            Ok(ids)
        })?;
        let name = Manifest::object(&m.id);
        if !self.backend.put_new(&name, &m.encode(&self.keys))? {
            return Err(Error::invalid(name, "a backup of that id is there already"));
        }
        self.backend.sync()
    }

    /// Backup `id`'s manifest, checked.
    pub fn backup(&self, id: &str) -> Result<Manifest> {
        let name = Manifest::object(id);
        let bytes = self.backend.get(&name)?;
        Manifest::decode(&self.keys, &bytes, &name)
    }

    /// The ids of every backup, oldest first.
    pub fn backup_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("backups/")?
            .into_iter()
            .filter_map(|n| n.strip_prefix("backups/").map(str::to_string))
            .filter(|n| !n.contains('/'))
            .collect())
    }

    /// Every backup, oldest first (a damaged manifest is an error naming
    /// it; one removed since the listing, by a prune elsewhere, is not
    /// there).
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.backup_ids()? {
            match self.backup(&id) {
                Ok(m) => out.push(m),
                Err(Error::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Whether `data` is all zeros.
pub fn is_zero(data: &[u8]) -> bool {
    let blocks = data.chunks_exact(64);
    let tail = blocks.remainder();
    tail.iter().all(|&b| b == 0) && { blocks }.all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// A new backup id: the UTC time to the millisecond and 8 random hex
/// digits (`20261206T031211.123Z-9e9e55ec`): sorted, they are in the
/// order they were taken (on one host; across hosts, as their clocks
/// agree).
pub fn new_backup_id(time: SystemTime) -> String {
    let r: [u8; 4] = crate::seal::random();
    format!("{}-{}", utc(time), hex::encode(&r))
}

/// `time` in UTC as `YYYYMMDDTHHMMSS.mmmZ` (ISO 8601's basic format).
pub fn utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis(),
    )
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_spell_the_utc_time() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_524_331);
        let id = new_backup_id(t);
        assert!(id.starts_with("20261206T"), "{id}");
        assert_eq!(id.len(), "20261206T031211.000Z-".len() + 8);
        let t = UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_042); // 2000-02-29
        assert!(new_backup_id(t).starts_with("20000229T000000.042Z-"));
    }

    #[test]
    fn zeros_are_seen() {
        assert!(is_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
