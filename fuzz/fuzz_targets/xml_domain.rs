//! `strata_core::Domain::from_xml` (libvirt domain XML): hostile text gets
//! an error, never a panic; a domain it accepts is written back (with and
//! without secrets) as XML it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::Domain;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(dom) = Domain::from_xml(&text, "domain.xml") else {
        return;
    };
    let _ = (dom.name(), dom.uuid(), dom.description(), dom.disks());
    for secrets in [true, false] {
        let out = dom.to_xml(secrets);
        if let Err(e) = Domain::from_xml(&out, "written.xml") {
            panic!("strata cannot read the domain XML it wrote: {e}\n{out}");
        }
    }
});
