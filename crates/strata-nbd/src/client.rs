//! A small blocking NBD client, for tests and for strata's own use: fixed
//! newstyle with `NBD_OPT_GO`, structured replies or extended headers, and
//! metadata contexts, one request at a time over a unix socket or TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{Error, Result};
use crate::export::StatusExtent;
use crate::proto::{self, chunk, cmd, info, opt, rep};

/// A byte stream to a server.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A connection in transmission phase.
pub struct Client {
    io: Box<dyn Conn>,
    size: u64,
    flags: u16,
    contexts: Vec<(u32, String)>,
    cookie: u64,
    extended: bool,
}

/// What to ask for in the handshake.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// The export's name.
    pub export: &'a str,
    /// Metadata contexts to select.
    pub contexts: &'a [&'a str],
    /// Negotiate extended headers (64-bit lengths) instead of structured
    /// replies; fails if the server refuses.
    pub extended_headers: bool,
}

/// Why a request failed on the server: its error number and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server error {errno}: {message}")]
pub struct ServerError {
    /// The NBD error number.
    pub errno: u32,
    /// The message, if the server sent one.
    pub message: String,
}

impl Client {
    /// Connects to `export` on the unix socket `path`, selecting `contexts`.
    pub fn unix(path: &Path, export: &str, contexts: &[&str]) -> Result<Client> {
        Client::unix_with(
            path,
            &Options {
                export,
                contexts,
                extended_headers: false,
            },
        )
    }

    /// Connects over the unix socket `path` as `opts` say.
    pub fn unix_with(path: &Path, opts: &Options) -> Result<Client> {
        Client::handshake(Box::new(UnixStream::connect(path)?), opts)
    }

    /// Connects to `export` at TCP `addr`, selecting `contexts`.
    pub fn tcp(addr: &str, export: &str, contexts: &[&str]) -> Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let opts = Options {
            export,
            contexts,
            extended_headers: false,
        };
        Client::handshake(Box::new(s), &opts)
    }

    fn handshake(mut io: Box<dyn Conn>, opts: &Options) -> Result<Client> {
        let (export, contexts) = (opts.export, opts.contexts);
        let mut hello = [0u8; 18];
        io.read_exact(&mut hello)?;
        if be64(&hello[0..8]) != proto::NBDMAGIC || be64(&hello[8..16]) != proto::IHAVEOPT {
            return Err(Error::protocol("not an NBD newstyle server"));
        }
        if u16::from_be_bytes([hello[16], hello[17]]) & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::protocol("the server does not speak fixed newstyle"));
        }
        io.write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes())?;
        let headers = if opts.extended_headers {
            opt::EXTENDED_HEADERS
        } else {
            opt::STRUCTURED_REPLY
        };
        option(&mut io, headers, &[])?;
        expect_ack(&mut io, headers)?;
        let mut selected = Vec::new();
        if !contexts.is_empty() {
            let mut d = string(export);
            d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for c in contexts {
                d.extend_from_slice(&string(c));
            }
            option(&mut io, opt::SET_META_CONTEXT, &d)?;
            loop {
                let (kind, data) = reply(&mut io, opt::SET_META_CONTEXT)?;
                match kind {
                    rep::ACK => break,
                    rep::META_CONTEXT if data.len() >= 4 => selected.push((
                        u32::from_be_bytes(data[0..4].try_into().expect("4 bytes")),
                        String::from_utf8_lossy(&data[4..]).into_owned(),
                    )),
                    k => return Err(refused("SET_META_CONTEXT", k, &data)),
                }
            }
        }
        let mut d = string(export);
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        option(&mut io, opt::GO, &d)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let (kind, data) = reply(&mut io, opt::GO)?;
            match kind {
                rep::ACK => break,
                rep::INFO if data.len() >= 12 && data[0..2] == info::EXPORT.to_be_bytes() => {
                    size = Some(be64(&data[2..10]));
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                rep::INFO => {}
                k => return Err(refused(&format!("export '{export}'"), k, &data)),
            }
        }
        let size = size.ok_or_else(|| Error::protocol("GO succeeded without NBD_INFO_EXPORT"))?;
        Ok(Client {
            io,
            size,
            flags,
            contexts: selected,
            cookie: 0,
            extended: opts.extended_headers,
        })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// The metadata contexts the server selected.
    pub fn contexts(&self) -> Vec<String> {
        self.contexts.iter().map(|(_, n)| n.clone()).collect()
    }

    /// Sends a request with effect length `len`, or with payload `data`
    /// when it is not empty.
    fn send(&mut self, flags: u16, kind: u16, offset: u64, len: u64, data: &[u8]) -> Result<u64> {
        self.cookie += 1;
        let mut m = Vec::with_capacity(32 + data.len());
        let magic = if self.extended {
            proto::EXTENDED_REQUEST_MAGIC
        } else {
            proto::REQUEST_MAGIC
        };
        let flags = if self.extended && !data.is_empty() {
            flags | proto::cflag::PAYLOAD_LEN
        } else {
            flags
        };
        m.extend_from_slice(&magic.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&self.cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        let len = if data.is_empty() {
            len
        } else {
            data.len() as u64
        };
        if self.extended {
            m.extend_from_slice(&len.to_be_bytes());
        } else {
            let len = u32::try_from(len)
                .map_err(|_| Error::protocol(format!("{len} bytes needs extended headers")))?;
            m.extend_from_slice(&len.to_be_bytes());
        }
        m.extend_from_slice(data);
        self.io.write_all(&m)?;
        Ok(self.cookie)
    }

    /// Reads chunks of the reply to `cookie` until the last; `on_chunk`
    /// gets each content chunk `(type, payload)`. A simple reply is handled
    /// too (without payload).
    fn receive(
        &mut self,
        cookie: u64,
        mut on_chunk: impl FnMut(&mut Self, u16, Vec<u8>) -> Result<()>,
    ) -> std::result::Result<Result<()>, ServerError> {
        let mut failure = None;
        loop {
            let mut magic = [0u8; 4];
            if let Err(e) = self.io.read_exact(&mut magic) {
                return Ok(Err(e.into()));
            }
            let magic = u32::from_be_bytes(magic);
            if magic == proto::SIMPLE_REPLY_MAGIC {
                let mut h = [0u8; 12];
                if let Err(e) = self.io.read_exact(&mut h) {
                    return Ok(Err(e.into()));
                }
                let errno = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
                if be64(&h[4..12]) != cookie {
                    return Ok(Err(Error::protocol("reply to an unknown request")));
                }
                return match errno {
                    0 => Ok(Ok(())),
                    e => Err(ServerError {
                        errno: e,
                        message: String::new(),
                    }),
                };
            }
            let extended = magic == proto::EXTENDED_REPLY_MAGIC;
            if magic != proto::STRUCTURED_REPLY_MAGIC && !extended {
                return Ok(Err(Error::protocol(format!("reply magic {magic:#x}"))));
            }
            let mut h = [0u8; 28];
            let h = &mut h[..if extended { 28 } else { 16 }];
            if let Err(e) = self.io.read_exact(h) {
                return Ok(Err(e.into()));
            }
            let flags = u16::from_be_bytes([h[0], h[1]]);
            let kind = u16::from_be_bytes([h[2], h[3]]);
            let len = if extended {
                be64(&h[20..28])
            } else {
                u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")) as u64
            };
            if be64(&h[4..12]) != cookie {
                return Ok(Err(Error::protocol("reply to an unknown request")));
            }
            if len > 64 << 20 {
                return Ok(Err(Error::protocol(format!("a reply of {len} bytes"))));
            }
            let len = len as usize;
            let mut payload = vec![0u8; len];
            if let Err(e) = self.io.read_exact(&mut payload) {
                return Ok(Err(e.into()));
            }
            if kind & 0x8000 != 0 {
                if payload.len() >= 6 {
                    let n = u16::from_be_bytes([payload[4], payload[5]]) as usize;
                    failure = Some(ServerError {
                        errno: u32::from_be_bytes(payload[0..4].try_into().expect("4 bytes")),
                        message: String::from_utf8_lossy(&payload[6..(6 + n).min(len)])
                            .into_owned(),
                    });
                }
            } else if kind != chunk::NONE {
                if let Err(e) = on_chunk(self, kind, payload) {
                    return Ok(Err(e));
                }
            }
            if flags & chunk::FLAG_DONE != 0 {
                return match failure {
                    Some(f) => Err(f),
                    None => Ok(Ok(())),
                };
            }
        }
    }

    /// Runs a request without reply payload.
    fn simple(&mut self, flags: u16, kind: u16, offset: u64, len: u64, data: &[u8]) -> Result<()> {
        let c = self.send(flags, kind, offset, len, data)?;
        match self.receive(c, |_, _, _| Ok(())) {
            Ok(r) => r,
            Err(e) => Err(Error::Server(e)),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let c = self.send(0, cmd::READ, offset, len as u64, &[])?;
        let mut out = vec![0u8; len];
        let r = self.receive(c, |_, kind, p| {
            let at = p
                .get(0..8)
                .map(be64)
                .ok_or_else(|| Error::protocol("short chunk"))?;
            let rel = at
                .checked_sub(offset)
                .map(|r| r as usize)
                .filter(|&r| r <= len)
                .ok_or_else(|| Error::protocol("chunk outside the read"))?;
            match kind {
                chunk::OFFSET_DATA => {
                    let data = &p[8..];
                    out.get_mut(rel..rel + data.len())
                        .ok_or_else(|| Error::protocol("data chunk past the read"))?
                        .copy_from_slice(data);
                }
                chunk::OFFSET_HOLE => {
                    let n = p
                        .get(8..12)
                        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
                        .ok_or_else(|| Error::protocol("short hole chunk"))?;
                    out.get_mut(rel..rel + n)
                        .ok_or_else(|| Error::protocol("hole chunk past the read"))?
                        .fill(0);
                }
                k => return Err(Error::protocol(format!("chunk type {k} in a read"))),
            }
            Ok(())
        });
        match r {
            Ok(r) => r?,
            Err(e) => return Err(Error::Server(e)),
        }
        buf.copy_from_slice(&out);
        Ok(())
    }

    /// Writes `data` at `offset` (durable before returning with `fua`).
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let f = if fua { proto::cflag::FUA } else { 0 };
        self.simple(f, cmd::WRITE, offset, data.len() as u64, data)
    }

    /// Makes `[offset, offset+len)` read as zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, no_hole: bool) -> Result<()> {
        let f = if no_hole { proto::cflag::NO_HOLE } else { 0 };
        self.simple(f, cmd::WRITE_ZEROES, offset, len, &[])
    }

    /// Discards `[offset, offset+len)`.
    pub fn trim(&mut self, offset: u64, len: u64) -> Result<()> {
        self.simple(0, cmd::TRIM, offset, len, &[])
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) -> Result<()> {
        self.simple(0, cmd::FLUSH, 0, 0, &[])
    }

    /// The extents of `context` from `offset` (at most `len` bytes asked).
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<StatusExtent>> {
        let id = self
            .contexts
            .iter()
            .find(|(_, n)| n == context)
            .map(|(i, _)| *i)
            .ok_or_else(|| Error::protocol(format!("context '{context}' was not selected")))?;
        let c = self.send(0, cmd::BLOCK_STATUS, offset, len, &[])?;
        let mut out = Vec::new();
        let r = self.receive(c, |_, kind, p| {
            let (head, step) = match kind {
                chunk::BLOCK_STATUS => (4, 8),
                chunk::BLOCK_STATUS_EXT => (8, 16),
                k => return Err(Error::protocol(format!("chunk type {k} in block status"))),
            };
            if p.len() < head + step || (p.len() - head) % step != 0 {
                return Err(Error::protocol("malformed block status chunk"));
            }
            if u32::from_be_bytes(p[0..4].try_into().expect("4 bytes")) == id {
                for d in p[head..].chunks_exact(step) {
                    out.push(if step == 8 {
                        StatusExtent {
                            length: u32::from_be_bytes(d[0..4].try_into().expect("4")) as u64,
                            flags: u32::from_be_bytes(d[4..8].try_into().expect("4")),
                        }
                    } else {
                        StatusExtent {
                            length: be64(&d[0..8]),
                            flags: be64(&d[8..16]) as u32,
                        }
                    });
                }
            }
            Ok(())
        });
        match r {
            Ok(r) => r?,
            Err(e) => return Err(Error::Server(e)),
        }
        Ok(out)
    }

    /// Ends the session politely (`NBD_CMD_DISC`).
    pub fn disconnect(mut self) -> Result<()> {
        self.send(0, cmd::DISC, 0, 0, &[])?;
        Ok(())
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// A 32-bit length and the string.
fn string(s: &str) -> Vec<u8> {
    let mut d = (s.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(s.as_bytes());
    d
}

fn option(io: &mut Box<dyn Conn>, o: u32, data: &[u8]) -> Result<()> {
    let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&o.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    io.write_all(&m)?;
    Ok(())
}

/// One option reply to `o`: (type, data).
fn reply(io: &mut Box<dyn Conn>, o: u32) -> Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    io.read_exact(&mut h)?;
    if be64(&h[0..8]) != proto::REPLY_MAGIC {
        return Err(Error::protocol("bad option reply magic"));
    }
    if u32::from_be_bytes(h[8..12].try_into().expect("4 bytes")) != o {
        return Err(Error::protocol("reply to another option"));
    }
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
    if len > 1 << 20 {
        return Err(Error::protocol("option reply too large"));
    }
    let mut data = vec![0u8; len];
    io.read_exact(&mut data)?;
    Ok((
        u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")),
        data,
    ))
}

fn expect_ack(io: &mut Box<dyn Conn>, o: u32) -> Result<()> {
    match reply(io, o)? {
        (rep::ACK, _) => Ok(()),
        (k, d) => Err(refused(&format!("option {o}"), k, &d)),
    }
}

fn refused(what: &str, kind: u32, data: &[u8]) -> Error {
    Error::protocol(format!(
        "{what}: the server refused ({kind:#x}): {}",
        String::from_utf8_lossy(data)
    ))
}
