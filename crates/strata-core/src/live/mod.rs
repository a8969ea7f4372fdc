//! Running domains: what strata-core knows of a machine that runs: the
//! machine QEMU runs for a domain ([`machine::machine_of`]) and the disks
//! an operation is handed, offline or served to a running guest
//! ([`disks`]); the file a saved machine is kept in ([`saved`]), and the one strata
//! keeps for a domain ([`managed`]).

mod devices;
pub mod disks;
pub mod machine;
pub mod managed;
pub mod saved;

pub use disks::{Disks, Offline, Quiesced};
pub use machine::{guest_agent_socket, machine_of};
