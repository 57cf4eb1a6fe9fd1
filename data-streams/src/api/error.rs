//! API errors: what the caller got wrong comes back as a 4xx saying what; anything else is logged
//! once and answered with an opaque 5xx.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::db::DbError;
use crate::stream::Invalid;
use crate::supervisor::SupervisorError;

/// The cause of an internal error: logged, never shown to the caller.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String, Value),
    #[error("{0}")]
    Invalid(String, Vec<String>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// A sweep its key cannot carry: 422 with the arithmetic.
    #[error("{}", .0.message)]
    SweepRefused(Box<crate::sweep::SweepRefusal>),
    /// IQAir would not list a sweep's places: 422, or 503 with `Retry-After` when trying again
    /// later may work.
    #[error("{message}")]
    SweepDiscovery {
        message: String,
        retry_after_s: Option<u64>,
    },
    /// Come back later: the status (429, 409 or 503), a code, and `Retry-After`.
    #[error("{message}")]
    Busy {
        status: StatusCode,
        code: String,
        message: String,
        retry_after_s: u64,
    },
    /// Items of a bulk request refused: the status (422 or 409), a code, and each item.
    #[error("{message}")]
    Items {
        status: StatusCode,
        code: &'static str,
        message: String,
        items: Vec<super::bulk::ItemProblem>,
    },
    #[error("internal error")]
    Internal(#[source] Cause),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(..) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(..) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_stream"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::SweepRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "sweep_over_budget"),
            ApiError::SweepDiscovery {
                retry_after_s: Some(_),
                ..
            } => (StatusCode::SERVICE_UNAVAILABLE, "sweep_discovery"),
            ApiError::SweepDiscovery { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "sweep_discovery")
            }
            ApiError::Busy { status, .. } => (*status, "busy"),
            ApiError::Items { status, code, .. } => (*status, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// A malformed query string or path parameter.
    pub fn bad(what: impl Into<String>) -> Self {
        ApiError::BadRequest(what.into(), Value::Null)
    }

    /// A failure that is not the caller's, keeping its cause for the log.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        ApiError::Internal(cause.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let detail = match &self {
            ApiError::BadRequest(message, detail) => {
                json!({"code": code, "message": message, "info": detail})
            }
            ApiError::Invalid(message, problems) => {
                json!({"code": code, "message": message, "problems": problems})
            }
            ApiError::SweepRefused(refusal) => json!({
                "code": code,
                "message": refusal.message,
                "window": refusal.window,
                "calls": refusal.calls,
                "limit": refusal.limit,
                "budget": refusal.budget,
                "interval_that_fits_ms": refusal.interval_that_fits_ms,
            }),
            ApiError::SweepDiscovery {
                message,
                retry_after_s,
            } => json!({"code": code, "message": message, "retry_after_s": retry_after_s}),
            ApiError::Busy {
                code,
                message,
                retry_after_s,
                ..
            } => json!({"code": code, "message": message, "retry_after_s": retry_after_s}),
            ApiError::Items { message, items, .. } => {
                json!({"code": code, "message": message, "items": items})
            }
            ApiError::Internal(cause) => {
                // Logged once here; the caller learns nothing about internals.
                tracing::error!("internal error: {}", common::error_chain(cause.as_ref()));
                json!({"code": code})
            }
            other => json!({"code": code, "message": other.to_string()}),
        };
        let error = match &self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": error, "detail": detail})),
        )
            .into_response();
        if let ApiError::SweepDiscovery {
            retry_after_s: Some(secs),
            ..
        }
        | ApiError::Busy {
            retry_after_s: secs,
            ..
        } = &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*secs),
            );
        }
        response
    }
}

impl From<crate::sweep::SweepError> for ApiError {
    fn from(err: crate::sweep::SweepError) -> Self {
        match err {
            crate::sweep::SweepError::Refused(refusal) => ApiError::SweepRefused(Box::new(refusal)),
            crate::sweep::SweepError::Discovery {
                message,
                retry_after_s,
            } => ApiError::SweepDiscovery {
                message,
                retry_after_s,
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body too large".into())
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest("malformed JSON".into(), json!(e.body_text()))
            }
            JsonRejection::JsonDataError(e) => ApiError::BadRequest(
                "JSON does not match the expected shape".into(),
                json!(e.body_text()),
            ),
            other => ApiError::BadRequest(other.body_text(), Value::Null),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest("bad query string".into(), json!(rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest("bad path parameter".into(), json!(rejection.body_text()))
    }
}

impl From<Invalid> for ApiError {
    fn from(Invalid(problems): Invalid) -> Self {
        ApiError::Invalid("the stream is not valid".into(), problems)
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        if err.is_transient() {
            ApiError::Unavailable("the database is not reachable; try again".into())
        } else {
            ApiError::internal(err)
        }
    }
}

impl From<SupervisorError> for ApiError {
    fn from(err: SupervisorError) -> Self {
        match err {
            SupervisorError::Db(e) => e.into(),
            SupervisorError::NotFound(id) => ApiError::NotFound(format!("stream {id} not found")),
            SupervisorError::NotApplied(why) => ApiError::Unavailable(why),
            SupervisorError::Invalid(invalid) => invalid.into(),
        }
    }
}
