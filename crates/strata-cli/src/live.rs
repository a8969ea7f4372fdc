//! Finding the daemon of a state folder: asking it about running domains,
//! starting it when `domain start` needs one (detached, its log in
//! `STATE/daemon.log`), and refusing offline work on a running domain.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use strata_daemon::client::{Client, ClientError};
use strata_daemon::types::{DomainInfo, Reason, State};

/// How long an answer from the daemon may take (a start under TCG, a
/// destroy's grace time).
pub const ANSWER_LIMIT: Duration = Duration::from_secs(300);

/// How long a daemon just started gets to answer.
const START_LIMIT: Duration = Duration::from_secs(15);

/// The client of the daemon of `dir`.
pub fn client(dir: &Path) -> Client {
    Client::for_state_dir(dir).with_timeout(ANSWER_LIMIT)
}

/// The daemon's view of `domain`, or `None` when no daemon answers.
pub fn daemon_view(dir: &Path, domain: &str) -> Result<Option<DomainInfo>> {
    match client(dir).domain(domain) {
        Ok(d) => Ok(Some(d)),
        Err(ClientError::NoDaemon { .. }) => Ok(None),
        Err(e) => Err(api_error(e)),
    }
}

/// Every domain as the daemon sees it, or `None` when no daemon answers.
pub fn daemon_domains(dir: &Path) -> Result<Option<Vec<DomainInfo>>> {
    match client(dir).domains() {
        Ok(d) => Ok(Some(d)),
        Err(ClientError::NoDaemon { .. }) => Ok(None),
        Err(e) => Err(api_error(e)),
    }
}

/// A daemon's error as the CLI reports it.
pub fn api_error(e: ClientError) -> anyhow::Error {
    anyhow!(e)
}

/// Refuses `what` (an offline command that changes `domain`) while the
/// domain runs. (An unknown domain is the offline command's own error.)
pub fn refuse_if_running(dir: &Path, domain: &str, what: &str) -> Result<()> {
    if is_active(dir, domain)? {
        return Err(anyhow!(
            "domain '{domain}' is running: {what} is not yet supported on a running domain"
        ));
    }
    Ok(())
}

/// True when the daemon of `dir` runs `domain` (running or paused): a
/// command that works on a running domain goes to the daemon then.
pub fn is_active(dir: &Path, domain: &str) -> Result<bool> {
    match client(dir).domain(domain) {
        Ok(d) => Ok(d.state.is_active()),
        Err(ClientError::NoDaemon { .. }) => Ok(false),
        Err(e) if e.code() == Some("no-domain") => Ok(false),
        Err(e) => Err(api_error(e)),
    }
}

/// A shut-off domain as known offline.
pub fn offline(name: String, uuid: String) -> DomainInfo {
    DomainInfo {
        id: None,
        name,
        uuid,
        state: State::ShutOff,
        reason: Reason::Unknown,
        pid: None,
        disks: Vec::new(),
    }
}

/// The daemon of `dir`, started if none answers (detached, in its own
/// session, logging to `STATE/daemon.log`; said on stderr unless `quiet`).
pub fn ensure_daemon(dir: &Path, quiet: bool) -> Result<Client> {
    let c = client(dir);
    match c.daemon() {
        Ok(_) => return Ok(c),
        Err(ClientError::NoDaemon { .. }) => {}
        Err(e) => return Err(api_error(e)),
    }
    let log_path = dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("{}: cannot open", log_path.display()))?;
    let log2 = log.try_clone().context("duplicating the log file")?;
    let exe = std::env::current_exe().context("finding the strata binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(dir)
        .arg("daemon")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory; it only
    // detaches the child from our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    if !quiet {
        eprintln!(
            "strata: started the daemon for {} (pid {}, log {})",
            dir.display(),
            child.id(),
            log_path.display()
        );
    }
    let until = Instant::now() + START_LIMIT;
    loop {
        match c.daemon() {
            Ok(_) => return Ok(c),
            Err(ClientError::NoDaemon { .. }) => {}
            Err(e) => return Err(api_error(e)),
        }
        if let Some(status) = child.try_wait().context("watching the daemon")? {
            // Another daemon may have won a race to the socket.
            if c.daemon().is_ok() {
                return Ok(c);
            }
            return Err(anyhow!(
                "the daemon exited ({status}) before answering; its log {} ends with: {}",
                log_path.display(),
                log_tail(&log_path)
            ));
        }
        if Instant::now() >= until {
            return Err(anyhow!(
                "the daemon did not answer on {} within {} s (log {})",
                c.socket().display(),
                START_LIMIT.as_secs(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
