//! Block jobs on a disk a guest is using (virsh's blockcommit and
//! blockpull): the copies they make while the guest goes on writing, with
//! progress, cancel and a bandwidth limit ([`Control`]).
//!
//! - [`copy_above`] copies what the layers above a base hold into that
//!   base (a commit's first pass);
//! - [`Tracked`] stands in front of the image the guest writes to and
//!   records which ranges it wrote since (an active commit converges by
//!   copying them again, [`copy_ranges`]), and holds a guest write back
//!   while a stream copies the same range;
//! - [`stream`] copies what the backing files hold into the top layer,
//!   range by range, never over what the guest wrote (blockpull).
//!
//! Changing what the chain looks like afterwards (a new backing link, a
//! new top served) is the caller's, under a paused guest.

mod control;
mod copy;
mod tracked;

pub use control::Control;
pub use copy::{copy_above, copy_ranges, stream};
pub use tracked::Tracked;
