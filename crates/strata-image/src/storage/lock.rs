//! QEMU-compatible image locking.
//!
//! QEMU's file driver advertises the permissions it holds on an image, and the
//! ones it refuses to share, as shared (read) open-file-description locks on
//! single bytes: byte `100 + i` means "I hold permission bit i", byte
//! `200 + i` means "nobody else may hold permission bit i". Before taking its
//! locks a process tests the opposite bytes for locks held by others. strata
//! takes the same bytes, so strata and QEMU (qemu-img, qemu-nbd, a running
//! VM) refuse to write an image the other one holds.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits, as indexes into the lock byte ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Permissions {
    /// BLK_PERM_CONSISTENT_READ.
    ConsistentRead = 0,
    /// BLK_PERM_WRITE.
    Write = 1,
    /// BLK_PERM_WRITE_UNCHANGED.
    WriteUnchanged = 2,
    /// BLK_PERM_RESIZE.
    Resize = 3,
}

impl Permissions {
    fn name(self) -> &'static str {
        match self {
            Permissions::ConsistentRead => "consistent read",
            Permissions::Write => "write",
            Permissions::WriteUnchanged => "write unchanged",
            Permissions::Resize => "resize",
        }
    }
}

/// How an image is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// No locks at all (QEMU's `-U`/force-share for readers).
    None,
    /// A reader that needs others not to write (as `qemu-img info`).
    Read,
    /// A writer that needs exclusive write and resize (as `qemu-nbd`).
    Write,
}

impl LockMode {
    fn held(self) -> &'static [Permissions] {
        match self {
            LockMode::None => &[],
            LockMode::Read => &[Permissions::ConsistentRead],
            LockMode::Write => &[
                Permissions::ConsistentRead,
                Permissions::Write,
                Permissions::Resize,
            ],
        }
    }

    fn unshared(self) -> &'static [Permissions] {
        match self {
            LockMode::None => &[],
            LockMode::Read | LockMode::Write => &[Permissions::Write, Permissions::Resize],
        }
    }
}

fn flock_struct(kind: i16, start: i64) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

/// True when another open file description holds a lock on byte `start`.
fn held_by_other(file: &File, start: i64) -> std::io::Result<bool> {
    let mut fl = flock_struct(libc::F_WRLCK as i16, start);
    // SAFETY: the fd is open for the duration of the call and `fl` is a valid
    // flock the kernel may write into.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as i16)
}

fn set_lock(file: &File, kind: i16, start: i64) -> std::io::Result<()> {
    let fl = flock_struct(kind, start);
    // SAFETY: the fd is open and `fl` is a valid flock for F_OFD_SETLK.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Applies `mode` to `file`: first checks for conflicts with other holders,
/// then takes the bytes, then releases bytes the new mode no longer needs.
pub(crate) fn apply(file: &File, path: &str, mode: LockMode) -> Result<()> {
    let io = |e| Error::io(path, "lock", 0, e);
    for &p in mode.held() {
        if held_by_other(file, SHARED_BASE + p as i64).map_err(io)? {
            return Err(Error::Locked {
                path: path.to_string(),
                perm: p.name(),
            });
        }
    }
    for &p in mode.unshared() {
        if held_by_other(file, PERM_BASE + p as i64).map_err(io)? {
            return Err(Error::Locked {
                path: path.to_string(),
                perm: p.name(),
            });
        }
    }
    let all = [
        Permissions::ConsistentRead,
        Permissions::Write,
        Permissions::WriteUnchanged,
        Permissions::Resize,
    ];
    for p in all {
        let want = mode.held().contains(&p);
        let kind = if want { libc::F_RDLCK } else { libc::F_UNLCK };
        set_lock(file, kind as i16, PERM_BASE + p as i64).map_err(io)?;
        let want = mode.unshared().contains(&p);
        let kind = if want { libc::F_RDLCK } else { libc::F_UNLCK };
        set_lock(file, kind as i16, SHARED_BASE + p as i64).map_err(io)?;
    }
    Ok(())
}
