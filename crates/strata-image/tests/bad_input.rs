//! Broken and hostile images: each gives a clear error naming the problem,
//! never a panic, and the file is not modified (not even by a writable open).

mod common;
use common::*;
use std::path::Path;
use strata_image::{ChainOptions, Format};

fn qcow2(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let p = at(dir, name);
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "16M"]);
    run("qemu-io", &["-c", "write -P 0x42 0 128k", s(&p)]);
    p
}

fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// Opens (read-only and writable) and reads the whole image; returns the first error.
fn try_everything(path: &Path, format: Option<Format>) -> Option<String> {
    for writable in [false, true] {
        let opts = ChainOptions {
            writable,
            format,
            ..Default::default()
        };
        match strata_image::open(path, &opts) {
            Err(e) => return Some(e.to_string()),
            Ok(img) => {
                let mut buf = vec![0u8; 1 << 20];
                let mut pos = 0;
                while pos < img.size() {
                    let n = (img.size() - pos).min(buf.len() as u64);
                    if let Err(e) = img.read_at(&mut buf[..n as usize], pos) {
                        return Some(e.to_string());
                    }
                    pos += n;
                }
                if let Err(e) = img.block_status(0, img.size()) {
                    return Some(e.to_string());
                }
            }
        }
    }
    None
}

struct Case {
    name: &'static str,
    build: fn(&tempfile::TempDir) -> std::path::PathBuf,
    expect: &'static str,
}

/// Cases that must be opened with the format given (as `-f qcow2`).
const FORCED_QCOW2: &[&str] = &["bad magic (opened as qcow2)"];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "truncated header",
            build: |d| {
                let p = at(d, "t.qcow2");
                std::fs::write(&p, [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3, 0, 0]).unwrap();
                p
            },
            expect: "truncated header",
        },
        Case {
            name: "v3 header cut at 80 bytes",
            build: |d| {
                let p = qcow2(d, "t80.qcow2");
                let data = std::fs::read(&p).unwrap();
                std::fs::write(&p, &data[..80]).unwrap();
                p
            },
            expect: "truncated header",
        },
        Case {
            name: "bad magic (opened as qcow2)",
            build: |d| {
                let p = qcow2(d, "m.qcow2");
                patch(&p, 0, b"QFI\0");
                p
            },
            expect: "bad magic",
        },
        Case {
            name: "L1 table past the end",
            build: |d| {
                let p = qcow2(d, "l1.qcow2");
                patch(&p, 40, &(1u64 << 40).to_be_bytes());
                p
            },
            expect: "L1 table at offset 0x10000000000",
        },
        Case {
            name: "refcount table overlapping the header",
            build: |d| {
                let p = qcow2(d, "rt.qcow2");
                patch(&p, 48, &0u64.to_be_bytes());
                p
            },
            expect: "refcount table at offset 0 overlaps the header",
        },
        Case {
            name: "cluster_bits too small",
            build: |d| {
                let p = qcow2(d, "cb8.qcow2");
                patch(&p, 20, &8u32.to_be_bytes());
                p
            },
            expect: "cluster_bits 8",
        },
        Case {
            name: "cluster_bits too large",
            build: |d| {
                let p = qcow2(d, "cb30.qcow2");
                patch(&p, 20, &30u32.to_be_bytes());
                p
            },
            expect: "cluster_bits 30",
        },
        Case {
            name: "huge virtual size",
            build: |d| {
                let p = qcow2(d, "huge.qcow2");
                patch(&p, 24, &(u64::MAX - 511).to_be_bytes());
                p
            },
            expect: "virtual size",
        },
        Case {
            name: "virtual size larger than the L1 table maps",
            build: |d| {
                let p = qcow2(d, "l1small.qcow2");
                patch(&p, 24, &(1u64 << 40).to_be_bytes());
                p
            },
            expect: "are needed for virtual size",
        },
        Case {
            name: "unknown incompatible feature",
            build: |d| {
                let p = qcow2(d, "feat.qcow2");
                patch(&p, 72, &(1u64 << 40).to_be_bytes());
                p
            },
            expect: "incompatible feature(s) bit 40",
        },
        Case {
            name: "version 4",
            build: |d| {
                let p = qcow2(d, "v4.qcow2");
                patch(&p, 4, &4u32.to_be_bytes());
                p
            },
            expect: "qcow2 version 4",
        },
        Case {
            name: "header_length not a multiple of 8",
            build: |d| {
                let p = qcow2(d, "hl.qcow2");
                patch(&p, 100, &105u32.to_be_bytes());
                p
            },
            expect: "header_length 105",
        },
        Case {
            name: "refcount_order 7",
            build: |d| {
                let p = qcow2(d, "ro.qcow2");
                patch(&p, 96, &7u32.to_be_bytes());
                p
            },
            expect: "refcount_order 7",
        },
        Case {
            name: "encryption",
            build: |d| {
                let p = qcow2(d, "enc.qcow2");
                patch(&p, 32, &1u32.to_be_bytes());
                p
            },
            expect: "encryption",
        },
        Case {
            name: "extension running past the first cluster",
            build: |d| {
                let p = qcow2(d, "ext.qcow2");
                // The feature table extension length at 112+4.
                patch(&p, 116, &0x0010_0000u32.to_be_bytes());
                p
            },
            expect: "runs past the first cluster",
        },
        Case {
            name: "L2 entry with an unaligned host offset",
            build: |d| {
                let p = qcow2(d, "l2.qcow2");
                // L2 table at cluster 4; first entry.
                patch(&p, 0x40000, &(0x8000_0000_0005_0200u64).to_be_bytes());
                p
            },
            expect: "unaligned host offset",
        },
        Case {
            name: "garbage compressed cluster",
            build: |d| {
                let p = at(d, "cz.qcow2");
                run("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "1M"]);
                run("qemu-io", &["-c", "write -c -P 0x42 0 64k", s(&p)]);
                // Compressed data follows the L2 table at cluster 5.
                patch(&p, 0x50000, &[0xff; 64]);
                p
            },
            expect: "compressed cluster at host offset",
        },
        Case {
            name: "backing loop",
            build: |d| {
                let a = at(d, "a.qcow2");
                let b = at(d, "b.qcow2");
                run("qemu-img", &["create", "-q", "-f", "qcow2", s(&b), "1M"]);
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-b",
                        "b.qcow2",
                        "-F",
                        "qcow2",
                        s(&a),
                    ],
                );
                run(
                    "qemu-img",
                    &["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)],
                );
                a
            },
            expect: "makes a loop",
        },
        Case {
            name: "missing backing file",
            build: |d| {
                let a = at(d, "o.qcow2");
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-u",
                        "-b",
                        "nowhere.qcow2",
                        "-F",
                        "qcow2",
                        s(&a),
                        "1M",
                    ],
                );
                a
            },
            expect: "could not open backing file",
        },
    ]
}

#[test]
fn broken_images_give_clear_errors_and_stay_unmodified() {
    for case in cases() {
        let d = tmp();
        let path = (case.build)(&d);
        let before = std::fs::read(&path).unwrap();
        let format = FORCED_QCOW2.contains(&case.name).then_some(Format::Qcow2);
        let err =
            try_everything(&path, format).unwrap_or_else(|| panic!("{}: no error", case.name));
        assert!(
            err.contains(case.expect),
            "{}: error {err:?} does not say {:?}",
            case.name,
            case.expect
        );
        assert!(
            err.contains(".qcow2"),
            "{}: error {err:?} does not name the file",
            case.name
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{}: the file was modified",
            case.name
        );
    }
}

/// Random byte flips in the header cluster and tables never panic.
#[test]
fn random_corruption_never_panics() {
    let d = tmp();
    let pristine = qcow2(&d, "orig.qcow2");
    let bytes = std::fs::read(&pristine).unwrap();
    let path = at(&d, "fuzz.qcow2");
    let mut rng = Rng(4242);
    for _ in 0..400 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            // Header, refcount table, refcount block, L1, L2: the first 5 clusters.
            let i = rng.below(5 * 65536) as usize;
            b[i] = rng.next() as u8;
        }
        std::fs::write(&path, &b).unwrap();
        let _ = try_everything(&path, None);
    }
}
