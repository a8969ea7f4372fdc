//! Replies sent without copying their data: a read reply is assembled in a
//! pipe (chunk headers written into it, data spliced into it from the
//! image's file, which moves page references, not bytes), then the
//! connection's writer splices the pipe into the socket (which, for unix
//! and TCP sockets, again moves page references). The server's two copies
//! of every byte read (file to buffer, buffer to socket) become none.
//!
//! Pipes are non-blocking and sized up front; anything that does not go as
//! planned (a full pipe, a file shorter than expected) abandons the pipe,
//! and the caller builds the reply by copying instead.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The pipe size asked for (Linux's default limit for unprivileged users).
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Idle pipes kept per connection.
const KEEP: usize = 16;
/// Pipes open at most per connection (two descriptors each); beyond, reads
/// are copied.
const LIVE: usize = 96;

/// A pipe holding (part of) one reply.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Pages (pipe buffers) it holds.
    slots: usize,
    /// Its connection's count of open pipes.
    live: Arc<AtomicUsize>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The system's page size (asked once).
fn page() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).unwrap_or(4096).max(512)
    })
}

/// The result of a system call returning a count.
fn check(n: isize) -> std::io::Result<usize> {
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Pipe {
    /// A new non-blocking pipe, made as large as the system allows up to
    /// `PIPE_SIZE`.
    fn new(live: &Arc<AtomicUsize>) -> std::io::Result<Pipe> {
        if live.fetch_add(1, Ordering::Relaxed) >= LIVE {
            live.fetch_sub(1, Ordering::Relaxed);
            return Err(std::io::Error::other("too many pipes open"));
        }
        let live = live.clone();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            live.fetch_sub(1, Ordering::Relaxed);
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 just opened both, and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the size.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // SAFETY: as above.
        let bytes = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        Ok(Pipe {
            read,
            write,
            slots: usize::try_from(bytes).unwrap_or(0) / page(),
            live,
        })
    }

    /// Bytes waiting in the pipe.
    fn holding(&self) -> std::io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to `n`.
        if unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Appends `bytes` (copied into the pipe).
    fn put(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: writes from a live slice to a descriptor we own.
            let n = check(unsafe {
                libc::write(self.write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
            })?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Appends `len` bytes of `file` from `offset`, by reference. A file
    /// that ends first is an error (`UnexpectedEof`).
    fn splice_from(
        &self,
        file: BorrowedFd<'_>,
        mut offset: u64,
        mut len: u64,
    ) -> std::io::Result<()> {
        while len > 0 {
            let mut off = offset as libc::loff_t;
            // SAFETY: both descriptors are open; `off` outlives the call.
            let n = check(unsafe {
                libc::splice(
                    file.as_raw_fd(),
                    &mut off,
                    self.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    len as usize,
                    libc::SPLICE_F_NONBLOCK,
                )
            })?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// Moves `len` bytes from the pipe into the socket `sock`, waiting
    /// whenever the socket is full.
    pub(crate) async fn drain(
        &self,
        sock: &AsyncFd<OwnedFd>,
        mut len: usize,
    ) -> std::io::Result<()> {
        while len > 0 {
            let mut ready = sock.writable().await?;
            let moved = ready.try_io(|s| {
                // SAFETY: both descriptors are open.
                check(unsafe {
                    libc::splice(
                        self.read.as_raw_fd(),
                        std::ptr::null_mut(),
                        s.as_raw_fd(),
                        std::ptr::null_mut(),
                        len,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                })
            });
            match moved {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => len -= n,
                Ok(Err(e)) => return Err(e),
                // The socket is full, unless the pipe holds less than it
                // should (which would otherwise wait forever).
                Err(_would_block) if self.holding()? < len => {
                    return Err(std::io::Error::other("a reply's pipe ran dry"));
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// A connection's pipes, reused once drained.
#[derive(Debug, Default)]
pub(crate) struct Pipes {
    free: Mutex<Vec<Pipe>>,
    live: Arc<AtomicUsize>,
}

impl Pipes {
    /// An empty pipe.
    pub(crate) fn take(&self) -> std::io::Result<Pipe> {
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(p) => Ok(p),
            None => Pipe::new(&self.live),
        }
    }

    /// Returns a drained pipe (one smaller than asked for is closed: the
    /// system is short of pipe space).
    pub(crate) fn give(&self, p: Pipe) {
        if p.slots * page() < PIPE_SIZE as usize {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP {
            free.push(p);
        }
    }
}

/// The socket `fd` (a duplicate of it) for the writer to splice into.
pub(crate) fn socket(fd: RawFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is the connection's open socket; the duplicate is ours.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: the `OwnedFd` keeps the descriptor open, on the same file
    // description, until the `AsyncFd` drops it.
    unsafe { AsyncFd::register_with_interest(owned, Interest::WRITABLE) }.map_err(|e| e.into())
}

/// Pipe buffers needed for `len` bytes starting `offset` into a page.
fn pages(offset: u64, len: u64) -> usize {
    let p = page() as u64;
    ((offset % p + len).div_ceil(p)) as usize
}

/// A reply being assembled in pipes, a new one taken whenever the current
/// one might not hold the next piece. Dropped unfinished, its pipes close.
pub(crate) struct Assembly<'a> {
    pool: &'a Pipes,
    full: Vec<(Pipe, usize)>,
    pipe: Pipe,
    /// Bytes in `pipe`, and pipe buffers they may take.
    bytes: usize,
    used: usize,
}

impl<'a> Assembly<'a> {
    /// An empty reply.
    pub(crate) fn new(pool: &'a Pipes) -> std::io::Result<Assembly<'a>> {
        Ok(Assembly {
            pool,
            full: Vec::new(),
            pipe: pool.take()?,
            bytes: 0,
            used: 0,
        })
    }

    /// The most bytes moved in one piece (a pipe holds several).
    fn piece(&self) -> std::io::Result<usize> {
        match (self.pipe.slots / 2).saturating_sub(1) * page() {
            0 => Err(std::io::Error::other("pipes are too small")),
            n => Ok(n.min(256 << 10)),
        }
    }

    /// Makes room for `slots` pipe buffers more.
    fn room(&mut self, slots: usize) -> std::io::Result<()> {
        if self.used + slots >= self.pipe.slots {
            let next = self.pool.take()?;
            if slots >= next.slots {
                return Err(std::io::Error::other("a pipe too small"));
            }
            let full = std::mem::replace(&mut self.pipe, next);
            self.full.push((full, self.bytes));
            (self.bytes, self.used) = (0, 0);
        }
        self.used += slots;
        Ok(())
    }

    /// Appends `bytes`, copied.
    pub(crate) fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let piece = self.piece()?;
        for part in bytes.chunks(piece) {
            // Written bytes may start in the last page written.
            self.room(pages(0, part.len() as u64) + 1)?;
            self.pipe.put(part)?;
            self.bytes += part.len();
        }
        Ok(())
    }

    /// Appends `len` bytes of `file` from `offset`, by reference.
    pub(crate) fn splice_from(
        &mut self,
        file: BorrowedFd<'_>,
        mut offset: u64,
        mut len: u64,
    ) -> std::io::Result<()> {
        let piece = self.piece()? as u64;
        while len > 0 {
            let n = len.min(piece);
            self.room(pages(offset, n))?;
            self.pipe.splice_from(file, offset, n)?;
            self.bytes += n as usize;
            (offset, len) = (offset + n, len - n);
        }
        Ok(())
    }

    /// The reply: its pipes in order, with the bytes each holds.
    pub(crate) fn finish(mut self) -> Vec<(Pipe, usize)> {
        self.full.push((self.pipe, self.bytes));
        self.full
    }
}
