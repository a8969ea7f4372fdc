//! Snapshots of a running machine with its memory (no `--disk-only`), with
//! a real guest (the guest kit under TCG) that counts in memory and on its
//! disk: the memory goes into the disk's internal snapshot as QEMU's
//! `savevm` keeps it (`qemu-img snapshot -l` shows its VM SIZE), the
//! snapshot XML says the machine ran (libvirt's schema accepts it), and a
//! revert puts the guest back where it was: the disk holds the count of
//! the snapshot's instant, the console goes on from the next count (not
//! from the latest, not from 1), the kernel's uptime goes back to the
//! instant and on (no reboot); `--paused` leaves it paused until resume.

mod common;
use common::counter::*;
use common::daemon::*;
use common::*;
use std::time::Duration;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domainsnapshot.rng";

#[test]
fn a_snapshot_with_memory_is_reverted_to_where_the_guest_was() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_counts(p, 5);

    // The snapshot: the guest paused for it, then running on.
    let before = counts(p).len();
    let made = ok(
        p,
        &st(&[
            "--output", "json", "snapshot", "create", "vm", "--name", "s1",
        ]),
    )
    .json();
    assert_eq!(made["name"], "s1");
    let taken = counts(p);
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    let listed = run_in(p, "qemu-img", &["snapshot", "-l", "-U", "vm.qcow2"]).stdout;
    let row = listed
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("s1"))
        .unwrap_or_else(|| panic!("no s1 in:\n{listed}"));
    assert!(!row.contains(" 0 B "), "s1 keeps no VM state:\n{listed}");
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "s1"])).stdout;
    assert!(xml.contains("<state>running</state>"), "{xml}");
    assert!(
        xml.contains("<memory snapshot='internal'/>")
            || xml.contains("<memory snapshot=\"internal\"/>"),
        "{xml}"
    );
    std::fs::write(p.join("s1.xml"), &xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "s1.xml"]).expect(0);

    // The guest counts on well past the snapshot, then is reverted.
    let latest = wait_counts(p, taken.len() + 15);
    let went_to = latest.last().unwrap().0;
    let r = ok(p, &st(&["snapshot", "revert", "vm", "s1", "--paused"]));
    assert_eq!(r.stdout, "Domain 'vm' reverted to snapshot s1\n");
    assert_eq!(domstate(p, "vm"), "paused (user)");
    let at_revert = counts(p);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(counts(p).len(), at_revert.len(), "a paused guest counted");
    // The disk is as it was at the instant: a count the guest had printed
    // by then (it writes each after printing it).
    let on_disk = disk_count(p);
    let (first_possible, last_possible) = (taken[before - 1].0 - 1, taken.last().unwrap().0);
    assert!(
        (first_possible..=last_possible).contains(&on_disk),
        "the disk holds {on_disk}, the snapshot was taken between counts {first_possible} and {last_possible}"
    );
    ok(p, &st(&["domain", "resume", "vm"]));
    let after = wait_counts(p, at_revert.len() + 3);
    let (next, up) = after[at_revert.len()];
    assert!(
        next == on_disk + 1 || next == on_disk + 2,
        "after the revert the guest counts {next}; its disk held {on_disk} (it went to {went_to} before)"
    );
    assert!(
        next < went_to,
        "the guest went on from {went_to}, not from the snapshot"
    );
    // The uptime of that count's first life, and before the revert.
    let then = latest.iter().find(|c| c.0 == next).map(|c| c.1).unwrap();
    let latest_up = latest.last().unwrap().1;
    assert!(
        (up - then).abs() < 5.0 && up < latest_up,
        "uptime {up} at count {next} after the revert; {then} the first time, {latest_up} before the revert"
    );
    assert_eq!(domstate(p, "vm"), "running (unpaused)");

    // Reverted again while it runs, to running: no --force needed.
    let latest = wait_counts(p, after.len() + 5);
    ok(p, &st(&["snapshot", "revert", "vm", "s1"]));
    assert_eq!(domstate(p, "vm"), "running (restored)");
    let again = wait_counts(p, latest.len() + 3);
    let next_again = again[latest.len()].0;
    assert!(
        next_again == on_disk + 1 || next_again == on_disk + 2,
        "the second revert counts on from {next_again}"
    );

    // The domain's definition changed since (2 vCPUs): its memory cannot
    // go on in that machine. Refused without --force, nothing changed; with
    // it, the snapshot's machine runs from the snapshot.
    let xml = std::fs::read_to_string(p.join("vm.xml")).unwrap();
    std::fs::write(
        p.join("vm2.xml"),
        xml.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm2.xml"]));
    let before_refusal = wait_counts(p, again.len() + 2);
    strata(p, &st(&["snapshot", "revert", "vm", "s1"]))
        .one_error(1, "revert requires force: snapshot 's1' of domain 'vm' holds the memory of another machine (vCPUs: 1 then, 2 now)");
    assert_eq!(domstate(p, "vm"), "running (restored)");
    let still = wait_counts(p, before_refusal.len() + 2);
    assert!(
        still.last().unwrap().0 > before_refusal.last().unwrap().0,
        "the guest went on counting"
    );
    ok(p, &st(&["snapshot", "revert", "vm", "s1", "--force"]));
    // The snapshot's machine runs, and the definition is its again.
    let now = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    assert!(now.contains("<vcpu>1</vcpu>"), "{now}");
    let forced = wait_counts(p, still.len() + 3);
    let next_forced = forced[still.len()].0;
    assert!(
        next_forced == on_disk + 1 || next_forced == on_disk + 2,
        "the forced revert counts on from {next_forced}"
    );

    // --halt: a second snapshot, then the machine stops; deleting the
    // first frees its memory (check finds no leak), the second reverts.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "s2", "--halt"]),
    );
    assert_eq!(domstate(p, "vm"), "shut off (from snapshot)");
    ok(p, &st(&["snapshot", "delete", "vm", "s1"]));
    assert_clean(p, "vm.qcow2");
    let names = run_in(p, "qemu-img", &["snapshot", "-l", "vm.qcow2"]).stdout;
    assert!(!names.contains(" s1 ") && names.contains(" s2 "), "{names}");
    let halted = counts(p);
    ok(p, &st(&["snapshot", "revert", "vm", "s2"]));
    assert_eq!(domstate(p, "vm"), "running (restored)");
    let resumed = wait_counts(p, halted.len() + 2);
    assert!(
        resumed[halted.len()].0 > on_disk + 2,
        "s2 goes on from its own count"
    );
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
}

/// Checks, with the guest paused after a revert, that both disks hold the
/// count of the snapshot's instant (taken between the last count of
/// `before` and the last of `taken`; vdb is written after vda), resumes
/// it, and checks that it counts on from there in the same boot (the
/// count's uptime is its first one in `latest`, the console so far), not
/// from where it went since (the last of `latest`).
fn reverted_to(
    p: &std::path::Path,
    before: &[(u64, f64)],
    taken: &[(u64, f64)],
    latest: &[(u64, f64)],
) {
    let vda = count_in(p, "vm.qcow2");
    let vdb = count_in(p, "vdb.qcow2");
    let (lo, hi) = (before.last().unwrap().0 - 1, taken.last().unwrap().0);
    assert!(
        (lo..=hi).contains(&vda),
        "vda holds {vda}; the snapshot was taken between counts {lo} and {hi}"
    );
    assert!(vdb == vda || vdb + 1 == vda, "vda holds {vda}, vdb {vdb}");
    let shown = counts(p);
    ok(p, &st(&["domain", "resume", "vm"]));
    let after = wait_counts(p, shown.len() + 3);
    let next = after[shown.len()].0;
    assert!(
        next == vda + 1 || next == vda + 2,
        "after the revert the guest counts {next}; its disk held {vda}"
    );
    counted_again(latest, after[shown.len()]);
}

#[test]
fn live_and_paused_snapshots_of_two_disks_revert_where_the_guest_was() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER_TWO_DISKS, "");
    run_in(
        p,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "vdb.qcow2", "64M"],
    )
    .expect(0);
    let xml = std::fs::read_to_string(p.join("vm.xml")).unwrap();
    let vdb = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}/vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>\n    <serial",
        p.display()
    );
    std::fs::write(p.join("vm.xml"), xml.replacen("<serial", &vdb, 1)).unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    strata(
        p,
        &st(&["snapshot", "create", "vm", "--live", "--disk-only"]),
    )
    .one_error(1, "--live is for snapshots with memory");
    let before = wait_counts(p, 5);

    // --live: QEMU copies the memory while the guest runs, pausing it only
    // for the last of it; both disks are snapshotted at that instant.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "live1", "--live"]),
    );
    let taken = counts(p);
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "live1"])).stdout;
    assert!(xml.contains("<state>running</state>"), "{xml}");
    std::fs::write(p.join("live1.xml"), &xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "live1.xml"]).expect(0);
    for (file, with_state) in [("vm.qcow2", true), ("vdb.qcow2", false)] {
        let listed = run_in(p, "qemu-img", &["snapshot", "-l", "-U", file]).stdout;
        let row = listed
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("live1"))
            .unwrap_or_else(|| panic!("no live1 in {file}:\n{listed}"));
        assert_eq!(!row.contains(" 0 B "), with_state, "{file}:\n{listed}");
    }

    // A paused domain's snapshot: state paused; a revert to it leaves the
    // guest paused.
    let before_p = wait_counts(p, taken.len() + 5);
    ok(p, &st(&["domain", "suspend", "vm"]));
    let taken_p = counts(p);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "p1"]));
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "p1"])).stdout;
    assert!(xml.contains("<state>paused</state>"), "{xml}");
    assert_eq!(domstate(p, "vm"), "paused (user)");
    ok(p, &st(&["domain", "resume", "vm"]));

    let latest = wait_counts(p, taken_p.len() + 10);
    ok(p, &st(&["snapshot", "revert", "vm", "live1", "--paused"]));
    reverted_to(p, &before, &taken, &latest);
    // Counting on from live1's instant, well past p1's count (so that
    // going on from p1 cannot look like going on from here).
    let past = taken_p.last().unwrap().0 + 5;
    let latest = loop {
        let c = wait_counts(p, counts(p).len() + 1);
        if c.last().unwrap().0 > past {
            break c;
        }
    };
    ok(p, &st(&["snapshot", "revert", "vm", "p1"]));
    assert!(
        domstate(p, "vm").starts_with("paused"),
        "{}",
        domstate(p, "vm")
    );
    reverted_to(p, &before_p, &taken_p, &latest);
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
    assert_clean(p, "vdb.qcow2");
}

/// The source file of disk `vda` of domain `vm` now.
fn vda_source(p: &std::path::Path) -> String {
    let xml = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    let at = xml.find("<source file=").expect("a disk source");
    let rest = &xml[at + "<source file=".len() + 1..];
    rest[..rest.find(['\'', '"']).unwrap()].to_string()
}

#[test]
fn external_memory_goes_to_its_own_file_and_back() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    let err = |args: &[&str], needle: &str| strata(p, &st(args)).one_error(1, needle);
    err(
        &["snapshot", "create", "vm", "--memspec", "e0.mem"],
        "--memspec keeps the memory of a running machine",
    );
    ok(p, &st(&["domain", "start", "vm"]));
    strata(
        p,
        &st(&["snapshot", "create", "vm", "--memspec", "snapshot=external"]),
    )
    .one_error(
        2,
        "memspec 'snapshot=external': external memory needs file=PATH",
    );
    err(
        &[
            "snapshot",
            "create",
            "vm",
            "--memspec",
            "e0.mem",
            "--diskspec",
            "vda,snapshot=internal",
        ],
        "the disks take external snapshots with it",
    );
    assert!(!p.join("e0.mem").exists());
    let before_e1 = vda_source(p);
    let before = wait_counts(p, 5);

    // The memory in a file of its own (a relative path is the caller's),
    // the disk snapshotted externally at the same instant, --live.
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "e1",
            "--live",
            "--memspec",
            "file=e1.mem,snapshot=external",
        ]),
    );
    let taken = counts(p);
    let mem = p.join("e1.mem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&mem).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "e1"])).stdout;
    assert!(xml.contains("<state>running</state>"), "{xml}");
    assert!(
        xml.contains(&format!("file='{}'", mem.display()))
            || xml.contains(&format!("file=\"{}\"", mem.display())),
        "{xml}"
    );
    std::fs::write(p.join("e1.xml"), &xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "e1.xml"]).expect(0);
    let overlay = vda_source(p);
    assert!(overlay.ends_with("vm.e1"), "{overlay}");
    err(
        &["snapshot", "create", "vm", "--memspec", "e1.mem"],
        "never overwrites",
    );

    // A damaged memory file is refused before anything changes.
    let latest = wait_counts(p, taken.len() + 10);
    let good = std::fs::read(&mem).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 100;
    bad[last] ^= 1;
    std::fs::write(&mem, &bad).unwrap();
    err(
        &["snapshot", "revert", "vm", "e1"],
        "but its file cannot be restored",
    );
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    assert_eq!(vda_source(p), overlay);
    std::fs::write(&mem, &good).unwrap();

    // The revert: the disks back at the instant, the memory from the file.
    let latest = wait_counts(p, latest.len() + 3);
    ok(p, &st(&["snapshot", "revert", "vm", "e1", "--paused"]));
    // A fresh overlay over the snapshot's image takes the guest's writes;
    // the image stays as the snapshot left it.
    let reverted = vda_source(p);
    assert!(reverted.ends_with("vm.e1.1"), "{reverted}");
    let base = p.join(&before_e1);
    let base_bytes = std::fs::read(&base).unwrap();
    let vda = count_in(p, &reverted);
    let (lo, hi) = (before.last().unwrap().0 - 1, taken.last().unwrap().0);
    assert!(
        (lo..=hi).contains(&vda),
        "vda holds {vda}; the snapshot was between {lo} and {hi}"
    );
    let shown = counts(p).len();
    ok(p, &st(&["domain", "resume", "vm"]));
    let after = wait_counts(p, shown + 3);
    let next = after[shown].0;
    assert!(
        next == vda + 1 || next == vda + 2,
        "counts {next} after; the disk held {vda}"
    );
    counted_again(&latest, after[shown]);
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "the guest wrote into {before_e1}, the snapshot's image"
    );

    // From XML, as virsh snapshot-create takes it.
    std::fs::write(
        p.join("e2.xml"),
        "<domainsnapshot><name>e2</name><memory snapshot='external' file='e2.mem'/></domainsnapshot>",
    )
    .unwrap();
    ok(p, &st(&["snapshot", "create", "vm", "--xmlfile", "e2.xml"]));
    assert!(p.join("e2.mem").exists());
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "e2"])).stdout;
    let e2 = vda_source(p);
    assert!(e2.ends_with(".e2"), "{e2}");
    assert!(
        xml.contains("<state>running</state>") && xml.contains(&e2),
        "{xml}"
    );

    // Deleted, the snapshot's memory file goes with it.
    ok(p, &st(&["domain", "destroy", "vm"]));
    ok(p, &st(&["snapshot", "delete", "vm", "e1"]));
    assert!(!mem.exists(), "the memory file stayed");
}

/// Flips the first byte of the migration stream's magic (`QEVM`, version
/// 3) where it starts a cluster of qcow2 image `file` (where strata keeps
/// a snapshot's VM state): QEMU then refuses the stream. Flipping again
/// mends it.
fn flip_stream_magic(file: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut head = [0u8; 8];
    let at = (0..len / 65536)
        .map(|c| c * 65536)
        .find(|&at| {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut head).unwrap();
            head[1..] == *b"EVM\0\0\0\x03" && (head[0] == b'Q' || head[0] == b'Q' ^ 0xff)
        })
        .unwrap_or_else(|| panic!("no VM state in {}", file.display()));
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[head[0] ^ 0xff]).unwrap();
}

#[test]
fn a_stream_qemu_refuses_leaves_the_machine_as_it_was() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    let before = wait_counts(p, 5);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    let taken = counts(p);
    wait_counts(p, taken.len() + 3);
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "s2",
            "--disk-only",
            "--diskspec",
            "vda,snapshot=internal",
        ]),
    );
    let source = vda_source(p);
    let image = p.join("vm.qcow2");
    assert_eq!(std::path::Path::new(&source), image);

    // QEMU refuses s1's stream: the revert is taken back whole. The domain
    // is shut off (the guest was stopped for the revert), its disk holds
    // what the guest wrote last (not the snapshot's count), s2 is still
    // current, and no guard snapshot is left in the image.
    flip_stream_magic(&image);
    let latest = wait_counts(p, taken.len() + 10);
    let refused = strata(p, &st(&["snapshot", "revert", "vm", "s1"])).one_error(
        1,
        "the memory of snapshot s1 could not be loaded; the domain stays shut off and its disks are as they were before the revert",
    );
    // QEMU's reason, and where the stream it refused lies.
    assert!(
        refused.contains("load of migration failed") && refused.contains("vm.qcow2,offset="),
        "{refused}"
    );
    assert!(
        domstate(p, "vm").starts_with("shut off"),
        "{}",
        domstate(p, "vm")
    );
    let on_disk = disk_count(p);
    assert!(
        on_disk + 1 >= latest.last().unwrap().0 && on_disk > taken.last().unwrap().0,
        "the disk holds {on_disk}: the guest had counted to {}, the snapshot was at {}",
        latest.last().unwrap().0,
        taken.last().unwrap().0
    );
    assert_eq!(vda_source(p), source);
    let current = ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout;
    assert_eq!(current.trim(), "s2");
    let listed = run_in(p, "qemu-img", &["snapshot", "-l", "vm.qcow2"]).stdout;
    assert!(
        listed.contains(" s1 ")
            && listed.contains(" s2 ")
            && !listed.contains("strata-revert-undo"),
        "{listed}"
    );
    assert_clean(p, "vm.qcow2");

    // Mended, the stream loads: the guest goes on from s1, and the guard
    // the revert kept until then is gone.
    flip_stream_magic(&image);
    ok(p, &st(&["snapshot", "revert", "vm", "s1"]));
    assert_eq!(domstate(p, "vm"), "running (restored)");
    let shown = counts(p);
    let after = wait_counts(p, shown.len() + 3);
    let next = after[shown.len()].0;
    let (lo, hi) = (before.last().unwrap().0, taken.last().unwrap().0 + 2);
    assert!(
        (lo..=hi).contains(&next),
        "after the revert the guest counts {next}; s1 was taken between {lo} and {hi}"
    );
    counted_again(&latest, after[shown.len()]);
    let listed = run_in(p, "qemu-img", &["snapshot", "-l", "-U", "vm.qcow2"]).stdout;
    assert!(!listed.contains("strata-revert-undo"), "{listed}");
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
}
