//! `strata img create`: a new qcow2 or raw image, optionally over a backing
//! file whose size it takes when no size is given.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use strata_image::chain::resolve_backing;
use strata_image::qcow2::{CreateOptions, Qcow2};
use strata_image::storage::{FileStorage, Storage};
use strata_image::Format;

use strata_image::qcow2::Preallocation;

use super::options::{self, FormatOptions};
use super::{format_of, open, shown, OpenSpec};
use crate::cli::CreateArgs;
use crate::exit::{usage, OK};
use crate::output::Output;

/// A validated `create` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    format: Format,
    /// Size in bytes, rounded up to 512; `None` = the backing image's size.
    size: Option<u64>,
    /// Backing name as stored, and its format if given.
    backing: Option<(String, Option<Format>)>,
    opts: FormatOptions,
}

impl Request {
    fn new(a: CreateArgs) -> Result<Self> {
        let opts = options::parse(&a.options)?;
        let format = a.format.format();
        opts.check_for(format)?;
        let name = a.backing.or(opts.backing_file.clone());
        let backing_fmt = format_of(a.backing_format).or(opts.backing_fmt);
        if format == Format::Raw && name.is_some() {
            return Err(usage(
                "a raw image cannot have a backing file (use -f qcow2)",
            ));
        }
        let backing = match name {
            Some(n) if n.is_empty() => return Err(usage("-b needs a file name")),
            Some(n) => Some((n, backing_fmt)),
            None if backing_fmt.is_some() => return Err(usage("-F needs -b BACKING")),
            None => None,
        };
        let size = a
            .size
            .or(opts.size)
            .map(options::round_to_sector)
            .transpose()?;
        if size.is_none() && backing.is_none() {
            return Err(usage(format!(
                "{}: a size is needed (or -b BACKING to take its size)",
                shown(&a.file)
            )));
        }
        if format == Format::Qcow2 {
            // Judge the options now, before any file is touched.
            let probe = opts.qcow2(size.unwrap_or(0), backing.clone());
            options::validate_qcow2(&probe, &shown(&a.file))?;
        }
        Ok(Request {
            file: a.file,
            format,
            size,
            backing,
            opts,
        })
    }
}

/// Runs `strata img create`.
pub fn run(a: CreateArgs, out: &Output) -> Result<u8> {
    let req = Request::new(a)?;
    let file = shown(&req.file);
    let mut backing = req.backing.clone();
    let mut size = req.size;
    if let Some((name, fmt)) = &mut backing {
        let path = resolve_backing(&req.file, name);
        let spec = OpenSpec {
            format: *fmt,
            force_share: true,
            ..Default::default()
        };
        let img =
            open(&path, spec).with_context(|| format!("{file}: cannot use backing file {name}"))?;
        if fmt.is_none() {
            tracing::info!(
                "{}: backing file format detected as {}",
                shown(&path),
                img.format().name()
            );
            *fmt = Some(img.format());
        }
        if size.is_none() {
            size = Some(options::round_to_sector(img.size())?);
        }
    }
    let size = size.unwrap_or(0);
    match req.format {
        Format::Qcow2 => {
            let c = req.opts.qcow2(size, backing);
            Qcow2::create_file(&req.file, &c)?;
            out.say(&options::formatting_line(
                &file,
                Format::Qcow2,
                &c,
                &req.opts,
            ))?;
        }
        Format::Raw => {
            let prealloc = req.opts.preallocation.unwrap_or_default();
            create_raw(&req.file, size, prealloc)?;
            let c = CreateOptions {
                size,
                ..Default::default()
            };
            out.say(&options::formatting_line(&file, Format::Raw, &c, &req.opts))?;
        }
    }
    Ok(OK)
}

/// Creates a raw file of `size` bytes (mode 0600), removing it again if
/// preallocation fails.
pub fn create_raw(path: &Path, size: u64, prealloc: Preallocation) -> Result<()> {
    let st = FileStorage::create(path, false)?;
    let filled = fill_raw(&st, size, prealloc).and_then(|()| st.flush());
    if let Err(e) = filled {
        drop(st);
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(())
}

fn fill_raw(st: &FileStorage, size: u64, prealloc: Preallocation) -> strata_image::Result<()> {
    match prealloc {
        Preallocation::Off | Preallocation::Metadata => st.set_len(size),
        Preallocation::Falloc => {
            st.allocate(0, size)?;
            st.set_len(size)
        }
        Preallocation::Full => {
            const CHUNK: u64 = 1 << 20;
            let zeros = vec![0u8; CHUNK.min(size) as usize];
            let mut at = 0;
            while at < size {
                let n = CHUNK.min(size - at);
                st.write_at(&zeros[..n as usize], at)?;
                at += n;
            }
            st.set_len(size)
        }
    }
}
