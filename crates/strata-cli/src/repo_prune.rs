//! `strata repo prune`: the backups a keep policy does not keep are
//! removed (strata-repo's `prune` reckons which), then garbage collection
//! deletes what no backup names and was not used within the grace period.

use anyhow::{bail, Result};
use serde_json::json;
use strata_repo::prune::{self, Keep};
use strata_repo::Repo;

use crate::exit::OK;
use crate::output::Output;
use crate::repo::{bytes, utc};
use crate::repo_args::RepoPruneArgs;

/// Runs `repo prune` on `repo`.
pub fn run(repo: &Repo, a: &RepoPruneArgs, out: &Output) -> Result<u8> {
    let keep = Keep {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    if !keep.any() {
        bail!("repo prune needs a rule (--keep-last, --keep-hourly, --keep-daily, --keep-weekly or --keep-monthly): without one every backup would go");
    }
    let backups: Vec<_> = repo
        .backups()?
        .into_iter()
        .filter(|m| a.domain.as_ref().is_none_or(|d| &m.label == d))
        .collect();
    if let (Some(d), true) = (&a.domain, backups.is_empty()) {
        bail!("{}: no backup of domain '{d}'", repo.describe());
    }
    let plan = prune::plan(&backups, &keep);
    let gone: Vec<String> = plan
        .iter()
        .filter(|d| !d.kept())
        .map(|d| d.id.clone())
        .collect();
    if !a.dry_run {
        for id in &gone {
            repo.remove_backup(id)?;
        }
    }
    let collected = strata_repo::gc::collect(repo, a.grace, &gone, a.dry_run)?;
    if out.json() {
        let listed: Vec<_> = plan
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "domain": d.group,
                    "time": d.time,
                    "kept": d.kept(),
                    "kept-by": d.kept_by,
                })
            })
            .collect();
        out.print_json(&json!({
            "dry-run": a.dry_run,
            "backups": listed,
            "removed": gone.len(),
            "gc": collected,
        }))?;
        return Ok(OK);
    }
    let mut t = format!(
        "{:<30} {:<16} {:<20} {}\n{}\n",
        "ID",
        "Domain",
        "Time (UTC)",
        "Kept by",
        "-".repeat(80)
    );
    for d in &plan {
        let why = match d.kept() {
            true => d.kept_by.join(","),
            false if a.dry_run => "(would go)".to_string(),
            false => "(removed)".to_string(),
        };
        t.push_str(&format!(
            "{:<30} {:<16} {:<20} {why}\n",
            d.id,
            d.group,
            utc(d.time)
        ));
    }
    let verb = if a.dry_run { "would be" } else { "were" };
    t.push_str(&format!(
        "{} of {} backup(s) {verb} removed; {} chunk(s) ({}) {verb} deleted, {} in use, {} kept for the grace period\n",
        gone.len(),
        plan.len(),
        collected.chunks_deleted,
        bytes(collected.bytes_deleted),
        collected.chunks_in_use,
        collected.chunks_in_grace,
    ));
    out.text(&t)?;
    Ok(OK)
}
