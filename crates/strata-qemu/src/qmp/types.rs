//! QMP data types: the greeting, run states, error classes, and the
//! answers of the query commands this crate types. Field names follow the
//! QAPI schema (`query-qmp-schema`); every struct ignores fields it does not
//! know.

use serde::Deserialize;

/// QEMU's greeting (`{"QMP": {"version", "capabilities"}}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Greeting {
    /// The version.
    pub version: VersionInfo,
    /// Capabilities offered (`oob`); this client enables none.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// `VersionInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// The numeric version.
    pub qemu: VersionTriple,
    /// The distribution's package string.
    #[serde(default)]
    pub package: String,
}

/// `VersionTriple`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct VersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

string_enum! {
    /// `RunState`: what the machine is doing.
    pub enum RunState {
        /// Stopped by the debugger.
        Debug = "debug",
        /// Waiting for an incoming migration.
        Inmigrate = "inmigrate",
        /// An internal error stopped it.
        InternalError = "internal-error",
        /// A disk I/O error stopped it.
        IoError = "io-error",
        /// Stopped (`stop`).
        Paused = "paused",
        /// Stopped after an outgoing migration.
        Postmigrate = "postmigrate",
        /// Not started yet (`-S`).
        Prelaunch = "prelaunch",
        /// Stopped to finish a migration.
        FinishMigrate = "finish-migrate",
        /// Stopped to restore a snapshot.
        RestoreVm = "restore-vm",
        /// Running.
        Running = "running",
        /// Stopped to save a snapshot.
        SaveVm = "save-vm",
        /// Shut down (with `-no-shutdown` / `-action shutdown=pause`).
        Shutdown = "shutdown",
        /// Suspended (ACPI S3).
        Suspended = "suspended",
        /// Stopped by the watchdog.
        Watchdog = "watchdog",
        /// Stopped after a guest panic.
        GuestPanicked = "guest-panicked",
        /// COLO fault tolerance.
        Colo = "colo",
    }
}

/// `StatusInfo`, the answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

string_enum! {
    /// `QapiErrorClass`: the class of a command's error.
    pub enum ErrorClass {
        /// Most errors.
        GenericError = "GenericError",
        /// The command does not exist (or is not allowed yet).
        CommandNotFound = "CommandNotFound",
        /// A device has no active medium.
        DeviceNotActive = "DeviceNotActive",
        /// No device of that name.
        DeviceNotFound = "DeviceNotFound",
        /// KVM lacks a capability.
        KvmMissingCap = "KVMMissingCap",
    }
}

/// The `error` member of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ErrorBody {
    pub class: ErrorClass,
    #[serde(default)]
    pub desc: String,
}

/// `PciInfo`: one PCI bus of `query-pci`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PciInfo {
    /// The bus number.
    pub bus: i64,
    /// Its devices.
    pub devices: Vec<PciDeviceInfo>,
}

/// `PciDeviceInfo`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PciDeviceInfo {
    /// Bus number.
    pub bus: i64,
    /// Slot.
    pub slot: i64,
    /// Function.
    pub function: i64,
    /// The device's id (`""` when it has none).
    #[serde(default)]
    pub qdev_id: String,
    /// Class code and description.
    pub class_info: PciDeviceClass,
    /// Vendor and device ids.
    pub id: PciDeviceId,
    /// For a bridge, the bus behind it and its devices (those appear once
    /// the firmware has numbered the bus).
    #[serde(default)]
    pub pci_bridge: Option<PciBridgeInfo>,
}

/// `PciDeviceClass`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PciDeviceClass {
    /// The class code.
    pub class: i64,
    /// Its description.
    #[serde(default)]
    pub desc: Option<String>,
}

/// `PciDeviceId`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PciDeviceId {
    /// Vendor id.
    pub vendor: i64,
    /// Device id.
    pub device: i64,
}

/// `PciBridgeInfo`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PciBridgeInfo {
    /// The devices behind the bridge.
    #[serde(default)]
    pub devices: Vec<PciDeviceInfo>,
}

impl PciInfo {
    /// Every device of these buses and of the buses behind their bridges.
    pub fn flatten(buses: &[PciInfo]) -> Vec<&PciDeviceInfo> {
        fn walk<'a>(devs: &'a [PciDeviceInfo], out: &mut Vec<&'a PciDeviceInfo>) {
            for d in devs {
                out.push(d);
                if let Some(b) = &d.pci_bridge {
                    walk(&b.devices, out);
                }
            }
        }
        let mut out = Vec::new();
        for b in buses {
            walk(&b.devices, &mut out);
        }
        out
    }
}

/// `ObjectPropertyInfo`: one entry of `qom-list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectPropertyInfo {
    /// The property's name.
    pub name: String,
    /// Its type (`child<virtio-net-pci>`, `string`, …).
    #[serde(rename = "type")]
    pub type_: String,
}

/// `ChardevInfo`: one entry of `query-chardev`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChardevInfo {
    /// The chardev's id.
    pub label: String,
    /// Its backend, as QEMU describes it (`unix:/path,server=on`).
    pub filename: String,
    /// Whether its frontend is open.
    #[serde(rename = "frontend-open", default)]
    pub frontend_open: bool,
}

/// `BlockInfo`: one entry of `query-block` (the fields strata reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BlockInfo {
    /// The legacy drive name (`""` for `-blockdev` nodes).
    #[serde(default)]
    pub device: String,
    /// The QOM path of the device using it.
    #[serde(default)]
    pub qdev: Option<String>,
    /// The medium, if any.
    #[serde(default)]
    pub inserted: Option<BlockDeviceInfo>,
}

/// `BlockDeviceInfo` (the fields strata reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BlockDeviceInfo {
    /// The top node's name.
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    /// Its driver (`nbd`, `qcow2`, …).
    pub drv: String,
    /// Read-only.
    pub ro: bool,
    /// Its file name (for NBD, a URI).
    #[serde(default)]
    pub file: String,
}

/// `VncInfo` (the fields strata reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VncInfo {
    /// Whether VNC is on.
    pub enabled: bool,
    /// The address it listens on.
    #[serde(default)]
    pub host: Option<String>,
    /// The port (or socket path) it listens on.
    #[serde(default)]
    pub service: Option<String>,
    /// `ipv4`, `ipv6`, `unix`.
    #[serde(default)]
    pub family: Option<String>,
}
