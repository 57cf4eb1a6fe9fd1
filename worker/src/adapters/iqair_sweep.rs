//! IQAir sweeps: a `city` stream that names a country (`{"country": "Poland"}`) or one state of
//! it (`{"country": "Poland", "state": "Mazovia"}`) and no city fetches every city there, once
//! per run.
//!
//! - **Discovery**: `GET …/v2/states?country=` (skipped when the state is given), then
//!   `GET …/v2/cities?state=&country=` per state, beside the stream's `city` endpoint. Each list
//!   is cached per (listing URL, country, state, key fingerprint) and listed again once older than
//!   a day ([`LIST_MAX_AGE`]). A failed refresh keeps the old list (with a warning); a list never
//!   had fails the run with the listing's own error, except that a country sweep skips a state
//!   the API will not list (`state_not_found` and the like) and says so in the run's note.
//!   Lists are cached one by one, so a discovery cut short (the key's minute budget, the run's
//!   timeout) resumes where it stopped on the next run.
//! - **Spreading**: city `i` starts at `t0 + i × step`, where `t0` is when discovery ended and
//!   the cities share the time left until 90 % of `min(interval, timeout)` after the run's
//!   start (with the lists cached, `step = min(interval, timeout) × 0.9 / cities`). Every call
//!   takes a permit from the key's budget first, so a tight budget stretches the sweep rather
//!   than breaking it.
//! - **Per city**: transient errors are retried with backoff while the city's slot lasts; a
//!   rate-limit answer blocks the key for that window's wait and the sweep carries on with the
//!   next city when the key allows; an `auth` answer ends the run and stops the stream; any other
//!   failure (`city_not_found`, an odd body…) is counted and the sweep goes on. The run's note
//!   names the failures by kind and city ("2 of 14 cities failed: city_not_found ×2 (Radom,
//!   Plock)"); if every city failed, the run fails with the first city's error.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalogue::iqair::{
    listing_endpoint, read_listing, sweep_scope, Listing, ListingBody, SweepScope,
};
use chrono::DateTime;
use futures::future::BoxFuture;
use protocol::{FailureClass, Schedule};
use rand::Rng;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};

use super::iqair::fetch;
use super::{
    AdapterError, FetchRequest, Fetched, PagedAdapter, PagedRun, RateLimitScope, Retry, RunEnd,
};

/// How long a discovered list of states or cities is used before it is listed again.
pub const LIST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// After a failed refresh, the old list is used for this long (or the max age, if shorter)
/// before the next try, so a listing that keeps failing does not cost calls every run.
const FAILED_REFRESH_PAUSE: Duration = Duration::from_secs(3600);

/// Calls per city (or per listing), the first one included, while transient errors last.
const MAX_ATTEMPTS: u32 = 3;

/// Each call may take at least this long (PYAV's own total timeout, IQAIR.md §8.14), even when
/// the city's slot is shorter; never longer than the run's deadline.
const MIN_CALL_TIME: Duration = Duration::from_secs(10);

/// The first backoff after a transient error; doubled per attempt, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The cities share this part (per mille) of `min(interval, timeout)`; the rest is room for the
/// last city's call and store.
const SPREAD_PER_MILLE: u32 = 900;

/// At most this many city names are quoted per kind of failure in a run's note.
const NAMES_PER_KIND: usize = 3;

/// One city of a sweep, named as the listings name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepCity {
    pub city: String,
    pub state: String,
}

/// What a list is cached under. The key is held as its fingerprint only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListKey {
    /// The listing endpoint, e.g. `http://api.airvisual.com/v2/cities`.
    url: String,
    country: String,
    /// The state whose cities these are; `None` for the country's states.
    state: Option<String>,
    key: u64,
}

#[derive(Debug, Clone)]
struct CachedList {
    names: Arc<Vec<String>>,
    /// When to list again.
    refresh_at: Instant,
}

/// The paged form of an IQAir sweep, with the lists every sweep on this worker has discovered.
#[derive(Debug)]
pub struct IqAirSweep {
    client: reqwest::Client,
    max_age: Duration,
    lists: Mutex<HashMap<ListKey, CachedList>>,
}

/// The cities to sweep, and the states a country sweep had to leave out.
#[derive(Debug, Default)]
struct Discovered {
    cities: Vec<SweepCity>,
    /// `(state, why)`: states whose cities could not be listed.
    skipped_states: Vec<(String, AdapterError)>,
    /// Every state of the sweep (1 for a state sweep).
    states: usize,
}

/// Why a call did not bring a body.
enum CallError {
    /// The key's budget (local, or the API's own block) leaves no call before the deadline:
    /// the run cannot go on.
    Budget(AdapterError),
    /// The API's answer (or its absence), classified.
    Api(AdapterError),
}

impl IqAirSweep {
    /// Sweeps sending through `client`, lists kept for [`LIST_MAX_AGE`].
    pub fn new(client: reqwest::Client) -> Self {
        IqAirSweep {
            client,
            max_age: LIST_MAX_AGE,
            lists: Mutex::new(HashMap::new()),
        }
    }

    /// The same, with lists listed again once older than `age`.
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, HashMap<ListKey, CachedList>> {
        // Each critical section is one map operation; a poisoned map is still consistent.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sweep(&self, run: PagedRun<'_>) -> Result<RunEnd, AdapterError> {
        let started = Instant::now();
        let cfg = run.cfg;
        let Some(scope) = sweep_scope(&cfg.params) else {
            return Err(AdapterError::new(
                FailureClass::Api,
                "not a sweep: params name a city or a point; a sweep names a country, or a country and a state",
                Retry::StopStream,
            ));
        };
        let discovered = self.discover(&run, &scope).await?;
        let cities = &discovered.cities;
        let spread_end = started + spread_span(cfg, run.slot_ms);
        let t0 = Instant::now();
        let step = spread_end.saturating_duration_since(t0) / cities.len().max(1) as u32;
        tracing::debug!(
            stream_id = %cfg.stream_id,
            cities = cities.len(),
            step_ms = step.as_millis() as u64,
            "sweeping {}", scope.describe()
        );

        let mut failed: Vec<(usize, AdapterError)> = Vec::new();
        let mut stored = 0usize;
        for (i, place) in cities.iter().enumerate() {
            sleep_until(t0 + step * i as u32).await;
            let slot_end = t0 + step * (i as u32 + 1);
            let params = BTreeMap::from([
                ("city".to_string(), place.city.clone()),
                ("state".to_string(), place.state.clone()),
                ("country".to_string(), scope.country.clone()),
            ]);
            match self.call(&run, &cfg.endpoint, &params, slot_end).await {
                Ok(fetched) => {
                    run.sink
                        .store(i as u32, fetched.body, None, fetched.measurement)
                        .await?;
                    stored += 1;
                }
                Err(CallError::Api(err)) if err.retry == Retry::StopStream => return Err(err),
                Err(CallError::Api(err)) => {
                    tracing::debug!(
                        stream_id = %cfg.stream_id,
                        city = %place.city,
                        class = %err.class,
                        "sweep city failed: {}", err.message
                    );
                    failed.push((i, err));
                }
                Err(CallError::Budget(mut err)) => {
                    let _ = write!(
                        err.message,
                        "; {stored} of {} cities stored before, the rest waits for the next run",
                        cities.len()
                    );
                    return Err(err);
                }
            }
        }

        let mut notes = Vec::new();
        if !failed.is_empty() {
            notes.push(format!(
                "{} of {} cities failed: {}",
                failed.len(),
                cities.len(),
                summarise(
                    failed
                        .iter()
                        .map(|(i, err)| (cities[*i].city.as_str(), err))
                )
            ));
        }
        if !discovered.skipped_states.is_empty() {
            notes.push(format!(
                "{} of {} states could not be listed: {}",
                discovered.skipped_states.len(),
                discovered.states,
                summarise(
                    discovered
                        .skipped_states
                        .iter()
                        .map(|(state, err)| (state.as_str(), err))
                )
            ));
        }
        if stored == 0 {
            if let Some((_, first)) = failed.into_iter().next() {
                let mut err = first;
                let _ = write!(err.message, " (every city failed; {})", notes.join("; "));
                return Err(err);
            }
        }
        Ok(RunEnd {
            truncated: false,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        })
    }

    /// The cities of `scope`, from the cached lists or the listing endpoints.
    async fn discover(
        &self,
        run: &PagedRun<'_>,
        scope: &SweepScope,
    ) -> Result<Discovered, AdapterError> {
        let states: Arc<Vec<String>> = match &scope.state {
            Some(state) => Arc::new(vec![state.clone()]),
            None => {
                self.list(run, Listing::States, &scope.country, None)
                    .await?
            }
        };
        let mut discovered = Discovered {
            states: states.len(),
            ..Discovered::default()
        };
        for state in states.iter() {
            match self
                .list(run, Listing::Cities, &scope.country, Some(state))
                .await
            {
                Ok(names) => discovered.cities.extend(names.iter().map(|city| SweepCity {
                    city: city.clone(),
                    state: state.clone(),
                })),
                // A country sweep leaves out a state the API will not list today (IQAir hides
                // states without active stations, IQAIR.md §2) rather than fail every run.
                Err(err) if scope.state.is_none() && err.retry == Retry::NextTick => {
                    tracing::warn!(
                        stream_id = %run.cfg.stream_id,
                        %state,
                        "sweep of {}: cannot list this state's cities: {}", scope.country, err.message
                    );
                    discovered.skipped_states.push((state.clone(), err));
                }
                Err(err) => return Err(err),
            }
        }
        if discovered.cities.is_empty() {
            return Err(match discovered.skipped_states.into_iter().next() {
                Some((_, err)) => err,
                None => AdapterError::new(
                    FailureClass::Api,
                    format!("IQAir lists no cities in {}", scope.describe()),
                    Retry::NextTick,
                ),
            });
        }
        Ok(discovered)
    }

    /// One list: cached while fresh, else listed (one call, retried while transient). A failed
    /// refresh keeps the old list unless the key itself was refused.
    async fn list(
        &self,
        run: &PagedRun<'_>,
        listing: Listing,
        country: &str,
        state: Option<&str>,
    ) -> Result<Arc<Vec<String>>, AdapterError> {
        let url = listing_endpoint(&run.cfg.endpoint, listing).ok_or_else(|| {
            AdapterError::new(
                FailureClass::Api,
                format!(
                    "a sweep needs the city endpoint (…/v2/city), not {}",
                    run.cfg.endpoint
                ),
                Retry::StopStream,
            )
        })?;
        let key = ListKey {
            url: url.clone(),
            country: country.to_string(),
            state: state.map(str::to_string),
            key: run.cfg.secret_key.fingerprint(),
        };
        let cached = self.lists().get(&key).cloned();
        if let Some(cached) = &cached {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.names.clone());
            }
        }
        let what = match state {
            Some(state) => format!("the cities of {state}, {country}"),
            None => format!("the states of {country}"),
        };
        let mut params = BTreeMap::from([("country".to_string(), country.to_string())]);
        if let Some(state) = state {
            params.insert("state".to_string(), state.to_string());
        }
        let listed = match self.call(run, &url, &params, run.deadline).await {
            Ok(fetched) => match read_listing(&fetched.body, listing) {
                ListingBody::Names(names) => Ok(names),
                ListingBody::Fail(message) | ListingBody::Unrecognised(message) => Err(
                    AdapterError::new(FailureClass::InvalidBody, message, Retry::NextTick),
                ),
            },
            Err(CallError::Budget(err) | CallError::Api(err)) => Err(err),
        };
        let now = Instant::now();
        match (listed, cached) {
            (Ok(names), _) => {
                let names = Arc::new(names);
                let mut lists = self.lists();
                // Lists of sweeps that stopped long ago go.
                lists.retain(|_, c| now.saturating_duration_since(c.refresh_at) < self.max_age);
                lists.insert(
                    key,
                    CachedList {
                        names: names.clone(),
                        refresh_at: now + self.max_age,
                    },
                );
                Ok(names)
            }
            (Err(err), Some(old)) if err.retry != Retry::StopStream => {
                tracing::warn!(
                    stream_id = %run.cfg.stream_id,
                    class = %err.class,
                    "could not list {what} again; sweeping the list from before: {}", err.message
                );
                self.lists().insert(
                    key,
                    CachedList {
                        names: old.names.clone(),
                        refresh_at: now + self.max_age.min(FAILED_REFRESH_PAUSE),
                    },
                );
                Ok(old.names)
            }
            (Err(mut err), _) => {
                let _ = write!(err.message, " (listing {what})");
                Err(err)
            }
        }
    }

    /// One call: a permit, the fetch (bounded by the run's deadline), and retries of transient
    /// errors while `until` allows. A rate-limit answer blocks the key and is returned.
    async fn call(
        &self,
        run: &PagedRun<'_>,
        endpoint: &str,
        params: &BTreeMap<String, String>,
        until: Instant,
    ) -> Result<Fetched, CallError> {
        let mut attempt = 0u32;
        loop {
            run.budget.permit().await.map_err(CallError::Budget)?;
            attempt += 1;
            let now = Instant::now();
            let limit =
                (now + until.saturating_duration_since(now).max(MIN_CALL_TIME)).min(run.deadline);
            let request = FetchRequest {
                endpoint,
                secret_key: &run.cfg.secret_key,
                params,
            };
            let err = match timeout_at(limit, fetch(&self.client, request)).await {
                Ok(Ok(fetched)) => return Ok(fetched),
                Ok(Err(err)) => err,
                Err(_) => AdapterError::new(
                    FailureClass::Timeout,
                    format!(
                        "no complete answer within {} ms",
                        limit.saturating_duration_since(now).as_millis()
                    ),
                    Retry::Transient,
                ),
            };
            match err.retry {
                Retry::RateLimited(scope) => {
                    run.budget.block_until(Instant::now() + backoff_for(scope));
                    return Err(CallError::Api(err));
                }
                Retry::Transient if attempt < MAX_ATTEMPTS => {
                    let wait = backoff(attempt);
                    if Instant::now() + wait < until.min(run.deadline) {
                        sleep(wait).await;
                        continue;
                    }
                }
                _ => {}
            }
            let mut err = err;
            if attempt > 1 {
                let _ = write!(err.message, " (gave up after {attempt} attempts)");
            }
            return Err(CallError::Api(err));
        }
    }
}

impl PagedAdapter for IqAirSweep {
    fn run<'a>(&'a self, run: PagedRun<'a>) -> BoxFuture<'a, Result<RunEnd, AdapterError>> {
        Box::pin(self.sweep(run))
    }
}

/// How long the cities of one run are spread over: 90 % of the shorter of the schedule's
/// period (after `slot_ms`, for cron) and the run's timeout.
fn spread_span(cfg: &protocol::StreamConfig, slot_ms: i64) -> Duration {
    let period_ms = match &cfg.schedule {
        Schedule::Interval { millis } => *millis,
        Schedule::Cron { expr } => protocol::schedule::parse_cron(expr)
            .ok()
            .zip(DateTime::from_timestamp_millis(slot_ms))
            .and_then(|(cron, slot)| protocol::schedule::next_after(&cron, slot))
            .map_or(cfg.timeout_ms, |next| {
                u64::try_from(next.timestamp_millis() - slot_ms).unwrap_or(0)
            }),
    };
    Duration::from_millis(period_ms.min(cfg.timeout_ms)) * SPREAD_PER_MILLE / 1000
}

/// How long a limit answer blocks the key: the same waits as the runner's own
/// (`KeyBudgets::block`), so a sweep backs off exactly as a single fetch would.
fn backoff_for(scope: RateLimitScope) -> Duration {
    match scope {
        RateLimitScope::Second => Duration::from_secs(1),
        RateLimitScope::Minute | RateLimitScope::Unknown => Duration::from_secs(60),
        RateLimitScope::Day => Duration::from_secs(3600),
        RateLimitScope::Month => Duration::from_secs(6 * 3600),
    }
}

/// The wait after the `attempt`-th transient error: doubling from [`FIRST_BACKOFF`], a random
/// point in its upper half.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF * (1u32 << attempt.saturating_sub(1).min(8));
    let half = full / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

/// What kind of failure `err` is, for a run's note: the API's own code for API errors
/// (`city_not_found`), the class otherwise (`timeout`, `http`).
fn failure_kind(err: &AdapterError) -> String {
    if err.class == FailureClass::Api {
        let code = err.message.split(" (").next().unwrap_or(&err.message);
        code.chars().take(60).collect()
    } else {
        err.class.as_str().to_string()
    }
}

/// `city_not_found ×2 (Radom, Plock), timeout ×1 (Gdansk)`: kinds by count (most first), each
/// with its first few names.
fn summarise<'a>(failures: impl Iterator<Item = (&'a str, &'a AdapterError)>) -> String {
    let mut kinds: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, err) in failures {
        let kind = failure_kind(err);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, names)) => names.push(name),
            None => kinds.push((kind, vec![name])),
        }
    }
    // Stable: equal counts keep the order they were met in.
    kinds.sort_by_key(|(_, names)| std::cmp::Reverse(names.len()));
    kinds
        .iter()
        .map(|(kind, names)| {
            let mut shown = names
                .iter()
                .take(NAMES_PER_KIND)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > NAMES_PER_KIND {
                shown.push_str(", …");
            }
            format!("{kind} ×{} ({shown})", names.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use protocol::{RateLimit, StreamConfig};
    use uuid::Uuid;

    fn cfg(schedule: Schedule, timeout_ms: u64) -> StreamConfig {
        StreamConfig {
            stream_id: Uuid::nil(),
            generation: 1,
            adapter: "IQAIR_DAILY".into(),
            endpoint: "http://127.0.0.1:9/v2/city".into(),
            secret_key: "k".into(),
            schedule,
            timeout_ms,
            bucket_name: "results".into(),
            params: BTreeMap::from([("country".into(), "Poland".into())]),
            rate_limit: RateLimit::COMMUNITY,
            source: String::new(),
            window_start_ms: None,
        }
    }

    #[test]
    fn the_span_is_nine_tenths_of_the_shorter_of_period_and_timeout() {
        let every_15_min = Schedule::Interval { millis: 900_000 };
        assert_eq!(
            spread_span(&cfg(every_15_min.clone(), 1_800_000), 0),
            Duration::from_secs(810)
        );
        assert_eq!(
            spread_span(&cfg(every_15_min, 180_000), 0),
            Duration::from_secs(162)
        );
        // Cron: the gap from this slot to the next (2026-11-22T12:00:00Z, then 12:15).
        let slot_ms = 1_795_348_800_000;
        let cron = Schedule::Cron {
            expr: "0 */15 * * * *".into(),
        };
        assert_eq!(
            spread_span(&cfg(cron, 3_600_000), slot_ms),
            Duration::from_secs(810)
        );
    }

    #[test]
    fn notes_count_failures_by_kind_and_name_a_few_cities() {
        let not_found = AdapterError::new(FailureClass::Api, "city_not_found", Retry::NextTick);
        let timeout = AdapterError::new(
            FailureClass::Timeout,
            "no complete answer within 900 ms (gave up after 3 attempts)",
            Retry::Transient,
        );
        let failures = [
            ("Gdansk", &timeout),
            ("Radom", &not_found),
            ("Plock", &not_found),
            ("Tarnow", &not_found),
            ("Gdynia", &not_found),
        ];
        assert_eq!(
            summarise(failures.iter().copied()),
            "city_not_found ×4 (Radom, Plock, Tarnow, …), timeout ×1 (Gdansk)"
        );
        let retried = AdapterError::new(
            FailureClass::Api,
            "no_nearest_city (gave up after 2 attempts)",
            Retry::NextTick,
        );
        assert_eq!(failure_kind(&retried), "no_nearest_city");
    }

    #[test]
    fn backoff_doubles_within_its_upper_half() {
        for attempt in 1..=3u32 {
            let full = FIRST_BACKOFF * (1 << (attempt - 1));
            for _ in 0..20 {
                let wait = backoff(attempt);
                assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
            }
        }
        assert_eq!(backoff_for(RateLimitScope::Second), Duration::from_secs(1));
        assert_eq!(backoff_for(RateLimitScope::Minute), Duration::from_secs(60));
    }
}
