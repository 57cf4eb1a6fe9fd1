//! Workers, health, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::streams::rfc3339;
use super::{ApiError, AppState};
use crate::db::StreamState;
use crate::reconcile::{ReconcileError, Reconciler};

/// `GET /workers`.
pub(super) async fn workers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = state.supervisor.db().list_workers().await?;
    let connected = state.supervisor.connected_workers();
    Ok(Json(Value::Array(
        rows.iter()
            .map(|w| {
                json!({
                    "id": w.id,
                    "connected": connected.contains(&w.id),
                    "streams": w.streams,
                    "capacity": w.capacity,
                    "adapters": w.adapters,
                    "last_seen": rfc3339(w.last_seen),
                    "connected_at": rfc3339(w.connected_at),
                })
            })
            .collect(),
    )))
}

/// `GET /reconciler`: the last pass of the reconciler.
pub(super) async fn reconciler(State(state): State<AppState>) -> Json<Value> {
    let last = state.reconciler.lock().map(|l| l.clone()).unwrap_or(None);
    Json(match last {
        Some((at, findings)) => json!({"last_run_at": rfc3339(at), "findings": findings}),
        None => json!({"last_run_at": null, "findings": null}),
    })
}

/// `GET /audit`: every stream's objects compared with its references (slow on big buckets; for
/// operators and `scripts/chaos.sh`), plus how many streams run: `running` of those not stopped.
pub(super) async fn audit(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let db = state.supervisor.db().clone();
    // The days only matter to the reconciler's passes, not to a full audit.
    let audit = Reconciler::new(db.clone(), state.store.clone(), 1)
        .audit()
        .await
        .map_err(|ReconcileError::Db(e)| ApiError::from(e))?;
    let connected = state.supervisor.connected_workers();
    let streams = db.list_streams().await?;
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
    let mut body = serde_json::to_value(&audit).map_err(|e| ApiError::Internal(e.to_string()))?;
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
    let db = state.supervisor.db().ping().await;
    let store = state.store.check().await;
    let ready = db.is_ok() && store.is_ok();
    // The whole cause chain, so "not ready" says why (e.g. "connection refused").
    let db = match db {
        Ok(()) => "ok".to_owned(),
        Err(e) => crate::error_chain(&e),
    };
    let store = match store {
        Ok(()) => "ok".to_owned(),
        Err(e) => crate::error_chain(&e),
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
