//! One writer at a time per domain, across processes: an exclusive `flock`
//! on `STATE/locks/NAME.lock`, held for the whole of an operation that
//! changes a domain's disks or metadata.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held domain lock (released when dropped).
#[derive(Debug)]
pub struct DomainLock {
    _file: File,
}

impl DomainLock {
    /// Takes the lock of domain `name` under `state_dir`, waiting for
    /// another strata process that holds it.
    pub fn acquire(state_dir: &Path, name: &str) -> Result<DomainLock> {
        let (file, path) = open(state_dir, name)?;
        if !try_flock(&file) {
            tracing::info!("domain '{name}' is busy in another strata process; waiting");
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::Io {
                    path,
                    op: "lock",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(DomainLock { _file: file })
    }

    /// Takes the lock of domain `name` if no other process holds it.
    pub fn try_acquire(state_dir: &Path, name: &str) -> Result<Option<DomainLock>> {
        let (file, _) = open(state_dir, name)?;
        Ok(try_flock(&file).then_some(DomainLock { _file: file }))
    }
}

/// Opens (creating) the lock file of domain `name`.
fn open(state_dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    let dir = state_dir.join("locks");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        op: "create the lock folder",
        source: e,
    })?;
    let path = dir.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Io {
            path: path.clone(),
            op: "open",
            source: e,
        })?;
    Ok((file, path))
}

/// Takes an exclusive `flock` without waiting; false when it is held.
fn try_flock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
