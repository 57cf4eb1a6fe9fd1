//! The rows of the supervisor's tables other than streams (see `crate::stream`), the same on
//! both backends.

use serde::Serialize;
use sqlx::{FromRow, Row};
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

/// A reference to one raw object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ResultRow {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub bucket: String,
    pub key: String,
    pub fetched_at: i64,
    /// When the schedule meant the run to start (its tick), epoch ms; `None` when the
    /// reconciler found the object (no tick known).
    pub scheduled_at: Option<i64>,
    /// When the run started, epoch ms; `started_at - scheduled_at` is the schedule lag.
    pub started_at: Option<i64>,
    pub size: i64,
    pub sha256: String,
    /// `ok` (reported by a worker) or `reconciled` (found in the bucket by the reconciler).
    pub status: String,
}

/// One stored reading, unique per (stream, ts). Serializes as the API shows it: times in
/// RFC 3339, without the stream id.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MeasurementRow {
    #[serde(skip)]
    pub stream_id: Uuid,
    /// `current.pollution.ts`, epoch milliseconds.
    #[serde(with = "crate::stream::rfc3339")]
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
    /// `current.weather.ts`, epoch milliseconds; `None` when missing or unparsable.
    #[serde(with = "crate::stream::rfc3339::option")]
    pub weather_ts: Option<i64>,
    pub tp: Option<f64>,
    pub pr: Option<f64>,
    pub hu: Option<f64>,
    pub ws: Option<f64>,
    pub wd: Option<f64>,
    pub ic: Option<String>,
    pub heat_index: Option<f64>,
}

/// One failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FailureRow {
    pub run_id: Uuid,
    pub stream_id: Uuid,
    pub at: i64,
    /// [`protocol::FailureClass::as_str`].
    pub class: String,
    pub message: String,
    pub stream_stopped: bool,
}
