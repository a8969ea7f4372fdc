//! `strata img commit`: merge an image's data into a backing file below it
//! (by default its immediate one), then empty it unless told to keep it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use strata_image::ops::{self, CommitOptions};
use strata_image::ChainOptions;

use super::shown;
use crate::cli::CommitArgs;
use crate::exit::OK;
use crate::output::Output;
use crate::progress::Progress;

/// A validated `commit` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    base: Option<PathBuf>,
    keep_top: bool,
}

/// Runs `strata img commit`.
pub fn run(a: CommitArgs, out: &Output) -> Result<u8> {
    // As qemu-img: naming a base implies -d.
    let req = Request {
        keep_top: a.keep || a.base.is_some(),
        file: a.file,
        base: a.base,
    };
    let file = shown(&req.file);
    let base_depth = match &req.base {
        None => 1,
        Some(base) => {
            // Find the base's depth first (no locks, nothing written), so that
            // only the layers down to it are opened writable.
            let probe = strata_image::open(
                &req.file,
                &ChainOptions {
                    lock: false,
                    ..Default::default()
                },
            )?;
            let want = std::fs::canonicalize(base)
                .with_context(|| format!("{}: cannot open base", shown(base)))?;
            let mut depth = 1;
            let mut cur = probe.backing();
            loop {
                let Some(img) = cur else {
                    anyhow::bail!("{file}: {} is not in the backing chain", shown(base));
                };
                if std::fs::canonicalize(img.path()).is_ok_and(|p| p == want) {
                    break depth;
                }
                depth += 1;
                cur = img.backing();
            }
        }
    };
    let opts = ChainOptions {
        writable: !req.keep_top,
        writable_backing: base_depth,
        ..Default::default()
    };
    let top = strata_image::open(&req.file, &opts)?;
    let bar = Progress::new(out, "committing");
    let opts = CommitOptions {
        base_depth,
        keep_top: req.keep_top,
        skip_bitmaps: false,
    };
    ops::commit(top.as_ref(), &opts, &|d, t| bar.update(d, t))?;
    bar.finish();
    top.flush()?;
    top.close()?;
    out.say("Image committed.")?;
    Ok(OK)
}
