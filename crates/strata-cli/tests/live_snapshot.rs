//! Live snapshots and checkpoints of a running guest, all disks at one
//! instant: the guest appends numbered 4 KiB records to vda and then vdb
//! in turn (each write fsynced and checked), printing each number once
//! both writes returned; meanwhile strata takes external, internal and
//! mixed disk-only snapshots and checkpoints. Afterwards each snapshot,
//! read back with qemu-img, holds an unbroken prefix of the records on each
//! disk, vdb's equal to vda's or one shorter, and at least every record the
//! guest had acknowledged before the create began; each checkpoint's
//! bitmaps cover every record written after it, and a full backup of the
//! first snapshot after it plus an incremental push backup since it restore
//! to exactly the disks as they end; every file is clean. The
//! same again with the daemon killed (`kill -9`) five times at random
//! moments, once in the middle of a snapshot, and once stopped gracefully
//! with `--on-stop keep`: each new daemon takes the running guest over,
//! which goes on without an error.

mod common;
use common::daemon::*;
use common::records::*;
use common::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn live_snapshots_hold_one_instant_of_every_disk_and_checkpoints_miss_no_write() {
    run(false);
}

#[test]
fn the_guest_and_every_check_survive_five_kills_and_a_hand_over_of_the_daemon() {
    run(true);
}

/// A small random number source (xorshift), seeded from the clock; the
/// seed is printed so a failing run can be told apart.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn run(kills: bool) {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let mut rng = Rng::new();
    define_records_guest(p, kit, "");
    let mut daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_until(Duration::from_secs(120), "the guest writes", || {
        acked(p) > 20
    });

    // 20 snapshots: external, internal and mixed in turn; a checkpoint
    // after every fourth. Before each, the records acknowledged so far;
    // after each checkpoint, an upper bound of those it can have missed.
    let mut snaps = Vec::new();
    let mut checkpoints = Vec::new();
    let mut stalls = Vec::new();
    for i in 0..20 {
        let name = format!("s{i}");
        let mut args = vec![
            "--output",
            "json",
            "snapshot",
            "create",
            "vm",
            "--name",
            &name,
            "--disk-only",
        ];
        match i % 3 {
            0 => {}
            1 => args.extend([
                "--diskspec",
                "vda,snapshot=internal",
                "--diskspec",
                "vdb,snapshot=internal",
            ]),
            _ => args.extend([
                "--diskspec",
                "vda,snapshot=internal",
                "--diskspec",
                "vdb,snapshot=external",
            ]),
        }
        let before = acked(p);
        if kills && i == 10 {
            // Killed in the middle of the snapshot: it is taken or not.
            let pid = daemon.pid();
            let delay = rng.below(8);
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                signal(pid, libc::SIGKILL);
            });
            let r = strata(p, &st(&args));
            killer.join().unwrap();
            daemon.kill9();
            daemon = DaemonProc::start(p, &[], &[]);
            eprintln!("killed {delay} ms into snapshot {name}: exit {}", r.code);
            if strata(p, &st(&["snapshot", "dumpxml", "vm", &name])).code == 0 {
                snaps.push((name, before));
            }
            continue;
        }
        let made = ok(p, &st(&args)).json();
        stalls.push(made["stall_us"].as_u64().expect("a stall"));
        snaps.push((name, before));
        if kills && [2, 6, 8, 13, 17].contains(&i) {
            std::thread::sleep(Duration::from_millis(rng.below(300)));
            let seen = acked(p);
            if i == 8 {
                // A graceful hand-over (an upgrade): the daemon started
                // after the kill at 6 leaves the guest to the next one.
                assert_eq!(daemon.term(Duration::from_secs(60)), 0);
                assert!(daemon.log().contains("left running for the next daemon"));
            } else {
                daemon.kill9();
            }
            let args: &[&str] = if i == 6 { &["--on-stop", "keep"] } else { &[] };
            daemon = DaemonProc::start(p, args, &[]);
            assert_eq!(domstate(p, "vm"), "running (unpaused)");
            wait_until(Duration::from_secs(60), "the guest writes on", || {
                acked(p) > seen + 5
            });
        }
        if i % 4 == 3 {
            let cp = format!("c{}", i / 4);
            let made = ok(
                p,
                &st(&[
                    "--output",
                    "json",
                    "checkpoint",
                    "create",
                    "vm",
                    "--name",
                    &cp,
                ]),
            )
            .json();
            stalls.push(made["stall_us"].as_u64().expect("a stall"));
            checkpoints.push((cp, acked(p)));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // The API shows the tops served now (s18 was external on both).
    let info = curl_json(p, "GET", "/v1/domains/vm", None, 200);
    for (k, top) in ["a.s18", "b.s18"].iter().enumerate() {
        let source = info["disks"][k]["source"].as_str().unwrap_or_default();
        assert!(source.ends_with(top), "disk {k} shows {source}: {info}");
    }
    // The tree and the current snapshot read while it runs.
    let tree = ok(p, &st(&["snapshot", "list", "vm", "--tree"])).stdout;
    assert!(tree.contains("s0") && tree.contains("s19"), "{tree}");
    assert_eq!(
        ok(p, &st(&["snapshot", "current", "vm", "--name"])).stdout,
        "s19\n"
    );
    // The guest goes on writing after the last snapshot, then is stopped.
    let last = acked(p);
    wait_until(Duration::from_secs(60), "the guest writes on", || {
        acked(p) > last + 20
    });
    ok(p, &st(&["domain", "destroy", "vm"]));
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(!console.contains("WRITE-FAILED"), "{console}");
    assert!(!console.contains("I/O error"), "{console}");
    eprintln!("stalls (µs): {stalls:?}");

    // Every snapshot is one instant of both disks.
    let dom = ok(p, &st(&["domain", "dumpxml", "vm"]))
        .stdout
        .replace('"', "'");
    let top = |t: &str| {
        let at = dom.find(&format!("dev='{t}'")).unwrap();
        let src = dom[..at].rfind("<source file='").unwrap() + "<source file='".len();
        dom[src..src + dom[src..].find('\'').unwrap()].to_string()
    };
    let chains = [chain(p, &top("vda")), chain(p, &top("vdb"))];
    for (name, before) in &snaps {
        let mut got = Vec::new();
        for (k, dev) in ["vda", "vdb"].iter().enumerate() {
            let raw = disk_at(p, &chains[k], name, dev);
            got.push(prefix(&raw, &format!("{name} {dev}")));
        }
        let (a, b) = (got[0], got[1]);
        assert!(b == a || b + 1 == a, "{name}: vda has {a} records, vdb {b}");
        assert!(
            b >= *before,
            "{name}: {b} records, {before} acknowledged before"
        );
    }

    // Each checkpoint's bitmaps, over every layer and every later
    // checkpoint, cover every record written after it.
    for (i, (cp, bound)) in checkpoints.iter().enumerate() {
        for chain in &chains {
            let mut dirty = Vec::new();
            for f in chain {
                for (later, _) in &checkpoints[i..] {
                    dirty.extend(extents(p, f, later));
                }
            }
            let written = prefix(&read_raw(p, &chain[0], None), "now");
            for k in bound + 2..=written {
                let (start, end) = (k * 4096, k * 4096 + 4096);
                assert!(
                    dirty.iter().any(|&(o, l)| o <= start && end <= o + l),
                    "{cp}: record {k} (written after it) is in no bitmap of {chain:?}"
                );
            }
        }
    }
    // A full backup of the first snapshot after each checkpoint plus an
    // incremental push backup since the checkpoint (taken now, from the
    // checkpoint's bitmaps and every later one) restore to exactly the
    // disks as they are.
    for (i, (cp, _)) in checkpoints.iter().enumerate() {
        let Some((base, _)) = snaps
            .iter()
            .find(|(n, _)| n[1..].parse::<usize>().unwrap() > 4 * i + 3)
        else {
            continue;
        };
        std::fs::write(p.join("b.xml"), incremental_xml(p, cp)).unwrap();
        let r = ok(
            p,
            &st(&[
                "--output",
                "json",
                "backup",
                "begin",
                "vm",
                "--backupxml",
                "b.xml",
            ]),
        )
        .json();
        assert_eq!(r["state"], "completed", "{r}");
        for (k, dev) in ["vda", "vdb"].iter().enumerate() {
            std::fs::write(p.join("full.raw"), disk_at(p, &chains[k], base, dev)).unwrap();
            let inc = format!("{dev}.inc");
            qemu_img(p, &["rebase", "-u", "-F", "raw", "-b", "full.raw", &inc]);
            let restored = read_raw(p, &inc, None);
            let now = read_raw(p, &chains[k][0], None);
            assert!(
                restored == now,
                "{dev}: {base} plus the incremental since {cp} is not the disk: {} records, not {}",
                prefix(&restored, "restored"),
                prefix(&now, "now")
            );
            std::fs::remove_file(p.join(&inc)).unwrap();
        }
    }
    // No corruption anywhere; after kills, leaked clusters are allowed (as
    // after any crash: exit 3), never more.
    for chain in &chains {
        for f in chain {
            let r = run_in(p, "qemu-img", &["check", f]);
            let fine = if kills {
                [0, 3].contains(&r.code)
            } else {
                r.code == 0
            };
            assert!(
                fine,
                "qemu-img check {f}: exit {}\n{}{}",
                r.code, r.stdout, r.stderr
            );
        }
    }
}

/// Disk `dev` as snapshot `name` holds it: the internal snapshot in the
/// file of `chain` that holds it, or the image below the overlay the
/// snapshot made.
fn disk_at(p: &Path, chain: &[String], name: &str, dev: &str) -> Vec<u8> {
    let xml = ok(p, &st(&["snapshot", "dumpxml", "vm", name]))
        .stdout
        .replace('"', "'");
    let at = xml.find(&format!("<disk name='{dev}'")).unwrap();
    let disk = &xml[at..at + xml[at..].find("</disk>").unwrap_or(xml.len() - at)];
    if disk.contains("snapshot='internal'") {
        let f = holder(p, chain, name);
        read_raw(p, &f, Some(name))
    } else {
        let src = disk.find("<source file='").unwrap() + "<source file='".len();
        let overlay = &disk[src..src + disk[src..].find('\'').unwrap()];
        let below = &common::records::chain(p, overlay)[1];
        read_raw(p, below, None)
    }
}

/// A push backup of both disks since checkpoint `cp`, to `vda.inc` and
/// `vdb.inc` (qcow2: only what changed is allocated).
fn incremental_xml(p: &Path, cp: &str) -> String {
    let dir = p.display();
    format!(
        "<domainbackup mode='push'><incremental>{cp}</incremental><disks>\
         <disk name='vda' type='file'><target file='{dir}/vda.inc'/><driver type='qcow2'/></disk>\
         <disk name='vdb' type='file'><target file='{dir}/vdb.inc'/><driver type='qcow2'/></disk>\
         </disks></domainbackup>"
    )
}
