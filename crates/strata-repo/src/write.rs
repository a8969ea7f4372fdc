//! Backing up one disk: chunk by chunk, in order, by a few workers at
//! once. A chunk the disk reads as zeros is never read nor stored; a chunk
//! that did not change since the parent backup (the caller knows which,
//! from its dirty bitmaps) is taken from the parent's index without being
//! read; any other is read, hashed under the id key, and stored unless it
//! is there already.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use strata_image::Image;

use crate::error::{Error, Result};
use crate::index::{self, Index};
use crate::keys::ChunkId;
use crate::manifest::DiskEntry;
use crate::repo::Repo;

/// How many chunks are worked on at once.
const WORKERS: usize = 4;

/// A disk to back up.
pub struct DiskSource<'a> {
    /// Its name in the backup (a target: `vda`).
    pub name: &'a str,
    /// Its contents at the backup's instant.
    pub image: &'a dyn Image,
    /// The parent backup's index of this disk, and whether chunk `n`
    /// changed since: an unchanged chunk is taken from the parent.
    pub since: Option<(&'a Index, &'a (dyn Fn(u64) -> bool + Sync))>,
    /// Told the offset and length of each chunk that reads as zeros (never
    /// read), for a source that can let go of what it will not be asked.
    pub skipped: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    /// Set from elsewhere to stop the backup: the next chunk fails with
    /// [`STOPPED`].
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

/// The problem of a backup stopped through [`DiskSource::stop`].
pub const STOPPED: &str = "aborted on request";

/// Counters of one disk's backup.
#[derive(Default)]
struct Counts {
    zero: AtomicU64,
    read: AtomicU64,
    new: AtomicU64,
    bytes: AtomicU64,
}

/// Backs disk `src` up into `repo` as part of backup `backup`: stores its
/// chunks and its index; its entry for the manifest. `progress` is told
/// the bytes of each chunk looked at (not those taken from the parent).
pub fn write_disk(
    repo: &Repo,
    backup: &str,
    src: &DiskSource<'_>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiskEntry> {
    let size = src.image.size();
    let cs = repo.chunk_size();
    let n = index::count(size, cs);
    let parent = src
        .since
        .filter(|(p, _)| p.size == size && p.chunk_size == cs);
    let ids: Vec<Mutex<Option<ChunkId>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let counts = Counts::default();
    on_workers(
        n,
        || vec![0u8; cs as usize],
        |buf, k| {
            if src.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Err(Error::Invalid {
                    what: format!("disk '{}'", src.name),
                    problem: STOPPED.to_string(),
                });
            }
            let off = k * cs as u64;
            let len = (size - off).min(cs as u64) as usize;
            let inherited = match parent {
                Some((p, changed)) if !changed(k) => match p.chunks[k as usize] {
                    None => Some(None),
                    // Marked used now, for garbage collection's grace
                    // period; one gone since the parent is read again.
                    Some(id) => repo
                        .backend()
                        .touch(&crate::chunk::name(&id))?
                        .then_some(Some(id)),
                },
                _ => None,
            };
            let (id, looked) = match inherited {
                Some(id) => (id, false),
                None => (
                    one_chunk(repo, src.image, off, &mut buf[..len], &counts)?,
                    true,
                ),
            };
            if id.is_none() {
                counts.zero.fetch_add(1, Ordering::Relaxed);
                if let Some(skip) = src.skipped.filter(|_| looked) {
                    skip(off, len as u64);
                }
            }
            *ids[k as usize].lock().unwrap_or_else(|e| e.into_inner()) = id;
            if looked {
                progress(len as u64);
            }
            Ok(())
        },
    )?;
    let index = Index {
        size,
        chunk_size: cs,
        chunks: ids
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect(),
    };
    let (object, mac) = repo.put_index(backup, src.name, &index)?;
    Ok(DiskEntry {
        name: src.name.to_string(),
        size,
        index: object,
        index_mac: mac,
        chunks: n,
        zero_chunks: counts.zero.into_inner(),
        read_chunks: counts.read.into_inner(),
        new_chunks: counts.new.into_inner(),
        new_bytes: counts.bytes.into_inner(),
    })
}

/// Reads the chunk at `off` (unless the image says it reads as zeros) and
/// stores it.
fn one_chunk(
    repo: &Repo,
    image: &dyn Image,
    off: u64,
    buf: &mut [u8],
    counts: &Counts,
) -> Result<Option<ChunkId>> {
    let len = buf.len() as u64;
    let zeros = image.block_status(off, len)?.iter().all(|e| e.zero);
    if zeros {
        return Ok(None);
    }
    image.read_at(buf, off)?;
    counts.read.fetch_add(1, Ordering::Relaxed);
    let stored = repo.put_chunk(buf)?;
    if stored.written > 0 {
        counts.new.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(stored.written, Ordering::Relaxed);
    }
    Ok(stored.id)
}

/// Runs `work` on chunks `0..n` on a few workers at once, each with its
/// own state from `init`; the first error stops them all and is returned.
pub(crate) fn on_workers<S>(
    n: u64,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, u64) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<crate::Error>> = Mutex::new(None);
    let stop = || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(n as usize).max(1) {
            s.spawn(|| {
                let mut state = init();
                while !stop() {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        return;
                    }
                    if let Err(e) = work(&mut state, k) {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How finely a restore looks for zeros inside a chunk: the runs between
/// them are written, the zeros left as the new image's holes.
const SPARSE: usize = 64 << 10;

/// Writes the runs of `data` that are not zeros at `off` of `target`.
fn write_sparse(target: &dyn Image, data: &[u8], off: u64) -> Result<()> {
    let mut start = None;
    let pieces: Vec<&[u8]> = data.chunks(SPARSE).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let zero = crate::repo::is_zero(piece);
        match (start, zero) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                let from = s * SPARSE;
                target.write_at(&data[from..i * SPARSE], off + from as u64)?;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        let from = s * SPARSE;
        target.write_at(&data[from..], off + from as u64)?;
    }
    Ok(())
}

/// Restores disk `entry` of a backup into `target` (as large as the disk,
/// reading as zeros: a new image), by a few workers at once; `progress` is
/// told each chunk's bytes once written.
pub fn restore_disk(
    repo: &Repo,
    entry: &DiskEntry,
    target: &dyn Image,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let index = repo.get_index(entry)?;
    let cs = index.chunk_size as u64;
    on_workers(
        index.chunks.len() as u64,
        || (),
        |_, k| {
            let off = k * cs;
            let len = (index.size - off).min(cs);
            if let Some(id) = &index.chunks[k as usize] {
                let data = repo.get_chunk(id)?;
                if data.len() as u64 != len {
                    return Err(crate::Error::damaged(
                        crate::chunk::name(id),
                        format!("{} bytes where the disk has {len}", data.len()),
                    ));
                }
                write_sparse(target, &data, off)?;
            }
            progress(len);
            Ok(())
        },
    )?;
    target.flush()?;
    Ok(())
}
