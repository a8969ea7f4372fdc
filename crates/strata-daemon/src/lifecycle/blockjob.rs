//! Block jobs of a running domain (`blockcommit`, `blockpull`,
//! `blockjob`): strata-core begins a job on the served disks
//! ([`strata_core::blockjob::begin`]); a task of this daemon drives it —
//! the copy on a blocking thread, then for an active commit passes over
//! what the guest writes while it waits, ready, for a pivot — and ends it
//! on the served disks (complete or abort). One job per domain at a time;
//! jobs belong to the run: when the domain stops, its job stops too and
//! the chain stays as it was. While a job runs, live snapshots,
//! checkpoints and backups of the domain are refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::blockjob::{self, BlockJob, Kind};
use strata_image::jobs::Control;
use tokio::sync::watch;
use tracing::Instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::registry::{lock, Running, Slot};
use crate::types::{BlockJobInfo, BlockJobRequest, JobPhase};

/// How often a ready active commit copies what the guest wrote.
const CONVERGE_EVERY: Duration = Duration::from_millis(200);

/// One block job of a run, as the API sees it.
#[derive(Debug)]
pub struct JobSlot {
    disk: String,
    kind: Kind,
    top: String,
    base: Option<String>,
    control: Arc<Control>,
    phase: watch::Sender<(JobPhase, Option<String>)>,
    pivot: AtomicBool,
}

impl JobSlot {
    fn of(job: &BlockJob) -> JobSlot {
        JobSlot {
            disk: job.disk.clone(),
            kind: job.kind,
            top: job.top_file.display().to_string(),
            base: job.base_file.as_ref().map(|b| b.display().to_string()),
            control: job.control.clone(),
            phase: watch::Sender::new((JobPhase::Running, None)),
            pivot: AtomicBool::new(false),
        }
    }

    /// The job as `blockjob --info` shows it.
    pub fn info(&self) -> BlockJobInfo {
        let (phase, error) = self.phase.borrow().clone();
        let (done, total) = self.control.progress();
        BlockJobInfo {
            disk: self.disk.clone(),
            kind: self.kind,
            top: self.top.clone(),
            base: self.base.clone(),
            phase,
            error,
            done,
            total,
            bandwidth: self.control.bandwidth(),
        }
    }

    fn set(&self, phase: JobPhase, error: Option<String>) {
        tracing::info!(disk = %self.disk, phase = ?phase, error = ?error, "block job");
        self.phase.send_replace((phase, error));
    }

    fn ended(&self) -> bool {
        self.phase.borrow().0.ended()
    }

    /// Waits until the phase is one `done` accepts.
    async fn until(&self, done: impl Fn(&JobPhase) -> bool) -> BlockJobInfo {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|(p, _)| done(p)).await;
        self.info()
    }
}

/// The block jobs of one run, by disk.
#[derive(Debug, Default)]
pub struct RunJobs(Mutex<Vec<Arc<JobSlot>>>);

impl RunJobs {
    /// The disk of the job that runs, if one does.
    pub fn active(&self) -> Option<String> {
        lock(&self.0)
            .iter()
            .find(|j| !j.ended())
            .map(|j| j.disk.clone())
    }

    fn get(&self, disk: &str) -> Option<Arc<JobSlot>> {
        lock(&self.0).iter().find(|j| j.disk == disk).cloned()
    }

    fn put(&self, slot: Arc<JobSlot>) {
        let mut all = lock(&self.0);
        all.retain(|j| j.disk != slot.disk);
        all.push(slot);
    }
}

impl Service {
    /// `blockcommit` / `blockpull` of running domain `name`: returns the
    /// job once it has begun.
    pub async fn block_job_begin(
        self: &Arc<Self>,
        name: &str,
        req: BlockJobRequest,
    ) -> Result<BlockJobInfo> {
        let span = tracing::info_span!("op", op = if req.job.pull { "blockpull" } else { "blockcommit" }, domain = %name, disk = %req.job.disk);
        let slot = self.active_slot(name).await?;
        let run = slot
            .running()
            .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
        let job_req = req.job.clone();
        let r = run.clone();
        let pivot = req.pivot;
        let (job, js) = self
            .on_live_disks(name, move |store, n, disks| {
                disks.no_block_job(n)?;
                super::live::no_backup(store, n)?;
                let job = blockjob::begin(store, n, &job_req, disks)?;
                let js = Arc::new(JobSlot::of(&job));
                js.pivot.store(pivot, Ordering::SeqCst);
                r.jobs.put(js.clone());
                Ok((job, js))
            })
            .instrument(span.clone())
            .await?;
        let info = js.info();
        let svc = self.clone();
        tokio::spawn(drive(svc, slot, run, js, job).instrument(span));
        Ok(info)
    }

    /// The block job of `disk` (the last one, if none runs).
    pub async fn block_job_info(self: &Arc<Self>, name: &str, disk: &str) -> Result<BlockJobInfo> {
        Ok(self.job_slot(name, disk).await?.info())
    }

    /// `blockjob --abort`: the job stops and the chain is as before;
    /// returns once it is.
    pub async fn block_job_abort(self: &Arc<Self>, name: &str, disk: &str) -> Result<BlockJobInfo> {
        let js = self.job_slot(name, disk).await?;
        if js.ended() {
            return Err(refuse(name, format!("no block job runs on disk '{disk}'")));
        }
        js.control.cancel();
        Ok(js.until(JobPhase::ended).await)
    }

    /// `blockjob --pivot`: a ready active commit serves its base from now
    /// on; returns once it does.
    pub async fn block_job_pivot(self: &Arc<Self>, name: &str, disk: &str) -> Result<BlockJobInfo> {
        let js = self.job_slot(name, disk).await?;
        let phase = js.info().phase;
        if js.kind != Kind::ActiveCommit || phase != JobPhase::Ready {
            return Err(refuse(
                name,
                format!(
                    "disk '{disk}': only a ready active commit pivots (the job is a {} and {})",
                    js.kind.shown(),
                    serde_json::to_string(&phase)
                        .unwrap_or_default()
                        .trim_matches('"')
                ),
            ));
        }
        js.pivot.store(true, Ordering::SeqCst);
        Ok(js.until(JobPhase::ended).await)
    }

    async fn job_slot(self: &Arc<Self>, name: &str, disk: &str) -> Result<Arc<JobSlot>> {
        let slot = self.active_slot(name).await?;
        let run = slot
            .running()
            .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
        run.jobs
            .get(disk)
            .ok_or_else(|| refuse(name, format!("no block job on disk '{disk}'")))
    }
}

/// An operation refused on domain `name`, saying why.
fn refuse(name: &str, problem: String) -> Error {
    Error::from(strata_core::Error::invalid(
        format!("domain '{name}'"),
        problem,
    ))
}

/// Runs `f` on `job` on a blocking thread; gives both back.
async fn blocking<T: Send + 'static>(
    job: BlockJob,
    f: impl FnOnce(&BlockJob) -> strata_core::Result<T> + Send + 'static,
) -> Option<(BlockJob, strata_core::Result<T>)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&job);
        (job, r)
    })
    .await
    .ok()
}

/// Drives `job` to its end (see the module).
async fn drive(
    svc: Arc<Service>,
    slot: Arc<Slot>,
    run: Arc<Running>,
    js: Arc<JobSlot>,
    job: BlockJob,
) {
    let alive = {
        let (slot, run) = (slot.clone(), run.clone());
        move || slot.running().is_some_and(|r| Arc::ptr_eq(&r, &run))
    };
    // The run's end stops the copy.
    let watcher = {
        let (alive, ctl) = (alive.clone(), js.control.clone());
        tokio::spawn(async move {
            while alive() {
                tokio::time::sleep(CONVERGE_EVERY).await;
            }
            ctl.cancel();
        })
    };
    let Some((mut job, mut outcome)) = blocking(job, BlockJob::run).await else {
        js.set(JobPhase::Failed, Some("the job's copy was lost".into()));
        return;
    };
    if outcome.is_ok() && job.two_phase() {
        js.set(JobPhase::Ready, None);
        while !js.pivot.load(Ordering::SeqCst) && !js.control.cancelled() {
            tokio::time::sleep(CONVERGE_EVERY).await;
            let Some((j, r)) = blocking(job, |j| j.converge().map(|_| ())).await else {
                js.set(JobPhase::Failed, Some("the job's copy was lost".into()));
                return;
            };
            job = j;
            if r.is_err() {
                outcome = r;
                break;
            }
        }
    }
    watcher.abort();
    if !alive() {
        drop(job);
        js.set(JobPhase::Aborted, Some("the domain stopped".into()));
        return;
    }
    let name = slot.name.clone();
    let cancelled = js.control.cancelled();
    match outcome {
        Ok(()) if !cancelled => {
            match svc
                .on_live_disks(&name, move |store, n, disks| job.complete(store, n, disks))
                .await
            {
                Ok(()) => js.set(JobPhase::Completed, None),
                Err(e) => js.set(JobPhase::Failed, Some(e.to_string())),
            }
        }
        _ => {
            let why = match outcome {
                Err(e) if !cancelled => Some(e.to_string()),
                _ => None,
            };
            let aborted = svc
                .on_live_disks(&name, move |_, n, disks| job.abort(n, disks))
                .await;
            match (why, aborted) {
                (_, Err(e)) => js.set(JobPhase::Failed, Some(format!("aborting: {e}"))),
                (Some(why), Ok(())) => js.set(JobPhase::Failed, Some(why)),
                (None, Ok(())) => js.set(JobPhase::Aborted, None),
            }
        }
    }
}
