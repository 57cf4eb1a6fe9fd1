//! Builders for what the tests send and store: stream bodies, readings, result records, ids.

use std::collections::HashSet;

use protocol::{Measurement, ResultRecord};
use serde_json::{json, Value};
use uuid::{NoContext, Timestamp, Uuid};

use super::BUCKET;

/// 2026-01-01T00:00:00Z in epoch milliseconds: a plausible "now" for fixtures.
pub const T0: i64 = 1_767_225_600_000;

/// The nearest-city endpoint of an IQAir API (a simulator) at `addr` (`host:port`).
pub fn nearest_city(addr: &str) -> String {
    format!("http://{addr}/v2/nearest_city")
}

/// The body of a `POST /streams`: an IQAir stream against `endpoint` with `key`, every
/// `interval_ms`, writing to [`BUCKET`].
pub fn iqair_stream(endpoint: &str, key: &str, interval_ms: u64) -> Value {
    json!({
        "adapter": "IQAIR_DAILY",
        "endpoint": endpoint,
        "secret_key": key,
        "interval": interval_ms,
        "bucket_name": BUCKET,
        "params": {"lat": 52.52, "lon": 13.40},
    })
}

/// `body` without a local rate limit: for the simulator with its limits off.
pub fn unlimited(mut body: Value) -> Value {
    body["rate_limit"] = json!({"per_minute": 0, "per_day": 0, "per_month": 0});
    body
}

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

/// A reported result with id `result_id` fetched at `fetched_ms`, stored at its documented key.
pub fn result_with_id(
    result_id: Uuid,
    stream_id: Uuid,
    fetched_ms: i64,
    measurement: Option<Measurement>,
) -> ResultRecord {
    let date = chrono::DateTime::from_timestamp_millis(fetched_ms)
        .expect("fixture times are in range")
        .date_naive();
    ResultRecord {
        result_id,
        stream_id,
        adapter: "IQAIR_DAILY".to_owned(),
        bucket: BUCKET.to_owned(),
        key: objects::ObjectKey::new("IQAIR_DAILY", stream_id, date, result_id).to_string(),
        fetched_at_ms: fetched_ms,
        scheduled_at_ms: fetched_ms - 250,
        started_at_ms: fetched_ms - 240,
        size: 1234,
        sha256: "ab".repeat(32),
        measurement: measurement.map(Box::new),
        run_id: uuid::Uuid::now_v7(),
        page: 0,
        records: None,
        attempts: 1,
        ends_run: true,
    }
}

pub fn parse_uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().expect("a string id")).expect("a UUID")
}

/// Ids in `values[*]["id"]`.
pub fn ids_of(values: &[Value]) -> Vec<Uuid> {
    values.iter().map(|v| parse_uuid(&v["id"])).collect()
}

pub fn unique<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> bool {
    items.iter().cloned().collect::<HashSet<_>>().len() == items.len()
}
