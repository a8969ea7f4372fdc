//! Incremental chains that never silently break: `checkpoint verify` and
//! `checkpoint dumpxml --size` find a damaged checkpoint bitmap and name
//! the disk, the bitmap and why; `backup begin` refuses an incremental
//! backup that would miss changes, before it makes anything, and with
//! `--fallback-full` backs that disk up in full instead, says so (warning,
//! job status, exit status 3) and leaves a new checkpoint that is sound.
//! The damage is made by real peers: QEMU killed while it had the image
//! open (its bitmaps left "in use"), `qemu-img bitmap --disable` and
//! `--remove`, and an overlay made by qemu-img without the bitmaps.

mod common;
use common::*;
use std::path::Path;

/// `checkpoint verify vm` as JSON, with its exit status.
fn verify(p: &Path) -> (i32, serde_json::Value) {
    let r = strata(p, &st(&["--output", "json", "checkpoint", "verify", "vm"]));
    let v = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
    (r.code, v)
}

/// The problem `verify` found on `disk` of checkpoint `cp` (`None`: sound).
fn problem(v: &serde_json::Value, cp: &str, disk: &str) -> Option<String> {
    let e = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["checkpoint"] == cp && e["disk"] == disk)
        .unwrap_or_else(|| panic!("no {cp}/{disk} in {v}"));
    e["problem"].as_str().map(str::to_string)
}

/// A push backup of vda and vdb into `NAME.TAG` (incremental since `since`).
fn push_xml(p: &Path, tag: &str, since: &str) -> String {
    let dir = p.display();
    format!(
        "<domainbackup mode='push'><incremental>{since}</incremental><disks>\
         <disk name='vda' type='file'><target file='{dir}/vda.{tag}'/><driver type='qcow2'/></disk>\
         <disk name='vdb' type='file'><target file='{dir}/vdb.{tag}'/><driver type='qcow2'/></disk>\
         </disks></domainbackup>"
    )
}

/// Two checkpoints with writes after each, all sound.
fn two_checkpoints(p: &Path) {
    setup_vm(p);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 7 2M 64k"]);
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 7 3M 128k"]);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c2"]));
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 8 5M 64k"]);
    let (code, v) = verify(p);
    assert_eq!(code, 0, "{v}");
    for e in v.as_array().unwrap() {
        assert!(e["problem"].is_null(), "{v}");
    }
    let changed = |cp: &str, disk: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["checkpoint"] == cp && e["disk"] == disk)
            .map(|e| e["changed"].as_u64().unwrap())
    };
    assert_eq!(changed("c1", "vda"), Some(64 << 10));
    assert_eq!(changed("c1", "vdb"), Some(192 << 10));
    assert_eq!(changed("c2", "vdb"), Some(64 << 10));
}

#[test]
fn a_bitmap_left_in_use_by_a_crash_is_found_and_falls_back_to_full() {
    let d = tmp();
    let p = d.path();
    two_checkpoints(p);
    // QEMU opens vdb, writes, and dies: its bitmaps stay "in use", and
    // the write is in no bitmap that can be trusted.
    let r = run_in(
        p,
        "qemu-io",
        &["-c", "write -P 9 6M 64k", "-c", "sigraise 9", "vdb.qcow2"],
    );
    assert_ne!(r.code, 0, "qemu-io was to die: {}", r.stderr);
    let (code, v) = verify(p);
    assert_eq!(code, 1, "{v}");
    for cp in ["c1", "c2"] {
        assert_eq!(problem(&v, cp, "vda"), None, "{v}");
        let why = problem(&v, cp, "vdb").unwrap();
        assert!(
            why.contains("vdb.qcow2") && why.contains("inconsistent"),
            "{why}"
        );
    }
    assert!(problem(&v, "c1", "vdb").unwrap().contains("'c1'"), "{v}");
    // The text form says the same, and exits 1.
    let r = strata(p, &st(&["checkpoint", "verify", "vm", "c2"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("broken:") && r.stdout.contains("vdb"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("--fallback-full"), "{}", r.stderr);
    // dumpxml --size gives vda's size, none for vdb, and says why.
    let r = strata(
        p,
        &st(&["checkpoint", "dumpxml", "vm", "c1", "--size", "--no-domain"]),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("name=\"vda\" checkpoint=\"bitmap\" bitmap=\"c1\" size="),
        "{}",
        r.stdout
    );
    let vdb = &r.stdout[r.stdout.find("name=\"vdb\"").unwrap()..];
    assert!(
        !vdb[..vdb.find("/>").unwrap()].contains("size="),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("disk 'vdb'") && r.stderr.contains("inconsistent"),
        "{}",
        r.stderr
    );
    // The incremental backup is refused before anything is made.
    std::fs::write(p.join("b.xml"), push_xml(p, "b1", "c1")).unwrap();
    std::fs::write(
        p.join("c3.xml"),
        "<domaincheckpoint><name>c3</name></domaincheckpoint>",
    )
    .unwrap();
    let begin = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "begin",
            "vm",
            "--backupxml",
            "b.xml",
            "--checkpointxml",
            "c3.xml",
        ];
        args.extend_from_slice(extra);
        strata(p, &st(&args))
    };
    let r = begin(&[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for part in ["disk 'vdb'", "'c1'", "inconsistent", "--fallback-full"] {
        assert!(r.stderr.contains(part), "{part}: {}", r.stderr);
    }
    assert!(!p.join("vda.b1").exists() && !p.join("vdb.b1").exists());
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "c1\nc2\n\n"
    );
    // With --fallback-full: vdb in full, vda incremental, exit status 3.
    let r = begin(&["--fallback-full"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: disk 'vdb': full backup instead"),
        "{}",
        r.stderr
    );
    let job = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
    assert_eq!(job["state"], "completed", "{job}");
    let fallback = job["fallback"].as_array().unwrap();
    assert_eq!(fallback.len(), 1, "{job}");
    assert!(
        fallback[0].as_str().unwrap().contains("disk 'vdb'"),
        "{job}"
    );
    let status = ok(p, &st(&["backup", "status", "vm"])).stdout;
    assert!(status.contains("Fallback:"), "{status}");
    let xml = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    assert!(
        xml.contains("name=\"vdb\" backup=\"yes\" backupmode=\"full\""),
        "{xml}"
    );
    assert!(
        xml.contains("name=\"vda\" backup=\"yes\" backupmode=\"incremental\""),
        "{xml}"
    );
    // The full copy is the disk; the incremental holds only vda's change.
    assert_same(p, "vdb.qcow2", "vdb.b1");
    let map = qemu_img(p, &["map", "--output=json", "vda.b1"]).json();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, 64 << 10, "{map}");
    // The new checkpoint is sound on both disks: the next incremental
    // needs no fallback.
    let (_, v) = verify(p);
    assert_eq!(problem(&v, "c3", "vda"), None, "{v}");
    assert_eq!(problem(&v, "c3", "vdb"), None, "{v}");
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 10 7M 64k"]);
    std::fs::write(p.join("b.xml"), push_xml(p, "b2", "c3")).unwrap();
    ok(p, &st(&["backup", "begin", "vm", "--backupxml", "b.xml"]));
    qemu_img(
        p,
        &["rebase", "-u", "-F", "qcow2", "-b", "vdb.b1", "vdb.b2"],
    );
    assert_same(p, "vdb.qcow2", "vdb.b2");
    assert_clean(p, "vdb.qcow2");
}

#[test]
fn disabled_removed_and_untracked_layers_break_the_chain_visibly() {
    let d = tmp();
    let p = d.path();
    two_checkpoints(p);
    // The newest bitmap disabled: writes after it go untracked.
    qemu_img(p, &["bitmap", "--disable", "vda.qcow2", "c2"]);
    let (code, v) = verify(p);
    assert_eq!(code, 1, "{v}");
    let why = problem(&v, "c2", "vda").unwrap();
    assert!(why.contains("'c2'") && why.contains("disabled"), "{why}");
    assert_eq!(problem(&v, "c2", "vdb"), None, "{v}");
    qemu_img(p, &["bitmap", "--enable", "vda.qcow2", "c2"]);
    assert_eq!(verify(p).0, 0);
    // An older bitmap removed: c1 cannot be told, c2 still can.
    qemu_img(p, &["bitmap", "--remove", "vdb.qcow2", "c1"]);
    let (code, v) = verify(p);
    assert_eq!(code, 1, "{v}");
    let why = problem(&v, "c1", "vdb").unwrap();
    assert!(why.contains("'c1'") && why.contains("not found"), "{why}");
    assert_eq!(problem(&v, "c2", "vdb"), None, "{v}");
    assert_eq!(problem(&v, "c1", "vda"), None, "{v}");
    // An overlay made by qemu-img (no bitmaps) that the domain now uses:
    // its writes are tracked nowhere.
    qemu_img(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "vda.qcow2",
            "-F",
            "qcow2",
            "vda.top",
        ],
    );
    let xml = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    std::fs::write(p.join("vm.xml"), xml.replace("vda.qcow2", "vda.top")).unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    let (code, v) = verify(p);
    assert_eq!(code, 1, "{v}");
    let why = problem(&v, "c2", "vda").unwrap();
    assert!(
        why.contains("vda.top") && why.contains("not tracked"),
        "{why}"
    );
}
