//! Who holds the disks (ARCHITECTURE.md): an operation that changes a
//! domain's disks runs against the [`Disks`] it is handed. Offline
//! ([`Offline`]) it takes the domain's lock and the image transaction
//! opens the files itself. Live, the daemon hands the images it serves to
//! the running guest (already under the domain's lock), and knows how to
//! quiesce them — stop taking guest requests on every disk, wait for those
//! in flight, flush — how to switch what a disk serves (a new overlay on
//! top), and how to resume. One code path for both; the live one adds the
//! quiesce point, which is what makes "all disks at one instant" true.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use strata_image::transaction::Held;
use strata_image::Image;

use crate::error::Result;
use crate::lock::DomainLock;

/// The disks of one domain as an operation is handed them.
pub trait Disks {
    /// True for the disks of a running domain.
    fn live(&self) -> bool;

    /// Takes the domain's lock for the operation, or `None` when the
    /// holder of these disks has it already.
    fn lock(&self, state_dir: &Path, domain: &str) -> Result<Option<DomainLock>>;

    /// The images already open, by file (none offline).
    fn held(&self) -> Held;

    /// Stops taking guest requests on every disk, waits for those in
    /// flight and flushes; the disks resume when the guard is dropped.
    fn quiesce(&self) -> Result<Box<dyn Quiesced + '_>>;

    /// [`Disks::quiesce`] without the flushes: for an operation that
    /// writes nothing to the images (a backup's filters put in or taken
    /// away), whose instant needs no data on disk.
    fn hold(&self) -> Result<Box<dyn Quiesced + '_>> {
        self.quiesce()
    }
}

/// Disks whose guest requests are held back (see [`Disks::quiesce`]).
pub trait Quiesced {
    /// When the guest's requests stopped being taken: the stall runs from
    /// here to the guard's drop.
    fn paused_at(&self) -> Instant;

    /// Serves `image` as disk `target` from now on (a new overlay whose
    /// backing is the image served so far).
    fn switch(&mut self, target: &str, image: Arc<dyn Image>) -> Result<()>;
}

/// The disks of a domain that does not run: the operation opens them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offline;

impl Disks for Offline {
    fn live(&self) -> bool {
        false
    }

    fn lock(&self, state_dir: &Path, domain: &str) -> Result<Option<DomainLock>> {
        DomainLock::acquire(state_dir, domain).map(Some)
    }

    fn held(&self) -> Held {
        Held::none()
    }

    fn quiesce(&self) -> Result<Box<dyn Quiesced + '_>> {
        Ok(Box::new(Nothing(Instant::now())))
    }
}

/// Offline there is no guest to hold back and nothing is served.
struct Nothing(Instant);

impl Quiesced for Nothing {
    fn paused_at(&self) -> Instant {
        self.0
    }

    fn switch(&mut self, _target: &str, _image: Arc<dyn Image>) -> Result<()> {
        Ok(())
    }
}
