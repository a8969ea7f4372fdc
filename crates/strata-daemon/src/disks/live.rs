//! A running domain's served disks as strata-core is handed them
//! ([`strata_core::live::Disks`]): the images it serves (held under the
//! domain's lock, which the run keeps), quiesced all together — every disk
//! stops taking guest requests before any is drained, so the disks stop at
//! one instant — then drained and flushed; a new top is switched in under
//! the paused guest; dropping the guard records the new tops in the run's
//! record ([`crate::journal`]) and only then resumes every disk, so a
//! daemon that dies at any moment is followed by one that serves what the
//! guest last wrote to.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::live::{Disks, Quiesced};
use strata_core::lock::DomainLock;
use strata_image::transaction::Held;
use strata_image::Image;
use strata_vhost::Paused;

use super::{ServedDisk, Server};
use crate::journal::{self, RunRecord};

/// How long quiescing waits for the requests in flight.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The served disks of one run, handed to one operation.
pub struct LiveDisks<'a> {
    disks: &'a [ServedDisk],
    /// The run's folder and its record, updated when a top changes.
    run_dir: &'a Path,
    record: RunRecord,
    /// New tops served since: (disk index, image).
    switched: RefCell<Vec<(usize, Arc<dyn Image>)>>,
    /// The disk a block job runs on, if one does.
    block_job: Option<String>,
}

impl<'a> LiveDisks<'a> {
    /// The disks of a run recorded in `run_dir` as `record`.
    pub fn new(disks: &'a [ServedDisk], run_dir: &'a Path, record: RunRecord) -> LiveDisks<'a> {
        LiveDisks {
            disks,
            run_dir,
            record,
            switched: RefCell::new(Vec::new()),
            block_job: None,
        }
    }

    /// Notes that a block job runs on disk `disk`.
    pub fn with_block_job(mut self, disk: Option<String>) -> Self {
        self.block_job = disk;
        self
    }

    /// Refuses an operation on the disks of `domain` while a block job
    /// runs (it holds the disk's chain in the middle of a change).
    pub fn no_block_job(&self, domain: &str) -> strata_core::Result<()> {
        match &self.block_job {
            Some(disk) => Err(strata_core::Error::invalid(
                format!("domain '{domain}'"),
                format!("a block job runs on disk '{disk}': wait for it or abort it first (blockjob --abort)"),
            )),
            None => Ok(()),
        }
    }

    /// The run's folder (`STATE/run/NAME`).
    pub fn run_dir(&self) -> &Path {
        self.run_dir
    }

    /// The new tops switched in, by disk index, for the run to record.
    pub fn into_switched(self) -> Vec<(usize, Arc<dyn Image>)> {
        self.switched.into_inner()
    }
}

fn refuse(target: &str, problem: impl Into<String>) -> strata_core::Error {
    strata_core::Error::invalid(format!("disk '{target}'"), problem)
}

impl Disks for LiveDisks<'_> {
    fn live(&self) -> bool {
        true
    }

    fn lock(&self, _state_dir: &Path, _domain: &str) -> strata_core::Result<Option<DomainLock>> {
        // The run holds the domain's lock for as long as the domain runs.
        Ok(None)
    }

    fn held(&self) -> Held {
        let mut held = Held::none();
        for d in self.disks {
            if let Err(e) = held.insert(&d.source, d.image.clone()) {
                tracing::warn!(disk = %d.target, error = %e, "served image not found by its path");
            }
        }
        held
    }

    fn quiesce(&self) -> strata_core::Result<Box<dyn Quiesced + '_>> {
        self.pause(true)
    }

    fn hold(&self) -> strata_core::Result<Box<dyn Quiesced + '_>> {
        self.pause(false)
    }
}

impl LiveDisks<'_> {
    /// Pauses and drains every disk, flushing them (before the pause, and
    /// what is left under it) when `flush`.
    fn pause(&self, flush: bool) -> strata_core::Result<Box<dyn Quiesced + '_>> {
        if let Some(d) = self
            .disks
            .iter()
            .find(|d| matches!(d.server, Server::Nbd(_)))
        {
            return Err(refuse(
                &d.target,
                "served over NBD, which cannot hold the guest's requests back: live snapshots and checkpoints need vhost-user-blk",
            ));
        }
        // Most of what is dirty goes to disk while the guest still runs,
        // so that the flushes under the pause have little left to do.
        if flush {
            flush_all(self.disks, (0..self.disks.len()).collect())?;
        }
        // Stop taking requests everywhere first: one instant for all disks.
        let paused_at = Instant::now();
        let paused: Vec<(usize, Paused)> = self
            .disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match &d.server {
                Server::Vhost(h) => Some((i, h.gate().pause())),
                Server::Nbd(_) => None,
            })
            .collect();
        for (i, p) in &paused {
            let d = &self.disks[*i];
            p.drain(DRAIN_LIMIT)
                .map_err(|e| refuse(&d.target, format!("requests in flight: {e}")))?;
        }
        let drained = paused_at.elapsed();
        if flush {
            flush_all(self.disks, paused.iter().map(|(i, _)| *i).collect())?;
        }
        Ok(Box::new(Quiet {
            disks: self,
            paused,
            paused_at,
            drained,
            flushed: paused_at.elapsed(),
        }))
    }
}

/// Flushes the images of `disks[which]`, each on its own thread (their
/// syncs overlap); the first failure, naming its disk.
fn flush_all(disks: &[ServedDisk], which: Vec<usize>) -> strata_core::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = which
            .into_iter()
            .map(|i| {
                let d = &disks[i];
                (d, s.spawn(move || d.image.flush()))
            })
            .collect();
        let mut first = Ok(());
        for (d, h) in handles {
            let r = match h.join() {
                Ok(r) => r.map_err(|e| refuse(&d.target, format!("flush: {e}"))),
                Err(_) => Err(refuse(&d.target, "flush: the flushing thread panicked")),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Every disk paused and drained; resumed on drop.
struct Quiet<'a, 'b> {
    disks: &'b LiveDisks<'a>,
    paused: Vec<(usize, Paused)>,
    paused_at: Instant,
    /// How long after the pause the requests in flight had ended, and the
    /// flushes too (for the log).
    drained: Duration,
    flushed: Duration,
}

impl Quiesced for Quiet<'_, '_> {
    fn paused_at(&self) -> Instant {
        self.paused_at
    }

    fn switch(&mut self, target: &str, image: Arc<dyn Image>) -> strata_core::Result<()> {
        let (i, p) = self
            .paused
            .iter()
            .find(|(i, _)| self.disks.disks[*i].target == target)
            .ok_or_else(|| refuse(target, "not served"))?;
        p.swap_image(image.clone())
            .map_err(|e| refuse(target, format!("cannot serve the new top: {e}")))?;
        tracing::info!(disk = %target, top = %image.path(), "serving a new top");
        self.disks.switched.borrow_mut().push((*i, image));
        Ok(())
    }
}

impl Drop for Quiet<'_, '_> {
    fn drop(&mut self) {
        // Before the guest's requests are taken again (the paused gates
        // resume as the fields drop, after this).
        let worked = self.paused_at.elapsed();
        let switched = self.disks.switched.borrow();
        if !switched.is_empty() {
            self.record_tops(&switched);
        }
        tracing::debug!(
            drain_us = self.drained.as_micros() as u64,
            flush_us = (self.flushed - self.drained).as_micros() as u64,
            work_us = (worked - self.flushed).as_micros() as u64,
            record_us = (self.paused_at.elapsed() - worked).as_micros() as u64,
            "resuming the guest's disks"
        );
    }
}

impl Quiet<'_, '_> {
    /// Writes the run's record with the new tops `switched`.
    fn record_tops(&self, switched: &[(usize, Arc<dyn Image>)]) {
        let mut record = self.disks.record.clone();
        for (i, top) in switched.iter() {
            let target = &self.disks.disks[*i].target;
            if let Some(d) = record.disks.iter_mut().find(|d| &d.target == target) {
                d.source = top.path().into();
            }
        }
        if let Err(e) = journal::rewrite(self.disks.run_dir, &record) {
            tracing::error!(error = %e, "the run record does not name the new tops");
        }
    }
}
