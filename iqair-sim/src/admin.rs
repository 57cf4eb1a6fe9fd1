//! The admin API (`/admin/*`): switch faults on and off, read and reset the counters. No key: it
//! is a loopback development tool.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::faults::{Fault, FaultRule};
use super::SimState;

/// The body of `POST /admin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRequest {
    /// An API key, or `null` for every key.
    #[serde(default)]
    key: Option<String>,
    /// A fault name (see [`Fault::name`]).
    fault: String,
    /// How many requests it applies to; `null` until cleared.
    #[serde(default)]
    count: Option<u64>,
    /// An HTTP status overriding the fault's own.
    #[serde(default)]
    status: Option<u16>,
}

fn error(status: StatusCode, error: &str, detail: serde_json::Value) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}

/// `POST /admin/faults`: `201 {"active": [...]}`.
pub(crate) async fn add_fault(
    State(state): State<SimState>,
    body: Result<Json<FaultRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid body",
                json!(rejection.body_text()),
            )
        }
    };
    let fault = match request.fault.parse::<Fault>() {
        Ok(fault) => fault,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unknown fault",
                json!({"fault": request.fault, "known": Fault::names()}),
            )
        }
    };
    let rule = FaultRule {
        key: request.key,
        fault,
        remaining: request.count,
        status: request.status,
    };
    match state.add_fault(rule) {
        Ok(()) => (StatusCode::CREATED, Json(json!({"active": state.faults()}))).into_response(),
        Err(err) => error(StatusCode::BAD_REQUEST, &err.to_string(), json!(null)),
    }
}

/// `GET /admin/faults`: `{"active": [...]}`.
pub(crate) async fn list_faults(State(state): State<SimState>) -> Response {
    Json(json!({"active": state.faults()})).into_response()
}

/// `DELETE /admin/faults`: `{"cleared": n}`.
pub(crate) async fn clear_faults(State(state): State<SimState>) -> Response {
    Json(json!({"cleared": state.clear_faults()})).into_response()
}

/// `GET /admin/stats`: the counters (see [`super::Stats`]).
pub(crate) async fn stats(State(state): State<SimState>) -> Response {
    Json(state.stats()).into_response()
}

/// `POST /admin/reset`: zero the counters and every rate-limit window; faults stay.
pub(crate) async fn reset(State(state): State<SimState>) -> Response {
    state.reset();
    Json(json!({"reset": true})).into_response()
}
