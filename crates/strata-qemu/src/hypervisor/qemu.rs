//! [`Hypervisor`] and [`Vm`] for QEMU: probe the emulator, build the
//! command line, spawn, connect to QMP while watching for an early exit,
//! merge QMP events and the process's end into one stream, then `cont`.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{BoxFuture, Hypervisor, SavedState, StartOptions, Vm, VmEvent, VmEvents, VmStatus};
use crate::cmdline::{command_line, Runtime};
use crate::emulator::{resolve, Emulator};
use crate::machine::Machine;
use crate::process::{wait_exit, ExitInfo, QemuProcess, SpawnOptions};
use crate::qmp::{EventStream, QmpClient};
use crate::{Error, Result};

/// How long events still queued on the QMP socket are awaited once the
/// process has exited.
const DRAIN: Duration = Duration::from_millis(500);

/// Lines of the log quoted when QEMU exits during startup.
const LOG_TAIL_LINES: usize = 20;

/// Runs machines under QEMU. Remembers what each emulator binary supports.
#[derive(Debug, Default)]
pub struct QemuHypervisor {
    probed: Mutex<HashMap<PathBuf, Emulator>>,
}

impl QemuHypervisor {
    /// A hypervisor with nothing probed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The emulator of `machine`, probed once per path.
    pub async fn emulator(&self, machine: &Machine) -> Result<Emulator> {
        let path = resolve(&machine.emulator)?;
        if let Some(e) = self.lock().get(&path) {
            return Ok(e.clone());
        }
        let e = Emulator::probe(&crate::machine::EmulatorPath::Path(path.clone())).await?;
        self.lock().insert(path, e.clone());
        Ok(e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Emulator>> {
        self.probed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `machine` (see [`Hypervisor::start`]) with the concrete type.
    pub async fn start_qemu(&self, machine: &Machine, opts: &StartOptions) -> Result<QemuVm> {
        let emulator = self.emulator(machine).await?;
        let dir = &opts.run_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::Io {
                op: "creating run directory",
                path: dir.clone(),
                source,
            })?;
        let runtime = Runtime {
            qmp_socket: dir.join("qmp.sock"),
            pid_file: dir.join("qemu.pid"),
        };
        let mut args = command_line(machine, &runtime, &emulator.caps)?;
        if opts.incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        for stale in [&runtime.qmp_socket, &runtime.pid_file] {
            match std::fs::remove_file(stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "removing stale file",
                        path: stale.clone(),
                        source,
                    })
                }
            }
        }

        let spawn = SpawnOptions {
            log_file: dir.join("qemu.log"),
            kill_on_drop: opts.kill_on_drop,
        };
        let process = QemuProcess::spawn(&emulator.path, &args, &spawn)?;
        let span = tracing::info_span!("vm", name = %machine.name, pid = process.pid());
        let (qmp, qmp_events) = match connect(&process, &runtime.qmp_socket, opts)
            .instrument(span.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                process.kill();
                process.wait().await;
                return Err(e);
            }
        };

        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(qmp_events, process.exit_watch(), tx).instrument(span.clone()));
        let vm = QemuVm {
            name: machine.name.clone(),
            process,
            qmp,
            events: Mutex::new(Some(VmEvents::new(rx))),
            destroy_grace: opts.destroy_grace,
            qmp_socket: runtime.qmp_socket,
        };
        if !opts.paused && !opts.incoming {
            if let Err(e) = vm.qmp.cont().await {
                vm.process.kill();
                vm.process.wait().await;
                return Err(e);
            }
        }
        span.in_scope(|| tracing::info!(paused = opts.paused, "started"));
        Ok(vm)
    }
}

impl QemuHypervisor {
    /// Takes over machine `name`, whose QEMU a previous daemon started in
    /// `opts.run_dir` and which still runs: the process from its pid file
    /// (only if its command line names this run's QMP socket, so a reused
    /// pid is never taken for it), watched through a pidfd; a new QMP
    /// connection (QEMU's monitor takes one client at a time, and the old
    /// one died with its daemon); the events from now on.
    pub async fn adopt_qemu(&self, name: &str, opts: &StartOptions) -> Result<QemuVm> {
        let dir = &opts.run_dir;
        let fail = |reason: String| Error::NotAdoptable {
            run_dir: dir.clone(),
            reason,
        };
        let qmp_socket = dir.join("qmp.sock");
        let pid_file = dir.join("qemu.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| fail(format!("{}: {e}", pid_file.display())))?
            .trim()
            .parse()
            .map_err(|e| fail(format!("{}: not a pid: {e}", pid_file.display())))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| fail(format!("process {pid}: {e}")))?;
        let wanted = qmp_socket.to_string_lossy().into_owned();
        if !cmdline
            .split(|&b| b == 0)
            .any(|arg| String::from_utf8_lossy(arg).contains(&wanted))
        {
            return Err(fail(format!("process {pid} is not this run's QEMU")));
        }
        let program = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| fail(format!("process {pid}: {e}")))?;
        let process = QemuProcess::adopt(pid, &program, &dir.join("qemu.log"))?;
        let span = tracing::info_span!("vm", name = %name, pid);
        let (qmp, qmp_events) = QmpClient::connect(&qmp_socket, opts.qmp)
            .instrument(span.clone())
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(qmp_events, process.exit_watch(), tx).instrument(span.clone()));
        span.in_scope(|| tracing::info!("taken over"));
        Ok(QemuVm {
            name: name.to_string(),
            process,
            qmp,
            events: Mutex::new(Some(VmEvents::new(rx))),
            destroy_grace: opts.destroy_grace,
            qmp_socket,
        })
    }
}

/// Connects to QMP, unless the process exits first. QEMU greets only once
/// the machine is built, so a failure to connect (the socket reset, closed
/// before the greeting) is usually QEMU refusing its arguments: then the
/// exit, with the end of the log, is the error.
async fn connect(
    process: &QemuProcess,
    socket: &Path,
    opts: &StartOptions,
) -> Result<(QmpClient, EventStream)> {
    let early = |status| Error::ExitedEarly {
        emulator: process.program().into(),
        status,
        log: process.log_file().into(),
        log_tail: process.log_tail(LOG_TAIL_LINES),
    };
    tokio::select! {
        r = QmpClient::connect(socket, opts.qmp) => match r {
            Ok(c) => Ok(c),
            Err(e) => match tokio::time::timeout(DRAIN, process.wait()).await {
                Ok(status) => Err(early(status)),
                Err(_) => Err(e),
            },
        },
        status = process.wait() => Err(early(status)),
    }
}

/// Forwards QMP events, then the exit, to the machine's event stream.
async fn forward(
    mut qmp: EventStream,
    exit: watch::Receiver<Option<ExitInfo>>,
    tx: mpsc::UnboundedSender<VmEvent>,
) {
    let exited = wait_exit(exit.clone());
    tokio::pin!(exited);
    let info = loop {
        tokio::select! {
            biased;
            ev = qmp.next() => match ev {
                Some(e) => { let _ = tx.send(VmEvent::Qmp(e)); }
                // The connection ended: the process is going (or the socket
                // broke, and the process ends some other time).
                None => break (&mut exited).await,
            },
            info = &mut exited => {
                // Events QEMU wrote just before exiting may still be queued.
                while let Ok(Some(e)) = tokio::time::timeout(DRAIN, qmp.next()).await {
                    let _ = tx.send(VmEvent::Qmp(e));
                }
                break info;
            }
        }
    };
    let _ = tx.send(VmEvent::Exited(info));
}

/// A machine running under QEMU.
#[derive(Debug)]
pub struct QemuVm {
    name: String,
    process: QemuProcess,
    qmp: QmpClient,
    events: Mutex<Option<VmEvents>>,
    destroy_grace: Duration,
    qmp_socket: PathBuf,
}

impl QemuVm {
    /// The QMP client, for commands the [`Vm`] trait does not cover.
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// The emulator process.
    pub fn process(&self) -> &QemuProcess {
        &self.process
    }

    /// The QMP socket's path.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The error for an operation on an exited emulator.
    fn exited(&self, status: ExitInfo) -> Error {
        Error::Exited {
            pid: self.process.pid(),
            status,
        }
    }

    /// Runs a QMP operation; on a lost connection, reports the exit instead
    /// if the process has ended.
    async fn qmp_op<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if e.is_disconnected() => {
                match tokio::time::timeout(DRAIN, self.process.wait()).await {
                    Ok(status) => Err(self.exited(status)),
                    Err(_) => Err(e),
                }
            }
            r => r,
        }
    }
}

impl Hypervisor for QemuHypervisor {
    fn start<'a>(
        &'a self,
        machine: &'a Machine,
        opts: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>> {
        Box::pin(async move { Ok(Box::new(self.start_qemu(machine, opts).await?) as Box<dyn Vm>) })
    }

    fn adopt<'a>(
        &'a self,
        name: &'a str,
        opts: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>> {
        Box::pin(async move { Ok(Box::new(self.adopt_qemu(name, opts).await?) as Box<dyn Vm>) })
    }
}

impl Vm for QemuVm {
    fn name(&self) -> &str {
        &self.name
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn status(&self) -> BoxFuture<'_, Result<VmStatus>> {
        Box::pin(async move {
            if let Some(info) = self.process.exit_info() {
                return Ok(VmStatus::Exited(info));
            }
            match self.qmp_op(self.qmp.query_status().await).await {
                Ok(s) => Ok(VmStatus::Active {
                    running: s.running,
                    state: s.status,
                }),
                Err(Error::Exited { status, .. }) => Ok(VmStatus::Exited(status)),
                Err(e) => Err(e),
            }
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.qmp_op(self.qmp.stop().await).await })
    }

    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.qmp_op(self.qmp.cont().await).await })
    }

    fn powerdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.qmp_op(self.qmp.system_powerdown().await).await })
    }

    fn destroy(&self) -> BoxFuture<'_, Result<ExitInfo>> {
        Box::pin(async move { Ok(self.process.shutdown(self.destroy_grace).await) })
    }

    fn wait(&self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(self.process.wait())
    }

    fn take_events(&self) -> Option<VmEvents> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn save_state<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<SavedState>> {
        Box::pin(async move { self.qmp_op(self.save_state_qemu(path, offset).await).await })
    }

    fn save_state_live<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.qmp_op(self.save_state_live_qemu(path, offset).await)
                .await
        })
    }

    fn finish_save<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<SavedState>> {
        Box::pin(async move { self.qmp_op(self.finish_save_qemu(path, offset).await).await })
    }

    fn cancel_save(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.qmp_op(self.cancel_save_qemu().await).await })
    }

    fn load_state<'a>(&'a self, path: &'a Path, offset: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.qmp_op(self.load_state_qemu(path, offset).await).await })
    }
}
