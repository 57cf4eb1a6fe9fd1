//! json-sim's error answers: `{"error": code, "detail": what to do}` with the right status and,
//! for auth errors, the `WWW-Authenticate` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

/// An error answer. Every refusal json-sim makes goes through this type, so all share one shape.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    www_authenticate: Option<&'static str>,
}

impl ApiError {
    /// `status` with `{"error": code}`.
    pub fn new(status: StatusCode, code: &str) -> ApiError {
        let mut body = Map::new();
        body.insert("error".into(), json!(code));
        ApiError {
            status,
            body,
            www_authenticate: None,
        }
    }

    /// Adds a field next to `error` (usually `detail`).
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> ApiError {
        self.body.insert(field.into(), value.into());
        self
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn challenge(mut self, value: &'static str) -> ApiError {
        self.www_authenticate = Some(value);
        self
    }

    /// 400 `bad_request` with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request").with("detail", detail.into())
    }

    /// 404 `not_found` with `detail`.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found").with("detail", detail.into())
    }

    /// 401 `invalid_token`, as an expired or revoked OAuth2 access token gets (RFC 6750 §3).
    pub fn invalid_token() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token")
            .with(
                "detail",
                "the access token is unknown, revoked or expired; get a new one from POST /oauth/token",
            )
            .challenge("Bearer error=\"invalid_token\"")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(Value::Object(self.body))).into_response();
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
