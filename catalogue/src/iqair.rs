//! IQAir AirVisual v2 (`IQAIR_DAILY`): the `city` and `nearest_city` answers, read leniently
//! (fields come and go, numbers drift between integer and float, IQAIR.md §8) into a
//! [`Measurement`], the rules for a stream's parameters (a point, a place, or a sweep of a whole
//! country or state), and the listing bodies a sweep discovers its cities from.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::reading::{Cell, Column, ColumnKind};
use crate::Source;

/// The adapter name streams use.
pub const NAME: &str = "IQAIR_DAILY";

/// The parser's version; see [`Source::parser_version`].
pub const PARSER_VERSION: u32 = 1;

/// Longest API message kept from a fail envelope, so a huge error page cannot bloat the
/// failure records.
pub const MAX_MESSAGE_CHARS: usize = 200;
/// Longest excerpt of an unparseable body quoted in an error message.
pub const MAX_EXCERPT_CHARS: usize = 80;

/// The IQAir source in the catalogue.
pub struct IqAir;

impl Source for IqAir {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_params(&self, params: &Map<String, Value>) -> Vec<String> {
        check_params(params)
    }

    fn parser_version(&self) -> u32 {
        PARSER_VERSION
    }

    fn reading_columns(&self) -> &'static [Column] {
        COLUMNS
    }

    /// Both AQIs are integers (IQAIR.md §3.2: `aqius`, `aqicn`).
    fn integer_columns(&self) -> &'static [&'static str] {
        &["aqius", "aqicn"]
    }
}

/// The flattened reading of an IQAir city answer. Every field is optional: the API drops
/// fields without notice (IQAIR.md §8), and numbers arrive as integers or floats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub city: Option<String>,
    pub state: Option<String>,
    pub country: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// `current.pollution.ts`, ISO-8601 as sent. With the stream id, the reading's identity.
    pub pollution_ts: Option<String>,
    pub aqius: Option<f64>,
    pub mainus: Option<String>,
    pub aqicn: Option<f64>,
    pub maincn: Option<String>,
    /// `current.weather.ts`, independent of `pollution_ts`.
    pub weather_ts: Option<String>,
    /// Temperature, °C.
    pub tp: Option<f64>,
    /// Pressure, hPa.
    pub pr: Option<f64>,
    /// Relative humidity, %.
    pub hu: Option<f64>,
    /// Wind speed, m/s.
    pub ws: Option<f64>,
    /// Wind direction, degrees.
    pub wd: Option<f64>,
    /// Weather icon code.
    pub ic: Option<String>,
    /// Apparent temperature, °C (`heatIndex`, formerly `heat_index`).
    pub heat_index: Option<f64>,
}

/// A reading's columns besides its identity (stream, `ts` = the pollution time, result), in
/// storage order; [`Measurement::cells`] gives the values in the same order.
pub static COLUMNS: &[Column] = &[
    col("city", ColumnKind::Text, "city name"),
    col("state", ColumnKind::Text, "state or region name"),
    col("country", ColumnKind::Text, "country name"),
    col("lat", ColumnKind::Real, "latitude, degrees"),
    col("lon", ColumnKind::Real, "longitude, degrees"),
    col("aqius", ColumnKind::Real, "US AQI"),
    col("mainus", ColumnKind::Text, "main pollutant for the US AQI"),
    col("aqicn", ColumnKind::Real, "China AQI"),
    col(
        "maincn",
        ColumnKind::Text,
        "main pollutant for the China AQI",
    ),
    col(
        "weather_ts",
        ColumnKind::TimeMs,
        "time of the weather reading",
    ),
    col("tp", ColumnKind::Real, "temperature, °C"),
    col("pr", ColumnKind::Real, "pressure, hPa"),
    col("hu", ColumnKind::Real, "relative humidity, %"),
    col("ws", ColumnKind::Real, "wind speed, m/s"),
    col("wd", ColumnKind::Real, "wind direction, degrees"),
    col("ic", ColumnKind::Text, "weather icon code"),
    col("heat_index", ColumnKind::Real, "apparent temperature, °C"),
];

const fn col(name: &'static str, kind: ColumnKind, doc: &'static str) -> Column {
    Column { name, kind, doc }
}

impl Measurement {
    /// The pollution time in epoch milliseconds: with the stream, the reading's identity (IQAir
    /// updates hourly, so fetching every few minutes yields one reading per hour). `None` when
    /// missing or unparsable: such a reading is not stored.
    pub fn ts_ms(&self) -> Option<i64> {
        self.pollution_ts
            .as_deref()
            .and_then(common::parse_rfc3339_ms)
    }

    /// The values of [`COLUMNS`], in order.
    pub fn cells(&self) -> [Cell<'_>; 17] {
        [
            Cell::Text(self.city.as_deref()),
            Cell::Text(self.state.as_deref()),
            Cell::Text(self.country.as_deref()),
            Cell::Real(self.lat),
            Cell::Real(self.lon),
            Cell::Real(self.aqius),
            Cell::Text(self.mainus.as_deref()),
            Cell::Real(self.aqicn),
            Cell::Text(self.maincn.as_deref()),
            Cell::TimeMs(
                self.weather_ts
                    .as_deref()
                    .and_then(common::parse_rfc3339_ms),
            ),
            Cell::Real(self.tp),
            Cell::Real(self.pr),
            Cell::Real(self.hu),
            Cell::Real(self.ws),
            Cell::Real(self.wd),
            Cell::Text(self.ic.as_deref()),
            Cell::Real(self.heat_index),
        ]
    }
}

/// IQAir takes a point (`lat` and `lon`) or a place (`city`, `state`, `country`).
pub fn check_params(params: &Map<String, Value>) -> Vec<String> {
    const KNOWN: &[&str] = &["lat", "lon", "city", "state", "country"];
    let mut problems = Vec::new();
    for key in params.keys() {
        if !KNOWN.contains(&key.as_str()) {
            problems.push(format!(
                "params.{key} is not a parameter of {NAME} (known: {})",
                KNOWN.join(", ")
            ));
        }
    }
    let has = |k: &str| params.contains_key(k);
    let point = has("lat") || has("lon");
    let place = has("city") || has("state") || has("country");
    if point && place {
        problems.push("params: give lat/lon or city/state/country, not both".into());
    } else if point {
        for (key, limit) in [("lat", 90.0), ("lon", 180.0)] {
            let value = match params.get(key) {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match value {
                Some(v) if v.is_finite() && v.abs() <= limit => {}
                Some(_) => problems.push(format!("params.{key} must be within ±{limit}")),
                None => problems.push(format!("params.{key} must be a number")),
            }
        }
    } else if place {
        // One city needs all three names; a sweep (no city) needs the country, and may narrow
        // it to one state.
        let required: &[&str] = if has("city") {
            &["city", "state", "country"]
        } else if has("state") {
            &["state", "country"]
        } else {
            &["country"]
        };
        for key in required {
            match params.get(*key) {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                _ => problems.push(format!("params.{key} must be a non-empty string")),
            }
        }
    }
    problems
}

/// The place a sweep covers: every city of a country, or of one state of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SweepScope {
    /// The country, as the listing endpoints name it (e.g. `Poland`, `USA`).
    pub country: String,
    /// One state of it (e.g. `Lesser Poland Voivodeship`); `None`: every state.
    pub state: Option<String>,
}

impl SweepScope {
    /// `Poland`, or `Lesser Poland Voivodeship, Poland`: for messages.
    pub fn describe(&self) -> String {
        match &self.state {
            Some(state) => format!("{state}, {}", self.country),
            None => self.country.clone(),
        }
    }
}

/// Stream parameters as either service holds them: JSON values at the API, strings on the wire.
pub trait ParamText {
    /// Whether the parameter `name` is given at all, whatever its value.
    fn has_param(&self, name: &str) -> bool;
    /// The parameter `name` as text, when it is a string (on the wire, every value is).
    fn param_text(&self, name: &str) -> Option<&str>;
}

impl ParamText for Map<String, Value> {
    fn has_param(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    fn param_text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
}

impl ParamText for std::collections::BTreeMap<String, String> {
    fn has_param(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    fn param_text(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// The sweep a stream's parameters ask for: `country` (and optionally `state`) without `city`
/// and without `lat`/`lon`. `None` for one city, one point, the IP lookup, or parameters that
/// [`check_params`] refuses (a blank country). An empty `state` means the whole country.
pub fn sweep_scope(params: &impl ParamText) -> Option<SweepScope> {
    let given = |name: &str| params.param_text(name).filter(|v| !v.trim().is_empty());
    if ["city", "lat", "lon"]
        .iter()
        .any(|name| params.has_param(name))
    {
        return None;
    }
    Some(SweepScope {
        country: given("country")?.to_string(),
        state: given("state").map(str::to_string),
    })
}

/// Whether `endpoint` is IQAir's `city` endpoint (its path ends with `/city`), the only one a
/// sweep can use: `nearest_city` takes a point, not a name.
pub fn is_city_endpoint(endpoint: &str) -> bool {
    let path = endpoint_path(endpoint);
    path.trim_end_matches('/').ends_with("/city")
}

/// The listing endpoints of IQAir v2 (IQAIR.md §2, §4): what a sweep discovers its cities with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listing {
    /// `GET /v2/countries`: `[{"country": …}]`.
    Countries,
    /// `GET /v2/states?country=`: `[{"state": …}]`.
    States,
    /// `GET /v2/cities?state=&country=`: `[{"city": …}]`.
    Cities,
}

impl Listing {
    /// The endpoint's last path segment.
    pub fn path(self) -> &'static str {
        match self {
            Listing::Countries => "countries",
            Listing::States => "states",
            Listing::Cities => "cities",
        }
    }

    /// The key each entry of the listing names its item with.
    pub fn field(self) -> &'static str {
        match self {
            Listing::Countries => "country",
            Listing::States => "state",
            Listing::Cities => "city",
        }
    }
}

/// The listing endpoint beside a stream's `city` endpoint: the trailing `city` segment replaced
/// (`http://host/v2/city` → `http://host/v2/states`), any query kept. `None` when `endpoint` is
/// not a `city` endpoint.
pub fn listing_endpoint(endpoint: &str, listing: Listing) -> Option<String> {
    if !is_city_endpoint(endpoint) {
        return None;
    }
    let path = endpoint_path(endpoint);
    let rest = &endpoint[path.len()..];
    let base = path.trim_end_matches('/');
    let base = &base[..base.len() - "city".len()];
    Some(format!("{base}{}{rest}", listing.path()))
}

/// `endpoint` up to its query or fragment.
fn endpoint_path(endpoint: &str) -> &str {
    let end = endpoint.find(['?', '#']).unwrap_or(endpoint.len());
    &endpoint[..end]
}

/// What a listing body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingBody {
    /// A success envelope whose `data` is an array: the names, in the API's order, each once
    /// (entries without a string name are skipped).
    Names(Vec<String>),
    /// A fail envelope with its message, e.g. `country_not_found` or `incorrect_api_key`.
    Fail(String),
    /// Anything else; the reason, for an error message.
    Unrecognised(String),
}

/// Reads a listing body (`{"status":"success","data":[{"state":"…"}, …]}`, IQAIR.md §4) for
/// `listing`. Never panics, whatever the bytes.
pub fn read_listing(body: &[u8], listing: Listing) -> ListingBody {
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
        let success = object
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("success"));
        if let (true, Some(Value::Array(entries))) = (success, object.get("data")) {
            let mut names: Vec<String> = Vec::with_capacity(entries.len());
            for entry in entries {
                if let Some(name) = entry.get(listing.field()).and_then(Value::as_str) {
                    if !name.trim().is_empty() && !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
            return ListingBody::Names(names);
        }
    }
    match read_envelope(body) {
        Envelope::Fail(message) => ListingBody::Fail(message),
        Envelope::Unrecognised(reason) => ListingBody::Unrecognised(reason),
        Envelope::Success(_) => ListingBody::Unrecognised(format!(
            "success envelope without a {} listing: {}",
            listing.path(),
            excerpt(body)
        )),
    }
}

/// What an API fail message means, for callers that only need the broad kind (the worker's
/// adapter keeps its own, finer classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// A rate-limit window is used up (`call_per_*_limit_reached`, `too_many_requests`).
    RateLimited(LimitWindow),
    /// The key is wrong, expired or too weak (`incorrect_api_key`, `api_key_expired`,
    /// `Forbidden`, `Payment Required`, `permission_denied…`, `feature_not_available`).
    Auth,
    /// `country_not_found`.
    CountryNotFound,
    /// `state_not_found` (also sent for a wrong country, IQAIR.md §6.2).
    StateNotFound,
    /// `city_not_found`.
    CityNotFound,
    /// Anything else.
    Other,
}

/// Which window a limit message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitWindow {
    Second,
    Minute,
    Day,
    Month,
    /// Plain `call_limit_reached`.
    Unknown,
}

/// Classifies a fail message lower-cased, by substring (IQAIR.md §8.1, §8.2).
pub fn fail_kind(message: &str) -> FailKind {
    let lower = message.to_ascii_lowercase();
    if lower.contains("too_many_requests") || lower.contains("per_second") {
        return FailKind::RateLimited(LimitWindow::Second);
    }
    if lower.contains("limit_reached") {
        let window = if lower.contains("per_minute") {
            LimitWindow::Minute
        } else if lower.contains("per_day") {
            LimitWindow::Day
        } else if lower.contains("per_month") {
            LimitWindow::Month
        } else {
            LimitWindow::Unknown
        };
        return FailKind::RateLimited(window);
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
        FailKind::Auth
    } else if lower.contains("country_not_found") {
        FailKind::CountryNotFound
    } else if lower.contains("state_not_found") {
        FailKind::StateNotFound
    } else if lower.contains("city_not_found") {
        FailKind::CityNotFound
    } else {
        FailKind::Other
    }
}

/// What an IQAir body is, before anyone decides what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// A success envelope; `Some` when `data` is an object.
    Success(Option<Map<String, Value>>),
    /// A fail envelope with its message (trimmed, at most [`MAX_MESSAGE_CHARS`]).
    Fail(String),
    /// Not an envelope; the reason, for an error message.
    Unrecognised(String),
}

/// Reads the envelope of a body: success, fail with its message, or what else it is. Never
/// panics, whatever the bytes.
pub fn read_envelope(body: &[u8]) -> Envelope {
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

/// The reading in a stored body: a success envelope whose `data` is a city object. `None` for
/// anything else (a listing, an empty object, a body that is not a success envelope).
pub fn parse(body: &[u8]) -> Option<Measurement> {
    match read_envelope(body) {
        Envelope::Success(Some(data)) => parse_measurement(data),
        _ => None,
    }
}

/// Flattens a city object (`data` of `city`/`nearest_city`) into a [`Measurement`]. Every field
/// is optional, numbers may be integers, floats or numeric strings, unknown fields are ignored.
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

/// A finite number from a JSON number or a numeric string.
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
pub fn excerpt(body: &[u8]) -> String {
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

/// Real answer shapes (IQAIR.md §3.2), for tests and for the API's documented examples.
pub mod examples {
    /// A Community `nearest_city` answer in the 2026 shape (IQAIR.md §3.2): pollution first,
    /// `heatIndex`, float wind speed.
    pub const SUCCESS_2026: &str = r#"{"status":"success","data":{"city":"Los Angeles","state":"California","country":"USA","location":{"type":"Point","coordinates":[-118.2417,34.0669]},"current":{"pollution":{"ts":"2026-03-01T10:00:00.000Z","aqius":66,"mainus":"p2","aqicn":44,"maincn":"p1"},"weather":{"ts":"2026-03-01T11:00:00.000Z","ic":"04n","hu":86,"pr":1012,"tp":6,"wd":252,"ws":4.54,"heatIndex":7}}}}"#;

    /// The 2018 shape: weather before pollution, other key order inside weather, integer `ws`,
    /// no heat index, a `ts` that is not on the hour.
    pub const SUCCESS_2018: &str = r#"{
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use examples::{SUCCESS_2018, SUCCESS_2026};

    fn ok(body: &str) -> Measurement {
        parse(body.as_bytes()).unwrap_or_else(|| panic!("expected a measurement for {body}"))
    }

    #[test]
    fn parses_the_2026_community_shape() {
        let m = ok(SUCCESS_2026);
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
        let m = ok(SUCCESS_2018);
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
        let m = ok(body);
        assert_eq!(m.heat_index, Some(31.0));
        assert_eq!(m.tp, Some(29.0));
        assert_eq!(m.aqius, None);
    }

    #[test]
    fn paid_plan_extras_and_unknown_fields_are_ignored() {
        let body = r#"{"status":"success","data":{"city":"Beijing","state":"Beijing","country":"China","name":"US Embassy","location":{"type":"Point","coordinates":[116.466258,39.954352]},"forecasts":[{"ts":"2025-01-01T00:00:00.000Z","aqius":10,"pop":20,"pm25":3.5}],"units":{"p2":"ugm3","co":"ppm","pm25":"ugm3"},"history":{"pollution":[],"weather":[]},"current":{"pollution":{"ts":"2025-01-01T00:00:00.000Z","aqius":12,"mainus":"p2","aqicn":4,"maincn":"p2","p2":{"conc":3,"aqius":12,"aqicn":4},"co":{"conc":0.2,"aqius":2,"aqicn":2}},"weather":{"ts":"2025-01-01T00:00:00.000Z","tp":-3.5,"pr":1030,"hu":20,"ws":0.45,"wd":0,"ic":"01n","heatIndex":-3,"brand_new":true}},"future_field":{"x":[1,2,3]}}}"#;
        let m = ok(body);
        assert_eq!(m.aqius, Some(12.0));
        assert_eq!(m.tp, Some(-3.5));
        assert_eq!(m.ws, Some(0.45));
        assert_eq!(m.wd, Some(0.0));
        assert_eq!(m.lat, Some(39.954352));
    }

    #[test]
    fn missing_pollution_still_succeeds_with_empty_pollution_fields() {
        let body = r#"{"status":"success","data":{"city":"Oslo","state":"Oslo","country":"Norway","location":{"type":"Point","coordinates":[10.7522,59.9139]},"current":{"weather":{"ts":"2026-01-01T10:00:00.000Z","tp":-4,"pr":1001,"hu":80,"ws":3,"wd":180,"ic":"13d"}}}}"#;
        let m = ok(body);
        assert_eq!(m.city.as_deref(), Some("Oslo"));
        assert_eq!(m.pollution_ts, None);
        assert_eq!(m.ts_ms(), None, "no identity: not stored as a reading");
        assert_eq!(m.aqius, None);
        assert_eq!(m.mainus, None);
        assert_eq!(m.tp, Some(-4.0));
    }

    #[test]
    fn missing_main_pollutants_are_none() {
        let body = r#"{"status":"success","data":{"city":"X","current":{"pollution":{"ts":"2019-06-01T10:00:00.000Z","aqius":20,"aqicn":7}}}}"#;
        let m = ok(body);
        assert_eq!(m.aqius, Some(20.0));
        assert_eq!(m.mainus, None);
        assert_eq!(m.maincn, None);
    }

    #[test]
    fn wrongly_typed_fields_become_none_and_numeric_strings_are_read() {
        let body = r#"{"status":"success","data":{"city":42,"location":{"coordinates":["13.4","x"]},"current":{"pollution":{"ts":7,"aqius":"55","aqicn":null,"mainus":["p2"]},"weather":"sunny"}}}"#;
        let m = ok(body);
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
    fn listings_empty_objects_and_non_envelopes_hold_no_reading() {
        for body in [
            r#"{"status":"success","data":[{"country":"Afghanistan"},{"country":"USA"}]}"#,
            r#"{"status":"success","data":{}}"#,
            r#"{"status":"fail","data":{"message":"call_limit_reached"}}"#,
            "<html>502</html>",
            "",
        ] {
            assert_eq!(parse(body.as_bytes()), None, "{body:?}");
        }
    }

    #[test]
    fn cells_follow_the_columns_and_times_are_milliseconds() {
        let m = ok(SUCCESS_2026);
        let cells = m.cells();
        assert_eq!(cells.len(), COLUMNS.len());
        for (cell, column) in cells.iter().zip(COLUMNS) {
            let kind = match cell {
                Cell::Text(_) => ColumnKind::Text,
                Cell::Real(_) => ColumnKind::Real,
                Cell::TimeMs(_) => ColumnKind::TimeMs,
            };
            assert_eq!(kind, column.kind, "{}", column.name);
        }
        assert_eq!(cells[0], Cell::Text(Some("Los Angeles")));
        assert_eq!(cells[5], Cell::Real(Some(66.0)));
        assert_eq!(cells[9], Cell::TimeMs(Some(1_772_362_800_000)));
        assert_eq!(m.ts_ms(), Some(1_772_359_200_000));
    }

    #[test]
    fn params_are_a_point_or_a_place() {
        let check = |v: Value| check_params(v.as_object().unwrap());
        assert!(check(json!({"lat": 52.52, "lon": 13.40})).is_empty());
        assert!(check(json!({"lat": "52.52", "lon": "13.4"})).is_empty());
        assert!(
            check(json!({"city": "Los Angeles", "state": "California", "country": "USA"}))
                .is_empty()
        );
        assert!(
            check(json!({})).is_empty(),
            "no params: the API's IP lookup"
        );
        let problems = check(json!({"lat": 95, "lon": "x", "zip": 1}));
        for needle in [
            "params.zip",
            "params.lat must be within",
            "params.lon must be a number",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:?}"
            );
        }
        assert!(!check(json!({"city": "Los Angeles"})).is_empty());
        assert!(!check(json!({"lat": 1, "lon": 2, "city": "x"})).is_empty());
    }

    #[test]
    fn a_country_or_a_state_of_it_is_a_sweep() {
        let check = |v: Value| check_params(v.as_object().unwrap());
        assert!(check(json!({"country": "Poland"})).is_empty());
        assert!(
            check(json!({"country": "Poland", "state": "Lesser Poland Voivodeship"})).is_empty()
        );
        // The messages of the one-city rules stay as they were.
        assert_eq!(
            check(json!({"city": "Krakow", "country": "Poland"})),
            vec!["params.state must be a non-empty string"]
        );
        assert_eq!(
            check(json!({"city": "Los Angeles"})),
            vec![
                "params.state must be a non-empty string",
                "params.country must be a non-empty string"
            ]
        );
        // A state names no country by itself; blank or non-string names are no names.
        assert_eq!(
            check(json!({"state": "Mazovia"})),
            vec!["params.country must be a non-empty string"]
        );
        assert_eq!(
            check(json!({"country": " "})),
            vec!["params.country must be a non-empty string"]
        );
        assert_eq!(
            check(json!({"country": "Poland", "state": ""})),
            vec!["params.state must be a non-empty string"]
        );
        assert_eq!(
            check(json!({"country": 48})),
            vec!["params.country must be a non-empty string"]
        );
        assert_eq!(
            check(json!({"country": "Poland", "lat": 50.06, "lon": 19.94})),
            vec!["params: give lat/lon or city/state/country, not both"]
        );
    }

    #[test]
    fn sweep_scope_reads_both_forms_of_params() {
        let json_params = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            sweep_scope(&json_params(json!({"country": "Poland"}))),
            Some(SweepScope {
                country: "Poland".into(),
                state: None
            })
        );
        let state = sweep_scope(&json_params(
            json!({"country": "Poland", "state": "Lesser Poland Voivodeship"}),
        ))
        .unwrap();
        assert_eq!(state.state.as_deref(), Some("Lesser Poland Voivodeship"));
        assert_eq!(state.describe(), "Lesser Poland Voivodeship, Poland");
        for not_a_sweep in [
            json!({"city": "Krakow", "state": "Lesser Poland Voivodeship", "country": "Poland"}),
            json!({"lat": 50.06, "lon": 19.94}),
            json!({}),
            json!({"state": "Mazovia"}),
            json!({"country": ""}),
            // A city of the wrong type is still a city, not a sweep.
            json!({"country": "Poland", "city": 7}),
        ] {
            assert_eq!(
                sweep_scope(&json_params(not_a_sweep.clone())),
                None,
                "{not_a_sweep}"
            );
        }
        // On the wire every parameter is a string.
        let wire = std::collections::BTreeMap::from([
            ("country".to_string(), "Poland".to_string()),
            ("state".to_string(), "Mazovia".to_string()),
        ]);
        assert_eq!(
            sweep_scope(&wire),
            Some(SweepScope {
                country: "Poland".into(),
                state: Some("Mazovia".into())
            })
        );
        let blank_state = std::collections::BTreeMap::from([
            ("country".to_string(), "Poland".to_string()),
            ("state".to_string(), " ".to_string()),
        ]);
        assert_eq!(sweep_scope(&blank_state).and_then(|s| s.state), None);
    }

    #[test]
    fn only_the_city_endpoint_can_sweep_and_its_listings_sit_beside_it() {
        assert!(is_city_endpoint("http://api.airvisual.com/v2/city"));
        assert!(is_city_endpoint("https://api.airvisual.com/v2/city/"));
        assert!(is_city_endpoint("http://127.0.0.1:8090/v2/city?lang=en"));
        assert!(!is_city_endpoint(
            "http://api.airvisual.com/v2/nearest_city"
        ));
        assert!(!is_city_endpoint("http://api.airvisual.com/v2/cities"));
        assert!(!is_city_endpoint("http://city/v2/nearest_city?x=/city"));
        assert_eq!(
            listing_endpoint("http://api.airvisual.com/v2/city", Listing::States).as_deref(),
            Some("http://api.airvisual.com/v2/states")
        );
        assert_eq!(
            listing_endpoint("http://127.0.0.1:8090/v2/city/?lang=en", Listing::Cities).as_deref(),
            Some("http://127.0.0.1:8090/v2/cities?lang=en")
        );
        assert_eq!(
            listing_endpoint("http://h/v2/nearest_city", Listing::States),
            None
        );
    }

    #[test]
    fn listing_bodies_give_their_names_or_say_what_they_are() {
        // PYAV's fixtures (IQAIR.md §4): names with spaces and dots, in the API's order.
        let states = r#"{"status":"success","data":[{"state":"Lesser Poland Voivodeship"},{"state":"Mazovia"},{"state":"Silesia"}]}"#;
        assert_eq!(
            read_listing(states.as_bytes(), Listing::States),
            ListingBody::Names(vec![
                "Lesser Poland Voivodeship".into(),
                "Mazovia".into(),
                "Silesia".into()
            ])
        );
        let cities = r#"{
          "status": "success",
          "data": [{"city": "Boulder"}, {"city": "U.S. Air Force Academy"}, {"city": "Boulder"},
                   {"town": "x"}, {"city": 3}, {"city": ""}]
        }"#;
        assert_eq!(
            read_listing(cities.as_bytes(), Listing::Cities),
            ListingBody::Names(vec!["Boulder".into(), "U.S. Air Force Academy".into()])
        );
        let empty = r#"{"status":"success","data":[]}"#;
        assert_eq!(
            read_listing(empty.as_bytes(), Listing::Cities),
            ListingBody::Names(vec![])
        );
        let fail = r#"{"status":"fail","data":{"message":"country_not_found"}}"#;
        assert_eq!(
            read_listing(fail.as_bytes(), Listing::States),
            ListingBody::Fail("country_not_found".into())
        );
        let city_object = examples::SUCCESS_2026;
        match read_listing(city_object.as_bytes(), Listing::Cities) {
            ListingBody::Unrecognised(reason) => {
                assert!(reason.contains("without a cities listing"), "{reason}")
            }
            other => panic!("a city answer is no listing: {other:?}"),
        }
        for body in ["", "<html>502</html>", r#""node not found""#, "[]"] {
            assert!(
                matches!(
                    read_listing(body.as_bytes(), Listing::States),
                    ListingBody::Unrecognised(_)
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn fail_messages_fall_into_kinds() {
        for (message, kind) in [
            (
                "call_per_minute_limit_reached",
                FailKind::RateLimited(LimitWindow::Minute),
            ),
            (
                "call_per_day_limit_reached",
                FailKind::RateLimited(LimitWindow::Day),
            ),
            (
                "call_per_month_limit_reached",
                FailKind::RateLimited(LimitWindow::Month),
            ),
            (
                "call_limit_reached",
                FailKind::RateLimited(LimitWindow::Unknown),
            ),
            (
                "too_many_requests",
                FailKind::RateLimited(LimitWindow::Second),
            ),
            ("incorrect_api_key", FailKind::Auth),
            ("api_key_expired", FailKind::Auth),
            ("Forbidden", FailKind::Auth),
            ("Payment Required", FailKind::Auth),
            (
                "permission_denied (you don't have access to this endpoint",
                FailKind::Auth,
            ),
            ("country_not_found", FailKind::CountryNotFound),
            ("state_not_found", FailKind::StateNotFound),
            ("city_not_found", FailKind::CityNotFound),
            ("no_nearest_city", FailKind::Other),
        ] {
            assert_eq!(fail_kind(message), kind, "{message}");
        }
    }
}
