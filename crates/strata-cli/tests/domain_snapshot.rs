//! `strata snapshot` on a two-disk domain, judged by QEMU and libvirt:
//! internal snapshots appear in `qemu-img snapshot -l`, external ones make
//! overlays whose backing files are the old images (the domain then points
//! at the overlays), the tree and current snapshot follow libvirt's rules,
//! snapshot XML validates against libvirt's schema, and a failing create
//! changes nothing.

mod common;
use common::*;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domainsnapshot.rng";

#[test]
fn internal_external_and_mixed_snapshots() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    // A full snapshot of a machine that is off: internal on every disk.
    let r = ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "s1",
            "--description",
            "first",
        ]),
    );
    assert_eq!(r.stdout, "Domain snapshot s1 created\n");
    assert_eq!(qemu_names(p, "vda.qcow2"), ["s1"]);
    assert_eq!(qemu_names(p, "vdb.qcow2"), ["s1"]);
    // Disk-only: external, overlays named as libvirt names them.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s2", "--disk-only"]),
    );
    for disk in ["vda", "vdb"] {
        let info = qemu_img(p, &["info", "--output=json", &format!("{disk}.s2")]).json();
        assert!(
            info["backing-filename"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{disk}.qcow2")),
            "{info}"
        );
    }
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(dom.contains("vda.s2") && dom.contains("vdb.s2"), "{dom}");
    // Mixed: internal in vda's overlay, vdb left out.
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "s3",
            "--diskspec",
            "vda,snapshot=internal",
            "--diskspec",
            "vdb,snapshot=no",
        ]),
    );
    assert_eq!(qemu_names(p, "vda.s2"), ["s3"]);
    assert!(qemu_names(p, "vdb.s2").is_empty());
    // The tree, the current snapshot, parents.
    let names = ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout;
    assert_eq!(names, "s1\ns2\ns3\n\n");
    let tree = ok(p, &st(&["snapshot", "list", "vm", "--tree"])).stdout;
    assert_eq!(tree, "s1\n  |\n  +- s2\n      |\n      +- s3\n\n");
    assert_eq!(
        ok(p, &st(&["snapshot", "parent", "vm", "s3"])).stdout,
        "s2\n"
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s3\n"
    );
    let ext = ok(
        p,
        &st(&["--output", "json", "snapshot", "list", "vm", "--external"]),
    )
    .json();
    assert_eq!(ext.as_array().unwrap().len(), 1);
    assert_eq!(ext[0]["name"], "s2");
    let leaves = ok(p, &st(&["snapshot", "list", "vm", "--leaves", "--name"])).stdout;
    assert_eq!(leaves, "s3\n\n");
    let info = ok(p, &st(&["snapshot", "info", "vm", "s1"])).stdout;
    assert!(
        info.contains("Descendants:    2") && info.contains("Current:        no"),
        "{info}"
    );
    // Every snapshot's XML validates against libvirt's schema.
    for s in ["s1", "s2", "s3"] {
        let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", s])).stdout;
        let f = format!("{s}.xml");
        std::fs::write(p.join(&f), &xml).unwrap();
        run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, &f]).expect(0);
    }
    let s2 = std::fs::read_to_string(p.join("s2.xml")).unwrap();
    assert!(s2.contains("<parent><name>s1</name></parent>"), "{s2}");
    assert!(s2.contains("snapshot=\"external\""), "{s2}");
    for f in ["vda.qcow2", "vdb.qcow2", "vda.s2", "vdb.s2"] {
        qemu_img(p, &["check", f]);
    }
}

#[test]
fn a_failing_create_changes_nothing() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    // vdb's overlay name is taken: the whole snapshot is refused.
    std::fs::write(p.join("taken.qcow2"), b"x").unwrap();
    let before_dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    let r = strata(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "s2",
            "--diskspec",
            "vda,snapshot=internal",
            "--diskspec",
            "vdb,file=taken.qcow2",
        ]),
    )
    .expect(1);
    assert!(
        r.stderr.contains("taken.qcow2") && r.stderr.contains("s2"),
        "{}",
        r.stderr
    );
    assert_eq!(qemu_names(p, "vda.qcow2"), ["s1"]);
    assert_eq!(
        ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout,
        "s1\n\n"
    );
    assert_eq!(ok(p, &st(&["domain", "dumpxml", "vm"])).stdout, before_dom);
    for (args, want) in [
        (
            vec!["snapshot", "create", "vm", "--name", "s1"],
            "already exists",
        ),
        (
            vec!["snapshot", "create", "vm", "--live"],
            "running machine",
        ),
        (
            vec!["snapshot", "create", "vm", "--diskspec", "vdz"],
            "'vdz'",
        ),
        (
            vec!["snapshot", "dumpxml", "vm", "nope"],
            "snapshot 'nope' not found",
        ),
        (vec!["snapshot", "list", "nope"], "domain 'nope' not found"),
    ] {
        let r = strata(p, &st(&args));
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn revert_internal_and_external_keeps_every_snapshot() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    qemu_img(p, &["convert", "-O", "raw", "vda.qcow2", "at-s1.raw"]);
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 7 0 2M"]);
    // Internal: the snapshot is applied; s1 becomes current.
    let r = ok(p, &st(&["snapshot", "revert", "vm", "s1"]));
    assert_eq!(r.stdout, "Domain 'vm' reverted to snapshot s1\n");
    qemu_img(p, &["compare", "vda.qcow2", "at-s1.raw"]);
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s1\n"
    );
    // External: a fresh overlay over the snapshot's image, which stays as
    // it was; the state being left (vda.s2 with its writes, in no
    // snapshot) is discarded, as any revert discards it.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s2", "--disk-only"]),
    );
    qemu_io(p, "qcow2", "vda.s2", &["write -P 8 4M 1M"]);
    let base = std::fs::read(p.join("vda.qcow2")).unwrap();
    let r = ok(
        p,
        &st(&["--output", "json", "snapshot", "revert", "vm", "s2"]),
    )
    .json();
    assert_eq!(r["new_overlays"].as_array().unwrap().len(), 2);
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(
        dom.contains("vda.s2.1") && dom.contains("vdb.s2.1"),
        "{dom}"
    );
    qemu_img(p, &["compare", "vda.s2.1", "at-s1.raw"]);
    assert_eq!(std::fs::read(p.join("vda.qcow2")).unwrap(), base);
    assert!(!p.join("vda.s2").exists() && !p.join("vdb.s2").exists());
    for f in ["vda.qcow2", "vdb.qcow2", "vda.s2.1", "vdb.s2.1"] {
        qemu_img(p, &["check", f]);
    }
    // s1 lives inside vda.qcow2, now the backing file of an overlay:
    // applying it would change them, so the revert is refused, changing nothing.
    let r = strata(p, &st(&["snapshot", "revert", "vm", "s1"])).expect(1);
    assert!(
        r.stderr.contains("backing file") && r.stderr.contains("vda"),
        "{}",
        r.stderr
    );
    assert_eq!(ok(p, &st(&["domain", "dumpxml", "vm"])).stdout, dom);
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s2\n"
    );
    let r = strata(p, &st(&["snapshot", "revert", "vm", "s2", "--running"])).expect(1);
    assert!(r.stderr.contains("hypervisor"), "{}", r.stderr);
}

#[test]
fn delete_reparents_and_moves_current() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    for s in ["s1", "s2", "s3"] {
        ok(p, &st(&["snapshot", "create", "vm", "--name", s]));
        qemu_io(
            p,
            "qcow2",
            "vda.qcow2",
            &[&format!("write -P 9 {s_off} 64k", s_off = s.len() << 20)],
        );
    }
    qemu_img(p, &["convert", "-O", "raw", "vda.qcow2", "now.raw"]);
    // Deleting the middle one: gone from the images, s3 re-parented to s1,
    // and the current state untouched.
    assert_eq!(
        ok(p, &st(&["snapshot", "delete", "vm", "s2"])).stdout,
        "Domain snapshot s2 deleted\n"
    );
    assert_eq!(qemu_names(p, "vda.qcow2"), ["s1", "s3"]);
    assert_eq!(qemu_names(p, "vdb.qcow2"), ["s1", "s3"]);
    assert_eq!(
        ok(p, &st(&["snapshot", "parent", "vm", "s3"])).stdout,
        "s1\n"
    );
    qemu_img(p, &["compare", "vda.qcow2", "now.raw"]);
    // Deleting the current one makes its parent current.
    ok(p, &st(&["snapshot", "delete", "vm", "--current"]));
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s1\n"
    );
    // An external snapshot deleted with its disks: the overlay (with the
    // writes made since) is merged back into the image below and goes;
    // the domain points at that image again.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "e1", "--disk-only"]),
    );
    qemu_io(p, "qcow2", "vda.e1", &["write -P 5 6M 64k"]);
    qemu_img(p, &["convert", "-O", "raw", "vda.e1", "now.raw"]);
    ok(p, &st(&["snapshot", "delete", "vm", "e1"]));
    assert!(!p.join("vda.e1").exists() && !p.join("vdb.e1").exists());
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(dom.contains("vda.qcow2") && !dom.contains(".e1"), "{dom}");
    qemu_img(p, &["compare", "vda.qcow2", "now.raw"]);
    assert_eq!(qemu_names(p, "vda.qcow2"), ["s1"]);
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s1
"
    );
    // With --metadata the files stay as they are.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "e2", "--disk-only"]),
    );
    ok(p, &st(&["snapshot", "delete", "vm", "e2", "--metadata"]));
    assert!(p.join("vda.e2").exists());
    assert_eq!(
        ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout,
        "s1

"
    );
    // --children-only --metadata on s1 with no children left: nothing to drop.
    ok(
        p,
        &st(&[
            "snapshot",
            "delete",
            "vm",
            "s1",
            "--children-only",
            "--metadata",
        ]),
    );
    assert_eq!(qemu_names(p, "vda.qcow2"), ["s1"]);
    for f in ["vda.qcow2", "vdb.qcow2", "vda.e2", "vdb.e2"] {
        qemu_img(p, &["check", f]);
    }
}

#[test]
fn reuse_external_uses_the_given_overlay_and_never_deletes_it() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let dir = p.display();
    // The user's own overlays, made beforehand over the disks' images.
    for (base, mine) in [("vda.qcow2", "mine.qcow2"), ("vdb.qcow2", "vdb.mine")] {
        qemu_img(
            p,
            &[
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, mine,
            ],
        );
    }
    // Without --reuse-external an existing file is refused.
    let spec = format!("vda,file={dir}/mine.qcow2");
    strata(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "e1",
            "--disk-only",
            "--diskspec",
            &spec,
        ]),
    )
    .one_error(1, "mine.qcow2");
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "e1",
            "--disk-only",
            "--diskspec",
            &spec,
            "--diskspec",
            "vdb,file=vdb.mine",
            "--reuse-external",
        ]),
    );
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(dom.contains("mine.qcow2"), "{dom}");
    qemu_io(p, "qcow2", "mine.qcow2", &["write -P 6 0 64k"]);
    // Deleting the snapshot does not merge away (and delete) a file strata
    // did not make: the disk stays on it, reading the same.
    ok(p, &st(&["snapshot", "delete", "vm", "e1"]));
    assert!(p.join("mine.qcow2").exists());
    qemu_io(
        p,
        "qcow2",
        "mine.qcow2",
        &["read -P 6 0 64k", "read -P 1 64k 64k"],
    );
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(dom.contains("mine.qcow2"), "{dom}");
    assert!(
        p.join("vdb.mine").exists() && dom.contains("vdb.mine"),
        "{dom}"
    );
    for f in ["mine.qcow2", "vdb.mine", "vda.qcow2", "vdb.qcow2"] {
        assert_clean(p, f);
    }
}
