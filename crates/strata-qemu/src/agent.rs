//! A client of qemu-guest-agent, over the unix socket QEMU serves the
//! guest's `org.qemu.guest_agent.0` virtio-serial port on.
//!
//! The agent speaks QMP's wire format without a greeting. A client cannot
//! know what an earlier client left half-written on the channel, so it
//! first resynchronises (`guest-sync-delimited`): it sends a 0xFF byte,
//! which makes the agent drop any partial command, then the sync command
//! with a fresh id; the agent answers with a 0xFF byte followed by the id.
//! Everything before that byte is stale and skipped. A guest without a
//! running agent never answers: [`GuestAgent::connect`] then fails after
//! its timeout, saying so.
//!
//! Blocking and synchronous: the daemon calls it from a blocking task.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// How long an answer to `guest-sync-delimited` may take: a guest whose
/// agent is up answers at once, even under TCG.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a freeze or thaw may take (the guest flushes every
/// filesystem first).
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest answer line accepted.
const MAX_LINE: u64 = 1 << 20;

/// A connection to a guest agent that has answered a sync.
#[derive(Debug)]
pub struct GuestAgent {
    socket: PathBuf,
    stream: BufReader<UnixStream>,
}

impl GuestAgent {
    /// Connects to the agent's channel at `socket` and resynchronises;
    /// fails when nothing answers within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<GuestAgent> {
        let stream = UnixStream::connect(socket).map_err(|e| Error::Agent {
            socket: socket.to_path_buf(),
            command: None,
            reason: format!("cannot connect: {e}"),
        })?;
        let mut agent = GuestAgent {
            socket: socket.to_path_buf(),
            stream: BufReader::new(stream),
        };
        agent.sync(timeout)?;
        Ok(agent)
    }

    /// Freezes every freezable filesystem of the guest; returns how many.
    pub fn freeze(&mut self) -> Result<u64> {
        self.count("guest-fsfreeze-freeze")
    }

    /// Thaws the guest's filesystems; returns how many were frozen.
    pub fn thaw(&mut self) -> Result<u64> {
        self.count("guest-fsfreeze-thaw")
    }

    /// Runs `command`, whose answer is a count.
    fn count(&mut self, command: &str) -> Result<u64> {
        let v = self.execute(command, None, FREEZE_TIMEOUT)?;
        v.as_u64()
            .ok_or_else(|| self.fail(Some(command), format!("answered {v}, not a count")))
    }

    fn fail(&self, command: Option<&str>, reason: impl Into<String>) -> Error {
        Error::Agent {
            socket: self.socket.clone(),
            command: command.map(str::to_string),
            reason: reason.into(),
        }
    }

    /// Drops whatever an earlier client left on the channel: 0xFF, then
    /// `guest-sync-delimited` with a fresh id, whose answer follows the
    /// agent's own 0xFF.
    fn sync(&mut self, timeout: Duration) -> Result<()> {
        let id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0x7fff_ffff_ffff)
            .unwrap_or(1);
        let cmd = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        let mut msg = vec![0xff];
        msg.extend(cmd.to_string().bytes());
        msg.push(b'\n');
        self.send(&msg, timeout, "guest-sync-delimited")?;
        loop {
            let mut skipped = Vec::new();
            let read = (&mut self.stream)
                .take(MAX_LINE)
                .read_until(0xff, &mut skipped);
            if let Err(e) = read {
                let reason = if is_timeout(&e) {
                    format!(
                        "the guest agent is not responding (no answer to a sync within {timeout:?}: is qemu-guest-agent running in the guest?)"
                    )
                } else {
                    format!("reading: {e}")
                };
                return Err(self.fail(None, reason));
            }
            if skipped.last() != Some(&0xff) {
                return Err(self.fail(None, "the channel closed during the sync"));
            }
            let answer = self
                .line()
                .map_err(|e| self.fail(Some("guest-sync-delimited"), e))?;
            if answer.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
            // An answer to an older sync: wait for ours.
        }
    }

    /// Sends `command` and returns what it returned.
    fn execute(&mut self, command: &str, args: Option<Value>, timeout: Duration) -> Result<Value> {
        let mut cmd = json!({ "execute": command });
        if let Some(a) = args {
            cmd["arguments"] = a;
        }
        let mut msg = cmd.to_string().into_bytes();
        msg.push(b'\n');
        self.send(&msg, timeout, command)?;
        let answer = self.line().map_err(|e| self.fail(Some(command), e))?;
        if let Some(err) = answer.get("error") {
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("failed");
            let class = err.get("class").and_then(Value::as_str).unwrap_or("Error");
            return Err(self.fail(Some(command), format!("{class}: {desc}")));
        }
        answer.get("return").cloned().ok_or_else(|| {
            self.fail(
                Some(command),
                format!("an answer without a return: {answer}"),
            )
        })
    }

    fn send(&mut self, msg: &[u8], timeout: Duration, command: &str) -> Result<()> {
        let s = self.stream.get_mut();
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .and_then(|()| s.write_all(msg))
            .map_err(|e| self.fail(Some(command), format!("sending: {e}")))
    }

    /// The next JSON line from the agent.
    fn line(&mut self) -> std::result::Result<Value, String> {
        let mut buf = Vec::new();
        (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|e| {
                if is_timeout(&e) {
                    "no answer in time".to_string()
                } else {
                    format!("reading: {e}")
                }
            })?;
        if buf.last() != Some(&b'\n') {
            return Err("the channel closed, or an answer too long".into());
        }
        serde_json::from_slice(&buf).map_err(|e| format!("an answer that is not JSON: {e}"))
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests;
