//! `strata repo backup` of a running guest: the records guest writes to
//! two disks while ten backups (a full one, then incrementals) are made
//! by the daemon that serves its disks, the oldest two pruned (with their
//! chunks) after the fourth. Each restores (through `repo
//! restore`) to both disks at one instant: every record acknowledged
//! before the backup began and none after it ended, the two disks a
//! record apart at most; each incremental reads a fraction of the
//! chunks; the job completes and leaves no scratch; the guest never sees
//! an error; after the prune, what is kept still restores its instant.
//! Once the guest is shut off, an offline incremental follows the live
//! ones, and restores to exactly the disks (`qemu-img compare`).

mod common;
use common::records::*;
use common::*;
use std::path::Path;

/// `repo restore` of disk `disk` of backup `id` as raw: its bytes.
fn restore_raw(p: &Path, id: &str, disk: &str) -> Vec<u8> {
    let out = format!("{disk}.{id}.raw");
    ok(
        p,
        &st(&["repo", "restore", "r", id, disk, "-O", "raw", &out]),
    );
    let bytes = std::fs::read(p.join(&out)).unwrap();
    std::fs::remove_file(p.join(&out)).unwrap();
    bytes
}

#[test]
fn live_backups_into_a_repository_hold_their_instant_and_chain_on_offline() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let _daemon = start_records_guest(p, kit);
    ok(p, &st(&["repo", "init", "r"]));
    let mut ids = Vec::new();
    let mut instants = Vec::new();
    for round in 0..10 {
        let before = acked(p);
        let mut args = vec!["--output", "json", "repo", "backup", "r", "vm"];
        if round > 0 {
            args.push("--incremental");
        }
        let made = ok(p, &st(&args)).json();
        let after = acked(p);
        let id = made["id"].as_str().unwrap().to_string();
        let (read, data) = (
            made["read-chunks"].as_u64().unwrap(),
            made["data-chunks"].as_u64().unwrap(),
        );
        if round == 0 {
            assert!(read >= data && data > 0, "{made}");
        } else {
            // The guest writes a few records at the start of each disk and
            // in its slots: a few chunks of the 128 there are.
            assert!(read > 0 && read < 16, "{made}");
            assert_eq!(made["parent"], ids[round - 1], "{made}");
        }
        let job = job_state(p);
        assert_eq!(job["state"], "completed", "{job}");
        assert!(scratch_files(p).is_empty(), "{:?}", scratch_files(p));
        let (a, b) = (restore_raw(p, &id, "vda"), restore_raw(p, &id, "vdb"));
        check_copy(&a, &b, before, after, &format!("round {round}"));
        instants.push((id.clone(), before, after));
        ids.push(serde_json::Value::String(id));
        if round == 3 {
            // Pruned while the guest runs: the older ones go, their
            // chunks too, and the next incremental follows the newest.
            let pr = ok(
                p,
                &st(&[
                    "--output",
                    "json",
                    "repo",
                    "prune",
                    "r",
                    "--keep-last",
                    "2",
                    "--grace",
                    "0s",
                ]),
            )
            .json();
            assert_eq!(pr["removed"], 2, "{pr}");
        }
        writes_on(p, 10);
    }
    // What prune kept still restores its instant.
    let listed = ok(p, &st(&["--output", "json", "repo", "list", "r"])).json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 8, "{listed:?}");
    for (id, before, after) in instants
        .iter()
        .filter(|(id, ..)| listed.contains(&id.as_str()))
    {
        let (a, b) = (restore_raw(p, id, "vda"), restore_raw(p, id, "vdb"));
        check_copy(&a, &b, *before, *after, &format!("backup {id} after prune"));
    }
    // Offline, the next incremental starts from the last live one.
    stop_and_check_console(p);
    let made = ok(
        p,
        &st(&[
            "--output",
            "json",
            "repo",
            "backup",
            "r",
            "vm",
            "--incremental",
        ]),
    )
    .json();
    assert_eq!(made["parent"], ids[9], "{made}");
    assert!(made["read-chunks"].as_u64().unwrap() < 16, "{made}");
    let id = made["id"].as_str().unwrap();
    for (disk, file) in [("vda", "a.qcow2"), ("vdb", "b.qcow2")] {
        let out = format!("{disk}.restored.qcow2");
        ok(
            p,
            &st(&["repo", "restore", "r", id, disk, "-O", "qcow2", &out]),
        );
        qemu_img(p, &["compare", "-q", file, &out]);
    }
    let listed = ok(p, &st(&["--output", "json", "repo", "list", "r"])).json();
    assert_eq!(listed.as_array().unwrap().len(), 9, "{listed}");
    ok(p, &st(&["repo", "verify", "r"]));
}
