//! `strata img`: commands on one image file, qemu-img's job. One module per
//! command; each turns its raw arguments into a validated request before it
//! touches any file, then runs it and reports through [`Output`].

mod bench;
mod bitmap;
mod check;
mod commit;
mod compare;
mod convert;
mod create;
mod info;
mod io;
mod map;
mod options;
mod rebase;
mod resize;
mod snapshot;
mod transaction;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use strata_image::{ChainOptions, Format, Image};

use crate::cli::{FormatArg, ImgCommand};
use crate::exit;
use crate::output::Output;

/// Runs one `strata img` command; returns the exit status.
pub fn run(cmd: ImgCommand, out: &Output) -> Result<u8> {
    match cmd {
        ImgCommand::Create(a) => create::run(a, out),
        ImgCommand::Info(a) => info::run(a, out),
        ImgCommand::Check(a) => check::run(a, out),
        ImgCommand::Map(a) => map::run(a, out),
        ImgCommand::Read(a) => io::read(a, out),
        ImgCommand::Write(a) => io::write(a, out),
        ImgCommand::Convert(a) => convert::run(a, out),
        // As qemu-img compare: 1 means "different", so failures exit 2.
        ImgCommand::Compare(a) => compare::run(a, out).map_err(exit::with_status(2)),
        ImgCommand::Commit(a) => commit::run(a, out),
        ImgCommand::Rebase(a) => rebase::run(a, out),
        ImgCommand::Resize(a) => resize::run(a, out),
        ImgCommand::Bench(a) => bench::run(a, out),
        ImgCommand::Snapshot(c) => snapshot::run(c, out),
        ImgCommand::Bitmap(c) => bitmap::run(c, out),
        ImgCommand::Transaction(a) => transaction::run(a, out),
    }
}

/// How one command opens an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenSpec {
    /// The top image's format (probed when `None`).
    pub format: Option<Format>,
    /// Open the top image for writing.
    pub writable: bool,
    /// Open the backing chain too.
    pub backing: bool,
    /// Skip QEMU-compatible locking (`-U`).
    pub force_share: bool,
}

/// Opens `path` as `spec` says.
pub fn open(path: &Path, spec: OpenSpec) -> Result<Arc<dyn Image>> {
    let opts = ChainOptions {
        writable: spec.writable,
        format: spec.format,
        backing: spec.backing,
        lock: !spec.force_share,
        ..Default::default()
    };
    Ok(strata_image::open(path, &opts)?)
}

/// The engine format of an optional `-f`.
pub fn format_of(arg: Option<FormatArg>) -> Option<Format> {
    arg.map(FormatArg::format)
}

/// Path as text for messages.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// The image at chain depth `depth` below `top` (0 = `top`).
pub fn layer(top: &Arc<dyn Image>, depth: u32) -> Option<&Arc<dyn Image>> {
    let mut cur = top;
    for _ in 0..depth {
        cur = cur.backing()?;
    }
    Some(cur)
}
