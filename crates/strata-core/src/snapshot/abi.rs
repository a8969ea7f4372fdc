//! What a machine's memory state depends on in its definition (libvirt's
//! "ABI stability" check before a revert to a snapshot with memory): a
//! guest whose memory was saved with one machine cannot go on in another.
//! The parts compared: the vCPU count, the memory size, the machine type
//! and architecture, and the disks' targets and buses.

use crate::domain::Domain;
use crate::xml::Element;

/// The parts of `then` (the snapshot's definition) that `now` (the
/// domain's) changes, each said as "what: then → now"; empty when they
/// match.
pub fn differences(then: &Domain, now: &Domain) -> Vec<String> {
    let (a, b) = (then.element(), now.element());
    let mut out = Vec::new();
    let mut compare = |what: &str, x: Option<String>, y: Option<String>| {
        if x != y {
            let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
            out.push(format!("{what}: {} then, {} now", show(x), show(y)));
        }
    };
    compare("vCPUs", vcpus(a), vcpus(b));
    compare("memory", memory(a), memory(b));
    compare("machine type", os_type(a, "machine"), os_type(b, "machine"));
    compare("architecture", os_type(a, "arch"), os_type(b, "arch"));
    compare("disks", disks(a), disks(b));
    out
}

fn vcpus(x: &Element) -> Option<String> {
    x.child_text("vcpu").map(|t| t.trim().to_string())
}

/// The memory size in bytes (any of libvirt's units), else as written.
fn memory(x: &Element) -> Option<String> {
    let m = x.child("memory")?;
    let text = m.text().trim().to_string();
    let scale = crate::live::machine::unit_bytes(m.attr("unit").unwrap_or("KiB"));
    Some(match (text.parse::<u64>().ok(), scale) {
        (Some(n), Some(s)) => format!("{} bytes", n.saturating_mul(s)),
        _ => text,
    })
}

fn os_type(x: &Element, attr: &str) -> Option<String> {
    x.child("os")?.child("type")?.attr(attr).map(str::to_string)
}

/// The disks as `target (bus)`, in order.
fn disks(x: &Element) -> Option<String> {
    let list: Vec<String> = x
        .child("devices")?
        .elements()
        .filter(|e| e.name == "disk")
        .filter_map(|d| {
            let t = d.child("target")?;
            Some(format!(
                "{} ({})",
                t.attr("dev")?,
                t.attr("bus").unwrap_or("default")
            ))
        })
        .collect();
    Some(list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(vcpu: u32, mem: &str, machine: &str, disks: &str) -> Domain {
        Domain::from_xml(
            &format!(
                "<domain type='qemu'><name>vm</name><uuid>6f1b0c2e-5a7d-4c1e-9b3a-000000000001</uuid>{mem}<vcpu>{vcpu}</vcpu>
                 <os><type arch='x86_64' machine='{machine}'>hvm</type></os><devices>{disks}</devices></domain>"
            ),
            "d.xml",
        )
        .unwrap()
    }

    #[test]
    fn the_same_machine_in_other_words_matches_and_changes_are_named() {
        let vda = "<disk type='file' device='disk'><source file='/a'/><target dev='vda' bus='virtio'/></disk>";
        let base = dom(1, "<memory unit='MiB'>256</memory>", "q35", vda);
        // 256 MiB in KiB, and another image behind the same target: same ABI.
        let moved = vda.replace("/a", "/b");
        let same = dom(1, "<memory>262144</memory>", "q35", &moved);
        assert!(differences(&base, &same).is_empty());
        let other = dom(
            2,
            "<memory unit='GiB'>1</memory>",
            "pc",
            &vda.replace("virtio", "sata"),
        );
        let d = differences(&base, &other);
        assert_eq!(d.len(), 4, "{d:?}");
        assert_eq!(d[0], "vCPUs: 1 then, 2 now");
        assert!(d[2].contains("q35 then, pc now"), "{d:?}");
        assert!(d[3].contains("vda (virtio) then, vda (sata) now"), "{d:?}");
    }
}
