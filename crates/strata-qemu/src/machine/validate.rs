//! Checks a [`Machine`] as a whole before any argument is built, so a bad
//! description fails with the field it is about rather than with QEMU's
//! message from a log.

use std::collections::HashSet;
use std::path::Path;

use super::{Chipset, CpuModel, DiskBackend, Graphics, Machine, Serial, VncListen};
use crate::{Error, Result};

/// Longest unix socket path: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest disk or interface id: derived names (`nbd-<id>`) must stay
/// within QEMU's 31-byte block node names.
pub const MAX_DEVICE_ID: usize = 24;

/// Most guest memory accepted, in MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;

/// Most vCPUs accepted (QEMU's own limit per machine type may be lower).
pub const MAX_VCPUS: u32 = 1024;

/// Most PCIe root ports (each needs its own `chassis` and `port` byte).
pub const MAX_ROOT_PORTS: usize = 200;

/// Device ids the command line gives its own devices; disks and
/// interfaces cannot use them.
pub const RESERVED_IDS: &[&str] = &[
    "usb",
    "virtio-serial0",
    "sata0",
    "video0",
    "serial0",
    "channel0",
    "input0",
    "rng0",
    "balloon0",
    "panic0",
];

/// Validates everything the command line builder relies on.
pub fn validate(m: &Machine) -> Result<()> {
    if m.name.is_empty() || m.name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must be non-empty, without control characters",
        ));
    }
    if let Some(uuid) = &m.uuid {
        check_uuid(uuid)?;
    }
    if m.memory_mib == 0 || m.memory_mib > MAX_MEMORY_MIB {
        return Err(Error::invalid(
            "memory_mib",
            format!("{} MiB is outside 1..={MAX_MEMORY_MIB}", m.memory_mib),
        ));
    }
    if m.vcpus == 0 || m.vcpus > MAX_VCPUS {
        return Err(Error::invalid(
            "vcpus",
            format!("{} is outside 1..={MAX_VCPUS}", m.vcpus),
        ));
    }
    if let CpuModel::Named(name) = &m.cpu {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::invalid(
                "cpu",
                format!("{name:?} is not a CPU model name"),
            ));
        }
    }
    if !m.features.apic && m.machine_type.chipset() == Chipset::Q35 {
        return Err(Error::invalid(
            "features.apic",
            "off needs the pc machine type: q35's PCIe root ports need MSI, which needs the APIC",
        ));
    }

    let mut ids: HashSet<&str> = HashSet::new();
    let mut boot: HashSet<u32> = HashSet::new();
    for (i, d) in m.disks.iter().enumerate() {
        let field = |f: &str| format!("disks[{i}].{f}");
        check_id(&d.id, &field("id"), &mut ids)?;
        if let Some(b) = d.boot_index {
            if !boot.insert(b) {
                return Err(Error::invalid(
                    field("boot_index"),
                    format!("{b} is used twice"),
                ));
            }
        }
        match &d.backend {
            DiskBackend::VhostUser {
                socket,
                num_queues,
                queue_size,
            } => {
                check_socket(socket, &field("socket"))?;
                if *num_queues == 0 {
                    return Err(Error::invalid(field("num_queues"), "must be at least 1"));
                }
                if let Some(q) = queue_size {
                    if !q.is_power_of_two() || !(2..=1024).contains(q) {
                        return Err(Error::invalid(
                            field("queue_size"),
                            format!("{q} is not a power of two in 2..=1024"),
                        ));
                    }
                }
            }
            DiskBackend::Nbd {
                socket,
                export,
                serial,
                ..
            } => {
                check_socket(socket, &field("socket"))?;
                if export.len() > 4096 {
                    return Err(Error::invalid(
                        field("export"),
                        "is longer than NBD's 4096 bytes",
                    ));
                }
                if let Some(s) = serial {
                    // virtio-blk's ID field is 20 bytes; QEMU cuts longer ones.
                    if s.len() > 20 || s.chars().any(char::is_control) {
                        return Err(Error::invalid(
                            field("serial"),
                            format!("{s:?}: at most 20 bytes, no control characters"),
                        ));
                    }
                }
            }
        }
    }

    let mut macs = HashSet::new();
    for (i, n) in m.nics.iter().enumerate() {
        check_id(&n.id, &format!("nics[{i}].id"), &mut ids)?;
        if !macs.insert(n.mac) {
            return Err(Error::invalid(
                format!("nics[{i}].mac"),
                format!("{} is used twice", n.mac),
            ));
        }
    }

    match &m.serial {
        Serial::Socket(p) => check_socket(p, "serial")?,
        Serial::File(p) if p.as_os_str().is_empty() => {
            return Err(Error::invalid("serial", "the file path is empty"))
        }
        _ => {}
    }
    if let Some(ga) = &m.guest_agent {
        check_socket(ga, "guest_agent")?;
    }
    if let Some(Graphics::Vnc(listen)) = &m.graphics {
        match listen {
            VncListen::Unix(p) => check_socket(p, "graphics")?,
            VncListen::Loopback { display: Some(d) } if *d > 65535 - 5900 => {
                return Err(Error::invalid(
                    "graphics",
                    format!("VNC display {d} is past port 65535"),
                ))
            }
            _ => {}
        }
    }
    if m.controllers.spare_root_ports as usize > MAX_ROOT_PORTS {
        return Err(Error::invalid(
            "controllers.spare_root_ports",
            format!(
                "{} is more than {MAX_ROOT_PORTS}",
                m.controllers.spare_root_ports
            ),
        ));
    }
    Ok(())
}

/// A QEMU id: a letter, then letters, digits, `-`, `.` or `_`; short enough
/// for derived node names; not one of the command line's own; unique.
fn check_id<'a>(id: &'a str, field: &str, seen: &mut HashSet<&'a str>) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && id.len() <= MAX_DEVICE_ID;
    if !ok {
        return Err(Error::invalid(
            field,
            format!(
                "{id:?} is not a device id (a letter, then letters, digits, '-', '.', '_'; \
                 at most {MAX_DEVICE_ID} bytes)"
            ),
        ));
    }
    if RESERVED_IDS.contains(&id) || is_root_port_id(id) {
        return Err(Error::invalid(
            field,
            format!("{id:?} is a name strata gives its own devices"),
        ));
    }
    if !seen.insert(id) {
        return Err(Error::invalid(field, format!("{id:?} is used twice")));
    }
    Ok(())
}

/// Root ports are `pci.<n>`.
fn is_root_port_id(id: &str) -> bool {
    id.strip_prefix("pci.")
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

/// A unix socket path that fits `sun_path`.
pub(crate) fn check_socket(path: &Path, field: &str) -> Result<()> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(Error::invalid(field, "the socket path is empty"));
    }
    if len > MAX_SOCKET_PATH {
        return Err(Error::invalid(
            field,
            format!(
                "socket path {} is {len} bytes; unix sockets allow {MAX_SOCKET_PATH}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex.
fn check_uuid(uuid: &str) -> Result<()> {
    let ok = uuid.len() == 36
        && uuid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("uuid", format!("{uuid:?} is not a UUID")))
    }
}
