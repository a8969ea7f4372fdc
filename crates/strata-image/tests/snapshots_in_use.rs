//! Internal snapshots of an image that is open and in use: writer threads
//! keep writing numbered blocks, each into its own region and in order,
//! while snapshots are created (and some deleted). Every snapshot must show
//! each region as a clean prefix — blocks 0..k written, the rest untouched —
//! so a snapshot is one instant, never a torn mix; qemu-img agrees.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use strata_image::qcow2::CreateOptions;

const WRITERS: u64 = 4;
const BLOCK: u64 = 12 * 1024; // crosses 4 KiB clusters unevenly
const BLOCKS: u64 = 80;
const REGION: u64 = BLOCK * BLOCKS;

fn block(writer: u64, n: u64) -> Vec<u8> {
    let mut b = pattern(BLOCK as usize, writer * 1000 + n + 1);
    b[..16].copy_from_slice(&[(writer as u8) + 1; 16]);
    b
}

/// The number of leading blocks written in a region; panics when a later
/// block is written or a block is torn.
fn prefix(data: &[u8], writer: u64, ctx: &str) -> u64 {
    let mut k = 0;
    while k < BLOCKS
        && data[(k * BLOCK) as usize..((k + 1) * BLOCK) as usize] == block(writer, k)[..]
    {
        k += 1;
    }
    let rest = &data[(k * BLOCK) as usize..];
    assert!(
        rest.iter().all(|&b| b == 0),
        "{ctx}: writer {writer}: block {k} is torn or a later block is written"
    );
    k
}

#[test]
fn snapshots_while_writing() {
    let d = tmp();
    let path = at(&d, "busy.qcow2");
    create(
        &path,
        CreateOptions {
            size: WRITERS * REGION,
            cluster_size: 4096,
            ..Default::default()
        },
    );
    let img = open_rw(&path);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let img = img.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for n in 0..BLOCKS {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    img.write_at(&block(w, n), w * REGION + n * BLOCK).unwrap();
                    // Pace the writers so their work spans the snapshots.
                    std::thread::sleep(std::time::Duration::from_micros(400));
                }
            })
        })
        .collect();
    let mut names = Vec::new();
    for i in 0..12 {
        let name = format!("t{i}");
        qcow2(&img).snapshot_create(Some(&name), 0).unwrap();
        names.push(name);
        if i % 4 == 3 {
            let gone = names.remove(0);
            qcow2(&img).snapshot_delete(&gone).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let mut last = vec![0u64; WRITERS as usize];
    let mut mid_flight = 0;
    for name in &names {
        let view = qcow2(&img).snapshot_view(name).unwrap();
        let data = read_all(&view);
        for w in 0..WRITERS {
            let region = &data[(w * REGION) as usize..((w + 1) * REGION) as usize];
            let k = prefix(region, w, &format!("snapshot {name}"));
            assert!(
                k >= last[w as usize],
                "snapshot {name}: writer {w} went back in time"
            );
            if 0 < k && k < BLOCKS {
                mid_flight += 1;
            }
            last[w as usize] = k;
        }
        // qemu-img (sharing the open image, -U) reads the same instant.
        assert!(
            qemu_read_snapshot(&path, name, d.path()) == data,
            "snapshot {name}: qemu-img reads differently"
        );
    }
    eprintln!("{mid_flight} region snapshots caught a writer mid-flight");
    assert!(
        mid_flight > 0,
        "no snapshot caught a writer in flight: the test proves nothing"
    );
    drop(img);
    assert_qemu_clean(&path);
}
