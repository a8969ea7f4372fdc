//! A [`Machine`] turned into `qemu-system-*` arguments.
//!
//! The result is a plain `Vec<OsString>` (the arguments after the program
//! name), the same for the same input, so it can be tested exactly. What it
//! always holds:
//!
//! - `-S`: the machine starts paused, so the caller can connect to QMP,
//!   configure, and `cont`; `-nodefaults` and `-no-user-config`, so every
//!   device is one listed here; `-display none` unless graphics are asked
//!   for; `-sandbox on,…` when the emulator has seccomp.
//! - QMP on a unix socket QEMU listens on (`-chardev socket,…,server=on,
//!   wait=off` + `-mon …,mode=control`), and `-pidfile`.
//! - Devices in a fixed order with fixed ids. On Q35 every PCI device sits
//!   behind its own `pcie-root-port` (`pci.1`, `pci.2`, …, as libvirt
//!   does), so it can be unplugged; the video card is at `pcie.0` slot 1.
//!
//! Values go as JSON wherever QEMU takes JSON (`-device`, `-blockdev`,
//! `-object`, `-netdev`); elsewhere commas in values are doubled.

mod devices;
mod opts;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;

use serde_json::json;

use crate::emulator::Capabilities;
use crate::machine::validate::{check_socket, validate};
use crate::machine::{
    Accel, Chipset, ClockBase, CpuModel, Firmware, Graphics, Machine, OnCrash, OnPoweroff,
    OnReboot, VncListen,
};
use crate::Result;
use opts::{json_path, Opts};

/// The id of the memory backend object when guest memory is shared.
pub const MEMORY_BACKEND_ID: &str = "pc.ram";

/// The id of the QMP monitor's chardev.
pub const QMP_CHARDEV_ID: &str = "chr-qmp";

/// Per-run paths that are not part of the machine's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The QMP socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// Where QEMU writes its process id.
    pub pid_file: PathBuf,
}

/// The arguments that run `machine` (after the program name). Validates the
/// machine first.
pub fn command_line(
    machine: &Machine,
    runtime: &Runtime,
    caps: &Capabilities,
) -> Result<Vec<OsString>> {
    validate(machine)?;
    check_socket(&runtime.qmp_socket, "qmp_socket")?;
    let mut a = Args(Vec::new());
    let m = machine;

    a.push(
        "-name",
        Opts::empty()
            .kv("guest", &m.name)
            .raw("debug-threads=on")
            .build(),
    );
    if let Some(uuid) = &m.uuid {
        a.push("-uuid", uuid);
    }
    a.flag("-S");
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.push("-msg", "timestamp=on");
    if caps.sandbox {
        a.push(
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        );
    }

    // Machine, accelerator, CPU, memory.
    let mut machine_opt =
        Opts::new(m.machine_type.name()).kv("acpi", if m.features.acpi { "on" } else { "off" });
    let shared = m.needs_shared_memory();
    if shared {
        machine_opt = machine_opt.kv("memory-backend", MEMORY_BACKEND_ID);
    }
    if !m.features.hpet {
        machine_opt = machine_opt.kv("hpet", "off");
    }
    if matches!(m.firmware, Firmware::Uefi { .. }) {
        machine_opt = machine_opt
            .kv("pflash0", "fw-code")
            .kv("pflash1", "fw-vars");
    }
    a.push("-machine", machine_opt.build());
    a.push("-accel", m.accel.as_str());
    let cpu = match (&m.cpu, m.accel) {
        (CpuModel::Default, _) if m.features.apic => None,
        (CpuModel::Default, Accel::Tcg) => Some("qemu64"),
        (CpuModel::Default, Accel::Kvm) => Some("kvm64"),
        (CpuModel::HostPassthrough, Accel::Kvm) => Some("host"),
        (CpuModel::HostPassthrough, Accel::Tcg) => Some("max"),
        (CpuModel::Named(n), _) => Some(n.as_str()),
    };
    if let Some(cpu) = cpu {
        let mut o = Opts::new(cpu);
        if !m.features.apic {
            o = o.raw("-apic");
        }
        a.push("-cpu", o.build());
    }
    a.push("-m", format!("{}M", m.memory_mib));
    if shared {
        a.push(
            "-object",
            opts::json(json!({
                "qom-type": "memory-backend-memfd",
                "id": MEMORY_BACKEND_ID,
                "size": m.memory_mib << 20,
                "share": true,
            })),
        );
    }
    a.push("-smp", m.vcpus.to_string());
    let rtc = match m.clock {
        ClockBase::Utc => "base=utc",
        ClockBase::Localtime => "base=localtime",
    };
    if m.features.rtc_catchup {
        a.push("-rtc", format!("{rtc},driftfix=slew"));
    } else {
        a.push("-rtc", rtc);
    }
    // The power-management device that offers S3/S4 to the guest.
    let pm = match m.machine_type.chipset() {
        Chipset::Q35 => "ICH9-LPC",
        Chipset::I440fx => "PIIX4_PM",
    };
    if !m.features.suspend_to_mem {
        a.push("-global", format!("{pm}.disable_s3=1"));
    }
    if !m.features.suspend_to_disk {
        a.push("-global", format!("{pm}.disable_s4=1"));
    }
    let l = &m.lifecycle;
    let reboot = match l.on_reboot {
        OnReboot::Reset => "reset",
        OnReboot::Poweroff => "shutdown",
    };
    let shutdown = match l.on_poweroff {
        OnPoweroff::Exit => "poweroff",
        OnPoweroff::Pause => "pause",
    };
    let panic = match l.on_crash {
        OnCrash::Poweroff => "shutdown",
        OnCrash::Pause => "pause",
        OnCrash::ExitFailure => "exit-failure",
        OnCrash::Ignore => "none",
    };
    a.push(
        "-action",
        format!("reboot={reboot},shutdown={shutdown},panic={panic}"),
    );

    // Firmware and boot.
    if let Firmware::Uefi { code, vars } = &m.firmware {
        for (node, path, field, read_only) in [
            ("fw-code", code, "firmware.code", true),
            ("fw-vars", vars, "firmware.vars", false),
        ] {
            let path = json_path(path, field)?;
            a.push(
                "-blockdev",
                opts::json(json!({
                    "driver": "file", "node-name": format!("{node}-file"),
                    "filename": path, "read-only": read_only,
                })),
            );
            a.push(
                "-blockdev",
                opts::json(json!({
                    "driver": "raw", "node-name": node,
                    "file": format!("{node}-file"), "read-only": read_only,
                })),
            );
        }
    }
    if let Some(k) = &m.kernel {
        a.push("-kernel", &k.kernel);
        if let Some(initrd) = &k.initrd {
            a.push("-initrd", initrd);
        }
        if let Some(cmdline) = &k.cmdline {
            a.push("-append", cmdline);
        }
    }
    a.push("-boot", "strict=on");

    // Control: QMP, pid file, display.
    a.push(
        "-chardev",
        Opts::new("socket")
            .kv("id", QMP_CHARDEV_ID)
            .kv("path", &runtime.qmp_socket)
            .kv("server", "on")
            .kv("wait", "off")
            .build(),
    );
    a.push(
        "-mon",
        Opts::empty()
            .kv("chardev", QMP_CHARDEV_ID)
            .kv("mode", "control")
            .build(),
    );
    a.push("-pidfile", &runtime.pid_file);
    match &m.graphics {
        None => a.push("-display", "none"),
        Some(Graphics::Vnc(VncListen::Loopback { display: Some(d) })) => {
            a.push("-vnc", format!("127.0.0.1:{d}"))
        }
        Some(Graphics::Vnc(VncListen::Loopback { display: None })) => {
            a.push("-vnc", "127.0.0.1:0,to=99")
        }
        Some(Graphics::Vnc(VncListen::Unix(p))) => {
            let mut v = OsString::from("unix:");
            v.push(Opts::new(p).build());
            a.push("-vnc", v)
        }
    }

    devices::push_devices(m, &mut a)?;
    Ok(a.0)
}

/// The argument list being built.
pub(crate) struct Args(Vec<OsString>);

impl Args {
    /// A flag with no value.
    fn flag(&mut self, f: &str) {
        self.0.push(f.into());
    }

    /// An option and its value.
    fn push(&mut self, option: &str, value: impl Into<OsString>) {
        self.0.push(option.into());
        self.0.push(value.into());
    }
}

/// Whether devices sit behind PCIe root ports.
fn uses_root_ports(m: &Machine) -> bool {
    m.machine_type.chipset() == Chipset::Q35
}
