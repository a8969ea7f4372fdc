//! Running a checked request against the image and guest memory, then
//! answering it: data moves through a bounce buffer of at most [`CHUNK`]
//! bytes (so a huge request costs no huge allocation), and every byte this
//! device writes into guest memory — read data, the ID string, the status
//! byte — goes through vm-memory, whose bitmap records it for the dirty log
//! during migration.

use strata_image::Image;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::request::{Action, Buf, Op, Request};

/// The most bytes moved between the image and guest memory at a time.
pub(crate) const CHUNK: usize = 1 << 20;

/// How a request ended: its status and the data bytes written to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// `VIRTIO_BLK_S_*`.
    pub status: u8,
    /// Bytes written into device-writable data buffers.
    pub written: u32,
}

/// What a request needs besides memory and the image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context<'a> {
    /// The ID string, NUL-padded.
    pub serial: &'a [u8; 20],
    /// Make each write durable before completing it.
    pub writethrough: bool,
}

/// Runs `req` (when it is to run), writes its status byte and returns the
/// used length to put in the used ring. `scratch` is the caller's reusable
/// bounce buffer.
pub(crate) fn answer<M: GuestMemory + ?Sized>(
    mem: &M,
    image: &dyn Image,
    req: &Request,
    ctx: Context<'_>,
    scratch: &mut Vec<u8>,
) -> u32 {
    let outcome = match &req.action {
        Action::Run(op) => run(mem, image, op, ctx, scratch),
        Action::Fail { status, reason } => {
            tracing::debug!(
                head = req.head,
                status,
                reason,
                "virtio-blk request refused"
            );
            Outcome {
                status: *status,
                written: 0,
            }
        }
    };
    if mem.write_obj(outcome.status, req.status).is_err() {
        // Checked when parsed; memory is pinned by the caller's guard.
        tracing::warn!(head = req.head, "virtio-blk status byte not writable");
    }
    outcome.written.saturating_add(1)
}

/// Runs one operation.
pub(crate) fn run<M: GuestMemory + ?Sized>(
    mem: &M,
    image: &dyn Image,
    op: &Op,
    ctx: Context<'_>,
    scratch: &mut Vec<u8>,
) -> Outcome {
    let ok = |written| Outcome {
        status: VIRTIO_BLK_S_OK as u8,
        written,
    };
    let ioerr = Outcome {
        status: VIRTIO_BLK_S_IOERR as u8,
        written: 0,
    };
    let result = match op {
        Op::Read { offset, len, bufs } => {
            read(mem, image, *offset, *len, bufs, scratch).map(|()| {
                // len <= seg_max descriptors of u32 each; the used ring holds a u32.
                u32::try_from(*len).unwrap_or(u32::MAX)
            })
        }
        Op::Write { offset, len, bufs } => write(mem, image, *offset, *len, bufs, scratch)
            .and_then(|()| durable(image, ctx))
            .map(|()| 0),
        Op::Flush => {
            if image.writable() {
                image
                    .flush()
                    .map_err(|e| io_failed(image, "flush", 0, &e))
                    .map(|()| 0)
            } else {
                Ok(0)
            }
        }
        Op::GetId { bufs } => {
            let n = (crate::request::total(bufs) as usize).min(ctx.serial.len());
            scatter(mem, bufs, &ctx.serial[..n]).map(|()| n as u32)
        }
        Op::Discard { ranges } => ranges
            .iter()
            .try_for_each(|r| {
                image
                    .discard(r.offset, r.len)
                    .map_err(|e| io_failed(image, "discard", r.offset, &e))
            })
            .and_then(|()| durable(image, ctx))
            .map(|()| 0),
        Op::WriteZeroes { ranges } => ranges
            .iter()
            .try_for_each(|r| {
                image
                    .write_zeroes(r.offset, r.len, r.unmap)
                    .map_err(|e| io_failed(image, "write-zeroes", r.offset, &e))
            })
            .and_then(|()| durable(image, ctx))
            .map(|()| 0),
    };
    match result {
        Ok(written) => ok(written),
        Err(()) => ioerr,
    }
}

/// In writethrough mode, flushes after a change.
fn durable(image: &dyn Image, ctx: Context<'_>) -> Result<(), ()> {
    if ctx.writethrough {
        image.flush().map_err(|e| io_failed(image, "flush", 0, &e))
    } else {
        Ok(())
    }
}

fn io_failed(image: &dyn Image, what: &str, offset: u64, e: &strata_image::Error) {
    tracing::warn!(
        image = image.path(),
        offset,
        "virtio-blk {what} failed: {e}"
    );
}

/// Reads `len` bytes at `offset` into the guest buffers, a chunk at a time.
fn read<M: GuestMemory + ?Sized>(
    mem: &M,
    image: &dyn Image,
    offset: u64,
    len: u64,
    bufs: &[Buf],
    scratch: &mut Vec<u8>,
) -> Result<(), ()> {
    let mut cursor = Cursor::new(bufs);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let chunk = chunk_of(scratch, n);
        image
            .read_at(chunk, offset + done)
            .map_err(|e| io_failed(image, "read", offset + done, &e))?;
        cursor.put(mem, chunk)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes `len` bytes from the guest buffers at `offset`, a chunk at a time.
fn write<M: GuestMemory + ?Sized>(
    mem: &M,
    image: &dyn Image,
    offset: u64,
    len: u64,
    bufs: &[Buf],
    scratch: &mut Vec<u8>,
) -> Result<(), ()> {
    let mut cursor = Cursor::new(bufs);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let chunk = chunk_of(scratch, n);
        cursor.take(mem, chunk)?;
        image
            .write_at(chunk, offset + done)
            .map_err(|e| io_failed(image, "write", offset + done, &e))?;
        done += n as u64;
    }
    Ok(())
}

/// Copies `data` into the start of `bufs`.
fn scatter<M: GuestMemory + ?Sized>(mem: &M, bufs: &[Buf], data: &[u8]) -> Result<(), ()> {
    Cursor::new(bufs).put(mem, data)
}

/// The first `n` bytes of the scratch buffer, grown when needed.
fn chunk_of(scratch: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if scratch.len() < n {
        scratch.resize(n, 0);
    }
    &mut scratch[..n]
}

/// A position in a list of guest buffers.
struct Cursor<'a> {
    bufs: &'a [Buf],
    index: usize,
    offset: u32,
}

impl<'a> Cursor<'a> {
    fn new(bufs: &'a [Buf]) -> Self {
        Cursor {
            bufs,
            index: 0,
            offset: 0,
        }
    }

    /// Walks `len` bytes forward, calling `f` with each guest piece and the
    /// matching range of the caller's buffer.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ()>,
    ) -> Result<(), ()> {
        let mut done = 0;
        while done < len {
            let buf = self.bufs.get(self.index).ok_or(())?;
            let room = (buf.len - self.offset) as usize;
            if room == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = room.min(len - done);
            f(
                GuestAddress(buf.addr.0 + u64::from(self.offset)),
                done..done + n,
            )?;
            done += n;
            self.offset += n as u32;
        }
        Ok(())
    }

    /// Copies `data` into guest memory at the cursor.
    fn put<M: GuestMemory + ?Sized>(&mut self, mem: &M, data: &[u8]) -> Result<(), ()> {
        self.walk(data.len(), |addr, r| {
            mem.write_slice(&data[r], addr).map_err(|_| ())
        })
    }

    /// Fills `data` from guest memory at the cursor.
    fn take<M: GuestMemory + ?Sized>(&mut self, mem: &M, data: &mut [u8]) -> Result<(), ()> {
        self.walk(data.len(), |addr, r| {
            mem.read_slice(&mut data[r], addr).map_err(|_| ())
        })
    }
}

#[cfg(test)]
mod tests;
