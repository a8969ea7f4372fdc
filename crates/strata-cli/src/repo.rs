//! `strata repo`: a backup repository (`docs/repo.md`) in a folder. The
//! format and the checks are strata-repo's; backing a domain up is
//! strata-core's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::json;
use strata_core::backup::repo::{self as repo_backup, RepoBackedUp, RepoRequest};
use strata_core::Store;
use strata_repo::backend::{Backend, S3Options};
use strata_repo::manifest::Manifest;
use strata_repo::Repo;

use crate::exit::{ERROR, FELL_BACK, OK};
use crate::output::Output;
use crate::progress::Progress;
use crate::repo_args::{RepoAt, RepoBackupArgs, RepoCommand, RepoRestoreArgs};

/// Runs a `strata repo` command.
pub fn run(cmd: RepoCommand, state: Option<&Path>, out: &Output) -> Result<u8> {
    match cmd {
        RepoCommand::Init(a) => {
            let at = a.at;
            let secret = key(&at)?;
            let cs = u32::try_from(a.chunk_size).unwrap_or(u32::MAX);
            strata_repo::config::check_chunk_size(cs)?;
            let repo = Repo::init_with(backend(&at)?, secret.as_deref(), cs)?;
            if out.json() {
                out.print_json(&json!({
                    "repo": repo.describe(),
                    "encrypted": secret.is_some(),
                    "chunk-size": repo.chunk_size(),
                }))?;
            } else {
                let how = if secret.is_some() { "encrypted " } else { "" };
                out.say(&format!(
                    "Initialized {how}strata repository at {}",
                    repo.describe()
                ))?;
            }
            Ok(OK)
        }
        RepoCommand::Backup(a) => {
            let repo = open(&a.at)?;
            let dir = crate::domain::state_dir(state)?;
            let req = RepoRequest {
                incremental: a.incremental,
                fallback_full: a.fallback_full,
                host: host(),
            };
            let bar = Progress::new(out, &format!("backup of {}", a.domain));
            let made = if crate::live::is_active(&dir, &a.domain)? {
                drop(repo);
                back_up_live(&dir, &a, &req, &bar)?
            } else {
                let mut store = Store::open(&dir)?;
                let total = AtomicU64::new(0);
                let done = AtomicU64::new(0);
                repo_backup::back_up(
                    &mut store,
                    &repo,
                    &a.domain,
                    &req,
                    &|t| total.store(t, Ordering::Relaxed),
                    &|n| {
                        let d = done.fetch_add(n, Ordering::Relaxed) + n;
                        bar.update(d, total.load(Ordering::Relaxed));
                    },
                )?
            };
            bar.finish();
            if let Some(why) = &made.fallback {
                crate::exit::warn(&format!("a full backup was made: {why}"));
            }
            let m = &made.manifest;
            if out.json() {
                out.print_json(&listed(m))?;
            } else {
                let read: u64 = m.disks.iter().map(|d| d.read_chunks).sum();
                let chunks: u64 = m.disks.iter().map(|d| d.chunks).sum();
                out.say(&format!(
                    "Backup {} of domain '{}': {} disk(s), {read} of {chunks} chunks read, {} stored",
                    m.id,
                    a.domain,
                    m.disks.len(),
                    bytes(m.stored())
                ))?;
            }
            Ok(if made.fallback.is_some() {
                FELL_BACK
            } else {
                OK
            })
        }
        RepoCommand::List(a) => {
            let repo = open(&a.at)?;
            let all: Vec<Manifest> = repo
                .backups()?
                .into_iter()
                .filter(|m| a.domain.as_ref().is_none_or(|d| &m.label == d))
                .collect();
            if out.json() {
                out.print_json(&all.iter().map(listed).collect::<Vec<_>>())?;
            } else {
                let mut t = format!(
                    "{:<30} {:<20} {:<16} {:<12} {:>12} {:>12}\n",
                    "ID", "Time (UTC)", "Domain", "Disks", "Size", "Stored"
                );
                t.push_str(&"-".repeat(107));
                t.push('\n');
                for m in &all {
                    let disks: Vec<&str> = m.disks.iter().map(|d| d.name.as_str()).collect();
                    t.push_str(&format!(
                        "{:<30} {:<20} {:<16} {:<12} {:>12} {:>12}\n",
                        m.id,
                        utc(m.time),
                        m.label,
                        disks.join(","),
                        bytes(m.logical_size()),
                        bytes(m.stored())
                    ));
                }
                out.text(&t)?;
            }
            Ok(OK)
        }
        RepoCommand::Restore(a) => {
            let repo = open(&a.at)?;
            let (Some(disk), Some(dst), Some(format)) = (&a.disk, &a.dst, a.format) else {
                return restore_domain(&repo, &a, state, out);
            };
            if dst.symlink_metadata().is_ok() {
                bail!(
                    "{}: exists; a restore never overwrites a file",
                    dst.display()
                );
            }
            let bar = Progress::new(out, &format!("restore of {disk}"));
            let size = repo
                .backup(&a.backup)?
                .disks
                .iter()
                .find(|d| &d.name == disk)
                .map_or(0, |d| d.size);
            let done = AtomicU64::new(0);
            repo_backup::restore(&repo, &a.backup, disk, format.format(), dst, &|n| {
                bar.update(done.fetch_add(n, Ordering::Relaxed) + n, size)
            })?;
            bar.finish();
            out.say(&format!(
                "Disk '{disk}' of backup {} restored to {}",
                a.backup,
                dst.display()
            ))?;
            Ok(OK)
        }
        RepoCommand::Verify(a) => {
            let repo = open(&a.at)?;
            let report = strata_repo::verify::verify(&repo, a.backup.as_deref(), &|_| {})?;
            if out.json() {
                out.print_json(&report)?;
            } else {
                let mut t = String::new();
                for p in &report.problems {
                    t.push_str(&format!(
                        "{}: {} (backups: {})\n",
                        p.object,
                        p.problem,
                        p.backups.join(", ")
                    ));
                }
                t.push_str(&format!(
                    "{} backup(s), {} chunk(s) checked: {}\n",
                    report.backups,
                    report.chunks,
                    if report.sound() {
                        "all sound".to_string()
                    } else {
                        format!("{} damaged object(s)", report.problems.len())
                    }
                ));
                out.text(&t)?;
            }
            Ok(if report.sound() { OK } else { ERROR })
        }
        RepoCommand::Prune(a) => crate::repo_prune::run(&open(&a.at)?, &a, out),
        RepoCommand::Mount(a) => crate::repo_mount::run(open(&a.at)?, &a, out),
    }
}

/// `repo restore --to-domain`: every disk, and the domain defined.
fn restore_domain(
    repo: &Repo,
    a: &RepoRestoreArgs,
    state: Option<&Path>,
    out: &Output,
) -> Result<u8> {
    let Some(name) = &a.to_domain else {
        bail!("give DISK, -O qcow2|raw and DST, or --to-domain NAME");
    };
    let format = a.format.map_or(strata_image::Format::Qcow2, |f| f.format());
    let dir = a.dir.clone().unwrap_or_else(|| ".".into());
    let mut store = Store::open(&crate::domain::state_dir(state)?)?;
    let size: u64 = repo.backup(&a.backup)?.disks.iter().map(|d| d.size).sum();
    let bar = Progress::new(out, &format!("restore of {}", a.backup));
    let done = AtomicU64::new(0);
    let made = strata_core::backup::repo_restore::restore_domain(
        &mut store,
        repo,
        &a.backup,
        name,
        &dir,
        format,
        &|n| bar.update(done.fetch_add(n, Ordering::Relaxed) + n, size),
    )?;
    bar.finish();
    if out.json() {
        let disks: Vec<_> = made
            .disks
            .iter()
            .map(|(t, f)| json!({"disk": t, "file": f}))
            .collect();
        out.print_json(&json!({"name": made.name, "uuid": made.uuid, "disks": disks}))?;
    } else {
        let disks: Vec<String> = made
            .disks
            .iter()
            .map(|(t, f)| format!("{t} {}", f.display()))
            .collect();
        out.say(&format!(
            "Domain '{}' defined from backup {}: {}",
            made.name,
            a.backup,
            disks.join(", ")
        ))?;
    }
    Ok(OK)
}

/// `repo backup` of running domain `a.domain`: the daemon that serves its
/// disks makes it (given the repository's and the key file's absolute
/// paths); the job's progress, read from the store, moves `bar`.
fn back_up_live(
    dir: &Path,
    a: &RepoBackupArgs,
    req: &RepoRequest,
    bar: &Progress,
) -> Result<RepoBackedUp> {
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| p.display().to_string());
    let at = location(&a.at)?;
    let body = strata_daemon::types::RepoBackupRequest {
        repo: if at.starts_with("s3://") {
            at.into()
        } else {
            absolute(&a.at.repo)?
        },
        s3_endpoint: a.at.s3_endpoint.clone(),
        key_file: a.at.key_file.as_deref().map(absolute).transpose()?,
        incremental: req.incremental,
        fallback_full: req.fallback_full,
        host: req.host.clone(),
    };
    let finished = AtomicBool::new(false);
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            let Ok(store) = Store::open(dir) else { return };
            while !finished.load(Ordering::Relaxed) {
                if let Ok(Some(job)) = store.job(&a.domain) {
                    bar.update(job.done, job.total);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let made = strata_daemon::Client::for_state_dir(dir).repo_backup(&a.domain, &body);
        finished.store(true, Ordering::Relaxed);
        made
    })
    .map_err(crate::live::api_error)?;
    Ok(RepoBackedUp {
        manifest: made.manifest,
        fallback: made.fallback,
    })
}

/// The key file's bytes, when one is given.
fn key(at: &RepoAt) -> Result<Option<Vec<u8>>> {
    Ok(at
        .key_file
        .as_deref()
        .map(strata_repo::keys::read_key_file)
        .transpose()?)
}

/// Where `at` is: a folder or a bucket.
fn location(at: &RepoAt) -> Result<String> {
    at.repo
        .to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: not a UTF-8 name", at.repo.display()))
}

/// How `at` reaches object storage (nothing read for a folder).
fn s3_options(at: &RepoAt) -> Result<S3Options> {
    Ok(S3Options::from_env(
        &at.repo.to_string_lossy(),
        at.s3_endpoint.clone(),
    )?)
}

/// The backend `at` names, made when a folder is not there.
fn backend(at: &RepoAt) -> Result<Box<dyn Backend>> {
    Ok(strata_repo::backend::at(
        &location(at)?,
        &s3_options(at)?,
        true,
    )?)
}

/// The repository at `at`, opened.
fn open(at: &RepoAt) -> Result<Repo> {
    let shown = location(at)?;
    let b = strata_repo::backend::at(&shown, &s3_options(at)?, false)?;
    let repo = Repo::open(b, key(at)?.as_deref())?;
    if at.key_file.is_some() && !repo.encrypted() {
        crate::exit::warn(&format!(
            "{shown}: the repository is not encrypted: the key file is not used"
        ));
    }
    Ok(repo)
}

/// This host's name, for the manifest.
fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A backup as `repo list --output json` shows it (CLI.md).
fn listed(m: &Manifest) -> serde_json::Value {
    let chunks: u64 = m.disks.iter().map(|d| d.chunks - d.zero_chunks).sum();
    let new: u64 = m.disks.iter().map(|d| d.new_chunks).sum();
    json!({
        "id": m.id,
        "domain": m.label,
        "time": m.time,
        "host": m.host,
        "parent": m.parent,
        "disks": m.disks.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "logical-size": m.logical_size(),
        "stored-size": m.stored(),
        "read-chunks": m.disks.iter().map(|d| d.read_chunks).sum::<u64>(),
        "data-chunks": chunks,
        "new-chunks": new,
    })
}

/// `bytes` as a human reads them.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn utc(secs: u64) -> String {
    let t = strata_repo::repo::utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    format!(
        "{}-{}-{} {}:{}:{}",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    )
}
