//! The rows and inputs of the supervisor's tables, the same on both backends.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::DbError;

/// The desired state of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// Should be running on some worker.
    Running,
    /// Stopped by a person.
    Stopped,
    /// Stopped by a bad or expired key; waits for a person.
    Failed,
}

impl StreamState {
    /// The text stored in `streams.state` and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Running => "running",
            StreamState::Stopped => "stopped",
            StreamState::Failed => "failed",
        }
    }
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state text that is not one of `running`, `stopped`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream state {0:?}: expected running, stopped or failed")]
pub struct UnknownStreamState(pub String);

impl FromStr for StreamState {
    type Err = UnknownStreamState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(StreamState::Running),
            "stopped" => Ok(StreamState::Stopped),
            "failed" => Ok(StreamState::Failed),
            other => Err(UnknownStreamState(other.to_owned())),
        }
    }
}

/// Serializes a secret as `***`: a row handed to the API or a log never shows the key.
fn redacted<S: Serializer>(_secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("***")
}

/// A stream to create. Exactly one of `interval_ms` and `cron` must be set (a CHECK holds it).
#[derive(Clone, PartialEq)]
pub struct NewStream {
    pub id: Uuid,
    pub adapter: String,
    pub endpoint: String,
    /// The external API key. `Debug` redacts it.
    pub secret_key: String,
    pub interval_ms: Option<i64>,
    /// Cron expression with seconds, evaluated in UTC.
    pub cron: Option<String>,
    pub timeout_ms: i64,
    pub bucket_name: String,
    /// Adapter parameters as the user gave them (numbers stay numbers).
    pub params: Map<String, Value>,
    /// The key's call budget (0 on a window: no limit).
    pub rate_limit: protocol::RateLimit,
    pub state: StreamState,
    /// Becomes `created_at` and `updated_at`.
    pub now_ms: i64,
}

impl fmt::Debug for NewStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewStream")
            .field("id", &self.id)
            .field("adapter", &self.adapter)
            .field("endpoint", &self.endpoint)
            .field("secret_key", &"***")
            .field("interval_ms", &self.interval_ms)
            .field("cron", &self.cron)
            .field("timeout_ms", &self.timeout_ms)
            .field("bucket_name", &self.bucket_name)
            .field("params", &self.params)
            .field("rate_limit", &self.rate_limit)
            .field("state", &self.state)
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

/// A stored stream: its configuration, desired state, assignment and health.
#[derive(Clone, PartialEq, Serialize)]
pub struct StreamRow {
    pub id: Uuid,
    pub adapter: String,
    pub endpoint: String,
    /// The external API key. `Debug` and `Serialize` both print `***`.
    #[serde(serialize_with = "redacted")]
    pub secret_key: String,
    pub interval_ms: Option<i64>,
    pub cron: Option<String>,
    pub timeout_ms: i64,
    pub bucket_name: String,
    pub params: Map<String, Value>,
    /// The key's call budget (0 on a window: no limit).
    pub rate_limit: protocol::RateLimit,
    pub state: StreamState,
    /// The worker it is assigned to, if any.
    pub worker_id: Option<String>,
    /// Bumped on every assignment; settles stale claims.
    pub generation: i64,
    pub last_result_at: Option<i64>,
    /// Set by a failure (or [`Db::set_state`](super::Db::set_state)); cleared by a newer result.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl StreamRow {
    /// The schedule a worker runs this stream on, or `None` if the stored interval is not
    /// positive (the schema's CHECKs make that unreachable).
    pub fn schedule(&self) -> Option<protocol::Schedule> {
        match (&self.cron, self.interval_ms) {
            (Some(expr), _) => Some(protocol::Schedule::Cron { expr: expr.clone() }),
            (None, Some(millis)) => u64::try_from(millis)
                .ok()
                .filter(|millis| *millis > 0)
                .map(|millis| protocol::Schedule::Interval { millis }),
            (None, None) => None,
        }
    }
}

impl fmt::Debug for StreamRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRow")
            .field("id", &self.id)
            .field("adapter", &self.adapter)
            .field("endpoint", &self.endpoint)
            .field("secret_key", &"***")
            .field("interval_ms", &self.interval_ms)
            .field("cron", &self.cron)
            .field("timeout_ms", &self.timeout_ms)
            .field("bucket_name", &self.bucket_name)
            .field("params", &self.params)
            .field("rate_limit", &self.rate_limit)
            .field("state", &self.state)
            .field("worker_id", &self.worker_id)
            .field("generation", &self.generation)
            .field("last_result_at", &self.last_result_at)
            .field("last_error", &self.last_error)
            .field("last_error_at", &self.last_error_at)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A change to a stream's configuration; `None` leaves a field as it is. For the two nullable
/// schedule fields, `Some(None)` clears and `Some(Some(x))` sets; switching from interval to
/// cron sets `cron` and clears `interval_ms` in the same patch.
#[derive(Clone, Default, PartialEq)]
pub struct StreamPatch {
    pub endpoint: Option<String>,
    /// `Debug` redacts it.
    pub secret_key: Option<String>,
    pub interval_ms: Option<Option<i64>>,
    pub cron: Option<Option<String>>,
    pub timeout_ms: Option<i64>,
    pub bucket_name: Option<String>,
    pub params: Option<Map<String, Value>>,
    pub adapter: Option<String>,
    pub rate_limit: Option<protocol::RateLimit>,
    /// Becomes `updated_at`.
    pub now_ms: i64,
}

impl fmt::Debug for StreamPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamPatch")
            .field("endpoint", &self.endpoint)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("interval_ms", &self.interval_ms)
            .field("cron", &self.cron)
            .field("timeout_ms", &self.timeout_ms)
            .field("bucket_name", &self.bucket_name)
            .field("params", &self.params)
            .field("adapter", &self.adapter)
            .field("rate_limit", &self.rate_limit)
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

/// `streams` as stored, before the JSON and state columns are decoded.
#[derive(sqlx::FromRow)]
pub(super) struct StreamRecord {
    id: Uuid,
    adapter: String,
    endpoint: String,
    secret_key: String,
    interval_ms: Option<i64>,
    cron: Option<String>,
    timeout_ms: i64,
    bucket_name: String,
    params: String,
    rate_per_minute: i64,
    rate_per_day: i64,
    rate_per_month: i64,
    state: String,
    worker_id: Option<String>,
    generation: i64,
    last_result_at: Option<i64>,
    last_error: Option<String>,
    last_error_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

/// The column list matching [`StreamRecord`], as a literal for `concat!`.
macro_rules! stream_columns {
    () => {
        "id, adapter, endpoint, secret_key, interval_ms, cron, timeout_ms, bucket_name, params, \
         rate_per_minute, rate_per_day, rate_per_month, state, worker_id, generation, last_result_at, last_error, last_error_at, created_at, \
         updated_at"
    };
}
pub(super) use stream_columns;

impl TryFrom<StreamRecord> for StreamRow {
    type Error = DbError;

    fn try_from(r: StreamRecord) -> Result<Self, DbError> {
        let state = r
            .state
            .parse()
            .map_err(|e: UnknownStreamState| DbError::Corrupt {
                what: format!("streams.state of {}: {e}", r.id),
            })?;
        let params = serde_json::from_str(&r.params).map_err(|e| DbError::Corrupt {
            what: format!("streams.params of {} is not a JSON object: {e}", r.id),
        })?;
        let window = |value: i64, column: &str| {
            u32::try_from(value).map_err(|_| DbError::Corrupt {
                what: format!("streams.{column} of {} is {value}, not a call count", r.id),
            })
        };
        let rate_limit = protocol::RateLimit {
            per_minute: window(r.rate_per_minute, "rate_per_minute")?,
            per_day: window(r.rate_per_day, "rate_per_day")?,
            per_month: window(r.rate_per_month, "rate_per_month")?,
        };
        Ok(StreamRow {
            id: r.id,
            adapter: r.adapter,
            endpoint: r.endpoint,
            secret_key: r.secret_key,
            interval_ms: r.interval_ms,
            cron: r.cron,
            timeout_ms: r.timeout_ms,
            bucket_name: r.bucket_name,
            params,
            rate_limit,
            state,
            worker_id: r.worker_id,
            generation: r.generation,
            last_result_at: r.last_result_at,
            last_error: r.last_error,
            last_error_at: r.last_error_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

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

/// `workers` as stored, before `adapters` is decoded.
#[derive(sqlx::FromRow)]
pub(super) struct WorkerRecord {
    id: String,
    capacity: i64,
    adapters: String,
    connected: bool,
    last_seen: i64,
    connected_at: i64,
    streams: i64,
}

impl TryFrom<WorkerRecord> for WorkerRow {
    type Error = DbError;

    fn try_from(r: WorkerRecord) -> Result<Self, DbError> {
        let adapters = serde_json::from_str(&r.adapters).map_err(|e| DbError::Corrupt {
            what: format!(
                "workers.adapters of {:?} is not a JSON list of names: {e}",
                r.id
            ),
        })?;
        Ok(WorkerRow {
            id: r.id,
            capacity: r.capacity,
            adapters,
            connected: r.connected,
            last_seen: r.last_seen,
            connected_at: r.connected_at,
            streams: r.streams,
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

/// One stored reading, unique per (stream, ts).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MeasurementRow {
    pub stream_id: Uuid,
    /// The result that delivered this reading first.
    pub result_id: Uuid,
    /// `current.pollution.ts`, epoch milliseconds.
    pub ts: i64,
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

/// An ISO-8601 UTC timestamp as IQAir sends it (`2026-11-22T13:00:00.000Z`, fraction optional)
/// in epoch milliseconds; `None` if it does not parse.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|at| at.timestamp_millis())
}
