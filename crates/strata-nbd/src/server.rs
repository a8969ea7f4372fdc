//! The server: a table of named exports, listeners on a unix socket or
//! TCP, a limit on clients at once, and shutdown. Each connection runs the
//! handshake then transmission on its own task; a failing or misbehaving
//! client ends only its own connection. A client beyond the limit waits to
//! be accepted until a slot frees; one that does not finish its handshake
//! in time is dropped, freeing its slot. Multi-conn is offered only when
//! more than one client may connect at once (as qemu-nbd decides). Without
//! `persistent` the server ends when, once a client has reached
//! transmission, no client is connected. On shutdown no new
//! client is taken, each connection stops reading requests, lets those in
//! flight finish and flushes; then the exports are dropped (releasing
//! whatever they hold, such as image locks).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::export::Export;
use crate::handshake::{greet, options, Negotiated, Step, TlsState};
use crate::tls::{Stream, Tls};
use crate::transmission;

/// The exports a server offers, by name (`""` is the default: the export
/// named so, or else the first).
#[derive(Clone, Default)]
pub struct Exports {
    list: Vec<(String, Arc<dyn Export>)>,
}

impl Exports {
    /// No exports yet.
    pub fn new() -> Exports {
        Exports::default()
    }

    /// Adds `export` as `name`.
    pub fn add(&mut self, name: impl Into<String>, export: Arc<dyn Export>) {
        self.list.push((name.into(), export));
    }

    /// The export a client names.
    pub fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.list
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| self.list.first().filter(|_| name.is_empty()))
            .map(|(_, e)| e.clone())
    }

    /// Every export, in order.
    pub fn all(&self) -> impl Iterator<Item = &(String, Arc<dyn Export>)> {
        self.list.iter()
    }
}

/// How long a client may take to finish its handshake by default (as
/// qemu-nbd's `--handshake-limit`).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Clients connected at once (further ones wait to be accepted); 0
    /// means no limit. Multi-conn is advertised unless this is 1.
    pub max_clients: usize,
    /// Keep serving after the last client leaves.
    pub persistent: bool,
    /// Require TLS with these credentials (`None`: plain, STARTTLS
    /// refused).
    pub tls: Option<Tls>,
    /// Drop a client that has not finished its handshake (TLS included)
    /// within this time; `None`: no limit.
    pub handshake_limit: Option<Duration>,
}

impl Config {
    /// True when several clients may be connected at once, so that
    /// `NBD_FLAG_CAN_MULTI_CONN` may be offered.
    pub fn multi_conn(&self) -> bool {
        self.max_clients != 1
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_clients: 1,
            persistent: false,
            tls: None,
            handshake_limit: Some(HANDSHAKE_LIMIT),
        }
    }
}

/// Where the server listens.
pub enum Listener {
    /// A unix socket.
    Unix(UnixListener),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds a unix socket at `path` (mode 0600); a stale socket file
    /// (nobody answers on it) is replaced.
    pub fn unix(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        let l = match UnixListener::bind(path) {
            // A socket nobody answers on is a dead server's: replaced.
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::os::unix::net::UnixStream::connect(path).is_err() =>
            {
                std::fs::remove_file(path)?;
                UnixListener::bind(path)?
            }
            r => r?,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener::Unix(l))
    }
}

/// Raises this process's soft limit on open files to its hard limit: each
/// connection may hold up to a hundred pipes (two descriptors each) for
/// replies in flight. Failure leaves the limit as it was (replies are then
/// copied when pipes run out).
pub fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Serves `exports` on `listener` until `shutdown` completes (or, without
/// `persistent`, until no client is connected after one that reached
/// transmission has left).
pub async fn serve(
    exports: Exports,
    listener: Listener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let exports = Arc::new(exports);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = match config.max_clients {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    };
    let slots = Arc::new(Semaphore::new(limit));
    // Connections open now, and whether any reached transmission: without
    // `persistent` the server ends when, after one did, none is open (each
    // connection says when it leaves; the count is read here, where
    // connections are accepted, so none can slip in after the check).
    let open = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicBool::new(false));
    let (left_tx, mut left_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Every connection reads the server's settings.
    let config = Arc::new(config);
    let over = || served.load(Ordering::SeqCst) && open.load(Ordering::SeqCst) == 0;
    let mut tasks = tokio::task::JoinSet::new();
    // Numbers clients in the order they connect, for their log span.
    let mut client: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        // Finished connections' tasks are collected as we go.
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
            _ = left_rx.recv(), if !config.persistent => {
                if over() { break } else { continue }
            }
        };
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = &mut shutdown => break,
            _ = left_rx.recv(), if !config.persistent => {
                if over() { break } else { continue }
            }
        };
        let (stream, fd) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        open.fetch_add(1, Ordering::SeqCst);
        let (exports, stop, left) = (exports.clone(), stop_rx.clone(), left_tx.clone());
        let (config, open, served) = (config.clone(), open.clone(), served.clone());
        client += 1;
        let span = tracing::info_span!("nbd_client", client);
        tasks.spawn(
            async move {
                let _permit = permit;
                tracing::debug!("connected");
                match connection(stream, fd, &exports, &config, stop, &served).await {
                    Ok(()) => tracing::debug!("disconnected"),
                    Err(e) => tracing::info!(error = %e, "connection ended"),
                }
                open.fetch_sub(1, Ordering::SeqCst);
                let _ = left.send(());
            }
            .instrument(span),
        );
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The send buffer asked for each unix-socket connection: room for a few
/// large read replies, so that one goes out in one write rather than in
/// pieces, each after a wake-up (the default is about 200 KiB, less than
/// one 256 KiB read; the system caps it at `net.core.wmem_max`). TCP
/// sizes its buffers itself.
const SEND_BUFFER: libc::c_int = 2 << 20;

/// Asks for [`SEND_BUFFER`] on socket `fd` (best effort: a smaller
/// buffer only costs more wake-ups).
fn widen_send_buffer(fd: RawFd) {
    let size = SEND_BUFFER;
    // SAFETY: setsockopt reads one c_int from a live local for an open
    // socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot widen the send buffer");
    }
}

/// The next client: its stream, and the socket's descriptor (which lives
/// as long as the stream).
async fn accept(l: &Listener) -> std::io::Result<(Box<dyn Stream>, RawFd)> {
    Ok(match l {
        Listener::Unix(u) => {
            let s = u.accept().await?.0;
            let fd = s.as_raw_fd();
            widen_send_buffer(fd);
            (Box::new(s), fd)
        }
        Listener::Tcp(t) => {
            let (s, _) = t.accept().await?;
            s.set_nodelay(true)?;
            let fd = s.as_raw_fd();
            (Box::new(s), fd)
        }
    })
}

/// One client: the handshake (within the server's limit, and given up if
/// the server stops meanwhile), then transmission; `served` is set when it
/// gets that far.
async fn connection(
    stream: Box<dyn Stream>,
    fd: RawFd,
    exports: &Exports,
    config: &Config,
    stop: watch::Receiver<bool>,
    served: &AtomicBool,
) -> crate::Result<()> {
    let shake = async {
        let shake = handshake(stream, fd, exports, config);
        match config.handshake_limit {
            Some(limit) => tokio::time::timeout(limit, shake).await.map_err(|_| {
                crate::Error::protocol(format!(
                    "handshake not finished within {} s",
                    limit.as_secs_f64()
                ))
            })?,
            None => shake.await,
        }
    };
    let mut stopping = stop.clone();
    let chosen = tokio::select! {
        c = shake => c?,
        _ = stopping.wait_for(|s| *s) => return Ok(()),
    };
    let Some((stream, fd, neg)) = chosen else {
        return Ok(());
    };
    served.store(true, Ordering::SeqCst);
    transmission::serve(stream, fd, neg, stop).await
}

/// A negotiated stream, ready for transmission: the stream, the socket to
/// splice into (none under TLS) and what was agreed.
type Chosen = (Box<dyn Stream>, Option<RawFd>, Negotiated);

/// The handshake, through STARTTLS when the server requires TLS; `None`
/// when the client left without choosing an export.
async fn handshake(
    mut stream: Box<dyn Stream>,
    fd: RawFd,
    exports: &Exports,
    config: &Config,
) -> crate::Result<Option<Chosen>> {
    let no_zeroes = greet(&mut stream).await?;
    let state = if config.tls.is_some() {
        TlsState::Required
    } else {
        TlsState::Off
    };
    let multi = config.multi_conn();
    match options(&mut stream, exports, no_zeroes, state, multi).await? {
        Step::Go(neg) => Ok(Some((stream, Some(fd), neg))),
        Step::Left => Ok(None),
        Step::StartTls => {
            let Some(tls) = &config.tls else {
                return Err(crate::Error::protocol("STARTTLS without TLS"));
            };
            let mut secure = tls.accept(stream).await?;
            match options(&mut secure, exports, no_zeroes, TlsState::Done, multi).await? {
                // Spliced replies would bypass TLS.
                Step::Go(neg) => Ok(Some((secure, None, neg))),
                _ => Ok(None),
            }
        }
    }
}
