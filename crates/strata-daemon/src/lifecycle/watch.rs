//! The watcher of one run: QEMU's events change the domain's state
//! (`STOP` → paused, `RESUME` → running, `GUEST_PANICKED`, `SHUTDOWN`),
//! and the emulator's exit — however it comes, a `kill -9` included —
//! ends the run: the disks are closed, the lock released, and only then
//! does the domain read `shut off`, with the reason libvirt would give.

use std::sync::Arc;

use strata_qemu::qmp::{Event, GuestPanicAction, ShutdownReason};
use strata_qemu::{ExitInfo, VmEvent, VmEvents};

use crate::registry::{EndCause, Running, Slot};
use crate::types::{Reason, State};

/// What QEMU's `SHUTDOWN` event said, if it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// `Shutdown`, or `Crashed` for a guest panic.
    reason: Reason,
    /// The guest asked (power-off, reboot with `destroy`, panic).
    guest: bool,
}

/// Follows `run`'s events until its emulator exits, then ends the run.
pub async fn watch(slot: Arc<Slot>, run: Arc<Running>, events: Option<VmEvents>) {
    let mut shutdown: Option<Seen> = None;
    let exit = match events {
        Some(mut events) => loop {
            match events.next().await {
                Some(VmEvent::Qmp(m)) => on_event(&slot, m.event, &mut shutdown),
                Some(VmEvent::Exited(info)) => break info,
                None => break run.vm.wait().await,
            }
        },
        None => run.vm.wait().await,
    };
    let reason = shut_off_reason(run.end_cause(), shutdown, exit);
    tracing::info!(%exit, reason = reason.as_str(), "emulator exited; closing disks");
    run.release().await;
    slot.end(reason);
}

/// The reason a run ended for: who asked, else what QEMU said.
fn shut_off_reason(cause: EndCause, shutdown: Option<Seen>, exit: ExitInfo) -> Reason {
    match (cause, shutdown) {
        (EndCause::Destroy, _) => Reason::Destroyed,
        (EndCause::Save, _) => Reason::Saved,
        (EndCause::Snapshot, _) => Reason::FromSnapshot,
        // The guest obeyed the stop policy's power button.
        (
            EndCause::Daemon,
            Some(Seen {
                guest: true,
                reason,
            }),
        ) => reason,
        (EndCause::Daemon, _) => Reason::Daemon,
        (EndCause::None, _) => match shutdown {
            Some(s) => s.reason,
            // No SHUTDOWN event: the emulator died (a signal, a crash).
            None if exit.success() => Reason::Shutdown,
            None => Reason::Crashed,
        },
    }
}

fn on_event(slot: &Slot, event: Event, shutdown: &mut Option<Seen>) {
    tracing::debug!(event = event.name(), "QMP event");
    match event {
        Event::Stop => {
            let why = match shutdown.map(|s| s.reason) {
                Some(Reason::Crashed) => Reason::Crashed,
                Some(_) => Reason::ShuttingDown,
                None => Reason::Unknown,
            };
            // A suspend sets its own reason; keep it when it came first.
            slot.update(|s| (s.state == State::Running).then_some((State::Paused, why)));
        }
        Event::Resume => {
            slot.update(|s| {
                (s.state == State::Paused).then_some((State::Running, Reason::Unpaused))
            });
        }
        Event::Shutdown { guest, reason } => {
            tracing::info!(guest, reason = reason.as_str(), "guest shutdown");
            *shutdown = Some(Seen {
                reason: match reason {
                    ShutdownReason::GuestPanic => Reason::Crashed,
                    _ => Reason::Shutdown,
                },
                guest,
            });
        }
        Event::GuestPanicked { action, .. } => {
            tracing::warn!(action = action.as_str(), "guest panicked");
            match action {
                GuestPanicAction::Pause => slot.update(|s| {
                    s.state
                        .is_active()
                        .then_some((State::Paused, Reason::Crashed))
                }),
                _ => {
                    *shutdown = Some(Seen {
                        reason: Reason::Crashed,
                        guest: true,
                    })
                }
            }
        }
        Event::BlockIoError {
            qom_path, reason, ..
        } => {
            tracing::error!(device = %qom_path, %reason, "disk I/O error");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let ok = ExitInfo {
            code: Some(0),
            signal: None,
        };
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        let guest = Some(Seen {
            reason: Reason::Shutdown,
            guest: true,
        });
        let host = Some(Seen {
            reason: Reason::Shutdown,
            guest: false,
        });
        assert_eq!(
            shut_off_reason(EndCause::None, None, killed),
            Reason::Crashed
        );
        assert_eq!(
            shut_off_reason(EndCause::Destroy, guest, ok),
            Reason::Destroyed
        );
        assert_eq!(shut_off_reason(EndCause::None, guest, ok), Reason::Shutdown);
        assert_eq!(
            shut_off_reason(EndCause::Daemon, guest, ok),
            Reason::Shutdown
        );
        assert_eq!(shut_off_reason(EndCause::Daemon, host, ok), Reason::Daemon);
        assert_eq!(
            shut_off_reason(EndCause::Daemon, None, killed),
            Reason::Daemon
        );
    }
}
