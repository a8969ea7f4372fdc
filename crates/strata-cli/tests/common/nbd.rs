//! NBD servers for the tests: `strata nbd serve` and `qemu-nbd` started in
//! a temp dir and waited for, stopped with SIGTERM (or killed when
//! dropped).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// The socket's name, relative to the directory it runs in.
    pub socket: String,
}

impl Server {
    /// Starts `program args…` in `p` and waits for it to listen on `socket`.
    pub fn start(p: &Path, program: &str, args: &[&str], socket: &str) -> Server {
        Server::start_logging(p, program, args, socket, None)
    }

    /// As `start`, with debug logging (`RUST_LOG=debug`) to the file `log`
    /// in `p` when given.
    pub fn start_logging(
        p: &Path,
        program: &str,
        args: &[&str],
        socket: &str,
        log: Option<&str>,
    ) -> Server {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(p).stdin(Stdio::null());
        if let Some(log) = log {
            cmd.env("RUST_LOG", "debug")
                .stderr(std::fs::File::create(p.join(log)).unwrap());
        }
        let child = cmd.spawn().unwrap();
        let mut s = Server {
            child,
            socket: socket.to_string(),
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !p.join(&s.socket).exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("server exited early: {st}");
            }
            assert!(Instant::now() < until, "server never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// The `nbd+unix://` URI of export `name`.
    pub fn uri(&self, p: &Path, name: &str) -> String {
        format!(
            "nbd+unix:///{name}?socket={}",
            p.join(&self.socket).display()
        )
    }

    /// Waits for the server to end by itself (a server without
    /// `--persistent` ends when its last client leaves); panics after
    /// `within`.
    pub fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return st;
            }
            assert!(Instant::now() < until, "the server did not end by itself");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM) and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `strata nbd serve --socket SOCKET --persistent --shared 8 EXPORT…`.
pub fn strata_nbd(p: &Path, socket: &str, exports: &[&str]) -> Server {
    let mut args = vec!["nbd", "serve", "--socket", socket, "--persistent"];
    args.extend_from_slice(&["--shared", "8"]);
    args.extend_from_slice(exports);
    Server::start(p, env!("CARGO_BIN_EXE_strata"), &args, socket)
}

/// `strata nbd serve --socket s.sock --persistent ARGS…`, logging at debug
/// level to `server.log`.
pub fn strata_nbd_logged(p: &Path, args: &[&str]) -> Server {
    let mut all = vec!["nbd", "serve", "--socket", "s.sock", "--persistent"];
    all.extend_from_slice(args);
    Server::start_logging(
        p,
        env!("CARGO_BIN_EXE_strata"),
        &all,
        "s.sock",
        Some("server.log"),
    )
}

/// `qemu-nbd` serving a qcow2 `file` on `socket`, persistent, writeback,
/// discards unmapping, plus `extra` arguments.
pub fn qemu_nbd(p: &Path, socket: &str, file: &str, read_only: bool, extra: &[&str]) -> Server {
    let abs = p.join(socket).display().to_string();
    let mut args = vec!["-t", "-f", "qcow2", "-k", &abs];
    args.extend_from_slice(&["--cache=writeback", "--discard=unmap"]);
    if read_only {
        args.push("-r");
    }
    args.extend_from_slice(extra);
    args.push(file);
    Server::start(p, "qemu-nbd", &args, socket)
}
