//! Cases for the coverage ledger (`data_streams::coverage::for_stream`) over what the event path
//! stored: exact slot counts and gaps for runs with chosen ticks, stopped periods, the state
//! history, cron streams, and the window's bounds.

use std::collections::BTreeMap;

use data_streams::coverage::{for_stream, CoverageError, Kind, Ledger, WindowError, SETTLE_MS};
use data_streams::db::Db;
use data_streams::stream::{StreamRow, StreamState};
use protocol::{FailureClass, ResultRecord, RunFailure};
use uuid::Uuid;

use crate::fixtures::{failure, result, spec_of, stream, stream_body, T0};

/// The fixture stream's interval (5 min) and timeout (3 min).
const EVERY: i64 = 300_000;
const TIMEOUT: i64 = 180_000;
/// Ticks fall 1.234 s into each interval: a phase that is not the epoch's.
const PHASE: i64 = 1_234;
/// Long after every window: nothing is open.
const LATER: i64 = T0 + 30 * 86_400_000;

/// A stored run for slot `k` (ticked at `T0 + PHASE + k·EVERY`, fetched 2 s later).
fn stored(stream_id: Uuid, k: i64) -> ResultRecord {
    let tick = T0 + PHASE + k * EVERY;
    let mut record = result(stream_id, tick + 2_000, None);
    record.scheduled_at_ms = tick;
    record.started_at_ms = tick + 3;
    record
}

fn tick(k: i64) -> i64 {
    T0 + PHASE + k * EVERY
}

async fn ledger(db: &Db, s: &StreamRow, from: i64, to: i64, now: i64) -> Ledger {
    let s = db.get_stream(s.id).await.expect("get").expect("the stream");
    for_stream(db, &s, from, to, now).await.expect("a ledger")
}

pub async fn coverage_worker_down_span_is_exactly_the_missing_slots(db: Db) {
    let s = stream(&db, T0).await;
    // Slots 0..12; the worker was down over slots 4, 5, 6 and 7.
    let results: Vec<ResultRecord> = (0..12)
        .filter(|k| !(4..8).contains(k))
        .map(|k| stored(s.id, k))
        .collect();
    db.persist_events(&results, &[]).await.expect("persist");

    let l = ledger(&db, &s, T0, T0 + 12 * EVERY, LATER).await;
    assert_eq!((l.expected, l.stored, l.missing), (12, 8, 4), "{l:?}");
    assert!(l.failed.is_empty() && l.skipped.is_empty(), "{l:?}");
    assert_eq!(l.gaps.len(), 1, "{:?}", l.gaps);
    let gap = l.gaps[0];
    assert_eq!((gap.start, gap.end, gap.slots), (tick(4), tick(8), 4));
    let kinds: Vec<Kind> = l.strip.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [Kind::Stored, Kind::Missing, Kind::Stored]);
    assert_eq!(l.strip[0].start, T0);
    assert_eq!(l.strip[2].end, T0 + 12 * EVERY);

    // A window inside the down span: only missing slots, from its start to its end.
    let inside = ledger(&db, &s, tick(4) - 1_000, tick(8) - 1_000, LATER).await;
    assert_eq!((inside.expected, inside.missing), (4, 4), "{inside:?}");
}

pub async fn coverage_counts_failures_by_class_and_skips(db: Db) {
    let s = stream(&db, T0).await;
    let results = vec![stored(s.id, 0), stored(s.id, 3), stored(s.id, 6)];
    let mut long = stored(s.id, 4);
    // Slot 4's run took 6 minutes: slot 5's tick passed while it ran.
    long.fetched_at_ms = tick(4) + 360_000;
    let failures: Vec<RunFailure> = vec![
        // Slot 1 timed out: recorded a timeout after its tick.
        failure(
            s.id,
            tick(1) + TIMEOUT + 5,
            FailureClass::Timeout,
            "no answer",
        ),
        // Slot 2: the worker's own budget refused the call.
        failure(
            s.id,
            tick(2) + 1,
            FailureClass::RateLimited,
            "local budget for this key exhausted (5/minute); next call at 2026-01-01T00:11:00Z",
        ),
        // Slot 7: the API's limit answer is a failed call.
        failure(
            s.id,
            tick(7) + 300,
            FailureClass::RateLimited,
            "call_per_minute_limit_reached",
        ),
        failure(s.id, tick(8) + 40, FailureClass::Http, "HTTP 502"),
    ];
    db.persist_events(&[results, vec![long]].concat(), &failures)
        .await
        .expect("persist");

    let l = ledger(&db, &s, T0, T0 + 9 * EVERY, LATER).await;
    assert_eq!((l.expected, l.stored, l.missing), (9, 4, 0), "{l:?}");
    assert_eq!(
        l.failed,
        BTreeMap::from([
            ("http".to_owned(), 1),
            ("rate_limited".to_owned(), 1),
            ("timeout".to_owned(), 1)
        ])
    );
    assert_eq!(
        l.skipped,
        BTreeMap::from([("overran".to_owned(), 1), ("rate_budget".to_owned(), 1)])
    );
    assert!(l.gaps.is_empty(), "{:?}", l.gaps);
}

pub async fn coverage_stopped_periods_and_time_before_creation_are_not_missing(db: Db) {
    let s = stream(&db, T0).await;
    // Running for slots 0..4, stopped by a person over slots 4..10, running again from 10.
    db.set_state(s.id, StreamState::Stopped, None, false, tick(4) - 100)
        .await
        .expect("stop")
        .expect("the stream");
    db.set_state(s.id, StreamState::Running, None, true, tick(10) - 100)
        .await
        .expect("start")
        .expect("the stream");
    let results: Vec<ResultRecord> = (0..4).chain(10..14).map(|k| stored(s.id, k)).collect();
    db.persist_events(&results, &[]).await.expect("persist");

    let history = db
        .state_changes(s.id, LATER)
        .await
        .expect("the state history");
    assert_eq!(
        history,
        [
            (T0, StreamState::Running),
            (tick(4) - 100, StreamState::Stopped),
            (tick(10) - 100, StreamState::Running),
        ]
    );

    // From a day before the stream existed.
    let l = ledger(&db, &s, T0 - 86_400_000, T0 + 14 * EVERY, LATER).await;
    assert_eq!((l.expected, l.stored, l.missing), (8, 8, 0), "{l:?}");
    let kinds: Vec<Kind> = l.strip.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::NotExpected,
            Kind::Stored,
            Kind::NotExpected,
            Kind::Stored
        ]
    );
    assert_eq!(l.strip[2].start, tick(4) - 100);
    assert_eq!(l.strip[2].end, tick(10) - 100);
}

pub async fn coverage_leaves_the_open_end_unjudged(db: Db) {
    let s = stream(&db, T0).await;
    let results: Vec<ResultRecord> = (0..6).map(|k| stored(s.id, k)).collect();
    db.persist_events(&results, &[]).await.expect("persist");
    // "Now" is just after slot 6's tick: its run may still be in flight, so slot 6 and later
    // are open, not missing.
    let now = tick(6) + 10_000;
    let l = ledger(&db, &s, T0, now, now).await;
    assert_eq!((l.expected, l.stored, l.missing), (6, 6, 0), "{l:?}");
    assert_eq!(l.open_from, now - TIMEOUT - SETTLE_MS);
    assert_eq!(l.strip.last().map(|s| s.kind), Some(Kind::Open));
    // Once the timeout and the settling time have passed, slot 6 is missing.
    let later = tick(7) - 1;
    let l = ledger(&db, &s, T0, tick(6) + 1, later).await;
    assert_eq!((l.expected, l.stored, l.missing), (7, 6, 1), "{l:?}");
}

pub async fn coverage_of_a_cron_stream_counts_its_fire_times(db: Db) {
    let mut body = stream_body();
    body.as_object_mut().expect("an object").remove("interval");
    body["cron"] = serde_json::json!("0 */15 * * * *");
    body["timeout"] = serde_json::json!(60_000);
    let s = db
        .insert_stream(Uuid::new_v4(), &spec_of(body), StreamState::Running, T0)
        .await
        .expect("insert_stream");
    const QUARTER: i64 = 900_000;
    // Fires at T0 + k·15 min; the ticks arrive up to a second late. Down over fires 3..6.
    let results: Vec<ResultRecord> = [0, 1, 2, 6, 7]
        .into_iter()
        .map(|k| {
            let mut r = result(s.id, T0 + k * QUARTER + 1_500, None);
            r.scheduled_at_ms = T0 + k * QUARTER + 999;
            r
        })
        .collect();
    db.persist_events(&results, &[]).await.expect("persist");

    let l = ledger(&db, &s, T0, T0 + 8 * QUARTER, LATER).await;
    assert_eq!((l.expected, l.stored, l.missing), (8, 5, 3), "{l:?}");
    assert_eq!(l.gaps.len(), 1);
    assert_eq!(
        (l.gaps[0].start, l.gaps[0].end, l.gaps[0].slots),
        (T0 + 3 * QUARTER, T0 + 6 * QUARTER, 3)
    );
}

pub async fn coverage_refuses_empty_and_oversized_windows(db: Db) {
    let s = stream(&db, T0).await;
    let s = db.get_stream(s.id).await.expect("get").expect("the stream");
    let empty = for_stream(&db, &s, T0 + 1, T0 + 1, LATER).await;
    assert!(
        matches!(empty, Err(CoverageError::Window(WindowError::Empty))),
        "{empty:?}"
    );
    // 5-minute slots: 100 000 of them is about 347 days; two years is too many.
    let huge = for_stream(&db, &s, T0, T0 + 2 * 365 * 86_400_000, LATER).await;
    assert!(
        matches!(
            huge,
            Err(CoverageError::Window(WindowError::TooManySlots { .. }))
        ),
        "{huge:?}"
    );
}
