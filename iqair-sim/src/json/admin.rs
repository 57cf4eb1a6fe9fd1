//! json-sim's admin API (`/admin/*`): run-time settings, faults, job modes, token revocation,
//! counters, the request log and reset. No credentials: a loopback development tool.

use std::collections::HashMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::faults::{JsonFault, JsonFaultRule};
use super::jobs::{JobMode, ModeRule};
use super::observe::REQUEST_LOG_CAPACITY;
use super::{JsonSimState, RuntimePatch};

/// A JSON body, or a 400 in json-sim's error shape.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| ApiError::bad_request(format!("body: {}", rejection.body_text())))
}

/// `GET /admin/config`: the run-time settings.
pub(crate) async fn config(State(state): State<JsonSimState>) -> Response {
    Json(state.runtime()).into_response()
}

/// `POST /admin/config` with any subset of the run-time settings: all of them, as now.
pub(crate) async fn update_config(
    State(state): State<JsonSimState>,
    patch: Result<Json<RuntimePatch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let patch = body(patch)?;
    Ok(Json(state.update_runtime(patch)).into_response())
}

/// The body of `POST /admin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRequest {
    /// A fault name (see [`JsonFault::name`]).
    fault: String,
    /// How many matching requests it applies to; `null` until cleared.
    #[serde(default)]
    count: Option<u64>,
    /// An HTTP status overriding the fault's own (faults that replace the answer only).
    #[serde(default)]
    status: Option<u16>,
    /// Only requests whose path contains this.
    #[serde(default)]
    path_contains: Option<String>,
    /// Only requests whose raw query contains this.
    #[serde(default)]
    query_contains: Option<String>,
}

/// `POST /admin/faults`: `201 {"active": [...]}`.
pub(crate) async fn add_fault(
    State(state): State<JsonSimState>,
    request: Result<Json<FaultRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(request)?;
    let fault: JsonFault = request.fault.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_fault")
            .with("detail", format!("unknown fault {:?}", request.fault))
            .with("known", JsonFault::names())
    })?;
    if request.count == Some(0) {
        return Err(ApiError::bad_request(
            "count: must be at least 1, or null for until cleared",
        ));
    }
    if let Some(status) = request.status {
        if !(100..=599).contains(&status) {
            return Err(ApiError::bad_request(format!(
                "status: {status} is not an HTTP status (100..=599)"
            )));
        }
        if !fault.replaces_answer() {
            return Err(ApiError::bad_request(format!(
                "status: {fault} keeps the normal answer's status; leave status out"
            )));
        }
    }
    state.add_fault(JsonFaultRule {
        fault,
        remaining: request.count,
        status: request.status,
        path_contains: request.path_contains.filter(|p| !p.is_empty()),
        query_contains: request.query_contains.filter(|q| !q.is_empty()),
    });
    Ok((StatusCode::CREATED, Json(json!({"active": state.faults()}))).into_response())
}

/// `GET /admin/faults`: `{"active": [...]}`.
pub(crate) async fn list_faults(State(state): State<JsonSimState>) -> Response {
    Json(json!({"active": state.faults()})).into_response()
}

/// `DELETE /admin/faults`: `{"cleared": n}`.
pub(crate) async fn clear_faults(State(state): State<JsonSimState>) -> Response {
    Json(json!({"cleared": state.clear_faults()})).into_response()
}

/// The body of `POST /admin/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobModeRequest {
    /// `normal`, `fail` or `stuck`.
    mode: String,
    /// How many next jobs; `null` until reset.
    #[serde(default)]
    count: Option<u64>,
}

/// `POST /admin/jobs {"mode", "count"}`: how the next jobs end. Answers `{"mode", "remaining"}`.
pub(crate) async fn job_mode(
    State(state): State<JsonSimState>,
    request: Result<Json<JobModeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(request)?;
    let mode: JobMode = request
        .mode
        .parse()
        .map_err(|err: String| ApiError::bad_request(format!("mode: {err}")))?;
    if request.count == Some(0) {
        return Err(ApiError::bad_request(
            "count: must be at least 1, or null for every job until reset",
        ));
    }
    let rule = ModeRule {
        mode,
        remaining: request.count,
    };
    state.set_job_mode(rule);
    Ok(Json(rule).into_response())
}

/// `GET /admin/jobs`: the current mode rule.
pub(crate) async fn get_job_mode(State(state): State<JsonSimState>) -> Response {
    Json(state.inner.jobs.mode()).into_response()
}

/// `POST /admin/tokens/revoke`: every token issued so far stops working. `{"revoked": n}`.
pub(crate) async fn revoke_tokens(State(state): State<JsonSimState>) -> Response {
    Json(json!({"revoked": state.revoke_tokens()})).into_response()
}

/// `GET /admin/stats`: the counters (see [`super::Stats`]).
pub(crate) async fn stats(State(state): State<JsonSimState>) -> Response {
    Json(state.stats()).into_response()
}

/// `GET /admin/requests?limit=100`: the most recent requests, oldest first.
pub(crate) async fn requests(
    State(state): State<JsonSimState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|rejection| ApiError::bad_request(format!("query: {}", rejection.body_text())))?;
    let limit = super::data::parse_count(
        "limit",
        query.get("limit").map(String::as_str),
        100,
        1,
        REQUEST_LOG_CAPACITY as u64,
    )
    .map_err(ApiError::bad_request)?;
    let limit = usize::try_from(limit).unwrap_or(REQUEST_LOG_CAPACITY);
    Ok(Json(state.requests(limit)).into_response())
}

/// `POST /admin/reset`: counters, request log, faults, job mode, tokens and the rate window.
pub(crate) async fn reset(State(state): State<JsonSimState>) -> Response {
    state.reset();
    Json(json!({"reset": true})).into_response()
}
