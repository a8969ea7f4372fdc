//! `strata img map`: which guest ranges hold data, zeros or nothing, and in
//! which file of the chain, as `qemu-img map` prints them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use strata_image::{Extent, Image};

use super::{format_of, layer, open, shown, OpenSpec};
use crate::cli::MapArgs;
use crate::exit::OK;
use crate::output::{hex, Output};

/// A validated `map` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    spec: OpenSpec,
    start: u64,
    max_length: Option<u64>,
}

/// One entry of `qemu-img map --output=json`, spaced as qemu-img spaces it.
fn json_line(e: &Extent) -> String {
    let offset = e
        .offset
        .map(|o| format!(", \"offset\": {o}"))
        .unwrap_or_default();
    format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}{offset}}}",
        e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
    )
}

/// Runs `strata img map`.
pub fn run(a: MapArgs, out: &Output) -> Result<u8> {
    let req = Request {
        spec: OpenSpec {
            format: format_of(a.format),
            backing: true,
            force_share: a.force_share,
            ..Default::default()
        },
        file: a.file,
        start: a.start_offset.unwrap_or(0),
        max_length: a.max_length,
    };
    let file = shown(&req.file);
    let img = open(&req.file, req.spec)?;
    let size = img.size();
    let start = req.start.min(size);
    let len = req.max_length.unwrap_or(u64::MAX).min(size - start);
    let extents = img.block_status(start, len)?;
    if out.json() {
        let lines: Vec<String> = extents.iter().map(json_line).collect();
        out.text(&format!("[{}]\n", lines.join(",\n")))?;
        return Ok(OK);
    }
    let mut text = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    for e in &extents {
        if !e.data {
            continue;
        }
        let Some(host) = e.offset else {
            out.text(&text)?;
            bail!("{file}: the image contains compressed clusters, which cannot be mapped to host offsets (use --output json)");
        };
        // Data of a layer with an external data file lives there.
        let name = layer(&img, e.depth).map_or_else(
            || "?".to_string(),
            |l| data_file_of(l.as_ref()).unwrap_or_else(|| l.path().to_string()),
        );
        let name = if e.depth == 0 && name == img.path() {
            file.clone()
        } else {
            name
        };
        text.push_str(&format!(
            "{:<16}{:<16}{:<16}{}\n",
            hex(e.start),
            hex(e.length),
            hex(host),
            name
        ));
    }
    out.text(&text)?;
    Ok(OK)
}

/// The name of the external data file of a qcow2 layer, when it has one.
fn data_file_of(img: &dyn Image) -> Option<String> {
    let p = img.placement()?;
    p.data_file().map(|d| d.name().to_string())
}
