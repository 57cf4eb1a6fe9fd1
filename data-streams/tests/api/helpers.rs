//! `spawn_app()`: a supervisor on free ports over a fresh database (a SQLite file in a temporary
//! folder, or a fresh PostgreSQL database that is dropped afterwards), a folder object store in
//! the same temporary folder, short heartbeats, a fast assignment sweep and a known API token;
//! an in-process `iqair-sim` without limits; in-process workers on demand; and a reqwest client
//! carrying the bearer token. Shared by the `api` and `worker_port` test binaries.
//!
//! Logs go to an in-memory buffer (so tests can assert what the supervisor logged) and to stderr
//! only when `TEST_LOG` is set.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use data_streams::db::Db;
use data_streams::settings::Settings;
use data_streams::supervisor::Supervisor;
use data_streams::Application;
use protocol::handshake::{self, WorkerIdentity};
use protocol::link::{self, Incoming, LinkConfig, LinkHandle};
use protocol::{Connection, Measurement, ProtocolError, ResultRecord};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use sqlx::{Connection as _, Executor, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const API_TOKEN: &str = "api-test-token";
pub const WORKER_TOKEN: &str = "worker-test-token";
pub const IQAIR_KEY: &str = "iqair-test-key";
pub const BUCKET: &str = "results";

// ---------------------------------------------------------------------------------------------
// Logs

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log_buffer()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the process-wide subscriber once: everything at `info` (or `RUST_LOG`, with the
/// supervisor's lines at `info` at least) goes to the buffer read by [`logged`], and to stderr
/// when `TEST_LOG` is set.
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // The supervisor's own lines stay captured whatever RUST_LOG says: tests read them.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
            .add_directive("data_streams=info".parse().expect("a valid directive"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Every log line written so far that contains all of `needles`.
pub fn logged(needles: &[&str]) -> Vec<String> {
    let text = {
        let buf = log_buffer().lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    };
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Polling

/// Poll `check` every 100 ms until it returns `Ok`, or panic after `within` with the last `Err`
/// (what was seen instead).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `sample` until it returns the same value twice `window` apart (something stopped
/// changing), or panic after `within`. Returns the settled value.
pub async fn settled<T, F, Fut>(within: Duration, window: Duration, what: &str, mut sample: F) -> T
where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    let mut last = sample().await;
    loop {
        tokio::time::sleep(window).await;
        let now = sample().await;
        if now == last {
            return now;
        }
        if Instant::now() >= deadline {
            panic!("{what} did not settle within {within:?}; last seen {last:?} then {now:?}");
        }
        last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// The IQAir simulator

/// `iqair-sim` in-process on a free port, limits off, accepting [`IQAIR_KEY`].
pub struct Sim {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Sim {
    pub async fn start() -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let addr = listener.local_addr().expect("sim address");
        let shutdown = CancellationToken::new();
        let config = iqair_sim::SimConfig {
            keys: vec![IQAIR_KEY.to_owned()],
            limits: iqair_sim::Limits::off(),
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
        format!("http://{}/v2/nearest_city", self.addr)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The PostgreSQL server tests create databases on.
pub fn postgres_server_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let (scheme, rest) = base.split_once("://").expect("a URL with a scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

/// A fresh database `ds_api_<uuid>`, dropped (connections forced out) when this is dropped.
pub struct PgDatabase {
    server: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let server = postgres_server_url();
        let mut admin =
            match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&server))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => panic!(
                    "PostgreSQL at {} is not reachable ({e}); set TEST_POSTGRES_URL",
                    data_streams::db::redact_url(&server)
                ),
                Err(_) => panic!("PostgreSQL did not answer within 10 s"),
            };
        let name = format!("ds_api_{}", Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        PgDatabase {
            url: with_database(&server, &name),
            server,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on a future: use a thread
        // with its own runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !std::thread::panicking() {
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("DROP DATABASE {}: {e}", self.name),
                Err(_) => panic!("DROP DATABASE {}: the thread panicked", self.name),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The app

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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
    /// `http://127.0.0.1:<port>` of the current HTTP API.
    pub address: String,
    /// Sends the bearer token.
    pub api: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    pub database_url: String,
    pub store_url: String,
    pub store_root: PathBuf,
    pub options: AppOptions,
    pub sim: Sim,
    _pg: Option<PgDatabase>,
    /// Holds the SQLite file and the object store; removed last.
    pub dir: tempfile::TempDir,
}

/// A supervisor on SQLite with the default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// A supervisor on a fresh PostgreSQL database.
pub async fn spawn_app_postgres() -> TestApp {
    spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        ..AppOptions::default()
    })
    .await
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
    let store_url = format!("file://{}", store_root.display());
    let (database_url, pg) = match options.backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("data-streams.db").display()),
            None,
        ),
        Backend::Postgres => {
            let pg = PgDatabase::create().await;
            (pg.url.clone(), Some(pg))
        }
    };
    let sim = Sim::start().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {API_TOKEN}")).expect("a valid header"),
    );
    let api = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let anonymous = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let mut app = TestApp {
        running: None,
        worker_addr: "127.0.0.1:0".parse().expect("an address"),
        address: String::new(),
        api,
        anonymous,
        database_url,
        store_url,
        store_root,
        options,
        sim,
        _pg: pg,
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
            format!("--database-url={}", self.database_url),
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
        self.address = format!("http://{http_addr}");
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    // --- HTTP ---------------------------------------------------------------------------------

    async fn json_of(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(format!("<not JSON> {}", String::from_utf8_lossy(&bytes)))
            })
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::json_of(self.api.get(self.url(path)).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::json_of(
            self.api
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// A POST without a body (start/stop).
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        Self::json_of(self.api.post(self.url(path)).send().await.expect("POST")).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::json_of(
            self.api
                .patch(self.url(path))
                .json(body)
                .send()
                .await
                .expect("PATCH"),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::json_of(
            self.api
                .delete(self.url(path))
                .send()
                .await
                .expect("DELETE"),
        )
        .await
    }

    /// A request with an arbitrary body and content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self.api.request(method, self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        Self::json_of(req.send().await.expect("request")).await
    }

    // --- Streams --------------------------------------------------------------------------------

    /// A valid stream at `interval_ms` against the simulator.
    pub fn stream_json(&self, interval_ms: u64) -> Value {
        json!({
            "adapter": "IQAIR_DAILY",
            "endpoint": self.sim.endpoint(),
            "secret_key": IQAIR_KEY,
            "interval": interval_ms,
            "bucket_name": BUCKET,
            "params": {"lat": 52.52, "lon": 13.40},
            // The test simulator runs with its limits off; no local budget either.
            "rate_limit": {"per_minute": 0, "per_day": 0, "per_month": 0},
        })
    }

    /// Create a stream; returns its view.
    pub async fn create_stream(&self, body: &Value) -> Value {
        let (status, created) = self.post("/streams", body).await;
        assert_eq!(status, 201, "create: {created}");
        created
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

    pub async fn stream(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/streams/{id}")).await;
        assert_eq!(status, 200, "GET /streams/{id}: {body}");
        body
    }

    /// Every result reference of a stream, following the cursor, newest first.
    pub async fn all_results(&self, stream_id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut path = format!("/streams/{stream_id}/results?limit=1000");
        loop {
            let (status, page) = self.get(&path).await;
            assert_eq!(status, 200, "{page}");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next"].as_str() {
                Some(next) => {
                    path = format!("/streams/{stream_id}/results?limit=1000&after={next}")
                }
                None => return items,
            }
        }
    }

    pub async fn result_count(&self, stream_id: &str) -> usize {
        self.all_results(stream_id).await.len()
    }

    /// Wait until a stream has at least `n` results; returns how many.
    pub async fn wait_for_results(&self, stream_id: &str, n: usize) -> usize {
        eventually(
            Duration::from_secs(20),
            &format!("{n} results of {stream_id}"),
            || async {
                let count = self.result_count(stream_id).await;
                if count >= n {
                    Ok(count)
                } else {
                    Err(format!("{count} results"))
                }
            },
        )
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

    /// `GET /workers` as (id → (connected, streams)).
    pub async fn workers(&self) -> std::collections::BTreeMap<String, (bool, i64)> {
        let (status, body) = self.get("/workers").await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .expect("a list")
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().expect("id").to_owned(),
                    (
                        w["connected"].as_bool().expect("connected"),
                        w["streams"].as_i64().expect("streams"),
                    ),
                )
            })
            .collect()
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

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A UUIDv7 for an epoch millisecond.
pub fn v7(ms: i64) -> Uuid {
    let ms = u64::try_from(ms).expect("after 1970");
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        u32::try_from(ms % 1000).expect("below 1000") * 1_000_000,
    ))
}

/// ISO 8601 as IQAir sends it.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A reading of the hour `pollution_ms`.
pub fn reading(pollution_ms: i64, aqius: f64) -> Measurement {
    Measurement {
        city: Some("Berlin".to_owned()),
        state: Some("Berlin".to_owned()),
        country: Some("Germany".to_owned()),
        lat: Some(52.52),
        lon: Some(13.405),
        pollution_ts: Some(iso(pollution_ms)),
        aqius: Some(aqius),
        mainus: Some("p2".to_owned()),
        aqicn: Some(aqius / 2.0),
        maincn: Some("p1".to_owned()),
        weather_ts: Some(iso(pollution_ms + 1_800_000)),
        tp: Some(7.5),
        pr: Some(1013.0),
        hu: Some(81.0),
        ws: Some(3.6),
        wd: Some(250.0),
        ic: Some("04n".to_owned()),
        heat_index: Some(6.0),
    }
}

/// A reported result with id `result_id` fetched at `fetched_ms`.
pub fn result_record(
    result_id: Uuid,
    stream_id: Uuid,
    fetched_ms: i64,
    measurement: Option<Measurement>,
) -> ResultRecord {
    let date = chrono::DateTime::from_timestamp_millis(fetched_ms)
        .expect("in range")
        .date_naive();
    ResultRecord {
        result_id,
        stream_id,
        adapter: "IQAIR_DAILY".to_owned(),
        bucket: BUCKET.to_owned(),
        key: objects::ObjectKey::new("IQAIR_DAILY", stream_id, date, result_id).to_string(),
        fetched_at_ms: fetched_ms,
        scheduled_at_ms: fetched_ms - 250,
        started_at_ms: fetched_ms - 240,
        size: 1234,
        sha256: "ab".repeat(32),
        measurement: measurement.map(Box::new),
    }
}

pub fn parse_uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().expect("a string id")).expect("a UUID")
}

/// Ids of every object file of `stream_id` under a folder store root (sidecars and temporary
/// files excluded).
pub fn stream_objects(root: &Path, stream_id: &str) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if !name.starts_with('.')
                && path.to_string_lossy().contains(stream_id)
                && name.ends_with(".json")
            {
                if let Ok(id) = Uuid::parse_str(name.trim_end_matches(".json")) {
                    out.push(id);
                }
            }
        }
    }
    out.sort();
    out
}

/// Ids in `values[*]["id"]`.
pub fn ids_of(values: &[Value]) -> Vec<Uuid> {
    values.iter().map(|v| parse_uuid(&v["id"])).collect()
}

pub fn unique<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> bool {
    items.iter().cloned().collect::<HashSet<_>>().len() == items.len()
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can go silent

/// Forwards TCP to `upstream` until frozen: then existing connections stop carrying bytes in
/// either direction (without closing — a peer that went silent) and new connections are
/// dropped at once, until thawed.
pub struct Proxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    shutdown: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, _) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let tx = frozen.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                if *tx.borrow() {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, tx.subscribe(), stop.clone()));
                tokio::spawn(pump(sr, cw, tx.subscribe(), stop.clone()));
            }
        });
        Proxy {
            addr,
            frozen,
            shutdown,
        }
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while *frozen.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = frozen.changed() => if changed.is_err() { return },
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = frozen.changed() => continue,
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
