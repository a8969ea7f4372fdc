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
    // s1 lives inside vda.qcow2, which s2 keeps as it was (and the current
    // overlays are built on): applying s1 would change it, so the revert is
    // refused, naming why, changing nothing.
    let r = strata(p, &st(&["snapshot", "revert", "vm", "s1"]));
    let line = r.one_error(
        1,
        "vda.qcow2 is the image kept as it was for external snapshot 's2' (disk 'vda')",
    );
    assert!(
        line.contains("snapshot 's1'") && line.contains("disk 'vda'"),
        "{line}"
    );
    assert_eq!(ok(p, &st(&["domain", "dumpxml", "vm"])).stdout, dom);
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s2\n"
    );
    let r = strata(
        p,
        &st(&["snapshot", "revert", "vm", "s2", "--running", "--paused"]),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("exclude each other"), "{}", r.stderr);
    assert_eq!(ok(p, &st(&["domain", "dumpxml", "vm"])).stdout, dom);
}

/// Everything a refused revert must leave as it was: every image file's
/// bytes and the domain's metadata as strata shows it.
fn everything(p: &std::path::Path) -> (Vec<(String, Vec<u8>)>, String) {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .map(|n| {
            let bytes = std::fs::read(p.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    files.sort();
    let mut meta = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    meta += &ok(p, &st(&["snapshot", "list", "vm", "--tree"])).stdout;
    meta += &ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout;
    for s in ok(p, &st(&["snapshot", "list", "vm", "--name"]))
        .stdout
        .lines()
    {
        if !s.is_empty() {
            meta += &ok(p, &st(&["snapshot", "dumpxml", "vm", s])).stdout;
        }
    }
    (files, meta)
}

/// The domain's disk sources, as `domain dumpxml` shows them (file names).
fn sources(p: &std::path::Path) -> Vec<String> {
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    dom.split("<source file='")
        .skip(1)
        .chain(dom.split("<source file=\"").skip(1))
        .filter_map(|t| t.split(['\'', '"']).next())
        .map(|f| f.rsplit('/').next().unwrap_or(f).to_string())
        .collect()
}

#[test]
fn revert_to_an_internal_snapshot_in_an_image_no_longer_active() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--disk-only", "--name", "s1"]),
    );
    assert_eq!(sources(p), ["vda.s1", "vdb.s1"]);
    qemu_io(p, "qcow2", "vda.s1", &["write -P 17 1M 1M"]);
    qemu_io(p, "qcow2", "vdb.s1", &["write -P 33 1M 1M"]);
    // Internal, inside the overlays.
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s2"]));
    assert_eq!(qemu_names(p, "vda.s1"), ["s2"]);
    assert_eq!(qemu_names(p, "vdb.s1"), ["s2"]);
    let vda_base = std::fs::read(p.join("vda.qcow2")).unwrap();
    let vdb_base = std::fs::read(p.join("vdb.qcow2")).unwrap();
    // What each disk reads at s2 and at s1.
    let at = |name: &str, base: u8, s2: Option<u8>| {
        let two = vec![s2.unwrap_or(0); 1 << 20];
        reference(p, name, 8 << 20, &[(0, &[base; 1 << 20]), (1 << 20, &two)])
    };
    at("vda-s2.raw", 1, Some(17));
    at("vdb-s2.raw", 2, Some(33));
    at("vda-s1.raw", 1, None);
    at("vdb-s1.raw", 2, None);
    let check_all = |files: &[&str]| {
        for f in files {
            assert_clean(p, f);
        }
    };
    // The image holding s2 is active: applied in place.
    ok(p, &st(&["snapshot", "revert", "vm", "s2"]));
    assert_eq!(sources(p), ["vda.s1", "vdb.s1"]);
    assert_same(p, "vda.s1", "vda-s2.raw");
    assert_same(p, "vdb.s1", "vdb-s2.raw");
    // Writes after s2, then back to s1: fresh overlays over the base
    // images; vda.s1 stays (it holds s2), written state and all.
    qemu_io(p, "qcow2", "vda.s1", &["write -P 18 2M 1M"]);
    qemu_io(p, "qcow2", "vdb.s1", &["write -P 34 2M 1M"]);
    ok(p, &st(&["snapshot", "revert", "vm", "s1"]));
    assert_eq!(sources(p), ["vda.s1.1", "vdb.s1.1"]);
    assert_same(p, "vda.s1.1", "vda-s1.raw");
    assert_same(p, "vdb.s1.1", "vdb-s1.raw");
    qemu_io(p, "qcow2", "vda.s1", &["read -P 18 2M 1M"]);
    check_all(&[
        "vda.qcow2",
        "vdb.qcow2",
        "vda.s1",
        "vdb.s1",
        "vda.s1.1",
        "vdb.s1.1",
    ]);
    // Written on the s1 branch, then back to s2: nothing needs vda.s1's
    // current state (the revert to s1 discarded it), so s2 is applied
    // there and the disks point at vda.s1 / vdb.s1 again; the abandoned
    // overlays go, the base images stay as s1 needs them.
    qemu_io(p, "qcow2", "vda.s1.1", &["write -P 19 3M 1M"]);
    let r = ok(
        p,
        &st(&["--output", "json", "snapshot", "revert", "vm", "s2"]),
    )
    .json();
    assert_eq!(r["new_overlays"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(sources(p), ["vda.s1", "vdb.s1"]);
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s2\n"
    );
    assert_same(p, "vda.s1", "vda-s2.raw");
    assert_same(p, "vdb.s1", "vdb-s2.raw");
    qemu_io(
        p,
        "qcow2",
        "vda.s1",
        &["read -P 17 1M 1M", "read -P 0 2M 2M"],
    );
    assert!(!p.join("vda.s1.1").exists() && !p.join("vdb.s1.1").exists());
    assert_eq!(std::fs::read(p.join("vda.qcow2")).unwrap(), vda_base);
    assert_eq!(std::fs::read(p.join("vdb.qcow2")).unwrap(), vdb_base);
    assert_eq!(qemu_names(p, "vda.s1"), ["s2"]);
    check_all(&["vda.qcow2", "vdb.qcow2", "vda.s1", "vdb.s1"]);
    // Both snapshots still revert as they should.
    ok(p, &st(&["snapshot", "revert", "vm", "s1"]));
    assert_same(p, "vda.s1.1", "vda-s1.raw");
    ok(p, &st(&["snapshot", "revert", "vm", "s2"]));
    assert_same(p, "vdb.s1", "vdb-s2.raw");
    assert!(!p.join("vda.s1.1").exists());
}

#[test]
fn revert_is_refused_while_a_needed_image_depends_on_the_snapshots_image() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--disk-only", "--name", "s1"]),
    );
    qemu_io(p, "qcow2", "vda.s1", &["write -P 17 1M 1M"]);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s2"]));
    // s3 keeps vda.s1 read-only under new overlays; s4 lives in them.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--disk-only", "--name", "s3"]),
    );
    qemu_io(p, "qcow2", "vda.s3", &["write -P 18 2M 1M"]);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s4"]));
    let dir = std::fs::canonicalize(p).unwrap();
    let vda_s1 = dir.join("vda.s1").display().to_string();
    let vda_s3 = dir.join("vda.s3").display().to_string();
    // s3 needs vda.s1 as it is.
    let before = everything(p);
    let line = strata(p, &st(&["snapshot", "revert", "vm", "s2"])).one_error(
        1,
        &format!("{vda_s1} is the image kept as it was for external snapshot 's3' (disk 'vda')"),
    );
    assert!(
        line.contains("domain 'vm'")
            && line.contains("snapshot 's2'")
            && line.contains("disk 'vda'"),
        "{line}"
    );
    assert!(
        everything(p) == before,
        "a refused revert changed something"
    );
    // Without s3 (its overlay holds s4, so it is not merged away), vda.s1
    // is still the backing file of vda.s3, where s4 lives.
    ok(p, &st(&["snapshot", "delete", "vm", "s3"]));
    assert!(p.join("vda.s3").exists());
    assert_eq!(
        run_in(p, "qemu-img", &["info", "--output=json", "vda.s3"]).json()["backing-filename"]
            .as_str()
            .map(|b| b.ends_with("vda.s1")),
        Some(true)
    );
    let before = everything(p);
    let line = strata(p, &st(&["snapshot", "revert", "vm", "s2"])).one_error(
        1,
        &format!(
            "{vda_s1} is the backing file of {vda_s3}, which snapshot 's4' (disk 'vda') needs"
        ),
    );
    assert!(line.contains("snapshot 's2'"), "{line}");
    assert!(
        everything(p) == before,
        "a refused revert changed something"
    );
    for f in [
        "vda.qcow2",
        "vdb.qcow2",
        "vda.s1",
        "vdb.s1",
        "vda.s3",
        "vdb.s3",
    ] {
        assert_clean(p, f);
    }
    // Once s4 goes, nothing needs vda.s3 but the current disk, whose state
    // a revert discards: s2 is applied and the overlays strata made go.
    ok(p, &st(&["snapshot", "delete", "vm", "s4"]));
    ok(p, &st(&["snapshot", "revert", "vm", "s2"]));
    assert_eq!(sources(p), ["vda.s1", "vdb.s1"]);
    assert!(!p.join("vda.s3").exists() && !p.join("vdb.s3").exists());
    qemu_io(
        p,
        "qcow2",
        "vda.s1",
        &["read -P 1 0 1M", "read -P 17 1M 1M", "read -P 0 2M 6M"],
    );
    for f in ["vda.qcow2", "vdb.qcow2", "vda.s1", "vdb.s1"] {
        assert_clean(p, f);
    }
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
