//! `strata backup`: push backups of a powered-off domain. A full backup and
//! three incrementals, each creating the next checkpoint, with an external
//! snapshot in the middle, restore (rebased onto each other and converted
//! back by qemu-img) to exactly the disk contents at each checkpoint; the
//! XML written validates against libvirt's domainbackup schema; bad
//! requests change nothing; a job whose process died is reaped.

mod common;
use common::*;
use std::path::Path;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domainbackup.rng";

/// The active image of disk `dev` of domain `vm`, from its dumpxml.
fn active(p: &Path, dev: &str) -> String {
    let xml = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    let disk = xml
        .split("<disk")
        .find(|c| c.contains(&format!("dev=\"{dev}\"")) || c.contains(&format!("dev='{dev}'")))
        .unwrap_or_else(|| panic!("no disk {dev} in {xml}"));
    let at = disk.find("file=").expect("a source file") + 6;
    disk[at..at + disk[at..].find(['"', '\'']).unwrap()].to_string()
}

/// The guest contents of disk `dev` now, by qemu-img, saved as `name`.
fn snapshot_contents(p: &Path, dev: &str, name: &str) {
    let src = active(p, dev);
    qemu_img(p, &["convert", "-U", "-O", "raw", &src, name]);
}

/// Writes `xml` to `file` in `p` and checks it against libvirt's schema.
fn valid(p: &Path, file: &str, xml: &str, schema: &str) {
    std::fs::write(p.join(file), xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", schema, file]).expect(0);
}

fn backup_xml(p: &Path, incremental: Option<&str>, round: usize) -> String {
    let dir = p.display();
    let inc = incremental
        .map(|c| format!("<incremental>{c}</incremental>"))
        .unwrap_or_default();
    format!(
        "<domainbackup mode='push'>{inc}<disks>\
         <disk name='vda' type='file'><target file='{dir}/vda.b{round}'/><driver type='qcow2'/></disk>\
         <disk name='vdb' type='file'><target file='{dir}/vdb.b{round}'/></disk>\
         </disks></domainbackup>"
    )
}

fn checkpoint_xml(name: &str) -> String {
    format!("<domaincheckpoint><name>{name}</name></domaincheckpoint>")
}

/// Runs backup round `round` (full when `since` is `None`), creating
/// checkpoint `c{round}`, and saves the disks' contents at that moment.
fn backup_round(p: &Path, since: Option<&str>, round: usize) {
    std::fs::write(p.join("b.xml"), backup_xml(p, since, round)).unwrap();
    std::fs::write(p.join("c.xml"), checkpoint_xml(&format!("c{round}"))).unwrap();
    let r = backup_begin(p, "b.xml", "c.xml");
    assert_eq!(r["done"], r["total"], "{r}");
    for dev in ["vda", "vdb"] {
        snapshot_contents(p, dev, &format!("{dev}.at{round}.raw"));
    }
    let xml = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    valid(p, &format!("backup{round}.xml"), &xml, SCHEMA);
    let mode = if since.is_some() {
        "incremental"
    } else {
        "full"
    };
    assert!(xml.contains(&format!("backupmode=\"{mode}\"")), "{xml}");
}

/// Random-ish writes, zeroes and discards through qemu-io on the disk's
/// active image.
fn churn(p: &Path, dev: &str, seed: u64) {
    let src = active(p, dev);
    let mut x = seed * 7919 + 13;
    let mut cmds = Vec::new();
    for _ in 0..12 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (x >> 33) % (8 << 20);
        let len = 4096 + (x >> 20) % (300 << 10);
        let len = len.min((8 << 20) - at);
        cmds.push(match (x >> 8) % 4 {
            0 => format!("write -z {at} {len}"),
            1 => format!("discard {at} {len}"),
            _ => format!("write -P {} {at} {len}", (seed + (x >> 40)) % 255 + 1),
        });
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(p, "qcow2", &src, &refs);
}

#[test]
fn full_and_three_incrementals_across_an_external_snapshot_restore_each_checkpoint() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    backup_round(p, None, 0);
    for round in 1..=3 {
        churn(p, "vda", round as u64);
        churn(p, "vdb", 100 + round as u64);
        if round == 2 {
            ok(
                p,
                &st(&["snapshot", "create", "vm", "--name", "s1", "--disk-only"]),
            );
            churn(p, "vda", 50);
        }
        backup_round(p, Some(&format!("c{}", round - 1)), round);
    }
    for f in ["vda.b0", "vda.b1", "vda.b2", "vda.b3", "vdb.b0", "vdb.b3"] {
        assert_clean(p, f);
    }
    // Each incremental holds only what changed: far less than the disk.
    let full = qemu_img(p, &["info", "--output=json", "vda.b0"]).json()["actual-size"]
        .as_u64()
        .unwrap();
    assert!(full > 0);
    // Restore each point: chain the backups with qemu-img and convert.
    for dev in ["vda", "vdb"] {
        for round in 1..=3usize {
            let fmt = "qcow2";
            let cur = format!("{dev}.b{round}");
            let prev = format!("{dev}.b{}", round - 1);
            qemu_img(
                p,
                &["rebase", "-u", "-f", fmt, "-F", fmt, "-b", &prev, &cur],
            );
        }
        for round in 0..=3usize {
            let out = format!("{dev}.restored{round}.raw");
            qemu_img(
                p,
                &["convert", "-O", "raw", &format!("{dev}.b{round}"), &out],
            );
            assert_same(p, &out, &format!("{dev}.at{round}.raw"));
        }
        // And the rounds differ, so the comparison can fail.
        assert_differ(p, &format!("{dev}.at0.raw"), &format!("{dev}.at3.raw"));
    }
    let status = ok(p, &st(&["backup", "status", "vm"])).stdout;
    assert!(status.contains("Completed"), "{status}");
    let cps = ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout;
    assert_eq!(cps, "c0\nc1\nc2\nc3\n\n");
}

#[test]
fn a_raw_target_and_the_default_target_name() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let dir = p.display();
    std::fs::write(
        p.join("b.xml"),
        format!(
            "<domainbackup><disks><disk name='vdb' type='file'>\
             <target file='{dir}/vdb.raw'/><driver type='raw'/></disk></disks></domainbackup>"
        ),
    )
    .unwrap();
    ok(p, &st(&["backup", "begin", "vm", "--backupxml", "b.xml"]));
    assert_same(p, "vdb.raw", "vdb.qcow2");
    assert!(!p.join("vda.b0").exists());
    let xml = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    valid(p, "out.xml", &xml, SCHEMA);
    assert!(xml.contains("<disk name=\"vda\" backup=\"no\"/>"), "{xml}");
    // No XML: every disk, full, qcow2, named SOURCE.TIME.
    ok(p, &st(&["backup", "begin", "vm"]));
    let xml = ok(p, &st(&["backup", "dumpxml", "vm"])).stdout;
    valid(p, "out2.xml", &xml, SCHEMA);
    for dev in ["vda", "vdb"] {
        let prefix = format!("{dir}/{dev}.qcow2.");
        let at = xml.find(&prefix).unwrap_or_else(|| panic!("{xml}"));
        let name = &xml[at..at + xml[at..].find('"').unwrap()];
        assert_eq!(
            qemu_img(p, &["info", "--output=json", name]).json()["format"],
            "qcow2"
        );
        assert_same(p, name, &format!("{dev}.qcow2"));
    }
}

#[test]
fn bad_requests_change_nothing() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c0"]));
    let dir = p.display();
    std::fs::write(p.join("exists"), b"x").unwrap();
    let cases = [
        (
            format!("<domainbackup><disks><disk name='vda' type='file'><target file='{dir}/exists'/></disk></disks></domainbackup>"),
            "exists (--reuse-external",
        ),
        (
            "<domainbackup><incremental>nope</incremental></domainbackup>".to_string(),
            "checkpoint 'nope' not found",
        ),
        (
            "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>".to_string(),
            "disk 'vdz' is not a disk of the domain",
        ),
        (
            "<domainbackup><server name='localhost'/></domainbackup>".to_string(),
            "<server> is for mode='pull' only",
        ),
        (
            format!("<domainbackup><disks><disk name='vda' type='file'><target file='{dir}/t'/><driver type='vmdk'/></disk></disks></domainbackup>"),
            "'vmdk' is not qcow2 or raw",
        ),
        (
            format!("<domainbackup><disks><disk name='vda' type='file'><target file='{dir}/no/such/dir/t'/></disk></disks></domainbackup>"),
            "no/such/dir/t",
        ),
        ("<domainbackup><disks>".to_string(), "--backupxml b.xml: invalid XML"),
    ];
    std::fs::write(p.join("b.xml"), "").unwrap();
    let before = std::fs::read_dir(p).unwrap().count();
    for (xml, want) in &cases {
        std::fs::write(p.join("b.xml"), xml).unwrap();
        let line =
            strata(p, &st(&["backup", "begin", "vm", "--backupxml", "b.xml"])).one_error(1, want);
        assert!(line.contains("domain 'vm'"), "{line}");
        assert_eq!(std::fs::read_dir(p).unwrap().count(), before, "{xml}");
    }
    // A checkpoint that exists is refused before anything is copied.
    std::fs::write(p.join("c.xml"), checkpoint_xml("c0")).unwrap();
    strata(
        p,
        &st(&["backup", "begin", "vm", "--checkpointxml", "c.xml"]),
    )
    .one_error(1, "checkpoint 'c0' already exists");
    assert_eq!(std::fs::read_dir(p).unwrap().count(), before + 1);
    assert_eq!(
        ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout,
        "c0\n\n"
    );
    strata(p, &st(&["backup", "abort", "vm"])).one_error(1, "no backup job is running");
}

#[test]
fn a_job_whose_process_died_is_reaped() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    // A target that is a FIFO blocks the job's process in open(): it is
    // running, with a file made (vda's), when it is killed.
    let dir = p.display();
    run_in(p, "mkfifo", &["fifo"]).expect(0);
    std::fs::write(
        p.join("b.xml"),
        format!(
            "<domainbackup><disks>\
             <disk name='vda' type='file'><target file='{dir}/vda.part'/></disk>\
             <disk name='vdb' type='file'><target file='{dir}/fifo'/><driver type='raw'/></disk>\
             </disks></domainbackup>"
        ),
    )
    .unwrap();
    // --reuse-external needs every target to exist: make vda's.
    qemu_img(p, &["create", "-q", "-f", "qcow2", "vda.part", "8M"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(st(&[
            "backup",
            "begin",
            "vm",
            "--backupxml",
            "b.xml",
            "--reuse-external",
        ]))
        .current_dir(p)
        .spawn()
        .unwrap();
    let mut running = false;
    for _ in 0..500 {
        let r = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
        if r["state"] == "running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(running, "the job never showed as running");
    // abort asks the live process to stop; it cannot (blocked), so kill it.
    child.kill().unwrap();
    child.wait().unwrap();
    let r = ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json();
    assert_eq!(r["state"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("ended"), "{r}");
    // Reused targets are the user's: they stay.
    assert!(p.join("vda.part").exists());
    let text = ok(p, &st(&["backup", "status", "vm"])).stdout;
    assert!(text.contains("Job type:         Failed"), "{text}");
}
