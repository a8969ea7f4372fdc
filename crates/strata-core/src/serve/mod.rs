//! Serving a machine's images over NBD, for every face alike (the CLI's
//! `nbd serve` and pull backups, the daemon's exports): the image→export
//! adapter ([`export`]), where a server listens ([`Endpoint`], loopback
//! unless TLS or an explicit `insecure`), and a server's life from listen
//! to the last export closed ([`serve`], [`serve_until`]).

pub mod export;

use std::net::SocketAddr;
use std::path::PathBuf;

use strata_nbd::{Config, Exports, Listener};

use crate::error::{Error, Result};

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A unix socket (made 0600, removed at the end).
    Unix(PathBuf),
    /// TCP; a non-loopback address needs TLS or `insecure`.
    Tcp {
        /// The address and port.
        addr: SocketAddr,
        /// Serve a non-loopback address without TLS.
        insecure: bool,
    },
}

impl Endpoint {
    /// How the endpoint is named in messages.
    pub fn shown(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix socket {}", path.display()),
            Endpoint::Tcp { addr, .. } => addr.to_string(),
        }
    }

    /// Starts listening; a non-loopback TCP address without TLS is refused
    /// unless `insecure`.
    pub async fn listen(&self, tls: bool) -> Result<Listener> {
        let io = |what: String, source| Error::Io {
            path: PathBuf::from(what),
            op: "listen",
            source,
        };
        match self {
            Endpoint::Unix(path) => {
                Listener::unix(path).map_err(|e| io(path.display().to_string(), e))
            }
            Endpoint::Tcp { addr, insecure } => {
                if !addr.ip().is_loopback() && !insecure && !tls {
                    return Err(Error::invalid(
                        addr.to_string(),
                        "a non-loopback address needs TLS (--tls-creds or --tls-psk); --insecure serves without it",
                    ));
                }
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| io(addr.to_string(), e))?;
                Ok(Listener::Tcp(l))
            }
        }
    }
}

/// Serves `exports` on `endpoint` until `stop(shown)` completes, where
/// `shown` names what is listening (for a message); then every export is
/// closed, which releases its image locks, and a unix socket is removed.
pub async fn serve<F>(
    exports: Exports,
    endpoint: &Endpoint,
    config: Config,
    stop: impl FnOnce(&str) -> F,
) -> Result<()>
where
    F: std::future::Future<Output = ()>,
{
    let served = async {
        let listener = endpoint.listen(config.tls.is_some()).await?;
        let shown = endpoint.shown();
        tracing::info!(endpoint = %shown, "serving NBD");
        strata_nbd::serve(exports, listener, config, stop(&shown))
            .await
            .map_err(|e| Error::invalid(endpoint.shown(), format!("serving: {e}")))
    }
    .await;
    if let Endpoint::Unix(path) = endpoint {
        let _ = std::fs::remove_file(path);
    }
    served
}

/// [`serve`] on a runtime of its own, for callers that have none.
pub fn serve_until<F>(
    exports: Exports,
    endpoint: &Endpoint,
    config: Config,
    stop: impl FnOnce(&str) -> F,
) -> Result<()>
where
    F: std::future::Future<Output = ()>,
{
    strata_nbd::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Exports do I/O down image chains, one call per layer.
        .thread_stack_size(strata_image::chain::CHAIN_STACK)
        .build()
        .map_err(|source| Error::Io {
            path: PathBuf::from("(runtime)"),
            op: "start the I/O runtime",
            source,
        })?;
    rt.block_on(serve(exports, endpoint, config, stop))
}
