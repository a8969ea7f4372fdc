//! The HTTP/JSON API: routes, their handlers and error answers. The
//! routes are documented by `docs/api/openapi.yaml` (served at
//! `GET /v1/openapi.yaml`); [`ROUTES`] lists them and a test checks that
//! the document and the router agree.

pub mod error;
pub mod handlers;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tracing::Instrument;

use crate::lifecycle::Service;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../../docs/api/openapi.yaml");

/// Every route: method and path (axum's `{name}` syntax, as OpenAPI's).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/daemon"),
    ("GET", "/v1/openapi.yaml"),
    ("GET", "/v1/domains"),
    ("GET", "/v1/domains/{name}"),
    ("GET", "/v1/domains/{name}/state"),
    ("POST", "/v1/domains/{name}/start"),
    ("POST", "/v1/domains/{name}/shutdown"),
    ("POST", "/v1/domains/{name}/destroy"),
    ("POST", "/v1/domains/{name}/suspend"),
    ("POST", "/v1/domains/{name}/resume"),
    ("POST", "/v1/domains/{name}/save"),
    ("POST", "/v1/restore"),
    ("POST", "/v1/domains/{name}/snapshots"),
    ("DELETE", "/v1/domains/{name}/snapshots/{snapshot}"),
    ("POST", "/v1/domains/{name}/checkpoints"),
    ("GET", "/v1/domains/{name}/checkpoints/health"),
    ("POST", "/v1/domains/{name}/backup"),
    ("POST", "/v1/domains/{name}/repo-backup"),
    ("POST", "/v1/domains/{name}/blockjobs"),
    ("GET", "/v1/domains/{name}/blockjobs/{disk}"),
    ("POST", "/v1/domains/{name}/blockjobs/{disk}/abort"),
    ("POST", "/v1/domains/{name}/blockjobs/{disk}/pivot"),
];

/// `value` as a JSON answer with `status`.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"error\":\"encoding the answer: {e}\",\"code\":\"internal\"}}"),
        )
            .into_response(),
    }
}

/// The router of the API over `svc`.
pub fn router(svc: Arc<Service>) -> Router {
    use handlers as h;
    Router::new()
        .route("/v1/daemon", get(h::daemon))
        .route("/v1/openapi.yaml", get(h::openapi))
        .route("/v1/domains", get(h::list))
        .route("/v1/domains/{name}", get(h::get))
        .route("/v1/domains/{name}/state", get(h::state))
        .route("/v1/domains/{name}/start", post(h::start))
        .route("/v1/domains/{name}/shutdown", post(h::shutdown))
        .route("/v1/domains/{name}/destroy", post(h::destroy))
        .route("/v1/domains/{name}/suspend", post(h::suspend))
        .route("/v1/domains/{name}/resume", post(h::resume))
        .route("/v1/domains/{name}/save", post(h::save))
        .route("/v1/restore", post(h::restore))
        .route("/v1/domains/{name}/snapshots", post(h::snapshot_create))
        .route(
            "/v1/domains/{name}/snapshots/{snapshot}",
            delete(h::snapshot_delete),
        )
        .route("/v1/domains/{name}/checkpoints", post(h::checkpoint_create))
        .route(
            "/v1/domains/{name}/checkpoints/health",
            get(h::checkpoint_health),
        )
        .route("/v1/domains/{name}/backup", post(h::backup_begin))
        .route("/v1/domains/{name}/repo-backup", post(h::repo_backup))
        .route("/v1/domains/{name}/blockjobs", post(h::block_job_begin))
        .route(
            "/v1/domains/{name}/blockjobs/{disk}",
            get(h::block_job_info),
        )
        .route(
            "/v1/domains/{name}/blockjobs/{disk}/abort",
            post(h::block_job_abort),
        )
        .route(
            "/v1/domains/{name}/blockjobs/{disk}/pivot",
            post(h::block_job_pivot),
        )
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(svc)
}

/// A span per request, and a line with its status and time.
async fn log_request(req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let t = Instant::now();
        let resp = next.run(req).await;
        tracing::info!(
            status = resp.status().as_u16(),
            ms = t.elapsed().as_millis() as u64,
            "answered"
        );
        resp
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::collections::BTreeSet;
    use tower::ServiceExt;

    /// `(METHOD, path)` of every operation in the OpenAPI document.
    fn documented() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut path = None;
        let mut in_paths = false;
        for line in OPENAPI.lines() {
            if !line.starts_with(' ') {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(format!("/{p}"));
            } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
                if ["get", "post", "put", "delete", "patch"].contains(&m) {
                    out.insert((m.to_uppercase(), path.clone().expect("a path first")));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_lists_exactly_the_routes() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented(), routes);
    }

    #[tokio::test]
    async fn every_route_is_routed_and_the_rest_answer_json_errors() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(Service::new(
            dir.path().to_path_buf(),
            Arc::new(strata_qemu::QemuHypervisor::new()),
            Default::default(),
        ));
        let app = router(svc);
        let call = |method: &str, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
        for (m, p) in ROUTES {
            let path = p.replace("{name}", "nope").replace("{disk}", "vda");
            let resp = call(m, &path).await.unwrap();
            let code = resp.status().as_u16();
            if *p == "/v1/restore" {
                // No domain in the path; the file is required.
                assert_eq!(code, 400, "{m} {p}");
                continue;
            }
            // Unknown domain: 404 from the handler, never "no route".
            assert!(code == 200 || code == 404, "{m} {p}: {code}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            if code == 404 {
                let e: crate::types::ErrorBody = serde_json::from_slice(&body).unwrap();
                assert_eq!(e.code, "no-domain", "{m} {p}");
            }
        }
        for (m, p, status, code) in [
            ("GET", "/v1/nothing", 404, "not-found"),
            ("DELETE", "/v1/domains", 405, "method-not-allowed"),
            ("GET", "/v1/domains/x/start", 405, "method-not-allowed"),
        ] {
            let resp = call(m, p).await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{m} {p}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let e: crate::types::ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(e.code, code);
        }
    }
}
