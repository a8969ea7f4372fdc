//! External data files (`qcow2.txt` incompatible bit 2, autoclear bit 1
//! `data_file_raw`, header extension 0x44415441).
//!
//! With a data file, guest data lives in a second file at host offset ==
//! guest offset, and only metadata (header, L1/L2 tables, refcounts,
//! bitmaps) stays in the qcow2 file. Data clusters are not refcounted: each
//! has an implicit refcount of one, so every mapped L2 entry carries the
//! COPIED flag, and an offset of 0 with COPIED set maps guest cluster 0.
//! Compressed clusters and internal snapshots are not allowed.
//!
//! With `data_file_raw` the data file is also a valid raw image of the
//! guest at all times: every cluster is mapped when the image is created,
//! and zeroing writes zeros into the data file too. Such an image cannot
//! have a backing file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::create::{CreateOptions, Preallocation};
use super::header::{Header, AUTOCLEAR_DATA_FILE_RAW, EXT_DATA_FILE, INCOMPAT_DATA_FILE};
use crate::chain::resolve_backing;
use crate::error::{Error, Result};
use crate::storage::{FileStorage, LockMode, Storage};

/// Longest data file name accepted (a host path: `PATH_MAX` less its NUL).
pub const MAX_NAME: usize = 4095;

/// Checks the data-file fields of a parsed header: the raw bit needs the
/// data file bit, and an image with a data file must name it sensibly.
pub(crate) fn validate(h: &Header, path: &str) -> Result<()> {
    let has = h.incompatible & INCOMPAT_DATA_FILE != 0;
    if h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 && !has {
        return Err(Error::data_file(
            path,
            "autoclear bit 1 (data_file_raw) is set, but incompatible bit 2 (external data file) is not",
        ));
    }
    if !has {
        return Ok(());
    }
    if h.version < 3 {
        return Err(Error::data_file(
            path,
            "external data files need qcow2 version 3",
        ));
    }
    let Some(raw) = h.extension(EXT_DATA_FILE) else {
        return Err(Error::data_file(
            path,
            "incompatible bit 2 is set, but the header names no data file (extension 0x44415441 is missing)",
        ));
    };
    if raw.is_empty() {
        return Err(Error::data_file(
            path,
            "the data file name (extension 0x44415441) is empty",
        ));
    }
    if raw.len() > MAX_NAME {
        return Err(Error::data_file(
            path,
            format!(
                "the data file name (extension 0x44415441) is {} bytes long, more than {MAX_NAME}",
                raw.len()
            ),
        ));
    }
    if raw.contains(&0) {
        return Err(Error::data_file(
            path,
            "the data file name (extension 0x44415441) contains a NUL byte",
        ));
    }
    if std::str::from_utf8(raw).is_err() {
        return Err(Error::data_file(
            path,
            "the data file name (extension 0x44415441) is not UTF-8",
        ));
    }
    Ok(())
}

/// Refuses data-file creation options qemu-img refuses (and names that
/// could not be read back), naming the option at fault.
pub(crate) fn validate_create(o: &CreateOptions, path: &str) -> Result<()> {
    let bad = |what: &str| Err(Error::invalid(path, what));
    let Some(name) = &o.data_file else {
        return if o.data_file_raw {
            bad("data_file_raw needs data_file")
        } else {
            Ok(())
        };
    };
    if o.version < 3 {
        return bad("data_file needs compat=1.1");
    }
    if o.data_file_raw && o.backing_file.is_some() {
        return bad("data_file_raw cannot be used with a backing file");
    }
    if name.is_empty() {
        return bad("data_file needs a file name");
    }
    if name.len() > MAX_NAME {
        return Err(Error::invalid(
            path,
            format!("data file name is longer than {MAX_NAME} bytes"),
        ));
    }
    if name.contains('\0') {
        return bad("data file name contains a NUL byte");
    }
    Ok(())
}

/// Where the data file named `name` in the image at `image` lives: relative
/// names resolve against the image's folder, as backing names do.
pub fn resolve(image: &Path, name: &str) -> PathBuf {
    resolve_backing(image, name)
}

/// Opens the data file `h` names, with the image's writability and locks.
pub(crate) fn open(
    image: &str,
    h: &Header,
    writable: bool,
    lock: bool,
) -> Result<Option<Arc<dyn Storage>>> {
    let Some(name) = h.data_file_name() else {
        return Ok(None);
    };
    let at = resolve(Path::new(image), &name);
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&at), std::fs::canonicalize(image)) {
        if a == b {
            return Err(Error::data_file(
                image,
                format!("data file {} is the image itself", at.display()),
            ));
        }
    }
    // Checked before opening: opening a FIFO would block.
    if std::fs::metadata(&at).is_ok_and(|m| !m.is_file() && !is_block_device(&m)) {
        return Err(Error::data_file(
            image,
            format!("data file {} is not a regular file", at.display()),
        ));
    }
    let st = FileStorage::open(&at, writable).map_err(|e| {
        Error::data_file(
            image,
            format!("cannot open data file {}: {}", at.display(), source_of(&e)),
        )
    })?;
    if !std::fs::metadata(&at).is_ok_and(|m| m.is_file() || is_block_device(&m)) {
        return Err(Error::data_file(
            image,
            format!("data file {} is not a regular file", at.display()),
        ));
    }
    if lock {
        st.lock(if writable {
            LockMode::Write
        } else {
            LockMode::Read
        })?;
    }
    Ok(Some(Arc::new(st)))
}

fn is_block_device(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_block_device()
}

/// The operating system's reason inside an I/O error, else the whole error.
fn source_of(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Creates (or takes over) the data file of a new image: a missing file is
/// created with `size` bytes; an existing one keeps its contents (with
/// `data_file_raw` they become the guest's disk) and grows to `size` when
/// shorter; one longer than `size` is refused, and so is preallocating
/// (falloc, full) over one, which would overwrite its contents. Returns
/// whether the file was created (so a failed create can remove it again).
pub(crate) fn create(image: &Path, name: &str, size: u64, prealloc: Preallocation) -> Result<bool> {
    let shown = image.display().to_string();
    let at = resolve(image, name);
    let same = match (std::fs::canonicalize(&at), std::fs::canonicalize(image)) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(&at).ok() == std::path::absolute(image).ok(),
    };
    if same {
        return Err(Error::data_file(
            &shown,
            format!("data file {} is the image itself", at.display()),
        ));
    }
    let (st, created) = match FileStorage::create(&at, false) {
        Ok(st) => (st, true),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            let st = FileStorage::open(&at, true).map_err(|e| {
                Error::data_file(
                    &shown,
                    format!("cannot open data file {}: {}", at.display(), source_of(&e)),
                )
            })?;
            (st, false)
        }
        Err(e) => {
            return Err(Error::data_file(
                &shown,
                format!(
                    "cannot create data file {}: {}",
                    at.display(),
                    source_of(&e)
                ),
            ))
        }
    };
    let len = st.len()?;
    if !created && matches!(prealloc, Preallocation::Falloc | Preallocation::Full) {
        return Err(Error::data_file(
            &shown,
            format!(
                "data file {} exists: preallocation={} would overwrite it; it is left unchanged",
                at.display(),
                if prealloc == Preallocation::Full {
                    "full"
                } else {
                    "falloc"
                }
            ),
        ));
    }
    if !created && len > size {
        return Err(Error::data_file(
            &shown,
            format!(
                "data file {} is {len} bytes, larger than the image ({size} bytes); it is left unchanged",
                at.display()
            ),
        ));
    }
    let grown = if len < size {
        st.set_len(size).and_then(|()| st.flush())
    } else {
        Ok(())
    };
    if let Err(e) = grown {
        if created {
            let _ = std::fs::remove_file(&at);
        }
        return Err(e);
    }
    Ok(created)
}

/// Removes a data file [`create`] made, after the image failed to be made.
pub(crate) fn remove_created(image: &Path, name: &str) {
    let _ = std::fs::remove_file(resolve(image, name));
}
