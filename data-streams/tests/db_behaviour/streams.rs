//! Cases for streams, their assignment, and workers.

use std::collections::{HashMap, HashSet};

use data_streams::db::{Db, DbError};
use data_streams::stream::{StreamRow, StreamState, StreamUpdate};
use protocol::Schedule;
use serde_json::json;
use uuid::Uuid;

use crate::fixtures::{params, result, spec, spec_of, stream, stream_body, stream_in, T0};

pub async fn stream_crud_round_trip(db: Db) {
    db.ping().await.expect("ping");
    assert!(["sqlite", "postgres"].contains(&db.backend()));

    let interval = spec();
    let mut body = stream_body();
    body.as_object_mut().expect("an object").remove("interval");
    body.as_object_mut().expect("an object").remove("timeout");
    body["cron"] = json!("0 */15 * * * *");
    let cron = spec_of(body);
    let (interval_id, cron_id) = (Uuid::new_v4(), Uuid::new_v4());

    let stored = db
        .insert_stream(interval_id, &interval, StreamState::Running, T0)
        .await
        .expect("insert");
    assert_eq!(stored.id, interval_id);
    assert_eq!(stored.spec.adapter(), "IQAIR_DAILY");
    assert_eq!(stored.spec.endpoint(), interval.endpoint());
    assert_eq!(stored.spec.secret_key(), interval.secret_key());
    assert_eq!(stored.spec.interval_ms(), Some(300_000));
    assert_eq!(stored.spec.cron(), None);
    assert_eq!(stored.spec.timeout_ms(), 180_000);
    assert_eq!(stored.spec.bucket_name(), "results");
    assert_eq!(
        stored.spec.params(),
        &params(),
        "params keep their JSON types"
    );
    assert_eq!(stored.spec.params()["lat"], json!(52.52));
    assert_eq!(stored.spec, interval, "the spec round-trips whole");
    assert_eq!(stored.state, StreamState::Running);
    assert_eq!(stored.worker_id, None);
    assert_eq!(stored.generation, 0);
    assert_eq!(stored.last_result_at, None);
    assert_eq!(stored.last_error, None);
    assert_eq!(stored.last_error_at, None);
    assert_eq!((stored.created_at, stored.updated_at), (T0, T0));
    assert_eq!(
        stored.spec.schedule(),
        &Schedule::Interval { millis: 300_000 }
    );

    let stored_cron = db
        .insert_stream(cron_id, &cron, StreamState::Stopped, T0 + 1)
        .await
        .expect("insert cron");
    assert_eq!(stored_cron.spec.cron(), Some("0 */15 * * * *"));
    assert_eq!(stored_cron.spec.interval_ms(), None);
    assert_eq!(stored_cron.state, StreamState::Stopped);
    assert_eq!(
        stored_cron.spec.schedule(),
        &Schedule::Cron {
            expr: "0 */15 * * * *".to_owned()
        }
    );

    assert_eq!(
        db.get_stream(interval_id).await.expect("get"),
        Some(stored.clone())
    );
    assert_eq!(
        db.get_stream(Uuid::new_v4()).await.expect("get missing"),
        None
    );
    let listed = db.list_streams().await.expect("list");
    assert_eq!(listed, vec![stored, stored_cron], "created_at order");

    // Same id twice is a query error, and not a transient one.
    let again = db
        .insert_stream(interval_id, &interval, StreamState::Running, T0)
        .await
        .expect_err("duplicate id");
    assert!(matches!(again, DbError::Query(_)), "{again:?}");
    assert!(!again.is_transient());

    // Parameters of any JSON shape come back as stored (nested objects, lists, booleans).
    let nested = json!({"lat": 52.52, "nested": {"flags": [1, 2, 3], "on": true}});
    raw(
        &db,
        &format!("UPDATE streams SET params = '{nested}' WHERE id = $1"),
        Some(interval_id),
    )
    .await
    .expect("plant nested params");
    let read = db
        .get_stream(interval_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(json!(read.spec.params()), nested);
}

pub async fn stream_update(db: Db) {
    let created = stream(&db, T0).await;

    let mut body = stream_body();
    body.as_object_mut().expect("an object").remove("interval");
    body["endpoint"] = json!("http://api.airvisual.com/v2/city");
    body["secret_key"] = json!("sk-rotated");
    body["cron"] = json!("0 0 * * * *");
    body["timeout"] = json!(60_000);
    body["bucket_name"] = json!("air");
    body["params"] = json!({"city": "Los Angeles", "state": "California", "country": "USA"});
    let spec = spec_of(body);
    let patched = db
        .update_stream(created.id, &spec, T0 + 5_000)
        .await
        .expect("update")
        .expect("the stream exists");
    assert_eq!(patched.spec.endpoint(), "http://api.airvisual.com/v2/city");
    assert_eq!(patched.spec.secret_key().expose(), "sk-rotated");
    assert_eq!(patched.spec.interval_ms(), None);
    assert_eq!(patched.spec.cron(), Some("0 0 * * * *"));
    assert_eq!(patched.spec.timeout_ms(), 60_000);
    assert_eq!(patched.spec.bucket_name(), "air");
    assert_eq!(patched.spec.params()["city"], json!("Los Angeles"));
    assert_eq!(patched.spec.params().len(), 3);
    assert_eq!(patched.spec.adapter(), created.spec.adapter());
    assert_eq!(
        (patched.state, patched.generation),
        (created.state, created.generation),
        "state and assignment are not the spec's"
    );
    assert_eq!(patched.created_at, T0);
    assert_eq!(patched.updated_at, T0 + 5_000);
    assert_eq!(
        db.get_stream(created.id).await.expect("get"),
        Some(patched.clone())
    );

    // The same spec again only touches updated_at.
    let touched = db
        .update_stream(created.id, &spec, T0 + 6_000)
        .await
        .expect("same spec")
        .expect("exists");
    assert_eq!(
        touched,
        StreamRow {
            updated_at: T0 + 6_000,
            ..patched.clone()
        }
    );

    // Back to an interval, through the API's own patch rules.
    let back_spec = touched
        .spec
        .patched(StreamUpdate {
            interval: Some(60_000),
            ..StreamUpdate::default()
        })
        .expect("a valid patch");
    let back = db
        .update_stream(created.id, &back_spec, T0 + 7_000)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        (back.spec.interval_ms(), back.spec.cron()),
        (Some(60_000), None)
    );

    // Neither schedule: the schema refuses, and the row stays as it was.
    let neither = raw(
        &db,
        "UPDATE streams SET interval_ms = NULL WHERE id = $1",
        Some(created.id),
    )
    .await
    .expect_err("a stream needs a schedule");
    assert!(!neither.is_empty());
    assert_eq!(db.get_stream(created.id).await.expect("get"), Some(back));

    let missing = db
        .update_stream(Uuid::new_v4(), &spec, T0)
        .await
        .expect("update of a missing stream");
    assert_eq!(missing, None);
}

pub async fn delete_cascades(db: Db) {
    let doomed = stream(&db, T0).await;
    let kept = stream(&db, T0 + 1).await;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (i, s) in [&doomed, &kept].into_iter().enumerate() {
        for hour in 0..3 {
            let at = T0 + 10_000 * (i as i64 + 1) + hour;
            results.push(result(
                s.id,
                at,
                Some(crate::fixtures::reading(T0 + hour * 3_600_000, 20.0)),
            ));
        }
        failures.push(crate::fixtures::failure(
            s.id,
            T0 + 50_000 + i as i64,
            protocol::FailureClass::Timeout,
            "timed out after 180 s",
        ));
    }
    db.persist_events(&results, &failures)
        .await
        .expect("persist");
    let doomed_ids: Vec<Uuid> = results
        .iter()
        .filter(|r| r.stream_id == doomed.id)
        .map(|r| r.result_id)
        .collect();

    assert!(db.delete_stream(doomed.id).await.expect("delete"));
    assert_eq!(db.get_stream(doomed.id).await.expect("get"), None);
    assert_eq!(db.count_results(Some(doomed.id)).await.expect("count"), 0);
    assert!(db
        .existing_result_ids(&doomed_ids)
        .await
        .expect("existing")
        .is_empty());
    assert!(db
        .list_measurements(doomed.id, None, None, 100)
        .await
        .expect("measurements")
        .is_empty());
    assert!(db
        .list_failures(doomed.id, 100)
        .await
        .expect("failures")
        .is_empty());

    // The other stream keeps everything.
    assert_eq!(db.count_results(Some(kept.id)).await.expect("count"), 3);
    assert_eq!(db.count_results(None).await.expect("count all"), 3);
    assert_eq!(
        db.list_measurements(kept.id, None, None, 100)
            .await
            .expect("measurements")
            .len(),
        3
    );
    assert_eq!(
        db.list_failures(kept.id, 100)
            .await
            .expect("failures")
            .len(),
        1
    );

    assert!(!db.delete_stream(doomed.id).await.expect("delete again"));
}

pub async fn set_state_failed_and_running(db: Db) {
    let s = stream(&db, T0).await;
    assert_eq!(db.assign(s.id, "w1").await.expect("assign"), Some(1));

    let failed = db
        .set_state(
            s.id,
            StreamState::Failed,
            Some("incorrect_api_key"),
            false,
            T0 + 5_000,
        )
        .await
        .expect("set failed")
        .expect("exists");
    assert_eq!(failed.state, StreamState::Failed);
    assert_eq!(failed.worker_id, None, "failed drops the assignment");
    assert_eq!(failed.generation, 1);
    assert_eq!(failed.last_error.as_deref(), Some("incorrect_api_key"));
    assert_eq!(failed.last_error_at, Some(T0 + 5_000));
    assert_eq!(failed.updated_at, T0 + 5_000);
    assert_eq!(
        db.assign(s.id, "w1").await.expect("assign"),
        None,
        "not running"
    );
    assert!(db
        .assignable_streams(10)
        .await
        .expect("assignable")
        .is_empty());

    let restarted = db
        .set_state(s.id, StreamState::Running, None, false, T0 + 6_000)
        .await
        .expect("set running")
        .expect("exists");
    assert_eq!(restarted.state, StreamState::Running);
    assert_eq!(
        restarted.last_error.as_deref(),
        Some("incorrect_api_key"),
        "kept without clear_error"
    );

    let cleared = db
        .set_state(s.id, StreamState::Running, None, true, T0 + 7_000)
        .await
        .expect("set running")
        .expect("exists");
    assert_eq!(cleared.last_error, None);
    assert_eq!(cleared.last_error_at, Some(T0 + 5_000), "the time stays");
    assert_eq!(cleared.updated_at, T0 + 7_000);

    // Stopping keeps the assignment: the supervisor still has to tell that worker.
    assert_eq!(db.assign(s.id, "w2").await.expect("assign"), Some(2));
    let stopped = db
        .set_state(s.id, StreamState::Stopped, None, false, T0 + 8_000)
        .await
        .expect("stop")
        .expect("exists");
    assert_eq!(stopped.state, StreamState::Stopped);
    assert_eq!(stopped.worker_id.as_deref(), Some("w2"));
    assert!(db.unassign(s.id, "w2", 2).await.expect("unassign"));

    let missing = db
        .set_state(Uuid::new_v4(), StreamState::Running, None, true, T0)
        .await
        .expect("set_state of a missing stream");
    assert_eq!(missing, None);
}

pub async fn assign_bumps_generation_and_stale_unassign_is_noop(db: Db) {
    let s = stream(&db, T0).await;
    assert_eq!(db.assign(s.id, "w1").await.expect("assign"), Some(1));
    assert_eq!(db.assign(s.id, "w2").await.expect("reassign"), Some(2));
    let row = db.get_stream(s.id).await.expect("get").expect("exists");
    assert_eq!((row.worker_id.as_deref(), row.generation), (Some("w2"), 2));

    assert!(!db.unassign(s.id, "w1", 1).await.expect("stale worker"));
    assert!(!db.unassign(s.id, "w2", 1).await.expect("stale generation"));
    let row = db.get_stream(s.id).await.expect("get").expect("exists");
    assert_eq!(
        row.worker_id.as_deref(),
        Some("w2"),
        "stale clears change nothing"
    );

    assert!(db.unassign(s.id, "w2", 2).await.expect("current"));
    let row = db.get_stream(s.id).await.expect("get").expect("exists");
    assert_eq!((row.worker_id, row.generation), (None, 2));
    assert!(!db.unassign(s.id, "w2", 2).await.expect("twice"));

    assert_eq!(
        db.assign(Uuid::new_v4(), "w1")
            .await
            .expect("assign missing"),
        None
    );
    let stopped = stream_in(&db, T0 + 1, StreamState::Stopped).await;
    assert_eq!(
        db.assign(stopped.id, "w1").await.expect("assign stopped"),
        None
    );
    let row = db
        .get_stream(stopped.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((row.worker_id, row.generation), (None, 0));
}

pub async fn release_worker_frees_its_streams(db: Db) {
    let a = stream(&db, T0).await;
    let b = stream(&db, T0 + 1).await;
    let c = stream(&db, T0 + 2).await;
    db.assign(a.id, "w1").await.expect("assign");
    db.assign(b.id, "w1").await.expect("assign");
    db.assign(c.id, "w2").await.expect("assign");

    let released: HashSet<Uuid> = db
        .release_worker("w1")
        .await
        .expect("release")
        .into_iter()
        .collect();
    assert_eq!(released, HashSet::from([a.id, b.id]));
    assert!(db.streams_of_worker("w1").await.expect("of w1").is_empty());
    let of_w2: Vec<Uuid> = db
        .streams_of_worker("w2")
        .await
        .expect("of w2")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(of_w2, vec![c.id]);
    assert!(db.release_worker("w1").await.expect("again").is_empty());

    // Released streams keep their generation: a later assignment moves past it.
    assert_eq!(db.assign(a.id, "w2").await.expect("reassign"), Some(2));
}

pub async fn assignable_streams_order_limit_and_filter(db: Db) {
    let newest = stream(&db, T0 + 500).await;
    let oldest = stream(&db, T0 + 100).await;
    let middle = stream(&db, T0 + 300).await;
    stream_in(&db, T0 + 50, StreamState::Stopped).await;
    stream_in(&db, T0 + 60, StreamState::Failed).await;
    let assigned = stream(&db, T0 + 70).await;
    db.assign(assigned.id, "w1").await.expect("assign");

    let ids = |rows: Vec<StreamRow>| rows.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(db.assignable_streams(10).await.expect("assignable")),
        vec![oldest.id, middle.id, newest.id]
    );
    assert_eq!(
        ids(db.assignable_streams(2).await.expect("assignable")),
        vec![oldest.id, middle.id]
    );
    assert!(db.assignable_streams(0).await.expect("zero").is_empty());
    assert!(db
        .assignable_streams(-5)
        .await
        .expect("negative")
        .is_empty());
}

/// The sweep reads on past streams it could not place: `assignable_streams_after` continues
/// after a (created_at, id) in that order.
pub async fn assignable_streams_read_on_after_a_cursor(db: Db) {
    let mut made = Vec::new();
    for at in [T0 + 100, T0 + 200, T0 + 200, T0 + 300] {
        made.push(stream(&db, at).await);
    }
    let ids = |rows: Vec<StreamRow>| rows.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let all = ids(db.assignable_streams(10).await.expect("all"));
    assert_eq!(all.len(), 4);
    let first_two = db.assignable_streams(2).await.expect("page");
    let last = first_two.last().expect("two");
    let rest = ids(db
        .assignable_streams_after(Some((last.created_at, last.id)), 10)
        .await
        .expect("after"));
    // The two streams created in the same millisecond are split by id, and none is skipped.
    assert_eq!(
        [ids(first_two), rest].concat(),
        all,
        "a page and what follows it are the whole list"
    );
}

/// A budgeted key moves whole: its running streams on one worker are found by key, and moved
/// only while still (worker, generation); a stale generation or a stopped stream stays.
pub async fn key_streams_move_under_their_generation(db: Db) {
    let key = spec().secret_key().expose().to_owned();
    let a = stream(&db, T0).await;
    let b = stream(&db, T0 + 1).await;
    let stopped = stream(&db, T0 + 2).await;
    let mut other_body = stream_body();
    other_body["secret_key"] = json!("sk-other");
    let other = db
        .insert_stream(
            Uuid::new_v4(),
            &spec_of(other_body),
            StreamState::Running,
            T0 + 3,
        )
        .await
        .expect("insert");
    for row in [&a, &b, &stopped, &other] {
        db.assign(row.id, "home").await.expect("assign");
    }
    db.set_state(stopped.id, StreamState::Stopped, None, false, T0 + 4)
        .await
        .expect("stop");

    let at_home = db.key_streams_on("home", &key).await.expect("by key");
    let found: Vec<Uuid> = at_home.iter().map(|r| r.id).collect();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(found, expected, "the key's running streams at home only");
    assert!(db
        .key_streams_on("elsewhere", &key)
        .await
        .expect("none")
        .is_empty());

    // b's generation is stale by the time of the move: it stays.
    let from: Vec<(Uuid, i64)> = at_home
        .iter()
        .map(|r| {
            (
                r.id,
                if r.id == b.id {
                    r.generation - 1
                } else {
                    r.generation
                },
            )
        })
        .collect();
    let moved = db.move_streams(&from, "home", "away").await.expect("move");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, a.id);
    let a_now = db.get_stream(a.id).await.expect("get").expect("a");
    assert_eq!(a_now.worker_id.as_deref(), Some("away"));
    assert_eq!(a_now.generation, moved[0].1);
    assert!(a_now.generation > at_home[0].generation.min(at_home[1].generation));
    let b_now = db.get_stream(b.id).await.expect("get").expect("b");
    assert_eq!(b_now.worker_id.as_deref(), Some("home"));
    // Moving from the wrong worker moves nothing.
    assert!(db
        .move_streams(&[(b.id, b_now.generation)], "nobody", "away")
        .await
        .expect("move")
        .is_empty());
    assert!(db
        .move_streams(&[], "home", "away")
        .await
        .expect("empty")
        .is_empty());
}

pub async fn assigned_counts_per_worker(db: Db) {
    assert!(db.assigned_counts().await.expect("counts").is_empty());
    for i in 0..5 {
        let s = stream(&db, T0 + i).await;
        let worker = if i < 3 { "w1" } else { "w2" };
        db.assign(s.id, worker).await.expect("assign");
    }
    stream(&db, T0 + 10).await;
    assert_eq!(
        db.assigned_counts().await.expect("counts"),
        HashMap::from([("w1".to_owned(), 3), ("w2".to_owned(), 2)])
    );
}

pub async fn workers_lifecycle(db: Db) {
    let adapters = vec!["IQAIR_DAILY".to_owned(), "IQAIR_HOURLY".to_owned()];
    db.upsert_worker("w1", 10, &adapters, T0)
        .await
        .expect("upsert");
    db.upsert_worker("w2", 5, &adapters[..1], T0 + 10)
        .await
        .expect("upsert");
    db.touch_worker("w1", T0 + 2_000).await.expect("touch");
    db.touch_worker("never-seen", T0)
        .await
        .expect("touch unknown");
    db.set_worker_disconnected("w2", T0 + 3_000)
        .await
        .expect("disconnect");
    for i in 0..2 {
        let s = stream(&db, T0 + i).await;
        db.assign(s.id, "w1").await.expect("assign");
    }

    let workers = db.list_workers().await.expect("list");
    assert_eq!(workers.len(), 2, "{workers:?}");
    let w1 = &workers[0];
    assert_eq!(w1.id, "w1");
    assert_eq!(w1.capacity, 10);
    assert_eq!(w1.adapters, adapters);
    assert!(w1.connected);
    assert_eq!((w1.connected_at, w1.last_seen), (T0, T0 + 2_000));
    assert_eq!(w1.streams, 2);
    let w2 = &workers[1];
    assert_eq!(w2.id, "w2");
    assert!(!w2.connected);
    assert_eq!(w2.last_seen, T0 + 3_000);
    assert_eq!(w2.streams, 0);

    // Reconnecting refreshes everything.
    db.upsert_worker("w2", 7, &adapters, T0 + 4_000)
        .await
        .expect("upsert again");
    let workers = db.list_workers().await.expect("list");
    let w2 = &workers[1];
    assert!(w2.connected);
    assert_eq!(w2.capacity, 7);
    assert_eq!(w2.adapters, adapters);
    assert_eq!((w2.connected_at, w2.last_seen), (T0 + 4_000, T0 + 4_000));
}

/// Runs raw SQL, bypassing the layer, to plant rows it would never write; `$1`, when the text
/// has it, is `id`. The error comes back as text.
async fn raw(db: &Db, sql: &str, id: Option<Uuid>) -> Result<(), String> {
    let outcome = match db {
        Db::Sqlite(pool) => {
            let query = sqlx::query(sql);
            let query = match id {
                Some(id) => query.bind(id),
                None => query,
            };
            query.execute(pool).await.map(drop)
        }
        Db::Postgres(pool) => {
            let query = sqlx::query(sql);
            let query = match id {
                Some(id) => query.bind(id),
                None => query,
            };
            query.execute(pool).await.map(drop)
        }
    };
    outcome.map_err(|e| format!("{sql}: {e}"))
}

pub async fn corrupt_rows_are_reported_as_corrupt(db: Db) {
    let s = stream(&db, T0).await;
    raw(&db, "UPDATE streams SET params = 'not json'", None)
        .await
        .expect("plant");
    let error = db.get_stream(s.id).await.expect_err("params do not decode");
    assert!(matches!(error, DbError::Corrupt { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains(&s.id.to_string()), "{error}");
    let error = db.list_streams().await.expect_err("params do not decode");
    assert!(matches!(error, DbError::Corrupt { .. }), "{error:?}");

    db.upsert_worker("w", 1, &[], T0).await.expect("upsert");
    raw(&db, "UPDATE workers SET adapters = '{'", None)
        .await
        .expect("plant");
    let error = db.list_workers().await.expect_err("adapters do not decode");
    assert!(matches!(error, DbError::Corrupt { .. }), "{error:?}");
}

pub async fn secrets_are_never_printed(db: Db) {
    let spec = spec();
    let row = db
        .insert_stream(Uuid::new_v4(), &spec, StreamState::Running, T0)
        .await
        .expect("insert");
    let secret = spec.secret_key().expose().to_owned();
    let update = StreamUpdate {
        secret_key: Some("sk-new-secret".into()),
        ..StreamUpdate::default()
    };
    let view = row.view(&HashSet::new());
    for printed in [
        format!("{row:?}"),
        format!("{spec:?}"),
        format!("{update:?}"),
        format!("{view:?}"),
        serde_json::to_string(&view).expect("serialize"),
    ] {
        assert!(!printed.contains(secret.as_str()), "{printed}");
        assert!(!printed.contains("sk-new-secret"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }
    let json = serde_json::to_value(&view).expect("serialize");
    assert_eq!(json["status"], json!("pending"));
    assert_eq!(json["secret_key"], json!("***"));
}

/// Migrations run at every connect and change nothing the second time; data survives.
pub async fn reconnect_keeps_data(url: String) {
    let db = Db::connect(&url).await.expect("first connect");
    let s = stream(&db, T0).await;
    db.close().await;
    let db = Db::connect(&url).await.expect("second connect");
    assert_eq!(db.get_stream(s.id).await.expect("get"), Some(s));
    db.close().await;
}

/// What a follower leaves for the leader: a stop of an assigned stream is found by
/// `stopped_assigned` until the assignment is cleared; a change made with the mark is found by
/// `streams_to_reconfigure` until the leader clears it, and a clear made after a newer change
/// leaves the mark.
pub async fn a_followers_changes_wait_for_the_leader(db: Db) {
    let running = stream(&db, T0).await;
    let stopped = stream(&db, T0 + 1).await;
    for row in [&running, &stopped] {
        db.assign(row.id, "w").await.expect("assign");
    }
    db.set_state(stopped.id, StreamState::Stopped, None, false, T0 + 2)
        .await
        .expect("stop");
    let found = db.stopped_assigned(10).await.expect("stopped and assigned");
    assert_eq!(
        found
            .iter()
            .map(|c| (c.id, c.worker_id.as_deref()))
            .collect::<Vec<_>>(),
        vec![(stopped.id, Some("w"))]
    );
    db.clear_stopped("w", &[stopped.id]).await.expect("clear");
    assert!(db.stopped_assigned(10).await.expect("none left").is_empty());

    assert!(db
        .streams_to_reconfigure(10)
        .await
        .expect("none")
        .is_empty());
    let mut body = stream_body();
    body["secret_key"] = json!("sk-rotated");
    let changed = db
        .update_stream_marked(running.id, &spec_of(body.clone()), T0 + 3, true)
        .await
        .expect("update")
        .expect("exists");
    let marked = db.streams_to_reconfigure(10).await.expect("marked");
    assert_eq!(
        marked.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![running.id]
    );
    assert_eq!(marked[0].spec.secret_key().expose(), "sk-rotated");
    // Changed again before the leader cleared: the stale clear leaves the mark.
    body["secret_key"] = json!("sk-again");
    db.update_stream_marked(running.id, &spec_of(body), T0 + 4, true)
        .await
        .expect("update again");
    db.reconfigured(running.id, changed.updated_at)
        .await
        .expect("stale clear");
    assert_eq!(db.streams_to_reconfigure(10).await.expect("still").len(), 1);
    db.reconfigured(running.id, T0 + 4).await.expect("clear");
    assert!(db
        .streams_to_reconfigure(10)
        .await
        .expect("cleared")
        .is_empty());
}
