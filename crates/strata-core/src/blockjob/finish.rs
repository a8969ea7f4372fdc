//! The end of a block job: its final instant, with the guest's requests
//! held back on every disk (complete: the new chain served; abort: the
//! chain as it was).

use strata_image::jobs;
use strata_image::ops::merge_bitmaps;
use strata_image::storage::LockMode;

use super::{BlockJob, Kind};
use crate::error::{Error, Result};
use crate::live::{Disks, Quiesced};
use crate::store::Store;

impl BlockJob {
    fn what(&self, domain: &str) -> String {
        format!(
            "domain '{domain}': {} of disk '{}'",
            self.kind.shown(),
            self.disk
        )
    }

    /// Completes a job whose copy ([`BlockJob::run`]) succeeded: a commit
    /// re-points the layer above its top at the base; an active commit
    /// pivots to the base (the domain's definition names it from then on);
    /// a pull re-points the active layer at its base (or none).
    pub fn complete(self, store: &mut Store, domain: &str, disks: &dyn Disks) -> Result<()> {
        complete_all(vec![self], store, domain, disks)
    }

    /// What comes before the final instant: an active commit catches up
    /// with the guest at full speed (so that little is left to copy with
    /// the guest held back); a commit's bitmaps are merged into its base,
    /// which is then closed.
    fn before_instant(&mut self) -> Result<()> {
        if let (Kind::ActiveCommit, Some(t), Some(base)) = (self.kind, &self.tracked, &self.base_rw)
        {
            let free = jobs::Control::new(0);
            for _ in 0..super::CATCH_UP_PASSES {
                let dirty = t.take_dirty();
                jobs::copy_ranges(t.inner().as_ref(), &dirty, base.as_ref(), &free)?;
                if t.dirty_bytes() < super::PIVOT_BELOW {
                    break;
                }
            }
        }
        if self.kind == Kind::Commit {
            let base_rw = self.base_rw.take().expect("a commit opens its base");
            let top = self.layers.get(self.top_depth);
            merge_bitmaps(
                top.as_ref(),
                self.base_depth - self.top_depth,
                base_rw.as_ref(),
                false,
            )?;
            base_rw.close()?;
        }
        Ok(())
    }

    /// The final instant, the guest's requests held back (`q`).
    fn at_instant(mut self, store: &mut Store, domain: &str, q: &mut dyn Quiesced) -> Result<()> {
        let what = self.what(domain);
        let disk = self.disk.clone();
        match self.kind {
            Kind::Commit => {
                let base = self.layers.fresh(self.base_depth)?;
                let new_top = self.layers.relink(self.top_depth - 1, Some(base), &what)?;
                q.switch(&disk, new_top)?;
            }
            Kind::ActiveCommit => {
                let base_rw = self.base_rw.take().expect("a commit opens its base");
                let t = self.tracked.take().expect("an active commit tracks");
                // The guest is held: what it wrote last is all there is.
                let dirty = t.take_dirty();
                let ctl = jobs::Control::new(0);
                jobs::copy_ranges(t.inner().as_ref(), &dirty, base_rw.as_ref(), &ctl)?;
                merge_bitmaps(t.inner().as_ref(), self.base_depth, base_rw.as_ref(), true)?;
                base_rw.flush()?;
                q.switch(&disk, base_rw.clone())?;
                // The guest writes to the base from now on: its handle
                // takes the write lock the chain's read-only one stood in
                // for (QEMU's locks keep other writers off it).
                if let Some(st) = self.layers.get(self.base_depth).storage() {
                    st.lock(LockMode::None)?;
                }
                if let Some(st) = base_rw.storage() {
                    if let Err(e) = st.lock(LockMode::Write) {
                        tracing::warn!(disk = %disk, error = %e, "the base is served without its write lock");
                    }
                }
                let mut dom = store.domain(domain)?;
                let file = self.base_file.clone().expect("a commit has a base");
                dom.set_disk_source(&disk, &file, base_rw.format().name())?;
                store.define(&dom)?;
                // The old top is left as it is (virsh leaves it too).
                if let Err(e) = t.inner().flush() {
                    tracing::warn!(disk = %disk, error = %e, "flushing the old top after the pivot");
                }
            }
            Kind::Pull => {
                let t = self.tracked.take().expect("a pull tracks");
                let top = t.inner().clone();
                let below = (self.base_depth < self.layers.len())
                    .then(|| self.layers.get(self.base_depth).clone());
                if self.base_depth > 1 {
                    // Changes since a checkpoint recorded in the layers
                    // that go stay known in the top.
                    merge_bitmaps(
                        self.layers.get(1).as_ref(),
                        self.base_depth - 1,
                        top.as_ref(),
                        false,
                    )?;
                }
                let new_top = self.layers.relink(0, below, &what)?;
                q.switch(&disk, new_top)?;
            }
        }
        tracing::info!(disk = %disk, kind = ?self.kind, "block job completed");
        Ok(())
    }

    /// Gives the job up (its copy stopped, [`super::Control::cancel`]): the
    /// disk is served as before the job. What a commit wrote into its base
    /// stays there, shadowed by the layers above; what a pull copied is
    /// what the top read anyway.
    pub fn abort(mut self, domain: &str, disks: &dyn Disks) -> Result<()> {
        self.control.cancel();
        if let Some(base) = self.base_rw.take() {
            if let Err(e) = base.close() {
                tracing::warn!(disk = %self.disk, error = %e, "closing the base after an abort");
            }
        }
        if let Some(t) = self.tracked.take() {
            let mut q = disks.hold()?;
            q.switch(&self.disk, t.inner().clone())
                .map_err(|e| Error::invalid(self.what(domain), e.to_string()))?;
        }
        tracing::info!(disk = %self.disk, kind = ?self.kind, "block job aborted");
        Ok(())
    }
}

/// Completes `jobs` (their copies done) at one instant: every disk of the
/// domain held back once for all of them.
pub fn complete_all(
    jobs: Vec<BlockJob>,
    store: &mut Store,
    domain: &str,
    disks: &dyn Disks,
) -> Result<()> {
    let mut q = disks.hold()?;
    complete_under(jobs, store, domain, q.as_mut())
}

/// Completes `jobs` with the guest's requests already held back (`q`),
/// as a snapshot deletion does with its other changes at the same instant.
pub fn complete_under(
    mut jobs: Vec<BlockJob>,
    store: &mut Store,
    domain: &str,
    q: &mut dyn Quiesced,
) -> Result<()> {
    for j in &mut jobs {
        j.before_instant()?;
    }
    for j in jobs {
        j.at_instant(store, domain, q)?;
    }
    Ok(())
}
