//! A domain's `<devices>` as QEMU devices: disks (served by strata, each
//! attached through the backend the caller gives), controllers, `user`
//! network interfaces, the first serial port, the guest agent channel,
//! input devices, VNC on loopback, video, balloon, RNG and panic device —
//! the set `virt-install` writes for a Linux guest. Anything else is
//! refused, naming the element.

use std::path::{Path, PathBuf};

use strata_qemu::machine::{
    Disk, DiskBackend, Graphics, MacAddr, NetBackend, Nic, Serial, Video, VncListen,
};
use strata_qemu::Machine;

use super::machine::Refuse;
use crate::error::Result;
use crate::xml::Element;

/// The guest agent's virtio-serial port name.
const GUEST_AGENT: &str = "org.qemu.guest_agent.0";

/// Where QEMU serves the guest agent channel `<channel>` of a run in
/// `run_dir`: its `<source path>`, else `run_dir/qga.sock`.
fn agent_socket(channel: &Element, run_dir: &Path) -> PathBuf {
    channel
        .child("source")
        .and_then(|s| s.attr("path"))
        .map_or_else(|| run_dir.join("qga.sock"), Into::into)
}

/// The socket of the guest agent channel of domain XML `x` running in
/// `run_dir`, or `None` when it has none.
pub(crate) fn guest_agent(x: &Element, run_dir: &Path) -> Option<PathBuf> {
    x.child("devices")?
        .elements()
        .filter(|e| e.name == "channel" && e.attr("type") == Some("unix"))
        .find(|e| {
            let target = e.child("target");
            target.and_then(|t| t.attr("type")) == Some("virtio")
                && target.and_then(|t| t.attr("name")) == Some(GUEST_AGENT)
        })
        .map(|e| agent_socket(e, run_dir))
}

/// Attaches every device of `x`'s `<devices>` to `m`.
pub(crate) fn attach(
    no: &Refuse,
    x: &Element,
    disks: &[(String, DiskBackend)],
    run_dir: &Path,
    m: &mut Machine,
) -> Result<()> {
    let Some(devices) = x.child("devices") else {
        return Ok(());
    };
    let mut video_seen = false;
    for e in devices.elements() {
        let at = |what: &str| format!("<devices>/<{}{what}>", e.name);
        let kind = e.attr("type").unwrap_or("");
        match e.name.as_str() {
            "emulator" => {}
            "disk" => m.disks.push(disk(no, e, disks)?),
            "controller" => controller(no, e, m)?,
            "interface" => {
                if kind != "user" {
                    return Err(no.at(
                        &at(&format!(" type='{kind}'")),
                        "strata connects interfaces of type 'user' only",
                    ));
                }
                let model = e.child("model").and_then(|c| c.attr("type"));
                if model != Some("virtio") {
                    return Err(no.at(&at(">/<model"), "the model must be 'virtio'"));
                }
                let mac = match e.child("mac").and_then(|c| c.attr("address")) {
                    Some(a) => a.parse().map_err(|err| no.at(&at(">/<mac"), err))?,
                    None => generated_mac(&m.name, m.nics.len()),
                };
                m.nics.push(Nic {
                    id: format!("net{}", m.nics.len()),
                    mac,
                    backend: NetBackend::User,
                });
            }
            "serial" | "console" => serial(no, e, run_dir, m)?,
            "channel" => {
                let target = e.child("target");
                let name = target.and_then(|t| t.attr("name"));
                if kind != "unix"
                    || target.and_then(|t| t.attr("type")) != Some("virtio")
                    || name != Some(GUEST_AGENT)
                {
                    return Err(no.at(
                        &at(&format!(" type='{kind}'")),
                        "strata attaches only the guest agent channel (type='unix', virtio, org.qemu.guest_agent.0)",
                    ));
                }
                m.guest_agent = Some(agent_socket(e, run_dir));
            }
            "input" => match (kind, e.attr("bus")) {
                ("tablet", Some("usb")) => m.usb_tablet = true,
                // The PS/2 mouse and keyboard are built into the chipset.
                ("mouse" | "keyboard", Some("ps2") | None) => {}
                _ => {
                    return Err(no.at(
                        &at(&format!(" type='{kind}'")),
                        "strata attaches a USB tablet and the built-in PS/2 devices only",
                    ))
                }
            },
            "graphics" => m.graphics = Some(graphics(no, e)?),
            "video" => {
                if video_seen {
                    return Err(no.at(&at(""), "strata attaches one video card"));
                }
                video_seen = true;
                let model = e.child("model");
                if model
                    .and_then(|c| c.attr("heads"))
                    .is_some_and(|h| h != "1")
                {
                    return Err(no.at(&at(">/<model heads"), "one head only"));
                }
                m.video = match model.and_then(|c| c.attr("type")) {
                    Some("virtio") => Video::Virtio,
                    Some("vga") => Video::Vga,
                    Some("qxl") => Video::Qxl,
                    Some("none") => Video::None,
                    other => {
                        return Err(no.at(
                            &at(&format!(">/<model type='{}'", other.unwrap_or(""))),
                            "use virtio, vga, qxl or none",
                        ))
                    }
                };
            }
            "memballoon" => match e.attr("model") {
                Some("virtio") => m.balloon = true,
                Some("none") => {}
                other => {
                    return Err(no.at(
                        &at(&format!(" model='{}'", other.unwrap_or(""))),
                        "use 'virtio' or 'none'",
                    ))
                }
            },
            "rng" => {
                let backend = e.child("backend");
                let source = backend.map(|b| b.text()).unwrap_or_default();
                if e.attr("model") != Some("virtio")
                    || backend.and_then(|b| b.attr("model")) != Some("random")
                    || !matches!(source.trim(), "" | "/dev/urandom")
                {
                    return Err(no.at(
                        &at(""),
                        "strata attaches a virtio RNG fed from /dev/urandom only",
                    ));
                }
                m.rng = true;
            }
            "panic" => match e.attr("model") {
                Some("isa") | None => m.panic_device = true,
                Some(other) => {
                    return Err(no.at(&at(&format!(" model='{other}'")), "use model='isa'"))
                }
            },
            "audio" if kind == "none" => {}
            _ => return Err(no.at(&at(""), "strata cannot attach this device")),
        }
    }
    Ok(())
}

/// One `<disk>`: a virtio disk served through the backend given for its
/// target.
fn disk(no: &Refuse, e: &Element, disks: &[(String, DiskBackend)]) -> Result<Disk> {
    let target = e.child("target");
    let dev = target.and_then(|t| t.attr("dev")).unwrap_or("");
    let at = |what: &str| format!("<devices>/<disk> '{dev}'{what}");
    let device = e.attr("device").unwrap_or("disk");
    if device != "disk" {
        return Err(no.at(
            &at(&format!(" device='{device}'")),
            "strata serves disks (device='disk') only",
        ));
    }
    let bus = target.and_then(|t| t.attr("bus"));
    if !(bus == Some("virtio") || (bus.is_none() && dev.starts_with("vd"))) {
        return Err(no.at(
            &at(&format!(" bus='{}'", bus.unwrap_or(""))),
            "strata serves disks over virtio (bus='virtio')",
        ));
    }
    for c in e.elements() {
        match c.name.as_str() {
            "driver" | "source" | "target" | "address" | "alias" | "boot" | "serial"
            | "readonly" | "backingStore" => {}
            other => {
                return Err(no.at(
                    &at(&format!("/<{other}>")),
                    "strata cannot honour this element of a running disk",
                ))
            }
        }
    }
    let mut backend = disks
        .iter()
        .find(|(t, _)| t == dev)
        .map(|(_, b)| b.clone())
        .ok_or_else(|| no.at(&at(""), "the disk is not served"))?;
    if let DiskBackend::Nbd { serial, .. } = &mut backend {
        if serial.is_none() {
            *serial = e.child_text("serial").map(|s| s.trim().to_string());
        }
    }
    let boot_index = match e.child("boot").and_then(|b| b.attr("order")) {
        Some(o) => Some(
            o.parse()
                .map_err(|_| no.at(&at("/<boot order>"), format!("'{o}' is not a number")))?,
        ),
        None => None,
    };
    Ok(Disk {
        id: dev.to_string(),
        backend,
        boot_index,
    })
}

/// A `<controller>`: USB (qemu-xhci), SATA, virtio-serial, and the PCI
/// root and root ports libvirt lists (strata places devices on ports of
/// its own).
fn controller(no: &Refuse, e: &Element, m: &mut Machine) -> Result<()> {
    let kind = e.attr("type").unwrap_or("");
    let model = e.attr("model");
    match (kind, model) {
        ("usb", Some("qemu-xhci")) => m.controllers.usb = true,
        ("usb", Some("none")) => {}
        ("sata", _) => m.controllers.sata = true,
        ("virtio-serial", _) => m.controllers.virtio_serial = true,
        ("pci", Some("pcie-root" | "pcie-root-port" | "pci-root")) => {}
        // The PIIX IDE controller of a `pc` machine is built in.
        ("ide", _) if e.attr("index").unwrap_or("0") == "0" => {}
        _ => {
            return Err(no.at(
                &format!(
                    "<devices>/<controller type='{kind}' model='{}'>",
                    model.unwrap_or("")
                ),
                "strata cannot attach this controller",
            ))
        }
    }
    Ok(())
}

/// `<serial>` or `<console>` on port 0: a file, or (for `pty`) a unix
/// socket in the run directory.
fn serial(no: &Refuse, e: &Element, run_dir: &Path, m: &mut Machine) -> Result<()> {
    let kind = e.attr("type").unwrap_or("");
    let target = e.child("target");
    let port = target.and_then(|t| t.attr("port")).unwrap_or("0");
    let at = format!("<devices>/<{} type='{kind}'>", e.name);
    if port != "0" {
        return Err(no.at(&at, "strata attaches the first serial port only"));
    }
    if let Some(t) = target.and_then(|t| t.attr("type")) {
        if !matches!(t, "isa-serial" | "serial") {
            return Err(no.at(&at, format!("target type '{t}': use an ISA serial port")));
        }
    }
    let wanted = match kind {
        "file" => {
            let path = e
                .child("source")
                .and_then(|s| s.attr("path"))
                .ok_or_else(|| no.at(&at, "a file serial port needs <source path>"))?;
            Serial::File(path.into())
        }
        "pty" => Serial::Socket(run_dir.join("console.sock")),
        _ => return Err(no.at(&at, "use type 'file' or 'pty'")),
    };
    // A <console> repeats serial port 0: it adds nothing when one is set.
    if e.name == "console" && m.serial != Serial::None {
        return Ok(());
    }
    if e.name == "serial" && m.serial != Serial::None {
        return Err(no.at(&at, "strata attaches the first serial port only"));
    }
    m.serial = wanted;
    Ok(())
}

/// `<graphics type='vnc'>` on loopback or a unix socket, never public.
fn graphics(no: &Refuse, e: &Element) -> Result<Graphics> {
    let kind = e.attr("type").unwrap_or("");
    let at = format!("<devices>/<graphics type='{kind}'>");
    if kind != "vnc" {
        return Err(no.at(&at, "strata serves VNC only"));
    }
    if e.attr("passwd").is_some() {
        return Err(no.at(
            &at,
            "VNC passwords are not supported (it listens on loopback)",
        ));
    }
    let listen = e.child("listen");
    if let Some(path) = e.attr("socket").or_else(|| {
        listen
            .filter(|l| l.attr("type") == Some("socket"))
            .and_then(|l| l.attr("socket"))
    }) {
        return Ok(Graphics::Vnc(VncListen::Unix(path.into())));
    }
    let address = e
        .attr("listen")
        .or_else(|| listen.and_then(|l| l.attr("address")));
    if let Some(a) = address {
        if !matches!(a, "127.0.0.1" | "localhost" | "::1") {
            return Err(no.at(
                &format!("{at} listen='{a}'"),
                "VNC listens on loopback only",
            ));
        }
    }
    let display = match e.attr("port") {
        None | Some("-1") => None,
        Some(p) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| (5900..6000).contains(p))
                .ok_or_else(|| {
                    no.at(&format!("{at} port='{p}'"), "use a port from 5900 to 5999")
                })?;
            Some(port - 5900)
        }
    };
    Ok(Graphics::Vnc(VncListen::Loopback { display }))
}

/// A stable locally administered MAC for interface `n` of `name`, in
/// QEMU's 52:54:00 prefix (as libvirt makes one when the XML has none).
fn generated_mac(name: &str, n: usize) -> MacAddr {
    // FNV-1a over the name and the index: stable across starts.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes().chain((n as u32).to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, a, b, c])
}
