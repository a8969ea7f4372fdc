//! Inputs the fuzz targets (`fuzz/`, `docs/fuzzing.md`) found crashing
//! strata, each kept as a test named after its bug: a hostile image must get
//! a clear error, never a panic or an abort.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{at, open_ro, qcow2 as driver, run, s, tmp};
use strata_image::qcow2::bitmaps::FLAG_AUTO;
use strata_image::qcow2::header::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use strata_image::qcow2::{self, CheckMode, CreateOptions, OpenOptions, Qcow2};
use strata_image::storage::{MemoryStorage, Storage};
use strata_image::Image;

/// One bitmap directory entry: enabled, no extra data.
fn dir_entry(table_offset: u64, table_size: u32, gran_bits: u8, name: &str) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&table_offset.to_be_bytes());
    e.extend_from_slice(&table_size.to_be_bytes());
    e.extend_from_slice(&FLAG_AUTO.to_be_bytes());
    e.extend_from_slice(&[1, gran_bits]);
    e.extend_from_slice(&(name.len() as u16).to_be_bytes());
    e.extend_from_slice(&0u32.to_be_bytes());
    e.extend_from_slice(name.as_bytes());
    e.resize(e.len().div_ceil(8) * 8, 0);
    e
}

/// A new image in memory whose bitmaps extension (`count` bitmaps) points
/// at `directory`, written in the cluster after the metadata; `table` is
/// written in the cluster after that, whose offset `directory` is given.
fn with_bitmaps(
    opts: &CreateOptions,
    count: u32,
    directory: impl Fn(u64) -> Vec<u8>,
    table: &[u64],
) -> MemoryStorage {
    let st = MemoryStorage::new("hostile.qcow2");
    qcow2::create(&st, opts).unwrap();
    let cs = opts.cluster_size;
    let dir_offset = st.len().unwrap().div_ceil(cs) * cs;
    let table_offset = dir_offset + cs;
    let dir = directory(table_offset);
    let mut ext = Vec::new();
    ext.extend_from_slice(&count.to_be_bytes());
    ext.extend_from_slice(&0u32.to_be_bytes());
    ext.extend_from_slice(&(dir.len() as u64).to_be_bytes());
    ext.extend_from_slice(&dir_offset.to_be_bytes());
    let mut h = qcow2::read_header(&st).unwrap();
    h.set_extension(EXT_BITMAPS, Some(ext));
    h.autoclear |= AUTOCLEAR_BITMAPS;
    st.write_at(&h.to_bytes("hostile.qcow2").unwrap(), 0)
        .unwrap();
    st.write_at(&dir, dir_offset).unwrap();
    let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
    st.write_at(&raw, table_offset).unwrap();
    st.set_len(table_offset + 2 * cs).unwrap();
    st
}

fn open(st: &MemoryStorage, writable: bool) -> strata_image::Result<Qcow2> {
    let st: Arc<dyn Storage> = Arc::new(st.clone());
    let opts = OpenOptions {
        writable,
        lock: false,
        ..Default::default()
    };
    Qcow2::open(st, None, &opts)
}

/// A bitmap table entry pointing far past the end of the file was taken
/// as the bitmap's data cluster: a writable open then wrote the bitmap's
/// bits there on the first guest write (in memory: an allocation of
/// petabytes, an abort; on a file: a huge sparse file or an I/O error).
/// Unaligned entries and reserved bits were taken too. Now every entry is
/// checked as QEMU checks it, and inside the file.
#[test]
fn bitmap_table_entry_past_the_end_of_the_file() {
    let small = CreateOptions {
        size: 4 << 20,
        cluster_size: 4096,
        ..Default::default()
    };
    for (entry, what) in [
        (0x00ff_ffff_ffff_0000, "past the end"),
        (0x0000_0000_0010_0200, "unaligned"),
        (0x1000_0000_0000_4000, "reserved bit 60"),
        (0x0000_0000_0000_4001, "all-ones bit with an offset"),
    ] {
        let st = with_bitmaps(&small, 1, |t| dir_entry(t, 1, 16, "b"), &[entry]);
        let before = st.snapshot();
        let err = match open(&st, true) {
            Ok(img) => {
                let write = img.write_at(&[1; 4096], 0).and_then(|()| img.close());
                write.expect_err(what)
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            err.is_corrupt() && msg.contains("bitmap 'b': table entry 0"),
            "{what}: {msg}"
        );
        assert_eq!(st.snapshot(), before, "{what}: the file was changed");
        let img = open(&st, false).unwrap();
        let msg = img.bitmap_dirty("b").unwrap_err().to_string();
        assert!(msg.contains("table entry 0"), "{what}: {msg}");
    }
}

/// A bitmap of a huge disk at a fine granularity needs a table QEMU would
/// refuse (here 2^17 entries of 2 MiB clusters: 256 GiB of bitmap data);
/// strata allocated it whole to read the bitmap, and aborted. Now the
/// directory is refused with QEMU's limits.
#[test]
fn bitmap_table_bigger_than_qemu_allows() {
    let huge = CreateOptions {
        size: 1 << 50,
        cluster_size: 2 << 20,
        ..Default::default()
    };
    let entries = (1u64 << 41) / (2 << 20) / 8;
    let st = with_bitmaps(&huge, 1, |t| dir_entry(t, entries as u32, 9, "fine"), &[]);
    let img = open(&st, false).unwrap();
    let msg = img.bitmaps().unwrap_err().to_string();
    assert!(msg.contains("more than QEMU allows"), "{msg}");
    assert!(img.bitmap_dirty("fine").is_err());
    assert!(open(&st, true).is_err());
}

/// The bitmaps extension's count (32 bits) sized the directory's list up
/// front: 4 billion bitmaps asked for hundreds of GiB, and aborted. Now the
/// count is limited to QEMU's 65535.
#[test]
fn bitmap_count_in_the_billions() {
    let small = CreateOptions {
        size: 4 << 20,
        cluster_size: 4096,
        ..Default::default()
    };
    let st = with_bitmaps(&small, 0xffff_0000, |t| dir_entry(t, 1, 16, "b"), &[0]);
    let img = open(&st, false).unwrap();
    let msg = img.bitmaps().unwrap_err().to_string();
    assert!(msg.contains("4294901760 bitmaps"), "{msg}");
    assert!(open(&st, true).is_err());
}

/// A qemu-img image with 512-byte clusters and one internal snapshot whose
/// table entry then gets `l1_offset` and `l1_size`.
fn snapshot_pointing_at(dir: &tempfile::TempDir, l1_offset: u64, l1_size: u32) -> PathBuf {
    let path = at(dir, "hostile.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            s(&path),
            "4M",
        ],
    );
    run("qemu-io", &["-c", "write -P 7 0 4k", s(&path)]);
    run("qemu-img", &["snapshot", "-c", "s1", s(&path)]);
    patch_snapshot_entry(&path, l1_offset, l1_size);
    path
}

fn patch_snapshot_entry(path: &Path, l1_offset: u64, l1_size: u32) {
    let mut data = std::fs::read(path).unwrap();
    let table = u64::from_be_bytes(data[64..72].try_into().unwrap()) as usize;
    data[table..table + 8].copy_from_slice(&l1_offset.to_be_bytes());
    data[table + 8..table + 12].copy_from_slice(&l1_size.to_be_bytes());
    std::fs::write(path, data).unwrap();
}

/// `check` counted the references of a snapshot's L1 table one cluster at
/// a time, with one message per cluster past the end of the file: an entry
/// claiming 2^32 L1 entries far past the end (32 GiB, 2^26 clusters of 512
/// bytes) made 67 million messages, gigabytes, before anything was
/// reported. Now a run past the end is one message; and the snapshot's L1
/// table is refused when larger than QEMU allows.
#[test]
fn check_of_a_snapshot_l1_table_of_32_gib_past_the_end() {
    let d = tmp();
    let path = snapshot_pointing_at(&d, 1 << 40, u32::MAX);
    let img = open_ro(&path);
    let report = driver(&img).check(CheckMode::ReadOnly).unwrap();
    assert!(report.corruptions >= 1 << 26, "{report:?}");
    let past: Vec<&String> = report
        .messages
        .iter()
        .filter(|m| m.contains("after the end of the image file"))
        .collect();
    assert!(
        past.len() == 1 && past[0].contains("67108864 clusters"),
        "{:?}",
        report.messages
    );
    assert!(report.messages.len() < 100, "{:?}", report.messages);
    let err = driver(&img).snapshot_view("s1").unwrap_err().to_string();
    assert!(err.contains("invalid L1 table"), "{err}");
}

/// A snapshot L1 table offset near 2^64 made `offset + size` overflow:
/// a panic with overflow checks, and without them a table wrapped round to
/// the start of the file was read as the snapshot's.
#[test]
fn snapshot_l1_table_offset_that_overflows() {
    let d = tmp();
    let path = snapshot_pointing_at(&d, !511, 2);
    let img = open_ro(&path);
    let err = driver(&img).snapshot_view("s1").unwrap_err().to_string();
    assert!(err.contains("invalid L1 table"), "{err}");
    let report = driver(&img).check(CheckMode::ReadOnly).unwrap();
    assert!(report.corruptions > 0, "{report:?}");
}

/// A snapshot name of 30,000 invalid UTF-8 bytes reads as 90,000 bytes
/// (each bad byte becomes U+FFFD); written back with its length cut to 16
/// bits it would corrupt the table. Changing the snapshot table of such an
/// image is refused, naming the image, and leaves it as it was (found
/// while reviewing the fuzz target's round trip).
#[test]
fn snapshot_name_that_grows_past_64_kib_when_read() {
    let d = tmp();
    let img = at(&d, "long-name.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    run("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    // The one entry's name becomes 30,000 bytes of 0xff, in place (the
    // table's cluster has room, so refcounts stay right).
    let mut bytes = std::fs::read(&img).unwrap();
    let be = |b: &[u8]| b.iter().fold(0u64, |a, &x| a << 8 | x as u64) as usize;
    let table = be(&bytes[64..72]);
    let (id_len, extra) = (
        be(&bytes[table + 12..table + 14]),
        be(&bytes[table + 36..table + 40]),
    );
    let name_at = table + 40 + extra + id_len;
    bytes[table + 14..table + 16].copy_from_slice(&30_000u16.to_be_bytes());
    // The file may end with the table: the rest of its cluster reads as 0.
    bytes.resize(bytes.len().max(table + 65536), 0);
    bytes[name_at..name_at + 30_000].fill(0xff);
    std::fs::write(&img, &bytes).unwrap();
    let err = {
        let rw = common::open_rw(&img);
        driver(&rw)
            .snapshot_create(Some("s2"), 0)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err.contains("long-name.qcow2") && err.contains("16-bit"),
        "{err}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), bytes, "the image changed");
    common::assert_qemu_clean(&img);
}

/// A header whose extensions fill its 512-byte cluster exactly, with a
/// backing name offset but length 0: read back, then written with an
/// (empty) name at offset 512, outside the cluster, which the reader
/// refuses (found by the qcow2_header fuzz target in CI). An empty backing
/// name is no backing file, as QEMU reads it, and a name with no room left
/// is refused when written.
#[test]
fn empty_backing_name_in_a_header_that_fills_its_cluster() {
    let data = include_bytes!("data/header-empty-backing-name-fills-cluster.bin");
    let mut read = 0;
    for file_len in [data.len() as u64, data.len() as u64 + (1 << 40)] {
        let Ok(h) = qcow2::Header::parse("fuzz.qcow2", data, file_len) else {
            continue;
        };
        read += 1;
        assert_eq!(h.backing_file, None);
        let bytes = h.to_bytes("fuzz.qcow2").unwrap();
        let again = qcow2::Header::parse("written.qcow2", &bytes, file_len).unwrap();
        assert_eq!(again, h);
    }
    assert!(
        read > 0,
        "the header was refused: the case is not exercised"
    );
}

/// qemu-img reads an empty backing name as no backing file; so does strata
/// (info showed `"backing-filename": ""`).
#[test]
fn an_empty_backing_name_is_no_backing_file_as_qemu_reads_it() {
    let d = tmp();
    let (base, top) = (at(&d, "b.qcow2"), at(&d, "o.qcow2"));
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let mut f = std::fs::read(&top).unwrap();
    f[16..20].copy_from_slice(&0u32.to_be_bytes());
    std::fs::write(&top, &f).unwrap();
    let info = run("qemu-img", &["info", "--output=json", s(&top)]);
    assert!(!info.contains("backing"), "{info}");
    let img = open_ro(&top);
    assert!(img.backing().is_none());
    assert_eq!(driver(&img).header().backing_file, None);
}

/// An internal snapshot whose recorded disk size is so large that the end
/// of the L2 span of a read near its middle overflowed u64 (found by the
/// qcow2_image fuzz target in CI): reading the snapshot's view anywhere
/// gives data or an error, never a panic.
#[test]
fn snapshot_view_read_where_the_l2_span_end_overflows() {
    let data = include_bytes!("data/snapshot-view-read-past-any-l2-span.bin");
    let st = MemoryStorage::new("fuzz.qcow2");
    st.write_at(data, 0).unwrap();
    st.set_len((data.len() as u64).max(1 << 20)).unwrap();
    let opts = OpenOptions {
        lock: false,
        ..Default::default()
    };
    let img: Arc<dyn Image> = Arc::new(Qcow2::open(Arc::new(st), None, &opts).unwrap());
    let snapshots = img.internal_snapshots().unwrap().snapshots().unwrap();
    assert!(!snapshots.is_empty(), "the case is not exercised");
    let mut reads = 0;
    for s in snapshots.iter().take(2) {
        let Ok(view) = img.clone().snapshot_view(&s.name) else {
            continue;
        };
        let size = view.size();
        let mut buf = vec![0u8; 64 << 10];
        for at in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
            let n = (size - at.min(size)).min(buf.len() as u64) as usize;
            let _ = view.read_at(&mut buf[..n], at);
            reads += 1;
        }
    }
    assert!(
        reads > 0,
        "no snapshot view opened: the case is not exercised"
    );
}
