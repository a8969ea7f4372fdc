//! `strata_image::qcow2::snapshot_table::read_table`: any table gets an
//! error, never a panic; a table it accepts is written by `write_table` as
//! one that reads back with the same entries.
//!
//! Input: a 16-bit entry count, a byte giving the table's offset in 8-byte
//! units, then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_image::qcow2::snapshot_table::{read_table, write_table};
use strata_image::storage::MemoryStorage;

fuzz_target!(|data: &[u8]| {
    let [c0, c1, off, file @ ..] = data else {
        return;
    };
    let count = u16::from_be_bytes([*c0, *c1]) as u32;
    let st = MemoryStorage::from_bytes("fuzz.qcow2", file.to_vec());
    let Ok((entries, size)) = read_table(&st, *off as u64 * 8, count) else {
        return;
    };
    assert_eq!(entries.len(), count as usize);
    assert!(size.is_multiple_of(8) || entries.is_empty());
    for version in [2, 3] {
        // Names that grew past 64 KiB when read (invalid UTF-8) are refused.
        let Ok(table) = write_table(&entries, version, "written.qcow2") else {
            assert!(entries.iter().any(|e| e.name.len() > 0xffff || e.id.len() > 0xffff));
            return;
        };
        let st = MemoryStorage::from_bytes("written.qcow2", table.clone());
        let (again, again_size) = read_table(&st, 0, count)
            .unwrap_or_else(|e| panic!("strata cannot read the table it wrote: {e}"));
        assert_eq!(again_size, table.len() as u64);
        for (a, e) in again.iter().zip(&entries) {
            assert_eq!((&a.id, &a.name), (&e.id, &e.name));
            assert_eq!(
                (a.l1_table_offset, a.l1_size, a.vm_state_size),
                (e.l1_table_offset, e.l1_size, e.vm_state_size)
            );
            assert_eq!(a.extra_unknown, e.extra_unknown);
        }
    }
});
