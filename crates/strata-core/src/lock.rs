//! One writer at a time per domain, across processes: an exclusive `flock`
//! on `STATE/locks/NAME.lock`, held for the whole of an operation that
//! changes a domain's disks or metadata. The holder writes who it is (pid
//! and command line) into the file; a process that waits for the lock
//! gives up after [`LOCK_WAIT`] with an error naming the holder, as
//! libvirt gives up on a domain's job lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long [`DomainLock::acquire`] waits for another process to release
/// a domain.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// A held domain lock (released when dropped).
#[derive(Debug)]
pub struct DomainLock {
    _file: File,
}

impl DomainLock {
    /// Takes the lock of domain `name` under `state_dir`, waiting up to
    /// [`LOCK_WAIT`] for another strata process that holds it.
    pub fn acquire(state_dir: &Path, name: &str) -> Result<DomainLock> {
        Self::acquire_within(state_dir, name, LOCK_WAIT)
    }

    /// As [`DomainLock::acquire`], giving up after `wait`.
    pub fn acquire_within(state_dir: &Path, name: &str, wait: Duration) -> Result<DomainLock> {
        let (mut file, path) = open(state_dir, name)?;
        if !try_flock(&file) {
            tracing::info!(domain = %name, "busy in another strata process; waiting");
            let until = Instant::now() + wait;
            while !try_flock(&file) {
                if Instant::now() >= until {
                    return Err(Error::invalid(
                        format!("domain '{name}'"),
                        format!(
                            "busy: {} has held its lock for over {} s (lock file {})",
                            holder(&mut file),
                            wait.as_secs(),
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        sign(&mut file);
        Ok(DomainLock { _file: file })
    }

    /// Takes the lock of domain `name` if no other process holds it.
    pub fn try_acquire(state_dir: &Path, name: &str) -> Result<Option<DomainLock>> {
        let (mut file, _) = open(state_dir, name)?;
        if !try_flock(&file) {
            return Ok(None);
        }
        sign(&mut file);
        Ok(Some(DomainLock { _file: file }))
    }
}

/// Writes who holds the lock into its file: pid and command line. A
/// failure only makes a waiter's message vaguer.
fn sign(file: &mut File) {
    // Arguments need not be UTF-8 (paths): shown lossily, never a panic.
    let cmd: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let who = format!("pid {} ({})\n", std::process::id(), cmd.join(" "));
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(who.as_bytes()));
}

/// Who holds the lock, as the holder wrote it.
fn holder(file: &mut File) -> String {
    let mut who = String::new();
    let _ = file
        .rewind()
        .and_then(|()| file.take(4096).read_to_string(&mut who));
    match who.trim() {
        "" => "another strata process".to_string(),
        w => format!("strata {w}"),
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
        .read(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DomainLock::acquire(dir.path(), "vm").unwrap();
        let err = DomainLock::acquire_within(dir.path(), "vm", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        let me = format!("pid {}", std::process::id());
        assert!(err.contains("domain 'vm'") && err.contains(&me), "{err}");
        assert!(DomainLock::try_acquire(dir.path(), "vm").unwrap().is_none());
        drop(held);
        assert!(DomainLock::try_acquire(dir.path(), "vm").unwrap().is_some());
    }
}
