//! The control link between the data-streams supervisor and its workers: one TCP (or TLS)
//! connection carrying length-delimited, bincode-encoded frames. Calls with replies go from the
//! supervisor to a worker (`worker:start`, `worker:stop`); numbered events with cumulative
//! acknowledgements go from a worker to the supervisor (`data-streams:results`,
//! `data-streams:worker_available`, `data-streams:run_failed`).
//!
//! This crate holds the wire and nothing else: no retry policy, no scheduling, no storage.

pub mod codec;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod link;
pub mod message;
pub mod packed;
pub mod schedule;
pub mod tls;

pub use connection::Connection;
pub use error::{CallError, ProtocolError};
pub use link::{Incoming, LinkClosed, LinkConfig, LinkHandle};
pub use message::*;
