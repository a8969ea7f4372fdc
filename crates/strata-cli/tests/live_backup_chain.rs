//! Incremental forever on a running guest: a full backup, then ten rounds
//! of guest writes and an incremental backup since the last checkpoint,
//! push and pull in turn. Each round's backup is restored by chaining it
//! onto the previous round's restore (qemu-img rebase for a push target,
//! the dirty extents read with libnbd through `qemu:dirty-bitmap` for a
//! pull), and compared byte for byte with an internal snapshot taken at the
//! same instant: the guest is suspended while the snapshot and `backup
//! begin` are made, so both hold the same disk state. The backup after is
//! read while the guest writes on.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// A backup of vda and vdb, incremental since `since` when given: push
/// to `DISK.bROUND` (qcow2) or pull on `p/nbd.sock`.
fn backup_xml(p: &Path, round: usize, pull: bool, since: Option<&str>) -> String {
    let inc = since
        .map(|c| format!("<incremental>{c}</incremental>"))
        .unwrap_or_default();
    let dir = p.display();
    if pull {
        return format!(
            "<domainbackup mode='pull'>{inc}<server transport='unix' socket='{dir}/nbd.sock'/>\
             <disks><disk name='vda' type='file'/><disk name='vdb' type='file'/></disks></domainbackup>"
        );
    }
    format!(
        "<domainbackup mode='push'>{inc}<disks>\
         <disk name='vda' type='file'><target file='{dir}/vda.b{round}'/><driver type='qcow2'/></disk>\
         <disk name='vdb' type='file'><target file='{dir}/vdb.b{round}'/><driver type='qcow2'/></disk>\
         </disks></domainbackup>"
    )
}

/// The backup job's state.
fn job(p: &Path) -> serde_json::Value {
    ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json()
}

/// Internal snapshot `name` of image `file`, read by qemu-img beside the
/// daemon that serves the image (a snapshot's clusters never change).
fn snapshot_raw(p: &Path, file: &str, name: &str) -> Vec<u8> {
    let out = format!("{file}.{name}.raw");
    let snap = format!("snapshot.name={name}");
    qemu_img(
        p,
        &[
            "convert", "-U", "-f", "qcow2", "-l", &snap, "-O", "raw", file, &out,
        ],
    );
    let bytes = std::fs::read(p.join(&out)).unwrap();
    std::fs::remove_file(p.join(out)).unwrap();
    bytes
}

#[test]
fn ten_incremental_rounds_push_and_pull_restore_each_instant() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    let disks = [("vda", "a.qcow2"), ("vdb", "b.qcow2")];
    for round in 0..=10 {
        let pull = round % 2 == 1;
        let since = (round > 0).then(|| format!("c{}", round - 1));
        let cp = format!("c{round}");
        let snap = format!("s{round}");
        // The instant: the guest suspended, a snapshot, the backup begun.
        ok(p, &st(&["domain", "suspend", "vm"]));
        let specs = ["vda,snapshot=internal", "vdb,snapshot=internal"];
        ok(
            p,
            &st(&[
                "snapshot",
                "create",
                "vm",
                "--name",
                &snap,
                "--disk-only",
                "--diskspec",
                specs[0],
                "--diskspec",
                specs[1],
            ]),
        );
        let begun = begin_backup(p, &backup_xml(p, round, pull, since.as_deref()), &cp);
        assert_eq!(begun["state"], "running", "round {round}: {begun}");
        ok(p, &st(&["domain", "resume", "vm"]));
        // The guest writes on while the backup is read.
        writes_on(p, 5);
        for (disk, _) in disks {
            let (prev, cur) = (
                format!("{disk}.r{}.raw", round.wrapping_sub(1)),
                format!("{disk}.r{round}.raw"),
            );
            if pull {
                std::fs::copy(p.join(&prev), p.join(&cur)).unwrap();
                read_dirty(p, disk, &cur);
            } else {
                wait_until(Duration::from_secs(120), "the push backup", || {
                    job(p)["state"] != "running"
                });
                let target = format!("{disk}.b{round}");
                if round > 0 {
                    qemu_img(p, &["rebase", "-u", "-F", "raw", "-b", &prev, &target]);
                }
                qemu_img(p, &["convert", "-O", "raw", &target, &cur]);
            }
        }
        if pull {
            ok(p, &st(&["backup", "abort", "vm"]));
        } else {
            let j = job(p);
            assert_eq!(j["state"], "completed", "round {round}: {j}");
            if round > 0 {
                // Only the changes were copied.
                assert!(j["total"].as_u64().unwrap() < 16 << 20, "{j}");
            }
        }
        for (disk, file) in disks {
            let restored = std::fs::read(p.join(format!("{disk}.r{round}.raw"))).unwrap();
            let at_instant = snapshot_raw(p, file, &snap);
            let records = prefix(&at_instant, &format!("round {round} {disk}"));
            assert!(records > 0, "round {round}: {disk} is empty");
            if restored != at_instant {
                let first = restored
                    .iter()
                    .zip(&at_instant)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                panic!(
                    "round {round} ({}): {disk} restored differs from snapshot {snap} from byte {first} (block {})",
                    if pull { "pull" } else { "push" },
                    first / 4096
                );
            }
        }
        writes_on(p, 10);
    }
    stop_and_check_console(p);
}
