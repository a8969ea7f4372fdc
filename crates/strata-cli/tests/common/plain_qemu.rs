//! The machine strata runs, run by QEMU alone: the same `qemu-system`
//! arguments (read from the running QEMU's `/proc/PID/cmdline`), but each
//! disk opened by QEMU's own qcow2 driver and served to the same
//! `vhost-user-blk-pci` device by QEMU's own vhost-user-blk export (in an
//! iothread), so the machine and its migration stream are the same and
//! QEMU's `savevm`/`loadvm` keep the memory in the qcow2 file themselves.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The arguments of the QEMU that runs domain `name` of the state folder
/// in `dir` now.
pub fn qemu_args_of(dir: &Path, name: &str) -> Vec<String> {
    let pid = std::fs::read_to_string(dir.join("state/run").join(name).join("qemu.pid"))
        .expect("the domain's QEMU pid file");
    let raw = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .skip(1)
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect()
}

/// A QEMU running a machine strata ran, with disk `vda` from `disk`, its
/// console into `console`; paused (`-S`) until [`PlainQemu::hmp`] `cont`
/// or `loadvm`.
pub struct PlainQemu {
    child: Child,
    qmp: BufReader<UnixStream>,
}

impl PlainQemu {
    /// Starts QEMU with `args` (from [`qemu_args_of`]), disk `vda` the qcow2
    /// file `disk`, the console into `console`, in folder `dir`.
    pub fn start(dir: &Path, args: &[String], disk: &Path, console: &Path) -> PlainQemu {
        let qmp_path = dir.join("plain-qmp.sock");
        let vu_path = dir.join("plain-vda.sock");
        let mut out = Vec::new();
        let mut device = None;
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            // A flag when no value follows (values never start with '-').
            let v = match args.get(i + 1) {
                Some(v) if !v.starts_with('-') => v.clone(),
                _ => {
                    out.push(a.clone());
                    i += 1;
                    continue;
                }
            };
            i += 2;
            match a.as_str() {
                "-sandbox" | "-pidfile" | "-mon" => continue,
                "-chardev" if v.contains("id=chr-qmp") || v.contains("id=chr-vda") => continue,
                "-chardev" if v.contains("id=chr-serial0") => {
                    out.push(a.clone());
                    out.push(format!("file,id=chr-serial0,path={}", console.display()));
                }
                "-device" if v.contains("vhost-user-blk-pci") && v.contains("\"vda\"") => {
                    device = Some(serde_json::from_str::<Value>(&v).unwrap());
                }
                _ => {
                    out.push(a.clone());
                    out.push(v);
                }
            }
        }
        let device = device.expect("a vhost-user-blk-pci device vda");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(&out)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-object")
            .arg("iothread,id=plain-io")
            .arg("-blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=plain-file",
                disk.display()
            ))
            .arg("-blockdev")
            .arg("driver=qcow2,file=plain-file,node-name=plain-vda")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("plain-qemu.log")).unwrap());
        let child = cmd.spawn().expect("qemu-system-x86_64");
        let until = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(&qmp_path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < until, "no QMP socket: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut q = PlainQemu {
            child,
            qmp: BufReader::new(stream),
        };
        q.read();
        q.call("qmp_capabilities", json!({}));
        q.call(
            "block-export-add",
            json!({"type": "vhost-user-blk", "id": "plain-export", "node-name": "plain-vda",
                   "writable": true, "iothread": "plain-io",
                   "addr": {"type": "unix", "path": vu_path}}),
        );
        q.call(
            "chardev-add",
            json!({"id": "chr-vda", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": vu_path}}, "server": false}}}),
        );
        q.call("device_add", device);
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.qmp.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("QMP said {line:?}"))
    }

    /// Runs QMP command `cmd`: its return value (panics on an error).
    pub fn call(&mut self, cmd: &str, args: Value) -> Value {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.qmp.get_mut(), "{msg}").unwrap();
        loop {
            let r = self.read();
            if r.get("event").is_some() {
                continue;
            }
            assert!(r.get("error").is_none(), "{cmd}: {r}");
            return r["return"].clone();
        }
    }

    /// Runs HMP command `line` (as `virsh qemu-monitor-command --hmp`):
    /// what it printed, which must not name an error.
    pub fn hmp(&mut self, line: &str) -> String {
        let out = self.call("human-monitor-command", json!({"command-line": line}));
        let text = out.as_str().unwrap_or_default().to_string();
        assert!(!text.to_lowercase().contains("error"), "{line}: {text}");
        text
    }

    /// Ends QEMU.
    pub fn quit(mut self) {
        let msg = json!({"execute": "quit"});
        let _ = writeln!(self.qmp.get_mut(), "{msg}");
        let until = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "QEMU did not quit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PlainQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
