//! Workers, health, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::db::WorkerRow;
use crate::reconcile::ReconcileError;
use crate::stream::{Rfc3339, StreamState};

/// A worker as the API shows it.
#[derive(Debug, Serialize)]
struct WorkerView<'a> {
    id: &'a str,
    connected: bool,
    streams: i64,
    capacity: i64,
    adapters: &'a [String],
    last_seen: Rfc3339,
    connected_at: Rfc3339,
}

/// `GET /workers`.
pub(super) async fn workers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = state.db.list_workers().await?;
    let connected = state.supervisor.connected_workers();
    let views: Vec<WorkerView<'_>> = rows
        .iter()
        .map(|w: &WorkerRow| WorkerView {
            id: &w.id,
            connected: connected.contains(&w.id),
            streams: w.streams,
            capacity: w.capacity,
            adapters: &w.adapters,
            last_seen: Rfc3339(w.last_seen),
            connected_at: Rfc3339(w.connected_at),
        })
        .collect();
    Ok(Json(json!(views)))
}

/// `GET /reconciler`: the last pass of the reconciler.
pub(super) async fn reconciler(State(state): State<AppState>) -> Json<Value> {
    Json(match state.reconciler.last_pass() {
        Some(last) => json!({"last_run_at": Rfc3339(last.at_ms), "findings": last.findings}),
        None => json!({"last_run_at": null, "findings": null}),
    })
}

/// `GET /audit`: every stream's objects compared with its references (slow on big buckets; for
/// operators and `scripts/chaos.sh`), plus how many streams run: `running` of those not stopped.
pub(super) async fn audit(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = state
        .reconciler
        .audit()
        .await
        .map_err(|ReconcileError::Db(e)| ApiError::from(e))?;
    let connected = state.supervisor.connected_workers();
    let streams = state.db.list_streams().await?;
    let total = streams
        .iter()
        .filter(|s| s.state != StreamState::Stopped)
        .count();
    let running = streams
        .iter()
        .filter(|s| {
            s.state == StreamState::Running
                && s.worker_id.as_ref().is_some_and(|w| connected.contains(w))
        })
        .count();
    let mut body = json!(audit);
    body["streams_running"] = json!(running);
    body["streams_total"] = json!(total);
    Ok(Json(body))
}

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database and the object store both answer.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.db.ping().await;
    let store = state.store.check().await;
    let ready = db.is_ok() && store.is_ok();
    // The whole cause chain, so "not ready" says why (e.g. "connection refused").
    let db = match db {
        Ok(()) => "ok".to_owned(),
        Err(e) => common::error_chain(&e),
    };
    let store = match store {
        Ok(()) => "ok".to_owned(),
        Err(e) => common::error_chain(&e),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "database": db,
        "object_store": store,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
