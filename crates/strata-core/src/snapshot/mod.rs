//! Snapshot metadata in libvirt's domainsnapshot XML: name, description,
//! state, creation time, parent, memory (`no` for the snapshots strata
//! takes of a machine that is not running; kept as given when redefined),
//! the disks with how each was snapshotted, and the full domain definition
//! at snapshot time.

pub mod abi;
pub mod create;
pub mod delete;
pub mod list;
pub mod memspec;
mod merge;
pub mod redefine;
pub mod revert;
pub mod undo;

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::xml::{Element, Node};

/// How one disk takes part in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// Not at all.
    No,
    /// An internal snapshot inside the disk's qcow2 image.
    Internal,
    /// A new overlay takes the writes; the old image is the snapshot.
    External,
}

impl DiskMode {
    /// The XML / diskspec spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::No => "no",
            DiskMode::Internal => "internal",
            DiskMode::External => "external",
        }
    }

    /// Parses `no`, `internal` or `external`.
    pub fn parse(s: &str) -> Option<DiskMode> {
        match s {
            "no" => Some(DiskMode::No),
            "internal" => Some(DiskMode::Internal),
            "external" => Some(DiskMode::External),
            _ => None,
        }
    }
}

/// One disk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotDisk {
    /// The disk's target (`vda`).
    pub name: String,
    /// How it was snapshotted.
    pub mode: DiskMode,
    /// External: the overlay that took the writes after the snapshot.
    pub source: Option<PathBuf>,
    /// External: the overlay's format.
    pub driver: Option<String>,
}

/// A snapshot's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDef {
    /// Name (unique in the domain).
    pub name: String,
    /// Description, if any.
    pub description: Option<String>,
    /// Domain state when taken (`shutoff` for a machine that is not running).
    pub state: String,
    /// Seconds since the Epoch.
    pub creation_time: u64,
    /// The parent snapshot.
    pub parent: Option<String>,
    /// The `<memory>` element as given (`None`: `snapshot='no'`).
    pub memory: Option<Element>,
    /// The disks.
    pub disks: Vec<SnapshotDisk>,
    /// The domain definition at snapshot time.
    pub domain: Option<Element>,
}

impl SnapshotDef {
    /// True when every participating disk is external (libvirt's "external"
    /// snapshot for list filters).
    pub fn is_external(&self) -> bool {
        self.disks.iter().any(|d| d.mode == DiskMode::External)
    }

    /// The XML, as `snapshot dumpxml` prints it.
    pub fn to_xml(&self, security_info: bool) -> String {
        let mut root = Element::new("domainsnapshot");
        let mut add = |el: Element| root.children.push(Node::Element(el));
        let text = |name: &str, t: &str| {
            let mut e = Element::new(name);
            e.set_text(t);
            e
        };
        add(text("name", &self.name));
        if let Some(d) = &self.description {
            add(text("description", d));
        }
        add(text("state", &self.state));
        if let Some(p) = &self.parent {
            let mut parent = Element::new("parent");
            parent.children.push(Node::Element(text("name", p)));
            add(parent);
        }
        add(text("creationTime", &self.creation_time.to_string()));
        add(self.memory.clone().unwrap_or_else(|| {
            let mut memory = Element::new("memory");
            memory.set_attr("snapshot", "no");
            memory
        }));
        let mut disks = Element::new("disks");
        for d in &self.disks {
            let mut e = Element::new("disk");
            e.set_attr("name", &d.name);
            e.set_attr("snapshot", d.mode.as_str());
            if d.mode == DiskMode::External {
                e.set_attr("type", "file");
                if let Some(drv) = &d.driver {
                    e.child_or_insert("driver").set_attr("type", drv);
                }
                if let Some(src) = &d.source {
                    e.child_or_insert("source")
                        .set_attr("file", &src.display().to_string());
                }
            }
            disks.children.push(Node::Element(e));
        }
        add(disks);
        if let Some(dom) = &self.domain {
            let dom = crate::domain::Domain::from_element(dom.clone());
            let xml = dom.to_xml(security_info);
            if let Ok(el) = Element::parse(&xml, "domain") {
                add(el);
            }
        }
        root.to_xml()
    }

    /// Reads snapshot XML (as strata or libvirt wrote it); `what` names it.
    pub fn from_xml(text: &str, what: &str) -> Result<SnapshotDef> {
        let root = Element::parse_root(text, what, "domainsnapshot")?;
        let bad = |problem: String| Error::Xml {
            what: what.to_string(),
            problem,
        };
        let mut disks = Vec::new();
        for d in root.disks_in("disks") {
            let name = d
                .attr("name")
                .ok_or_else(|| bad("a <disk> has no name".into()))?;
            let mode = match d.attr("snapshot") {
                Some(m) => DiskMode::parse(m).ok_or_else(|| {
                    bad(format!("disk '{name}': snapshot='{m}' is not supported"))
                })?,
                None if d.child("source").is_some() => DiskMode::External,
                None => DiskMode::Internal,
            };
            disks.push(SnapshotDisk {
                name: name.to_string(),
                mode,
                source: d
                    .child("source")
                    .and_then(|s| s.attr("file"))
                    .map(PathBuf::from),
                driver: d
                    .child("driver")
                    .and_then(|s| s.attr("type"))
                    .map(str::to_string),
            });
        }
        let creation_time = match root.child_text("creationTime") {
            Some(t) => t
                .parse()
                .map_err(|_| bad(format!("creationTime '{t}' is not a number of seconds")))?,
            None => 0,
        };
        Ok(SnapshotDef {
            name: root.child_text("name").unwrap_or_default(),
            description: root.child_text("description"),
            state: root
                .child_text("state")
                .unwrap_or_else(|| "shutoff".to_string()),
            creation_time,
            parent: root
                .child("parent")
                .and_then(|p| p.child_text("name"))
                .filter(|p| !p.is_empty()),
            // The plain `snapshot='no'` is the default; anything else stays.
            memory: root
                .child("memory")
                .filter(|m| m.attrs.len() != 1 || m.attr("snapshot") != Some("no"))
                .cloned(),
            disks,
            domain: root.child("domain").cloned(),
        })
    }

    /// True when the snapshot holds a running machine's memory (reverting
    /// to it needs a hypervisor).
    pub fn has_memory(&self) -> bool {
        self.memory
            .as_ref()
            .and_then(|m| m.attr("snapshot"))
            .is_some_and(|m| m != "no")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_round_trips() {
        let def = SnapshotDef {
            name: "s1".into(),
            description: Some("before <upgrade>".into()),
            state: "shutoff".into(),
            creation_time: 1_700_000_000,
            parent: Some("s0".into()),
            memory: None,
            disks: vec![
                SnapshotDisk {
                    name: "vda".into(),
                    mode: DiskMode::Internal,
                    source: None,
                    driver: None,
                },
                SnapshotDisk {
                    name: "vdb".into(),
                    mode: DiskMode::External,
                    source: Some("/i/vdb.s1".into()),
                    driver: Some("qcow2".into()),
                },
            ],
            domain: None,
        };
        let xml = def.to_xml(false);
        assert_eq!(SnapshotDef::from_xml(&xml, "t").unwrap(), def);
        assert!(def.is_external());
    }
}
