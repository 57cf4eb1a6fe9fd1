//! Fetching from IQAir AirVisual v2 (`IQAIR_DAILY`): one GET per run, classified by body first
//! (the API's HTTP statuses are undocumented, IQAIR.md §6). What a body *is* (its envelope, and
//! the [`Measurement`] in it) is the catalogue's `catalogue::iqair`; what to *do* about it
//! (retry, back off, stop the stream) is decided here.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use catalogue::iqair::{is_city_endpoint, parse_measurement, read_envelope, sweep_scope, Envelope};
use common::SecretKey;
use futures::future::BoxFuture;
use protocol::{FailureClass, Measurement, StreamConfig};

use super::iqair_sweep::IqAirSweep;
use super::{Adapter, AdapterError, FetchRequest, Fetched, PagedAdapter, RateLimitScope, Retry};

pub use catalogue::iqair::NAME;

/// The IQAir AirVisual v2 adapter (`city` and `nearest_city` endpoints; any other v2 endpoint's
/// body is still stored, with no measurement). A `city` stream naming a country (or a state)
/// without a city is a sweep: [`IqAirSweep`].
#[derive(Debug, Clone)]
pub struct IqAir {
    client: reqwest::Client,
    /// Shared by clones, so every stream of the worker shares the discovered city lists.
    sweep: Arc<IqAirSweep>,
}

impl IqAir {
    /// An adapter sending through `client` (which may carry a connect timeout, but should not
    /// carry a total timeout: the caller owns the run's timeout).
    pub fn new(client: reqwest::Client) -> Self {
        IqAir {
            sweep: Arc::new(IqAirSweep::new(client.clone())),
            client,
        }
    }

    /// The same adapter with sweeps listing their states and cities again once their lists are
    /// older than `age` (default [`super::iqair_sweep::LIST_MAX_AGE`], a day; tests shorten
    /// it). The lists discovered so far are dropped.
    pub fn with_list_max_age(mut self, age: Duration) -> Self {
        self.sweep = Arc::new(IqAirSweep::new(self.client.clone()).with_max_age(age));
        self
    }

    async fn fetch_once(&self, req: FetchRequest<'_>) -> Result<Fetched, AdapterError> {
        fetch(&self.client, req).await
    }
}

/// One GET through `client`, classified ([`classify`]); what [`IqAir`] does for a run, and what
/// a sweep does for each listing and each city.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    req: FetchRequest<'_>,
) -> Result<Fetched, AdapterError> {
    let url = request_url(&req)?;
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| transport_error(err, req.secret_key))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|err| transport_error(err, req.secret_key))?;
    tracing::debug!(status, bytes = body.len(), "iqair response");
    match classify(status, &body) {
        Ok(measurement) => Ok(Fetched { body, measurement }),
        Err(mut err) => {
            // The API has no reason to echo the key, but an error page might; the message
            // ends up in the database and the HTTP API.
            err.message = redact(&err.message, req.secret_key);
            Err(err)
        }
    }
}

impl Adapter for IqAir {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fetch<'a>(&'a self, req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
        Box::pin(self.fetch_once(req))
    }

    /// A sweep: the `city` endpoint with a country (and perhaps a state) but no city.
    fn paged(&self, cfg: &StreamConfig) -> Option<&dyn PagedAdapter> {
        let sweep = is_city_endpoint(&cfg.endpoint) && sweep_scope(&cfg.params).is_some();
        sweep.then_some(&*self.sweep as &dyn PagedAdapter)
    }
}

/// The endpoint with `key` and every parameter as query parameters. Parameters are sent as given,
/// so `lat=0`/`lon=0` stay a GPS lookup rather than silently becoming an IP lookup (IQAIR.md
/// §8.11).
fn request_url(req: &FetchRequest<'_>) -> Result<reqwest::Url, AdapterError> {
    let mut url = reqwest::Url::parse(req.endpoint).map_err(|err| {
        AdapterError::new(
            FailureClass::Http,
            format!("invalid endpoint URL: {err}"),
            Retry::StopStream,
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AdapterError::new(
            FailureClass::Http,
            format!(
                "invalid endpoint URL: scheme {:?} is not http(s)",
                url.scheme()
            ),
            Retry::StopStream,
        ));
    }
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("key", req.secret_key.expose());
        for (name, value) in req.params {
            // The stream's key is the only key; a `key` parameter would be a second one.
            if name != "key" {
                query.append_pair(name, value);
            }
        }
    }
    Ok(url)
}

/// A request that got no complete answer: connect refused, reset, TLS, body cut off mid-stream.
fn transport_error(err: reqwest::Error, secret_key: &SecretKey) -> AdapterError {
    let (class, retry) = if err.is_timeout() {
        (FailureClass::Timeout, Retry::Transient)
    } else {
        (FailureClass::Network, Retry::Transient)
    };
    // reqwest prints the URL, which carries the key: strip it, then add the causes, which say
    // what actually happened ("Connection refused").
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            let _ = write!(message, ": {cause_text}");
        }
        source = cause.source();
    }
    AdapterError::new(class, redact(&message, secret_key), retry)
}

/// Replaces the key (raw or percent-encoded) in `text` with `***`.
fn redact(text: &str, secret_key: &SecretKey) -> String {
    secret_key.redacted(text)
}

/// Classifies one response: by body first, whatever the status (IQAIR.md §6), then by status when
/// the body is not an API envelope.
///
/// - `{"status":"success","data":{...}}` → `Ok(Some(reading))`; `data` that is an array (a
///   listing endpoint) or an object holding nothing readable → `Ok(None)`.
/// - `{"status":"fail","data":{"message":m}}` → rate limit, auth or API error by `m`.
/// - anything else → `RateLimited` for 429, `Auth` for 401/403, `InvalidBody` for 2xx, `Http`
///   (`HTTP <code>`) for any other status.
pub fn classify(status: u16, body: &[u8]) -> Result<Option<Measurement>, AdapterError> {
    match read_envelope(body) {
        Envelope::Success(Some(data)) => Ok(parse_measurement(data)),
        Envelope::Success(None) => Ok(None),
        Envelope::Fail(message) => Err(classify_message(message)),
        Envelope::Unrecognised(reason) => Err(classify_unrecognised(status, reason)),
    }
}

/// Classifies an API error message, lower-cased, by prefix or substring (IQAIR.md §6.2, §8.1,
/// §8.2): the documented codes differ from the sent ones, and capitalisation varies.
fn classify_message(message: String) -> AdapterError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("too_many_requests") {
        return AdapterError::new(
            FailureClass::RateLimited,
            message,
            Retry::RateLimited(RateLimitScope::Second),
        );
    }
    if lower.contains("limit_reached") {
        let scope = if lower.contains("per_second") {
            RateLimitScope::Second
        } else if lower.contains("per_minute") {
            RateLimitScope::Minute
        } else if lower.contains("per_day") {
            RateLimitScope::Day
        } else if lower.contains("per_month") {
            RateLimitScope::Month
        } else {
            RateLimitScope::Unknown
        };
        return AdapterError::new(
            FailureClass::RateLimited,
            message,
            Retry::RateLimited(scope),
        );
    }
    const AUTH: &[&str] = &[
        "incorrect_api_key",
        "api_key_expired",
        "forbidden",
        "payment required",
        "payment_required",
        "permission_denied",
        "feature_not_available",
    ];
    if AUTH.iter().any(|code| lower.contains(code)) {
        return AdapterError::new(FailureClass::Auth, message, Retry::StopStream);
    }
    // Everything else (`city_not_found`, `no_nearest_city`, `wrong_coordinates`,
    // `ip_location_failed`, codes nobody has seen yet): the next run may well succeed, e.g. once
    // a renamed city is fixed or a station reports again.
    AdapterError::new(FailureClass::Api, message, Retry::NextTick)
}

fn classify_unrecognised(status: u16, reason: String) -> AdapterError {
    match status {
        429 => AdapterError::new(
            FailureClass::RateLimited,
            format!("HTTP 429: {reason}"),
            Retry::RateLimited(RateLimitScope::Unknown),
        ),
        401 | 403 => AdapterError::new(
            FailureClass::Auth,
            format!("HTTP {status}: {reason}"),
            Retry::StopStream,
        ),
        200..=299 => AdapterError::new(FailureClass::InvalidBody, reason, Retry::NextTick),
        _ => {
            // A gateway page or an empty error: the status is the information.
            let retry = if status >= 500 || status == 408 {
                Retry::Transient
            } else {
                Retry::NextTick
            };
            AdapterError::new(FailureClass::Http, format!("HTTP {status}"), retry)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalogue::iqair::{MAX_EXCERPT_CHARS, MAX_MESSAGE_CHARS};

    use catalogue::iqair::examples::{SUCCESS_2018, SUCCESS_2026};

    fn ok(status: u16, body: &str) -> Measurement {
        match classify(status, body.as_bytes()) {
            Ok(Some(m)) => m,
            other => panic!("expected a measurement for {body}, got {other:?}"),
        }
    }

    fn err(status: u16, body: &str) -> AdapterError {
        match classify(status, body.as_bytes()) {
            Err(e) => e,
            Ok(m) => panic!("expected an error for {status} {body}, got {m:?}"),
        }
    }

    fn fail_body(message: &str) -> String {
        serde_json::json!({"status": "fail", "data": {"message": message}}).to_string()
    }

    #[test]
    fn success_with_a_listing_or_an_empty_object_has_no_measurement() {
        let listing =
            r#"{"status":"success","data":[{"country":"Afghanistan"},{"country":"USA"}]}"#;
        assert_eq!(classify(200, listing.as_bytes()), Ok(None));
        let empty = r#"{"status":"success","data":{}}"#;
        assert_eq!(classify(200, empty.as_bytes()), Ok(None));
    }

    #[test]
    fn the_body_wins_over_the_status() {
        // A success body with an odd status is still a reading.
        assert!(ok(500, SUCCESS_2026).aqius.is_some());
        // A fail body with 200 is still a rate limit.
        let e = err(200, &fail_body("call_per_minute_limit_reached"));
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry, Retry::RateLimited(RateLimitScope::Minute));
        // An auth message with 500 is still auth.
        let e = err(500, &fail_body("incorrect_api_key"));
        assert_eq!((e.class, e.retry), (FailureClass::Auth, Retry::StopStream));
    }

    #[test]
    fn rate_limit_messages_carry_their_scope() {
        let cases = [
            ("call_limit_reached", RateLimitScope::Unknown),
            ("call_per_minute_limit_reached", RateLimitScope::Minute),
            ("call_per_day_limit_reached", RateLimitScope::Day),
            ("call_per_month_limit_reached", RateLimitScope::Month),
            ("too_many_requests", RateLimitScope::Second),
            ("Call_Per_Day_Limit_Reached", RateLimitScope::Day),
        ];
        for (message, scope) in cases {
            for status in [429, 200, 400] {
                let e = err(status, &fail_body(message));
                assert_eq!(e.class, FailureClass::RateLimited, "{message} {status}");
                assert_eq!(e.retry, Retry::RateLimited(scope), "{message} {status}");
                assert_eq!(e.message, message);
            }
        }
    }

    #[test]
    fn auth_messages_stop_the_stream() {
        for (message, status) in [
            ("incorrect_api_key", 401),
            ("api_key_expired", 401),
            ("Forbidden", 403),
            ("Payment Required", 402),
            (
                "permission_denied (you don't have access to this endpoint)",
                403,
            ),
            (
                "permission_denied (you don't have access to this endpoint",
                403,
            ),
            ("feature_not_available", 403),
        ] {
            let e = err(status, &fail_body(message));
            assert_eq!(e.class, FailureClass::Auth, "{message}");
            assert_eq!(e.retry, Retry::StopStream, "{message}");
            assert_eq!(e.message, message);
        }
    }

    #[test]
    fn location_and_other_api_messages_wait_for_the_next_tick() {
        for (message, status) in [
            ("city_not_found", 400),
            ("state_not_found", 400),
            ("country_not_found", 400),
            ("station_not_found", 400),
            ("no_nearest_city", 404),
            ("no_nearest_station", 404),
            ("wrong_coordinates", 400),
            ("ip_location_failed", 400),
            ("something_nobody_has_seen_yet", 418),
        ] {
            let e = err(status, &fail_body(message));
            assert_eq!(e.class, FailureClass::Api, "{message}");
            assert_eq!(e.retry, Retry::NextTick, "{message}");
            assert_eq!(e.message, message);
        }
    }

    #[test]
    fn bodies_that_are_not_envelopes_are_invalid_with_2xx() {
        for body in [
            r#""node not found""#,
            "This is a valid response, but it isn't JSON.",
            "",
            "   ",
            "[1,2,3]",
            "42",
            "null",
            "true",
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":null}"#,
            r#"{"status":"success","data":"ok"}"#,
            r#"{"status":"fail","data":{}}"#,
            r#"{"status":"fail","data":{"message":""}}"#,
            r#"{"status":"maybe","data":{}}"#,
            r#"{"message":"call_limit_reached"}"#,
            r#"{"status":"success","data":{"city":"Ber"#,
        ] {
            let e = err(200, body);
            assert_eq!(e.class, FailureClass::InvalidBody, "{body:?}");
            assert_eq!(e.retry, Retry::NextTick, "{body:?}");
            assert!(!e.message.is_empty());
        }
        assert!(err(200, r#""node not found""#)
            .message
            .contains("node not found"));
        assert!(err(200, r#"{"status":"success","data":{"ci"#)
            .message
            .contains("truncated"));
    }

    #[test]
    fn unrecognised_bodies_fall_back_to_the_status() {
        let html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
        let e = err(502, html);
        assert_eq!((e.class, e.retry), (FailureClass::Http, Retry::Transient));
        assert_eq!(e.message, "HTTP 502");
        let e = err(504, "<html><body>Gateway Time-out</body></html>");
        assert_eq!((e.class, e.retry), (FailureClass::Http, Retry::Transient));
        let e = err(500, "");
        assert_eq!((e.class, e.retry), (FailureClass::Http, Retry::Transient));
        assert_eq!(e.message, "HTTP 500");
        let e = err(408, "");
        assert_eq!((e.class, e.retry), (FailureClass::Http, Retry::Transient));
        let e = err(404, "Not Found");
        assert_eq!((e.class, e.retry), (FailureClass::Http, Retry::NextTick));
        assert_eq!(e.message, "HTTP 404");
        let e = err(429, "");
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry, Retry::RateLimited(RateLimitScope::Unknown));
        for status in [401, 403] {
            let e = err(status, "<html>denied</html>");
            assert_eq!((e.class, e.retry), (FailureClass::Auth, Retry::StopStream));
        }
    }

    #[test]
    fn no_prefix_of_a_body_and_no_garbage_panics() {
        for whole in [SUCCESS_2026, SUCCESS_2018] {
            for end in 0..whole.len() {
                if !whole.is_char_boundary(end) {
                    continue;
                }
                let result = classify(200, &whole.as_bytes()[..end]);
                assert!(
                    matches!(&result, Err(e) if e.class == FailureClass::InvalidBody),
                    "prefix {end}: {result:?}"
                );
            }
        }
        let deep = "[".repeat(10_000);
        assert_eq!(err(200, &deep).class, FailureClass::InvalidBody);
        let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        assert_eq!(
            classify(200, &binary).map_err(|e| e.class),
            Err(FailureClass::InvalidBody)
        );
        let huge = fail_body(&"x".repeat(100_000));
        assert!(err(400, &huge).message.chars().count() <= MAX_MESSAGE_CHARS);
        let huge_text = "y".repeat(100_000);
        assert!(err(200, &huge_text).message.chars().count() < MAX_EXCERPT_CHARS + 64);
    }

    #[test]
    fn request_url_sends_key_and_every_param_including_zero() {
        let params = std::collections::BTreeMap::from([
            ("lat".to_string(), "0".to_string()),
            ("lon".to_string(), "0.0".to_string()),
            ("key".to_string(), "not-this-one".to_string()),
        ]);
        let key = SecretKey::new("k e/y");
        let req = FetchRequest {
            endpoint: "http://127.0.0.1:8090/v2/nearest_city",
            secret_key: &key,
            params: &params,
        };
        let url = request_url(&req).map_err(|e| e.message);
        let url = url.as_ref().map(|u| u.as_str());
        assert_eq!(
            url,
            Ok("http://127.0.0.1:8090/v2/nearest_city?key=k+e%2Fy&lat=0&lon=0.0")
        );
        let bad = FetchRequest {
            endpoint: "not a url",
            ..req
        };
        let e = request_url(&bad).map(|_| ()).unwrap_err();
        assert_eq!(e.retry, Retry::StopStream);
        let ftp = FetchRequest {
            endpoint: "ftp://example.com/v2/city",
            ..req
        };
        assert!(request_url(&ftp).is_err());
    }

    #[test]
    fn redaction_covers_raw_and_encoded_keys() {
        let key = SecretKey::new("abc/def");
        assert_eq!(redact("a key=abc/def b", &key), "a key=*** b");
        assert_eq!(redact("a key=abc%2Fdef b", &key), "a key=*** b");
        assert_eq!(redact("nothing here", &key), "nothing here");
        assert_eq!(redact("a b", &SecretKey::new("a")), "a b");
    }
}
