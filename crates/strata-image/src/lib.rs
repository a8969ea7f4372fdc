//! strata-image: the disk image engine of strata.
//!
//! Layers, bottom up: [`storage`] (where bytes live: files, memory, a
//! fault-injecting backend for crash tests), the format drivers ([`raw`],
//! [`qcow2`]) behind the [`Image`] trait, [`chain`] (opening an image with
//! its backing files through one gate), and [`ops`] (whole-image operations:
//! convert, compare, commit, rebase, map).
//!
//! Every image strata writes is byte-compatible with QEMU: `qemu-img check`
//! finds nothing wrong with it and QEMU reads exactly what strata wrote.
//! The design, its invariants and the crash analysis are in `docs/design.md`.
#![deny(missing_docs)]

pub mod capability;
pub mod cbw;
pub mod chain;
pub mod dirty;
pub mod error;
pub mod image;
pub mod jobs;
pub mod localtime;
pub mod ops;
pub mod qcow2;
pub mod raw;
pub mod storage;
pub mod transaction;

pub use chain::{open, open_over, ChainOptions};
pub use dirty::dirty_since;
pub use error::{Error, Result};
pub use image::{Extent, Format, Image};
