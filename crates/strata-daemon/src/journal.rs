//! The record of a run, `STATE/run/NAME/run.json`: what a daemon that
//! starts after this one (a crash, an upgrade) needs to take the run over —
//! the domain id, and the image file each disk serves. It is written once
//! the disks are served, before QEMU starts, and again whenever a live
//! snapshot puts a new overlay on top, before the guest's requests are
//! taken again: so the record never names an image the guest has stopped
//! writing to. Written to a new file and renamed over the old one (a
//! daemon killed mid-write leaves the previous record whole); not synced,
//! as a crash of the host ends the guests too.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
}
