//! A repository in a local folder: one file per object, at the object's
//! name under the folder (folders 0700, files 0600). An object is written
//! into `tmp/` and synced, then linked (a new object: never replacing one
//! that is there) or renamed (a replacement) into place, so it is there
//! whole or not at all; the folders that got new names are synced by
//! [`Backend::sync`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Backend, Listed};
use crate::error::{Error, Result};

/// Objects in a folder.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Folders that got new names since the last sync.
    touched: Mutex<BTreeSet<PathBuf>>,
    /// Names for temporary files.
    next_tmp: AtomicU64,
    /// Random, so that two writers (processes, hosts, or handles in one
    /// process) never pick the same temporary name.
    tag: String,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Makes folder `dir` and its parents, owner-only.
fn make_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir, "create the folder"))
}

impl LocalDir {
    /// The objects in folder `root` (made when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalDir> {
        let root = root.into();
        make_dir(&root.join("tmp"))?;
        Ok(LocalDir {
            root,
            touched: Mutex::new(BTreeSet::new()),
            next_tmp: AtomicU64::new(0),
            tag: crate::hex::encode(&crate::seal::random::<8>()),
        })
    }

    /// The objects in folder `root`, which must exist (a repository is
    /// opened, never made, there).
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalDir> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::invalid(
                root.display().to_string(),
                "no strata repository there (repo init makes one)",
            ));
        }
        LocalDir::new(root)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of object `name`; a name that would leave the folder is
    /// refused.
    fn path(&self, name: &str) -> Result<PathBuf> {
        let ok = !name.is_empty()
            && name
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\0'));
        if !ok || name.starts_with("tmp/") {
            return Err(Error::invalid(
                format!("object '{name}'"),
                "not an object name",
            ));
        }
        Ok(self.root.join(name))
    }

    /// Writes `data` into a new synced temporary file; its path.
    fn write_tmp(&self, data: &[u8]) -> Result<PathBuf> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{n}", self.tag));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp, "create a temporary object"))?;
        f.write_all(data)
            .and_then(|()| f.sync_data())
            .map_err(io(&tmp, "write a temporary object"))?;
        Ok(tmp)
    }

    /// Makes the folder of `path` and remembers it (and the folders that
    /// got it as a new entry) for the next sync.
    fn parent_of(&self, path: &Path) -> Result<()> {
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if !dir.is_dir() {
            make_dir(dir)?;
            let mut d = dir;
            while let Some(up) = d.parent().filter(|u| u.starts_with(&self.root)) {
                touched.insert(up.to_path_buf());
                d = up;
            }
        }
        touched.insert(dir.to_path_buf());
        Ok(())
    }
}

impl Backend for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool> {
        let path = self.path(name)?;
        if path.exists() {
            return Ok(false);
        }
        self.parent_of(&path)?;
        let tmp = self.write_tmp(data)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, "create the object")(e)),
        }
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name)?;
        self.parent_of(&path)?;
        let tmp = self.write_tmp(data)?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(&path, "put the object in place")(e)
        })
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::Missing {
                object: name.to_string(),
            },
            _ => io(&path, "read the object")(e),
        })
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name)?.exists())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        // The deepest folder the prefix names whole, walked without
        // recursion (a queue of folders).
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut todo = vec![(self.root.join(base), base.to_string())];
        while let Some((dir, name)) = todo.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir, "list the folder")(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir, "list the folder"))?;
                let part = entry.file_name().to_string_lossy().into_owned();
                let full = if name.is_empty() {
                    part
                } else {
                    format!("{name}/{part}")
                };
                if full == "tmp" {
                    continue;
                }
                let kind = entry.file_type().map_err(io(&dir, "list the folder"))?;
                if kind.is_dir() {
                    let within =
                        full.len() < prefix.len() && prefix.starts_with(&format!("{full}/"));
                    if within || full.starts_with(prefix) {
                        todo.push((entry.path(), full));
                    }
                } else if full.starts_with(prefix) {
                    out.push(full);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, "delete the object")(e)),
        }
    }

    fn touch(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        let f = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path, "touch the object")(e)),
        };
        f.set_modified(SystemTime::now())
            .map_err(io(&path, "touch the object"))?;
        Ok(true)
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for name in self.list(prefix)? {
            let path = self.path(&name)?;
            match fs::metadata(&path).and_then(|m| Ok((m.len(), m.modified()?))) {
                Ok((size, time)) => out.push(Listed { name, size, time }),
                // Gone since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "look at the object")(e)),
            }
        }
        Ok(out)
    }

    fn delete_if_older(&self, name: &str, cutoff: SystemTime) -> Result<bool> {
        let path = self.path(name)?;
        // Moved aside first: a touch after the move finds the object gone
        // (and its writer writes it again); one before it shows here.
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let aside = self.root.join("tmp").join(format!("gc.{}.{n}", self.tag));
        match fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&path, "move the object aside")(e)),
        }
        let young = fs::metadata(&aside)
            .and_then(|m| m.modified())
            .map_err(io(&aside, "look at the object"))?
            >= cutoff;
        if young {
            match fs::hard_link(&aside, &path) {
                Ok(()) => {}
                // Written again meanwhile: the same bytes.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&path, "put the object back")(e)),
            }
        }
        fs::remove_file(&aside).map_err(io(&aside, "delete the object"))?;
        Ok(!young)
    }

    fn sweep_leftovers(&self, cutoff: SystemTime) -> Result<u64> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir, "list the folder")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir, "list the folder"))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old && fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn sync(&self) -> Result<()> {
        let dirs: Vec<PathBuf> =
            std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        for d in dirs {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(io(&d, "sync the folder"))?;
        }
        Ok(())
    }
}
