//! `strata repo` on a domain that is not running, with QEMU's tools as the
//! oracle: every backup of a ten-round incremental-forever series of two
//! disks restores (qcow2 and raw) to exactly the disks at its instant
//! (`qemu-img compare`), each incremental reading only the chunks that
//! changed; damage is named by `verify` with the backups it hits and
//! refused by their restore; an encrypted repository needs its key and
//! shows no plaintext; a backup killed at any point leaves the repository
//! sound, lists no half backup, and the next backup is still incremental.

mod common;
use common::*;

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Domain `vm` with disks vda (48 MiB) and vdb (22 MiB, not a whole
/// number of chunks), defined in `state`.
fn two_disk_domain(p: &Path) {
    let mut disks = String::new();
    for (t, size) in [("vda", "48M"), ("vdb", "22M")] {
        qemu_img(
            p,
            &["create", "-q", "-f", "qcow2", &format!("{t}.qcow2"), size],
        );
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}/{t}.qcow2'/><target dev='{t}' bus='virtio'/></disk>",
            p.display()
        ));
    }
    std::fs::write(
        p.join("vm.xml"),
        format!("<domain type='kvm'><name>vm</name><memory unit='MiB'>256</memory><devices>{disks}</devices></domain>"),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
}

/// Guest-like writes: a few runs of data or zeros on each disk; the
/// chunks (1 MiB, the default) they touched.
fn scribble(p: &Path, rng: &mut impl Rng) -> u64 {
    let mut touched = 0;
    for (t, size) in [("vda", 48 * MIB), ("vdb", 22 * MIB)] {
        let mut cmds = Vec::new();
        let mut chunks = std::collections::BTreeSet::new();
        for _ in 0..rng.gen_range(1..4) {
            let len = rng.gen_range(1..64u64) * 4096;
            let off = rng.gen_range(0..(size - len) / 512) * 512;
            cmds.push(if rng.gen_bool(0.2) {
                format!("write -z {off} {len}")
            } else {
                format!("write -P {} {off} {len}", rng.gen_range(1..255))
            });
            chunks.extend(off / MIB..=(off + len - 1) / MIB);
        }
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(p, "qcow2", &format!("{t}.qcow2"), &cmds);
        touched += chunks.len() as u64;
    }
    touched
}

fn json_of(p: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--output", "json"];
    a.extend_from_slice(args);
    let r = ok(p, &st(&a));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn every_backup_of_ten_incremental_rounds_restores_its_instant() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    let r = ok(p, &st(&["repo", "init", "r"]));
    assert_eq!(r.stdout, "Initialized strata repository at r\n");
    strata(p, &st(&["repo", "init", "r"])).one_error(1, "a repository is there already");
    strata(p, &st(&["repo", "backup", "r", "vm", "--incremental"]))
        .one_error(1, "nothing to be incremental from");
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut ids = Vec::new();
    for round in 0..10 {
        let touched = scribble(p, &mut rng);
        let args: Vec<&str> = if round == 0 {
            vec!["repo", "backup", "r", "vm"]
        } else {
            vec!["repo", "backup", "r", "vm", "--incremental"]
        };
        let b = json_of(p, &args);
        if round > 0 {
            let read = b["read-chunks"].as_u64().unwrap();
            assert!(
                read <= touched,
                "round {round}: {read} chunks read, {touched} touched"
            );
        }
        assert_eq!(b["disks"], serde_json::json!(["vda", "vdb"]));
        let id = b["id"].as_str().unwrap().to_string();
        for t in ["vda", "vdb"] {
            std::fs::copy(
                p.join(format!("{t}.qcow2")),
                p.join(format!("{id}.{t}.qcow2")),
            )
            .unwrap();
        }
        ids.push(id);
    }
    // One checkpoint per repository: the last backup's.
    let cps = ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout;
    assert!(
        cps.trim().starts_with("repo-")
            && cps.trim().ends_with(&format!("-{}", ids[9]))
            && cps.trim().lines().count() == 1,
        "{cps}"
    );
    let listed = json_of(p, &["repo", "list", "r", "vm"]);
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);
    for (k, id) in ids.iter().enumerate() {
        for t in ["vda", "vdb"] {
            let (fmt, dst) = if k % 2 == 0 {
                ("qcow2", "out.qcow2")
            } else {
                ("raw", "out.raw")
            };
            ok(p, &st(&["repo", "restore", "r", id, t, "-O", fmt, dst]));
            assert_same(p, &format!("{id}.{t}.qcow2"), dst);
            if fmt == "qcow2" {
                assert_clean(p, dst);
            }
            std::fs::remove_file(p.join(dst)).unwrap();
        }
    }
    let v = ok(p, &st(&["repo", "verify", "r"]));
    assert!(v.stdout.ends_with("all sound\n"), "{}", v.stdout);
    // Restores are sparse where the disk reads as zeros.
    ok(
        p,
        &st(&[
            "repo",
            "restore",
            "r",
            &ids[0],
            "vda",
            "-O",
            "qcow2",
            "sparse.qcow2",
        ]),
    );
    let map = run_in(p, "qemu-img", &["map", "--output=json", "sparse.qcow2"])
        .expect(0)
        .stdout;
    let data: u64 = serde_json::from_str::<serde_json::Value>(&map)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(data < 8 * MIB, "{data} bytes of data in a sparse restore");
    // What cannot be restored is refused, naming it; nothing is written.
    strata(
        p,
        &st(&["repo", "restore", "r", &ids[0], "vdz", "-O", "raw", "x.raw"]),
    )
    .one_error(1, "has no disk 'vdz' (it has vda, vdb)");
    strata(
        p,
        &st(&["repo", "restore", "r", "nope", "vda", "-O", "raw", "x.raw"]),
    )
    .one_error(1, "backups/nope: missing");
    strata(
        p,
        &st(&[
            "repo", "restore", "r", &ids[0], "vda", "-O", "raw", "vm.xml",
        ]),
    )
    .one_error(1, "exists; a restore never overwrites");
    assert!(!p.join("x.raw").exists());
}

#[test]
fn damage_is_named_and_only_the_backups_it_hits_fail_to_restore() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    ok(p, &st(&["repo", "init", "r"]));
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 7 0 1M"]);
    let a = json_of(p, &["repo", "backup", "r", "vm"]);
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 8 0 1M"]);
    let b = json_of(p, &["repo", "backup", "r", "vm", "--incremental"]);
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    // vdb's chunk 0 is only in the second backup: damage it.
    let chunks: Vec<_> = walk(&p.join("r/chunks"));
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    ok(
        p,
        &st(&["repo", "restore", "r", a, "vdb", "-O", "raw", "a-vdb.raw"]),
    );
    let victim = chunks
        .iter()
        .find(|c| {
            let mut bytes = std::fs::read(c).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            std::fs::write(c, &bytes).unwrap();
            let hit = strata(
                p,
                &st(&["repo", "restore", "r", a, "vda", "-O", "raw", "probe.raw"]),
            )
            .code
                == 0;
            let _ = std::fs::remove_file(p.join("probe.raw"));
            bytes[mid] ^= 1;
            std::fs::write(c, &bytes).unwrap();
            hit
        })
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&victim, &bytes).unwrap();
    let name = victim
        .strip_prefix(p.join("r"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let v = strata(p, &st(&["repo", "verify", "r"])).expect(1);
    assert!(
        v.stdout.contains(&format!("{name}: ")) && v.stdout.contains(&format!("(backups: {b})")),
        "{}",
        v.stdout
    );
    assert!(v.stdout.ends_with("1 damaged object(s)\n"), "{}", v.stdout);
    let j = serde_json::from_str::<serde_json::Value>(
        &strata(p, &st(&["--output", "json", "repo", "verify", "r", b]))
            .expect(1)
            .stdout,
    )
    .unwrap();
    assert_eq!(j["problems"][0]["object"], name.as_str());
    strata(
        p,
        &st(&["repo", "restore", "r", b, "vdb", "-O", "raw", "b-vdb.raw"]),
    )
    .one_error(1, &name);
    assert!(!p.join("b-vdb.raw").exists(), "a half restore was left");
    // The first backup does not use it: it restores, and verifies alone.
    ok(
        p,
        &st(&[
            "repo",
            "restore",
            "r",
            a,
            "vda",
            "-O",
            "qcow2",
            "a-vda.qcow2",
        ]),
    );
    ok(p, &st(&["repo", "verify", "r", a]));
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_encrypted_repository_needs_its_key_and_shows_no_plaintext() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    let text = b"STRATA-REPO-KNOWN-PLAINTEXT ".repeat(4096);
    std::fs::write(p.join("plain.bin"), &text).unwrap();
    let len = text.len().to_string();
    qemu_io(
        p,
        "qcow2",
        "vda.qcow2",
        &[&format!("write -s plain.bin 0 {len}")],
    );
    std::fs::write(p.join("key"), b"a passphrase in a file\n").unwrap();
    std::fs::write(p.join("wrong"), b"another one\n").unwrap();
    let r = ok(p, &st(&["repo", "init", "r", "--key-file", "key"]));
    assert_eq!(r.stdout, "Initialized encrypted strata repository at r\n");
    let b = json_of(p, &["repo", "backup", "r", "vm", "--key-file", "key"]);
    strata(p, &st(&["repo", "list", "r"]))
        .one_error(1, "the repository is encrypted: give its key");
    strata(p, &st(&["repo", "list", "r", "--key-file", "wrong"])).one_error(1, "wrong key");
    let id = b["id"].as_str().unwrap();
    ok(
        p,
        &st(&[
            "repo",
            "restore",
            "r",
            id,
            "vda",
            "-O",
            "qcow2",
            "out.qcow2",
            "--key-file",
            "key",
        ]),
    );
    assert_same(p, "vda.qcow2", "out.qcow2");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    c.current_dir(p)
        .args(st(&["repo", "verify", "r"]))
        .env("STRATA_REPO_KEY_FILE", "key");
    assert!(
        c.status().unwrap().success(),
        "the key from the environment"
    );
    for f in walk(&p.join("r")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(20).any(|w| w == &text[..20]),
            "plaintext in {}",
            f.display()
        );
    }
}

#[test]
fn a_backup_killed_anywhere_leaves_a_sound_repository_and_the_next_is_incremental() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    // Enough data for a backup to take a while: random bytes, compressed
    // and hashed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let data: Vec<u8> = (0..40 * MIB).map(|_| rng.gen()).collect();
    std::fs::write(p.join("rand.bin"), &data).unwrap();
    qemu_io(
        p,
        "qcow2",
        "vda.qcow2",
        &[&format!("write -s rand.bin 0 {}", 40 * MIB)],
    );
    ok(p, &st(&["repo", "init", "r"]));
    ok(p, &st(&["repo", "backup", "r", "vm"]));
    let mut finished = 1;
    for k in 0..20u64 {
        // A change each time, so each backup has something to write.
        qemu_io(
            p,
            "qcow2",
            "vdb.qcow2",
            &[&format!("write -P {} {} 64k", k + 1, k * MIB)],
        );
        let full = k % 2 == 0;
        let mut args = st(&["repo", "backup", "r", "vm"]);
        if !full {
            args.push("--incremental");
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .current_dir(p)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(0..if full { 250 } else { 40 }),
        ));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            finished += 1;
        }
        let v = strata(p, &st(&["repo", "verify", "r"]));
        assert_eq!(v.code, 0, "after kill {k}: {}", v.stdout);
    }
    // The kills fell while backups ran, not only after.
    assert!(
        finished <= 18,
        "{finished} of 21 backups finished before their kill"
    );
    // No half backup: every listed one restores vda as it is now.
    let listed = json_of(p, &["repo", "list", "r"]);
    let listed = listed.as_array().unwrap();
    assert!(
        listed.len() >= finished,
        "{} listed, {finished} finished",
        listed.len()
    );
    for b in listed.iter().rev().take(3) {
        let id = b["id"].as_str().unwrap();
        ok(
            p,
            &st(&["repo", "restore", "r", id, "vda", "-O", "raw", "vda.raw"]),
        );
        assert_same(p, "vda.qcow2", "vda.raw");
        std::fs::remove_file(p.join("vda.raw")).unwrap();
    }
    // The next backup works and is incremental: it reads what changed.
    qemu_io(p, "qcow2", "vdb.qcow2", &["write -P 99 0 64k"]);
    let b = json_of(p, &["repo", "backup", "r", "vm", "--incremental"]);
    assert!(b["parent"].is_string(), "{b}");
    assert!(b["read-chunks"].as_u64().unwrap() <= 6, "{b}");
    let id = b["id"].as_str().unwrap();
    for t in ["vda", "vdb"] {
        ok(
            p,
            &st(&["repo", "restore", "r", id, t, "-O", "qcow2", "now.qcow2"]),
        );
        assert_same(p, &format!("{t}.qcow2"), "now.qcow2");
        std::fs::remove_file(p.join("now.qcow2")).unwrap();
    }
    // Only its checkpoint is left: the killed ones' went too (the last
    // kill may have left one, between its checkpoint and its manifest).
    let cps = ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout;
    assert_eq!(cps.trim().lines().count(), 1, "{cps}");
    assert!(cps.trim().ends_with(id), "{cps}");
    // And its bitmaps alone are in the disks, tracking: no killed
    // backup's bitmap left behind (as qemu-img sees them).
    for t in ["vda", "vdb"] {
        let info: serde_json::Value = serde_json::from_str(
            &qemu_img(p, &["info", "--output=json", &format!("{t}.qcow2")]).stdout,
        )
        .unwrap();
        let names: Vec<(&str, bool)> = info["format-specific"]["data"]["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let auto = b["flags"].as_array().unwrap().iter().any(|f| f == "auto");
                (b["name"].as_str().unwrap(), auto)
            })
            .collect();
        assert_eq!(names, [(cps.trim(), true)], "{t}");
    }
}

#[test]
fn a_raw_disk_is_backed_up_whole_and_the_qcow2_one_incrementally() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "vda.qcow2", "16M"]);
    qemu_img(p, &["create", "-q", "-f", "raw", "vdb.raw", "8M"]);
    let disk = |t: &str, f: &str, fmt: &str| {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}/{f}'/><target dev='{t}' bus='virtio'/></disk>",
            p.display()
        )
    };
    std::fs::write(
        p.join("vm.xml"),
        format!(
            "<domain type='kvm'><name>vm</name><memory unit='MiB'>256</memory><devices>{}{}</devices></domain>",
            disk("vda", "vda.qcow2", "qcow2"),
            disk("vdb", "vdb.raw", "raw")
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    ok(p, &st(&["repo", "init", "r"]));
    qemu_io(p, "raw", "vdb.raw", &["write -P 4 0 1M"]);
    ok(p, &st(&["repo", "backup", "r", "vm"]));
    // The checkpoint tracks vda only.
    let cp = ok(p, &st(&["checkpoint", "list", "vm", "--name"])).stdout;
    let xml = ok(p, &st(&["checkpoint", "dumpxml", "vm", cp.trim()])).stdout;
    assert!(
        xml.contains("name=\"vdb\" checkpoint=\"no\"")
            || xml.contains("name='vdb' checkpoint='no'"),
        "{xml}"
    );
    qemu_io(p, "qcow2", "vda.qcow2", &["write -P 5 4M 64k"]);
    qemu_io(p, "raw", "vdb.raw", &["write -P 6 2M 64k"]);
    strata(p, &st(&["repo", "backup", "r", "vm", "--incremental"]))
        .one_error(1, "disk 'vdb': the changes since backup");
    let r = strata(
        p,
        &st(&[
            "--output",
            "json",
            "repo",
            "backup",
            "r",
            "vm",
            "--incremental",
            "--fallback-full",
        ]),
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: a full backup was made: disk 'vdb'"),
        "{}",
        r.stderr
    );
    let b: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // vda: its one changed chunk; vdb: whole (its second chunk is a hole,
    // read only where the file system cannot tell holes).
    let read = b["read-chunks"].as_u64().unwrap();
    assert!((2..=3).contains(&read), "{b}");
    let id = b["id"].as_str().unwrap();
    ok(
        p,
        &st(&["repo", "restore", "r", id, "vda", "-O", "qcow2", "a.qcow2"]),
    );
    assert_same(p, "vda.qcow2", "a.qcow2");
    ok(
        p,
        &st(&["repo", "restore", "r", id, "vdb", "-O", "raw", "b.raw"]),
    );
    assert_same(p, "vdb.raw", "b.raw");
}

/// The bytes of every file under `dir`.
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

#[test]
fn prune_keeps_what_its_rules_say_and_what_is_kept_still_restores() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    ok(p, &st(&["repo", "init", "r"]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let mut ids = Vec::new();
    for round in 0..6 {
        scribble(p, &mut rng);
        // Each backup holds a chunk no other does.
        let mark = format!("write -P {} 0 64k", round + 1);
        qemu_io(p, "qcow2", "vda.qcow2", &[&mark]);
        let mut args = vec!["repo", "backup", "r", "vm"];
        if round > 0 {
            args.push("--incremental");
        }
        let b = json_of(p, &args);
        ids.push(b["id"].as_str().unwrap().to_string());
        for t in ["vda", "vdb"] {
            std::fs::copy(
                p.join(format!("{t}.qcow2")),
                p.join(format!("{t}.{round}.qcow2")),
            )
            .unwrap();
        }
    }
    let listed = || -> Vec<String> {
        json_of(p, &["repo", "list", "r"])
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Without a rule, or with a rule keeping nothing, nothing goes.
    strata(p, &st(&["repo", "prune", "r"])).one_error(1, "needs a rule");
    strata(p, &st(&["repo", "prune", "r", "--keep-last", "0"])).one_error(2, "--keep-last");
    strata(
        p,
        &st(&["repo", "prune", "r", "--keep-last", "1", "--grace", "1y"]),
    )
    .one_error(2, "--grace");
    // A dry run says what would go and changes nothing.
    let before = stored_bytes(&p.join("r"));
    let dry = json_of(p, &["repo", "prune", "r", "--keep-last", "2", "--dry-run"]);
    assert_eq!(dry["removed"], 4, "{dry}");
    assert_eq!(listed(), ids);
    assert_eq!(stored_bytes(&p.join("r")), before);
    // Within the default grace period (24 h), the chunks stay.
    let pr = json_of(p, &["repo", "prune", "r", "--keep-last", "4"]);
    assert_eq!(pr["removed"], 2, "{pr}");
    assert_eq!(pr["gc"]["chunks-deleted"], 0, "{pr}");
    assert!(pr["gc"]["chunks-in-grace"].as_u64().unwrap() > 0, "{pr}");
    assert_eq!(listed(), ids[2..]);
    // Without one, what only the removed backups named goes.
    let chunks = stored_bytes(&p.join("r/chunks"));
    let pr = json_of(
        p,
        &["repo", "prune", "r", "--keep-last", "2", "--grace", "0s"],
    );
    assert_eq!(pr["removed"], 2, "{pr}");
    assert!(pr["gc"]["chunks-deleted"].as_u64().unwrap() > 0, "{pr}");
    assert!(stored_bytes(&p.join("r/chunks")) < chunks);
    assert_eq!(listed(), ids[4..]);
    ok(p, &st(&["repo", "verify", "r"]));
    for (round, id) in ids.iter().enumerate().skip(4) {
        for t in ["vda", "vdb"] {
            ok(
                p,
                &st(&["repo", "restore", "r", id, t, "-O", "qcow2", "back.qcow2"]),
            );
            assert_same(p, &format!("{t}.{round}.qcow2"), "back.qcow2");
            std::fs::remove_file(p.join("back.qcow2")).unwrap();
        }
    }
    // The next incremental starts from the newest kept backup.
    scribble(p, &mut rng);
    let b = json_of(p, &["repo", "backup", "r", "vm", "--incremental"]);
    assert_eq!(b["parent"], ids[5], "{b}");
    let id = b["id"].as_str().unwrap();
    for t in ["vda", "vdb"] {
        ok(
            p,
            &st(&["repo", "restore", "r", id, t, "-O", "qcow2", "back.qcow2"]),
        );
        assert_same(p, &format!("{t}.qcow2"), "back.qcow2");
        std::fs::remove_file(p.join("back.qcow2")).unwrap();
    }
}

#[test]
fn init_takes_a_chunk_size_and_a_bad_one_makes_nothing() {
    let d = tmp();
    let p = d.path();
    let r = json_of(p, &["repo", "init", "r"]);
    assert_eq!(r["chunk-size"], 1 << 20, "{r}");
    let r = json_of(p, &["repo", "init", "big", "--chunk-size", "4M"]);
    assert_eq!(r["chunk-size"], 4 << 20, "{r}");
    for bad in ["3M", "32K", "32M"] {
        strata(p, &st(&["repo", "init", "bad", "--chunk-size", bad]))
            .one_error(1, "a power of two from 64 KiB to 16 MiB");
        assert!(!p.join("bad").exists(), "{bad}");
    }
    // A backup into the 4 MiB one reads 4 MiB chunks and restores.
    two_disk_domain(p);
    let b = json_of(p, &["repo", "backup", "big", "vm"]);
    let id = b["id"].as_str().unwrap();
    ok(
        p,
        &st(&[
            "repo", "restore", "big", id, "vdb", "-O", "qcow2", "b.qcow2",
        ]),
    );
    assert_same(p, "vdb.qcow2", "b.qcow2");
}

#[test]
fn a_backup_restores_as_a_new_domain() {
    let d = tmp();
    let p = d.path();
    two_disk_domain(p);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    scribble(p, &mut rng);
    ok(p, &st(&["repo", "init", "r"]));
    let b = json_of(p, &["repo", "backup", "r", "vm"]);
    let id = b["id"].as_str().unwrap();
    for t in ["vda", "vdb"] {
        std::fs::copy(
            p.join(format!("{t}.qcow2")),
            p.join(format!("{t}.then.qcow2")),
        )
        .unwrap();
    }
    scribble(p, &mut rng);
    let made = json_of(
        p,
        &[
            "repo",
            "restore",
            "r",
            id,
            "--to-domain",
            "vm2",
            "--dir",
            "back",
        ],
    );
    assert_eq!(made["name"], "vm2", "{made}");
    let old = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    let uuid = made["uuid"].as_str().unwrap();
    assert!(
        uuid.len() == 36 && !old.contains(uuid),
        "a new UUID: {uuid}"
    );
    let xml = ok(p, &st(&["domain", "dumpxml", "vm2"])).stdout;
    assert!(xml.contains(uuid), "{xml}");
    for t in ["vda", "vdb"] {
        let file = p.join(format!("back/vm2-{t}.qcow2"));
        assert!(
            xml.contains(&format!("file=\"{}\"", file.display()))
                || xml.contains(&format!("file='{}'", file.display())),
            "{xml}"
        );
        assert_same(p, &format!("{t}.then.qcow2"), file.to_str().unwrap());
        assert_clean(p, file.to_str().unwrap());
    }
    // The new definition is valid libvirt XML.
    std::fs::write(p.join("vm2.xml"), &xml).unwrap();
    run_in(
        p,
        "xmllint",
        &[
            "--noout",
            "--relaxng",
            "/usr/share/libvirt/schemas/domain.rng",
            "vm2.xml",
        ],
    )
    .expect(0);
    // Once more to the same name, or onto files that exist: refused,
    // nothing written.
    let to_domain = |name: &str, dir: &str| {
        strata(
            p,
            &st(&[
                "repo",
                "restore",
                "r",
                id,
                "--to-domain",
                name,
                "--dir",
                dir,
            ]),
        )
    };
    to_domain("vm2", "other").one_error(1, "domain 'vm2': exists already");
    assert!(
        !p.join("other").exists() || std::fs::read_dir(p.join("other")).unwrap().next().is_none()
    );
    std::fs::create_dir(p.join("busy")).unwrap();
    std::fs::write(p.join("busy/vm3-vdb.qcow2"), b"mine").unwrap();
    to_domain("vm3", "busy").one_error(1, "vm3-vdb.qcow2: exists");
    assert!(!p.join("busy/vm3-vda.qcow2").exists());
    assert_eq!(
        std::fs::read(p.join("busy/vm3-vdb.qcow2")).unwrap(),
        b"mine"
    );
    strata(p, &st(&["domain", "dumpxml", "vm3"])).one_error(1, "vm3");
    // Neither a disk nor --to-domain: told what to give.
    let e = strata(p, &st(&["repo", "restore", "r", id]));
    assert_eq!(e.code, 2, "{}", e.stderr);
}

#[test]
fn a_bad_retry_count_is_refused_for_a_bucket_and_not_read_for_a_folder() {
    let d = tmp();
    let p = d.path();
    let env = [("STRATA_S3_RETRIES".to_string(), "many".to_string())];
    let strata = env!("CARGO_BIN_EXE_strata");
    let e = run_with(p, strata, &["repo", "list", "s3://bucket/r"], &env)
        .one_error(1, "STRATA_S3_RETRIES");
    assert!(e.contains("'many'"), "{e}");
    ok(p, &st(&["repo", "init", "r"]));
    let listed = run_with(p, strata, &["repo", "list", "r"], &env);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
}
