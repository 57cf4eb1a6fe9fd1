//! The link actor: one task owns a connected socket after the handshake. Callers send frames and
//! make calls through a cloneable [`LinkHandle`]; replies come back through oneshot channels;
//! everything else the peer sends arrives on an [`Incoming`] channel. Heartbeats go out when the
//! link is idle, and a peer silent past the timeout ends the link.
//!
//! Reading and writing are driven concurrently inside the one task, so two peers that both write
//! a lot can never deadlock on full socket buffers.
//!
//! Call deadlines share one timer: each call puts its deadline in a queue next to its waiter, and
//! the actor keeps a single sleep armed for the earliest one. When it fires, every call past its
//! deadline is answered with [`CallError::Timeout`]. A call costs a heap push, not a timer entry
//! of its own to register in tokio's wheel and cancel again.
//!
//! Outgoing frames take one of two lanes: events take the event lane; calls, replies and acks
//! take the control lane, which the writer drains first. A peer with thousands of events queued
//! still answers a call (or acknowledges what it committed) after at most one write batch of
//! events, not after all of them. The wire is the same: only the order in which this side
//! writes its frames changes, and no one orders a reply or an ack against an event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
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
    /// The peer asks something; answer with [`LinkHandle::reply`]. Boxed like
    /// [`Frame::Call`]: a `worker:start` is ten times the size of everything else here.
    Call { id: u64, call: Box<Call> },
    /// A numbered event; acknowledge with [`LinkHandle::ack`] once it is durable.
    Event { seq: u64, event: Event },
    /// Every event up to `seq` is durable at the peer.
    Ack { seq: u64 },
}

/// What a waiting caller is told.
#[derive(Debug)]
enum Answer {
    /// The peer's reply.
    Reply(Reply),
    /// The deadline passed first.
    Expired,
}

/// A call waiting for its reply: where to send it, and until when.
struct Waiter {
    tx: oneshot::Sender<Answer>,
    deadline: Instant,
}

/// Calls waiting for their reply, by call id.
type Pending = HashMap<u64, Waiter, BuildHasherDefault<IdHasher>>;

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

/// The calls in flight and their deadlines.
#[derive(Default)]
struct Calls {
    pending: Pending,
    /// `(deadline, id)` of the calls made, earliest first. An answered call's entry stays until
    /// it comes due or the queue is rebuilt from `pending` (when stale entries outnumber live
    /// ones), so an answer costs no search here.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The deadline the actor's timer is armed for, if any.
    armed: Option<Instant>,
}

impl Calls {
    /// Register a call. True when its deadline comes before the one the timer waits for (the
    /// actor must re-arm).
    fn insert(&mut self, id: u64, tx: oneshot::Sender<Answer>, deadline: Instant) -> bool {
        self.pending.insert(id, Waiter { tx, deadline });
        if self.deadlines.len() >= 2 * self.pending.len() + 64 {
            // Mostly answered calls: keep the queue as small as what is in flight.
            self.deadlines = self
                .pending
                .iter()
                .map(|(&id, waiter)| Reverse((waiter.deadline, id)))
                .collect();
        } else {
            self.deadlines.push(Reverse((deadline, id)));
        }
        self.armed.is_none_or(|armed| deadline < armed)
    }

    /// Answer every call whose deadline is at or before `now` with [`Answer::Expired`]; the
    /// next deadline to wait for, now armed.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.armed = loop {
            let Some(&Reverse((deadline, id))) = self.deadlines.peek() else {
                break None;
            };
            if deadline > now {
                break Some(deadline);
            }
            self.deadlines.pop();
            if let Some(waiter) = self.pending.remove(&id) {
                // A caller that gave up already has nobody listening.
                let _ = waiter.tx.send(Answer::Expired);
            }
        };
        self.armed
    }
}

struct Shared {
    calls: Mutex<Calls>,
    next_call_id: AtomicU64,
    closed: AtomicBool,
    /// Set by a call whose deadline is earlier than the armed one: the actor re-arms its timer.
    rearm: AtomicBool,
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A panic while holding this lock leaves the map and queue consistent (single
        // insert/remove/push/pop), so a poisoned lock is still usable.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a deadline too far off to represent is put (tokio's own choice for `Sleep`).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// What the writer task sends on the event lane: frames, and once per connection `Close`.
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
    /// Make a call and wait at most `timeout` for its reply (counted from now, including any
    /// wait for room in the queue). The link's one deadline timer ends the wait: no timer per
    /// call.
    pub async fn call(&self, call: Call, timeout: Duration) -> Result<Reply, CallError> {
        let name = call.name();
        let id = self.shared.next_call_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        if self.shared.calls().insert(id, reply_tx, deadline) {
            // Seen by the actor when it takes the call's frame from the queue, below.
            self.shared.rearm.store(true, Ordering::Release);
        }
        let frame = Frame::Call {
            id,
            call: Box::new(call),
        };
        if self.send(frame).await.is_err() {
            self.shared.calls().pending.remove(&id);
            return Err(CallError::LinkClosed { call: name });
        }
        match reply_rx.await {
            Ok(Answer::Reply(reply)) => Ok(reply),
            Ok(Answer::Expired) => Err(CallError::Timeout {
                call: name,
                timeout_ms: timeout.as_millis() as u64,
            }),
            // The actor ended and dropped every waiter.
            Err(_) => Err(CallError::LinkClosed { call: name }),
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
        calls: Mutex::new(Calls::default()),
        next_call_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        rearm: AtomicBool::new(false),
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
        let mut calls = shared.calls();
        calls.pending.clear();
        calls.deadlines.clear();
        drop(calls);
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
    // The one timer for every call's deadline, armed for the earliest (`Calls::armed`).
    let mut deadline_timer = std::pin::pin!(tokio::time::sleep_until(far_future()));
    let mut timer_armed = false;

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
                    // A reply to a call that timed out has no one waiting: drop it. Its deadline
                    // stays queued until it comes due or the queue is rebuilt.
                    let waiter = shared.calls().pending.remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.tx.send(Answer::Reply(reply));
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

        // Call deadlines: re-arm when a call came with an earlier one, and when the timer
        // fires, time out every call past its deadline and arm for the next.
        if shared.rearm.swap(false, Ordering::AcqRel) {
            let mut calls = shared.calls();
            let next = calls.deadlines.peek().map(|&Reverse((at, _))| at);
            calls.armed = next;
            drop(calls);
            if let Some(at) = next {
                deadline_timer.as_mut().reset(at);
            }
            timer_armed = next.is_some();
        }
        while timer_armed && deadline_timer.as_mut().poll(cx).is_ready() {
            // The timer fired, so its deadline has passed, whatever the clock's rounding: each
            // round times out at least the earliest call, so this loop ends.
            let now = Instant::now().max(deadline_timer.deadline());
            let next = shared.calls().expire(now);
            if let Some(at) = next {
                deadline_timer.as_mut().reset(at);
            }
            timer_armed = next.is_some();
        }

        if !progress {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DEFAULT_MAX_FRAME;
    use uuid::Uuid;

    fn stop() -> Call {
        Call::Stop {
            stream_id: Uuid::nil(),
            generation: 0,
        }
    }

    /// A link over an in-memory pipe, and the raw other end (which answers nothing unless told).
    fn linked() -> (
        LinkHandle,
        mpsc::Receiver<Incoming>,
        Connection<tokio::io::DuplexStream>,
    ) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        // The raw peer sends no heartbeats: let it stay silent for longer than any test waits.
        let quiet = LinkConfig {
            heartbeat_interval: Duration::from_secs(3_600),
            heartbeat_timeout: Duration::from_secs(7_200),
            ..LinkConfig::default()
        };
        let (link, incoming, _task) = spawn(Connection::new(ours, DEFAULT_MAX_FRAME), quiet);
        (link, incoming, Connection::new(theirs, DEFAULT_MAX_FRAME))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_times_out_through_the_shared_timer() {
        let (link, _incoming, mut peer) = linked();
        let t0 = Instant::now();
        let err = link
            .call(stop(), Duration::from_millis(250))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Timeout {
                call: "worker:stop",
                timeout_ms: 250
            }
        );
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_millis(260),
            "{waited:?}"
        );
        // The call did go out, and nothing waits for it any more.
        match peer.read_frame().await.unwrap() {
            Some(Frame::Call { id, .. }) => {
                assert!(!link.shared.calls().pending.contains_key(&id))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_call_with_an_earlier_deadline_rearms_the_timer() {
        let (link, _incoming, _peer) = linked();
        let t0 = Instant::now();
        let slow = tokio::spawn({
            let link = link.clone();
            async move { link.call(stop(), Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let quick = link.call(stop(), Duration::from_millis(100)).await;
        assert!(
            matches!(
                quick,
                Err(CallError::Timeout {
                    timeout_ms: 100,
                    ..
                })
            ),
            "{quick:?}"
        );
        // 10 ms after the first call, plus its own 100 ms: not the first call's minute.
        assert!(
            t0.elapsed() < Duration::from_millis(120),
            "{:?}",
            t0.elapsed()
        );
        assert!(!slow.is_finished());
        let slow = slow.await.unwrap();
        assert!(
            matches!(
                slow,
                Err(CallError::Timeout {
                    timeout_ms: 60_000,
                    ..
                })
            ),
            "{slow:?}"
        );
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_millis(60_010),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn answered_calls_leave_no_deadline_behind_for_long() {
        let (link, _incoming, peer) = linked();
        // The peer answers every call.
        let answering = tokio::spawn(async move {
            let mut peer = peer;
            while let Ok(Some(frame)) = peer.read_frame().await {
                if let Frame::Call { id, .. } = frame {
                    let reply = Frame::Reply {
                        id,
                        reply: Reply::ok("ok"),
                    };
                    if peer.write_frame(&reply).await.is_err() {
                        return;
                    }
                }
            }
        });
        for _ in 0..1_000 {
            let reply = link.call(stop(), Duration::from_secs(30)).await.unwrap();
            assert_eq!(reply, Reply::ok("ok"));
        }
        {
            let calls = link.shared.calls();
            assert!(calls.pending.is_empty());
            // Stale entries are dropped once they outnumber the calls in flight (at most 2 x 1
            // + 64 while the last call was made).
            assert!(calls.deadlines.len() <= 66, "{}", calls.deadlines.len());
        }
        link.close().await;
        answering.await.unwrap();
    }

    #[test]
    fn deadlines_expire_in_order_and_skip_answered_calls() {
        let t0 = Instant::now();
        let mut calls = Calls::default();
        let mut rxs = Vec::new();
        for (id, after_ms) in [(1, 300), (2, 100), (3, 200)] {
            let (tx, rx) = oneshot::channel();
            calls.insert(id, tx, t0 + Duration::from_millis(after_ms));
            rxs.push((id, rx));
        }
        // Call 3 was answered: its deadline stays queued but times nothing out.
        let answered = calls.pending.remove(&3).unwrap();
        let _ = answered.tx.send(Answer::Reply(Reply::ok("done")));
        assert_eq!(
            calls.expire(t0 + Duration::from_millis(250)),
            Some(t0 + Duration::from_millis(300))
        );
        assert_eq!(calls.armed, Some(t0 + Duration::from_millis(300)));
        let mut outcome: Vec<(u64, String)> = rxs
            .iter_mut()
            .map(|(id, rx)| (*id, format!("{:?}", rx.try_recv())))
            .collect();
        outcome.sort();
        assert_eq!(outcome[0], (1, "Err(Empty)".to_owned()));
        assert_eq!(outcome[1], (2, "Ok(Expired)".to_owned()));
        assert!(outcome[2].1.starts_with("Ok(Reply("), "{:?}", outcome[2]);
        assert_eq!(calls.expire(t0 + Duration::from_millis(300)), None);
        assert!(calls.pending.is_empty() && calls.deadlines.is_empty());
        // With nothing armed, any new call needs the timer.
        let (tx, _rx) = oneshot::channel();
        assert!(calls.insert(4, tx, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn frames_and_incoming_messages_are_small() {
        // Both are moved through the decoder and the link's queues by value.
        assert!(size_of::<Frame>() <= 80, "{}", size_of::<Frame>());
        assert!(size_of::<Incoming>() <= 56, "{}", size_of::<Incoming>());
    }
}
