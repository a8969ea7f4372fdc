//! QMP events, decoded leniently: a known event whose data does not have
//! the expected shape, and any event this version does not know, arrive as
//! [`Event::Other`] with their raw data rather than being lost.

use serde::Deserialize;
use serde_json::Value;

string_enum! {
    /// `ShutdownCause`: why the machine shut down or reset.
    pub enum ShutdownReason {
        /// No reason given.
        None = "none",
        /// An error in QEMU.
        HostError = "host-error",
        /// The `quit` command.
        HostQmpQuit = "host-qmp-quit",
        /// The `system_reset` command.
        HostQmpSystemReset = "host-qmp-system-reset",
        /// A signal (SIGTERM, SIGINT, SIGHUP) to QEMU.
        HostSignal = "host-signal",
        /// The user interface (a closed window).
        HostUi = "host-ui",
        /// The guest powered off.
        GuestShutdown = "guest-shutdown",
        /// The guest rebooted.
        GuestReset = "guest-reset",
        /// The guest panicked.
        GuestPanic = "guest-panic",
        /// A device or subsystem reset.
        SubsystemReset = "subsystem-reset",
        /// A snapshot was loaded.
        SnapshotLoad = "snapshot-load",
    }
}

string_enum! {
    /// `GuestPanicAction`: what QEMU did about a guest panic.
    pub enum GuestPanicAction {
        /// The machine was paused.
        Pause = "pause",
        /// The machine was powered off.
        Poweroff = "poweroff",
        /// The machine keeps running.
        Run = "run",
    }
}

/// When QEMU emitted an event (host time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Microseconds.
    pub microseconds: i64,
}

/// An event with its time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMessage {
    /// The event.
    pub event: Event,
    /// When QEMU emitted it.
    pub timestamp: Timestamp,
}

/// A QMP event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs run again.
    Resume,
    /// The machine shut down: QEMU exits next, or pauses with
    /// `-action shutdown=pause`.
    Shutdown {
        /// The guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownReason,
    },
    /// The power button was pressed (`system_powerdown`).
    Powerdown,
    /// The machine reset.
    Reset {
        /// The guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownReason,
    },
    /// The guest suspended (S3).
    Suspend,
    /// The guest woke up.
    Wakeup,
    /// The guest panicked.
    GuestPanicked {
        /// What QEMU did.
        action: GuestPanicAction,
        /// Details, when the panic device gave some.
        info: Option<Value>,
    },
    /// A device was unplugged.
    DeviceDeleted {
        /// Its id, if it had one.
        device: Option<String>,
        /// Its QOM path.
        path: String,
    },
    /// A virtio-serial port was opened or closed by the guest (the guest
    /// agent connecting shows here).
    VserportChange {
        /// The port's id.
        id: String,
        /// Open now.
        open: bool,
    },
    /// A disk I/O error.
    BlockIoError {
        /// The device's QOM path.
        qom_path: String,
        /// The node, if known.
        node_name: Option<String>,
        /// `read` or `write`.
        operation: String,
        /// `ignore`, `report` or `stop`.
        action: String,
        /// The error.
        reason: String,
    },
    /// Any other event, or one whose data did not decode.
    Other {
        /// The event's name.
        name: String,
        /// Its data (`null` when it had none).
        data: Value,
    },
}

impl Event {
    /// The event's QMP name (`STOP`, `SHUTDOWN`, …).
    pub fn name(&self) -> &str {
        match self {
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Shutdown { .. } => "SHUTDOWN",
            Event::Powerdown => "POWERDOWN",
            Event::Reset { .. } => "RESET",
            Event::Suspend => "SUSPEND",
            Event::Wakeup => "WAKEUP",
            Event::GuestPanicked { .. } => "GUEST_PANICKED",
            Event::DeviceDeleted { .. } => "DEVICE_DELETED",
            Event::VserportChange { .. } => "VSERPORT_CHANGE",
            Event::BlockIoError { .. } => "BLOCK_IO_ERROR",
            Event::Other { name, .. } => name,
        }
    }

    /// Decodes an event from its name and data.
    pub fn decode(name: &str, data: Value) -> Event {
        match Self::typed(name, &data) {
            Some(e) => e,
            None => Event::Other {
                name: name.to_owned(),
                data,
            },
        }
    }

    fn typed(name: &str, data: &Value) -> Option<Event> {
        fn de<T: for<'de> Deserialize<'de>>(name: &str, data: &Value) -> Option<T> {
            T::deserialize(data)
                .map_err(|e| tracing::debug!(event = name, error = %e, "event data did not decode"))
                .ok()
        }
        #[derive(Deserialize)]
        struct Cause {
            guest: bool,
            reason: ShutdownReason,
        }
        #[derive(Deserialize)]
        struct Panic {
            action: GuestPanicAction,
            #[serde(default)]
            info: Option<Value>,
        }
        #[derive(Deserialize)]
        struct Deleted {
            #[serde(default)]
            device: Option<String>,
            path: String,
        }
        #[derive(Deserialize)]
        struct Vserport {
            id: String,
            open: bool,
        }
        #[derive(Deserialize)]
        struct IoError {
            #[serde(rename = "qom-path")]
            qom_path: String,
            #[serde(rename = "node-name", default)]
            node_name: Option<String>,
            operation: String,
            action: String,
            #[serde(default)]
            reason: String,
        }
        Some(match name {
            "STOP" => Event::Stop,
            "RESUME" => Event::Resume,
            "POWERDOWN" => Event::Powerdown,
            "SUSPEND" => Event::Suspend,
            "WAKEUP" => Event::Wakeup,
            "SHUTDOWN" => {
                let c: Cause = de(name, data)?;
                Event::Shutdown {
                    guest: c.guest,
                    reason: c.reason,
                }
            }
            "RESET" => {
                let c: Cause = de(name, data)?;
                Event::Reset {
                    guest: c.guest,
                    reason: c.reason,
                }
            }
            "GUEST_PANICKED" => {
                let p: Panic = de(name, data)?;
                Event::GuestPanicked {
                    action: p.action,
                    info: p.info,
                }
            }
            "DEVICE_DELETED" => {
                let d: Deleted = de(name, data)?;
                Event::DeviceDeleted {
                    device: d.device,
                    path: d.path,
                }
            }
            "VSERPORT_CHANGE" => {
                let v: Vserport = de(name, data)?;
                Event::VserportChange {
                    id: v.id,
                    open: v.open,
                }
            }
            "BLOCK_IO_ERROR" => {
                let e: IoError = de(name, data)?;
                Event::BlockIoError {
                    qom_path: e.qom_path,
                    node_name: e.node_name,
                    operation: e.operation,
                    action: e.action,
                    reason: e.reason,
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_events_decode_and_ignore_unknown_fields() {
        let e = Event::decode(
            "SHUTDOWN",
            json!({"guest": true, "reason": "guest-shutdown", "x": 1}),
        );
        assert_eq!(
            e,
            Event::Shutdown {
                guest: true,
                reason: ShutdownReason::GuestShutdown
            }
        );
        let e = Event::decode("STOP", json!({"surprise": [1, 2]}));
        assert_eq!(e, Event::Stop);
        let e = Event::decode(
            "RESET",
            json!({"guest": false, "reason": "brand-new-cause"}),
        );
        assert_eq!(
            e,
            Event::Reset {
                guest: false,
                reason: ShutdownReason::Other("brand-new-cause".into())
            }
        );
        assert_eq!(e.name(), "RESET");
    }

    #[test]
    fn unknown_events_and_bad_data_are_kept_raw() {
        let e = Event::decode("NEW_THING", json!({"a": 1}));
        assert_eq!(
            e,
            Event::Other {
                name: "NEW_THING".into(),
                data: json!({"a": 1})
            }
        );
        // SHUTDOWN without its required members: kept, not lost.
        let e = Event::decode("SHUTDOWN", json!({"guest": "yes"}));
        assert!(matches!(&e, Event::Other { name, .. } if name == "SHUTDOWN"));
        assert_eq!(e.name(), "SHUTDOWN");
    }

    #[test]
    fn device_deleted_without_a_device_id() {
        let e = Event::decode(
            "DEVICE_DELETED",
            json!({"path": "/machine/peripheral-anon/device[0]"}),
        );
        assert_eq!(
            e,
            Event::DeviceDeleted {
                device: None,
                path: "/machine/peripheral-anon/device[0]".into()
            }
        );
    }
}
