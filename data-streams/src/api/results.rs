//! Reading what was stored: references (keyset paginated), raw objects byte for byte,
//! measurements by time, and failed runs.

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::docs::{CommonErrors, NotFoundError};
use super::streams::parse_id;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::db::{FailureRow, MeasurementRow, ResultRow};

/// The stream of a `/streams/{id}/…` read route: its id from the path, checked to exist.
pub(super) struct KnownStream(pub(super) Uuid);

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

/// A page of a newest-first list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Page {
    /// Items per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` of the previous page (empty: the first page).
    #[param(value_type = Option<String>, pattern = "^([0-9a-fA-F-]{32,36})?$")]
    after: Option<String>,
}

impl Page {
    /// The page size and the cursor (the id of a `cursor`, named so in errors).
    pub(super) fn parse(&self, cursor: &str) -> Result<(i64, Option<Uuid>), ApiError> {
        let limit = limit(self.limit.as_deref(), 100, 1000)?;
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(parse_id(raw, cursor)?),
        };
        Ok((limit, after))
    }
}

/// A time window of readings.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Window {
    /// From this time on (RFC 3339, or epoch milliseconds), inclusive.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Up to this time (RFC 3339, or epoch milliseconds), inclusive.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Readings at most, 1 to 10 000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    limit: Option<String>,
}

pub(super) fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
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

/// RFC 3339 or epoch milliseconds.
pub(super) fn instant(raw: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(Some(ms));
    }
    common::parse_rfc3339_ms(raw).map(Some).ok_or_else(|| {
        ApiError::bad(format!(
            "{name} must be RFC 3339 (2026-11-22T13:00:00Z) or epoch milliseconds"
        ))
    })
}

/// References, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ResultsPage {
    items: Vec<ResultRow>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<Uuid>,
}

/// Readings, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MeasurementsPage {
    items: Vec<MeasurementRow>,
}

/// Failed runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FailuresPage {
    items: Vec<FailureRow>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<Uuid>,
}

/// A stream's references, newest first, keyset paginated: rows stored while a client pages
/// are newer, so they never shift the pages still to come.
#[utoipa::path(
    get, path = "/streams/{id}/results", operation_id = "list_results", tag = "data",
    params(("id" = Uuid, Path, description = "The stream"), Page),
    responses((status = 200, description = "A page of references", body = ResultsPage), CommonErrors, NotFoundError)
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<ResultsPage>, ApiError> {
    let (limit, after) = page.parse("result (cursor)")?;
    let (items, next) = state.db.list_results(stream_id, limit, after).await?;
    Ok(Json(ResultsPage { items, next }))
}

/// The raw object of a result, exactly as the API sent it.
#[utoipa::path(
    get, path = "/results/{id}/raw", operation_id = "get_raw_object", tag = "data",
    params(("id" = Uuid, Path, description = "The result")),
    responses(
        (status = 200, description = "The bytes as fetched; `ETag` is their SHA-256",
         content_type = "application/json", body = Object),
        CommonErrors, NotFoundError,
    )
)]
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

/// A stream's readings in a time window, one per pollution hour, oldest first.
#[utoipa::path(
    get, path = "/streams/{id}/measurements", operation_id = "list_measurements", tag = "data",
    params(("id" = Uuid, Path, description = "The stream"), Window),
    responses((status = 200, description = "Readings", body = MeasurementsPage), CommonErrors, NotFoundError)
)]
pub(super) async fn measurements(
    State(state): State<AppState>,
    ApiQuery(window): ApiQuery<Window>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<MeasurementsPage>, ApiError> {
    let from = instant(window.from.as_deref(), "from")?;
    let to = instant(window.to.as_deref(), "to")?;
    let limit = limit(window.limit.as_deref(), 1000, 10_000)?;
    let items = state
        .db
        .list_measurements(stream_id, from, to, limit)
        .await?;
    Ok(Json(MeasurementsPage { items }))
}

/// A stream's failed runs, newest first, with their class.
#[utoipa::path(
    get, path = "/streams/{id}/failures", operation_id = "list_failures", tag = "data",
    params(("id" = Uuid, Path, description = "The stream"), Page),
    responses((status = 200, description = "Failed runs", body = FailuresPage), CommonErrors, NotFoundError)
)]
pub(super) async fn failures(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<FailuresPage>, ApiError> {
    let (limit, after) = page.parse("run (cursor)")?;
    let (items, next) = state.db.list_failures_page(stream_id, limit, after).await?;
    Ok(Json(FailuresPage { items, next }))
}
