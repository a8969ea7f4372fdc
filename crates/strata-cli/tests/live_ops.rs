//! Snapshot delete and revert of a running domain, as libvirt has them:
//! an internal snapshot of the images the guest writes to is deleted live
//! (qemu-img no longer lists it, the guest writes on without an error);
//! deleting an external snapshot (a merge) or an internal one below the
//! served image is refused with a clear message and changes nothing; a
//! revert is refused without `--force` (the guest would be stopped), and
//! with it the domain is stopped, reverted, and started again with
//! `--running`.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// The internal snapshots qemu-img lists in `file`.
fn internal(p: &Path, file: &str) -> Vec<String> {
    qemu_img(p, &["snapshot", "-U", "-l", file])
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// The snapshot names `snapshot list` shows.
fn listed(p: &Path) -> String {
    ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout
}

/// Waits for `n` more records than now.
fn writes_on(p: &Path, n: u64) {
    let seen = acked(p);
    wait_until(Duration::from_secs(60), "the guest writes on", || {
        acked(p) >= seen + n
    });
}

fn snapshot(p: &Path, name: &str, mode: &str) {
    let a = format!("vda,snapshot={mode}");
    let b = format!("vdb,snapshot={mode}");
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            name,
            "--disk-only",
            "--diskspec",
            &a,
            "--diskspec",
            &b,
        ]),
    );
}

#[test]
fn running_domains_delete_internal_snapshots_live_and_revert_only_with_force() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    define_records_guest(p, kit, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    writes_on(p, 10);
    // i0 in a.qcow2, then e1 puts a.e1 on top, where i2 and i3 go.
    snapshot(p, "i0", "internal");
    writes_on(p, 3);
    snapshot(p, "e1", "external");
    writes_on(p, 3);
    snapshot(p, "i2", "internal");
    writes_on(p, 3);
    snapshot(p, "i3", "internal");
    assert_eq!(internal(p, "a.e1"), ["i2", "i3"]);

    // The internal snapshot of the served image goes, live.
    let gone = ok(
        p,
        &st(&["--output", "json", "snapshot", "delete", "vm", "i2"]),
    )
    .json();
    assert_eq!(gone["deleted"], serde_json::json!(["i2"]), "{gone}");
    assert!(gone["stall-ms"].as_f64().is_some(), "{gone}");
    assert_eq!(internal(p, "a.e1"), ["i3"]);
    assert_eq!(internal(p, "b.e1"), ["i3"]);
    assert_eq!(listed(p), "i0\ne1\ni3\n\n");
    writes_on(p, 5);

    // A merge, and an internal snapshot below the served image: refused,
    // nothing changed.
    let r = strata(p, &st(&["snapshot", "delete", "vm", "e1"]));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("disk 'vda'") && r.stderr.contains("merging images"),
        "{}",
        r.stderr
    );
    let r = strata(p, &st(&["snapshot", "delete", "vm", "i0"]));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("a.qcow2") && r.stderr.contains("below the image"),
        "{}",
        r.stderr
    );
    // --children of i0 would take e1 too: refused before anything goes.
    let r = strata(p, &st(&["snapshot", "delete", "vm", "i0", "--children"]));
    assert_ne!(r.code, 0);
    assert_eq!(listed(p), "i0\ne1\ni3\n\n");
    assert_eq!(internal(p, "a.qcow2"), ["i0"]);
    assert_eq!(internal(p, "a.e1"), ["i3"]);

    // Revert without --force: refused, the guest untouched.
    let r = strata(p, &st(&["snapshot", "revert", "vm", "i3"]));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(domstate(p, "vm"), "running (booted)");
    writes_on(p, 5);
    let i3 = |f: &str| prefix(&read_raw(p, f, Some("i3")), "i3");
    let (i3a, i3b) = (i3("a.e1"), i3("b.e1"));
    assert!(i3b == i3a || i3b + 1 == i3a, "i3: {i3a} and {i3b} records");

    // With --force: stopped and reverted; the disk is i3 again.
    ok(p, &st(&["snapshot", "revert", "vm", "i3", "--force"]));
    assert_eq!(domstate(p, "vm"), "shut off (destroyed)");
    assert_eq!(prefix(&read_raw(p, "a.e1", None), "after revert"), i3a);
    assert_eq!(prefix(&read_raw(p, "b.e1", None), "after revert"), i3b);
    assert!(acked(p) > i3a, "the guest wrote after i3");
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(!console.contains("WRITE-FAILED"), "{console}");

    // --running starts it again, from a shut-off domain as from a running one.
    ok(p, &st(&["snapshot", "revert", "vm", "i3", "--running"]));
    assert_eq!(domstate(p, "vm"), "running (booted)");
    writes_on(p, 3);
    ok(
        p,
        &st(&["snapshot", "revert", "vm", "i3", "--force", "--running"]),
    );
    assert_eq!(domstate(p, "vm"), "running (booted)");
    ok(p, &st(&["domain", "destroy", "vm"]));
    for f in ["a.qcow2", "a.e1", "b.qcow2", "b.e1"] {
        assert_clean(p, f);
    }
}
