//! Turning a descriptor chain into a checked virtio-blk request (virtio
//! 1.2, 5.2.6): the header, the data buffers and the status byte, found
//! wherever the driver put them (any layout), every address checked against
//! guest memory and every range against the disk, before anything runs.
//!
//! A chain that breaks the rules still gets an answer when its status byte
//! is usable: `VIRTIO_BLK_S_IOERR` for a malformed or out-of-range request,
//! `VIRTIO_BLK_S_UNSUPP` for a type or flag this device does not do. A chain
//! whose status byte is unusable (no device-writable descriptor at the end,
//! or one outside guest memory) cannot be answered and is returned to the
//! driver with nothing written.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::device::{Limits, MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS, SECTOR};

/// Bytes of the request header: type, reserved, sector.
const HEADER_LEN: usize = 16;
/// Bytes of one discard or write-zeroes segment.
const RANGE_LEN: usize = 16;
/// The most descriptors a chain may have: seg_max's ceiling plus the
/// header and the status, rounded up. Longer chains are refused.
pub(crate) const MAX_DESCRIPTORS: usize = 65_536;

/// One guest buffer of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buf {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// One range of a discard or write-zeroes request, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    /// Disk offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Write-zeroes may deallocate.
    pub unmap: bool,
}

/// A checked operation, ready to run against the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read `len` bytes at `offset` into `bufs`.
    Read {
        offset: u64,
        len: u64,
        bufs: Vec<Buf>,
    },
    /// Write `len` bytes from `bufs` at `offset`.
    Write {
        offset: u64,
        len: u64,
        bufs: Vec<Buf>,
    },
    /// Make completed writes durable.
    Flush,
    /// Copy the ID string into `bufs` (at most 20 bytes).
    GetId { bufs: Vec<Buf> },
    /// Discard each range.
    Discard { ranges: Vec<Range> },
    /// Zero each range.
    WriteZeroes { ranges: Vec<Range> },
}

/// What to do with a request whose status byte is usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run it.
    Run(Op),
    /// Answer at once with this status; the reason is for logs and tests.
    Fail { status: u8, reason: &'static str },
}

/// A request that can be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// The chain's head index (the used-ring id).
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// What to do.
    pub action: Action,
}

/// The outcome of parsing a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A request with a usable status byte.
    Request(Request),
    /// No usable status byte: return the chain with nothing written.
    Unanswerable { head: u16, reason: &'static str },
}

fn fail(head: u16, status: GuestAddress, code: u32, reason: &'static str) -> Parsed {
    Parsed::Request(Request {
        head,
        status,
        action: Action::Fail {
            status: code as u8,
            reason,
        },
    })
}

/// Parses the chain with head `head` whose descriptors are `descs`
/// (address, length, device-writable), in chain order.
pub(crate) fn parse<M, I>(mem: &M, head: u16, descs: I, limits: &Limits) -> Parsed
where
    M: GuestMemory + ?Sized,
    I: IntoIterator<Item = (GuestAddress, u32, bool)>,
{
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut misordered = false;
    let mut too_long = false;
    let mut outside = false;
    let mut last = None;
    for (i, (addr, len, write)) in descs.into_iter().enumerate() {
        last = Some((addr, len, write));
        if i >= MAX_DESCRIPTORS {
            too_long = true;
            continue;
        }
        if !mem.check_range(addr, len as usize, vm_memory::Permissions::Read) {
            outside = true;
        }
        if write {
            writable.push(Buf { addr, len });
        } else if !writable.is_empty() {
            misordered = true;
        } else {
            readable.push(Buf { addr, len });
        }
    }
    // The status byte: the last byte of the last descriptor, device-writable.
    let status = match last {
        Some((addr, len, true)) if len > 0 => match addr.0.checked_add(u64::from(len) - 1) {
            Some(a) if mem.check_range(GuestAddress(a), 1, vm_memory::Permissions::Write) => {
                GuestAddress(a)
            }
            _ => {
                return Parsed::Unanswerable {
                    head,
                    reason: "status byte outside guest memory",
                }
            }
        },
        Some(_) => {
            return Parsed::Unanswerable {
                head,
                reason: "no device-writable status byte",
            }
        }
        None => {
            return Parsed::Unanswerable {
                head,
                reason: "empty chain",
            }
        }
    };
    const IOERR: u32 = VIRTIO_BLK_S_IOERR;
    if too_long {
        return fail(head, status, IOERR, "too many descriptors");
    }
    if outside {
        return fail(head, status, IOERR, "buffer outside guest memory");
    }
    if misordered {
        return fail(
            head,
            status,
            IOERR,
            "device-readable buffer after a device-writable one",
        );
    }
    let mut header = [0u8; HEADER_LEN];
    if !gather(mem, &readable, &mut header) {
        return fail(head, status, IOERR, "header shorter than 16 bytes");
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let out_bufs = skip(&readable, HEADER_LEN as u64);
    let in_bufs = trim_last_byte(&writable);
    let out_len = total(&out_bufs);
    let in_len = total(&in_bufs);

    let op = match kind {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return fail(
                    head,
                    status,
                    IOERR,
                    "read request with device-readable data",
                );
            }
            match check_io(limits, sector, in_len) {
                Ok(offset) => Op::Read {
                    offset,
                    len: in_len,
                    bufs: in_bufs,
                },
                Err(reason) => return fail(head, status, IOERR, reason),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if limits.readonly {
                return fail(head, status, IOERR, "write to a read-only disk");
            }
            if in_len != 0 {
                return fail(
                    head,
                    status,
                    IOERR,
                    "write request with device-writable data",
                );
            }
            match check_io(limits, sector, out_len) {
                Ok(offset) => Op::Write {
                    offset,
                    len: out_len,
                    bufs: out_bufs,
                },
                Err(reason) => return fail(head, status, IOERR, reason),
            }
        }
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => Op::GetId { bufs: in_bufs },
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            if limits.readonly {
                // Neither feature is offered on a read-only disk.
                return fail(
                    head,
                    status,
                    VIRTIO_BLK_S_UNSUPP,
                    "discard or write-zeroes on a read-only disk",
                );
            }
            match parse_ranges(mem, &out_bufs, out_len, limits, discard) {
                Ok(ranges) if discard => Op::Discard { ranges },
                Ok(ranges) => Op::WriteZeroes { ranges },
                Err((code, reason)) => return fail(head, status, code, reason),
            }
        }
        _ => {
            return fail(
                head,
                status,
                VIRTIO_BLK_S_UNSUPP,
                "unsupported request type",
            )
        }
    };
    Parsed::Request(Request {
        head,
        status,
        action: Action::Run(op),
    })
}

/// Checks a read or write of `len` bytes at `sector`; returns its offset.
fn check_io(limits: &Limits, sector: u64, len: u64) -> Result<u64, &'static str> {
    let block = u64::from(limits.block_size);
    let offset = sector.checked_mul(SECTOR).ok_or("sector out of range")?;
    if offset % block != 0 || len % block != 0 {
        return Err("not aligned to the block size");
    }
    match offset.checked_add(len) {
        Some(end) if end <= limits.capacity => Ok(offset),
        _ => Err("beyond the end of the disk"),
    }
}

/// Reads and checks the segments of a discard or write-zeroes request.
fn parse_ranges<M: GuestMemory + ?Sized>(
    mem: &M,
    bufs: &[Buf],
    len: u64,
    limits: &Limits,
    discard: bool,
) -> Result<Vec<Range>, (u32, &'static str)> {
    const IOERR: u32 = VIRTIO_BLK_S_IOERR;
    if len == 0 || len % RANGE_LEN as u64 != 0 {
        return Err((
            IOERR,
            "segment data is not a whole number of 16-byte segments",
        ));
    }
    let count = len / RANGE_LEN as u64;
    if count > u64::from(MAX_RANGE_SEGMENTS) {
        return Err((
            IOERR,
            "more segments than max_discard_seg/max_write_zeroes_seg",
        ));
    }
    let mut raw = vec![0u8; len as usize];
    if !gather(mem, bufs, &mut raw) {
        return Err((IOERR, "segment data unreadable"));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for seg in raw.chunks_exact(RANGE_LEN) {
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err((VIRTIO_BLK_S_UNSUPP, "unknown segment flag"));
        }
        if discard && unmap {
            return Err((VIRTIO_BLK_S_UNSUPP, "unmap flag on a discard"));
        }
        if sectors > MAX_RANGE_SECTORS {
            return Err((IOERR, "segment longer than the advertised maximum"));
        }
        let bytes = u64::from(sectors) * SECTOR;
        let offset = check_io(limits, sector, bytes).map_err(|r| (IOERR, r))?;
        ranges.push(Range {
            offset,
            len: bytes,
            unmap,
        });
    }
    Ok(ranges)
}

/// Total bytes of `bufs`.
pub(crate) fn total(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

/// `bufs` without their first `n` bytes.
fn skip(bufs: &[Buf], mut n: u64) -> Vec<Buf> {
    let mut out = Vec::new();
    for b in bufs {
        let len = u64::from(b.len);
        if n >= len {
            n -= len;
            continue;
        }
        // n < len <= u32::MAX, and addr + len was checked against memory.
        out.push(Buf {
            addr: GuestAddress(b.addr.0 + n),
            len: (len - n) as u32,
        });
        n = 0;
    }
    out
}

/// `bufs` without their last byte (the status), empty buffers dropped.
fn trim_last_byte(bufs: &[Buf]) -> Vec<Buf> {
    let mut out: Vec<Buf> = bufs.iter().copied().filter(|b| b.len > 0).collect();
    if let Some(last) = out.last_mut() {
        last.len -= 1;
        if last.len == 0 {
            out.pop();
        }
    }
    out
}

/// Fills `out` from the start of `bufs`; false when they hold too few bytes
/// or memory cannot be read.
fn gather<M: GuestMemory + ?Sized>(mem: &M, bufs: &[Buf], out: &mut [u8]) -> bool {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        let n = (b.len as usize).min(out.len() - done);
        if mem.read_slice(&mut out[done..done + n], b.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == out.len()
}

#[cfg(test)]
mod tests;
