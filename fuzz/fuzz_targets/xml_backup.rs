//! `strata_core::backup::BackupDef::from_xml` (libvirt domainbackup XML):
//! hostile text gets an error, never a panic; a definition it accepts is
//! resolved against a two-disk domain, and written as XML it accepts again.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use strata_core::backup::BackupDef;
use strata_core::Domain;

static DOMAIN: LazyLock<Domain> = LazyLock::new(|| {
    Domain::from_xml(
        "<domain type='kvm'><name>d</name><devices>\
         <disk type='file' device='disk'><driver type='qcow2'/><source file='/i/a.qcow2'/><target dev='vda'/></disk>\
         <disk type='file' device='cdrom'><source file='/i/cd.iso'/><target dev='hdc'/></disk>\
         <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdb'/></disk>\
         </devices></domain>",
        "domain.xml",
    )
    .expect("the fixed domain is valid")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(def) = BackupDef::from_xml(&text, "backup.xml") else {
        return;
    };
    let resolved = def.resolve(&DOMAIN, 1_700_000_000, "backup.xml");
    for d in std::iter::once(&def).chain(resolved.as_ref().ok()) {
        let out = d.to_xml();
        if let Err(e) = BackupDef::from_xml(&out, "written.xml") {
            panic!("strata cannot read the backup XML it wrote: {e}\n{out}");
        }
    }
});
