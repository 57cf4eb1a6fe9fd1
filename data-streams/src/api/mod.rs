//! The HTTP API of DESIGN.md: streams, results, measurements, workers, health and metrics.
//!
//! [`router`] builds the whole app from its state without a socket, so tests can drive it.
//! Errors are JSON `{"error": "...", "detail": ...}` with a 4xx for anything the caller got wrong.

mod auth;
mod bulk;
mod cluster;
mod coverage;
pub mod docs;
mod error;
mod ingest;
mod jobs;
mod live;
mod reports;
mod results;
mod runs;
mod streams;
mod system;
mod tables;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::State;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use objects::ObjectStore;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Auth;
pub use bulk::BulkLimits;
pub use error::ApiError;

use crate::db::Db;
use crate::live::Live;
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
    pub live: Live,
    /// The re-parse queue (`POST /reparse`).
    pub reparse: crate::reparse::Reparse,
    /// Who may use the API (token and console sessions).
    pub auth: Auth,
    pub metrics: Option<PrometheusHandle>,
    /// The warehouse tables (Parquet files of the readings).
    pub tables: crate::tables::Tables,
    /// Who leads and which supervisors are there (`GET /cluster`).
    pub cluster: crate::cluster::Cluster,
    /// Sweep planning: IQAir's listings counted (cached a day) when a sweep is created.
    pub sweeps: std::sync::Arc<crate::sweep::Sweeps>,
    /// Push ingestion (`POST /streams/{id}/ingest`).
    pub ingest: crate::ingest::Ingest,
    /// The limits of the bulk routes (`POST /streams` with many, `POST /streams/start|stop`).
    pub bulk: BulkLimits,
}

/// The routes that need a token or a session, the ones that do not, and the ingest route (which
/// checks its own credentials and is served without the body limit and timeout), each with its
/// part of the OpenAPI document.
fn routes() -> (
    OpenApiRouter<AppState>,
    OpenApiRouter<AppState>,
    OpenApiRouter<AppState>,
) {
    let protected = OpenApiRouter::new()
        .routes(routes!(streams::create, streams::list))
        .routes(routes!(bulk::count))
        .routes(routes!(bulk::start_many))
        .routes(routes!(bulk::stop_many))
        .routes(routes!(streams::get, streams::update, streams::delete))
        .routes(routes!(streams::start))
        .routes(routes!(streams::stop))
        .routes(routes!(results::list))
        .routes(routes!(results::measurements))
        .routes(routes!(results::failures))
        .routes(routes!(runs::list))
        .routes(routes!(ingest::create_token, ingest::list_tokens))
        .routes(routes!(ingest::revoke_token))
        .routes(routes!(runs::get))
        .routes(routes!(coverage::get))
        .routes(routes!(results::raw))
        .routes(routes!(reports::aqi))
        .routes(routes!(jobs::reparse))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(tables::list))
        .routes(routes!(tables::compact))
        .routes(routes!(live::live))
        .routes(routes!(system::workers))
        .routes(routes!(cluster::get))
        .routes(routes!(system::reconciler))
        .routes(routes!(system::reconciler_audit))
        .routes(routes!(system::audit))
        .routes(routes!(system::metrics));
    let open = OpenApiRouter::new()
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(auth::login, auth::session, auth::logout));
    let push = OpenApiRouter::new().routes(routes!(ingest::ingest));
    (protected, open, push)
}

/// The OpenAPI 3.1 document of the whole API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (protected, open, push) = routes();
    let mut doc = docs::ApiDoc::openapi();
    doc.merge(protected.into_openapi());
    doc.merge(open.into_openapi());
    doc.merge(push.into_openapi());
    doc
}

/// `GET /openapi.json`, built once.
async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!(r#"{{"error": "cannot describe the API: {e}"}}"#))
    });
    ([(header::CONTENT_TYPE, "application/json")], json.as_str()).into_response()
}

/// The whole HTTP app.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let void_route = state.ingest.limits().void_route;
    let (protected, open, push) = routes();
    let protected: Router<AppState> = Router::from(protected)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::to_leader,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));
    Router::new()
        .merge(protected)
        .merge(Router::from(open))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(crate::console::index))
        .route("/docs", get(crate::console::docs))
        .route("/assets/{*path}", get(crate::console::asset))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        // After the limit and the timeout: a push may be a never-ending NDJSON body, bounded
        // by its own line and in-flight limits instead.
        .merge(Router::from(push).layer(DefaultBodyLimit::disable()))
        .merge(if void_route {
            Router::new()
                .route("/ingest/void", axum::routing::post(ingest::void))
                .layer(DefaultBodyLimit::disable())
        } else {
            Router::new()
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// How long a request may take, bulk routes aside.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every request has a deadline: [`REQUEST_TIMEOUT`], or the bulk routes' own
/// ([`BulkLimits::timeout`]): 100,000 streams in one transaction can take longer than 30 s on a
/// busy database. A request over its deadline answers 408; its transaction is dropped, so
/// nothing it wrote is kept.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let bulk = req.method() == Method::POST
        && matches!(
            req.uri().path(),
            "/streams" | "/streams/start" | "/streams/stop"
        );
    let limit = if bulk {
        state.bulk.timeout
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Busy {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "timeout".into(),
            message: format!(
                "the request did not finish within {} s and was abandoned: nothing it wrote was kept",
                limit.as_secs()
            ),
            retry_after_s: 1,
        }
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
