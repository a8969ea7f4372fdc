//! The API server: HTTP/1.1 (hyper) over the unix socket, one task and one
//! tracing span per connection (with the peer's pid and uid), the axum
//! router as the service. Only the socket's owner (or root) may talk to it:
//! the socket is 0600 and peers with another uid are dropped. On stop, no
//! new connection is accepted and open ones get a few seconds to finish.

pub mod socket;

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tracing::Instrument;

/// How long open connections get to finish once the server stops.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` completes.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut next_id: u64 = 0;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        next_id += 1;
        let cred = stream.peer_cred().ok();
        let uid = cred.map(|c| c.uid());
        let pid = cred.and_then(|c| c.pid());
        let span = tracing::info_span!("conn", id = next_id, peer_pid = pid, peer_uid = uid);
        if uid.is_some_and(|u| u != me && u != 0) {
            span.in_scope(|| tracing::warn!("refused: another user"));
            continue;
        }
        let service = TowerToHyperService::new(router.clone());
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                tracing::debug!("connected");
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s; closing them",
            DRAIN.as_secs()
        );
    }
}
