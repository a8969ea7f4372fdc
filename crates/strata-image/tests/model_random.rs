//! Random operation sequences against a plain in-memory model: writes,
//! zero-writes (with and without unmap), discards, reads, flushes and
//! reopens at random offsets and lengths, across cluster sizes, versions,
//! extended L2 and with a backing file. Every read must match the model;
//! at the end `qemu-img check` must be clean and `qemu-img compare` must see
//! the model's bytes.

mod common;
use common::*;
use std::path::Path;
use strata_image::qcow2::CreateOptions;

const SIZE: u64 = 6 << 20;

struct Case {
    name: &'static str,
    opts: CreateOptions,
    backing: bool,
}

fn discard_model(model: &mut [u8], backing: Option<&[u8]>, cs: u64, off: u64, len: u64, v2: bool) {
    let end = off + len;
    let size = model.len() as u64;
    let first = off.div_ceil(cs) * cs;
    let last = if end == size { end } else { end / cs * cs };
    if first >= last {
        return;
    }
    for i in first as usize..last.min(end) as usize {
        model[i] = match (v2, backing) {
            (true, Some(b)) => b[i],
            _ => 0,
        };
    }
}

fn run_case(case: &Case, seed: u64, ops: usize) {
    let d = tmp();
    let img_path = at(&d, "img.qcow2");
    let base_path = at(&d, "base.raw");
    let cs = case.opts.cluster_size;
    let base = pattern(SIZE as usize, seed ^ 0xbace);
    let mut opts = case.opts.clone();
    opts.size = SIZE;
    if case.backing {
        write_raw(&base_path, &base);
        opts.backing_file = Some("base.raw".into());
        opts.backing_format = Some("raw".into());
    }
    create(&img_path, opts);
    let mut model = if case.backing {
        base.clone()
    } else {
        vec![0u8; SIZE as usize]
    };
    let backing = case.backing.then_some(base.as_slice());
    let mut rng = Rng(seed);
    let mut img = open_rw(&img_path);
    let ctx = |i: usize, what: String| format!("{} seed {seed} op {i}: {what}", case.name);
    for i in 0..ops {
        let big = rng.below(20) == 0;
        let max = if big { 8 * cs.max(65536) } else { 3 * cs };
        let len = 1 + rng.below(max);
        let len = len.min(SIZE);
        let off = if rng.below(4) == 0 {
            // Aligned requests exercise whole-cluster paths.
            rng.below(SIZE / cs) * cs
        } else {
            rng.below(SIZE)
        };
        let len = len.min(SIZE - off).max(1).min(SIZE - off);
        if len == 0 {
            continue;
        }
        match rng.below(10) {
            0..=4 => {
                let data = pattern(len as usize, rng.next());
                img.write_at(&data, off)
                    .unwrap_or_else(|e| panic!("{}", ctx(i, format!("write {off}+{len}: {e}"))));
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            5 => {
                let unmap = rng.below(2) == 0;
                img.write_zeroes(off, len, unmap)
                    .unwrap_or_else(|e| panic!("{}", ctx(i, format!("zero {off}+{len}: {e}"))));
                model[off as usize..(off + len) as usize].fill(0);
            }
            6 => {
                img.discard(off, len)
                    .unwrap_or_else(|e| panic!("{}", ctx(i, format!("discard {off}+{len}: {e}"))));
                discard_model(&mut model, backing, cs, off, len, case.opts.version == 2);
            }
            7 | 8 => {
                let mut buf = vec![0u8; len as usize];
                img.read_at(&mut buf, off)
                    .unwrap_or_else(|e| panic!("{}", ctx(i, format!("read: {e}"))));
                if buf != model[off as usize..(off + len) as usize] {
                    let at = buf
                        .iter()
                        .zip(&model[off as usize..])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "{}",
                        ctx(
                            i,
                            format!(
                                "read {off}+{len} differs from the model at {}",
                                off + at as u64
                            )
                        )
                    );
                }
            }
            _ => {
                if rng.below(3) == 0 {
                    drop(img);
                    img = open_rw(&img_path);
                } else {
                    img.flush().unwrap();
                }
            }
        }
    }
    assert_eq!(
        read_all(img.as_ref()),
        model,
        "{}",
        ctx(ops, "final contents".into())
    );
    drop(img);
    assert_qemu_clean(&img_path);
    let raw = at(&d, "model.raw");
    write_raw(&raw, &model);
    assert_qemu_identical(&img_path, &raw);
    check_reopen(&img_path, &model);
}

fn check_reopen(path: &Path, model: &[u8]) {
    let i = open_ro(path);
    assert_eq!(read_all(i.as_ref()), model, "contents after reopen");
}

fn cases() -> Vec<Case> {
    let c = |name, opts, backing| Case {
        name,
        opts,
        backing,
    };
    vec![
        c(
            "512",
            CreateOptions {
                cluster_size: 512,
                ..Default::default()
            },
            false,
        ),
        c(
            "512+backing",
            CreateOptions {
                cluster_size: 512,
                ..Default::default()
            },
            true,
        ),
        c(
            "4k-rc1",
            CreateOptions {
                cluster_size: 4096,
                refcount_bits: 1,
                ..Default::default()
            },
            false,
        ),
        c("64k", CreateOptions::default(), false),
        c("64k+backing", CreateOptions::default(), true),
        c(
            "v2+backing",
            CreateOptions {
                version: 2,
                ..Default::default()
            },
            true,
        ),
        c(
            "v2",
            CreateOptions {
                version: 2,
                cluster_size: 4096,
                ..Default::default()
            },
            false,
        ),
        c(
            "extl2",
            CreateOptions {
                extended_l2: true,
                ..Default::default()
            },
            false,
        ),
        c(
            "extl2+backing",
            CreateOptions {
                extended_l2: true,
                cluster_size: 32768,
                ..Default::default()
            },
            true,
        ),
        c(
            "lazy+backing",
            CreateOptions {
                lazy_refcounts: true,
                cluster_size: 8192,
                ..Default::default()
            },
            true,
        ),
        c(
            "2m+backing",
            CreateOptions {
                cluster_size: 2 << 20,
                ..Default::default()
            },
            true,
        ),
    ]
}

#[test]
fn random_ops_match_the_model() {
    let seeds: u64 = std::env::var("STRATA_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for case in cases() {
        for seed in 1..=seeds {
            run_case(&case, seed * 7919 + case.name.len() as u64, 1500);
        }
    }
}
