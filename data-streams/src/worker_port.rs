//! The worker port: accept connections (bounded), run the handshake, then one session per worker
//! that persists its events in batches and acknowledges each batch only after the commit.
//!
//! A bad peer — wrong token, wrong version, oversize frame, random bytes, a failed or silent TLS
//! handshake — loses its own connection with a logged reason; the listener and every other session
//! carry on.
//!
//! With a certificate configured the port speaks TLS only; the session is the same code over TLS
//! or plain TCP, and the HMAC handshake runs inside TLS as well.

use std::sync::Arc;
use std::time::Duration;

use common::SecretKey;
use protocol::handshake::{self, Admission};
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::tls::TlsAcceptor;
use protocol::{
    Connection, Event, ProtocolError, Reply, ResultRecord, RunFailure, RunReport, RunningStream,
    Welcome,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::DbError;
use crate::supervisor::{Role, Supervisor};

/// Events persisted per transaction, at most.
const PERSIST_BATCH: usize = 1024;

/// Why one worker's connection ended early. Logged with the peer's address; the listener and
/// every other session carry on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("TLS handshake: not finished within {0:?}")]
    TlsTimeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] ProtocolError),
    #[error("worker {worker_id}: cannot record the connection: {source}")]
    Record {
        worker_id: String,
        #[source]
        source: DbError,
    },
    #[error("worker {worker_id}: {source}")]
    Link {
        worker_id: String,
        #[source]
        source: ProtocolError,
    },
    #[error("worker {worker_id}: link task failed: {source}")]
    LinkTask {
        worker_id: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// How the worker port behaves. (No `Debug`: rustls' acceptor has none.)
#[derive(Clone)]
pub struct WorkerPortSettings {
    pub token: SecretKey,
    pub max_connections: usize,
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// The TLS handshake and the hello, together, must finish within this.
    pub handshake_timeout: Duration,
    /// When set, the port accepts TLS only.
    pub tls: Option<TlsAcceptor>,
}

/// Accept workers on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    settings: WorkerPortSettings,
    supervisor: Supervisor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let settings = Arc::new(settings);
    let mut accept_backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => {
                accept_backoff = Duration::from_millis(10);
                pair
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("accepting a worker connection failed: {err}");
                tokio::time::sleep(accept_backoff).await;
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let settings = settings.clone();
        let supervisor = supervisor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(err) = connection(socket, &settings, supervisor, shutdown).await {
                metrics::counter!("ds_worker_connections_closed_with_error_total").increment(1);
                tracing::warn!(%peer, "worker connection closed: {}", common::error_chain(&err));
            }
        });
    }
}

async fn connection(
    socket: TcpStream,
    settings: &WorkerPortSettings,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let _ = socket.set_nodelay(true);
    // One deadline for the TLS handshake and the hello together, so a silent client holds its
    // connection slot no longer than on a plain port.
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    match &settings.tls {
        None => session(socket, deadline, settings, supervisor, shutdown).await,
        Some(acceptor) => {
            let tls = tokio::time::timeout_at(deadline, acceptor.accept(socket))
                .await
                .map_err(|_| SessionError::TlsTimeout(settings.handshake_timeout))
                .and_then(|accepted| accepted.map_err(SessionError::Tls))
                .inspect_err(|_| {
                    metrics::counter!("ds_tls_handshake_failures_total").increment(1);
                })?;
            session(tls, deadline, settings, supervisor, shutdown).await
        }
    }
}

/// One worker's session on a connected socket (plain TCP or TLS): the hello, then the link.
async fn session<T>(
    socket: T,
    deadline: tokio::time::Instant,
    settings: &WorkerPortSettings,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) -> Result<(), SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The session's writes are the leader's, fenced by the term it was admitted under.
    match supervisor.term() {
        Some(term) => {
            crate::cluster::in_term(
                term,
                admitted(socket, deadline, settings, supervisor, shutdown, Some(term)),
            )
            .await
        }
        None => admitted(socket, deadline, settings, supervisor, shutdown, None).await,
    }
}

/// [`session`] under `term`: the worker is welcomed while this process leads under it.
async fn admitted<T>(
    socket: T,
    deadline: tokio::time::Instant,
    settings: &WorkerPortSettings,
    supervisor: Supervisor,
    shutdown: CancellationToken,
    term: Option<crate::cluster::Term>,
) -> Result<(), SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Connection::new(socket, settings.max_frame);
    let welcome = Welcome {
        heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms: settings.heartbeat_timeout.as_millis() as u64,
    };
    let admission = match supervisor.role() {
        Role::Leader => Admission::Welcome(welcome),
        Role::Follower { leader_worker_addr } => Admission::Redirect(leader_worker_addr),
    };
    let accepted = handshake::accept(
        &mut conn,
        settings.token.expose().as_bytes(),
        admission,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    let hello = match accepted {
        Ok(hello) => hello,
        Err(ProtocolError::Redirected(leader)) => {
            metrics::counter!("ds_worker_redirects_total").increment(1);
            tracing::debug!(leader = ?leader, "a worker dialled this follower: sent to the leader");
            return Ok(());
        }
        Err(e) => {
            metrics::counter!("ds_handshake_rejections_total").increment(1);
            return Err(SessionError::Handshake(e));
        }
    };
    let worker_id = hello.worker_id.clone();
    let config = LinkConfig {
        heartbeat_interval: settings.heartbeat_interval,
        heartbeat_timeout: settings.heartbeat_timeout,
        ..LinkConfig::default()
    };
    let (link, mut incoming, mut task) = link::spawn(conn, config);
    let conn_id = supervisor
        .worker_connected(&worker_id, hello.capacity, hello.adapters, link.clone())
        .await
        .map_err(|source| SessionError::Record {
            worker_id: worker_id.clone(),
            source,
        })?;
    tracing::info!(
        worker_id,
        capacity = hello.capacity,
        running = hello.running,
        "worker connected"
    );

    let mut batch = Batch::default();
    let mut role = supervisor.role_changes();
    // Leadership may have changed since the handshake: checked once now, then on each change.
    let still_leading =
        |supervisor: &Supervisor| supervisor.is_leader() && supervisor.term() == term;
    if !still_leading(&supervisor) {
        role.mark_changed();
    }
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                link.close().await;
                break Ok(());
            }
            // No longer the leader: the worker goes, and its next dial is redirected.
            changed = role.changed() => {
                role.borrow_and_update();
                if changed.is_err() || !still_leading(&supervisor) {
                    tracing::info!(worker_id, "this supervisor no longer leads: closing the worker's link");
                    link.close().await;
                    break Ok(());
                }
            }
            ended = &mut task => {
                break match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(source)) => Err(SessionError::Link { worker_id: worker_id.clone(), source }),
                    Err(source) => Err(SessionError::LinkTask { worker_id: worker_id.clone(), source }),
                };
            }
            msg = incoming.recv() => {
                let Some(msg) = msg else { break Ok(()) };
                batch.clear();
                collect(msg, &mut batch, &link, &supervisor, &worker_id).await;
                while batch.len() < PERSIST_BATCH {
                    match incoming.try_recv() {
                        Ok(more) => collect(more, &mut batch, &link, &supervisor, &worker_id).await,
                        Err(_) => break,
                    }
                }
                if batch.len() > 0
                    && !persist(&supervisor, &worker_id, &link, &batch, &shutdown).await
                {
                    break Ok(());
                }
            }
        }
    };
    supervisor.worker_disconnected(&worker_id, conn_id).await;
    tracing::info!(worker_id, "worker disconnected");
    outcome
}

/// Events waiting for one commit, already split the way `persist_events` takes them (moved in,
/// never cloned: this is the hot path).
#[derive(Default)]
struct Batch {
    results: Vec<ResultRecord>,
    failures: Vec<RunFailure>,
    /// Reports of runs of several steps (pages, jobs, sweeps).
    runs: Vec<RunReport>,
    /// The highest sequence number in the batch: what the ack after the commit covers.
    max_seq: u64,
    /// The `worker_available` list so far: it comes in parts, and is acted on whole. Not
    /// cleared with the batch; taken when its last part arrives.
    available: Vec<RunningStream>,
}

impl Batch {
    fn len(&self) -> usize {
        self.results.len() + self.failures.len() + self.runs.len()
    }

    fn clear(&mut self) {
        self.results.clear();
        self.failures.clear();
        self.runs.clear();
        self.max_seq = 0;
    }
}

/// Sort one incoming message: events to persist go into the batch; the rest is handled here.
async fn collect(
    msg: Incoming,
    batch: &mut Batch,
    link: &LinkHandle,
    supervisor: &Supervisor,
    worker_id: &str,
) {
    match msg {
        Incoming::Event {
            event: Event::WorkerAvailable { running, last },
            ..
        } => {
            batch.available.extend(running);
            if !last {
                return;
            }
            let running = std::mem::take(&mut batch.available);
            // It makes calls over this same link, whose replies need this loop to keep reading:
            // run it beside the loop, never inside it.
            let supervisor = supervisor.clone();
            let worker_id = worker_id.to_owned();
            crate::cluster::spawn_in_term(async move {
                supervisor.worker_available(&worker_id, running).await
            });
        }
        Incoming::Event { seq, event } => {
            batch.max_seq = batch.max_seq.max(seq);
            match event {
                // Held once after decoding: taken out without a copy.
                Event::Results(r) => batch.results.push(Arc::unwrap_or_clone(r)),
                Event::RunFailed(f) => batch.failures.push(Arc::unwrap_or_clone(f)),
                Event::Run(report) => batch.runs.push(*report),
                Event::WorkerAvailable { .. } => {}
            }
        }
        Incoming::Call { id, call } => {
            tracing::warn!(
                worker_id,
                call = call.name(),
                "workers make no calls; refusing"
            );
            let _ = link
                .reply(id, Reply::err("the supervisor takes no calls"))
                .await;
        }
        Incoming::Ack { .. } => {}
    }
}

/// Commit a batch through the supervisor, retrying while the database is down (the worker keeps
/// the events meanwhile, and TCP backpressure slows it), then acknowledge. Returns false on
/// shutdown.
async fn persist(
    supervisor: &Supervisor,
    worker_id: &str,
    link: &LinkHandle,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> bool {
    let mut wait = Duration::from_millis(100);
    loop {
        match supervisor
            .persist(worker_id, &batch.results, &batch.failures, &batch.runs)
            .await
        {
            Ok(stats) => {
                metrics::counter!("ds_results_inserted_total").increment(stats.results_inserted);
                metrics::counter!("ds_results_duplicate_total").increment(stats.results_duplicate);
                metrics::counter!("ds_failures_inserted_total").increment(stats.failures_inserted);
                break;
            }
            // Deposed (or no longer leading): retrying here would be refused forever. The
            // session ends unacknowledged, and the worker replays the batch to the leader.
            Err(err) if matches!(err, DbError::Fenced(_)) || !supervisor.is_leader() => {
                tracing::warn!(
                    worker_id,
                    events = batch.len(),
                    "not acknowledging events: this supervisor no longer leads ({err}); the worker replays them to the leader"
                );
                return false;
            }
            Err(err) => {
                metrics::counter!("ds_persist_errors_total").increment(1);
                tracing::error!(
                    events = batch.len(),
                    "cannot commit events, not acknowledging them; retrying in {wait:?}: {err}"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    if batch.max_seq > 0 {
        let _ = link.ack(batch.max_seq).await;
    }
    true
}
