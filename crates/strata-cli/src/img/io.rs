//! `strata img read` and `strata img write`: guest bytes in and out of an
//! image (reads go through the backing chain; writes go to the top image).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use strata_image::Image;

use super::{format_of, open, shown, OpenSpec};
use crate::cli::{ReadArgs, WriteArgs};
use crate::exit::{usage, OK};
use crate::output::Output;

/// Bytes moved per request.
const CHUNK: u64 = 1 << 20;

/// Refuses a range that does not lie inside the image.
fn check_range(img: &dyn Image, file: &str, what: &str, offset: u64, len: u64) -> Result<()> {
    let size = img.size();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => anyhow::bail!(
            "{file}: cannot {what} {len} bytes at offset {offset}: the image is {size} bytes long"
        ),
    }
}

/// A validated `read` request.
#[derive(Debug)]
struct ReadRequest {
    file: PathBuf,
    spec: OpenSpec,
    offset: u64,
    length: u64,
    out: Option<PathBuf>,
}

/// Runs `strata img read`.
pub fn read(a: ReadArgs, _out: &Output) -> Result<u8> {
    let req = ReadRequest {
        spec: OpenSpec {
            format: format_of(a.format),
            backing: true,
            force_share: a.force_share,
            ..Default::default()
        },
        file: a.file,
        offset: a.offset,
        length: a.length,
        out: a.out,
    };
    let file = shown(&req.file);
    let img = open(&req.file, req.spec)?;
    check_range(img.as_ref(), &file, "read", req.offset, req.length)?;
    let mut sink: Box<dyn Write> = match &req.out {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("{}: cannot create output file", shown(p)))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let sink_name = req
        .out
        .as_deref()
        .map_or_else(|| "stdout".to_string(), shown);
    let mut buf = vec![0u8; CHUNK.min(req.length) as usize];
    let mut done = 0;
    while done < req.length {
        let n = CHUNK.min(req.length - done) as usize;
        img.read_at(&mut buf[..n], req.offset + done)?;
        sink.write_all(&buf[..n])
            .with_context(|| format!("writing to {sink_name}"))?;
        done += n as u64;
    }
    sink.flush()
        .with_context(|| format!("writing to {sink_name}"))?;
    Ok(OK)
}

/// What `write` writes.
#[derive(Debug)]
enum Source {
    /// The bytes of a file (or stdin), up to a length.
    File { path: PathBuf, limit: Option<u64> },
    /// One byte repeated.
    Pattern { byte: u8, length: u64 },
    /// Zeros, optionally letting the image free the space.
    Zero { length: u64, unmap: bool },
}

/// A validated `write` request.
#[derive(Debug)]
struct WriteRequest {
    file: PathBuf,
    spec: OpenSpec,
    offset: u64,
    source: Source,
}

impl WriteRequest {
    fn new(a: WriteArgs) -> Result<Self> {
        let source = match (a.from, a.pattern, a.zero, a.length) {
            (Some(path), None, false, limit) => Source::File { path, limit },
            (None, Some(byte), false, Some(length)) => Source::Pattern { byte, length },
            (None, None, true, Some(length)) => Source::Zero {
                length,
                unmap: a.unmap,
            },
            (None, Some(_), _, None) | (None, None, true, None) => {
                return Err(usage("--pattern and --zero need --length N"))
            }
            _ => return Err(usage(
                "say what to write: --from SRC, --pattern BYTE --length N, or --zero --length N",
            )),
        };
        let spec = OpenSpec {
            format: format_of(a.format),
            writable: true,
            backing: true,
            ..Default::default()
        };
        Ok(WriteRequest {
            file: a.file,
            spec,
            offset: a.offset,
            source,
        })
    }
}

/// Runs `strata img write`.
pub fn write(a: WriteArgs, _out: &Output) -> Result<u8> {
    let req = WriteRequest::new(a)?;
    let file = shown(&req.file);
    // Open the source first: a missing SRC must not touch the image.
    let mut input: Option<(Box<dyn Read>, u64, String)> = None;
    if let Source::File { path, limit } = &req.source {
        let name = shown(path);
        let (reader, len): (Box<dyn Read>, Option<u64>) = if name == "-" {
            (Box::new(std::io::stdin().lock()), None)
        } else {
            let f = File::open(path).with_context(|| format!("{name}: cannot open"))?;
            let len = f
                .metadata()
                .with_context(|| format!("{name}: cannot stat"))?
                .len();
            (Box::new(f), Some(len))
        };
        if let (Some(limit), Some(len)) = (limit, len) {
            if *limit > len {
                anyhow::bail!(
                    "{name}: --length {limit} is more than the {len} bytes the file holds"
                );
            }
        }
        input = Some((reader, limit.or(len).unwrap_or(u64::MAX), name));
    }
    let img = open(&req.file, req.spec)?;
    match &req.source {
        Source::File { .. } => {
            let (reader, len, name) = input.context("the source file is not open")?;
            if len != u64::MAX {
                check_range(img.as_ref(), &file, "write", req.offset, len)?;
            }
            copy_in(img.as_ref(), &file, reader, len, req.offset, &name)?;
        }
        Source::Pattern { byte, length } => {
            check_range(img.as_ref(), &file, "write", req.offset, *length)?;
            let buf = vec![*byte; CHUNK.min(*length) as usize];
            let mut done = 0;
            while done < *length {
                let n = CHUNK.min(length - done) as usize;
                img.write_at(&buf[..n], req.offset + done)?;
                done += n as u64;
            }
        }
        Source::Zero { length, unmap } => {
            check_range(img.as_ref(), &file, "zero", req.offset, *length)?;
            img.write_zeroes(req.offset, *length, *unmap)?;
        }
    }
    img.flush()?;
    img.close()?;
    Ok(OK)
}

/// Copies up to `len` bytes of `reader` into `img` at `offset`; with a known
/// `len`, the source must have that many bytes.
fn copy_in(
    img: &dyn Image,
    file: &str,
    mut reader: Box<dyn Read>,
    len: u64,
    offset: u64,
    name: &str,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < len {
        let want = CHUNK.min(len - done) as usize;
        let mut got = 0;
        while got < want {
            let n = reader
                .read(&mut buf[got..want])
                .with_context(|| format!("{name}: read failed"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        check_range(img, file, "write", offset + done, got as u64)?;
        img.write_at(&buf[..got], offset + done)?;
        done += got as u64;
        if got < want {
            break;
        }
    }
    if len != u64::MAX && done < len {
        anyhow::bail!("{name}: only {done} bytes could be read, {len} were asked for");
    }
    Ok(())
}
