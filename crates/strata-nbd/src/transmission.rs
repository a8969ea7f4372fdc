//! The transmission phase: requests are read in order, each runs on its
//! own task (the export's I/O on a blocking thread), and replies go out as
//! they complete, so many requests are in flight and replies may come out
//! of order. Errors get the protocol's error numbers; a broken request
//! header ends the connection. `NBD_CMD_DISC`, the end of the stream or a
//! server shutdown stop the reading; in-flight requests finish first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, WriteHalf,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use std::os::fd::{OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

use crate::buffers::Buffers;
use crate::error::{Error, Result};
use crate::export::{Errno, Export, Failure, Outcome, StatusExtent};
use crate::handshake::{Headers, Negotiated};
use crate::proto::{self, cflag, chunk, cmd};
use crate::read::read;
use crate::reply::{Out, Reply};
use crate::splice::{self, Pipes};

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
pub(crate) struct Request {
    pub(crate) flags: u16,
    pub(crate) kind: u16,
    pub(crate) cookie: u64,
    pub(crate) offset: u64,
    /// The effect length (for writes, the payload's length).
    pub(crate) length: u64,
}

impl Request {
    /// Decodes a compact (28-byte) or extended (32-byte) header, checking
    /// its magic.
    pub(crate) fn parse(head: &[u8], extended: bool) -> Result<Request> {
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
    pub(crate) fn payload(&self, extended: bool) -> u64 {
        if self.kind == cmd::WRITE || (extended && self.flags & cflag::PAYLOAD_LEN != 0) {
            self.length
        } else {
            0
        }
    }
}

/// Serves requests until the client leaves or `stop` turns true.
pub(crate) async fn serve<S>(
    io: S,
    socket: Option<RawFd>,
    neg: Negotiated,
    mut stop: watch::Receiver<bool>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let mut rd = BufReader::with_capacity(IO_BUFFER, rd);
    // Replies go, whole, to the connection's writer task, which coalesces
    // them; on a plain socket it can splice pipes into it.
    // Each reply carries its request's slot until it is written, so a
    // client that does not read its replies stops having requests taken.
    let (out, replies) = mpsc::unbounded_channel::<(Out, OwnedSemaphorePermit)>();
    let buffers = Arc::new(Buffers::default());
    let sock = socket.and_then(|fd| {
        splice::socket(fd)
            .inspect_err(|e| tracing::debug!("no splicing: {e}"))
            .ok()
    });
    let pipes = sock.as_ref().map(|_| Arc::new(Pipes::default()));
    let writer = tokio::spawn(write_replies(
        BufWriter::with_capacity(IO_BUFFER, wr),
        sock,
        replies,
        buffers.clone(),
        pipes.clone(),
    ));
    let allocation = neg.export.contexts().iter().any(|c| c == "base:allocation");
    let conn = Arc::new(Conn {
        neg,
        buffers,
        pipes,
        allocation,
        spliced: AtomicU64::new(0),
        copied: AtomicU64::new(0),
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
        tokio::spawn(
            async move {
                let reply = handle(&conn, req, payload).await;
                // A closed channel means the connection is going away.
                let _ = out.send((reply, permit));
            }
            .in_current_span(),
        );
    };
    // Let every request in flight finish, then make writes durable.
    let _all = slots.acquire_many(IN_FLIGHT).await.expect("never closed");
    tracing::debug!(
        export = %conn.neg.name,
        spliced = conn.spliced.load(Ordering::Relaxed),
        copied = conn.copied.load(Ordering::Relaxed),
        "reads served"
    );
    if !conn.neg.export.read_only() {
        let export = conn.neg.export.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || export.flush()).await {
            tracing::warn!(export = %conn.neg.name, error = %e, "flush at disconnect failed");
        }
    }
    drop(out);
    match writer.await {
        Ok(Err(e)) if result.is_ok() => return Err(e.into()),
        _ => {}
    }
    result
}

/// Writes replies as they come, many per system call when they queue up;
/// replies in pipes are spliced into `sock` (the same socket).
async fn write_replies<W: AsyncWrite>(
    mut w: BufWriter<WriteHalf<W>>,
    sock: Option<AsyncFd<OwnedFd>>,
    mut replies: mpsc::UnboundedReceiver<(Out, OwnedSemaphorePermit)>,
    buffers: Arc<Buffers>,
    pipes: Option<Arc<Pipes>>,
) -> std::io::Result<()> {
    while let Some((mut m, mut _slot)) = replies.recv().await {
        loop {
            match m {
                Out::Bytes(b) => {
                    w.write_all(&b).await?;
                    buffers.give(b);
                }
                Out::Pipes(list) => {
                    let (Some(sock), Some(pipes)) = (&sock, &pipes) else {
                        return Err(std::io::Error::other("a pipe reply without a socket"));
                    };
                    // What is buffered goes first.
                    w.flush().await?;
                    for (pipe, len) in list {
                        pipe.drain(sock, len).await?;
                        pipes.give(pipe);
                    }
                }
            }
            match replies.try_recv() {
                Ok(next) => (m, _slot) = next,
                Err(_) => break,
            }
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
pub(crate) async fn run_io<T: Send + 'static>(
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
pub(crate) fn small(len: u64) -> bool {
    len <= INLINE_MAX
}

/// A connection's state shared by its request tasks.
pub(crate) struct Conn {
    pub(crate) neg: Negotiated,
    pub(crate) buffers: Arc<Buffers>,
    /// Pipes for spliced read replies, when the writer can splice (a plain
    /// socket).
    pub(crate) pipes: Option<Arc<Pipes>>,
    /// The export offers `base:allocation` (reads report holes).
    pub(crate) allocation: bool,
    /// Reads answered from a pipe, and by copying (for the log).
    pub(crate) spliced: AtomicU64,
    pub(crate) copied: AtomicU64,
}

/// Carries out one request; returns its whole reply.
async fn handle(conn: &Conn, req: Request, payload: Vec<u8>) -> Out {
    let r = Reply {
        headers: conn.neg.headers,
        cookie: req.cookie,
        offset: req.offset,
    };
    if req.kind == cmd::READ && validate(&conn.neg, &req).is_ok() {
        return read(conn, req, r).await;
    }
    Out::Bytes(answer(conn, req, payload, r).await)
}

/// Carries out a request other than a valid read; returns its reply.
async fn answer(conn: &Conn, mut req: Request, payload: Vec<u8>, r: Reply) -> Vec<u8> {
    let neg = &conn.neg;
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
