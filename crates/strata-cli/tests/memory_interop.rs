//! Snapshots with memory shared with QEMU both ways, with the counting
//! guest: a snapshot strata made is resumed by QEMU alone (`loadvm` with
//! QEMU's own qcow2 driver reading the memory from the disk's snapshot),
//! and a snapshot QEMU made with `savevm` is reverted to by strata; each
//! time the guest goes on from the snapshot's count, in the same boot.
//! QEMU runs the machine strata runs (the same arguments, the disk served
//! by QEMU's own vhost-user-blk export), so the two migration streams
//! describe the same devices.

mod common;
use common::counter::*;
use common::daemon::*;
use common::plain_qemu::*;
use common::*;

/// Checks that the counts in `after` go on from a count taken between the
/// last of `before_snap` and the last of `taken` (the snapshot's instant),
/// not from `latest` (where the guest went since), in the same boot.
fn goes_on_from_the_snapshot(
    before_snap: &[(u64, f64)],
    taken: &[(u64, f64)],
    latest: &[(u64, f64)],
    first_after: (u64, f64),
) {
    let next = first_after.0;
    let lo = before_snap.last().map(|c| c.0).unwrap_or(0);
    let hi = taken.last().unwrap().0 + 2;
    assert!(
        (lo..=hi).contains(&next),
        "the guest counts {next} after the snapshot's instant (counts {lo} to {hi})"
    );
    counted_again(latest, first_after);
}

#[test]
fn qemu_resumes_a_snapshot_strata_made() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    let before = wait_counts(p, 5);
    let args = qemu_args_of(p, "vm");
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    let taken = counts(p);
    let latest = wait_counts(p, taken.len() + 10);
    ok(p, &st(&["domain", "destroy", "vm"]));

    // QEMU alone: loadvm reads the memory out of vm.qcow2's snapshot s1.
    let console = p.join("plain.console");
    let mut qemu = PlainQemu::start(p, &args, &p.join("vm.qcow2"), &console);
    qemu.hmp("loadvm s1");
    qemu.call("cont", serde_json::json!({}));
    let after = wait_counts_in(&console, 3);
    goes_on_from_the_snapshot(&before, &taken, &latest, after[0]);
    assert_eq!(after[1].0, after[0].0 + 1);
    // It writes on to the disk through QEMU's own driver.
    let on_disk = disk_count(p);
    assert!(on_disk >= after[0].0 - 1 && on_disk < latest.last().unwrap().0);
    qemu.quit();
    assert_clean(p, "vm.qcow2");
}

#[test]
fn strata_reverts_to_a_snapshot_qemu_made() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", COUNTER, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    // The machine strata runs for the domain, then QEMU alone runs it.
    ok(p, &st(&["domain", "start", "vm"]));
    let args = qemu_args_of(p, "vm");
    ok(p, &st(&["domain", "destroy", "vm"]));
    let console = p.join("plain.console");
    let mut qemu = PlainQemu::start(p, &args, &p.join("vm.qcow2"), &console);
    qemu.call("cont", serde_json::json!({}));
    let before = wait_counts_in(&console, 5);
    qemu.hmp("savevm q1");
    let taken = counts_in(&console);
    let latest = wait_counts_in(&console, taken.len() + 10);
    qemu.quit();
    let listed = run_in(p, "qemu-img", &["snapshot", "-l", "vm.qcow2"]).stdout;
    assert!(listed.contains(" q1 "), "{listed}");

    // Its metadata for strata, as `virsh snapshot-create --redefine`
    // takes it; then the revert starts the machine from QEMU's memory.
    let domain = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    let xml = format!(
        "<domainsnapshot><name>q1</name><state>running</state>\
         <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>\
         {domain}</domainsnapshot>"
    );
    std::fs::write(p.join("q1.xml"), xml).unwrap();
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--redefine",
            "--xmlfile",
            "q1.xml",
        ]),
    );
    let shown = counts(p).len();
    ok(p, &st(&["snapshot", "revert", "vm", "q1"]));
    assert_eq!(domstate(p, "vm"), "running (restored)");
    let after = wait_counts(p, shown + 3);
    goes_on_from_the_snapshot(&before, &taken, &latest, after[shown]);
    let on_disk = disk_count(p);
    assert!(on_disk >= after[shown].0 - 1, "the disk holds {on_disk}");
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
}
