//! The one door through which core runs image transactions. With the
//! `test-utils` feature, a test can make the next transaction of its thread
//! fail as an injected [`Fault`] says (at one action's prepare or commit),
//! after which every disk must be as before and no metadata recorded.

use strata_image::transaction::{self, Action, Held, Outcome};

#[cfg(feature = "test-utils")]
pub use strata_image::transaction::Fault;

#[cfg(feature = "test-utils")]
thread_local! {
    static NEXT: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
}

/// Makes the next image transaction of this thread fail at `fault`.
#[cfg(feature = "test-utils")]
pub fn inject(fault: Option<Fault>) {
    NEXT.with(|n| n.set(fault));
}

/// Runs an image transaction on the `held` images where it names one,
/// with the injected fault if there is one.
pub(crate) fn run(actions: &[Action], held: &Held) -> strata_image::Result<Vec<Outcome>> {
    #[cfg(feature = "test-utils")]
    if let Some(fault) = NEXT.with(|n| n.take()) {
        return transaction::run_with_fault(actions, held, fault);
    }
    transaction::run_held(actions, held)
}
