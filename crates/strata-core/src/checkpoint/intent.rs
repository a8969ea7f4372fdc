//! Checkpoint creation that a killed process cannot leave half done.
//!
//! Making a checkpoint changes the disks' images first (one transaction:
//! each image adds the new bitmap and disables the previous checkpoint's
//! in one header write) and records the checkpoint after. A process killed
//! in between would leave bitmaps no checkpoint names: the previous one's
//! disabled although its checkpoint is still the newest, and the writes
//! since tracked only by a bitmap nobody reads. So before the transaction
//! the store gets the checkpoint's intent: per image, the bitmap it adds
//! and the one it disables. Recording the checkpoint forgets the intent in
//! the same store transaction. An intent still there at the next
//! checkpoint operation on the domain (under its lock) was cut short:
//! [`recover`] undoes it image by image — the new bitmap's bits merged
//! into the previous one, which tracks again, and the new bitmap removed —
//! so the disks are as if the checkpoint was never begun, every write
//! since the previous checkpoint still counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_image::transaction::{Action, BitmapOp, BitmapSource, Held};
use strata_image::Image;

use crate::error::{Error, Result};
use crate::live::Disks;
use crate::store::{CheckpointIntent, Store};

/// What one image's part of a checkpoint does, to be undone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Undo {
    /// The disk's active image.
    pub file: PathBuf,
    /// The bitmap the checkpoint adds there.
    pub bitmap: String,
    /// The previous checkpoint's bitmap it disables there, if any.
    pub previous: Option<String>,
}

/// Writes down that checkpoint `name` of `domain` is about to make the
/// bitmap changes `undo` lists.
pub(crate) fn intend(store: &mut Store, domain: &str, name: &str, undo: &[Undo]) -> Result<()> {
    let undo = serde_json::to_string(undo).map_err(|e| {
        Error::invalid(
            format!("domain '{domain}': checkpoint '{name}'"),
            e.to_string(),
        )
    })?;
    store.set_checkpoint_intent(
        domain,
        &CheckpointIntent {
            name: name.to_string(),
            undo,
        },
    )
}

/// One image file: the `held` image where held, else opened alone.
pub(crate) fn layer(file: &Path, held: &Held) -> Result<Arc<dyn Image>> {
    if let Some(img) = held.get(file) {
        return Ok(img.clone());
    }
    Ok(strata_image::open(
        file,
        &strata_image::ChainOptions {
            backing: false,
            ..Default::default()
        },
    )?)
}

/// Undoes the checkpoint of `domain` whose making was cut short, if there
/// is one (see the module); a caller holds the domain's lock. On a running
/// domain's `served` disks the guest is held back while it runs.
pub fn recover(store: &mut Store, domain: &str, served: &dyn Disks) -> Result<()> {
    let Some(intent) = store.checkpoint_intent(domain)? else {
        return Ok(());
    };
    let what = format!("domain '{domain}': checkpoint '{}'", intent.name);
    if store
        .checkpoints(domain)?
        .iter()
        .any(|(n, _, _)| n == &intent.name)
    {
        return store.clear_checkpoint_intent(domain);
    }
    let undo: Vec<Undo> = serde_json::from_str(&intent.undo).map_err(|e| {
        Error::invalid(
            &what,
            format!("the record of its unfinished making is unreadable: {e}"),
        )
    })?;
    let held = served.held();
    let mut actions = Vec::new();
    for u in &undo {
        // An image gone since holds nothing to undo.
        if !u.file.exists() {
            continue;
        }
        let bitmaps = super::bitmap_list(&layer(&u.file, &held)?)?;
        if !bitmaps.iter().any(|(n, _)| n == &u.bitmap) {
            // This image's part never committed: the previous bitmap was
            // not disabled either (one header write did both).
            continue;
        }
        let prev = u
            .previous
            .as_ref()
            .and_then(|p| bitmaps.iter().find(|(n, _)| n == p));
        if let Some((p, enabled)) = prev {
            actions.push(Action::Bitmap {
                op: BitmapOp::Merge,
                file: u.file.clone(),
                name: p.clone(),
                granularity: None,
                disabled: false,
                sources: vec![BitmapSource {
                    file: None,
                    name: u.bitmap.clone(),
                }],
            });
            if !enabled {
                actions.push(Action::bitmap(BitmapOp::Enable, u.file.clone(), p.clone()));
            }
        }
        actions.push(Action::bitmap(
            BitmapOp::Remove,
            u.file.clone(),
            u.bitmap.clone(),
        ));
    }
    if !actions.is_empty() {
        let quiet = served.quiesce()?;
        strata_image::transaction::run_held(&actions, &held).map_err(|e| {
            Error::invalid(&what, format!("undoing its unfinished making failed: {e}"))
        })?;
        drop(quiet);
        tracing::warn!(domain = %domain, checkpoint = %intent.name, "a checkpoint whose making was cut short is undone");
    }
    store.clear_checkpoint_intent(domain)
}

/// After a failed making of a checkpoint: undoes whatever of it is left
/// (normally nothing: its transaction undid itself) unless the operation
/// died (a test's injected kill), logging a failure to undo; the intent
/// stays then, for the next [`recover`].
pub(crate) fn after_failure(store: &mut Store, domain: &str, served: &dyn Disks) {
    if crate::faults::died() {
        return;
    }
    if let Err(e) = recover(store, domain, served) {
        tracing::error!(domain = %domain, error = %e, "a failed checkpoint could not be undone yet");
    }
}
