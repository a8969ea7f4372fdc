//! `strata img transaction --file ACTIONS.json`: a QEMU-transaction-style
//! group of snapshot actions over many images, applied all or nothing by
//! the engine (`strata_image::transaction`). The JSON is parsed and checked
//! here; the engine validates against the images before writing anything.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use strata_image::transaction::{self, Action, BitmapOp, BitmapSource, Outcome};

use crate::cli::TransactionArgs;
use crate::exit::{usage, OK};
use crate::output::Output;

/// One action as written in the JSON file.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
enum JsonAction {
    SnapshotInternal {
        file: PathBuf,
        name: Option<String>,
    },
    SnapshotExternal {
        file: PathBuf,
        overlay: Option<PathBuf>,
        name: Option<String>,
        format: Option<String>,
        #[serde(default, alias = "reuse-external")]
        reuse: bool,
    },
    SnapshotDeleteInternal {
        file: PathBuf,
        name: String,
    },
    BitmapAdd(JsonBitmap),
    BitmapRemove(JsonBitmap),
    BitmapEnable(JsonBitmap),
    BitmapDisable(JsonBitmap),
    BitmapClear(JsonBitmap),
    BitmapMerge(JsonBitmap),
}

/// The fields of a bitmap action (QMP's `block-dirty-bitmap-*` arguments,
/// with `file` for the node).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBitmap {
    file: PathBuf,
    #[serde(alias = "target")]
    name: String,
    #[serde(default)]
    granularity: Option<u64>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default, alias = "bitmaps")]
    sources: Option<Vec<JsonSource>>,
}

/// A merge source: a bitmap of the same image, or `{file, name}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonSource {
    Same(String),
    Other { file: PathBuf, name: String },
}

impl JsonAction {
    /// The engine's action; refuses what the JSON may say but strata cannot do.
    fn into_action(self, index: usize) -> Result<Action> {
        let bitmap = |op, b: JsonBitmap| -> Result<Action> {
            let merge = op == BitmapOp::Merge;
            if merge != b.sources.is_some() {
                return Err(usage(format!(
                    "action {}: 'sources' belongs to bitmap-merge, and bitmap-merge needs it",
                    index + 1
                )));
            }
            if op != BitmapOp::Add && (b.granularity.is_some() || b.disabled.is_some()) {
                return Err(usage(format!(
                    "action {}: 'granularity' and 'disabled' belong to bitmap-add",
                    index + 1
                )));
            }
            Ok(Action::Bitmap {
                op,
                file: b.file,
                name: b.name,
                granularity: b.granularity,
                disabled: b.disabled.unwrap_or(false),
                sources: b
                    .sources
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| match s {
                        JsonSource::Same(name) => BitmapSource { file: None, name },
                        JsonSource::Other { file, name } => BitmapSource {
                            file: Some(file),
                            name,
                        },
                    })
                    .collect(),
            })
        };
        Ok(match self {
            JsonAction::SnapshotInternal { file, name } => Action::SnapshotInternal { file, name },
            JsonAction::SnapshotExternal {
                file,
                overlay,
                name,
                format,
                reuse,
            } => {
                if let Some(f) = format.filter(|f| f != "qcow2") {
                    return Err(usage(format!(
                        "action {} (snapshot-external): overlay format '{f}' is not supported (only qcow2)",
                        index + 1
                    )));
                }
                Action::SnapshotExternal {
                    file,
                    overlay,
                    name,
                    reuse,
                }
            }
            JsonAction::SnapshotDeleteInternal { file, name } => {
                Action::SnapshotDeleteInternal { file, name }
            }
            JsonAction::BitmapAdd(b) => bitmap(BitmapOp::Add, b)?,
            JsonAction::BitmapRemove(b) => bitmap(BitmapOp::Remove, b)?,
            JsonAction::BitmapEnable(b) => bitmap(BitmapOp::Enable, b)?,
            JsonAction::BitmapDisable(b) => bitmap(BitmapOp::Disable, b)?,
            JsonAction::BitmapClear(b) => bitmap(BitmapOp::Clear, b)?,
            JsonAction::BitmapMerge(b) => bitmap(BitmapOp::Merge, b)?,
        })
    }
}

/// What one action did, for `--output json`.
#[derive(Debug, Serialize)]
struct Done {
    action: &'static str,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bitmap: Option<String>,
}

/// Runs `strata img transaction`.
pub fn run(a: TransactionArgs, out: &Output) -> Result<u8> {
    let shown = a.file.display().to_string();
    let mut text = String::new();
    if a.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading actions from stdin")?;
    } else {
        text = std::fs::read_to_string(&a.file).with_context(|| format!("{shown}: cannot read"))?;
    }
    let parsed: Vec<JsonAction> = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{shown}: not a JSON array of actions: {e}")))?;
    let actions = parsed
        .into_iter()
        .enumerate()
        .map(|(i, j)| j.into_action(i))
        .collect::<Result<Vec<_>>>()?;
    let outcomes = transaction::run(&actions)?;
    let done: Vec<Done> = actions
        .iter()
        .zip(outcomes)
        .map(|(a, o)| {
            let mut d = Done {
                action: a.kind(),
                file: a.file().display().to_string(),
                snapshot: None,
                id: None,
                overlay: None,
                bitmap: None,
            };
            match o {
                Outcome::Internal { name, id } => {
                    d.snapshot = Some(name);
                    d.id = Some(id);
                }
                Outcome::External { overlay } => d.overlay = Some(overlay.display().to_string()),
                Outcome::Bitmap { name } => d.bitmap = Some(name),
            }
            d
        })
        .collect();
    if out.json() {
        out.print_json(&done)?;
    } else {
        for d in &done {
            let what = match (d.action, &d.snapshot, &d.overlay) {
                ("snapshot-external", _, Some(o)) => format!("overlay {o} created"),
                ("snapshot-delete-internal", Some(n), _) => format!("snapshot '{n}' deleted"),
                (_, Some(n), _) => format!("snapshot '{n}' created"),
                (a, _, _) => match &d.bitmap {
                    Some(b) => format!("{a} '{b}' done"),
                    None => "done".to_string(),
                },
            };
            out.say(&format!("{}: {what}", d.file))?;
        }
    }
    Ok(OK)
}
