//! A snapshot or bitmap change prepared on one image and waiting for the rest of a
//! multi-image transaction: everything is written to fresh clusters and
//! synced, the header still points at the old state. Then either
//! `commit` (the header switch), later `finish` (release what the old state
//! used) — or `abort`, which also switches a committed change back, since
//! nothing the old state used is released before `finish`.
//!
//! A pending change holds the image's locks: nothing else touches the image
//! until it is finished or aborted (dropping it aborts).

use parking_lot::{MutexGuard, RwLockWriteGuard};

use super::bitmaps::BitmapEdit;
use super::meta::Meta;
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
    info: Option<SnapshotInfo>,
}

/// The internal-snapshot part of a pending change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotChange {
    /// Create a snapshot (`None`: named after the time).
    Create(Option<String>),
    /// Delete the snapshot with this name or ID.
    Delete(String),
    /// Apply (revert to) the snapshot with this name or ID.
    Apply(String),
}

impl Qcow2 {
    /// Prepares an internal snapshot create (see [`Qcow2::snapshot_create`]).
    pub fn prepare_snapshot_create(&self, name: Option<&str>) -> Result<PendingChange<'_>> {
        self.prepare_change(Some(SnapshotChange::Create(name.map(str::to_string))), &[])
    }

    /// Prepares an internal snapshot delete (see [`Qcow2::snapshot_delete`]).
    pub fn prepare_snapshot_delete(&self, name: &str) -> Result<PendingChange<'_>> {
        self.prepare_change(Some(SnapshotChange::Delete(name.to_string())), &[])
    }

    /// Prepares an internal snapshot change and bitmap edits (applied in
    /// order) as one shadow commit.
    pub fn prepare_change(
        &self,
        snapshot: Option<SnapshotChange>,
        edits: &[BitmapEdit],
    ) -> Result<PendingChange<'_>> {
        self.require_writable()?;
        let gate = self.gate.write();
        let alloc = self.alloc.lock();
        let mut m = self.meta.lock();
        // The gate is held exclusively: the flush in `tx_begin` may release
        // clusters and trim speculative bitmap bits.
        m.release_ok = true;
        let mut budget = m.tx_budget(0);
        if !edits.is_empty() {
            budget += m.bitmap_budget()? + edits.len() as u64 * 4;
        }
        let begun = m.tx_begin(budget);
        m.release_ok = false;
        let mut tx = begun?;
        let run = |m: &mut Meta, tx: &mut Tx| -> Result<(Prepared, Option<SnapshotInfo>)> {
            let (mut switch, info) = match &snapshot {
                Some(SnapshotChange::Create(name)) => {
                    let (s, i) = m.create_change(tx, &self.path, name.as_deref(), 0)?;
                    (s, Some(i))
                }
                Some(SnapshotChange::Apply(name)) => {
                    let (s, i) = m.apply_change(tx, &self.path, name)?;
                    (s, Some(i))
                }
                Some(SnapshotChange::Delete(name)) => {
                    let (s, i) = m.delete_change(tx, &self.path, name)?;
                    (s, Some(i))
                }
                None => (Switch::default(), None),
            };
            if !edits.is_empty() {
                let mut set = m.bitmap_set()?;
                for e in edits {
                    self.apply_edit(&mut set, e)?;
                }
                switch.bitmaps = Some(set);
            }
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
    /// The snapshot this change creates or deletes (none for a change of
    /// bitmaps only).
    pub fn info(&self) -> Option<&SnapshotInfo> {
        self.info.as_ref()
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
        let r = m.tx_finish(tx, p).and_then(|()| m.reload_tracker());
        m.release_ok = false;
        // An applied snapshot may have another size; the gate is still held.
        self.image
            .size
            .store(m.header.size, std::sync::atomic::Ordering::SeqCst);
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
