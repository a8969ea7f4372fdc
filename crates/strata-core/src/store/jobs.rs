//! The job table: the last (or running) long job of each domain — for now
//! push backups — with its progress, so that `backup status` and
//! `backup abort` in another process can see and stop it.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::error::{Error, Result};

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Copying.
    Running,
    /// Copy done; recording the outcome (no longer abortable).
    Finishing,
    /// Done.
    Completed,
    /// Ended by an error.
    Failed,
    /// Ended by `abort`.
    Aborted,
}

impl JobState {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Finishing => "finishing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "finishing" => JobState::Finishing,
            "completed" => JobState::Completed,
            "aborted" => JobState::Aborted,
            _ => JobState::Failed,
        }
    }

    /// True while the job's process works on it.
    pub fn active(self) -> bool {
        matches!(self, JobState::Running | JobState::Finishing)
    }
}

/// A domain's job as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// The domain.
    pub domain: String,
    /// What it does (`backup`).
    pub kind: String,
    /// Where it is.
    pub state: JobState,
    /// The process running it.
    pub pid: u32,
    /// Seconds since the Epoch when it started.
    pub started: u64,
    /// … and when it ended.
    pub ended: Option<u64>,
    /// Bytes to process.
    pub total: u64,
    /// Bytes processed.
    pub done: u64,
    /// `abort` asked the job to stop.
    pub abort_requested: bool,
    /// Files the job created (removed again if it does not complete).
    pub files: Vec<PathBuf>,
    /// The job's definition (for backups: the domainbackup XML).
    pub xml: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Disks backed up in full although an incremental backup was asked,
    /// one line each saying why (`--fallback-full`).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// A live backup: bytes its scratch files take on the host now (at the
    /// end: when it ended).
    #[serde(default)]
    pub scratch: u64,
}

impl Job {
    /// A backup job of this process, running from `started`.
    pub fn backup(domain: &str, started: u64, total: u64, files: Vec<PathBuf>, xml: String) -> Job {
        Job {
            domain: domain.to_string(),
            kind: "backup".into(),
            state: JobState::Running,
            pid: std::process::id(),
            started,
            ended: None,
            total,
            done: 0,
            abort_requested: false,
            files,
            xml,
            error: None,
            fallback: Vec::new(),
            scratch: 0,
        }
    }
}

impl Store {
    /// The last job of `domain`, if any.
    pub fn job(&self, domain: &str) -> Result<Option<Job>> {
        self.domain(domain)?;
        let row = self
            .conn
            .query_row(
                "SELECT kind, state, pid, started, ended, total, done, abort_requested, files, xml, error, fallback, scratch
                 FROM jobs WHERE domain = ?1",
                [domain],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, bool>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, i64>(12)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((
            kind,
            state,
            pid,
            started,
            ended,
            total,
            done,
            abort,
            files,
            xml,
            error,
            fallback,
            scratch,
        )) = row
        else {
            return Ok(None);
        };
        let state = JobState::parse(&state);
        // The files a running job made are what abort (or reaping a job
        // whose process died) deletes: a list that cannot be read must not
        // read as "none". A finished job's files are its results, which
        // nothing deletes: an unreadable list there only warns, so one bad
        // record does not block the domain's next backup.
        let files = match serde_json::from_str(&files) {
            Ok(f) => f,
            Err(e) => {
                let what = format!("domain '{domain}': {kind} job");
                let problem = format!(
                    "its list of files in {} is unreadable ({e}): {files:?}",
                    self.path.display()
                );
                if state == JobState::Running {
                    return Err(Error::invalid(what, problem));
                }
                tracing::warn!("{what}: {problem}");
                Vec::new()
            }
        };
        Ok(Some(Job {
            domain: domain.to_string(),
            kind,
            state,
            pid: pid as u32,
            started: started as u64,
            ended: ended.map(|e| e as u64),
            total: total as u64,
            done: done as u64,
            abort_requested: abort,
            files,
            xml,
            error,
            fallback: serde_json::from_str(&fallback).unwrap_or_else(|_| vec![fallback]),
            scratch: scratch.max(0) as u64,
        }))
    }

    /// Records `job` as the domain's job, replacing a finished one; refused
    /// while another is active.
    pub fn start_job(&mut self, job: &Job) -> Result<()> {
        let files = serde_json::to_string(&job.files).unwrap_or_else(|_| "[]".into());
        let fallback = serde_json::to_string(&job.fallback).unwrap_or_else(|_| "[]".into());
        self.write(|tx, sql| {
            let state: Option<String> = tx
                .query_row(
                    "SELECT state FROM jobs WHERE domain = ?1",
                    [&job.domain],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            if state.is_some_and(|s| JobState::parse(&s).active()) {
                return Err(Error::invalid(
                    format!("domain '{}'", job.domain),
                    "a job is already running (see `backup status`)",
                ));
            }
            tx.execute(
                "INSERT OR REPLACE INTO jobs
                 (domain, kind, state, pid, started, ended, total, done, abort_requested, files, xml, error, fallback)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, 0, ?8, ?9, NULL, ?10)",
                params![
                    job.domain,
                    job.kind,
                    job.state.as_str(),
                    job.pid as i64,
                    job.started as i64,
                    job.total as i64,
                    job.done as i64,
                    files,
                    job.xml,
                    fallback
                ],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// Records how many bytes the domain's job has to process (known once
    /// a live backup's instant has passed).
    pub fn job_total(&mut self, domain: &str, total: u64) -> Result<()> {
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE jobs SET total = ?2 WHERE domain = ?1",
                params![domain, total as i64],
            )
            .map(|_| ())
            .map_err(sql)
        })
    }

    /// Records the bytes the domain's job has processed; returns whether an
    /// abort was requested.
    pub fn job_progress(&mut self, domain: &str, done: u64) -> Result<bool> {
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE jobs SET done = ?2 WHERE domain = ?1",
                params![domain, done as i64],
            )
            .map_err(sql)?;
            tx.query_row(
                "SELECT abort_requested FROM jobs WHERE domain = ?1",
                [domain],
                |r| r.get(0),
            )
            .map_err(sql)
        })
    }

    /// Records a live backup's progress: bytes processed and bytes its
    /// scratch files take; returns whether an abort was requested.
    pub fn job_usage(&mut self, domain: &str, done: u64, scratch: u64) -> Result<bool> {
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE jobs SET done = ?2, scratch = ?3 WHERE domain = ?1",
                params![domain, done as i64, scratch as i64],
            )
            .map_err(sql)?;
            tx.query_row(
                "SELECT abort_requested FROM jobs WHERE domain = ?1",
                [domain],
                |r| r.get(0),
            )
            .map_err(sql)
        })
    }

    /// Moves the domain's job to `state` (a final state records the end
    /// time, and `error`).
    pub fn set_job_state(
        &mut self,
        domain: &str,
        state: JobState,
        error: Option<&str>,
    ) -> Result<()> {
        let ended = (!state.active()).then(crate::now);
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE jobs SET state = ?2, ended = ?3, error = ?4 WHERE domain = ?1",
                params![domain, state.as_str(), ended.map(|e| e as i64), error],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// Asks the domain's running job to stop.
    pub fn request_abort(&mut self, domain: &str) -> Result<()> {
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE jobs SET abort_requested = 1 WHERE domain = ?1",
                [domain],
            )
            .map_err(sql)?;
            Ok(())
        })
    }
}
