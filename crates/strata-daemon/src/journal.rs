//! The record of a run, `STATE/run/NAME/run.json`: what a daemon that
//! starts after this one (a crash, an upgrade) needs to take the run over —
//! the domain id, and the image file each disk serves. It is written once
//! the disks are served, before QEMU starts, and again whenever a live
//! snapshot puts a new overlay on top, before the guest's requests are
//! taken again: so the record never names an image the guest has stopped
//! writing to. Written to a new file and renamed over the old one (a
//! daemon killed mid-write leaves the previous record whole); not synced,
//! as a crash of the host ends the guests too. Under a live snapshot,
//! where every microsecond is the guest's, a record that fits in one page
//! is rewritten in place instead ([`rewrite`]): one write into one page of
//! the page cache is whole or not done when the daemon is killed, and
//! costs no file creation.

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name in a run folder.
pub const FILE: &str = "run.json";

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// libvirt's domain id of the run.
    pub id: u32,
    /// The domain's UUID.
    pub uuid: String,
    /// Every served disk.
    pub disks: Vec<DiskRecord>,
}

/// One served disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The guest device (`target dev`).
    pub target: String,
    /// The top image file served.
    pub source: PathBuf,
    /// `vhost-user-blk` or `nbd`.
    pub backend: String,
}

/// Writes `record` as `run_dir/run.json` (owner-only).
pub fn write(run_dir: &Path, record: &RunRecord) -> Result<()> {
    let path = run_dir.join(FILE);
    let tmp = run_dir.join(format!("{FILE}.new"));
    let text = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Internal(format!("encoding the run record: {e}")))?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text));
    written.map_err(|e| Error::io(&tmp, "write the run record", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, "replace the run record", e))
}

/// What a write of at most this many bytes at offset 0 fills: one page,
/// which a killed writer leaves whole or untouched.
const PAGE: usize = 4096;

/// Writes `record` over the existing record in `run_dir` in place when
/// both fit in one page (padded with spaces, which JSON ignores, to the old
/// length), else as [`write`] does.
pub fn rewrite(run_dir: &Path, record: &RunRecord) -> Result<()> {
    let path = run_dir.join(FILE);
    let mut text = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Internal(format!("encoding the run record: {e}")))?;
    let in_place = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| {
            let old = f.metadata()?.len() as usize;
            if text.len() > PAGE || old > PAGE {
                return Ok(false);
            }
            if old > text.len() {
                text.resize(old, b' ');
            }
            f.write_all_at(&text, 0).map(|()| true)
        });
    match in_place {
        Ok(true) => Ok(()),
        _ => write(run_dir, record),
    }
}

/// The record in `run_dir`, if there is one.
pub fn read(run_dir: &Path) -> Result<Option<RunRecord>> {
    let path = run_dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, "read the run record", e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::Internal(format!("{}: not a run record: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let r = RunRecord {
            id: 7,
            uuid: "u".into(),
            disks: vec![DiskRecord {
                target: "vda".into(),
                source: "/x/a.qcow2".into(),
                backend: "vhost-user-blk".into(),
            }],
        };
        write(dir.path(), &r).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(r));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(read(dir.path()).is_err());
    }

    fn record(sources: &[&str]) -> RunRecord {
        RunRecord {
            id: 1,
            uuid: "u".into(),
            disks: sources
                .iter()
                .map(|s| DiskRecord {
                    target: "vda".into(),
                    source: s.into(),
                    backend: "vhost-user-blk".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_rewrite_in_place_reads_back_whether_shorter_longer_or_past_a_page() {
        let dir = tempfile::tempdir().unwrap();
        // No record yet: written whole.
        let long = record(&["/a/very/long/path/to/an/overlay.qcow2"]);
        rewrite(dir.path(), &long).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(long.clone()));
        let short = record(&["/a.s1"]);
        rewrite(dir.path(), &short).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(short));
        let len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        let text = serde_json::to_vec_pretty(&long).unwrap();
        assert_eq!(len as usize, text.len(), "padded to the old length");
        rewrite(dir.path(), &long).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(long));
        // More than a page: replaced, and back in place after.
        let many: Vec<String> = (0..100).map(|i| format!("/d/disk{i}.qcow2")).collect();
        let many = record(&many.iter().map(String::as_str).collect::<Vec<_>>());
        rewrite(dir.path(), &many).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(many));
        let one = record(&["/b"]);
        rewrite(dir.path(), &one).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(one));
    }
}
