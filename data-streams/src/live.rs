//! The live channel: after each commit the supervisor publishes what is new — a result with its
//! reading, a failed run, a stream whose status changed, a worker that came or went — and every
//! client of `GET /live` that wants it gets one JSON text message per item.
//!
//! Built on a `tokio::sync::broadcast` ring: publishing never waits for a client, and each
//! message is serialized once for all of them. A client that reads slower than messages come
//! falls behind in the ring; once it is more than [`Live::CAPACITY`] messages behind it is told
//! `{"type": "lagged", "dropped": n}` and continues with the newest (it can page the list API to
//! catch up). Persistence never slows down for a client.

use std::collections::HashSet;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::{FailureRow, ResultRow};
use crate::stream::{Rfc3339, StreamView};

/// One message as sent, with the stream it is about (for `?stream=` filters).
#[derive(Debug, Clone)]
pub struct Published {
    /// `None` for messages about no one stream (a worker connecting).
    pub stream_id: Option<Uuid>,
    pub text: Utf8Bytes,
}

/// The messages of the live channel (`"type"` names the kind).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LiveMessage<'a> {
    /// A new result, as in `GET /streams/{id}/results`, with its reading as in
    /// `GET /streams/{id}/measurements` when it brought a new one (else `null`).
    Result {
        stream_id: Uuid,
        result: &'a ResultRow,
        measurement: Option<Map<String, Value>>,
        committed_at: Rfc3339,
    },
    /// A new failed run, as in `GET /streams/{id}/failures`.
    Failure {
        stream_id: Uuid,
        failure: &'a FailureRow,
        committed_at: Rfc3339,
    },
    /// A stream was created, changed (config, state, assignment) or deleted (`stream: null`).
    Stream {
        stream_id: Uuid,
        stream: Option<StreamView<'a>>,
        deleted: bool,
    },
    /// A worker connected or went away: the status of its streams may have changed.
    Worker { worker_id: &'a str, connected: bool },
    /// This client fell behind and `dropped` messages were not sent to it.
    Lagged { dropped: u64 },
}

impl LiveMessage<'_> {
    /// The message as one JSON text frame.
    pub fn text(&self) -> Utf8Bytes {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"type":"error","message":"{e}"}}"#))
            .into()
    }
}

/// The publishing side, shared by the supervisor and the `/live` handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Live {
    tx: broadcast::Sender<Published>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    /// How many messages a client may fall behind before it is told it lagged.
    pub const CAPACITY: usize = 8192;

    pub fn new() -> Self {
        Live {
            tx: broadcast::channel(Self::CAPACITY).0,
        }
    }

    /// Send `message` to every client that wants it. Costs one serialization when anyone
    /// listens, nothing when no one does.
    pub fn publish(&self, stream_id: Option<Uuid>, message: &LiveMessage<'_>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let published = Published {
            stream_id,
            text: message.text(),
        };
        // An error only means every client left in the meantime.
        let _ = self.tx.send(published);
        metrics::counter!("ds_live_messages_total").increment(1);
    }

    /// A new client's view of the channel, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }

    /// How many clients listen.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Which messages a client wants: every one, or those of some streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    streams: HashSet<Uuid>,
}

impl Filter {
    /// Only messages about these streams (none given: everything).
    pub fn streams(streams: impl IntoIterator<Item = Uuid>) -> Self {
        Filter {
            streams: streams.into_iter().collect(),
        }
    }

    /// Whether a message about `stream_id` goes to this client. Messages about no one stream
    /// (workers) go only to clients that filter nothing.
    pub fn wants(&self, stream_id: Option<Uuid>) -> bool {
        self.streams.is_empty() || stream_id.is_some_and(|id| self.streams.contains(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_is_serialized_once_and_filtered_per_client() {
        let live = Live::new();
        let mut all = live.subscribe();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        live.publish(
            Some(a),
            &LiveMessage::Stream {
                stream_id: a,
                stream: None,
                deleted: true,
            },
        );
        live.publish(
            None,
            &LiveMessage::Worker {
                worker_id: "w1",
                connected: true,
            },
        );
        let first = all.recv().await.unwrap();
        let json: Value = serde_json::from_str(first.text.as_str()).unwrap();
        assert_eq!(json["type"], "stream");
        assert_eq!(json["deleted"], true);
        assert_eq!(json["stream_id"], a.to_string());
        assert_eq!(first.stream_id, Some(a));
        let second = all.recv().await.unwrap();
        assert!(second.text.as_str().contains(r#""type":"worker""#));

        let only_a = Filter::streams([a]);
        assert!(only_a.wants(Some(a)));
        assert!(!only_a.wants(Some(b)));
        assert!(!only_a.wants(None), "worker news is for unfiltered clients");
        assert!(Filter::default().wants(None) && Filter::default().wants(Some(b)));
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_learns_how_much_it_missed() {
        let live = Live::new();
        let mut slow = live.subscribe();
        let extra = 10;
        for _ in 0..Live::CAPACITY + extra {
            live.publish(None, &LiveMessage::Lagged { dropped: 0 });
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, extra as u64),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert!(
            slow.recv().await.is_ok(),
            "then it reads on from the oldest kept"
        );
        assert_eq!(live.clients(), 1);
    }
}
