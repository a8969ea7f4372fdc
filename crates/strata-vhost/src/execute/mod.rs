//! Running a checked request against the image and guest memory, then
//! answering it. Data moves straight between the image and guest memory
//! where a guest buffer lies in one host mapping and is worth an image call
//! of its own ([`Cursor::in_place`]); elsewhere through a bounce buffer of
//! at most [`CHUNK`] bytes (so a huge request costs no huge allocation).
//! Every byte this device writes into guest memory is in the dirty log
//! during migration: what goes through vm-memory (bounced data, the ID
//! string, the status byte) is marked by its bitmap, and a read in place
//! marks its range itself.

use strata_image::Image;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use crate::request::{Action, Buf, Op, Request};

/// The most bytes moved through the bounce buffer at a time.
pub(crate) const CHUNK: usize = 1 << 20;

/// The smallest guest buffer that data moves to or from in place (without
/// the bounce buffer) when a request has several: below it, one image call
/// for many small buffers and a copy each costs less than a call each.
pub(crate) const IN_PLACE_MIN: usize = 64 << 10;

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

/// Answers `req` with `IOERR` without running it (its run panicked): the
/// status byte says so, and the answer keeps its place in the used ring.
pub(crate) fn failed<M: GuestMemory + ?Sized>(mem: &M, req: &Request) -> u32 {
    if mem.write_obj(VIRTIO_BLK_S_IOERR as u8, req.status).is_err() {
        tracing::warn!(head = req.head, "virtio-blk status byte not writable");
    }
    1
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

/// Reads `len` bytes at `offset` into the guest buffers: straight into
/// guest memory where a buffer allows it ([`Cursor::in_place`]), through the
/// bounce buffer a chunk at a time elsewhere.
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
        let at = offset + done;
        if let Some(target) = cursor.in_place(mem, Permissions::Write) {
            let n = target.len();
            let guard = target.ptr_guard_mut();
            // SAFETY: `target` is `n` bytes of guest memory, mapped in this
            // process for as long as `mem` is borrowed here (the caller
            // holds the memory map), so the slice points at live memory
            // for its whole life, which ends before this iteration does.
            // The guest may read or write those bytes at any time, and
            // another request in flight may name the same bytes: the
            // guest owns them and gets whatever the last store left, as
            // with any device doing DMA. What matters to this process is
            // that no code relies on the bytes being stable: `read_at`
            // only stores into its buffer (pread, zero fill, copies from
            // decompressed or backing data) and never reads back what it
            // stored, as `Image::read_at` requires of every driver; this
            // function never reads them either.
            let piece = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), n) };
            image
                .read_at(piece, at)
                .map_err(|e| io_failed(image, "read", at, &e))?;
            // Written behind vm-memory's back: the dirty log must hear of it.
            target.bitmap().mark_dirty(0, n);
            cursor.advance(n);
            done += n as u64;
            continue;
        }
        let n = cursor.bounce_len(
            mem,
            Permissions::Write,
            (len - done).min(CHUNK as u64) as usize,
        );
        let chunk = chunk_of(scratch, n);
        image
            .read_at(chunk, at)
            .map_err(|e| io_failed(image, "read", at, &e))?;
        cursor.put(mem, chunk)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes `len` bytes from the guest buffers at `offset`: straight from
/// guest memory where a buffer allows it ([`Cursor::in_place`]), through the
/// bounce buffer a chunk at a time elsewhere.
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
        let at = offset + done;
        if let Some(source) = cursor.in_place(mem, Permissions::Read) {
            let n = source.len();
            let guard = source.ptr_guard();
            // SAFETY: `source` is `n` bytes of guest memory, mapped in this
            // process for as long as `mem` is borrowed here (the caller
            // holds the memory map), so the slice points at live memory
            // for its whole life, which ends before this iteration does.
            // The guest may change those bytes while they are written out:
            // it then gets some mix of old and new data on its disk, as with
            // any device doing DMA from memory the driver did not leave
            // alone. Nothing in this process relies on them being stable:
            // `write_at` copies each byte out (pwrite, or once into a
            // copy-on-write buffer) and never reads the same byte twice
            // expecting the same value, as `Image::write_at` requires of
            // every driver.
            let piece = unsafe { std::slice::from_raw_parts(guard.as_ptr(), n) };
            image
                .write_at(piece, at)
                .map_err(|e| io_failed(image, "write", at, &e))?;
            cursor.advance(n);
            done += n as u64;
            continue;
        }
        let n = cursor.bounce_len(
            mem,
            Permissions::Read,
            (len - done).min(CHUNK as u64) as usize,
        );
        let chunk = chunk_of(scratch, n);
        cursor.take(mem, chunk)?;
        image
            .write_at(chunk, at)
            .map_err(|e| io_failed(image, "write", at, &e))?;
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
#[derive(Clone, Copy)]
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

    /// The rest of the current buffer, when data may move between the image
    /// and it in place: it lies in one host mapping, and it is worth an
    /// image call of its own (at least [`IN_PLACE_MIN`] bytes, or the
    /// request's only buffer). A buffer that spans two memory regions, or
    /// a small one among many, goes through the bounce buffer.
    fn in_place<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        access: Permissions,
    ) -> Option<VolatileSlice<'m, BS<'m, M::Bitmap>>> {
        let (addr, room) = self.here()?;
        if room < IN_PLACE_MIN && self.bufs.len() > 1 {
            return None;
        }
        let slice = mem.get_slices(addr, room, access).ok()?.next()?.ok()?;
        (slice.len() == room).then_some(slice)
    }

    /// How many bytes, at most `max`, the bounce buffer should carry from
    /// here: up to the next buffer that goes in place.
    fn bounce_len<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        access: Permissions,
        max: usize,
    ) -> usize {
        let mut probe = *self;
        let Some((_, room)) = probe.here() else {
            return max;
        };
        let mut n = room.min(max);
        probe.advance(n);
        while n < max && probe.in_place(mem, access).is_none() {
            let Some((_, room)) = probe.here() else { break };
            let step = room.min(max - n);
            probe.advance(step);
            n += step;
        }
        n
    }

    /// The guest address and the bytes left of the current buffer (past
    /// the exhausted ones); `None` at the end.
    fn here(&mut self) -> Option<(GuestAddress, usize)> {
        loop {
            let buf = self.bufs.get(self.index)?;
            let room = buf.len - self.offset;
            if room > 0 {
                return Some((
                    GuestAddress(buf.addr.0 + u64::from(self.offset)),
                    room as usize,
                ));
            }
            self.index += 1;
            self.offset = 0;
        }
    }

    /// Moves `n` bytes forward, `n` at most the current buffer's rest.
    fn advance(&mut self, n: usize) {
        self.offset += n as u32;
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
mod in_place_tests;
#[cfg(test)]
mod tests;
