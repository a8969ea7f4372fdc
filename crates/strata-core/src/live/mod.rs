//! Running domains: what strata-core knows of a machine that runs — for
//! now, the machine QEMU runs for a domain ([`machine::machine_of`]). The
//! live variants of snapshots, checkpoints and backups join them here.

mod devices;
pub mod machine;

pub use machine::machine_of;
