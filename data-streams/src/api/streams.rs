//! `/streams`: create, list, read, change, delete, start and stop streams, all through the
//! supervisor.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::docs::{BodyErrors, CommonErrors, NotFoundError};
use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::stream::{StreamInput, StreamRow, StreamSpec, StreamUpdate, StreamView};

/// Parse a path id; a malformed one is the caller's mistake.
pub(super) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad(format!("{raw:?} is not a {what} id")))
}

/// The stream as the API shows it, given the workers connected now.
fn shown(state: &AppState, row: &StreamRow) -> Response {
    Json(row.view(&state.supervisor.connected_workers())).into_response()
}

/// The answer to start and stop, in the original shape.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Command<'a> {
    success: bool,
    /// e.g. `Started fetching from adapter IQAIR_DAILY.`
    message: String,
    stream: StreamView<'a>,
}

/// Create a stream; it starts at once (unless `"start": false`) on a worker that has its
/// adapter and room.
#[utoipa::path(
    post, path = "/streams", operation_id = "create_stream", tag = "streams",
    request_body(content = StreamInput, example = json!(crate::api::docs::example_stream())),
    responses(
        (status = 201, description = "Created; `secret_key` shows as `***`", body = StreamView),
        CommonErrors, BodyErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<StreamInput>,
) -> Result<Response, ApiError> {
    let start = input.start.unwrap_or(true);
    let spec = StreamSpec::parse(input)?;
    plan_sweep(&state, &spec).await?;
    let row = state.supervisor.create(spec, start).await?;
    Ok((StatusCode::CREATED, shown(&state, &row)).into_response())
}

/// Every stream, oldest first, with its status.
#[utoipa::path(
    get, path = "/streams", operation_id = "list_streams", tag = "streams",
    responses(
        (status = 200, description = "Every stream", body = Vec<StreamView>),
        (status = 401, description = "No valid token or session", body = super::docs::ErrorBody),
        (status = 503, description = "The database is not reachable", body = super::docs::ErrorBody),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = state.db.list_streams().await?;
    let connected = state.supervisor.connected_workers();
    let views: Vec<StreamView<'_>> = rows.iter().map(|r| r.view(&connected)).collect();
    Ok(Json(views).into_response())
}

/// One stream.
#[utoipa::path(
    get, path = "/streams/{id}", operation_id = "get_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "The stream", body = StreamView), CommonErrors, NotFoundError)
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state
        .db
        .get_stream(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))?;
    Ok(shown(&state, &row))
}

/// Change any subset of a stream's fields; the stream is validated as a whole and its worker
/// gets the new config at the end of the current interval. Setting `interval` drops `cron`
/// and the other way round.
#[utoipa::path(
    patch, path = "/streams/{id}", operation_id = "update_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    request_body(content = StreamUpdate, example = json!({"interval": 600000})),
    responses((status = 200, description = "The changed stream", body = StreamView), CommonErrors, NotFoundError, BodyErrors)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<StreamUpdate>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    // A sweep is checked against its key's budget as patched, before anything changes.
    if let Some(current) = state.db.get_stream(id).await? {
        let patched = current.spec.patched(update.clone())?;
        plan_sweep(&state, &patched).await?;
    }
    let row = state.supervisor.update(id, update).await?;
    Ok(shown(&state, &row))
}

/// For a sweep (an IQAir stream naming a country or state without a city): count its cities
/// through IQAir's listings and refuse it when its key's limits cannot carry every city each
/// run. Other streams pass untouched.
async fn plan_sweep(state: &AppState, spec: &StreamSpec) -> Result<(), ApiError> {
    if spec.adapter() != catalogue::iqair::NAME {
        return Ok(());
    }
    state
        .sweeps
        .plan(
            spec.endpoint(),
            spec.secret_key(),
            spec.params(),
            spec.schedule(),
            spec.rate_limit(),
        )
        .await?;
    Ok(())
}

/// Stop a stream on its worker and delete it with its references, readings and failed runs.
/// Its raw objects stay in the bucket.
#[utoipa::path(
    delete, path = "/streams/{id}", operation_id = "delete_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 204, description = "Deleted"), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "stream")?;
    state.supervisor.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a stream (again); clears a past error. Idempotent.
#[utoipa::path(
    post, path = "/streams/{id}/start", operation_id = "start_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "Running or pending", body = Command), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.start(id).await?;
    let command = Command {
        success: true,
        message: format!("Started fetching from adapter {}.", row.spec.adapter()),
        stream: row.view(&state.supervisor.connected_workers()),
    };
    Ok(Json(command).into_response())
}

/// Stop a stream on its worker. Idempotent.
#[utoipa::path(
    post, path = "/streams/{id}/stop", operation_id = "stop_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "Stopped", body = Command), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.stop(id).await?;
    let command = Command {
        success: true,
        message: format!("Stopped fetching from adapter {}.", row.spec.adapter()),
        stream: row.view(&state.supervisor.connected_workers()),
    };
    Ok(Json(command).into_response())
}
