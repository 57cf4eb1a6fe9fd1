//! The data-streams supervisor: keeps streams in a database, serves the HTTP API, accepts worker
//! connections, assigns streams to workers and persists what they report.
//!
//! [`Application::build`] connects, binds both ports and returns (port 0 gives a free port, and
//! the real addresses are readable); [`Application::run_until_stopped`] serves until shutdown.

pub mod api;
pub mod cluster;
pub mod console;
pub mod coverage;
pub mod db;
pub mod ingest;
pub mod layout;
mod leading;
pub mod live;
pub mod reconcile;
pub mod reparse;
pub mod settings;
pub mod stream;
pub mod supervisor;
pub mod sweep;
pub mod tables;
pub mod worker_port;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use objects::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Db, DbError};
use crate::live::Live;
use crate::reconcile::Reconciler;
use crate::settings::Settings;
use crate::supervisor::Supervisor;
use crate::worker_port::WorkerPortSettings;

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
    #[error(transparent)]
    ObjectStore(#[from] objects::OpenError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("housekeeping scheduler: {0}")]
    Scheduler(#[source] tokio_cron_scheduler::JobSchedulerError),
    #[error("TLS on the worker port needs both WORKER_TLS_CERT and WORKER_TLS_KEY; {missing} is not set")]
    TlsIncomplete { missing: &'static str },
    #[error("TLS on the worker port: {0}")]
    Tls(#[source] protocol::tls::TlsError),
    #[error("layout migration: {0}")]
    Migration(#[source] layout::MigrationError),
    #[error(transparent)]
    SingleReplica(#[from] cluster::SingleReplicaError),
    #[error(transparent)]
    LeaseTiming(#[from] cluster::InvalidLeaseTiming),
    #[error(transparent)]
    Elector(#[from] cluster::ElectorError),
}

/// A supervisor that is connected and bound, ready to serve.
pub struct Application {
    settings: Settings,
    http: TcpListener,
    worker_port: TcpListener,
    worker_tls: Option<protocol::tls::TlsAcceptor>,
    supervisor: Supervisor,
    db: Db,
    store: Arc<dyn ObjectStore>,
    reconciler: Reconciler,
    live: Live,
    /// SQLite: this process's hold on the database file (a second supervisor refuses to start).
    single: Option<cluster::SingleReplicaGuard>,
    lease_timing: cluster::LeaseTiming,
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
        // Installed before anything records: a metric set earlier (the elector's first term,
        // say) would be lost.
        let _ = metrics_handle();
        // Checked first: a half-configured TLS must not start a plaintext port.
        let worker_tls = match settings.worker_tls() {
            Ok(Some((cert, key))) => {
                Some(protocol::tls::acceptor(cert, key).map_err(StartupError::Tls)?)
            }
            Ok(None) => None,
            Err(missing) => return Err(StartupError::TlsIncomplete { missing }),
        };
        let lease_timing = settings.lease_timing()?;
        // Before connecting: a second supervisor must not even migrate the file.
        let single = cluster::SingleReplicaGuard::acquire(settings.database_url.expose())?;
        let db = connect_db(&settings).await?;
        // A store that is down at start is not fatal: raw reads fail with 503 and /readyz says
        // why until it is back.
        let store = settings.store.open().await?;
        let http = bind(&settings.http_addr, "HTTP API").await?;
        let worker_port = bind(&settings.worker_addr, "worker port").await?;
        let reconciler = Reconciler::new(db.clone(), store.clone(), settings.reconcile_days)
            .with_push_orphan_age(Duration::from_millis(settings.push_orphan_age_ms))
            .with_rotation(Duration::from_millis(settings.reconcile_rotation_ms));
        let live = Live::new();
        let supervisor = Supervisor::new(
            db.clone(),
            settings.call_timeout(),
            settings.heartbeat_timeout(),
            reconciler.suspects(),
            live.clone(),
        );
        match db {
            // Until the elector says otherwise: several replicas may share this database.
            Db::Postgres(_) => supervisor.follow(None),
            // Alone on its file: nothing is connected to a process that just started.
            Db::Sqlite(_) => leading::mark_disconnected(&db).await.map_err(|source| {
                StartupError::DatabaseSetup {
                    target: settings.database_target(),
                    source,
                }
            })?,
        }
        Ok(Application {
            settings,
            http,
            worker_port,
            worker_tls,
            supervisor,
            db,
            store,
            reconciler,
            live,
            single,
            lease_timing,
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

    /// The database (for tests).
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// Serve until `shutdown` is cancelled, then drain.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let settings = self.settings;
        let (supervisor, db) = (self.supervisor, self.db);
        // Held until this returns: the next supervisor on this SQLite file may start then.
        let _single = self.single;
        let identity = cluster::Identity::new(
            settings
                .advertise_http_addr
                .clone()
                .unwrap_or_else(|| local_addr(&self.http)),
            settings
                .advertise_worker_addr
                .clone()
                .unwrap_or_else(|| local_addr(&self.worker_port)),
        );
        let cluster = cluster::Cluster::new(identity.clone(), &db, self.lease_timing);
        // PostgreSQL: elected, and seen by the other supervisors; this process leads while it
        // holds the lease ([`leading`]). It resigns as soon as `shutdown` is cancelled.
        let elector = match &db {
            Db::Postgres(_) => Some(cluster::Elector::start(
                settings.database_url.expose(),
                identity,
                settings.elector(self.lease_timing),
                &shutdown,
            )?),
            Db::Sqlite(_) => None,
        };
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
            tls: self.worker_tls,
        };
        if port_settings.tls.is_some() {
            tracing::info!("the worker port accepts TLS only");
        } else {
            tracing::warn!("WORKER_TLS_CERT is not set: the worker link is plain TCP: stream configurations, secret keys included, cross the network unencrypted");
        }
        tracker.spawn(worker_port::serve(
            self.worker_port,
            port_settings,
            supervisor.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));

        let reparse = reparse::Reparse::new(
            db.clone(),
            self.store.clone(),
            settings.reparse_objects_per_second,
        );
        let tables = tables::Tables::new(db.clone(), self.store.clone());
        let duties = leading::Duties {
            supervisor: supervisor.clone(),
            db: db.clone(),
            reconciler: self.reconciler.clone(),
            reparse: reparse.clone(),
            tables: tables.clone(),
            assign_every: Duration::from_millis(settings.assign_interval_ms.max(100)),
            reconcile_every: Duration::from_millis(settings.reconcile_interval_ms.max(100)),
            tables_every: (settings.tables_interval_ms > 0).then(|| {
                (
                    Duration::from_millis(settings.tables_interval_ms),
                    settings.tables_days,
                )
            }),
        };
        match (&elector, &db) {
            (Some(elector), Db::Postgres(pool)) => {
                tracker.spawn(duties.follow_the_lease(
                    elector.leadership(),
                    pool.clone(),
                    shutdown.clone(),
                ));
                // The live channel reaches clients of every replica.
                if let Some(outgoing) = self.live.fan_out() {
                    let origin = cluster.identity().id;
                    tracker.spawn(cluster::fanout::send(
                        pool.clone(),
                        origin,
                        outgoing,
                        shutdown.clone(),
                    ));
                    tracker.spawn(cluster::fanout::receive(
                        pool.clone(),
                        origin,
                        self.live.clone(),
                        shutdown.clone(),
                    ));
                }
            }
            _ => {
                tracker.spawn(duties.lead_alone(shutdown.clone()));
            }
        }

        let (store_for_ingest, live_for_ingest) = (self.store.clone(), self.live.clone());
        let state = api::AppState {
            supervisor: supervisor.clone(),
            db: db.clone(),
            store: self.store,
            reconciler: self.reconciler,
            live: self.live,
            reparse,
            auth: api::Auth::new(api_token.as_ref()),
            metrics: metrics_handle(),
            tables,
            cluster,
            sweeps: std::sync::Arc::new(sweep::Sweeps::new()),
            ingest: ingest::Ingest::new(
                db.clone(),
                store_for_ingest,
                live_for_ingest,
                settings.ingest_limits(),
            ),
            bulk: api::BulkLimits {
                max_body_bytes: settings.max_body_bytes,
                max_bulk_bytes: settings.bulk_max_bytes,
                max_streams: settings.bulk_max_streams,
                timeout: std::time::Duration::from_millis(settings.bulk_timeout_ms),
            },
        };
        let app = api::router(state, settings.max_body_bytes);
        let http = self.http;
        tracing::info!(http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP API listening");
        let served = axum::serve(http, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some worker sessions did not end within 10 s");
        }
        if let Some(elector) = elector {
            elector.stop().await;
        }
        db.close().await;
        served.map_err(|source| StartupError::Bind {
            addr: settings.http_addr.clone(),
            what: "HTTP API",
            source,
        })
    }
}

/// `data-streams migrate-layout`: connect as the supervisor does (its schema migrations
/// included) and move every legacy-layout object ([`layout::migrate_layout`]).
pub async fn migrate_layout(
    settings: &Settings,
    objects_per_second: u32,
) -> Result<layout::MigrationReport, StartupError> {
    let db = connect_db(settings).await?;
    let store = settings.store.open().await?;
    layout::migrate_layout(&db, store, objects_per_second)
        .await
        .map_err(StartupError::Migration)
}

async fn connect_db(settings: &Settings) -> Result<Db, StartupError> {
    let target = settings.database_target();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(settings.database_connect_retry_secs);
    let mut wait = Duration::from_millis(250);
    loop {
        match Db::connect(settings.database_url.expose()).await {
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
                    common::error_chain(&source)
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

/// A bound listener's address as text.
fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .to_string()
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
