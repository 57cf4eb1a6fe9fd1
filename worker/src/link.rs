//! The worker's connection to the supervisor: dial, prove the token, announce what runs here,
//! replay every unacknowledged event, then serve `worker:start`/`worker:stop` and stream new
//! events — and when the link drops, dial again with backoff and jitter. Streams keep running
//! and storing while the supervisor is away; their events wait in the outbox.
//!
//! With a CA configured the link runs over TLS; the session is the same code over TLS or plain
//! TCP, and the HMAC handshake runs inside TLS as well.

use std::sync::Arc;
use std::time::Duration;

use common::SecretKey;
use protocol::handshake::{self, WorkerIdentity};
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::tls::{ServerName, TlsConnector};
use protocol::{Connection, Event, ProtocolError};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::calls::handle_call;
use crate::outbox::Outbox;
use crate::scheduler::Scheduler;

/// TLS to the supervisor: whom to trust, and the name its certificate must carry.
#[derive(Clone)]
pub struct LinkTls {
    pub connector: TlsConnector,
    /// `None`: the host part of the address dialled (each supervisor replica, or the leader a
    /// follower points to, is checked under its own name).
    pub server_name: Option<ServerName<'static>>,
}

/// The name it checks: rustls' connector has no `Debug`.
impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How the worker dials.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The supervisor's worker address, or several separated by commas (the replicas, or an
    /// orchestrator's Service): tried in turn, and a follower's redirect is followed to the
    /// leader.
    pub supervisor_addr: String,
    pub token: SecretKey,
    pub worker_id: String,
    pub capacity: u32,
    pub adapters: Vec<String>,
    pub max_frame: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The connect, the TLS handshake and the hello each get this long.
    pub connect_timeout: Duration,
    /// When set, the link runs over TLS.
    pub tls: Option<LinkTls>,
    /// Most events sent and not yet acknowledged (`WORKER_SEND_WINDOW`).
    pub send_window: usize,
}

/// How many events go out before the sender lets other tasks run.
const SEND_BATCH: usize = 256;
/// Most events sent and not yet acknowledged, by default (see RFC.md §5, "Send window").
pub const DEFAULT_SEND_WINDOW: usize = 2048;

/// Redirects followed in a row without a session before the worker backs off: two followers
/// that point at each other during an election do not make it spin.
const MAX_REDIRECTS: u32 = 3;

/// The addresses in `DATA_STREAMS_WORKER_ADDR`: one or several, separated by commas.
pub fn addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Keep the worker connected until `shutdown`: dial the configured addresses in turn, follow a
/// follower's redirect to the leader, and back off after failures.
pub async fn run(
    settings: LinkSettings,
    scheduler: Scheduler,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
) {
    let configured = addresses(&settings.supervisor_addr);
    let configured = if configured.is_empty() {
        vec![settings.supervisor_addr.clone()]
    } else {
        configured
    };
    let mut next = 0usize;
    let mut redirected_to: Option<String> = None;
    let mut redirects = 0u32;
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let addr = redirected_to.take().unwrap_or_else(|| {
            let addr = configured[next % configured.len()].clone();
            next += 1;
            addr
        });
        match session(&addr, &settings, &scheduler, &outbox, &shutdown).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::ByPeer) => {
                tracing::warn!(%addr, "supervisor closed the link; reconnecting");
                failures = 0;
                redirects = 0;
            }
            Err(SessionError::Link(ProtocolError::Redirected(leader))) => {
                redirects += 1;
                tracing::info!(%addr, leader = leader.as_deref().unwrap_or("(none yet)"), "this supervisor follows; dialling the leader");
                if redirects <= MAX_REDIRECTS {
                    if let Some(leader) = leader {
                        redirected_to = Some(leader);
                        continue;
                    }
                }
                failures += 1;
                redirects = 0;
            }
            Err(SessionError::Connect(err)) => {
                failures += 1;
                // Say it loudly once, then quietly while the supervisor stays down.
                if failures == 1 {
                    tracing::warn!(%addr, "cannot reach the supervisor: {err}; retrying with backoff");
                } else {
                    tracing::debug!(%addr, failures, "still cannot reach the supervisor: {err}");
                }
            }
            Err(SessionError::Tls(err)) => {
                failures += 1;
                // Usually configuration (an untrusted or misnamed certificate, a plain port):
                // loud once, then quiet until it changes.
                if failures == 1 {
                    tracing::error!(%addr, "TLS handshake with the supervisor failed: {err}; retrying with backoff");
                } else {
                    tracing::debug!(%addr, failures, "TLS handshake with the supervisor still fails: {err}");
                }
            }
            Err(SessionError::LinkTask(err)) => {
                failures += 1;
                tracing::error!(%addr, "the link's task failed: {err}");
            }
            Err(SessionError::Link(err)) => {
                failures += 1;
                match &err {
                    ProtocolError::Rejected(reason) => {
                        tracing::error!(%addr, "supervisor rejected this worker: {reason}")
                    }
                    other => {
                        tracing::warn!(%addr, "link to the supervisor failed: {other}")
                    }
                }
            }
        }
        let wait = backoff(&settings, failures);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn backoff(settings: &LinkSettings, failures: u32) -> Duration {
    let exp = settings
        .reconnect_min
        .saturating_mul(1u32 << failures.min(16))
        .min(settings.reconnect_max);
    // Jitter so a fleet of workers does not reconnect in lockstep after a supervisor restart.
    let jitter = rand::thread_rng().gen_range(0.5..=1.0);
    exp.mul_f64(jitter)
}

enum Ended {
    Shutdown,
    ByPeer,
}

#[derive(Debug)]
enum SessionError {
    Connect(std::io::Error),
    Tls(std::io::Error),
    Link(ProtocolError),
    /// The task that drove the link panicked or was cancelled.
    LinkTask(tokio::task::JoinError),
}

async fn session(
    addr: &str,
    settings: &LinkSettings,
    scheduler: &Scheduler,
    outbox: &Arc<Outbox>,
    shutdown: &CancellationToken,
) -> Result<Ended, SessionError> {
    let socket = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            SessionError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(SessionError::Connect)?;
    let _ = socket.set_nodelay(true);
    match &settings.tls {
        None => link_session(addr, socket, settings, scheduler, outbox, shutdown).await,
        Some(tls) => {
            let server_name = match &tls.server_name {
                Some(name) => name.clone(),
                None => protocol::tls::server_name(protocol::tls::host_of(addr)).map_err(|e| {
                    SessionError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?,
            };
            let handshake = tls.connector.connect(server_name, socket);
            let socket = tokio::time::timeout(settings.connect_timeout, handshake)
                .await
                .map_err(|_| {
                    SessionError::Tls(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("not finished within {:?}", settings.connect_timeout),
                    ))
                })?
                .map_err(SessionError::Tls)?;
            link_session(addr, socket, settings, scheduler, outbox, shutdown).await
        }
    }
}

/// The hello and the link on a connected socket (plain TCP or TLS).
async fn link_session<T>(
    addr: &str,
    socket: T,
    settings: &LinkSettings,
    scheduler: &Scheduler,
    outbox: &Arc<Outbox>,
    shutdown: &CancellationToken,
) -> Result<Ended, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Connection::new(socket, settings.max_frame);
    let identity = WorkerIdentity {
        worker_id: settings.worker_id.clone(),
        capacity: settings.capacity,
        adapters: settings.adapters.clone(),
        running: scheduler.len() as u64,
    };
    let welcome = handshake::connect(
        &mut conn,
        settings.token.expose().as_bytes(),
        identity,
        settings.connect_timeout,
    )
    .await
    .map_err(SessionError::Link)?;
    let config = LinkConfig {
        heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms.max(10)),
        heartbeat_timeout: Duration::from_millis(welcome.heartbeat_timeout_ms.max(30)),
        ..LinkConfig::default()
    };
    let (link, mut incoming, mut task) = link::spawn(conn, config);
    tracing::info!(
        %addr,
        worker_id = %settings.worker_id,
        running = scheduler.len(),
        unacknowledged = outbox.len(),
        "connected to the supervisor"
    );
    // Unnumbered (seq 0): it describes this moment, so it is never replayed. In parts: the list
    // of a worker running a million streams is tens of megabytes.
    for part in Event::worker_available(scheduler.running(), settings.max_frame) {
        if link.event(0, part).await.is_err() {
            break;
        }
    }

    // The events go out from a task of their own, so a call never waits while the sender
    // copies a batch; it ends with the session (the guard drops on every return).
    let sender = tokio::spawn(send_events(
        link.clone(),
        outbox.clone(),
        settings.send_window.max(1),
    ));
    let _sender = AbortOnDrop(sender);
    loop {
        // Biased: a call from the supervisor, or an ack that opens the send window, is handled
        // before anything else this session does.
        tokio::select! {
            biased;
            msg = incoming.recv() => match msg {
                Some(Incoming::Call { id, call }) => {
                    let reply = handle_call(scheduler, *call);
                    // The control lane: written before any queued event (protocol::link).
                    let _ = link.reply(id, reply).await;
                }
                Some(Incoming::Ack { seq }) => outbox.ack(seq),
                Some(Incoming::Event { event, .. }) => {
                    tracing::warn!(event = event.name(), "ignoring an event from the supervisor");
                }
                // The link ended; the task branch says why.
                None => {
                    let ended = (&mut task).await;
                    return session_ended(ended);
                }
            },
            _ = shutdown.cancelled() => {
                link.close().await;
                return Ok(Ended::Shutdown);
            }
            ended = &mut task => return session_ended(ended),
        }
    }
}

/// Why the link's task ended, as the session's outcome.
fn session_ended(
    ended: Result<Result<(), ProtocolError>, tokio::task::JoinError>,
) -> Result<Ended, SessionError> {
    match ended {
        Ok(Ok(())) => Ok(Ended::ByPeer),
        Ok(Err(err)) => Err(SessionError::Link(err)),
        Err(join) => Err(SessionError::LinkTask(join)),
    }
}

/// Aborts the task when dropped: the event sender lives exactly as long as its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send every unacknowledged event (a replay, on a fresh link), then each new one as it comes.
async fn send_events(link: LinkHandle, outbox: Arc<Outbox>, window: usize) {
    let mut sent = 0u64;
    loop {
        // Flow control: the supervisor reads as fast as it commits, and replies to its calls
        // share the socket with the events. Replies take the link's control lane (written
        // before queued events), but what is already in the socket stays ahead of them:
        // unbounded, a backlog of tens of thousands of events sat there ahead of every reply,
        // and `worker:start` calls timed out after a restart at 10,000 streams.
        let acked = outbox.acked();
        tokio::pin!(acked);
        acked.as_mut().enable();
        let in_flight = outbox.unacked_through(sent);
        if in_flight >= window {
            acked.await;
            continue;
        }
        let batch = outbox.after(sent, SEND_BATCH.min(window - in_flight));
        if batch.is_empty() {
            outbox.changed().await;
            continue;
        }
        for (seq, event) in batch {
            if link.event(seq, event).await.is_err() {
                // Closed link: the session notices and ends (and aborts this task).
                return;
            }
            sent = seq;
        }
        tokio::task::yield_now().await;
    }
}
