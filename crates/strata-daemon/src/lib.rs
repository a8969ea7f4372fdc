//! strata's service: `strata daemon`. It runs domains — a QEMU process per
//! domain whose disks strata itself opens and serves — and answers an
//! HTTP/JSON API on a unix socket (`STATE/strata.sock`, owner only).
//!
//! - [`daemon`]: the service's life: claim the socket, `READY=1`, serve,
//!   and on SIGTERM/SIGINT the stop policy.
//! - [`api`]: routes, handlers and JSON errors (documented in
//!   `docs/api/openapi.yaml`); [`server`]: HTTP/1.1 over the unix socket.
//! - [`lifecycle`]: start, shutdown, destroy, suspend, resume, the stop
//!   policy, and the watcher of QEMU's events; [`registry`]: each domain's
//!   state, reason, operation mutex and running emulator.
//! - [`disks`]: opening a domain's images (strata-image, writable, locked)
//!   and serving them to QEMU.
//! - [`journal`]: each run's record, from which a daemon that starts
//!   after a crash or an upgrade takes the run over.
//! - [`client`]: a small blocking client of the API, for the CLI.
//! - [`types`]: what the API sends and receives.
//! - [`notify`]: systemd's readiness notifications.
//!
//! See `docs/daemon.md` for the API, the stop policy and the state folder's
//! layout.

#![deny(missing_docs)]

pub mod api;
pub mod client;
pub mod daemon;
pub mod disks;
pub mod error;
pub mod journal;
pub mod lifecycle;
pub mod notify;
pub mod registry;
pub mod server;
pub mod types;

pub use client::Client;
pub use daemon::{default_socket, run, run_until, Config};
pub use error::{Error, Result};
pub use lifecycle::{Options, Service};
pub use types::{DomainInfo, Reason, State, StateInfo};
