//! `iqair-sim`: a local stand-in for the IQAir AirVisual v2 API (Community plan) for development,
//! demos, tests and benchmarks. It follows the facts of IQAIR.md: the same endpoints, body shapes,
//! error messages, headers (no rate-limit headers), gzip, per-key limits in the documented windows,
//! and hourly readings that differ by place.
//!
//! # Endpoints (key in the `key` query parameter)
//!
//! - `GET /v2/countries`, `/v2/states?country=`, `/v2/cities?state=&country=`: listings of the
//!   built-in cities (`country_not_found` / `state_not_found`, 400, for unknown names).
//! - `GET /v2/nearest_city`: without `lat`/`lon` the fixed IP-mode city (Los Angeles); with them
//!   the nearest built-in city within 100 km, else a synthetic 0.1° grid cell (`Grid 0.0N 0.0E`,
//!   state `Grid`, country `Simulated`). Bad coordinates: `wrong_coordinates`, 400.
//! - `GET /v2/city?city=&state=&country=`: a built-in city by its exact names, else
//!   `city_not_found`, 400.
//! - `stations`, `nearest_station`, `station`, `city_ranking`: `permission_denied (you don't have
//!   access to this endpoint)`, 403. Any other path: `Not Found`, 404.
//! - A missing or unknown key: `incorrect_api_key`, 401.
//! - Rate limits per key: `too_many_requests`, `call_per_minute_limit_reached`,
//!   `call_per_day_limit_reached`, `call_per_month_limit_reached`, all 429. Refused calls do not
//!   count. Second and minute windows open with the first call after the previous one closed; day
//!   and month follow the UTC calendar.
//!
//! Readings are a function of the place and the UTC hour: two calls in the same hour get the same
//! `pollution.ts` and values.
//!
//! # Admin API (no key; meant for loopback)
//!
//! ```text
//! # every key answers `call_per_minute_limit_reached` (429) until cleared
//! curl -X POST localhost:8090/admin/faults -H 'content-type: application/json' \
//!      -d '{"key": null, "fault": "call_per_minute_limit_reached", "count": null}'
//! # the next 3 requests with key `demo` hang; a fail body is sent with HTTP 200 instead of 403
//! curl -X POST localhost:8090/admin/faults -H 'content-type: application/json' \
//!      -d '{"key": "demo", "fault": "hang", "count": 3}'
//! curl -X POST localhost:8090/admin/faults -H 'content-type: application/json' \
//!      -d '{"key": "demo", "fault": "forbidden", "count": 1, "status": 200}'
//! curl localhost:8090/admin/faults              # {"active": [{"key", "fault", "remaining", "status"}]}
//! curl -X DELETE localhost:8090/admin/faults    # {"cleared": n}
//! curl localhost:8090/admin/stats               # {"requests", "ok", "rate_limited", "faulted",
//!                                               #  "unauthorized", "by_key": {"demo": n}}
//! curl -X POST localhost:8090/admin/reset       # zero the counters and the limit windows
//! ```
//!
//! The newest matching rule wins; a rule with a `count` switches itself off after that many
//! requests. Faults apply after the key check and before the limits; a fault that replaces the
//! answer uses no quota. `status` overrides the HTTP status of faults that replace the answer.
//!
//! Fault names: `call_limit_reached`, `call_per_minute_limit_reached`,
//! `call_per_day_limit_reached`, `call_per_month_limit_reached`, `too_many_requests` (429);
//! `incorrect_api_key`, `api_key_expired` (401); `forbidden` (`Forbidden`, 403);
//! `payment_required` (`Payment Required`, 402); `permission_denied`, `feature_not_available`
//! (403); `city_not_found` (400); `no_nearest_city` (404); `fail_200` (a
//! `call_per_minute_limit_reached` fail body with 200); `bare_string` (`"node not found"`, 200);
//! `not_json` (plain text, 200); `html_502`, `html_504` (nginx gateway pages); `server_error`
//! (500, empty); `hang` (no answer until the client gives up or the simulator stops); `slow_body`
//! (a third of the body at once, the rest trickled); `truncated` (full `Content-Length`, half the
//! body, connection cut); `missing_pollution`, `missing_main` (success bodies without
//! `current.pollution`, or without `mainus`/`maincn`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

mod admin;
mod api;
mod cities;
mod faults;
pub mod json;
mod limits;
mod reading;

pub use faults::{Fault, FaultRule, UnknownFault};
pub use limits::Limits;

use faults::FaultBoard;
use limits::Windows;

/// Everything the simulator can be told at start. (No `Debug`: it holds the accepted keys;
/// [`SimConfig::describe`] is the start-up line, keys counted, never shown.)
#[derive(Clone)]
pub struct SimConfig {
    /// Accepted API keys.
    pub keys: Vec<String>,
    /// Per-key rate limits.
    pub limits: Limits,
    /// Faults switched on from the start (more can be added over the admin API).
    pub faults: Vec<FaultRule>,
    /// How long a `slow_body` answer takes to finish.
    pub slow_body: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            keys: vec!["demo".to_string()],
            limits: Limits::community(),
            faults: Vec::new(),
            slow_body: Duration::from_secs(3),
        }
    }
}

impl SimConfig {
    /// One line for the start banner, keys redacted to their count.
    pub fn describe(&self) -> String {
        let window = |n: u32| {
            if n == 0 {
                "off".to_string()
            } else {
                n.to_string()
            }
        };
        let limits = if self.limits.is_off() {
            "off".to_string()
        } else {
            format!(
                "{}/s {}/min {}/day {}/month",
                window(self.limits.per_second),
                window(self.limits.per_minute),
                window(self.limits.per_day),
                window(self.limits.per_month)
            )
        };
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|r| match &r.key {
                Some(_) => format!("{} (one key)", r.fault),
                None => format!("{} (all keys)", r.fault),
            })
            .collect();
        format!(
            "keys: {} (redacted); limits: {limits}; faults: {}; slow_body: {} ms",
            self.keys.len(),
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(", ")
            },
            self.slow_body.as_millis()
        )
    }
}

/// Why a fault rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("unknown key: faults can only target configured keys")]
    UnknownKey,
    #[error("count must be at least 1, or null for until cleared")]
    ZeroCount,
    #[error("status {0} is not an HTTP status")]
    BadStatus(u16),
}

/// The counters `GET /admin/stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to `/v2/*`.
    pub requests: u64,
    /// Requests answered with a success body (including `slow_body`, `truncated`, `missing_*`).
    pub ok: u64,
    /// Requests refused by a rate-limit window.
    pub rate_limited: u64,
    /// Requests a fault was applied to.
    pub faulted: u64,
    /// Requests without a known key.
    pub unauthorized: u64,
    /// Requests per configured key (known keys only).
    pub by_key: BTreeMap<String, u64>,
}

/// The simulator's shared state; cheap to clone.
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Fixed at start, so the hot path looks keys up without a lock.
    keys: HashMap<Box<str>, KeyEntry>,
    limits: Limits,
    faults: FaultBoard,
    totals: Totals,
    slow_body: Duration,
    /// Cancelled at shutdown: ends `hang` and `slow_body` answers so draining cannot hang.
    shutdown: CancellationToken,
}

struct KeyEntry {
    requests: AtomicU64,
    windows: Mutex<Windows>,
}

impl KeyEntry {
    fn lock_windows(&self) -> MutexGuard<'_, Windows> {
        // The windows are plain counters; a panic elsewhere cannot leave them inconsistent.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    faulted: AtomicU64,
    unauthorized: AtomicU64,
}

impl SimState {
    /// State for `config`.
    pub fn new(config: SimConfig) -> SimState {
        let keys = config
            .keys
            .iter()
            .map(|k| {
                let entry = KeyEntry {
                    requests: AtomicU64::new(0),
                    windows: Mutex::new(Windows::default()),
                };
                (k.as_str().into(), entry)
            })
            .collect();
        SimState {
            inner: Arc::new(Inner {
                keys,
                limits: config.limits,
                faults: FaultBoard::new(config.faults),
                totals: Totals::default(),
                slow_body: config.slow_body,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Switches a fault on.
    pub fn add_fault(&self, rule: FaultRule) -> Result<(), FaultError> {
        if let Some(key) = &rule.key {
            if !self.inner.keys.contains_key(key.as_str()) {
                return Err(FaultError::UnknownKey);
            }
        }
        if rule.remaining == Some(0) {
            return Err(FaultError::ZeroCount);
        }
        if let Some(status) = rule.status {
            if !(100..=599).contains(&status) {
                return Err(FaultError::BadStatus(status));
            }
        }
        tracing::info!(fault = %rule.fault, all_keys = rule.key.is_none(), count = ?rule.remaining, "fault on");
        self.inner.faults.add(rule);
        Ok(())
    }

    /// The active fault rules, oldest first.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.inner.faults.list()
    }

    /// Switches every fault off; returns how many rules there were.
    pub fn clear_faults(&self) -> usize {
        let cleared = self.inner.faults.clear();
        tracing::info!(cleared, "faults cleared");
        cleared
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let t = &self.inner.totals;
        Stats {
            requests: t.requests.load(Ordering::Relaxed),
            ok: t.ok.load(Ordering::Relaxed),
            rate_limited: t.rate_limited.load(Ordering::Relaxed),
            faulted: t.faulted.load(Ordering::Relaxed),
            unauthorized: t.unauthorized.load(Ordering::Relaxed),
            by_key: self
                .inner
                .keys
                .iter()
                .map(|(k, e)| (k.to_string(), e.requests.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Zeroes the counters and every rate-limit window. Faults stay.
    pub fn reset(&self) {
        let t = &self.inner.totals;
        for counter in [
            &t.requests,
            &t.ok,
            &t.rate_limited,
            &t.faulted,
            &t.unauthorized,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        for entry in self.inner.keys.values() {
            entry.requests.store(0, Ordering::Relaxed);
            *entry.lock_windows() = Windows::default();
        }
        tracing::info!("counters and limit windows reset");
    }

    /// Ends every held (`hang`) or trickling (`slow_body`) answer. `serve` calls it at shutdown.
    pub fn shut_down(&self) {
        self.inner.shutdown.cancel();
    }
}

/// The simulator's routes, for `state`.
pub fn app(state: SimState) -> Router {
    // Slow and truncated bodies must reach the wire as shaped, not through a gzip encoder.
    let compress_when = DefaultPredicate::new().and(
        |_: axum::http::StatusCode,
         _: axum::http::Version,
         _: &axum::http::HeaderMap,
         extensions: &axum::http::Extensions| extensions.get::<api::NoCompress>().is_none(),
    );
    // The span names the path only: the query carries the key.
    let trace = TraceLayer::new_for_http().make_span_with(
        |request: &axum::http::Request<axum::body::Body>| {
            tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
        },
    );
    Router::new()
        .route("/v2/{endpoint}", get(api::v2))
        .route(
            "/admin/faults",
            post(admin::add_fault)
                .get(admin::list_faults)
                .delete(admin::clear_faults),
        )
        .route("/admin/stats", get(admin::stats))
        .route("/admin/reset", post(admin::reset))
        .fallback(api::not_found)
        .with_state(state)
        .layer(CompressionLayer::new().compress_when(compress_when))
        .layer(trace)
}

/// Serves the simulator on an already bound `listener` until `shutdown` completes, then drains:
/// held and trickling answers end at once, others finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let state = SimState::new(config);
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
