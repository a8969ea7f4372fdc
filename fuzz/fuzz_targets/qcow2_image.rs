//! A whole qcow2 file, opened read-only from memory as `strata img info`,
//! `map`, `convert` and `snapshot -l` would: every parser the open and the
//! reads reach (header, extensions, L1/L2 tables, snapshot table and the
//! snapshots' L1 tables, bitmap directory and tables, compressed clusters).
//! Any file gets an error, never a panic. (`check` has its own target,
//! `qcow2_check`: it is slow on garbage.)
//!
//! The input is the start of the file; the file is 1 MiB long (or as
//! long as the input), zeros after the input, so small inputs can hold
//! images made with the usual 64 KiB clusters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_image::Image;

/// The most guest bytes read or mapped (the rest of a huge disk repeats
/// the same code paths).
const SPAN: u64 = 16 << 20;

fn read_some(img: &dyn Image) {
    let size = img.size();
    let _ = img.block_status(0, size.min(SPAN));
    let mut buf = vec![0u8; 64 << 10];
    for at in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let n = (size - at.min(size)).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..n], at);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(img) = strata_fuzz::open_qcow2(data) else {
        return;
    };
    let _ = img.header();
    read_some(&img);
    if let Ok(bitmaps) = img.bitmaps() {
        for b in bitmaps.iter().take(4) {
            let _ = img.bitmap_dirty(&b.name);
        }
    }
    if let Ok(snapshots) = img.snapshots() {
        for s in snapshots.iter().take(2) {
            if let Ok(view) = img.snapshot_view(&s.name) {
                read_some(&view);
            }
        }
    }
});
