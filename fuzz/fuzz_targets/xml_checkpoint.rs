//! `strata_core::checkpoint::CheckpointDef::from_xml` and
//! `CheckpointRequest::from_xml` (libvirt domaincheckpoint XML): hostile
//! text gets an error, never a panic; a definition it accepts is written as
//! XML it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::checkpoint::{CheckpointDef, CheckpointRequest};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = CheckpointRequest::from_xml(&text, "checkpoint.xml");
    let Ok(def) = CheckpointDef::from_xml(&text, "checkpoint.xml") else {
        return;
    };
    let sizes: Vec<(String, u64)> = def.disks.iter().map(|d| (d.name.clone(), 4096)).collect();
    for (sizes, with_domain) in [(None, true), (Some(sizes.as_slice()), false)] {
        let out = def.to_xml(sizes, with_domain);
        if let Err(e) = CheckpointDef::from_xml(&out, "written.xml") {
            panic!("strata cannot read the checkpoint XML it wrote: {e}\n{out}");
        }
    }
});
