//! Cases for the event path and reading its results back.

use std::collections::HashSet;

use data_streams::db::{Db, MeasurementRow, PersistStats, ReconciledRef, ResultRow};
use protocol::{FailureClass, Measurement, ResultRecord};
use uuid::Uuid;

use crate::fixtures::{failure, iso, reading, result, result_with_id, stream, v7, T0};

const HOUR: i64 = 3_600_000;

pub async fn persist_events_stores_and_replay_inserts_nothing(db: Db) {
    let s = stream(&db, T0).await;
    let results: Vec<ResultRecord> = (0..3)
        .map(|i| {
            result(
                s.id,
                T0 + i * HOUR + 1_000,
                Some(reading(T0 + i * HOUR, 10.0 + i as f64)),
            )
        })
        .collect();
    let failures = vec![failure(s.id, T0 + 500, FailureClass::Http, "HTTP 502")];

    let stats = db
        .persist_events(&results, &failures)
        .await
        .expect("persist");
    assert_eq!(
        stats,
        PersistStats {
            results_inserted: 3,
            measurements_inserted: 3,
            failures_inserted: 1,
            ..PersistStats::default()
        }
    );

    let first = &results[0];
    assert_eq!(
        db.get_result(first.result_id).await.expect("get"),
        Some(ResultRow {
            id: first.result_id,
            stream_id: s.id,
            bucket: "results".to_owned(),
            key: first.key.clone(),
            fetched_at: first.fetched_at_ms,
            scheduled_at: Some(first.scheduled_at_ms),
            started_at: Some(first.started_at_ms),
            size: 1234,
            sha256: "ab".repeat(32),
            status: "ok".to_owned(),
            run_id: Some(first.run_id),
            page: Some(0),
        })
    );
    assert_eq!(
        db.get_result(Uuid::new_v4()).await.expect("get missing"),
        None
    );

    let readings = db
        .list_measurements(s.id, None, None, 100)
        .await
        .expect("measurements");
    assert_eq!(readings.len(), 3);
    let expected = reading(T0, 10.0);
    assert_eq!(
        readings[0],
        MeasurementRow {
            stream_id: s.id,
            result_id: first.result_id,
            ts: T0,
            city: expected.city.clone(),
            state: expected.state.clone(),
            country: expected.country.clone(),
            lat: expected.lat,
            lon: expected.lon,
            aqius: Some(10.0),
            mainus: expected.mainus.clone(),
            aqicn: Some(5.0),
            maincn: expected.maincn.clone(),
            weather_ts: Some(T0 + 1_800_000),
            tp: expected.tp,
            pr: expected.pr,
            hu: expected.hu,
            ws: expected.ws,
            wd: expected.wd,
            ic: expected.ic.clone(),
            heat_index: expected.heat_index,
            parser_version: 1,
        }
    );

    let replay = db
        .persist_events(&results, &failures)
        .await
        .expect("replay");
    assert_eq!(
        replay,
        PersistStats {
            results_duplicate: 3,
            measurements_duplicate: 3,
            failures_duplicate: 1,
            ..PersistStats::default()
        }
    );
    assert_eq!(db.count_results(Some(s.id)).await.expect("count"), 3);
    assert_eq!(db.list_failures(s.id, 10).await.expect("failures").len(), 1);
    assert_eq!(
        db.list_measurements(s.id, None, None, 100)
            .await
            .expect("measurements")
            .len(),
        3
    );

    let empty = db.persist_events(&[], &[]).await.expect("empty batch");
    assert_eq!(empty, PersistStats::default());
}

pub async fn duplicate_ids_within_one_batch(db: Db) {
    let s = stream(&db, T0).await;
    let r1 = result(s.id, T0 + 1, Some(reading(T0, 10.0)));
    let mut r1_again = r1.clone();
    r1_again.key = "a/different/key.json".to_owned();
    let r2 = result(s.id, T0 + 2, None);
    let f1 = failure(s.id, T0 + 3, FailureClass::Timeout, "timed out");

    let stats = db
        .persist_events(&[r1.clone(), r1_again, r2], &[f1.clone(), f1])
        .await
        .expect("persist");
    assert_eq!(stats.results_inserted, 2);
    assert_eq!(stats.results_duplicate, 1);
    assert_eq!(stats.measurements_inserted, 1);
    assert_eq!(stats.failures_inserted, 1);
    assert_eq!(stats.failures_duplicate, 1);
    assert_eq!(db.count_results(Some(s.id)).await.expect("count"), 2);
    let stored = db
        .get_result(r1.result_id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.key, r1.key, "the first occurrence wins");
}

pub async fn readings_dedup_per_stream_and_ts(db: Db) {
    let s = stream(&db, T0).await;
    let other = stream(&db, T0 + 1).await;
    let hour = T0 + 5 * HOUR;

    // Two fetches within the same IQAir hour, different result ids, one batch.
    let first = result(s.id, hour + 60_000, Some(reading(hour, 10.0)));
    let second = result(s.id, hour + 120_000, Some(reading(hour, 99.0)));
    let stats = db
        .persist_events(&[first.clone(), second], &[])
        .await
        .expect("persist");
    assert_eq!(
        (stats.results_inserted, stats.measurements_inserted),
        (2, 1)
    );
    assert_eq!(stats.measurements_duplicate, 1);

    // A later batch in the same hour: the reference is stored, the reading is not.
    let third = result(s.id, hour + 180_000, Some(reading(hour, 55.0)));
    let stats = db.persist_events(&[third], &[]).await.expect("persist");
    assert_eq!(
        (stats.results_inserted, stats.measurements_inserted),
        (1, 0)
    );
    assert_eq!(stats.measurements_duplicate, 1);

    // The same hour on another stream is another reading.
    let elsewhere = result(other.id, hour + 60_000, Some(reading(hour, 30.0)));
    let stats = db.persist_events(&[elsewhere], &[]).await.expect("persist");
    assert_eq!(stats.measurements_inserted, 1);

    let readings = db
        .list_measurements(s.id, None, None, 100)
        .await
        .expect("measurements");
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0].aqius, Some(10.0), "the first reading wins");
    assert_eq!(readings[0].result_id, first.result_id);
    assert_eq!(db.count_results(Some(s.id)).await.expect("count"), 3);

    // Readings without a usable pollution ts are counted and not stored; the reference is.
    let no_ts = Measurement {
        pollution_ts: None,
        ..reading(hour, 1.0)
    };
    let bad_ts = Measurement {
        pollution_ts: Some("yesterday-ish".to_owned()),
        ..reading(hour, 1.0)
    };
    let no_fraction = Measurement {
        pollution_ts: Some("2026-01-01T09:00:00Z".to_owned()),
        weather_ts: Some("not a time".to_owned()),
        ..reading(hour, 2.0)
    };
    let stats = db
        .persist_events(
            &[
                result(s.id, hour + 1, Some(no_ts)),
                result(s.id, hour + 2, Some(bad_ts)),
                result(s.id, hour + 3, Some(no_fraction)),
                result(s.id, hour + 4, None),
            ],
            &[],
        )
        .await
        .expect("persist");
    assert_eq!(stats.results_inserted, 4);
    assert_eq!(stats.measurements_without_ts, 2);
    assert_eq!(stats.measurements_inserted, 1);
    let nine = db
        .list_measurements(s.id, Some(T0 + 9 * HOUR), Some(T0 + 9 * HOUR), 10)
        .await
        .expect("measurements");
    assert_eq!(
        nine.len(),
        1,
        "2026-01-01T09:00:00Z parses without a fraction"
    );
    assert_eq!(
        nine[0].weather_ts, None,
        "an unparsable weather ts is stored as NULL"
    );
}

pub async fn unknown_stream_is_skipped(db: Db) {
    let s = stream(&db, T0).await;
    let ghost = Uuid::new_v4();
    let stats = db
        .persist_events(
            &[
                result(s.id, T0 + 1, Some(reading(T0, 1.0))),
                result(ghost, T0 + 2, Some(reading(T0, 1.0))),
            ],
            &[
                failure(ghost, T0 + 3, FailureClass::Network, "connection refused"),
                failure(s.id, T0 + 4, FailureClass::Network, "connection refused"),
            ],
        )
        .await
        .expect("a deleted stream never blocks the batch");
    assert_eq!(
        stats,
        PersistStats {
            results_inserted: 1,
            measurements_inserted: 1,
            failures_inserted: 1,
            skipped_unknown_stream: 2,
            ..PersistStats::default()
        }
    );
    assert_eq!(db.count_results(None).await.expect("count"), 1);

    // Only unknown streams: nothing happens, nothing fails.
    let stats = db
        .persist_events(&[result(ghost, T0 + 5, None)], &[])
        .await
        .expect("persist");
    assert_eq!(stats.skipped_unknown_stream, 1);
    assert_eq!(stats.results_inserted, 0);
}

pub async fn last_result_and_error_bookkeeping(db: Db) {
    let s = stream(&db, T0).await;
    let health = |db: Db| async move {
        let row = db.get_stream(s.id).await.expect("get").expect("exists");
        (row.last_result_at, row.last_error, row.last_error_at)
    };
    let ok = |at: i64| result(s.id, T0 + at, None);
    let failed = |at: i64, message: &str| failure(s.id, T0 + at, FailureClass::Http, message);

    db.persist_events(&[ok(1_000)], &[]).await.expect("persist");
    assert_eq!(health(db.clone()).await, (Some(T0 + 1_000), None, None));

    db.persist_events(&[], &[failed(2_000, "HTTP 502")])
        .await
        .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (
            Some(T0 + 1_000),
            Some("HTTP 502".to_owned()),
            Some(T0 + 2_000)
        )
    );

    // A late result older than the error moves last_result_at but keeps the error.
    db.persist_events(&[ok(1_500)], &[]).await.expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (
            Some(T0 + 1_500),
            Some("HTTP 502".to_owned()),
            Some(T0 + 2_000)
        )
    );
    // An older failure changes nothing; neither does an older result.
    db.persist_events(&[ok(500)], &[failed(1_800, "HTTP 503")])
        .await
        .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (
            Some(T0 + 1_500),
            Some("HTTP 502".to_owned()),
            Some(T0 + 2_000)
        )
    );

    // A newer result clears the error; its time stays.
    db.persist_events(&[ok(2_500)], &[]).await.expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (Some(T0 + 2_500), None, Some(T0 + 2_000))
    );
    // A replayed failure is not newer: the error does not come back.
    db.persist_events(&[], &[failed(2_000, "HTTP 502")])
        .await
        .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (Some(T0 + 2_500), None, Some(T0 + 2_000))
    );

    // Within one batch: a failure followed by a newer result leaves no error ...
    db.persist_events(&[ok(3_500)], &[failed(3_000, "HTTP 500")])
        .await
        .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (Some(T0 + 3_500), None, Some(T0 + 3_000))
    );
    // ... a result followed by a newer failure leaves the newest failure's message.
    db.persist_events(
        &[ok(4_000)],
        &[
            failed(4_300, "HTTP 429"),
            failed(4_500, "call_limit_reached"),
        ],
    )
    .await
    .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (
            Some(T0 + 4_000),
            Some("call_limit_reached".to_owned()),
            Some(T0 + 4_500)
        )
    );
    // A failure newer than its error but older than the newest result is history only.
    db.persist_events(&[ok(6_000)], &[]).await.expect("persist");
    db.persist_events(&[], &[failed(5_000, "timed out")])
        .await
        .expect("persist");
    assert_eq!(
        health(db.clone()).await,
        (Some(T0 + 6_000), None, Some(T0 + 5_000))
    );
}

pub async fn failures_recorded_and_listed(db: Db) {
    let s = stream(&db, T0).await;
    let other = stream(&db, T0 + 1).await;
    let failures = vec![
        failure(
            s.id,
            T0 + 100,
            FailureClass::Timeout,
            "timed out after 180 s",
        ),
        failure(s.id, T0 + 300, FailureClass::Auth, "incorrect_api_key"),
        failure(
            s.id,
            T0 + 200,
            FailureClass::RateLimited,
            "call_limit_reached",
        ),
        failure(other.id, T0 + 400, FailureClass::Storage, "bucket missing"),
    ];
    let stats = db.persist_events(&[], &failures).await.expect("persist");
    assert_eq!(stats.failures_inserted, 4);

    let listed = db.list_failures(s.id, 10).await.expect("list");
    let summary: Vec<(i64, &str, &str, bool)> = listed
        .iter()
        .map(|f| (f.at, f.class.as_str(), f.message.as_str(), f.stream_stopped))
        .collect();
    assert_eq!(
        summary,
        vec![
            (T0 + 300, "auth", "incorrect_api_key", true),
            (T0 + 200, "rate_limited", "call_limit_reached", false),
            (T0 + 100, "timeout", "timed out after 180 s", false),
        ]
    );
    assert!(listed.iter().all(|f| f.stream_id == s.id));
    assert_eq!(listed[0].run_id, failures[1].run_id);
    assert_eq!(db.list_failures(s.id, 2).await.expect("list").len(), 2);
    assert!(db.list_failures(s.id, 0).await.expect("list").is_empty());
}

/// Stores `count` results for `stream_id`, one per millisecond from `start_ms`.
async fn store_results(db: &Db, stream_id: Uuid, start_ms: i64, count: i64) -> Vec<Uuid> {
    let results: Vec<ResultRecord> = (0..count)
        .map(|i| result(stream_id, start_ms + i, None))
        .collect();
    let stats = db.persist_events(&results, &[]).await.expect("persist");
    assert_eq!(stats.results_inserted, count as u64);
    results.iter().map(|r| r.result_id).collect()
}

pub async fn keyset_pagination_newest_first(db: Db) {
    let s = stream(&db, T0).await;
    let noise = stream(&db, T0 + 1).await;
    let mut ids = store_results(&db, s.id, T0 + 10_000, 250).await;
    store_results(&db, noise.id, T0 + 5_000, 20).await;
    ids.reverse(); // newest first

    let (page1, next1) = db.list_results(s.id, 100, None).await.expect("page 1");
    let (page2, next2) = db.list_results(s.id, 100, next1).await.expect("page 2");
    let (page3, next3) = db.list_results(s.id, 100, next2).await.expect("page 3");
    assert_eq!((page1.len(), page2.len(), page3.len()), (100, 100, 50));
    assert_eq!(next1, Some(page1[99].id));
    assert_eq!(next2, Some(page2[99].id));
    assert_eq!(next3, None, "the last page has no cursor");

    let paged: Vec<Uuid> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|r| r.id)
        .collect();
    assert_eq!(paged, ids, "newest first, nothing skipped or repeated");
    assert!(paged.iter().all(|id| ids.contains(id)));

    // Exactly a page: the cursor is only handed out when more rows follow.
    let (all, next) = db.list_results(s.id, 250, None).await.expect("one page");
    assert_eq!((all.len(), next), (250, None));
    let (none, next) = db
        .list_results(Uuid::new_v4(), 100, None)
        .await
        .expect("empty");
    assert!(none.is_empty());
    assert_eq!(next, None);
}

pub async fn keyset_pagination_is_stable_while_rows_arrive(db: Db) {
    let s = stream(&db, T0).await;
    let mut original = store_results(&db, s.id, T0 + 10_000, 250).await;
    original.reverse();

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut arrivals = 0;
    let mut newest;
    loop {
        let (page, next) = db.list_results(s.id, 100, cursor).await.expect("page");
        seen.extend(page.iter().map(|r| r.id));
        // New fetches land between every page fetch.
        let arrived = store_results(&db, s.id, T0 + 100_000 + arrivals * 100, 30).await;
        newest = arrived.last().copied();
        arrivals += 1;
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(arrivals, 3);
    assert_eq!(seen, original, "the original pages neither skip nor repeat");
    let unique: HashSet<&Uuid> = seen.iter().collect();
    assert_eq!(unique.len(), 250);

    // A fresh first page starts with the newest arrival.
    let (page, _) = db.list_results(s.id, 1, None).await.expect("first page");
    assert_eq!(Some(page[0].id), newest);
    assert_eq!(db.count_results(Some(s.id)).await.expect("count"), 250 + 90);
}

pub async fn measurements_from_to_filter(db: Db) {
    let s = stream(&db, T0).await;
    let results: Vec<ResultRecord> = (0..10)
        .map(|h| {
            result(
                s.id,
                T0 + h * HOUR + 5,
                Some(reading(T0 + h * HOUR, h as f64)),
            )
        })
        .collect();
    db.persist_events(&results, &[]).await.expect("persist");

    let hours = |rows: Vec<MeasurementRow>| {
        rows.into_iter()
            .map(|m| (m.ts - T0) / HOUR)
            .collect::<Vec<_>>()
    };
    let all = db
        .list_measurements(s.id, None, None, 100)
        .await
        .expect("all");
    assert_eq!(hours(all), (0..10).collect::<Vec<_>>(), "ascending ts");
    let between = db
        .list_measurements(s.id, Some(T0 + 2 * HOUR), Some(T0 + 5 * HOUR), 100)
        .await
        .expect("between");
    assert_eq!(hours(between), vec![2, 3, 4, 5], "both bounds inclusive");
    let from = db
        .list_measurements(s.id, Some(T0 + 7 * HOUR + 1), None, 100)
        .await
        .expect("from");
    assert_eq!(hours(from), vec![8, 9]);
    let to = db
        .list_measurements(s.id, None, Some(T0 + HOUR), 100)
        .await
        .expect("to");
    assert_eq!(hours(to), vec![0, 1]);
    let limited = db
        .list_measurements(s.id, None, None, 3)
        .await
        .expect("limit");
    assert_eq!(hours(limited), vec![0, 1, 2]);
    let empty = db
        .list_measurements(s.id, Some(T0 + 5 * HOUR), Some(T0 + 4 * HOUR), 100)
        .await
        .expect("empty range");
    assert!(empty.is_empty());
    assert_eq!(iso(T0), "2026-01-01T00:00:00.000Z");
}

pub async fn reconciled_refs_are_idempotent(db: Db) {
    let s = stream(&db, T0).await;
    let reference = |id: Uuid, stream_id: Uuid| ReconciledRef {
        id,
        stream_id,
        bucket: "results".to_owned(),
        key: format!("IQAIR_DAILY/{stream_id}/dt=2026-01-01/{id}.json"),
        fetched_at: T0 + 42,
        size: 777,
        sha256: "cd".repeat(32),
    };
    let (a, b, orphan) = (v7(T0 + 1), v7(T0 + 2), v7(T0 + 3));
    let reported = v7(T0 + 4);
    db.persist_events(&[result_with_id(reported, s.id, T0 + 4, None)], &[])
        .await
        .expect("persist");

    let refs = vec![
        reference(a, s.id),
        reference(b, s.id),
        reference(a, s.id),
        reference(orphan, Uuid::new_v4()),
        reference(reported, s.id),
    ];
    assert_eq!(db.insert_reconciled(&refs).await.expect("insert"), 2);
    assert_eq!(db.insert_reconciled(&refs).await.expect("again"), 0);
    assert_eq!(db.insert_reconciled(&[]).await.expect("nothing"), 0);

    let stored = db.get_result(a).await.expect("get").expect("stored");
    assert_eq!(stored.status, "reconciled");
    assert_eq!((stored.size, stored.fetched_at), (777, T0 + 42));
    let kept = db.get_result(reported).await.expect("get").expect("stored");
    assert_eq!(kept.status, "ok", "a reported reference is not overwritten");

    let asked = [a, b, orphan, reported, Uuid::new_v4()];
    assert_eq!(
        db.existing_result_ids(&asked).await.expect("existing"),
        HashSet::from([a, b, reported])
    );
    assert!(db.existing_result_ids(&[]).await.expect("none").is_empty());

    // The worker's late report of a reconciled object is a duplicate, not an error.
    let late = result_with_id(a, s.id, T0 + 1, Some(reading(T0, 3.0)));
    let stats = db.persist_events(&[late], &[]).await.expect("persist");
    assert_eq!((stats.results_inserted, stats.results_duplicate), (0, 1));
    assert_eq!(stats.measurements_inserted, 1, "its reading is still new");
    assert_eq!(db.count_results(Some(s.id)).await.expect("count"), 3);
}

pub async fn schedule_lag_round_trips(db: Db) {
    let s = stream(&db, T0).await;
    let mut reported = result(s.id, T0 + 5_000, None);
    reported.scheduled_at_ms = T0 + 1_000;
    reported.started_at_ms = T0 + 1_037;
    db.persist_events(std::slice::from_ref(&reported), &[])
        .await
        .expect("persist");
    let stored = db
        .get_result(reported.result_id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        (stored.scheduled_at, stored.started_at),
        (Some(T0 + 1_000), Some(T0 + 1_037))
    );

    // A reference the reconciler found has no tick: both stay NULL.
    let found = v7(T0 + 9_000);
    let inserted = db
        .insert_reconciled(&[ReconciledRef {
            id: found,
            stream_id: s.id,
            bucket: "results".to_owned(),
            key: format!("IQAIR_DAILY/{}/dt=2026-01-01/{found}.json", s.id),
            fetched_at: T0 + 9_000,
            size: 1,
            sha256: "ef".repeat(32),
        }])
        .await
        .expect("reconcile");
    assert_eq!(inserted, 1);
    let (page, _) = db.list_results(s.id, 10, None).await.expect("list");
    let lags: Vec<(Uuid, Option<i64>, Option<i64>)> = page
        .iter()
        .map(|r| (r.id, r.scheduled_at, r.started_at))
        .collect();
    assert_eq!(
        lags,
        vec![
            (found, None, None),
            (reported.result_id, Some(T0 + 1_000), Some(T0 + 1_037)),
        ]
    );
}

pub async fn concurrent_writers_lose_nothing(db: Db) {
    const TASKS: i64 = 8;
    const BATCHES: i64 = 50;
    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(stream(&db, T0 + i).await.id);
    }
    // Every task also sends a batch-specific "shared" result that all tasks race to insert.
    let shared: Vec<ResultRecord> = (0..BATCHES)
        .map(|b| {
            result(
                streams[(b % 4) as usize],
                T0 + 1_000_000 + b,
                Some(reading(T0 - (b + 1) * HOUR, 1.0)),
            )
        })
        .collect();

    let mut handles = Vec::new();
    for task in 0..TASKS {
        let db = db.clone();
        let streams = streams.clone();
        let shared = shared.clone();
        handles.push(tokio::spawn(async move {
            let mut total = PersistStats::default();
            for batch in 0..BATCHES {
                let base = T0 + 10_000_000 + (task * BATCHES + batch) * 10;
                let stream_id = streams[((task + batch) % 4) as usize];
                let mut results: Vec<ResultRecord> = (0..3)
                    .map(|i| {
                        // Distinct hours per result: every reading is new.
                        let hour = T0 + ((task * BATCHES + batch) * 3 + i) * HOUR;
                        result(stream_id, base + i, Some(reading(hour, 2.0)))
                    })
                    .collect();
                results.push(shared[batch as usize].clone());
                let failures = vec![failure(stream_id, base + 5, FailureClass::Network, "reset")];
                let stats = db
                    .persist_events(&results, &failures)
                    .await
                    .expect("concurrent persist");
                total.results_inserted += stats.results_inserted;
                total.results_duplicate += stats.results_duplicate;
                total.measurements_inserted += stats.measurements_inserted;
                total.failures_inserted += stats.failures_inserted;
            }
            total
        }));
    }
    let mut total = PersistStats::default();
    for handle in handles {
        let stats = handle.await.expect("task");
        total.results_inserted += stats.results_inserted;
        total.results_duplicate += stats.results_duplicate;
        total.measurements_inserted += stats.measurements_inserted;
        total.failures_inserted += stats.failures_inserted;
    }

    let own = (TASKS * BATCHES * 3) as u64;
    let expected_results = own + BATCHES as u64;
    assert_eq!(total.results_inserted, expected_results);
    assert_eq!(total.results_duplicate, ((TASKS - 1) * BATCHES) as u64);
    assert_eq!(total.measurements_inserted, expected_results);
    assert_eq!(total.failures_inserted, (TASKS * BATCHES) as u64);
    assert_eq!(
        db.count_results(None).await.expect("count"),
        expected_results as i64
    );
    let mut readings = 0;
    let mut failures = 0;
    for stream_id in &streams {
        readings += db
            .list_measurements(*stream_id, None, None, 100_000)
            .await
            .expect("measurements")
            .len();
        failures += db
            .list_failures(*stream_id, 100_000)
            .await
            .expect("failures")
            .len();
    }
    assert_eq!(readings as u64, expected_results);
    assert_eq!(failures as i64, TASKS * BATCHES);
}

/// Two workers ran the same slot of one stream (a partition): the same result id, key, size and
/// hash from both (the slot's object, stored once), each from its own run; the worker whose put
/// found the object stored reports no reading when its bytes differed. Their batches arrive in
/// two sessions, at the same time and again as replays: one reference, one reading, both runs.
pub async fn one_slot_from_two_workers_is_one_reference(db: Db) {
    let s = stream(&db, T0).await;
    let slot = T0 + HOUR;
    let id = objects::slot_result_id(s.id, slot);
    let from_a = result_with_id(id, s.id, slot + 1_200, Some(reading(T0, 42.0)));
    let from_b = ResultRecord {
        run_id: v7(slot + 900),
        fetched_at_ms: from_a.fetched_at_ms,
        scheduled_at_ms: slot + 5,
        started_at_ms: slot + 6,
        measurement: None,
        ..from_a.clone()
    };
    assert_ne!(from_a.run_id, from_b.run_id);

    for round in 0..2 {
        let (a, b) = tokio::join!(
            db.persist_events(std::slice::from_ref(&from_a), &[]),
            db.persist_events(std::slice::from_ref(&from_b), &[]),
        );
        let (a, b) = (a.expect("persist a"), b.expect("persist b"));
        let expected = if round == 0 { 1 } else { 0 };
        assert_eq!(
            a.results_inserted + b.results_inserted,
            expected,
            "round {round}: {a:?} {b:?}"
        );
    }

    let (rows, _) = db.list_results(s.id, 10, None).await.expect("results");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.id, id);
    assert_eq!(row.key, from_a.key);
    assert_eq!(row.sha256, from_a.sha256);
    assert_eq!(row.status, "ok");
    let owner = row.run_id.expect("a reported reference names its run");
    assert!(owner == from_a.run_id || owner == from_b.run_id, "{owner}");

    let readings = db
        .list_measurements(s.id, None, None, 10)
        .await
        .expect("measurements");
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0].result_id, id);

    // Two calls were made, so two runs are recorded, both stored.
    let (runs, _) = db.list_runs(s.id, 10, None, None).await.expect("runs");
    let mut run_ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    run_ids.sort();
    let mut expected = vec![from_a.run_id, from_b.run_id];
    expected.sort();
    assert_eq!(run_ids, expected);
    assert!(runs.iter().all(|r| r.status == "stored"), "{runs:?}");
}
