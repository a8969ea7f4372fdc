//! External snapshots: the current image becomes the read-only backing file
//! of a new qcow2 overlay that takes all new writes (`qcow2.txt` backing
//! files; libvirt's external disk snapshots). Offline, the snapshot *is* the
//! overlay: whoever uses the disk switches to it afterwards.

use std::path::{Path, PathBuf};

use crate::chain::resolve_backing;
use crate::error::{Error, Result};
use crate::image::Format;
use crate::qcow2::{self, CreateOptions, Qcow2};
use crate::storage::FileStorage;

/// The overlay name libvirt generates: the original's name without its
/// extension, a dot, the snapshot name (`vda.qcow2` + `s1` → `vda.s1`).
pub fn default_overlay(file: &Path, snapshot: &str) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!("{stem}.{snapshot}"))
}

/// The backing name to record in an overlay: relative when both files share
/// a folder (so the pair can move together), absolute otherwise.
pub fn backing_name(file: &Path, overlay: &Path) -> Result<String> {
    let shown = file.display().to_string();
    let abs = std::fs::canonicalize(file).map_err(|e| Error::io(&shown, "open", 0, e))?;
    let dir = overlay
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let overlay_dir = std::fs::canonicalize(dir)
        .map_err(|e| Error::io(&dir.display().to_string(), "open", 0, e))?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(p), Some(n)) if p == overlay_dir => n.to_string_lossy().into_owned(),
        _ => abs.display().to_string(),
    })
}

/// Checks an existing overlay for reuse: a qcow2 whose backing file is `file`.
pub fn check_reusable(file: &Path, overlay: &Path) -> Result<()> {
    let shown = overlay.display().to_string();
    let st = FileStorage::open(overlay, false)?;
    if crate::chain::probe(&st)? != Format::Qcow2 {
        return Err(Error::invalid(
            &shown,
            "an overlay to reuse must be a qcow2 image",
        ));
    }
    let h = qcow2::read_header(&st)?;
    let Some(name) = h.backing_file else {
        return Err(Error::invalid(
            &shown,
            format!(
                "the overlay has no backing file (expected {})",
                file.display()
            ),
        ));
    };
    let want = std::fs::canonicalize(file)
        .map_err(|e| Error::io(&file.display().to_string(), "open", 0, e))?;
    let got = std::fs::canonicalize(resolve_backing(overlay, &name)).ok();
    if got.as_deref() != Some(want.as_path()) {
        return Err(Error::invalid(
            &shown,
            format!(
                "the overlay's backing file is {name}, not {}",
                file.display()
            ),
        ));
    }
    Ok(())
}

/// Creates a qcow2 overlay at `overlay` over `file` (of `format`, `size` bytes).
pub fn create_overlay(file: &Path, format: Format, size: u64, overlay: &Path) -> Result<()> {
    let opts = CreateOptions {
        size: size.div_ceil(512) * 512,
        backing_file: Some(backing_name(file, overlay)?),
        backing_format: Some(format.name().to_string()),
        ..Default::default()
    };
    Qcow2::create_file(overlay, &opts)
}
