//! Workers, the reconciler, health, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::docs::ErrorBody;
use super::{ApiError, AppState};
use crate::reconcile::{Audit, Findings, ReconcileError};
use crate::stream::{Rfc3339, StreamState};

/// A worker as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerView {
    id: String,
    /// Connected to this supervisor now.
    connected: bool,
    /// Streams assigned to it.
    streams: i64,
    /// The most streams it takes.
    capacity: i64,
    adapters: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    last_seen: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    connected_at: Rfc3339,
}

/// Every worker ever seen, with whether it is connected now.
#[utoipa::path(
    get, path = "/workers", operation_id = "list_workers", tag = "system",
    responses(
        (status = 200, description = "Workers, by id", body = Vec<WorkerView>),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 503, description = "The database is not reachable", body = ErrorBody),
    )
)]
pub(super) async fn workers(
    State(state): State<AppState>,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let rows = state.db.list_workers().await?;
    let connected = state.supervisor.connected_workers();
    let views = rows
        .into_iter()
        .map(|w| WorkerView {
            connected: connected.contains(&w.id),
            id: w.id,
            streams: w.streams,
            capacity: w.capacity,
            adapters: w.adapters,
            last_seen: Rfc3339(w.last_seen),
            connected_at: Rfc3339(w.connected_at),
        })
        .collect();
    Ok(Json(views))
}

/// The reconciler's last pass.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReconcilerView {
    /// When it ended; `null` before the first pass.
    #[schema(value_type = Option<String>, format = DateTime)]
    last_run_at: Option<Rfc3339>,
    findings: Option<Findings>,
}

/// What the reconciler found on its last pass (it runs every `RECONCILE_INTERVAL_MS` and soon
/// after a worker reconnects).
#[utoipa::path(
    get, path = "/reconciler", operation_id = "get_reconciler", tag = "system",
    responses(
        (status = 200, description = "The last pass", body = ReconcilerView),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub(super) async fn reconciler(State(state): State<AppState>) -> Json<ReconcilerView> {
    let last = state.reconciler.last_pass();
    Json(ReconcilerView {
        last_run_at: last.as_ref().map(|l| Rfc3339(l.at_ms)),
        findings: last.map(|l| l.findings),
    })
}

/// An audit pass, now: every stream's whole `RECONCILE_DAYS` window listed (not only what is
/// newer than its watermark), missing references inserted, and references whose object is gone
/// counted (`dangling`). Slow on big buckets; the periodic pass waits while it runs. Its
/// findings (mode `audit`) become the last pass; an answer that takes longer than the request
/// timeout (408) does not stop it, and `GET /reconciler` shows them when it ends.
#[utoipa::path(
    post, path = "/reconciler/audit", operation_id = "run_reconciler_audit", tag = "system",
    responses(
        (status = 200, description = "The audit pass that just ran", body = ReconcilerView),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 503, description = "The database is not reachable", body = ErrorBody),
    )
)]
pub(super) async fn reconciler_audit(
    State(state): State<AppState>,
) -> Result<Json<ReconcilerView>, ApiError> {
    // On its own task: a client that leaves, or the request timeout, does not cut it short.
    let reconciler = state.reconciler.clone();
    let findings = crate::cluster::spawn_in_term(async move { reconciler.run_audit().await })
        .await
        .map_err(ApiError::internal)?
        .map_err(|ReconcileError::Db(e)| ApiError::from(e))?;
    Ok(Json(ReconcilerView {
        last_run_at: Some(Rfc3339(common::now_ms())),
        findings: Some(findings),
    }))
}

/// Every stream's objects compared with its references, and how many streams run.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditView {
    #[serde(flatten)]
    audit: Audit,
    /// Running streams whose worker is connected.
    streams_running: usize,
    /// Streams that should run (running or failed, not stopped).
    streams_total: usize,
}

/// A full audit of the object store against the references: slow on big buckets, meant for
/// operators and `scripts/chaos.sh`.
#[utoipa::path(
    get, path = "/audit", operation_id = "get_audit", tag = "system",
    responses(
        (status = 200, description = "The audit", body = AuditView),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 503, description = "The database is not reachable", body = ErrorBody),
    )
)]
pub(super) async fn audit(State(state): State<AppState>) -> Result<Json<AuditView>, ApiError> {
    let audit = state
        .reconciler
        .audit()
        .await
        .map_err(|ReconcileError::Db(e)| ApiError::from(e))?;
    let connected = state.supervisor.connected_workers();
    let streams = state.db.list_streams().await?;
    let streams_total = streams
        .iter()
        .filter(|s| s.state != StreamState::Stopped)
        .count();
    let streams_running = streams
        .iter()
        .filter(|s| {
            s.state == StreamState::Running
                && s.worker_id.as_ref().is_some_and(|w| connected.contains(w))
        })
        .count();
    Ok(Json(AuditView {
        audit,
        streams_running,
        streams_total,
    }))
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    status: &'static str,
}

/// Liveness: the process answers. Open, for orchestrators.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "system",
    responses((status = 200, description = "Alive", body = Health)),
    security(())
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness, and why not.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready` or `not ready`.
    status: &'static str,
    /// `ok`, or the database's error with its causes.
    database: String,
    /// `ok`, or the object store's error with its causes.
    object_store: String,
}

/// Readiness: the database and the object store both answer. Open, for orchestrators.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "system",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Readiness),
    ),
    security(())
)]
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.db.ping().await;
    let store = state.store.check().await;
    let ready = db.is_ok() && store.is_ok();
    // The whole cause chain, so "not ready" says why (e.g. "connection refused").
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        database: db.map_or_else(|e| common::error_chain(&e), |()| "ok".to_owned()),
        object_store: store.map_or_else(|e| common::error_chain(&e), |()| "ok".to_owned()),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Prometheus text.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus exposition format",
         content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
