//! Many threads on one open image at once. Disjoint phase: each thread owns
//! a slice whose edges fall inside clusters shared with its neighbours (so
//! copy-on-write of one cluster races between threads) and checks every read
//! against its private model while the others write. Overlap phase: threads
//! write whole tagged sectors anywhere; afterwards every sector holds zeros
//! or an intact tag that some thread wrote there. `qemu-img check` is clean.

mod common;
use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use strata_image::qcow2::CreateOptions;
use strata_image::Image;

const THREADS: u64 = 8;
const SIZE: u64 = 16 << 20;

fn disjoint(img: &Arc<dyn Image>, base: &[u8], seed: u64) {
    let slice = SIZE / THREADS - 333; // edges land mid-cluster
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            let start = t * slice + 1000;
            let mut model = base[start as usize..(start + slice) as usize].to_vec();
            std::thread::spawn(move || {
                let mut rng = Rng(seed + t);
                for i in 0..300 {
                    let len = 1 + rng.below(150_000.min(slice - 1));
                    let off = rng.below(slice - len);
                    match rng.below(6) {
                        0 => {
                            img.write_zeroes(start + off, len, rng.below(2) == 0)
                                .unwrap();
                            model[off as usize..(off + len) as usize].fill(0);
                        }
                        1 | 2 => {
                            let mut b = vec![0u8; len as usize];
                            img.read_at(&mut b, start + off).unwrap();
                            assert!(
                                b == model[off as usize..(off + len) as usize],
                                "thread {t} op {i}: read differs"
                            );
                        }
                        _ => {
                            let d = pattern(len as usize, rng.next());
                            img.write_at(&d, start + off).unwrap();
                            model[off as usize..(off + len) as usize].copy_from_slice(&d);
                        }
                    }
                }
                let mut b = vec![0u8; slice as usize];
                img.read_at(&mut b, start).unwrap();
                assert!(b == model, "thread {t}: final slice differs");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked");
    }
}

fn tag(sector: u64, thread: u64, seq: u64) -> Vec<u8> {
    let mut v = pattern(512, sector * 1_000_003 + thread * 7919 + seq);
    v[..8].copy_from_slice(&thread.to_le_bytes());
    v[8..16].copy_from_slice(&seq.to_le_bytes());
    v[16..24].copy_from_slice(&sector.to_le_bytes());
    v
}

fn overlapping(img: &Arc<dyn Image>) {
    let written: Arc<Mutex<HashSet<(u64, u64, u64)>>> = Arc::default();
    let sectors = SIZE / 512;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(900 + t);
                for seq in 0..200 {
                    let n = 1 + rng.below(300);
                    let first = rng.below(sectors - n);
                    let mut buf = Vec::with_capacity((n * 512) as usize);
                    for s in first..first + n {
                        buf.extend_from_slice(&tag(s, t, seq));
                    }
                    written
                        .lock()
                        .unwrap()
                        .extend((first..first + n).map(|s| (s, t, seq)));
                    img.write_at(&buf, first * 512).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked");
    }
    let all = read_all(img.as_ref());
    let written = written.lock().unwrap();
    for (s, sector) in all.chunks(512).enumerate() {
        let s = s as u64;
        if sector.iter().all(|&b| b == 0) {
            continue;
        }
        let t = u64::from_le_bytes(sector[..8].try_into().unwrap());
        let seq = u64::from_le_bytes(sector[8..16].try_into().unwrap());
        if written.contains(&(s, t, seq)) {
            assert_eq!(sector, tag(s, t, seq), "sector {s} is torn");
        } else {
            // Never overwritten in this phase: it keeps its disjoint-phase bytes.
            assert!(
                !written.iter().any(|&(ws, _, _)| ws == s),
                "sector {s} holds bytes nobody wrote"
            );
        }
    }
}

fn run_case(opts: CreateOptions, with_backing: bool) {
    let d = tmp();
    let path = at(&d, "c.qcow2");
    let base_path = at(&d, "base.raw");
    let base = if with_backing {
        pattern(SIZE as usize, 5)
    } else {
        vec![0u8; SIZE as usize]
    };
    let mut o = opts;
    o.size = SIZE;
    if with_backing {
        write_raw(&base_path, &base);
        o.backing_file = Some("base.raw".into());
        o.backing_format = Some("raw".into());
    }
    create(&path, o);
    let img = open_rw(&path);
    disjoint(&img, &base, 1);
    overlapping(&img);
    img.flush().unwrap();
    drop(img);
    assert_qemu_clean(&path);
}

#[test]
fn threads_64k_with_backing() {
    run_case(CreateOptions::default(), true);
}

#[test]
fn threads_4k() {
    run_case(
        CreateOptions {
            cluster_size: 4096,
            ..Default::default()
        },
        false,
    );
}

#[test]
fn threads_extl2_with_backing() {
    run_case(
        CreateOptions {
            extended_l2: true,
            ..Default::default()
        },
        true,
    );
}
