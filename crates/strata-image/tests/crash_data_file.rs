//! Crash consistency with an external data file (`data_file_raw` on and
//! off): with two enabled bitmaps, a workload of overwrites, allocating
//! writes, zeroes, discards and flushes dies at every write and every flush
//! of the qcow2 file, then of the data file (a death of either kills both,
//! as a process death would). For each, the files a power cut leaves
//! (nothing unflushed, everything, a random subset) pass `qemu-img check`
//! without corruption, and every granule whose data changed has its bit
//! set in both bitmaps.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use strata_image::qcow2::{CreateOptions, OpenOptions, Qcow2};
use strata_image::storage::{FaultConfig, FaultStorage, MemoryStorage, Storage};
use strata_image::{Error, Image, Result};

const SIZE: u64 = 2 << 20;
const DATA: &str = "crash.raw";

/// One of two storages that die together: after a failure of either,
/// every write and flush of both fails.
#[derive(Debug)]
struct Linked {
    inner: FaultStorage,
    dead: Arc<AtomicBool>,
}

impl Linked {
    fn guard(&self, r: Result<()>) -> Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Error::io(
                self.inner.name(),
                "write",
                0,
                std::io::Error::other("the other file died"),
            ));
        }
        if r.is_err() {
            self.dead.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl Storage for Linked {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.guard(Ok(()))?;
        self.guard(self.inner.write_at(buf, offset))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.guard(Ok(()))?;
        self.guard(self.inner.write_zeroes(offset, len))
    }
    fn flush(&self) -> Result<()> {
        self.guard(Ok(()))?;
        self.guard(self.inner.flush())
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.guard(Ok(()))?;
        self.guard(self.inner.set_len(len))
    }
}

fn open(meta: Arc<dyn Storage>, data: Arc<dyn Storage>, writable: bool) -> Result<Qcow2> {
    Qcow2::open(
        meta,
        None,
        &OpenOptions {
            writable,
            lock: false,
            data_file: Some(data),
            ..Default::default()
        },
    )
}

/// The qcow2 and data file bytes of an image whose first MiB holds data,
/// with bitmaps `g4k` (4 KiB) and `gcl` (the cluster size), both enabled.
fn initial(raw: bool) -> (Vec<u8>, Vec<u8>) {
    let d = tmp();
    let img = at(&d, "crash.qcow2");
    create(
        &img,
        CreateOptions {
            size: SIZE,
            data_file: Some(DATA.into()),
            data_file_raw: raw,
            ..Default::default()
        },
    );
    {
        let h = open_rw(&img);
        h.write_at(&pattern(1 << 20, 1), 0).unwrap();
        h.flush().unwrap();
        let q = qcow2(&h);
        q.bitmap_add("g4k", Some(4096), true).unwrap();
        q.bitmap_add("gcl", None, true).unwrap();
        h.close().unwrap();
    }
    (
        std::fs::read(&img).unwrap(),
        std::fs::read(at(&d, DATA)).unwrap(),
    )
}

fn workload(img: &dyn Image, seed: u64) {
    let mut rng = Rng(seed);
    // Whole clusters of data zeroed and discarded first, before any write
    // has made nearby bits durable (a write syncs a window of bits ahead).
    let cl = 64 << 10;
    if img.write_zeroes(3 * cl, 2 * cl, false).is_err()
        || img.discard(7 * cl, cl).is_err()
        || img.write_zeroes(9 * cl, cl, true).is_err()
    {
        return;
    }
    for k in 0..4u64 {
        if img.write_at(&pattern(16 << 10, k), k * (16 << 10)).is_err() {
            return;
        }
    }
    for i in 0..24 {
        let len = 1 + rng.below(150_000);
        let off = rng.below(SIZE - len);
        let r = match rng.below(6) {
            0 => img.write_zeroes(off, len, rng.below(2) == 0),
            1 => img.discard(off, len),
            _ => img.write_at(&pattern(len as usize, rng.next()), off),
        };
        if r.is_err() || (i % 6 == 5 && img.flush().is_err()) {
            return;
        }
    }
}

fn verify(ctx: &str, meta: Vec<u8>, data: Vec<u8>, before: &[u8]) {
    let d = tmp();
    std::fs::write(at(&d, "crashed.qcow2"), &meta).unwrap();
    std::fs::write(at(&d, DATA), &data).unwrap();
    // QEMU finds a relative data file name in its working directory.
    let out = std::process::Command::new("qemu-img")
        .args(["check", "crashed.qcow2"])
        .current_dir(d.path())
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "{ctx}: qemu-img check found corruption:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let img = open(
        Arc::new(MemoryStorage::from_bytes("c", meta)),
        Arc::new(MemoryStorage::from_bytes("d", data)),
        false,
    )
    .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let after = read_all(&img);
    assert_changed_granules_marked(ctx, &img, 2, before, &after);
}

/// Runs the workload on fresh storages with `faults` (for the qcow2 file,
/// for the data file); returns both.
fn run_once(
    start: &(Vec<u8>, Vec<u8>),
    seed: u64,
    faults: (FaultConfig, FaultConfig),
) -> (FaultStorage, FaultStorage) {
    let meta = FaultStorage::new("crash.qcow2", start.0.clone(), faults.0);
    let data = FaultStorage::new(DATA, start.1.clone(), faults.1);
    let dead = Arc::new(AtomicBool::new(false));
    let linked = |inner: &FaultStorage| -> Arc<dyn Storage> {
        Arc::new(Linked {
            inner: inner.clone(),
            dead: dead.clone(),
        })
    };
    if let Ok(img) = open(linked(&meta), linked(&data), true) {
        workload(&img, seed);
    }
    (meta, data)
}

fn crash_everywhere(raw: bool, seed: u64) {
    let start = initial(raw);
    let before = read_all(
        &open(
            Arc::new(MemoryStorage::from_bytes("s", start.0.clone())),
            Arc::new(MemoryStorage::from_bytes("d", start.1.clone())),
            false,
        )
        .unwrap(),
    );
    let (pm, pd) = run_once(&start, seed, Default::default());
    assert!(
        pm.writes() > 10 && pd.writes() > 10,
        "workload too small: {} + {} writes",
        pm.writes(),
        pd.writes()
    );
    let on_meta = every_fault(pm.writes(), pm.flushes()).map(|c| (c, FaultConfig::default()));
    let on_data = every_fault(pd.writes(), pd.flushes()).map(|c| (FaultConfig::default(), c));
    for (n, faults) in on_meta.chain(on_data).enumerate() {
        let (meta, data) = run_once(&start, seed, faults);
        let ctx = format!("raw={raw}, fault {n}");
        verify(
            &format!("{ctx}, nothing unflushed"),
            meta.crash_image(|_| false),
            data.crash_image(|_| false),
            &before,
        );
        verify(
            &format!("{ctx}, everything"),
            meta.crash_image(|_| true),
            data.crash_image(|_| true),
            &before,
        );
        let mut rng = Rng(n as u64 + 7);
        let meta_image = meta.crash_image(|_| rng.below(2) == 0);
        verify(
            &format!("{ctx}, random subset"),
            meta_image,
            data.crash_image(|_| rng.below(2) == 0),
            &before,
        );
    }
}

#[test]
fn crash_with_a_data_file_keeps_every_changed_granule() {
    crash_everywhere(false, 31);
}

#[test]
fn crash_with_a_raw_data_file_keeps_every_changed_granule() {
    crash_everywhere(true, 32);
}
