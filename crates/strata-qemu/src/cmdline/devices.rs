//! The device part of the command line: video, PCIe root ports,
//! controllers, disks, network, serial, guest agent channel, input, rng,
//! balloon and panic device, in that order.
//!
//! Ids are fixed: a disk or interface keeps the id its description gives
//! it; strata's own devices use the names in
//! [`crate::machine::validate::RESERVED_IDS`]; root ports are `pci.<n>`.
//! Derived names: chardev `chr-<id>`, NBD node `nbd-<id>`, netdev
//! `hostnet-<id>`.

use serde_json::{json, Map, Value};

use super::opts::{self, json_path, Opts};
use super::{uses_root_ports, Args};
use crate::machine::validate::MAX_ROOT_PORTS;
use crate::machine::{Chipset, DiskBackend, Machine, NetBackend, Serial};
use crate::{Error, Result};

/// The guest agent's virtio-serial port name.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// A PCI device waiting for its place on the bus.
struct PciDevice(Map<String, Value>);

/// Adds every device of `m` to `a`.
pub(super) fn push_devices(m: &Machine, a: &mut Args) -> Result<()> {
    let q35 = uses_root_ports(m);
    let usb = m.controllers.usb || m.usb_tablet;
    let virtio_serial = m.controllers.virtio_serial || m.guest_agent.is_some();

    // The video card first, at a fixed slot: 1 on pcie.0, 2 on pci.0.
    if let Some(driver) = m.video.driver() {
        let (bus, addr) = if q35 {
            ("pcie.0", "0x1")
        } else {
            ("pci.0", "0x2")
        };
        a.push(
            "-device",
            opts::json(json!({"driver": driver, "id": "video0", "bus": bus, "addr": addr})),
        );
    }

    // PCI endpoints, in a fixed order; each gets a root port on Q35.
    let mut pci: Vec<PciDevice> = Vec::new();
    if usb {
        pci.push(dev(
            json!({"driver": "qemu-xhci", "id": "usb", "p2": 15, "p3": 15}),
        ));
    }
    if virtio_serial {
        pci.push(dev(
            json!({"driver": "virtio-serial-pci", "id": "virtio-serial0"}),
        ));
    }
    if m.controllers.sata && m.machine_type.chipset() == Chipset::I440fx {
        // Q35 has its AHCI controller built in (00:1f.2).
        pci.push(dev(json!({"driver": "ich9-ahci", "id": "sata0"})));
    }

    let mut before: Vec<(&str, std::ffi::OsString)> = Vec::new();
    for (i, d) in m.disks.iter().enumerate() {
        let field = format!("disks[{i}].socket");
        let mut device = match &d.backend {
            DiskBackend::VhostUser {
                socket,
                num_queues,
                queue_size,
            } => {
                let chr = format!("chr-{}", d.id);
                before.push((
                    "-chardev",
                    // reconnect-ms: a backend that restarts (strata's daemon)
                    // is connected to again, unseen by the guest.
                    Opts::new("socket")
                        .kv("id", &chr)
                        .kv("path", socket)
                        .kv("reconnect-ms", "1000")
                        .build(),
                ));
                let mut v = json!({
                    "driver": "vhost-user-blk-pci", "id": d.id,
                    "chardev": chr, "num-queues": num_queues,
                });
                if let Some(q) = queue_size {
                    v["queue-size"] = json!(q);
                }
                v
            }
            DiskBackend::Nbd {
                socket,
                export,
                read_only,
                serial,
            } => {
                let node = format!("nbd-{}", d.id);
                let blockdev = json!({
                    "driver": "nbd", "node-name": node,
                    "server": {"type": "unix", "path": json_path(socket, &field)?},
                    "export": export, "read-only": read_only,
                });
                before.push(("-blockdev", opts::json(blockdev)));
                let mut v = json!({"driver": "virtio-blk-pci", "id": d.id, "drive": node});
                if let Some(s) = serial {
                    v["serial"] = json!(s);
                }
                v
            }
        };
        if let Some(b) = d.boot_index {
            device["bootindex"] = json!(b);
        }
        pci.push(dev(device));
    }
    for n in &m.nics {
        let netdev = format!("hostnet-{}", n.id);
        match n.backend {
            NetBackend::User => {
                before.push(("-netdev", opts::json(json!({"type": "user", "id": netdev}))));
            }
        }
        pci.push(dev(json!({
            "driver": "virtio-net-pci", "id": n.id, "netdev": netdev, "mac": n.mac.to_string(),
        })));
    }
    if m.rng {
        before.push((
            "-object",
            opts::json(
                json!({"qom-type": "rng-random", "id": "objrng0", "filename": "/dev/urandom"}),
            ),
        ));
        pci.push(dev(
            json!({"driver": "virtio-rng-pci", "id": "rng0", "rng": "objrng0"}),
        ));
    }
    if m.balloon {
        pci.push(dev(
            json!({"driver": "virtio-balloon-pci", "id": "balloon0"}),
        ));
    }

    if q35 {
        let ports = pci.len() + m.controllers.spare_root_ports as usize;
        if ports > MAX_ROOT_PORTS {
            return Err(Error::invalid(
                "controllers.spare_root_ports",
                format!("{ports} PCIe root ports in all; at most {MAX_ROOT_PORTS} fit"),
            ));
        }
        for i in 1..=ports {
            a.push("-device", opts::json(root_port(i)));
        }
        for (i, d) in pci.iter_mut().enumerate() {
            d.0.insert("bus".into(), json!(format!("pci.{}", i + 1)));
            d.0.insert("addr".into(), json!("0x0"));
        }
    }
    // Backends before the devices that use them.
    for (opt, value) in before {
        a.push(opt, value);
    }
    for d in pci {
        a.push("-device", opts::json(Value::Object(d.0)));
    }

    // ISA and bus-attached devices.
    match &m.serial {
        Serial::None => {}
        Serial::File(path) => {
            let chr = Opts::new("file")
                .kv("id", "chr-serial0")
                .kv("path", path)
                .kv("append", "on");
            a.push("-chardev", chr.build());
        }
        Serial::Socket(path) => {
            let chr = Opts::new("socket")
                .kv("id", "chr-serial0")
                .kv("path", path)
                .kv("server", "on")
                .kv("wait", "off");
            a.push("-chardev", chr.build());
        }
    }
    if m.serial != Serial::None {
        a.push(
            "-device",
            opts::json(json!({"driver": "isa-serial", "id": "serial0", "chardev": "chr-serial0"})),
        );
    }
    if let Some(sock) = &m.guest_agent {
        let chr = Opts::new("socket")
            .kv("id", "chr-ga")
            .kv("path", sock)
            .kv("server", "on")
            .kv("wait", "off");
        a.push("-chardev", chr.build());
        a.push(
            "-device",
            opts::json(json!({
                "driver": "virtserialport", "id": "channel0", "bus": "virtio-serial0.0",
                "nr": 1, "chardev": "chr-ga", "name": GUEST_AGENT_PORT,
            })),
        );
    }
    if m.usb_tablet {
        a.push(
            "-device",
            opts::json(
                json!({"driver": "usb-tablet", "id": "input0", "bus": "usb.0", "port": "1"}),
            ),
        );
    }
    if m.panic_device {
        a.push(
            "-device",
            opts::json(json!({"driver": "pvpanic", "id": "panic0"})),
        );
    }
    Ok(())
}

/// A JSON object as a PCI device.
fn dev(v: Value) -> PciDevice {
    match v {
        Value::Object(map) => PciDevice(map),
        _ => unreachable!("devices are built as JSON objects"),
    }
}

/// Root port `n` (1-based), packed eight functions to a slot from slot 2 of
/// `pcie.0`, as libvirt lays them out.
fn root_port(n: usize) -> Value {
    let slot = 2 + (n - 1) / 8;
    let function = (n - 1) % 8;
    let mut v = json!({
        "driver": "pcie-root-port", "id": format!("pci.{n}"),
        "bus": "pcie.0", "addr": format!("{slot:#x}.{function:#x}"),
        "chassis": n, "port": 0x10 + n - 1,
    });
    if function == 0 {
        v["multifunction"] = json!(true);
    }
    v
}
