//! End to end with the three real binaries as child processes on free ports: iqair-sim,
//! data-streams and a worker. A stream at a 1 s interval produces results; the worker is killed
//! with SIGKILL and started again; results continue; nothing is duplicated and every object in
//! the store has a reference.
//!
//! The same scenario runs on the embedded defaults (SQLite + a folder) and on the production
//! backends (a fresh PostgreSQL database + an S3 server on loopback, `objects::test_server`).
//! At the end, DuckDB runs the README's query on the bucket: one row per fetch.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use objects::test_server::S3TestServer;
use objects::{ObjectStore, S3Store, StoreOptions};
use serde_json::Value;
use support::{
    duckdb_query, iqair_stream, nearest_city, object_files, readme_sql, sim_env, sqlite_url,
    start_sim, start_worker, start_worker_until, supervisor_env, worker_env, Env, Proc, Supervisor,
    TestDatabase, BUCKET, IQAIR_KEY,
};

/// Where the supervisor and the worker keep things.
struct Backends {
    database_url: String,
    object_store_url: String,
    /// The folder root when the object store is a folder (to walk it directly).
    folder_root: Option<PathBuf>,
    extra_env: Vec<(&'static str, String)>,
    /// The S3 server when the object store is S3; stops when dropped.
    s3: Option<S3TestServer>,
    /// The PostgreSQL database when the database is PostgreSQL; dropped with this.
    database: Option<TestDatabase>,
}

impl Backends {
    /// The object store the binaries use, opened from the test for checking.
    async fn store(&self) -> Arc<dyn ObjectStore> {
        let options = StoreOptions {
            create_buckets: false,
        };
        match &self.s3 {
            // `objects::open("s3://")` would read the test process's environment; the settings
            // are the same values the children get through theirs.
            Some(server) => Arc::new(
                S3Store::new(server.settings(), options)
                    .await
                    .expect("an S3 store for the test server"),
            ),
            None => objects::open(&self.object_store_url, options)
                .await
                .expect("the folder store the binaries used"),
        }
    }
}

/// SQLite and a folder store at `<dir>/data/objects`, where `scripts/run-dev.sh` keeps it
/// relative to the project root, so the README's queries run in `dir` as written.
fn embedded(dir: &Path) -> Backends {
    let root = dir.join("data/objects");
    Backends {
        database_url: sqlite_url(dir),
        object_store_url: format!("file://{}", root.display()),
        folder_root: Some(root),
        extra_env: vec![],
        s3: None,
        database: None,
    }
}

/// PostgreSQL (a fresh `ds_e2e_<uuid>` database) and S3 (a server on loopback, reached by the
/// children through `AWS_ENDPOINT_URL` and friends).
fn production(_dir: &Path) -> Backends {
    let database = TestDatabase::create("ds_e2e");
    let s3 = S3TestServer::start();
    Backends {
        database_url: database.url.clone(),
        object_store_url: "s3://".to_owned(),
        folder_root: None,
        extra_env: s3.env(),
        s3: Some(s3),
        database: Some(database),
    }
}

struct Stack {
    sim: Proc,
    sim_addr: String,
    supervisor: Supervisor,
    backends: Backends,
    /// The processes' logs and files; removed last, after the processes are gone.
    dir: tempfile::TempDir,
}

impl Stack {
    /// What a worker of this stack gets: the supervisor's worker port and the backends.
    fn worker_env(&self) -> Env {
        worker_env(&self.supervisor.workers, &self.backends.object_store_url)
            .extend(self.backends.extra_env.iter().cloned())
    }

    fn start_worker(&self, id: &str) -> Proc {
        start_worker(self.dir.path(), id, &self.worker_env())
    }

    async fn create_stream(&self, interval_ms: u64) -> String {
        let body = iqair_stream(&nearest_city(&self.sim_addr), IQAIR_KEY, interval_ms);
        let created = self.supervisor.api.create_stream(&body).await;
        assert_eq!(created["secret_key"], "***");
        created["id"].as_str().expect("an id").to_owned()
    }
}

fn stack(backends: impl FnOnce(&Path) -> Backends) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let backends = backends(dir.path());
    let (sim, sim_addr) = start_sim(dir.path(), &sim_env());
    let env = supervisor_env(&backends.database_url, &backends.object_store_url)
        .set("ASSIGN_INTERVAL_MS", "1000")
        .extend(backends.extra_env.iter().cloned());
    let supervisor = Supervisor::start(dir.path(), &env);
    Stack {
        sim,
        sim_addr,
        supervisor,
        backends,
        dir,
    }
}

/// The invariants after the run: references unique, every object in the bucket referenced (same
/// key, same size) and every reference's object there, byte-identical through the API. The bucket
/// is listed through the object store, whichever kind it is.
async fn check_invariants(stack: &Stack, stream_id: &str) {
    let api = &stack.supervisor.api;
    let refs = api.all_results(stream_id).await;
    let ids: HashSet<&str> = refs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let sizes: HashMap<&str, u64> = refs
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), r["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids.len(), refs.len(), "duplicate reference ids");
    assert_eq!(sizes.len(), refs.len(), "duplicate reference keys");

    let store = stack.backends.store().await;
    let listed = store.list(BUCKET, "").await.expect("list the bucket");
    let unreferenced: Vec<&str> = listed
        .iter()
        .filter(|object| !sizes.contains_key(object.key.as_str()))
        .map(|object| object.key.as_str())
        .collect();
    assert!(
        unreferenced.is_empty(),
        "objects without a reference: {unreferenced:?}"
    );
    for object in &listed {
        assert_eq!(
            sizes[object.key.as_str()],
            object.size,
            "the reference to {} records another size",
            object.key
        );
    }
    assert_eq!(listed.len(), refs.len(), "every reference has its object");
    if let Some(root) = &stack.backends.folder_root {
        // The folder store's listing hides nothing that is on disk.
        assert_eq!(
            object_files(root).len(),
            listed.len(),
            "object files on disk vs the store's listing"
        );
    }
    // Spot-check bytes: the API returns exactly the object at the documented key.
    for r in refs.iter().take(5) {
        let key = r["key"].as_str().unwrap();
        assert!(
            key.starts_with(&format!("IQAIR_DAILY/stream_id={stream_id}/dt=")),
            "key layout: {key}"
        );
        let stored = store.get(BUCKET, key).await.expect("the stored object");
        let meta = store
            .head(BUCKET, key)
            .await
            .expect("the stored object's metadata")
            .meta
            .expect("metadata written with the object");
        assert_eq!(meta.stream_id, stream_id);
        assert_eq!(meta.sha256, r["sha256"].as_str().unwrap(), "{key}");
        let (status, body) = api
            .get_bytes(&format!("/results/{}/raw", r["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            stored.to_vec(),
            "raw read-back differs from the stored object"
        );
    }
    for r in &refs {
        let (status, _) = api
            .get_bytes(&format!("/results/{}/raw", r["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "reference {} has no object", r["id"]);
    }
}

/// Both processes say at start which database and object store they use; check those are the
/// ones the test set up.
fn assert_backends_named_in_logs(stack: &Stack, worker: &Proc) {
    let supervisor = stack.supervisor.proc.log_text();
    let worker = worker.log_text();
    let database = data_streams::db::redact_url(&stack.backends.database_url);
    assert!(
        supervisor
            .lines()
            .any(|l| l.contains("database ready") && l.contains(&database)),
        "no \"database ready\" line naming {database}:\n{supervisor}"
    );
    let store = match &stack.backends.s3 {
        Some(server) => format!("s3 endpoint {} (path-style", server.endpoint),
        None => stack.backends.object_store_url.clone(),
    };
    for log in [&supervisor, &worker] {
        assert!(
            log.lines()
                .any(|l| l.contains("object store ready") && l.contains(&store)),
            "no \"object store ready\" line naming {store}:\n{log}"
        );
    }
}

async fn kill_restart_and_check(stack: Stack) {
    let api = &stack.supervisor.api;
    let mut worker = stack.start_worker("e2e-worker");
    assert_backends_named_in_logs(&stack, &worker);
    let created = Instant::now();
    let stream_id = stack.create_stream(1000).await;
    api.results_at_least(&stream_id, 3, Duration::from_secs(10))
        .await;
    assert!(created.elapsed() < Duration::from_secs(10));

    // SIGKILL, then the same worker identity comes back.
    worker.kill();
    let before = api.result_count(&stream_id).await;
    let _worker = stack.start_worker("e2e-worker");
    api.results_at_least(&stream_id, before + 3, Duration::from_secs(20))
        .await;
    let (_, stream) = api.get(&format!("/streams/{stream_id}")).await;
    assert_eq!(stream["status"], "running", "{stream}");
    assert_eq!(stream["worker_id"], "e2e-worker");

    // Stop, let in-flight runs land, let the reconciler index anything the kill orphaned.
    let pass = api
        .stop_and_settle(&stream_id, Duration::from_secs(15))
        .await;
    tracing_free_print(&format!("reconciler after stop: {pass}"));
    check_invariants(&stack, &stream_id).await;

    let (_, measurements) = api.get(&format!("/streams/{stream_id}/measurements")).await;
    let items = measurements["items"].as_array().expect("items");
    assert!(!items.is_empty(), "a reading is stored");
    assert!(
        items.len() <= 2,
        "readings are deduplicated per pollution hour: {}",
        items.len()
    );
    check_the_readme_query(&stack, &stream_id, items).await;
    drop(stack.sim);
}

/// The README's raw-response query, run as written by DuckDB in the stack's folder (where
/// `data/objects` is the folder store; an S3 bucket is downloaded there first, key for key):
/// one row per reference, `stream_id` and `dt` from the partitions, and each row's AQI the one
/// the API's `/measurements` has for its pollution hour.
async fn check_the_readme_query(stack: &Stack, stream_id: &str, readings: &[Value]) {
    let refs = stack.supervisor.api.all_results(stream_id).await;
    if stack.backends.s3.is_some() {
        let store = stack.backends.store().await;
        let root = stack.dir.path().join("data/objects").join(BUCKET);
        for object in store.list(BUCKET, "").await.expect("list the bucket") {
            let path = root.join(&object.key);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
            let bytes = store.get(BUCKET, &object.key).await.expect("get");
            std::fs::write(&path, bytes).expect("write the downloaded object");
        }
    }
    let rows = duckdb_query(stack.dir.path(), &[], &readme_sql("read_json("));
    assert_eq!(
        rows.len(),
        refs.len(),
        "one row per fetch ({} references): {rows:?}",
        refs.len()
    );
    let days: HashSet<String> = refs
        .iter()
        .map(|r| r["fetched_at"].as_str().expect("fetched_at")[..10].to_owned())
        .collect();
    let aqi_by_ts: HashMap<i64, f64> = readings
        .iter()
        .map(|m| {
            let ts = chrono::DateTime::parse_from_rfc3339(m["ts"].as_str().expect("ts"))
                .expect("an RFC 3339 ts")
                .timestamp();
            (ts, m["aqius"].as_f64().expect("aqius"))
        })
        .collect();
    for row in &rows {
        assert_eq!(row["stream_id"], stream_id, "{row}");
        let dt = row["dt"].as_str().expect("dt");
        assert!(days.contains(dt), "dt {dt} is a day of a fetch: {days:?}");
        let ts = chrono::NaiveDateTime::parse_from_str(
            row["ts"].as_str().expect("ts"),
            "%Y-%m-%d %H:%M:%S",
        )
        .expect("a DuckDB timestamp")
        .and_utc()
        .timestamp();
        assert_eq!(
            aqi_by_ts.get(&ts).copied(),
            row["aqius"].as_f64(),
            "the raw AQI of {row} vs /measurements"
        );
    }
}

fn tracing_free_print(line: &str) {
    eprintln!("{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_defaults_survive_a_worker_sigkill() {
    let stack = stack(embedded);
    kill_restart_and_check(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_s3_survive_a_worker_sigkill() {
    let stack = stack(production);
    assert!(stack.backends.database.is_some() && stack.backends.s3.is_some());
    kill_restart_and_check(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_callers_without_the_token_and_workers_with_a_wrong_one() {
    let stack = stack(embedded);
    let api = &stack.supervisor.api;
    let open = api.with_token(None);
    let (status, body) = open.get("/streams").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let wrong = api.with_token(Some("nope"));
    assert_eq!(wrong.get("/streams").await.0, 401);
    assert_eq!(open.get("/healthz").await.0, 200);

    // A worker with the wrong token is rejected with a reason, and the supervisor carries on.
    let env = stack
        .worker_env()
        .set("DATA_STREAMS_WORKER_TOKEN", "not-the-token")
        .unset("WORKER_RECONNECT_MAX_MS");
    let (intruder, line) =
        start_worker_until(stack.dir.path(), "intruder", &env, "rejected this worker");
    assert!(line.contains("authentication failed"), "{line}");
    drop(intruder);
    let (status, workers) = api.get("/workers").await;
    assert_eq!(status, 200);
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["id"] != "intruder"),
        "{workers}"
    );
    assert!(stack
        .supervisor
        .proc
        .log_text()
        .contains("authentication failed"));
    // And a good worker still gets in.
    let _good = stack.start_worker("good-worker");
}
