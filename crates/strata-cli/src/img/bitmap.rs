//! `strata img bitmap`: the persistent dirty bitmaps of a qcow2 image.
//! `list` shows each bitmap's name, granularity and flags (with
//! `--output json`, the "bitmaps" records of `qemu-img info --output=json`);
//! `dump` prints the guest byte ranges one bitmap marks dirty (refused, as
//! qemu-nbd refuses to export it, for a bitmap marked in use). Also the
//! records that `info` prints.
//!
//! `list` and `dump` open the image read-only; `add`, `remove`, `clear`,
//! `enable`, `disable` and `merge` open it for bitmap changes only (guest
//! writes refused), as `qemu-img bitmap` does, and make each change one
//! atomic commit.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use strata_image::capability::Bitmaps;
use strata_image::qcow2::{BitmapEdit, BitmapInfo};
use strata_image::ChainOptions;
use strata_image::Image;

use super::{format_of, open, shown, OpenSpec};
use crate::cli::BitmapCommand;
use crate::exit::{usage, OK};
use crate::output::Output;

/// Smallest granularity qcow2 allows (one bit per 512-byte sector).
const MIN_GRANULARITY: u64 = 512;
/// Largest granularity qcow2 allows (2 GiB per bit).
const MAX_GRANULARITY: u64 = 1 << 31;

/// What a `bitmap` request does.
#[derive(Debug)]
enum Action {
    /// List the bitmaps.
    List,
    /// Print the dirty extents of this bitmap.
    Dump(String),
    /// Change the bitmaps; the text says what, as in "add bitmap 'b0'".
    Change(Change, String),
}

/// A change to the persistent bitmaps (done on a bitmaps-only writable
/// open: guest writes refused, bitmaps kept consistent, as qemu-img bitmap).
#[derive(Debug)]
enum Change {
    /// Anything but a merge.
    Edit(BitmapEdit),
    /// A merge, whose source extents are read once the image is open.
    Merge {
        target: String,
        source: String,
        source_file: Option<PathBuf>,
    },
}

impl Action {
    /// The action for messages: "dump bitmap 'b0'".
    fn doing(&self) -> String {
        match self {
            Action::List => "list bitmaps".to_string(),
            Action::Dump(n) => format!("dump bitmap '{n}'"),
            Action::Change(_, what) => what.clone(),
        }
    }
}

/// A validated `bitmap` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    spec: OpenSpec,
    action: Action,
}

/// Refuses an empty bitmap name (it could name nothing).
fn named(name: String) -> Result<String> {
    if name.is_empty() {
        return Err(usage("a bitmap name must not be empty"));
    }
    Ok(name)
}

/// Checks a granularity: a power of two from 512 bytes to 2 GiB.
fn granularity(g: u64) -> Result<u64> {
    if !g.is_power_of_two() || !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&g) {
        return Err(usage(format!(
            "invalid granularity {g}: must be a power of two from 512 to 2G"
        )));
    }
    Ok(g)
}

impl Request {
    fn new(cmd: BitmapCommand) -> Result<Self> {
        // Read-only, the image alone: bitmaps describe only its own writes.
        let read = |format, force_share| OpenSpec {
            format: format_of(format),
            writable: false,
            backing: false,
            force_share,
        };
        let change = |format, file, change: Change, what: String| Request {
            file,
            spec: read(format, false),
            action: Action::Change(change, what),
        };
        Ok(match cmd {
            BitmapCommand::List(a) => Request {
                spec: read(a.format, a.force_share),
                action: Action::List,
                file: a.file,
            },
            BitmapCommand::Dump(a) => Request {
                spec: read(a.format, a.force_share),
                action: Action::Dump(named(a.name)?),
                file: a.file,
            },
            BitmapCommand::Add(a) => {
                let name = named(a.name)?;
                let g = a.granularity.map(granularity).transpose()?;
                let what = format!("add bitmap '{name}'");
                let c = Change::Edit(BitmapEdit::Add {
                    name,
                    granularity: g,
                    enabled: !a.disabled,
                });
                change(a.format, a.file, c, what)
            }
            BitmapCommand::Remove(a) => {
                let name = named(a.name)?;
                let what = format!("remove bitmap '{name}'");
                change(
                    a.format,
                    a.file,
                    Change::Edit(BitmapEdit::Remove(name)),
                    what,
                )
            }
            BitmapCommand::Clear(a) => {
                let name = named(a.name)?;
                let what = format!("clear bitmap '{name}'");
                change(
                    a.format,
                    a.file,
                    Change::Edit(BitmapEdit::Clear(name)),
                    what,
                )
            }
            BitmapCommand::Enable(a) => {
                let name = named(a.name)?;
                let what = format!("enable bitmap '{name}'");
                change(
                    a.format,
                    a.file,
                    Change::Edit(BitmapEdit::SetEnabled(name, true)),
                    what,
                )
            }
            BitmapCommand::Disable(a) => {
                let name = named(a.name)?;
                let what = format!("disable bitmap '{name}'");
                change(
                    a.format,
                    a.file,
                    Change::Edit(BitmapEdit::SetEnabled(name, false)),
                    what,
                )
            }
            BitmapCommand::Merge(a) => {
                let target = named(a.target)?;
                let source = named(a.source)?;
                if a.source_file.as_deref() == Some(std::path::Path::new("")) {
                    return Err(usage("--source-file must not be empty"));
                }
                let from = a
                    .source_file
                    .as_ref()
                    .map(|f| format!(" of {}", shown(f)))
                    .unwrap_or_default();
                let what = format!("merge bitmap '{source}'{from} into bitmap '{target}'");
                let c = Change::Merge {
                    target,
                    source,
                    source_file: a.source_file,
                };
                change(a.format, a.file, c, what)
            }
        })
    }
}

/// The persistent bitmaps of `img`, or an error saying that `doing` needs
/// them: only qcow2 has them.
fn bitmaps_for<'a>(img: &'a dyn Image, file: &str, doing: &str) -> Result<&'a dyn Bitmaps> {
    img.dirty_bitmaps().ok_or_else(|| {
        anyhow!(
            "{file}: cannot {doing}: a {} image has no persistent bitmaps (only qcow2 has them)",
            img.format().name()
        )
    })
}

/// Opens the image for bitmap changes only and makes `change`.
fn apply_change(req: &Request, change: &Change, file: &str, doing: &str) -> Result<u8> {
    let opts = ChainOptions {
        writable: true,
        bitmaps_only: true,
        backing: false,
        format: req.spec.format,
        ..Default::default()
    };
    let img = strata_image::open(&req.file, &opts).with_context(|| format!("cannot {doing}"))?;
    let q = bitmaps_for(img.as_ref(), file, doing)?;
    let done = match change {
        Change::Edit(edit) => q.bitmap_edits(std::slice::from_ref(edit)),
        Change::Merge {
            target,
            source,
            source_file,
        } => {
            let extents = match source_file {
                None => q.bitmap_dirty(source)?,
                Some(other) => {
                    let read = ChainOptions {
                        backing: false,
                        ..Default::default()
                    };
                    let src = strata_image::open(other, &read)
                        .with_context(|| format!("cannot {doing}"))?;
                    bitmaps_for(src.as_ref(), &shown(other), doing)?.bitmap_dirty(source)?
                }
            };
            q.bitmap_edits(&[BitmapEdit::Merge {
                target: target.clone(),
                extents,
            }])
        }
    };
    done.with_context(|| format!("cannot {doing}"))?;
    img.close()?;
    Ok(OK)
}

/// Runs `strata img bitmap …`.
pub fn run(cmd: BitmapCommand, out: &Output) -> Result<u8> {
    let req = Request::new(cmd)?;
    let file = shown(&req.file);
    let doing = req.action.doing();
    if let Action::Change(change, _) = &req.action {
        return apply_change(&req, change, &file, &doing);
    }
    let img = open(&req.file, req.spec).with_context(|| format!("cannot {doing}"))?;
    let q = bitmaps_for(img.as_ref(), &file, &doing)?;
    match &req.action {
        Action::List => {
            let records = records(q).with_context(|| format!("{file}: cannot {doing}"))?;
            if out.json() {
                out.print_json(&records)?;
            } else if !records.is_empty() {
                // As `snapshot list`: no bitmaps, no table.
                out.text(&table(&records))?;
            }
        }
        Action::Dump(name) => {
            // As qemu-nbd: a bitmap left in use was not saved, its bits are stale.
            let dir = q.bitmaps()?;
            if dir.iter().any(|b| &b.name == name && b.in_use()) {
                bail!("{file}: cannot {doing}: it is inconsistent (marked in use: it was not saved correctly); remove it with `strata img bitmap remove {file} {name}` and start a new one");
            }
            // The engine's error names the file and the bitmap.
            let extents = q.bitmap_dirty(name)?;
            if out.json() {
                let records: Vec<Extent> = extents
                    .iter()
                    .map(|&(start, length)| Extent { start, length })
                    .collect();
                out.print_json(&records)?;
            } else {
                let text: String = extents
                    .iter()
                    .map(|(start, length)| format!("{start} {length}\n"))
                    .collect();
                out.text(&text)?;
            }
        }
        Action::Change(..) => unreachable!("handled above"),
    }
    Ok(OK)
}

/// One dirty extent of `bitmap dump --output json`, in guest bytes.
#[derive(Debug, Serialize)]
struct Extent {
    start: u64,
    length: u64,
}

/// One bitmap as an entry of `qemu-img info --output=json`'s "bitmaps".
#[derive(Debug, Serialize)]
pub struct BitmapRecord {
    /// "in-use" and "auto", as set, in that order.
    pub flags: Vec<&'static str>,
    /// Name.
    pub name: String,
    /// Bytes of guest data one bit covers.
    pub granularity: u64,
}

impl From<&BitmapInfo> for BitmapRecord {
    fn from(b: &BitmapInfo) -> Self {
        BitmapRecord {
            flags: b.flag_names(),
            name: b.name.clone(),
            granularity: b.granularity,
        }
    }
}

/// The bitmaps of `q`, in directory order.
pub fn records(q: &dyn Bitmaps) -> Result<Vec<BitmapRecord>> {
    Ok(q.bitmaps()?.iter().map(BitmapRecord::from).collect())
}

/// The human listing: a header line and one line per bitmap, columns
/// aligned, flags joined by commas ("-" for none); every line ends in a
/// newline.
fn table(bitmaps: &[BitmapRecord]) -> String {
    let width = bitmaps
        .iter()
        .map(|b| b.name.chars().count())
        .chain(["NAME".len()])
        .max()
        .unwrap_or(0);
    let mut s = format!("{:<width$}  {:>11}  FLAGS\n", "NAME", "GRANULARITY");
    for b in bitmaps {
        let flags = if b.flags.is_empty() {
            "-".to_string()
        } else {
            b.flags.join(",")
        };
        s.push_str(&format!(
            "{:<width$}  {:>11}  {flags}\n",
            b.name, b.granularity
        ));
    }
    s
}

/// The "bitmaps:" block of `qemu-img info`'s "Format specific information",
/// indented by `indent` spaces; every line ends in a newline.
pub fn info_block(bitmaps: &[BitmapRecord], indent: usize) -> String {
    let pad = |n: usize| " ".repeat(indent + 4 * n);
    let mut s = format!("{}bitmaps:\n", pad(0));
    for (i, b) in bitmaps.iter().enumerate() {
        s.push_str(&format!("{}[{i}]:\n", pad(1)));
        s.push_str(&format!("{}flags:\n", pad(2)));
        for (j, f) in b.flags.iter().enumerate() {
            s.push_str(&format!("{}[{j}]: {f}\n", pad(3)));
        }
        s.push_str(&format!("{}name: {}\n", pad(2), b.name));
        s.push_str(&format!("{}granularity: {}\n", pad(2), b.granularity));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, granularity: u64, flags: &[&'static str]) -> BitmapRecord {
        BitmapRecord {
            flags: flags.to_vec(),
            name: name.into(),
            granularity,
        }
    }

    #[test]
    fn granularities() {
        assert!(granularity(512).is_ok());
        assert!(granularity(1 << 31).is_ok());
        for bad in [0, 256, 1000, 1 << 32] {
            assert!(granularity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_columns() {
        let t = table(&[
            record("b0", 65536, &["auto"]),
            record("a-longer-name", 512, &[]),
            record("x", 1 << 20, &["in-use", "auto"]),
        ]);
        let want = "\
NAME           GRANULARITY  FLAGS
b0                   65536  auto
a-longer-name          512  -
x                  1048576  in-use,auto
";
        assert_eq!(t, want);
    }

    #[test]
    fn info_block_shape() {
        let b = info_block(&[record("b0", 65536, &["auto"]), record("f", 512, &[])], 4);
        let want = "    bitmaps:
        [0]:
            flags:
                [0]: auto
            name: b0
            granularity: 65536
        [1]:
            flags:
            name: f
            granularity: 512
";
        assert_eq!(b, want);
    }
}
