//! The registry of domains the daemon has seen: per domain, an async
//! mutex that serialises lifecycle operations, its state and reason (a
//! watch channel, so waiters see changes), and, while active, the
//! [`Running`] domain: the [`Vm`] handle and the disks the daemon serves.
//!
//! The state is changed by operations (start, suspend, resume) and by
//! QEMU's events (see [`crate::lifecycle::watch`]); only the event watcher
//! ends a run, once the emulator has exited and the disks are closed, so a
//! domain reads `shut off` only when its images are closed and its locks
//! released.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use strata_core::lock::DomainLock;
use strata_qemu::Vm;
use tokio::sync::watch;

use crate::disks::ServedDisk;
use crate::types::{DiskInfo, Reason, State};

/// Locks a std mutex, ignoring poisoning (the data stays consistent: each
/// critical section is a plain assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every domain the daemon has seen.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    last_id: AtomicU32,
}

impl Registry {
    /// The slot of `name`, made on first use.
    pub fn slot(&self, name: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Slot::new(name)))
            .clone()
    }

    /// The slot of `name`, if it was ever made.
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(name).cloned()
    }

    /// Every slot.
    pub fn all(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).values().cloned().collect()
    }

    /// The slots of active (running or paused) domains.
    pub fn active(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots)
            .values()
            .filter(|s| s.status().state.is_active())
            .cloned()
            .collect()
    }

    /// A new domain id (libvirt numbers each start).
    pub fn next_id(&self) -> u32 {
        self.last_id.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Notes an id a run taken over keeps: new ids come after it.
    pub fn keep_id(&self, id: u32) {
        self.last_id.fetch_max(id, Ordering::SeqCst);
    }
}

/// What a domain is doing, as last known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// The domain id while active.
    pub id: Option<u32>,
    /// The emulator's pid while active.
    pub pid: Option<u32>,
}

/// One domain's place in the registry.
#[derive(Debug)]
pub struct Slot {
    /// The domain's name.
    pub name: String,
    /// Held for the whole of a lifecycle operation: two never interleave.
    pub op: tokio::sync::Mutex<()>,
    status: watch::Sender<Status>,
    run: Mutex<Option<Arc<Running>>>,
}

impl Slot {
    fn new(name: &str) -> Slot {
        Slot {
            name: name.to_string(),
            op: tokio::sync::Mutex::new(()),
            status: watch::Sender::new(Status {
                state: State::ShutOff,
                reason: Reason::Unknown,
                id: None,
                pid: None,
            }),
            run: Mutex::new(None),
        }
    }

    /// The status now.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver that sees every later change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Sets the state and reason of the current run.
    pub fn set_state(&self, state: State, reason: Reason) {
        self.status.send_modify(|s| {
            if (s.state, s.reason) != (state, reason) {
                tracing::info!(domain = %self.name, state = state.as_str(), reason = reason.as_str(), "state");
            }
            s.state = state;
            s.reason = reason;
        });
    }

    /// Changes the state with `f` (from the current status), atomically.
    pub fn update(&self, f: impl FnOnce(&Status) -> Option<(State, Reason)>) {
        self.status.send_if_modified(|s| match f(s) {
            Some((state, reason)) if (s.state, s.reason) != (state, reason) => {
                tracing::info!(domain = %self.name, state = state.as_str(), reason = reason.as_str(), "state");
                s.state = state;
                s.reason = reason;
                true
            }
            _ => false,
        });
    }

    /// The running domain, while active.
    pub fn running(&self) -> Option<Arc<Running>> {
        lock(&self.run).clone()
    }

    /// Records a new run, active from now on.
    pub fn begin(&self, run: Arc<Running>, state: State, reason: Reason) {
        let (id, pid) = (run.id, run.vm.pid());
        *lock(&self.run) = Some(run);
        tracing::info!(domain = %self.name, id, pid, state = state.as_str(), reason = reason.as_str(), "state");
        self.status.send_replace(Status {
            state,
            reason,
            id: Some(id),
            pid: Some(pid),
        });
    }

    /// Ends the current run: shut off for `reason`.
    pub fn end(&self, reason: Reason) {
        *lock(&self.run) = None;
        tracing::info!(domain = %self.name, state = "shut off", reason = reason.as_str(), "state");
        self.status.send_replace(Status {
            state: State::ShutOff,
            reason,
            id: None,
            pid: None,
        });
    }

    /// Marks a failed start (the domain stays shut off).
    pub fn failed(&self) {
        self.status.send_modify(|s| {
            if !s.state.is_active() {
                s.reason = Reason::Failed;
            }
        });
    }
}

/// Who asked a run to end, which decides the shut-off reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// Nobody (yet): the guest, or a crash.
    None,
    /// `destroy`.
    Destroy,
    /// `save`: the state is in a file now.
    Save,
    /// `snapshot create --halt`: stopped once its snapshot was taken.
    Snapshot,
    /// The daemon, while stopping.
    Daemon,
}

/// An active domain: its emulator and the disks the daemon serves.
pub struct Running {
    /// The domain id.
    pub id: u32,
    /// The domain's UUID.
    pub uuid: String,
    /// The emulator.
    pub vm: Box<dyn Vm>,
    /// `STATE/run/NAME`: sockets, pid file, QMP socket, QEMU's log.
    pub run_dir: PathBuf,
    /// The served disks, as the API shows them (new tops after a live
    /// snapshot included).
    disk_info: Mutex<Vec<DiskInfo>>,
    disks: tokio::sync::Mutex<Vec<ServedDisk>>,
    lock: Mutex<Option<DomainLock>>,
    end: Mutex<EndCause>,
    /// Its block jobs.
    pub jobs: crate::lifecycle::blockjob::RunJobs,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("id", &self.id)
            .field("pid", &self.vm.pid())
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A run of `vm` with `disks`, holding the domain's `lock`.
    pub fn new(
        id: u32,
        uuid: String,
        vm: Box<dyn Vm>,
        run_dir: PathBuf,
        disks: Vec<ServedDisk>,
        lock: DomainLock,
    ) -> Running {
        Running {
            id,
            uuid,
            vm,
            run_dir,
            disk_info: Mutex::new(disks.iter().map(ServedDisk::info).collect()),
            disks: tokio::sync::Mutex::new(disks),
            lock: Mutex::new(Some(lock)),
            end: Mutex::new(EndCause::None),
            jobs: Default::default(),
        }
    }

    /// Records who is ending the run (the first one counts).
    pub fn set_end(&self, cause: EndCause) {
        let mut e = lock(&self.end);
        if *e == EndCause::None {
            *e = cause;
        }
    }

    /// Who asked the run to end.
    pub fn end_cause(&self) -> EndCause {
        *lock(&self.end)
    }

    /// The served disks, as the API shows them.
    pub fn disk_info(&self) -> Vec<DiskInfo> {
        lock(&self.disk_info).clone()
    }

    /// Shows `disks` from now on (after their tops changed).
    pub fn show_disks(&self, disks: &[ServedDisk]) {
        *lock(&self.disk_info) = disks.iter().map(ServedDisk::info).collect();
    }

    /// The served disks, locked, from a blocking task (an operation on
    /// them: a live snapshot or checkpoint).
    pub fn disks_blocking(&self) -> tokio::sync::MutexGuard<'_, Vec<ServedDisk>> {
        self.disks.blocking_lock()
    }

    /// The run's record, as its disks are now.
    pub fn record_of(&self, disks: &[ServedDisk]) -> crate::journal::RunRecord {
        crate::journal::RunRecord {
            id: self.id,
            uuid: self.uuid.clone(),
            disks: disks.iter().map(ServedDisk::record).collect(),
        }
    }

    /// Closes the disks (servers stopped, images flushed and closed),
    /// releases the domain lock and removes the run's record: the run is
    /// over. Safe to call more than once.
    pub async fn release(&self) {
        self.hand_over().await;
        let record = self.run_dir.join(crate::journal::FILE);
        if let Err(e) = std::fs::remove_file(&record) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %record.display(), error = %e, "cannot remove the run record");
            }
        }
    }

    /// Closes the disks and releases the domain lock as [`Running::release`]
    /// does, but keeps the run's record and leaves QEMU running: the next
    /// daemon takes the run over (a graceful restart). Every disk stops
    /// taking requests and answers those in flight before it closes.
    pub async fn hand_over(&self) {
        let disks = std::mem::take(&mut *self.disks.lock().await);
        crate::disks::close_all(disks).await;
        lock(&self.lock).take();
    }
}
