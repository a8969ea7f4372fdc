//! Saving and loading a QEMU machine's state through a file: `migrate` to
//! `file:PATH,offset=N` (QEMU's migration stream), `migrate-incoming` from
//! it into a QEMU started with `-incoming defer`, each followed with
//! `query-migrate` until it ends. A live save runs as a pre-copy migration
//! with `pause-before-switchover`, so that the caller acts at the instant
//! the guest is paused for the last of it (snapshots its disks).

use std::path::Path;
use std::time::Duration;

use super::qemu::QemuVm;
use super::SavedState;
use crate::qmp::migration::{
    file_uri, CapabilityState, Migrate, MigrateCancel, MigrateContinue, MigrateIncoming,
    MigrateSetCapabilities, MigrateSetParameters, MigrationInfo, MigrationStatus, QueryMigrate,
    PAUSE_BEFORE_SWITCHOVER, UNLIMITED,
};
use crate::{Error, Result};

/// How often a migration's progress is asked for.
const POLL: Duration = Duration::from_millis(20);
/// A live save pauses the guest when what is left takes this long to write
/// (milliseconds)...
const LIVE_DOWNTIME_MS: u64 = 20;
/// ... or, when the guest changes its memory faster than that converges,
/// after this long, with whatever is left.
const LIVE_CONVERGE: Duration = Duration::from_secs(10);
/// The downtime allowed then (milliseconds).
const LIVE_DOWNTIME_LAST_MS: u64 = 60_000;

impl QemuVm {
    /// [`super::Vm::save_state`].
    pub(super) async fn save_state_qemu(&self, path: &Path, offset: u64) -> Result<SavedState> {
        self.begin_save(path, offset, false).await?;
        self.finish(path, offset).await
    }

    /// [`super::Vm::save_state_live`]: the migration stops, the guest
    /// paused, before its last part (`pre-switchover`).
    pub(super) async fn save_state_live_qemu(&self, path: &Path, offset: u64) -> Result<()> {
        let uri = self.begin_save(path, offset, true).await?;
        let started = std::time::Instant::now();
        let mut forced = false;
        loop {
            let info = self.qmp().call(&QueryMigrate).await?;
            match &info.status {
                Some(MigrationStatus::PreSwitchover) => return Ok(()),
                Some(s) if s.is_final() => return Err(ended(&info, s, &uri, true)),
                _ if !forced && started.elapsed() > LIVE_CONVERGE => {
                    forced = true;
                    self.qmp().call(&parameters(LIVE_DOWNTIME_LAST_MS)).await?;
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// [`super::Vm::finish_save`].
    pub(super) async fn finish_save_qemu(&self, path: &Path, offset: u64) -> Result<SavedState> {
        let go_on = MigrateContinue {
            state: MigrationStatus::PreSwitchover,
        };
        self.qmp().call(&go_on).await?;
        self.finish(path, offset).await
    }

    /// [`super::Vm::cancel_save`]: returns once the migration has ended
    /// (QEMU runs the guest again if it ran before).
    pub(super) async fn cancel_save_qemu(&self) -> Result<()> {
        self.qmp().call(&MigrateCancel).await?;
        loop {
            let info = self.qmp().call(&QueryMigrate).await?;
            match &info.status {
                Some(s) if s.is_final() => return Ok(()),
                None => return Ok(()),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Starts the migration into `path` at `offset`, stopping before the
    /// switchover if `pause_before_switchover`; returns its URI.
    async fn begin_save(
        &self,
        path: &Path,
        offset: u64,
        pause_before_switchover: bool,
    ) -> Result<String> {
        let uri = file_uri(path, offset);
        // As libvirt for a save: as fast as the file takes it; live, the
        // pause kept short.
        self.qmp().call(&parameters(LIVE_DOWNTIME_MS)).await?;
        let caps = MigrateSetCapabilities {
            capabilities: vec![CapabilityState {
                capability: PAUSE_BEFORE_SWITCHOVER.into(),
                state: pause_before_switchover,
            }],
        };
        self.qmp().call(&caps).await?;
        self.qmp().call(&Migrate { uri: uri.clone() }).await?;
        Ok(uri)
    }

    /// Waits for the save into `path` at `offset` to complete.
    async fn finish(&self, path: &Path, offset: u64) -> Result<SavedState> {
        let uri = file_uri(path, offset);
        let info = self.follow(&uri, true).await?;
        let bytes = std::fs::metadata(path)
            .map(|m| m.len().saturating_sub(offset))
            .map_err(|source| Error::Io {
                op: "reading the size of the saved state",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SavedState {
            bytes,
            downtime_ms: info.downtime.unwrap_or(0),
            total_ms: info.total_time.unwrap_or(0),
        })
    }

    /// [`super::Vm::load_state`].
    pub(super) async fn load_state_qemu(&self, path: &Path, offset: u64) -> Result<()> {
        let uri = file_uri(path, offset);
        let load = MigrateIncoming {
            uri: uri.clone(),
            exit_on_error: false,
        };
        self.qmp().call(&load).await?;
        self.follow(&uri, false).await.map(drop)
    }

    /// Waits for the migration on `uri` to end: its last report when it
    /// completed, else why not.
    async fn follow(&self, uri: &str, saving: bool) -> Result<MigrationInfo> {
        loop {
            let info = self.qmp().call(&QueryMigrate).await?;
            match &info.status {
                Some(MigrationStatus::Completed) => return Ok(info),
                Some(s) if s.is_final() => return Err(ended(&info, s, uri, saving)),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// No bandwidth limit, and `downtime_ms` for a live migration's pause.
fn parameters(downtime_ms: u64) -> MigrateSetParameters {
    MigrateSetParameters {
        max_bandwidth: UNLIMITED,
        downtime_limit: Some(downtime_ms),
    }
}

/// The error of a migration on `uri` that ended in `status` without
/// completing.
fn ended(info: &MigrationInfo, status: &MigrationStatus, uri: &str, saving: bool) -> Error {
    Error::Migration {
        saving,
        uri: uri.to_string(),
        reason: info
            .error_desc
            .clone()
            .unwrap_or_else(|| format!("it ended {status}")),
    }
}
