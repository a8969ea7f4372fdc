//! Checking a repository: every manifest (its MAC), every index its
//! backups name (against the MAC the manifest holds), and every chunk
//! those indexes name (read whole: header, tag, length, and its contents
//! hashing to its name). Each problem names the object and the backups it
//! affects; a backup not named in any is whole.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::ChunkId;
use crate::repo::Repo;

/// One damaged or missing object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The object.
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
    /// The backups it makes unrestorable (in part).
    pub backups: Vec<String>,
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Backups looked at.
    pub backups: usize,
    /// Distinct chunks read.
    pub chunks: usize,
    /// What is wrong, by object.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem_of(e: &Error) -> String {
    match e {
        Error::Missing { .. } => "missing".into(),
        Error::Damaged { problem, .. } => problem.clone(),
        e => e.to_string(),
    }
}

/// Checks every backup of `repo`, or only backup `only` (and the chunks it
/// names); `progress` is told each chunk checked.
pub fn verify(repo: &Repo, only: Option<&str>, progress: &(dyn Fn(u64) + Sync)) -> Result<Report> {
    let ids = match only {
        Some(id) => {
            if !repo.backup_ids()?.iter().any(|b| b == id) {
                return Err(Error::invalid(
                    format!("backup '{id}'"),
                    "no such backup in the repository",
                ));
            }
            vec![id.to_string()]
        }
        None => repo.backup_ids()?,
    };
    let mut report = Report {
        backups: ids.len(),
        ..Report::default()
    };
    let mut users: BTreeMap<ChunkId, Vec<String>> = BTreeMap::new();
    for id in &ids {
        let m = match repo.backup(id) {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(Problem {
                    object: crate::manifest::Manifest::object(id),
                    problem: problem_of(&e),
                    backups: vec![id.clone()],
                });
                continue;
            }
        };
        for d in &m.disks {
            match repo.get_index(d) {
                Ok(ix) => {
                    for c in ix.chunks.into_iter().flatten() {
                        let u = users.entry(c).or_default();
                        if u.last() != Some(id) {
                            u.push(id.clone());
                        }
                    }
                }
                Err(e) => report.problems.push(Problem {
                    object: d.index.clone(),
                    problem: problem_of(&e),
                    backups: vec![id.clone()],
                }),
            }
        }
    }
    report.chunks = users.len();
    // Each chunk read and checked on a few workers at once (a chunk is
    // independent of the others; a bucket answers slowly but in
    // parallel), its problem kept by its place so the report is in
    // chunk order.
    let users: Vec<(ChunkId, Vec<String>)> = users.into_iter().collect();
    let found: Mutex<Vec<(usize, Problem)>> = Mutex::new(Vec::new());
    crate::write::on_workers(
        users.len() as u64,
        || (),
        |_, k| {
            let (c, backups) = &users[k as usize];
            if let Err(e) = repo.get_chunk(c) {
                let p = Problem {
                    object: crate::chunk::name(c),
                    problem: problem_of(&e),
                    backups: backups.clone(),
                };
                found
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((k as usize, p));
            }
            progress(1);
            Ok(())
        },
    )?;
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.sort_by_key(|(k, _)| *k);
    report.problems.extend(found.into_iter().map(|(_, p)| p));
    Ok(report)
}
