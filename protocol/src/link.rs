//! The link actor: one task owns a connected socket after the handshake. Callers send frames and
//! make calls through a cloneable [`LinkHandle`]; replies come back through oneshot channels;
//! everything else the peer sends arrives on an [`Incoming`] channel. Heartbeats go out when the
//! link is idle, and a peer silent past the timeout ends the link.
//!
//! Reading and writing are driven concurrently inside the one task, so two peers that both write
//! a lot can never deadlock on full socket buffers.
//!
//! Outgoing frames take one of two lanes: events take the event lane; calls, replies and acks
//! take the control lane, which the writer drains first. A peer with thousands of events queued
//! still answers a call (or acknowledges what it committed) after at most one write batch of
//! events, not after all of them. The wire is the same: only the order in which this side
//! writes its frames changes, and no one orders a reply or an ack against an event.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::Poll;

use futures::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::PollSender;

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
    /// Frames queued for writing before senders wait, per lane (events; calls, replies and
    /// acks).
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

/// Calls waiting for their reply, by call id.
type Pending = HashMap<u64, oneshot::Sender<Reply>, BuildHasherDefault<IdHasher>>;

/// Call ids are a local counter, never chosen by the peer (a reply with an unknown id is only
/// looked up): a multiplicative hash is enough, and much cheaper than SipHash on the hot path.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Shared {
    pending: Mutex<Pending>,
    next_call_id: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves the map consistent (single insert/remove), so a
        // poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the writer task sends. `Close` comes once per connection and every other message is a
/// frame, so the size gap costs nothing; boxing frames would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Frame(Frame),
    Close,
}

/// A cloneable handle to a running link.
#[derive(Clone)]
pub struct LinkHandle {
    /// The event lane (and `Close`, which comes after everything queued on either lane).
    tx: mpsc::Sender<Outgoing>,
    /// The control lane: calls, replies, acks. The writer drains it before the event lane.
    control_tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

/// Whether it is open: the channel and shared state inside say nothing useful.
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
        if self.send(Frame::Call { id, call }).await.is_err() {
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

    /// Send a frame (an event, an ack, a reply). Waits while its lane's queue is full: events
    /// take the event lane, everything else the control lane, written first.
    pub async fn send(&self, frame: Frame) -> Result<(), LinkClosed> {
        match frame {
            Frame::Event { .. } => enqueue(&self.tx, Outgoing::Frame(frame)).await,
            control => enqueue(&self.control_tx, control).await,
        }
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

/// Queue for the actor: without a future when there is room (the common case), else wait.
async fn enqueue<T>(tx: &mpsc::Sender<T>, out: T) -> Result<(), LinkClosed> {
    match tx.try_send(out) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(out)) => tx.send(out).await.map_err(|_| LinkClosed),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(LinkClosed),
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
    let (control_tx, control_rx) = mpsc::channel(config.outgoing_capacity.max(1));
    let (in_tx, in_rx) = mpsc::channel(config.incoming_capacity.max(1));
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        next_call_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
    });
    let handle = LinkHandle {
        tx: out_tx,
        control_tx,
        shared: shared.clone(),
    };
    let task = tokio::spawn(async move {
        let result = run(conn, config, control_rx, out_rx, in_tx, &shared).await;
        shared.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiting caller with LinkClosed.
        shared.pending().clear();
        result
    });
    (handle, in_rx, task)
}

/// Bytes queued in the write buffer before the actor writes them out even though more frames
/// wait: frames are written in batches of up to this size, one `write` each.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Read buffer size: one `read` takes in up to this much (many frames) per wake-up.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The actor: one task drives both directions of the socket by hand (no split, no lock between
/// a reader and a writer half), so that
///
/// - every frame waiting in the outgoing queues is encoded into the write buffer, the control
///   lane's before each event, and the buffer is written with one system call when the queues
///   are empty (or the buffer is full);
/// - every frame a read brought in is handled before the next read, and the time of life of the
///   peer is noted once per wake-up, not once per frame;
/// - reading goes on while a write waits for the peer (two peers that both write a lot never
///   deadlock on full socket buffers), and writing goes on while the owner is slow to take what
///   was read (reading pauses then: TCP backpressure).
async fn run<T>(
    conn: Connection<T>,
    config: LinkConfig,
    mut control_rx: mpsc::Receiver<Frame>,
    mut out_rx: mpsc::Receiver<Outgoing>,
    in_tx: mpsc::Sender<Incoming>,
    shared: &Shared,
) -> Result<(), ProtocolError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = conn.into_framed();
    framed.set_backpressure_boundary(WRITE_BATCH_BYTES);
    framed.read_buffer_mut().reserve(READ_BUFFER_BYTES);
    let mut in_tx = PollSender::new(in_tx);
    // A received frame the owner's full queue could not take yet.
    let mut stashed: Option<Incoming> = None;
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut closing = false;

    std::future::poll_fn(|cx| loop {
        let mut progress = false;

        // Outgoing: encode every queued frame into the write buffer, the control lane first.
        while !closing {
            if framed.write_buffer().len() >= WRITE_BATCH_BYTES {
                match SinkExt::<&Frame>::poll_flush_unpin(&mut framed, cx) {
                    Poll::Ready(Ok(())) => last_sent = Instant::now(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    // Woken when the socket is writable again; the queues wait meanwhile.
                    Poll::Pending => break,
                }
            }
            // Closed (every handle dropped) only together with the event lane, which ends the
            // loop below.
            if let Poll::Ready(Some(frame)) = control_rx.poll_recv(cx) {
                if let Err(e) = Pin::new(&mut framed).start_send(&frame) {
                    return Poll::Ready(Err(e));
                }
                continue;
            }
            match out_rx.poll_recv(cx) {
                Poll::Ready(Some(Outgoing::Frame(frame))) => {
                    if let Err(e) = Pin::new(&mut framed).start_send(&frame) {
                        return Poll::Ready(Err(e));
                    }
                }
                // Close, or every handle dropped: write what is queued on both lanes, then end.
                Poll::Ready(Some(Outgoing::Close)) | Poll::Ready(None) => {
                    closing = true;
                    while let Ok(frame) = control_rx.try_recv() {
                        if let Err(e) = Pin::new(&mut framed).start_send(&frame) {
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Poll::Pending => break,
            }
        }

        // Write the batch.
        if !framed.write_buffer().is_empty() {
            match SinkExt::<&Frame>::poll_flush_unpin(&mut framed, cx) {
                Poll::Ready(Ok(())) => last_sent = Instant::now(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if closing && framed.write_buffer().is_empty() {
            return Poll::Ready(Ok(()));
        }

        // Incoming: hand over what was stashed, then every frame that is readable.
        if let Some(item) = stashed.take() {
            match in_tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    if in_tx.send_item(item).is_err() {
                        return Poll::Ready(Ok(()));
                    }
                    progress = true;
                }
                // The owner is gone; nobody will handle what the peer sends.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => stashed = Some(item),
            }
        }
        let mut heard = false;
        while stashed.is_none() {
            let frame = match framed.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            };
            heard = true;
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
                    return Poll::Ready(Err(ProtocolError::Unexpected {
                        expected: "call, reply, event, ack or heartbeat",
                        got: other.kind(),
                    }))
                }
            };
            let Some(sender) = in_tx.get_ref() else {
                return Poll::Ready(Ok(()));
            };
            match sender.try_send(incoming) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Poll::Ready(Ok(())),
                Err(mpsc::error::TrySendError::Full(item)) => {
                    // Stop reading until the owner makes room (registers the wake-up).
                    stashed = Some(item);
                    progress = true;
                }
            }
        }
        if heard {
            last_heard = Instant::now();
        }

        // Heartbeats and the silence check.
        while tick.poll_tick(cx).is_ready() {
            let silent = last_heard.elapsed();
            if silent > config.heartbeat_timeout {
                return Poll::Ready(Err(ProtocolError::PeerSilent(silent)));
            }
            if !closing && last_sent.elapsed() >= config.heartbeat_interval {
                if let Err(e) = Pin::new(&mut framed).start_send(&Frame::Heartbeat) {
                    return Poll::Ready(Err(e));
                }
                last_sent = Instant::now();
                progress = true;
            }
        }

        if !progress {
            return Poll::Pending;
        }
    })
    .await
}
