//! The server: a table of named exports, listeners on a unix socket or
//! TCP, a limit on clients at once, and shutdown. Each connection runs the
//! handshake then transmission on its own task; a failing or misbehaving
//! client ends only its own connection. Without `persistent` the server
//! ends when its first client leaves (as qemu-nbd does). On shutdown no new
//! client is taken, each connection stops reading requests, lets those in
//! flight finish and flushes; then the exports are dropped (releasing
//! whatever they hold, such as image locks).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::export::Export;
use crate::handshake::{greet, options, Step, TlsState};
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

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Clients served at once (further ones wait to be accepted).
    pub max_clients: usize,
    /// Keep serving after the first client leaves.
    pub persistent: bool,
    /// Require TLS with these credentials (`None`: plain, STARTTLS
    /// refused).
    pub tls: Option<Tls>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_clients: 1,
            persistent: false,
            tls: None,
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
    /// Binds a unix socket at `path` (mode 0600).
    pub fn unix(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        let l = UnixListener::bind(path)?;
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
/// `persistent`, until the first client leaves).
pub async fn serve(
    exports: Exports,
    listener: Listener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let exports = Arc::new(exports);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.max_clients.max(1)));
    let (left_tx, mut left_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
            _ = left_rx.recv(), if !config.persistent => break,
        };
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = &mut shutdown => break,
            _ = left_rx.recv(), if !config.persistent => break,
        };
        let (stream, fd) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: pause rather than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (exports, stop, left) = (exports.clone(), stop_rx.clone(), left_tx.clone());
        let tls = config.tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, fd, &exports, tls.as_ref(), stop).await {
                tracing::info!("client: {e}");
            }
            let _ = left.send(());
        });
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The next client: its stream, and the socket's descriptor (which lives
/// as long as the stream).
async fn accept(l: &Listener) -> std::io::Result<(Box<dyn Stream>, RawFd)> {
    Ok(match l {
        Listener::Unix(u) => {
            let s = u.accept().await?.0;
            let fd = s.as_raw_fd();
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

async fn connection(
    mut stream: Box<dyn Stream>,
    fd: RawFd,
    exports: &Exports,
    tls: Option<&Tls>,
    stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let no_zeroes = greet(&mut stream).await?;
    let state = if tls.is_some() {
        TlsState::Required
    } else {
        TlsState::Off
    };
    match options(&mut stream, exports, no_zeroes, state).await? {
        Step::Go(neg) => transmission::serve(stream, Some(fd), neg, stop).await,
        Step::Left => Ok(()),
        Step::StartTls => {
            let Some(tls) = tls else {
                return Err(crate::Error::protocol("STARTTLS without TLS"));
            };
            let mut secure = tls.accept(stream).await?;
            match options(&mut secure, exports, no_zeroes, TlsState::Done).await? {
                // Spliced replies would bypass TLS.
                Step::Go(neg) => transmission::serve(secure, None, neg, stop).await,
                _ => Ok(()),
            }
        }
    }
}
