//! One model of a stream, from the request that creates it to the config a worker runs:
//!
//! - [`StreamInput`] / [`StreamUpdate`]: a `POST /streams` / `PATCH /streams/{id}` body as sent;
//! - [`StreamSpec`]: what passed validation, parsed once at the API and trusted downstream (a
//!   known adapter with valid parameters, an http(s) endpoint, a key, exactly one of interval
//!   or cron, a sane timeout, an S3-valid bucket name);
//! - [`StreamRow`]: a stored stream, the spec with its desired state, assignment and health;
//!   `StreamConfig::from(&row)` is what its worker runs;
//! - [`StreamView`]: what the API shows, the key as `***`.

use std::collections::HashSet;

use common::SecretKey;
use protocol::{RateLimit, Schedule, StreamConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

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

/// A whole number as JSON sends it: `18000`, or `18000.0` from a client whose numbers are all
/// floats (JavaScript); a fraction, a negative or a number over `u64` is refused.
fn whole_number<'de, D: serde::Deserializer<'de>, T: TryFrom<u64> + TryFrom<i64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    use serde::de::Error;
    let number = Option::<serde_json::Number>::deserialize(deserializer)?;
    let Some(number) = number else {
        return Ok(None);
    };
    let whole = if let Some(n) = number.as_u64() {
        T::try_from(n).ok()
    } else if let Some(n) = number.as_i64() {
        T::try_from(n).ok()
    } else {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .and_then(|f| T::try_from(f as i64).ok())
    };
    whole
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

/// `rate_limit` in a request: calls per minute, day and month for the stream's key (0: no
/// limit on that window). A window left out keeps its value (on create: IQAir Community's 5,
/// 500 and 10 000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    /// Calls in any 61 s (0: no limit).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub per_minute: Option<i64>,
    /// Calls per UTC day (0: no limit).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub per_day: Option<i64>,
    /// Calls per UTC month (0: no limit).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub per_month: Option<i64>,
}

/// A key's call budget as stored and shown (0: no limit on that window).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // The schema of `protocol::RateLimit`, which has no utoipa derive.
pub struct RateLimitShown {
    per_minute: u32,
    per_day: u32,
    per_month: u32,
}

/// The body of `POST /streams`, as the caller sent it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamInput {
    /// The stream's id, chosen by the client so a retried create is recognised (the same id
    /// with the same stream is not created twice; with another stream it is a conflict).
    /// Absent: the server makes one (a UUIDv7).
    #[serde(default)]
    pub id: Option<Uuid>,
    /// A source of the adapter catalogue, e.g. `IQAIR_DAILY`.
    #[schema(example = "IQAIR_DAILY")]
    pub adapter: String,
    /// The API URL, without the key, e.g. `http://api.airvisual.com/v2/nearest_city`. Every
    /// adapter but `PUSH` needs one.
    #[serde(default)]
    #[schema(pattern = "^https?://[^/?#@]+")]
    pub endpoint: String,
    /// The API key; never shown again (`***`). Every adapter but `PUSH` needs one.
    #[serde(default = "no_secret")]
    #[schema(value_type = String, format = Password, min_length = 1, max_length = 256)]
    pub secret_key: SecretKey,
    /// Milliseconds between runs (1000 to 31 days); give this or `cron`.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1000, maximum = 2678400000u64)]
    pub interval: Option<u64>,
    /// A cron expression with seconds, UTC (`0 */15 * * * *`); give this or `interval`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Per-run timeout in ms (100 to 1 h); default the interval, or 60 s for cron.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 100, maximum = 3600000)]
    pub timeout: Option<u64>,
    /// The bucket (S3 naming rules) raw objects go to.
    #[schema(pattern = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    pub bucket_name: String,
    /// The adapter's parameters (IQAir: `lat` and `lon`, or `city`, `state` and `country`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// The key's call budget; absent: IQAir Community's.
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
    /// `HTTP_JSON`: the request: `method`, `headers`, `body` (templates allowed) and `auth`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// `HTTP_JSON`: how pages follow each other (`kind`: `none`, `page`, `offset`, `cursor`,
    /// `link_header`, `next_url`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub pagination: Option<Value>,
    /// `HTTP_JSON`: a JSON pointer to the array of records in each page, e.g. `/data`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub records: Option<Value>,
    /// `HTTP_JSON`: the most pages one run fetches (default 1000); more is recorded
    /// `truncated`.
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub max_pages: Option<Value>,
    /// `HTTP_JSON`: pages fetched at once when the first page tells the total (default 4).
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub page_concurrency: Option<Value>,
    /// `HTTP_JSON`: an async report job to submit, poll and download each run.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
    /// `PUSH`: when pushed records become an object: `{"max_records", "max_bytes", "max_ms"}`
    /// (defaults 10,000 records, 8 MiB, 5 s).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub batch: Option<Value>,
    /// Where the first incremental window (`{{window_start}}`) starts, RFC 3339; default one
    /// schedule period before the first run.
    #[serde(default)]
    pub start_at: Option<String>,
    /// Start right away (the default) or create stopped.
    #[serde(default)]
    pub start: Option<bool>,
}

/// The body of `PATCH /streams/{id}`: any subset of the fields. Setting `interval` drops `cron`
/// and the other way round.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamUpdate {
    pub adapter: Option<String>,
    pub endpoint: Option<String>,
    #[schema(value_type = Option<String>, format = Password, min_length = 1, max_length = 256)]
    pub secret_key: Option<SecretKey>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1000, maximum = 2678400000u64)]
    pub interval: Option<u64>,
    pub cron: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 100, maximum = 3600000)]
    pub timeout: Option<u64>,
    pub bucket_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    pub rate_limit: Option<RateLimitInput>,
    /// `HTTP_JSON`: the request: `method`, `headers`, `body` (templates allowed) and `auth`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// `HTTP_JSON`: how pages follow each other (`kind`: `none`, `page`, `offset`, `cursor`,
    /// `link_header`, `next_url`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub pagination: Option<Value>,
    /// `HTTP_JSON`: a JSON pointer to the array of records in each page, e.g. `/data`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub records: Option<Value>,
    /// `HTTP_JSON`: the most pages one run fetches (default 1000); more is recorded
    /// `truncated`.
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub max_pages: Option<Value>,
    /// `HTTP_JSON`: pages fetched at once when the first page tells the total (default 4).
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub page_concurrency: Option<Value>,
    /// `HTTP_JSON`: an async report job to submit, poll and download each run.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
    /// `PUSH`: when pushed records become an object: `{"max_records", "max_bytes", "max_ms"}`
    /// (defaults 10,000 records, 8 MiB, 5 s).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub batch: Option<Value>,
    /// Where the first incremental window (`{{window_start}}`) starts, RFC 3339; default one
    /// schedule period before the first run.
    #[serde(default)]
    pub start_at: Option<String>,
}

/// Every problem found in one request, so the caller can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream is not valid: {}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// A stream that passed validation. Outside this crate it is built only by
/// [`StreamSpec::parse`] and [`StreamSpec::patched`]; inside, also by the database, which stores
/// nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub(crate) adapter: String,
    pub(crate) endpoint: String,
    pub(crate) secret_key: SecretKey,
    pub(crate) schedule: Schedule,
    pub(crate) timeout_ms: u64,
    pub(crate) bucket_name: String,
    pub(crate) params: Map<String, Value>,
    pub(crate) rate_limit: RateLimit,
    /// What the source calls, for sources that take a description (`HTTP_JSON`): `request`,
    /// `pagination`, `records`, `max_pages`, `page_concurrency`, `job`, as given. Empty
    /// otherwise.
    pub(crate) source: Map<String, Value>,
    /// Where the first incremental window starts, ms since the Unix epoch.
    pub(crate) start_at_ms: Option<i64>,
}

/// Every field of a stream before validation: a new stream's, or a stored one with an update
/// applied.
struct Draft {
    adapter: String,
    endpoint: String,
    secret_key: SecretKey,
    interval: Option<u64>,
    cron: Option<String>,
    timeout: Option<u64>,
    bucket_name: String,
    params: Map<String, Value>,
    /// The budget the windows of `rate_input` change.
    rate_base: RateLimit,
    rate_input: Option<RateLimitInput>,
    source: Map<String, Value>,
    start_at: Option<String>,
}

/// The source description's fields, in the order the API names them.
pub const SOURCE_FIELDS: [&str; 7] = [
    "request",
    "pagination",
    "records",
    "max_pages",
    "page_concurrency",
    "job",
    "batch",
];

/// A `PUSH` stream's stored timeout: it makes no calls, but the column wants one.
const PUSH_TIMEOUT_MS: u64 = DEFAULT_CRON_TIMEOUT_MS;

/// An absent key (`PUSH` streams have none).
fn no_secret() -> SecretKey {
    SecretKey::new(String::new())
}

/// `base` with each field the request gave (a JSON `null` leaves a field as it was).
fn source_with(mut base: Map<String, Value>, given: [Option<Value>; 7]) -> Map<String, Value> {
    for (name, value) in SOURCE_FIELDS.iter().zip(given) {
        if let Some(value) = value {
            base.insert((*name).to_owned(), value);
        }
    }
    base
}

impl StreamSpec {
    /// Validate a new stream. `timeout` defaults to the interval (or 60 s for cron).
    pub fn parse(input: StreamInput) -> Result<Self, Invalid> {
        Draft {
            adapter: input.adapter,
            endpoint: input.endpoint,
            secret_key: input.secret_key,
            interval: input.interval,
            cron: input.cron,
            timeout: input.timeout,
            bucket_name: input.bucket_name,
            params: input.params,
            rate_base: RateLimit::COMMUNITY,
            rate_input: input.rate_limit,
            source: source_with(
                Map::new(),
                [
                    input.request,
                    input.pagination,
                    input.records,
                    input.max_pages,
                    input.page_concurrency,
                    input.job,
                    input.batch,
                ],
            ),
            start_at: input.start_at,
        }
        .check()
    }

    /// Apply an update to a valid spec and validate the result as a whole.
    ///
    /// A `PUSH` stream stores a schedule, timeout and start the user never gave (the table
    /// wants them), and its description fits no other adapter: so the stored schedule, timeout
    /// and start carry over only between fetched streams, and the stored description only
    /// between streams of the same side (fetched or pushed).
    pub fn patched(&self, update: StreamUpdate) -> Result<Self, Invalid> {
        let was_push = self.is_push();
        let to_push = update.adapter.as_deref().unwrap_or(&self.adapter) == catalogue::push::NAME;
        let (interval, cron, timeout, start_at) = if was_push || to_push {
            (
                update.interval,
                update.cron,
                update.timeout,
                update.start_at,
            )
        } else {
            let (interval, cron) = match (update.interval, update.cron) {
                (None, None) => (self.interval_ms(), self.cron().map(str::to_owned)),
                given => given,
            };
            // A timeout that was only the default (the interval, or the cron default) follows a
            // new schedule, whichever way it switches: cron to a 5 s interval must not keep 60 s.
            let schedule_changed = interval != self.interval_ms() || cron.as_deref() != self.cron();
            let old_default = self.interval_ms().unwrap_or(DEFAULT_CRON_TIMEOUT_MS);
            let timeout =
                update
                    .timeout
                    .or(if schedule_changed && self.timeout_ms == old_default {
                        None
                    } else {
                        Some(self.timeout_ms)
                    });
            let start_at = update
                .start_at
                .or_else(|| self.start_at_ms.and_then(common::rfc3339_ms));
            (interval, cron, timeout, start_at)
        };
        let source_base = if was_push == to_push {
            self.source.clone()
        } else {
            Map::new()
        };
        Draft {
            adapter: update.adapter.unwrap_or_else(|| self.adapter.clone()),
            endpoint: update.endpoint.unwrap_or_else(|| self.endpoint.clone()),
            secret_key: update.secret_key.unwrap_or_else(|| self.secret_key.clone()),
            interval,
            cron,
            timeout,
            bucket_name: update
                .bucket_name
                .unwrap_or_else(|| self.bucket_name.clone()),
            params: update.params.unwrap_or_else(|| self.params.clone()),
            rate_base: self.rate_limit,
            rate_input: update.rate_limit,
            source: source_with(
                source_base,
                [
                    update.request,
                    update.pagination,
                    update.records,
                    update.max_pages,
                    update.page_concurrency,
                    update.job,
                    update.batch,
                ],
            ),
            start_at,
        }
        .check()
    }

    /// e.g. `IQAIR_DAILY`: a name in the adapter catalogue.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn secret_key(&self) -> &SecretKey {
        &self.secret_key
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The interval in ms, for an interval stream.
    pub fn interval_ms(&self) -> Option<u64> {
        match self.schedule {
            Schedule::Interval { millis } => Some(millis),
            Schedule::Cron { .. } => None,
        }
    }

    /// The cron expression, for a cron stream.
    pub fn cron(&self) -> Option<&str> {
        match &self.schedule {
            Schedule::Cron { expr } => Some(expr),
            Schedule::Interval { .. } => None,
        }
    }

    /// Per-run timeout (fetch, retries and upload together), in ms.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn bucket_name(&self) -> &str {
        &self.bucket_name
    }

    /// The adapter's parameters as the user gave them (numbers stay numbers).
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// Calls per window for the key; streams sharing a key share the strictest.
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }

    /// The source's description of its calls (`HTTP_JSON`), as given; empty for IQAir.
    pub fn source(&self) -> &Map<String, Value> {
        &self.source
    }

    /// The source description as the worker gets it: JSON text, empty when there is none.
    pub fn source_text(&self) -> String {
        if self.source.is_empty() {
            String::new()
        } else {
            Value::Object(self.source.clone()).to_string()
        }
    }

    /// A `PUSH` stream: nothing runs it; clients send it records.
    pub fn is_push(&self) -> bool {
        self.adapter == catalogue::push::NAME
    }

    /// Where the first incremental window starts (ms since the Unix epoch), if the user said.
    pub fn start_at_ms(&self) -> Option<i64> {
        self.start_at_ms
    }
}

impl Draft {
    fn check(self) -> Result<StreamSpec, Invalid> {
        if self.adapter == catalogue::push::NAME {
            return self.check_push();
        }
        let mut problems = Vec::new();
        match catalogue::source(&self.adapter) {
            Some(source) => {
                problems.extend(source.check_params(&self.params));
                problems.extend(source.check_source(&self.source));
                if catalogue::iqair::sweep_scope(&self.params).is_some()
                    && !catalogue::iqair::is_city_endpoint(&self.endpoint)
                {
                    problems.push(
                        "params naming a country or state without a city (a sweep) need the \
                         `city` endpoint, e.g. http://api.airvisual.com/v2/city"
                            .into(),
                    );
                }
            }
            None => problems.push(format!(
                "adapter {:?} is not known; known adapters: {}",
                self.adapter,
                catalogue::names().join(", ")
            )),
        }
        match url::Url::parse(&self.endpoint) {
            Err(_) if self.endpoint.is_empty() => problems.push(
                "endpoint is required: the API URL, e.g. http://api.airvisual.com/v2/city".into(),
            ),
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
        let key = self.secret_key.expose();
        if key.trim().is_empty() {
            problems.push(
                "secret_key is required and must not be empty (only PUSH streams have none)".into(),
            );
        } else if key.len() > 256 || key.chars().any(char::is_control) {
            problems.push("secret_key must be at most 256 printable characters".into());
        }
        let schedule = match (self.interval, &self.cron) {
            (Some(_), Some(_)) => {
                problems.push("give either interval or cron, not both".into());
                None
            }
            (None, None) => {
                problems.push("give interval (ms) or cron".into());
                None
            }
            (Some(ms), None) if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) => {
                problems.push(format!(
                    "interval must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS} ms"
                ));
                None
            }
            (Some(millis), None) => Some(Schedule::Interval { millis }),
            (None, Some(expr)) => match protocol::schedule::parse_cron(expr) {
                Ok(_) => Some(Schedule::Cron { expr: expr.clone() }),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
        };
        let timeout_ms = self
            .timeout
            .unwrap_or(self.interval.unwrap_or(DEFAULT_CRON_TIMEOUT_MS));
        if !(100..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            problems.push(format!(
                "timeout must be between 100 and {MAX_TIMEOUT_MS} ms"
            ));
        }
        if let Err(e) = objects::validate_bucket_name(&self.bucket_name) {
            problems.push(format!("bucket_name: {e}"));
        }
        let rate_limit = check_rate_limit(self.rate_base, self.rate_input, &mut problems);
        let start_at_ms = match self.start_at.as_deref() {
            None => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(at) => Some(at.timestamp_millis()),
                Err(e) => {
                    problems.push(format!(
                        "start_at must be an RFC 3339 time such as 2026-01-01T00:00:00Z: {e}"
                    ));
                    None
                }
            },
        };
        match schedule {
            Some(schedule) if problems.is_empty() => Ok(StreamSpec {
                adapter: self.adapter,
                endpoint: self.endpoint,
                secret_key: self.secret_key,
                schedule,
                timeout_ms,
                bucket_name: self.bucket_name,
                params: self.params,
                rate_limit,
                source: self.source,
                start_at_ms,
            }),
            _ => Err(Invalid(problems)),
        }
    }
    /// A `PUSH` stream: no endpoint, key, schedule, timeout, budget or window; a bucket, and
    /// optionally a record schema and a batch policy. It is stored with `batch.max_ms` as its
    /// interval (the table wants a schedule; nothing runs on it).
    fn check_push(self) -> Result<StreamSpec, Invalid> {
        use catalogue::Source as _;
        let push = catalogue::push::Push;
        let mut problems = push.check_params(&self.params);
        problems.extend(push.check_source(&self.source));
        if !self.endpoint.is_empty() {
            problems.push(
                "adapter PUSH takes no endpoint: records are sent to POST /streams/{id}/ingest"
                    .into(),
            );
        }
        if !self.secret_key.expose().is_empty() {
            problems.push(
                "adapter PUSH takes no secret_key: clients push with an ingest token \
                 (POST /streams/{id}/tokens) or the API token"
                    .into(),
            );
        }
        if self.interval.is_some() || self.cron.is_some() {
            problems.push(
                "adapter PUSH takes no interval or cron: batch.max_ms says how long a record \
                 waits before it is stored"
                    .into(),
            );
        }
        if self.timeout.is_some() {
            problems.push("adapter PUSH takes no timeout: it makes no calls".into());
        }
        if self.rate_input.is_some() {
            problems.push("adapter PUSH takes no rate_limit: it makes no calls".into());
        }
        if self.start_at.is_some() {
            problems.push("adapter PUSH takes no start_at: it has no windows".into());
        }
        if let Err(e) = objects::validate_bucket_name(&self.bucket_name) {
            problems.push(format!("bucket_name: {e}"));
        }
        if !problems.is_empty() {
            return Err(Invalid(problems));
        }
        let batch = catalogue::push::Batch::of(&self.source);
        Ok(StreamSpec {
            adapter: self.adapter,
            endpoint: String::new(),
            secret_key: self.secret_key,
            schedule: Schedule::Interval {
                millis: batch.max_ms,
            },
            timeout_ms: PUSH_TIMEOUT_MS,
            bucket_name: self.bucket_name,
            params: self.params,
            rate_limit: self.rate_base,
            source: self.source,
            start_at_ms: None,
        })
    }
}

/// `base` with the windows the input names, each within 0..=[`MAX_RATE_LIMIT`].
fn check_rate_limit(
    base: RateLimit,
    input: Option<RateLimitInput>,
    problems: &mut Vec<String>,
) -> RateLimit {
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
    RateLimit {
        per_minute: window(input.per_minute, base.per_minute, "per_minute"),
        per_day: window(input.per_day, base.per_day, "per_day"),
        per_month: window(input.per_month, base.per_month, "per_month"),
    }
}

/// The desired state of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// Should be running on some worker.
    Running,
    /// Stopped by a person.
    Stopped,
    /// Stopped by a bad or expired key; waits for a person.
    Failed,
}

impl StreamState {
    /// The text stored in `streams.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Running => "running",
            StreamState::Stopped => "stopped",
            StreamState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state text that is not one of `running`, `stopped`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream state {0:?}: expected running, stopped or failed")]
pub struct UnknownStreamState(pub String);

impl std::str::FromStr for StreamState {
    type Err = UnknownStreamState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(StreamState::Running),
            "stopped" => Ok(StreamState::Stopped),
            "failed" => Ok(StreamState::Failed),
            other => Err(UnknownStreamState(other.to_owned())),
        }
    }
}

/// What the API shows as a stream's `status`: its desired state, and for a running stream
/// whether a connected worker has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    /// Assigned to a connected worker.
    Running,
    /// Should run, but no connected worker has it (yet).
    Pending,
    Stopped,
    Failed,
}

/// A stored stream: its spec, desired state, assignment and health. Times are epoch ms.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub id: Uuid,
    pub spec: StreamSpec,
    pub state: StreamState,
    /// The worker it is assigned to, if any.
    pub worker_id: Option<String>,
    /// Bumped on every assignment; settles stale claims.
    pub generation: i64,
    pub last_result_at: Option<i64>,
    /// Set by a failure (or by a state change that records one); cleared by a newer result.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The end of the newest incremental window a run stored: the next run's window starts
    /// there.
    pub window_end_ms: Option<i64>,
}

impl StreamRow {
    /// The status the API shows, given the connected workers.
    pub fn status(&self, connected: &HashSet<String>) -> StreamStatus {
        match self.state {
            StreamState::Stopped => StreamStatus::Stopped,
            StreamState::Failed => StreamStatus::Failed,
            StreamState::Running if self.spec.is_push() => StreamStatus::Running,
            StreamState::Running => match &self.worker_id {
                Some(w) if connected.contains(w) => StreamStatus::Running,
                _ => StreamStatus::Pending,
            },
        }
    }

    /// The public shape of the stream.
    pub fn view(&self, connected: &HashSet<String>) -> StreamView<'_> {
        let spec = &self.spec;
        StreamView {
            id: self.id,
            adapter: &spec.adapter,
            endpoint: &spec.endpoint,
            secret_key: &spec.secret_key,
            interval: spec.interval_ms().filter(|_| !spec.is_push()),
            cron: spec.cron(),
            timeout: spec.timeout_ms,
            bucket_name: &spec.bucket_name,
            params: &spec.params,
            rate_limit: spec.rate_limit,
            status: self.status(connected),
            worker_id: self.worker_id.as_deref(),
            generation: self.generation,
            last_result_at: self.last_result_at.map(Rfc3339),
            last_error: self.last_error.as_deref(),
            last_error_at: self.last_error_at.map(Rfc3339),
            created_at: Rfc3339(self.created_at),
            updated_at: Rfc3339(self.updated_at),
            request: spec.source.get("request"),
            pagination: spec.source.get("pagination"),
            records: spec.source.get("records"),
            max_pages: spec.source.get("max_pages"),
            page_concurrency: spec.source.get("page_concurrency"),
            job: spec.source.get("job"),
            batch: spec
                .is_push()
                .then(|| catalogue::push::Batch::of(&spec.source)),
            start_at: spec.start_at_ms.map(Rfc3339),
            window_end: self.window_end_ms.map(Rfc3339),
        }
    }
}

/// What a worker runs for this stream, under its current generation.
impl From<&StreamRow> for StreamConfig {
    fn from(row: &StreamRow) -> Self {
        row.spec.config(row.id, row.generation, row.window_end_ms)
    }
}

impl StreamSpec {
    /// What a worker runs for stream `id` of this spec under `generation`, its windows going
    /// on from `window_end_ms` (else from the spec's `start_at`).
    pub fn config(&self, id: Uuid, generation: i64, window_end_ms: Option<i64>) -> StreamConfig {
        let spec = self;
        let params = spec
            .params
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        StreamConfig {
            stream_id: id,
            generation: u64::try_from(generation).unwrap_or(0),
            adapter: spec.adapter.clone(),
            endpoint: spec.endpoint.clone(),
            secret_key: spec.secret_key.clone(),
            schedule: spec.schedule.clone(),
            timeout_ms: spec.timeout_ms.max(1),
            bucket_name: spec.bucket_name.clone(),
            params,
            rate_limit: spec.rate_limit,
            source: spec.source_text(),
            window_start_ms: window_end_ms.or(spec.start_at_ms),
        }
    }
}

/// A stream as the API shows it: the key is `***` (see [`SecretKey`]'s `Serialize`), times are
/// RFC 3339.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamView<'a> {
    pub id: Uuid,
    pub adapter: &'a str,
    pub endpoint: &'a str,
    /// Always `***`.
    #[schema(value_type = String, example = "***")]
    pub secret_key: &'a SecretKey,
    pub interval: Option<u64>,
    pub cron: Option<&'a str>,
    /// Per-run timeout, ms.
    pub timeout: u64,
    pub bucket_name: &'a str,
    #[schema(value_type = Object)]
    pub params: &'a Map<String, Value>,
    #[schema(value_type = RateLimitShown)]
    pub rate_limit: RateLimit,
    pub status: StreamStatus,
    /// The worker it is assigned to.
    pub worker_id: Option<&'a str>,
    /// Bumped on every assignment.
    pub generation: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_result_at: Option<Rfc3339>,
    pub last_error: Option<&'a str>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<Rfc3339>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Rfc3339,
    /// `HTTP_JSON`: the request, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub request: Option<&'a Value>,
    /// `HTTP_JSON`: the pagination, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub pagination: Option<&'a Value>,
    /// `HTTP_JSON`: the JSON pointer to each page's records.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub records: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub max_pages: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub page_concurrency: Option<&'a Value>,
    /// `HTTP_JSON`: the async report job, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub job: Option<&'a Value>,
    /// `PUSH`: when pushed records become an object (the defaults filled in).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub batch: Option<catalogue::push::Batch>,
    /// Where the first incremental window started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<Rfc3339>,
    /// The end of the newest window a run stored: where the next run's window starts.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub window_end: Option<Rfc3339>,
}

/// Epoch milliseconds that serialize as RFC 3339 in UTC with milliseconds (`null` outside the
/// calendar's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rfc3339(#[serde(with = "rfc3339")] pub i64);

/// `#[serde(with = "crate::stream::rfc3339")]` on an epoch-ms field (serialize only).
pub mod rfc3339 {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        match common::rfc3339_ms(*ms) {
            Some(text) => serializer.serialize_str(&text),
            None => serializer.serialize_none(),
        }
    }

    /// The same for an optional field.
    pub mod option {
        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            ms: &Option<i64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, serializer),
                None => serializer.serialize_none(),
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
        assert_eq!(spec.timeout_ms(), 300_000);
        assert_eq!(spec.interval_ms(), Some(300_000));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut v = base();
        v["adapter"] = json!("NOPE");
        v["secret_key"] = json!("");
        v["interval"] = json!(5);
        v["bucket_name"] = json!("Bad_Bucket");
        v["params"] = json!({"lat": 95, "lon": "x", "zip": 1});
        let Invalid(problems) = StreamSpec::parse(input(v.clone())).unwrap_err();
        for needle in ["adapter", "secret_key", "interval", "bucket_name"] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle} missing from {problems:?}"
            );
        }
        // The parameters are checked against the adapter's rules, so a known adapter's
        // parameter problems are reported with the rest.
        v["adapter"] = json!("IQAIR_DAILY");
        let Invalid(problems) = StreamSpec::parse(input(v)).unwrap_err();
        for needle in ["secret_key", "interval", "bucket_name", "lat", "lon", "zip"] {
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
        assert_eq!(spec.timeout_ms(), DEFAULT_CRON_TIMEOUT_MS);
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
            (faster.interval_ms(), faster.timeout_ms()),
            (Some(60_000), 60_000)
        );
        let cron = spec
            .patched(StreamUpdate {
                cron: Some("0 0 * * * *".into()),
                ..StreamUpdate::default()
            })
            .unwrap();
        assert_eq!(
            (cron.interval_ms(), cron.cron()),
            (None, Some("0 0 * * * *"))
        );
    }

    #[test]
    fn a_patch_keeps_what_it_does_not_name() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        let rotated = spec
            .patched(StreamUpdate {
                secret_key: Some(SecretKey::new("rotated")),
                ..StreamUpdate::default()
            })
            .unwrap();
        assert_eq!(rotated.secret_key().expose(), "rotated");
        assert_eq!(rotated.endpoint(), spec.endpoint());
        assert_eq!(rotated.schedule(), spec.schedule());
        assert_eq!(rotated.params(), spec.params());
        assert_eq!(rotated.bucket_name(), spec.bucket_name());
        assert_eq!(rotated.rate_limit(), spec.rate_limit());
        let both = spec.patched(StreamUpdate {
            interval: Some(60_000),
            cron: Some("0 0 * * * *".into()),
            ..StreamUpdate::default()
        });
        assert!(both.is_err(), "interval and cron together");
    }

    #[test]
    fn rate_limits_default_to_community_and_are_checked() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        assert_eq!(spec.rate_limit(), RateLimit::COMMUNITY);
        let mut v = base();
        v["rate_limit"] = json!({"per_minute": 0, "per_day": 1000000});
        let spec = StreamSpec::parse(input(v.clone())).unwrap();
        assert_eq!(
            spec.rate_limit(),
            RateLimit {
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
            (patched.rate_limit().per_day, patched.rate_limit().per_month),
            (1_000_000, 0),
            "a window left out keeps its value"
        );
        v["rate_limit"] = json!({"per_minute": -1, "per_day": 1000001});
        let Invalid(problems) = StreamSpec::parse(input(v)).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("rate_limit.per_minute"));
    }

    #[test]
    fn whole_numbers_may_come_as_floats_but_fractions_may_not() {
        let mut v = base();
        v["interval"] = json!(18000.0);
        v["rate_limit"] = json!({"per_day": 250.0});
        let spec = StreamSpec::parse(input(v.clone())).unwrap();
        assert_eq!(spec.interval_ms(), Some(18_000));
        assert_eq!(spec.rate_limit().per_day, 250);
        for bad in [json!(18000.5), json!(-5), json!("18000")] {
            v["interval"] = bad.clone();
            let parsed: Result<StreamInput, _> = serde_json::from_value(v.clone());
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let spec = StreamSpec::parse(input(base())).unwrap();
        assert!(!format!("{spec:?}").contains("\"k\""));
    }

    fn row(spec: StreamSpec) -> StreamRow {
        StreamRow {
            id: Uuid::now_v7(),
            spec,
            state: StreamState::Running,
            worker_id: Some("w1".into()),
            generation: 3,
            last_result_at: Some(1_795_870_800_123),
            last_error: None,
            last_error_at: None,
            created_at: 0,
            updated_at: 0,
            window_end_ms: None,
        }
    }

    #[test]
    fn the_view_shows_no_key_and_rfc3339_times() {
        let row = row(StreamSpec::parse(input(base())).unwrap());
        let connected = HashSet::from(["w1".to_owned()]);
        let view = serde_json::to_value(row.view(&connected)).unwrap();
        assert_eq!(view["secret_key"], "***");
        assert_eq!(view["status"], "running");
        assert_eq!(view["interval"], 300_000);
        assert_eq!(view["cron"], Value::Null);
        assert_eq!(view["last_result_at"], "2026-11-28T13:00:00.123Z");
        assert_eq!(view["created_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            view["rate_limit"],
            json!({"per_minute": 5, "per_day": 500, "per_month": 10000})
        );
        assert_eq!(row.status(&HashSet::new()), StreamStatus::Pending);
    }

    #[test]
    fn a_row_becomes_the_config_its_worker_runs() {
        let row = row(StreamSpec::parse(input(base())).unwrap());
        let config = StreamConfig::from(&row);
        assert_eq!(config.stream_id, row.id);
        assert_eq!(config.generation, 3);
        assert_eq!(config.secret_key.expose(), "k");
        assert_eq!(config.schedule, Schedule::Interval { millis: 300_000 });
        assert_eq!(
            config.params["lat"], "52.52",
            "numbers travel as their JSON text"
        );
    }
}
