//! Backups of a running domain: each selected disk's point in time as a
//! copy-before-write view ([`strata_image::cbw`]) that the caller exports
//! over NBD (pull mode) or copies to the disk's target ([`LiveBackup::copy`],
//! push mode) while the guest goes on writing.
//!
//! [`begin_on`] does everything that can fail first — the request checked,
//! each view's scratch made (`STATE/scratch/DOMAIN.DISK.qcow2`, 0600), the
//! checkpoint planned, the job recorded — then, with every disk held back
//! at one instant, runs the checkpoint's transaction and starts every view,
//! the guest writing through each view's filter from then on. For an
//! incremental backup, the ranges changed since the checkpoint are read
//! from the served images' bitmaps once the guest runs again (a superset
//! of the changes up to the instant: the bitmaps only grow), and the view
//! gives up every other range, so guest writes there copy nothing.
//! [`LiveBackup::end`] serves the live images again without their filters
//! and records the job's end; the views and their scratch files go.

use std::path::PathBuf;
use std::sync::Arc;

use strata_image::cbw::{self, CbwFilter, CbwOptions, CbwView};
use strata_image::{Format, Image};

use crate::backup::push::{self, BeginRequest, Prepared};
use crate::backup::{BackupMode, BackupServer};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::live::Disks;
use crate::store::{Job, JobState, Store};

/// One disk's view.
#[derive(Debug)]
pub struct LiveDisk {
    /// Disk target (`vda`).
    pub disk: String,
    /// The NBD export name.
    pub export_name: String,
    /// The image the guest writes to (served again at the end).
    pub source: Arc<dyn Image>,
    /// The view a backup program reads.
    pub view: Arc<CbwView>,
    /// For an incremental backup: the exported bitmap's name and the ranges
    /// changed since the checkpoint.
    pub bitmap: Option<(String, Vec<(u64, u64)>)>,
    /// Push mode: the target file and its format.
    pub target: Option<(PathBuf, Format)>,
    /// Push mode: the ranges to copy.
    pub ranges: Vec<(u64, u64)>,
}

/// A running domain's backup (pull or push), its views started.
#[derive(Debug)]
pub struct LiveBackup {
    domain: String,
    /// Pull or push.
    pub mode: BackupMode,
    /// Push mode: the targets exist already and are written into.
    reuse: bool,
    /// Pull mode: where to listen.
    pub server: Option<BackupServer>,
    /// The views.
    pub disks: Vec<LiveDisk>,
    /// The job as recorded.
    pub job: Job,
}

/// A running backup's views and the bytes each is to give, for progress.
#[derive(Debug, Clone)]
pub struct Meter(Vec<(Arc<CbwView>, u64)>);

impl Meter {
    /// Bytes processed so far (given up by the views: read, or of no
    /// interest) and bytes the views' scratch files take on the host.
    pub fn now(&self) -> (u64, u64) {
        self.0
            .iter()
            .fold((0, 0), |(done, scratch), (view, total)| {
                let st = view.stats();
                (
                    done + total.saturating_sub(st.needed.min(*total)),
                    scratch + st.scratch_bytes,
                )
            })
    }
}

/// Where the scratch of `disk` of `domain` goes.
fn scratch_of(store: &Store, domain: &str, disk: &str) -> Result<PathBuf> {
    let dir = store.dir().join("scratch");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        op: "create",
        source: e,
    })?;
    Ok(dir.join(format!("{domain}.{disk}.qcow2")))
}

/// Begins a backup of running domain `domain` on its served `disks` (see
/// the module).
#[tracing::instrument(skip_all, fields(domain = %domain, op = "backup begin (live)"))]
pub fn begin_on(
    store: &mut Store,
    domain: &str,
    req: &BeginRequest,
    disks: &dyn Disks,
) -> Result<LiveBackup> {
    let Prepared {
        what,
        def,
        start,
        checkpoint: cp,
        fallback,
        ..
    } = push::prepare_on(store, domain, req, None, disks)?;
    let mode = def.mode;
    match (def.tls && mode == BackupMode::Pull, req.tls) {
        (true, false) => {
            return Err(Error::invalid(
                what,
                "<server tls='yes'> needs the server's TLS credentials: --tls-creds DIR",
            ))
        }
        (false, true) => {
            return Err(Error::invalid(
                what,
                "--tls-creds is for a pull backup with <server tls='yes'>",
            ))
        }
        _ => {}
    }
    let server = match mode {
        BackupMode::Pull if req.in_process => None,
        BackupMode::Pull => Some(
            def.server
                .clone()
                .ok_or_else(|| Error::invalid(&what, "mode='pull' needs a <server>"))?,
        ),
        BackupMode::Push => None,
    };
    let held = disks.held();
    let dom = store.domain(domain)?;
    let mut planned = Vec::new();
    let mut targets: Vec<(PathBuf, Format)> = Vec::new();
    let mut named_scratch: Vec<PathBuf> = Vec::new();
    for d in def.disks.iter().flatten().filter(|d| d.backup) {
        let disk_what = format!("{what}: disk '{}'", d.name);
        let path = push::disk_source(&dom, &d.name, &disk_what)?;
        let source = held
            .get(&path)
            .cloned()
            .ok_or_else(|| Error::invalid(&disk_what, "the disk is not served"))?;
        let export_name = d.export_name.clone().unwrap_or_else(|| d.name.clone());
        let target = match mode {
            BackupMode::Push => {
                let taken: Vec<PathBuf> = targets.iter().map(|(t, _)| t.clone()).collect();
                let t = push::target_of(d, req.reuse_external, &taken, &disk_what)?;
                targets.push(t.clone());
                Some(t)
            }
            BackupMode::Pull => None,
        };
        if mode == BackupMode::Pull
            && planned
                .iter()
                .any(|(n, ..): &(String, _, _, _, _, _)| *n == export_name)
        {
            return Err(Error::invalid(
                &disk_what,
                format!("export name '{export_name}' is used twice"),
            ));
        }
        // A scratch the XML names is made there and must not exist; the
        // default one, in the state folder, may be a dead daemon's.
        let scratch = match &d.scratch {
            Some(f) if f.exists() => {
                return Err(Error::invalid(
                    &disk_what,
                    format!("scratch {} exists", f.display()),
                ))
            }
            Some(f) => {
                named_scratch.push(f.clone());
                f.clone()
            }
            None => {
                let f = scratch_of(store, domain, &d.name)?;
                let _ = std::fs::remove_file(&f);
                f
            }
        };
        // A backup reads each range once: what it has read is given up.
        let opts = CbwOptions {
            read_once: true,
            ..CbwOptions::new(&scratch)
        };
        let view = cbw::prepare(source.clone(), &opts)
            .map_err(|e| Error::invalid(&disk_what, format!("scratch: {e}")))?;
        let bitmap = match (&d.incremental, &d.export_bitmap) {
            (Some(c), Some(b)) => Some((c.clone(), b.clone())),
            (Some(c), None) => Some((c.clone(), String::new())),
            _ => None,
        };
        planned.push((export_name, d.name.clone(), source, view, bitmap, target));
    }
    if planned.is_empty() {
        return Err(Error::invalid(what, "no disk takes part"));
    }
    let checkpoint = match &cp {
        Some(c) => Some(checkpoint::plan(store, domain, c, &held)?),
        None => None,
    };
    // The job's files: what a dead daemon's successor removes (push
    // targets, scratch files outside the state folder).
    let mut files: Vec<PathBuf> = match req.reuse_external {
        true => Vec::new(),
        false => targets.iter().map(|(t, _)| t.clone()).collect(),
    };
    files.extend(named_scratch);
    let mut job = Job::backup(domain, start, 0, files, def.to_xml());
    job.fallback = fallback;
    store.start_job(&job)?;
    if let Some(p) = &checkpoint {
        p.intend(store, domain)?;
    }
    let fail = |store: &mut Store, e: Error| -> Error {
        if let Err(e2) = store.set_job_state(domain, JobState::Failed, Some(&e.to_string())) {
            tracing::error!(error = %e2, "cannot record the job's failure");
        }
        e
    };
    // The instant: the checkpoint's bitmaps and every view, all disks.
    let mut started = Vec::new();
    let mut incremental = Vec::new();
    {
        // A checkpoint writes to the images: flushed first, as for a
        // snapshot. The views alone write nothing there.
        let held_back = match &checkpoint {
            Some(_) => disks.quiesce(),
            None => disks.hold(),
        };
        let mut quiet = match held_back {
            Ok(q) => q,
            Err(e) => return Err(fail(store, e)),
        };
        if let Some(p) = &checkpoint {
            if let Err(e) = p.apply(&held) {
                drop(quiet);
                checkpoint::after_failure(store, domain, disks);
                return Err(fail(store, e));
            }
        }
        for (export_name, disk, source, view, bitmap, target) in planned {
            let (filter, view): (Arc<CbwFilter>, Arc<CbwView>) = view.start();
            if let Err(e) = quiet.switch(&disk, filter) {
                drop(quiet);
                restore(disks, &started);
                return Err(fail(store, e));
            }
            started.push(LiveDisk {
                disk,
                export_name,
                source,
                view,
                bitmap: None,
                target,
                ranges: Vec::new(),
            });
            incremental.push(bitmap);
        }
    }
    let after = (|| -> Result<u64> {
        if let Some(p) = checkpoint {
            p.record(store, domain)?;
        }
        let mut total = 0;
        for (d, inc) in started.iter_mut().zip(&incremental) {
            let Some((cp, name)) = inc else {
                let view: &dyn Image = d.view.as_ref();
                d.ranges = match mode {
                    BackupMode::Push => push::full_ranges(view, req.reuse_external)?,
                    BackupMode::Pull => vec![(0, view.size())],
                };
                total += d.ranges.iter().map(|r| r.1).sum::<u64>();
                continue;
            };
            let disk_what = format!("{what}: disk '{}'", d.disk);
            let ranges = push::disk_changes(store, domain, &held, cp, &d.disk, &disk_what)?;
            if !req.in_process {
                for (off, len) in gaps(&ranges, d.view.size()) {
                    d.view.done(off, len)?;
                }
            }
            total += ranges.iter().map(|r| r.1).sum::<u64>();
            d.ranges = ranges.clone();
            if mode == BackupMode::Pull {
                d.bitmap = Some((name.clone(), ranges));
            }
        }
        store.job_total(domain, total)?;
        Ok(total)
    })();
    match after {
        Ok(_total) => Ok(LiveBackup {
            domain: domain.to_string(),
            mode,
            reuse: req.reuse_external,
            server,
            disks: started,
            job,
        }),
        Err(e) => {
            restore(disks, &started);
            Err(fail(store, e))
        }
    }
}

/// The ranges of `[0, size)` outside the sorted, disjoint `ranges`.
fn gaps(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(o, l) in ranges {
        if o > at {
            out.push((at, o - at));
        }
        at = at.max(o + l);
    }
    if at < size {
        out.push((at, size - at));
    }
    out
}

/// Serves each disk's live image again in place of its filter.
fn restore(disks: &dyn Disks, started: &[LiveDisk]) {
    let mut quiet = match disks.hold() {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "cannot hold the disks back to take the backup's filters away");
            return;
        }
    };
    for d in started {
        if let Err(e) = quiet.switch(&d.disk, d.source.clone()) {
            tracing::error!(disk = %d.disk, error = %e, "cannot take the backup's filter away");
        }
    }
}

impl LiveBackup {
    /// The domain backed up.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// What measures the backup's progress while it runs.
    pub fn meter(&self) -> Meter {
        Meter(
            self.disks
                .iter()
                .map(|d| (d.view.clone(), d.ranges.iter().map(|r| r.1).sum()))
                .collect(),
        )
    }

    /// Why the backup cannot go on (a view gave up), if it cannot.
    pub fn broken(&self) -> Option<String> {
        self.disks.iter().find_map(|d| {
            d.view
                .broken()
                .map(|why| format!("disk '{}': {why}", d.disk))
        })
    }

    /// Push mode: copies each view's ranges to its target, recording
    /// progress in the store of `dir` and stopping when `backup abort` asks
    /// (the error then says so).
    pub fn copy(&self, dir: &std::path::Path) -> Result<()> {
        let plans: Vec<push::Plan> = self
            .disks
            .iter()
            .filter_map(|d| {
                let (target, format) = d.target.clone()?;
                Some(push::Plan {
                    disk: d.disk.clone(),
                    src: d.view.clone(),
                    target,
                    format,
                    size: d.view.size(),
                    ranges: d.ranges.clone(),
                })
            })
            .collect();
        let total = plans.iter().flat_map(|p| &p.ranges).map(|r| r.1).sum();
        let meter = self.meter();
        let scratch = || meter.now().1;
        push::copy_all(
            dir,
            &self.domain,
            &plans,
            self.reuse,
            total,
            &|_, _| {},
            Some(&scratch),
        )
    }

    /// Ends the job on the domain's served `disks` (`None`: the domain has
    /// stopped): the live images served without filters, the views and
    /// their scratch gone, the job completed, or failed with `outcome`'s
    /// error or a view's.
    pub fn end(
        self,
        store: &mut Store,
        disks: Option<&dyn Disks>,
        outcome: std::result::Result<(), String>,
    ) -> Result<Job> {
        if let Some(d) = disks {
            restore(d, &self.disks);
        }
        let outcome = match (outcome, self.broken()) {
            (Ok(()), Some(why)) => Err(why),
            (o, _) => o,
        };
        let domain = self.domain.clone();
        let made: Vec<PathBuf> = match self.reuse {
            true => Vec::new(),
            false => self
                .disks
                .iter()
                .filter_map(|d| d.target.clone().map(|t| t.0))
                .collect(),
        };
        drop(self);
        match outcome {
            Ok(()) => store.set_job_state(&domain, JobState::Completed, None)?,
            Err(e) => {
                // A push backup's targets that did not complete go.
                push::remove(&made);
                let state = match e.contains(push::ABORTED) {
                    true => JobState::Aborted,
                    false => JobState::Failed,
                };
                store.set_job_state(&domain, state, Some(&e))?
            }
        }
        store.job(&domain)?.ok_or_else(|| {
            Error::invalid(
                format!("domain '{domain}': backup"),
                "the job's record vanished",
            )
        })
    }
}
