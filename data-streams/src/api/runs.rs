//! Runs as records: `GET /streams/{id}/runs` (newest first, keyset paginated, filterable by
//! status: the failures list is `?status=failed`) and `GET /runs/{id}` with its pages'
//! references.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::docs::{CommonErrors, NotFoundError};
use super::results::{limit, KnownStream};
use super::streams::parse_id;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::db::{ResultRow, RunRow, RUN_STATUSES};

/// A page of runs, and which.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    /// Runs per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` of the previous page (empty: the first page).
    #[param(value_type = Option<String>, pattern = "^([0-9a-fA-F-]{32,36})?$")]
    after: Option<String>,
    /// Only runs with this status.
    #[param(value_type = Option<String>, pattern = "^(running|queued|processing|stored|failed|truncated)?$")]
    status: Option<String>,
}

/// Runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunsPage {
    items: Vec<RunRow>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<Uuid>,
}

/// One run and the references of its pages.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunDetail {
    #[serde(flatten)]
    run: RunRow,
    /// The objects the run stored, in page order (`GET /results/{id}/raw` reads each).
    pages_stored: Vec<ResultRow>,
}

/// A stream's runs, newest first: when each ran, how it ended, what it stored.
#[utoipa::path(
    get, path = "/streams/{id}/runs", operation_id = "list_runs", tag = "data",
    params(("id" = Uuid, Path, description = "The stream"), RunsQuery),
    responses((status = 200, description = "Runs", body = RunsPage), CommonErrors, NotFoundError)
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunsQuery>,
    KnownStream(stream_id): KnownStream,
) -> Result<Json<RunsPage>, ApiError> {
    let limit = limit(query.limit.as_deref(), 100, 1000)?;
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(parse_id(raw, "run (cursor)")?),
    };
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) if RUN_STATUSES.contains(&s) => Some(s),
        Some(s) => {
            return Err(ApiError::bad(format!(
                "status {s:?} is not a run status; one of {}",
                RUN_STATUSES.join(", ")
            )))
        }
    };
    let (items, next) = state.db.list_runs(stream_id, limit, after, status).await?;
    Ok(Json(RunsPage { items, next }))
}

/// One run, with the references of the pages it stored.
#[utoipa::path(
    get, path = "/runs/{id}", operation_id = "get_run", tag = "data",
    params(("id" = Uuid, Path, description = "The run")),
    responses((status = 200, description = "The run", body = RunDetail), CommonErrors, NotFoundError)
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = parse_id(&raw, "run")?;
    let Some(run) = state.db.get_run(id).await? else {
        return Err(ApiError::NotFound(format!("run {id} not found")));
    };
    let pages_stored = state.db.run_pages(id).await?;
    Ok(Json(RunDetail { run, pages_stored }))
}
