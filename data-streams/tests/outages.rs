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

use std::path::Path;
use std::time::{Duration, Instant};

use objects::test_server::S3TestServer;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use support::{
    eventually, folder_store_url, iqair_stream, nearest_city, object_files, sim_env, sqlite_url,
    start_sim, start_worker, supervisor_env, unlimited, worker_env, Api, Env, Proc, Supervisor,
    TcpProxy, TestDatabase, IQAIR_KEY,
};

/// A simulator, a supervisor on `database_url` and a worker, both on the object store
/// `store_url` (with `store_env` for S3), and a stream running every second; logs in `logs`.
struct Stack {
    worker: Proc,
    supervisor: Supervisor,
    /// How the supervisor was started (a restart on the same ports starts from here).
    supervisor_env: Env,
    _sim: Proc,
    stream_id: String,
}

async fn start(
    logs: &Path,
    database_url: &str,
    store_url: &str,
    store_env: &[(&'static str, String)],
) -> Stack {
    let (sim, sim_addr) = start_sim(logs, &sim_env());
    let supervisor_env = supervisor_env(database_url, store_url)
        .set("ASSIGN_INTERVAL_MS", "1000")
        .extend(store_env.iter().cloned());
    let supervisor = Supervisor::start(logs, &supervisor_env);
    let worker_env = worker_env(&supervisor.workers, store_url).extend(store_env.iter().cloned());
    let worker = start_worker(logs, "outage-worker", &worker_env);
    // The simulator's limits are off; no local budget either.
    let body = unlimited(iqair_stream(&nearest_city(&sim_addr), IQAIR_KEY, 1000));
    let created = supervisor.api.create_stream(&body).await;
    let stream_id = created["id"].as_str().expect("an id").to_owned();
    Stack {
        worker,
        supervisor,
        supervisor_env,
        _sim: sim,
        stream_id,
    }
}

/// References and objects catch up: at least `objects` references (and `extra` holds).
async fn references_catch_up(api: &Api, objects: usize, extra: impl Fn(&Value) -> bool) {
    eventually(
        Duration::from_secs(30),
        "references catching up",
        || async {
            let (_, audit) = api.get("/audit").await;
            let refs = audit["references"].as_u64()?;
            (refs >= objects as u64 && extra(&audit)).then_some(())
        },
    )
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
    let stack = start(logs, &via_proxy, &folder_store_url(dir.path()), &[]).await;
    let (api, stream_id) = (&stack.supervisor.api, &stack.stream_id);
    api.results_at_least(stream_id, 3, Duration::from_secs(15))
        .await;

    proxy.cut();
    let open = api.with_token(None);
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
    references_catch_up(api, objects_during, |_| true).await;
    let before_a_pass = clean_audit(api, Duration::from_secs(20)).await;
    eprintln!("audit after the database came back: {before_a_pass}");

    api.stop_and_settle(stream_id, Duration::from_secs(20))
        .await;
    let audit = clean_audit(api, Duration::from_secs(5)).await;
    eprintln!("audit after a reconciler pass: {audit}");
    assert!(audit["objects"].as_u64().unwrap() >= objects_during as u64);
    // Every reference came from the worker's own report (replayed), none from the reconciler.
    let refs = api.all_results(stream_id).await;
    let reconciled: Vec<&Value> = refs.iter().filter(|r| r["status"] != "ok").collect();
    assert!(
        reconciled.is_empty(),
        "references the reconciler had to add: {reconciled:?}"
    );
    assert!(stack.worker.child.id() > 0);
    assert!(!stack.supervisor.proc.log_text().contains("panicked"));
    drop(stack);
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
    let stack = start(logs, &sqlite_url(dir.path()), "s3://", &server.env()).await;
    let (api, stream_id) = (&stack.supervisor.api, &stack.stream_id);
    api.results_at_least(stream_id, 2, Duration::from_secs(15))
        .await;

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
    let during = api.result_count(stream_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        api.result_count(stream_id).await <= during + 1,
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
    let back = api.result_count(stream_id).await;
    api.results_at_least(stream_id, back + 3, Duration::from_secs(30))
        .await;

    api.stop_and_settle(stream_id, Duration::from_secs(20))
        .await;
    let audit = clean_audit(api, Duration::from_secs(5)).await;
    eprintln!("audit after the object store came back: {audit}");
    // No partial objects: every object's bytes are whole (the SHA-256 its reference records).
    for r in api.all_results(stream_id).await {
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
    assert!(!stack.worker.log_text().contains("panicked"));
    drop(stack);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_sigkill_loses_nothing_and_indexes_every_object_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let mut stack = start(
        logs,
        &sqlite_url(dir.path()),
        &folder_store_url(dir.path()),
        &[],
    )
    .await;
    let stream_id = &stack.stream_id;
    stack
        .supervisor
        .api
        .results_at_least(stream_id, 3, Duration::from_secs(15))
        .await;

    stack.supervisor.proc.kill();
    let root = dir.path().join("objects");
    let objects_at_kill = object_files(&root).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let objects_later = object_files(&root).len();
    assert!(
        objects_later >= objects_at_kill + 2,
        "the worker stopped storing objects without the supervisor: {objects_at_kill} -> {objects_later}"
    );

    let restart = stack.supervisor.same_ports(&stack.supervisor_env);
    let supervisor = Supervisor::start(logs, &restart);
    let api = &supervisor.api;
    let one_running = |audit: &Value| audit["streams_running"] == 1;
    references_catch_up(api, objects_later, one_running).await;
    let running = api
        .results_at_least(stream_id, objects_later + 2, Duration::from_secs(20))
        .await;
    assert!(running > objects_later);

    api.stop_and_settle(stream_id, Duration::from_secs(20))
        .await;
    let audit = clean_audit(api, Duration::from_secs(5)).await;
    eprintln!("audit after the supervisor restart: {audit}");
    assert_eq!(
        audit["objects"].as_u64(),
        Some(object_files(&root).len() as u64)
    );
    assert!(!supervisor.proc.log_text().contains("panicked"));
    drop(stack);
}
