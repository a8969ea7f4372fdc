//! `strata img convert`: copy an image's guest contents into a new image,
//! optionally compressed, optionally over a backing file (`-B`, copying
//! only what the source's top image holds), optionally from an internal
//! snapshot of the source (`-s`) instead of its current contents. With
//! `--bitmap NAME -B PREVIOUS` it copies exactly what the bitmap marks
//! changed (through the source's backing chain) on top of the previous
//! backup: a file-level incremental backup chain.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use strata_image::chain::resolve_backing;
use strata_image::ops::{self, ConvertOptions};
use strata_image::qcow2::Qcow2;
use strata_image::{Format, Image};

use super::create::create_raw;
use super::options::{self, FormatOptions};
use super::snapshot::snapshots_for;
use super::{format_of, open, shown, OpenSpec};
use crate::cli::ConvertArgs;
use crate::exit::{usage, OK};
use crate::output::Output;
use crate::progress::Progress;

/// A validated `convert` request.
#[derive(Debug)]
struct Request {
    src: PathBuf,
    src_format: Option<Format>,
    dst: PathBuf,
    dst_format: Format,
    compress: bool,
    opts: FormatOptions,
    /// The target's backing file as stored, and its format if given.
    backing: Option<(String, Option<Format>)>,
    /// Copy this internal snapshot (name or ID) of the source.
    snapshot: Option<String>,
    /// Copy only what this bitmap marks changed (an incremental backup).
    bitmap: Option<String>,
}

impl Request {
    fn new(a: ConvertArgs) -> Result<Self> {
        let dst_format = a.output_format.format();
        let opts = options::parse(&a.options)?;
        opts.check_for(dst_format)?;
        if a.compress && dst_format != Format::Qcow2 {
            return Err(usage("-c (compression) needs a qcow2 target (-O qcow2)"));
        }
        if a.compress && opts.data_file.is_some() {
            return Err(usage(
                "-c (compression) cannot be used with data_file: an external data file holds no compressed clusters",
            ));
        }
        let name = a.backing.or(opts.backing_file.clone());
        let backing_fmt = format_of(a.backing_format).or(opts.backing_fmt);
        let backing = match name {
            Some(_) if dst_format != Format::Qcow2 => {
                return Err(usage("-B needs a qcow2 target (-O qcow2)"))
            }
            Some(n) if n.is_empty() => return Err(usage("-B needs a file name")),
            Some(n) => Some((n, backing_fmt)),
            None if backing_fmt.is_some() => return Err(usage("-F needs -B BACKING")),
            None => None,
        };
        if opts.size.is_some() {
            return Err(usage(
                "option size is not valid for convert (the target takes the source's size)",
            ));
        }
        if dst_format == Format::Qcow2 {
            options::validate_qcow2(&opts.qcow2(0, backing.clone()), &shown(&a.dst))?;
        }
        if a.snapshot.as_deref() == Some("") {
            return Err(usage("-s needs a snapshot name or ID"));
        }
        match &a.bitmap {
            Some(b) if b.is_empty() => return Err(usage("--bitmap needs a bitmap name")),
            Some(_) if backing.is_none() => {
                return Err(usage(
                    "--bitmap needs -B PREVIOUS: the backup the changed clusters go on top of",
                ))
            }
            Some(_) if a.snapshot.is_some() => {
                return Err(usage("--bitmap and -s cannot be used together"))
            }
            Some(_) if a.compress => return Err(usage("--bitmap and -c cannot be used together")),
            _ => {}
        }
        if a.src == a.dst {
            return Err(usage("the source and the target are the same file"));
        }
        Ok(Request {
            src: a.src,
            src_format: format_of(a.format),
            dst: a.dst,
            dst_format,
            compress: a.compress,
            opts,
            backing,
            snapshot: a.snapshot,
            bitmap: a.bitmap,
        })
    }
}

/// Runs `strata img convert`.
pub fn run(a: ConvertArgs, out: &Output) -> Result<u8> {
    let req = Request::new(a)?;
    let src = open(
        &req.src,
        OpenSpec {
            format: req.src_format,
            backing: true,
            ..Default::default()
        },
    );
    let src = match &req.snapshot {
        Some(name) => src.with_context(|| format!("cannot convert snapshot '{name}'"))?,
        None => src?,
    };
    let mut backing = req.backing.clone();
    if let Some((name, fmt @ None)) = &mut backing {
        // Record the backing file's real format, as qemu-img wants one.
        let path = resolve_backing(&req.dst, name);
        let b = open(
            &path,
            OpenSpec {
                force_share: true,
                ..Default::default()
            },
        )
        .with_context(|| format!("{}: cannot use backing file {name}", shown(&req.dst)))?;
        *fmt = Some(b.format());
    }
    let view = match &req.snapshot {
        Some(name) => {
            let doing = format!("convert snapshot '{name}'");
            snapshots_for(src.as_ref(), &shown(&req.src), &doing)?;
            Some(src.clone().snapshot_view(name)?)
        }
        None => None,
    };
    let src: &dyn Image = match &view {
        Some(v) => v.as_ref(),
        None => src.as_ref(),
    };
    let size = src.size();
    // A data file this convert creates goes again if the copy fails.
    let new_data_file = req
        .opts
        .data_file
        .as_ref()
        .map(|n| strata_image::qcow2::data_file::resolve(&req.dst, n))
        .filter(|p| !p.exists());
    match req.dst_format {
        Format::Qcow2 => {
            let c = req
                .opts
                .qcow2(options::round_to_sector(size)?, backing.clone());
            Qcow2::create_file(&req.dst, &c)?;
        }
        Format::Raw => create_raw(&req.dst, size, req.opts.preallocation.unwrap_or_default())?,
    }
    // From here on a failure removes the half-written target.
    let result = copy(&req, src, out);
    if result.is_err() {
        let _ = std::fs::remove_file(&req.dst);
        if let Some(p) = new_data_file {
            let _ = std::fs::remove_file(p);
        }
    }
    result.map(|()| OK)
}

fn copy(req: &Request, src: &dyn Image, out: &Output) -> Result<()> {
    let spec = OpenSpec {
        format: Some(req.dst_format),
        writable: true,
        backing: req.backing.is_some(),
        ..Default::default()
    };
    let dst: Arc<dyn Image> = open(&req.dst, spec)?;
    let opts = ConvertOptions {
        compress: req.compress,
        top_only: req.backing.is_some(),
        sparse_size: 0,
    };
    let bar = Progress::new(out, "converting");
    match &req.bitmap {
        Some(name) => {
            let dirty = strata_image::dirty_since(src, name)?;
            ops::convert_dirty(src, dst.as_ref(), &dirty, &|d, t| bar.update(d, t))?;
        }
        None => ops::convert(src, dst.as_ref(), &opts, &|d, t| bar.update(d, t))?,
    }
    bar.finish();
    dst.flush()?;
    dst.close()?;
    Ok(())
}
