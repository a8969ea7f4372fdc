//! strata's QEMU driver: it starts and watches `qemu-system-*` for a
//! machine described in types, and talks to it over QMP.
//!
//! - [`machine`]: [`Machine`], the typed description (emulator, CPU,
//!   memory, firmware or direct kernel boot, disks served over
//!   vhost-user-blk or NBD, network, serial, controllers, graphics, the
//!   devices virt-install gives a Linux guest).
//! - [`cmdline`]: the machine as QEMU arguments, a `Vec<OsString>` that can
//!   be tested exactly; always paused at start (`-S`), `-nodefaults`, QMP on
//!   a unix socket.
//! - [`emulator`]: finding the binary on `PATH` and probing what it has.
//! - [`process`]: the process in its own group, its output in a log, its
//!   end noticed however it comes.
//! - [`qmp`]: a typed QMP client with command ids, typed errors, events on a
//!   stream and timeouts.
//! - [`agent`]: a client of qemu-guest-agent over the channel QEMU serves
//!   (sync, filesystem freeze and thaw), as libvirt's `--quiesce` uses it.
//! - [`hypervisor`]: the [`Hypervisor`]/[`Vm`] seam the layers above use,
//!   with QEMU as its implementation.
//!
//! It knows nothing of images, domain XML or the store: strata-core maps a
//! domain onto a [`Machine`] and serves its disks.

#![deny(missing_docs)]

pub mod agent;
pub mod cmdline;
pub mod emulator;
pub mod error;
pub mod hypervisor;
pub mod machine;
pub mod process;
pub mod qmp;

pub use agent::GuestAgent;
pub use cmdline::{command_line, Runtime};
pub use emulator::{Capabilities, Emulator};
pub use error::{Error, Result};
pub use hypervisor::{
    BoxFuture, Hypervisor, QemuHypervisor, QemuVm, SavedState, StartOptions, Vm, VmEvent, VmEvents,
    VmStatus,
};
pub use machine::Machine;
pub use process::{ExitInfo, QemuProcess, SpawnOptions};
pub use qmp::{Event, EventMessage, EventStream, QmpClient, QmpOptions};
