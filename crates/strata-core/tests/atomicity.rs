//! Failure atomicity of machine operations: a fault injected at each disk's
//! prepare and commit, in turn, during snapshot create, revert and delete
//! and checkpoint create, leaves every disk (as qemu-img sees it: info,
//! map, snapshots, bitmaps, a check without leaks) and the metadata exactly
//! as before, and no new file behind. A checkpoint create killed after any
//! disk's part committed is undone by the next checkpoint operation, no
//! write since the previous checkpoint lost.

mod common;

use std::path::Path;
use std::process::Command;

use strata_core::checkpoint::{self, CheckpointRequest};
use strata_core::snapshot::create::{self as snapshot_create, CreateRequest, DiskSpec};
use strata_core::snapshot::DiskMode;
use strata_core::snapshot::{delete as snapshot_delete, revert as snapshot_revert};
use strata_core::{faults, Domain, Store};
use strata_image::transaction::{Fault, Phase};

fn qemu(args: &[&str]) -> String {
    String::from_utf8_lossy(&common::qemu_img(args)).into_owned()
}

/// A domain `vm` with disks vda and vdb holding data, in `dir`.
fn setup(dir: &Path) -> Store {
    let mut xml = String::from("<domain><name>vm</name><devices>");
    for (disk, byte) in [("vda", 1), ("vdb", 2)] {
        let p = dir.join(format!("{disk}.qcow2"));
        let p = p.to_str().unwrap();
        qemu(&["create", "-q", "-f", "qcow2", p, "4M"]);
        let cmd = format!("write -P {byte} 0 1M");
        let out = Command::new("qemu-io")
            .args(["-c", &cmd, p])
            .output()
            .unwrap();
        assert!(out.status.success());
        xml.push_str(&format!(
            "<disk type='file' device='disk'><driver type='qcow2'/><source file='{p}'/><target dev='{disk}'/></disk>"
        ));
    }
    xml.push_str("</devices></domain>");
    let mut store = Store::open(&dir.join("state")).unwrap();
    store
        .define(&Domain::from_xml(&xml, "vm.xml").unwrap())
        .unwrap();
    store
}

/// Everything observable about the domain: metadata and every image.
fn state(dir: &Path, store: &Store) -> String {
    let mut s = store.domain("vm").unwrap().to_xml(true);
    for r in store.snapshots("vm").unwrap() {
        s.push_str(&format!(
            "{} {:?} {} {}\n",
            r.name, r.parent, r.current, r.xml
        ));
    }
    for c in store.checkpoints("vm").unwrap() {
        s.push_str(&format!("{c:?}\n"));
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let p = f.to_str().unwrap();
        let mut info: serde_json::Value =
            serde_json::from_str(&qemu(&["info", "-U", "--output=json", p])).unwrap();
        let o = info.as_object_mut().unwrap();
        o.remove("actual-size");
        o.remove("children");
        s.push_str(&format!(
            "{p}\n{info}\n{}",
            qemu(&["map", "-U", "--output=json", p])
        ));
        // No corruption and no leaked cluster.
        qemu(&["check", "-U", p]);
    }
    s
}

/// Runs `op` with a fault at every action and phase (until an index has no
/// action left), each time on a fresh setup prepared by `prep`; the state
/// must not change.
fn every_fault(
    what: &str,
    actions: usize,
    prep: impl Fn(&mut Store),
    op: impl Fn(&mut Store) -> strata_core::Result<()>,
) {
    for member in 0..actions {
        for phase in [Phase::Prepare, Phase::Commit] {
            let d = tempfile::tempdir().unwrap();
            let mut store = setup(d.path());
            prep(&mut store);
            let before = state(d.path(), &store);
            faults::inject(Some(Fault { member, phase }));
            let r = op(&mut store);
            faults::inject(None);
            let err = r
                .err()
                .unwrap_or_else(|| panic!("{what}: fault at {member} {phase:?} did not fail"));
            assert!(err.to_string().contains("injected"), "{what}: {err}");
            assert_eq!(
                state(d.path(), &store),
                before,
                "{what}: fault at action {member} {phase:?} changed something"
            );
        }
    }
}

/// Writes `data` at `offset` of disk `index` of domain `vm` (its active image).
fn write_disk(store: &Store, index: usize, data: &[u8], offset: u64) {
    let img = strata_image::open(
        &store.domain("vm").unwrap().disks()[index]
            .source
            .clone()
            .unwrap(),
        &strata_image::ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    img.write_at(data, offset).unwrap();
    img.close().unwrap();
}

fn snap(store: &mut Store, name: &str, modes: [DiskMode; 2]) {
    let req = CreateRequest {
        name: Some(name.into()),
        diskspecs: ["vda", "vdb"]
            .iter()
            .zip(modes)
            .map(|(t, m)| DiskSpec {
                target: t.to_string(),
                mode: Some(m),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    snapshot_create::create(store, "vm", &req).unwrap();
}

#[test]
fn snapshot_create_is_all_or_nothing() {
    every_fault(
        "create",
        2,
        |_| {},
        |s| {
            let req = CreateRequest {
                name: Some("s1".into()),
                diskspecs: vec![
                    DiskSpec::parse("vda,snapshot=internal").unwrap(),
                    DiskSpec::parse("vdb,snapshot=external").unwrap(),
                ],
                ..Default::default()
            };
            snapshot_create::create(s, "vm", &req).map(|_| ())
        },
    );
}

#[test]
fn snapshot_revert_and_delete_are_all_or_nothing() {
    let prep = |s: &mut Store| {
        snap(s, "s0", [DiskMode::Internal, DiskMode::Internal]);
        write_disk(s, 0, &[9; 4096], 0);
    };
    every_fault("revert", 2, prep, |s| {
        snapshot_revert::revert(s, "vm", "s0").map(|_| ())
    });
    every_fault("delete", 2, prep, |s| {
        snapshot_delete::delete(s, "vm", "s0", Default::default()).map(|_| ())
    });
}

#[test]
fn checkpoint_create_is_all_or_nothing() {
    let prep = |s: &mut Store| {
        let req = CheckpointRequest {
            name: Some("c1".into()),
            ..Default::default()
        };
        checkpoint::create(s, "vm", &req).unwrap();
    };
    // Per disk: add c2, disable c1.
    every_fault("checkpoint create", 4, prep, |s| {
        let req = CheckpointRequest {
            name: Some("c2".into()),
            ..Default::default()
        };
        checkpoint::create(s, "vm", &req).map(|_| ())
    });
}

#[test]
fn external_delete_with_merge_is_all_or_nothing() {
    // A checkpoint's bitmaps, handed to vda's overlay by the external
    // snapshot; writes in the overlay. Deleting e1 merges vda's overlay
    // back (its bitmap merged and enabled there, the guard snapshot
    // deleted) and deletes vdb's internal snapshot, in the final
    // transaction: a fault at any of its actions puts everything back.
    let prep = |s: &mut Store| {
        let req = CheckpointRequest {
            name: Some("c1".into()),
            ..Default::default()
        };
        checkpoint::create(s, "vm", &req).unwrap();
        snap(s, "e1", [DiskMode::External, DiskMode::Internal]);
        write_disk(s, 0, &[9; 65536], 1 << 20);
    };
    every_fault("external delete", 4, prep, |s| {
        snapshot_delete::delete(s, "vm", "e1", Default::default()).map(|_| ())
    });
    // And without a fault it merges: vda is back on its first image, which
    // reads as the overlay did, with the checkpoint still tracking there.
    let d = tempfile::tempdir().unwrap();
    let mut store = setup(d.path());
    prep(&mut store);
    let overlay = store.domain("vm").unwrap().disks()[0]
        .source
        .clone()
        .unwrap();
    let o = overlay.to_str().unwrap();
    let raw = |src: &str, name: &str| {
        let out = d.path().join(name);
        qemu(&["convert", "-U", "-O", "raw", src, out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    };
    let want = raw(o, "want.raw");
    snapshot_delete::delete(&mut store, "vm", "e1", Default::default()).unwrap();
    assert!(!overlay.exists());
    let base = d.path().join("vda.qcow2");
    let b = base.to_str().unwrap();
    assert_eq!(
        store.domain("vm").unwrap().disks()[0].source,
        Some(base.clone())
    );
    assert!(raw(b, "got.raw") == want);
    let info = qemu(&["info", "-U", "--output=json", b]);
    assert!(info.contains("\"auto\""), "c1 is enabled again: {info}");
    assert!(!info.contains("strata-merge-guard"), "{info}");
    let health = checkpoint::health::verify(&store, "vm", Some("c1"), &Default::default()).unwrap();
    assert_eq!(health[0].changed, Some(65536), "{health:?}");
}

#[test]
fn external_revert_is_all_or_nothing() {
    // Reverting to an external snapshot makes a fresh overlay per disk (and
    // then discards the state left): a fault at either disk's overlay
    // leaves the old overlays, their data and the metadata as they were.
    let prep = |s: &mut Store| {
        snap(s, "e0", [DiskMode::External, DiskMode::External]);
        write_disk(s, 1, &[7; 4096], 8192);
    };
    every_fault("external revert", 2, prep, |s| {
        snapshot_revert::revert(s, "vm", "e0").map(|_| ())
    });
}

#[test]
fn revert_into_an_image_no_longer_active_is_all_or_nothing() {
    // s1 lives in e0's overlays; the revert to e0 moved the disks to fresh
    // overlays over the base images. Reverting to s1 applies it in the old
    // overlays and points the disks back at them: a fault at either disk
    // leaves the disks on the fresh overlays (not collected), every image
    // and the metadata as they were.
    let prep = |s: &mut Store| {
        snap(s, "e0", [DiskMode::External, DiskMode::External]);
        write_disk(s, 0, &[5; 4096], 4096);
        snap(s, "s1", [DiskMode::Internal, DiskMode::Internal]);
        write_disk(s, 1, &[6; 4096], 8192);
        snapshot_revert::revert(s, "vm", "e0").unwrap();
        write_disk(s, 0, &[7; 4096], 12288);
    };
    every_fault("revert into an inactive image", 2, prep, |s| {
        snapshot_revert::revert(s, "vm", "s1").map(|_| ())
    });
}

#[test]
fn a_revert_for_memory_is_taken_back_whole() {
    // A revert whose memory QEMU then refuses is taken back: internal
    // snapshots applied (guarded), fresh overlays made, the definition and
    // the current snapshot replaced; after the undo every image and the
    // metadata are as before, with no guard snapshot and no overlay left.
    let cases: [(&str, [DiskMode; 2]); 3] = [
        ("s0", [DiskMode::Internal, DiskMode::Internal]),
        ("e0", [DiskMode::External, DiskMode::External]),
        ("m0", [DiskMode::External, DiskMode::Internal]),
    ];
    for (name, modes) in cases {
        let d = tempfile::tempdir().unwrap();
        let mut store = setup(d.path());
        snap(&mut store, name, modes);
        snap(
            &mut store,
            "later",
            [DiskMode::Internal, DiskMode::Internal],
        );
        write_disk(&store, 0, &[9; 4096], 0);
        write_disk(&store, 1, &[8; 4096], 65536);
        let before = state(d.path(), &store);
        let sources = |s: &Store| -> Vec<_> {
            s.domain("vm")
                .unwrap()
                .disks()
                .into_iter()
                .map(|k| k.source.unwrap())
                .collect()
        };
        let was = sources(&store);
        let r = snapshot_revert::revert_for_memory(&mut store, "vm", name).unwrap();
        assert_ne!(state(d.path(), &store), before, "{name}: nothing reverted");
        // Each disk is where the revert left it: a fresh overlay for an
        // external snapshot (never the snapshot's own image, which the
        // guest must not write to), the image holding an internal one.
        let now = sources(&store);
        for ((k, mode), (was, now)) in modes.iter().enumerate().zip(was.iter().zip(&now)) {
            let moved = r.moved().iter().find(|(t, _)| t == ["vda", "vdb"][k]);
            match mode {
                DiskMode::External => {
                    assert_eq!(Some(now), moved.map(|(_, f)| f), "{name}: disk {k}");
                    assert_ne!(now, was);
                }
                _ => assert_eq!(now, was, "{name}: disk {k}"),
            }
        }
        r.undo(&mut store).unwrap();
        let after = state(d.path(), &store);
        assert_eq!(after, before, "{name}: the undo left a change");
        assert!(!after.contains("strata-revert-undo"), "{after}");
    }
}

#[test]
fn a_revert_for_memory_is_all_or_nothing() {
    let prep = |s: &mut Store| {
        snap(s, "s0", [DiskMode::Internal, DiskMode::Internal]);
        write_disk(s, 0, &[9; 4096], 0);
    };
    every_fault("revert for memory", 2, prep, |s| {
        snapshot_revert::revert_for_memory(s, "vm", "s0").map(|_| ())
    });
}

/// The bitmaps of image `file` as qemu-img sees them: `(name, enabled)`.
fn qemu_bitmaps(file: &Path) -> Vec<(String, bool)> {
    let info: serde_json::Value = serde_json::from_str(&qemu(&[
        "info",
        "-U",
        "--output=json",
        file.to_str().unwrap(),
    ]))
    .unwrap();
    let mut out: Vec<(String, bool)> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let flags = b["flags"].as_array().unwrap();
                    (
                        b["name"].as_str().unwrap().to_string(),
                        flags.iter().any(|f| f == "auto"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn a_checkpoint_create_killed_after_any_commit_is_undone_and_no_write_is_lost() {
    use strata_image::transaction::Held;
    // Per disk (one image member each): add c2, disable c1. The process
    // dies right after each action's member committed: vda's part alone,
    // or both disks' with the checkpoint not recorded. The guest then
    // writes on; the next checkpoint operation undoes the half-made one,
    // and "changed since c1" still holds every write since c1.
    for (member, then) in [(0, "create"), (1, "delete"), (2, "create"), (3, "backup")] {
        let d = tempfile::tempdir().unwrap();
        let mut store = setup(d.path());
        let c = |n: &str| CheckpointRequest {
            name: Some(n.into()),
            ..Default::default()
        };
        checkpoint::create(&mut store, "vm", &c("c1")).unwrap();
        write_disk(&store, 0, &[5; 4096], 1 << 20);
        faults::inject(Some(Fault {
            member,
            phase: Phase::Die,
        }));
        let err = checkpoint::create(&mut store, "vm", &c("c2")).unwrap_err();
        faults::inject(None);
        assert!(err.to_string().contains("death"), "{err}");
        let names = |s: &Store| -> Vec<String> {
            s.checkpoints("vm")
                .unwrap()
                .into_iter()
                .map(|(n, _, _)| n)
                .collect()
        };
        assert_eq!(names(&store), ["c1"], "died at {member}");
        let files: Vec<std::path::PathBuf> = store
            .domain("vm")
            .unwrap()
            .disks()
            .into_iter()
            .map(|d| d.source.unwrap())
            .collect();
        // The kill left vda (and vdb, once its member committed) with c1
        // disabled and a c2 no checkpoint names.
        let half = vec![("c1".to_string(), false), ("c2".to_string(), true)];
        assert_eq!(qemu_bitmaps(&files[0]), half, "died at {member}");
        // Until then, checkpoint verify says what happened to vda.
        let health = checkpoint::health::verify(&store, "vm", None, &Held::none()).unwrap();
        let vda = health.iter().find(|h| h.disk == "vda").unwrap();
        let problem = vda.problem.clone().unwrap_or_default();
        assert!(
            problem.contains("'c2' was cut short") && problem.contains("undoes it"),
            "died at {member}: {problem}"
        );
        write_disk(&store, 0, &[6; 4096], 2 << 20);
        write_disk(&store, 1, &[7; 4096], 3 << 20);
        let since_c1 = |s: &Store, disk: &str| {
            checkpoint::disk_ranges_in(s, "vm", "c1", disk, &Held::none()).unwrap()
        };
        match then {
            "create" => {
                checkpoint::create(&mut store, "vm", &c("c2")).unwrap();
                assert_eq!(names(&store), ["c1", "c2"]);
                assert_eq!(
                    since_c1(&store, "vda"),
                    [(1 << 20, 65536), (2 << 20, 65536)]
                );
                assert_eq!(since_c1(&store, "vdb"), [(3 << 20, 65536)]);
                let after = vec![("c1".to_string(), false), ("c2".to_string(), true)];
                for f in &files {
                    assert_eq!(qemu_bitmaps(f), after, "died at {member}");
                }
            }
            "delete" => {
                checkpoint::delete(&mut store, "vm", "c1", Default::default()).unwrap();
                assert!(names(&store).is_empty());
                for f in &files {
                    assert!(qemu_bitmaps(f).is_empty(), "died at {member}");
                }
            }
            _ => {
                // A backup's begin undoes it too, then reads since c1.
                checkpoint::recover(&mut store, "vm", &strata_core::live::Offline).unwrap();
                assert_eq!(
                    since_c1(&store, "vda"),
                    [(1 << 20, 65536), (2 << 20, 65536)]
                );
                assert_eq!(since_c1(&store, "vdb"), [(3 << 20, 65536)]);
                let back = vec![("c1".to_string(), true)];
                for f in &files {
                    assert_eq!(qemu_bitmaps(f), back, "died at {member}");
                }
                // And nothing is left to undo.
                assert!(store.checkpoint_intent("vm").unwrap().is_none());
            }
        }
        for f in &files {
            // Sound: only clusters the killed process had not yet given
            // back may leak (exit 3), never corruption (2).
            let out = Command::new("qemu-img")
                .args(["check", "-U", f.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                matches!(out.status.code(), Some(0 | 3)),
                "died at {member}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
