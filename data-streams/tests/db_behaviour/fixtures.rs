//! Builders for the rows and events the cases store.

use data_streams::db::Db;
use data_streams::stream::{StreamInput, StreamRow, StreamSpec, StreamState};
use protocol::{FailureClass, Measurement, ResultRecord, RunFailure};
use serde_json::{json, Map, Value};
use uuid::{NoContext, Timestamp, Uuid};

/// 2026-01-01T00:00:00Z in epoch milliseconds: a plausible "now" for fixtures.
pub const T0: i64 = 1_767_225_600_000;

/// A UUIDv7 for the given epoch millisecond: ids made for later times sort after.
pub fn v7(ms: i64) -> Uuid {
    let ms = u64::try_from(ms).expect("fixture times are after 1970");
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        ms / 1000,
        u32::try_from(ms % 1000).expect("below 1000") * 1_000_000,
    ))
}

/// The ISO-8601 text IQAir sends for an epoch millisecond (`...T13:00:00.000Z`).
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("fixture times are in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn params() -> Map<String, Value> {
    let Value::Object(map) = json!({"lat": 52.52, "lon": 13.405}) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The body of a `POST /streams` for the fixture stream: every 5 minutes, 3-minute timeout.
pub fn stream_body() -> Value {
    json!({
        "adapter": "IQAIR_DAILY",
        "endpoint": "http://api.airvisual.com/v2/nearest_city",
        "secret_key": "sk-live-very-secret",
        "interval": 300_000,
        "timeout": 180_000,
        "bucket_name": "results",
        "params": params(),
    })
}

/// A validated spec from a request body.
pub fn spec_of(body: Value) -> StreamSpec {
    let input: StreamInput = serde_json::from_value(body).expect("a stream body");
    StreamSpec::parse(input).expect("a valid stream")
}

/// The fixture stream's spec.
pub fn spec() -> StreamSpec {
    spec_of(stream_body())
}

/// Inserts a running stream created at `now_ms`.
pub async fn stream(db: &Db, now_ms: i64) -> StreamRow {
    stream_in(db, now_ms, StreamState::Running).await
}

/// Inserts a stream created at `now_ms` in `state`.
pub async fn stream_in(db: &Db, now_ms: i64, state: StreamState) -> StreamRow {
    db.insert_stream(Uuid::new_v4(), &spec(), state, now_ms)
        .await
        .expect("insert_stream")
}

/// A full IQAir reading for the hour `pollution_ms`.
pub fn reading(pollution_ms: i64, aqius: f64) -> Measurement {
    Measurement {
        city: Some("Berlin".to_owned()),
        state: Some("Berlin".to_owned()),
        country: Some("Germany".to_owned()),
        lat: Some(52.52),
        lon: Some(13.405),
        pollution_ts: Some(iso(pollution_ms)),
        aqius: Some(aqius),
        mainus: Some("p2".to_owned()),
        aqicn: Some(aqius / 2.0),
        maincn: Some("p1".to_owned()),
        weather_ts: Some(iso(pollution_ms + 1_800_000)),
        tp: Some(7.5),
        pr: Some(1013.0),
        hu: Some(81.0),
        ws: Some(3.6),
        wd: Some(250.0),
        ic: Some("04n".to_owned()),
        heat_index: Some(6.0),
    }
}

/// A reported result fetched at `fetched_ms` (its id is a UUIDv7 of that time).
pub fn result(stream_id: Uuid, fetched_ms: i64, measurement: Option<Measurement>) -> ResultRecord {
    result_with_id(v7(fetched_ms), stream_id, fetched_ms, measurement)
}

pub fn result_with_id(
    result_id: Uuid,
    stream_id: Uuid,
    fetched_ms: i64,
    measurement: Option<Measurement>,
) -> ResultRecord {
    ResultRecord {
        result_id,
        stream_id,
        adapter: "IQAIR_DAILY".to_owned(),
        bucket: "results".to_owned(),
        key: format!("IQAIR_DAILY/{stream_id}/dt=2026-01-01/{result_id}.json"),
        fetched_at_ms: fetched_ms,
        scheduled_at_ms: fetched_ms - 250,
        started_at_ms: fetched_ms - 240,
        size: 1234,
        sha256: "ab".repeat(32),
        measurement: measurement.map(Box::new),
    }
}

/// A failed run at `at_ms`.
pub fn failure(stream_id: Uuid, at_ms: i64, class: FailureClass, message: &str) -> RunFailure {
    RunFailure {
        run_id: v7(at_ms),
        stream_id,
        at_ms,
        class,
        message: message.to_owned(),
        stream_stopped: class == FailureClass::Auth,
    }
}
