//! The guest agent client against a scripted agent on a unix socket: the
//! resync skips what an earlier client left, errors and silence are
//! reported naming the socket and the command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use serde_json::Value;

use super::*;

/// Serves one client at `dir/qga.sock` with `agent`, which is given the
/// connection and each command line read.
fn serve(
    dir: &Path,
    agent: impl FnMut(&mut UnixStream, Value) + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = dir.join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut agent = agent;
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            // The agent drops a leading 0xFF (and says so).
            let text: Vec<u8> = line.into_iter().filter(|&b| b != 0xff).collect();
            let Ok(cmd) = serde_json::from_slice::<Value>(&text) else {
                continue;
            };
            agent(&mut s, cmd);
        }
    });
    (path, h)
}

/// An agent as qemu-ga answers: the stray-byte error, then each command.
fn real_agent(frozen: u64) -> impl FnMut(&mut UnixStream, Value) + Send {
    move |s, cmd| {
        let reply = match cmd["execute"].as_str().unwrap() {
            "guest-sync-delimited" => {
                s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n")
                    .unwrap();
                format!("\u{0}{{\"return\": {}}}\n", cmd["arguments"]["id"])
            }
            "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => {
                format!("{{\"return\": {frozen}}}\n")
            }
            other => format!(
                "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"no {other}\"}}}}\n"
            ),
        };
        let mut bytes = reply.into_bytes();
        if bytes[0] == 0 {
            bytes[0] = 0xff;
        }
        s.write_all(&bytes).unwrap();
    }
}

#[test]
fn a_sync_skips_what_came_before_and_freeze_and_thaw_count_filesystems() {
    let d = tempfile::tempdir().unwrap();
    let (path, h) = serve(d.path(), real_agent(2));
    let mut a = GuestAgent::connect(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(a.freeze().unwrap(), 2);
    assert_eq!(a.thaw().unwrap(), 2);
    drop(a);
    h.join().unwrap();
}

#[test]
fn an_older_sync_answer_is_passed_over() {
    let d = tempfile::tempdir().unwrap();
    let (path, h) = serve(d.path(), |s, cmd| {
        assert_eq!(cmd["execute"], "guest-sync-delimited");
        // A stale answer left by an earlier client, then ours.
        s.write_all(b"\xff{\"return\": 7}\n").unwrap();
        let mut ours = format!("garbage#{{\"return\": {}}}\n", cmd["arguments"]["id"]).into_bytes();
        ours[7] = 0xff;
        s.write_all(&ours).unwrap();
    });
    GuestAgent::connect(&path, Duration::from_secs(5)).unwrap();
    h.join().unwrap();
}

#[test]
fn a_silent_channel_is_an_agent_that_is_not_responding() {
    let d = tempfile::tempdir().unwrap();
    let (path, h) = serve(d.path(), |_, _| {});
    let e = GuestAgent::connect(&path, Duration::from_millis(300)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("not responding"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    drop(e);
    h.join().unwrap();
}

#[test]
fn no_socket_and_a_refused_command_are_errors_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let e = GuestAgent::connect(&d.path().join("none.sock"), Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    let mut agent = real_agent(1);
    let (path, h) = serve(d.path(), move |s, cmd| {
        if cmd["execute"] == "guest-fsfreeze-freeze" {
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"freeze is already in progress\"}}\n")
                .unwrap();
        } else {
            agent(s, cmd);
        }
    });
    let mut a = GuestAgent::connect(&path, Duration::from_secs(5)).unwrap();
    let e = a.freeze().unwrap_err().to_string();
    assert!(
        e.contains("guest-fsfreeze-freeze") && e.contains("already in progress"),
        "{e}"
    );
    assert_eq!(a.thaw().unwrap(), 1);
    drop(a);
    h.join().unwrap();
}
