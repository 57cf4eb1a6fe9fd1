//! What a valid stream is. The API parses request bodies into a [`StreamSpec`] here, once, and
//! everything downstream trusts it: a known adapter, an http(s) endpoint, a key, exactly one of
//! interval or cron, a sane timeout, an S3-valid bucket name, and the adapter's parameters.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Adapters this product runs.
pub const ADAPTERS: &[&str] = &["IQAIR_DAILY"];

/// Shortest interval accepted, in ms (IQAir updates hourly; faster only helps tests and demos).
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Longest interval accepted: 31 days.
pub const MAX_INTERVAL_MS: u64 = 31 * 24 * 3_600_000;
/// Default timeout of a cron stream (an interval stream's default is its interval).
pub const DEFAULT_CRON_TIMEOUT_MS: u64 = 60_000;
/// Longest per-run timeout accepted: 1 hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Largest call budget accepted on any rate-limit window.
pub const MAX_RATE_LIMIT: i64 = 1_000_000;

/// `rate_limit` in a request: calls per UTC minute, day and month for the stream's key (0: no
/// limit on that window). A window left out keeps its value (on create: IQAir Community's 5,
/// 500 and 10 000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    pub per_minute: Option<i64>,
    pub per_day: Option<i64>,
    pub per_month: Option<i64>,
}

/// The body of `POST /streams`, as the caller sent it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInput {
    pub adapter: String,
    pub endpoint: String,
    pub secret_key: String,
    #[serde(default)]
    pub interval: Option<u64>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timeout: Option<u64>,
    pub bucket_name: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The key's call budget; absent: IQAir Community's.
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
    /// Start right away (the default) or create stopped.
    #[serde(default)]
    pub start: Option<bool>,
}

/// The body of `PATCH /streams/{id}`: any subset of the fields. Setting `interval` drops `cron`
/// and the other way round.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamUpdate {
    pub adapter: Option<String>,
    pub endpoint: Option<String>,
    pub secret_key: Option<String>,
    pub interval: Option<u64>,
    pub cron: Option<String>,
    pub timeout: Option<u64>,
    pub bucket_name: Option<String>,
    pub params: Option<Map<String, Value>>,
    pub rate_limit: Option<RateLimitInput>,
}

/// A stream that passed validation.
#[derive(Clone, PartialEq)]
pub struct StreamSpec {
    pub adapter: String,
    pub endpoint: String,
    pub secret_key: String,
    pub interval_ms: Option<u64>,
    pub cron: Option<String>,
    pub timeout_ms: u64,
    pub bucket_name: String,
    pub params: Map<String, Value>,
    /// Calls per window for the key; streams sharing a key share the strictest.
    pub rate_limit: protocol::RateLimit,
}

impl std::fmt::Debug for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSpec")
            .field("adapter", &self.adapter)
            .field("endpoint", &self.endpoint)
            .field("secret_key", &"***")
            .field("interval_ms", &self.interval_ms)
            .field("cron", &self.cron)
            .field("timeout_ms", &self.timeout_ms)
            .field("bucket_name", &self.bucket_name)
            .field("params", &self.params)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// Every problem found in one request, so the caller can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<String>);

impl StreamSpec {
    /// Validate a new stream. `timeout` defaults to the interval (or 60 s for cron).
    pub fn parse(input: StreamInput) -> Result<Self, Invalid> {
        Self::check(
            input.adapter,
            input.endpoint,
            input.secret_key,
            input.interval,
            input.cron,
            input.timeout,
            input.bucket_name,
            input.params,
            protocol::RateLimit::COMMUNITY,
            input.rate_limit,
        )
    }

    /// Apply an update to a valid spec and validate the result as a whole.
    pub fn patched(&self, update: StreamUpdate) -> Result<Self, Invalid> {
        let (interval, cron) = match (update.interval, update.cron) {
            (Some(i), None) => (Some(i), None),
            (None, Some(c)) => (None, Some(c)),
            (Some(i), Some(c)) => (Some(i), Some(c)),
            (None, None) => (self.interval_ms, self.cron.clone()),
        };
        // A timeout that was only the default (the interval, or the cron default) follows a new
        // schedule, whichever way it switches: cron to a 5 s interval must not keep 60 s.
        let schedule_changed = interval != self.interval_ms || cron != self.cron;
        let old_default = self.interval_ms.unwrap_or(DEFAULT_CRON_TIMEOUT_MS);
        let timeout = update
            .timeout
            .or(if schedule_changed && self.timeout_ms == old_default {
                None
            } else {
                Some(self.timeout_ms)
            });
        Self::check(
            update.adapter.unwrap_or_else(|| self.adapter.clone()),
            update.endpoint.unwrap_or_else(|| self.endpoint.clone()),
            update.secret_key.unwrap_or_else(|| self.secret_key.clone()),
            interval,
            cron,
            timeout,
            update
                .bucket_name
                .unwrap_or_else(|| self.bucket_name.clone()),
            update.params.unwrap_or_else(|| self.params.clone()),
            self.rate_limit,
            update.rate_limit,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        adapter: String,
        endpoint: String,
        secret_key: String,
        interval: Option<u64>,
        cron: Option<String>,
        timeout: Option<u64>,
        bucket_name: String,
        params: Map<String, Value>,
        rate_base: protocol::RateLimit,
        rate_input: Option<RateLimitInput>,
    ) -> Result<Self, Invalid> {
        let mut problems = Vec::new();
        if !ADAPTERS.contains(&adapter.as_str()) {
            problems.push(format!(
                "adapter {adapter:?} is not known; known adapters: {}",
                ADAPTERS.join(", ")
            ));
        }
        match url::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query_pairs().any(|(k, _)| k == "key") {
                    problems.push("endpoint must not carry the key; use secret_key".into());
                }
            }
            Ok(_) => {
                problems.push("endpoint must be an http:// or https:// URL with a host".into())
            }
            Err(e) => problems.push(format!("endpoint is not a URL: {e}")),
        }
        if secret_key.trim().is_empty() {
            problems.push("secret_key must not be empty".into());
        } else if secret_key.len() > 256 || secret_key.chars().any(char::is_control) {
            problems.push("secret_key must be at most 256 printable characters".into());
        }
        match (&interval, &cron) {
            (Some(_), Some(_)) => problems.push("give either interval or cron, not both".into()),
            (None, None) => problems.push("give interval (ms) or cron".into()),
            (Some(ms), None) if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(ms) => problems.push(
                format!("interval must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS} ms"),
            ),
            (None, Some(expr)) => {
                if let Err(e) = protocol::schedule::parse_cron(expr) {
                    problems.push(e);
                }
            }
            _ => {}
        }
        let timeout_ms = timeout.unwrap_or(interval.unwrap_or(DEFAULT_CRON_TIMEOUT_MS));
        if !(100..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            problems.push(format!(
                "timeout must be between 100 and {MAX_TIMEOUT_MS} ms"
            ));
        }
        if let Err(e) = objects::validate_bucket_name(&bucket_name) {
            problems.push(format!("bucket_name: {e}"));
        }
        check_iqair_params(&params, &mut problems);
        let rate_limit = check_rate_limit(rate_base, rate_input, &mut problems);
        if problems.is_empty() {
            Ok(StreamSpec {
                adapter,
                endpoint,
                secret_key,
                interval_ms: interval,
                cron,
                timeout_ms,
                bucket_name,
                params,
                rate_limit,
            })
        } else {
            Err(Invalid(problems))
        }
    }
}

/// `base` with the windows the input names, each within 0..=[`MAX_RATE_LIMIT`].
fn check_rate_limit(
    base: protocol::RateLimit,
    input: Option<RateLimitInput>,
    problems: &mut Vec<String>,
) -> protocol::RateLimit {
    let input = input.unwrap_or_default();
    let mut window = |given: Option<i64>, current: u32, name: &str| match given {
        None => current,
        Some(v) if (0..=MAX_RATE_LIMIT).contains(&v) => v as u32,
        Some(_) => {
            problems.push(format!(
                "rate_limit.{name} must be between 0 (no limit) and {MAX_RATE_LIMIT}"
            ));
            current
        }
    };
    protocol::RateLimit {
        per_minute: window(input.per_minute, base.per_minute, "per_minute"),
        per_day: window(input.per_day, base.per_day, "per_day"),
        per_month: window(input.per_month, base.per_month, "per_month"),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// IQAir takes a point (`lat` and `lon`) or a place (`city`, `state`, `country`).
fn check_iqair_params(params: &Map<String, Value>, problems: &mut Vec<String>) {
    const KNOWN: &[&str] = &["lat", "lon", "city", "state", "country"];
    for key in params.keys() {
        if !KNOWN.contains(&key.as_str()) {
            problems.push(format!(
                "params.{key} is not a parameter of IQAIR_DAILY (known: {})",
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
            match params.get(key).and_then(number) {
                Some(v) if v.is_finite() && v.abs() <= limit => {}
                Some(_) => problems.push(format!("params.{key} must be within ±{limit}")),
                None => problems.push(format!("params.{key} must be a number")),
            }
        }
    } else if place {
        for key in ["city", "state", "country"] {
            match params.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                _ => problems.push(format!("params.{key} must be a non-empty string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> StreamInput {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({"adapter": "IQAIR_DAILY", "endpoint": "http://api.airvisual.com/v2/nearest_city",
               "secret_key": "k", "interval": 300000, "bucket_name": "results",
               "params": {"lat": 52.52, "lon": 13.40}})
    }

    #[test]
    fn the_design_example_is_valid_and_timeout_defaults_to_the_interval() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        assert_eq!(spec.timeout_ms, 300_000);
        assert_eq!(spec.interval_ms, Some(300_000));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut v = base();
        v["adapter"] = json!("NOPE");
        v["secret_key"] = json!("");
        v["interval"] = json!(5);
        v["bucket_name"] = json!("Bad_Bucket");
        v["params"] = json!({"lat": 95, "lon": "x", "zip": 1});
        let Invalid(problems) = StreamSpec::parse(input(v)).unwrap_err();
        for needle in [
            "adapter",
            "secret_key",
            "interval",
            "bucket_name",
            "lat",
            "lon",
            "zip",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle} missing from {problems:?}"
            );
        }
    }

    #[test]
    fn cron_replaces_interval_and_must_parse() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("interval");
        v["cron"] = json!("0 */15 * * * *");
        let spec = StreamSpec::parse(input(v.clone())).unwrap();
        assert_eq!(spec.timeout_ms, DEFAULT_CRON_TIMEOUT_MS);
        v["cron"] = json!("not a cron");
        assert!(StreamSpec::parse(input(v.clone())).is_err());
        v["interval"] = json!(60000);
        v["cron"] = json!("0 * * * * *");
        assert!(StreamSpec::parse(input(v)).is_err(), "both given");
    }

    #[test]
    fn a_place_needs_all_three_names() {
        let mut v = base();
        v["params"] = json!({"city": "Los Angeles", "state": "California", "country": "USA"});
        assert!(StreamSpec::parse(input(v.clone())).is_ok());
        v["params"] = json!({"city": "Los Angeles"});
        assert!(StreamSpec::parse(input(v)).is_err());
    }

    #[test]
    fn a_patch_switches_schedule_and_a_default_timeout_follows_the_interval() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        let faster = spec
            .patched(StreamUpdate {
                interval: Some(60_000),
                ..StreamUpdate::default()
            })
            .unwrap();
        assert_eq!(
            (faster.interval_ms, faster.timeout_ms),
            (Some(60_000), 60_000)
        );
        let cron = spec
            .patched(StreamUpdate {
                cron: Some("0 0 * * * *".into()),
                ..StreamUpdate::default()
            })
            .unwrap();
        assert_eq!(
            (cron.interval_ms, cron.cron.as_deref()),
            (None, Some("0 0 * * * *"))
        );
    }

    #[test]
    fn rate_limits_default_to_community_and_are_checked() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        assert_eq!(spec.rate_limit, protocol::RateLimit::COMMUNITY);
        let mut v = base();
        v["rate_limit"] = json!({"per_minute": 0, "per_day": 1000000});
        let spec = StreamSpec::parse(input(v.clone())).unwrap();
        assert_eq!(
            spec.rate_limit,
            protocol::RateLimit {
                per_minute: 0,
                per_day: 1_000_000,
                per_month: 10_000
            }
        );
        let patched = spec
            .patched(StreamUpdate {
                rate_limit: Some(RateLimitInput {
                    per_month: Some(0),
                    ..RateLimitInput::default()
                }),
                ..StreamUpdate::default()
            })
            .unwrap();
        assert_eq!(
            (patched.rate_limit.per_day, patched.rate_limit.per_month),
            (1_000_000, 0),
            "a window left out keeps its value"
        );
        v["rate_limit"] = json!({"per_minute": -1, "per_day": 1000001});
        let Invalid(problems) = StreamSpec::parse(input(v)).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("rate_limit.per_minute"));
    }

    #[test]
    fn debug_hides_the_key() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        assert!(!format!("{spec:?}").contains("\"k\""));
    }
}
