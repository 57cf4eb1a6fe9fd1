//! `/streams`: create, list, read, change, delete, start and stop streams, all through the
//! supervisor.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::stream::{StreamInput, StreamSpec, StreamUpdate};

/// Parse a path id; a malformed one is the caller's mistake.
pub(super) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad(format!("{raw:?} is not a {what} id")))
}

#[tracing::instrument(skip_all)]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<StreamInput>,
) -> Result<impl IntoResponse, ApiError> {
    let start = input.start.unwrap_or(true);
    let spec = StreamSpec::parse(input)?;
    let row = state.supervisor.create(spec, start).await?;
    let connected = state.supervisor.connected_workers();
    Ok((StatusCode::CREATED, Json(json!(row.view(&connected)))))
}

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = state.db.list_streams().await?;
    let connected = state.supervisor.connected_workers();
    let views: Vec<_> = rows.iter().map(|r| r.view(&connected)).collect();
    Ok(Json(json!(views)))
}

pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state
        .db
        .get_stream(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))?;
    Ok(Json(json!(row.view(&state.supervisor.connected_workers()))))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<StreamUpdate>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.update(id, update).await?;
    Ok(Json(json!(row.view(&state.supervisor.connected_workers()))))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "stream")?;
    state.supervisor.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.start(id).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Started fetching from adapter {}.", row.spec.adapter()),
        "stream": row.view(&state.supervisor.connected_workers()),
    })))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.stop(id).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Stopped fetching from adapter {}.", row.spec.adapter()),
        "stream": row.view(&state.supervisor.connected_workers()),
    })))
}
