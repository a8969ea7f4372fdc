//! Reply headers: simple replies, and the chunks of structured and
//! extended replies, as the request's negotiation asks; and what the
//! connection's writer sends (bytes, or a pipe holding a spliced read).

use crate::export::Failure;
use crate::handshake::Headers;
use crate::proto::{self, chunk};
use crate::splice::Pipe;

/// One whole reply, as the writer sends it.
pub(crate) enum Out {
    /// The reply's bytes.
    Bytes(Vec<u8>),
    /// The reply in pipes, each with the bytes it holds (see `splice`).
    Pipes(Vec<(Pipe, usize)>),
}

/// How to answer one request: which headers, and what they echo.
#[derive(Clone, Copy)]
pub(crate) struct Reply {
    pub(crate) headers: Headers,
    pub(crate) cookie: u64,
    /// The request's offset (extended replies repeat it).
    pub(crate) offset: u64,
}

impl Reply {
    /// Success without payload.
    pub(crate) fn ok(&self) -> Vec<u8> {
        if self.headers.chunked() {
            self.head(chunk::FLAG_DONE, chunk::NONE, 0)
        } else {
            simple_head(0, self.cookie)
        }
    }

    /// An error; in chunks as an error chunk with the message (reads must
    /// not get a simple reply then).
    pub(crate) fn error(&self, f: &Failure) -> Vec<u8> {
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
    pub(crate) fn head_len(&self) -> usize {
        if self.headers == Headers::Extended {
            32
        } else {
            20
        }
    }

    /// A chunk header for a payload of `len` bytes.
    pub(crate) fn head(&self, flags: u16, kind: u16, len: u64) -> Vec<u8> {
        let mut m = vec![0u8; self.head_len()];
        self.head_into(&mut m, flags, kind, len);
        m
    }

    /// Writes a chunk header at the start of `out`; returns its length.
    pub(crate) fn head_into(&self, out: &mut [u8], flags: u16, kind: u16, len: u64) -> usize {
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

pub(crate) fn simple_head(error: u32, cookie: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m
}
