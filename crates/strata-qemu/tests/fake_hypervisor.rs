//! The `Hypervisor`/`Vm` seam can be faked without QEMU, as the layers
//! above will do in their tests: a fake that keeps a run state and emits
//! the events QEMU would.

use std::sync::Mutex;

use strata_qemu::hypervisor::{
    BoxFuture, Hypervisor, StartOptions, Vm, VmEvent, VmEvents, VmStatus,
};
use strata_qemu::qmp::{Event, EventMessage, RunState, ShutdownReason, Timestamp};
use strata_qemu::{Error, ExitInfo, Machine, Result};
use tokio::sync::mpsc;

struct FakeHypervisor;

struct FakeVm {
    name: String,
    state: Mutex<Option<RunState>>,
    tx: mpsc::UnboundedSender<VmEvent>,
    events: Mutex<Option<VmEvents>>,
}

impl FakeVm {
    fn emit(&self, event: Event) {
        let _ = self.tx.send(VmEvent::Qmp(EventMessage {
            event,
            timestamp: Timestamp::default(),
        }));
    }

    fn set(&self, from_running: bool, to: RunState, event: Event) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        match &*st {
            None => Err(Error::Exited {
                pid: 1,
                status: ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            }),
            Some(s) if (*s == RunState::Running) == from_running => {
                *st = Some(to);
                self.emit(event);
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }
}

impl Hypervisor for FakeHypervisor {
    fn start<'a>(
        &'a self,
        machine: &'a Machine,
        opts: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let vm = FakeVm {
                name: machine.name.clone(),
                state: Mutex::new(Some(RunState::Prelaunch)),
                tx,
                events: Mutex::new(Some(VmEvents::new(rx))),
            };
            if !opts.paused {
                vm.set(false, RunState::Running, Event::Resume)?;
            }
            Ok(Box::new(vm) as Box<dyn Vm>)
        })
    }
}

impl Vm for FakeVm {
    fn name(&self) -> &str {
        &self.name
    }
    fn pid(&self) -> u32 {
        1
    }
    fn status(&self) -> BoxFuture<'_, Result<VmStatus>> {
        Box::pin(async move {
            Ok(match self.state.lock().unwrap().clone() {
                Some(state) => VmStatus::Active {
                    running: state == RunState::Running,
                    state,
                },
                None => VmStatus::Exited(ExitInfo {
                    code: Some(0),
                    signal: None,
                }),
            })
        })
    }
    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.set(true, RunState::Paused, Event::Stop) })
    }
    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.set(false, RunState::Running, Event::Resume) })
    }
    fn powerdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.emit(Event::Powerdown);
            Ok(())
        })
    }
    fn destroy(&self) -> BoxFuture<'_, Result<ExitInfo>> {
        Box::pin(async move {
            let info = ExitInfo {
                code: Some(0),
                signal: None,
            };
            if self.state.lock().unwrap().take().is_some() {
                self.emit(Event::Shutdown {
                    guest: false,
                    reason: ShutdownReason::HostSignal,
                });
                let _ = self.tx.send(VmEvent::Exited(info));
            }
            Ok(info)
        })
    }
    fn wait(&self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(async move {
            ExitInfo {
                code: Some(0),
                signal: None,
            }
        })
    }
    fn take_events(&self) -> Option<VmEvents> {
        self.events.lock().unwrap().take()
    }
}

#[tokio::test]
async fn a_fake_stands_in_for_qemu_behind_the_traits() {
    let h: Box<dyn Hypervisor> = Box::new(FakeHypervisor);
    let m = Machine::new("fake");
    let vm = h
        .start(&m, &StartOptions::new("/nonexistent"))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: true,
            state: RunState::Running
        }
    );
    vm.pause().await.unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: false,
            state: RunState::Paused
        }
    );
    vm.destroy().await.unwrap();
    drop(vm);
    let mut names = Vec::new();
    while let Some(e) = ev.next().await {
        names.push(match e {
            VmEvent::Qmp(m) => m.event.name().to_owned(),
            VmEvent::Exited(_) => "exited".into(),
        });
    }
    assert_eq!(names, ["RESUME", "STOP", "SHUTDOWN", "exited"]);
}
