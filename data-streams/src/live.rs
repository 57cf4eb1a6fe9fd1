//! The live channel: after each commit the supervisor publishes what is new — a result with its
//! reading, a failed run, a stream whose status changed, a worker that came or went — and every
//! client of `GET /live` that wants it gets one JSON text message per item.
//!
//! Each client has its own bounded queue ([`Live::QUEUE`] messages), and a message is serialized
//! once and handed only to the clients that want it (those of its stream, and those that filter
//! nothing), so a thousand clients each watching one stream cost what one does. Publishing never
//! waits: a message for a full queue is dropped and counted, and the client's next message is
//! `{"type": "lagged", "dropped": n}` (it can page the list API to catch up). Persistence never
//! slows down for a client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::{FailureRow, ResultRow};
use crate::stream::{Rfc3339, StreamView};

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
        stream: Option<Box<StreamView<'a>>>,
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

/// Which messages a client wants: every one (no streams named), or those of some streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    streams: Vec<Uuid>,
}

impl Filter {
    /// Only messages about these streams (none given: everything).
    pub fn streams(streams: impl IntoIterator<Item = Uuid>) -> Self {
        let mut streams: Vec<Uuid> = streams.into_iter().collect();
        streams.sort_unstable();
        streams.dedup();
        Filter { streams }
    }

    /// Whether a message about `stream_id` goes to this client. Messages about no one stream
    /// (workers) go only to clients that filter nothing.
    pub fn wants(&self, stream_id: Option<Uuid>) -> bool {
        self.streams.is_empty() || stream_id.is_some_and(|id| self.streams.contains(&id))
    }
}

/// One client's end of the channel, as the hub holds it.
#[derive(Debug, Clone)]
struct Outlet {
    queue: mpsc::Sender<Utf8Bytes>,
    dropped: Arc<AtomicU64>,
}

impl Outlet {
    /// Hand over a message without waiting; a full queue drops it and counts it. False when the
    /// client has gone.
    fn offer(&self, text: &Utf8Bytes) -> bool {
        match self.queue.try_send(text.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Who listens: the clients that want everything, and per stream the ones that want it.
#[derive(Debug, Default)]
struct Hub {
    next_id: u64,
    everything: HashMap<u64, Outlet>,
    by_stream: HashMap<Uuid, HashMap<u64, Outlet>>,
}

impl Hub {
    /// Offers `text` to the clients that want everything and to those of `stream_id`,
    /// forgetting clients that have gone.
    fn offer(&mut self, stream_id: Option<Uuid>, text: &Utf8Bytes) {
        self.everything.retain(|_, outlet| outlet.offer(text));
        if let Some(id) = stream_id {
            if let Some(outlets) = self.by_stream.get_mut(&id) {
                outlets.retain(|_, outlet| outlet.offer(text));
            }
        }
        metrics::counter!("ds_live_messages_total").increment(1);
    }
}

/// A message for the other replicas: its stream (if any) and its text.
pub type Shared = (Option<Uuid>, Utf8Bytes);

/// The publishing side, shared by the supervisor and the `/live` handler. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Live {
    hub: Arc<Mutex<Hub>>,
    /// With replicas: every message published here also goes to the other replicas'
    /// clients ([`Live::fan_out`]).
    fanout: Arc<std::sync::OnceLock<mpsc::Sender<Shared>>>,
}

/// A client's subscription: its queue, and how many messages it missed. Dropping it leaves the
/// channel.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    filter: Filter,
    queue: mpsc::Receiver<Utf8Bytes>,
    dropped: Arc<AtomicU64>,
    /// A message taken off the queue while a `lagged` notice went first.
    held: Option<Utf8Bytes>,
    live: Live,
}

impl Subscription {
    /// The next message for this client, in commit order. When messages were dropped for it,
    /// a `lagged` notice with their count comes first (the dropped ones are newer than what was
    /// still queued). `None` when the channel is gone.
    pub async fn next(&mut self) -> Option<Utf8Bytes> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        let message = self.queue.recv().await?;
        Some(self.after_drops(message))
    }

    /// The next message if one is queued now, without waiting (a `lagged` notice first, as
    /// with [`Subscription::next`]).
    pub fn try_next(&mut self) -> Option<Utf8Bytes> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        let message = self.queue.try_recv().ok()?;
        Some(self.after_drops(message))
    }

    /// `message`, or a `lagged` notice with `message` held for the next call when messages were
    /// dropped since the last one.
    fn after_drops(&mut self, message: Utf8Bytes) -> Utf8Bytes {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            metrics::counter!("ds_live_dropped_total").increment(dropped);
            self.held = Some(message);
            return LiveMessage::Lagged { dropped }.text();
        }
        message
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut hub = self.live.hub();
        if self.filter.streams.is_empty() {
            hub.everything.remove(&self.id);
        }
        for stream in &self.filter.streams {
            if let Some(outlets) = hub.by_stream.get_mut(stream) {
                outlets.remove(&self.id);
                if outlets.is_empty() {
                    hub.by_stream.remove(stream);
                }
            }
        }
    }
}

impl Live {
    /// Messages a client's queue holds before newer ones are dropped for it.
    pub const QUEUE: usize = 1024;

    pub fn new() -> Self {
        Live::default()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // Every critical section leaves the maps consistent; a poisoned lock is still usable.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `message` to every client that wants it. Costs one serialization when anyone
    /// listens, a map lookup when no one does.
    pub fn publish(&self, stream_id: Option<Uuid>, message: &LiveMessage<'_>) {
        if let Some(fanout) = self.fanout.get() {
            let text = message.text();
            if fanout.try_send((stream_id, text.clone())).is_err() {
                metrics::counter!("ds_live_fanout_dropped_total").increment(1);
            }
            self.deliver(stream_id, &text);
            return;
        }
        let mut hub = self.hub();
        let watchers = stream_id
            .and_then(|id| hub.by_stream.get(&id))
            .map_or(0, HashMap::len);
        if hub.everything.is_empty() && watchers == 0 {
            return;
        }
        hub.offer(stream_id, &message.text());
    }

    /// Hands an already serialized message to this process's clients that want it (a message
    /// another replica published).
    pub fn deliver(&self, stream_id: Option<Uuid>, text: &Utf8Bytes) {
        self.hub().offer(stream_id, text);
    }

    /// From now on every message published here is also queued on the returned receiver, for
    /// the other replicas (at most [`Live::FANOUT_QUEUE`] waiting; more are dropped and counted
    /// in `ds_live_fanout_dropped_total`). `None` if fan-out is already on.
    pub fn fan_out(&self) -> Option<mpsc::Receiver<Shared>> {
        let (sender, receiver) = mpsc::channel(Self::FANOUT_QUEUE);
        self.fanout.set(sender).ok()?;
        Some(receiver)
    }

    /// Messages waiting to go to the other replicas before newer ones are dropped.
    pub const FANOUT_QUEUE: usize = 8192;

    /// A new client's subscription, from now on.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let (queue, receiver) = mpsc::channel(Self::QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let outlet = Outlet {
            queue,
            dropped: dropped.clone(),
        };
        let mut hub = self.hub();
        hub.next_id += 1;
        let id = hub.next_id;
        if filter.streams.is_empty() {
            hub.everything.insert(id, outlet);
        } else {
            for stream in &filter.streams {
                hub.by_stream
                    .entry(*stream)
                    .or_default()
                    .insert(id, outlet.clone());
            }
        }
        Subscription {
            id,
            filter,
            queue: receiver,
            dropped,
            held: None,
            live: self.clone(),
        }
    }

    /// True when no client listens (nothing to build messages for).
    pub fn is_idle(&self) -> bool {
        if self.fanout.get().is_some() {
            // Clients of other replicas may listen.
            return false;
        }
        let hub = self.hub();
        hub.everything.is_empty() && hub.by_stream.is_empty()
    }

    /// How many clients listen.
    pub fn clients(&self) -> usize {
        let hub = self.hub();
        let mut filtered: Vec<u64> = hub
            .by_stream
            .values()
            .flat_map(|o| o.keys().copied())
            .collect();
        filtered.sort_unstable();
        filtered.dedup();
        hub.everything.len() + filtered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(stream_id: Uuid) -> LiveMessage<'static> {
        LiveMessage::Stream {
            stream_id,
            stream: None,
            deleted: true,
        }
    }

    async fn json(sub: &mut Subscription) -> Value {
        let text = sub.next().await.expect("a message");
        serde_json::from_str(text.as_str()).expect("JSON")
    }

    #[tokio::test]
    async fn each_client_gets_what_it_asked_for_in_order() {
        let live = Live::new();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut everything = live.subscribe(Filter::default());
        let mut only_a = live.subscribe(Filter::streams([a]));
        let mut a_and_b = live.subscribe(Filter::streams([a, b, a]));
        assert_eq!(live.clients(), 3);
        live.publish(Some(a), &deleted(a));
        live.publish(Some(b), &deleted(b));
        live.publish(
            None,
            &LiveMessage::Worker {
                worker_id: "w1",
                connected: true,
            },
        );
        assert_eq!(json(&mut everything).await["stream_id"], a.to_string());
        assert_eq!(json(&mut everything).await["stream_id"], b.to_string());
        assert_eq!(json(&mut everything).await["type"], "worker");
        assert_eq!(json(&mut only_a).await["stream_id"], a.to_string());
        assert_eq!(json(&mut a_and_b).await["stream_id"], a.to_string());
        assert_eq!(json(&mut a_and_b).await["stream_id"], b.to_string());
        live.publish(Some(a), &deleted(a));
        let next = json(&mut only_a).await;
        assert_eq!(
            next["type"], "stream",
            "no worker news for a filtered client: {next}"
        );
        drop(only_a);
        drop(a_and_b);
        assert_eq!(
            live.clients(),
            1,
            "clients leave when their subscription ends"
        );
        assert!(live.hub().by_stream.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_learns_how_much_it_missed() {
        let live = Live::new();
        let stream = Uuid::now_v7();
        let mut slow = live.subscribe(Filter::streams([stream]));
        let mut fast = live.subscribe(Filter::default());
        let extra = 10;
        for i in 0..Live::QUEUE + extra {
            live.publish(Some(stream), &LiveMessage::Lagged { dropped: i as u64 });
            if i < 5 {
                assert!(fast.next().await.is_some());
            }
        }
        let first = json(&mut slow).await;
        assert_eq!(
            first,
            serde_json::json!({"type": "lagged", "dropped": extra})
        );
        assert_eq!(
            json(&mut slow).await["dropped"],
            0,
            "then the oldest still queued"
        );
        // Publishing never waited for the slow client, and it stays subscribed.
        assert_eq!(live.clients(), 2);
    }
}
