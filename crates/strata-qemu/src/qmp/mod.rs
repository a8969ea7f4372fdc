//! A QMP (QEMU Machine Protocol) client on tokio.
//!
//! QMP is JSON over a stream socket: QEMU greets, the client negotiates
//! capabilities (`qmp_capabilities`), then sends `{"execute", "arguments",
//! "id"}` and gets `{"return", "id"}` or `{"error": {"class", "desc"},
//! "id"}`, with `{"event", "data", "timestamp"}` messages in between at any
//! time. [`QmpClient`] matches answers to commands by id, so many commands
//! can be in flight from many tasks; events go to an [`EventStream`].
//!
//! Decoding is lenient, as QMP's compatibility rules ask: unknown fields
//! are ignored, unknown enum values are kept as `Other(name)`, unknown
//! events arrive as [`Event::Other`], an answer to an id nobody waits for is
//! logged and dropped.

/// A string enum with a catch-all `Other(String)` for values this version
/// does not know, (de)serialized as its string.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this version of strata does not know.
            Other(String),
        }

        impl $name {
            /// The wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $text => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::from(&*s))
            }
        }
    };
}

mod client;
pub mod commands;
pub mod events;
pub mod migration;
pub mod types;
mod wire;

pub use client::{EventStream, QmpClient, QmpOptions};
pub use commands::Command;
pub use events::{Event, EventMessage, GuestPanicAction, ShutdownReason, Timestamp};
pub use types::{ErrorClass, Greeting, RunState, StatusInfo};
