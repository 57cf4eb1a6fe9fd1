//! Reading what was stored: references (keyset paginated), raw objects byte for byte,
//! measurements by time, and failed runs.

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::streams::parse_id;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::db::{FailureRow, ResultRow};
use crate::stream::Rfc3339;

/// The stream of a `/streams/{id}/…` read route: its id from the path, checked to exist.
pub(super) struct KnownStream(Uuid);

impl FromRequestParts<AppState> for KnownStream {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiPath(raw) = ApiPath::<String>::from_request_parts(parts, state).await?;
        let id = parse_id(&raw, "stream")?;
        match state.db.get_stream(id).await? {
            Some(_) => Ok(KnownStream(id)),
            None => Err(ApiError::NotFound(format!("stream {id} not found"))),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    limit: Option<String>,
    after: Option<String>,
}

fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "limit must be a whole number from 1 to {max}"
            ))),
        },
    }
}

/// A reference as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ResultView<'a> {
    id: Uuid,
    stream_id: Uuid,
    bucket: &'a str,
    key: &'a str,
    fetched_at: Rfc3339,
    /// The run's tick; `null` for references the reconciler found.
    scheduled_at: Option<Rfc3339>,
    started_at: Option<Rfc3339>,
    size: i64,
    sha256: &'a str,
    status: &'a str,
}

impl<'a> From<&'a ResultRow> for ResultView<'a> {
    fn from(r: &'a ResultRow) -> Self {
        ResultView {
            id: r.id,
            stream_id: r.stream_id,
            bucket: &r.bucket,
            key: &r.key,
            fetched_at: Rfc3339(r.fetched_at),
            scheduled_at: r.scheduled_at.map(Rfc3339),
            started_at: r.started_at.map(Rfc3339),
            size: r.size,
            sha256: &r.sha256,
            status: &r.status,
        }
    }
}

/// `GET /streams/{id}/results?limit=&after=`: newest first; `next` is the cursor for `after`.
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(page.limit.as_deref(), 100, 1000)?;
    let after = match page.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(parse_id(raw, "result (cursor)")?),
    };
    let (rows, next) = state.db.list_results(stream_id, limit, after).await?;
    let items: Vec<ResultView<'_>> = rows.iter().map(ResultView::from).collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

/// `GET /results/{id}/raw`: the object exactly as the API sent it.
pub(super) async fn raw(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "result")?;
    let row = state
        .db
        .get_result(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("result {id} not found")))?;
    match state.store.get(&row.bucket, &row.key).await {
        Ok(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::ETAG, format!("\"{}\"", row.sha256)),
            ],
            bytes,
        )),
        // A missing bucket (deleted, or a folder removed by hand) loses the object just the same.
        Err(objects::StoreError::NoSuchKey { .. } | objects::StoreError::NoSuchBucket { .. }) => {
            Err(ApiError::NotFound(format!(
                "result {id} is indexed but its object {}/{} is missing from the store",
                row.bucket, row.key
            )))
        }
        Err(err) if err.is_transient() => Err(ApiError::Unavailable(format!(
            "the object store is not reachable: {err}"
        ))),
        Err(err) => Err(ApiError::internal(err)),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Window {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

/// RFC 3339 or epoch milliseconds.
fn instant(raw: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad(format!(
                "{name} must be RFC 3339 (2026-11-22T13:00:00Z) or epoch milliseconds"
            ))
        })
}

/// A failed run as the API shows it.
#[derive(Debug, Serialize)]
struct FailureView<'a> {
    run_id: Uuid,
    at: Rfc3339,
    class: &'a str,
    message: &'a str,
    stream_stopped: bool,
}

impl<'a> From<&'a FailureRow> for FailureView<'a> {
    fn from(f: &'a FailureRow) -> Self {
        FailureView {
            run_id: f.run_id,
            at: Rfc3339(f.at),
            class: &f.class,
            message: &f.message,
            stream_stopped: f.stream_stopped,
        }
    }
}

/// `GET /streams/{id}/measurements?from=&to=&limit=`: one reading per pollution hour, oldest first.
pub(super) async fn measurements(
    State(state): State<AppState>,
    ApiQuery(window): ApiQuery<Window>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<Value>, ApiError> {
    let from = instant(window.from.as_deref(), "from")?;
    let to = instant(window.to.as_deref(), "to")?;
    let limit = limit(window.limit.as_deref(), 1000, 10_000)?;
    let rows = state
        .db
        .list_measurements(stream_id, from, to, limit)
        .await?;
    Ok(Json(json!({ "items": rows })))
}

/// `GET /streams/{id}/failures?limit=`: failed runs, newest first.
pub(super) async fn failures(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(page.limit.as_deref(), 100, 1000)?;
    let rows = state.db.list_failures(stream_id, limit).await?;
    let items: Vec<FailureView<'_>> = rows.iter().map(FailureView::from).collect();
    Ok(Json(json!({ "items": items })))
}
