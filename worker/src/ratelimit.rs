//! Call budgets per API key, shared by every stream that uses the key on this worker.
//!
//! Two things stop a run from calling the API, both kept here, per key:
//!
//! - **The local budget**, with limits from the streams' [`RateLimit`]. A run takes a permit
//!   before each call; with none left it is recorded as `rate_limited` without calling.
//!   Day and month are fixed UTC calendar windows (as the simulator counts; IQAir's boundary is
//!   unknown, IQAIR.md §7). The minute is a *sliding* window: at most `per_minute` calls in any
//!   61 s. Where the API's minute starts is unknown (the simulator anchors it at the first call
//!   of a quiet key), and only a sliding window stays under every placement of a 60 s window;
//!   the extra second absorbs the network delay between our permit and the API's clock. It
//!   remembers the calls of the last 61 s only (at most `per_minute` of them).
//! - **The API's own answer**: a limit error blocks the key for a while (second: 1 s, minute:
//!   60 s, day: 1 h, month: 6 h), whatever budget is left.
//!
//! Streams sharing a key whose configured limits differ get the strictest per window (the
//! smallest non-zero limit among the streams that use the key here). Wall time comes from the
//! [`Clock`], so paused-time tests cross minute, day and month boundaries in milliseconds.
//!
//! Keys are held only as their fingerprint ([`SecretKey::fingerprint`], a SHA-256 prefix): one
//! small entry per key, and the map never holds or prints a key.
//!
//! **Pruning.** A key's entry goes when nothing it holds can deny a call any more: no stream on
//! this worker uses the key, no block from the API is running, no call is in the sliding
//! minute, and no call was counted in the current day or month. Dropping it earlier would let a
//! stream started again on the key this month call past the key's day or month limit, so an idle
//! key that made calls stays (a few dozen bytes) until its month ends. Entries are checked when
//! a key's last stream leaves and by a sweep at most once a minute (on a call): the map holds the
//! keys in use plus the keys used this month, never every key seen since the worker started.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::SecretKey;
use protocol::RateLimit;
use tokio::time::Instant;
use uuid::Uuid;

use crate::adapters::RateLimitScope;
use crate::clock::Clock;

/// The span of the sliding minute window: a minute, plus a second of slack for network delay.
pub const MINUTE_SPAN: Duration = Duration::from_secs(61);

/// Why a run may not call the API now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// This worker's budget for the key is used up in `window` (`minute`, `day` or `month`).
    Budget {
        window: &'static str,
        limit: u32,
        next_at: DateTime<Utc>,
    },
    /// The API answered with a limit error; the key backs off until then.
    Backoff { until: Instant },
}

impl Denied {
    /// What the failed run says (never the key).
    pub fn message(&self) -> String {
        match self {
            Denied::Budget {
                window,
                limit,
                next_at,
            } => format!(
                "local budget for this key exhausted ({limit}/{window}); next call at {}",
                next_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Denied::Backoff { until } => {
                let secs = until.saturating_duration_since(Instant::now()).as_secs();
                format!("rate limited: this key backs off for another {secs} s")
            }
        }
    }
}

/// Calls counted in the current calendar window; `index` names it (days or months since the
/// epoch).
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    index: i64,
    used: u32,
}

impl Window {
    fn roll(&mut self, index: i64) {
        if self.index != index {
            *self = Window { index, used: 0 };
        }
    }
}

#[derive(Debug, Default)]
struct KeyEntry {
    /// The limit each stream using this key asked for, at its latest run.
    streams: HashMap<Uuid, RateLimit>,
    /// How many of those streams ask for each distinct limit: the strictest is folded over
    /// these few, not over every stream (10,000 streams on one key made that a hot spot).
    limits: HashMap<RateLimit, u32>,
    /// When the calls of the last [`MINUTE_SPAN`] were permitted, oldest first.
    recent: VecDeque<Instant>,
    day: Window,
    month: Window,
    /// Set by a limit answer from the API.
    blocked_until: Option<Instant>,
}

impl KeyEntry {
    /// Whether nothing here can deny a call any more (see the module's "Pruning"): no stream,
    /// no running block, no call in the sliding minute, none counted this day or month.
    fn is_idle(&self, instant: Instant, day: i64, month: i64) -> bool {
        self.streams.is_empty()
            && self.blocked_until.is_none_or(|until| until <= instant)
            && self
                .recent
                .back()
                .is_none_or(|t| instant.saturating_duration_since(*t) >= MINUTE_SPAN)
            && (self.day.used == 0 || self.day.index != day)
            && (self.month.used == 0 || self.month.index != month)
    }

    /// Record `stream`'s limit.
    fn set_stream(&mut self, stream: Uuid, limit: RateLimit) {
        match self.streams.insert(stream, limit) {
            Some(old) if old == limit => return,
            Some(old) => self.unref(old),
            None => {}
        }
        *self.limits.entry(limit).or_default() += 1;
    }

    /// Forget `stream`'s limit.
    fn remove_stream(&mut self, stream: Uuid) {
        if let Some(old) = self.streams.remove(&stream) {
            self.unref(old);
        }
    }

    fn unref(&mut self, limit: RateLimit) {
        if let Some(count) = self.limits.get_mut(&limit) {
            *count -= 1;
            if *count == 0 {
                self.limits.remove(&limit);
            }
        }
    }

    /// The strictest limit of every stream on this key.
    fn strictest(&self) -> Option<RateLimit> {
        self.limits.keys().copied().reduce(RateLimit::strictest)
    }
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<u64, KeyEntry>,
    /// Which key each stream used last, so a stream that changes keys leaves the old one.
    stream_keys: HashMap<Uuid, u64>,
    /// When every key was last checked for pruning.
    swept_at: Option<Instant>,
}

/// How often a call sweeps every key for idle ones.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The budgets and backoffs of every key used on this worker.
#[derive(Debug)]
pub struct KeyBudgets {
    clock: Clock,
    state: Mutex<State>,
}

impl Default for KeyBudgets {
    fn default() -> Self {
        KeyBudgets::new(Clock::System)
    }
}

fn day_index(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}

fn month_index(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// The start of the window after `index`.
fn next_start(window: &'static str, index: i64) -> DateTime<Utc> {
    let secs = match window {
        "day" => (index + 1) * 86_400,
        _ => {
            let next = index + 1;
            let (year, month0) = (next.div_euclid(12), next.rem_euclid(12));
            return Utc
                .with_ymd_and_hms(year as i32, month0 as u32 + 1, 1, 0, 0, 0)
                .single()
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        }
    };
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl KeyBudgets {
    /// Budgets whose windows follow `clock`.
    pub fn new(clock: Clock) -> Self {
        KeyBudgets {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one call from the key's budget for `stream_id`, whose stream asks for `limit`.
    /// Denied while the key backs off after a limit answer, or when a window is used up.
    pub fn acquire(
        &self,
        stream_id: Uuid,
        secret_key: &SecretKey,
        limit: RateLimit,
    ) -> Result<(), Denied> {
        let id = secret_key.fingerprint();
        let now = self.clock.now();
        let mut state = self.state();
        if state.swept_at.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            self.sweep(&mut state);
        }
        if let Some(old) = state.stream_keys.insert(stream_id, id) {
            if old != id {
                self.leave(&mut state, old, stream_id);
            }
        }
        let entry = state.keys.entry(id).or_default();
        entry.set_stream(stream_id, limit);
        if let Some(until) = entry.blocked_until {
            if until > Instant::now() {
                return Err(Denied::Backoff { until });
            }
            entry.blocked_until = None;
        }
        let limit = entry.strictest().unwrap_or(limit);
        let instant = Instant::now();
        while entry
            .recent
            .front()
            .is_some_and(|t| instant.saturating_duration_since(*t) >= MINUTE_SPAN)
        {
            entry.recent.pop_front();
        }
        entry.day.roll(day_index(now));
        entry.month.roll(month_index(now));
        // The longest exhausted window first: its end is when a call can really happen again.
        for (window, counted, max) in [
            ("month", entry.month, limit.per_month),
            ("day", entry.day, limit.per_day),
        ] {
            if max > 0 && counted.used >= max {
                return Err(Denied::Budget {
                    window,
                    limit: max,
                    next_at: next_start(window, counted.index),
                });
            }
        }
        let per_minute = limit.per_minute as usize;
        if per_minute > 0 && entry.recent.len() >= per_minute {
            // The call that frees a permit is the per_minute-th newest.
            let frees = entry.recent[entry.recent.len() - per_minute];
            let wait = (frees + MINUTE_SPAN).saturating_duration_since(instant);
            return Err(Denied::Budget {
                window: "minute",
                limit: limit.per_minute,
                next_at: now + chrono::Duration::from_std(wait).unwrap_or_default(),
            });
        }
        // Calendar windows count even when unlimited, so a limit set later sees the calls made
        // so far; the minute log keeps only what a limit needs.
        entry.day.used = entry.day.used.saturating_add(1);
        entry.month.used = entry.month.used.saturating_add(1);
        if per_minute > 0 {
            entry.recent.push_back(instant);
            while entry.recent.len() > per_minute {
                entry.recent.pop_front();
            }
        }
        Ok(())
    }

    /// The API answered with a limit error: block the key, whatever budget is left.
    pub fn block(&self, secret_key: &SecretKey, scope: &RateLimitScope) {
        let wait = match scope {
            RateLimitScope::Second => Duration::from_secs(1),
            RateLimitScope::Minute | RateLimitScope::Unknown => Duration::from_secs(60),
            RateLimitScope::Day => Duration::from_secs(3600),
            RateLimitScope::Month => Duration::from_secs(6 * 3600),
        };
        let until = Instant::now() + wait;
        let mut state = self.state();
        let entry = state.keys.entry(secret_key.fingerprint()).or_default();
        entry.blocked_until = Some(entry.blocked_until.map_or(until, |t| t.max(until)));
    }

    /// The API said when calls may resume (`Retry-After`, `X-RateLimit-Reset`): block the key
    /// until then, whatever budget is left (a later block already in place stays).
    pub fn block_until(&self, secret_key: &SecretKey, until: Instant) {
        let mut state = self.state();
        let entry = state.keys.entry(secret_key.fingerprint()).or_default();
        entry.blocked_until = Some(entry.blocked_until.map_or(until, |t| t.max(until)));
    }

    /// Until when the key backs off after a limit answer, if it does.
    pub fn blocked_until(&self, secret_key: &SecretKey) -> Option<Instant> {
        let state = self.state();
        state
            .keys
            .get(&secret_key.fingerprint())
            .and_then(|e| e.blocked_until)
            .filter(|until| *until > Instant::now())
    }

    /// The stream no longer runs here: its limit stops counting towards its key's strictest.
    /// The key's counts stay while they can still deny a call (the calls were made); a key left
    /// with nothing to enforce goes.
    pub fn forget_stream(&self, stream_id: Uuid) {
        let mut state = self.state();
        if let Some(id) = state.stream_keys.remove(&stream_id) {
            self.leave(&mut state, id, stream_id);
        }
    }

    /// How many keys have an entry (in use, or with calls that still count).
    pub fn keys_held(&self) -> usize {
        self.state().keys.len()
    }

    /// Drop every key with nothing left to enforce. Calls sweep by themselves at most once a
    /// minute; this sweeps now.
    pub fn prune(&self) {
        let mut state = self.state();
        self.sweep(&mut state);
    }

    /// `stream_id` no longer uses key `id`: drop the key if nothing else holds it.
    fn leave(&self, state: &mut State, id: u64, stream_id: Uuid) {
        let Some(entry) = state.keys.get_mut(&id) else {
            return;
        };
        entry.remove_stream(stream_id);
        let now = self.clock.now();
        if entry.is_idle(Instant::now(), day_index(now), month_index(now)) {
            state.keys.remove(&id);
        }
    }

    fn sweep(&self, state: &mut State) {
        let now = self.clock.now();
        let (instant, day, month) = (Instant::now(), day_index(now), month_index(now));
        state
            .keys
            .retain(|_, entry| !entry.is_idle(instant, day, month));
        state.swept_at = Some(instant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SecretKey {
        SecretKey::new(text)
    }

    #[test]
    fn the_strictest_limit_follows_streams_joining_changing_and_leaving() {
        let strict = RateLimit {
            per_minute: 2,
            per_day: 0,
            per_month: 0,
        };
        let mut entry = KeyEntry::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(entry.strictest(), None);
        entry.set_stream(a, RateLimit::COMMUNITY);
        entry.set_stream(b, strict);
        assert_eq!(entry.strictest().unwrap().per_minute, 2);
        assert_eq!(entry.strictest().unwrap().per_day, 500);
        // B relaxes to the same limit as A: one distinct limit left, counted twice.
        entry.set_stream(b, RateLimit::COMMUNITY);
        assert_eq!(entry.strictest(), Some(RateLimit::COMMUNITY));
        assert_eq!(entry.limits.get(&RateLimit::COMMUNITY), Some(&2));
        entry.remove_stream(a);
        entry.remove_stream(a);
        assert_eq!(entry.strictest(), Some(RateLimit::COMMUNITY));
        entry.remove_stream(b);
        assert_eq!(entry.strictest(), None);
        assert!(entry.limits.is_empty() && entry.streams.is_empty());
    }

    #[test]
    fn window_boundaries_are_utc_calendar_ones() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 30).unwrap();
        assert_eq!(
            next_start("day", day_index(t)),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next_start("month", month_index(t)),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let feb = Utc.with_ymd_and_hms(2026, 2, 10, 0, 0, 0).unwrap();
        assert_eq!(
            next_start("month", month_index(feb)),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn key_ids_differ_and_never_print_the_key() {
        assert_ne!(key("a").fingerprint(), key("b").fingerprint());
        let budgets = KeyBudgets::default();
        budgets
            .acquire(Uuid::nil(), &key("super-secret"), RateLimit::COMMUNITY)
            .unwrap();
        assert!(!format!("{budgets:?}").contains("super-secret"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_minute_slides_so_no_61_s_span_holds_more_than_the_limit() {
        let wall0 = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 50).unwrap();
        let budgets = KeyBudgets::new(Clock::following_tokio(wall0));
        let limit = RateLimit {
            per_minute: 2,
            ..RateLimit::UNLIMITED
        };
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap();
        // A calendar minute would start afresh at 12:01:00; a sliding one does not.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let denied = budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap_err();
        assert_eq!(
            denied.message(),
            "local budget for this key exhausted (2/minute); next call at 2026-11-22T12:01:51Z"
        );
        tokio::time::sleep(Duration::from_secs(46)).await;
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap();
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap_err();
    }

    #[tokio::test(start_paused = true)]
    async fn a_month_budget_names_the_first_of_next_month() {
        let wall0 = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let budgets = KeyBudgets::new(Clock::following_tokio(wall0));
        let limit = RateLimit {
            per_minute: 0,
            per_day: 0,
            per_month: 2,
        };
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap();
        budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap();
        let denied = budgets.acquire(Uuid::nil(), &key("k"), limit).unwrap_err();
        assert_eq!(
            denied.message(),
            "local budget for this key exhausted (2/month); next call at 2026-12-01T00:00:00Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_key_is_kept_while_its_month_counts_and_dropped_after() {
        let wall0 = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let budgets = KeyBudgets::new(Clock::following_tokio(wall0));
        let limit = RateLimit {
            per_minute: 0,
            per_day: 2,
            per_month: 0,
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        budgets.acquire(a, &key("k"), limit).unwrap();
        budgets.acquire(b, &key("k"), limit).unwrap();
        // One stream leaves: the other still uses the key.
        budgets.forget_stream(a);
        budgets.prune();
        assert_eq!(budgets.keys_held(), 1);
        // The last one leaves, but the day's two calls still count: kept.
        budgets.forget_stream(b);
        budgets.prune();
        assert_eq!(budgets.keys_held(), 1);
        // A stream started again on the key the same day is still held to the day's limit.
        let denied = budgets.acquire(a, &key("k"), limit).unwrap_err();
        assert!(
            matches!(denied, Denied::Budget { window: "day", .. }),
            "{denied:?}"
        );
        budgets.forget_stream(a);
        // Next day: the month still counts the calls (a month limit may come with a stream).
        tokio::time::advance(Duration::from_secs(86_400)).await;
        budgets.prune();
        assert_eq!(budgets.keys_held(), 1);
        // Next month: nothing left to enforce.
        tokio::time::advance(Duration::from_secs(9 * 86_400)).await;
        budgets.prune();
        assert_eq!(budgets.keys_held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_without_counted_calls_goes_when_its_last_stream_leaves() {
        let budgets = KeyBudgets::new(Clock::following_tokio(
            Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap(),
        ));
        let stream = Uuid::now_v7();
        // Denied before calling (the key backs off): no call counted.
        budgets.block(&key("k"), &RateLimitScope::Second);
        budgets
            .acquire(stream, &key("k"), RateLimit::COMMUNITY)
            .unwrap_err();
        budgets.forget_stream(stream);
        assert_eq!(budgets.keys_held(), 1, "the block still runs");
        tokio::time::advance(Duration::from_secs(2)).await;
        budgets.prune();
        assert_eq!(budgets.keys_held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_moving_to_another_key_frees_the_old_one_and_calls_sweep() {
        let budgets = KeyBudgets::new(Clock::following_tokio(
            Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 0).unwrap(),
        ));
        let limit = RateLimit {
            per_minute: 1,
            ..RateLimit::UNLIMITED
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        budgets.acquire(a, &key("old"), limit).unwrap();
        // A month later (the old key's calls no longer count), `a` moves to a new key.
        tokio::time::advance(Duration::from_secs(2 * 86_400)).await;
        budgets.acquire(a, &key("new"), limit).unwrap();
        assert_eq!(budgets.keys_held(), 1, "only the new key is held");
        // `b` calls once and stays registered on its key; the new key's stream leaves. Within
        // the minute the new key's call still counts; a call a minute later sweeps it away.
        budgets.acquire(b, &key("b"), limit).unwrap();
        budgets.forget_stream(a);
        assert_eq!(budgets.keys_held(), 2);
        tokio::time::advance(Duration::from_secs(31 * 86_400)).await;
        budgets.acquire(b, &key("b"), limit).unwrap();
        assert_eq!(budgets.keys_held(), 1, "the sweep kept only the key in use");
    }
}
