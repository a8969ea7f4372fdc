//! `strata blockcommit`, `blockpull` and `blockjob`: block jobs of a
//! running domain, done by its daemon; with `--wait` the command follows
//! the job to its end (or an active commit to its ready state), with
//! `--verbose` showing progress as virsh does.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use strata_core::blockjob::BlockRequest;
use strata_daemon::types::{BlockJobInfo, BlockJobRequest, JobPhase};

use crate::cli::{BlockCommitArgs, BlockJobArgs, BlockPullArgs, GlobalArgs};
use crate::domain::state_dir;
use crate::live::{api_error, client, is_active};
use crate::output::Output;

/// How often `--wait` looks at the job.
const POLL: Duration = Duration::from_millis(250);

/// `strata blockcommit`.
pub fn commit(a: BlockCommitArgs, g: &GlobalArgs, out: &Output) -> Result<u8> {
    let req = BlockJobRequest {
        job: BlockRequest {
            disk: a.disk,
            pull: false,
            top: a.top,
            base: a.base,
            active: a.active,
            bandwidth: a.bandwidth << 20,
        },
        pivot: a.pivot,
    };
    let state = g.state_dir.as_deref();
    begin(&a.domain, req, a.wait || a.pivot, g.verbose > 0, state, out)
}

/// `strata blockpull`.
pub fn pull(a: BlockPullArgs, g: &GlobalArgs, out: &Output) -> Result<u8> {
    let req = BlockJobRequest {
        job: BlockRequest {
            disk: a.disk,
            pull: true,
            base: a.base,
            bandwidth: a.bandwidth << 20,
            ..BlockRequest::default()
        },
        pivot: false,
    };
    let state = g.state_dir.as_deref();
    begin(&a.domain, req, a.wait, g.verbose > 0, state, out)
}

/// `strata blockjob`.
pub fn job(a: BlockJobArgs, state: Option<&Path>, out: &Output) -> Result<u8> {
    let dir = state_dir(state)?;
    must_run(&dir, &a.domain)?;
    let what = if a.abort {
        "/abort"
    } else if a.pivot {
        "/pivot"
    } else {
        ""
    };
    let info = client(&dir)
        .block_job(&a.domain, &a.disk, what)
        .map_err(api_error)?;
    if out.json() {
        out.print_json(&info)?;
    } else if what.is_empty() && info.phase.ended() {
        out.text(&format!(
            "No current block job for {} (the last one: {})\n",
            info.disk,
            ended(&info)
        ))?;
    } else if what.is_empty() {
        out.text(&format!("{}\n", line(&info)))?;
    } else {
        out.say(&ended(&info))?;
    }
    finished(&info, !what.is_empty())
}

fn must_run(dir: &Path, domain: &str) -> Result<()> {
    if !is_active(dir, domain)? {
        bail!("domain '{domain}' is not running: block jobs work on running domains (offline: strata img commit / img rebase)");
    }
    Ok(())
}

/// Begins the job; with `wait` follows it.
fn begin(
    domain: &str,
    req: BlockJobRequest,
    wait: bool,
    verbose: bool,
    state: Option<&Path>,
    out: &Output,
) -> Result<u8> {
    let dir = state_dir(state)?;
    must_run(&dir, domain)?;
    let c = client(&dir);
    let mut info = c.block_job_begin(domain, &req).map_err(api_error)?;
    if !wait {
        if out.json() {
            out.print_json(&info)?;
        } else {
            out.say(&format!("{} started", info.kind.shown()))?;
        }
        return Ok(0);
    }
    // An active commit without --pivot is waited for until ready.
    let until_ready = info.kind == strata_core::blockjob::Kind::ActiveCommit && !req.pivot;
    loop {
        if verbose && !out.json() {
            eprint!("\r{}", line(&info));
        }
        if info.phase.ended() || (until_ready && info.phase == JobPhase::Ready) {
            break;
        }
        std::thread::sleep(POLL);
        info = c.block_job(domain, &info.disk, "").map_err(api_error)?;
    }
    if verbose && !out.json() {
        eprintln!();
    }
    if out.json() {
        out.print_json(&info)?;
    } else if info.phase == JobPhase::Ready {
        out.say(&format!(
            "Now in synchronized phase: pivot with strata blockjob {domain} {} --pivot",
            info.disk
        ))?;
    } else {
        out.say(&ended(&info))?;
    }
    finished(&info, true)
}

/// virsh's progress line: `Block Commit: [ 42 %]`.
fn line(info: &BlockJobInfo) -> String {
    // A ready job has copied all it knew of; what the guest writes since
    // is the pivot's.
    let pct = match info.total {
        _ if info.phase != JobPhase::Running => 100,
        0 => 0,
        t => (info.done.min(t) * 100 / t) as u32,
    };
    let ready = if info.phase == JobPhase::Ready {
        " (ready)"
    } else {
        ""
    };
    let bw = match info.bandwidth {
        0 => String::new(),
        b => format!("    Bandwidth limit: {} MiB/s", b >> 20),
    };
    format!("{}: [{pct:>3} %]{ready}{bw}", info.kind.shown())
}

/// How an ended job is told.
fn ended(info: &BlockJobInfo) -> String {
    match (&info.phase, &info.error) {
        (JobPhase::Completed, _) => match info.kind {
            strata_core::blockjob::Kind::ActiveCommit => "Successfully pivoted".to_string(),
            strata_core::blockjob::Kind::Commit => "Commit complete".to_string(),
            strata_core::blockjob::Kind::Pull => "Pull complete".to_string(),
        },
        (JobPhase::Aborted, None) => "Job aborted".to_string(),
        (p, Some(e)) => format!("{}: {e}", phase_word(p)),
        (p, None) => phase_word(p).to_string(),
    }
}

fn phase_word(p: &JobPhase) -> &'static str {
    match p {
        JobPhase::Running => "running",
        JobPhase::Ready => "ready",
        JobPhase::Completed => "completed",
        JobPhase::Aborted => "aborted",
        JobPhase::Failed => "failed",
    }
}

/// The exit status: a failed job is an error when `fail` (the command
/// followed or ended it, rather than only looked at it).
fn finished(info: &BlockJobInfo, fail: bool) -> Result<u8> {
    if fail && info.phase == JobPhase::Failed {
        return Err(anyhow!(
            "block job on disk '{}' failed: {}",
            info.disk,
            info.error.as_deref().unwrap_or("unknown reason")
        ));
    }
    Ok(0)
}
