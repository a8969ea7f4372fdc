//! `strata img compare`: do two images show the guest the same bytes?
//! Exits 0 when identical and 1 when not, as qemu-img compare does (a
//! failure to compare exits 2).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use strata_image::ops::{self, CompareResult};

use super::{format_of, open, OpenSpec};
use crate::cli::CompareArgs;
use crate::exit::OK;
use crate::output::Output;
use crate::progress::Progress;

/// Status for "the images differ".
const DIFFERENT: u8 = 1;

/// A validated `compare` request.
#[derive(Debug)]
struct Request {
    a: PathBuf,
    a_spec: OpenSpec,
    b: PathBuf,
    b_spec: OpenSpec,
}

/// The JSON record of a comparison.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct CompareJson {
    identical: bool,
    size_mismatch: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mismatch_offset: Option<u64>,
}

/// Runs `strata img compare`.
pub fn run(args: CompareArgs, out: &Output) -> Result<u8> {
    let spec = |f| OpenSpec {
        format: format_of(f),
        backing: true,
        force_share: args.force_share,
        ..Default::default()
    };
    let req = Request {
        a_spec: spec(args.format_a),
        b_spec: spec(args.format_b),
        a: args.a,
        b: args.b,
    };
    let a = open(&req.a, req.a_spec)?;
    let b = open(&req.b, req.b_spec)?;
    let size_mismatch = a.size() != b.size();
    let bar = Progress::new(out, "comparing");
    let result = ops::compare(a.as_ref(), b.as_ref(), &|d, t| bar.update(d, t))?;
    bar.finish();
    let mismatch = match result {
        CompareResult::Identical => None,
        CompareResult::Mismatch(at) => Some(at),
    };
    if out.json() {
        out.print_json(&CompareJson {
            identical: mismatch.is_none(),
            size_mismatch,
            mismatch_offset: mismatch,
        })?;
    } else {
        if size_mismatch {
            out.say("Warning: Image size mismatch!")?;
        }
        match mismatch {
            None => out.say("Images are identical.")?,
            Some(at) => out.say(&format!("Content mismatch at offset {at}!"))?,
        }
    }
    Ok(if mismatch.is_none() { OK } else { DIFFERENT })
}
