//! End to end with the three real binaries as child processes on free ports: iqair-sim,
//! data-streams and a worker. A stream at a 1 s interval produces results; the worker is killed
//! with SIGKILL and started again; results continue; nothing is duplicated and every object in
//! the store has a reference.
//!
//! The same scenario runs on the embedded defaults (SQLite + a folder) and on the production
//! backends (a fresh PostgreSQL database + an S3 server on loopback, `objects::test_server`).

mod support;
mod test_db;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use objects::test_server::S3TestServer;
use objects::{ObjectStore, S3Store, StoreOptions};
use serde_json::{json, Value};
use support::{addr_after, bin, eventually, object_files, Api, Proc};
use test_db::TestDatabase;

const WORKER_TOKEN: &str = "e2e-worker-token";
const API_TOKEN: &str = "e2e-api-token";
const IQAIR_KEY: &str = "e2e-iqair-key";

/// The bucket every stream of these tests writes to.
const BUCKET: &str = "results";

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

fn embedded(dir: &Path) -> Backends {
    let objects = dir.join("objects");
    Backends {
        database_url: format!("sqlite://{}", dir.join("ds.db").display()),
        object_store_url: format!("file://{}", objects.display()),
        folder_root: Some(objects),
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
    dir: tempfile::TempDir,
    sim: Proc,
    sim_addr: String,
    supervisor: Proc,
    api: Api,
    worker_addr: String,
    backends: Backends,
}

fn start_sim(logs: &Path) -> (Proc, String) {
    let (sim, line) = Proc::start(
        "iqair-sim",
        &bin("iqair-sim"),
        &[
            ("IQAIR_SIM_ADDR", "127.0.0.1:0".into()),
            ("IQAIR_SIM_KEYS", IQAIR_KEY.into()),
            ("IQAIR_SIM_LIMITS", "off".into()),
        ],
        "listening on",
        logs,
    );
    let addr = addr_after(&line, "listening on");
    (sim, addr)
}

fn start_supervisor(logs: &Path, backends: &Backends) -> (Proc, String, String) {
    let mut env = vec![
        ("DATA_STREAMS_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("DATA_STREAMS_API_TOKEN", API_TOKEN.to_owned()),
        ("DATABASE_URL", backends.database_url.clone()),
        ("OBJECT_STORE_URL", backends.object_store_url.clone()),
        ("HEARTBEAT_INTERVAL_MS", "500".to_owned()),
        ("HEARTBEAT_TIMEOUT_MS", "3000".to_owned()),
        ("ASSIGN_INTERVAL_MS", "1000".to_owned()),
        ("RECONCILE_INTERVAL_MS", "1000".to_owned()),
    ];
    env.extend(backends.extra_env.iter().cloned());
    let (proc, line) = Proc::start(
        "data-streams",
        &bin("data-streams"),
        &env,
        "data-streams listening",
        logs,
    );
    let http = addr_after(&line, "listening:");
    let workers = addr_after(&line, "(API),");
    (proc, http, workers)
}

fn start_worker(stack: &Stack, id: &str) -> Proc {
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", stack.worker_addr.clone()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("OBJECT_STORE_URL", stack.backends.object_store_url.clone()),
        ("WORKER_ID", id.to_owned()),
        ("WORKER_RECONNECT_MAX_MS", "500".to_owned()),
    ];
    env.extend(stack.backends.extra_env.iter().cloned());
    Proc::start(
        id,
        &bin("worker"),
        &env,
        "connected to the supervisor",
        stack.dir.path(),
    )
    .0
}

fn stack(backends: impl FnOnce(&Path) -> Backends) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let backends = backends(dir.path());
    let (sim, sim_addr) = start_sim(dir.path());
    let (supervisor, http, worker_addr) = start_supervisor(dir.path(), &backends);
    Stack {
        api: Api::new(&http, Some(API_TOKEN)),
        dir,
        sim,
        sim_addr,
        supervisor,
        worker_addr,
        backends,
    }
}

async fn create_stream(stack: &Stack, interval_ms: u64) -> String {
    let (status, body) = stack
        .api
        .post(
            "/streams",
            &json!({
                "adapter": "IQAIR_DAILY",
                "endpoint": format!("http://{}/v2/nearest_city", stack.sim_addr),
                "secret_key": IQAIR_KEY,
                "interval": interval_ms,
                "bucket_name": BUCKET,
                "params": {"lat": 52.52, "lon": 13.40},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["secret_key"], "***");
    body["id"].as_str().expect("an id").to_owned()
}

async fn count_at_least(api: &Api, stream_id: &str, n: usize, within: Duration) -> usize {
    eventually(within, &format!("{n} results"), || async {
        let count = api.result_count(stream_id).await;
        (count >= n).then_some(count)
    })
    .await
}

/// The invariants after the run: references unique, every object in the bucket referenced (same
/// key, same size) and every reference's object there, byte-identical through the API. The bucket
/// is listed through the object store, whichever kind it is.
async fn check_invariants(stack: &Stack, stream_id: &str) {
    let refs = stack.api.all_results(stream_id).await;
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
            key.starts_with(&format!("IQAIR_DAILY/{stream_id}/dt=")),
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
        let (status, body) = stack
            .api
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
        let (status, _) = stack
            .api
            .get_bytes(&format!("/results/{}/raw", r["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "reference {} has no object", r["id"]);
    }
}

async fn wait_for_reconciler_pass_after(api: &Api, since: chrono::DateTime<chrono::Utc>) -> Value {
    eventually(Duration::from_secs(15), "a reconciler pass", || async {
        let (_, body) = api.get("/reconciler").await;
        let at = body["last_run_at"].as_str()?;
        let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
        (at > since).then_some(body)
    })
    .await
}

/// Both processes say at start which database and object store they use; check those are the
/// ones the test set up.
fn assert_backends_named_in_logs(stack: &Stack, worker: &Proc) {
    let supervisor = stack.supervisor.log_text();
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
    let mut worker = start_worker(&stack, "e2e-worker");
    assert_backends_named_in_logs(&stack, &worker);
    let created = Instant::now();
    let stream_id = create_stream(&stack, 1000).await;
    count_at_least(&stack.api, &stream_id, 3, Duration::from_secs(10)).await;
    assert!(created.elapsed() < Duration::from_secs(10));

    // SIGKILL, then the same worker identity comes back.
    worker.kill();
    let before = stack.api.result_count(&stream_id).await;
    let _worker = start_worker(&stack, "e2e-worker");
    count_at_least(&stack.api, &stream_id, before + 3, Duration::from_secs(20)).await;
    let (_, stream) = stack.api.get(&format!("/streams/{stream_id}")).await;
    assert_eq!(stream["status"], "running", "{stream}");
    assert_eq!(stream["worker_id"], "e2e-worker");

    // Stop, let in-flight runs land, let the reconciler index anything the kill orphaned.
    let (status, body) = stack
        .api
        .post(&format!("/streams/{stream_id}/stop"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_stop = chrono::Utc::now();
    let pass = wait_for_reconciler_pass_after(&stack.api, after_stop).await;
    tracing_free_print(&format!("reconciler after stop: {pass}"));
    check_invariants(&stack, &stream_id).await;

    let (_, measurements) = stack
        .api
        .get(&format!("/streams/{stream_id}/measurements"))
        .await;
    let items = measurements["items"].as_array().expect("items");
    assert!(!items.is_empty(), "a reading is stored");
    assert!(
        items.len() <= 2,
        "readings are deduplicated per pollution hour: {}",
        items.len()
    );
    drop(stack.sim);
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
    let open = Api::new(stack.api.base.trim_start_matches("http://"), None);
    let (status, body) = open.get("/streams").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let wrong = Api::new(stack.api.base.trim_start_matches("http://"), Some("nope"));
    assert_eq!(wrong.get("/streams").await.0, 401);
    assert_eq!(open.get("/healthz").await.0, 200);

    // A worker with the wrong token is rejected with a reason, and the supervisor carries on.
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", stack.worker_addr.clone()),
        ("DATA_STREAMS_WORKER_TOKEN", "not-the-token".to_owned()),
        ("OBJECT_STORE_URL", stack.backends.object_store_url.clone()),
        ("WORKER_ID", "intruder".to_owned()),
    ];
    env.extend(stack.backends.extra_env.iter().cloned());
    let (intruder, line) = Proc::start(
        "intruder",
        &bin("worker"),
        &env,
        "rejected this worker",
        stack.dir.path(),
    );
    assert!(line.contains("authentication failed"), "{line}");
    drop(intruder);
    let (status, workers) = stack.api.get("/workers").await;
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
        .log_text()
        .contains("authentication failed"));
    // And a good worker still gets in.
    let _good = start_worker(&stack, "good-worker");
}
