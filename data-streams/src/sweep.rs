//! IQAir sweeps at creation: does a stream that names a whole country (or a state) fit its key's
//! budget? [`Sweeps::plan`] counts the cities through IQAir's listing endpoints (as the worker
//! will) and [`check_budget`] does the arithmetic: cities × runs a day, plus the daily listing
//! calls, against the key's day, month and minute limits. A sweep that does not fit is refused
//! with the numbers ("412 cities × 96 runs a day = 39,552 calls a day; the key allows 500") and
//! the shortest whole-minute interval that would fit.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalogue::iqair::{
    fail_kind, is_city_endpoint, listing_endpoint, read_listing, sweep_scope, FailKind,
    LimitWindow, Listing, ListingBody, SweepScope,
};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::SecretKey;
use protocol::{RateLimit, Schedule};
use serde::Serialize;
use serde_json::{Map, Value};

const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;
/// The month the limits are checked against: 31 days, the longest.
const MONTH_DAYS: u64 = 31;
/// The longest interval a stream may have, in minutes (31 days): the last interval to offer.
const MAX_INTERVAL_MINUTES: u64 = MONTH_DAYS * 24 * 60;
/// How many cron fire times are counted at most; past it, the busiest day seen stands for all.
const MAX_CRON_FIRES: usize = 100_000;
/// How long counted lists are used before they are listed again (as in the worker).
pub const LIST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A listing call's total time.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// What to tell a caller to wait after a network error or a 5xx from IQAir.
const RETRY_AFTER_TROUBLE_S: u64 = 30;

/// The calls a sweep will make, when they fit the key's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepBudget {
    /// Cities in the sweep.
    pub cities: u64,
    /// States whose cities are listed at each daily refresh (0 for a one-state sweep).
    pub states_to_list: u64,
    /// Runs in the busiest day (interval: 86,400,000 / interval, rounded up).
    pub runs_per_day: u64,
    /// Runs in a 31-day month.
    pub runs_per_month: u64,
    /// Listing calls of a day's refresh: 1 + `states_to_list`.
    pub listing_calls_per_day: u64,
    /// `cities × runs_per_day + listing_calls_per_day`.
    pub calls_per_day: u64,
    /// The same over 31 days.
    pub calls_per_month: u64,
    /// One run's cities spread over the interval: cities ÷ interval minutes, rounded up.
    pub calls_per_minute: u64,
}

/// Which of the key's windows a sweep exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindowName {
    Day,
    Month,
    Minute,
}

/// A sweep its key cannot carry, with the arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct SweepRefusal {
    /// The first window exceeded (day, then month, then minute).
    pub window: LimitWindowName,
    /// The calls the sweep would make in that window.
    pub calls: u64,
    /// What the key allows in it.
    pub limit: u32,
    /// The whole count, in every window.
    pub budget: SweepBudget,
    /// e.g. "412 cities × 96 runs a day = 39,552 calls a day; the key allows 500".
    pub message: String,
    /// The shortest interval (whole minutes) at which the sweep fits every window; `None` when
    /// even one run a month is too many.
    pub interval_that_fits_ms: Option<u64>,
}

/// Why [`Sweeps::plan`] has no budget to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// The sweep does not fit the key's limits.
    #[error(transparent)]
    Refused(SweepRefusal),
    /// IQAir would not list the sweep's states or cities. `message` says why and what to do
    /// (never the key); `retry_after_s` is set when trying again later may work (rate limited,
    /// IQAir unreachable or failing).
    #[error("{message}")]
    Discovery {
        message: String,
        retry_after_s: Option<u64>,
    },
}

/// How often a schedule runs, for the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Runs {
    per_day: u64,
    per_month: u64,
    /// The shortest gap between two runs, ms.
    min_gap_ms: u64,
}

fn runs_of(schedule: &Schedule, now: DateTime<Utc>) -> Runs {
    match schedule {
        Schedule::Interval { millis } => interval_runs((*millis).max(1)),
        Schedule::Cron { expr } => cron_runs(expr, now),
    }
}

fn interval_runs(interval_ms: u64) -> Runs {
    let per_day = DAY_MS.div_ceil(interval_ms);
    let per_month = if interval_ms <= DAY_MS {
        per_day * MONTH_DAYS
    } else {
        (MONTH_DAYS * DAY_MS).div_ceil(interval_ms)
    };
    Runs {
        per_day,
        per_month,
        min_gap_ms: interval_ms,
    }
}

/// The fire times of the next 31 days from `now`: the busiest 24 h, the total, the shortest
/// gap. An expression the stream validation let through always parses; one that does not counts
/// as never running.
fn cron_runs(expr: &str, now: DateTime<Utc>) -> Runs {
    let month_end = now + chrono::Duration::days(MONTH_DAYS as i64);
    let mut per_day = vec![0u64; MONTH_DAYS as usize];
    let mut total = 0u64;
    let mut min_gap_ms = MONTH_DAYS * DAY_MS;
    let mut capped = false;
    if let Ok(cron) = protocol::schedule::parse_cron(expr) {
        let mut previous: Option<DateTime<Utc>> = None;
        let mut at = now;
        while let Some(next) = protocol::schedule::next_after(&cron, at) {
            if next > month_end {
                break;
            }
            // Days are (now, now + 24 h], … : a fire at exactly now + 24 h belongs to the first.
            let day = ((next - now).num_milliseconds().max(1) as u64 - 1) / DAY_MS;
            let last = per_day.len() - 1;
            per_day[(day as usize).min(last)] += 1;
            total += 1;
            if let Some(previous) = previous {
                let gap = (next - previous).num_milliseconds().max(1) as u64;
                min_gap_ms = min_gap_ms.min(gap);
            }
            previous = Some(next);
            at = next;
            if total as usize >= MAX_CRON_FIRES {
                capped = true;
                break;
            }
        }
    }
    let busiest = per_day.iter().copied().max().unwrap_or(0);
    Runs {
        per_day: busiest,
        // Counting stopped early only for a dense schedule: its busiest day stands for all.
        per_month: if capped { busiest * MONTH_DAYS } else { total },
        min_gap_ms,
    }
}

fn budget_for(cities: u64, states_to_list: u64, runs: Runs) -> SweepBudget {
    let listing = 1 + states_to_list;
    // A list is refreshed at most daily, and only by a run.
    let listing_day = if runs.per_day > 0 { listing } else { 0 };
    let listing_month = listing.saturating_mul(runs.per_month.min(MONTH_DAYS));
    SweepBudget {
        cities,
        states_to_list,
        runs_per_day: runs.per_day,
        runs_per_month: runs.per_month,
        listing_calls_per_day: listing,
        calls_per_day: cities
            .saturating_mul(runs.per_day)
            .saturating_add(listing_day),
        calls_per_month: cities
            .saturating_mul(runs.per_month)
            .saturating_add(listing_month),
        calls_per_minute: cities
            .saturating_mul(MINUTE_MS)
            .div_ceil(runs.min_gap_ms.max(1)),
    }
}

/// The first window (day, month, minute) `budget` exceeds, with its calls and limit.
fn exceeded(budget: &SweepBudget, limit: RateLimit) -> Option<(LimitWindowName, u64, u32)> {
    [
        (LimitWindowName::Day, budget.calls_per_day, limit.per_day),
        (
            LimitWindowName::Month,
            budget.calls_per_month,
            limit.per_month,
        ),
        (
            LimitWindowName::Minute,
            budget.calls_per_minute,
            limit.per_minute,
        ),
    ]
    .into_iter()
    .find(|(_, calls, max)| *max > 0 && *calls > u64::from(*max))
}

/// Does a sweep of `cities` (listing `states_to_list` states at each daily refresh) on
/// `schedule` fit `limit`? Runs a day: for an interval, 86,400,000 / interval ms rounded up; for
/// cron, the fire times in the busiest 24 h of the next 31 days (counted from now). Calls a day
/// = cities × runs a day + the listing calls (1 + `states_to_list`); a month is 31 days; a
/// minute is one run's cities spread over the interval (cities ÷ interval minutes, rounded up;
/// for cron, the shortest gap). A limit of 0 is no limit.
pub fn check_budget(
    cities: u64,
    states_to_list: u64,
    schedule: &Schedule,
    limit: RateLimit,
) -> Result<SweepBudget, SweepRefusal> {
    check_budget_at(cities, states_to_list, schedule, limit, Utc::now())
}

/// [`check_budget`] with cron fire times counted from `now`.
pub fn check_budget_at(
    cities: u64,
    states_to_list: u64,
    schedule: &Schedule,
    limit: RateLimit,
    now: DateTime<Utc>,
) -> Result<SweepBudget, SweepRefusal> {
    let runs = runs_of(schedule, now);
    let budget = budget_for(cities, states_to_list, runs);
    let Some((window, calls, max)) = exceeded(&budget, limit) else {
        return Ok(budget);
    };
    let message = refusal_message(&budget, runs, window, u64::from(max));
    Err(SweepRefusal {
        window,
        calls,
        limit: max,
        message,
        interval_that_fits_ms: interval_that_fits(cities, states_to_list, limit),
        budget,
    })
}

/// The shortest interval in whole minutes at which the sweep fits every window; `None` when not
/// even the longest (31 days) does. Every window's calls only fall as the interval grows, so
/// the search halves.
fn interval_that_fits(cities: u64, states_to_list: u64, limit: RateLimit) -> Option<u64> {
    let fits = |minutes: u64| {
        let budget = budget_for(cities, states_to_list, interval_runs(minutes * MINUTE_MS));
        exceeded(&budget, limit).is_none()
    };
    if !fits(MAX_INTERVAL_MINUTES) {
        return None;
    }
    let (mut low, mut high) = (1u64, MAX_INTERVAL_MINUTES);
    while low < high {
        let mid = low + (high - low) / 2;
        if fits(mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Some(low * MINUTE_MS)
}

fn refusal_message(budget: &SweepBudget, runs: Runs, window: LimitWindowName, max: u64) -> String {
    let cities = plural(budget.cities, "city", "cities");
    let limit = thousands(max);
    match window {
        LimitWindowName::Minute => format!(
            "{cities} every {} = {} calls a minute; the key allows {limit}",
            describe_ms(runs.min_gap_ms),
            thousands(budget.calls_per_minute)
        ),
        LimitWindowName::Day | LimitWindowName::Month => {
            let (runs_in, listing, total, unit) = if window == LimitWindowName::Day {
                (
                    runs.per_day,
                    budget.calls_per_day - budget.cities.saturating_mul(runs.per_day),
                    budget.calls_per_day,
                    "day",
                )
            } else {
                (
                    runs.per_month,
                    budget.calls_per_month - budget.cities.saturating_mul(runs.per_month),
                    budget.calls_per_month,
                    "month",
                )
            };
            let city_calls = budget.cities.saturating_mul(runs_in);
            let mut message = format!(
                "{cities} × {} a {unit} = {} calls a {unit}",
                plural(runs_in, "run", "runs"),
                thousands(city_calls)
            );
            // The listing calls are named only when the cities alone would fit.
            if city_calls <= max {
                let _ = write!(
                    message,
                    ", plus {} to list them = {}",
                    thousands(listing),
                    thousands(total)
                );
            }
            let _ = write!(message, "; the key allows {limit}");
            message
        }
    }
}

/// `1 city`, `412 cities`, `39,552 runs`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// `39552` → `39,552`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `15 minutes`, `1 minute`, `30 seconds`, `1,500 ms`.
fn describe_ms(ms: u64) -> String {
    if ms.is_multiple_of(MINUTE_MS) {
        plural(ms / MINUTE_MS, "minute", "minutes")
    } else if ms.is_multiple_of(1_000) {
        plural(ms / 1_000, "second", "seconds")
    } else {
        format!("{} ms", thousands(ms))
    }
}

/// What a list is cached under: the listing URL, the names, the key's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListKey {
    url: String,
    country: String,
    state: Option<String>,
    key: u64,
}

#[derive(Debug, Clone)]
struct CachedList {
    names: Arc<Vec<String>>,
    listed_at: Instant,
}

/// Sweep planning for the stream API: an HTTP client for IQAir's listing endpoints and the lists
/// counted in the last day. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Sweeps {
    client: reqwest::Client,
    max_age: Duration,
    lists: Mutex<HashMap<ListKey, CachedList>>,
}

impl Default for Sweeps {
    fn default() -> Self {
        Sweeps::new()
    }
}

impl Sweeps {
    /// Planning with its own client (10 s per listing call).
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(LIST_TIMEOUT)
            .build()
            // Only a TLS backend that cannot initialise fails here; nothing works without it.
            .expect("an HTTP client with the default TLS set-up");
        Sweeps::with_client(client)
    }

    /// Planning through `client` (give it a total timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        Sweeps {
            client,
            max_age: LIST_MAX_AGE,
            lists: Mutex::new(HashMap::new()),
        }
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, HashMap<ListKey, CachedList>> {
        // Each critical section is one map operation; a poisoned map is still consistent.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The budget of a sweep stream: `Ok(None)` when `params` ask for no sweep or `endpoint` is
    /// not IQAir's `city` endpoint (the stream validation refuses a sweep on any other, with
    /// [`catalogue::iqair::is_city_endpoint`]). Otherwise its cities are counted through the
    /// listing endpoints (lists cached a day per key, one by one, so a discovery cut short by
    /// the key's minute limit resumes on the next try) and [`check_budget`] decides.
    pub async fn plan(
        &self,
        endpoint: &str,
        secret_key: &SecretKey,
        params: &Map<String, Value>,
        schedule: &Schedule,
        limit: RateLimit,
    ) -> Result<Option<SweepBudget>, SweepError> {
        let Some(scope) = sweep_scope(params) else {
            return Ok(None);
        };
        if !is_city_endpoint(endpoint) {
            return Ok(None);
        }
        let (cities, states_to_list) = self.count(endpoint, secret_key, &scope).await?;
        check_budget(cities, states_to_list, schedule, limit)
            .map(Some)
            .map_err(SweepError::Refused)
    }

    /// The sweep's cities, and the states listed for them (0 for a one-state sweep). A country
    /// sweep leaves out states IQAir will not list the cities of, as the worker does.
    async fn count(
        &self,
        endpoint: &str,
        secret_key: &SecretKey,
        scope: &SweepScope,
    ) -> Result<(u64, u64), SweepError> {
        let states = match &scope.state {
            Some(state) => Arc::new(vec![state.clone()]),
            None => {
                self.list(endpoint, secret_key, Listing::States, scope, None, 0)
                    .await?
            }
        };
        let mut cities = 0u64;
        let mut first_skip: Option<SweepError> = None;
        for (done, state) in states.iter().enumerate() {
            match self
                .list(
                    endpoint,
                    secret_key,
                    Listing::Cities,
                    scope,
                    Some(state),
                    done + usize::from(scope.state.is_none()),
                )
                .await
            {
                Ok(names) => cities += names.len() as u64,
                Err(
                    err @ SweepError::Discovery {
                        retry_after_s: None,
                        ..
                    },
                ) if scope.state.is_none() && !is_key_problem(&err) => {
                    tracing::info!("sweep of {}: state {state:?} skipped: {err}", scope.country);
                    first_skip.get_or_insert(err);
                }
                Err(err) => return Err(err),
            }
        }
        if cities == 0 {
            return Err(first_skip.unwrap_or_else(|| SweepError::Discovery {
                message: format!(
                    "IQAir lists no cities in {}: nothing to sweep",
                    scope.describe()
                ),
                retry_after_s: None,
            }));
        }
        let states_to_list = if scope.state.is_some() {
            0
        } else {
            states.len() as u64
        };
        Ok((cities, states_to_list))
    }

    /// One list, from the cache while fresh. `done` lists were needed before it (for the
    /// progress a rate-limit message reports).
    async fn list(
        &self,
        endpoint: &str,
        secret_key: &SecretKey,
        listing: Listing,
        scope: &SweepScope,
        state: Option<&str>,
        done: usize,
    ) -> Result<Arc<Vec<String>>, SweepError> {
        let url = listing_endpoint(endpoint, listing).ok_or_else(|| SweepError::Discovery {
            message: "a sweep needs IQAir's city endpoint (…/v2/city)".to_string(),
            retry_after_s: None,
        })?;
        let key = ListKey {
            url: url.clone(),
            country: scope.country.clone(),
            state: state.map(str::to_string),
            key: secret_key.fingerprint(),
        };
        if let Some(cached) = self.lists().get(&key) {
            if cached.listed_at.elapsed() < self.max_age {
                return Ok(cached.names.clone());
            }
        }
        let what = match state {
            Some(state) => format!("the cities of {state}, {}", scope.country),
            None => format!("the states of {}", scope.country),
        };
        let mut query = vec![("key", secret_key.expose()), ("country", &scope.country)];
        if let Some(state) = state {
            query.push(("state", state));
        }
        let trouble = |detail: String| SweepError::Discovery {
            message: format!(
                "could not list {what} at {url}: {detail}; try again in {RETRY_AFTER_TROUBLE_S} s"
            ),
            retry_after_s: Some(RETRY_AFTER_TROUBLE_S),
        };
        let response = self
            .client
            .get(&url)
            .query(&query)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| trouble(redact(&common::error_chain(&err.without_url()), secret_key)))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|err| trouble(redact(&common::error_chain(&err.without_url()), secret_key)))?;
        let names = match read_listing(&body, listing) {
            ListingBody::Names(names) => names,
            ListingBody::Fail(message) => {
                let message = redact(&message, secret_key);
                return Err(refused_listing(&message, scope, state, &what, done));
            }
            ListingBody::Unrecognised(reason) => {
                return Err(match status {
                    429 => refused_listing("HTTP 429", scope, state, &what, done),
                    401 | 403 => SweepError::Discovery {
                        message: format!(
                            "IQAir refused the key while listing {what} (HTTP {status}); check secret_key"
                        ),
                        retry_after_s: None,
                    },
                    500.. | 408 => trouble(format!("HTTP {status}")),
                    _ => SweepError::Discovery {
                        message: format!(
                            "IQAir's answer to listing {what} is not a listing (HTTP {status}): {}",
                            redact(&reason, secret_key)
                        ),
                        retry_after_s: None,
                    },
                });
            }
        };
        let names = Arc::new(names);
        let mut lists = self.lists();
        lists.retain(|_, c| c.listed_at.elapsed() < self.max_age);
        lists.insert(
            key,
            CachedList {
                names: names.clone(),
                listed_at: Instant::now(),
            },
        );
        Ok(names)
    }
}

/// A discovery error about the key itself (wrong, expired), which no skipped state can avoid.
fn is_key_problem(err: &SweepError) -> bool {
    matches!(err, SweepError::Discovery { message, .. } if message.contains("refused the key"))
}

/// IQAir's fail answer to a listing, as a sentence saying what to do.
fn refused_listing(
    message: &str,
    scope: &SweepScope,
    state: Option<&str>,
    what: &str,
    done: usize,
) -> SweepError {
    let kind = if message == "HTTP 429" {
        FailKind::RateLimited(LimitWindow::Unknown)
    } else {
        fail_kind(message)
    };
    let (message, retry_after_s) = match kind {
        FailKind::Auth => (
            format!(
                "IQAir refused the key while listing {what} ({message}); check secret_key (Community keys expire after 12 months)"
            ),
            None,
        ),
        FailKind::RateLimited(window) => {
            let wait = retry_after(window, Utc::now());
            let progress = if done > 0 {
                format!("{done} lists are counted and kept; ")
            } else {
                String::new()
            };
            (
                format!(
                    "IQAir rate-limited this key while listing {what} ({message}); {progress}try again in {wait} s"
                ),
                Some(wait),
            )
        }
        FailKind::CountryNotFound => (
            format!(
                "IQAir lists no country {:?}; use the English name GET /v2/countries gives (e.g. \"Poland\", \"USA\")",
                scope.country
            ),
            None,
        ),
        FailKind::StateNotFound => (
            match state {
                Some(state) => format!(
                    "IQAir lists no state {state:?} in {:?}; use a name GET /v2/states?country={} gives",
                    scope.country, scope.country
                ),
                None => format!("IQAir lists no country {:?}", scope.country),
            },
            None,
        ),
        FailKind::CityNotFound | FailKind::Other => (
            format!("IQAir would not list {what}: {message}"),
            None,
        ),
    };
    SweepError::Discovery {
        message,
        retry_after_s,
    }
}

/// Seconds until a used-up window frees: a second, a minute, the next UTC midnight, the first of
/// next month (IQAir's own boundaries are unknown, IQAIR.md §7; the simulator's are UTC).
fn retry_after(window: LimitWindow, now: DateTime<Utc>) -> u64 {
    let until =
        |t: Option<DateTime<Utc>>| t.map_or(3_600, |t| (t - now).num_seconds().max(1) as u64);
    match window {
        LimitWindow::Second => 1,
        LimitWindow::Minute | LimitWindow::Unknown => 60,
        LimitWindow::Day => until(
            now.date_naive()
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc()),
        ),
        LimitWindow::Month => {
            let (year, month) = if now.month() == 12 {
                (now.year() + 1, 1)
            } else {
                (now.year(), now.month() + 1)
            };
            until(Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single())
        }
    }
}

/// `text` without the key (raw or as a query would carry it).
fn redact(text: &str, secret_key: &SecretKey) -> String {
    let key = secret_key.expose();
    if key.len() < 3 {
        return text.to_string();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    text.replace(key, "***").replace(&encoded, "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMUNITY: RateLimit = RateLimit::COMMUNITY;

    fn every_minutes(minutes: u64) -> Schedule {
        Schedule::Interval {
            millis: minutes * MINUTE_MS,
        }
    }

    fn refused(result: Result<SweepBudget, SweepRefusal>) -> SweepRefusal {
        match result {
            Err(refusal) => refusal,
            Ok(budget) => panic!("expected a refusal, got {budget:?}"),
        }
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_issue_s_example_is_refused_with_its_arithmetic() {
        // 412 cities every 15 minutes on a Community key.
        let refusal = refused(check_budget(412, 16, &every_minutes(15), COMMUNITY));
        assert_eq!(
            refusal.message,
            "412 cities × 96 runs a day = 39,552 calls a day; the key allows 500"
        );
        assert_eq!(refusal.window, LimitWindowName::Day);
        assert_eq!((refusal.calls, refusal.limit), (39_552 + 17, 500));
        assert_eq!(refusal.budget.runs_per_day, 96);
        assert_eq!(refusal.budget.listing_calls_per_day, 17);
        // The month binds: even one run a day is (412 + 17) × 31 = 13,299 calls a month. 23 runs
        // a month (9,867 calls) fit: every 1,941 minutes (44,640 / 1,941 → 23 runs; 1,940 → 24).
        assert_eq!(refusal.interval_that_fits_ms, Some(1_941 * MINUTE_MS));
        assert!(check_budget(412, 16, &every_minutes(1_941), COMMUNITY).is_ok());
        assert!(check_budget(412, 16, &every_minutes(1_940), COMMUNITY).is_err());
    }

    #[test]
    fn a_small_sweep_fits_and_reports_its_calls() {
        // Lesser Poland's 4 cities every hour: 96 + 2 calls a day, 3,038 a month, 1 a minute.
        let budget = check_budget(4, 0, &every_minutes(60), COMMUNITY).unwrap();
        assert_eq!(
            budget,
            SweepBudget {
                cities: 4,
                states_to_list: 0,
                runs_per_day: 24,
                runs_per_month: 744,
                listing_calls_per_day: 1,
                calls_per_day: 97,
                calls_per_month: 2_976 + 31,
                calls_per_minute: 1,
            }
        );
    }

    #[test]
    fn the_month_and_the_minute_refuse_when_the_day_allows() {
        // 14 cities every hour: 336 + 6 = 342 a day (≤ 500), × 31 = 10,602 a month (> 10,000).
        let refusal = refused(check_budget(14, 5, &every_minutes(60), COMMUNITY));
        assert_eq!(refusal.window, LimitWindowName::Month);
        assert_eq!(
            refusal.message,
            "14 cities × 744 runs a month = 10,416 calls a month; the key allows 10,000"
        );
        // 14 × r + 6 ≤ 500 and 31 × (14 × r + 6) ≤ 10,000 → r ≤ 22 runs a day → 66 minutes.
        assert_eq!(refusal.interval_that_fits_ms, Some(66 * MINUTE_MS));
        assert!(check_budget(14, 5, &every_minutes(66), COMMUNITY).is_ok());
        assert!(check_budget(14, 5, &every_minutes(65), COMMUNITY).is_err());

        // No day or month limit; 12 cities in 2 minutes is 6 a minute.
        let minute_only = RateLimit {
            per_minute: 5,
            per_day: 0,
            per_month: 0,
        };
        let refusal = refused(check_budget(12, 0, &every_minutes(2), minute_only));
        assert_eq!(refusal.window, LimitWindowName::Minute);
        assert_eq!(
            refusal.message,
            "12 cities every 2 minutes = 6 calls a minute; the key allows 5"
        );
        assert_eq!(refusal.interval_that_fits_ms, Some(3 * MINUTE_MS));
        let refusal = refused(check_budget(
            3,
            0,
            &Schedule::Interval { millis: 30_000 },
            minute_only,
        ));
        assert_eq!(
            refusal.message,
            "3 cities every 30 seconds = 6 calls a minute; the key allows 5"
        );
    }

    #[test]
    fn listing_calls_are_named_when_they_tip_the_balance() {
        // 33 cities × 15 runs = 495 fit 500; the 17 listing calls do not.
        let refusal = refused(check_budget(
            33,
            16,
            &Schedule::Interval {
                millis: 96 * MINUTE_MS,
            },
            RateLimit {
                per_day: 500,
                ..RateLimit::UNLIMITED
            },
        ));
        assert_eq!(
            refusal.message,
            "33 cities × 15 runs a day = 495 calls a day, plus 17 to list them = 512; the key allows 500"
        );
    }

    #[test]
    fn no_limit_means_anything_fits_and_too_big_means_no_interval() {
        let budget = check_budget(
            100_000,
            50,
            &Schedule::Interval { millis: 1_000 },
            RateLimit::UNLIMITED,
        )
        .unwrap();
        assert_eq!(budget.runs_per_day, 86_400);
        assert_eq!(budget.calls_per_day, 8_640_000_051);
        // 10,001 cities: one run a month is already more than 10,000 calls.
        let refusal = refused(check_budget(10_001, 0, &every_minutes(15), COMMUNITY));
        assert_eq!(refusal.interval_that_fits_ms, None);
        // An interval that does not divide the day rounds the runs up.
        let budget = check_budget(
            1,
            0,
            &Schedule::Interval {
                millis: 7 * MINUTE_MS,
            },
            RateLimit::UNLIMITED,
        )
        .unwrap();
        assert_eq!(budget.runs_per_day, 206);
        // Longer than a day: runs a month counted directly.
        let weekly =
            check_budget(10, 0, &Schedule::Interval { millis: 7 * DAY_MS }, COMMUNITY).unwrap();
        assert_eq!((weekly.runs_per_day, weekly.runs_per_month), (1, 5));
        assert_eq!(weekly.calls_per_month, 50 + 5);
    }

    #[test]
    fn cron_counts_its_fire_times() {
        let quarter_hours = Schedule::Cron {
            expr: "0 */15 * * * *".into(),
        };
        let refusal = refused(check_budget_at(412, 16, &quarter_hours, COMMUNITY, noon()));
        assert_eq!(
            refusal.message,
            "412 cities × 96 runs a day = 39,552 calls a day; the key allows 500"
        );
        // Office hours on weekdays: the busiest day has 9 runs (09:00 … 17:00).
        let office = Schedule::Cron {
            expr: "0 0 9-17 * * Mon-Fri".into(),
        };
        let budget = check_budget_at(5, 0, &office, COMMUNITY, noon()).unwrap();
        assert_eq!(budget.runs_per_day, 9);
        // The 31 days after Sunday 2026-11-22 12:00 hold 22 whole weekdays (Mon 23 Nov … Tue
        // 22 Dec) and Wednesday 23 Dec up to 12:00 (09:00 … 12:00).
        assert_eq!(budget.runs_per_month, 22 * 9 + 4);
        assert_eq!(budget.calls_per_minute, 1, "an hour between runs");
        // Every second: counting stops early and the busiest day stands for the month.
        let every_second = Schedule::Cron {
            expr: "* * * * * *".into(),
        };
        let budget = check_budget_at(1, 0, &every_second, RateLimit::UNLIMITED, noon()).unwrap();
        assert_eq!(budget.runs_per_day, 86_400);
        assert_eq!(budget.runs_per_month, 86_400 * 31);
        assert_eq!(budget.calls_per_minute, 60);
    }

    #[test]
    fn numbers_read_like_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(500), "500");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_226_112), "1,226,112");
        assert_eq!(plural(1, "city", "cities"), "1 city");
        assert_eq!(describe_ms(90_000), "90 seconds");
        assert_eq!(describe_ms(1_500), "1,500 ms");
        let refusal = refused(check_budget(1, 0, &every_minutes(1), COMMUNITY));
        assert_eq!(
            refusal.message,
            "1 city × 1,440 runs a day = 1,440 calls a day; the key allows 500"
        );
    }

    #[test]
    fn limit_windows_free_at_their_ends() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap();
        assert_eq!(retry_after(LimitWindow::Minute, t), 60);
        assert_eq!(retry_after(LimitWindow::Day, t), 3_600);
        assert_eq!(retry_after(LimitWindow::Month, t), 3_600);
        let mid = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        assert_eq!(retry_after(LimitWindow::Month, mid), 86_400);
    }

    #[test]
    fn messages_never_carry_the_key() {
        let key = SecretKey::new("a1b2 c3+d4");
        assert_eq!(
            redact(
                "GET /v2/states?key=a1b2+c3%2Bd4 failed for a1b2 c3+d4",
                &key
            ),
            "GET /v2/states?key=*** failed for ***"
        );
    }
}
