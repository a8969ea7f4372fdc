//! systemd's readiness protocol (`sd_notify`): when `NOTIFY_SOCKET` names
//! a datagram socket (a path, or `@name` in the abstract namespace), state
//! lines such as `READY=1`, `STOPPING=1` and `STATUS=…` are sent there.
//! Without it nothing happens. Failures are logged, never fatal.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if
/// `NOTIFY_SOCKET` is set.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!(error = %e, socket = ?target, "sd_notify failed");
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)?
    } else {
        std::os::unix::net::SocketAddr::from_pathname(target)?
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
