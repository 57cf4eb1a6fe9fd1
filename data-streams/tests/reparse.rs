//! Re-parse (issue 10) on both database backends and both object stores: raw objects stored in
//! a real store and their readings persisted by the event path, then rebuilt by a re-parse job
//! (`data_streams::reparse::Reparse`) and through `POST /reparse` in a running supervisor.
//!
//! - Rebuild: drop every reading, re-parse, get every row back identical (every column).
//! - Bump: a job writing a newer parser version moves every row to it, nothing else changes.
//! - Resume: a job stopped mid-way resumes from its cursor, counts nothing twice; a second job
//!   gives the same rows again.
//! - Bad input: garbage, a half-written body, a body without a pollution time and a missing
//!   object are counted by class and the job still completes.
//! - Restart: a supervisor stopped mid-job resumes the job when it starts again.
//! - Store outage: while S3 is away the job waits (nothing counted as read or lost), and goes on
//!   when it is back.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use data_streams::db::{Db, JobRow, JobScope, JobState, MeasurementRow};
use data_streams::reparse::Reparse;
use data_streams::stream::{StreamInput, StreamSpec, StreamState};
use objects::test_server::S3TestServer;
use objects::{FolderStore, ObjectMeta, ObjectStore, S3Store, StoreOptions};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{
    eventually, iqair_stream, iso, result_with_id, spawn_app_on, v7, Backend, FreshDatabase,
    BUCKET, T0,
};

crate::on_both_backends! {
    crate::on_folder_store: [
        crate::rebuild_gives_identical_rows => rebuild_from_folder_store_gives_identical_rows,
        crate::newer_parser_version_moves_every_row => newer_parser_version_moves_every_row,
        crate::stopped_job_resumes_from_its_cursor => stopped_job_resumes_from_its_cursor,
        crate::bad_objects_are_counted_by_class => bad_objects_are_counted_by_class,
    ],
    crate::on_s3_store: [
        crate::rebuild_gives_identical_rows => rebuild_from_s3_store_gives_identical_rows,
    ],
    crate::support::with_backend: [
        crate::store_outage_pauses_the_job_and_loses_nothing
            => store_outage_pauses_the_job_and_loses_nothing,
        crate::api_reparse_rebuilds_and_reports_progress
            => api_reparse_rebuilds_and_reports_progress,
        crate::api_rejects_bad_requests => api_rejects_bad_requests,
        crate::a_restarted_supervisor_resumes_the_running_job
            => a_restarted_supervisor_resumes_the_running_job,
    ],
}

const HOUR: i64 = 3_600_000;

/// Runs `case` on a fresh database of `backend` and a folder store in a temporary folder.
async fn on_folder_store<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Db, Arc<dyn ObjectStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = FolderStore::new(
        dir.path().join("objects"),
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("a folder store");
    with_db(backend, Arc::new(store), case).await;
}

/// Runs `case` on a fresh database of `backend` and the S3 test server.
async fn on_s3_store<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Db, Arc<dyn ObjectStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = S3TestServer::start();
    let store = S3Store::new(
        server.settings(),
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("an S3 store");
    with_db(backend, Arc::new(store), case).await;
    drop(server);
}

async fn with_db<F, Fut>(backend: Backend, store: Arc<dyn ObjectStore>, case: F)
where
    F: FnOnce(Db, Arc<dyn ObjectStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    FreshDatabase::with_url(backend, "ds_reparse", |url| async move {
        let db = Db::connect(&url).await.expect("connect");
        case(db.clone(), store).await;
        db.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A stored IQAir `nearest_city` success body for the hour `pollution_ms`.
fn success_body(pollution_ms: i64, aqius: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"status": "success", "data": {
        "city": "Berlin", "state": "Berlin", "country": "Germany",
        "location": {"type": "Point", "coordinates": [13.405, 52.52]},
        "current": {
            "pollution": {"ts": iso(pollution_ms), "aqius": aqius, "mainus": "p2",
                          "aqicn": aqius / 2, "maincn": "p1"},
            "weather": {"ts": iso(pollution_ms + 1_800_000), "ic": "04n", "hu": 81, "pr": 1013,
                        "tp": 7, "wd": 250, "ws": 3.6, "heatIndex": 6}
        }
    }}))
    .expect("JSON")
}

/// A rate-limit failure body: stored like any response, it holds no reading.
const FAIL_BODY: &[u8] = br#"{"status":"fail","data":{"message":"call_per_minute_limit_reached"}}"#;

/// A running IQAir stream, inserted directly.
async fn insert_stream(db: &Db) -> Uuid {
    let input: StreamInput = serde_json::from_value(iqair_stream(
        "http://127.0.0.1:9/v2/nearest_city",
        "sk-test",
        300_000,
    ))
    .expect("a stream body");
    let spec = StreamSpec::parse(input).expect("a valid stream");
    db.insert_stream(Uuid::new_v4(), &spec, StreamState::Running, T0)
        .await
        .expect("insert_stream")
        .id
}

/// What a worker does with one fetch: store the body at its key, then report the result with
/// the reading parsed from it (the event path). `store_object: false` loses the object.
async fn fetch(
    db: &Db,
    store: &dyn ObjectStore,
    stream_id: Uuid,
    fetched_ms: i64,
    body: &[u8],
    store_object: bool,
) -> Uuid {
    let measurement = catalogue::iqair::parse(body);
    let mut record = result_with_id(v7(fetched_ms), stream_id, fetched_ms, measurement);
    record.size = body.len() as u64;
    record.sha256 = objects::sha256_hex(body);
    if store_object {
        let meta = ObjectMeta {
            stream_id: stream_id.to_string(),
            fetched_at: iso(fetched_ms),
            sha256: record.sha256.clone(),
        };
        store
            .put(BUCKET, &record.key, Bytes::copy_from_slice(body), &meta)
            .await
            .expect("put");
    }
    db.persist_events(std::slice::from_ref(&record), &[])
        .await
        .expect("persist");
    record.result_id
}

/// Two streams, 12 fetches each every 20 minutes (three per pollution hour, each with its own
/// AQI, so only the first per hour may own the row), one of them a rate-limit failure.
/// Returns the stream ids and how many references there are.
async fn history(db: &Db, store: &dyn ObjectStore) -> (Vec<Uuid>, i64) {
    let streams = vec![insert_stream(db).await, insert_stream(db).await];
    let mut count = 0;
    for i in 0..12_i64 {
        for (n, stream_id) in streams.iter().enumerate() {
            let fetched = T0 + i * 20 * 60_000 + n as i64;
            let hour = fetched - fetched % HOUR;
            let body = if n == 1 && i == 4 {
                FAIL_BODY.to_vec()
            } else {
                success_body(hour, 40 + i + 100 * n as i64)
            };
            fetch(db, store, *stream_id, fetched, &body, true).await;
            count += 1;
        }
    }
    (streams, count)
}

/// Every reading of `streams`, in stream then time order.
async fn readings(db: &Db, streams: &[Uuid]) -> Vec<MeasurementRow> {
    let mut rows = Vec::new();
    for stream_id in streams {
        rows.extend(
            db.list_measurements(*stream_id, None, None, 10_000)
                .await
                .expect("list_measurements"),
        );
    }
    rows
}

async fn drop_every_reading(db: &Db) {
    let deleted = match db {
        Db::Sqlite(pool) => sqlx::query("DELETE FROM measurements")
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        Db::Postgres(pool) => sqlx::query("DELETE FROM measurements")
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
    };
    assert!(deleted.expect("DELETE") > 0, "there were readings to drop");
}

/// Queues a job of `scope` on `reparse` and runs the queue to its end.
async fn run_to_completion(db: &Db, reparse: &Reparse, scope: JobScope) -> JobRow {
    let job = reparse.enqueue(scope).await.expect("enqueue");
    reparse
        .run_pending(&CancellationToken::new())
        .await
        .expect("run_pending");
    finished(db, job.id).await
}

async fn finished(db: &Db, id: Uuid) -> JobRow {
    let job = db.get_job(id).await.expect("get_job").expect("the job");
    assert_eq!(job.state, JobState::Done, "{job:?}");
    assert!(job.finished_at.is_some(), "{job:?}");
    job
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

// ---------------------------------------------------------------------------------------------
// Cases on the runner

async fn rebuild_gives_identical_rows(db: Db, store: Arc<dyn ObjectStore>) {
    let (streams, total) = history(&db, store.as_ref()).await;
    let before = readings(&db, &streams).await;
    // 4 hours per stream; every row from the first fetch of its hour.
    assert_eq!(before.len(), 8);
    assert!(before.iter().all(|r| r.parser_version == 1));

    drop_every_reading(&db).await;
    assert!(readings(&db, &streams).await.is_empty());

    let reparse = Reparse::new(db.clone(), store, 0);
    let job = run_to_completion(&db, &reparse, JobScope::default()).await;

    assert_eq!(
        readings(&db, &streams).await,
        before,
        "every column, result_id included"
    );
    assert_eq!(job.objects_total, total);
    assert_eq!(job.objects_read, total);
    assert_eq!(job.rows_written, 8);
    // 23 readings for 8 rows: the 15 later fetches of an hour are left alone.
    assert_eq!(job.rows_skipped, 15);
    assert_eq!(job.errors, counts(&[("unparseable", 1)]));
    assert_eq!(
        job.parser_version,
        i64::from(catalogue::iqair::PARSER_VERSION)
    );
}

async fn newer_parser_version_moves_every_row(db: Db, store: Arc<dyn ObjectStore>) {
    let (streams, _) = history(&db, store.as_ref()).await;
    let before = readings(&db, &streams).await;
    let bumped = catalogue::iqair::PARSER_VERSION + 1;

    let reparse = Reparse::new(db.clone(), store, 0).with_parser_version(bumped);
    let job = run_to_completion(&db, &reparse, JobScope::default()).await;
    assert_eq!(job.parser_version, i64::from(bumped));
    assert_eq!(
        job.rows_written, 8,
        "each row replaced once, by its own result"
    );

    let after = readings(&db, &streams).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.parser_version, i64::from(bumped), "{new:?}");
        let mut unchanged = new.clone();
        unchanged.parser_version = old.parser_version;
        assert_eq!(&unchanged, old, "only the version moves");
    }
}

async fn stopped_job_resumes_from_its_cursor(db: Db, store: Arc<dyn ObjectStore>) {
    let (streams, total) = history(&db, store.as_ref()).await;
    let before = readings(&db, &streams).await;
    drop_every_reading(&db).await;

    // Small pages at 20 objects a second: stop once the first pages are committed.
    let slow = Reparse::new(db.clone(), store.clone(), 20).with_page_size(3);
    let job = slow.enqueue(JobScope::default()).await.expect("enqueue");
    let stop = CancellationToken::new();
    let runner = {
        let (slow, stop) = (slow.clone(), stop.clone());
        tokio::spawn(async move { slow.run_pending(&stop).await })
    };
    let db_poll = db.clone();
    eventually(Duration::from_secs(30), "a committed page", || {
        let db = db_poll.clone();
        async move {
            let job = db.get_job(job.id).await.expect("get_job")?;
            (job.objects_read >= 3).then_some(())
        }
    })
    .await;
    stop.cancel();
    runner.await.expect("no panic").expect("run_pending");

    let stopped = db.get_job(job.id).await.expect("get_job").expect("the job");
    assert_eq!(
        stopped.state,
        JobState::Running,
        "left for a restart: {stopped:?}"
    );
    assert!(
        stopped.objects_read >= 3 && stopped.objects_read < total,
        "stopped mid-way: {stopped:?}"
    );
    assert!(stopped.cursor.is_some());
    let partial = readings(&db, &streams).await;
    assert!(
        partial.len() < before.len(),
        "{} rows so far",
        partial.len()
    );

    // A new runner (as after a restart) picks the running job up and finishes it.
    let fresh = Reparse::new(db.clone(), store, 0);
    fresh
        .run_pending(&CancellationToken::new())
        .await
        .expect("run_pending");
    let done = finished(&db, job.id).await;
    assert_eq!(done.objects_read, total, "every reference counted once");
    assert_eq!(done.rows_written, 8, "every row written once");
    assert_eq!(done.rows_skipped, 15);
    assert_eq!(done.errors, counts(&[("unparseable", 1)]));
    assert_eq!(readings(&db, &streams).await, before);

    // Idempotent: the same job again gives the same rows.
    let again = run_to_completion(&db, &fresh, JobScope::default()).await;
    assert_eq!(again.objects_read, total);
    assert_eq!(again.rows_written, 8);
    assert_eq!(readings(&db, &streams).await, before);
}

async fn bad_objects_are_counted_by_class(db: Db, store: Arc<dyn ObjectStore>) {
    let stream_id = insert_stream(&db).await;
    let good = success_body(T0, 50);
    fetch(&db, store.as_ref(), stream_id, T0 + 1_000, &good, true).await;
    let garbage = b"\x00\xff\xfe not json at all";
    fetch(&db, store.as_ref(), stream_id, T0 + 2_000, garbage, true).await;
    let half = &success_body(T0 + HOUR, 51)[..good.len() / 2];
    fetch(&db, store.as_ref(), stream_id, T0 + 3_000, half, true).await;
    let missing = success_body(T0 + 2 * HOUR, 52);
    fetch(&db, store.as_ref(), stream_id, T0 + 4_000, &missing, false).await;
    let without_pollution = serde_json::to_vec(&json!({"status": "success", "data": {
        "city": "Berlin", "current": {"weather": {"ts": iso(T0), "tp": 5}}}}))
    .expect("JSON");
    fetch(
        &db,
        store.as_ref(),
        stream_id,
        T0 + 5_000,
        &without_pollution,
        true,
    )
    .await;
    let after_them = success_body(T0 + 3 * HOUR, 53);
    fetch(
        &db,
        store.as_ref(),
        stream_id,
        T0 + 6_000,
        &after_them,
        true,
    )
    .await;
    let before = readings(&db, &[stream_id]).await;
    assert_eq!(
        before.len(),
        3,
        "good, missing (reported before it was lost), after_them"
    );

    drop_every_reading(&db).await;
    let reparse = Reparse::new(db.clone(), store, 0);
    let job = run_to_completion(
        &db,
        &reparse,
        JobScope {
            stream_id: Some(stream_id),
            ..JobScope::default()
        },
    )
    .await;
    assert_eq!(job.objects_read, 6);
    assert_eq!(
        job.errors,
        counts(&[
            ("no_pollution_ts", 1),
            ("object_missing", 1),
            ("unparseable", 2)
        ])
    );
    assert_eq!(job.rows_written, 2);
    let expected: Vec<MeasurementRow> = before
        .into_iter()
        .filter(|r| r.ts != T0 + 2 * HOUR)
        .collect();
    assert_eq!(readings(&db, &[stream_id]).await, expected);
}

async fn store_outage_pauses_the_job_and_loses_nothing(backend: Backend) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let s3_root = dir.path().join("s3");
    let secret = "reparse-s3-secret";
    let server = S3TestServer::start_on("127.0.0.1:0", Some(&s3_root), "reparse-access", secret)
        .expect("an S3 test server");
    let s3_addr = server.endpoint.trim_start_matches("http://").to_owned();
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::new(
            server.settings(),
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .expect("an S3 store"),
    );
    with_db(backend, store.clone(), |db, store| async move {
        let (streams, total) = history(&db, store.as_ref()).await;
        let before = readings(&db, &streams).await;
        drop_every_reading(&db).await;

        // The store goes away before the job reads anything.
        drop(server);
        let reparse = Reparse::new(db.clone(), store, 0);
        let job = reparse.enqueue(JobScope::default()).await.expect("enqueue");
        let stop = CancellationToken::new();
        let runner = {
            let (reparse, stop) = (reparse.clone(), stop.clone());
            tokio::spawn(async move { reparse.run_pending(&stop).await })
        };
        let waiting = eventually(
            Duration::from_secs(60),
            "the job waits for the store",
            || {
                let db = db.clone();
                async move {
                    let job = db.get_job(job.id).await.expect("get_job")?;
                    job.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("waiting for the object store"))
                        .then_some(job)
                }
            },
        )
        .await;
        assert_eq!(waiting.state, JobState::Running, "{waiting:?}");
        assert_eq!(
            waiting.objects_read, 0,
            "nothing counted as read: {waiting:?}"
        );
        assert!(
            waiting.errors.is_empty(),
            "nothing counted as lost: {waiting:?}"
        );

        // Back on the same port and folder: the job goes on and loses nothing.
        let server = S3TestServer::start_on(&s3_addr, Some(&s3_root), "reparse-access", secret)
            .expect("the S3 test server again, on the same port");
        let done = eventually(Duration::from_secs(90), "the job is done", || {
            let db = db.clone();
            async move {
                let job = db.get_job(job.id).await.expect("get_job")?;
                (job.state == JobState::Done).then_some(job)
            }
        })
        .await;
        stop.cancel();
        runner.await.expect("no panic").expect("run_pending");
        assert_eq!(done.objects_read, total);
        assert_eq!(done.errors, counts(&[("unparseable", 1)]));
        assert_eq!(done.last_error, None, "the wait is over: {done:?}");
        assert_eq!(readings(&db, &streams).await, before);
        drop(server);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Cases through the API

async fn api_reparse_rebuilds_and_reports_progress(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let store = FolderStore::new(
        app.store_root.clone(),
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the app's folder store");
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).expect("a stream id");
    for i in 0..6_i64 {
        let fetched = T0 + i * 30 * 60_000;
        let body = success_body(fetched - fetched % HOUR, 60 + i);
        fetch(app.db(), &store, stream_id, fetched, &body, true).await;
    }
    let path = format!("/streams/{id}/measurements");
    let (status, before) = app.get(&path).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["items"].as_array().expect("items").len(), 3);
    assert_eq!(before["items"][0]["parser_version"], 1, "{before}");
    drop_every_reading(app.db()).await;

    let response = app
        .request(Method::POST, "/reparse")
        .json(&json!({"stream_id": id, "from": iso(T0), "to": iso(T0 + 10 * HOUR)}))
        .send()
        .await
        .expect("POST /reparse");
    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .expect("a Location")
        .to_str()
        .expect("text")
        .to_owned();
    let job: Value = response.json().await.expect("the job");
    assert_eq!(
        location,
        format!("/jobs/{}", job["id"].as_str().expect("an id"))
    );
    assert_eq!(job["kind"], "reparse");
    assert_eq!(job["scope"]["stream_id"], id);
    assert_eq!(job["scope"]["from"], iso(T0));
    assert_eq!(job["progress"]["objects_total"], 6);

    let done = eventually(Duration::from_secs(30), "the job is done", || async {
        let (status, job) = app.get(&location).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] == "done" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(done["progress"]["objects_read"], 6, "{done}");
    assert_eq!(done["progress"]["rows_written"], 3, "{done}");
    assert_eq!(done["progress"]["errors"], json!({}), "{done}");
    let (_, after) = app.get(&path).await;
    assert_eq!(after, before);

    // Everything, then the list: newest first, one per page.
    let (status, second) = app.post("/reparse", &json!({})).await;
    assert_eq!(status, 202, "{second}");
    let (status, page) = app.get("/jobs?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], second["id"]);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, page) = app.get(&format!("/jobs?limit=1&after={next}")).await;
    assert_eq!(page["items"][0]["id"], done["id"]);
    assert_eq!(page["next"], Value::Null);

    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in ["/reparse", "/jobs", "/jobs/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(
        doc["components"]["schemas"]["MeasurementRow"]["properties"]["parser_version"].is_object(),
        "parser_version is in the measurement schema"
    );
}

async fn api_rejects_bad_requests(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let cases = [
        (json!({"stream_id": Uuid::now_v7()}), 404),
        (json!({"adapter": "OPENAQ"}), 422),
        (json!({"from": iso(T0 + HOUR), "to": iso(T0)}), 422),
        (json!({"from": iso(T0), "to": iso(T0)}), 422),
        (json!({"from": "yesterday"}), 422),
        (json!({"stream_id": id, "adapter": "OPENAQ"}), 422),
        (json!({"stream_id": "not-a-uuid"}), 400),
        (json!({"everything": true}), 400),
    ];
    for (body, expected) in cases {
        let (status, answer) = app.post("/reparse", &body).await;
        assert_eq!(status, expected, "{body} -> {answer}");
    }
    let (status, _) = app.get(&format!("/jobs/{}", Uuid::now_v7())).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/jobs/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, page) = app.get("/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"], json!([]), "no job was queued: {page}");
}

async fn a_restarted_supervisor_resumes_the_running_job(backend: Backend) {
    let mut app = spawn_app_on(backend).await;
    let store = FolderStore::new(
        app.store_root.clone(),
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the app's folder store");
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).expect("a stream id");
    // 300 objects at the default 50 a second: six seconds of work, time to restart mid-way.
    let total = 300_i64;
    for i in 0..total {
        let fetched = T0 + i * 20 * 60_000;
        let body = success_body(fetched - fetched % HOUR, 40 + i % 50);
        fetch(app.db(), &store, stream_id, fetched, &body, true).await;
    }
    let path = format!("/streams/{id}/measurements?limit=10000");
    let (_, before) = app.get(&path).await;
    assert_eq!(before["items"].as_array().expect("items").len(), 100);
    drop_every_reading(app.db()).await;

    let (status, job) = app.post("/reparse", &json!({"stream_id": id})).await;
    assert_eq!(status, 202, "{job}");
    let location = format!("/jobs/{}", job["id"].as_str().expect("an id"));
    eventually(Duration::from_secs(30), "a committed page", || async {
        let (_, job) = app.get(&location).await;
        (job["progress"]["objects_read"].as_i64()? > 0).then_some(())
    })
    .await;
    app.stop_supervisor().await;
    let job_id = Uuid::parse_str(job["id"].as_str().expect("an id")).expect("a job id");
    let db = Db::connect(&app.database.url).await.expect("connect");
    let interrupted = db.get_job(job_id).await.expect("get_job").expect("the job");
    db.close().await;
    assert_eq!(interrupted.state, JobState::Running, "{interrupted:?}");
    assert!(
        interrupted.objects_read > 0 && interrupted.objects_read < total,
        "stopped mid-way: {interrupted:?}"
    );

    app.start_supervisor().await;
    let done = eventually(Duration::from_secs(60), "the job is done", || async {
        let (_, job) = app.get(&location).await;
        if job["state"] == "done" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(done["progress"]["objects_read"], total, "{done}");
    assert_eq!(done["progress"]["rows_written"], 100, "{done}");
    assert_eq!(done["progress"]["rows_skipped"], 200, "{done}");
    let (_, after) = app.get(&path).await;
    assert_eq!(after, before);
}
