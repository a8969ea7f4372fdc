//! Metadata from XML: snapshot and checkpoint XML written by libvirt
//! (`virsh -c test:///default`, samples in tests/data) is accepted by
//! `--redefine` and written back equivalent and valid; strata's own
//! dumpxml redefines to the same metadata after `--metadata` dropped it;
//! bad redefinitions are refused, changing nothing. Also the list filters
//! and trees of both.

mod common;
use common::*;
use std::path::Path;

const SNAP_RNG: &str = "/usr/share/libvirt/schemas/domainsnapshot.rng";
const CP_RNG: &str = "/usr/share/libvirt/schemas/domaincheckpoint.rng";

fn sample(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// `xmllint --c14n` of `xml`, without the whitespace between elements.
fn normal(p: &Path, xml: &str) -> String {
    std::fs::write(p.join("norm.xml"), xml).unwrap();
    let c = run_in(p, "xmllint", &["--c14n", "norm.xml"])
        .expect(0)
        .stdout;
    let mut out = String::new();
    let mut pending = String::new();
    for ch in c.chars() {
        if ch.is_whitespace() && (out.ends_with('>') || !pending.is_empty()) {
            pending.push(ch);
            continue;
        }
        if ch != '<' {
            out.push_str(&pending);
        }
        pending.clear();
        out.push(ch);
    }
    out
}

fn valid(p: &Path, xml: &str, schema: &str) {
    std::fs::write(p.join("v.xml"), xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", schema, "v.xml"]).expect(0);
}

#[test]
fn libvirt_snapshots_redefine_and_round_trip() {
    let d = tmp();
    let p = d.path();
    std::fs::write(p.join("test.xml"), sample("libvirt-test-domain.xml")).unwrap();
    ok(p, &st(&["domain", "define", "test.xml"]));
    for s in ["s1", "s2"] {
        let file = format!("{s}.xml");
        std::fs::write(
            p.join(&file),
            sample(&format!("libvirt-test-snapshot-{s}.xml")),
        )
        .unwrap();
        let r = ok(
            p,
            &st(&[
                "snapshot",
                "create",
                "test",
                "--redefine",
                "--xmlfile",
                &file,
            ]),
        );
        assert_eq!(
            r.stdout,
            format!("Domain snapshot {s} created from '{file}'\n")
        );
    }
    for s in ["s1", "s2"] {
        let out = ok(p, &st(&["snapshot", "dumpxml", "test", s])).stdout;
        valid(p, &out, SNAP_RNG);
        assert_eq!(
            normal(p, &out),
            normal(p, &sample(&format!("libvirt-test-snapshot-{s}.xml"))),
            "{s}"
        );
    }
    // Redefined without --current: none is current; then s2 is made so.
    strata(p, &st(&["snapshot", "current", "test", "--name"])).expect(1);
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "test",
            "--redefine",
            "--current",
            "--xmlfile",
            "s2.xml",
        ]),
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "test", "--name"])).stdout,
        "s2\n"
    );
    // A running machine's memory that is not where the snapshot says (its
    // image is not here) is refused before anything changes.
    strata(p, &st(&["snapshot", "revert", "test", "s1"])).one_error(
        1,
        "snapshot 's1' holds memory: its memory is in /guest/diskimage1",
    );
    // s1's parent cannot become s2 (its child): a loop, refused.
    let looped = sample("libvirt-test-snapshot-s1.xml").replace(
        "<state>running</state>",
        "<state>running</state><parent><name>s2</name></parent>",
    );
    std::fs::write(p.join("loop.xml"), looped).unwrap();
    let before = ok(p, &st(&["snapshot", "list", "test", "--tree"])).stdout;
    for (file, xml, want) in [
        ("loop.xml", None, "would make a loop"),
        (
            "orphan.xml",
            Some(
                sample("libvirt-test-snapshot-s2.xml")
                    .replace("<name>s1</name>", "<name>nope</name>"),
            ),
            "parent 'nope' does not exist",
        ),
        (
            "uuid.xml",
            Some(sample("libvirt-test-snapshot-s2.xml").replace("6695eb01", "00000000")),
            "UUID",
        ),
    ] {
        if let Some(x) = xml {
            std::fs::write(p.join(file), x).unwrap();
        }
        strata(
            p,
            &st(&[
                "snapshot",
                "create",
                "test",
                "--redefine",
                "--xmlfile",
                file,
            ]),
        )
        .one_error(1, want);
    }
    assert_eq!(
        ok(p, &st(&["snapshot", "list", "test", "--tree"])).stdout,
        before
    );
    assert_eq!(before, "s1\n  |\n  +- s2\n\n");
    strata(p, &st(&["snapshot", "create", "test", "--current"])).one_error(2, "--redefine");
    strata(p, &st(&["snapshot", "create", "test", "--redefine"])).one_error(2, "--xmlfile");
}

#[test]
fn strata_metadata_comes_back_with_redefine_and_lists_filter() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    // s1 (internal) → s2 (disk-only, external) → s3; and s4 beside s2.
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s2", "--disk-only"]),
    );
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s3", "--disk-only"]),
    );
    let xml1 = ok(p, &st(&["snapshot", "dumpxml", "vm", "s1"])).stdout;
    let xml3 = ok(p, &st(&["snapshot", "dumpxml", "vm", "s3"])).stdout;
    let list = |args: &[&str]| {
        let mut v = vec!["snapshot", "list", "vm", "--name"];
        v.extend_from_slice(args);
        ok(p, &st(&v)).stdout
    };
    assert_eq!(list(&["--from", "s1"]), "s2\n\n");
    assert_eq!(list(&["--from", "s1", "--descendants"]), "s2\ns3\n\n");
    assert_eq!(list(&["--disk-only"]), "s2\ns3\n\n");
    assert_eq!(list(&["--topological"]), "s1\ns2\ns3\n\n");
    assert_eq!(
        ok(
            p,
            &st(&["snapshot", "list", "vm", "--tree", "--from", "s2"])
        )
        .stdout,
        "s2\n  |\n  +- s3\n\n"
    );
    strata(
        p,
        &st(&["snapshot", "list", "vm", "--from", "s1", "--roots"]),
    )
    .one_error(2, "--roots");
    // Drop s3's and s1's metadata, bring them back from their XML: the
    // same XML, s3 current again, and s1's internal snapshot revertible.
    ok(p, &st(&["snapshot", "delete", "vm", "s3", "--metadata"]));
    ok(p, &st(&["snapshot", "delete", "vm", "s1", "--metadata"]));
    std::fs::write(p.join("s1.xml"), &xml1).unwrap();
    std::fs::write(p.join("s3.xml"), &xml3).unwrap();
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--redefine",
            "--xmlfile",
            "s1.xml",
        ]),
    );
    // s2 lost its parent when s1's metadata went: redefine it under s1.
    let xml2 = ok(p, &st(&["snapshot", "dumpxml", "vm", "s2"])).stdout;
    assert!(!xml2.contains("<parent>"), "{xml2}");
    let xml2 = xml2.replace(
        "<creationTime>",
        "<parent><name>s1</name></parent><creationTime>",
    );
    std::fs::write(p.join("s2.xml"), &xml2).unwrap();
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--redefine",
            "--xmlfile",
            "s2.xml",
        ]),
    );
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--redefine",
            "--current",
            "--xmlfile",
            "s3.xml",
        ]),
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "dumpxml", "vm", "s1"])).stdout,
        xml1
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "dumpxml", "vm", "s3"])).stdout,
        xml3
    );
    assert_eq!(list(&["--current"]), "s3\n\n");
    assert_eq!(
        ok(p, &st(&["snapshot", "list", "vm", "--tree"])).stdout,
        "s1\n  |\n  +- s2\n      |\n      +- s3\n\n"
    );
    // A snapshot created from XML: name, description and disks from it.
    std::fs::write(
        p.join("new.xml"),
        "<domainsnapshot><name>x1</name><description>from xml</description>\
         <disks><disk name='vda' snapshot='no'/><disk name='vdb' snapshot='external'/></disks>\
         </domainsnapshot>",
    )
    .unwrap();
    let r = ok(
        p,
        &st(&["snapshot", "create", "vm", "--xmlfile", "new.xml"]),
    );
    assert_eq!(r.stdout, "Domain snapshot x1 created from 'new.xml'\n");
    let x1 = ok(p, &st(&["snapshot", "dumpxml", "vm", "x1"])).stdout;
    valid(p, &x1, SNAP_RNG);
    assert!(x1.contains("from xml") && x1.contains("vdb.x1"), "{x1}");
}

#[test]
fn checkpoints_redefine_round_trip_and_list() {
    let d = tmp();
    let p = d.path();
    let dir = p.display();
    // The libvirt test domain, its disk a real image holding the bitmaps.
    qemu_img(p, &["create", "-q", "-f", "qcow2", "disk.qcow2", "8M"]);
    for b in ["c1", "c2"] {
        qemu_img(p, &["bitmap", "--add", "disk.qcow2", b]);
    }
    let real = |x: String| x.replace("/guest/diskimage1", &format!("{dir}/disk.qcow2"));
    std::fs::write(p.join("test.xml"), real(sample("libvirt-test-domain.xml"))).unwrap();
    ok(p, &st(&["domain", "define", "test.xml"]));
    for c in ["c1", "c2"] {
        let file = format!("{c}.xml");
        std::fs::write(
            p.join(&file),
            real(sample(&format!("libvirt-test-checkpoint-{c}.xml"))),
        )
        .unwrap();
        let r = ok(
            p,
            &st(&[
                "checkpoint",
                "create",
                "test",
                "--redefine",
                "--xmlfile",
                &file,
            ]),
        );
        assert_eq!(
            r.stdout,
            format!("Domain checkpoint {c} created from '{file}'\n")
        );
        let out = ok(p, &st(&["checkpoint", "dumpxml", "test", c])).stdout;
        valid(p, &out, CP_RNG);
        assert_eq!(
            normal(p, &out),
            normal(
                p,
                &real(sample(&format!("libvirt-test-checkpoint-{c}.xml")))
            ),
        );
    }
    let list = |args: &[&str]| {
        let mut v = vec!["checkpoint", "list", "test", "--name"];
        v.extend_from_slice(args);
        ok(p, &st(&v)).stdout
    };
    assert_eq!(list(&["--roots"]), "c1\n\n");
    assert_eq!(list(&["--leaves"]), "c2\n\n");
    assert_eq!(list(&["--topological"]), "c1\nc2\n\n");
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "test", "--tree"])).stdout,
        "c1\n  |\n  +- c2\n\n"
    );
    // A checkpoint whose bitmap is in no image is refused, naming both.
    let c3 = real(sample("libvirt-test-checkpoint-c2.xml"))
        .replace("<name>c2</name>", "<name>c3</name>")
        .replace("bitmap='c2'", "bitmap='c3'");
    std::fs::write(p.join("c3.xml"), c3).unwrap();
    strata(
        p,
        &st(&[
            "checkpoint",
            "create",
            "test",
            "--redefine",
            "--xmlfile",
            "c3.xml",
        ]),
    )
    .one_error(1, "no bitmap 'c3'");
    assert_eq!(list(&[]), "c1\nc2\n\n");
}
