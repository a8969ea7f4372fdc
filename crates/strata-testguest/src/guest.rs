//! Running a guest: a builder for the QEMU command line, a handle on the
//! running machine, and what it left behind.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{tail, Error, Result};
use crate::kit::{Kit, QEMU};

/// The line `/init` prints before it runs the workload.
pub const START_MARKER: &str = "STRATA-GUEST-START";
/// The prefix of the line `/init` prints with the workload's exit code.
pub const EXIT_MARKER: &str = "STRATA-GUEST-EXIT=";

/// How the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// `-kernel` and `-initrd` (QEMU loads them; fastest).
    Kernel,
    /// Firmware (SeaBIOS) boots a disk made from the kit, attached first.
    Firmware,
    /// Firmware boots whatever disk the caller attached.
    FirmwareOwnDisk,
}

/// A guest to start: `qemu-system-x86_64 -accel tcg -nographic -no-reboot`
/// with the kit's kernel, a workload and the devices the caller adds.
///
/// ```no_run
/// # fn main() -> strata_testguest::Result<()> {
/// let Some(kit) = strata_testguest::kit() else { return Ok(()) };
/// let run = strata_testguest::Guest::new(kit)
///     .workload("echo hello; exit 3")
///     .run()?;
/// assert_eq!(run.exit_code, Some(3));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Guest<'k> {
    kit: &'k Kit,
    boot: Boot,
    workload: Option<String>,
    files: Vec<PathBuf>,
    append: String,
    memory_mib: u32,
    smp: u32,
    shared_memory: bool,
    args: Vec<OsString>,
    disks: usize,
    timeout: Duration,
}

impl<'k> Guest<'k> {
    /// A guest booting the kit's kernel directly, 512 MiB, one CPU, no
    /// workload, a 120 s deadline (TCG is slow; a boot takes a few seconds).
    pub fn new(kit: &'k Kit) -> Self {
        Guest {
            kit,
            boot: Boot::Kernel,
            workload: None,
            files: Vec::new(),
            append: String::new(),
            memory_mib: 512,
            smp: 1,
            shared_memory: false,
            args: Vec::new(),
            disks: 0,
            timeout: Duration::from_secs(120),
        }
    }

    /// The shell script `/init` runs (with busybox `sh`, in `/tmp`); its
    /// exit code is reported as [`GuestRun::exit_code`].
    pub fn workload(mut self, script: &str) -> Self {
        self.workload = Some(script.to_string());
        self
    }

    /// A host file the workload finds under `/data/` (by its file name).
    pub fn data_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Boots through firmware (SeaBIOS) instead of `-kernel`: from a disk
    /// made with the kit (the workload on it), attached read-only as the
    /// first virtio-blk disk, so the guest sees it as `/dev/vda` and the
    /// caller's disks after it.
    pub fn firmware(mut self) -> Self {
        self.boot = Boot::Firmware;
        self
    }

    /// Boots through firmware from a disk the caller attaches (for example
    /// one made with [`Kit::boot_disk`], served by a backend under test;
    /// give its device `bootindex=0`). The workload is the disk's.
    pub fn firmware_own_disk(mut self) -> Self {
        self.boot = Boot::FirmwareOwnDisk;
        self
    }

    /// More kernel command line (after `console=ttyS0 panic=-1`); direct
    /// kernel boot only.
    pub fn append(mut self, cmdline: &str) -> Self {
        self.append.push(' ');
        self.append.push_str(cmdline);
        self
    }

    /// Guest memory, in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Virtual CPUs.
    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// Guest memory in a shared memfd (`memory-backend-memfd,share=on` on a
    /// NUMA node), which vhost-user backends need to map it.
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shared_memory = on;
        self
    }

    /// One more QEMU argument, as given.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More QEMU arguments, as given.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// A qcow2 image as a virtio-blk disk, through QEMU's own block layer
    /// (`-blockdev file` + `-blockdev qcow2` + `-device virtio-blk-pci`).
    pub fn qcow2_disk(self, path: &Path) -> Self {
        self.blockdev_disk("qcow2", path)
    }

    /// A raw image as a virtio-blk disk (`-blockdev file` + `raw`).
    pub fn raw_disk(self, path: &Path) -> Self {
        self.blockdev_disk("raw", path)
    }

    fn blockdev_disk(mut self, format: &str, path: &Path) -> Self {
        let n = self.disks;
        self.disks += 1;
        let mut file = OsString::from(format!("driver=file,node-name=file{n},filename="));
        file.push(escape_option(path.as_os_str()));
        self.arg("-blockdev")
            .arg(file)
            .arg("-blockdev")
            .arg(format!("driver={format},file=file{n},node-name=disk{n}"))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=disk{n},id=vblk{n}"))
    }

    /// A vhost-user-blk disk served on the unix socket `socket` (turns on
    /// [`Guest::shared_memory`]). QEMU gives it one queue per vCPU, so the
    /// backend must offer at least [`Guest::smp`] queues.
    pub fn vhost_user_blk(mut self, socket: &Path) -> Self {
        let n = self.disks;
        self.disks += 1;
        self.shared_memory = true;
        let mut chardev = OsString::from(format!("socket,id=vu{n},path="));
        chardev.push(escape_option(socket.as_os_str()));
        self.arg("-chardev")
            .arg(chardev)
            .arg("-device")
            .arg(format!("vhost-user-blk-pci,chardev=vu{n},id=vublk{n}"))
    }

    /// How long [`RunningGuest::wait`] waits before killing the guest.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the guest and waits for it to power off.
    pub fn run(self) -> Result<GuestRun> {
        self.spawn()?.wait()
    }

    /// Starts the guest and returns at once; the guest is killed when the
    /// handle is dropped.
    pub fn spawn(self) -> Result<RunningGuest> {
        let dir = tempfile::Builder::new()
            .prefix("strata-guest")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir", std::env::temp_dir(), e))?;
        let console = dir.path().join("console.log");
        let stderr_path = dir.path().join("qemu.stderr");
        let script = self.workload.as_deref();
        let files: Vec<&Path> = self.files.iter().map(PathBuf::as_path).collect();
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-no-user-config", "-monitor", "none"])
            .arg("-serial")
            .arg(with_prefix("file:", &console))
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.smp.to_string()]);
        if self.shared_memory {
            let size = self.memory_mib;
            cmd.arg("-object")
                .arg(format!("memory-backend-memfd,id=mem,size={size}M,share=on"))
                .args(["-numa", "node,memdev=mem"]);
        }
        match self.boot {
            Boot::Kernel => {
                let initrd = match script {
                    Some(script) => {
                        let initrd = dir.path().join("initrd.cpio.gz");
                        self.kit.initrd(script, &files, &initrd)?;
                        initrd
                    }
                    None if files.is_empty() => self.kit.initramfs.clone(),
                    None => {
                        let initrd = dir.path().join("initrd.cpio.gz");
                        self.kit.initrd("", &files, &initrd)?;
                        initrd
                    }
                };
                cmd.arg("-kernel")
                    .arg(&self.kit.kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .arg("-append")
                    .arg(format!("console=ttyS0 panic=-1{}", self.append));
            }
            Boot::Firmware => {
                let disk = if script.is_some() || !files.is_empty() {
                    let disk = dir.path().join("boot.img");
                    self.kit.boot_disk(script.unwrap_or(""), &files, &disk)?;
                    disk
                } else {
                    self.kit.boot_disk.clone()
                };
                let mut file =
                    OsString::from("driver=file,node-name=bootfile,read-only=on,filename=");
                file.push(escape_option(disk.as_os_str()));
                cmd.arg("-blockdev")
                    .arg(file)
                    .args([
                        "-blockdev",
                        "driver=raw,file=bootfile,node-name=boot,read-only=on",
                    ])
                    .args(["-device", "virtio-blk-pci,drive=boot,id=vboot,bootindex=0"]);
            }
            Boot::FirmwareOwnDisk => {}
        }
        cmd.args(&self.args);
        let stderr =
            File::create(&stderr_path).map_err(|e| Error::io("creating", &stderr_path, e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| Error::io("starting", QEMU, e))?;
        Ok(RunningGuest {
            child: Some(child),
            console,
            stderr: stderr_path,
            started,
            boot: None,
            timeout: self.timeout,
            _dir: dir,
        })
    }
}

/// A running guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningGuest {
    child: Option<Child>,
    console: PathBuf,
    stderr: PathBuf,
    started: Instant,
    boot: Option<Duration>,
    timeout: Duration,
    _dir: tempfile::TempDir,
}

impl RunningGuest {
    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The console output so far (carriage returns removed).
    pub fn console(&self) -> String {
        read_console(&self.console)
    }

    /// Waits until the console shows `needle` (for a workload that signals
    /// a point the test acts at), up to the guest's deadline. Fails if the
    /// guest ends first or the deadline passes (then it is killed).
    pub fn wait_for(&mut self, needle: &str) -> Result<()> {
        loop {
            let console = self.console();
            self.note_boot(&console);
            if console.contains(needle) {
                return Ok(());
            }
            if self.poll()?.is_some() {
                return Err(Error::Unavailable(format!(
                    "the guest ended before printing {needle:?}; console (tail):\n{}",
                    tail(&self.console())
                )));
            }
            self.check_deadline()?;
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the guest to power off, up to its deadline (then kills it
    /// and fails with [`Error::Timeout`]), and returns what it left.
    pub fn wait(mut self) -> Result<GuestRun> {
        let status = loop {
            if self.boot.is_none() {
                let console = self.console();
                self.note_boot(&console);
            }
            if let Some(status) = self.poll()? {
                break status;
            }
            self.check_deadline()?;
            sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        let console = self.console();
        self.note_boot(&console);
        let exit_code = console
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
            .and_then(|code| code.trim().parse().ok());
        Ok(GuestRun {
            exit_code,
            status,
            elapsed,
            boot: self.boot,
            qemu_stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            console,
        })
    }

    fn note_boot(&mut self, console: &str) {
        if self.boot.is_none() && console.contains(START_MARKER) {
            self.boot = Some(self.started.elapsed());
        }
    }

    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|e| Error::io("waiting for", QEMU, e)),
            None => Ok(None),
        }
    }

    fn check_deadline(&mut self) -> Result<()> {
        if self.started.elapsed() < self.timeout {
            return Ok(());
        }
        self.kill();
        Err(Error::Timeout {
            after: self.timeout,
            console: self.console(),
        })
    }

    /// Kills QEMU now (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a guest left when it powered off.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The console (ttyS0) output, carriage returns removed.
    pub console: String,
    /// The workload's exit code, from the `STRATA-GUEST-EXIT=` line;
    /// `None` when the guest never printed one (a panic, a crash).
    pub exit_code: Option<i32>,
    /// How QEMU ended.
    pub status: ExitStatus,
    /// From QEMU's start to its end.
    pub elapsed: Duration,
    /// From QEMU's start to the workload's start (as the host saw the
    /// `STRATA-GUEST-START` line, to within 20 ms).
    pub boot: Option<Duration>,
    /// What QEMU printed on stderr.
    pub qemu_stderr: String,
}

impl GuestRun {
    /// Panics, showing the console's tail and QEMU's stderr, unless the
    /// workload exited with `code`.
    pub fn expect_exit(self, code: i32) -> Self {
        assert_eq!(
            self.exit_code,
            Some(code),
            "guest workload exit code\n--- console (tail) ---\n{}\n--- qemu stderr ---\n{}",
            tail(&self.console),
            self.qemu_stderr
        );
        self
    }

    /// The workload's own output: the console between the start marker
    /// and the exit line.
    pub fn workload_output(&self) -> &str {
        let from = self
            .console
            .find(START_MARKER)
            .map_or(0, |i| i + START_MARKER.len());
        let rest = &self.console[from..];
        let to = rest.rfind(EXIT_MARKER).unwrap_or(rest.len());
        rest[..to].trim_matches('\n')
    }
}

fn read_console(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\r', "")
}

/// A path inside a QEMU option value: commas are doubled.
fn escape_option(value: &OsStr) -> OsString {
    OsString::from(value.to_string_lossy().replace(',', ",,"))
}

fn with_prefix(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}
