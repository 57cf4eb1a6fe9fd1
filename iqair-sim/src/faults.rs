//! Injected faults: every error shape of IQAIR.md §6 and a few transport misbehaviours, switched
//! on per key (or for all keys) for a number of requests or until cleared.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Serialize, Serializer};

use super::reading::Shape;

/// A fault the simulator can inject. Names (see [`Fault::name`]) are what the admin API and the
/// `IQAIR_SIM_FAULTS` setting take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `call_limit_reached`, 429 (the documented code, IQAIR.md §8.1).
    CallLimitReached,
    /// `call_per_minute_limit_reached`, 429.
    CallPerMinuteLimitReached,
    /// `call_per_day_limit_reached`, 429.
    CallPerDayLimitReached,
    /// `call_per_month_limit_reached`, 429.
    CallPerMonthLimitReached,
    /// `too_many_requests`, 429.
    TooManyRequests,
    /// `incorrect_api_key`, 401.
    IncorrectApiKey,
    /// `api_key_expired`, 401.
    ApiKeyExpired,
    /// `Forbidden`, 403 (seen for expired keys, IQAIR.md §6.2).
    Forbidden,
    /// `Payment Required`, 402.
    PaymentRequired,
    /// `permission_denied (you don't have access to this endpoint)`, 403.
    PermissionDenied,
    /// `feature_not_available`, 403.
    FeatureNotAvailable,
    /// `city_not_found`, 400.
    CityNotFound,
    /// `no_nearest_city`, 404.
    NoNearestCity,
    /// A fail body (`call_per_minute_limit_reached`) with HTTP 200.
    Fail200,
    /// The bare JSON string `"node not found"`, `application/json`, 200.
    BareString,
    /// Plain text that is not JSON, 200.
    NotJson,
    /// An nginx "502 Bad Gateway" HTML page.
    Html502,
    /// An nginx "504 Gateway Time-out" HTML page.
    Html504,
    /// 500 with an empty body.
    ServerError,
    /// No answer until the client gives up (or the simulator shuts down).
    Hang,
    /// Headers and a third of the body at once, the rest trickled over the configured time.
    SlowBody,
    /// `Content-Length` of the whole body, half the bytes, then the connection is cut.
    Truncated,
    /// A success body without `current.pollution`.
    MissingPollution,
    /// A success body without `mainus` and `maincn`.
    MissingMain,
}

/// The message of the `permission_denied` answer, as captured (IQAIR.md §6.2).
pub(crate) const PERMISSION_DENIED: &str =
    "permission_denied (you don't have access to this endpoint)";

pub(crate) const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
pub(crate) const HTML_504: &str = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Answer with a fail envelope instead.
    FailBody { message: &'static str, status: u16 },
    /// Answer with these bytes instead; `api_headers` says whether the API's own headers go
    /// with them (a gateway page comes from a proxy, not from the API).
    Raw {
        status: u16,
        content_type: Option<&'static str>,
        body: &'static str,
        api_headers: bool,
    },
    /// Never answer.
    Hang,
    /// Answer normally, slowly.
    SlowBody,
    /// Answer normally, but cut the body in half.
    Truncated,
    /// Answer normally with a reading of this shape.
    Shape(Shape),
}

impl Fault {
    /// Every fault, in documentation order.
    pub const ALL: [Fault; 24] = [
        Fault::CallLimitReached,
        Fault::CallPerMinuteLimitReached,
        Fault::CallPerDayLimitReached,
        Fault::CallPerMonthLimitReached,
        Fault::TooManyRequests,
        Fault::IncorrectApiKey,
        Fault::ApiKeyExpired,
        Fault::Forbidden,
        Fault::PaymentRequired,
        Fault::PermissionDenied,
        Fault::FeatureNotAvailable,
        Fault::CityNotFound,
        Fault::NoNearestCity,
        Fault::Fail200,
        Fault::BareString,
        Fault::NotJson,
        Fault::Html502,
        Fault::Html504,
        Fault::ServerError,
        Fault::Hang,
        Fault::SlowBody,
        Fault::Truncated,
        Fault::MissingPollution,
        Fault::MissingMain,
    ];

    /// The name the admin API takes, e.g. `call_per_minute_limit_reached` or `html_502`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::CallLimitReached => "call_limit_reached",
            Fault::CallPerMinuteLimitReached => "call_per_minute_limit_reached",
            Fault::CallPerDayLimitReached => "call_per_day_limit_reached",
            Fault::CallPerMonthLimitReached => "call_per_month_limit_reached",
            Fault::TooManyRequests => "too_many_requests",
            Fault::IncorrectApiKey => "incorrect_api_key",
            Fault::ApiKeyExpired => "api_key_expired",
            Fault::Forbidden => "forbidden",
            Fault::PaymentRequired => "payment_required",
            Fault::PermissionDenied => "permission_denied",
            Fault::FeatureNotAvailable => "feature_not_available",
            Fault::CityNotFound => "city_not_found",
            Fault::NoNearestCity => "no_nearest_city",
            Fault::Fail200 => "fail_200",
            Fault::BareString => "bare_string",
            Fault::NotJson => "not_json",
            Fault::Html502 => "html_502",
            Fault::Html504 => "html_504",
            Fault::ServerError => "server_error",
            Fault::Hang => "hang",
            Fault::SlowBody => "slow_body",
            Fault::Truncated => "truncated",
            Fault::MissingPollution => "missing_pollution",
            Fault::MissingMain => "missing_main",
        }
    }

    /// Every fault name, in documentation order.
    pub fn names() -> Vec<&'static str> {
        Fault::ALL.iter().map(|f| f.name()).collect()
    }

    /// The HTTP status the fault answers with (IQAIR.md §9 proposals); the admin API can
    /// override it for the faults that replace the answer.
    pub fn default_status(self) -> u16 {
        match self.action() {
            Action::FailBody { status, .. } | Action::Raw { status, .. } => status,
            Action::Hang => 504,
            Action::SlowBody | Action::Truncated | Action::Shape(_) => 200,
        }
    }

    pub(crate) fn action(self) -> Action {
        let fail = |message, status| Action::FailBody { message, status };
        match self {
            Fault::CallLimitReached => fail("call_limit_reached", 429),
            Fault::CallPerMinuteLimitReached => fail("call_per_minute_limit_reached", 429),
            Fault::CallPerDayLimitReached => fail("call_per_day_limit_reached", 429),
            Fault::CallPerMonthLimitReached => fail("call_per_month_limit_reached", 429),
            Fault::TooManyRequests => fail("too_many_requests", 429),
            Fault::IncorrectApiKey => fail("incorrect_api_key", 401),
            Fault::ApiKeyExpired => fail("api_key_expired", 401),
            Fault::Forbidden => fail("Forbidden", 403),
            Fault::PaymentRequired => fail("Payment Required", 402),
            Fault::PermissionDenied => fail(PERMISSION_DENIED, 403),
            Fault::FeatureNotAvailable => fail("feature_not_available", 403),
            Fault::CityNotFound => fail("city_not_found", 400),
            Fault::NoNearestCity => fail("no_nearest_city", 404),
            Fault::Fail200 => fail("call_per_minute_limit_reached", 200),
            Fault::BareString => Action::Raw {
                status: 200,
                content_type: Some("application/json"),
                body: "\"node not found\"",
                api_headers: true,
            },
            Fault::NotJson => Action::Raw {
                status: 200,
                content_type: Some("text/plain; charset=utf-8"),
                body: "This is a valid response, but it isn't JSON.",
                api_headers: true,
            },
            Fault::Html502 => Action::Raw {
                status: 502,
                content_type: Some("text/html"),
                body: HTML_502,
                api_headers: false,
            },
            Fault::Html504 => Action::Raw {
                status: 504,
                content_type: Some("text/html"),
                body: HTML_504,
                api_headers: false,
            },
            Fault::ServerError => Action::Raw {
                status: 500,
                content_type: None,
                body: "",
                api_headers: false,
            },
            Fault::Hang => Action::Hang,
            Fault::SlowBody => Action::SlowBody,
            Fault::Truncated => Action::Truncated,
            Fault::MissingPollution => Action::Shape(Shape {
                pollution: false,
                main_pollutants: true,
            }),
            Fault::MissingMain => Action::Shape(Shape {
                pollution: true,
                main_pollutants: false,
            }),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault name that is not one of [`Fault::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?} (known: {known})", known = Fault::names().join(", "))]
pub struct UnknownFault(pub String);

impl FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| UnknownFault(name.to_string()))
    }
}

impl Serialize for Fault {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One switched-on fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRule {
    /// The key it applies to; `None` for every key.
    pub key: Option<String>,
    pub fault: Fault,
    /// Requests left before the rule switches itself off; `None` until cleared.
    pub remaining: Option<u64>,
    /// Overrides the fault's HTTP status (only for faults that replace the answer).
    pub status: Option<u16>,
}

impl FaultRule {
    /// A rule for every key, until cleared.
    pub fn always(fault: Fault) -> FaultRule {
        FaultRule {
            key: None,
            fault,
            remaining: None,
            status: None,
        }
    }
}

/// The active rules. The newest matching rule wins.
#[derive(Debug, Default)]
pub(crate) struct FaultBoard {
    /// Lets the hot path skip the lock while no fault is on (the common case, and the benchmark).
    armed: AtomicBool,
    rules: Mutex<Vec<FaultRule>>,
}

impl FaultBoard {
    pub fn new(rules: Vec<FaultRule>) -> FaultBoard {
        FaultBoard {
            armed: AtomicBool::new(!rules.is_empty()),
            rules: Mutex::new(rules),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        // A panic while holding this lock cannot leave the list half-changed: every change is a
        // single push, remove, clear or decrement.
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, rule: FaultRule) {
        let mut rules = self.lock();
        rules.push(rule);
        self.armed.store(true, Ordering::Release);
    }

    pub fn clear(&self) -> usize {
        let mut rules = self.lock();
        let cleared = rules.len();
        rules.clear();
        self.armed.store(false, Ordering::Release);
        cleared
    }

    pub fn list(&self) -> Vec<FaultRule> {
        self.lock().clone()
    }

    /// The fault for a request with `key`, counting it against the rule's budget.
    pub fn take(&self, key: &str) -> Option<(Fault, Option<u16>)> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut rules = self.lock();
        let index = rules
            .iter()
            .rposition(|r| r.key.as_deref().is_none_or(|k| k == key))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let names = Fault::names();
        assert_eq!(names.len(), Fault::ALL.len());
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
            assert_eq!(names.iter().filter(|n| **n == fault.name()).count(), 1);
        }
        let err = "nope".parse::<Fault>().unwrap_err();
        assert!(err.to_string().contains("html_502"));
    }

    #[test]
    fn statuses_follow_the_proposals() {
        assert_eq!(Fault::CityNotFound.default_status(), 400);
        assert_eq!(Fault::IncorrectApiKey.default_status(), 401);
        assert_eq!(Fault::PaymentRequired.default_status(), 402);
        assert_eq!(Fault::Forbidden.default_status(), 403);
        assert_eq!(Fault::PermissionDenied.default_status(), 403);
        assert_eq!(Fault::NoNearestCity.default_status(), 404);
        assert_eq!(Fault::CallPerDayLimitReached.default_status(), 429);
        assert_eq!(Fault::Fail200.default_status(), 200);
        assert_eq!(Fault::Html502.default_status(), 502);
        assert_eq!(Fault::ServerError.default_status(), 500);
    }

    #[test]
    fn newest_matching_rule_wins_and_counts_run_out() {
        let board = FaultBoard::default();
        assert_eq!(board.take("a"), None);
        board.add(FaultRule::always(Fault::Hang));
        board.add(FaultRule {
            key: Some("a".into()),
            fault: Fault::NotJson,
            remaining: Some(2),
            status: Some(201),
        });
        assert_eq!(board.take("b"), Some((Fault::Hang, None)));
        assert_eq!(board.take("a"), Some((Fault::NotJson, Some(201))));
        assert_eq!(board.take("a"), Some((Fault::NotJson, Some(201))));
        assert_eq!(board.take("a"), Some((Fault::Hang, None)));
        assert_eq!(board.list().len(), 1);
        assert_eq!(board.clear(), 1);
        assert_eq!(board.take("a"), None);
    }
}
