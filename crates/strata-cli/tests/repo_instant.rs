//! Instant recovery: a machine boots from a backup at once. The records
//! guest is backed up into a repository; `repo mount --writable` serves
//! the backup's disks; a new domain whose disks are those NBD exports
//! (libvirt's `<disk type='network'>`, QEMU attaching them itself) starts
//! with `domain start`, its guest reads the records the backup holds and
//! writes beside them, into the mount's overlays. The backup never
//! changes (`repo verify`), and the machine moves back onto disks of its
//! own: each restored from the backup, with the overlay committed into it
//! by qemu-img, equals what the guest saw (`qemu-img compare`).

mod common;
use common::daemon::wait_until;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// Block the new guest writes its mark at on disk `k` (past the records'
/// slots, in the 64 MiB disk).
fn mark_block(k: usize) -> u64 {
    16200 + k as u64
}

/// The XML of domain `vm2`: the records guest's kernel with `initrd`, its
/// disks vda and vdb the exports of the mount on `m.sock`.
fn instant_domain(p: &Path, kit: &strata_testguest::Kit, initrd: &str) -> String {
    let dir = p.display();
    let disks: String = ["vda", "vdb"]
        .iter()
        .map(|t| {
            format!(
                "
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='{t}'>
        <host transport='unix' socket='{dir}/m.sock'/>
      </source>
      <target dev='{t}' bus='virtio'/>
    </disk>"
            )
        })
        .collect();
    direct_boot_domain(p, kit, "vm2", initrd, &disks, "")
}

#[test]
fn a_machine_boots_from_a_backup_at_once_and_moves_back_onto_disks_of_its_own() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    wait_for_records(p, 20, 120);
    stop_and_check_console(p);
    // The last record on both disks (vdb may lag vda by one).
    let n = prefix(&read_raw(p, "a.qcow2", None), "vda") - 1;
    assert!(n >= 19, "{n} records");
    ok(p, &st(&["repo", "init", "r"]));
    let made = ok(p, &st(&["--output", "json", "repo", "backup", "r", "vm"])).json();
    let id = made["id"].as_str().unwrap().to_string();
    // Serve it writable, and boot a new machine from it.
    let mut mount = repo_mount(p, &id, &["--writable", "ov"]);
    let workload = format!(
        "for d in vda vdb; do dd if=/dev/$d bs=4096 skip={n} count=1 2>/dev/null | head -c 12; echo \" ON $d\"; done
printf 'INSTANT vda\\n' | dd of=/dev/vda bs=4096 seek={a} conv=sync,fsync 2>/dev/null || echo WRITE-FAILED
printf 'INSTANT vdb\\n' | dd of=/dev/vdb bs=4096 seek={b} conv=sync,fsync 2>/dev/null || echo WRITE-FAILED
echo MARKED",
        a = mark_block(0),
        b = mark_block(1),
    );
    kit.initrd(&workload, &[], &p.join("vm2.initrd.gz"))
        .expect("building the initrd");
    std::fs::write(p.join("vm2.xml"), instant_domain(p, kit, "vm2.initrd.gz")).unwrap();
    ok(p, &st(&["domain", "define", "vm2.xml"]));
    ok(p, &st(&["domain", "start", "vm2"]));
    let console = || std::fs::read_to_string(p.join("vm2.console")).unwrap_or_default();
    wait_until(Duration::from_secs(120), "the guest to finish", || {
        console().contains("STRATA-GUEST-EXIT=")
    });
    let seen = console();
    for t in ["vda", "vdb"] {
        assert!(
            seen.contains(&format!("REC {n:08} ON {t}")),
            "the guest reads the backup's record {n} on {t}:\n{seen}"
        );
    }
    assert!(
        seen.contains("MARKED") && seen.contains("STRATA-GUEST-EXIT=0"),
        "{seen}"
    );
    assert!(!seen.contains("WRITE-FAILED"), "{seen}");
    wait_until(Duration::from_secs(30), "the machine to power off", || {
        ok(p, &st(&["domain", "domstate", "vm2"]))
            .stdout
            .starts_with("shut off")
    });
    // What the guest saw, through the mount: the backup with its marks.
    let seen_disks: Vec<Vec<u8>> = ["vda", "vdb"]
        .iter()
        .map(|t| {
            let uri = format!("nbd+unix:///{t}?socket={}", p.join("m.sock").display());
            let out = format!("{t}.seen.raw");
            qemu_img(p, &["convert", "-f", "raw", "-O", "raw", &uri, &out]);
            std::fs::read(p.join(&out)).unwrap()
        })
        .collect();
    common::daemon::signal(mount.id(), libc::SIGTERM);
    assert!(mount.wait().unwrap().success());
    for (k, (raw, file)) in seen_disks.iter().zip(["a.qcow2", "b.qcow2"]).enumerate() {
        let at = mark_block(k) as usize * 4096;
        assert_eq!(
            &raw[at..at + 12],
            format!("INSTANT vd{}\n", (b'a' + k as u8) as char).as_bytes()
        );
        // Everything else is the backup: the disk as it was then.
        let mut then = read_raw(p, file, None);
        then[at..at + 4096].copy_from_slice(&raw[at..at + 4096]);
        assert!(then == *raw, "disk {k}: only the mark differs");
    }
    // The backup never changed.
    ok(p, &st(&["repo", "verify", "r"]));
    // Moving back: each disk restored from the backup, the overlay's
    // writes committed into it by qemu-img.
    for t in ["vda", "vdb"] {
        let own = format!("{t}.own.qcow2");
        ok(
            p,
            &st(&["repo", "restore", "r", &id, t, "-O", "qcow2", &own]),
        );
        let overlay = format!("ov/{t}.qcow2");
        qemu_img(
            p,
            &[
                "rebase",
                "-u",
                "-F",
                "qcow2",
                "-b",
                &format!("../{own}"),
                &overlay,
            ],
        );
        qemu_img(p, &["commit", &overlay]);
        qemu_img(p, &["check", &own]);
        qemu_img(
            p,
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                &own,
                &format!("{t}.seen.raw"),
            ],
        );
    }
}
