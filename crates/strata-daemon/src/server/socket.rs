//! Claiming the API socket: one daemon per socket. A lock file beside it
//! (`strata.sock.lock`, an exclusive `flock` held for the daemon's life,
//! with its pid inside) settles races between daemons starting at once; a
//! socket something still answers on is never taken over; a stale socket
//! (nobody answers) is removed. The new socket is made 0600.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The API socket, claimed: listening, its lock held. Dropping it removes
/// the socket and releases the lock.
#[derive(Debug)]
pub struct Claimed {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    _lock: File,
}

impl Claimed {
    /// The listener, for the server (once; the claim still holds the lock
    /// and removes the socket when dropped).
    pub fn take_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of socket `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Claims `path` for this daemon (see the module docs).
pub fn claim(path: &Path) -> Result<Claimed> {
    let lock_file = lock_path(path);
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&lock_file)
        .map_err(|e| Error::io(&lock_file, "open", e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut who = String::new();
        let _ = lock.read_to_string(&mut who);
        return Err(Error::AlreadyServing {
            socket: path.to_path_buf(),
            holder: match who.trim() {
                "" => "its lock is held".to_string(),
                w => format!("daemon {w}"),
            },
        });
    }
    let _ = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "pid {}", std::process::id()));

    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::AlreadyServing {
                    socket: path.to_path_buf(),
                    holder: "a process without its lock answers there".to_string(),
                })
            }
            Err(_) => {
                tracing::info!(socket = %path.display(), "removing a stale socket");
                std::fs::remove_file(path)
                    .map_err(|e| Error::io(path, "remove the stale socket", e))?;
            }
        },
        Ok(_) => {
            return Err(Error::io(
                path,
                "listen",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is there",
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, "inspect", e)),
    }

    // Bound under a umask that leaves nothing to the group and others, so
    // the socket is never reachable by them, not even for an instant.
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    let std_listener = bound.map_err(|e| Error::io(path, "listen", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, "make owner-only", e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(path, "listen", e))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(|e| Error::io(path, "listen", e))?;
    Ok(Claimed {
        listener: Some(listener),
        path: path.to_path_buf(),
        _lock: lock,
    })
}
