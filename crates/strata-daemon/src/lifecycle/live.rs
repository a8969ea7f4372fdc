//! Snapshots (created, deleted) and checkpoints (created, checked) of a running domain: strata-core's own
//! operations, handed the disks this daemon serves ([`LiveDisks`]), so
//! that every disk holds the guest's requests back at one instant while
//! the image transaction runs. Each runs under the domain's operation
//! mutex, in a blocking task, with the run's disks locked.

use std::sync::Arc;

use strata_core::checkpoint::health::DiskHealth;
use strata_core::checkpoint::{self, CheckpointRequest};
use strata_core::snapshot::create::{self as snapshot_create, CreateRequest};
use strata_core::snapshot::delete::{self as snapshot_delete, DeleteRequest};
use strata_core::Store;
use tracing::Instrument;

use super::{quiesce, Service};
use crate::disks::live::LiveDisks;
use crate::error::{Error, Result};
use crate::registry::Running;
use crate::types::{Gone, Made};

impl Service {
    /// `snapshot create` of running domain `name`: disks only, or with
    /// its memory ([`Service::snapshot_create_with_memory`]).
    pub async fn snapshot_create(self: &Arc<Self>, name: &str, req: CreateRequest) -> Result<Made> {
        let halt = req.halt;
        let made = match req.without_memory() {
            false => self.snapshot_create_with_memory(name, req).await?,
            true => self.snapshot_create_disks(name, req).await?,
        };
        if halt {
            // `--halt`: the machine stops once its snapshot is taken.
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            self.end_run(&slot, crate::registry::EndCause::Snapshot)
                .await?;
        }
        Ok(made)
    }

    /// `snapshot create --disk-only` of running domain `name`.
    async fn snapshot_create_disks(
        self: &Arc<Self>,
        name: &str,
        req: CreateRequest,
    ) -> Result<Made> {
        let span = tracing::info_span!("op", op = "snapshot create", domain = %name);
        self.on_live_disks(name, move |store, n, disks| {
            no_backup(store, n)?;
            disks.no_block_job(n)?;
            let what = format!("domain '{n}': --quiesce");
            let mut agent = match req.quiesce {
                true => Some(quiesce::freeze(store, n, disks.run_dir(), &what)?),
                false => None,
            };
            let made = snapshot_create::create_on(store, n, &req, disks);
            let frozen = match agent.as_mut() {
                Some((agent, count)) => {
                    quiesce::thaw(
                        agent,
                        made.as_ref().ok().map(|m| m.def.name.as_str()),
                        &what,
                    )?;
                    Some(*count)
                }
                None => None,
            };
            let made = made?;
            let mut m = Made::new(made.def.name, made.stall);
            m.frozen = frozen;
            Ok(m)
        })
        .instrument(span)
        .await
    }

    /// `snapshot delete` of snapshot `snapshot` of running domain `name`
    /// (internal snapshots of the served images only).
    pub async fn snapshot_delete(
        self: &Arc<Self>,
        name: &str,
        snapshot: &str,
        req: DeleteRequest,
    ) -> Result<Gone> {
        let span =
            tracing::info_span!("op", op = "snapshot delete", domain = %name, snapshot = %snapshot);
        let snap = snapshot.to_string();
        self.on_live_disks(name, move |store, n, disks| {
            no_backup(store, n)?;
            disks.no_block_job(n)?;
            let gone = snapshot_delete::delete_on(store, n, &snap, req, disks)?;
            Ok(Gone {
                deleted: gone.names,
                stall_us: gone.stall.map(|d| d.as_micros() as u64),
            })
        })
        .instrument(span)
        .await
    }

    /// `checkpoint create` of running domain `name`.
    pub async fn checkpoint_create(
        self: &Arc<Self>,
        name: &str,
        req: CheckpointRequest,
    ) -> Result<Made> {
        let span = tracing::info_span!("op", op = "checkpoint create", domain = %name);
        self.on_live_disks(name, move |store, n, disks| {
            no_backup(store, n)?;
            disks.no_block_job(n)?;
            let (def, stall) = checkpoint::create_on(store, n, &req, disks)?;
            Ok(Made::new(def.name, stall))
        })
        .instrument(span)
        .await
    }

    /// The health of every checkpoint of running domain `name`, read from
    /// the images it serves (their bitmaps in memory are the truth).
    pub async fn checkpoint_health(self: &Arc<Self>, name: &str) -> Result<Vec<DiskHealth>> {
        self.on_live_disks(name, |store, n, disks| {
            checkpoint::health::verify(store, n, None, &strata_core::live::Disks::held(disks))
        })
        .await
    }

    /// Runs `op` on the metadata store and the served disks of running
    /// domain `name`, then records the tops it switched in.
    pub(super) async fn on_live_disks<T: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        op: impl FnOnce(&mut Store, &str, &LiveDisks<'_>) -> strata_core::Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = self.active_slot(name).await?;
        let _op = slot.op.lock().await;
        let run: Arc<Running> = slot
            .running()
            .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
        self.with_disks(run, name, op).await
    }

    /// [`Service::on_live_disks`] on run `run`, whose domain's operation
    /// lock the caller holds.
    pub(super) async fn with_disks<T: Send + 'static>(
        &self,
        run: Arc<Running>,
        name: &str,
        op: impl FnOnce(&mut Store, &str, &LiveDisks<'_>) -> strata_core::Result<T> + Send + 'static,
    ) -> Result<T> {
        let dir = self.state_dir().to_path_buf();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || {
            let mut served = run.disks_blocking();
            let record = run.record_of(&served);
            let disks =
                LiveDisks::new(&served, &run.run_dir, record).with_block_job(run.jobs.active());
            let result = Store::open(&dir).and_then(|mut store| op(&mut store, &n, &disks));
            let switched = disks.into_switched();
            let moved = !switched.is_empty();
            for (i, top) in switched {
                served[i].replace_top(top);
            }
            if moved {
                run.show_disks(&served);
            }
            result.map_err(Error::from)
        })
        .await
        .map_err(|e| Error::Internal(format!("live operation task: {e}")))?
    }
}

/// Refuses a change of the disks of `domain` while its backup job runs
/// (its views hold the disks' instant).
pub(super) fn no_backup(store: &Store, domain: &str) -> strata_core::Result<()> {
    if store.job(domain)?.is_some_and(|j| j.state.active()) {
        return Err(strata_core::Error::invalid(
            format!("domain '{domain}'"),
            "a backup job is running: end it first (backup abort)",
        ));
    }
    Ok(())
}
