//! Saving and loading a QEMU machine's state through a file: `migrate` to
//! `file:PATH,offset=N` (QEMU's migration stream), `migrate-incoming` from
//! it into a QEMU started with `-incoming defer`, each followed with
//! `query-migrate` until it ends.

use std::path::Path;
use std::time::Duration;

use super::qemu::QemuVm;
use super::SavedState;
use crate::qmp::migration::{
    file_uri, Migrate, MigrateIncoming, MigrateSetParameters, MigrationInfo, MigrationStatus,
    QueryMigrate, UNLIMITED,
};
use crate::{Error, Result};

/// How often a migration's progress is asked for.
const POLL: Duration = Duration::from_millis(20);

impl QemuVm {
    /// [`super::Vm::save_state`].
    pub(super) async fn save_state_qemu(&self, path: &Path, offset: u64) -> Result<SavedState> {
        let uri = file_uri(path, offset);
        // As libvirt for a save: as fast as the file takes it.
        let unlimited = MigrateSetParameters {
            max_bandwidth: UNLIMITED,
        };
        self.qmp().call(&unlimited).await?;
        self.qmp().call(&Migrate { uri: uri.clone() }).await?;
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
                Some(s) if s.is_final() => {
                    return Err(Error::Migration {
                        saving,
                        uri: uri.to_string(),
                        reason: info
                            .error_desc
                            .clone()
                            .unwrap_or_else(|| format!("it ended {s}")),
                    })
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}
