//! Helpers for tests of `strata daemon`: the daemon as a child process,
//! the API through curl, and domains that boot the guest kit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ok, qemu_img, st};

/// `strata --state-dir state daemon ARGS` in `dir`, its log in
/// `dir/daemon-test.log`; ended with SIGTERM (then SIGKILL) when dropped.
pub struct DaemonProc {
    child: Option<Child>,
    dir: PathBuf,
}

impl DaemonProc {
    /// Starts the daemon with `args` and `envs`, and waits until it answers.
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> DaemonProc {
        let log = std::fs::File::create(dir.join("daemon-test.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(st(&["daemon"]))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let d = DaemonProc {
            child: Some(cmd.spawn().expect("spawn strata daemon")),
            dir: dir.to_path_buf(),
        };
        wait_until(Duration::from_secs(20), "the daemon answers", || {
            curl(dir, "GET", "/v1/daemon", None).0 == 200
        });
        d
    }

    /// Starts the daemon listening on `listen` (`unix:PATH`), waiting
    /// until the socket exists.
    pub fn start_listening(dir: &Path, listen: &str) -> DaemonProc {
        let log = std::fs::File::create(dir.join("daemon-test.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(st(&["daemon", "--listen", listen]))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn strata daemon");
        let path = dir.join(listen.trim_start_matches("unix:"));
        wait_until(Duration::from_secs(20), "the socket exists", || {
            path.exists()
        });
        DaemonProc {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit; its code.
    pub fn term(&mut self, limit: Duration) -> i32 {
        match self.stop(limit) {
            Some(code) => code,
            None => panic!("the daemon did not stop within {limit:?}:\n{}", self.log()),
        }
    }

    /// SIGTERM, then SIGKILL after `limit`: the exit code, or `None` when
    /// it had to be killed.
    fn stop(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s.code().unwrap_or(-1));
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: the daemon dies at once, whatever it was doing (its
    /// guests run on); waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon-test.log")).unwrap_or_default()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(60));
    }
}

/// Ends the daemon a CLI command started for `dir` when dropped (also
/// when a test fails), so that no daemon or QEMU outlives a test.
pub struct Autostarted<'a>(pub &'a Path);

impl Drop for Autostarted<'_> {
    fn drop(&mut self) {
        stop_autostarted(self.0);
    }
}

/// Ends the daemon a CLI command started for `dir` (its pid is in the
/// socket's lock file), waiting up to a minute for it to stop.
pub fn stop_autostarted(dir: &Path) {
    let lock = dir.join("state/strata.sock.lock");
    let Some(pid) = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|t| t.trim().strip_prefix("pid ")?.parse::<u32>().ok())
    else {
        return;
    };
    signal(pid, libc::SIGTERM);
    let until = Instant::now() + Duration::from_secs(60);
    // SAFETY: kill with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid as i32, 0) } == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Polls `f` every 50 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `curl --unix-socket state/strata.sock -X METHOD [-d BODY] URL`: the
/// status and the body (0 and empty when nothing answers).
pub fn curl(dir: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut args = vec![
        "-s",
        "--unix-socket",
        "state/strata.sock",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let url = format!("http://localhost{path}");
    args.push(&url);
    let out = Command::new("curl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl, expecting `status` and a JSON body; the body.
pub fn curl_json(
    dir: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    status: u16,
) -> serde_json::Value {
    let (code, text) = curl(dir, method, path, body);
    assert_eq!(code, status, "{method} {path}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
}

/// A domain `name` that boots the guest kit with `workload`, one qcow2
/// disk `NAME.qcow2` of `size` (made here) as vda, its console in
/// `NAME.console`; `cmdline` is added to the kernel's. Defined in `state`.
pub fn guest_domain(
    dir: &Path,
    kit: &strata_testguest::Kit,
    name: &str,
    workload: &str,
    cmdline: &str,
) {
    let initrd = dir.join(format!("{name}.initrd.gz"));
    kit.initrd(workload, &[], &initrd)
        .expect("building the initrd");
    let disk = format!("{name}.qcow2");
    if !dir.join(&disk).exists() {
        qemu_img(dir, &["create", "-q", "-f", "qcow2", &disk, "64M"]);
    }
    define_guest(dir, kit, name, cmdline);
}

/// (Re)defines domain `name` as [`guest_domain`] does, its initrd and
/// disk already made.
pub fn define_guest(dir: &Path, kit: &strata_testguest::Kit, name: &str, cmdline: &str) {
    define_guest_with(dir, kit, name, cmdline, "");
}

/// [`define_guest`] with `metadata` inside the domain's `<metadata>`.
pub fn define_guest_with(
    dir: &Path,
    kit: &strata_testguest::Kit,
    name: &str,
    cmdline: &str,
    metadata: &str,
) {
    let xml = format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <uuid>6f1b0c2e-5a7d-4c1e-9b3a-00000000000{n}</uuid>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{dir}/{name}.initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 {cmdline}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{dir}/{name}.console'/><target port='0'/></serial>
  </devices>
</domain>",
        n = name.len() % 10,
        kernel = kit.kernel.display(),
        dir = dir.display(),
    );
    std::fs::write(dir.join(format!("{name}.xml")), xml).unwrap();
    ok(dir, &st(&["domain", "define", &format!("{name}.xml")]));
}

/// Waits until the console of domain `name` shows `needle`.
pub fn wait_console(dir: &Path, name: &str, needle: &str) {
    let file = dir.join(format!("{name}.console"));
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < until,
            "the console of {name} never showed {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `domain domstate --reason` of `name`, trimmed.
pub fn domstate(dir: &Path, name: &str) -> String {
    ok(dir, &st(&["domain", "domstate", name, "--reason"]))
        .stdout
        .trim()
        .to_string()
}
