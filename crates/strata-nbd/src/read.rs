//! `NBD_CMD_READ`. With structured or extended replies, stretches that
//! read as zero (by `base:allocation`) go as hole chunks, unless the client
//! asked for one data chunk (`DF`); the rest as data chunks. Large reads of
//! an export that can say where its bytes lie are assembled in a pipe
//! without copying (see `splice`); the others are read into a reused
//! buffer.

use std::sync::atomic::Ordering;

use crate::buffers::Buffers;
use crate::export::{Export, Outcome, Placement};
use crate::proto::{self, cflag, chunk};
use crate::reply::{simple_head, Out, Reply};
use crate::splice::{Assembly, Pipes};
use crate::transmission::{run_io, small, Conn, Request};

/// Reads smaller than this are copied: the copy costs less than the extra
/// system calls of a pipe (and small replies coalesce in the writer).
const SPLICE_MIN: u64 = 64 << 10;

/// Zeros to write into pipes.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Answers a read.
pub(crate) async fn read(conn: &Conn, req: Request, r: Reply) -> Out {
    let (off, len) = (req.offset, req.length);
    let holes = r.headers.chunked() && req.flags & cflag::DF == 0 && conn.allocation;
    let buffers = conn.buffers.clone();
    let pipes = conn.pipes.clone().filter(|_| len >= SPLICE_MIN);
    let built = run_io(&conn.neg.export, small(len), move |e| {
        if let Some(pipes) = pipes {
            if let Some(out) = spliced(e, &pipes, &buffers, r, off, len, holes) {
                return Ok(out);
            }
        }
        copied(e, &buffers, r, off, len, holes).map(Out::Bytes)
    })
    .await;
    let count = match built {
        Ok(Out::Pipes(..)) => &conn.spliced,
        _ => &conn.copied,
    };
    count.fetch_add(1, Ordering::Relaxed);
    built.unwrap_or_else(|f| Out::Bytes(r.error(&f)))
}

/// The reply built in a buffer: the bytes read with `read_at`, holes found
/// with `base:allocation`.
fn copied(
    e: &dyn Export,
    buffers: &Buffers,
    r: Reply,
    off: u64,
    len: u64,
    holes: bool,
) -> Outcome<Vec<u8>> {
    if !r.headers.chunked() {
        let mut m = buffers.take(16 + len as usize);
        m[..16].copy_from_slice(&simple_head(0, r.cookie));
        e.read_at(&mut m[16..], off)?;
        return Ok(m);
    }
    if len == 0 {
        return Ok(r.head(chunk::FLAG_DONE, chunk::NONE, 0));
    }
    // The pieces: (offset, length, reads as zero).
    let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = off;
    if holes {
        if let Ok(ext) = e.block_status("base:allocation", off, len) {
            for x in ext {
                let n = x.length.min(off + len - at);
                if n == 0 {
                    break;
                }
                let zero = x.flags & proto::STATE_ZERO != 0;
                match pieces.last_mut() {
                    Some(p) if p.2 == zero => p.1 += n,
                    _ => pieces.push((at, n, zero)),
                }
                at += n;
            }
        }
    }
    if at < off + len {
        pieces.push((at, off + len - at, false));
    }
    let h = r.head_len();
    let total: usize = pieces
        .iter()
        .map(|&(_, n, zero)| h + 8 + if zero { 4 } else { n as usize })
        .sum();
    let mut m = buffers.take(total);
    let mut w = 0usize;
    let last = pieces.len() - 1;
    for (i, (o, n, zero)) in pieces.into_iter().enumerate() {
        let flags = if i == last { chunk::FLAG_DONE } else { 0 };
        let (kind, size) = if zero {
            (chunk::OFFSET_HOLE, 12)
        } else {
            (chunk::OFFSET_DATA, 8 + n)
        };
        w += r.head_into(&mut m[w..], flags, kind, size);
        m[w..w + 8].copy_from_slice(&o.to_be_bytes());
        w += 8;
        if zero {
            m[w..w + 4].copy_from_slice(&(n as u32).to_be_bytes());
            w += 4;
        } else {
            e.read_at(&mut m[w..w + n as usize], o)?;
            w += n as usize;
        }
    }
    Ok(m)
}

/// One chunk of a spliced reply: a hole, or data from `parts`.
struct Piece {
    offset: u64,
    len: u64,
    hole: bool,
    parts: std::ops::Range<usize>,
}

/// The reply assembled in pipes, or `None` when the export cannot place
/// the range or anything goes otherwise than planned (the caller copies).
fn spliced(
    e: &dyn Export,
    pipes: &Pipes,
    buffers: &Buffers,
    r: Reply,
    off: u64,
    len: u64,
    holes: bool,
) -> Option<Out> {
    let placed = e.placement(off, len).ok()??;
    if len == 0 || placed.iter().map(Placement::len).sum::<u64>() != len {
        return None;
    }
    // Group the placements into chunks: holes, and data between them.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut at = off;
    for (i, p) in placed.iter().enumerate() {
        let hole = holes && matches!(p, Placement::Zero { .. });
        match pieces.last_mut() {
            Some(last) if hole == last.hole => {
                last.len += p.len();
                last.parts.end = i + 1;
            }
            _ => pieces.push(Piece {
                offset: at,
                len: p.len(),
                hole,
                parts: i..i + 1,
            }),
        }
        at += p.len();
    }
    let fill = || -> std::io::Result<Out> {
        let mut out = Assembly::new(pipes)?;
        let mut head = [0u8; 32 + 12];
        if !r.headers.chunked() {
            out.put(&simple_head(0, r.cookie))?;
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.iter().enumerate() {
            let flags = if i == last { chunk::FLAG_DONE } else { 0 };
            if r.headers.chunked() {
                let (kind, size) = if piece.hole {
                    (chunk::OFFSET_HOLE, 12)
                } else {
                    (chunk::OFFSET_DATA, 8 + piece.len)
                };
                let mut n = r.head_into(&mut head, flags, kind, size);
                head[n..n + 8].copy_from_slice(&piece.offset.to_be_bytes());
                n += 8;
                if piece.hole {
                    head[n..n + 4].copy_from_slice(&(piece.len as u32).to_be_bytes());
                    n += 4;
                }
                out.put(&head[..n])?;
            }
            if piece.hole {
                continue;
            }
            let mut at = piece.offset;
            for p in &placed[piece.parts.clone()] {
                match *p {
                    Placement::File { fd, offset, len } => out.splice_from(fd, offset, len)?,
                    Placement::Zero { len } => {
                        let mut left = len as usize;
                        while left > 0 {
                            let n = left.min(ZEROS.len());
                            out.put(&ZEROS[..n])?;
                            left -= n;
                        }
                    }
                    Placement::Read { len } => {
                        let mut b = buffers.take(len as usize);
                        e.read_at(&mut b, at).map_err(std::io::Error::other)?;
                        out.put(&b)?;
                        buffers.give(b);
                    }
                }
                at += p.len();
            }
        }
        Ok(Out::Pipes(out.finish()))
    };
    fill()
        .inspect_err(|err| tracing::debug!("read {off}+{len}: copying, not splicing: {err}"))
        .ok()
}
