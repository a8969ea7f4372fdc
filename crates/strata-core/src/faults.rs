//! Failure injection for tests of the all-or-nothing promise: the next
//! image transaction this thread runs fails as the injected
//! [`Fault`] says (at one action's prepare or commit), after which every
//! disk must be as before and no metadata recorded.

use std::cell::Cell;

use strata_image::transaction::{self, Action, Fault, Outcome};

thread_local! {
    static NEXT: Cell<Option<Fault>> = const { Cell::new(None) };
}

/// Makes the next image transaction of this thread fail at `fault`.
pub fn inject(fault: Option<Fault>) {
    NEXT.with(|n| n.set(fault));
}

/// Runs an image transaction, with the injected fault if there is one.
pub(crate) fn run(actions: &[Action]) -> strata_image::Result<Vec<Outcome>> {
    let fault = NEXT.with(|n| n.take());
    transaction::run(actions, fault)
}
