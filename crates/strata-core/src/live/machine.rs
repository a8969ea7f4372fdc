//! A domain's libvirt XML as the machine QEMU runs ([`Machine`]): the
//! domain type (TCG or KVM), memory, vCPUs, `<os>` (machine type, direct
//! kernel boot or firmware), `<features>`, `<cpu>`, `<clock>`, the
//! lifecycle actions, `<pm>` and the devices ([`super::devices`]).
//!
//! The guest's hardware must be what the XML says: whatever strata cannot
//! honour is refused, naming the element, never silently dropped. Two
//! things are chosen by strata and not read: PCI addresses (`<address>`,
//! which libvirt fills in at define time; strata places each device on its
//! own root port) and host-side labels and tuning that change nothing the
//! guest sees (`<resource>`, `<seclabel type='none'>`).

use std::path::Path;

use strata_qemu::machine::{
    Accel, ClockBase, CpuModel, DirectKernel, DiskBackend, EmulatorPath, Firmware, Lifecycle,
    MachineType, OnCrash, OnPoweroff, OnReboot,
};
use strata_qemu::Machine;

use super::devices;
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::xml::Element;

/// Top-level elements that describe nothing strata must honour beyond what
/// is read below (names, documentation, metadata for other tools).
const INERT: [&str; 6] = [
    "name",
    "uuid",
    "title",
    "description",
    "metadata",
    "resource",
];

/// Top-level elements read below.
const READ: [&str; 12] = [
    "memory",
    "currentMemory",
    "vcpu",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "devices",
];

/// Refusals name the domain and the element at fault.
pub(crate) struct Refuse<'a>(pub &'a str);

impl Refuse<'_> {
    /// The error for `element` (as `<os>/<loader>`): `problem`.
    pub(crate) fn at(&self, element: &str, problem: impl std::fmt::Display) -> Error {
        Error::invalid(
            format!("domain '{}': {element}", self.0),
            format!("{problem}"),
        )
    }
}

/// The socket QEMU serves domain `domain`'s guest agent channel on when it
/// runs in `run_dir`, or `None` when the domain has no such channel
/// (`<channel type='unix'>` with a virtio `org.qemu.guest_agent.0` target).
pub fn guest_agent_socket(domain: &Domain, run_dir: &Path) -> Option<std::path::PathBuf> {
    devices::guest_agent(domain.element(), run_dir)
}

/// The machine that runs `domain`, its disks attached as `disks` says
/// (target dev → the backend strata serves it from); sockets QEMU makes
/// for the domain go in `run_dir`.
pub fn machine_of(
    domain: &Domain,
    disks: &[(String, DiskBackend)],
    run_dir: &Path,
) -> Result<Machine> {
    let name = domain.name();
    let no = Refuse(&name);
    let x = domain.element();
    for e in x.elements() {
        if !INERT.contains(&e.name.as_str())
            && !READ.contains(&e.name.as_str())
            && e.name != "seclabel"
        {
            return Err(no.at(
                &format!("<{}>", e.name),
                "strata cannot honour this element",
            ));
        }
        if e.name == "seclabel" && e.attr("type") != Some("none") {
            return Err(no.at(
                "<seclabel>",
                "strata runs QEMU without security labels: only type='none'",
            ));
        }
    }
    let mut m = Machine::new(&name);
    m.uuid = Some(domain.uuid());
    m.accel = match x.attr("type") {
        Some("qemu") => Accel::Tcg,
        Some("kvm") => Accel::Kvm,
        other => {
            return Err(no.at(
                &format!("<domain type='{}'>", other.unwrap_or("")),
                "strata runs type 'qemu' (TCG) or 'kvm'",
            ))
        }
    };
    m.memory_mib = memory_mib(&no, x)?;
    m.vcpus = vcpus(&no, x)?;
    os(&no, x, &mut m)?;
    features(&no, x, &mut m)?;
    cpu(&no, x, &mut m)?;
    clock(&no, x, &mut m)?;
    lifecycle(&no, x, &mut m)?;
    pm(&no, x, &mut m)?;
    if let Some(e) = x.child("devices").and_then(|d| d.child_text("emulator")) {
        m.emulator = EmulatorPath::Path(e.trim().into());
    }
    devices::attach(&no, x, disks, run_dir, &mut m)?;
    if x.child("os").and_then(|o| o.child("boot")).is_some() {
        if let Some(first) = m.disks.first_mut() {
            first.boot_index.get_or_insert(1);
        }
    }
    Ok(m)
}

/// libvirt's memory units, in bytes (default KiB).
pub(crate) fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
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
    })
}

/// `<memory>` in MiB, rounded up to whole MiB as libvirt aligns it.
fn memory_mib(no: &Refuse, x: &Element) -> Result<u64> {
    let bytes = |e: &Element, what: &str| -> Result<u64> {
        let unit = e.attr("unit").unwrap_or("KiB");
        let scale =
            unit_bytes(unit).ok_or_else(|| no.at(what, format!("unknown unit '{unit}'")))?;
        let n: u64 = e
            .text()
            .trim()
            .parse()
            .map_err(|_| no.at(what, format!("'{}' is not a size", e.text().trim())))?;
        n.checked_mul(scale)
            .ok_or_else(|| no.at(what, "the size is too large"))
    };
    let mem = x
        .child("memory")
        .ok_or_else(|| no.at("<memory>", "a running domain needs its memory size"))?;
    let total = bytes(mem, "<memory>")?;
    if let Some(cur) = x.child("currentMemory") {
        if bytes(cur, "<currentMemory>")? != total {
            return Err(no.at(
                "<currentMemory>",
                "a balloon target below <memory> is not supported: make them equal",
            ));
        }
    }
    let mib = total.div_ceil(1 << 20);
    if mib == 0 {
        return Err(no.at("<memory>", "the size is zero"));
    }
    Ok(mib)
}

/// `<vcpu>`: the count; a `current` below it (hot-plug) is refused.
fn vcpus(no: &Refuse, x: &Element) -> Result<u32> {
    let Some(v) = x.child("vcpu") else {
        return Ok(1);
    };
    let n: u32 = v
        .text()
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            no.at(
                "<vcpu>",
                format!("'{}' is not a vCPU count", v.text().trim()),
            )
        })?;
    if let Some(cur) = v.attr("current") {
        if cur.parse::<u32>().ok() != Some(n) {
            return Err(no.at("<vcpu current>", "vCPU hot-plug is not supported"));
        }
    }
    if v.attr("cpuset").is_some() {
        return Err(no.at("<vcpu cpuset>", "strata does not pin vCPUs"));
    }
    Ok(n)
}

/// `<os>`: `<type>` (arch, machine, hvm), direct kernel boot, firmware,
/// `<boot dev='hd'>`.
fn os(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    let Some(os) = x.child("os") else {
        return Ok(());
    };
    if let Some(f) = os.attr("firmware") {
        if f != "bios" {
            return Err(no.at(
                &format!("<os firmware='{f}'>"),
                "name the firmware with <loader type='pflash'> and <nvram> instead",
            ));
        }
    }
    for e in os.elements() {
        match e.name.as_str() {
            "type" => {
                if let Some(arch) = e.attr("arch").filter(|a| *a != "x86_64") {
                    return Err(no.at(
                        &format!("<os>/<type arch='{arch}'>"),
                        "strata runs x86_64 guests",
                    ));
                }
                if e.text().trim() != "hvm" {
                    return Err(no.at("<os>/<type>", "the OS type must be 'hvm'"));
                }
                if let Some(machine) = e.attr("machine") {
                    m.machine_type = MachineType::named(machine)
                        .map_err(|err| no.at(&format!("<os>/<type machine='{machine}'>"), err))?;
                }
            }
            "kernel" | "initrd" | "cmdline" => {}
            "boot" => match e.attr("dev") {
                Some("hd") | None => {}
                Some(dev) => {
                    return Err(no.at(
                        &format!("<os>/<boot dev='{dev}'>"),
                        "strata boots from its disks ('hd') or a kernel",
                    ))
                }
            },
            "loader" => {
                if e.attr("type") != Some("pflash") {
                    return Err(no.at("<os>/<loader>", "only type='pflash' (UEFI) is supported"));
                }
                let vars = os
                    .child_text("nvram")
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| {
                        no.at(
                            "<os>/<nvram>",
                            "UEFI needs the machine's own variable store file",
                        )
                    })?;
                m.firmware = Firmware::Uefi {
                    code: e.text().trim().into(),
                    vars: vars.trim().into(),
                };
            }
            "nvram" => {}
            "smbios" | "bootmenu" | "bios" | "acpi" | "init" | "initarg" | "dtb" => {
                return Err(no.at(
                    &format!("<os>/<{}>", e.name),
                    "strata cannot honour this element",
                ))
            }
            other => return Err(no.at(&format!("<os>/<{other}>"), "unknown element")),
        }
    }
    if let Some(kernel) = os.child_text("kernel") {
        m.kernel = Some(DirectKernel {
            kernel: kernel.trim().into(),
            initrd: os.child_text("initrd").map(|t| t.trim().into()),
            cmdline: os.child_text("cmdline").map(Into::into),
        });
    } else if os.child("initrd").is_some() || os.child("cmdline").is_some() {
        return Err(no.at(
            "<os>/<initrd>",
            "an initrd or a command line needs a <kernel>",
        ));
    }
    Ok(())
}

/// `<features>`: ACPI only when asked (as libvirt), the APIC as QEMU has it.
fn features(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    m.features.acpi = false;
    let Some(f) = x.child("features") else {
        return Ok(());
    };
    for e in f.elements() {
        let state = e.attr("state");
        match (e.name.as_str(), state) {
            ("acpi", None | Some("on")) => m.features.acpi = true,
            ("acpi", Some("off")) => {}
            ("apic", None | Some("on")) => m.features.apic = true,
            ("apic", Some("off")) => m.features.apic = false,
            ("pae", None | Some("on")) => {}
            // No VMware backdoor port: Q35 has none, and strata asks none.
            ("vmport", Some("off")) => {}
            (name, _) => {
                return Err(no.at(
                    &format!("<features>/<{name}>"),
                    "strata cannot honour this feature",
                ))
            }
        }
    }
    Ok(())
}

/// `<cpu>`: host-passthrough, or a named model (custom mode).
fn cpu(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    let Some(c) = x.child("cpu") else {
        return Ok(());
    };
    for e in c.elements() {
        match e.name.as_str() {
            "model" => {}
            "topology" => {
                let n = |a: &str| e.attr(a).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
                if (n("sockets"), n("dies"), n("cores"), n("threads")) != (m.vcpus, 1, 1, 1) {
                    return Err(no.at(
                        "<cpu>/<topology>",
                        "strata gives each vCPU its own socket: sockets must be the vCPU count",
                    ));
                }
            }
            other => {
                return Err(no.at(
                    &format!("<cpu>/<{other}>"),
                    "strata cannot honour this element",
                ))
            }
        }
    }
    m.cpu = match c.attr("mode").unwrap_or("custom") {
        "host-passthrough" | "maximum" => CpuModel::HostPassthrough,
        "custom" => match c.child_text("model") {
            Some(model) if !model.trim().is_empty() => CpuModel::Named(model.trim().to_string()),
            _ => CpuModel::Default,
        },
        mode => {
            return Err(no.at(
                &format!("<cpu mode='{mode}'>"),
                "use 'host-passthrough' or a named model",
            ))
        }
    };
    Ok(())
}

/// `<clock>`: the offset and the timers virt-install writes.
fn clock(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    let Some(c) = x.child("clock") else {
        return Ok(());
    };
    m.clock = match c.attr("offset").unwrap_or("utc") {
        "utc" => ClockBase::Utc,
        "localtime" => ClockBase::Localtime,
        other => {
            return Err(no.at(
                &format!("<clock offset='{other}'>"),
                "use 'utc' or 'localtime'",
            ))
        }
    };
    for t in c.elements() {
        let name = t.attr("name").unwrap_or("");
        let shown = format!("<clock>/<timer name='{name}'>");
        if t.name != "timer" {
            return Err(no.at(&format!("<clock>/<{}>", t.name), "unknown element"));
        }
        match (name, t.attr("tickpolicy"), t.attr("present")) {
            ("rtc", Some("catchup"), None | Some("yes")) => m.features.rtc_catchup = true,
            ("rtc", None, None | Some("yes")) => {}
            ("hpet", None, Some("no")) => m.features.hpet = false,
            ("hpet", None, None | Some("yes")) => {}
            // The PIT's tick policy only exists for KVM's in-kernel PIT,
            // where 'delay' is its default; TCG's PIT has no policy.
            ("pit", None | Some("delay"), None | Some("yes")) => {}
            _ => return Err(no.at(&shown, "strata cannot honour this timer setting")),
        }
    }
    Ok(())
}

/// `on_poweroff`, `on_reboot`, `on_crash`.
fn lifecycle(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    let text = |n: &str| x.child_text(n).map(|t| t.trim().to_string());
    let mut l = Lifecycle::default();
    if let Some(v) = text("on_poweroff") {
        l.on_poweroff = match v.as_str() {
            "destroy" => OnPoweroff::Exit,
            "preserve" => OnPoweroff::Pause,
            _ => return Err(no.at(&format!("<on_poweroff>{v}"), "use 'destroy' or 'preserve'")),
        };
    }
    if let Some(v) = text("on_reboot") {
        l.on_reboot = match v.as_str() {
            "restart" => OnReboot::Reset,
            "destroy" => OnReboot::Poweroff,
            _ => return Err(no.at(&format!("<on_reboot>{v}"), "use 'restart' or 'destroy'")),
        };
    }
    if let Some(v) = text("on_crash") {
        l.on_crash = match v.as_str() {
            "destroy" => OnCrash::Poweroff,
            "preserve" => OnCrash::Pause,
            _ => return Err(no.at(&format!("<on_crash>{v}"), "use 'destroy' or 'preserve'")),
        };
    }
    m.lifecycle = l;
    Ok(())
}

/// `<pm>`: whether the guest is offered suspend to RAM and to disk.
fn pm(no: &Refuse, x: &Element, m: &mut Machine) -> Result<()> {
    let Some(p) = x.child("pm") else {
        return Ok(());
    };
    for e in p.elements() {
        let on = match e.attr("enabled") {
            Some("yes") => true,
            Some("no") => false,
            _ => {
                return Err(no.at(
                    &format!("<pm>/<{}>", e.name),
                    "enabled must be 'yes' or 'no'",
                ))
            }
        };
        match e.name.as_str() {
            "suspend-to-mem" => m.features.suspend_to_mem = on,
            "suspend-to-disk" => m.features.suspend_to_disk = on,
            other => return Err(no.at(&format!("<pm>/<{other}>"), "unknown element")),
        }
    }
    Ok(())
}
