//! Typed QMP commands: each is a struct of its arguments that names the
//! command and the type of its answer. [`super::QmpClient::call`] runs any
//! of them; [`super::QmpClient::execute`] runs anything by name.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use super::types::{BlockInfo, ChardevInfo, ObjectPropertyInfo, PciInfo, StatusInfo, VncInfo};

/// A QMP command: its arguments (a unit struct for none), its name and its
/// answer.
pub trait Command: Serialize + Send + Sync {
    /// The command's name (`query-status`).
    const NAME: &'static str;
    /// The type of its `return` value.
    type Returns: DeserializeOwned + Send + 'static;
}

macro_rules! no_arg_commands {
    ($( $(#[$meta:meta])* $ty:ident = $name:literal => $ret:ty; )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
            pub struct $ty;

            impl Command for $ty {
                const NAME: &'static str = $name;
                type Returns = $ret;
            }
        )*
    };
}

no_arg_commands! {
    /// `query-status`: the run state.
    QueryStatus = "query-status" => StatusInfo;
    /// `stop`: pause the vCPUs (a `STOP` event follows).
    Stop = "stop" => IgnoredAny;
    /// `cont`: run the vCPUs (a `RESUME` event follows).
    Cont = "cont" => IgnoredAny;
    /// `system_powerdown`: press the ACPI power button (a `POWERDOWN` event
    /// follows; the guest decides the rest).
    SystemPowerdown = "system_powerdown" => IgnoredAny;
    /// `system_reset`: reset the machine (a `RESET` event follows).
    SystemReset = "system_reset" => IgnoredAny;
    /// `quit`: QEMU exits (a `SHUTDOWN` event with reason `host-qmp-quit`
    /// comes first).
    Quit = "quit" => IgnoredAny;
    /// `query-pci`: the PCI buses and devices.
    QueryPci = "query-pci" => Vec<PciInfo>;
    /// `query-chardev`: the character devices.
    QueryChardev = "query-chardev" => Vec<ChardevInfo>;
    /// `query-block`: the block devices.
    QueryBlock = "query-block" => Vec<BlockInfo>;
    /// `query-vnc`: the VNC server.
    QueryVnc = "query-vnc" => VncInfo;
}

/// `qom-list`: the properties (and children) of a QOM object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QomList {
    /// The object's path (`/machine/peripheral`).
    pub path: String,
}

impl Command for QomList {
    const NAME: &'static str = "qom-list";
    type Returns = Vec<ObjectPropertyInfo>;
}

/// `human-monitor-command`: a command of the human monitor, its output as
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HumanMonitorCommand {
    /// The command line (`info registers`).
    #[serde(rename = "command-line")]
    pub command_line: String,
    /// The CPU it applies to.
    #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
    pub cpu_index: Option<i64>,
}

impl Command for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    type Returns = String;
}
