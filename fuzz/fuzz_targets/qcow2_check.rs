//! `strata img check` (read-only) on a whole qcow2 file from memory: the
//! refcount walk over every table of a hostile image reports problems,
//! never panics. Input as for `qcow2_image` (the start of a 1 MiB file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_image::qcow2::CheckMode;

fuzz_target!(|data: &[u8]| {
    if let Some(img) = strata_fuzz::open_qcow2(data) {
        let _ = img.check(CheckMode::ReadOnly);
    }
});
