//! Random sequences of writes, zero-writes, discards, snapshot creates,
//! applies and deletes (and reopens) on one image, against an in-memory
//! model of the active state and of every snapshot. After every step the
//! refcounts are exact (strata's check: no leak, no corruption); the
//! contents of the active state and of every snapshot are compared with the
//! model regularly, and at the end qemu-img checks the file and reads every
//! snapshot itself.

mod common;
use common::*;
use strata_image::qcow2::{CheckMode, CreateOptions};

const SIZE: u64 = 4 << 20;

fn run_case(name: &str, opts: CreateOptions, with_backing: bool, seed: u64, steps: usize) {
    let d = tmp();
    let path = at(&d, "m.qcow2");
    let base = pattern(SIZE as usize, seed);
    let mut o = opts;
    o.size = SIZE;
    if with_backing {
        write_raw(&at(&d, "base.raw"), &base);
        o.backing_file = Some("base.raw".into());
        o.backing_format = Some("raw".into());
    }
    let cs = o.cluster_size;
    create(&path, o);
    let mut active = if with_backing {
        base.clone()
    } else {
        vec![0u8; SIZE as usize]
    };
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng(seed);
    let mut img = open_rw(&path);
    let mut counter = 0;
    for step in 0..steps {
        let ctx = format!("{name} seed {seed} step {step}");
        match rng.below(12) {
            0..=4 => {
                let len = 1 + rng.below(3 * cs);
                let off = rng.below(SIZE - len);
                let data = pattern(len as usize, rng.next());
                img.write_at(&data, off)
                    .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
                active[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            5 => {
                let len = 1 + rng.below(4 * cs);
                let off = rng.below(SIZE - len);
                img.write_zeroes(off, len, rng.below(2) == 0)
                    .unwrap_or_else(|e| panic!("{ctx}: zero: {e}"));
                active[off as usize..(off + len) as usize].fill(0);
            }
            6 | 7 if snaps.len() < 10 => {
                counter += 1;
                let n = format!("s{counter}");
                qcow2(&img)
                    .snapshot_create(Some(&n), 0)
                    .unwrap_or_else(|e| panic!("{ctx}: create: {e}"));
                snaps.push((n, active.clone()));
            }
            8 if !snaps.is_empty() => {
                let k = rng.below(snaps.len() as u64) as usize;
                qcow2(&img)
                    .snapshot_apply(&snaps[k].0)
                    .unwrap_or_else(|e| panic!("{ctx}: apply: {e}"));
                active = snaps[k].1.clone();
            }
            9 if !snaps.is_empty() => {
                let k = rng.below(snaps.len() as u64) as usize;
                let (n, _) = snaps.remove(k);
                qcow2(&img)
                    .snapshot_delete(&n)
                    .unwrap_or_else(|e| panic!("{ctx}: delete: {e}"));
            }
            10 => {
                drop(img);
                img = open_rw(&path);
            }
            _ => {
                let mut buf = vec![0u8; (2 * cs) as usize];
                let off = rng.below(SIZE - 2 * cs);
                img.read_at(&mut buf, off).unwrap();
                assert!(
                    buf == active[off as usize..off as usize + buf.len()],
                    "{ctx}: read differs"
                );
            }
        }
        let rep = qcow2(&img).check(CheckMode::ReadOnly).unwrap();
        assert!(
            rep.leaks == 0 && rep.corruptions == 0,
            "{ctx}: check: {:?}",
            rep.messages
        );
        if step % 25 == 24 {
            assert!(read_all(img.as_ref()) == active, "{ctx}: active contents");
            for (n, want) in &snaps {
                let v = qcow2(&img).snapshot_view(n).unwrap();
                assert!(read_all(&v) == *want, "{ctx}: snapshot {n} contents");
            }
        }
    }
    drop(img);
    assert_qemu_clean(&path);
    let listed: Vec<String> = qemu_snapshots(&path).into_iter().map(|(_, n)| n).collect();
    let want: Vec<String> = snaps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(listed, want, "{name}: qemu-img snapshot -l");
    for (n, data) in &snaps {
        assert!(
            qemu_read_snapshot(&path, n, d.path()) == *data,
            "{name}: qemu-img reads snapshot {n} differently"
        );
    }
    let raw = at(&d, "active.raw");
    write_raw(&raw, &active);
    assert_qemu_identical(&path, &raw);
}

#[test]
fn snapshot_model_64k() {
    run_case("64k", CreateOptions::default(), false, 1, 250);
}

#[test]
fn snapshot_model_4k_with_backing() {
    run_case(
        "4k+backing",
        CreateOptions {
            cluster_size: 4096,
            ..Default::default()
        },
        true,
        2,
        250,
    );
}

#[test]
fn snapshot_model_512_rc4() {
    run_case(
        "512/rc4",
        CreateOptions {
            cluster_size: 512,
            refcount_bits: 4,
            ..Default::default()
        },
        false,
        3,
        150,
    );
}

#[test]
fn snapshot_model_extl2_with_backing() {
    run_case(
        "extl2+backing",
        CreateOptions {
            extended_l2: true,
            ..Default::default()
        },
        true,
        4,
        250,
    );
}

#[test]
fn snapshot_model_v2() {
    run_case(
        "v2",
        CreateOptions {
            version: 2,
            cluster_size: 8192,
            ..Default::default()
        },
        false,
        5,
        250,
    );
}

#[test]
fn snapshot_model_lazy_refcounts() {
    run_case(
        "lazy",
        CreateOptions {
            lazy_refcounts: true,
            cluster_size: 16384,
            ..Default::default()
        },
        true,
        6,
        200,
    );
}
