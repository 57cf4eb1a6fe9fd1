//! `POST /reparse` (rebuild readings from the raw objects with the current parser, as a
//! background job) and `/jobs`: the jobs and their progress.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::docs::{BodyErrors, CommonErrors, NotFoundError};
use super::results::Page;
use super::streams::parse_id;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::db::{JobRow, JobScope};

/// What to re-parse: one stream, every stream of one adapter, or everything (neither); and
/// optionally only the results fetched in `[from, to)`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"stream_id": "019ad1f0-1b2c-7d4e-8f60-1a2b3c4d5e6f",
    "from": "2026-11-01T00:00:00Z", "to": "2026-11-28T00:00:00Z"}))]
pub(super) struct ReparseInput {
    /// One stream.
    stream_id: Option<Uuid>,
    /// Every stream of this adapter, e.g. `IQAIR_DAILY`.
    adapter: Option<String>,
    /// Results fetched from this time on (RFC 3339), inclusive.
    #[schema(format = DateTime)]
    from: Option<String>,
    /// Results fetched before this time (RFC 3339), exclusive.
    #[schema(format = DateTime)]
    to: Option<String>,
}

/// The scope of a job as given.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ScopeView {
    /// One stream, or `null`.
    stream_id: Option<Uuid>,
    /// One adapter, or `null` (with no stream either: everything).
    adapter: Option<String>,
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    from: Option<i64>,
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    to: Option<i64>,
}

/// How far a job got.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProgressView {
    /// References in scope when the job was made.
    objects_total: i64,
    /// References processed (read, or counted under an error class).
    objects_read: i64,
    /// Readings inserted or replaced with the job's parser version.
    rows_written: i64,
    /// Readings left alone: their (stream, ts) belongs to an earlier result (the first wins).
    rows_skipped: i64,
    /// Per class, references that gave no reading: `object_missing`, `store_error`,
    /// `unparseable`, `no_pollution_ts`, `no_parser`.
    errors: BTreeMap<String, i64>,
}

/// A background job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "019ad200-0000-7000-8000-000000000001", "kind": "reparse", "state": "running",
    "scope": {"stream_id": null, "adapter": "IQAIR_DAILY", "from": null, "to": null},
    "parser_version": 2,
    "progress": {"objects_total": 1200, "objects_read": 350, "rows_written": 340,
                 "rows_skipped": 8, "errors": {"unparseable": 2}},
    "cursor": "019ad1f2-7c40-7a3e-9d6b-2f0c4e1a8b55", "last_error": null,
    "created_at": "2026-11-28T13:00:00.000Z", "updated_at": "2026-11-28T13:00:07.000Z",
    "finished_at": null
}))]
pub(super) struct JobView {
    /// A UUIDv7.
    id: Uuid,
    /// `reparse`.
    kind: String,
    /// `queued`, `running` (also while it waits for the object store), `done` or `failed`.
    state: &'static str,
    scope: ScopeView,
    /// The parser version the rebuilt rows get.
    parser_version: i64,
    progress: ProgressView,
    /// The last result processed; after a restart the job resumes after it.
    cursor: Option<Uuid>,
    /// Why the job failed, or what it is waiting for.
    last_error: Option<String>,
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "crate::stream::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
    #[serde(with = "crate::stream::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    finished_at: Option<i64>,
}

impl From<JobRow> for JobView {
    fn from(job: JobRow) -> Self {
        JobView {
            id: job.id,
            kind: job.kind,
            state: job.state.as_str(),
            scope: ScopeView {
                stream_id: job.scope.stream_id,
                adapter: job.scope.adapter,
                from: job.scope.from_ms,
                to: job.scope.to_ms,
            },
            parser_version: job.parser_version,
            progress: ProgressView {
                objects_total: job.objects_total,
                objects_read: job.objects_read,
                rows_written: job.rows_written,
                rows_skipped: job.rows_skipped,
                errors: job.errors,
            },
            cursor: job.cursor,
            last_error: job.last_error,
            created_at: job.created_at,
            updated_at: job.updated_at,
            finished_at: job.finished_at,
        }
    }
}

/// Jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobsPage {
    items: Vec<JobView>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<Uuid>,
}

/// An RFC 3339 time of the body, or a problem naming the field.
fn body_time(raw: Option<&str>, name: &str, problems: &mut Vec<String>) -> Option<i64> {
    let raw = raw?;
    let parsed = common::parse_rfc3339_ms(raw);
    if parsed.is_none() {
        problems.push(format!(
            "{name} must be an RFC 3339 time (2026-11-22T13:00:00Z), not {raw:?}"
        ));
    }
    parsed
}

/// Re-parse the raw objects of a stream, an adapter or everything with the current parser,
/// in the background: every reading in scope is rebuilt (the first result per stream and
/// pollution hour wins, as when it was stored) and carries the current parser version. The job
/// resumes after a restart and reads at most `REPARSE_OBJECTS_PER_SECOND` objects a second.
#[utoipa::path(
    post, path = "/reparse", operation_id = "reparse", tag = "data",
    request_body(content = ReparseInput, example = json!({"adapter": "IQAIR_DAILY"})),
    responses(
        (status = 202, description = "Queued; `Location` is the job", body = JobView,
         headers(("Location" = String, description = "`/jobs/{id}`"))),
        CommonErrors, NotFoundError, BodyErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn reparse(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ReparseInput>,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    if let Some(adapter) = input.adapter.as_deref() {
        if catalogue::source(adapter).is_none() {
            problems.push(format!(
                "adapter {adapter:?} is not one of {}",
                catalogue::names().join(", ")
            ));
        }
    }
    let from_ms = body_time(input.from.as_deref(), "from", &mut problems);
    let to_ms = body_time(input.to.as_deref(), "to", &mut problems);
    if let (Some(from), Some(to)) = (from_ms, to_ms) {
        if from >= to {
            problems.push("from must be before to".to_owned());
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(
            "the re-parse request is not valid".into(),
            problems,
        ));
    }
    if let Some(stream_id) = input.stream_id {
        let stream = state
            .db
            .get_stream(stream_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("stream {stream_id} not found")))?;
        if let Some(adapter) = input.adapter.as_deref() {
            if stream.spec.adapter != adapter {
                return Err(ApiError::Invalid(
                    "the re-parse request is not valid".into(),
                    vec![format!(
                        "stream {stream_id} uses adapter {:?}, not {adapter:?}",
                        stream.spec.adapter
                    )],
                ));
            }
        }
    }
    let job = state
        .reparse
        .enqueue(JobScope {
            stream_id: input.stream_id,
            adapter: input.adapter,
            from_ms,
            to_ms,
        })
        .await?;
    let location = format!("/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(JobView::from(job)),
    )
        .into_response())
}

/// One job and its progress.
#[utoipa::path(
    get, path = "/jobs/{id}", operation_id = "get_job", tag = "data",
    params(("id" = Uuid, Path, description = "The job")),
    responses((status = 200, description = "The job", body = JobView), CommonErrors, NotFoundError)
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id, "job")?;
    let job = state
        .db
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    Ok(Json(job.into()))
}

/// Every job, newest first, keyset paginated.
#[utoipa::path(
    get, path = "/jobs", operation_id = "list_jobs", tag = "data",
    params(Page),
    responses((status = 200, description = "A page of jobs", body = JobsPage), CommonErrors)
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<JobsPage>, ApiError> {
    let (limit, after) = page.parse("job (cursor)")?;
    let (jobs, next) = state.db.list_jobs(limit, after).await?;
    Ok(Json(JobsPage {
        items: jobs.into_iter().map(JobView::from).collect(),
        next,
    }))
}
