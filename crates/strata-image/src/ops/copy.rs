//! A small pool of workers that moves ranges chunk by chunk, so that reading
//! one chunk overlaps writing another (as qemu-img keeps several requests in
//! flight). Each worker owns its buffer; the first error stops everyone.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{Progress, CHUNK};
use crate::error::Result;

/// Workers used by convert and commit.
pub(crate) const WORKERS: usize = 4;

/// Splits `ranges` into pieces that never cross a multiple of `chunk`.
fn pieces(ranges: &[(u64, u64)], chunk: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let n = (chunk - pos % chunk).min(end - pos);
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

/// Calls `work(buffer, offset, len)` for every piece of `ranges` on
/// [`WORKERS`] threads; `skipped` bytes count as already done for progress.
pub(crate) fn parallel_chunks(
    ranges: &[(u64, u64)],
    chunk: u64,
    total: u64,
    skipped: u64,
    progress: Progress,
    work: &(dyn Fn(&mut [u8], u64) -> Result<()> + Sync),
) -> Result<()> {
    let chunk = chunk.max(CHUNK);
    let jobs = pieces(ranges, chunk);
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(skipped);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    progress(skipped, total);
    std::thread::scope(|s| {
        for started in 0..WORKERS.min(jobs.len()) {
            let spawned = crate::chain::io_thread().spawn_scoped(s, || {
                let mut buf = vec![0u8; chunk as usize];
                while !failed.load(Ordering::Relaxed) {
                    let Some(&(pos, n)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(e) = work(&mut buf[..n as usize], pos) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                    let d = done.fetch_add(n, Ordering::Relaxed) + n;
                    progress(d, total);
                }
            });
            if let Err(e) = spawned {
                // Workers already started finish the jobs; with none, fail.
                if started == 0 {
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(crate::Error::io("copy worker", "spawn", 0, e));
                } else {
                    tracing::warn!("cannot start a copy worker: {e}");
                }
                break;
            }
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
