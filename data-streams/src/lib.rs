//! The data-streams supervisor: keeps streams in a database, serves the HTTP API, accepts worker
//! connections, assigns streams to workers and persists what they report.
//!
//! [`Application::build`] connects, binds both ports and returns (port 0 gives a free port, and
//! the real addresses are readable); [`Application::run_until_stopped`] serves until shutdown.

pub mod api;
pub mod db;
pub mod domain;
pub mod reconcile;
pub mod settings;
pub mod supervisor;
pub mod workers;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use objects::ObjectStore;
use tokio::net::TcpListener;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Db, DbError};
use crate::settings::Settings;
use crate::supervisor::Supervisor;
use crate::workers::WorkerPortSettings;

/// Why the supervisor could not start. Each says which dependency and why, in one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database {target} not reachable after {secs} s: {source}")]
    Database {
        target: String,
        secs: u64,
        #[source]
        source: DbError,
    },
    #[error("database {target}: {source}")]
    DatabaseSetup {
        target: String,
        #[source]
        source: DbError,
    },
    #[error("object store {url}: {source}")]
    ObjectStore {
        url: String,
        #[source]
        source: objects::StoreError,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("housekeeping scheduler: {0}")]
    Scheduler(String),
    #[error("TLS on the worker port needs both WORKER_TLS_CERT and WORKER_TLS_KEY; {missing} is not set")]
    TlsIncomplete { missing: &'static str },
    #[error("TLS on the worker port: {0}")]
    Tls(#[source] protocol::tls::TlsError),
}

/// `error` and its causes in one line, `: `-separated, leaving out a cause whose message the
/// line already holds. Our errors name the dependency; the cause says why (connection refused,
/// login refused, unknown host), so a log line needs both.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let message = current.to_string().replace(['\n', '\r'], " ");
        if !message.is_empty() && !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        next = current.source();
    }
    line
}

/// A supervisor that is connected and bound, ready to serve.
pub struct Application {
    settings: Settings,
    http: TcpListener,
    worker_port: TcpListener,
    worker_tls: Option<protocol::tls::TlsAcceptor>,
    supervisor: Supervisor,
    store: Arc<dyn ObjectStore>,
}

/// The process-wide Prometheus recorder (installed once; later apps in the same process share it).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

impl Application {
    /// Connect to the database (retrying for `DATABASE_CONNECT_RETRY_SECS`), open the object
    /// store, and bind both ports.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Checked first: a half-configured TLS must not start a plaintext port.
        let worker_tls = match settings.worker_tls() {
            Ok(Some((cert, key))) => {
                Some(protocol::tls::acceptor(cert, key).map_err(StartupError::Tls)?)
            }
            Ok(None) => None,
            Err(missing) => return Err(StartupError::TlsIncomplete { missing }),
        };
        let db = connect_db(&settings).await?;
        let store = objects::open(
            &settings.object_store_url,
            objects::StoreOptions {
                create_buckets: settings.create_buckets,
            },
        )
        .await
        .map_err(|source| StartupError::ObjectStore {
            url: settings.object_store_url.clone(),
            source,
        })?;
        match store.check().await {
            Ok(()) => tracing::info!(store = %store.describe(), "object store ready"),
            Err(err) => {
                // Not fatal: raw reads fail with 503 and /readyz says why until it is back.
                tracing::error!(store = %store.describe(), "object store not reachable at start: {err}");
            }
        }
        // Nothing is connected to a process that just started.
        for w in db
            .list_workers()
            .await
            .map_err(|source| StartupError::DatabaseSetup {
                target: db::redact_url(&settings.database_url),
                source,
            })?
        {
            if w.connected {
                let _ = db
                    .set_worker_disconnected(&w.id, supervisor::now_ms())
                    .await;
            }
        }
        let http = bind(&settings.http_addr, "HTTP API").await?;
        let worker_port = bind(&settings.worker_addr, "worker port").await?;
        let supervisor = Supervisor::new(db, settings.call_timeout(), settings.heartbeat_timeout());
        Ok(Application {
            settings,
            http,
            worker_port,
            worker_tls,
            supervisor,
            store,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where workers dial.
    pub fn worker_addr(&self) -> SocketAddr {
        self.worker_port
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The supervision core (for tests).
    pub fn supervisor(&self) -> Supervisor {
        self.supervisor.clone()
    }

    /// Serve until `shutdown` is cancelled, then drain.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let Application {
            settings,
            http,
            worker_port,
            worker_tls,
            supervisor,
            store,
        } = self;
        let (token, dev_token) = settings.worker_token();
        if dev_token {
            tracing::warn!("DATA_STREAMS_WORKER_TOKEN is not set: workers authenticate with the development token");
        }
        let api_token = settings.api_token();
        if api_token.is_none() {
            tracing::warn!("DATA_STREAMS_API_TOKEN is not set: the HTTP API is open to anyone who can reach it");
        }
        let tracker = TaskTracker::new();
        let port_settings = WorkerPortSettings {
            token,
            max_connections: settings.max_worker_connections,
            max_frame: settings.max_frame_bytes,
            heartbeat_interval: settings.heartbeat_interval(),
            heartbeat_timeout: settings.heartbeat_timeout(),
            handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms.max(1)),
            tls: worker_tls,
        };
        if port_settings.tls.is_some() {
            tracing::info!("the worker port accepts TLS only");
        } else {
            tracing::warn!("WORKER_TLS_CERT is not set: the worker link is plain TCP: stream configurations, secret keys included, cross the network unencrypted");
        }
        tracker.spawn(workers::serve(
            worker_port,
            port_settings,
            supervisor.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));

        let mut housekeeping = housekeeping(&supervisor, &settings).await?;
        let reconciler = reconcile::Reconciler::new(
            supervisor.db().clone(),
            store.clone(),
            settings.reconcile_days,
        );
        let findings = Arc::new(std::sync::Mutex::new(None));
        tracker.spawn(reconcile_loop(
            reconciler,
            supervisor.reconcile_trigger(),
            Duration::from_millis(settings.reconcile_interval_ms.max(100)),
            findings.clone(),
            shutdown.clone(),
        ));

        let mut state = api::AppState::new(
            supervisor.clone(),
            store,
            api_token.as_deref(),
            metrics_handle(),
        );
        state.reconciler = findings;
        let app = api::router(state, settings.max_body_bytes);
        tracing::info!(http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP API listening");
        let served = axum::serve(http, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        let _ = housekeeping.shutdown().await;
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some worker sessions did not end within 10 s");
        }
        supervisor.db().close().await;
        served.map_err(|source| StartupError::Bind {
            addr: settings.http_addr.clone(),
            what: "HTTP API",
            source,
        })
    }
}

/// Periodic jobs: assign pending streams, and release streams of workers that went away while
/// no session of this process was watching them (e.g. across a supervisor restart).
async fn housekeeping(
    supervisor: &Supervisor,
    settings: &Settings,
) -> Result<JobScheduler, StartupError> {
    let err = |e: tokio_cron_scheduler::JobSchedulerError| StartupError::Scheduler(e.to_string());
    let sched = JobScheduler::new().await.map_err(err)?;
    let sup = supervisor.clone();
    let grace = settings.heartbeat_timeout();
    let every = Duration::from_millis(settings.assign_interval_ms.max(100));
    let started_ms = supervisor::now_ms();
    // A cron job every second, sweeping when `every` has passed since the last sweep began. Not
    // `Job::new_repeated_async`: its next tick is the previous one plus the period, and once
    // that falls behind the scheduler's clock the job never runs again (tokio-cron-scheduler
    // issue #113, seen here as assignment stopping under load). A cron job's next tick is
    // computed from now. Sweeps are therefore at least a second apart.
    let last_sweep = Arc::new(tokio::sync::Mutex::new(None::<tokio::time::Instant>));
    let job = Job::new_async("* * * * * *", move |_id, _lock| {
        let sup = sup.clone();
        let last_sweep = last_sweep.clone();
        Box::pin(async move {
            // A sweep still running (a slow database) is not joined by another.
            let Ok(mut last) = last_sweep.try_lock() else {
                return;
            };
            // Ticks come at whole seconds with up to half a second of jitter: allow for it.
            let due = last.is_none_or(|at| at.elapsed() + Duration::from_millis(500) >= every);
            if due {
                *last = Some(tokio::time::Instant::now());
                sweep(&sup, grace, started_ms).await;
            }
        })
    })
    .map_err(err)?;
    sched.add(job).await.map_err(err)?;
    sched.start().await.map_err(err)?;
    Ok(sched)
}

/// Run the reconciler on its period, and soon after a worker (re)connects.
async fn reconcile_loop(
    reconciler: reconcile::Reconciler,
    trigger: Arc<tokio::sync::Notify>,
    every: Duration,
    findings: api::ReconcilerStatus,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = trigger.notified() => {
                // Let the worker's replay land first, so its events are not mistaken for losses.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            _ = tokio::time::sleep(every) => {}
        }
        match reconciler.run_once().await {
            Ok(found) => {
                tracing::debug!(?found, "reconciler pass");
                if let Ok(mut last) = findings.lock() {
                    *last = Some((supervisor::now_ms(), found));
                }
            }
            Err(err) => tracing::warn!("reconciler pass failed: {err}"),
        }
    }
}

async fn sweep(supervisor: &Supervisor, grace: Duration, started_ms: i64) {
    let connected = supervisor.connected_workers();
    // A live session is a sign of life (its link ends within the heartbeat timeout otherwise).
    let now = supervisor::now_ms();
    for id in &connected {
        if let Err(err) = supervisor.db().touch_worker(id, now).await {
            tracing::warn!(worker_id = %id, "cannot record the worker's last sign of life: {err}");
        }
    }
    match supervisor.db().list_workers().await {
        Ok(rows) => {
            // Silence counts from when this process could first have heard the worker: after a
            // long supervisor outage, workers get one heartbeat timeout to reconnect before their
            // streams move.
            let cutoff = supervisor::now_ms() - grace.as_millis() as i64;
            for w in rows {
                let silent_since = w.last_seen.max(started_ms);
                if w.streams > 0 && !connected.contains(&w.id) && silent_since < cutoff {
                    supervisor.release_worker(&w.id).await;
                }
            }
        }
        Err(err) => tracing::warn!("housekeeping cannot read workers: {err}"),
    }
    supervisor.assign_pending().await;
}

async fn connect_db(settings: &Settings) -> Result<Db, StartupError> {
    let target = db::redact_url(&settings.database_url);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(settings.database_connect_retry_secs);
    let mut wait = Duration::from_millis(250);
    loop {
        match Db::connect(&settings.database_url).await {
            Ok(db) => {
                tracing::info!(database = %target, backend = db.backend(), "database ready");
                return Ok(db);
            }
            Err(source)
                if source.is_transient() && tokio::time::Instant::now() + wait < deadline =>
            {
                tracing::error!(
                    database = %target,
                    "database not reachable, retrying in {wait:?}: {}",
                    error_chain(&source)
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(source) if source.is_transient() => {
                return Err(StartupError::Database {
                    target,
                    secs: settings.database_connect_retry_secs,
                    source,
                })
            }
            Err(source) => return Err(StartupError::DatabaseSetup { target, source }),
        }
    }
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_owned(),
            what,
            source,
        })
}
