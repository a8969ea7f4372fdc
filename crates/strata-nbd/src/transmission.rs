//! The transmission phase: requests are read in order, each runs on its
//! own task (the export's I/O on a blocking thread), and replies go out as
//! they complete, so many requests are in flight and replies may come out
//! of order. Errors get the protocol's error numbers; a broken request
//! header ends the connection. `NBD_CMD_DISC`, the end of the stream or a
//! server shutdown stop the reading; in-flight requests finish first.

use std::sync::Arc;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, WriteHalf,
};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::buffers::Buffers;
use crate::error::{Error, Result};
use crate::export::{Errno, Export, Failure, Outcome, StatusExtent};
use crate::handshake::{Headers, Negotiated};
use crate::proto::{self, cflag, chunk, cmd};

/// Requests in flight per connection.
const IN_FLIGHT: u32 = 64;
/// Most extents in one block status chunk.
const MAX_EXTENTS: usize = 1 << 20;
/// Socket buffer sizes (requests and replies coalesce in them).
const IO_BUFFER: usize = 256 << 10;
/// Requests up to this size run on the connection's own task.
const INLINE_MAX: u64 = 256 << 10;

/// One request header.
#[derive(Clone, Copy, Debug)]
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    /// The effect length (for writes, the payload's length).
    length: u64,
}

impl Request {
    /// Decodes a compact (28-byte) or extended (32-byte) header, checking
    /// its magic.
    fn parse(head: &[u8], extended: bool) -> Result<Request> {
        let be16 = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let be64 = |i: usize| u64::from_be_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let want = if extended {
            proto::EXTENDED_REQUEST_MAGIC
        } else {
            proto::REQUEST_MAGIC
        };
        if be32(0) != want {
            return Err(Error::protocol(format!("request magic {:#x}", be32(0))));
        }
        Ok(Request {
            flags: be16(4),
            kind: be16(6),
            cookie: be64(8),
            offset: be64(16),
            length: if extended { be64(24) } else { be32(24) as u64 },
        })
    }

    /// Bytes of payload following the header: a write's always (QEMU's
    /// client sends them without `NBD_CMD_FLAG_PAYLOAD_LEN`, and qemu-nbd
    /// takes them so), any other command's with that flag.
    fn payload(&self, extended: bool) -> u64 {
        if self.kind == cmd::WRITE || (extended && self.flags & cflag::PAYLOAD_LEN != 0) {
            self.length
        } else {
            0
        }
    }
}

/// Serves requests until the client leaves or `stop` turns true.
pub(crate) async fn serve<S>(io: S, neg: Negotiated, mut stop: watch::Receiver<bool>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let mut rd = BufReader::with_capacity(IO_BUFFER, rd);
    // Replies go, whole, to the connection's writer task, which coalesces
    // them.
    let (out, replies) = mpsc::unbounded_channel::<Vec<u8>>();
    let buffers = Arc::new(Buffers::default());
    let writer = tokio::spawn(write_replies(
        BufWriter::with_capacity(IO_BUFFER, wr),
        replies,
        buffers.clone(),
    ));
    let allocation = neg.export.contexts().iter().any(|c| c == "base:allocation");
    let conn = Arc::new(Conn {
        neg,
        buffers,
        allocation,
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT as usize));
    let extended = conn.neg.headers == Headers::Extended;
    let max = conn.neg.export.block_sizes().maximum.max(1 << 20) as u64;
    let result = loop {
        let mut head = [0u8; 32];
        let head = &mut head[..if extended { 32 } else { 28 }];
        let got = tokio::select! {
            r = rd.read_exact(head) => r,
            _ = stop.wait_for(|s| *s) => break Ok(()),
        };
        match got {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        let req = match Request::parse(head, extended) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if req.kind == cmd::DISC {
            break Ok(());
        }
        let size = req.payload(extended);
        if size > max {
            // Too big to read into memory: the protocol allows a hard
            // disconnect.
            break Err(Error::protocol(format!(
                "a payload of {size} bytes exceeds the maximum"
            )));
        }
        let mut payload = vec![0u8; size as usize];
        if let Err(e) = rd.read_exact(&mut payload).await {
            break Err(e.into());
        }
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (conn, out) = (conn.clone(), out.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let reply = handle(&conn, req, payload).await;
            // A closed channel means the connection is going away.
            let _ = out.send(reply);
        });
    };
    // Let every request in flight finish, then make writes durable.
    let _all = slots.acquire_many(IN_FLIGHT).await.expect("never closed");
    if !conn.neg.export.read_only() {
        let export = conn.neg.export.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || export.flush()).await {
            tracing::warn!("export '{}': flush at disconnect: {e}", conn.neg.name);
        }
    }
    drop(out);
    match writer.await {
        Ok(Err(e)) if result.is_ok() => return Err(e.into()),
        _ => {}
    }
    result
}

/// Writes replies as they come, many per system call when they queue up.
async fn write_replies<W: AsyncWrite>(
    mut w: BufWriter<WriteHalf<W>>,
    mut replies: mpsc::UnboundedReceiver<Vec<u8>>,
    buffers: Arc<Buffers>,
) -> std::io::Result<()> {
    while let Some(m) = replies.recv().await {
        w.write_all(&m).await?;
        buffers.give(m);
        while let Ok(m) = replies.try_recv() {
            w.write_all(&m).await?;
            buffers.give(m);
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// Checks a request against the export and the negotiation.
fn validate(neg: &Negotiated, req: &Request) -> Outcome<()> {
    let extended = neg.headers == Headers::Extended;
    let allowed = cflag::FUA
        | match req.kind {
            cmd::READ if neg.headers.chunked() => cflag::DF,
            cmd::WRITE if extended => cflag::PAYLOAD_LEN,
            cmd::WRITE_ZEROES => cflag::NO_HOLE | cflag::FAST_ZERO,
            cmd::BLOCK_STATUS if extended => cflag::REQ_ONE | cflag::PAYLOAD_LEN,
            cmd::BLOCK_STATUS => cflag::REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Err(Failure::new(
            Errno::Inval,
            format!(
                "flags {:#x} are not valid for command {}",
                req.flags, req.kind
            ),
        ));
    }
    let export = neg.export.as_ref();
    let ranged = matches!(
        req.kind,
        cmd::READ | cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES | cmd::CACHE | cmd::BLOCK_STATUS
    );
    if ranged {
        let end = req.offset.checked_add(req.length);
        if end.is_none_or(|e| e > export.size()) {
            return Err(Failure::new(
                Errno::Inval,
                format!(
                    "range {}+{} is past the end of the export ({} bytes)",
                    req.offset,
                    req.length,
                    export.size()
                ),
            ));
        }
        let min = export.block_sizes().minimum as u64;
        if min > 1 && (req.offset % min != 0 || req.length % min != 0) {
            return Err(Failure::new(
                Errno::Inval,
                format!(
                    "range {}+{} is not aligned to {min}",
                    req.offset, req.length
                ),
            ));
        }
    }
    match req.kind {
        cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES if export.read_only() => {
            Err(Failure::new(Errno::Perm, "the export is read-only"))
        }
        cmd::READ if req.length > export.block_sizes().maximum as u64 => Err(Failure::new(
            Errno::Inval,
            format!("read of {} bytes exceeds the maximum payload", req.length),
        )),
        cmd::BLOCK_STATUS if neg.contexts.is_empty() => Err(Failure::new(
            Errno::Inval,
            "no metadata context was selected",
        )),
        cmd::BLOCK_STATUS if req.length == 0 => {
            Err(Failure::new(Errno::Inval, "block status of zero bytes"))
        }
        cmd::READ
        | cmd::WRITE
        | cmd::FLUSH
        | cmd::TRIM
        | cmd::CACHE
        | cmd::WRITE_ZEROES
        | cmd::BLOCK_STATUS => Ok(()),
        k => Err(Failure::new(Errno::Inval, format!("unknown command {k}"))),
    }
}

/// Runs `f` with the export: small requests right here (page-cache I/O
/// takes microseconds, less than a thread hand-off), large ones and
/// flushes on a blocking thread so they do not hold up the rest.
async fn run_io<T: Send + 'static>(
    export: &Arc<dyn Export>,
    inline: bool,
    f: impl FnOnce(&dyn Export) -> Outcome<T> + Send + 'static,
) -> Outcome<T> {
    if inline {
        return f(export.as_ref());
    }
    let export = export.clone();
    tokio::task::spawn_blocking(move || f(export.as_ref()))
        .await
        .unwrap_or_else(|e| Err(Failure::new(Errno::Io, format!("the request failed: {e}"))))
}

/// True when a request of `len` bytes runs inline.
fn small(len: u64) -> bool {
    len <= INLINE_MAX
}

/// A connection's state shared by its request tasks.
struct Conn {
    neg: Negotiated,
    buffers: Arc<Buffers>,
    /// The export offers `base:allocation` (reads report holes).
    allocation: bool,
}

/// Carries out one request; returns its whole reply.
async fn handle(conn: &Conn, mut req: Request, payload: Vec<u8>) -> Vec<u8> {
    let neg = &conn.neg;
    let r = Reply {
        headers: neg.headers,
        cookie: req.cookie,
        offset: req.offset,
    };
    // The payload form of block status carries the effect length.
    let mut contexts = None;
    if req.kind == cmd::BLOCK_STATUS
        && req.flags & cflag::PAYLOAD_LEN != 0
        && neg.headers == Headers::Extended
    {
        match filter_contexts(neg, &payload) {
            Ok((length, ids)) => {
                req.length = length;
                contexts = Some(ids);
            }
            Err(f) => return r.error(&f),
        }
    }
    if let Err(f) = validate(neg, &req) {
        return r.error(&f);
    }
    if req.kind == cmd::BLOCK_STATUS {
        let contexts = contexts.unwrap_or_else(|| neg.contexts.clone());
        return block_status(neg, req, &contexts, r).await;
    }
    let fua = req.flags & cflag::FUA != 0;
    let (off, len) = (req.offset, req.length);
    // Zeroing and discarding are metadata work, done inline.
    let done = match req.kind {
        cmd::READ => return read(conn, req, r).await,
        cmd::WRITE => {
            run_io(&neg.export, small(len) && !fua, move |e| {
                e.write_at(&payload, off, fua)
            })
            .await
        }
        cmd::WRITE_ZEROES => {
            let may_trim = req.flags & cflag::NO_HOLE == 0;
            let fast = req.flags & cflag::FAST_ZERO != 0;
            run_io(&neg.export, !fua, move |e| {
                e.write_zeroes(off, len, may_trim, fast, fua)
            })
            .await
        }
        cmd::TRIM => run_io(&neg.export, !fua, move |e| e.trim(off, len, fua)).await,
        cmd::FLUSH => run_io(&neg.export, false, |e| e.flush()).await,
        cmd::CACHE => run_io(&neg.export, false, move |e| e.cache(off, len)).await,
        _ => Ok(()),
    };
    match done {
        Ok(()) => r.ok(),
        Err(f) => r.error(&f),
    }
}

/// `NBD_CMD_READ`: with structured replies, holes (by `base:allocation`)
/// go as hole chunks and the rest as data chunks. The reply is built in a
/// reused buffer.
async fn read(conn: &Conn, req: Request, r: Reply) -> Vec<u8> {
    let (off, len) = (req.offset, req.length);
    let holes = r.headers.chunked() && req.flags & cflag::DF == 0 && conn.allocation;
    let buffers = conn.buffers.clone();
    let built = run_io(&conn.neg.export, small(len), move |e| {
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
    })
    .await;
    built.unwrap_or_else(|f| r.error(&f))
}

/// The payload form of `NBD_CMD_BLOCK_STATUS` (extended headers): an
/// effect length, then the ids of the contexts wanted, each selected and
/// none twice.
fn filter_contexts(neg: &Negotiated, payload: &[u8]) -> Outcome<(u64, Vec<(u32, String)>)> {
    let bad = |m: String| Failure::new(Errno::Inval, m);
    if payload.len() < 12 || (payload.len() - 8) % 4 != 0 {
        return Err(bad(format!(
            "a block status payload of {} bytes is not 8 + 4n (n > 0)",
            payload.len()
        )));
    }
    let length = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    let mut chosen: Vec<(u32, String)> = Vec::new();
    for b in payload[8..].chunks_exact(4) {
        let id = u32::from_be_bytes(b.try_into().expect("4 bytes"));
        let Some(c) = neg.contexts.iter().find(|(i, _)| *i == id) else {
            return Err(bad(format!("context id {id} was not selected")));
        };
        if chosen.iter().any(|(i, _)| *i == id) {
            return Err(bad(format!("context id {id} is asked for twice")));
        }
        chosen.push(c.clone());
    }
    Ok((length, chosen))
}

/// `NBD_CMD_BLOCK_STATUS`: one chunk per context asked for; 64-bit
/// descriptors with extended headers.
async fn block_status(
    neg: &Negotiated,
    req: Request,
    contexts: &[(u32, String)],
    r: Reply,
) -> Vec<u8> {
    let one = req.flags & cflag::REQ_ONE != 0;
    let extended = r.headers == Headers::Extended;
    let mut m = Vec::new();
    let last = contexts.len() - 1;
    for (i, (id, name)) in contexts.iter().enumerate() {
        let (n, off, len) = (name.clone(), req.offset, req.length);
        let ext = match run_io(&neg.export, true, move |e| e.block_status(&n, off, len)).await {
            Ok(e) => shape(e, len, one, extended),
            Err(f) => return r.error(&f),
        };
        if ext.is_empty() {
            return r.error(&Failure::new(
                Errno::Io,
                format!("context '{name}' reported nothing"),
            ));
        }
        let flags = if i == last { chunk::FLAG_DONE } else { 0 };
        let count = ext.len() as u64;
        if extended {
            m.extend_from_slice(&r.head(flags, chunk::BLOCK_STATUS_EXT, 8 + 16 * count));
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&(count as u32).to_be_bytes());
            for x in ext {
                m.extend_from_slice(&x.length.to_be_bytes());
                m.extend_from_slice(&(x.flags as u64).to_be_bytes());
            }
        } else {
            m.extend_from_slice(&r.head(flags, chunk::BLOCK_STATUS, 4 + 8 * count));
            m.extend_from_slice(&id.to_be_bytes());
            for x in ext {
                m.extend_from_slice(&(x.length as u32).to_be_bytes());
                m.extend_from_slice(&x.flags.to_be_bytes());
            }
        }
    }
    m
}

/// Extents as the reply may carry them: nonzero, each under 4 GiB unless
/// `wide` (64-bit descriptors), the sum of all but the last under `len`,
/// one (within `len`) with `one`.
fn shape(ext: Vec<StatusExtent>, len: u64, one: bool, wide: bool) -> Vec<StatusExtent> {
    let max_extent = if wide { u64::MAX } else { u32::MAX as u64 } & !0xffff;
    let mut out = Vec::new();
    let mut sum = 0u64;
    for x in ext.into_iter().filter(|x| x.length > 0) {
        let mut rest = x.length;
        while rest > 0 && sum < len && out.len() < MAX_EXTENTS {
            let n = rest.min(max_extent);
            out.push(StatusExtent {
                length: n,
                flags: x.flags,
            });
            sum += n;
            rest -= n;
        }
        if sum >= len || out.len() >= MAX_EXTENTS {
            break;
        }
    }
    if one {
        out.truncate(1);
        if let Some(x) = out.first_mut() {
            x.length = x.length.min(len);
        }
    }
    out
}

/// How to answer one request: which headers, and what they echo.
#[derive(Clone, Copy)]
struct Reply {
    headers: Headers,
    cookie: u64,
    /// The request's offset (extended replies repeat it).
    offset: u64,
}

impl Reply {
    /// Success without payload.
    fn ok(&self) -> Vec<u8> {
        if self.headers.chunked() {
            self.head(chunk::FLAG_DONE, chunk::NONE, 0)
        } else {
            simple_head(0, self.cookie)
        }
    }

    /// An error; in chunks as an error chunk with the message (reads must
    /// not get a simple reply then).
    fn error(&self, f: &Failure) -> Vec<u8> {
        tracing::debug!("request {:#x}: {:?}: {}", self.cookie, f.errno, f.message);
        if !self.headers.chunked() {
            return simple_head(f.errno as u32, self.cookie);
        }
        let msg = &f.message.as_bytes()[..f.message.len().min(4096)];
        let mut m = self.head(chunk::FLAG_DONE, chunk::ERROR, 6 + msg.len() as u64);
        m.extend_from_slice(&(f.errno as u32).to_be_bytes());
        m.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        m.extend_from_slice(msg);
        m
    }

    /// Length of a chunk header: 20 structured, 32 extended.
    fn head_len(&self) -> usize {
        if self.headers == Headers::Extended {
            32
        } else {
            20
        }
    }

    /// A chunk header for a payload of `len` bytes.
    fn head(&self, flags: u16, kind: u16, len: u64) -> Vec<u8> {
        let mut m = vec![0u8; self.head_len()];
        self.head_into(&mut m, flags, kind, len);
        m
    }

    /// Writes a chunk header at the start of `out`; returns its length.
    fn head_into(&self, out: &mut [u8], flags: u16, kind: u16, len: u64) -> usize {
        let extended = self.headers == Headers::Extended;
        let magic = if extended {
            proto::EXTENDED_REPLY_MAGIC
        } else {
            proto::STRUCTURED_REPLY_MAGIC
        };
        out[0..4].copy_from_slice(&magic.to_be_bytes());
        out[4..6].copy_from_slice(&flags.to_be_bytes());
        out[6..8].copy_from_slice(&kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        if extended {
            out[16..24].copy_from_slice(&self.offset.to_be_bytes());
            out[24..32].copy_from_slice(&len.to_be_bytes());
            32
        } else {
            out[16..20].copy_from_slice(&(len as u32).to_be_bytes());
            20
        }
    }
}

fn simple_head(error: u32, cookie: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m
}
