//! `strata img info`: what an image is, from its header alone (the backing
//! chain is opened only with `--backing-chain`), in qemu-img's shapes,
//! persistent bitmaps included.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use strata_image::capability::Layout;
use strata_image::chain::resolve_backing;
use strata_image::Image;

use super::bitmap::{info_block, records as bitmap_records, BitmapRecord};
use super::snapshot::{table, SnapshotRecord};
use super::{format_of, open, shown, OpenSpec};
use crate::cli::InfoArgs;
use crate::exit::OK;
use crate::output::{human_size, Output};

/// A validated `info` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    spec: OpenSpec,
    chain: bool,
}

/// One image, as `qemu-img info --output=json` describes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ImageInfo {
    children: Vec<ChildInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename_format: Option<String>,
    /// Here, as qemu-img prints it (its key order is its hash table's).
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots: Option<Vec<SnapshotRecord>>,
    virtual_size: u64,
    filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_size: Option<u64>,
    format: &'static str,
    actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    format_specific: Option<FormatSpecific>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename: Option<String>,
    dirty_flag: bool,
}

/// The protocol node under an image (qemu-img's `children`).
#[derive(Debug, Serialize)]
struct ChildInfo {
    name: &'static str,
    info: FileInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct FileInfo {
    children: Vec<ChildInfo>,
    virtual_size: u64,
    filename: String,
    format: &'static str,
    actual_size: u64,
    format_specific: FormatSpecific,
    dirty_flag: bool,
}

#[derive(Debug, Serialize)]
struct FormatSpecific {
    #[serde(rename = "type")]
    kind: &'static str,
    data: FormatData,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum FormatData {
    Qcow2(Qcow2Data),
    File {},
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Qcow2Data {
    compat: &'static str,
    compression_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lazy_refcounts: Option<bool>,
    /// Absent when the image has no (consistent) bitmaps, as in qemu-img.
    #[serde(skip_serializing_if = "Option::is_none")]
    bitmaps: Option<Vec<BitmapRecord>>,
    refcount_bits: u32,
    /// The external data file name as stored (qemu-img prints it only when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    data_file: Option<String>,
    /// Present whenever the image has the external data file bit.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_file_raw: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_l2: Option<bool>,
}

fn qcow2_data(l: &Layout, bitmaps: Vec<BitmapRecord>) -> Qcow2Data {
    let v3 = l.version >= 3;
    Qcow2Data {
        bitmaps: (!bitmaps.is_empty()).then_some(bitmaps),
        compat: if v3 { "1.1" } else { "0.10" },
        compression_type: l.compression,
        lazy_refcounts: v3.then_some(l.lazy_refcounts),
        refcount_bits: l.refcount_bits,
        data_file: l.data_file.clone(),
        data_file_raw: l.data_file_raw,
        corrupt: v3.then_some(l.corrupt),
        extended_l2: v3.then_some(l.extended_l2),
    }
}

/// `n` rounded up to whole 512-byte sectors.
fn sectors(n: u64) -> u64 {
    n.div_ceil(512).saturating_mul(512)
}

/// Describes one open layer; `filename` is how the user (or the chain) named it.
fn describe(img: &dyn Image, filename: &str) -> Result<ImageInfo> {
    let actual_size = img.actual_size()?;
    let mut info = ImageInfo {
        children: Vec::new(),
        backing_filename_format: None,
        virtual_size: img.size(),
        filename: filename.to_string(),
        cluster_size: None,
        format: img.format().name(),
        actual_size,
        snapshots: None,
        format_specific: None,
        full_backing_filename: None,
        backing_filename: None,
        dirty_flag: false,
    };
    if let Some(p) = img.placement() {
        let l = p.layout();
        info.cluster_size = Some(l.cluster_size);
        info.dirty_flag = l.dirty;
        let bitmaps = match img.dirty_bitmaps() {
            Some(b) => bitmap_records(b)?,
            None => Vec::new(),
        };
        info.format_specific = Some(FormatSpecific {
            kind: "qcow2",
            data: FormatData::Qcow2(qcow2_data(&l, bitmaps)),
        });
        if let Some(name) = &l.backing_file {
            let full = resolve_backing(std::path::Path::new(filename), name);
            info.full_backing_filename = Some(full.display().to_string());
            info.backing_filename = Some(name.clone());
            info.backing_filename_format = l.backing_format.clone();
        }
    } else {
        // QEMU sees raw files in whole 512-byte sectors.
        info.virtual_size = sectors(info.virtual_size);
    }
    if let Some(s) = img.internal_snapshots() {
        let snaps = s.snapshots()?;
        if !snaps.is_empty() {
            info.snapshots = Some(snaps.iter().map(SnapshotRecord::from).collect());
        }
    }
    let Some(storage) = img.storage() else {
        anyhow::bail!("{filename}: unknown image driver");
    };
    info.children.push(ChildInfo {
        name: "file",
        info: FileInfo {
            children: Vec::new(),
            virtual_size: sectors(storage.len()?),
            filename: filename.to_string(),
            format: "file",
            actual_size,
            format_specific: FormatSpecific {
                kind: "file",
                data: FormatData::File {},
            },
            dirty_flag: false,
        },
    });
    Ok(info)
}

/// Runs `strata img info`.
pub fn run(a: InfoArgs, out: &Output) -> Result<u8> {
    let req = Request {
        spec: OpenSpec {
            format: format_of(a.format),
            backing: a.backing_chain,
            force_share: a.force_share,
            ..Default::default()
        },
        file: a.file,
        chain: a.backing_chain,
    };
    let top = open(&req.file, req.spec)?;
    let mut infos = vec![describe(top.as_ref(), &shown(&req.file))?];
    if req.chain {
        let mut cur = top.backing();
        while let Some(img) = cur {
            infos.push(describe(img.as_ref(), img.path())?);
            cur = img.backing();
        }
    }
    if out.json() {
        return if req.chain {
            out.print_json(&infos)
        } else {
            out.print_json(&infos[0])
        }
        .map(|()| OK);
    }
    let text: Vec<String> = infos.iter().map(human).collect();
    out.text(&text.join("\n"))?;
    Ok(OK)
}

/// qemu-img's human rendering of one image.
fn human(i: &ImageInfo) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("image: {}", i.filename));
    line(format!("file format: {}", i.format));
    line(format!(
        "virtual size: {} ({} bytes)",
        human_size(i.virtual_size),
        i.virtual_size
    ));
    line(format!("disk size: {}", human_size(i.actual_size)));
    if let Some(cs) = i.cluster_size {
        line(format!("cluster_size: {cs}"));
    }
    if let Some(b) = &i.backing_filename {
        match &i.full_backing_filename {
            Some(full) if full != b => line(format!("backing file: {b} (actual path: {full})")),
            _ => line(format!("backing file: {b}")),
        }
    }
    if let Some(f) = &i.backing_filename_format {
        line(format!("backing file format: {f}"));
    }
    if i.dirty_flag {
        line("cleanly shut down: no".to_string());
    }
    if let Some(snaps) = &i.snapshots {
        table(snaps)
            .split_terminator('\n')
            .for_each(|l| line(l.to_string()));
    }
    if let Some(FormatSpecific {
        data: FormatData::Qcow2(d),
        ..
    }) = &i.format_specific
    {
        line("Format specific information:".to_string());
        line(format!("    compat: {}", d.compat));
        line(format!("    compression type: {}", d.compression_type));
        if let Some(l) = d.lazy_refcounts {
            line(format!("    lazy refcounts: {l}"));
        }
        if let Some(b) = &d.bitmaps {
            info_block(b, 4)
                .split_terminator('\n')
                .for_each(|l| line(l.to_string()));
        }
        line(format!("    refcount bits: {}", d.refcount_bits));
        if let Some(f) = &d.data_file {
            line(format!("    data file: {f}"));
        }
        if let Some(r) = d.data_file_raw {
            line(format!("    data file raw: {r}"));
        }
        if let Some(c) = d.corrupt {
            line(format!("    corrupt: {c}"));
        }
        if let Some(e) = d.extended_l2 {
            line(format!("    extended l2: {e}"));
        }
    }
    for c in &i.children {
        line(format!("Child node '/{}':", c.name));
        line(format!("    filename: {}", c.info.filename));
        line(format!("    protocol type: {}", c.info.format));
        line(format!(
            "    file length: {} ({} bytes)",
            human_size(c.info.virtual_size),
            c.info.virtual_size
        ));
        line(format!("    disk size: {}", human_size(c.info.actual_size)));
    }
    s
}
