//! `/streams`: create, list, read, change, delete, start and stop streams.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::db::{NewStream, StreamPatch, StreamRow, StreamState};
use crate::domain::{StreamInput, StreamSpec, StreamUpdate};
use crate::supervisor::now_ms;

/// Parse a path id; a malformed one is the caller's mistake.
pub(super) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad(format!("{raw:?} is not a {what} id")))
}

/// RFC 3339 in UTC with milliseconds.
pub(super) fn rfc3339(ms: i64) -> Value {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

fn status(row: &StreamRow, connected: &HashSet<String>) -> &'static str {
    match row.state {
        StreamState::Stopped => "stopped",
        StreamState::Failed => "failed",
        StreamState::Running => match &row.worker_id {
            Some(w) if connected.contains(w) => "running",
            _ => "pending",
        },
    }
}

/// The public shape of a stream; the key never leaves as anything but `***`.
pub(super) fn view(row: &StreamRow, connected: &HashSet<String>) -> Value {
    json!({
        "id": row.id,
        "adapter": row.adapter,
        "endpoint": row.endpoint,
        "secret_key": "***",
        "interval": row.interval_ms,
        "cron": row.cron,
        "timeout": row.timeout_ms,
        "bucket_name": row.bucket_name,
        "params": row.params,
        "rate_limit": {
            "per_minute": row.rate_limit.per_minute,
            "per_day": row.rate_limit.per_day,
            "per_month": row.rate_limit.per_month,
        },
        "status": status(row, connected),
        "worker_id": row.worker_id,
        "generation": row.generation,
        "last_result_at": row.last_result_at.map(rfc3339),
        "last_error": row.last_error,
        "last_error_at": row.last_error_at.map(rfc3339),
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    })
}

fn spec_of(row: &StreamRow) -> StreamSpec {
    StreamSpec {
        adapter: row.adapter.clone(),
        endpoint: row.endpoint.clone(),
        secret_key: row.secret_key.clone(),
        interval_ms: row.interval_ms.map(|v| v as u64),
        cron: row.cron.clone(),
        timeout_ms: row.timeout_ms as u64,
        bucket_name: row.bucket_name.clone(),
        params: row.params.clone(),
        rate_limit: row.rate_limit,
    }
}

async fn load(state: &AppState, raw_id: &str) -> Result<StreamRow, ApiError> {
    let id = parse_id(raw_id, "stream")?;
    state
        .supervisor
        .db()
        .get_stream(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))
}

#[tracing::instrument(skip_all)]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<StreamInput>,
) -> Result<impl IntoResponse, ApiError> {
    let start = input.start.unwrap_or(true);
    let spec = StreamSpec::parse(input)?;
    let row = state
        .supervisor
        .db()
        .insert_stream(&NewStream {
            id: Uuid::now_v7(),
            adapter: spec.adapter,
            endpoint: spec.endpoint,
            secret_key: spec.secret_key,
            interval_ms: spec.interval_ms.map(|v| v as i64),
            cron: spec.cron,
            timeout_ms: spec.timeout_ms as i64,
            bucket_name: spec.bucket_name,
            params: spec.params,
            rate_limit: spec.rate_limit,
            state: if start {
                StreamState::Running
            } else {
                StreamState::Stopped
            },
            now_ms: now_ms(),
        })
        .await?;
    tracing::info!(stream_id = %row.id, "stream created");
    let row = if start {
        state.supervisor.assign_pending().await;
        state
            .supervisor
            .db()
            .get_stream(row.id)
            .await?
            .unwrap_or(row)
    } else {
        row
    };
    let connected = state.supervisor.connected_workers();
    Ok((StatusCode::CREATED, Json(view(&row, &connected))))
}

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = state.supervisor.db().list_streams().await?;
    let connected = state.supervisor.connected_workers();
    Ok(Json(Value::Array(
        rows.iter().map(|r| view(r, &connected)).collect(),
    )))
}

pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let row = load(&state, &id).await?;
    Ok(Json(view(&row, &state.supervisor.connected_workers())))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<StreamUpdate>,
) -> Result<Json<Value>, ApiError> {
    let row = load(&state, &id).await?;
    let spec = spec_of(&row).patched(update)?;
    let patch = StreamPatch {
        endpoint: Some(spec.endpoint),
        secret_key: Some(spec.secret_key),
        interval_ms: Some(spec.interval_ms.map(|v| v as i64)),
        cron: Some(spec.cron),
        timeout_ms: Some(spec.timeout_ms as i64),
        bucket_name: Some(spec.bucket_name),
        params: Some(spec.params),
        adapter: Some(spec.adapter),
        rate_limit: Some(spec.rate_limit),
        now_ms: now_ms(),
    };
    let row = state
        .supervisor
        .db()
        .update_stream(row.id, &patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))?;
    state.supervisor.stream_updated(&row).await;
    Ok(Json(view(&row, &state.supervisor.connected_workers())))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let row = load(&state, &id).await?;
    state
        .supervisor
        .db()
        .set_state(row.id, StreamState::Stopped, None, false, now_ms())
        .await?;
    state.supervisor.stop_on_worker(&row).await;
    state.supervisor.db().delete_stream(row.id).await?;
    tracing::info!("stream deleted (its objects stay in the bucket)");
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.start_stream(id).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Started fetching from adapter {}.", row.adapter),
        "stream": view(&row, &state.supervisor.connected_workers()),
    })))
}

#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.stop_stream(id).await?;
    Ok(Json(json!({
        "success": true,
        "message": format!("Stopped fetching from adapter {}.", row.adapter),
        "stream": view(&row, &state.supervisor.connected_workers()),
    })))
}
