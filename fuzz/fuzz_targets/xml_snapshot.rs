//! `strata_core::snapshot::SnapshotDef::from_xml` (libvirt domainsnapshot
//! XML): hostile text gets an error, never a panic; a definition it
//! accepts is written as XML it accepts again (the store keeps that XML).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::snapshot::SnapshotDef;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(def) = SnapshotDef::from_xml(&text, "snapshot.xml") else {
        return;
    };
    let _ = (def.is_external(), def.has_memory());
    for secrets in [true, false] {
        let out = def.to_xml(secrets);
        if let Err(e) = SnapshotDef::from_xml(&out, "written.xml") {
            panic!("strata cannot read the snapshot XML it wrote: {e}\n{out}");
        }
    }
});
