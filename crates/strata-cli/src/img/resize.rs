//! `strata img resize`: change the virtual size. Growing always works;
//! shrinking needs `--shrink` and is only possible for raw images so far.

use std::path::PathBuf;

use anyhow::{bail, Result};
use strata_image::Format;

use super::{format_of, open, shown, OpenSpec};
use crate::cli::ResizeArgs;
use crate::exit::OK;
use crate::output::Output;
use crate::size::SizeChange;

/// A validated `resize` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    format: Option<Format>,
    change: SizeChange,
    shrink: bool,
}

/// Runs `strata img resize`.
pub fn run(a: ResizeArgs, out: &Output) -> Result<u8> {
    let req = Request {
        file: a.file,
        format: format_of(a.format),
        change: a.size,
        shrink: a.shrink,
    };
    let file = shown(&req.file);
    let img = open(
        &req.file,
        OpenSpec {
            format: req.format,
            writable: true,
            ..Default::default()
        },
    )?;
    let current = img.size();
    let Some(new_size) = req.change.apply(current) else {
        bail!(
            "{file}: the new size would be below zero or too large (current size {current} bytes)"
        );
    };
    if new_size < current {
        if !req.shrink {
            bail!("{file}: use --shrink to make the image smaller ({current} to {new_size} bytes); data past the new end is lost");
        }
        if img.format() == Format::Qcow2 {
            bail!("{file}: shrinking a qcow2 image is not supported yet");
        }
    }
    if new_size != current {
        img.resize(new_size)?;
    }
    img.flush()?;
    img.close()?;
    out.say("Image resized.")?;
    Ok(OK)
}
