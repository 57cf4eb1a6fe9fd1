//! The challenge/hello handshake: the worker proves it holds the shared token by signing a fresh
//! nonce with HMAC-SHA256, so the token itself never crosses the wire.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::Connection;
use crate::error::ProtocolError;
use crate::message::{Challenge, Frame, Hello, Redirect, Reject, Welcome, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// The token both binaries fall back to when `DATA_STREAMS_WORKER_TOKEN` is unset, with a warning.
/// Fine on a laptop; anyone who can reach the worker port can drive the supervisor with it.
pub const DEV_TOKEN: &str = "data-streams-dev-token";

/// The token to use: the configured one, or [`DEV_TOKEN`] when it is unset or empty (the second
/// value says so, for the warning both binaries print).
pub fn token_or_dev(configured: Option<&common::SecretKey>) -> (common::SecretKey, bool) {
    match configured {
        Some(token) if !token.is_empty() => (token.clone(), false),
        _ => (common::SecretKey::new(DEV_TOKEN), true),
    }
}

/// A fresh challenge with a random nonce.
pub fn new_challenge() -> Challenge {
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    Challenge {
        protocol_version: PROTOCOL_VERSION,
        nonce,
    }
}

fn mac_for(token: &[u8], nonce: &[u8; 32], worker_id: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(token).expect("HMAC takes keys of any length");
    mac.update(nonce);
    mac.update(worker_id.as_bytes());
    mac
}

/// The MAC a worker sends in its hello.
pub fn sign(token: &[u8], nonce: &[u8; 32], worker_id: &str) -> Vec<u8> {
    mac_for(token, nonce, worker_id)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Why a hello was refused. The text is sent to the worker and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloRejection {
    #[error("protocol version {got} is not supported (supervisor speaks {want})")]
    Version { got: u32, want: u32 },
    #[error("authentication failed: the worker token does not match")]
    BadToken,
    #[error("invalid worker id: {0}")]
    BadWorkerId(String),
}

/// Check a hello against the challenge that was sent. The MAC comparison is constant-time.
pub fn verify(token: &[u8], challenge: &Challenge, hello: &Hello) -> Result<(), HelloRejection> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(HelloRejection::Version {
            got: hello.protocol_version,
            want: PROTOCOL_VERSION,
        });
    }
    let id = &hello.worker_id;
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(HelloRejection::BadWorkerId(
            "must be 1 to 128 printable characters".into(),
        ));
    }
    mac_for(token, &challenge.nonce, id)
        .verify_slice(&hello.mac)
        .map_err(|_| HelloRejection::BadToken)
}

/// How a supervisor answers a verified hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It leads: the worker is welcome.
    Welcome(Welcome),
    /// It follows: the worker is sent to the leader's worker address (`None`: not known yet).
    Redirect(Option<String>),
}

impl From<Welcome> for Admission {
    fn from(welcome: Welcome) -> Self {
        Admission::Welcome(welcome)
    }
}

/// Supervisor side: send a challenge, read the hello, verify it, and answer with a welcome, a
/// redirect to the leader ([`ProtocolError::Redirected`] once sent) or a reject. On an error
/// the caller should close the socket; the error says why.
pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    token: &[u8],
    admission: impl Into<Admission>,
    timeout: Duration,
) -> Result<Hello, ProtocolError> {
    let challenge = new_challenge();
    let exchange = async {
        conn.write_frame(&Frame::Challenge(challenge.clone()))
            .await?;
        match conn.read_frame().await? {
            Some(Frame::Hello(hello)) => Ok(*hello),
            Some(other) => Err(ProtocolError::Unexpected {
                expected: "hello",
                got: other.kind(),
            }),
            None => Err(ProtocolError::Closed),
        }
    };
    let hello = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProtocolError::Handshake(format!("no hello within {timeout:?}")))??;
    match verify(token, &challenge, &hello) {
        Ok(()) => match admission.into() {
            Admission::Welcome(welcome) => {
                conn.write_frame(&Frame::Welcome(welcome)).await?;
                Ok(hello)
            }
            Admission::Redirect(leader) => {
                conn.write_frame(&Frame::Redirect(Redirect {
                    leader: leader.clone(),
                }))
                .await?;
                Err(ProtocolError::Redirected(leader))
            }
        },
        Err(rejection) => {
            let reason = rejection.to_string();
            // Best effort: the peer may already be gone; the rejection is logged by the caller.
            let _ = conn
                .write_frame(&Frame::Reject(Reject {
                    reason: reason.clone(),
                }))
                .await;
            Err(ProtocolError::Handshake(reason))
        }
    }
}

/// What a worker says about itself in its hello (the MAC is added by [`connect`]).
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub worker_id: String,
    pub capacity: u32,
    pub adapters: Vec<String>,
    /// How many streams run here (the list follows in `worker_available` events).
    pub running: u64,
}

/// Worker side: read the challenge, answer with a signed hello, and wait for the verdict.
pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    token: &[u8],
    identity: WorkerIdentity,
    timeout: Duration,
) -> Result<Welcome, ProtocolError> {
    let exchange = async {
        let challenge = match conn.read_frame().await? {
            Some(Frame::Challenge(c)) => c,
            Some(Frame::Reject(r)) => return Err(ProtocolError::Rejected(r.reason)),
            Some(other) => {
                return Err(ProtocolError::Unexpected {
                    expected: "challenge",
                    got: other.kind(),
                })
            }
            None => return Err(ProtocolError::Closed),
        };
        if challenge.protocol_version != PROTOCOL_VERSION {
            return Err(ProtocolError::Handshake(format!(
                "supervisor speaks protocol {}, this worker {}",
                challenge.protocol_version, PROTOCOL_VERSION
            )));
        }
        let mac = sign(token, &challenge.nonce, &identity.worker_id);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: identity.worker_id,
            capacity: identity.capacity,
            adapters: identity.adapters,
            running: identity.running,
            mac,
        };
        conn.write_frame(&Frame::Hello(Box::new(hello))).await?;
        match conn.read_frame().await? {
            Some(Frame::Welcome(w)) => Ok(w),
            Some(Frame::Reject(r)) => Err(ProtocolError::Rejected(r.reason)),
            Some(Frame::Redirect(r)) => Err(ProtocolError::Redirected(r.leader)),
            Some(other) => Err(ProtocolError::Unexpected {
                expected: "welcome",
                got: other.kind(),
            }),
            None => Err(ProtocolError::Closed),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProtocolError::Handshake(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(token: &[u8], c: &Challenge, id: &str) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: id.into(),
            capacity: 10,
            adapters: vec!["IQAIR_DAILY".into()],
            running: 0,
            mac: sign(token, &c.nonce, id),
        }
    }

    #[test]
    fn right_token_passes_and_wrong_token_fails() {
        let c = new_challenge();
        assert_eq!(verify(b"secret", &c, &hello(b"secret", &c, "w1")), Ok(()));
        assert_eq!(
            verify(b"secret", &c, &hello(b"other", &c, "w1")),
            Err(HelloRejection::BadToken)
        );
    }

    #[test]
    fn a_mac_does_not_transfer_to_another_nonce_or_worker() {
        let c1 = new_challenge();
        let c2 = new_challenge();
        assert_ne!(c1.nonce, c2.nonce);
        let h = hello(b"secret", &c1, "w1");
        assert_eq!(verify(b"secret", &c2, &h), Err(HelloRejection::BadToken));
        let mut renamed = h.clone();
        renamed.worker_id = "w2".into();
        assert_eq!(
            verify(b"secret", &c1, &renamed),
            Err(HelloRejection::BadToken)
        );
    }

    #[test]
    fn wrong_version_is_named() {
        let c = new_challenge();
        let mut h = hello(b"secret", &c, "w1");
        h.protocol_version = 99;
        let err = verify(b"secret", &c, &h).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }
}
