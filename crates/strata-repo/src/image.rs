//! One disk of a backup read in place, as a read-only image
//! ([`strata_image::Image`]): what `repo mount` serves over NBD so a
//! machine can boot from a backup at once. Each read fetches the chunks it
//! covers (checked whole, as a restore checks them; a damaged or missing
//! one fails the read and never gives wrong bytes), keeping the last few
//! in memory; a chunk the index marks as zeros reads as zeros and shows as
//! a hole in the block status.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use strata_image::{Extent, Format, Image};

use crate::index::Index;
use crate::repo::Repo;

/// Chunks kept in memory (a sequential reader's and a few random ones).
const CACHED: usize = 16;

/// A backup's disk as a read-only image.
pub struct BackupDisk {
    repo: Arc<Repo>,
    index: Index,
    /// How it is named in messages: `REPO/BACKUP/DISK`.
    path: String,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for BackupDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupDisk")
            .field("path", &self.path)
            .finish()
    }
}

impl BackupDisk {
    /// Disk `disk` of backup `backup` in `repo` (its manifest and index
    /// checked).
    pub fn open(repo: Arc<Repo>, backup: &str, disk: &str) -> crate::Result<BackupDisk> {
        let m = repo.backup(backup)?;
        let entry = m.disks.iter().find(|d| d.name == disk).ok_or_else(|| {
            let names: Vec<&str> = m.disks.iter().map(|d| d.name.as_str()).collect();
            crate::Error::invalid(
                format!("backup {backup}"),
                format!("has no disk '{disk}' (it has {})", names.join(", ")),
            )
        })?;
        let index = repo.get_index(entry)?;
        let path = format!("{}/{backup}/{disk}", repo.describe());
        Ok(BackupDisk {
            repo,
            index,
            path,
            cache: Mutex::new(VecDeque::new()),
        })
    }

    fn chunk_size(&self) -> u64 {
        self.index.chunk_size as u64
    }

    /// Chunk `k`'s bytes (`None`: zeros).
    fn chunk(&self, k: u64) -> strata_image::Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.index.chunks[k as usize] else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = cache.iter().position(|(n, _)| *n == k) {
            let hit = cache.remove(pos).map(|(_, b)| b);
            if let Some(b) = &hit {
                cache.push_front((k, b.clone()));
            }
            return Ok(hit);
        }
        drop(cache);
        let bytes = Arc::new(
            self.repo
                .get_chunk(&id)
                .map_err(|e| strata_image::Error::corrupt(&self.path, e.to_string()))?,
        );
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.push_front((k, bytes.clone()));
        cache.truncate(CACHED);
        Ok(Some(bytes))
    }

    fn read_only(&self) -> strata_image::Error {
        strata_image::Error::ReadOnly {
            path: self.path.clone(),
        }
    }

    fn check(&self, offset: u64, len: u64) -> strata_image::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.index.size => Ok(()),
            _ => Err(strata_image::Error::invalid(
                &self.path,
                format!(
                    "request at offset {offset} length {len} is beyond the end of the disk ({} bytes)",
                    self.index.size
                ),
            )),
        }
    }
}

impl Image for BackupDisk {
    fn path(&self) -> &str {
        &self.path
    }
    fn format(&self) -> Format {
        Format::Raw
    }
    fn size(&self) -> u64 {
        self.index.size
    }
    fn writable(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> strata_image::Result<()> {
        self.check(offset, buf.len() as u64)?;
        let cs = self.chunk_size();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (k, within) = (at / cs, (at % cs) as usize);
            let n = (buf.len() - done).min(cs as usize - within);
            let out = &mut buf[done..done + n];
            match self.chunk(k)? {
                None => out.fill(0),
                Some(b) => match b.get(within..within + n) {
                    Some(src) => out.copy_from_slice(src),
                    None => {
                        return Err(strata_image::Error::corrupt(
                            &self.path,
                            format!("chunk {k} holds {} bytes, fewer than its place", b.len()),
                        ))
                    }
                },
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> strata_image::Result<()> {
        Err(self.read_only())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> strata_image::Result<()> {
        Err(self.read_only())
    }
    fn discard(&self, _: u64, _: u64) -> strata_image::Result<()> {
        Err(self.read_only())
    }
    fn flush(&self) -> strata_image::Result<()> {
        Ok(())
    }
    fn resize(&self, _: u64) -> strata_image::Result<()> {
        Err(self.read_only())
    }
    fn block_status(&self, offset: u64, len: u64) -> strata_image::Result<Vec<Extent>> {
        self.check(offset, len)?;
        let cs = self.chunk_size();
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let k = at / cs;
            let end = ((k + 1) * cs).min(offset + len);
            let zero = self.index.chunks[k as usize].is_none();
            match out.last_mut() {
                Some(e) if e.zero == zero => e.length += end - at,
                _ => out.push(Extent {
                    start: at,
                    length: end - at,
                    depth: 0,
                    present: !zero,
                    zero,
                    data: !zero,
                    compressed: false,
                    offset: None,
                }),
            }
            at = end;
        }
        Ok(out)
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }
    fn actual_size(&self) -> strata_image::Result<u64> {
        Ok(0)
    }
}
