//! Helpers shared by the integration tests: temp dirs, the QEMU peer tools,
//! deterministic data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_image::qcow2::{CreateOptions, OpenOptions, Qcow2};
use strata_image::storage::{FaultConfig, Storage};
use strata_image::{ChainOptions, Image};

/// Runs a peer tool; panics with its output when it fails.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    if !out.status.success() {
        panic!(
            "{tool} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a peer tool and returns (exit code, stdout+stderr).
pub fn run_status(tool: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `qemu-img check` must report no errors and no leaks.
pub fn assert_qemu_clean(path: &Path) {
    let (code, text) = run_status("qemu-img", &["check", path.to_str().unwrap()]);
    assert_eq!(
        code,
        0,
        "qemu-img check {} is not clean:\n{text}",
        path.display()
    );
}

/// `qemu-img compare` of two images must say identical.
pub fn assert_qemu_identical(a: &Path, b: &Path) {
    let (code, text) = run_status(
        "qemu-img",
        &["compare", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    assert_eq!(
        code,
        0,
        "qemu-img compare {} {}:\n{text}",
        a.display(),
        b.display()
    );
}

/// A temp dir that lives for the test.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Creates a qcow2 with strata.
pub fn create(path: &Path, opts: CreateOptions) {
    Qcow2::create_file(path, &opts).expect("create");
}

/// Opens with `opts`, retrying briefly on a lock conflict: under `cargo test`
/// another test thread may be between fork and exec of a QEMU tool, and the
/// child holds an inherited descriptor (and its lock) until it execs.
fn open_with(path: &Path, opts: &ChainOptions) -> Arc<dyn Image> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match strata_image::open(path, opts) {
            Err(strata_image::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
        }
    }
}

/// Opens an image (and chain) read-write.
pub fn open_rw(path: &Path) -> Arc<dyn Image> {
    open_with(
        path,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
}

/// Opens an image (and chain) read-only.
pub fn open_ro(path: &Path) -> Arc<dyn Image> {
    open_with(path, &ChainOptions::default())
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads the whole guest contents.
pub fn read_all(img: &dyn Image) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(&mut buf, 0).expect("read");
    buf
}

/// Writes `data` as a raw file (the oracle for qemu-img compare).
pub fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write raw");
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A path inside `dir`.
pub fn at(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A tiny deterministic RNG (xorshift64*), so failures replay from a seed.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Applies random unaligned writes and zero-writes to `img` and `model`.
pub fn random_writes(img: &dyn Image, model: &mut [u8], rng: &mut Rng, ops: usize, max_len: u64) {
    let size = model.len() as u64;
    for i in 0..ops {
        let len = 1 + rng.below(max_len);
        let off = rng.below(size - len.min(size));
        let len = len.min(size - off);
        if rng.below(5) == 0 {
            img.write_zeroes(off, len, rng.below(2) == 0)
                .unwrap_or_else(|e| panic!("op {i}: zero {off}+{len}: {e}"));
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data = pattern(len as usize, rng.next());
            img.write_at(&data, off)
                .unwrap_or_else(|e| panic!("op {i}: write {off}+{len}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
    }
}

/// Fills a region of the model with qemu-io's `-P` pattern byte.
pub fn fill(model: &mut [u8], off: usize, len: usize, byte: u8) {
    model[off..off + len].fill(byte);
}

/// Downcasts an open image to the qcow2 driver.
pub fn qcow2(img: &Arc<dyn Image>) -> &Qcow2 {
    img.as_qcow2().expect("a qcow2 image")
}

/// `qemu-img snapshot -l` as (id, name) pairs.
pub fn qemu_snapshots(path: &Path) -> Vec<(String, String)> {
    let out = run("qemu-img", &["snapshot", "-l", "-U", s(path)]);
    out.lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Reads a snapshot's contents with qemu-img (convert -l) into a Vec.
pub fn qemu_read_snapshot(path: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("snap-{name}.raw"));
    let _ = std::fs::remove_file(&out);
    run(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-l",
            &format!("snapshot.name={name}"),
            "-O",
            "raw",
            s(path),
            s(&out),
        ],
    );
    std::fs::read(&out).expect("converted snapshot")
}

/// Dirty extents of `bitmap` as qemu-nbd serves them.
pub fn nbd_dirty(img: &Path, bitmap: &str, dir: &Path) -> Vec<(u64, u64)> {
    let sock = dir.join(format!("{bitmap}.sock"));
    // A socket left by an earlier run would look ready before qemu-nbd is.
    let _ = std::fs::remove_file(&sock);
    let mut srv = Command::new("qemu-nbd")
        .args([
            "-r",
            "-t",
            "-B",
            bitmap,
            "--socket",
            s(&sock),
            "-f",
            "qcow2",
            s(img),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", s(&sock));
    let out = run(
        "nbdinfo",
        &[&format!("--map=qemu:dirty-bitmap:{bitmap}"), &uri],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let mut v: Vec<(u64, u64)> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[2] == "1" {
            let (start, len) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            match v.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => v.push((start, len)),
            }
        }
    }
    v
}

/// Opens a qcow2 image on `st` without locks (in-memory crash tests).
pub fn open_qcow2(st: Arc<dyn Storage>, writable: bool) -> strata_image::Result<Qcow2> {
    Qcow2::open(
        st,
        None,
        &OpenOptions {
            writable,
            lock: false,
            ..Default::default()
        },
    )
}

/// The crash points of a run that made `writes` writes and `flushes`
/// flushes: a failure at every write, then at every flush.
pub fn every_fault(writes: u64, flushes: u64) -> impl Iterator<Item = FaultConfig> {
    (0..writes)
        .map(|n| FaultConfig {
            fail_write: Some(n),
            ..Default::default()
        })
        .chain((0..flushes).map(|n| FaultConfig {
            fail_flush_at: Some(n),
            ..Default::default()
        }))
}

/// `(name, granularity, flags)` of every bitmap, as qemu-img info lists them.
pub fn qemu_bitmaps(path: &Path) -> Vec<(String, u64, Vec<String>)> {
    let info: serde_json::Value =
        serde_json::from_str(&run("qemu-img", &["info", "--output=json", "-U", s(path)])).unwrap();
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let flags = b["flags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f.as_str().unwrap().to_string())
                        .collect();
                    (
                        b["name"].as_str().unwrap().to_string(),
                        b["granularity"].as_u64().unwrap(),
                        flags,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the image has exactly the bitmaps of a crash test (`count`),
/// each enabled and not in use, and that every granule whose bytes differ
/// between `before` and `after` has its bit set.
pub fn assert_changed_granules_marked(
    ctx: &str,
    img: &Qcow2,
    count: usize,
    before: &[u8],
    after: &[u8],
) {
    let size = before.len() as u64;
    let dir = img.bitmaps().unwrap();
    assert_eq!(dir.len(), count, "{ctx}: bitmaps lost: {dir:?}");
    for b in &dir {
        assert!(b.enabled() && !b.in_use(), "{ctx}: {b:?}");
        let mut bit = vec![false; size.div_ceil(b.granularity) as usize];
        for (o, l) in img.bitmap_dirty(&b.name).unwrap() {
            for g in o / b.granularity..(o + l).div_ceil(b.granularity) {
                bit[g as usize] = true;
            }
        }
        for (g, set) in bit.iter().enumerate() {
            let r =
                g * b.granularity as usize..((g + 1) * b.granularity as usize).min(size as usize);
            assert!(
                *set || after[r.clone()] == before[r.clone()],
                "{ctx}: bitmap {} misses granule {g} (bytes {r:?}) whose data changed",
                b.name
            );
        }
    }
}
