//! The service over a fake hypervisor: QEMU's events the kit's guests
//! cannot produce on demand (a panic that pauses, a stop QEMU decided, an
//! exit without SHUTDOWN) change the state as libvirt would show it, and a
//! lifecycle operation in progress holds back a conflicting one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::{Domain, Store};
use strata_daemon::types::{Reason, State};
use strata_daemon::{Options, Service};
use strata_qemu::hypervisor::{
    BoxFuture, Hypervisor, StartOptions, Vm, VmEvent, VmEvents, VmStatus,
};
use strata_qemu::qmp::{
    Event, EventMessage, GuestPanicAction, RunState, ShutdownReason, Timestamp,
};
use strata_qemu::{ExitInfo, Machine, Result};
use tokio::sync::{mpsc, Semaphore};

/// What the test does to the fake machine, and what it saw.
#[derive(Clone)]
struct Control {
    tx: Arc<Mutex<Option<mpsc::UnboundedSender<VmEvent>>>>,
    calls: Arc<Mutex<Vec<&'static str>>>,
    /// `pause` waits for a permit.
    pause_gate: Arc<Semaphore>,
}

impl Control {
    fn emit(&self, event: Event) {
        let tx = self.tx.lock().unwrap();
        let _ = tx.as_ref().unwrap().send(VmEvent::Qmp(EventMessage {
            event,
            timestamp: Timestamp::default(),
        }));
    }

    fn exit(&self, code: i32) {
        let tx = self.tx.lock().unwrap().take().unwrap();
        let _ = tx.send(VmEvent::Exited(ExitInfo {
            code: Some(code),
            signal: None,
        }));
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

struct FakeHypervisor(Control);

struct FakeVm {
    control: Control,
    events: Mutex<Option<VmEvents>>,
}

impl Hypervisor for FakeHypervisor {
    fn start<'a>(
        &'a self,
        _m: &'a Machine,
        _o: &'a StartOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Vm>>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            *self.0.tx.lock().unwrap() = Some(tx);
            Ok(Box::new(FakeVm {
                control: self.0.clone(),
                events: Mutex::new(Some(VmEvents::new(rx))),
            }) as Box<dyn Vm>)
        })
    }
}

impl Vm for FakeVm {
    fn name(&self) -> &str {
        "vm"
    }
    fn pid(&self) -> u32 {
        4242
    }
    fn status(&self) -> BoxFuture<'_, Result<VmStatus>> {
        Box::pin(async {
            Ok(VmStatus::Active {
                running: true,
                state: RunState::Running,
            })
        })
    }
    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.control.calls.lock().unwrap().push("pause-begin");
            self.control.pause_gate.acquire().await.unwrap().forget();
            self.control.emit(Event::Stop);
            self.control.calls.lock().unwrap().push("pause-end");
            Ok(())
        })
    }
    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.control.calls.lock().unwrap().push("resume");
            self.control.emit(Event::Resume);
            Ok(())
        })
    }
    fn powerdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn destroy(&self) -> BoxFuture<'_, Result<ExitInfo>> {
        Box::pin(async move {
            self.control.emit(Event::Shutdown {
                guest: false,
                reason: ShutdownReason::HostSignal,
            });
            self.control.exit(0);
            Ok(ExitInfo {
                code: Some(0),
                signal: None,
            })
        })
    }
    fn wait(&self) -> BoxFuture<'_, ExitInfo> {
        Box::pin(std::future::pending())
    }
    fn take_events(&self) -> Option<VmEvents> {
        self.events.lock().unwrap().take()
    }
}

/// A service with domain `vm` (no disks) over the fake.
fn service(dir: &std::path::Path) -> (Arc<Service>, Control) {
    let dom = Domain::from_xml(
        "<domain type='qemu'><name>vm</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>",
        "vm.xml",
    )
    .unwrap();
    Store::open(dir).unwrap().define(&dom).unwrap();
    let control = Control {
        tx: Arc::default(),
        calls: Arc::default(),
        pause_gate: Arc::new(Semaphore::new(0)),
    };
    let hv = Arc::new(FakeHypervisor(control.clone()));
    let svc = Arc::new(Service::new(dir.to_path_buf(), hv, Options::default()));
    (svc, control)
}

/// Waits until `vm` reads `want`.
async fn state_becomes(svc: &Service, want: (State, Reason)) {
    for _ in 0..200 {
        let s = svc.state("vm").await.unwrap();
        if (s.state, s.reason) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "vm never became {want:?}: {:?}",
        svc.state("vm").await.unwrap()
    );
}

#[tokio::test]
async fn qemus_events_set_libvirts_states() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, control) = service(dir.path());
    let info = svc.start("vm", false).await.unwrap();
    assert_eq!(
        (info.state, info.reason, info.pid),
        (State::Running, Reason::Booted, Some(4242))
    );
    // QEMU stopped the vCPUs by itself, then they ran again.
    control.emit(Event::Stop);
    state_becomes(&svc, (State::Paused, Reason::Unknown)).await;
    control.emit(Event::Resume);
    state_becomes(&svc, (State::Running, Reason::Unpaused)).await;
    // A panic that pauses the guest (on_crash preserve).
    control.emit(Event::GuestPanicked {
        action: GuestPanicAction::Pause,
        info: None,
    });
    state_becomes(&svc, (State::Paused, Reason::Crashed)).await;
    // The emulator exits without a SHUTDOWN: crashed.
    control.exit(1);
    state_becomes(&svc, (State::ShutOff, Reason::Crashed)).await;

    // The guest powers off: shutdown.
    let info = svc.start("vm", true).await.unwrap();
    assert_eq!(
        (info.state, info.reason, info.id),
        (State::Paused, Reason::User, Some(2))
    );
    control.emit(Event::Shutdown {
        guest: true,
        reason: ShutdownReason::GuestShutdown,
    });
    control.exit(0);
    state_becomes(&svc, (State::ShutOff, Reason::Shutdown)).await;
    // Destroy wins over what QEMU says about its SIGTERM.
    svc.start("vm", false).await.unwrap();
    let info = svc.destroy("vm").await.unwrap();
    assert_eq!(
        (info.state, info.reason),
        (State::ShutOff, Reason::Destroyed)
    );
}

#[tokio::test]
async fn a_resume_waits_for_the_suspend_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, control) = service(dir.path());
    svc.start("vm", false).await.unwrap();
    let s = svc.clone();
    let suspend = tokio::spawn(async move { s.suspend("vm").await });
    while control.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    // The suspend is inside QEMU's `stop`; a resume now must wait for it.
    let s = svc.clone();
    let resume = tokio::spawn(async move { s.resume("vm").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(control.calls(), ["pause-begin"]);
    control.pause_gate.add_permits(1);
    let paused = suspend.await.unwrap().unwrap();
    assert_eq!((paused.state, paused.reason), (State::Paused, Reason::User));
    let resumed = resume.await.unwrap().unwrap();
    assert_eq!(
        (resumed.state, resumed.reason),
        (State::Running, Reason::Unpaused)
    );
    assert_eq!(control.calls(), ["pause-begin", "pause-end", "resume"]);
    // Wrong states, in libvirt's words.
    let e = svc.resume("vm").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Requested operation is not valid: domain is not paused"
    );
    let e = svc.start("vm", false).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Requested operation is not valid: domain is already running"
    );
    assert_eq!(e.http_status(), 409);
    let e = svc.start("nope", false).await.unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("no-domain", 404));
}

#[tokio::test]
async fn a_domain_an_offline_command_holds_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _control) = service(dir.path());
    let held = strata_core::lock::DomainLock::try_acquire(dir.path(), "vm")
        .unwrap()
        .unwrap();
    let e = svc.start("vm", false).await.unwrap_err();
    assert_eq!((e.code(), e.http_status()), ("busy", 409));
    assert_eq!(svc.state("vm").await.unwrap().state, State::ShutOff);
    drop(held);
    svc.start("vm", false).await.unwrap();
    // The daemon holds it while the domain runs.
    assert!(strata_core::lock::DomainLock::try_acquire(dir.path(), "vm")
        .unwrap()
        .is_none());
    svc.destroy("vm").await.unwrap();
    assert!(strata_core::lock::DomainLock::try_acquire(dir.path(), "vm")
        .unwrap()
        .is_some());
}
