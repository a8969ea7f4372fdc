//! Which disks of a domain are served, and how: each file disk's image
//! (format, read-only) and its backend — vhost-user-blk by default, or
//! strata's NBD server where the daemon's default or the domain says so.
//!
//! A domain chooses per disk in its `<metadata>`, which libvirt keeps for
//! applications:
//!
//! ```xml
//! <metadata>
//!   <strata:disks xmlns:strata="urn:strata:domain:1">
//!     <strata:disk target="vdb" serve="nbd"/>
//!   </strata:disks>
//! </metadata>
//! ```
//!
//! vhost-user-blk queues follow libvirt's `<driver queues='N'
//! queue_size='M'/>`, else one per vCPU; `<serial>` is the ID the guest
//! reads either way.
//!
//! A network disk that is an NBD export on a unix socket (libvirt's
//! `<disk type='network'><source protocol='nbd' name='EXPORT'><host
//! transport='unix' socket='PATH'/></source>`) is not strata's to serve:
//! QEMU attaches the export itself ([`attached`]). That is how a machine
//! boots from a backup at once, on the exports of `strata repo mount
//! --writable`. strata neither opens nor snapshots such a disk.

use std::path::{Path, PathBuf};

use strata_core::xml::Element;
use strata_core::Domain;
use strata_image::Format;
use strata_qemu::machine::DiskBackend;

use crate::error::{Error, Result};

/// The namespace of strata's elements in a domain's `<metadata>`.
pub const METADATA_NS: &str = "urn:strata:domain:1";

/// How a disk is served to QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// strata-vhost's vhost-user-blk backend (the default).
    VhostUser,
    /// strata's NBD server; QEMU attaches an NBD client blockdev.
    Nbd,
}

impl Serve {
    /// The name in the metadata, the API and `--disk-backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Serve::VhostUser => "vhost-user-blk",
            Serve::Nbd => "nbd",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Serve> {
        match s {
            "vhost-user-blk" | "vhost" => Some(Serve::VhostUser),
            "nbd" => Some(Serve::Nbd),
            _ => None,
        }
    }
}

/// A disk of a domain to serve: what to open and what QEMU will attach.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The guest device (`target dev`).
    pub target: String,
    /// The top image file.
    pub source: PathBuf,
    /// The image format (probed when the domain names none).
    pub format: Option<Format>,
    /// Served read-only (`<readonly/>`).
    pub read_only: bool,
    /// The ID string the guest reads (`<serial>`).
    pub serial: Option<String>,
    /// What QEMU attaches (its socket in the run folder).
    pub backend: DiskBackend,
}

/// The `<disk>` elements of a domain, by target.
fn disk_element<'a>(domain: &'a Domain, target: &str) -> Option<&'a Element> {
    domain
        .element()
        .child("devices")?
        .elements()
        .filter(|e| e.name == "disk")
        .find(|e| e.child("target").and_then(|t| t.attr("dev")) == Some(target))
}

/// Why `domain` cannot run with its disk `target`.
fn refusal(domain: &Domain, target: &str, why: String) -> Error {
    Error::Config {
        domain: domain.name(),
        source: strata_core::Error::invalid(format!("<disk> '{target}'"), why),
    }
}

/// The local part of an element name (`strata:disk` → `disk`).
fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// What the domain's metadata asks for disk `target`, if anything.
fn chosen(domain: &Domain, target: &str) -> Result<Option<Serve>> {
    let Some(meta) = domain.element().child("metadata") else {
        return Ok(None);
    };
    let ours = meta.elements().filter(|e| {
        local(&e.name) == "disks"
            && e.attrs
                .iter()
                .any(|(k, v)| (k == "xmlns" || k.starts_with("xmlns:")) && v == METADATA_NS)
    });
    for disks in ours {
        for d in disks.elements().filter(|e| local(&e.name) == "disk") {
            if d.attr("target") != Some(target) {
                continue;
            }
            let how = d.attr("serve").unwrap_or("");
            return Serve::parse(how).map(Some).ok_or_else(|| Error::Config {
                domain: domain.name(),
                source: strata_core::Error::invalid(
                    format!("<metadata>/<disk target='{target}'>"),
                    format!("serve='{how}' is not vhost-user-blk or nbd"),
                ),
            });
        }
    }
    Ok(None)
}

/// The disks of `domain` and how each will be served from `run_dir`
/// (`default` unless the domain chooses), or an error naming the disk
/// strata cannot serve. Nothing is opened yet.
pub fn plan(domain: &Domain, run_dir: &Path, default: Serve) -> Result<Vec<Planned>> {
    let refuse = |target: &str, why: String| refusal(domain, target, why);
    let vcpus: u16 = domain
        .element()
        .child_text("vcpu")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut out = Vec::new();
    for d in domain.disks() {
        if d.device == "disk" && d.kind == "network" {
            // QEMU's to attach: see `attached`.
            continue;
        }
        if d.device != "disk" || d.kind != "file" {
            return Err(refuse(
                &d.target,
                format!(
                    "device='{}' type='{}': only file disks and NBD exports run yet",
                    d.device, d.kind
                ),
            ));
        }
        if d.transient {
            return Err(refuse(
                &d.target,
                "<transient/> disks do not run yet".into(),
            ));
        }
        let source = d
            .source
            .clone()
            .ok_or_else(|| refuse(&d.target, "no <source file='…'/>".into()))?;
        let format = match d.format.as_deref() {
            None => None,
            Some(f) => Some(Format::parse(f).ok_or_else(|| {
                refuse(&d.target, format!("driver type '{f}' is not qcow2 or raw"))
            })?),
        };
        let el = disk_element(domain, &d.target);
        let read_only = el.is_some_and(|e| e.child("readonly").is_some());
        let serial = el.and_then(|e| e.child_text("serial"));
        let driver = el.and_then(|e| e.child("driver"));
        let number = |attr: &str| -> Result<Option<u32>> {
            match driver.and_then(|dr| dr.attr(attr)) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| {
                    refuse(&d.target, format!("<driver {attr}='{v}'> is not a number"))
                }),
            }
        };
        let queues = number("queues")?;
        let queue_size = number("queue_size")?;
        let backend = match chosen(domain, &d.target)?.unwrap_or(default) {
            Serve::Nbd => DiskBackend::Nbd {
                socket: run_dir.join(format!("{}.nbd.sock", d.target)),
                export: d.target.clone(),
                read_only,
                serial: None,
            },
            Serve::VhostUser => DiskBackend::VhostUser {
                socket: run_dir.join(format!("{}.vhost.sock", d.target)),
                num_queues: queues
                    .map(|q| q.clamp(1, u32::from(strata_vhost::config::MAX_QUEUES)) as u16)
                    .unwrap_or(vcpus.clamp(1, strata_vhost::config::MAX_QUEUES)),
                queue_size,
            },
        };
        out.push(Planned {
            target: d.target,
            source,
            format,
            read_only,
            serial,
            backend,
        });
    }
    Ok(out)
}

/// The network disks of `domain`, which QEMU attaches itself: each an
/// NBD export on a unix socket, as `(target, backend)`; an error names
/// the disk strata cannot attach.
pub fn attached(domain: &Domain) -> Result<Vec<(String, DiskBackend)>> {
    let refuse = |target: &str, why: &str| refusal(domain, target, why.to_string());
    let mut out = Vec::new();
    for d in domain
        .disks()
        .into_iter()
        .filter(|d| d.device == "disk" && d.kind == "network")
    {
        let el = disk_element(domain, &d.target);
        let source = el.and_then(|e| e.child("source"));
        if source.and_then(|s| s.attr("protocol")) != Some("nbd") {
            return Err(refuse(
                &d.target,
                "a network disk runs as an NBD export only (<source protocol='nbd'>)",
            ));
        }
        let host = source.and_then(|s| s.child("host"));
        let socket = match (
            host.and_then(|h| h.attr("transport")),
            host.and_then(|h| h.attr("socket")),
        ) {
            (Some("unix"), Some(sock)) if Path::new(sock).is_absolute() => PathBuf::from(sock),
            _ => {
                return Err(refuse(
                    &d.target,
                    "an NBD disk is reached on a unix socket: <host transport='unix' socket='/absolute/path'/> (`strata repo mount --socket` serves one)",
                ))
            }
        };
        if d.format.as_deref().is_some_and(|f| f != "raw") {
            return Err(refuse(
                &d.target,
                "an NBD export is a raw disk: <driver type='raw'/> or none",
            ));
        }
        if d.transient {
            return Err(refuse(&d.target, "<transient/> disks do not run yet"));
        }
        out.push((
            d.target.clone(),
            DiskBackend::Nbd {
                socket,
                export: source
                    .and_then(|s| s.attr("name"))
                    .unwrap_or_default()
                    .to_string(),
                read_only: el.is_some_and(|e| e.child("readonly").is_some()),
                serial: None,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(meta: &str, driver: &str) -> Domain {
        Domain::from_xml(
            &format!(
                "<domain><name>vm</name><vcpu>3</vcpu><metadata>{meta}</metadata><devices>
                 <disk type='file' device='disk'><driver name='qemu' type='qcow2' {driver}/>
                   <source file='/a.qcow2'/><target dev='vda'/><serial>S1</serial><readonly/></disk>
                 <disk type='file' device='disk'><source file='/b.raw'/><target dev='vdb'/></disk>
                 </devices></domain>"
            ),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn backends_follow_the_default_the_metadata_and_the_driver() {
        let run = Path::new("/run/vm");
        let p = plan(&domain("", ""), run, Serve::VhostUser).unwrap();
        assert_eq!(
            p[0].backend,
            DiskBackend::VhostUser {
                socket: run.join("vda.vhost.sock"),
                num_queues: 3,
                queue_size: None
            }
        );
        assert!(p[0].read_only && !p[1].read_only);
        assert_eq!(p[0].serial.as_deref(), Some("S1"));
        assert_eq!(p[0].format, Some(Format::Qcow2));
        assert_eq!(p[1].format, None);
        let p = plan(
            &domain("", "queues='2' queue_size='256'"),
            run,
            Serve::VhostUser,
        )
        .unwrap();
        assert!(matches!(
            p[0].backend,
            DiskBackend::VhostUser {
                num_queues: 2,
                queue_size: Some(256),
                ..
            }
        ));
        let meta =
            "<s:disks xmlns:s='urn:strata:domain:1'><s:disk target='vdb' serve='nbd'/></s:disks>";
        let p = plan(&domain(meta, ""), run, Serve::VhostUser).unwrap();
        assert!(matches!(p[0].backend, DiskBackend::VhostUser { .. }));
        assert!(
            matches!(&p[1].backend, DiskBackend::Nbd { socket, export, .. }
            if socket == &run.join("vdb.nbd.sock") && export == "vdb")
        );
        // Another namespace's elements are not ours.
        let other = "<s:disks xmlns:s='urn:other'><s:disk target='vdb' serve='nbd'/></s:disks>";
        let p = plan(&domain(other, ""), run, Serve::VhostUser).unwrap();
        assert!(matches!(p[1].backend, DiskBackend::VhostUser { .. }));
        let p = plan(&domain("", ""), run, Serve::Nbd).unwrap();
        assert!(matches!(
            p[0].backend,
            DiskBackend::Nbd {
                read_only: true,
                ..
            }
        ));
        let bad =
            "<s:disks xmlns:s='urn:strata:domain:1'><s:disk target='vda' serve='scsi'/></s:disks>";
        let e = plan(&domain(bad, ""), run, Serve::VhostUser)
            .unwrap_err()
            .to_string();
        assert!(e.contains("serve='scsi'"), "{e}");
        let e = plan(&domain("", "queues='x'"), run, Serve::VhostUser)
            .unwrap_err()
            .to_string();
        assert!(e.contains("queues='x'"), "{e}");
    }

    fn network(source: &str, driver: &str) -> Domain {
        Domain::from_xml(
            &format!(
                "<domain><name>vm</name><devices>
                 <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/></disk>
                 <disk type='network' device='disk'>{driver}{source}<target dev='vdb'/><readonly/></disk>
                 </devices></domain>"
            ),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn nbd_exports_on_unix_sockets_are_qemus_to_attach_and_others_are_refused() {
        let run = Path::new("/run/vm");
        let good = "<source protocol='nbd' name='vda'><host transport='unix' socket='/m/m.sock'/></source>";
        let d = network(good, "<driver name='qemu' type='raw'/>");
        let p = plan(&d, run, Serve::VhostUser).unwrap();
        assert_eq!(p.len(), 1, "only the file disk is served");
        assert_eq!(p[0].target, "vda");
        assert_eq!(
            attached(&d).unwrap(),
            [(
                "vdb".to_string(),
                DiskBackend::Nbd {
                    socket: "/m/m.sock".into(),
                    export: "vda".into(),
                    read_only: true,
                    serial: None
                }
            )]
        );
        // No file disk is attached by QEMU.
        assert!(attached(&domain("", "")).unwrap().is_empty());
        for (source, driver, needle) in [
            (
                "<source protocol='iscsi' name='t'><host name='h'/></source>",
                "",
                "NBD export only",
            ),
            (
                "<source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>",
                "",
                "unix socket",
            ),
            (
                "<source protocol='nbd'><host transport='unix' socket='m.sock'/></source>",
                "",
                "absolute",
            ),
            (good, "<driver name='qemu' type='qcow2'/>", "raw disk"),
        ] {
            let e = attached(&network(source, driver)).unwrap_err().to_string();
            assert!(e.contains("'vdb'") && e.contains(needle), "{e}");
        }
    }
}
