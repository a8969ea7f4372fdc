//! The fixed newstyle handshake: the greeting, then option haggling until
//! the client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or
//! leaves. Every option a client can send is answered as the protocol
//! says, and anything malformed gets an error reply or, where the protocol
//! leaves no other way, ends the connection.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::export::Export;
use crate::proto::{self, info, opt, rep, tflag};
use crate::server::Exports;

/// Largest option payload read; longer ones end the connection.
const MAX_OPTION: u32 = 64 << 10;
/// Longest string (export name, context query) the protocol allows.
const MAX_STRING: usize = 4096;

/// What the handshake settled.
pub(crate) struct Negotiated {
    /// The export chosen.
    pub export: Arc<dyn Export>,
    /// Its name.
    pub name: String,
    /// The reply headers negotiated.
    pub headers: Headers,
    /// Selected metadata contexts: `(id, name)`.
    pub contexts: Vec<(u32, String)>,
}

/// The message headers of the transmission phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Headers {
    /// Compact requests, simple replies.
    #[default]
    Simple,
    /// Compact requests, structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    Structured,
    /// 32-byte extended requests and replies (`NBD_OPT_EXTENDED_HEADERS`).
    Extended,
}

impl Headers {
    /// Replies may carry chunks (structured or extended).
    pub fn chunked(self) -> bool {
        self != Headers::Simple
    }
}

/// Option-haggling state.
#[derive(Default)]
struct State {
    no_zeroes: bool,
    /// More than one client may connect at once.
    multi_conn: bool,
    headers: Headers,
    /// Contexts selected, and for which export.
    meta: Option<(String, Vec<(u32, String)>)>,
}

/// Where TLS stands in a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsState {
    /// The server has no TLS: STARTTLS is refused.
    Off,
    /// TLS is required and not started: only STARTTLS and ABORT go.
    Required,
    /// The session runs over TLS.
    Done,
}

/// How option haggling ended.
pub(crate) enum Step {
    /// An export was chosen: transmission follows.
    Go(Negotiated),
    /// STARTTLS was acknowledged: the TLS handshake follows, then option
    /// haggling starts over on the TLS stream.
    StartTls,
    /// The client left without choosing an export.
    Left,
}

/// Sends the greeting and reads the client's flags; returns whether the
/// client asked for no zeroes.
pub(crate) async fn greet<S>(io: &mut S) -> Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&hello).await?;
    io.flush().await?;
    let client = io.read_u32().await?;
    if client & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Err(Error::protocol(format!("unknown client flags {client:#x}")));
    }
    Ok(client & proto::FLAG_C_NO_ZEROES != 0)
}

/// Option haggling on `io` until an export is chosen, TLS starts or the
/// client leaves. Everything negotiated before STARTTLS is forgotten.
/// `multi_conn`: the server takes more than one client at once, so exports
/// that can may offer multi-conn.
pub(crate) async fn options<S>(
    io: &mut S,
    exports: &Exports,
    no_zeroes: bool,
    tls: TlsState,
    multi_conn: bool,
) -> Result<Step>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut st = State {
        no_zeroes,
        multi_conn,
        ..Default::default()
    };
    loop {
        let magic = io.read_u64().await?;
        if magic != proto::IHAVEOPT {
            return Err(Error::protocol(format!("option magic {magic:#x}")));
        }
        let option = io.read_u32().await?;
        let len = io.read_u32().await?;
        if len > MAX_OPTION {
            return Err(Error::protocol(format!(
                "option {option} carries {len} bytes"
            )));
        }
        let mut data = vec![0u8; len as usize];
        io.read_exact(&mut data).await?;
        if tls == TlsState::Required && !matches!(option, opt::STARTTLS | opt::ABORT) {
            if option == opt::EXPORT_NAME {
                return Err(Error::protocol("EXPORT_NAME before STARTTLS"));
            }
            error(io, option, rep::ERR_TLS_REQD, "this server requires TLS").await?;
            continue;
        }
        match option {
            opt::EXPORT_NAME => {
                if st.headers == Headers::Extended {
                    // The client must not; there is no way to say so.
                    return Err(Error::protocol(
                        "EXPORT_NAME after extended headers were negotiated",
                    ));
                }
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some(export) = exports.find(&name) else {
                    // No way to report an error: the session ends.
                    return Err(Error::protocol(format!("no export named '{name}'")));
                };
                let flags = transmission_flags(export.as_ref(), &st, &name);
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&export.size().to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                if !st.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                io.write_all(&out).await?;
                io.flush().await?;
                return Ok(Step::Go(chosen(export, name, &st)));
            }
            opt::ABORT => {
                reply(io, option, rep::ACK, &[]).await?;
                return Ok(Step::Left);
            }
            opt::LIST => {
                if !data.is_empty() {
                    error(io, option, rep::ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                for (name, export) in exports.all() {
                    let mut d = Vec::new();
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    if let Some(desc) = export.description() {
                        d.extend_from_slice(desc.as_bytes());
                    }
                    reply(io, option, rep::SERVER, &d).await?;
                }
                reply(io, option, rep::ACK, &[]).await?;
            }
            opt::STARTTLS => {
                let refusal = match tls {
                    _ if !data.is_empty() => Some((rep::ERR_INVALID, "STARTTLS takes no data")),
                    TlsState::Off => Some((rep::ERR_POLICY, "this server has no TLS configured")),
                    TlsState::Done => Some((rep::ERR_INVALID, "TLS is already started")),
                    TlsState::Required => None,
                };
                match refusal {
                    Some((kind, message)) => error(io, option, kind, message).await?,
                    None => {
                        reply(io, option, rep::ACK, &[]).await?;
                        return Ok(Step::StartTls);
                    }
                }
            }
            opt::INFO | opt::GO => {
                let Some((name, requests)) = parse_info(&data) else {
                    error(io, option, rep::ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                let Some(export) = exports.find(&name) else {
                    error(
                        io,
                        option,
                        rep::ERR_UNKNOWN,
                        &format!("no export named '{name}'"),
                    )
                    .await?;
                    continue;
                };
                let flags = transmission_flags(export.as_ref(), &st, &name);
                let mut e = Vec::with_capacity(12);
                e.extend_from_slice(&info::EXPORT.to_be_bytes());
                e.extend_from_slice(&export.size().to_be_bytes());
                e.extend_from_slice(&flags.to_be_bytes());
                reply(io, option, rep::INFO, &e).await?;
                if requests.contains(&info::NAME) {
                    let mut d = info::NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    reply(io, option, rep::INFO, &d).await?;
                }
                if requests.contains(&info::DESCRIPTION) {
                    if let Some(desc) = export.description() {
                        let mut d = info::DESCRIPTION.to_be_bytes().to_vec();
                        d.extend_from_slice(desc.as_bytes());
                        reply(io, option, rep::INFO, &d).await?;
                    }
                }
                // Always: the constraints are what the server enforces.
                let b = export.block_sizes();
                let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
                d.extend_from_slice(&b.minimum.to_be_bytes());
                d.extend_from_slice(&b.preferred.to_be_bytes());
                d.extend_from_slice(&b.maximum.to_be_bytes());
                reply(io, option, rep::INFO, &d).await?;
                reply(io, option, rep::ACK, &[]).await?;
                if option == opt::GO {
                    return Ok(Step::Go(chosen(export, name, &st)));
                }
            }
            opt::STRUCTURED_REPLY | opt::EXTENDED_HEADERS => {
                let extended = option == opt::EXTENDED_HEADERS;
                let refusal = if !data.is_empty() {
                    Some((rep::ERR_INVALID, "the option takes no data"))
                } else if st.headers == Headers::Extended && !extended {
                    Some((
                        rep::ERR_EXT_HEADER_REQD,
                        "extended headers are already negotiated",
                    ))
                } else if st.headers == Headers::Extended
                    || (st.headers == Headers::Structured && !extended)
                {
                    Some((rep::ERR_INVALID, "already negotiated"))
                } else {
                    None
                };
                match refusal {
                    Some((kind, message)) => error(io, option, kind, message).await?,
                    None => {
                        st.headers = if extended {
                            Headers::Extended
                        } else {
                            Headers::Structured
                        };
                        reply(io, option, rep::ACK, &[]).await?;
                    }
                }
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                meta_context(io, option, &data, exports, &mut st).await?;
            }
            _ => {
                error(
                    io,
                    option,
                    rep::ERR_UNSUP,
                    &format!("option {option} is not supported"),
                )
                .await?;
            }
        }
    }
}

fn chosen(export: Arc<dyn Export>, name: String, st: &State) -> Negotiated {
    // Contexts count only if they were selected for this export.
    let contexts = match &st.meta {
        Some((n, c)) if *n == name => c.clone(),
        _ => Vec::new(),
    };
    tracing::debug!(
        export = %name,
        headers = ?st.headers,
        contexts = ?contexts,
        "transmission"
    );
    Negotiated {
        export,
        name,
        headers: st.headers,
        contexts,
    }
}

/// The transmission flags of `export` (named `name`) for this client.
fn transmission_flags(export: &dyn Export, st: &State, name: &str) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_CACHE;
    if export.read_only() {
        f |= tflag::READ_ONLY;
    } else {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO;
    }
    if st.multi_conn && export.multi_conn() {
        f |= tflag::CAN_MULTI_CONN;
    }
    if st.headers.chunked() {
        f |= tflag::SEND_DF;
    }
    // Block status filtered by context ids: with extended headers, and
    // only when contexts were selected for this export.
    let selected = matches!(&st.meta, Some((n, c)) if n == name && !c.is_empty());
    if st.headers == Headers::Extended && selected {
        f |= tflag::BLOCK_STAT_PAYLOAD;
    }
    f
}

/// Reads a 32-bit length and that many bytes of string at `*at`.
fn take_string(data: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    *at += 4;
    if len > MAX_STRING {
        return None;
    }
    let s = data.get(*at..*at + len)?;
    *at += len;
    String::from_utf8(s.to_vec()).ok()
}

/// The export name and information requests of INFO/GO.
pub(crate) fn parse_info(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut at = 0;
    let name = take_string(data, &mut at)?;
    let n = u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    if data.len() != at + 2 * n {
        return None;
    }
    let requests = (0..n)
        .map(|i| u16::from_be_bytes([data[at + 2 * i], data[at + 2 * i + 1]]))
        .collect();
    Some((name, requests))
}

/// The export name and queries of LIST/SET_META_CONTEXT.
pub(crate) fn parse_meta_context(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut at = 0;
    let name = take_string(data, &mut at)?;
    let n = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(take_string(data, &mut at)?);
    }
    (at == data.len()).then_some((name, queries))
}

/// LIST_META_CONTEXT and SET_META_CONTEXT.
async fn meta_context<S>(
    io: &mut S,
    option: u32,
    data: &[u8],
    exports: &Exports,
    st: &mut State,
) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    let set = option == opt::SET_META_CONTEXT;
    if set {
        // Replaces the selection even when it fails.
        st.meta = None;
    }
    if !st.headers.chunked() {
        return error(
            io,
            option,
            rep::ERR_INVALID,
            "negotiate structured replies first",
        )
        .await;
    }
    let Some((name, queries)) = parse_meta_context(data) else {
        return error(
            io,
            option,
            rep::ERR_INVALID,
            "malformed metadata context request",
        )
        .await;
    };
    let Some(export) = exports.find(&name) else {
        return error(
            io,
            option,
            rep::ERR_UNKNOWN,
            &format!("no export named '{name}'"),
        )
        .await;
    };
    let available = export.contexts();
    let mut chosen: Vec<String> = Vec::new();
    if queries.is_empty() {
        if !set {
            chosen = available.clone();
        }
    } else {
        for q in &queries {
            if !q.contains(':') {
                return error(
                    io,
                    option,
                    rep::ERR_INVALID,
                    &format!("query '{q}' has no namespace"),
                )
                .await;
            }
            for c in &available {
                let hit = if set {
                    c == q
                } else {
                    // LIST: a namespace (or namespace prefix ending in ':')
                    // lists everything under it.
                    c == q || (q.ends_with(':') && c.starts_with(q.as_str()))
                };
                if hit && !chosen.contains(c) {
                    chosen.push(c.clone());
                }
            }
        }
    }
    let mut selected = Vec::new();
    for (i, c) in chosen.iter().enumerate() {
        let id = if set { i as u32 + 1 } else { 0 };
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(c.as_bytes());
        reply(io, option, rep::META_CONTEXT, &d).await?;
        selected.push((id, c.clone()));
    }
    if set {
        st.meta = Some((name, selected));
    }
    reply(io, option, rep::ACK, &[]).await
}

/// Sends one option reply.
async fn reply<S>(io: &mut S, option: u32, kind: u32, data: &[u8]) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&proto::REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Sends an error reply with a message for humans.
async fn error<S>(io: &mut S, option: u32, kind: u32, message: &str) -> Result<()>
where
    S: AsyncWrite + Unpin,
{
    tracing::debug!("option {option}: {message}");
    reply(io, option, kind, message.as_bytes()).await
}
