//! The one door through which core runs image transactions. With the
//! `test-utils` feature, a test can make the next transaction of its thread
//! fail as an injected [`Fault`] says (at one action's prepare or commit),
//! after which every disk must be as before and no metadata recorded, or
//! make the operation die right after one action committed, as a killed
//! process would (then nothing of the operation runs after it).

use strata_image::transaction::{self, Action, Held, Outcome};

#[cfg(feature = "test-utils")]
pub use strata_image::transaction::Fault;

#[cfg(feature = "test-utils")]
thread_local! {
    static NEXT: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
    static DIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the next image transaction of this thread fail at `fault`.
#[cfg(feature = "test-utils")]
pub fn inject(fault: Option<Fault>) {
    NEXT.with(|n| n.set(fault));
    DIED.with(|d| d.set(false));
}

/// True once an injected death ([`strata_image::transaction::Phase::Die`])
/// struck this thread's operation: nothing more of it may run.
#[cfg(feature = "test-utils")]
pub(crate) fn died() -> bool {
    DIED.with(|d| d.get())
}

/// Without test faults, no operation dies.
#[cfg(not(feature = "test-utils"))]
pub(crate) fn died() -> bool {
    false
}

/// Runs an image transaction on the `held` images where it names one,
/// with the injected fault if there is one.
pub(crate) fn run(actions: &[Action], held: &Held) -> strata_image::Result<Vec<Outcome>> {
    #[cfg(feature = "test-utils")]
    if let Some(fault) = NEXT.with(|n| n.take()) {
        let out = transaction::run_with_fault(actions, held, fault);
        if out.is_err() && fault.phase == strata_image::transaction::Phase::Die {
            DIED.with(|d| d.set(true));
        }
        return out;
    }
    transaction::run_held(actions, held)
}
