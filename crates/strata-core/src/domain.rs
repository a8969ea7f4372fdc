//! A domain: a named machine with disks, as libvirt's domain XML describes
//! it. strata reads `name`, `uuid`, `description` and `devices/disk`
//! (`device`, `type`, `snapshot`, `driver type`, `source file`, `target
//! dev`, `transient`); everything else is kept and written back as it came.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::xml::Element;

/// One disk of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Guest device name (`target dev`), e.g. `vda`.
    pub target: String,
    /// `device`: disk, cdrom, floppy, lun.
    pub device: String,
    /// `type`: file, block, network, volume, …
    pub kind: String,
    /// The image file (`source file`), for file disks.
    pub source: Option<PathBuf>,
    /// Image format (`driver type`), e.g. qcow2.
    pub format: Option<String>,
    /// Default snapshot mode for this disk (`snapshot=`): no, internal, external.
    pub snapshot: Option<String>,
    /// Changes are discarded when the machine stops (`<transient/>`).
    pub transient: bool,
}

/// A domain definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    xml: Element,
}

/// Attributes that carry secrets, by element (dropped from XML shown
/// without `--security-info`, as libvirt does).
const SECRET_ATTRS: [(&str, &str); 1] = [("graphics", "passwd")];

fn valid_uuid(u: &str) -> bool {
    let hex: String = u.chars().filter(|c| *c != '-').collect();
    hex.len() == 32
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && (u.len() == 32 || u.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12])
}

impl Domain {
    /// Parses domain XML; `what` names the input in errors. A missing UUID
    /// is generated, as libvirt does at define time.
    pub fn from_xml(text: &str, what: &str) -> Result<Domain> {
        let mut xml = Element::parse(text, what)?;
        let bad = |problem: String| Error::Xml {
            what: what.to_string(),
            problem,
        };
        if xml.name != "domain" {
            return Err(bad(format!(
                "the root element is <{}>, not <domain>",
                xml.name
            )));
        }
        // Snapshots and checkpoints store the domain one level down.
        if xml.depth() > crate::xml::MAX_DOMAIN_DEPTH {
            return Err(bad(format!(
                "elements nest deeper than {} levels (strata keeps a domain inside snapshot documents, which may nest {})",
                crate::xml::MAX_DOMAIN_DEPTH,
                crate::xml::MAX_DEPTH
            )));
        }
        let name = xml.child_text("name").unwrap_or_default();
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
            return Err(bad(format!(
                "domain name '{name}' is empty or contains '/' or control characters"
            )));
        }
        match xml.child_text("uuid") {
            Some(u) if !valid_uuid(&u) => return Err(bad(format!("invalid uuid '{u}'"))),
            Some(_) => {}
            None => {
                let u = uuid::Uuid::new_v4().to_string();
                xml.child_or_insert("uuid").set_text(&u);
            }
        }
        let dom = Domain { xml };
        let mut seen: Vec<String> = Vec::new();
        for d in dom.disks_of_any_kind() {
            let d = d.map_err(bad)?;
            if seen.contains(&d.target) {
                return Err(bad(format!("two disks use target '{}'", d.target)));
            }
            if let Some(m) = &d.snapshot {
                if !["no", "internal", "external", "manual"].contains(&m.as_str()) {
                    return Err(bad(format!(
                        "disk '{}': snapshot='{m}' is not no, internal, external or manual",
                        d.target
                    )));
                }
            }
            seen.push(d.target);
        }
        Ok(dom)
    }

    /// A definition already checked (as stored with a snapshot).
    pub fn from_element(xml: Element) -> Domain {
        Domain { xml }
    }

    /// The domain's name.
    pub fn name(&self) -> String {
        self.xml.child_text("name").unwrap_or_default()
    }

    /// The domain's UUID.
    pub fn uuid(&self) -> String {
        self.xml.child_text("uuid").unwrap_or_default()
    }

    /// The description, if any.
    pub fn description(&self) -> Option<String> {
        self.xml.child_text("description")
    }

    /// The whole definition.
    pub fn element(&self) -> &Element {
        &self.xml
    }

    fn disks_of_any_kind(&self) -> impl Iterator<Item = std::result::Result<Disk, String>> + '_ {
        self.xml
            .child("devices")
            .into_iter()
            .flat_map(|d| d.elements().filter(|e| e.name == "disk"))
            .map(|e| {
                let target = e
                    .child("target")
                    .and_then(|t| t.attr("dev"))
                    .filter(|t| !t.is_empty())
                    .ok_or("a <disk> has no <target dev='…'/>")?
                    .to_string();
                Ok(Disk {
                    device: e.attr("device").unwrap_or("disk").to_string(),
                    kind: e.attr("type").unwrap_or("file").to_string(),
                    source: e
                        .child("source")
                        .and_then(|s| s.attr("file"))
                        .map(PathBuf::from),
                    format: e
                        .child("driver")
                        .and_then(|d| d.attr("type"))
                        .map(str::to_string),
                    snapshot: e.attr("snapshot").map(str::to_string),
                    transient: e.child("transient").is_some(),
                    target,
                })
            })
    }

    /// Every `<disk>` of the domain (all devices and types).
    pub fn disks(&self) -> Vec<Disk> {
        self.disks_of_any_kind().filter_map(|d| d.ok()).collect()
    }

    /// Points disk `target` at a new image file and format (as after an
    /// external snapshot).
    pub fn set_disk_source(
        &mut self,
        target: &str,
        file: &std::path::Path,
        format: &str,
    ) -> Result<()> {
        let name = self.name();
        let disk = self
            .xml
            .child_mut("devices")
            .and_then(|d| {
                d.elements_mut().find(|e| {
                    e.name == "disk"
                        && e.child("target").and_then(|t| t.attr("dev")) == Some(target)
                })
            })
            .ok_or_else(|| {
                Error::invalid(format!("domain '{name}'"), format!("no disk '{target}'"))
            })?;
        disk.child_or_insert("source")
            .set_attr("file", &file.display().to_string());
        disk.child_or_insert("driver").set_attr("type", format);
        Ok(())
    }

    /// The definition as XML; secrets only with `security_info`.
    pub fn to_xml(&self, security_info: bool) -> String {
        if security_info {
            return self.xml.to_xml();
        }
        let mut x = self.xml.clone();
        strip_secrets(&mut x);
        x.to_xml()
    }
}

fn strip_secrets(e: &mut Element) {
    for (el, attr) in SECRET_ATTRS {
        if e.name == el {
            e.remove_attr(attr);
        }
    }
    for c in e.elements_mut() {
        strip_secrets(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = r#"<domain type="kvm">
  <name>vm1</name>
  <memory unit="MiB">512</memory>
  <devices>
    <disk type="file" device="disk" snapshot="internal">
      <driver name="qemu" type="qcow2"/>
      <source file="/images/vda.qcow2"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="file" device="cdrom"><target dev="sda"/></disk>
    <graphics type="vnc" passwd="secret"/>
  </devices>
</domain>"#;

    #[test]
    fn reads_disks_and_generates_a_uuid() {
        let d = Domain::from_xml(VM, "vm1.xml").unwrap();
        assert_eq!(d.name(), "vm1");
        assert!(valid_uuid(&d.uuid()), "{}", d.uuid());
        let disks = d.disks();
        assert_eq!(disks.len(), 2);
        assert_eq!(
            disks[0].source.as_deref(),
            Some(std::path::Path::new("/images/vda.qcow2"))
        );
        assert_eq!(disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(disks[0].snapshot.as_deref(), Some("internal"));
        assert_eq!(disks[1].device, "cdrom");
        assert!(!d.to_xml(false).contains("secret"));
        assert!(d.to_xml(true).contains("passwd=\"secret\""));
        assert!(d
            .to_xml(false)
            .contains("<memory unit=\"MiB\">512</memory>"));
    }

    #[test]
    fn refuses_what_libvirt_refuses() {
        for (doc, want) in [
            ("<vm><name>a</name></vm>", "not <domain>"),
            ("<domain><name></name></domain>", "name"),
            ("<domain><name>a/b</name></domain>", "'/'"),
            ("<domain><name>a</name><uuid>zz</uuid></domain>", "uuid"),
            (
                "<domain><name>a</name><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>",
                "two disks",
            ),
            (
                "<domain><name>a</name><devices><disk snapshot='maybe'><target dev='vda'/></disk></devices></domain>",
                "snapshot='maybe'",
            ),
        ] {
            let err = Domain::from_xml(doc, "x.xml").unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("x.xml"), "{doc}: {err}");
        }
    }
}
