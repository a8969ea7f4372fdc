//! Entry points for the fuzz targets in `fuzz/`: thin wrappers that reach
//! the request decoder, the option parsers and a whole connection without
//! a socket. Not part of the API (hidden from the docs); may change with
//! the fuzz targets.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::error::Result;
use crate::handshake::{self, Step, TlsState};
use crate::server::Exports;
use crate::transmission::{self, Request};

/// A request header as the transmission phase decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedRequest {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// The client's cookie.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Effect length.
    pub length: u64,
    /// Bytes of payload that follow the header.
    pub payload: u64,
}

/// Decodes the request header at the start of `bytes` (28 bytes, or 32
/// with `extended` headers) as the server does; `None` when `bytes` is
/// shorter than a header (the server reads whole headers only).
pub fn decode_request(bytes: &[u8], extended: bool) -> Option<Result<DecodedRequest>> {
    let head = bytes.get(..if extended { 32 } else { 28 })?;
    Some(Request::parse(head, extended).map(|r| DecodedRequest {
        flags: r.flags,
        kind: r.kind,
        cookie: r.cookie,
        offset: r.offset,
        length: r.length,
        payload: r.payload(extended),
    }))
}

/// The export name and information requests of an `NBD_OPT_INFO` or
/// `NBD_OPT_GO` payload; `None` when malformed.
pub fn parse_info(data: &[u8]) -> Option<(String, Vec<u16>)> {
    handshake::parse_info(data)
}

/// The export name and queries of an `NBD_OPT_LIST_META_CONTEXT` or
/// `NBD_OPT_SET_META_CONTEXT` payload; `None` when malformed.
pub fn parse_meta_context(data: &[u8]) -> Option<(String, Vec<String>)> {
    handshake::parse_meta_context(data)
}

/// Serves one client on `io` as the server serves a plain connection
/// (greeting, option haggling, transmission), without TLS and without
/// splicing, until the client leaves or breaks the protocol.
pub async fn serve_stream<S>(mut io: S, exports: &Exports) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let no_zeroes = handshake::greet(&mut io).await?;
    // Multi-conn offered, as with `--shared` above 1: the flag's path too.
    match handshake::options(&mut io, exports, no_zeroes, TlsState::Off, true).await? {
        Step::Go(neg) => {
            // The sender stays alive: no shutdown while the client talks.
            let (stop, stopped) = watch::channel(false);
            let result = transmission::serve(io, None, neg, stopped).await;
            drop(stop);
            result
        }
        Step::StartTls | Step::Left => Ok(()),
    }
}
