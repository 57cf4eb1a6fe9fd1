//! Errors of the control link.

use std::io;

/// Anything that goes wrong reading, writing or negotiating frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the link: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("malformed frame: {0}")]
    Decode(String),
    #[error("could not encode a {kind} frame: {reason}")]
    Encode { kind: &'static str, reason: String },
    #[error("peer closed the connection")]
    Closed,
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("rejected by the supervisor: {0}")]
    Rejected(String),
    #[error("this supervisor is not the leader; the leader takes workers at {}", .0.as_deref().unwrap_or("(no leader yet)"))]
    Redirected(Option<String>),
    #[error("peer silent for {0:?}, declared gone")]
    PeerSilent(std::time::Duration),
    #[error("unexpected {got} frame while waiting for {expected}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
}

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{call} got no reply within {timeout_ms} ms")]
    Timeout { call: &'static str, timeout_ms: u64 },
    #[error("the link closed before {call} was answered")]
    LinkClosed { call: &'static str },
}
