//! `strata img transaction --file ACTIONS.json`: a QEMU-transaction-style
//! group of snapshot actions over many images, applied all or nothing by
//! the engine (`strata_image::transaction`). The JSON is parsed and checked
//! here; the engine validates against the images before writing anything.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use strata_image::transaction::{self, Action, BitmapOp, Outcome};

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

/// The fields of a bitmap action (parsed now, refused by the engine until
/// bitmaps are implemented).
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
    #[serde(default)]
    sources: Option<Vec<String>>,
}

impl JsonAction {
    /// The engine's action; refuses what the JSON may say but strata cannot do.
    fn into_action(self, index: usize) -> Result<Action> {
        let bitmap = |op, b: JsonBitmap| {
            let _ = (b.granularity, b.disabled, b.sources);
            Action::Bitmap {
                op,
                file: b.file,
                name: b.name,
            }
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
            JsonAction::BitmapAdd(b) => bitmap(BitmapOp::Add, b),
            JsonAction::BitmapRemove(b) => bitmap(BitmapOp::Remove, b),
            JsonAction::BitmapEnable(b) => bitmap(BitmapOp::Enable, b),
            JsonAction::BitmapDisable(b) => bitmap(BitmapOp::Disable, b),
            JsonAction::BitmapClear(b) => bitmap(BitmapOp::Clear, b),
            JsonAction::BitmapMerge(b) => bitmap(BitmapOp::Merge, b),
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
    let outcomes = transaction::run(&actions, None)?;
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
            };
            match o {
                Outcome::Internal { name, id } => {
                    d.snapshot = Some(name);
                    d.id = Some(id);
                }
                Outcome::External { overlay } => d.overlay = Some(overlay.display().to_string()),
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
                _ => "done".to_string(),
            };
            out.say(&format!("{}: {what}", d.file))?;
        }
    }
    Ok(OK)
}
