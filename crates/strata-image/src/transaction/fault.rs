//! Failure injection into a transaction, for tests of the all-or-nothing
//! promise (public with the `test-utils` feature only).

#![cfg_attr(not(feature = "test-utils"), allow(dead_code))]

use super::{action_error, Action};
use crate::error::Error;

/// Where a test injects a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// While member `n` prepares.
    Prepare,
    /// While member `n` commits (after members before it committed).
    Commit,
    /// Right after member `n` committed, the process dies: nothing more
    /// runs (no later commit, no undo, no release of old clusters), as
    /// when it is killed there; the caller gets an error.
    Die,
}

/// A failure to inject (for tests of the all-or-nothing promise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Index of the action that fails.
    pub member: usize,
    /// When it fails.
    pub phase: Phase,
}

/// The error an injected fault at action `i` raises.
pub(crate) fn injected(i: usize, a: &Action, phase: Phase) -> Error {
    let at = match phase {
        Phase::Prepare => "prepare",
        Phase::Commit => "commit",
        Phase::Die => "death after commit",
    };
    action_error(i, a, format!("injected fault at {at}"))
}
