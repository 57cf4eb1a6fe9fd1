//! What tests read back: the counters of `GET /admin/stats` and the request log of
//! `GET /admin/requests`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};

/// How many requests the log keeps (the oldest go first).
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// The counters `GET /admin/stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to a data route or to `/oauth/token` (not `/admin/*`).
    pub requests: u64,
    /// `requests` by route, e.g. `items/page`, `reports/{id}/result`, `oauth/token`.
    pub by_route: BTreeMap<String, u64>,
    /// Data requests being answered now.
    pub in_flight: u64,
    /// The most data requests answered at once since start or reset.
    pub max_in_flight: u64,
    /// Access tokens handed out by `/oauth/token`.
    pub tokens_issued: u64,
    /// Report jobs submitted.
    pub jobs_submitted: u64,
    /// Requests refused by the rate limit (injected `too_many_requests` faults not included).
    pub rate_limited: u64,
    /// Requests refused for missing or wrong credentials (data routes and `/oauth/token`).
    pub unauthorized: u64,
    /// Requests a fault was applied to.
    pub faulted: u64,
}

/// One entry of `GET /admin/requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// When the request arrived (RFC 3339, milliseconds, UTC).
    pub at: String,
    pub method: String,
    pub path: String,
    /// The raw query with every `api_key` value replaced by `***`.
    pub query: String,
    /// The status answered; 499 when the client went away first.
    pub status: u16,
    /// How the request authenticated, never the credential: the `Authorization` scheme in lower
    /// case (`bearer`, `basic`), else `x-api-key`, else `query` (an `api_key` parameter), else
    /// `none`.
    pub authorization: String,
}

#[derive(Default)]
pub(crate) struct Observer {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub jobs_submitted: AtomicU64,
    pub rate_limited: AtomicU64,
    pub unauthorized: AtomicU64,
    pub faulted: AtomicU64,
    by_route: Mutex<BTreeMap<String, u64>>,
    log: Mutex<VecDeque<LoggedRequest>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert, push or clear: a panic elsewhere cannot leave
    // them half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Observer {
    /// Counts a request to `route`; `data` requests are also counted in flight until `finish`.
    pub fn begin(&self, route: &str, data: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_route).entry(route.to_string()).or_default() += 1;
        if data {
            let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Ends what `begin` started and logs the request.
    pub fn finish(&self, data: bool, entry: LoggedRequest) {
        if data {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        let mut log = lock(&self.log);
        if log.len() >= REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The most recent `limit` requests, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<LoggedRequest> {
        let log = lock(&self.log);
        log.iter()
            .skip(log.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            requests: load(&self.requests),
            by_route: lock(&self.by_route).clone(),
            in_flight: load(&self.in_flight),
            max_in_flight: load(&self.max_in_flight),
            tokens_issued: load(&self.tokens_issued),
            jobs_submitted: load(&self.jobs_submitted),
            rate_limited: load(&self.rate_limited),
            unauthorized: load(&self.unauthorized),
            faulted: load(&self.faulted),
        }
    }

    /// Zeroes the counters and empties the log. Requests still in flight stay counted, so the
    /// in-flight figure cannot go below zero when they end.
    pub fn reset(&self) {
        for counter in [
            &self.requests,
            &self.tokens_issued,
            &self.jobs_submitted,
            &self.rate_limited,
            &self.unauthorized,
            &self.faulted,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        lock(&self.by_route).clear();
        lock(&self.log).clear();
    }
}

/// `query` with the value of every `api_key` parameter replaced by `***`.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("api_key", _)) => "api_key=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// How a request authenticated, for the log: see [`LoggedRequest::authorization`].
pub(crate) fn auth_scheme(headers: &HeaderMap, query: &str) -> String {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let scheme = value
            .to_str()
            .ok()
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("unreadable");
        return scheme.to_ascii_lowercase();
    }
    if headers.contains_key("x-api-key") {
        return "x-api-key".to_string();
    }
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("api_key"))
    {
        return "query".to_string();
    }
    "none".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn api_keys_never_reach_the_log() {
        assert_eq!(
            redact_query("page=2&api_key=sim-secret&until=3&api_key="),
            "page=2&api_key=***&until=3&api_key=***"
        );
        assert_eq!(redact_query(""), "");
        assert_eq!(redact_query("my_api_key=x"), "my_api_key=x");
    }

    #[test]
    fn the_scheme_is_logged_not_the_credential() {
        let mut headers = HeaderMap::new();
        assert_eq!(auth_scheme(&headers, "page=1"), "none");
        assert_eq!(auth_scheme(&headers, "page=1&api_key=x"), "query");
        headers.insert("x-api-key", HeaderValue::from_static("sim-secret"));
        assert_eq!(auth_scheme(&headers, ""), "x-api-key");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(auth_scheme(&headers, ""), "bearer");
    }

    #[test]
    fn the_log_keeps_the_newest() {
        let observer = Observer::default();
        for i in 0..REQUEST_LOG_CAPACITY + 5 {
            observer.begin("items", true);
            observer.finish(
                true,
                LoggedRequest {
                    at: String::new(),
                    method: "GET".into(),
                    path: format!("/none/items/{i}"),
                    query: String::new(),
                    status: 200,
                    authorization: "none".into(),
                },
            );
        }
        let recent = observer.recent(2);
        let last = REQUEST_LOG_CAPACITY + 4;
        assert_eq!(recent[0].path, format!("/none/items/{}", last - 1));
        assert_eq!(recent[1].path, format!("/none/items/{last}"));
        assert_eq!(observer.recent(usize::MAX).len(), REQUEST_LOG_CAPACITY);
        let stats = observer.stats();
        assert_eq!((stats.in_flight, stats.max_in_flight), (0, 1));
        assert_eq!(stats.by_route["items"], (REQUEST_LOG_CAPACITY + 5) as u64);
    }
}
