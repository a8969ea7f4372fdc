//! strata's backup repository (`docs/repo.md`): disk images cut into
//! fixed-size chunks aligned to the disk, each stored once under a keyed
//! hash of its contents (zstd-compressed, optionally encrypted with
//! ChaCha20-Poly1305); one index per disk per backup listing its chunks;
//! one manifest per backup, written last and signed with a keyed MAC, whose
//! presence is the backup. It knows nothing of domains: a backup carries
//! an opaque `meta` value for whoever made it.
//!
//! The same objects live in a local folder ([`backend::LocalDir`]) or, as
//! the format is made for, in object storage: every object is immutable
//! once named, so writers on many hosts need no lock.

pub mod backend;
pub mod chunk;
pub mod config;
pub mod error;
pub mod gc;
pub mod hex;
pub mod image;
pub mod index;
pub mod keys;
pub mod manifest;
pub mod prune;
pub mod repo;
mod seal;
pub mod verify;
pub mod write;

pub use error::{Error, Result};
pub use repo::Repo;
