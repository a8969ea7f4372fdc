//! Push-mode backup of a machine that is not running (`backup begin`):
//! each selected disk is copied, whole or only what changed since a
//! checkpoint, into a target file in qcow2 or raw. An incremental target
//! is a qcow2 file without a backing file holding exactly the changed
//! ranges (zeros as zero clusters), to be rebased onto the previous backup
//! to restore. A new checkpoint (`--checkpointxml`) is created after the
//! copy succeeds, under the same domain lock, so nothing can write in
//! between: it marks exactly the state the backup holds.
//!
//! The job and its progress are kept in the store; `backup status` and
//! `backup abort` in another process read and stop it. A job whose process
//! ended without finishing is reaped by the next command that looks at
//! it: its files are removed and it is marked failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strata_image::ops::{convert_dirty, Progress};
use strata_image::qcow2::{CreateOptions, Qcow2};
use strata_image::storage::{FileStorage, Storage};
use strata_image::{ChainOptions, Format};

use crate::backup::{BackupDef, BackupMode};
use crate::checkpoint::{self, CheckpointRequest};
use crate::error::{Error, Result};
use crate::live::Offline;
use crate::lock::DomainLock;
use crate::store::{Job, JobState, Store};

/// Guest bytes copied between two looks at an abort request.
const BATCH: u64 = 256 << 20;

/// What `backup begin` was asked.
#[derive(Clone, Debug, Default)]
pub struct BeginRequest {
    /// domainbackup XML (`None`: a full push backup of every disk).
    pub backup_xml: Option<String>,
    /// domaincheckpoint XML of a checkpoint to create with the backup.
    pub checkpoint_xml: Option<String>,
    /// Write into target files that exist (otherwise they must not).
    pub reuse_external: bool,
    /// A disk whose incremental backup would not be exact (its
    /// checkpoint's bitmaps are damaged or missing) gets a full backup
    /// instead of failing the backup.
    pub fallback_full: bool,
    /// TLS credentials were given for the pull backup's server (needed by,
    /// and only taken for, `<server tls='yes'>`).
    pub tls: bool,
    /// Pull mode read by the caller in its own process (a repository
    /// backup): no `<server>`, and the views give up nothing by
    /// themselves (the caller reads whole chunks around the changes and
    /// gives up the rest).
    pub in_process: bool,
}

/// One disk's copy.
pub(crate) struct Plan {
    pub disk: String,
    /// The disk's chain (or a running disk's view), opened once for
    /// planning and copying.
    pub src: std::sync::Arc<dyn strata_image::Image>,
    pub target: PathBuf,
    pub format: Format,
    pub size: u64,
    pub ranges: Vec<(u64, u64)>,
}

/// Runs a push backup of `domain` to its end; returns the finished job.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "backup begin (push)"))]
pub fn begin(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    progress: Progress,
) -> Result<Job> {
    let Prepared {
        lock: _lock,
        what,
        def,
        start,
        checkpoint: cp,
        fallback,
    } = prepare(store, domain, req, BackupMode::Push)?;
    let plans = plan(store, domain, &def, req.reuse_external, &what)?;
    let total = plans.iter().flat_map(|p| &p.ranges).map(|&(_, l)| l).sum();
    let files: Vec<PathBuf> = if req.reuse_external {
        Vec::new()
    } else {
        plans.iter().map(|p| p.target.clone()).collect()
    };
    let mut job = Job::backup(domain, start, total, files.clone(), def.to_xml());
    job.fallback = fallback;
    store.start_job(&job)?;
    let copied = copy_all(
        store.dir(),
        domain,
        &plans,
        req.reuse_external,
        total,
        progress,
        None,
    );
    // Close the sources (and their locks): the checkpoint writes to them.
    drop(plans);
    let finished = copied.and_then(|()| {
        store.set_job_state(domain, JobState::Finishing, None)?;
        match &cp {
            Some(c) => checkpoint::create_in(store, domain, c, &Offline).map(|_| ()),
            None => Ok(()),
        }
    });
    match finished {
        Ok(()) => store.set_job_state(domain, JobState::Completed, None)?,
        Err(e) => {
            remove(&files);
            let state = if matches!(&e, Error::Invalid { problem, .. } if problem == ABORTED) {
                JobState::Aborted
            } else {
                JobState::Failed
            };
            store.set_job_state(domain, state, Some(&e.to_string()))?;
            return Err(e);
        }
    }
    store
        .job(domain)?
        .ok_or_else(|| Error::invalid(what, "the job's record vanished"))
}

/// A backup request checked and resolved, under the domain lock.
pub(crate) struct Prepared {
    /// The domain's lock (`None` live: the run holds it).
    pub lock: Option<DomainLock>,
    /// Names the backup in errors.
    pub what: String,
    /// The definition, every default resolved.
    pub def: BackupDef,
    /// When it started.
    pub start: u64,
    /// The checkpoint to create with it.
    pub checkpoint: Option<CheckpointRequest>,
    /// Why disks get a full backup instead of the incremental one asked
    /// (`--fallback-full`), one line per disk; empty when none does.
    pub fallback: Vec<String>,
}

/// Takes the domain lock, reaps a dead job, reads and resolves the backup
/// XML (which must be of `mode`) and the checkpoint XML, and refuses a
/// checkpoint name already taken.
pub(crate) fn prepare(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    mode: BackupMode,
) -> Result<Prepared> {
    prepare_on(store, domain, req, Some(mode), &crate::live::Offline)
}

/// [`prepare`] on `disks`: live, the run holds the lock, and a job still
/// active is one of this daemon's. `mode` `None` takes the XML's.
pub(crate) fn prepare_on(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    mode: Option<BackupMode>,
    disks: &dyn crate::live::Disks,
) -> Result<Prepared> {
    let lock = disks.lock(store.dir(), domain)?;
    let what = format!("domain '{domain}': backup");
    match &lock {
        Some(l) => reap(store, domain, l)?,
        None => {
            if store.job(domain)?.is_some_and(|j| j.state.active()) {
                return Err(Error::invalid(what, "a backup job is already running"));
            }
        }
    }
    checkpoint::recover(store, domain, disks)?;
    let dom = store.domain(domain)?;
    let def = match &req.backup_xml {
        Some(x) => BackupDef::from_xml(x, &format!("{what}: --backupxml"))?,
        None => BackupDef::full_push(),
    };
    if let Some(mode) = mode.filter(|m| *m != def.mode) {
        let problem = match mode {
            BackupMode::Push => "mode='pull' is served by `strata backup begin` itself; this call only copies (push)",
            BackupMode::Pull => "this is a push backup; pull mode needs mode='pull' and a <server>",
        };
        return Err(Error::invalid(what, problem));
    }
    let start = crate::now();
    let mut def = def.resolve(&dom, start, &what)?;
    if def.mode == BackupMode::Pull && def.server.is_none() && !req.in_process {
        return Err(Error::invalid(
            what,
            "mode='pull' needs a <server> (transport='unix' socket=PATH, or name=HOST port=PORT)",
        ));
    }
    let fallback = check_chains(store, domain, &mut def, req.fallback_full, disks, &what)?;
    let checkpoint = match &req.checkpoint_xml {
        Some(x) => Some(CheckpointRequest::from_xml(
            x,
            &format!("{what}: --checkpointxml"),
        )?),
        None => None,
    };
    if let Some(name) = checkpoint.as_ref().and_then(|c| c.name.as_ref()) {
        if checkpoint::checkpoints(store, domain)?
            .iter()
            .any(|c| &c.name == name)
        {
            return Err(Error::invalid(
                what,
                format!("checkpoint '{name}' already exists"),
            ));
        }
    }
    Ok(Prepared {
        lock,
        what,
        def,
        start,
        checkpoint,
        fallback,
    })
}

/// Checks, before anything is made, that every incremental disk of `def`
/// can be backed up exactly from its checkpoint's bitmaps (read from the
/// served images where `disks` holds them). A disk that cannot is an
/// error naming the disk, the bitmap and why; with `fallback_full`, it is
/// switched to a full backup instead, and the returned lines say so.
fn check_chains(
    store: &Store,
    domain: &str,
    def: &mut BackupDef,
    fallback_full: bool,
    disks: &dyn crate::live::Disks,
    what: &str,
) -> Result<Vec<String>> {
    let held = disks.held();
    let mut fallback = Vec::new();
    for d in def.disks.iter_mut().flatten().filter(|d| d.backup) {
        let Some(cp) = d.incremental.clone() else {
            continue;
        };
        let Some(why) = checkpoint::health::problem(store, domain, &cp, &d.name, &held) else {
            continue;
        };
        if !fallback_full {
            return Err(Error::invalid(
                format!("{what}: disk '{}'", d.name),
                format!("no exact incremental backup since checkpoint '{cp}': {why}; --fallback-full takes a full backup instead"),
            ));
        }
        tracing::info!(disk = %d.name, checkpoint = %cp, "{why}: full backup instead");
        fallback.push(format!(
            "disk '{}': full backup instead of incremental since checkpoint '{cp}': {why}",
            d.name
        ));
        d.incremental = None;
        d.full = Some(true);
    }
    Ok(fallback)
}

/// The problem an aborted copy reports.
pub(crate) const ABORTED: &str = "aborted on request";

/// Works out each disk's source, target and ranges, and checks targets.
fn plan(
    store: &Store,
    domain: &str,
    def: &BackupDef,
    reuse: bool,
    what: &str,
) -> Result<Vec<Plan>> {
    let dom = store.domain(domain)?;
    let mut plans = Vec::new();
    for d in def.disks.iter().flatten().filter(|d| d.backup) {
        let disk_what = format!("{what}: disk '{}'", d.name);
        let source = disk_source(&dom, &d.name, &disk_what)?;
        let taken: Vec<PathBuf> = plans.iter().map(|p: &Plan| p.target.clone()).collect();
        let (target, format) = target_of(d, reuse, &taken, &disk_what)?;
        let chain = strata_image::open(&source, &ChainOptions::default())?;
        let size = chain.size();
        let ranges = match &d.incremental {
            None => full_ranges(chain.as_ref(), reuse)?,
            Some(cp) => {
                let none = strata_image::transaction::Held::none();
                disk_changes(store, domain, &none, cp, &d.name, &disk_what)?
            }
        };
        plans.push(Plan {
            disk: d.name.clone(),
            src: chain,
            target,
            format,
            size,
            ranges,
        });
    }
    if plans.is_empty() {
        return Err(Error::invalid(what, "no disk takes part"));
    }
    Ok(plans)
}

/// What a full backup of `src` copies: all of it into a target reused
/// (whose old data must go), else what does not read as zeros.
pub(crate) fn full_ranges(src: &dyn strata_image::Image, reuse: bool) -> Result<Vec<(u64, u64)>> {
    let size = src.size();
    if reuse {
        return Ok(vec![(0, size)]);
    }
    Ok(src
        .block_status(0, size)?
        .into_iter()
        .filter(|e| !e.zero)
        .map(|e| (e.start, e.length))
        .collect())
}

/// Disk `d`'s target and its format, checked: present when reused, absent
/// otherwise, not one of `taken`.
pub(crate) fn target_of(
    d: &crate::backup::BackupDisk,
    reuse: bool,
    taken: &[PathBuf],
    disk_what: &str,
) -> Result<(PathBuf, Format)> {
    let target = d
        .target
        .clone()
        .ok_or_else(|| Error::invalid(disk_what, "has no target"))?;
    let format = match d.format.as_deref() {
        None | Some("qcow2") => Format::Qcow2,
        Some("raw") => Format::Raw,
        Some(f) => {
            return Err(Error::invalid(
                disk_what,
                format!("target format '{f}' is not qcow2 or raw"),
            ))
        }
    };
    match (reuse, target.exists()) {
        (false, true) => {
            return Err(Error::invalid(
                disk_what,
                format!(
                    "target {} exists (--reuse-external writes into it)",
                    target.display()
                ),
            ))
        }
        (true, false) => {
            return Err(Error::invalid(
                disk_what,
                format!(
                    "target {} does not exist (--reuse-external needs it)",
                    target.display()
                ),
            ))
        }
        _ => {}
    }
    if taken.contains(&target) {
        return Err(Error::invalid(
            disk_what,
            format!("target {} is used twice", target.display()),
        ));
    }
    if format == Format::Raw && d.incremental.is_some() && !reuse {
        tracing::warn!(
            "{disk_what}: a raw incremental target cannot tell unchanged ranges from zeros"
        );
    }
    Ok((target, format))
}

/// The image of `dom`'s disk `disk` (`what` names it in errors).
pub(crate) fn disk_source(dom: &crate::domain::Domain, disk: &str, what: &str) -> Result<PathBuf> {
    dom.disks()
        .into_iter()
        .find(|x| x.target == disk)
        .and_then(|x| x.source)
        .ok_or_else(|| Error::invalid(what, "has no image"))
}

/// The ranges of `disk` changed since checkpoint `cp`, read from the
/// `held` images where held (a running domain's); `what` names the disk
/// in errors.
pub(crate) fn disk_changes(
    store: &Store,
    domain: &str,
    held: &strata_image::transaction::Held,
    cp: &str,
    disk: &str,
    what: &str,
) -> Result<Vec<(u64, u64)>> {
    checkpoint::disk_ranges_in(store, domain, cp, disk, held).map_err(|e| match e {
        Error::Invalid { problem, .. } => Error::invalid(what, problem),
        other => other,
    })
}

/// Copies every disk, reporting progress to the store (and `progress`;
/// with `scratch`, the bytes a live backup's scratch files take too) and
/// stopping at the next batch when an abort is requested.
pub(crate) fn copy_all(
    dir: &Path,
    domain: &str,
    plans: &[Plan],
    reuse: bool,
    total: u64,
    progress: Progress,
    scratch: Option<&(dyn Fn() -> u64 + Sync)>,
) -> Result<()> {
    let done = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let over = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // A separate connection: the store is not shared across threads.
            let Ok(mut st) = Store::open(dir) else { return };
            loop {
                let end = over.load(Ordering::Acquire);
                let now = done.load(Ordering::Relaxed);
                let asked = match scratch {
                    Some(bytes) => st.job_usage(domain, now, bytes()),
                    None => st.job_progress(domain, now),
                };
                if let Ok(true) = asked {
                    abort.store(true, Ordering::Release);
                }
                if end {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut base = 0;
        let mut result = Ok(());
        for p in plans {
            result = copy_one(p, reuse, &mut base, &abort, &|d, _| {
                done.store(d, Ordering::Relaxed);
                progress(d, total);
            })
            .map_err(|e| match e {
                Error::Invalid { .. } => e,
                other => Error::invalid(
                    format!("domain '{domain}': backup of disk '{}'", p.disk),
                    other.to_string(),
                ),
            });
            if result.is_err() {
                break;
            }
        }
        over.store(true, Ordering::Release);
        result
    })
}

/// Copies one disk's ranges into its target, in batches.
fn copy_one(
    p: &Plan,
    reuse: bool,
    base: &mut u64,
    abort: &AtomicBool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let what = format!("disk '{}': target {}", p.disk, p.target.display());
    if !reuse {
        match p.format {
            Format::Qcow2 => Qcow2::create_file(
                &p.target,
                &CreateOptions {
                    size: p.size,
                    ..Default::default()
                },
            )?,
            _ => {
                let st = FileStorage::create(&p.target, false)?;
                st.set_len(p.size)?;
                st.flush()?;
            }
        }
    }
    let dst = strata_image::open(
        &p.target,
        &ChainOptions {
            writable: true,
            format: Some(p.format),
            backing: false,
            lock: true,
            ..Default::default()
        },
    )?;
    if dst.size() < p.size {
        return Err(Error::invalid(
            what,
            format!(
                "holds {} bytes, less than the disk's {}",
                dst.size(),
                p.size
            ),
        ));
    }
    for batch in batches(&p.ranges, BATCH) {
        if abort.load(Ordering::Acquire) {
            return Err(Error::invalid(what, ABORTED));
        }
        let at = *base;
        convert_dirty(p.src.as_ref(), dst.as_ref(), &batch, &|d, _| {
            progress(at + d, 0)
        })?;
        *base += batch.iter().map(|&(_, l)| l).sum::<u64>();
    }
    dst.flush()?;
    Ok(())
}

/// `ranges` cut into groups of at most `max` bytes.
fn batches(ranges: &[(u64, u64)], max: u64) -> Vec<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut room = max;
    for &(mut start, mut len) in ranges {
        while len > 0 {
            let n = len.min(room);
            cur.push((start, n));
            start += n;
            len -= n;
            room -= n;
            if room == 0 {
                out.push(std::mem::take(&mut cur));
                room = max;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(crate) fn remove(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Marks a job whose process ended without finishing it as failed and
/// removes the files it made; the caller holds the domain lock, so no
/// process works on it.
pub(crate) fn reap(store: &mut Store, domain: &str, _lock: &DomainLock) -> Result<()> {
    if let Some(job) = store.job(domain)?.filter(|j| j.state.active()) {
        remove(&job.files);
        let why = if job.abort_requested {
            (
                JobState::Aborted,
                "aborted; the strata process running it had ended",
            )
        } else {
            (
                JobState::Failed,
                "the strata process running it ended before it finished",
            )
        };
        store.set_job_state(domain, why.0, Some(why.1))?;
    }
    Ok(())
}

/// The domain's last job, reaping it first if its process is gone.
pub fn status(store: &mut Store, domain: &str) -> Result<Option<Job>> {
    if store.job(domain)?.is_some_and(|j| j.state.active()) {
        if let Some(lock) = DomainLock::try_acquire(store.dir(), domain)? {
            reap(store, domain, &lock)?;
        }
    }
    store.job(domain)
}

/// Stops the domain's running backup: asks its process to stop and waits
/// for it (up to `wait`), or reaps the job if its process is gone.
#[tracing::instrument(skip_all, fields(domain = %domain, op = "backup abort"))]
pub fn abort(store: &mut Store, domain: &str, wait: Duration) -> Result<Job> {
    let what = format!("domain '{domain}': backup abort");
    let job = store
        .job(domain)?
        .filter(|j| j.state.active())
        .ok_or_else(|| Error::invalid(&what, "no backup job is running"))?;
    if let Some(lock) = DomainLock::try_acquire(store.dir(), domain)? {
        store.request_abort(domain)?;
        reap(store, domain, &lock)?;
    } else {
        if job.state == JobState::Finishing {
            return Err(Error::invalid(
                what,
                "the backup has copied everything and is recording its checkpoint; it can no longer be aborted",
            ));
        }
        store.request_abort(domain)?;
        let until = std::time::Instant::now() + wait;
        while store.job(domain)?.is_some_and(|j| j.state.active()) {
            if std::time::Instant::now() > until {
                return Err(Error::invalid(
                    what,
                    format!(
                        "asked process {} to stop, but it has not yet after {} s",
                        job.pid,
                        wait.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    store
        .job(domain)?
        .ok_or_else(|| Error::invalid(what, "the job's record vanished"))
}
