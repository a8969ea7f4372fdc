//! `strata img check`: refcount and table consistency, optionally repaired,
//! reported and exited with as qemu-img does (0 clean, 1 check failed,
//! 2 corruption, 3 only leaks, 63 format without checks).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use strata_image::qcow2::{self, CheckMode, CheckReport, Qcow2};
use strata_image::storage::FileStorage;
use strata_image::Format;

use super::{format_of, shown};
use crate::cli::{CheckArgs, RepairArg};
use crate::exit::{with_status, OK};
use crate::output::Output;

/// qemu-img's status for "this format has no checks".
const NO_CHECKS: u8 = 63;

/// A validated `check` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    format: Option<Format>,
    mode: CheckMode,
}

/// `qemu-img check --output=json`'s record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct CheckJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    image_end_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compressed_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corruptions_fixed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corruptions: Option<u64>,
    check_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaks_fixed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allocated_clusters: Option<u64>,
    filename: String,
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fragmented_clusters: Option<u64>,
}

fn nonzero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

impl CheckJson {
    fn new(r: &CheckReport, filename: String) -> Self {
        CheckJson {
            image_end_offset: nonzero(r.image_end_offset),
            compressed_clusters: nonzero(r.compressed_clusters),
            total_clusters: nonzero(r.total_clusters),
            corruptions_fixed: nonzero(r.corruptions_fixed),
            corruptions: nonzero(r.corruptions),
            check_errors: r.check_errors,
            leaks_fixed: nonzero(r.leaks_fixed),
            leaks: nonzero(r.leaks),
            allocated_clusters: nonzero(r.allocated_clusters),
            filename,
            format: "qcow2",
            fragmented_clusters: nonzero(r.fragmented_clusters),
        }
    }
}

/// The exit status for a finished check.
fn status(r: &CheckReport) -> u8 {
    if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        OK
    }
}

/// Runs `strata img check`.
pub fn run(a: CheckArgs, out: &Output) -> Result<u8> {
    let req = Request {
        file: a.file,
        format: format_of(a.format),
        mode: match a.repair {
            None => CheckMode::ReadOnly,
            Some(RepairArg::Leaks) => CheckMode::Leaks,
            Some(RepairArg::All) => CheckMode::All,
        },
    };
    let file = shown(&req.file);
    let writable = req.mode != CheckMode::ReadOnly;
    let st = FileStorage::open(&req.file, writable)?;
    let format = match req.format {
        Some(f) => f,
        None => strata_image::chain::probe(&st)?,
    };
    if format != Format::Qcow2 {
        let e = anyhow::anyhow!(
            "{file}: this image format ({}) does not support checks",
            format.name()
        );
        return Err(with_status(NO_CHECKS)(e));
    }
    let opts = qcow2::OpenOptions {
        writable,
        allow_corrupt: writable,
        ..Default::default()
    };
    let img = Qcow2::open(Arc::new(st), None, &opts)?;
    let report = img.check(req.mode)?;
    drop(img);
    for m in &report.messages {
        eprintln!("{m}");
    }
    if out.json() {
        out.print_json(&CheckJson::new(&report, file))?;
    } else {
        out.text(&human(&report))?;
    }
    Ok(status(&report))
}

/// qemu-img's human rendering of a check result.
fn human(r: &CheckReport) -> String {
    let mut s = String::new();
    if r.leaks_fixed > 0 || r.corruptions_fixed > 0 {
        s.push_str(&format!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            r.leaks_fixed, r.corruptions_fixed
        ));
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            s.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            s.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            s.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            ));
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let pct = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                n as f64 * 100.0 / of as f64
            }
        };
        s.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters, r.total_clusters),
            pct(r.fragmented_clusters, r.allocated_clusters),
            pct(r.compressed_clusters, r.allocated_clusters)
        ));
    }
    if r.image_end_offset != 0 {
        s.push_str(&format!("Image end offset: {}\n", r.image_end_offset));
    }
    s
}
