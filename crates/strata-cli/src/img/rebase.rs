//! `strata img rebase`: point an image at a new backing file (or none). The
//! safe mode first copies in whatever the new chain would show differently;
//! `-u` only rewrites the header.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use strata_image::chain::resolve_backing;
use strata_image::ops::{self, RebaseOptions};
use strata_image::{Format, Image};

use super::{format_of, open, shown, OpenSpec};
use crate::cli::RebaseArgs;
use crate::exit::{usage, OK};
use crate::output::Output;
use crate::progress::Progress;

/// A validated `rebase` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    /// New backing name as stored (`None`: standalone).
    backing: Option<String>,
    backing_format: Option<Format>,
    header_only: bool,
}

/// Runs `strata img rebase`.
pub fn run(a: RebaseArgs, out: &Output) -> Result<u8> {
    let backing = (!a.backing.is_empty()).then_some(a.backing);
    if backing.is_none() && a.backing_format.is_some() {
        return Err(usage("-F needs a backing file (-b NEWBACKING)"));
    }
    let req = Request {
        file: a.file,
        backing,
        backing_format: format_of(a.backing_format),
        header_only: a.unsafe_header_only,
    };
    let file = shown(&req.file);
    // The old chain is needed only to copy data (safe mode).
    let spec = OpenSpec {
        writable: true,
        backing: !req.header_only,
        ..Default::default()
    };
    let top = open(&req.file, spec)?;
    if top.placement().is_none() {
        anyhow::bail!("{file}: only qcow2 images have a backing file");
    }
    let mut new_format = req.backing_format;
    let mut new_backing: Option<Arc<dyn Image>> = None;
    if let Some(name) = &req.backing {
        let path = resolve_backing(&req.file, name);
        let opened = open(
            &path,
            OpenSpec {
                format: new_format,
                backing: true,
                force_share: true,
                ..Default::default()
            },
        );
        match opened {
            Ok(img) => {
                new_format = new_format.or(Some(img.format()));
                new_backing = Some(img);
            }
            // With -u the new backing file need not exist yet.
            Err(e) if !req.header_only => {
                return Err(e.context(format!("{file}: cannot open new backing file {name}")))
            }
            Err(e) => tracing::warn!("{file}: new backing file {name} cannot be opened: {e:#}"),
        }
    }
    let opts = RebaseOptions {
        backing_name: req.backing.clone(),
        backing_format: new_format.map(|f| f.name().to_string()),
        unsafe_header_only: req.header_only,
    };
    let bar = Progress::new(out, "rebasing");
    ops::rebase(top.as_ref(), new_backing.as_deref(), &opts, &|d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    top.flush()?;
    top.close()?;
    Ok(OK)
}
