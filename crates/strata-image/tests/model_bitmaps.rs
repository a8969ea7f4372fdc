//! Model test of change tracking: random writes, zero-writes, discards,
//! bitmap adds, removes, clears, enables, disables, merges, flushes,
//! reopens and external snapshots, checked after every step against a plain
//! model (per layer, per bitmap, the set of granules changed since the
//! bitmap was made or cleared). `dirty_since` over the chain must equal the
//! model exactly — never a missed granule, never an extra one — or fail
//! exactly when the model says the chain cannot answer. At the end
//! `qemu-img check` is clean on every layer and qemu-nbd exports the top
//! layer's bitmaps as the model says.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_image::transaction::{run as run_tx, Action};
use strata_image::{dirty_since, ChainOptions, Image};

const SIZE: u64 = 8 << 20;
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const GRANULARITIES: [u64; 3] = [512, 4096, 65536];

/// One bitmap of one layer in the model.
#[derive(Clone, Debug)]
struct Bitmap {
    name: String,
    gran: u64,
    enabled: bool,
    bits: Vec<bool>,
}

impl Bitmap {
    fn mark(&mut self, off: u64, len: u64) {
        for g in off / self.gran..(off + len).div_ceil(self.gran) {
            self.bits[g as usize] = true;
        }
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        (0..self.bits.len() as u64)
            .filter(|&g| self.bits[g as usize])
            .map(|g| (g * self.gran, self.gran.min(SIZE - g * self.gran)))
            .collect()
    }
}

/// Sorted union of ranges.
fn union(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in v {
        match out.last_mut() {
            Some(last) if s <= last.0 + last.1 => last.1 = last.1.max(s + l - last.0),
            _ => out.push((s, l)),
        }
    }
    out
}

/// The model's answer to `dirty_since(name)`: `None` when it must fail.
fn expected(layers: &[Vec<Bitmap>], name: &str) -> Option<Vec<(u64, u64)>> {
    // Top layer last. The layers holding it must be a run from the top.
    let mut all = Vec::new();
    let mut run_over = false;
    let mut found = false;
    for layer in layers.iter().rev() {
        match layer.iter().find(|b| b.name == name) {
            Some(b) if !run_over => {
                found = true;
                all.extend(b.ranges());
            }
            Some(_) => return None,
            None => run_over = true,
        }
    }
    found.then(|| union(all))
}

fn open_top(path: &Path) -> Arc<dyn Image> {
    strata_image::open(
        path,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn check_all(img: &dyn Image, layers: &[Vec<Bitmap>], step: &str) {
    for name in NAMES {
        let got = dirty_since(img, name).ok();
        assert_eq!(got, expected(layers, name), "{step}: dirty_since({name})");
    }
}

fn run_model(seed: u64, steps: usize) {
    let d = tmp();
    let mut paths: Vec<PathBuf> = vec![at(&d, "l0.qcow2")];
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&paths[0]), "8M"],
    );
    let mut layers: Vec<Vec<Bitmap>> = vec![Vec::new()];
    let mut img = open_top(&paths[0]);
    let mut rng = Rng(seed);
    for step in 0..steps {
        let top = layers.last_mut().unwrap();
        let q = qcow2(&img);
        let what;
        match rng.below(20) {
            0..=8 => {
                let len = 1 + rng.below(200_000);
                let off = rng.below(SIZE - len);
                let kind = rng.below(4);
                what = format!(
                    "{} {off}+{len}",
                    ["write", "write", "zero", "discard"][kind as usize]
                );
                match kind {
                    0 | 1 => img.write_at(&pattern(len as usize, rng.next()), off),
                    2 => img.write_zeroes(off, len, rng.below(2) == 0),
                    _ => img.discard(off, len),
                }
                .unwrap_or_else(|e| panic!("step {step} {what}: {e}"));
                for b in top.iter_mut().filter(|b| b.enabled) {
                    b.mark(off, len);
                }
            }
            9 | 10 => {
                let name = NAMES[rng.below(4) as usize];
                let gran = GRANULARITIES[rng.below(3) as usize];
                let enabled = rng.below(4) != 0;
                what = format!("add {name} {gran} {enabled}");
                let r = q.bitmap_add(name, Some(gran), enabled);
                if top.iter().any(|b| b.name == name) {
                    assert!(r.is_err(), "step {step}: {what} accepted a duplicate");
                } else {
                    r.unwrap_or_else(|e| panic!("step {step} {what}: {e}"));
                    top.push(Bitmap {
                        name: name.into(),
                        gran,
                        enabled,
                        bits: vec![false; SIZE.div_ceil(gran) as usize],
                    });
                }
            }
            11 | 12 => {
                let name = NAMES[rng.below(4) as usize];
                let op = rng.below(4);
                what = format!(
                    "{} {name}",
                    ["remove", "clear", "enable", "disable"][op as usize]
                );
                let r = match op {
                    0 => q.bitmap_remove(name),
                    1 => q.bitmap_clear(name),
                    2 => q.bitmap_set_enabled(name, true),
                    _ => q.bitmap_set_enabled(name, false),
                };
                match top.iter().position(|b| b.name == name) {
                    None => assert!(r.is_err(), "step {step}: {what} of a missing bitmap"),
                    Some(i) => {
                        r.unwrap_or_else(|e| panic!("step {step} {what}: {e}"));
                        match op {
                            0 => {
                                top.remove(i);
                            }
                            1 => top[i].bits.fill(false),
                            2 => top[i].enabled = true,
                            _ => top[i].enabled = false,
                        }
                    }
                }
            }
            13 => {
                let (t, s) = (NAMES[rng.below(4) as usize], NAMES[rng.below(4) as usize]);
                what = format!("merge {s} into {t}");
                let (ti, si) = (
                    top.iter().position(|b| b.name == t),
                    top.iter().position(|b| b.name == s),
                );
                if let (Some(ti), Some(si)) = (ti, si) {
                    let extents = q.bitmap_dirty(s).unwrap();
                    q.bitmap_merge(t, &extents)
                        .unwrap_or_else(|e| panic!("step {step} {what}: {e}"));
                    for (o, l) in top[si].ranges() {
                        top[ti].mark(o, l);
                    }
                }
            }
            14 => {
                // A flush, then a sequential stream of in-place overwrites
                // (bits made durable first, marked ahead of the stream).
                let start = rng.below(SIZE - (1 << 20));
                what = format!("flush, stream at {start}");
                img.flush().unwrap();
                for k in 0..16 {
                    let off = start + k * 65536;
                    img.write_at(&pattern(65536, k), off).unwrap();
                    for b in top.iter_mut().filter(|b| b.enabled) {
                        b.mark(off, 65536);
                    }
                }
            }
            15 | 16 => {
                what = "reopen".into();
                img.close().unwrap();
                drop(img);
                img = open_top(paths.last().unwrap());
            }
            _ => {
                if layers.len() >= 4 {
                    continue;
                }
                what = "external snapshot".into();
                img.close().unwrap();
                drop(img);
                let next = at(&d, &format!("l{}.qcow2", layers.len()));
                run_tx(&[Action::SnapshotExternal {
                    file: paths.last().unwrap().clone(),
                    overlay: Some(next.clone()),
                    name: None,
                    reuse: false,
                }])
                .unwrap_or_else(|e| panic!("step {step} {what}: {e}"));
                let top = layers.last_mut().unwrap();
                let fresh: Vec<Bitmap> = top
                    .iter()
                    .filter(|b| b.enabled)
                    .map(|b| Bitmap {
                        bits: vec![false; b.bits.len()],
                        ..b.clone()
                    })
                    .collect();
                for b in top.iter_mut() {
                    b.enabled = false;
                }
                layers.push(fresh);
                paths.push(next);
                img = open_top(paths.last().unwrap());
            }
        }
        check_all(
            img.as_ref(),
            &layers,
            &format!("seed {seed} step {step} ({what})"),
        );
    }
    img.close().unwrap();
    drop(img);
    for p in &paths {
        assert_qemu_clean(p);
    }
    let top = paths.last().unwrap();
    for b in layers.last().unwrap() {
        assert_eq!(
            nbd_dirty(top, &b.name, d.path()),
            union(b.ranges()),
            "seed {seed}: qemu-nbd's view of bitmap {}",
            b.name
        );
    }
}

#[test]
fn dirty_since_follows_the_model() {
    for seed in 1..=8 {
        run_model(seed, 400);
    }
}
