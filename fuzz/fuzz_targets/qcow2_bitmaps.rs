//! The qcow2 bitmap directory (`Qcow2::bitmaps`, `bitmap_dirty`): a valid
//! empty image whose bitmaps extension points at the input as its
//! directory. Any directory gets an error, never a panic, opened read-only
//! or writable (which loads the dirty tracker and rewrites bitmaps).
//!
//! Input: the bitmap count (one byte, 0 read as 1), the virtual size in
//! MiB (one byte), then the directory.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata_image::qcow2::header::{AUTOCLEAR_BITMAPS, EXT_BITMAPS};
use strata_image::qcow2::{self, CreateOptions, OpenOptions, Qcow2};
use strata_image::storage::{MemoryStorage, Storage};
use strata_image::Image;

const CLUSTER: u64 = 4096;

fn image(size_mib: u64, nb: u32, dir: &[u8]) -> MemoryStorage {
    let st = MemoryStorage::new("fuzz.qcow2");
    qcow2::create(
        &st,
        &CreateOptions {
            size: size_mib << 20,
            cluster_size: CLUSTER,
            ..Default::default()
        },
    )
    .expect("create");
    let mut h = qcow2::read_header(&st).expect("header");
    let dir_offset = st.len().expect("len").div_ceil(CLUSTER) * CLUSTER;
    let mut ext = Vec::with_capacity(24);
    ext.extend_from_slice(&nb.to_be_bytes());
    ext.extend_from_slice(&0u32.to_be_bytes());
    ext.extend_from_slice(&(dir.len() as u64).to_be_bytes());
    ext.extend_from_slice(&dir_offset.to_be_bytes());
    h.set_extension(EXT_BITMAPS, Some(ext));
    h.autoclear |= AUTOCLEAR_BITMAPS;
    st.write_at(&h.to_bytes("fuzz.qcow2").expect("header fits"), 0)
        .expect("write");
    st.write_at(dir, dir_offset).expect("write");
    // Room for bitmap tables and data the directory may point at.
    st.set_len((dir_offset + dir.len() as u64).div_ceil(CLUSTER) * CLUSTER + 16 * CLUSTER)
        .expect("set_len");
    st
}

fn exercise(img: &Qcow2) {
    let Ok(bitmaps) = img.bitmaps() else {
        return;
    };
    for b in &bitmaps {
        let _ = (b.enabled(), b.in_use(), b.usable(), b.flag_names());
        let _ = img.bitmap_dirty(&b.name);
    }
}

fuzz_target!(|data: &[u8]| {
    let [nb, size, dir @ ..] = data else {
        return;
    };
    let st = image(*size as u64, (*nb).max(1) as u32, dir);
    let read_only = OpenOptions {
        lock: false,
        ..Default::default()
    };
    let shared: Arc<dyn Storage> = Arc::new(st.clone());
    if let Ok(img) = Qcow2::open(shared.clone(), None, &read_only) {
        exercise(&img);
    }
    let writable = OpenOptions {
        writable: true,
        ..read_only
    };
    if let Ok(img) = Qcow2::open(shared, None, &writable) {
        exercise(&img);
        let _ = img.write_at(&[0xa5; 4096], 0);
        let _ = img.close();
    }
});
