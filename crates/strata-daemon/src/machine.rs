//! A minimal stand-in for `strata_core::live::machine::machine_of` (the
//! domain XML → [`Machine`] mapping being written in strata-core), with its
//! exact signature, so that switching to it is a one-line change. It reads
//! what the tests' domains use — `type` (qemu/kvm), name, uuid, memory,
//! vcpu, `os/type@machine`, kernel/initrd/cmdline, `on_*` lifecycle
//! actions, the emulator, file serials and disks — and refuses devices it
//! does not know, naming the element.

use std::path::{Path, PathBuf};

use strata_core::{Domain, Error, Result};
use strata_qemu::machine::{
    Accel, DirectKernel, DiskBackend, EmulatorPath, MachineType, OnCrash, OnPoweroff, OnReboot,
    Serial,
};
use strata_qemu::Machine;

/// The machine that runs `domain`, its disks served by `disks` (target
/// dev → backend), its files in `run_dir`.
pub fn machine_of(
    domain: &Domain,
    disks: &[(String, DiskBackend)],
    _run_dir: &Path,
) -> Result<Machine> {
    let xml = domain.element();
    let what = |el: &str| format!("domain '{}': <{el}>", domain.name());
    let bad = |el: &str, why: String| Error::invalid(what(el), why);
    let mut m = Machine::new(domain.name());
    m.uuid = Some(domain.uuid());
    m.accel = match xml.attr("type").unwrap_or("qemu") {
        "qemu" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        t => return Err(bad("domain", format!("type='{t}' is not qemu or kvm"))),
    };
    if let Some(mem) = xml.child("memory") {
        m.memory_mib = mebibytes(&mem.text(), mem.attr("unit").unwrap_or("KiB"))
            .ok_or_else(|| bad("memory", format!("'{}' is not a size", mem.text().trim())))?;
    }
    if let Some(v) = xml.child_text("vcpu") {
        m.vcpus = v
            .parse()
            .map_err(|_| bad("vcpu", format!("'{v}' is not a count")))?;
    }
    if let Some(os) = xml.child("os") {
        if let Some(t) = os.child("type") {
            if let Some(arch) = t.attr("arch").filter(|a| *a != "x86_64") {
                return Err(bad("os/type", format!("arch='{arch}': only x86_64 runs")));
            }
            if let Some(mt) = t.attr("machine") {
                m.machine_type =
                    MachineType::named(mt).map_err(|e| bad("os/type", e.to_string()))?;
            }
        }
        if let Some(kernel) = os.child_text("kernel") {
            m.kernel = Some(DirectKernel {
                kernel: PathBuf::from(kernel),
                initrd: os.child_text("initrd").map(PathBuf::from),
                cmdline: os.child_text("cmdline").map(Into::into),
            });
        }
    }
    m.lifecycle.on_poweroff = match xml.child_text("on_poweroff").as_deref() {
        None | Some("destroy") => OnPoweroff::Exit,
        Some("preserve") => OnPoweroff::Pause,
        Some(a) => return Err(bad("on_poweroff", format!("'{a}' is not supported"))),
    };
    m.lifecycle.on_reboot = match xml.child_text("on_reboot").as_deref() {
        None | Some("restart") => OnReboot::Reset,
        Some("destroy") => OnReboot::Poweroff,
        Some(a) => return Err(bad("on_reboot", format!("'{a}' is not supported"))),
    };
    m.lifecycle.on_crash = match xml.child_text("on_crash").as_deref() {
        None | Some("destroy") => OnCrash::Poweroff,
        Some("preserve") => OnCrash::Pause,
        Some(a) => return Err(bad("on_crash", format!("'{a}' is not supported"))),
    };
    if let Some(devices) = xml.child("devices") {
        for dev in devices.elements() {
            match dev.name.as_str() {
                "emulator" => m.emulator = EmulatorPath::Path(PathBuf::from(dev.text().trim())),
                "disk" => {
                    let target = dev
                        .child("target")
                        .and_then(|t| t.attr("dev"))
                        .unwrap_or_default();
                    let backend = disks
                        .iter()
                        .find(|(t, _)| t == target)
                        .map(|(_, b)| b.clone())
                        .ok_or_else(|| bad("disk", format!("disk '{target}' is not served")))?;
                    m.disks.push(strata_qemu::machine::Disk {
                        id: target.to_string(),
                        backend,
                        boot_index: None,
                    });
                }
                "serial" | "console" if dev.attr("type") == Some("file") => {
                    let path = dev
                        .child("source")
                        .and_then(|s| s.attr("path"))
                        .ok_or_else(|| {
                            bad(&dev.name, "a file serial needs <source path=…/>".into())
                        })?;
                    m.serial = Serial::File(PathBuf::from(path));
                }
                other => {
                    return Err(bad(
                        &format!("devices/{other}"),
                        "not supported yet by strata's machine mapping".into(),
                    ))
                }
            }
        }
    }
    Ok(m)
}

/// `text` in `unit` (libvirt's units) as MiB, rounded up.
fn mebibytes(text: &str, unit: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    let bytes_per: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some(n.checked_mul(bytes_per)?.div_ceil(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_what_the_tests_use_and_names_what_it_refuses() {
        let dom = Domain::from_xml(
            "<domain type='qemu'><name>vm</name><memory unit='MiB'>300</memory><vcpu>2</vcpu>
             <os><type arch='x86_64' machine='q35'>hvm</type><kernel>/k</kernel><cmdline>console=ttyS0</cmdline></os>
             <on_reboot>destroy</on_reboot>
             <devices><disk type='file'><target dev='vda'/></disk>
             <serial type='file'><source path='/tmp/c.log'/></serial></devices></domain>",
            "t",
        )
        .unwrap();
        let backend = DiskBackend::Nbd {
            socket: "/s".into(),
            export: "vda".into(),
            read_only: false,
            serial: None,
        };
        let m = machine_of(&dom, &[("vda".into(), backend)], Path::new("/r")).unwrap();
        assert_eq!((m.memory_mib, m.vcpus), (300, 2));
        assert_eq!(m.lifecycle.on_reboot, OnReboot::Poweroff);
        assert_eq!(m.disks[0].id, "vda");
        assert_eq!(m.serial, Serial::File("/tmp/c.log".into()));
        let dom = Domain::from_xml(
            "<domain><name>vm</name><devices><interface type='user'/></devices></domain>",
            "t",
        )
        .unwrap();
        let err = machine_of(&dom, &[], Path::new("/r"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("devices/interface"), "{err}");
        assert_eq!(mebibytes("1048576", "KiB"), Some(1024));
        assert_eq!(mebibytes("1", "b"), Some(1));
    }
}
