//! The seam higher layers use to run machines: [`Hypervisor`] starts a
//! [`Machine`] and hands back a [`Vm`], which pauses, resumes, powers
//! down, destroys and reports. [`QemuHypervisor`] is the implementation;
//! tests of the layers above can fake both traits.
//!
//! The traits return boxed futures so that they can be used as trait
//! objects (`Box<dyn Vm>`).

mod qemu;
mod state;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::machine::Machine;
use crate::process::ExitInfo;
use crate::qmp::{EventMessage, QmpOptions, RunState};
use crate::Result;

pub use qemu::{QemuHypervisor, QemuVm};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How to start a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOptions {
    /// A directory for the run's files (created 0700 if missing): the QMP
    /// socket `qmp.sock`, the pid file `qemu.pid`, the log `qemu.log`. Keep
    /// it short: the socket path must fit in 107 bytes.
    pub run_dir: PathBuf,
    /// Leave the machine paused (`prelaunch`) instead of running it.
    pub paused: bool,
    /// QMP timeouts.
    pub qmp: QmpOptions,
    /// How long [`Vm::destroy`] waits after SIGTERM before SIGKILL.
    pub destroy_grace: Duration,
    /// Kill the emulator when its [`Vm`] handle is dropped.
    pub kill_on_drop: bool,
    /// Start waiting for a saved state (`-incoming defer`), paused in
    /// `inmigrate`, for [`Vm::load_state`].
    pub incoming: bool,
}

impl StartOptions {
    /// Defaults: running, 10 s to connect, 30 s per command, 10 s of grace,
    /// killed on drop.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        StartOptions {
            run_dir: run_dir.into(),
            paused: false,
            qmp: QmpOptions::default(),
            destroy_grace: Duration::from_secs(10),
            kill_on_drop: true,
            incoming: false,
        }
    }
}

/// What a machine is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    /// The emulator runs; the vCPUs run or not.
    Active {
        /// Whether the vCPUs run.
        running: bool,
        /// QEMU's run state.
        state: RunState,
    },
    /// The emulator has exited.
    Exited(ExitInfo),
}

/// Something that happened to a machine.
#[derive(Debug, Clone, PartialEq)]
pub enum VmEvent {
    /// A QMP event.
    Qmp(EventMessage),
    /// The emulator exited. Always the last event.
    Exited(ExitInfo),
}

/// A machine's events: QMP events in order, then exactly one
/// [`VmEvent::Exited`], then the end.
#[derive(Debug)]
pub struct VmEvents {
    rx: mpsc::UnboundedReceiver<VmEvent>,
}

impl VmEvents {
    /// Events fed from `rx` (for implementations of [`Vm`], fakes included).
    pub fn new(rx: mpsc::UnboundedReceiver<VmEvent>) -> Self {
        VmEvents { rx }
    }

    /// The next event; `None` after [`VmEvent::Exited`].
    pub async fn next(&mut self) -> Option<VmEvent> {
        self.rx.recv().await
    }

    /// The next event matching `pred`, skipping others.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&VmEvent) -> bool,
    ) -> Option<VmEvent> {
        while let Some(e) = self.rx.recv().await {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    }
}

/// Starts machines.
pub trait Hypervisor: Send + Sync {
    /// Starts `machine`; returns once it is paused in `prelaunch`
    /// ([`StartOptions::paused`]) or running.
    fn start<'a>(
        &'a self,
        machine: &'a Machine,
        opts: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>>;

    /// Takes over machine `name`, started earlier (by a daemon that has
    /// since died or restarted) in `opts.run_dir` and still running there.
    fn adopt<'a>(
        &'a self,
        name: &'a str,
        opts: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>> {
        let _ = name;
        Box::pin(async move {
            Err(crate::Error::NotAdoptable {
                run_dir: opts.run_dir.clone(),
                reason: "this hypervisor cannot take over machines".into(),
            })
        })
    }
}

/// A started machine.
pub trait Vm: Send + Sync {
    /// The machine's name.
    fn name(&self) -> &str;
    /// The emulator's process id.
    fn pid(&self) -> u32;
    /// What it is doing.
    fn status(&self) -> BoxFuture<'_, Result<VmStatus>>;
    /// Stops the vCPUs.
    fn pause(&self) -> BoxFuture<'_, Result<()>>;
    /// Runs the vCPUs.
    fn resume(&self) -> BoxFuture<'_, Result<()>>;
    /// Presses the ACPI power button; the guest decides what follows.
    fn powerdown(&self) -> BoxFuture<'_, Result<()>>;
    /// Ends the emulator now (SIGTERM, then SIGKILL after the grace time);
    /// returns how it ended.
    fn destroy(&self) -> BoxFuture<'_, Result<ExitInfo>>;
    /// Waits until the emulator has exited.
    fn wait(&self) -> BoxFuture<'_, ExitInfo>;
    /// The machine's events; `Some` the first time only.
    fn take_events(&self) -> Option<VmEvents>;
    /// Writes the machine's memory and device state (QEMU's migration
    /// stream) into `path` from byte `offset` on, and returns once all of
    /// it is there. A paused machine stays paused; a running one runs
    /// while its memory is copied and is paused for the last of it (it is
    /// then in `postmigrate`). The bytes before `offset` are left zero.
    fn save_state<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<SavedState>> {
        let _ = (path, offset);
        unsupported("saving state")
    }
    /// Starts writing the machine's state into `path` from byte `offset`
    /// on while it runs (a pre-copy migration: the memory is copied, then
    /// what the guest changed meanwhile, again and again), and returns once
    /// the guest is paused for the last part: its memory and disks do not
    /// change until [`Vm::finish_save`] (or [`Vm::cancel_save`]).
    fn save_state_live<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<()>> {
        let _ = (path, offset);
        unsupported("saving state live")
    }
    /// Writes the rest of the state [`Vm::save_state_live`] began; the
    /// machine stays paused (`postmigrate`).
    fn finish_save<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<SavedState>> {
        let _ = (path, offset);
        unsupported("saving state live")
    }
    /// Gives up the save [`Vm::save_state_live`] began; the guest runs on.
    fn cancel_save(&self) -> BoxFuture<'_, Result<()>> {
        unsupported("saving state live")
    }
    /// Loads a state [`Vm::save_state`] wrote into a machine started with
    /// [`StartOptions::incoming`], and returns once it is loaded; the
    /// machine stays paused.
    fn load_state<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<()>> {
        let _ = (path, offset);
        unsupported("loading state")
    }
}

/// What a saved state took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SavedState {
    /// The stream's length in bytes.
    pub bytes: u64,
    /// How long the guest was paused for it by the save itself, in
    /// milliseconds (0 when it was paused already).
    pub downtime_ms: u64,
    /// How long the save took, in milliseconds.
    pub total_ms: u64,
}

/// The answer of a [`Vm`] that cannot do `what`.
fn unsupported<'a, T: 'a>(what: &'static str) -> BoxFuture<'a, Result<T>> {
    Box::pin(async move { Err(crate::Error::Unsupported { what }) })
}
