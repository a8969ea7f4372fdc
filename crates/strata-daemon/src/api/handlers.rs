//! The route handlers: each extracts the domain name and body, asks the
//! [`Service`], and answers JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use strata_core::checkpoint::CheckpointRequest;
use strata_core::snapshot::create::CreateRequest;
use strata_core::snapshot::delete::DeleteRequest;

use super::error::ApiError;
use super::json;
use crate::lifecycle::Service;
use crate::types::{
    BackupRequest, BlockJobRequest, DaemonInfo, RepoBackupRequest, RestoreRequest, SaveRequest,
    ShutdownRequest, StartRequest, DEFAULT_SHUTDOWN_TIMEOUT,
};

/// The handlers' state.
pub type Svc = State<Arc<Service>>;

/// A result of a handler.
pub type Answer = Result<Response, ApiError>;

/// The domain name of the path.
fn name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(n)| n)
        .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))
}

/// A JSON body; an empty one means the defaults.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid JSON body: {e}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid JSON body: not an object"));
    }
    serde_json::from_value(value).map_err(bad)
}

fn ok<T: serde::Serialize>(v: &T) -> Answer {
    Ok(json(StatusCode::OK, v))
}

/// `GET /v1/domains`.
pub async fn list(State(svc): Svc) -> Answer {
    ok(&svc.list().await?)
}

/// `GET /v1/domains/{name}`.
pub async fn get(State(svc): Svc, p: Result<Path<String>, PathRejection>) -> Answer {
    ok(&svc.info(&name(p)?).await?)
}

/// `GET /v1/domains/{name}/state`.
pub async fn state(State(svc): Svc, p: Result<Path<String>, PathRejection>) -> Answer {
    ok(&svc.state(&name(p)?).await?)
}

/// `POST /v1/domains/{name}/start`.
pub async fn start(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    let req: StartRequest = body(&b)?;
    match &req.memory_of {
        Some(snapshot) => ok(&svc.start_from_snapshot(&name, snapshot, req.paused).await?),
        None => ok(&svc.start_with(&name, req.paused, req.force_boot).await?),
    }
}

/// `POST /v1/domains/{name}/shutdown`.
pub async fn shutdown(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    let req: ShutdownRequest = body(&b)?;
    let timeout = req.timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    ok(&svc.shutdown(&name, timeout).await?)
}

/// A POST without a body of its own: it must be empty or `{}`.
fn no_body(b: &Bytes) -> Result<(), ApiError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    body::<Empty>(b).map(|_| ())
}

/// `POST /v1/domains/{name}/destroy`.
pub async fn destroy(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    no_body(&b)?;
    ok(&svc.destroy(&name).await?)
}

/// `POST /v1/domains/{name}/suspend`.
pub async fn suspend(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    no_body(&b)?;
    ok(&svc.suspend(&name).await?)
}

/// `POST /v1/domains/{name}/resume`.
pub async fn resume(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    no_body(&b)?;
    ok(&svc.resume(&name).await?)
}

/// An absolute file named in a request body.
fn absolute_file(file: &std::path::Path) -> Result<(), ApiError> {
    if file.is_absolute() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "file '{}': an absolute path is required",
            file.display()
        )))
    }
}

/// `POST /v1/domains/{name}/save`.
pub async fn save(State(svc): Svc, p: Result<Path<String>, PathRejection>, b: Bytes) -> Answer {
    let name = name(p)?;
    // An unknown domain is that, whatever the body.
    svc.info(&name).await?;
    let req: SaveRequest = body(&b)?;
    absolute_file(&req.file)?;
    ok(&svc.save(&name, &req.file, req.paused).await?)
}

/// `POST /v1/restore`.
pub async fn restore(State(svc): Svc, b: Bytes) -> Answer {
    let req: RestoreRequest = body(&b)?;
    absolute_file(&req.file)?;
    ok(&svc.restore(&req.file, req.paused).await?)
}

/// `POST /v1/domains/{name}/snapshots`: a disk-only snapshot of a running
/// domain.
pub async fn snapshot_create(
    State(svc): Svc,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> Answer {
    let name = name(p)?;
    let req: CreateRequest = body(&b)?;
    ok(&svc.snapshot_create(&name, req).await?)
}

/// `DELETE /v1/domains/{name}/snapshots/{snapshot}`: deletes a snapshot
/// of a running domain (optional body: what else to delete).
pub async fn snapshot_delete(
    State(svc): Svc,
    p: Result<Path<(String, String)>, PathRejection>,
    b: Bytes,
) -> Answer {
    let (name, snapshot) = p
        .map(|Path(n)| n)
        .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))?;
    let req: DeleteRequest = body(&b)?;
    ok(&svc.snapshot_delete(&name, &snapshot, req).await?)
}

/// `POST /v1/domains/{name}/backup`: a backup of a running domain.
pub async fn backup_begin(
    State(svc): Svc,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> Answer {
    let name = name(p)?;
    let req: BackupRequest = body(&b)?;
    ok(&svc.backup_begin(&name, req).await?)
}

/// `POST /v1/domains/{name}/repo-backup`: a backup of a running domain
/// into a repository; answers once it is made.
pub async fn repo_backup(
    State(svc): Svc,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> Answer {
    let name = name(p)?;
    let req: RepoBackupRequest = body(&b)?;
    ok(&svc.repo_backup(&name, req).await?)
}

/// `POST /v1/domains/{name}/blockjobs`: a block job on a running domain.
pub async fn block_job_begin(
    State(svc): Svc,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> Answer {
    let name = name(p)?;
    let req: BlockJobRequest = body(&b)?;
    ok(&svc.block_job_begin(&name, req).await?)
}

/// The domain name and disk of the path.
fn name_disk(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    p.map(|Path(n)| n)
        .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))
}

/// `GET /v1/domains/{name}/blockjobs/{disk}`.
pub async fn block_job_info(
    State(svc): Svc,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (name, disk) = name_disk(p)?;
    ok(&svc.block_job_info(&name, &disk).await?)
}

/// `POST /v1/domains/{name}/blockjobs/{disk}/abort`.
pub async fn block_job_abort(
    State(svc): Svc,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (name, disk) = name_disk(p)?;
    ok(&svc.block_job_abort(&name, &disk).await?)
}

/// `POST /v1/domains/{name}/blockjobs/{disk}/pivot`.
pub async fn block_job_pivot(
    State(svc): Svc,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (name, disk) = name_disk(p)?;
    ok(&svc.block_job_pivot(&name, &disk).await?)
}

/// `POST /v1/domains/{name}/checkpoints`: a checkpoint of a running domain.
pub async fn checkpoint_create(
    State(svc): Svc,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> Answer {
    let name = name(p)?;
    let req: CheckpointRequest = body(&b)?;
    ok(&svc.checkpoint_create(&name, req).await?)
}

/// `GET /v1/domains/{name}/checkpoints/health`: every checkpoint's
/// health, per disk, of a running domain.
pub async fn checkpoint_health(State(svc): Svc, p: Result<Path<String>, PathRejection>) -> Answer {
    let name = name(p)?;
    ok(&svc.checkpoint_health(&name).await?)
}

/// `GET /v1/daemon`.
pub async fn daemon(State(svc): Svc) -> Answer {
    ok(&DaemonInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        state_dir: svc.state_dir().display().to_string(),
        stopping: svc.is_stopping(),
    })
}

/// `GET /v1/openapi.yaml`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], super::OPENAPI).into_response()
}

/// Any path no route has.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no route {method} {}", uri.path()),
    )
}

/// A route asked with a method it does not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} does not take {method}", uri.path()),
    )
}
