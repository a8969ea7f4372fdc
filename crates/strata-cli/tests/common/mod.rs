//! Helpers shared by the CLI tests: run the real `strata` binary and the
//! QEMU tools (the oracle) in temp dirs, build deterministic data.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod counter;
pub mod daemon;
pub mod garage;
pub mod nbd;
pub mod plain_qemu;
pub mod records;

/// What a finished process left behind.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard output as bytes.
    pub raw_stdout: Vec<u8>,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            raw_stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the exit status is `code`.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command failed with exactly one `strata: error:`
    /// line on stderr that mentions `needle`; returns that line.
    pub fn one_error(&self, code: i32, needle: &str) -> String {
        assert_eq!(
            self.code, code,
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("strata: error: "),
            "bad error line: {}",
            lines[0]
        );
        assert!(
            lines[0].contains(needle),
            "error line {:?} does not mention {needle:?}",
            lines[0]
        );
        lines[0].to_string()
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `program args…` in `dir`.
pub fn run_in(dir: &Path, program: &str, args: &[&str]) -> Run {
    run_with(dir, program, args, &[])
}

/// Runs `program args…` in `dir` with environment variables `env` added.
pub fn run_with(dir: &Path, program: &str, args: &[&str], env: &[(String, String)]) -> Run {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    Run::from(out)
}

/// Runs the strata binary in `dir`.
pub fn strata(dir: &Path, args: &[&str]) -> Run {
    run_in(dir, env!("CARGO_BIN_EXE_strata"), args)
}

/// Runs the strata binary in `dir` with `input` on stdin.
pub fn strata_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    Run::from(child.wait_with_output().expect("wait strata"))
}

/// Runs strata and expects success.
pub fn ok(dir: &Path, args: &[&str]) -> Run {
    strata(dir, args).expect(0)
}

/// Runs qemu-img in `dir` and expects success.
pub fn qemu_img(dir: &Path, args: &[&str]) -> Run {
    run_in(dir, "qemu-img", args).expect(0)
}

/// Runs qemu-io in `dir` on `file` (format probed unless given) with commands.
pub fn qemu_io(dir: &Path, fmt: &str, file: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(file);
    let r = run_in(dir, "qemu-io", &args).expect(0);
    assert!(
        !r.stdout.contains("error") && !r.stdout.contains("failed"),
        "qemu-io: {}",
        r.stdout
    );
}

/// `qemu-img check` must find the image clean.
pub fn assert_clean(dir: &Path, file: &str) {
    let r = run_in(dir, "qemu-img", &["check", file]);
    assert_eq!(
        r.code, 0,
        "qemu-img check {file} is not clean:\n{}{}",
        r.stdout, r.stderr
    );
}

/// `qemu-img compare` must find the images identical.
pub fn assert_same(dir: &Path, a: &str, b: &str) {
    let r = run_in(dir, "qemu-img", &["compare", a, b]);
    assert_eq!(
        r.code, 0,
        "qemu-img compare {a} {b}:\n{}{}",
        r.stdout, r.stderr
    );
}

/// `qemu-img compare` must find the images different.
pub fn assert_differ(dir: &Path, a: &str, b: &str) {
    let r = run_in(dir, "qemu-img", &["compare", a, b]);
    assert_eq!(
        r.code, 1,
        "qemu-img compare {a} {b}:\n{}{}",
        r.stdout, r.stderr
    );
}

/// A temp dir for one test.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Deterministic pseudo-random bytes, different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A raw reference image: `size` zero bytes with `writes` applied.
pub fn reference(dir: &Path, name: &str, size: usize, writes: &[(usize, &[u8])]) -> PathBuf {
    let mut data = vec![0u8; size];
    for (at, bytes) in writes {
        data[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write reference");
    p
}

/// Writes `bytes` into a file in `dir` and returns its name.
pub fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> String {
    std::fs::write(dir.join(name), bytes).expect("write file");
    name.to_string()
}

/// Overwrites bytes of a file in place (to break images on purpose).
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for poke");
    f.write_all_at(bytes, offset).expect("poke");
}

/// Reads a big-endian u64 at `offset` of a file.
pub fn peek_u64(path: &Path, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open for peek");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).expect("peek");
    u64::from_be_bytes(b)
}

/// `args` after `--state-dir state` (a state folder inside the test folder).
pub fn st<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--state-dir", "state"];
    v.extend_from_slice(args);
    v
}

/// Two 8 MiB qcow2 disks holding data and a domain `vm` using them (plus a
/// CD-ROM without media), defined in the `state` folder.
pub fn setup_vm(p: &Path) {
    for (disk, byte) in [("vda", "1"), ("vdb", "2")] {
        qemu_img(
            p,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                &format!("{disk}.qcow2"),
                "8M",
            ],
        );
        qemu_io(
            p,
            "qcow2",
            &format!("{disk}.qcow2"),
            &[&format!("write -P {byte} 0 1M")],
        );
    }
    let dir = p.display();
    std::fs::write(
        p.join("vm.xml"),
        format!(
            "<domain type='kvm'><name>vm</name><memory>1048576</memory>\
             <os><type>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{dir}/vda.qcow2'/><target dev='vda'/></disk>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{dir}/vdb.qcow2'/><target dev='vdb'/></disk>\
             <disk type='file' device='cdrom'><target dev='sda'/></disk>\
             </devices></domain>"
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
}

/// Internal snapshot names of `file`, as `qemu-img snapshot -l` lists them.
pub fn qemu_names(p: &Path, file: &str) -> Vec<String> {
    qemu_img(p, &["snapshot", "-l", file])
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// Runs `strata backup begin vm` with the backup and checkpoint XML files
/// in `p` and expects a completed job; returns its JSON status.
pub fn backup_begin(p: &Path, backup_xml: &str, checkpoint_xml: &str) -> serde_json::Value {
    let r = ok(
        p,
        &st(&[
            "--output",
            "json",
            "backup",
            "begin",
            "vm",
            "--backupxml",
            backup_xml,
            "--checkpointxml",
            checkpoint_xml,
        ]),
    )
    .json();
    assert_eq!(r["state"], "completed", "{r}");
    r
}

/// Runs openssl in `p`.
pub fn openssl(p: &Path, args: &[&str]) {
    let r = run_in(p, "openssl", args);
    assert_eq!(r.code, 0, "openssl {args:?}: {}", r.stderr);
}

/// A CA in `ca/` and certificates it signs: `server/` (for localhost) and
/// `client/`, each with the CA's certificate, as QEMU lays them out.
pub fn x509_credentials(p: &Path, ca: &str) {
    for dir in [ca, &format!("{ca}/server"), &format!("{ca}/client")] {
        std::fs::create_dir_all(p.join(dir)).unwrap();
    }
    let f = |name: &str| format!("{ca}/{name}");
    openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &f("ca-key.pem"),
            "-out",
            &f("ca-cert.pem"),
            "-days",
            "30",
            "-subj",
            "/CN=strata test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (who, usage, extra) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n{extra}"
        );
        std::fs::write(p.join(f(&format!("{who}.ext"))), ext).unwrap();
        let key = f(&format!("{who}/{who}-key.pem"));
        let csr = f(&format!("{who}.csr"));
        openssl(
            p,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &f("ca-cert.pem"),
                "-CAkey",
                &f("ca-key.pem"),
                "-CAcreateserial",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                &f(&format!("{who}.ext")),
                "-out",
                &f(&format!("{who}/{who}-cert.pem")),
            ],
        );
        std::fs::copy(
            p.join(f("ca-cert.pem")),
            p.join(f(&format!("{who}/ca-cert.pem"))),
        )
        .unwrap();
    }
}

/// `strata repo mount r ID --socket m.sock` with `more` arguments, started
/// in `p`, once it listens.
pub fn repo_mount(p: &Path, id: &str, more: &[&str]) -> std::process::Child {
    let mut args = st(&["repo", "mount", "r", id, "--socket", "m.sock"]);
    args.extend_from_slice(more);
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .current_dir(p)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    daemon::wait_until(
        std::time::Duration::from_secs(30),
        "the mount to listen",
        || p.join("m.sock").exists(),
    );
    child
}
