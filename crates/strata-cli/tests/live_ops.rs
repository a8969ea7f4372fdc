//! Snapshot delete and revert of a running domain, as libvirt has them:
//! an internal snapshot of the images the guest writes to is deleted live
//! (qemu-img no longer lists it, the guest writes on without an error);
//! deleting an external snapshot (a merge) or an internal one below the
//! served image is refused with a clear message and changes nothing; a
//! revert is refused without `--force` (the guest would be stopped), and
//! with it the domain is stopped, reverted, and started again with
//! `--running`. `--quiesce` freezes the guest's filesystems through
//! qemu-guest-agent: a quiesced snapshot of a guest that writes a file
//! without syncing holds what it wrote before the create; a domain without
//! the agent's channel, or whose agent does not answer, is refused and
//! nothing is made.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;

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
    let _daemon = start_records_guest(p, kit);
    // No guest agent channel: --quiesce is refused, naming what is missing.
    let r = strata(
        p,
        &st(&["snapshot", "create", "vm", "--disk-only", "--quiesce"]),
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("guest agent is not configured"),
        "{}",
        r.stderr
    );
    // i0 in a.qcow2, then e1 puts a.e1 on top, where i2 and i3 go.
    snapshot(p, "i0", "internal");
    writes_on(p, 3);
    snapshot(p, "e1", "external");
    writes_on(p, 3);
    snapshot(p, "i2", "internal");
    writes_on(p, 3);
    snapshot(p, "i3", "internal");
    assert_eq!(internal(p, "a.e1"), ["i2", "i3"]);
    // The metadata reads while the domain runs.
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", "e1"])).stdout;
    assert!(xml.contains("<state>disk-snapshot</state>"), "{xml}");
    assert!(xml.contains("a.e1"), "{xml}");
    assert_eq!(
        ok(p, &st(&["snapshot", "parent", "vm", "i3"])).stdout,
        "i2\n"
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "i3\n"
    );

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

    // An internal snapshot below the served image: refused, nothing
    // changed. (Deleting e1 would merge images live: block_jobs.rs.)
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

/// Mounts the ext4 on vda, starts the guest agent if `agent`, then keeps
/// replacing `/count` with the next number (never synced: only the page
/// cache has it until the filesystem flushes or freezes), saying `ACK i`.
fn counter(agent: bool) -> String {
    format!(
        "{}
mkdir -p /mnt && mount -t ext4 /dev/vda /mnt || {{ echo MOUNT-FAILED; exit 1; }}
i=0
while [ $i -lt 100000 ]; do
  i=$((i+1))
  echo $i >/mnt/new && mv /mnt/new /mnt/count || {{ echo WRITE-FAILED $i; exit 1; }}
  echo ACK $i
  sleep 0.05
done
",
        if agent {
            "start-guest-agent || exit 1"
        } else {
            ""
        }
    )
}

/// Defines and starts domain `vm`: the counter guest on an ext4 qcow2 made
/// by mkfs.ext4, with the guest agent's channel.
fn start_counter(p: &Path, kit: &strata_testguest::Kit, agent: bool) {
    run_in(p, "mkfs.ext4", &["-q", "-F", "fs.raw", "64M"]).expect(0);
    qemu_img(p, &["convert", "-O", "qcow2", "fs.raw", "c.qcow2"]);
    let channel =
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";
    define_vm(p, kit, &counter(agent), &["c.qcow2"], channel);
    // Offline there is no agent to ask.
    let r = strata(
        p,
        &st(&["snapshot", "create", "vm", "--disk-only", "--quiesce"]),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs a running domain"), "{}", r.stderr);
    ok(p, &st(&["domain", "start", "vm"]));
    // Booted and writing (a busy host boots slowly).
    wait_for_records(p, 5, 120);
}

/// `/count` in the ext4 of internal snapshot `snap` of `c.qcow2`, read by
/// debugfs after e2fsck found the filesystem clean.
fn count_in(p: &Path, snap: &str) -> u64 {
    let raw = read_raw(p, "c.qcow2", Some(snap));
    std::fs::write(p.join("snap.raw"), raw).unwrap();
    let fsck = run_in(p, "e2fsck", &["-fn", "snap.raw"]);
    assert_eq!(
        fsck.code, 0,
        "{snap}: e2fsck -fn\n{}{}",
        fsck.stdout, fsck.stderr
    );
    let cat = run_in(p, "debugfs", &["-R", "cat /count", "snap.raw"]).expect(0);
    cat.stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{snap}: /count holds {:?}", cat.stdout))
}

#[test]
fn quiesce_freezes_the_guests_filesystems_through_its_agent() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = DaemonProc::start(p, &[], &[]);
    start_counter(p, kit, true);
    wait_console(p, "vm", "the guest agent runs");
    for k in 0..3 {
        writes_on(p, 10);
        let name = format!("q{k}");
        let before = acked(p);
        let made = ok(
            p,
            &st(&[
                "--output",
                "json",
                "snapshot",
                "create",
                "vm",
                "--name",
                &name,
                "--disk-only",
                "--quiesce",
                "--diskspec",
                "vda,snapshot=internal",
            ]),
        )
        .json();
        assert_eq!(made["frozen"], 1, "{made}");
        assert!(made["stall-ms"].as_f64().is_some(), "{made}");
        // Thawed: the guest writes on.
        writes_on(p, 5);
        let count = count_in(p, &name);
        assert!(
            count >= before,
            "{name}: /count is {count}, {before} acknowledged before"
        );
    }
    ok(p, &st(&["domain", "destroy", "vm"]));
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(!console.contains("WRITE-FAILED"), "{console}");
    assert_clean(p, "c.qcow2");
}

#[test]
fn quiesce_is_refused_when_the_agent_does_not_answer_and_nothing_is_made() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = DaemonProc::start(p, &[], &[]);
    start_counter(p, kit, false);
    let r = strata(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            "q",
            "--disk-only",
            "--quiesce",
        ]),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not responding"), "{}", r.stderr);
    assert_eq!(listed(p), "\n");
    assert!(internal(p, "c.qcow2").is_empty());
    assert!(!p.join("c.q").exists());
    writes_on(p, 5);
    ok(p, &st(&["domain", "destroy", "vm"]));
}
