//! A crash injected at every write of snapshot create, apply and delete
//! leaves an image that is fully before or fully after the operation, as
//! `qemu-img snapshot -l` sees it, with at most leaked clusters (qemu-img
//! check exits 0 or 3) and the matching guest contents.

mod common;
use common::*;
use std::sync::Arc;
use strata_image::qcow2::{self, CreateOptions, Qcow2};
use strata_image::storage::{FaultConfig, FaultStorage, MemoryStorage, Storage};
use strata_image::Image;

const SIZE: u64 = 2 << 20;

fn open(st: Arc<dyn Storage>, writable: bool) -> strata_image::Result<Qcow2> {
    open_qcow2(st, writable)
}

/// An image with data and two snapshots, as bytes.
fn initial(opts: &CreateOptions) -> Vec<u8> {
    let mem = MemoryStorage::new("snap.qcow2");
    qcow2::create(&mem, opts).unwrap();
    {
        let img = open(Arc::new(mem.clone()), true).unwrap();
        let mut model = vec![0u8; SIZE as usize];
        let mut rng = Rng(3);
        random_writes(&img, &mut model, &mut rng, 20, 100_000);
        img.snapshot_create(Some("a"), 0).unwrap();
        random_writes(&img, &mut model, &mut rng, 20, 100_000);
        img.snapshot_create(Some("b"), 0).unwrap();
        random_writes(&img, &mut model, &mut rng, 20, 100_000);
    }
    mem.snapshot()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    /// Create with a VM state of several clusters.
    CreateWithState,
    /// Attach a VM state to an existing snapshot.
    AttachState,
    Apply,
    Delete,
}

fn apply(img: &Qcow2, op: Op) -> strata_image::Result<()> {
    match op {
        Op::Create => img.snapshot_create(Some("c"), 0).map(|_| ()),
        Op::CreateWithState => img
            .snapshot_create_with_state(Some("c"), 0, &pattern(300_000, 1))
            .map(|_| ()),
        Op::AttachState => img
            .snapshot_attach_state("a", &pattern(300_000, 1))
            .map(|_| ()),
        Op::Apply => img.snapshot_apply("a").map(|_| ()),
        Op::Delete => img.snapshot_delete("a").map(|_| ()),
    }
}

/// (snapshot names, active contents) of an image in bytes; a snapshot
/// with a VM state is named with its size, and its state is checked.
fn state(bytes: Vec<u8>) -> (Vec<String>, Vec<u8>) {
    let img = open(Arc::new(MemoryStorage::from_bytes("s", bytes)), false).unwrap();
    let mut names = Vec::new();
    for s in img.snapshots().unwrap() {
        if s.vm_state_size == 0 {
            names.push(s.name);
            continue;
        }
        let mut st = vec![0u8; s.vm_state_size as usize];
        img.read_vmstate(&s.name, &mut st, 0).unwrap();
        assert!(
            st == pattern(st.len(), 1),
            "snapshot {}: its VM state",
            s.name
        );
        names.push(format!("{} ({} bytes of state)", s.name, s.vm_state_size));
    }
    (names, read_all(&img))
}

fn crash_every_write(name: &str, opts: CreateOptions, op: Op) {
    let start = initial(&opts);
    let before = state(start.clone());
    let probe = FaultStorage::new("p", start.clone(), FaultConfig::default());
    let (w0, w1, f0, f1) = {
        let img = open(Arc::new(probe.clone()), true).unwrap();
        let (w0, f0) = (probe.writes(), probe.flushes());
        apply(&img, op).unwrap();
        (w0, probe.writes(), f0, probe.flushes())
    };
    let after = state(probe.live_image());
    assert!(w1 - w0 > 3, "{name} {op:?}: only {} writes", w1 - w0);
    let d = tmp();
    let path = at(&d, "crashed.qcow2");
    // A crash at every write, and just before every flush.
    let faults = (w0..w1)
        .map(|n| {
            (
                format!("write {}", n - w0),
                FaultConfig {
                    fail_write: Some(n),
                    ..Default::default()
                },
            )
        })
        .chain((f0..f1).map(|n| {
            (
                format!("flush {}", n - f0),
                FaultConfig {
                    fail_flush_at: Some(n),
                    ..Default::default()
                },
            )
        }));
    for (n, (point, config)) in faults.enumerate() {
        let n = n as u64;
        let fs = FaultStorage::new("f", start.clone(), config);
        {
            let img = open(Arc::new(fs.clone()), true).unwrap();
            assert!(
                apply(&img, op).is_err(),
                "{name} {op:?}: {point} did not fail"
            );
        }
        let mut rng = Rng(n + 7);
        for (variant, image) in [
            ("nothing unflushed", fs.crash_image(|_| false)),
            ("everything", fs.crash_image(|_| true)),
            ("random subset", fs.crash_image(|_| rng.below(2) == 0)),
        ] {
            let ctx = format!("{name} {op:?}: crash at {point} ({variant})");
            std::fs::write(&path, &image).unwrap();
            let (code, text) = run_status("qemu-img", &["check", s(&path)]);
            assert!(code == 0 || code == 3, "{ctx}: qemu-img check:\n{text}");
            let listed: Vec<String> = qemu_snapshots(&path).into_iter().map(|(_, n)| n).collect();
            let now = state(image);
            let names: Vec<&str> = now
                .0
                .iter()
                .map(|n| n.split(' ').next().unwrap_or(""))
                .collect();
            assert_eq!(listed, names, "{ctx}: qemu-img and strata list differently");
            assert!(
                now == before || now == after,
                "{ctx}: neither fully before nor fully after (list {:?})",
                now.0
            );
        }
    }
}

#[test]
fn crash_during_create() {
    crash_every_write(
        "64k",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
        Op::Create,
    );
    crash_every_write(
        "4k",
        CreateOptions {
            size: SIZE,
            cluster_size: 4096,
            ..Default::default()
        },
        Op::Create,
    );
}

#[test]
fn crash_during_create_with_a_vm_state_or_attaching_one() {
    for (name, cluster_size) in [("64k", 65536), ("4k", 4096)] {
        crash_every_write(
            name,
            CreateOptions {
                size: SIZE,
                cluster_size,
                ..Default::default()
            },
            Op::CreateWithState,
        );
        crash_every_write(
            name,
            CreateOptions {
                size: SIZE,
                cluster_size,
                ..Default::default()
            },
            Op::AttachState,
        );
    }
}

#[test]
fn crash_during_apply() {
    crash_every_write(
        "64k",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
        Op::Apply,
    );
    crash_every_write(
        "4k",
        CreateOptions {
            size: SIZE,
            cluster_size: 4096,
            ..Default::default()
        },
        Op::Apply,
    );
}

#[test]
fn crash_during_delete() {
    crash_every_write(
        "64k",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
        Op::Delete,
    );
    crash_every_write(
        "4k",
        CreateOptions {
            size: SIZE,
            cluster_size: 4096,
            ..Default::default()
        },
        Op::Delete,
    );
}

/// Regression: a snapshot entry whose L1 table is too small for its disk
/// size was applied unchecked (the next write past it panicked, and the
/// image no longer opened). Now apply refuses it and changes nothing.
#[test]
fn regression_hostile_snapshot_l1_size() {
    let bytes = initial(&CreateOptions {
        size: SIZE,
        cluster_size: 4096,
        ..Default::default()
    });
    let mut bytes = bytes;
    let table = u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize;
    bytes[table + 8..table + 12].copy_from_slice(&0u32.to_be_bytes()); // l1_size of "a"
    let before = bytes.clone();
    let mem = MemoryStorage::from_bytes("h.qcow2", bytes);
    {
        let img = open(Arc::new(mem.clone()), true).unwrap();
        let err = img.snapshot_apply("a").unwrap_err().to_string();
        assert!(err.contains("too few for its disk size"), "{err}");
        img.write_at(&[7u8; 4096], SIZE - 4096).unwrap();
        img.write_at(&[0u8; 4096], SIZE - 4096).unwrap();
    }
    let (names, _) = state(mem.snapshot());
    assert_eq!(names, ["a", "b"]);
    assert_eq!(state(mem.snapshot()).1, state(before).1);
}
