//! Test support for running real Linux guests under QEMU (TCG), for any
//! crate's integration tests (a dev-dependency; never published).
//!
//! The guest comes from the kit `scripts/guest-kit` builds from Debian
//! packages into `target/guest-kit` (or `$STRATA_GUEST_KIT`): bookworm's
//! cloud kernel and a busybox initramfs with the virtio-blk modules, fio
//! and blkdiscard, whose `/init` runs a `/workload` shell script, prints
//! `STRATA-GUEST-EXIT=<code>` and powers off. A test's workload is a small
//! cpio appended to a copy of that initramfs, so nothing is rebuilt per
//! test. [`kit`] builds the kit once per process (the script holds a file
//! lock, so parallel test processes don't race); [`Guest`] starts
//! `qemu-system-x86_64 -accel tcg -nographic -no-reboot` with the disks and
//! options a test asks for and returns a [`GuestRun`]: the console log and
//! the workload's exit code.
//!
//! Without QEMU or the kit a test may skip ([`kit`] returns `None` and
//! says why), except under `CI=true`, where that is a failure.

#![deny(missing_docs)]

pub mod error;
pub mod guest;
pub mod kit;

pub use error::{Error, Result};
pub use guest::{Guest, GuestRun, RunningGuest, EXIT_MARKER, START_MARKER};
pub use kit::{in_ci, kit, kit_dir, try_kit, workspace_root, Kit, QEMU};
