//! strata's NBD server: the fixed newstyle handshake with structured
//! replies and metadata contexts, and a transmission phase with many
//! requests in flight and replies out of order. It serves anything that
//! implements [`Export`] and knows nothing of image formats. A small
//! blocking [`Client`] comes with it.

#![deny(missing_docs)]

mod buffers;
pub mod client;
pub mod error;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
pub mod proto;
#[cfg(feature = "tls-psk")]
mod psk;
mod read;
mod reply;
pub mod server;
mod splice;
pub mod tls;
mod transmission;

pub use client::{Client, Options, ServerError};
pub use error::{Error, Result};
pub use export::{BlockSizes, Errno, Export, Failure, Outcome, Placement, StatusExtent};
pub use server::{raise_open_file_limit, serve, Config, Exports, Listener, HANDSHAKE_LIMIT};
pub use tls::Tls;
