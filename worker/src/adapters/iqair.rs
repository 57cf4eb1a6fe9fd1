//! The IQAir AirVisual v2 adapter (`IQAIR_DAILY`): one GET per run, classified by body first
//! (the API's HTTP statuses are undocumented, IQAIR.md §6), parsed leniently into a
//! [`Measurement`] (fields come and go, numbers drift between integer and float, IQAIR.md §8).

use std::fmt::Write as _;

use futures::future::BoxFuture;
use protocol::{FailureClass, Measurement};
use serde_json::{Map, Value};

use super::{Adapter, AdapterError, FetchRequest, Fetched, RateLimitScope, Retry};

/// The adapter name streams use.
pub const NAME: &str = "IQAIR_DAILY";

/// Longest API message or body excerpt kept in an error, so a huge error page cannot bloat the
/// failure records.
const MAX_MESSAGE_CHARS: usize = 200;
/// Longest excerpt of an unparseable body quoted in an error message.
const MAX_EXCERPT_CHARS: usize = 80;

/// The IQAir AirVisual v2 adapter (`city` and `nearest_city` endpoints; any other v2 endpoint's
/// body is still stored, with no measurement).
#[derive(Debug, Clone)]
pub struct IqAir {
    client: reqwest::Client,
}

impl IqAir {
    /// An adapter sending through `client` (which may carry a connect timeout, but should not
    /// carry a total timeout: the caller owns the run's timeout).
    pub fn new(client: reqwest::Client) -> Self {
        IqAir { client }
    }

    async fn fetch_once(&self, req: FetchRequest<'_>) -> Result<Fetched, AdapterError> {
        let url = request_url(&req)?;
        let response = self
            .client
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
}

impl Adapter for IqAir {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fetch<'a>(&'a self, req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
        Box::pin(self.fetch_once(req))
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
        query.append_pair("key", req.secret_key);
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
fn transport_error(err: reqwest::Error, secret_key: &str) -> AdapterError {
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
fn redact(text: &str, secret_key: &str) -> String {
    // A one- or two-character key would match ordinary words; real keys are UUID-like.
    if secret_key.len() < 3 {
        return text.to_string();
    }
    let mut out = text.replace(secret_key, "***");
    let encoded = percent_encode(secret_key);
    if encoded != secret_key {
        out = out.replace(&encoded, "***");
    }
    out
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
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

enum Envelope {
    /// A success envelope; `Some` when `data` is an object.
    Success(Option<Map<String, Value>>),
    /// A fail envelope with its message.
    Fail(String),
    /// Not an envelope; the reason, for the error message.
    Unrecognised(String),
}

fn read_envelope(body: &[u8]) -> Envelope {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            let reason = if body.iter().all(u8::is_ascii_whitespace) {
                "empty body".to_string()
            } else if err.is_eof() {
                format!("truncated JSON body ({} bytes)", body.len())
            } else {
                format!("body is not JSON: {}", excerpt(body))
            };
            return Envelope::Unrecognised(reason);
        }
    };
    let mut object = match value {
        Value::Object(object) => object,
        Value::String(text) => {
            return Envelope::Unrecognised(format!(
                "body is a bare JSON string: {}",
                excerpt(text.as_bytes())
            ))
        }
        other => {
            return Envelope::Unrecognised(format!(
                "body is JSON {} instead of an object",
                json_kind(&other)
            ))
        }
    };
    let status = object.get("status").and_then(Value::as_str).unwrap_or("");
    if status.eq_ignore_ascii_case("success") {
        match object.remove("data") {
            Some(Value::Object(data)) => Envelope::Success(Some(data)),
            Some(Value::Array(_)) => Envelope::Success(None),
            Some(Value::Null) | None => {
                Envelope::Unrecognised("success envelope without data".to_string())
            }
            Some(other) => {
                Envelope::Unrecognised(format!("success envelope with {} data", json_kind(&other)))
            }
        }
    } else if status.eq_ignore_ascii_case("fail") {
        let message = match object.get("data") {
            Some(Value::Object(data)) => data.get("message").and_then(Value::as_str),
            // Not seen in the wild, but unambiguous.
            Some(Value::String(message)) => Some(message.as_str()),
            _ => None,
        };
        match message {
            Some(message) if !message.trim().is_empty() => {
                Envelope::Fail(truncate(message.trim(), MAX_MESSAGE_CHARS))
            }
            _ => Envelope::Unrecognised("fail envelope without a message".to_string()),
        }
    } else {
        Envelope::Unrecognised(format!(
            "JSON object without a success or fail status: {}",
            excerpt(body)
        ))
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

/// Flattens a city object (`data` of `city`/`nearest_city`) into a [`Measurement`]. Every field is
/// optional, numbers may be integers, floats or numeric strings, unknown fields are ignored.
/// `None` when nothing readable is there.
pub fn parse_measurement(data: Map<String, Value>) -> Option<Measurement> {
    let location = data.get("location");
    let coordinates = location
        .and_then(|l| l.get("coordinates"))
        .and_then(Value::as_array);
    // GeoJSON order: [longitude, latitude] (IQAIR.md §8.10).
    let lon = coordinates.and_then(|c| c.first()).and_then(number);
    let lat = coordinates.and_then(|c| c.get(1)).and_then(number);
    let current = data.get("current");
    let pollution = current.and_then(|c| c.get("pollution"));
    let weather = current.and_then(|c| c.get("weather"));
    let measurement = Measurement {
        city: text(data.get("city")),
        state: text(data.get("state")),
        country: text(data.get("country")),
        lat,
        lon,
        pollution_ts: text(field(pollution, "ts")),
        aqius: field(pollution, "aqius").and_then(number),
        mainus: text(field(pollution, "mainus")),
        aqicn: field(pollution, "aqicn").and_then(number),
        maincn: text(field(pollution, "maincn")),
        weather_ts: text(field(weather, "ts")),
        tp: field(weather, "tp").and_then(number),
        pr: field(weather, "pr").and_then(number),
        hu: field(weather, "hu").and_then(number),
        ws: field(weather, "ws").and_then(number),
        wd: field(weather, "wd").and_then(number),
        ic: text(field(weather, "ic")),
        // Renamed from `heat_index` on 2025-09-08 (IQAIR.md §1); accept both.
        heat_index: field(weather, "heatIndex")
            .or_else(|| field(weather, "heat_index"))
            .and_then(number),
    };
    (measurement != Measurement::default()).then_some(measurement)
}

fn field<'a>(object: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    object.and_then(|o| o.get(name))
}

fn number(value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed.filter(|n| n.is_finite())
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The start of a body as one printable line, quoted.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_EXCERPT_CHARS * 4)];
    let lossy = String::from_utf8_lossy(cut);
    let flat: String = lossy
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let mut short = truncate(&flat, MAX_EXCERPT_CHARS);
    if short.len() < flat.len() || cut.len() < body.len() {
        short.push('…');
    }
    format!("{short:?}")
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Community `nearest_city` answer in the 2026 shape (IQAIR.md §3.2): pollution first,
    /// `heatIndex`, float wind speed.
    const SUCCESS_2026: &str = r#"{"status":"success","data":{"city":"Los Angeles","state":"California","country":"USA","location":{"type":"Point","coordinates":[-118.2417,34.0669]},"current":{"pollution":{"ts":"2026-03-01T10:00:00.000Z","aqius":66,"mainus":"p2","aqicn":44,"maincn":"p1"},"weather":{"ts":"2026-03-01T11:00:00.000Z","ic":"04n","hu":86,"pr":1012,"tp":6,"wd":252,"ws":4.54,"heatIndex":7}}}}"#;

    /// The 2018 shape: weather before pollution, other key order inside weather, integer `ws`,
    /// no heat index, a `ts` that is not on the hour.
    const SUCCESS_2018: &str = r#"{
      "status": "success",
      "data": {
        "city": "Beijing", "state": "Beijing", "country": "China",
        "location": {"coordinates": [116.4074, 39.904211], "type": "Point"},
        "current": {
          "weather": {"ts": "2018-09-04T00:00:00.000Z", "hu": 17, "ic": "01n", "pr": 999, "tp": 23, "wd": 46, "ws": 2},
          "pollution": {"ts": "2018-09-04T01:15:00.000Z", "aqius": 186, "mainus": "p2", "aqicn": 136, "maincn": "p2"}
        }
      }
    }"#;

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
    fn parses_the_2026_community_shape() {
        let m = ok(200, SUCCESS_2026);
        assert_eq!(m.city.as_deref(), Some("Los Angeles"));
        assert_eq!(m.state.as_deref(), Some("California"));
        assert_eq!(m.country.as_deref(), Some("USA"));
        assert_eq!(m.lon, Some(-118.2417));
        assert_eq!(m.lat, Some(34.0669));
        assert_eq!(m.pollution_ts.as_deref(), Some("2026-03-01T10:00:00.000Z"));
        assert_eq!(m.aqius, Some(66.0));
        assert_eq!(m.mainus.as_deref(), Some("p2"));
        assert_eq!(m.aqicn, Some(44.0));
        assert_eq!(m.maincn.as_deref(), Some("p1"));
        assert_eq!(m.weather_ts.as_deref(), Some("2026-03-01T11:00:00.000Z"));
        assert_eq!(m.ic.as_deref(), Some("04n"));
        assert_eq!(m.hu, Some(86.0));
        assert_eq!(m.pr, Some(1012.0));
        assert_eq!(m.tp, Some(6.0));
        assert_eq!(m.wd, Some(252.0));
        assert_eq!(m.ws, Some(4.54));
        assert_eq!(m.heat_index, Some(7.0));
    }

    #[test]
    fn key_order_integer_floats_and_odd_timestamps_do_not_matter() {
        let m = ok(200, SUCCESS_2018);
        assert_eq!(m.city.as_deref(), Some("Beijing"));
        assert_eq!(m.lat, Some(39.904211));
        assert_eq!(m.lon, Some(116.4074));
        assert_eq!(m.pollution_ts.as_deref(), Some("2018-09-04T01:15:00.000Z"));
        assert_eq!(m.weather_ts.as_deref(), Some("2018-09-04T00:00:00.000Z"));
        assert_eq!(m.ws, Some(2.0));
        assert_eq!(m.aqius, Some(186.0));
        assert_eq!(m.heat_index, None);
    }

    #[test]
    fn the_old_heat_index_name_is_read_too() {
        let body = r#"{"status":"success","data":{"current":{"weather":{"ts":"2025-08-10T10:00:00.000Z","tp":29,"heat_index":31}}}}"#;
        let m = ok(200, body);
        assert_eq!(m.heat_index, Some(31.0));
        assert_eq!(m.tp, Some(29.0));
        assert_eq!(m.aqius, None);
    }

    #[test]
    fn paid_plan_extras_and_unknown_fields_are_ignored() {
        let body = r#"{"status":"success","data":{"city":"Beijing","state":"Beijing","country":"China","name":"US Embassy","location":{"type":"Point","coordinates":[116.466258,39.954352]},"forecasts":[{"ts":"2025-01-01T00:00:00.000Z","aqius":10,"pop":20,"pm25":3.5}],"units":{"p2":"ugm3","co":"ppm","pm25":"ugm3"},"history":{"pollution":[],"weather":[]},"current":{"pollution":{"ts":"2025-01-01T00:00:00.000Z","aqius":12,"mainus":"p2","aqicn":4,"maincn":"p2","p2":{"conc":3,"aqius":12,"aqicn":4},"co":{"conc":0.2,"aqius":2,"aqicn":2}},"weather":{"ts":"2025-01-01T00:00:00.000Z","tp":-3.5,"pr":1030,"hu":20,"ws":0.45,"wd":0,"ic":"01n","heatIndex":-3,"brand_new":true}},"future_field":{"x":[1,2,3]}}}"#;
        let m = ok(200, body);
        assert_eq!(m.aqius, Some(12.0));
        assert_eq!(m.tp, Some(-3.5));
        assert_eq!(m.ws, Some(0.45));
        assert_eq!(m.wd, Some(0.0));
        assert_eq!(m.lat, Some(39.954352));
    }

    #[test]
    fn missing_pollution_still_succeeds_with_empty_pollution_fields() {
        let body = r#"{"status":"success","data":{"city":"Oslo","state":"Oslo","country":"Norway","location":{"type":"Point","coordinates":[10.7522,59.9139]},"current":{"weather":{"ts":"2026-01-01T10:00:00.000Z","tp":-4,"pr":1001,"hu":80,"ws":3,"wd":180,"ic":"13d"}}}}"#;
        let m = ok(200, body);
        assert_eq!(m.city.as_deref(), Some("Oslo"));
        assert_eq!(m.pollution_ts, None);
        assert_eq!(m.aqius, None);
        assert_eq!(m.mainus, None);
        assert_eq!(m.tp, Some(-4.0));
    }

    #[test]
    fn missing_main_pollutants_are_none() {
        let body = r#"{"status":"success","data":{"city":"X","current":{"pollution":{"ts":"2019-06-01T10:00:00.000Z","aqius":20,"aqicn":7}}}}"#;
        let m = ok(200, body);
        assert_eq!(m.aqius, Some(20.0));
        assert_eq!(m.mainus, None);
        assert_eq!(m.maincn, None);
    }

    #[test]
    fn wrongly_typed_fields_become_none_and_numeric_strings_are_read() {
        let body = r#"{"status":"success","data":{"city":42,"location":{"coordinates":["13.4","x"]},"current":{"pollution":{"ts":7,"aqius":"55","aqicn":null,"mainus":["p2"]},"weather":"sunny"}}}"#;
        let m = ok(200, body);
        assert_eq!(m.city, None);
        assert_eq!(m.lon, Some(13.4));
        assert_eq!(m.lat, None);
        assert_eq!(m.pollution_ts, None);
        assert_eq!(m.aqius, Some(55.0));
        assert_eq!(m.aqicn, None);
        assert_eq!(m.mainus, None);
        assert_eq!(m.tp, None);
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
        let req = FetchRequest {
            endpoint: "http://127.0.0.1:8090/v2/nearest_city",
            secret_key: "k e/y",
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
        assert_eq!(redact("a key=abc/def b", "abc/def"), "a key=*** b");
        assert_eq!(redact("a key=abc%2Fdef b", "abc/def"), "a key=*** b");
        assert_eq!(redact("nothing here", "abc/def"), "nothing here");
        assert_eq!(redact("a b", "a"), "a b");
    }
}
