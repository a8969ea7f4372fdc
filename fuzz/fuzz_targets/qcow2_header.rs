//! `strata_image::qcow2::Header::parse`: any first cluster gets an error,
//! never a panic; a header it accepts is written by `to_bytes` as one that
//! parses back to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_image::qcow2::Header;

fuzz_target!(|data: &[u8]| {
    // The file as long as the input, and as a 1 TiB sparse file.
    for file_len in [data.len() as u64, data.len() as u64 + (1 << 40)] {
        let Ok(h) = Header::parse("fuzz.qcow2", data, file_len) else {
            continue;
        };
        let _ = (h.cluster_size(), h.refcount_bits(), h.backing_format());
        let Ok(bytes) = h.to_bytes("fuzz.qcow2") else {
            continue;
        };
        match Header::parse("written.qcow2", &bytes, file_len) {
            Ok(again) => assert_eq!(again, h, "the header changed on a round trip"),
            Err(e) => panic!("strata cannot read the header it wrote: {e}"),
        }
    }
});
