//! The backup repository in S3 object storage, against a real S3 server
//! started here: a Garage cluster of three nodes on loopback. The S3
//! backend keeps a folder's contract (a random sequence of operations on
//! both, checked step by step against a model); three hosts, each through
//! its own node, back their domains up into one bucket at once while
//! another prunes and collects, and afterwards every backup left verifies
//! and restores its instant (`qemu-img compare`) from any node; a server
//! killed in the middle of a backup fails it cleanly, with nothing half
//! made listed, and the next backups (full, then incremental) work; a
//! running guest is backed up into a bucket by its daemon, each backup
//! holding one instant of both disks.

mod common;
use common::garage::{Garage, BUCKET};
use common::*;

use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use strata_repo::backend::{Backend, LocalDir, S3Options, S3};

const MIB: u64 = 1 << 20;

/// `strata ARGS` in `dir` as a client of node `node`.
fn strata_at(g: &Garage, node: usize, dir: &Path, args: &[&str]) -> Run {
    run_with(dir, env!("CARGO_BIN_EXE_strata"), args, &g.env(node))
}

/// The S3 backend on node `node`, under `prefix`.
fn s3(g: &Garage, node: usize, prefix: &str) -> S3 {
    for (k, v) in g.env(node) {
        if k != "AWS_ENDPOINT_URL" {
            std::env::set_var(k, v);
        }
    }
    let opts = S3Options {
        endpoint: Some(g.endpoint(node)),
        retries: Some(2),
    };
    S3::new(&format!("s3://{BUCKET}/{prefix}"), &opts).unwrap()
}

#[test]
fn the_s3_backend_does_what_a_folder_does() {
    let d = tmp();
    let g = Garage::start(d.path());
    let bucket = s3(&g, 1, "contract");
    let folder = LocalDir::new(d.path().join("folder")).unwrap();
    let backends: [&dyn Backend; 2] = [&bucket, &folder];
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let names = [
        "config",
        "chunks/ab/ab01",
        "chunks/ab/ab02",
        "chunks/cd/cd01",
        "indexes/b1/vda",
        "indexes/b10/vda",
        "backups/b1",
        "backups/b10",
    ];
    for step in 0..200 {
        let name = names[rng.gen_range(0..names.len())];
        let data: Vec<u8> = (0..rng.gen_range(0..3000)).map(|_| rng.gen()).collect();
        let what = rng.gen_range(0..7);
        for b in backends {
            let at = format!("step {step} ({what}) on {}", b.describe());
            match what {
                0 => {
                    let made = b.put_new(name, &data).unwrap();
                    assert_eq!(made, !model.contains_key(name), "{at}");
                }
                1 => b.put(name, &data).unwrap(),
                2 => match model.get(name) {
                    Some(v) => assert_eq!(&b.get(name).unwrap(), v, "{at}"),
                    None => assert!(
                        matches!(b.get(name), Err(strata_repo::Error::Missing { .. })),
                        "{at}"
                    ),
                },
                3 => assert_eq!(b.exists(name).unwrap(), model.contains_key(name), "{at}"),
                4 => b.delete(name).unwrap(),
                5 => assert_eq!(b.touch(name).unwrap(), model.contains_key(name), "{at}"),
                _ => {
                    for prefix in ["", "chunks/", "chunks/a", "indexes/b1", "backups/"] {
                        let want: Vec<&String> =
                            model.keys().filter(|k| k.starts_with(prefix)).collect();
                        // A bucket's listing may lag a delete a moment on a
                        // busy cluster (strata relies on nothing more: a
                        // listed object may be gone by the time it is read);
                        // it must catch up.
                        let mut listed = b.list_meta(prefix).unwrap();
                        for _ in 0..50 {
                            if listed.iter().map(|l| &l.name).eq(want.iter().copied()) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                            listed = b.list_meta(prefix).unwrap();
                        }
                        let got: Vec<&String> = listed.iter().map(|l| &l.name).collect();
                        assert_eq!(got, want, "{at}: prefix '{prefix}'");
                        for l in &listed {
                            assert_eq!(l.size, model[&l.name].len() as u64, "{at}");
                        }
                    }
                }
            }
        }
        match what {
            0 => {
                model.entry(name.to_string()).or_insert(data);
            }
            1 => {
                model.insert(name.to_string(), data);
            }
            4 => {
                model.remove(name);
            }
            _ => {}
        }
    }
    // Times: a touch makes an object young; only an old one is removed.
    bucket.put("old", b"x").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let cutoff = SystemTime::now() - Duration::from_secs(1);
    assert!(bucket.list_meta("old").unwrap()[0].time < cutoff);
    bucket.put("young", b"y").unwrap();
    assert!(!bucket.delete_if_older("young", cutoff).unwrap());
    assert!(bucket.delete_if_older("old", cutoff).unwrap());
    assert!(!bucket.exists("old").unwrap() && bucket.exists("young").unwrap());
    assert!(!bucket.delete_if_older("gone", cutoff).unwrap());
    bucket.put("touched", b"t").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let before = bucket.list_meta("touched").unwrap()[0].time;
    assert!(bucket.touch("touched").unwrap());
    let after = bucket.list_meta("touched").unwrap()[0].time;
    assert!(after > before, "{before:?} -> {after:?}");
    assert_eq!(bucket.get("touched").unwrap(), b"t");
    // Names that would leave the prefix are refused.
    for bad in ["", "a//b", "../x", "a/./b"] {
        assert!(bucket.put(bad, b"x").is_err(), "{bad}");
    }
    // Another prefix sees nothing of this one.
    assert!(s3(&g, 2, "elsewhere").list("").unwrap().is_empty());
    assert_eq!(
        bucket.describe(),
        format!("s3://{BUCKET}/contract"),
        "its URL names it"
    );
}

/// Domain `name` with disks vda (12 MiB) and vdb (5 MiB), defined in
/// `dir`'s state.
fn small_domain(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut disks = String::new();
    for (t, size) in [("vda", "12M"), ("vdb", "5M")] {
        qemu_img(
            dir,
            &["create", "-q", "-f", "qcow2", &format!("{t}.qcow2"), size],
        );
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}/{t}.qcow2'/><target dev='{t}' bus='virtio'/></disk>",
            dir.display()
        ));
    }
    std::fs::write(
        dir.join("vm.xml"),
        format!("<domain type='kvm'><name>{name}</name><memory unit='MiB'>256</memory><devices>{disks}</devices></domain>"),
    )
    .unwrap();
    ok(dir, &st(&["domain", "define", "vm.xml"]));
}

/// Guest-like writes on both disks.
fn scribble(dir: &Path, rng: &mut impl Rng) {
    for (t, size) in [("vda", 12 * MIB), ("vdb", 5 * MIB)] {
        let mut cmds = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            let len = rng.gen_range(1..48u64) * 4096;
            let off = rng.gen_range(0..(size - len) / 512) * 512;
            cmds.push(format!("write -P {} {off} {len}", rng.gen_range(1..255)));
        }
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(dir, "qcow2", &format!("{t}.qcow2"), &cmds);
    }
}

#[test]
fn three_hosts_back_up_into_one_bucket_while_prune_and_gc_run() {
    let d = tmp();
    let p = d.path();
    let g = Garage::start(&p.join("garage"));
    let repo = format!("s3://{BUCKET}/shared");
    let r = strata_at(&g, 0, p, &["repo", "init", &repo]).expect(0);
    assert_eq!(
        r.stdout,
        format!("Initialized strata repository at {repo}\n")
    );
    let done = AtomicBool::new(false);
    // Each host's backups: (id, the folder of its disks at the instant).
    let (made, prunes) = std::thread::scope(|s| {
        let hosts: Vec<_> = (0..3usize)
            .map(|h| {
                let (g, repo) = (&g, &repo);
                let dir = p.join(format!("host{h}"));
                s.spawn(move || {
                    let name = format!("vm{h}");
                    small_domain(&dir, &name);
                    let mut rng = rand::rngs::StdRng::seed_from_u64(h as u64);
                    let mut made = Vec::new();
                    for round in 0..5 {
                        scribble(&dir, &mut rng);
                        let mut args = st(&["--output", "json", "repo", "backup", repo, &name]);
                        if round > 0 {
                            args.push("--incremental");
                        }
                        let r = strata_at(g, h, &dir, &args);
                        if r.code != 0 {
                            // A collection deleted a chunk it named: said
                            // so, nothing kept; the next round makes up.
                            assert!(r.stderr.contains("run it again"), "{}", r.stderr);
                            continue;
                        }
                        let id = r.json()["id"].as_str().unwrap().to_string();
                        let at = dir.join(&id);
                        std::fs::create_dir(&at).unwrap();
                        for t in ["vda", "vdb"] {
                            let f = format!("{t}.qcow2");
                            std::fs::copy(dir.join(&f), at.join(&f)).unwrap();
                        }
                        made.push((id, at));
                    }
                    made
                })
            })
            .collect();
        let pruner = s.spawn(|| {
            let dir = p.join("pruner");
            std::fs::create_dir_all(&dir).unwrap();
            let (mut n, mut removed, mut deleted) = (0, 0, 0);
            loop {
                let last = done.load(Ordering::Relaxed);
                // The last one, after every backup, with no grace left.
                let grace = if last { "0s" } else { "3s" };
                let args = [
                    "--output",
                    "json",
                    "repo",
                    "prune",
                    &repo,
                    "--keep-last",
                    "2",
                    "--grace",
                    grace,
                ];
                let r = strata_at(&g, 2, &dir, &args).expect(0).json();
                n += 1;
                removed += r["removed"].as_u64().unwrap();
                deleted += r["gc"]["chunks-deleted"].as_u64().unwrap();
                if last {
                    return (n, removed, deleted);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let made: Vec<_> = hosts.into_iter().map(|h| h.join()).collect();
        done.store(true, Ordering::Relaxed);
        let made: Vec<_> = made.into_iter().map(|m| m.unwrap()).collect();
        (made, pruner.join().unwrap())
    });
    let (prunes, removed, deleted) = prunes;
    assert!(prunes >= 2, "{prunes} prunes");
    assert!(
        removed > 0 && deleted > 0,
        "{removed} removed, {deleted} chunks deleted"
    );
    let v = strata_at(&g, 1, p, &["repo", "verify", &repo]).expect(0);
    assert!(v.stdout.contains("all sound"), "{}", v.stdout);
    let listed = strata_at(&g, 1, p, &["--output", "json", "repo", "list", &repo]).expect(0);
    let listed: BTreeSet<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let mut kept = 0;
    for (h, host) in made.iter().enumerate() {
        assert!(host.len() >= 3, "host {h}: {} backups of 5", host.len());
        // The last prune ran after every backup: the two newest are kept.
        let newest: Vec<&String> = host.iter().rev().take(2).map(|(id, _)| id).collect();
        for id in &newest {
            assert!(listed.contains(*id), "host {h}: {id} not listed");
        }
        for (id, at) in host.iter().filter(|(id, _)| listed.contains(id)) {
            kept += 1;
            for t in ["vda", "vdb"] {
                // From a node other than the one it was written through.
                let out = format!("{id}.{t}.raw");
                strata_at(
                    &g,
                    (h + 1) % 3,
                    p,
                    &["repo", "restore", &repo, id, t, "-O", "raw", &out],
                )
                .expect(0);
                let orig = at.join(format!("{t}.qcow2"));
                assert_same(p, orig.to_str().unwrap(), &out);
                std::fs::remove_file(p.join(&out)).unwrap();
            }
        }
    }
    assert_eq!(kept, listed.len(), "only the hosts' backups are listed");
    assert_eq!(kept, 6, "two per host");
}

#[test]
fn a_server_killed_mid_backup_fails_cleanly_and_the_next_backups_work() {
    let d = tmp();
    let p = d.path();
    let mut g = Garage::start(&p.join("garage"));
    let repo = format!("s3://{BUCKET}/killed");
    strata_at(&g, 0, p, &["repo", "init", &repo]).expect(0);
    // One disk of 160 MiB of random data: slow enough to be caught.
    let host = p.join("host");
    std::fs::create_dir_all(&host).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let data: Vec<u8> = (0..160 * MIB).map(|_| rng.gen()).collect();
    std::fs::write(host.join("d.raw"), &data).unwrap();
    drop(data);
    qemu_img(&host, &["convert", "-O", "qcow2", "d.raw", "vda.qcow2"]);
    std::fs::write(
        host.join("vm.xml"),
        format!("<domain type='kvm'><name>vm</name><memory unit='MiB'>256</memory><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}/vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>", host.display()),
    )
    .unwrap();
    ok(&host, &st(&["domain", "define", "vm.xml"]));
    let mut env = g.env(0);
    env.push(("STRATA_S3_RETRIES".into(), "1".into()));
    let watcher = s3(&g, 1, "killed");
    let failed = std::thread::scope(|s| {
        let backup = s.spawn(|| {
            let args = st(&["repo", "backup", &repo, "vm"]);
            run_with(&host, env!("CARGO_BIN_EXE_strata"), &args, &env)
        });
        // Killed once a few chunks are in.
        let t = std::time::Instant::now();
        while watcher.list("chunks/").unwrap().len() < 8 {
            assert!(t.elapsed() < Duration::from_secs(120), "no chunk comes");
            assert!(!backup.is_finished(), "the backup ended before the kill");
            std::thread::sleep(Duration::from_millis(50));
        }
        g.kill_node(0);
        backup.join().unwrap()
    });
    let line = failed.one_error(1, &format!("s3://{BUCKET}/killed/"));
    assert!(line.contains("cannot"), "{line}");
    // Through another node: nothing half made is listed, all is sound.
    let listed = strata_at(&g, 1, p, &["--output", "json", "repo", "list", &repo]).expect(0);
    assert_eq!(listed.json(), serde_json::json!([]));
    strata_at(&g, 1, p, &["repo", "verify", &repo]).expect(0);
    g.start_node(0);
    // Until it has its peers back (a read needs two of the three).
    let t = std::time::Instant::now();
    while s3(&g, 0, "killed").exists("config").is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "node 0 does not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = strata_at(
        &g,
        0,
        &host,
        &st(&["--output", "json", "repo", "backup", &repo, "vm"]),
    )
    .expect(0)
    .json();
    qemu_io(
        &host,
        "qcow2",
        "vda.qcow2",
        &["write -P 7 5M 3M", "write -P 9 100M 64k"],
    );
    let args = st(&[
        "--output",
        "json",
        "repo",
        "backup",
        &repo,
        "vm",
        "--incremental",
    ]);
    let second = strata_at(&g, 0, &host, &args).expect(0).json();
    assert_eq!(second["read-chunks"], 4, "{second}");
    assert_eq!(second["parent"], first["id"], "{second}");
    strata_at(&g, 2, p, &["repo", "verify", &repo]).expect(0);
    let id = second["id"].as_str().unwrap();
    strata_at(
        &g,
        2,
        &host,
        &[
            "repo",
            "restore",
            &repo,
            id,
            "vda",
            "-O",
            "qcow2",
            "out.qcow2",
        ],
    )
    .expect(0);
    assert_same(&host, "vda.qcow2", "out.qcow2");
}

#[test]
fn a_running_guest_is_backed_up_into_a_bucket_by_its_daemon() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let g = Garage::start(&p.join("garage"));
    let env = g.env(0);
    // The daemon opens the bucket with its own environment.
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    common::records::define_records_guest(p, kit, "");
    let _daemon = common::daemon::DaemonProc::start(p, &[], &envs);
    ok(p, &st(&["domain", "start", "vm"]));
    common::records::wait_for_records(p, 11, 120);
    let repo = format!("s3://{BUCKET}/live");
    strata_at(&g, 0, p, &["repo", "init", &repo]).expect(0);
    let mut parent = serde_json::Value::Null;
    for round in 0..2 {
        let before = common::records::acked(p);
        let mut args = st(&["--output", "json", "repo", "backup", &repo, "vm"]);
        if round > 0 {
            args.push("--incremental");
        }
        let made = strata_at(&g, 0, p, &args).expect(0).json();
        let after = common::records::acked(p);
        assert_eq!(made["parent"], parent, "{made}");
        if round > 0 {
            let read = made["read-chunks"].as_u64().unwrap();
            assert!(read > 0 && read < 16, "{made}");
        }
        let id = made["id"].as_str().unwrap().to_string();
        let mut disks = Vec::new();
        for t in ["vda", "vdb"] {
            let out = format!("{t}.{id}.raw");
            strata_at(
                &g,
                1,
                p,
                &st(&["repo", "restore", &repo, &id, t, "-O", "raw", &out]),
            )
            .expect(0);
            disks.push(std::fs::read(p.join(&out)).unwrap());
        }
        let what = format!("round {round}");
        common::records::check_copy(&disks[0], &disks[1], before, after, &what);
        parent = made["id"].clone();
        common::records::writes_on(p, 10);
    }
    strata_at(&g, 2, p, &["repo", "verify", &repo]).expect(0);
}
