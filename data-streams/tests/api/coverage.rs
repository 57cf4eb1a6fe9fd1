//! `GET /streams/{id}/coverage` through the API, on both backends: a stream whose runs (stored
//! through the real event path, with chosen ticks) stop for a known span shows exactly those
//! slots as one gap; and what a caller can get wrong.

use data_streams::stream::{StreamInput, StreamSpec, StreamState};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{iqair_stream, result, spawn_app_on, unlimited, Backend, TestApp, T0};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::a_down_span_is_one_gap_of_exactly_its_slots
            => a_down_span_is_one_gap_of_exactly_its_slots,
        super::bad_windows_and_unknown_streams_are_refused
            => bad_windows_and_unknown_streams_are_refused,
    ],
}

const MINUTE: i64 = 60_000;

/// A running stream every minute, created at `T0` (no worker runs it: its runs are stored by
/// hand, through `persist_events`).
async fn stream_since_t0(app: &TestApp) -> Uuid {
    let body = unlimited(iqair_stream(&app.sim.endpoint(), "k", 60_000));
    let input: StreamInput = serde_json::from_value(body).expect("a stream body");
    let spec = StreamSpec::parse(input).expect("a valid stream");
    let id = Uuid::now_v7();
    app.db()
        .insert_stream(id, &spec, StreamState::Running, T0)
        .await
        .expect("insert_stream");
    id
}

fn ms(value: &Value) -> i64 {
    common::parse_rfc3339_ms(value.as_str().expect("a time")).expect("RFC 3339")
}

async fn a_down_span_is_one_gap_of_exactly_its_slots(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = stream_since_t0(&app).await;
    // Ticks 0.5 s into each minute; nothing for minutes 3, 4 and 5 (the worker was down).
    let tick = |k: i64| T0 + 500 + k * MINUTE;
    let results: Vec<_> = (0..10)
        .filter(|k| !(3..6).contains(k))
        .map(|k| {
            let mut r = result(id, tick(k) + 800, None);
            r.scheduled_at_ms = tick(k);
            r
        })
        .collect();
    app.db()
        .persist_events(&results, &[])
        .await
        .expect("persist");

    let (status, ledger) = app
        .get(&format!(
            "/streams/{id}/coverage?from=2026-01-01T00:00:00Z&to=2026-01-01T00:10:00Z"
        ))
        .await;
    assert_eq!(status, 200, "{ledger}");
    assert_eq!(ledger["interval"], 60_000);
    assert_eq!(
        ledger["counts"],
        json!({"expected": 10, "stored": 7, "failed": 0, "skipped": 0, "missing": 3,
               "failed_by_class": {}, "skipped_by_reason": {}})
    );
    let gaps = ledger["gaps"].as_array().expect("gaps");
    assert_eq!(gaps.len(), 1, "{ledger}");
    assert_eq!(gaps[0]["outcome"], "missing");
    assert_eq!(gaps[0]["slots"], 3);
    assert_eq!(
        (ms(&gaps[0]["start"]), ms(&gaps[0]["end"])),
        (tick(3), tick(6))
    );
    let strip: Vec<&str> = ledger["strip"]
        .as_array()
        .expect("a strip")
        .iter()
        .map(|s| s["outcome"].as_str().expect("an outcome"))
        .collect();
    assert_eq!(strip, ["stored", "missing", "stored"]);

    // The default window: the 24 hours before now, all of it after these runs.
    let (status, recent) = app.get(&format!("/streams/{id}/coverage")).await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(ms(&recent["to"]) - ms(&recent["from"]), 86_400_000);
    assert_eq!(recent["counts"]["stored"], 0);

    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let route = &doc["paths"]["/streams/{id}/coverage"]["get"];
    for code in ["200", "400", "404", "422"] {
        assert!(route["responses"][code].is_object(), "{code}: {route}");
    }
}

async fn bad_windows_and_unknown_streams_are_refused(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let id = stream_since_t0(&app).await;
    let coverage = |query: &str| format!("/streams/{id}/coverage?{query}");

    let (status, body) = app.get(&coverage("from=yesterday")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("from must be RFC 3339"),
        "{body}"
    );

    let (status, body) = app
        .get(&coverage(
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "from must be before to");
    let (status, _) = app
        .get(&coverage(
            "from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        ))
        .await;
    assert_eq!(status, 422, "an empty window");

    // Minute slots: 100 000 of them is about 69 days; a year is too many.
    let (status, body) = app
        .get(&coverage(
            "from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().expect("an error line");
    assert!(error.contains("at most 100000"), "{error}");

    // Epoch milliseconds far outside the calendar (and a span that would overflow).
    let (status, body) = app
        .get(&coverage(&format!("from={}&to={}", i64::MIN, i64::MAX)))
        .await;
    assert_eq!(status, 400, "{body}");

    let unknown = Uuid::now_v7();
    let (status, body) = app.get(&format!("/streams/{unknown}/coverage")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app.get("/streams/not-an-id/coverage").await;
    assert_eq!(status, 400);
}
