//! The reconciler's watermarks, on both database backends and both object stores (a folder, and
//! the real S3 server on loopback): a pass stores how far each stream is indexed; a reconciler
//! started again on the same database (a supervisor restart) lists only what is newer, still
//! finds an older object that landed late within the safety lag, and leaves what landed behind
//! a watermark to the audit pass, which also counts references whose object is gone.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use data_streams::db::{Db, Watermarks};
use data_streams::reconcile::{Mode, Reconciler, Scope};
use data_streams::stream::{StreamInput, StreamSpec, StreamState};
use objects::test_server::S3TestServer;
use objects::{FolderStore, Layout, ObjectKey, ObjectMeta, ObjectStore, S3Store, StoreOptions};
use uuid::Uuid;

use support::{iqair_stream, v7, Backend, FreshDatabase, BUCKET};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::watermarks_on_a_folder_store => watermarks_on_a_folder_store,
        super::watermarks_on_s3 => watermarks_on_s3,
        super::suspects_and_the_rotation => suspects_and_the_rotation,
    ],
}

const MINUTE: i64 = 60_000;
const OPTIONS: StoreOptions = StoreOptions {
    create_buckets: true,
};

async fn watermarks_on_a_folder_store(backend: Backend) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let root = folder.path().join("objects");
    let open = || async {
        let store: Arc<dyn ObjectStore> = Arc::new(
            FolderStore::new(&root, OPTIONS)
                .await
                .expect("the folder store"),
        );
        store
    };
    watermarks_across_a_restart(backend, open(), open()).await;
}

async fn watermarks_on_s3(backend: Backend) {
    let server = S3TestServer::start();
    let open = || async {
        let store: Arc<dyn ObjectStore> = Arc::new(
            S3Store::new(server.settings(), OPTIONS)
                .await
                .expect("the S3 store"),
        );
        store
    };
    watermarks_across_a_restart(backend, open(), open()).await;
}

/// A stream of the fixture kind (IQAIR_DAILY into [`BUCKET`], every minute, so its run timeout
/// is shorter than the safety lag).
async fn create_stream(db: &Db) -> Uuid {
    let input: StreamInput = serde_json::from_value(iqair_stream(
        "http://127.0.0.1:9/v2/nearest_city",
        "k",
        60_000,
    ))
    .expect("a stream body");
    let spec = StreamSpec::parse(input).expect("a valid stream");
    let id = Uuid::now_v7();
    db.insert_stream(id, &spec, StreamState::Stopped, common::now_ms())
        .await
        .expect("insert the stream");
    id
}

/// Stores an object the way a worker does, fetched at `at_ms`, and reports nothing. Returns its
/// key.
async fn store_object(store: &dyn ObjectStore, stream: Uuid, at_ms: i64) -> String {
    let key = ObjectKey::for_result("IQAIR_DAILY", stream, v7(at_ms)).to_string();
    put(store, stream, key, at_ms).await
}

/// As [`store_object`], in the first layout (`<adapter>/<stream_id>/dt=…`), as workers did
/// before the warehouse layout.
async fn store_legacy_object(store: &dyn ObjectStore, stream: Uuid, at_ms: i64) -> String {
    let id = v7(at_ms);
    let day = chrono::DateTime::from_timestamp_millis(at_ms)
        .expect("a time")
        .date_naive();
    let key = format!(
        "{}{id}.json",
        ObjectKey::day_prefix(Layout::Legacy, "IQAIR_DAILY", stream, day)
    );
    put(store, stream, key, at_ms).await
}

async fn put(store: &dyn ObjectStore, stream: Uuid, key: String, at_ms: i64) -> String {
    let body = Bytes::from(format!("{{\"fetched\": {at_ms}}}"));
    let meta = ObjectMeta {
        stream_id: stream.to_string(),
        fetched_at: chrono::DateTime::from_timestamp_millis(at_ms)
            .expect("a time")
            .to_rfc3339(),
        sha256: objects::sha256_hex(&body),
    };
    store
        .put(BUCKET, &key, body, &meta)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    key
}

/// The watermark a key sets: the key after its stream's prefix.
fn mark(key: &str) -> Option<String> {
    let (_, tail) = key.split_once("/dt=").expect("a partitioned key");
    Some(format!("dt={tail}"))
}

async fn referenced(db: &Db, keys: &[&String]) -> Vec<bool> {
    let ids: Vec<Uuid> = keys
        .iter()
        .map(|k| ObjectKey::parse(k).expect("a result key").result_id())
        .collect();
    let found = db.existing_result_ids(&ids).await.expect("look up");
    ids.iter().map(|id| found.contains(id)).collect()
}

async fn watermarks_across_a_restart(
    backend: Backend,
    first_store: impl std::future::Future<Output = Arc<dyn ObjectStore>>,
    second_store: impl std::future::Future<Output = Arc<dyn ObjectStore>>,
) {
    let database = FreshDatabase::create(backend, "ds_recon");
    let db = Db::connect(&database.url).await.expect("connect");
    let store = first_store.await;
    // Three streams read two at a time: the pass pages through them by id.
    let (a, b, c) = (
        create_stream(&db).await,
        create_stream(&db).await,
        create_stream(&db).await,
    );
    let now = common::now_ms();
    // Stored, never reported: three settled objects of `a` and one fetched 2 minutes ago
    // (younger than the 10-minute safety lag), two settled ones of `b`, nothing of `c`.
    let a_60 = store_object(&*store, a, now - 60 * MINUTE).await;
    let a_40 = store_object(&*store, a, now - 40 * MINUTE).await;
    let a_20 = store_object(&*store, a, now - 20 * MINUTE).await;
    let a_2 = store_object(&*store, a, now - 2 * MINUTE).await;
    let b_50 = store_object(&*store, b, now - 50 * MINUTE).await;
    let b_15 = store_object(&*store, b, now - 15 * MINUTE).await;
    // And one of `b` from before the warehouse layout.
    let b_legacy = store_legacy_object(&*store, b, now - 45 * MINUTE).await;

    let first = Reconciler::new(db.clone(), store.clone(), 2).with_streams_per_batch(2);
    let pass = first.run_once().await.expect("the first pass");
    assert_eq!(
        (pass.mode, pass.scope),
        (Mode::Watermark, Scope::All),
        "{pass:?}"
    );
    assert_eq!(
        (pass.streams, pass.objects, pass.inserted, pass.unlisted),
        (3, 7, 7, 0),
        "{pass:?}"
    );
    assert_eq!(
        referenced(&db, &[&a_60, &a_40, &a_20, &a_2, &b_50, &b_15, &b_legacy]).await,
        [true; 7]
    );
    // `a`'s watermark stops before the object younger than the lag; `b`'s is its last.
    let a_mark = Watermarks {
        hive: mark(&a_20),
        legacy: None,
    };
    assert_eq!(db.watermarks(a).await.expect("read"), Some(a_mark.clone()));
    assert_eq!(
        db.watermarks(b).await.expect("read"),
        Some(Watermarks {
            hive: mark(&b_15),
            legacy: mark(&b_legacy),
        })
    );
    // Visited, nothing to mark.
    assert_eq!(
        db.watermarks(c).await.expect("read"),
        Some(Watermarks::default())
    );
    drop(first);
    db.close().await;

    // A restart: a new pool, a new store client, a new reconciler, and meanwhile new objects.
    let db = Db::connect(&database.url).await.expect("connect again");
    let store = second_store.await;
    let a_1 = store_object(&*store, a, now - MINUTE).await;
    let b_5 = store_object(&*store, b, now - 5 * MINUTE).await;
    // A slow put: fetched 8 minutes ago, landing after the newer `a_2` was listed. Within the
    // lag, so after `a`'s watermark.
    let a_8 = store_object(&*store, a, now - 8 * MINUTE).await;
    // Fetched 30 minutes ago and landing only now, behind `a`'s watermark: the audit's case.
    let a_30 = store_object(&*store, a, now - 30 * MINUTE).await;
    let c_3 = store_object(&*store, c, now - 3 * MINUTE).await;
    // Nothing writes the first layout any more: after a stream's first visit, a watermark pass
    // lists it only where it found some (`b`); the audit pass lists it everywhere.
    let b_legacy_late = store_legacy_object(&*store, b, now - 4 * MINUTE).await;
    let a_legacy_late = store_legacy_object(&*store, a, now - 4 * MINUTE).await;

    // Every pass over every stream (no rotation), as the assertions below count.
    let second = Reconciler::new(db.clone(), store.clone(), 2)
        .with_streams_per_batch(2)
        .with_rotation(std::time::Duration::ZERO);
    let pass = second.run_once().await.expect("the pass after the restart");
    // Listed: `a` after its watermark (a_8, a_2 again, a_1), `b` after its (b_5, and the late
    // legacy one), `c` (c_3): 6 of the 14 objects in the window.
    assert_eq!(
        (pass.streams, pass.objects, pass.inserted, pass.dangling),
        (3, 6, 5, 0),
        "{pass:?}"
    );
    assert_eq!(
        referenced(
            &db,
            &[
                &a_8,
                &a_1,
                &b_5,
                &c_3,
                &b_legacy_late,
                &a_30,
                &a_legacy_late
            ]
        )
        .await,
        [true, true, true, true, true, false, false],
        "a_30 is behind the watermark; a has no legacy objects to look after"
    );
    // Nothing new is settled yet: every watermark stays (none goes back).
    assert_eq!(db.watermarks(a).await.expect("read"), Some(a_mark.clone()));
    assert_eq!(
        db.watermarks(c).await.expect("read"),
        Some(Watermarks::default())
    );

    // A pass with nothing new lists only what is younger than the lag.
    let quiet = second.run_once().await.expect("a quiet pass");
    assert_eq!((quiet.objects, quiet.inserted), (6, 0), "{quiet:?}");

    // The audit pass lists the whole window: it finds a_30 and a's late legacy object, and
    // counts no dangling reference.
    let audit = second.run_audit().await.expect("the audit pass");
    assert_eq!(audit.mode, Mode::Audit, "{audit:?}");
    assert_eq!(
        (audit.streams, audit.objects, audit.inserted, audit.dangling),
        (3, 14, 2, 0),
        "{audit:?}"
    );
    assert_eq!(
        referenced(&db, &[&a_30, &a_legacy_late]).await,
        [true, true]
    );
    assert_eq!(second.last_pass().expect("a last pass").findings, audit);
    assert_eq!(db.watermarks(a).await.expect("read"), Some(a_mark));

    // An object gone behind everyone's back: only the audit sees it (a watermark pass does not
    // list what is behind the watermarks).
    store.delete(BUCKET, &b_50).await.expect("delete");
    let pass = second.run_once().await.expect("a pass");
    assert_eq!(pass.dangling, 0, "{pass:?}");
    let audit = second.run_audit().await.expect("another audit");
    assert_eq!((audit.objects, audit.dangling), (13, 1), "{audit:?}");
    db.close().await;
}

/// After its first pass (every stream: what an earlier process's workers left unreported is not
/// known), a periodic pass lists the suspects the supervisor named (streams of a worker that
/// restarted or went away) and its share of the rotation, going on in id order where the last
/// pass stopped, so every stream is listed once per rotation and an unreported object of any
/// stream is found within it.
async fn suspects_and_the_rotation(backend: Backend) {
    let database = FreshDatabase::create(backend, "ds_recon_rot");
    let db = Db::connect(&database.url).await.expect("connect");
    let folder = tempfile::tempdir().expect("a temporary folder");
    let store: Arc<dyn ObjectStore> = Arc::new(
        FolderStore::new(folder.path(), OPTIONS)
            .await
            .expect("the folder store"),
    );
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(create_stream(&db).await);
    }
    streams.sort();
    let now = common::now_ms();
    for s in &streams {
        store_object(&*store, *s, now - 30 * MINUTE).await;
    }
    // A rotation of an hour: passes moments apart each list one stream of the rotation.
    let reconciler = Reconciler::new(db.clone(), store.clone(), 2)
        .with_streams_per_batch(2)
        .with_rotation(std::time::Duration::from_secs(3600));
    let suspects = reconciler.suspects();
    let first = reconciler.run_once().await.expect("the first pass");
    assert_eq!(
        (first.scope, first.streams, first.inserted),
        (Scope::All, 6, 6),
        "{first:?}"
    );

    // Unreported objects of the last stream (its worker restarted) and of the fourth.
    let last = store_object(&*store, streams[5], now - 20 * MINUTE).await;
    let fourth = store_object(&*store, streams[3], now - 20 * MINUTE).await;
    suspects.mark([streams[5], Uuid::now_v7()]);
    assert_eq!(suspects.len(), 2);
    let pass = reconciler.run_once().await.expect("a pass with a suspect");
    // The suspect (the unknown id is no stream: not listed) and the rotation's first stream.
    assert_eq!(
        (pass.scope, pass.suspects, pass.streams, pass.inserted),
        (Scope::Due, 1, 2, 1),
        "{pass:?}"
    );
    assert!(suspects.is_empty(), "the suspects were taken");
    assert_eq!(referenced(&db, &[&last, &fourth]).await, [true, false]);

    // The rotation goes on: the second and third streams, then the fourth, whose object it
    // finds.
    for expected in [0, 0, 1] {
        let pass = reconciler.run_once().await.expect("a rotation pass");
        assert_eq!(
            (pass.scope, pass.suspects, pass.streams, pass.inserted),
            (Scope::Due, 0, 1, expected),
            "{pass:?}"
        );
    }
    assert_eq!(referenced(&db, &[&fourth]).await, [true]);
    // The fifth and the sixth, then it wraps around to the first.
    let first_again = store_object(&*store, streams[0], now - 10 * MINUTE).await;
    for expected in [0, 0, 1] {
        let pass = reconciler.run_once().await.expect("a rotation pass");
        assert_eq!((pass.streams, pass.inserted), (1, expected), "{pass:?}");
    }
    assert_eq!(referenced(&db, &[&first_again]).await, [true]);
    // The audit still lists every stream.
    let audit = reconciler.run_audit().await.expect("the audit");
    assert_eq!(
        (audit.scope, audit.streams, audit.objects, audit.inserted),
        (Scope::All, 6, 9, 0),
        "{audit:?}"
    );
    db.close().await;
}
