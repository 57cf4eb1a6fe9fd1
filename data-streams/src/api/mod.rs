//! The HTTP API of DESIGN.md: streams, results, measurements, workers, health and metrics.
//!
//! [`router`] builds the whole app from its state without a socket, so tests can drive it.
//! Errors are JSON `{"error": "...", "detail": ...}` with a 4xx for anything the caller got wrong.

mod error;
mod results;
mod streams;
mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::SecretKey;
use metrics_exporter_prometheus::PrometheusHandle;
use objects::ObjectStore;
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::db::Db;
use crate::reconcile::Reconciler;
use crate::supervisor::Supervisor;

/// What every handler can reach. Changes go through the [`Supervisor`]; reads go to the
/// database and the store directly.
#[derive(Clone)]
pub struct AppState {
    pub supervisor: Supervisor,
    pub db: Db,
    pub store: Arc<dyn ObjectStore>,
    pub reconciler: Reconciler,
    /// SHA-256 of the bearer token, when one is configured (compared in constant time).
    pub api_token_digest: Option<[u8; 32]>,
    pub metrics: Option<PrometheusHandle>,
}

/// The whole HTTP app.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let protected = Router::new()
        .route("/streams", post(streams::create).get(streams::list))
        .route(
            "/streams/{id}",
            get(streams::get)
                .patch(streams::update)
                .delete(streams::delete),
        )
        .route("/streams/{id}/start", post(streams::start))
        .route("/streams/{id}/stop", post(streams::stop))
        .route("/streams/{id}/results", get(results::list))
        .route("/streams/{id}/measurements", get(results::measurements))
        .route("/streams/{id}/failures", get(results::failures))
        .route("/results/{id}/raw", get(results::raw))
        .route("/workers", get(system::workers))
        .route("/reconciler", get(system::reconciler))
        .route("/audit", get(system::audit))
        .route("/metrics", get(system::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(protected)
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Bearer-token check, when a token is configured. The comparison is over SHA-256 digests in
/// constant time, so neither the token nor its length leaks through timing.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.api_token_digest else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretKey::new(t.trim()).digest());
    match presented {
        Some(digest) if bool::from(digest.ct_eq(&expected)) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not valid".into()).into_response(),
        None => ApiError::Unauthorized("an Authorization: Bearer token is required".into())
            .into_response(),
    }
}

/// `Json` whose rejections come back in our error format instead of axum's plain text.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// `Path` whose rejections (e.g. an id that is not UTF-8) come back in our error format.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// `Query` whose rejections (e.g. a repeated parameter) come back in our error format.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}
