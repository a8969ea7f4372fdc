//! `strata img snapshot`: the internal snapshots of a qcow2 image, as
//! qemu-img snapshot handles them: create, list, apply (revert to) and
//! delete. Also the listing that this command and `info` both print:
//! qemu-img's table, and the records of `qemu-img info --output=json`.
//!
//! As qemu-img, create, apply and delete print nothing on success; with
//! `--output json` they print the record of the snapshot acted on. Only the
//! image itself is opened, never its backing chain (a snapshot records only
//! the image's own clusters).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use strata_image::capability::Snapshots;
use strata_image::qcow2::SnapshotInfo;
use strata_image::Image;

use super::{format_of, open, shown, OpenSpec};
use crate::cli::SnapshotCommand;
use crate::exit::{usage, OK};
use crate::output::{human_size, local_time, Output};

/// What a `snapshot` request does.
#[derive(Debug)]
enum Action {
    /// Create a snapshot with this name (`None`: named after the time).
    Create(Option<String>),
    /// List the snapshots.
    List,
    /// Revert to the snapshot with this name or ID.
    Apply(String),
    /// Delete the snapshot with this name or ID.
    Delete(String),
}

impl Action {
    /// The action for messages: "apply snapshot 's1'".
    fn doing(&self) -> String {
        match self {
            Action::Create(Some(n)) => format!("create snapshot '{n}'"),
            Action::Create(None) => "create a snapshot".to_string(),
            Action::List => "list snapshots".to_string(),
            Action::Apply(n) => format!("apply snapshot '{n}'"),
            Action::Delete(n) => format!("delete snapshot '{n}'"),
        }
    }
}

/// A validated `snapshot` request.
#[derive(Debug)]
struct Request {
    file: PathBuf,
    spec: OpenSpec,
    action: Action,
}

/// Refuses an empty snapshot name (it could name nothing).
fn named(name: String) -> Result<String> {
    if name.is_empty() {
        return Err(usage("a snapshot name must not be empty"));
    }
    Ok(name)
}

impl Request {
    fn new(cmd: SnapshotCommand) -> Result<Self> {
        let writable = OpenSpec {
            writable: true,
            backing: false,
            ..Default::default()
        };
        Ok(match cmd {
            SnapshotCommand::Create(a) => Request {
                spec: OpenSpec {
                    format: format_of(a.format),
                    ..writable
                },
                action: Action::Create(a.name.map(named).transpose()?),
                file: a.file,
            },
            SnapshotCommand::List(a) => Request {
                spec: OpenSpec {
                    format: format_of(a.format),
                    backing: false,
                    force_share: a.force_share,
                    ..Default::default()
                },
                action: Action::List,
                file: a.file,
            },
            SnapshotCommand::Apply(a) => Request {
                spec: OpenSpec {
                    format: format_of(a.format),
                    ..writable
                },
                action: Action::Apply(named(a.name)?),
                file: a.file,
            },
            SnapshotCommand::Delete(a) => Request {
                spec: OpenSpec {
                    format: format_of(a.format),
                    ..writable
                },
                action: Action::Delete(named(a.name)?),
                file: a.file,
            },
        })
    }
}

/// The qcow2 image behind `img`, or an error saying that `doing` needs one:
/// other formats have no internal snapshots.
pub fn snapshots_for<'a>(img: &'a dyn Image, file: &str, doing: &str) -> Result<&'a dyn Snapshots> {
    img.internal_snapshots().ok_or_else(|| {
        anyhow!(
            "{file}: cannot {doing}: a {} image has no internal snapshots (only qcow2 has them)",
            img.format().name()
        )
    })
}

/// Runs `strata img snapshot …`.
pub fn run(cmd: SnapshotCommand, out: &Output) -> Result<u8> {
    let req = Request::new(cmd)?;
    let file = shown(&req.file);
    let doing = req.action.doing();
    let img = open(&req.file, req.spec).with_context(|| format!("cannot {doing}"))?;
    let q = snapshots_for(img.as_ref(), &file, &doing)?;
    // The engine's errors name the file and the snapshot.
    let acted = match &req.action {
        Action::List => {
            let records: Vec<SnapshotRecord> = q.snapshots()?.iter().map(Into::into).collect();
            if out.json() {
                out.print_json(&records)?;
            } else if !records.is_empty() {
                // As qemu-img: no snapshots, no table.
                out.text(&table(&records))?;
            }
            return Ok(OK);
        }
        Action::Create(name) => q.snapshot_create(name.as_deref(), 0)?,
        Action::Apply(name) => q.snapshot_apply(name)?,
        Action::Delete(name) => q.snapshot_delete(name)?,
    };
    img.flush()?;
    img.close()?;
    if out.json() {
        out.print_json(&SnapshotRecord::from(&acted))?;
    }
    Ok(OK)
}

/// One snapshot as an entry of `qemu-img info --output=json`'s "snapshots".
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRecord {
    /// Record/replay instruction count; absent when not recorded (-1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<i64>,
    /// Guest run time: the nanoseconds past `vm_clock_sec`.
    pub vm_clock_nsec: u64,
    /// Name (qemu-img's TAG).
    pub name: String,
    /// Creation time: seconds since the Epoch.
    pub date_sec: u32,
    /// Creation time: nanoseconds.
    pub date_nsec: u32,
    /// Guest run time: whole seconds.
    pub vm_clock_sec: u64,
    /// ID.
    pub id: String,
    /// Saved VM state, in bytes.
    pub vm_state_size: u64,
}

impl From<&SnapshotInfo> for SnapshotRecord {
    fn from(s: &SnapshotInfo) -> Self {
        SnapshotRecord {
            icount: s.icount.filter(|&i| i != -1),
            vm_clock_nsec: s.vm_clock_nsec % 1_000_000_000,
            name: s.name.clone(),
            date_sec: s.date_sec,
            date_nsec: s.date_nsec,
            vm_clock_sec: s.vm_clock_nsec / 1_000_000_000,
            id: s.id.clone(),
            vm_state_size: s.vm_state_size,
        }
    }
}

/// The snapshot table as `qemu-img snapshot -l` and `qemu-img info` print
/// it, from the "Snapshot list:" line on; every line ends in a newline.
pub fn table(snaps: &[SnapshotRecord]) -> String {
    let mut s = String::from("Snapshot list:\n");
    s.push_str(&format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    ));
    for sn in snaps {
        let secs = sn.vm_clock_sec;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            sn.vm_clock_nsec / 1_000_000
        );
        // qemu-img shows an icount that was not recorded as "--".
        let icount = sn
            .icount
            .map_or_else(|| "--".to_string(), |c| c.to_string());
        s.push_str(&format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            sn.id,
            sn.name,
            human_size(sn.vm_state_size),
            local_time(sn.date_sec),
            clock,
            icount
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str, vm_clock_nsec: u64, icount: Option<i64>) -> SnapshotRecord {
        SnapshotRecord::from(&SnapshotInfo {
            id: id.into(),
            name: name.into(),
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec,
            vm_state_size: 1536,
            disk_size: None,
            icount,
        })
    }

    #[test]
    fn vm_clock_splits_into_seconds_and_nanoseconds() {
        let r = record("1", "a", 3_723_456_789_012, Some(-1));
        assert_eq!((r.vm_clock_sec, r.vm_clock_nsec), (3723, 456_789_012));
        assert_eq!(r.icount, None);
        assert_eq!(record("1", "a", 0, Some(7)).icount, Some(7));
    }

    #[test]
    fn table_columns() {
        let t = table(&[record(
            "12",
            "a-long-snapshot-name",
            3_723_456_789_012,
            Some(42),
        )]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Snapshot list:");
        assert_eq!(
            lines[1],
            "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT"
        );
        assert!(lines[2].starts_with("12      a-long-snapshot-name  1.5 KiB "));
        assert!(
            lines[2].ends_with("  0001:02:03.456         42"),
            "{}",
            lines[2]
        );
        let t = table(&[record("1", "a", 0, Some(-1))]);
        assert!(t.ends_with("  0000:00:00.000         --\n"), "{t}");
    }
}
