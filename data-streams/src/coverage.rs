//! The coverage ledger: for an interval or cron stream, the slots its schedule should have run
//! in a time window and what became of each — stored, failed (by class), skipped (by reason) or
//! missing — as counts, gaps and a run-length strip, never a row per slot.
//!
//! The inputs are what the database holds: results by their tick (`scheduled_at`), failed runs
//! by their time (`at`: failures carry no tick), and the stream's desired-state history. The
//! computation is pure (this file); the queries are `db/coverage.rs`. See
//! `docs-notes/coverage.md` for the decisions: how slots are known, what is not expected, and
//! the bounds.

use std::collections::BTreeMap;

use protocol::schedule::{next_after, parse_cron};
use protocol::Schedule;

use crate::db::{Db, DbError};
use crate::stream::{StreamRow, StreamState};

/// Most slots one window may hold; a larger window is refused (a 1 s interval: about 27 h).
pub const MAX_SLOTS: u64 = 100_000;

/// How long after a run's timeout its event may still be on its way to the database (outbox,
/// link, batch): slots due later than `now - timeout - SETTLE_MS` are open, not judged yet.
pub const SETTLE_MS: i64 = 2_000;

/// How far before a cron fire time a reported tick may lie and still be that fire's: the worker
/// turns its wall-clock fire time into a monotonic instant and back, which can lose a few ms.
/// (Ticks come late by up to a second too: croner keeps the sub-second part of the time it
/// searches from. A tick maps to the latest fire at or before it, so that is covered.)
const CRON_TOLERANCE_MS: i64 = 50;

/// Why a slot had no run although the stream was expected to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// The previous run was still in flight at the slot's tick (the worker skips such ticks).
    Overran,
    /// The worker's own call budget for the key was used up, or the key was backing off after
    /// the API's limit error: the run was recorded as `rate_limited` without calling.
    RateBudget,
}

impl SkipReason {
    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overran => "overran",
            SkipReason::RateBudget => "rate_budget",
        }
    }
}

/// What became of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// A failed run, by its class (`run_failures.class`).
    Failed(String),
    Skipped(SkipReason),
}

impl Outcome {
    /// Which of two runs in one slot speaks for it: a stored one first, then a failed one.
    fn rank(&self) -> u8 {
        match self {
            Outcome::Stored => 0,
            Outcome::Failed(_) => 1,
            Outcome::Skipped(_) => 2,
        }
    }
}

/// One run as the database knows it: its tick (or the best estimate of it), when it ended, and
/// its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub tick: i64,
    pub end: i64,
    pub outcome: Outcome,
}

impl Run {
    /// A stored result: ticked at `scheduled_at` (the fetch time for a reconciled reference,
    /// which knows no tick), fetched at `fetched_at`.
    pub fn stored(tick: i64, fetched_at: i64) -> Run {
        Run {
            tick,
            end: fetched_at.max(tick),
            outcome: Outcome::Stored,
        }
    }

    /// A failed run recorded at `at`. Failures carry no tick: a timeout ended `timeout_ms`
    /// after it, any other failure is taken to have ended soon after it (a run that retried
    /// transient errors for longer than half a slot is counted in the next slot).
    pub fn failed(at: i64, class: &str, message: &str, timeout_ms: i64) -> Run {
        let tick = if class == "timeout" {
            at - timeout_ms
        } else {
            at
        };
        let outcome = if class == "rate_limited" && is_local_denial(message) {
            Outcome::Skipped(SkipReason::RateBudget)
        } else {
            Outcome::Failed(class.to_owned())
        };
        Run {
            tick,
            end: at,
            outcome,
        }
    }
}

/// Whether a `rate_limited` failure is the worker's own refusal to call (its budget, or a key
/// backing off), as worded by the worker's `ratelimit::Denied::message`: such a run never
/// reached the API. A retry that ran out of budget says `no retry after` and is a failed call.
fn is_local_denial(message: &str) -> bool {
    message.starts_with("local budget for this key exhausted")
        || message.starts_with("rate limited: this key backs off")
}

/// A change of the stream's desired state at `at`; `expected` for `running` and `failed` (a
/// stream stopped for a bad key missed those slots; only a person's stop expects nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub at: i64,
    pub expected: bool,
}

/// What a stretch of the strip holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stored,
    Failed,
    Skipped,
    Missing,
    /// Nothing was expected: before the stream existed, or stopped by a person.
    NotExpected,
    /// Not judged yet: a run due here may still be on its way.
    Open,
}

impl Kind {
    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stored => "stored",
            Kind::Failed => "failed",
            Kind::Skipped => "skipped",
            Kind::Missing => "missing",
            Kind::NotExpected => "not_expected",
            Kind::Open => "open",
        }
    }
}

/// A stretch of time `[start, end)` holding `slots` slots of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub kind: Kind,
    pub slots: u64,
}

/// The ledger of a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Slots the schedule should have run in, judged ones only: the sum of the four below.
    pub expected: u64,
    pub stored: u64,
    /// Failed slots per failure class.
    pub failed: BTreeMap<String, u64>,
    /// Skipped slots per [`SkipReason::as_str`].
    pub skipped: BTreeMap<String, u64>,
    pub missing: u64,
    /// From here on slots are open (not judged yet).
    pub open_from: i64,
    /// Contiguous missing slots, oldest first.
    pub gaps: Vec<Span>,
    /// The whole window `[from, to)` as contiguous spans, oldest first.
    pub strip: Vec<Span>,
}

/// Why a window cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("from must be before to")]
    Empty,
    #[error(
        "the window holds {slots} or more slots of this stream's schedule; at most {max}: \
         narrow from and to"
    )]
    TooManySlots { slots: u64, max: u64 },
    #[error("the stream's cron expression cannot be read: {0}")]
    BadCron(String),
}

/// The slots of a window: an interval (slot times follow the runs' own phase), or a cron
/// stream's fire times in the window, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slots {
    Interval(i64),
    Cron(Vec<i64>),
}

/// Checks the window `[from, to)` against [`MAX_SLOTS`] before anything is read, and lists a
/// cron stream's fire times in it (at most [`MAX_SLOTS`] of them).
pub fn plan(schedule: &Schedule, from: i64, to: i64) -> Result<Slots, WindowError> {
    if from >= to {
        return Err(WindowError::Empty);
    }
    let too_many = |slots| WindowError::TooManySlots {
        slots,
        max: MAX_SLOTS,
    };
    match schedule {
        Schedule::Interval { millis } => {
            let slots = to.abs_diff(from).div_ceil((*millis).max(1));
            if slots > MAX_SLOTS {
                return Err(too_many(slots));
            }
            Ok(Slots::Interval(
                i64::try_from(*millis).unwrap_or(i64::MAX).max(1),
            ))
        }
        Schedule::Cron { expr } => {
            let cron = parse_cron(expr).map_err(WindowError::BadCron)?;
            let mut fires = Vec::new();
            // Fire times are whole seconds; croner keeps the sub-second part of where it starts.
            let start = from.saturating_sub(1).div_euclid(1000).saturating_mul(1000);
            let mut after = chrono::DateTime::from_timestamp_millis(start);
            while let Some(at) = after.and_then(|t| next_after(&cron, t)) {
                let ms = at.timestamp_millis();
                if ms >= to {
                    break;
                }
                if fires.len() as u64 == MAX_SLOTS {
                    return Err(too_many(MAX_SLOTS + 1));
                }
                fires.push(ms);
                after = Some(at);
            }
            Ok(Slots::Cron(fires))
        }
    }
}

/// What the ledger needs to know about the stream and the moment.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub created_at: i64,
    pub timeout_ms: i64,
    /// Its desired-state changes, oldest first. None at all: running since `created_at`.
    pub states: &'a [StateChange],
    pub now: i64,
}

/// The ledger of `[from, to)` from the runs of that window (and a little around it; any order).
pub fn ledger(slots: &Slots, from: i64, to: i64, facts: Facts<'_>, runs: &[Run]) -> Ledger {
    let open_from = facts
        .now
        .saturating_sub(facts.timeout_ms)
        .saturating_sub(SETTLE_MS)
        .clamp(from, to);
    let mut acc = Acc {
        ledger: Ledger {
            open_from,
            ..Ledger::default()
        },
    };
    let mut runs: Vec<&Run> = runs.iter().collect();
    runs.sort_by_key(|r| (r.tick, r.outcome.rank()));
    for (start, end, expected) in periods(from, open_from, facts) {
        if !expected {
            acc.push(start, end, Kind::NotExpected, 0, None);
            continue;
        }
        match slots {
            Slots::Interval(interval) => interval_period(&mut acc, *interval, start, end, &runs),
            Slots::Cron(fires) => cron_period(&mut acc, fires, start, end, &runs),
        }
    }
    if open_from < to {
        acc.push(open_from, to, Kind::Open, 0, None);
    }
    acc.ledger
}

/// Why a ledger could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The ledger of `stream` over `[from, to)` as of `now`, from what the database holds: the
/// window is checked first ([`plan`]), then its runs and the state history are read (the runs
/// in the window, a little before it for a cron tick reported early, and failures up to a
/// timeout after it, which a timed-out run's tick may belong to).
pub async fn for_stream(
    db: &Db,
    stream: &StreamRow,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Ledger, CoverageError> {
    let slots = plan(stream.spec.schedule(), from, to)?;
    let timeout_ms = i64::try_from(stream.spec.timeout_ms()).unwrap_or(i64::MAX);
    let early = from.saturating_sub(CRON_TOLERANCE_MS);
    let mut runs: Vec<Run> = db
        .result_ticks(stream.id, early, to)
        .await?
        .into_iter()
        .map(|(tick, fetched_at)| Run::stored(tick, fetched_at))
        .collect();
    let failures = db
        .failure_marks(stream.id, early, to.saturating_add(timeout_ms))
        .await?;
    runs.extend(
        failures
            .iter()
            .map(|(at, class, message)| Run::failed(*at, class, message, timeout_ms)),
    );
    let states: Vec<StateChange> = db
        .state_changes(stream.id, to)
        .await?
        .into_iter()
        .map(|(at, state)| StateChange {
            at,
            expected: state != StreamState::Stopped,
        })
        .collect();
    let facts = Facts {
        created_at: stream.created_at,
        timeout_ms,
        states: &states,
        now,
    };
    Ok(ledger(&slots, from, to, facts, &runs))
}

/// `[from, until)` cut where the expectation changes: (start, end, expected), oldest first.
fn periods(from: i64, until: i64, facts: Facts<'_>) -> Vec<(i64, i64, bool)> {
    let default = [StateChange {
        at: facts.created_at,
        expected: true,
    }];
    let states = if facts.states.is_empty() {
        &default[..]
    } else {
        facts.states
    };
    // Nothing is expected before the stream existed, whatever a change says.
    let mut changes: Vec<(i64, bool)> = vec![(i64::MIN, false)];
    changes.extend(
        states
            .iter()
            .map(|c| (c.at.max(facts.created_at), c.expected)),
    );
    let mut out: Vec<(i64, i64, bool)> = Vec::new();
    for (i, &(at, expected)) in changes.iter().enumerate() {
        let next = changes.get(i + 1).map_or(i64::MAX, |c| c.0);
        let (start, end) = (at.max(from), next.min(until));
        if start >= end {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.2 == expected && last.1 == start => last.1 = end,
            _ => out.push((start, end, expected)),
        }
    }
    out
}

/// Interval slots in `[start, end)`, phased by the runs themselves: each run's tick is a slot,
/// and the slots between two runs are as many as the interval fits (rounded), so a worker
/// restart that moves the phase shifts nothing by more than one slot.
fn interval_period(acc: &mut Acc, interval: i64, start: i64, end: i64, runs: &[&Run]) {
    // The runs of this period, one per slot: runs closer than half an interval share a slot
    // (two workers during a partition), and the best outcome speaks for it.
    let mut own: Vec<Run> = Vec::new();
    for run in runs.iter().filter(|r| r.tick >= start && r.tick < end) {
        match own.last_mut() {
            Some(last) if run.tick - last.tick < interval / 2 => {
                if run.outcome.rank() < last.outcome.rank() {
                    last.outcome = run.outcome.clone();
                }
                last.end = last.end.max(run.end);
            }
            _ => own.push((*run).clone()),
        }
    }
    let Some(first) = own.first() else {
        // No run at all: as many slots as fit.
        let slots = u64::try_from((end - start) / interval).unwrap_or(0);
        let kind = if slots > 0 {
            Kind::Missing
        } else {
            Kind::NotExpected
        };
        acc.push(start, end, kind, slots, None);
        return;
    };
    // Before the first run: the slots a phase ending at its tick leaves room for.
    let leading = u64::try_from((first.tick - start) / interval).unwrap_or(0);
    let mut span_start = if leading > 0 {
        acc.push(start, first.tick, Kind::Missing, leading, None);
        first.tick
    } else {
        start
    };
    for (i, run) in own.iter().enumerate() {
        let (between, span_end) = match own.get(i + 1) {
            // Ticks run.tick + k·interval, k ≥ 1, before the next run's tick (rounded).
            Some(next) => {
                let slots = ((next.tick - run.tick) as f64 / interval as f64).round() as i64 - 1;
                (slots.max(0), next.tick)
            }
            // Ticks run.tick + k·interval, k ≥ 1, strictly before the period's end.
            None => (
                ((end - run.tick) as f64 / interval as f64).ceil() as i64 - 1,
                end,
            ),
        };
        let between = between.max(0);
        if between == 0 {
            acc.push_run(span_start, span_end, &run.outcome);
        } else {
            let slot_end = (run.tick + interval).min(span_end);
            acc.push_run(span_start, slot_end, &run.outcome);
            // Ticks while this run was still in flight were skipped by the worker.
            let overran = ((run.end - run.tick) / interval).clamp(0, between);
            let overran_end = (run.tick + (overran + 1) * interval).min(span_end);
            if overran > 0 {
                acc.push(
                    slot_end,
                    overran_end,
                    Kind::Skipped,
                    overran as u64,
                    Some(&Outcome::Skipped(SkipReason::Overran)),
                );
            }
            if between > overran {
                let from = if overran > 0 { overran_end } else { slot_end };
                acc.push(
                    from,
                    span_end,
                    Kind::Missing,
                    (between - overran) as u64,
                    None,
                );
            }
        }
        span_start = span_end;
    }
}

/// Cron slots in `[start, end)`: the fire times; each run goes to the latest fire at or before
/// its tick (give or take [`CRON_TOLERANCE_MS`]).
fn cron_period(acc: &mut Acc, fires: &[i64], start: i64, end: i64, runs: &[&Run]) {
    let lo = fires.partition_point(|&f| f < start);
    let hi = fires.partition_point(|&f| f < end);
    let mut slots: Vec<Option<Run>> = vec![None; hi - lo];
    for run in runs {
        // The run's fire among all the window's, so a run of another period finds its own.
        let at = fires.partition_point(|&f| f <= run.tick + CRON_TOLERANCE_MS);
        let Some(index) = at.checked_sub(1).filter(|i| (lo..hi).contains(i)) else {
            continue;
        };
        let slot = &mut slots[index - lo];
        match slot {
            Some(held) => {
                if run.outcome.rank() < held.outcome.rank() {
                    held.outcome = run.outcome.clone();
                }
                held.end = held.end.max(run.end);
            }
            None => *slot = Some((*run).clone()),
        }
    }
    let fires = &fires[lo..hi];
    if fires.is_empty() {
        acc.push(start, end, Kind::NotExpected, 0, None);
        return;
    }
    let mut busy_until = i64::MIN;
    for (i, fire) in fires.iter().enumerate() {
        let span_start = if i == 0 { start } else { *fire };
        let span_end = fires.get(i + 1).copied().unwrap_or(end);
        match &slots[i] {
            Some(run) => {
                acc.push_run(span_start, span_end, &run.outcome);
                busy_until = run.end;
            }
            None if *fire <= busy_until => {
                let overran = Outcome::Skipped(SkipReason::Overran);
                acc.push(span_start, span_end, Kind::Skipped, 1, Some(&overran));
            }
            None => acc.push(span_start, span_end, Kind::Missing, 1, None),
        }
    }
}

/// Builds the ledger span by span: counts, gaps, and the strip with neighbours of one kind
/// merged.
struct Acc {
    ledger: Ledger,
}

impl Acc {
    fn push_run(&mut self, start: i64, end: i64, outcome: &Outcome) {
        let kind = match outcome {
            Outcome::Stored => Kind::Stored,
            Outcome::Failed(_) => Kind::Failed,
            Outcome::Skipped(_) => Kind::Skipped,
        };
        self.push(start, end, kind, 1, Some(outcome));
    }

    fn push(&mut self, start: i64, end: i64, kind: Kind, slots: u64, outcome: Option<&Outcome>) {
        let l = &mut self.ledger;
        l.expected += match kind {
            Kind::NotExpected | Kind::Open => 0,
            _ => slots,
        };
        match (kind, outcome) {
            (Kind::Stored, _) => l.stored += slots,
            (Kind::Missing, _) => {
                l.missing += slots;
                merge(&mut l.gaps, start, end, kind, slots);
            }
            (_, Some(Outcome::Failed(class))) => {
                *l.failed.entry(class.clone()).or_default() += slots;
            }
            (_, Some(Outcome::Skipped(reason))) => {
                *l.skipped.entry(reason.as_str().to_owned()).or_default() += slots;
            }
            _ => {}
        }
        if start < end {
            merge(&mut l.strip, start, end, kind, slots);
        }
    }
}

/// Appends `[start, end)` to `spans`, into the last span when it is of the same kind and ends
/// where this one starts.
fn merge(spans: &mut Vec<Span>, start: i64, end: i64, kind: Kind, slots: u64) {
    match spans.last_mut() {
        Some(last) if last.kind == kind && last.end == start => {
            last.end = end;
            last.slots += slots;
        }
        _ => spans.push(Span {
            start,
            end,
            kind,
            slots,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;
    const T0: i64 = 1_800_000_000_000;

    fn facts(states: &[StateChange], now: i64) -> Facts<'_> {
        Facts {
            created_at: T0,
            timeout_ms: 500,
            states,
            now,
        }
    }

    fn stored_every_second(ticks: impl IntoIterator<Item = i64>) -> Vec<Run> {
        ticks
            .into_iter()
            .map(|k| Run::stored(T0 + 100 + k * S, T0 + 300 + k * S))
            .collect()
    }

    #[test]
    fn a_down_span_in_the_middle_is_one_gap_of_exactly_its_slots() {
        let runs = stored_every_second((0..10).chain(15..20));
        let slots = plan(&Schedule::Interval { millis: 1000 }, T0, T0 + 20 * S).unwrap();
        let l = ledger(&slots, T0, T0 + 20 * S, facts(&[], T0 + 60 * S), &runs);
        assert_eq!((l.expected, l.stored, l.missing), (20, 15, 5));
        assert_eq!(l.gaps.len(), 1, "{:?}", l.gaps);
        assert_eq!(l.gaps[0].slots, 5);
        assert_eq!(
            (l.gaps[0].start, l.gaps[0].end),
            (T0 + 100 + 10 * S, T0 + 100 + 15 * S)
        );
        let kinds: Vec<Kind> = l.strip.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [Kind::Stored, Kind::Missing, Kind::Stored]);
        assert_eq!(l.strip[0].start, T0);
        assert_eq!(l.strip.last().unwrap().end, T0 + 20 * S);
    }

    #[test]
    fn stopped_periods_expect_nothing_and_the_open_end_is_not_judged() {
        let states = [
            StateChange {
                at: T0,
                expected: true,
            },
            StateChange {
                at: T0 + 5 * S,
                expected: false,
            },
            StateChange {
                at: T0 + 10 * S,
                expected: true,
            },
        ];
        let runs = stored_every_second((0..5).chain(10..15));
        let now = T0 + 15 * S + 500 + SETTLE_MS;
        let slots = plan(&Schedule::Interval { millis: 1000 }, T0, T0 + 20 * S).unwrap();
        let l = ledger(&slots, T0, T0 + 20 * S, facts(&states, now), &runs);
        assert_eq!((l.expected, l.stored, l.missing), (10, 10, 0), "{l:?}");
        assert_eq!(l.open_from, T0 + 15 * S);
        let kinds: Vec<Kind> = l.strip.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Stored, Kind::NotExpected, Kind::Stored, Kind::Open]
        );
    }

    #[test]
    fn failures_count_by_class_and_budget_denials_and_overruns_are_skips() {
        let mut runs = stored_every_second([0, 1, 6]);
        // Slot 2 timed out (500 ms after its tick); slot 3 was refused by the local budget.
        runs.push(Run::failed(T0 + 100 + 2 * S + 500, "timeout", "", 500));
        runs.push(Run::failed(
            T0 + 100 + 3 * S + 2,
            "rate_limited",
            "local budget for this key exhausted (5/minute); next call at x",
            500,
        ));
        // Slot 4's run took 1.5 s: slot 5's tick passed while it ran.
        runs.push(Run::stored(T0 + 100 + 4 * S, T0 + 100 + 4 * S + 1_500));
        // Slot 7: the API's own limit answer is a failed call, not a skip.
        runs.push(Run::failed(
            T0 + 100 + 7 * S + 20,
            "rate_limited",
            "call_per_minute_limit_reached",
            500,
        ));
        let slots = plan(&Schedule::Interval { millis: 1000 }, T0, T0 + 8 * S).unwrap();
        let l = ledger(&slots, T0, T0 + 8 * S, facts(&[], T0 + 60 * S), &runs);
        assert_eq!(l.expected, 8, "{l:?}");
        assert_eq!(l.stored, 4);
        assert_eq!(l.missing, 0, "{l:?}");
        assert_eq!(
            l.failed,
            BTreeMap::from([("rate_limited".into(), 1), ("timeout".into(), 1)])
        );
        assert_eq!(
            l.skipped,
            BTreeMap::from([("overran".into(), 1), ("rate_budget".into(), 1)])
        );
    }

    #[test]
    fn cron_slots_are_fire_times_and_runs_map_to_theirs() {
        // Every 10 s; T0 is a multiple of 10 s.
        let schedule = Schedule::Cron {
            expr: "*/10 * * * * *".into(),
        };
        let slots = plan(&schedule, T0, T0 + 60 * S).unwrap();
        assert_eq!(
            slots,
            Slots::Cron((0..6).map(|k| T0 + k * 10 * S).collect())
        );
        let runs = vec![
            Run::stored(T0 - 2, T0 + 200),
            Run::stored(T0 + 10 * S, T0 + 10 * S + 200),
            Run::failed(T0 + 20 * S + 300, "http", "HTTP 500", 500),
            Run::stored(T0 + 50 * S + 1, T0 + 50 * S + 200),
        ];
        let l = ledger(&slots, T0, T0 + 60 * S, facts(&[], T0 + 600 * S), &runs);
        assert_eq!((l.expected, l.stored, l.missing), (6, 3, 2), "{l:?}");
        assert_eq!(l.failed, BTreeMap::from([("http".into(), 1)]));
        assert_eq!(l.gaps.len(), 1);
        assert_eq!(
            (l.gaps[0].start, l.gaps[0].end, l.gaps[0].slots),
            (T0 + 30 * S, T0 + 50 * S, 2)
        );
    }

    #[test]
    fn windows_are_bounded_before_anything_is_read() {
        let every_second = Schedule::Interval { millis: 1000 };
        assert_eq!(plan(&every_second, T0, T0), Err(WindowError::Empty));
        assert!(plan(&every_second, T0, T0 + MAX_SLOTS as i64 * S).is_ok());
        assert!(matches!(
            plan(&every_second, T0, T0 + 365 * 86_400 * S),
            Err(WindowError::TooManySlots { .. })
        ));
        assert!(
            matches!(
                plan(&every_second, i64::MIN, i64::MAX),
                Err(WindowError::TooManySlots { .. })
            ),
            "a span beyond i64 does not overflow"
        );
        let cron = Schedule::Cron {
            expr: "* * * * * *".into(),
        };
        assert!(matches!(
            plan(&cron, T0, T0 + 2 * MAX_SLOTS as i64 * S),
            Err(WindowError::TooManySlots { .. })
        ));
    }

    #[test]
    fn nothing_before_the_stream_existed_is_expected() {
        let runs = stored_every_second(0..5);
        let slots = plan(
            &Schedule::Interval { millis: 1000 },
            T0 - 60 * S,
            T0 + 5 * S,
        )
        .unwrap();
        let l = ledger(
            &slots,
            T0 - 60 * S,
            T0 + 5 * S,
            facts(&[], T0 + 60 * S),
            &runs,
        );
        assert_eq!((l.expected, l.stored, l.missing), (5, 5, 0), "{l:?}");
        assert_eq!(l.strip[0].kind, Kind::NotExpected);
    }
}
