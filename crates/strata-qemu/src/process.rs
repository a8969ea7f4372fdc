//! The emulator process: started in its own process group with its output
//! in a log file, watched by a task that notices its end however it comes
//! (exit, crash, `kill -9` from outside) and publishes it.
//!
//! Signals go through the watching task, which still owns the unreaped
//! child: a signal can never reach another process that reused the pid.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::{Error, Result};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn from_status(s: std::process::ExitStatus) -> Self {
        ExitInfo {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("ended, status unknown"),
        }
    }
}

/// How to start the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnOptions {
    /// stdout and stderr are appended here (created 0600), after a first
    /// line with the command line.
    pub log_file: PathBuf,
    /// Kill the process (SIGKILL) when its [`QemuProcess`] is dropped.
    pub kill_on_drop: bool,
}

/// A running (or ended) emulator process.
#[derive(Debug)]
pub struct QemuProcess {
    pid: u32,
    program: PathBuf,
    log_file: PathBuf,
    signals: mpsc::UnboundedSender<i32>,
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl QemuProcess {
    /// Starts `program` with `args` in a new process group, and a task (on
    /// the current tokio runtime) that waits for it.
    pub fn spawn(program: &Path, args: &[OsString], opts: &SpawnOptions) -> Result<Self> {
        let io_err = |op, source| Error::Io {
            op,
            path: opts.log_file.clone(),
            source,
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&opts.log_file)
            .map_err(|e| io_err("opening log file", e))?;
        let mut line = format!("strata: starting {}", program.display());
        for a in args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line.push('\n');
        log.write_all(line.as_bytes())
            .map_err(|e| io_err("writing log file", e))?;
        let log2 = log.try_clone().map_err(|e| io_err("opening log file", e))?;

        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            emulator: program.into(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let span = tracing::info_span!("qemu", pid, emulator = %program.display());
        span.in_scope(|| tracing::info!("started"));

        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(watch_child(child, sig_rx, exit_tx, opts.kill_on_drop).instrument(span));
        Ok(QemuProcess {
            pid,
            program: program.into(),
            log_file: opts.log_file.clone(),
            signals: sig_tx,
            exit: exit_rx,
        })
    }

    /// Takes charge of an emulator a previous daemon started (`pid`, now
    /// reparented away from us): it is watched through a pidfd, which
    /// says when it ends (its exit status is not ours to collect) and
    /// carries signals to it and to no process that reused its pid.
    pub fn adopt(pid: u32, program: &Path, log_file: &Path) -> Result<Self> {
        let io_err = |op, source| Error::Io {
            op,
            path: PathBuf::from(format!("/proc/{pid}")),
            source,
        };
        let pidfd = pidfd_open(pid).map_err(|e| io_err("opening a pidfd", e))?;
        // SAFETY: an OwnedFd returns the same open descriptor for as long as
        // it lives, and the AsyncFd owns it from here on.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| io_err("watching a pidfd", e.into()))?;
        let span = tracing::info_span!("qemu", pid, emulator = %program.display());
        span.in_scope(|| tracing::info!("adopted"));
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(watch_adopted(fd, sig_rx, exit_tx).instrument(span));
        Ok(QemuProcess {
            pid,
            program: program.into(),
            log_file: log_file.into(),
            signals: sig_tx,
            exit: exit_rx,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program that was started.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The log file with its output.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// How it ended, once it has.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// A receiver that changes once, to `Some`, when the process ends.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    /// Waits for the process to end.
    pub async fn wait(&self) -> ExitInfo {
        wait_exit(self.exit.clone()).await
    }

    /// Sends SIGTERM: QEMU shuts the machine down (a `SHUTDOWN` event,
    /// reason `host-signal`) and exits.
    pub fn terminate(&self) {
        let _ = self.signals.send(libc::SIGTERM);
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        let _ = self.signals.send(libc::SIGKILL);
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`; returns
    /// how it ended.
    pub async fn shutdown(&self, grace: Duration) -> ExitInfo {
        if let Some(e) = self.exit_info() {
            return e;
        }
        self.terminate();
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    ?grace,
                    "no exit after SIGTERM; sending SIGKILL"
                );
                self.kill();
                self.wait().await
            }
        }
    }

    /// The last `lines` lines of the log (at most its last 64 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }
}

/// Waits until `rx` holds an exit.
pub(crate) async fn wait_exit(mut rx: watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    // The watching task always publishes before it ends, so after an error
    // (the sender gone) the value is there too.
    let _ = rx.wait_for(Option::is_some).await;
    let v = *rx.borrow();
    v.unwrap_or(ExitInfo {
        code: None,
        signal: None,
    })
}

/// Owns the child: forwards signals while it runs, publishes its end.
async fn watch_child(
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<i32>,
    exit: watch::Sender<Option<ExitInfo>>,
    kill_on_drop: bool,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => match sig {
                Some(sig) => {
                    if let Some(pid) = child.id() {
                        tracing::debug!(sig, "signalling");
                        // SAFETY: kill(2) has no memory effects; `pid` is our
                        // unreaped child, so it cannot name another process.
                        unsafe { libc::kill(pid as libc::pid_t, sig) };
                    }
                }
                None => {
                    if kill_on_drop {
                        tracing::debug!("handle dropped; killing");
                        let _ = child.start_kill();
                    }
                    break child.wait().await;
                }
            },
        }
    };
    let info = match status {
        Ok(s) => ExitInfo::from_status(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for the emulator");
            ExitInfo {
                code: None,
                signal: None,
            }
        }
    };
    tracing::info!(status = %info, "exited");
    let _ = exit.send(Some(info));
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` ends.
fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us, owned by no one.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Watches an adopted process through its pidfd: forwards signals while
/// it runs (`pidfd_send_signal`), publishes its end (status unknown: it is
/// not our child). Dropping the handle leaves the process running.
async fn watch_adopted(
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    mut signals: mpsc::UnboundedReceiver<i32>,
    exit: watch::Sender<Option<ExitInfo>>,
) {
    use std::os::fd::AsRawFd;
    loop {
        tokio::select! {
            r = fd.readable() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot watch the emulator");
                }
                break;
            }
            sig = signals.recv() => match sig {
                Some(sig) => {
                    tracing::debug!(sig, "signalling");
                    // SAFETY: pidfd_send_signal takes our pidfd, a signal
                    // number and no siginfo; it touches no memory of ours.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            fd.get_ref().as_raw_fd(),
                            sig,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        )
                    };
                }
                None => {
                    // The handle is gone; the emulator lives on.
                    let _ = fd.readable().await;
                    break;
                }
            },
        }
    }
    let info = ExitInfo {
        code: None,
        signal: None,
    };
    tracing::info!("exited");
    let _ = exit.send(Some(info));
}

/// The last `lines` lines of a file (read from at most its last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 << 10;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
