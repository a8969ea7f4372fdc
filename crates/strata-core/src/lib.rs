//! strata's machine layer: named domains with several disks, defined from
//! libvirt domain XML and kept in a metadata store in the state directory,
//! with the snapshot tree and checkpoint chain built on `strata-image`.

#![deny(missing_docs)]

pub mod backup;
pub mod blockjob;
pub mod checkpoint;
pub mod domain;
pub mod error;
pub mod faults;
pub mod live;
pub mod lock;
mod redefine;
mod refs;
pub mod serve;
pub mod snapshot;
pub mod store;
pub mod tree;
pub mod xml;

pub use domain::{Disk, Domain};
pub use error::{Error, Result};
pub use store::Store;

/// Seconds since the Epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
