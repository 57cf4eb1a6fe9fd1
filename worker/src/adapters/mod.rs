//! External API adapters: how to fetch from each source of the catalogue (`catalogue`, which
//! knows the names, the parameter rules and the parsers), and the typed outcome (raw body plus
//! parsed measurement, or a classified error that says how to carry on). Every source in the
//! catalogue has an adapter here; `registry_covers_the_catalogue` holds the two in step.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use common::SecretKey;
use futures::future::BoxFuture;
use protocol::{FailureClass, Measurement, StreamConfig};

pub mod http_json;
pub mod iqair;
pub mod iqair_sweep;
pub mod paged;

pub use http_json::HttpJson;
pub use iqair::IqAir;
pub use paged::{CallBudget, PageSink, PagedAdapter, PagedRun, RunEnd};

/// What a fetch needs.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The full URL, e.g. `http://127.0.0.1:8090/v2/nearest_city`.
    pub endpoint: &'a str,
    /// The external API key.
    pub secret_key: &'a SecretKey,
    /// Query parameters: `lat`/`lon`, or `city`/`state`/`country`.
    pub params: &'a BTreeMap<String, String>,
}

/// A successful fetch: the body exactly as received (after transport decompression), and the
/// parsed reading.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The response body, byte for byte; this is what gets stored.
    pub body: bytes::Bytes,
    /// The reading parsed from the body; `None` when the body holds no reading at all (e.g. a
    /// listing endpoint).
    pub measurement: Option<Measurement>,
}

/// What the caller should do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Try again soon, with backoff, within the current interval (network trouble, 5xx).
    Transient,
    /// Back off until the named window resets; the limit is shared by every stream on the key.
    RateLimited(RateLimitScope),
    /// Stop the stream and wait for a person (bad, expired or underpowered key).
    StopStream,
    /// Give up on this run; the next scheduled run may succeed (unknown city, odd body).
    NextTick,
}

/// Which rate-limit window the API said was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitScope {
    /// `too_many_requests`: more than 10 calls per second.
    Second,
    /// `call_per_minute_limit_reached`.
    Minute,
    /// `call_per_day_limit_reached`.
    Day,
    /// `call_per_month_limit_reached`.
    Month,
    /// Plain `call_limit_reached`, or HTTP 429 without a recognisable body.
    Unknown,
}

/// A typed failure. `message` never contains the API key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct AdapterError {
    /// The class stored with the failed run.
    pub class: FailureClass,
    /// Human-readable detail, e.g. `HTTP 502` or `call_per_minute_limit_reached`.
    pub message: String,
    /// What the caller should do next.
    pub retry: Retry,
}

impl AdapterError {
    /// Builds an error from its three parts.
    pub fn new(class: FailureClass, message: impl Into<String>, retry: Retry) -> Self {
        AdapterError {
            class,
            message: message.into(),
            retry,
        }
    }
}

/// One external API. Implementations hold their HTTP client and nothing stream-specific.
pub trait Adapter: Send + Sync + 'static {
    /// The name streams use to pick this adapter, e.g. `IQAIR_DAILY`.
    fn name(&self) -> &'static str;

    /// Fetches once. There is no timeout inside: the caller wraps the whole run in the stream's
    /// timeout and drops this future when it fires.
    fn fetch<'a>(&'a self, req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>>;

    /// The paged form of a run of `cfg`, when a run of it takes several steps (pages, an async
    /// job, a sweep); `None` (the default): a run is one [`Adapter::fetch`].
    fn paged(&self, cfg: &StreamConfig) -> Option<&dyn PagedAdapter> {
        let _ = cfg;
        None
    }
}

/// The adapters of this build, by name.
#[derive(Clone)]
pub struct Adapters {
    by_name: HashMap<&'static str, Arc<dyn Adapter>>,
}

impl Adapters {
    /// The adapter called `name`, if this build has it.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Adapter>> {
        self.by_name.get(name).cloned()
    }

    /// Every adapter name, sorted (what the worker announces in its hello).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// A set of given adapters (a build's own set is [`registry`]; tests bring their own).
    pub fn from_list(list: Vec<Arc<dyn Adapter>>) -> Self {
        let mut adapters = Adapters {
            by_name: HashMap::new(),
        };
        for adapter in list {
            adapters.insert(adapter);
        }
        adapters
    }

    fn insert(&mut self, adapter: Arc<dyn Adapter>) {
        self.by_name.insert(adapter.name(), adapter);
    }
}

/// The names: adapters are trait objects without `Debug`.
impl fmt::Debug for Adapters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapters")
            .field("names", &self.names())
            .finish()
    }
}

/// Every adapter of this build, sharing one HTTP client (and so its connection pool).
pub fn registry(client: reqwest::Client) -> Adapters {
    let mut adapters = Adapters {
        by_name: HashMap::new(),
    };
    adapters.insert(Arc::new(IqAir::new(client.clone())));
    adapters.insert(Arc::new(HttpJson::new(client)));
    adapters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_covers_the_catalogue() {
        let adapters = registry(reqwest::Client::new());
        assert_eq!(adapters.names(), ["HTTP_JSON", "IQAIR_DAILY"]);
        let iqair = adapters.get("IQAIR_DAILY").map(|a| a.name());
        assert_eq!(iqair, Some("IQAIR_DAILY"));
        let http_json = adapters.get("HTTP_JSON").map(|a| a.name());
        assert_eq!(http_json, Some("HTTP_JSON"));
        assert!(adapters.get("iqair_daily").is_none());
        // Every source a worker fetches; PUSH data is sent to the supervisor instead.
        let mut catalogue = catalogue::fetched_names();
        catalogue.sort_unstable();
        assert_eq!(
            adapters.names(),
            catalogue,
            "one adapter per fetched catalogue source"
        );
        assert!(catalogue::source("OPENAQ").is_none());
        assert!(catalogue::source("").is_none());
    }

    #[test]
    fn fetch_request_debug_redacts_the_key() {
        let params = BTreeMap::from([("lat".to_string(), "0".to_string())]);
        let key = SecretKey::new("secret-key-123");
        let req = FetchRequest {
            endpoint: "http://x/v2/nearest_city",
            secret_key: &key,
            params: &params,
        };
        let printed = format!("{req:?}");
        assert!(!printed.contains("secret-key-123"), "{printed}");
        assert!(printed.contains("***"));
    }
}
