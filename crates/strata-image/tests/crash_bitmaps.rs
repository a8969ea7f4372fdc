//! Crash-consistent change tracking: with two enabled bitmaps, a workload of
//! in-place overwrites (random and sequential), allocating writes, zeroes,
//! discards and flushes dies at every write and every flush; in the image a
//! power cut leaves (nothing unflushed, everything, a random subset) every
//! granule whose data differs from the start has its bit set in both
//! bitmaps, the bitmaps are consistent (autoclear bit set, not in use) and
//! `qemu-img check` finds no corruption.

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

/// An image whose first MiB holds data, with bitmaps `g4k` (4 KiB) and
/// `gcl` (the cluster size), both enabled and empty.
fn initial(cs: u64) -> Vec<u8> {
    let mem = MemoryStorage::new("crash.qcow2");
    qcow2::create(
        &mem,
        &CreateOptions {
            size: SIZE,
            cluster_size: cs,
            ..Default::default()
        },
    )
    .unwrap();
    let st: Arc<dyn Storage> = Arc::new(mem.clone());
    let img = open(st, true).unwrap();
    img.write_at(&pattern(1 << 20, 1), 0).unwrap();
    img.flush().unwrap();
    img.bitmap_add("g4k", Some(4096), true).unwrap();
    img.bitmap_add("gcl", None, true).unwrap();
    img.close().unwrap();
    drop(img);
    mem.snapshot()
}

fn workload(img: &dyn Image, seed: u64, cs: u64) {
    let mut rng = Rng(seed);
    // A sequential in-place stream (mark-ahead), then random operations.
    for k in 0..6u64 {
        if img.write_at(&pattern(16 << 10, k), k * (16 << 10)).is_err() {
            return;
        }
    }
    for i in 0..30 {
        let len = 1 + rng.below(3 * cs);
        let off = rng.below(SIZE - len);
        let r = match rng.below(8) {
            0 => img.write_zeroes(off, len, rng.below(2) == 0),
            1 => img.discard(off, len),
            _ => img.write_at(&pattern(len as usize, rng.next()), off),
        };
        if r.is_err() || (i % 7 == 6 && img.flush().is_err()) {
            return;
        }
    }
}

fn verify(ctx: &str, image: Vec<u8>, before: &[u8]) {
    let d = tmp();
    let path = at(&d, "crashed.qcow2");
    std::fs::write(&path, &image).unwrap();
    let (code, text) = run_status("qemu-img", &["check", s(&path)]);
    assert!(
        code == 0 || code == 3,
        "{ctx}: qemu-img check found corruption:\n{text}"
    );
    let img = open(Arc::new(MemoryStorage::from_bytes("c", image)), false)
        .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let after = read_all(&img);
    assert_changed_granules_marked(ctx, &img, 2, before, &after);
}

fn crash_everywhere(cs: u64, seed: u64) {
    let start = initial(cs);
    let before = read_all(
        &open(
            Arc::new(MemoryStorage::from_bytes("s", start.clone())),
            false,
        )
        .unwrap(),
    );
    let probe = FaultStorage::new("probe", start.clone(), FaultConfig::default());
    {
        let img = open(Arc::new(probe.clone()), true).unwrap();
        workload(&img, seed, cs);
    }
    let (writes, flushes) = (probe.writes(), probe.flushes());
    assert!(writes > 30, "only {writes} writes");
    for (n, config) in every_fault(writes, flushes).enumerate() {
        let fs = FaultStorage::new("crash.qcow2", start.clone(), config);
        {
            let img = open(Arc::new(fs.clone()), true).unwrap();
            workload(&img, seed, cs);
        }
        let ctx = format!("cluster {cs}, fault {n}");
        verify(
            &format!("{ctx}, nothing unflushed"),
            fs.crash_image(|_| false),
            &before,
        );
        verify(
            &format!("{ctx}, everything"),
            fs.crash_image(|_| true),
            &before,
        );
        let mut rng = Rng(n as u64 + 7);
        verify(
            &format!("{ctx}, random subset"),
            fs.crash_image(|_| rng.below(2) == 0),
            &before,
        );
    }
}

#[test]
fn crash_keeps_every_changed_granule_64k() {
    crash_everywhere(65536, 21);
}

#[test]
fn crash_keeps_every_changed_granule_4k() {
    crash_everywhere(4096, 22);
}
