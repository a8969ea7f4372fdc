//! `strata img map` against `qemu-img map`: the same entries (parsed JSON
//! and the exact text) for data, zero and compressed clusters and for
//! chains two and three deep, with a raw base.

mod common;

use common::*;
use std::path::Path;

fn assert_map_agrees(dir: &Path, file: &str) {
    let s = ok(dir, &["img", "map", "--output", "json", file]);
    let q = qemu_img(dir, &["map", "--output=json", file]);
    assert_eq!(s.json(), q.json(), "{file}: map differs");
    assert_eq!(s.stdout, q.stdout, "{file}: map text differs");
}

fn assert_human_map_agrees(dir: &Path, file: &str) {
    let s = ok(dir, &["img", "map", file]);
    let q = qemu_img(dir, &["map", file]);
    assert_eq!(s.stdout, q.stdout, "{file}: human map differs");
}

#[test]
fn single_images_with_data_and_zero_clusters() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "a.qcow2", "4M"]);
    qemu_io(
        p,
        "qcow2",
        "a.qcow2",
        &[
            "write -P 1 0 100k",
            "write -z 512k 128k",
            "write -P 2 3M 4k",
            "write -P 3 1M 64k",
        ],
    );
    assert_map_agrees(p, "a.qcow2");
    assert_human_map_agrees(p, "a.qcow2");
    // Preallocated zero clusters (zero flag with a host offset).
    qemu_io(p, "qcow2", "a.qcow2", &["write -z 3M 64k"]);
    assert_map_agrees(p, "a.qcow2");
    // Extended L2 entries, whole clusters.
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "x.qcow2",
            "2M",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "x.qcow2",
        &["write -P 5 1M 64k", "write -z 0 64k"],
    );
    assert_map_agrees(p, "x.qcow2");
    // Empty image and raw files.
    qemu_img(p, &["create", "-f", "qcow2", "e.qcow2", "1M"]);
    assert_map_agrees(p, "e.qcow2");
    qemu_img(p, &["create", "-f", "raw", "r.raw", "2M"]);
    qemu_io(p, "raw", "r.raw", &["write -P 9 64k 64k"]);
    assert_map_agrees(p, "r.raw");
    assert_human_map_agrees(p, "r.raw");
}

#[test]
fn compressed_clusters() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "src.qcow2", "2M"]);
    qemu_io(
        p,
        "qcow2",
        "src.qcow2",
        &["write -P 1 0 200k", "write -P 2 1M 64k"],
    );
    for ct in ["zlib", "zstd"] {
        let name = format!("c-{ct}.qcow2");
        let opt = format!("compression_type={ct}");
        qemu_img(
            p,
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &opt,
                "src.qcow2",
                &name,
            ],
        );
        assert_map_agrees(p, &name);
        // qemu-img cannot print host offsets of compressed clusters either.
        strata(p, &["img", "map", &name]).one_error(1, "compressed");
    }
}

#[test]
fn chains_with_a_raw_base() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "raw", "base.raw", "4M"]);
    qemu_io(
        p,
        "raw",
        "base.raw",
        &["write -P 1 0 64k", "write -P 1 2M 192k"],
    );
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "mid.qcow2",
        &["write -P 2 64k 64k", "write -z 2M 64k", "write -P 2 3M 4k"],
    );
    assert_map_agrees(p, "mid.qcow2");
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "top.qcow2",
        &["write -P 3 1M 4k", "write -z 3M 64k"],
    );
    assert_map_agrees(p, "top.qcow2");
    assert_human_map_agrees(p, "top.qcow2");
    // Two deep, both qcow2.
    qemu_img(p, &["create", "-f", "qcow2", "b.qcow2", "2M"]);
    qemu_io(
        p,
        "qcow2",
        "b.qcow2",
        &["write -P 7 0 64k", "write -z 1M 64k"],
    );
    qemu_img(
        p,
        &[
            "create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "o.qcow2",
        ],
    );
    qemu_io(
        p,
        "qcow2",
        "o.qcow2",
        &["write -P 8 1M 4k", "write -P 8 1536k 4k"],
    );
    assert_map_agrees(p, "o.qcow2");
    assert_human_map_agrees(p, "o.qcow2");
}

/// qemu reports the part of an overlay beyond its backing file's end at
/// depth 0 (no layer below has it); strata says depth 1.
#[test]

fn overlay_longer_than_its_backing_file() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "small.qcow2", "1M"]);
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "small.qcow2",
            "-F",
            "qcow2",
            "big.qcow2",
            "2M",
        ],
    );
    assert_map_agrees(p, "big.qcow2");
}

/// With extended L2 entries, qemu reports the host offset of unallocated
/// subclusters inside an allocated cluster (and splits at the cluster end);
/// strata reports them without an offset.
#[test]

fn unallocated_subclusters_of_an_allocated_cluster() {
    let d = tmp();
    let p = d.path();
    qemu_img(
        p,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "x.qcow2",
            "1M",
        ],
    );
    qemu_io(p, "qcow2", "x.qcow2", &["write -P 4 4k 2k"]);
    assert_map_agrees(p, "x.qcow2");
}

#[test]
fn images_strata_wrote_map_as_qemu_sees_them() {
    let d = tmp();
    let p = d.path();
    ok(p, &["img", "create", "-f", "qcow2", "s.qcow2", "2M"]);
    ok(
        p,
        &[
            "img",
            "write",
            "s.qcow2",
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "70K",
        ],
    );
    ok(
        p,
        &[
            "img", "write", "s.qcow2", "--offset", "1M", "--zero", "--length", "64K",
        ],
    );
    assert_map_agrees(p, "s.qcow2");
}
