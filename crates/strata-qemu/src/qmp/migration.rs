//! Migration over QMP, as strata uses it to save and load a machine's
//! memory and device state: the stream goes to or comes from a file
//! (`file:PATH,offset=N`), never to another host. The commands, the state
//! `query-migrate` reports, and the capabilities strata sets.

use serde::{Deserialize, Serialize};

use super::commands::Command;

string_enum! {
    /// `MigrationStatus`: where a migration is.
    pub enum MigrationStatus {
        /// None has run.
        None = "none",
        /// Being set up.
        Setup = "setup",
        /// Being cancelled.
        Cancelling = "cancelling",
        /// Cancelled.
        Cancelled = "cancelled",
        /// Sending or receiving.
        Active = "active",
        /// Post-copy (not used by strata).
        PostcopyActive = "postcopy-active",
        /// Paused post-copy (not used by strata).
        PostcopyPaused = "postcopy-paused",
        /// Recovering post-copy (not used by strata).
        PostcopyRecover = "postcopy-recover",
        /// Done.
        Completed = "completed",
        /// Failed (`error-desc` says why).
        Failed = "failed",
        /// Colo (not used by strata).
        Colo = "colo",
        /// Waiting before switching over (not used by strata).
        PreSwitchover = "pre-switchover",
        /// Switching over to the device state.
        Device = "device",
        /// Waiting for an unplug to finish.
        WaitUnplug = "wait-unplug",
    }
}

impl MigrationStatus {
    /// True once the migration can change no more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// `MigrationStats`: what has moved of the guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct MigrationStats {
    /// Bytes sent or received.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes of RAM left to send.
    #[serde(default)]
    pub remaining: u64,
    /// The guest's RAM.
    #[serde(default)]
    pub total: u64,
    /// Passes over the dirty pages.
    #[serde(rename = "dirty-sync-count", default)]
    pub dirty_sync_count: u64,
}

/// `MigrationInfo`: the answer of `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MigrationInfo {
    /// Where it is; absent before any migration.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    /// Why it failed.
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    /// RAM moved.
    #[serde(default)]
    pub ram: Option<MigrationStats>,
    /// Milliseconds the whole migration took (completed ones).
    #[serde(rename = "total-time", default)]
    pub total_time: Option<u64>,
    /// Milliseconds the guest was stopped for the switch-over.
    #[serde(default)]
    pub downtime: Option<u64>,
}

/// One capability to set (`MigrationCapabilityStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityState {
    /// Its name (`background-snapshot`).
    pub capability: String,
    /// On or off.
    pub state: bool,
}

/// `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSetCapabilities {
    /// The capabilities to set.
    pub capabilities: Vec<CapabilityState>,
}

impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Returns = serde::de::IgnoredAny;
}

/// `migrate-set-parameters`, the ones strata sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSetParameters {
    /// Bytes per second at most (QEMU's default is 128 MiB/s, meant to
    /// spare a network; a save to a file wants no limit).
    #[serde(rename = "max-bandwidth")]
    pub max_bandwidth: u64,
    /// How long, in milliseconds, a live migration may pause the guest for
    /// its last part (QEMU's default is 300: at a file's speed that is
    /// hundreds of MiB left for the pause).
    #[serde(rename = "downtime-limit", skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
}

impl Command for MigrateSetParameters {
    const NAME: &'static str = "migrate-set-parameters";
    type Returns = serde::de::IgnoredAny;
}

/// No limit, in practice: 1 TiB/s.
pub const UNLIMITED: u64 = 1 << 40;

/// `migrate`: sends the machine's state to `uri` and returns at once;
/// `query-migrate` (or the `MIGRATION` events) follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migrate {
    /// Where to (`file:/path,offset=4096`).
    pub uri: String,
}

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Returns = serde::de::IgnoredAny;
}

/// `migrate-incoming`: loads the machine's state from `uri` (QEMU started
/// with `-incoming defer`); returns at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateIncoming {
    /// Where from.
    pub uri: String,
    /// QEMU exits when the load fails (its default); `false` keeps it, so
    /// that `query-migrate` says why (QEMU 9.1 and later).
    #[serde(rename = "exit-on-error")]
    pub exit_on_error: bool,
}

impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Returns = serde::de::IgnoredAny;
}

/// `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueryMigrate;

impl Command for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Returns = MigrationInfo;
}

/// `migrate_cancel`: stops an outgoing migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MigrateCancel;

impl Command for MigrateCancel {
    const NAME: &'static str = "migrate_cancel";
    type Returns = serde::de::IgnoredAny;
}

/// `migrate-continue`: lets a migration paused at `pre-switchover` (the
/// `pause-before-switchover` capability) go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateContinue {
    /// The state it waits in: `pre-switchover`.
    pub state: MigrationStatus,
}

impl Command for MigrateContinue {
    const NAME: &'static str = "migrate-continue";
    type Returns = serde::de::IgnoredAny;
}

/// The capability that stops a migration once the guest is paused for its
/// last part, until `migrate-continue`.
pub const PAUSE_BEFORE_SWITCHOVER: &str = "pause-before-switchover";

/// The URI of a file stream starting `offset` bytes into `path`.
pub fn file_uri(path: &std::path::Path, offset: u64) -> String {
    format!("file:{},offset={offset}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(cmd: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(cmd).unwrap()
    }

    #[test]
    fn migration_info_of_a_running_a_failed_and_no_migration() {
        let running: MigrationInfo = serde_json::from_str(
            r#"{"status": "active", "ram": {"transferred": 10, "remaining": 90,
                "total": 100, "dirty-sync-count": 1, "mbps": 3.5}, "setup-time": 1}"#,
        )
        .unwrap();
        assert_eq!(running.status, Some(MigrationStatus::Active));
        assert_eq!(running.ram.unwrap().remaining, 90);
        let failed: MigrationInfo =
            serde_json::from_str(r#"{"status": "failed", "error-desc": "no space"}"#).unwrap();
        assert!(failed
            .status
            .as_ref()
            .is_some_and(MigrationStatus::is_final));
        assert_eq!(failed.error_desc.as_deref(), Some("no space"));
        let none: MigrationInfo = serde_json::from_str("{}").unwrap();
        assert_eq!(none.status, None);
    }

    #[test]
    fn commands_serialise_as_qemu_names_them() {
        let caps = MigrateSetCapabilities {
            capabilities: vec![CapabilityState {
                capability: "background-snapshot".into(),
                state: true,
            }],
        };
        assert_eq!(
            describe(&caps),
            serde_json::json!({"capabilities": [{"capability": "background-snapshot", "state": true}]})
        );
        assert_eq!(
            describe(&MigrateSetParameters {
                max_bandwidth: UNLIMITED,
                downtime_limit: None,
            }),
            serde_json::json!({"max-bandwidth": 1u64 << 40})
        );
        assert_eq!(
            describe(&MigrateSetParameters {
                max_bandwidth: UNLIMITED,
                downtime_limit: Some(20),
            }),
            serde_json::json!({"max-bandwidth": 1u64 << 40, "downtime-limit": 20})
        );
        let m = Migrate {
            uri: file_uri(std::path::Path::new("/s/m.save"), 4096),
        };
        assert_eq!(
            describe(&m),
            serde_json::json!({"uri": "file:/s/m.save,offset=4096"})
        );
    }
}
