//! `json-sim`: a generic paginated JSON API for tests, demos and benchmarks of the worker's
//! `HTTP_JSON` adapter. One dataset of items (`{"id", "updated_at", "name", "value"}`, item `i`
//! updated at `epoch + i * step`), served under every common pagination style, behind every
//! common auth kind, plus asynchronous report jobs, a global rate limit and injected faults.
//! `docs/json-sim.md` is the reference; in short:
//!
//! # Data routes: `/{auth}/…`, `auth` ∈ `none`, `bearer`, `header`, `query`, `basic`, `oauth2`
//!
//! - `GET /items`: `{"data": [every item in the window]}`.
//! - `GET|POST /items/page` (`page` from 1, `per_page` 1..=1000, default 50; POST takes them in a
//!   JSON body): `{"data", "meta": {"page", "per_page", "total_pages", "total"}}`.
//! - `GET /items/offset?offset&limit`: `{"data", "total"}`.
//! - `GET /items/cursor?cursor&limit`: `{"data", "meta": {"next_cursor"}}` (null at the end).
//! - `GET /items/link?page&per_page`: `{"data"}` and `Link: <next>; rel="next", <first>;
//!   rel="first"` (no `next` on the last page).
//! - `GET /items/next?page&per_page`: `{"data", "next": url or null}`.
//! - `POST /reports {"from", "to"}` → 202; `GET /reports/{id}`; `GET /reports/{id}/result`
//!   (paged like `/items/page`, 409 `not_ready` before `success`).
//!
//! Every items route and job result takes the window `updated_since` (inclusive) and `until`
//! (exclusive) as RFC 3339, epoch seconds, epoch milliseconds or `YYYY-MM-DD`.
//!
//! # Other routes
//!
//! `POST /oauth/token` (client credentials), and the admin API (no credentials; loopback):
//! `/admin/config`, `/admin/faults`, `/admin/jobs`, `/admin/tokens/revoke`, `/admin/stats`,
//! `/admin/requests`, `/admin/reset`.
//!
//! Order of checks on a data route: auth prefix (404), credentials (401), faults, rate limit
//! (429), the answer. A refused or faulted request uses no rate-limit quota.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use chrono::{DateTime, Utc};
use common::SecretKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

mod admin;
mod auth;
mod data;
mod error;
mod faults;
mod gate;
mod jobs;
mod limits;
mod observe;
mod routes;

pub use auth::{AuthKind, BASIC_USER, OAUTH_CLIENT_ID};
pub use faults::{JsonFault, JsonFaultRule, UnknownJsonFault};
pub use jobs::{JobMode, JobStatus, ModeRule};
pub use observe::{LoggedRequest, Stats, REQUEST_LOG_CAPACITY};

use error::ApiError;

/// A point in time as the window filters and `--epoch` take it: RFC 3339, epoch seconds, epoch
/// milliseconds (13 digits or more) or `YYYY-MM-DD` (midnight UTC).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    data::parse_instant(text)
}

/// The settings that can change while the simulator runs (`POST /admin/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// How long every data answer (items pages, job result pages) waits before answering.
    pub page_delay_ms: u64,
    /// The lifetime of an OAuth2 access token.
    pub token_ttl_s: u64,
    /// A report job is queued for the first half of this, processing for the second half.
    pub job_delay_ms: u64,
    /// Data requests per wall-clock minute, all credentials together; 0 = no limit.
    pub rate_per_minute: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            page_delay_ms: 0,
            token_ttl_s: 3600,
            job_delay_ms: 1000,
            rate_per_minute: 0,
        }
    }
}

/// Everything json-sim is told at start. (`Debug` is safe: [`SecretKey`] prints `***`.)
#[derive(Debug, Clone)]
pub struct JsonSimConfig {
    /// The one credential of every auth kind.
    pub secret: SecretKey,
    /// How many items the dataset holds.
    pub items: u64,
    /// When item 0 was updated.
    pub epoch: DateTime<Utc>,
    /// Milliseconds between two items' `updated_at` (at least 1).
    pub item_step_ms: u64,
    /// The settings `POST /admin/config` can change.
    pub runtime: RuntimeConfig,
    /// How long a `slow_body` fault takes to finish an answer.
    pub slow_body: Duration,
}

impl Default for JsonSimConfig {
    fn default() -> Self {
        JsonSimConfig {
            secret: SecretKey::new("sim-secret"),
            items: 1000,
            // 2026-01-01T00:00:00Z.
            epoch: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            item_step_ms: 60_000,
            runtime: RuntimeConfig::default(),
            slow_body: Duration::from_secs(3),
        }
    }
}

/// Why a [`JsonSimConfig`] cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the item step must be at least 1 ms")]
    ZeroStep,
    #[error("the secret is empty; give one with --secret or JSON_SIM_SECRET")]
    EmptySecret,
    #[error("the last item's updated_at falls outside the representable years; lower --items or --item-step-ms")]
    OutOfRange,
}

impl JsonSimConfig {
    /// Refuses settings the simulator cannot serve faithfully.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.item_step_ms == 0 {
            return Err(ConfigError::ZeroStep);
        }
        if self.secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let last = self.dataset().updated_at_ms(self.items.saturating_sub(1));
        if last == i64::MAX || DateTime::from_timestamp_millis(last).is_none() {
            return Err(ConfigError::OutOfRange);
        }
        Ok(())
    }

    /// One line for the start banner, the secret redacted.
    pub fn describe(&self) -> String {
        let rt = &self.runtime;
        format!(
            "secret: *** (redacted); items: {} from {} every {} ms; page delay: {} ms; token ttl: {} s; job delay: {} ms; rate: {}; slow_body: {} ms",
            self.items,
            self.epoch.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.item_step_ms,
            rt.page_delay_ms,
            rt.token_ttl_s,
            rt.job_delay_ms,
            match rt.rate_per_minute {
                0 => "off".to_string(),
                n => format!("{n}/min"),
            },
            self.slow_body.as_millis(),
        )
    }

    fn dataset(&self) -> data::Dataset {
        data::Dataset {
            items: self.items,
            epoch_ms: self.epoch.timestamp_millis(),
            step_ms: i64::try_from(self.item_step_ms).unwrap_or(i64::MAX).max(1),
        }
    }
}

/// The run-time settings, each readable without a lock on the hot path.
#[derive(Debug)]
struct Tunables {
    page_delay_ms: AtomicU64,
    token_ttl_s: AtomicU64,
    job_delay_ms: AtomicU64,
    rate_per_minute: AtomicU64,
}

impl Tunables {
    fn new(config: RuntimeConfig) -> Tunables {
        Tunables {
            page_delay_ms: AtomicU64::new(config.page_delay_ms),
            token_ttl_s: AtomicU64::new(config.token_ttl_s),
            job_delay_ms: AtomicU64::new(config.job_delay_ms),
            rate_per_minute: AtomicU64::new(config.rate_per_minute),
        }
    }

    fn get(&self) -> RuntimeConfig {
        RuntimeConfig {
            page_delay_ms: self.page_delay_ms.load(Ordering::Relaxed),
            token_ttl_s: self.token_ttl_s.load(Ordering::Relaxed),
            job_delay_ms: self.job_delay_ms.load(Ordering::Relaxed),
            rate_per_minute: self.rate_per_minute.load(Ordering::Relaxed),
        }
    }

    fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_s.load(Ordering::Relaxed))
    }
}

/// json-sim's shared state; cheap to clone.
#[derive(Clone)]
pub struct JsonSimState {
    inner: Arc<Inner>,
}

struct Inner {
    secret: SecretKey,
    dataset: data::Dataset,
    cursors: data::Cursors,
    tunables: Tunables,
    tokens: auth::TokenStore,
    jobs: jobs::JobBoard,
    rate: limits::RateWindow,
    faults: faults::FaultBoard,
    observe: observe::Observer,
    slow_body: Duration,
    /// Cancelled at shutdown: ends hangs, trickles and page delays so draining cannot hang.
    shutdown: CancellationToken,
}

impl JsonSimState {
    /// State for `config` (see [`JsonSimConfig::check`] for what the binary refuses first).
    pub fn new(config: JsonSimConfig) -> JsonSimState {
        JsonSimState {
            inner: Arc::new(Inner {
                dataset: config.dataset(),
                secret: config.secret,
                cursors: data::Cursors::default(),
                tunables: Tunables::new(config.runtime),
                tokens: auth::TokenStore::default(),
                jobs: jobs::JobBoard::default(),
                rate: limits::RateWindow::default(),
                faults: faults::FaultBoard::default(),
                observe: observe::Observer::default(),
                slow_body: config.slow_body,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The run-time settings now.
    pub fn runtime(&self) -> RuntimeConfig {
        self.inner.tunables.get()
    }

    /// Changes the run-time settings given; returns them all.
    pub fn update_runtime(&self, patch: RuntimePatch) -> RuntimeConfig {
        let t = &self.inner.tunables;
        let set = |slot: &AtomicU64, value: Option<u64>| {
            if let Some(value) = value {
                slot.store(value, Ordering::Relaxed);
            }
        };
        set(&t.page_delay_ms, patch.page_delay_ms);
        set(&t.token_ttl_s, patch.token_ttl_s);
        set(&t.job_delay_ms, patch.job_delay_ms);
        set(&t.rate_per_minute, patch.rate_per_minute);
        let now = t.get();
        tracing::info!(?now, "run-time settings changed");
        now
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.observe.stats()
    }

    /// The most recent `limit` requests, oldest first.
    pub fn requests(&self, limit: usize) -> Vec<LoggedRequest> {
        self.inner.observe.recent(limit)
    }

    /// Switches a fault on.
    pub fn add_fault(&self, rule: JsonFaultRule) {
        tracing::info!(fault = %rule.fault, count = ?rule.remaining, "fault on");
        self.inner.faults.add(rule);
    }

    /// The active faults, oldest first.
    pub fn faults(&self) -> Vec<JsonFaultRule> {
        self.inner.faults.list()
    }

    /// Switches every fault off; returns how many rules there were.
    pub fn clear_faults(&self) -> usize {
        self.inner.faults.clear()
    }

    /// Sets how the next report jobs end.
    pub fn set_job_mode(&self, rule: ModeRule) {
        tracing::info!(?rule, "job mode");
        self.inner.jobs.set_mode(rule);
    }

    /// Invalidates every access token issued so far; returns how many there were.
    pub fn revoke_tokens(&self) -> usize {
        self.inner.tokens.revoke_all()
    }

    /// Clears counters, the request log, faults, the job mode, tokens and the rate window. Jobs
    /// already submitted and the run-time settings stay.
    pub fn reset(&self) {
        let sim = &self.inner;
        sim.observe.reset();
        sim.faults.clear();
        sim.jobs.set_mode(ModeRule::default());
        sim.tokens.revoke_all();
        sim.rate.reset();
        tracing::info!("reset");
    }

    /// Ends every held, trickling or delayed answer. `serve` calls it at shutdown.
    pub fn shut_down(&self) {
        self.inner.shutdown.cancel();
    }

    /// Waits the configured page delay (ends early at shutdown).
    async fn page_delay(&self) {
        let ms = self.inner.tunables.page_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
    }
}

/// The body of `POST /admin/config`: any subset of [`RuntimeConfig`].
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePatch {
    pub page_delay_ms: Option<u64>,
    pub token_ttl_s: Option<u64>,
    pub job_delay_ms: Option<u64>,
    pub rate_per_minute: Option<u64>,
}

/// json-sim's routes, for `state`.
pub fn app(state: JsonSimState) -> Router {
    let data = Router::new()
        .route("/{auth}/items", get(routes::all_items))
        .route(
            "/{auth}/items/page",
            get(routes::page_by_query).post(routes::page_by_body),
        )
        .route("/{auth}/items/offset", get(routes::offset))
        .route("/{auth}/items/cursor", get(routes::cursor))
        .route("/{auth}/items/link", get(routes::link))
        .route("/{auth}/items/next", get(routes::next))
        .route("/{auth}/reports", post(routes::submit_report))
        .route("/{auth}/reports/{id}", get(routes::report_status))
        .route("/{auth}/reports/{id}/result", get(routes::report_result))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::data_route,
        ));
    let token = Router::new()
        .route("/oauth/token", post(auth::token))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::token_route,
        ));
    let admin = Router::new()
        .route(
            "/admin/config",
            get(admin::config).post(admin::update_config),
        )
        .route(
            "/admin/faults",
            post(admin::add_fault)
                .get(admin::list_faults)
                .delete(admin::clear_faults),
        )
        .route(
            "/admin/jobs",
            post(admin::job_mode).get(admin::get_job_mode),
        )
        .route("/admin/tokens/revoke", post(admin::revoke_tokens))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/requests", get(admin::requests))
        .route("/admin/reset", post(admin::reset));
    // The span names the path only: the query may carry the api_key.
    let trace = TraceLayer::new_for_http().make_span_with(
        |request: &axum::http::Request<axum::body::Body>| {
            tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
        },
    );
    Router::new()
        .merge(data)
        .merge(token)
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(trace)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!(
        "no route {}; data routes are /{{auth}}/items[/page|/offset|/cursor|/link|/next] and /{{auth}}/reports, auth one of none, bearer, header, query, basic, oauth2",
        uri.path()
    ))
    .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .with(
            "detail",
            format!(
                "{method} is not allowed on {}; see docs/json-sim.md",
                uri.path()
            ),
        )
        .into_response()
}

/// Serves json-sim on an already bound `listener` until `shutdown` completes, then drains: held,
/// trickling and delayed answers end at once, others finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: JsonSimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let state = JsonSimState::new(config);
    let on_shutdown = state.clone();
    let listener = listener.tap_io(|tcp| {
        // Small answers should leave at once rather than wait for Nagle.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            on_shutdown.shut_down();
        })
        .await
}
