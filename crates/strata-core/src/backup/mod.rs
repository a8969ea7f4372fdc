//! libvirt's domainbackup XML, in both directions: which disks a backup
//! takes, full or incremental (since a checkpoint), and where each goes
//! (push mode: a target file and its format; pull mode: an NBD export).
//! [`BackupDef::resolve`] fills in what libvirt fills in for elements left
//! out, so the XML written back says exactly what was done.

pub mod live;
pub mod pull;
pub mod push;
pub mod repo;
pub mod repo_live;
pub mod repo_restore;
pub mod serve;

use std::path::PathBuf;

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::xml::{Element, Node};

/// Who moves the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// strata writes each disk to a target file.
    Push,
    /// strata exports each disk over NBD for a client to read.
    Pull,
}

/// One `<disk>` of a backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupDisk {
    /// Disk target (`vda`).
    pub name: String,
    /// Whether the disk takes part.
    pub backup: bool,
    /// `backupmode`: `Some(true)` full, `Some(false)` incremental.
    pub full: Option<bool>,
    /// The checkpoint an incremental backup of this disk starts from.
    pub incremental: Option<String>,
    /// `file` or `block`.
    pub kind: Option<String>,
    /// Push mode: the file (or device) written.
    pub target: Option<PathBuf>,
    /// Push mode: the target's format (`qcow2` unless given).
    pub format: Option<String>,
    /// Pull mode: the NBD export name.
    pub export_name: Option<String>,
    /// Pull mode: the exported dirty bitmap's name.
    pub export_bitmap: Option<String>,
    /// Pull mode of a running domain: the scratch file of the disk's
    /// point-in-time view (`<scratch file=…>`; default: in the state
    /// folder).
    pub scratch: Option<PathBuf>,
}

/// Where a pull-mode backup's NBD server listens (`<server>`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum BackupServer {
    /// TCP at `name` (a host name or address), port `port` (10809 unless
    /// given).
    Tcp {
        /// Host name or address.
        name: String,
        /// Port, if given.
        port: Option<u16>,
    },
    /// A unix socket.
    Unix {
        /// The socket's absolute path.
        socket: PathBuf,
    },
}

/// A backup's definition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupDef {
    /// Push or pull.
    pub mode: BackupMode,
    /// Pull mode: where the NBD server listens.
    pub server: Option<BackupServer>,
    /// Pull mode: `tls='yes'` on the server.
    pub tls: bool,
    /// The checkpoint an incremental backup starts from (every disk).
    pub incremental: Option<String>,
    /// The disks listed (`None`: every disk takes part).
    pub disks: Option<Vec<BackupDisk>>,
}

impl BackupDef {
    /// A full push backup of every disk (no XML given).
    pub fn full_push() -> BackupDef {
        BackupDef {
            mode: BackupMode::Push,
            server: None,
            tls: false,
            incremental: None,
            disks: None,
        }
    }

    /// Reads domainbackup XML; `what` names it in errors.
    pub fn from_xml(text: &str, what: &str) -> Result<BackupDef> {
        let root = Element::parse_root(text, what, "domainbackup")?;
        let bad = |problem: String| Error::Xml {
            what: what.to_string(),
            problem,
        };
        let mode = match root.attr("mode") {
            None | Some("push") => BackupMode::Push,
            Some("pull") => BackupMode::Pull,
            Some(m) => return Err(bad(format!("mode '{m}' is not push or pull"))),
        };
        let disks = match root.child("disks") {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for d in list.elements().filter(|e| e.name == "disk") {
                    out.push(disk_from(d, &bad)?);
                }
                Some(out)
            }
        };
        let (server, tls) = match root.child("server") {
            Some(e) if mode == BackupMode::Pull => server_from(e, &bad)?,
            Some(_) => return Err(bad("<server> is for mode='pull' only".into())),
            None => (None, false),
        };
        Ok(BackupDef {
            mode,
            server,
            tls,
            incremental: root.child_text("incremental").filter(|s| !s.is_empty()),
            disks,
        })
    }

    /// The XML (push mode or pull mode as defined).
    pub fn to_xml(&self) -> String {
        let mut root = Element::new("domainbackup");
        root.set_attr(
            "mode",
            match self.mode {
                BackupMode::Push => "push",
                BackupMode::Pull => "pull",
            },
        );
        if let Some(i) = &self.incremental {
            let mut e = Element::new("incremental");
            e.set_text(i);
            root.children.push(Node::Element(e));
        }
        if let Some(server) = &self.server {
            let mut e = Element::new("server");
            if self.tls {
                e.set_attr("tls", "yes");
            }
            match server {
                BackupServer::Tcp { name, port } => {
                    e.set_attr("transport", "tcp");
                    e.set_attr("name", name);
                    if let Some(p) = port {
                        e.set_attr("port", &p.to_string());
                    }
                }
                BackupServer::Unix { socket } => {
                    e.set_attr("transport", "unix");
                    e.set_attr("socket", &socket.display().to_string());
                }
            }
            root.children.push(Node::Element(e));
        }
        if let Some(disks) = &self.disks {
            let mut list = Element::new("disks");
            for d in disks {
                list.children.push(Node::Element(disk_to(d, self.mode)));
            }
            root.children.push(Node::Element(list));
        }
        root.to_xml()
    }

    /// The definition with every default made explicit for `dom`: every
    /// disk listed (those not taking part with `backup='no'`), each with
    /// its mode, checkpoint, type, target (push: `SOURCE.START` unless
    /// given) and format. Unknown disk names, and disks without an image,
    /// are refused.
    pub fn resolve(&self, dom: &Domain, start: u64, what: &str) -> Result<BackupDef> {
        let disks = dom.disks();
        if let Some(listed) = &self.disks {
            for d in listed {
                if !disks.iter().any(|x| x.target == d.name) {
                    return Err(Error::invalid(
                        what,
                        format!("disk '{}' is not a disk of the domain", d.name),
                    ));
                }
            }
        }
        let mut out = Vec::new();
        for disk in &disks {
            let listed = match &self.disks {
                None => None,
                Some(l) => match l.iter().find(|d| d.name == disk.target) {
                    Some(d) => Some(d),
                    // Listed disks only, when the list is given.
                    None => {
                        out.push(not_taking_part(&disk.target));
                        continue;
                    }
                },
            };
            if listed.is_some_and(|d| !d.backup) || disk.device != "disk" {
                out.push(not_taking_part(&disk.target));
                continue;
            }
            let Some(source) = &disk.source else {
                return Err(Error::invalid(
                    what,
                    format!("disk '{}' has no image to back up", disk.target),
                ));
            };
            let mut d = listed
                .cloned()
                .unwrap_or_else(|| not_taking_part(&disk.target));
            d.backup = true;
            if d.full != Some(true) {
                d.incremental = d.incremental.clone().or_else(|| self.incremental.clone());
            }
            if d.full == Some(false) && d.incremental.is_none() {
                return Err(Error::invalid(
                    what,
                    format!(
                        "disk '{}': backupmode='incremental' names no checkpoint",
                        d.name
                    ),
                ));
            }
            d.full = Some(d.incremental.is_none());
            if self.mode == BackupMode::Push {
                d.kind = Some(d.kind.unwrap_or_else(|| "file".into()));
                d.format = Some(d.format.unwrap_or_else(|| "qcow2".into()));
                d.target = Some(d.target.clone().unwrap_or_else(|| {
                    let mut p = source.clone().into_os_string();
                    p.push(format!(".{start}"));
                    PathBuf::from(p)
                }));
            } else {
                d.kind = Some(d.kind.unwrap_or_else(|| "file".into()));
                d.export_name = Some(d.export_name.unwrap_or_else(|| d.name.clone()));
                if d.incremental.is_some() {
                    d.export_bitmap = Some(
                        d.export_bitmap
                            .unwrap_or_else(|| format!("backup-{}", d.name)),
                    );
                }
            }
            out.push(d);
        }
        Ok(BackupDef {
            mode: self.mode,
            server: self.server.clone(),
            tls: self.tls,
            incremental: self.incremental.clone(),
            disks: Some(out),
        })
    }
}

fn not_taking_part(name: &str) -> BackupDisk {
    BackupDisk {
        name: name.to_string(),
        backup: false,
        full: None,
        incremental: None,
        kind: None,
        target: None,
        format: None,
        export_name: None,
        export_bitmap: None,
        scratch: None,
    }
}

/// `<server>`: where a pull backup listens, and whether with TLS.
fn server_from(e: &Element, bad: &dyn Fn(String) -> Error) -> Result<(Option<BackupServer>, bool)> {
    let tls = match e.attr("tls") {
        None | Some("no") => false,
        Some("yes") => true,
        Some(v) => return Err(bad(format!("<server tls='{v}'> is not yes or no"))),
    };
    let server = match e.attr("transport") {
        None | Some("tcp") => {
            let name = e
                .attr("name")
                .filter(|n| !n.is_empty())
                .ok_or_else(|| bad("<server> over TCP names no host (name=)".into()))?;
            let port = match e.attr("port") {
                None => None,
                Some(p) => Some(
                    p.parse::<u16>()
                        .map_err(|_| bad(format!("<server port='{p}'> is not a port")))?,
                ),
            };
            BackupServer::Tcp {
                name: name.to_string(),
                port,
            }
        }
        Some("unix") => {
            let socket = e
                .attr("socket")
                .filter(|s| s.starts_with('/'))
                .ok_or_else(|| bad("<server transport='unix'> needs an absolute socket=".into()))?;
            BackupServer::Unix {
                socket: PathBuf::from(socket),
            }
        }
        Some(t) => {
            return Err(bad(format!(
                "<server transport='{t}'> is not tcp or unix (fd is not supported)"
            )))
        }
    };
    Ok((Some(server), tls))
}

fn disk_from(d: &Element, bad: &dyn Fn(String) -> Error) -> Result<BackupDisk> {
    let name = d
        .attr("name")
        .ok_or_else(|| bad("a <disk> has no name".into()))?;
    let backup = match d.attr("backup") {
        None | Some("yes") => true,
        Some("no") => false,
        Some(v) => return Err(bad(format!("disk '{name}': backup='{v}' is not yes or no"))),
    };
    let full = match d.attr("backupmode") {
        None => None,
        Some("full") => Some(true),
        Some("incremental") => Some(false),
        Some(v) => {
            return Err(bad(format!(
                "disk '{name}': backupmode='{v}' is not full or incremental"
            )))
        }
    };
    let kind = d.attr("type").map(str::to_string);
    let target = d.child("target").and_then(|t| match kind.as_deref() {
        Some("block") => t.attr("dev"),
        _ => t.attr("file"),
    });
    if let Some(t) = target {
        if !t.starts_with('/') {
            return Err(bad(format!(
                "disk '{name}': target '{t}' is not an absolute path"
            )));
        }
    }
    let scratch = match d.child("scratch") {
        None => None,
        Some(sc) => match (sc.attr("file"), sc.attr("dev")) {
            (Some(f), _) if f.starts_with('/') => Some(PathBuf::from(f)),
            (Some(f), _) => {
                return Err(bad(format!(
                    "disk '{name}': scratch '{f}' is not an absolute path"
                )))
            }
            (None, Some(dev)) => {
                return Err(bad(format!(
                "disk '{name}': a block device as scratch ('{dev}') is not supported; give a file"
            )))
            }
            (None, None) => return Err(bad(format!("disk '{name}': <scratch> names no file"))),
        },
    };
    Ok(BackupDisk {
        name: name.to_string(),
        backup,
        full,
        incremental: d.attr("incremental").map(str::to_string),
        kind,
        target: target.map(PathBuf::from),
        format: d
            .child("driver")
            .and_then(|x| x.attr("type"))
            .map(str::to_string),
        export_name: d.attr("exportname").map(str::to_string),
        export_bitmap: d.attr("exportbitmap").map(str::to_string),
        scratch,
    })
}

fn disk_to(d: &BackupDisk, mode: BackupMode) -> Element {
    let mut e = Element::new("disk");
    e.set_attr("name", &d.name);
    if !d.backup {
        e.set_attr("backup", "no");
        return e;
    }
    e.set_attr("backup", "yes");
    match (d.full, &d.incremental) {
        (Some(true), _) => e.set_attr("backupmode", "full"),
        (_, Some(cp)) => {
            e.set_attr("backupmode", "incremental");
            e.set_attr("incremental", cp);
        }
        _ => {}
    }
    match mode {
        BackupMode::Pull => {
            // The schema pairs backup='yes' with a type.
            e.set_attr("type", d.kind.as_deref().unwrap_or("file"));
            if let Some(n) = &d.export_name {
                e.set_attr("exportname", n);
            }
            if let Some(b) = &d.export_bitmap {
                e.set_attr("exportbitmap", b);
            }
            if let Some(f) = &d.scratch {
                let mut sc = Element::new("scratch");
                sc.set_attr("file", &f.display().to_string());
                e.children.push(Node::Element(sc));
            }
        }
        BackupMode::Push => {
            let kind = d.kind.as_deref().unwrap_or("file");
            e.set_attr("type", kind);
            if let Some(t) = &d.target {
                let mut te = Element::new("target");
                let attr = if kind == "block" { "dev" } else { "file" };
                te.set_attr(attr, &t.display().to_string());
                e.children.push(Node::Element(te));
            }
            if let Some(f) = &d.format {
                let mut de = Element::new("driver");
                de.set_attr("type", f);
                e.children.push(Node::Element(de));
            }
        }
    }
    e
}
