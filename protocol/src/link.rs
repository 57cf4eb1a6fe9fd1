//! The link actor: one task owns a connected socket after the handshake. Callers send frames and
//! make calls through a cloneable [`LinkHandle`]; replies come back through oneshot channels;
//! everything else the peer sends arrives on an [`Incoming`] channel. Heartbeats go out when the
//! link is idle, and a peer silent past the timeout ends the link.
//!
//! Reading and writing are driven concurrently inside the one task, so two peers that both write
//! a lot can never deadlock on full socket buffers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::error::{CallError, ProtocolError};
use crate::message::{Call, Event, Frame, Reply};

/// Timing and buffering of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Send a heartbeat after this long without sending anything.
    pub heartbeat_interval: Duration,
    /// End the link after this long without receiving anything.
    pub heartbeat_timeout: Duration,
    /// Frames queued for writing before senders wait.
    pub outgoing_capacity: usize,
    /// Received frames queued for the owner before the reader stops reading (TCP backpressure).
    pub incoming_capacity: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            outgoing_capacity: 4096,
            incoming_capacity: 4096,
        }
    }
}

/// What the peer sent that is not a reply or a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The peer asks something; answer with [`LinkHandle::reply`].
    Call { id: u64, call: Call },
    /// A numbered event; acknowledge with [`LinkHandle::ack`] once it is durable.
    Event { seq: u64, event: Event },
    /// Every event up to `seq` is durable at the peer.
    Ack { seq: u64 },
}

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_call_id: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        // A panic while holding this lock leaves the map consistent (single insert/remove), so a
        // poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Outgoing {
    Frame(Frame),
    Close,
}

/// A cloneable handle to a running link.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The link is gone; the frame was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

impl LinkHandle {
    /// Make a call and wait at most `timeout` for its reply.
    pub async fn call(&self, call: Call, timeout: Duration) -> Result<Reply, CallError> {
        let name = call.name();
        let id = self.shared.next_call_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.pending().insert(id, reply_tx);
        if self
            .tx
            .send(Outgoing::Frame(Frame::Call { id, call }))
            .await
            .is_err()
        {
            self.shared.pending().remove(&id);
            return Err(CallError::LinkClosed { call: name });
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::LinkClosed { call: name }),
            Err(_) => {
                self.shared.pending().remove(&id);
                Err(CallError::Timeout {
                    call: name,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Send a frame (an event, an ack, a reply). Waits while the outgoing queue is full.
    pub async fn send(&self, frame: Frame) -> Result<(), LinkClosed> {
        self.tx
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| LinkClosed)
    }

    /// Send an event with its sequence number.
    pub async fn event(&self, seq: u64, event: Event) -> Result<(), LinkClosed> {
        self.send(Frame::Event { seq, event }).await
    }

    /// Acknowledge every event up to `seq`.
    pub async fn ack(&self, seq: u64) -> Result<(), LinkClosed> {
        self.send(Frame::Ack { seq }).await
    }

    /// Answer the call with this id.
    pub async fn reply(&self, id: u64, reply: Reply) -> Result<(), LinkClosed> {
        self.send(Frame::Reply { id, reply }).await
    }

    /// Flush what is queued, then close the socket.
    pub async fn close(&self) {
        let _ = self.tx.send(Outgoing::Close).await;
    }

    /// Whether the link has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }
}

/// Start the actor on a connection that has finished its handshake. The join handle yields
/// `Ok(())` on a clean close (by either side) and the reason otherwise.
pub fn spawn<T>(
    conn: Connection<T>,
    config: LinkConfig,
) -> (
    LinkHandle,
    mpsc::Receiver<Incoming>,
    JoinHandle<Result<(), ProtocolError>>,
)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(config.outgoing_capacity.max(1));
    let (in_tx, in_rx) = mpsc::channel(config.incoming_capacity.max(1));
    let shared = Arc::new(Shared {
        pending: Mutex::new(HashMap::new()),
        next_call_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
    });
    let handle = LinkHandle {
        tx: out_tx,
        shared: shared.clone(),
    };
    let task = tokio::spawn(async move {
        let result = run(conn, config, out_rx, in_tx, &shared).await;
        shared.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiting caller with LinkClosed.
        shared.pending().clear();
        result
    });
    (handle, in_rx, task)
}

async fn run<T>(
    conn: Connection<T>,
    config: LinkConfig,
    mut out_rx: mpsc::Receiver<Outgoing>,
    in_tx: mpsc::Sender<Incoming>,
    shared: &Shared,
) -> Result<(), ProtocolError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = conn.into_framed().split();
    // Milliseconds since `base` when the peer was last heard from.
    let base = Instant::now();
    let last_heard_ms = AtomicU64::new(0);
    let since_base = || base.elapsed().as_millis() as u64;

    let reader = async {
        loop {
            let frame = match stream.next().await {
                Some(frame) => frame?,
                None => return Ok(()),
            };
            last_heard_ms.store(since_base(), Ordering::Relaxed);
            let incoming = match frame {
                Frame::Heartbeat => continue,
                Frame::Reply { id, reply } => {
                    // A reply to a call that timed out has no one waiting: drop it.
                    if let Some(waiter) = shared.pending().remove(&id) {
                        let _ = waiter.send(reply);
                    }
                    continue;
                }
                Frame::Call { id, call } => Incoming::Call { id, call },
                Frame::Event { seq, event } => Incoming::Event { seq, event },
                Frame::Ack { seq } => Incoming::Ack { seq },
                other => {
                    return Err(ProtocolError::Unexpected {
                        expected: "call, reply, event, ack or heartbeat",
                        got: other.kind(),
                    })
                }
            };
            if in_tx.send(incoming).await.is_err() {
                // The owner is gone; nobody will handle what the peer sends.
                return Ok(());
            }
        }
    };

    let writer = async {
        let mut tick = tokio::time::interval(config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = Instant::now();
        loop {
            tokio::select! {
                out = out_rx.recv() => {
                    let Some(Outgoing::Frame(frame)) = out else {
                        SinkExt::<Frame>::flush(&mut sink).await?;
                        return Ok(());
                    };
                    sink.feed(frame).await?;
                    // Batch whatever else is already queued into the same write.
                    let mut close = false;
                    while let Ok(more) = out_rx.try_recv() {
                        match more {
                            Outgoing::Frame(frame) => sink.feed(frame).await?,
                            Outgoing::Close => { close = true; break; }
                        }
                    }
                    SinkExt::<Frame>::flush(&mut sink).await?;
                    last_sent = Instant::now();
                    if close {
                        return Ok(());
                    }
                }
                _ = tick.tick() => {
                    let silent = Duration::from_millis(
                        since_base().saturating_sub(last_heard_ms.load(Ordering::Relaxed)),
                    );
                    if silent > config.heartbeat_timeout {
                        return Err(ProtocolError::PeerSilent(silent));
                    }
                    if last_sent.elapsed() >= config.heartbeat_interval {
                        sink.send(Frame::Heartbeat).await?;
                        last_sent = Instant::now();
                    }
                }
            }
        }
    };

    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}
