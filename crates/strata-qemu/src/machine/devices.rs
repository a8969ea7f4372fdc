//! The devices of a [`super::Machine`]: disks, network interfaces, serial
//! port, controllers, graphics and video.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A disk the guest sees as a virtio block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The device id (`vda`): the QEMU device's `id`, unique in the machine.
    pub id: String,
    /// Where the disk's data comes from.
    pub backend: DiskBackend,
    /// The firmware's boot order (`bootindex`); lower boots first.
    pub boot_index: Option<u32>,
}

/// Where a disk's blocks are served from. strata serves them; QEMU never
/// opens an image file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBackend {
    /// A `vhost-user-blk-pci` device whose backend listens on `socket`.
    /// Read-only mode and the serial number are the backend's to
    /// advertise (`VIRTIO_BLK_F_RO`, `GET_ID`): the QEMU device has no such
    /// properties. Needs shared guest memory, which the command line adds.
    VhostUser {
        /// The backend's unix socket.
        socket: PathBuf,
        /// Request queues (at least one).
        num_queues: u16,
        /// Entries per queue (a power of two); QEMU's default when `None`.
        queue_size: Option<u32>,
    },
    /// A `virtio-blk-pci` device over an NBD client blockdev connected to a
    /// unix socket.
    Nbd {
        /// The NBD server's unix socket.
        socket: PathBuf,
        /// The export's name.
        export: String,
        /// Open the export read-only; the guest sees a read-only disk.
        read_only: bool,
        /// The serial number the guest reads.
        serial: Option<String>,
    },
}

/// A network interface: a `virtio-net-pci` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The device id (`net0`), unique in the machine.
    pub id: String,
    /// The MAC address.
    pub mac: MacAddr,
    /// What the interface is connected to.
    pub backend: NetBackend,
}

/// The host side of a network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetBackend {
    /// QEMU's user-mode network stack (`-netdev user`): NAT, no privileges.
    User,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = crate::Error;

    /// Parses `52:54:00:12:34:56`; refuses a multicast address, which no
    /// interface can have.
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = |why: &str| crate::Error::invalid("mac", format!("{s:?} {why}"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts
                .next()
                .ok_or_else(|| bad("has fewer than six bytes"))?;
            if p.len() != 2 {
                return Err(bad("is not six two-digit hex bytes"));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad("is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(bad("has more than six bytes"));
        }
        if out[0] & 1 != 0 {
            return Err(bad("is a multicast address"));
        }
        Ok(MacAddr(out))
    }
}

/// The first serial port (an `isa-serial` device, the guest's `ttyS0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// No serial port.
    None,
    /// Output appended to a file (input is never read).
    File(PathBuf),
    /// A unix socket QEMU listens on, for an interactive console.
    Socket(PathBuf),
}

/// Controllers asked for explicitly. A device that needs a controller
/// brings it (a USB tablet brings USB, the guest agent virtio-serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Controllers {
    /// A `qemu-xhci` USB controller.
    pub usb: bool,
    /// A `virtio-serial-pci` controller.
    pub virtio_serial: bool,
    /// A SATA (AHCI) controller: built into Q35, an `ich9-ahci` device on
    /// `pc`.
    pub sata: bool,
    /// Free PCIe root ports (Q35 only) left for devices added later, beyond
    /// the one every device gets.
    pub spare_root_ports: u32,
}

/// Remote graphics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Graphics {
    /// A VNC server, never on a public address.
    Vnc(VncListen),
}

/// Where the VNC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncListen {
    /// TCP on 127.0.0.1: display `n` is port 5900 + n; `None` takes the
    /// first free display from 0 to 99 (`query-vnc` tells which).
    Loopback {
        /// The display number.
        display: Option<u16>,
    },
    /// A unix socket.
    Unix(PathBuf),
}

/// The video card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// None.
    None,
    /// Standard VGA (`VGA`).
    Vga,
    /// virtio-gpu with VGA compatibility (`virtio-vga`), virt-install's
    /// choice for Linux guests.
    Virtio,
    /// QXL with VGA compatibility (`qxl-vga`).
    Qxl,
}

impl Video {
    /// The QEMU device, if any.
    pub fn driver(self) -> Option<&'static str> {
        match self {
            Video::None => None,
            Video::Vga => Some("VGA"),
            Video::Virtio => Some("virtio-vga"),
            Video::Qxl => Some("qxl-vga"),
        }
    }
}
