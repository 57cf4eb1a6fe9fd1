//! Per-key rate limits in fixed windows (IQAIR.md §7): a per-second burst guard
//! (`too_many_requests`), per minute, per UTC day and per UTC calendar month. A refused call does
//! not count against any window.

use std::time::{Duration, Instant};

/// Calls allowed per key in each window; 0 switches that window off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls per `second_window` before `too_many_requests`.
    pub per_second: u32,
    /// Calls per `minute_window` before `call_per_minute_limit_reached`.
    pub per_minute: u32,
    /// Calls per UTC day before `call_per_day_limit_reached`.
    pub per_day: u32,
    /// Calls per UTC calendar month before `call_per_month_limit_reached`.
    pub per_month: u32,
    /// Length of the "second" window (1 s; tests shorten it).
    pub second_window: Duration,
    /// Length of the "minute" window (60 s; tests shorten it).
    pub minute_window: Duration,
}

impl Limits {
    /// The Community plan: 10/s, 5/min, 500/day, 10,000/month.
    pub const fn community() -> Limits {
        Limits {
            per_second: 10,
            per_minute: 5,
            per_day: 500,
            per_month: 10_000,
            second_window: Duration::from_secs(1),
            minute_window: Duration::from_secs(60),
        }
    }

    /// No limits at all (benchmarks).
    pub const fn off() -> Limits {
        Limits {
            per_second: 0,
            per_minute: 0,
            per_day: 0,
            per_month: 0,
            second_window: Duration::from_secs(1),
            minute_window: Duration::from_secs(60),
        }
    }

    /// True when every window is switched off.
    pub fn is_off(&self) -> bool {
        self.per_second == 0 && self.per_minute == 0 && self.per_day == 0 && self.per_month == 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::community()
    }
}

/// The window that refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Second,
    Minute,
    Day,
    Month,
}

impl LimitHit {
    /// The message the real API sends (IQAIR.md §6.2).
    pub fn message(self) -> &'static str {
        match self {
            LimitHit::Second => "too_many_requests",
            LimitHit::Minute => "call_per_minute_limit_reached",
            LimitHit::Day => "call_per_day_limit_reached",
            LimitHit::Month => "call_per_month_limit_reached",
        }
    }
}

/// The counters of one key.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    second: Anchored,
    minute: Anchored,
    day: Calendar,
    month: Calendar,
}

/// A window that opens with the first call after the previous one closed, so a burst is never
/// split across an arbitrary clock boundary.
#[derive(Debug, Default)]
struct Anchored {
    start: Option<Instant>,
    count: u32,
}

impl Anchored {
    fn roll(&mut self, now: Instant, length: Duration) {
        if self
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= length)
        {
            self.start = Some(now);
            self.count = 0;
        }
    }
}

/// A window tied to a UTC calendar period (day number or month number).
#[derive(Debug, Default)]
struct Calendar {
    period: i64,
    count: u32,
}

impl Calendar {
    fn roll(&mut self, period: i64) {
        if self.period != period {
            self.period = period;
            self.count = 0;
        }
    }
}

fn full(limit: u32, count: u32) -> bool {
    limit > 0 && count >= limit
}

impl Windows {
    /// Counts a call, or says which window refuses it. The longest exhausted window is reported,
    /// since that is how long the caller has to wait.
    pub fn admit(
        &mut self,
        limits: &Limits,
        now: Instant,
        day: i64,
        month: i64,
    ) -> Result<(), LimitHit> {
        self.second.roll(now, limits.second_window);
        self.minute.roll(now, limits.minute_window);
        self.day.roll(day);
        self.month.roll(month);
        if full(limits.per_month, self.month.count) {
            return Err(LimitHit::Month);
        }
        if full(limits.per_day, self.day.count) {
            return Err(LimitHit::Day);
        }
        if full(limits.per_minute, self.minute.count) {
            return Err(LimitHit::Minute);
        }
        if full(limits.per_second, self.second.count) {
            return Err(LimitHit::Second);
        }
        self.second.count += 1;
        self.minute.count += 1;
        self.day.count += 1;
        self.month.count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, per_minute: u32, per_day: u32, per_month: u32) -> Limits {
        Limits {
            per_second,
            per_minute,
            per_day,
            per_month,
            ..Limits::community()
        }
    }

    #[test]
    fn each_window_refuses_with_its_own_message_and_refusals_do_not_count() {
        let t0 = Instant::now();
        let mut w = Windows::default();
        let l = limits(2, 3, 0, 0);
        assert_eq!(w.admit(&l, t0, 1, 1), Ok(()));
        assert_eq!(w.admit(&l, t0, 1, 1), Ok(()));
        assert_eq!(w.admit(&l, t0, 1, 1), Err(LimitHit::Second));
        assert_eq!(w.admit(&l, t0, 1, 1), Err(LimitHit::Second));
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(w.admit(&l, t1, 1, 1), Ok(()));
        assert_eq!(w.admit(&l, t1, 1, 1), Err(LimitHit::Minute));
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(w.admit(&l, t2, 1, 1), Ok(()));
    }

    #[test]
    fn day_and_month_follow_the_calendar_and_report_the_longest_window() {
        let t = Instant::now();
        let mut w = Windows::default();
        let l = limits(0, 0, 2, 3);
        assert_eq!(w.admit(&l, t, 10, 5), Ok(()));
        assert_eq!(w.admit(&l, t, 10, 5), Ok(()));
        assert_eq!(w.admit(&l, t, 10, 5), Err(LimitHit::Day));
        assert_eq!(w.admit(&l, t, 11, 5), Ok(()));
        assert_eq!(w.admit(&l, t, 11, 5), Err(LimitHit::Month));
        assert_eq!(w.admit(&l, t, 12, 6), Ok(()));
        assert_eq!(LimitHit::Month.message(), "call_per_month_limit_reached");
    }

    #[test]
    fn zero_means_off() {
        let t = Instant::now();
        let mut w = Windows::default();
        assert!(Limits::off().is_off());
        assert!(!Limits::community().is_off());
        for _ in 0..10_000 {
            assert_eq!(w.admit(&Limits::off(), t, 1, 1), Ok(()));
        }
    }
}
