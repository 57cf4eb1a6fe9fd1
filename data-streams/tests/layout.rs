//! `data-streams migrate-layout`, the real binary, SIGKILLed twice part-way and run again:
//! objects of the first key layout (`<adapter>/<stream_id>/dt=…`) end up once each in the
//! warehouse layout (`<adapter>/stream_id=<id>/dt=…`) with their bytes, every reference points
//! at its object's new key, nothing else in the bucket is touched, and a further run finds
//! nothing to do. On SQLite with the folder store, and on PostgreSQL with S3 (the loopback
//! S3 server).

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_streams::db::Db;
use data_streams::stream::{StreamInput, StreamSpec, StreamState};
use objects::test_server::S3TestServer;
use objects::{Layout, ObjectKey, ObjectMeta, ObjectStore, S3Store, StoreOptions};
use serde_json::Value;
use uuid::Uuid;

use support::{
    bin, command, folder_store_url, iqair_stream, result_with_id, v7, Backend, Env, FreshDatabase,
    BUCKET, T0,
};

/// Legacy objects nobody reported (a worker died before reporting): moved, no reference.
const UNREFERENCED: usize = 5;
/// Objects already in the warehouse layout (written by a newer worker): left as they are.
const CURRENT: usize = 3;
/// Not an object of ours at all: never touched.
const FOREIGN: &str = "notes/readme.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_folder_migration_survives_kills_and_moves_everything_once() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let url = folder_store_url(dir.path());
    let store = objects::open(
        &url,
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the folder store");
    let env = Env::new().set("OBJECT_STORE_URL", url);
    killed_and_resumed(Backend::Sqlite, store, env, 600).await;
    // The only hidden files are temporary files of puts the kills cut short: never listed,
    // never matched by a `*.json` glob, never an object.
    let hidden: Vec<String> = walk(&dir.path().join("objects").join(BUCKET))
        .into_iter()
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(
        hidden.iter().all(|name| name.ends_with(".tmp")),
        "hidden files other than cut-short writes: {hidden:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_s3_migration_survives_kills_and_moves_everything_once() {
    let server = S3TestServer::start();
    let store = S3Store::new(
        server.settings(),
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the S3 store");
    let env = Env::new()
        .set("OBJECT_STORE_URL", "s3://")
        .extend(server.env());
    // Fewer objects: the loopback S3 server is much slower than a folder.
    killed_and_resumed(Backend::Postgres, Arc::new(store), env, 150).await;
}

/// `referenced` legacy objects with a reference each, plus the unreferenced, current and foreign
/// ones.
async fn killed_and_resumed(
    backend: Backend,
    store: Arc<dyn ObjectStore>,
    env: Env,
    referenced: usize,
) {
    let database = FreshDatabase::create(backend, "ds_layout");
    let db = Db::connect(&database.url).await.expect("the database");
    let env = env.set("DATABASE_URL", database.url.clone());
    let stream_id = Uuid::now_v7();
    let input: StreamInput = serde_json::from_value(iqair_stream(
        "http://127.0.0.1:9/v2/nearest_city",
        "key",
        60_000,
    ))
    .expect("a stream body");
    db.insert_stream(
        stream_id,
        &StreamSpec::parse(input).expect("a valid stream"),
        StreamState::Stopped,
        T0,
    )
    .await
    .expect("insert_stream");

    // What an older worker left: legacy objects, most of them reported.
    let mut bodies: HashMap<Uuid, Bytes> = HashMap::new();
    let mut records = Vec::new();
    for i in 0..referenced + UNREFERENCED + CURRENT {
        let fetched = T0 + i as i64 * 60_000;
        let id = v7(fetched);
        let body = Bytes::from(format!(
            r#"{{"status":"success","data":{{"city":"Berlin","n":{i}}}}}"#
        ));
        let layout = if i < referenced + UNREFERENCED {
            Layout::Legacy
        } else {
            Layout::Hive
        };
        let date = chrono::DateTime::from_timestamp_millis(fetched)
            .unwrap()
            .date_naive();
        let key = format!(
            "{}{id}.json",
            ObjectKey::day_prefix(layout, "IQAIR_DAILY", stream_id, date)
        );
        let meta = ObjectMeta {
            stream_id: stream_id.to_string(),
            fetched_at: support::iso(fetched),
            sha256: objects::sha256_hex(&body),
        };
        store
            .put(BUCKET, &key, body.clone(), &meta)
            .await
            .expect("put");
        if !(referenced..referenced + UNREFERENCED).contains(&i) {
            let mut record = result_with_id(id, stream_id, fetched, None);
            record.key = key;
            record.size = body.len() as u64;
            record.sha256 = meta.sha256.clone();
            records.push(record);
        }
        bodies.insert(id, body);
    }
    let foreign = Bytes::from_static(b"not ours");
    store
        .put(
            BUCKET,
            FOREIGN,
            foreign.clone(),
            &ObjectMeta {
                stream_id: "-".into(),
                fetched_at: support::iso(T0),
                sha256: objects::sha256_hex(&foreign),
            },
        )
        .await
        .expect("put");
    for chunk in records.chunks(200) {
        db.persist_events(chunk, &[]).await.expect("persist");
    }
    let total = bodies.len();
    assert_eq!(
        count(&*store, Layout::Legacy).await,
        referenced + UNREFERENCED
    );

    // Killed twice part-way, at about a third and two thirds.
    for fraction in [3, 3] {
        let before = count(&*store, Layout::Hive).await;
        let target = before + (referenced + UNREFERENCED) / fraction;
        // Paced, so the kill lands part-way whatever the machine's speed (unpaced, a fast
        // machine finished 150 objects on S3 between two looks).
        let mut child = command(&bin("data-streams"), &env)
            .args(["migrate-layout", "--objects-per-second", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("data-streams migrate-layout starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if count(&*store, Layout::Hive).await >= target {
                break;
            }
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "the migration ended before it could be killed part-way"
            );
            assert!(Instant::now() < deadline, "the migration made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let (legacy, current) = (
            count(&*store, Layout::Legacy).await,
            count(&*store, Layout::Hive).await,
        );
        assert!(
            legacy > 0,
            "killed part-way: some objects are still to move"
        );
        // Between its copy and its delete, an object is in both layouts (at most one per
        // object in flight); none is in neither.
        assert!(legacy + current >= total, "{legacy} + {current} < {total}");
        references_lead_to_their_bytes(&db, &*store, stream_id, &bodies).await;
    }

    // Run to the end.
    let report = run_to_completion(&env);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(count(&*store, Layout::Legacy).await, 0);
    assert_eq!(count(&*store, Layout::Hive).await, total);
    let listed: HashSet<String> = store
        .list(BUCKET, "")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        listed.len(),
        total + 1,
        "every object once, and the foreign one"
    );
    assert_eq!(store.get(BUCKET, FOREIGN).await.expect("foreign"), foreign);
    for (id, body) in &bodies {
        let moved = listed
            .iter()
            .find(|k| ObjectKey::parse(k).is_some_and(|k| k.result_id() == *id))
            .expect("the object in the new layout");
        assert_eq!(&store.get(BUCKET, moved).await.expect("get"), body);
        let head = store.head(BUCKET, moved).await.expect("head");
        assert_eq!(
            head.meta.map(|m| m.sha256),
            Some(objects::sha256_hex(body)),
            "{moved}: its metadata moved with it"
        );
    }
    let refs = references_lead_to_their_bytes(&db, &*store, stream_id, &bodies).await;
    assert_eq!(refs, referenced + CURRENT);

    // Nothing left to do: a further run moves nothing.
    let again = run_to_completion(&env);
    assert_eq!(
        (again["legacy"].as_u64(), again["moved"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
}

/// Objects of ours in `layout`. The loopback S3 server (s3s-fs) answers a listing that races
/// a delete in its folder with a 500, which the store reports as transient: listed again.
async fn count(store: &dyn ObjectStore, layout: Layout) -> usize {
    let mut attempts = 0;
    let listed = loop {
        match store.list(BUCKET, "IQAIR_DAILY/").await {
            Ok(listed) => break listed,
            Err(err) if err.is_transient() && attempts < 20 => attempts += 1,
            Err(err) => panic!("list: {err}"),
        }
    };
    listed
        .iter()
        .filter(|o| ObjectKey::parse(&o.key).is_some_and(|k| k.layout() == layout))
        .count()
}

/// Every reference's key holds its object's bytes; returns how many references there are.
async fn references_lead_to_their_bytes(
    db: &Db,
    store: &dyn ObjectStore,
    stream_id: Uuid,
    bodies: &HashMap<Uuid, Bytes>,
) -> usize {
    let (refs, _) = db
        .list_results(stream_id, 10_000, None)
        .await
        .expect("references");
    for r in &refs {
        let bytes = store
            .get(&r.bucket, &r.key)
            .await
            .unwrap_or_else(|err| panic!("reference {} points at nothing: {err}", r.key));
        assert_eq!(Some(&bytes), bodies.get(&r.id), "{}", r.key);
    }
    refs.len()
}

/// Runs `data-streams migrate-layout` to its end; its report.
fn run_to_completion(env: &Env) -> Value {
    let output = command(&bin("data-streams"), env)
        .arg("migrate-layout")
        .output()
        .expect("data-streams migrate-layout runs");
    assert!(
        output.status.success(),
        "migrate-layout failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The report is the last line of stdout, after the log lines.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|err| panic!("no JSON report ({err}): {stdout}"))
}

/// Every file name under `root`, recursively.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}
