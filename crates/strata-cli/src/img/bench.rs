//! `strata img bench`: issue many same-sized reads or writes against an
//! image and time them, as `qemu-img bench` does (same option letters), plus
//! `--random SEED` for uniformly random aligned offsets (the same xorshift64
//! sequence `bench/img-vs-qemu.sh` feeds to qemu-io).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{format_of, open, OpenSpec};
use crate::cli::BenchArgs;
use crate::exit::{usage, OK};
use crate::output::Output;

/// A validated `bench` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    spec: OpenSpec,
    write: bool,
    size: u64,
    count: u64,
    depth: u64,
    offset: u64,
    step: u64,
    random: Option<u64>,
    pattern: u8,
    flush_interval: u64,
}

/// Offsets of every request, in issue order.
fn offsets(req: &Request, image_size: u64) -> Vec<u64> {
    let slots = (image_size / req.size).max(1);
    let mut x = req.random.unwrap_or(0);
    let mut pos = req.offset;
    (0..req.count)
        .map(|_| match req.random {
            Some(_) => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % slots) * req.size
            }
            None => {
                if pos + req.size > image_size {
                    pos = 0;
                }
                let at = pos;
                pos += req.step;
                at
            }
        })
        .collect()
}

/// Runs `strata img bench`.
pub fn run(a: BenchArgs, out: &Output) -> Result<u8> {
    if a.size == 0 || a.count == 0 || a.depth == 0 {
        return Err(usage(
            "--size, --count and --depth must be greater than zero",
        ));
    }
    let req = Request {
        spec: OpenSpec {
            format: format_of(a.format),
            writable: a.write,
            backing: true,
            force_share: false,
        },
        write: a.write,
        size: a.size,
        count: a.count,
        depth: a.depth,
        offset: a.offset,
        step: a.step.unwrap_or(a.size),
        random: a.random,
        pattern: a.pattern,
        flush_interval: a.flush_interval,
        file: a.file,
    };
    let img = open(&req.file, req.spec)?;
    if req.size > img.size() {
        return Err(usage("--size is larger than the image"));
    }
    let offsets = offsets(&req, img.size());
    out.say(&format!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        req.count,
        if req.write { "write" } else { "read" },
        req.size,
        req.depth,
        req.offset,
        if req.random.is_some() { "random".to_string() } else { req.step.to_string() },
    ))?;
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..req.depth)
            .map(|_| {
                strata_image::chain::io_thread().spawn_scoped(s, || -> Result<()> {
                    let mut buf = vec![req.pattern; req.size as usize];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&at) = offsets.get(i) else {
                            return Ok(());
                        };
                        if req.write {
                            img.write_at(&buf, at)?;
                            if req.flush_interval > 0
                                && (i as u64 + 1).is_multiple_of(req.flush_interval)
                            {
                                img.flush()?;
                            }
                        } else {
                            img.read_at(&mut buf, at)?;
                        }
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot start a benchmark worker")?;
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a benchmark worker panicked"))??;
        }
        Ok(())
    })?;
    img.flush()?;
    img.close()?;
    out.say(&format!(
        "Run completed in {:.3} seconds.",
        start.elapsed().as_secs_f64()
    ))?;
    // The price of crash-consistent bitmaps: syncs made before in-place writes.
    let syncs = img.dirty_bitmaps().map_or(0, |b| b.bitmap_syncs());
    if syncs > 0 {
        out.say(&format!("Bitmap syncs before in-place writes: {syncs}"))?;
    }
    Ok(OK)
}
