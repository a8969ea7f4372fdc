//! A small blocking client of the daemon's API, for the CLI: HTTP/1.1 over
//! the unix socket, one request per connection (`Connection: close`),
//! typed answers, and the API's JSON errors as [`ClientError::Api`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use strata_core::checkpoint::CheckpointRequest;
use strata_core::snapshot::create::CreateRequest;
use strata_core::snapshot::delete::DeleteRequest;
use strata_core::store::Job;

use crate::types::{
    BackupRequest, BlockJobInfo, BlockJobRequest, DaemonInfo, DomainInfo, ErrorBody, Gone, Made,
    RepoBackupMade, RepoBackupRequest, RestoreRequest, SaveInfo, SaveRequest, ShutdownRequest,
    StartRequest, StateInfo,
};

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("no strata daemon answers on {}", socket.display())]
    NoDaemon {
        /// The socket.
        socket: PathBuf,
    },
    /// Talking to the socket failed.
    #[error("{}: {op}: {source}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The answer was not HTTP/JSON as the API sends it.
    #[error("{}: unexpected answer: {detail}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's code (`operation-invalid`, `no-domain`, …).
        code: String,
        /// The message.
        message: String,
    },
}

impl ClientError {
    /// The API's error code, when the daemon answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

/// The answer's status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Client {
    /// A client of the daemon on `socket`; answers are awaited without a
    /// time limit.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: None,
        }
    }

    /// A client of the daemon of `state_dir` (`STATE/strata.sock`).
    pub fn for_state_dir(state_dir: &Path) -> Client {
        Client::new(crate::daemon::default_socket(state_dir))
    }

    /// Gives up on an answer after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's facts; [`ClientError::NoDaemon`] when none answers.
    pub fn daemon(&self) -> Result<DaemonInfo, ClientError> {
        self.call("GET", "/v1/daemon", None)
    }

    /// Every defined domain with its state.
    pub fn domains(&self) -> Result<Vec<DomainInfo>, ClientError> {
        self.call("GET", "/v1/domains", None)
    }

    /// One domain.
    pub fn domain(&self, name: &str) -> Result<DomainInfo, ClientError> {
        self.call("GET", &domain_path(name, ""), None)
    }

    /// One domain's state and reason.
    pub fn state(&self, name: &str) -> Result<StateInfo, ClientError> {
        self.call("GET", &domain_path(name, "/state"), None)
    }

    /// Starts a domain.
    pub fn start(&self, name: &str, paused: bool) -> Result<DomainInfo, ClientError> {
        self.start_with(name, paused, false)
    }

    /// Starts a domain, running or paused: from its managed save if it has
    /// one, unless `force_boot` discards it.
    pub fn start_with(
        &self,
        name: &str,
        paused: bool,
        force_boot: bool,
    ) -> Result<DomainInfo, ClientError> {
        let req = StartRequest {
            paused,
            memory_of: None,
            force_boot,
        };
        let body = serde_json::to_string(&req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/start"), Some(body))
    }

    /// Starts a domain from the memory kept with its snapshot `snapshot`
    /// (its disks reverted to it already), running or paused.
    pub fn start_from_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        paused: bool,
    ) -> Result<DomainInfo, ClientError> {
        let req = StartRequest {
            paused,
            memory_of: Some(snapshot.to_string()),
            force_boot: false,
        };
        let body = serde_json::to_string(&req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/start"), Some(body))
    }

    /// Presses the power button and waits up to `timeout` seconds.
    pub fn shutdown(&self, name: &str, timeout: Option<u64>) -> Result<DomainInfo, ClientError> {
        let body = serde_json::to_string(&ShutdownRequest { timeout }).unwrap_or_default();
        self.call("POST", &domain_path(name, "/shutdown"), Some(body))
    }

    /// Ends a domain now.
    pub fn destroy(&self, name: &str) -> Result<DomainInfo, ClientError> {
        self.call("POST", &domain_path(name, "/destroy"), None)
    }

    /// Stops a domain's vCPUs.
    pub fn suspend(&self, name: &str) -> Result<DomainInfo, ClientError> {
        self.call("POST", &domain_path(name, "/suspend"), None)
    }

    /// Runs a paused domain's vCPUs.
    pub fn resume(&self, name: &str) -> Result<DomainInfo, ClientError> {
        self.call("POST", &domain_path(name, "/resume"), None)
    }

    /// Saves a domain's memory and definition to `file` (absolute) and
    /// stops it; `paused` is the state a restore leaves it in.
    pub fn save(
        &self,
        name: &str,
        file: &std::path::Path,
        paused: Option<bool>,
    ) -> Result<SaveInfo, ClientError> {
        let req = SaveRequest {
            file: file.to_path_buf(),
            paused,
        };
        let body = serde_json::to_string(&req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/save"), Some(body))
    }

    /// Starts the domain saved in `file` (absolute); `paused` overrides
    /// the state it was saved in.
    pub fn restore(
        &self,
        file: &std::path::Path,
        paused: Option<bool>,
    ) -> Result<DomainInfo, ClientError> {
        let req = RestoreRequest {
            file: file.to_path_buf(),
            paused,
        };
        let body = serde_json::to_string(&req).unwrap_or_default();
        self.call("POST", "/v1/restore", Some(body))
    }

    /// A disk-only snapshot of a running domain.
    pub fn snapshot_create(&self, name: &str, req: &CreateRequest) -> Result<Made, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/snapshots"), Some(body))
    }

    /// Deletes snapshot `snapshot` of a running domain (and what `req`
    /// adds).
    pub fn snapshot_delete(
        &self,
        name: &str,
        snapshot: &str,
        req: &DeleteRequest,
    ) -> Result<Gone, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        let path = domain_path(name, &format!("/snapshots/{}", encode(snapshot)));
        self.call("DELETE", &path, Some(body))
    }

    /// A backup of a running domain; the job once it has started (views
    /// served, or the copy begun).
    pub fn backup_begin(&self, name: &str, req: &BackupRequest) -> Result<Job, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/backup"), Some(body))
    }

    /// A backup of a running domain into a repository; the backup once
    /// made.
    pub fn repo_backup(
        &self,
        name: &str,
        req: &RepoBackupRequest,
    ) -> Result<RepoBackupMade, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/repo-backup"), Some(body))
    }

    /// Begins a block job on a running domain.
    pub fn block_job_begin(
        &self,
        name: &str,
        req: &BlockJobRequest,
    ) -> Result<BlockJobInfo, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/blockjobs"), Some(body))
    }

    /// The block job of `disk` (`what`: "" for its info, "/abort" or
    /// "/pivot" to end it).
    pub fn block_job(
        &self,
        name: &str,
        disk: &str,
        what: &str,
    ) -> Result<BlockJobInfo, ClientError> {
        let path = domain_path(name, &format!("/blockjobs/{}{what}", encode(disk)));
        let method = if what.is_empty() { "GET" } else { "POST" };
        self.call(method, &path, None)
    }

    /// A checkpoint of a running domain.
    pub fn checkpoint_create(
        &self,
        name: &str,
        req: &CheckpointRequest,
    ) -> Result<Made, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.call("POST", &domain_path(name, "/checkpoints"), Some(body))
    }

    /// The health of every checkpoint of a running domain, per disk.
    pub fn checkpoint_health(
        &self,
        name: &str,
    ) -> Result<Vec<strata_core::checkpoint::health::DiskHealth>, ClientError> {
        self.call("GET", &domain_path(name, "/checkpoints/health"), None)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let a = self.request(method, path, body.as_deref().unwrap_or(""))?;
        if (200..300).contains(&a.status) {
            return serde_json::from_slice(&a.body).map_err(|e| self.protocol(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&a.body) {
            Ok(e) => Err(ClientError::Api {
                status: a.status,
                code: e.code,
                message: e.error,
            }),
            Err(_) => Err(self.protocol(format!(
                "status {} with body {:?}",
                a.status,
                String::from_utf8_lossy(&a.body)
            ))),
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            detail,
        }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> Result<Answer, ClientError> {
        let io = |op, source| ClientError::Io {
            socket: self.socket.clone(),
            op,
            source,
        };
        let mut s = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::NoDaemon {
                    socket: self.socket.clone(),
                })
            }
            Err(e) => return Err(io("connect", e)),
        };
        s.set_read_timeout(self.timeout)
            .map_err(|e| io("set a timeout", e))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(body.as_bytes()))
            .map_err(|e| io("send", e))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| io("read the answer", e))?;
        parse(&raw).map_err(|d| self.protocol(d))
    }
}

/// `/v1/domains/NAME` + `rest`, the name percent-encoded.
fn domain_path(name: &str, rest: &str) -> String {
    format!("/v1/domains/{}{rest}", encode(name))
}

/// `segment` percent-encoded for a path.
fn encode(segment: &str) -> String {
    let mut p = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            p.push(b as char);
        } else {
            p.push_str(&format!("%{b:02X}"));
        }
    }
    p
}

/// An HTTP/1.1 answer read to its end: status and body (by length,
/// chunked, or up to the end of the stream).
fn parse(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "a header that is not text")?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("the body is shorter than its length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("a chunk shorter than its size")?);
        b = b.get(size + 2..).ok_or("a chunk without its end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_by_length_and_chunks() {
        let a = parse(b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}junk").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (409, &b"{}"[..]));
        let a = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(a.body, b"abcde");
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(
            domain_path("a b/ç", "/state"),
            "/v1/domains/a%20b%2F%C3%A7/state"
        );
    }
}
