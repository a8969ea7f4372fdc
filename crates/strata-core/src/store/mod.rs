//! The metadata store: one SQLite database, `STATE/strata.db` (mode 0600,
//! in a 0700 folder), holding domains, snapshots and checkpoints. The schema
//! version is SQLite's `user_version`; [`MIGRATIONS`] brings an older store
//! up to date when it is opened, and a store made by a newer strata is
//! refused. Writers take SQLite's write lock at the start of a transaction
//! (`BEGIN IMMEDIATE`) and wait for each other, so two strata processes
//! never interleave their changes.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::snapshot::SnapshotDef;

mod intents;
mod jobs;
mod made;
pub use intents::CheckpointIntent;
pub use jobs::{Job, JobState};
use made::{forget_in, record_made};

/// Schema changes, in order; version N is reached by applying the first N.
const MIGRATIONS: &[&str] = &[
    // 1: domains, snapshots, checkpoints.
    "CREATE TABLE domains (
         name TEXT PRIMARY KEY NOT NULL,
         uuid TEXT NOT NULL UNIQUE,
         xml TEXT NOT NULL,
         defined_at INTEGER NOT NULL
     );
     CREATE TABLE snapshots (
         domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
         name TEXT NOT NULL,
         parent TEXT,
         created INTEGER NOT NULL,
         is_current INTEGER NOT NULL DEFAULT 0,
         xml TEXT NOT NULL,
         PRIMARY KEY (domain, name)
     );
     CREATE TABLE checkpoints (
         domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
         name TEXT NOT NULL,
         parent TEXT,
         created INTEGER NOT NULL,
         xml TEXT NOT NULL,
         PRIMARY KEY (domain, name)
     );",
    // 2: the last (or running) job of each domain.
    "CREATE TABLE jobs (
         domain TEXT PRIMARY KEY NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
         kind TEXT NOT NULL,
         state TEXT NOT NULL,
         pid INTEGER NOT NULL,
         started INTEGER NOT NULL,
         ended INTEGER,
         total INTEGER NOT NULL,
         done INTEGER NOT NULL,
         abort_requested INTEGER NOT NULL DEFAULT 0,
         files TEXT NOT NULL,
         xml TEXT NOT NULL,
         error TEXT
     );",
    // 3: the image files strata made for a domain (overlays), which it may
    // delete again once nothing references them; `owned` 0: handed to the
    // user by a metadata-only delete (kept, with their backing chains).
    "CREATE TABLE made_files (
         domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
         path TEXT NOT NULL,
         owned INTEGER NOT NULL DEFAULT 1,
         PRIMARY KEY (domain, path)
     );",
    // 4: why a backup job took full backups of disks asked incremental
    // (`--fallback-full`): a JSON array of lines.
    "ALTER TABLE jobs ADD COLUMN fallback TEXT NOT NULL DEFAULT '[]';",
    // 5: the bytes a live backup's scratch files take on the host.
    "ALTER TABLE jobs ADD COLUMN scratch INTEGER NOT NULL DEFAULT 0;",
    // 6: a checkpoint whose bitmaps are being made and which is not yet
    // recorded: what undoes them if the process dies in between (`undo`,
    // JSON), kept until the checkpoint is recorded or undone.
    "CREATE TABLE checkpoint_intents (
         domain TEXT PRIMARY KEY NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
         name TEXT NOT NULL,
         undo TEXT NOT NULL
     );",
];

/// A domain as `domain list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DomainSummary {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Snapshots in its tree.
    pub snapshots: u64,
    /// Checkpoints in its chain.
    pub checkpoints: u64,
}

/// Whether `define` made a new domain or replaced a definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defined {
    /// A new domain.
    New,
    /// The definition of an existing domain (same name and UUID) changed.
    Updated,
}

/// An open metadata store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    dir: PathBuf,
    path: PathBuf,
}

/// The default state folder: `$XDG_STATE_HOME/strata`, else
/// `~/.local/state/strata`.
pub fn default_state_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => Some(PathBuf::from(x).join("strata")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/strata")),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, migrating its schema.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                op: "create the state folder",
                source: e,
            })?;
        let path = dir.join("strata.db");
        let fresh = !path.exists();
        let sql = |e| store_error(&path, e);
        let conn = Connection::open(&path).map_err(sql)?;
        if fresh {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| Error::Io {
                    path: path.clone(),
                    op: "set permissions on",
                    source: e,
                },
            )?;
        }
        conn.busy_timeout(Duration::from_secs(30)).map_err(sql)?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(sql)?;
        let mut store = Store {
            conn,
            dir: dir.to_path_buf(),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        store_error(&self.path, e)
    }

    /// Runs `f` in a write transaction (taken at once, waiting for other
    /// writers), committed when `f` succeeds and rolled back otherwise.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &dyn Fn(rusqlite::Error) -> Error) -> Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let sql = |e| store_error(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let value = f(&tx, &sql)?;
        tx.commit().map_err(sql)?;
        Ok(value)
    }

    fn migrate(&mut self) -> Result<()> {
        let shown = self.path.display().to_string();
        self.write(|tx, sql| {
            let version: usize = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql)?;
            if version > MIGRATIONS.len() {
                return Err(Error::invalid(
                    shown,
                    format!(
                        "made by a newer strata (schema version {version}, this one knows {})",
                        MIGRATIONS.len()
                    ),
                ));
            }
            for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.execute_batch(m)
                    .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)))
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    /// Defines a domain, or replaces the definition of the one with the same
    /// name and UUID. A name or UUID already used by another domain is refused.
    pub fn define(&mut self, dom: &Domain) -> Result<Defined> {
        let (name, uuid) = (dom.name(), dom.uuid());
        let xml = dom.to_xml(true);
        self.write(|tx, sql| {
            let by_name: Option<String> = tx
                .query_row("SELECT uuid FROM domains WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            let by_uuid: Option<String> = tx
                .query_row("SELECT name FROM domains WHERE uuid = ?1", [&uuid], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            match (by_name, by_uuid) {
                (Some(u), _) if u != uuid => Err(Error::invalid(
                    format!("domain '{name}'"),
                    format!("already exists with uuid {u}"),
                )),
                (None, Some(other)) => Err(Error::invalid(
                    format!("domain '{name}'"),
                    format!("uuid {uuid} is already used by domain '{other}'"),
                )),
                (Some(_), _) => {
                    set_domain_xml(tx, sql, &name, &xml)?;
                    Ok(Defined::Updated)
                }
                (None, None) => {
                    tx.execute(
                        "INSERT INTO domains (name, uuid, xml, defined_at) VALUES (?1, ?2, ?3, ?4)",
                        params![name, uuid, xml, crate::now() as i64],
                    )
                    .map_err(sql)?;
                    Ok(Defined::New)
                }
            }
        })
    }

    /// Every domain, by name.
    pub fn list(&self) -> Result<Vec<DomainSummary>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT d.name, d.uuid,
                        (SELECT COUNT(*) FROM snapshots s WHERE s.domain = d.name),
                        (SELECT COUNT(*) FROM checkpoints c WHERE c.domain = d.name)
                 FROM domains d ORDER BY d.name",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(DomainSummary {
                    name: r.get(0)?,
                    uuid: r.get(1)?,
                    snapshots: r.get(2)?,
                    checkpoints: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// The domain called `name`.
    pub fn domain(&self, name: &str) -> Result<Domain> {
        let xml: Option<String> = self
            .conn
            .query_row("SELECT xml FROM domains WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        let xml = xml.ok_or_else(|| Error::NoDomain(name.to_string()))?;
        Domain::from_xml(&xml, &format!("stored definition of domain '{name}'"))
    }

    /// Removes a domain's definition. Refused while it has snapshots or
    /// checkpoints, unless their metadata may go too (the disk files and
    /// the snapshots inside images are never touched).
    pub fn undefine(&mut self, name: &str, snapshots: bool, checkpoints: bool) -> Result<()> {
        self.write(|tx, sql| {
            let exists: Option<String> = tx
                .query_row("SELECT name FROM domains WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            if exists.is_none() {
                return Err(Error::NoDomain(name.to_string()));
            }
            let count = |table: &str| -> Result<u64> {
                tx.query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE domain = ?1"),
                    [name],
                    |r| r.get(0),
                )
                .map_err(sql)
            };
            let (ns, nc) = (count("snapshots")?, count("checkpoints")?);
            if ns > 0 && !snapshots {
                return Err(Error::invalid(
                    format!("domain '{name}'"),
                    format!("has {ns} snapshot(s): undefine refuses without --snapshots-metadata (which drops their metadata, keeping the disk files)"),
                ));
            }
            if nc > 0 && !checkpoints {
                return Err(Error::invalid(
                    format!("domain '{name}'"),
                    format!("has {nc} checkpoint(s): undefine refuses without --checkpoints-metadata (which drops their metadata, keeping the bitmaps)"),
                ));
            }
            tx.execute("DELETE FROM domains WHERE name = ?1", [name])
                .map_err(sql)?;
            Ok(())
        })
    }
}

/// One snapshot as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Name.
    pub name: String,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Creation time, seconds since the Epoch.
    pub created: i64,
    /// The domain's current snapshot.
    pub current: bool,
    /// The snapshot XML (with secrets).
    pub xml: String,
}

impl SnapshotRow {
    /// The rows as tree nodes (name, parent), in stored order.
    pub fn nodes(rows: &[SnapshotRow]) -> Vec<crate::tree::Node> {
        rows.iter()
            .map(|r| (r.name.clone(), r.parent.clone()))
            .collect()
    }

    /// The snapshot's definition, its parent as the store has it (deletes
    /// re-parent in the store, not in the XML).
    pub fn def(&self) -> Result<SnapshotDef> {
        let mut def = SnapshotDef::from_xml(&self.xml, &format!("snapshot '{}'", self.name))?;
        def.parent = self.parent.clone();
        Ok(def)
    }
}

impl Store {
    /// Every snapshot of `domain`, oldest first.
    pub fn snapshots(&self, domain: &str) -> Result<Vec<SnapshotRow>> {
        self.domain(domain)?;
        let mut st = self
            .conn
            .prepare(
                "SELECT name, parent, created, is_current, xml FROM snapshots
                 WHERE domain = ?1 ORDER BY created, rowid",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([domain], |r| {
                Ok(SnapshotRow {
                    name: r.get(0)?,
                    parent: r.get(1)?,
                    created: r.get(2)?,
                    current: r.get::<_, i64>(3)? != 0,
                    xml: r.get(4)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Snapshot `name` of `domain`.
    pub fn snapshot(&self, domain: &str, name: &str) -> Result<SnapshotRow> {
        self.snapshots(domain)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NoSnapshot {
                domain: domain.to_string(),
                name: name.to_string(),
            })
    }

    /// Records a new snapshot, makes it current and, when given, stores the
    /// domain's new definition (disks moved to overlays) and the files made
    /// for it, all at once.
    pub fn add_snapshot(
        &mut self,
        domain: &str,
        def: &SnapshotDef,
        new_domain: Option<&Domain>,
        made: &[PathBuf],
    ) -> Result<()> {
        let xml = def.to_xml(true);
        let dom_xml = new_domain.map(|d| d.to_xml(true));
        self.write(|tx, sql| {
            record_made(tx, sql, domain, made)?;
            tx.execute(
                "UPDATE snapshots SET is_current = 0 WHERE domain = ?1",
                [domain],
            )
            .map_err(sql)?;
            tx.execute(
                "INSERT INTO snapshots (domain, name, parent, created, is_current, xml)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                params![domain, def.name, def.parent, def.creation_time as i64, xml],
            )
            .map_err(sql)?;
            if let Some(x) = &dom_xml {
                set_domain_xml(tx, sql, domain, x)?;
            }
            Ok(())
        })
    }

    /// After a revert: `name` becomes current, the domain definition is
    /// replaced and the files made for it are recorded, at once.
    pub fn revert_to(
        &mut self,
        domain: &str,
        name: &str,
        dom: &Domain,
        made: &[PathBuf],
    ) -> Result<()> {
        let xml = dom.to_xml(true);
        self.write(|tx, sql| {
            record_made(tx, sql, domain, made)?;
            tx.execute(
                "UPDATE snapshots SET is_current = (name = ?2) WHERE domain = ?1",
                params![domain, name],
            )
            .map_err(sql)?;
            set_domain_xml(tx, sql, domain, &xml)?;
            Ok(())
        })
    }

    /// Takes a revert back ([`Store::revert_to`]): `current` is the
    /// current snapshot again (`None`: none is), the domain definition is
    /// `dom` again and the files made for the revert (deleted) are
    /// forgotten, at once.
    pub fn undo_revert(
        &mut self,
        domain: &str,
        current: Option<&str>,
        dom: &Domain,
        made: &[PathBuf],
    ) -> Result<()> {
        let xml = dom.to_xml(true);
        self.write(|tx, sql| {
            forget_in(tx, sql, domain, made)?;
            tx.execute(
                "UPDATE snapshots SET is_current = (name IS ?2) WHERE domain = ?1",
                params![domain, current],
            )
            .map_err(sql)?;
            set_domain_xml(tx, sql, domain, &xml)?;
            Ok(())
        })
    }

    /// Drops the metadata of snapshots `names`, at once: each survivor whose
    /// parent goes gets its nearest surviving ancestor as parent, and if the
    /// current snapshot goes, its nearest surviving ancestor becomes current.
    pub fn delete_snapshots(&mut self, domain: &str, names: &[String]) -> Result<()> {
        self.delete_snapshots_rewriting(domain, names, &[], None)
    }

    /// [`Store::delete_snapshots`], also replacing, in the same transaction,
    /// the XML of surviving snapshots (`rewrites`: name, XML) and the
    /// domain definition (after an overlay was merged away).
    pub fn delete_snapshots_rewriting(
        &mut self,
        domain: &str,
        names: &[String],
        rewrites: &[(String, String)],
        new_domain: Option<&Domain>,
    ) -> Result<()> {
        let dom_xml = new_domain.map(|d| d.to_xml(true));
        let rows = self.snapshots(domain)?;
        let survivor = |mut p: Option<String>| {
            while let Some(n) = p.clone() {
                if !names.contains(&n) {
                    break;
                }
                p = rows
                    .iter()
                    .find(|r| r.name == n)
                    .and_then(|r| r.parent.clone());
            }
            p
        };
        let new_current = rows
            .iter()
            .find(|r| r.current && names.contains(&r.name))
            .map(|r| survivor(r.parent.clone()));
        let reparent: Vec<(String, Option<String>)> = rows
            .iter()
            .filter(|r| !names.contains(&r.name))
            .map(|r| (r.name.clone(), survivor(r.parent.clone())))
            .collect();
        self.write(|tx, sql| {
            for n in names {
                tx.execute(
                    "DELETE FROM snapshots WHERE domain = ?1 AND name = ?2",
                    params![domain, n],
                )
                .map_err(sql)?;
            }
            for (n, p) in &reparent {
                tx.execute(
                    "UPDATE snapshots SET parent = ?3 WHERE domain = ?1 AND name = ?2",
                    params![domain, n, p],
                )
                .map_err(sql)?;
            }
            for (n, x) in rewrites {
                tx.execute(
                    "UPDATE snapshots SET xml = ?3 WHERE domain = ?1 AND name = ?2",
                    params![domain, n, x],
                )
                .map_err(sql)?;
            }
            if let Some(x) = &dom_xml {
                set_domain_xml(tx, sql, domain, x)?;
            }
            if let Some(cur) = &new_current {
                tx.execute(
                    "UPDATE snapshots SET is_current = (name IS ?2) WHERE domain = ?1",
                    params![domain, cur],
                )
                .map_err(sql)?;
            }
            Ok(())
        })
    }

    /// Every checkpoint of `domain`, oldest first: `(name, parent, xml)`.
    pub fn checkpoints(&self, domain: &str) -> Result<Vec<(String, Option<String>, String)>> {
        self.domain(domain)?;
        let mut st = self
            .conn
            .prepare(
                "SELECT name, parent, xml FROM checkpoints WHERE domain = ?1 ORDER BY created, rowid",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([domain], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Records a checkpoint (replacing one of the same name: redefine),
    /// and forgets the intent to make it, at once.
    pub fn add_checkpoint(
        &mut self,
        domain: &str,
        name: &str,
        parent: Option<&str>,
        created: u64,
        xml: &str,
    ) -> Result<()> {
        self.write(|tx, sql| {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (domain, name, parent, created, xml) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![domain, name, parent, created as i64, xml],
            )
            .map_err(sql)?;
            tx.execute(
                "DELETE FROM checkpoint_intents WHERE domain = ?1 AND name = ?2",
                params![domain, name],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// Drops the metadata of checkpoints `names`; their surviving children
    /// get `heir` as parent.
    pub fn delete_checkpoints(
        &mut self,
        domain: &str,
        names: &[String],
        heir: Option<&str>,
    ) -> Result<()> {
        self.write(|tx, sql| {
            for n in names {
                tx.execute(
                    "DELETE FROM checkpoints WHERE domain = ?1 AND name = ?2",
                    params![domain, n],
                )
                .map_err(sql)?;
                tx.execute(
                    "UPDATE checkpoints SET parent = ?3 WHERE domain = ?1 AND parent = ?2",
                    params![domain, n, heir],
                )
                .map_err(sql)?;
            }
            Ok(())
        })
    }

    /// Records (or replaces) snapshot `def` as given, keeping whether it
    /// was current unless `current` makes it so.
    pub fn redefine_snapshot(
        &mut self,
        domain: &str,
        def: &SnapshotDef,
        current: bool,
    ) -> Result<()> {
        let xml = def.to_xml(true);
        self.write(|tx, sql| {
            let was: bool = tx
                .query_row(
                    "SELECT is_current FROM snapshots WHERE domain = ?1 AND name = ?2",
                    params![domain, def.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?
                .unwrap_or(false);
            if current {
                tx.execute(
                    "UPDATE snapshots SET is_current = 0 WHERE domain = ?1",
                    [domain],
                )
                .map_err(sql)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO snapshots (domain, name, parent, created, is_current, xml)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    domain,
                    def.name,
                    def.parent,
                    def.creation_time as i64,
                    was || current,
                    xml
                ],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// Makes `name` the current snapshot (none with `None`).
    pub fn set_current(&mut self, domain: &str, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            self.snapshot(domain, n)?;
        }
        self.write(|tx, sql| {
            tx.execute(
                "UPDATE snapshots SET is_current = (name IS ?2) WHERE domain = ?1",
                params![domain, name],
            )
            .map_err(sql)?;
            Ok(())
        })
    }
}

/// Replaces the stored definition of `domain`.
fn set_domain_xml(
    tx: &rusqlite::Transaction<'_>,
    sql: &dyn Fn(rusqlite::Error) -> Error,
    domain: &str,
    xml: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE domains SET xml = ?2 WHERE name = ?1",
        params![domain, xml],
    )
    .map_err(sql)?;
    Ok(())
}

fn store_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, uuid: &str) -> Domain {
        Domain::from_xml(
            &format!("<domain><name>{name}</name><uuid>{uuid}</uuid><foo bar='1'/></domain>"),
            "t",
        )
        .unwrap()
    }

    const U1: &str = "11111111-2222-3333-4444-555555555555";
    const U2: &str = "11111111-2222-3333-4444-666666666666";

    #[test]
    fn define_list_get_undefine() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.define(&vm("a", U1)).unwrap(), Defined::New);
        assert_eq!(s.define(&vm("a", U1)).unwrap(), Defined::Updated);
        let err = s.define(&vm("a", U2)).unwrap_err().to_string();
        assert!(err.contains("already exists with uuid"), "{err}");
        let err = s.define(&vm("b", U1)).unwrap_err().to_string();
        assert!(err.contains("already used by domain 'a'"), "{err}");
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(s
            .domain("a")
            .unwrap()
            .to_xml(true)
            .contains("<foo bar=\"1\"/>"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("strata.db")), 0o600);
        drop(s);
        // Reopening migrates nothing and keeps everything.
        let mut s = Store::open(&dir).unwrap();
        s.undefine("a", false, false).unwrap();
        assert!(matches!(s.domain("a"), Err(Error::NoDomain(_))));
        assert!(matches!(
            s.undefine("a", false, false),
            Err(Error::NoDomain(_))
        ));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path()).unwrap());
        let c = Connection::open(d.path().join("strata.db")).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(c);
        let err = Store::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("newer strata") && err.contains("99"), "{err}");
    }
}
