//! Locating and building the guest kit that `scripts/guest-kit` makes:
//! Debian's cloud kernel, a busybox initramfs with fio, and a boot disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The QEMU system emulator every guest runs in.
pub const QEMU: &str = "qemu-system-x86_64";

/// A built kit: the files a guest boots from.
#[derive(Debug, Clone)]
pub struct Kit {
    /// Debian bookworm's cloud kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The base initramfs (gzipped newc cpio): busybox, the virtio-blk
    /// modules, fio, blkdiscard and an `/init` that runs `/workload`.
    pub initramfs: PathBuf,
    /// A raw disk that firmware boots into the same kernel and initramfs,
    /// with no workload.
    pub boot_disk: PathBuf,
    script: PathBuf,
    dir: PathBuf,
}

/// The root of the workspace (where `scripts/` lives).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    here.canonicalize().unwrap_or(here)
}

/// Where the kit is built: `$STRATA_GUEST_KIT`, else `target/guest-kit` in
/// the workspace (the script's own default).
pub fn kit_dir() -> PathBuf {
    match std::env::var_os("STRATA_GUEST_KIT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target/guest-kit"),
    }
}

/// Whether this is a CI run (`CI=true`, as `.ci/run` sets): then nothing
/// may be skipped for lack of QEMU or the kit.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The kit, built on first use in this process by `scripts/guest-kit`
/// (which holds a file lock while it builds, so parallel test processes
/// build it once and the others wait), or why it cannot be had.
pub fn try_kit() -> Result<&'static Kit> {
    static KIT: OnceLock<Result<Kit, String>> = OnceLock::new();
    KIT.get_or_init(|| build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Unavailable(e.clone()))
}

/// The kit for a test: `None` (after printing why, so the test can return
/// early and count as skipped) when QEMU or the kit is unavailable; under
/// `CI=true` that is a failure instead, and this panics.
pub fn kit() -> Option<&'static Kit> {
    match try_kit() {
        Ok(kit) => Some(kit),
        Err(e) if in_ci() => panic!("{e} (CI=true: run scripts/peers)"),
        Err(e) => {
            eprintln!("skipping: {e} (run scripts/peers to install what is missing)");
            None
        }
    }
}

fn build() -> Result<Kit> {
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err(Error::Unavailable(format!("{QEMU} does not run"))),
    }
    let dir = kit_dir();
    let kit = Kit {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        boot_disk: dir.join("boot.img"),
        script: workspace_root().join("scripts/guest-kit"),
        dir,
    };
    kit.script_run(&["build"], None)?;
    for file in [&kit.kernel, &kit.initramfs, &kit.boot_disk] {
        if !file.is_file() {
            return Err(Error::Unavailable(format!(
                "scripts/guest-kit did not make {}",
                file.display()
            )));
        }
    }
    Ok(kit)
}

impl Kit {
    /// Writes to `out` a small gzipped newc cpio holding `script` as
    /// `/workload` (run by the guest's `/init` with `sh`, in `/tmp`) and
    /// each of `files` under `/data/`. Appended to the base initramfs it
    /// adds them without rebuilding it.
    pub fn workload_cpio(&self, script: &str, files: &[&Path], out: &Path) -> Result<()> {
        let mut args = vec!["workload".as_ref(), "-".as_ref(), out.as_os_str()];
        args.extend(files.iter().map(|f| f.as_os_str()));
        self.script_run(&args, Some(script))
    }

    /// Writes to `out` the base initramfs followed by a workload cpio
    /// (see [`Kit::workload_cpio`]): an initrd for `-initrd`.
    pub fn initrd(&self, script: &str, files: &[&Path], out: &Path) -> Result<()> {
        let extra = out.with_extension("workload.cpio.gz");
        self.workload_cpio(script, files, &extra)?;
        fs::copy(&self.initramfs, out).map_err(|e| Error::io("copying the initramfs", out, e))?;
        let append = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new().append(true).open(out)?;
            io::copy(&mut File::open(&extra)?, &mut f)?;
            f.flush()
        };
        append().map_err(|e| Error::io("appending the workload", out, e))?;
        fs::remove_file(&extra).map_err(|e| Error::io("removing", extra, e))
    }

    /// Writes to `out` a raw disk that firmware (SeaBIOS) boots: one FAT
    /// filesystem from sector 0 (no partition table, so that it also boots
    /// under TCG from a vhost-user backend; see `scripts/guest-kit`) with
    /// syslinux, the kernel, and the initramfs with this workload (see
    /// [`Kit::workload_cpio`]).
    pub fn boot_disk(&self, script: &str, files: &[&Path], out: &Path) -> Result<()> {
        let mut args = vec!["bootdisk".as_ref(), "-".as_ref(), out.as_os_str()];
        args.extend(files.iter().map(|f| f.as_os_str()));
        self.script_run(&args, Some(script))
    }

    /// Runs `scripts/guest-kit ARGS` for this kit's directory, with
    /// `stdin` as its standard input.
    fn script_run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], stdin: Option<&str>) -> Result<()> {
        let mut cmd = Command::new(&self.script);
        cmd.args(args)
            .env("STRATA_GUEST_KIT", &self.dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("running", &self.script, e))?;
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(text.as_bytes())
                .map_err(|e| Error::io("writing the workload to", &self.script, e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("waiting for", &self.script, e))?;
        if out.status.success() {
            return Ok(());
        }
        let command = std::iter::once(self.script.as_os_str())
            .chain(args.iter().map(|a| a.as_ref()))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
