//! Interop with QEMU both ways, across every image option qemu-img offers:
//! qemu-io writes, strata reads exactly; strata writes, `qemu-img check` is
//! clean and `qemu-img compare` sees exactly the bytes strata wrote; then
//! qemu-io writes again into the image strata touched.

mod common;
use common::*;
use std::path::Path;

const SIZE: u64 = 24 << 20;

/// qemu-io writes with a known pattern; returns the model.
fn qemu_populate(img: &Path, cluster: u64, compressed: bool) -> Vec<u8> {
    let mut model = vec![0u8; SIZE as usize];
    let mut cmds = vec![
        "write -P 0x11 0 4096".to_string(),
        "write -P 0x22 70000 200000".to_string(),
        format!("write -P 0x33 {} 3000000", 5 << 20),
        format!("write -z {} 1048576", 6 << 20),
        format!("write -P 0x44 {} 1000", SIZE - 1000),
    ];
    fill(&mut model, 0, 4096, 0x11);
    fill(&mut model, 70000, 200000, 0x22);
    fill(&mut model, 5 << 20, 3000000, 0x33);
    fill(&mut model, 6 << 20, 1 << 20, 0);
    fill(&mut model, (SIZE - 1000) as usize, 1000, 0x44);
    if compressed {
        let at = 16 << 20;
        cmds.push(format!("write -c -P 0x55 {at} {}", cluster * 4));
        fill(&mut model, at as usize, (cluster * 4) as usize, 0x55);
    }
    let mut args: Vec<&str> = Vec::new();
    for c in &cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(s(img));
    run("qemu-io", &args);
    model
}

fn roundtrip(opts: &str, cluster: u64, compressed: bool) {
    let d = tmp();
    let img = at(&d, "img.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            s(&img),
            &SIZE.to_string(),
        ],
    );
    let mut model = qemu_populate(&img, cluster, compressed);
    // strata reads what QEMU wrote.
    {
        let i = open_ro(&img);
        assert_eq!(
            read_all(i.as_ref()),
            model,
            "{opts}: strata read differs from what qemu-io wrote"
        );
    }
    // strata writes into it.
    {
        let i = open_rw(&img);
        let mut rng = Rng(cluster ^ opts.len() as u64);
        random_writes(i.as_ref(), &mut model, &mut rng, 60, 3 * cluster.max(4096));
        // Overwrite part of the compressed clusters too.
        if compressed {
            let data = pattern(777, 9);
            let at = (16 << 20) + cluster + 5;
            i.write_at(&data, at).unwrap();
            model[at as usize..at as usize + 777].copy_from_slice(&data);
        }
        i.flush().unwrap();
        assert_eq!(
            read_all(i.as_ref()),
            model,
            "{opts}: strata reads back differently"
        );
    }
    assert_qemu_clean(&img);
    let raw = at(&d, "expect.raw");
    write_raw(&raw, &model);
    assert_qemu_identical(&img, &raw);
    // QEMU writes into the image strata modified.
    run("qemu-io", &["-c", "write -P 0x66 1234567 99999", s(&img)]);
    fill(&mut model, 1234567, 99999, 0x66);
    assert_qemu_clean(&img);
    let i = open_ro(&img);
    assert_eq!(
        read_all(i.as_ref()),
        model,
        "{opts}: read after qemu-io write"
    );
}

#[test]
fn cluster_512() {
    roundtrip("cluster_size=512", 512, true);
}

#[test]
fn cluster_4k() {
    roundtrip("cluster_size=4096", 4096, true);
}

#[test]
fn cluster_64k_default() {
    roundtrip("cluster_size=65536", 65536, true);
}

#[test]
fn cluster_2m() {
    roundtrip("cluster_size=2M", 2 << 20, false);
}

#[test]
fn refcount_widths() {
    for bits in [1, 2, 4, 8, 32, 64] {
        roundtrip(
            &format!("refcount_bits={bits},cluster_size=4096"),
            4096,
            false,
        );
    }
}

#[test]
fn compat_010() {
    roundtrip("compat=0.10", 65536, true);
}

#[test]
fn extended_l2() {
    roundtrip("extended_l2=on,cluster_size=65536", 65536, true);
    roundtrip("extended_l2=on,cluster_size=16384", 16384, false);
}

#[test]
fn zstd_compression() {
    roundtrip("compression_type=zstd", 65536, true);
}

#[test]
fn lazy_refcounts() {
    roundtrip("lazy_refcounts=on", 65536, false);
}

/// A QEMU process killed with lazy refcounts leaves the dirty bit set;
/// strata repairs the refcounts on a writable open.
#[test]
fn dirty_image_is_repaired_on_open() {
    let d = tmp();
    let img = at(&d, "dirty.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            s(&img),
            "8M",
        ],
    );
    let (_code, _) = run_status(
        "qemu-io",
        &[
            "-c",
            "write -P 0x77 0 3M",
            "-c",
            "flush",
            "-c",
            "sigraise 9",
            s(&img),
        ],
    );
    let info = run("qemu-img", &["info", "--output=json", "-U", s(&img)]);
    assert!(
        info.contains("\"dirty-flag\": true"),
        "qemu-io left a clean image: {info}"
    );
    {
        let i = open_rw(&img);
        let mut b = vec![0u8; 3 << 20];
        i.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0x77));
        i.write_at(&[1, 2, 3], 5 << 20).unwrap();
    }
    let info = run("qemu-img", &["info", "--output=json", s(&img)]);
    assert!(
        info.contains("\"dirty-flag\": false"),
        "strata left the image dirty: {info}"
    );
    assert_qemu_clean(&img);
}

/// raw <- qcow2 <- qcow2 (different cluster sizes), relative backing names.
#[test]
fn three_deep_mixed_chain() {
    let d = tmp();
    let base = at(&d, "base.raw");
    let mid = at(&d, "mid.qcow2");
    let top = at(&d, "top.qcow2");
    let mut model = pattern(SIZE as usize, 3);
    write_raw(&base, &model);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&mid),
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0xa1 10000 300000",
            "-c",
            "write -z 2M 1M",
            s(&mid),
        ],
    );
    fill(&mut model, 10000, 300000, 0xa1);
    fill(&mut model, 2 << 20, 1 << 20, 0);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0xb2 200000 5000",
            "-c",
            "write -P 0xb3 4M 70000",
            s(&top),
        ],
    );
    fill(&mut model, 200000, 5000, 0xb2);
    fill(&mut model, 4 << 20, 70000, 0xb3);
    {
        let i = open_ro(&top);
        assert_eq!(read_all(i.as_ref()), model, "chain read differs");
    }
    {
        let i = open_rw(&top);
        let mut rng = Rng(77);
        random_writes(i.as_ref(), &mut model, &mut rng, 80, 200_000);
    }
    for f in [&top, &mid] {
        assert_qemu_clean(f);
    }
    let raw = at(&d, "expect.raw");
    write_raw(&raw, &model);
    assert_qemu_identical(&top, &raw);
    // The base files were not touched.
    let i = open_ro(&mid);
    let mut b = vec![0u8; 5000];
    i.read_at(&mut b, 200000).unwrap();
    assert!(
        b.iter().all(|&x| x == 0xa1),
        "strata wrote into a backing file"
    );
}

/// Images strata creates with every option pass qemu-img check and read
/// back in qemu-img exactly.
#[test]
fn strata_created_images_with_every_option() {
    use strata_image::qcow2::{CompressionType, CreateOptions};
    let cases = [
        CreateOptions {
            cluster_size: 512,
            ..Default::default()
        },
        CreateOptions {
            cluster_size: 2 << 20,
            ..Default::default()
        },
        CreateOptions {
            refcount_bits: 1,
            cluster_size: 4096,
            ..Default::default()
        },
        CreateOptions {
            refcount_bits: 64,
            cluster_size: 512,
            ..Default::default()
        },
        CreateOptions {
            version: 2,
            ..Default::default()
        },
        CreateOptions {
            extended_l2: true,
            ..Default::default()
        },
        CreateOptions {
            compression: CompressionType::Zstd,
            ..Default::default()
        },
        CreateOptions {
            lazy_refcounts: true,
            ..Default::default()
        },
    ];
    for (n, mut o) in cases.into_iter().enumerate() {
        let d = tmp();
        let img = at(&d, "s.qcow2");
        o.size = SIZE;
        create(&img, o.clone());
        assert_qemu_clean(&img);
        let mut model = vec![0u8; SIZE as usize];
        {
            let i = open_rw(&img);
            let mut rng = Rng(n as u64 + 100);
            random_writes(
                i.as_ref(),
                &mut model,
                &mut rng,
                100,
                3 * o.cluster_size.max(4096),
            );
        }
        eprintln!("case {n}: {o:?}");
        assert_qemu_clean(&img);
        let raw = at(&d, "e.raw");
        write_raw(&raw, &model);
        assert_qemu_identical(&img, &raw);
    }
}

/// Preallocated images strata makes look to qemu-img exactly like the ones
/// qemu-img makes: same map, clean check, and the file's blocks reserved
/// for falloc/full.
#[test]
fn preallocation_matches_qemu() {
    use strata_image::qcow2::{CreateOptions, Preallocation};
    for (name, mode) in [
        ("metadata", Preallocation::Metadata),
        ("falloc", Preallocation::Falloc),
        ("full", Preallocation::Full),
    ] {
        let d = tmp();
        let ours = at(&d, "ours.qcow2");
        let theirs = at(&d, "theirs.qcow2");
        create(
            &ours,
            CreateOptions {
                size: 10 << 20,
                preallocation: mode,
                ..Default::default()
            },
        );
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("preallocation={name}"),
                s(&theirs),
                "10M",
            ],
        );
        assert_qemu_clean(&ours);
        let map = |p: &std::path::Path| run("qemu-img", &["map", "--output=json", s(p)]);
        assert_eq!(map(&ours), map(&theirs), "{name}: qemu-img map differs");
        let blocks = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().blocks()
        };
        if mode != Preallocation::Metadata {
            assert!(
                blocks(&ours) * 512 >= 10 << 20,
                "{name}: file blocks not reserved"
            );
        }
        // Writing into the preallocated clusters stays clean.
        let i = open_rw(&ours);
        i.write_at(&pattern(100_000, 1), 12345).unwrap();
        drop(i);
        assert_qemu_clean(&ours);
    }
}
