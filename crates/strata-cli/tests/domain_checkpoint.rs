//! `strata checkpoint`: bitmaps per disk made in one transaction, the
//! previous checkpoint's disabled (as qemu-img info shows), `dumpxml --size`
//! giving the bytes changed since a checkpoint, also across an external
//! snapshot, and XML that validates against libvirt's schema.

mod common;
use common::*;
use std::path::Path;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domaincheckpoint.rng";

/// `(name, flags)` of the bitmaps of `file`, by qemu-img info.
fn bitmaps(p: &Path, file: &str) -> Vec<(String, String)> {
    let info = qemu_img(p, &["info", "-U", "--output=json", file]).json();
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap().to_string(),
                        b["flags"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `size` attribute of disk `disk` in `dumpxml --size` output.
fn size_of(xml: &str, disk: &str) -> u64 {
    let at = xml.find(&format!("name=\"{disk}\"")).unwrap();
    let rest = &xml[at..];
    let s = &rest[rest.find("size=\"").unwrap() + 6..];
    s[..s.find('"').unwrap()].parse().unwrap()
}

#[test]
fn checkpoints_track_changes_across_an_external_snapshot() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let r = ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));
    assert_eq!(r.stdout, "Domain checkpoint c1 created\n");
    let auto = "[\"auto\"]".to_string();
    assert_eq!(bitmaps(p, "vda.qcow2"), [("c1".to_string(), auto.clone())]);
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 3 1M 64k"]);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c2"]));
    assert_eq!(
        bitmaps(p, "vda.qcow2"),
        [
            ("c1".to_string(), "[]".to_string()),
            ("c2".to_string(), auto.clone())
        ]
    );
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 4 3M 64k"]);
    let c1 = ok(p, &st(&["checkpoint", "dumpxml", "vm", "c1", "--size"])).stdout;
    assert_eq!(size_of(&c1, "vda"), 128 << 10, "{c1}");
    assert_eq!(size_of(&c1, "vdb"), 0, "{c1}");
    // An external snapshot: the overlays take over tracking.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s1", "--disk-only"]),
    );
    assert_eq!(bitmaps(p, "vda.s1"), [("c2".to_string(), auto)]);
    qemu_io(p, "qcow2", "vda.s1", &["write -P 5 5M 64k"]);
    qemu_io(p, "qcow2", "vdb.s1", &["write -P 5 0 4k"]);
    let c1 = ok(p, &st(&["checkpoint", "dumpxml", "vm", "c1", "--size"])).stdout;
    assert_eq!(size_of(&c1, "vda"), 192 << 10, "{c1}");
    assert_eq!(size_of(&c1, "vdb"), 64 << 10, "{c1}");
    let c2 = ok(p, &st(&["checkpoint", "dumpxml", "vm", "c2", "--size"])).stdout;
    assert_eq!(size_of(&c2, "vda"), 128 << 10, "{c2}");
    for (f, xml) in [("c1.xml", &c1), ("c2.xml", &c2)] {
        std::fs::write(p.join(f), xml).unwrap();
        run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, f]).expect(0);
    }
    assert!(c2.contains("<parent><name>c1</name></parent>"), "{c2}");
    assert_eq!(
        ok(p, &st(&["checkpoint", "parent", "vm", "c2"])).stdout,
        "c1\n"
    );
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "c1\nc2\n\n"
    );
    for f in ["vda.qcow2", "vdb.qcow2", "vda.s1", "vdb.s1"] {
        qemu_img(p, &["check", f]);
    }
    for (args, want) in [
        (
            vec!["checkpoint", "create", "vm", "--name", "c1"],
            "already exists",
        ),
        (
            vec!["checkpoint", "create", "vm", "--name", ".bad"],
            "checkpoint name",
        ),
        (
            vec!["checkpoint", "dumpxml", "vm", "nope"],
            "'nope' not found",
        ),
    ] {
        let r = strata(p, &st(&args)).expect(1);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn deleting_a_checkpoint_folds_it_into_its_parent() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 3 1M 64k"]);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c2"]));
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 4 3M 64k"]);
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s1", "--disk-only"]),
    );
    qemu_io(p, "qcow2", "vda.s1", &["write -P 5 5M 64k"]);
    let size = |c: &str| {
        let xml = ok(p, &st(&["checkpoint", "dumpxml", "vm", c, "--size"])).stdout;
        size_of(&xml, "vda")
    };
    assert_eq!(size("c1"), 192 << 10);
    let r = ok(p, &st(&["checkpoint", "delete", "vm", "c2"]));
    assert_eq!(r.stdout, "Domain checkpoint c2 deleted\n");
    // c2's bits live on in c1, in every layer; c1 tracks in the top now.
    assert_eq!(size("c1"), 192 << 10);
    assert_eq!(
        bitmaps(p, "vda.qcow2"),
        [("c1".to_string(), "[]".to_string())]
    );
    assert_eq!(
        bitmaps(p, "vda.s1"),
        [("c1".to_string(), "[\"auto\"]".to_string())]
    );
    qemu_io(p, "qcow2", "vda.s1", &["write -P 6 6M 64k"]);
    assert_eq!(size("c1"), 256 << 10);
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "c1\n\n"
    );
    // A new checkpoint after the delete has c1 as parent; deleting c1 with
    // its children removes every bitmap.
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c3"]));
    assert_eq!(
        ok(p, &st(&["checkpoint", "parent", "vm", "c3"])).stdout,
        "c1\n"
    );
    ok(p, &st(&["checkpoint", "delete", "vm", "c1", "--children"]));
    for f in ["vda.qcow2", "vdb.qcow2", "vda.s1", "vdb.s1"] {
        assert!(bitmaps(p, f).is_empty(), "{f}: {:?}", bitmaps(p, f));
        qemu_img(p, &["check", f]);
    }
}
