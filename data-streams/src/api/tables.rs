//! `GET /tables` (the Parquet files of the warehouse tables) and `POST /tables/compact` (write a
//! day now, the open day included): [`crate::tables`].

use axum::extract::State;
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::docs::{BodyErrors, CommonErrors};
use super::{ApiError, ApiJson, AppState};
use crate::db::TableFile;
use crate::stream::Rfc3339;
use crate::tables::{Outcome, TablesError};

/// One day's file of one adapter in one bucket.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "bucket": "results", "adapter": "IQAIR_DAILY", "day": "2026-11-28",
    "key": "_tables/measurements/adapter=IQAIR_DAILY/dt=2026-11-28/part-0.parquet",
    "rows": 24, "bytes": 9120, "parser_versions": [1], "compacted_at": "2026-11-29T00:10:00.000Z"
}))]
pub(super) struct TableFileView {
    bucket: String,
    adapter: String,
    /// The UTC day, `YYYY-MM-DD` (the `dt=` partition).
    day: String,
    /// The object's key in `bucket`.
    key: String,
    rows: i64,
    bytes: i64,
    /// The parser versions of the rows, ascending.
    parser_versions: Vec<i64>,
    #[schema(value_type = String, format = DateTime)]
    compacted_at: Rfc3339,
}

impl From<TableFile> for TableFileView {
    fn from(f: TableFile) -> Self {
        TableFileView {
            bucket: f.bucket,
            adapter: f.adapter,
            day: f.day,
            key: f.key,
            rows: f.rows,
            bytes: f.bytes,
            parser_versions: f.parser_versions,
            compacted_at: Rfc3339(f.compacted_at),
        }
    }
}

/// The files that exist.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TableList {
    /// Newest day first.
    files: Vec<TableFileView>,
}

/// Which day to write.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"day": "2026-11-28", "adapter": "IQAIR_DAILY"}))]
pub(super) struct CompactRequest {
    /// The UTC day, `YYYY-MM-DD`, not after today; default today (the open day).
    #[schema(format = Date)]
    day: Option<String>,
    /// Only this adapter; default every adapter with readings.
    adapter: Option<String>,
}

/// A file removed because its day has no readings left in that bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RemovedView {
    bucket: String,
    adapter: String,
    day: String,
    key: String,
}

/// What a compaction did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CompactAnswer {
    day: String,
    /// The files written (each replaced the day's earlier file, if any).
    written: Vec<TableFileView>,
    removed: Vec<RemovedView>,
}

/// The Parquet files of the warehouse tables: one per bucket, adapter and UTC day, at
/// `<bucket>/_tables/measurements/adapter=<adapter>/dt=<day>/part-0.parquet`.
#[utoipa::path(
    get, path = "/tables", operation_id = "list_tables", tag = "data",
    responses(
        (status = 200, description = "The files", body = TableList),
        CommonErrors,
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<TableList>, ApiError> {
    let files = state.tables.list().await?;
    Ok(Json(TableList {
        files: files.into_iter().map(TableFileView::from).collect(),
    }))
}

/// Writes one day's readings as Parquet now, in every bucket that has them, replacing the
/// day's files atomically (closed days are also written by the supervisor's own loop; the open
/// day only here). Answers what was written.
#[utoipa::path(
    post, path = "/tables/compact", operation_id = "compact_tables", tag = "data",
    request_body = CompactRequest,
    responses(
        (status = 200, description = "What was written and removed", body = CompactAnswer),
        CommonErrors,
        BodyErrors,
    )
)]
pub(super) async fn compact(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CompactRequest>,
) -> Result<Json<CompactAnswer>, ApiError> {
    let today = Utc::now().date_naive();
    let mut problems = Vec::new();
    let day = match request.day.as_deref() {
        None => Some(today),
        Some(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(day) if day > today => {
                problems.push(format!("day {text} is after today ({today}, UTC)"));
                None
            }
            Ok(day) => Some(day),
            Err(_) => {
                problems.push(format!("day {text:?} is not a date: use YYYY-MM-DD"));
                None
            }
        },
    };
    if let Some(adapter) = request.adapter.as_deref() {
        if catalogue::source(adapter).is_none() {
            problems.push(format!(
                "adapter {adapter:?} is not in the catalogue (known: {})",
                catalogue::names().join(", ")
            ));
        }
    }
    let Some(day) = day.filter(|_| problems.is_empty()) else {
        return Err(ApiError::Invalid(
            "the compaction request is not valid".into(),
            problems,
        ));
    };
    let outcomes = state
        .tables
        .compact_day(request.adapter.as_deref(), day)
        .await
        .map_err(|err| match err {
            TablesError::Db(e) => ApiError::from(e),
            TablesError::Store(e) if e.is_transient() => {
                ApiError::Unavailable("the object store is not reachable; try again".into())
            }
            other => ApiError::internal(other),
        })?;
    let mut answer = CompactAnswer {
        day: day.format("%Y-%m-%d").to_string(),
        written: Vec::new(),
        removed: Vec::new(),
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Written(file) => answer.written.push(file.into()),
            Outcome::Removed {
                bucket,
                adapter,
                day,
                key,
            } => answer.removed.push(RemovedView {
                bucket,
                adapter,
                day,
                key,
            }),
        }
    }
    Ok(Json(answer))
}
