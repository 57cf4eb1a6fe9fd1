//! Persistence seen through the API, on both backends: keyset pagination that holds still while
//! rows arrive, result events stored once however often they are reported, readings once per
//! pollution hour.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use protocol::{Event, ResultRecord};
use serde_json::Value;
use uuid::Uuid;

use crate::support::{
    ids_of, reading, result, result_with_id, spawn_app_on, unique, v7, Backend, RawWorker, T0,
};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::pagination_is_stable_while_rows_are_inserted
            => pagination_is_stable_while_rows_are_inserted,
        super::a_result_reported_twice_is_stored_once => a_result_reported_twice_is_stored_once,
        super::a_result_replayed_over_the_worker_port_is_stored_once
            => a_result_replayed_over_the_worker_port_is_stored_once,
        super::readings_are_stored_once_per_pollution_hour
            => readings_are_stored_once_per_pollution_hour,
        super::schedule_lag_fields_round_trip => schedule_lag_fields_round_trip,
    ],
}

async fn pagination_is_stable_while_rows_are_inserted(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).unwrap();

    // 120 rows that exist before paging starts.
    let existing: Vec<ResultRecord> = (0..120)
        .map(|i| result(stream_id, T0 + i * 1_000, None))
        .collect();
    app.db()
        .persist_events(&existing, &[])
        .await
        .expect("persist");
    let existing_ids: HashSet<Uuid> = existing.iter().map(|r| r.result_id).collect();

    // Rows keep arriving (newer ids, as a worker's would be) while the client pages.
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicUsize::new(0));
    let inserter = {
        let db = app.db().clone();
        let stop = stop.clone();
        let inserted = inserted.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = chrono::Utc::now().timestamp_millis();
                let batch: Vec<ResultRecord> = (0..3)
                    .map(|_| result_with_id(Uuid::now_v7(), stream_id, now, None))
                    .collect();
                db.persist_events(&batch, &[])
                    .await
                    .expect("insert while paging");
                inserted.fetch_add(batch.len(), Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Paging starts once insertion is under way.
    while inserted.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let mut pages: Vec<Vec<Uuid>> = Vec::new();
    let mut path = format!("/streams/{id}/results?limit=7");
    let at_start = inserted.load(Ordering::Relaxed);
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= 7);
        pages.push(ids_of(&items));
        match page["next"].as_str() {
            Some(next) => path = format!("/streams/{id}/results?limit=7&after={next}"),
            None => break,
        }
        assert!(pages.len() < 1_000, "paging does not end");
    }
    let during = inserted.load(Ordering::Relaxed) - at_start;
    stop.store(true, Ordering::Relaxed);
    inserter.await.expect("the inserter ends");
    assert!(during > 0, "rows were inserted while paging");

    let seen: Vec<Uuid> = pages.concat();
    assert!(unique(&seen), "a row was served twice");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "pages are newest first without going back"
    );
    let seen_set: HashSet<Uuid> = seen.iter().copied().collect();
    let skipped: Vec<&Uuid> = existing_ids.difference(&seen_set).collect();
    assert!(skipped.is_empty(), "existing rows skipped: {skipped:?}");
    // The rows that existed at the start come in order, each once.
    let mut expected: Vec<Uuid> = existing_ids.iter().copied().collect();
    expected.sort_by(|a, b| b.cmp(a));
    let old_seen: Vec<Uuid> = seen
        .iter()
        .copied()
        .filter(|id| existing_ids.contains(id))
        .collect();
    assert_eq!(old_seen, expected);
}

async fn schedule_lag_fields_round_trip(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).unwrap();
    let mut record = result(stream_id, T0 + 2_000, None);
    record.scheduled_at_ms = T0 + 1_000;
    record.started_at_ms = T0 + 1_042;
    app.db()
        .persist_events(std::slice::from_ref(&record), &[])
        .await
        .expect("persist");
    // The reconciler's references have no tick: null, not absent.
    let found = v7(T0 + 5_000);
    app.db()
        .insert_reconciled(&[data_streams::db::ReconciledRef {
            id: found,
            stream_id,
            bucket: "results".to_owned(),
            key: objects::ObjectKey::new(
                "IQAIR_DAILY",
                stream_id,
                chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date"),
                found,
            )
            .to_string(),
            fetched_at: T0 + 5_000,
            size: 1,
            sha256: "cd".repeat(32),
        }])
        .await
        .expect("reconcile");

    let results = app.all_results(&id).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0]["id"], found.to_string());
    assert_eq!(results[0]["status"], "reconciled");
    assert_eq!(results[0]["scheduled_at"], Value::Null, "{}", results[0]);
    assert_eq!(results[0]["started_at"], Value::Null, "{}", results[0]);
    assert!(results[0].get("scheduled_at").is_some(), "{}", results[0]);
    assert_eq!(results[1]["id"], record.result_id.to_string());
    assert_eq!(results[1]["scheduled_at"], "2026-01-01T00:00:01.000Z");
    assert_eq!(results[1]["started_at"], "2026-01-01T00:00:01.042Z");
    assert_eq!(results[1]["fetched_at"], "2026-01-01T00:00:02.000Z");
}

async fn a_result_reported_twice_is_stored_once(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).unwrap();
    let record = result(stream_id, T0, Some(reading(T0, 42.0)));

    let first = app
        .db()
        .persist_events(std::slice::from_ref(&record), &[])
        .await
        .expect("persist");
    assert_eq!(first.results_inserted, 1);
    let second = app
        .db()
        .persist_events(&[record.clone(), record.clone()], &[])
        .await
        .expect("persist again");
    assert_eq!(second.results_inserted, 0, "{second:?}");

    let results = app.all_results(&id).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["id"], record.result_id.to_string());
    let (_, m) = app.get(&format!("/streams/{id}/measurements")).await;
    assert_eq!(m["items"].as_array().unwrap().len(), 1, "{m}");
}

async fn a_result_replayed_over_the_worker_port_is_stored_once(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).unwrap();
    let record = result(stream_id, T0, Some(reading(T0, 42.0)));

    let mut raw = RawWorker::connect(app.worker_addr, "w-replay").await;
    raw.link
        .event(1, Event::Results(record.clone().into()))
        .await
        .expect("send");
    raw.link
        .event(2, Event::Results(record.clone().into()))
        .await
        .expect("send");
    raw.wait_ack(2).await;
    // A replay on a new connection, as after a reconnect.
    drop(raw);
    let mut raw = RawWorker::connect(app.worker_addr, "w-replay").await;
    raw.link
        .event(1, Event::Results(record.clone().into()))
        .await
        .expect("send");
    raw.wait_ack(1).await;

    let results = app.all_results(&id).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["id"], record.result_id.to_string());
    assert_eq!(results[0]["status"], "ok");
    assert_eq!(app.db().count_results(Some(stream_id)).await.unwrap(), 1);
}

async fn readings_are_stored_once_per_pollution_hour(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = app.create_stopped().await;
    let stream_id = Uuid::parse_str(&id).unwrap();
    // Two fetches in the same hour: two objects, one reading (the first wins).
    let a = result(stream_id, T0 + 60_000, Some(reading(T0, 40.0)));
    let b = result(stream_id, T0 + 120_000, Some(reading(T0, 99.0)));
    app.db().persist_events(&[a], &[]).await.expect("persist");
    app.db().persist_events(&[b], &[]).await.expect("persist");
    // And in one batch, a third fetch of the same hour and one of the next.
    let c = result(stream_id, T0 + 180_000, Some(reading(T0, 7.0)));
    let d = result(
        stream_id,
        T0 + 3_700_000,
        Some(reading(T0 + 3_600_000, 50.0)),
    );
    app.db()
        .persist_events(&[c, d], &[])
        .await
        .expect("persist");

    assert_eq!(app.result_count(&id).await, 4, "every fetch is referenced");
    let (status, m) = app.get(&format!("/streams/{id}/measurements")).await;
    assert_eq!(status, 200, "{m}");
    let items: &Vec<Value> = m["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one reading per pollution hour: {m}");
    assert_eq!(items[0]["ts"], "2026-01-01T00:00:00.000Z");
    assert_eq!(
        items[0]["aqius"], 40.0,
        "the first reading of the hour wins"
    );
    assert_eq!(items[1]["ts"], "2026-01-01T01:00:00.000Z");
}
