//! The global rate limit: fixed one-minute windows on the wall clock (`:00` to `:59`), one
//! counter for every credential, advertised in `X-RateLimit-*` headers on every data answer.

use std::sync::{Mutex, PoisonError};

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

/// Where the window stands after a request, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateState {
    pub limit: u64,
    pub remaining: u64,
    /// Epoch seconds when the current window ends.
    pub reset_s: i64,
    /// Whole seconds until the reset, at least 1; set when the request was refused.
    pub retry_after_s: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct RateWindow {
    /// The current window (epoch minutes) and the calls admitted in it.
    window: Mutex<(i64, u64)>,
}

impl RateWindow {
    /// Admits a call at `now_ms` under `limit` per minute (if `count`, the call uses quota;
    /// otherwise the state is only read, for answers that do not count such as a 401).
    pub fn check(&self, limit: u64, now_ms: i64, count: bool) -> RateState {
        let minute = now_ms.div_euclid(60_000);
        let reset_ms = (minute + 1) * 60_000;
        // A plain pair of numbers: a panic elsewhere cannot leave it inconsistent.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.0 != minute {
            *window = (minute, 0);
        }
        let refused = count && window.1 >= limit;
        if count && !refused {
            window.1 += 1;
        }
        RateState {
            limit,
            remaining: limit.saturating_sub(window.1),
            reset_s: reset_ms / 1000,
            retry_after_s: refused.then(|| ((reset_ms - now_ms + 999) / 1000).max(1)),
        }
    }

    /// Starts a fresh window.
    pub fn reset(&self) {
        *self.window.lock().unwrap_or_else(PoisonError::into_inner) = (i64::MIN, 0);
    }
}

impl RateState {
    /// Puts the `X-RateLimit-*` headers (and `Retry-After` on a refusal) on `response`.
    pub fn stamp(&self, response: &mut Response) {
        let headers = response.headers_mut();
        let name = HeaderName::from_static;
        headers.insert(name("x-ratelimit-limit"), HeaderValue::from(self.limit));
        headers.insert(
            name("x-ratelimit-remaining"),
            HeaderValue::from(self.remaining),
        );
        headers.insert(name("x-ratelimit-reset"), HeaderValue::from(self.reset_s));
        if let Some(retry_after) = self.retry_after_s {
            headers.insert(name("retry-after"), HeaderValue::from(retry_after));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_window_counts_then_refuses_then_resets() {
        let window = RateWindow::default();
        let t0 = 1_767_225_600_000 + 15_500; // 15.5 s into a minute
        let first = window.check(2, t0, true);
        assert_eq!((first.remaining, first.retry_after_s), (1, None));
        assert_eq!(first.reset_s, 1_767_225_660);
        assert_eq!(
            window.check(2, t0, false).remaining,
            1,
            "a read uses no quota"
        );
        assert_eq!(window.check(2, t0, true).remaining, 0);
        let refused = window.check(2, t0, true);
        assert_eq!((refused.remaining, refused.retry_after_s), (0, Some(45)));
        let late = window.check(2, 1_767_225_659_900, true);
        assert_eq!(late.retry_after_s, Some(1), "at least one second");
        let next = window.check(2, 1_767_225_660_000, true);
        assert_eq!((next.remaining, next.retry_after_s), (1, None));
    }
}
