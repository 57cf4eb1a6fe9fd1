//! The warehouse tables (`data_streams::tables`), read back by DuckDB (the Python package, for
//! real) on both database backends and both object stores: the same rows and values as the API
//! serves, typed; compaction idempotent and following late readings, re-parses and deleted
//! streams; a bad request refused; and a compaction SIGKILLed at random moments in a child
//! supervisor process, which must leave the old day or the new one, never both or half.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use data_streams::db::Db;
use data_streams::tables::{Outcome, Tables, PART_NAME};
use objects::test_server::S3TestServer;
use objects::{ObjectStore, S3Store, StoreOptions};
use serde_json::{json, Value};
use uuid::Uuid;

use support::{
    duckdb_query, reading, result, spawn_app_on, supervisor_env, Backend, TestApp, BUCKET, T0,
};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::duckdb_reads_what_the_api_serves_on_a_folder_store => duckdb_reads_what_the_api_serves_on_a_folder_store,
        super::duckdb_reads_what_the_api_serves_on_s3 => duckdb_reads_what_the_api_serves_on_s3,
        super::compaction_is_idempotent_and_follows_the_readings => compaction_is_idempotent_and_follows_the_readings,
    ],
}

const HOUR: i64 = 3_600_000;
/// The other bucket of the fixture's third stream.
const OTHER_BUCKET: &str = "other-results";
/// T0's day (2026-01-01), closed long ago.
fn day0() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date")
}

fn glob(bucket: &str) -> String {
    format!(
        "read_parquet('{bucket}/_tables/measurements/adapter=*/dt=*/*.parquet', \
         hive_partitioning = true)"
    )
}

/// Streams a, b in [`BUCKET`] and c in [`OTHER_BUCKET`], with readings: a every hour of day 0
/// (one with most fields missing), b three on day 0 and two on day 1, c two on day 0.
struct Fixture {
    a: Uuid,
    b: Uuid,
    c: Uuid,
}

async fn create_stream(app: &TestApp, bucket: &str) -> Uuid {
    let mut body = app.stream_json(3_600_000);
    body["bucket_name"] = json!(bucket);
    let (status, created) = app.post("/streams", &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    let (status, stopped) = app.post_empty(&format!("/streams/{id}/stop")).await;
    assert_eq!(status, 200, "{stopped}");
    Uuid::parse_str(&id).expect("a UUID")
}

async fn fixture(app: &TestApp) -> Fixture {
    let (a, b, c) = (
        create_stream(app, BUCKET).await,
        create_stream(app, BUCKET).await,
        create_stream(app, OTHER_BUCKET).await,
    );
    let mut results = Vec::new();
    for h in 0..24 {
        // Even US AQIs: the fixture's China AQI (half of it) is a whole number too.
        let mut m = reading(
            T0 + h * HOUR,
            f64::from(20 + 2 * i32::try_from(h).expect("small")),
        );
        if h == 5 {
            m.aqicn = None;
            m.city = None;
            m.weather_ts = None;
            m.tp = None;
        }
        results.push(result(a, T0 + h * HOUR + 60_000, Some(m)));
    }
    for h in [1, 2, 3, 25, 26] {
        results.push(result(
            b,
            T0 + h * HOUR + 90_000,
            Some(reading(T0 + h * HOUR, 150.0)),
        ));
    }
    for h in [7, 8] {
        results.push(result(
            c,
            T0 + h * HOUR + 30_000,
            Some(reading(T0 + h * HOUR, 42.0)),
        ));
    }
    app.db()
        .persist_events(&results, &[])
        .await
        .expect("persist");
    Fixture { a, b, c }
}

/// What the API serves of `stream` on day 0, oldest first.
async fn api_day0(app: &TestApp, stream: Uuid) -> Vec<Value> {
    let (status, page) = app
        .get(&format!(
            "/streams/{stream}/measurements?from={T0}&to={}&limit=1000",
            T0 + 24 * HOUR - 1
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    page.as_array()
        .or_else(|| page["items"].as_array())
        .unwrap_or_else(|| panic!("a list of readings: {page}"))
        .clone()
}

fn ms(rfc3339: &Value) -> Option<i64> {
    rfc3339.as_str().map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .expect("RFC 3339")
            .timestamp_millis()
    })
}

/// DuckDB's rows of one bucket's table (under `root`) equal the API's readings of `streams`.
async fn assert_table_matches_api(app: &TestApp, root: &Path, bucket: &str, streams: &[Uuid]) {
    let rows = duckdb_query(
        root,
        &[],
        &format!(
            "SELECT stream_id, epoch_ms(ts) AS ts, result_id, parser_version, aqius, aqicn, \
             city, tp, epoch_ms(weather_ts) AS weather_ts, adapter, CAST(dt AS VARCHAR) AS dt, \
             typeof(ts) AS ts_type, typeof(aqius) AS aqius_type, typeof(dt) AS dt_type \
             FROM {} ORDER BY stream_id, ts",
            glob(bucket)
        ),
    );
    let mut expected = Vec::new();
    let mut sorted = streams.to_vec();
    sorted.sort_by_key(|id| id.to_string());
    for stream in sorted {
        for m in api_day0(app, stream).await {
            expected.push((stream, m));
        }
    }
    assert_eq!(rows.len(), expected.len(), "DuckDB read {rows:?}");
    for (row, (stream, m)) in rows.iter().zip(&expected) {
        assert_eq!(row["stream_id"], stream.to_string());
        assert_eq!(row["ts"].as_i64(), ms(&m["ts"]), "{row} vs {m}");
        assert_eq!(row["result_id"], m["result_id"]);
        assert_eq!(row["parser_version"], 1);
        // AQIs are integers in the table, whole-number floats in the API.
        assert_eq!(row["aqius"].as_f64(), m["aqius"].as_f64(), "{row} vs {m}");
        assert!(row["aqius"].is_i64() || row["aqius"].is_null(), "{row}");
        assert_eq!(row["aqicn"].as_f64(), m["aqicn"].as_f64(), "{row} vs {m}");
        assert_eq!(row["city"], m["city"]);
        assert_eq!(row["tp"], m["tp"]);
        assert_eq!(
            row["weather_ts"].as_i64(),
            ms(&m["weather_ts"]),
            "{row} vs {m}"
        );
        assert_eq!(row["adapter"], "IQAIR_DAILY");
        assert_eq!(row["dt"], "2026-01-01");
        assert_eq!(row["ts_type"], "TIMESTAMP WITH TIME ZONE");
        assert_eq!(row["aqius_type"], "INTEGER");
        assert_eq!(row["dt_type"], "DATE");
    }
}

async fn duckdb_reads_what_the_api_serves_on_a_folder_store(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let f = fixture(&app).await;
    let (status, answer) = app
        .post("/tables/compact", &json!({"day": "2026-01-01"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["day"], "2026-01-01");
    let written = answer["written"].as_array().expect("written");
    let rows_of = |bucket: &str| {
        written
            .iter()
            .find(|w| w["bucket"] == bucket)
            .map(|w| w["rows"].clone())
    };
    assert_eq!(rows_of(BUCKET), Some(json!(27)), "{answer}");
    assert_eq!(rows_of(OTHER_BUCKET), Some(json!(2)), "{answer}");

    assert_table_matches_api(&app, &app.store_root, BUCKET, &[f.a, f.b]).await;
    assert_table_matches_api(&app, &app.store_root, OTHER_BUCKET, &[f.c]).await;

    let (status, tables) = app.get("/tables").await;
    assert_eq!(status, 200, "{tables}");
    let files = tables["files"].as_array().expect("files");
    assert_eq!(files.len(), 2, "{tables}");
    let file = files
        .iter()
        .find(|f| f["bucket"] == BUCKET)
        .expect("the results bucket's file");
    assert_eq!(
        file["key"],
        format!("_tables/measurements/adapter=IQAIR_DAILY/dt=2026-01-01/{PART_NAME}")
    );
    assert_eq!(file["rows"], 27);
    assert_eq!(file["parser_versions"], json!([1]));
    let on_disk = std::fs::metadata(
        app.store_root
            .join(BUCKET)
            .join(file["key"].as_str().expect("a key")),
    )
    .expect("the file is in the store");
    assert_eq!(file["bytes"].as_u64(), Some(on_disk.len()));

    let (status, metrics) = app.get_bytes("/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        "ds_tables_files_written_total",
        "ds_tables_rows_written_total",
        "ds_tables_bytes_written_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

async fn duckdb_reads_what_the_api_serves_on_s3(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let f = fixture(&app).await;
    let server = S3TestServer::start();
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::new(
            server.settings(),
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .expect("the S3 store"),
    );
    let tables = Tables::new(app.db().clone(), store.clone());
    let outcomes = tables
        .compact_day(Some("IQAIR_DAILY"), day0())
        .await
        .expect("compaction on S3");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");

    // Read back through S3: download every object of the table, then point DuckDB at them.
    let download = tempfile::tempdir().expect("a temporary folder");
    for bucket in [BUCKET, OTHER_BUCKET] {
        for object in store
            .list(bucket, "_tables/")
            .await
            .expect("list the table")
        {
            let body = store.get(bucket, &object.key).await.expect("get");
            let path = download.path().join(bucket).join(&object.key);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
            std::fs::write(&path, &body).expect("write");
        }
    }
    assert_table_matches_api(&app, download.path(), BUCKET, &[f.a, f.b]).await;
    assert_table_matches_api(&app, download.path(), OTHER_BUCKET, &[f.c]).await;
}

fn day_files(root: &Path, bucket: &str, day: &str) -> Vec<String> {
    let folder = root
        .join(bucket)
        .join(format!("_tables/measurements/adapter=IQAIR_DAILY/dt={day}"));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The folder store's own hidden sidecars and temporary files.
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// (bucket, day, rows) of the files written, sorted.
fn written_rows(outcomes: &[Outcome]) -> Vec<(String, String, i64)> {
    let mut out: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Written(f) => Some((f.bucket.clone(), f.day.clone(), f.rows)),
            Outcome::Removed { .. } => None,
        })
        .collect();
    out.sort();
    out
}

fn count_rows(root: &Path, bucket: &str) -> i64 {
    let rows = duckdb_query(
        root,
        &[],
        &format!("SELECT count(*) AS n FROM {}", glob(bucket)),
    );
    rows[0]["n"].as_i64().expect("a count")
}

async fn compaction_is_idempotent_and_follows_the_readings(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let f = fixture(&app).await;
    let store = objects::open(
        &app.store_url,
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the folder store");
    let tables = Tables::new(app.db().clone(), store.clone());
    let root = app.store_root.clone();
    let key = format!("_tables/measurements/adapter=IQAIR_DAILY/dt=2026-01-01/{PART_NAME}");
    let file = root.join(BUCKET).join(&key);

    // The loop's view: today is 2026-01-03, so days 0 and 1 are closed and stale.
    let today = NaiveDate::from_ymd_opt(2026, 1, 3).expect("a date");
    let first = tables.compact_stale(3, today).await;
    assert_eq!(
        first.len(),
        3,
        "day 0 in two buckets, day 1 in one: {first:?}"
    );
    let bytes = std::fs::read(&file).expect("day 0 written");
    assert_eq!(count_rows(&root, BUCKET), 27 + 2);

    // Nothing changed: the loop writes nothing, and compacting again on demand writes the same
    // bytes and no other file.
    assert!(tables.compact_stale(3, today).await.is_empty());
    tables
        .compact_day(Some("IQAIR_DAILY"), day0())
        .await
        .expect("again");
    assert_eq!(std::fs::read(&file).expect("day 0"), bytes, "same bytes");
    assert_eq!(day_files(&root, BUCKET, "2026-01-01"), [PART_NAME]);

    // A part of another layout in the day's folder, and a late reading: the day is stale, is
    // written with the new count, and the stray part is gone.
    let stray = objects::ObjectMeta {
        stream_id: "_tables".into(),
        fetched_at: "2026-01-02T00:00:00.000Z".into(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
    };
    store
        .put(
            BUCKET,
            "_tables/measurements/adapter=IQAIR_DAILY/dt=2026-01-01/part-1.parquet",
            bytes.clone().into(),
            &stray,
        )
        .await
        .expect("a stray part");
    assert_eq!(
        count_rows(&root, BUCKET),
        2 * 27 + 2,
        "DuckDB reads both parts"
    );
    app.db()
        .persist_events(
            &[result(
                f.b,
                T0 + 20 * HOUR + 1,
                Some(reading(T0 + 20 * HOUR, 30.0)),
            )],
            &[],
        )
        .await
        .expect("a late reading");
    // The unit of work is (adapter, day): day 0 is written again in both buckets (the other
    // one with the same rows), day 1 is left alone.
    let late = tables.compact_stale(3, today).await;
    assert_eq!(
        written_rows(&late),
        [
            (OTHER_BUCKET.to_owned(), "2026-01-01".to_owned(), 2),
            (BUCKET.to_owned(), "2026-01-01".to_owned(), 28),
        ],
        "{late:?}"
    );
    assert_eq!(day_files(&root, BUCKET, "2026-01-01"), [PART_NAME]);
    assert_eq!(count_rows(&root, BUCKET), 28 + 2);

    // A re-parse moves a reading to parser version 2: the day is written again.
    let reparse = "UPDATE measurements SET parser_version = 2 WHERE ts = $1";
    match app.db() {
        Db::Sqlite(pool) => sqlx::query(reparse).bind(T0).execute(pool).await.map(drop),
        Db::Postgres(pool) => sqlx::query(reparse).bind(T0).execute(pool).await.map(drop),
    }
    .expect("re-parse");
    let reparsed = tables.compact_stale(3, today).await;
    assert!(
        reparsed.iter().any(|o| matches!(o, Outcome::Written(f) if f.bucket == BUCKET && f.parser_versions == [1, 2])),
        "{reparsed:?}"
    );
    let versions = duckdb_query(
        &root,
        &[],
        &format!(
            "SELECT parser_version, count(*) AS n FROM {} GROUP BY 1 ORDER BY 1",
            glob(BUCKET)
        ),
    );
    assert_eq!(
        versions,
        [
            json!({"parser_version": 1, "n": 29}),
            json!({"parser_version": 2, "n": 1})
        ]
    );

    // The other bucket's only stream is deleted: its day 0 file goes, and so does its record.
    let (status, _) = app.delete(&format!("/streams/{}", f.c)).await;
    assert_eq!(status, 204);
    let removed = tables.compact_stale(3, today).await;
    assert_eq!(
        written_rows(&removed),
        [(BUCKET.to_owned(), "2026-01-01".to_owned(), 28)]
    );
    assert!(
        removed
            .iter()
            .any(|o| matches!(o, Outcome::Removed { bucket, .. } if bucket == OTHER_BUCKET)),
        "{removed:?}"
    );
    assert!(day_files(&root, OTHER_BUCKET, "2026-01-01").is_empty());
    let (_, listed) = app.get("/tables").await;
    assert!(
        listed["files"]
            .as_array()
            .expect("files")
            .iter()
            .all(|f| f["bucket"] != OTHER_BUCKET),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_compaction_request_is_refused_with_what_is_wrong() {
    let app = spawn_app_on(Backend::Sqlite).await;
    for (body, says) in [
        (
            json!({"day": "2026-13-01"}),
            "is not a date: use YYYY-MM-DD",
        ),
        (json!({"day": "yesterday"}), "is not a date"),
        (json!({"day": "2999-01-01"}), "is after today"),
        (json!({"adapter": "OPENAQ"}), "is not in the catalogue"),
    ] {
        let (status, answer) = app.post("/tables/compact", &body).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let problems = answer["detail"]["problems"].to_string();
        assert!(problems.contains(says), "{body} -> {answer}");
    }
    let (status, answer) = app.post("/tables/compact", &json!({"day": 20260101})).await;
    assert_eq!(status, 400, "a day that is not text: {answer}");
}

/// A supervisor process whose loop compacts every 20 ms is SIGKILLed at random moments while
/// readings of a closed day keep arriving; after every kill DuckDB must read exactly one of the
/// versions of the day that the database ever held (the file's rows are a prefix of the
/// readings, which arrive in time order), in one file. At the end a supervisor left alone
/// catches up with the last version.
///
/// What this proves: no kill point in the process leaves a half file or two versions in the
/// day's folder. It rests on the store's atomic `put` (object to a temporary file, fsync,
/// rename) and on the day being one object; it does not simulate a power cut (the folder
/// store's fsyncs are what covers that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compaction_leaves_the_old_day_or_the_new_one() {
    use rand::Rng;

    let dir = tempfile::tempdir().expect("a temporary folder");
    let database_url = support::sqlite_url(dir.path());
    let store_url = support::folder_store_url(dir.path());
    let root = dir.path().join("objects");
    let env = supervisor_env(&database_url, &store_url)
        .set("TABLES_INTERVAL_MS", "20")
        // T0's day is far in the past.
        .set("TABLES_DAYS", "2000")
        .set("RECONCILE_INTERVAL_MS", "600000");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");

    let mut supervisor = support::Supervisor::start(&logs, &env);
    let mut body = support::unlimited(support::iqair_stream(
        "http://127.0.0.1:9/v2/nearest_city",
        support::IQAIR_KEY,
        3_600_000,
    ));
    body["bucket_name"] = json!(BUCKET);
    let created = supervisor.api.create_stream(&body).await;
    let stream = support::parse_uuid(&created["id"]);
    let db = Db::connect(&database_url).await.expect("the same database");

    // Versions of day 0: each adds readings 3 s apart after the previous ones (12 versions
    // fill 10 hours of the day).
    const PER_VERSION: i64 = 1_000;
    const STEP: i64 = 3_000;
    let mut versions: Vec<i64> = vec![0];
    let mut next_ts = T0;
    let (mut old, mut new, mut older) = (0, 0, 0);
    let mut rng = rand::thread_rng();
    for round in 0..12 {
        let batch: Vec<_> = (0..PER_VERSION)
            .map(|i| {
                let ts = next_ts + i * STEP;
                result(stream, ts + 1_000, Some(reading(ts, 50.0)))
            })
            .collect();
        next_ts += PER_VERSION * STEP;
        db.persist_events(&batch, &[]).await.expect("persist");
        versions.push(versions.last().copied().unwrap_or(0) + PER_VERSION);

        if round > 0 {
            supervisor = support::Supervisor::start(&logs, &env);
        }
        // A debug build on a shared machine takes one to a few seconds to write such a day
        // after the start: the kills land before, during and after the write.
        let wait = rng.gen_range(0..2_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        supervisor.proc.kill();

        let parts = day_files(&root, BUCKET, "2026-01-01");
        if parts.is_empty() {
            assert_eq!(versions.len(), 2, "a day once written never disappears");
            older += 1;
            continue;
        }
        assert_eq!(
            parts,
            [PART_NAME],
            "round {round}: one file, never two versions"
        );
        let seen = duckdb_query(
            &root,
            &[],
            &format!(
                "SELECT count(*) AS n, max(epoch_ms(ts)) AS last FROM {}",
                glob(BUCKET)
            ),
        );
        let n = seen[0]["n"].as_i64().expect("a count");
        assert!(
            versions.contains(&n),
            "round {round}: {n} rows is no version of {versions:?}"
        );
        assert_eq!(
            seen[0]["last"].as_i64(),
            Some(T0 + (n - 1) * STEP),
            "round {round}: the rows are the first {n} readings"
        );
        match versions.iter().rev().position(|v| *v == n) {
            Some(0) => new += 1,
            Some(1) => old += 1,
            _ => older += 1,
        }
    }
    eprintln!("kills that left: the new day {new}, the previous one {old}, an older one {older}");

    let last = versions.last().copied().unwrap_or_default();
    let _supervisor = support::Supervisor::start(&logs, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = if day_files(&root, BUCKET, "2026-01-01").is_empty() {
            0
        } else {
            count_rows(&root, BUCKET)
        };
        if n == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the day never caught up: {n} of {last} rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files = db.list_table_files(None, None).await.expect("table_files");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].rows, last);
}
