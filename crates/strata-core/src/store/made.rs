//! The image files strata made for each domain (overlays of external
//! snapshots and reverts): the only files it ever deletes, once nothing
//! needs them, and those it handed to the user (kept, with their chains).

use std::path::PathBuf;

use rusqlite::params;

use super::Store;
use crate::error::{Error, Result};

/// The SQL transaction and its error mapping, as [`Store::write`] hands
/// them.
type Tx<'a, 'b> = (
    &'a rusqlite::Transaction<'b>,
    &'a dyn Fn(rusqlite::Error) -> Error,
);

/// Runs `stmt` with `(domain, path)` for each of `files` in `tx`.
fn each_in((tx, sql): Tx<'_, '_>, stmt: &str, domain: &str, files: &[PathBuf]) -> Result<()> {
    for f in files {
        tx.execute(stmt, params![domain, f.to_string_lossy()])
            .map_err(sql)?;
    }
    Ok(())
}

/// Records `made` as files strata made for `domain`.
pub(super) fn record_made(
    tx: &rusqlite::Transaction<'_>,
    sql: &dyn Fn(rusqlite::Error) -> Error,
    domain: &str,
    made: &[PathBuf],
) -> Result<()> {
    let stmt = "INSERT OR IGNORE INTO made_files (domain, path) VALUES (?1, ?2)";
    each_in((tx, sql), stmt, domain, made)
}

/// Forgets `made`, files strata made for `domain` (deleted, or never used).
pub(super) fn forget_in(
    tx: &rusqlite::Transaction<'_>,
    sql: &dyn Fn(rusqlite::Error) -> Error,
    domain: &str,
    made: &[PathBuf],
) -> Result<()> {
    let stmt = "DELETE FROM made_files WHERE domain = ?1 AND path = ?2";
    each_in((tx, sql), stmt, domain, made)
}

impl Store {
    /// The image files strata made for `domain` and still owns (may delete).
    pub fn made_files(&self, domain: &str) -> Result<Vec<PathBuf>> {
        self.made_where("domain = ?1 AND owned = 1", domain)
    }

    /// Files strata made and handed to the user (of any domain): kept, and
    /// so are their backing chains.
    pub fn handed_over_files(&self) -> Result<Vec<PathBuf>> {
        self.made_where("owned = 0 AND ?1 = ?1", "")
    }

    fn made_where(&self, cond: &str, domain: &str) -> Result<Vec<PathBuf>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT path FROM made_files WHERE {cond} ORDER BY path"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([domain], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(PathBuf::from))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Hands files strata made for `domain` over to the user: never deleted.
    pub fn hand_over(&mut self, domain: &str, files: &[PathBuf]) -> Result<()> {
        self.each_made(
            "UPDATE made_files SET owned = 0 WHERE domain = ?1 AND path = ?2",
            domain,
            files,
        )
    }

    /// Forgets files strata made for `domain` (after deleting them).
    pub fn forget_made(&mut self, domain: &str, files: &[PathBuf]) -> Result<()> {
        self.write(|tx, sql| forget_in(tx, sql, domain, files))
    }

    /// Runs `stmt` with `(domain, path)` for each of `files`, at once.
    fn each_made(&mut self, stmt: &str, domain: &str, files: &[PathBuf]) -> Result<()> {
        self.write(|tx, sql| each_in((tx, sql), stmt, domain, files))
    }
}
