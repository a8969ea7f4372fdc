//! strata-vhost: a vhost-user-blk backend serving any strata [`Image`] to a
//! QEMU guest, built on rust-vmm's vhost-user-backend framework.
//!
//! [`serve`] exports an image on a unix socket and returns a
//! [`ServerHandle`]; QEMU attaches it with
//! `-chardev socket,id=c0,path=SOCK,reconnect-ms=1000 -device
//! vhost-user-blk-pci,chardev=c0,num-queues=N` over guest memory it shares
//! (`-object memory-backend-memfd,share=on`). The handle's [`Gate`] pauses
//! every queue, drains the requests in flight, swaps the served image and
//! resumes: live snapshots quiesce disks with it.
//!
//! Layout, bottom up:
//! - [`config`]: how a disk is exported, checked before anything starts;
//! - `device`: feature bits, request limits, the virtio-blk config space;
//! - `request`: a descriptor chain turned into a checked request;
//! - `execute`: a request run against the image and guest memory;
//! - [`gate`]: pause, drain, resume, swap;
//! - `pool`, `queue`: a queue's thread takes requests off its ring, its I/O
//!   threads run them concurrently and answer in any order;
//! - `backend`: the device as the framework drives it (dirty logging for
//!   migration included);
//! - [`server`]: the socket, one connection after another.
//!
//! The crate knows nothing of domains, snapshots or QMP.
#![deny(missing_docs)]

mod backend;
pub mod config;
mod device;
pub mod error;
mod execute;
pub mod gate;
mod pool;
mod queue;
mod request;
pub mod server;
#[cfg(test)]
mod testrig;
#[cfg(test)]
mod testutil;

pub use config::Config;
pub use error::{Error, Result};
pub use gate::{Gate, Paused};
pub use server::{serve, ServerHandle};
pub use strata_image::Image;
