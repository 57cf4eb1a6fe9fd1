//! Outages with the real binaries as child processes: the database, the object store and the
//! supervisor each go away while a stream runs, and come back. Nothing fetched is lost and nothing
//! is indexed twice: `GET /audit` finds no orphans, no dangling and no duplicate references.
//!
//! - PostgreSQL (a fresh database) behind a TCP proxy that can be cut: events are not
//!   acknowledged while it is away (the worker's outbox keeps them), `/readyz` is 503, and after
//!   it is back every object has its reference, put there by the replay (status `ok`), not by the
//!   reconciler.
//! - The S3 test server stopped: runs fail with class `storage`, no partial object appears, and
//!   when it is back on the same port and folder the results resume.
//! - The supervisor SIGKILLed: the worker keeps storing objects; restarted on the same ports, it
//!   gets every object referenced exactly once.

mod support;
mod test_db;

use std::path::Path;
use std::time::{Duration, Instant};

use objects::test_server::S3TestServer;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use support::{addr_after, bin, eventually, object_files, Api, Proc, TcpProxy};
use test_db::TestDatabase;

const WORKER_TOKEN: &str = "outage-worker-token";
const API_TOKEN: &str = "outage-api-token";
const IQAIR_KEY: &str = "outage-iqair-key";
const BUCKET: &str = "results";

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

/// Where a supervisor listens (port 0 the first time; the same ports on a restart).
struct Addrs {
    http: String,
    workers: String,
}

fn start_supervisor(
    logs: &Path,
    addrs: &Addrs,
    database_url: &str,
    store: &[(&'static str, String)],
) -> (Proc, Api, Addrs) {
    let mut env = vec![
        ("DATA_STREAMS_HTTP_ADDR", addrs.http.clone()),
        ("DATA_STREAMS_WORKER_ADDR", addrs.workers.clone()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("DATA_STREAMS_API_TOKEN", API_TOKEN.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("HEARTBEAT_INTERVAL_MS", "500".to_owned()),
        ("HEARTBEAT_TIMEOUT_MS", "3000".to_owned()),
        ("ASSIGN_INTERVAL_MS", "1000".to_owned()),
        ("RECONCILE_INTERVAL_MS", "1000".to_owned()),
    ];
    env.extend(store.iter().cloned());
    let (proc, line) = Proc::start(
        "data-streams",
        &bin("data-streams"),
        &env,
        "data-streams listening",
        logs,
    );
    let http = addr_after(&line, "listening:");
    let workers = addr_after(&line, "(API),");
    (
        proc,
        Api::new(&http, Some(API_TOKEN)),
        Addrs { http, workers },
    )
}

fn free_addrs() -> Addrs {
    Addrs {
        http: "127.0.0.1:0".into(),
        workers: "127.0.0.1:0".into(),
    }
}

fn start_worker(
    logs: &Path,
    worker_addr: &str,
    id: &str,
    store: &[(&'static str, String)],
) -> Proc {
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", worker_addr.to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("WORKER_ID", id.to_owned()),
        ("WORKER_RECONNECT_MAX_MS", "500".to_owned()),
    ];
    env.extend(store.iter().cloned());
    Proc::start(
        id,
        &bin("worker"),
        &env,
        "connected to the supervisor",
        logs,
    )
    .0
}

fn folder_store(dir: &Path) -> Vec<(&'static str, String)> {
    vec![(
        "OBJECT_STORE_URL",
        format!("file://{}", dir.join("objects").display()),
    )]
}

async fn create_stream(api: &Api, sim_addr: &str, interval_ms: u64) -> String {
    let (status, body) = api
        .post(
            "/streams",
            &json!({
                "adapter": "IQAIR_DAILY",
                "endpoint": format!("http://{sim_addr}/v2/nearest_city"),
                "secret_key": IQAIR_KEY,
                "interval": interval_ms,
                "bucket_name": BUCKET,
                "params": {"lat": 52.52, "lon": 13.40},
                // The simulator's limits are off; no local budget either.
                "rate_limit": {"per_minute": 0, "per_day": 0, "per_month": 0},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("an id").to_owned()
}

async fn count_at_least(api: &Api, stream_id: &str, n: usize, within: Duration) -> usize {
    eventually(within, &format!("{n} results"), || async {
        let count = api.result_count(stream_id).await;
        (count >= n).then_some(count)
    })
    .await
}

/// Stop the stream, let runs in flight land, and wait for a reconciler pass after that.
async fn stop_and_settle(api: &Api, stream_id: &str) {
    let (status, body) = api
        .post(&format!("/streams/{stream_id}/stop"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let since = chrono::Utc::now();
    eventually(Duration::from_secs(20), "a reconciler pass", || async {
        let (_, body) = api.get("/reconciler").await;
        let at = chrono::DateTime::parse_from_rfc3339(body["last_run_at"].as_str()?).ok()?;
        (at > since).then_some(())
    })
    .await;
}

/// `GET /audit` until the in-flight settles into a clean state (or panic after `within`).
async fn clean_audit(api: &Api, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, audit) = api.get("/audit").await;
        assert_eq!(status, 200, "{audit}");
        if audit["orphans"] == 0
            && audit["dangling"] == 0
            && audit["duplicates"] == 0
            && audit["unlisted"] == 0
            && audit["objects"] == audit["references"]
        {
            return audit;
        }
        assert!(
            Instant::now() < deadline,
            "the audit stays unclean: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// References in the database, read directly (not through the proxy).
async fn db_reference_count(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect directly");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM results")
        .fetch_one(&mut conn)
        .await
        .expect("count the references");
    let _ = conn.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_keeps_events_in_the_outbox_and_the_replay_indexes_everything_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let database = TestDatabase::create("ds_outage");
    let proxy = TcpProxy::start(database.server_host_port());
    let via_proxy = database.url_via(&proxy.address.to_string());
    let store = folder_store(dir.path());
    let (_sim, sim_addr) = start_sim(logs);
    let (supervisor, api, addrs) = start_supervisor(logs, &free_addrs(), &via_proxy, &store);
    let worker = start_worker(logs, &addrs.workers, "outage-worker", &store);
    let stream_id = create_stream(&api, &sim_addr, 1000).await;
    count_at_least(&api, &stream_id, 3, Duration::from_secs(15)).await;

    proxy.cut();
    let open = Api::new(&addrs.http, None);
    let (status, body) = open.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["database"], "ok", "{body}");
    assert_eq!(body["object_store"], "ok", "{body}");

    // While it is away: the worker keeps storing objects, the references stop growing.
    let root = dir.path().join("objects");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refs_before = db_reference_count(&database.url).await;
    let objects_before = object_files(&root).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refs_during = db_reference_count(&database.url).await;
    let objects_during = object_files(&root).len();
    assert_eq!(
        refs_during, refs_before,
        "references grew while the supervisor could not reach the database"
    );
    assert!(
        objects_during >= objects_before + 3,
        "the worker stopped storing objects: {objects_before} -> {objects_during}"
    );
    assert!(
        (refs_during as usize) < objects_during,
        "some objects wait for their references: {refs_during} references, {objects_during} objects"
    );

    proxy.restore();
    eventually(Duration::from_secs(30), "ready again", || async {
        (open.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // The events kept in the outbox land: references catch up with the objects.
    eventually(
        Duration::from_secs(30),
        "references catching up",
        || async {
            let (_, audit) = api.get("/audit").await;
            let refs = audit["references"].as_u64()?;
            (refs >= objects_during as u64).then_some(())
        },
    )
    .await;
    let before_a_pass = clean_audit(&api, Duration::from_secs(20)).await;
    eprintln!("audit after the database came back: {before_a_pass}");

    stop_and_settle(&api, &stream_id).await;
    let audit = clean_audit(&api, Duration::from_secs(5)).await;
    eprintln!("audit after a reconciler pass: {audit}");
    assert!(audit["objects"].as_u64().unwrap() >= objects_during as u64);
    // Every reference came from the worker's own report (replayed), none from the reconciler.
    let refs = api.all_results(&stream_id).await;
    let reconciled: Vec<&Value> = refs.iter().filter(|r| r["status"] != "ok").collect();
    assert!(
        reconciled.is_empty(),
        "references the reconciler had to add: {reconciled:?}"
    );
    assert!(worker.child.id() > 0);
    assert!(!supervisor.log_text().contains("panicked"));
    drop(worker);
    drop(supervisor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_down_fails_runs_as_storage_and_results_resume_when_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let s3_root = dir.path().join("s3");
    let secret = "outage-s3-secret";
    let server = S3TestServer::start_on("127.0.0.1:0", Some(&s3_root), "outage-access", secret)
        .expect("an S3 test server");
    let s3_addr = server.endpoint.trim_start_matches("http://").to_owned();
    let mut store = vec![("OBJECT_STORE_URL", "s3://".to_owned())];
    store.extend(server.env());
    let db = format!("sqlite://{}", dir.path().join("ds.db").display());
    let (_sim, sim_addr) = start_sim(logs);
    let (supervisor, api, addrs) = start_supervisor(logs, &free_addrs(), &db, &store);
    let worker = start_worker(logs, &addrs.workers, "outage-worker", &store);
    let stream_id = create_stream(&api, &sim_addr, 1000).await;
    count_at_least(&api, &stream_id, 2, Duration::from_secs(15)).await;

    // Away: every run fails as `storage`.
    drop(server);
    let down_at = chrono::Utc::now();
    let failure: Value = eventually(Duration::from_secs(30), "a storage failure", || async {
        let (_, body) = api.get(&format!("/streams/{stream_id}/failures")).await;
        body["items"]
            .as_array()?
            .iter()
            .find(|f| f["class"] == "storage")
            .cloned()
    })
    .await;
    assert_eq!(failure["stream_stopped"], false, "{failure}");
    let during = api.result_count(&stream_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        api.result_count(&stream_id).await <= during + 1,
        "results while the store is away"
    );
    let (_, failures) = api.get(&format!("/streams/{stream_id}/failures")).await;
    let classes: Vec<&str> = failures["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|f| {
            f["at"]
                .as_str()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .is_some_and(|at| at > down_at + chrono::Duration::seconds(1))
        })
        .map(|f| f["class"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !classes.is_empty() && classes.iter().all(|c| *c == "storage"),
        "failures while the store is away: {failures}"
    );

    // Back on the same port and folder: results resume.
    let server = S3TestServer::start_on(&s3_addr, Some(&s3_root), "outage-access", secret)
        .expect("the S3 test server again, on the same port");
    let back = api.result_count(&stream_id).await;
    count_at_least(&api, &stream_id, back + 3, Duration::from_secs(30)).await;

    stop_and_settle(&api, &stream_id).await;
    let audit = clean_audit(&api, Duration::from_secs(5)).await;
    eprintln!("audit after the object store came back: {audit}");
    // No partial objects: every object's bytes are whole (the SHA-256 its reference records).
    for r in api.all_results(&stream_id).await {
        let (status, bytes) = api
            .get_bytes(&format!("/results/{}/raw", r["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            objects::sha256_hex(&bytes),
            r["sha256"].as_str().unwrap(),
            "a partial or different object behind {r}"
        );
        assert_eq!(bytes.len() as u64, r["size"].as_u64().unwrap(), "{r}");
    }
    assert!(!worker.log_text().contains("panicked"));
    drop(worker);
    drop(supervisor);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_sigkill_loses_nothing_and_indexes_every_object_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let store = folder_store(dir.path());
    let db = format!("sqlite://{}", dir.path().join("ds.db").display());
    let (_sim, sim_addr) = start_sim(logs);
    let (mut supervisor, api, addrs) = start_supervisor(logs, &free_addrs(), &db, &store);
    let worker = start_worker(logs, &addrs.workers, "outage-worker", &store);
    let stream_id = create_stream(&api, &sim_addr, 1000).await;
    count_at_least(&api, &stream_id, 3, Duration::from_secs(15)).await;

    supervisor.kill();
    let root = dir.path().join("objects");
    let objects_at_kill = object_files(&root).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let objects_later = object_files(&root).len();
    assert!(
        objects_later >= objects_at_kill + 2,
        "the worker stopped storing objects without the supervisor: {objects_at_kill} -> {objects_later}"
    );

    let (supervisor, api, _) = start_supervisor(logs, &addrs, &db, &store);
    eventually(
        Duration::from_secs(30),
        "references catching up",
        || async {
            let (_, audit) = api.get("/audit").await;
            let refs = audit["references"].as_u64()?;
            (refs >= objects_later as u64 && audit["streams_running"] == 1).then_some(())
        },
    )
    .await;
    let running =
        count_at_least(&api, &stream_id, objects_later + 2, Duration::from_secs(20)).await;
    assert!(running > objects_later);

    stop_and_settle(&api, &stream_id).await;
    let audit = clean_audit(&api, Duration::from_secs(5)).await;
    eprintln!("audit after the supervisor restart: {audit}");
    assert_eq!(
        audit["objects"].as_u64(),
        Some(object_files(&root).len() as u64)
    );
    assert!(!supervisor.log_text().contains("panicked"));
    drop(worker);
}
