//! A supervisor in the test's own process: [`spawn_app`] runs one on free ports over a fresh
//! database (a SQLite file, or a fresh PostgreSQL database that is dropped afterwards), a folder
//! object store in a temporary folder, short heartbeats, a fast assignment sweep and the test API
//! token; with an in-process `iqair-sim` without limits ([`Sim`]), in-process workers on demand
//! ([`spawn_worker`]) and hand-driven ones ([`RawWorker`]). A [`TestApp`] is also the API client
//! of its supervisor ([`Api`], through `Deref`).
//!
//! What the supervisor logs goes to [`super::logged`].

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use data_streams::db::Db;
use data_streams::settings::Settings;
use data_streams::supervisor::Supervisor;
use data_streams::Application;
use protocol::handshake::{self, WorkerIdentity};
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::{Connection, ProtocolError};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    eventually, folder_store_url, init_tracing, iqair_stream, nearest_city, stream_objects,
    unlimited, Api, Backend, FreshDatabase, API_TOKEN, IQAIR_KEY, WORKER_TOKEN,
};

// ---------------------------------------------------------------------------------------------
// The IQAir simulator

/// `iqair-sim` in-process on a free port, accepting [`IQAIR_KEY`]; stops when dropped.
pub struct Sim {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Sim {
    /// The simulator with its limits off.
    pub async fn start() -> Sim {
        Sim::start_with(iqair_sim::Limits::off()).await
    }

    pub async fn start_with(limits: iqair_sim::Limits) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let addr = listener.local_addr().expect("sim address");
        let shutdown = CancellationToken::new();
        let config = iqair_sim::SimConfig {
            keys: vec![IQAIR_KEY.to_owned()],
            limits,
            ..iqair_sim::SimConfig::default()
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = iqair_sim::serve(listener, config, async move { stop.cancelled().await }).await;
        });
        Sim { addr, shutdown }
    }

    /// The nearest-city endpoint a stream points at.
    pub fn endpoint(&self) -> String {
        nearest_city(&self.addr.to_string())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// The app

/// What differs between test apps.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub backend: Backend,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub assign_interval_ms: u64,
    pub reconcile_interval_ms: u64,
    pub max_body_bytes: usize,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            backend: Backend::Sqlite,
            heartbeat_interval_ms: 200,
            heartbeat_timeout_ms: 1_500,
            assign_interval_ms: 200,
            // The reconciler is a safety net; tests that want it ask for it.
            reconcile_interval_ms: 600_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// A running supervisor process (in-process).
struct Running {
    http_addr: SocketAddr,
    worker_addr: SocketAddr,
    supervisor: Supervisor,
    db: Db,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), data_streams::StartupError>>,
}

pub struct TestApp {
    running: Option<Running>,
    /// Where workers dial (kept across restarts: a restart binds the same address).
    pub worker_addr: SocketAddr,
    /// The current HTTP API, sending the bearer token (also what a `TestApp` derefs to).
    pub api: Api,
    /// The current HTTP API, sending no token.
    pub anonymous: Api,
    pub database: FreshDatabase,
    pub store_url: String,
    pub store_root: PathBuf,
    pub options: AppOptions,
    pub sim: Sim,
    /// Holds the object store; removed last.
    pub dir: tempfile::TempDir,
}

/// A supervisor on SQLite with the default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// A supervisor on the given backend with the default options.
pub async fn spawn_app_on(backend: Backend) -> TestApp {
    spawn_app_with(AppOptions {
        backend,
        ..AppOptions::default()
    })
    .await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store_root = dir.path().join("objects");
    let store_url = folder_store_url(dir.path());
    let database = FreshDatabase::create(options.backend, "ds_api");
    let sim = Sim::start().await;
    // Both clients point at the API once the supervisor listens.
    let api = Api::new("127.0.0.1:0", Some(API_TOKEN));
    let mut app = TestApp {
        running: None,
        worker_addr: "127.0.0.1:0".parse().expect("an address"),
        anonymous: api.with_token(None),
        api,
        database,
        store_url,
        store_root,
        options,
        sim,
        dir,
    };
    app.start_supervisor().await;
    app
}

impl TestApp {
    /// The settings a (re)start uses: the same database, store and worker port.
    pub fn settings(&self) -> Settings {
        let o = &self.options;
        Settings::parse_from([
            "data-streams".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            format!("--worker-addr={}", self.worker_addr),
            format!("--worker-token={WORKER_TOKEN}"),
            format!("--api-token={API_TOKEN}"),
            format!("--database-url={}", self.database.url),
            "--database-connect-retry-secs=5".to_owned(),
            format!("--object-store-url={}", self.store_url),
            format!("--heartbeat-interval-ms={}", o.heartbeat_interval_ms),
            format!("--heartbeat-timeout-ms={}", o.heartbeat_timeout_ms),
            "--call-timeout-ms=5000".to_owned(),
            "--handshake-timeout-ms=2000".to_owned(),
            format!("--max-body-bytes={}", o.max_body_bytes),
            format!("--assign-interval-ms={}", o.assign_interval_ms),
            format!("--reconcile-interval-ms={}", o.reconcile_interval_ms),
        ])
    }

    /// Build and run the supervisor. After a [`TestApp::stop_supervisor`] this binds the same
    /// worker port again (retrying while the address is still held).
    pub async fn start_supervisor(&mut self) {
        assert!(self.running.is_none(), "the supervisor is already running");
        let deadline = Instant::now() + Duration::from_secs(10);
        let app = loop {
            match Application::build(self.settings()).await {
                Ok(app) => break app,
                Err(data_streams::StartupError::Bind { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the supervisor does not start: {e}"),
            }
        };
        let http_addr = app.http_addr();
        let worker_addr = app.worker_addr();
        let supervisor = app.supervisor();
        let db = app.db();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        self.worker_addr = worker_addr;
        self.api = Api::new(&http_addr.to_string(), Some(API_TOKEN));
        self.anonymous = self.api.with_token(None);
        self.running = Some(Running {
            http_addr,
            worker_addr,
            supervisor,
            db,
            shutdown,
            handle,
        });
    }

    /// Shut the supervisor down and wait until it has drained.
    pub async fn stop_supervisor(&mut self) {
        let running = self.running.take().expect("the supervisor is running");
        running.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(30), running.handle)
            .await
            .expect("the supervisor stops within 30 s")
            .expect("the supervisor task does not panic");
        ended.expect("the supervisor stops cleanly");
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.running.as_ref().expect("running").supervisor
    }

    pub fn db(&self) -> &Db {
        &self.running.as_ref().expect("running").db
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").http_addr
    }

    // --- Streams --------------------------------------------------------------------------------

    /// A valid stream at `interval_ms` against the simulator.
    pub fn stream_json(&self, interval_ms: u64) -> Value {
        // The test simulator runs with its limits off; no local budget either.
        unlimited(iqair_stream(&self.sim.endpoint(), IQAIR_KEY, interval_ms))
    }

    /// Create a running stream at `interval_ms`; returns its id.
    pub async fn create_running(&self, interval_ms: u64) -> String {
        let created = self.create_stream(&self.stream_json(interval_ms)).await;
        created["id"].as_str().expect("an id").to_owned()
    }

    /// Create a stopped stream; returns its id.
    pub async fn create_stopped(&self) -> String {
        let mut body = self.stream_json(60_000);
        body["start"] = json!(false);
        let created = self.create_stream(&body).await;
        created["id"].as_str().expect("an id").to_owned()
    }

    /// Wait until a stream has at least `n` results; returns how many.
    pub async fn wait_for_results(&self, stream_id: &str, n: usize) -> usize {
        self.results_at_least(stream_id, n, Duration::from_secs(20))
            .await
    }

    /// Wait until a stream is `running` on `worker_id`.
    pub async fn wait_running_on(&self, stream_id: &str, worker_id: &str) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("{stream_id} running on {worker_id}"),
            || async {
                let s = self.stream(stream_id).await;
                if s["status"] == "running" && s["worker_id"] == worker_id {
                    Ok(s)
                } else {
                    Err(s.to_string())
                }
            },
        )
        .await
    }

    /// Wait until `GET /workers` shows `worker_id` connected (or not).
    pub async fn wait_worker_connected(&self, worker_id: &str, connected: bool) {
        eventually(
            Duration::from_secs(20),
            &format!("worker {worker_id} connected={connected}"),
            || async {
                let workers = self.workers().await;
                match workers.get(worker_id) {
                    Some((c, _)) if *c == connected => Ok(()),
                    _ => Err(format!("{workers:?}")),
                }
            },
        )
        .await
    }

    // --- Workers --------------------------------------------------------------------------------

    /// An in-process worker dialling this app's worker port, writing to this app's store.
    pub async fn spawn_worker(&self, id: &str, capacity: u32) -> TestWorker {
        spawn_worker(&self.worker_addr.to_string(), &self.store_url, id, capacity).await
    }

    /// Object ids of a stream in this app's store.
    pub fn objects_of(&self, stream_id: &str) -> Vec<Uuid> {
        stream_objects(&self.store_root, stream_id)
    }
}

impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

/// A worker running in this process (`worker::run`) with its own shutdown token.
pub struct TestWorker {
    pub id: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), worker::StartupError>>>,
}

impl TestWorker {
    /// Shut the worker down and wait until it has exited.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the worker stops within 30 s")
            .expect("the worker task does not panic")
            .expect("the worker exits cleanly");
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An in-process worker dialling `supervisor_addr` and writing to `store_url`.
pub async fn spawn_worker(
    supervisor_addr: &str,
    store_url: &str,
    id: &str,
    capacity: u32,
) -> TestWorker {
    init_tracing();
    let settings = worker::settings::Settings::parse_from([
        "worker".to_owned(),
        format!("--supervisor-addr={supervisor_addr}"),
        format!("--token={WORKER_TOKEN}"),
        format!("--object-store-url={store_url}"),
        format!("--worker-id={id}"),
        format!("--capacity={capacity}"),
        "--reconnect-max-ms=300".to_owned(),
        "--shutdown-grace-ms=5000".to_owned(),
        "--http-connect-timeout-ms=2000".to_owned(),
    ]);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker::run(settings, shutdown.clone()));
    TestWorker {
        id: id.to_owned(),
        shutdown,
        handle: Some(handle),
    }
}

/// A hand-driven worker: the real handshake, then the link actor, and nothing else.
pub struct RawWorker {
    pub link: LinkHandle,
    pub incoming: mpsc::Receiver<Incoming>,
    pub task: JoinHandle<Result<(), ProtocolError>>,
}

impl RawWorker {
    pub async fn connect(addr: SocketAddr, worker_id: &str) -> RawWorker {
        let socket = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Connection::new(socket, protocol::codec::DEFAULT_MAX_FRAME);
        let welcome = handshake::connect(
            &mut conn,
            WORKER_TOKEN.as_bytes(),
            WorkerIdentity {
                worker_id: worker_id.to_owned(),
                // Nothing is ever assigned to it.
                capacity: 0,
                adapters: vec![],
                running: 0,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("the handshake succeeds");
        let (link, incoming, task) = link::spawn(
            conn,
            LinkConfig {
                heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms),
                heartbeat_timeout: Duration::from_millis(welcome.heartbeat_timeout_ms),
                ..LinkConfig::default()
            },
        );
        RawWorker {
            link,
            incoming,
            task,
        }
    }

    /// Wait for an acknowledgement covering `seq`.
    pub async fn wait_ack(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .unwrap_or_else(|_| panic!("no ack for {seq} within 20 s"))
                .expect("the link stays up");
            if let Incoming::Ack { seq: acked } = msg {
                if acked >= seq {
                    return;
                }
            }
        }
    }
}
