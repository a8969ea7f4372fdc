//! `strata img bench` does what it says: the same random writes fed to
//! qemu-io leave an identical image, and sequential reads/writes cover the
//! range qemu-img bench would.

mod common;
use common::*;

/// The xorshift64 offsets `--random` promises (also used by bench/img-vs-qemu.sh).
fn random_offsets(seed: u64, n: usize, slots: u64, size: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * size
        })
        .collect()
}

#[test]
fn random_writes_match_qemu_io_with_the_same_offsets() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "a.qcow2", "16M"]);
    qemu_img(p, &["create", "-q", "-f", "qcow2", "b.qcow2", "16M"]);
    let r = ok(
        p,
        &[
            "img",
            "bench",
            "-w",
            "-s",
            "4K",
            "-c",
            "300",
            "-d",
            "4",
            "--random",
            "7",
            "--pattern",
            "0x5a",
            "a.qcow2",
        ],
    );
    assert!(
        r.stdout.contains("Sending 300 write requests"),
        "{}",
        r.stdout
    );
    let cmds: Vec<String> = random_offsets(7, 300, (16 << 20) / 4096, 4096)
        .into_iter()
        .map(|o| format!("write -P 0x5a {o} 4k"))
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(p, "qcow2", "b.qcow2", &refs);
    assert_clean(p, "a.qcow2");
    assert_same(p, "a.qcow2", "b.qcow2");
}

#[test]
fn sequential_writes_cover_the_range() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"]);
    ok(
        p,
        &[
            "img",
            "bench",
            "-w",
            "-s",
            "64K",
            "-c",
            "16",
            "-o",
            "1M",
            "--pattern",
            "3",
            "a.qcow2",
        ],
    );
    let reference = reference(p, "ref.raw", 4 << 20, &[(1 << 20, &[3u8; 1 << 20])]);
    assert_same(p, "a.qcow2", reference.to_str().unwrap());
    ok(p, &["img", "bench", "-s", "1M", "-c", "8", "a.qcow2"]);
}
