//! A snapshot change prepared on one image and waiting for the rest of a
//! multi-image transaction: everything is written to fresh clusters and
//! synced, the header still points at the old state. Then either
//! `commit` (the header switch), later `finish` (release what the old state
//! used) — or `abort`, which also switches a committed change back, since
//! nothing the old state used is released before `finish`.
//!
//! A pending change holds the image's locks: nothing else touches the image
//! until it is finished or aborted (dropping it aborts).

use parking_lot::{MutexGuard, RwLockWriteGuard};

use super::shadow::{Prepared, Switch, Tx};
use super::snapshot::SnapshotInfo;
use super::Qcow2;
use crate::error::Result;

/// One image's part of a transaction, prepared.
#[derive(Debug)]
pub struct PendingChange<'a> {
    image: &'a Qcow2,
    _gate: RwLockWriteGuard<'a, ()>,
    _alloc: MutexGuard<'a, ()>,
    state: Option<(Tx, Prepared)>,
    committed: bool,
    info: SnapshotInfo,
}

/// Which change to prepare.
enum Change<'n> {
    Create(Option<&'n str>),
    Delete(&'n str),
}

impl Qcow2 {
    /// Prepares an internal snapshot create (see [`Qcow2::snapshot_create`]).
    pub fn prepare_snapshot_create(&self, name: Option<&str>) -> Result<PendingChange<'_>> {
        self.prepare(Change::Create(name))
    }

    /// Prepares an internal snapshot delete (see [`Qcow2::snapshot_delete`]).
    pub fn prepare_snapshot_delete(&self, name: &str) -> Result<PendingChange<'_>> {
        self.prepare(Change::Delete(name))
    }

    fn prepare(&self, change: Change<'_>) -> Result<PendingChange<'_>> {
        self.require_writable()?;
        let gate = self.gate.write();
        let alloc = self.alloc.lock();
        let mut m = self.meta.lock();
        let budget = m.tx_budget(0);
        let mut tx = m.tx_begin(budget)?;
        let run = |m: &mut super::meta::Meta, tx: &mut Tx| -> Result<(Prepared, SnapshotInfo)> {
            let (switch, info): (Switch, SnapshotInfo) = match change {
                Change::Create(name) => m.create_change(tx, &self.path, name, 0)?,
                Change::Delete(name) => m.delete_change(tx, &self.path, name)?,
            };
            Ok((m.tx_prepare(tx, switch)?, info))
        };
        match run(&mut m, &mut tx) {
            Ok((prepared, info)) => {
                drop(m);
                Ok(PendingChange {
                    image: self,
                    _gate: gate,
                    _alloc: alloc,
                    state: Some((tx, prepared)),
                    committed: false,
                    info,
                })
            }
            Err(e) => {
                let _ = m.tx_abort(&tx);
                Err(e)
            }
        }
    }
}

impl PendingChange<'_> {
    /// The snapshot this change creates or deletes.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// The image this change is for.
    pub fn path(&self) -> &str {
        &self.image.path
    }

    /// Switches the image to the new state (one header write).
    pub fn commit(&mut self) -> Result<()> {
        let (_, p) = self.state.as_ref().expect("pending state");
        self.image.meta.lock().tx_switch(p)?;
        self.committed = true;
        Ok(())
    }

    /// After every member committed: releases what the old state used.
    pub fn finish(mut self) -> Result<()> {
        let (tx, p) = self.state.take().expect("pending state");
        // This change holds the gate exclusively: releases are safe.
        let mut m = self.image.meta.lock();
        m.release_ok = true;
        let r = m.tx_finish(tx, p);
        m.release_ok = false;
        r
    }

    /// Leaves the image exactly as before: switches back if committed, then
    /// forgets the change and gives back the file space it appended.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        let Some((tx, p)) = self.state.take() else {
            return Ok(());
        };
        let mut m = self.image.meta.lock();
        if self.committed {
            // If switching back fails the transaction stays open (`in_tx`),
            // so nothing is ever written in place from this state.
            m.tx_unswitch(&p)?;
        }
        m.tx_abort(&tx)
    }
}

impl Drop for PendingChange<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.abort_inner() {
            tracing::error!("{}: aborting a pending change failed: {e}", self.image.path);
        }
    }
}
