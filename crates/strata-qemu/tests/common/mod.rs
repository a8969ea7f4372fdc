//! Helpers for the tests that run real QEMU (TCG only: nested KVM is not
//! assumed): short run directories, a tiny multiboot "kernel" that prints
//! its command line on the serial port and then halts, powers off or
//! resets, and qemu-storage-daemon as a disk backend.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_qemu::machine::DirectKernel;
use strata_qemu::{Machine, StartOptions, VmEvent, VmEvents};

/// Time allowed for anything QEMU does here.
pub const T: Duration = Duration::from_secs(30);

/// `fut`, or a panic naming `what` after [`T`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(T, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A temporary directory with a short path (unix socket paths must fit in
/// 107 bytes).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sq")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Start options for a run in `dir/run`, with short timeouts.
pub fn start_options(dir: &Path, paused: bool) -> StartOptions {
    let mut o = StartOptions::new(dir.join("run"));
    o.paused = paused;
    o.destroy_grace = Duration::from_secs(5);
    o
}

/// What the tiny kernel does after printing its command line.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Halts with interrupts off: the machine idles forever.
    Halt,
    /// Writes S5 + SLP_EN to Q35's PM1a control register (0x604): a guest
    /// power-off.
    PoweroffQ35,
    /// Writes 6 to the reset control register (0xcf9): a guest reboot.
    Reset,
}

/// Writes a multiboot image that QEMU's `-kernel` loads at 1 MiB. Its code
/// (32-bit protected mode, EBX = multiboot info) copies the command line
/// (`mbi->cmdline`, the kernel's path then `-append`) to COM1 and a
/// newline, then does `then`, then halts.
pub fn tiny_kernel(dir: &Path, then: Then) -> PathBuf {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16; // the load addresses below are valid
    const BASE: u32 = 0x10_0000;
    let mut img = Vec::new();
    for word in [
        MAGIC,
        FLAGS,
        MAGIC.wrapping_add(FLAGS).wrapping_neg(),
        BASE,
        BASE,
        0,
        0,
        BASE + 32,
    ] {
        img.extend_from_slice(&word.to_le_bytes());
    }
    img.extend_from_slice(&[
        0xFC, // cld
        0x8B, 0x73, 0x10, // mov esi, [ebx+16]   ; the command line
        0xBA, 0xF8, 0x03, 0x00, 0x00, // mov edx, 0x3f8 ; COM1
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
        0xB0, 0x0A, // done: mov al, '\n'
        0xEE, // out dx, al
    ]);
    match then {
        Then::Halt => {}
        Then::PoweroffQ35 => img.extend_from_slice(&[
            0x66, 0xBA, 0x04, 0x06, // mov dx, 0x604
            0x66, 0xB8, 0x00, 0x20, // mov ax, SLP_EN | SLP_TYP(0)
            0x66, 0xEF, // out dx, ax
        ]),
        Then::Reset => img.extend_from_slice(&[
            0xBA, 0xF9, 0x0C, 0x00, 0x00, // mov edx, 0xcf9
            0xB0, 0x06, // mov al, 6
            0xEE, // out dx, al
        ]),
    }
    img.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp hlt
    let path = dir.join(format!("kernel-{then:?}"));
    std::fs::write(&path, img).unwrap();
    path
}

/// A machine that boots the tiny kernel with `append` on its command line
/// and a serial port logging to `dir/console.log`.
pub fn tiny_machine(dir: &Path, name: &str, then: Then, append: &str) -> Machine {
    let mut m = Machine::new(name);
    m.memory_mib = 64;
    m.kernel = Some(DirectKernel {
        kernel: tiny_kernel(dir, then),
        initrd: None,
        cmdline: Some(append.into()),
    });
    m.serial = strata_qemu::machine::Serial::File(dir.join("console.log"));
    m
}

/// Waits until `path` holds `text`.
pub async fn wait_for_text(path: &Path, text: &str) -> String {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(text) {
            return s;
        }
        assert!(
            start.elapsed() < T,
            "{} never held {text:?}; it holds {s:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event up to and including the exit.
pub async fn all_events(ev: &mut VmEvents) -> Vec<VmEvent> {
    let mut out = Vec::new();
    while let Some(e) = within("events up to the exit", ev.next()).await {
        out.push(e);
    }
    out
}

/// Whether a process with this pid exists (a zombie counts).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// qemu-storage-daemon serving images, killed on drop.
pub struct StorageDaemon {
    child: Child,
}

impl StorageDaemon {
    /// Starts it with `args` and waits for each of `sockets` to appear.
    pub fn start(args: &[String], sockets: &[&Path]) -> StorageDaemon {
        let child = Command::new("qemu-storage-daemon")
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (package qemu-utils) is needed");
        let d = StorageDaemon { child };
        let start = Instant::now();
        while !sockets.iter().all(|s| s.exists()) {
            assert!(
                start.elapsed() < T,
                "qemu-storage-daemon made no sockets {sockets:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a qcow2 image with qemu-img.
pub fn qcow2(path: &Path, size: &str) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success());
}
