//! Quick throughput probe (not a benchmark): sequential 1 MiB writes and reads.
use std::time::Instant;
use strata_image::qcow2::{CreateOptions, Qcow2};
use strata_image::ChainOptions;

fn main() {
    let path = std::path::Path::new("/tmp/probe.qcow2");
    let _ = std::fs::remove_file(path);
    Qcow2::create_file(
        path,
        &CreateOptions {
            size: 1 << 30,
            ..Default::default()
        },
    )
    .unwrap();
    let img = strata_image::open(
        path,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for i in 0..1024u64 {
        img.write_at(&buf, i << 20).unwrap();
    }
    println!("seq write loop: {:.3}s", t.elapsed().as_secs_f64());
    img.flush().unwrap();
    println!("seq write + flush: {:.3}s", t.elapsed().as_secs_f64());
    let mut rb = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..1024u64 {
        img.read_at(&mut rb, i << 20).unwrap();
    }
    println!("seq read: {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut x = 12345u64;
    let small = vec![1u8; 4096];
    for _ in 0..20000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        img.write_at(&small, (x % (1 << 18)) * 4096).unwrap();
    }
    img.flush().unwrap();
    println!(
        "20000 random 4k overwrites: {:.3}s",
        t.elapsed().as_secs_f64()
    );
}
