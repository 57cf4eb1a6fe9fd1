//! Injected faults for json-sim's data routes: server errors, gateway pages, a hang, slow and
//! cut bodies, non-JSON, a 429 and a 401, each for the next `count` requests whose path and raw
//! query contain the given substrings (or until cleared).

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream;
use serde::{Serialize, Serializer};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::faults::{HTML_502, HTML_504};

/// How long a `hang` holds the request when nobody gives up.
const HANG_FOR: Duration = Duration::from_secs(3600);

/// A fault json-sim can inject; [`JsonFault::name`] is what `POST /admin/faults` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonFault {
    /// 500 `{"error": "internal"}`.
    ServerError,
    /// An nginx "502 Bad Gateway" HTML page.
    Html502,
    /// An nginx "504 Gateway Time-out" HTML page.
    Html504,
    /// No answer until the client gives up or the simulator stops.
    Hang,
    /// The normal answer, its body trickled over the configured time.
    SlowBody,
    /// The normal answer's full `Content-Length`, half its bytes, then the connection is cut.
    Truncated,
    /// 200 with `text/plain` that is not JSON.
    NotJson,
    /// 429 `{"error": "rate_limited"}` with `Retry-After: 1`.
    TooManyRequests,
    /// 401 `{"error": "invalid_token"}` with `WWW-Authenticate`, as an expired token gets.
    Unauthorized,
}

/// What a fault does to a request.
#[derive(Debug)]
pub(crate) enum Action {
    /// Answer with this instead.
    Replace(Response),
    Hang,
    SlowBody,
    Truncated,
}

impl JsonFault {
    /// Every fault, in documentation order.
    pub const ALL: [JsonFault; 9] = [
        JsonFault::ServerError,
        JsonFault::Html502,
        JsonFault::Html504,
        JsonFault::Hang,
        JsonFault::SlowBody,
        JsonFault::Truncated,
        JsonFault::NotJson,
        JsonFault::TooManyRequests,
        JsonFault::Unauthorized,
    ];

    /// The admin API's name for it, e.g. `html_502`.
    pub fn name(self) -> &'static str {
        match self {
            JsonFault::ServerError => "server_error",
            JsonFault::Html502 => "html_502",
            JsonFault::Html504 => "html_504",
            JsonFault::Hang => "hang",
            JsonFault::SlowBody => "slow_body",
            JsonFault::Truncated => "truncated",
            JsonFault::NotJson => "not_json",
            JsonFault::TooManyRequests => "too_many_requests",
            JsonFault::Unauthorized => "unauthorized",
        }
    }

    /// Every fault name, in documentation order.
    pub fn names() -> Vec<&'static str> {
        JsonFault::ALL.iter().map(|f| f.name()).collect()
    }

    /// Whether the fault replaces the answer (and so takes a `status` override).
    pub fn replaces_answer(self) -> bool {
        !matches!(
            self,
            JsonFault::Hang | JsonFault::SlowBody | JsonFault::Truncated
        )
    }

    /// What the fault does, with `status` overriding the status of a replaced answer.
    pub(crate) fn action(self, status: Option<u16>) -> Action {
        let text = |status: u16, content_type: &'static str, body: &'static str| {
            let mut response = (status_code(status), body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        };
        let mut response = match self {
            JsonFault::ServerError => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal")
                .with("detail", "injected fault server_error; retry later")
                .into_response(),
            JsonFault::Html502 => text(502, "text/html", HTML_502),
            JsonFault::Html504 => text(504, "text/html", HTML_504),
            JsonFault::NotJson => text(
                200,
                "text/plain; charset=utf-8",
                "Service temporarily degraded. This is not JSON.",
            ),
            JsonFault::TooManyRequests => {
                let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
                    .with(
                        "detail",
                        "injected fault too_many_requests; retry after 1 s",
                    )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            JsonFault::Unauthorized => ApiError::invalid_token().into_response(),
            JsonFault::Hang => return Action::Hang,
            JsonFault::SlowBody => return Action::SlowBody,
            JsonFault::Truncated => return Action::Truncated,
        };
        if let Some(status) = status {
            *response.status_mut() = status_code(status);
        }
        Action::Replace(response)
    }
}

/// A status the admin API already checked (100..=599).
fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl fmt::Display for JsonFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault name that is not one of [`JsonFault::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?} (known: {known})", known = JsonFault::names().join(", "))]
pub struct UnknownJsonFault(pub String);

impl FromStr for JsonFault {
    type Err = UnknownJsonFault;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        JsonFault::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| UnknownJsonFault(name.to_string()))
    }
}

impl Serialize for JsonFault {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One switched-on fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JsonFaultRule {
    pub fault: JsonFault,
    /// Requests left before the rule switches itself off; `None` until cleared.
    pub remaining: Option<u64>,
    /// Overrides the status of a fault that replaces the answer.
    pub status: Option<u16>,
    /// Only requests whose path contains this.
    pub path_contains: Option<String>,
    /// Only requests whose raw query string contains this.
    pub query_contains: Option<String>,
}

impl JsonFaultRule {
    fn matches(&self, path: &str, query: &str) -> bool {
        self.path_contains
            .as_deref()
            .is_none_or(|p| path.contains(p))
            && self
                .query_contains
                .as_deref()
                .is_none_or(|q| query.contains(q))
    }
}

/// The active rules; the newest matching rule wins.
#[derive(Debug, Default)]
pub(crate) struct FaultBoard {
    /// Lets the hot path skip the lock while no fault is on (the benchmark's case).
    armed: AtomicBool,
    rules: Mutex<Vec<JsonFaultRule>>,
}

impl FaultBoard {
    fn lock(&self) -> MutexGuard<'_, Vec<JsonFaultRule>> {
        // Every change is one push, remove, clear or decrement: never half done.
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, rule: JsonFaultRule) {
        self.lock().push(rule);
        self.armed.store(true, Ordering::Release);
    }

    pub fn clear(&self) -> usize {
        let mut rules = self.lock();
        let cleared = rules.len();
        rules.clear();
        self.armed.store(false, Ordering::Release);
        cleared
    }

    pub fn list(&self) -> Vec<JsonFaultRule> {
        self.lock().clone()
    }

    /// The fault for a request to `path` with `query`, counted against the rule's budget.
    pub fn take(&self, path: &str, query: &str) -> Option<(JsonFault, Option<u16>)> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut rules = self.lock();
        let index = rules.iter().rposition(|r| r.matches(path, query))?;
        let rule = &mut rules[index];
        let taken = (rule.fault, rule.status);
        if let Some(remaining) = rule.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                rules.remove(index);
            }
        }
        self.armed.store(!rules.is_empty(), Ordering::Release);
        Some(taken)
    }
}

/// Holds the request until the client gives up; shutdown ends it so draining cannot hang.
pub(crate) async fn hang(shutdown: &CancellationToken) -> Response {
    tokio::select! {
        () = tokio::time::sleep(HANG_FOR) => (StatusCode::GATEWAY_TIMEOUT, HTML_504).into_response(),
        () = shutdown.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `response` with its body sent as a third at once and the rest in five pieces over `over`.
pub(crate) async fn slow(
    response: Response,
    over: Duration,
    shutdown: CancellationToken,
) -> Response {
    const PIECES: usize = 5;
    let (parts, body) = response.into_parts();
    let body = collect(body).await;
    let head_len = body.len() / 3;
    let mut chunks = vec![body.slice(..head_len)];
    let piece = (body.len() - head_len).div_ceil(PIECES).max(1);
    let mut start = head_len;
    while start < body.len() {
        let end = (start + piece).min(body.len());
        chunks.push(body.slice(start..end));
        start = end;
    }
    let pause = over / PIECES as u32;
    let chunks = stream::unfold(
        (chunks.into_iter(), true, shutdown),
        move |(mut chunks, first, shutdown)| async move {
            let chunk = chunks.next()?;
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => {
                        let cut = io::Error::other("simulator shutting down");
                        return Some((Err(cut), (Vec::new().into_iter(), false, shutdown)));
                    }
                }
            }
            Some((Ok::<_, io::Error>(chunk), (chunks, false, shutdown)))
        },
    );
    let mut response = Response::from_parts(parts, Body::from_stream(chunks));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// `response` declaring its whole length but sending half, then cutting the connection.
pub(crate) async fn truncated(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let body = collect(body).await;
    let full_len = body.len();
    let half = body.slice(..full_len / 2);
    // Step 0 sends the half, step 1 cuts (a body error makes the server drop the connection).
    let chunks = stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok(half), 1)),
                1 => {
                    // Let the half reach the wire before the cut, as a dropped upstream would.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Err(io::Error::other("truncated on purpose")), 2))
                }
                _ => None,
            }
        }
    });
    let mut response = Response::from_parts(parts, Body::from_stream(chunks));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
    response
}

/// A handler's whole body (json-sim's bodies are built in memory, so this cannot fail short of a
/// bug; an empty body stands in then).
async fn collect(body: Body) -> Bytes {
    axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(%err, "could not buffer an answer for a body fault");
            Bytes::new()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for fault in JsonFault::ALL {
            assert_eq!(fault.name().parse::<JsonFault>(), Ok(fault));
        }
        assert!("nope"
            .parse::<JsonFault>()
            .unwrap_err()
            .to_string()
            .contains("slow_body"));
    }

    #[test]
    fn filters_and_counts_pick_the_rule() {
        let board = FaultBoard::default();
        assert_eq!(board.take("/none/items", ""), None);
        board.add(JsonFaultRule {
            fault: JsonFault::ServerError,
            remaining: None,
            status: None,
            path_contains: None,
            query_contains: None,
        });
        board.add(JsonFaultRule {
            fault: JsonFault::NotJson,
            remaining: Some(1),
            status: Some(203),
            path_contains: Some("/cursor".into()),
            query_contains: Some("page=2".into()),
        });
        assert_eq!(
            board.take("/none/items/cursor", "page=1"),
            Some((JsonFault::ServerError, None))
        );
        assert_eq!(
            board.take("/none/items/cursor", "page=2"),
            Some((JsonFault::NotJson, Some(203)))
        );
        assert_eq!(
            board.take("/none/items/cursor", "page=2"),
            Some((JsonFault::ServerError, None))
        );
        assert_eq!(board.clear(), 1);
        assert_eq!(board.take("/none/items", ""), None);
    }

    #[test]
    fn status_overrides_only_replaced_answers() {
        match JsonFault::ServerError.action(Some(503)) {
            Action::Replace(response) => assert_eq!(response.status(), 503),
            other => panic!("{other:?}"),
        }
        assert!(matches!(JsonFault::Hang.action(None), Action::Hang));
        assert!(!JsonFault::Truncated.replaces_answer());
    }
}
