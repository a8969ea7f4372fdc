//! The lifecycle of a real QEMU (TCG) through the `Hypervisor`/`Vm` seam
//! and the QMP client: paused start, cont/stop and their events, the power
//! button with no guest to hear it, quit, guest power-off and reboot under
//! each lifecycle action, destroy, kill -9 from outside, typed QMP errors,
//! and the errors for a missing emulator and for arguments QEMU refuses.

mod common;

use std::time::Duration;

use common::*;
use strata_qemu::hypervisor::{Hypervisor, Vm};
use strata_qemu::machine::{DiskBackend, EmulatorPath, OnPoweroff, OnReboot};
use strata_qemu::qmp::{ErrorClass, Event, RunState, ShutdownReason};
use strata_qemu::{Error, Machine, QemuHypervisor, VmEvent, VmStatus};

fn is_qmp(e: &VmEvent, want: &Event) -> bool {
    matches!(e, VmEvent::Qmp(m) if &m.event == want)
}

#[tokio::test]
async fn paused_start_then_cont_and_stop_with_their_events() {
    let dir = tempdir();
    let h: Box<dyn Hypervisor> = Box::new(QemuHypervisor::new());
    let mut m = Machine::new("lifecycle");
    m.memory_mib = 64;
    let opts = start_options(dir.path(), true);
    let vm = within("start", h.start(&m, &opts)).await.unwrap();
    let mut ev = vm.take_events().unwrap();
    assert!(vm.take_events().is_none(), "events are handed out once");
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: false,
            state: RunState::Prelaunch
        }
    );

    vm.resume().await.unwrap();
    within("RESUME", ev.next_matching(|e| is_qmp(e, &Event::Resume)))
        .await
        .unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: true,
            state: RunState::Running
        }
    );

    vm.pause().await.unwrap();
    within("STOP", ev.next_matching(|e| is_qmp(e, &Event::Stop)))
        .await
        .unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: false,
            state: RunState::Paused
        }
    );

    let info = within("destroy", vm.destroy()).await.unwrap();
    assert!(info.success(), "QEMU exits cleanly on SIGTERM: {info}");
    assert_eq!(vm.status().await.unwrap(), VmStatus::Exited(info));
    assert!(!alive(vm.pid()));
}

#[tokio::test]
async fn the_power_button_with_no_guest_then_quit() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let m = tiny_machine(dir.path(), "powerdown", Then::Halt, "quiet");
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    within("RESUME", ev.next_matching(|e| is_qmp(e, &Event::Resume)))
        .await
        .unwrap();
    wait_for_text(&dir.path().join("console.log"), "quiet").await;

    // Nobody listens to ACPI: the event comes, the machine runs on.
    vm.powerdown().await.unwrap();
    within(
        "POWERDOWN",
        ev.next_matching(|e| is_qmp(e, &Event::Powerdown)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: true,
            state: RunState::Running
        }
    );

    vm.qmp().quit().await.unwrap();
    let events = all_events(&mut ev).await;
    let shutdown = Event::Shutdown {
        guest: false,
        reason: ShutdownReason::HostQmpQuit,
    };
    assert!(events.iter().any(|e| is_qmp(e, &shutdown)), "{events:?}");
    match events.last() {
        Some(VmEvent::Exited(info)) => assert!(info.success(), "{info}"),
        other => panic!("the last event is the exit: {other:?}"),
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, VmEvent::Exited(_)))
            .count(),
        1
    );
    assert!(vm.wait().await.success());
    let e = vm.pause().await.unwrap_err();
    assert!(matches!(e, Error::Exited { .. }), "{e:?}");
}

#[tokio::test]
async fn a_guest_power_off_ends_qemu_and_the_kernel_command_line_arrives_intact() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let m = tiny_machine(
        dir.path(),
        "poweroff",
        Then::PoweroffQ35,
        "console=ttyS0,115200 a=b,c",
    );
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    let events = all_events(&mut ev).await;
    let shutdown = Event::Shutdown {
        guest: true,
        reason: ShutdownReason::GuestShutdown,
    };
    assert!(events.iter().any(|e| is_qmp(e, &shutdown)), "{events:?}");
    assert!(
        matches!(events.last(), Some(VmEvent::Exited(i)) if i.success()),
        "{events:?}"
    );
    let console = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert!(
        console.contains(" console=ttyS0,115200 a=b,c\n"),
        "{console:?}"
    );
}

#[tokio::test]
async fn on_poweroff_pause_keeps_qemu_in_the_shutdown_state() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = tiny_machine(dir.path(), "preserve", Then::PoweroffQ35, "x");
    m.lifecycle.on_poweroff = OnPoweroff::Pause;
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    let shutdown = Event::Shutdown {
        guest: true,
        reason: ShutdownReason::GuestShutdown,
    };
    within("SHUTDOWN", ev.next_matching(|e| is_qmp(e, &shutdown)))
        .await
        .unwrap();
    within("STOP", ev.next_matching(|e| is_qmp(e, &Event::Stop)))
        .await
        .unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: false,
            state: RunState::Shutdown
        }
    );
    within("destroy", vm.destroy()).await.unwrap();
}

#[tokio::test]
async fn a_guest_reboot_resets_or_powers_off_as_asked() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = tiny_machine(dir.path(), "reboot", Then::Reset, "x");
    // Reset (the default): the machine resets and runs on.
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    let reset = Event::Reset {
        guest: true,
        reason: ShutdownReason::GuestReset,
    };
    within("RESET", ev.next_matching(|e| is_qmp(e, &reset)))
        .await
        .unwrap();
    assert!(matches!(
        vm.status().await.unwrap(),
        VmStatus::Active { .. }
    ));
    within("destroy", vm.destroy()).await.unwrap();
    let rest = all_events(&mut ev).await;
    let by_signal = Event::Shutdown {
        guest: false,
        reason: ShutdownReason::HostSignal,
    };
    assert!(rest.iter().any(|e| is_qmp(e, &by_signal)), "{rest:?}");

    // A reboot that powers off (libvirt on_reboot=destroy, -no-reboot).
    let dir = tempdir();
    m = tiny_machine(dir.path(), "reboot", Then::Reset, "x");
    m.lifecycle.on_reboot = OnReboot::Poweroff;
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    let events = all_events(&mut ev).await;
    let shutdown = Event::Shutdown {
        guest: true,
        reason: ShutdownReason::GuestReset,
    };
    assert!(events.iter().any(|e| is_qmp(e, &shutdown)), "{events:?}");
    assert!(!events.iter().any(|e| is_qmp(e, &reset)), "{events:?}");
    assert!(matches!(events.last(), Some(VmEvent::Exited(_))));
}

#[tokio::test]
async fn kill_9_from_outside_fails_the_pending_call_and_reports_the_exit() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let m = tiny_machine(dir.path(), "killed", Then::Halt, "x");
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap();
    let mut ev = vm.take_events().unwrap();
    let pid = vm.pid() as libc::pid_t;

    // Freeze QEMU so that a call is surely pending when it dies.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let qmp = vm.qmp().clone();
    let pending = tokio::spawn(async move { qmp.query_status().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let e = within("the pending call", pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, Error::Disconnected { command: Some(c), .. } if c == "query-status"),
        "{e:?}"
    );
    let info = within("wait", vm.wait()).await;
    assert_eq!(info.signal, Some(libc::SIGKILL), "{info}");
    let events = all_events(&mut ev).await;
    assert_eq!(events.last(), Some(&VmEvent::Exited(info)), "{events:?}");
    assert_eq!(vm.status().await.unwrap(), VmStatus::Exited(info));
    assert!(matches!(
        vm.resume().await.unwrap_err(),
        Error::Exited { .. }
    ));
    assert!(vm.qmp().query_status().await.unwrap_err().is_disconnected());
    assert_eq!(
        vm.destroy().await.unwrap(),
        info,
        "destroying an exited machine reports its end"
    );
}

#[tokio::test]
async fn qmp_errors_are_typed() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let m = tiny_machine(dir.path(), "errors", Then::Halt, "x");
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap();
    let q = vm.qmp();
    let e = q.execute("no-such-command", None).await.unwrap_err();
    assert_eq!(e.qmp_class(), Some(&ErrorClass::CommandNotFound), "{e:?}");
    assert!(e.to_string().contains("no-such-command"), "{e}");
    let e = q.qom_list("/machine/no/such/path").await.unwrap_err();
    assert!(
        matches!(
            e.qmp_class(),
            Some(ErrorClass::DeviceNotFound | ErrorClass::GenericError)
        ),
        "{e:?}"
    );
    let e = q
        .execute("qom-get", Some(serde_json::json!({"path": "/machine"})))
        .await
        .unwrap_err();
    assert_eq!(
        e.qmp_class(),
        Some(&ErrorClass::GenericError),
        "a missing argument: {e:?}"
    );
    // The connection is fine after errors.
    let text = q.human_monitor_command("info status").await.unwrap();
    assert!(text.contains("prelaunch"), "{text:?}");
    assert_eq!(q.greeting().version.qemu.major, 10);
    let schema = q.execute("query-qmp-schema", None).await.unwrap();
    assert!(schema.as_array().is_some_and(|a| a.len() > 100));
    within("destroy", vm.destroy()).await.unwrap();
}

#[tokio::test]
async fn a_missing_emulator_is_named() {
    let dir = tempdir();
    let h: Box<dyn Hypervisor> = Box::new(QemuHypervisor::new());
    let mut m = Machine::new("nowhere");
    m.emulator = EmulatorPath::Path("/nonexistent/bin/qemu-system-x86_64".into());
    let e = h
        .start(&m, &start_options(dir.path(), true))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("/nonexistent/bin/qemu-system-x86_64"),
        "{e}"
    );

    m.emulator = EmulatorPath::Search("qemu-system-strata-none".into());
    let e = h
        .start(&m, &start_options(dir.path(), true))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::EmulatorNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("qemu-system-strata-none"), "{e}");

    // A program that is not QEMU.
    m.emulator = EmulatorPath::Path("/bin/false".into());
    let e = h
        .start(&m, &start_options(dir.path(), true))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::NotQemu { .. }), "{e:?}");
}

#[tokio::test]
async fn arguments_qemu_refuses_end_the_start_with_its_log() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = Machine::new("refused");
    m.memory_mib = 64;
    let missing = dir.path().join("no-nbd.sock");
    m.disks = vec![strata_qemu::machine::Disk {
        id: "vda".into(),
        backend: DiskBackend::Nbd {
            socket: missing.clone(),
            export: "x".into(),
            read_only: false,
            serial: None,
        },
        boot_index: None,
    }];
    let e = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap_err();
    let Error::ExitedEarly {
        log,
        log_tail,
        status,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(!status.success());
    assert!(log_tail.contains("no-nbd.sock"), "{log_tail}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.starts_with("strata: starting "), "{text}");
}

#[tokio::test]
async fn dropping_the_vm_kills_qemu() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let m = tiny_machine(dir.path(), "dropped", Then::Halt, "x");
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap();
    let pid = vm.pid();
    let pidfile = std::fs::read_to_string(dir.path().join("run/qemu.pid")).unwrap();
    assert_eq!(pidfile.trim(), pid.to_string());
    drop(vm);
    let start = std::time::Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < T, "QEMU {pid} outlived its handle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
