//! Block jobs on a running guest (virsh's blockcommit, blockpull,
//! blockjob): the records guest writes on while layers are committed
//! (intermediate, and active with a pivot), pulled, and jobs aborted at
//! random points; afterwards the chains are what virsh would leave, every
//! record the guest acknowledged is in them, `qemu-img check` finds them
//! clean, and the guest never saw a failed write. A second guest runs fio
//! with --verify through an active commit and an intermediate commit.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// A disk-only external snapshot `name` of both disks, without metadata
/// (a plain chain, as `virsh snapshot-create --no-metadata` leaves it).
fn overlay(p: &Path, name: &str) {
    ok(
        p,
        &st(&[
            "snapshot",
            "create",
            "vm",
            "--name",
            name,
            "--disk-only",
            "--no-metadata",
        ]),
    );
}

/// Where the layers below the guest's hold data the records guest never
/// touches (past its 64 MiB), and how much each holds.
const FILL_AT: u64 = 96 << 20;
const FILL: u64 = 24 << 20;

/// The records guest on chains made by qemu-img: `X.qcow2` (256 MiB)
/// under `X.s1` (FILL bytes of 0x11 at FILL_AT) under `X.s2` (FILL bytes
/// of 0x22 after those), X = a (vda) and b (vdb); started under a daemon
/// of its own once it has written a few records.
fn start_layered_guest(p: &Path, kit: &strata_testguest::Kit) -> DaemonProc {
    for x in ["a", "b"] {
        let base = format!("{x}.qcow2");
        qemu_img(p, &["create", "-q", "-f", "qcow2", &base, "256M"]);
        for (layer, below, pattern, at) in [
            ("s1", base.clone(), "0x11", FILL_AT),
            ("s2", format!("{x}.s1"), "0x22", FILL_AT + FILL),
        ] {
            let file = format!("{x}.{layer}");
            qemu_img(
                p,
                &[
                    "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &below, &file,
                ],
            );
            qemu_io(
                p,
                "qcow2",
                &file,
                &[&format!("write -P {pattern} {at} {FILL}")],
            );
        }
    }
    define_vm(p, kit, RECORDS, &["a.s2", "b.s2"], "");
    let daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_for_records(p, 11, 120);
    daemon
}

/// The layers' data, as the chain under `top` reads it.
fn check_fill(p: &Path, top: &str) {
    qemu_io(
        p,
        "qcow2",
        top,
        &[
            &format!("read -P 0x11 {FILL_AT} {FILL}"),
            &format!("read -P 0x22 {} {FILL}", FILL_AT + FILL),
        ],
    );
}

/// With the guest stopped: every file of the chain under `top` is clean
/// for `qemu-img check`, and it holds every record acknowledged.
fn check_stopped(p: &Path, top: &str, what: &str) {
    for f in chain(p, top) {
        assert_clean(p, &f);
    }
    let (n, seen) = (prefix(&read_raw(p, top, None), what), acked(p));
    assert!(n >= seen, "{what}: {n} records, {seen} acknowledged");
}

/// After a snapshot deletion that merged `X.gone` away: each disk serves
/// `X.top` on `X.qcow2`, and the merged overlay is gone.
fn merged(p: &Path, top: &str, gone: &str) {
    for (disk, x) in [("vda", "a"), ("vdb", "b")] {
        assert_eq!(
            served_chain(p, disk),
            [format!("{x}.{top}"), format!("{x}.qcow2")]
        );
        let file = format!("{x}.{gone}");
        assert!(!p.join(&file).exists(), "the merged overlay {file} stays");
    }
}

/// The files of the chain `disk` serves now (top first), by name.
fn served_chain(p: &Path, disk: &str) -> Vec<String> {
    let xml = ok(p, &st(&["domain", "dumpxml", "vm"]))
        .stdout
        .replace('"', "'");
    let at = xml.find(&format!("dev='{disk}'")).unwrap();
    let src = xml[..at].rfind("<source file='").unwrap() + "<source file='".len();
    let top = &xml[src..src + xml[src..].find('\'').unwrap()];
    chain(p, top)
        .into_iter()
        .map(|f| {
            Path::new(&f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The disk's job as `blockjob --output json` shows it.
fn job_info(p: &Path, disk: &str) -> serde_json::Value {
    ok(p, &st(&["--output", "json", "blockjob", "vm", disk])).json()
}

/// Suspends the guest, checks that the chain `disk` serves holds every
/// record acknowledged and a consistent image, resumes it.
fn check_paused(p: &Path, disk: &str, what: &str) {
    ok(p, &st(&["domain", "suspend", "vm"]));
    let seen = acked(p);
    let top = served_chain(p, disk)[0].clone();
    let n = prefix(&read_raw(p, &top, None), what);
    assert!(
        n >= seen,
        "{what}: {n} records in the chain, {seen} acknowledged"
    );
    ok(p, &st(&["domain", "resume", "vm"]));
}

#[test]
fn commits_and_pull_keep_every_write_and_leave_virshs_chains() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_layered_guest(p, kit);
    assert_eq!(served_chain(p, "vda"), ["a.s2", "a.s1", "a.qcow2"]);
    // Changes since c1 stay known through every job.
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));

    // Intermediate commit: a.s1 into a.qcow2 while the guest writes to a.s2.
    let done = ok(
        p,
        &st(&[
            "blockcommit",
            "vm",
            "vda",
            "--top",
            "a.s1",
            "--wait",
            "--verbose",
        ]),
    );
    assert!(done.stdout.contains("Commit complete"), "{}", done.stdout);
    assert_eq!(served_chain(p, "vda"), ["a.s2", "a.qcow2"]);
    let info = job_info(p, "vda");
    assert_eq!(info["phase"], "completed");
    assert!(info["done"].as_u64().unwrap() >= FILL, "{info}");
    check_paused(p, "vda", "vda after the intermediate commit");

    // Active commit with a pivot: b.s2 into b.s1, which is served after.
    let done = ok(
        p,
        &st(&[
            "blockcommit",
            "vm",
            "vdb",
            "--active",
            "--pivot",
            "--verbose",
        ]),
    );
    assert!(
        done.stdout.contains("Successfully pivoted"),
        "{}",
        done.stdout
    );
    assert_eq!(served_chain(p, "vdb"), ["b.s1", "b.qcow2"]);
    // The base is served with QEMU's write lock: no other writer.
    let r = run_in(p, "qemu-img", &["info", "b.s1"]);
    assert!(r.code != 0 && r.stderr.contains("lock"), "{}", r.stderr);
    writes_on(p, 5);
    check_paused(p, "vdb", "vdb after the pivot");

    // Pull: a.qcow2 into a.s2, which then stands alone.
    let done = ok(p, &st(&["blockpull", "vm", "vda", "--wait"]));
    assert!(done.stdout.contains("Pull complete"), "{}", done.stdout);
    assert_eq!(served_chain(p, "vda"), ["a.s2"]);
    writes_on(p, 5);
    check_paused(p, "vda", "vda after the pull");

    // A ready active commit waits for its pivot, mirroring the guest.
    overlay(p, "s3");
    let ready = ok(p, &st(&["blockcommit", "vm", "vdb", "--active", "--wait"]));
    assert!(
        ready.stdout.contains("synchronized phase"),
        "{}",
        ready.stdout
    );
    assert_eq!(job_info(p, "vdb")["phase"], "ready");
    // Nothing else changes the disks meanwhile.
    strata(
        p,
        &st(&["snapshot", "create", "vm", "--name", "x", "--disk-only"]),
    )
    .one_error(1, "block job");
    writes_on(p, 5);
    let pivoted = ok(p, &st(&["blockjob", "vm", "vdb", "--pivot"]));
    assert!(
        pivoted.stdout.contains("Successfully pivoted"),
        "{}",
        pivoted.stdout
    );
    assert_eq!(served_chain(p, "vdb"), ["b.s1", "b.qcow2"]);
    writes_on(p, 5);
    let health = ok(p, &st(&["--output", "json", "checkpoint", "verify", "vm"])).json();
    for h in health.as_array().unwrap() {
        assert!(h["problem"].is_null(), "{health}");
        assert!(h["changed"].as_u64().unwrap() > 0, "{health}");
    }

    stop_and_check_console(p);
    assert_eq!(served_chain(p, "vda"), ["a.s3", "a.s2"]);
    for (disk, top) in [("vda", "a.s3"), ("vdb", "b.s1")] {
        check_stopped(p, top, disk);
        check_fill(p, top);
    }
}

#[test]
fn aborted_jobs_leave_the_chain_as_it_was() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_layered_guest(p, kit);
    let chains = |p: &Path| (served_chain(p, "vda"), served_chain(p, "vdb"));
    let before = chains(p);
    // Slow jobs (1 MiB/s, each has 24 MiB or more to copy), aborted after
    // a random time; and an active commit aborted once ready.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let jobs: [&[&str]; 4] = [
        &["blockcommit", "vm", "vda", "--active", "--bandwidth", "1"],
        &[
            "blockcommit",
            "vm",
            "vda",
            "--top",
            "a.s1",
            "--bandwidth",
            "1",
        ],
        &["blockpull", "vm", "vdb", "--bandwidth", "1"],
        &["blockcommit", "vm", "vdb", "--active", "--wait"],
    ];
    for round in 0..8 {
        let args = jobs[round % jobs.len()];
        let disk = args[2];
        ok(p, &st(args));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 1500));
        let aborted = ok(p, &st(&["blockjob", "vm", disk, "--abort"]));
        assert!(aborted.stdout.contains("Job aborted"), "{}", aborted.stdout);
        assert_eq!(job_info(p, disk)["phase"], "aborted");
        assert_eq!(chains(p), before, "round {round}: the chain changed");
        check_paused(p, disk, &format!("{disk} after abort {round}"));
    }
    writes_on(p, 5);
    stop_and_check_console(p);
    for disk in ["vda", "vdb"] {
        let top = served_chain(p, disk)[0].clone();
        check_stopped(p, &top, disk);
        check_fill(p, &top);
    }
}

#[test]
fn bad_block_jobs_are_refused_clearly() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    strata(p, &st(&["blockcommit", "vm", "vda"])).one_error(1, "--active");
    strata(p, &st(&["blockcommit", "vm", "vda", "--active"])).one_error(1, "no backing file");
    strata(p, &st(&["blockcommit", "vm", "vdz", "--active"])).one_error(1, "no such disk");
    overlay(p, "s1");
    strata(
        p,
        &st(&["blockcommit", "vm", "vda", "--top", "nothere.qcow2"]),
    )
    .one_error(1, "not in the disk's chain");
    strata(p, &st(&["blockjob", "vm", "vda", "--pivot"])).one_error(1, "no block job");
    // A snapshot with metadata keeps a.s1 as it is: no commit into it.
    ok(
        p,
        &st(&["snapshot", "create", "vm", "--name", "kept", "--disk-only"]),
    );
    strata(p, &st(&["blockcommit", "vm", "vda", "--active"])).one_error(1, "snapshot 'kept'");
    assert_eq!(served_chain(p, "vda"), ["a.kept", "a.s1", "a.qcow2"]);
    stop_and_check_console(p);
    strata(p, &st(&["blockcommit", "vm", "vda", "--active"])).one_error(1, "not running");
}

#[test]
fn deleting_external_snapshots_of_a_running_domain_merges_them_live() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    let snap = |name: &str| {
        ok(
            p,
            &st(&["snapshot", "create", "vm", "--name", name, "--disk-only"]),
        );
        writes_on(p, 5);
    };
    snap("s1");
    snap("s2");
    assert_eq!(served_chain(p, "vda"), ["a.s2", "a.s1", "a.qcow2"]);
    // s2's overlay is what the guest writes to: an active commit, pivoted.
    let gone = ok(
        p,
        &st(&["--output", "json", "snapshot", "delete", "vm", "s2"]),
    )
    .json();
    assert!(gone["stall_us"].as_u64().is_some(), "{gone}");
    merged(p, "s1", "s2");
    writes_on(p, 5);
    check_paused(p, "vda", "vda after deleting s2");
    check_paused(p, "vdb", "vdb after deleting s2");
    // s1's overlay is below s3's now: an intermediate commit, re-pointed.
    snap("s3");
    ok(p, &st(&["snapshot", "delete", "vm", "s1"]));
    merged(p, "s3", "s1");
    writes_on(p, 5);
    check_paused(p, "vdb", "vdb after deleting s1");
    let list = ok(p, &st(&["snapshot", "list", "vm", "--name"])).stdout;
    assert_eq!(list.split_whitespace().collect::<Vec<_>>(), ["s3"]);
    stop_and_check_console(p);
    for (disk, top) in [("vda", "a.s3"), ("vdb", "b.s3")] {
        check_stopped(p, top, disk);
    }
    // s3 still reverts to what its disks held then (its image is the
    // merged one now).
    ok(p, &st(&["snapshot", "revert", "vm", "s3"]));
}

/// fio in the guest, round after round: random 4 KiB writes over the first
/// 16 MiB of vda (O_DIRECT, a new seed each round), then every block read
/// back and checked (`--verify=crc32c`); says `FIO-OK n` or `FIO-FAILED n`.
const FIO: &str = "
n=0
while [ $n -lt 100000 ]; do
  n=$((n+1))
  if fio --name=v --filename=/dev/vda --rw=randwrite --bs=4k --size=16M --ioengine=psync --direct=1 --verify=crc32c --do_verify=1 --randseed=$n --eta=never --output=/tmp/fio.out; then
    echo FIO-OK $n
  else
    echo FIO-FAILED $n; cat /tmp/fio.out
  fi
done
";

/// The fio rounds the console has reported passed.
fn fio_rounds(p: &Path) -> u64 {
    let text = std::fs::read_to_string(p.join("vm.console")).unwrap_or_default();
    assert!(!text.contains("FIO-FAILED"), "{text}");
    text.lines()
        .filter_map(|l| l[l.find("FIO-OK ")? + 7..].trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits for `n` more passed fio rounds.
fn fio_on(p: &Path, n: u64) {
    let want = fio_rounds(p) + n;
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while fio_rounds(p) < want {
        if std::time::Instant::now() > until {
            let text = std::fs::read_to_string(p.join("vm.console")).unwrap_or_default();
            panic!("no {want} fio rounds in 120 s; the console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fio_verifies_through_an_intermediate_and_an_active_commit() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "f.qcow2", "128M"]);
    qemu_io(p, "qcow2", "f.qcow2", &["write -P 0x11 64M 16M"]);
    qemu_img(
        p,
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "f.qcow2", "f.s1",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "f.s1",
        &["write -P 0x22 80M 16M", "write -P 0x33 0 16M"],
    );
    qemu_img(
        p,
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "f.s1", "f.s2",
        ],
    );
    define_vm(p, kit, FIO, &["f.s2"], "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    fio_on(p, 1);
    // Slowed down so that fio rounds run through the copies.
    ok(
        p,
        &st(&[
            "blockcommit",
            "vm",
            "vda",
            "--top",
            "f.s1",
            "--bandwidth",
            "8",
            "--wait",
        ]),
    );
    assert_eq!(served_chain(p, "vda"), ["f.s2", "f.qcow2"]);
    fio_on(p, 1);
    ok(
        p,
        &st(&[
            "blockcommit",
            "vm",
            "vda",
            "--active",
            "--pivot",
            "--bandwidth",
            "8",
        ]),
    );
    assert_eq!(served_chain(p, "vda"), ["f.qcow2"]);
    fio_on(p, 2);
    ok(p, &st(&["domain", "destroy", "vm"]));
    fio_rounds(p);
    assert_clean(p, "f.qcow2");
    qemu_io(
        p,
        "qcow2",
        "f.qcow2",
        &["read -P 0x11 64M 16M", "read -P 0x22 80M 16M"],
    );
}

#[test]
fn a_daemon_killed_mid_job_leaves_the_chain_and_the_next_job_works() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let mut daemon = start_layered_guest(p, kit);
    let before = served_chain(p, "vda");
    ok(
        p,
        &st(&["blockcommit", "vm", "vda", "--active", "--bandwidth", "1"]),
    );
    writes_on(p, 5);
    let human = ok(p, &st(&["blockjob", "vm", "vda"])).stdout;
    assert!(
        human.starts_with("Active Block Commit: [") && human.contains("Bandwidth limit: 1 MiB/s"),
        "{human}"
    );
    daemon.kill9();
    let _daemon = DaemonProc::start(p, &[], &[]);
    assert_eq!(domstate(p, "vm"), "running (unpaused)");
    // The job went with its daemon; the chain is as it was.
    strata(p, &st(&["blockjob", "vm", "vda"])).one_error(1, "no block job");
    assert_eq!(served_chain(p, "vda"), before);
    writes_on(p, 5);
    check_paused(p, "vda", "vda after the kill");
    // The next job starts afresh and completes.
    ok(p, &st(&["blockcommit", "vm", "vda", "--active", "--pivot"]));
    assert_eq!(served_chain(p, "vda"), ["a.s1", "a.qcow2"]);
    writes_on(p, 5);
    stop_and_check_console(p);
    check_stopped(p, "a.s1", "vda");
    check_fill(p, "a.s1");
}
