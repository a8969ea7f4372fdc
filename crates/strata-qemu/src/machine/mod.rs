//! The typed description of a machine to run: what a libvirt domain says
//! about the emulator, CPU, memory, firmware and devices, in QEMU's terms.
//!
//! A [`Machine`] is plain data with public fields: build one with
//! [`Machine::new`] and set what differs. Nothing is checked until the
//! command line is built ([`crate::cmdline::command_line`]), which validates
//! the whole description first and refuses it with
//! [`crate::Error::InvalidMachine`] naming the field.

mod devices;
pub(crate) mod validate;

use std::ffi::OsString;
use std::path::PathBuf;

pub use devices::{
    Controllers, Disk, DiskBackend, Graphics, MacAddr, NetBackend, Nic, Serial, Video, VncListen,
};

/// The program name searched on `PATH` when a machine names no emulator.
pub const DEFAULT_EMULATOR: &str = "qemu-system-x86_64";

/// A machine to run under QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// The guest's name (`-name guest=…`); also names its threads.
    pub name: String,
    /// The SMBIOS UUID (`-uuid`), as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: Option<String>,
    /// Which `qemu-system-*` binary to run.
    pub emulator: EmulatorPath,
    /// TCG (emulation) or KVM.
    pub accel: Accel,
    /// The machine type (`q35`, `pc`, or a versioned name of either).
    pub machine_type: MachineType,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The CPU model.
    pub cpu: CpuModel,
    /// Platform features.
    pub features: Features,
    /// What the guest's real-time clock starts from.
    pub clock: ClockBase,
    /// What happens when the guest powers off, reboots or panics.
    pub lifecycle: Lifecycle,
    /// The firmware that boots the machine.
    pub firmware: Firmware,
    /// A kernel to boot directly (the firmware still runs first).
    pub kernel: Option<DirectKernel>,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub nics: Vec<Nic>,
    /// The first serial port.
    pub serial: Serial,
    /// Controllers asked for explicitly (devices bring the ones they need).
    pub controllers: Controllers,
    /// Remote graphics; without it QEMU runs with `-display none`.
    pub graphics: Option<Graphics>,
    /// The video card.
    pub video: Video,
    /// A USB tablet (absolute pointer), as virt-install adds.
    pub usb_tablet: bool,
    /// A virtio-rng device fed from `/dev/urandom`.
    pub rng: bool,
    /// A virtio memory balloon.
    pub balloon: bool,
    /// A virtio-serial channel for qemu-guest-agent
    /// (`org.qemu.guest_agent.0`), served by QEMU on this unix socket.
    pub guest_agent: Option<PathBuf>,
    /// An ISA `pvpanic` device, so that [`Lifecycle::on_crash`] applies.
    pub panic_device: bool,
    /// Guest memory as a shared memfd, as vhost-user devices need. Turned on
    /// whatever this says when a disk is vhost-user.
    pub shared_memory: bool,
}

impl Machine {
    /// A machine with QEMU's usual defaults and no devices: q35 under TCG,
    /// 256 MiB, one vCPU, the default CPU model, ACPI and APIC on, UTC
    /// clock, SeaBIOS, no disks, no serial port, no graphics.
    pub fn new(name: impl Into<String>) -> Self {
        Machine {
            name: name.into(),
            uuid: None,
            emulator: EmulatorPath::default(),
            accel: Accel::Tcg,
            machine_type: MachineType::q35(),
            memory_mib: 256,
            vcpus: 1,
            cpu: CpuModel::Default,
            features: Features::default(),
            clock: ClockBase::Utc,
            lifecycle: Lifecycle::default(),
            firmware: Firmware::Bios,
            kernel: None,
            disks: Vec::new(),
            nics: Vec::new(),
            serial: Serial::None,
            controllers: Controllers::default(),
            graphics: None,
            video: Video::None,
            usb_tablet: false,
            rng: false,
            balloon: false,
            guest_agent: None,
            panic_device: false,
            shared_memory: false,
        }
    }

    /// Whether guest memory is a shared memfd (asked for, or needed by a
    /// vhost-user disk).
    pub fn needs_shared_memory(&self) -> bool {
        self.shared_memory
            || self
                .disks
                .iter()
                .any(|d| matches!(d.backend, DiskBackend::VhostUser { .. }))
    }
}

/// Which emulator binary runs a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulatorPath {
    /// This exact file.
    Path(PathBuf),
    /// A program name looked up on `PATH` when the machine starts.
    Search(OsString),
}

impl Default for EmulatorPath {
    fn default() -> Self {
        EmulatorPath::Search(DEFAULT_EMULATOR.into())
    }
}

/// The accelerator (`-accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's emulator: works everywhere, slowly.
    Tcg,
    /// The kernel's hypervisor (`/dev/kvm`).
    Kvm,
}

impl Accel {
    /// The name `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The chipset family of a machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chipset {
    /// Q35 / ICH9 with PCI Express: devices sit behind `pcie-root-port`s.
    Q35,
    /// i440FX / PIIX: conventional PCI, devices on `pci.0`.
    I440fx,
}

/// A machine type: `q35`, `pc`, or a versioned name (`pc-q35-10.0`,
/// `pc-i440fx-10.0`). A versioned name keeps the guest-visible hardware
/// fixed across QEMU upgrades, which saved memory state relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineType {
    name: String,
    chipset: Chipset,
}

impl MachineType {
    /// The newest Q35 machine of the emulator.
    pub fn q35() -> Self {
        MachineType {
            name: "q35".into(),
            chipset: Chipset::Q35,
        }
    }

    /// The newest i440FX machine of the emulator.
    pub fn pc() -> Self {
        MachineType {
            name: "pc".into(),
            chipset: Chipset::I440fx,
        }
    }

    /// A machine type by name; only the Q35 and i440FX families are known.
    pub fn named(name: &str) -> crate::Result<Self> {
        let chipset = if name == "q35" || name.starts_with("pc-q35-") {
            Chipset::Q35
        } else if name == "pc" || name.starts_with("pc-i440fx-") {
            Chipset::I440fx
        } else {
            return Err(crate::Error::invalid(
                "machine_type",
                format!("{name:?} is not a q35 or pc (i440fx) machine type"),
            ));
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(crate::Error::invalid(
                "machine_type",
                format!("{name:?} has characters a machine type cannot have"),
            ));
        }
        Ok(MachineType {
            name: name.into(),
            chipset,
        })
    }

    /// The name given to `-machine`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The chipset family.
    pub fn chipset(&self) -> Chipset {
        self.chipset
    }
}

/// The CPU model (`-cpu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuModel {
    /// The accelerator's default (`qemu64` under TCG); no `-cpu` argument.
    Default,
    /// libvirt's `host-passthrough`: `host` under KVM, `max` (every feature
    /// TCG emulates) under TCG.
    HostPassthrough,
    /// A named model (`Skylake-Client`, `EPYC`, `qemu64`, …).
    Named(String),
}

/// Platform features (libvirt's `<features>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// ACPI tables; off is `-machine …,acpi=off` (QEMU 10 has no
    /// `-no-acpi`). Without ACPI the guest cannot see the power button.
    pub acpi: bool,
    /// The local APIC; off is `-cpu …,-apic`, which only the `pc` machine
    /// allows (Q35's PCIe root ports need MSI).
    pub apic: bool,
    /// The HPET timer; off is `-machine …,hpet=off` (libvirt's
    /// `<timer name='hpet' present='no'/>`).
    pub hpet: bool,
    /// The RTC catches up on missed ticks (`-rtc …,driftfix=slew`,
    /// libvirt's `<timer name='rtc' tickpolicy='catchup'/>`).
    pub rtc_catchup: bool,
    /// ACPI S3 (suspend to RAM) offered to the guest (libvirt's
    /// `<pm><suspend-to-mem enabled=…/>`).
    pub suspend_to_mem: bool,
    /// ACPI S4 (suspend to disk) offered to the guest.
    pub suspend_to_disk: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            acpi: true,
            apic: true,
            hpet: true,
            rtc_catchup: false,
            suspend_to_mem: true,
            suspend_to_disk: true,
        }
    }
}

/// What the real-time clock starts from (`-rtc base=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockBase {
    /// The host's UTC time (Linux guests).
    Utc,
    /// The host's local time (Windows guests).
    Localtime,
}

/// What QEMU does when the guest powers off, reboots or panics (`-action`).
/// libvirt's `on_poweroff`/`on_reboot`/`on_crash` map onto these; its
/// `restart` variants are a management layer's job (it watches for
/// [`crate::qmp::Event::Shutdown`] and starts the machine again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifecycle {
    /// Guest power-off.
    pub on_poweroff: OnPoweroff,
    /// Guest reboot.
    pub on_reboot: OnReboot,
    /// Guest panic (needs [`Machine::panic_device`]).
    pub on_crash: OnCrash,
}

/// `-action shutdown=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPoweroff {
    /// QEMU exits (libvirt `destroy`).
    #[default]
    Exit,
    /// QEMU stops the machine and stays (libvirt `preserve`; `-no-shutdown`).
    Pause,
}

/// `-action reboot=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// The machine resets (libvirt `restart`).
    #[default]
    Reset,
    /// A reboot becomes a power-off, which [`OnPoweroff`] then handles
    /// (libvirt `destroy`; `-no-reboot`).
    Poweroff,
}

/// `-action panic=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCrash {
    /// A power-off, which [`OnPoweroff`] then handles (libvirt `destroy`).
    #[default]
    Poweroff,
    /// The machine stops in `guest-panicked` (libvirt `preserve`).
    Pause,
    /// QEMU exits with a failure status.
    ExitFailure,
    /// Nothing: the event is reported and the guest keeps running.
    Ignore,
}

/// The firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's built-in SeaBIOS.
    Bios,
    /// UEFI from two flash images: the read-only code and this machine's
    /// own writable copy of the variable store.
    Uefi {
        /// The firmware code (`OVMF_CODE.fd`), opened read-only.
        code: PathBuf,
        /// The machine's variable store (a copy of `OVMF_VARS.fd`).
        vars: PathBuf,
    },
}

/// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// An initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: Option<OsString>,
}
