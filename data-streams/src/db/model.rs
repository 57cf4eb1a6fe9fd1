//! The rows of the supervisor's tables other than streams (see `crate::stream`), the same on
//! both backends.

use serde::Serialize;
use sqlx::{FromRow, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::CorruptRow;
use super::row::StoredRow;

/// A worker as last seen by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub capacity: i64,
    pub adapters: Vec<String>,
    pub connected: bool,
    pub last_seen: i64,
    pub connected_at: i64,
    /// How many streams are assigned to it (filled by [`Db::list_workers`](super::Db::list_workers)).
    pub streams: i64,
}

impl<'r, R: Row + StoredRow<'r>> FromRow<'r, R> for WorkerRow {
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let id = row.text("id")?;
        let adapters = serde_json::from_str(&row.text("adapters")?).map_err(|e| {
            CorruptRow::decode(format!(
                "workers.adapters of {id:?} is not a JSON list of names: {e}"
            ))
        })?;
        Ok(WorkerRow {
            id,
            capacity: row.int("capacity")?,
            adapters,
            connected: row.flag("connected")?,
            last_seen: row.int("last_seen")?,
            connected_at: row.int("connected_at")?,
            streams: row.int("streams")?,
        })
    }
}

/// What one [`Db::persist_events`](super::Db::persist_events) batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PersistStats {
    /// New references.
    pub results_inserted: u64,
    /// References already stored (a replay), or repeated within the batch.
    pub results_duplicate: u64,
    /// New readings.
    pub measurements_inserted: u64,
    /// Readings whose (stream, pollution ts) was already stored, or repeated within the batch.
    pub measurements_duplicate: u64,
    /// Readings without a parsable pollution ts: not stored (the reference is).
    pub measurements_without_ts: u64,
    /// New failed runs.
    pub failures_inserted: u64,
    /// Failed runs already stored, or repeated within the batch.
    pub failures_duplicate: u64,
    /// Results and failures for streams that no longer exist: dropped.
    pub skipped_unknown_stream: u64,
}

/// What one [`Db::persist_batch`](super::Db::persist_batch) did, and which rows it added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    pub stats: PersistStats,
    /// Result ids stored by this batch (not before).
    pub new_results: std::collections::HashSet<Uuid>,
    /// Result ids whose readings this batch stored (not before).
    pub new_readings: std::collections::HashSet<Uuid>,
    /// Run ids of the failed runs stored by this batch.
    pub new_failures: std::collections::HashSet<Uuid>,
}

/// A reference found in the object store by the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconciledRef {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub bucket: String,
    pub key: String,
    pub fetched_at: i64,
    pub size: i64,
    pub sha256: String,
}

/// A reference to one raw object. Serializes as the API shows it: times in RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, ToSchema)]
#[schema(example = json!({
    "id": "019ad1f2-7c40-7a3e-9d6b-2f0c4e1a8b55",
    "stream_id": "019ad1f0-1b2c-7d4e-8f60-1a2b3c4d5e6f",
    "bucket": "results",
    "key": "IQAIR_DAILY/stream_id=019ad1f0-1b2c-7d4e-8f60-1a2b3c4d5e6f/dt=2026-11-28/019ad1f2-7c40-7a3e-9d6b-2f0c4e1a8b55.json",
    "fetched_at": "2026-11-28T13:00:00.123Z",
    "scheduled_at": "2026-11-28T13:00:00.000Z",
    "started_at": "2026-11-28T13:00:00.004Z",
    "size": 412,
    "sha256": "5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d",
    "status": "ok"
}))]
pub struct ResultRow {
    /// The result id, a UUIDv7 (time ordered): also the object's file name.
    pub id: Uuid,
    pub stream_id: Uuid,
    pub bucket: String,
    /// The object's key in the bucket.
    pub key: String,
    /// When the response arrived.
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub fetched_at: i64,
    /// When the schedule meant the run to start (its tick); `null` when the reconciler found
    /// the object (no tick known).
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<i64>,
    /// When the run started; `started_at - scheduled_at` is the schedule lag.
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    /// Bytes.
    pub size: i64,
    /// SHA-256 of the raw bytes, lowercase hex.
    pub sha256: String,
    /// `ok` (reported by a worker) or `reconciled` (found in the bucket by the reconciler).
    pub status: String,
    /// The run the object belongs to (`GET /runs/{id}`); `null` when the reconciler found it.
    pub run_id: Option<Uuid>,
    /// Its page in the run, from 0.
    pub page: Option<i64>,
}

impl ResultRow {
    /// The reference of a pushed object, as [`Db::commit_push`](super::Db::commit_push) stores
    /// it: no tick, started when its first line arrived, no run.
    pub fn pushed(object: &super::PushObject) -> Self {
        ResultRow {
            id: object.result_id,
            stream_id: object.stream_id,
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            fetched_at: object.fetched_at,
            scheduled_at: None,
            started_at: Some(object.received_at),
            size: object.size,
            sha256: object.sha256.clone(),
            status: "ok".to_owned(),
            run_id: None,
            page: None,
        }
    }

    /// The reference a worker reported, as stored.
    pub fn reported(record: &protocol::ResultRecord) -> Self {
        ResultRow {
            id: record.result_id,
            stream_id: record.stream_id,
            bucket: record.bucket.clone(),
            key: record.key.clone(),
            fetched_at: record.fetched_at_ms,
            scheduled_at: Some(record.scheduled_at_ms),
            started_at: Some(record.started_at_ms),
            size: i64::try_from(record.size).unwrap_or(i64::MAX),
            sha256: record.sha256.clone(),
            status: "ok".to_owned(),
            run_id: Some(record.run_id),
            page: Some(i64::from(record.page)),
        }
    }
}

/// One stored reading, unique per (stream, ts). Serializes as the API shows it: times in
/// RFC 3339, without the stream id.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, ToSchema)]
#[schema(example = json!({
    "ts": "2026-03-01T10:00:00.000Z", "result_id": "019ad1f2-7c40-7a3e-9d6b-2f0c4e1a8b55",
    "city": "Los Angeles", "state": "California", "country": "USA",
    "lat": 34.0669, "lon": -118.2417, "aqius": 66.0, "mainus": "p2", "aqicn": 44.0, "maincn": "p1",
    "weather_ts": "2026-03-01T11:00:00.000Z", "tp": 6.0, "pr": 1012.0, "hu": 86.0, "ws": 4.54,
    "wd": 252.0, "ic": "04n", "heat_index": 7.0, "parser_version": 1
}))]
pub struct MeasurementRow {
    #[serde(skip)]
    pub stream_id: Uuid,
    /// `current.pollution.ts`: the reading's hour (IQAir updates hourly).
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ts: i64,
    /// The result that delivered this reading first.
    pub result_id: Uuid,
    pub city: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub aqius: Option<f64>,
    pub mainus: Option<String>,
    pub aqicn: Option<f64>,
    pub maincn: Option<String>,
    /// `current.weather.ts`; `null` when missing or unparsable.
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub weather_ts: Option<i64>,
    pub tp: Option<f64>,
    pub pr: Option<f64>,
    pub hu: Option<f64>,
    pub ws: Option<f64>,
    pub wd: Option<f64>,
    pub ic: Option<String>,
    pub heat_index: Option<f64>,
    /// The version of the adapter's parser that produced this row (`POST /reparse` rebuilds
    /// rows with the current one).
    pub parser_version: i64,
}

/// One failed run. Serializes as the API shows it: the time in RFC 3339, without the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, ToSchema)]
#[schema(example = json!({
    "run_id": "019ad1f3-0000-7000-8000-000000000001", "at": "2026-11-28T13:15:00.040Z",
    "class": "rate_limited", "message": "call_per_minute_limit_reached", "stream_stopped": false
}))]
pub struct FailureRow {
    pub run_id: Uuid,
    #[serde(skip)]
    pub stream_id: Uuid,
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// [`protocol::FailureClass::as_str`].
    pub class: String,
    pub message: String,
    pub stream_stopped: bool,
}

impl FailureRow {
    /// The failed run a worker reported, as stored.
    pub fn reported(failure: &protocol::RunFailure) -> Self {
        FailureRow {
            run_id: failure.run_id,
            stream_id: failure.stream_id,
            at: failure.at_ms,
            class: failure.class.as_str().to_owned(),
            message: failure.message.clone(),
            stream_stopped: failure.stream_stopped,
        }
    }
}
